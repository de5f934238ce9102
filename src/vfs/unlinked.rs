//! Space that a removal frees a moment later. The daemon holds every inode the kernel knows by
//! an `O_PATH` descriptor (`inode.rs`), and the kernel lets go of an unlinked file's inode only
//! after the unlink has returned (its FORGET follows, 2–11 ms on this VM, later when the
//! kernel first drops the file's cached pages), so the backing file system frees the blocks
//! only then: a write right after the `rm` of a large file on a full disk would find no room
//! (ENOSPC), where on ext4 the space is back when `rm` returns.
//!
//! The blocks cannot be freed earlier: until its FORGET the kernel may still open the file (a
//! process whose lookup came before the unlink, a reopen through `/proc/PID/fd`, a handle),
//! and must then read it whole, as on ext4. Instead a write that runs out of space shortly
//! after a removal waits a moment for the free space to grow and tries once more.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Vfs;
use super::inode::coarse_now_ms;

/// How long a write short of space waits for the blocks of removed files.
const WAIT: Duration = Duration::from_millis(50);
/// Removals longer ago than this (milliseconds) are not waited for: their blocks are back, or
/// held by a file still open (a log file), which may stay so for long.
const JUST_MS: u64 = 1000;

impl Vfs {
    /// An entry was removed (unlink, or a rename that may have replaced one).
    pub(super) fn removed(&self) {
        self.removed_at.store(coarse_now_ms(), Ordering::Relaxed);
    }

    /// Bytes free on the backing file system for the daemon (0 when unknown).
    pub(super) fn backing_free(&self) -> u64 {
        self.statfs()
            .map_or(0, |s| s.bavail.saturating_mul(u64::from(s.frsize)))
    }

    /// A write ran out of space: whether an entry was removed in the last [`JUST_MS`], after
    /// waiting up to [`WAIT`] for the free space to grow (the blocks come back when the
    /// FORGET's thread closes the descriptor). True: worth trying again.
    pub(super) fn wait_for_removed(&self) -> bool {
        let at = self.removed_at.load(Ordering::Relaxed);
        if at == 0 || coarse_now_ms().saturating_sub(at) >= JUST_MS {
            return false;
        }
        let before = self.backing_free();
        let deadline = Instant::now() + WAIT;
        while self.backing_free() <= before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(500));
        }
        true
    }
}
