//! The inode table.
//!
//! Lifetime rules: every inode the kernel knows holds an `O_PATH` descriptor of its backing file,
//! so renames and hard links need no path bookkeeping and the backing inode number cannot be
//! reused while the kernel may still name it. Each reply that hands the kernel an entry (lookup,
//! create, mkdir, mknod, symlink, link) adds one lookup; `forget` subtracts; at zero the node and
//! its descriptor go. The root (inode 1) is never forgotten.
//!
//! Inode numbers are the backing inode numbers (so `readdir`'s d_ino and `stat` agree), except that
//! the backing root's number is shown as 1 and a backing inode numbered 1 takes the root's number.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::attr::Kind;
use super::error::{Result, VfsError};
use crate::format::DirId;

pub const ROOT_INO: u64 = 1;

pub struct Node {
    pub ino: u64,
    /// `O_PATH | O_NOFOLLOW` descriptor of the backing file.
    pub fd: OwnedFd,
    pub kind: Kind,
    /// The generation the kernel is given with the node id (0 without export support, see
    /// `export.rs`): which of the files that ever had this number.
    pub generation: u64,
    /// The backing file system's handle of the file, kept where one cannot be made from the
    /// number alone (`export.rs`): remembered when the node is let go.
    pub backing: Option<crate::fsutil::BackingHandle>,
    lookups: AtomicU64,
    /// The directory's id (encrypted names), read once.
    pub dir_id: OnceLock<DirId>,
    /// `kmsfs.dirid` when it differs from the id read from the copy in the xattr (`None`: it
    /// does not, or is not 16 bytes): read only once a name failed to decrypt.
    pub dir_id_file: OnceLock<Option<DirId>>,
    /// The file's id, taken over from the copy because names decrypt with it (the copy is
    /// damaged: see `Vfs::dir_id_by_file`).
    pub dir_id_switched: OnceLock<DirId>,
    /// A name decrypted under the copy (a listing, or a lookup that found one): new names go on
    /// under it, and names not found are not looked for under `kmsfs.dirid`, without reading
    /// the file (see `Vfs::id_for_new_name`, `Vfs::lookup`).
    pub copy_confirmed: std::sync::atomic::AtomicBool,
    /// Changes to the entries of this directory made through the mount, counted after each
    /// (a listing read before the count moved is stale: see `dir_read::Cursors`).
    changes: AtomicU64,
    /// A listing of this directory was given to the kernel since its entries last changed
    /// (the kernel caches listings: see [`Node::take_listed`]).
    listed: std::sync::atomic::AtomicBool,
    /// The entry the node was last given to the kernel under: a hint for its plaintext path
    /// (checked against its directory before use, see `path.rs`) and for read-ahead.
    name: Mutex<Option<Arc<NodeName>>>,
    /// A directory's plaintext path, with the count of renames it was read at (`path.rs`).
    plain_path: Mutex<Option<(u64, Arc<str>)>>,
    /// When a directory's entries were last searched or listed (milliseconds on
    /// [`coarse_now_ms`], 0: not since the node was made): its blocks are likely in the backing
    /// store's page cache, so reading them ahead is not worth it (`dir_ahead`).
    entries_read_at: AtomicU64,
}

/// How long the backing blocks of a directory searched or listed through the mount are taken to
/// stay cached (a hint for read-ahead: a wrong guess costs only speed).
const ENTRIES_WARM_MS: u64 = 30_000;

/// Milliseconds since the first call, from 1 on.
pub(super) fn coarse_now_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// An entry naming a node: its directory, its name there in the cipher directory, and in
/// plaintext.
pub struct NodeName {
    pub parent: u64,
    pub cipher: OsString,
    pub plain: OsString,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("ino", &self.ino)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Node {
    /// Records that an entry of this directory was made, removed or renamed.
    pub fn entries_changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Records that (part of) this directory's listing was given to the kernel.
    pub fn set_listed(&self) {
        if !self.listed.load(Ordering::Relaxed) {
            self.listed.store(true, Ordering::Release);
        }
    }

    /// Whether a listing was given to the kernel since the last call (which the kernel may
    /// hold cached, and which a change of the entries makes stale); clears it.
    pub fn take_listed(&self) -> bool {
        self.listed.load(Ordering::Acquire) && self.listed.swap(false, Ordering::AcqRel)
    }

    /// The count of changes to this directory's entries.
    pub fn entry_changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Remembers the entry the node was just found or made under.
    pub fn set_name(&self, parent: u64, cipher: &OsStr, plain: &OsStr) {
        let mut g = self.name.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref()
            .is_some_and(|n| n.parent == parent && n.cipher == cipher && n.plain == plain)
        {
            return;
        }
        *g = Some(Arc::new(NodeName {
            parent,
            cipher: cipher.to_os_string(),
            plain: plain.to_os_string(),
        }));
    }

    /// The entry the node was last found or made under, if known.
    pub fn name(&self) -> Option<Arc<NodeName>> {
        self.name.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The directory the node was last found or made in (0: not known).
    pub fn parent(&self) -> u64 {
        self.name
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |n| n.parent)
    }

    /// A directory's plaintext path remembered at rename count `renames`.
    pub fn cached_path(&self, renames: u64) -> Option<Arc<str>> {
        let g = self.plain_path.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .filter(|(r, _)| *r == renames)
            .map(|(_, p)| p.clone())
    }

    pub fn cache_path(&self, renames: u64, path: Arc<str>) {
        *self.plain_path.lock().unwrap_or_else(|p| p.into_inner()) = Some((renames, path));
    }

    /// Records that this directory's entries were just searched or listed in the backing store.
    /// Stored at most once a second: every lookup in the directory calls this, and a store on
    /// each would bounce the node's cache line between the threads looking up in it.
    pub fn note_entries_read(&self) {
        let (now, at) = (
            coarse_now_ms(),
            self.entries_read_at.load(Ordering::Relaxed),
        );
        if at == 0 || now.saturating_sub(at) >= 1_000 {
            self.entries_read_at.store(now, Ordering::Relaxed);
        }
    }

    /// Whether this directory's entries were searched or listed in the last
    /// [`ENTRIES_WARM_MS`].
    pub fn entries_recently_read(&self) -> bool {
        let at = self.entries_read_at.load(Ordering::Relaxed);
        at != 0 && coarse_now_ms().saturating_sub(at) < ENTRIES_WARM_MS
    }

    /// `/proc/self/fd/N`: reopens the backing file through its `O_PATH` descriptor.
    pub fn proc_path(&self) -> String {
        fd_path(&self.fd)
    }

    /// Opens this directory for reading through its `O_PATH` descriptor (for listing, fsync,
    /// ioctls): `O_RDONLY | O_DIRECTORY | O_CLOEXEC` and `extra`.
    pub fn open_dir(&self, extra: rustix::fs::OFlags) -> rustix::io::Result<OwnedFd> {
        use rustix::fs::OFlags;
        rustix::fs::openat(
            &self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | extra,
            rustix::fs::Mode::empty(),
        )
    }
}

/// The `/proc/self/fd` path of a descriptor (for calls that take a path).
pub(super) fn fd_path(fd: impl AsFd) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd())
}

pub struct InodeTable {
    nodes: DashMap<u64, Arc<Node>>,
    root_backing_ino: u64,
}

impl InodeTable {
    pub fn new(root_fd: OwnedFd, root_backing_ino: u64) -> Self {
        let nodes = DashMap::new();
        nodes.insert(
            ROOT_INO,
            Arc::new(Node {
                ino: ROOT_INO,
                fd: root_fd,
                kind: Kind::Dir,
                generation: 0,
                backing: None,
                lookups: AtomicU64::new(1),
                dir_id: OnceLock::new(),
                dir_id_file: OnceLock::new(),
                dir_id_switched: OnceLock::new(),
                copy_confirmed: std::sync::atomic::AtomicBool::new(false),
                changes: AtomicU64::new(0),
                listed: std::sync::atomic::AtomicBool::new(false),
                name: Mutex::new(None),
                plain_path: Mutex::new(None),
                entries_read_at: AtomicU64::new(0),
            }),
        );
        InodeTable {
            nodes,
            root_backing_ino,
        }
    }

    /// The inode number shown for a backing inode number.
    pub fn map_ino(&self, backing: u64) -> u64 {
        if backing == self.root_backing_ino {
            ROOT_INO
        } else if backing == ROOT_INO {
            self.root_backing_ino
        } else {
            backing
        }
    }

    pub fn get(&self, ino: u64) -> Result<Arc<Node>> {
        self.nodes
            .get(&ino)
            .map(|n| n.clone())
            .ok_or(VfsError::Stale(ino))
    }

    /// The node `ino`, counting one lookup (the kernel is given it again).
    pub fn get_counted(&self, ino: u64) -> Result<Arc<Node>> {
        match self.nodes.entry(ino) {
            Entry::Occupied(e) => {
                e.get().lookups.fetch_add(1, Ordering::Relaxed);
                Ok(e.get().clone())
            }
            Entry::Vacant(_) => Err(VfsError::Stale(ino)),
        }
    }

    /// Registers (or finds) the node for a backing file and counts one lookup. `fd` is dropped if
    /// the node already exists; `identity` (generation and backing handle, see `export.rs`) is
    /// asked only for a new node.
    pub fn intern(
        &self,
        fd: OwnedFd,
        backing_ino: u64,
        kind: Kind,
        identity: impl FnOnce(&OwnedFd) -> (u64, Option<crate::fsutil::BackingHandle>),
    ) -> Arc<Node> {
        let ino = self.map_ino(backing_ino);
        match self.nodes.entry(ino) {
            Entry::Occupied(e) => {
                e.get().lookups.fetch_add(1, Ordering::Relaxed);
                e.get().clone()
            }
            Entry::Vacant(v) => {
                let (generation, backing) = identity(&fd);
                let n = Arc::new(Node {
                    ino,
                    generation,
                    backing,
                    fd,
                    kind,
                    lookups: AtomicU64::new(1),
                    dir_id: OnceLock::new(),
                    dir_id_file: OnceLock::new(),
                    dir_id_switched: OnceLock::new(),
                    copy_confirmed: std::sync::atomic::AtomicBool::new(false),
                    changes: AtomicU64::new(0),
                    listed: std::sync::atomic::AtomicBool::new(false),
                    name: Mutex::new(None),
                    plain_path: Mutex::new(None),
                    entries_read_at: AtomicU64::new(0),
                });
                v.insert(n.clone());
                n
            }
        }
    }

    /// The kernel dropped `n` references to `ino`. When that was the last, `last` sees the node
    /// before it goes (while no lookup of the number can run).
    pub fn forget(&self, ino: u64, n: u64, last: impl FnOnce(&Node)) {
        if ino == ROOT_INO {
            return;
        }
        if let Entry::Occupied(e) = self.nodes.entry(ino) {
            let left = e.get().lookups.load(Ordering::Relaxed).saturating_sub(n);
            e.get().lookups.store(left, Ordering::Relaxed);
            if left == 0 {
                last(e.get());
                e.remove();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}
