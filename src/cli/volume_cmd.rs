//! `kmsfs init`, `kmsfs passwd`, `kmsfs info`, `kmsfs upgrade`.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use super::error::CliError;
use super::exit_code as code;
use super::{PassArgs, UnlockArgs};
use crate::crypto::KdfParams;
use crate::keymgr::{InitOptions, VolumeInfo, format_recovery_key};

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory to create the volume in (created if missing; must be empty).
    cipherdir: PathBuf,
    #[command(flatten)]
    pass: PassArgs,
    /// Store file names unencrypted (contents stay encrypted).
    #[arg(long)]
    plaintext_names: bool,
    /// Plaintext bytes per encrypted block (power of two, 512..=1048576).
    #[arg(long, default_value_t = crate::format::block::DEFAULT_BLOCK_SIZE)]
    block_size: u32,
    /// Argon2id memory in KiB (default 65536 = 64 MiB).
    #[arg(long, value_name = "KIB")]
    kdf_memory_kib: Option<u32>,
    /// Argon2id passes (default 3).
    #[arg(long, value_name = "N")]
    kdf_iterations: Option<u32>,
    /// Argon2id lanes (default 1).
    #[arg(long, value_name = "N")]
    kdf_parallelism: Option<u32>,
    /// Do not create a recovery key.
    #[arg(long)]
    no_recovery_key: bool,
    /// Store the zeros of a file extended past its end (truncate, a write beyond the end) as
    /// encrypted zeros instead of holes, so that kmsfs versions without sparse files can open
    /// the volume.
    #[arg(long)]
    no_sparse: bool,
    /// Write the recovery key to FILE (mode 0600) instead of printing it.
    #[arg(long, value_name = "FILE", conflicts_with = "no_recovery_key")]
    recovery_key_file: Option<PathBuf>,
}

/// `KMSFS_INSECURE_FAST_KDF=1` selects [`KdfParams::FAST_INSECURE`] (for tests only).
fn kdf_params(a: &InitArgs) -> KdfParams {
    let base = if std::env::var("KMSFS_INSECURE_FAST_KDF").is_ok_and(|v| v == "1") {
        KdfParams::FAST_INSECURE
    } else {
        KdfParams::DEFAULT
    };
    KdfParams {
        memory_kib: a.kdf_memory_kib.unwrap_or(base.memory_kib),
        iterations: a.kdf_iterations.unwrap_or(base.iterations),
        parallelism: a.kdf_parallelism.unwrap_or(base.parallelism),
    }
}

pub fn init(a: &InitArgs) -> Result<(), CliError> {
    let opts = InitOptions {
        kdf: kdf_params(a),
        plaintext_names: a.plaintext_names,
        block_size: a.block_size,
        recovery_key: !a.no_recovery_key,
        sparse: !a.no_sparse,
    };
    // Check the directory before asking for a passphrase.
    if a.cipherdir.is_dir()
        && std::fs::read_dir(&a.cipherdir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        return Err(crate::keymgr::VolumeError::NotEmpty(a.cipherdir.clone()).into());
    }
    // Open the recovery-key file before creating anything, so the key is never lost.
    let rk_file = a
        .recovery_key_file
        .as_deref()
        .map(create_recovery_key_file)
        .transpose()?;
    let made = a
        .pass
        .source()
        .new_passphrase("New passphrase")
        .and_then(|pass| Ok(crate::keymgr::init(&a.cipherdir, &pass, &opts)?));
    let rk = match made {
        Ok(rk) => rk,
        Err(e) => {
            // Nothing was made: an empty file left behind would only block the retry
            // ("File exists"; until 2026-12-06).
            if let (Some(_), Some(f)) = (&rk_file, &a.recovery_key_file) {
                let _ = std::fs::remove_file(f);
            }
            return Err(e);
        }
    };
    let created = format!("Created kmsfs volume in {}\n", a.cipherdir.display());
    let Some(rk) = rk else {
        return show(created.as_bytes()).map_err(|e| {
            CliError::new(
                code::ERROR,
                format!("the volume was created, but: stdout: {e}"),
            )
        });
    };
    match give_recovery_key(
        &rk,
        rk_file,
        a.recovery_key_file.as_deref(),
        "Your recovery key",
        &created,
    ) {
        Ok(None) => Ok(()),
        Ok(Some(e)) => Err(e),
        Err(e) => Err(e.hint(
            "the passphrase still opens the volume; for a recovery key, remove the new volume \
             and run `kmsfs init` again (or with --recovery-key-file)",
        )),
    }
}

/// Writes `text` to stdout, flushed, reporting a failure (a closed pipe, a full disk) instead
/// of panicking as `println!` does.
fn show(text: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text).and_then(|()| out.flush())
}

/// Writes the recovery key `rk` to `file` (opened from `path`), or shows it once (after
/// `before`) when there is no file or writing it failed. A recovery key exists only in this
/// process until then: when stdout cannot take it (`kmsfs init … | head -1`, a closed pipe:
/// until 2026-12-06 a panic, exit 101, and the key was gone), it goes to stderr, then to the
/// terminal. `Ok(None)`: shown as asked; `Ok(Some(e))`: shown elsewhere, and the command should
/// fail with `e` so that a script notices; `Err`: shown nowhere.
fn give_recovery_key(
    rk: &crate::crypto::Key256,
    file: Option<std::fs::File>,
    path: Option<&Path>,
    what: &str,
    before: &str,
) -> Result<Option<CliError>, CliError> {
    let shown = zeroize::Zeroizing::new(format_recovery_key(rk));
    if let (Some(mut file), Some(f)) = (file, path) {
        match writeln!(file, "{}", shown.as_str()).and_then(|()| file.sync_all()) {
            Ok(()) => {
                let text = format!(
                    "{before}{what} written to {}. Keep it offline: it unlocks the volume \
                     without the passphrase.\n",
                    f.display()
                );
                // The key is safe in the file: a closed stdout loses only this message.
                return Ok(show(text.as_bytes()).err().map(|e| {
                    CliError::new(
                        code::ERROR,
                        format!("the key is in the file, but: stdout: {e}"),
                    )
                }));
            }
            // Never lose the key: show it instead.
            Err(e) => eprintln!(
                "kmsfs: could not write the recovery key to {}: {e}",
                f.display()
            ),
        }
    }
    let text = zeroize::Zeroizing::new(format!(
        "{before}\n{what} (shown only this once; keep it offline, it unlocks the volume without \
         the passphrase):\n\n    {}\n\n",
        shown.as_str()
    ));
    // Shown only once: not into /dev/null (`kmsfs passwd --new-recovery-key >/dev/null` would
    // revoke the old recovery key and lose the new one; found by a review).
    let shown = if stdout_is_dev_null() {
        Err(std::io::Error::other("stdout is /dev/null"))
    } else {
        show(text.as_bytes())
    };
    let Err(e) = shown else {
        return Ok(None);
    };
    let fallback = |mut w: Box<dyn Write>| w.write_all(text.as_bytes()).and_then(|()| w.flush());
    let shown_on = if fallback(Box::new(std::io::stderr().lock())).is_ok() {
        "stderr"
    } else if std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/tty")
        .map(|t| fallback(Box::new(t)))
        .is_ok_and(|r| r.is_ok())
    {
        "the terminal"
    } else {
        return Err(CliError::new(
            code::ERROR,
            format!(
                "the recovery key could not be shown (stdout: {e}; stderr and the terminal \
                 failed too)"
            ),
        ));
    };
    Ok(Some(CliError::new(
        code::ERROR,
        format!(
            "the recovery key could not be written to stdout ({e}): it was shown on {shown_on}"
        ),
    )))
}

/// Whether stdout is the null device.
fn stdout_is_dev_null() -> bool {
    let (Ok(out), Ok(null)) = (
        rustix::fs::fstat(std::io::stdout()),
        rustix::fs::stat("/dev/null"),
    ) else {
        return false;
    };
    rustix::fs::FileType::from_raw_mode(out.st_mode) == rustix::fs::FileType::CharacterDevice
        && out.st_rdev == null.st_rdev
}

/// Creates the file a recovery key goes to (mode 0600; refused if it exists).
fn create_recovery_key_file(f: &Path) -> Result<std::fs::File, CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(f)
        .map_err(|e| {
            CliError::new(
                code::ERROR,
                format!("cannot create recovery key file {}: {e}", f.display()),
            )
        })
}

#[derive(Args, Debug)]
pub struct PasswdArgs {
    cipherdir: PathBuf,
    #[command(flatten)]
    old: UnlockArgs,
    /// Read the new passphrase from the first line of FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "new_extpass")]
    new_passfile: Option<PathBuf>,
    /// Run CMD and use the first line of its output as the new passphrase.
    #[arg(long, value_name = "CMD")]
    new_extpass: Option<String>,
    /// Also issue a new recovery key (printed once; the old one stops working), so that the key
    /// store gets a new store key even when unlocked with the passphrase.
    #[arg(long, conflicts_with = "new_recovery_key_file")]
    new_recovery_key: bool,
    /// Like --new-recovery-key, but write the new recovery key to FILE (mode 0600).
    #[arg(long, value_name = "FILE")]
    new_recovery_key_file: Option<PathBuf>,
}

pub fn passwd(a: &PasswdArgs) -> Result<(), CliError> {
    crate::keymgr::probe(&a.cipherdir)?;
    // A running mount would write its old unlock slots back: refuse while mounted, before the
    // prompts; the lock is taken after them (a prompt must not hold the volume).
    unmounted(&a.cipherdir, "changing its passphrase")?;
    let old = a.old.source().get()?;
    let new = super::SecretSource {
        passfile: a.new_passfile.clone(),
        extpass: a.new_extpass.clone(),
    }
    .new_passphrase("New passphrase")?;
    let _lock = lock_unmounted(&a.cipherdir, "changing its passphrase")?;
    let rk_file = a
        .new_recovery_key_file
        .as_deref()
        .map(create_recovery_key_file)
        .transpose()?;
    let rk = (a.new_recovery_key || rk_file.is_some()).then(crate::crypto::Key256::generate);
    let pending = crate::keymgr::prepare_passwd(&a.cipherdir, &old, &new, None, rk.as_ref())
        .inspect_err(|_| {
            // Nothing was written: the empty key file made above would only be in the way.
            if let Some(f) = &a.new_recovery_key_file {
                let _ = std::fs::remove_file(f);
            }
        })?;
    // Handed out before the key store is written: a stop after the first of its two writes
    // leaves the new recovery key in force in `keystore.bak`, so it must not be lost (a key
    // shown nowhere: nothing is written).
    let mut shown_elsewhere = None;
    if let Some(rk) = &rk {
        shown_elsewhere = give_recovery_key(
            rk,
            rk_file,
            a.new_recovery_key_file.as_deref(),
            "New recovery key (valid once the passphrase change succeeds)",
            "",
        )
        .map_err(|e| e.hint("nothing was changed"))?;
    }
    let done = pending.commit().map_err(|e| {
        let e = CliError::from(e);
        if rk.is_some() {
            e.hint(
                "the passphrase change did not complete; keep the old recovery key as well as \
                 the new one until a change succeeds",
            )
        } else {
            e
        }
    })?;
    if !done.new_store_key {
        eprintln!("{KEPT_STORE_KEY_NOTE}");
    }
    if let Some(e) = shown_elsewhere {
        // The change is made: a script must not go on with the old passphrase.
        return Err(CliError::new(
            e.code,
            format!(
                "the passphrase was changed for {}, but {}",
                a.cipherdir.display(),
                e.message
            ),
        ));
    }
    show(format!("Passphrase changed for {}\n", a.cipherdir.display()).as_bytes()).map_err(|e| {
        CliError::new(
            code::ERROR,
            format!("the passphrase was changed, but: stdout: {e}"),
        )
    })
}

/// Printed when `passwd` had to keep the store key (see `keymgr::change_passphrase`).
const KEPT_STORE_KEY_NOTE: &str = "kmsfs: note: the volume has a recovery key, which was not \
given, so its store key was kept: copies of the key store made before this change (backups of \
the cipher directory, synced versions, `kmsfs keystore export` files) still open with the old \
passphrase, and hold the store key that opens the key store from now on too. To cut them off, \
run `kmsfs passwd` again unlocking with --recovery-key, or with --new-recovery-key \
(or --new-recovery-key-file FILE) to issue a new recovery key.";

#[derive(Args, Debug)]
pub struct InfoArgs {
    cipherdir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn info(a: &InfoArgs) -> Result<(), CliError> {
    if let Some(cipherdir) = super::mount_cmd::volume_mounted_at(&a.cipherdir) {
        return Err(CliError::new(
            code::NOT_A_VOLUME,
            format!(
                "{} is the mount point of the kmsfs volume {}; info takes the cipher directory",
                a.cipherdir.display(),
                cipherdir.display()
            ),
        )
        .hint(format!(
            "kmsfs info {} (or cat {}/.kmsfs/status)",
            cipherdir.display(),
            a.cipherdir.display()
        )));
    }
    let mut i = VolumeInfo::read(&a.cipherdir)?;
    // The flag of a mount running now is no news.
    let mounted = i.unclean_session
        && super::mount_cmd::is_mounted(&std::fs::canonicalize(&i.path).unwrap_or(i.path.clone()));
    i.unclean_session &= !mounted;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i).unwrap_or_default());
        return Ok(());
    }
    println!("path:            {}", i.path.display());
    println!("format version:  {}", i.format_version);
    println!("volume id:       {}", i.volume_id);
    println!("block size:      {}", i.block_size);
    println!(
        "KDF:             {} memory={} KiB iterations={} parallelism={}",
        i.kdf_algorithm, i.kdf_memory_kib, i.kdf_iterations, i.kdf_parallelism
    );
    println!("features:        {}", i.features.join(", "));
    println!("created:         {} by {}", i.created, i.creator);
    println!("keys:            {}", i.key_count);
    println!("unlock slots:    {}", i.unlock_slots.join(", "));
    println!("key store gen.:  {}", i.key_store_generation);
    if i.acls {
        println!("POSIX ACLs:      held (mounts enforce them unless -o noacl)");
    }
    if i.unclean_session {
        println!(
            "last session:    did not end cleanly (the next mount first recovers the files \
             with an interrupted write; kmsfs fsck --repair does it now)"
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// The volume's cipher directory (unmounted).
    cipherdir: PathBuf,
    #[command(flatten)]
    unlock: UnlockArgs,
    /// Add only this feature (repeatable); default: every feature an existing volume can take
    /// (sparse-files).
    #[arg(long, value_name = "NAME")]
    feature: Vec<String>,
}

pub fn upgrade(a: &UpgradeArgs) -> Result<(), CliError> {
    crate::keymgr::probe(&a.cipherdir)?;
    // A running mount works with the features it was mounted with. Refused before the prompt
    // when mounted; the lock is taken after it (a prompt must not hold the volume).
    unmounted(&a.cipherdir, "upgrading it")?;
    let how = a.unlock.source().get()?;
    let _lock = lock_unmounted(&a.cipherdir, "upgrading it")?;
    let added = crate::keymgr::upgrade::upgrade(&a.cipherdir, &how, &a.feature)?;
    if added.is_empty() {
        println!(
            "{}: nothing to do (the volume has every feature asked for)",
            a.cipherdir.display()
        );
        return Ok(());
    }
    for f in &added {
        println!("{}: added feature {f}", a.cipherdir.display());
        if f == crate::format::config::FEATURE_SPARSE_FILES {
            println!(
                "  files created from now on keep holes (files made before store zeros as \
                 before; `kmsfs rekey` rewrites them with holes); kmsfs before 2026-12-05 \
                 cannot open this volume any more"
            );
        }
    }
    Ok(())
}

/// Refuses (exit 19) when the volume is mounted, naming what needs it unmounted.
fn unmounted(cipherdir: &std::path::Path, what: &str) -> Result<(), CliError> {
    let root = std::fs::canonicalize(cipherdir).unwrap_or_else(|_| cipherdir.to_path_buf());
    super::mount_cmd::refuse_if_mounted(&root)
        .map_err(|e| e.hint(format!("unmount the volume before {what}")))
}

/// The volume lock for a command that needs the volume unmounted; when it is mounted, the
/// error says to unmount it before `what`.
fn lock_unmounted(
    cipherdir: &std::path::Path,
    what: &str,
) -> Result<std::os::fd::OwnedFd, CliError> {
    super::mount_cmd::lock_volume(&crate::keymgr::VolumePaths::new(cipherdir)).map_err(|e| {
        // "Unmount it" only when a mount holds the lock (another command may).
        if e.code == code::ALREADY_MOUNTED && unmounted(cipherdir, what).is_err() {
            e.hint(format!("unmount the volume before {what}"))
        } else {
            e
        }
    })
}
