//! The thin fuser adapter: each callback turns a request into one `Vfs` call and the result into
//! a reply. No file-system logic lives here; errors map through [`VfsError::errno`] in one place.

mod listings;
mod lseek;
mod poller;
mod prune;
mod reclaim;
mod remount;
mod session;
mod teardown;

pub use session::{MountOptions, mount, unmount_mountpoint};

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::vfs::{Attr, Caller, Kind, SetAttr, SetTime, Vfs, VfsError, WriteFrom, XattrReply};

/// How long the kernel may cache attributes and entries.
const TTL: Duration = Duration::from_secs(30);
/// Largest read/write request we ask the kernel for.
const MAX_WRITE: u32 = 1 << 20;
/// A protocol minor version whose kernels all check the attributes they are given and refuse
/// to cache an entry with an impossible size ("fuse: verify attributes": Linux 5.5, and 5.4.3
/// by a stable backport; see `readdirplus`). 7.31 is Linux 5.4, whose first releases lack the
/// check (the size would become -1), so 7.33 (FUSE_HANDLE_KILLPRIV_V2, Linux 5.11).
const INVALID_ATTRS_REFUSED_SINCE: u32 = 33;
/// A size no file can have (over `i64::MAX`).
const IMPOSSIBLE_SIZE: u64 = u64::MAX;

pub struct KmsFs {
    vfs: Arc<Vfs>,
    writeback_cache: bool,
    /// Set once the session exists (see `session.rs`): tells the kernel about attribute
    /// changes it cannot see in a reply.
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Names given to the kernel, to let it drop inodes when descriptors run short.
    reclaim: Arc<reclaim::Reclaim>,
    /// The kernel lists directories without OPENDIR (FUSE_NO_OPENDIR_SUPPORT).
    no_opendir: bool,
    /// Keeps the kernel's cached listings of `keys/` and `aliases/` fresh.
    listings: Arc<listings::ControlListings>,
    /// Looks for the next request before a thread sleeps (set once the session exists).
    poller: Arc<std::sync::OnceLock<poller::Poller>>,
    /// The kernel refuses to cache a listed entry whose attributes are impossible (see
    /// `readdirplus`).
    refuses_invalid_attrs: bool,
    /// Dropping a page waits for its write-back (see `lseek.rs`).
    lseek_waits: bool,
}

impl KmsFs {
    /// `threads`: how many threads serve requests (see `reclaim::Reclaim::set_threads`).
    pub fn new(vfs: Arc<Vfs>, writeback_cache: bool, threads: usize) -> Self {
        let reclaim = Arc::new(reclaim::Reclaim::default());
        reclaim.set_threads(threads);
        KmsFs {
            vfs,
            writeback_cache,
            notifier: Arc::default(),
            reclaim,
            no_opendir: false,
            listings: Arc::default(),
            poller: Arc::default(),
            refuses_invalid_attrs: false,
            lseek_waits: lseek::drop_waits_for_write_back(),
        }
    }

    /// An entry reply for a name in `parent`, remembered for reclaiming.
    fn entry_in(&self, reply: ReplyEntry, op: &str, parent: INodeNo, r: Result<Attr, VfsError>) {
        if let Ok(a) = &r {
            self.reclaim.seen(&self.vfs, parent.0, a);
        }
        entry(reply, op, r);
    }

    /// Clears set-user-id/set-group-id of `ino` for a caller without CAP_FSETID
    /// ([`Vfs::kill_suidgid`]); when the mode changed, makes the kernel fetch it again (the
    /// replies of WRITE and FALLOCATE carry no attributes; offset -1: attributes only, no
    /// page-cache work, safe inside a request). The errno on failure.
    fn kill_suidgid_after(&self, req: &Request, ino: INodeNo, op: &str) -> Result<(), Errno> {
        match self.vfs.kill_suidgid(ino.0, Some(&caller(req))) {
            Ok(true) => {
                if let Some(n) = self.notifier.get()
                    && let Err(e) = n.inval_inode(ino, -1, 0)
                {
                    tracing::debug!("invalidating attributes of inode {}: {e}", ino.0);
                }
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(errno(op, &e)),
        }
    }

    /// After a change of the entries of `dirs` (made, removed, renamed), before the reply: a
    /// directory whose listing the kernel holds cached has it dropped (FUSE_NOTIFY_INVAL_INODE
    /// over its pages). Directories are listed without OPENDIR, so the kernel caches listings
    /// (FOPEN_CACHE_DIR), and it checks a cached listing against the directory's changes only
    /// when a listing starts from offset 0: a stream opened later and sought to a saved
    /// position (`seekdir` on a new descriptor, an NFS server resuming from a cookie) read the
    /// old listing, with a removed name and without a new one (found with xfstests'
    /// generic/637). Only the first change after a listing asks, so an untar or an `rm -rf`
    /// pays one notification per directory at most. Safe inside the request: the kernel holds
    /// the directory locked for the change, so no listing of it holds its pages meanwhile.
    fn listing_changed(&self, dirs: &[INodeNo]) {
        for (i, d) in dirs.iter().enumerate() {
            if dirs[..i].contains(d) || !self.vfs.take_listed(d.0) {
                continue;
            }
            if let Some(n) = self.notifier.get()
                && let Err(e) = n.inval_inode(*d, 0, 0)
            {
                tracing::debug!("dropping the kernel's listing of inode {}: {e}", d.0);
            }
        }
    }

    /// [`KmsFs::listing_changed`] after an operation that succeeded.
    fn changed_if_ok<T, E>(&self, r: &Result<T, E>, dirs: &[INodeNo]) {
        if r.is_ok() {
            self.listing_changed(dirs);
        }
    }

    /// After a write, flush or release of a control file (which may have changed the key
    /// store): the kernel's cached control listings follow, before the reply (see `listings`).
    fn after_control(&self, fh: FileHandle) {
        if crate::vfs::is_control_handle(fh.0) {
            self.listings.after_request(&self.vfs);
        }
    }

    /// Where the session puts its notifier.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    pub fn poller_slot(&self) -> Arc<std::sync::OnceLock<poller::Poller>> {
        self.poller.clone()
    }

    /// Held by every request for as long as it is served (see `poller.rs`).
    fn turn(&self) -> poller::Turn<'_> {
        self.poller
            .get()
            .map_or(poller::Turn::NONE, |p| p.request())
    }

    /// The same for a READ.
    fn read_turn(&self) -> poller::Turn<'_> {
        self.poller
            .get()
            .map_or(poller::Turn::NONE, |p| p.read_request())
    }

    /// The same for a request the kernel sends in the background (RELEASE, RELEASEDIR).
    fn background_turn(&self) -> poller::Turn<'_> {
        self.poller
            .get()
            .map_or(poller::Turn::NONE, |p| p.background())
    }
}

/// Whether a change by `req` to the data of `ino` must clear its set-user-id/set-group-id
/// bits: the file has one, and the caller lacks CAP_FSETID (`identity::holds_fsetid`, a read of
/// `/proc/PID/status`, looked up only then).
fn kills_setid(vfs: &Vfs, req: &Request, ino: INodeNo) -> bool {
    vfs.getattr(ino.0).is_ok_and(|a| a.perm & 0o6000 != 0)
        && !crate::vfs::identity::holds_fsetid(req.pid(), req.uid())
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        umask: 0,
    }
}

/// The caller of a request that makes a node, with its umask (applied by the model: the kernel
/// leaves it to us when ACLs are on).
fn creator(req: &Request, umask: u32) -> Caller {
    Caller {
        umask,
        ..caller(req)
    }
}

fn errno(op: &str, e: &VfsError) -> Errno {
    if e.is_integrity() {
        tracing::error!("{op}: {e}");
    } else {
        tracing::debug!("{op}: {e}");
    }
    Errno::from_i32(e.errno())
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

fn attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: kind(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// The attributes of a negative entry: node id 0 tells the kernel the name does not exist.
fn absent() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

/// fuser 0.18 turns a request time `(secs < 0, nsecs)` into `EPOCH - (|secs| + nsecs)` where
/// the kernel means `EPOCH - |secs| + nsecs` (a timespec's nanoseconds always count forward), so
/// a time before 1970 with nanoseconds would be stored almost a second off. Undo that.
fn request_time(t: SystemTime) -> SystemTime {
    match UNIX_EPOCH.duration_since(t) {
        Ok(d) if d.subsec_nanos() != 0 => {
            UNIX_EPOCH - Duration::from_secs(d.as_secs()) + Duration::new(0, d.subsec_nanos())
        }
        _ => t,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => SetTime::At(request_time(t)),
        TimeOrNow::Now => SetTime::Now,
    })
}

/// Control-directory nodes change behind the kernel's back (a rotation, a new key, a growing
/// log): they are never cached.
fn ttl(ino: u64) -> Duration {
    if crate::vfs::is_control(ino) {
        Duration::ZERO
    } else {
        TTL
    }
}

fn entry(reply: ReplyEntry, op: &str, r: Result<Attr, VfsError>) {
    match r {
        Ok(a) => reply.entry(&ttl(a.ino), &attr(&a), Generation(a.generation)),
        Err(e) => reply.error(errno(op, &e)),
    }
}

fn empty(reply: ReplyEmpty, op: &str, r: Result<(), VfsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(op, &e)),
    }
}

fn xattr(reply: ReplyXattr, op: &str, r: Result<XattrReply, VfsError>) {
    match r {
        Ok(XattrReply::Size(n)) => reply.size(n),
        Ok(XattrReply::Data(d)) => reply.data(&d),
        Err(e) => reply.error(errno(op, &e)),
    }
}

impl Filesystem for KmsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        // The kernel gathers small buffered writes into large requests (measured: 4 KiB random
        // buffered writes 15k -> 35k IOPS). Safe because every change to the volume goes
        // through this mount; `--no-writeback-cache` turns it off.
        if self.writeback_cache {
            self.writeback_cache = config
                .add_capabilities(fuser::InitFlags::FUSE_WRITEBACK_CACHE)
                .is_ok();
        }
        self.refuses_invalid_attrs = config.kernel_abi().1 >= INVALID_ATTRS_REFUSED_SINCE;
        // Listing with attributes: `ls -l`, `du`, `find` need no separate lookup per entry.
        // Always, not READDIRPLUS_AUTO: with AUTO the kernel asks plain READDIR for every batch
        // after the first unless a child was looked up, and then looks up each of those
        // entries one by one (cold `du` of a 4,370-file tree: 81 extra lookups).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DO_READDIRPLUS);
        // Clearing set-user-id/set-group-id on write, truncate and chown is left to us (see
        // `write` and `setattr`). In return the kernel marks inodes S_NOSEC once checked, so
        // a file's later writes no longer each ask for `security.capability` (untar of a
        // 4,370-file tree: 17,757 -> 8,708 getxattr requests), and a chown no longer fetches
        // the attributes first (8,839 -> 4,468 getattr).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        // Directories are listed without OPENDIR/RELEASEDIR (see `vfs::dir_read`): the first
        // OPENDIR is answered ENOSYS, after which the kernel sends none and keeps listings in
        // its cache (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR) until the directory changes through
        // the mount. Cold `du` of a 4,370-file tree: 1,861 -> 931 requests.
        self.no_opendir = config
            .add_capabilities(fuser::InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        // POSIX ACLs (`--acl`): the kernel enforces them and asks us for them; it sends the
        // mode of new nodes without the umask applied (and the umask beside it), since a
        // directory's default ACL takes the umask's place (see `vfs::acl_ops`).
        if self.vfs.acl_enabled() {
            config
                .add_capabilities(
                    fuser::InitFlags::FUSE_POSIX_ACL | fuser::InitFlags::FUSE_DONT_MASK,
                )
                .map_err(|_| io::Error::other("the kernel does not support ACLs on FUSE"))?;
        }
        // Handles (`open_by_handle_at`, NFS export) that outlive the kernel's inode: it may
        // then ask for a node by number (see `vfs::export`). Only where we can open the backing
        // file system's handles (CAP_DAC_READ_SEARCH).
        if self.vfs.export_support() {
            let _ = config.add_capabilities(fuser::InitFlags::FUSE_EXPORT_SUPPORT);
        }
        // Letting the kernel drop inodes when descriptors run short (see `reclaim`), by prune
        // notifications where it knows them.
        self.reclaim.set_kernel_minor(config.kernel_abi().1);
        self.reclaim.start(
            self.vfs.clone(),
            self.notifier.clone(),
            self.listings.clone(),
        )?;
        self.listings
            .start(self.vfs.clone(), self.notifier.clone())?;
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _turn = self.turn();
        match self.reclaim.patiently(&self.vfs, Some(parent.0), || {
            self.vfs
                .in_dirs(&[parent.0], || self.vfs.lookup(parent.0, name))
        }) {
            // `.` and `..` come from the kernel's export operations (a handle opened after its
            // inode was let go, see `vfs::export`): no negative entry, and the node is let go
            // later by a prune (its dentry has no name in a directory).
            r if name == "." || name == ".." => self.entry_in(reply, "lookup", INodeNo(0), r),
            // A name that does not exist is cached as absent for as long as a positive entry
            // (node id 0 with a timeout: a negative dentry), so `git status`, compilers and
            // module loaders probing for files do not ask again; the kernel replaces it when
            // the name is created through the mount. Never in the control directory.
            Err(e) if e.errno() == libc::ENOENT && !crate::vfs::is_control(parent.0) => {
                reply.entry(&TTL, &absent(), Generation(0))
            }
            r => self.entry_in(reply, "lookup", parent, r),
        }
    }

    // No turn (see `poller.rs`): fuser's `batch_forget` calls this once per node of a
    // BATCH_FORGET, which would poll or park between them; and a FORGET has no reply to
    // hurry the next request after.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _turn = self.turn();
        // Through an open file whose write-back failed since: the error, once. With the
        // writeback cache this is how a write(2) after it learns of it (see `Vfs::write_from`).
        if let Some(fh) = fh
            && let Some(e) = self.vfs.take_write_error(fh.0)
        {
            return reply.error(errno("getattr", &e));
        }
        match self.vfs.getattr(ino.0) {
            Ok(a) => reply.attr(&ttl(a.ino), &attr(&a)),
            Err(e) => reply.error(errno("getattr", &e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _turn = self.turn();
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
            // The kernel flags a truncate by a process without CAP_FSETID (FATTR_KILL_SUIDGID),
            // which fuser 0.18 does not pass on: the caller's capabilities are looked up.
            kill_suidgid: size.is_some() && kills_setid(&self.vfs, req, ino),
            // FATTR_CTIME: only with the writeback cache, then in every SETATTR of a regular
            // file (the kernel's own and a process's: see `SetAttr::kernel_times`).
            kernel_times: ctime.is_some(),
        };
        match self
            .vfs
            .setattr(ino.0, fh.map(|f| f.0), &set, Some(&caller(req)))
        {
            Ok(a) => reply.attr(&ttl(a.ino), &attr(&a)),
            Err(e) => reply.error(errno("setattr", &e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _turn = self.turn();
        match self.vfs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno("readlink", &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _turn = self.turn();
        let who = creator(req, umask);
        let r = self.reclaim.patiently(&self.vfs, Some(parent.0), || {
            self.vfs.in_dirs(&[parent.0], || {
                self.vfs.mknod(parent.0, name, mode, rdev, &who)
            })
        });
        self.changed_if_ok(&r, &[parent]);
        self.entry_in(reply, "mknod", parent, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _turn = self.turn();
        let who = creator(req, umask);
        let r = self.reclaim.patiently(&self.vfs, Some(parent.0), || {
            self.vfs
                .in_dirs(&[parent.0], || self.vfs.mkdir(parent.0, name, mode, &who))
        });
        self.changed_if_ok(&r, &[parent]);
        self.entry_in(reply, "mkdir", parent, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.turn();
        let r = self
            .vfs
            .in_dirs(&[parent.0], || self.vfs.unlink(parent.0, name));
        self.changed_if_ok(&r, &[parent]);
        empty(reply, "unlink", r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.turn();
        let r = self
            .vfs
            .in_dirs(&[parent.0], || self.vfs.rmdir(parent.0, name));
        self.changed_if_ok(&r, &[parent]);
        empty(reply, "rmdir", r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _turn = self.turn();
        let c = caller(req);
        let r = self.reclaim.patiently(&self.vfs, Some(parent.0), || {
            self.vfs.in_dirs(&[parent.0], || {
                self.vfs
                    .symlink(parent.0, link_name, target.as_os_str(), &c)
            })
        });
        self.changed_if_ok(&r, &[parent]);
        self.entry_in(reply, "symlink", parent, r);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _turn = self.turn();
        let c = caller(req);
        let r = self.vfs.in_dirs(&[parent.0, newparent.0], || {
            self.vfs
                .rename_by(parent.0, name, newparent.0, newname, flags.bits(), Some(&c))
        });
        self.changed_if_ok(&r, &[parent, newparent]);
        empty(reply, "rename", r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _turn = self.turn();
        let r = self.reclaim.patiently(&self.vfs, Some(newparent.0), || {
            self.vfs.in_dirs(&[newparent.0], || {
                self.vfs.link(ino.0, newparent.0, newname)
            })
        });
        self.changed_if_ok(&r, &[newparent]);
        self.entry_in(reply, "link", newparent, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.turn();
        let c = caller(req);
        // O_APPEND included: the model writes where the kernel says (`kernel_appends`).
        let flags = flags.0;
        match self
            .reclaim
            .patiently(&self.vfs, None, || self.vfs.open_as(ino.0, flags, &c))
        {
            // Control files are generated per open and may grow: no page cache.
            Ok(fh) if crate::vfs::is_control_handle(fh) => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            // A writer of an append-only file bypasses the page cache (see `Vfs::appends_only`).
            Ok(fh) if self.vfs.appends_only(fh) => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            // Every change goes through this mount, so cached pages stay valid across opens.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(errno("open", &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _turn = self.read_turn();
        // The reply is sent from where the data was decrypted; kept for the error otherwise.
        let mut reply = Some(reply);
        let r = self.vfs.read_with(fh.0, offset, size, |d| {
            if let Some(r) = reply.take() {
                r.data(d);
            }
        });
        if let (Err(e), Some(r)) = (r, reply) {
            r.error(errno("read", &e));
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _turn = self.turn();
        // A writer without CAP_FSETID on a set-user-id/set-group-id file (FUSE_HANDLE_KILLPRIV_V2).
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && let Err(e) = self.kill_suidgid_after(req, ino, "write")
        {
            return reply.error(e);
        }
        let cached = write_flags.contains(WriteFlags::FUSE_WRITE_CACHE);
        let from = if cached {
            WriteFrom::PageCache {
                kernel_times: self.writeback_cache,
            }
        } else {
            WriteFrom::Caller
        };
        let r = self.vfs.write_from(fh.0, offset, data, from);
        self.after_control(fh);
        match r {
            Ok(n) => reply.written(n),
            Err(e) => {
                // The writer was told it succeeded: have the kernel ask for the file's
                // attributes at its next write(2), which then fails (`getattr`).
                if cached {
                    self.reclaim.expire_attrs(ino.0);
                }
                reply.error(errno("write", &e))
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _turn = self.turn();
        let r = self.vfs.flush(fh.0);
        self.after_control(fh);
        empty(reply, "flush", r);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _turn = self.background_turn();
        let r = self.vfs.release(fh.0);
        self.after_control(fh);
        empty(reply, "release", r);
        if self.vfs.has_stale_caches() {
            self.reclaim.stale_closed();
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _turn = self.turn();
        empty(reply, "fsync", self.vfs.fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.turn();
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        // A kernel that must open directories: no handle is needed all the same, and the
        // kernel may cache listings of real directories (control listings change by
        // themselves, they are not cached).
        match self.vfs.in_dirs(&[ino.0], || self.vfs.opendir(ino.0)) {
            Ok(()) if crate::vfs::is_control(ino.0) => {
                reply.opened(FileHandle(0), FopenFlags::empty())
            }
            Ok(()) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
            Err(e) => reply.error(errno("opendir", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _turn = self.turn();
        // Until the reply is full; the entry that did not fit is where the next request
        // starts. An empty reply means the end to the kernel: an error before the first entry
        // is reported, never answered with an empty reply.
        let r = self.vfs.in_dirs(&[ino.0], || {
            self.vfs.readdir_with(ino.0, offset, |next, e| {
                !reply.add(INodeNo(e.ino), next, kind(e.kind), &e.name)
            })
        });
        match r {
            Ok(()) => {
                self.vfs.listing_given(ino.0);
                reply.ok()
            }
            Err(e) => reply.error(errno("readdir", &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _turn = self.turn();
        // Short of descriptors: one entry per reply, so that the directory is unlocked
        // between replies and the kernel can let older names go (see `reclaim`).
        let limit = if self.reclaim.pressed(&self.vfs) {
            1
        } else {
            usize::MAX
        };
        // A failure leaves the reply empty (the first entry failed), so it can be tried again.
        let r = self.reclaim.patiently(&self.vfs, Some(ino.0), || {
            self.vfs.in_dirs(&[ino.0], || {
                self.vfs
                    .readdirplus_with(ino.0, offset, limit, |next, e, a| {
                        // A file open for writing, with the writeback cache: the size here may be
                        // behind the kernel's (pages it has not sent yet). The kernel keeps its
                        // own size for an inode it holds, but this reply may reach it after the
                        // file was closed and its inode let go (evicted), and then a new inode
                        // takes this size, which the kernel keeps from then on: another process
                        // saw the file, closed and renamed into place, empty, and an O_APPEND
                        // write through that inode went to offset 0, over the start of the file
                        // (found by a rename storm under `ls`). So the entry is listed with a size
                        // no file can have: the kernel lists the name, caches nothing for it and
                        // forgets the node (a FORGET of the lookup counted for it), and a later
                        // `stat` asks (LOOKUP). Only where the kernel checks (else the size would
                        // go into such a new inode).
                        let unsettled =
                            e.size_may_lag && self.writeback_cache && self.refuses_invalid_attrs;
                        let mut fa = attr(a);
                        if unsettled {
                            fa.size = IMPOSSIBLE_SIZE;
                        }
                        let full = reply.add(
                            INodeNo(e.ino),
                            next,
                            &e.name,
                            &ttl(a.ino),
                            &fa,
                            Generation(a.generation),
                        );
                        if !full && !unsettled && !e.cipher_name.is_empty() {
                            self.reclaim.seen(&self.vfs, ino.0, a);
                        }
                        !full
                    })
            })
        });
        match r {
            Ok(()) => {
                self.vfs.listing_given(ino.0);
                reply.ok()
            }
            // Nothing in this reply yet: say so (an empty reply would mean the end; the
            // kernel asks again from here next time, so an entry that exists is never
            // silently left out).
            Err(e) => reply.error(errno("readdirplus", &e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _turn = self.background_turn();
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _turn = self.turn();
        empty(reply, "fsyncdir", self.vfs.fsyncdir(ino.0, datasync));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _turn = self.turn();
        match self.vfs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno("statfs", &e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _turn = self.turn();
        empty(
            reply,
            "setxattr",
            self.vfs
                .setxattr_as(ino.0, name, value, flags, Some(&caller(req))),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _turn = self.turn();
        xattr(reply, "getxattr", self.vfs.getxattr(ino.0, name, size));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _turn = self.turn();
        // trusted.* names are listed for root only (CAP_SYS_ADMIN, for which root stands).
        let trusted = req.uid() == 0;
        xattr(
            reply,
            "listxattr",
            self.vfs.listxattr_for(ino.0, size, trusted),
        );
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.turn();
        let r = self.vfs.removexattr_as(ino.0, name, Some(&caller(req)));
        empty(reply, "removexattr", r);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let _turn = self.turn();
        // Sent only without default_permissions (a mount only root may use).
        empty(
            reply,
            "access",
            self.vfs.access(ino.0, mask.bits() as u32, &caller(req)),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _turn = self.turn();
        let who = creator(req, umask);
        match self.reclaim.patiently(&self.vfs, Some(parent.0), || {
            self.vfs.in_dirs(&[parent.0], || {
                self.vfs.create(parent.0, name, mode, flags, &who)
            })
        }) {
            Ok((a, fh)) => {
                self.reclaim.seen(&self.vfs, parent.0, &a);
                self.listing_changed(&[parent]);
                // An existing append-only file opened by O_CREAT (see `Vfs::appends_only`).
                let open = if self.vfs.appends_only(fh) {
                    FopenFlags::FOPEN_DIRECT_IO
                } else {
                    FopenFlags::empty()
                };
                reply.created(
                    &TTL,
                    &attr(&a),
                    Generation(a.generation),
                    FileHandle(fh),
                    open,
                )
            }
            Err(e) => reply.error(errno("create", &e)),
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _turn = self.turn();
        if let Err(e) = self.vfs.fallocate(fh.0, offset, length, mode) {
            return reply.error(errno("fallocate", &e));
        }
        // As a local file system does, an fallocate that did something clears set-user-id
        // (and set-group-id, as for a write) unless the caller has CAP_FSETID. The kernel
        // leaves that to us under FUSE_HANDLE_KILLPRIV_V2 and, unlike WRITE, does not flag
        // the request.
        if !kills_setid(&self.vfs, req, ino) {
            return reply.ok();
        }
        match self.kill_suidgid_after(req, ino, "fallocate") {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// `SEEK_DATA` and `SEEK_HOLE` (the kernel answers the other kinds of lseek itself).
    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _turn = self.turn();
        let hole = match whence {
            libc::SEEK_DATA => false,
            libc::SEEK_HOLE => true,
            _ => return reply.error(Errno::EINVAL),
        };
        let seek = lseek::Seek {
            ino,
            fh,
            offset,
            hole,
        };
        let notifier = self.notifier.get().filter(|_| self.lseek_waits);
        seek.answer(&self.vfs, notifier, reply);
    }

    /// copy_file_range(2) between files of this mount, done here (see `Vfs::copy_range`).
    /// The kernel wrote back both ranges from its page cache before, and drops the
    /// destination's after the reply.
    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _turn = self.turn();
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let n = match self
            .vfs
            .copy_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => n,
            Err(e) => return reply.error(errno("copy_file_range", &e)),
        };
        // What a write does: set-user-id (and set-group-id) cleared for a caller without
        // CAP_FSETID; unflagged, as for fallocate.
        if n > 0
            && kills_setid(&self.vfs, req, ino_out)
            && let Err(e) = self.kill_suidgid_after(req, ino_out, "copy_file_range")
        {
            return reply.error(e);
        }
        // At most `vfs::MAX_COPY`.
        reply.written(u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// The session ended (all request threads are done); fuser unmounts after this, on this
    /// thread.
    fn destroy(&mut self) {
        teardown::session_ended();
    }

    /// Inode flags (`lsattr`, `chattr`, `xfs_io -c chattr`): the kernel turns them into these
    /// ioctls (see `vfs::flags_ops`). Any other ioctl gets ENOTTY, as a local file system answers
    /// an ioctl it does not know (`isatty`, which C stdio and every buffered open in Python
    /// call, asks TCGETS). Quietly: the kernel does not remember the answer, so fuser's default
    /// (a warning per call) would put a line in the journal for each such open.
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        let _turn = self.turn();
        const GETFLAGS: [u32; 2] = [0x8008_6601, 0x8004_6601];
        const SETFLAGS: [u32; 2] = [0x4008_6602, 0x4004_6602];
        const FSGETXATTR: u32 = 0x801c_581f;
        const FSSETXATTR: u32 = 0x401c_5820;
        let out = |data: &[u8]| data[..data.len().min(out_size as usize)].to_vec();
        let r = match cmd {
            c if GETFLAGS.contains(&c) => {
                self.vfs.inode_flags(ino.0).map(|f| out(&f.to_ne_bytes()))
            }
            c if SETFLAGS.contains(&c) => match in_data.get(..4) {
                Some(b) => self
                    .vfs
                    .set_inode_flags(ino.0, u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .map(|()| Vec::new()),
                None => Err(rustix::io::Errno::INVAL.into()),
            },
            FSGETXATTR => self.vfs.fsxattr(ino.0).map(|x| out(&x)),
            FSSETXATTR => self.vfs.set_fsxattr(ino.0, in_data).map(|()| Vec::new()),
            _ => return reply.error(Errno::ENOTTY),
        };
        match r {
            Ok(data) => reply.ioctl(0, &data),
            Err(e) => reply.error(errno("ioctl", &e)),
        }
    }
}
