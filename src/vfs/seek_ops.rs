//! lseek(2) `SEEK_DATA` and `SEEK_HOLE`: where a file's data and holes are (see
//! `OpenFile::seek`), and the range an answer takes for a hole, which pages the kernel holds
//! written but not yet sent could prove wrong (see `fuse/lseek.rs`).

use std::ops::Range;

use rustix::io::Errno;

use super::{Result, Vfs, VfsError};

impl Vfs {
    /// lseek(2) `SEEK_DATA` or `SEEK_HOLE` (`hole`) from `offset` through handle `fh` of inode
    /// `ino` (see `OpenFile::seek`); ENXIO at or past the end and for a negative offset, as
    /// on ext4. A control file is data all through. What the kernel still holds in its page
    /// cache is not seen here (see [`Vfs::hole_taken`]).
    pub fn seek(&self, ino: u64, fh: u64, offset: i64, hole: bool) -> Result<i64> {
        self.touch();
        let nxio = || VfsError::Sys(Errno::NXIO);
        let off = u64::try_from(offset).map_err(|_| nxio())?;
        let at = if super::is_control_handle(fh) {
            match self.getattr(ino)?.size {
                size if off >= size => return Err(nxio()),
                size if hole => size,
                _ => off,
            }
        } else {
            let (f, _) = self.handle_file(fh)?;
            f.seek(off, hole).inspect_err(|e| {
                if e.is_integrity() {
                    self.audit_integrity(None, &e.to_string());
                }
            })?
        };
        // Within the file's size, which fits an off_t.
        i64::try_from(at).map_err(|_| nxio())
    }

    /// The range that `answer`, given by [`Vfs::seek`] for the same arguments, takes for a
    /// hole (or for nothing, past the end), where a page written through the kernel's cache
    /// and not yet sent would make it wrong; `None` where no such page could (an answer at
    /// `offset` itself, an error other than ENXIO). `SEEK_DATA`: from the offset to the data
    /// found, or to the end of any file for ENXIO; `SEEK_HOLE`: the hole found, to the next
    /// data, or from the end of the file here on (the kernel's may be further).
    pub fn hole_taken(
        &self,
        ino: u64,
        fh: u64,
        offset: i64,
        hole: bool,
        answer: &Result<i64>,
    ) -> Option<Range<u64>> {
        let off = u64::try_from(offset).ok()?;
        let found = match answer {
            Err(VfsError::Sys(Errno::NXIO)) => return Some(off..u64::MAX),
            Err(_) => return None,
            Ok(at) => *at,
        };
        let at = u64::try_from(found).ok()?;
        if !hole {
            return (at > off).then_some(off..at);
        }
        let next = self.seek(ino, fh, found, false).ok();
        Some(at..next.and_then(|d| u64::try_from(d).ok()).unwrap_or(u64::MAX))
    }

    /// Whether inode `ino` has a handle open for writing: the kernel may then hold pages
    /// written through it that it has not sent yet (the writeback cache, a shared writable
    /// mapping).
    pub fn open_for_writing(&self, ino: u64) -> bool {
        self.has_writer(ino, false)
    }

    /// Whether inode `ino` has a handle open for writing (`overwrites`: without O_APPEND). A
    /// walk over the open handles.
    pub(super) fn has_writer(&self, ino: u64, overwrites: bool) -> bool {
        let writing = |h: &super::Handle| if overwrites { h.overwrites } else { h.writes };
        self.handles.iter().any(|h| h.ino == ino && writing(&h))
    }
}
