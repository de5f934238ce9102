//! The volume config (`.kmsfs/volume.json`): readable without the passphrase, authenticated after
//! unlock by its SHA-256 digest stored inside the sealed key store.

use serde::{Deserialize, Serialize};

use super::{FormatError, VolumeId};
use crate::crypto::KdfParams;

pub const CONFIG_FORMAT: &str = "kmsfs";
pub const CONFIG_VERSION: u32 = 1;

/// Feature flags this build understands. A volume naming any other flag is refused.
pub const FEATURE_PLAINTEXT_NAMES: &str = "plaintext-names";
pub const FEATURE_ENCRYPTED_NAMES: &str = "encrypted-names";
pub const FEATURE_LONG_NAMES: &str = "long-name-side-files";
/// New files may hold holes (header flag `FLAG_SPARSE`, docs/FORMAT.md §4a). An older kmsfs
/// would refuse those files one by one; the flag makes it refuse the volume up front.
pub const FEATURE_SPARSE_FILES: &str = "sparse-files";
pub const KNOWN_FEATURES: &[&str] = &[
    FEATURE_PLAINTEXT_NAMES,
    FEATURE_ENCRYPTED_NAMES,
    FEATURE_LONG_NAMES,
    FEATURE_SPARSE_FILES,
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Always "kmsfs".
    pub format: String,
    pub format_version: u32,
    pub volume_id: VolumeId,
    /// Plaintext bytes per content block.
    pub block_size: u32,
    /// Argon2id parameters of the passphrase slot (informational; the slot is authoritative).
    pub kdf: KdfInfo,
    pub features: Vec<String>,
    /// RFC 3339 UTC creation time.
    pub created: String,
    /// The kmsfs version that created the volume.
    pub creator: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfInfo {
    pub algorithm: String,
    #[serde(flatten)]
    pub params: KdfParams,
}

impl VolumeConfig {
    pub fn has_feature(&self, f: &str) -> bool {
        self.features.iter().any(|x| x == f)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self)
            .unwrap_or_else(|_| unreachable!("plain struct serializes"));
        v.push(b'\n');
        v
    }

    /// Parses and checks what can be checked without keys: format, version, feature flags, block
    /// size.
    pub fn decode(b: &[u8]) -> Result<VolumeConfig, ConfigError> {
        let c: VolumeConfig = serde_json::from_slice(b).map_err(|e| {
            ConfigError::Format(FormatError::Invalid {
                what: "volume config",
                detail: e.to_string(),
            })
        })?;
        if c.format != CONFIG_FORMAT {
            return Err(ConfigError::Format(FormatError::BadMagic {
                what: "volume config",
            }));
        }
        if c.format_version != CONFIG_VERSION {
            return Err(ConfigError::UnsupportedVersion(c.format_version));
        }
        if let Some(f) = c
            .features
            .iter()
            .find(|f| !KNOWN_FEATURES.contains(&f.as_str()))
        {
            return Err(ConfigError::UnknownFeature(f.clone()));
        }
        if c.has_feature(FEATURE_PLAINTEXT_NAMES) == c.has_feature(FEATURE_ENCRYPTED_NAMES) {
            return Err(ConfigError::Format(FormatError::Invalid {
                what: "volume config",
                detail:
                    "exactly one of the features plaintext-names and encrypted-names must be set"
                        .into(),
            }));
        }
        if !super::block::valid_block_size(c.block_size) {
            return Err(ConfigError::Format(FormatError::Invalid {
                what: "volume config",
                detail: format!(
                    "block size {} is not a power of two in 512..=1048576",
                    c.block_size
                ),
            }));
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Format(FormatError),
    #[error(
        "volume format version {0} is not supported by this kmsfs (supports {CONFIG_VERSION}); upgrade kmsfs"
    )]
    UnsupportedVersion(u32),
    #[error(
        "volume uses feature flag {0:?}, which this kmsfs does not know (it knows {known}): a \
         newer kmsfs made or upgraded the volume (upgrade kmsfs to open it), or \
         .kmsfs/volume.json was modified",
        known = KNOWN_FEATURES.join(", ")
    )]
    UnknownFeature(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VolumeConfig {
        VolumeConfig {
            format: "kmsfs".into(),
            format_version: 1,
            volume_id: VolumeId([7; 16]),
            block_size: 4096,
            kdf: KdfInfo {
                algorithm: "argon2id".into(),
                params: KdfParams::DEFAULT,
            },
            features: vec![FEATURE_ENCRYPTED_NAMES.into()],
            created: "2026-01-01T00:00:00Z".into(),
            creator: "kmsfs test".into(),
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(VolumeConfig::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn name_mode_must_be_exactly_one() {
        let mut c = sample();
        c.features.push(FEATURE_PLAINTEXT_NAMES.into());
        assert!(matches!(
            VolumeConfig::decode(&c.encode()),
            Err(ConfigError::Format(_))
        ));
        c.features.clear();
        assert!(matches!(
            VolumeConfig::decode(&c.encode()),
            Err(ConfigError::Format(_))
        ));
    }

    #[test]
    fn unknown_feature_refused() {
        let mut c = sample();
        c.features.push("time-travel".into());
        assert_eq!(
            VolumeConfig::decode(&c.encode()),
            Err(ConfigError::UnknownFeature("time-travel".into()))
        );
    }

    #[test]
    fn unknown_field_and_version_refused() {
        let mut c = sample();
        c.format_version = 2;
        assert_eq!(
            VolumeConfig::decode(&c.encode()),
            Err(ConfigError::UnsupportedVersion(2))
        );
        let s = String::from_utf8(sample().encode())
            .unwrap()
            .replacen('{', "{\"extra\":1,", 1);
        assert!(VolumeConfig::decode(s.as_bytes()).is_err());
    }
}
