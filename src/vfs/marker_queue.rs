//! Interrupted-write markers kept past the last close, until what was written is on the disk.
//!
//! A size-changing write is marked (`content::pending`), and the marker used to be removed at
//! the last close. But a close writes nothing to the disk: the backing file system journals the
//! larger size and the marker's removal at its next commit (ext4: within 5 s), while pages it
//! had on the disk already and that were rewritten (a file's old final block, grown) wait for
//! the writeback (30 s). A power loss in between left the larger size, no marker and the old
//! final block: the file failed to read from that block on, fsync'd data included, and fsck
//! called it tampered (found 2026-12-06 with ext4's shutdown ioctl, `tests/power_loss.rs`).
//!
//! So the last close hands the marker to this queue, with a descriptor of the file. After
//! [`DELAY`] (the kernel's own `dirty_expire`: by then its writeback has normally written the
//! pages, and the wait costs nothing) the queue waits for the file's pages to reach the disk
//! (`sync_file_range`) and only then removes the marker, so that its removal is journaled after
//! the data was written. A file opened again meanwhile takes its marker over (its writes go on
//! under it; it is not "recovered"); a file removed meanwhile is passed over. At most
//! a bound of files wait (each holds a descriptor); past that the oldest are settled
//! at once. Every marker is settled at unmount and when the queue is dropped.
//!
//! A marker left by a crash is found at the file's lookup by its times (`Vfs::recovered_attr`),
//! but a file closed and then touched (its modification time put back at the close, a chmod)
//! no longer shows them. So while a read-write mount may leave markers on closed files, the
//! cipher directory holds `.kmsfs/mounted-rw` (`VolumePaths::session_flag`): made at the
//! mount (before any marker, so that the journal of the backing file system never has a marker
//! without it) and removed once every marker is settled at the unmount. A mount that finds it
//! recovers every marked file before it serves anything (`unclean.rs`).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a closed file's marker waits before its pages are waited for: the kernel's default
/// `vm.dirty_expire_centisecs` (30 s) plus one pass of its flusher (5 s).
pub const DELAY: Duration = Duration::from_secs(35);
/// How long the end of a session waits for the data of closed files before it leaves their
/// markers to the next mount (a `kmsfs mount` right after waits 5 s for the lock at most).
pub const UNMOUNT_BUDGET: Duration = Duration::from_secs(3);
/// Files settled together: their write-outs are started together and then waited for.
const BATCH: usize = 256;

/// A marker as the queue takes it from a close and hands it to an open.
#[derive(Debug, Clone, Copy)]
pub struct Marked {
    /// The first block it records.
    pub first: u64,
    /// The holes before that block.
    pub gap: u32,
    /// When a close first handed it to the queue (None: never yet).
    pub since: Option<Instant>,
}

impl Marked {
    /// With the descriptor of the file it is on, for [`MarkerQueue::defer`].
    pub fn with(self, file: File) -> Handed {
        Handed { marked: self, file }
    }
}

/// A marker and its file, handed over at the last close.
pub struct Handed {
    marked: Marked,
    file: File,
}

/// A closed file whose marker waits (see the module documentation).
struct Waiting {
    file: Arc<File>,
    first: u64,
    gap: u32,
    seq: u64,
    since: Instant,
}

#[derive(Default)]
struct State {
    /// By inode number (the backing file's: it stays that file's while its descriptor is held).
    files: HashMap<u64, Waiting>,
    /// Inode and sequence number, oldest first; entries taken over since are passed over.
    order: VecDeque<(u64, u64)>,
    next_seq: u64,
    stop: bool,
    /// A file's pages could not be written: its marker stayed on (the session's flag must too).
    failed: bool,
}

struct Inner {
    state: Mutex<State>,
    wake: Condvar,
    fixed_cap: Option<usize>,
    /// The bound as last read (see `MarkerQueue::cap`).
    cap: AtomicUsize,
    delay: Duration,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One file of a batch being settled.
#[derive(Clone)]
struct Settling {
    ino: u64,
    seq: u64,
    file: Arc<File>,
}

pub struct MarkerQueue {
    inner: Arc<Inner>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Default for MarkerQueue {
    fn default() -> Self {
        Self::with_delay(DELAY)
    }
}

impl MarkerQueue {
    pub fn with_delay(delay: Duration) -> Self {
        Self::new(delay, None)
    }

    /// `cap`: a fixed bound (tests); by default it follows the descriptor limit.
    fn new(delay: Duration, cap: Option<usize>) -> Self {
        MarkerQueue {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                fixed_cap: cap,
                cap: AtomicUsize::new(cap.unwrap_or(16)),
                delay,
            }),
            thread: Mutex::new(None),
        }
    }

    /// The bound now: each waiting file holds a descriptor, an eighth of the limit at most (read
    /// at each close: it can be changed from outside, `prlimit`).
    fn cap(&self) -> usize {
        let cap = self.inner.fixed_cap.unwrap_or_else(|| {
            let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(u64::MAX);
            usize::try_from(limit / 8)
                .unwrap_or(usize::MAX)
                .clamp(16, 4096)
        });
        self.inner.cap.store(cap, Ordering::Relaxed);
        cap
    }

    /// Reads the bound again and, if more files wait than it allows now, has the thread
    /// settle the oldest: a limit lowered from outside (`prlimit`) is otherwise read only at
    /// the next close, and until then the waiting files keep their descriptors above it.
    pub fn recheck(&self) {
        let cap = self.cap();
        if self.inner.lock().files.len() > cap {
            self.inner.wake.notify_one();
        }
    }

    /// Files waiting now.
    pub fn len(&self) -> usize {
        self.inner.lock().files.len()
    }

    /// The last close of inode `ino`, whose marker is on the file `h` holds: the marker is
    /// removed once what was written is on the disk.
    pub fn defer(&self, ino: u64, h: Handed) {
        let Handed { marked, file } = h;
        let cap = self.cap();
        {
            let mut st = self.inner.lock();
            // Else the settler cannot keep up (a disk far behind): this close waits for the
            // file's pages itself.
            if st.files.len() < 2 * cap && !st.stop && self.started() {
                let seq = st.next_seq;
                st.next_seq += 1;
                let w = Waiting {
                    file: Arc::new(file),
                    first: marked.first,
                    gap: marked.gap,
                    seq,
                    since: marked.since.unwrap_or_else(Instant::now),
                };
                st.files.insert(ino, w);
                st.order.push_back((ino, seq));
                // Entries taken over since pile up in `order` when a file is opened and closed
                // again and again: dropped once they outnumber the waiting files.
                if st.order.len() > 4 * st.files.len() + 1024 {
                    let State { files, order, .. } = &mut *st;
                    order.retain(|(i, q)| files.get(i).is_some_and(|w| w.seq == *q));
                }
                if st.files.len() > cap || st.order.len() == 1 {
                    self.inner.wake.notify_one();
                }
                return;
            }
        }
        settle(
            &self.inner,
            vec![Settling {
                ino,
                seq: u64::MAX,
                file: Arc::new(file),
            }],
        );
    }

    /// An open of inode `ino`: its waiting marker, if any, now belongs to the open file (which
    /// removes it at its fsync, or hands it back at its last close).
    pub fn take(&self, ino: u64) -> Option<Marked> {
        let w = self.inner.lock().files.remove(&ino)?;
        Some(Marked {
            first: w.first,
            gap: w.gap,
            since: Some(w.since),
        })
    }

    /// Whether inode `ino` was closed with its marker still on (the file is whole: its writes
    /// completed).
    pub fn holds(&self, ino: u64) -> bool {
        self.inner.lock().files.contains_key(&ino)
    }

    /// The kernel let go of inode `ino`: if it waits and has no name left, it is let go too
    /// (its descriptor would keep its blocks from being freed; nothing of it survives).
    pub fn forget_removed(&self, ino: u64) {
        let mut st = self.inner.lock();
        if st
            .files
            .get(&ino)
            .is_some_and(|w| rustix::fs::fstat(&*w.file).is_ok_and(|s| s.st_nlink == 0))
        {
            st.files.remove(&ino);
        }
    }

    /// Settles inode `ino` now, if it waits (before it is made immutable).
    pub fn settle_one(&self, ino: u64) {
        let one = {
            let st = self.inner.lock();
            st.files.get(&ino).map(|w| Settling {
                ino,
                seq: w.seq,
                file: w.file.clone(),
            })
        };
        if let Some(s) = one {
            settle(&self.inner, vec![s]);
        }
    }

    /// Settles every waiting file now (unmount), in batches until `budget` has run out (a
    /// batch already started is finished); false if a file was left, or its pages could not be
    /// written (its marker stays: the next mount's walk recovers it, see `unclean.rs`).
    pub fn settle_all(&self, budget: Duration) -> bool {
        let end = Instant::now() + budget;
        let all: Vec<Settling> = {
            let st = self.inner.lock();
            st.files
                .iter()
                .map(|(&ino, w)| Settling {
                    ino,
                    seq: w.seq,
                    file: w.file.clone(),
                })
                .collect()
        };
        for batch in all.chunks(BATCH / 4) {
            if Instant::now() >= end {
                return false;
            }
            settle(&self.inner, batch.to_vec());
        }
        !self.inner.lock().failed
    }

    /// Starts the settling thread the first time; false if it cannot be started.
    fn started(&self) -> bool {
        let mut t = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        if t.is_none() {
            let inner = self.inner.clone();
            match std::thread::Builder::new()
                .name("kmsfs-markers".into())
                .spawn(move || run(&inner))
            {
                Ok(h) => *t = Some(h),
                Err(e) => {
                    tracing::warn!("cannot start the marker thread: {e}");
                    return false;
                }
            }
        }
        true
    }
}

impl Drop for MarkerQueue {
    fn drop(&mut self) {
        self.inner.lock().stop = true;
        self.inner.wake.notify_all();
        let t = self
            .thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = t {
            let _ = t.join();
        }
        self.settle_all(UNMOUNT_BUDGET);
    }
}

/// The settling thread: waits for the oldest file to be due (or the queue to be over its cap)
/// and settles the due files in batches.
fn run(inner: &Inner) {
    let mut st = inner.lock();
    loop {
        if st.stop {
            return;
        }
        let cap = inner.cap.load(Ordering::Relaxed);
        let now = Instant::now();
        let mut batch = Vec::new();
        let mut wait = None;
        while batch.len() < BATCH {
            let Some(&(ino, seq)) = st.order.front() else {
                break;
            };
            let Some(w) = st.files.get(&ino).filter(|w| w.seq == seq) else {
                st.order.pop_front();
                continue;
            };
            let due = w.since + inner.delay;
            if due > now && st.files.len() - batch.len() <= cap {
                wait = Some(due - now);
                break;
            }
            batch.push(Settling {
                ino,
                seq,
                file: w.file.clone(),
            });
            st.order.pop_front();
        }
        if batch.is_empty() {
            st = match wait {
                Some(d) => inner
                    .wake
                    .wait_timeout(st, d)
                    .map_or_else(|p| p.into_inner().0, |r| r.0),
                None => inner.wake.wait(st).unwrap_or_else(|p| p.into_inner()),
            };
            continue;
        }
        drop(st);
        settle(inner, batch);
        st = inner.lock();
    }
}

/// Waits until the pages of each file of `batch` are on the disk (their write-outs started
/// together first), then removes its marker, unless the file was opened again meanwhile (its
/// marker is then the open file's) or removed (nothing of it survives). A file whose pages
/// could not be written keeps its marker: its next open checks it.
fn settle(inner: &Inner, batch: Vec<Settling>) {
    let removed = |f: &File| rustix::fs::fstat(f).is_ok_and(|s| s.st_nlink == 0);
    let gone: Vec<bool> = batch.iter().map(|s| removed(&s.file)).collect();
    for (s, &gone) in batch.iter().zip(&gone) {
        if !gone {
            let _ = sync_range(&s.file, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    for (s, gone) in batch.into_iter().zip(gone) {
        let written = gone
            || sync_range(
                &s.file,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
            .inspect_err(|e| {
                tracing::warn!(
                    inode = s.ino,
                    "a closed file's pages could not be written ({e}): its interrupted-write \
                     marker stays, for its next open to check"
                )
            })
            .is_ok();
        let mut st = inner.lock();
        st.failed |= !written;
        // `u64::MAX`: settled by its close, never queued.
        let ours = s.seq == u64::MAX || st.files.get(&s.ino).is_some_and(|w| w.seq == s.seq);
        if ours {
            // Under the lock: an open of the file waits, and finds the marker gone. One that
            // stays (not removable) keeps `.kmsfs/mounted-rw`, as an unwritten file does.
            if written && !gone && !crate::content::pending::clear(&s.file) {
                st.failed = true;
            }
            if s.seq != u64::MAX {
                st.files.remove(&s.ino);
            }
        }
    }
}

/// `sync_file_range` over the whole of `file`.
fn sync_range(file: &File, flags: libc::c_uint) -> std::io::Result<()> {
    super::write_behind::sync_file_range(file, 0, 0, flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    const XATTR: &str = "user.kmsfs-pending";

    fn marked_file(dir: &std::path::Path, name: &str) -> File {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(name))
            .unwrap();
        std::io::Write::write_all(&mut &f, b"data").unwrap();
        rustix::fs::fsetxattr(&f, XATTR, b"m", rustix::fs::XattrFlags::empty()).unwrap();
        f
    }

    fn handed(f: File, first: u64, gap: u32) -> Handed {
        Marked {
            first,
            gap,
            since: None,
        }
        .with(f)
    }

    fn has_marker(p: &std::path::Path) -> bool {
        let mut b = [0u8; 8];
        rustix::fs::getxattr(p, XATTR, &mut b).is_ok()
    }

    fn until(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_marker_is_removed_after_the_delay_and_not_before() {
        let t = tempfile::tempdir().unwrap();
        let q = MarkerQueue::new(Duration::from_secs(1), Some(16));
        q.defer(7, handed(marked_file(t.path(), "a"), 3, 1));
        assert!(q.holds(7));
        assert!(
            has_marker(&t.path().join("a")),
            "kept while the data may be in memory"
        );
        until("settled", || q.len() == 0);
        assert!(!has_marker(&t.path().join("a")));
    }

    #[test]
    fn an_open_takes_the_marker_over_and_the_queue_leaves_it() {
        let t = tempfile::tempdir().unwrap();
        let q = MarkerQueue::new(Duration::from_secs(3600), Some(16));
        q.defer(7, handed(marked_file(t.path(), "a"), 3, 1));
        let m = q.take(7).expect("taken");
        assert_eq!((m.first, m.gap), (3, 1));
        assert!(m.since.is_some(), "the wait runs from the first close");
        assert!(q.take(7).is_none());
        q.settle_all(UNMOUNT_BUDGET);
        assert!(
            has_marker(&t.path().join("a")),
            "the open's marker is not removed"
        );
        // Handed back: due at once (its wait ran out while it was open).
        let q = MarkerQueue::new(Duration::from_millis(100), Some(16));
        let f = std::fs::File::open(t.path().join("a")).expect("open");
        let since = Some(Instant::now() - Duration::from_secs(1));
        q.defer(
            7,
            Marked {
                first: 3,
                gap: 1,
                since,
            }
            .with(f),
        );
        until("settled", || q.len() == 0);
        assert!(!has_marker(&t.path().join("a")));
    }

    #[test]
    fn past_the_cap_the_oldest_are_settled_at_once_and_drop_settles_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let q = MarkerQueue::new(Duration::from_secs(3600), Some(16));
        for i in 0..40u64 {
            q.defer(i, handed(marked_file(t.path(), &format!("f{i}")), 0, 0));
        }
        until("down to the cap", || q.len() <= 16);
        assert!(!has_marker(&t.path().join("f0")), "the oldest first");
        drop(q);
        assert!((0..40).all(|i| !has_marker(&t.path().join(format!("f{i}")))));
    }

    #[test]
    fn a_spent_budget_leaves_the_markers_and_says_so() {
        let t = tempfile::tempdir().unwrap();
        let q = MarkerQueue::new(Duration::from_secs(3600), Some(16));
        q.defer(7, handed(marked_file(t.path(), "a"), 0, 0));
        assert!(!q.settle_all(Duration::ZERO));
        assert!(q.holds(7) && has_marker(&t.path().join("a")));
        assert!(q.settle_all(UNMOUNT_BUDGET));
        assert!(!has_marker(&t.path().join("a")));
    }

    #[test]
    fn a_removed_file_is_let_go_when_forgotten() {
        let t = tempfile::tempdir().unwrap();
        let q = MarkerQueue::new(Duration::from_secs(3600), Some(16));
        q.defer(7, handed(marked_file(t.path(), "a"), 0, 0));
        q.defer(8, handed(marked_file(t.path(), "b"), 0, 0));
        q.forget_removed(7);
        assert!(q.holds(7), "still named: its marker must still be settled");
        std::fs::remove_file(t.path().join("a")).unwrap();
        q.forget_removed(7);
        assert!(!q.holds(7) && q.holds(8));
    }

    #[test]
    fn a_removed_file_is_passed_over() {
        let t = tempfile::tempdir().unwrap();
        let q = MarkerQueue::new(Duration::from_secs(3600), Some(16));
        let f = marked_file(t.path(), "a");
        let keep = f.try_clone().unwrap();
        q.defer(7, handed(f, 0, 0));
        std::fs::remove_file(t.path().join("a")).unwrap();
        q.settle_all(UNMOUNT_BUDGET);
        assert_eq!(q.len(), 0);
        let mut b = [0u8; 8];
        assert!(
            rustix::fs::fgetxattr(&keep, XATTR, &mut b).is_ok(),
            "not touched"
        );
    }
}
