//! Writes of whole blocks are encrypted before they take the file's lock (several at once, in
//! whatever order the threads get there); what they store must be what the single-threaded path
//! stores: the right bytes, every block's final/non-final mark right, so a fresh mount reads it.

use std::sync::Arc;

use super::test_support::{
    caller, cipher_path, new_volume, open, read_at, write_file, write_file_in,
};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The whole file as a fresh `Vfs` over the volume reads it (nothing cached from the writes).
fn read_fresh(dir: &std::path::Path, name: &str, len: usize) -> Vec<u8> {
    let v = open(dir);
    let a = v.lookup(1, name.as_ref()).expect("lookup");
    assert_eq!(a.size, len as u64, "size of {name}");
    read_at(&v, a.ino, 0, len as u32 + 4096)
}

#[test]
fn concurrent_whole_block_writes_out_of_order_store_the_file() {
    let (_t, dir) = new_volume();
    let v = Arc::new(open(&dir));
    let ino = write_file(&v, "f", b"");
    const PIECE: usize = 256 << 10;
    const PIECES: usize = 24;
    let want = pattern(PIECE * PIECES, 7);
    let fh = v.open_as(ino, libc::O_RDWR, &caller()).expect("open");
    std::thread::scope(|s| {
        for t in 0..4 {
            let (v, want) = (&v, &want);
            s.spawn(move || {
                // Highest first: writes past the end arrive before the ones below them.
                for i in (0..PIECES).rev().filter(|i| i % 4 == t) {
                    let at = i * PIECE;
                    let n = v
                        .write(fh, at as u64, &want[at..at + PIECE])
                        .expect("write");
                    assert_eq!(n as usize, PIECE);
                }
            });
        }
    });
    assert_eq!(read_at(&v, ino, 0, (PIECE * PIECES) as u32), want);
    v.release(fh).expect("release");
    assert_eq!(read_fresh(&dir, "f", want.len()), want);
}

#[test]
fn whole_block_writes_over_the_final_block_past_the_end_and_inside() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let mut want = pattern(5000, 1);
    let ino = write_file(&v, "f", &want);
    let fh = v.open_as(ino, libc::O_RDWR, &caller()).expect("open");
    // Over the partial final block: the file ends on a block boundary after it.
    let a = pattern(8192, 2);
    v.write(fh, 0, &a).expect("write a");
    want = a;
    // Past the end: a hole of zeros before it.
    let b = pattern(4096, 3);
    v.write(fh, 16384, &b).expect("write b");
    want.resize(16384, 0);
    want.extend_from_slice(&b);
    // Then a partial block at the end, and a whole block inside, before the final one.
    let c = pattern(100, 4);
    v.write(fh, want.len() as u64, &c).expect("write c");
    want.extend_from_slice(&c);
    let d = pattern(4096, 5);
    v.write(fh, 4096, &d).expect("write d");
    want[4096..8192].copy_from_slice(&d);
    assert_eq!(read_at(&v, ino, 0, 1 << 20), want);
    v.release(fh).expect("release");
    assert_eq!(read_fresh(&dir, "f", want.len()), want);
}

#[test]
fn a_whole_block_write_ending_at_the_size_keeps_the_final_block() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let mut want = pattern(3 << 20, 9);
    let ino = write_file(&v, "f", &want);
    let fh = v.open_as(ino, libc::O_RDWR, &caller()).expect("open");
    let x = pattern(1 << 20, 10);
    v.write(fh, 2 << 20, &x).expect("write");
    want[2 << 20..].copy_from_slice(&x);
    v.release(fh).expect("release");
    assert_eq!(read_fresh(&dir, "f", want.len()), want);
}

/// Bytes of `fh`'s file sent to the disk early by the write-behind.
fn written_behind(v: &super::Vfs, fh: u64) -> u64 {
    let (f, _) = v.handle_file(fh).expect("handle");
    f.written_behind()
}

#[test]
fn a_stream_of_large_writes_goes_to_the_disk_behind_them_small_ones_do_not() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let want = pattern(8 << 20, 11);
    let big = write_file(&v, "big", b"");
    let fh = v.open_as(big, libc::O_RDWR, &caller()).expect("open");
    for (i, piece) in want.chunks(1 << 20).enumerate() {
        v.write(fh, (i << 20) as u64, piece).expect("write");
    }
    let sent = written_behind(&v, fh);
    assert!(sent >= super::write_behind::WINDOW, "{sent}");
    v.release(fh).expect("release");
    let counted = v
        .control()
        .metrics
        .written_behind_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(counted, sent, "the metric counts the closed file's");
    assert_eq!(read_fresh(&dir, "big", want.len()), want);

    let small = write_file(&v, "small", b"");
    let fh = v.open_as(small, libc::O_RDWR, &caller()).expect("open");
    for (i, piece) in want.chunks(4096).enumerate() {
        v.write(fh, (i * 4096) as u64, piece).expect("write");
    }
    assert_eq!(written_behind(&v, fh), 0);
    v.release(fh).expect("release");
}

/// The interrupted-write marker (an xattr of the cipher file) is set for every size-changing
/// write, a small one inside the first page too (after a power loss an overwrite of a page
/// already on disk can be there without the larger size), and it stays after the close until
/// the data is on the disk (`marker_queue`); an open meanwhile takes it over, without
/// recovering anything.
#[test]
fn size_changing_writes_are_marked_until_their_data_is_on_disk() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let ino = write_file(&v, "f", b"");
    let fh = v.open_as(ino, libc::O_RDWR, &caller()).expect("open");
    let (f, _) = v.handle_file(fh).expect("handle");
    let marked = || {
        let st = f.read_state();
        (st.marked, crate::content::pending::is_marked(&st.file))
    };
    let mut want = pattern(100, 3);
    v.write(fh, 0, &want).expect("small write");
    assert_eq!(
        marked(),
        (Some(0), true),
        "a small write inside the first page"
    );
    let big = pattern(9000, 5);
    v.write(fh, want.len() as u64, &big)
        .expect("append over pages");
    want.extend_from_slice(&big);
    assert_eq!(marked(), (Some(0), true), "an append over page boundaries");
    let cipher_file = f.read_state().file.try_clone().expect("dup");
    drop(f);
    v.release(fh).expect("release");
    assert!(
        crate::content::pending::is_marked(&cipher_file),
        "kept at close"
    );
    assert_eq!(v.markers_waiting(), 1);
    // Opened again: the marker is the open file's; its close hands it back.
    let fh = v.open_as(ino, libc::O_RDONLY, &caller()).expect("reopen");
    assert_eq!(v.markers_waiting(), 0);
    let (g, _) = v.handle_file(fh).expect("handle");
    {
        let st = g.read_state();
        assert_eq!(st.marked, Some(0), "taken over");
        assert_eq!(st.size, want.len() as u64);
    }
    drop(g);
    v.release(fh).expect("release");
    assert_eq!(v.markers_waiting(), 1);
    v.settle_markers();
    assert_eq!(v.markers_waiting(), 0);
    assert!(
        !crate::content::pending::is_marked(&cipher_file),
        "cleared once settled"
    );
    assert_eq!(read_fresh(&dir, "f", want.len()), want);
}

/// A file `name` written with `want` and closed, then appended to (1,000 bytes) and closed:
/// its cipher file as it was before the append.
struct Appended {
    path: std::path::PathBuf,
    old: Vec<u8>,
}

fn appended(v: &super::Vfs, name: &str, want: &[u8]) -> Appended {
    appended_in(v, 1, name, want).1
}

/// `appended` in directory `parent`; also the file's inode.
fn appended_in(v: &super::Vfs, parent: u64, name: &str, want: &[u8]) -> (u64, Appended) {
    let ino = write_file_in(v, parent, name, want);
    let path = cipher_path(v, ino);
    let old = std::fs::read(&path).expect("cipher file");
    let fh = v.open_as(ino, libc::O_WRONLY, &caller()).expect("open");
    v.write(fh, want.len() as u64, &[9u8; 1000])
        .expect("append");
    v.release(fh).expect("release");
    (ino, Appended { path, old })
}

impl Appended {
    /// The cipher file as a power cut leaves it: the larger size and the marker reached the
    /// disk, the rewritten final block did not (the old content, zeros past its old end).
    /// Returns its path.
    fn lost(self) -> std::path::PathBuf {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .expect("cipher file");
        let grown = f.metadata().expect("stat").len();
        assert!(grown > self.old.len() as u64);
        let mut torn = self.old;
        torn.resize(grown as usize, 0);
        f.write_all_at(&torn, 0).expect("as after the cut");
        self.path
    }
}

/// `.kmsfs/mounted-rw` is there while a read-write model may leave markers on closed files,
/// and gone after a clean end (every marker settled); the parent of a forked daemon leaves it
/// to the child.
#[test]
fn the_session_flag_lives_as_long_as_the_read_write_session() {
    let (_t, dir) = new_volume();
    let flag = dir.join(".kmsfs/mounted-rw");
    let v = open(&dir);
    assert!(flag.exists(), "made at the start");
    write_file(&v, "f", b"marked");
    drop(v);
    assert!(!flag.exists(), "removed at the clean end");
    let v = open(&dir);
    v.hand_session_to_child();
    drop(v);
    assert!(flag.exists(), "left to the child");
}

/// After a read-write session that did not end cleanly (the flag left), the files that carry a
/// marker are recovered before anything is looked up, also one whose times no longer show it
/// (a chmod after the crash): the size the lookup gives is the recovered one. Here a power
/// cut after an append: the larger size journaled, the old final block not rewritten.
#[test]
fn after_an_unclean_end_marked_files_are_recovered_before_the_first_lookup() {
    let (_t, dir) = new_volume();
    let want = pattern(2 * 4096 + 1808, 3);
    let v = open(&dir);
    let cut = appended(&v, "f", &want);
    // The power cut: nothing settled, the session flag left.
    std::mem::forget(v);
    let path = cut.lost();
    assert!(crate::content::pending::is_marked_at(&path));
    // Its times no longer tell: the lookup alone would give the kernel the torn size.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o640))
        .expect("chmod");
    let v = open(&dir);
    assert!(!crate::content::pending::is_marked_at(&path), "recovered");
    let a = v.lookup(1, "f".as_ref()).expect("lookup");
    assert_eq!(a.size, want.len() as u64, "the size before the lost append");
    assert_eq!(read_at(&v, a.ino, 0, 1 << 20), want);
}

/// The walk after an unclean end shares the tree among several workers: marked files in every
/// level of a tree of directories are all recovered, the unmarked ones read as they were, and a
/// marked file with a hard link in another directory is recovered (once: workers take a marked
/// inode only once).
#[test]
fn the_walk_after_an_unclean_end_recovers_marked_files_in_every_directory() {
    let (_t, dir) = new_volume();
    let want = pattern(2 * 4096 + 1808, 5);
    // A first session ending cleanly: a tree of 30 directories, three under each, with an
    // unmarked file in each.
    let v = open(&dir);
    let mut dirs: Vec<(u64, Vec<String>)> = vec![(1, Vec::new())];
    for i in 0..30 {
        let (parent, mut names) = dirs[i / 3].clone();
        let name = format!("d{i}");
        let a = v
            .mkdir(parent, name.as_ref(), 0o755, &caller())
            .expect("mkdir");
        names.push(name);
        dirs.push((a.ino, names));
    }
    for (i, (d, _)) in dirs.iter().enumerate() {
        write_file_in(&v, *d, "plain", &pattern(100 + i, 2));
    }
    drop(v);
    let lookup = |v: &super::Vfs, names: &[String], last: Option<&str>| {
        let mut ino = 1;
        for n in names.iter().map(String::as_str).chain(last) {
            ino = v.lookup(ino, n.as_ref()).expect("lookup").ino;
        }
        ino
    };
    // The second ends in a power cut after an append to a file in each directory.
    let v = open(&dir);
    let mut cuts = Vec::new();
    for (_, names) in &dirs {
        let d = lookup(&v, names, None);
        cuts.push((names.clone(), appended_in(&v, d, "marked", &want)));
    }
    let linked = cuts[7].1.0;
    v.link(linked, lookup(&v, &dirs[20].1, None), "hardlink".as_ref())
        .expect("link");
    std::mem::forget(v);
    let paths: Vec<_> = cuts
        .into_iter()
        .map(|(names, (_, cut))| (names, cut.lost()))
        .collect();
    let v = open(&dir);
    for (names, path) in &paths {
        assert!(!crate::content::pending::is_marked_at(path), "{names:?}");
        let ino = lookup(&v, names, Some("marked"));
        assert_eq!(read_at(&v, ino, 0, 1 << 20), want, "{names:?}");
    }
    for (i, (_, names)) in dirs.iter().enumerate() {
        let ino = lookup(&v, names, Some("plain"));
        assert_eq!(read_at(&v, ino, 0, 1 << 20), pattern(100 + i, 2));
    }
    let ino = lookup(&v, &dirs[20].1, Some("hardlink"));
    assert_eq!(read_at(&v, ino, 0, 1 << 20), want);
}

/// A shrinking truncate keeps the marker (the new final block was rewritten in place, the cut
/// reaches the journal first), also one it took over from a close whose append may not be on
/// the disk yet: from the earlier block, until the data is settled.
#[test]
fn a_shrinking_truncate_keeps_the_marker_until_the_data_is_on_disk() {
    use super::attr_ops::SetAttr;
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let base = pattern(2 * 4096 + 1808, 1);
    let ino = write_file(&v, "f", &base);
    v.settle_markers();
    let path = cipher_path(&v, ino);
    let marked =
        |v: &super::Vfs| crate::content::pending::is_marked_at(&path) && v.markers_waiting() == 1;
    assert!(!crate::content::pending::is_marked_at(&path));
    let cut = |size: u64| SetAttr {
        size: Some(size),
        ..Default::default()
    };
    v.setattr(ino, None, &cut(4096 + 1000), None)
        .expect("truncate");
    assert!(marked(&v), "the truncate's own marker, queued");
    v.settle_markers();
    let fh = v.open_as(ino, libc::O_WRONLY, &caller()).expect("open");
    v.write(fh, 4096 + 1000, &pattern(3 * 4096, 2))
        .expect("append");
    v.release(fh).expect("release");
    v.setattr(ino, None, &cut(4096 + 5000), None)
        .expect("truncate inside the append");
    assert!(marked(&v), "the append's marker, kept");
    v.settle_markers();
    assert!(!crate::content::pending::is_marked_at(&path));
    let mut want = base[..4096 + 1000].to_vec();
    want.extend_from_slice(&pattern(3 * 4096, 2)[..4000]);
    assert_eq!(read_fresh(&dir, "f", want.len()), want);
}

/// At the end of the session, files still open (an aborted connection) have their markers
/// settled too, before the session's flag goes.
#[test]
fn the_end_of_the_session_settles_the_markers_of_files_still_open() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let (a, fh) = v
        .create(1, "f".as_ref(), 0o644, libc::O_RDWR, &caller())
        .expect("create");
    v.write(fh, 0, &pattern(10000, 3)).expect("write");
    let path = cipher_path(&v, a.ino);
    assert!(crate::content::pending::is_marked_at(&path));
    v.settle_markers();
    assert!(!crate::content::pending::is_marked_at(&path));
    assert!(!dir.join(".kmsfs/mounted-rw").exists());
    drop(v);
    assert_eq!(read_fresh(&dir, "f", 10000), pattern(10000, 3));
}

/// A read-only mount after an unclean end, remounted read-write: the walk runs while the
/// mount is served. A file open then is left to its next open (not cut under its open state);
/// one the kernel was given a torn size for while read-only is recovered and its name handed
/// to the reclaim thread to drop.
#[test]
fn a_remount_read_write_after_an_unclean_end_leaves_open_files_alone() {
    let (_t, dir) = new_volume();
    let want = pattern(2 * 4096 + 1808, 3);
    let v = open(&dir);
    let cuts = [appended(&v, "open", &want), appended(&v, "known", &want)];
    std::mem::forget(v);
    let paths: Vec<_> = cuts.into_iter().map(Appended::lost).collect();
    let v = super::test_support::open_with(
        &dir,
        super::VfsOptions {
            read_only: true,
            ..Default::default()
        },
    );
    let o = v.lookup(1, "open".as_ref()).expect("lookup");
    let k = v.lookup(1, "known".as_ref()).expect("lookup");
    let fh = v
        .open_as(o.ino, libc::O_RDONLY, &caller())
        .expect("open ro");
    let size = v.getattr(o.ino).expect("getattr").size;
    assert!(v.remounted(false, false), "now read-write");
    assert!(
        crate::content::pending::is_marked_at(&paths[0]),
        "open: left"
    );
    assert_eq!(
        v.getattr(o.ino).expect("getattr").size,
        size,
        "as it was opened"
    );
    v.release(fh).expect("release");
    assert!(
        !crate::content::pending::is_marked_at(&paths[1]),
        "recovered"
    );
    assert_eq!(v.take_stale_caches(), vec![k.ino], "its name to be dropped");
    // The open one at its next open.
    assert_eq!(read_at(&v, o.ino, 0, 1 << 20), want);
}

/// A file is reported for the kernel to drop its cache (see `take_stale_caches`) once it is
/// closed everywhere after a failed write, and only then; files whose writes all succeeded are
/// not.
#[test]
fn a_file_closed_after_a_failed_write_is_reported_once() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let ok = write_file(&v, "ok", b"fine");
    let bad = write_file(&v, "bad", b"before");
    let fh_ok = v.open_as(ok, libc::O_RDWR, &caller()).expect("open");
    let fh1 = v.open_as(bad, libc::O_RDWR, &caller()).expect("open");
    let fh2 = v.open_as(bad, libc::O_RDWR, &caller()).expect("open");
    v.write(fh_ok, 4, b" still").expect("write");
    crate::fault::arm(1, rustix::io::Errno::NOSPC);
    let r = v.write(fh1, 6, &[1u8; 10000]);
    crate::fault::disarm();
    assert!(r.is_err(), "the injected failure reached the writer");
    v.release(fh_ok).expect("release");
    v.release(fh1).expect("release");
    assert!(!v.has_stale_caches(), "still open through another handle");
    v.release(fh2).expect("release");
    assert!(v.has_stale_caches());
    assert_eq!(v.take_stale_caches(), vec![bad]);
    assert!(v.take_stale_caches().is_empty(), "taken once");
    // Opened and closed again without a failure: nothing to report.
    let fh = v.open_as(bad, libc::O_RDWR, &caller()).expect("open");
    v.write(fh, 0, b"after").expect("write");
    v.release(fh).expect("release");
    assert!(!v.has_stale_caches());
}
