//! Key policies in the AWS KMS style, for local identities.
//!
//! Grammar (JSON): `{"Version": "2012-10-17", "Statement": [ … ]}`; each statement has an
//! optional `Sid`, and required `Effect` (`Allow`/`Deny`), `Principal` (`"*"` or an object of
//! `Uid`/`User`/`Gid`/`Group`, each a string or list; supplementary groups count; a value `"*"`
//! means anyone), `Action` (KMS-style names with `*`/`?` wildcards), optional `Resource` (`"*"`
//! or key ids or patterns, normalized to the canonical lower-case dashed form) and
//! `Condition` (`{Operator: {ConditionKey: value | [values]}}`). Unknown fields, actions,
//! operators or condition keys, and a key repeated within one object, are rejected with a message
//! naming them; documents over 32 KiB are rejected.
//!
//! Evaluation: any matching Deny wins; otherwise a matching Allow (policy statement or valid
//! grant) allows; otherwise the request is denied. Conditions: every operator must hold; within
//! an operator every key must hold; a key holds if any of its values matches. A condition on a
//! key the request does not carry fails (the negated operators hold), so an empty encryption
//! context never satisfies `StringEquals` on one of its keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::format::KeyId;

pub const MAX_POLICY_BYTES: usize = 32 * 1024;

/// Every action a policy may name.
pub const ACTIONS: &[&str] = &[
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:DescribeKey",
    "kms:ListKeys",
    "kms:CreateKey",
    "kms:UpdateKeyDescription",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:CreateAlias",
    "kms:UpdateAlias",
    "kms:DeleteAlias",
    "kms:GetKeyPolicy",
    "kms:PutKeyPolicy",
    "kms:EnableKey",
    "kms:DisableKey",
    "kms:RotateKeyOnDemand",
    "kms:EnableKeyRotation",
    "kms:DisableKeyRotation",
    "kms:GetKeyRotationStatus",
    "kms:ImportKeyMaterial",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
    "kms:CreateGrant",
    "kms:ListGrants",
    "kms:RetireGrant",
    "kms:RevokeGrant",
    "kms:SetKeyRules",
    "kms:ReadAuditLog",
    "kms:RetireKeyVersions",
    "kms:DescribeVolume",
    "kms:PutAlertSettings",
    "kms:PutAuditSettings",
];

/// What a grant may allow (as in AWS KMS: use of the key, not its administration).
pub const GRANT_OPERATIONS: &[&str] = &[
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:DescribeKey",
    "kms:RetireGrant",
];

/// Condition keys and their types.
const KEYS: &[(&str, KeyType)] = &[
    ("kmsfs:Path", KeyType::Str),
    ("kmsfs:AccessMode", KeyType::Str),
    ("kmsfs:Executable", KeyType::Str),
    ("kmsfs:Uid", KeyType::Num),
    ("kmsfs:Gid", KeyType::Num),
    ("kmsfs:User", KeyType::Str),
    ("aws:CurrentTime", KeyType::Date),
    ("kmsfs:CurrentTime", KeyType::Date),
];
const EC_PREFIX: &str = "kms:EncryptionContext:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Str,
    Num,
    Date,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    StringEquals,
    StringNotEquals,
    StringLike,
    StringNotLike,
    NumericEquals,
    NumericNotEquals,
    NumericLessThan,
    NumericLessThanEquals,
    NumericGreaterThan,
    NumericGreaterThanEquals,
    DateLessThan,
    DateLessThanEquals,
    DateGreaterThan,
    DateGreaterThanEquals,
    Bool,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        use Op::*;
        Some(match s {
            "StringEquals" => StringEquals,
            "StringNotEquals" => StringNotEquals,
            "StringLike" => StringLike,
            "StringNotLike" => StringNotLike,
            "NumericEquals" => NumericEquals,
            "NumericNotEquals" => NumericNotEquals,
            "NumericLessThan" => NumericLessThan,
            "NumericLessThanEquals" => NumericLessThanEquals,
            "NumericGreaterThan" => NumericGreaterThan,
            "NumericGreaterThanEquals" => NumericGreaterThanEquals,
            "DateLessThan" => DateLessThan,
            "DateLessThanEquals" => DateLessThanEquals,
            "DateGreaterThan" => DateGreaterThan,
            "DateGreaterThanEquals" => DateGreaterThanEquals,
            "Bool" => Bool,
            _ => return None,
        })
    }
    fn negated(self) -> bool {
        matches!(
            self,
            Op::StringNotEquals | Op::StringNotLike | Op::NumericNotEquals
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid policy: {0}")]
pub struct PolicyError(pub String);

fn bad<T>(m: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError(m.into()))
}

/// A string or a list of strings (numbers accepted and turned into strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    // `Many` first: an untagged `Value` would also accept a list.
    Many(Vec<Value>),
    One(Value),
}

impl OneOrMany {
    fn strings(&self, what: &str) -> Result<Vec<String>, PolicyError> {
        let vals: Vec<&Value> = match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v.iter().collect(),
        };
        if vals.is_empty() {
            return bad(format!("{what} is an empty list"));
        }
        vals.into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                _ => bad(format!("{what} must be a string or a list of strings")),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    #[serde(rename = "Version")]
    pub version: String,
    #[serde(rename = "Statement")]
    pub statement: Vec<StatementDoc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementDoc {
    #[serde(rename = "Sid", default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(rename = "Effect")]
    pub effect: String,
    #[serde(rename = "Principal")]
    pub principal: Value,
    #[serde(rename = "Action")]
    pub action: OneOrMany,
    #[serde(rename = "Resource", default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<OneOrMany>,
    #[serde(rename = "Condition", default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<BTreeMap<String, BTreeMap<String, OneOrMany>>>,
}

/// Who a statement or grant applies to. (A grant's grantee is written in this form; unknown
/// fields in it are refused, not ignored; fields left out are empty, `any` false.)
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Principal {
    pub any: bool,
    pub uids: Vec<u32>,
    pub users: Vec<String>,
    pub gids: Vec<u32>,
    pub groups: Vec<String>,
}

impl Principal {
    pub fn parse(v: &Value) -> Result<Principal, PolicyError> {
        if v == &Value::String("*".into()) {
            return Ok(Principal {
                any: true,
                ..Default::default()
            });
        }
        let Value::Object(m) = v else {
            return bad("Principal must be \"*\" or an object of Uid/User/Gid/Group");
        };
        if m.is_empty() {
            return bad("Principal is empty");
        }
        let mut p = Principal::default();
        for (k, val) in m {
            let mut list = serde_json::from_value::<OneOrMany>(val.clone())
                .map_err(|_| PolicyError(format!("Principal.{k}: bad value")))?
                .strings(&format!("Principal.{k}"))?;
            // `"*"` as a value means anyone, as `"Principal": "*"` does (AWS: `{"AWS": "*"}`).
            if list.iter().any(|v| v == "*") {
                p.any = true;
                list.retain(|v| v != "*");
            }
            let num = |s: &String| {
                s.parse::<u32>()
                    .map_err(|_| PolicyError(format!("Principal.{k}: {s:?} is not a number")))
            };
            match k.as_str() {
                "Uid" => p.uids = list.iter().map(num).collect::<Result<_, _>>()?,
                "Gid" => p.gids = list.iter().map(num).collect::<Result<_, _>>()?,
                "User" => p.users = list,
                "Group" => p.groups = list,
                _ => {
                    return bad(format!(
                        "unknown principal type {k:?} (use Uid, User, Gid or Group)"
                    ));
                }
            }
        }
        p.check_names()?;
        Ok(p)
    }

    /// Refuses user and group names with wildcards: names are compared exactly (only a whole
    /// `"*"` means anyone, and only in a policy), so such a name would never match anyone.
    pub fn check_names(&self) -> Result<(), PolicyError> {
        let (kinds, lists) = (["User", "Group"], [&self.users, &self.groups]);
        for (kind, list) in kinds.iter().zip(lists) {
            if let Some(n) = list.iter().find(|n| n.contains(['*', '?'])) {
                return bad(format!(
                    "Principal.{kind} {n:?}: names are matched exactly, without wildcards (\"*\" alone means anyone)"
                ));
            }
        }
        Ok(())
    }

    pub fn matches(&self, who: &Identity) -> bool {
        self.any
            || self.uids.contains(&who.uid)
            || who.user.as_ref().is_some_and(|u| self.users.contains(u))
            || who.gids().any(|g| self.gids.contains(&g))
            || who.group_names.iter().any(|g| self.groups.contains(g))
    }
}

/// The calling process of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub user: Option<String>,
    pub group_names: Vec<String>,
    pub pid: u32,
    pub exe: Option<String>,
}

impl Identity {
    fn gids(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::once(self.gid).chain(self.groups.iter().copied())
    }
}

/// What is being asked.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub who: Identity,
    pub action: String,
    pub key: Option<KeyId>,
    pub path: Option<String>,
    /// A file's access whose path could not be worked out (a file opened by a file handle
    /// after the backing store forgot its directory entry): a condition on `kmsfs:Path` then
    /// fails closed whatever its operator, where a request that has no path at all (an
    /// administrative one) follows the rule for missing keys.
    pub path_unknown: bool,
    /// `read`, `write` or `readwrite`.
    pub access_mode: Option<String>,
    /// Unix seconds.
    pub now: u64,
    pub encryption_context: BTreeMap<String, String>,
}

impl Request {
    fn value(&self, key: &str) -> Option<Vec<String>> {
        if let Some(ec) = key.strip_prefix(EC_PREFIX) {
            return self.encryption_context.get(ec).map(|v| vec![v.clone()]);
        }
        Some(match key {
            "kmsfs:Path" => vec![self.path.clone()?],
            "kmsfs:AccessMode" => vec![self.access_mode.clone()?],
            "kmsfs:Executable" => vec![self.who.exe.clone()?],
            "kmsfs:Uid" => vec![self.who.uid.to_string()],
            "kmsfs:Gid" => self.who.gids().map(|g| g.to_string()).collect(),
            "kmsfs:User" => vec![self.who.user.clone()?],
            "aws:CurrentTime" | "kmsfs:CurrentTime" => vec![self.now.to_string()],
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sid: String,
    pub allow: bool,
    pub principal: Principal,
    actions: Vec<String>,
    resources: Vec<String>,
    conds: Vec<(Op, String, Vec<String>)>,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub statements: Vec<Statement>,
}

/// `*` and `?` glob; `*` matches across `/` (as in AWS string conditions), `?` matches one
/// character (not one byte: `/secret/?.txt` matches `/secret/é.txt`).
pub fn glob(pat: &str, s: &str) -> bool {
    // Over bytes, stepping one whole UTF-8 character where a wildcard consumes: literal bytes
    // match from a character boundary to a character boundary, so `si` is always on one.
    let (p, sb) = (pat.as_bytes(), s.as_bytes());
    let char_len = |i: usize| s[i..].chars().next().map_or(1, char::len_utf8);
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < sb.len() {
        if pi < p.len() && p[pi] == b'?' {
            pi += 1;
            si += char_len(si);
        } else if pi < p.len() && p[pi] == sb[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += char_len(mark);
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// A `Resource` entry in the form it is matched in: `"*"`, a key id in its canonical form
/// (upper case and undashed ids are accepted, as everywhere else a key id is given), or a
/// pattern, in lower case, that can match some key id. Anything else is refused: matched as
/// written it would never apply, and a Deny naming this very key would silently be void.
fn normalize_resource(r: &str) -> Result<String, String> {
    if r == "*" {
        return Ok(r.into());
    }
    if !r
        .chars()
        .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '*' || c == '?')
    {
        return Err(format!(
            "Resource {r:?} must be \"*\" or a key id (aliases are not resources)"
        ));
    }
    if !r.contains(['*', '?']) {
        return r
            .parse::<KeyId>()
            .map(|k| k.to_string())
            .map_err(|_| format!("Resource {r:?} is not a key id (32 hex digits)"));
    }
    let lower = r.to_ascii_lowercase();
    if !pattern_can_match_key_id(&lower) {
        return Err(format!(
            "Resource {r:?} can match no key id (key ids are matched in the form \
             1234abcd-12ab-34cd-56ef-1234567890ab: lower case, dashed)"
        ));
    }
    Ok(lower)
}

/// Whether some key id in its canonical form (8-4-4-4-12 lower-case hex digits) matches `pat`.
fn pattern_can_match_key_id(pat: &str) -> bool {
    const LEN: usize = 36;
    let is_dash = |i: usize| matches!(i, 8 | 13 | 18 | 23);
    let fits = |c: u8, i: usize| match c {
        b'?' => true,
        b'-' => is_dash(i),
        c => !is_dash(i) && (c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
    };
    // reach[i]: the pattern read so far can match the first i characters of some id.
    let mut reach = [false; LEN + 1];
    reach[0] = true;
    for &c in pat.as_bytes() {
        let mut next = [false; LEN + 1];
        if c == b'*' {
            let mut any = false;
            for i in 0..=LEN {
                any |= reach[i];
                next[i] = any;
            }
        } else {
            for i in 0..LEN {
                if reach[i] && fits(c, i) {
                    next[i + 1] = true;
                }
            }
        }
        reach = next;
    }
    reach[LEN]
}

fn parse_date(s: &str) -> Option<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// Refuses a JSON document in which an object names the same key twice (anywhere: the
/// document, a statement, `Principal`, `Condition`, an operator's map). JSON parsers keep one
/// of the two silently (serde the last), so the rule that would be enforced is not the one
/// the author, or a reader of the stored text, sees.
pub fn reject_duplicate_keys(doc: &[u8]) -> Result<(), PolicyError> {
    use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

    struct Checked;
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Checked;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_unit<E>(self) -> Result<Checked, E> {
            Ok(Checked)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Checked, A::Error> {
            while a.next_element::<Checked>()?.is_some() {}
            Ok(Checked)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Checked, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = a.next_key::<String>()? {
                if !seen.insert(k.clone()) {
                    return Err(de::Error::custom(format!(
                        "duplicate key {k:?} in one object (each key may appear once)"
                    )));
                }
                a.next_value::<Checked>()?;
            }
            Ok(Checked)
        }
    }
    impl<'de> Deserialize<'de> for Checked {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
            d.deserialize_any(V)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(doc);
    Checked::deserialize(&mut de)
        .and_then(|_| de.end())
        .map_err(|e| PolicyError(e.to_string()))
}

impl Policy {
    /// Parses and validates a policy document.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return bad(format!(
                "{} bytes is over the {MAX_POLICY_BYTES}-byte limit",
                text.len()
            ));
        }
        reject_duplicate_keys(text.as_bytes())?;
        let doc: PolicyDoc = serde_json::from_str(text).map_err(|e| PolicyError(e.to_string()))?;
        if doc.version != "2012-10-17" {
            return bad(format!(
                "Version must be \"2012-10-17\", not {:?}",
                doc.version
            ));
        }
        if doc.statement.is_empty() {
            return bad("Statement is empty");
        }
        let mut sids = std::collections::HashSet::new();
        let statements = doc.statement.iter().enumerate().map(|(i, s)| {
            let sid = s.sid.clone().unwrap_or_else(|| format!("#{i}"));
            if s.sid.is_some() && !sids.insert(sid.clone()) {
                return bad(format!("duplicate Sid {sid:?}"));
            }
            let allow = match s.effect.as_str() {
                "Allow" => true,
                "Deny" => false,
                e => {
                    return bad(format!(
                        "statement {sid}: Effect must be Allow or Deny, not {e:?}"
                    ));
                }
            };
            let principal = Principal::parse(&s.principal)
                .map_err(|e| PolicyError(format!("statement {sid}: {}", e.0)))?;
            let actions = s.action.strings("Action")?;
            for a in &actions {
                if !ACTIONS.iter().any(|k| glob(a, k)) {
                    return bad(format!("statement {sid}: unknown action {a:?}"));
                }
            }
            let resources = match &s.resource {
                None => vec!["*".to_string()],
                Some(r) => r.strings("Resource")?,
            };
            let resources = resources
                .iter()
                .map(|r| normalize_resource(r).map_err(|e| PolicyError(format!("statement {sid}: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let mut conds = Vec::new();
            for (op, m) in s.condition.iter().flatten() {
                let o = Op::parse(op).ok_or_else(|| {
                    PolicyError(format!(
                        "statement {sid}: unknown condition operator {op:?}"
                    ))
                })?;
                if m.is_empty() {
                    return bad(format!("statement {sid}: {op} has no condition keys"));
                }
                for (k, v) in m {
                    let ty = if k.starts_with(EC_PREFIX) && k.len() > EC_PREFIX.len() {
                        KeyType::Str
                    } else {
                        KEYS.iter()
                            .find(|(n, _)| n == k)
                            .map(|(_, t)| *t)
                            .ok_or_else(|| {
                                PolicyError(format!("statement {sid}: unknown condition key {k:?}"))
                            })?
                    };
                    let vals = v.strings(&format!("{op}.{k}"))?;
                    let fits = match o {
                        Op::StringEquals
                        | Op::StringNotEquals
                        | Op::StringLike
                        | Op::StringNotLike => ty == KeyType::Str,
                        Op::NumericEquals
                        | Op::NumericNotEquals
                        | Op::NumericLessThan
                        | Op::NumericLessThanEquals
                        | Op::NumericGreaterThan
                        | Op::NumericGreaterThanEquals => {
                            ty == KeyType::Num && vals.iter().all(|x| x.parse::<i64>().is_ok())
                        }
                        Op::DateLessThan
                        | Op::DateLessThanEquals
                        | Op::DateGreaterThan
                        | Op::DateGreaterThanEquals => {
                            ty == KeyType::Date && vals.iter().all(|x| parse_date(x).is_some())
                        }
                        // No condition key kmsfs knows is boolean: `Bool` could never hold.
                        Op::Bool => {
                            return bad(format!(
                                "statement {sid}: Bool applies to boolean condition keys, and {k} is not one (none of kmsfs's keys is; use StringEquals)"
                            ));
                        }
                    };
                    if !fits {
                        return bad(format!(
                            "statement {sid}: {op} does not apply to {k} with values {vals:?}"
                        ));
                    }
                    conds.push((o, k.clone(), vals));
                }
            }
            Ok(Statement {
                sid,
                allow,
                principal,
                actions,
                resources,
                conds,
            })
        });
        Ok(Policy {
            statements: statements.collect::<Result<_, _>>()?,
        })
    }

    /// The default policy of a new key: its owner has full control.
    pub fn default_text(owner_uid: u32) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "OwnerFullControl",
                "Effect": "Allow",
                "Principal": {"Uid": owner_uid.to_string()},
                "Action": "kms:*",
                "Resource": "*"
            }]
        }))
        .unwrap_or_default()
    }
}

fn cond_holds(op: Op, key: &str, want: &[String], req: &Request, deny: bool) -> bool {
    // A condition on something the request does not carry (no executable path readable, no
    // user name): an Allow does not apply (positive operators), a Deny does (fail closed).
    let Some(have) = req.value(key) else {
        if key == "kmsfs:Path" && req.path_unknown {
            return deny;
        }
        return deny || op.negated();
    };
    let any = |f: &dyn Fn(&str, &str) -> bool| have.iter().any(|h| want.iter().any(|w| f(h, w)));
    let num = |f: fn(i64, i64) -> bool| {
        any(&|h, w| matches!((h.parse::<i64>(), w.parse::<i64>()), (Ok(a), Ok(b)) if f(a, b)))
    };
    let date = |f: fn(u64, u64) -> bool| {
        any(&|h, w| matches!((h.parse::<u64>().ok(), parse_date(w)), (Some(a), Some(b)) if f(a, b)))
    };
    match op {
        Op::StringEquals => any(&|h, w| h == w),
        Op::StringNotEquals => !any(&|h, w| h == w),
        Op::StringLike => any(&|h, w| glob(w, h)),
        Op::StringNotLike => !any(&|h, w| glob(w, h)),
        Op::NumericEquals => num(|a, b| a == b),
        Op::NumericNotEquals => !num(|a, b| a == b),
        Op::NumericLessThan => num(|a, b| a < b),
        Op::NumericLessThanEquals => num(|a, b| a <= b),
        Op::NumericGreaterThan => num(|a, b| a > b),
        Op::NumericGreaterThanEquals => num(|a, b| a >= b),
        Op::DateLessThan => date(|a, b| a < b),
        Op::DateLessThanEquals => date(|a, b| a <= b),
        Op::DateGreaterThan => date(|a, b| a > b),
        Op::DateGreaterThanEquals => date(|a, b| a >= b),
        Op::Bool => any(&|h, w| h == w),
    }
}

impl Statement {
    fn matches(&self, req: &Request) -> bool {
        self.principal.matches(&req.who)
            && self.actions.iter().any(|a| glob(a, &req.action))
            && self
                .resources
                .iter()
                .any(|r| r == "*" || req.key.is_some_and(|k| glob(r, &k.to_string())))
            && self
                .conds
                .iter()
                .all(|(op, k, v)| cond_holds(*op, k, v, req, !self.allow))
    }
}

/// A grant: temporary, narrow permission to use one key. Grants only allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub key: KeyId,
    #[serde(default)]
    pub name: String,
    pub grantee: Principal,
    /// Actions (exact names, no wildcards), e.g. `kms:Decrypt`.
    pub operations: Vec<String>,
    /// Path glob the request's path must match.
    #[serde(default)]
    pub path_like: Option<String>,
    /// Encryption-context pairs the request must carry exactly.
    #[serde(default)]
    pub encryption_context_subset: BTreeMap<String, String>,
    /// Unix seconds after which the grant is void.
    #[serde(default)]
    pub expires: Option<u64>,
    pub created: u64,
    /// Who may retire it besides the key's administrators.
    #[serde(default)]
    pub retiring_principal: Option<Principal>,
}

impl Grant {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.operations.is_empty() {
            return bad("a grant needs at least one operation");
        }
        let names_nobody = |p: &Principal| {
            !p.any
                && p.uids.is_empty()
                && p.users.is_empty()
                && p.gids.is_empty()
                && p.groups.is_empty()
        };
        if names_nobody(&self.grantee) {
            return bad("the grant's grantee names nobody (any, uids, users, gids or groups)");
        }
        for (what, p) in [
            ("grantee", Some(&self.grantee)),
            ("retiring_principal", self.retiring_principal.as_ref()),
        ] {
            let Some(p) = p else { continue };
            if [&p.users, &p.groups]
                .iter()
                .any(|l| l.iter().any(|n| n == "*"))
            {
                return bad(format!(
                    "the grant's {what}: names are matched exactly; for anyone write \"any\": true"
                ));
            }
            p.check_names()
                .map_err(|e| PolicyError(format!("the grant's {what}: {}", e.0)))?;
        }
        for o in &self.operations {
            if !ACTIONS.contains(&o.as_str()) {
                return bad(format!(
                    "unknown grant operation {o:?} (grants name exact actions)"
                ));
            }
            if !GRANT_OPERATIONS.contains(&o.as_str()) {
                return bad(format!(
                    "{o} cannot be granted (grants carry only {})",
                    GRANT_OPERATIONS.join(", ")
                ));
            }
        }
        Ok(())
    }

    pub fn matches(&self, req: &Request) -> bool {
        req.key == Some(self.key)
            && self.expires.is_none_or(|e| req.now < e)
            && self.grantee.matches(&req.who)
            && self.operations.iter().any(|o| o == &req.action)
            && self
                .path_like
                .as_ref()
                .is_none_or(|p| req.path.as_ref().is_some_and(|rp| glob(p, rp)))
            && self
                .encryption_context_subset
                .iter()
                .all(|(k, v)| req.encryption_context.get(k) == Some(v))
    }
}

/// What decided a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "kebab-case")]
pub enum Decision {
    ExplicitDeny { sid: String },
    AllowedByPolicy { sid: String },
    AllowedByGrant { grant_id: String },
    ImplicitDeny,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(
            self,
            Decision::AllowedByPolicy { .. } | Decision::AllowedByGrant { .. }
        )
    }
}

/// Evaluates `req` against a key's policy and grants.
pub fn evaluate(policy: &Policy, grants: &[Grant], req: &Request) -> Decision {
    if let Some(s) = policy
        .statements
        .iter()
        .find(|s| !s.allow && s.matches(req))
    {
        return Decision::ExplicitDeny { sid: s.sid.clone() };
    }
    if let Some(s) = policy.statements.iter().find(|s| s.allow && s.matches(req)) {
        return Decision::AllowedByPolicy { sid: s.sid.clone() };
    }
    if let Some(g) = grants.iter().find(|g| g.matches(req)) {
        return Decision::AllowedByGrant {
            grant_id: g.id.clone(),
        };
    }
    Decision::ImplicitDeny
}

/// The lockout check: would `author` still be allowed to change this policy under it?
pub fn lockout_check(
    policy: &Policy,
    author: &Identity,
    key: KeyId,
    now: u64,
) -> Result<(), PolicyError> {
    let req = Request {
        who: author.clone(),
        action: "kms:PutKeyPolicy".into(),
        key: Some(key),
        now,
        ..Default::default()
    };
    match evaluate(policy, &[], &req) {
        Decision::AllowedByPolicy { .. } => Ok(()),
        d => {
            let why = match d {
                Decision::ExplicitDeny { sid } => format!(
                    "statement {sid:?} denies it; a Deny whose condition names a key that \
                     policy changes do not carry, such as kmsfs:Path, matches them too"
                ),
                _ => "no statement allows it".into(),
            };
            bad(format!(
                "this policy would lock you (uid {}) out of changing it again ({why}); include a statement allowing kms:PutKeyPolicy for you, or bypass the lockout check",
                author.uid
            ))
        }
    }
}

#[cfg(test)]
mod tests;
