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

/// One line of mountinfo(5), the fields needed here.
struct Line<'a> {
    id: u64,
    mount_point: String,
    per_mount: &'a str,
    fs_type: &'a str,
    super_options: &'a str,
}

fn parse(line: &str) -> Option<Line<'_>> {
    let (before, after) = line.split_once(" - ")?;
    let f: Vec<&str> = before.split(' ').collect();
    let a: Vec<&str> = after.split(' ').collect();
    Some(Line {
        id: f.first()?.parse().ok()?,
        mount_point: unescape(f.get(4)?),
        per_mount: f.get(5)?,
        fs_type: a.first()?,
        super_options: a.get(2)?,
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(d) = b.get(i + 1..i + 4)
            && d.iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(
                d.iter()
                    .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')),
            );
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn has(options: &str, o: &str) -> bool {
    options.split(',').any(|x| x == o)
}

/// The id of the kmsfs mount at `mount_point` in `mountinfo` (the last, topmost, one).
pub fn find(mountinfo: &str, mount_point: &Path) -> Option<u64> {
    let want = mount_point.to_string_lossy();
    mountinfo
        .lines()
        .rev()
        .filter_map(parse)
        .find(|l| l.mount_point == want && l.fs_type == "fuse.kmsfs")
        .map(|l| l.id)
}

/// The flags of mount `id` in `mountinfo`; `None` once it is gone.
pub fn flags(mountinfo: &str, id: u64) -> Option<Flags> {
    let l = mountinfo.lines().filter_map(parse).find(|l| l.id == id)?;
    Some(Flags {
        read_only: has(l.super_options, "ro"),
        noatime: has(l.per_mount, "noatime"),
    })
}

fn read_all(f: &mut std::fs::File) -> io::Result<String> {
    f.rewind()?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    Ok(s)
}

/// Starts following the kmsfs mount at `mount_point` (absolute and without symbolic links, as
/// the mount table has it; the mount must exist). Ends when the mount is gone.
pub fn follow(vfs: Arc<Vfs>, mount_point: PathBuf) -> io::Result<()> {
    let mut f = std::fs::File::open("/proc/self/mountinfo")?;
    let Some(id) = find(&read_all(&mut f)?, &mount_point) else {
        tracing::warn!(
            "{} is not in the mount table: remounts will not be followed",
            mount_point.display()
        );
        return Ok(());
    };
    std::thread::Builder::new()
        .name("kmsfs-remount".into())
        .spawn(move || {
            loop {
                // Read before waiting: a change between the two wakes the poll at once.
                let Some(now) = read_all(&mut f).ok().and_then(|t| flags(&t, id)) else {
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
                use std::os::fd::AsRawFd;
                let mut p = libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLPRI | libc::POLLERR,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                if unsafe { libc::poll(&mut p, 1, -1) } < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        tracing::warn!("waiting for mount table changes: {e}");
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:45 / /mnt/a\\040b rw,nosuid,nodev,relatime shared:50 - fuse.kmsfs /srv/c rw,user_id=0,group_id=0
91 22 0:46 / /mnt/x rw,nosuid,nodev,noatime shared:51 - fuse.kmsfs /srv/d ro,user_id=0,group_id=0
92 91 0:47 / /mnt/x rw,nosuid,nodev,relatime shared:52 - fuse.kmsfs /srv/e rw,user_id=0,group_id=0
93 22 0:48 / /mnt/y ro,relatime shared:53 - fuse.sshfs host: rw,user_id=0
";

    #[test]
    fn the_topmost_kmsfs_mount_at_a_path_is_found() {
        assert_eq!(find(INFO, Path::new("/mnt/a b")), Some(90));
        assert_eq!(find(INFO, Path::new("/mnt/x")), Some(92));
        assert_eq!(find(INFO, Path::new("/mnt/y")), None);
        assert_eq!(find(INFO, Path::new("/mnt")), None);
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
        assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
    }
}
