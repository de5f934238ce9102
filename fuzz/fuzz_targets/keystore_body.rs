//! The key store's decrypted JSON body (`KeyStore`, FORMAT.md §9 "Body JSON").
//!
//! The input is a body. It is
//! 1. parsed as `KeyStore` directly: never panics; parse → serialize → parse gives the same
//!    value (compared as JSON, `KeyStore` has no `PartialEq`);
//! 2. sealed, exactly as given, into an envelope with a recovery-key slot (the vector's recovery
//!    key) and written as the key store of a volume whose volume.json is the key-store vector's;
//!    `keymgr::unlock` must return an error or the same store, never panic;
//! 3. when it unlocks: handed to a `KeyManager`, which must answer `authorize`, `new_file`,
//!    `check_usable`, `unwrap_dek` and `tick` without panicking; for a store that keeps the
//!    invariants kmsfs maintains (see `consistent`), `new_file` → `unwrap_dek` round-trips the
//!    DEK.
#![no_main]

use kmsfs::crypto::{Aead, Key256, hkdf_subkey};
use kmsfs::format::VolumeId;
use kmsfs::format::keystore::{Envelope, Slot, SlotKind};
use kmsfs::keymgr::policy::{Identity, Request};
use kmsfs::keymgr::{KeyManager, KeyStore, Unlock, unlock};
use kmsfs_fuzz::{KS_RECOVERY_KEY, KS_VOLUME_ID, KS_VOLUME_JSON, fresh_dir, key, write};
use libfuzzer_sys::fuzz_target;

const STORE_KEY: [u8; 32] = [0x5a; 32];

fn seal(body: &[u8], volume_id: VolumeId, key_count: u32) -> Vec<u8> {
    let mut slot = Slot {
        kind: SlotKind::RecoveryKey,
        memory_kib: 0,
        iterations: 0,
        parallelism: 0,
        salt: [0x11; 32],
        wrapped: [0; 60],
    };
    let kek = hkdf_subkey(&key(KS_RECOVERY_KEY), &slot.salt, "kmsfs/v1/recovery-slot");
    let wrapped = Aead::new(&kek).seal_with_nonce(
        &[0x22; 12],
        &Envelope::slot_aad(&volume_id, &slot),
        &STORE_KEY,
    );
    slot.wrapped.copy_from_slice(&wrapped);
    let mut env = Envelope {
        volume_id,
        generation: 1,
        key_count,
        slots: vec![slot],
        body_nonce: [0x33; 12],
        body: Vec::new(),
    };
    let aad = env.header_bytes();
    let mut buf = body.to_vec();
    let tag = Aead::new(&key(STORE_KEY)).seal_in_place(&env.body_nonce, &aad, &mut buf);
    buf.extend_from_slice(&tag);
    env.body = buf;
    env.encode()
}

/// The invariants kmsfs keeps in every store it writes (src/keymgr/lifecycle.rs): each key's
/// versions are numbered in increasing order (so `newest()` and `version(n)` agree) and its
/// minimum decryption version is at most the newest version. `unseal` does not check them.
fn consistent(ks: &KeyStore) -> bool {
    ks.keys.iter().all(|k| {
        k.versions.windows(2).all(|w| w[0].version < w[1].version)
            && k.min_decryption_version <= k.newest().map_or(0, |v| v.version)
    })
}

fuzz_target!(|data: &[u8]| {
    // 1. The JSON alone.
    let parsed = serde_json::from_slice::<KeyStore>(data).ok();
    if let Some(ks) = &parsed {
        let v = serde_json::to_value(ks).unwrap();
        let again: KeyStore = serde_json::from_slice(&serde_json::to_vec(ks).unwrap())
            .expect("a serialized key store parses");
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            v,
            "round trip changed the store"
        );
    }

    // 2. Sealed into a volume.
    let (vid, count) = match &parsed {
        Some(ks) => (ks.volume_id, ks.keys.len() as u32),
        None => (VolumeId(KS_VOLUME_ID), 1),
    };
    let dir = fresh_dir("volume");
    std::fs::create_dir(dir.join(".kmsfs")).unwrap();
    write(&dir.join(".kmsfs/volume.json"), KS_VOLUME_JSON);
    write(&dir.join(".kmsfs/keystore"), &seal(data, vid, count));
    let Ok(u) = unlock(&dir, &Unlock::RecoveryKey(key(KS_RECOVERY_KEY))) else {
        return;
    };
    let ks = parsed
        .as_ref()
        .expect("unlock accepted a body that does not parse");
    assert_eq!(
        serde_json::to_value(&u.store).unwrap(),
        serde_json::to_value(ks).unwrap()
    );

    // 3. In use.
    let km = KeyManager::new(u);
    let default_key = km.query(|s| s.default_key);
    let who = Identity {
        uid: 1000,
        gid: 1000,
        pid: 1,
        ..Default::default()
    };
    for action in [
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "kms:PutKeyPolicy",
        "kms:DescribeKey",
    ] {
        let req = Request {
            who: who.clone(),
            action: action.into(),
            key: Some(default_key),
            path: Some("/finance/q4/report.txt".into()),
            access_mode: Some("read".into()),
            now: 1_800_000_000,
            ..Default::default()
        };
        let _ = km.authorize(&req);
    }
    let consistent = consistent(ks);
    for path in [None, Some("/"), Some("/finance/q4/report.txt"), Some("")] {
        if let Ok((h, dek)) = km.new_file(path, 0) {
            // A body kmsfs wrote keeps its invariants; one it did not (only a holder of the
            // passphrase can seal one) need not be usable, but must not panic.
            let usable = km.check_usable(&h);
            let back = km.unwrap_dek(&h);
            if consistent {
                usable.expect("a new file's key is usable");
                let back: Key256 = back.expect("new_file → unwrap_dek");
                assert_eq!(back.expose(), dek.expose());
            }
        }
    }
    let _ = km.tick();
});
