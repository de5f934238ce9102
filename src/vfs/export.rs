//! Finding a node by its number alone: `open_by_handle_at(2)` on the mount and NFS export.
//!
//! The kernel's handle of a kmsfs file is its node id (the backing inode number, see `inode.rs`)
//! and the generation kmsfs gave with it. Opening a handle whose inode the kernel has let go
//! makes it ask for the node by number (a LOOKUP of `.` in it) and, to reconnect a directory,
//! for its parent (`..`). kmsfs then opens the backing file by the backing file system's own
//! handle: the one remembered when the node was let go, or, where that file system's handles
//! are the 32-bit inode number and generation (ext4), one made from the number with generation
//! 0, which ext4 takes as "whichever file has the number now" (so handles also outlive a
//! remount). The generation the kernel is given is the backing file's (mixed with the cipher
//! directory's inode number), so a handle of a file deleted since, whose number a
//! new file took, is stale instead of naming the new file, and so is one given out by another
//! volume on the same backing file system, a copy of this one among them.
//!
//! Only a file of this volume is handed out: a directory must lie inside the cipher directory
//! (outside `.kmsfs/`), a regular file the backing file system cannot place (found by number,
//! its directory not read since) must at least start with a file header. Needs
//! CAP_DAC_READ_SEARCH (a daemon running as root): without it the kernel is not offered export
//! support, and a handle is stale once the kernel has let its inode go.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags};

use super::inode::{Node, ROOT_INO, fd_path};
use super::{Attr, Kind, Result, Vfs, VfsError};
use crate::fsutil::{self, BackingHandle};
use crate::names::EntryKind;

/// `FILEID_INO32_GEN`: a 32-bit inode number and generation (ext4; XFS mounted `inode32`).
const FILEID_INO32_GEN: i32 = 1;

/// Handles remembered per generation of the table (two generations: the older is dropped when
/// the newer fills, so the handles of the nodes let go last are kept).
const REMEMBERED_MAX: usize = 131_072;

pub(super) struct Export {
    /// Handles can be opened (the kernel is offered export support) on the backing file system
    /// this descriptor (of the cipher directory, not `O_PATH`) is on.
    mount_fd: Option<OwnedFd>,
    /// The backing file system's handles are `FILEID_INO32_GEN`, so one can be made from an
    /// inode number and nothing needs remembering.
    by_number: bool,
    /// The cipher directory's identity on the backing file system (its inode number), mixed
    /// into every generation.
    volume: u64,
    /// Backing handles of nodes let go (newer, older), where they cannot be made from the number.
    remembered: Mutex<(HashMap<u64, BackingHandle>, HashMap<u64, BackingHandle>)>,
}

impl Export {
    /// Probes the backing file system under `root`: can its handles be made and opened here?
    pub(super) fn probe(root: impl AsFd) -> Export {
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
        // Not the device number: that may change across reboots, and a handle only ever
        // reaches this backing file system.
        let volume = rustix::fs::fstat(&root).map_or(0, |st| mix(st.st_ino));
        Export {
            volume,
            mount_fd,
            by_number: h.is_ok_and(|h| h.kind == FILEID_INO32_GEN && h.bytes.len() == 8),
            remembered: Mutex::default(),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.mount_fd.is_some()
    }

    /// The generation to give the kernel for a new node of backing file `fd`.
    pub(super) fn generation(&self, fd: impl AsFd) -> u64 {
        if !self.enabled() {
            return 0;
        }
        fsutil::handle_of(fd).map_or(0, |h| generation_of(&h, self.volume))
    }

    /// Node `ino` was let go: remember its backing handle if one cannot be made from the number.
    pub(super) fn forgotten(&self, node: &Node) {
        if !self.enabled() || self.by_number {
            return;
        }
        let Ok(h) = fsutil::handle_of(&node.fd) else {
            return;
        };
        let mut g = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        if g.0.len() >= REMEMBERED_MAX {
            g.1 = std::mem::take(&mut g.0);
        }
        g.0.insert(node.ino, h);
    }

    /// Opens backing inode `backing` (node `ino`) by handle, if it can be had; `O_PATH`.
    fn open(&self, ino: u64, backing: u64) -> Option<OwnedFd> {
        let h = self.handle_for(ino, backing)?;
        fsutil::open_by_handle(self.mount_fd.as_ref()?, &h, libc::O_PATH | libc::O_NOFOLLOW).ok()
    }

    /// As on a backing file system whose handles are more than an inode number.
    #[cfg(test)]
    pub(super) fn remember_only(&mut self) {
        self.by_number = false;
    }

    #[cfg(test)]
    pub(super) fn forget_remembered(&self) {
        *self.remembered.lock().unwrap_or_else(|p| p.into_inner()) = Default::default();
    }

    /// The backing handle of backing inode `backing` (node `ino`), if it can be had.
    fn handle_for(&self, ino: u64, backing: u64) -> Option<BackingHandle> {
        let mut g = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = g.0.remove(&ino).or_else(|| g.1.remove(&ino)) {
            return Some(h);
        }
        drop(g);
        let n = u32::try_from(backing).ok().filter(|_| self.by_number)?;
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&n.to_ne_bytes());
        Some(BackingHandle {
            kind: FILEID_INO32_GEN,
            bytes: bytes.into(),
        })
    }
}

/// The generation for a backing handle in the volume whose cipher directory is `volume`: the
/// file's identity (the backing file's own generation for `FILEID_INO32_GEN`, else the whole
/// handle, which holds the generation wherever the file system keeps one) mixed with the cipher
/// directory's, so that a handle given out by another volume on the same backing file system
/// (a copy of this one, whose keys open the same files) is stale here. The kernel keeps 32 bits.
fn generation_of(h: &BackingHandle, volume: u64) -> u64 {
    let file = if h.kind == FILEID_INO32_GEN && h.bytes.len() == 8 {
        let g: [u8; 4] = h.bytes[4..8].try_into().unwrap_or_default();
        u64::from(u32::from_ne_bytes(g))
    } else {
        // FNV-1a.
        h.kind
            .to_ne_bytes()
            .iter()
            .chain(h.bytes.iter())
            .fold(0xcbf2_9ce4_8422_2325u64, |x, b| {
                (x ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            })
    };
    let x = mix(file ^ mix(volume));
    (x ^ (x >> 32)) & 0xffff_ffff
}

/// SplitMix64's finaliser: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
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
            return self.counted_attr(&node);
        }
        if !self.export.enabled() || super::is_control(ino) {
            return Err(VfsError::Stale(ino));
        }
        let backing = self.inodes.map_ino(ino);
        let fd = self.export.open(ino, backing).ok_or(VfsError::Stale(ino))?;
        let st = rustix::fs::fstat(&fd)?;
        let kind = Kind::from_mode(st.st_mode);
        if st.st_ino != backing || !self.in_volume(&fd, kind) {
            return Err(VfsError::Stale(ino));
        }
        let node = self
            .inodes
            .intern(fd, st.st_ino, kind, |fd| self.export.generation(fd));
        Ok(self.attr_of(&node, &st))
    }

    /// LOOKUP of `..` in directory `ino`: its parent (the root's is itself).
    pub(super) fn lookup_parent(&self, ino: u64) -> Result<Attr> {
        let dir = self.dir_node(ino)?;
        if ino == ROOT_INO || super::is_control(ino) {
            return self.lookup_self(ROOT_INO);
        }
        let fd = rustix::fs::openat(
            &dir.fd,
            "..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if !self.in_volume(&fd, Kind::Dir) {
            return Err(VfsError::Stale(ino));
        }
        let st = rustix::fs::fstat(&fd)?;
        let node = self
            .inodes
            .intern(fd, st.st_ino, Kind::Dir, |fd| self.export.generation(fd));
        Ok(self.attr_of(&node, &st))
    }

    /// The attributes of a node just counted once more; the count is given back on failure.
    fn counted_attr(&self, node: &Arc<Node>) -> Result<Attr> {
        self.stat_node(node).inspect_err(|_| {
            self.inodes.forget(node.ino, 1);
        })
    }

    /// Whether backing file `fd`, found by number, belongs to this volume's tree.
    fn in_volume(&self, fd: &OwnedFd, kind: Kind) -> bool {
        let Ok(path) = std::fs::read_link(fd_path(fd)) else {
            return false;
        };
        let Ok(root) = self.root_cipher() else {
            return false;
        };
        if let Ok(rel) = path.strip_prefix(root) {
            let mut parts = rel.iter();
            let first = parts.next();
            let last = rel.file_name();
            return match (first, last) {
                (None, _) => true,
                (Some(first), Some(last)) => {
                    let at_root = parts.next().is_none();
                    !matches!(
                        self.names.classify(first.as_bytes(), true),
                        EntryKind::Internal
                    ) && !matches!(
                        self.names.classify(last.as_bytes(), at_root),
                        EntryKind::Internal
                    )
                }
                _ => false,
            };
        }
        // A file the backing file system found by number but has not placed in a directory
        // shows as "/" (directories it always places).
        path == Path::new("/") && kind != Kind::Dir && (kind != Kind::File || has_header(fd))
    }
}

/// Whether a regular backing file is empty or starts with a file header (magic, version, the
/// fields' forms: not authenticated here, the open does that).
fn has_header(fd: &OwnedFd) -> bool {
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(fd_path(fd))
        .or_else(|_| std::fs::File::open(fd_path(fd)))
    else {
        return false;
    };
    f.metadata().is_ok_and(|m| m.len() == 0) || super::open_file::read_header(&f).is_ok()
}
