//! In-process costs of the file-system model, without FUSE: open (header read, DEK unwrap,
//! checks) + release, a 4 KiB read, a 4 KiB write (read-modify-write of one block), and a 1 MiB
//! sequential write; the writes again in a file that may hold holes (a sparse file, which reads
//! the count of holes before a write's first block).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kmsfs::crypto::{KdfParams, Passphrase};
use kmsfs::keymgr::{InitOptions, KeyManager, Unlock};
use kmsfs::vfs::{Caller, Vfs, VfsOptions};

fn setup(sparse: bool) -> (tempfile::TempDir, Vfs) {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path().join("c");
    let pw = Passphrase::new(b"bench".to_vec());
    kmsfs::keymgr::init(
        &d,
        &pw,
        &InitOptions {
            kdf: KdfParams::FAST_INSECURE,
            recovery_key: false,
            ..Default::default()
        },
    )
    .expect("init");
    let u = kmsfs::keymgr::unlock(&d, &Unlock::Passphrase(pw)).expect("unlock");
    let bs = u.config.block_size;
    let vfs = Vfs::new(
        &d,
        Arc::new(KeyManager::new(u)),
        bs,
        false,
        VfsOptions {
            sparse,
            ..Default::default()
        },
    )
    .expect("vfs");
    (t, vfs)
}

fn bench(c: &mut Criterion) {
    model(c, "model", false);
    model(c, "model, sparse file", true);
}

fn model(c: &mut Criterion, group: &str, sparse: bool) {
    let (_t, vfs) = setup(sparse);
    let caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
        umask: 0,
    };
    let (attr, fh) = vfs
        .create(1, "f".as_ref(), 0o644, libc::O_RDWR, &caller)
        .expect("create");
    let data = vec![7u8; 8 << 20];
    vfs.write(fh, 0, &data).expect("write");
    vfs.release(fh).expect("release");
    let ino = attr.ino;

    let mut g = c.benchmark_group(group);
    g.bench_function("open+release (header read, DEK unwrap)", |b| {
        b.iter(|| {
            let fh = vfs.open(ino, libc::O_RDONLY).expect("open");
            vfs.release(fh).expect("release");
        })
    });
    let fh = vfs.open(ino, libc::O_RDWR).expect("open");
    let mut off = 0u64;
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("read 4 KiB", |b| {
        b.iter(|| {
            off = (off + 4096 * 37) % (8 << 20);
            black_box(vfs.read(fh, off, 4096).expect("read"));
        })
    });
    let block = vec![1u8; 4096];
    g.bench_function("write 4 KiB (aligned)", |b| {
        b.iter(|| {
            off = (off + 4096 * 37) % (8 << 20);
            vfs.write(fh, off, &block).expect("write");
        })
    });
    g.bench_function(
        "write 4 KiB (unaligned: two blocks read-modify-write)",
        |b| {
            b.iter(|| {
                off = (off + 4096 * 37) % ((8 << 20) - 8192);
                vfs.write(fh, off + 100, &block).expect("write");
            })
        },
    );
    let mib = vec![3u8; 1 << 20];
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("write 1 MiB", |b| {
        b.iter(|| {
            off = (off + (1 << 20)) % (7 << 20);
            vfs.write(fh, off & !4095, &mib).expect("write");
        })
    });
    g.bench_function("read 1 MiB", |b| {
        b.iter(|| {
            off = (off + (1 << 20)) % (7 << 20);
            black_box(vfs.read(fh, off & !4095, 1 << 20).expect("read"));
        })
    });
    g.finish();
    vfs.release(fh).expect("release");
}

criterion_group!(benches, bench);
criterion_main!(benches);
