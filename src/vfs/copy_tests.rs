//! copy_file_range within the model (`Vfs::copy_range`): every byte lands where a read and a
//! write would have put it, across blocks and chunks, short at the source's end, refused for
//! handles that could not read or write, and a damaged source block copies nothing past it.

use super::copy_ops::MAX_COPY;
use super::test_support::{caller, cipher_path, flip_byte, new_volume, open, read_at, write_file};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

fn size_of(v: &super::Vfs, ino: u64) -> u64 {
    v.getattr(ino).expect("getattr").size
}

#[test]
fn copies_across_blocks_and_chunks_into_the_middle_and_past_the_end() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    // Over two copy chunks, no offset on a block boundary.
    let src = pattern((2 << 20) + 70_001, 3);
    let a = write_file(&v, "a", &src);
    let mut want = pattern(100_000, 9);
    let b = write_file(&v, "b", &want);
    let fi = v.open_as(a, libc::O_RDONLY, &caller()).expect("open a");
    let fo = v.open_as(b, libc::O_WRONLY, &caller()).expect("open b");
    let (off_in, off_out, len) = (4_097u64, 50_003u64, (2 << 20) + 12_345u64);
    let n = v.copy_range(fi, off_in, fo, off_out, len).expect("copy");
    assert_eq!(n, len);
    let (i, o) = (off_in as usize, off_out as usize);
    want.resize(o + len as usize, 0);
    want[o..].copy_from_slice(&src[i..i + len as usize]);
    assert_eq!(size_of(&v, b), want.len() as u64);
    v.release(fi).expect("release");
    v.release(fo).expect("release");
    // As a fresh model over the volume reads it.
    drop(v);
    let v = open(&dir);
    let b = v.lookup(1, "b".as_ref()).expect("lookup").ino;
    assert!(read_at(&v, b, 0, want.len() as u32 + 1) == want);
    let a = v.lookup(1, "a".as_ref()).expect("lookup").ino;
    assert!(
        read_at(&v, a, 0, src.len() as u32 + 1) == src,
        "source unchanged"
    );
}

#[test]
fn stops_short_at_the_end_of_the_source_and_copies_nothing_from_past_it() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let src = pattern(10_000, 1);
    let a = write_file(&v, "a", &src);
    let b = write_file(&v, "b", b"");
    let fi = v.open_as(a, libc::O_RDONLY, &caller()).expect("open");
    let fo = v.open_as(b, libc::O_RDWR, &caller()).expect("open");
    assert_eq!(
        v.copy_range(fi, 9_000, fo, 0, 1 << 30).expect("copy"),
        1_000
    );
    assert_eq!(v.copy_range(fi, 10_000, fo, 1_000, 5).expect("copy"), 0);
    assert_eq!(v.copy_range(fi, 20_000, fo, 1_000, 5).expect("copy"), 0);
    assert_eq!(v.copy_range(fi, 0, fo, 0, 0).expect("copy"), 0);
    assert_eq!(size_of(&v, b), 1_000, "nothing written by the empty copies");
    assert_eq!(v.read(fo, 0, 2_000).expect("read"), &src[9_000..]);
    v.release(fi).expect("release");
    v.release(fo).expect("release");
}

#[test]
fn copies_within_one_file_and_at_most_max_copy_per_call() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let len = MAX_COPY as usize + 5_000;
    let mut want = pattern(len, 5);
    let a = write_file(&v, "a", &want);
    let fh = v.open_as(a, libc::O_RDWR, &caller()).expect("open");
    // A short count, as for a signal: the caller asks again for the rest.
    let n = v
        .copy_range(fh, 0, fh, len as u64, len as u64)
        .expect("copy");
    assert_eq!(n, MAX_COPY);
    let m = v
        .copy_range(fh, n, fh, len as u64 + n, len as u64 - n)
        .expect("copy the rest");
    assert_eq!(m, 5_000);
    want.extend_from_slice(&want.clone());
    assert_eq!(size_of(&v, a), want.len() as u64);
    assert!(v.read(fh, 0, want.len() as u32).expect("read") == want);
    v.release(fh).expect("release");
}

#[test]
fn handles_that_cannot_read_or_write_are_refused_and_nothing_is_written() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let a = write_file(&v, "a", b"source bytes");
    let b = write_file(&v, "b", b"dest");
    let open_as = |ino, flags| v.open_as(ino, flags, &caller()).expect("open");
    let (ro, wo) = (open_as(a, libc::O_RDONLY), open_as(a, libc::O_WRONLY));
    let (b_ro, b_app) = (
        open_as(b, libc::O_RDONLY),
        open_as(b, libc::O_WRONLY | libc::O_APPEND),
    );
    let b_rw = open_as(b, libc::O_RDWR);
    let errno = |r: super::Result<u64>| r.expect_err("refused").errno();
    assert_eq!(
        errno(v.copy_range(wo, 0, b_rw, 0, 5)),
        libc::EBADF,
        "source write-only"
    );
    assert_eq!(
        errno(v.copy_range(ro, 0, b_ro, 0, 5)),
        libc::EBADF,
        "dest read-only"
    );
    assert_eq!(
        errno(v.copy_range(ro, 0, b_app, 0, 5)),
        libc::EBADF,
        "dest O_APPEND"
    );
    assert_eq!(
        errno(v.copy_range(ro, 0, 999_999, 0, 5)),
        libc::EBADF,
        "no such handle"
    );
    assert_eq!(
        errno(v.copy_range(ro, u64::MAX - 2, b_rw, 0, 5)),
        libc::EINVAL
    );
    assert_eq!(
        errno(v.copy_range(ro, 0, b_rw, i64::MAX as u64, 5)),
        libc::EFBIG
    );
    assert_eq!(v.read(b_rw, 0, 100).expect("read"), b"dest");
    for fh in [ro, wo, b_ro, b_app, b_rw] {
        v.release(fh).expect("release");
    }
}

#[test]
fn a_damaged_source_block_fails_the_copy_and_leaves_the_destination() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let a = write_file(&v, "a", &pattern(20_000, 2));
    write_file(&v, "b", b"kept");
    // One byte of the last block's tag flipped.
    let p = cipher_path(&v, a);
    flip_byte(&p, std::fs::metadata(&p).expect("stat").len() - 1);
    drop(v);
    let v = open(&dir);
    let a = v.lookup(1, "a".as_ref()).expect("lookup").ino;
    let b = v.lookup(1, "b".as_ref()).expect("lookup").ino;
    let fi = v.open_as(a, libc::O_RDONLY, &caller()).expect("open");
    let fo = v.open_as(b, libc::O_RDWR, &caller()).expect("open");
    let e = v.copy_range(fi, 0, fo, 0, 20_000).expect_err("damaged");
    assert!(e.is_integrity(), "{e}");
    assert_eq!(v.read(fo, 0, 100).expect("read"), b"kept");
    // What lies before the damaged block still copies.
    assert_eq!(v.copy_range(fi, 0, fo, 0, 4096).expect("copy"), 4096);
    v.release(fi).expect("release");
    v.release(fo).expect("release");
}
