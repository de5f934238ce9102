//! getattr and setattr (chmod, chown, truncate, utimens).

use std::time::SystemTime;

use rustix::fs::{AtFlags, Mode, Timespec, Timestamps};

use super::{Attr, Caller, Kind, Result, Vfs};

/// A time to set: a given instant or "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    At(SystemTime),
    Now,
}

/// What setattr changes; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

fn timespec(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(SetTime::At(t)) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos().into(),
            },
            Err(e) => {
                let d = e.duration();
                let (mut s, mut n) = (-(d.as_secs() as i64), -(i64::from(d.subsec_nanos())));
                if n < 0 {
                    s -= 1;
                    n += 1_000_000_000;
                }
                Timespec {
                    tv_sec: s,
                    tv_nsec: n as _,
                }
            }
        },
    }
}

impl Vfs {
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        self.touch();
        if super::is_control(ino) {
            return self.ctl_getattr(ino);
        }
        let node = self.node(ino)?;
        self.stat_node(&node)
    }

    /// Changes attributes. `caller` (the requesting process) makes a truncate by path subject
    /// to the key policy; in-process callers pass `None`.
    pub fn setattr(
        &self,
        ino: u64,
        fh: Option<u64>,
        set: &SetAttr,
        caller: Option<&Caller>,
    ) -> Result<Attr> {
        self.touch();
        if super::is_control(ino) {
            return self.ctl_setattr(ino, set);
        }
        let node = self.node(ino)?;
        let changes = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.size.is_some()
            || set.atime.is_some()
            || set.mtime.is_some();
        if changes {
            self.check_writable()?;
        }
        if let Some(size) = set.size {
            self.truncate_ino(&node, fh, size, caller)?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            crate::fault::check("chown")?;
            rustix::fs::chownat(
                &node.fd,
                "",
                set.uid.map(rustix::fs::Uid::from_raw),
                set.gid.map(rustix::fs::Gid::from_raw),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(mode) = set.mode {
            // Linux has no mode on symlinks.
            if node.kind != Kind::Symlink {
                crate::fault::check("chmod")?;
                rustix::fs::chmodat(
                    rustix::fs::CWD,
                    node.proc_path().as_str(),
                    Mode::from(mode & 0o7777),
                    AtFlags::empty(),
                )?;
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = Timestamps {
                last_access: timespec(set.atime),
                last_modification: timespec(set.mtime),
            };
            crate::fault::check("utimens")?;
            if node.kind == Kind::Symlink {
                rustix::fs::utimensat(
                    &node.fd,
                    "",
                    &ts,
                    AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
                )?;
            } else {
                rustix::fs::utimensat(
                    rustix::fs::CWD,
                    node.proc_path().as_str(),
                    &ts,
                    AtFlags::empty(),
                )?;
            }
        }
        self.stat_node(&node)
    }
}
