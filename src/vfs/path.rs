//! Plaintext paths of directories, for key rules (the key of a new file depends on its path).
//! Computed only when the volume has rules: the directory's cipher path (from its `O_PATH`
//! descriptor) is decrypted component by component from the root.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use super::inode::Node;
use super::{Result, Vfs, VfsError};
use crate::format::DirId;
use crate::names::{DIRID_FILE, EntryKind, LONG_NAME_SUFFIX};

/// Directory paths remembered (cleared when full).
const PATH_CACHE_MAX: usize = 16384;

impl Vfs {
    /// The plaintext path (inside the mount) of `name` in directory `dir`, or `None` when the
    /// volume has no key rules (so nobody needs it).
    pub(super) fn path_for_rules(&self, dir: &Node, name: &OsStr) -> Result<Option<String>> {
        if self.km.query(|s| s.rules.is_empty()) {
            return Ok(None);
        }
        let mut p = self.plain_dir_path(dir)?;
        if !p.ends_with('/') {
            p.push('/');
        }
        p.push_str(&String::from_utf8_lossy(name.as_bytes()));
        Ok(Some(p))
    }

    /// Plaintext path of a directory node (`/` for the root).
    pub(super) fn plain_dir_path(&self, dir: &Node) -> Result<String> {
        let cipher = std::fs::read_link(dir.proc_path())?;
        // A cipher path always decrypts to the same plaintext path, so the cache needs no
        // invalidation (a renamed directory simply has a new cipher path).
        if let Some(p) = self.path_cache.get(&cipher) {
            return Ok(p.clone());
        }
        let plain = self.decrypt_cipher_path(&cipher)?;
        if self.path_cache.len() >= PATH_CACHE_MAX {
            self.path_cache.clear();
        }
        self.path_cache.insert(cipher, plain.clone());
        Ok(plain)
    }

    fn decrypt_cipher_path(&self, cipher: &Path) -> Result<String> {
        let root = std::fs::read_link(self.inodes.get(super::inode::ROOT_INO)?.proc_path())?;
        let rel = cipher.strip_prefix(&root).map_err(|_| {
            VfsError::Integrity(format!(
                "{} is outside the cipher directory",
                cipher.display()
            ))
        })?;
        let mut out = String::new();
        let mut cur = root.clone();
        for c in rel.components() {
            let Component::Normal(entry) = c else {
                continue;
            };
            let plain = self.decrypt_component(&cur, entry, cur == root)?;
            out.push('/');
            out.push_str(&String::from_utf8_lossy(&plain));
            cur.push(entry);
        }
        if out.is_empty() {
            out.push('/');
        }
        Ok(out)
    }

    fn decrypt_component(&self, parent: &Path, entry: &OsStr, at_root: bool) -> Result<Vec<u8>> {
        let undecryptable = || {
            VfsError::Integrity(format!(
                "{}: name does not decrypt",
                parent.join(entry).display()
            ))
        };
        let id = if self.names.plaintext() {
            DirId([0; 16])
        } else {
            let b = std::fs::read(parent.join(DIRID_FILE))?;
            DirId(b.try_into().map_err(|_| undecryptable())?)
        };
        match self.names.classify(entry.as_bytes(), at_root) {
            EntryKind::Internal => Err(undecryptable()),
            EntryKind::Long => {
                let mut side = entry.to_os_string();
                side.push(LONG_NAME_SUFFIX);
                let enc = std::fs::read(parent.join(side))?;
                self.names.decrypt(&id, &enc).map_err(|_| undecryptable())
            }
            EntryKind::Name(n) => self.names.decrypt(&id, n).map_err(|_| undecryptable()),
        }
    }
}
