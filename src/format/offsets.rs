//! Offset math between plaintext and ciphertext. Pure arithmetic, swept by tests.
//!
//! A file of plaintext size `S` with block size `B` is stored as
//! `header ‖ block_0 ‖ … ‖ block_{S/B}`: `S / B` full blocks followed by one final block of
//! `S % B` bytes (empty when `S` is a multiple of `B`, including `S = 0`).

use super::block::BLOCK_OVERHEAD;
use super::header::HEADER_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Plaintext bytes per block.
    pub block_size: u64,
}

impl Layout {
    pub fn new(block_size: u32) -> Self {
        Layout {
            block_size: block_size.into(),
        }
    }

    /// Bytes one full block occupies on disk.
    pub fn cipher_block_size(&self) -> u64 {
        self.block_size + BLOCK_OVERHEAD as u64
    }

    /// The block holding plaintext offset `off`.
    pub fn block_of(&self, off: u64) -> u64 {
        off / self.block_size
    }

    /// Index of the final block of a file of plaintext size `size`.
    pub fn final_block(&self, size: u64) -> u64 {
        size / self.block_size
    }

    /// Plaintext offset where block `i` starts.
    pub fn plain_offset(&self, block: u64) -> u64 {
        block * self.block_size
    }

    /// Ciphertext offset where block `i` starts.
    pub fn cipher_offset(&self, block: u64) -> u64 {
        HEADER_LEN as u64 + block * self.cipher_block_size()
    }

    /// The block whose stored bytes hold cipher offset `off` (block 0 for the header's bytes).
    pub fn block_at_cipher(&self, off: u64) -> u64 {
        off.saturating_sub(HEADER_LEN as u64) / self.cipher_block_size()
    }

    /// Plaintext length of block `i` in a file of size `size`, `None` past the final block.
    pub fn block_len(&self, block: u64, size: u64) -> Option<u64> {
        let fin = self.final_block(size);
        match block.cmp(&fin) {
            std::cmp::Ordering::Less => Some(self.block_size),
            std::cmp::Ordering::Equal => Some(size % self.block_size),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// Size on disk of a file of plaintext size `size`.
    pub fn cipher_size(&self, size: u64) -> u64 {
        self.cipher_offset(self.final_block(size)) + size % self.block_size + BLOCK_OVERHEAD as u64
    }

    /// Plaintext size of a cipher file of `cipher` bytes; `None` if no plaintext size maps to it
    /// (a truncated or padded file).
    pub fn plain_size(&self, cipher: u64) -> Option<u64> {
        let x = cipher.checked_sub(HEADER_LEN as u64 + BLOCK_OVERHEAD as u64)?;
        let full = x / self.cipher_block_size();
        let rem = x % self.cipher_block_size();
        if rem >= self.block_size {
            return None;
        }
        Some(full * self.block_size + rem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_sizes_0_to_10000() {
        for bs in [512u32, 4096] {
            let l = Layout::new(bs);
            let mut seen = std::collections::HashSet::new();
            for s in 0..=10_000u64 {
                let c = l.cipher_size(s);
                assert_eq!(l.plain_size(c), Some(s), "bs {bs} size {s}");
                assert!(seen.insert(c));
                // Sum of block lengths equals the size, and blocks tile the cipher file.
                let fin = l.final_block(s);
                let total: u64 = (0..=fin).map(|i| l.block_len(i, s).unwrap()).sum();
                assert_eq!(total, s);
                assert_eq!(l.block_len(fin + 1, s), None);
                assert_eq!(l.cipher_offset(fin) + l.block_len(fin, s).unwrap() + 28, c);
                // Every plaintext offset lies in a block that starts at or before it.
                if s > 0 {
                    let b = l.block_of(s - 1);
                    assert!(l.plain_offset(b) < s && s - 1 < l.plain_offset(b) + l.block_size);
                }
            }
        }
    }

    #[test]
    fn worked_examples() {
        let l = Layout::new(4096);
        assert_eq!(l.cipher_size(0), 104 + 28);
        assert_eq!(l.cipher_size(1), 104 + 29);
        assert_eq!(l.cipher_size(4095), 104 + 4095 + 28);
        assert_eq!(l.cipher_size(4096), 104 + 4124 + 28);
        assert_eq!(l.cipher_size(1 << 20), 104 + 256 * 4124 + 28);
    }

    #[test]
    fn impossible_cipher_sizes() {
        let l = Layout::new(4096);
        for c in 0..132 {
            assert_eq!(l.plain_size(c), None);
        }
        // A file cut right after a full block (its final block removed).
        assert_eq!(l.plain_size(104 + 4124), None);
        assert_eq!(l.plain_size(104 + 4124 + 27), None);
    }
}
