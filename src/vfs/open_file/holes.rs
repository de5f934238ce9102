//! Holes in sparse files (header flag `FLAG_SPARSE`, docs/FORMAT.md §4a): full blocks that were
//! never written, stored as nothing (the backing file system reads them as zeros and need not
//! allocate them) and read as zeros. What makes a hole authentic is the next written block: the
//! first four bytes of its nonce count the holes right before it, and the nonce is authenticated
//! with the block. A block whose nonce is all zeros and that no such count reaches is a zeroed
//! block, and fails like any other damaged block.

use std::ops::Range;

use super::{FileState, OpenFile};
use crate::content::{block_gap, is_hole};
use crate::format::block::BLOCK_NONCE_LEN;
use crate::vfs::error::{Result, VfsError};

/// An extension is stored as holes only when at least this many whole blocks of zeros would
/// otherwise be written; a shorter gap is written as encrypted zeros, as in files without holes
/// (a hole of a block or two saves little and makes the next write there dearer).
pub(super) const MIN_HOLES: u64 = 4;

/// Past this many blocks waiting for their counts to shrink, they are settled at once (a
/// sync): with the writeback cache's 1 MiB writes a file filled in order syncs every 1 GiB.
const MAX_RECOUNT: usize = 1024;

impl OpenFile {
    pub(super) fn sparse(&self) -> bool {
        self.cipher.is_sparse()
    }

    /// The stored nonce of block `i` (zeros where the backing file ends before it).
    fn nonce_at(&self, st: &FileState, i: u64) -> Result<[u8; BLOCK_NONCE_LEN]> {
        use std::os::unix::fs::FileExt;
        let mut n = [0u8; BLOCK_NONCE_LEN];
        let off = self.layout.cipher_offset(i);
        let mut got = 0;
        while got < n.len() {
            match st.file.read_at(&mut n[got..], off + got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    /// The first written block at or after `from` (at most the final block, which is always
    /// written) and the number of holes right before it, once it authenticates. Unallocated
    /// backing ranges are skipped with `SEEK_DATA` where the backing file system has it.
    fn next_written(&self, st: &FileState, from: u64) -> Result<(u64, u32)> {
        let l = self.layout;
        let fin = l.final_block(st.size);
        let mut i = from;
        while i <= fin {
            let off = l.cipher_offset(i);
            match rustix::fs::seek(&st.file, rustix::fs::SeekFrom::Data(off)) {
                Ok(d) if d > off => {
                    i = i.max(l.block_at_cipher(d));
                    if i > fin {
                        break;
                    }
                }
                Ok(_) => {}
                // No data after `off`: the final block is not there.
                Err(rustix::io::Errno::NXIO) => break,
                Err(_) => {}
            }
            let n = self.nonce_at(st, i)?;
            if !is_hole(&n) {
                // Its count counts only once the block authenticates (a changed count would
                // make zeroed blocks before it pass for holes).
                self.read_blocks(st, i, i, &mut Vec::new())?;
                return Ok((i, block_gap(&n)));
            }
            i += 1;
        }
        Err(self.integrity(format!(
            "no written block after block {from} (the final block is missing or zeroed)"
        )))
    }

    /// The run of holes that holds block `j`, when `j` is one: its stored nonce is all zeros
    /// (the caller has seen that) and the next written block's count reaches back over it.
    /// `None` for a zeroed block that no count reaches (damage), and for the final block. The
    /// run ends at that written block; its start is where the count reaches, which may be
    /// before written blocks while the count is not settled (see `FileState::recount`): counts
    /// taken from it are then larger than the holes, which reads the same.
    pub(super) fn hole_run(&self, st: &FileState, j: u64) -> Result<Option<Range<u64>>> {
        if let Some((r, from)) = st
            .holes_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            && (from..r.end).contains(&j)
        {
            return Ok(Some(r));
        }
        if !self.sparse() || j >= self.layout.final_block(st.size) {
            return Ok(None);
        }
        let (k, gap) = self.next_written(st, j + 1)?;
        let Some(start) = k.checked_sub(u64::from(gap)) else {
            return Ok(None);
        };
        if start > j {
            return Ok(None);
        }
        // Good for the blocks from `j` to `k` (all-zero nonces: `k` is the first written block
        // after `j`), not for those before `j`: a count not yet settled (see
        // `FileState::recount`) can reach back over written blocks, and a block before such a
        // written block belongs to the run that ends there.
        *st.holes_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((start..k, j));
        Ok(Some(start..k))
    }

    /// lseek(2) `SEEK_DATA` (`hole` false) or `SEEK_HOLE` from plaintext offset `off`: where
    /// the next data or hole starts, at `off` itself when it is in one. ENXIO at or past the
    /// end; a hole is never the last thing in a file (its final block is always written), so
    /// `SEEK_DATA` before the end always finds data, and `SEEK_HOLE` finds the end when
    /// nothing else. Reported as holes are whole blocks never written (or punched) that the
    /// next written block counts, as reads see them; never a damaged (zeroed) block, which
    /// reads fail on. Blocks of zeros written as such are data, and so, for `SEEK_HOLE` only,
    /// are holes whose space the backing file system still holds (a one-block punch, one
    /// that left the space allocated): the scan for a hole passes allocated backing ranges
    /// at once, which keeps it cheap in a large file written all through. That is allowed
    /// ("a file system is not obliged to report holes") and loses nothing: a copy writes
    /// those zeros.
    pub fn seek(&self, off: u64, hole: bool) -> Result<u64> {
        let st = self.read_state();
        if off >= st.size {
            return Err(VfsError::Sys(rustix::io::Errno::NXIO));
        }
        if !self.sparse() || st.no_holes {
            return Ok(if hole { st.size } else { off });
        }
        let l = self.layout;
        let fin = l.final_block(st.size);
        let mut i = l.block_of(off);
        while i < fin {
            let n = self.nonce_at(&st, i)?;
            let run = if is_hole(&n) {
                self.hole_run(&st, i)?
            } else {
                None
            };
            match (hole, run) {
                (false, None) | (true, Some(_)) => return Ok(off.max(l.plain_offset(i))),
                // The run ends at a written block.
                (false, Some(r)) => i = r.end,
                (true, None) => {
                    let next = l.cipher_offset(i + 1);
                    i = match rustix::fs::seek(&st.file, rustix::fs::SeekFrom::Hole(next)) {
                        // The block holding the first unallocated byte: its nonce may be
                        // stored (a punch frees whole pages only), the blocks before are.
                        Ok(h) if h > next => l.block_at_cipher(h),
                        _ => i + 1,
                    };
                }
            }
        }
        if hole {
            Ok(st.size)
        } else if l.plain_offset(i) >= st.size {
            // Holes up to the end: an empty final block counts them.
            Err(VfsError::Sys(rustix::io::Errno::NXIO))
        } else {
            Ok(off.max(l.plain_offset(i)))
        }
    }

    /// The number of holes right before block `i`, which a write of block `i` must store in its
    /// nonce: the stored count of a written block, the place in its run of a hole. 0 in a file
    /// without holes, and for a damaged block.
    pub(super) fn gap_before(&self, st: &FileState, i: u64) -> Result<u32> {
        Ok(self.gap_of(st, i)?.0)
    }

    /// [`OpenFile::gap_before`], and whether the count comes from the run of holes `i` is in
    /// (which may reach over blocks written since the last sync: see `FileState::recount`), not
    /// from block `i`'s own nonce (which is noted there already if it may).
    pub(super) fn gap_of(&self, st: &FileState, i: u64) -> Result<(u32, bool)> {
        if !self.sparse() || st.no_holes || i == 0 || i > self.layout.final_block(st.size) {
            return Ok((0, false));
        }
        let n = self.nonce_at(st, i)?;
        if !is_hole(&n) {
            let gap = block_gap(&n);
            if gap > 0 {
                // Believed only once the block authenticates (the count will be stored again).
                self.read_blocks(st, i, i, &mut Vec::new())?;
            }
            return Ok((gap, false));
        }
        Ok(match self.hole_run(st, i)? {
            // Fits: a run's length came from a u32 count.
            Some(r) => ((i - r.start) as u32, true),
            None => (0, false),
        })
    }

    /// The written blocks in `first + 1..=upto` whose counts of holes are not 0, with their
    /// counts. A write that stores them again keeps those counts (they then reach over blocks
    /// of the write, which authenticate) and notes them (see `FileState::recount`): stored as 0
    /// in the same unsynced write, a power loss that kept them and lost the blocks before would
    /// leave holes no count reaches (those before `first` too). Looked for only where holes may
    /// be: the first block is one (`first_hole`), blocks in the range are noted already, or
    /// the backing file system has unallocated space in the range (a hole of a block or two
    /// that a punch left allocated, between written blocks, is missed).
    pub(super) fn counts_in(
        &self,
        st: &FileState,
        first: u64,
        upto: u64,
        first_hole: bool,
    ) -> Result<Vec<(u64, u32)>> {
        if !self.sparse() || st.no_holes || upto <= first {
            return Ok(Vec::new());
        }
        let l = self.layout;
        let (from, to) = (l.cipher_offset(first + 1), l.cipher_offset(upto));
        let maybe = first_hole
            || st.recount.range(first + 1..=upto).next().is_some()
            || match rustix::fs::seek(&st.file, rustix::fs::SeekFrom::Hole(from)) {
                Ok(h) => h < to,
                Err(_) => true,
            };
        if !maybe {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for b in first + 1..=upto {
            let n = self.nonce_at(st, b)?;
            if !is_hole(&n) && block_gap(&n) > 0 {
                out.push((b, block_gap(&n)));
            }
        }
        Ok(out)
    }

    /// When block `last` is a hole that a write is about to fill: the written block after its
    /// run, whose count must then shrink to the holes after `last` (else a later zeroing of
    /// `last` would pass for a hole). `None` when nothing is to be done.
    pub(super) fn run_end_after(&self, st: &FileState, last: u64) -> Result<Option<u64>> {
        if !self.sparse() || st.no_holes || last >= self.layout.final_block(st.size) {
            return Ok(None);
        }
        if !is_hole(&self.nonce_at(st, last)?) {
            return Ok(None);
        }
        Ok(self.hole_run(st, last)?.map(|r| r.end))
    }

    /// Re-encrypts written block `k` with `gap` holes before it (its plaintext unchanged). On a
    /// failure the block's old bytes are put back (its space is allocated: that cannot run
    /// out), so it keeps its larger count, which reads the same.
    pub(super) fn set_gap(&self, st: &mut FileState, k: u64, gap: u32) -> Result<()> {
        self.write_gap(st, k, gap, true)
    }

    /// [`OpenFile::set_gap`]; `faults`: through the fault-injection points (not for
    /// [`OpenFile::settle_counts`], a best effort whose failure changes nothing a caller sees).
    fn write_gap(&self, st: &mut FileState, k: u64, gap: u32, faults: bool) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let fin = self.layout.final_block(st.size);
        let at = self.layout.cipher_offset(k);
        let mut plain = Vec::new();
        self.read_blocks(st, k, k, &mut plain)?;
        let mut old = vec![0u8; plain.len() + crate::format::block::BLOCK_OVERHEAD];
        st.file.read_exact_at(&mut old, at)?;
        let mut out = Vec::new();
        self.cipher.encrypt_blocks(k, &plain, fin, gap, &mut out);
        let r = if faults {
            crate::fault::write_all_at(&st.file, &out, at)
        } else {
            st.file.write_all_at(&out, at)
        };
        if let Err(e) = r {
            if st.file.write_all_at(&old, at).is_err() {
                tracing::error!(file = %self.label(), block = k, "could not restore a block after a failed write");
            }
            return Err(e.into());
        }
        // The interrupted-write marker holds the count before its block: keep it in step.
        if st.marked == Some(k)
            && crate::content::pending::mark(&st.file, self.ino, &self.cipher, k, 0, gap)
        {
            st.marked_gap = gap;
        }
        Ok(())
    }

    /// The last block in `lo..k` whose stored nonce is not all zeros (a written block), if
    /// any. Only ranges the backing file system may hold data for are read (`SEEK_DATA` /
    /// `SEEK_HOLE`; everything where it cannot tell), from the end.
    fn last_written_in(&self, st: &FileState, lo: u64, k: u64) -> Result<Option<u64>> {
        use rustix::fs::{SeekFrom, seek};
        let l = self.layout;
        let mut extents = Vec::new();
        let mut i = lo;
        while i < k {
            let off = l.cipher_offset(i);
            let d = match seek(&st.file, SeekFrom::Data(off)) {
                Ok(d) => d,
                Err(rustix::io::Errno::NXIO) => break,
                Err(_) => {
                    extents.push(i..k);
                    break;
                }
            };
            let s = i.max(l.block_at_cipher(d));
            if s >= k {
                break;
            }
            let e = match seek(&st.file, SeekFrom::Hole(d)) {
                Ok(h) if h > d => l.block_at_cipher(h - 1) + 1,
                _ => k,
            }
            .clamp(s + 1, k);
            extents.push(s..e);
            i = e;
        }
        for r in extents.into_iter().rev() {
            for b in r.rev() {
                if !is_hole(&self.nonce_at(st, b)?) {
                    return Ok(Some(b));
                }
            }
        }
        Ok(None)
    }

    /// Shrinks the counts of holes that may reach over blocks written since (see
    /// [`super::FileState::recount`]) to the holes right before their blocks, once a sync has
    /// made every written block durable (`synced`: the caller just did). Best effort: a count
    /// left larger reads the same. Rewriting counts changes no content, so the backing file
    /// keeps its modification time.
    pub(super) fn settle_counts(&self, st: &mut FileState, synced: bool) {
        if st.recount.is_empty() || !st.writable {
            return;
        }
        if !synced && let Err(e) = st.file.sync_data() {
            tracing::warn!(file = %self.label(), "counts of holes left as they are: {e}");
            return;
        }
        let blocks = std::mem::take(&mut st.recount);
        let fin = self.layout.final_block(st.size);
        let mtime = rustix::fs::fstat(&st.file)
            .ok()
            .map(|s| crate::vfs::kept_mtime::mtime_of(&s));
        let mut rewrote = false;
        for k in blocks.into_iter().filter(|k| *k <= fin) {
            let r = (|| -> Result<bool> {
                let n = self.nonce_at(st, k)?;
                let g = u64::from(block_gap(&n));
                // A hole now (punched), or no holes before it.
                if is_hole(&n) || g == 0 || g > k {
                    return Ok(false);
                }
                let exact = match self.last_written_in(st, k - g, k)? {
                    Some(w) => k - w - 1,
                    None => return Ok(false),
                };
                // Fits: smaller than `g`. `write_gap` authenticates the block first.
                self.write_gap(st, k, exact as u32, false)?;
                Ok(true)
            })();
            match r {
                Ok(r) => rewrote |= r,
                Err(e) => {
                    tracing::warn!(file = %self.label(), block = k, "count of holes left larger: {e}")
                }
            }
        }
        if let (true, Some(at)) = (rewrote, mtime) {
            let _ = crate::fsutil::set_mtime(&st.file, at);
        }
    }

    /// [`OpenFile::settle_counts`] under the file's lock (at a close, the last release).
    pub fn settle(&self) {
        if self.sparse() && !self.read_state().recount.is_empty() {
            self.settle_counts(&mut self.write_state(), false);
        }
    }

    /// Block `k` was stored with a count of holes that may reach over blocks written since
    /// the last sync; settled at the next fsync or close, or now when many are waiting.
    pub(super) fn recount(&self, st: &mut FileState, k: u64) {
        st.recount.insert(k);
        if st.recount.len() > MAX_RECOUNT {
            self.settle_counts(st, false);
        }
    }

    /// Decrypts blocks `first..` of `cipher` into `out` where some are holes: each block whose
    /// nonce is all zeros reads as zeros if it is a hole, and fails as damaged if not.
    pub(super) fn decrypt_with_holes(
        &self,
        st: &FileState,
        first: u64,
        cipher: &[u8],
        out: &mut [u8],
    ) -> Result<()> {
        let l = self.layout;
        let fin = l.final_block(st.size);
        let cbs = l.cipher_block_size() as usize;
        let overhead = crate::format::block::BLOCK_OVERHEAD;
        let mut po = 0;
        for (n, c) in cipher.chunks(cbs).enumerate() {
            let b = first + n as u64;
            let len = c.len().saturating_sub(overhead);
            let dst = &mut out[po..po + len];
            if is_hole(c) && len == l.block_size as usize && self.hole_run(st, b)?.is_some() {
                dst.fill(0);
            } else if self.cipher.decrypt_block(b, b == fin, c, dst).is_err() {
                out.fill(0);
                return Err(self.auth_failed(b));
            }
            po += len;
        }
        Ok(())
    }

    /// Extends the file to `target` with holes, when the gap is long enough (see
    /// [`MIN_HOLES`]): the old final block is filled up with zeros, the whole blocks after it
    /// are left unwritten, and the new final block is written with their count. Returns whether
    /// it did; on an error the file is as it was. The caller holds the write lock.
    pub(super) fn extend_with_holes(&self, st: &mut FileState, target: u64) -> Result<bool> {
        let l = self.layout;
        let bs = l.block_size;
        let f0 = l.final_block(st.size);
        let ft = l.final_block(target);
        let aligned = st.size.is_multiple_of(bs);
        // The first hole: the old final block itself when it is empty.
        let h0 = if aligned { f0 } else { f0 + 1 };
        // After a failed write-back (a full disk) the kernel goes on sending the pages it
        // accepted past it; holes would store those after a gap of zeros where the failed ones
        // belong. Encrypted zeros need the room the failed write lacked, so the file stays a
        // prefix (see `note_writeback_error`).
        if !self.sparse() || ft < h0 + MIN_HOLES || self.holes_refused() {
            return Ok(false);
        }
        let g0 = self.gap_before(st, f0)?;
        let before = if aligned { u64::from(g0) } else { 0 };
        let gap =
            u32::try_from(ft - h0 + before).map_err(|_| VfsError::Sys(rustix::io::Errno::FBIG))?;
        // The old final block, to put back if this fails.
        let mut tail = Vec::new();
        self.read_blocks(st, f0, f0, &mut tail)?;
        st.holes_seen = Default::default();
        st.no_holes = false;
        if st.marked.is_none_or(|m| f0 < m)
            && crate::content::pending::mark(&st.file, self.ino, &self.cipher, f0, 0, g0)
        {
            st.marked = Some(f0);
            st.marked_gap = g0;
        }
        let r = (|| -> Result<()> {
            if aligned {
                crate::fault::set_len(&st.file, l.cipher_offset(f0))?;
                // That freed room `KEEP_SIZE` had kept past the end (ext4 lets it go at any
                // shortening): kept again from the new final block on, what the writes there
                // store (the room was there a moment ago).
                if st.reserved > l.cipher_offset(ft) {
                    let from = l.cipher_offset(ft);
                    let _ = rustix::fs::fallocate(
                        &st.file,
                        rustix::fs::FallocateFlags::KEEP_SIZE,
                        from,
                        st.reserved - from,
                    );
                }
            } else {
                let mut full = tail.clone();
                full.resize(bs as usize, 0);
                let mut out = Vec::new();
                self.cipher.encrypt_blocks(f0, &full, ft, g0, &mut out);
                crate::fault::write_all_at(&st.file, &out, l.cipher_offset(f0))?;
            }
            let zeros = vec![0u8; (target - l.plain_offset(ft)) as usize];
            let mut out = Vec::new();
            self.cipher.encrypt_blocks(ft, &zeros, ft, gap, &mut out);
            crate::fault::write_all_at(&st.file, &out, l.cipher_offset(ft))?;
            Ok(())
        })();
        if let Err(e) = r {
            self.restore_tail(st, Some((&tail, g0)));
            return Err(e);
        }
        st.size = target;
        // The empty old final block is a hole now: the new final block takes over its count,
        // and with it its place among the counts to settle (see `FileState::recount`).
        if aligned && st.recount.remove(&f0) {
            self.recount(st, ft);
        }
        Ok(true)
    }

    /// fallocate(2) mode 0: the file covers `end` (unless `keep_size`), and the holes in
    /// `[off, end)` are written as encrypted zeros, so that writes there later need no new space
    /// (what the call promises); with `keep_size`, the space past the end is reserved in the
    /// backing file (also allocated without changing its size).
    pub fn allocate(&self, off: u64, end: u64, keep_size: bool) -> Result<()> {
        let mut st = self.write_state();
        if !st.writable {
            return Err(VfsError::Sys(rustix::io::Errno::BADF));
        }
        let l = self.layout;
        let stop = end.min(st.size);
        if self.sparse() && !st.no_holes && off < stop {
            let (first, last) = (l.block_of(off), l.block_of(stop - 1));
            let mut i = first;
            while i <= last {
                // Every block's nonce is looked at: `SEEK_HOLE` cannot be trusted to find the
                // holes (a file system with only the generic one says there are none, and
                // holes a copy filled with zeros are allocated).
                if !is_hole(&self.nonce_at(&st, i)?) {
                    i += 1;
                    continue;
                }
                // The holes from there on, as one run of blocks.
                let mut j = i;
                while j <= last && j < l.final_block(st.size) && is_hole(&self.nonce_at(&st, j)?) {
                    j += 1;
                }
                if j > i && self.hole_run(&st, i)?.is_some() {
                    let zeros = vec![0u8; super::ZERO_CHUNK as usize];
                    let mut at = l.plain_offset(i);
                    let to = l.plain_offset(j);
                    while at < to {
                        let n = (to - at).min(super::ZERO_CHUNK);
                        self.write_locked(&mut st, at, &zeros[..n as usize], None)?;
                        at += n;
                    }
                }
                i = j + 1;
            }
        }
        if !keep_size && end > st.size {
            // Only the range is allocated: a gap between the end and `off` is left as holes
            // where the file may have them (ext4 allocates nothing there either; a range far
            // past the end used to be refused with ENOSPC, or to write the gap as zeros).
            let old = st.size;
            let mut r = Ok(());
            if off > old {
                r = self.resize_locked(&mut st, off, true);
            }
            if r.is_ok() {
                r = self.resize_locked(&mut st, end, false);
            }
            if r.is_err() && st.size != old && self.truncate_locked(&mut st, old).is_err() {
                tracing::error!(file = %self.label(), "could not undo a failed allocation");
            }
            r?;
        } else if keep_size {
            self.reserve_past_end(&mut st, off, end)?;
        }
        // The modification and change times move as on a local file system (ext4 moves them
        // for every allocation, also of blocks it had), whether or not a block was written.
        touch_times(&st)
    }

    /// For fallocate `KEEP_SIZE` over `[off, end)` reaching past the end of the file: the
    /// backing file keeps room (allocated past its end, its size unchanged) for the cipher
    /// bytes the writes growing the file there will store, so that they need no new space, as
    /// the call promises (ENOSPC now if there is none, as on ext4; before, nothing was
    /// reserved: found with xfstests' generic/213). In a sparse file only what such writes
    /// store: the old final block filled up and the blocks from `off` on, the gap between left
    /// to become holes (unless too short for holes: then all of it); without holes the whole
    /// gap, which is written as encrypted zeros. A backing file system without fallocate
    /// reserves nothing (as before).
    pub(super) fn reserve_past_end(&self, st: &mut FileState, off: u64, end: u64) -> Result<()> {
        let l = self.layout;
        if end <= st.size {
            return Ok(());
        }
        let tail = l.cipher_size(st.size);
        let first = l.block_of(off.max(st.size));
        let f0 = l.final_block(st.size);
        let mut ranges = vec![(tail, l.cipher_size(end))];
        if self.sparse() && first > f0 + 1 + MIN_HOLES {
            // The old final block as a full block, and the blocks from `off`'s on.
            ranges = vec![
                (tail, l.cipher_offset(f0 + 1).max(tail)),
                (l.cipher_offset(first), l.cipher_size(end)),
            ];
        }
        crate::fault::check("fallocate")?;
        for (from, to) in ranges {
            if to <= from {
                continue;
            }
            match rustix::fs::fallocate(
                &st.file,
                rustix::fs::FallocateFlags::KEEP_SIZE,
                from,
                to - from,
            ) {
                Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => {}
                Err(e) => return Err(e.into()),
            }
        }
        st.reserved = st.reserved.max(l.cipher_size(end));
        Ok(())
    }

    /// fallocate(2) `PUNCH_HOLE | KEEP_SIZE` in a sparse file: `[off, end)` (cut at the end of
    /// the file) reads as zeros; the whole blocks inside it, but for the final block, become
    /// holes and give their space back, the bytes at its edges are stored as encrypted zeros.
    /// The written block after the new run is given its count first (a count over blocks still
    /// written reads the same, so a crash between the two steps loses nothing), then the
    /// blocks are punched out of the cipher file. EOPNOTSUPP in a file without holes.
    pub fn punch(&self, off: u64, end: u64) -> Result<()> {
        let mut st = self.write_state();
        if !st.writable {
            return Err(VfsError::Sys(rustix::io::Errno::BADF));
        }
        if !self.sparse() {
            return Err(VfsError::NotSupported(
                "hole punching in a file without holes",
            ));
        }
        let l = self.layout;
        let bs = l.block_size;
        let end = end.min(st.size);
        if off >= end {
            // Nothing to punch; the times move all the same, as on ext4 (the kernel sets them
            // itself only with the writeback cache).
            return touch_times(&st);
        }
        // The whole blocks inside the range, the final block left out.
        let a = off.div_ceil(bs);
        let b = (end / bs).min(l.final_block(st.size));
        if b <= a {
            return self.zero_locked(&mut st, off, end);
        }
        self.zero_locked(&mut st, off, l.plain_offset(a))?;
        self.zero_locked(&mut st, l.plain_offset(b), end)?;
        // The run the blocks join: holes right before them, and those up to the next written
        // block at or after `b`.
        let start = match a.checked_sub(1) {
            Some(p) if is_hole(&self.nonce_at(&st, p)?) => {
                self.hole_run(&st, p)?.map_or(a, |r| r.start)
            }
            _ => a,
        };
        let (k, gk) = self.next_written(&st, b)?;
        // The blocks between `b` and `k` must be holes already (counted by `k`), not damage.
        if k > b && k.checked_sub(u64::from(gk)).is_none_or(|s| s > b) {
            return Err(self.integrity(format!(
                "block {b} is zeroed (no count of holes reaches it)"
            )));
        }
        let Ok(run) = u32::try_from(k - start) else {
            // A run longer than a count holds: encrypted zeros instead.
            return self.zero_locked(&mut st, l.plain_offset(a), l.plain_offset(b));
        };
        // Never smaller than `k`'s count now: that may reach over blocks written since the
        // last sync (block `a - 1`, say), which a power loss could turn back into holes (see
        // `FileState::recount`).
        let gap = run.max(gk);
        *st.holes_seen.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
        st.no_holes = false;
        self.set_gap(&mut st, k, gap)?;
        // Settled later, with the others (not now: the blocks are not punched yet).
        st.recount.insert(k);
        // The count on the disk before the blocks go (a power loss in between must not leave
        // punched blocks that nothing counts).
        crate::fault::check("fsync")?;
        st.file.sync_data()?;
        crate::fault::check("fallocate")?;
        let (from, len) = (l.cipher_offset(a), l.cipher_offset(b) - l.cipher_offset(a));
        let punched = rustix::fs::fallocate(
            &st.file,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            from,
            len,
        );
        match punched {
            Ok(()) => Ok(()),
            // A backing file system that cannot punch: zeros (holes all the same, allocated).
            Err(rustix::io::Errno::OPNOTSUPP) => {
                let zeros = vec![0u8; l.cipher_block_size() as usize];
                for i in a..b {
                    crate::fault::write_all_at(&st.file, &zeros, l.cipher_offset(i))?;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Sets the backing file's modification (and so change) time to now: a fallocate moves them
/// on a local file system also where it writes nothing.
pub(super) fn touch_times(st: &FileState) -> Result<()> {
    crate::fsutil::set_mtime(
        &st.file,
        rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
    )?;
    Ok(())
}
