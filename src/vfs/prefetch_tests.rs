//! Read-ahead across files: it starts with the first open in a listed directory (a few files),
//! widens with the next ones, reads only the regular files after it in the listing, within its
//! window, and never changes what is read.

use std::sync::atomic::Ordering;

use super::Vfs;
use super::VfsOptions;
use super::test_support::{self, caller, new_volume, open, open_with};

fn prefetched(v: &Vfs) -> u64 {
    v.control().metrics.prefetched_files.load(Ordering::Relaxed)
}

fn settle(v: &Vfs, n: u64) -> u64 {
    test_support::settle(|| prefetched(v), n)
}

fn quiet(v: &Vfs) -> u64 {
    test_support::quiet(|| prefetched(v))
}

/// A directory with `files` regular files (each holding its name), a FIFO and a subdirectory;
/// returns the directory and the files' (inode, name) in listing order, as readdirplus gave
/// them (which also tells each node its directory, as the kernel's walk would).
fn dir_with_files(v: &Vfs, files: usize) -> (u64, Vec<(u64, String)>) {
    let c = caller();
    let d = v.mkdir(1, "d".as_ref(), 0o755, &c).expect("mkdir").ino;
    for i in 0..files {
        let name = format!("file-{i}");
        let (_, fh) = v
            .create(d, name.as_ref(), 0o644, libc::O_RDWR, &c)
            .expect("create");
        v.write(fh, 0, name.as_bytes()).expect("write");
        v.release(fh).expect("release");
    }
    v.mknod(d, "fifo".as_ref(), libc::S_IFIFO | 0o644, 0, &c)
        .expect("mkfifo");
    v.mkdir(d, "sub".as_ref(), 0o755, &c).expect("sub");
    let listed: Vec<(u64, String)> = v
        .readdirplus(d, 0)
        .expect("readdirplus")
        .into_iter()
        .filter(|(_, e, _)| e.name.to_string_lossy().starts_with("file-"))
        .map(|(_, e, a)| (a.ino, e.name.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(listed.len(), files);
    (d, listed)
}

fn open_and_check(v: &Vfs, ino: u64, name: &str) {
    let fh = v.open(ino, libc::O_RDONLY).expect("open");
    assert_eq!(v.read(fh, 0, 4096).expect("read"), name.as_bytes());
    v.release(fh).expect("release");
}

#[test]
fn opening_files_in_turn_reads_the_next_ones_ahead() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let (_, files) = dir_with_files(&v, 60);
    open_and_check(&v, files[0].0, &files[0].1);
    assert_eq!(settle(&v, 4), 4, "the first open reads the next 4 ahead");
    open_and_check(&v, files[1].0, &files[1].1);
    // The second open queues 16 more (those after the first window), no more.
    assert_eq!(settle(&v, 20), 20);
    for (ino, name) in &files[2..] {
        open_and_check(&v, *ino, name);
    }
    // Every regular file after the first, once each; never the FIFO or the subdirectory.
    assert_eq!(settle(&v, 59), 59);
}

#[test]
fn a_new_listing_starts_the_count_again_and_far_files_wait() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let (d, files) = dir_with_files(&v, 100);
    // Two opens far apart: only the windows after each (4, then 16) are read.
    open_and_check(&v, files[0].0, &files[0].1);
    open_and_check(&v, files[50].0, &files[50].1);
    assert_eq!(settle(&v, 20), 20);
    // Listed again: the count of opens starts from zero (a first open's 4, not 32).
    v.readdir(d, 0).expect("readdir");
    open_and_check(&v, files[80].0, &files[80].1);
    assert_eq!(settle(&v, 24), 24);
}

#[test]
fn no_prefetch_reads_nothing_ahead() {
    let (_t, dir) = new_volume();
    let v = open_with(
        &dir,
        VfsOptions {
            no_prefetch: true,
            ..Default::default()
        },
    );
    let (_, files) = dir_with_files(&v, 30);
    for (ino, name) in &files {
        open_and_check(&v, *ino, name);
    }
    assert_eq!(quiet(&v), 0);
}

#[test]
fn a_walk_in_another_order_than_the_listing_is_read_ahead_too() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let (_, files) = dir_with_files(&v, 60);
    // Backwards through the listing (as a sorted glob or git's index order may go): nothing
    // follows the open file, so the window is taken from the start of the listing.
    let mut order = files.iter().rev();
    for (ino, name) in order.by_ref().take(2) {
        open_and_check(&v, *ino, name);
    }
    assert_eq!(settle(&v, 20), 20);
    for (ino, name) in order {
        open_and_check(&v, *ino, name);
    }
    // Once each, every file but the four opened before the window reached them: the two
    // first, and the next two (the third open's window of 32 ends at files[51], the fourth
    // open's reaches the end of the listing, files[57] and files[56] being open by then).
    assert_eq!(settle(&v, 56), 56);
}
