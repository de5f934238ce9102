//! crypto owns every primitive: the AEAD (AES-256-GCM-SIV), the KDFs (Argon2id, HKDF-SHA256),
//! the RNG and the secret types. It is the only module that imports a cipher crate; callers see
//! [`Aead`], [`Key256`] and a few functions.

mod aead;
pub mod hex;
mod kdf;
mod mac;
mod rng;
mod secret;

pub use aead::{Aead, AuthError, NONCE_LEN, TAG_LEN};
pub use kdf::{KdfError, KdfParams, argon2id, hkdf_subkey, sha256};
pub use mac::{SignKey, hmac_sha256, verify_signature};
pub use rng::{random_array, random_bytes};
pub use secret::{Key256, Passphrase};

/// Constant-time equality for byte strings (MACs, digests, key ids compared against stored ones).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}
