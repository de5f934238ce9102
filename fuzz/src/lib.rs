//! Shared helpers of the kmsfs fuzz targets (fuzz_targets/*.rs): the fixed keys of the
//! known-answer vectors in tests/vectors (so that the seeds in fuzz/seeds/ built from those
//! vectors decrypt), a small input reader, and per-process scratch directories for the targets
//! that have to go through files.

use std::path::{Path, PathBuf};

use kmsfs::crypto::Key256;

/// `volume-secret` of the name, symlink and xattr vectors (tests/vectors/name-*.txt, …).
pub const VOLUME_SECRET: [u8; 32] =
    hex("606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f");
/// `dek` and `file-id` of the content-block vectors (tests/vectors/content-block-*.txt).
pub const BLOCK_DEK: [u8; 32] =
    hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
pub const BLOCK_FILE_ID: [u8; 16] = hex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf");
/// The key-store vector (tests/vectors/key-store.keystore, key-store.volume.json).
pub const KS_RECOVERY_KEY: [u8; 32] =
    hex("f1c3dab25db14d990d81cd3b1d7dfa482db87bc07296906cc282568d9e51475c");
pub const KS_VOLUME_JSON: &[u8] = include_bytes!("../../tests/vectors/key-store.volume.json");
pub const KS_VOLUME_ID: [u8; 16] = hex("7de03211330e642947e464f6d9e3354b");

const fn nib(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not lowercase hex"),
    }
}

/// `N` bytes from `2N` lowercase hex digits, at compile time.
const fn hex<const N: usize>(s: &str) -> [u8; N] {
    let b = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = (nib(b[2 * i]) << 4) | nib(b[2 * i + 1]);
        i += 1;
    }
    out
}

pub fn key(bytes: [u8; 32]) -> Key256 {
    Key256::from_bytes(bytes)
}

/// Takes fixed-size fields off the front of the fuzz input; missing bytes read as zero, so every
/// input is usable.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    pub fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.bytes())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.bytes())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.bytes())
    }
    pub fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// A fresh, empty directory `<scratch>/<name>` for this process (recreated on every call).
/// `<scratch>` is `$KMSFS_FUZZ_TMP` (tools/fuzz.sh points it at /dev/shm) or the system temp dir,
/// plus `kmsfs-fuzz-<pid>`; tools/fuzz.sh removes it after the run.
pub fn fresh_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("KMSFS_FUZZ_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("kmsfs-fuzz-{}", std::process::id()));
    let d = base.join(name);
    match std::fs::remove_dir_all(&d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot clear scratch dir {}: {e}", d.display()),
    }
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
    d
}

pub fn write(p: &Path, bytes: &[u8]) {
    std::fs::write(p, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
}

/// A valid entry name (what `Names::decrypt` may return): 1..=255 bytes, no `/`, no NUL, not
/// `.` or `..`.
pub fn valid_name(n: &[u8]) -> bool {
    !n.is_empty()
        && n.len() <= 255
        && !n.contains(&b'/')
        && !n.contains(&0)
        && n != b"."
        && n != b".."
}
