//! Two processes renaming, creating and deleting in the same directories at the same time never
//! lose or duplicate a name: afterwards every renamed file exists under exactly one of its two
//! names with its own content, readdir lists each name once, and every listed name can be
//! looked up.
mod common;
use common::*;

use std::collections::HashSet;
use std::time::{Duration, Instant};

const FILES: usize = 40;

#[test]
fn concurrent_renames_creates_and_deletes_keep_every_name() {
    let v = Volume::new(&[]);
    let m = v.mount();
    let (a, b) = (m.path("a"), m.path("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    for i in 0..FILES {
        std::fs::write(a.join(format!("f{i}")), format!("content {i}")).unwrap();
    }
    let (a2, b2) = (a.clone(), b.clone());
    with_timeout(120, move || {
        // Process 1: moves f{i} back and forth between a/ and b/ (renamed to g{i} in b/), with
        // shell `mv`, i.e. a separate process per rename.
        let mover = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "end=$((SECONDS+3)); while [ $SECONDS -lt $end ]; do \
                   for i in $(seq 0 {last}); do \
                     if [ -e {a}/f$i ]; then mv {a}/f$i {b}/g$i; else mv {b}/g$i {a}/f$i; fi; \
                   done; \
                 done",
                last = FILES - 1,
                a = a2.display(),
                b = b2.display()
            ))
            .spawn()
            .unwrap();
        // Process 2 (this one): creates, renames over and deletes other names in both dirs,
        // and lists them.
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_secs(3) {
            for d in [&a2, &b2] {
                let p = d.join(format!("t{}", n % 7));
                let _ = std::fs::write(&p, b"temp");
                let _ = std::fs::rename(&p, d.join(format!("u{}", n % 5)));
                let _ = std::fs::remove_file(d.join(format!("u{}", (n + 2) % 5)));
                let names: Vec<String> = std::fs::read_dir(d)
                    .unwrap()
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                let unique: HashSet<&String> = names.iter().collect();
                assert_eq!(
                    unique.len(),
                    names.len(),
                    "duplicate name in a listing: {names:?}"
                );
            }
            n += 1;
        }
        let st = mover.wait_with_output().unwrap();
        assert!(st.status.success(), "the mover failed: {st:?}");
        for i in 0..FILES {
            let (f, g) = (a2.join(format!("f{i}")), b2.join(format!("g{i}")));
            let here: Vec<_> = [&f, &g].into_iter().filter(|p| p.exists()).collect();
            assert_eq!(here.len(), 1, "file {i} is under {} names", here.len());
            assert_eq!(
                std::fs::read_to_string(here[0]).unwrap(),
                format!("content {i}")
            );
        }
        for d in [&a2, &b2] {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                std::fs::symlink_metadata(&p)
                    .unwrap_or_else(|e| panic!("listed but not found: {}: {e}", p.display()));
            }
        }
    });
    m.unmount();
    // And the cipher tree is consistent.
    v.assert_fsck_clean("after the concurrent tree changes");
}
