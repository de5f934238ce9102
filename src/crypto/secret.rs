//! Secret types: zeroized on drop, redacted in `Debug`, never `Display`.

use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A 256-bit symmetric key (KMS key version material, DEK, KEK, derived subkey).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key256([u8; 32]);

impl Key256 {
    pub const LEN: usize = 32;

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Key256(bytes)
    }

    /// Copies from a slice; `None` unless it is exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Key256(arr))
    }

    pub fn generate() -> Self {
        Key256(super::random_array())
    }

    /// The raw key bytes. Callers must not copy them into non-zeroizing storage.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key256(<redacted>)")
    }
}

impl serde::Serialize for Key256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let hex = Zeroizing::new(super::hex::encode(&self.0));
        s.serialize_str(&hex)
    }
}

impl<'de> serde::Deserialize<'de> for Key256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        let mut out = [0u8; 32];
        if s.len() != 64 || super::hex::decode_into(&s, &mut out).is_none() {
            out.zeroize();
            return Err(serde::de::Error::custom(
                "key material must be 64 hex digits",
            ));
        }
        Ok(Key256(out))
    }
}

/// A passphrase (or any user-supplied unlock secret) as bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Passphrase(Vec<u8>);

impl Passphrase {
    pub fn new(bytes: Vec<u8>) -> Self {
        Passphrase(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl PartialEq for Passphrase {
    fn eq(&self, other: &Self) -> bool {
        super::ct_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let k = Key256::from_bytes([0xAB; 32]);
        let s = format!("{k:?}");
        assert!(!s.to_lowercase().contains("ab"), "{s}");
        let p = Passphrase::new(b"hunter2".to_vec());
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn serde_round_trip() {
        let k = Key256::generate();
        let j = serde_json::to_string(&k).unwrap();
        let k2: Key256 = serde_json::from_str(&j).unwrap();
        assert_eq!(k.expose(), k2.expose());
        assert!(serde_json::from_str::<Key256>("\"00\"").is_err());
        assert!(serde_json::from_str::<Key256>(&format!("\"{}\"", "zz".repeat(32))).is_err());
    }

    #[test]
    fn zeroize_clears() {
        let mut k = Key256::from_bytes([7; 32]);
        k.zeroize();
        assert_eq!(k.expose(), &[0; 32]);
    }
}
