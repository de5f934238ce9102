//! Every inode the kernel holds costs the daemon one descriptor. When they run out, a listing
//! must say so (EMFILE), never return fewer names as if they were all, and nothing stored may
//! be harmed: a remount with descriptors to spare lists everything again.
mod common;
use common::*;

use std::fs;
use std::path::Path;

const FILES: usize = 1500;

fn names(dir: &Path) -> std::io::Result<Vec<String>> {
    fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

#[test]
fn running_out_of_descriptors_fails_a_listing_instead_of_shortening_it() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let big = m.path("big");
    with_timeout(120, move || {
        fs::create_dir(&big).unwrap();
        for i in 0..FILES {
            fs::write(big.join(format!("f{i}")), b"x").unwrap();
        }
    });
    m.unmount();

    // Cold again, with room for only part of the directory's inodes.
    let m = v.mount();
    let pid = rustix::process::Pid::from_raw(m.pid().expect("daemon pid") as i32).unwrap();
    let limit = 1000;
    rustix::process::prlimit(
        Some(pid),
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )
    .expect("lower the daemon's descriptor limit");
    let big = m.path("big");
    let listed = with_timeout(60, move || names(&big));
    match listed {
        Ok(n) => assert_eq!(n.len(), FILES, "a listing that succeeds holds every name"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}"),
    }
    m.unmount();

    let m = v.mount();
    let big = m.path("big");
    let mut n = with_timeout(60, move || names(&big).unwrap());
    n.sort();
    let mut want: Vec<String> = (0..FILES).map(|i| format!("f{i}")).collect();
    want.sort();
    assert_eq!(n, want);
    for name in ["f0", "f777", "f1499"] {
        assert_eq!(fs::read(m.path("big").join(name)).unwrap(), b"x");
    }
    m.unmount();
    assert!(!is_mounted(&v.mnt));
}
