//! copy_file_range(2) within the mount: the source's blocks are decrypted and written into the
//! destination's (its own key) here, so the data does not cross into the kernel and back
//! (two round trips and two copies per MiB otherwise; `cp` uses it for every regular file).

use rustix::io::Errno;

use super::{Result, Vfs, VfsError, WriteFrom};

/// Copied per read and write: the kernel's largest READ and WRITE (blocks within it are
/// encrypted and decrypted in parallel, as for theirs).
const CHUNK: u64 = 1 << 20;

/// Copied at most per call: the caller gets a short count and asks again (as with a signal),
/// so that one call does not hold the destination's inode lock in the kernel for seconds.
pub const MAX_COPY: u64 = 64 << 20;

impl Vfs {
    /// Copies up to `len` bytes from `off_in` of the file open as `fh_in` to `off_out` of
    /// the file open as `fh_out` (the same file or another of this mount) and returns how many
    /// it copied: fewer at the source's end, or where a later step failed after some were
    /// copied (the next call reports that error, as write(2) does), and at most [`MAX_COPY`].
    /// Each byte is read and written as through the handles (access time, audit counts,
    /// append-only files, ENOSPC and its retry). The kernel checked the arguments (open modes,
    /// no O_APPEND destination, no overlap within one file, flags 0) and wrote back what its
    /// page cache held of both ranges.
    ///
    /// A control file on either side: EOPNOTSUPP, on which the kernel copies through read and
    /// write itself (its documents are made when read and applied when closed).
    pub fn copy_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u64> {
        self.touch();
        if super::is_control_handle(fh_in) || super::is_control_handle(fh_out) {
            return Err(VfsError::Sys(Errno::OPNOTSUPP));
        }
        // What the kernel checked already, checked against the handles themselves.
        let readable = self.handles.get(&fh_in).map(|h| h.reads);
        let writable = self.handles.get(&fh_out).map(|h| h.writes && !h.append);
        match (readable, writable) {
            (None, _) => return Err(VfsError::BadHandle(fh_in)),
            (_, None) => return Err(VfsError::BadHandle(fh_out)),
            (Some(false), _) | (_, Some(false)) => return Err(VfsError::Sys(Errno::BADF)),
            _ => {}
        }
        off_in.checked_add(len).ok_or(VfsError::Sys(Errno::INVAL))?;
        off_out
            .checked_add(len)
            .filter(|e| i64::try_from(*e).is_ok())
            .ok_or(VfsError::Sys(Errno::FBIG))?;
        let len = len.min(MAX_COPY);
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK) as u32;
            let step = self
                .read_with(fh_in, off_in + done, n, |d| {
                    if d.is_empty() {
                        return Ok(0);
                    }
                    self.write_from(fh_out, off_out + done, d, WriteFrom::Caller)
                })
                .and_then(|r| r);
            match step {
                Ok(0) => break,
                Ok(w) => {
                    done += u64::from(w);
                    if w < n {
                        break;
                    }
                }
                Err(_) if done > 0 => break,
                Err(e) => return Err(e),
            }
        }
        self.control
            .metrics
            .copied_bytes
            .fetch_add(done, std::sync::atomic::Ordering::Relaxed);
        Ok(done)
    }
}
