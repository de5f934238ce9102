//! Read-ahead down a tree walk. A cold `du`, `ls -lR`, `find` or `git status` waits for the disk
//! once per directory (its first block: measured 487 reads for the 456 directories of a
//! 4,370-file tree, ~110 µs each, one after another, ~25% of a cold `du` through the mount).
//! When a directory is listed from its start and its parent was listed before (a walk, not one
//! `ls`), the blocks of its subdirectories are read by a few background threads, several at a
//! time, while the walker is still busy with the entries before them.
//!
//! A subdirectory searched or listed through the mount in the last half minute is passed over:
//! its blocks are most likely cached (a cold `git status` looks up every file before its walk,
//! and reading its 456 directories again took ~15% of the daemon's CPU for nothing).
//!
//! Bounds: at most [`SUBDIRS_MAX`] subdirectories per listing, [`ENTRIES_MAX`] entries read
//! from each, a queue of [`QUEUE`] subdirectories (a full queue drops the work: the disk is busy
//! already). Only cipher names are read: no key is used, nothing is decrypted or audited; the
//! backing directories' access times are left alone where the daemon may (`O_NOATIME`).

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};

use rustix::fs::{Mode, OFlags, RawDir};
use rustix::io::Errno;

use super::inode::Node;
use crate::control::ControlDir;

/// Subdirectories read ahead per listing.
pub(super) const SUBDIRS_MAX: usize = 64;
/// Of each subdirectory's listing: its first entries (a few blocks; most directories fit in
/// one).
const ENTRIES_MAX: usize = 256;
/// Subdirectories waiting for a thread.
const QUEUE: usize = 256;
/// Threads: each waits for one read at a time, so this is the number of reads in flight.
const THREADS: usize = 4;

struct Job {
    dir: Arc<Node>,
    name: OsString,
}

#[derive(Default)]
pub(super) struct DirAhead {
    /// The threads' queue, made on first use (`None`: no thread could be started).
    queue: OnceLock<Option<SyncSender<Job>>>,
}

impl DirAhead {
    /// Queues the subdirectories `names` (cipher names) of `dir` for reading, until the queue
    /// is full; returns how many were queued.
    pub fn queue(
        &self,
        dir: &Arc<Node>,
        names: impl IntoIterator<Item = OsString>,
        control: &Arc<ControlDir>,
    ) -> usize {
        let Some(tx) = self.sender(control) else {
            return 0;
        };
        let mut queued = 0;
        for name in names {
            let job = Job {
                dir: dir.clone(),
                name,
            };
            if tx.try_send(job).is_err() {
                break;
            }
            queued += 1;
        }
        queued
    }

    fn sender(&self, control: &Arc<ControlDir>) -> Option<&SyncSender<Job>> {
        self.queue
            .get_or_init(|| {
                let (tx, rx) = sync_channel::<Job>(QUEUE);
                let rx = Arc::new(Mutex::new(rx));
                let mut started = 0;
                for i in 0..THREADS {
                    let (rx, control) = (rx.clone(), control.clone());
                    if std::thread::Builder::new()
                        .name(format!("kmsfs-dirahead-{i}"))
                        .spawn(move || work(&rx, &control))
                        .is_ok()
                    {
                        started += 1;
                    }
                }
                (started > 0).then_some(tx)
            })
            .as_ref()
    }
}

fn work(rx: &Mutex<Receiver<Job>>, control: &ControlDir) {
    loop {
        let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(j) => j,
            // The file system is gone.
            Err(_) => return,
        };
        if read_ahead(job.dir.fd.as_fd(), &job.name) {
            control
                .metrics
                .dirs_read_ahead
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Reads the first [`ENTRIES_MAX`] entries of the listing of `name` in `dir`, if it still is a
/// directory (`O_DIRECTORY | O_NOFOLLOW`: anything else, a FIFO or a symbolic link included,
/// fails to open, without blocking or following).
pub(super) fn read_ahead(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        // Not the owner and without CAP_FOWNER: read it as any listing would.
        Err(Errno::PERM) => rustix::fs::openat(dir, name, flags, Mode::empty()),
        r => r,
    };
    let Ok(fd) = fd else {
        return false;
    };
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    let mut rd = RawDir::new(&fd, &mut buf);
    let mut n = 0;
    while let Some(e) = rd.next() {
        if e.is_err() {
            return false;
        }
        n += 1;
        if n >= ENTRIES_MAX {
            break;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::read_ahead;

    #[test]
    fn only_directories_are_read() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path();
        std::fs::create_dir(p.join("d")).expect("mkdir");
        for i in 0..300 {
            std::fs::write(p.join("d").join(format!("f{i}")), b"x").expect("write");
        }
        std::fs::write(p.join("file"), b"x").expect("write");
        std::os::unix::fs::symlink("d", p.join("link")).expect("symlink");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from(0o644),
            0,
        )
        .expect("mkfifo");
        let dir = std::fs::File::open(p).expect("open");
        assert!(read_ahead(dir.as_fd(), "d".as_ref()));
        // A FIFO is never opened for reading (that would wait for a writer), a link never
        // followed, a file or a missing name is no error.
        for name in ["fifo", "link", "file", "missing"] {
            assert!(!read_ahead(dir.as_fd(), name.as_ref()), "{name}");
        }
    }
}
