//! control is the key manager's administrative interface: typed requests with one executor
//! (used by the CLI on an unmounted volume), and the virtual `.kmsfs/` directory of a mounted
//! volume, which turns reads and writes of ordinary files into the same requests. It knows
//! nothing of FUSE; `vfs` routes the control directory's inodes and handles here.
//!
//! Layout (see README "Control directory"):
//!
//! ```text
//! .kmsfs/README  status  metrics  audit  rules  last-error  request
//! .kmsfs/keys/<key-id>/metadata policy rotation rotate state grants audit
//! .kmsfs/aliases/<name> -> ../keys/<key-id>
//! ```

pub mod alerts;
mod audit_view;
pub mod exec;
mod files;
pub mod metrics;
mod node;
pub mod request;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use dashmap::DashMap;

pub use exec::{Authority, CipherTree, ControlError, ErrorKind, Executor};
pub use metrics::Metrics;
pub use node::{CtlAttr, CtlEntry, CtlKind};
pub use request::Request;

use crate::keymgr::KeyManager;
use crate::keymgr::audit::{AuditDecision, AuditLog};
use crate::keymgr::policy::{Decision, Identity};
use node::NodeTable;

/// The reserved name of the control directory at the mount root.
pub const CONTROL_NAME: &str = ".kmsfs";

/// Inode numbers of control nodes have this bit set (backing inode numbers never do).
const INO_BIT: u64 = 1 << 63;
/// Handles of open control files have this bit set.
const FH_BIT: u64 = 1 << 63;

pub fn is_control_ino(ino: u64) -> bool {
    ino & INO_BIT != 0
}

pub fn is_control_fh(fh: u64) -> bool {
    fh & FH_BIT != 0
}

/// An error of a control-directory operation: the errno the caller sees and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CtlError {
    pub errno: i32,
    pub message: String,
}

impl CtlError {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        CtlError {
            errno,
            message: message.into(),
        }
    }
}

impl From<ControlError> for CtlError {
    fn from(e: ControlError) -> Self {
        CtlError::new(e.kind.errno(), e.message)
    }
}

pub type CtlResult<T> = Result<T, CtlError>;

/// The audit form of a policy decision: allowed, and by which statement or grant.
pub fn decision_record(d: &Decision) -> AuditDecision {
    let by = match d {
        Decision::ExplicitDeny { sid } | Decision::AllowedByPolicy { sid } => {
            format!("statement:{sid}")
        }
        Decision::AllowedByGrant { grant_id } => format!("grant:{grant_id}"),
        Decision::ImplicitDeny => "implicit-deny".into(),
    };
    AuditDecision {
        allowed: d.allowed(),
        by,
    }
}

/// What `status` reports about the volume besides live state.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VolumeFacts {
    pub cipher_dir: String,
    pub format_version: u32,
    pub block_size: u32,
    pub features: Vec<String>,
    pub read_only: bool,
    /// Mounted with `--acl` (POSIX ACLs stored and enforced).
    pub acl: bool,
}

type Notify = Box<dyn Fn(u64, u64, Vec<u8>) + Send + Sync>;

/// The control directory of one mounted volume.
pub struct ControlDir {
    km: Arc<KeyManager>,
    audit: OnceLock<Arc<AuditLog>>,
    tree: exec::CipherTree,
    facts: VolumeFacts,
    /// `facts.read_only` as a remount left it.
    read_only: std::sync::atomic::AtomicBool,
    nodes: NodeTable,
    handles: DashMap<u64, files::CtlHandle>,
    next_fh: AtomicU64,
    pub metrics: Metrics,
    pub alerts: alerts::Detector,
    started: Instant,
    started_at: SystemTime,
    /// The last refused control write of each uid (`last-error`).
    last_errors: DashMap<u32, String>,
    views: audit_view::Views,
    /// Pushes new bytes of a growing file to the kernel: (inode, offset, bytes).
    notify: OnceLock<Notify>,
    uid: u32,
    gid: u32,
}

impl std::fmt::Debug for ControlDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlDir")
    }
}

impl ControlDir {
    /// The mount was remounted read-only or read-write (shown in `status`).
    pub fn set_read_only(&self, read_only: bool) {
        self.read_only.store(read_only, Ordering::Relaxed);
    }

    /// The control directory of the volume in `root` (whose names `names` decrypts).
    pub fn new(
        km: Arc<KeyManager>,
        facts: VolumeFacts,
        root: std::path::PathBuf,
        names: crate::names::Names,
    ) -> Arc<Self> {
        let metrics = Metrics::default();
        let (done, total) = (metrics.rewrap_done.clone(), metrics.rewrap_total.clone());
        let tree = exec::CipherTree {
            root,
            names,
            progress: Box::new(move |d, n| {
                done.store(d, Ordering::Relaxed);
                total.store(n, Ordering::Relaxed);
            }),
        };
        let uid = km.query(|s| s.owner_uid);
        Arc::new(ControlDir {
            km,
            audit: OnceLock::new(),
            tree,
            read_only: facts.read_only.into(),
            facts,
            nodes: NodeTable::new(),
            handles: DashMap::new(),
            next_fh: AtomicU64::new(1),
            metrics,
            alerts: Default::default(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            last_errors: DashMap::new(),
            views: audit_view::Views::default(),
            notify: OnceLock::new(),
            uid,
            gid: rustix::process::getegid().as_raw(),
        })
    }

    /// Attaches the audit log: control requests are recorded and `audit` files can be read.
    pub fn set_audit(self: &Arc<Self>, log: Arc<AuditLog>) {
        let me = Arc::downgrade(self);
        log.subscribe(Box::new(move |r| {
            if let Some(c) = me.upgrade() {
                c.record_appended(r);
            }
        }));
        let _ = self.audit.set(log);
    }

    /// Installs the callback that tells the kernel a control file grew (see `audit_view`).
    pub fn set_notify(&self, f: Notify) {
        let _ = self.notify.set(f);
    }

    pub fn key_manager(&self) -> &Arc<KeyManager> {
        &self.km
    }

    fn executor(&self) -> Executor<'_> {
        Executor {
            km: &self.km,
            audit: self.audit.get().map(|a| a.as_ref()),
            tree: &self.tree,
        }
    }

    /// Runs a request on behalf of a process using the mount.
    pub fn execute(
        &self,
        who: &Identity,
        req: &Request,
    ) -> Result<serde_json::Value, ControlError> {
        self.metrics
            .control_requests
            .fetch_add(1, Ordering::Relaxed);
        let r = self
            .executor()
            .execute(&Authority::Policy(who.clone()), req);
        if let Err(e) = &r {
            self.metrics.control_errors.fetch_add(1, Ordering::Relaxed);
            self.last_errors
                .insert(who.uid, format!("{}: {}\n", req.name(), e.message));
        }
        r
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed) | FH_BIT
    }

    fn uptime(&self) -> u64 {
        self.started.elapsed().as_secs()
    }
}

#[cfg(test)]
mod key_access_tests;
#[cfg(test)]
mod tests;
