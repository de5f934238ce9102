//! Plaintext paths, for key rules (the key of a new file depends on its path), path conditions
//! of key policies and audit records. A node remembers the entry the kernel last found it under
//! (checked with a one-name `stat` in that directory before use), and a directory its plaintext
//! path until the next rename through the mount, so an open usually costs one `stat`. Otherwise
//! a node's cipher path (from its `O_PATH` descriptor) is decrypted component by component from
//! the root, with the plaintext of every directory prefix cached and a file's name decrypted with
//! its parent node's cached directory id. A directory moved in the cipher directory behind the
//! mount's back (not supported while mounted) keeps its old plaintext path here until the next
//! rename through the mount.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::Kind;
use super::inode::{Node, NodeName, ROOT_INO};
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

    /// Plaintext path of a directory node (`/` for the root). Remembered in the node until the
    /// next rename through the mount (which may have moved it or an ancestor); read back from
    /// its cipher path otherwise.
    pub(super) fn plain_dir_path(&self, dir: &Node) -> Result<String> {
        // Read before the path: a rename that ends after this read moves the count again, so
        // a path read before the rename is never taken as current.
        let renames = self.renames.load(Ordering::Acquire);
        if let Some(p) = dir.cached_path(renames) {
            return Ok(p.to_string());
        }
        let cipher = std::fs::read_link(dir.proc_path())?;
        let p = self.plain_of_cipher(&cipher)?;
        dir.cache_path(renames, p.as_str().into());
        Ok(p)
    }

    /// A rename through the mount ended (or failed part way): remembered directory paths are
    /// read again.
    pub(super) fn renamed(&self) {
        self.renames.fetch_add(1, Ordering::AcqRel);
    }

    /// Plaintext path of any node. A file's is its directory's plus the name
    /// [`Vfs::current_name`] finds it under (after a rename through the mount, the one its
    /// cipher path shows); otherwise (its directory not known) the whole cipher path is
    /// decrypted.
    pub(super) fn plain_node_path(&self, node: &Node) -> Result<String> {
        if node.kind == Kind::Dir {
            return self.plain_dir_path(node);
        }
        if let Some((pino, name)) = self.name_of(node) {
            let dir = self.inodes.get(pino)?;
            return Ok(join(&self.plain_dir_path(&dir)?, name.as_bytes()));
        }
        let cipher = std::fs::read_link(node.proc_path())?;
        self.plain_of_cipher(&cipher)
    }

    /// Where node `ino` is now, as the kernel names it: a directory node and the plaintext name
    /// in it that holds the node (checked with a one-name `stat`): the entry it was last found
    /// under, else the one its cipher path shows (after a rename through the mount, which the
    /// kernel makes without a lookup). `None` when neither holds it (unlinked, or moved behind
    /// the mount's back) or the directory is not known. One of its names for a hard link.
    pub fn current_name(&self, ino: u64) -> Option<(u64, std::ffi::OsString)> {
        self.name_of(&*self.inodes.get(ino).ok()?)
    }

    fn name_of(&self, node: &Node) -> Option<(u64, std::ffi::OsString)> {
        if let Some(n) = node.name()
            && let Ok(p) = self.inodes.get(n.parent)
            && p.kind == Kind::Dir
            && self.holds(&p, &n.cipher, node)
        {
            return Some((n.parent, n.plain.clone()));
        }
        let cipher = std::fs::read_link(node.proc_path()).ok()?;
        let (parent_c, entry) = (cipher.parent()?, cipher.file_name()?);
        let pino = self.inodes.map_ino(rustix::fs::stat(parent_c).ok()?.st_ino);
        let p = self.inodes.get(pino).ok()?;
        // A cipher name is bound to its directory's id, so no other directory holds the same
        // one; with plaintext names another may, a hard link under the same name, which gives
        // the same name.
        if p.kind != Kind::Dir || !self.holds(&p, entry, node) {
            return None;
        }
        let id = self.dir_id(&p).ok()?;
        let name = self
            .decrypt_entry(parent_c, &id, entry, pino == ROOT_INO)
            .ok()?;
        Some((pino, std::os::unix::ffi::OsStringExt::from_vec(name)))
    }

    /// Plaintext path of entry `n`, known to hold its node (its directory's path plus its
    /// plaintext name).
    pub(super) fn plain_entry_path(&self, n: &NodeName) -> Result<String> {
        let dir = self.inodes.get(n.parent)?;
        Ok(join(&self.plain_dir_path(&dir)?, n.plain.as_bytes()))
    }

    /// Whether directory `dir` has `node` under cipher name `entry`.
    fn holds(&self, dir: &Node, entry: &OsStr, node: &Node) -> bool {
        rustix::fs::statat(&dir.fd, entry, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| self.inodes.map_ino(st.st_ino) == node.ino)
    }

    /// The plaintext of a cipher path, through the cache. A cipher path always decrypts to the
    /// same plaintext path, so the cache needs no invalidation (a renamed directory simply has
    /// a new cipher path; a directory made again under the same name has a new id, so its
    /// entries have new cipher names).
    fn plain_of_cipher(&self, cipher: &Path) -> Result<String> {
        if let Some(p) = self.path_cache.get(cipher) {
            return Ok(p.clone());
        }
        let root = self.root_cipher()?;
        if cipher == root {
            return Ok("/".into());
        }
        let outside = || {
            VfsError::Integrity(format!(
                "{} is outside the cipher directory",
                cipher.display()
            ))
        };
        if !cipher.starts_with(root) {
            return Err(outside());
        }
        let (Some(parent), Some(entry)) = (cipher.parent(), cipher.file_name()) else {
            return Err(outside());
        };
        let dir = self.plain_of_cipher(parent)?;
        let name = self.decrypt_component(parent, entry, parent == root)?;
        let plain = join(&dir, &name);
        if self.path_cache.len() >= PATH_CACHE_MAX {
            self.path_cache.clear();
        }
        self.path_cache.insert(cipher.to_path_buf(), plain.clone());
        Ok(plain)
    }

    /// The cipher directory as `/proc/self/fd` shows it.
    pub(super) fn root_cipher(&self) -> Result<&Path> {
        match self.root_cipher.get() {
            Some(r) => Ok(r),
            None => {
                let r = std::fs::read_link(self.inodes.get(ROOT_INO)?.proc_path())?;
                Ok(self.root_cipher.get_or_init(|| r))
            }
        }
    }

    fn decrypt_component(&self, parent: &Path, entry: &OsStr, at_root: bool) -> Result<Vec<u8>> {
        if self.names.plaintext() {
            return self.decrypt_entry(parent, &DirId([0; 16]), entry, at_root);
        }
        let file = || -> Result<DirId> {
            let b = std::fs::read(parent.join(DIRID_FILE))?;
            Ok(DirId(b.try_into().map_err(|_| {
                VfsError::Integrity(format!(
                    "{}: directory id is not 16 bytes",
                    parent.display()
                ))
            })?))
        };
        let copy = crate::fsutil::read_dirid_copy(parent)
            .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
            .map(DirId);
        let Some(copy) = copy else {
            return self.decrypt_entry(parent, &file()?, entry, at_root);
        };
        // A name that does not decrypt under the copy may under `kmsfs.dirid` when the copy is
        // stale or damaged, as a listing and a lookup find (see `Vfs::dir_id_by_file`); until
        // 2026-12-06 the path of everything below such a directory was unknown (no file could
        // be made there under key rules).
        self.decrypt_entry(parent, &copy, entry, at_root)
            .or_else(|e| match file() {
                Ok(id) if id != copy => self.decrypt_entry(parent, &id, entry, at_root),
                _ => Err(e),
            })
    }

    /// Decrypts entry `entry` of the directory at cipher path `parent`, whose id is `id`.
    fn decrypt_entry(
        &self,
        parent: &Path,
        id: &DirId,
        entry: &OsStr,
        at_root: bool,
    ) -> Result<Vec<u8>> {
        let undecryptable = || {
            VfsError::Integrity(format!(
                "{}: name does not decrypt",
                parent.join(entry).display()
            ))
        };
        match self.names.classify(entry.as_bytes(), at_root) {
            EntryKind::Internal => Err(undecryptable()),
            EntryKind::Long => {
                let mut side = entry.to_os_string();
                side.push(LONG_NAME_SUFFIX);
                let enc = std::fs::read(parent.join(side))?;
                self.names
                    .decrypt_long(id, entry.as_bytes(), &enc)
                    .map_err(|_| undecryptable())
            }
            EntryKind::Name(n) => self.names.decrypt(id, n).map_err(|_| undecryptable()),
        }
    }
}

fn join(dir: &str, name: &[u8]) -> String {
    let mut p = String::with_capacity(dir.len() + name.len() + 1);
    p.push_str(dir);
    if !p.ends_with('/') {
        p.push('/');
    }
    p.push_str(&String::from_utf8_lossy(name));
    p
}
