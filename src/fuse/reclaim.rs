//! Letting the kernel drop inodes before the daemon runs out of descriptors. Every inode the
//! kernel holds costs one (`vfs::inode`), and without memory pressure the kernel keeps every
//! inode it has seen, so a walk over more files than the descriptor limit would end in EMFILE.
//! Each name the kernel is given is remembered here with its directory; once the inode table
//! passes 60% of the limit, a thread asks the kernel (FUSE_NOTIFY_INVAL_ENTRY) to drop the
//! least recently given names until it is back at 40%. Unused inodes then go (FORGET closes
//! their descriptors); open files and current directories keep theirs. Asking again costs a
//! lookup, nothing else.

use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use fuser::{INodeNo, Notifier};

use crate::vfs::Vfs;

/// Above this share of the descriptor limit (per mille) names are dropped, down to `LOW`.
const HIGH: usize = 600;
const LOW: usize = 400;
/// How often the limit is read again (it can be changed from outside, `prlimit`).
const RECHECK: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Reclaim {
    /// Inode -> (directory, name, when given).
    names: DashMap<u64, (u64, OsString, u64)>,
    tick: AtomicU64,
    /// Inode count at which the thread is woken (0: not started).
    high: AtomicUsize,
    wake: OnceLock<SyncSender<()>>,
}

impl Reclaim {
    /// The kernel was given `ino` as `name` in `parent`.
    pub fn seen(&self, vfs: &Vfs, parent: u64, name: &OsStr, ino: u64) {
        if ino <= 1 || crate::vfs::is_control(ino) {
            return;
        }
        let t = self.tick.fetch_add(1, Ordering::Relaxed);
        self.names.insert(ino, (parent, name.to_owned(), t));
        let high = self.high.load(Ordering::Relaxed);
        if high != 0
            && vfs.node_count() > high
            && let Some(w) = self.wake.get()
        {
            let _ = w.try_send(());
        }
    }

    /// Whether the inode table is past the mark (the thread is woken then): a listing should
    /// hand out few entries per reply, so that the kernel can let names go in between.
    pub fn pressed(&self, vfs: &Vfs) -> bool {
        let high = self.high.load(Ordering::Relaxed);
        let pressed = high != 0 && vfs.node_count() > high;
        if pressed && let Some(w) = self.wake.get() {
            let _ = w.try_send(());
        }
        pressed
    }

    /// Starts the thread that asks the kernel to let names go.
    pub fn start(self: &Arc<Self>, vfs: Arc<Vfs>, notifier: Notifier) -> std::io::Result<()> {
        let (tx, rx) = sync_channel::<()>(1);
        let _ = self.wake.set(tx);
        self.high.store(limit() * HIGH / 1000, Ordering::Relaxed);
        // Weak: when the file system is dropped (the session ended), so is the sender, and
        // the thread ends, letting go of the model.
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("kmsfs-reclaim".into())
            .spawn(move || {
                loop {
                    match rx.recv_timeout(RECHECK) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let Some(me) = me.upgrade() else { return };
                    let limit = limit();
                    me.high.store(limit * HIGH / 1000, Ordering::Relaxed);
                    me.reclaim(&vfs, &notifier, limit);
                }
            })?;
        Ok(())
    }

    fn reclaim(&self, vfs: &Vfs, notifier: &Notifier, limit: usize) {
        let count = vfs.node_count();
        if count <= limit * HIGH / 1000 {
            return;
        }
        self.names.retain(|ino, _| vfs.knows(*ino));
        let mut oldest: Vec<(u64, u64, u64, OsString)> = self
            .names
            .iter()
            .map(|e| {
                let (parent, name, t) = e.value();
                (*t, *e.key(), *parent, name.clone())
            })
            .collect();
        oldest.sort_unstable_by_key(|r| r.0);
        let excess = count.saturating_sub(limit * LOW / 1000);
        for (_, ino, parent, name) in oldest.into_iter().take(excess) {
            self.names.remove(&ino);
            // The name may be gone or renamed since: then nothing happens.
            let _ = notifier.inval_entry(INodeNo(parent), &name);
        }
    }
}

/// The descriptor limit now.
fn limit() -> usize {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    l.map_or(usize::MAX / 1000, |n| {
        usize::try_from(n).unwrap_or(usize::MAX / 1000)
    })
    .min(usize::MAX / 1000)
}
