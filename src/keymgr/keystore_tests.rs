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

/// A volume with the passphrase "old pass" and a recovery key.
fn new_volume_with_recovery_key() -> (tempfile::TempDir, std::path::PathBuf, Key256) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("vol");
    let rk = init(&d, &pw("old pass"), &opts(true)).unwrap().unwrap();
    (t, d, rk)
}

/// Opens the sealed bytes at `p` with `how` (no fallback to the other copy).
fn open_copy(p: &std::path::Path, how: &Unlock) -> Result<KeyStore, VolumeError> {
    seal::unseal(&std::fs::read(p).unwrap(), how).map(|u| u.store)
}

/// Opens the body of the envelope `bytes` with `store_key`, as an adversary holding a store key
/// from an older copy would (the body's associated data is all public).
fn open_body_with(bytes: &[u8], store_key: &Key256) -> Option<KeyStore> {
    use crate::crypto::Aead;
    use crate::format::keystore::Envelope;
    let env = Envelope::decode(bytes).unwrap();
    let (ct, tag) = env.body.split_at(env.body.len() - 16);
    let mut buf = ct.to_vec();
    Aead::new(store_key)
        .open_in_place(
            &env.body_nonce,
            &env.header_bytes(),
            &mut buf,
            tag.try_into().unwrap(),
        )
        .ok()?;
    serde_json::from_slice(&buf).ok()
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

/// `passwd` stopped after its first write: the old passphrase opens the generation from before
/// `passwd`, complete; the new one opens the new generation (the backup), and a write in that
/// session keeps it.
#[test]
fn interrupted_passwd_leaves_both_passphrases_on_complete_generations() {
    let (_t, d) = new_volume();
    let km = KeyManager::new(unlock(&d, &with("old pass")).unwrap());
    let x = create_key(&km, "made last");
    let g = km.read().generation();
    drop(km);
    // The backup's atomic_write makes 5 checked calls; the 6th is the primary's create.
    crate::fault::arm(6, rustix::io::Errno::IO);
    let r = passwd(&d, &with("old pass"), &pw("new pass"), None);
    assert_eq!(crate::fault::disarm(), Some("create"));
    assert!(r.is_err());
    let o = unlock(&d, &with("old pass")).unwrap();
    assert!(o.used_backup.is_none());
    assert_eq!(o.generation(), g);
    assert!(o.store.key(&x).is_some());
    let n = unlock(&d, &with("new pass")).unwrap();
    assert_eq!(n.generation(), g + 1);
    assert!(n.store.key(&x).is_some());
    assert!(n.used_backup.is_some());
    // A change with the new passphrase: the older primary is replaced, the new passphrase
    // opens without the backup from then on.
    let km = KeyManager::new(n);
    let y = create_key(&km, "after");
    drop(km);
    let n = unlock(&d, &with("new pass")).unwrap();
    assert!(n.used_backup.is_none());
    assert!(n.store.key(&x).is_some() && n.store.key(&y).is_some());
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
        matches!(&r, Err(AdminError::Persist(m)) if m.contains("newer")),
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

/// Without a recovery slot, `passwd` seals under a new store key: the old passphrase with an
/// old copy of the key store no longer opens any later key store.
#[test]
fn passwd_without_recovery_slot_changes_the_store_key() {
    let (_t, d) = new_volume();
    let paths = VolumePaths::new(&d);
    let old_copy = std::fs::read(paths.keystore()).unwrap();
    let done = passwd(&d, &with("old pass"), &pw("new pass"), None).unwrap();
    assert!(done.new_store_key);
    let km = KeyManager::new(unlock(&d, &with("new pass")).unwrap());
    create_key(&km, "after passwd");
    drop(km);
    let old_key = seal::unseal(&old_copy, &with("old pass"))
        .unwrap()
        .store_key;
    for p in [paths.keystore(), paths.keystore_backup()] {
        let now = std::fs::read(&p).unwrap();
        assert!(open_body_with(&now, &old_key).is_none(), "{}", p.display());
        assert!(matches!(
            seal::unseal(&now, &with("old pass")),
            Err(VolumeError::WrongPassphrase)
        ));
    }
    // Same secrets, same keys: only the sealing changed.
    let before = seal::unseal(&old_copy, &with("old pass")).unwrap().store;
    let after = unlock(&d, &with("new pass")).unwrap().store;
    assert_eq!(before.volume_secret.expose(), after.volume_secret.expose());
}

/// Unlocked with the recovery key, `passwd` re-wraps the recovery slot under a new store key:
/// the recovery key keeps working, old copies stop opening the new store.
#[test]
fn passwd_with_recovery_key_changes_the_store_key_and_keeps_it() {
    let (_t, d, rk) = new_volume_with_recovery_key();
    let paths = VolumePaths::new(&d);
    let old_copy = std::fs::read(paths.keystore()).unwrap();
    let done = passwd(&d, &Unlock::RecoveryKey(rk.clone()), &pw("new pass"), None).unwrap();
    assert!(done.new_store_key);
    assert!(unlock(&d, &Unlock::RecoveryKey(rk.clone())).is_ok());
    assert!(unlock(&d, &with("new pass")).is_ok());
    let old_key = seal::unseal(&old_copy, &with("old pass"))
        .unwrap()
        .store_key;
    let now = std::fs::read(paths.keystore()).unwrap();
    assert!(open_body_with(&now, &old_key).is_none());
    let info = VolumeInfo::read(&d).unwrap();
    assert_eq!(info.unlock_slots, vec!["passphrase", "recovery-key"]);
}

/// Unlocked with the passphrase, a volume with a recovery key keeps its store key (the recovery
/// slot cannot be re-wrapped without it) unless a new recovery key is issued, which replaces the
/// old one.
#[test]
fn passwd_by_passphrase_keeps_store_key_unless_a_new_recovery_key_is_issued() {
    let (_t, d, rk) = new_volume_with_recovery_key();
    let paths = VolumePaths::new(&d);
    let old_copy = std::fs::read(paths.keystore()).unwrap();
    let old_key = seal::unseal(&old_copy, &with("old pass"))
        .unwrap()
        .store_key;
    let done = passwd(&d, &with("old pass"), &pw("second"), None).unwrap();
    assert!(!done.new_store_key);
    assert!(open_body_with(&std::fs::read(paths.keystore()).unwrap(), &old_key).is_some());
    assert!(unlock(&d, &Unlock::RecoveryKey(rk.clone())).is_ok());
    // With a new recovery key: a new store key, the old recovery key stops working.
    let rk2 = Key256::generate();
    let done = change_passphrase(&d, &with("second"), &pw("third"), None, Some(&rk2)).unwrap();
    assert!(done.new_store_key);
    assert!(open_body_with(&std::fs::read(paths.keystore()).unwrap(), &old_key).is_none());
    assert!(matches!(
        unlock(&d, &Unlock::RecoveryKey(rk)),
        Err(VolumeError::WrongPassphrase)
    ));
    assert!(unlock(&d, &Unlock::RecoveryKey(rk2)).is_ok());
    assert!(unlock(&d, &with("third")).is_ok());
    assert_eq!(VolumeInfo::read(&d).unwrap().unlock_slots.len(), 2);
}

/// A restore after a passphrase change is a rollback like any other: refused without
/// --allow-rollback (generations read from the envelope headers), and with it the replaced
/// key store is kept as `keystore.before-restore`.
#[test]
fn restore_after_passwd_refuses_rollback_and_keeps_replaced_store() {
    let (t, d) = new_volume();
    let file = t.path().join("ks.backup");
    backup::export(&d, &with("old pass"), &file).unwrap();
    passwd(&d, &with("old pass"), &pw("new pass"), None).unwrap();
    let km = KeyManager::new(unlock(&d, &with("new pass")).unwrap());
    let x = create_key(&km, "after the backup");
    let gen_before = km.read().generation();
    drop(km);
    let r = backup::restore(&d, &with("old pass"), &file, false);
    assert!(
        matches!(&r, Err(VolumeError::Refused(m)) if m.contains(&format!("generation {gen_before}"))),
        "{r:?}"
    );
    // Nothing changed.
    assert!(
        unlock(&d, &with("new pass"))
            .unwrap()
            .store
            .key(&x)
            .is_some()
    );
    let cd = VolumePaths::new(&d).control_dir();
    assert!(!cd.join("keystore.before-restore").exists());
    // Allowed: done, and the replaced store (and its backup) stay on disk.
    let (info, u) = backup::restore(&d, &with("old pass"), &file, true).unwrap();
    // Sealed again as the newest generation (see `a_rollback_restore_is_not_undone_…`).
    assert!(info.generation > gen_before);
    assert!(u.store.key(&x).is_none());
    drop(u);
    let kept = open_copy(&cd.join("keystore.before-restore"), &with("new pass")).unwrap();
    assert!(kept.key(&x).is_some());
    assert!(cd.join("keystore.bak.before-restore").exists());
    // A second restore does not overwrite the first one's copies.
    backup::restore(&d, &with("old pass"), &file, true).unwrap();
    let kept = open_copy(&cd.join("keystore.before-restore"), &with("new pass")).unwrap();
    assert!(kept.key(&x).is_some());
    assert!(cd.join("keystore.before-restore.1").exists());
}

/// The rollback check counts `keystore.bak` too: a primary lost, a newer backup generation in
/// place.
#[test]
fn restore_refuses_a_backup_older_than_keystore_bak() {
    let (t, d) = new_volume();
    let file = t.path().join("ks.backup");
    backup::export(&d, &with("old pass"), &file).unwrap();
    let km = KeyManager::new(unlock(&d, &with("old pass")).unwrap());
    create_key(&km, "a");
    create_key(&km, "b");
    drop(km);
    let paths = VolumePaths::new(&d);
    std::fs::remove_file(paths.keystore()).unwrap();
    assert!(backup::restore(&d, &with("old pass"), &file, false).is_err());
    assert!(backup::restore(&d, &with("old pass"), &file, true).is_ok());
}

/// A damaged backup file is reported as such, naming it, not as the volume's key store.
#[test]
fn damaged_backup_file_is_named() {
    use base64::Engine as _;
    let (t, d) = new_volume();
    let file = t.path().join("ks.backup");
    backup::export(&d, &with("old pass"), &file).unwrap();
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut ks = b64.decode(j["keystore"].as_str().unwrap()).unwrap();
    let n = ks.len();
    ks[n - 3] ^= 1;
    j["keystore"] = b64.encode(&ks).into();
    std::fs::write(&file, serde_json::to_vec(&j).unwrap()).unwrap();
    match backup::restore(&d, &with("old pass"), &file, false) {
        Err(e @ VolumeError::BackupCorrupt { .. }) => {
            assert!(e.to_string().contains(&file.display().to_string()), "{e}")
        }
        r => panic!("{r:?}"),
    }
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

/// A second review: after any ordinary change the primary is a generation ahead of its backup,
/// so a flipped bit in its passphrase slot looked like a newer passphrase, and every write
/// (changes, the tick's crypto-shredding, passwd, fsck --repair) was refused for good. The
/// primary's slots are ours but for the damage: writes go on, and the shredding reaches both.
#[test]
fn a_damaged_slot_in_a_primary_ahead_of_its_backup_does_not_block_writes() {
    let (_t, d) = new_volume();
    let paths = VolumePaths::new(&d);
    let km = KeyManager::new(unlock(&d, &with("old pass")).unwrap());
    let doomed = create_key(&km, "doomed");
    km.admin(|s, now| lifecycle::schedule_deletion(s, &doomed, 7, now))
        .unwrap();
    create_key(&km, "another change");
    drop(km);
    let gp = super::volume::envelope_generation(&paths.keystore()).unwrap();
    let gb = super::volume::envelope_generation(&paths.keystore_backup()).unwrap();
    assert_eq!(gp, gb + 1);
    // One flipped bit in the salt, and (another run) in the wrapped key of the passphrase slot.
    for at in [39 + 13, 39 + 45 + 20] {
        let mut b = std::fs::read(paths.keystore()).unwrap();
        b[at] ^= 1;
        std::fs::write(paths.keystore(), &b).unwrap();
        let u = unlock(&d, &with("old pass")).unwrap();
        assert!(u.used_backup.is_some());
        let km = KeyManager::new(u);
        let def = km.query(|s| s.default_key);
        km.admin(|s, _| lifecycle::update_description(s, &def, "x"))
            .expect("a damaged primary is written over from the backup");
        drop(km);
        assert!(unlock(&d, &with("old pass")).unwrap().used_backup.is_none());
    }
    // Damaged again, and the deletion falls due: the tick shreds both copies.
    let mut b = std::fs::read(paths.keystore()).unwrap();
    b[39 + 13] ^= 1;
    std::fs::write(paths.keystore(), &b).unwrap();
    let mut km = KeyManager::new(unlock(&d, &with("old pass")).unwrap());
    km.time_offset = 8 * lifecycle::DAY;
    km.tick().expect("the tick shreds");
    drop(km);
    for p in [paths.keystore(), paths.keystore_backup()] {
        let s = open_copy(&p, &with("old pass")).unwrap();
        assert!(
            s.key(&doomed)
                .unwrap()
                .versions
                .iter()
                .all(|v| v.material.is_none()),
            "{}",
            p.display()
        );
    }
    passwd(&d, &with("old pass"), &pw("new pass"), None).expect("passwd");
}

/// A second review: a rollback restore left the restored store at its old generation beside a
/// newer `keystore.bak`; a session with the passphrase of before the restore fell back to that
/// copy and wrote over the restore. The restored store is now both copies, newest.
#[test]
fn a_rollback_restore_is_not_undone_by_the_passphrase_of_before() {
    let (t, d) = new_volume();
    let file = t.path().join("ks.backup");
    backup::export(&d, &with("old pass"), &file).unwrap();
    passwd(&d, &with("old pass"), &pw("new pass"), None).unwrap();
    let km = KeyManager::new(unlock(&d, &with("new pass")).unwrap());
    let later = create_key(&km, "after the backup");
    drop(km);
    let paths = VolumePaths::new(&d);
    let before = super::volume::envelope_generation(&paths.keystore()).unwrap();
    let (_info, u) = backup::restore(&d, &with("old pass"), &file, true).unwrap();
    drop(u);
    for p in [paths.keystore(), paths.keystore_backup()] {
        assert!(super::volume::envelope_generation(&p).unwrap() > before);
        assert!(
            open_copy(&p, &with("old pass"))
                .unwrap()
                .key(&later)
                .is_none()
        );
    }
    assert!(matches!(
        unlock(&d, &with("new pass")),
        Err(VolumeError::WrongPassphrase)
    ));
    let u = unlock(&d, &with("old pass")).unwrap();
    assert!(u.used_backup.is_none());
}

/// A second review: `upgrade` wrote both key-store copies without the check every other write
/// makes, over a newer primary sealed under another passphrase.
#[test]
fn upgrade_does_not_overwrite_a_newer_primary_after_a_fallback() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("vol");
    init(
        &d,
        &pw("old pass"),
        &InitOptions {
            sparse: false,
            ..opts(false)
        },
    )
    .unwrap();
    let paths = VolumePaths::new(&d);
    let old_bak = std::fs::read(paths.keystore()).unwrap();
    passwd(&d, &with("old pass"), &pw("new pass"), None).unwrap();
    let km = KeyManager::new(unlock(&d, &with("new pass")).unwrap());
    let x = create_key(&km, "made last");
    drop(km);
    // A stale backup under the old passphrase (an older kmsfs's interrupted passwd).
    std::fs::write(paths.keystore_backup(), &old_bak).unwrap();
    let r = upgrade::upgrade(&d, &with("old pass"), &[]);
    assert!(
        matches!(&r, Err(VolumeError::Invalid(m)) if m.contains("newer")),
        "{r:?}"
    );
    let u = unlock(&d, &with("new pass")).unwrap();
    assert!(u.store.key(&x).is_some());
}
