//! Stress, bounded for CI: parallel untar/read/remove loops and concurrent readers and writers on
//! one file through a real mount for a few seconds; every check passes and the daemon's memory
//! stays flat (RSS at start and end are printed). `KMSFS_STRESS_SECS` makes it run longer.
mod common;
use common::*;

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn round(root: &std::path::Path, tree: &std::path::Path, w: usize, n: u64) {
    let d = root.join(format!("t{w}-{n}"));
    let o = sh(&format!(
        "mkdir '{d}' && tar xf '{t}' -C '{d}' && cat $(find '{d}' -type f) > /dev/null && rm -rf '{d}'",
        d = d.display(),
        t = tree.display()
    ));
    assert!(
        o.status.success(),
        "untar/read/rm: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn parallel_tree_and_file_stress_keeps_memory_flat() {
    let secs: u64 = std::env::var("KMSFS_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let v = Volume::new(&[]);
    // A tree of a few hundred files to untar.
    let src = v.tmp.path().join("src");
    for i in 0..300 {
        let d = src.join(format!("d{}", i % 12));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join(format!("f{i}")),
            vec![i as u8; 100 + (i * 97) % 9000],
        )
        .unwrap();
    }
    let tree = v.tmp.path().join("tree.tar");
    assert!(
        sh(&format!(
            "tar cf '{}' -C '{}' .",
            tree.display(),
            src.display()
        ))
        .status
        .success()
    );
    let m = v.mount();
    let pid = m.pid().unwrap();
    let root = m.path("");
    // Warm up once, then take the starting RSS.
    round(&root, &tree, 99, 0);
    let start = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let shared = root.join("shared.bin");
    std::fs::write(&shared, vec![0u8; 1 << 20]).unwrap();
    let mut workers = Vec::new();
    for w in 0..2 {
        let (root, tree, stop) = (root.clone(), tree.clone(), stop.clone());
        workers.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                round(&root, &tree, w, n);
                n += 1;
            }
            n
        }));
    }
    // Concurrent writers and a reader on one file: each writer owns a 64 KiB slice and fills
    // it with one byte value per round; the reader reads the whole file the whole time (never an
    // error, never a short file); at the end each slice holds one value.
    for w in 0..2u8 {
        let (p, stop) = (shared.clone(), stop.clone());
        workers.push(std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let fill = (n % 200) as u8 + 1;
                f.seek(SeekFrom::Start(u64::from(w) * 65536)).unwrap();
                f.write_all(&vec![fill; 65536]).unwrap();
                n += 1;
            }
            n
        }));
    }
    {
        let (p, stop) = (shared.clone(), stop.clone());
        workers.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut b = Vec::new();
                std::fs::File::open(&p)
                    .unwrap()
                    .read_to_end(&mut b)
                    .unwrap();
                assert_eq!(b.len(), 1 << 20);
                n += 1;
            }
            n
        }));
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let end = rss_kib(pid);
    let b = std::fs::read(&shared).unwrap();
    for w in 0..2 {
        let slice = &b[w * 65536..(w + 1) * 65536];
        assert!(
            slice.iter().all(|x| *x == slice[0]) && slice[0] != 0,
            "slice {w} mixed"
        );
    }
    eprintln!("stress {secs}s: rounds per worker {counts:?}; daemon RSS {start} KiB -> {end} KiB");
    assert!(
        counts.iter().all(|c| *c > 0),
        "a worker made no progress: {counts:?}"
    );
    assert!(
        end < start + 64 * 1024,
        "daemon RSS grew from {start} KiB to {end} KiB"
    );
    // Nothing left behind but the shared file, and the volume is consistent.
    let left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    m.unmount();
    v.assert_fsck_clean("after the stress");
}
