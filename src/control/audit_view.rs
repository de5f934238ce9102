//! The audit log as JSON Lines: `.kmsfs/audit` (every record) and `keys/<id>/audit` (the
//! records about one key). A handle renders the log when opened and fetches newer records when a
//! read reaches its end. For `tail -f` the file's size must grow with the log: the length of each
//! view is tracked as records are appended, and every new line is pushed to the kernel (with the
//! FUSE writeback cache the kernel keeps a regular file's size itself and ignores the size in
//! later attribute replies).

use std::collections::HashMap;
use std::sync::Mutex;

use super::node::{KeyFile, Node, Top};
use super::{ControlDir, CtlError, CtlResult};
use crate::format::KeyId;
use crate::keymgr::audit::{AuditKeys, AuditRecord, LogPos, read_from};

/// All records (`None`) or those of one key.
type View = Option<KeyId>;

/// How far a reader of a view has got: the newest record it was given and the place in the
/// log after it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ViewPos {
    last_seq: Option<u64>,
    log: Option<LogPos>,
}

/// Tracked length (and the newest sequence number counted) of each view in use.
#[derive(Default)]
pub(super) struct Views {
    lens: Mutex<HashMap<View, (u64, Option<u64>)>>,
}

fn matches(view: Option<KeyId>, r: &AuditRecord) -> bool {
    match view {
        None => true,
        Some(k) => r.resources.key_id.as_deref() == Some(k.to_string().as_str()),
    }
}

fn line(r: &AuditRecord) -> Vec<u8> {
    let mut l = serde_json::to_vec(r).unwrap_or_default();
    l.push(b'\n');
    l
}

impl ControlDir {
    #[cfg(test)]
    pub(super) fn records(&self) -> CtlResult<Vec<AuditRecord>> {
        self.records_from(None).map(|(r, _)| r)
    }

    /// The records after `pos` (all when `None`) and where the log was read to.
    fn records_from(&self, pos: Option<LogPos>) -> CtlResult<(Vec<AuditRecord>, Option<LogPos>)> {
        let Some(log) = self.audit.get() else {
            return Ok((Vec::new(), pos));
        };
        let keys = AuditKeys::new(&self.km.volume_secret());
        let control = log.dir().parent().unwrap_or(log.dir());
        read_from(control, &keys, pos)
            .map(|(r, at)| (r, Some(at)))
            .map_err(|e| CtlError::new(libc::EIO, format!("reading the audit log: {e}")))
    }

    /// The view's lines after `from` (all from the default), and the place after them. Only
    /// the log after `from` is read: following the log costs what was added.
    pub(super) fn view_lines(
        &self,
        view: Option<KeyId>,
        from: ViewPos,
    ) -> CtlResult<(Vec<u8>, ViewPos)> {
        let mut out = Vec::new();
        let mut last = from.last_seq;
        let (records, log) = self.records_from(from.log)?;
        for r in records {
            // After retention removed the segment `from` was in, the log is read from its
            // beginning: what was shown already is not shown again.
            if from.last_seq.is_some_and(|a| r.seq <= a) || !matches(view, &r) {
                continue;
            }
            out.extend_from_slice(&line(&r));
            last = Some(r.seq);
        }
        Ok((
            out,
            ViewPos {
                last_seq: last,
                log,
            },
        ))
    }

    fn view_of(n: &Node) -> Option<Option<KeyId>> {
        match n {
            Node::File(Top::Audit) => Some(None),
            Node::KeyFile(k, KeyFile::Audit) => Some(Some(*k)),
            _ => None,
        }
    }

    /// Starts tracking a view's length (once).
    pub(super) fn init_view(&self, n: &Node) {
        if let Some(v) = Self::view_of(n) {
            self.view_len(v);
        }
    }

    pub(super) fn view_len(&self, view: Option<KeyId>) -> u64 {
        let mut g = self.views.lens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((len, _)) = g.get(&view) {
            return *len;
        }
        let Ok((content, at)) = self.view_lines(view, ViewPos::default()) else {
            return 0;
        };
        let len = content.len() as u64;
        g.insert(view, (len, at.last_seq));
        len
    }

    /// Called by the audit log after each record is written.
    pub(super) fn record_appended(&self, r: &AuditRecord) {
        let mut pushes = Vec::new();
        {
            let mut g = self.views.lens.lock().unwrap_or_else(|p| p.into_inner());
            if r.event == "AuditRetention" {
                // Old segments are about to go: every view shrinks. Lengths are taken afresh
                // at the next use (a reader following the file reopens it, as after a log
                // rotation).
                g.clear();
                return;
            }
            for (view, (len, last)) in g.iter_mut() {
                // Already counted when the view's length was first taken.
                if last.is_some_and(|l| r.seq <= l) || !matches(*view, r) {
                    continue;
                }
                let l = line(r);
                let node = match view {
                    None => Node::File(Top::Audit),
                    Some(k) => Node::KeyFile(*k, KeyFile::Audit),
                };
                pushes.push((self.nodes.ino(&node), *len, l.clone()));
                *len += l.len() as u64;
                *last = Some(r.seq);
            }
        }
        if let Some(f) = self.notify.get() {
            for (ino, off, data) in pushes {
                f(ino, off, data);
            }
        }
    }
}
