//! Authorization and auditing of file access: key policies decide `open` (kms:Decrypt with the
//! access mode) and `create` (kms:GenerateDataKey) for the calling process; every open, create,
//! close and denial is written to the audit log. The decision is made once per open and holds
//! for the handle; the next open is judged by the policy then in force.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::inode::Node;
use super::{Caller, Result, Vfs, VfsError};
use crate::format::header::FileHeader;
use crate::keymgr::audit::{Actor, AuditLog, AuditRecord, Resources, Source};
use crate::keymgr::policy::{Identity, Request};

/// How long a process's identity (groups, executable, names) is reused.
const IDENTITY_TTL: Duration = Duration::from_secs(2);

/// What a handle remembers for its close record.
#[derive(Debug)]
pub(super) struct HandleAudit {
    pub actor: Actor,
    pub resources: Resources,
    pub access_mode: String,
    pub read: AtomicU64,
    pub written: AtomicU64,
}

/// `kmsfs:AccessMode` of an open: `O_TRUNC` writes (it empties the file), so
/// `O_RDONLY|O_TRUNC` is `readwrite`, not `read` (found by a review: a caller allowed only to
/// read could empty a file that way).
pub(super) fn access_mode(flags: i32) -> &'static str {
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => "write",
        libc::O_RDWR => "readwrite",
        _ if flags & libc::O_TRUNC != 0 => "readwrite",
        _ => "read",
    }
}

impl Vfs {
    /// Attaches the audit log: from now on file access is audited (fail-closed).
    pub fn set_audit(&self, log: Arc<AuditLog>) {
        self.control.set_audit(log.clone());
        let _ = self.audit.set(log);
    }

    pub fn audit_log(&self) -> Option<&Arc<AuditLog>> {
        self.audit.get()
    }

    /// The identity of a request's process, cached briefly per pid, and re-read if the pid now
    /// runs as someone else or runs another program (an exec keeps the pid; a policy condition
    /// on the executable must see the new one).
    pub(super) fn identity(&self, c: &Caller) -> Identity {
        if let Some(e) = self.identities.get(&c.pid) {
            let (t, id) = e.value();
            if t.elapsed() < IDENTITY_TTL
                && id.uid == c.uid
                && id.gid == c.gid
                && id.exe == super::identity::exe_of(c.pid)
            {
                self.control
                    .metrics
                    .identity_cache_hits
                    .fetch_add(1, Ordering::Relaxed);
                return id.clone();
            }
        }
        self.control
            .metrics
            .identity_cache_misses
            .fetch_add(1, Ordering::Relaxed);
        let id = super::identity::identity_of(c.pid, c.uid, c.gid);
        if self.identities.len() > 4096 {
            self.identities
                .retain(|_, (t, _)| t.elapsed() < IDENTITY_TTL);
        }
        self.identities.insert(c.pid, (Instant::now(), id.clone()));
        id
    }

    /// Writes a record; an error means it is not in the log and the operation must fail.
    pub(super) fn audit_append(&self, r: AuditRecord) -> Result<()> {
        match self.audit.get() {
            None => Ok(()),
            Some(log) => log.append(r).map(|_| ()).map_err(|e| {
                tracing::error!("audit log write failed, refusing the operation: {e}");
                VfsError::Integrity(format!("audit log unavailable: {e}"))
            }),
        }
    }

    /// Plaintext path of a node for policies and audit records (best effort).
    pub(super) fn plain_path(&self, node: &Node) -> Option<String> {
        self.plain_node_path(node).ok()
    }

    /// Decides `action` on the key of `header` (or `key` for a new file) for `caller`, and audits
    /// the attempt as `event`. Returns the handle's audit state when allowed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn authorize(
        &self,
        caller: &Caller,
        event: &str,
        action: &str,
        header: &FileHeader,
        path: Option<String>,
        flags: i32,
    ) -> Result<HandleAudit> {
        let who = self.identity(caller);
        let mode = access_mode(flags);
        let req = Request {
            who: who.clone(),
            action: action.into(),
            key: Some(header.key_id),
            // Every file access has a path; none means it could not be worked out.
            path_unknown: path.is_none(),
            path: path.clone(),
            access_mode: Some(mode.into()),
            now: self.km.now(),
            encryption_context: crate::format::context::EncryptionContext::for_file(
                &self.km.volume_id(),
                &header.file_id,
                &header.key_id,
                header.key_version,
            )
            .display_pairs(),
        };
        let d = self.km.authorize(&req);
        self.control
            .metrics
            .file_decision(header.key_id, event == "Create", d.allowed());
        let actor = Actor::from(who.clone());
        let resources = Resources {
            path,
            file_id: Some(header.file_id.to_string()),
            key_id: Some(header.key_id.to_string()),
            key_version: Some(header.key_version),
        };
        let mut r = AuditRecord::new(event, Source::Fs);
        r.actor = actor.clone();
        r.resources = resources.clone();
        r.access_mode = Some(mode.into());
        r.flags = Some(flags);
        r.decision = Some(crate::control::decision_record(&d));
        if !d.allowed() {
            r.errno = libc::EACCES;
            tracing::info!(
                uid = who.uid,
                pid = who.pid,
                "{event} denied by key policy: {d:?}"
            );
        }
        self.audit_append(r)?;
        self.check_anomaly(&actor, !d.allowed(), action == "kms:Decrypt", req.now);
        if !d.allowed() {
            return Err(VfsError::Denied(format!(
                "{action} on key {} ({d:?})",
                header.key_id
            )));
        }
        Ok(HandleAudit {
            actor,
            resources,
            access_mode: mode.into(),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
        })
    }

    /// Counts a decision toward the anomaly thresholds and writes the alert when one is reached.
    fn check_anomaly(&self, actor: &Actor, denied: bool, decrypt: bool, now: u64) {
        use crate::control::alerts::AlertKind;
        let settings = self.km.query(|s| s.alerts);
        let (kind, threshold) = if denied {
            (AlertKind::Denials, settings.denials_per_minute)
        } else if decrypt {
            (AlertKind::Decrypts, settings.decrypts_per_minute)
        } else {
            return;
        };
        if let Some(n) = self.control.alerts.note(actor.uid, kind, now, threshold) {
            tracing::warn!(uid = actor.uid, "anomaly: {n} {} in a minute", kind.name());
            let mut r = AuditRecord::new("AnomalyAlert", Source::System);
            r.actor = actor.clone();
            r.detail = Some(format!(
                "uid {}: {n} {} within one minute (threshold {})",
                actor.uid,
                kind.name(),
                threshold.unwrap_or(0)
            ));
            // The alert is about access already recorded; a failure to write it is logged.
            let _ = self.audit_append(r);
        }
    }

    /// The close record of a handle, with the bytes it moved.
    pub(super) fn audit_close(&self, h: &HandleAudit) {
        let mut r = AuditRecord::new("Close", Source::Fs);
        r.actor = h.actor.clone();
        r.resources = h.resources.clone();
        r.access_mode = Some(h.access_mode.clone());
        r.bytes_read = Some(h.read.load(Ordering::Relaxed));
        r.bytes_written = Some(h.written.load(Ordering::Relaxed));
        let m = &self.control.metrics;
        m.bytes_read
            .fetch_add(r.bytes_read.unwrap_or(0), Ordering::Relaxed);
        m.bytes_written
            .fetch_add(r.bytes_written.unwrap_or(0), Ordering::Relaxed);
        // A close cannot be refused, nor does anything wait for its record: it goes with the next
        // entry (one write for both) or within `LATER_MAX`.
        if let Some(log) = self.audit.get() {
            log.append_later(r);
        }
    }

    /// Records that an open or create the key policy allowed (its record written) then failed
    /// (`<event>Failed`: `CreateFailed`, `OpenFailed`), with the same actor, file id, key and open
    /// flags and the errno: a Create record whose file never came to be (a full disk, a directory the
    /// daemon may not write, a name taken meanwhile) is explained, and a create tried again
    /// after such a failure is seen as one failed and one made, not two made. Not refused for
    /// want of a record (the operation fails anyway; a failing log is logged).
    pub(super) fn audit_failed(&self, h: &HandleAudit, event: &str, flags: i32, e: &VfsError) {
        if self.audit.get().is_none() {
            return;
        }
        let mut r = AuditRecord::new(&format!("{event}Failed"), Source::Fs);
        r.actor = h.actor.clone();
        r.resources = h.resources.clone();
        r.access_mode = Some(h.access_mode.clone());
        r.flags = Some(flags);
        r.errno = e.errno();
        r.detail = Some(e.to_string());
        if let Err(e) = self.audit_append(r) {
            tracing::error!("{event}Failed not recorded: {e}");
        }
    }

    /// Records an access refused before the key policy was asked: the file's key cannot be used
    /// (disabled, pending deletion, destroyed, version retired or unavailable) — a denial by key
    /// state — or its data key does not authenticate (an integrity failure). Other errors are
    /// not about the key (damage found on the way is recorded where it is found). The operation
    /// fails either way.
    pub(super) fn audit_refused(
        &self,
        caller: &Caller,
        event: &str,
        path: Option<String>,
        flags: i32,
        e: &VfsError,
    ) {
        use crate::keymgr::KeyError;
        let VfsError::Key(k) = e else {
            return;
        };
        let (key, version) = match k {
            KeyError::UnwrapFailed(_) => {
                self.audit_integrity(Some(caller), &e.to_string());
                return;
            }
            KeyError::UnknownKey(id) | KeyError::NotUsable(id, _) => (id, None),
            KeyError::VersionUnavailable(id, v) | KeyError::VersionRetired(id, v, _) => {
                (id, Some(*v))
            }
        };
        let state = match k {
            KeyError::NotUsable(_, s) => format!("{s:?}"),
            KeyError::UnknownKey(_) => "unknown key".into(),
            _ => "version not usable".into(),
        };
        let who = self.identity(caller);
        let actor = Actor::from(who);
        let mut r = AuditRecord::new(event, Source::Fs);
        r.actor = actor.clone();
        r.resources = Resources {
            path,
            file_id: None,
            key_id: Some(key.to_string()),
            key_version: version,
        };
        r.access_mode = Some(access_mode(flags).into());
        r.flags = Some(flags);
        r.decision = Some(crate::keymgr::audit::AuditDecision {
            allowed: false,
            by: format!("key-state: {state}"),
        });
        r.errno = e.errno();
        r.detail = Some(k.to_string());
        let _ = self.audit_append(r);
        self.check_anomaly(&actor, true, false, self.km.now());
    }

    /// Records a change of a node's ACL (`SetAcl`, `RemoveAcl`) by `caller` with its outcome:
    /// who gave or took away access is part of who could read a file. `detail` says which ACL
    /// and, for a new one, its entries. After the change (never refused for want of a record: a
    /// failing log is logged, as for a close).
    pub(super) fn audit_acl(
        &self,
        caller: Option<&Caller>,
        node: &Node,
        event: &str,
        detail: String,
        r: &Result<()>,
    ) {
        if self.audit.get().is_none() {
            return;
        }
        let mut rec = AuditRecord::new(event, Source::Fs);
        if let Some(c) = caller {
            rec.actor = Actor::from(self.identity(c));
        }
        rec.resources.path = self.plain_path(node);
        rec.errno = match r {
            Ok(()) => 0,
            Err(e) => e.errno(),
        };
        rec.detail = Some(detail);
        if let Err(e) = self.audit_append(rec) {
            tracing::error!("{event} not recorded: {e}");
        }
    }

    /// Records an integrity failure seen by a caller.
    pub(super) fn audit_integrity(&self, caller: Option<&Caller>, what: &str) {
        self.control
            .metrics
            .integrity_failures
            .fetch_add(1, Ordering::Relaxed);
        let mut r = AuditRecord::new("IntegrityFailure", Source::Fs);
        if let Some(c) = caller {
            r.actor = Actor {
                uid: c.uid,
                gid: c.gid,
                user: None,
                pid: c.pid,
                exe: None,
            };
        }
        r.errno = libc::EIO;
        r.detail = Some(what.into());
        let _ = self.audit_append(r);
    }
}
