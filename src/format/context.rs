//! The encryption context: the non-secret facts a wrapped DEK is bound to (AWS KMS's
//! "encryption context"). Canonical, length-prefixed encoding, so that no two different contexts
//! encode to the same bytes:
//!
//! ```text
//! u16 BE  pair count
//! per pair, sorted by key (bytewise):
//!   u16 BE  key length   ‖ key bytes (UTF-8)
//!   u32 BE  value length ‖ value bytes
//! ```

use std::collections::BTreeMap;

use super::{FileId, KeyId, VolumeId};

/// Key names of the pairs kmsfs puts into every DEK's context.
pub const CTX_VOLUME_ID: &str = "kmsfs:volume-id";
pub const CTX_FILE_ID: &str = "kmsfs:file-id";
pub const CTX_KEY_ID: &str = "kmsfs:key-id";
pub const CTX_KEY_VERSION: &str = "kmsfs:key-version";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptionContext(BTreeMap<String, Vec<u8>>);

impl EncryptionContext {
    /// The context of a file's DEK.
    pub fn for_file(volume: &VolumeId, file: &FileId, key: &KeyId, key_version: u32) -> Self {
        let mut m = BTreeMap::new();
        m.insert(CTX_VOLUME_ID.to_string(), volume.0.to_vec());
        m.insert(CTX_FILE_ID.to_string(), file.0.to_vec());
        m.insert(CTX_KEY_ID.to_string(), key.0.to_vec());
        m.insert(
            CTX_KEY_VERSION.to_string(),
            key_version.to_be_bytes().to_vec(),
        );
        EncryptionContext(m)
    }

    pub fn pairs(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.0
    }

    /// The pairs as strings for policy conditions (`kms:EncryptionContext:kmsfs:file-id`): ids
    /// in their usual text form, the key version as a decimal number.
    pub fn display_pairs(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| {
                let s = match (k.as_str(), v.len()) {
                    (CTX_KEY_VERSION, 4) => {
                        u32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()
                    }
                    (CTX_KEY_ID, 16) => {
                        KeyId(v.as_slice().try_into().unwrap_or([0; 16])).to_string()
                    }
                    _ => crate::crypto::hex::encode(v),
                };
                (k.clone(), s)
            })
            .collect()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.0.len() * 40);
        out.extend_from_slice(&(self.0.len() as u16).to_be_bytes());
        for (k, v) in &self.0 {
            out.extend_from_slice(&(k.len() as u16).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_canonical_and_injective() {
        let a =
            EncryptionContext::for_file(&VolumeId([1; 16]), &FileId([2; 16]), &KeyId([3; 16]), 1);
        let b =
            EncryptionContext::for_file(&VolumeId([1; 16]), &FileId([2; 16]), &KeyId([3; 16]), 2);
        assert_ne!(a.encode(), b.encode());
        assert_eq!(a.encode(), a.clone().encode());
        // Length prefixes stop ("ab","c") and ("a","bc") from colliding.
        let mut x = EncryptionContext::default();
        x.0.insert("ab".into(), b"c".to_vec());
        let mut y = EncryptionContext::default();
        y.0.insert("a".into(), b"bc".to_vec());
        assert_ne!(x.encode(), y.encode());
    }
}
