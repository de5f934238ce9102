//! HMAC-SHA256 (keyed hash chains) and Ed25519 (signed checkpoints).

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::Key256;

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac_sha256(key: &Key256, parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// An Ed25519 signing key derived from a 256-bit seed; zeroized on drop.
pub struct SignKey(SigningKey);

impl std::fmt::Debug for SignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignKey(<redacted>)")
    }
}

impl SignKey {
    pub fn from_seed(seed: &Key256) -> Self {
        SignKey(SigningKey::from_bytes(seed.expose()))
    }
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }
}

/// Verifies an Ed25519 signature by public key bytes.
pub fn verify_signature(public: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(public) else {
        return false;
    };
    vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_flip() {
        let k = SignKey::from_seed(&Key256::from_bytes([5; 32]));
        let s = k.sign(b"checkpoint");
        assert!(verify_signature(&k.public(), b"checkpoint", &s));
        assert!(!verify_signature(&k.public(), b"checkpoinT", &s));
        let mut s2 = s;
        s2[10] ^= 1;
        assert!(!verify_signature(&k.public(), b"checkpoint", &s2));
        let m1 = hmac_sha256(&Key256::from_bytes([1; 32]), &[b"a", b"b"]);
        assert_eq!(m1, hmac_sha256(&Key256::from_bytes([1; 32]), &[b"ab"]));
        assert_ne!(m1, hmac_sha256(&Key256::from_bytes([2; 32]), &[b"ab"]));
    }
}
