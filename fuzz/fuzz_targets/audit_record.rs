//! The JSON inside audit entries (src/keymgr/audit/record.rs): `AuditRecord` (records and chain
//! starts) and `Checkpoint` (checkpoint entries and the `head` file), as `kmsfs audit
//! verify/show/export` and the mount read them after decryption.
//!
//! - parsing never panics;
//! - parse → serialize → parse gives an equal value;
//! - `Checkpoint::signed_bytes` has the documented layout.
#![no_main]

use kmsfs::keymgr::audit::{AuditRecord, Checkpoint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<AuditRecord>(data) {
        let s = serde_json::to_vec(&r).unwrap();
        let again: AuditRecord = serde_json::from_slice(&s).expect("serialized record parses");
        assert_eq!(again, r);
        let _ = r.denied();
    }
    if let Ok(c) = serde_json::from_slice::<Checkpoint>(data) {
        let s = serde_json::to_vec(&c).unwrap();
        let again: Checkpoint = serde_json::from_slice(&s).expect("serialized checkpoint parses");
        assert_eq!(again, c);
        let m = Checkpoint::signed_bytes(c.seq, c.segment, &c.chain, &c.prev_signature);
        assert_eq!(
            m.len(),
            26 + 16 + c.chain.len() + 1 + c.prev_signature.len()
        );
        assert!(m.starts_with(b"kmsfs audit checkpoint v1\n"));
    }
});
