//! The mount after a read-write session that did not end cleanly (a killed daemon, a power
//! loss: `.kmsfs/mounted-rw` was left, see `marker_queue`). A file closed shortly before keeps
//! its interrupted-write marker, and its times need not show it (a close puts the kernel's
//! modification time back; a `chmod` after it), so the lookup's check (`Vfs::recovered_attr`)
//! would miss it: the kernel would be given the torn size, which it keeps with the writeback
//! cache after the open recovers the file. So before anything is served every file of the
//! cipher directory is looked at (one `getxattr` each, by several workers: 3,000 files in 42
//! ms with a cold cache, 300,000 in 1.4–2.3 s), and those with a marker are recovered as an
//! open would. A file that cannot be (its key not usable, immutable) is left to its open, and
//! said so.
//!
//! The walk also runs at a remount from read-only to read-write (a read-only mount recovers
//! nothing), while the mount is served: a file open then is left to its next open (its open
//! state holds the size it was opened with), and the kernel is asked to drop the names of the
//! files it recovers that the kernel knows, which were given the torn size while read-only
//! (the reclaim thread does, as for a failed write: `Vfs::take_stale_caches`).

use std::collections::HashSet;
use std::os::unix::fs::{DirEntryExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use super::Vfs;
use super::open_file::read_header;
use crate::content::FileCipher;

/// Directories still to be walked, and how many workers are inside one (the walk ends when
/// none is left and nobody can add more).
struct Work {
    dirs: Vec<PathBuf>,
    busy: usize,
}

/// What the walk found.
#[derive(Default)]
struct Counts {
    files: AtomicU64,
    marked: AtomicU64,
    recovered: AtomicU64,
    /// Backing inodes of the marked files taken by a worker: a file with hard links in two
    /// directories is recovered once, not by two workers at the same time.
    taken: Mutex<HashSet<u64>>,
}

/// Workers of the walk: its time is the backing file system's lookup of each name and the read
/// of its inode (kernel time), which several threads do side by side, and a disk with a queue
/// does better with several reads in flight. On this project's 2-vCPU VM, 300,000 files in 300
/// directories, cold (`tools/bench-unclean-walk.sh`, alternating with the build before): 3.0–3.2
/// s with one worker, 1.4–2.3 s with four.
fn walkers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(2)
        .clamp(2, 16)
}

impl Vfs {
    pub(super) fn recover_marked_files(&self) {
        let start = std::time::Instant::now();
        let counts = Counts::default();
        let work = (
            Mutex::new(Work {
                dirs: vec![self.root.clone()],
                busy: 0,
            }),
            Condvar::new(),
        );
        std::thread::scope(|s| {
            for _ in 0..walkers() {
                s.spawn(|| self.walk_worker(&work, &counts));
            }
        });
        let (files, marked, recovered) = (
            counts.files.into_inner(),
            counts.marked.into_inner(),
            counts.recovered.into_inner(),
        );
        tracing::info!(
            "the last read-write mount did not end cleanly: {files} files checked for \
             interrupted writes in {:?}, {marked} marked, {recovered} changed",
            start.elapsed()
        );
    }

    /// Takes directories off the shared list until none is left and no other worker is inside
    /// one (which could add more).
    fn walk_worker(&self, work: &(Mutex<Work>, Condvar), counts: &Counts) {
        let (lock, cv) = work;
        let mut w = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(d) = w.dirs.pop() {
                w.busy += 1;
                drop(w);
                let subdirs = self.walk_dir(&d, counts);
                w = lock.lock().unwrap_or_else(|p| p.into_inner());
                w.busy -= 1;
                if !subdirs.is_empty() {
                    w.dirs.extend(subdirs);
                    cv.notify_all();
                } else if w.busy == 0 && w.dirs.is_empty() {
                    cv.notify_all();
                }
            } else if w.busy == 0 {
                return;
            } else {
                w = cv.wait(w).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Checks the files of directory `d` and recovers those with a marker; its subdirectories.
    fn walk_dir(&self, d: &Path, counts: &Counts) -> Vec<PathBuf> {
        let mut subdirs = Vec::new();
        let Ok(rd) = std::fs::read_dir(d) else {
            return subdirs;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else {
                continue;
            };
            if d == self.root && e.file_name() == crate::names::CONTROL_DIR {
                continue;
            }
            if t.is_dir() {
                subdirs.push(e.path());
            } else if t.is_file() {
                counts.files.fetch_add(1, Ordering::Relaxed);
                let p = e.path();
                if !crate::content::pending::is_marked_at(&p) {
                    continue;
                }
                if !counts
                    .taken
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(e.ino())
                {
                    continue;
                }
                counts.marked.fetch_add(1, Ordering::Relaxed);
                let ino = self.inodes.map_ino(e.ino());
                if self.open_files.contains_key(&ino) {
                    tracing::info!(file = %p.display(), "marked, open: left to its next open");
                    continue;
                }
                match self.recover_file(&p) {
                    Ok(true) => {
                        counts.recovered.fetch_add(1, Ordering::Relaxed);
                        if self.inodes.get(ino).is_ok() {
                            let mut v = self.stale_caches.lock().unwrap_or_else(|p| p.into_inner());
                            v.push(ino);
                            self.stale_pending.store(true, Ordering::Relaxed);
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        file = %p.display(),
                        "not recovered at the mount (its open will try): {e}"
                    ),
                }
            }
        }
        subdirs
    }

    /// Recovers the cipher file at `path` (see `content::pending::recover`); whether it changed.
    fn recover_file(&self, path: &Path) -> super::Result<bool> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        let header = read_header(&f)?;
        let dek = self.km.unwrap_dek(&header)?;
        let cipher = FileCipher::for_header(&dek, &header, self.block_size);
        Ok(crate::content::pending::recover(&f, &cipher, self.layout, false)?.is_some())
    }
}
