//! Finding a node by its number alone: `open_by_handle_at(2)` on the mount and NFS export.
//!
//! The kernel's handle of a kmsfs file is its node id (the backing inode number, see `inode.rs`)
//! and the generation kmsfs gave with it. Opening a handle whose inode the kernel has let go
//! makes it ask for the node by number (a LOOKUP of `.` in it) and, to reconnect a directory,
//! for its parent (`..`). kmsfs then opens the backing file by the backing file system's own
//! handle: the one remembered when the node was let go, or, where that file system's handles
//! are the 32-bit inode number and generation and take generation 0 as "whichever file has the
//! number now" (ext4), one made from the number (so handles also outlive a remount).
//!
//! The generation the kernel is given is an HMAC, under a key from the volume secret, of the
//! backing file's handle (which holds the backing file system's own generation) and the cipher
//! directory's inode number. So a handle of a file deleted since, whose number a new file took,
//! is stale instead of naming the new file; so is one given out by another volume on the same
//! backing file system, a copy of this one among them; and nobody without the volume's keys can
//! make up a handle the kernel takes. On top of that only a file of this volume is handed out:
//! a directory must lie under the cipher directory (outside `.kmsfs/`). A file or link the
//! backing file system cannot place in a directory (its entry left the cache) is put back in
//! the entry it was let go from, if that still holds it (so its path is known); failing that it
//! must be a regular file with a file header or a symbolic link whose target decrypts.
//!
//! Needs CAP_DAC_READ_SEARCH (a daemon running as root): without it the kernel is not offered
//! export support, and a handle is stale once the kernel has let its inode go.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags};

use super::inode::{Node, NodeName, ROOT_INO, fd_path};
use super::{Attr, Kind, Result, Vfs, VfsError};
use crate::crypto::{Key256, hkdf_subkey, hmac_sha256};
use crate::fsutil::{self, BackingHandle};
use crate::names::EntryKind;

/// `FILEID_INO32_GEN`: a 32-bit inode number and generation (ext4; XFS with small inode numbers).
const FILEID_INO32_GEN: i32 = 1;

/// Handles remembered per generation of the table (two generations: the older is dropped when
/// the newer fills, so the handles of the nodes let go last are kept).
const REMEMBERED_MAX: usize = 131_072;

pub(super) struct Export {
    /// Handles can be opened (the kernel is offered export support) on the backing file system
    /// this descriptor (of the cipher directory, not `O_PATH`) is on.
    mount_fd: Option<OwnedFd>,
    /// A handle of this backing file system can be made from an inode number (`FILEID_INO32_GEN`
    /// with generation 0, which ext4 takes as "any"; XFS does not), so nothing needs remembering.
    by_number: bool,
    /// Keys the generations (from the volume secret), so that nobody without the volume's keys
    /// can make up a handle the kernel takes.
    key: Key256,
    /// The cipher directory's inode number, in every generation: a copy of the volume on the
    /// same backing file system (same keys) gives other generations.
    volume: u64,
    /// Backing handles of nodes let go, where they cannot be made from the number.
    remembered: Mutex<Recent<BackingHandle>>,
    /// The entries files and links were last known under when let go, to place them in their
    /// directory again when found by number (so that their path is known: audit records, path
    /// conditions of key policies).
    placements: Mutex<Recent<Arc<NodeName>>>,
}

/// Entries per node id, the latest about `2 × max` kept: when the newer table fills, it becomes
/// the older one and the older is dropped.
struct Recent<V> {
    newer: HashMap<u64, V>,
    older: HashMap<u64, V>,
    max: usize,
}

impl<V: Clone> Recent<V> {
    fn new(max: usize) -> Self {
        Recent {
            newer: HashMap::new(),
            older: HashMap::new(),
            max,
        }
    }

    fn insert(&mut self, k: u64, v: V) {
        if self.newer.len() >= self.max {
            self.older = std::mem::take(&mut self.newer);
        }
        self.older.remove(&k);
        self.newer.insert(k, v);
    }

    fn get(&self, k: u64) -> Option<V> {
        self.newer.get(&k).or_else(|| self.older.get(&k)).cloned()
    }
}

/// Entries remembered to place files found by number, per generation (each holds its names:
/// about 10 MB at most).
const PLACEMENTS_MAX: usize = 32_768;

/// Purpose of the generation key (HKDF info; one key, one purpose).
const GENERATION_PURPOSE: &str = "kmsfs-v1-handle-generation";

impl Export {
    /// Probes the backing file system under `root`: can its handles be made and opened here,
    /// and can one be made from an inode number? `secret`: the volume secret.
    pub(super) fn probe(root: impl AsFd, secret: &Key256) -> Export {
        let h = fsutil::handle_of(&root);
        let mount_fd = rustix::fs::open(
            fd_path(&root).as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .filter(|m| {
            h.as_ref()
                .is_ok_and(|h| fsutil::open_by_handle(m, h, libc::O_PATH).is_ok())
        });
        let st = rustix::fs::fstat(&root).ok();
        let by_number = match (&mount_fd, &h, &st) {
            (Some(m), Ok(h), Some(st)) if h.kind == FILEID_INO32_GEN && h.bytes.len() == 8 => {
                by_number(st.st_ino).is_some_and(|n| {
                    fsutil::open_by_handle(m, &n, libc::O_PATH)
                        .and_then(|fd| Ok(rustix::fs::fstat(&fd)?))
                        .is_ok_and(|s| s.st_ino == st.st_ino)
                })
            }
            _ => false,
        };
        Export {
            mount_fd,
            by_number,
            key: hkdf_subkey(secret, b"", GENERATION_PURPOSE),
            // Not the device number: that may change across reboots, and a handle only ever
            // reaches this backing file system.
            volume: st.map_or(0, |st| st.st_ino),
            remembered: Mutex::new(Recent::new(REMEMBERED_MAX)),
            placements: Mutex::new(Recent::new(PLACEMENTS_MAX)),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.mount_fd.is_some()
    }

    /// The generation to give the kernel for a new node of backing file `fd`, and its backing
    /// handle where it must be remembered when the node is let go.
    pub(super) fn identity(&self, fd: impl AsFd) -> (u64, Option<BackingHandle>) {
        if !self.enabled() {
            return (0, None);
        }
        match fsutil::handle_of(fd) {
            Ok(h) => {
                let g = self.generation_of(&h);
                (g, (!self.by_number).then_some(h))
            }
            Err(_) => (0, None),
        }
    }

    /// The generation for a backing handle: a keyed digest of the handle (the inode number and
    /// the backing file system's generation, where it keeps one) and the cipher directory's
    /// inode number. The kernel keeps 32 bits.
    fn generation_of(&self, h: &BackingHandle) -> u64 {
        let d = hmac_sha256(
            &self.key,
            &[&self.volume.to_le_bytes(), &h.kind.to_le_bytes(), &h.bytes],
        );
        u64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
    }

    /// Node `node` is being let go: remember its backing handle if one cannot be made from the
    /// number, and where a file or link was (a directory's handle opens it in place).
    pub(super) fn forgotten(&self, node: &Node) {
        if !self.enabled() {
            return;
        }
        if let Some(h) = &node.backing {
            lock(&self.remembered).insert(node.ino, h.clone());
        }
        if node.kind != Kind::Dir
            && let Some(n) = node.name()
        {
            lock(&self.placements).insert(node.ino, n);
        }
    }

    /// The entry node `ino` was last known under, if remembered.
    fn placement(&self, ino: u64) -> Option<Arc<NodeName>> {
        lock(&self.placements).get(ino)
    }

    /// Opens backing inode `backing` (node `ino`) by handle, `O_PATH`. `None`: no handle for it
    /// (stale); an error: the open failed.
    fn open(&self, ino: u64, backing: u64) -> Option<std::io::Result<OwnedFd>> {
        let h = self.handle_for(ino, backing)?;
        let m = self.mount_fd.as_ref()?;
        Some(fsutil::open_by_handle(
            m,
            &h,
            libc::O_PATH | libc::O_NOFOLLOW,
        ))
    }

    /// As on a backing file system whose handles are more than an inode number.
    #[cfg(test)]
    pub(super) fn remember_only(&mut self) {
        self.by_number = false;
    }

    #[cfg(test)]
    pub(super) fn forget_remembered(&self) {
        *lock(&self.remembered) = Recent::new(REMEMBERED_MAX);
    }

    /// The backing handle of backing inode `backing` (node `ino`), if it can be had. A
    /// remembered handle stays remembered (a lookup that fails for a passing reason, or two at
    /// once, must not lose it).
    fn handle_for(&self, ino: u64, backing: u64) -> Option<BackingHandle> {
        if let Some(h) = lock(&self.remembered).get(ino) {
            return Some(h);
        }
        if !self.by_number {
            return None;
        }
        by_number(backing)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A `FILEID_INO32_GEN` handle of inode `ino` with generation 0.
fn by_number(ino: u64) -> Option<BackingHandle> {
    let n = u32::try_from(ino).ok()?;
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&n.to_ne_bytes());
    Some(BackingHandle {
        kind: FILEID_INO32_GEN,
        bytes: bytes.into(),
    })
}

impl Vfs {
    /// Whether node ids can be found again after the kernel let them go (offer the kernel
    /// export support).
    pub fn export_support(&self) -> bool {
        self.export.enabled()
    }

    /// LOOKUP of `.` in `ino`: the node itself, found again by number if the kernel let it go.
    pub(super) fn lookup_self(&self, ino: u64) -> Result<Attr> {
        if let Ok(node) = self.inodes.get_counted(ino) {
            let attr = self.counted_attr(&node)?;
            // The kernel asks only once it has let the inode go (its FORGET is on the way): a
            // node removed since that no handle holds is gone, as on a local file system.
            if attr.nlink == 0 && !self.is_open(ino) {
                self.forget(ino, 1);
                return Err(VfsError::Stale(ino));
            }
            return Ok(attr);
        }
        if !self.export.enabled() || super::is_control(ino) {
            return Err(VfsError::Stale(ino));
        }
        let backing = self.inodes.map_ino(ino);
        let fd = match self.export.open(ino, backing) {
            None => return Err(VfsError::Stale(ino)),
            Some(Ok(fd)) => fd,
            // Short of descriptors or memory: worth trying again (`reclaim`), not stale.
            Some(Err(e))
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM)
                ) =>
            {
                return Err(e.into());
            }
            Some(Err(_)) => return Err(VfsError::Stale(ino)),
        };
        let st = rustix::fs::fstat(&fd)?;
        let kind = Kind::from_mode(st.st_mode);
        if st.st_ino != backing {
            return Err(VfsError::Stale(ino));
        }
        // A file the backing file system could not place: in the entry it was let go from, if
        // it is still there (then its path is known).
        let (fd, placed) = match self.place(ino, kind, &fd, &st) {
            Some((f, n)) => (f, Some(n)),
            None => (fd, None),
        };
        if !self.in_volume(&fd, kind)? {
            return Err(VfsError::Stale(ino));
        }
        let node = self
            .inodes
            .intern(fd, st.st_ino, kind, |fd| self.export.identity(fd));
        if let Some(n) = placed {
            node.set_name(n.parent, &n.cipher, &n.plain);
        }
        Ok(self.attr_of(&node, &st))
    }

    /// A descriptor of non-directory `fd` (node `ino`, `st`) through the entry it was let go
    /// from, when the backing file system shows it unplaced and that entry still holds it.
    fn place(
        &self,
        ino: u64,
        kind: Kind,
        fd: &OwnedFd,
        st: &rustix::fs::Stat,
    ) -> Option<(OwnedFd, Arc<NodeName>)> {
        if kind == Kind::Dir
            || std::fs::read_link(fd_path(fd)).ok()?.as_os_str() != std::ffi::OsStr::new("/")
        {
            return None;
        }
        let n = self.export.placement(ino)?;
        // Its directory: the node the kernel holds, else found by number (a directory opened by
        // handle is always placed).
        let held = self.inodes.get(n.parent).ok();
        let opened;
        let dir = match &held {
            Some(d) => &d.fd,
            None => {
                opened = self
                    .export
                    .open(n.parent, self.inodes.map_ino(n.parent))?
                    .ok()?;
                &opened
            }
        };
        let f = rustix::fs::openat(
            dir,
            &n.cipher,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let s = rustix::fs::fstat(&f).ok()?;
        ((s.st_dev, s.st_ino) == (st.st_dev, st.st_ino)).then_some((f, n))
    }

    /// LOOKUP of `..` in directory `ino`: its parent (the root's is itself).
    pub(super) fn lookup_parent(&self, ino: u64) -> Result<Attr> {
        let dir = self.dir_node(ino)?;
        if ino == ROOT_INO {
            return self.lookup_self(ROOT_INO);
        }
        let fd = rustix::fs::openat(
            &dir.fd,
            "..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if !self.in_volume(&fd, Kind::Dir)? {
            return Err(VfsError::Stale(ino));
        }
        let st = rustix::fs::fstat(&fd)?;
        let node = self
            .inodes
            .intern(fd, st.st_ino, Kind::Dir, |fd| self.export.identity(fd));
        Ok(self.attr_of(&node, &st))
    }

    /// The attributes of a node just counted once more; the count is given back on failure.
    fn counted_attr(&self, node: &Arc<Node>) -> Result<Attr> {
        self.stat_node(node)
            .inspect_err(|_| self.forget(node.ino, 1))
    }

    /// Whether backing file `fd`, found by number, belongs to this volume's tree (an error:
    /// could not tell for a passing reason, such as running short of descriptors).
    fn in_volume(&self, fd: &OwnedFd, kind: Kind) -> Result<bool> {
        if kind == Kind::Dir {
            return self.dir_in_volume(fd);
        }
        let Ok(root) = self.root_cipher() else {
            return Ok(false);
        };
        let path = std::fs::read_link(fd_path(fd))?;
        if let Ok(rel) = path.strip_prefix(root) {
            let mut parts = rel.iter();
            let (Some(first), Some(last)) = (parts.next(), rel.file_name()) else {
                return Ok(false);
            };
            let at_root = parts.next().is_none();
            let internal = |n: &std::ffi::OsStr, at_root| {
                matches!(
                    self.names.classify(n.as_bytes(), at_root),
                    EntryKind::Internal
                )
            };
            return Ok(!internal(first, true) && !internal(last, at_root));
        }
        // A file the backing file system found by number but has not placed in a directory
        // (its entry left the cache) shows as "/": only what proves itself part of a volume
        // (the generation, keyed, proves it is this one): a regular file with a file header, a
        // symbolic link whose target decrypts. Never an empty file, a FIFO, a socket or a
        // device, which prove nothing.
        Ok(path == Path::new("/")
            && match kind {
                Kind::File => has_header(fd),
                Kind::Symlink => rustix::fs::readlinkat(fd, "", Vec::new())
                    .is_ok_and(|t| self.links.read_target(&self.names, t.as_bytes()).is_ok()),
                _ => false,
            })
    }

    /// Whether directory `fd` lies under the cipher directory (and not in `.kmsfs/`): its
    /// parents, followed up to the root, by device and inode number, so neither a renamed
    /// cipher directory nor one reached through a bind mount misleads it.
    fn dir_in_volume(&self, fd: &OwnedFd) -> Result<bool> {
        let root = rustix::fs::fstat(&self.inodes.get(ROOT_INO)?.fd)?;
        let control = rustix::fs::statat(
            &self.inodes.get(ROOT_INO)?.fd,
            crate::names::CONTROL_DIR,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .ok();
        let id = |st: &rustix::fs::Stat| (st.st_dev, st.st_ino);
        let mut at = rustix::fs::fstat(fd)?;
        let mut cur = None::<OwnedFd>;
        for _ in 0..4096 {
            if id(&at) == id(&root) {
                return Ok(true);
            }
            if control.as_ref().is_some_and(|c| id(c) == id(&at)) {
                return Ok(false);
            }
            let up = rustix::fs::openat(
                cur.as_ref().unwrap_or(fd),
                "..",
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let st = rustix::fs::fstat(&up)?;
            if id(&st) == id(&at) {
                // The top of the file system (or of the mount it is reached through).
                return Ok(false);
            }
            (at, cur) = (st, Some(up));
        }
        Ok(false)
    }
}

/// Whether a regular backing file starts with a file header (magic, version, the fields'
/// forms: not authenticated here, the open does that). `O_NONBLOCK`: a lease on a file
/// elsewhere must not hold the request.
fn has_header(fd: &OwnedFd) -> bool {
    let open = |noatime| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | if noatime { libc::O_NOATIME } else { 0 })
            .open(fd_path(fd))
    };
    let Ok(f) = open(true).or_else(|_| open(false)) else {
        return false;
    };
    super::open_file::read_header(&f).is_ok()
}
