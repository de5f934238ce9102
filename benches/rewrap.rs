//! Rewrap throughput: creates N files (env BENCH_REWRAP_FILES, default 100000) through the
//! model, rotates the key, and times a header-only rewrap of all of them. Prints files/s.
//! Run: cargo bench --bench rewrap

use std::sync::Arc;
use std::time::Instant;

use kmsfs::crypto::{KdfParams, Passphrase};
use kmsfs::keymgr::rewrap::{RewrapOptions, rewrap};
use kmsfs::keymgr::{InitOptions, KeyManager, Unlock, lifecycle};
use kmsfs::names::Names;
use kmsfs::vfs::{Caller, Vfs, VfsOptions};

fn main() {
    let n: usize = std::env::var("BENCH_REWRAP_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let t = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
        .expect("tempdir");
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
    let km = Arc::new(KeyManager::new(u));
    let vfs = Vfs::new(&d, km.clone(), bs, false, VfsOptions::default()).expect("vfs");
    let caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
        umask: 0,
    };
    let start = Instant::now();
    // 100 directories of n/100 files, each with a little content.
    let per_dir = n.div_ceil(100);
    let mut made = 0;
    for dnum in 0..100 {
        if made >= n {
            break;
        }
        let dir = vfs
            .mkdir(1, format!("d{dnum}").as_ref(), 0o755, &caller)
            .expect("mkdir");
        for i in 0..per_dir.min(n - made) {
            let (a, fh) = vfs
                .create(
                    dir.ino,
                    format!("file-{i}").as_ref(),
                    0o644,
                    libc::O_RDWR,
                    &caller,
                )
                .expect("create");
            vfs.write(fh, 0, b"some content").expect("write");
            vfs.release(fh).expect("release");
            vfs.forget(a.ino, 1);
            made += 1;
        }
        vfs.forget(dir.ino, 1);
    }
    eprintln!(
        "created {made} files in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    let key = km.query(|s| s.default_key);
    km.admin(|s, now| lifecycle::rotate(s, &key, now))
        .expect("rotate");
    let names = Names::new(&km.volume_secret(), false);
    let start = Instant::now();
    let s = rewrap(&km, &d, &names, &RewrapOptions::default(), &mut |_, _| {}).expect("rewrap");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(s.rewrapped as usize, made);
    println!(
        "rewrap: {} files in {secs:.2}s = {:.0} files/s (header-only, syncfs every 1000 files)",
        s.rewrapped,
        s.rewrapped as f64 / secs
    );
    let start = Instant::now();
    let s = rewrap(&km, &d, &names, &RewrapOptions::default(), &mut |_, _| {}).expect("rewrap");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "rewrap again (all current, idempotent): {} files checked in {secs:.2}s = {:.0} files/s",
        s.already_current,
        s.already_current as f64 / secs
    );
}
