//! Symlink targets and `user.*` extended attributes (FORMAT.md §7), with the volume secret of
//! tests/vectors/symlink-target.txt and xattr.txt.
//!
//! - `decrypt_symlink`, `decrypt_xattr_name` and `decrypt_xattr_value` never panic on arbitrary
//!   bytes and accept only what the matching `encrypt_*` produces (checked by re-encrypting with
//!   the stored nonce);
//! - `encrypt_*` → `decrypt_*` round-trips fuzzer-chosen targets, names and values; values are
//!   bound to their backing name; `symlink_plain_len` of a stored target is the target length.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kmsfs::crypto::{Aead, hkdf_subkey};
use kmsfs::names::{NameError, Names, XATTR_PREFIX};
use kmsfs_fuzz::{VOLUME_SECRET, key};
use libfuzzer_sys::fuzz_target;

static NAMES: LazyLock<Names> = LazyLock::new(|| Names::new(&key(VOLUME_SECRET), false));
static SYMLINK_KEY: LazyLock<Aead> = LazyLock::new(|| {
    Aead::new(&hkdf_subkey(
        &key(VOLUME_SECRET),
        b"",
        "kmsfs/v1/symlink-targets",
    ))
});
static XATTR_VALUE_KEY: LazyLock<Aead> = LazyLock::new(|| {
    Aead::new(&hkdf_subkey(
        &key(VOLUME_SECRET),
        b"",
        "kmsfs/v1/xattr-values",
    ))
});
/// The backing name of `user.comment` in tests/vectors/xattr.txt.
const BACKING: &str = "user.kmsfs.gOFyy8O0XJiHH8t_WXG47PfOOGwnCXo";

fuzz_target!(|data: &[u8]| {
    let n = &*NAMES;

    // Symlink targets.
    if let Ok(t) = n.decrypt_symlink(data) {
        let raw = B64.decode(data).unwrap();
        let nonce: [u8; 12] = raw[..12].try_into().unwrap();
        assert_eq!(
            SYMLINK_KEY.seal_with_nonce(&nonce, b"kmsfs symlink", &t),
            raw,
            "decrypt_symlink accepted bytes encryption does not produce"
        );
    }
    match n.encrypt_symlink(data) {
        Ok(s) => {
            assert!(s.len() < 4096);
            assert_eq!(n.decrypt_symlink(s.as_bytes()).as_deref(), Ok(data));
            assert_eq!(Names::symlink_plain_len(s.len() as u64), data.len() as u64);
        }
        Err(NameError::TargetTooLong) => assert!((4 * (data.len() + 28)).div_ceil(3) >= 4096),
        Err(e) => panic!("unexpected {e:?}"),
    }

    // Xattr names (deterministic).
    if let Ok(s) = std::str::from_utf8(data) {
        if let Some(name) = n.decrypt_xattr_name(s) {
            assert_eq!(
                n.encrypt_xattr_name(&name),
                s,
                "decrypt_xattr_name accepted a non-canonical name"
            );
        }
    }
    let backing = n.encrypt_xattr_name(data);
    assert!(backing.starts_with(XATTR_PREFIX));
    assert_eq!(n.decrypt_xattr_name(&backing).as_deref(), Some(data));

    // Xattr values, bound to the backing name.
    if let Ok(v) = n.decrypt_xattr_value(BACKING, data) {
        let nonce: [u8; 12] = data[..12].try_into().unwrap();
        assert_eq!(
            XATTR_VALUE_KEY.seal_with_nonce(&nonce, BACKING.as_bytes(), &v),
            data
        );
    }
    let stored = n.encrypt_xattr_value(&backing, data);
    assert_eq!(
        n.decrypt_xattr_value(&backing, &stored).as_deref(),
        Ok(data)
    );
    assert!(n.decrypt_xattr_value(BACKING, &stored).is_err() || backing == BACKING);
});
