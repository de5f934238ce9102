//! Shared harness for tests that mount for real.
//!
//! Every mount is a [`Mount`] guard: dropping it (also when a test panics) runs
//! `fusermount3 -u -z` and kills the daemon, so no mount is left behind. [`with_timeout`] bounds
//! a test body; on timeout the guard's drop unblocks any hung system call (ENOTCONN).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASS: &str = "test passphrase";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kmsfs")
}

/// A kmsfs command with the fast (insecure) KDF for tests.
pub fn kmsfs() -> Command {
    let mut c = Command::new(bin());
    c.env("KMSFS_INSECURE_FAST_KDF", "1");
    c
}

/// A temporary volume: cipher dir, mount point and passfile in one temp dir.
pub struct Volume {
    pub tmp: tempfile::TempDir,
    pub cipher: PathBuf,
    pub mnt: PathBuf,
    pub passfile: PathBuf,
}

impl Volume {
    /// `kmsfs init` with `extra` arguments (e.g. `--plaintext-names`).
    pub fn new(extra: &[&str]) -> Volume {
        let tmp = tempfile::Builder::new()
            .prefix("kmsfs-test-")
            .tempdir()
            .expect("tempdir");
        let cipher = tmp.path().join("cipher");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let passfile = tmp.path().join("pass");
        std::fs::write(&passfile, format!("{PASS}\n")).expect("passfile");
        let out = kmsfs()
            .arg("init")
            .arg("--passfile")
            .arg(&passfile)
            .arg("--no-recovery-key")
            .args(extra)
            .arg(&cipher)
            .output()
            .expect("run kmsfs init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Volume {
            tmp,
            cipher,
            mnt,
            passfile,
        }
    }

    /// Mounts in the foreground (child process) and waits until the mount is live.
    pub fn mount(&self) -> Mount {
        self.mount_with(&[])
    }

    pub fn mount_with(&self, extra: &[&str]) -> Mount {
        Mount::start(&self.cipher, &self.mnt, &self.passfile, extra)
    }

    /// `kmsfs fsck` of the volume (unmounted).
    pub fn fsck(&self) -> Output {
        kmsfs()
            .arg("fsck")
            .arg("--passfile")
            .arg(&self.passfile)
            .arg(&self.cipher)
            .output()
            .expect("run kmsfs fsck")
    }

    /// `kmsfs fsck --json` of the volume (unmounted): exit code and report.
    pub fn fsck_json(&self, extra: &[&str]) -> (i32, serde_json::Value) {
        fsck_json(&self.passfile, &self.cipher, extra)
    }

    /// Every record of the volume's audit log (`kmsfs audit DIR show --json`), oldest first.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        let o = kmsfs()
            .arg("audit")
            .arg(&self.cipher)
            .arg("--passfile")
            .arg(&self.passfile)
            .args(["show", "--json"])
            .output()
            .expect("kmsfs audit show");
        assert!(
            o.status.success(),
            "audit show: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON record"))
            .collect()
    }

    /// Fails the test, with fsck's report, unless fsck finds nothing wrong.
    pub fn assert_fsck_clean(&self, when: &str) {
        let o = self.fsck();
        assert!(
            o.status.success(),
            "fsck {when}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// `kmsfs fsck --json EXTRA DIR` with the passphrase in `passfile`: exit code and report
/// (null when the output is not JSON).
pub fn fsck_json(passfile: &Path, dir: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let o = kmsfs()
        .arg("fsck")
        .arg("--passfile")
        .arg(passfile)
        .arg("--json")
        .args(extra)
        .arg(dir)
        .output()
        .expect("run kmsfs fsck");
    let code = o.status.code().unwrap_or(-1);
    (
        code,
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null),
    )
}

/// /proc/self/mounts, lossily as text (a mount point elsewhere need not be UTF-8).
pub fn mount_table() -> String {
    std::fs::read("/proc/self/mounts")
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

pub fn is_mounted(mnt: &Path) -> bool {
    let m = mount_table();
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    m.lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// The mount options /proc/mounts shows for `mnt` (panics when it is not mounted).
pub fn mount_options(mnt: &Path) -> Vec<String> {
    let m = mount_table();
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    let line = m
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(want.as_str()))
        .expect("mounted");
    line.split(' ')
        .nth(3)
        .expect("options field")
        .split(',')
        .map(String::from)
        .collect()
}

/// `setpriv` flags that take CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from root (and from
/// what it runs): file modes then bind it as they bind a file's owner.
#[allow(dead_code)]
pub const NO_DAC: &[&str] = &[
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
];

pub struct Mount {
    pub mnt: PathBuf,
    child: Option<Child>,
}

impl Mount {
    pub fn start(cipher: &Path, mnt: &Path, passfile: &Path, extra: &[&str]) -> Mount {
        Self::start_env(cipher, mnt, passfile, extra, &[])
    }

    /// Like [`Mount::start`], with extra environment variables for the daemon.
    pub fn start_env(
        cipher: &Path,
        mnt: &Path,
        passfile: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Mount {
        let mut cmd = kmsfs();
        cmd.envs(env.iter().copied());
        Self::spawn(cmd, cipher, mnt, passfile, extra)
    }

    /// Like [`Mount::start`], with a daemon that is root without CAP_DAC_OVERRIDE and
    /// CAP_DAC_READ_SEARCH (through `setpriv`): bound by the backing files' modes, as the daemon
    /// of a user's own mount is for the files it owns.
    #[allow(dead_code)]
    pub fn start_without_dac(cipher: &Path, mnt: &Path, passfile: &Path, extra: &[&str]) -> Mount {
        let mut cmd = Command::new("setpriv");
        cmd.env("KMSFS_INSECURE_FAST_KDF", "1")
            .args(NO_DAC)
            .arg("--")
            .arg(bin());
        Self::spawn(cmd, cipher, mnt, passfile, extra)
    }

    /// Runs `cmd` (kmsfs, or a wrapper ending in it) with `mount -f` and the arguments, and
    /// waits for the mount.
    fn spawn(
        mut cmd: Command,
        cipher: &Path,
        mnt: &Path,
        passfile: &Path,
        extra: &[&str],
    ) -> Mount {
        // As if started from a terminal: a test runner started in the background by a
        // non-interactive shell (or under nohup) ignores SIGINT (SIGHUP), which the daemon
        // would inherit and keep ignoring, as it means to (see cli_usage.rs).
        // SAFETY: signal(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            });
        }
        let child = cmd
            .arg("mount")
            .arg("-f")
            .arg("--passfile")
            .arg(passfile)
            .args(extra)
            .arg(cipher)
            .arg(mnt)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kmsfs mount");
        let mut m = Mount {
            mnt: mnt.to_path_buf(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mnt) {
            if let Some(c) = m.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("kmsfs mount exited early ({status}): {err}");
            }
            assert!(
                Instant::now() < deadline,
                "mount did not appear within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The daemon's process id.
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits up to `secs` for the daemon to exit by itself (nothing is unmounted here) and
    /// returns its stderr; kills it if it does not, and says so in what it returns.
    pub fn wait_exit(mut self, secs: u64) -> String {
        let mut err = String::new();
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(secs);
            while !matches!(c.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    err.push_str("(killed: did not exit)\n");
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(mut e) = c.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
        }
        err
    }

    /// Kills the daemon with SIGKILL (a crash) and detaches the dead mount.
    #[allow(dead_code)]
    pub fn kill9(self) {
        detach(&self.kill9_leaving_the_mount());
    }

    /// Kills the daemon with SIGKILL and leaves its dead mount (every call there fails with
    /// ENOTCONN) for the test to clear; returns the mount point. The caller must make sure it
    /// is unmounted even when it fails (an [`Unmounter`] guard).
    #[allow(dead_code)]
    pub fn kill9_leaving_the_mount(mut self) -> PathBuf {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.mnt.clone()
    }

    /// Unmounts cleanly and returns the daemon's stderr.
    pub fn unmount(self) -> String {
        // A clean unmount can be refused for a moment (a process still closing files): retry,
        // then detach lazily so no mount is ever left behind.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok || !is_mounted(&self.mnt) {
                break;
            }
            if Instant::now() > deadline {
                detach(&self.mnt);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_exit(10)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            detach(&self.mnt);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `f` on another thread and fails the test if it takes longer than `secs`. The caller's
/// guards (created outside `f`) still run their drop on failure.
pub fn with_timeout<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("test body timed out after {secs} s"),
    }
}

/// Runs a shell command, returning its output.
pub fn sh(cmd: &str) -> Output {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh")
}

/// Runs `cmd` with /bin/sh as `uid` (gid = uid, no supplementary groups).
#[allow(dead_code)]
pub fn as_uid(uid: u32, cmd: &str) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &uid.to_string(),
            "--clear-groups",
            "/bin/sh",
            "-c",
            cmd,
        ])
        .output()
        .expect("setpriv")
}

/// The names in a directory, sorted.
pub fn sorted_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Detaches (lazily unmounts) whatever is mounted at `mnt`; a daemon still serving it exits by
/// itself.
pub fn detach(mnt: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
}

/// Undoes a mount that no [`Mount`] owns when dropped, whatever made it (a daemonized
/// `kmsfs mount`, the mount helper, a dead mount left on purpose): detached if still mounted.
#[allow(dead_code)]
pub struct Unmounter(pub PathBuf);

impl Drop for Unmounter {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            detach(&self.0);
        }
    }
}

/// The process serving the volume in `cipher` (found by that directory on its command line).
#[allow(dead_code)]
pub fn server_pid(cipher: &Path) -> Option<i32> {
    let cipher = cipher.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).split('\0').any(|a| a == cipher))
                .unwrap_or(false)
        })
}

/// Replaces the default key's policy by one that lets every local user decrypt and create files
/// (through the `kmsfs key` and `kmsfs policy` commands, on the unmounted volume).
pub fn allow_everyone_to_use_the_default_key(v: &Volume) {
    let out = kmsfs()
        .arg("key")
        .arg("--passfile")
        .arg(&v.passfile)
        .arg(&v.cipher)
        .arg("list")
        .output()
        .expect("kmsfs key list");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "key list: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = text
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(3) == Some("yes"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no default key in:\n{text}"))
        .to_string();
    let policy = v.tmp.path().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"Version": "2012-10-17", "Statement": [
            {"Sid": "Owner", "Effect": "Allow", "Principal": {"Uid": "0"}, "Action": "kms:*", "Resource": "*"},
            {"Sid": "Everyone", "Effect": "Allow", "Principal": "*",
             "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*"}]}"#,
    )
    .expect("write policy.json");
    let out = kmsfs()
        .args(["policy", "put", "--volume"])
        .arg(&v.cipher)
        .arg("--passfile")
        .arg(&v.passfile)
        .arg(&key)
        .arg(&policy)
        .output()
        .expect("kmsfs policy put");
    assert!(
        out.status.success(),
        "policy put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
