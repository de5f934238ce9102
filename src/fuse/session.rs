//! Mounting: builds the fuser configuration, serves requests on several threads, and unmounts on
//! SIGINT/SIGTERM/SIGHUP.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use fuser::{Config, MountOption, Session, SessionACL};

use super::KmsFs;
use crate::vfs::Vfs;

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub read_only: bool,
    pub allow_other: bool,
    /// Let root in besides the owner (`-o allow_root`); `allow_other` wins.
    pub allow_root: bool,
    /// Extra `-o` options (comma-separated lists already split).
    pub fuse_opts: Vec<String>,
    /// Request-serving threads.
    pub threads: usize,
    /// How long a request thread looks for the next request before it sleeps (`poller.rs`).
    pub poll: std::time::Duration,
    /// Let the kernel cache writes (FUSE writeback cache).
    pub writeback_cache: bool,
    /// Shown as the mount's source in /proc/mounts (the cipher directory).
    pub fsname: String,
    /// Unmount after this long without a request while nothing is open.
    pub idle: Option<std::time::Duration>,
}

fn option(s: &str) -> MountOption {
    match s {
        "auto_unmount" => MountOption::AutoUnmount,
        "default_permissions" => MountOption::DefaultPermissions,
        "dev" => MountOption::Dev,
        "nodev" => MountOption::NoDev,
        "suid" => MountOption::Suid,
        "nosuid" => MountOption::NoSuid,
        "ro" => MountOption::RO,
        "rw" => MountOption::RW,
        "exec" => MountOption::Exec,
        "noexec" => MountOption::NoExec,
        "atime" => MountOption::Atime,
        "noatime" => MountOption::NoAtime,
        "dirsync" => MountOption::DirSync,
        "sync" => MountOption::Sync,
        "async" => MountOption::Async,
        x => MountOption::CUSTOM(x.to_string()),
    }
}

/// The option that `o` turns off, if it has one (`dev` and `nodev`, …).
fn opposite(o: &MountOption) -> Option<MountOption> {
    use MountOption::*;
    Some(match o {
        Dev => NoDev,
        NoDev => Dev,
        Suid => NoSuid,
        NoSuid => Suid,
        Exec => NoExec,
        NoExec => Exec,
        Atime => NoAtime,
        NoAtime => Atime,
        Sync => Async,
        Async => Sync,
        RO => RW,
        RW => RO,
        _ => return None,
    })
}

/// Adds `o` to the options, replacing its opposite: a later option wins, as with mount(8), so
/// `-o dev,suid` (root only, e.g. for a chroot on the mount) overrides the `nodev,nosuid`
/// kmsfs mounts with by default, where fuser would refuse the pair as conflicting.
fn add_option(mo: &mut Vec<MountOption>, o: MountOption) {
    if let Some(off) = opposite(&o) {
        mo.retain(|x| *x != off);
    }
    if !mo.contains(&o) {
        mo.push(o);
    }
}

/// Whether the kernel must check permission bits (`default_permissions`): whenever a user other
/// than root may use the mount (--allow-other, `-o allow_root`, a mount by a non-root user), or
/// when asked with `-o default_permissions`. A mount made by root without those is usable only by
/// processes whose user and group ids are all root's; they pass every permission check except
/// executing a file without any `x` bit, which the kernel still checks, and access(2), which
/// kmsfs answers (`Vfs::access`). Leaving the check out there saves a round trip per directory
/// change: with default_permissions every create, unlink or rename in a directory makes the
/// next permission check in it fetch the directory's attributes again.
fn kernel_checks_permissions(opts: &MountOptions, mo: &[MountOption]) -> bool {
    opts.allow_other
        || opts.allow_root
        || !rustix::process::geteuid().is_root()
        || mo.iter().any(|o| match o {
            MountOption::DefaultPermissions => true,
            MountOption::CUSTOM(s) => s == "allow_other" || s == "allow_root",
            _ => false,
        })
}

/// The write end of the pipe the termination-signal handler writes to (-1: none yet).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_term_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `b` outlives the call.
        unsafe { libc::write(fd, (&raw const b).cast(), 1) };
    }
}

/// Routes SIGINT, SIGTERM and SIGHUP to a pipe and returns its read end. A handler (not a
/// blocked mask with `sigwait`) because the mask is per thread: a thread started before the
/// mount (key maintenance, say) would otherwise take the signal and die with the process,
/// leaving a dead mount behind.
fn route_term_signals() -> io::Result<OwnedFd> {
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // The write end lives as long as the process (the handler may run at any time).
    let old = SIGNAL_PIPE.swap(wr.into_raw_fd(), Ordering::Relaxed);
    if old >= 0 {
        // SAFETY: `old` was leaked into SIGNAL_PIPE by an earlier mount in this process.
        drop(unsafe { OwnedFd::from_raw_fd(old) });
    }
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // A hang-up or an interrupt ignored by whoever started us (`nohup`, `trap '' HUP`, a
        // background job of a non-interactive shell) stays ignored, as libfuse does: it was
        // meant to shield the mount (until 2026-12-06 SIGHUP unmounted it anyway). SIGTERM, the
        // stop signal, always unmounts.
        if s != libc::SIGTERM && ignored(s) {
            continue;
        }
        // SAFETY: a zeroed sigaction with an empty mask and a handler that only calls write(2).
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_term_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(s, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(rd)
}

/// Whether the disposition of signal `s` is SIG_IGN.
fn ignored(s: libc::c_int) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one into `old`.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(s, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// Mounts `vfs` at `mountpoint`, calls `ready` once the mount exists, and serves requests until
/// the file system is unmounted (by `fusermount3 -u`, `kmsfs unmount` or a termination signal).
/// `mountpoint` is absolute and resolved (as `kmsfs mount` checks it): the mount table shows it
/// so, and remounts are followed by it (`remount`).
pub fn mount(
    vfs: Arc<Vfs>,
    mountpoint: &Path,
    opts: &MountOptions,
    ready: impl FnOnce(),
) -> io::Result<()> {
    let signals = route_term_signals()?;
    let mut mo = vec![
        MountOption::FSName(opts.fsname.clone()),
        // As a kernel option, so that /proc/mounts shows the type `fuse.kmsfs` also when
        // fuser mounts directly (as root) rather than through fusermount3.
        MountOption::CUSTOM("subtype=kmsfs".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    for o in &opts.fuse_opts {
        add_option(&mut mo, option(o));
    }
    // After the options: `--ro -o rw` is read-only (the model refuses writes either way).
    if opts.read_only {
        add_option(&mut mo, MountOption::RO);
    }
    // With ACLs the kernel checks permissions whatever the options say (FUSE_POSIX_ACL).
    if kernel_checks_permissions(opts, &mo) || vfs.acl_enabled() {
        mo.push(MountOption::DefaultPermissions);
    }
    let mut config = Config::default();
    config.mount_options = mo;
    // fuser answers EACCES itself to anyone the ACL leaves out, whatever the kernel let in:
    // so `-o allow_other` is taken as `--allow-other` (`kmsfs mount` does), not passed on.
    config.acl = if opts.allow_other {
        SessionACL::All
    } else if opts.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let threads = opts.threads.max(1);
    config.n_threads = Some(threads);
    if let Some(idle) = opts.idle {
        watch_idle(vfs.clone(), idle, mountpoint.to_path_buf())?;
    }
    let control = vfs.control().clone();
    let model = vfs.clone();
    let fs = KmsFs::new(vfs, opts.writeback_cache, threads);
    let slot = fs.notifier_slot();
    let poller = fs.poller_slot();
    let reclaim = fs.reclaim.clone();
    let mut session = Session::new(fs, mountpoint, &config)?;
    {
        use std::os::fd::{AsFd, AsRawFd};
        reclaim.set_device(session.as_fd());
        let _ = poller.set(super::poller::Poller::new(
            session.as_fd().as_raw_fd(),
            threads,
            opts.poll,
        ));
    }
    let _ = slot.set(session.notifier());
    notify_growth(&control, session.notifier())?;
    super::remount::follow(model, mountpoint.to_path_buf(), &opts.fsname);
    let mut unmounter = session.unmount_callable();
    let mp = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("kmsfs-signals".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            loop {
                match rustix::io::read(&signals, &mut b) {
                    Ok(1) => break,
                    Err(rustix::io::Errno::INTR) => continue,
                    _ => return,
                }
            }
            let sig = b[0];
            if super::teardown::connection_dead() == Some(true) {
                // Unmounted from outside already (`kmsfs unmount`, then a stop signal): the
                // path may hold another file system by now; the session ends by itself.
                tracing::info!("signal {sig}: already unmounted");
                return;
            }
            tracing::info!("signal {sig}: unmounting");
            if let Err(e) = unmounter.unmount() {
                // Typically EBUSY for a moment: the kernel releases a just-closed file
                // asynchronously. fuser gives up its handle on the first failure, so retry
                // with fusermount3 and end with a lazy unmount: a stop signal must unmount.
                tracing::warn!("unmount after signal {sig} failed ({e}); retrying");
                unmount_retrying(&mp);
            }
        })?;
    ready();
    session.run()
}

/// Pushes the new bytes of growing control files (the audit log) into the kernel's page cache,
/// which also moves the file size the kernel reports (`tail -f` polls it). From a thread of its
/// own: a notification must never wait inside a request handler. Pushes are gathered for a
/// moment and contiguous ones merged, so a busy mount with a view in use sends one store per
/// view every few milliseconds instead of one (and a thread wake-up) per audit record.
fn notify_growth(
    control: &crate::control::ControlDir,
    notifier: fuser::Notifier,
) -> io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<(u64, u64, Vec<u8>)>();
    std::thread::Builder::new()
        .name("kmsfs-notify".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                // Sends while this thread sleeps wake nobody; they are taken in one go.
                std::thread::sleep(std::time::Duration::from_millis(NOTIFY_GATHER_MS));
                let mut batch: Vec<(u64, u64, Vec<u8>)> = vec![first];
                for (ino, off, data) in rx.try_iter() {
                    match batch.iter_mut().rev().find(|p| p.0 == ino) {
                        Some(last) if last.1 + last.2.len() as u64 == off => {
                            last.2.extend_from_slice(&data)
                        }
                        _ => batch.push((ino, off, data)),
                    }
                }
                for (ino, off, data) in batch {
                    // The kernel may have forgotten the inode (ENOENT): nothing to update then.
                    if let Err(e) = notifier.store(fuser::INodeNo(ino), off, &data) {
                        tracing::debug!("notify store on control inode {ino}: {e}");
                    }
                }
            }
        })?;
    control.set_notify(Box::new(move |ino, off, data| {
        let _ = tx.send((ino, off, data));
    }));
    Ok(())
}

/// How long pushes to growing control files are gathered before they are sent.
const NOTIFY_GATHER_MS: u64 = 20;

/// Unmounts once no request came for `idle` and no file is open, as gocryptfs `-idle` does.
/// Directories are listed without being opened (see `vfs::dir_read`), so an open directory or
/// a working directory inside the mount is not seen here; the kernel sees them: the unmount is
/// never lazy, and while it is refused (EBUSY) the mount stays and the wait starts again.
fn watch_idle(vfs: Arc<Vfs>, idle: std::time::Duration, mountpoint: PathBuf) -> io::Result<()> {
    let step = (idle / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(10),
    );
    std::thread::Builder::new()
        .name("kmsfs-idle".into())
        .spawn(move || {
            let mut last = vfs.activity().0;
            let mut since = std::time::Instant::now();
            loop {
                std::thread::sleep(step);
                let (n, open) = vfs.activity();
                if n != last || open {
                    last = n;
                    since = std::time::Instant::now();
                    continue;
                }
                if since.elapsed() < idle {
                    continue;
                }
                tracing::info!("idle: unmounting");
                // A file closed just now is released a moment later: a few tries.
                for _ in 0..5 {
                    if fusermount(&mountpoint, false) {
                        // The session ends by itself (its device is closed by the kernel).
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                tracing::info!(
                    "idle, but the mount is in use (a working or open directory): staying mounted"
                );
                last = vfs.activity().0;
                since = std::time::Instant::now();
            }
        })?;
    Ok(())
}

/// `fusermount3 -u [-z] MOUNTPOINT` (or, for root where there is no fusermount3, umount2(2));
/// whether it succeeded.
fn fusermount(mp: &Path, lazy: bool) -> bool {
    unmount_mountpoint(mp, lazy, false).unwrap_or_else(|e| {
        tracing::warn!("cannot run fusermount3: {e}");
        false
    })
}

/// Unmounts the FUSE mount at `mp` (lazily with `lazy`) with `fusermount3 -u [-z]`, or, for
/// root where there is no fusermount3 (root mounts without it), with umount2(2). Ok(false):
/// refused (busy, not a mount); Err: fusermount3 cannot be run and the caller is not root.
/// `kmsfs unmount` uses it too, with `show_errors` (fusermount3's own message on stderr).
pub fn unmount_mountpoint(mp: &Path, lazy: bool, show_errors: bool) -> io::Result<bool> {
    let mut c = std::process::Command::new("fusermount3");
    c.arg("-u");
    if lazy {
        c.arg("-z");
    }
    let stderr = if show_errors {
        std::process::Stdio::inherit()
    } else {
        std::process::Stdio::null()
    };
    match c
        .arg(mp)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .status()
    {
        Ok(s) => Ok(s.success()),
        Err(_) if rustix::process::geteuid().is_root() => {
            use std::os::unix::ffi::OsStrExt;
            let Ok(c) = std::ffi::CString::new(mp.as_os_str().as_bytes()) else {
                return Ok(false);
            };
            let flags = if lazy { libc::MNT_DETACH } else { 0 };
            // SAFETY: a valid NUL-terminated path; umount2 reads it only.
            let ok = unsafe { libc::umount2(c.as_ptr(), flags) == 0 };
            if !ok && show_errors {
                eprintln!("umount2 {}: {}", mp.display(), io::Error::last_os_error());
            }
            Ok(ok)
        }
        Err(e) => Err(e),
    }
}

/// `fusermount3 -u` for up to 3 s, then `fusermount3 -u -z`.
fn unmount_retrying(mp: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if fusermount(mp, false) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if !fusermount(mp, true) {
        tracing::error!("could not unmount {}", mp.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_option_replaces_its_opposite() {
        let mut mo = vec![MountOption::NoDev, MountOption::NoSuid];
        for o in [
            "dev", "suid", "noexec", "exec", "noatime", "noatime", "ro", "rw",
        ] {
            add_option(&mut mo, option(o));
        }
        assert_eq!(
            mo,
            vec![
                MountOption::Dev,
                MountOption::Suid,
                MountOption::Exec,
                MountOption::NoAtime,
                MountOption::RW
            ]
        );
        add_option(&mut mo, option("nodev"));
        add_option(&mut mo, option("fsname=x"));
        add_option(&mut mo, option("fsname=x"));
        assert_eq!(mo[mo.len() - 2..], [MountOption::NoDev, option("fsname=x")]);
        assert!(!mo.contains(&MountOption::Dev));
    }
}
