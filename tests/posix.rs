//! POSIX behaviour through a real mount, compared with the same operations on a plain directory.
//!
//! Each test runs one scenario twice: on the mount and on a plain temp directory. A scenario
//! records every result (values, errno, file contents) in a [`Log`]; the two logs must be equal.
//! Most tests then unmount, remount and compare the whole tree again, so what was checked came
//! from the cipher files and not from the kernel's page cache. Documented deviations (README,
//! "POSIX behaviour and limits") are asserted as such in mount-only checks.
mod common;
mod support;
use common::*;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString, OsStr};
use std::fmt::{Debug, Display};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{
    DirBuilderExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// What a scenario observed, in order. Byte blobs are kept so that a mismatch can name the first
/// differing offset.
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    blobs: HashMap<usize, Vec<u8>>,
}

impl Log {
    fn rec(&mut self, label: impl Display, v: impl Debug) {
        self.lines.push(format!("{label}: {v:?}"));
    }

    fn bytes(&mut self, label: impl Display, data: Vec<u8>) {
        self.lines.push(format!(
            "{label}: {} bytes, sha256 {}",
            data.len(),
            sha(&data)
        ));
        self.blobs.insert(self.lines.len() - 1, data);
    }
}

fn first_diff(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

fn check_logs(mnt: &Log, plain: &Log) {
    for i in 0..mnt.lines.len().max(plain.lines.len()) {
        let (a, b) = (mnt.lines.get(i), plain.lines.get(i));
        if a == b {
            continue;
        }
        let mut msg = format!("step {i} differs\n  mount: {a:?}\n  plain: {b:?}");
        if let (Some(x), Some(y)) = (mnt.blobs.get(&i), plain.blobs.get(&i)) {
            let d = first_diff(x, y);
            let show = |v: &[u8]| hex(&v[d.min(v.len())..(d + 16).min(v.len())]);
            msg += &format!(
                "\n  first difference at byte {d}: mount {} vs plain {}",
                show(x),
                show(y)
            );
        }
        let from = i.saturating_sub(3);
        msg += "\n  preceding steps (mount):";
        for l in &mnt.lines[from.min(mnt.lines.len())..i.min(mnt.lines.len())] {
            msg += &format!("\n    {l}");
        }
        panic!("{msg}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha(b: &[u8]) -> String {
    hex(&Sha256::digest(b)[..8])
}

/// errno of an `io::Result`.
fn en<T>(r: io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Result of a libc call that returns 0 or -1.
fn lc(r: libc::c_int) -> Result<(), i32> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    }
}

fn cs(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Deterministic pseudo-random bytes.
fn pat(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One kind of tree entry, with what can be compared between the mount and a plain directory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ent {
    File {
        size: u64,
        nlink: u64,
        sha: String,
        mode: u32,
    },
    Dir {
        mode: u32,
    },
    Symlink(Vec<u8>),
    Fifo,
    Socket,
    Other,
}

fn tree(root: &Path) -> BTreeMap<String, Ent> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Ent>) {
        for e in fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("dir entry");
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let md = fs::symlink_metadata(&p).expect("lstat");
            let ft = md.file_type();
            let ent = if ft.is_dir() {
                walk(root, &p, out);
                Ent::Dir {
                    mode: md.mode() & 0o7777,
                }
            } else if ft.is_file() {
                let data = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                assert_eq!(
                    data.len() as u64,
                    md.len(),
                    "{rel}: stat size vs bytes read"
                );
                Ent::File {
                    size: md.len(),
                    nlink: md.nlink(),
                    sha: sha(&data),
                    mode: md.mode() & 0o7777,
                }
            } else if ft.is_symlink() {
                Ent::Symlink(
                    fs::read_link(&p)
                        .expect("readlink")
                        .into_os_string()
                        .into_vec(),
                )
            } else if ft.is_fifo() {
                Ent::Fifo
            } else if ft.is_socket() {
                Ent::Socket
            } else {
                Ent::Other
            };
            out.insert(rel, ent);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_trees_equal(mnt: &Path, plain: &Path) {
    let (a, b) = (tree(mnt), tree(plain));
    for (k, v) in &b {
        assert_eq!(a.get(k), Some(v), "entry {k}: mount vs plain");
    }
    for k in a.keys() {
        assert!(b.contains_key(k), "entry {k} exists only on the mount");
    }
}

/// A volume, its mount and a plain directory to compare with. Fields drop in order: the mount
/// first, the volume's temp dir last.
struct Fx {
    m: Option<Mount>,
    plain: tempfile::TempDir,
    v: Volume,
    mount_args: Vec<&'static str>,
}

impl Fx {
    fn new() -> Fx {
        Self::with(&[])
    }

    fn with(init: &[&str]) -> Fx {
        Self::with_mount_args(init, &[])
    }

    fn with_mount_args(init: &[&str], mount_args: &[&'static str]) -> Fx {
        Self::build(init, mount_args, |_| {})
    }

    /// A fixture whose volume `setup` prepares before the first mount.
    fn build(init: &[&str], mount_args: &[&'static str], setup: impl FnOnce(&Volume)) -> Fx {
        let v = Volume::new(init);
        setup(&v);
        let m = v.mount_with(mount_args);
        let plain = tempfile::Builder::new()
            .prefix("kmsfs-plain-")
            .tempdir()
            .expect("plain tempdir");
        Fx {
            m: Some(m),
            plain,
            v,
            mount_args: mount_args.to_vec(),
        }
    }

    fn mnt(&self) -> PathBuf {
        self.v.mnt.clone()
    }

    fn plain(&self) -> PathBuf {
        self.plain.path().to_path_buf()
    }

    /// Runs `f` on the mount, then on the plain directory, and compares the logs.
    fn run(&self, secs: u64, f: impl Fn(&Path, &mut Log) + Send + 'static) {
        let (a, b) = (self.mnt(), self.plain());
        with_timeout(secs, move || {
            let mut la = Log::default();
            f(&a, &mut la);
            let mut lb = Log::default();
            f(&b, &mut lb);
            check_logs(&la, &lb);
        });
    }

    /// Runs `f` on the mount only.
    fn on_mount<T: Send + 'static>(
        &self,
        secs: u64,
        f: impl FnOnce(&Path) -> T + Send + 'static,
    ) -> T {
        let a = self.mnt();
        with_timeout(secs, move || f(&a))
    }

    /// Unmounts (the daemon must have logged no error) and mounts again.
    fn remount(&mut self) {
        if let Some(m) = self.m.take() {
            unmount_checked(m, &self.v.mnt);
        }
        assert!(!is_mounted(&self.v.mnt));
        self.m = Some(self.v.mount_with(&self.mount_args));
    }

    /// Unmounts (for tests that did not use the plain directory).
    fn finish_mount_only(mut self) {
        if let Some(m) = self.m.take() {
            unmount_checked(m, &self.v.mnt);
        }
        assert!(!is_mounted(&self.v.mnt));
    }

    /// Remounts and compares the whole tree with the plain directory; then unmounts.
    fn finish(mut self) {
        self.remount();
        let (a, b) = (self.mnt(), self.plain());
        with_timeout(120, move || assert_trees_equal(&a, &b));
        if let Some(m) = self.m.take() {
            unmount_checked(m, &self.v.mnt);
        }
        assert!(!is_mounted(&self.v.mnt));
    }
}

/// Unmounts cleanly; the daemon must have logged no error.
fn unmount_checked(m: Mount, _mnt: &Path) {
    let err = support::unmount(m);
    assert!(
        !err.contains("ERROR") && !err.contains("integrity"),
        "daemon logged errors:\n{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Reads and writes
// ---------------------------------------------------------------------------------------------

/// Initial sizes around block boundaries (4 KiB blocks).
const SIZES: &[u64] = &[
    0, 1, 100, 4095, 4096, 4097, 5000, 8191, 8192, 8193, 12288, 20000,
];
/// (offset, length) of one write into a file of each initial size.
const WRITES: &[(u64, usize)] = &[
    (0, 0),
    (0, 1),
    (0, 4096),
    (1, 4095),
    (4095, 1),
    (4095, 2),
    (4096, 1),
    (4096, 4096),
    (4097, 10),
    (3996, 100),
    (4000, 5000),
    (4999, 1),
    (8191, 1),
    (8192, 3),
    (12287, 2),
    (100, 12000),
    (20005, 7),
    (30000, 4097),
];

#[test]
fn write_at_every_offset_and_size_around_block_boundaries() {
    write_at_every_offset_and_size_around_block_boundaries_in(&[]);
}

#[test]
fn write_at_every_offset_and_size_around_block_boundaries_without_writeback_cache() {
    write_at_every_offset_and_size_around_block_boundaries_in(&["--no-writeback-cache"]);
}

fn write_at_every_offset_and_size_around_block_boundaries_in(mount_args: &[&'static str]) {
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.run(300, |root, log| {
        for (i, &s) in SIZES.iter().enumerate() {
            for (j, &(off, len)) in WRITES.iter().enumerate() {
                let p = root.join(format!("f{i}_{j}"));
                fs::write(&p, pat(s, s as usize)).unwrap();
                let f = OpenOptions::new().write(true).open(&p).unwrap();
                log.rec(
                    format!("size {s}: pwrite {off}+{len}"),
                    en(f.write_all_at(&pat(off ^ 0x77, len), off)),
                );
                log.rec(
                    format!("size {s}: fstat after {off}+{len}"),
                    en(f.metadata().map(|m| m.len())),
                );
                drop(f);
                log.bytes(
                    format!("size {s}: content after {off}+{len}"),
                    fs::read(&p).unwrap(),
                );
            }
        }
    });
    fx.finish();
}

#[test]
fn sequences_of_writes_on_one_open_file() {
    sequences_of_writes_on_one_open_file_in(&[]);
}

#[test]
fn sequences_of_writes_on_one_open_file_without_writeback_cache() {
    sequences_of_writes_on_one_open_file_in(&["--no-writeback-cache"]);
}

fn sequences_of_writes_on_one_open_file_in(mount_args: &[&'static str]) {
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.run(120, |root, log| {
        let p = root.join("seq");
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        // Writes in both directions, overlapping, some past EOF; read back after each.
        let ops: &[(u64, usize)] = &[
            (0, 10),
            (5000, 20),
            (4090, 12),
            (8192, 1),
            (8193, 4095),
            (12288, 0),
            (2, 4),
            (16000, 9000),
            (4096, 8192),
            (3, 30000),
        ];
        for (k, &(off, len)) in ops.iter().enumerate() {
            log.rec(
                format!("op {k} pwrite {off}+{len}"),
                en(f.write_all_at(&pat(k as u64, len), off)),
            );
            log.rec(format!("op {k} size"), en(f.metadata().map(|m| m.len())));
            let mut all = Vec::new();
            f.seek(SeekFrom::Start(0)).unwrap();
            f.read_to_end(&mut all).unwrap();
            log.bytes(format!("op {k} content"), all);
        }
        // Sequential write(2)s of odd sizes through the file position.
        f.seek(SeekFrom::Start(1234)).unwrap();
        for k in 0..40u64 {
            f.write_all(&pat(100 + k, (k * 337 % 5000) as usize))
                .unwrap();
        }
        log.rec("pos", en(f.stream_position()));
        drop(f);
        log.bytes("final", fs::read(&p).unwrap());
    });
    fx.finish();
}

#[test]
fn reads_at_arbitrary_offsets_and_sizes() {
    reads_at_arbitrary_offsets_and_sizes_in(&[]);
}

#[test]
fn reads_at_arbitrary_offsets_and_sizes_without_writeback_cache() {
    reads_at_arbitrary_offsets_and_sizes_in(&["--no-writeback-cache"]);
}

fn reads_at_arbitrary_offsets_and_sizes_in(mount_args: &[&'static str]) {
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.run(120, |root, log| {
        let size = 3 * 4096 + 123;
        let p = root.join("r");
        fs::write(&p, pat(9, size)).unwrap();
        let f = File::open(&p).unwrap();
        let offs = [
            0u64, 1, 100, 4095, 4096, 4097, 8191, 8192, 8193, 12287, 12288, 12300, 12410, 12411,
            12412, 20000,
        ];
        let lens = [0usize, 1, 2, 100, 4095, 4096, 4097, 8192, 20000];
        for &o in &offs {
            for &l in &lens {
                let mut buf = vec![0u8; l];
                let r = en(f.read_at(&mut buf, o));
                if let Ok(n) = r {
                    buf.truncate(n);
                }
                log.rec(format!("pread {o}+{l} ->"), r);
                log.bytes(format!("pread {o}+{l} data"), buf);
            }
        }
    });
    // With O_DIRECT the kernel passes our offsets and sizes to the file system unchanged (the
    // page cache would round them to pages): exercise the model's read path directly.
    fx.on_mount(120, |mnt| {
        let want = pat(9, 3 * 4096 + 123);
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(mnt.join("r"))
            .unwrap();
        for o in [
            0u64, 1, 4095, 4096, 4097, 8000, 12287, 12288, 12410, 12411, 12500,
        ] {
            for l in [1usize, 7, 4095, 4096, 4097, 9000] {
                let mut buf = vec![0u8; l];
                let n = f.read_at(&mut buf, o).unwrap();
                let o = o as usize;
                let exp = &want[o.min(want.len())..(o + l).min(want.len())];
                assert_eq!(&buf[..n], exp, "O_DIRECT pread {o}+{l}");
            }
        }
    });
    fx.finish();
}

#[test]
fn holes_read_as_zeros() {
    holes_read_as_zeros_in(&[]);
}

#[test]
fn holes_read_as_zeros_without_writeback_cache() {
    holes_read_as_zeros_in(&["--no-writeback-cache"]);
}

fn holes_read_as_zeros_in(mount_args: &[&'static str]) {
    let mut fx = Fx::with_mount_args(&[], mount_args);
    fx.run(120, |root, log| {
        // Write past EOF: the gap reads as zeros.
        let p = root.join("holey");
        fs::write(&p, b"head").unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        f.write_all_at(b"tail", 3 * 4096 + 10).unwrap();
        f.write_all_at(b"far", 1 << 20).unwrap();
        f.write_all_at(b"mid", 100_000).unwrap();
        log.rec("size", f.metadata().unwrap().len());
        drop(f);
        log.bytes("content", fs::read(&p).unwrap());
        // A file extended by truncate only: all zeros.
        let q = root.join("sparse");
        File::create(&q).unwrap().set_len(5 << 20).unwrap();
        let data = fs::read(&q).unwrap();
        log.rec("sparse len", data.len());
        log.rec("sparse all zero", data.iter().all(|b| *b == 0));
        // seek past end, then write.
        let mut g = File::create(root.join("seeked")).unwrap();
        g.seek(SeekFrom::Start(9999)).unwrap();
        g.write_all(b"x").unwrap();
        drop(g);
        log.bytes("seeked", fs::read(root.join("seeked")).unwrap());
    });
    fx.remount();
    // The volume has sparse files: the 5 MiB extension is stored as holes (the backing file
    // system allocates almost nothing for it; tests/sparse.rs has more).
    let cipher = fx.v.cipher.clone();
    with_timeout(30, move || {
        let big = cipher_files(&cipher)
            .into_iter()
            .map(|p| fs::metadata(&p).unwrap())
            .max_by_key(|m| m.len())
            .unwrap();
        assert!(
            big.len() > 5 << 20,
            "cipher file of the 5 MiB file is {} bytes",
            big.len()
        );
        assert!(
            big.blocks() * 512 < 1 << 20,
            "holes are not allocated, got {} blocks",
            big.blocks()
        );
    });
    // ... and the mount reports them, as ext4 does: a hole from 0, no data after it.
    fx.on_mount(30, |mnt| {
        let f = File::open(mnt.join("sparse")).unwrap();
        let seek = |off, whence| unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
        assert_eq!(seek(0, libc::SEEK_HOLE), 0);
        assert_eq!(seek(4096, libc::SEEK_HOLE), 4096);
        assert_eq!(seek(0, libc::SEEK_DATA), -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::ENXIO));
    });
    fx.finish();
}

/// Regular files of the cipher directory outside `.kmsfs/`, without kmsfs-internal files.
fn cipher_files(cipher: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![cipher.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let n = name.as_bytes();
            if d == cipher && n == b".kmsfs" {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && n != b"kmsfs.dirid" && !n.ends_with(b".name") {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn truncate_up_and_down_to_many_sizes() {
    truncate_up_and_down_to_many_sizes_in(&[]);
}

#[test]
fn truncate_up_and_down_to_many_sizes_without_writeback_cache() {
    truncate_up_and_down_to_many_sizes_in(&["--no-writeback-cache"]);
}

fn truncate_up_and_down_to_many_sizes_in(mount_args: &[&'static str]) {
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.run(300, |root, log| {
        for (i, &s) in SIZES.iter().enumerate() {
            for (j, &t) in SIZES.iter().chain(&[1 << 20, 4096 * 3 + 1]).enumerate() {
                let p = root.join(format!("t{i}_{j}"));
                fs::write(&p, pat(s + 1, s as usize)).unwrap();
                let r = if (i + j) % 2 == 0 {
                    // ftruncate
                    en(OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .and_then(|f| f.set_len(t)))
                } else {
                    // truncate(2) by path (no open handle)
                    lc(unsafe { libc::truncate(cs(&p).as_ptr(), t as libc::off_t) })
                };
                log.rec(format!("truncate {s} -> {t}"), r);
                log.rec(format!("size {s} -> {t}"), fs::metadata(&p).unwrap().len());
                log.bytes(format!("content {s} -> {t}"), fs::read(&p).unwrap());
            }
        }
        // Down, write, up, write, down again on one handle.
        let p = root.join("cycle");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        for (k, &t) in [9000u64, 4097, 4096, 1, 0, 12289, 8191, 3]
            .iter()
            .enumerate()
        {
            f.set_len(t).unwrap();
            f.write_all_at(&pat(k as u64, 3000), t / 2).unwrap();
            log.rec(format!("cycle {k} size"), f.metadata().unwrap().len());
            log.bytes(format!("cycle {k}"), fs::read(&p).unwrap());
        }
        // Truncating a directory or a negative size fails.
        fs::create_dir(root.join("d")).unwrap();
        log.rec(
            "truncate dir",
            lc(unsafe { libc::truncate(cs(&root.join("d")).as_ptr(), 0) }),
        );
        log.rec(
            "ftruncate -1",
            lc(unsafe { libc::ftruncate(f.as_raw_fd(), -1) }),
        );
        let ro = File::open(&p).unwrap();
        log.rec("ftruncate read-only fd", en(ro.set_len(0)));
    });
    fx.finish();
}

// ---------------------------------------------------------------------------------------------
// open flags
// ---------------------------------------------------------------------------------------------

#[test]
fn o_append_single_and_two_appenders() {
    o_append_single_and_two_appenders_in(&[]);
}

#[test]
fn o_append_single_and_two_appenders_without_writeback_cache() {
    o_append_single_and_two_appenders_in(&["--no-writeback-cache"]);
}

fn o_append_single_and_two_appenders_in(mount_args: &[&'static str]) {
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.run(120, |root, log| {
        let p = root.join("log");
        fs::write(&p, b"start\n").unwrap();
        let mut a = OpenOptions::new().append(true).open(&p).unwrap();
        a.write_all(b"one\n").unwrap();
        // lseek does not matter for O_APPEND; pwrite on an O_APPEND descriptor appends too (Linux).
        a.seek(SeekFrom::Start(0)).unwrap();
        a.write_all(b"two\n").unwrap();
        log.rec("pwrite on O_APPEND", en(a.write_at(b"three\n", 0)));
        log.bytes("after single appender", fs::read(&p).unwrap());
        // Two descriptors appending alternately, one of them with odd sizes crossing blocks.
        let mut b = OpenOptions::new().append(true).open(&p).unwrap();
        for k in 0..30u64 {
            a.write_all(&pat(k, 700)).unwrap();
            b.write_all(&pat(k + 1000, 4096 + k as usize)).unwrap();
        }
        log.rec("size", fs::metadata(&p).unwrap().len());
        log.bytes("after two appenders", fs::read(&p).unwrap());
        // O_APPEND with O_RDWR: reads at the position, writes at the end.
        let mut c = OpenOptions::new().read(true).append(true).open(&p).unwrap();
        let mut head = [0u8; 6];
        c.read_exact(&mut head).unwrap();
        log.rec("read head", head);
        c.write_all(b"end").unwrap();
        log.rec("pos after append", c.stream_position().unwrap());
        log.bytes("final", fs::read(&p).unwrap());
    });
    // Two threads appending concurrently: every record lands whole and exactly once.
    fx.on_mount(120, concurrent_appenders);
    let plain = fx.plain();
    with_timeout(60, move || concurrent_appenders(&plain));
    fx.finish();
}

/// O_APPEND taken off a descriptor with `fcntl(F_SETFL)`, or passed over for one write with
/// `pwritev2(RWF_NOAPPEND)`, and put on a plain one: writes land where ext4 puts them. Without
/// the writeback cache the model appended every write through a handle opened with O_APPEND,
/// whatever offset the kernel sent (it resolves O_APPEND itself, from the descriptor's current
/// flags): those writes went to the end of the file instead.
#[test]
fn o_append_changed_after_open() {
    o_append_changed_after_open_in(&[]);
}

#[test]
fn o_append_changed_after_open_without_writeback_cache() {
    o_append_changed_after_open_in(&["--no-writeback-cache"]);
}

fn o_append_changed_after_open_in(mount_args: &[&'static str]) {
    /// RWF_NOAPPEND (Linux 6.9): this write at its offset, on an O_APPEND descriptor.
    const RWF_NOAPPEND: libc::c_int = 0x20;
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.run(120, |root, log| {
        let p = root.join("flags");
        let mut a = OpenOptions::new()
            .read(true)
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        a.write_all(&pat(1, 5000)).unwrap();
        let fd = a.as_raw_fd();
        // SAFETY: fcntl on a descriptor this test owns.
        let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        let r = unsafe { libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_APPEND) };
        log.rec("fcntl clear O_APPEND", lc(r));
        log.rec("pwrite at 0", en(a.write_at(b"head", 0)));
        a.seek(SeekFrom::Start(4090)).unwrap();
        log.rec("write at 4090", en(a.write_all(&pat(2, 20))));
        log.rec("size", en(a.metadata().map(|m| m.len())));
        let b = OpenOptions::new().append(true).open(&p).unwrap();
        let data = pat(3, 10);
        let iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: one iovec over `data`, which outlives the call.
        let n = unsafe { libc::pwritev2(b.as_raw_fd(), &iov, 1, 100, RWF_NOAPPEND) };
        log.rec(
            "pwritev2 RWF_NOAPPEND at 100",
            if n < 0 {
                Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
            } else {
                Ok(n)
            },
        );
        drop(b);
        let mut c = OpenOptions::new().write(true).open(&p).unwrap();
        // SAFETY: fcntl on a descriptor this test owns.
        let r = unsafe { libc::fcntl(c.as_raw_fd(), libc::F_SETFL, libc::O_APPEND) };
        log.rec("fcntl set O_APPEND", lc(r));
        log.rec("append through it", en(c.write_all(b"tail")));
        drop((a, c));
        log.rec("size after", fs::metadata(&p).unwrap().len());
        log.bytes("content", fs::read(&p).unwrap());
    });
    fx.finish();
}

fn concurrent_appenders(root: &Path) {
    let p = root.join("shared.log");
    File::create(&p).unwrap();
    let threads: Vec<_> = (0..3u8)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let mut f = OpenOptions::new().append(true).open(&p).unwrap();
                for k in 0..200u32 {
                    // Record: "<t>:<k>:" + filler of a length that varies, then '\n'.
                    let mut rec = format!("{t}:{k}:").into_bytes();
                    rec.extend(std::iter::repeat_n(b'a' + t, (k as usize * 97) % 3000));
                    rec.push(b'\n');
                    f.write_all(&rec).unwrap();
                }
            })
        })
        .collect();
    // Join every thread before failing, so none is left working on the mount.
    let results: Vec<_> = threads.into_iter().map(|t| t.join()).collect();
    for r in results {
        r.unwrap();
    }
    let data = fs::read(&p).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let s = std::str::from_utf8(line).expect("record is text");
        let mut parts = s.splitn(3, ':');
        let (t, k, fill) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let (t, k): (u8, u32) = (t.parse().unwrap(), k.parse().unwrap());
        assert_eq!(fill.len(), (k as usize * 97) % 3000, "record {t}:{k} torn");
        assert!(
            fill.bytes().all(|b| b == b'a' + t),
            "record {t}:{k} mixed with another"
        );
        assert!(seen.insert((t, k)), "record {t}:{k} twice");
        total += 1;
    }
    assert_eq!(total, 600, "{}: records lost", root.display());
    // The order of records differs from run to run: not part of the tree comparison.
    fs::remove_file(&p).unwrap();
}

#[test]
fn o_trunc_and_o_excl() {
    o_trunc_and_o_excl_in(&[]);
}

#[test]
fn o_trunc_and_o_excl_without_writeback_cache() {
    o_trunc_and_o_excl_in(&["--no-writeback-cache"]);
}

fn o_trunc_and_o_excl_in(mount_args: &[&'static str]) {
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.run(60, |root, log| {
        let p = root.join("f");
        fs::write(&p, pat(1, 10000)).unwrap();
        // O_TRUNC on an existing file empties it.
        let mut f = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        log.rec("size after O_TRUNC", f.metadata().unwrap().len());
        f.write_all(b"new").unwrap();
        drop(f);
        log.bytes("content", fs::read(&p).unwrap());
        // O_TRUNC with O_RDONLY on Linux truncates as well? (unspecified; not compared).
        // O_CREAT|O_TRUNC on an existing file: same.
        fs::write(&p, b"again").unwrap();
        log.bytes("rewritten", fs::read(&p).unwrap());
        // O_EXCL
        log.rec(
            "O_EXCL existing",
            en(OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
                .map(|_| ())),
        );
        log.rec(
            "O_EXCL new",
            en(OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(root.join("g"))
                .map(|_| ())),
        );
        log.rec(
            "O_EXCL again",
            en(OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(root.join("g"))
                .map(|_| ())),
        );
        std::os::unix::fs::symlink("dangling-target", root.join("sl")).unwrap();
        log.rec(
            "O_EXCL on symlink",
            en(OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(root.join("sl"))
                .map(|_| ())),
        );
        log.rec(
            "O_CREAT through dangling symlink",
            en(OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(root.join("sl"))
                .map(|_| ())),
        );
        log.rec(
            "target created",
            fs::metadata(root.join("dangling-target"))
                .map(|m| m.len())
                .ok(),
        );
        fs::create_dir(root.join("dir")).unwrap();
        log.rec(
            "open dir for write",
            en(OpenOptions::new()
                .write(true)
                .open(root.join("dir"))
                .map(|_| ())),
        );
        log.rec(
            "open missing",
            en(File::open(root.join("missing")).map(|_| ())),
        );
        log.rec(
            "O_CREAT in missing dir",
            en(File::create(root.join("nodir/x")).map(|_| ())),
        );
        log.rec(
            "O_DIRECTORY on file",
            en(OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY)
                .open(&p)
                .map(|_| ())),
        );
        log.rec(
            "O_NOFOLLOW on symlink",
            en(OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(root.join("sl"))
                .map(|_| ())),
        );
        // A new file gets the requested mode (the umask of this process applies on both sides).
        let h = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(root.join("moded"))
            .unwrap();
        log.rec("mode", h.metadata().unwrap().mode());
        // Set-user-id and set-group-id bits asked for at creation are kept.
        for (n, m) in [("suid", 0o4755), ("sgid", 0o2750), ("sticky", 0o1644)] {
            let h = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(m)
                .open(root.join(n))
                .unwrap();
            log.rec(format!("mode {n}"), h.metadata().unwrap().mode());
            log.rec(
                format!("mode {n} by path"),
                fs::metadata(root.join(n)).unwrap().mode(),
            );
        }
    });
    fx.finish();
}

/// access(2) and exec for root, on a mount made by root without --allow-other (where kmsfs,
/// not the kernel, answers access(2): see `fuse::session::kernel_checks_permissions`) and with
/// `-o default_permissions`: root reads and writes anything, searches any directory, and
/// executes only what has some `x` bit, as on ext4.
#[test]
fn root_access_and_exec_like_a_local_file_system() {
    root_access_and_exec_in(&[]);
}

#[test]
fn root_access_and_exec_like_a_local_file_system_with_default_permissions() {
    root_access_and_exec_in(&["-o", "default_permissions"]);
}

fn root_access_and_exec_in(mount_args: &[&'static str]) {
    Fx::with_mount_args(&[], mount_args).run(60, |root, log| {
        for mode in [0o000, 0o600, 0o644, 0o700, 0o010, 0o001, 0o4644, 0o755] {
            let f = root.join(format!("f{mode:o}"));
            fs::write(&f, b"#!/bin/sh\nexit 7\n").unwrap();
            let d = root.join(format!("d{mode:o}"));
            fs::create_dir(&d).unwrap();
            fs::write(d.join("inside"), b"x").unwrap();
            fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
            fs::set_permissions(&d, fs::Permissions::from_mode(mode)).unwrap();
            for (what, p) in [("file", &f), ("dir", &d)] {
                for (name, m) in [
                    ("F_OK", libc::F_OK),
                    ("R_OK", libc::R_OK),
                    ("W_OK", libc::W_OK),
                    ("X_OK", libc::X_OK),
                    ("R_OK|W_OK|X_OK", libc::R_OK | libc::W_OK | libc::X_OK),
                ] {
                    // SAFETY: a valid NUL-terminated path.
                    let r = lc(unsafe { libc::access(cs(p).as_ptr(), m) });
                    log.rec(format!("{what} {mode:o} access {name}"), r);
                }
            }
            let run = std::process::Command::new(&f).status();
            log.rec(
                format!("exec file {mode:o}"),
                run.map(|s| s.code()).map_err(|e| e.raw_os_error()),
            );
            log.rec(
                format!("read inside dir {mode:o}"),
                en(fs::read(d.join("inside"))),
            );
            log.rec(
                format!("create inside dir {mode:o}"),
                en(fs::write(d.join("new"), b"y")),
            );
            log.rec(
                format!("write file {mode:o}"),
                en(OpenOptions::new().append(true).open(&f).map(|_| ())),
            );
        }
    });
}

/// A directory far larger than one readdir reply: every name exactly once, with the same
/// types and sizes as on ext4, listed plainly (`ls -f`), with attributes (`ls -l`, READDIRPLUS),
/// after a remount (cold), and while it shrinks between two reads of one stream. Listing used
/// to prepare all remaining entries for every reply (quadratic: 1.6 s for 15,000 files).
#[test]
fn a_large_directory_lists_every_name_once() {
    let mut fx = Fx::new();
    let list = |root: &Path, log: &mut Log| {
        let mut names: Vec<(String, bool, u64)> = fs::read_dir(root.join("big"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                (e.file_name().into_string().unwrap(), m.is_dir(), m.len())
            })
            .collect();
        let n = names.len();
        names.sort();
        names.dedup();
        log.rec("entries", n);
        log.rec("distinct", names.len());
        log.bytes(
            "listing",
            names
                .iter()
                .map(|(n, d, l)| format!("{n} {d} {l}\n"))
                .collect::<String>()
                .into_bytes(),
        );
    };
    fx.run(120, move |root, log| {
        fs::create_dir(root.join("big")).unwrap();
        for i in 0..3000 {
            let p = root
                .join("big")
                .join(format!("entry-{i:05}-{}", "x".repeat(i % 40)));
            if i % 100 == 0 {
                fs::create_dir(&p).unwrap();
            } else {
                fs::write(&p, vec![b'a'; i % 17]).unwrap();
            }
        }
        list(root, log);
    });
    fx.remount();
    fx.run(120, move |root, log| {
        list(root, log);
        // Remove entries while a stream is being read: nothing is returned twice, and every
        // entry that was not removed is returned.
        let dir = root.join("big");
        let mut it = fs::read_dir(&dir).unwrap();
        let mut seen: Vec<String> = (&mut it)
            .take(1000)
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        for i in (1..3000).step_by(7).filter(|i| i % 100 != 0) {
            fs::remove_file(dir.join(format!("entry-{i:05}-{}", "x".repeat(i % 40)))).unwrap();
        }
        seen.extend(it.map(|e| e.unwrap().file_name().into_string().unwrap()));
        let n = seen.len();
        seen.sort();
        seen.dedup();
        assert_eq!(n, seen.len(), "a name came twice");
        let now: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        for name in &now {
            assert!(seen.contains(name), "{name} exists but was not listed");
        }
        log.rec("left after removals", now.len());
    });
    fx.finish();
}

/// A name looked up while missing is remembered as missing by the kernel (a negative entry
/// with the entry timeout): every way of making it exist must replace that at once.
#[test]
fn missing_names_exist_as_soon_as_they_are_made() {
    let fx = Fx::new();
    fx.run(60, |root, log| {
        fs::write(root.join("src"), b"data").unwrap();
        fs::create_dir(root.join("srcdir")).unwrap();
        type Make = Box<dyn Fn(&Path) -> io::Result<()>>;
        let steps: [(&str, Make); 7] = [
            ("create", Box::new(|p| fs::write(p, b"x"))),
            ("mkdir", Box::new(|p| fs::create_dir(p))),
            (
                "symlink",
                Box::new(|p| std::os::unix::fs::symlink("src", p)),
            ),
            (
                "link",
                Box::new(|p| fs::hard_link(p.with_file_name("src"), p)),
            ),
            (
                "rename file",
                Box::new(|p| fs::rename(p.with_file_name("src"), p)),
            ),
            (
                "rename dir",
                Box::new(|p| fs::rename(p.with_file_name("srcdir"), p)),
            ),
            (
                "mkfifo",
                Box::new(|p| {
                    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
                    // SAFETY: a valid NUL-terminated path.
                    if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                }),
            ),
        ];
        for (i, (what, make)) in steps.iter().enumerate() {
            let p = root.join(format!("n{i}"));
            log.rec(
                format!("{what}: stat before"),
                en(fs::symlink_metadata(&p)).map(|_| ()),
            );
            log.rec(
                format!("{what}: stat before, again"),
                en(fs::symlink_metadata(&p)).map(|_| ()),
            );
            log.rec(format!("{what}: make"), en(make(&p)));
            log.rec(
                format!("{what}: stat after"),
                en(fs::symlink_metadata(&p)).map(|m| m.file_type().is_dir()),
            );
            log.rec(
                format!("{what}: listed"),
                fs::read_dir(root)
                    .unwrap()
                    .any(|e| e.unwrap().file_name() == p.file_name().unwrap()),
            );
        }
        // And a name that goes away and comes back.
        let p = root.join("again");
        fs::write(&p, b"1").unwrap();
        fs::remove_file(&p).unwrap();
        log.rec("removed: stat", en(fs::metadata(&p)).map(|_| ()));
        fs::write(&p, b"22").unwrap();
        log.rec("recreated: size", en(fs::metadata(&p)).map(|m| m.len()));
    });
    fx.finish();
}

/// Set-user-id and set-group-id are cleared by a write or truncate from a process without
/// CAP_FSETID and by any chown, kept for root's writes, and set-group-id without group execute
/// (a locking mark) survives: exactly as on ext4. kmsfs clears them itself
/// (FUSE_HANDLE_KILLPRIV_V2), so the mode seen right after (through the kernel's attribute
/// cache) must already be the new one.
#[test]
fn privileges_cleared_like_a_local_file_system() {
    const OTHER: u32 = 4246;
    let fx = Fx::build(
        &[],
        &["--allow-other"],
        allow_everyone_to_use_the_default_key,
    );
    fs::set_permissions(fx.plain(), fs::Permissions::from_mode(0o755)).unwrap();
    fx.run(60, |root, log| {
        fs::set_permissions(root, fs::Permissions::from_mode(0o777)).unwrap();
        let made = |n: &str, mode: u32| {
            let p = root.join(n);
            fs::write(&p, b"0123456789").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            // Read the mode once so the kernel caches it before the change.
            let _ = fs::metadata(&p).unwrap().mode();
            p
        };
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        let other = |cmd: String| as_uid(OTHER, &cmd).status.success();

        let p = made("written by other", 0o6777);
        log.rec(
            "other appends",
            other(format!("echo x >> '{}'", p.display())),
        );
        log.rec("mode after other's write", mode(&p));
        let p = made("written by root", 0o6777);
        OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        log.rec("mode after root's write", mode(&p));
        let p = made("truncated by other", 0o6777);
        log.rec(
            "other truncates",
            other(format!("truncate -s 3 '{}'", p.display())),
        );
        log.rec("mode after other's truncate", mode(&p));
        let p = made("truncated by root", 0o6777);
        OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(3)
            .unwrap();
        log.rec("mode after root's truncate", mode(&p));
        let p = made("chowned", 0o6755);
        std::os::unix::fs::chown(&p, Some(OTHER), None).unwrap();
        log.rec("mode after chown", mode(&p));
        let p = made("lock mark", 0o2666);
        log.rec(
            "other appends to sgid without g+x",
            other(format!("echo x >> '{}'", p.display())),
        );
        log.rec("mode after write (sgid without g+x)", mode(&p));
        let p = made("opened with O_TRUNC by other", 0o4777);
        log.rec(
            "other truncates by open",
            other(format!(": > '{}'", p.display())),
        );
        log.rec("mode after other's O_TRUNC", mode(&p));
        // fallocate too, in every mode kmsfs supports (the kernel does not flag it).
        for (i, opts) in ["", "-n", "-z", "-z -n"].into_iter().enumerate() {
            let p = made(&format!("fallocated {i}"), 0o6777);
            log.rec(
                format!("other fallocates {opts}"),
                other(format!("fallocate {opts} -l 20000 '{}'", p.display())),
            );
            log.rec(format!("mode after fallocate {opts}"), mode(&p));
        }
        // copy_file_range, which kmsfs does itself (also unflagged), fallocate and truncate, by
        // callers with and without CAP_FSETID (kmsfs looks the capability up): another user,
        // another user granted it, root, and root without it (set-group-id without group
        // execute then goes for a group root is not in).
        let src = made("copy source", 0o644);
        let setpriv = |args: &str, cmd: &str| {
            sh(&format!("setpriv {args} /bin/sh -c \"{cmd}\""))
        };
        let callers = [
            ("other", format!("--reuid {OTHER} --regid {OTHER} --clear-groups")),
            (
                "other with CAP_FSETID",
                format!(
                    "--reuid {OTHER} --regid {OTHER} --clear-groups \
                     --inh-caps +fsetid --ambient-caps +fsetid"
                ),
            ),
            ("root", String::new()),
            (
                "root without CAP_FSETID",
                "--bounding-set -fsetid --inh-caps -fsetid".to_string(),
            ),
        ];
        // Of a group none of the callers is in.
        let made_for = |n: &str, mode_before: u32| {
            let p = made(n, mode_before);
            std::os::unix::fs::chown(&p, None, Some(OTHER + 1)).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode_before)).unwrap();
            let _ = mode(&p);
            p
        };
        for (who, args) in &callers {
            for mode_before in [0o6777, 0o2666] {
                let p = made_for(&format!("copied into by {who} {mode_before:o}"), mode_before);
                let py = format!(
                    "python3 -c 'import os; s = os.open(\\\"{}\\\", os.O_RDONLY); \
                     d = os.open(\\\"{}\\\", os.O_WRONLY); print(os.copy_file_range(s, d, 5, 0, 2))'",
                    src.display(),
                    p.display()
                );
                let o = setpriv(args, &py);
                log.rec(
                    format!("{who} copies into {mode_before:o} with copy_file_range"),
                    String::from_utf8_lossy(&o.stdout).trim().to_string(),
                );
                log.rec(format!("mode after {who}'s copy into {mode_before:o}"), mode(&p));
                log.rec(format!("content after {who}'s copy"), fs::read(&p).unwrap());
                let p = made_for(&format!("fallocated by {who} {mode_before:o}"), mode_before);
                let o = setpriv(args, &format!("fallocate -l 20000 '{}'", p.display()));
                log.rec(format!("{who} fallocates {mode_before:o}"), o.status.success());
                log.rec(format!("mode after {who}'s fallocate, {mode_before:o}"), mode(&p));
                let p = made_for(&format!("truncated by {who} {mode_before:o}"), mode_before);
                let o = setpriv(args, &format!("truncate -s 3 '{}'", p.display()));
                log.rec(format!("{who} truncates {mode_before:o}"), o.status.success());
                log.rec(format!("mode after {who}'s truncate, {mode_before:o}"), mode(&p));
            }
        }
        let p = made("fallocated by root", 0o6777);
        let ok = std::process::Command::new("fallocate")
            .args(["-l", "20000"])
            .arg(&p)
            .status()
            .unwrap()
            .success();
        log.rec("root fallocates", ok);
        log.rec("mode after root's fallocate", mode(&p));
    });
    fx.finish();
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

#[test]
fn mkdir_rmdir_unlink() {
    let fx = Fx::new();
    fx.run(60, |root, log| {
        let d = root.join("d");
        log.rec("mkdir", en(fs::create_dir(&d)));
        log.rec("mkdir again", en(fs::create_dir(&d)));
        log.rec("mkdir nested", en(fs::create_dir_all(d.join("a/b/c"))));
        log.rec("mkdir missing parent", en(fs::create_dir(root.join("x/y"))));
        fs::write(d.join("file"), b"x").unwrap();
        log.rec("rmdir non-empty", en(fs::remove_dir(&d)));
        log.rec("rmdir non-empty nested", en(fs::remove_dir(d.join("a/b"))));
        log.rec("rmdir file", en(fs::remove_dir(d.join("file"))));
        log.rec("unlink dir", en(fs::remove_file(d.join("a"))));
        log.rec("unlink", en(fs::remove_file(d.join("file"))));
        log.rec("unlink again", en(fs::remove_file(d.join("file"))));
        log.rec("rmdir missing", en(fs::remove_dir(d.join("zzz"))));
        log.rec("rmdir leaf", en(fs::remove_dir(d.join("a/b/c"))));
        log.rec(
            "rmdir chain",
            en(fs::remove_dir(d.join("a/b")).and_then(|_| fs::remove_dir(d.join("a")))),
        );
        log.rec("rmdir now empty", en(fs::remove_dir(&d)));
        log.rec(
            "rmdir dot",
            lc(unsafe { libc::rmdir(cs(&root.join("x/..")).as_ptr()) }),
        );
        fs::create_dir(&d).unwrap();
        log.rec(
            "rmdir d/.",
            lc(unsafe { libc::rmdir(cs(&d.join(".")).as_ptr()) }),
        );
        log.rec(
            "mkdir mode",
            en(fs::DirBuilder::new().mode(0o751).create(root.join("m"))),
        );
        log.rec("mode", fs::metadata(root.join("m")).unwrap().mode());
        log.rec("nlink root-level dir with 2 subdirs", {
            fs::create_dir(d.join("s1")).unwrap();
            fs::create_dir(d.join("s2")).unwrap();
            fs::write(d.join("f"), b"").unwrap();
            fs::metadata(&d).unwrap().nlink()
        });
        // Many entries, then remove them all: the directory must be removable (no leftovers).
        for k in 0..100 {
            fs::write(d.join(format!("n{k}")), b"").unwrap();
        }
        for k in 0..100 {
            fs::remove_file(d.join(format!("n{k}"))).unwrap();
        }
        fs::remove_dir(d.join("s1")).unwrap();
        fs::remove_dir(d.join("s2")).unwrap();
        fs::remove_file(d.join("f")).unwrap();
        log.rec("rmdir after emptying", en(fs::remove_dir(&d)));
        log.rec("entries", {
            let mut v: Vec<_> = fs::read_dir(root)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        });
    });
    fx.finish();
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> Result<(), i32> {
    lc(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cs(from).as_ptr(),
            libc::AT_FDCWD,
            cs(to).as_ptr(),
            flags,
        )
    })
}

#[test]
fn rename_variants() {
    let fx = Fx::new();
    fx.run(60, |root, log| {
        let w = |n: &str, c: &[u8]| fs::write(root.join(n), c).unwrap();
        fs::create_dir_all(root.join("a/sub")).unwrap();
        fs::create_dir_all(root.join("b")).unwrap();
        w("f1", b"one");
        w("f2", b"two");
        w("a/sub/deep", &pat(3, 9000));
        w("a/x", b"ax");
        // Over an existing file.
        log.rec(
            "rename over file",
            en(fs::rename(root.join("f1"), root.join("f2"))),
        );
        log.rec("old gone", fs::metadata(root.join("f1")).is_err());
        log.bytes("target content", fs::read(root.join("f2")).unwrap());
        // Across directories.
        log.rec(
            "across dirs",
            en(fs::rename(root.join("f2"), root.join("b/moved"))),
        );
        log.bytes("moved content", fs::read(root.join("b/moved")).unwrap());
        // A directory with contents, into another directory.
        log.rec(
            "dir with contents",
            en(fs::rename(root.join("a"), root.join("b/a2"))),
        );
        log.bytes(
            "deep content",
            fs::read(root.join("b/a2/sub/deep")).unwrap(),
        );
        log.rec("deep listing", {
            let mut v: Vec<_> = fs::read_dir(root.join("b/a2"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        });
        // Directory onto an empty directory, onto a non-empty one, file onto dir and back.
        fs::create_dir(root.join("empty")).unwrap();
        log.rec(
            "dir over empty dir",
            en(fs::rename(root.join("b/a2/sub"), root.join("empty"))),
        );
        log.rec(
            "dir over non-empty dir",
            en(fs::rename(root.join("empty"), root.join("b/a2"))),
        );
        log.rec(
            "file over dir",
            en(fs::rename(root.join("b/moved"), root.join("empty"))),
        );
        log.rec(
            "dir over file",
            en(fs::rename(root.join("empty"), root.join("b/moved"))),
        );
        log.rec(
            "dir into itself",
            en(fs::rename(root.join("b"), root.join("b/a2/inside"))),
        );
        log.rec(
            "missing source",
            en(fs::rename(root.join("nope"), root.join("b/x"))),
        );
        log.rec(
            "to itself",
            en(fs::rename(root.join("b/moved"), root.join("b/moved"))),
        );
        // RENAME_NOREPLACE
        w("n1", b"n1");
        w("n2", b"n2");
        log.rec(
            "noreplace existing",
            renameat2(&root.join("n1"), &root.join("n2"), libc::RENAME_NOREPLACE),
        );
        log.rec(
            "noreplace free",
            renameat2(&root.join("n1"), &root.join("n3"), libc::RENAME_NOREPLACE),
        );
        log.bytes("n2 untouched", fs::read(root.join("n2")).unwrap());
        // RENAME_EXCHANGE: files, file with dir, across directories.
        log.rec(
            "exchange files",
            renameat2(&root.join("n2"), &root.join("n3"), libc::RENAME_EXCHANGE),
        );
        log.bytes("n2 now", fs::read(root.join("n2")).unwrap());
        log.bytes("n3 now", fs::read(root.join("n3")).unwrap());
        log.rec(
            "exchange file and dir across dirs",
            renameat2(&root.join("n2"), &root.join("b/a2"), libc::RENAME_EXCHANGE),
        );
        log.rec(
            "kinds",
            (
                fs::metadata(root.join("n2")).unwrap().is_dir(),
                fs::metadata(root.join("b/a2")).unwrap().is_file(),
            ),
        );
        log.bytes(
            "inside after exchange",
            fs::read(root.join("n2/x")).unwrap(),
        );
        log.rec(
            "exchange with missing",
            renameat2(&root.join("n3"), &root.join("n9"), libc::RENAME_EXCHANGE),
        );
        log.rec(
            "both flags",
            renameat2(
                &root.join("n3"),
                &root.join("n2"),
                libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE,
            ),
        );
        // RENAME_WHITEOUT (what overlayfs does on its upper layer): the old name becomes a
        // whiteout, a character device 0/0. A long name (kept in a side file by kmsfs) too,
        // and a directory renamed over an empty one.
        let wo = |p: &Path| {
            fs::symlink_metadata(p).map(|m| {
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                (
                    m.file_type().is_char_device(),
                    m.rdev(),
                    m.mode() & 0o7777,
                    m.nlink(),
                )
            })
        };
        let long = "w".repeat(240);
        w("w1", b"w1");
        w(&long, b"long");
        fs::create_dir(root.join("wd")).unwrap();
        w("wd/in", b"in");
        fs::create_dir(root.join("we")).unwrap();
        for (from, to) in [("w1", "w2"), (long.as_str(), "w3"), ("wd", "we")] {
            log.rec(
                format!("whiteout {} -> {to}", &from[..2]),
                renameat2(&root.join(from), &root.join(to), libc::RENAME_WHITEOUT),
            );
            log.rec(
                format!("whiteout left at {}", &from[..2]),
                wo(&root.join(from)).ok(),
            );
        }
        log.bytes("w2 moved", fs::read(root.join("w2")).unwrap());
        log.bytes("w3 moved", fs::read(root.join("w3")).unwrap());
        log.bytes("we/in moved", fs::read(root.join("we/in")).unwrap());
        log.rec(
            "whiteout noreplace existing",
            renameat2(
                &root.join("w2"),
                &root.join("w3"),
                libc::RENAME_WHITEOUT | libc::RENAME_NOREPLACE,
            ),
        );
        log.rec(
            "whiteout noreplace free",
            renameat2(
                &root.join("w2"),
                &root.join("w4"),
                libc::RENAME_WHITEOUT | libc::RENAME_NOREPLACE,
            ),
        );
        log.rec(
            "whiteout with exchange",
            renameat2(
                &root.join("w3"),
                &root.join("w4"),
                libc::RENAME_WHITEOUT | libc::RENAME_EXCHANGE,
            ),
        );
        let mut listed: Vec<String> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('w'))
            .map(|n| {
                if n.len() > 20 {
                    format!("{}…", &n[..5])
                } else {
                    n
                }
            })
            .collect();
        listed.sort();
        log.rec("listed after whiteouts", listed);
        log.rec("remove whiteout", en(fs::remove_file(root.join(&long))));
        log.rec("remove whiteout w1", en(fs::remove_file(root.join("w1"))));
        log.rec("long name gone", wo(&root.join(&long)).is_err());
        // An open file keeps working across a rename.
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(root.join("n3"))
            .unwrap();
        fs::rename(root.join("n3"), root.join("b/n3-renamed")).unwrap();
        f.write_all(b"written after rename").unwrap();
        drop(f);
        log.bytes(
            "open across rename",
            fs::read(root.join("b/n3-renamed")).unwrap(),
        );
    });
    fx.finish();
}

#[test]
fn symlinks_relative_absolute_long() {
    let fx = Fx::new();
    fx.run(60, |root, log| {
        use std::os::unix::fs::symlink;
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("target.txt"), b"through the link").unwrap();
        let long1000: String = (0..100).map(|i| format!("dir{i:05}/")).collect::<String>() + "end";
        let long3000: String = "x/".repeat(1499) + "yy";
        let cases: Vec<(&str, String)> = vec![
            ("rel", "target.txt".into()),
            ("d/up", "../target.txt".into()),
            ("abs", "/etc/hostname".into()),
            ("abs-missing", "/no/such/absolute/path".into()),
            ("dangling", "no/such/file".into()),
            ("dot", ".".into()),
            ("long1000", long1000),
            ("long3000", long3000),
            // From 3,044 bytes kmsfs keeps the encrypted target in a side file; 4,095 is
            // PATH_MAX − 1, the longest the kernel passes (pjdfstest symlink/03.t makes one).
            ("long3044", "y/".repeat(1522)),
            ("long4095", "w/".repeat(2047) + "w"),
            ("unicode", "ünïcødé→target".into()),
        ];
        for (name, target) in &cases {
            log.rec(
                format!("symlink {name}"),
                en(symlink(target, root.join(name))),
            );
            log.rec(
                format!("readlink {name}"),
                en(fs::read_link(root.join(name))),
            );
            let md = fs::symlink_metadata(root.join(name)).unwrap();
            log.rec(
                format!("lstat {name}"),
                (md.file_type().is_symlink(), md.len()),
            );
        }
        log.rec("read through rel", en(fs::read(root.join("rel"))));
        log.rec("read through d/up", en(fs::read(root.join("d/up"))));
        log.rec("read through abs", en(fs::read(root.join("abs"))));
        log.rec("read through dangling", en(fs::read(root.join("dangling"))));
        log.rec("symlink over existing", en(symlink("x", root.join("rel"))));
        log.rec(
            "readlink on file",
            en(fs::read_link(root.join("target.txt"))),
        );
        log.rec(
            "rename symlink",
            en(fs::rename(root.join("rel"), root.join("d/rel2"))),
        );
        log.rec("readlink renamed", en(fs::read_link(root.join("d/rel2"))));
        log.rec("unlink symlink", en(fs::remove_file(root.join("abs"))));
        log.rec(
            "target still there",
            fs::read(root.join("target.txt")).is_ok(),
        );
        // A symlink to a directory can be traversed.
        symlink("d", root.join("dlink")).unwrap();
        log.rec("traverse", en(fs::read_link(root.join("dlink/rel2"))));
        // The longest target through a hard link, a rename, the other name's removal and a
        // rename over it; one byte longer is refused (by the kernel) and leaves nothing.
        log.rec(
            "hard link long4095",
            en(fs::hard_link(root.join("long4095"), root.join("d/hl"))),
        );
        log.rec(
            "rename long4095",
            en(fs::rename(root.join("long4095"), root.join("d/moved"))),
        );
        log.rec("unlink moved", en(fs::remove_file(root.join("d/moved"))));
        log.rec("readlink hard link", en(fs::read_link(root.join("d/hl"))));
        log.rec(
            "lstat hard link",
            en(fs::symlink_metadata(root.join("d/hl")).map(|m| (m.len(), m.nlink()))),
        );
        log.rec(
            "rename over long3044",
            en(fs::rename(root.join("d/hl"), root.join("long3044"))),
        );
        log.rec("readlink over", en(fs::read_link(root.join("long3044"))));
        let e = symlink("z/".repeat(2048), root.join("too-long"));
        log.rec("symlink 4096", en(e));
        log.rec(
            "lstat too-long",
            en(fs::symlink_metadata(root.join("too-long")).map(|_| ())),
        );
    });
    fx.finish();
}

#[test]
fn hard_links() {
    hard_links_in(&[]);
}

#[test]
fn hard_links_without_writeback_cache() {
    hard_links_in(&["--no-writeback-cache"]);
}

fn hard_links_in(mount_args: &[&'static str]) {
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.run(60, |root, log| {
        fs::create_dir(root.join("other")).unwrap();
        let a = root.join("a");
        fs::write(&a, pat(4, 5000)).unwrap();
        log.rec("link", en(fs::hard_link(&a, root.join("b"))));
        log.rec(
            "link other dir",
            en(fs::hard_link(&a, root.join("other/c"))),
        );
        for n in ["a", "b", "other/c"] {
            let m = fs::metadata(root.join(n)).unwrap();
            log.rec(format!("nlink {n}"), (m.nlink(), m.len()));
        }
        log.rec(
            "same ino",
            fs::metadata(&a).unwrap().ino() == fs::metadata(root.join("b")).unwrap().ino(),
        );
        // Content is shared: write through one name, read through the others.
        OpenOptions::new()
            .write(true)
            .open(root.join("b"))
            .unwrap()
            .write_all_at(b"via b", 4094)
            .unwrap();
        log.bytes("a after write via b", fs::read(&a).unwrap());
        log.bytes(
            "c after write via b",
            fs::read(root.join("other/c")).unwrap(),
        );
        // Open through a, append through c, size seen through b.
        let fa = OpenOptions::new().read(true).write(true).open(&a).unwrap();
        OpenOptions::new()
            .append(true)
            .open(root.join("other/c"))
            .unwrap()
            .write_all(&pat(5, 4000))
            .unwrap();
        log.rec("size via b", fs::metadata(root.join("b")).unwrap().len());
        log.rec("fstat via a", fa.metadata().unwrap().len());
        drop(fa);
        log.rec("unlink a", en(fs::remove_file(&a)));
        log.rec("nlink b", fs::metadata(root.join("b")).unwrap().nlink());
        log.bytes("b content", fs::read(root.join("b")).unwrap());
        log.rec(
            "link onto existing",
            en(fs::hard_link(root.join("b"), root.join("other/c"))),
        );
        log.rec(
            "link missing",
            en(fs::hard_link(root.join("nope"), root.join("x"))),
        );
        log.rec(
            "link dir",
            en(fs::hard_link(root.join("other"), root.join("dl"))),
        );
        std::os::unix::fs::symlink("b", root.join("sl")).unwrap();
        log.rec(
            "link to symlink",
            en(fs::hard_link(root.join("sl"), root.join("sl2"))),
        );
        log.rec(
            "sl2 is symlink",
            fs::symlink_metadata(root.join("sl2"))
                .unwrap()
                .file_type()
                .is_symlink(),
        );
        log.rec(
            "nlink sl",
            fs::symlink_metadata(root.join("sl")).unwrap().nlink(),
        );
        log.rec(
            "rename onto own link",
            en(fs::rename(root.join("b"), root.join("other/c"))),
        );
        log.rec(
            "both names stay",
            (
                fs::metadata(root.join("b")).is_ok(),
                fs::metadata(root.join("other/c")).is_ok(),
            ),
        );
        log.rec("unlink c", en(fs::remove_file(root.join("other/c"))));
        log.rec(
            "nlink b at end",
            fs::metadata(root.join("b")).unwrap().nlink(),
        );
    });
    fx.finish();
}

#[test]
fn unlinked_open_file_stays_usable() {
    unlinked_open_file_stays_usable_in(&[]);
}

#[test]
fn unlinked_open_file_stays_usable_without_writeback_cache() {
    unlinked_open_file_stays_usable_in(&["--no-writeback-cache"]);
}

fn unlinked_open_file_stays_usable_in(mount_args: &[&'static str]) {
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.run(60, |root, log| {
        let p = root.join("gone");
        fs::write(&p, pat(6, 6000)).unwrap();
        let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        fs::remove_file(&p).unwrap();
        log.rec("nlink", f.metadata().unwrap().nlink());
        f.write_all_at(b"still here", 5000).unwrap();
        f.set_len(7000).unwrap();
        let mut all = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut all).unwrap();
        log.bytes("content", all);
        log.rec("name gone", en(fs::metadata(&p).map(|_| ())));
        // A new file under the same name is a different file.
        fs::write(&p, b"new").unwrap();
        log.rec("new file", fs::read(&p).unwrap());
        log.rec("old size", f.metadata().unwrap().len());
    });
    fx.finish();
}

struct RawEntry {
    name: Vec<u8>,
    ino: u64,
    dtype: u8,
}

fn raw_readdir(dir: &Path) -> Vec<RawEntry> {
    let c = cs(dir);
    // SAFETY: opendir/readdir/closedir on a valid C string; entries are copied before the next
    // readdir call.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(
            !d.is_null(),
            "opendir {}: {}",
            dir.display(),
            io::Error::last_os_error()
        );
        let mut out = Vec::new();
        loop {
            let e = libc::readdir64(d);
            if e.is_null() {
                break;
            }
            let e = &*e;
            out.push(RawEntry {
                name: CStr::from_ptr(e.d_name.as_ptr()).to_bytes().to_vec(),
                ino: e.d_ino,
                dtype: e.d_type,
            });
        }
        libc::closedir(d);
        out
    }
}

#[test]
fn readdir_dot_dotdot_inode_numbers_and_types() {
    let fx = Fx::new();
    fx.run(120, |root, log| {
        fs::create_dir_all(root.join("sub/inner")).unwrap();
        for k in 0..300 {
            // Names of varying length so that listings span several readdir buffers.
            let name = format!("entry-{k:03}-{}", "n".repeat(k % 200));
            fs::write(root.join("sub").join(name), b"").unwrap();
        }
        std::os::unix::fs::symlink("x", root.join("sub/link")).unwrap();
        unsafe { libc::mkfifo(cs(&root.join("sub/fifo")).as_ptr(), 0o644) };
        for dir in [root.to_path_buf(), root.join("sub"), root.join("sub/inner")] {
            let ents = raw_readdir(&dir);
            let mut names: Vec<(Vec<u8>, u8)> = Vec::new();
            for e in &ents {
                let p = dir.join(OsStr::from_bytes(&e.name));
                let st = fs::symlink_metadata(&p).unwrap();
                if e.name == b".." && dir == root {
                    // The mount root's parent is outside the file system.
                    continue;
                }
                assert_eq!(e.ino, st.ino(), "{}: d_ino vs st_ino", p.display());
                names.push((e.name.clone(), e.dtype));
            }
            names.sort();
            let rel = dir
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            log.rec(format!("{rel} entries"), names.len());
            log.rec(format!("{rel} listing"), names);
            log.rec(
                format!("{rel} has dot and dotdot"),
                (
                    ents.iter().any(|e| e.name == b"."),
                    ents.iter().any(|e| e.name == b".."),
                ),
            );
            log.rec(format!("{rel} no duplicates"), {
                let mut n: Vec<_> = ents.iter().map(|e| e.name.clone()).collect();
                n.sort();
                n.dedup();
                n.len() == ents.len()
            });
        }
        // `..` of a subdirectory names the parent.
        let ents = raw_readdir(&root.join("sub/inner"));
        let dd = ents.iter().find(|e| e.name == b"..").unwrap();
        log.rec(
            "dotdot is parent",
            dd.ino == fs::metadata(root.join("sub")).unwrap().ino(),
        );
        // rewinddir mid-stream gives the full listing again.
        let c = cs(&root.join("sub"));
        let (first, again) = unsafe {
            let d = libc::opendir(c.as_ptr());
            let mut n = 0;
            while n < 50 && !libc::readdir64(d).is_null() {
                n += 1;
            }
            libc::rewinddir(d);
            let mut m = 0;
            while !libc::readdir64(d).is_null() {
                m += 1;
            }
            libc::closedir(d);
            (n, m)
        };
        log.rec("rewinddir", (first, again));
    });
    fx.finish();
}

/// A whole listing with `telldir` before each entry: (name, position of that entry).
fn listing_with_positions(dir: &Path) -> Vec<(Vec<u8>, libc::c_long)> {
    let c = cs(dir);
    // SAFETY: opendir/telldir/readdir/closedir on a valid C string; names are copied before
    // the next readdir call.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null(), "opendir: {}", io::Error::last_os_error());
        let mut out = Vec::new();
        loop {
            let pos = libc::telldir(d);
            let e = libc::readdir64(d);
            if e.is_null() {
                break;
            }
            out.push((
                CStr::from_ptr((*e).d_name.as_ptr()).to_bytes().to_vec(),
                pos,
            ));
        }
        libc::closedir(d);
        out
    }
}

/// The names from `seekdir(pos)` to the end of a fresh stream.
fn names_from(dir: &Path, pos: libc::c_long) -> Vec<Vec<u8>> {
    let c = cs(dir);
    // SAFETY: as in `listing_with_positions`.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        assert!(!d.is_null(), "opendir: {}", io::Error::last_os_error());
        libc::seekdir(d, pos);
        let mut out = Vec::new();
        loop {
            let e = libc::readdir64(d);
            if e.is_null() {
                break;
            }
            out.push(CStr::from_ptr((*e).d_name.as_ptr()).to_bytes().to_vec());
        }
        libc::closedir(d);
        out
    }
}

/// Directories are listed without open handles: offsets are positions in the backing
/// directory, and the kernel caches listings. `seekdir` to any `telldir` position (in a new
/// stream) continues exactly there; a listing taken again after each kind of change shows the
/// change (the cached one is dropped); `rewinddir` on an open stream sees a file made since.
#[test]
fn seekdir_telldir_and_listings_after_changes() {
    let fx = Fx::new();
    fx.run(120, |root, log| {
        let dir = root.join("d");
        fs::create_dir(&dir).unwrap();
        for k in 0..500 {
            let name = format!("e{k:03}-{}", "m".repeat(k % 120));
            fs::write(dir.join(name), b"").unwrap();
        }
        let all = listing_with_positions(&dir);
        log.rec("entries", all.len());
        let mut ok = Vec::new();
        for k in [0, 1, 2, 3, 37, 250, 498, 501] {
            let tail: Vec<Vec<u8>> = all[k..].iter().map(|(n, _)| n.clone()).collect();
            ok.push((k, names_from(&dir, all[k].1) == tail));
        }
        log.rec("seekdir continues at the telldir position", ok);

        // After an unlink, a new stream sought to a position from before it (the listing
        // above is in the kernel's cache): every other entry from there on, not the removed
        // one (the kernel checks its cached listing only for listings from the start: it came
        // back, found with xfstests' generic/637).
        let gone = format!("e010-{}", "m".repeat(10)).into_bytes();
        fs::remove_file(dir.join(OsStr::from_bytes(&gone))).unwrap();
        let from = names_from(&dir, all[2].1);
        let want: Vec<Vec<u8>> = all[2..]
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| *n != gone)
            .collect();
        log.rec(
            "seekdir in a new stream after an unlink: the others, not the removed entry",
            (from.contains(&gone), from == want),
        );

        // Listings abandoned part-way, then changes all over the directory: the next listing
        // is the directory as it is now.
        for round in 0..3 {
            for n in [3usize, 40, 120] {
                let c = cs(&dir);
                unsafe {
                    let d = libc::opendir(c.as_ptr());
                    for _ in 0..n {
                        libc::readdir64(d);
                    }
                    libc::closedir(d);
                }
            }
            for k in (round..500).step_by(37) {
                let _ = fs::remove_file(dir.join(format!("e{k:03}-{}", "m".repeat(k % 120))));
            }
            for k in 0..5 {
                fs::write(dir.join(format!("late-{round}-{k}")), b"").unwrap();
            }
            let names = sorted_names(&dir);
            let n = names.len();
            let mut d = names.clone();
            d.dedup();
            log.rec(format!("round {round}: entries, distinct"), (n, d.len()));
            log.bytes(
                format!("round {round}: listing"),
                names.join("\n").into_bytes(),
            );
        }

        // Each change shows in the next listing (the first one below is cached).
        let sub = root.join("sub");
        fs::create_dir(&sub).unwrap();
        fs::write(sub.join("a"), b"1").unwrap();
        log.rec("listing", sorted_names(&sub));
        log.rec("listing again", sorted_names(&sub));
        fs::write(sub.join("b"), b"2").unwrap();
        log.rec("after create", sorted_names(&sub));
        fs::rename(sub.join("a"), sub.join("c")).unwrap();
        log.rec("after rename", sorted_names(&sub));
        fs::rename(sub.join("c"), dir.join("moved")).unwrap();
        log.rec("after rename out", sorted_names(&sub));
        log.rec(
            "target has it",
            sorted_names(&dir).contains(&"moved".to_string()),
        );
        fs::hard_link(sub.join("b"), sub.join("b2")).unwrap();
        std::os::unix::fs::symlink("b", sub.join("s")).unwrap();
        fs::create_dir(sub.join("dd")).unwrap();
        log.rec("after link, symlink, mkdir", sorted_names(&sub));
        fs::remove_file(sub.join("b")).unwrap();
        fs::remove_dir(sub.join("dd")).unwrap();
        log.rec("after unlink, rmdir", sorted_names(&sub));

        // rewinddir on an open stream sees a file made after the stream was opened.
        let c = cs(&sub);
        let seen_new = unsafe {
            let d = libc::opendir(c.as_ptr());
            while !libc::readdir64(d).is_null() {}
            fs::write(sub.join("late"), b"").unwrap();
            libc::rewinddir(d);
            let mut found = false;
            loop {
                let e = libc::readdir64(d);
                if e.is_null() {
                    break;
                }
                found |= CStr::from_ptr((*e).d_name.as_ptr()).to_bytes() == b"late";
            }
            libc::closedir(d);
            found
        };
        log.rec("rewinddir sees a new file", seen_new);
    });
    fx.finish();
}

#[test]
fn long_names_255_bytes() {
    let fx = Fx::new();
    fx.run(60, |root, log| {
        let n255 = "a".repeat(255);
        let m255 = "é".repeat(127) + "x"; // 255 bytes of UTF-8
        let o255 = "o".repeat(254) + "1";
        let n256 = "b".repeat(256);
        log.rec(
            "create 255",
            en(fs::write(root.join(&n255), b"long name content")),
        );
        log.rec("create 255 utf8", en(fs::write(root.join(&m255), b"utf8")));
        log.rec("create 256", en(fs::write(root.join(&n256), b"x")));
        log.rec("mkdir 256", en(fs::create_dir(root.join(&n256))));
        log.rec(
            "stat 255",
            en(fs::metadata(root.join(&n255)).map(|m| m.len())),
        );
        log.rec("read 255", en(fs::read(root.join(&m255))));
        let list = |log: &mut Log, what: &str, d: &Path| {
            let mut v: Vec<_> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            log.rec(what, v);
        };
        list(log, "list", root);
        log.rec(
            "rename 255 -> 255",
            en(fs::rename(root.join(&n255), root.join(&o255))),
        );
        log.rec("old name gone", fs::metadata(root.join(&n255)).is_err());
        log.rec("read renamed", en(fs::read(root.join(&o255))));
        log.rec(
            "rename onto existing 255",
            en(fs::rename(root.join(&m255), root.join(&o255))),
        );
        log.rec(
            "link 255",
            en(fs::hard_link(root.join(&o255), root.join(&n255))),
        );
        log.rec(
            "exchange 255",
            renameat2(&root.join(&o255), &root.join(&n255), libc::RENAME_EXCHANGE),
        );
        log.rec(
            "mkdir 255",
            en(fs::create_dir(root.join("d").join(&n255)).or_else(|_| {
                fs::create_dir(root.join("d"))?;
                fs::create_dir(root.join("d").join(&n255))
            })),
        );
        log.rec(
            "file in 255 dir",
            en(fs::write(root.join("d").join(&n255).join(&m255), b"deep")),
        );
        log.rec(
            "symlink 255",
            en(std::os::unix::fs::symlink(
                &n255,
                root.join("d").join(&o255),
            )),
        );
        log.rec(
            "readlink 255",
            en(fs::read_link(root.join("d").join(&o255))),
        );
        list(log, "list d", &root.join("d"));
        log.rec(
            "move 255 dir to root",
            en(fs::rename(
                root.join("d").join(&n255),
                root.join(format!("{}z", "q".repeat(254))),
            )),
        );
        list(log, "list after move", root);
        // Remove everything.
        let qq = root.join(format!("{}z", "q".repeat(254)));
        log.rec("rmdir non-empty 255", en(fs::remove_dir(&qq)));
        log.rec("unlink in 255 dir", en(fs::remove_file(qq.join(&m255))));
        log.rec("rmdir 255", en(fs::remove_dir(&qq)));
        log.rec(
            "unlink symlink 255",
            en(fs::remove_file(root.join("d").join(&o255))),
        );
        log.rec("rmdir d", en(fs::remove_dir(root.join("d"))));
        log.rec("unlink 255 a", en(fs::remove_file(root.join(&n255))));
        log.rec("unlink 255 o", en(fs::remove_file(root.join(&o255))));
        list(log, "list at end", root);
    });
    // With everything removed, no long-name side file is left behind in the cipher directory.
    let cipher = fx.v.cipher.clone();
    with_timeout(10, move || {
        let mut left: Vec<_> = fs::read_dir(&cipher)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from(".kmsfs"), "kmsfs.dirid".into()],
            "leftovers in the cipher root"
        );
    });
    fx.finish();
}

// ---------------------------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------------------------

fn utimens(p: &Path, at: (i64, i64), mt: (i64, i64), nofollow: bool) -> Result<(), i32> {
    let ts = [
        libc::timespec {
            tv_sec: at.0,
            tv_nsec: at.1,
        },
        libc::timespec {
            tv_sec: mt.0,
            tv_nsec: mt.1,
        },
    ];
    let fl = if nofollow {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        0
    };
    lc(unsafe { libc::utimensat(libc::AT_FDCWD, cs(p).as_ptr(), ts.as_ptr(), fl) })
}

#[test]
fn chmod_chown_utimens_and_plaintext_size() {
    let fx = Fx::new();
    fx.run(60, |root, log| {
        let f = root.join("f");
        fs::write(&f, pat(7, 10_000)).unwrap();
        let d = root.join("d");
        fs::create_dir(&d).unwrap();
        let st = |log: &mut Log, what: &str, p: &Path| {
            let m = fs::symlink_metadata(p).unwrap();
            log.rec(what, (m.mode(), m.uid(), m.gid(), m.len()));
        };
        log.rec("size is plaintext", fs::metadata(&f).unwrap().len());
        for mode in [0o600, 0o644, 0o755, 0o4755, 0o2711, 0o1777, 0o000, 0o7777] {
            log.rec(
                format!("chmod {mode:o}"),
                en(fs::set_permissions(&f, fs::Permissions::from_mode(mode))),
            );
            log.rec(format!("mode {mode:o}"), fs::metadata(&f).unwrap().mode());
        }
        log.rec(
            "chmod dir",
            en(fs::set_permissions(&d, fs::Permissions::from_mode(0o1750))),
        );
        log.rec("dir mode", fs::metadata(&d).unwrap().mode());
        log.rec(
            "chown",
            en(std::os::unix::fs::chown(&f, Some(1234), Some(5678))),
        );
        log.rec(
            "chown uid only",
            en(std::os::unix::fs::chown(&f, Some(4321), None)),
        );
        log.rec(
            "chown gid only",
            en(std::os::unix::fs::chown(&f, None, Some(8765))),
        );
        st(log, "after chown", &f);
        // chown(-1, -1): set-user-id goes, set-group-id where group-executable, and the change
        // time moves (the C pjdfstest's chown/00.t on Linux); a directory keeps its bits.
        for mode in [0o6755, 0o2745, 0o4700] {
            fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
            let before = fs::metadata(&f).unwrap().ctime_nsec();
            let before = (fs::metadata(&f).unwrap().ctime(), before);
            std::thread::sleep(std::time::Duration::from_millis(20));
            log.rec(
                format!("chown -1 -1 of {mode:o}"),
                en(std::os::unix::fs::chown(&f, None, None)),
            );
            let m = fs::metadata(&f).unwrap();
            log.rec(format!("mode after chown -1 -1 of {mode:o}"), m.mode());
            log.rec("ctime moved", (m.ctime(), m.ctime_nsec()) > before);
        }
        fs::set_permissions(&d, fs::Permissions::from_mode(0o3755)).unwrap();
        log.rec(
            "dir chown -1 -1",
            en(std::os::unix::fs::chown(&d, None, None)),
        );
        log.rec("dir mode after", fs::metadata(&d).unwrap().mode());
        fs::set_permissions(&d, fs::Permissions::from_mode(0o1750)).unwrap();
        // utimens: exact times with nanoseconds, UTIME_OMIT, times before 1970.
        log.rec(
            "utimens",
            utimens(
                &f,
                (1_000_000_000, 123_456_789),
                (1_500_000_000, 987_654_321),
                false,
            ),
        );
        let m = fs::metadata(&f).unwrap();
        log.rec(
            "atime/mtime",
            (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec()),
        );
        log.rec(
            "utimens omit atime",
            utimens(&f, (0, libc::UTIME_OMIT), (1_600_000_000, 5), false),
        );
        let m = fs::metadata(&f).unwrap();
        log.rec(
            "atime kept",
            (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec()),
        );
        log.rec(
            "utimens before epoch",
            utimens(&f, (-100, 500), (-86_400 * 365, 0), false),
        );
        let m = fs::metadata(&f).unwrap();
        log.rec(
            "negative times",
            (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec()),
        );
        log.rec(
            "utimens now",
            utimens(&f, (0, libc::UTIME_NOW), (0, libc::UTIME_NOW), false),
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        log.rec(
            "now is recent",
            (fs::metadata(&f).unwrap().mtime() - now).abs() < 60,
        );
        // Symlinks: lchown and lutimens act on the link, not the target.
        std::os::unix::fs::symlink("f", root.join("sl")).unwrap();
        log.rec(
            "lchown",
            en(std::os::unix::fs::lchown(
                root.join("sl"),
                Some(11),
                Some(22),
            )),
        );
        log.rec("lutimens", utimens(&root.join("sl"), (5, 6), (7, 8), true));
        st(log, "symlink", &root.join("sl"));
        let m = fs::symlink_metadata(root.join("sl")).unwrap();
        log.rec(
            "symlink times",
            (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec()),
        );
        st(log, "target untouched by l*", &f);
        // fchmod/futimens/fchown through an open descriptor; size stays the plaintext size
        // while open and after writes.
        let h = OpenOptions::new().read(true).write(true).open(&f).unwrap();
        log.rec("fchmod", lc(unsafe { libc::fchmod(h.as_raw_fd(), 0o640) }));
        log.rec("fchown", lc(unsafe { libc::fchown(h.as_raw_fd(), 0, 0) }));
        h.write_all_at(b"more", 12_345).unwrap();
        st(log, "after write", &f);
        log.rec("fstat size", h.metadata().unwrap().len());
        // A set-group-id directory: new entries take its group, subdirectories keep the bit.
        let g = root.join("sgid");
        fs::create_dir(&g).unwrap();
        std::os::unix::fs::chown(&g, None, Some(4242)).unwrap();
        fs::set_permissions(&g, fs::Permissions::from_mode(0o2775)).unwrap();
        fs::create_dir(g.join("sub")).unwrap();
        fs::write(g.join("file"), b"").unwrap();
        st(log, "sgid dir", &g);
        let m = fs::metadata(g.join("sub")).unwrap();
        log.rec("sgid subdir", (m.mode(), m.gid()));
        log.rec("sgid file gid", fs::metadata(g.join("file")).unwrap().gid());
    });
    fx.finish();
}

#[test]
fn timestamps_move_like_on_a_plain_directory() {
    timestamps_move_like_on_a_plain_directory_in(&[]);
}

#[test]
fn timestamps_move_like_on_a_plain_directory_without_writeback_cache() {
    timestamps_move_like_on_a_plain_directory_in(&["--no-writeback-cache"]);
}

fn timestamps_move_like_on_a_plain_directory_in(mount_args: &[&'static str]) {
    // Which operations advance mtime/ctime of a file and of its directory (not the exact
    // times, which differ between the two runs).
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.run(60, |root, log| {
        let pause = || std::thread::sleep(std::time::Duration::from_millis(30));
        let times = |p: &Path| {
            let m = fs::symlink_metadata(p).unwrap();
            ((m.mtime(), m.mtime_nsec()), (m.ctime(), m.ctime_nsec()))
        };
        let d = root.join("d");
        fs::create_dir(&d).unwrap();
        let f = d.join("f");
        fs::write(&f, b"one").unwrap();
        let step = |log: &mut Log, what: &str, op: &dyn Fn()| {
            let (f0, d0) = (times(&f), times(&d));
            pause();
            op();
            let (f1, d1) = (times(&f), times(&d));
            log.rec(
                what,
                (
                    ("file mtime", f1.0 > f0.0),
                    ("file ctime", f1.1 > f0.1),
                    ("dir mtime", d1.0 > d0.0),
                    ("dir ctime", d1.1 > d0.1),
                ),
            );
        };
        step(log, "write", &|| {
            OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .write_all_at(b"x", 1)
                .unwrap()
        });
        step(log, "append", &|| {
            OpenOptions::new()
                .append(true)
                .open(&f)
                .unwrap()
                .write_all(b"y")
                .unwrap()
        });
        step(log, "truncate", &|| {
            OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .set_len(1)
                .unwrap()
        });
        step(log, "chmod", &|| {
            fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap()
        });
        step(log, "read", &|| {
            fs::read(&f).unwrap();
        });
        step(log, "create sibling", &|| {
            fs::write(d.join("g"), b"").unwrap()
        });
        step(log, "rename sibling", &|| {
            fs::rename(d.join("g"), d.join("h")).unwrap()
        });
        step(log, "unlink sibling", &|| {
            fs::remove_file(d.join("h")).unwrap()
        });
        step(log, "link", &|| fs::hard_link(&f, d.join("l")).unwrap());
        step(log, "setxattr", &|| setx(&f, "user.t", b"v", 0).unwrap());
    });
    fx.finish();
}

#[test]
fn modification_times_survive_a_remount() {
    modification_times_survive_a_remount_in(&[]);
}

#[test]
fn modification_times_survive_a_remount_without_writeback_cache() {
    modification_times_survive_a_remount_in(&["--no-writeback-cache"]);
}

/// The modification time a file shows is the one it keeps: after a remount (the kernel's
/// inodes gone) every file shows the same time to the nanosecond. With the writeback cache the
/// kernel holds a written file's time and the data reaches the daemon later; a quick write and
/// close used to come back 0.1–3 ms later, the time of the daemon's write. A write made later
/// still moves the time forward.
fn modification_times_survive_a_remount_in(mount_args: &[&'static str]) {
    let mut fx = Fx::with_mount_args(&[], mount_args);
    let pause = || std::thread::sleep(std::time::Duration::from_millis(30));
    let times = |root: &Path| -> BTreeMap<String, (i64, i64)> {
        let mut m = BTreeMap::new();
        for e in fs::read_dir(root.join("t")).unwrap() {
            let e = e.unwrap();
            let md = fs::symlink_metadata(e.path()).unwrap();
            m.insert(
                e.file_name().to_string_lossy().into_owned(),
                (md.mtime(), md.mtime_nsec()),
            );
        }
        m
    };
    let before = fx.on_mount(120, move |root| {
        let t = root.join("t");
        fs::create_dir(&t).unwrap();
        let mtime = |p: &Path| {
            let m = fs::metadata(p).unwrap();
            (m.mtime(), m.mtime_nsec())
        };
        // Written and closed at once, many times (the drift was a race).
        for i in 0..40 {
            fs::write(t.join(format!("quick{i}")), vec![i as u8; 1000 + 300 * i]).unwrap();
        }
        // Written again later through a descriptor kept open.
        let mut f = File::create(t.join("long")).unwrap();
        f.write_all(b"one").unwrap();
        let m0 = mtime(&t.join("long"));
        pause();
        f.write_all(b"two").unwrap();
        drop(f);
        assert!(mtime(&t.join("long")) > m0, "a later write moves the time");
        // Appended to later.
        fs::write(t.join("append"), vec![1; 9000]).unwrap();
        let m0 = mtime(&t.join("append"));
        pause();
        OpenOptions::new()
            .append(true)
            .open(t.join("append"))
            .unwrap()
            .write_all(b"more")
            .unwrap();
        assert!(mtime(&t.join("append")) > m0, "an append moves the time");
        // Written, then given a time.
        fs::write(t.join("given"), vec![2; 5000]).unwrap();
        let at = std::time::UNIX_EPOCH + std::time::Duration::new(1_000_000_000, 123_456_789);
        File::options()
            .write(true)
            .open(t.join("given"))
            .unwrap()
            .set_modified(at)
            .unwrap();
        assert_eq!(mtime(&t.join("given")), (1_000_000_000, 123_456_789));
        // Given a time while open, then written through the same descriptor.
        let mut f = File::create(t.join("given then written")).unwrap();
        f.write_all(b"a").unwrap();
        f.set_modified(at).unwrap();
        f.write_all(b"b").unwrap();
        drop(f);
        // Emptied by O_TRUNC and written.
        fs::write(t.join("trunc"), vec![3; 20000]).unwrap();
        pause();
        fs::write(t.join("trunc"), b"hi").unwrap();
        // Extended by truncate, written, allocated, written again.
        let f = File::create(t.join("alloc")).unwrap();
        f.set_len(100_000).unwrap();
        f.write_all_at(b"x", 10).unwrap();
        f.sync_all().unwrap();
        assert_eq!(
            unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, 200_000) },
            0,
            "posix_fallocate"
        );
        f.write_all_at(b"y", 150_000).unwrap();
        drop(f);
        // Written through a shared mapping.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(t.join("mapped"))
            .unwrap();
        f.set_len(65536).unwrap();
        let mut m = Map::new(&f, 65536, libc::MAP_SHARED);
        m.slice()[100..200].fill(b'z');
        drop(m);
        drop(f);
        times(root)
    });
    fx.remount();
    let after = fx.on_mount(60, move |root| times(root));
    assert_eq!(before.len(), 47);
    let moved: Vec<_> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v:?} -> {:?}", after.get(k)))
        .collect();
    assert!(moved.is_empty(), "times changed by a remount: {moved:#?}");
    fx.finish_mount_only();
}

/// `chattr +a` on a file through the mount: appended to with O_APPEND (the kernel's write-back
/// of the times it keeps goes through), everything else refused with EPERM, as on ext4.
fn append_only_file(
    root: &Path,
    flags: fn(&Path) -> io::Result<libc::c_int>,
    set: fn(&Path, libc::c_int) -> io::Result<()>,
) {
    const APPEND: libc::c_int = 0x20;
    let log = root.join("log");
    fs::write(&log, b"one\n").unwrap();
    let start = flags(&log).expect("lsattr");
    // Not while a descriptor could write anywhere (what it wrote may still be cached).
    let w = OpenOptions::new().write(true).open(&log).unwrap();
    let busy = set(&log, start | APPEND);
    drop(w);
    match busy {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        Err(e) => panic!("chattr +a with a writer: {e}"),
        Ok(()) => panic!("chattr +a with a writer open succeeded"),
    }
    match set(&log, start | APPEND) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            return eprintln!("append-only files not checked: no CAP_LINUX_IMMUTABLE");
        }
        Err(e) => panic!("chattr +a: {e}"),
    }
    let shown = flags(&log);
    let before = fs::metadata(&log).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let appended = OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut a| a.write_all(b"two\n"));
    let given = libc::timespec {
        tv_sec: 1_000_000,
        tv_nsec: 0,
    };
    let tries = [
        (
            "open for writing",
            OpenOptions::new().write(true).open(&log).map(drop),
        ),
        (
            "open truncating",
            OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_TRUNC)
                .open(&log)
                .map(drop),
        ),
        (
            "ftruncate",
            OpenOptions::new()
                .append(true)
                .open(&log)
                .and_then(|f| f.set_len(0)),
        ),
        (
            "truncate",
            lc(unsafe { libc::truncate(cs(&log).as_ptr(), 0) })
                .map(drop)
                .map_err(io::Error::from_raw_os_error),
        ),
        ("unlink", fs::remove_file(&log)),
        ("rename", fs::rename(&log, root.join("log2"))),
        ("link", fs::hard_link(&log, root.join("log3"))),
        (
            "chmod",
            fs::set_permissions(&log, fs::Permissions::from_mode(0o600)),
        ),
        (
            "given times",
            lc(unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    cs(&log).as_ptr(),
                    [given, given].as_ptr(),
                    0,
                )
            })
            .map(drop)
            .map_err(io::Error::from_raw_os_error),
        ),
        (
            "setxattr",
            setx(&log, "user.x", b"1", 0).map_err(io::Error::from_raw_os_error),
        ),
    ];
    // O_APPEND taken off the descriptor (ext4 refuses that fcntl on an append-only file; the
    // kernel does not know kmsfs's flag): the rewrite of the start is refused, by the write or,
    // with the writeback cache, by its write-back (fsync reports it), and what is stored stays.
    // An append after it, through the same descriptor (O_APPEND put back): stored (with the
    // writeback cache it shares the refused page).
    let rewrite = OpenOptions::new().append(true).open(&log).map(|mut f| {
        let fd = f.as_raw_fd();
        let setfl = |v: libc::c_int| lc(unsafe { libc::fcntl(fd, libc::F_SETFL, v) });
        setfl(0).unwrap();
        let w = f.write_at(b"ONE", 0);
        setfl(libc::O_APPEND).unwrap();
        let a = f.write_all(b"three\n");
        (w, a, f.sync_all())
    });
    // A shared writable mapping (ext4: EACCES): refused, or its stores are not kept.
    let mapped = OpenOptions::new()
        .read(true)
        .append(true)
        .open(&log)
        .map(|f| unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            *(p as *mut u8) = b'M';
            let synced = libc::msync(p, 4096, libc::MS_SYNC);
            libc::munmap(p, 4096);
            Ok(synced)
        });
    let t = std::time::Instant::now();
    let stored = loop {
        // The kernel drops the pages it kept of a failed write-back once the file is closed.
        let b = fs::read(&log).unwrap();
        if b == b"one\ntwo\nthree\n" || t.elapsed() > std::time::Duration::from_secs(10) {
            break b;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let now =
        lc(unsafe { libc::utimensat(libc::AT_FDCWD, cs(&log).as_ptr(), std::ptr::null(), 0) });
    let read = fs::read(&log);
    let after = fs::metadata(&log).unwrap().modified().unwrap();
    let cleared = set(&log, start);
    assert_eq!(shown.expect("lsattr"), start | APPEND);
    appended.expect("append");
    for (what, r) in tries {
        assert_eq!(
            r.expect_err(what).raw_os_error(),
            Some(libc::EPERM),
            "{what} of an append-only file"
        );
    }
    let (w, a, synced) = rewrite.expect("open for appending");
    a.expect("append after the refused rewrite");
    // Refused by the write itself, or (writeback cache) by its write-back.
    let refused = w
        .err()
        .or(synced.err())
        .expect("rewrite after fcntl refused");
    assert_eq!(refused.raw_os_error(), Some(libc::EPERM), "{refused}");
    assert_eq!(
        stored, b"one\ntwo\nthree\n",
        "what is stored stays, the append too"
    );
    match mapped.expect("open") {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}"),
        Ok(synced) => assert_eq!(synced, -1, "msync of a refused store"),
    }
    now.expect("times set to now");
    assert_eq!(read.expect("read"), b"one\ntwo\nthree\n");
    assert!(after > before, "the append moved the modification time");
    cleared.expect("chattr -a");
    fs::write(&log, b"").expect("writable again");
    fs::remove_file(&log).expect("removable again");
}

/// `lsattr`/`chattr` through the mount (the kernel turns FS_IOC_GETFLAGS/SETFLAGS into FUSE
/// ioctls): immutable is kept and enforced like on ext4, and append-only (below).
#[test]
fn inode_flags_immutable_and_append_only() {
    const GETFLAGS: libc::c_ulong = 0x8008_6601;
    const SETFLAGS: libc::c_ulong = 0x4008_6602;
    const IMMUTABLE: libc::c_int = 0x10;
    const APPEND: libc::c_int = 0x20;
    const NODUMP: libc::c_int = 0x40;
    const EXTENTS: libc::c_int = 0x8_0000;
    fn flags(p: &Path) -> io::Result<libc::c_int> {
        let f = File::open(p)?;
        let mut v: libc::c_int = 0;
        if unsafe { libc::ioctl(f.as_raw_fd(), GETFLAGS, &mut v) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(v)
    }
    fn set(p: &Path, v: libc::c_int) -> io::Result<()> {
        let f = File::open(p)?;
        if unsafe { libc::ioctl(f.as_raw_fd(), SETFLAGS, &v) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    let fx = Fx::new();
    let cipher = fx.v.cipher.clone();
    // The backing directory must have inode flags for this to mean anything.
    if flags(&cipher).is_err() {
        eprintln!("skipped: the backing file system has no inode flags");
        return fx.finish_mount_only();
    }
    fx.on_mount(60, |root| {
        let f = root.join("f");
        fs::write(&f, b"kept").unwrap();
        let start = flags(&f).expect("lsattr");
        assert_eq!(start & (IMMUTABLE | APPEND), 0);
        // The cipher file's layout (ext4's extents flag `e`) is not shown.
        assert_eq!(start & EXTENTS, 0, "layout flags shown: {start:#x}");
        // A bare value, as stress-ng's chattr sets, takes (before 2026-12-05: EOPNOTSUPP, it
        // would have cleared `e`).
        set(&f, NODUMP).expect("bare value");
        set(&f, start).expect("back");
        append_only_file(root, flags, set);
        set(&f, start | NODUMP).expect("chattr +d");
        assert_eq!(flags(&f).unwrap(), start | NODUMP);
        // Not while open for writing: what was written may still be in the kernel's cache.
        let w = OpenOptions::new().append(true).open(&f).unwrap();
        let busy = set(&f, start | NODUMP | IMMUTABLE);
        if busy.is_ok() {
            set(&f, start).unwrap();
        }
        assert_eq!(
            busy.expect_err("+i while open for writing").raw_os_error(),
            Some(libc::EPERM)
        );
        drop(w);
        match set(&f, start | NODUMP | IMMUTABLE) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                eprintln!("skipped the rest: no CAP_LINUX_IMMUTABLE");
                return;
            }
            Err(e) => panic!("chattr +i: {e}"),
        }
        let tries = [
            (
                "write",
                OpenOptions::new().append(true).open(&f).map(|_| ()),
            ),
            ("unlink", fs::remove_file(&f)),
            ("rename", fs::rename(&f, root.join("g"))),
            ("link", fs::hard_link(&f, root.join("h"))),
            (
                "chmod",
                fs::set_permissions(&f, fs::Permissions::from_mode(0o600)),
            ),
        ];
        let read = fs::read(&f);
        let shown = flags(&f);
        set(&f, start).expect("chattr -i -d");
        for (what, r) in tries {
            assert_eq!(
                r.expect_err(what).raw_os_error(),
                Some(libc::EPERM),
                "{what} of an immutable file"
            );
        }
        assert_eq!(read.expect("read of an immutable file"), b"kept");
        assert_eq!(shown.unwrap(), start | NODUMP | IMMUTABLE);
        // Mutable again.
        OpenOptions::new()
            .append(true)
            .open(&f)
            .unwrap()
            .write_all(b"!")
            .unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"kept!");
        // Written and closed while another process keeps the file open (the written data's
        // interrupted-write marker stays until the last close), then made immutable: still
        // readable, and mutable again (before 2026-12-05 review: unreadable for good).
        let g = root.join("g");
        fs::write(&g, b"one").unwrap();
        let reader = File::open(&g).unwrap();
        OpenOptions::new()
            .append(true)
            .open(&g)
            .unwrap()
            .write_all(b" two")
            .unwrap();
        let gstart = flags(&g).unwrap();
        set(&g, gstart | IMMUTABLE).expect("chattr +i with a reader");
        drop(reader);
        let read = fs::read(&g);
        let shown = flags(&g);
        let cleared = set(&g, gstart);
        assert_eq!(read.expect("read"), b"one two");
        assert_eq!(shown.expect("lsattr"), gstart | IMMUTABLE);
        cleared.expect("chattr -i");
        fs::remove_file(&g).expect("removable again");
        // A directory: no entry can be made in an immutable one.
        let d = root.join("d");
        fs::create_dir(&d).unwrap();
        let dstart = flags(&d).unwrap();
        set(&d, dstart | IMMUTABLE).expect("chattr +i dir");
        let made = fs::write(d.join("x"), b"");
        set(&d, dstart).expect("chattr -i dir");
        assert_eq!(made.expect_err("create").raw_os_error(), Some(libc::EPERM));
        fs::write(d.join("x"), b"").expect("create after -i");
    });
    fx.finish_mount_only();
}

/// [`append_only_file`] without the writeback cache (every write reaches the daemon at once,
/// and "now" comes as such).
#[test]
fn append_only_file_without_writeback_cache() {
    fn flags(p: &Path) -> io::Result<libc::c_int> {
        let f = File::open(p)?;
        let mut v: libc::c_int = 0;
        lc(unsafe { libc::ioctl(f.as_raw_fd(), 0x8008_6601, &mut v) })
            .map_err(io::Error::from_raw_os_error)?;
        Ok(v)
    }
    fn set(p: &Path, v: libc::c_int) -> io::Result<()> {
        let f = File::open(p)?;
        lc(unsafe { libc::ioctl(f.as_raw_fd(), 0x4008_6602, &v) })
            .map_err(io::Error::from_raw_os_error)?;
        Ok(())
    }
    let fx = Fx::with_mount_args(&[], &["--no-writeback-cache"]);
    if flags(&fx.v.cipher).is_err() {
        eprintln!("skipped: the backing file system has no inode flags");
        return fx.finish_mount_only();
    }
    fx.on_mount(60, |root| append_only_file(root, flags, set));
    fx.finish_mount_only();
}

#[test]
fn statfs_reports_backing_store() {
    let fx = Fx::new();
    let cipher = fx.v.cipher.clone();
    fx.on_mount(30, move |mnt| {
        let sv = |p: &Path| {
            let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
            lc(unsafe { libc::statvfs(cs(p).as_ptr(), &mut s) }).unwrap();
            s
        };
        let (m, c) = (sv(mnt), sv(&cipher));
        assert_eq!(m.f_namemax, 255, "names up to 255 bytes");
        assert!(m.f_bsize > 0 && m.f_frsize > 0);
        assert!(m.f_blocks > 0 && m.f_bfree <= m.f_blocks && m.f_bavail <= m.f_blocks);
        assert_eq!(
            m.f_blocks * m.f_frsize,
            c.f_blocks * c.f_frsize,
            "same capacity as the backing file system"
        );
        assert_eq!(m.f_files, c.f_files);
        // df works on the mount.
        let out = sh(&format!("df -P '{}'", mnt.display()));
        assert!(
            out.status.success(),
            "df: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    fx.finish();
}

// ---------------------------------------------------------------------------------------------
// Extended attributes
// ---------------------------------------------------------------------------------------------

fn setx(p: &Path, name: &str, v: &[u8], flags: i32) -> Result<(), i32> {
    let n = CString::new(name).unwrap();
    lc(unsafe {
        libc::lsetxattr(
            cs(p).as_ptr(),
            n.as_ptr(),
            v.as_ptr().cast(),
            v.len(),
            flags,
        )
    })
}

fn getx(p: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; size];
    let r = unsafe { libc::lgetxattr(cs(p).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
    if r < 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    if size == 0 {
        return Ok(format!("size {r}").into_bytes());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn listx(p: &Path) -> Result<Vec<String>, i32> {
    let mut buf = vec![0u8; 65536];
    let r = unsafe { libc::llistxattr(cs(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    let mut v: Vec<String> = buf[..r as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    // security.selinux (and ACLs) may exist on the plain side only.
    v.retain(|n| {
        ["user.", "trusted.", "security."]
            .iter()
            .any(|ns| n.starts_with(ns))
            && n != "security.selinux"
    });
    v.sort();
    Ok(v)
}

fn removex(p: &Path, name: &str) -> Result<(), i32> {
    let n = CString::new(name).unwrap();
    lc(unsafe { libc::lremovexattr(cs(p).as_ptr(), n.as_ptr()) })
}

const XVAL: &[u8] = b"XATTR-VALUE-Quagmire-7731-distinctive";

#[test]
fn user_xattrs_set_get_list_remove() {
    let fx = Fx::new();
    fx.run(60, |root, log| {
        let f = root.join("file");
        fs::write(&f, b"x").unwrap();
        let d = root.join("dir");
        fs::create_dir(&d).unwrap();
        for p in [&f, &d] {
            let what = p.file_name().unwrap().to_string_lossy().into_owned();
            log.rec(format!("{what} list empty"), listx(p));
            log.rec(
                format!("{what} set"),
                setx(p, "user.quagmire_attr_name", XVAL, 0),
            );
            log.rec(
                format!("{what} set binary"),
                setx(p, "user.bin", &[0, 1, 2, 255, 0, 7], 0),
            );
            log.rec(format!("{what} set empty"), setx(p, "user.empty", b"", 0));
            log.rec(
                format!("{what} set big"),
                setx(p, "user.big", &pat(8, 1500), 0),
            );
            log.rec(
                format!("{what} get"),
                getx(p, "user.quagmire_attr_name", 1000),
            );
            log.rec(format!("{what} get binary"), getx(p, "user.bin", 100));
            log.rec(format!("{what} get empty"), getx(p, "user.empty", 100));
            log.rec(
                format!("{what} get big"),
                getx(p, "user.big", 4000).map(|v| sha(&v)),
            );
            log.rec(format!("{what} size query"), getx(p, "user.big", 0));
            log.rec(format!("{what} ERANGE"), getx(p, "user.big", 10));
            log.rec(format!("{what} get missing"), getx(p, "user.missing", 100));
            log.rec(format!("{what} list"), listx(p));
            log.rec(
                format!("{what} XATTR_CREATE existing"),
                setx(p, "user.bin", b"new", libc::XATTR_CREATE),
            );
            log.rec(
                format!("{what} XATTR_REPLACE missing"),
                setx(p, "user.nothere", b"new", libc::XATTR_REPLACE),
            );
            log.rec(
                format!("{what} XATTR_REPLACE existing"),
                setx(p, "user.bin", b"replaced", libc::XATTR_REPLACE),
            );
            log.rec(format!("{what} get replaced"), getx(p, "user.bin", 100));
            log.rec(format!("{what} remove"), removex(p, "user.bin"));
            log.rec(format!("{what} remove again"), removex(p, "user.bin"));
            log.rec(format!("{what} get removed"), getx(p, "user.bin", 100));
            log.rec(format!("{what} list after remove"), listx(p));
        }
        // user.* xattrs are not allowed on symlinks (Linux).
        std::os::unix::fs::symlink("file", root.join("sl")).unwrap();
        log.rec("symlink set", setx(&root.join("sl"), "user.x", b"v", 0));
        log.rec("symlink list", listx(&root.join("sl")));
        // trusted.* and security.* are allowed on symlinks and special files (not user.*).
        unsafe { libc::mkfifo(cs(&root.join("fifo")).as_ptr(), 0o644) };
        for what in ["sl", "fifo"] {
            let p = root.join(what);
            log.rec(format!("{what} get user"), getx(&p, "user.x", 100));
            log.rec(format!("{what} remove user"), removex(&p, "user.x"));
            for name in ["trusted.t", "security.s"] {
                log.rec(format!("{what} set {name}"), setx(&p, name, b"val", 0));
                log.rec(format!("{what} get {name}"), getx(&p, name, 100));
            }
            log.rec(
                format!("{what} set large"),
                setx(&p, "trusted.large", &[7u8; 2000], 0),
            );
            log.rec(format!("{what} get large"), getx(&p, "trusted.large", 4096));
            log.rec(format!("{what} list"), listx(&p));
            log.rec(format!("{what} remove"), removex(&p, "trusted.t"));
            log.rec(format!("{what} remove again"), removex(&p, "trusted.t"));
            log.rec(format!("{what} list after"), listx(&p));
        }
        // The symlink still points where it did.
        log.rec("symlink target", fs::read_link(root.join("sl")).unwrap());
        // xattrs follow the inode across rename and hard link.
        fs::rename(&f, root.join("renamed")).unwrap();
        fs::hard_link(root.join("renamed"), root.join("linked")).unwrap();
        log.rec(
            "after rename",
            getx(&root.join("renamed"), "user.quagmire_attr_name", 100),
        );
        log.rec(
            "via link",
            getx(&root.join("linked"), "user.quagmire_attr_name", 100),
        );
        // trusted.* and security.*, file capabilities among them: stored, listed, and the
        // capability dropped by a write and by a chown (the kernel removes it, as on ext4).
        // The value: version 2 capabilities, cap_net_raw permitted and effective.
        let cap: &[u8] = &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let p = root.join("with caps");
        fs::write(&p, b"0123456789").unwrap();
        log.rec("set trusted", setx(&p, "trusted.t", b"tv", 0));
        log.rec("set security", setx(&p, "security.s", b"sv", 0));
        log.rec("set capability", setx(&p, "security.capability", cap, 0));
        log.rec(
            "create existing",
            setx(&p, "trusted.t", b"x", libc::XATTR_CREATE),
        );
        log.rec("get trusted", getx(&p, "trusted.t", 100));
        log.rec("get security", getx(&p, "security.s", 100));
        log.rec("get capability", getx(&p, "security.capability", 100));
        log.rec("user name alike", getx(&p, "user.trusted.t", 100));
        log.rec("list with others", listx(&p));
        OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        log.rec(
            "capability after a write",
            getx(&p, "security.capability", 100),
        );
        log.rec("trusted after a write", getx(&p, "trusted.t", 100));
        log.rec(
            "set capability again",
            setx(&p, "security.capability", cap, 0),
        );
        std::os::unix::fs::chown(&p, Some(1), None).unwrap();
        log.rec(
            "capability after chown",
            getx(&p, "security.capability", 100),
        );
        log.rec("remove trusted", removex(&p, "trusted.t"));
        log.rec("remove trusted again", removex(&p, "trusted.t"));
        log.rec("list after", listx(&p));
    });
    // Deviation (README): SELinux labels and ACLs are not stored.
    fx.on_mount(30, |mnt| {
        let f = mnt.join("linked");
        assert_eq!(setx(&f, "security.selinux", b"v", 0), Err(libc::EOPNOTSUPP));
        assert_eq!(setx(&f, "system.x", b"v", 0), Err(libc::EOPNOTSUPP));
        assert_eq!(removex(&f, "security.selinux"), Err(libc::EOPNOTSUPP));
        // What `ls -l` asks: "not supported" lets it stop asking (per file system).
        assert_eq!(getx(&f, "security.selinux", 256), Err(libc::EOPNOTSUPP));
        assert_eq!(
            getx(&f, "system.posix_acl_access", 256),
            Err(libc::EOPNOTSUPP)
        );
        assert_eq!(
            getx(mnt, "system.posix_acl_default", 256),
            Err(libc::EOPNOTSUPP)
        );
        let ctl = mnt.join(".kmsfs/status");
        assert_eq!(getx(&ctl, "security.selinux", 256), Err(libc::EOPNOTSUPP));
        assert_eq!(getx(&ctl, "user.x", 256), Err(libc::ENODATA));
    });
    // Values and names are not stored in plain in the cipher directory (also in xattrs).
    let cipher = fx.v.cipher.clone();
    with_timeout(30, move || {
        let hay = everything_in(&cipher);
        for needle in [XVAL, b"quagmire_attr_name", b"Quagmire"] {
            assert!(
                !contains(&hay, needle),
                "{:?} found in the cipher directory",
                String::from_utf8_lossy(needle)
            );
        }
    });
    fx.finish();
}

/// A file takes as many small user xattrs through the mount as on the plain file system (ext4
/// holds 148 of these in its 4 KiB xattr block; stored one apiece, encrypted, 49 fitted).
#[test]
fn as_many_small_user_xattrs_as_the_plain_file_system() {
    let fx = Fx::new();
    fx.run(60, |root, log| {
        let f = root.join("many");
        fs::write(&f, b"x").unwrap();
        let sets: Vec<_> = (0..140)
            .map(|i| setx(&f, &format!("user.test{i}"), b"x", 0))
            .collect();
        log.rec("140 sets", sets);
        log.rec("listed", listx(&f).map(|l| l.len()));
        log.rec("get 139", getx(&f, "user.test139", 10));
        log.rec(
            "removed all",
            (0..140)
                .map(|i| removex(&f, &format!("user.test{i}")))
                .collect::<Vec<_>>(),
        );
        log.rec("listed after", listx(&f));
    });
    fx.finish();
}

/// Every byte of the cipher directory: names, contents, symlink targets, xattr names and values.
fn everything_in(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.extend_from_slice(p.as_os_str().as_bytes());
            out.push(0);
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            } else if md.is_file() {
                out.extend(fs::read(&p).unwrap());
            } else if md.file_type().is_symlink() {
                out.extend(fs::read_link(&p).unwrap().as_os_str().as_bytes());
            }
            let mut names = vec![0u8; 65536];
            let n = unsafe {
                libc::llistxattr(cs(&p).as_ptr(), names.as_mut_ptr().cast(), names.len())
            };
            if n > 0 {
                for name in names[..n as usize]
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                {
                    out.extend_from_slice(name);
                    let cn = CString::new(name).unwrap();
                    let mut v = vec![0u8; 65536];
                    let r = unsafe {
                        libc::lgetxattr(
                            cs(&p).as_ptr(),
                            cn.as_ptr(),
                            v.as_mut_ptr().cast(),
                            v.len(),
                        )
                    };
                    if r > 0 {
                        out.extend_from_slice(&v[..r as usize]);
                    }
                }
            }
            out.push(0);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// fallocate, special files, mmap
// ---------------------------------------------------------------------------------------------

#[test]
fn fallocate_modes() {
    fallocate_modes_in(&[]);
}

#[test]
fn fallocate_modes_without_writeback_cache() {
    fallocate_modes_in(&["--no-writeback-cache"]);
}

fn fallocate_modes_in(mount_args: &[&'static str]) {
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.run(60, |root, log| {
        let p = root.join("f");
        fs::write(&p, pat(9, 5000)).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let fa = |mode, off, len| lc(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) });
        log.rec("inside", fa(0, 0, 1000));
        log.rec("size", f.metadata().unwrap().len());
        log.rec("extend", fa(0, 4000, 10_000));
        log.rec("size after extend", f.metadata().unwrap().len());
        log.rec("keep size", fa(libc::FALLOC_FL_KEEP_SIZE, 0, 100_000));
        log.rec("size after keep size", f.metadata().unwrap().len());
        log.rec("bad length", fa(0, 0, 0));
        log.rec("negative offset", fa(0, -1, 10));
        // Zeroing: inside, across block boundaries, keeping the size past the end, extending.
        let zr = libc::FALLOC_FL_ZERO_RANGE;
        log.rec("zero range inside", fa(zr, 100, 5000));
        log.rec(
            "zero range keep size",
            fa(zr | libc::FALLOC_FL_KEEP_SIZE, 13_000, 9_000),
        );
        log.rec(
            "size after zero range keep size",
            f.metadata().unwrap().len(),
        );
        log.rec("zero range extend", fa(zr, 13_500, 3_000));
        log.rec("size after zero range extend", f.metadata().unwrap().len());
        // Punching holes (sparse files): a whole block and parts of two, past the end (the size
        // stays), and without KEEP_SIZE (refused by the kernel).
        let ph = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        log.rec("punch", fa(ph, 100, 12_000));
        log.rec("punch past the end", fa(ph, 15_000, 10_000));
        log.rec("size after punch", f.metadata().unwrap().len());
        log.rec(
            "punch without keep size",
            fa(libc::FALLOC_FL_PUNCH_HOLE, 0, 10),
        );
        drop(f);
        log.bytes("content", fs::read(&p).unwrap());
        let ro = File::open(&p).unwrap();
        log.rec(
            "read-only fd",
            lc(unsafe { libc::fallocate(ro.as_raw_fd(), 0, 0, 100_000) }),
        );
    });
    fx.finish();
}

#[test]
fn fifo_and_socket_nodes() {
    let fx = Fx::new();
    fx.run(60, |root, log| {
        let fifo = root.join("fifo");
        let sock = root.join("sock");
        log.rec(
            "mknod fifo",
            lc(unsafe { libc::mknod(cs(&fifo).as_ptr(), libc::S_IFIFO | 0o640, 0) }),
        );
        log.rec(
            "mknod sock",
            lc(unsafe { libc::mknod(cs(&sock).as_ptr(), libc::S_IFSOCK | 0o600, 0) }),
        );
        log.rec(
            "mkfifo existing",
            lc(unsafe { libc::mkfifo(cs(&fifo).as_ptr(), 0o600) }),
        );
        for p in [&fifo, &sock] {
            let m = fs::symlink_metadata(p).unwrap();
            log.rec(
                "kind",
                (
                    m.file_type().is_fifo(),
                    m.file_type().is_socket(),
                    m.mode(),
                    m.len(),
                    m.nlink(),
                ),
            );
        }
        // Data passes through the FIFO.
        let w = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                let mut f = OpenOptions::new().write(true).open(&fifo).unwrap();
                f.write_all(b"through the fifo").unwrap();
            })
        };
        let mut got = Vec::new();
        File::open(&fifo).unwrap().read_to_end(&mut got).unwrap();
        w.join().unwrap();
        log.rec("fifo data", String::from_utf8(got).unwrap());
        // A unix socket bound in the directory accepts connections.
        let bound = root.join("bound.sock");
        let l = std::os::unix::net::UnixListener::bind(&bound).unwrap();
        let c = std::thread::spawn({
            let bound = bound.clone();
            move || {
                let mut s = std::os::unix::net::UnixStream::connect(&bound).unwrap();
                s.write_all(b"over the socket").unwrap();
            }
        });
        let (mut s, _) = l.accept().unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        c.join().unwrap();
        log.rec("socket data", got);
        log.rec(
            "bound is socket",
            fs::symlink_metadata(&bound)
                .unwrap()
                .file_type()
                .is_socket(),
        );
        log.rec(
            "chmod fifo",
            en(fs::set_permissions(
                &fifo,
                fs::Permissions::from_mode(0o600),
            )),
        );
        log.rec("fifo mode", fs::symlink_metadata(&fifo).unwrap().mode());
        log.rec("rename fifo", en(fs::rename(&fifo, root.join("fifo2"))));
        log.rec("link sock", en(fs::hard_link(&sock, root.join("sock2"))));
        log.rec("nlink sock", fs::symlink_metadata(&sock).unwrap().nlink());
        log.rec("unlink sock", en(fs::remove_file(&sock)));
        log.rec("unlink bound", en(fs::remove_file(&bound)));
        // mknod of a regular file works too.
        log.rec(
            "mknod regular",
            lc(unsafe { libc::mknod(cs(&root.join("reg")).as_ptr(), libc::S_IFREG | 0o644, 0) }),
        );
        log.rec("regular", fs::read(root.join("reg")).map(|v| v.len()).ok());
    });
    fx.finish();
}

struct Map {
    ptr: *mut u8,
    len: usize,
}

impl Map {
    fn new(f: &File, len: usize, flags: i32) -> Map {
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            io::Error::last_os_error()
        );
        Map {
            ptr: ptr.cast(),
            len,
        }
    }
    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, readable and writable, alive until drop.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
    fn sync(&self) -> Result<(), i32> {
        lc(unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_SYNC) })
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[test]
fn mmap_shared_and_private() {
    mmap_shared_and_private_in(&[]);
}

#[test]
fn mmap_shared_and_private_without_writeback_cache() {
    mmap_shared_and_private_in(&["--no-writeback-cache"]);
}

fn mmap_shared_and_private_in(mount_args: &[&'static str]) {
    let mut fx = Fx::with_mount_args(&[], mount_args);
    fx.run(60, |root, log| {
        let p = root.join("mapped");
        let size = 3 * 4096 + 100;
        fs::write(&p, pat(10, size)).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        {
            let mut m = Map::new(&f, size, libc::MAP_SHARED);
            let s = m.slice();
            log.rec("mapped reads file", sha(s));
            s[0] = b'A';
            s[4095] = b'B';
            s[4096] = b'C';
            s[size - 1] = b'Z';
            s[8000..8100].copy_from_slice(&[b'm'; 100]);
            log.rec("msync", m.sync());
        }
        log.bytes("after shared write", fs::read(&p).unwrap());
        // Extend with ftruncate, then write the new part through a mapping.
        f.set_len(5 * 4096 + 7).unwrap();
        {
            let mut m = Map::new(&f, 5 * 4096 + 7, libc::MAP_SHARED);
            let s = m.slice();
            s[4 * 4096 + 3] = b'X';
            s[5 * 4096 + 6] = b'Y';
            log.rec("msync extended", m.sync());
        }
        log.bytes("after extended write", fs::read(&p).unwrap());
        // Private mappings never reach the file.
        {
            let mut m = Map::new(&f, 4096, libc::MAP_PRIVATE);
            let s = m.slice();
            s[..10].copy_from_slice(b"private!!!");
            log.rec("private sees own write", s[..10].to_vec());
        }
        log.bytes("after private write", fs::read(&p).unwrap());
        // Writes through write(2) are visible in an existing shared mapping.
        let mut m = Map::new(&f, 4096, libc::MAP_SHARED);
        f.write_all_at(b"written", 10).unwrap();
        log.rec("mapping sees write", m.slice()[10..17].to_vec());
        drop(m);
        // A write through a shared mapping moves the modification time (generic/080; without
        // the writeback cache it did not, before 2026-12-06).
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        f.set_modified(old).unwrap();
        {
            let mut m = Map::new(&f, 4096, libc::MAP_SHARED);
            m.slice()[20] = b'T';
            log.rec("msync after the time was set", m.sync());
        }
        let moved = fs::metadata(&p).unwrap().modified().unwrap() > old;
        log.rec("mapped write moved the modification time", moved);
    });
    // The shared writes reached the cipher file (read after a remount, without page cache).
    fx.remount();
    fx.on_mount(30, |mnt| {
        let d = fs::read(mnt.join("mapped")).unwrap();
        assert_eq!(
            (d[0], d[4095], d[4096], d[3 * 4096 + 99]),
            (b'A', b'B', b'C', b'Z')
        );
        assert_eq!((d[4 * 4096 + 3], d[5 * 4096 + 6]), (b'X', b'Y'));
        assert_eq!(&d[10..17], b"written");
    });
    fx.finish();
}

/// An ioctl the file system does not know (a terminal's TCGETS, which `isatty` asks and C stdio
/// and every buffered open in Python call) fails with ENOTTY on the mount as on a local file;
/// and the daemon answers it quietly (the kernel asks again for each call, so a log line per
/// call would flood the journal).
#[test]
fn unknown_ioctls_answer_enotty_and_are_not_logged() {
    let mut fx = Fx::new();
    fx.run(60, |root, log| {
        let p = root.join("plain-file");
        fs::write(&p, b"data").unwrap();
        for write in [false, true] {
            let f = OpenOptions::new().read(true).write(write).open(&p).unwrap();
            for _ in 0..20 {
                // SAFETY: TCGETS writes a termios into the zeroed buffer it is given.
                let mut t: libc::termios = unsafe { std::mem::zeroed() };
                let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, &mut t) };
                log.rec("TCGETS", if r == 0 { Ok(()) } else { lc(r) });
            }
            // SAFETY: isatty only inspects the descriptor.
            log.rec("isatty", unsafe { libc::isatty(f.as_raw_fd()) });
        }
        log.bytes("content after", fs::read(&p).unwrap());
    });
    let err = support::unmount(fx.m.take().expect("mounted"));
    assert!(
        !err.contains("ioctl") && !err.contains("Not Implemented"),
        "the daemon logged the ioctls:\n{err}"
    );
    assert!(!is_mounted(&fx.v.mnt));
}

// ---------------------------------------------------------------------------------------------
// Concurrency, sync, size
// ---------------------------------------------------------------------------------------------

fn concurrent_disjoint_writers(root: &Path, log: &mut Log) {
    const REGION: u64 = 50_001; // not block-aligned: neighbours share blocks
    const THREADS: u64 = 4;
    let p = root.join("shared");
    File::create(&p).unwrap().set_len(REGION * THREADS).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A reader that must never see an error while the writers work.
    let reader = {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = File::open(&p).unwrap();
            let mut buf = vec![0u8; 10_000];
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.read_at(&mut buf, (k * 7919) % (REGION * THREADS))
                    .expect("read during concurrent writes");
                k += 1;
            }
        })
    };
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let f = OpenOptions::new().write(true).open(&p).unwrap();
                let data = pat(t + 50, REGION as usize);
                let mut off = 0usize;
                let mut k = 0usize;
                while off < data.len() {
                    let n = (1 + (k * 1237) % 6000).min(data.len() - off);
                    f.write_all_at(&data[off..off + n], t * REGION + off as u64)
                        .unwrap();
                    off += n;
                    k += 1;
                }
                // Rewrite the edges of the region a few times.
                for _ in 0..20 {
                    f.write_all_at(&data[..10], t * REGION).unwrap();
                    f.write_all_at(&data[data.len() - 10..], t * REGION + REGION - 10)
                        .unwrap();
                }
            })
        })
        .collect();
    // Join every thread before failing, so none is left working on the mount.
    let results: Vec<_> = writers.into_iter().map(|w| w.join()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let read = reader.join();
    for r in results {
        r.unwrap();
    }
    read.unwrap();
    let got = fs::read(&p).unwrap();
    for t in 0..THREADS {
        let r = &got[(t * REGION) as usize..((t + 1) * REGION) as usize];
        let want = pat(t + 50, REGION as usize);
        assert!(
            r == want.as_slice(),
            "region {t} corrupted at byte {}",
            first_diff(r, &want)
        );
    }
    log.bytes("content", got);
}

#[test]
fn concurrent_writers_at_disjoint_offsets() {
    concurrent_writers_at_disjoint_offsets_in(&[]);
}

#[test]
fn concurrent_writers_at_disjoint_offsets_without_writeback_cache() {
    concurrent_writers_at_disjoint_offsets_in(&["--no-writeback-cache"]);
}

fn concurrent_writers_at_disjoint_offsets_in(mount_args: &[&'static str]) {
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.run(120, concurrent_disjoint_writers);
    fx.finish();
}

#[test]
fn fsync_and_fsyncdir() {
    let fx = Fx::new();
    fx.run(60, |root, log| {
        fs::create_dir(root.join("d")).unwrap();
        let mut f = File::create(root.join("d/f")).unwrap();
        f.write_all(&pat(11, 10_000)).unwrap();
        log.rec("fsync", en(f.sync_all()));
        log.rec("fdatasync", en(f.sync_data()));
        let ro = File::open(root.join("d/f")).unwrap();
        log.rec("fsync read-only", en(ro.sync_all()));
        log.rec(
            "fsyncdir",
            en(File::open(root.join("d")).and_then(|d| d.sync_all())),
        );
        log.rec(
            "fdatasync dir",
            en(File::open(root.join("d")).and_then(|d| d.sync_data())),
        );
        log.rec(
            "fsyncdir root",
            en(File::open(root).and_then(|d| d.sync_all())),
        );
        log.rec("syncfs", lc(unsafe { libc::syncfs(ro.as_raw_fd()) }));
    });
    fx.finish();
}

#[test]
fn large_file_sha256_round_trip() {
    large_file_sha256_round_trip_in(&[]);
}

#[test]
fn large_file_sha256_round_trip_without_writeback_cache() {
    large_file_sha256_round_trip_in(&["--no-writeback-cache"]);
}

fn large_file_sha256_round_trip_in(mount_args: &[&'static str]) {
    let mut fx = Fx::with_mount_args(&[], mount_args);
    const SIZE: usize = 20 << 20;
    let src = pat(12, SIZE);
    let want = hex(&Sha256::digest(&src));
    let (src2, want2) = (src.clone(), want.clone());
    fx.on_mount(180, move |mnt| {
        let mut f = File::create(mnt.join("big")).unwrap();
        let mut off = 0;
        let mut k = 0;
        // Chunks of 1 MiB and odd sizes.
        while off < SIZE {
            let n = if k % 2 == 0 { 1 << 20 } else { 12_345 + k * 7 }.min(SIZE - off);
            f.write_all(&src2[off..off + n]).unwrap();
            off += n;
            k += 1;
        }
        f.sync_all().unwrap();
        drop(f);
        assert_eq!(sha256_file(&mnt.join("big")), want2);
    });
    fx.remount();
    let cipher = fx.v.cipher.clone();
    let want3 = want.clone();
    fx.on_mount(180, move |mnt| {
        assert_eq!(fs::metadata(mnt.join("big")).unwrap().len(), SIZE as u64);
        assert_eq!(sha256_file(&mnt.join("big")), want3);
        // The cipher file has the documented size: header + 28 bytes per 4 KiB block + final block.
        let c = cipher_files(&cipher);
        assert_eq!(c.len(), 1);
        let blocks = SIZE as u64 / 4096;
        let expect = kmsfs::format::header::HEADER_LEN as u64 + blocks * (4096 + 28) + 28;
        assert_eq!(fs::metadata(&c[0]).unwrap().len(), expect);
    });
    let plain = fx.plain();
    with_timeout(60, move || fs::write(plain.join("big"), &src).unwrap());
    fx.finish();
}

fn sha256_file(p: &Path) -> String {
    let mut f = File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 65536 + 13];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex(&h.finalize())
}

#[test]
fn plaintext_names_volume_behaves_the_same() {
    // The same name operations on a volume with --plaintext-names (no directory ids, no side
    // files): reserved internal names are refused, everything else matches a plain directory.
    let fx = Fx::with(&["--plaintext-names"]);
    fx.run(60, |root, log| {
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::write(root.join("a/b/f"), pat(13, 7000)).unwrap();
        log.rec("rename dir", en(fs::rename(root.join("a"), root.join("z"))));
        log.rec("255", en(fs::write(root.join("n".repeat(255)), b"x")));
        log.rec(
            "link",
            en(fs::hard_link(root.join("z/b/f"), root.join("g"))),
        );
        log.rec(
            "symlink",
            en(std::os::unix::fs::symlink("z/b/f", root.join("s"))),
        );
        log.bytes("via symlink", fs::read(root.join("s")).unwrap());
        log.rec("rmdir non-empty", en(fs::remove_dir(root.join("z/b"))));
        log.rec("unlink", en(fs::remove_file(root.join("z/b/f"))));
        log.rec("rmdir", en(fs::remove_dir(root.join("z/b"))));
    });
    fx.on_mount(30, |mnt| {
        // Internal names are reserved on a plaintext-names volume.
        let e = fs::write(mnt.join("kmsfs.dirid"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    });
    fx.finish();
}

/// Runs a shell script as user `nobody` (uid/gid 65534) in `root`; returns its output.
fn as_nobody(root: &Path, script: &str) -> String {
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(root)
        .output()
        .expect("setpriv");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

const NOBODY_SCRIPT: &str = r#"
cd "$1/shared" || exit 9
umask 022
echo a > mine; echo "create $?"; stat -c 'mine %u:%g %a %s' mine
mkdir mydir; echo "mkdir $?"; stat -c 'mydir %u:%g %a' mydir
ln -s target mylink; echo "symlink $?"; stat -c 'mylink %u:%g' mylink
mkfifo myfifo; echo "mkfifo $?"; stat -c 'myfifo %u:%g %a %F' myfifo
cat ../private 2>&1; echo "read private $?"
cat ../public; echo "read public $?"
(echo x >> ../public) 2>&1; echo "write public $?"
truncate -s 0 ../public 2>&1; echo "truncate public $?"
rm -f rootfile 2>&1; echo "unlink in sticky dir $?"
mv rootfile stolen 2>&1; echo "rename in sticky dir $?"
mkdir ../newdir 2>&1; echo "mkdir in root-owned dir $?"
ln ../public hard 2>&1; echo "hard link to root's file $?"
chmod 4755 mine; echo "chmod $?"; stat -c 'mine %a' mine
echo more >> mine; echo "append $?"; stat -c 'mine after write %a %s' mine
chown 0 mine 2>&1; echo "chown $?"
chgrp 0 mine 2>&1; echo "chgrp $?"
touch -d '2001-02-03 04:05:06' mine; echo "touch $?"; stat -c 'mine %Y' mine
touch -d '2001-02-03 04:05:06' rootfile 2>&1; echo "touch root's file $?"
setfattr -n user.x -v y mine; echo "setxattr $?"; getfattr --only-values -n user.x mine; echo
setfattr -n user.x -v y rootfile 2>&1; echo "setxattr root's file $?"
chmod 4755 mine; perl -e 'chown(-1, -1, "mine") or exit 1'; echo "own chown -1 -1 $?"
stat -c 'mine after own chown -1 -1 %a' mine
perl -e 'chown(-1, -1, "../rootsuid")'; stat -c 'root suid after chown -1 -1 %a' ../rootsuid
rm -r mydir mylink myfifo mine; echo "cleanup $?"
"#;

#[test]
fn non_root_caller_owns_what_it_creates_and_meets_permissions() {
    // --allow-other lets another user in; the kernel checks permissions (default_permissions);
    // the default key's policy must let other users use the key (by default only its owner).
    let fx = Fx::build(
        &[],
        &["--allow-other"],
        allow_everyone_to_use_the_default_key,
    );
    // Let `nobody` reach the mount point and the plain directory.
    for p in [fx.v.tmp.path(), fx.plain.path()] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fx.run(60, |root, log| {
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir(root.join("shared")).unwrap();
        fs::set_permissions(root.join("shared"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(root.join("private"), b"secret").unwrap();
        fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(root.join("public"), b"pub\n").unwrap();
        fs::write(root.join("shared/rootfile"), b"r").unwrap();
        // Another user's chown(f, -1, -1) keeps root's set-user-id (EPERM on ext4).
        fs::write(root.join("rootsuid"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("rootsuid"), fs::Permissions::from_mode(0o4755)).unwrap();
        let out = as_nobody(root, NOBODY_SCRIPT);
        assert!(
            out.contains("create 0") && out.contains("cleanup 0"),
            "nobody could not work in {}:\n{out}",
            root.display()
        );
        for line in out.lines() {
            log.rec("nobody", line);
        }
    });
    fx.finish();
}

/// `--ro` and `-o ro` alike: every change refused with EROFS, the content readable, and
/// nothing written to the cipher directory by the reads (access times included).
#[test]
fn read_only_mount() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let p = m.path("f");
    with_timeout(10, move || {
        fs::create_dir(p.with_file_name("d")).unwrap();
        fs::write(&p, b"content").unwrap()
    });
    support::unmount(m);
    let day_old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    for args in [&["--ro"][..], &["-o", "ro"][..]] {
        // A day-old access time, which any read through a writable mount would move.
        let m = v.mount();
        let f = File::open(m.path("f")).unwrap();
        f.set_times(fs::FileTimes::new().set_accessed(day_old))
            .unwrap();
        drop(f);
        support::unmount(m);
        let m = v.mount_with(args);
        let mnt = m.mnt.clone();
        with_timeout(30, move || {
            assert_eq!(fs::read(mnt.join("f")).unwrap(), b"content");
            let erofs = Err(libc::EROFS);
            assert_eq!(en(fs::write(mnt.join("f"), b"x")), erofs);
            assert_eq!(en(fs::write(mnt.join("new"), b"x")), erofs);
            assert_eq!(en(fs::create_dir(mnt.join("d2"))), erofs);
            assert_eq!(en(fs::remove_file(mnt.join("f"))), erofs);
            assert_eq!(en(fs::rename(mnt.join("f"), mnt.join("g"))), erofs);
            assert_eq!(en(fs::remove_dir(mnt.join("d"))), erofs);
            assert_eq!(
                en(fs::set_permissions(
                    mnt.join("f"),
                    fs::Permissions::from_mode(0o600)
                )),
                erofs
            );
            assert_eq!(setx(&mnt.join("f"), "user.a", b"v", 0), erofs);
            assert_eq!(fs::read(mnt.join("f")).unwrap(), b"content");
        });
        let err = support::unmount(m);
        assert!(!err.contains("ERROR"), "{args:?}: {err}");
        assert!(!is_mounted(&v.mnt));
        let m = v.mount();
        let atime = fs::metadata(m.path("f")).unwrap().accessed().unwrap();
        support::unmount(m);
        assert_eq!(atime, day_old, "{args:?}: the reads set the access time");
    }
}

#[test]
fn o_direct_writes_at_arbitrary_offsets() {
    o_direct_writes_at_arbitrary_offsets_in(&[]);
}

#[test]
fn o_direct_writes_at_arbitrary_offsets_without_writeback_cache() {
    o_direct_writes_at_arbitrary_offsets_in(&["--no-writeback-cache"]);
}

fn o_direct_writes_at_arbitrary_offsets_in(mount_args: &[&'static str]) {
    // O_DIRECT hands our offsets and sizes to the file system unchanged (no page cache).
    let fx = Fx::with_mount_args(&[], mount_args);
    fx.on_mount(60, |mnt| {
        let p = mnt.join("direct");
        let mut want = Vec::new();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
            .unwrap();
        for (k, &(off, len)) in WRITES.iter().enumerate() {
            let d = pat(k as u64 + 500, len);
            f.write_all_at(&d, off).unwrap();
            let end = off as usize + len;
            if len > 0 && want.len() < end {
                want.resize(end, 0);
            }
            if len > 0 {
                want[off as usize..end].copy_from_slice(&d);
            }
            assert_eq!(
                f.metadata().unwrap().len(),
                want.len() as u64,
                "size after {off}+{len}"
            );
        }
        drop(f);
        let got = fs::read(&p).unwrap();
        assert!(
            got == want,
            "content differs at byte {}",
            first_diff(&got, &want)
        );
    });
    fx.finish_mount_only();
}

#[test]
fn no_mount_is_left_behind_by_this_file() {
    // Sanity check of the harness: a panicking body still unmounts (the guard's drop).
    let v = Volume::new(&[]);
    let mnt = v.mnt.clone();
    {
        let _m = v.mount();
        let r = std::panic::catch_unwind(|| with_timeout(10, || panic!("deliberate")));
        assert!(r.is_err());
    }
    assert!(!is_mounted(&mnt));
}
