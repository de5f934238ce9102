//! Keeps the kernel's cached listings of the control directory fresh. Directories are listed
//! without OPENDIR (see `vfs::dir_read`), so the kernel caches every listing until the
//! directory changes through the mount; `keys/` and `aliases/` change with the key store
//! instead (a request written to a control file, a deletion window ending). When the key-store
//! generation has moved, the kernel is told to drop those two cached listings
//! (FUSE_NOTIFY_INVAL_INODE over their pages):
//! - after each control write, flush and release, before the reply, so that the next listing
//!   shows the change. The notification is sent by a thread of its own and waited for a short
//!   while only (it waits for page locks: it must never be able to hold a request up for good);
//! - once a second from the reclaim thread, for changes not made through a control file, and
//!   once more after each of the above: a listing computed just before a change can reach the
//!   kernel's cache just after the first notification.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fuser::{INodeNo, Notifier};

use crate::vfs::Vfs;

/// How long a request waits for the notification before it replies anyway.
const WAIT: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct ControlListings {
    /// The key-store generation the kernel's listings were last dropped for.
    seen: AtomicU64,
    /// Dropped for a request since the last periodic pass: drop once more then.
    again: AtomicBool,
    /// The notifying thread: takes a channel to acknowledge on.
    worker: OnceLock<SyncSender<SyncSender<()>>>,
}

impl std::fmt::Debug for ControlListings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlListings").finish_non_exhaustive()
    }
}

impl ControlListings {
    /// Starts the notifying thread (at `init`, once the notifier slot is known).
    pub fn start(
        self: &Arc<Self>,
        vfs: Arc<Vfs>,
        notifier: Arc<OnceLock<Notifier>>,
    ) -> std::io::Result<()> {
        let (tx, rx) = sync_channel::<SyncSender<()>>(16);
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("kmsfs-listings".into())
            .spawn(move || {
                for ack in rx {
                    let Some(me) = me.upgrade() else { return };
                    if let Some(n) = notifier.get() {
                        me.drop_listings(&vfs, n);
                        me.again.store(true, Ordering::Release);
                    }
                    let _ = ack.try_send(());
                }
            })?;
        let _ = self.worker.set(tx);
        Ok(())
    }

    /// After a control write, flush or release: if the key store changed, drop the kernel's
    /// listings before the reply (waiting at most [`WAIT`]).
    pub fn after_request(&self, vfs: &Vfs) {
        if vfs.key_manager().generation() == self.seen.load(Ordering::Acquire) {
            return;
        }
        let Some(worker) = self.worker.get() else {
            return;
        };
        let (ack_tx, ack_rx) = sync_channel(1);
        if worker.try_send(ack_tx).is_ok() && ack_rx.recv_timeout(WAIT).is_err() {
            tracing::debug!("control listings: notification still pending after {WAIT:?}");
        }
    }

    /// Once a second (from a background thread): drop the kernel's listings if the key store
    /// changed since, or once more after a drop made for a request.
    pub fn periodic(&self, vfs: &Vfs, notifier: &Notifier) {
        let again = self.again.swap(false, Ordering::AcqRel);
        if again || vfs.key_manager().generation() != self.seen.load(Ordering::Acquire) {
            self.drop_listings(vfs, notifier);
        }
    }

    fn drop_listings(&self, vfs: &Vfs, notifier: &Notifier) {
        let now = vfs.key_manager().generation();
        for ino in vfs.control().store_dirs() {
            // ENOENT: the kernel does not hold the directory (nothing cached).
            if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                tracing::debug!("invalidating the listing of control inode {ino}: {e}");
            }
        }
        self.seen.store(now, Ordering::Release);
    }
}
