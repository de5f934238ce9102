//! Encrypted entry names (FORMAT.md §6): base64url(AES-256-GCM-SIV(names key, zero nonce,
//! "kmsfsN" ‖ dir id, name)) and the `kmsfs.long.<hash>` form with its side file. Keys: the
//! volume secret of tests/vectors/name-*.txt.
//!
//! Input: `flags (1) ‖ dir id (16) ‖ payload`; flags bit 0 = at the root, bit 1 = plaintext-names
//! mode. The payload is used both as a stored name (entry or side-file content) and as a
//! plaintext name.
//!
//! - `Names::decrypt` never panics; it accepts only a stored name that `Names::encrypt` of a
//!   valid name produces in that directory (so arbitrary strings give `Err`, and so does a name
//!   with white space appended), and what it returns is a valid name; `Names::decrypt_long`
//!   ignores trailing white space in the side file and requires the entry's hash;
//! - `Names::classify` never panics and is consistent with what `encrypt` produces;
//! - `encrypt` → `decrypt` round-trips every valid name (1..=255 bytes, no '/', no NUL, not "."
//!   or ".."), including long names through the side-file content; invalid names never come
//!   back; names are bound to their directory; entries are ≤ 255 bytes and long-name entries are
//!   `kmsfs.long.` ‖ base64url(SHA-256(stored)).
#![no_main]

use std::os::unix::ffi::OsStrExt;
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kmsfs::crypto::sha256;
use kmsfs::format::DirId;
use kmsfs::names::{CONTROL_DIR, DIRID_FILE, EntryKind, LONG_NAME_PREFIX, NameError, Names};
use kmsfs_fuzz::{Reader, VOLUME_SECRET, key, valid_name};
use libfuzzer_sys::fuzz_target;

static ENCRYPTED: LazyLock<Names> = LazyLock::new(|| Names::new(&key(VOLUME_SECRET), false));
static PLAIN: LazyLock<Names> = LazyLock::new(|| Names::new(&key(VOLUME_SECRET), true));

fn other_dir(d: &DirId) -> DirId {
    let mut o = *d;
    o.0[15] ^= 0x80;
    o
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let flags = r.u8();
    let dir = DirId(r.bytes());
    let payload = r.rest();
    let at_root = flags & 1 != 0;
    let plaintext = flags & 2 != 0;
    let names: &Names = if plaintext { &PLAIN } else { &ENCRYPTED };

    // 1. Decrypting arbitrary bytes.
    match names.decrypt(&dir, payload) {
        Ok(n) if plaintext => assert_eq!(n, payload),
        Ok(n) => {
            assert!(valid_name(&n), "decrypt returned an invalid name {n:?}");
            let cn = names
                .encrypt(&dir, &n, false)
                .expect("re-encrypting a decrypted name");
            let stored = cn
                .long
                .clone()
                .unwrap_or_else(|| cn.entry.to_str().unwrap().to_owned());
            assert_eq!(
                stored.as_bytes(),
                payload,
                "decrypt accepted a stored name encrypt does not produce"
            );
            assert!(names.decrypt(&other_dir(&dir), payload).is_err());
        }
        Err(e) => assert!(!plaintext && e == NameError::Undecryptable),
    }

    // 2. Classifying arbitrary directory entries.
    match names.classify(payload, at_root) {
        EntryKind::Name(x) => assert_eq!(x, payload),
        EntryKind::Internal => assert!(
            payload == DIRID_FILE.as_bytes()
                || (at_root && payload == CONTROL_DIR.as_bytes())
                || payload.starts_with(LONG_NAME_PREFIX.as_bytes())
        ),
        EntryKind::Long => assert!(!plaintext && payload.starts_with(LONG_NAME_PREFIX.as_bytes())),
    }

    // 3. Round trip of the payload as a plaintext name.
    match names.encrypt(&dir, payload, at_root) {
        Err(NameError::TooLong) => assert!(payload.len() > 255),
        Err(NameError::Reserved) => assert!(
            (at_root && payload == CONTROL_DIR.as_bytes())
                || (plaintext
                    && (payload == DIRID_FILE.as_bytes()
                        || payload.starts_with(LONG_NAME_PREFIX.as_bytes())))
        ),
        Err(e) => panic!("unexpected {e:?}"),
        Ok(cn) => {
            assert!(payload.len() <= 255);
            let entry = cn.entry.as_bytes();
            if plaintext {
                assert_eq!(entry, payload);
                assert!(cn.long.is_none());
                assert_eq!(names.decrypt(&dir, entry).unwrap(), payload);
                return;
            }
            assert!(entry.len() <= 255, "entry of {} bytes", entry.len());
            assert!(valid_name(entry) && entry != DIRID_FILE.as_bytes());
            assert_eq!(
                names.encrypt(&dir, payload, at_root).unwrap(),
                cn,
                "not deterministic"
            );
            let stored: Vec<u8> = match &cn.long {
                None => {
                    assert_eq!(names.classify(entry, at_root), EntryKind::Name(entry));
                    assert!(cn.side_file().is_none());
                    entry.to_vec()
                }
                Some(long) => {
                    assert!(long.len() > 255);
                    let want = format!("{LONG_NAME_PREFIX}{}", B64.encode(sha256(long.as_bytes())));
                    assert_eq!(entry, want.as_bytes());
                    assert_eq!(names.classify(entry, at_root), EntryKind::Long);
                    let side = cn.side_file().unwrap();
                    assert_eq!(
                        names.classify(side.as_bytes(), at_root),
                        EntryKind::Internal
                    );
                    long.as_bytes().to_vec()
                }
            };
            assert!(
                stored
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
            );
            let back = names.decrypt(&dir, &stored);
            if valid_name(payload) {
                assert_eq!(back.as_deref(), Ok(payload), "round trip");
                // Side files may end in white space; entry names may not, and a long entry
                // must be named after the hash of its side file's name.
                let mut padded = stored.clone();
                padded.extend_from_slice(b" \n");
                assert!(names.decrypt(&dir, &padded).is_err());
                if cn.long.is_some() {
                    assert_eq!(
                        names.decrypt_long(&dir, entry, &padded).as_deref(),
                        Ok(payload)
                    );
                    let other = format!("{LONG_NAME_PREFIX}x");
                    assert!(names.decrypt_long(&dir, other.as_bytes(), &stored).is_err());
                }
            } else {
                assert!(back.is_err(), "an invalid name decrypted");
            }
            assert!(
                names.decrypt(&other_dir(&dir), &stored).is_err(),
                "not bound to the directory"
            );
        }
    }
});
