//! The `kmsfs` command line: argument parsing, prompts, exit codes. Each subcommand lives in its
//! own file; they call into keymgr/vfs/fuse and turn errors into [`CliError`]s.

mod audit_cmd;
mod error;
pub mod exit_code;
mod fsck_cmd;
mod key_cmd;
mod keystore_cmd;
mod logging;
mod mount_cmd;
pub mod mount_helper;
mod policy_cmd;
mod progress;
mod rekey_cmd;
mod ro_control;
mod secrets;
mod target;
mod volume_cmd;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

pub use error::CliError;
use secrets::{SecretSource, UnlockSource};

#[derive(Parser, Debug)]
#[command(
    name = "kmsfs",
    version,
    about = "Encrypted FUSE file system with a built-in, AWS-KMS-style key manager"
)]
#[command(
    after_help = "Exit codes: 0 ok, 1 error, 2 usage, 10 not a volume, 11 volume needs newer kmsfs, 12 wrong \
passphrase, 13 damaged key store/config, 14 bad mount point, 15 init dir not empty, 16 passphrase input, 17 mount \
failed, 18 not mounted, 19 already mounted, 20 key-manager request refused, 21 no such key, alias, rule or grant, 22 denied by key policy, 23 integrity check failed."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone, Default)]
pub struct PassArgs {
    /// Read the passphrase from the first line of FILE.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "extpass",
        global = true,
        display_order = 900
    )]
    passfile: Option<PathBuf>,
    /// Run CMD (with /bin/sh -c) and use the first line of its output as the passphrase.
    #[arg(long, value_name = "CMD", global = true, display_order = 900)]
    extpass: Option<String>,
}

impl PassArgs {
    fn source(&self) -> SecretSource {
        SecretSource {
            passfile: self.passfile.clone(),
            extpass: self.extpass.clone(),
        }
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct UnlockArgs {
    #[command(flatten)]
    pass: PassArgs,
    /// Unlock with the recovery key instead of the passphrase (asked at the terminal).
    #[arg(long, conflicts_with_all = ["passfile", "extpass"], global = true, display_order = 900)]
    recovery_key: bool,
    /// Unlock with the recovery key read from FILE.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["passfile", "extpass", "recovery_key"], global = true, display_order = 900)]
    recovery_key_file: Option<PathBuf>,
}

impl UnlockArgs {
    fn source(&self) -> UnlockSource {
        UnlockSource {
            secret: self.pass.source(),
            recovery_key: self.recovery_key,
            recovery_key_file: self.recovery_key_file.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new volume in an empty (or new) directory.
    Init(volume_cmd::InitArgs),
    /// Change the passphrase (needs the old passphrase or the recovery key). Files are not touched.
    Passwd(volume_cmd::PasswdArgs),
    /// Show a volume's format, id, KDF parameters and key count (no passphrase needed).
    Info(volume_cmd::InfoArgs),
    /// Give an unmounted volume the features it can take without rewriting its files
    /// (sparse-files). Older kmsfs versions cannot open it afterwards.
    Upgrade(volume_cmd::UpgradeArgs),
    /// Mount a volume. Returns once the mount is ready (use -f to stay in the foreground).
    Mount(mount_cmd::MountArgs),
    /// Unmount a mounted volume.
    #[command(alias = "umount")]
    Unmount(mount_cmd::UnmountArgs),
    /// Administer KMS keys: create, list, describe, aliases, tags, enable/disable, deletion,
    /// rotation, import, retirement of versions.
    Key(key_cmd::KeyArgs),
    /// Key rules: which key new files under a path prefix use.
    Rules(key_cmd::RulesArgs),
    /// Re-wrap files' data keys under the newest version of their key (header-only).
    Rewrap(key_cmd::RewrapArgs),
    /// Re-encrypt files of a mounted volume with fresh data keys (after a DEK leak).
    Rekey(rekey_cmd::RekeyArgs),
    /// Key policies: get, put (validated, lockout-checked), validate, simulate a decision.
    Policy(policy_cmd::PolicyArgs),
    /// Grants: temporary, narrow permissions on a key.
    Grant(policy_cmd::GrantArgs),
    /// The audit log: show, tail, verify, export.
    Audit(audit_cmd::AuditArgs),
    /// Encrypted key-store backups: export, restore.
    Keystore(keystore_cmd::KeystoreArgs),
    /// Check an unmounted volume: key store, names, headers, every block, symlinks, xattrs.
    /// Exit 23 if problems remain.
    Fsck(fsck_cmd::FsckArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write man pages (kmsfs.1 and one per subcommand) into DIR.
    Man {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// Runs the command line; returns the process exit code.
///
/// SIGPIPE stays ignored (Rust's default; the mount daemon must not die of a reader that went
/// away), so output to a closed pipe (`kmsfs audit VOL show | head -1`) fails with EPIPE, which
/// `println!` turns into a panic: until 2026-12-06 a panic message and exit 101. Such a panic
/// now unwinds quietly (destructors run: an administration session still records its closing
/// audit checkpoint), and the process then ends by SIGPIPE as other tools do in a pipeline.
pub fn main() -> i32 {
    quiet_broken_pipe_panics();
    match std::panic::catch_unwind(run) {
        Ok(code) => code,
        Err(_) if BROKEN_PIPE.load(std::sync::atomic::Ordering::Relaxed) => die_of_sigpipe(),
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Set when a panic was a write to a closed stdout or stderr.
static BROKEN_PIPE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A panic hook that keeps quiet about (and records) the panics of `print!`/`eprint!` on a
/// closed pipe, and leaves every other panic to the default hook.
fn quiet_broken_pipe_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        // std's wording: "failed printing to stdout: Broken pipe (os error 32)".
        if msg.starts_with("failed printing to std") && msg.contains("(os error 32)") {
            BROKEN_PIPE.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        default(info);
    }));
}

/// Ends the process by SIGPIPE (exit status 141 in a shell), as a tool that never ignored it.
fn die_of_sigpipe() -> i32 {
    // SAFETY: restoring the default disposition and raising the signal in this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    128 + libc::SIGPIPE
}

fn run() -> i32 {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Called by mount(8) as /sbin/mount.fuse.kmsfs: translate its arguments.
    if args.first().is_some_and(mount_helper::is_helper) {
        match mount_helper::translate(&args) {
            Ok(Some(a)) => args = a,
            Ok(None) => return exit_code::OK,
            Err(e) => return report(e),
        }
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit_code::USAGE
            } else {
                exit_code::OK
            };
        }
    };
    let r = match cli.command {
        Command::Init(a) => volume_cmd::init(&a),
        Command::Passwd(a) => volume_cmd::passwd(&a),
        Command::Info(a) => volume_cmd::info(&a),
        Command::Upgrade(a) => volume_cmd::upgrade(&a),
        Command::Mount(a) => mount_cmd::mount(&a),
        Command::Unmount(a) => mount_cmd::unmount(&a),
        Command::Key(a) => key_cmd::key(&a),
        Command::Rules(a) => key_cmd::rules(&a),
        Command::Rewrap(a) => key_cmd::rewrap(&a),
        Command::Rekey(a) => rekey_cmd::rekey(&a),
        Command::Policy(a) => policy_cmd::policy(&a),
        Command::Grant(a) => policy_cmd::grant(&a),
        Command::Audit(a) => audit_cmd::audit(&a),
        Command::Fsck(a) => fsck_cmd::fsck(&a),
        Command::Keystore(a) => keystore_cmd::keystore(&a),
        Command::Completions { shell } => completions(shell),
        Command::Man { dir } => write_man_pages(&dir),
    };
    match r {
        Ok(()) => exit_code::OK,
        Err(e) => report(e),
    }
}

/// Warns (stderr) when the key store was opened from `keystore.bak`: the primary did not open
/// (damaged, or sealed under another passphrase), and what is used is the generation before the
/// last change. Every command that unlocks a volume says it, not only `mount`.
pub(crate) fn warn_if_backup(u: &crate::keymgr::Unlocked) {
    if let Some(why) = &u.used_backup {
        eprintln!(
            "kmsfs: warning: the primary key store did not open ({why}); opened the backup \
             generation {} (the one before the last change)",
            u.generation()
        );
    }
}

/// The completion script, built in memory and written with its errors reported
/// (`clap_complete::generate` panics on a write error).
fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    use std::io::Write;
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kmsfs", &mut buf);
    let mut out = std::io::stdout().lock();
    match out.write_all(&buf).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            BROKEN_PIPE.store(true, std::sync::atomic::Ordering::Relaxed);
            std::process::exit(die_of_sigpipe());
        }
        Err(e) => Err(CliError::new(exit_code::ERROR, format!("stdout: {e}"))),
    }
}

fn report(e: CliError) -> i32 {
    eprintln!("kmsfs: {}", e.message);
    if let Some(h) = e.hint {
        eprintln!("kmsfs: hint: {h}");
    }
    e.code
}

/// `kmsfs.1` and `kmsfs-SUBCOMMAND.1` (nested ones too, e.g. `kmsfs-key-create.1`).
fn write_man_pages(dir: &std::path::Path) -> Result<(), CliError> {
    fn walk(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> std::io::Result<()> {
        let cmd = cmd.clone().name(name.to_string());
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub, &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)
        .and_then(|()| walk(&Cli::command(), "kmsfs", dir))
        .map_err(|e| CliError::new(exit_code::ERROR, format!("{}: {e}", dir.display())))
}
