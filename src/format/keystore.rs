//! The sealed key store envelope (`.kmsfs/keystore`).
//!
//! The store's JSON body is encrypted under a random 256-bit *store key*; the store key is
//! wrapped once per unlock *slot* (passphrase, recovery key). Every byte of the file is
//! authenticated: each slot's wrap binds the prefix and the slot's own parameters, and the body's
//! associated data is every byte that precedes the body nonce.
//!
//! ```text
//! off       len  field
//!   0         8  magic "KMSFS-KS"
//!   8         2  envelope version, u16 BE (= 1)
//!  10        16  volume id
//!  26         8  generation, u64 BE (+1 on every write)
//!  34         4  key count, u32 BE (shown by `kmsfs info` without the passphrase)
//!  38         1  slot count n (1..=8)
//!  39   105 × n  slots:
//!                  0   1  kind: 1 = passphrase (Argon2id), 2 = recovery key (HKDF-SHA256)
//!                  1   4  Argon2id memory KiB, u32 BE (0 for kind 2)
//!                  5   4  Argon2id iterations, u32 BE (0 for kind 2)
//!                  9   4  Argon2id parallelism, u32 BE (0 for kind 2)
//!                 13  32  salt
//!                 45  12  wrap nonce
//!                 57  48  wrapped store key (32) ‖ tag (16)
//!   …        12  body nonce
//!   …      m+16  body ciphertext ‖ tag
//! ```
//! Slot wrap AAD: `envelope[0..26] ‖ slot[0..45]` (not the generation, so a slot stays valid
//! across writes and key-manager changes need no passphrase). Body AAD: `envelope[0..39 + 105n]`.

use super::{FormatError, VolumeId};

pub const KS_MAGIC: [u8; 8] = *b"KMSFS-KS";
pub const KS_VERSION: u16 = 1;
pub const KS_PREFIX_LEN: usize = 38;
/// Bytes of the prefix that slot wraps bind (magic, version, volume id).
pub const KS_SLOT_BOUND_LEN: usize = 26;
pub const SLOT_LEN: usize = 105;
pub const SLOT_PARAMS_LEN: usize = 45;
pub const MAX_SLOTS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotKind {
    Passphrase = 1,
    RecoveryKey = 2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub kind: SlotKind,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: [u8; 32],
    /// nonce ‖ wrapped store key ‖ tag
    pub wrapped: [u8; 60],
}

impl Slot {
    pub fn params_bytes(&self) -> [u8; SLOT_PARAMS_LEN] {
        let mut b = [0u8; SLOT_PARAMS_LEN];
        b[0] = self.kind as u8;
        b[1..5].copy_from_slice(&self.memory_kib.to_be_bytes());
        b[5..9].copy_from_slice(&self.iterations.to_be_bytes());
        b[9..13].copy_from_slice(&self.parallelism.to_be_bytes());
        b[13..45].copy_from_slice(&self.salt);
        b
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub volume_id: VolumeId,
    pub generation: u64,
    pub key_count: u32,
    pub slots: Vec<Slot>,
    pub body_nonce: [u8; 12],
    /// ciphertext ‖ tag
    pub body: Vec<u8>,
}

impl Envelope {
    fn prefix(&self) -> [u8; KS_PREFIX_LEN] {
        let mut b = [0u8; KS_PREFIX_LEN];
        b[0..8].copy_from_slice(&KS_MAGIC);
        b[8..10].copy_from_slice(&KS_VERSION.to_be_bytes());
        b[10..26].copy_from_slice(&self.volume_id.0);
        b[26..34].copy_from_slice(&self.generation.to_be_bytes());
        b[34..38].copy_from_slice(&self.key_count.to_be_bytes());
        b
    }

    /// AAD of a slot's store-key wrap.
    pub fn slot_aad(volume_id: &VolumeId, slot: &Slot) -> Vec<u8> {
        let mut a = Vec::with_capacity(KS_SLOT_BOUND_LEN + SLOT_PARAMS_LEN);
        a.extend_from_slice(&KS_MAGIC);
        a.extend_from_slice(&KS_VERSION.to_be_bytes());
        a.extend_from_slice(&volume_id.0);
        a.extend_from_slice(&slot.params_bytes());
        a
    }

    /// Everything before the body nonce: the body's AAD.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut b = self.prefix().to_vec();
        b.push(self.slots.len() as u8);
        for s in &self.slots {
            b.extend_from_slice(&s.params_bytes());
            b.extend_from_slice(&s.wrapped);
        }
        b
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.header_bytes();
        b.extend_from_slice(&self.body_nonce);
        b.extend_from_slice(&self.body);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Envelope, FormatError> {
        const WHAT: &str = "key store";
        let need = KS_PREFIX_LEN + 1;
        if b.len() < need {
            return Err(FormatError::TooShort {
                what: WHAT,
                got: b.len(),
                need,
            });
        }
        if b[0..8] != KS_MAGIC {
            return Err(FormatError::BadMagic { what: WHAT });
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != KS_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: WHAT,
                version: version.into(),
            });
        }
        let mut vid = [0u8; 16];
        vid.copy_from_slice(&b[10..26]);
        let mut gen8 = [0u8; 8];
        gen8.copy_from_slice(&b[26..34]);
        let key_count = u32::from_be_bytes([b[34], b[35], b[36], b[37]]);
        let n = b[KS_PREFIX_LEN] as usize;
        if n == 0 || n > MAX_SLOTS {
            return Err(FormatError::Invalid {
                what: WHAT,
                detail: format!("slot count {n} not in 1..=8"),
            });
        }
        let body_start = KS_PREFIX_LEN + 1 + n * SLOT_LEN;
        let need = body_start + 12 + 16;
        if b.len() < need {
            return Err(FormatError::TooShort {
                what: WHAT,
                got: b.len(),
                need,
            });
        }
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let s = &b[KS_PREFIX_LEN + 1 + i * SLOT_LEN..][..SLOT_LEN];
            let kind = match s[0] {
                1 => SlotKind::Passphrase,
                2 => SlotKind::RecoveryKey,
                k => {
                    return Err(FormatError::Invalid {
                        what: WHAT,
                        detail: format!("unknown slot kind {k}"),
                    });
                }
            };
            let u32_at = |o: usize| u32::from_be_bytes([s[o], s[o + 1], s[o + 2], s[o + 3]]);
            let mut salt = [0u8; 32];
            salt.copy_from_slice(&s[13..45]);
            let mut wrapped = [0u8; 60];
            wrapped.copy_from_slice(&s[45..105]);
            slots.push(Slot {
                kind,
                memory_kib: u32_at(1),
                iterations: u32_at(5),
                parallelism: u32_at(9),
                salt,
                wrapped,
            });
        }
        let mut body_nonce = [0u8; 12];
        body_nonce.copy_from_slice(&b[body_start..body_start + 12]);
        Ok(Envelope {
            volume_id: VolumeId(vid),
            generation: u64::from_be_bytes(gen8),
            key_count,
            slots,
            body_nonce,
            body: b[body_start + 12..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = Envelope {
            volume_id: VolumeId([5; 16]),
            generation: 42,
            key_count: 1,
            slots: vec![Slot {
                kind: SlotKind::Passphrase,
                memory_kib: 65536,
                iterations: 3,
                parallelism: 1,
                salt: [1; 32],
                wrapped: [2; 60],
            }],
            body_nonce: [3; 12],
            body: vec![4; 100],
        };
        let enc = e.encode();
        assert_eq!(enc.len(), 39 + 105 + 12 + 100);
        assert_eq!(Envelope::decode(&enc).unwrap(), e);
        let mut bad = enc.clone();
        bad[38] = 9;
        assert!(Envelope::decode(&bad).is_err());
        let mut bad = enc.clone();
        bad[39] = 7;
        assert!(Envelope::decode(&bad).is_err());
        assert!(Envelope::decode(&enc[..150]).is_err());
    }
}
