//! vfs is the filesystem model: inodes, handles and POSIX semantics over an encrypted backing
//! directory. It knows nothing of FUSE (the `fuse` adapter translates), so it is tested without a
//! mount. Operations are grouped by file: `dir_ops` (names), `dir_read` (readdir), `file_ops`
//! (open/read/write), `attr_ops` (getattr/setattr), `xattr_ops`.

mod access_ops;
mod acl_ops;
mod attr;
mod attr_ops;
mod backing;
mod control_ops;
mod copy_ops;
mod dir_ahead;
mod dir_id_heal;
mod dir_ops;
mod dir_read;
mod error;
mod export;
mod file_ops;
mod flags_ops;
pub mod identity;
mod inode;
mod kept_mtime;
mod long_link_ops;
mod marker_queue;
mod open_file;
mod path;
mod prefetch;
mod seek_ops;
mod unclean;
mod unlinked;
mod write_behind;
mod write_order;
mod xattr_ops;

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use rustix::fs::{AtFlags, Mode, OFlags};

pub use attr::{Attr, Kind};
pub use attr_ops::{SetAttr, SetTime};
pub use control_ops::{is_control, is_control_handle};
pub use dir_ops::{RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT};
pub use dir_read::DirEntry;
pub use error::{Result, VfsError};
pub use file_ops::{OpenOptions, WriteFrom};
pub use inode::ROOT_INO;
pub use xattr_ops::XattrReply;

use crate::format::DirId;
use crate::format::offsets::Layout;
use crate::keymgr::KeyManager;
use crate::names::{CipherName, DIRID_FILE, Names};
use inode::{InodeTable, Node};
use open_file::OpenFile;

/// Who is asking (from the FUSE request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The creating process's umask, applied to the modes of new nodes unless a default ACL
    /// takes its place (without `--acl` the kernel has applied it already; in-process callers
    /// pass 0).
    pub umask: u32,
}

#[derive(Debug, Clone, Default)]
pub struct VfsOptions {
    pub read_only: bool,
    /// No read-ahead across files (see `prefetch`).
    pub no_prefetch: bool,
    /// Mounted with `noatime` (or read-only): reading a file or listing a directory through the
    /// mount leaves its access time alone. The kernel keeps no access times for a FUSE mount;
    /// kmsfs's come from the backing files, whose reads would set them, so backing files and
    /// directories are opened `O_NOATIME`.
    pub noatime: bool,
    /// POSIX ACLs (`--acl`, see `acl_ops`): stored, inherited, kept in step with the mode.
    pub acl: bool,
    /// New regular files may hold holes (header flag `FLAG_SPARSE`; the volume has the feature
    /// `sparse-files`).
    pub sparse: bool,
    /// The kernel resolves O_APPEND offsets itself (a FUSE mount, in both cache modes:
    /// `generic_write_checks` puts the write at its size, from the descriptor's flags *at the
    /// write*, and the writeback cache later flushes dirty pages with explicit offsets through
    /// any writable handle): a handle opened with O_APPEND writes exactly where it is told.
    /// Before 2026-12-06 (then by the FUSE adapter leaving O_APPEND out), a write after
    /// `fcntl(F_SETFL)` took O_APPEND off the descriptor, or one with
    /// `pwritev2(RWF_NOAPPEND)`, went to the end of the file instead of its offset. The open
    /// still sees the flag (an append-only file opens for writing only with it).
    pub kernel_appends: bool,
}

/// An open file handle.
#[derive(Debug)]
struct Handle {
    ino: u64,
    file: Arc<OpenFile>,
    append: bool,
    /// Opened for reading. With the writeback cache the kernel also reads through a handle
    /// opened for writing only, to fill a page a write covers in part: not the caller's read
    /// (no access time, not counted in the close record).
    reads: bool,
    /// Reads through it set the access time: `reads` without O_NOATIME. An O_NOATIME handle
    /// shares the backing descriptor, which leaves access times alone until a handle without
    /// it reads (see `OpenFile::reading`).
    accesses: bool,
    /// Opened for writing.
    writes: bool,
    /// Opened for writing without O_APPEND: the file cannot be made append-only meanwhile
    /// (`flags_ops`).
    overwrites: bool,
    /// The file's failed write-backs this handle has reported (or that came before it was
    /// opened): each handle open for writing learns of a later one once, as `fsync(2)` does.
    wb_seen: AtomicU64,
    /// Present when the mount is audited: who opened it and the byte counts for the close record.
    audit: Option<access_ops::HandleAudit>,
}

/// File system statistics of the backing store.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

pub struct Vfs {
    root: PathBuf,
    km: Arc<KeyManager>,
    names: Names,
    layout: Layout,
    block_size: u32,
    inodes: InodeTable,
    /// Finding nodes again by number (`open_by_handle_at`, NFS export).
    export: export::Export,
    handles: DashMap<u64, Handle>,
    /// Backing directories kept open where a listing stopped.
    dir_cursors: dir_read::Cursors,
    /// One shared content state per open inode, with its handle count.
    open_files: DashMap<u64, (Arc<OpenFile>, usize)>,
    /// How many files open for writing have been closed everywhere (counted before the state
    /// goes from `open_files`): a listing that sees it move while it reads an entry cannot
    /// tell whether the size it read was the last writer's (see `readdirplus`).
    writers_closed: AtomicU64,
    /// When an entry was last removed ([`inode::coarse_now_ms`]; 0: never): a write short of
    /// space shortly after waits for its blocks (`unlinked.rs`).
    removed_at: AtomicU64,
    /// Closed files whose interrupted-write markers wait for their data to reach the disk.
    markers: marker_queue::MarkerQueue,
    /// `.kmsfs/mounted-rw`: [`FLAG_NONE`], [`FLAG_OURS`] (made or found by this session) or
    /// [`FLAG_FAILED`] (could not be made: not tried again before the session ends).
    session_flag: std::sync::atomic::AtomicU8,
    /// Files closed since a write to them failed (see `take_stale_caches`).
    stale_caches: std::sync::Mutex<Vec<u64>>,
    /// `stale_caches` is not empty (read on every release without the lock).
    stale_pending: std::sync::atomic::AtomicBool,
    next_fh: AtomicU64,
    /// We run as root: new files get the caller's ownership.
    chown_new: bool,
    opts: VfsOptions,
    /// `opts.read_only` and `opts.noatime` as the mount's flags have them now (a remount
    /// changes them, see `remounted`).
    read_only: std::sync::atomic::AtomicBool,
    noatime: std::sync::atomic::AtomicBool,
    /// Written while a directory's `kmsfs.dirid` is briefly absent (rmdir, rename over a
    /// directory), read while a directory id is read from disk, so that no reader sees the gap.
    dirid_gap: std::sync::RwLock<()>,
    /// The audit log, once attached (see `set_audit`).
    audit: std::sync::OnceLock<Arc<crate::keymgr::audit::AuditLog>>,
    /// Cipher directory path -> plaintext path (for policies, rules and audit records).
    path_cache: DashMap<std::path::PathBuf, String>,
    /// The cipher directory as `/proc/self/fd` shows it (resolved once).
    root_cipher: std::sync::OnceLock<std::path::PathBuf>,
    /// Renames through the mount so far: a directory's remembered plaintext path is good while
    /// this count has not moved (see `path.rs`).
    renames: std::sync::atomic::AtomicU64,
    /// The virtual `.kmsfs/` directory.
    control: Arc<crate::control::ControlDir>,
    /// Requests served so far (for `--idle`).
    activity: AtomicU64,
    /// Identities of requesting processes, briefly cached by pid.
    identities: DashMap<u32, (std::time::Instant, crate::keymgr::policy::Identity)>,
    /// Read-ahead of the next files of a directory whose files are being opened in turn.
    prefetch: prefetch::Prefetch,
    /// The volume's ACL marker is known to exist (see `acl_ops::mark_acls_used`).
    acls_marked: std::sync::atomic::AtomicBool,
    /// A file of the volume may be append-only (`.kmsfs/append-only-files` is there, or a file
    /// was made so now): only then are files asked for the flag (`flags_ops`).
    append_files: std::sync::atomic::AtomicBool,
    /// Reads the mount's flags now and passes them to `remounted` (set by the mount, see
    /// `fuse::remount`): a write refused as read-only asks first (`check_writable`).
    mount_refresh: std::sync::OnceLock<MountRefresh>,
    /// Side files of symlink targets too long to store inline (`long_link_ops`).
    links: crate::names::long_links::LinkStore,
    /// The volume has long links (the store exists, or one was made now): only then is a name
    /// about to go looked at for one.
    long_links: std::sync::atomic::AtomicBool,
}

/// See `Vfs::mount_refresh`.
pub type MountRefresh = Box<dyn Fn() + Send + Sync>;

/// States of `Vfs::session_flag`.
const FLAG_NONE: u8 = 0;
const FLAG_OURS: u8 = 1;
const FLAG_FAILED: u8 = 2;

impl Drop for Vfs {
    fn drop(&mut self) {
        self.settle_markers();
    }
}

impl std::fmt::Debug for Vfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vfs").field("root", &self.root).finish()
    }
}

impl Vfs {
    /// A model over the cipher directory `root` of an unlocked volume. The modes of new nodes
    /// are decided here (the caller's umask or a default ACL, see `acl_ops::inherit`): the
    /// process's own umask must be 0 (`kmsfs mount` sets it), or it cuts them down again.
    pub fn new(
        root: &Path,
        km: Arc<KeyManager>,
        block_size: u32,
        plaintext_names: bool,
        opts: VfsOptions,
    ) -> Result<Vfs> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let names = Names::new(&km.volume_secret(), plaintext_names);
        let control = {
            let (root, names) = (
                root.to_path_buf(),
                Names::new(&km.volume_secret(), plaintext_names),
            );
            let facts = crate::control::VolumeFacts {
                cipher_dir: root.display().to_string(),
                format_version: crate::format::config::CONFIG_VERSION,
                block_size,
                features: [
                    Some(if plaintext_names {
                        crate::format::config::FEATURE_PLAINTEXT_NAMES
                    } else {
                        crate::format::config::FEATURE_ENCRYPTED_NAMES
                    }),
                    opts.sparse
                        .then_some(crate::format::config::FEATURE_SPARSE_FILES),
                ]
                .into_iter()
                .flatten()
                .map(String::from)
                .collect(),
                read_only: opts.read_only,
                acl: opts.acl,
            };
            crate::control::ControlDir::new(km.clone(), facts, root, names)
        };
        let prefetch = prefetch::Prefetch::new(!opts.no_prefetch);
        // A read-only mount changes nothing in the cipher directory, access times included.
        let opts = VfsOptions {
            noatime: opts.noatime || opts.read_only,
            ..opts
        };
        let export = export::Export::probe(&fd, &km.volume_secret());
        let links = crate::names::long_links::LinkStore::new(root);
        let vfs = Vfs {
            control,
            activity: AtomicU64::new(0),
            root: root.to_path_buf(),
            km,
            names,
            layout: Layout::new(block_size),
            block_size,
            export,
            inodes: InodeTable::new(fd, st.st_ino),
            handles: DashMap::new(),
            dir_cursors: Default::default(),
            open_files: DashMap::new(),
            writers_closed: AtomicU64::new(0),
            removed_at: AtomicU64::new(0),
            markers: Default::default(),
            session_flag: Default::default(),
            stale_caches: Default::default(),
            stale_pending: Default::default(),
            next_fh: AtomicU64::new(1),
            chown_new: rustix::process::geteuid().is_root(),
            read_only: opts.read_only.into(),
            noatime: opts.noatime.into(),
            opts,
            dirid_gap: std::sync::RwLock::new(()),
            audit: std::sync::OnceLock::new(),
            identities: DashMap::new(),
            path_cache: DashMap::new(),
            root_cipher: std::sync::OnceLock::new(),
            renames: std::sync::atomic::AtomicU64::new(0),
            prefetch,
            acls_marked: std::sync::atomic::AtomicBool::new(false),
            append_files: crate::keymgr::VolumePaths::new(root)
                .append_marker()
                .exists()
                .into(),
            mount_refresh: std::sync::OnceLock::new(),
            long_links: links.exists().into(),
            links,
        };
        if !vfs.read_only() {
            vfs.begin_rw_session();
        }
        Ok(vfs)
    }

    /// Makes `.kmsfs/mounted-rw` before anything can be written (see `marker_queue`), or finds
    /// it left by a session that did not end cleanly: then the files that carry a marker are
    /// recovered first (`unclean.rs`).
    fn begin_rw_session(&self) {
        if self
            .session_flag
            .compare_exchange(FLAG_NONE, FLAG_OURS, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let p = crate::keymgr::VolumePaths::new(&self.root).session_flag();
        match std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create_new(true),
            0o600,
        )
        .open(&p)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.recover_marked_files();
            }
            Err(e) => {
                tracing::warn!("cannot make {}: {e}", p.display());
                self.session_flag.store(FLAG_FAILED, Ordering::Release);
            }
        }
    }

    /// Counts a request (the idle timer watches this).
    fn touch(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests served so far, and whether any file is open (for `--idle`; directories are
    /// listed without being opened, see `dir_read`).
    pub fn activity(&self) -> (u64, bool) {
        (
            self.activity.load(Ordering::Relaxed),
            !self.handles.is_empty() || self.control.has_open_files(),
        )
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn key_manager(&self) -> &Arc<KeyManager> {
        &self.km
    }

    /// Inodes the kernel holds (each costs a descriptor).
    pub fn node_count(&self) -> usize {
        self.inodes.len()
    }

    /// Whether the kernel still holds inode `ino`.
    pub fn knows(&self, ino: u64) -> bool {
        self.inodes.get(ino).is_ok()
    }

    /// Removes the interrupted-write markers of closed files once their data is on the disk
    /// (see `marker_queue`), all of them now (within `UNMOUNT_BUDGET`; what is left keeps the
    /// session's flag, for the next mount to recover): at unmount.
    pub fn settle_markers(&self) {
        // Files still open (a connection aborted with handles open): no request comes any
        // more, so their markers are settled too.
        for e in self.open_files.iter() {
            e.value().0.hand_over_marker(&self.markers);
        }
        if self.markers.settle_all(marker_queue::UNMOUNT_BUDGET)
            && self.session_flag.swap(FLAG_NONE, Ordering::AcqRel) == FLAG_OURS
        {
            let paths = crate::keymgr::VolumePaths::new(&self.root);
            if let Err(e) = paths.end_session() {
                tracing::warn!("cannot remove {}: {e}", paths.session_flag().display());
            }
        }
    }

    /// This copy of the model ends without ending the session (the parent of a daemon that
    /// forked: the child serves the mount, and removes `.kmsfs/mounted-rw` at its clean end).
    pub fn hand_session_to_child(&self) {
        self.session_flag.store(FLAG_NONE, Ordering::Release);
    }

    /// The descriptor limit may have changed (read again once a second by the FUSE adapter's
    /// reclaim thread): closed files waiting with their markers keep to the bound it sets.
    pub fn limit_changed(&self) {
        self.markers.recheck();
    }

    /// Closed files whose interrupted-write markers wait for their data to reach the disk.
    pub fn markers_waiting(&self) -> usize {
        self.markers.len()
    }

    /// Files closed everywhere since a write to them failed (ENOSPC, EIO). With the writeback
    /// cache the kernel accepted those writes into its page cache and grew its idea of the size
    /// before sending them, and on the failure it keeps both: it trusts its own size of a
    /// regular file over ours, so until it drops the inode a `stat` shows the size of a write
    /// that never reached the disk, and reads show its bytes, or zeros past our end. The mount
    /// asks the kernel to drop these (FUSE_NOTIFY_INVAL_ENTRY of their names), after which the
    /// file reads as stored. Taken once.
    pub fn take_stale_caches(&self) -> Vec<u64> {
        let mut v = self.stale_caches.lock().unwrap_or_else(|p| p.into_inner());
        self.stale_pending.store(false, Ordering::Relaxed);
        std::mem::take(&mut *v)
    }

    /// Whether [`Vfs::take_stale_caches`] has anything.
    pub fn has_stale_caches(&self) -> bool {
        self.stale_pending.load(Ordering::Relaxed)
    }

    /// Whether inode `ino` is open through a handle.
    pub fn is_open(&self, ino: u64) -> bool {
        self.open_files.contains_key(&ino)
    }

    fn node(&self, ino: u64) -> Result<Arc<Node>> {
        self.inodes.get(ino)
    }

    /// Records that a listing of directory `ino` was given to the kernel (which caches it).
    pub fn listing_given(&self, ino: u64) {
        if let Ok(n) = self.inodes.get(ino) {
            n.set_listed();
        }
    }

    /// Whether a listing of directory `ino` was given to the kernel since the last call, which
    /// a change of its entries (just made) has made stale; clears it.
    pub fn take_listed(&self, ino: u64) -> bool {
        self.inodes.get(ino).is_ok_and(|n| n.take_listed())
    }

    fn dir_node(&self, ino: u64) -> Result<Arc<Node>> {
        let n = self.node(ino)?;
        if n.kind != Kind::Dir {
            return Err(VfsError::Sys(rustix::io::Errno::NOTDIR));
        }
        Ok(n)
    }

    /// The mount was remounted (`mount -o remount,...`): read-only or not, `noatime` or not
    /// from now on. Returns whether anything changed.
    pub fn remounted(&self, read_only: bool, noatime: bool) -> bool {
        if !read_only {
            self.begin_rw_session();
        }
        let noatime = noatime || read_only;
        let was = (
            self.read_only.swap(read_only, Ordering::AcqRel),
            self.noatime.swap(noatime, Ordering::AcqRel),
        );
        self.control.set_read_only(read_only);
        was != (read_only, noatime)
    }

    /// Mounted read-only now.
    fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    /// Access times are left alone now (`noatime` or read-only).
    fn noatime(&self) -> bool {
        self.noatime.load(Ordering::Acquire)
    }

    /// Refuses a change while the mount is read-only. The flag follows remounts through a
    /// thread that watches the mount table (`fuse::remount`), which may not have seen a remount
    /// to read-write yet when a write comes right after it (the kernel lets writes through as
    /// soon as `mount -o remount,rw` returns): so a refusal looks at the mount table first.
    /// Writes reach a read-only mount rarely (the kernel refuses most of them itself).
    fn check_writable(&self) -> Result<()> {
        if self.read_only_now() {
            return Err(VfsError::ReadOnly);
        }
        Ok(())
    }

    /// `read_only`, confirmed from the mount table when it says so (see `check_writable`): for
    /// the rare decisions that a remount to read-write must not find out of date.
    fn read_only_now(&self) -> bool {
        if self.read_only()
            && let Some(refresh) = self.mount_refresh.get()
        {
            refresh();
        }
        self.read_only()
    }

    /// How `check_writable` reads the mount's flags now (see `mount_refresh`).
    pub fn set_mount_refresh(&self, f: MountRefresh) {
        let _ = self.mount_refresh.set(f);
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// The id a directory's entry names are bound to.
    fn dir_id(&self, dir: &Node) -> Result<DirId> {
        self.dir_id_with(dir, None)
    }

    /// [`Vfs::dir_id`], reading the copy through `open`, a descriptor of the directory opened
    /// for reading, when there is one (cheaper than by the node's `/proc/self/fd` path: the
    /// node's own descriptor is `O_PATH`, which takes no xattr calls).
    fn dir_id_with(&self, dir: &Node, open: Option<&std::os::fd::OwnedFd>) -> Result<DirId> {
        if self.names.plaintext() {
            return Ok(DirId([0; 16]));
        }
        if let Some(id) = dir.dir_id_switched.get().or_else(|| dir.dir_id.get()) {
            return Ok(*id);
        }
        // The copy in the directory's xattr comes with its inode; the file costs a read of its own.
        let copy = match open {
            Some(fd) => crate::fsutil::read_dirid_copy_fd(fd),
            None => crate::fsutil::read_dirid_copy(std::path::Path::new(&dir.proc_path())),
        };
        if let Some(b) = copy
            && let Ok(id) = <[u8; 16]>::try_from(b.as_slice())
        {
            return Ok(*dir.dir_id.get_or_init(|| DirId(id)));
        }
        let gap = self.dirid_gap.read().unwrap_or_else(|p| p.into_inner());
        let fd = match rustix::fs::openat(
            &dir.fd,
            DIRID_FILE,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // A directory removed after the kernel looked it up: gone, not damaged.
            Err(rustix::io::Errno::NOENT) if rustix::fs::fstat(&dir.fd)?.st_nlink == 0 => {
                return Err(VfsError::Sys(rustix::io::Errno::NOENT));
            }
            // No id at all: a mkdir cut short leaves an empty directory so.
            Err(e @ rustix::io::Errno::NOENT) => {
                drop(gap);
                if let Some(id) = self.heal_dir_id(dir)? {
                    return Ok(id);
                }
                return Err(self.damaged(
                    dir,
                    format!("directory id file {DIRID_FILE} unreadable: {e}"),
                ));
            }
            // Out of descriptors: not damage (no integrity record; the request may wait and
            // try again, see `fuse::reclaim`).
            Err(e @ (rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)) => {
                return Err(VfsError::Sys(e));
            }
            Err(e) => {
                return Err(self.damaged(
                    dir,
                    format!("directory id file {DIRID_FILE} unreadable: {e}"),
                ));
            }
        };
        let mut b = [0u8; 17];
        let n = rustix::io::read(&fd, &mut b)?;
        drop(gap);
        if n == 0
            && let Some(id) = self.heal_dir_id(dir)?
        {
            return Ok(id);
        }
        if n != 16 {
            return Err(self.damaged(
                dir,
                format!("directory id file {DIRID_FILE} has {n} bytes, not 16"),
            ));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[..16]);
        let id = *dir.dir_id.get_or_init(|| DirId(id));
        // Read from the file itself: the file does not differ from the id in use.
        if id.0 == b[..16] {
            let _ = dir.dir_id_file.set(None);
        }
        Ok(id)
    }

    /// Logs and returns an integrity error about a backing object.
    /// A name of directory `dir` (open for reading as `fd`) did not decrypt under `current`, its
    /// id: if `kmsfs.dirid` holds another id (the copy in the xattr, read first, may be the
    /// damaged one) and `decrypts` says the name decrypts under it, the directory's id is the
    /// file's from now on (as `kmsfs fsck` decides, which also mends the copy). Costs a read of
    /// the file, once per directory, and only after a failure.
    pub(super) fn dir_id_by_file(
        &self,
        dir: &Node,
        fd: &std::os::fd::OwnedFd,
        current: &DirId,
        decrypts: impl Fn(&DirId) -> bool,
    ) -> Option<DirId> {
        if self.names.plaintext() {
            return None;
        }
        if let Some(id) = dir.dir_id_switched.get() {
            return (id != current).then_some(*id);
        }
        let file = dir.dir_id_file.get_or_init(|| {
            let _gap = self.dirid_gap.read().unwrap_or_else(|p| p.into_inner());
            read_dirid_file(fd).filter(|id| id != current)
        });
        let id = (*file)?;
        if !decrypts(&id) {
            return None;
        }
        let id = *dir.dir_id_switched.get_or_init(|| {
            let _ = self.damaged(
                dir,
                format!(
                    "the directory id's copy in {} differs from {DIRID_FILE}, and names \
                     decrypt with the file's id: using the file (kmsfs fsck --repair mends the copy)",
                    crate::fsutil::DIRID_XATTR
                ),
            );
            id
        });
        Some(id)
    }

    fn damaged(&self, node: &Node, what: String) -> VfsError {
        let label = self.label(node);
        tracing::error!(path = %label, ino = node.ino, "integrity failure: {what}");
        self.audit_integrity(None, &format!("{label}: {what}"));
        VfsError::Integrity(format!("{label}: {what}"))
    }

    /// The backing path of a node, for logs (cipher names only).
    fn label(&self, node: &Node) -> String {
        std::fs::read_link(node.proc_path())
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| format!("inode {}", node.ino))
    }

    /// The cipher name of `name` in directory `dir`.
    fn cipher_name(&self, dir: &Node, name: &OsStr) -> Result<CipherName> {
        let id = self.dir_id(dir)?;
        Ok(self
            .names
            .encrypt(&id, name.as_bytes(), dir.ino == ROOT_INO)?)
    }

    /// [`Vfs::cipher_name`] for a name about to be made (create, mkdir, link, rename's target…):
    /// under the id the directory's names are under (see [`Vfs::id_for_new_name`]).
    fn new_cipher_name(&self, dir: &Arc<Node>, name: &OsStr) -> Result<CipherName> {
        let id = self.id_for_new_name(dir)?;
        Ok(self
            .names
            .encrypt(&id, name.as_bytes(), dir.ino == ROOT_INO)?)
    }

    /// [`Vfs::intern_child`] for an entry the kernel looks up or lists, which may be a file
    /// left torn by a killed daemon: recovered first (see [`Vfs::recovered_attr`]). Entries
    /// made through the mount (create, link, …) need not be looked at.
    fn intern_found(&self, dir: &Node, entry: &OsStr, plain: &OsStr) -> Result<(Arc<Node>, Attr)> {
        self.intern(dir, entry, plain, true)
    }

    /// Finds (or registers) the node of entry `entry` of `dir`, whose plaintext name is `plain`,
    /// and counts one lookup.
    fn intern_child(&self, dir: &Node, entry: &OsStr, plain: &OsStr) -> Result<(Arc<Node>, Attr)> {
        self.intern(dir, entry, plain, false)
    }

    fn intern(
        &self,
        dir: &Node,
        entry: &OsStr,
        plain: &OsStr,
        recover: bool,
    ) -> Result<(Arc<Node>, Attr)> {
        dir.note_entries_read();
        let fd = match rustix::fs::openat(
            &dir.fd,
            entry,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e @ (rustix::io::Errno::MFILE | rustix::io::Errno::NFILE)) => {
                return self.intern_without_descriptor(dir, entry, plain, e);
            }
            Err(e) => return Err(e.into()),
        };
        let st = rustix::fs::fstat(&fd)?;
        let node = self
            .inodes
            .intern(fd, st.st_ino, Kind::from_mode(st.st_mode), |fd| {
                self.export.identity(fd)
            });
        node.set_name(dir.ino, entry, plain);
        let attr = recover
            .then(|| self.recovered_attr(&node, &st))
            .flatten()
            .unwrap_or_else(|| self.attr_of(&node, &st));
        Ok((node, attr))
    }

    /// The attributes of a regular file that carries an interrupted-write marker with a torn
    /// write under it (see `content::pending`), once the write is recovered: before, the kernel
    /// was given the size the cipher length implies (0 for a length no file can have) at the
    /// lookup, and with the writeback cache it keeps the size it was given for as long as it
    /// holds the inode, also after the open that recovered the file. Right after a remount a
    /// file torn by a killed daemon then read with zeros past its recovered end (or as empty),
    /// and an O_APPEND write went to that size: after a gap of zeros, or to offset 0 over the
    /// data that had been fsync'd (found 2026-12-06). So the recovery comes first, as at an
    /// open (which also uses the file's key before its caller is authorized).
    ///
    /// The marker is looked for (one `getxattr`, ~3 µs) only where a torn write can be: a
    /// length no file can have, or a change time equal to the modification time. The write
    /// that a kill tears sets both to the same instant, and nothing after it changes them
    /// before the next mount; once its write is complete and on the disk kmsfs removes the
    /// marker, which moves the change time alone. Files whose times do not show it (closed
    /// with the marker still on, or changed offline after the crash) were recovered at the
    /// start of the mount already (`unclean.rs`). `None` for every other file, an open one,
    /// one closed whose marker waits for its data to reach the disk (`marker_queue`: its writes
    /// completed), a read-only mount, and when recovery fails (the file is then shown, and
    /// fails, as before).
    fn recovered_attr(&self, node: &Node, st: &rustix::fs::Stat) -> Option<Attr> {
        let may_be_torn = self.layout.plain_size(st.st_size as u64).is_none()
            || (st.st_ctime == st.st_mtime && st.st_ctime_nsec == st.st_mtime_nsec);
        if node.kind != Kind::File
            || !may_be_torn
            || self.read_only()
            || self.open_files.contains_key(&node.ino)
            || self.markers.holds(node.ino)
            || !crate::content::pending::is_marked_at(node.proc_path().as_str())
        {
            return None;
        }
        let (of, _) = self.get_open_file(node, false, false).ok()?;
        drop(of);
        self.put_open_file(node.ino);
        let st = rustix::fs::statat(
            &node.fd,
            "",
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )
        .ok()?;
        Some(self.attr_of(node, &st))
    }

    /// [`Vfs::intern_child`] out of descriptors (`e`): a name that does not exist is absent all
    /// the same, and a file whose node the table holds needs no second descriptor (the node
    /// holds the inode, so its number is still that file's). Otherwise `e`.
    fn intern_without_descriptor(
        &self,
        dir: &Node,
        entry: &OsStr,
        plain: &OsStr,
        e: rustix::io::Errno,
    ) -> Result<(Arc<Node>, Attr)> {
        let st = match rustix::fs::statat(&dir.fd, entry, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Err(rustix::io::Errno::NOENT.into()),
            Err(_) => return Err(e.into()),
        };
        let node = self
            .inodes
            .get_counted(self.inodes.map_ino(st.st_ino))
            .map_err(|_| VfsError::from(e))?;
        node.set_name(dir.ino, entry, plain);
        let attr = self.attr_of(&node, &st);
        Ok((node, attr))
    }

    fn attr_of(&self, node: &Node, st: &rustix::fs::Stat) -> Attr {
        let mut a = Attr::from_stat(st, node.ino, &self.layout);
        a.generation = node.generation;
        if node.kind == Kind::Symlink {
            a.size = self.symlink_size(node, st.st_size as u64, a.size);
        }
        if node.kind == Kind::File
            && let Some(of) = self.open_files.get(&node.ino)
        {
            a.size = of.0.size();
            if let Some(t) = of.0.kept_mtime.get() {
                a.mtime = attr::time(t.tv_sec, t.tv_nsec);
            }
        }
        a
    }

    fn stat_node(&self, node: &Node) -> Result<Attr> {
        let st = rustix::fs::statat(
            &node.fd,
            "",
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(self.attr_of(node, &st))
    }

    /// Gives a new backing object the caller's ownership (when running as root); a set-group-id
    /// parent directory keeps its group, as the kernel would do.
    fn set_owner(&self, dir: &Node, fd: impl AsFd, caller: &Caller) -> Result<()> {
        if !self.chown_new {
            return Ok(());
        }
        let pst = rustix::fs::fstat(&dir.fd)?;
        let gid = if pst.st_mode & libc::S_ISGID != 0 {
            pst.st_gid
        } else {
            caller.gid
        };
        let st = rustix::fs::fstat(&fd)?;
        let before = st.st_mode;
        if st.st_uid == caller.uid && st.st_gid == gid {
            // Already right (the daemon's own user, or the parent's group): no chown.
            return Ok(());
        }
        crate::fault::check("chown")?;
        rustix::fs::chownat(
            &fd,
            "",
            Some(rustix::fs::Uid::from_raw(caller.uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )?;
        // chown clears the set-user-id and set-group-id bits of anything but a directory (a
        // FIFO, socket or device node too), which the creator asked for: put them back (`fd`
        // of a regular file is a real descriptor; of a special file an O_PATH one, changed
        // through its /proc path, which chmod follows to it without opening it).
        let kind = Kind::from_mode(before);
        if before & 0o6000 != 0 && !matches!(kind, Kind::Dir | Kind::Symlink) {
            let mode = Mode::from(before & 0o7777);
            if kind == Kind::File {
                rustix::fs::fchmod(&fd, mode)?;
            } else {
                rustix::fs::chmod(inode::fd_path(&fd).as_str(), mode)?;
            }
        }
        Ok(())
    }

    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> Result<()> {
        if is_control(ino) {
            return Ok(());
        }
        let dir = self.dir_node(ino)?;
        let fd = dir.open_dir(OFlags::empty())?;
        if datasync {
            rustix::fs::fdatasync(&fd)?
        } else {
            rustix::fs::fsync(&fd)?
        }
        Ok(())
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n, |node| {
            self.export.forgotten(node);
            // A removed file waiting to have its marker removed would hold its blocks.
            if node.kind == Kind::File {
                self.markers.forget_removed(node.ino);
            }
        });
    }

    /// Number of inodes the kernel holds (for tests and metrics).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    pub fn statfs(&self) -> Result<StatFs> {
        let st = rustix::fs::fstatvfs(&self.inodes.get(ROOT_INO)?.fd)?;
        Ok(StatFs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            namelen: crate::names::NAME_MAX as u32,
            frsize: st.f_frsize as u32,
        })
    }
}

/// The id in `kmsfs.dirid` of the directory `dir` (any descriptor of it), if it is readable and
/// 16 bytes long.
fn read_dirid_file(dir: impl AsFd) -> Option<DirId> {
    let f = rustix::fs::openat(
        dir,
        DIRID_FILE,
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut b = [0u8; 17];
    let n = rustix::io::read(&f, &mut b).ok()?;
    Some(DirId(<[u8; 16]>::try_from(&b[..n]).ok()?))
}

#[cfg(test)]
mod acl_tests;
#[cfg(test)]
mod attr_tests;
#[cfg(test)]
mod backing_tests;
#[cfg(test)]
mod copy_tests;
#[cfg(test)]
mod dir_ahead_tests;
#[cfg(test)]
mod dir_ops_tests;
#[cfg(test)]
mod dir_read_tests;
#[cfg(test)]
mod export_tests;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod holes_tests;
#[cfg(test)]
mod long_link_tests;
#[cfg(test)]
mod path_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod prefetch_tests;
#[cfg(test)]
mod read_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod write_tests;
#[cfg(test)]
mod xattr_tests;
