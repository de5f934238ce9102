//! Shared setup of the model's unit tests: a new volume (fast KDF) in a temporary directory and
//! a `Vfs` over it, as the mount would build it but without FUSE.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Caller, Vfs, VfsOptions};
use crate::crypto::{KdfParams, Passphrase};
use crate::keymgr::{InitOptions, KeyManager, Unlock};

fn pw() -> Passphrase {
    Passphrase::new(b"model tests".to_vec())
}

pub fn caller() -> Caller {
    Caller {
        uid: 0,
        gid: 0,
        pid: std::process::id(),
        umask: 0,
    }
}

/// A new, empty volume; the directory lives as long as the `TempDir`.
pub fn new_volume() -> (tempfile::TempDir, PathBuf) {
    new_volume_with(true)
}

/// A new, empty volume whose files hold holes (`sparse`) or store encrypted zeros.
pub fn new_volume_with(sparse: bool) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("c");
    crate::keymgr::init(
        &dir,
        &pw(),
        &InitOptions {
            kdf: KdfParams::FAST_INSECURE,
            recovery_key: false,
            sparse,
            ..Default::default()
        },
    )
    .expect("init");
    (t, dir)
}

pub fn unlock(dir: &Path) -> crate::keymgr::Unlocked {
    crate::keymgr::unlock(dir, &Unlock::Passphrase(pw())).expect("unlock")
}

pub fn open(dir: &Path) -> Vfs {
    open_with(dir, VfsOptions::default())
}

pub fn open_with(dir: &Path, opts: VfsOptions) -> Vfs {
    // As `kmsfs mount` does (see `Vfs::new`).
    rustix::process::umask(rustix::fs::Mode::empty());
    let u = unlock(dir);
    let bs = u.config.block_size;
    // As `kmsfs mount` does: holes where the volume has the feature.
    let opts = VfsOptions {
        sparse: u
            .config
            .has_feature(crate::format::config::FEATURE_SPARSE_FILES),
        ..opts
    };
    Vfs::new(dir, Arc::new(KeyManager::new(u)), bs, false, opts).expect("vfs")
}

/// Creates an empty regular file `name` in directory `dir` (and closes it); returns its inode.
pub fn touch(v: &Vfs, dir: u64, name: &str) -> u64 {
    let (a, fh) = v
        .create(dir, name.as_ref(), 0o644, libc::O_RDWR, &caller())
        .expect("create");
    v.release(fh).expect("release");
    a.ino
}

/// Creates regular file `name` in the root holding `data` (and closes it); returns its inode.
pub fn write_file(v: &Vfs, name: &str, data: &[u8]) -> u64 {
    write_file_in(v, 1, name, data)
}

/// `write_file` in directory `parent`.
pub fn write_file_in(v: &Vfs, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (a, fh) = v
        .create(parent, name.as_ref(), 0o644, libc::O_RDWR, &caller())
        .expect("create");
    v.write(fh, 0, data).expect("write");
    v.release(fh).expect("release");
    a.ino
}

/// Flips the lowest bit of the byte at `at` of the (cipher) file `path`, in place.
pub fn flip_byte(path: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open to flip a byte");
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).expect("read the byte");
    f.write_all_at(&[byte[0] ^ 1], at).expect("flip the byte");
}

/// Opens `ino` read-only as the caller, reads `[off, off + len)` and closes it.
pub fn read_at(v: &Vfs, ino: u64, off: u64, len: u32) -> Vec<u8> {
    let fh = v.open_as(ino, libc::O_RDONLY, &caller()).expect("open");
    let d = v.read(fh, off, len).expect("read");
    v.release(fh).expect("release");
    d
}

/// Waits (up to 10 s) until a background thread's `count` reaches `n`, then a little longer
/// to see it go no further; returns the count.
pub fn settle(count: impl Fn() -> u64, n: u64) -> u64 {
    let t = Instant::now();
    while count() < n && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    quiet(count)
}

/// `count` after background threads had time to act.
pub fn quiet(count: impl Fn() -> u64) -> u64 {
    std::thread::sleep(Duration::from_millis(200));
    count()
}

/// The backing path of `ino`'s remembered entry.
pub fn cipher_path(v: &Vfs, ino: u64) -> PathBuf {
    let n = v.node(ino).expect("node").name().expect("remembered entry");
    let dir = std::fs::read_link(v.node(n.parent).expect("dir").proc_path()).expect("dir path");
    dir.join(&n.cipher)
}

/// The block cipher of the file whose cipher file is at `path`, as an open through `v` builds it
/// (for tests that forge or inspect what only the file's key can make).
pub fn file_cipher(v: &Vfs, path: &Path) -> crate::content::FileCipher {
    let f = std::fs::File::open(path).expect("cipher file");
    let h = super::open_file::read_header(&f).expect("header");
    let dek = v.km.unwrap_dek(&h).expect("data key");
    crate::content::FileCipher::for_header(&dek, &h, v.block_size)
}

/// The key in the header of the file at plaintext path `path`.
pub fn key_of(v: &Vfs, dir: &Path, path: &str) -> crate::format::KeyId {
    let names = crate::names::Names::new(&v.km.volume_secret(), false);
    let mut found = None;
    crate::keymgr::rewrap::walk(dir, &names, &mut |cf| {
        if cf.plain_path.as_deref() == Some(path) {
            let b = std::fs::read(&cf.cipher_path).unwrap();
            let h =
                crate::format::header::FileHeader::decode(&b[..crate::format::header::HEADER_LEN])
                    .unwrap();
            found = Some(h.key_id);
        }
    })
    .unwrap();
    found.unwrap_or_else(|| panic!("no file {path}"))
}

/// fsck's problems as `kind repaired: detail`.
pub fn fsck_with(dir: &Path, repair: crate::keymgr::fsck::Repair) -> Vec<String> {
    let u = unlock(dir);
    let names = crate::names::Names::new(&u.store.volume_secret, false);
    let bs = u.config.block_size;
    let km = KeyManager::new(u);
    let r = crate::keymgr::fsck::fsck(&km, dir, &names, bs, None, repair, &mut |_, _| {})
        .expect("fsck");
    r.problems
        .iter()
        .map(|p| format!("{} {}: {}", p.kind, p.repaired, p.detail))
        .collect()
}
