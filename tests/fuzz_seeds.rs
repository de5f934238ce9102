//! The fuzz targets (fuzz/, built by `cargo fuzz` with a nightly toolchain, see tools/fuzz.sh)
//! are their own workspace, so nothing else builds them and they rot when an API they call
//! changes (it happened once). This test builds them with the toolchain at hand (libFuzzer's
//! driver links without coverage instrumentation) and runs every target once over each of its
//! seeds in fuzz/seeds/<target>/ (where a crash found by fuzzing belongs once fixed): each run
//! must exit 0, i.e. the target's own checks (no panic, round trips, canonical forms) hold for
//! those inputs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_fuzz_target_builds_and_passes_its_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fuzz = root.join("fuzz");
    // A target directory of its own (the outer `cargo test` holds the lock of its own), under
    // the one cargo gives integration tests for scratch files.
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-seeds");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "--locked", "--bins", "--manifest-path"])
        .arg(fuzz.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "the fuzz targets do not build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let targets: Vec<String> = inputs(&fuzz.join("fuzz_targets"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    assert!(targets.len() >= 13, "fuzz targets found: {targets:?}");
    let mut failures = Vec::new();
    let mut ran = 0;
    for t in &targets {
        let files = inputs(&fuzz.join("seeds").join(t));
        assert!(
            !files.is_empty(),
            "target {t} has no seeds in fuzz/seeds/{t}"
        );
        ran += files.len();
        // libFuzzer writes a crashing input into its working directory: not the repository.
        let out = Command::new(target_dir.join("debug").join(t))
            .args(&files)
            .current_dir(&target_dir)
            .output()
            .expect("run a fuzz target");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().rev().take(30).collect();
            failures.push(format!(
                "{t}: {}\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("{} targets, {ran} inputs", targets.len());
}
