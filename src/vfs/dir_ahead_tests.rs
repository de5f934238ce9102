//! Read-ahead down a tree walk through the model: a listing whose parent was listed before has
//! its subdirectories read ahead (at most `SUBDIRS_MAX` per listing); a lone listing and
//! `--no-prefetch` read nothing; listings are unchanged.

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

#[test]
fn a_walk_reads_the_subdirectories_ahead() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let (a, b) = tree(&v, 5);
    // b listed on its own (its parent never was): not a walk.
    let alone = names(&v, b);
    assert_eq!(quiet(&v), 0);
    // A walk from the root: a's subdirectory b, then b's five (not its file or FIFO).
    v.readdirplus(1, 0).expect("root");
    v.readdirplus(a, 0).expect("a");
    assert_eq!(settle(&v, 1), 1);
    assert_eq!(names(&v, b), alone, "the listing is unchanged");
    assert_eq!(settle(&v, 6), 6);
    // Plain READDIR walks too.
    v.readdir(1, 0).expect("root");
    v.readdir(a, 0).expect("a");
    v.readdir(b, 0).expect("b");
    assert_eq!(settle(&v, 12), 12);
}

#[test]
fn a_listing_reads_at_most_its_bound_ahead() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let (a, b) = tree(&v, SUBDIRS_MAX + 20);
    v.readdirplus(1, 0).expect("root");
    v.readdirplus(a, 0).expect("a");
    assert_eq!(settle(&v, 1), 1);
    v.readdirplus(b, 0).expect("b");
    assert_eq!(settle(&v, 1 + SUBDIRS_MAX as u64), 1 + SUBDIRS_MAX as u64);
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
