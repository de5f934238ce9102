//! names turns plaintext names into names stored in the cipher directory and back: deterministic
//! AES-256-GCM-SIV bound to the parent directory's id, base64url; names too long for the backing
//! file system become `kmsfs.long.<hash>` plus a `kmsfs.long.<hash>.name` side file. It also
//! encrypts symlink targets and `user.*` extended attributes. Each purpose has its own key,
//! derived from the volume secret.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use crate::crypto::{Aead, Key256, hkdf_subkey, sha256};
use crate::format::DirId;

pub mod long_links;

/// Purpose strings for HKDF: one key per purpose.
const PURPOSE_NAMES: &str = "kmsfs/v1/names";
const PURPOSE_SYMLINKS: &str = "kmsfs/v1/symlink-targets";
const PURPOSE_XATTR_NAMES: &str = "kmsfs/v1/xattr-names";
const PURPOSE_XATTR_VALUES: &str = "kmsfs/v1/xattr-values";

/// The file in every cipher directory holding that directory's id.
pub const DIRID_FILE: &str = "kmsfs.dirid";
/// Prefix of hashed long names; the side file adds [`LONG_NAME_SUFFIX`].
pub const LONG_NAME_PREFIX: &str = "kmsfs.long.";
pub const LONG_NAME_SUFFIX: &str = ".name";
/// The control directory at the cipher root (and the reserved name at the mount root).
pub const CONTROL_DIR: &str = ".kmsfs";
/// Longest name the backing file system takes (NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Prefix of encrypted user xattrs on the backing file.
pub const XATTR_PREFIX: &str = "user.kmsfs.";
/// The backing xattr holding a file's small user xattrs together (no encrypted name is this
/// short).
pub const XATTR_PACK: &str = "user.kmsfs.p";

const ZERO_NONCE: [u8; 12] = [0; 12];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name cannot be decrypted (modified, or moved from another directory)")]
    Undecryptable,
    #[error("name is longer than {NAME_MAX} bytes")]
    TooLong,
    #[error("name is reserved by kmsfs")]
    Reserved,
    #[error("symlink target is too long to store encrypted")]
    TargetTooLong,
}

/// How a plaintext name is stored in its cipher directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CipherName {
    /// The directory entry name in the cipher directory.
    pub entry: OsString,
    /// For long names: the full encrypted name, stored in the side file `entry + ".name"`.
    pub long: Option<String>,
}

impl CipherName {
    pub fn side_file(&self) -> Option<OsString> {
        self.long.as_ref().map(|_| {
            let mut s = self.entry.clone();
            s.push(LONG_NAME_SUFFIX);
            s
        })
    }
}

/// What an entry in a cipher directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind<'a> {
    /// A kmsfs-internal file to hide (dir id, long-name side file, control dir).
    Internal,
    /// A hashed long name: read its side file to get the encrypted name.
    Long,
    /// An encrypted (or plaintext) name.
    Name(&'a [u8]),
}

/// Name handling of a volume.
#[derive(Debug)]
pub struct Names {
    names: Option<Aead>,
    symlinks: Aead,
    xattr_names: Aead,
    xattr_values: Aead,
}

impl Names {
    pub fn new(volume_secret: &Key256, plaintext_names: bool) -> Self {
        let k = |p| Aead::new(&hkdf_subkey(volume_secret, b"", p));
        Names {
            names: (!plaintext_names).then(|| k(PURPOSE_NAMES)),
            symlinks: k(PURPOSE_SYMLINKS),
            xattr_names: k(PURPOSE_XATTR_NAMES),
            xattr_values: k(PURPOSE_XATTR_VALUES),
        }
    }

    pub fn plaintext(&self) -> bool {
        self.names.is_none()
    }

    /// The cipher name of `name` in the directory `dir`. `at_root` reserves the control name.
    pub fn encrypt(
        &self,
        dir: &DirId,
        name: &[u8],
        at_root: bool,
    ) -> Result<CipherName, NameError> {
        if name.len() > NAME_MAX {
            return Err(NameError::TooLong);
        }
        let Some(aead) = &self.names else {
            // In plaintext mode kmsfs-internal names are reserved everywhere (they cannot occur
            // in the encrypted mode's alphabet, so there they need no reservation).
            if (at_root && name == CONTROL_DIR.as_bytes()) || is_internal_name(name) {
                return Err(NameError::Reserved);
            }
            return Ok(CipherName {
                entry: OsStr::from_bytes(name).to_owned(),
                long: None,
            });
        };
        if at_root && name == CONTROL_DIR.as_bytes() {
            return Err(NameError::Reserved);
        }
        let sealed = aead.seal_with_nonce(&ZERO_NONCE, &name_aad(dir), name);
        // The deterministic nonce is not stored: drop it.
        let enc = B64.encode(&sealed[12..]);
        if enc.len() <= NAME_MAX {
            Ok(CipherName {
                entry: enc.into(),
                long: None,
            })
        } else {
            let h = B64.encode(sha256(enc.as_bytes()));
            Ok(CipherName {
                entry: format!("{LONG_NAME_PREFIX}{h}").into(),
                long: Some(enc),
            })
        }
    }

    /// Decrypts an encrypted name read from the cipher directory `dir` (an entry's name, taken
    /// exactly as it is: for long names see [`Names::decrypt_long`]).
    pub fn decrypt(&self, dir: &DirId, enc: &[u8]) -> Result<Vec<u8>, NameError> {
        let Some(aead) = &self.names else {
            return Ok(enc.to_vec());
        };
        let raw = B64.decode(enc).map_err(|_| NameError::Undecryptable)?;
        let mut sealed = Vec::with_capacity(12 + raw.len());
        sealed.extend_from_slice(&ZERO_NONCE);
        sealed.extend_from_slice(&raw);
        let name = aead
            .open(&name_aad(dir), &sealed)
            .map_err(|_| NameError::Undecryptable)?;
        if name.is_empty()
            || name.len() > NAME_MAX
            || name.contains(&b'/')
            || name.contains(&0)
            || name == b"."
            || name == b".."
        {
            return Err(NameError::Undecryptable);
        }
        Ok(name)
    }

    /// Decrypts the long name of entry `entry` (`kmsfs.long.<hash>`) of the cipher directory
    /// `dir`, whose side file holds `side`: trailing ASCII white space in the side file is
    /// ignored (FORMAT §6), and the entry's hash must be that of the side file's name
    /// ([`Names::long_entry_matches`]), so that a copy of an entry under another hash does not
    /// list as a second entry of the same name.
    pub fn decrypt_long(
        &self,
        dir: &DirId,
        entry: &[u8],
        side: &[u8],
    ) -> Result<Vec<u8>, NameError> {
        if !Self::long_entry_matches(entry, side) {
            return Err(NameError::Undecryptable);
        }
        self.decrypt(dir, side.trim_ascii_end())
    }

    /// Whether long entry `entry` is `kmsfs.long.` ‖ base64url(SHA-256(stored)) of the stored
    /// name its side file holds (`side`, trailing white space ignored).
    pub fn long_entry_matches(entry: &[u8], side: &[u8]) -> bool {
        entry
            .strip_prefix(LONG_NAME_PREFIX.as_bytes())
            .is_some_and(|h| h == B64.encode(sha256(side.trim_ascii_end())).as_bytes())
    }

    /// Classifies a directory entry of a cipher directory.
    pub fn classify<'a>(&self, entry: &'a [u8], at_root: bool) -> EntryKind<'a> {
        if at_root && entry == CONTROL_DIR.as_bytes() {
            return EntryKind::Internal;
        }
        let long = entry.starts_with(LONG_NAME_PREFIX.as_bytes());
        if entry == DIRID_FILE.as_bytes() || (long && entry.ends_with(LONG_NAME_SUFFIX.as_bytes()))
        {
            return EntryKind::Internal;
        }
        if self.names.is_some() && long {
            return EntryKind::Long;
        }
        if self.names.is_none() && is_internal_name(entry) {
            return EntryKind::Internal;
        }
        EntryKind::Name(entry)
    }

    /// Encrypts a symlink target (random nonce) to what the backing symlink stores.
    pub fn encrypt_symlink(&self, target: &[u8]) -> Result<String, NameError> {
        let enc = B64.encode(self.symlinks.seal_random(b"kmsfs symlink", target));
        // Linux symlinks hold at most PATH_MAX - 1 bytes on most file systems.
        if enc.len() >= 4096 {
            return Err(NameError::TargetTooLong);
        }
        Ok(enc)
    }

    pub fn decrypt_symlink(&self, stored: &[u8]) -> Result<Vec<u8>, NameError> {
        let raw = B64.decode(stored).map_err(|_| NameError::Undecryptable)?;
        self.symlinks
            .open(b"kmsfs symlink", &raw)
            .map_err(|_| NameError::Undecryptable)
    }

    /// Plaintext length of a stored symlink target, without decrypting (for `stat`).
    pub fn symlink_plain_len(stored_len: u64) -> u64 {
        (stored_len * 3 / 4).saturating_sub(28)
    }

    /// `user.NAME` → backing xattr name `user.kmsfs.<enc(NAME)>`.
    pub fn encrypt_xattr_name(&self, user_suffix: &[u8]) -> String {
        let sealed =
            self.xattr_names
                .seal_with_nonce(&ZERO_NONCE, b"kmsfs xattr name", user_suffix);
        format!("{XATTR_PREFIX}{}", B64.encode(&sealed[12..]))
    }

    pub fn decrypt_xattr_name(&self, backing: &str) -> Option<Vec<u8>> {
        let enc = backing.strip_prefix(XATTR_PREFIX)?;
        let raw = B64.decode(enc).ok()?;
        let mut sealed = ZERO_NONCE.to_vec();
        sealed.extend_from_slice(&raw);
        self.xattr_names.open(b"kmsfs xattr name", &sealed).ok()
    }

    /// Encrypts an xattr value bound to its (encrypted) name.
    pub fn encrypt_xattr_value(&self, backing_name: &str, value: &[u8]) -> Vec<u8> {
        self.xattr_values
            .seal_random(backing_name.as_bytes(), value)
    }

    pub fn decrypt_xattr_value(
        &self,
        backing_name: &str,
        stored: &[u8],
    ) -> Result<Vec<u8>, NameError> {
        self.xattr_values
            .open(backing_name.as_bytes(), stored)
            .map_err(|_| NameError::Undecryptable)
    }

    /// Encrypts an xattr pack (`format::xattr_pack`), bound to its backing name like a value.
    pub fn encrypt_xattr_pack(&self, plain: &[u8]) -> Vec<u8> {
        self.encrypt_xattr_value(XATTR_PACK, plain)
    }

    pub fn decrypt_xattr_pack(&self, stored: &[u8]) -> Result<Vec<u8>, NameError> {
        self.decrypt_xattr_value(XATTR_PACK, stored)
    }
}

fn name_aad(dir: &DirId) -> [u8; 22] {
    let mut a = [0u8; 22];
    a[..6].copy_from_slice(b"kmsfsN");
    a[6..].copy_from_slice(&dir.0);
    a
}

fn is_internal_name(s: &[u8]) -> bool {
    s == DIRID_FILE.as_bytes() || s.starts_with(LONG_NAME_PREFIX.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::new(&Key256::from_bytes([3; 32]), false)
    }

    #[test]
    fn round_trip_and_deterministic() {
        let n = names();
        let d = DirId([1; 16]);
        for name in [
            &b"a"[..],
            b"hello.txt",
            &[b'x'; 255][..],
            "ünïcødé".as_bytes(),
        ] {
            let c = n.encrypt(&d, name, false).unwrap();
            assert_eq!(c, n.encrypt(&d, name, false).unwrap());
            let enc = c
                .long
                .clone()
                .map(String::into_bytes)
                .unwrap_or(c.entry.as_bytes().to_vec());
            assert!(c.entry.len() <= NAME_MAX);
            assert_eq!(n.decrypt(&d, &enc).unwrap(), name);
            assert!(matches!(
                n.classify(c.entry.as_bytes(), false),
                EntryKind::Name(_) | EntryKind::Long
            ));
        }
        assert!(n.encrypt(&d, &[b'x'; 255], false).unwrap().long.is_some());
        assert!(n.encrypt(&d, &[b'x'; 100], false).unwrap().long.is_none());
        assert_eq!(n.encrypt(&d, &[b'x'; 256], false), Err(NameError::TooLong));
    }

    #[test]
    fn white_space_only_in_side_files_and_long_entries_bound_to_their_hash() {
        let n = names();
        let d = DirId([1; 16]);
        let short = n
            .encrypt(&d, b"x", false)
            .unwrap()
            .entry
            .as_bytes()
            .to_vec();
        for pad in [&b" "[..], b"\n", b"\t"] {
            let mut p = short.clone();
            p.extend_from_slice(pad);
            assert_eq!(n.decrypt(&d, &p), Err(NameError::Undecryptable));
        }
        let c = n.encrypt(&d, &[b'y'; 200], false).unwrap();
        let long = c.long.clone().unwrap().into_bytes();
        let entry = c.entry.as_bytes();
        let mut padded = long.clone();
        padded.extend_from_slice(b" \n");
        assert_eq!(n.decrypt_long(&d, entry, &padded).unwrap(), [b'y'; 200]);
        assert!(n.decrypt(&d, &padded).is_err());
        let forged = format!("{LONG_NAME_PREFIX}forged");
        assert_eq!(
            n.decrypt_long(&d, forged.as_bytes(), &long),
            Err(NameError::Undecryptable)
        );
    }

    #[test]
    fn bound_to_directory() {
        let n = names();
        let c = n.encrypt(&DirId([1; 16]), b"secret", false).unwrap();
        assert_eq!(
            n.decrypt(&DirId([2; 16]), c.entry.as_bytes()),
            Err(NameError::Undecryptable)
        );
    }

    #[test]
    fn flip_a_byte_in_a_name() {
        let n = names();
        let d = DirId([1; 16]);
        let c = n.encrypt(&d, b"some-name", false).unwrap();
        let mut raw = B64.decode(c.entry.as_bytes()).unwrap();
        for i in 0..raw.len() {
            raw[i] ^= 1;
            assert!(n.decrypt(&d, B64.encode(&raw).as_bytes()).is_err());
            raw[i] ^= 1;
        }
    }

    #[test]
    fn control_name_reserved_at_root_and_internal_hidden() {
        let n = names();
        assert_eq!(
            n.encrypt(&DirId([0; 16]), b".kmsfs", true),
            Err(NameError::Reserved)
        );
        assert!(n.encrypt(&DirId([0; 16]), b".kmsfs", false).is_ok());
        assert_eq!(
            n.classify(DIRID_FILE.as_bytes(), false),
            EntryKind::Internal
        );
        assert_eq!(
            n.classify(b"kmsfs.long.abc.name", false),
            EntryKind::Internal
        );
        assert_eq!(n.classify(b"kmsfs.long.abc", false), EntryKind::Long);
        let p = Names::new(&Key256::from_bytes([3; 32]), true);
        assert_eq!(
            p.encrypt(&DirId([0; 16]), DIRID_FILE.as_bytes(), false),
            Err(NameError::Reserved)
        );
        assert_eq!(
            p.encrypt(&DirId([0; 16]), b"plain", false).unwrap().entry,
            "plain"
        );
    }

    #[test]
    fn symlinks_and_xattrs() {
        let n = names();
        let s = n.encrypt_symlink(b"../target/file").unwrap();
        assert_eq!(Names::symlink_plain_len(s.len() as u64), 14);
        assert_eq!(n.decrypt_symlink(s.as_bytes()).unwrap(), b"../target/file");
        let mut bad = s.clone().into_bytes();
        bad[5] = if bad[5] == b'A' { b'B' } else { b'A' };
        assert!(n.decrypt_symlink(&bad).is_err());
        let xn = n.encrypt_xattr_name(b"comment");
        assert_eq!(n.decrypt_xattr_name(&xn).unwrap(), b"comment");
        let v = n.encrypt_xattr_value(&xn, b"value");
        assert_eq!(n.decrypt_xattr_value(&xn, &v).unwrap(), b"value");
        assert!(n.decrypt_xattr_value("user.kmsfs.other", &v).is_err());
    }
}
