//! The key store's life across passphrase changes, restores, crypto-shredding and interrupted
//! writes (from the review of 2026-12-06: each test failed before its fix).

use super::*;
use crate::crypto::KdfParams;

fn opts(recovery_key: bool) -> InitOptions {
    InitOptions {
        kdf: KdfParams::FAST_INSECURE,
        recovery_key,
        ..Default::default()
    }
}

fn pw(s: &str) -> Passphrase {
    Passphrase::new(s.as_bytes().to_vec())
}

fn with(s: &str) -> Unlock {
    Unlock::Passphrase(pw(s))
}

/// A volume with the passphrase "old pass" and no recovery key.
fn new_volume() -> (tempfile::TempDir, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("vol");
    init(&d, &pw("old pass"), &opts(false)).unwrap();
    (t, d)
}

/// Opens the sealed bytes at `p` with `how` (no fallback to the other copy).
fn open_copy(p: &std::path::Path, how: &Unlock) -> Result<KeyStore, VolumeError> {
    seal::unseal(&std::fs::read(p).unwrap(), how).map(|u| u.store)
}

fn create_key(km: &KeyManager, name: &str) -> crate::format::KeyId {
    km.admin(|s, now| lifecycle::create(s, name, Default::default(), now))
        .unwrap()
}

/// A maintenance tick that rotates one key (a version more) and destroys another must shred:
/// the destroyed key's material must not stay in `keystore.bak`.
#[test]
fn shredding_happens_when_a_rotation_shares_the_tick() {
    let (_t, d) = new_volume();
    let mut km = KeyManager::new(unlock(&d, &with("old pass")).unwrap());
    let default = km.query(|s| s.default_key);
    let doomed = create_key(&km, "doomed");
    km.admin(|s, now| lifecycle::schedule_deletion(s, &doomed, 7, now))
        .unwrap();
    km.admin(|s, _| lifecycle::set_rotation(s, &default, true, Some(90)))
        .unwrap();
    km.time_offset = 100 * lifecycle::DAY;
    let due = km.due();
    assert_eq!(due.1, vec![doomed]);
    assert_eq!(due.0.len(), 1);
    let (rotated, destroyed) = km.tick_recorded(&due).unwrap();
    assert_eq!(destroyed, vec![doomed]);
    assert_eq!(rotated, vec![(default, 2)]);
    let paths = VolumePaths::new(&d);
    for p in [paths.keystore(), paths.keystore_backup()] {
        let k = open_copy(&p, &with("old pass")).unwrap();
        let k = k.key(&doomed).unwrap();
        assert_eq!(k.state, KeyState::Destroyed, "{}", p.display());
        assert!(k.versions.iter().all(|v| v.material.is_none()));
    }
}

/// A shredding write that fails at any of its checked calls leaves memory agreeing with the
/// primary on disk (pending deletion and due, or destroyed when the failure came after the
/// primary was replaced); a later change never writes destroyed material back, and the next tick
/// leaves both copies shredded.
#[test]
fn failed_shredding_write_converges_to_shredded() {
    // Each atomic_write makes 5 checked calls (create, write, fsync, rename, fsync): the backup's
    // are 1-5, the primary's 6-10.
    for n in 1..=10 {
        let (_t, d) = new_volume();
        let mut km = KeyManager::new(unlock(&d, &with("old pass")).unwrap());
        let doomed = create_key(&km, "doomed");
        km.admin(|s, now| lifecycle::schedule_deletion(s, &doomed, 7, now))
            .unwrap();
        km.time_offset = 8 * lifecycle::DAY;
        crate::fault::arm(n, rustix::io::Errno::NOSPC);
        let r = km.tick();
        assert!(crate::fault::disarm().is_some(), "call {n}");
        assert!(r.is_err(), "call {n}: reported as failed");
        let paths = VolumePaths::new(&d);
        let primary = open_copy(&paths.keystore(), &with("old pass")).unwrap();
        let mem = km.query(|s| s.key(&doomed).unwrap().state);
        assert_eq!(primary.key(&doomed).unwrap().state, mem, "call {n}");
        // An unrelated change: it writes what memory holds.
        km.admin(|s, _| {
            let def = s.default_key;
            lifecycle::update_description(s, &def, "x")
        })
        .unwrap();
        if mem == KeyState::Destroyed {
            for p in [paths.keystore(), paths.keystore_backup()] {
                let s = open_copy(&p, &with("old pass")).unwrap();
                let k = s.key(&doomed).unwrap();
                assert!(k.versions.iter().all(|v| v.material.is_none()), "call {n}");
            }
        }
        let _ = km.tick().unwrap();
        for p in [paths.keystore(), paths.keystore_backup()] {
            let s = open_copy(&p, &with("old pass")).unwrap();
            let k = s.key(&doomed).unwrap();
            assert_eq!(k.state, KeyState::Destroyed, "call {n}: {}", p.display());
            assert!(k.versions.iter().all(|v| v.material.is_none()), "call {n}");
        }
    }
}

/// After a fallback to the backup because the primary refused the passphrase, a write must not
/// overwrite a primary of a newer generation (the key store under another passphrase).
#[test]
fn fallback_session_does_not_overwrite_a_newer_primary() {
    let (_t, d) = new_volume();
    let paths = VolumePaths::new(&d);
    let old_bak = std::fs::read(paths.keystore()).unwrap();
    passwd(&d, &with("old pass"), &pw("new pass"), None).unwrap();
    let km = KeyManager::new(unlock(&d, &with("new pass")).unwrap());
    let x = create_key(&km, "made last");
    drop(km);
    // A stale backup under the old passphrase (as an older kmsfs's interrupted passwd left).
    std::fs::write(paths.keystore_backup(), &old_bak).unwrap();
    let o = unlock(&d, &with("old pass")).unwrap();
    assert!(o.used_backup.is_some());
    let km = KeyManager::new(o);
    let def = km.query(|s| s.default_key);
    let r = km.admin(|s, _| lifecycle::update_description(s, &def, "x"));
    assert!(
        matches!(&r, Err(AdminError::Invalid(m)) if m.contains("newer")),
        "{r:?}"
    );
    drop(km);
    let n = unlock(&d, &with("new pass")).unwrap();
    assert!(n.used_backup.is_none());
    assert!(n.store.key(&x).is_some());
}

/// A primary of the same generation or older whose slots refuse the passphrase is still
/// repaired from the backup (a damaged slot).
#[test]
fn fallback_session_repairs_a_primary_that_is_not_newer() {
    let (_t, d) = new_volume();
    let paths = VolumePaths::new(&d);
    let mut u = unlock(&d, &with("old pass")).unwrap();
    u.persist_shredding().unwrap();
    // Damage the primary's slot salt (offset 39 + 13): it refuses the passphrase.
    let mut b = std::fs::read(paths.keystore()).unwrap();
    b[39 + 13] ^= 1;
    std::fs::write(paths.keystore(), &b).unwrap();
    let mut u = unlock(&d, &with("old pass")).unwrap();
    assert!(u.used_backup.is_some());
    u.persist().unwrap();
    assert!(unlock(&d, &with("old pass")).unwrap().used_backup.is_none());
}

/// A deletion whose waiting period has ended cannot be cancelled any more (AWS KMS: the key is
/// gone); the next tick destroys it.
#[test]
fn cancel_deletion_refused_after_the_window_ended() {
    let (_t, d) = new_volume();
    let mut km = KeyManager::new(unlock(&d, &with("old pass")).unwrap());
    let k = create_key(&km, "k");
    km.admin(|s, now| lifecycle::schedule_deletion(s, &k, 7, now))
        .unwrap();
    km.time_offset = 60 * lifecycle::DAY;
    let r = km.admin(|s, now| lifecycle::cancel_deletion(s, &k, now));
    assert!(
        matches!(&r, Err(AdminError::Invalid(m)) if m.contains("ended on")),
        "{r:?}"
    );
    let (_, gone) = km.tick().unwrap();
    assert_eq!(gone, vec![k]);
    assert_eq!(km.query(|s| s.key(&k).unwrap().state), KeyState::Destroyed);
}

/// Through the key manager: an on-demand rotation on day 80 leaves the automatic rotation due
/// on day 90; a key with imported material rotates neither way.
#[test]
fn rotation_schedule_and_byok_through_the_key_manager() {
    let (_t, d) = new_volume();
    let mut km = KeyManager::new(unlock(&d, &with("old pass")).unwrap());
    let k = km.query(|s| s.default_key);
    km.admin(|s, _| lifecycle::set_rotation(s, &k, true, Some(90)))
        .unwrap();
    km.time_offset = 80 * lifecycle::DAY;
    km.admin(|s, now| lifecycle::rotate(s, &k, now)).unwrap();
    km.time_offset = 91 * lifecycle::DAY;
    assert_eq!(km.tick().unwrap().0, vec![(k, 3)]);
    let byok = create_key(&km, "byok");
    km.admin(|s, now| lifecycle::import(s, &byok, &[7; 32], now))
        .unwrap();
    assert!(
        km.admin(|s, _| lifecycle::set_rotation(s, &byok, true, Some(90)))
            .is_err()
    );
    assert!(km.admin(|s, now| lifecycle::rotate(s, &byok, now)).is_err());
    km.time_offset = 1000 * lifecycle::DAY;
    assert!(km.tick().unwrap().0.iter().all(|(id, _)| *id != byok));
}
