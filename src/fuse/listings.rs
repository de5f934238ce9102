//! Keeps the kernel's cached listings of the control directory fresh. Directories are listed
//! without OPENDIR (see `vfs::dir_read`), so the kernel caches every listing until the
//! directory changes through the mount; `keys/` and `aliases/` change with the key store
//! instead (a request written to a control file, a deletion window ending). After each
//! control write, flush and release, and once a second, a moved key-store generation makes
//! the kernel drop those two cached listings (FUSE_NOTIFY_INVAL_INODE over their pages).

use std::sync::atomic::{AtomicU64, Ordering};

use fuser::{INodeNo, Notifier};

use crate::vfs::Vfs;

#[derive(Debug, Default)]
pub struct ControlListings {
    /// The key-store generation the kernel's listings are known to match.
    seen: AtomicU64,
}

impl ControlListings {
    /// Drops the kernel's listings of `keys/` and `aliases/` if the key store changed since
    /// the last call. Only page-cache work on two small control directories: safe inside a
    /// request.
    pub fn sync(&self, vfs: &Vfs, notifier: Option<&Notifier>) {
        let now = vfs.key_manager().generation();
        if self.seen.load(Ordering::Acquire) == now {
            return;
        }
        let Some(n) = notifier else { return };
        if self.seen.swap(now, Ordering::AcqRel) == now {
            return;
        }
        for ino in vfs.control().store_dirs() {
            // ENOENT: the kernel does not hold the directory (nothing cached).
            if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
                tracing::debug!("invalidating the listing of control inode {ino}: {e}");
            }
        }
    }
}
