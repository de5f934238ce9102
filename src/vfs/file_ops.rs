//! Operations on regular files: create, open, read, write, release, fsync, fallocate.

use std::ffi::OsStr;
use std::fs::File;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use super::access_ops::HandleAudit;
use super::backing::Backing;
use super::control_ops::ctl_err;
use super::inode::{Node, NodeName};
use super::open_file::{FileState, OpenFile, Scratch, read_header};
use super::{Attr, Caller, Handle, Kind, Result, Vfs, VfsError};
use crate::content::FileCipher;
use crate::format::header::FLAG_SPARSE;

/// Where the data of a write comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFrom {
    /// The caller's own `write(2)` (without the writeback cache, or `O_DIRECT`): it waits for
    /// the result.
    Caller,
    /// The kernel's page cache: pages dirtied earlier, by `write(2)` with the writeback cache
    /// or through a shared `mmap` in either mode. `kernel_times`: the kernel keeps the file's
    /// modification time and sends it itself (the writeback cache is on; see `kept_mtime`).
    /// Without it nobody sends a time for an `mmap` write, and the backing file's, which this
    /// write sets, is the file's.
    PageCache { kernel_times: bool },
}

/// The parts of open(2)'s flags the model acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// Opened for reading (O_RDONLY or O_RDWR).
    pub read: bool,
    pub write: bool,
    pub truncate: bool,
    pub append: bool,
    /// O_NOATIME: reads through it leave the access time alone (the kernel checked that the
    /// caller owns the file or has CAP_FOWNER).
    pub noatime: bool,
}

impl OpenOptions {
    /// Reads through it are accesses (they set the access time by the backing file system's
    /// rule): opened for reading, without O_NOATIME.
    pub fn accesses(&self) -> bool {
        self.read && !self.noatime
    }

    pub fn from_flags(flags: i32) -> Self {
        let acc = flags & libc::O_ACCMODE;
        OpenOptions {
            read: acc == libc::O_RDONLY || acc == libc::O_RDWR,
            write: acc == libc::O_WRONLY || acc == libc::O_RDWR,
            truncate: flags & libc::O_TRUNC != 0,
            append: flags & libc::O_APPEND != 0,
            noatime: flags & libc::O_NOATIME != 0,
        }
    }
}

/// FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
const FALLOC_KEEP_SIZE: i32 = 0x01;
const FALLOC_PUNCH_HOLE: i32 = 0x02;
const FALLOC_ZERO_RANGE: i32 = 0x10;

impl Vfs {
    /// The shared content state of `node`, opened (header read, DEK unwrapped) on first use.
    /// Counts one reference; balance with [`Vfs::put_open_file`]. Also the entry the backing
    /// file was just opened under, if it was (see [`Backing::named`]). `reading`: an open that
    /// counts as an access (for reading, without O_NOATIME: [`OpenOptions::accesses`]).
    pub(super) fn get_open_file(
        &self,
        node: &Node,
        want_write: bool,
        reading: bool,
    ) -> Result<(Arc<OpenFile>, Option<Arc<NodeName>>)> {
        use dashmap::mapref::entry::Entry;
        match self.open_files.entry(node.ino) {
            Entry::Occupied(mut e) => {
                let of = e.get().0.clone();
                // The key may have been disabled, retired or destroyed since the first open.
                self.km.check_usable(&of.read_state().header)?;
                if want_write {
                    let mut st = of.write_state();
                    if !st.writable {
                        let file = self.reopen_backing(node, &of, true)?;
                        of.set_fd(&file);
                        st.file = file;
                        st.writable = true;
                    }
                }
                e.get_mut().1 += 1;
                Ok((of, None))
            }
            Entry::Vacant(v) => {
                // Access times: the kernel keeps none for FUSE, and reads it serves from its
                // page cache never reach us, so an open for reading stands for the read: its
                // header read sets the atime by the backing file system's rule (relatime),
                // as the daemon's reads of the content do later. An open for writing only, a
                // truncate, or any open under `noatime` reads the header, and whatever a
                // write or truncate must read, without setting it, until a caller reads
                // (`OpenFile::reading`).
                let quiet = !reading && !self.noatime();
                let Backing {
                    file,
                    len: cipher_len,
                    named,
                } = self.open_backing_with(node, want_write, self.noatime() || !reading)?;
                let header =
                    read_header(&file).map_err(|e| self.damaged(node, format!("header: {e}")))?;
                let dek = self.km.unwrap_dek(&header).map_err(|e| {
                    if let crate::keymgr::KeyError::UnwrapFailed(_) = e {
                        tracing::error!(path = %self.label(node), "integrity failure: {e}");
                    } else {
                        tracing::warn!(path = %self.label(node), "cannot open: {e}");
                    }
                    VfsError::Key(e)
                })?;
                let cipher = FileCipher::for_header(&dek, &header, self.block_size);
                // Closed with its marker still on, waiting for its data to reach the disk: the
                // marker is this open's now.
                let taken = self.markers.take(node.ino);
                // A size-changing write was interrupted (crash): make the file readable again.
                let mut recover = taken.is_none()
                    && crate::content::pending::is_marked(&file)
                    && !self.read_only_now();
                if recover {
                    let rw = if want_write {
                        None
                    } else {
                        match self.open_backing(node, true) {
                            Ok(b) => Some(b.file),
                            // An immutable cipher file (`chattr +i`) cannot be repaired: it is
                            // read as it is (a torn block fails its authentication).
                            Err(e) if e.errno() == libc::EPERM => {
                                recover = false;
                                None
                            }
                            Err(e) => return Err(e),
                        }
                    };
                    if recover {
                        crate::content::pending::recover(
                            rw.as_ref().unwrap_or(&file),
                            &cipher,
                            self.layout,
                            false,
                        )
                        .map_err(|e| self.damaged(node, format!("interrupted write: {e}")))?;
                    }
                }
                // Recovery changes the size.
                let cipher_len = if recover {
                    file.metadata()?.len()
                } else {
                    cipher_len
                };
                let size = self.layout.plain_size(cipher_len).ok_or_else(|| {
                    self.damaged(
                        node,
                        format!("cipher size {cipher_len} is impossible (truncated or padded)"),
                    )
                })?;
                let of = Arc::new(OpenFile::new(
                    node.ino,
                    self.layout,
                    cipher,
                    FileState {
                        file,
                        writable: want_write,
                        header,
                        size,
                        marked: taken.map(|t| t.first),
                        marked_gap: taken.map_or(0, |t| t.gap),
                        marked_since: taken.and_then(|t| t.since),
                        behind: Default::default(),
                        holes_seen: Default::default(),
                        recount: Default::default(),
                        no_holes: size == 0,
                        reserved: 0,
                    },
                ));
                if quiet {
                    of.set_quiet();
                }
                v.insert((of.clone(), 1));
                Ok((of, named))
            }
        }
    }

    /// Another descriptor of the backing file of open file `of`, read-write or read-only, with
    /// the access-time rule the file was opened under (see `get_open_file`).
    pub(super) fn reopen_backing(&self, node: &Node, of: &OpenFile, write: bool) -> Result<File> {
        Ok(self
            .open_backing_with(node, write, self.noatime() || of.is_quiet())?
            .file)
    }

    pub(super) fn put_open_file(&self, ino: u64) {
        use dashmap::mapref::entry::Entry;
        if let Entry::Occupied(mut e) = self.open_files.entry(ino) {
            e.get_mut().1 -= 1;
            if e.get().1 == 0 {
                if e.get().0.writable_now() {
                    // Before the state goes: a listing that no longer finds it sees this.
                    self.writers_closed
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                // Counts of holes settled while no other open can make a second state for the
                // file (it would read blocks being rewritten), and before the time goes back.
                e.get().0.settle();
                // The kernel's modification time back on the backing file while attributes
                // still report it (see `kept_mtime`); under the entry, so that of two last
                // releases at once exactly one does it (lock order: entry, kept time, file
                // state, as in `attr_of`).
                e.get().0.restore_mtime();
                // Under the entry too: an open of the file now waits, then takes the marker.
                e.get().0.hand_over_marker(&self.markers);
                let (f, _) = e.remove();
                if f.write_failed() {
                    let mut v = self.stale_caches.lock().unwrap_or_else(|p| p.into_inner());
                    v.push(ino);
                    self.stale_pending
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let sent = f.written_behind();
                self.control
                    .metrics
                    .written_behind_bytes
                    .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn add_handle(
        &self,
        ino: u64,
        file: Arc<OpenFile>,
        o: &OpenOptions,
        audit: Option<HandleAudit>,
    ) -> u64 {
        let fh = self.new_fh();
        let wb_seen = std::sync::atomic::AtomicU64::new(file.writeback_failures().0);
        self.handles.insert(
            fh,
            Handle {
                ino,
                file,
                append: o.append && !self.opts.kernel_appends,
                reads: o.read,
                accesses: o.accesses(),
                writes: o.write,
                overwrites: o.write && !o.append,
                wb_seen,
                audit,
            },
        );
        fh
    }

    /// Opens for in-process use (tests, benches, tools): no policy decision, no audit record.
    /// The mount uses [`Vfs::open_as`].
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        self.open_inner(ino, flags, None)
    }

    /// Opens for a calling process: the key policy must allow kms:Decrypt with the access mode,
    /// and the attempt is audited.
    pub fn open_as(&self, ino: u64, flags: i32, caller: &Caller) -> Result<u64> {
        self.open_inner(ino, flags, Some(caller))
    }

    fn open_inner(&self, ino: u64, flags: i32, caller: Option<&Caller>) -> Result<u64> {
        self.touch();
        if super::is_control(ino) {
            return self.ctl_open(ino, flags, caller);
        }
        let o = OpenOptions::from_flags(flags);
        if o.write || o.truncate {
            self.check_writable()?;
        }
        let node = self.node(ino)?;
        match node.kind {
            Kind::File => {}
            Kind::Dir => return Err(Errno::ISDIR.into()),
            _ => return Err(Errno::INVAL.into()),
        }
        // Before this open's own header read, so the read-ahead overlaps it.
        self.prefetch.opened(node.parent(), ino, &self.control);
        // An append-only file opens for writing only with O_APPEND, never truncating.
        let opened = if (o.write && !o.append) || o.truncate {
            self.refuse_append_only(&node)
        } else {
            Ok(())
        }
        .and_then(|()| self.get_open_file(&node, o.write || o.truncate, o.accesses()));
        let (of, named) = match opened {
            Ok(r) => r,
            Err(e) => {
                if let Some(c) = caller {
                    self.audit_refused(c, "Open", self.plain_path(&node), flags, &e);
                }
                return Err(e);
            }
        };
        let audit = match caller {
            None => None,
            Some(c) => {
                let header = of.read_state().header.clone();
                // Opened under the entry the node remembers: that entry's path, checked by the
                // open itself.
                let path = named
                    .and_then(|n| self.plain_entry_path(&n).ok())
                    .or_else(|| self.plain_path(&node));
                match self.authorize(c, "Open", "kms:Decrypt", &header, path, flags) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        self.put_open_file(ino);
                        return Err(e);
                    }
                }
            }
        };
        if o.truncate
            && let Err(e) = of.truncate(0)
        {
            if let Some(a) = &audit {
                self.audit_failed(a, "Open", flags, &e);
            }
            self.put_open_file(ino);
            return Err(e);
        }
        // An open for reading counts as a read (of a file already open for writing only: from
        // now on the backing file's access time follows reads), once allowed; not with
        // O_NOATIME.
        if o.accesses() {
            of.reading();
        }
        Ok(self.add_handle(ino, of, &o, audit))
    }

    /// Creates and opens a regular file. Without O_EXCL an existing file is opened instead.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        caller: &Caller,
    ) -> Result<(Attr, u64)> {
        self.touch();
        self.refuse_control(parent, name)?;
        self.check_writable()?;
        let dir = self.dir_node(parent)?;
        let cn = self.new_cipher_name(&dir, name)?;
        let mut made = self.create_file_entry(&dir, name, &cn, mode, flags, caller);
        // Short of space while removed files are still being let go (see `unlinked`): once
        // more when they are, as a write does.
        if let Err(e) = &made
            && matches!(e.errno(), libc::ENOSPC | libc::EDQUOT)
            && self.wait_for_removed()
        {
            made = self.create_file_entry(&dir, name, &cn, mode, flags, caller);
        }
        let (node, attr, of, audit) = match made {
            Err(VfsError::Sys(Errno::EXIST)) if flags & libc::O_EXCL == 0 => {
                let ino = self.lookup(parent, name)?.ino;
                let r = self
                    .open_as(ino, flags, caller)
                    .and_then(|fh| match self.getattr(ino) {
                        Ok(attr) => Ok((attr, fh)),
                        Err(e) => {
                            let _ = self.release(fh);
                            Err(e)
                        }
                    });
                // The kernel takes the entry only with a successful reply: give the lookup back.
                if r.is_err() {
                    self.forget(ino, 1);
                }
                return r;
            }
            r => r?,
        };
        let o = OpenOptions::from_flags(flags);
        if o.noatime {
            of.leave_access_times();
        }
        self.open_files.insert(node.ino, (of.clone(), 1));
        Ok((attr, self.add_handle(node.ino, of, &o, Some(audit))))
    }

    /// Creates the backing file with its header and an empty final block.
    fn create_file_entry(
        &self,
        dir: &Node,
        name: &OsStr,
        cn: &crate::names::CipherName,
        mode: u32,
        flags: i32,
        caller: &Caller,
    ) -> Result<(Arc<Node>, Attr, Arc<OpenFile>, HandleAudit)> {
        // The key and the policy decision come first: a file is never created under a key that
        // cannot be used or by a caller the key's policy does not allow.
        // With key rules the path decides the key: no path, no file (never the default key by
        // accident). Without rules it is only for the audit record and path conditions.
        let path = match self.path_for_rules(dir, name)? {
            Some(p) => Some(p),
            None if self.audit.get().is_some() => self
                .plain_dir_path(dir)
                .ok()
                .map(|d| format!("{}/{}", d.trim_end_matches('/'), name.to_string_lossy())),
            None => None,
        };
        let hflags = if self.opts.sparse { FLAG_SPARSE } else { 0 };
        let (header, dek) = match self.km.new_file(path.as_deref(), hflags) {
            Ok(k) => k,
            Err(e) => {
                let destroyed = matches!(
                    e,
                    crate::keymgr::KeyError::NotUsable(_, crate::keymgr::KeyState::Destroyed)
                );
                let e = VfsError::Key(e);
                self.audit_refused(caller, "Create", path, flags, &e);
                // A rule naming a destroyed key: refused (EACCES, as under a key pending
                // deletion), not damage; its files stay EIO.
                if destroyed {
                    return Err(VfsError::Denied(format!("{e} (the key rule names it)")));
                }
                return Err(e);
            }
        };
        let audit = self.authorize(
            caller,
            "Create",
            "kms:GenerateDataKey",
            &header,
            path,
            flags,
        )?;
        match self.make_file_entry(dir, name, cn, mode, caller, header, &dek, hflags) {
            Ok((node, attr, of)) => Ok((node, attr, of, audit)),
            Err(e) => {
                self.audit_failed(&audit, "Create", flags, &e);
                Err(e)
            }
        }
    }

    /// [`Vfs::create_file_entry`] once the key policy has allowed it: the backing file, named
    /// once its header is written.
    #[allow(clippy::too_many_arguments)]
    fn make_file_entry(
        &self,
        dir: &Node,
        name: &OsStr,
        cn: &crate::names::CipherName,
        mode: u32,
        caller: &Caller,
        header: crate::format::header::FileHeader,
        dek: &crate::crypto::Key256,
        hflags: u16,
    ) -> Result<(Arc<Node>, Attr, Arc<OpenFile>)> {
        let inh = self.inherit(dir, libc::S_IFREG | (mode & 0o7777), caller.umask)?;
        let mode = inh.mode;
        self.create_entry(dir, cn, || {
            let cipher = FileCipher::new(dek, header.file_id, self.block_size)
                .with_sparse(hflags & FLAG_SPARSE != 0);
            let mut fin = Vec::new();
            cipher.encrypt_blocks(0, &[], 0, 0, &mut fin);
            let mut bytes = header.encode().to_vec();
            bytes.extend_from_slice(&fin);
            // Crash-safe: the file gets its name only once its header is written (an unnamed
            // O_TMPFILE, then linkat), so a crash never leaves an empty, unreadable cipher file.
            crate::fault::check("create")?;
            let (file, linked) = match rustix::fs::openat(
                &dir.fd,
                ".",
                OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
                Mode::from(mode & 0o7777),
            ) {
                Ok(fd) => (File::from(fd), false),
                // No O_TMPFILE on the backing file system: create in place.
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => (
                    File::from(rustix::fs::openat(
                        &dir.fd,
                        &cn.entry,
                        OFlags::RDWR
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::CLOEXEC
                            | OFlags::NOFOLLOW,
                        Mode::from(mode & 0o7777),
                    )?),
                    true,
                ),
                Err(e) => return Err(e.into()),
            };
            let mut named = linked;
            let init = |named: &mut bool| -> Result<(Arc<Node>, Attr)> {
                self.set_owner(dir, &file, caller)?;
                self.write_inherited(&file, Kind::File, &inh)?;
                crate::fault::write_all_at(&file, &bytes, 0)?;
                if !*named {
                    crate::fault::check("link")?;
                    super::backing::link_unnamed(&file, &dir.fd, &cn.entry)?;
                    *named = true;
                }
                self.intern_child(dir, &cn.entry, name)
            };
            match init(&mut named) {
                Ok((node, attr)) => {
                    // The descriptor itself, not a duplicate (F_DUPFD + close: ~4 µs a create).
                    let st = FileState {
                        file,
                        writable: true,
                        header,
                        size: 0,
                        marked: None,
                        marked_gap: 0,
                        marked_since: None,
                        behind: Default::default(),
                        holes_seen: Default::default(),
                        recount: Default::default(),
                        no_holes: true,
                        reserved: 0,
                    };
                    let of = Arc::new(OpenFile::new(node.ino, self.layout, cipher, st));
                    Ok((node, attr, of))
                }
                Err(e) => {
                    if named {
                        let _ =
                            rustix::fs::unlinkat(&dir.fd, &cn.entry, rustix::fs::AtFlags::empty());
                    }
                    Err(e)
                }
            }
        })
    }

    pub(super) fn handle_file(&self, fh: u64) -> Result<(Arc<OpenFile>, bool)> {
        let h = self.handles.get(&fh).ok_or(VfsError::BadHandle(fh))?;
        Ok((h.file.clone(), h.append))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.read_with(fh, offset, size, |d| d.to_vec())
    }

    /// Reads, handing the plaintext to `reply` where it was decrypted (the thread's read
    /// buffer: no copy, no allocation per read); returns what `reply` returns.
    pub fn read_with<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        self.touch();
        if super::is_control_handle(fh) {
            let d = self.control.read(fh, offset, size).map_err(ctl_err)?;
            return Ok(reply(&d));
        }
        let (f, reads, accesses) = {
            let h = self.handles.get(&fh).ok_or(VfsError::BadHandle(fh))?;
            (h.file.clone(), h.reads, h.accesses)
        };
        if accesses {
            f.reading();
        }
        let mut plain = Scratch::plain();
        let r = f.read_into(offset, size, &mut plain).inspect_err(|e| {
            if e.is_integrity() {
                self.audit_integrity(None, &e.to_string());
            }
        })?;
        if reads {
            self.count(fh, |a| &a.read, r.len());
        }
        Ok(reply(&plain.as_slice()[r]))
    }

    /// Writes and returns the number of bytes written.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        self.write_from(fh, offset, data, WriteFrom::Caller)
    }

    /// [`Vfs::write`] of data from `from`. From the page cache, whoever wrote it was told it
    /// succeeded already: a failure is then reported again through [`Vfs::take_write_error`].
    pub fn write_from(&self, fh: u64, offset: u64, data: &[u8], from: WriteFrom) -> Result<u32> {
        self.touch();
        if super::is_control_handle(fh) {
            return self.control.write(fh, offset, data).map_err(ctl_err);
        }
        self.check_writable()?;
        let (f, append) = self.handle_file(fh)?;
        let cached = from != WriteFrom::Caller;
        if from == (WriteFrom::PageCache { kernel_times: true }) {
            f.kept_mtime.before_cached_write(|| f.backing_mtime());
        }
        let guarded = !append && self.append_files.load(std::sync::atomic::Ordering::Relaxed);
        let attempt = || {
            if !guarded {
                return f.write(offset, data, append, cached);
            }
            match self.keep_stored(fh, &f, offset, data)? {
                None => f.write(offset, data, append, cached),
                // An append-only file's stored bytes would change: what lies past them is
                // stored all the same (with the writeback cache the kernel sends whole pages,
                // and appends share them with the refused bytes), then the write is refused
                // as failed (its pages are dropped from the kernel's cache at the close).
                Some(keep) => {
                    if keep < data.len() {
                        f.write(offset + keep as u64, &data[keep..], false, cached)?;
                    }
                    Err(Errno::PERM.into())
                }
            }
        };
        let mut r = attempt();
        // Short of space while removed files are still being let go: once more when they are.
        if let Err(e) = &r
            && matches!(e.errno(), libc::ENOSPC | libc::EDQUOT)
            && self.wait_for_removed()
        {
            r = attempt();
            if r.is_ok() && cached {
                f.writeback_retried();
            }
        }
        if let Err(e) = r {
            if cached {
                f.note_writeback_failed(e.errno(), data.len());
            } else {
                f.note_write_failed();
            }
            return Err(e);
        }
        f.kept_mtime.moved();
        self.count(fh, |a| &a.written, data.len());
        Ok(data.len() as u32)
    }

    /// Whether `data` at `offset` would change what the file open as `fh` holds already, if it
    /// is append-only. The kernel does not know the flag (it is kmsfs's): a descriptor that
    /// had O_APPEND taken off by `fcntl(F_SETFL)`, or a write with `RWF_NOAPPEND`, which ext4
    /// refuses on such a file, writes at its offset here; and with the writeback cache the
    /// kernel's flush of the page holding the old end of file rewrites its first part as it
    /// is (allowed: unchanged).
    ///
    /// `None`: `data` may be written whole; `Some(n)`: its first `n` bytes overlap the stored
    /// ones and would change them, only the rest may be written.
    fn keep_stored(
        &self,
        fh: u64,
        f: &OpenFile,
        offset: u64,
        data: &[u8],
    ) -> Result<Option<usize>> {
        // An append changes nothing stored: looked for first, so that appends (most writes
        // at the end of a file) cost no lookup of the flag.
        let size = f.size();
        if offset >= size {
            return Ok(None);
        }
        let Some(ino) = self.handles.get(&fh).map(|h| h.ino) else {
            return Ok(None);
        };
        if !self.append_only(&*self.node(ino)?) {
            return Ok(None);
        }
        let n = (size - offset).min(data.len() as u64) as usize;
        let mut out = super::open_file::Scratch::plain();
        let r = f.read_into(offset, n as u32, &mut out)?;
        if out.as_slice()[r] != data[..n] {
            return Ok(Some(n));
        }
        Ok(None)
    }

    /// A failed write-back of the file open for writing as `fh` since this handle last
    /// reported one (or was opened). With the writeback cache `write(2)` only fills the
    /// kernel's page cache, so a process writing to a full disk would never see ENOSPC from it,
    /// and a loop that writes until it fails (filling a disk) would never end: the kernel asks
    /// for the file's attributes at the next `write(2)` once they are expired (see
    /// `fuse::reclaim`), and that request fails with this error. A handle opened only for
    /// reading, or after the failure, is not told (as `fsync(2)` reports an error only to
    /// descriptors open when it happened).
    pub fn take_write_error(&self, fh: u64) -> Option<VfsError> {
        let h = self.handles.get(&fh)?;
        if !h.writes {
            return None;
        }
        let (n, errno, len) = h.file.writeback_failures();
        if h.wb_seen.swap(n, std::sync::atomic::Ordering::Relaxed) >= n {
            return None;
        }
        // Out of space no more (the writer may have been told at fsync or close, which we do
        // not see, and made room since): the next write would succeed, so it is not failed.
        if matches!(errno, libc::ENOSPC | libc::EDQUOT) && self.backing_free() >= len + (1 << 20) {
            return None;
        }
        Some(VfsError::Sys(Errno::from_raw_os_error(errno)))
    }

    /// Adds to a handle's audited byte counter.
    fn count(
        &self,
        fh: u64,
        which: impl Fn(&HandleAudit) -> &std::sync::atomic::AtomicU64,
        n: usize,
    ) {
        if let Some(h) = self.handles.get(&fh)
            && let Some(a) = &h.audit
        {
            which(a).fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn flush(&self, fh: u64) -> Result<()> {
        if super::is_control_handle(fh) {
            return self.control.flush(fh).map_err(ctl_err);
        }
        // The kernel has written the file's dirty pages before it sends FLUSH, and close(2)
        // waits for the reply: counts of holes are settled (see `FileState::recount`) before
        // the closing process can look (at the last release, a `stat` right after `close`
        // could see the rewrite's time before it is put back).
        let (f, _) = self.handle_file(fh)?;
        f.settle();
        Ok(())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        if super::is_control_handle(fh) {
            // Applied control writes are already persisted.
            return Ok(());
        }
        let (f, _) = self.handle_file(fh)?;
        f.fsync(datasync)
    }

    pub fn release(&self, fh: u64) -> Result<()> {
        self.touch();
        if super::is_control_handle(fh) {
            self.control.release(fh);
            return Ok(());
        }
        let (_, h) = self.handles.remove(&fh).ok_or(VfsError::BadHandle(fh))?;
        if let Some(a) = &h.audit {
            self.audit_close(a);
        }
        self.put_open_file(h.ino);
        Ok(())
    }

    /// fallocate(2): mode 0 extends the file and fills the holes of a sparse file in the range
    /// (stored as encrypted zeros, so it is allocated); KEEP_SIZE only fills the holes; ZERO_RANGE stores encrypted zeros over the
    /// range (allocated zeros, as the call promises), extending the file unless KEEP_SIZE;
    /// PUNCH_HOLE makes the range's whole blocks holes in a sparse file (EOPNOTSUPP in a file
    /// without holes, where every block is stored); range collapsing or inserting are not
    /// supported (EOPNOTSUPP).
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        self.check_writable()?;
        let (f, _) = self.handle_file(fh)?;
        // An append-only file may be allocated, not punched or zeroed (as on ext4).
        if mode & !FALLOC_KEEP_SIZE != 0
            && let Some(ino) = self.handles.get(&fh).map(|h| h.ino)
        {
            self.refuse_append_only(&*self.node(ino)?)?;
        }
        let end = offset
            .checked_add(length)
            .ok_or(VfsError::Invalid("offset + length overflows"))?;
        let r = self.fallocate_file(&f, offset, end, mode);
        f.kept_mtime.moved();
        r
    }

    fn fallocate_file(&self, f: &OpenFile, offset: u64, end: u64, mode: i32) -> Result<()> {
        match mode {
            0 => f.allocate(offset, end, false),
            FALLOC_KEEP_SIZE => f.allocate(offset, end, true),
            FALLOC_ZERO_RANGE => f.zero_range(offset, end, false),
            m if m == FALLOC_ZERO_RANGE | FALLOC_KEEP_SIZE => f.zero_range(offset, end, true),
            m if m == FALLOC_PUNCH_HOLE | FALLOC_KEEP_SIZE => f.punch(offset, end),
            _ => Err(VfsError::NotSupported("fallocate mode")),
        }
    }

    /// Truncates through an existing handle or a temporary open. A truncate by path (no open
    /// handle) from a process is a write to the file: the key policy must allow kms:Decrypt with
    /// access mode `write`, and it is audited as `Truncate`.
    pub(super) fn truncate_ino(
        &self,
        node: &Node,
        fh: Option<u64>,
        size: u64,
        caller: Option<&Caller>,
    ) -> Result<()> {
        self.check_writable()?;
        if node.kind != Kind::File {
            return Err(if node.kind == Kind::Dir {
                Errno::ISDIR
            } else {
                Errno::INVAL
            }
            .into());
        }
        if let Some(fh) = fh
            && let Ok((f, _)) = self.handle_file(fh)
        {
            // Through a handle only if it was opened for writing, as ftruncate(2) (EINVAL):
            // the policy judged its open for what it was opened for. (The kernel sends a
            // handle only for ftruncate, which it refuses on a read-only descriptor; the
            // truncate of open(O_TRUNC) comes without one and is judged below. Found by a
            // review: a read-only handle truncated whenever someone else had the file open
            // for writing.)
            if !self.handles.get(&fh).is_some_and(|h| h.writes) {
                return Err(Errno::INVAL.into());
            }
            let r = f.truncate(size);
            f.kept_mtime.moved();
            return r;
        }
        let of = match self.get_open_file(node, true, false) {
            Ok((of, _)) => of,
            Err(e) => {
                if let Some(c) = caller {
                    self.audit_refused(c, "Truncate", self.plain_path(node), libc::O_WRONLY, &e);
                }
                return Err(e);
            }
        };
        if let Some(c) = caller {
            let header = of.read_state().header.clone();
            let path = self.plain_path(node);
            if let Err(e) =
                self.authorize(c, "Truncate", "kms:Decrypt", &header, path, libc::O_WRONLY)
            {
                self.put_open_file(node.ino);
                return Err(e);
            }
        }
        let r = of.truncate(size);
        of.kept_mtime.moved();
        self.put_open_file(node.ino);
        r
    }
}
