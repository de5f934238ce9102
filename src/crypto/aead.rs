//! AES-256-GCM-SIV (RFC 8452), the one AEAD of kmsfs. Nonce-misuse resistant, which makes the
//! deterministic name encryption sound and random 96-bit block nonces safe.

use aes_gcm_siv::aead::inout::InOutBuf;
use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce, Tag};

use super::Key256;

/// Nonce length in bytes (RFC 8452 §4: 96-bit nonces).
pub const NONCE_LEN: usize = 12;
/// Authentication tag length in bytes (RFC 8452 §4).
pub const TAG_LEN: usize = 16;

/// Authentication failed: the ciphertext, tag, nonce or associated data were modified, or the key
/// is wrong. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct AuthError;

/// An AEAD instance with its expanded key. The key schedule zeroizes on drop.
pub struct Aead(Aes256GcmSiv);

impl std::fmt::Debug for Aead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Aead(<redacted>)")
    }
}

impl Aead {
    pub fn new(key: &Key256) -> Self {
        Aead(Aes256GcmSiv::new(key.expose().into()))
    }

    /// Encrypts `plain` into `out` (of the same length) and returns the tag: the keystream is
    /// applied from one buffer to the other, so `out` needs no copy of the plaintext first.
    pub fn seal_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
        out: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let buf = InOutBuf::new(plain, out)
            .unwrap_or_else(|_| panic!("seal_into: buffers of different lengths"));
        self.seal_inout(nonce, aad, buf)
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        self.seal_inout(nonce, aad, buf.into())
    }

    fn seal_inout(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: InOutBuf<'_, '_, u8>,
    ) -> [u8; TAG_LEN] {
        let n = Nonce::from(*nonce);
        let tag = self
            .0
            .encrypt_inout_detached(&n, aad, buf)
            // Only fails for messages above RFC 8452's 2^36-byte limit; callers pass at most one
            // block or key store, so this cannot happen.
            .unwrap_or_else(|_| unreachable!("AES-GCM-SIV message length limit exceeded"));
        tag.into()
    }

    /// Decrypts `ct` into `out` (of the same length) after checking `tag`. On failure `out` is
    /// zeroed (the crate's out-of-place failure path would leave the unauthenticated
    /// plaintext there).
    pub fn open_into(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ct: &[u8],
        out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        let buf = InOutBuf::new(ct, out).map_err(|_| AuthError)?;
        let r = self.open_inout(nonce, aad, buf, tag);
        if r.is_err() {
            out.fill(0);
        }
        r
    }

    /// Decrypts `buf` in place after checking `tag`. On failure `buf` is left scrambled and must
    /// not be used.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        self.open_inout(nonce, aad, buf.into(), tag)
    }

    fn open_inout(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: InOutBuf<'_, '_, u8>,
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        let n = Nonce::from(*nonce);
        let t = Tag::from(*tag);
        self.0
            .decrypt_inout_detached(&n, aad, buf, &t)
            .map_err(|_| AuthError)
    }

    /// `nonce ‖ ciphertext ‖ tag` for a fresh random nonce.
    pub fn seal_random(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = super::random_array();
        self.seal_with_nonce(&nonce, aad, plaintext)
    }

    /// `nonce ‖ ciphertext ‖ tag` with the given nonce.
    pub fn seal_with_nonce(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(nonce);
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place(nonce, aad, &mut out[NONCE_LEN..]);
        out.extend_from_slice(&tag);
        out
    }

    /// Opens `nonce ‖ ciphertext ‖ tag`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AuthError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(AuthError);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut buf = ct.to_vec();
        let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| AuthError)?;
        let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| AuthError)?;
        self.open_in_place(nonce, aad, &mut buf, tag)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_flip_every_byte() {
        let a = Aead::new(&Key256::from_bytes([1; 32]));
        let sealed = a.seal_random(b"ad", b"hello world");
        assert_eq!(a.open(b"ad", &sealed).unwrap(), b"hello world");
        for i in 0..sealed.len() {
            let mut s = sealed.clone();
            s[i] ^= 0x01;
            assert_eq!(a.open(b"ad", &s), Err(AuthError), "flip at {i}");
        }
        assert_eq!(a.open(b"ae", &sealed), Err(AuthError));
        assert_eq!(a.open(b"ad", &sealed[..10]), Err(AuthError));
    }

    /// The expanded key inside the AEAD is wiped when it is dropped: aes-gcm-siv's own `zeroize`
    /// feature covers only its temporary buffers; the AES key schedule (whose first two round
    /// keys are the key itself) is wiped by the `aes` crate's `zeroize` feature (Cargo.toml).
    #[test]
    fn out_of_place_matches_in_place_and_a_failure_leaves_no_plaintext() {
        let a = Aead::new(&Key256::from_bytes([2; 32]));
        let nonce = [9u8; NONCE_LEN];
        let plain = b"out of place, same ciphertext".to_vec();
        let mut inplace = plain.clone();
        let tag = a.seal_in_place(&nonce, b"ad", &mut inplace);
        let mut ct = vec![0x55u8; plain.len()];
        assert_eq!(a.seal_into(&nonce, b"ad", &plain, &mut ct), tag);
        assert_eq!(ct, inplace);
        let mut back = vec![0xaau8; plain.len()];
        a.open_into(&nonce, b"ad", &ct, &mut back, &tag).unwrap();
        assert_eq!(back, plain);
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 1;
            let mut out = vec![0xaau8; plain.len()];
            assert_eq!(
                a.open_into(&nonce, b"ad", &bad, &mut out, &tag),
                Err(AuthError)
            );
            assert!(out.iter().all(|&b| b == 0), "flip at {i}: output not wiped");
        }
    }

    #[test]
    fn key_schedules_zeroize() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<aes::Aes256>();
        wiped_on_drop::<aes::Aes256Enc>();
    }

    /// RFC 8452 Appendix C.2, first AES-256-GCM-SIV vector with a non-empty plaintext.
    #[test]
    fn rfc8452_vector() {
        let mut key = [0u8; 32];
        key[0] = 1;
        let mut nonce = [0u8; 12];
        nonce[0] = 3;
        let a = Aead::new(&Key256::from_bytes(key));
        let mut pt = [0u8; 8];
        pt[0] = 1;
        let tag = a.seal_in_place(&nonce, b"", &mut pt);
        assert_eq!(super::super::hex::encode(&pt), "c2ef328e5c71c83b");
        assert_eq!(
            super::super::hex::encode(&tag),
            "843122130f7364b761e0b97427e3df28"
        );
    }
}
