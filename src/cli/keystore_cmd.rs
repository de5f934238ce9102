//! `kmsfs keystore export CIPHERDIR FILE` and `kmsfs keystore restore CIPHERDIR FILE
//! [--allow-rollback]`: encrypted key-store backups (see `keymgr::backup`). The volume must not
//! be mounted. An export is recorded in the audit log before the file is written, and refused
//! without a writable log; a restore is recorded once done (the key store in place may be what
//! is lost), and ends by recording the log's closing checkpoint in the key store.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::UnlockArgs;
use super::error::CliError;
use crate::keymgr::audit::{AuditKeys, AuditLog, AuditRecord, Source};
use crate::keymgr::{VolumePaths, backup};

#[derive(Args, Debug)]
pub struct KeystoreArgs {
    #[command(subcommand)]
    op: KeystoreOp,
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum KeystoreOp {
    /// Write the key store (sealed: opening it needs this passphrase or the recovery key) and
    /// the volume config to FILE (mode 0600).
    Export {
        cipherdir: PathBuf,
        file: PathBuf,
        #[command(flatten)]
        unlock: UnlockArgs,
    },
    /// Put a backup back into a volume whose key store is lost or damaged. The passphrase is the
    /// one of the time of the backup. A backup older than the key store in place is refused.
    Restore {
        cipherdir: PathBuf,
        file: PathBuf,
        #[command(flatten)]
        unlock: UnlockArgs,
        /// Restore an older generation anyway: keys destroyed since come back, later keys,
        /// policies and grants are lost.
        #[arg(long)]
        allow_rollback: bool,
    },
}

/// The volume's audit log, checked against the key store's anchor.
fn open_log(u: &crate::keymgr::Unlocked) -> std::io::Result<AuditLog> {
    AuditLog::open_anchored(
        &u.paths.control_dir(),
        AuditKeys::new(&u.store.volume_secret),
        u.store.audit_anchor.as_ref(),
    )
}

fn append(log: &AuditLog, event: &str, detail: String) -> std::io::Result<u64> {
    let mut r = AuditRecord::new(event, Source::Kms);
    r.actor = crate::vfs::identity::current().into();
    r.detail = Some(detail);
    log.append(r)
}

fn audit_error(e: std::io::Error) -> CliError {
    CliError::new(
        super::exit_code::ERROR,
        format!("cannot write the audit log: {e}"),
    )
    .hint("an export is refused without a writable audit log (fail-closed)")
}

pub fn keystore(a: &KeystoreArgs) -> Result<(), CliError> {
    let (cipherdir, unlock) = match &a.op {
        KeystoreOp::Export {
            cipherdir, unlock, ..
        }
        | KeystoreOp::Restore {
            cipherdir, unlock, ..
        } => (cipherdir, unlock),
    };
    // Refused before the prompt when mounted; the lock is taken after it (a prompt must not
    // hold the volume: a mount meanwhile was refused as "already mounted").
    let root = std::fs::canonicalize(cipherdir).unwrap_or_else(|_| cipherdir.clone());
    super::mount_cmd::refuse_if_mounted(&root)?;
    let how = unlock.source().get()?;
    let _lock = super::mount_cmd::lock_volume(&VolumePaths::new(cipherdir))?;
    let (info, what) = match &a.op {
        KeystoreOp::Export { file, .. } => {
            // Recorded before the key store leaves the volume (fail-closed).
            let u = crate::keymgr::unlock(cipherdir, &how)?;
            // The backup would hold the generation before the last change.
            super::warn_if_backup(&u);
            let log = open_log(&u).map_err(audit_error)?;
            let detail = format!("generation {} to {}", u.generation(), file.display());
            append(&log, "KeyStoreExport", detail.clone()).map_err(audit_error)?;
            let (i, u) = match backup::export_unlocked(cipherdir, u, file) {
                Ok(x) => x,
                Err(e) => {
                    let _ = append(&log, "KeyStoreExport", format!("{detail}: failed: {e}"));
                    let _ = log.close();
                    return Err(e.into());
                }
            };
            // Not anchored: that would rewrite the key store, and the backup just written would
            // then be older than it (a restore of it a rollback). Its record is covered by
            // `head` alone.
            drop(u);
            let _ = log.close();
            (i, format!("exported to {}", file.display()))
        }
        KeystoreOp::Restore {
            file,
            allow_rollback,
            ..
        } => {
            let (i, u) = backup::restore(cipherdir, &how, file, *allow_rollback)?;
            // After the fact: the key store in place may be lost or damaged (what a restore is
            // for), so the log's keys come from the backup. A failure is reported, not undone.
            let detail = format!(
                "generation {} from {} (rollback allowed: {allow_rollback})",
                i.generation,
                file.display()
            );
            match open_log(&u).and_then(|log| append(&log, "KeyStoreRestore", detail).map(|_| log))
            {
                Ok(log) => {
                    if let Err(e) = crate::keymgr::KeyManager::new(u).close_audit(&log) {
                        super::key_cmd::warn_unanchored(e);
                    }
                }
                Err(e) => eprintln!(
                    "kmsfs: warning: the restore is done but could not be recorded in the audit \
                     log: {e}"
                ),
            }
            // The restored store holds the unlock slots of the time of the export.
            eprintln!(
                "kmsfs: note: the volume now opens with the passphrase and recovery key it had \
                 when the backup was made; any set later no longer open it"
            );
            for k in &i.kept {
                eprintln!(
                    "kmsfs: the key store copy it replaced is kept as {}",
                    k.display()
                );
            }
            (i, format!("restored from {}", file.display()))
        }
    };
    if a.json {
        super::key_cmd::print_json(&info);
    } else {
        println!(
            "key store of volume {} (generation {}, {} key(s)) {what}",
            info.volume_id, info.generation, info.keys
        );
    }
    Ok(())
}
