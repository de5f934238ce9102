//! Opening backing files: by the remembered entry when it still holds the node, through the
//! node's descriptor when something else took the name behind the mount's back, read-only
//! until a handle writes; naming a new (`O_TMPFILE`) file by its descriptor or through /proc.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

use super::Vfs;
use super::backing::{NO_EMPTY_PATH_LINK, link_unnamed};
use super::test_support::{caller, cipher_path, new_volume, open, read_at, write_file};

fn read_all(v: &Vfs, ino: u64) -> Vec<u8> {
    read_at(v, ino, 0, 1 << 20)
}

#[test]
fn files_open_by_their_entry_read_only_until_a_handle_writes() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = write_file(&v, "f", b"first");
    let node = v.node(f).expect("node");
    let b = v.open_backing(&node, false).expect("open");
    assert!(b.named.is_some(), "opened by its entry");
    let mode = rustix::fs::fcntl_getfl(&b.file).expect("getfl") & rustix::fs::OFlags::RWMODE;
    assert_eq!(
        mode,
        rustix::fs::OFlags::RDONLY,
        "the descriptor itself is read-only"
    );
    assert_eq!(
        b.len,
        std::fs::metadata(cipher_path(&v, f)).expect("stat").len()
    );
    drop(b);
    // A reader first, then a writer: the shared descriptor is opened again read-write, and
    // the reader sees what the writer wrote.
    let r = v.open_as(f, libc::O_RDONLY, &caller()).expect("open r");
    assert_eq!(v.read(r, 0, 100).expect("read"), b"first");
    let w = v.open_as(f, libc::O_RDWR, &caller()).expect("open w");
    v.write(w, 0, b"SECOND").expect("write");
    assert_eq!(v.read(r, 0, 100).expect("read"), b"SECOND");
    v.release(w).expect("release w");
    v.release(r).expect("release r");
    assert_eq!(read_all(&v, f), b"SECOND");
}

#[test]
fn a_name_taken_behind_the_mount_opens_the_node_itself() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = write_file(&v, "f", b"the file's own content");
    let g = write_file(&v, "g", b"another file");
    // g's backing file renamed over f's entry in the cipher directory: f's remembered entry
    // now holds another inode (and f's is unlinked, still reachable through its descriptor).
    std::fs::rename(cipher_path(&v, g), cipher_path(&v, f)).expect("rename behind the mount");
    let node = v.node(f).expect("node");
    let b = v.open_backing(&node, false).expect("open");
    assert!(
        b.named.is_none(),
        "not opened by a name that is someone else's now"
    );
    drop(b);
    assert_eq!(read_all(&v, f), b"the file's own content");
}

#[test]
fn a_fifo_under_the_name_does_not_block_the_open() {
    let (_t, dir) = new_volume();
    let v = std::sync::Arc::new(open(&dir));
    let f = write_file(&v, "f", b"content");
    let p = cipher_path(&v, f);
    std::fs::remove_file(&p).expect("unlink behind the mount");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .expect("mkfifo");
    // Opening a FIFO for reading would wait for a writer: run it on a thread, with a limit.
    let (tx, rx) = mpsc::channel();
    let v2 = v.clone();
    std::thread::spawn(move || {
        let _ = tx.send(read_all(&v2, f));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the open did not block on the FIFO");
    assert_eq!(got, b"content");
}

#[test]
fn a_symlink_under_the_name_is_not_followed_even_to_the_file_itself() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let f = write_file(&v, "f", b"content");
    let p = cipher_path(&v, f);
    // The backing file moved aside and a symlink to it put under its name: following the link
    // would find the node's own inode, so only O_NOFOLLOW keeps the by-name open from it.
    let aside = p.with_file_name("aside");
    std::fs::rename(&p, &aside).expect("move aside behind the mount");
    std::os::unix::fs::symlink(&aside, &p).expect("symlink");
    let b = v
        .open_backing(&v.node(f).expect("node"), false)
        .expect("open");
    assert!(b.named.is_none(), "a symlink is not followed");
    drop(b);
    assert_eq!(read_all(&v, f), b"content");
}

fn unnamed(dir: &std::path::Path, data: &[u8]) -> std::fs::File {
    let fd = rustix::fs::open(
        dir,
        OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from(0o600),
    )
    .expect("O_TMPFILE");
    let f = std::fs::File::from(fd);
    f.write_all_at(data, 0).expect("write");
    f
}

fn read_path(p: &std::path::Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(p)
        .expect("open")
        .read_to_end(&mut v)
        .expect("read");
    v
}

#[test]
fn an_unnamed_file_gets_its_name_either_way() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = std::fs::File::open(t.path()).expect("dir");
    // By descriptor where allowed (the flag may be set already by another test: then
    // through /proc, which is the other way checked below).
    let f = unnamed(t.path(), b"one");
    link_unnamed(&f, &dir, "a".as_ref()).expect("link a");
    assert_eq!(read_path(&t.path().join("a")), b"one");
    // Through /proc/self/fd, as after a refusal.
    NO_EMPTY_PATH_LINK.store(true, Ordering::Relaxed);
    let f = unnamed(t.path(), b"two");
    link_unnamed(&f, &dir, "b".as_ref()).expect("link b");
    assert_eq!(read_path(&t.path().join("b")), b"two");
    NO_EMPTY_PATH_LINK.store(false, Ordering::Relaxed);
    // A name that is taken is an error, not a second try.
    let f = unnamed(t.path(), b"three");
    let e = link_unnamed(&f, &dir, "a".as_ref()).expect_err("a is taken");
    assert_eq!(e.errno(), libc::EEXIST);
    assert_eq!(read_path(&t.path().join("a")), b"one");
}
