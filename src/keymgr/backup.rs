//! Key-store backups: `export` writes the volume's key store (sealed, as on disk: opening it
//! needs the passphrase or the recovery key of the time of the export) and its volume config into
//! one file; `restore` puts them back into a volume whose key store was lost or damaged. A
//! restore never silently rolls a volume back: a backup older than the key store in place is
//! refused unless explicitly allowed, because it brings back keys destroyed since
//! (crypto-shredding undone) and drops later keys, policies and grants.

use std::path::Path;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::seal::{seal, unseal};
use super::volume::{config_matches, envelope_generation, io_err, write_both};
use super::{Unlock, Unlocked, VolumeError, VolumePaths, probe, unlock};
use crate::crypto::hex;
use crate::fsutil::atomic_write;

const FORMAT: &str = "kmsfs-keystore-backup";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupFile {
    format: String,
    version: u32,
    volume_id: String,
    generation: u64,
    created: u64,
    /// The sealed key store envelope (base64).
    keystore: String,
    /// `volume.json` (base64).
    volume_config: String,
}

/// What a backup holds (no secret).
#[derive(Debug, Clone, Serialize)]
pub struct BackupInfo {
    pub volume_id: String,
    pub generation: u64,
    pub created: u64,
    pub keys: usize,
    /// A restore: where the key store copies it replaced were kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<std::path::PathBuf>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Writes a backup of the volume in `dir` to `out` (mode 0600; refused if `out` exists).
/// Returns the unlocked volume too (for the audit record, without a second key derivation).
pub fn export(dir: &Path, how: &Unlock, out: &Path) -> Result<(BackupInfo, Unlocked), VolumeError> {
    export_unlocked(dir, unlock(dir, how)?, out)
}

/// [`export`] of a volume unlocked already (`u`, opened from `dir`).
pub fn export_unlocked(
    dir: &Path,
    u: Unlocked,
    out: &Path,
) -> Result<(BackupInfo, Unlocked), VolumeError> {
    // The config the key store goes with: `volume.json`, or a staged one that could not be put
    // in place (a read-only control directory after an interrupted change).
    let (_, mut config_bytes) = probe(dir)?;
    if !config_matches(&config_bytes, &u.store.config_digest)
        && let Some(b) = super::upgrade::staged_bytes(&u.paths, &u.store.config_digest)
    {
        config_bytes = b;
    }
    let sealed = u.sealed();
    if out.exists() {
        return Err(VolumeError::Invalid(format!(
            "{} exists; choose a new file for the backup",
            out.display()
        )));
    }
    let info = BackupInfo {
        volume_id: hex::encode(&u.store.volume_id.0),
        generation: u.generation(),
        created: super::now_unix(),
        keys: u.store.keys.len(),
        kept: Vec::new(),
    };
    let file = BackupFile {
        format: FORMAT.into(),
        version: VERSION,
        volume_id: info.volume_id.clone(),
        generation: info.generation,
        created: info.created,
        keystore: b64().encode(&sealed),
        volume_config: b64().encode(&config_bytes),
    };
    let bytes =
        serde_json::to_vec_pretty(&file).map_err(|e| VolumeError::Invalid(e.to_string()))?;
    atomic_write(out, &bytes, 0o600, None).map_err(io_err(out))?;
    Ok((info, u))
}

/// Refuses a backup of generation `backup` when either key store copy in place is of a newer
/// generation (unless `allow_rollback`). The generations come from the envelope headers, which
/// need no secret: the copies in place may not open with the backup's passphrase (it was changed
/// since), and must be counted all the same.
fn refuse_rollback(
    paths: &VolumePaths,
    backup: u64,
    allow_rollback: bool,
) -> Result<(), VolumeError> {
    let newest = [paths.keystore(), paths.keystore_backup()]
        .iter()
        .filter_map(|p| envelope_generation(p))
        .max();
    match newest {
        Some(g) if g > backup && !allow_rollback => Err(VolumeError::Refused(format!(
            "the backup is generation {backup} but the volume's key store is at generation {g}: \
             restoring it would bring back keys destroyed since, drop later changes and bring \
             back the passphrase and recovery key of the time of the export (use \
             --allow-rollback to do it anyway)"
        ))),
        _ => Ok(()),
    }
}

/// Copies `keystore` and `keystore.bak` (those there are) to `keystore.before-restore` and
/// `keystore.bak.before-restore`. Copies of an earlier restore are not overwritten: they are
/// the state before that one, and the file name gets the first free `.N` suffix instead.
/// Returns the copies made.
fn keep_before_restore(paths: &VolumePaths) -> Result<Vec<std::path::PathBuf>, VolumeError> {
    let mut kept = Vec::new();
    for from in [paths.keystore(), paths.keystore_backup()] {
        let bytes = match std::fs::read(&from) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&from)(e)),
        };
        let name = format!(
            "{}.before-restore",
            from.file_name()
                .map_or_else(Default::default, |n| n.to_string_lossy())
        );
        let to = free_name(&paths.control_dir(), &name);
        atomic_write(&to, &bytes, 0o600, None).map_err(io_err(&to))?;
        kept.push(to);
    }
    Ok(kept)
}

/// `dir/name`, or `dir/name.N` with the smallest N ≥ 1 not taken when that exists.
fn free_name(dir: &Path, name: &str) -> std::path::PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1u32..)
        .map(|n| dir.join(format!("{name}.{n}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Restores the backup `from` into the volume in `dir` (unmounted). `how` must open the backup.
/// Returns the volume as it opens now.
pub fn restore(
    dir: &Path,
    how: &Unlock,
    from: &Path,
    allow_rollback: bool,
) -> Result<(BackupInfo, Unlocked), VolumeError> {
    let raw = std::fs::read(from).map_err(io_err(from))?;
    let bad = |m: String| VolumeError::Invalid(format!("{}: {m}", from.display()));
    let file: BackupFile = serde_json::from_slice(&raw)
        .map_err(|e| bad(format!("not a kmsfs key-store backup ({e})")))?;
    if file.format != FORMAT {
        return Err(bad(format!(
            "format {:?} is not a kmsfs key-store backup",
            file.format
        )));
    }
    if file.version != VERSION {
        return Err(VolumeError::NewerBackup(format!(
            "{}: key-store backup version {} is not one this kmsfs reads (it reads {VERSION}); \
             upgrade kmsfs",
            from.display(),
            file.version
        )));
    }
    let sealed = b64()
        .decode(&file.keystore)
        .map_err(|e| bad(format!("key store: {e}")))?;
    let config = b64()
        .decode(&file.volume_config)
        .map_err(|e| bad(format!("volume config: {e}")))?;
    // The backup must open, and its config must be the one its key store was made with. A
    // backup that does not open for another reason than the passphrase is the damaged one, not
    // the volume's key store.
    let u = unseal(&sealed, how).map_err(|e| match e {
        VolumeError::KeyStoreCorrupt(why) => VolumeError::BackupCorrupt {
            path: from.to_path_buf(),
            why,
        },
        e => e,
    })?;
    if !config_matches(&config, &u.store.config_digest) {
        return Err(VolumeError::BackupCorrupt {
            path: from.to_path_buf(),
            why: "its volume config does not match its key store (modified)".into(),
        });
    }
    let paths = VolumePaths::new(dir);
    // The volume in place, if its config reads: it must be the same volume.
    if let Ok((cfg, _)) = probe(dir) {
        if cfg.volume_id != u.store.volume_id {
            return Err(VolumeError::Refused(format!(
                "{}: it belongs to volume {}, not to {} ({})",
                from.display(),
                hex::encode(&u.store.volume_id.0),
                hex::encode(&cfg.volume_id.0),
                dir.display()
            )));
        }
        refuse_rollback(&paths, u.envelope.generation, allow_rollback)?;
    }
    std::fs::create_dir_all(paths.control_dir()).map_err(io_err(&paths.control_dir()))?;
    // The restored store is sealed again as the newest generation on the volume and written as
    // both copies: left at its own (older) generation beside a newer `keystore.bak`, a later
    // session unlocked with the passphrase of before the restore fell back to that copy and
    // wrote over the restored one (found by a review). The copies it replaces are kept below.
    let newest = [paths.keystore(), paths.keystore_backup()]
        .iter()
        .filter_map(|p| envelope_generation(p))
        .chain([u.envelope.generation])
        .max()
        .unwrap_or(0);
    let sealed = seal(
        &u.store,
        &u.store_key,
        &u.envelope.slots,
        newest.saturating_add(1),
    );
    // Whatever happens next, the key store being replaced stays on disk.
    let kept = keep_before_restore(&paths)?;
    match probe(dir) {
        // The backup was made with another config (before `kmsfs upgrade`, say): both change
        // together, and both key store copies hold the backup (the current one has the other
        // config's digest).
        Ok((_, current)) if current != config => {
            // Both copies are replaced: the config in place is kept beside them, as the key
            // store was (above).
            let p = paths.control_dir().join("volume.json.before-restore");
            atomic_write(&p, &current, 0o644, None).map_err(io_err(&p))?;
            super::upgrade::install(&paths, &config, &sealed)?;
        }
        current => {
            if current.is_err() {
                atomic_write(&paths.config(), &config, 0o644, None)
                    .map_err(io_err(&paths.config()))?;
            }
            write_both(&paths, &sealed)?;
        }
    }
    // What was restored must now open.
    let check = unlock(dir, how)?;
    Ok((
        BackupInfo {
            volume_id: file.volume_id,
            generation: check.generation(),
            created: file.created,
            keys: check.store.keys.len(),
            kept,
        },
        check,
    ))
}
