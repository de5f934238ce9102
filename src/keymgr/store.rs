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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyVersion {
    pub version: u32,
    pub created: u64,
    /// `None` once the version was destroyed (trim, crypto-shredding).
    pub material: Option<Key256>,
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
            }],
            tags: BTreeMap::new(),
        }
    }

    pub fn newest(&self) -> Option<&KeyVersion> {
        self.versions.iter().max_by_key(|v| v.version)
    }

    pub fn version(&self, v: u32) -> Option<&KeyVersion> {
        self.versions.iter().find(|x| x.version == v)
    }
}

impl KeyStore {
    pub fn key(&self, id: &KeyId) -> Option<&KmsKey> {
        self.keys.iter().find(|k| &k.id == id)
    }
}
