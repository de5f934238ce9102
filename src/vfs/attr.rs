//! File attributes as the model reports them (plaintext sizes), independent of FUSE types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{FileType, Stat};

use crate::format::offsets::Layout;
use crate::names::Names;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Kind {
        match FileType::from_raw_mode(mode) {
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::CharacterDevice => Kind::CharDev,
            FileType::BlockDevice => Kind::BlockDev,
            _ => Kind::File,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    /// Plaintext size.
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    /// Which of the files that had this inode number (see `export.rs`).
    pub generation: u64,
}

pub(super) fn time(sec: i64, nsec: i64) -> SystemTime {
    let ns = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, ns)
    } else {
        UNIX_EPOCH - Duration::new(sec.unsigned_abs(), 0) + Duration::new(0, ns)
    }
}

impl Attr {
    /// Attributes for a listing's `.` and `..` in readdirplus, which the kernel does not read:
    /// a directory `ino`, the rest zero.
    pub fn placeholder_dir(ino: u64) -> Attr {
        Attr {
            ino,
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            kind: Kind::Dir,
            perm: 0,
            nlink: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 0,
            generation: 0,
        }
    }

    /// Builds attributes from a backing `stat`, with `ino` already mapped and the plaintext size
    /// computed from the cipher size (regular files) or the stored target (symlinks).
    pub fn from_stat(st: &Stat, ino: u64, layout: &Layout) -> Attr {
        let kind = Kind::from_mode(st.st_mode);
        let size = match kind {
            // An impossible cipher size (damaged file) shows as 0; reading it gives EIO.
            Kind::File => layout.plain_size(st.st_size as u64).unwrap_or(0),
            Kind::Symlink => Names::symlink_plain_len(st.st_size as u64),
            _ => st.st_size as u64,
        };
        Attr {
            ino,
            size,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec as i64),
            mtime: time(st.st_mtime, st.st_mtime_nsec as i64),
            ctime: time(st.st_ctime, st.st_ctime_nsec as i64),
            kind,
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: 4096,
            generation: 0,
        }
    }
}
