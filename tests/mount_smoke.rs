//! The basic contract: init, mount, write, read back, unmount, remount.
mod common;
use common::*;

#[test]
fn round_trip_through_a_real_mount_and_remount() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let p = m.path("hello.txt");
    with_timeout(30, move || {
        std::fs::write(&p, b"It works!\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"It works!\n");
    });
    m.unmount();
    assert!(!is_mounted(&v.mnt));
    let m = v.mount();
    assert_eq!(std::fs::read(m.path("hello.txt")).unwrap(), b"It works!\n");
    drop(m);
    assert!(!is_mounted(&v.mnt));
}
