//! Mounting: builds the fuser configuration, serves requests on several threads, and unmounts on
//! SIGINT/SIGTERM/SIGHUP.

use std::io;
use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};

use super::KmsFs;
use crate::vfs::Vfs;

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub read_only: bool,
    pub allow_other: bool,
    /// Extra `-o` options (comma-separated lists already split).
    pub fuse_opts: Vec<String>,
    /// Request-serving threads.
    pub threads: usize,
    /// Shown as the mount's source in /proc/mounts (the cipher directory).
    pub fsname: String,
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

/// Blocks the termination signals in the calling thread (and every thread it spawns later), so
/// that one dedicated thread can receive them with `sigwait`.
fn block_term_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it; pthread_sigmask only
    // changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Mounts `vfs` at `mountpoint`, calls `ready` once the mount exists, and serves requests until
/// the file system is unmounted (by `fusermount3 -u`, `kmsfs unmount` or a termination signal).
pub fn mount(
    vfs: Arc<Vfs>,
    mountpoint: &Path,
    opts: &MountOptions,
    ready: impl FnOnce(),
) -> io::Result<()> {
    let set = block_term_signals();
    let mut mo = vec![
        MountOption::FSName(opts.fsname.clone()),
        // As a kernel option, so that /proc/mounts shows the type `fuse.kmsfs` also when
        // fuser mounts directly (as root) rather than through fusermount3.
        MountOption::CUSTOM("subtype=kmsfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if opts.read_only {
        mo.push(MountOption::RO);
    }
    for o in &opts.fuse_opts {
        let o = option(o);
        if !mo.contains(&o) {
            mo.push(o);
        }
    }
    let mut config = Config::default();
    config.mount_options = mo;
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    let mut session = Session::new(KmsFs::new(vfs), mountpoint, &config)?;
    let mut unmounter = session.unmount_callable();
    std::thread::Builder::new()
        .name("kmsfs-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` is an initialised sigset; sigwait writes the signal number into `sig`.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                tracing::info!("signal {sig}: unmounting");
                if let Err(e) = unmounter.unmount() {
                    tracing::error!("unmount after signal {sig} failed: {e}");
                }
            }
        })?;
    ready();
    session.run()
}
