//! Opening a regular file's backing file for its content.
//!
//! Usually by name: the entry the node was last found or made under, opened in its directory
//! (one `openat`, then `fstat` to check it still is this node). When that entry no longer holds
//! the node (renamed or replaced behind the kernel's back, or never known), through the node's
//! `O_PATH` descriptor (`/proc/self/fd/N`, a longer walk through procfs). A file is opened
//! read-only until a handle needs to write (then it is opened again read-write): a read-only
//! open and close cost ext4 less, and a file the daemon may not write can still be read.
//!
//! The by-name open opens whatever is under the name at that moment and checks it after:
//! another regular file put there behind the mount is opened and closed again (for a writer,
//! read-write: its leases are broken and watchers see a close), a FIFO opens without blocking,
//! a symlink is not followed, and a device node could only have been made there by root (the
//! kernel asks CAP_MKNOD for one, through the mount too), who is outside the threat model.

use std::fs::File;
use std::sync::Arc;

use rustix::fs::{FileType, Mode, OFlags};

use super::inode::{Node, NodeName};
use super::{Kind, Result, Vfs, VfsError};

/// A regular file's backing file, opened.
pub(super) struct Backing {
    /// Read-write when asked for writing, read-only otherwise.
    pub file: File,
    /// Its size in the cipher directory, when opened.
    pub len: u64,
    /// The entry it was opened under, when that was the node's remembered one: proof that the
    /// entry held the node at the open (so its plaintext path needs no further check).
    pub named: Option<Arc<NodeName>>,
}

impl Vfs {
    /// Opens the backing file of regular-file `node`: read-write for `want_write`, read-only
    /// otherwise.
    pub(super) fn open_backing(&self, node: &Node, want_write: bool) -> Result<Backing> {
        self.open_backing_with(node, want_write, self.noatime())
    }

    /// Runs `op`, an operation on entries of the directories `dirs` (create, remove, rename,
    /// look up), lending the daemon the owner bits of those directories where their modes
    /// refused its backing calls (a daemon that is not root: see `fsutil::lend_dirs`). Only a
    /// backing call's EACCES is retried, never a key policy's denial.
    pub fn in_dirs<T>(&self, dirs: &[u64], op: impl FnMut() -> Result<T>) -> Result<T> {
        crate::fsutil::lend_dirs(
            || {
                dirs.iter()
                    .filter_map(|&d| self.inodes.get(d).ok())
                    .filter(|n| n.kind == Kind::Dir)
                    .map(|n| n.proc_path())
                    .collect()
            },
            |e: &VfsError| {
                matches!(e, VfsError::Sys(_) | VfsError::Io(_)) && e.errno() == libc::EACCES
            },
            op,
        )
    }

    /// [`Vfs::open_backing`], `O_NOATIME` when `noatime` and the daemon may (the file's owner
    /// or CAP_FOWNER; else without).
    pub(super) fn open_backing_with(
        &self,
        node: &Node,
        want_write: bool,
        noatime: bool,
    ) -> Result<Backing> {
        let access = if want_write {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        if noatime {
            match self.open_backing_flags(node, access | OFlags::NOATIME) {
                Err(e) if e.errno() == libc::EPERM => {}
                r => return r,
            }
        }
        self.open_backing_flags(node, access)
    }

    fn open_backing_flags(&self, node: &Node, access: OFlags) -> Result<Backing> {
        if let Some(b) = self.open_by_name(node, access) {
            return Ok(b);
        }
        // The owner's own file without the owner's read bit (a daemon that is not root): kmsfs
        // reads the header of a file opened for writing only.
        let need = if access.contains(OFlags::RDWR) {
            libc::S_IRUSR | libc::S_IWUSR
        } else {
            libc::S_IRUSR
        };
        let path = node.proc_path();
        let fd = crate::fsutil::with_owner_bits(path.as_str(), need, || {
            rustix::fs::open(path.as_str(), access | OFlags::CLOEXEC, Mode::empty())
        })?;
        let st = rustix::fs::fstat(&fd)?;
        Ok(Backing {
            file: File::from(fd),
            len: st.st_size as u64,
            named: None,
        })
    }

    /// Opens `node`'s remembered entry in its directory, if that entry still is `node`.
    /// `None`: no entry known, or it names something else now, or the open failed (the caller
    /// opens through the node's descriptor, which gives the error if there is one).
    fn open_by_name(&self, node: &Node, access: OFlags) -> Option<Backing> {
        let n = node.name()?;
        let dir = self.inodes.get(n.parent).ok()?;
        if dir.kind != Kind::Dir {
            return None;
        }
        // NOFOLLOW: a symlink put there is not followed; NONBLOCK and NOCTTY: a FIFO or a
        // terminal put there can neither block the open nor become anyone's terminal (it is
        // closed right away, as its inode number is not the node's). O_NONBLOCK stays set: it
        // changes nothing in the reads, writes, syncs and truncations of a regular file.
        let fd = rustix::fs::openat(
            &dir.fd,
            &n.cipher,
            access | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
            || self.inodes.map_ino(st.st_ino) != node.ino
        {
            return None;
        }
        Some(Backing {
            file: File::from(fd),
            len: st.st_size as u64,
            named: Some(n),
        })
    }
}

/// Whether `linkat(AT_EMPTY_PATH)` was refused once where the link through `/proc/self/fd` then
/// worked (the daemon without CAP_DAC_READ_SEARCH on a kernel before 6.10): from then on unnamed
/// files are linked through `/proc/self/fd` at once.
pub(super) static NO_EMPTY_PATH_LINK: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Gives the unnamed (`O_TMPFILE`) file `file` the name `name` in `dir`: by its descriptor
/// (`AT_EMPTY_PATH`) where the kernel allows the daemon that, else through its
/// `/proc/self/fd/N` path (a walk through procfs, ~5 µs more per created file).
pub(super) fn link_unnamed(
    file: &File,
    dir: impl std::os::fd::AsFd,
    name: &std::ffi::OsStr,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;

    use rustix::fs::AtFlags;
    use rustix::io::Errno;

    let refused = !NO_EMPTY_PATH_LINK.load(Ordering::Relaxed)
        && match rustix::fs::linkat(file, "", &dir, name, AtFlags::EMPTY_PATH) {
            Ok(()) => return Ok(()),
            // Not allowed this way (ENOENT is what the kernel answers then), or a real error
            // that the way through /proc answers again.
            Err(Errno::NOENT | Errno::PERM | Errno::INVAL) => true,
            Err(e) => return Err(e.into()),
        };
    rustix::fs::linkat(
        rustix::fs::CWD,
        format!("/proc/self/fd/{}", file.as_raw_fd()).as_str(),
        &dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    )?;
    // Only a refusal the other way got past is remembered: a directory removed meanwhile must
    // not send every later create the longer way.
    if refused {
        NO_EMPTY_PATH_LINK.store(true, Ordering::Relaxed);
    }
    Ok(())
}
