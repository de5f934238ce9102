//! `kmsfs keystore export CIPHERDIR FILE` and `kmsfs keystore restore CIPHERDIR FILE
//! [--allow-rollback]`: encrypted key-store backups (see `keymgr::backup`). The volume must not
//! be mounted. Both are recorded in the audit log when it can be opened.

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

/// Best effort: the record is written if the log opens.
fn record(u: &crate::keymgr::Unlocked, event: &str, detail: String) {
    if let Ok(log) = AuditLog::open(
        &u.paths.control_dir(),
        AuditKeys::new(&u.store.volume_secret),
    ) {
        let mut r = AuditRecord::new(event, Source::Kms);
        r.actor = crate::vfs::identity::current().into();
        r.detail = Some(detail);
        let _ = log.append(r);
        let _ = log.close();
    }
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
    let _lock = super::mount_cmd::lock_volume(&VolumePaths::new(cipherdir))?;
    let how = unlock.source().get()?;
    let (info, what) = match &a.op {
        KeystoreOp::Export { file, .. } => {
            let (i, u) = backup::export(cipherdir, &how, file)?;
            record(
                &u,
                "KeyStoreExport",
                format!("generation {} to {}", i.generation, file.display()),
            );
            (i, format!("exported to {}", file.display()))
        }
        KeystoreOp::Restore {
            file,
            allow_rollback,
            ..
        } => {
            let (i, u) = backup::restore(cipherdir, &how, file, *allow_rollback)?;
            record(
                &u,
                "KeyStoreRestore",
                format!(
                    "generation {} from {} (rollback allowed: {allow_rollback})",
                    i.generation,
                    file.display()
                ),
            );
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
