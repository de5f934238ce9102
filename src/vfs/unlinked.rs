//! Giving back the space of a file removed through the mount at once. The daemon holds every
//! inode the kernel knows by an `O_PATH` descriptor (`inode.rs`), and the kernel lets go of an
//! unlinked file's inode only after the unlink has returned (its FORGET comes later), so the
//! backing file system would free the blocks only then: a `statfs`, or a write, right after the
//! `rm` of a large file on a full disk would still find no room (ENOSPC), where on ext4 the
//! space is back when `rm` returns. A large regular file that loses its last name and is open
//! nowhere is therefore truncated to nothing through its descriptor right after the unlink (or
//! the rename over it), or at its last close when it was open then: nothing can read it by name
//! any more, and without a name a crash cannot leave it half-truncated.

use std::ffi::OsStr;
use std::sync::Arc;

use rustix::fs::AtFlags;

use super::Vfs;
use super::inode::{Node, fd_path};
use super::open_file::OpenFile;

/// Files smaller than this (allocated bytes) are left to the FORGET.
const LARGE: u64 = 64 * 1024;
/// How long the removal of a large file still open waits for a RELEASE under way.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

impl Vfs {
    /// Before `entry` of `dir` is removed (or renamed over): the node of the regular file it
    /// names, when that is a large file with one name.
    pub(super) fn doomed(&self, dir: &Node, entry: &OsStr) -> Option<Arc<Node>> {
        let st = rustix::fs::statat(&dir.fd, entry, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        let allocated = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_nlink != 1 || allocated < LARGE {
            return None;
        }
        self.inodes.get(self.inodes.map_ino(st.st_ino)).ok()
    }

    /// After the removal: frees the blocks of `node` if it has indeed lost its last name and
    /// is open nowhere. A close is passed on to us after `close(2)` has returned (the kernel
    /// sends RELEASE in the background), so `rm` right after a close can find the file still
    /// open: it waits a moment for that RELEASE; a file open for longer is freed at its last
    /// close ([`Vfs::free_closed_unlinked`]).
    pub(super) fn free_unlinked(&self, node: &Node) {
        match rustix::fs::fstat(&node.fd) {
            Ok(st) if st.st_nlink == 0 => {}
            _ => return,
        }
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        while self.is_open(node.ino) {
            if std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        truncate(&node.fd);
    }

    /// At the last close of `of`: frees its blocks if it has lost its last name meanwhile.
    pub(super) fn free_closed_unlinked(&self, of: &OpenFile) {
        let st = of.write_state();
        match rustix::fs::fstat(&st.file) {
            Ok(s) if s.st_nlink == 0 && u64::try_from(s.st_blocks).unwrap_or(0) * 512 >= LARGE => {
                truncate(&st.file);
            }
            _ => {}
        }
    }
}

/// Truncates the file `fd` refers to (any open mode, a name no longer needed) to nothing.
fn truncate(fd: impl std::os::fd::AsFd) {
    let freed = std::fs::OpenOptions::new()
        .write(true)
        .open(fd_path(fd))
        .and_then(|f| f.set_len(0));
    if let Err(e) = freed {
        tracing::debug!("the space of an unlinked file is freed at its FORGET: {e}");
    }
}
