//! Write-behind for streaming writes. The backing file system keeps a written file's pages dirty
//! until its own writeback thresholds (seconds later, or gigabytes) or an fsync: a 1 GiB `dd
//! conv=fsync` through kmsfs encrypted everything into the page cache first and only then, at
//! the fsync, wrote it all to the disk, the CPU and the disk taking turns. Once a file has been
//! written in large pieces, one after the other, for [`WINDOW`] bytes of ciphertext, those bytes
//! are sent to the disk at once with `sync_file_range(SYNC_FILE_RANGE_WRITE)`: it starts the
//! write-out and does not wait for it, and it takes no error away from the next `fsync` (a
//! write-back error stays recorded for it). Small or scattered writes never start it, so a
//! temporary file written and deleted within seconds still costs no disk writes.

use std::fs::File;
use std::ops::Range;

/// Writes smaller than this (in ciphertext bytes) neither start nor extend a run.
pub const MIN_PIECE: u64 = 128 << 10;
/// A run of this many contiguous ciphertext bytes is sent to the disk.
pub const WINDOW: u64 = 4 << 20;
const PAGE: u64 = 4096;

/// The ciphertext range written in large contiguous pieces since it was last sent to the disk.
#[derive(Debug, Default)]
pub struct WriteBehind {
    run: Option<Range<u64>>,
}

impl WriteBehind {
    /// Notes a write of ciphertext bytes `[off, off + len)`; returns the range to start writing
    /// out when the run it continues has reached [`WINDOW`]: whole pages, the partial page at
    /// its end kept for the next write (which usually rewrites it: a file's final block moves
    /// along as it grows).
    pub fn note(&mut self, off: u64, len: u64) -> Option<Range<u64>> {
        if len < MIN_PIECE {
            return None;
        }
        let end = off + len;
        let run = match self.run.take() {
            Some(r) if r.start <= off && off <= r.end => r.start..end.max(r.end),
            _ => off..end,
        };
        let cut = run.end / PAGE * PAGE;
        if cut.saturating_sub(run.start) < WINDOW {
            self.run = Some(run);
            return None;
        }
        self.run = Some(cut..run.end);
        Some(run.start..cut)
    }
}

/// Starts writing `range` of `file` out to the disk; does not wait. A failure to start leaves
/// the pages to the usual writeback (and an I/O error shows at the next fsync).
pub fn start_writeout(file: &File, range: Range<u64>) -> std::io::Result<()> {
    let off = i64::try_from(range.start).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let len =
        i64::try_from(range.end - range.start).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    sync_file_range(file, off, len, libc::SYNC_FILE_RANGE_WRITE)
}

/// `sync_file_range(2)` of `len` bytes of `file` from `off` (0: to the end) with `flags`.
pub fn sync_file_range(
    file: &File,
    off: i64,
    len: i64,
    flags: libc::c_uint,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor `file` owns for the duration of the call; it
    // reads and writes no memory of ours.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), off, len, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    /// A 1 MiB plaintext write's ciphertext (256 blocks of 4 KiB + 28), and the empty final block
    /// written after it.
    const PIECE: u64 = 256 * (4096 + 28);

    #[test]
    fn a_stream_of_large_writes_is_sent_in_windows_of_whole_pages() {
        let mut wb = WriteBehind::default();
        let base = 64; // after a header
        let mut sent = Vec::new();
        for i in 0..16 {
            if let Some(r) = wb.note(base + i * PIECE, PIECE + 28) {
                sent.push(r);
            }
        }
        assert!(sent.len() >= 3, "{sent:?}");
        assert_eq!(sent[0].start, base);
        for w in sent.windows(2) {
            assert_eq!(w[0].end, w[1].start, "contiguous: {sent:?}");
        }
        for r in &sent {
            assert_eq!(r.end % PAGE, 0);
            assert!(r.end - r.start >= WINDOW);
            assert!(r.end - r.start < WINDOW + PIECE + PAGE);
        }
        assert!(sent.last().map_or(0, |r| r.end) <= base + 16 * PIECE + 28);
    }

    #[test]
    fn small_or_scattered_writes_send_nothing() {
        let mut wb = WriteBehind::default();
        for i in 0..10_000u64 {
            assert_eq!(wb.note(i * 4124, 4124), None);
        }
        // Large but each in a new place (backwards, or after a gap).
        for i in 0..64u64 {
            assert_eq!(wb.note((1000 - i) * 2 * MIB, MIB), None);
            assert_eq!(wb.note(5000 * MIB + i * 2 * MIB, MIB), None);
        }
    }

    #[test]
    fn a_rewrite_inside_the_run_extends_nothing_and_breaks_nothing() {
        let mut wb = WriteBehind::default();
        assert_eq!(wb.note(0, 2 * MIB), None);
        assert_eq!(wb.note(MIB, MIB), None);
        let r = wb.note(2 * MIB, 2 * MIB).expect("window reached");
        assert_eq!(r, 0..4 * MIB);
    }

    #[test]
    fn the_write_out_starts_on_a_written_file() {
        use std::io::Write;
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(&vec![7u8; 8 << 20]).expect("write");
        start_writeout(&f, 0..(8 << 20)).expect("sync_file_range on a written file");
        // An offset past i64 is refused before the call.
        assert!(start_writeout(&f, u64::MAX - 1..u64::MAX).is_err());
    }
}
