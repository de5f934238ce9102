//! Golden tests: the `--help` of every command and the exact stderr and exit code of each
//! failure class are pinned, so a change to what users' scripts see is a deliberate one.
//! `KMSFS_UPDATE_GOLDEN=1 cargo test --test golden` rewrites the files under tests/golden/.
mod common;
use common::*;

use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `actual` with the golden file `name` (or rewrites it when updating).
fn check(name: &str, actual: &str, mismatches: &mut Vec<String>) {
    let p = golden_dir().join(name);
    if std::env::var_os("KMSFS_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(&p) {
        Ok(want) if want == actual => {}
        Ok(want) => mismatches.push(format!(
            "{name} differs:\n--- golden\n{want}\n--- actual\n{actual}"
        )),
        Err(_) => mismatches.push(format!("{name}: no golden file (KMSFS_UPDATE_GOLDEN=1)")),
    }
}

fn paths(c: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    for s in c.get_subcommands().filter(|s| s.get_name() != "help") {
        let mut p = prefix.clone();
        p.push(s.get_name().to_string());
        paths(s, p, out);
    }
}

#[test]
fn help_of_every_command() {
    let mut all = Vec::new();
    paths(&kmsfs::cli::Cli::command(), Vec::new(), &mut all);
    let mut bad = Vec::new();
    for p in all {
        let o = kmsfs().args(&p).arg("--help").output().unwrap();
        assert!(o.status.success(), "{p:?} --help");
        let name = if p.is_empty() {
            "kmsfs".to_string()
        } else {
            format!("kmsfs-{}", p.join("-"))
        };
        check(
            &format!("help/{name}.txt"),
            &String::from_utf8_lossy(&o.stdout),
            &mut bad,
        );
    }
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}

#[test]
fn stderr_and_exit_code_of_each_failure_class() {
    let v = Volume::new(&[]);
    let tmp = v.tmp.path().to_path_buf();
    let norm = |s: &[u8]| String::from_utf8_lossy(s).replace(tmp.to_str().unwrap(), "<TMP>");
    let wrong = tmp.join("wrong");
    std::fs::write(&wrong, "not the passphrase\n").unwrap();
    let notvol = tmp.join("not-a-volume");
    std::fs::create_dir(&notvol).unwrap();
    let list = kmsfs()
        .arg("key")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .args(["list", "--json"])
        .output()
        .unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let key = keys[0]["key_id"].as_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<std::ffi::OsString>)> = vec![
        (
            "wrong-passphrase",
            vec![
                "key".into(),
                v.cipher.clone().into(),
                "--passfile".into(),
                wrong.into(),
                "list".into(),
            ],
        ),
        ("not-a-volume", vec!["info".into(), notvol.clone().into()]),
        ("usage", vec!["key".into()]),
        (
            "no-such-key",
            vec![
                "key".into(),
                v.cipher.clone().into(),
                "--passfile".into(),
                v.passfile.clone().into(),
                "describe".into(),
                "alias/none".into(),
            ],
        ),
        (
            "access-denied",
            vec![
                "policy".into(),
                "simulate".into(),
                "--volume".into(),
                v.cipher.clone().into(),
                "--passfile".into(),
                v.passfile.clone().into(),
                key.clone().into(),
                "--action".into(),
                "kms:Decrypt".into(),
                "--uid".into(),
                "4242".into(),
            ],
        ),
        (
            "bad-mount-point",
            vec![
                "mount".into(),
                "--passfile".into(),
                v.passfile.clone().into(),
                v.cipher.clone().into(),
                notvol.join("missing").into(),
            ],
        ),
    ];
    let mut bad = Vec::new();
    for (name, args) in cases {
        let o = kmsfs().args(&args).output().unwrap();
        let got = format!(
            "exit {}\n{}",
            o.status.code().unwrap_or(-1),
            norm(&o.stderr)
        );
        check(&format!("errors/{name}.txt"), &got, &mut bad);
    }
    // An integrity failure: a flipped byte in the audit log, found by verify (exit 23).
    let seg = std::fs::read_dir(v.cipher.join(".kmsfs/audit"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .expect("a segment");
    let mut b = std::fs::read(&seg).unwrap();
    b[10] = if b[10] == b'A' { b'B' } else { b'A' };
    std::fs::write(&seg, b).unwrap();
    let o = kmsfs()
        .arg("audit")
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .arg("verify")
        .output()
        .unwrap();
    check(
        "errors/integrity.txt",
        &format!(
            "exit {}\n{}",
            o.status.code().unwrap_or(-1),
            norm(&o.stderr)
        ),
        &mut bad,
    );
    assert!(bad.is_empty(), "{}", bad.join("\n\n"));
}
