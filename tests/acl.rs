//! POSIX ACLs through a real mount (`--acl`): the same steps on the mount and on a plain
//! directory of the host's file system (ext4 here and in CI) print the same; they survive a
//! remount and are still enforced; `-o acl` is `--acl`; without it they are not supported.
//! Needs `setfacl`/`getfacl` (the `acl` package, installed by `.ci/run`) and `setpriv`.

mod common;
mod support;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Steps of every kind, printing what a user sees. Run in an empty directory as root; user
/// `nobody` (65534, group 65534) must be able to reach it.
const PROBE: &str = r#"
set -u
as() { setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"; }
st() { stat -c '%n %A %u:%g' "$@"; }
cd "$1" || exit 9
umask 022
chmod 755 .
echo data > f; chmod 600 f
as cat f 2>&1 | sed 's/.*: /cat: /'
setfacl -m u:nobody:r f; st f; getfacl -c f
as cat f 2>&1
as sh -c 'echo x >> f' 2>&1 | sed 's/.*: /w: /'
chmod 640 f; st f; getfacl -c f
chmod 600 f; as cat f 2>&1 | sed 's/.*: /cat: /'
chmod 644 f; st f; getfacl -c f
setfacl -m m::rwx f; st f; getfacl -c f
ls -l f | cut -c1-11
setfacl -b f; st f; getfacl -c f
setfacl -m u::rwx,g::r,o::- f; st f; getfacl -c f
setfacl --set u::rw,g::r,o::r f; st f; getfacl -c f
mkdir d; setfacl -d -m u:nobody:rwx,g::r-x,o::- d; getfacl -c d
touch d/a; mkdir d/b; mknod d/p p; ln -s a d/l; st d/a d/b d/p; getfacl -c d/a d/b d/p
as sh -c 'echo hi > d/a' 2>&1 | sed 's/.*: /w: /'; cat d/a
as sh -c 'echo new > d/b/n' 2>&1 | sed 's/.*: /w: /'; st d/b/n; getfacl -c d/b/n
(umask 077; touch d/u; mkdir d/v); st d/u d/v; getfacl -c d/u
getfattr -m - d/a d/b 2>&1 | grep -v '^$' | sort
cp -a d/a acopy; st acopy; getfacl -c acopy
mkdir e; setfacl -d --set u::rwx,g::rx,o::- e; (umask 0; touch e/x; mkdir e/y); st e/x e/y
getfacl -c e/x e/y
setfacl -k d; getfacl -c d; touch d/after; st d/after; getfacl -c d/after
setfacl -d -m u:nobody:r f 2>&1 | sed 's/.*: /err: /'
mkdir s; chown nobody s; chmod 2775 s; as setfacl -m u:root:rw s 2>&1; st s
touch g; chown nobody:root g; chmod 2755 g; as setfacl -m u:root:rw g 2>&1; st g
setfacl -m g:nogroup:rw f; st f; getfacl -c f
as setfacl -m u:nobody:rwx f 2>&1 | sed 's/.*: /err: /'
setfattr -n system.posix_acl_access -v 0x02000000 f 2>&1 | sed 's/.*: /err: /'
setfattr -n system.posix_acl_access -v 0x0200000001000600ffffffff f; echo "rc $?"
st f
setfacl -b f; setfattr -x system.posix_acl_access f; echo "remove none: $?"
mkdir x; setfattr -x system.posix_acl_default x; echo "remove no default: $?"
setfattr -x user.none f 2>&1 | sed 's/.*: /err: /'
mkdir -p src/a/b; echo 1 > src/a/f; setfacl -m u:nobody:rw,g:nogroup:r src/a/f
setfacl -d -m u:nobody:rx src/a; setfacl -m u:nobody:x src/a/b
mkfifo src/a/p; setfacl -m u:nobody:r src/a/p
tar --acls -cf t.tar -C src .; mkdir t; tar --acls -xf t.tar -C t; echo "tar $?"
cp -a src c; echo "cp $?"
for d in src t c; do (cd $d && find . -mindepth 1 | LC_ALL=C sort | xargs getfacl -c) > $d.acl; done
cmp src.acl t.acl && echo "tar --acls keeps them"; cmp src.acl c.acl && echo "cp -a keeps them"
"#;

fn run(cmd: &str, dir: &Path) -> String {
    let out = std::process::Command::new("bash")
        .args(["-c", cmd, "probe"])
        .arg(dir)
        .output()
        .expect("bash");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn open_to_all(p: &Path) {
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod 755");
}

fn have_tools() {
    for t in ["setfacl", "getfacl", "setpriv", "setfattr"] {
        let ok = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "{t} is missing (apt-get install acl attr util-linux)");
    }
}

#[test]
fn acls_behave_as_on_the_host_file_system_and_survive_a_remount() {
    have_tools();
    let v = Volume::new(&[]);
    allow_everyone_to_use_the_default_key(&v);
    open_to_all(v.tmp.path());
    let plain = tempfile::Builder::new()
        .prefix("kmsfs-acl-plain-")
        .tempdir()
        .expect("tempdir");
    open_to_all(plain.path());
    let host = run(PROBE, plain.path());
    assert!(
        host.contains("user:nobody:r--"),
        "the host file system does not take ACLs in {}:\n{host}",
        plain.path().display()
    );
    for line in [
        "tar --acls keeps them",
        "cp -a keeps them",
        "remove none: 0",
        "remove no default: 0",
    ] {
        assert!(
            host.contains(line),
            "{line:?} not in the host's output:\n{host}"
        );
    }
    let m = v.mount_with(&["--acl", "--allow-other"]);
    let mnt = m.mnt.clone();
    let (ours, audit) = with_timeout(120, move || {
        let status = fs::read_to_string(mnt.join(".kmsfs/status")).expect("status");
        assert!(status.contains("\"acl\": true"), "{status}");
        let out = run(PROBE, &mnt);
        (
            out,
            fs::read_to_string(mnt.join(".kmsfs/audit")).expect("audit view"),
        )
    });
    assert_eq!(ours, host, "the mount (left) and the host (right) differ");
    // Every ACL change is in the audit log, with who made it.
    let records: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|r: &serde_json::Value| r["event"] == "SetAcl" || r["event"] == "RemoveAcl")
        .collect();
    let find = |event: &str, path: &str, uid: u64, detail: &str| {
        records.iter().any(|r| {
            r["event"] == event
                && r["resources"]["path"] == path
                && r["actor"]["uid"] == uid
                && r["detail"].as_str().is_some_and(|d| d.contains(detail))
                && r["errno"] == 0
        })
    };
    assert!(find(
        "SetAcl",
        "/f",
        0,
        "access ACL: user::rw-,user:65534:r--"
    ));
    assert!(find(
        "SetAcl",
        "/d",
        0,
        "default ACL: user::rwx,user:65534:rwx"
    ));
    assert!(find("SetAcl", "/s", 65534, "user:0:rw-"));
    assert!(find("RemoveAcl", "/d", 0, "default ACL"));
    support::unmount(m);

    // After a remount (this time `-o acl`): still there, still enforced.
    let m = v.mount_with(&["-o", "acl", "--allow-other"]);
    let mnt = m.mnt.clone();
    let after = with_timeout(60, move || {
        run(
            r#"cd "$1"; getfacl -c d/a; setpriv --reuid=65534 --regid=65534 --clear-groups cat d/a;
               chmod 600 d/a; setpriv --reuid=65534 --regid=65534 --clear-groups cat d/a 2>&1 |
               sed 's/.*: /cat: /'"#,
            &mnt,
        )
    });
    assert_eq!(
        after,
        "user::rw-\nuser:nobody:rwx\t#effective:rw-\ngroup::r-x\t#effective:r--\nmask::rw-\n\
         other::---\n\nhi\ncat: Permission denied\n"
    );
    // `kmsfs rekey` keeps a file's ACL, and gives none to a file that had none in a directory
    // whose default ACL came later.
    let mnt = m.mnt.clone();
    let rekeyed = with_timeout(60, move || {
        let script = r#"cd "$1"; mkdir r; echo p > r/plain; chmod 640 r/plain
            setfacl -d -m u:nobody:rwx r; echo q > r/acl; setfacl -m u:nobody:r r/acl
            { getfacl -c r/plain r/acl; stat -c %a r/plain r/acl; } > ../before
            "$2" rekey r/plain r/acl > /dev/null || echo rekey failed
            { getfacl -c r/plain r/acl; stat -c %a r/plain r/acl; } > ../after
            cmp ../before ../after && echo same"#;
        let out = std::process::Command::new("bash")
            .args(["-c", script, "rekey"])
            .arg(&mnt)
            .arg(bin())
            .output()
            .expect("bash");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    });
    assert_eq!(rekeyed, "same\n");
    support::unmount(m);

    // With -o noacl: not supported, nothing listed; the stored ACL is kept for the next mount
    // with ACLs.
    let m = v.mount_with(&["--allow-other", "-o", "noacl"]);
    let mnt = m.mnt.clone();
    let without = with_timeout(60, move || {
        let status = fs::read_to_string(mnt.join(".kmsfs/status")).expect("status");
        assert!(status.contains("\"acl\": false"), "{status}");
        run(
            r#"cd "$1"; getfattr -m - d/a 2>&1; setfacl -m u:nobody:r f 2>&1 | sed 's/.*: /err: /';
               getfattr -n system.posix_acl_access d/a 2>&1 | sed 's/.*: /err: /'"#,
            &mnt,
        )
    });
    assert_eq!(
        without,
        "err: Operation not supported\nerr: Operation not supported\n"
    );
    // A re-key there would drop the ACLs it cannot see: refused.
    let o = kmsfs()
        .arg("rekey")
        .arg(m.path("d/a"))
        .output()
        .expect("kmsfs rekey");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("mounted with -o noacl"), "{err}");
    support::unmount(m);
    // Without either flag: a volume that holds ACLs is mounted with them, saying so.
    let m = v.mount_with(&[]);
    let mnt = m.mnt.clone();
    let back = with_timeout(60, move || {
        let status = fs::read_to_string(mnt.join(".kmsfs/status")).expect("status");
        assert!(status.contains("\"acl\": true"), "{status}");
        run(r#"getfacl -c "$1/d/a""#, &mnt)
    });
    assert!(back.contains("user:nobody:rwx"), "{back}");
    let said = support::unmount(m);
    assert!(said.contains("this volume holds POSIX ACLs"), "{said}");
    assert!(info(&v).contains("POSIX ACLs:      held"));
}

/// `kmsfs info` of the volume.
fn info(v: &Volume) -> String {
    let o = kmsfs()
        .arg("info")
        .arg(&v.cipher)
        .output()
        .expect("kmsfs info");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `.kmsfs/status` of a mount without `--acl` or `-o noacl`.
fn plain_mount_status(v: &Volume) -> String {
    let m = v.mount();
    let mnt = m.mnt.clone();
    let status = with_timeout(30, move || {
        fs::read_to_string(mnt.join(".kmsfs/status")).expect("status")
    });
    support::unmount(m);
    status
}

#[test]
fn a_volume_without_acls_mounts_without_them() {
    let v = Volume::new(&[]);
    // ACLs on, but none stored: the next plain mount has them off.
    let m = v.mount_with(&["--acl"]);
    let mnt = m.mnt.clone();
    with_timeout(30, move || fs::write(mnt.join("f"), b"x").expect("write"));
    support::unmount(m);
    assert!(!v.cipher.join(".kmsfs/acls").exists());
    assert!(!info(&v).contains("POSIX ACLs"));
    let status = plain_mount_status(&v);
    assert!(status.contains("\"acl\": false"), "{status}");
}

/// The mark outlives the last ACL: fsck says so, `--repair` removes it, and plain mounts then
/// run without ACLs. A volume that still holds an ACL (on a FIFO, whose attributes live in the
/// backing `trusted.` namespace) keeps its mark.
#[test]
fn fsck_removes_the_mark_of_a_volume_whose_acls_are_all_gone() {
    have_tools();
    let v = Volume::new(&[]);
    let fsck_json = |extra: &[&str]| {
        let (code, r) = v.fsck_json(extra);
        assert_eq!(code, 0, "{r}");
        r
    };
    let m = v.mount_with(&["--acl"]);
    let mnt = m.mnt.clone();
    let out = with_timeout(30, move || {
        run(
            "cd \"$1\" && touch f && mkfifo p && setfacl -m u:65534:r f p && setfacl -b f && \
             getfacl -cn p | grep -c 65534",
            &mnt,
        )
    });
    assert_eq!(out.trim(), "1", "{out}");
    support::unmount(m);
    // The FIFO still has its ACL: the mark stays, even with --repair.
    let r = fsck_json(&["--repair"]);
    assert_eq!(r["acl_marker_unused"], false, "{r}");
    assert!(v.cipher.join(".kmsfs/acls").exists());
    // Its ACL removed too: reported, then removed by --repair.
    let m = v.mount();
    let mnt = m.mnt.clone();
    let out = with_timeout(30, move || {
        run("cd \"$1\" && setfacl -b p && echo ok", &mnt)
    });
    assert_eq!(out.trim(), "ok", "{out}");
    support::unmount(m);
    let r = fsck_json(&[]);
    assert_eq!(
        (&r["acl_marker_unused"], &r["acl_marker_removed"]),
        (&true.into(), &false.into()),
        "{r}"
    );
    assert!(
        v.cipher.join(".kmsfs/acls").exists(),
        "fsck without --repair changed nothing"
    );
    let r = fsck_json(&["--repair"]);
    assert_eq!(r["acl_marker_removed"], true, "{r}");
    assert!(!v.cipher.join(".kmsfs/acls").exists());
    assert!(!info(&v).contains("POSIX ACLs"));
    let status = plain_mount_status(&v);
    assert!(status.contains("\"acl\": false"), "{status}");
}
