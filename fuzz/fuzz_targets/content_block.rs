//! Content blocks (`nonce ‖ ciphertext ‖ tag`, FORMAT.md §4) under a fixed DEK and file id (those
//! of tests/vectors/content-block-*.txt), and the cipher-size arithmetic of §5.
//!
//! Input: `flags (1) ‖ block number (8, BE) ‖ final delta (1) ‖ flip index (2, BE) ‖ payload`;
//! flags bits 0–3 pick the block size (512 << n, n ≤ 11), bit 4 the final flag.
//!
//! - `decrypt_block` / `decrypt_blocks` never panic on arbitrary bytes and return `Err` unless
//!   the bytes are exactly what encryption produces (checked by re-encrypting with the stored
//!   nonce: AES-GCM-SIV is deterministic given the nonce);
//! - a wrong output length is an `Err`, not a panic;
//! - `encrypt_blocks` → `decrypt_blocks` round-trips fuzzer-chosen plaintext and block numbers,
//!   and a flipped bit, a moved final flag, another file id all fail;
//! - `Layout::plain_size` of any cipher length maps back through `cipher_size`.
#![no_main]

use kmsfs::content::FileCipher;
use kmsfs::format::FileId;
use kmsfs::format::block::{BLOCK_OVERHEAD, valid_block_size};
use kmsfs::format::offsets::Layout;
use kmsfs_fuzz::{BLOCK_DEK, BLOCK_FILE_ID, Reader, key};
use libfuzzer_sys::fuzz_target;

/// Block numbers passed to `decrypt_blocks`/`encrypt_blocks` stay below this: callers derive
/// them from file offsets (< 2^63) divided by the block size (≥ 512), so real block numbers are
/// below 2^54. (`first + i` in those functions would overflow near u64::MAX.)
const MAX_FIRST_BLOCK: u64 = 1 << 56;

fn cipher(bs: u32) -> FileCipher {
    FileCipher::new(&key(BLOCK_DEK), FileId(BLOCK_FILE_ID), bs)
}

/// Whether `c` is exactly the encryption of `plain` as block `no` (final or not) with the nonce
/// stored in `c`.
fn is_encryption(fc: &FileCipher, no: u64, is_final: bool, c: &[u8], plain: &[u8]) -> bool {
    let nonce: [u8; 12] = c[..12].try_into().unwrap();
    let mut again = vec![0u8; plain.len() + BLOCK_OVERHEAD];
    fc.encrypt_block(no, is_final, &nonce, plain, &mut again);
    again == c
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let flags = r.u8();
    let block_no = r.u64();
    let final_delta = r.u8();
    let flip = r.u16() as usize;
    let payload = r.rest();
    let bs = 512u32 << (flags & 0x0f).min(11);
    assert!(valid_block_size(bs));
    let is_final = flags & 0x10 != 0;
    let fc = cipher(bs);
    let cbs = bs as usize + BLOCK_OVERHEAD;

    // 1. One block, any block number.
    let n = payload.len().saturating_sub(BLOCK_OVERHEAD);
    let mut out = vec![0u8; n];
    let res = fc.decrypt_block(block_no, is_final, payload, &mut out);
    if res.is_ok() {
        assert!(payload.len() >= BLOCK_OVERHEAD && n <= bs as usize);
        assert!(
            is_encryption(&fc, block_no, is_final, payload, &out),
            "decrypt_block accepted bytes encryption does not produce"
        );
    }
    let mut wrong = vec![0u8; n + 1];
    assert!(
        fc.decrypt_block(block_no, is_final, payload, &mut wrong)
            .is_err()
    );
    if n > 0 {
        let mut short = vec![0u8; n - 1];
        assert!(
            fc.decrypt_block(block_no, is_final, payload, &mut short)
                .is_err()
        );
    }

    // 2. A run of blocks.
    let first = block_no % MAX_FIRST_BLOCK;
    let nblocks = payload.len().div_ceil(cbs).max(1) as u64;
    let final_block = if is_final {
        first + nblocks - 1
    } else {
        first + u64::from(final_delta)
    };
    let mut plain = Vec::new();
    if fc
        .decrypt_blocks(first, payload, final_block, &mut plain)
        .is_ok()
    {
        let mut po = 0;
        for (i, c) in payload.chunks(cbs).enumerate() {
            let b = first + i as u64;
            let p = &plain[po..po + c.len() - BLOCK_OVERHEAD];
            assert!(
                is_encryption(&fc, b, b == final_block, c, p),
                "decrypt_blocks accepted bytes encryption does not produce"
            );
            po += p.len();
        }
        assert_eq!(po, plain.len());
    }

    // 3. Round trip of fuzzer-chosen plaintext.
    let plain = payload;
    let mut ct = Vec::new();
    fc.encrypt_blocks(first, plain, final_block, 0, &mut ct);
    let nb = plain.len().div_ceil(bs as usize).max(1);
    assert_eq!(ct.len(), plain.len() + nb * BLOCK_OVERHEAD);
    let mut back = Vec::new();
    fc.decrypt_blocks(first, &ct, final_block, &mut back)
        .expect("encrypt_blocks → decrypt_blocks");
    assert_eq!(back, plain);
    // Every block alone, too.
    for (i, c) in ct.chunks(cbs).enumerate() {
        let b = first + i as u64;
        let mut p = vec![0u8; c.len() - BLOCK_OVERHEAD];
        fc.decrypt_block(b, b == final_block, c, &mut p)
            .expect("single block");
        assert!(
            fc.decrypt_block(b, b != final_block, c, &mut p).is_err(),
            "final flag not bound"
        );
        assert!(
            fc.decrypt_block(b ^ 1, b == final_block, c, &mut p)
                .is_err(),
            "block number not bound"
        );
    }
    // A flipped bit anywhere fails.
    let mut bad = ct.clone();
    let i = flip % bad.len();
    bad[i] ^= 1 << (flags >> 5);
    assert!(
        fc.decrypt_blocks(first, &bad, final_block, &mut back)
            .is_err(),
        "flip at {i}"
    );
    // The final flag moved: the final block inside the run presented as not final, or a block
    // of a run without a final block presented as final.
    let in_run = (first..first + nb as u64).contains(&final_block);
    let other_final = if in_run { first + nb as u64 } else { first };
    assert!(
        fc.decrypt_blocks(first, &ct, other_final, &mut back)
            .is_err()
    );
    // Another file id (same DEK).
    let other = FileCipher::new(&key(BLOCK_DEK), FileId([0x55; 16]), bs);
    assert!(
        other
            .decrypt_blocks(first, &ct, final_block, &mut back)
            .is_err()
    );

    // 4. Size arithmetic: any cipher length (block_no read as a length).
    let l = Layout::new(bs);
    match l.plain_size(block_no) {
        Some(s) => {
            assert_eq!(l.cipher_size(s), block_no);
            let fin = l.final_block(s);
            let last = l.block_len(fin, s).unwrap();
            assert_eq!(
                l.cipher_offset(fin) + last + BLOCK_OVERHEAD as u64,
                block_no
            );
            assert_eq!(l.block_len(fin + 1, s), None);
        }
        None => {
            let x = block_no.checked_sub(132);
            assert!(x.is_none_or(|x| x % l.cipher_block_size() >= u64::from(bs)));
        }
    }
    let s = block_no >> 8;
    assert_eq!(l.plain_size(l.cipher_size(s)), Some(s));
});
