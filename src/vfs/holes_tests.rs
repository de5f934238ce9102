//! Sparse files (holes, docs/FORMAT.md §4a) through the model, without FUSE: extensions store no
//! zeros, holes read as zeros, writes into them keep the rest a hole, and a zeroed written block
//! or a changed count of holes is still detected.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;

use super::Vfs;
use super::attr_ops::SetAttr;
use super::test_support::{
    caller, cipher_path, file_cipher, new_volume_with, open, read_at, write_file,
};
use crate::format::offsets::Layout;

const B: u64 = 4096;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// A new model over the volume, and the number of its file `a`.
fn reopen(dir: &std::path::Path) -> (Vfs, u64) {
    let v = open(dir);
    let a = v.lookup(1, "a".as_ref()).expect("lookup").ino;
    (v, a)
}

fn truncate(v: &Vfs, ino: u64, size: u64) {
    let set = SetAttr {
        size: Some(size),
        ..Default::default()
    };
    v.setattr(ino, None, &set, None).expect("truncate");
}

fn write_at(v: &Vfs, ino: u64, off: u64, data: &[u8]) {
    let fh = v.open_as(ino, libc::O_RDWR, &caller()).expect("open");
    v.write(fh, off, data).expect("write");
    v.release(fh).expect("release");
}

/// The whole file, read in 1 MiB pieces.
fn read_all(v: &Vfs, ino: u64) -> Vec<u8> {
    let fh = v.open_as(ino, libc::O_RDONLY, &caller()).expect("open");
    let mut out = Vec::new();
    loop {
        let d = v.read(fh, out.len() as u64, 1 << 20).expect("read");
        if d.is_empty() {
            break;
        }
        out.extend_from_slice(&d);
    }
    v.release(fh).expect("release");
    out
}

fn try_read(v: &Vfs, ino: u64, off: u64, len: u32) -> super::Result<Vec<u8>> {
    let fh = v.open_as(ino, libc::O_RDONLY, &caller()).expect("open");
    let r = v.read(fh, off, len);
    v.release(fh).expect("release");
    r
}

/// Overwrites `len` bytes of the cipher file at `at` with `f(old)`.
fn patch(path: &PathBuf, at: u64, len: usize, f: impl Fn(&mut [u8])) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("cipher file");
    let mut b = vec![0u8; len];
    file.read_exact_at(&mut b, at).expect("read");
    f(&mut b);
    file.write_all_at(&b, at).expect("write");
}

/// Zeroing each of `blocks` (written blocks) in the cipher file at `p`, one at a time and put
/// back after, makes its read fail as damaged.
fn assert_zeroing_detected(dir: &std::path::Path, p: &PathBuf, blocks: &[u64]) {
    let l = Layout::new(B as u32);
    for &block in blocks {
        let saved = std::fs::read(p).expect("cipher file");
        patch(
            p,
            l.cipher_offset(block),
            l.cipher_block_size() as usize,
            |b| b.fill(0),
        );
        let (v, a) = reopen(dir);
        let r = try_read(&v, a, block * B, B as u32);
        assert!(r.is_err_and(|e| e.is_integrity()), "block {block} zeroed");
        drop(v);
        std::fs::write(p, &saved).expect("restore");
    }
}

#[test]
fn a_far_extension_stores_holes_that_read_as_zeros_and_stay_after_a_reopen() {
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let head = pattern(10_000, 1);
    let a = write_file(&v, "a", &head);
    let size = 64 << 20;
    truncate(&v, a, size);
    let p = cipher_path(&v, a);
    let md = std::fs::metadata(&p).expect("stat");
    assert_eq!(md.len(), Layout::new(B as u32).cipher_size(size));
    assert!(
        md.blocks() * 512 < 1 << 20,
        "64 MiB of holes took {} bytes",
        md.blocks() * 512
    );
    let mut want = head.clone();
    want.resize(size as usize, 0);
    assert!(read_all(&v, a) == want, "content after the extension");
    // A write far past the end: holes between, its bytes at their place.
    let tail = pattern(5000, 2);
    write_at(&v, a, 200 << 20, &tail);
    want.resize(200 << 20, 0);
    want.extend_from_slice(&tail);
    assert!(std::fs::metadata(&p).expect("stat").blocks() * 512 < 1 << 20);
    drop(v);
    let (v, a) = reopen(&dir);
    assert!(read_all(&v, a) == want, "content after a reopen");
    // A short gap is written as encrypted zeros (no hole), as in a file without holes.
    let b = write_file(&v, "b", b"x");
    truncate(&v, b, 3 * B);
    assert_eq!(
        read_at(&v, b, 0, 1 << 20),
        [&b"x"[..], &[0; 3 * B as usize - 1]].concat()
    );
}

#[test]
fn writes_into_holes_and_truncates_agree_with_a_plain_copy() {
    // A seeded series of writes, extensions, cuts and punched holes, on the model and on a plain
    // vector.
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let a = write_file(&v, "a", &pattern(3000, 3));
    let mut want = pattern(3000, 3);
    let mut r: u64 = 0x05ee_d0f4_01e5;
    let mut next = |n: u64| {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        r % n
    };
    for step in 0..300u64 {
        let size = want.len() as u64;
        match next(7) {
            6 => {
                // A hole punched (zeros, the whole blocks inside given back).
                let off = next(size + 1);
                let len = next(3 << 20);
                let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
                v.fallocate(
                    fh,
                    off,
                    len,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                )
                .expect("punch");
                v.release(fh).expect("release");
                let to = (off + len).min(size) as usize;
                if (off as usize) < to {
                    want[off as usize..to].fill(0);
                }
            }
            0 => {
                let to = next(8 << 20);
                truncate(&v, a, to);
                want.resize(to as usize, 0);
            }
            1 | 2 => {
                // Aligned whole blocks, often at a hole's edges.
                let off = next(size / B + 40) * B;
                let data = pattern((1 + next(3)) as usize * B as usize, step as u8);
                write_at(&v, a, off, &data);
                if want.len() < off as usize + data.len() {
                    want.resize(off as usize + data.len(), 0);
                }
                want[off as usize..off as usize + data.len()].copy_from_slice(&data);
            }
            _ => {
                let off = next(size + (1 << 20));
                let data = pattern(1 + next(9000) as usize, step as u8);
                write_at(&v, a, off, &data);
                if want.len() < off as usize + data.len() {
                    want.resize(off as usize + data.len(), 0);
                }
                want[off as usize..off as usize + data.len()].copy_from_slice(&data);
            }
        }
        if step % 25 == 0 {
            assert!(read_all(&v, a) == want, "step {step}");
        }
    }
    assert!(read_all(&v, a) == want, "at the end");
    drop(v);
    let (v, a) = reopen(&dir);
    assert!(read_all(&v, a) == want, "after a reopen");
}

#[test]
fn a_zeroed_written_block_or_a_changed_count_of_holes_is_detected() {
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let l = Layout::new(B as u32);
    let a = write_file(&v, "a", &pattern(3 * B as usize, 4));
    // Blocks 0-2 written, 3..=99 holes, 100 (the final block) written.
    truncate(&v, a, 100 * B + 10);
    let p = cipher_path(&v, a);
    let cbs = l.cipher_block_size() as usize;
    let fresh = |what: &str, block: u64| {
        let (v, a) = reopen(&dir);
        let r = try_read(&v, a, block * B, B as u32);
        assert!(
            r.is_err_and(|e| e.is_integrity()),
            "{what}: read block {block}"
        );
    };
    // The holes read as zeros, the blocks around them as written.
    assert_eq!(read_at(&v, a, 50 * B, B as u32), vec![0; B as usize]);
    drop(v);
    let saved = std::fs::read(&p).expect("cipher file");
    // A written block zeroed: no count reaches it.
    patch(&p, l.cipher_offset(1), cbs, |b| b.fill(0));
    fresh("block 1 zeroed", 1);
    std::fs::write(&p, &saved).expect("restore");
    // The last written block before the holes zeroed.
    patch(&p, l.cipher_offset(2), cbs, |b| b.fill(0));
    fresh("block 2 zeroed", 2);
    std::fs::write(&p, &saved).expect("restore");
    // The count of the block after the holes changed, either way: it fails itself, and the
    // holes it vouched for with it.
    for bit in [0x01u8, 0x80] {
        patch(&p, l.cipher_offset(100) + 3, 1, |b| b[0] ^= bit);
        fresh("count changed", 100);
        fresh("count changed, a hole", 50);
        std::fs::write(&p, &saved).expect("restore");
    }
    // The final block zeroed: nothing vouches for the holes any more.
    patch(&p, l.cipher_offset(100), 10 + 28, |b| b.fill(0));
    fresh("final block zeroed, a hole", 60);
    std::fs::write(&p, &saved).expect("restore");
    let (v, a) = reopen(&dir);
    assert_eq!(read_at(&v, a, 99 * B, B as u32), vec![0; B as usize]);
}

#[test]
fn a_filled_hole_is_no_longer_a_hole() {
    // Block 50 written inside the run 3..=99: the block after the run counts only 51..=99 from
    // then on, so zeroing block 50 again is detected, while 3..=49 and 51..=99 stay holes.
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let a = write_file(&v, "a", &pattern(3 * B as usize, 5));
    truncate(&v, a, 100 * B + 10);
    write_at(&v, a, 50 * B, &pattern(B as usize, 6));
    write_at(&v, a, 99 * B, &pattern(B as usize, 7));
    assert_eq!(read_at(&v, a, 50 * B, B as u32), pattern(B as usize, 6));
    assert_eq!(read_at(&v, a, 30 * B, B as u32), vec![0; B as usize]);
    assert_eq!(read_at(&v, a, 70 * B, B as u32), vec![0; B as usize]);
    let p = cipher_path(&v, a);
    drop(v);
    assert_zeroing_detected(&dir, &p, &[50, 99]);
}

#[test]
fn holes_copied_as_allocated_zeros_still_read() {
    // `cp` without `--sparse`, a sync tool or a backup restore writes the holes out as zeros:
    // the file is the same to kmsfs.
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let a = write_file(&v, "a", &pattern(5000, 8));
    truncate(&v, a, 8 << 20);
    write_at(&v, a, 4 << 20, b"middle");
    let want = read_all(&v, a);
    let p = cipher_path(&v, a);
    drop(v);
    let bytes = std::fs::read(&p).expect("cipher file");
    let f = File::create(&p).expect("rewrite");
    f.write_all_at(&bytes, 0).expect("write out");
    drop(f);
    assert!(std::fs::metadata(&p).expect("stat").blocks() * 512 >= 8 << 20);
    let (v, a) = reopen(&dir);
    assert!(read_all(&v, a) == want);
}

#[test]
fn a_volume_without_the_feature_writes_zeros() {
    let (_t, dir) = new_volume_with(false);
    let v = open(&dir);
    let a = write_file(&v, "a", b"x");
    truncate(&v, a, 8 << 20);
    let p = cipher_path(&v, a);
    assert!(std::fs::metadata(&p).expect("stat").blocks() * 512 >= 8 << 20);
    let mut h = [0u8; 8];
    File::open(&p)
        .expect("open")
        .read_exact_at(&mut h, 0)
        .expect("header");
    assert_eq!(h[6..8], [0, 0], "header flags");
}

#[test]
fn an_interrupted_extension_with_holes_is_recovered_with_its_holes() {
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let l = Layout::new(B as u32);
    let head = pattern(3 * B as usize, 9);
    let a = write_file(&v, "a", &head);
    // Blocks 0-2 written, 3..=9 holes, 10 an empty final block counting them.
    truncate(&v, a, 10 * B);
    let mut want = head.clone();
    want.resize(10 * B as usize, 0);
    let p = cipher_path(&v, a);
    let c = file_cipher(&v, &p);
    drop(v);
    let saved = std::fs::read(&p).expect("cipher file");
    let rw = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .expect("cipher file")
    };
    // A crash in a further extension, after the empty final block was cut and before the new
    // one was written: the marker holds the count of holes before block 10.
    let f = rw();
    assert!(crate::content::pending::mark(&f, 1, &c, 10, 0, 7));
    f.set_len(l.cipher_offset(10)).expect("cut");
    drop(f);
    let (v, a) = reopen(&dir);
    assert!(read_all(&v, a) == want, "after recovery");
    drop(v);
    assert_eq!(std::fs::read(&p).expect("cipher file").len(), saved.len());
    // A marker whose count reaches over written blocks (a stale one): only the holes right
    // before the cut count, and block 2 stays protected.
    let f = rw();
    assert!(crate::content::pending::mark(&f, 1, &c, 10, 0, 9));
    f.set_len(l.cipher_offset(10)).expect("cut");
    drop(f);
    let (v, a) = reopen(&dir);
    assert!(
        read_all(&v, a) == want,
        "after recovery with a count too large"
    );
    drop(v);
    assert_zeroing_detected(&dir, &p, &[2]);
    // A marker left on a file whose write had finished: nothing changes, holes included.
    let f = rw();
    assert!(crate::content::pending::mark(&f, 1, &c, 2, 0, 0));
    drop(f);
    let (v, a) = reopen(&dir);
    assert!(read_all(&v, a) == want, "after a stale marker");
    drop(v);
    // A crash after the old final block became a full one and before the new final block was
    // written: the file ends after it, the holes before it kept.
    let (v, a) = reopen(&dir);
    write_at(&v, a, 10 * B, b"tail");
    truncate(&v, a, 50 * B);
    drop(v);
    let f = rw();
    assert!(crate::content::pending::mark(&f, 1, &c, 10, 0, 7));
    f.set_len(l.cipher_offset(11)).expect("cut");
    drop(f);
    let (v, a) = reopen(&dir);
    want.extend_from_slice(b"tail");
    want.resize(11 * B as usize, 0);
    assert!(read_all(&v, a) == want, "after the second recovery");
}

#[test]
fn fallocate_allocates_holes_and_extends_without_them() {
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let a = write_file(&v, "a", &pattern(5000, 10));
    truncate(&v, a, 8 << 20);
    let p = cipher_path(&v, a);
    assert!(std::fs::metadata(&p).expect("stat").blocks() * 512 < 1 << 20);
    let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
    // KEEP_SIZE over the holes of the first 4 MiB: allocated, same size, same bytes.
    v.fallocate(fh, 0, 4 << 20, libc::FALLOC_FL_KEEP_SIZE)
        .expect("keep size");
    let blocks = std::fs::metadata(&p).expect("stat").blocks() * 512;
    assert!(blocks >= 4 << 20, "{blocks} bytes allocated");
    assert!(blocks < 6 << 20, "{blocks} bytes allocated");
    // Mode 0 past the end: allocated zeros, not holes.
    v.fallocate(fh, 6 << 20, 6 << 20, 0).expect("extend");
    v.release(fh).expect("release");
    let mut want = pattern(5000, 10);
    want.resize(12 << 20, 0);
    assert!(read_all(&v, a) == want);
    let md = std::fs::metadata(&p).expect("stat");
    assert_eq!(md.len(), Layout::new(B as u32).cipher_size(12 << 20));
    // The holes between 4 and 6 MiB stay; 6 to 12 MiB is allocated (the holes to 8 MiB filled).
    assert!(md.blocks() * 512 >= 10 << 20, "{} bytes", md.blocks() * 512);
    assert!(md.blocks() * 512 < 11 << 20, "{} bytes", md.blocks() * 512);
    drop(v);
    let (v, a) = reopen(&dir);
    assert!(read_all(&v, a) == want, "after a reopen");
}

/// KEEP_SIZE past the end reserves the room in the backing file (allocated past its end, the
/// size unchanged), so that the writes growing the file into it later need no new space; in a
/// volume with and without sparse files (xfstests' generic/213: it reserved nothing).
#[test]
fn fallocate_keep_size_past_the_end_reserves_the_space() {
    // Sizes inside a block and at a block's end (an extension with holes then shortens the
    // backing file first, which lets the room go: asked for again).
    for (sparse, size) in [(true, 5000), (false, 5000), (true, 8192), (false, 8192)] {
        let what = format!("sparse {sparse}, size {size}");
        let (_t, dir) = new_volume_with(sparse);
        let v = open(&dir);
        let l = Layout::new(B as u32);
        let a = write_file(&v, "a", &pattern(size, 12));
        let p = cipher_path(&v, a);
        let allocated = || std::fs::metadata(&p).expect("stat").blocks() * 512;
        let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
        v.fallocate(fh, 0, 8 << 20, libc::FALLOC_FL_KEEP_SIZE)
            .expect("keep size");
        let md = std::fs::metadata(&p).expect("stat");
        assert_eq!(md.len(), l.cipher_size(size as u64), "{what}: size kept");
        assert!(
            allocated() >= l.cipher_size(8 << 20),
            "{what}: {} bytes allocated",
            allocated()
        );
        assert_eq!(v.getattr(a).expect("getattr").size, size as u64);
        // Written into later, it reads back, and the room past the write is still kept; a
        // range inside the file asks nothing more.
        v.write(fh, 6 << 20, b"late").expect("write");
        assert!(
            allocated() >= l.cipher_size(8 << 20) - l.cipher_offset(l.block_of(6 << 20)),
            "{what}: {} bytes allocated after the write",
            allocated()
        );
        v.fallocate(fh, 0, 4096, libc::FALLOC_FL_KEEP_SIZE)
            .expect("inside");
        v.release(fh).expect("release");
        let mut want = pattern(size, 12);
        want.resize(6 << 20, 0);
        want.extend_from_slice(b"late");
        assert!(read_all(&v, a) == want, "{what}");
    }
}

/// In a sparse file, `KEEP_SIZE` far past the end keeps room for what the writes there will
/// store (the blocks from the range's start on), not for the gap before it, which stays holes
/// (a 4 KiB range 1 GiB past a small file asked the backing file system for a gigabyte).
#[test]
fn fallocate_keep_size_far_past_the_end_reserves_only_the_range_in_a_sparse_file() {
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let a = write_file(&v, "a", &pattern(5000, 14));
    let p = cipher_path(&v, a);
    let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
    v.fallocate(fh, 1 << 30, 64 << 10, libc::FALLOC_FL_KEEP_SIZE)
        .expect("keep size");
    let allocated = std::fs::metadata(&p).expect("stat").blocks() * 512;
    assert!(allocated >= 64 << 10, "{allocated} bytes allocated");
    assert!(allocated < 1 << 20, "{allocated} bytes allocated");
    v.write(fh, 1 << 30, b"far").expect("write");
    v.release(fh).expect("release");
    let data = read_all(&v, a);
    assert_eq!(data.len(), (1 << 30) + 3);
    assert_eq!(&data[1 << 30..], b"far");
}

/// Mode 0 far past the end of a sparse file allocates the range, not the gap before it,
/// which becomes holes (as on ext4): a 64 KiB range 1 TiB past a small file was refused with
/// ENOSPC (the gap as encrypted zeros needed more than the disk); a nearer one wrote the gap.
#[test]
fn fallocate_far_past_the_end_of_a_sparse_file_allocates_only_the_range() {
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let a = write_file(&v, "a", &pattern(5000, 15));
    let p = cipher_path(&v, a);
    let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
    let (far, len) = (1u64 << 40, 64u64 << 10);
    v.fallocate(fh, far, len, 0).expect("allocate far");
    assert_eq!(v.getattr(a).expect("getattr").size, far + len);
    let allocated = std::fs::metadata(&p).expect("stat").blocks() * 512;
    assert!(allocated >= len, "{allocated} bytes allocated");
    assert!(allocated < 1 << 20, "{allocated} bytes allocated");
    // A nearer range: the gap is holes too, the range allocated zeros.
    let b = write_file(&v, "b", &pattern(5000, 16));
    let pb = cipher_path(&v, b);
    let fb = v.open_as(b, libc::O_RDWR, &caller()).expect("open");
    v.fallocate(fb, 32 << 20, 1 << 20, 0).expect("allocate");
    let allocated = std::fs::metadata(&pb).expect("stat").blocks() * 512;
    assert!(allocated >= 1 << 20, "{allocated} bytes allocated");
    assert!(allocated < 3 << 20, "{allocated} bytes allocated");
    v.release(fb).expect("release");
    v.write(fh, far + 10, b"x").expect("write into the range");
    v.release(fh).expect("release");
    drop(v);
    let (v, _) = reopen(&dir);
    let a = v.lookup(1, "a".as_ref()).expect("lookup").ino;
    assert_eq!(v.getattr(a).expect("getattr").size, far + len);
    assert!(read_at(&v, a, 0, 5000) == pattern(5000, 15));
    assert!(read_at(&v, a, 1 << 30, 4096).iter().all(|&x| x == 0));
    let mut want = vec![0u8; 64];
    want[10] = b'x';
    assert_eq!(read_at(&v, a, far, 64), want);
    let b = v.lookup(1, "b".as_ref()).expect("lookup").ino;
    let data = read_all(&v, b);
    assert_eq!(data.len(), 33 << 20);
    assert!(data[..5000] == pattern(5000, 16)[..] && data[5000..].iter().all(|&x| x == 0));
}

/// Zeroing or punching a range wholly past the end of the file, and allocating one, moves the
/// modification time as on ext4, although nothing is written (without the writeback cache
/// the kernel leaves the times to kmsfs: xfstests-style probe, zero range and punch kept them).
#[test]
fn fallocate_past_the_end_moves_the_modification_time() {
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let a = write_file(&v, "a", &pattern(64 << 10, 13));
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    for (what, mode) in [
        (
            "zero range",
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        ),
        (
            "punch",
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        ),
        ("allocate", libc::FALLOC_FL_KEEP_SIZE),
    ] {
        let set = SetAttr {
            mtime: Some(super::attr_ops::SetTime::At(old)),
            ..Default::default()
        };
        v.setattr(a, None, &set, None).expect("utimes");
        assert_eq!(v.getattr(a).expect("getattr").mtime, old);
        let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
        v.fallocate(fh, 300 << 10, 4096, mode).expect(what);
        v.release(fh).expect("release");
        let at = v.getattr(a).expect("getattr");
        assert!(at.mtime > old, "{what}: mtime kept");
        assert_eq!(at.size, 64 << 10, "{what}");
    }
}

#[test]
fn a_punched_hole_gives_its_space_back_and_stays_authenticated() {
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let l = Layout::new(B as u32);
    let mut want = pattern(64 * B as usize + 10, 11);
    let a = write_file(&v, "a", &want);
    let p = cipher_path(&v, a);
    let before = std::fs::metadata(&p).expect("stat").blocks() * 512;
    let punch = |off: u64, len: u64| {
        let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
        let r = v.fallocate(
            fh,
            off,
            len,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        );
        v.release(fh).expect("release");
        r
    };
    // Blocks 11..=39 whole inside, 10 and 40 in part.
    punch(10 * B + 100, 30 * B).expect("punch");
    want[(10 * B + 100) as usize..(40 * B + 100) as usize].fill(0);
    // Next to it: one more run that joins the first (41..=49), and one inside the final block.
    punch(40 * B, 10 * B).expect("punch again");
    want[(40 * B) as usize..(50 * B) as usize].fill(0);
    punch(64 * B + 2, 100).expect("punch in the final block");
    want[(64 * B + 2) as usize..].fill(0);
    assert!(read_all(&v, a) == want);
    let after = std::fs::metadata(&p).expect("stat").blocks() * 512;
    // 39 blocks of 4,124 bytes: the backing pages wholly inside them.
    assert!(
        before - after >= 36 * B,
        "{before} -> {after} bytes allocated"
    );
    assert_eq!(
        std::fs::metadata(&p).expect("stat").len(),
        l.cipher_size(want.len() as u64)
    );
    drop(v);
    let (v, a) = reopen(&dir);
    assert!(read_all(&v, a) == want, "after a reopen");
    drop(v);
    // Still detected: the written block right before the run, or right after it, zeroed.
    assert_zeroing_detected(&dir, &p, &[10, 50]);
    // A file without holes refuses to punch.
    let (_t2, dir2) = new_volume_with(false);
    let v = open(&dir2);
    let b = write_file(&v, "b", &pattern(10 * B as usize, 1));
    let fh = v.open_as(b, libc::O_RDWR, &caller()).expect("open");
    let r = v.fallocate(
        fh,
        0,
        8 * B,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    );
    assert!(r.is_err_and(|e| e.errno() == libc::EOPNOTSUPP));
    v.release(fh).expect("release");
}

#[test]
fn holes_made_through_the_handle_that_created_the_file() {
    // A new file is known to hold no holes (its writes read no count) until an extension on
    // the same handle makes some: from then on its writes into them keep the counts right.
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let (attr, fh) = v
        .create(1, "a".as_ref(), 0o644, libc::O_RDWR, &caller())
        .expect("create");
    let mut want = pattern(5000, 12);
    v.write(fh, 0, &want).expect("write");
    let set = SetAttr {
        size: Some(100 * B + 10),
        ..Default::default()
    };
    v.setattr(attr.ino, Some(fh), &set, None).expect("truncate");
    want.resize((100 * B + 10) as usize, 0);
    for (at, seed) in [(50 * B, 13), (99 * B, 14), (2 * B, 15)] {
        let d = pattern(B as usize, seed);
        v.write(fh, at, &d).expect("write into holes");
        want[at as usize..(at + B) as usize].copy_from_slice(&d);
    }
    v.release(fh).expect("release");
    let p = cipher_path(&v, attr.ino);
    drop(v);
    let (v, a) = reopen(&dir);
    assert!(read_all(&v, a) == want);
    drop(v);
    assert_zeroing_detected(&dir, &p, &[2, 50, 99]);
}

#[test]
fn writes_into_one_run_through_one_handle_keep_their_counts_exact() {
    // Block 10, then block 20 of the run 1..=99 on one handle: block 20's count must start
    // after block 10 (a cached run from before the first write reached back to block 1), so
    // zeroing block 10 or 20 is detected.
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let (attr, fh) = v
        .create(1, "a".as_ref(), 0o644, libc::O_RDWR, &caller())
        .expect("create");
    v.write(fh, 0, b"x").expect("write");
    let set = SetAttr {
        size: Some(100 * B + 1),
        ..Default::default()
    };
    v.setattr(attr.ino, Some(fh), &set, None).expect("truncate");
    v.write(fh, 10 * B + 5, b"ten").expect("write");
    v.write(fh, 20 * B + 5, b"twenty").expect("write");
    v.release(fh).expect("release");
    let p = cipher_path(&v, attr.ino);
    drop(v);
    let (v, a) = reopen(&dir);
    let all = read_all(&v, a);
    assert_eq!(&all[10 * B as usize + 5..][..3], b"ten");
    assert_eq!(&all[20 * B as usize + 5..][..6], b"twenty");
    drop(v);
    assert_zeroing_detected(&dir, &p, &[10, 20]);
    // Through fsync, the same.
    let (v, a) = reopen(&dir);
    let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
    v.write(fh, 30 * B, &pattern(B as usize, 1)).expect("write");
    v.write(fh, 40 * B, &pattern(B as usize, 2)).expect("write");
    v.fsync(fh, true).expect("fsync");
    drop(v);
    assert_zeroing_detected(&dir, &p, &[30, 40]);
}

#[test]
fn a_count_shrinks_only_once_the_blocks_it_stops_counting_are_synced() {
    // Blocks 1..=99 holes; blocks 50 and 51 filled through one handle. Until a sync, the
    // cipher file as a power loss could leave it (the fills lost, zeros again) must read: the
    // counts on the disk still reach over them. After the fsync the counts are exact: zeroing
    // block 50 or 51 is detected.
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let a = write_file(&v, "a", b"x");
    truncate(&v, a, 100 * B + 1);
    let p = cipher_path(&v, a);
    drop(v);
    let l = Layout::new(B as u32);
    let (v, a) = reopen(&dir);
    let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
    v.write(fh, 50 * B, &pattern(B as usize, 3)).expect("write");
    v.write(fh, 51 * B, &pattern(B as usize, 4)).expect("write");
    let mut lost = std::fs::read(&p).expect("cipher file");
    for b in [50, 51] {
        let at = l.cipher_offset(b) as usize;
        lost[at..at + l.cipher_block_size() as usize].fill(0);
    }
    v.fsync(fh, true).expect("fsync");
    v.release(fh).expect("release");
    let mut want = vec![0u8; 100 * B as usize + 1];
    want[0] = b'x';
    want[50 * B as usize..51 * B as usize].copy_from_slice(&pattern(B as usize, 3));
    want[51 * B as usize..52 * B as usize].copy_from_slice(&pattern(B as usize, 4));
    assert!(read_all(&v, a) == want, "after the fsync");
    drop(v);
    assert_zeroing_detected(&dir, &p, &[50, 51]);
    // The state before the fsync, with the two fills lost: holes, as before them.
    let synced = std::fs::read(&p).expect("cipher file");
    std::fs::write(&p, &lost).expect("power loss");
    let (v, a) = reopen(&dir);
    let mut before = vec![0u8; 100 * B as usize + 1];
    before[0] = b'x';
    assert!(read_all(&v, a) == before, "the fills lost");
    drop(v);
    std::fs::write(&p, &synced).expect("back");
}

#[test]
fn a_run_seen_through_a_count_not_yet_settled_is_not_used_before_the_written_block_it_passes() {
    // Blocks 0..=14 written, 15..=29 holes, 30 the final block counting them. On one handle
    // (no settle in between): block 20 is filled (30 still counts back to 15), blocks 12..=19
    // are punched (20 now counts back to 12), hole 25 is read (its run is found through 30's
    // count, which passes over block 20), hole 17 is filled: its run ends at 20, not 30, and
    // starts at 12. Cut back to 16 blocks and a byte: blocks 12..=14 must still be holes that
    // a count reaches (the new final block's, through 17's).
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let a = write_file(&v, "a", &pattern(15 * B as usize, 5));
    truncate(&v, a, 30 * B + 1);
    drop(v);
    let (v, a) = reopen(&dir);
    let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
    v.write(fh, 20 * B, &pattern(B as usize, 6))
        .expect("fill 20");
    v.fallocate(
        fh,
        12 * B,
        8 * B,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    )
    .expect("punch");
    assert_eq!(
        v.read(fh, 25 * B, B as u32).expect("read 25"),
        vec![0u8; B as usize]
    );
    v.write(fh, 17 * B, &pattern(B as usize, 7))
        .expect("fill 17");
    let set = SetAttr {
        size: Some(16 * B + 1),
        ..Default::default()
    };
    v.setattr(a, Some(fh), &set, None).expect("truncate");
    let mut want = pattern(15 * B as usize, 5);
    want[12 * B as usize..].fill(0);
    want.resize(16 * B as usize + 1, 0);
    assert!(
        try_read(&v, a, 0, 16 * B as u32 + 1).expect("read through the handle's state") == want
    );
    v.release(fh).expect("release");
    drop(v);
    let (v, a) = reopen(&dir);
    assert!(read_all(&v, a) == want, "after a reopen");
}

#[test]
fn a_write_over_a_run_and_its_end_keeps_the_end_block_counting_until_a_sync() {
    // Holes 1..=19 counted by block 20: the final block (one byte, or empty when the size is a
    // multiple of the block size). One write fills the holes and stores block 20 again. Until a
    // sync, the cipher file as a power loss could leave it (block 20 stored, the fills lost)
    // must read: block 20 still counts the holes.
    for size in [20 * B + 1, 20 * B] {
        let (_t, dir) = new_volume_with(true);
        let v = open(&dir);
        let a = write_file(&v, "a", b"x");
        truncate(&v, a, size);
        let p = cipher_path(&v, a);
        drop(v);
        let l = Layout::new(B as u32);
        let (v, a) = reopen(&dir);
        let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
        let data = pattern((size - B) as usize, 8);
        v.write(fh, B, &data).expect("write");
        let mut lost = std::fs::read(&p).expect("cipher file");
        for b in 1..20 {
            let at = l.cipher_offset(b) as usize;
            lost[at..at + l.cipher_block_size() as usize].fill(0);
        }
        v.release(fh).expect("release");
        drop(v);
        // After the close the count is exact: zeroing a filled block is detected.
        assert_zeroing_detected(&dir, &p, &[1, 19]);
        std::fs::write(&p, &lost).expect("power loss");
        let (v, a) = reopen(&dir);
        let mut want = vec![0u8; size as usize];
        want[0] = b'x';
        want[20 * B as usize..].copy_from_slice(&data[19 * B as usize..]);
        assert!(read_all(&v, a) == want, "size {size}: the fills lost");
    }
}

#[test]
fn a_punch_that_fills_the_list_of_counts_to_settle_does_not_settle_before_it_punches() {
    // Blocks 10..=19 written and synced, then 1,023 hole fills on one handle (1,024 counts
    // waiting: the limit), then a punch of blocks 12..=14, whose run end (block 15) is one
    // more. Settling there, before the blocks are punched, would count no holes before 15.
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let a = write_file(&v, "a", b"x");
    truncate(&v, a, 5000 * B + 1);
    write_at(&v, a, 10 * B, &pattern(10 * B as usize, 9));
    drop(v);
    let (v, a) = reopen(&dir);
    let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
    for i in 0..1023 {
        v.write(fh, (2000 + 2 * i) * B, b"f").expect("fill");
    }
    v.fallocate(
        fh,
        12 * B,
        3 * B,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    )
    .expect("punch");
    assert_eq!(
        v.read(fh, 12 * B, 3 * B as u32)
            .expect("read the punched blocks"),
        vec![0u8; 3 * B as usize]
    );
    v.release(fh).expect("release");
    drop(v);
    let (v, a) = reopen(&dir);
    assert_eq!(
        try_read(&v, a, 12 * B, 4 * B as u32).expect("after a reopen")[..3 * B as usize],
        vec![0u8; 3 * B as usize]
    );
}

#[test]
fn only_a_failed_write_back_short_of_room_turns_holes_off() {
    // The backing blocks of 64 MiB past a one-block file.
    let far = 64 << 20;
    let extended_sparse = |v: &Vfs, fail: Option<(rustix::io::Errno, bool)>, removed: bool| {
        let a = write_file(v, &format!("f{}{removed}", failure_name(&fail)), b"x");
        let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
        if removed {
            // A file removed a moment ago: a write short of room is tried once more.
            write_file(v, "gone", b"g");
            v.unlink(1, "gone".as_ref()).expect("unlink");
        }
        if let Some((errno, cached)) = fail {
            crate::fault::arm(1, errno);
            let from = if cached {
                super::WriteFrom::PageCache { kernel_times: true }
            } else {
                super::WriteFrom::Caller
            };
            let r = v.write_from(fh, 3 * B, &[7; 100], from);
            crate::fault::disarm();
            assert_eq!(r.is_err(), !removed, "the injected failure");
        }
        // Through the same handle, as the kernel sends it: a write far past the end.
        v.write(fh, far, b"end").expect("far write");
        v.release(fh).expect("release");
        let blocks = std::fs::metadata(cipher_path(v, a)).expect("stat").blocks() * 512;
        let mut want = vec![b'x'];
        want.resize(far as usize, 0);
        if removed {
            want[3 * B as usize..3 * B as usize + 100].fill(7);
        }
        want.extend_from_slice(b"end");
        assert!(read_all(v, a) == want, "content ({fail:?})");
        blocks < 1 << 20
    };
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let (nospc, cached) = (rustix::io::Errno::NOSPC, true);
    assert!(extended_sparse(&v, None, false));
    // A write the caller was told of (no writeback cache, O_DIRECT): it may go on past it.
    assert!(extended_sparse(&v, Some((nospc, false)), false));
    // Past the largest size the disk takes: every later page would be refused as well.
    assert!(extended_sparse(
        &v,
        Some((rustix::io::Errno::FBIG, cached)),
        false
    ));
    // A write-back short of room: the pages after it must not land after a gap of holes.
    assert!(!extended_sparse(&v, Some((nospc, cached)), false));
    assert!(!extended_sparse(
        &v,
        Some((rustix::io::Errno::IO, cached)),
        false
    ));
    // ... unless it succeeded when tried again once removed files were let go.
    assert!(extended_sparse(&v, Some((nospc, cached)), true));
}

fn failure_name(fail: &Option<(rustix::io::Errno, bool)>) -> String {
    match fail {
        None => "none".into(),
        Some((e, c)) => format!("{}-{c}", e.raw_os_error()),
    }
}

/// `SEEK_DATA` / `SEEK_HOLE` (true) through a handle of `ino`: the offset, or the errno.
fn seek(v: &Vfs, ino: u64, off: i64, hole: bool) -> Result<i64, rustix::io::Errno> {
    let fh = v.open_as(ino, libc::O_RDONLY, &caller()).expect("open");
    let r = v.seek(ino, fh, off, hole).map_err(|e| match e {
        super::VfsError::Sys(e) => e,
        e => panic!("seek {off}: {e}"),
    });
    v.release(fh).expect("release");
    r
}

#[test]
fn seek_data_and_seek_hole_find_the_holes_and_only_them() {
    use rustix::io::Errno;
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let b = B as i64;
    // Blocks 0-2 written, 3..=99 holes, 100 (the final block) written.
    let a = write_file(&v, "a", &pattern(3 * B as usize, 4));
    let size = 100 * b + 10;
    truncate(&v, a, size as u64);
    let data = |off| seek(&v, a, off, false);
    let hole = |off| seek(&v, a, off, true);
    assert_eq!(data(0), Ok(0));
    assert_eq!(data(b + 5), Ok(b + 5));
    assert_eq!(hole(0), Ok(3 * b));
    assert_eq!(hole(b + 5), Ok(3 * b));
    assert_eq!(hole(3 * b - 1), Ok(3 * b));
    assert_eq!(data(3 * b), Ok(100 * b));
    assert_eq!(data(50 * b + 7), Ok(100 * b));
    assert_eq!(hole(50 * b + 7), Ok(50 * b + 7));
    assert_eq!(hole(100 * b), Ok(size));
    assert_eq!(data(size - 1), Ok(size - 1));
    for off in [size, size + 1, -1] {
        assert_eq!(data(off), Err(Errno::NXIO), "SEEK_DATA {off}");
        assert_eq!(hole(off), Err(Errno::NXIO), "SEEK_HOLE {off}");
    }
    // A block written inside the run splits it.
    write_at(&v, a, 50 * B, &pattern(B as usize, 6));
    assert_eq!(data(3 * b), Ok(50 * b));
    assert_eq!(hole(50 * b), Ok(51 * b));
    assert_eq!(data(51 * b), Ok(100 * b));
    // Holes up to the end (the final block empty): no data after them.
    let c = write_file(&v, "c", b"x");
    truncate(&v, c, 64 * B);
    assert_eq!(seek(&v, c, 0, true), Ok(b));
    assert_eq!(seek(&v, c, 5 * b, false), Err(Errno::NXIO));
    assert_eq!(seek(&v, c, 5 * b, true), Ok(5 * b));
    // Short gaps are zeros written as data, and so are files without holes.
    let d = write_file(&v, "d", b"x");
    truncate(&v, d, 3 * B);
    assert_eq!(seek(&v, d, 0, true), Ok(3 * b));
    assert_eq!(seek(&v, d, b, false), Ok(b));
    let e = write_file(&v, "e", &[]);
    assert_eq!(seek(&v, e, 0, false), Err(Errno::NXIO));
    assert_eq!(seek(&v, e, 0, true), Err(Errno::NXIO));
    // A zeroed written block is damage, never a hole: reported as data (reading it fails).
    let p = cipher_path(&v, a);
    drop(v);
    let l = Layout::new(B as u32);
    patch(
        &p,
        l.cipher_offset(1),
        l.cipher_block_size() as usize,
        |x| x.fill(0),
    );
    let (v, a) = reopen(&dir);
    assert_eq!(seek(&v, a, 0, true), Ok(3 * b));
    assert_eq!(seek(&v, a, b, false), Ok(b));
    assert!(try_read(&v, a, B, 10).is_err_and(|e| e.is_integrity()));
    // Without the feature every file is data to its end.
    let (_t2, dir2) = new_volume_with(false);
    let v2 = open(&dir2);
    let f = write_file(&v2, "a", b"x");
    truncate(&v2, f, 100 * B);
    assert_eq!(seek(&v2, f, 0, true), Ok(100 * b));
    assert_eq!(seek(&v2, f, 50 * b, false), Ok(50 * b));
}

#[test]
fn seek_sees_runs_through_counts_not_yet_settled() {
    // Blocks 0..=14 written, 15..=29 holes, 30 final; block 20 filled on a handle kept open
    // (30 still counts back to 15 until a sync): the holes are 15..=19 and 21..=29.
    let (_t, dir) = new_volume_with(true);
    let v = open(&dir);
    let b = B as i64;
    let a = write_file(&v, "a", &pattern(15 * B as usize, 5));
    truncate(&v, a, 30 * B + 1);
    drop(v);
    let (v, a) = reopen(&dir);
    let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
    v.write(fh, 20 * B, &pattern(B as usize, 6))
        .expect("fill 20");
    let s = |off, hole| v.seek(a, fh, off, hole).expect("seek");
    assert_eq!(s(0, true), 15 * b);
    assert_eq!(s(15 * b, false), 20 * b);
    assert_eq!(s(20 * b, true), 21 * b);
    assert_eq!(s(22 * b, false), 30 * b);
    assert_eq!(s(16 * b, true), 16 * b);
    v.release(fh).expect("release");
}
