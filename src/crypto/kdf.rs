//! Key derivation: Argon2id for passphrases (memory-hard), HKDF-SHA256 for purpose-separated
//! subkeys, SHA-256 for digests.

use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Key256, Passphrase};

/// Argon2id cost parameters, stored with the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// The default: 64 MiB, 3 passes, 1 lane (OWASP's minimum for Argon2id is 19 MiB / 2 passes;
    /// this is deliberately above it).
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };
    /// INSECURE, for tests only: 64 KiB, 1 pass. Enabled by `KMSFS_INSECURE_FAST_KDF=1`.
    pub const FAST_INSECURE: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    /// Upper bounds accepted from disk, so a hostile volume config cannot make us allocate 4 TiB.
    pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
    pub const MAX_ITERATIONS: u32 = 64;
    pub const MAX_PARALLELISM: u32 = 16;

    pub fn validate(&self) -> Result<(), KdfError> {
        if self.memory_kib < 8 * self.parallelism.max(1)
            || self.memory_kib > Self::MAX_MEMORY_KIB
            || self.iterations == 0
            || self.iterations > Self::MAX_ITERATIONS
            || self.parallelism == 0
            || self.parallelism > Self::MAX_PARALLELISM
        {
            return Err(KdfError::BadParams(*self));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KdfError {
    #[error(
        "Argon2id parameters out of range: memory {} KiB, {} iterations, parallelism {}",
        .0.memory_kib, .0.iterations, .0.parallelism
    )]
    BadParams(KdfParams),
}

/// Derives a 256-bit key from a passphrase with Argon2id (RFC 9106).
pub fn argon2id(
    pass: &Passphrase,
    salt: &[u8; 32],
    params: &KdfParams,
) -> Result<Key256, KdfError> {
    params.validate()?;
    let p = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(32),
    )
    .map_err(|_| KdfError::BadParams(*params))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    a.hash_password_into(pass.expose(), salt, out.as_mut())
        .map_err(|_| KdfError::BadParams(*params))?;
    Ok(Key256::from_bytes(*out))
}

/// HKDF-SHA256(ikm = `key`, salt, info = `purpose`) → 256-bit subkey. Every purpose string is a
/// constant in the module that uses it, so one key never serves two purposes.
pub fn hkdf_subkey(key: &Key256, salt: &[u8], purpose: &str) -> Key256 {
    let hk = Hkdf::<Sha256>::new(Some(salt), key.expose());
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    hk.expand(purpose.as_bytes(), out.as_mut())
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
    Key256::from_bytes(*out)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_is_deterministic_and_salted() {
        let p = Passphrase::new(b"pw".to_vec());
        let k1 = argon2id(&p, &[1; 32], &KdfParams::FAST_INSECURE).unwrap();
        let k2 = argon2id(&p, &[1; 32], &KdfParams::FAST_INSECURE).unwrap();
        let k3 = argon2id(&p, &[2; 32], &KdfParams::FAST_INSECURE).unwrap();
        assert_eq!(k1.expose(), k2.expose());
        assert_ne!(k1.expose(), k3.expose());
    }

    #[test]
    fn rejects_absurd_params() {
        let p = Passphrase::new(b"pw".to_vec());
        let bad = KdfParams {
            memory_kib: u32::MAX,
            iterations: 1,
            parallelism: 1,
        };
        assert!(argon2id(&p, &[0; 32], &bad).is_err());
        let bad = KdfParams {
            memory_kib: 64,
            iterations: 0,
            parallelism: 1,
        };
        assert!(argon2id(&p, &[0; 32], &bad).is_err());
    }

    #[test]
    fn hkdf_separates_purposes() {
        let k = Key256::from_bytes([9; 32]);
        assert_ne!(
            hkdf_subkey(&k, b"", "a").expose(),
            hkdf_subkey(&k, b"", "b").expose()
        );
    }
}
