//! Following remounts. `mount -o remount,ro|rw|noatime|…` changes the mount's flags in the
//! kernel, and FUSE tells the daemon nothing. Whether the volume is read-only decides whether
//! kmsfs completes an interrupted write when a file is opened (a write to the backing store),
//! and `noatime` whether backing files are opened `O_NOATIME`; so a thread waits for changes to
//! the mount table (`/proc/self/mountinfo` polls POLLPRI on every change) and gives the model
//! the mount's flags as they are now. Read-only is the file system's (the superblock's, which a
//! plain remount sets; a read-only bind mount elsewhere leaves it alone), `noatime` this
//! mount's own.

use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::vfs::Vfs;

/// A mount's flags as the model needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub read_only: bool,
    pub noatime: bool,
}

/// One line of mountinfo(5), the fields needed here (bytes: a mount point need not be UTF-8).
struct Line<'a> {
    id: u64,
    mount_point: Vec<u8>,
    per_mount: &'a [u8],
    fs_type: &'a [u8],
    source: Vec<u8>,
    super_options: &'a [u8],
}

fn parse(line: &[u8]) -> Option<Line<'_>> {
    let sep = line.windows(3).position(|w| w == b" - ")?;
    let (before, after) = (&line[..sep], &line[sep + 3..]);
    let f: Vec<&[u8]> = before.split(|&b| b == b' ').collect();
    let a: Vec<&[u8]> = after.split(|&b| b == b' ').collect();
    Some(Line {
        id: std::str::from_utf8(f.first()?).ok()?.parse().ok()?,
        mount_point: crate::fsutil::unescape_mount_field(f.get(4)?),
        per_mount: f.get(5)?,
        fs_type: a.first()?,
        source: crate::fsutil::unescape_mount_field(a.get(1)?),
        super_options: a.get(2)?,
    })
}

fn has(options: &[u8], o: &[u8]) -> bool {
    options.split(|&b| b == b',').any(|x| x == o)
}

fn lines(mountinfo: &[u8]) -> impl DoubleEndedIterator<Item = Line<'_>> {
    mountinfo.split(|&b| b == b'\n').filter_map(parse)
}

/// The id of the kmsfs mount of `source` at `mount_point` in `mountinfo` (the topmost, when
/// several are stacked there; one of another source only if none is of this one).
pub fn find(mountinfo: &[u8], mount_point: &Path, source: &str) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let want = mount_point.as_os_str().as_bytes();
    let ours: Vec<Line<'_>> = lines(mountinfo)
        .filter(|l| l.mount_point == want && l.fs_type == b"fuse.kmsfs")
        .collect();
    ours.iter()
        .rev()
        .find(|l| l.source == source.as_bytes())
        .or(ours.last())
        .map(|l| l.id)
}

/// The flags of mount `id` in `mountinfo`; `None` once it is gone.
pub fn flags(mountinfo: &[u8], id: u64) -> Option<Flags> {
    let l = lines(mountinfo).find(|l| l.id == id)?;
    Some(Flags {
        read_only: has(l.super_options, b"ro"),
        noatime: has(l.per_mount, b"noatime"),
    })
}

fn read_all(f: &mut std::fs::File) -> io::Result<Vec<u8>> {
    f.rewind()?;
    let mut s = Vec::new();
    f.read_to_end(&mut s)?;
    Ok(s)
}

/// How often the mount table is read again without a change event: a remount made from
/// another mount namespace changes the superblock without one in ours.
const REREAD: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts following the kmsfs mount of `source` at `mount_point` (absolute and without symbolic
/// links, as the mount table has it; the mount must exist). Ends when the mount is gone. A
/// failure to start is logged, never fatal: the mount works, with the flags it was made with.
pub fn follow(vfs: Arc<Vfs>, mount_point: PathBuf, source: &str) {
    if let Err(e) = start(vfs, &mount_point, source) {
        tracing::warn!(
            "remounts of {} will not be followed: {e}",
            mount_point.display()
        );
    }
}

fn start(vfs: Arc<Vfs>, mount_point: &Path, source: &str) -> io::Result<()> {
    let mut f = std::fs::File::open("/proc/self/mountinfo")?;
    let id = find(&read_all(&mut f)?, mount_point, source)
        .ok_or_else(|| io::Error::other("not in the mount table"))?;
    let mount_point = mount_point.to_path_buf();
    // The thread and a write refused as read-only (`Vfs::check_writable`, which reads the
    // table itself so as not to refuse a write the kernel already lets through) take turns:
    // a remount to read-write that starts the walk for interrupted writes (`Vfs::remounted`)
    // is over before either goes on.
    let turn = Arc::new(std::sync::Mutex::new(()));
    {
        let (turn, weak) = (turn.clone(), Arc::downgrade(&vfs));
        vfs.set_mount_refresh(Box::new(move || {
            let Some(vfs) = weak.upgrade() else {
                return;
            };
            let _turn = turn.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(now) = std::fs::read("/proc/self/mountinfo")
                .ok()
                .and_then(|t| flags(&t, id))
            {
                vfs.remounted(now.read_only, now.noatime);
            }
        }));
    }
    std::thread::Builder::new()
        .name("kmsfs-remount".into())
        .spawn(move || {
            loop {
                let turn = turn.lock().unwrap_or_else(|p| p.into_inner());
                // Read before waiting: a change between the two wakes the poll at once.
                match read_all(&mut f) {
                    Ok(t) => {
                        let Some(now) = flags(&t, id) else {
                            return;
                        };
                        if vfs.remounted(now.read_only, now.noatime) {
                            tracing::info!(
                                "{} remounted: {}{}",
                                mount_point.display(),
                                if now.read_only {
                                    "read-only"
                                } else {
                                    "read-write"
                                },
                                if now.noatime { ", noatime" } else { "" }
                            );
                        }
                    }
                    Err(e) => tracing::warn!("reading the mount table: {e}"),
                }
                drop(turn);
                use std::os::fd::AsRawFd;
                let mut p = libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLPRI | libc::POLLERR,
                    revents: 0,
                };
                let ms = REREAD.as_millis() as libc::c_int;
                // SAFETY: one valid pollfd for the duration of the call.
                if unsafe { libc::poll(&mut p, 1, ms) } < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        tracing::warn!("waiting for mount table changes: {e}");
                        std::thread::sleep(REREAD);
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &[u8] = b"\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:45 / /mnt/a\\040b rw,nosuid,nodev,relatime shared:50 - fuse.kmsfs /srv/c rw,user_id=0,group_id=0
91 22 0:46 / /mnt/x rw,nosuid,nodev,noatime shared:51 - fuse.kmsfs /srv/d ro,user_id=0,group_id=0
92 91 0:47 / /mnt/x rw,nosuid,nodev,relatime shared:52 - fuse.kmsfs /srv/e rw,user_id=0,group_id=0
93 22 0:48 / /mnt/y ro,relatime shared:53 - fuse.sshfs host: rw,user_id=0
94 22 0:49 / /media/caf\xe9 rw,relatime shared:54 - vfat /dev/sdb1 rw
95 22 0:50 / /mnt/caf\xe9 rw,relatime shared:55 - fuse.kmsfs /srv/\xe9 rw,user_id=0
";

    #[test]
    fn the_topmost_kmsfs_mount_at_a_path_is_found_preferring_its_source() {
        assert_eq!(find(INFO, Path::new("/mnt/a b"), "/srv/c"), Some(90));
        assert_eq!(find(INFO, Path::new("/mnt/x"), "/srv/e"), Some(92));
        assert_eq!(find(INFO, Path::new("/mnt/x"), "/srv/d"), Some(91));
        assert_eq!(find(INFO, Path::new("/mnt/x"), "/elsewhere"), Some(92));
        assert_eq!(find(INFO, Path::new("/mnt/y"), "host:"), None);
        assert_eq!(find(INFO, Path::new("/mnt"), "/srv/c"), None);
    }

    #[test]
    fn mount_points_need_not_be_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/mnt/caf\xe9"));
        assert_eq!(find(INFO, p, "/srv/\u{e9}"), Some(95));
        assert!(
            flags(INFO, 90).is_some(),
            "other lines read past one that is not UTF-8"
        );
    }

    #[test]
    fn read_only_is_the_superblock_s_and_noatime_the_mount_s() {
        let f = |id| flags(INFO, id);
        assert_eq!(
            f(90),
            Some(Flags {
                read_only: false,
                noatime: false
            })
        );
        assert_eq!(
            f(91),
            Some(Flags {
                read_only: true,
                noatime: true
            })
        );
        assert_eq!(f(93).map(|f| f.read_only), Some(false));
        assert_eq!(f(7), None);
    }

    #[test]
    fn escapes_are_undone() {
        assert_eq!(
            crate::fsutil::unescape_mount_field(b"/a\\040b\\011c\\134d"),
            b"/a b\tc\\d"
        );
        assert_eq!(
            crate::fsutil::unescape_mount_field(b"/trailing\\04"),
            b"/trailing\\04"
        );
    }
}
