//! The content of one open regular file: plaintext reads, read-modify-write of partial blocks,
//! extension (encrypted zeros, or in a sparse file holes that the next written block counts, so
//! a zeroed block is always detected: `holes`), and truncation. One `OpenFile` per inode, shared by all its handles; the lock makes a writer
//! exclusive, so concurrent writers never interleave inside a block.

use std::cell::Cell;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::error::{Result, VfsError};
use crate::content::FileCipher;
use crate::format::block::BLOCK_OVERHEAD;
use crate::format::header::{FileHeader, HEADER_LEN};
use crate::format::offsets::Layout;

mod holes;

/// Zero-filling (holes, truncate up) proceeds in chunks of this many plaintext bytes.
const ZERO_CHUNK: u64 = 1 << 20;

/// Extensions whose zeros take at least this many cipher bytes are first checked against the
/// backing file system's size.
const ROOM_CHECK_MIN: u64 = 64 << 20;

/// A request thread's buffer, kept between requests so that a read or write neither
/// allocates it nor fills it with zeros first. One for ciphertext (reads and writes) and one
/// for the plaintext a read returns; one larger than [`Scratch::KEEP`] is let go after use.
/// The plaintext buffer keeps the last read's data until the thread's next read, as the freed
/// buffers of before did until reused, and as the kernel's page cache keeps it: file data is
/// not wiped (keys are).
pub struct Scratch {
    key: &'static std::thread::LocalKey<Cell<Vec<u8>>>,
    buf: Vec<u8>,
    len: usize,
}

thread_local! {
    static CIPHER_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
    static PLAIN_BUF: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

impl Scratch {
    /// Larger than any read or write the kernel sends (1 MiB) and its blocks' overhead.
    const KEEP: usize = 4 << 20;

    /// The thread's ciphertext buffer, `len` bytes (a nested use gets a new one).
    fn cipher(len: usize) -> Scratch {
        Scratch::take(&CIPHER_BUF, len)
    }

    /// The thread's plaintext buffer for reads, empty until [`OpenFile::read_into`] fills it.
    pub fn plain() -> Scratch {
        Scratch::take(&PLAIN_BUF, 0)
    }

    fn take(key: &'static std::thread::LocalKey<Cell<Vec<u8>>>, len: usize) -> Scratch {
        let mut s = Scratch {
            key,
            buf: key.take(),
            len: 0,
        };
        s.set_len(len);
        s
    }

    /// Makes it `len` bytes long; what it held stays only where it was already long enough.
    fn set_len(&mut self, len: usize) {
        if self.buf.len() < len {
            self.buf.resize(len, 0);
        }
        self.len = len;
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.buf.len() <= Self::KEEP {
            self.key.set(std::mem::take(&mut self.buf));
        }
    }
}

pub struct FileState {
    pub file: File,
    pub writable: bool,
    pub header: FileHeader,
    /// Plaintext size; authoritative while the file is open.
    pub size: u64,
    /// The first block of the interrupted-write marker on disk, while what was written since
    /// may not be on the disk (set at the first size-changing write, lowered when a write or
    /// truncate starts earlier, removed at fsync; at the last close handed to the marker queue,
    /// which removes it once the data is on the disk): one xattr update per writing session,
    /// not per write.
    pub marked: Option<u64>,
    /// The number of holes before the marked block (a sparse file's), which the marker holds.
    pub marked_gap: u32,
    /// When a close first handed the marker to the queue, for a marker taken over from it: the
    /// queue's wait runs from then (a file reopened again and again is still settled).
    pub marked_since: Option<std::time::Instant>,
    /// Large sequential writes not yet sent to the disk (see `write_behind`).
    pub behind: super::write_behind::WriteBehind,
    /// The run of holes (a sparse file's blocks never written) found last, and the block it
    /// was found for: it holds for the blocks from that one to its end, so that reading through
    /// it looks for its end once; forgotten at every change of the file.
    pub holes_seen: std::sync::Mutex<Option<(Range<u64>, u64)>>,
    /// Known to hold no holes (a file created or emptied while open, and not extended with
    /// holes since): a write then reads no count of holes before it.
    pub no_holes: bool,
    /// Written blocks whose counts of holes may reach over blocks written since the last sync.
    /// A count never shrinks before the blocks it stops counting are durable: after a power
    /// loss a block written but not stored is zeros again, and a count that no longer reached
    /// it would make it unreadable. So writes store counts taken from the disk (a filled hole
    /// leaves the count of its run's end as it is; a count larger than its run reads the same)
    /// and note the blocks here; `settle_counts` shrinks them to the holes really right before
    /// them after a sync: at fsync, at close and at the last release (and when many wait).
    /// Until then a written block zeroed offline could pass for a hole.
    pub recount: std::collections::BTreeSet<u64>,
    /// The cipher offset up to which fallocate `KEEP_SIZE` had the backing file keep room past
    /// its end (0: none asked since the file was opened): an extension that shortens the
    /// backing file first (which frees that room) asks for it again.
    pub reserved: u64,
}

impl Drop for FileState {
    fn drop(&mut self) {
        if self.marked.is_some() {
            crate::content::pending::clear(&self.file);
        }
    }
}

pub struct OpenFile {
    pub ino: u64,
    /// The backing file's descriptor number, to name the cipher file in logs (resolved only when
    /// there is something to log; never a plaintext name).
    fd_no: std::sync::atomic::AtomicI32,
    layout: Layout,
    /// The file's block cipher; fixed for the life of the open file, so a write can encrypt
    /// before it takes the lock.
    cipher: FileCipher,
    state: RwLock<FileState>,
    /// Lets writes past the end wait for the writes before them (see `write_order`).
    order: super::write_order::WriteOrder,
    /// Ciphertext bytes sent to the disk early (see `write_behind`).
    written_behind: std::sync::atomic::AtomicU64,
    /// A write failed: the kernel's cached pages and size may show what never reached the disk
    /// (see `Vfs::take_stale_caches`).
    write_failed: std::sync::atomic::AtomicBool,
    /// A write the kernel sent from its page cache failed short of room or by an I/O error:
    /// extensions store encrypted zeros instead of holes from now on (see `extend_with_holes`).
    /// A count: a failure short of room that succeeds when tried again takes its own back.
    holes_refused: std::sync::atomic::AtomicU32,
    /// Writes the kernel sent from its page cache (writeback) that failed, and the errno of
    /// the last (see `Vfs::take_write_error`).
    wb_failures: std::sync::atomic::AtomicU64,
    wb_errno: std::sync::atomic::AtomicI32,
    /// The size of the last failed write-back.
    wb_len: std::sync::atomic::AtomicU64,
    /// The backing descriptor was opened `O_NOATIME` for an open that does not read (writing
    /// only, a truncate): the reads kmsfs makes for its own needs (a partly written block, the
    /// block a truncate cuts) are no access. The first read for a caller, or an open for
    /// reading, takes the flag off ([`OpenFile::reading`]).
    quiet: std::sync::atomic::AtomicBool,
    /// The modification time the kernel holds while it writes the file from its page cache
    /// (see `kept_mtime`).
    pub kept_mtime: super::kept_mtime::KeptMtime,
}

impl std::fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFile")
            .field("ino", &self.ino)
            .field("fd", &self.fd_no)
            .finish()
    }
}

impl OpenFile {
    pub fn new(ino: u64, layout: Layout, cipher: FileCipher, state: FileState) -> Self {
        use std::os::fd::AsRawFd;
        let fd_no = std::sync::atomic::AtomicI32::new(state.file.as_raw_fd());
        OpenFile {
            ino,
            fd_no,
            layout,
            cipher,
            state: RwLock::new(state),
            order: Default::default(),
            written_behind: Default::default(),
            write_failed: Default::default(),
            holes_refused: Default::default(),
            wb_failures: Default::default(),
            wb_errno: Default::default(),
            wb_len: Default::default(),
            quiet: Default::default(),
            kept_mtime: Default::default(),
        }
    }

    /// The backing file's modification time now.
    pub fn backing_mtime(&self) -> Option<rustix::fs::Timespec> {
        let st = rustix::fs::fstat(&self.read_state().file).ok()?;
        Some(super::kept_mtime::mtime_of(&st))
    }

    /// Puts the modification time the kernel holds back on the backing file, if a write from
    /// the page cache moved it (see `kept_mtime`).
    pub fn restore_mtime(&self) {
        self.kept_mtime
            .restore(|at| crate::fsutil::set_mtime(&self.read_state().file, at));
    }

    /// Marks the backing descriptor as opened without access times for an open that does not
    /// read (see the field).
    pub fn set_quiet(&self) {
        self.quiet.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the backing descriptor is to stay without access times (see the field).
    pub fn is_quiet(&self) -> bool {
        self.quiet.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A new file opened O_NOATIME by its create: its reads leave the access time alone, as
    /// those of an existing file opened so (the backing descriptor was opened without the
    /// flag), until a caller reads without it ([`OpenFile::reading`]).
    pub fn leave_access_times(&self) {
        use rustix::fs::OFlags;
        let st = self.read_state();
        if let Ok(fl) = rustix::fs::fcntl_getfl(&st.file)
            && !fl.contains(OFlags::NOATIME)
            && rustix::fs::fcntl_setfl(&st.file, fl | OFlags::NOATIME).is_ok()
        {
            self.set_quiet();
        }
    }

    /// A caller reads (or opens for reading): from now on the backing file's access time
    /// follows the reads, by the backing file system's rule.
    pub fn reading(&self) {
        if self.is_quiet() && self.quiet.swap(false, std::sync::atomic::Ordering::Relaxed) {
            let st = self.read_state();
            if let Ok(fl) = rustix::fs::fcntl_getfl(&st.file)
                && fl.contains(rustix::fs::OFlags::NOATIME)
            {
                let _ = rustix::fs::fcntl_setfl(&st.file, fl - rustix::fs::OFlags::NOATIME);
            }
        }
    }

    /// The cipher path of the file, for log lines.
    pub fn label(&self) -> String {
        let fd = self.fd_no.load(std::sync::atomic::Ordering::Relaxed);
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| format!("inode {}", self.ino))
    }

    /// Records that the backing descriptor was replaced (reopened read-write).
    pub fn set_fd(&self, f: &File) {
        use std::os::fd::AsRawFd;
        self.fd_no
            .store(f.as_raw_fd(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the file is open for writing now (taken as yes while a write holds its lock).
    pub fn writable_now(&self) -> bool {
        match self.state.try_read() {
            Ok(st) => st.writable,
            Err(_) => true,
        }
    }

    pub fn read_state(&self) -> RwLockReadGuard<'_, FileState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write_state(&self) -> RwLockWriteGuard<'_, FileState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn size(&self) -> u64 {
        self.read_state().size
    }

    fn integrity(&self, what: String) -> VfsError {
        tracing::error!(file = %self.label(), ino = self.ino, "integrity failure: {what}");
        VfsError::Integrity(format!("{}: {what}", self.label()))
    }

    /// The ciphertext of blocks `first..=last`, in the thread's ciphertext buffer.
    fn read_cipher(&self, st: &FileState, first: u64, last: u64) -> Result<Scratch> {
        let l = &self.layout;
        let start = l.cipher_offset(first);
        let last_len = l
            .block_len(last, st.size)
            .ok_or_else(|| self.integrity(format!("block {last} past end")))?;
        let end = l.cipher_offset(last) + last_len + BLOCK_OVERHEAD as u64;
        let mut buf = Scratch::cipher((end - start) as usize);
        read_exact_at(&st.file, buf.as_mut(), start).map_err(|e| match e {
            VfsError::Integrity(m) => self.integrity(m),
            other => other,
        })?;
        Ok(buf)
    }

    fn auth_failed(&self, block: u64) -> VfsError {
        self.integrity(format!("block {block} failed authentication"))
    }

    /// Reads and decrypts blocks `first..=last` of a file of size `size` into plaintext.
    fn read_blocks(&self, st: &FileState, first: u64, last: u64, out: &mut Vec<u8>) -> Result<()> {
        let buf = self.read_cipher(st, first, last)?;
        let n = self
            .cipher
            .plain_len(buf.as_slice().len())
            .map_err(|i| self.auth_failed(first + i))?;
        out.clear();
        out.resize(n, 0);
        self.decrypt(st, first, buf.as_slice(), out)
    }

    /// Decrypts blocks `first..` of `cipher` into `out` (exactly their plaintext length); in a
    /// sparse file the holes among them read as zeros.
    fn decrypt(&self, st: &FileState, first: u64, cipher: &[u8], out: &mut [u8]) -> Result<()> {
        let fin = self.layout.final_block(st.size);
        match self.cipher.decrypt_blocks_into(first, cipher, fin, out) {
            Ok(()) => Ok(()),
            Err(_) if self.sparse() => self.decrypt_with_holes(st, first, cipher, out),
            Err(e) => Err(self.auth_failed(e.block)),
        }
    }

    /// As [`OpenFile::read_blocks`], into `out` (made exactly their length).
    fn read_blocks_into(
        &self,
        st: &FileState,
        first: u64,
        last: u64,
        out: &mut Scratch,
    ) -> Result<()> {
        let buf = self.read_cipher(st, first, last)?;
        let n = self
            .cipher
            .plain_len(buf.as_slice().len())
            .map_err(|i| self.auth_failed(first + i))?;
        out.set_len(n);
        self.decrypt(st, first, buf.as_slice(), out.as_mut())
    }

    /// Plaintext `[off, off + len)`, cut at end of file: decrypted into `out`, at the range
    /// returned (no copy of it, no zero fill of the buffers once they are large enough).
    pub fn read_into(&self, off: u64, len: u32, out: &mut Scratch) -> Result<Range<usize>> {
        let st = self.read_state();
        if off >= st.size || len == 0 {
            return Ok(0..0);
        }
        let end = st.size.min(off + u64::from(len));
        let l = &self.layout;
        let (first, last) = (l.block_of(off), l.block_of(end - 1));
        self.read_blocks_into(&st, first, last, out)?;
        let base = l.plain_offset(first);
        Ok((off - base) as usize..(end - base) as usize)
    }

    /// Writes `data` at `off` (or at end of file when `append`); returns the offset written at.
    /// `cached`: the kernel sends it from its page cache (see `Vfs::write_from`).
    pub fn write(&self, off: u64, data: &[u8], append: bool, cached: bool) -> Result<u64> {
        // Dropped after the file's lock (declared before it). Taken before the encryption, so a
        // write past the end waits for this one while it encrypts.
        let turn = self.order.enter();
        let pre = if append {
            None
        } else {
            self.encrypt_whole_blocks(off, data)
        };
        if !append {
            self.order.wait_turn(&turn, off, || off > self.size());
        }
        let mut st = self.write_state();
        if !st.writable {
            return Err(VfsError::Sys(rustix::io::Errno::BADF));
        }
        let off = if append { st.size } else { off };
        let old_size = st.size;
        let r = if off > st.size {
            self.extend_zeros(&mut st, off, true)
        } else {
            Ok(())
        };
        let stored = match r.and_then(|()| self.write_locked(&mut st, off, data, pre)) {
            Ok(n) => n,
            Err(e) => {
                // Noted before the lock goes: a write-back past this one waits for it and must
                // not leave holes where it failed (see `extend_with_holes`).
                self.note_write_failed();
                if cached {
                    self.note_writeback_error(e.errno());
                }
                // A write past the end that failed after its zeros were stored: the size goes
                // back.
                if st.size != old_size && self.truncate_locked(&mut st, old_size).is_err() {
                    tracing::error!(file = %self.label(), "could not undo the zeros of a failed write past the end");
                }
                return Err(e);
            }
        };
        // Only what the caller wrote counts toward a stream (not the zeros of a hole). The
        // write-out starts after the lock is let go (it can wait for the disk's queue), on a
        // descriptor of its own (the file's may be replaced meanwhile).
        let start = self.layout.cipher_offset(self.layout.block_of(off));
        let kick = st
            .behind
            .note(start, stored)
            .and_then(|range| Some((st.file.try_clone().ok()?, range)));
        drop(st);
        if let Some((file, range)) = kick {
            let n = range.end - range.start;
            match super::write_behind::start_writeout(&file, range) {
                Ok(()) => {
                    self.written_behind
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(file = %self.label(), "write-behind: sync_file_range: {e}")
                }
            }
        }
        Ok(off)
    }

    /// Records that a write to this file failed.
    pub fn note_write_failed(&self) {
        self.write_failed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A write the kernel sent from its page cache failed with `errno`. Short of room, or an
    /// I/O error, holes are refused from now on: the kernel goes on sending the pages it
    /// accepted past the failed ones. A refusal whatever the room (EFBIG: past the largest
    /// size the backing file system takes, as every later page is) leaves no gap of that kind,
    /// and neither does a write the caller was told of (without the writeback cache, or
    /// `O_DIRECT`): it may go on past it as it could on any file system, and gets holes.
    fn note_writeback_error(&self, errno: i32) {
        if errno != libc::EFBIG {
            self.holes_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A write the kernel sent from its page cache that failed short of room (and refused
    /// holes, see `note_writeback_error`) succeeded when tried again: its refusal goes (found
    /// by a review: a moment short of room, while removed files were let go, turned holes off
    /// for the rest of the open).
    pub fn writeback_retried(&self) {
        use std::sync::atomic::Ordering;
        let _ = self
            .holes_refused
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Whether extensions must store encrypted zeros instead of holes (see
    /// `note_writeback_error`).
    pub fn holes_refused(&self) -> bool {
        self.holes_refused
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    }

    /// Records that a write of `len` bytes the kernel sent from its page cache failed with
    /// `errno`: the process that wrote it got success long before (see
    /// `Vfs::take_write_error`).
    pub fn note_writeback_failed(&self, errno: i32, len: usize) {
        use std::sync::atomic::Ordering;
        // Holes were refused already, by the failed attempt itself (`write`).
        self.note_write_failed();
        self.wb_errno.store(errno, Ordering::Relaxed);
        self.wb_len.store(len as u64, Ordering::Relaxed);
        self.wb_failures.fetch_add(1, Ordering::Release);
    }

    /// How many write-backs of this file failed, the errno of the last and its size.
    pub fn writeback_failures(&self) -> (u64, i32, u64) {
        use std::sync::atomic::Ordering;
        let n = self.wb_failures.load(Ordering::Acquire);
        (
            n,
            self.wb_errno.load(Ordering::Relaxed),
            self.wb_len.load(Ordering::Relaxed),
        )
    }

    /// Whether a write to this file failed while it was open.
    pub fn write_failed(&self) -> bool {
        self.write_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Ciphertext bytes of this file sent to the disk early by the write-behind.
    pub fn written_behind(&self) -> u64 {
        self.written_behind
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The ciphertext of a write of whole blocks at a block boundary (what the writeback cache
    /// sends), encrypted before the write waits for its turn and takes the file's lock, so that
    /// the kernel's concurrent writes of one file encrypt at once on several threads. It does not
    /// depend on the file's state: the size after the write is at least its end, a block
    /// boundary, so none of its blocks is the final one; nonces are fresh. The buffer has room
    /// for an empty final block after them. `None` for any other write.
    fn encrypt_whole_blocks(&self, off: u64, data: &[u8]) -> Option<Scratch> {
        let bs = self.layout.block_size;
        let len = data.len() as u64;
        if len == 0 || !off.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return None;
        }
        let first = self.layout.block_of(off);
        let main_len = self.cipher.cipher_len(data.len());
        let mut buf = Scratch::cipher(main_len + BLOCK_OVERHEAD);
        // No holes before them (the usual case): a sparse file's write after a hole encrypts
        // again under the lock, with their count.
        self.cipher
            .encrypt_blocks_into(first, data, u64::MAX, 0, &mut buf.as_mut()[..main_len]);
        Some(buf)
    }

    /// Fills `[size, target)` with zeros: holes in a sparse file when the gap is long enough
    /// and `holes` allows, else encrypted zeros. The caller holds the write lock.
    fn extend_zeros(&self, st: &mut FileState, target: u64, holes: bool) -> Result<()> {
        if holes && self.extend_with_holes(st, target)? {
            return Ok(());
        }
        self.check_room(st, target)?;
        let zeros = vec![0u8; ZERO_CHUNK as usize];
        while st.size < target {
            let n = (target - st.size).min(ZERO_CHUNK);
            let at = st.size;
            self.write_locked(st, at, &zeros[..n as usize], None)?;
        }
        Ok(())
    }

    /// ENOSPC, before anything is written, when the encrypted zeros of an extension to `target`
    /// (a write or truncate far past the end) need more than the backing file system holds in
    /// all. Without it, such a request would fill the disk, failing other writers on it
    /// meanwhile, before its own ENOSPC undid it. Not against the free space: space others
    /// free while the zeros are written counts (writers that delete as they go, as stress-ng
    /// revio on a small disk, failed spuriously against a snapshot of it). Only large
    /// extensions ask (one `fstatvfs`); one that passes can still run out and is undone then.
    fn check_room(&self, st: &FileState, target: u64) -> Result<()> {
        let l = self.layout;
        let need = l.cipher_size(target).saturating_sub(l.cipher_size(st.size));
        if need < ROOM_CHECK_MIN {
            return Ok(());
        }
        let s = rustix::fs::fstatvfs(&st.file)?;
        if need > s.f_blocks.saturating_mul(s.f_frsize) {
            return Err(VfsError::Sys(rustix::io::Errno::NOSPC));
        }
        Ok(())
    }

    /// The plaintext of the blocks a write of `data` at `off` touches, after it: from the first
    /// block's start to `span_end`, the old bytes kept where the write does not reach into its
    /// first and last blocks.
    fn merged_span(&self, st: &FileState, off: u64, data: &[u8], span_end: u64) -> Result<Vec<u8>> {
        let l = self.layout;
        let end = off + data.len() as u64;
        let (first, last) = (l.block_of(off), l.block_of(end - 1));
        let base = l.plain_offset(first);
        let mut plain = vec![0u8; (span_end - base) as usize];
        // Old bytes before `off` in the first block.
        if off > base {
            let mut old = Vec::new();
            self.read_blocks(st, first, first, &mut old)?;
            let n = old.len().min((off - base) as usize);
            plain[..n].copy_from_slice(&old[..n]);
        }
        // Old bytes after `end` in the last block.
        let last_start = l.plain_offset(last);
        let old_last_end = st.size.min(last_start + l.block_size);
        if end < old_last_end {
            let mut old = Vec::new();
            self.read_blocks(st, last, last, &mut old)?;
            let from = (end - last_start) as usize;
            let dst = (end - base) as usize;
            plain[dst..dst + old.len() - from].copy_from_slice(&old[from..]);
        }
        plain[(off - base) as usize..(end - base) as usize].copy_from_slice(data);
        Ok(plain)
    }

    /// Writes `data` at `off <= size`. Re-encrypts every touched block (read-modify-write at the
    /// edges), re-marks the final block, and writes everything in one `pwrite`. `pre` is the
    /// ciphertext of `data` from [`OpenFile::encrypt_whole_blocks`], when it made one. Returns
    /// the number of cipher bytes written, from the start of the first block touched.
    fn write_locked(
        &self,
        st: &mut FileState,
        off: u64,
        data: &[u8],
        pre: Option<Scratch>,
    ) -> Result<u64> {
        debug_assert!(off <= st.size);
        if data.is_empty() {
            return Ok(0);
        }
        let l = self.layout;
        let bs = l.block_size;
        let end = off + data.len() as u64;
        let new_size = st.size.max(end);
        let first = l.block_of(off);
        let last = l.block_of(end - 1);
        let new_final = l.final_block(new_size);
        // In a sparse file: the holes before the first block, and the written block whose count
        // is to shrink (once settled) when the write fills the hole that is its last block.
        let (gap, gap_from_run) = self.gap_of(st, first)?;
        let run_end = self.run_end_after(st, last)?;
        // The old final block's plaintext (and its count of holes before it), to restore it if
        // an extending write fails. An append starts in that block: its count is `gap`.
        let old_tail = if new_size > st.size {
            let fin = l.final_block(st.size);
            let mut t = Vec::new();
            if st.size.is_multiple_of(bs) || self.read_blocks(st, fin, fin, &mut t).is_ok() {
                let g = if fin == first {
                    gap
                } else {
                    self.gap_before(st, fin)?
                };
                Some((t, g))
            } else {
                None
            }
        } else {
            None
        };
        let base = l.plain_offset(first);
        // Plaintext of blocks first..=last after the write.
        let span_end = new_size.min(l.plain_offset(last + 1));
        let main_len = self.cipher.cipher_len((span_end - base) as usize);
        // The size became a multiple of the block size: the final block is a new empty one.
        // (When the file goes on past this write, its final block is untouched and stays.)
        let empty_final = new_final == last + 1 && new_size.is_multiple_of(bs);
        // The write covers its blocks exactly (the usual case with the writeback cache: whole
        // pages): encrypted straight from the caller's bytes. Otherwise merged with the old
        // bytes first (before the cipher buffer is taken: the merge reads through it too).
        let whole = off == base && end == span_end;
        // Written blocks this write stores again whose counts of holes must stay (see
        // `holes::counts_in`): the existing empty final block it rewrites included.
        let upto = if empty_final && new_final <= l.final_block(st.size) {
            new_final
        } else {
            last
        };
        let keep = self.counts_in(st, first, upto, gap_from_run)?;
        let pre = pre.filter(|_| whole && gap == 0);
        let merged = if pre.is_some() || whole {
            None
        } else {
            Some(self.merged_span(st, off, data, span_end)?)
        };
        let plain = merged.as_deref().unwrap_or(data);
        let mut buf = match pre {
            // Encrypted already (whole blocks, none of them final, as this write leaves them,
            // and no hole before them).
            Some(buf) => buf,
            None => {
                let mut buf = Scratch::cipher(main_len + BLOCK_OVERHEAD);
                self.cipher.encrypt_blocks_into(
                    first,
                    plain,
                    new_final,
                    gap,
                    &mut buf.as_mut()[..main_len],
                );
                buf
            }
        };
        let total = main_len + if empty_final { BLOCK_OVERHEAD } else { 0 };
        if empty_final {
            self.cipher.encrypt_blocks_into(
                new_final,
                &[],
                new_final,
                0,
                &mut buf.as_mut()[main_len..total],
            );
        }
        // Those blocks again, with their counts.
        for &(b, g) in &keep {
            let po = ((b - first) * bs) as usize;
            let n = plain.len().saturating_sub(po).min(bs as usize);
            let at = (b - first) as usize * l.cipher_block_size() as usize;
            self.cipher.encrypt_blocks_into(
                b,
                &plain[po..po + n],
                new_final,
                g,
                &mut buf.as_mut()[at..at + n + BLOCK_OVERHEAD],
            );
        }
        buf.set_len(total);
        let out = buf.as_slice();
        if new_size != st.size && st.marked.is_none_or(|m| first < m) {
            // Target 0: "the length the file has", since later writes go on growing it.
            if crate::content::pending::mark(&st.file, self.ino, &self.cipher, first, 0, gap) {
                st.marked = Some(first);
                st.marked_gap = gap;
            }
        }
        if let Err(e) = crate::fault::write_all_at(&st.file, out, l.cipher_offset(first)) {
            // The write may have stopped inside a block: complete each torn block of the range
            // that stays with its new content (its space is allocated now), so every block is
            // old or new, as after a short write.
            let keep_end = if new_size > st.size {
                l.final_block(st.size)
            } else {
                last + 1
            };
            self.complete_torn(st, first, keep_end, new_final, out);
            // A failed write that extended the file (ENOSPC, EIO) may have left the old final
            // block re-marked as non-final: put the old tail back so the file stays readable.
            if new_size > st.size {
                self.restore_tail(st, old_tail.as_ref().map(|(t, g)| (&t[..], *g)));
            }
            return Err(e.into());
        }
        st.size = new_size;
        // The holes seen before this write may be blocks of it now.
        *st.holes_seen.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
        // Counts that may reach over what this write stored (see `FileState::recount`): that
        // of block `k`, whose run lost holes, and the first block's, when taken from its run.
        if let Some(k) = run_end {
            self.recount(st, k);
        }
        if gap > 0 && gap_from_run {
            self.recount(st, first);
        }
        for (b, _) in keep {
            self.recount(st, b);
        }
        Ok(out.len() as u64)
    }

    /// Cipher bytes block `i` takes in a file of the current size.
    fn stored_len(&self, st: &FileState, i: u64) -> usize {
        self.layout.block_len(i, st.size).unwrap_or(0) as usize + BLOCK_OVERHEAD
    }

    /// After a failed write of `out` (blocks from `first`): re-writes each of the blocks
    /// `first..end` that does not authenticate from `out`. Blocks before the last of `out` are
    /// full, so block `i` sits at `(i - first)` cipher blocks into `out`. Best effort.
    ///
    /// In a sparse file, once a block cannot be completed (a full disk: the write was filling
    /// holes), it and every later block of the range that does not authenticate go back to
    /// being holes (their bytes punched out) instead: a block completed after a hole with the
    /// write's count (none) would leave that hole without a count that reaches it. The written
    /// block after the run still counts them (its count shrinks only after a write that
    /// succeeded).
    fn complete_torn(&self, st: &FileState, first: u64, end: u64, final_block: u64, out: &[u8]) {
        let l = self.layout;
        let cbs = l.cipher_block_size() as usize;
        let mut buf = vec![0u8; cbs];
        let mut plain = vec![0u8; l.block_size as usize];
        let mut left = Vec::new();
        let mut stuck = false;
        for i in first..end {
            let at = (i - first) as usize * cbs;
            let Some(new) = out.get(at..out.len().min(at + cbs)) else {
                break;
            };
            let c = &mut buf[..new.len()];
            let p = &mut plain[..new.len().saturating_sub(BLOCK_OVERHEAD)];
            let read = st.file.read_exact_at(c, l.cipher_offset(i)).is_ok();
            if read && self.cipher.decrypt_block(i, i == final_block, c, p).is_ok() {
                continue;
            }
            let done = (!stuck && st.file.write_all_at(new, l.cipher_offset(i)).is_ok())
                || (self.sparse() && new.len() == cbs && {
                    stuck = true;
                    (read && crate::content::is_hole(c))
                        || rustix::fs::fallocate(
                            &st.file,
                            rustix::fs::FallocateFlags::PUNCH_HOLE
                                | rustix::fs::FallocateFlags::KEEP_SIZE,
                            l.cipher_offset(i),
                            cbs as u64,
                        )
                        .is_ok()
                });
            if !done {
                left.push(i);
            }
        }
        // One line, not one per block: a daemon in the foreground may log into a pipe.
        if let (Some(a), Some(b)) = (left.first(), left.last()) {
            tracing::error!(file = %self.label(), blocks = left.len(), first = a, last = b, "could not complete blocks torn by a failed write");
        }
    }

    /// Re-writes the final block of the current (old) size from `tail` (its plaintext) and cuts
    /// the file back to the old cipher size. Best effort: it writes only into space the file
    /// already had.
    fn restore_tail(&self, st: &FileState, tail: Option<(&[u8], u32)>) {
        let l = self.layout;
        let fin = l.final_block(st.size);
        let Some((tail, gap)) = tail else { return };
        let mut out = Vec::new();
        self.cipher.encrypt_blocks(fin, tail, fin, gap, &mut out);
        let ok = st.file.write_all_at(&out, l.cipher_offset(fin)).is_ok()
            && st.file.set_len(l.cipher_size(st.size)).is_ok();
        if !ok {
            tracing::error!(file = %self.label(), "could not restore the end of the file after a failed write");
        }
    }

    /// Zeros `[off, end)`: stores encrypted zeros over the part inside the file and, unless
    /// `keep_size`, extends the file to `end`.
    pub fn zero_range(&self, off: u64, end: u64, keep_size: bool) -> Result<()> {
        let mut st = self.write_state();
        if !st.writable {
            return Err(VfsError::Sys(rustix::io::Errno::BADF));
        }
        if keep_size {
            // Zeros past the end, the size kept: allocated as `KEEP_SIZE` allocates; first,
            // so that a failure changes nothing.
            self.reserve_past_end(&mut st, off, end)?;
        }
        self.zero_locked(&mut st, off, end)?;
        if !keep_size && end > st.size {
            self.resize_locked(&mut st, end, false)?;
        }
        // The times move as on ext4 also where nothing was written (a range past the end).
        holes::touch_times(&st)
    }

    /// Stores encrypted zeros over `[off, end)`, cut at the end of the file.
    fn zero_locked(&self, st: &mut FileState, off: u64, end: u64) -> Result<()> {
        let zeros = vec![0u8; ZERO_CHUNK.min(end.saturating_sub(off)) as usize];
        let mut at = off;
        while at < end.min(st.size) {
            let n = (end.min(st.size) - at).min(ZERO_CHUNK);
            self.write_locked(st, at, &zeros[..n as usize], None)?;
            at += n;
        }
        Ok(())
    }

    /// Sets the plaintext size.
    pub fn truncate(&self, new_size: u64) -> Result<()> {
        let mut st = self.write_state();
        if !st.writable {
            return Err(VfsError::Sys(rustix::io::Errno::BADF));
        }
        self.truncate_locked(&mut st, new_size)
    }

    pub fn truncate_locked(&self, st: &mut FileState, new_size: u64) -> Result<()> {
        self.resize_locked(st, new_size, true)
    }

    /// Sets the plaintext size; an extension stores holes only if `holes` allows (not for
    /// fallocate, which promises allocated space).
    fn resize_locked(&self, st: &mut FileState, new_size: u64, holes: bool) -> Result<()> {
        use std::cmp::Ordering::*;
        if new_size <= st.size {
            // The backing truncate lets room kept past the end go, as ext4's does.
            st.reserved = 0;
        }
        match new_size.cmp(&st.size) {
            // Nothing to cut or add, but a truncate still marks the file changed, as on the
            // backing file system (ext4 sets mtime and ctime for a truncate to the same size):
            // the same length given to the backing file does that.
            Equal => {
                crate::fault::set_len(&st.file, self.layout.cipher_size(st.size))?;
                Ok(())
            }
            Greater => {
                // Extended a chunk at a time: a failure after some chunks (a full disk) cuts
                // the file back, so a failed truncate leaves the size it found.
                let old_size = st.size;
                let r = self.extend_zeros(st, new_size, holes);
                if r.is_err() && st.size != old_size && self.truncate_locked(st, old_size).is_err()
                {
                    tracing::error!(file = %self.label(), "could not undo a failed extension");
                }
                r
            }
            Less => {
                let l = self.layout;
                let fin = l.final_block(new_size);
                let keep = (new_size - l.plain_offset(fin)) as usize;
                let mut old = Vec::new();
                if keep > 0 {
                    self.read_blocks(st, fin, fin, &mut old)?;
                }
                old.truncate(keep);
                let (gap, gap_from_run) = self.gap_of(st, fin)?;
                *st.holes_seen.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
                let mut out = Vec::new();
                self.cipher.encrypt_blocks(fin, &old, fin, gap, &mut out);
                let off = l.cipher_offset(fin);
                // The old block's ciphertext as it is (a shorter size ends inside it), to put
                // back if the truncate fails half-way. Not decrypted: truncating a damaged file
                // must still work.
                let mut saved = vec![0u8; self.stored_len(st, fin)];
                st.file.read_exact_at(&mut saved, off)?;
                crate::content::pending::mark(
                    &st.file,
                    self.ino,
                    &self.cipher,
                    fin,
                    l.cipher_size(new_size),
                    gap,
                );
                if let Err(e) = crate::fault::write_all_at(&st.file, &out, off)
                    .and_then(|()| self.kept_bytes_to_disk(st, keep, off, out.len()))
                    .and_then(|()| crate::fault::set_len(&st.file, l.cipher_size(new_size)))
                {
                    // Not cut: the blocks after `fin` are still there, so the old block `fin`
                    // makes the file whole again (its space is allocated: this cannot run out).
                    if st.file.write_all_at(&saved, off).is_err() {
                        tracing::error!(file = %self.label(), "could not restore a block after a failed truncate");
                    } else {
                        match st.marked {
                            Some(m) => {
                                crate::content::pending::mark(
                                    &st.file,
                                    self.ino,
                                    &self.cipher,
                                    m,
                                    0,
                                    st.marked_gap,
                                );
                            }
                            None => {
                                crate::content::pending::clear(&st.file);
                            }
                        }
                    }
                    return Err(e.into());
                }
                // The marker stays, from the new final block on (or from a write's, or a
                // taken-over marker's, earlier block): the block was rewritten in place and the
                // cut reaches the journal within seconds, the block perhaps only at the
                // writeback (after a power loss recovery then ends the file before it, or at
                // the old final block found in place). Target 0 from here on, as for writes.
                let (first, g) = match st.marked {
                    Some(m) if m < fin => (m, st.marked_gap),
                    _ => (fin, gap),
                };
                if crate::content::pending::mark(&st.file, self.ino, &self.cipher, first, 0, g) {
                    st.marked = Some(first);
                    st.marked_gap = g;
                } else {
                    crate::content::pending::clear(&st.file);
                    st.marked = None;
                }
                st.size = new_size;
                st.no_holes |= new_size == 0;
                if gap > 0 && gap_from_run {
                    // Taken from its run (see `FileState::recount`).
                    self.recount(st, fin);
                }
                Ok(())
            }
        }
    }

    /// Before a shrinking truncate cuts the cipher file, the rewritten new final block (`len`
    /// bytes at `off`), when it keeps plaintext (`keep` > 0), is written to the disk and waited
    /// for. The cut reaches the backing file system's journal within seconds, and ext4 writes
    /// the page of the new end with it but a block spanning two pages has its other page
    /// written only at the writeback: after a power cut between the two, the block was torn
    /// and recovery ended the file before it, losing up to a block of what the truncate kept
    /// (`tests/power_loss.rs`). One synchronous write of a block per shrinking truncate that
    /// keeps part of one; a truncate to a block boundary (or to 0) keeps nothing in its new
    /// final block and costs nothing more. An error is the truncate's (the file is put back).
    fn kept_bytes_to_disk(
        &self,
        st: &FileState,
        keep: usize,
        off: u64,
        len: usize,
    ) -> std::io::Result<()> {
        if keep == 0 {
            return Ok(());
        }
        crate::fault::check("sync_file_range").map_err(std::io::Error::from)?;
        match super::write_behind::sync_file_range(
            &st.file,
            off as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        ) {
            // A backing file system without it: the truncate goes on as before there was this.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::ESPIPE)
                ) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    /// Runs `f` with the file's writes held off, once what was written is durable and the
    /// interrupted-write marker is off the backing file (`chattr +i` on a file open for
    /// writing: an immutable cipher file could never lose its marker, and every later open
    /// would try to repair it). When `f` succeeds, the file's read-write descriptor, if it has
    /// one, is replaced by `read_only`: a later open for writing then opens the backing file
    /// again and meets its immutable flag, instead of sharing a descriptor opened before it.
    pub fn quiesced<E>(
        &self,
        read_only: File,
        f: impl FnOnce() -> Result<(), E>,
    ) -> Result<Result<(), E>> {
        let mut st = self.write_state();
        if st.marked.is_some() {
            st.file.sync_data()?;
            st.marked = None;
            st.marked_since = None;
            crate::content::pending::clear(&st.file);
        }
        // An immutable cipher file could not have its counts of holes settled later.
        self.settle_counts(&mut st, false);
        let r = f();
        if r.is_ok() && st.writable {
            self.set_fd(&read_only);
            st.file = read_only;
            st.writable = false;
        }
        Ok(r)
    }

    /// The last release: the interrupted-write marker, if one is on, goes to `queue`, which
    /// removes it once what was written is on the disk (see `marker_queue`). Without a second
    /// descriptor for it (out of descriptors), it is removed when the state is dropped, as
    /// before there was a queue.
    pub fn hand_over_marker(&self, queue: &super::marker_queue::MarkerQueue) {
        let handed = {
            let mut st = self.write_state();
            let Some(first) = st.marked else {
                return;
            };
            let Ok(f) = st.file.try_clone() else {
                return;
            };
            st.marked = None;
            super::marker_queue::Marked {
                first,
                gap: st.marked_gap,
                since: st.marked_since.take(),
            }
            .with(f)
        };
        // Outside the state's lock: a queue far over its bound settles here.
        queue.defer(self.ino, handed);
    }

    pub fn fsync(&self, datasync: bool) -> Result<()> {
        let mut st = self.write_state();
        crate::fault::check("fsync")?;
        if datasync {
            st.file.sync_data()?
        } else {
            st.file.sync_all()?
        }
        // Everything written is durable: no write can be torn any more, and counts of holes
        // can shrink.
        if st.marked.take().is_some() {
            crate::content::pending::clear(&st.file);
            st.marked_since = None;
        }
        self.settle_counts(&mut st, true);
        Ok(())
    }
}

impl Drop for OpenFile {
    /// The last handle is gone: counts of holes are settled (normally done already, at the
    /// last release: `Vfs::put_open_file`).
    fn drop(&mut self) {
        self.settle();
    }
}

/// `pread` that treats a short read as an integrity failure (the file is shorter than its size).
fn read_exact_at(f: &File, buf: &mut [u8], off: u64) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => {
                return Err(VfsError::Integrity(format!(
                    "cipher file ends early at offset {}",
                    off + done as u64
                )));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads and parses the header at the start of a cipher file.
pub fn read_header(f: &File) -> Result<FileHeader> {
    let mut b = [0u8; HEADER_LEN];
    read_exact_at(f, &mut b, 0)?;
    FileHeader::decode(&b).map_err(|e| VfsError::Integrity(e.to_string()))
}
