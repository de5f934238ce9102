//! keymgr owns the key store: creating and unlocking volumes, sealing the store on disk, and the
//! runtime key manager that wraps new files' DEKs and unwraps existing ones. Later: key lifecycle,
//! rotation, policies, grants, rules and audit.

pub mod access;
pub mod audit;
pub mod backup;
pub mod fsck;
pub mod lifecycle;
pub mod policy;
pub mod rewrap;
mod seal;
pub mod store;
pub mod upgrade;
mod volume;

use std::path::PathBuf;
use std::sync::RwLock;

pub use lifecycle::{AdminError, KeyMetadata};
pub use store::{KeyState, KeyStore, KmsKey};
pub use volume::{
    InitOptions, PasswdOutcome, PendingPasswd, Unlocked, VolumeInfo, VolumePaths,
    change_passphrase, format_recovery_key, init, parse_recovery_key, passwd, prepare_passwd,
    probe, unlock,
};

use crate::crypto::{Aead, KdfError, Key256, Passphrase};
use crate::format::header::{FileHeader, WRAP_LEN};
use crate::format::{FileId, KeyId, VolumeId};

/// What the user gave to unlock a volume.
pub enum Unlock {
    Passphrase(Passphrase),
    RecoveryKey(Key256),
}

impl std::fmt::Debug for Unlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unlock::Passphrase(_) => f.write_str("Unlock::Passphrase(<redacted>)"),
            Unlock::RecoveryKey(_) => f.write_str("Unlock::RecoveryKey(<redacted>)"),
        }
    }
}

/// Errors of opening, creating and changing a volume.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The directory has no `.kmsfs/volume.json`.
    #[error("{0} is not a kmsfs volume (no .kmsfs/volume.json); create one with `kmsfs init`")]
    NotAVolume(PathBuf),
    /// `init` on a directory that has entries.
    #[error("{0} is not empty; kmsfs init needs an empty directory")]
    NotEmpty(PathBuf),
    #[error("volume config: {0}")]
    Config(#[from] crate::format::config::ConfigError),
    /// No slot accepted the passphrase or recovery key.
    #[error("wrong passphrase or recovery key")]
    WrongPassphrase,
    /// Neither the key store nor its backup generation is usable.
    #[error("key store is damaged and no backup generation opens: {0}")]
    KeyStoreCorrupt(String),
    /// A key-store backup file (`keystore restore`) whose key store envelope is damaged: the
    /// volume's own key store is not concerned.
    #[error("key-store backup {} is damaged: {why}", path.display())]
    BackupCorrupt { path: PathBuf, why: String },
    /// The key store opened but the volume config does not match what it was created with.
    #[error(
        "volume config .kmsfs/volume.json was modified (its digest does not match the key store)"
    )]
    ConfigTampered,
    #[error(transparent)]
    Kdf(#[from] KdfError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// A request that is well-formed but refused as it stands (a key-store restore that would
    /// roll the volume back, or a backup of another volume): exit 20, as a refused key-manager
    /// request.
    #[error("{0}")]
    Refused(String),
    /// A key-store backup file of a format version this kmsfs does not read (exit 11).
    #[error("{0}")]
    NewerBackup(String),
}

/// Errors of using keys on the data path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key {0} does not exist in this volume")]
    UnknownKey(KeyId),
    #[error("key {0} is {1:?}")]
    NotUsable(KeyId, KeyState),
    #[error("version {1} of key {0} is not available")]
    VersionUnavailable(KeyId, u32),
    /// Below the key's minimum decryption version (reversible).
    #[error("version {1} of key {0} is retired (below the minimum decryption version {2})")]
    VersionRetired(KeyId, u32, u32),
    #[error("the data key of file {0} failed authentication (header modified or moved)")]
    UnwrapFailed(FileId),
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Wraps `dek` into `h` (file id, key id and version already set) under key-version `material`,
/// bound to the file's encryption context.
pub(crate) fn seal_dek(h: &mut FileHeader, volume: &VolumeId, material: &Key256, dek: &Key256) {
    let sealed = Aead::new(material).seal_random(&h.wrap_aad(volume), dek.expose());
    h.wrapped_dek.copy_from_slice(&sealed);
}

/// The material of the key version a file's header names, if the key may be used now: enabled,
/// at or above its minimum decryption version, material not destroyed.
fn usable_material<'a>(st: &'a KeyStore, h: &FileHeader) -> Result<&'a Key256, KeyError> {
    let key = st.key(&h.key_id).ok_or(KeyError::UnknownKey(h.key_id))?;
    if key.state != KeyState::Enabled {
        return Err(KeyError::NotUsable(h.key_id, key.state));
    }
    if h.key_version < key.min_decryption_version {
        return Err(KeyError::VersionRetired(
            h.key_id,
            h.key_version,
            key.min_decryption_version,
        ));
    }
    key.version(h.key_version)
        .and_then(|v| v.material.as_ref())
        .ok_or(KeyError::VersionUnavailable(h.key_id, h.key_version))
}

/// Whether some key version that has material in `before` has none (or is gone) in `after`.
/// Decided per version, not by counting: a tick that rotates one key (a version more) while it
/// destroys another must still shred.
fn destroys_material(before: &KeyStore, after: &KeyStore) -> bool {
    before.keys.iter().any(|k| {
        k.versions.iter().filter(|v| v.material.is_some()).any(|v| {
            after
                .key(&k.id)
                .and_then(|a| a.version(v.version))
                .is_none_or(|a| a.material.is_none())
        })
    })
}

/// What [`KeyManager::tick`] did: keys rotated (with their new version) and keys destroyed.
pub type TickResult = (Vec<(KeyId, u32)>, Vec<KeyId>);

/// Test-only: seconds added to the wall clock, so tests can pass rotation periods and deletion
/// windows without waiting. Never set it on a real volume.
pub const TEST_TIME_OFFSET_ENV: &str = "KMSFS_TEST_TIME_OFFSET_SECS";

/// How many audit segments one application of the retention settings reads whole to check
/// ahead of a removal, without the log's lock (~60 ms each): about 4 s of one maintenance run
/// at most (the rest, if any, is checked under the lock as before).
const RETENTION_PROOFS_PER_RUN: usize = 64;

/// What a key's effective policy is made from: its stored text, or (none stored) the default
/// policy of the volume's owner.
struct PolicySource {
    text: Option<String>,
    owner_uid: u32,
}

/// The runtime key manager of a mounted (or opened) volume.
pub struct KeyManager {
    state: RwLock<Unlocked>,
    time_offset: u64,
    /// Parsed key policies, by key, with what they were parsed from (a changed policy is parsed
    /// again).
    policies: std::sync::Mutex<
        std::collections::HashMap<KeyId, (PolicySource, std::sync::Arc<policy::Policy>)>,
    >,
    policy_hits: std::sync::atomic::AtomicU64,
    policy_misses: std::sync::atomic::AtomicU64,
    /// Changes persisted since it was opened (see [`KeyManager::generation`]).
    changes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for KeyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyManager")
    }
}

impl KeyManager {
    pub fn new(unlocked: Unlocked) -> Self {
        let time_offset = std::env::var(TEST_TIME_OFFSET_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        KeyManager {
            state: RwLock::new(unlocked),
            time_offset,
            policies: Default::default(),
            policy_hits: Default::default(),
            policy_misses: Default::default(),
            changes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Unlocked> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Unlocked> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Unix seconds (with the test offset).
    pub fn now(&self) -> u64 {
        now_unix() + self.time_offset
    }

    pub fn volume_id(&self) -> VolumeId {
        self.read().store.volume_id
    }

    pub fn volume_secret(&self) -> Key256 {
        self.read().store.volume_secret.clone()
    }

    /// The policy decision for `req` (on `req.key`), with parsed policies cached.
    pub fn authorize(&self, req: &policy::Request) -> policy::Decision {
        self.decide(req, true)
    }

    /// The decision of the key policy alone, without the key's grants (for operations on
    /// grants themselves: a grant does not reach other grants).
    pub fn authorize_by_policy(&self, req: &policy::Request) -> policy::Decision {
        self.decide(req, false)
    }

    fn decide(&self, req: &policy::Request, with_grants: bool) -> policy::Decision {
        let Some(id) = req.key else {
            return policy::Decision::ImplicitDeny;
        };
        let st = self.read();
        let Some(key) = st.store.key(&id) else {
            return policy::Decision::ImplicitDeny;
        };
        // The policy is made from the stored text, or the default policy of the owner (not
        // rendered and parsed again on every open).
        let owner_uid = st.store.owner_uid;
        let parsed = {
            let mut cache = self.policies.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(&id) {
                Some((s, p)) if s.text == key.policy && s.owner_uid == owner_uid => {
                    self.policy_hits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    p.clone()
                }
                _ => {
                    self.policy_misses
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // (A stored policy that no longer parses allows nothing.)
                    let p = std::sync::Arc::new(access::policy_of(&st.store, &id));
                    let source = PolicySource {
                        text: key.policy.clone(),
                        owner_uid,
                    };
                    cache.insert(id, (source, p.clone()));
                    p
                }
            }
        };
        let grants: Vec<policy::Grant> = st
            .store
            .grants
            .iter()
            .filter(|g| with_grants && g.key == id)
            .cloned()
            .collect();
        policy::evaluate(&parsed, &grants, req)
    }

    /// Parsed-policy cache (hits, misses), for metrics.
    pub fn policy_cache_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.policy_hits.load(Relaxed),
            self.policy_misses.load(Relaxed),
        )
    }

    /// Runs a read-only query on the store.
    pub fn query<T>(&self, f: impl FnOnce(&KeyStore) -> T) -> T {
        f(&self.read().store)
    }

    /// Records the audit log's last checkpoint in the key store (at a clean unmount), so that
    /// `audit verify` detects a log that was deleted, or cut before it, since.
    pub fn anchor_audit(&self, log: &audit::AuditLog) -> Result<(), AdminError> {
        let Some(a) = log.anchor() else {
            return Ok(());
        };
        if self.query(|s| s.audit_anchor.as_ref() == Some(&a)) {
            return Ok(());
        }
        self.admin(|s, _| {
            s.audit_anchor = Some(a);
            Ok(())
        })
    }

    /// Ends an audit session: the log's closing checkpoint, then that checkpoint as the anchor
    /// (a clean unmount, an offline session that changed the key store, a restore).
    pub fn close_audit(&self, log: &audit::AuditLog) -> Result<(), AdminError> {
        log.close().map_err(|e| {
            AdminError::Invalid(format!("audit log: closing checkpoint failed: {e}"))
        })?;
        self.anchor_audit(log)
    }

    /// Applies the audit retention settings: removes the segments older than the retention
    /// period and, oldest first, those that take the log over its size limit, which the log
    /// also applies at every segment roll from now on. Returns the removed segment range.
    pub fn expire_audit(&self, log: &audit::AuditLog) -> std::io::Result<Option<(u64, u64)>> {
        let (days, max_bytes) = self.query(|s| (s.audit_retention_days, s.audit_max_bytes));
        log.set_max_bytes(max_bytes);
        let older_than = days.map(|d| {
            let cutoff = self.now().saturating_sub(u64::from(d) * lifecycle::DAY);
            (
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(cutoff),
                d,
            )
        });
        log.warn_if_disk_low();
        if older_than.is_none() && max_bytes.is_none() {
            return Ok(None);
        }
        let rule = audit::Expiry {
            older_than,
            max_bytes,
        };
        // The segments about to be removed are checked first without the log's lock, so that
        // operations do not wait on reading them (see `prove_for_retention`).
        log.prove_for_retention(rule, RETENTION_PROOFS_PER_RUN);
        log.expire(rule)
    }

    /// Applies `f` to a copy of the store and persists it as the next generation. On any error
    /// (from `f` or from the disk) the previous state stays in force, in memory and on disk.
    pub fn admin<T>(
        &self,
        f: impl FnOnce(&mut KeyStore, u64) -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        let now = self.now();
        let mut st = self.write();
        let mut copy = st.store.clone();
        let out = f(&mut copy, now)?;
        // Material that was destroyed must not live on in the backup generation.
        let shredding = destroys_material(&st.store, &copy);
        let old = std::mem::replace(&mut st.store, copy);
        let generation = st.generation();
        let saved = if shredding {
            st.persist_shredding()
        } else {
            st.persist()
        };
        if let Err(e) = saved {
            // The new store stays in memory only if it is the one on disk (a failure after the
            // primary was replaced): memory must never hold less than the disk, or its next
            // write would undo the change (for a shredding: put destroyed material back).
            if st.generation() == generation {
                st.store = old;
            }
            return Err(AdminError::Persist(e.to_string()));
        }
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(out)
    }

    /// A number that moves whenever a change to the store is persisted (keys, aliases, …), so
    /// that views of the store (the control directory's listings) know to refresh.
    pub fn generation(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Time-driven work: automatic rotations and deletions whose window has passed. Persists only
    /// when something changed. Returns (rotated keys with their new version, destroyed keys).
    /// What [`KeyManager::tick`] would do now, without doing it (so that its audit records can
    /// be written first: a key destroyed must not go unrecorded).
    pub fn due(&self) -> TickResult {
        let now = self.now();
        self.query(|s| {
            let mut c = s.clone();
            (
                lifecycle::rotate_due(&mut c, now),
                lifecycle::execute_due_deletions(&mut c, now),
            )
        })
    }

    /// [`KeyManager::tick`] for the keys of `due` (what [`KeyManager::due`] returned and the
    /// audit log recorded) only, those of them still due: a key that became due since waits for
    /// the next call, so nothing is done that was not recorded first.
    pub fn tick_recorded(&self, due: &TickResult) -> Result<TickResult, AdminError> {
        let (rotating, destroying) = due;
        if rotating.is_empty() && destroying.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        self.admin(|s, now| {
            Ok((
                lifecycle::rotate_due_among(s, now, |id| rotating.iter().any(|(k, _)| k == id)),
                lifecycle::execute_due_deletions_among(s, now, |id| destroying.contains(id)),
            ))
        })
    }

    pub fn tick(&self) -> Result<TickResult, AdminError> {
        let now = self.now();
        let due = self.query(|s| {
            s.keys.iter().any(|k| {
                (k.state == KeyState::PendingDeletion && k.deletion_date.is_some_and(|d| d <= now))
                    || k.rotation_due(now)
            })
        });
        if !due {
            return Ok((Vec::new(), Vec::new()));
        }
        self.admin(|s, now| {
            Ok((
                lifecycle::rotate_due(s, now),
                lifecycle::execute_due_deletions(s, now),
            ))
        })
    }

    /// A header for a new file at `path` (absolute inside the mount; the key rules choose the
    /// key, else the default key) under the key's newest version, with header `flags`, and its
    /// fresh DEK.
    pub fn new_file(
        &self,
        path: Option<&str>,
        flags: u16,
    ) -> Result<(FileHeader, Key256), KeyError> {
        let st = self.read();
        let key_id = match path {
            Some(p) => lifecycle::key_for_path(&st.store, p),
            None => st.store.default_key,
        };
        let key = st.store.key(&key_id).ok_or(KeyError::UnknownKey(key_id))?;
        if key.state != KeyState::Enabled {
            return Err(KeyError::NotUsable(key_id, key.state));
        }
        let ver = key
            .newest()
            .ok_or(KeyError::VersionUnavailable(key_id, 0))?;
        let material = ver
            .material
            .as_ref()
            .ok_or(KeyError::VersionUnavailable(key_id, ver.version))?;
        let dek = Key256::generate();
        let mut h = FileHeader {
            file_id: FileId::generate(),
            key_id,
            key_version: ver.version,
            flags,
            wrapped_dek: [0; WRAP_LEN],
        };
        seal_dek(&mut h, &st.store.volume_id, material, &dek);
        Ok((h, dek))
    }

    /// Whether a file's key and version may be used now (state, minimum decryption version,
    /// material present), without unwrapping.
    pub fn check_usable(&self, h: &FileHeader) -> Result<(), KeyError> {
        usable_material(&self.read().store, h).map(|_| ())
    }

    /// Whether the key store has the key and version a file's header names (its material may
    /// be destroyed): a header naming anything else is damaged, or from another volume.
    pub fn has_version(&self, h: &FileHeader) -> bool {
        self.read()
            .store
            .key(&h.key_id)
            .is_some_and(|k| k.version(h.key_version).is_some())
    }

    /// Unwraps a file's DEK, checking key state, the minimum decryption version and the
    /// encryption context.
    pub fn unwrap_dek(&self, h: &FileHeader) -> Result<Key256, KeyError> {
        let st = self.read();
        let material = usable_material(&st.store, h)?;
        let dek = zeroize::Zeroizing::new(
            Aead::new(material)
                .open(&h.wrap_aad(&st.store.volume_id), &h.wrapped_dek)
                .map_err(|_| KeyError::UnwrapFailed(h.file_id))?,
        );
        Key256::from_slice(&dek).ok_or(KeyError::UnwrapFailed(h.file_id))
    }

    /// Writes the store again as a new generation (fsck's repair of a damaged primary: the
    /// intact backup it was opened from stays the backup).
    pub fn rewrite_key_store(&self) -> Result<(), VolumeError> {
        self.write().persist()
    }

    /// Number of KMS keys.
    pub fn key_count(&self) -> usize {
        self.read().store.keys.len()
    }
}

#[cfg(test)]
mod keystore_tests;
#[cfg(test)]
mod tests;
