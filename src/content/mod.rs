//! content encrypts and decrypts a file's blocks under its DEK. It knows the block layout and the
//! block's associated data (file id, block number, final flag) but nothing of files or disks.

pub mod pending;

use crate::crypto::{Aead, Key256, random_bytes};
use crate::format::FileId;
use crate::format::block::{
    BLOCK_NONCE_LEN, BLOCK_OVERHEAD, BLOCK_TAG_LEN, MARKER_FIELDS_LEN, MARKER_NONCE, block_aad,
    marker_aad,
};

/// A block failed authentication (modified, moved, swapped, zeroed, truncated) or is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("block {block} failed authentication")]
pub struct BlockError {
    pub block: u64,
}

/// Encrypts/decrypts the blocks of one file. Holds the expanded DEK; zeroized on drop.
#[derive(Debug)]
pub struct FileCipher {
    aead: Aead,
    file_id: FileId,
    block_size: usize,
    sparse: bool,
}

/// Whether a stored block of a *sparse* file (header flag `FLAG_SPARSE`) is a hole candidate:
/// its nonce is all zeros, which no written block of such a file has. A candidate is a hole only
/// when the next written block's gap reaches back over it (see [`block_gap`]).
pub fn is_hole(block: &[u8]) -> bool {
    block.len() >= BLOCK_NONCE_LEN && block[..BLOCK_NONCE_LEN].iter().all(|&b| b == 0)
}

/// The number of holes right before a written block of a sparse file: the first four bytes of
/// its nonce, so authenticated with the block (the nonce is an input of the AEAD).
pub fn block_gap(block: &[u8]) -> u32 {
    match block.get(..4) {
        Some(g) => u32::from_be_bytes([g[0], g[1], g[2], g[3]]),
        None => 0,
    }
}

impl FileCipher {
    pub fn new(dek: &Key256, file_id: FileId, block_size: u32) -> Self {
        FileCipher {
            aead: Aead::new(dek),
            file_id,
            block_size: block_size as usize,
            sparse: false,
        }
    }

    /// The cipher of the file whose header is `header` and whose data key is `dek`.
    pub fn for_header(
        dek: &Key256,
        header: &crate::format::header::FileHeader,
        block_size: u32,
    ) -> Self {
        Self::new(dek, header.file_id, block_size)
            .with_sparse(header.flags & crate::format::header::FLAG_SPARSE != 0)
    }

    /// The cipher of a file with the header flag `FLAG_SPARSE`: every nonce it makes is
    /// `gap (u32 BE) ‖ 8 random bytes, not all zero`.
    pub fn with_sparse(mut self, sparse: bool) -> Self {
        self.sparse = sparse;
        self
    }

    pub fn is_sparse(&self) -> bool {
        self.sparse
    }

    pub fn file_id(&self) -> &FileId {
        &self.file_id
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Encrypts one block. `out` must be `plain.len() + BLOCK_OVERHEAD` bytes.
    pub fn encrypt_block(
        &self,
        block_no: u64,
        is_final: bool,
        nonce: &[u8; BLOCK_NONCE_LEN],
        plain: &[u8],
        out: &mut [u8],
    ) {
        debug_assert!(plain.len() <= self.block_size);
        debug_assert_eq!(out.len(), plain.len() + BLOCK_OVERHEAD);
        let (n, rest) = out.split_at_mut(BLOCK_NONCE_LEN);
        n.copy_from_slice(nonce);
        let (ct, tag) = rest.split_at_mut(plain.len());
        // Straight from the plaintext into place: no copy of it first.
        let t = self.aead.seal_into(
            nonce,
            &block_aad(&self.file_id, block_no, is_final),
            plain,
            ct,
        );
        tag.copy_from_slice(&t);
    }

    /// Decrypts one block (`nonce ‖ ct ‖ tag`) into `out` (`cipher.len() - BLOCK_OVERHEAD`
    /// bytes). When the block fails authentication `out` is zeroed; when its length is wrong,
    /// `out` is left as it was.
    pub fn decrypt_block(
        &self,
        block_no: u64,
        is_final: bool,
        cipher: &[u8],
        out: &mut [u8],
    ) -> Result<(), BlockError> {
        let err = BlockError { block: block_no };
        if cipher.len() < BLOCK_OVERHEAD || cipher.len() - BLOCK_OVERHEAD > self.block_size {
            return Err(err);
        }
        let n = cipher.len() - BLOCK_OVERHEAD;
        if out.len() != n {
            return Err(err);
        }
        let nonce: &[u8; BLOCK_NONCE_LEN] =
            cipher[..BLOCK_NONCE_LEN].try_into().map_err(|_| err)?;
        let tag: &[u8; BLOCK_TAG_LEN] =
            cipher[BLOCK_NONCE_LEN + n..].try_into().map_err(|_| err)?;
        // Straight from the ciphertext into place: no copy of it first.
        self.aead
            .open_into(
                nonce,
                &block_aad(&self.file_id, block_no, is_final),
                &cipher[BLOCK_NONCE_LEN..BLOCK_NONCE_LEN + n],
                out,
                tag,
            )
            .map_err(|_| err)
    }

    /// The tag of an interrupted-write marker's fields (see `pending`): only a holder of the
    /// file's DEK can make a marker that recovery will act on.
    pub fn marker_tag(&self, fields: &[u8; MARKER_FIELDS_LEN]) -> [u8; BLOCK_TAG_LEN] {
        self.aead
            .seal_in_place(MARKER_NONCE, &marker_aad(&self.file_id, fields), &mut [])
    }

    /// Whether `tag` is the tag of `fields` (compared in constant time by the AEAD).
    pub fn marker_authentic(&self, fields: &[u8; MARKER_FIELDS_LEN], tag: &[u8]) -> bool {
        let Ok(tag) = <&[u8; BLOCK_TAG_LEN]>::try_from(tag) else {
            return false;
        };
        self.aead
            .open_in_place(
                MARKER_NONCE,
                &marker_aad(&self.file_id, fields),
                &mut [],
                tag,
            )
            .is_ok()
    }

    /// The length of the ciphertext of `plain_len` bytes of consecutive blocks (block-aligned:
    /// every block but the last is full; no bytes is one empty block).
    pub fn cipher_len(&self, plain_len: usize) -> usize {
        plain_len + plain_len.div_ceil(self.block_size).max(1) * BLOCK_OVERHEAD
    }

    /// Encrypts consecutive blocks `first..` of plaintext `plain` (block-aligned: every block but
    /// the last is full) into `out`, which is resized to the exact cipher length. `final_block`
    /// is the index of the file's final block after the write. In a sparse file `gap` is the
    /// number of holes right before block `first` (the blocks after it follow written ones);
    /// otherwise it must be 0. One RNG call for all nonces.
    pub fn encrypt_blocks(
        &self,
        first: u64,
        plain: &[u8],
        final_block: u64,
        gap: u32,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.resize(self.cipher_len(plain.len()), 0);
        self.encrypt_blocks_into(first, plain, final_block, gap, out);
    }

    /// As [`FileCipher::encrypt_blocks`], into `out` of exactly
    /// [`FileCipher::cipher_len`]`(plain.len())` bytes (whatever it held is overwritten).
    pub fn encrypt_blocks_into(
        &self,
        first: u64,
        plain: &[u8],
        final_block: u64,
        gap: u32,
        out: &mut [u8],
    ) {
        let bs = self.block_size;
        let nblocks = plain.len().div_ceil(bs).max(1);
        assert_eq!(
            out.len(),
            self.cipher_len(plain.len()),
            "cipher buffer length"
        );
        debug_assert!(self.sparse || gap == 0, "a gap in a file without holes");
        let mut nonces = vec![0u8; nblocks * BLOCK_NONCE_LEN];
        random_bytes(&mut nonces);
        if self.sparse {
            for (i, n) in nonces.chunks_mut(BLOCK_NONCE_LEN).enumerate() {
                let g = if i == 0 { gap } else { 0 };
                n[..4].copy_from_slice(&g.to_be_bytes());
                // Never all zeros: that is what marks a hole.
                if n[4..].iter().all(|&b| b == 0) {
                    n[BLOCK_NONCE_LEN - 1] = 1;
                }
            }
        }
        let mut o = 0;
        for i in 0..nblocks {
            let p = &plain[(i * bs).min(plain.len())..((i + 1) * bs).min(plain.len())];
            let b = first + i as u64;
            let nonce: &[u8; BLOCK_NONCE_LEN] = nonces[i * BLOCK_NONCE_LEN..][..BLOCK_NONCE_LEN]
                .try_into()
                .unwrap_or_else(|_| unreachable!("slice of nonce length"));
            let block = &mut out[o..o + p.len() + BLOCK_OVERHEAD];
            o += block.len();
            self.encrypt_block(b, b == final_block, nonce, p, block);
        }
    }

    /// The plaintext length of `cipher_len` bytes of consecutive blocks, or the block (counted
    /// from the first) that cannot be one: a last block shorter than its overhead (found by
    /// fuzzing: it made the output too short for the blocks before it).
    pub fn plain_len(&self, cipher_len: usize) -> Result<usize, u64> {
        let cbs = self.block_size + BLOCK_OVERHEAD;
        let nblocks = cipher_len.div_ceil(cbs).max(1);
        let rest = cipher_len % cbs;
        if cipher_len < BLOCK_OVERHEAD || (rest != 0 && rest < BLOCK_OVERHEAD) {
            return Err(nblocks as u64 - 1);
        }
        Ok(cipher_len - nblocks * BLOCK_OVERHEAD)
    }

    /// Decrypts consecutive blocks starting at `first` from `cipher` into `out` (resized).
    /// `final_block` is the index of the file's final block.
    pub fn decrypt_blocks(
        &self,
        first: u64,
        cipher: &[u8],
        final_block: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), BlockError> {
        let n = self
            .plain_len(cipher.len())
            .map_err(|i| BlockError { block: first + i })?;
        out.clear();
        out.resize(n, 0);
        self.decrypt_blocks_into(first, cipher, final_block, out)
    }

    /// As [`FileCipher::decrypt_blocks`], into `out` of exactly
    /// [`FileCipher::plain_len`]`(cipher.len())` bytes (whatever it held is overwritten; on
    /// error, what it holds is no plaintext).
    pub fn decrypt_blocks_into(
        &self,
        first: u64,
        cipher: &[u8],
        final_block: u64,
        out: &mut [u8],
    ) -> Result<(), BlockError> {
        let cbs = self.block_size + BLOCK_OVERHEAD;
        let n = self
            .plain_len(cipher.len())
            .map_err(|i| BlockError { block: first + i })?;
        if out.len() != n {
            return Err(BlockError { block: first });
        }
        let mut po = 0;
        for (i, c) in cipher.chunks(cbs).enumerate() {
            let b = first + i as u64;
            let n = c.len() - BLOCK_OVERHEAD;
            if let Err(e) = self.decrypt_block(b, b == final_block, c, &mut out[po..po + n]) {
                // A failed read returns nothing: neither the authentic blocks before this one
                // nor what a reused buffer held after it.
                out.fill(0);
                return Err(e);
            }
            po += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fc(id: u8) -> FileCipher {
        FileCipher::new(&Key256::from_bytes([id; 32]), FileId([id; 16]), 4096)
    }

    #[test]
    fn malformed_lengths_are_errors_not_panics() {
        let c = fc(1);
        let cbs = 4096 + BLOCK_OVERHEAD;
        let mut out = Vec::new();
        for len in [
            0,
            1,
            BLOCK_OVERHEAD - 1,
            cbs + 1,
            cbs + BLOCK_OVERHEAD - 1,
            2 * cbs + 5,
        ] {
            let junk = vec![7u8; len];
            assert!(
                c.decrypt_blocks(0, &junk, 5, &mut out).is_err(),
                "length {len}"
            );
        }
    }

    #[test]
    fn round_trip_every_boundary() {
        let c = fc(1);
        for len in [0usize, 1, 4095, 4096, 4097, 8191, 8192, 8193, 3 * 4096 + 17] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let fin = (len / 4096) as u64;
            let mut ct = Vec::new();
            // encrypt as a whole file: full blocks then the final one
            c.encrypt_blocks(0, &plain, fin, 0, &mut ct);
            let mut back = Vec::new();
            if len % 4096 == 0 && len > 0 {
                // the empty final block is separate when the size is block-aligned
                let mut fin_ct = Vec::new();
                c.encrypt_blocks(fin, &[], fin, 0, &mut fin_ct);
                ct.extend_from_slice(&fin_ct);
            }
            c.decrypt_blocks(0, &ct, fin, &mut back).unwrap();
            assert_eq!(back, plain, "len {len}");
        }
    }

    #[test]
    fn encrypting_into_a_used_buffer_overwrites_all_of_it() {
        let c = fc(2);
        let plain: Vec<u8> = (0..3 * 4096 + 5).map(|i| (i * 7 % 253) as u8).collect();
        // What a reused write buffer may hold: another write's ciphertext, or anything.
        let mut out = vec![0xa5u8; c.cipher_len(plain.len())];
        c.encrypt_blocks_into(4, &plain, 7, 0, &mut out);
        let mut back = Vec::new();
        c.decrypt_blocks(4, &out, 7, &mut back).unwrap();
        assert_eq!(back, plain);
        // Same layout as through a new buffer: nonce, ciphertext, tag per block.
        let mut fresh = Vec::new();
        c.encrypt_blocks(4, &plain, 7, 0, &mut fresh);
        assert_eq!(fresh.len(), out.len());
        // The plaintext is nowhere in it.
        assert!(!out.windows(64).any(|w| w == &plain[..64]));
    }

    #[test]
    fn a_failed_decryption_into_a_used_buffer_leaves_no_plaintext() {
        let c = fc(3);
        let plain = vec![0x42u8; 3 * 4096];
        let mut ct = Vec::new();
        c.encrypt_blocks(0, &plain, 3, 0, &mut ct);
        // The second block tampered; the buffer holds an earlier read's data.
        ct[4096 + BLOCK_OVERHEAD + 20] ^= 1;
        let mut out = vec![0x17u8; plain.len()];
        assert_eq!(
            c.decrypt_blocks_into(0, &ct, 3, &mut out),
            Err(BlockError { block: 1 })
        );
        assert!(out.iter().all(|&b| b == 0), "authentic or stale bytes left");
    }

    fn two_blocks(c: &FileCipher) -> Vec<u8> {
        let mut ct = Vec::new();
        c.encrypt_blocks(0, &[7u8; 4096 + 100], 1, 0, &mut ct);
        ct
    }

    #[test]
    fn flip_any_byte_fails() {
        let c = fc(1);
        let ct = two_blocks(&c);
        let mut out = Vec::new();
        for i in (0..ct.len())
            .step_by(97)
            .chain([0, 11, 12, 4123, 4124, ct.len() - 1])
        {
            let mut x = ct.clone();
            x[i] ^= 0x80;
            assert!(c.decrypt_blocks(0, &x, 1, &mut out).is_err(), "flip at {i}");
        }
    }

    #[test]
    fn swap_transplant_zero_truncate_all_fail() {
        let c = fc(1);
        let ct = two_blocks(&c);
        let mut out = Vec::new();
        // block swap: block 1 read at position 0 (as a non-final full-length block? lengths differ,
        // so swap two full blocks instead)
        let mut full = Vec::new();
        c.encrypt_blocks(0, &[1u8; 3 * 4096], 3, 0, &mut full);
        let mut swapped = full.clone();
        swapped[..4124].copy_from_slice(&full[4124..8248]);
        swapped[4124..8248].copy_from_slice(&full[..4124]);
        assert_eq!(
            c.decrypt_blocks(0, &swapped, 3, &mut out),
            Err(BlockError { block: 0 })
        );
        // cross-file transplant: same DEK, other file id
        let other = FileCipher::new(&Key256::from_bytes([1; 32]), FileId([2; 16]), 4096);
        assert!(other.decrypt_blocks(0, &ct, 1, &mut out).is_err());
        // zeroed block
        let mut z = ct.clone();
        z[..4124].fill(0);
        assert!(c.decrypt_blocks(0, &z, 1, &mut out).is_err());
        // truncation at a block boundary: block 0 alone presented as the final block
        assert!(c.decrypt_blocks(0, &ct[..4124], 0, &mut out).is_err());
        // wrong DEK (header transplant gives another file's DEK)
        assert!(fc(3).decrypt_blocks(0, &ct, 1, &mut out).is_err());
    }

    #[test]
    fn sparse_nonces_carry_the_gap_and_are_never_all_zero() {
        let c = fc(4).with_sparse(true);
        let mut ct = Vec::new();
        c.encrypt_blocks(5, &[9u8; 3 * 4096], 9, 77, &mut ct);
        let cbs = 4096 + BLOCK_OVERHEAD;
        assert_eq!(block_gap(&ct), 77);
        assert_eq!(block_gap(&ct[cbs..]), 0);
        assert_eq!(block_gap(&ct[2 * cbs..]), 0);
        for b in ct.chunks(cbs) {
            assert!(!is_hole(b));
        }
        let mut back = Vec::new();
        c.decrypt_blocks(5, &ct, 9, &mut back).unwrap();
        assert_eq!(back, vec![9u8; 3 * 4096]);
        // The gap is authenticated: a changed one fails, in each of its bytes.
        for i in 0..4 {
            let mut x = ct.clone();
            x[i] ^= 1;
            assert!(
                c.decrypt_blocks(5, &x, 9, &mut back).is_err(),
                "gap byte {i}"
            );
        }
        // A zeroed block is a hole candidate; a block of a file without holes has random nonces.
        assert!(is_hole(&[0u8; 4124]));
        let mut plain_ct = Vec::new();
        fc(4).encrypt_blocks(0, &[1u8; 10], 0, 0, &mut plain_ct);
        assert!(!is_hole(&plain_ct));
    }
}
