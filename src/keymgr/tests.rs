use super::*;
use crate::crypto::KdfParams;
use crate::format::header::HEADER_LEN;

fn opts() -> InitOptions {
    InitOptions {
        kdf: KdfParams::FAST_INSECURE,
        ..Default::default()
    }
}

fn pw(s: &str) -> Passphrase {
    Passphrase::new(s.as_bytes().to_vec())
}

fn new_volume() -> (tempfile::TempDir, std::path::PathBuf, Key256) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("vol");
    let rk = init(&d, &pw("correct horse"), &opts()).unwrap().unwrap();
    (t, d, rk)
}

#[test]
fn init_refuses_non_empty_dir() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("x"), b"x").unwrap();
    assert!(matches!(
        init(t.path(), &pw("p"), &opts()),
        Err(VolumeError::NotEmpty(_))
    ));
    assert!(!t.path().join(".kmsfs").exists());
}

#[test]
fn unlock_with_passphrase_and_recovery_key() {
    let (_t, d, rk) = new_volume();
    let u = unlock(&d, &Unlock::Passphrase(pw("correct horse"))).unwrap();
    assert_eq!(u.store.keys.len(), 1);
    assert_eq!(u.store.keys[0].versions[0].version, 1);
    assert!(u.used_backup.is_none());
    let u2 = unlock(&d, &Unlock::RecoveryKey(rk.clone())).unwrap();
    assert_eq!(u2.store.volume_id, u.store.volume_id);
    let shown = volume::format_recovery_key(&rk);
    assert_eq!(parse_recovery_key(&shown).unwrap().expose(), rk.expose());
}

#[test]
fn wrong_passphrase_is_distinct() {
    let (_t, d, _) = new_volume();
    assert!(matches!(
        unlock(&d, &Unlock::Passphrase(pw("wrong"))),
        Err(VolumeError::WrongPassphrase)
    ));
    assert!(matches!(
        unlock(&d, &Unlock::RecoveryKey(Key256::generate())),
        Err(VolumeError::WrongPassphrase)
    ));
}

#[test]
fn not_a_volume() {
    let t = tempfile::tempdir().unwrap();
    assert!(matches!(
        unlock(t.path(), &Unlock::Passphrase(pw("x"))),
        Err(VolumeError::NotAVolume(_))
    ));
}

#[test]
fn flip_any_byte_of_the_key_store_is_detected() {
    let (_t, d, _) = new_volume();
    let paths = VolumePaths::new(&d);
    let good = std::fs::read(paths.keystore()).unwrap();
    // Every byte of a small store, sampled for the body.
    let idx: Vec<usize> = (0..good.len()).filter(|i| *i < 300 || i % 7 == 0).collect();
    for i in idx {
        let mut b = good.clone();
        b[i] ^= 0x04;
        std::fs::write(paths.keystore(), &b).unwrap();
        match unlock(&d, &Unlock::Passphrase(pw("correct horse"))) {
            Err(VolumeError::KeyStoreCorrupt(_)) | Err(VolumeError::WrongPassphrase) => {}
            Ok(_) => panic!("flip at {i} not detected"),
            Err(e) => panic!("flip at {i}: unexpected {e}"),
        }
    }
}

#[test]
fn corrupted_store_falls_back_to_backup_generation() {
    let (_t, d, _) = new_volume();
    let mut u = unlock(&d, &Unlock::Passphrase(pw("correct horse"))).unwrap();
    u.store.keys[0].description = "generation two".into();
    u.persist().unwrap();
    assert_eq!(u.generation(), 2);
    let paths = VolumePaths::new(&d);
    // Damage the primary (generation 2): the backup (generation 1) still opens.
    let mut b = std::fs::read(paths.keystore()).unwrap();
    let n = b.len();
    b[n - 5] ^= 0xff;
    std::fs::write(paths.keystore(), &b).unwrap();
    let mut u = unlock(&d, &Unlock::Passphrase(pw("correct horse"))).unwrap();
    assert!(u.used_backup.is_some());
    assert_eq!(u.generation(), 1);
    assert_eq!(u.store.keys[0].description, "default key of the volume");
    // Persisting after a fallback must not rotate the damaged primary into the backup.
    u.persist().unwrap();
    let u = unlock(&d, &Unlock::Passphrase(pw("correct horse"))).unwrap();
    assert!(u.used_backup.is_none());
    let bak = std::fs::read(paths.keystore_backup()).unwrap();
    assert!(crate::keymgr::seal::unseal(&bak, &Unlock::Passphrase(pw("correct horse"))).is_ok());
    // Both damaged: a clear error.
    std::fs::write(paths.keystore(), b"garbage").unwrap();
    std::fs::write(paths.keystore_backup(), b"garbage").unwrap();
    assert!(matches!(
        unlock(&d, &Unlock::Passphrase(pw("correct horse"))),
        Err(VolumeError::KeyStoreCorrupt(_))
    ));
}

#[test]
fn modified_config_is_detected() {
    let (_t, d, _) = new_volume();
    let paths = VolumePaths::new(&d);
    let c = std::fs::read_to_string(paths.config()).unwrap();
    std::fs::write(
        paths.config(),
        c.replace("\"block_size\": 4096", "\"block_size\": 8192"),
    )
    .unwrap();
    assert!(matches!(
        unlock(&d, &Unlock::Passphrase(pw("correct horse"))),
        Err(VolumeError::ConfigTampered)
    ));
    std::fs::write(
        paths.config(),
        c.replace("\"encrypted-names\"", "\"encrypted-names\", \"new-thing\""),
    )
    .unwrap();
    assert!(matches!(
        unlock(&d, &Unlock::Passphrase(pw("correct horse"))),
        Err(VolumeError::Config(
            crate::format::config::ConfigError::UnknownFeature(_)
        ))
    ));
}

#[test]
fn passwd_reseals_and_old_passphrase_stops_working() {
    let (_t, d, rk) = new_volume();
    let before = unlock(&d, &Unlock::Passphrase(pw("correct horse")))
        .unwrap()
        .store
        .volume_secret;
    passwd(
        &d,
        &Unlock::Passphrase(pw("correct horse")),
        &pw("new one"),
        None,
    )
    .unwrap();
    assert!(matches!(
        unlock(&d, &Unlock::Passphrase(pw("correct horse"))),
        Err(VolumeError::WrongPassphrase)
    ));
    let u = unlock(&d, &Unlock::Passphrase(pw("new one"))).unwrap();
    assert_eq!(u.store.volume_secret.expose(), before.expose());
    // The recovery key still works and can set a passphrase.
    passwd(&d, &Unlock::RecoveryKey(rk), &pw("third"), None).unwrap();
    assert!(unlock(&d, &Unlock::Passphrase(pw("third"))).is_ok());
    assert!(matches!(
        passwd(&d, &Unlock::Passphrase(pw("bad")), &pw("x"), None),
        Err(VolumeError::WrongPassphrase)
    ));
}

#[test]
fn info_without_passphrase() {
    let (_t, d, _) = new_volume();
    let i = VolumeInfo::read(&d).unwrap();
    assert_eq!(i.key_count, 1);
    assert_eq!(i.format_version, 1);
    assert_eq!(i.kdf_memory_kib, KdfParams::FAST_INSECURE.memory_kib);
    assert_eq!(i.unlock_slots, vec!["passphrase", "recovery-key"]);
}

#[test]
fn dek_wrap_round_trip_and_context_binding() {
    let (_t, d, _) = new_volume();
    let km = KeyManager::new(unlock(&d, &Unlock::Passphrase(pw("correct horse"))).unwrap());
    let (h, dek) = km.new_file(None, 0).unwrap();
    assert_eq!(km.unwrap_dek(&h).unwrap().expose(), dek.expose());
    // Flip any byte of the encoded header: refused by parsing or by the unwrap.
    let enc = h.encode();
    for i in 0..HEADER_LEN {
        let mut b = enc;
        b[i] ^= 0x01;
        match crate::format::header::FileHeader::decode(&b) {
            Err(_) => {}
            Ok(h2) => assert!(km.unwrap_dek(&h2).is_err(), "flip at {i} unwrapped"),
        }
    }
    // The same header in another volume (other volume id) does not unwrap.
    let (_t2, d2, _) = new_volume();
    let km2 = KeyManager::new(unlock(&d2, &Unlock::Passphrase(pw("correct horse"))).unwrap());
    assert!(km2.unwrap_dek(&h).is_err());
}

#[test]
fn admin_persists_and_survives_reopen() {
    let (_t, d, _) = new_volume();
    let km = KeyManager::new(unlock(&d, &Unlock::Passphrase(pw("correct horse"))).unwrap());
    let id = km
        .admin(|s, now| lifecycle::create(s, "finance", Default::default(), now))
        .unwrap();
    km.admin(|s, _| lifecycle::create_alias(s, "alias/finance", &id))
        .unwrap();
    km.admin(|s, _| lifecycle::set_rule(s, "/finance", &id))
        .unwrap();
    // A failing operation leaves memory and disk unchanged.
    assert!(
        km.admin(|s, _| lifecycle::create_alias(s, "alias/finance", &id))
            .is_err()
    );
    let (h, _) = km.new_file(Some("/finance/q1.xlsx"), 0).unwrap();
    assert_eq!(h.key_id, id);
    let (h2, _) = km.new_file(Some("/other"), 0).unwrap();
    assert_ne!(h2.key_id, id);
    drop(km);
    let u = unlock(&d, &Unlock::Passphrase(pw("correct horse"))).unwrap();
    assert_eq!(u.store.aliases["alias/finance"], id);
    assert_eq!(u.store.rules.len(), 1);
    assert_eq!(VolumeInfo::read(&d).unwrap().key_count, 2);
}

#[test]
fn key_states_enforced_on_unwrap_and_new_files() {
    let (_t, d, _) = new_volume();
    let km = KeyManager::new(unlock(&d, &Unlock::Passphrase(pw("correct horse"))).unwrap());
    let id = km
        .admin(|s, now| lifecycle::create(s, "k", Default::default(), now))
        .unwrap();
    km.admin(|s, _| lifecycle::set_rule(s, "/k", &id)).unwrap();
    let (h, dek) = km.new_file(Some("/k/a"), 0).unwrap();
    km.admin(|s, _| lifecycle::disable(s, &id)).unwrap();
    assert_eq!(
        km.unwrap_dek(&h).err(),
        Some(KeyError::NotUsable(id, KeyState::Disabled))
    );
    assert!(km.new_file(Some("/k/b"), 0).is_err());
    km.admin(|s, _| lifecycle::enable(s, &id)).unwrap();
    assert_eq!(km.unwrap_dek(&h).unwrap().expose(), dek.expose());
    // Rotation: new files use v2; v1 files still open; min version retires v1.
    km.admin(|s, now| lifecycle::rotate(s, &id, now)).unwrap();
    let (h2, _) = km.new_file(Some("/k/c"), 0).unwrap();
    assert_eq!(h2.key_version, 2);
    assert!(km.unwrap_dek(&h).is_ok());
    km.admin(|s, _| lifecycle::set_min_decryption_version(s, &id, 2))
        .unwrap();
    assert_eq!(
        km.unwrap_dek(&h).err(),
        Some(KeyError::VersionRetired(id, 1, 2))
    );
    km.admin(|s, _| lifecycle::set_min_decryption_version(s, &id, 1))
        .unwrap();
    assert!(km.unwrap_dek(&h).is_ok());
    // Deletion: pending ⇒ refused; after the window ⇒ destroyed, unrecoverable.
    km.admin(|s, now| lifecycle::schedule_deletion(s, &id, 7, now))
        .unwrap();
    assert_eq!(
        km.unwrap_dek(&h).err(),
        Some(KeyError::NotUsable(id, KeyState::PendingDeletion))
    );
    assert_eq!(km.tick().unwrap().1, Vec::<crate::format::KeyId>::new());
    let destroyed = km
        .admin(|s, now| {
            Ok(lifecycle::execute_due_deletions(
                s,
                now + 8 * lifecycle::DAY,
            ))
        })
        .unwrap();
    assert_eq!(destroyed, vec![id]);
    assert_eq!(
        km.unwrap_dek(&h).err(),
        Some(KeyError::NotUsable(id, KeyState::Destroyed))
    );
    // The tombstone survives a reopen.
    let u = unlock(&d, &Unlock::Passphrase(pw("correct horse"))).unwrap();
    assert_eq!(u.store.key(&id).unwrap().state, KeyState::Destroyed);
}

#[test]
fn destroyed_material_does_not_survive_in_the_backup() {
    let (_t, d, _) = new_volume();
    let km = KeyManager::new(unlock(&d, &Unlock::Passphrase(pw("correct horse"))).unwrap());
    let id = km
        .admin(|s, now| lifecycle::create(s, "k", Default::default(), now))
        .unwrap();
    km.admin(|s, now| lifecycle::schedule_deletion(s, &id, 7, now))
        .unwrap();
    km.admin(|s, now| {
        Ok(lifecycle::execute_due_deletions(
            s,
            now + 8 * lifecycle::DAY,
        ))
    })
    .unwrap();
    let paths = VolumePaths::new(&d);
    for p in [paths.keystore(), paths.keystore_backup()] {
        let b = std::fs::read(&p).unwrap();
        let u = crate::keymgr::seal::unseal(&b, &Unlock::Passphrase(pw("correct horse"))).unwrap();
        let k = u.store.key(&id).unwrap();
        assert!(
            k.versions.iter().all(|v| v.material.is_none()),
            "{} still holds the material",
            p.display()
        );
    }
}

#[test]
fn cached_policy_follows_every_change_of_the_stored_policy_and_owner() {
    let (_t, d, _) = new_volume();
    let km = KeyManager::new(unlock(&d, &Unlock::Passphrase(pw("correct horse"))).unwrap());
    let (key, owner) = km.query(|s| (s.default_key, s.owner_uid));
    let ask = |uid: u32| {
        km.authorize(&policy::Request {
            who: policy::Identity {
                uid,
                ..Default::default()
            },
            action: "kms:Decrypt".into(),
            key: Some(key),
            ..Default::default()
        })
    };
    // The default policy: the owner, and nobody else.
    assert!(ask(owner).allowed());
    assert!(!ask(owner + 1).allowed());
    assert!(ask(owner).allowed(), "a cache hit decides the same");
    // A stored policy replaces it at once.
    let other = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"Other","Effect":"Allow",
            "Principal":{{"Uid":"{}"}},"Action":"kms:*","Resource":"*"}}]}}"#,
        owner + 1
    );
    km.admin(|s, _| {
        s.key_mut(&key).unwrap().policy = Some(other.clone());
        Ok(())
    })
    .unwrap();
    assert!(!ask(owner).allowed());
    assert_eq!(
        ask(owner + 1),
        policy::Decision::AllowedByPolicy {
            sid: "Other".into()
        }
    );
    // Back to the default policy, then a new owner: the default follows the owner.
    km.admin(|s, _| {
        s.key_mut(&key).unwrap().policy = None;
        Ok(())
    })
    .unwrap();
    assert!(ask(owner).allowed());
    km.admin(|s, _| {
        s.owner_uid = owner + 2;
        Ok(())
    })
    .unwrap();
    assert!(!ask(owner).allowed());
    assert!(ask(owner + 2).allowed());
    let (hits, misses) = km.policy_cache_stats();
    assert_eq!(
        (hits, misses),
        (4, 4),
        "parsed once per change, not per decision"
    );
}

/// Automatic maintenance does exactly what was recorded before it (found by a second review of
/// the audit log: a key due after the records was destroyed unrecorded, and a cancelled one was
/// recorded as destroyed).
#[test]
fn maintenance_does_only_what_was_recorded() {
    let (_t, d, _) = new_volume();
    let km = KeyManager::new(unlock(&d, &Unlock::Passphrase(pw("correct horse"))).unwrap());
    let mk = |name: &str| {
        let id = km
            .admin(|s, now| lifecycle::create(s, name, Default::default(), now))
            .unwrap();
        km.admin(|s, now| lifecycle::schedule_deletion(s, &id, 7, now))
            .unwrap();
        id
    };
    let (a, b, late) = (mk("a"), mk("b"), mk("late"));
    let due_now = |ids: &[crate::format::KeyId]| {
        km.admin(|s, _| {
            for k in s.keys.iter_mut().filter(|k| ids.contains(&k.id)) {
                k.deletion_date = Some(0);
            }
            Ok(())
        })
        .unwrap()
    };
    due_now(&[a, b]);
    let recorded = km.due();
    assert_eq!(recorded.1, vec![a, b]);
    // Between the records and the change: b's deletion cancelled (in the window: the clock is
    // set back to before its date for it, since a cancellation after the date is refused),
    // `late` becomes due.
    km.admin(|s, now| {
        if let Some(k) = s.keys.iter_mut().find(|k| k.id == b) {
            k.deletion_date = Some(now + lifecycle::DAY);
        }
        lifecycle::cancel_deletion(s, &b, now)
    })
    .unwrap();
    due_now(&[late]);
    let (_, destroyed) = km.tick_recorded(&recorded).unwrap();
    assert_eq!(destroyed, vec![a]);
    assert_eq!(
        km.query(|s| s.key(&late).unwrap().state),
        KeyState::PendingDeletion
    );
    assert_eq!(km.query(|s| s.key(&b).unwrap().state), KeyState::Disabled);
}
