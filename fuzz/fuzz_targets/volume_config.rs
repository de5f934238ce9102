//! The volume config `.kmsfs/volume.json` (FORMAT.md §8), read before any passphrase.
//!
//! - `VolumeConfig::decode` never panics;
//! - what it accepts passes its own checks (format, version, known features, exactly one name
//!   mode, block size) and round-trips: decode(encode(c)) == c, and `encode` is canonical
//!   (encode(decode(encode(c))) == encode(c));
//! - `kmsfs::keymgr::probe` on a volume holding these bytes agrees with `decode`.
#![no_main]

use kmsfs::format::block::valid_block_size;
use kmsfs::format::config::{
    FEATURE_ENCRYPTED_NAMES, FEATURE_PLAINTEXT_NAMES, KNOWN_FEATURES, VolumeConfig,
};
use kmsfs_fuzz::{fresh_dir, write};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = VolumeConfig::decode(data);
    if let Ok(c) = &decoded {
        assert_eq!(c.format, "kmsfs");
        assert_eq!(c.format_version, 1);
        assert!(valid_block_size(c.block_size));
        assert!(
            c.features
                .iter()
                .all(|f| KNOWN_FEATURES.contains(&f.as_str()))
        );
        assert_ne!(
            c.has_feature(FEATURE_PLAINTEXT_NAMES),
            c.has_feature(FEATURE_ENCRYPTED_NAMES)
        );
        let _ = c.kdf.params.validate();
        let enc = c.encode();
        let again = VolumeConfig::decode(&enc).expect("an encoded config decodes");
        assert_eq!(&again, c, "round trip changed the config");
        assert_eq!(again.encode(), enc, "encode is not canonical");
    }

    if data.len() <= 4096 {
        let dir = fresh_dir("volume");
        std::fs::create_dir(dir.join(".kmsfs")).unwrap();
        write(&dir.join(".kmsfs/volume.json"), data);
        match kmsfs::keymgr::probe(&dir) {
            Ok((c, bytes)) => {
                assert_eq!(bytes, data);
                assert_eq!(decoded.as_ref().ok(), Some(&c));
            }
            Err(_) => assert!(decoded.is_err()),
        }
    }
});
