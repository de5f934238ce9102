//! Symlink targets too long to be stored encrypted as the backing symlink's own target
//! (FORMAT.md §7, since 2026-12-08). A backing symlink holds at most 4,095 bytes, and an
//! encrypted target in base64url takes 4/3 of the plaintext plus 28 bytes, so targets of 3,044 to
//! 4,095 bytes (PATH_MAX − 1, what Linux lets `symlink(2)` pass) are sealed into a side file
//! `.kmsfs/links/<id>` instead, and the backing symlink holds only `kmsfs.link.<id>`.
//!
//! One side file per symlink inode: hard links of the symlink share it, a rename does not touch
//! it, and whoever removes the last name of the symlink removes it (`Vfs::unlink`, `rename`).
//! One left behind by a crash is reported, and removed, by `kmsfs fsck --repair`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::{CONTROL_DIR, NameError, Names};
use crate::crypto::{NONCE_LEN, TAG_LEN, random_array};

/// What a long link's backing symlink holds before its id.
pub const LINK_PREFIX: &str = "kmsfs.link.";
/// Length of a long link's backing target: the prefix and 22 base64url characters (16 bytes).
/// No base64url string without padding has a length of 1 modulo 4, so the size `lstat` gives
/// for the backing symlink tells a long link from an inline target without reading it.
pub const LINK_TARGET_LEN: u64 = 33;
/// The longest target a symlink may have (PATH_MAX − 1).
pub const TARGET_MAX: usize = 4095;
/// The store's directory inside the cipher directory's control directory.
pub const STORE_DIR: &str = "links";
/// Associated data of a sealed target, followed by the link's 16-byte id.
const AAD_PREFIX: &[u8] = b"kmsfs long symlink";
/// A side file longer than any sealed target is not read.
const SIDE_MAX: u64 = (TARGET_MAX + NONCE_LEN + TAG_LEN) as u64;

/// The id of a long link: 16 random bytes, named in base64url.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId([u8; 16]);

impl LinkId {
    fn random() -> LinkId {
        LinkId(random_array())
    }

    /// The id in a backing symlink's target `stored`, if it is a long link's.
    pub fn from_target(stored: &[u8]) -> Option<LinkId> {
        Self::from_file_name(stored.strip_prefix(LINK_PREFIX.as_bytes())?)
    }

    /// The id a side file's name `name` stands for (exactly 22 base64url characters).
    pub fn from_file_name(name: &[u8]) -> Option<LinkId> {
        if name.len() != 22 {
            return None;
        }
        let raw = B64.decode(name).ok()?;
        // The last character carries 4 unused bits: only one spelling of an id is its name.
        let id = LinkId(raw.try_into().ok()?);
        (id.file_name().as_bytes() == name).then_some(id)
    }

    pub fn file_name(&self) -> String {
        B64.encode(self.0)
    }

    /// What the backing symlink of this long link holds.
    pub fn target(&self) -> String {
        format!("{LINK_PREFIX}{}", self.file_name())
    }

    fn aad(&self) -> [u8; AAD_PREFIX.len() + 16] {
        let mut a = [0u8; AAD_PREFIX.len() + 16];
        a[..AAD_PREFIX.len()].copy_from_slice(AAD_PREFIX);
        a[AAD_PREFIX.len()..].copy_from_slice(&self.0);
        a
    }
}

impl Names {
    /// Seals a long target into what its side file holds: `nonce ‖ ct ‖ tag` under the symlink
    /// key, bound to the link's id.
    pub fn seal_long_symlink(&self, id: &LinkId, target: &[u8]) -> Vec<u8> {
        self.symlinks.seal_random(&id.aad(), target)
    }

    pub fn open_long_symlink(&self, id: &LinkId, sealed: &[u8]) -> Result<Vec<u8>, NameError> {
        self.symlinks
            .open(&id.aad(), sealed)
            .map_err(|_| NameError::Undecryptable)
    }
}

/// The side files of long links of one volume: `<cipher dir>/.kmsfs/links/`.
#[derive(Debug, Clone)]
pub struct LinkStore {
    dir: PathBuf,
}

impl LinkStore {
    pub fn new(cipher_root: &Path) -> LinkStore {
        LinkStore {
            dir: cipher_root.join(CONTROL_DIR).join(STORE_DIR),
        }
    }

    /// Whether the volume has ever held a long link (the store exists).
    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// `.kmsfs/links/` of the volume.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, id: &LinkId) -> PathBuf {
        self.dir.join(id.file_name())
    }

    /// Seals `target` into a new side file, on disk when this returns (`fdatasync`: the backing
    /// symlink that names it is journaled metadata a power loss may keep while the file's
    /// delayed-allocation data is lost). The store is made (mode 0700) at the volume's first
    /// long link, its entry synced into `.kmsfs/`.
    pub fn create(&self, names: &Names, target: &[u8]) -> io::Result<LinkId> {
        if target.len() > TARGET_MAX {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        self.make_dir()?;
        let id = LinkId::random();
        let path = self.path(&id);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        let written = f
            .write_all(&names.seal_long_symlink(&id, target))
            .and_then(|()| f.sync_data());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(id)
    }

    fn make_dir(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => {
                let parent = crate::fsutil::parent_dir(&self.dir);
                File::open(parent)?.sync_all()
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The target of long link `id`. A side file that is missing, too long or does not
    /// authenticate is `Undecryptable`.
    pub fn read(&self, names: &Names, id: &LinkId) -> Result<Vec<u8>, NameError> {
        let sealed = (|| -> io::Result<Vec<u8>> {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(self.path(id))?;
            let mut buf = Vec::new();
            f.take(SIDE_MAX + 1).read_to_end(&mut buf)?;
            Ok(buf)
        })()
        .map_err(|_| NameError::Undecryptable)?;
        if sealed.len() as u64 > SIDE_MAX {
            return Err(NameError::Undecryptable);
        }
        names.open_long_symlink(id, &sealed)
    }

    /// The target length of long link `id`, from its side file's size (for `stat`, without
    /// decrypting); 0 if the side file is not there.
    pub fn target_len(&self, id: &LinkId) -> u64 {
        std::fs::symlink_metadata(self.path(id))
            .map(|m| m.len().saturating_sub((NONCE_LEN + TAG_LEN) as u64))
            .unwrap_or(0)
    }

    pub fn remove(&self, id: &LinkId) -> io::Result<()> {
        std::fs::remove_file(self.path(id))
    }

    /// The names of the files in the store (empty if there is none).
    pub fn file_names(&self) -> io::Result<Vec<std::ffi::OsString>> {
        match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd.map(|e| e.map(|e| e.file_name())).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// The plaintext of a backing symlink's target `stored`: decrypted in place, or, for a long
    /// link, from its side file.
    pub fn read_target(&self, names: &Names, stored: &[u8]) -> Result<Vec<u8>, NameError> {
        match LinkId::from_target(stored) {
            Some(id) => self.read(names, &id),
            None => names.decrypt_symlink(stored),
        }
    }

    /// Encrypts `target` for a new symlink: what the backing symlink is to hold, and the id of
    /// the side file written for it, if it is a long one (the caller removes that side file if
    /// the symlink is not made after all).
    pub fn store_target(
        &self,
        names: &Names,
        target: &[u8],
    ) -> Result<(String, Option<LinkId>), StoreError> {
        match names.encrypt_symlink(target) {
            Ok(stored) => Ok((stored, None)),
            Err(NameError::TargetTooLong) if target.len() <= TARGET_MAX => {
                let id = self.create(names, target).map_err(StoreError::Io)?;
                Ok((id.target(), Some(id)))
            }
            Err(e) => Err(StoreError::Name(e)),
        }
    }
}

/// Why a symlink's target could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Name(NameError),
    #[error("writing a long symlink target's side file: {0}")]
    Io(io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key256;

    fn names() -> Names {
        Names::new(&Key256::from_bytes([5; 32]), false)
    }

    #[test]
    fn marker_length_is_never_an_inline_targets() {
        let id = LinkId::random();
        assert_eq!(id.target().len() as u64, LINK_TARGET_LEN);
        let n = names();
        for len in 0..3100 {
            let stored = n.encrypt_symlink(&vec![b'a'; len]);
            if let Ok(s) = stored {
                assert_ne!(s.len() as u64 % 4, 1, "inline target of {len} bytes");
                assert!(LinkId::from_target(s.as_bytes()).is_none());
            }
        }
    }

    #[test]
    fn id_names_round_trip_and_only_one_spelling() {
        let id = LinkId::random();
        assert_eq!(LinkId::from_target(id.target().as_bytes()), Some(id));
        assert_eq!(LinkId::from_file_name(id.file_name().as_bytes()), Some(id));
        let mut other = id.file_name().into_bytes();
        // Another last character: another id, or none (unused bits set), never this one.
        let last = other[21];
        other[21] = if last == b'A' { b'B' } else { b'A' };
        assert_ne!(LinkId::from_file_name(&other), Some(id));
        assert!(LinkId::from_file_name(b"short").is_none());
        assert!(LinkId::from_target(b"kmsfs.link.").is_none());
    }

    #[test]
    fn long_targets_round_trip_and_fail_closed() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(tmp.path().join(CONTROL_DIR)).expect("control dir");
        let store = LinkStore::new(tmp.path());
        let n = names();
        assert!(!store.exists());
        let short = b"../a/b".to_vec();
        let (s, id) = store.store_target(&n, &short).expect("short");
        assert!(id.is_none() && !store.exists());
        assert_eq!(store.read_target(&n, s.as_bytes()).expect("read"), short);

        let long: Vec<u8> = (0..TARGET_MAX).map(|i| b"abc/"[i % 4]).collect();
        let (s, id) = store.store_target(&n, &long).expect("long");
        let id = id.expect("a side file");
        assert_eq!(s.len() as u64, LINK_TARGET_LEN);
        assert_eq!(store.read_target(&n, s.as_bytes()).expect("read"), long);
        assert_eq!(store.target_len(&id), TARGET_MAX as u64);
        assert!(matches!(
            store.store_target(&n, &vec![b'x'; TARGET_MAX + 1]),
            Err(StoreError::Name(NameError::TargetTooLong))
        ));

        // Flip one byte anywhere in the side file: no target.
        let path = store.path(&id);
        let good = std::fs::read(&path).expect("side");
        for i in [0, NONCE_LEN, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 1;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            std::fs::write(&path, &bad).expect("write");
            assert_eq!(
                store.read_target(&n, s.as_bytes()),
                Err(NameError::Undecryptable),
                "byte {i}"
            );
        }
        std::fs::write(&path, &good).expect("write");
        // Another link's side file under this id: bound to the id, refused.
        let (s2, id2) = store.store_target(&n, &long).expect("second");
        let id2 = id2.expect("a side file");
        std::fs::copy(&path, store.path(&id2)).expect("copy");
        assert_eq!(
            store.read_target(&n, s2.as_bytes()),
            Err(NameError::Undecryptable)
        );
        // Another volume's key: refused. A missing side file: refused, length 0.
        let other = Names::new(&Key256::from_bytes([6; 32]), false);
        assert!(store.read_target(&other, s.as_bytes()).is_err());
        store.remove(&id).expect("remove");
        assert_eq!(
            store.read_target(&n, s.as_bytes()),
            Err(NameError::Undecryptable)
        );
        assert_eq!(store.target_len(&id), 0);
        let names_left = store.file_names().expect("list");
        assert_eq!(names_left, vec![std::ffi::OsString::from(id2.file_name())]);
    }
}
