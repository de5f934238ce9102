//! Reading and writing control files. Reads render a document when the file is opened, after
//! the key policy allowed it (the access is audited); audit views are read by parts instead
//! (see `audit_view`). Writes are gathered per handle and applied
//! as soon as they form a complete document (a JSON value, or a line for the text files), or at
//! flush; an incomplete or invalid document fails with EINVAL (EACCES when the policy denies) and
//! leaves the previous state in force. The reason is readable in `last-error`.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use serde_json::Value;

use super::audit_view::OpenView;
use super::exec::{Authority, Executor};
use super::node::{KeyFile, Node, Top};
use super::request::{GrantSpec, Request, RuleDoc};
use super::{ControlDir, CtlAttr, CtlError, CtlResult};
use crate::format::KeyId;
use crate::keymgr::audit::{AuditRecord, Source};
use crate::keymgr::policy::Identity;

/// The audit event of a control document that was refused before it became a request.
pub const REFUSED_DOCUMENT_EVENT: &str = "ControlDocumentRefused";

/// `msg` with the content of every quoted string (`"…"` or `` `…` ``, as serde quotes what it
/// read) replaced by `…`.
pub(super) fn without_quoted_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut open: Option<char> = None;
    for c in msg.chars() {
        match open {
            None if c == '"' || c == '`' => {
                open = Some(c);
                out.push(c);
            }
            None => out.push(c),
            Some(q) if q == c => {
                open = None;
                out.push('…');
                out.push(c);
            }
            Some(_) => {}
        }
    }
    if open.is_some() {
        out.push('…');
    }
    out
}

pub(super) struct CtlHandle {
    node: Node,
    who: Identity,
    /// What reads return (rendered at open; the response for `request`).
    content: Mutex<Vec<u8>>,
    /// Bytes written and not yet applied.
    pending: Mutex<Pending>,
    /// For `audit` files (read for): the open view (`content` stays empty).
    view: Option<Mutex<OpenView>>,
    /// Where the last write through the handle ended (its file offset plus its length), and
    /// for `request` that end when the response was made: reads continue from the write
    /// position (`exec 3<>request`), so the response starts at that offset (and at 0 for
    /// `pread`). The offset, not a count of bytes written: a read of the first response moves
    /// the position on, and a second request's response was looked for past its end (until
    /// 2026-12-06).
    written: std::sync::atomic::AtomicU64,
    response_base: std::sync::atomic::AtomicU64,
}

const README: &str = "\
kmsfs control directory: the key manager of this mount, as files.

  status          volume, uptime and counters (JSON)
  metrics         Prometheus text format
  audit           the audit log as JSON Lines (needs kms:ReadAuditLog on the default key;
                  `tail -f audit` follows it)
  rules           key rules as JSON [{\"prefix\": \"/finance\", \"key\": \"alias/finance\"}];
                  write a complete list to replace them
  alerts          anomaly thresholds {\"denials_per_minute\": 20, \"decrypts_per_minute\": 1000}
                  per user; reaching one writes an AnomalyAlert record
  last-error      why your last control write was refused
  request         write one JSON request ({\"op\": \"RotateKeyOnDemand\", \"key\": \"alias/x\"}),
                  read the JSON response from the same open file
  keys/<id>/metadata   DescribeKey (JSON)
  keys/<id>/policy     the key policy; write a complete JSON document to replace it
  keys/<id>/rotation   {\"enabled\": true, \"period_days\": 365}; write to change
  keys/<id>/rotate     write anything to rotate the key now
  keys/<id>/state      the key state; write enable, disable, schedule-deletion [DAYS] or
                       cancel-deletion
  keys/<id>/grants     the key's grants (JSON); write a grant (JSON) to create one, or
                       `revoke GRANT-ID` / `retire GRANT-ID`
  keys/<id>/audit      the audit records about this key (needs kms:ReadAuditLog on it)
  aliases/<name>       symbolic links to keys/<id>

Every access is decided by the key policy of the key concerned (volume-wide files: the default
key) and audited. A refused write fails with EINVAL or EACCES and changes nothing.
";

fn pretty(v: &Value) -> Vec<u8> {
    let mut s = match v {
        Value::String(s) => s.clone(),
        v => serde_json::to_string_pretty(v).unwrap_or_default(),
    };
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s.into_bytes()
}

fn invalid(msg: impl Into<String>) -> CtlError {
    CtlError::new(libc::EINVAL, msg)
}

/// The most a control document may take, in bytes, written through one handle (a request, a
/// policy, a rules list, …; for the text files, one line). The largest legitimate one is a
/// `PutKeyPolicy` request: a policy of at most 32 KiB as an escaped JSON string (at worst six
/// bytes per character), or a long rules list. Beyond it a write fails with EFBIG and the
/// document is dropped.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// The bytes of a handle not yet applied, and how far they were scanned.
#[derive(Default)]
pub(super) struct Pending {
    buf: Vec<u8>,
    scan: JsonScan,
}

impl Pending {
    fn clear(&mut self) {
        // A document may hold imported key material: no copy stays behind.
        zeroize::Zeroize::zeroize(&mut self.buf);
        self.scan = JsonScan::default();
    }
}

/// Where the top-level JSON value of the bytes written so far may end, found by scanning each
/// byte once (strings, escapes and nesting), so that a document written in many small writes is
/// parsed when it can be complete rather than at every write. Also, for the text files, how far
/// the bytes were searched for a newline.
#[derive(Default)]
struct JsonScan {
    /// Scanned as lines (`Some(true)`) or as JSON; a grants file can change from one to the
    /// other between documents, and its scan then starts again.
    text: Option<bool>,
    seen: usize,
    depth: usize,
    in_str: bool,
    escaped: bool,
    /// A top-level value (or something the parser must judge) ended.
    closed: bool,
}

impl JsonScan {
    /// Scans the bytes after those already seen; true when `buf` may hold a complete value.
    fn feed(&mut self, buf: &[u8]) -> bool {
        for &b in buf.get(self.seen..).unwrap_or_default() {
            if self.in_str {
                match b {
                    _ if self.escaped => self.escaped = false,
                    b'\\' => self.escaped = true,
                    b'"' => {
                        self.in_str = false;
                        self.closed |= self.depth == 0;
                    }
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_str = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    self.closed |= self.depth == 0;
                }
                b if b.is_ascii_whitespace() => {}
                // A scalar (or junk) at the top: the parser says which at once.
                _ => self.closed |= self.depth == 0,
            }
        }
        self.seen = buf.len();
        self.closed
    }
}

/// Whether `buf` holds one complete JSON value (`false` while it may still be incomplete).
/// Checked without building the value: the bytes may carry key material (`request`).
fn json_complete(buf: &[u8], last: bool) -> CtlResult<bool> {
    match serde_json::from_slice::<serde::de::IgnoredAny>(buf) {
        Ok(_) => Ok(true),
        Err(e) if e.is_eof() && !last => Ok(false),
        Err(e) if e.is_eof() => Err(invalid(format!("incomplete JSON document: {e}"))),
        Err(e) => Err(invalid(format!("not a valid JSON document: {e}"))),
    }
}

fn state_command(key: &str, line: &str) -> CtlResult<Request> {
    let mut w = line.split_whitespace();
    let key = key.to_string();
    let cmd = w.next().unwrap_or_default().to_ascii_lowercase();
    let arg = w.next();
    if w.next().is_some() {
        return Err(invalid(format!("state: too many words in {line:?}")));
    }
    Ok(match (cmd.as_str(), arg) {
        ("enable" | "enabled", None) => Request::EnableKey { key },
        ("disable" | "disabled", None) => Request::DisableKey { key },
        ("schedule-deletion" | "pendingdeletion" | "pending-deletion", days) => {
            Request::ScheduleKeyDeletion {
                key,
                days: match days {
                    None => crate::keymgr::lifecycle::DELETION_DAYS_DEFAULT,
                    Some(d) => d
                        .parse()
                        .map_err(|_| invalid(format!("state: {d:?} is not a number of days")))?,
                },
            }
        }
        ("cancel-deletion", None) => Request::CancelKeyDeletion { key },
        _ => {
            return Err(invalid(format!(
                "state: unknown command {line:?} (use enable, disable, schedule-deletion [DAYS] or cancel-deletion)"
            )));
        }
    })
}

fn grant_command(key: &str, line: &str) -> CtlResult<Request> {
    let mut w = line.split_whitespace();
    match (w.next(), w.next(), w.next()) {
        (Some("revoke"), Some(id), None) => Ok(Request::RevokeGrant {
            grant_id: id.into(),
        }),
        (Some("retire"), Some(id), None) => Ok(Request::RetireGrant {
            grant_id: id.into(),
        }),
        _ => Err(invalid(format!(
            "grants: {line:?} is neither a JSON grant nor `revoke ID` / `retire ID` (key {key})"
        ))),
    }
}

impl ControlDir {
    fn key_str(k: &KeyId) -> String {
        k.to_string()
    }

    /// The document of a readable file. `who` is `None` for a size estimate: no decision, no
    /// record.
    fn content(&self, n: &Node, who: Option<&Identity>) -> CtlResult<Vec<u8>> {
        self.content_at(n, who).map(|(c, _)| c)
    }

    /// [`ControlDir::content`]; an audit view is opened instead (read by parts, see
    /// `audit_view`).
    fn content_at(
        &self,
        n: &Node,
        who: Option<&Identity>,
    ) -> CtlResult<(Vec<u8>, Option<OpenView>)> {
        let mut at = None;
        let quiet = Executor {
            km: &self.km,
            audit: None,
            tree: &self.tree,
        };
        let run = |req: Request| -> CtlResult<Value> {
            Ok(match who {
                Some(w) => self.execute(w, &req)?,
                None => quiet.execute(&Authority::Passphrase(Identity::default()), &req)?,
            })
        };
        let check = |action: &str, key: Option<KeyId>, event: &str| -> CtlResult<()> {
            match who {
                Some(w) => {
                    Ok(self
                        .executor()
                        .check(&Authority::Policy(w.clone()), action, key, event)?)
                }
                None => Ok(()),
            }
        };
        let content = match n {
            Node::File(Top::Readme) => README.as_bytes().to_vec(),
            Node::File(Top::Status) => {
                check("kms:DescribeVolume", None, "DescribeVolume")?;
                pretty(&self.status())
            }
            Node::File(Top::Metrics) => {
                check("kms:DescribeVolume", None, "DescribeVolume")?;
                self.metrics_text().into_bytes()
            }
            Node::File(Top::Rules) => pretty(&run(Request::ListKeyRules)?),
            Node::File(Top::Alerts) => pretty(&run(Request::GetAlertSettings)?),
            Node::File(Top::LastError) => who
                .and_then(|w| self.last_errors.get(&w.uid).map(|e| e.clone()))
                .unwrap_or_default()
                .into_bytes(),
            Node::File(Top::Request) | Node::KeyFile(_, KeyFile::Rotate) => Vec::new(),
            Node::File(Top::Audit) | Node::KeyFile(_, KeyFile::Audit) => {
                let key = match n {
                    Node::KeyFile(k, _) => Some(*k),
                    _ => None,
                };
                check("kms:ReadAuditLog", key, "ReadAuditLog")?;
                at = Some(self.open_view(key)?);
                Vec::new()
            }
            Node::KeyFile(k, f) => {
                let key = Self::key_str(k);
                match f {
                    KeyFile::Metadata => pretty(&run(Request::DescribeKey { key })?),
                    KeyFile::Policy => pretty(&run(Request::GetKeyPolicy { key })?),
                    KeyFile::Rotation => pretty(&run(Request::GetKeyRotationStatus { key })?),
                    KeyFile::Grants => pretty(&run(Request::ListGrants { key: Some(key) })?),
                    KeyFile::State => {
                        let m = run(Request::DescribeKey { key })?;
                        let state = m["state"].as_str().unwrap_or("Unknown").to_string();
                        match m["deletion_date"].as_u64() {
                            Some(d) => format!(
                                "{state} {}\n",
                                humantime::format_rfc3339_seconds(
                                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(d)
                                )
                            ),
                            None => format!("{state}\n"),
                        }
                        .into_bytes()
                    }
                    KeyFile::Rotate | KeyFile::Audit => Vec::new(),
                }
            }
            _ => return Err(CtlError::new(libc::EISDIR, "is a directory")),
        };
        Ok((content, at))
    }

    /// The document without a decision or record (for `stat` sizes).
    pub(super) fn peek(&self, n: &Node) -> Option<Vec<u8>> {
        self.content(n, None).ok()
    }

    pub fn open(&self, ino: u64, flags: i32, who: Identity) -> CtlResult<u64> {
        let node = self.node(ino)?;
        if node.kind() != super::CtlKind::File {
            return Err(CtlError::new(libc::EISDIR, "is a directory"));
        }
        let acc = flags & libc::O_ACCMODE;
        let (reads, writes) = (acc != libc::O_WRONLY, acc != libc::O_RDONLY);
        if writes && !node.writable() {
            return Err(CtlError::new(libc::EACCES, "read-only control file"));
        }
        if reads && matches!(node, Node::KeyFile(_, KeyFile::Rotate)) {
            return Err(CtlError::new(libc::EACCES, "rotate is write-only"));
        }
        // Writing needs the right to change: refuse at open, so `echo … >` fails at once.
        if writes && let Some((actions, key)) = self.write_actions(&node) {
            self.executor().check_any(
                &Authority::Policy(who.clone()),
                actions,
                key,
                "OpenForWrite",
            )?;
        }
        let (content, view) = if reads && !matches!(node, Node::File(Top::Request)) {
            self.content_at(&node, Some(&who))?
        } else {
            (Vec::new(), None)
        };
        let fh = self.new_fh();
        self.handles.insert(
            fh,
            CtlHandle {
                node,
                who,
                content: Mutex::new(content),
                pending: Mutex::new(Pending::default()),
                view: view.map(Mutex::new),
                written: Default::default(),
                response_base: Default::default(),
            },
        );
        Ok(fh)
    }

    /// The actions of which a writer of `n` needs at least one (each applied document is
    /// authorized again for exactly what it does). `request` and `grants` (a grantee may retire
    /// its grant) are decided per request only.
    fn write_actions(&self, n: &Node) -> Option<(&'static [&'static str], Option<KeyId>)> {
        match n {
            Node::File(Top::Rules) => Some((&["kms:SetKeyRules"], None)),
            Node::File(Top::Alerts) => Some((&["kms:PutAlertSettings"], None)),
            Node::KeyFile(k, KeyFile::Policy) => Some((&["kms:PutKeyPolicy"], Some(*k))),
            Node::KeyFile(k, KeyFile::Rotate) => Some((&["kms:RotateKeyOnDemand"], Some(*k))),
            Node::KeyFile(k, KeyFile::Rotation) => Some((
                &["kms:EnableKeyRotation", "kms:DisableKeyRotation"],
                Some(*k),
            )),
            Node::KeyFile(k, KeyFile::State) => Some((
                &[
                    "kms:EnableKey",
                    "kms:DisableKey",
                    "kms:ScheduleKeyDeletion",
                    "kms:CancelKeyDeletion",
                ],
                Some(*k),
            )),
            _ => None,
        }
    }

    fn handle(&self, fh: u64) -> CtlResult<dashmap::mapref::one::Ref<'_, u64, CtlHandle>> {
        self.handles
            .get(&fh)
            .ok_or_else(|| CtlError::new(libc::EBADF, format!("bad control handle {fh}")))
    }

    pub fn read(&self, fh: u64, off: u64, size: u32) -> CtlResult<Vec<u8>> {
        let h = self.handle(fh)?;
        // An audit view: read by parts; following a growing log (`tail -f`), a read at the end
        // takes in the newer records.
        if let Some(v) = &h.view {
            let mut v = v.lock().unwrap_or_else(|p| p.into_inner());
            return self.read_view(&mut v, off, size);
        }
        let c = h.content.lock().unwrap_or_else(|p| p.into_inner());
        let off = if matches!(h.node, Node::File(Top::Request)) {
            off.saturating_sub(h.response_base.load(Ordering::Relaxed))
        } else {
            off
        };
        let start = (off as usize).min(c.len());
        let end = start.saturating_add(size as usize).min(c.len());
        Ok(c[start..end].to_vec())
    }

    pub fn write(&self, fh: u64, off: u64, data: &[u8]) -> CtlResult<u32> {
        let h = self.handle(fh)?;
        {
            let mut p = h.pending.lock().unwrap_or_else(|p| p.into_inner());
            if p.buf.len().saturating_add(data.len()) > MAX_DOCUMENT_BYTES {
                // The whole document is refused (a later write starts a new one), and the file
                // position does not move.
                p.clear();
                let e = CtlError::new(
                    libc::EFBIG,
                    format!(
                        "a control document may be at most {MAX_DOCUMENT_BYTES} bytes; \
                         this one was dropped"
                    ),
                );
                return Err(self.refuse(&h.who, &h.node, e));
            }
            p.buf.extend_from_slice(data);
        }
        h.written
            .store(off.saturating_add(data.len() as u64), Ordering::Relaxed);
        if let Err(e) = self.apply(&h, false) {
            // A failed write does not move the file position.
            h.response_base.store(off, Ordering::Relaxed);
            return Err(e);
        }
        Ok(data.len() as u32)
    }

    /// Applies what was written and not yet applied (close(2) reports its error).
    pub fn flush(&self, fh: u64) -> CtlResult<()> {
        let h = self.handle(fh)?;
        self.apply(&h, true)
    }

    /// Whether any control file is open.
    pub fn has_open_files(&self) -> bool {
        !self.handles.is_empty()
    }

    pub fn release(&self, fh: u64) {
        if let Some((_, h)) = self.handles.remove(&fh) {
            let _ = self.apply(&h, true);
        }
    }

    /// `O_TRUNC` / truncate(2) to zero on a writable file is accepted (and changes nothing).
    pub fn truncate(&self, ino: u64, size: u64) -> CtlResult<CtlAttr> {
        let n = self.node(ino)?;
        if !n.writable() || size != 0 {
            return Err(CtlError::new(
                libc::EPERM,
                "control files cannot be resized",
            ));
        }
        Ok(self.attr(&n))
    }

    /// A document written to `n` that never became a request (malformed, too large, not
    /// text): the reason goes to the writer's `last-error` and to the audit log (best effort:
    /// nothing was changed, so a record that cannot be written refuses nothing more). Quoted
    /// values are left out of the record: a parser's message may quote what was written, and a
    /// misplaced field can hold key material.
    fn refuse(&self, who: &Identity, n: &Node, e: CtlError) -> CtlError {
        self.last_errors.insert(who.uid, format!("{}\n", e.message));
        self.metrics.control_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(log) = self.audit.get() {
            let mut r = AuditRecord::new(REFUSED_DOCUMENT_EVENT, Source::Kms);
            r.actor = who.clone().into();
            if let Node::KeyFile(k, _) = n {
                r.resources.key_id = Some(k.to_string());
            }
            r.errno = e.errno;
            r.detail = Some(format!(
                "{}: {}",
                n.control_path(),
                without_quoted_values(&e.message)
            ));
            let _ = log.append(r);
        }
        e
    }

    /// Turns the pending bytes of a handle into requests. `last`: no more bytes will come.
    fn apply(&self, h: &CtlHandle, last: bool) -> CtlResult<()> {
        let mut pending = h.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.buf.iter().all(u8::is_ascii_whitespace) {
            pending.clear();
            return Ok(());
        }
        let Pending { buf, scan } = &mut *pending;
        let text_file = match &h.node {
            Node::KeyFile(_, KeyFile::State | KeyFile::Rotate) => true,
            Node::KeyFile(_, KeyFile::Grants) => {
                buf.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
            }
            _ => false,
        };
        if scan.text != Some(text_file) {
            *scan = JsonScan {
                text: Some(text_file),
                ..Default::default()
            };
        }
        let reqs: Vec<Request> = if text_file {
            // Whole lines now; a last line without a newline at flush. What is left after the
            // last newline has none: only the new bytes are searched.
            let new = buf.get(scan.seen..).unwrap_or_default();
            let upto = match new.iter().rposition(|b| *b == b'\n') {
                Some(i) => scan.seen + i + 1,
                None if last => buf.len(),
                None => {
                    scan.seen = buf.len();
                    return Ok(());
                }
            };
            let chunk: Vec<u8> = buf.drain(..upto).collect();
            scan.seen = buf.len();
            let text = String::from_utf8(chunk)
                .map_err(|_| self.refuse(&h.who, &h.node, invalid("not UTF-8 text")))?;
            let lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
            let mut out = Vec::new();
            for line in lines {
                out.push(
                    self.text_request(&h.node, line)
                        .map_err(|e| self.refuse(&h.who, &h.node, e))?,
                );
            }
            out
        } else {
            if !scan.feed(buf) && !last {
                return Ok(());
            }
            let complete = json_complete(buf, last);
            if complete == Ok(false) {
                return Ok(());
            }
            let req = complete.and_then(|_| self.json_request(&h.node, buf));
            pending.clear();
            vec![req.map_err(|e| self.refuse(&h.who, &h.node, e))?]
        };
        drop(pending);
        for req in reqs {
            let r = self.execute(&h.who, &req);
            if matches!(h.node, Node::File(Top::Request)) {
                let resp = match &r {
                    Ok(v) => serde_json::json!({"ok": true, "result": v}),
                    Err(e) => serde_json::json!({"ok": false, "error": e}),
                };
                let mut c = h.content.lock().unwrap_or_else(|p| p.into_inner());
                *c = serde_json::to_vec(&resp).unwrap_or_default();
                c.push(b'\n');
                h.response_base
                    .store(h.written.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            r?;
        }
        Ok(())
    }

    fn text_request(&self, n: &Node, line: &str) -> CtlResult<Request> {
        match n {
            Node::KeyFile(k, KeyFile::State) => state_command(&Self::key_str(k), line),
            Node::KeyFile(k, KeyFile::Rotate) => Ok(Request::RotateKeyOnDemand {
                key: Self::key_str(k),
            }),
            Node::KeyFile(k, KeyFile::Grants) => grant_command(&Self::key_str(k), line),
            _ => Err(invalid("not a text control file")),
        }
    }

    fn json_request(&self, n: &Node, doc: &[u8]) -> CtlResult<Request> {
        let bad = |what: &str, e: serde_json::Error| invalid(format!("{what}: {e}"));
        match n {
            Node::File(Top::Request) => serde_json::from_slice(doc).map_err(|e| bad("request", e)),
            Node::File(Top::Rules) => {
                let rules: Vec<RuleDoc> =
                    serde_json::from_slice(doc).map_err(|e| bad("rules", e))?;
                Ok(Request::PutKeyRules { rules })
            }
            Node::File(Top::Alerts) => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Alerts {
                    #[serde(default)]
                    denials_per_minute: Option<u32>,
                    #[serde(default)]
                    decrypts_per_minute: Option<u32>,
                }
                let a: Alerts = serde_json::from_slice(doc).map_err(|e| bad("alerts", e))?;
                Ok(Request::PutAlertSettings {
                    denials_per_minute: a.denials_per_minute,
                    decrypts_per_minute: a.decrypts_per_minute,
                })
            }
            Node::KeyFile(k, KeyFile::Policy) => {
                // Checked before the document goes through a `Value`, which would keep only
                // the last of two equal keys without a word.
                crate::keymgr::policy::reject_duplicate_keys(doc)
                    .map_err(|e| invalid(e.to_string()))?;
                Ok(Request::PutKeyPolicy {
                    key: Self::key_str(k),
                    policy: serde_json::from_slice::<Value>(doc)
                        .and_then(|v| serde_json::to_string_pretty(&v))
                        .map_err(|e| bad("policy", e))?,
                    bypass_lockout_check: false,
                })
            }
            Node::KeyFile(k, KeyFile::Rotation) => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Rotation {
                    enabled: Option<bool>,
                    period_days: Option<u32>,
                    // What `cat rotation` shows besides: accepted and ignored, so a document
                    // read, edited and written back works.
                    #[serde(default)]
                    #[allow(dead_code)]
                    last_rotation: Option<Value>,
                    #[serde(default)]
                    #[allow(dead_code)]
                    next_rotation: Option<Value>,
                }
                let r: Rotation = serde_json::from_slice(doc).map_err(|e| bad("rotation", e))?;
                Ok(Request::SetKeyRotation {
                    key: Self::key_str(k),
                    enabled: r.enabled,
                    period_days: r.period_days,
                })
            }
            Node::KeyFile(k, KeyFile::Grants) => {
                let grant: GrantSpec = serde_json::from_slice(doc).map_err(|e| bad("grant", e))?;
                Ok(Request::CreateGrant {
                    key: Self::key_str(k),
                    grant,
                })
            }
            _ => Err(CtlError::new(libc::EACCES, "read-only control file")),
        }
    }

    /// `status`: the volume, the mount and its counters.
    fn status(&self) -> Value {
        let (keys, default_key, rules, grants) = self.km.query(|s| {
            let mut by_state = std::collections::BTreeMap::<String, u64>::new();
            for k in &s.keys {
                *by_state.entry(format!("{:?}", k.state)).or_default() += 1;
            }
            (by_state, s.default_key, s.rules.len(), s.grants.len())
        });
        let m = &self.metrics;
        serde_json::json!({
            "volume_id": self.km.volume_id().to_string(),
            "cipher_dir": self.facts.cipher_dir,
            "format_version": self.facts.format_version,
            "block_size": self.facts.block_size,
            "features": self.facts.features,
            "read_only": self.read_only.load(Ordering::Relaxed),
            "acl": self.facts.acl,
            "mounted_at": humantime::format_rfc3339_seconds(self.started_at).to_string(),
            "uptime_seconds": self.uptime(),
            "default_key": default_key.to_string(),
            "keys": keys,
            "rules": rules,
            "grants": grants,
            "audit": self.audit.get().is_some(),
            "counters": {
                "opens": m.opens.load(Ordering::Relaxed),
                "creates": m.creates.load(Ordering::Relaxed),
                "denials": m.denials.load(Ordering::Relaxed),
                "integrity_failures": m.integrity_failures.load(Ordering::Relaxed),
                "control_requests": m.control_requests.load(Ordering::Relaxed),
                "control_errors": m.control_errors.load(Ordering::Relaxed),
            }
        })
    }
}
