//! Crypto throughput of one core: the AES-256-GCM-SIV crate on its own versus kmsfs's content
//! format (FileCipher: per-block AAD, nonce handling, batched nonces, output layout).
//!
//! `cargo bench --bench crypto -- --warm-up-time 1 --measurement-time 3`
//!
//! The ratio format/raw shows what the block format costs on top of the cipher. Both encrypt
//! 4 KiB messages with a 25-byte AAD (the size of a block's AAD), so the difference is the format's
//! own work, not the cipher's.
//!
//! Recorded 2026-12-03 on the 2-vCPU development VM (shared: runs vary; release profile with
//! fat LTO), MB/s = 2^30 bytes/s here (GiB/s as criterion prints it):
//!
//! | benchmark                                          | GiB/s | format/raw |
//! | -------------------------------------------------- | ----: | ---------: |
//! | raw AES-256-GCM-SIV encrypt, 4 KiB                 |  2.18 |            |
//! | raw AES-256-GCM-SIV decrypt, 4 KiB                 |  2.13 |            |
//! | FileCipher::encrypt_blocks, 1 MiB (new buffer)     |  1.73 |       0.79 |
//! | FileCipher::encrypt_blocks_into, 1 MiB (reused)    |  1.97 |       0.91 |
//! | FileCipher::decrypt_blocks, 1 MiB (new buffer)     |  1.91 |       0.90 |
//! | FileCipher::decrypt_blocks_into, 1 MiB (reused)    |  2.15 |       1.01 |
//! | FileCipher::encrypt_block, one 4 KiB               |  2.19 |       1.00 |
//! | FileCipher::decrypt_block, one 4 KiB               |  2.14 |       1.00 |
//!
//! Reads and writes through the mount use the `_into` forms with buffers kept per request
//! thread; the forms that fill a new buffer pay for its zero fill. (An earlier run of the same
//! build had encrypt_blocks_into at 2.16 GiB/s, 0.99 of raw.) The cipher itself is the cost.

use std::hint::black_box;

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use kmsfs::content::FileCipher;
use kmsfs::crypto::Key256;
use kmsfs::format::FileId;
use kmsfs::format::block::{BLOCK_OVERHEAD, block_aad};

const BLOCK: usize = 4096;
const MIB: usize = 1 << 20;

fn plaintext(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

/// The crate's raw speed: encrypt_inout_detached on 4 KiB messages.
fn raw(c: &mut Criterion) {
    let mut g = c.benchmark_group("raw-aes-gcm-siv");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    let cipher = Aes256GcmSiv::new(&[7u8; 32].into());
    let nonce = Nonce::from([9u8; 12]);
    let aad = block_aad(&FileId([1; 16]), 0, false);
    let mut buf = plaintext(BLOCK);
    g.bench_function("encrypt 4 KiB", |b| {
        b.iter(|| {
            let tag = cipher
                .encrypt_inout_detached(&nonce, black_box(&aad), buf.as_mut_slice().into())
                .expect("4 KiB is below the message limit");
            black_box(tag)
        })
    });
    let mut ct = plaintext(BLOCK);
    let tag = cipher
        .encrypt_inout_detached(&nonce, &aad, ct.as_mut_slice().into())
        .expect("4 KiB is below the message limit");
    // Decryption is in place: restore the ciphertext first (a 4 KiB copy, as FileCipher's
    // decrypt_block also makes one into its output buffer).
    let mut m = vec![0u8; BLOCK];
    g.bench_function("decrypt 4 KiB", |b| {
        b.iter(|| {
            m.copy_from_slice(&ct);
            cipher
                .decrypt_inout_detached(&nonce, black_box(&aad), m.as_mut_slice().into(), &tag)
                .expect("authentic");
            black_box(m[0])
        })
    });
    g.finish();
}

fn file_cipher() -> FileCipher {
    FileCipher::new(&Key256::from_bytes([7; 32]), FileId([1; 16]), BLOCK as u32)
}

/// kmsfs's block format over a 1 MiB write: 256 blocks of 4 KiB (the final block, 256, is the
/// separate empty one).
fn format_1mib(c: &mut Criterion) {
    let mut g = c.benchmark_group("kmsfs-format-1MiB");
    g.throughput(Throughput::Bytes(MIB as u64));
    let fc = file_cipher();
    let plain = plaintext(MIB);
    let mut out = Vec::with_capacity(MIB + 256 * BLOCK_OVERHEAD);
    g.bench_function("encrypt_blocks", |b| {
        b.iter(|| {
            fc.encrypt_blocks(0, black_box(&plain), 256, 0, &mut out);
            black_box(out.len())
        })
    });
    // As a write through the mount does it: into a buffer kept from the last write.
    let mut reused = vec![0u8; fc.cipher_len(MIB)];
    g.bench_function("encrypt_blocks_into (reused buffer)", |b| {
        b.iter(|| {
            fc.encrypt_blocks_into(0, black_box(&plain), 256, 0, &mut reused);
            black_box(reused.len())
        })
    });
    let mut ct = Vec::new();
    fc.encrypt_blocks(0, &plain, 256, 0, &mut ct);
    assert_eq!(ct.len(), MIB + 256 * BLOCK_OVERHEAD);
    let mut back = Vec::with_capacity(MIB);
    g.bench_function("decrypt_blocks", |b| {
        b.iter(|| {
            fc.decrypt_blocks(0, black_box(&ct), 256, &mut back)
                .expect("authentic");
            black_box(back.len())
        })
    });
    // As a read through the mount does it: into the thread's kept plaintext buffer.
    let mut reused = vec![0u8; MIB];
    g.bench_function("decrypt_blocks_into (reused buffer)", |b| {
        b.iter(|| {
            fc.decrypt_blocks_into(0, black_box(&ct), 256, &mut reused)
                .expect("authentic");
            black_box(reused.len())
        })
    });
    g.finish();
}

/// One 4 KiB block through FileCipher (caller-supplied nonce, no RNG call).
fn format_block(c: &mut Criterion) {
    let mut g = c.benchmark_group("kmsfs-format-4KiB-block");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    let fc = file_cipher();
    let plain = plaintext(BLOCK);
    let nonce = [9u8; 12];
    let mut out = vec![0u8; BLOCK + BLOCK_OVERHEAD];
    g.bench_function("encrypt_block", |b| {
        b.iter(|| {
            fc.encrypt_block(3, false, &nonce, black_box(&plain), &mut out);
            black_box(out[0])
        })
    });
    let mut ct = vec![0u8; BLOCK + BLOCK_OVERHEAD];
    fc.encrypt_block(3, false, &nonce, &plain, &mut ct);
    let mut back = vec![0u8; BLOCK];
    g.bench_function("decrypt_block", |b| {
        b.iter(|| {
            fc.decrypt_block(3, false, black_box(&ct), &mut back)
                .expect("authentic");
            black_box(back[0])
        })
    });
    g.finish();
}

criterion_group!(benches, raw, format_1mib, format_block);
criterion_main!(benches);
