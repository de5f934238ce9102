//! The content block: `nonce (12) ‖ ciphertext (n) ‖ tag (16)` where n is the block's plaintext
//! length (the block size for every block but the final one).
//!
//! Associated data of block `i` of a file (25 bytes):
//! ```text
//!  0  16 file id
//! 16   8 block number, u64 BE
//! 24   1 flags: bit 0 = final block (the block that holds the end of the file)
//! ```
//! Every file has exactly one final block, possibly empty: block `size / block_size`. So a file
//! cut at a block boundary loses its final block and fails authentication.

use super::FileId;

pub const BLOCK_NONCE_LEN: usize = 12;
pub const BLOCK_TAG_LEN: usize = 16;
/// Bytes a block costs on disk beyond its plaintext.
pub const BLOCK_OVERHEAD: usize = BLOCK_NONCE_LEN + BLOCK_TAG_LEN;
pub const BLOCK_AAD_LEN: usize = 25;
pub const FLAG_FINAL: u8 = 1;

/// The default plaintext block size.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Block sizes accepted at init: powers of two in this range.
pub const MIN_BLOCK_SIZE: u32 = 512;
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;

pub fn block_aad(file: &FileId, block_no: u64, is_final: bool) -> [u8; BLOCK_AAD_LEN] {
    let mut a = [0u8; BLOCK_AAD_LEN];
    a[0..16].copy_from_slice(&file.0);
    a[16..24].copy_from_slice(&block_no.to_be_bytes());
    a[24] = if is_final { FLAG_FINAL } else { 0 };
    a
}

/// The interrupted-write marker's tag (`content::pending`, FORMAT §1): AES-256-GCM-SIV under
/// the file's DEK with this fixed nonce, no plaintext, and [`marker_aad`] as associated data.
/// Block nonces are random (2⁻⁶⁴ to meet it in a sparse file), and the associated data of a
/// block is 25 bytes, that of a marker 73: the two never share an input.
pub const MARKER_NONCE: &[u8; BLOCK_NONCE_LEN] = b"kmsfs-marker";
const MARKER_DOMAIN: &[u8; 33] = b"kmsfs interrupted-write marker v1";
/// The marker's fields: first block, target cipher length, holes before the first block.
pub const MARKER_FIELDS_LEN: usize = 24;
pub const MARKER_AAD_LEN: usize = MARKER_DOMAIN.len() + 16 + MARKER_FIELDS_LEN;

pub fn marker_aad(file: &FileId, fields: &[u8; MARKER_FIELDS_LEN]) -> [u8; MARKER_AAD_LEN] {
    let mut a = [0u8; MARKER_AAD_LEN];
    let d = MARKER_DOMAIN.len();
    a[..d].copy_from_slice(MARKER_DOMAIN);
    a[d..d + 16].copy_from_slice(&file.0);
    a[d + 16..].copy_from_slice(fields);
    a
}

pub fn valid_block_size(bs: u32) -> bool {
    bs.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs)
}
