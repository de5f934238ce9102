//! Listings without open handles: a listing continued in parts (as the kernel asks, a reply
//! at a time) or after a listing that stopped part-way is always the directory as it is now,
//! whatever backing directory was kept open from before (`Cursors`), and every part continues
//! exactly where the last one ended.

use std::collections::BTreeSet;

use super::Vfs;
use super::test_support::{caller, new_volume, open, touch};

/// Lists `dir` the way the kernel does: replies of at most `per_reply` entries, each request
/// starting at the offset after the last entry taken. Returns the names (without . and ..).
fn list_in_parts(v: &Vfs, dir: u64, per_reply: usize, plus: bool) -> Vec<String> {
    let mut names = Vec::new();
    let mut off = 0;
    loop {
        let mut got = 0usize;
        let mut last = off;
        let mut take = |next: u64, name: &std::ffi::OsStr| {
            if got == per_reply {
                return false;
            }
            got += 1;
            last = next;
            let n = name.to_string_lossy().into_owned();
            if n != "." && n != ".." {
                names.push(n);
            }
            true
        };
        if plus {
            v.readdirplus_with(dir, off, usize::MAX, |next, e, a| {
                let took = take(next, &e.name);
                if took && !e.cipher_name.is_empty() {
                    v.forget(a.ino, 1);
                }
                took
            })
            .expect("readdirplus");
        } else {
            v.readdir_with(dir, off, |next, e| take(next, &e.name))
                .expect("readdir");
        }
        if got == 0 {
            return names;
        }
        off = last;
    }
}

/// Starts a listing and abandons it after `n` entries (a program that stops reading early).
fn abandon_after(v: &Vfs, dir: u64, n: usize) {
    let mut got = 0;
    v.readdir_with(dir, 0, |_, _| {
        got += 1;
        got <= n
    })
    .expect("readdir");
}

/// A volume opened without FUSE, with an empty directory `d` in its root.
fn volume_with_dir() -> (tempfile::TempDir, Vfs, u64) {
    let (t, d) = new_volume();
    let v = open(&d);
    let dir = v
        .mkdir(1, "d".as_ref(), 0o755, &caller())
        .expect("mkdir")
        .ino;
    (t, v, dir)
}

#[test]
fn a_listing_after_changes_is_the_directory_as_it_is_now() {
    let (_t, v, dir) = volume_with_dir();
    let mut expect = BTreeSet::new();
    for i in 0..200 {
        let name = format!("f-{i:03}");
        touch(&v, dir, &name);
        expect.insert(name);
    }
    for plus in [false, true] {
        for round in 0..6 {
            // Listings that stop part-way leave backing directories open at many offsets.
            for n in [5, 20, 21, 77] {
                abandon_after(&v, dir, n);
            }
            // Then the directory changes: entries go and come, everywhere in the listing.
            for i in (round..200).step_by(17) {
                let name = format!("f-{i:03}");
                if expect.remove(&name) {
                    v.unlink(dir, name.as_ref()).expect("unlink");
                }
            }
            for i in 0..9 {
                let name = format!("new-{plus}-{round}-{i}");
                touch(&v, dir, &name);
                expect.insert(name);
            }
            let from = "f-100";
            if expect.remove(from) {
                let to = format!("renamed-{plus}-{round}");
                v.rename(dir, from.as_ref(), dir, to.as_ref(), 0)
                    .expect("rename");
                expect.insert(to);
            }
            for per_reply in [20, 7, 1000] {
                let got = list_in_parts(&v, dir, per_reply, plus);
                let set: BTreeSet<String> = got.iter().cloned().collect();
                assert_eq!(
                    got.len(),
                    set.len(),
                    "a name came twice ({per_reply} per reply)"
                );
                assert_eq!(
                    set, expect,
                    "round {round}, {per_reply} per reply, plus {plus}"
                );
            }
        }
    }
}

#[test]
fn dot_and_dotdot_come_first_and_offsets_resume_exactly() {
    let (_t, v, dir) = volume_with_dir();
    for i in 0..50 {
        touch(&v, dir, &format!("{i}"));
    }
    let all = v.readdir(dir, 0).expect("readdir");
    assert_eq!(all[0].1.name, ".");
    assert_eq!(all[0].1.ino, dir);
    assert_eq!(all[1].1.name, "..");
    assert_eq!(all[1].1.ino, 1);
    assert_eq!(all.len(), 52);
    // Going on from any entry's offset gives exactly the rest.
    for k in 0..all.len() {
        let rest = v.readdir(dir, all[k].0).expect("readdir from offset");
        let want: Vec<_> = all[k + 1..].iter().map(|(_, e)| e.name.clone()).collect();
        let got: Vec<_> = rest.iter().map(|(_, e)| e.name.clone()).collect();
        assert_eq!(got, want, "from the offset after entry {k}");
    }
}

#[test]
fn the_request_that_ends_a_listing_reads_the_directory_no_more() {
    let (_t, v, dir) = volume_with_dir();
    for i in 0..10 {
        touch(&v, dir, &format!("{i}"));
    }
    let opened = || {
        v.dir_cursors
            .opened
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for plus in [false, true] {
        // One part with every entry, then the empty reply that ends the listing: the
        // backing directory is opened once, for the first.
        let before = opened();
        assert_eq!(list_in_parts(&v, dir, 1000, plus).len(), 10);
        assert_eq!(opened() - before, 1, "plus {plus}");
        // A change between the parts: the cursor kept at the end is not used, and the
        // listing shows the directory as it is now.
        let mut seen = 0;
        let mut last = 0;
        v.readdir_with(dir, 0, |next, _| {
            seen += 1;
            last = next;
            true
        })
        .expect("readdir");
        assert_eq!(seen, 12);
        touch(&v, dir, &format!("late-{plus}"));
        let before = opened();
        let rest = v.readdir(dir, last).expect("readdir from the end");
        assert_eq!(opened() - before, 1, "read again after the change");
        assert!(rest.iter().all(|(_, e)| e.name != "." && e.name != ".."));
        assert_eq!(list_in_parts(&v, dir, 1000, plus).len(), 11);
        v.unlink(dir, format!("late-{plus}").as_ref())
            .expect("unlink");
    }
}

/// A listing flags a regular file open for writing (its size may be behind the kernel's with
/// the writeback cache, see `fuse::KmsFs::readdirplus`), and nothing else.
#[test]
fn a_listing_flags_files_open_for_writing() {
    let (_t, dir) = new_volume();
    let v = open(&dir);
    let w = touch(&v, 1, "written");
    let r = touch(&v, 1, "read");
    touch(&v, 1, "closed");
    v.mkdir(1, "sub".as_ref(), 0o755, &caller()).expect("mkdir");
    let flagged = |v: &Vfs| {
        let mut out = BTreeSet::new();
        v.readdirplus_with(1, 0, usize::MAX, |_, e, a| {
            if !e.cipher_name.is_empty() {
                v.forget(a.ino, 1);
            }
            if e.size_may_lag {
                out.insert(e.name.to_string_lossy().into_owned());
            }
            true
        })
        .expect("readdirplus");
        out
    };
    let fw = v.open(w, libc::O_WRONLY).expect("open for writing");
    let fr = v.open(r, libc::O_RDONLY).expect("open for reading");
    assert_eq!(flagged(&v), BTreeSet::from(["written".to_string()]));
    v.release(fw).expect("release");
    v.release(fr).expect("release");
    assert!(flagged(&v).is_empty());
}
