//! Where a key-manager command goes: through the control directory of a mounted volume (its
//! daemon owns the key store; the key policy decides for the calling user), or straight to the
//! cipher directory of an unmounted one (unlocked with the passphrase). Both run the same
//! [`Request`] through the same executor, so each operation has one implementation.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::UnlockArgs;
use super::error::CliError;
use super::exit_code as code;
use super::key_cmd::{Admin, open};
use crate::control::{
    Authority, CONTROL_NAME, CipherTree, ControlError, ErrorKind, Executor, Request,
};

pub(super) enum Target {
    Offline(Box<Admin>),
    /// The control directory of the mount.
    Mounted(PathBuf),
}

impl From<ControlError> for CliError {
    fn from(e: ControlError) -> Self {
        let c = match e.kind {
            ErrorKind::Invalid => code::INVALID_REQUEST,
            ErrorKind::NotFound => code::NOT_FOUND,
            ErrorKind::Denied => code::ACCESS_DENIED,
            ErrorKind::Failed => code::ERROR,
        };
        CliError::new(c, e.message)
    }
}

/// The mount point of `path` if it is one of kmsfs, or of the volume whose cipher directory
/// `path` is, if that volume is mounted. A mount whose daemon is gone (killed or crashed: every
/// call there fails with ENOTCONN) is an error telling how to clear it (exit 18), not a mount
/// to send requests to (until 2026-12-06 they failed with a bare "Transport endpoint is not
/// connected").
pub(super) fn mount_of(path: &Path) -> Result<Option<PathBuf>, CliError> {
    // A dead mount point itself cannot be resolved: its directory is, its name kept.
    let abs = super::mount_cmd::absolute_mountpoint(path);
    let Some(mp) = super::mount_cmd::mount_table()
        .into_iter()
        .filter(|(_, _, ty)| ty == "fuse.kmsfs")
        .find(|(src, mp, _)| *mp == abs || Path::new(src) == abs)
        .map(|(_, mp, _)| mp)
    else {
        return Ok(None);
    };
    match std::fs::symlink_metadata(&mp) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(CliError::new(
            code::NOT_MOUNTED,
            format!(
                "the daemon of the kmsfs mount at {} is gone (killed or crashed)",
                mp.display()
            ),
        )
        .hint(format!(
            "run `kmsfs unmount {}`, then repeat the command (or mount the volume again)",
            mp.display()
        ))),
        _ => Ok(Some(mp)),
    }
}

/// `path` is a mount point or a cipher directory.
pub(super) fn target(path: &Path, unlock: &UnlockArgs) -> Result<Target, CliError> {
    if let Some(mp) = mount_of(path)? {
        return Ok(Target::Mounted(mp.join(CONTROL_NAME)));
    }
    Ok(Target::Offline(Box::new(open(path, unlock)?)))
}

impl Target {
    pub(super) fn call(&self, req: &Request) -> Result<Value, CliError> {
        match self {
            Target::Offline(ad) => {
                let progress = std::sync::Arc::new(std::sync::Mutex::new(
                    super::progress::Progress::new("rewrap"),
                ));
                let p = progress.clone();
                let tree = CipherTree {
                    root: ad.root.clone(),
                    names: ad.names(),
                    progress: Box::new(move |d, n| {
                        p.lock().unwrap_or_else(|p| p.into_inner()).update(d, n)
                    }),
                };
                let ex = Executor {
                    km: &ad.km,
                    audit: Some(&ad.audit),
                    tree: &tree,
                };
                let who = crate::vfs::identity::current();
                let r = ex.execute(&Authority::Passphrase(who), req);
                progress.lock().unwrap_or_else(|p| p.into_inner()).finish();
                Ok(r?)
            }
            Target::Mounted(ctl) => call_mounted(ctl, req),
        }
    }
}

/// Writes the request to `request` and reads the response from the same open file.
fn call_mounted(ctl: &Path, req: &Request) -> Result<Value, CliError> {
    let path = ctl.join("request");
    let io = |e: std::io::Error| CliError::new(code::ERROR, format!("{}: {e}", path.display()));
    let mut f = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        // A read-only mount: answered from the read-only control files, or refused clearly.
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
            return super::ro_control::call(ctl, req);
        }
        Err(e) => return Err(io(e)),
    };
    // May carry imported key material.
    let body = zeroize::Zeroizing::new(
        serde_json::to_vec(req).map_err(|e| CliError::new(code::ERROR, e.to_string()))?,
    );
    let written = f.write_all(&body);
    // The response follows the request on the same file, from the write position on.
    let mut out = Vec::new();
    f.read_to_end(&mut out).map_err(io)?;
    if out.is_empty() {
        // No response: the write itself failed before the request was read.
        written.map_err(io)?;
        return Err(CliError::new(
            code::ERROR,
            format!("{}: no response", path.display()),
        ));
    }
    let resp: Value = serde_json::from_slice(&out).map_err(|e| {
        CliError::new(
            code::ERROR,
            format!("{}: bad response: {e}", path.display()),
        )
    })?;
    if resp["ok"] == Value::Bool(true) {
        return Ok(resp["result"].clone());
    }
    let e: ControlError = serde_json::from_value(resp["error"].clone()).map_err(|e| {
        CliError::new(
            code::ERROR,
            format!("{}: bad response: {e}", path.display()),
        )
    })?;
    Err(e.into())
}
