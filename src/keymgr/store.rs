//! The key store's plaintext body: keys, versions and volume secrets. Serialized as JSON inside
//! the sealed envelope; every field added later carries `#[serde(default)]` so old stores keep
//! opening (a change older builds must not silently drop is introduced with a feature flag).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::crypto::Key256;
use crate::format::{KeyId, VolumeId};

pub const STORE_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyStore {
    pub format: u32,
    pub volume_id: VolumeId,
    /// Hex SHA-256 of `volume.json` as written at init: detects a modified config.
    pub config_digest: String,
    /// Root of the volume-wide purpose keys (names, symlinks, xattrs, audit), via HKDF.
    pub volume_secret: Key256,
    /// The key new files use when no rule matches.
    pub default_key: KeyId,
    pub keys: Vec<KmsKey>,
    /// `alias/NAME` → key id.
    #[serde(default)]
    pub aliases: BTreeMap<String, KeyId>,
    /// Key rules: the key for a new file is the one of the longest matching path prefix.
    #[serde(default)]
    pub rules: Vec<KeyRule>,
    /// The uid that created the volume: full control under the default key policy.
    #[serde(default)]
    pub owner_uid: u32,
    /// Grants on keys (temporary, narrow permissions).
    #[serde(default)]
    pub grants: Vec<super::policy::Grant>,
    /// Anomaly alert thresholds.
    #[serde(default)]
    pub alerts: AlertSettings,
    /// Audit segments whose newest entry is older than this many days are removed (none: kept
    /// for ever).
    #[serde(default)]
    pub audit_retention_days: Option<u32>,
    /// The audit log's size limit in bytes: the oldest segments are removed beyond it (none: no
    /// limit). Left out of the stored JSON when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_max_bytes: Option<u64>,
    /// The audit log's last checkpoint at the last clean unmount: a log that does not reach it was
    /// deleted, truncated or replaced.
    #[serde(default)]
    pub audit_anchor: Option<AuditAnchor>,
}

/// A checkpoint of the audit log, recorded in the (authenticated) key store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnchor {
    /// Sequence number of the checkpoint entry.
    pub seq: u64,
    /// Its hex signature.
    pub signature: String,
}

/// Per-user, per-minute thresholds: reaching one writes an `AnomalyAlert` audit record (once per
/// user and minute). `None`: no alert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    #[serde(default)]
    pub denials_per_minute: Option<u32>,
    #[serde(default)]
    pub decrypts_per_minute: Option<u32>,
}

/// `/finance` → key: new files under `/finance` are encrypted under that key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRule {
    /// Absolute path prefix inside the mount, matched at path-component boundaries.
    pub prefix: String,
    pub key: KeyId,
}

/// Automatic rotation of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationSettings {
    pub enabled: bool,
    pub period_days: u32,
}

impl Default for RotationSettings {
    fn default() -> Self {
        RotationSettings {
            enabled: false,
            period_days: 365,
        }
    }
}

/// How a key version came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VersionOrigin {
    /// The first version, made with the key.
    #[default]
    Created,
    /// `rotate` (on demand).
    OnDemandRotation,
    /// The rotation period elapsed.
    AutomaticRotation,
    /// External material imported (BYOK).
    Imported,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
    Destroyed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KmsKey {
    pub id: KeyId,
    #[serde(default)]
    pub description: String,
    /// Unix seconds.
    pub created: u64,
    pub state: KeyState,
    pub versions: Vec<KeyVersion>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Unix seconds at which a key pending deletion is destroyed.
    #[serde(default)]
    pub deletion_date: Option<u64>,
    #[serde(default)]
    pub rotation: RotationSettings,
    /// Unix seconds of the last rotation of any kind (on demand, automatic, import) or creation.
    #[serde(default)]
    pub last_rotation: u64,
    /// Unix seconds of the last automatic rotation (or creation): the automatic period counts
    /// from here, so an on-demand rotation or an import does not move the schedule (as in AWS
    /// KMS). Absent in key stores from before 2026-12-06: `last_rotation` stands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_automatic_rotation: Option<u64>,
    /// Versions below this fail to decrypt (reversible). 0 or 1: all versions usable.
    #[serde(default)]
    pub min_decryption_version: u32,
    /// The key policy (JSON). `None`: the default policy (the volume owner has full control).
    #[serde(default)]
    pub policy: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyVersion {
    pub version: u32,
    pub created: u64,
    /// `None` once the version was destroyed (trim, crypto-shredding).
    pub material: Option<Key256>,
    #[serde(default)]
    pub origin: VersionOrigin,
    /// Unix seconds when the material was destroyed.
    #[serde(default)]
    pub destroyed: Option<u64>,
}

impl KmsKey {
    pub fn new(description: &str, now: u64) -> Self {
        KmsKey {
            id: KeyId::generate(),
            description: description.to_string(),
            created: now,
            state: KeyState::Enabled,
            versions: vec![KeyVersion {
                version: 1,
                created: now,
                material: Some(Key256::generate()),
                origin: VersionOrigin::Created,
                destroyed: None,
            }],
            tags: BTreeMap::new(),
            deletion_date: None,
            rotation: RotationSettings::default(),
            last_rotation: now,
            last_automatic_rotation: Some(now),
            min_decryption_version: 0,
            policy: None,
        }
    }

    /// When automatic rotation is next due (whether or not it is enabled).
    pub fn next_automatic_rotation(&self) -> u64 {
        self.last_automatic_rotation
            .unwrap_or(self.last_rotation)
            .saturating_add(u64::from(self.rotation.period_days) * super::lifecycle::DAY)
    }

    /// Whether the current material was imported (BYOK): kmsfs does not rotate it, automatically
    /// or on demand (as AWS KMS does not), since new files would then be wrapped under material
    /// the owner never had.
    pub fn has_imported_material(&self) -> bool {
        self.newest()
            .is_some_and(|v| v.origin == VersionOrigin::Imported)
    }

    /// Whether automatic rotation is due at `now`.
    pub fn rotation_due(&self, now: u64) -> bool {
        self.rotation.enabled
            && self.state == KeyState::Enabled
            && !self.has_imported_material()
            && now >= self.next_automatic_rotation()
    }

    pub fn newest(&self) -> Option<&KeyVersion> {
        self.versions.iter().max_by_key(|v| v.version)
    }

    pub fn version(&self, v: u32) -> Option<&KeyVersion> {
        self.versions.iter().find(|x| x.version == v)
    }
}

impl KeyStore {
    /// What kmsfs itself always keeps true; an authenticated body that breaks it (sealed by a
    /// holder of the passphrase with another tool) is refused rather than half-used (found by
    /// fuzzing: two versions with one number made new files unreadable).
    pub fn check_consistent(&self) -> Result<(), String> {
        let mut ids = std::collections::HashSet::new();
        for k in &self.keys {
            if !ids.insert(k.id) {
                return Err(format!("key {} appears twice", k.id));
            }
            let mut prev = 0;
            for v in &k.versions {
                if v.version <= prev {
                    return Err(format!(
                        "key {}: version numbers are not increasing ({} after {prev})",
                        k.id, v.version
                    ));
                }
                prev = v.version;
            }
        }
        if self.key(&self.default_key).is_none() {
            return Err("the default key does not exist".into());
        }
        if let Some((a, _)) = self.aliases.iter().find(|(_, id)| self.key(id).is_none()) {
            return Err(format!("alias {a} names a key that does not exist"));
        }
        if let Some(r) = self.rules.iter().find(|r| self.key(&r.key).is_none()) {
            return Err(format!(
                "the rule for {} names a key that does not exist",
                r.prefix
            ));
        }
        Ok(())
    }

    pub fn key(&self, id: &KeyId) -> Option<&KmsKey> {
        self.keys.iter().find(|k| &k.id == id)
    }

    pub fn key_mut(&mut self, id: &KeyId) -> Option<&mut KmsKey> {
        self.keys.iter_mut().find(|k| &k.id == id)
    }

    /// Aliases pointing at `id`, sorted.
    pub fn aliases_of(&self, id: &KeyId) -> Vec<String> {
        self.aliases
            .iter()
            .filter(|(_, k)| *k == id)
            .map(|(a, _)| a.clone())
            .collect()
    }
}
