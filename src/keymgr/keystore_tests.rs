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

fn create_key(km: &KeyManager, name: &str) -> crate::format::KeyId {
    km.admin(|s, now| lifecycle::create(s, name, Default::default(), now))
        .unwrap()
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
