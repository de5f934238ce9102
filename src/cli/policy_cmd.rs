//! `kmsfs policy get|put|validate|simulate` and `kmsfs grant create|list|retire|revoke`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::UnlockArgs;
use super::error::CliError;
use super::exit_code as code;
use super::key_cmd::print_json;
use super::target::{Target, target};
use crate::control::Request;
use crate::control::request::{GrantSpec, Simulated};
use crate::keymgr::policy::{Decision, Grant, Policy, Principal};

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    op: PolicyOp,
}

#[derive(Args, Debug, Clone)]
struct VolumeArg {
    /// The volume's cipher directory or the mount point of the mounted volume (or set
    /// KMSFS_VOLUME).
    #[arg(long = "volume", env = "KMSFS_VOLUME", value_name = "CIPHERDIR")]
    volume: PathBuf,
    #[command(flatten)]
    unlock: UnlockArgs,
}

#[derive(Subcommand, Debug)]
enum PolicyOp {
    /// Print a key's policy (to FILE if given).
    Get {
        #[command(flatten)]
        vol: VolumeArg,
        key: String,
        file: Option<PathBuf>,
    },
    /// Replace a key's policy with the document in FILE (validated; lockout-checked).
    Put {
        #[command(flatten)]
        vol: VolumeArg,
        key: String,
        file: PathBuf,
        /// Store a policy under which you could not change it again.
        #[arg(long)]
        bypass_lockout_check: bool,
    },
    /// Check a policy document; prints what is wrong.
    Validate { file: PathBuf },
    /// What would be decided for a request, and why.
    Simulate {
        #[command(flatten)]
        vol: VolumeArg,
        key: String,
        #[arg(long)]
        action: String,
        #[arg(long, default_value_t = 0)]
        uid: u32,
        #[arg(long, default_value_t = 0)]
        gid: u32,
        /// Supplementary group ids, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<u32>,
        #[arg(long)]
        user: Option<String>,
        /// Group names, comma-separated.
        #[arg(long, value_delimiter = ',')]
        group_names: Vec<String>,
        #[arg(long)]
        exe: Option<String>,
        #[arg(long)]
        path: Option<String>,
        /// read, write or readwrite.
        #[arg(long)]
        mode: Option<String>,
        /// Encryption context pair KEY=VALUE (repeatable).
        #[arg(long = "context")]
        context: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

fn pairs(v: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    v.iter()
        .map(|t| {
            t.split_once('=')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    CliError::new(code::INVALID_REQUEST, format!("{t:?} is not KEY=VALUE"))
                })
        })
        .collect()
}

impl VolumeArg {
    fn target(&self) -> Result<Target, CliError> {
        target(&self.volume, &self.unlock)
    }
}

/// `--volume` of `kmsfs grant`, taken before or after the subcommand (`kmsfs grant list
/// --volume VOL`, as `kmsfs policy get --volume VOL` takes it). A global argument cannot be
/// required in clap, so its absence is reported here.
#[derive(Args, Debug, Clone)]
struct GrantVolumeArg {
    /// The volume's cipher directory or the mount point of the mounted volume (or set
    /// KMSFS_VOLUME).
    #[arg(
        long = "volume",
        env = "KMSFS_VOLUME",
        value_name = "CIPHERDIR",
        global = true
    )]
    volume: Option<PathBuf>,
    #[command(flatten)]
    unlock: UnlockArgs,
}

impl GrantVolumeArg {
    fn target(&self) -> Result<Target, CliError> {
        let volume = self.volume.as_ref().ok_or_else(|| {
            CliError::new(
                code::USAGE,
                "no volume given: --volume CIPHERDIR (or the mount point), or set KMSFS_VOLUME",
            )
        })?;
        target(volume, &self.unlock)
    }
}

fn read(p: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(p)
        .map_err(|e| CliError::new(code::ERROR, format!("{}: {e}", p.display())))
}

pub fn policy(a: &PolicyArgs) -> Result<(), CliError> {
    match &a.op {
        PolicyOp::Validate { file } => {
            Policy::parse(&read(file)?).map_err(|e| {
                CliError::new(code::INVALID_REQUEST, format!("{}: {e}", file.display()))
            })?;
            println!("{}: valid", file.display());
        }
        PolicyOp::Get { vol, key, file } => {
            let text = vol
                .target()?
                .call(&Request::GetKeyPolicy { key: key.clone() })?;
            let text = text.as_str().unwrap_or_default();
            match file {
                Some(f) => std::fs::write(f, text)
                    .map_err(|e| CliError::new(code::ERROR, format!("{}: {e}", f.display())))?,
                None => println!("{text}"),
            }
        }
        PolicyOp::Put {
            vol,
            key,
            file,
            bypass_lockout_check,
        } => {
            let policy = read(file)?;
            vol.target()?.call(&Request::PutKeyPolicy {
                key: key.clone(),
                policy,
                bypass_lockout_check: *bypass_lockout_check,
            })?;
            println!("policy of key {key} replaced");
        }
        PolicyOp::Simulate {
            vol,
            key,
            action,
            uid,
            gid,
            groups,
            user,
            group_names,
            exe,
            path,
            mode,
            context,
            json,
        } => {
            let out = vol.target()?.call(&Request::SimulatePolicy {
                key: key.clone(),
                action: action.clone(),
                request: Simulated {
                    uid: *uid,
                    gid: *gid,
                    groups: groups.clone(),
                    user: user.clone(),
                    group_names: group_names.clone(),
                    exe: exe.clone(),
                    path: path.clone(),
                    access_mode: mode.clone(),
                    encryption_context: pairs(context)?,
                },
            })?;
            let d: Decision = serde_json::from_value(out["decision"].clone())
                .map_err(|e| CliError::new(code::ERROR, format!("bad decision: {e}")))?;
            if *json {
                print_json(&out);
            } else {
                let why = match &d {
                    Decision::ExplicitDeny { sid } => {
                        format!("denied by statement {sid:?} (explicit Deny)")
                    }
                    Decision::AllowedByPolicy { sid } => format!("allowed by statement {sid:?}"),
                    Decision::AllowedByGrant { grant_id } => format!("allowed by grant {grant_id}"),
                    Decision::ImplicitDeny => {
                        "denied: no statement or grant allows it (implicit deny)".into()
                    }
                };
                println!("{why}");
            }
            if !d.allowed() {
                return Err(CliError::new(
                    code::ACCESS_DENIED,
                    "the simulated request would be denied",
                ));
            }
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    #[command(flatten)]
    vol: GrantVolumeArg,
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    op: GrantOp,
}

#[derive(Subcommand, Debug)]
// Parsed once per run: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
enum GrantOp {
    /// Create a grant; prints its id.
    Create {
        key: String,
        #[arg(long = "grantee-uid")]
        uids: Vec<u32>,
        #[arg(long = "grantee-user")]
        users: Vec<String>,
        #[arg(long = "grantee-gid")]
        gids: Vec<u32>,
        #[arg(long = "grantee-group")]
        groups: Vec<String>,
        /// Allowed operation, e.g. kms:Decrypt (repeatable).
        #[arg(long = "operation", required = true)]
        operations: Vec<String>,
        /// Only paths matching this glob.
        #[arg(long)]
        path_like: Option<String>,
        /// Encryption-context pair the request must carry (repeatable).
        #[arg(long = "context")]
        context: Vec<String>,
        /// Expiry: RFC 3339 time or a duration from now (e.g. 8h, 30d).
        #[arg(long)]
        expires: Option<String>,
        #[arg(long, default_value = "")]
        name: String,
        /// A uid that may retire the grant (repeatable; its retiring principal, as in AWS).
        #[arg(long = "retiring-uid")]
        retiring_uids: Vec<u32>,
        /// A user name that may retire the grant (repeatable).
        #[arg(long = "retiring-user")]
        retiring_users: Vec<String>,
    },
    /// List grants (of one key).
    List { key: Option<String> },
    /// Retire a grant (by its retiring principal or an administrator).
    Retire { grant_id: String },
    /// Revoke a grant (administrator).
    Revoke { grant_id: String },
}

/// A grant's principal for people: `anyone`, or `uid 7,8 user alice gid 10 group staff`.
fn principal_text(p: &Principal) -> String {
    if p.any {
        return "anyone".into();
    }
    let mut parts = Vec::new();
    let nums = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    if !p.uids.is_empty() {
        parts.push(format!("uid {}", nums(&p.uids)));
    }
    if !p.users.is_empty() {
        parts.push(format!("user {}", p.users.join(",")));
    }
    if !p.gids.is_empty() {
        parts.push(format!("gid {}", nums(&p.gids)));
    }
    if !p.groups.is_empty() {
        parts.push(format!("group {}", p.groups.join(",")));
    }
    if parts.is_empty() {
        "nobody".into()
    } else {
        parts.join(" ")
    }
}

fn parse_expiry(s: &str, now: u64) -> Result<u64, CliError> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now + d.as_secs());
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .ok_or_else(|| {
            CliError::new(
                code::INVALID_REQUEST,
                format!("expiry {s:?} is neither an RFC 3339 time nor a duration"),
            )
        })
}

pub fn grant(a: &GrantArgs) -> Result<(), CliError> {
    let t = a.vol.target()?;
    let req = match &a.op {
        GrantOp::Create {
            key,
            uids,
            users,
            gids,
            groups,
            operations,
            path_like,
            context,
            expires,
            name,
            retiring_uids,
            retiring_users,
        } => {
            if uids.is_empty() && users.is_empty() && gids.is_empty() && groups.is_empty() {
                return Err(CliError::new(
                    code::USAGE,
                    "a grant needs a grantee (--grantee-uid/-user/-gid/-group)",
                ));
            }
            let now = crate::keymgr::now_unix()
                + std::env::var(crate::keymgr::TEST_TIME_OFFSET_ENV)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            Request::CreateGrant {
                key: key.clone(),
                grant: GrantSpec {
                    name: name.clone(),
                    grantee: Principal {
                        any: false,
                        uids: uids.clone(),
                        users: users.clone(),
                        gids: gids.clone(),
                        groups: groups.clone(),
                    },
                    operations: operations.clone(),
                    path_like: path_like.clone(),
                    encryption_context_subset: pairs(context)?,
                    expires: expires
                        .as_deref()
                        .map(|e| parse_expiry(e, now))
                        .transpose()?,
                    retiring_principal: (!retiring_uids.is_empty() || !retiring_users.is_empty())
                        .then(|| Principal {
                            uids: retiring_uids.clone(),
                            users: retiring_users.clone(),
                            ..Default::default()
                        }),
                },
            }
        }
        GrantOp::List { key } => Request::ListGrants { key: key.clone() },
        GrantOp::Retire { grant_id } => Request::RetireGrant {
            grant_id: grant_id.clone(),
        },
        GrantOp::Revoke { grant_id } => Request::RevokeGrant {
            grant_id: grant_id.clone(),
        },
    };
    let out = t.call(&req)?;
    match &a.op {
        GrantOp::Create { .. } if !a.json => println!("{}", out["grant_id"].as_str().unwrap_or("")),
        GrantOp::List { .. } if !a.json => {
            let gs: Vec<Grant> = serde_json::from_value(out).unwrap_or_default();
            let now = crate::keymgr::now_unix();
            for g in gs {
                let mut line = format!(
                    "{}  key {}  grantee {}  ops {}  expires {}",
                    g.id,
                    g.key,
                    principal_text(&g.grantee),
                    g.operations.join(","),
                    g.expires.map_or("never".into(), |e| {
                        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(e);
                        let past = if e <= now { " (expired)" } else { "" };
                        format!("{}{past}", humantime::format_rfc3339_seconds(t))
                    })
                );
                if let Some(p) = &g.retiring_principal {
                    line.push_str(&format!("  retiring {}", principal_text(p)));
                }
                println!("{line}");
            }
        }
        _ if a.json => print_json(&out),
        _ => {}
    }
    Ok(())
}
