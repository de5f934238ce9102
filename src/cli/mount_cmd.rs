//! `kmsfs mount` and `kmsfs unmount`.
//!
//! Without `-f`, mount does all checks and the unlock in the foreground (so a wrong passphrase is
//! reported with its exit code), then forks: the child serves the mount, the parent waits until
//! the child reports the mount ready (or failed) through a pipe and exits with that status.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;

use super::UnlockArgs;
use super::error::CliError;
use super::exit_code as code;
use crate::fuse::MountOptions;
use crate::keymgr::audit::{AuditKeys, AuditLog, AuditRecord, Source};
use crate::keymgr::{KeyManager, VolumePaths};
use crate::vfs::{Vfs, VfsOptions};

#[derive(Args, Debug)]
pub struct MountArgs {
    /// The volume's cipher directory.
    cipherdir: PathBuf,
    /// Where to mount it (an existing directory).
    mountpoint: PathBuf,
    #[command(flatten)]
    unlock: UnlockArgs,
    /// Stay in the foreground; SIGINT, SIGTERM and SIGHUP unmount.
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Mount read-only.
    #[arg(long)]
    ro: bool,
    /// Let other users access the mount (POSIX permissions still apply). Needs root or
    /// user_allow_other in /etc/fuse.conf.
    #[arg(long)]
    allow_other: bool,
    /// POSIX ACLs: setfacl/getfacl work, the kernel enforces them, new nodes inherit a
    /// directory's default ACL (`-o acl` too). Implies the kernel's permission checks; costs a
    /// round trip per file the first time its ACL is needed (`ls -l` asks for every file's).
    /// On by itself for a volume that holds ACLs (`-o noacl` turns it off).
    #[arg(long)]
    acl: bool,
    /// Extra FUSE mount options, comma-separated (e.g. -o noatime,noexec).
    #[arg(short = 'o', value_name = "OPTS")]
    fuse_opts: Vec<String>,
    /// Threads serving requests.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// After answering a request, look for the next one for up to this many microseconds
    /// before sleeping (one thread at a time; 0 turns it off): a quarter, a half or all of it,
    /// as soon as recent requests came after their replies, or not at all when they came later.
    /// Spends up to that much CPU per request to spare a wake-up when requests come one after
    /// another.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    poll_us: u64,
    /// Do not let the kernel cache writes (every write(2) goes to kmsfs at once).
    #[arg(long)]
    no_writeback_cache: bool,
    /// Do not read ahead: neither the next files of a directory whose files are being opened in
    /// turn, nor the subdirectories of a directory listed in a tree walk.
    #[arg(long)]
    no_prefetch: bool,
    /// Unmount after this long without use while no file is open (e.g. 30m, 2h; 0: never).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    idle: Option<std::time::Duration>,
    /// More log output (-v info, -vv debug); KMSFS_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn mount_err(m: impl Into<String>) -> CliError {
    CliError::new(code::MOUNTPOINT, m)
}

/// The /proc/mounts entries (source, fstype) mounted exactly at `p`.
fn mounts_at(p: &Path) -> Vec<(String, String)> {
    mount_table()
        .into_iter()
        .filter(|(_, mp, _)| mp == p)
        .map(|(src, _, ty)| (src, ty))
        .collect()
}

/// The mount table: (source, mount point, file-system type) per line of /proc/self/mounts.
/// Read as bytes: one mount point that is not UTF-8 (a USB stick's Latin-1 label) must not hide
/// the others (until 2026-12-05 it hid every mount from `kmsfs unmount` and the rest).
pub(super) fn mount_table() -> Vec<(String, PathBuf, String)> {
    std::fs::read("/proc/self/mounts")
        .map(|m| parse_mount_table(&m))
        .unwrap_or_default()
}

fn parse_mount_table(m: &[u8]) -> Vec<(String, PathBuf, String)> {
    use std::os::unix::ffi::OsStringExt;
    m.split(|&b| b == b'\n')
        .filter_map(|l| {
            let f: Vec<&[u8]> = l.split(|&b| b == b' ').collect();
            (f.len() > 2).then(|| {
                (
                    String::from_utf8_lossy(&crate::fsutil::unescape_mount_field(f[0]))
                        .into_owned(),
                    PathBuf::from(std::ffi::OsString::from_vec(
                        crate::fsutil::unescape_mount_field(f[1]),
                    )),
                    String::from_utf8_lossy(f[2]).into_owned(),
                )
            })
        })
        .collect()
}

/// `mp` as an absolute path, also where it cannot be resolved itself (a mount whose daemon is
/// gone answers ENOTCONN): its directory resolved, its own name kept.
pub(super) fn absolute_mountpoint(mp: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(mp) {
        return p;
    }
    match (
        std::fs::canonicalize(crate::fsutil::parent_dir(mp)),
        mp.file_name(),
    ) {
        (Ok(d), Some(name)) => d.join(name),
        _ => std::path::absolute(mp).unwrap_or_else(|_| mp.to_path_buf()),
    }
}

/// Unmounts `abs` with fusermount3 (lazily if it is busy), or umount2(2) for root without
/// fusermount3; whether it is gone.
fn fusermount_unmount(abs: &Path) -> bool {
    [false, true]
        .iter()
        .any(|&lazy| crate::fuse::unmount_mountpoint(abs, lazy, false).unwrap_or(false))
}

/// A mount left at `mp` by a kmsfs daemon that is gone (killed or crashed: every call there
/// fails with ENOTCONN). One of `cipherdir` is unmounted, so that mounting again just works;
/// any other is an error naming it.
fn clear_dead_mount(mp: &Path, cipherdir: &Path) -> Result<(), CliError> {
    if !is_dead_fuse_mount(mp) {
        return Ok(());
    }
    let abs = absolute_mountpoint(mp);
    let source = cipherdir.display().to_string();
    let ours = mounts_at(&abs)
        .iter()
        .any(|(src, ty)| ty == "fuse.kmsfs" && *src == source);
    if !ours {
        return Err(mount_err(format!(
            "{} is a FUSE mount whose daemon is gone (transport endpoint is not connected)",
            abs.display()
        ))
        .hint(format!(
            "unmount it first: fusermount3 -u {}",
            abs.display()
        )));
    }
    eprintln!(
        "kmsfs: {} was left mounted by a kmsfs daemon that is gone (killed or crashed); \
         unmounting it",
        abs.display()
    );
    if !fusermount_unmount(&abs) {
        return Err(mount_err(format!(
            "could not unmount the dead mount at {}",
            abs.display()
        ))
        .hint(format!("unmount it: fusermount3 -u -z {}", abs.display())));
    }
    Ok(())
}

/// Whether `mp` is a FUSE mount whose daemon is gone. A `stat` can still succeed then: the
/// kernel answers it from the root's cached attributes for up to their timeout (30 s) after a
/// kill (found by a review: mounting again right after a kill was refused as "already a mount
/// point"). `statfs` always asks the daemon; it is given 2 s (a hung daemon never answers:
/// then the mount counts as alive, and the caller says it is in the way).
fn is_dead_fuse_mount(mp: &Path) -> bool {
    if let Err(e) = std::fs::symlink_metadata(mp) {
        return e.raw_os_error() == Some(libc::ENOTCONN);
    }
    let fuse = mounts_at(&absolute_mountpoint(mp))
        .iter()
        .any(|(_, ty)| ty == "fuse" || ty.starts_with("fuse."));
    if !fuse {
        return false;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let p = mp.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(rustix::fs::statfs(&p).err());
    });
    matches!(
        rx.recv_timeout(std::time::Duration::from_secs(2)),
        Ok(Some(rustix::io::Errno::NOTCONN))
    )
}

fn check_mountpoint(mp: &Path) -> Result<PathBuf, CliError> {
    let abs = std::fs::canonicalize(mp).map_err(|e| {
        mount_err(format!("mount point {}: {e}", mp.display())).hint("create it with mkdir")
    })?;
    if !abs.is_dir() {
        return Err(mount_err(format!(
            "mount point {} is not a directory",
            abs.display()
        )));
    }
    if !mounts_at(&abs).is_empty() {
        return Err(
            mount_err(format!("{} is already a mount point", abs.display()))
                .hint(format!("unmount it first: kmsfs unmount {}", abs.display())),
        );
    }
    Ok(abs)
}

/// Takes the volume's mount lock; held (inherited by the daemon) for the life of the mount.
pub(super) fn lock_volume(paths: &VolumePaths) -> Result<OwnedFd, CliError> {
    let p = paths.control_dir().join("mount.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| CliError::new(code::ERROR, format!("{}: {e}", p.display())))?;
    // A daemon that was just unmounted still holds the lock while it writes its closing audit
    // checkpoint and exits: when the volume is in no mount table entry, wait for it briefly
    // (`umount && mount` must work).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Err(rustix::io::Errno::WOULDBLOCK)
                if std::time::Instant::now() < deadline && !is_mounted(&paths.root) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => break lock_result(r, f, paths, &p),
        }
    }
}

/// Whether the volume at `root` is the source of a kmsfs mount.
pub(super) fn is_mounted(root: &Path) -> bool {
    mount_table()
        .iter()
        .any(|(src, _, ty)| ty == "fuse.kmsfs" && Path::new(src) == root)
}

/// The cipher directory of the kmsfs mount whose mount point `path` is, if it is one: for
/// the commands that take a cipher directory, to say what was given instead of "not a kmsfs
/// volume … create one with `kmsfs init`".
pub(super) fn volume_mounted_at(path: &Path) -> Option<PathBuf> {
    let abs = absolute_mountpoint(path);
    mounts_at(&abs)
        .into_iter()
        .find(|(_, ty)| ty == "fuse.kmsfs")
        .map(|(src, _)| PathBuf::from(src))
        // A volume mounted over its own cipher directory is both.
        .filter(|src| *src != abs)
}

/// Refuses a volume that is mounted (exit 19) before a passphrase is asked for: the lock is
/// taken only after the prompt (see [`lock_volume`]'s callers), and typing a passphrase to be
/// told "already mounted" helps nobody.
pub(super) fn refuse_if_mounted(root: &Path) -> Result<(), CliError> {
    if is_mounted(root) {
        return Err(already_mounted(root));
    }
    Ok(())
}

fn already_mounted(root: &Path) -> CliError {
    CliError::new(
        code::ALREADY_MOUNTED,
        format!(
            "{} is already mounted by another kmsfs process",
            root.display()
        ),
    )
}

fn lock_result(
    r: rustix::io::Result<()>,
    f: std::fs::File,
    paths: &VolumePaths,
    p: &Path,
) -> Result<OwnedFd, CliError> {
    match r {
        Ok(()) => Ok(f.into()),
        Err(rustix::io::Errno::WOULDBLOCK) if is_mounted(&paths.root) => {
            Err(already_mounted(&paths.root))
        }
        // Held, but mounted nowhere (here): an administration command, fsck, passwd, … at
        // work, or one waiting at its passphrase prompt (said "already mounted" until
        // 2026-12-06).
        Err(rustix::io::Errno::WOULDBLOCK) => Err(CliError::new(
            code::ALREADY_MOUNTED,
            format!(
                "{} is in use by another kmsfs command (or mounted in another mount namespace)",
                paths.root.display()
            ),
        )
        .hint("try again when it has finished")),
        Err(e) => Err(CliError::new(code::ERROR, format!("{}: {e}", p.display()))),
    }
}

/// Slots the descriptor table is given at the start (see [`presize_fd_table`]).
const FD_TABLE: u64 = 1 << 16;

/// Every inode the kernel holds is a descriptor of the daemon (see `vfs::inode`), so a walk
/// over thousands of files grows the process's descriptor table through each power of two,
/// and in a process with more than one thread each growth waits for an RCU grace period
/// (`expand_fdtable`), ~10 ms here, with the request that opened the descriptor and every
/// request behind it waiting. A cold `du` of 4,300 files stopped so five times, at its
/// 256th, 512th, … descriptor, for ~60 ms of its ~200 (2026-12-07: FUSE request tracepoints,
/// then `perf trace`: `openat` taking 8–16 ms where it returned 256, 512, 1024, …). So the
/// table is grown once, at the start of serving, while the process has a single thread (no
/// grace period to wait for then), to what such walks need: 8 bytes of kernel memory per slot
/// (512 KiB). It never shrinks; past it, a growth costs what it did before.
fn presize_fd_table() {
    use rustix::fs::{Mode, OFlags};
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(FD_TABLE);
    let Some(top) = limit
        .min(FD_TABLE)
        .checked_sub(1)
        .and_then(|t| i32::try_from(t).ok())
    else {
        return;
    };
    let Ok(null) = rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
    else {
        return;
    };
    // The copy takes the lowest free descriptor from `top` on (`top` itself: nothing is open
    // that high yet), for which the table grows; it is closed at once.
    if let Err(e) = rustix::io::fcntl_dupfd_cloexec(&null, top) {
        tracing::debug!("growing the descriptor table to {top}: {e}");
    }
}

/// Every inode the kernel holds costs the daemon one descriptor (see `vfs::inode`), so the
/// descriptor limit bounds how many files can be in use at once (a listing with attributes
/// holds all its entries). Root may raise the hard limit to the system's `fs.nr_open` (often
/// 1,048,576; at most that is asked for; a login's hard limit can be as low as 20,000); others
/// get their hard limit.
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let hard = getrlimit(Resource::Nofile).maximum;
    // Capped: nr_open can be 2^30, and the inode reclaim works from a share of the limit.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|n| n.min(1 << 20));
    let set = |n: u64| {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(n),
                maximum: Some(n),
            },
        )
    };
    if let Some(n) = nr_open
        && hard.is_some_and(|h| n > h)
        && set(n).is_ok()
    {
        return;
    }
    if let Some(h) = hard {
        let _ = set(h);
    }
}

/// Root's daemon gives new backing files to the users who make them, and reaches them through
/// CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: without those (a hardened service with a capability
/// bounding set) the files' modes bind it, and a file another user made with mode 0600 is then
/// out of its reach (EACCES to that user, and EPERM linking a new one in). Said at the mount.
fn warn_without_dac_override() {
    const CAP_DAC_OVERRIDE: u32 = 1;
    const CAP_DAC_READ_SEARCH: u32 = 2;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return;
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
    else {
        return;
    };
    let missing: Vec<&str> = [
        (CAP_DAC_OVERRIDE, "CAP_DAC_OVERRIDE"),
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    ]
    .into_iter()
    .filter(|(bit, _)| eff & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if !missing.is_empty() {
        tracing::warn!(
            "running as root without {}: new files are given to the users who make them, and \
             the daemon, bound by their modes, may then fail to open or link them (EACCES); \
             keep those capabilities, or mount as the volume's owner",
            missing.join(" and ")
        );
    }
}

pub fn mount(a: &MountArgs) -> Result<(), CliError> {
    let cipherdir = std::fs::canonicalize(&a.cipherdir)
        .map_err(|_| crate::keymgr::VolumeError::NotAVolume(a.cipherdir.clone()))?;
    crate::keymgr::probe(&cipherdir)?;
    let fsname = fsname(&cipherdir)?;
    check_auto_unmount(a)?;
    clear_dead_mount(&a.mountpoint, &cipherdir)?;
    let mountpoint = check_mountpoint(&a.mountpoint)?;
    let paths = VolumePaths::new(&cipherdir);
    refuse_if_mounted(&cipherdir)?;
    // The passphrase before the lock: a prompt waiting for its user must not hold the volume
    // (another command would be refused all that time).
    let unlock = a.unlock.source().get()?;
    let lock = lock_volume(&paths)?;
    let unlocked = crate::keymgr::unlock(&cipherdir, &unlock)?;
    drop(unlock);
    super::warn_if_backup(&unlocked);
    let block_size = unlocked.config.block_size;
    let plaintext_names = unlocked
        .config
        .has_feature(crate::format::config::FEATURE_PLAINTEXT_NAMES);
    let sparse = unlocked
        .config
        .has_feature(crate::format::config::FEATURE_SPARSE_FILES);
    // The daemon's stderr goes away with the terminal: it logs to syslog (the journal).
    super::logging::init(a.verbose, !a.foreground);
    let km = Arc::new(KeyManager::new(unlocked));
    let audit = Arc::new(
        AuditLog::open_anchored(
            &paths.control_dir(),
            AuditKeys::new(&km.volume_secret()),
            km.query(|s| s.audit_anchor.clone()).as_ref(),
        )
        .map_err(|e| {
            CliError::new(
                code::ERROR,
                format!(
                    "cannot open the audit log in {}: {e}",
                    paths.control_dir().display()
                ),
            )
            .hint("kmsfs refuses to mount without a writable audit log (fail-closed)")
        })?,
    );
    // Room on the disk for the log, so that a disk filled with file data still lets files be
    // opened (and copied off) for a while: the log is fail-closed.
    audit.hold_room();
    run_maintenance(&km, &audit);
    let km_for_thread = km.clone();
    raise_fd_limit();
    // The model applies the caller's umask (or a default ACL): ours must not apply as well.
    rustix::process::umask(rustix::fs::Mode::empty());
    let mut fuse_opts: Vec<String> = a
        .fuse_opts
        .iter()
        .flat_map(|o| o.split(','))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    // `-o acl` is `--acl` (the last of acl/noacl counts); the kernel takes neither as an option.
    // Without either, a volume that holds ACLs gets them enforced: one mount without would
    // leave them stored but unenforced, where the mode's group bits (the mask) may say more.
    let acl = match last_of(&fuse_opts, "acl", "noacl") {
        Some(on) => on,
        None if a.acl => true,
        None if paths.acl_marker().exists() => {
            eprintln!(
                "kmsfs: this volume holds POSIX ACLs: mounting with --acl (-o noacl to mount \
                 without)"
            );
            true
        }
        None => false,
    };
    fuse_opts.retain(|o| o != "acl" && o != "noacl");
    // `-o allow_other` is `--allow-other`, `-o allow_root` lets root in besides the owner:
    // fuser's own check must know, not only the kernel (until 2026-12-06 the kernel let other
    // users in and fuser refused them every request).
    let allow_other = a.allow_other || fuse_opts.iter().any(|o| o == "allow_other");
    let allow_root = fuse_opts.iter().any(|o| o == "allow_root");
    fuse_opts.retain(|o| o != "allow_other" && o != "allow_root");
    if (allow_other || allow_root) && rustix::process::geteuid().is_root() {
        warn_without_dac_override();
    }
    // `-o ro` is `--ro` (the last of `ro`/`rw` counts, as for mount(8)): the model must know,
    // not only the kernel (no recovery writes, no access times, nothing written but the log).
    let read_only = a.ro || last_of(&fuse_opts, "ro", "rw") == Some(true);
    let vfs = Vfs::new(
        &cipherdir,
        km,
        block_size,
        plaintext_names,
        VfsOptions {
            read_only,
            no_prefetch: a.no_prefetch,
            // The last of noatime/atime counts, as for the kernel's flag (`fuse::session`).
            noatime: last_of(&fuse_opts, "noatime", "atime") == Some(true),
            acl,
            sparse,
            kernel_appends: true,
        },
    )
    .map_err(|e| CliError::new(code::ERROR, format!("{}: {e}", cipherdir.display())))?;
    let opts = MountOptions {
        read_only,
        allow_other,
        allow_root,
        fuse_opts,
        threads: a.threads,
        poll: std::time::Duration::from_micros(a.poll_us),
        writeback_cache: !a.no_writeback_cache,
        fsname,
        // 0 is off, as gocryptfs's `-idle 0` (it unmounted at once until 2026-12-06).
        idle: a.idle.filter(|d| !d.is_zero()),
    };
    vfs.set_audit(audit.clone());
    let session = Session {
        vfs: Arc::new(vfs),
        km: km_for_thread,
        audit,
    };
    if a.foreground {
        let r = serve(session, &mountpoint, &opts, || {});
        drop(lock);
        return r.map_err(|e| {
            CliError::new(
                code::MOUNT_FAILED,
                format!("mount on {} failed: {e}", mountpoint.display()),
            )
        });
    }
    daemonize(session, &mountpoint, &opts, lock)
}

/// The mount's source as the mount table will show it: the cipher directory, byte for byte.
/// fuser takes it as a `String`, so a cipher directory whose path is not UTF-8 would be shown
/// with U+FFFD in place of its bytes, and every lookup by path (`kmsfs unmount` waiting for
/// the daemon, `kmsfs key CIPHERDIR`, a second mount) would miss it: refused (until 2026-12-06
/// it was mounted with the mangled name).
fn fsname(cipherdir: &Path) -> Result<String, CliError> {
    cipherdir.to_str().map(str::to_string).ok_or_else(|| {
        CliError::new(
            code::ERROR,
            format!(
                "cannot mount {}: the path of the cipher directory is not valid UTF-8, which the \
                 mount table cannot show faithfully",
                cipherdir.display()
            ),
        )
        .hint("rename the directory (or one above it) to a UTF-8 name")
    })
}

/// `-o auto_unmount` makes fusermount3 unmount when the daemon dies; it insists on
/// `allow_other` or `allow_root`, and fuser refused it without with its own words ("requires
/// acl != Owner").
fn check_auto_unmount(a: &MountArgs) -> Result<(), CliError> {
    let opts: Vec<&str> = a.fuse_opts.iter().flat_map(|o| o.split(',')).collect();
    if opts.contains(&"auto_unmount")
        && !a.allow_other
        && !opts
            .iter()
            .any(|o| *o == "allow_other" || *o == "allow_root")
    {
        return Err(CliError::new(
            code::MOUNT_FAILED,
            "-o auto_unmount needs --allow-other (or -o allow_root): fusermount3 takes it only \
             with one of them",
        )
        .hint(
            "leave it out: `kmsfs unmount`, SIGTERM, SIGINT and SIGHUP unmount cleanly, and \
             `kmsfs mount` clears a mount left by a daemon that died",
        ));
    }
    Ok(())
}

/// What a running mount holds.
struct Session {
    vfs: Arc<Vfs>,
    km: Arc<KeyManager>,
    audit: Arc<AuditLog>,
}

fn system_record(event: &str, detail: String) -> AuditRecord {
    let mut r = AuditRecord::new(event, Source::System);
    r.actor = crate::vfs::identity::current().into();
    r.detail = Some(detail);
    r
}

/// Serves the mount until it is unmounted, with Mount/Unmount audit records and a closing
/// checkpoint.
fn serve(
    s: Session,
    mountpoint: &Path,
    opts: &MountOptions,
    ready: impl FnOnce(),
) -> std::io::Result<()> {
    // Before this process starts its threads (a daemon is a fresh fork, single-threaded).
    presize_fd_table();
    start_maintenance(s.km.clone(), s.audit.clone());
    s.audit.append(system_record(
        "Mount",
        format!("mounted on {}", mountpoint.display()),
    ))?;
    let r = crate::fuse::mount(s.vfs.clone(), mountpoint, opts, ready);
    // Before the session's end is recorded: a power loss right after must not find a marker
    // gone ahead of its data (`vfs::marker_queue`).
    s.vfs.settle_markers();
    let _ = s.audit.append(system_record(
        "Unmount",
        format!("unmounted from {}", mountpoint.display()),
    ));
    if let Err(e) = s.km.close_audit(&s.audit) {
        tracing::error!("ending the audit session: {e}");
    }
    r
}

/// Automatic rotations and deletions whose window has passed, audited as system events. The
/// records go first (fail-closed, as for every key-manager operation): when one cannot be
/// written, nothing is done this time (the next minute tries again).
fn run_maintenance(km: &KeyManager, audit: &AuditLog) {
    let key_record = |event: &str, key: String, version: Option<u32>, detail: &str| {
        let mut r = AuditRecord::new(event, Source::System);
        r.resources.key_id = Some(key);
        r.resources.key_version = version;
        r.detail = Some(detail.into());
        audit.append(r)
    };
    const ROTATED: &str = "automatic rotation (period elapsed)";
    const DESTROYED: &str = "deletion window ended: key material destroyed";
    let due = km.due();
    let (rotating, destroying) = &due;
    let recorded = rotating
        .iter()
        .try_for_each(|(k, v)| key_record("RotateKey", k.to_string(), Some(*v), ROTATED).map(drop))
        .and_then(|()| {
            destroying
                .iter()
                .try_for_each(|k| key_record("DeleteKey", k.to_string(), None, DESTROYED).map(drop))
        });
    match recorded {
        Err(e) => tracing::error!(
            "audit log write failed: automatic rotations and deletions wait for the next try: {e}"
        ),
        // Exactly what was recorded (a key due since waits for the next minute's record).
        Ok(()) => match km.tick_recorded(&due) {
            Ok((rotated, destroyed)) => {
                for (k, v) in &rotated {
                    tracing::info!("automatic rotation: key {k} is now at version {v}");
                }
                for k in &destroyed {
                    tracing::warn!(
                        "deletion window ended: key {k} destroyed; files under it are unrecoverable"
                    );
                }
                // Recorded, then changed by a request in between (a deletion cancelled, a
                // rotation made by hand): the log says it did not happen.
                for (k, v) in rotating.iter().filter(|r| !rotated.contains(r)) {
                    let _ = key_record(
                        "RotateKey",
                        k.to_string(),
                        Some(*v),
                        "automatic rotation not carried out: no longer due",
                    );
                }
                for k in destroying.iter().filter(|k| !destroyed.contains(k)) {
                    let _ = key_record(
                        "DeleteKey",
                        k.to_string(),
                        None,
                        "destruction not carried out: the key is no longer pending deletion",
                    );
                }
            }
            Err(e) => tracing::error!("key maintenance failed: {e}"),
        },
    }
    // The control directory's views learn of a removal from the log itself.
    match km.expire_audit(audit) {
        Ok(Some((a, b))) => tracing::info!("audit retention: removed segments {a}..={b}"),
        Ok(None) => {}
        Err(e) => tracing::error!("audit retention failed: {e}"),
    }
}

/// Whether the last of the options `on` and `off` given is `on` (None: neither given), as
/// mount(8) reads a pair such as `ro`/`rw`.
fn last_of(opts: &[String], on: &str, off: &str) -> Option<bool> {
    opts.iter()
        .rev()
        .find(|o| *o == on || *o == off)
        .map(|o| o == on)
}

/// Runs [`run_maintenance`] every minute while mounted (threads do not survive fork, so this
/// starts in the process that serves the mount).
fn start_maintenance(km: Arc<KeyManager>, audit: Arc<AuditLog>) {
    let _ = std::thread::Builder::new()
        .name("kmsfs-maintenance".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(60));
                run_maintenance(&km, &audit);
                if let Err(e) = audit.sync() {
                    tracing::error!("audit log sync failed: {e}");
                }
            }
        });
}

fn daemonize(
    session: Session,
    mountpoint: &Path,
    opts: &MountOptions,
    lock: OwnedFd,
) -> Result<(), CliError> {
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| CliError::new(code::ERROR, format!("pipe: {e}")))?;
    // SAFETY: the process is single-threaded here (no threads were started yet: the key
    // derivation ran on this thread and the FUSE workers start in the child).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(CliError::new(
            code::ERROR,
            format!("fork: {}", std::io::Error::last_os_error()),
        ));
    }
    if pid > 0 {
        drop(wr);
        drop(lock);
        session.vfs.hand_session_to_child();
        let mut status = [0u8; 1];
        let mut f = File::from(rd);
        return match f.read(&mut status) {
            Ok(1) if status[0] == 0 => Ok(()),
            Ok(1) => Err(CliError::new(
                i32::from(status[0]),
                format!("mount on {} failed (see above)", mountpoint.display()),
            )),
            _ => Err(CliError::new(
                code::MOUNT_FAILED,
                format!(
                    "the kmsfs daemon exited before the mount on {} was ready",
                    mountpoint.display()
                ),
            )),
        };
    }
    // Child.
    drop(rd);
    let _ = rustix::process::setsid();
    let _ = std::env::set_current_dir("/");
    let mut wr = File::from(wr);
    let r = serve(session, mountpoint, opts, || {
        // Detach from the terminal only now: mount errors above still reach the user's stderr.
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for fd in [0, 1, 2] {
                // SAFETY: dup2 onto the standard descriptors of this process.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        let _ = wr.write_all(&[0]);
    });
    if let Err(e) = &r {
        eprintln!("kmsfs: mount on {} failed: {e}", mountpoint.display());
        let _ = wr.write_all(&[code::MOUNT_FAILED as u8]);
    }
    drop(lock);
    std::process::exit(if r.is_ok() {
        code::OK
    } else {
        code::MOUNT_FAILED
    });
}

#[derive(Args, Debug)]
pub struct UnmountArgs {
    mountpoint: PathBuf,
}

pub fn unmount(a: &UnmountArgs) -> Result<(), CliError> {
    // Also where the daemon is gone (ENOTCONN): such a mount is unmounted like any other.
    let abs = absolute_mountpoint(&a.mountpoint);
    let here = mounts_at(&abs);
    if !here.iter().any(|(_, t)| t == "fuse.kmsfs") {
        return Err(CliError::new(
            code::NOT_MOUNTED,
            format!("{} is not a mounted kmsfs volume", abs.display()),
        ));
    }
    let volumes: Vec<PathBuf> = here
        .iter()
        .filter(|(_, t)| t == "fuse.kmsfs")
        .map(|(src, _)| PathBuf::from(src))
        .collect();
    // Root without fusermount3 (root mounts without it) unmounts with umount2(2) (until
    // 2026-12-06 `kmsfs unmount` failed there while the daemon's own unmount worked).
    match crate::fuse::unmount_mountpoint(&abs, false, true) {
        Ok(true) => {
            for v in &volumes {
                wait_for_daemon(v);
            }
            Ok(())
        }
        Ok(false) => Err(CliError::new(
            code::ERROR,
            format!("could not unmount {}", abs.display()),
        )
        .hint("is a program still using it? (fuser -m); or use fusermount3 -u -z")),
        Err(e) => Err(
            CliError::new(code::ERROR, format!("cannot run fusermount3: {e}"))
                .hint("install the fuse3 package"),
        ),
    }
}

/// How long `unmount` waits for the daemon to let go of the volume.
const DAEMON_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until the daemon that served the volume at `root` has let go of it (its mount lock):
/// its closing audit checkpoint is written and its files are closed, so the cipher directory
/// no longer changes once `unmount` returns, for a backup, an `rsync` or an `rm -rf` right
/// after. Before 2026-12-05 `unmount` returned as soon as the kernel had let go, while the
/// daemon still wrote for a few milliseconds. Stops waiting if the volume is mounted again;
/// says so after [`DAEMON_EXIT_WAIT`].
fn wait_for_daemon(root: &Path) {
    let p = VolumePaths::new(root).control_dir().join("mount.lock");
    let Ok(f) = std::fs::File::open(&p) else {
        return; // not a path to a volume this user can read: nothing to wait on
    };
    let deadline = std::time::Instant::now() + DAEMON_EXIT_WAIT;
    let remounted = || {
        mount_table()
            .iter()
            .any(|(src, _, ty)| ty == "fuse.kmsfs" && Path::new(src) == root)
    };
    loop {
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => {
                let _ = rustix::fs::flock(&f, rustix::fs::FlockOperation::Unlock);
                return;
            }
            Err(rustix::io::Errno::WOULDBLOCK) if !remounted() => {
                if std::time::Instant::now() >= deadline {
                    eprintln!(
                        "kmsfs: warning: unmounted here, but the daemon of {} still runs after \
                         {} s (mounted in another mount namespace too, or slow to finish): the \
                         cipher directory may still change",
                        root.display(),
                        DAEMON_EXIT_WAIT.as_secs()
                    );
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_point_that_is_not_utf8_hides_no_other_mount() {
        use std::os::unix::ffi::OsStrExt;
        let t = parse_mount_table(
            b"/dev/sdb1 /media/caf\xe9 vfat rw 0 0\n\
              /srv/my\\040vault /mnt/a\\040b fuse.kmsfs rw,nosuid 0 0\n\
              /srv/\xe9 /mnt/\xe9 fuse.kmsfs rw 0 0\n",
        );
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[1],
            (
                "/srv/my vault".to_string(),
                PathBuf::from("/mnt/a b"),
                "fuse.kmsfs".to_string()
            )
        );
        assert_eq!(t[2].1.as_os_str().as_bytes(), b"/mnt/\xe9");
        assert_eq!(t[0].1.as_os_str().as_bytes(), b"/media/caf\xe9");
    }
}
