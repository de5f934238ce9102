//! The per-file header: the first [`HEADER_LEN`] bytes of every regular cipher file.
//!
//! ```text
//! off len field
//!   0   4 magic "KMSF"
//!   4   2 format version, u16 BE (= 1)
//!   6   2 flags, u16 BE (0, or FLAG_SPARSE; any other bit is refused)
//!   8  16 file id (random)
//!  24  16 KMS key id
//!  40   4 KMS key version, u32 BE
//!  44  12 wrap nonce
//!  56  32 wrapped DEK (AES-256-GCM-SIV ciphertext)
//!  88  16 wrap tag
//! 104     end
//! ```
//! The wrap's associated data is `header[0..8] ‖ EncryptionContext::for_file(..).encode()`.

use super::context::EncryptionContext;
use super::{FileId, FormatError, KeyId, VolumeId};

pub const HEADER_MAGIC: [u8; 4] = *b"KMSF";
pub const HEADER_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 104;
/// Offset of the wrapped DEK (nonce ‖ ciphertext ‖ tag) inside the header.
pub const WRAP_OFFSET: usize = 44;
pub const WRAP_LEN: usize = 12 + 32 + 16;
/// Header flag: the file may hold *holes*, blocks never written (all zeros on disk, so the
/// backing file system can leave them unallocated). Every block nonce of such a file starts
/// with the number of holes right before the block (`content::block_gap`), which is what
/// authenticates them; see docs/FORMAT.md §4a.
pub const FLAG_SPARSE: u16 = 0x0001;
/// The flags this build understands.
pub const KNOWN_FLAGS: u16 = FLAG_SPARSE;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    pub file_id: FileId,
    pub key_id: KeyId,
    pub key_version: u32,
    /// 0 or [`FLAG_SPARSE`]; authenticated (part of the wrap's associated data).
    pub flags: u16,
    /// nonce ‖ wrapped DEK ‖ tag
    pub wrapped_dek: [u8; WRAP_LEN],
}

impl FileHeader {
    /// The bytes the DEK wrap authenticates, besides the DEK itself.
    pub fn wrap_aad(&self, volume: &VolumeId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(128);
        aad.extend_from_slice(&HEADER_MAGIC);
        aad.extend_from_slice(&HEADER_VERSION.to_be_bytes());
        aad.extend_from_slice(&self.flags.to_be_bytes());
        aad.extend_from_slice(
            &EncryptionContext::for_file(volume, &self.file_id, &self.key_id, self.key_version)
                .encode(),
        );
        aad
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&HEADER_MAGIC);
        b[4..6].copy_from_slice(&HEADER_VERSION.to_be_bytes());
        b[6..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..24].copy_from_slice(&self.file_id.0);
        b[24..40].copy_from_slice(&self.key_id.0);
        b[40..44].copy_from_slice(&self.key_version.to_be_bytes());
        b[WRAP_OFFSET..].copy_from_slice(&self.wrapped_dek);
        b
    }

    pub fn decode(b: &[u8]) -> Result<FileHeader, FormatError> {
        const WHAT: &str = "file header";
        if b.len() < HEADER_LEN {
            return Err(FormatError::TooShort {
                what: WHAT,
                got: b.len(),
                need: HEADER_LEN,
            });
        }
        if b[0..4] != HEADER_MAGIC {
            return Err(FormatError::BadMagic { what: WHAT });
        }
        let version = u16::from_be_bytes([b[4], b[5]]);
        if version != HEADER_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: WHAT,
                version: version.into(),
            });
        }
        let flags = u16::from_be_bytes([b[6], b[7]]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FormatError::Invalid {
                what: WHAT,
                detail: format!("unknown flags {flags:#06x}"),
            });
        }
        let arr16 = |r: std::ops::Range<usize>| -> [u8; 16] {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[r]);
            a
        };
        let mut wrapped_dek = [0u8; WRAP_LEN];
        wrapped_dek.copy_from_slice(&b[WRAP_OFFSET..HEADER_LEN]);
        Ok(FileHeader {
            file_id: FileId(arr16(8..24)),
            key_id: KeyId(arr16(24..40)),
            key_version: u32::from_be_bytes([b[40], b[41], b[42], b[43]]),
            flags,
            wrapped_dek,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FileHeader {
        FileHeader {
            file_id: FileId([1; 16]),
            key_id: KeyId([2; 16]),
            key_version: 7,
            flags: 0,
            wrapped_dek: [3; WRAP_LEN],
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(FileHeader::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn the_sparse_flag_round_trips_and_is_in_the_wrap_aad() {
        let mut h = sample();
        h.flags = FLAG_SPARSE;
        let b = h.encode();
        assert_eq!(b[6..8], [0, 1]);
        assert_eq!(FileHeader::decode(&b).unwrap(), h);
        let v = VolumeId([9; 16]);
        assert_ne!(h.wrap_aad(&v), sample().wrap_aad(&v));
    }

    #[test]
    fn rejects_bad_magic_version_flags_and_short() {
        let b = sample().encode();
        let mut x = b;
        x[0] ^= 1;
        assert!(matches!(
            FileHeader::decode(&x),
            Err(FormatError::BadMagic { .. })
        ));
        let mut x = b;
        x[5] = 2;
        assert!(matches!(
            FileHeader::decode(&x),
            Err(FormatError::UnsupportedVersion { .. })
        ));
        let mut x = b;
        x[7] = 2;
        assert!(matches!(
            FileHeader::decode(&x),
            Err(FormatError::Invalid { .. })
        ));
        assert!(matches!(
            FileHeader::decode(&b[..50]),
            Err(FormatError::TooShort { .. })
        ));
    }
}
