//! Setting times through the model: on regular files, symbolic links and hard-linked files,
//! and the one case left out, a regular file unlinked and open nowhere (whose times the kernel
//! flushes after every unlink when it caches writes).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::test_support::{caller, new_volume, open, touch};
use super::{SetAttr, SetTime, Vfs, WriteFrom};

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn set_mtime(v: &Vfs, ino: u64, secs: u64) -> super::Attr {
    let set = SetAttr {
        mtime: Some(SetTime::At(at(secs))),
        ..Default::default()
    };
    v.setattr(ino, None, &set, None).expect("setattr")
}

#[test]
fn times_are_set_on_files_links_and_symlinks() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, 1, "f");
    assert_eq!(set_mtime(&v, f, 1_000_000).mtime, at(1_000_000));
    assert_eq!(v.getattr(f).expect("getattr").mtime, at(1_000_000));
    let both = SetAttr {
        atime: Some(SetTime::At(at(7))),
        mtime: Some(SetTime::At(at(8))),
        ..Default::default()
    };
    let a = v.setattr(f, None, &both, None).expect("setattr");
    assert_eq!((a.atime, a.mtime), (at(7), at(8)));
    let l = v
        .symlink(1, "l".as_ref(), "f".as_ref(), &caller())
        .expect("symlink")
        .ino;
    assert_eq!(set_mtime(&v, l, 2_000_000).mtime, at(2_000_000));
    // The link's target is untouched.
    assert_eq!(v.getattr(f).expect("getattr").mtime, at(8));
}

#[test]
fn an_unlinked_file_open_nowhere_takes_no_times_but_answers() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, 1, "f");
    set_mtime(&v, f, 1_000);
    v.unlink(1, "f".as_ref()).expect("unlink");
    let a = set_mtime(&v, f, 5_000);
    assert_eq!(a.nlink, 0);
    assert_eq!(a.mtime, at(1_000), "nobody can see it: not written");
}

#[test]
fn an_unlinked_file_still_open_or_linked_elsewhere_takes_its_times() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    // Open: fstat through the handle still shows its times.
    let f = touch(&v, 1, "f");
    let fh = v.open(f, libc::O_RDWR).expect("open");
    v.unlink(1, "f".as_ref()).expect("unlink");
    assert_eq!(set_mtime(&v, f, 5_000).mtime, at(5_000));
    assert_eq!(v.getattr(f).expect("getattr").mtime, at(5_000));
    v.release(fh).expect("release");
    // Another name left.
    let g = touch(&v, 1, "g");
    v.link(g, 1, "g2".as_ref()).expect("link");
    v.unlink(1, "g".as_ref()).expect("unlink");
    let a = set_mtime(&v, g, 6_000);
    assert_eq!((a.nlink, a.mtime), (1, at(6_000)));
}

/// A truncate to the size the file has still marks it modified, as ext4 does for truncate(2).
#[test]
fn a_truncate_to_the_same_size_sets_mtime_and_ctime() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, 1, "f");
    let before = set_mtime(&v, f, 1_000_000);
    std::thread::sleep(Duration::from_millis(20));
    let same = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    let a = v.setattr(f, None, &same, None).expect("truncate");
    assert!(a.mtime > at(1_000_000), "mtime kept: {:?}", a.mtime);
    assert!(a.ctime > before.ctime, "ctime kept");
}

/// With the writeback cache the kernel sends its own times after every link and unlink of a
/// regular file (git stores each object that way): the time it already holds is not written
/// again, a different one is, and so is any time without the writeback cache (no ctime from
/// the kernel) or with an access time.
#[test]
fn the_kernels_unchanged_times_are_not_written_again() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, 1, "f");
    let before = set_mtime(&v, f, 1_000_000);
    std::thread::sleep(Duration::from_millis(20));
    let kernel = |secs| SetAttr {
        mtime: Some(SetTime::At(at(secs))),
        kernel_times: true,
        ..Default::default()
    };
    let a = v
        .setattr(f, None, &kernel(1_000_000), None)
        .expect("setattr");
    assert_eq!(
        (a.mtime, a.ctime),
        (at(1_000_000), before.ctime),
        "not written"
    );
    let a = v
        .setattr(f, None, &kernel(2_000_000), None)
        .expect("setattr");
    assert_eq!(a.mtime, at(2_000_000));
    assert!(
        a.ctime > before.ctime,
        "a new time is written (ctime moves)"
    );
    std::thread::sleep(Duration::from_millis(20));
    let b = set_mtime(&v, f, 2_000_000);
    assert!(
        b.ctime > a.ctime,
        "without the writeback cache: written even when equal"
    );
    std::thread::sleep(Duration::from_millis(20));
    let both = SetAttr {
        atime: Some(SetTime::At(b.atime)),
        ..kernel(2_000_000)
    };
    let c = v.setattr(f, None, &both, None).expect("setattr");
    assert!(
        c.ctime > b.ctime,
        "with an access time: written even when equal"
    );
    // With anything else to change, the times go through as before.
    let mode = SetAttr {
        mode: Some(0o600),
        ..kernel(2_000_000)
    };
    let d = v.setattr(f, None, &mode, None).expect("setattr");
    assert_eq!((d.perm, d.mtime), (0o600, at(2_000_000)));
}

/// The same while the file is open and written from the page cache: the kernel's time, once
/// kept, is not written again; it is on the backing file after the release.
#[test]
fn the_kernels_kept_time_is_not_written_again_while_open() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, 1, "f");
    let fh = v.open(f, libc::O_RDWR).expect("open");
    v.write_from(fh, 0, b"data", WriteFrom::PageCache { kernel_times: true })
        .expect("cached write");
    let kernel = SetAttr {
        mtime: Some(SetTime::At(at(3_000_000))),
        kernel_times: true,
        ..Default::default()
    };
    let a = v.setattr(f, Some(fh), &kernel, None).expect("setattr");
    assert_eq!(a.mtime, at(3_000_000));
    v.write_from(fh, 4, b"more", WriteFrom::PageCache { kernel_times: true })
        .expect("cached write");
    let before = v.getattr(f).expect("getattr").ctime;
    std::thread::sleep(Duration::from_millis(20));
    let b = v.setattr(f, Some(fh), &kernel, None).expect("setattr");
    assert_eq!(b.mtime, at(3_000_000), "the kept time is reported");
    assert_eq!(
        b.ctime, before,
        "not written again (a utimensat moves ctime)"
    );
    v.release(fh).expect("release");
    assert_eq!(
        v.getattr(f).expect("getattr").mtime,
        at(3_000_000),
        "and put back"
    );
}

/// Without the writeback cache the kernel keeps no time of its own: pages written through a
/// shared mmap, sent from the page cache, move the file's modification time as any write does
/// (generic/080; they left it as it was before the map).
#[test]
fn page_cache_writes_without_kernel_times_move_the_modification_time() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, 1, "f");
    let old = SetAttr {
        mtime: Some(SetTime::At(at(1_000))),
        ..Default::default()
    };
    v.setattr(f, None, &old, None).expect("setattr");
    let fh = v.open(f, libc::O_RDWR).expect("open");
    v.write_from(
        fh,
        0,
        b"data",
        WriteFrom::PageCache {
            kernel_times: false,
        },
    )
    .expect("write-back");
    assert!(
        v.getattr(f).expect("getattr").mtime > at(1_000),
        "while open"
    );
    v.release(fh).expect("release");
    assert!(
        v.getattr(f).expect("getattr").mtime > at(1_000),
        "after the release"
    );
}

/// An allocation moves the modification time, also inside the file and with KEEP_SIZE, where
/// no block is written (as ext4 does; without the writeback cache nothing else moved it).
#[test]
fn an_allocation_moves_the_modification_time() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = touch(&v, 1, "f");
    let fh = v.open(f, libc::O_RDWR).expect("open");
    v.write(fh, 0, &[1; 10_000]).expect("write");
    for (mode, end) in [(0, 5_000), (libc::FALLOC_FL_KEEP_SIZE, 50_000)] {
        let old = SetAttr {
            mtime: Some(SetTime::At(at(1_000))),
            ..Default::default()
        };
        v.setattr(f, None, &old, None).expect("setattr");
        v.fallocate(fh, 0, end, mode).expect("fallocate");
        let a = v.getattr(f).expect("getattr");
        assert!(a.mtime > at(1_000), "mode {mode}");
        assert_eq!(a.size, 10_000);
    }
    v.release(fh).expect("release");
}
