//! Read-ahead down a tree walk through the model: a listing whose parent was listed before has
//! its subdirectories read ahead (at most `SUBDIRS_MAX` per listing), except those searched or
//! listed lately; a lone listing and `--no-prefetch` read nothing; listings are unchanged.

use std::sync::atomic::Ordering;

use super::dir_ahead::SUBDIRS_MAX;
use super::test_support::{self, caller, new_volume, open, open_with, touch};
use super::{Vfs, VfsOptions};

fn read_ahead(v: &Vfs) -> u64 {
    v.control().metrics.dirs_read_ahead.load(Ordering::Relaxed)
}

fn settle(v: &Vfs, n: u64) -> u64 {
    test_support::settle(|| read_ahead(v), n)
}

fn quiet(v: &Vfs) -> u64 {
    test_support::quiet(|| read_ahead(v))
}

/// `/a/b` with `n` subdirectories (each holding a file), a file and a FIFO; returns a and b.
fn tree(v: &Vfs, n: usize) -> (u64, u64) {
    let c = caller();
    let a = v.mkdir(1, "a".as_ref(), 0o755, &c).expect("mkdir a").ino;
    let b = v.mkdir(a, "b".as_ref(), 0o755, &c).expect("mkdir b").ino;
    for i in 0..n {
        let s = v
            .mkdir(b, format!("s{i}").as_ref(), 0o755, &c)
            .expect("mkdir s")
            .ino;
        touch(v, s, "f");
    }
    touch(v, b, "file");
    v.mknod(b, "fifo".as_ref(), libc::S_IFIFO | 0o644, 0, &c)
        .expect("mkfifo");
    (a, b)
}

fn names(v: &Vfs, ino: u64) -> Vec<String> {
    let mut n: Vec<String> = v
        .readdirplus(ino, 0)
        .expect("readdirplus")
        .into_iter()
        .map(|(_, e, _)| e.name.to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// The volume at `dir` mounted afresh (as after a remount: no directory searched or listed
/// yet), with `/a` and `/a/b` looked up the way a path walk would (searching the root and a).
fn remounted(dir: &std::path::Path, a: u64, b: u64) -> Vfs {
    let v = open(dir);
    assert_eq!(v.lookup(1, "a".as_ref()).expect("lookup a").ino, a);
    assert_eq!(v.lookup(a, "b".as_ref()).expect("lookup b").ino, b);
    v
}

#[test]
fn a_walk_reads_the_subdirectories_ahead() {
    let (_t, dir) = new_volume();
    let (a, b) = tree(&open(&dir), 5);
    let v = remounted(&dir, a, b);
    // b listed on its own (its parent never was): not a walk.
    let alone = names(&v, b);
    assert_eq!(quiet(&v), 0);
    // A walk from the root: a's subdirectory b, then b's five (not its file or FIFO). a was
    // searched for the path walk to b above, its blocks are cached: not read again.
    let v = remounted(&dir, a, b);
    v.readdirplus(1, 0).expect("root");
    v.readdirplus(a, 0).expect("a");
    assert_eq!(settle(&v, 1), 1);
    assert_eq!(names(&v, b), alone, "the listing is unchanged");
    assert_eq!(settle(&v, 6), 6);
    // Plain READDIR walks too (on a fresh mount: everything above is cached now).
    let v = open(&dir);
    v.readdir(1, 0).expect("root");
    assert_eq!(v.lookup(1, "a".as_ref()).expect("lookup a").ino, a);
    v.readdir(a, 0).expect("a");
    assert_eq!(settle(&v, 1), 1);
    assert_eq!(v.lookup(a, "b".as_ref()).expect("lookup b").ino, b);
    v.readdir(b, 0).expect("b");
    assert_eq!(settle(&v, 6), 6);
}

#[test]
fn a_listing_reads_at_most_its_bound_ahead() {
    let (_t, dir) = new_volume();
    let (a, b) = tree(&open(&dir), SUBDIRS_MAX + 20);
    let v = remounted(&dir, a, b);
    v.readdirplus(1, 0).expect("root");
    v.readdirplus(a, 0).expect("a");
    assert_eq!(settle(&v, 1), 1);
    v.readdirplus(b, 0).expect("b");
    assert_eq!(settle(&v, 1 + SUBDIRS_MAX as u64), 1 + SUBDIRS_MAX as u64);
}

#[test]
fn subdirectories_searched_lately_are_not_read_ahead() {
    // A cold `git status`: every file is looked up first (which reads each directory's
    // blocks), then the tree is walked; reading the directories again would only take CPU.
    let (_t, dir) = new_volume();
    let (a, b) = tree(&open(&dir), 5);
    let v = remounted(&dir, a, b);
    for i in 0..3 {
        let s = v.lookup(b, format!("s{i}").as_ref()).expect("lookup s").ino;
        v.lookup(s, "f".as_ref()).expect("lookup f");
    }
    v.readdirplus(1, 0).expect("root");
    v.readdirplus(a, 0).expect("a");
    v.readdirplus(b, 0).expect("b");
    // Only s3 and s4, whose files were not looked up.
    assert_eq!(settle(&v, 2), 2);
    assert_eq!(quiet(&v), 2);
}

#[test]
fn no_prefetch_reads_no_directory_ahead() {
    let (_t, dir) = new_volume();
    let v = open_with(
        &dir,
        VfsOptions {
            no_prefetch: true,
            ..Default::default()
        },
    );
    let (a, b) = tree(&v, 5);
    for ino in [1, a, b] {
        v.readdirplus(ino, 0).expect("readdirplus");
    }
    assert_eq!(quiet(&v), 0);
}
