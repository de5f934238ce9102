//! The per-file header (104 bytes at the start of every regular cipher file; FORMAT.md §3).
//!
//! - `FileHeader::decode` never panics on any bytes;
//! - it refuses only what the format refuses: short input, bad magic, version ≠ 1, flags ≠ 0;
//! - decode → encode gives back the first 104 input bytes (the encoding is canonical) and
//!   decode(encode(h)) == h, also for a header built from fuzzer-chosen fields;
//! - the DEK-wrap AAD is header[0..8] ‖ the 135-byte encryption context, and opening the wrap
//!   with the vector key material fails cleanly (or succeeds only for the vector's header).
#![no_main]

use kmsfs::crypto::Aead;
use kmsfs::format::header::{FileHeader, HEADER_LEN, WRAP_LEN};
use kmsfs::format::{FileId, KeyId, VolumeId};
use kmsfs_fuzz::Reader;
use libfuzzer_sys::fuzz_target;

/// tests/vectors/file-header.txt
const VOLUME: [u8; 16] = [
    0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f,
];
const KEY_MATERIAL: [u8; 32] = [
    0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4d, 0x4e, 0x4f,
    0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x5b, 0x5c, 0x5d, 0x5e, 0x5f,
];

fuzz_target!(|data: &[u8]| {
    match FileHeader::decode(data) {
        Ok(h) => {
            assert!(data.len() >= HEADER_LEN);
            let enc = h.encode();
            assert_eq!(
                &enc[..],
                &data[..HEADER_LEN],
                "decode→encode is not the identity"
            );
            assert_eq!(FileHeader::decode(&enc).as_ref(), Ok(&h));
            let aad = h.wrap_aad(&VolumeId(VOLUME));
            assert_eq!(aad.len(), 8 + 135);
            assert_eq!(&aad[..8], &data[..8]);
            if let Ok(dek) = Aead::new(&kmsfs_fuzz::key(KEY_MATERIAL)).open(&aad, &h.wrapped_dek) {
                assert_eq!(dek.len(), 32);
            }
        }
        Err(_) => {
            // Flags 0 or FLAG_SPARSE (0x0001) are the known ones.
            let well_formed = data.len() >= HEADER_LEN
                && data[..7] == *b"KMSF\x00\x01\x00"
                && data[7] & !1 == 0;
            assert!(!well_formed, "a well-formed header was refused");
        }
    }

    // Fuzzer-chosen fields: encode → decode is the identity.
    let mut r = Reader(data);
    let h = FileHeader {
        file_id: FileId(r.bytes()),
        key_id: KeyId(r.bytes()),
        key_version: r.u32(),
        flags: (r.u32() & u32::from(kmsfs::format::header::FLAG_SPARSE)) as u16,
        wrapped_dek: r.bytes::<WRAP_LEN>(),
    };
    let enc = h.encode();
    assert_eq!(FileHeader::decode(&enc), Ok(h));
});
