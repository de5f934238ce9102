//! `kmsfs key …`, `kmsfs rules …`, `kmsfs rewrap`: key-manager administration on a cipher
//! directory. The volume must not be mounted: its running daemon owns the key store, and
//! administration of a mounted volume (a control directory) is not built yet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::UnlockArgs;
use super::error::CliError;
use super::exit_code as code;
use crate::keymgr::audit::{AuditKeys, AuditLog, AuditRecord, Source};
use crate::keymgr::lifecycle::{self, DELETION_DAYS_DEFAULT};
use crate::keymgr::rewrap::{self, RewrapOptions};
use crate::keymgr::{KeyManager, VolumePaths};
use crate::names::Names;

#[derive(Args, Debug)]
pub struct KeyArgs {
    /// The volume's cipher directory.
    cipherdir: PathBuf,
    #[command(flatten)]
    unlock: UnlockArgs,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    op: KeyOp,
}

#[derive(Subcommand, Debug)]
enum KeyOp {
    /// Create a key (CreateKey).
    Create {
        #[arg(long, default_value = "")]
        description: String,
        /// Tag as KEY=VALUE (repeatable).
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Also create this alias (alias/NAME).
        #[arg(long)]
        alias: Option<String>,
    },
    /// List keys (ListKeys).
    List,
    /// Show a key's metadata (DescribeKey).
    Describe { key: String },
    /// Change a key's description.
    UpdateDescription { key: String, description: String },
    /// Create, repoint or delete an alias.
    Alias {
        #[command(subcommand)]
        op: AliasOp,
    },
    /// Add or change tags (KEY=VALUE …).
    Tag { key: String, tags: Vec<String> },
    /// Remove tags by name.
    Untag { key: String, names: Vec<String> },
    /// Enable a disabled key.
    Enable { key: String },
    /// Disable a key: its files cannot be opened and no file is created under it.
    Disable { key: String },
    /// Schedule destruction of the key after a waiting period (7-30 days, default 30).
    ScheduleDeletion {
        key: String,
        #[arg(long, default_value_t = DELETION_DAYS_DEFAULT)]
        days: u32,
    },
    /// Cancel a scheduled deletion (the key becomes Disabled).
    CancelDeletion { key: String },
    /// Add a new key version now (RotateKeyOnDemand). New files use it; old files still open.
    Rotate { key: String },
    /// Show or change automatic rotation.
    Rotation {
        key: String,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
        /// Rotation period in days (90-2560).
        #[arg(long)]
        period_days: Option<u32>,
    },
    /// Import external 256-bit key material as a new version (BYOK). FILE holds 32 raw bytes or
    /// 64 hex digits.
    Import {
        key: String,
        #[arg(long, value_name = "FILE")]
        material_file: PathBuf,
    },
    /// Make a key the volume's default key (for files no rule matches).
    SetDefault { key: String },
    /// Retire versions below N: their files fail to open (reversible: set it lower again).
    MinDecryptionVersion { key: String, version: u32 },
    /// Destroy the material of versions below N (refused while files still use them unless
    /// --force). Needs the minimum decryption version raised first.
    Trim {
        key: String,
        #[arg(long)]
        below: u32,
        #[arg(long)]
        force: bool,
    },
    /// Files per key version (to see what a trim would orphan).
    Usage,
}

#[derive(Subcommand, Debug)]
enum AliasOp {
    Create { alias: String, key: String },
    Update { alias: String, key: String },
    Delete { alias: String },
}

#[derive(Args, Debug)]
pub struct RulesArgs {
    cipherdir: PathBuf,
    #[command(flatten)]
    unlock: UnlockArgs,
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    op: RulesOp,
}

#[derive(Subcommand, Debug)]
enum RulesOp {
    /// Show the rules.
    List,
    /// New files under PREFIX (an absolute path in the mount) use KEY.
    Set { prefix: String, key: String },
    /// Remove the rule for PREFIX.
    Remove { prefix: String },
}

#[derive(Args, Debug)]
pub struct RewrapArgs {
    cipherdir: PathBuf,
    #[command(flatten)]
    unlock: UnlockArgs,
    /// Only files currently under this key.
    #[arg(long)]
    key: Option<String>,
    /// Move each file to the key its path's rule names.
    #[arg(long)]
    rules: bool,
    #[arg(long)]
    json: bool,
}

/// An unlocked, unmounted volume for administration.
pub(super) struct Admin {
    pub(super) km: KeyManager,
    root: PathBuf,
    plaintext_names: bool,
    /// Every administration command is audited (source "kms"); no log, no administration.
    audit: AuditLog,
    _lock: std::os::fd::OwnedFd,
}

impl Admin {
    /// Records a command: `event` (e.g. KeyDisable), its arguments and its outcome.
    pub(super) fn record<T>(
        &self,
        event: &str,
        detail: String,
        outcome: &Result<T, CliError>,
    ) -> Result<(), CliError> {
        let mut r = AuditRecord::new(event, Source::Kms);
        r.actor = crate::vfs::identity::current().into();
        r.detail = Some(match outcome {
            Ok(_) => detail,
            Err(e) => format!("{detail}: refused: {}", e.message),
        });
        if let Err(e) = outcome {
            r.errno = e.code;
        }
        self.audit
            .append(r)
            .map(|_| ())
            .map_err(|e| CliError::new(code::ERROR, format!("audit log: {e}")))
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        let _ = self.audit.close();
    }
}

/// The event name of a subcommand: its variant name after `prefix` (`KeyDisable`).
pub(super) fn event_name(prefix: &str, op: &impl std::fmt::Debug) -> (String, String) {
    let d = format!("{op:?}");
    let variant: String = d.chars().take_while(|c| c.is_alphanumeric()).collect();
    (format!("{prefix}{variant}"), d)
}

pub(super) fn open(cipherdir: &Path, unlock: &UnlockArgs) -> Result<Admin, CliError> {
    let root = std::fs::canonicalize(cipherdir)
        .map_err(|_| crate::keymgr::VolumeError::NotAVolume(cipherdir.to_path_buf()))?;
    crate::keymgr::probe(&root)?;
    let lock = super::mount_cmd::lock_volume(&VolumePaths::new(&root)).map_err(|e| {
        if e.code == code::ALREADY_MOUNTED {
            CliError::new(
                code::ALREADY_MOUNTED,
                format!(
                    "{} is mounted; its key store belongs to the running mount",
                    root.display()
                ),
            )
            .hint("unmount it first (a mounted volume cannot be administered yet)")
        } else {
            e
        }
    })?;
    let u = crate::keymgr::unlock(&root, &unlock.source().get()?)?;
    let plaintext_names = u
        .config
        .has_feature(crate::format::config::FEATURE_PLAINTEXT_NAMES);
    let audit = AuditLog::open(
        &u.paths.control_dir(),
        AuditKeys::new(&u.store.volume_secret),
    )
    .map_err(|e| {
        CliError::new(code::ERROR, format!("cannot open the audit log: {e}"))
            .hint("administration is refused without a writable audit log")
    })?;
    Ok(Admin {
        km: KeyManager::new(u),
        root,
        plaintext_names,
        audit,
        _lock: lock,
    })
}

pub(super) fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn time(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
        .to_string()
}

fn print_meta(m: &crate::keymgr::KeyMetadata) {
    println!("key id:          {}", m.key_id);
    println!("aliases:         {}", m.aliases.join(", "));
    println!("description:     {}", m.description);
    println!(
        "state:           {:?}{}",
        m.state,
        m.deletion_date
            .map(|d| format!(" (deletion at {})", time(d)))
            .unwrap_or_default()
    );
    println!("default key:     {}", m.is_default);
    println!("created:         {}", time(m.creation_date));
    println!("current version: {}", m.current_version);
    println!("min decryption:  {}", m.min_decryption_version.max(1));
    println!(
        "rotation:        {} every {} days, last {}{}",
        if m.rotation.enabled {
            "enabled"
        } else {
            "disabled"
        },
        m.rotation.period_days,
        time(m.rotation.last_rotation),
        m.rotation
            .next_rotation
            .map(|n| format!(", next {}", time(n)))
            .unwrap_or_default()
    );
    for v in &m.versions {
        let state = match (v.available, v.destroyed) {
            (_, Some(d)) => format!("destroyed {}", time(d)),
            (true, None) => "available".into(),
            (false, None) => "retired".into(),
        };
        println!(
            "  version {:>3}  {}  {:?}  {}",
            v.version,
            time(v.created),
            v.origin,
            state
        );
    }
    for (k, v) in &m.tags {
        println!("  tag {k}={v}");
    }
}

fn parse_tags(tags: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    tags.iter()
        .map(|t| {
            t.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    CliError::new(code::INVALID_REQUEST, format!("tag {t:?} is not KEY=VALUE"))
                })
        })
        .collect()
}

fn read_material(p: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, CliError> {
    let raw = zeroize::Zeroizing::new(
        std::fs::read(p)
            .map_err(|e| CliError::new(code::ERROR, format!("{}: {e}", p.display())))?,
    );
    if raw.len() == 32 {
        return Ok(raw);
    }
    let text = String::from_utf8_lossy(&raw);
    let t = text.trim();
    let mut out = zeroize::Zeroizing::new(vec![0u8; 32]);
    if t.len() == 64 && crate::crypto::hex::decode_into(t, &mut out).is_some() {
        return Ok(out);
    }
    Err(CliError::new(
        code::INVALID_REQUEST,
        format!(
            "{}: key material must be 32 raw bytes or 64 hex digits (got {} bytes)",
            p.display(),
            raw.len()
        ),
    ))
}

impl Admin {
    /// Runs a command and records it as `prefix` + the subcommand's name.
    pub(super) fn audited<O: std::fmt::Debug>(
        &self,
        prefix: &str,
        op: &O,
        f: impl FnOnce(&Admin) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let r = f(self);
        let (event, detail) = event_name(prefix, op);
        self.record(&event, detail, &r)?;
        r
    }
}

pub fn key(a: &KeyArgs) -> Result<(), CliError> {
    open(&a.cipherdir, &a.unlock)?.audited("Key", &a.op, |ad| key_op(ad, a))
}

fn key_op(ad: &Admin, a: &KeyArgs) -> Result<(), CliError> {
    let km = &ad.km;
    let resolve = |r: &str| km.query(|s| lifecycle::resolve(s, r));
    let describe_out = |id| -> Result<(), CliError> {
        let m = km.query(|s| lifecycle::describe(s, &id))?;
        if a.json {
            print_json(&m)
        } else {
            print_meta(&m)
        }
        Ok(())
    };
    match &a.op {
        KeyOp::Create {
            description,
            tags,
            alias,
        } => {
            let tags = parse_tags(tags)?;
            let id = km.admin(|s, now| {
                let id = lifecycle::create(s, description, tags, now)?;
                if let Some(al) = alias {
                    lifecycle::create_alias(s, al, &id)?;
                }
                Ok(id)
            })?;
            describe_out(id)?;
        }
        KeyOp::List => {
            let keys = km.query(lifecycle::list);
            if a.json {
                print_json(&keys);
            } else {
                println!(
                    "{:<36}  {:<15}  {:>3}  {:<7}  ALIASES / DESCRIPTION",
                    "KEY ID", "STATE", "VER", "DEFAULT"
                );
                for k in keys {
                    println!(
                        "{:<36}  {:<15}  {:>3}  {:<7}  {} {}",
                        k.key_id.to_string(),
                        format!("{:?}", k.state),
                        k.current_version,
                        if k.is_default { "yes" } else { "" },
                        k.aliases.join(","),
                        k.description
                    );
                }
            }
        }
        KeyOp::Describe { key } => describe_out(resolve(key)?)?,
        KeyOp::UpdateDescription { key, description } => {
            let id = resolve(key)?;
            km.admin(|s, _| lifecycle::update_description(s, &id, description))?;
        }
        KeyOp::Alias { op } => match op {
            AliasOp::Create { alias, key } => {
                let id = resolve(key)?;
                km.admin(|s, _| lifecycle::create_alias(s, alias, &id))?;
            }
            AliasOp::Update { alias, key } => {
                let id = resolve(key)?;
                km.admin(|s, _| lifecycle::update_alias(s, alias, &id))?;
            }
            AliasOp::Delete { alias } => km.admin(|s, _| lifecycle::delete_alias(s, alias))?,
        },
        KeyOp::Tag { key, tags } => {
            let id = resolve(key)?;
            let tags = parse_tags(tags)?;
            km.admin(|s, _| lifecycle::tag(s, &id, tags))?;
        }
        KeyOp::Untag { key, names } => {
            let id = resolve(key)?;
            km.admin(|s, _| lifecycle::untag(s, &id, names))?;
        }
        KeyOp::Enable { key } => {
            let id = resolve(key)?;
            km.admin(|s, _| lifecycle::enable(s, &id))?;
        }
        KeyOp::Disable { key } => {
            let id = resolve(key)?;
            km.admin(|s, _| lifecycle::disable(s, &id))?;
        }
        KeyOp::ScheduleDeletion { key, days } => {
            let id = resolve(key)?;
            let when = km.admin(|s, now| lifecycle::schedule_deletion(s, &id, *days, now))?;
            if a.json {
                print_json(&serde_json::json!({"key_id": id, "deletion_date": when}));
            } else {
                println!(
                    "key {id} will be destroyed at {} (cancel with kmsfs key cancel-deletion)",
                    time(when)
                );
            }
        }
        KeyOp::CancelDeletion { key } => {
            let id = resolve(key)?;
            km.admin(|s, _| lifecycle::cancel_deletion(s, &id))?;
        }
        KeyOp::Rotate { key } => {
            let id = resolve(key)?;
            let v = km.admin(|s, now| lifecycle::rotate(s, &id, now))?;
            if a.json {
                print_json(&serde_json::json!({"key_id": id, "version": v}))
            } else {
                println!("key {id} is now at version {v}")
            }
        }
        KeyOp::Rotation {
            key,
            enable,
            disable,
            period_days,
        } => {
            let id = resolve(key)?;
            if *enable || *disable || period_days.is_some() {
                let on = if *enable {
                    true
                } else if *disable {
                    false
                } else {
                    km.query(|s| s.key(&id).is_some_and(|k| k.rotation.enabled))
                };
                km.admin(|s, _| lifecycle::set_rotation(s, &id, on, *period_days))?;
            }
            let r = km.query(|s| lifecycle::describe(s, &id))?.rotation;
            if a.json {
                print_json(&r)
            } else {
                println!(
                    "rotation {} every {} days",
                    if r.enabled { "enabled" } else { "disabled" },
                    r.period_days
                )
            }
        }
        KeyOp::Import { key, material_file } => {
            let id = resolve(key)?;
            let m = read_material(material_file)?;
            let v = km.admin(|s, now| lifecycle::import(s, &id, &m, now))?;
            if a.json {
                print_json(&serde_json::json!({"key_id": id, "version": v}))
            } else {
                println!("imported as version {v} of key {id}")
            }
        }
        KeyOp::SetDefault { key } => {
            let id = resolve(key)?;
            km.admin(|s, _| lifecycle::set_default(s, &id))?;
        }
        KeyOp::MinDecryptionVersion { key, version } => {
            let id = resolve(key)?;
            km.admin(|s, _| lifecycle::set_min_decryption_version(s, &id, *version))?;
        }
        KeyOp::Trim { key, below, force } => {
            let id = resolve(key)?;
            let counts = rewrap::count_versions(&ad.root, &names(ad)).map_err(|e| {
                CliError::new(code::ERROR, format!("scanning {}: {e}", ad.root.display()))
            })?;
            let gone = km.admin(|s, now| {
                lifecycle::trim(s, &id, *below, *force, |v| counts.get(&id, v), now)
            })?;
            if a.json {
                print_json(&serde_json::json!({"key_id": id, "destroyed_versions": gone}))
            } else {
                println!("destroyed versions {gone:?} of key {id}")
            }
        }
        KeyOp::Usage => {
            let counts = rewrap::count_versions(&ad.root, &names(ad)).map_err(|e| {
                CliError::new(code::ERROR, format!("scanning {}: {e}", ad.root.display()))
            })?;
            if a.json {
                print_json(&counts);
            } else {
                for (k, vs) in &counts.files {
                    for (v, n) in vs {
                        println!("{k}  version {v:>3}  {n} file(s)");
                    }
                }
                if counts.damaged > 0 {
                    println!("{} file(s) with a damaged header", counts.damaged);
                }
            }
        }
    }
    Ok(())
}

fn names(ad: &Admin) -> Names {
    Names::new(&ad.km.volume_secret(), ad.plaintext_names)
}

pub fn rules(a: &RulesArgs) -> Result<(), CliError> {
    open(&a.cipherdir, &a.unlock)?.audited("Rules", &a.op, |ad| rules_op(ad, a))
}

fn rules_op(ad: &Admin, a: &RulesArgs) -> Result<(), CliError> {
    let km = &ad.km;
    match &a.op {
        RulesOp::List => {}
        RulesOp::Set { prefix, key } => {
            let id = km.query(|s| lifecycle::resolve(s, key))?;
            km.admin(|s, _| lifecycle::set_rule(s, prefix, &id))?;
        }
        RulesOp::Remove { prefix } => km.admin(|s, _| lifecycle::remove_rule(s, prefix))?,
    }
    let rules = km.query(|s| s.rules.clone());
    if a.json {
        print_json(&rules);
    } else {
        for r in rules {
            println!("{}  ->  {}", r.prefix, r.key);
        }
    }
    Ok(())
}

pub fn rewrap(a: &RewrapArgs) -> Result<(), CliError> {
    let ad = open(&a.cipherdir, &a.unlock)?;
    let r = rewrap_op(&ad, a);
    ad.record("Rewrap", format!("key={:?} rules={}", a.key, a.rules), &r)?;
    r
}

fn rewrap_op(ad: &Admin, a: &RewrapArgs) -> Result<(), CliError> {
    let key = a
        .key
        .as_deref()
        .map(|k| ad.km.query(|s| lifecycle::resolve(s, k)))
        .transpose()?;
    let opts = RewrapOptions {
        key,
        follow_rules: a.rules,
    };
    let mut progress = super::progress::Progress::new("rewrap");
    let s = rewrap::rewrap(&ad.km, &ad.root, &names(ad), &opts, &mut |done, total| {
        progress.update(done, total)
    })
    .map_err(|e| CliError::new(code::ERROR, format!("rewrap of {}: {e}", ad.root.display())))?;
    progress.finish();
    if a.json {
        print_json(&s);
    } else {
        println!(
            "{} files: {} rewrapped, {} already current, {} skipped (key not usable), {} damaged",
            s.files, s.rewrapped, s.already_current, s.skipped_unusable_key, s.damaged
        );
        for e in &s.errors {
            eprintln!("kmsfs: {e}");
        }
    }
    if s.damaged > 0 || s.skipped_unusable_key > 0 || !s.errors.is_empty() {
        return Err(CliError::new(
            code::ERROR,
            "rewrap left files behind (listed above); rerun after fixing them",
        ));
    }
    Ok(())
}
