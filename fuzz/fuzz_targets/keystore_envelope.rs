//! The sealed key-store envelope `.kmsfs/keystore` (FORMAT.md §9).
//!
//! - `Envelope::decode` never panics; what it accepts re-encodes to exactly the input bytes
//!   (decode → encode is the identity: every byte is a field) and decode(encode(e)) == e, also
//!   for envelopes built from fuzzer-chosen fields;
//! - the bytes as a volume's `keystore` (next to the vector's volume.json): `keymgr::unlock` with
//!   the vector's recovery key and `VolumeInfo::read` (what `kmsfs info` shows) return errors,
//!   never panic. (Only recovery-key slots are tried, so no Argon2id runs with fuzzed costs.)
#![no_main]

use kmsfs::format::VolumeId;
use kmsfs::format::keystore::{Envelope, MAX_SLOTS, Slot, SlotKind};
use kmsfs::keymgr::{Unlock, VolumeInfo, unlock};
use kmsfs_fuzz::{KS_RECOVERY_KEY, KS_VOLUME_JSON, Reader, fresh_dir, key, write};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = Envelope::decode(data) {
        let enc = e.encode();
        assert_eq!(enc, data, "decode→encode is not the identity");
        assert_eq!(Envelope::decode(&enc).as_ref(), Ok(&e));
        assert!((1..=MAX_SLOTS).contains(&e.slots.len()));
        assert_eq!(e.header_bytes().len(), 39 + 105 * e.slots.len());
        assert!(e.body.len() >= 16);
        for s in &e.slots {
            assert_eq!(Envelope::slot_aad(&e.volume_id, s).len(), 71);
        }
    }

    // Fuzzer-chosen fields.
    let mut r = Reader(data);
    let head = r.u8();
    let volume_id = VolumeId(r.bytes());
    let generation = r.u64();
    let key_count = r.u32();
    let slots = (0..=(head as usize % MAX_SLOTS))
        .map(|_| Slot {
            kind: if r.u8() & 1 == 0 {
                SlotKind::Passphrase
            } else {
                SlotKind::RecoveryKey
            },
            memory_kib: r.u32(),
            iterations: r.u32(),
            parallelism: r.u32(),
            salt: r.bytes(),
            wrapped: r.bytes(),
        })
        .collect();
    let body_nonce = r.bytes();
    let mut body = r.rest().to_vec();
    body.resize(body.len().max(16), 0);
    let e = Envelope {
        volume_id,
        generation,
        key_count,
        slots,
        body_nonce,
        body,
    };
    assert_eq!(Envelope::decode(&e.encode()), Ok(e));

    // Through the files of a volume.
    let dir = fresh_dir("volume");
    std::fs::create_dir(dir.join(".kmsfs")).unwrap();
    write(&dir.join(".kmsfs/volume.json"), KS_VOLUME_JSON);
    write(&dir.join(".kmsfs/keystore"), data);
    let _ = VolumeInfo::read(&dir);
    if let Ok(u) = unlock(&dir, &Unlock::RecoveryKey(key(KS_RECOVERY_KEY))) {
        assert!(u.used_backup.is_none());
        let e = Envelope::decode(data).unwrap();
        assert_eq!(u.store.volume_id, e.volume_id);
        assert_eq!(u.store.keys.len() as u64, u64::from(e.key_count));
    }
});
