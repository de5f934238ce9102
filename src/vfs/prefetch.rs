//! Read-ahead across files. When files of one directory are opened one after another (`cat *`,
//! `grep -r`, a backup, `git add`), the files that follow in the directory's listing are read
//! into the backing store's page cache by a background thread, so that their opens (which read
//! the header) and first reads no longer each wait for the disk in turn.
//!
//! Bounds: only a directory whose listing the kernel took (readdir) is read ahead, and only
//! from an open of one of its files on. The first open queues 4 files (most directories hold a
//! few files, so a walk gains from the second file of each on; a lone open costs at most 4 ×
//! [`READ_AHEAD_BYTES`] of reading), the second 16, doubling to 128 as opens continue. A window
//! is the files after the open one in the listing first, then the directory's others from the
//! start of the listing (so a walk in sorted or index order is read ahead too); each file at
//! most once per listing, and only the first [`READ_AHEAD_BYTES`] of each. Only regular files
//! are touched (checked on the open descriptor before reading), only cipher data is read: no
//! key is used and nothing is decrypted or audited.
//! A full queue drops the work (the disk is busy already).
//!
//! The listings remembered here also tell a tree walk (a directory listed after its parent):
//! its subdirectories are read ahead by `dir_ahead`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::num::NonZeroU64;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rustix::fs::{Advice, FileType, Mode, OFlags};

use super::Kind;
use super::dir_ahead::{DirAhead, SUBDIRS_MAX};
use super::inode::Node;
use crate::control::ControlDir;

/// Files queued by the first open in a listed directory.
const FIRST_OPEN_AHEAD: usize = 4;
/// Files queued by the second open in a directory; doubled by each later open.
const FIRST_AHEAD: usize = 16;
const MAX_AHEAD: usize = 128;
/// Of each file: the header and the first blocks (most files are smaller).
const READ_AHEAD_BYTES: u64 = 128 * 1024;
/// Directories whose listing is remembered, and their files in all (the least recently used
/// listing is dropped first). Enough for a tree walk that lists everything before it reads.
const DIRS_MAX: usize = 1024;
const FILES_MAX: usize = 256 * 1024;
/// Batches waiting for the thread.
const QUEUE: usize = 32;

struct DirState {
    dir: Weak<Node>,
    /// Cipher names of the regular files, in listing order.
    files: Vec<OsString>,
    /// Inode number -> place in `files`.
    index: HashMap<u64, usize>,
    /// Queued (or opened) since the listing.
    queued: Vec<bool>,
    /// Files before this place in the listing are all queued (or opened).
    cursor: usize,
    opens: u32,
    used: u64,
    /// Listed from its start after its parent was: a tree walk, whose subdirectories are read
    /// ahead (`dir_ahead`).
    walk: bool,
    /// Subdirectories read ahead since the listing.
    subdirs: usize,
}

struct Job {
    dir: Arc<Node>,
    names: Vec<OsString>,
}

#[derive(Default)]
struct Listings {
    /// A use counter (for least-recently-used).
    tick: u64,
    /// Files in all listings.
    files: usize,
    dirs: HashMap<u64, DirState>,
}

impl Listings {
    fn remove(&mut self, ino: u64) {
        if let Some(st) = self.dirs.remove(&ino) {
            self.files -= st.files.len();
        }
    }
}

/// What read-ahead takes from a part of a listing: its regular files (inode number, cipher
/// name) and its subdirectories (cipher names), in order.
#[derive(Default)]
pub(super) struct Listed {
    files: Vec<(u64, OsString)>,
    subdirs: Vec<OsString>,
}

impl Listed {
    /// Takes note of an entry the kernel took (`.` and `..` are passed over). `warm`: a
    /// subdirectory whose entries were searched or listed lately (their blocks are most likely
    /// cached: reading them ahead would only take CPU from the walk, as in a cold `git status`,
    /// whose lookups of every file come before its walk).
    pub fn add(&mut self, ino: u64, kind: Kind, cipher_name: OsString, warm: bool) {
        match kind {
            Kind::File => self.files.push((ino, cipher_name)),
            Kind::Dir if !cipher_name.is_empty() && !warm => self.subdirs.push(cipher_name),
            _ => {}
        }
    }
}

#[derive(Default)]
pub(super) struct Prefetch {
    /// Off with `--no-prefetch`: nothing is remembered or read ahead.
    enabled: bool,
    dirs: Mutex<Listings>,
    /// The thread, started on first use (`None`: it could not be started).
    worker: OnceLock<Option<SyncSender<Job>>>,
    /// Read-ahead of subdirectories in a tree walk.
    dir_ahead: DirAhead,
}

impl std::fmt::Debug for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetch").finish_non_exhaustive()
    }
}

impl Prefetch {
    pub fn new(enabled: bool) -> Self {
        Prefetch {
            enabled,
            ..Default::default()
        }
    }

    /// Remembers the regular files of the part of `dir`'s listing the kernel just took, in
    /// order, and reads its subdirectories ahead if the listing is part of a tree walk.
    /// `start`: the listing starts here (from its first entry), so the directory's files and
    /// its count of opens start afresh; otherwise the files are added to the listing
    /// remembered.
    pub fn listed(&self, dir: &Arc<Node>, start: bool, part: Listed, control: &Arc<ControlDir>) {
        let Listed { files, subdirs } = part;
        if !self.enabled || (files.is_empty() && subdirs.is_empty() && !start) {
            return;
        }
        let mut l = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        if start {
            let walk = l.dirs.contains_key(&dir.parent());
            l.remove(dir.ino);
            while l.dirs.len() >= DIRS_MAX {
                match l.dirs.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| *k) {
                    Some(oldest) => l.remove(oldest),
                    None => break,
                }
            }
            l.tick += 1;
            let used = l.tick;
            l.dirs.insert(
                dir.ino,
                DirState {
                    dir: Arc::downgrade(dir),
                    files: Vec::new(),
                    index: HashMap::new(),
                    queued: Vec::new(),
                    cursor: 0,
                    opens: 0,
                    used,
                    walk,
                    subdirs: 0,
                },
            );
        }
        let n = files.len();
        // A listing too long to remember: forget it (before making room for it).
        if l.dirs.get(&dir.ino).is_none_or(|st| {
            st.files.len() + n > FILES_MAX || !Weak::ptr_eq(&st.dir, &Arc::downgrade(dir))
        }) {
            l.remove(dir.ino);
            return;
        }
        while l.files + n > FILES_MAX {
            match l
                .dirs
                .iter()
                .filter(|(k, _)| **k != dir.ino)
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| *k)
            {
                Some(oldest) => l.remove(oldest),
                None => break,
            }
        }
        let Some(st) = l.dirs.get_mut(&dir.ino) else {
            return;
        };
        if st.walk && st.subdirs < SUBDIRS_MAX && !subdirs.is_empty() {
            let room = SUBDIRS_MAX - st.subdirs;
            st.subdirs += self
                .dir_ahead
                .queue(dir, subdirs.into_iter().take(room), control);
        }
        for (ino, name) in files {
            st.index.insert(ino, st.files.len());
            st.files.push(name);
            st.queued.push(false);
        }
        l.files += n;
    }

    /// File `ino`, last seen in directory `dir_ino`, was opened.
    pub fn opened(&self, dir_ino: u64, ino: u64, control: &Arc<ControlDir>) {
        if !self.enabled {
            return;
        }
        let job = {
            let mut l = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
            l.tick += 1;
            let tick = l.tick;
            let Some(st) = l.dirs.get_mut(&dir_ino) else {
                return;
            };
            let Some(&pos) = st.index.get(&ino) else {
                return;
            };
            st.used = tick;
            st.opens = st.opens.saturating_add(1);
            st.queued[pos] = true;
            let ahead = match st.opens {
                1 => FIRST_OPEN_AHEAD,
                n => (FIRST_AHEAD << (n - 2).min(3)).min(MAX_AHEAD),
            };
            let end = (pos + 1 + ahead).min(st.files.len());
            // The files right after this one first (a walk in listing order: find, tar, cp) ...
            let mut picked: Vec<usize> = (pos + 1..end)
                .filter(|&i| !std::mem::replace(&mut st.queued[i], true))
                .collect();
            // ... then the rest of the directory from the start of the listing, for walks in
            // another order (a sorted glob, git's index order), which the window after the
            // open file would mostly miss.
            while picked.len() < ahead && st.cursor < st.files.len() {
                let i = st.cursor;
                st.cursor += 1;
                if !std::mem::replace(&mut st.queued[i], true) {
                    picked.push(i);
                }
            }
            let names: Vec<OsString> = picked.iter().map(|&i| st.files[i].clone()).collect();
            if names.is_empty() {
                return;
            }
            let Some(dir) = st.dir.upgrade() else {
                l.remove(dir_ino);
                return;
            };
            Job { dir, names }
        };
        if let Some(tx) = self.worker(control) {
            let _ = tx.try_send(job);
        }
    }

    fn worker(&self, control: &Arc<ControlDir>) -> Option<&SyncSender<Job>> {
        self.worker
            .get_or_init(|| {
                let (tx, rx) = sync_channel::<Job>(QUEUE);
                let control = control.clone();
                std::thread::Builder::new()
                    .name("kmsfs-prefetch".into())
                    .spawn(move || {
                        for job in rx {
                            for name in &job.names {
                                if read_ahead(&job.dir, name) {
                                    control
                                        .metrics
                                        .prefetched_files
                                        .fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    })
                    .ok()
                    .map(|_| tx)
            })
            .as_ref()
    }
}

/// Starts reading the beginning of `name` in `dir` into the page cache, if it still is a
/// regular file (opened as `O_PATH` first: opening a device or FIFO for reading could block or
/// have effects).
fn read_ahead(dir: &Node, name: &OsStr) -> bool {
    let Ok(path_fd) = rustix::fs::openat(
        &dir.fd,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    match rustix::fs::fstat(&path_fd) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
        _ => return false,
    }
    let Ok(fd) = rustix::fs::open(
        format!("/proc/self/fd/{}", path_fd.as_raw_fd()),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    rustix::fs::fadvise(&fd, 0, NonZeroU64::new(READ_AHEAD_BYTES), Advice::WillNeed).is_ok()
}
