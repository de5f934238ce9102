//! Small text parsers of untrusted input: 128-bit ids (volume.json, the key-store body, control
//! requests; `FromStr` of `VolumeId`/`KeyId`/`FileId`/`DirId`), audit segment file names
//! (directory listing of `.kmsfs/audit`) and recovery keys (`--recovery-key-file`).
//!
//! Each never panics, and what it accepts formats back to a string that parses to the same
//! value.
#![no_main]

use kmsfs::format::{DirId, FileId, KeyId, VolumeId};
use kmsfs::keymgr::audit::{parse_segment_name, segment_name};
use kmsfs::keymgr::{format_recovery_key, parse_recovery_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(k) = s.parse::<KeyId>() {
        let t = k.to_string();
        assert_eq!(t.len(), 36);
        assert_eq!(t.parse::<KeyId>(), Ok(k));
    }
    if let Ok(v) = s.parse::<VolumeId>() {
        assert_eq!(v.to_string().parse::<VolumeId>(), Ok(v));
        let j = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<VolumeId>(&j).unwrap(), v);
    }
    if let Ok(f) = s.parse::<FileId>() {
        assert_eq!(f.to_string().parse::<FileId>(), Ok(f));
    }
    if let Ok(d) = s.parse::<DirId>() {
        assert_eq!(d.to_string().parse::<DirId>(), Ok(d));
    }
    if let Some(n) = parse_segment_name(s) {
        assert_eq!(parse_segment_name(&segment_name(n)), Some(n));
    }
    if let Some(k) = parse_recovery_key(s) {
        let t = format_recovery_key(&k);
        assert_eq!(
            parse_recovery_key(&t).map(|x| *x.expose()),
            Some(*k.expose())
        );
    }
});
