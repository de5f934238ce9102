//! Key-manager requests on a read-only mount. The kernel refuses to open `.kmsfs/request` for
//! writing there (EROFS), so a request cannot be written. The read-only requests that have a
//! control file rendering exactly their result (`keys/<id>/metadata` is DescribeKey, `rules` is
//! ListKeyRules, …; see `control::files`) are answered by reading that file: the mount decides
//! and audits each read as the request's own action. Every other request is refused with what
//! to do instead (until 2026-12-06 every key-manager command failed there with a bare
//! "Read-only file system", even `kmsfs key MNT list`).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::CliError;
use super::exit_code as code;
use crate::control::Request;

/// Answers `req` from the read-only control files of the mount whose control directory is
/// `ctl`, or refuses it.
pub(super) fn call(ctl: &Path, req: &Request) -> Result<Value, CliError> {
    match req {
        Request::ListKeys => list_keys(ctl),
        Request::DescribeKey { key } => read_json(&key_file(ctl, key, "metadata")),
        Request::GetKeyPolicy { key } => read_text(&key_file(ctl, key, "policy")),
        Request::GetKeyRotationStatus { key } => read_json(&key_file(ctl, key, "rotation")),
        Request::ListGrants { key: Some(key) } => read_json(&key_file(ctl, key, "grants")),
        Request::ListKeyRules => read_json(&ctl.join("rules")),
        Request::GetAlertSettings => read_json(&ctl.join("alerts")),
        _ => Err(refused(ctl, req)),
    }
}

/// The refusal of a request that changes something, or that no control file answers.
fn refused(ctl: &Path, req: &Request) -> CliError {
    let mnt = ctl.parent().unwrap_or(ctl);
    CliError::new(
        code::INVALID_REQUEST,
        format!(
            "the mount at {} is read-only: {} needs a read-write mount (its request cannot be \
             written to .kmsfs/request)",
            mnt.display(),
            op_name(req)
        ),
    )
    .hint(format!(
        "remount read-write (mount -o remount,rw {}), or unmount and run it on the cipher \
         directory",
        mnt.display()
    ))
}

/// The request's operation name (`"op"`), read from its serialized form without copying the
/// other fields (a request may carry key material).
fn op_name(req: &Request) -> String {
    #[derive(serde::Deserialize)]
    struct Op {
        op: String,
    }
    let body = zeroize::Zeroizing::new(serde_json::to_vec(req).unwrap_or_default());
    serde_json::from_slice::<Op>(&body)
        .map(|o| o.op)
        .unwrap_or_else(|_| "this request".into())
}

/// `keys/<id>/NAME`, or `aliases/<name>/NAME` for `alias/<name>` (the alias is a link to its
/// key's directory).
fn key_file(ctl: &Path, key: &str, name: &str) -> PathBuf {
    match key.strip_prefix("alias/") {
        Some(alias) => ctl.join("aliases").join(alias).join(name),
        None => ctl.join("keys").join(key).join(name),
    }
}

/// ListKeys: every key's `metadata`, oldest first (the order ListKeys gives). A key whose
/// metadata the policy denies is left out, with a note; all denied is a denial.
fn list_keys(ctl: &Path) -> Result<Value, CliError> {
    let dir = ctl.join("keys");
    // `keys/` is listed by the mount's owner only (mode 0711: the kernel keeps one listing for
    // every user, so it cannot follow each caller's policy).
    let entries = std::fs::read_dir(&dir).map_err(|e| match e.kind() {
        ErrorKind::PermissionDenied => CliError::new(
            code::ACCESS_DENIED,
            format!(
                "{}: only the mount's owner lists the keys of a read-only mount (ListKeys needs \
                 a read-write mount for other users)",
                dir.display()
            ),
        ),
        _ => io_error(&dir, e),
    })?;
    let mut keys = Vec::new();
    let mut denied = 0;
    for e in entries {
        let e = e.map_err(|e| io_error(&dir, e))?;
        match read_json(&e.path().join("metadata")) {
            Ok(m) => keys.push(m),
            Err(err) if err.code == code::ACCESS_DENIED => denied += 1,
            Err(err) => return Err(err),
        }
    }
    if denied > 0 && keys.is_empty() {
        return Err(CliError::new(
            code::ACCESS_DENIED,
            format!(
                "{}: kms:DescribeKey is denied on every key (on a read-only mount the keys are \
                 listed through keys/<id>/metadata)",
                dir.display()
            ),
        ));
    }
    if denied > 0 {
        eprintln!(
            "kmsfs: {denied} key(s) not shown: kms:DescribeKey denied (on a read-only mount the \
             keys are listed through keys/<id>/metadata)"
        );
    }
    // In the listing's order, which is the key store's, as ListKeys gives them (not sorted by
    // creation time: keys made within one second would come out by id).
    Ok(Value::Array(keys))
}

fn read_text(p: &Path) -> Result<Value, CliError> {
    let mut text = std::fs::read_to_string(p).map_err(|e| io_error(p, e))?;
    // The file ends every document with a newline; the request's value does not have one.
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(Value::String(text))
}

fn read_json(p: &Path) -> Result<Value, CliError> {
    let b = std::fs::read(p).map_err(|e| io_error(p, e))?;
    serde_json::from_slice(&b)
        .map_err(|e| CliError::new(code::ERROR, format!("{}: bad document: {e}", p.display())))
}

/// A control file's errno as the request's error: EACCES is the policy's denial, ENOENT an
/// unknown key.
fn io_error(p: &Path, e: std::io::Error) -> CliError {
    match e.kind() {
        ErrorKind::PermissionDenied => CliError::new(
            code::ACCESS_DENIED,
            format!("{}: denied by key policy", p.display()),
        )
        .hint("the decision is in the audit log"),
        ErrorKind::NotFound => CliError::new(
            code::NOT_FOUND,
            format!("{}: no such key or alias", p.display()),
        ),
        _ => CliError::new(code::ERROR, format!("{}: {e}", p.display())),
    }
}
