//! The one implementation of every key-manager request: authorization (key policy, or the
//! passphrase for an unmounted volume), the change through [`KeyManager::admin`] (atomic,
//! persisted before it returns), the audit record, and a JSON result.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::request::{GrantSpec, Request};
use crate::format::KeyId;
use crate::keymgr::audit::{AuditDecision, AuditLog, AuditRecord, Source};
use crate::keymgr::policy::{self, Decision, Grant, Identity, Policy};
use crate::keymgr::rewrap::VersionCounts;
use crate::keymgr::{AdminError, KeyManager, access, lifecycle};

/// On whose authority a request runs.
#[derive(Debug, Clone)]
pub enum Authority {
    /// Whoever unlocked the volume with its passphrase or recovery key (unmounted
    /// administration): they hold the key store, so no policy can stop them.
    Passphrase(Identity),
    /// A process using a mounted volume: key policies and grants decide.
    Policy(Identity),
}

impl Authority {
    pub fn who(&self) -> &Identity {
        match self {
            Authority::Passphrase(i) | Authority::Policy(i) => i,
        }
    }
}

/// Why a request failed; the kind decides the errno (control files) and the exit code (CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Malformed or refused by a rule of the key manager (EINVAL).
    Invalid,
    /// No such key, alias, rule or grant (ENOENT).
    NotFound,
    /// Denied by key policy (EACCES).
    Denied,
    /// The disk or the audit log failed (EIO).
    Failed,
}

impl ErrorKind {
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::Invalid => libc::EINVAL,
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::Denied => libc::EACCES,
            ErrorKind::Failed => libc::EIO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ControlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ControlError {
            kind,
            message: message.into(),
        }
    }
}

impl From<AdminError> for ControlError {
    fn from(e: AdminError) -> Self {
        let kind = match e {
            AdminError::NotFound(_) | AdminError::NoRule(_) | AdminError::NoGrant(_) => {
                ErrorKind::NotFound
            }
            AdminError::Persist(_) => ErrorKind::Failed,
            _ => ErrorKind::Invalid,
        };
        ControlError::new(kind, e.to_string())
    }
}

type R<T> = Result<T, ControlError>;

/// The cipher directory's files, for the requests that look at every file header.
pub struct CipherTree {
    pub root: std::path::PathBuf,
    pub names: crate::names::Names,
    /// Rewrap progress: (files done, files in all).
    pub progress: Box<dyn Fn(u64, u64) + Send + Sync>,
}

impl CipherTree {
    fn counts(&self) -> std::io::Result<VersionCounts> {
        crate::keymgr::rewrap::count_versions(&self.root, &self.names)
    }
}

/// Runs requests against one key manager.
pub struct Executor<'a> {
    pub km: &'a KeyManager,
    /// Every request is recorded; without a log (tests of the model) nothing is.
    pub audit: Option<&'a AuditLog>,
    /// The files (usage, trim, rewrap).
    pub tree: &'a CipherTree,
}

/// Which record of a request is being written.
enum Recorded<'a> {
    /// The only record: a request that changes nothing, or one refused before it ran.
    Once(Result<(), &'a ControlError>),
    /// A change about to be carried out.
    Started,
    Succeeded(&'a Value),
    Failed(&'a ControlError),
}

impl Recorded<'_> {
    fn outcome(&self) -> Option<&'static str> {
        match self {
            Recorded::Once(_) => None,
            Recorded::Started => Some("started"),
            Recorded::Succeeded(_) => Some("succeeded"),
            Recorded::Failed(_) => Some("failed"),
        }
    }
}

/// What a successful change made or counted, from its result, for its record: ids, versions,
/// dates and counts (never a document or a list of errors).
fn made(v: &Value) -> String {
    const FIELDS: &[&str] = &[
        "grant_id",
        "deletion_date",
        "destroyed_versions",
        "files",
        "rewrapped",
        "already_current",
        "skipped_unusable_key",
        "skipped_denied",
        "damaged",
        "removed_segments",
    ];
    let mut out = Vec::new();
    for f in FIELDS {
        match v.get(*f) {
            Some(x @ (Value::Number(_) | Value::String(_))) => out.push(format!("{f}={x}")),
            Some(Value::Array(a)) if a.iter().all(Value::is_number) => {
                out.push(format!("{f}={}", Value::Array(a.clone())));
            }
            _ => {}
        }
    }
    out.join(" ")
}

fn audit_decision(d: &Option<Decision>) -> AuditDecision {
    match d {
        None => AuditDecision {
            allowed: true,
            by: "passphrase".into(),
        },
        Some(d) => super::decision_record(d),
    }
}

impl Executor<'_> {
    /// Authorizes, runs and records `req`. An error leaves the key store as it was. A request
    /// that changes something is recorded before it is carried out (outcome `started`), and not
    /// carried out when its record cannot be written (fail-closed; found by a review: the change
    /// was saved first, and stayed when the record then failed); a second record says how it
    /// ended (`succeeded`, with what it made: the new key's id, version, grant id…; or `failed`,
    /// with the errno and the reason). A record without an outcome is a request that changes
    /// nothing, or one refused before it was carried out (its errno and decision say so).
    pub fn execute(&self, auth: &Authority, req: &Request) -> R<Value> {
        let record = |key: Option<KeyId>, decision: &Option<Decision>, out: Recorded<'_>| {
            let Some(log) = self.audit else {
                return Ok(());
            };
            let mut r = AuditRecord::new(req.name(), Source::Kms);
            r.actor = auth.who().clone().into();
            r.resources.key_id = key.map(|k| k.to_string());
            r.decision = Some(audit_decision(decision));
            let summary = req.summary();
            r.outcome = out.outcome().map(str::to_string);
            r.detail = Some(match out {
                Recorded::Once(Ok(())) | Recorded::Started => summary,
                Recorded::Once(Err(e)) | Recorded::Failed(e) => {
                    r.errno = e.kind.errno();
                    format!("{summary}: refused: {}", e.message)
                }
                Recorded::Succeeded(v) => {
                    if let Some(k) = v.get("key_id").and_then(Value::as_str) {
                        r.resources.key_id = Some(k.to_string());
                    }
                    r.resources.key_version = v
                        .get("version")
                        .and_then(Value::as_u64)
                        .and_then(|v| u32::try_from(v).ok());
                    match made(v) {
                        m if m.is_empty() => summary,
                        m => format!("{summary}: {m}"),
                    }
                }
            });
            log.append(r).map(drop).map_err(|e| {
                ControlError::new(ErrorKind::Failed, format!("audit log unavailable: {e}"))
            })
        };
        match self.authorize(auth, req) {
            Err((key, d, e)) => {
                record(key, &d, Recorded::Once(Err(&e)))?;
                Err(e)
            }
            Ok((key, d, also)) if req.changes() => {
                let d = d.clone();
                record(key, &d, Recorded::Started)?;
                let out = self.run(auth, req, key, &also);
                // Best effort: the change is made (or not) and its first record is written.
                let _ = match &out {
                    Ok(v) => record(key, &d, Recorded::Succeeded(v)),
                    Err(e) => record(key, &d, Recorded::Failed(e)),
                };
                out
            }
            Ok((key, d, also)) => {
                let d = d.clone();
                let out = self.run(auth, req, key, &also);
                record(key, &d, Recorded::Once(out.as_ref().map(drop)))?;
                out
            }
        }
    }

    /// Authorizes `action` on `key` (the default key when `None`) for a read of a control file
    /// and records it as `event`.
    pub fn check(&self, auth: &Authority, action: &str, key: Option<KeyId>, event: &str) -> R<()> {
        self.check_any(auth, &[action], key, event)
    }

    /// Like [`Executor::check`]: allowed when any of `actions` is (opening a file whose writes
    /// may mean one of several operations).
    pub fn check_any(
        &self,
        auth: &Authority,
        actions: &[&str],
        key: Option<KeyId>,
        event: &str,
    ) -> R<()> {
        let target = key.unwrap_or_else(|| self.km.query(|s| s.default_key));
        let mut d = None;
        if let Authority::Policy(who) = auth {
            for a in actions {
                let this = self.km.authorize(&policy::Request {
                    who: who.clone(),
                    action: (*a).into(),
                    key: Some(target),
                    now: self.km.now(),
                    ..Default::default()
                });
                let ok = this.allowed();
                d = Some(this);
                if ok {
                    break;
                }
            }
        }
        let action = actions.join("|");
        let allowed = d.as_ref().is_none_or(Decision::allowed);
        if let Some(log) = self.audit {
            let mut r = AuditRecord::new(event, Source::Kms);
            r.actor = auth.who().clone().into();
            r.resources.key_id = Some(target.to_string());
            r.decision = Some(audit_decision(&d));
            r.detail = Some(action.to_string());
            if !allowed {
                r.errno = libc::EACCES;
            }
            log.append(r).map_err(|e| {
                ControlError::new(ErrorKind::Failed, format!("audit log unavailable: {e}"))
            })?;
        }
        if allowed {
            Ok(())
        } else {
            Err(ControlError::new(
                ErrorKind::Denied,
                format!("{action} on key {target} denied for uid {}", auth.who().uid),
            ))
        }
    }

    fn resolve(&self, r: &str) -> R<KeyId> {
        Ok(self.km.query(|s| lifecycle::resolve(s, r))?)
    }

    /// The key a request concerns, the decision that allows it, and the other keys it was
    /// decided on ([`Executor::also_authorize`]). Each key reference is resolved here, once:
    /// the request is carried out on the keys that were decided on, not on what an alias
    /// points to by then (found by a review: a request resolved its alias again to run).
    #[allow(clippy::type_complexity)]
    pub(super) fn authorize(
        &self,
        auth: &Authority,
        req: &Request,
    ) -> Result<
        (Option<KeyId>, Option<Decision>, Also),
        (Option<KeyId>, Option<Decision>, ControlError),
    > {
        // A request from the mount that names a key, alias or grant that does not exist is
        // refused before any policy is asked: recorded as such (nothing allowed it), not as
        // allowed by the passphrase.
        let unresolved = || match auth {
            Authority::Policy(_) => Some(Decision::ImplicitDeny),
            Authority::Passphrase(_) => None,
        };
        let key = match req {
            Request::RetireGrant { grant_id } | Request::RevokeGrant { grant_id } => {
                let g = self.grant(grant_id).map_err(|e| (None, unresolved(), e))?;
                // AWS semantics: the grant's retiring principal may retire it, and so may its
                // grantee if the grant carries kms:RetireGrant (a grantee without it, or anyone
                // at all under a grant to everyone, could retire it before: found by a review);
                // anyone else needs kms:RetireGrant in the key policy (below).
                let grantee_may = || {
                    g.grantee.matches(auth.who())
                        && g.operations.iter().any(|o| o == "kms:RetireGrant")
                };
                if let (Request::RetireGrant { .. }, Authority::Policy(who)) = (req, auth)
                    && (grantee_may()
                        || g.retiring_principal
                            .as_ref()
                            .is_some_and(|p| p.matches(who)))
                {
                    return Ok((
                        Some(g.key),
                        Some(Decision::AllowedByGrant { grant_id: g.id }),
                        Vec::new(),
                    ));
                }
                Some(g.key)
            }
            _ => match req.key_ref() {
                Some(r) => Some(self.resolve(r).map_err(|e| (None, unresolved(), e))?),
                None => None,
            },
        };
        let also = self
            .also_authorize(req)
            .map_err(|e| (key, unresolved(), e))?;
        let Authority::Policy(who) = auth else {
            return Ok((key, None, also));
        };
        let target = key.unwrap_or_else(|| self.km.query(|s| s.default_key));
        // Operations on grants are decided by the key policy alone: a grant's own RetireGrant
        // reaches that grant only (above), not every grant of the key.
        let by_policy_only = matches!(
            req,
            Request::RetireGrant { .. } | Request::RevokeGrant { .. }
        );
        let mut d = self.decide(who, req.action(), target, by_policy_only);
        // Revoking a grant does to it what retiring does: kms:RevokeGrant retires too (as
        // README says; it did not, found by a review), unless RetireGrant is denied outright.
        if matches!(req, Request::RetireGrant { .. }) && d == Decision::ImplicitDeny {
            let by_revoke = self.decide(who, "kms:RevokeGrant", target, true);
            if by_revoke.allowed() {
                d = by_revoke;
            }
        }
        if !d.allowed() {
            let e = denied(req.action(), target, who, &d);
            return Err((key, Some(d), e));
        }
        for &(action, k) in also.iter().filter(|(a, _)| *a != RESOLVED_ONLY) {
            let d = self.decide(who, action, k, false);
            if !d.allowed() {
                let e = denied(action, k, who, &d);
                return Err((Some(k), Some(d), e));
            }
        }
        Ok((key, Some(d), also))
    }

    /// What a request needs besides its action on its key: (action, key) pairs. `UpdateAlias`:
    /// first the key the alias points to now; `SetDefaultKey`: the current default key, then
    /// the new one.
    fn also_authorize(&self, req: &Request) -> R<Also> {
        Ok(match req {
            // As in AWS: the key the alias leaves must allow it too, else anyone who controls
            // one key could point any alias (and what is later set by that alias) at it.
            Request::UpdateAlias { alias, .. } => vec![("kms:UpdateAlias", self.resolve(alias)?)],
            // The default key's policy decides every volume-wide action: moving it hands those
            // decisions to another policy, which is changing the volume's policy (PutKeyPolicy
            // on the current default key); and the new key must allow it (SetKeyRules there).
            Request::SetDefaultKey { key } => {
                let current = self.km.query(|s| s.default_key);
                vec![
                    ("kms:PutKeyPolicy", current),
                    ("kms:SetKeyRules", self.resolve(key)?),
                ]
            }
            // A rule sends new files to a key: a rule made, changed or removed needs the
            // consent of the key it names (else anyone who may edit rules and make a key could
            // send the owner's new files to a key only they control, or move them off the key
            // they went to; found by a review). First the request's own keys, resolved only
            // (in its order, what `run` carries out), then kms:SetKeyRules on each key whose
            // rules change.
            Request::SetKeyRule { .. }
            | Request::DeleteKeyRule { .. }
            | Request::PutKeyRules { .. } => {
                let named = match req {
                    Request::SetKeyRule { key, .. } => vec![self.resolve(key)?],
                    Request::PutKeyRules { rules } => rules
                        .iter()
                        .map(|r| self.resolve(&r.key))
                        .collect::<R<Vec<_>>>()?,
                    _ => Vec::new(),
                };
                let changed = self
                    .km
                    .query(|s| rule_change_keys(s, req, &named))
                    .map_err(ControlError::from)?;
                named
                    .into_iter()
                    .map(|k| (RESOLVED_ONLY, k))
                    .chain(changed.into_iter().map(|k| ("kms:SetKeyRules", k)))
                    .collect()
            }
            _ => Vec::new(),
        })
    }

    /// The decision on `key` for `action`: by the key's policy and grants, or by its policy
    /// alone.
    fn decide(&self, who: &Identity, action: &str, key: KeyId, by_policy_only: bool) -> Decision {
        let req = policy::Request {
            who: who.clone(),
            action: action.into(),
            key: Some(key),
            now: self.km.now(),
            ..Default::default()
        };
        if by_policy_only {
            self.km.authorize_by_policy(&req)
        } else {
            self.km.authorize(&req)
        }
    }

    /// One audit record per (action, key, deciding statement) that kept files of a rewrap where
    /// they were, with the number of files and the first one's path: a volume-wide rewrap by a
    /// caller denied on a large key leaves a few records, not one per file.
    fn record_rewrap_denials(&self, auth: &Authority, denials: RewrapDenials) -> R<()> {
        let Some(log) = self.audit else {
            return Ok(());
        };
        for ((action, key, _), (files, path, d)) in denials {
            let mut r = AuditRecord::new("Rewrap", Source::Kms);
            r.actor = auth.who().clone().into();
            r.resources.key_id = Some(key.to_string());
            r.resources.path = path;
            r.decision = Some(super::decision_record(&d));
            r.errno = libc::EACCES;
            r.detail = Some(format!(
                "{action} denied: {files} file(s) left under their key"
            ));
            log.append(r).map_err(|e| {
                ControlError::new(ErrorKind::Failed, format!("audit log unavailable: {e}"))
            })?;
        }
        Ok(())
    }

    /// Whether `auth` may see `key`'s metadata (DescribeKey by its policy and grants).
    fn may_describe(&self, auth: &Authority, key: KeyId) -> bool {
        match auth {
            Authority::Passphrase(_) => true,
            Authority::Policy(who) => self.decide(who, "kms:DescribeKey", key, false).allowed(),
        }
    }

    fn grant(&self, id: &str) -> R<Grant> {
        self.km
            .query(|s| s.grants.iter().find(|g| g.id == id).cloned())
            .ok_or_else(|| ControlError::new(ErrorKind::NotFound, format!("no grant {id:?}")))
    }

    fn describe(&self, id: KeyId) -> R<Value> {
        let m = self.km.query(|s| lifecycle::describe(s, &id))?;
        Ok(serde_json::to_value(m).unwrap_or_default())
    }

    fn counts(&self) -> R<VersionCounts> {
        self.tree.counts().map_err(|e| {
            ControlError::new(
                ErrorKind::Failed,
                format!("scanning the cipher directory: {e}"),
            )
        })
    }

    /// Carries out `req` on `resolved`, the key its key reference named when it was authorized
    /// (see [`Executor::authorize`]), and `also`, the other keys it was decided on.
    pub(super) fn run(
        &self,
        auth: &Authority,
        req: &Request,
        resolved: Option<KeyId>,
        also: &Also,
    ) -> R<Value> {
        let km = self.km;
        // The key it is decided on: resolved once, at authorization.
        let decided = |_: &str| {
            resolved.ok_or_else(|| {
                ControlError::new(
                    ErrorKind::Failed,
                    "internal error: the request's key was not resolved",
                )
            })
        };
        let also_key = |i: usize| {
            also.get(i).map(|(_, k)| *k).ok_or_else(|| {
                ControlError::new(
                    ErrorKind::Failed,
                    "internal error: a key the request needs was not resolved",
                )
            })
        };
        // An alias that no longer points where it did when the request was decided: refused
        // rather than carried out on a key nobody decided on.
        let unchanged = |s: &crate::keymgr::store::KeyStore, alias: &str, was: KeyId| {
            match lifecycle::resolve(s, alias) {
                Ok(k) if k == was => Ok(()),
                Ok(_) => Err(AdminError::Invalid(format!(
                    "{alias} was pointed at another key while the request was being decided; try again"
                ))),
                Err(e) => Err(e),
            }
        };
        // The rules changed between the decision and now so that a key nobody decided on
        // would gain or lose a rule: refused.
        let rules_unchanged = |s: &crate::keymgr::store::KeyStore, named: &[KeyId]| {
            if !matches!(auth, Authority::Policy(_)) {
                return Ok(());
            }
            let decided_on = |k: &KeyId| also.iter().any(|(a, d)| *a != RESOLVED_ONLY && d == k);
            if rule_change_keys(s, req, named)?.iter().all(decided_on) {
                return Ok(());
            }
            Err(AdminError::Invalid(
                "the key rules changed while the request was being decided; try again".into(),
            ))
        };
        let done = || Ok(json!({}));
        match req {
            Request::CreateKey {
                description,
                tags,
                alias,
            } => {
                let creator = auth.who().uid;
                let id = km.admin(|s, now| {
                    let id = lifecycle::create(s, description, tags.clone(), now)?;
                    let owner = s.owner_uid;
                    if creator != owner
                        && let Some(k) = s.key_mut(&id)
                    {
                        k.policy = Some(creator_policy(owner, creator));
                    }
                    if let Some(al) = alias {
                        lifecycle::create_alias(s, al, &id)?;
                    }
                    Ok(id)
                })?;
                self.describe(id)
            }
            // As in AWS: every key's id, and its metadata only where DescribeKey allows it (the
            // list showed every key's description, tags and aliases to anyone allowed ListKeys
            // on the default key; found by a review).
            Request::ListKeys => Ok(Value::Array(
                km.query(lifecycle::list)
                    .into_iter()
                    .map(|m| {
                        if self.may_describe(auth, m.key_id) {
                            serde_json::to_value(m).unwrap_or_default()
                        } else {
                            json!({ "key_id": m.key_id })
                        }
                    })
                    .collect(),
            )),
            Request::DescribeKey { key: k } => self.describe(decided(k)?),
            Request::UpdateKeyDescription {
                key: k,
                description,
            } => {
                let id = decided(k)?;
                km.admin(|s, _| lifecycle::update_description(s, &id, description))?;
                done()
            }
            Request::TagResource { key: k, tags } => {
                let id = decided(k)?;
                km.admin(|s, _| lifecycle::tag(s, &id, tags.clone()))?;
                done()
            }
            Request::UntagResource { key: k, tag_keys } => {
                let id = decided(k)?;
                km.admin(|s, _| lifecycle::untag(s, &id, tag_keys))?;
                done()
            }
            Request::CreateAlias { alias, key: k } => {
                let id = decided(k)?;
                km.admin(|s, _| lifecycle::create_alias(s, alias, &id))?;
                done()
            }
            Request::UpdateAlias { alias, key: k } => {
                let id = decided(k)?;
                let was = also_key(0)?;
                km.admin(|s, _| {
                    unchanged(s, alias, was)?;
                    lifecycle::update_alias(s, alias, &id)
                })?;
                done()
            }
            Request::DeleteAlias { alias } => {
                let was = decided(alias)?;
                km.admin(|s, _| {
                    unchanged(s, alias, was)?;
                    lifecycle::delete_alias(s, alias)
                })?;
                done()
            }
            Request::EnableKey { key: k } => {
                let id = decided(k)?;
                km.admin(|s, _| lifecycle::enable(s, &id))?;
                done()
            }
            Request::DisableKey { key: k } => {
                let id = decided(k)?;
                km.admin(|s, _| lifecycle::disable(s, &id))?;
                done()
            }
            Request::ScheduleKeyDeletion { key: k, days } => {
                let id = decided(k)?;
                let when = km.admin(|s, now| lifecycle::schedule_deletion(s, &id, *days, now))?;
                Ok(json!({"key_id": id, "deletion_date": when}))
            }
            Request::CancelKeyDeletion { key: k } => {
                let id = decided(k)?;
                km.admin(|s, now| lifecycle::cancel_deletion(s, &id, now))?;
                done()
            }
            Request::RotateKeyOnDemand { key: k } => {
                let id = decided(k)?;
                let v = km.admin(|s, now| lifecycle::rotate(s, &id, now))?;
                Ok(json!({"key_id": id, "version": v}))
            }
            Request::GetKeyRotationStatus { key: k } => {
                let id = decided(k)?;
                let m = km.query(|s| lifecycle::describe(s, &id))?;
                Ok(serde_json::to_value(m.rotation).unwrap_or_default())
            }
            Request::SetKeyRotation {
                key: k,
                enabled,
                period_days,
            } => {
                let id = decided(k)?;
                km.admin(|s, _| {
                    let on = match enabled {
                        Some(b) => *b,
                        None => s.key(&id).is_some_and(|k| k.rotation.enabled),
                    };
                    lifecycle::set_rotation(s, &id, on, *period_days)
                })?;
                let m = km.query(|s| lifecycle::describe(s, &id))?;
                Ok(serde_json::to_value(m.rotation).unwrap_or_default())
            }
            Request::ImportKeyMaterial { key: k, material } => {
                let id = decided(k)?;
                let mut raw = zeroize::Zeroizing::new(vec![0u8; 32]);
                let hex = material.0.trim();
                if hex.len() != 64 || crate::crypto::hex::decode_into(hex, &mut raw).is_none() {
                    return Err(ControlError::new(
                        ErrorKind::Invalid,
                        "key material must be 64 hex digits (256 bits)",
                    ));
                }
                let v = km.admin(|s, now| lifecycle::import(s, &id, &raw, now))?;
                Ok(json!({"key_id": id, "version": v}))
            }
            Request::SetDefaultKey { key: _ } => {
                let (was, id) = (also_key(0)?, also_key(1)?);
                km.admin(|s, _| {
                    if s.default_key != was {
                        return Err(AdminError::Invalid(
                            "the default key changed while the request was being decided; try again"
                                .into(),
                        ));
                    }
                    lifecycle::set_default(s, &id)
                })?;
                done()
            }
            Request::SetMinDecryptionVersion { key: k, version } => {
                let id = decided(k)?;
                km.admin(|s, _| lifecycle::set_min_decryption_version(s, &id, *version))?;
                done()
            }
            Request::TrimKeyVersions {
                key: k,
                below,
                force,
            } => {
                let id = decided(k)?;
                let counts = self.counts()?;
                let gone = km.admin(|s, now| {
                    lifecycle::trim(s, &id, *below, *force, |v| counts.get(&id, v), now)
                })?;
                Ok(json!({"key_id": id, "destroyed_versions": gone}))
            }
            // Counts of the keys DescribeKey allows (as ListKeys shows their metadata).
            Request::GetKeyUsage => {
                let mut c = self.counts()?;
                c.files.retain(|k, _| self.may_describe(auth, *k));
                Ok(serde_json::to_value(c).unwrap_or_default())
            }
            Request::GetKeyPolicy { key: k } => {
                let id = decided(k)?;
                Ok(Value::String(km.query(|s| access::get_policy(s, &id))?))
            }
            Request::PutKeyPolicy {
                key: k,
                policy,
                bypass_lockout_check,
            } => {
                let id = decided(k)?;
                let who = auth.who().clone();
                km.admin(|s, now| {
                    access::put_policy(s, &id, policy, &who, *bypass_lockout_check, now)
                })?;
                done()
            }
            Request::SimulatePolicy {
                key: k,
                action,
                request,
            } => {
                let id = decided(k)?;
                // What the mount asks: one known action (a pattern or a misspelling would be
                // answered "denied", which says nothing), one of its access modes.
                if !policy::ACTIONS.contains(&action.as_str()) {
                    return Err(ControlError::new(
                        ErrorKind::Invalid,
                        format!("unknown action {action:?} (one action, e.g. kms:Decrypt)"),
                    ));
                }
                if let Some(m) = &request.access_mode
                    && !["read", "write", "readwrite"].contains(&m.as_str())
                {
                    return Err(ControlError::new(
                        ErrorKind::Invalid,
                        format!("access mode {m:?} is not read, write or readwrite"),
                    ));
                }
                let req = policy::Request {
                    who: Identity {
                        uid: request.uid,
                        gid: request.gid,
                        groups: request.groups.clone(),
                        user: request.user.clone(),
                        group_names: request.group_names.clone(),
                        pid: 0,
                        exe: request.exe.clone(),
                    },
                    action: action.clone(),
                    key: Some(id),
                    path: request.path.clone(),
                    path_unknown: false,
                    access_mode: request.access_mode.clone(),
                    now: km.now(),
                    encryption_context: request.encryption_context.clone(),
                };
                let d = km.query(|s| access::authorize(s, &req));
                Ok(json!({"allowed": d.allowed(), "decision": d}))
            }
            Request::CreateGrant { key: k, grant } => {
                let id = decided(k)?;
                let g = grant_of(id, grant);
                let gid = km.admin(|s, now| access::create_grant(s, g, now))?;
                Ok(json!({"grant_id": gid}))
            }
            Request::ListGrants { key: k } => {
                let id = k.as_deref().map(decided).transpose()?;
                let mut grants = km.query(|s| access::list_grants(s, id.as_ref()));
                // Without a key the request was allowed on the default key; each other key's
                // grants are shown only where that key allows kms:ListGrants too (found by a
                // review: every key's grants were shown).
                if let (None, Authority::Policy(who)) = (id, auth) {
                    let mut allowed = std::collections::BTreeMap::new();
                    grants.retain(|g| {
                        *allowed.entry(g.key).or_insert_with(|| {
                            self.decide(who, "kms:ListGrants", g.key, false).allowed()
                        })
                    });
                }
                Ok(serde_json::to_value(grants).unwrap_or_default())
            }
            Request::RetireGrant { grant_id } | Request::RevokeGrant { grant_id } => {
                km.admin(|s, _| access::remove_grant(s, grant_id))?;
                done()
            }
            Request::ListKeyRules => {
                Ok(serde_json::to_value(km.query(|s| s.rules.clone())).unwrap_or_default())
            }
            Request::SetKeyRule { prefix, .. } => {
                let id = also_key(0)?;
                km.admin(|s, _| {
                    rules_unchanged(s, &[id])?;
                    lifecycle::set_rule(s, prefix, &id)
                })?;
                Ok(serde_json::to_value(km.query(|s| s.rules.clone())).unwrap_or_default())
            }
            Request::DeleteKeyRule { prefix } => {
                km.admin(|s, _| {
                    rules_unchanged(s, &[])?;
                    lifecycle::remove_rule(s, prefix)
                })?;
                Ok(serde_json::to_value(km.query(|s| s.rules.clone())).unwrap_or_default())
            }
            Request::PutKeyRules { rules } => {
                let ids = rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| also_key(i).map(|id| (r.prefix.clone(), id)))
                    .collect::<R<Vec<_>>>()?;
                let named: Vec<KeyId> = ids.iter().map(|(_, k)| *k).collect();
                km.admin(|s, _| {
                    rules_unchanged(s, &named)?;
                    let before = std::mem::take(&mut s.rules);
                    for (prefix, id) in &ids {
                        let p = lifecycle::normalize_prefix(prefix)?;
                        if s.rules.iter().any(|r| r.prefix == p) {
                            return Err(AdminError::Invalid(format!(
                                "rule prefix {prefix:?} appears twice"
                            )));
                        }
                        // A rule carried over as it was stays, whatever its key's state (the
                        // rules file is edited by reading, changing and writing it back; a
                        // rule of a destroyed key is kept on purpose, see
                        // `execute_due_deletions`).
                        if before.iter().any(|r| r.prefix == p && r.key == *id) {
                            s.rules.push(crate::keymgr::store::KeyRule {
                                prefix: p,
                                key: *id,
                            });
                            s.rules.sort_by(|a, b| a.prefix.cmp(&b.prefix));
                        } else {
                            lifecycle::set_rule(s, prefix, id)?;
                        }
                    }
                    Ok(())
                })?;
                Ok(serde_json::to_value(km.query(|s| s.rules.clone())).unwrap_or_default())
            }
            Request::GetAlertSettings => {
                Ok(serde_json::to_value(km.query(|s| s.alerts)).unwrap_or_default())
            }
            Request::PutAlertSettings {
                denials_per_minute,
                decrypts_per_minute,
            } => {
                if *denials_per_minute == Some(0) || *decrypts_per_minute == Some(0) {
                    return Err(ControlError::new(
                        ErrorKind::Invalid,
                        "a threshold must be at least 1 per minute (leave it out for no alert)",
                    ));
                }
                km.admin(|s, _| {
                    s.alerts = crate::keymgr::store::AlertSettings {
                        denials_per_minute: *denials_per_minute,
                        decrypts_per_minute: *decrypts_per_minute,
                    };
                    Ok(())
                })?;
                Ok(serde_json::to_value(km.query(|s| s.alerts)).unwrap_or_default())
            }
            Request::GetAuditSettings => Ok(audit_settings(km, None)),
            Request::PutAuditSettings {
                retention_days,
                max_bytes,
            } => {
                if *retention_days == Some(0) {
                    return Err(ControlError::new(
                        ErrorKind::Invalid,
                        "retention must be at least 1 day (leave it out to keep the log for ever)",
                    ));
                }
                let min = super::request::AUDIT_MAX_BYTES_MIN;
                if max_bytes.is_some_and(|m| m < min) {
                    return Err(ControlError::new(
                        ErrorKind::Invalid,
                        format!(
                            "the audit log's size limit must be at least {min} bytes (two \
                             segments; leave it out for no limit)"
                        ),
                    ));
                }
                km.admin(|s, _| {
                    s.audit_retention_days = *retention_days;
                    s.audit_max_bytes = *max_bytes;
                    Ok(())
                })?;
                let removed = match self.audit {
                    Some(log) => km.expire_audit(log).map_err(|e| {
                        ControlError::new(
                            ErrorKind::Failed,
                            format!(
                                "the setting is saved; removing old audit segments failed: {e}"
                            ),
                        )
                    })?,
                    None => None,
                };
                Ok(audit_settings(km, removed))
            }
            Request::Rewrap { key: k, rules } => {
                let opts = crate::keymgr::rewrap::RewrapOptions {
                    key: k.as_deref().map(decided).transpose()?,
                    follow_rules: *rules,
                };
                let t = self.tree;
                // The request itself was allowed on one key (the default key without `key`);
                // each file is also decided by its own key and by the key it moves to.
                let mut denials = RewrapDenials::new();
                let mut authorize = |action: &'static str, id: KeyId, path: Option<&str>| {
                    let Authority::Policy(who) = auth else {
                        return Ok(());
                    };
                    let d = km.authorize(&policy::Request {
                        who: who.clone(),
                        action: action.into(),
                        key: Some(id),
                        path: path.map(str::to_string),
                        path_unknown: path.is_none(),
                        now: km.now(),
                        ..Default::default()
                    });
                    if d.allowed() {
                        return Ok(());
                    }
                    let by = super::decision_record(&d).by;
                    let reason = format!("{action} on key {id} denied for uid {} ({by})", who.uid);
                    let e = denials
                        .entry((action, id, by))
                        .or_insert_with(|| (0, path.map(str::to_string), d));
                    e.0 += 1;
                    Err(reason)
                };
                let s = crate::keymgr::rewrap::rewrap_authorized(
                    km,
                    &t.root,
                    &t.names,
                    &opts,
                    &mut authorize,
                    &mut |d, n| (t.progress)(d, n),
                );
                self.record_rewrap_denials(auth, denials)?;
                let s =
                    s.map_err(|e| ControlError::new(ErrorKind::Failed, format!("rewrap: {e}")))?;
                Ok(serde_json::to_value(s).unwrap_or_default())
            }
            Request::VerifyAuditLog => {
                let log = self.audit.ok_or_else(|| {
                    ControlError::new(ErrorKind::Failed, "no audit log is attached")
                })?;
                // Everything written so far is on disk before it is read back.
                let _ = log.sync();
                let keys = crate::keymgr::audit::AuditKeys::new(&km.volume_secret());
                let control = log.dir().parent().unwrap_or(log.dir());
                let anchor = km.query(|s| s.audit_anchor.clone());
                let r =
                    crate::keymgr::audit::verify(control, &keys, anchor.as_ref()).map_err(|e| {
                        ControlError::new(ErrorKind::Failed, format!("reading the audit log: {e}"))
                    })?;
                Ok(serde_json::to_value(r).unwrap_or_default())
            }
        }
    }
}

fn denied(action: &str, key: KeyId, who: &Identity, d: &Decision) -> ControlError {
    ControlError::new(
        ErrorKind::Denied,
        format!(
            "{action} on key {key} denied for uid {} ({})",
            who.uid,
            super::decision_record(d).by
        ),
    )
}

/// Files a rewrap left alone because a policy denied them: (action, key, deciding statement)
/// -> (files, the first file's path, the decision).
type RewrapDenials =
    std::collections::BTreeMap<(&'static str, KeyId, String), (u64, Option<String>, Decision)>;

/// The keys a request was decided on besides its own: (action, key).
pub(super) type Also = Vec<(&'static str, KeyId)>;

/// The action of an [`Also`] entry that records a key the request names, resolved at the
/// decision for `run` to use, with nothing decided on it.
const RESOLVED_ONLY: &str = "";

/// The keys whose consent a rules request (`SetKeyRule`, `DeleteKeyRule`, `PutKeyRules`)
/// needs, given the key store `st` as it is and `named`, the keys the request names in its
/// order: for each prefix whose rule it makes, changes or removes, the key that governs that
/// prefix (and so every path under it that no deeper, untouched rule governs) before the
/// change and after it: a rule's own key, or the nearest shorter rule's, or the default key.
/// (Counting only the rules' own keys let a rule nested under another key's rule take paths
/// from that key without its consent: found by a review.) Each key once, sorted.
fn rule_change_keys(
    st: &crate::keymgr::store::KeyStore,
    req: &Request,
    named: &[KeyId],
) -> Result<Vec<KeyId>, AdminError> {
    let norm = |p: &str| lifecycle::normalize_prefix(p).unwrap_or_else(|_| p.to_string());
    let now: Vec<(String, KeyId)> = st.rules.iter().map(|r| (r.prefix.clone(), r.key)).collect();
    let mut after = now.clone();
    match req {
        Request::SetKeyRule { prefix, .. } => {
            let p = lifecycle::normalize_prefix(prefix)?;
            after.retain(|(q, _)| norm(q) != p);
            after.extend(named.first().map(|k| (p, *k)));
        }
        Request::DeleteKeyRule { prefix } => {
            let p = lifecycle::normalize_prefix(prefix)?;
            after.retain(|(q, _)| norm(q) != p);
        }
        Request::PutKeyRules { rules } => {
            after = rules
                .iter()
                .zip(named)
                .map(|(r, k)| Ok((lifecycle::normalize_prefix(&r.prefix)?, *k)))
                .collect::<Result<_, AdminError>>()?;
        }
        _ => {}
    }
    let touched: Vec<String> = after
        .iter()
        .filter(|r| !now.contains(r))
        .chain(now.iter().filter(|r| !after.contains(r)))
        .map(|(p, _)| norm(p))
        .collect();
    let govern = |rules: &[(String, KeyId)], p: &str| {
        lifecycle::governing_key(
            rules.iter().map(|(q, k)| (q.as_str(), *k)),
            st.default_key,
            p,
        )
    };
    let mut keys: Vec<KeyId> = touched
        .iter()
        .flat_map(|p| [govern(&now, p), govern(&after, p)])
        .collect();
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// The audit settings as a reply; `removed`: the segments the request just removed.
fn audit_settings(km: &crate::keymgr::KeyManager, removed: Option<(u64, u64)>) -> Value {
    let (days, max_bytes) = km.query(|s| (s.audit_retention_days, s.audit_max_bytes));
    serde_json::json!({
        "retention_days": days,
        "max_bytes": max_bytes,
        "removed_segments": removed.map(|(a, b)| [a, b]),
    })
}

fn grant_of(key: KeyId, g: &GrantSpec) -> Grant {
    Grant {
        id: String::new(),
        key,
        name: g.name.clone(),
        grantee: g.grantee.clone(),
        operations: g.operations.clone(),
        path_like: g.path_like.clone(),
        encryption_context_subset: g.encryption_context_subset.clone(),
        expires: g.expires,
        created: 0,
        retiring_principal: g.retiring_principal.clone(),
    }
}

/// The policy of a key created by someone other than the volume owner: both have full control.
fn creator_policy(owner: u32, creator: u32) -> String {
    let mut doc: Value = serde_json::from_str(&Policy::default_text(owner)).unwrap_or_default();
    if let Some(st) = doc.get_mut("Statement").and_then(Value::as_array_mut) {
        st.push(json!({
            "Sid": "CreatorFullControl",
            "Effect": "Allow",
            "Principal": {"Uid": creator.to_string()},
            "Action": "kms:*",
            "Resource": "*"
        }));
    }
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}
