//! The cost of auditing: opening and closing 10,000 small files through the model, as a
//! process would through the mount (policy decision, Open and Close records), with the audit log
//! attached versus without. Run: `cargo bench --bench audit` (the ratio of the two medians is
//! the price of the log).

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use kmsfs::crypto::{KdfParams, Passphrase};
use kmsfs::keymgr::audit::{AuditKeys, AuditLog};
use kmsfs::keymgr::{InitOptions, KeyManager, Unlock};
use kmsfs::vfs::{Caller, Vfs, VfsOptions};

const FILES: usize = 10_000;

fn setup(audited: bool) -> (tempfile::TempDir, Vfs, Vec<u64>) {
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
    let control = u.paths.control_dir();
    let secret = u.store.volume_secret.clone();
    let vfs = Vfs::new(
        &d,
        Arc::new(KeyManager::new(u)),
        bs,
        false,
        VfsOptions::default(),
    )
    .expect("vfs");
    if audited {
        let log = AuditLog::open(&control, AuditKeys::new(&secret)).expect("audit log");
        vfs.set_audit(Arc::new(log));
    }
    let me = caller();
    let inos = (0..FILES)
        .map(|i| {
            let (a, fh) = vfs
                .create(1, format!("f{i}").as_ref(), 0o644, libc::O_RDWR, &me)
                .expect("create");
            vfs.write(fh, 0, b"small file").expect("write");
            vfs.release(fh).expect("release");
            a.ino
        })
        .collect();
    (t, vfs, inos)
}

fn caller() -> Caller {
    Caller {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        pid: std::process::id(),
        umask: 0,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit");
    g.sample_size(10);
    for audited in [false, true] {
        let (_t, vfs, inos) = setup(audited);
        let me = caller();
        let name = if audited {
            "open+read+close 10k files, audit on"
        } else {
            "open+read+close 10k files, audit off"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                for ino in &inos {
                    let fh = vfs.open_as(*ino, libc::O_RDONLY, &me).expect("open");
                    vfs.read(fh, 0, 4096).expect("read");
                    vfs.release(fh).expect("release");
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
