//! Room on the disk held for the audit log while a mount writes it.
//!
//! The log is fail-closed: an open or create whose record cannot be written is refused. Without
//! room of its own, a disk filled by file data would therefore stop every open at once, reads
//! included, and leave nothing to copy files off with. So a mount allocates the segment it
//! writes to [`ROOM`] bytes, whatever it holds yet (fallocate `KEEP_SIZE`: its size, and every
//! reader, sees only the records), and holds on to it while the disk is full: when the disk has
//! no room to spare for the next segment ([`free_for_room`]: it is asked first, so that a
//! failing allocation never takes the last free blocks from other writers for a moment), the
//! log goes on in the current one, into the room held beyond [`SEGMENT_BYTES`] (about 11,000
//! opens), and asks again every [`RETRY_EVERY`] bytes. A new segment gets its room once it is
//! the log's (after the closing checkpoint of the one before). A closed segment, and the current
//! one at a clean unmount, let their unused room go (ftruncate to their own size).

use std::fs::File;
use std::io;

use super::SEGMENT_BYTES;

/// How far the segment being written is allocated: its 16 MiB and half as much again.
pub(super) const ROOM: u64 = SEGMENT_BYTES + SEGMENT_BYTES / 2;

/// While the next segment cannot be given its room, how many bytes of records go by before
/// the roll is tried again.
pub(super) const RETRY_EVERY: u64 = 256 << 10;

/// The room state of the segment being written.
#[derive(Debug, Default)]
pub(super) struct Room {
    /// A mount asked for room ([`super::AuditLog::hold_room`]); offline commands do not.
    pub(super) wanted: bool,
    /// The segment being written holds its room.
    pub(super) held: bool,
    /// A roll that found no room for the next segment is tried again at this length.
    pub(super) retry_at: u64,
}

/// Free space the disk must have beyond a segment's room before the room is taken.
const SPARE: u64 = SEGMENT_BYTES / 2;

/// `Ok` if the file system under `dir` has room for a segment's and [`SPARE`] besides (what
/// an unprivileged writer may use: `f_bavail`); the error says what it has.
pub(super) fn free_for_room(dir: &std::path::Path) -> io::Result<()> {
    let st = rustix::fs::statvfs(dir)?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if free < ROOM + SPARE {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!(
                "{} MiB free, {} MiB wanted",
                free >> 20,
                (ROOM + SPARE) >> 20
            ),
        ));
    }
    Ok(())
}

/// What allocating a segment's room gave.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Held {
    Yes,
    /// The file system cannot allocate ahead (fallocate unsupported): the log goes on without.
    Unsupported,
}

/// Allocates `file` up to [`ROOM`] bytes without changing its size. On failure (no room)
/// whatever part was allocated is let go again and the error returned.
pub(super) fn hold(file: &File) -> io::Result<Held> {
    use rustix::io::Errno;
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, ROOM) {
        Ok(()) => Ok(Held::Yes),
        Err(e) if e == Errno::OPNOTSUPP || e == Errno::NOSYS => Ok(Held::Unsupported),
        Err(e) => {
            let _ = let_go(file);
            Err(e.into())
        }
    }
}

/// Gives back what `file` holds beyond its size (ftruncate to the size it has: nothing
/// written is cut).
pub(super) fn let_go(file: &File) -> io::Result<()> {
    let len = file.metadata()?.len();
    file.set_len(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn room_is_held_beyond_the_size_and_let_go_without_cutting_anything() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("seg");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        f.write_all(b"line\n").unwrap();
        if hold(&f).unwrap() == Held::Unsupported {
            return; // the test's file system cannot allocate ahead
        }
        let m = f.metadata().unwrap();
        assert_eq!(m.len(), 5, "the size is the records'");
        assert!(
            m.blocks() * 512 >= ROOM,
            "{} bytes allocated",
            m.blocks() * 512
        );
        // Appends go on at the end of the records, into the room.
        f.write_all(b"more\n").unwrap();
        let_go(&f).unwrap();
        let m = f.metadata().unwrap();
        assert!(
            m.blocks() * 512 < 1 << 20,
            "{} bytes still held",
            m.blocks() * 512
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"line\nmore\n");
    }
}
