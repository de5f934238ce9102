//! Directory listing without per-open state. The kernel is told that OPENDIR is not
//! implemented (FUSE_NO_OPENDIR_SUPPORT), which saves two requests per directory listed
//! (OPENDIR and RELEASEDIR: half the requests of a cold `du`), and lets it keep listings in its
//! own cache until the directory changes (warm `git status` of a 4,370-file tree: 0.09 ->
//! 0.02 s). So every READDIR names the directory and an offset: `.` and `..` first, then the
//! backing file system's own directory offsets (`d_off`, stable across opens like `telldir`
//! cookies), so `seekdir`, `rewinddir` and a directory changing during a listing behave as on
//! the backing file system (see [`Vfs::stream_dir`]). Where a listing stopped, the open backing
//! directory is kept for the request that continues it ([`Cursors`]). Entries whose names fail
//! to decrypt are skipped and logged, never shown as garbage.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir};
use rustix::io::Errno;

use super::inode::{Node, ROOT_INO};
use super::prefetch::Listed;
use super::{Attr, Kind, Result, Vfs, VfsError};
use crate::names::{EntryKind, LONG_NAME_SUFFIX};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: OsString,
    /// The entry's name in the cipher directory (empty for `.` and `..`).
    pub cipher_name: OsString,
    /// A regular file open for writing through the mount (set by `readdirplus` only): with the
    /// writeback cache the kernel may hold more of it than has reached us, so the size in its
    /// attributes may be behind the kernel's. See `fuse::KmsFs::readdirplus`.
    pub size_may_lag: bool,
}

/// A readdirplus entry: the offset of the entry after it, the entry, its attributes.
pub type PlusEntry = (u64, DirEntry, Attr);

impl Vfs {
    /// Checks that `ino` is a directory that can be listed. Listings need no handle (see the
    /// module documentation); the kernel is told to skip OPENDIR when it can.
    pub fn opendir(&self, ino: u64) -> Result<()> {
        self.touch();
        if super::is_control(ino) {
            return self.ctl_list(ino).map(|_| ());
        }
        self.dir_node(ino).map(|_| ())
    }

    /// Every entry from `offset` on, each with the offset of the entry after it.
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<(u64, DirEntry)>> {
        let mut out = Vec::new();
        self.readdir_inner(ino, offset, |next, e| {
            out.push((next, e.clone()));
            true
        })
        .1?;
        Ok(out)
    }

    /// Hands the entries from `offset` on to `emit`, each with the offset of the entry after
    /// it, until `emit` refuses one (the reply is full: that entry is where the next request
    /// starts). An error before the first entry is returned; after it, the listing stops there
    /// (an empty reply would tell the kernel the listing ended).
    pub fn readdir_with(
        &self,
        ino: u64,
        offset: u64,
        emit: impl FnMut(u64, &DirEntry) -> bool,
    ) -> Result<()> {
        error_before_first(self.readdir_inner(ino, offset, emit))
    }

    /// Entries given to `emit`, and how the listing ended.
    fn readdir_inner(
        &self,
        ino: u64,
        offset: u64,
        mut emit: impl FnMut(u64, &DirEntry) -> bool,
    ) -> (usize, Result<()>) {
        self.touch();
        if super::is_control(ino) {
            let all = match self.ctl_list(ino) {
                Ok(a) => a,
                Err(e) => return (0, Err(e)),
            };
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(all.len());
            let mut given = 0;
            for (i, e) in all.iter().enumerate().skip(start) {
                if !emit(i as u64 + 1, e) {
                    break;
                }
                given += 1;
            }
            return (given, Ok(()));
        }
        let dir = match self.dir_node(ino) {
            Ok(d) => d,
            Err(e) => return (0, Err(e)),
        };
        let mut listed = Listed::default();
        let mut given = 0usize;
        let r = self.stream_dir(&dir, offset, |next, e| {
            if !emit(next, &e) {
                return Ok(false);
            }
            given += 1;
            let warm = e.kind == Kind::Dir
                && self
                    .inodes
                    .get(e.ino)
                    .is_ok_and(|n| n.entries_recently_read());
            listed.add(e.ino, e.kind, e.cipher_name, warm);
            Ok(true)
        });
        self.prefetch
            .listed(&dir, offset == 0, listed, &self.control);
        (given, r)
    }

    /// Every entry from `offset` on with its attributes (see [`Vfs::readdirplus_with`]).
    pub fn readdirplus(&self, ino: u64, offset: u64) -> Result<Vec<PlusEntry>> {
        let mut out = Vec::new();
        self.readdirplus_inner(ino, offset, usize::MAX, |next, e, a| {
            out.push((next, e.clone(), *a));
            true
        })
        .1?;
        Ok(out)
    }

    /// Like [`Vfs::readdir_with`], with each entry's attributes (`.` and `..` only with
    /// placeholders: [`Attr::placeholder_dir`]), and at most `limit` entries other than `.` and
    /// `..`. Every entry but `.` and `..` that `emit` takes counts one
    /// lookup (the kernel takes them as looked up). Entries gone since they were read are left
    /// out. An entry that cannot be opened for a reason other than being gone (EMFILE: every
    /// inode the kernel holds costs a descriptor) ends the listing there, or fails it if it is
    /// the first: a listing never leaves out an entry that exists.
    pub fn readdirplus_with(
        &self,
        ino: u64,
        offset: u64,
        limit: usize,
        emit: impl FnMut(u64, &DirEntry, &Attr) -> bool,
    ) -> Result<()> {
        error_before_first(self.readdirplus_inner(ino, offset, limit, emit))
    }

    fn readdirplus_inner(
        &self,
        ino: u64,
        offset: u64,
        limit: usize,
        mut emit: impl FnMut(u64, &DirEntry, &Attr) -> bool,
    ) -> (usize, Result<()>) {
        if super::is_control(ino) {
            return self.readdir_inner(ino, offset, |next, e| match self.ctl_entry_attr(e) {
                Some(a) => emit(next, e, &a),
                None => true,
            });
        }
        self.touch();
        let dir = match self.dir_node(ino) {
            Ok(d) => d,
            Err(e) => return (0, Err(e)),
        };
        let mut listed = Listed::default();
        let (mut given, mut named) = (0usize, 0usize);
        let r = self.stream_dir(&dir, offset, |next, e| {
            if e.cipher_name.is_empty() {
                // The kernel passes over the attributes of `.` and `..` (fuse_direntplus_link
                // returns before reading them): no stat for them.
                if !emit(next, &e, &Attr::placeholder_dir(e.ino)) {
                    return Ok(false);
                }
                given += 1;
                return Ok(true);
            }
            if named >= limit {
                return Ok(false);
            }
            let closed = self.writers_closed.load(Ordering::SeqCst);
            let (node, attr) = match self.intern_found(&dir, &e.cipher_name, &e.name) {
                Ok(found) => found,
                // Gone since it was read: leave it out.
                Err(VfsError::Sys(Errno::NOENT)) => return Ok(true),
                Err(err) => return Err(err),
            };
            // Open for writing now, or closed by its last writer since the stat began (its
            // size may be from before the last write-back: found by a review).
            let size_may_lag = attr.kind == Kind::File
                && (self
                    .open_files
                    .get(&attr.ino)
                    .is_some_and(|f| f.0.writable_now())
                    || self.writers_closed.load(Ordering::SeqCst) != closed);
            let e = DirEntry {
                ino: attr.ino,
                size_may_lag,
                ..e
            };
            if !emit(next, &e, &attr) {
                // The kernel did not take it: give its lookup back.
                self.forget(attr.ino, 1);
                return Ok(false);
            }
            given += 1;
            named += 1;
            let warm = e.kind == Kind::Dir && node.entries_recently_read();
            listed.add(e.ino, e.kind, e.cipher_name, warm);
            Ok(true)
        });
        self.prefetch
            .listed(&dir, offset == 0, listed, &self.control);
        (given, r)
    }

    /// Hands the entries of `dir` from `offset` on to `take` with the offset of the entry after
    /// each, until `take` returns `Ok(false)` or an error (that entry is not consumed: a later
    /// request for its offset starts with it) or the directory ends.
    ///
    /// Offsets: `.` is at 0 and `..` at 1 (they come first, whatever order the backing file
    /// system keeps them in: ext4 lists a one-block directory in hash order); 2 is the start of
    /// the backing listing, whose own `.` and `..` are passed over; any other offset is the
    /// backing file system's own offset of an entry (`d_off`, stable across opens as `telldir`
    /// cookies are; ext4, XFS, btrfs and tmpfs never give 1 or 2 to an entry after `..`).
    fn stream_dir(
        &self,
        dir: &Arc<Node>,
        offset: u64,
        mut take: impl FnMut(u64, DirEntry) -> Result<bool>,
    ) -> Result<()> {
        dir.note_entries_read();
        let mut pos = offset;
        if pos == 0 {
            if !take(1, dot(dir.ino, "."))? {
                return Ok(());
            }
            pos = 1;
        }
        if pos == 1 {
            let parent = if dir.ino == ROOT_INO {
                ROOT_INO
            } else {
                self.inodes
                    .map_ino(rustix::fs::statat(&dir.fd, "..", AtFlags::empty())?.st_ino)
            };
            if !take(LISTING_START, dot(parent, ".."))? {
                return Ok(());
            }
            pos = LISTING_START;
        }
        let mut cur = match self.dir_cursors.take(dir, pos) {
            Some(c) => c,
            None => {
                #[cfg(test)]
                self.dir_cursors
                    .opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Cursor::open(dir, pos, self.noatime())?
            }
        };
        let dir_id = self.dir_id_with(dir, Some(&cur.fd))?;
        let at_root = dir.ino == ROOT_INO;
        // Where the kernel goes on from: after the last entry it took.
        let mut resume = pos;
        // Whether this request gave the kernel any entry (`.` and `..` included).
        let mut gave = pos != offset;
        loop {
            if !cur.fill()? {
                if gave {
                    // The end, reached in a request that gave entries: the kernel asks once
                    // more (only an empty reply ends a listing), and the kept cursor answers
                    // that without opening, seeking and reading the directory again.
                    cur.at = resume;
                    self.dir_cursors.put(cur);
                }
                return Ok(());
            }
            let raw = &cur.pending[0];
            let next = raw.next;
            if let Some(e) = self.decode_entry(dir, &cur.fd, &dir_id, at_root, raw)? {
                if !take(next, e)? {
                    // Kept for the request that goes on from `resume`: the entries passed
                    // over since then are passed over again in any listing.
                    cur.at = resume;
                    self.dir_cursors.put(cur);
                    return Ok(());
                }
                resume = next;
                gave = true;
            }
            cur.advance();
        }
    }

    /// The id a new name in `dir` is encrypted under. The id is read from the copy in the
    /// directory's xattr; where `kmsfs.dirid` holds another one (checked once per directory,
    /// at its first new name: a read of the file), the names already there decide, as a listing
    /// and fsck do: the first one that decrypts under either id. A name made under a damaged
    /// copy would be lost once the directory turns to the file's id (found by a review: a
    /// create before any listing used the damaged copy). With nothing to decide by (no name
    /// decrypts), the copy stays: the new name is then the evidence fsck keeps it by.
    pub(super) fn id_for_new_name(&self, dir: &Arc<Node>) -> Result<crate::format::DirId> {
        let id = self.dir_id(dir)?;
        if self.names.plaintext() {
            return Ok(id);
        }
        if let Some(switched) = dir.dir_id_switched.get() {
            return Ok(*switched);
        }
        let confirmed = dir
            .copy_confirmed
            .load(std::sync::atomic::Ordering::Relaxed);
        if confirmed || matches!(dir.dir_id_file.get(), Some(None)) {
            return Ok(id);
        }
        // Read as a listing reads (access time left alone).
        let mut cur = Cursor::open(dir, LISTING_START, true)?;
        let differs = dir.dir_id_file.get_or_init(|| {
            let _gap = self.dirid_gap.read().unwrap_or_else(|p| p.into_inner());
            super::read_dirid_file(&cur.fd).filter(|f| *f != id)
        });
        if differs.is_none() {
            return Ok(id);
        }
        let at_root = dir.ino == ROOT_INO;
        while cur.fill()? {
            let Some(raw) = cur.pending.front() else {
                break;
            };
            // Switches the directory to the file's id when the name decrypts only under it.
            if self
                .decode_entry(dir, &cur.fd, &id, at_root, raw)?
                .is_some()
            {
                let Some(switched) = dir.dir_id_switched.get() else {
                    dir.copy_confirmed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    return Ok(id);
                };
                return Ok(*switched);
            }
            cur.advance();
        }
        // Nothing decided (no name decrypts): looked at again at the next new name.
        Ok(id)
    }

    /// The plaintext entry for one backing entry (`None`: not shown — internal files, names
    /// that do not decrypt, entries gone since they were read).
    fn decode_entry(
        &self,
        dir: &Node,
        fd: &OwnedFd,
        dir_id: &crate::format::DirId,
        at_root: bool,
        raw: &RawEntry,
    ) -> Result<Option<DirEntry>> {
        let name = raw.name.as_slice();
        if name == b"." || name == b".." {
            return Ok(None);
        }
        let (long, enc) = match self.names.classify(name, at_root) {
            EntryKind::Internal => return Ok(None),
            EntryKind::Long => {
                let mut side = name.to_vec();
                side.extend_from_slice(LONG_NAME_SUFFIX.as_bytes());
                (true, read_side_file(fd, OsStr::from_bytes(&side))?)
            }
            EntryKind::Name(n) => (false, Some(n.to_vec())),
        };
        let decrypt = |id: &crate::format::DirId| match &enc {
            Some(enc) if long => self.names.decrypt_long(id, name, enc),
            Some(enc) => self.names.decrypt(id, enc),
            None => Err(crate::names::NameError::Undecryptable),
        };
        // Under the file's id when the copy read first is the damaged one.
        let plain = decrypt(dir_id).or_else(|e| {
            match self.dir_id_by_file(dir, fd, dir_id, |id| decrypt(id).is_ok()) {
                Some(id) => decrypt(&id),
                None => Err(e),
            }
        });
        let Ok(plain) = plain else {
            tracing::warn!(dir = %self.label(dir), entry = %String::from_utf8_lossy(name), "skipping entry whose name does not decrypt (modified or moved here)");
            return Ok(None);
        };
        let kind = match raw.kind {
            FileType::Unknown => {
                match rustix::fs::statat(fd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => Kind::from_mode(st.st_mode),
                    Err(_) => return Ok(None),
                }
            }
            ft => Kind::from_mode(ft.as_raw_mode()),
        };
        Ok(Some(DirEntry {
            ino: self.inodes.map_ino(raw.ino),
            kind,
            name: OsString::from(OsStr::from_bytes(&plain)),
            cipher_name: OsStr::from_bytes(name).to_os_string(),
            size_may_lag: false,
        }))
    }

    /// The whole decrypted listing of a directory, `.` and `..` included.
    pub fn list_dir(&self, ino: u64) -> Result<Vec<DirEntry>> {
        if super::is_control(ino) {
            return self.ctl_list(ino);
        }
        Ok(self.readdir(ino, 0)?.into_iter().map(|(_, e)| e).collect())
    }
}

/// The long name kept beside a long entry (`None`: there is none). Any other error fails the
/// listing: skipping the entry would hide a file that exists (and the kernel would keep that
/// listing in its cache).
fn read_side_file(dir: &OwnedFd, name: &OsStr) -> Result<Option<Vec<u8>>> {
    let fd = match rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut buf)?;
    Ok(Some(buf))
}

/// A listing's outcome for the kernel: an error only if no entry was given (after one, the
/// listing stops there; an empty reply would mean its end).
fn error_before_first((given, r): (usize, Result<()>)) -> Result<()> {
    match r {
        Err(e) if given == 0 => Err(e),
        _ => Ok(()),
    }
}

/// The offset after `..`: where the backing listing starts.
const LISTING_START: u64 = 2;

fn dot(ino: u64, name: &str) -> DirEntry {
    DirEntry {
        ino,
        kind: Kind::Dir,
        name: name.into(),
        cipher_name: OsString::new(),
        size_may_lag: false,
    }
}

/// One backing directory entry, as read.
#[derive(Debug)]
struct RawEntry {
    ino: u64,
    /// The backing offset of the entry after it.
    next: u64,
    kind: FileType,
    name: Vec<u8>,
}

/// An open backing directory positioned at an offset, with the entries read but not served.
pub(super) struct Cursor {
    dir: Weak<Node>,
    /// The directory's count of changes before anything was read (see `Node::entry_changes`).
    changes: u64,
    /// The offset the kernel continues from, set when the cursor is kept (see `stream_dir`).
    at: u64,
    fd: OwnedFd,
    pending: VecDeque<RawEntry>,
    eof: bool,
}

impl Cursor {
    /// A cursor at `offset` (see [`Vfs::stream_dir`]; [`LISTING_START`]: the beginning).
    /// `noatime`: listing leaves the directory's access time alone (where the daemon may).
    fn open(dir: &Arc<Node>, offset: u64, noatime: bool) -> Result<Cursor> {
        let changes = dir.entry_changes();
        let fd = match noatime {
            true => match dir.open_dir(OFlags::NOATIME) {
                Err(Errno::PERM) => dir.open_dir(OFlags::empty()),
                r => r,
            },
            false => dir.open_dir(OFlags::empty()),
        }?;
        if offset != LISTING_START {
            let off = i64::try_from(offset).map_err(|_| Errno::INVAL)?;
            rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(off as u64))?;
        }
        Ok(Cursor {
            dir: Arc::downgrade(dir),
            changes,
            at: offset,
            fd,
            pending: VecDeque::new(),
            eof: false,
        })
    }

    /// Whether an entry is pending, reading the backing directory when none is.
    fn fill(&mut self) -> Result<bool> {
        if self.pending.is_empty() && !self.eof {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); READ_BYTES];
            let mut rd = RawDir::new(&self.fd, &mut buf);
            loop {
                match rd.next() {
                    None => {
                        self.eof = true;
                        break;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(e)) => self.pending.push_back(RawEntry {
                        ino: e.ino(),
                        next: e.next_entry_cookie(),
                        kind: e.file_type(),
                        name: e.file_name().to_bytes().to_vec(),
                    }),
                }
                if rd.is_buffer_empty() {
                    break;
                }
            }
        }
        Ok(!self.pending.is_empty())
    }

    fn advance(&mut self) {
        self.pending.pop_front();
    }
}

/// Bytes of backing entries read at a time.
const READ_BYTES: usize = 8192;
/// Listings in progress whose open backing directory is kept between requests.
const CURSORS_MAX: usize = 16;

/// Backing directories left open where a listing stopped, so that the request for the next
/// part continues there instead of opening and seeking again (a listing of a large directory
/// comes in many requests), or where it reached the end in a request that gave entries (the
/// kernel asks once more, and only an empty reply ends a listing). Looked up by directory and offset; the least recently put is
/// closed first.
#[derive(Default)]
pub(super) struct Cursors {
    kept: Mutex<VecDeque<Cursor>>,
    /// Backing directories opened for listings (tests check that a kept cursor was used).
    #[cfg(test)]
    pub(super) opened: std::sync::atomic::AtomicU64,
}

impl Cursors {
    /// A cursor of `dir` at `offset` read after the directory's last change (a cursor read
    /// before it could hold removed entries and miss new ones; those are closed).
    fn take(&self, dir: &Arc<Node>, offset: u64) -> Option<Cursor> {
        let mut q = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let me = Arc::downgrade(dir);
        let now = dir.entry_changes();
        q.retain(|c| !Weak::ptr_eq(&c.dir, &me) || c.changes == now);
        let i = q
            .iter()
            .position(|c| c.at == offset && Weak::ptr_eq(&c.dir, &me))?;
        q.remove(i)
    }

    fn put(&self, c: Cursor) {
        let mut q = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= CURSORS_MAX {
            q.pop_front();
        }
        q.push_back(c);
    }
}
