//! Changing a volume's config (`volume.json`) after `init`: `kmsfs upgrade` adds the features
//! an existing volume can take without rewriting its files, and a key-store restore may put an
//! older config back.
//!
//! The key store holds the config's digest, so the two files change together. The new config
//! is staged as `.kmsfs/volume.json.new` first, then the backup key store and the primary are
//! written with the new digest, then the staged config is renamed into place. Should the
//! process stop in between, whichever key store copy is opened either matches `volume.json`
//! (the change did not happen) or the staged config, which [`staged_config`] then renames into
//! place (the change is completed): the volume never stops opening.

use std::fs;
use std::path::{Path, PathBuf};

use super::VolumeError;
use super::volume::{Unlocked, VolumePaths, config_matches, io_err, unlock};
use super::{Unlock, seal::seal};
use crate::crypto::{hex, sha256};
use crate::format::config::{FEATURE_SPARSE_FILES, VolumeConfig};
use crate::fsutil::atomic_write;

/// Features an existing volume can be given: nothing already stored changes meaning.
/// `sparse-files`: files created from then on keep holes (files made before keep writing
/// zeros; their headers lack the flag).
pub const ADDABLE_FEATURES: &[&str] = &[FEATURE_SPARSE_FILES];

fn staged_path(paths: &VolumePaths) -> PathBuf {
    paths.control_dir().join("volume.json.new")
}

/// Writes `config` and the key store `u` (with `config`'s digest, as the next generation) into
/// place together (see the module doc). `u.config` becomes `config`.
pub(super) fn replace_config(u: &mut Unlocked, config: VolumeConfig) -> Result<(), VolumeError> {
    // As every key-store write: not over a newer primary sealed under another passphrase (found
    // by a review: an upgrade, unlike other writes, did not ask).
    u.check_primary_not_newer()?;
    let bytes = config.encode();
    u.store.config_digest = hex::encode(&sha256(&bytes));
    let next = u.generation() + 1;
    let sealed = seal(&u.store, u.store_key(), u.slots(), next);
    install(&u.paths, &bytes, &sealed)?;
    u.set_generation(next);
    u.used_backup = None;
    u.config = config;
    Ok(())
}

/// Puts the config `bytes` and the sealed key store `sealed` (made with their digest) in place
/// as both key store copies, in the order of the module doc.
pub(super) fn install(paths: &VolumePaths, bytes: &[u8], sealed: &[u8]) -> Result<(), VolumeError> {
    let staged = staged_path(paths);
    atomic_write(&staged, bytes, 0o644, None).map_err(io_err(&staged))?;
    // The backup first: until the primary is written, the primary (old digest) matches
    // `volume.json`, and the backup (new digest) the staged config.
    for p in [paths.keystore_backup(), paths.keystore()] {
        atomic_write(&p, sealed, 0o600, None).map_err(io_err(&p))?;
    }
    let target = paths.config();
    crate::fault::check("rename")
        .map_err(std::io::Error::from)
        .and_then(|()| match fs::rename(&staged, &target) {
            // An unlock in between (a command that takes no volume lock) completed it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if fs::read(&target).is_ok_and(|b| b == bytes) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            r => r,
        })
        .and_then(|()| fs::File::open(paths.control_dir())?.sync_all())
        .map_err(io_err(&target))
}

/// The staged config of an interrupted change (see the module doc) when a key store's `digest`
/// is its digest: renamed into place (when the directory is writable) and returned with its
/// bytes. `None` when there is no staged config or it is another one.
pub(super) fn staged_config(paths: &VolumePaths, digest: &str) -> Option<(VolumeConfig, Vec<u8>)> {
    let staged = staged_path(paths);
    let bytes = staged_bytes(paths, digest)?;
    let config = VolumeConfig::decode(&bytes).ok()?;
    match fs::rename(&staged, paths.config())
        .and_then(|()| fs::File::open(paths.control_dir())?.sync_all())
    {
        Ok(()) => tracing::warn!("completed an interrupted change of the volume config"),
        Err(e) => tracing::warn!(
            "the volume config of an interrupted change is used but not put in place: {e}"
        ),
    }
    Some((config, bytes))
}

/// The bytes of the staged config when `digest` is their digest (a change that could not be
/// put in place: the config a key store with that digest goes with).
pub(super) fn staged_bytes(paths: &VolumePaths, digest: &str) -> Option<Vec<u8>> {
    let bytes = fs::read(staged_path(paths)).ok()?;
    config_matches(&bytes, digest).then_some(bytes)
}

/// Adds `wanted` (every feature of [`ADDABLE_FEATURES`] when empty) to the volume in `dir`
/// (unmounted: the caller holds the volume lock). Returns the features added (none when the
/// volume has them all).
pub fn upgrade(dir: &Path, how: &Unlock, wanted: &[String]) -> Result<Vec<String>, VolumeError> {
    for w in wanted {
        if !ADDABLE_FEATURES.contains(&w.as_str()) {
            return Err(VolumeError::Invalid(format!(
                "{w:?} is not a feature an existing volume can be given (these can: {})",
                ADDABLE_FEATURES.join(", ")
            )));
        }
    }
    let mut u = unlock(dir, how)?;
    let added: Vec<String> = ADDABLE_FEATURES
        .iter()
        .filter(|f| wanted.is_empty() || wanted.iter().any(|w| w == *f))
        .filter(|f| !u.config.has_feature(f))
        .map(|f| f.to_string())
        .collect();
    if added.is_empty() {
        return Ok(added);
    }
    let mut config = u.config.clone();
    config.features.extend(added.iter().cloned());
    replace_config(&mut u, config)?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KdfParams, Passphrase};
    use crate::keymgr::{InitOptions, init};

    fn how() -> Unlock {
        Unlock::Passphrase(Passphrase::new(b"upgrade tests".to_vec()))
    }

    /// A volume made without sparse files, as kmsfs before 2026-12-05 made them.
    fn old_volume() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("vol");
        let Unlock::Passphrase(p) = how() else {
            unreachable!()
        };
        init(
            &d,
            &p,
            &InitOptions {
                kdf: KdfParams::FAST_INSECURE,
                recovery_key: false,
                sparse: false,
                ..Default::default()
            },
        )
        .expect("init");
        (t, d)
    }

    fn sparse(d: &Path) -> bool {
        unlock(d, &how())
            .expect("unlock")
            .config
            .has_feature(FEATURE_SPARSE_FILES)
    }

    /// A copy of the volume whose primary key store is damaged, unlocked (through the backup):
    /// whether it has sparse files. `None` when there is no backup (a new volume has none).
    fn backup_sparse(d: &Path) -> Option<bool> {
        if !VolumePaths::new(d).keystore_backup().exists() {
            return None;
        }
        let c = d.with_extension("copy");
        let _ = fs::remove_dir_all(&c);
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(d)
            .arg(&c)
            .status()
            .expect("cp");
        assert!(ok.success());
        let ks = VolumePaths::new(&c).keystore();
        let mut b = fs::read(&ks).expect("keystore");
        let n = b.len();
        b[n - 1] ^= 1;
        fs::write(&ks, b).expect("damage");
        let u = unlock(&c, &how()).expect("unlock through the backup");
        assert!(u.used_backup.is_some());
        Some(u.config.has_feature(FEATURE_SPARSE_FILES))
    }

    #[test]
    fn upgrade_adds_sparse_files_once_and_refuses_other_features() {
        let (_t, d) = old_volume();
        assert!(!sparse(&d));
        let g = unlock(&d, &how()).expect("unlock").generation();
        assert_eq!(upgrade(&d, &how(), &[]).expect("upgrade"), ["sparse-files"]);
        assert!(sparse(&d));
        assert_eq!(unlock(&d, &how()).expect("unlock").generation(), g + 1);
        assert!(!staged_path(&VolumePaths::new(&d)).exists());
        assert_eq!(
            backup_sparse(&d),
            Some(true),
            "the backup key store has the new digest too"
        );
        assert!(upgrade(&d, &how(), &[]).expect("again").is_empty());
        for f in ["plaintext-names", "time-travel"] {
            assert!(matches!(
                upgrade(&d, &how(), &[f.to_string()]),
                Err(VolumeError::Invalid(_))
            ));
        }
        let wrong = Unlock::Passphrase(Passphrase::new(b"wrong".to_vec()));
        assert!(matches!(
            upgrade(&d, &wrong, &[]),
            Err(VolumeError::WrongPassphrase)
        ));
    }

    /// The upgrade stops at each of its steps in turn (the Nth write, fsync or rename fails, as
    /// a crash there would leave it): the volume opens after each, through the primary key store
    /// and through the backup alike, with the old config or the new one; once it opened with
    /// the new one it keeps it; a further upgrade completes.
    #[test]
    fn an_upgrade_stopped_at_any_step_leaves_a_volume_that_opens() {
        let mut completed_at = None;
        for n in 1..40 {
            let (_t, d) = old_volume();
            crate::fault::arm(n, rustix::io::Errno::IO);
            let r = upgrade(&d, &how(), &[]);
            let fired = crate::fault::disarm();
            if fired.is_none() {
                assert_eq!(r.expect("upgrade"), ["sparse-files"]);
                completed_at = Some(n);
                break;
            }
            assert!(
                r.is_err(),
                "step {n} ({fired:?}) failed but upgrade said ok"
            );
            // Either copy opens (the backup in a copy of the volume, first: opening the
            // original can complete the change).
            let backup = backup_sparse(&d);
            let primary = sparse(&d);
            if primary {
                assert_ne!(backup, Some(false), "step {n}: the backup lost the change");
            }
            assert_eq!(sparse(&d), primary, "step {n}: stable");
            assert!(upgrade(&d, &how(), &[]).is_ok(), "step {n}: retry");
            assert!(sparse(&d), "step {n}");
            assert_eq!(backup_sparse(&d), Some(true), "step {n}: backup");
        }
        assert!(completed_at.is_some_and(|n| n > 4), "{completed_at:?}");
    }

    #[test]
    fn restoring_a_backup_made_before_an_upgrade_puts_its_config_back() {
        let (t, d) = old_volume();
        let file = t.path().join("ks.backup");
        crate::keymgr::backup::export(&d, &how(), &file).expect("export");
        upgrade(&d, &how(), &[]).expect("upgrade");
        let upgraded = fs::read(VolumePaths::new(&d).keystore()).expect("keystore");
        crate::keymgr::backup::restore(&d, &how(), &file, true).expect("restore");
        assert!(!sparse(&d));
        // The key store it replaced is kept beside it.
        let cd = VolumePaths::new(&d).control_dir();
        assert_eq!(
            fs::read(cd.join("keystore.before-restore")).expect("kept"),
            upgraded
        );
        assert!(
            VolumeConfig::decode(&fs::read(cd.join("volume.json.before-restore")).expect("kept"))
                .expect("config")
                .has_feature(FEATURE_SPARSE_FILES)
        );
        assert_eq!(backup_sparse(&d), Some(false));
    }
}
