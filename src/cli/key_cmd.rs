//! `kmsfs key …`, `kmsfs rules …`, `kmsfs rewrap`: key-manager administration. `key` and
//! `rules` take a mount point or a cipher directory and go through [`super::target`] (the
//! control directory of a mounted volume, or the unlocked cipher directory). `rewrap` rewrites
//! file headers and needs the volume unmounted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::UnlockArgs;
use super::error::CliError;
use super::exit_code as code;
use serde_json::Value;

use super::target::target;
use crate::control::Request;
use crate::control::request::MaterialHex;
use crate::keymgr::audit::{AuditKeys, AuditLog};
use crate::keymgr::lifecycle::DELETION_DAYS_DEFAULT;
use crate::keymgr::{KeyManager, VolumePaths};
use crate::names::Names;

#[derive(Args, Debug)]
pub struct KeyArgs {
    /// The volume's cipher directory, or the mount point of the mounted volume.
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
    /// The volume's cipher directory, or the mount point of the mounted volume.
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
    /// The volume's cipher directory, or the mount point of the mounted volume.
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
    pub(super) root: PathBuf,
    plaintext_names: bool,
    /// Every administration command is audited (source "kms"); no log, no administration.
    pub(super) audit: AuditLog,
    /// The key store's generation when the session began (see `Drop`).
    generation_at_open: u64,
    _lock: std::os::fd::OwnedFd,
}

impl Drop for Admin {
    fn drop(&mut self) {
        // A session that changed the key store records its closing checkpoint there as the
        // anchor, as an unmount does: otherwise its records (keys, policies, grants changed
        // while unmounted) could be cut from the log with an older `head` put back, the key
        // store keeping the changes (found by a review). A separate write after the command's
        // own. A session that changed nothing (a read, a refusal) leaves the key store as it
        // was; its records are covered by `head` only.
        if self.km.generation() == self.generation_at_open {
            let _ = self.audit.close();
            return;
        }
        if let Err(e) = self.km.close_audit(&self.audit) {
            warn_unanchored(e);
        }
    }
}

/// Warns that an audit session could not be ended cleanly (its records are written).
pub(super) fn warn_unanchored(e: crate::keymgr::AdminError) {
    eprintln!(
        "kmsfs: warning: the audit log's closing checkpoint could not be recorded in the key \
         store: {e}"
    );
}

pub(super) fn open(cipherdir: &Path, unlock: &UnlockArgs) -> Result<Admin, CliError> {
    let root = std::fs::canonicalize(cipherdir)
        .map_err(|_| crate::keymgr::VolumeError::NotAVolume(cipherdir.to_path_buf()))?;
    crate::keymgr::probe(&root)?;
    // The passphrase before the lock: a prompt must not hold the volume (a mount meanwhile
    // was refused as "already mounted"). A mounted volume went to its mount (`target`).
    let secret = unlock.source().get()?;
    let lock = super::mount_cmd::lock_volume(&VolumePaths::new(&root)).map_err(|e| {
        if e.code == code::ALREADY_MOUNTED && super::mount_cmd::refuse_if_mounted(&root).is_err() {
            CliError::new(
                code::ALREADY_MOUNTED,
                format!(
                    "{} is mounted; its key store belongs to the running mount",
                    root.display()
                ),
            )
            .hint("unmount it first")
        } else {
            e
        }
    })?;
    let u = crate::keymgr::unlock(&root, &secret)?;
    drop(secret);
    super::warn_if_backup(&u);
    let plaintext_names = u
        .config
        .has_feature(crate::format::config::FEATURE_PLAINTEXT_NAMES);
    let audit = AuditLog::open_anchored(
        &u.paths.control_dir(),
        AuditKeys::new(&u.store.volume_secret),
        u.store.audit_anchor.as_ref(),
    )
    .map_err(|e| {
        CliError::new(code::ERROR, format!("cannot open the audit log: {e}"))
            .hint("administration is refused without a writable audit log")
    })?;
    let km = KeyManager::new(u);
    Ok(Admin {
        generation_at_open: km.generation(),
        km,
        root,
        plaintext_names,
        audit,
        _lock: lock,
    })
}

pub(super) fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn time(v: &Value) -> String {
    match v.as_u64() {
        Some(t) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(t),
        )
        .to_string(),
        None => "-".into(),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

fn print_meta(m: &Value) {
    let aliases: Vec<String> = m["aliases"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    println!("key id:          {}", s(&m["key_id"]));
    println!("aliases:         {}", aliases.join(", "));
    println!("description:     {}", s(&m["description"]));
    let deletion = if m["deletion_date"].is_null() {
        String::new()
    } else {
        format!(" (deletion at {})", time(&m["deletion_date"]))
    };
    println!("state:           {}{deletion}", s(&m["state"]));
    println!("default key:     {}", s(&m["is_default"]));
    println!("created:         {}", time(&m["creation_date"]));
    println!("current version: {}", s(&m["current_version"]));
    println!(
        "min decryption:  {}",
        m["min_decryption_version"].as_u64().unwrap_or(0).max(1)
    );
    let r = &m["rotation"];
    let next = if r["next_rotation"].is_null() {
        String::new()
    } else {
        format!(", next {}", time(&r["next_rotation"]))
    };
    println!(
        "rotation:        {} every {} days, last {}{next}",
        if r["enabled"] == Value::Bool(true) {
            "enabled"
        } else {
            "disabled"
        },
        s(&r["period_days"]),
        time(&r["last_rotation"]),
    );
    for v in m["versions"].as_array().into_iter().flatten() {
        let state = if !v["destroyed"].is_null() {
            format!("destroyed {}", time(&v["destroyed"]))
        } else if v["available"] == Value::Bool(true) {
            "available".into()
        } else {
            "retired".into()
        };
        println!(
            "  version {:>3}  {}  {}  {}",
            s(&v["version"]),
            time(&v["created"]),
            s(&v["origin"]),
            state
        );
    }
    for (k, v) in m["tags"].as_object().into_iter().flatten() {
        println!("  tag {k}={}", s(v));
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

/// Key material from a file (32 raw bytes or 64 hex digits), as hex for the request.
fn read_material(p: &Path) -> Result<MaterialHex, CliError> {
    let raw = zeroize::Zeroizing::new(
        std::fs::read(p)
            .map_err(|e| CliError::new(code::ERROR, format!("{}: {e}", p.display())))?,
    );
    if raw.len() == 32 {
        return Ok(MaterialHex(zeroize::Zeroizing::new(
            crate::crypto::hex::encode(&raw),
        )));
    }
    let text = String::from_utf8_lossy(&raw);
    let t = text.trim();
    let mut out = zeroize::Zeroizing::new(vec![0u8; 32]);
    if t.len() == 64 && crate::crypto::hex::decode_into(t, &mut out).is_some() {
        return Ok(MaterialHex(zeroize::Zeroizing::new(t.to_string())));
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
    pub(super) fn names(&self) -> Names {
        Names::new(&self.km.volume_secret(), self.plaintext_names)
    }
}

/// The request a `kmsfs key` subcommand makes.
fn key_request(op: &KeyOp) -> Result<Request, CliError> {
    let key = |k: &String| k.clone();
    Ok(match op {
        KeyOp::Create {
            description,
            tags,
            alias,
        } => Request::CreateKey {
            description: description.clone(),
            tags: parse_tags(tags)?,
            alias: alias.clone(),
        },
        KeyOp::List => Request::ListKeys,
        KeyOp::Describe { key: k } => Request::DescribeKey { key: key(k) },
        KeyOp::UpdateDescription {
            key: k,
            description,
        } => Request::UpdateKeyDescription {
            key: key(k),
            description: description.clone(),
        },
        KeyOp::Alias { op } => match op {
            AliasOp::Create { alias, key: k } => Request::CreateAlias {
                alias: alias.clone(),
                key: key(k),
            },
            AliasOp::Update { alias, key: k } => Request::UpdateAlias {
                alias: alias.clone(),
                key: key(k),
            },
            AliasOp::Delete { alias } => Request::DeleteAlias {
                alias: alias.clone(),
            },
        },
        KeyOp::Tag { key: k, tags } => Request::TagResource {
            key: key(k),
            tags: parse_tags(tags)?,
        },
        KeyOp::Untag { key: k, names } => Request::UntagResource {
            key: key(k),
            tag_keys: names.clone(),
        },
        KeyOp::Enable { key: k } => Request::EnableKey { key: key(k) },
        KeyOp::Disable { key: k } => Request::DisableKey { key: key(k) },
        KeyOp::ScheduleDeletion { key: k, days } => Request::ScheduleKeyDeletion {
            key: key(k),
            days: *days,
        },
        KeyOp::CancelDeletion { key: k } => Request::CancelKeyDeletion { key: key(k) },
        KeyOp::Rotate { key: k } => Request::RotateKeyOnDemand { key: key(k) },
        KeyOp::Rotation {
            key: k,
            enable,
            disable,
            period_days,
        } => {
            if *enable || *disable || period_days.is_some() {
                Request::SetKeyRotation {
                    key: key(k),
                    enabled: if *enable {
                        Some(true)
                    } else if *disable {
                        Some(false)
                    } else {
                        None
                    },
                    period_days: *period_days,
                }
            } else {
                Request::GetKeyRotationStatus { key: key(k) }
            }
        }
        KeyOp::Import {
            key: k,
            material_file,
        } => Request::ImportKeyMaterial {
            key: key(k),
            material: read_material(material_file)?,
        },
        KeyOp::SetDefault { key: k } => Request::SetDefaultKey { key: key(k) },
        KeyOp::MinDecryptionVersion { key: k, version } => Request::SetMinDecryptionVersion {
            key: key(k),
            version: *version,
        },
        KeyOp::Trim {
            key: k,
            below,
            force,
        } => Request::TrimKeyVersions {
            key: key(k),
            below: *below,
            force: *force,
        },
        KeyOp::Usage => Request::GetKeyUsage,
    })
}

pub fn key(a: &KeyArgs) -> Result<(), CliError> {
    let req = key_request(&a.op)?;
    let out = target(&a.cipherdir, &a.unlock)?.call(&req)?;
    if a.json {
        print_json(&out);
        return Ok(());
    }
    match &a.op {
        KeyOp::Create { .. } | KeyOp::Describe { .. } => print_meta(&out),
        KeyOp::List => {
            println!(
                "{:<36}  {:<15}  {:>3}  {:<7}  ALIASES / DESCRIPTION",
                "KEY ID", "STATE", "VER", "DEFAULT"
            );
            for k in out.as_array().into_iter().flatten() {
                let aliases: Vec<String> = k["aliases"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect())
                    .unwrap_or_default();
                println!(
                    "{:<36}  {:<15}  {:>3}  {:<7}  {} {}",
                    s(&k["key_id"]),
                    s(&k["state"]),
                    s(&k["current_version"]),
                    if k["is_default"] == Value::Bool(true) {
                        "yes"
                    } else {
                        ""
                    },
                    aliases.join(","),
                    s(&k["description"])
                );
            }
        }
        KeyOp::ScheduleDeletion { .. } => println!(
            "key {} will be destroyed at {} (cancel with kmsfs key cancel-deletion)",
            s(&out["key_id"]),
            time(&out["deletion_date"])
        ),
        KeyOp::Rotate { .. } => println!(
            "key {} is now at version {}",
            s(&out["key_id"]),
            s(&out["version"])
        ),
        KeyOp::Rotation { .. } => println!(
            "rotation {} every {} days",
            if out["enabled"] == Value::Bool(true) {
                "enabled"
            } else {
                "disabled"
            },
            s(&out["period_days"])
        ),
        KeyOp::Import { .. } => println!(
            "imported as version {} of key {}",
            s(&out["version"]),
            s(&out["key_id"])
        ),
        KeyOp::Trim { .. } => println!(
            "destroyed versions {} of key {}",
            out["destroyed_versions"],
            s(&out["key_id"])
        ),
        KeyOp::Usage => {
            for (k, vs) in out["files"].as_object().into_iter().flatten() {
                for (v, n) in vs.as_object().into_iter().flatten() {
                    println!("{k}  version {v:>3}  {n} file(s)");
                }
            }
            if out["damaged"].as_u64().unwrap_or(0) > 0 {
                println!("{} file(s) with a damaged header", out["damaged"]);
            }
        }
        _ => {}
    }
    Ok(())
}

pub fn rules(a: &RulesArgs) -> Result<(), CliError> {
    let req = match &a.op {
        RulesOp::List => Request::ListKeyRules,
        RulesOp::Set { prefix, key } => Request::SetKeyRule {
            prefix: prefix.clone(),
            key: key.clone(),
        },
        RulesOp::Remove { prefix } => Request::DeleteKeyRule {
            prefix: prefix.clone(),
        },
    };
    let rules = target(&a.cipherdir, &a.unlock)?.call(&req)?;
    if a.json {
        print_json(&rules);
    } else {
        for r in rules.as_array().into_iter().flatten() {
            println!("{}  ->  {}", s(&r["prefix"]), s(&r["key"]));
        }
    }
    Ok(())
}

pub fn rewrap(a: &RewrapArgs) -> Result<(), CliError> {
    let out = target(&a.cipherdir, &a.unlock)?.call(&Request::Rewrap {
        key: a.key.clone(),
        rules: a.rules,
    })?;
    let n = |k: &str| out[k].as_u64().unwrap_or(0);
    if a.json {
        print_json(&out);
    } else {
        println!(
            "{} files: {} rewrapped, {} already current, {} skipped (key not usable), {} skipped (denied by key policy), {} damaged",
            n("files"),
            n("rewrapped"),
            n("already_current"),
            n("skipped_unusable_key"),
            n("skipped_denied"),
            n("damaged")
        );
        for e in out["errors"].as_array().into_iter().flatten() {
            eprintln!("kmsfs: {}", s(e));
        }
    }
    let errors = out["errors"].as_array().map_or(0, Vec::len) as u64;
    let denied = n("skipped_denied");
    if denied > 0 && denied == errors && n("damaged") == 0 && n("skipped_unusable_key") == 0 {
        return Err(CliError::new(
            code::ACCESS_DENIED,
            format!("rewrap left {denied} files behind: denied by key policy (listed above)"),
        ));
    }
    if n("damaged") > 0 || n("skipped_unusable_key") > 0 || errors > 0 {
        return Err(CliError::new(
            code::ERROR,
            "rewrap left files behind (listed above); rerun after fixing them",
        ));
    }
    Ok(())
}
