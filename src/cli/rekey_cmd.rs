//! `kmsfs rekey PATH…`: re-encrypts files of a mounted volume with fresh data keys (the answer to
//! a leaked DEK; rotation does not change DEKs). Each file is copied through the mount to a
//! temporary file in the same directory (new file id, new DEK, key chosen by the rules), with
//! mode, owner, times and extended attributes (capabilities and ACLs too) carried over, synced,
//! and renamed over the original, so the original stays intact until the new copy is complete.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clap::Args;

use super::error::CliError;
use super::exit_code as code;

#[derive(Args, Debug)]
pub struct RekeyArgs {
    /// Files or directories (recursively) inside a mounted kmsfs volume.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Also re-key files with several hard links (each link becomes a separate file).
    #[arg(long)]
    force: bool,
}

/// The mount point of the kmsfs mount `p` is in.
fn kmsfs_mount_of(p: &Path) -> Option<PathBuf> {
    let abs = fs::canonicalize(p).ok()?;
    super::mount_cmd::mount_table()
        .into_iter()
        .filter(|(_, mp, ty)| ty == "fuse.kmsfs" && abs.starts_with(mp))
        .map(|(_, mp, _)| mp)
        .max_by_key(|mp| mp.as_os_str().len())
}

/// Whether the mount at `mp` hides ACLs its volume holds (mounted with `-o noacl`): a copy
/// made there would lose them.
fn hides_acls(mp: &Path) -> bool {
    let Ok(status) = fs::read(mp.join(".kmsfs/status")) else {
        return false;
    };
    let Ok(s) = serde_json::from_slice::<serde_json::Value>(&status) else {
        return false;
    };
    s["acl"] == false
        && s["cipher_dir"].as_str().is_some_and(|c| {
            crate::keymgr::VolumePaths::new(Path::new(c))
                .acl_marker()
                .exists()
        })
}

thread_local! {
    /// The directories this run has looked at for copies left by killed runs.
    static CLEANED: std::cell::RefCell<std::collections::HashSet<std::path::PathBuf>> =
        Default::default();
}

/// Removes, once per directory and run, the copies (`.kmsfs-rekey.PID.tmp`) that a rekey killed
/// before its rename left in `dir`: those of processes that are gone (nothing else removed
/// them: found by a review, five after eight killed runs). A copy of a live process, maybe
/// another rekey, is left alone.
fn remove_stale_copies(dir: &Path) {
    if !CLEANED.with(|c| c.borrow_mut().insert(dir.to_path_buf())) {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".kmsfs-rekey."))
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let gone = rustix::process::Pid::from_raw(pid)
            .is_some_and(|p| rustix::process::test_kill_process(p) == Err(rustix::io::Errno::SRCH));
        if gone && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn rekey_file(p: &Path, force: bool) -> io::Result<bool> {
    let md = fs::symlink_metadata(p)?;
    if !md.is_file() {
        return Ok(false);
    }
    if md.nlink() > 1 && !force {
        return Err(io::Error::other(format!(
            "has {} hard links; re-keying would split them (use --force)",
            md.nlink()
        )));
    }
    // `.` for a bare file name (`cd MNT; kmsfs rekey doc.txt`).
    let dir = crate::fsutil::parent_dir(p);
    // An append-only or immutable directory would take the copy but refuse the rename over
    // the original, and its removal too (each run would leave a copy behind); nor can such a
    // file be renamed over.
    let flags_of = |p: &Path| File::open(p).and_then(|f| Ok(rustix::fs::ioctl_getflags(&f)?));
    let sealed = |f: &io::Result<rustix::fs::IFlags>| {
        f.as_ref()
            .is_ok_and(|f| f.intersects(rustix::fs::IFlags::APPEND | rustix::fs::IFlags::IMMUTABLE))
    };
    let file_flags = flags_of(p);
    let what = if sealed(&flags_of(dir)) {
        Some("its directory is")
    } else if sealed(&file_flags) {
        Some("it is")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(io::Error::other(format!(
            "{what} append-only or immutable (chattr +a / +i): the re-keyed copy could not \
             replace it (clear the flag first)"
        )));
    }
    remove_stale_copies(dir);
    let tmp = dir.join(format!(".kmsfs-rekey.{}.tmp", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut src = File::open(p)?;
        let dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        copy_sparse(&mut src, &dst)?;
        // Owner first: a chown drops `security.capability`, so the attributes come after it.
        rustix::fs::fchown(
            &dst,
            Some(rustix::fs::Uid::from_raw(md.uid())),
            Some(rustix::fs::Gid::from_raw(md.gid())),
        )
        .or_else(|e| {
            if e == rustix::io::Errno::PERM {
                Ok(())
            } else {
                Err(e)
            }
        })?;
        copy_xattrs(p, &dst)?;
        // The mode last (with ACLs on, it also brings a copied access ACL in line, as it was).
        rustix::fs::fchmod(&dst, rustix::fs::Mode::from(md.mode() & 0o7777))?;
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: md.atime(),
                tv_nsec: md.atime_nsec() as _,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: md.mtime(),
                tv_nsec: md.mtime_nsec() as _,
            },
        };
        // The flags that do not stand in the way (no-dump, no-atime, synchronous writes).
        if let Ok(f) = file_flags {
            let keep = f
                & (rustix::fs::IFlags::NODUMP
                    | rustix::fs::IFlags::NOATIME
                    | rustix::fs::IFlags::SYNC);
            if !keep.is_empty() {
                let _ = rustix::fs::ioctl_getflags(&dst)
                    .and_then(|d| rustix::fs::ioctl_setflags(&dst, d | keep));
            }
        }
        rustix::fs::futimens(&dst, &ts)?;
        dst.sync_all()?;
        fs::rename(&tmp, p)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// Copies `src`'s extended attributes to `dst` (POSIX ACLs among them on a mount with `--acl`).
/// An access ACL the new file inherited from its directory's default ACL is removed again when
/// the original has none. Any failure fails the re-key (the original stays as it was).
/// Copies `src` into the empty `dst`, leaving out the 1 MiB pieces that are all zeros (a write
/// after them, or the final length, makes them holes again where the volume has sparse files).
fn copy_sparse(src: &mut File, dst: &File) -> io::Result<()> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..n], at)?;
        }
        at += n as u64;
    }
    dst.set_len(at)
}

fn copy_xattrs(src: &Path, dst: &File) -> io::Result<()> {
    use rustix::io::Errno;
    const ACCESS_ACL: &str = "system.posix_acl_access";
    let mut buf = vec![0u8; 65536];
    let len = rustix::fs::listxattr(src, &mut buf[..])?;
    let names: Vec<&std::ffi::OsStr> = buf[..len]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(std::ffi::OsStr::from_bytes)
        .collect();
    // First, so that it never takes room the original's attributes need.
    if !names.iter().any(|n| *n == ACCESS_ACL) {
        match rustix::fs::fremovexattr(dst, ACCESS_ACL) {
            // No ACL, or no ACLs on this mount (NOTSUP and OPNOTSUPP are one errno on Linux).
            Ok(()) | Err(Errno::NODATA | Errno::OPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut v = vec![0u8; 65536];
    for name in names {
        match rustix::fs::getxattr(src, name, &mut v[..]) {
            Ok(n) => rustix::fs::fsetxattr(dst, name, &v[..n], rustix::fs::XattrFlags::empty())?,
            // Removed since it was listed; an inherited ACL the original no longer has goes too.
            Err(Errno::NODATA) if name == ACCESS_ACL => match rustix::fs::fremovexattr(dst, name) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(e.into()),
            },
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Regular files under the given paths (for the progress display).
fn count(p: &Path) -> u64 {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| count(&e.path())).sum())
            .unwrap_or(0),
        Ok(md) if md.is_file() => 1,
        _ => 0,
    }
}

fn visit(p: &Path, force: bool, done: &mut u64, failed: &mut Vec<String>, tick: &mut dyn FnMut()) {
    let Ok(md) = fs::symlink_metadata(p) else {
        failed.push(format!("{}: not found", p.display()));
        return;
    };
    if md.is_dir() {
        match fs::read_dir(p) {
            Ok(rd) => {
                for e in rd.flatten() {
                    visit(&e.path(), force, done, failed, tick);
                }
            }
            Err(e) => failed.push(format!("{}: {e}", p.display())),
        }
        return;
    }
    match rekey_file(p, force) {
        Ok(true) => *done += 1,
        Ok(false) => {}
        Err(e) => failed.push(format!("{}: {e}", p.display())),
    }
    tick();
}

pub fn rekey(a: &RekeyArgs) -> Result<(), CliError> {
    for p in &a.paths {
        let Some(mp) = kmsfs_mount_of(p) else {
            return Err(CliError::new(
                code::NOT_MOUNTED,
                format!("{} is not inside a mounted kmsfs volume", p.display()),
            )
            .hint("mount the volume and give paths inside the mount point"));
        };
        if hides_acls(&mp) {
            return Err(CliError::new(
                code::ERROR,
                format!(
                    "{} is mounted with -o noacl, and the volume holds POSIX ACLs: the new \
                     copies would lose theirs",
                    mp.display()
                ),
            )
            .hint("mount it without -o noacl (ACLs are then on) and re-key there"));
        }
    }
    let (mut done, mut failed) = (0, Vec::new());
    let total: u64 = a.paths.iter().map(|p| count(p)).sum();
    let mut progress = super::progress::Progress::new("rekey");
    let mut seen = 0u64;
    for p in &a.paths {
        visit(p, a.force, &mut done, &mut failed, &mut || {
            seen += 1;
            progress.update(seen, total.max(seen));
        });
    }
    progress.finish();
    println!("re-keyed {done} file(s)");
    for f in &failed {
        eprintln!("kmsfs: rekey: {f}");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(
            code::ERROR,
            format!("{} file(s) not re-keyed", failed.len()),
        ))
    }
}
