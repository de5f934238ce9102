//! Letting the kernel drop inodes before the daemon runs out of descriptors. Every inode the
//! kernel holds costs one (`vfs::inode`), and without memory pressure the kernel keeps every
//! inode it has seen, so a walk over more files than the descriptor limit would end in EMFILE.
//! Each node the kernel is given is remembered here with its directory; once the inode table
//! passes 60% of the limit, a thread asks the kernel to drop the least recently given ones
//! until it is back at 40% (rounds at least 50 ms apart; 5 ms with prunes while they free
//! something).
//! Unused inodes then go (FORGET closes their descriptors); asking again costs a lookup.
//!
//! Where the kernel has FUSE_NOTIFY_PRUNE (Linux 6.18, `prune.rs`) the thread names the nodes
//! and the kernel drops those no process uses: directories too (one that is a working
//! directory, or still holds cached entries, is skipped and asked for again in a later round,
//! once its entries have gone). Elsewhere it invalidates names (FUSE_NOTIFY_INVAL_ENTRY),
//! which would also take a dentry in use away: then directories are never dropped (a dropped
//! directory that is some process's working directory makes its getcwd fail), nor files open
//! through kmsfs (their /proc links would read "(deleted)").
//! The same thread drops the names of files whose write failed once they are closed
//! everywhere (see `Vfs::take_stale_caches`), so that the kernel forgets the size and pages it
//! kept for what never reached the disk, and the cached attributes of a file whose write-back
//! failed at once (`expire_attrs`), so that its next `write(2)` learns of it. Not earlier, at
//! the FLUSH of a close: the kernel holds the inode until its RELEASE is answered, so a name
//! dropped before that only makes the next lookup find the same inode, with the size and pages
//! of the failed write, under a new name (tried 2026-12-05: a file filled until ENOSPC then
//! read back whole, never-stored part included, and a later removal did not free its space).
//!
//! On a busy machine the thread can fall behind a process creating files fast, and the
//! descriptors run out before the kernel has let names go. A request that fails so
//! (EMFILE/ENFILE) while there are names to drop then waits for room and tries again
//! (`patiently`), up to [`PATIENCE`]. Only one request waits at a time, and only with more than
//! one request thread: the kernel's FORGETs, which close the descriptors, need a free thread.
//! The request never sends an invalidation itself: the kernel holds its directory's lock while
//! it waits for the reply, and an invalidation in that directory would wait for the same lock;
//! for that reason the thread, when it invalidates names, also leaves the names in that
//! directory alone meanwhile (a prune takes no directory lock).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use fuser::{INodeNo, Notifier};

use crate::vfs::{Attr, Kind, Vfs, VfsError};

/// Above this share of the descriptor limit (per mille) names are dropped, down to `LOW`.
const HIGH: usize = 600;
const LOW: usize = 400;
/// How often the limit is read again (it can be changed from outside, `prlimit`).
const RECHECK: Duration = Duration::from_secs(1);
/// The least time between two rounds of dropping: the kernel's FORGETs for the last round
/// arrive meanwhile, so the next round does not count their inodes again. A prune has evicted
/// the inodes by the time it returns, and their FORGETs are queued: a shorter pause suffices,
/// and lets the thread keep up with a fast walk.
const SETTLE: Duration = Duration::from_millis(50);
const SETTLE_PRUNED: Duration = Duration::from_millis(5);
/// Names given between two looks at the inode count.
const CHECK_EVERY: u64 = 64;
/// How long a request that ran out of descriptors waits for room (see `patiently`).
const PATIENCE: Duration = Duration::from_secs(2);
/// How often it looks whether the thread has made room (then it tries again).
const POLL: Duration = Duration::from_millis(2);
/// It tries again at least this often (descriptors freed by closed files do not show in the
/// inode count).
const RETRY: Duration = Duration::from_millis(100);

/// A node as the kernel was last given it.
struct Given {
    /// Its directory (a name invalidation asks for the name that holds it then).
    parent: u64,
    /// When (a tick of [`Reclaim::tick`]).
    tick: u64,
    dir: bool,
}

#[derive(Default)]
pub struct Reclaim {
    /// Inode -> how it was last given.
    names: DashMap<u64, Given>,
    tick: AtomicU64,
    /// Inode count at which the thread is woken (0: not started).
    high: AtomicUsize,
    wake: OnceLock<SyncSender<()>>,
    /// Files whose names are to be dropped once no handle holds them (see `drop_stale`).
    stale: std::sync::Mutex<Vec<u64>>,
    /// Files whose cached attributes the kernel is to drop (a write-back failed: see
    /// `Vfs::take_write_error`).
    expire: std::sync::Mutex<Vec<u64>>,
    /// A request may wait for descriptors (more than one request thread).
    may_wait: AtomicBool,
    /// A request is waiting for descriptors.
    waiting: AtomicBool,
    /// The directory the kernel holds locked for the waiting request (0: none). The thread
    /// leaves the names in it alone meanwhile: invalidating one would wait for that lock.
    waiting_dir: AtomicU64,
    /// Rounds that found the table past the mark and nothing to drop (every name open).
    futile: AtomicU64,
    /// The session's `/dev/fuse`, for FUSE_NOTIFY_PRUNE (set once the session exists).
    pruner: OnceLock<super::prune::Pruner>,
    /// The kernel knows FUSE_NOTIFY_PRUNE (from its protocol version at INIT; cleared if it
    /// refuses one after all).
    prunes: AtomicBool,
}

fn short_of_descriptors<T>(r: &Result<T, VfsError>) -> bool {
    matches!(r, Err(e) if e.errno() == libc::EMFILE || e.errno() == libc::ENFILE)
}

impl Reclaim {
    /// The kernel was given the inode of `a` under a name in `parent`.
    pub fn seen(&self, vfs: &Vfs, parent: u64, a: &Attr) {
        let dir = a.kind == Kind::Dir;
        if a.ino <= 1 || (dir && self.pruner().is_none()) || crate::vfs::is_control(a.ino) {
            return;
        }
        let t = self.tick.fetch_add(1, Ordering::Relaxed);
        let given = Given {
            parent,
            tick: t,
            dir,
        };
        self.names.insert(a.ino, given);
        if t.is_multiple_of(CHECK_EVERY) {
            let _ = self.pressed(vfs);
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

    /// The session's `/dev/fuse` descriptor, for prune notifications.
    pub fn set_device(&self, dev: std::os::fd::BorrowedFd<'_>) {
        match super::prune::Pruner::new(dev) {
            Ok(p) => {
                let _ = self.pruner.set(p);
            }
            Err(e) => tracing::debug!("no prune notifications: {e}"),
        }
    }

    /// The kernel's protocol minor version (at INIT): whether it knows prune notifications.
    /// `KMSFS_NO_PRUNE` set: never (names are invalidated as on older kernels; for tests).
    pub fn set_kernel_minor(&self, minor: u32) {
        let prunes =
            minor >= super::prune::SINCE_MINOR && std::env::var_os("KMSFS_NO_PRUNE").is_none();
        self.prunes.store(prunes, Ordering::Relaxed);
    }

    /// The pruner, where the kernel takes prune notifications.
    fn pruner(&self) -> Option<&super::prune::Pruner> {
        self.pruner
            .get()
            .filter(|_| self.prunes.load(Ordering::Relaxed))
    }

    /// Lets requests wait for descriptors when the session has `threads` request threads.
    pub fn set_threads(&self, threads: usize) {
        self.may_wait.store(threads > 1, Ordering::Relaxed);
    }

    /// Runs `op`, and while it fails for want of descriptors and the thread has names to drop,
    /// again once the thread has made room (or every [`RETRY`]) for up to [`PATIENCE`] (see the
    /// module's comment). `dir`: the directory the kernel holds locked for this request, if
    /// any. `op` must leave nothing behind when it fails (the model's operations undo what
    /// they did); it runs again only after the inode count fell or [`RETRY`] passed, so a
    /// retried create adds few audit records.
    pub fn patiently<T>(
        &self,
        vfs: &Vfs,
        dir: Option<u64>,
        mut op: impl FnMut() -> Result<T, VfsError>,
    ) -> Result<T, VfsError> {
        let mut r = op();
        if !short_of_descriptors(&r)
            || !self.may_wait.load(Ordering::Relaxed)
            || self.waiting.swap(true, Ordering::Acquire)
        {
            return r;
        }
        // Cleared however this ends (a panic in `op` included).
        struct Waiting<'a>(&'a Reclaim);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiting_dir.store(0, Ordering::Relaxed);
                self.0.waiting.store(false, Ordering::Release);
            }
        }
        let _waiting = Waiting(self);
        self.waiting_dir.store(dir.unwrap_or(0), Ordering::Relaxed);
        let deadline = Instant::now() + PATIENCE;
        let futile = self.futile.load(Ordering::Relaxed);
        let mut count = vfs.node_count();
        let mut last = Instant::now();
        // `pressed` also wakes the thread; false: too few names to drop, so waiting would not
        // help. Nor when the thread found every name open (open files hold the descriptors).
        while short_of_descriptors(&r)
            && self.pressed(vfs)
            && self.futile.load(Ordering::Relaxed) == futile
            && Instant::now() < deadline
        {
            std::thread::sleep(POLL);
            if vfs.node_count() >= count && last.elapsed() < RETRY {
                continue;
            }
            r = op();
            count = vfs.node_count();
            last = Instant::now();
        }
        r
    }

    /// Has the thread ask the kernel to drop the cached attributes of `ino` (not from a
    /// request: a notification must not wait inside one).
    pub fn expire_attrs(&self, ino: u64) {
        let mut e = self.expire.lock().unwrap_or_else(|p| p.into_inner());
        if !e.contains(&ino) {
            e.push(ino);
        }
        drop(e);
        if let Some(w) = self.wake.get() {
            let _ = w.try_send(());
        }
    }

    /// Wakes the thread for files closed after a failed write (see `drop_stale`).
    pub fn stale_closed(&self) {
        if let Some(w) = self.wake.get() {
            let _ = w.try_send(());
        }
    }

    /// Asks the kernel to drop the names of files closed since a write to them failed, so
    /// that it drops their inodes with the size and pages it kept for the failed write. A file
    /// opened again meanwhile waits for its next close; one the kernel has let go needs
    /// nothing.
    fn drop_stale(&self, vfs: &Vfs, notifier: &Notifier) {
        let mut stale = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        stale.extend(vfs.take_stale_caches());
        stale.retain(|&ino| {
            if !vfs.knows(ino) {
                return false;
            }
            if vfs.is_open(ino) {
                return true;
            }
            // The name that holds the file now (it may have been renamed since the kernel was
            // given it); none: unlinked, and the kernel drops it by itself.
            let Some((parent, name)) = vfs.current_name(ino) else {
                tracing::debug!("inode {ino}: no name to drop after a failed write");
                return false;
            };
            self.names.remove(&ino);
            let _ = notifier.inval_entry(INodeNo(parent), &name);
            // Opened meanwhile (looked up before the drop): the open keeps the inode, so try
            // again after its close.
            vfs.is_open(ino)
        });
    }

    /// Starts the thread that asks the kernel to let names go, through the notifier the
    /// session puts into `notifier` once it exists.
    pub fn start(
        self: &Arc<Self>,
        vfs: Arc<Vfs>,
        notifier: Arc<OnceLock<Notifier>>,
        listings: Arc<super::listings::ControlListings>,
    ) -> std::io::Result<()> {
        let (tx, rx) = sync_channel::<()>(1);
        let _ = self.wake.set(tx);
        self.high.store(limit() * HIGH / 1000, Ordering::Relaxed);
        // Weak: when the file system is dropped (the session ended), so is the sender, and
        // the thread ends, letting go of the model.
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("kmsfs-reclaim".into())
            .spawn(move || {
                // Nodes asked for in rounds since the last that let any go.
                let mut fruitless = 0usize;
                loop {
                    match rx.recv_timeout(RECHECK) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    let Some(me) = me.upgrade() else { return };
                    let limit = limit();
                    me.high.store(limit * HIGH / 1000, Ordering::Relaxed);
                    vfs.limit_changed();
                    let Some(notifier) = notifier.get() else {
                        continue;
                    };
                    // Key-store changes not made through a control file (a deletion window
                    // ending): the same thread, once a second.
                    listings.periodic(&vfs, notifier);
                    let expire =
                        std::mem::take(&mut *me.expire.lock().unwrap_or_else(|p| p.into_inner()));
                    for ino in expire {
                        // Attributes only (offset -1): no page is touched.
                        let _ = notifier.inval_inode(INodeNo(ino), -1, 0);
                    }
                    me.drop_stale(&vfs, notifier);
                    let before = vfs.node_count();
                    let asked = me.reclaim(&vfs, notifier, limit);
                    if asked == 0 {
                        continue;
                    }
                    if me.pruner().is_none() {
                        drop(me);
                        std::thread::sleep(SETTLE);
                        continue;
                    }
                    std::thread::sleep(SETTLE_PRUNED);
                    if vfs.node_count() < before {
                        fruitless = 0;
                        continue;
                    }
                    // Nothing let go (in use): no reason to look again at once. The nodes
                    // kept go to the back of the list, so the next rounds ask for others; once
                    // every node listed has been asked for in vain, the rounds are as futile
                    // as finding nothing to drop (a request waiting for room gives up).
                    fruitless += asked;
                    if fruitless >= me.names.len() {
                        fruitless = 0;
                        me.futile.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(me);
                    std::thread::sleep(SETTLE);
                }
            })?;
        Ok(())
    }

    /// One round; how many nodes were asked for.
    fn reclaim(&self, vfs: &Vfs, notifier: &Notifier, limit: usize) -> usize {
        let count = vfs.node_count();
        // Names of inodes the kernel has let go: keep the map about as large as the table.
        if count <= limit * HIGH / 1000 {
            if self.names.len() > 2 * count + 1024 {
                self.names.retain(|ino, _| vfs.knows(*ino));
            }
            return 0;
        }
        self.names.retain(|ino, _| vfs.knows(*ino));
        let pruner = self.pruner();
        // A prune takes no directory lock: nothing to leave alone for a waiting request.
        let locked = match pruner {
            Some(_) => 0,
            None => self.waiting_dir.load(Ordering::Relaxed),
        };
        let mut oldest: Vec<(u64, u64, bool)> = self
            .names
            .iter()
            .filter(|e| !vfs.is_open(*e.key()) && (locked == 0 || e.value().parent != locked))
            .map(|e| (e.value().tick, *e.key(), e.value().dir))
            .collect();
        let excess = count.saturating_sub(limit * LOW / 1000).min(oldest.len());
        if excess == 0 {
            // Names known but none to drop (all open, or in the directory a request waits in):
            // waiting does not help. No names at all: the last round's are still being let go.
            if !self.names.is_empty() {
                self.futile.fetch_add(1, Ordering::Relaxed);
            }
            return 0;
        }
        oldest.select_nth_unstable_by_key(excess - 1, |r| r.0);
        let oldest = &mut oldest[..excess];
        if let Some(p) = pruner {
            // Files first, then directories from the most recently given: a directory's cached
            // entries hold it, and they were mostly given after it. The kernel keeps what is
            // in use; those stay listed, as if given now, to be asked for again later (one it
            // drops leaves the list with its FORGET).
            oldest.sort_unstable_by_key(|&(t, _, dir)| (dir, std::cmp::Reverse(t)));
            let nodes: Vec<u64> = oldest.iter().map(|r| r.1).collect();
            tracing::debug!(
                "{count} nodes held: pruning {} ({} directories)",
                nodes.len(),
                oldest.iter().filter(|r| r.2).count()
            );
            match p.prune(&nodes) {
                Ok(()) => {
                    for &(t, ino, _) in oldest.iter() {
                        if let Some(mut g) = self.names.get_mut(&ino)
                            && g.tick == t
                        {
                            g.tick = self.tick.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    return nodes.len();
                }
                Err(e) => {
                    tracing::warn!("prune notification refused ({e}): invalidating names instead");
                    self.prunes.store(false, Ordering::Relaxed);
                    self.names.retain(|_, g| !g.dir);
                    return nodes.len();
                }
            }
        }
        for &(t, ino, _) in oldest.iter() {
            // Only if not given again meanwhile (then it is no longer among the oldest).
            if self.names.remove_if(&ino, |_, g| g.tick == t).is_some()
                // The name that holds it now: the one given may have been renamed since, and
                // another node may be under it (a directory, or an open file).
                && let Some((parent, name)) = vfs.current_name(ino)
            {
                let _ = notifier.inval_entry(INodeNo(parent), &name);
            }
        }
        oldest.len()
    }
}

/// The descriptor limit now (kept small enough to multiply by a per-mille share).
fn limit() -> usize {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    l.and_then(|n| usize::try_from(n).ok())
        .unwrap_or(usize::MAX)
        .min(usize::MAX / 1000)
}
