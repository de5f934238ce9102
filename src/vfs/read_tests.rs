//! Reads decrypt into buffers kept per thread: whatever a read leaves there must never show in
//! the next one (shorter, of another file, at an offset inside a block, after a failure).

use super::test_support::{caller, new_volume, open, read_at, write_file};

#[test]
fn a_read_returns_its_own_bytes_whatever_the_last_one_left() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let big: Vec<u8> = (0..(1 << 20) + 123).map(|i| (i % 251) as u8).collect();
    let small = b"seven b".to_vec();
    let a = write_file(&v, "big", &big);
    let b = write_file(&v, "small", &small);
    assert_eq!(read_at(&v, a, 0, 2 << 20), big);
    assert_eq!(read_at(&v, b, 0, 4096), small);
    assert_eq!(read_at(&v, a, 5000, 10), big[5000..5010]);
    assert_eq!(read_at(&v, b, 3, 100), small[3..]);
    assert_eq!(read_at(&v, b, 7, 100), b"");
    assert_eq!(
        read_at(&v, a, (1 << 20) + 100, 4096),
        big[(1 << 20) + 100..]
    );
    // Through the reply closure the mount uses: the same bytes.
    let fh = v.open_as(a, libc::O_RDONLY, &caller()).expect("open");
    let n = v.read_with(fh, 4095, 3, |d| d.to_vec()).expect("read_with");
    assert_eq!(n, big[4095..4098]);
    v.release(fh).expect("release");
}

#[test]
fn after_a_failed_read_the_next_read_is_right() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let good: Vec<u8> = (0..20_000).map(|i| (i % 13) as u8).collect();
    let a = write_file(&v, "good", &good);
    let b = write_file(&v, "bad", &good);
    // One byte of the bad file's second block flipped in the cipher directory.
    let n = v.node(b).expect("node").name().expect("entry");
    let d = std::fs::read_link(v.node(n.parent).expect("dir").proc_path()).expect("dir");
    let cipher = d.join(&n.cipher);
    super::test_support::flip_byte(&cipher, std::fs::metadata(&cipher).expect("stat").len() / 2);
    let fh = v.open_as(b, libc::O_RDONLY, &caller()).expect("open");
    // The reply is never handed the blocks that did authenticate (the first one here).
    let mut handed = false;
    let r = v.read_with(fh, 0, 1 << 20, |_| handed = true);
    assert!(
        r.is_err_and(|e| e.is_integrity()),
        "a tampered block is an error"
    );
    assert!(!handed, "nothing is replied from a failed read");
    // A read of the good block alone still works.
    assert_eq!(v.read(fh, 0, 4096).expect("first block"), good[..4096]);
    v.release(fh).expect("release");
    assert_eq!(read_at(&v, a, 0, 1 << 20), good);
}

/// Opening a file for writing only is not reading it: the header read at the first open leaves
/// the access time alone (with relatime, an atime over a day old would be set by any read). An
/// open for reading sets it (reads served from the kernel's cache never reach the daemon), a
/// read too, unless the mount is `noatime`, and listing a directory likewise.
#[test]
fn access_times_follow_reads_not_write_only_opens_and_stay_under_noatime() {
    use super::{SetAttr, SetTime, VfsOptions};
    use std::time::{Duration, SystemTime};
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    for noatime in [false, true] {
        let (_t, dir) = new_volume();
        let v = super::test_support::open_with(
            &dir,
            VfsOptions {
                noatime,
                ..Default::default()
            },
        );
        write_file(&v, "f", b"some bytes");
        v.mkdir(1, "d".as_ref(), 0o755, &caller()).expect("mkdir");
        drop(v);
        // A fresh model: nothing of the file is open or cached.
        let v = super::test_support::open_with(
            &dir,
            VfsOptions {
                noatime,
                ..Default::default()
            },
        );
        let ino = v.lookup(1, "f".as_ref()).expect("f").ino;
        let d = v.lookup(1, "d".as_ref()).expect("d").ino;
        let set = SetAttr {
            atime: Some(SetTime::At(old)),
            ..Default::default()
        };
        for i in [ino, d] {
            v.setattr(i, None, &set, None).expect("set atime");
        }
        let atime = |i| v.getattr(i).expect("getattr").atime;
        let fh = v.open_as(ino, libc::O_WRONLY, &caller()).expect("open");
        assert_eq!(
            atime(ino),
            old,
            "noatime {noatime}: a write-only open set the atime"
        );
        // What a write needs to read (the rest of a block it changes in part, a page the
        // kernel fills through the write-only handle, the block a truncate cuts) is no access.
        v.write(fh, 3, b"E").expect("partial write");
        v.read_with(fh, 0, 100, |d| d.len()).expect("page fill");
        let cut = SetAttr {
            size: Some(7),
            ..Default::default()
        };
        v.setattr(ino, None, &cut, None).expect("truncate");
        v.release(fh).expect("release");
        let fh = v
            .open_as(ino, libc::O_WRONLY | libc::O_TRUNC, &caller())
            .expect("open with O_TRUNC");
        v.write(fh, 0, b"some bytes").expect("write");
        v.release(fh).expect("release");
        v.setattr(ino, None, &cut, None).expect("truncate by path");
        v.setattr(
            ino,
            None,
            &SetAttr {
                size: Some(10),
                ..Default::default()
            },
            None,
        )
        .expect("extend by path");
        assert_eq!(
            atime(ino),
            old,
            "noatime {noatime}: writes, truncates or an O_TRUNC open set the atime"
        );
        let fh = v.open_as(ino, libc::O_RDONLY, &caller()).expect("open");
        assert_eq!(
            atime(ino) == old,
            noatime,
            "noatime {noatime}: after an open for reading"
        );
        v.setattr(ino, None, &set, None).expect("set atime");
        let n = v.read_with(fh, 0, 100, |d| d.len()).expect("read");
        assert_eq!(n, 10);
        v.release(fh).expect("release");
        assert_eq!(
            atime(ino) == old,
            noatime,
            "noatime {noatime}: after a read"
        );
        v.list_dir(d).expect("list");
        assert_eq!(
            atime(d) == old,
            noatime,
            "noatime {noatime}: after a listing"
        );
    }
}

/// An open with O_NOATIME, and the reads through it, leave the access time alone, as on ext4
/// (LTP open12: the read set it); a later open without it reads as usual.
#[test]
fn an_o_noatime_open_and_its_reads_leave_the_access_time_alone() {
    use super::{SetAttr, SetTime};
    use std::time::{Duration, SystemTime};
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (_t, dir) = new_volume();
    let v = open(&dir);
    write_file(&v, "f", b"some bytes");
    drop(v);
    let v = open(&dir);
    let ino = v.lookup(1, "f".as_ref()).expect("f").ino;
    let set = SetAttr {
        atime: Some(SetTime::At(old)),
        ..Default::default()
    };
    v.setattr(ino, None, &set, None).expect("set atime");
    let atime = || v.getattr(ino).expect("getattr").atime;
    for flags in [libc::O_RDONLY, libc::O_RDWR] {
        let fh = v
            .open_as(ino, flags | libc::O_NOATIME, &caller())
            .expect("open");
        let n = v.read_with(fh, 0, 100, |d| d.len()).expect("read");
        assert_eq!(n, 10);
        v.release(fh).expect("release");
        assert_eq!(atime(), old, "flags {flags:o}");
    }
    let fh = v.open_as(ino, libc::O_RDONLY, &caller()).expect("open");
    v.read_with(fh, 0, 100, |d| d.len()).expect("read");
    v.release(fh).expect("release");
    assert_ne!(atime(), old, "a plain open and read set it");
    // A file made by an O_CREAT|O_NOATIME open: reads through it leave the time alone too.
    let (attr, fh) = v
        .create(
            1,
            "new".as_ref(),
            0o644,
            libc::O_RDWR | libc::O_NOATIME,
            &caller(),
        )
        .expect("create");
    v.write(fh, 0, b"fresh").expect("write");
    v.setattr(attr.ino, None, &set, None).expect("set atime");
    v.read_with(fh, 0, 100, |d| d.len()).expect("read");
    v.release(fh).expect("release");
    assert_eq!(v.getattr(attr.ino).expect("getattr").atime, old, "created");
}

/// A read-only mount changes nothing in the cipher directory: reading a file or listing a
/// directory there leaves their access times alone (as if `noatime`).
#[test]
fn a_read_only_mount_leaves_access_times_alone() {
    use super::{SetAttr, SetTime, VfsOptions};
    use std::time::{Duration, SystemTime};
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let ino = write_file(&v, "f", b"some bytes");
    let d = v
        .mkdir(1, "d".as_ref(), 0o755, &caller())
        .expect("mkdir")
        .ino;
    let set = SetAttr {
        atime: Some(SetTime::At(old)),
        ..Default::default()
    };
    for i in [ino, d] {
        v.setattr(i, None, &set, None).expect("set atime");
    }
    drop(v);
    let v = super::test_support::open_with(
        &dir,
        VfsOptions {
            read_only: true,
            ..Default::default()
        },
    );
    let ino = v.lookup(1, "f".as_ref()).expect("f").ino;
    let d = v.lookup(1, "d".as_ref()).expect("d").ino;
    let fh = v.open_as(ino, libc::O_RDONLY, &caller()).expect("open");
    let n = v.read_with(fh, 0, 100, |d| d.len()).expect("read");
    assert_eq!(n, 10);
    v.release(fh).expect("release");
    v.list_dir(d).expect("list");
    for i in [ino, d] {
        assert_eq!(v.getattr(i).expect("getattr").atime, old, "inode {i}");
    }
}

/// A remount (`mount -o remount,ro|rw|noatime|relatime`, followed by the FUSE adapter) changes
/// what the model does from then on: read-only refuses changes and leaves access times alone,
/// `noatime` leaves them alone, and back again.
#[test]
fn a_remount_changes_read_only_and_access_times() {
    use super::{SetAttr, SetTime, VfsError};
    use std::time::{Duration, SystemTime};
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let ino = write_file(&v, "f", b"some bytes");
    let set = SetAttr {
        atime: Some(SetTime::At(old)),
        ..Default::default()
    };
    let read_changes_atime = || {
        v.setattr(ino, None, &set, None).expect("set atime");
        let fh = v.open_as(ino, libc::O_RDONLY, &caller()).expect("open");
        v.read_with(fh, 0, 100, |d| d.len()).expect("read");
        v.release(fh).expect("release");
        v.getattr(ino).expect("getattr").atime != old
    };
    let create = |name: &str| v.create(1, name.as_ref(), 0o644, libc::O_RDWR, &caller());
    assert!(v.remounted(true, false), "read-only is a change");
    assert!(matches!(create("no"), Err(VfsError::ReadOnly)));
    assert!(
        !v.remounted(true, false),
        "the same flags again change nothing"
    );
    v.remounted(false, true);
    let (_, fh) = create("yes").expect("create after remount,rw");
    v.release(fh).expect("release");
    assert!(!read_changes_atime(), "noatime");
    v.remounted(false, false);
    assert!(
        read_changes_atime(),
        "relatime: an access time older than the change"
    );
}
