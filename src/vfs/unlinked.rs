//! Space that a removal frees a moment later. The daemon holds every inode the kernel knows by
//! an `O_PATH` descriptor (`inode.rs`), and the kernel lets go of an unlinked file's inode only
//! after the unlink has returned (its FORGET follows, ~2–3 ms on this VM), so the backing file
//! system frees the blocks only then: a write right after the `rm` of a large file on a full
//! disk would find no room (ENOSPC), where on ext4 the space is back when `rm` returns.
//!
//! The blocks cannot be freed earlier: until its FORGET the kernel may still open the file (a
//! process whose lookup came before the unlink, a reopen through `/proc/PID/fd`, a handle),
//! and must then read it whole, as on ext4. Instead the large files removed are remembered,
//! and a write that runs out of space while one of them is still held waits a moment for its
//! FORGET and tries once more.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::AtFlags;

use super::Vfs;
use super::inode::Node;

/// Files smaller than this (allocated bytes) are not worth waiting for.
const LARGE: u64 = 64 * 1024;
/// How long a write short of space waits for removed files to be let go.
const WAIT: Duration = Duration::from_millis(50);
/// See [`Vfs::wait_for_removed`].
const JUST: Duration = Duration::from_secs(1);
/// Removed files remembered at most (the oldest are forgotten first).
const REMEMBERED: usize = 1024;

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

    /// After the removal: remembers `node` if it has indeed lost its last name, so that a
    /// write short of space waits for it to be let go ([`Vfs::wait_for_removed`]).
    pub(super) fn removed(&self, node: &Node) {
        match rustix::fs::fstat(&node.fd) {
            Ok(st) if st.st_nlink == 0 => {}
            _ => return,
        }
        let mut r = self.removed.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= REMEMBERED {
            r.remove(0);
        }
        r.push((node.ino, Instant::now()));
    }

    /// Bytes free on the backing file system for the daemon (0 when unknown).
    pub(super) fn backing_free(&self) -> u64 {
        self.inodes
            .get(super::inode::ROOT_INO)
            .ok()
            .and_then(|root| rustix::fs::fstatvfs(&root.fd).ok())
            .map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize))
    }

    /// A write ran out of space: whether large files removed through the mount may still be
    /// giving back their blocks (removed in the last [`JUST`], or held and open nowhere), after
    /// waiting up to [`WAIT`] for the free space to grow. True: worth trying again. A file
    /// still open for longer (a log file) is not waited for: its blocks come back at its last
    /// close, which may be far off.
    pub(super) fn wait_for_removed(&self) -> bool {
        {
            let mut r = self.removed.lock().unwrap_or_else(|p| p.into_inner());
            r.retain(|&(ino, at)| at.elapsed() < JUST || self.knows(ino));
            if !r
                .iter()
                .any(|&(ino, at)| at.elapsed() < JUST || !self.is_open(ino))
            {
                return false;
            }
        }
        // The blocks come back when the FORGET's thread closes the descriptor, just after the
        // node leaves the table: watch the free space itself.
        let before = self.backing_free();
        let deadline = Instant::now() + WAIT;
        while self.backing_free() <= before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(500));
        }
        true
    }
}
