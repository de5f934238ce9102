//! The audit log as JSON Lines: `.kmsfs/audit` (every record) and `keys/<id>/audit` (the
//! records about one key). An open view is not kept rendered: opening it scans the log and
//! remembers, every [`INDEX_EVERY`] records, the offset in the view and the place in the log
//! there; a read renders only the part asked for from the nearest such place, and a read at the
//! end reads only the records added since. What an open learned is kept per view for the next
//! open (and the first `stat`), which then scans only the records added since: the whole log is
//! read once per mount, not once per open (until retention shortens it). For `tail -f` the
//! file's size must grow with the log: the length of each view is tracked as records are
//! appended, and every new line is pushed to the kernel (with the FUSE writeback cache the
//! kernel keeps a regular file's size itself and ignores the size in later attribute replies).

use std::collections::HashMap;
use std::sync::Mutex;

use super::node::{KeyFile, Node, Top};
use super::{ControlDir, CtlError, CtlResult};
use crate::format::KeyId;
use crate::keymgr::audit::{AuditKeys, AuditRecord, LogPos, Scan, scan_from};

/// All records (`None`) or those of one key.
type View = Option<KeyId>;

/// How far a reader of a view has got: the newest record it was given and the place in the
/// log after it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ViewPos {
    last_seq: Option<u64>,
    log: Option<LogPos>,
}

/// Records of a view between two places an open view remembers.
const INDEX_EVERY: u64 = 512;
/// A read renders at least this much of the view (the next reads of `cat` are then served
/// from it).
const RENDER_AT_LEAST: usize = 256 * 1024;

/// Where the parts of a view are in the log, as far as it has been scanned.
#[derive(Debug, Clone)]
struct ViewIndex {
    /// (offset in the view, the place in the log before the record at that offset, and that
    /// record's sequence number), every [`INDEX_EVERY`] records, the first at 0.
    index: Vec<(u64, ViewPos, Option<u64>)>,
    /// The view's length so far, its records, and the place after the last record scanned.
    len: u64,
    records: u64,
    end: ViewPos,
}

impl ViewIndex {
    fn new() -> ViewIndex {
        ViewIndex {
            index: vec![(0, ViewPos::default(), None)],
            len: 0,
            records: 0,
            end: ViewPos::default(),
        }
    }
}

/// An open audit view (see the module documentation).
pub(super) struct OpenView {
    view: View,
    idx: ViewIndex,
    /// The part rendered last: its offset in the view and its bytes.
    cache: (u64, Vec<u8>),
}

/// Tracked length (and the newest sequence number counted) of each view in use, and the index
/// of each view opened so far.
#[derive(Default)]
pub(super) struct Views {
    lens: Mutex<HashMap<View, (u64, Option<u64>)>>,
    indexes: Mutex<Indexes>,
    /// Records read by the scans that build indexes (tests check that a second open reads
    /// only the new ones).
    #[cfg(test)]
    pub(super) scanned: std::sync::atomic::AtomicU64,
}

/// The indexes kept between opens, and how many times retention made them all stale (an
/// index scanned across a retention is not kept).
#[derive(Default)]
struct Indexes {
    generation: u64,
    by_view: HashMap<View, ViewIndex>,
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
    pub(crate) fn records(&self) -> CtlResult<Vec<AuditRecord>> {
        let mut out = Vec::new();
        self.scan(None, |r, _| {
            out.push(r);
            true
        })?;
        Ok(out)
    }

    /// [`scan_from`] over the mounted volume's log (nothing when there is none).
    fn scan(
        &self,
        pos: Option<LogPos>,
        f: impl FnMut(AuditRecord, LogPos) -> bool,
    ) -> CtlResult<Scan> {
        let Some(log) = self.audit.get() else {
            return Ok(Scan {
                end: pos.unwrap_or(LogPos {
                    segment: 0,
                    offset: 0,
                }),
                restarted: false,
            });
        };
        let keys = AuditKeys::new(&self.km.volume_secret());
        let control = log.dir().parent().unwrap_or(log.dir());
        scan_from(control, &keys, pos, f)
            .map_err(|e| CtlError::new(libc::EIO, format!("reading the audit log: {e}")))
    }

    /// Opens a view: its length and where to start reading each part of it, from the index
    /// an earlier open left and the records added since.
    pub(super) fn open_view(&self, view: View) -> CtlResult<OpenView> {
        Ok(OpenView {
            view,
            idx: self.indexed(view)?,
            cache: (0, Vec::new()),
        })
    }

    /// The index of a view up to the end of the log; kept for the next caller unless
    /// retention shortened the log meanwhile.
    fn indexed(&self, view: View) -> CtlResult<ViewIndex> {
        let (generation, mut idx) = {
            let g = self.views.indexes.lock().unwrap_or_else(|p| p.into_inner());
            let idx = g.by_view.get(&view).cloned();
            (g.generation, idx.unwrap_or_else(ViewIndex::new))
        };
        if self.extend_index(view, &mut idx, None)? {
            // The kept index pointed into a segment that is gone: build it afresh.
            idx = ViewIndex::new();
            self.extend_index(view, &mut idx, None)?;
        }
        let mut g = self.views.indexes.lock().unwrap_or_else(|p| p.into_inner());
        let further = g
            .by_view
            .get(&view)
            .is_none_or(|kept| kept.end.last_seq < idx.end.last_seq);
        if g.generation == generation && further {
            g.by_view.insert(view, idx.clone());
        }
        Ok(idx)
    }

    /// Forgets every kept index (retention removed, or is about to remove, old segments).
    fn forget_indexes(&self) {
        let mut g = self.views.indexes.lock().unwrap_or_else(|p| p.into_inner());
        g.generation += 1;
        g.by_view.clear();
    }

    /// Adds the records after the index's end (and their lines to `keep`, when given). True
    /// when the index's end was in a segment that is gone (the scan then started at the
    /// beginning of the log, passing over the records it had counted).
    fn extend_index(
        &self,
        view: View,
        idx: &mut ViewIndex,
        mut keep: Option<&mut Vec<u8>>,
    ) -> CtlResult<bool> {
        let from = idx.end;
        let mut last = from.last_seq;
        let mut before = from;
        let scan = self.scan(from.log, |r, after| {
            if from.last_seq.is_some_and(|a| r.seq <= a) {
                return true;
            }
            #[cfg(test)]
            self.views
                .scanned
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            last = Some(r.seq);
            if matches(view, &r) {
                if idx.records == 0 {
                    idx.index[0].2 = Some(r.seq);
                } else if idx.records.is_multiple_of(INDEX_EVERY) {
                    idx.index.push((idx.len, before, Some(r.seq)));
                }
                let l = line(&r);
                idx.len += l.len() as u64;
                idx.records += 1;
                if let Some(k) = keep.as_deref_mut() {
                    k.extend_from_slice(&l);
                }
            }
            before = ViewPos {
                last_seq: last,
                log: Some(after),
            };
            true
        })?;
        idx.end = ViewPos {
            last_seq: last,
            log: Some(scan.end),
        };
        Ok(scan.restarted)
    }

    /// Adds the records after the open view's end, their lines as the cached part.
    fn extend_view(&self, v: &mut OpenView) -> CtlResult<()> {
        let start = v.idx.len;
        let mut bytes = Vec::new();
        self.extend_index(v.view, &mut v.idx, Some(&mut bytes))?;
        if !bytes.is_empty() {
            v.cache = (start, bytes);
        }
        Ok(())
    }

    /// Bytes `[off, off + size)` of an open view; a read at its end first takes in the records
    /// added since.
    pub(super) fn read_view(&self, v: &mut OpenView, off: u64, size: u32) -> CtlResult<Vec<u8>> {
        if off >= v.idx.len {
            self.extend_view(v)?;
        }
        let end = v.idx.len.min(off.saturating_add(u64::from(size)));
        if off >= end {
            return Ok(Vec::new());
        }
        let (c_off, c) = &v.cache;
        if !(off >= *c_off && end <= c_off + c.len() as u64) {
            self.render_part(v, off, end)?;
        }
        let (c_off, c) = &v.cache;
        Ok(c[(off - c_off) as usize..(end - c_off) as usize].to_vec())
    }

    /// Renders the view from the remembered place at or before `off` until `end` (and at
    /// least [`RENDER_AT_LEAST`] bytes, within the view's length) into the cache.
    fn render_part(&self, v: &mut OpenView, off: u64, end: u64) -> CtlResult<()> {
        let i = v
            .idx
            .index
            .partition_point(|(o, _, _)| *o <= off)
            .saturating_sub(1);
        let (start, pos, first_seq) = v.idx.index[i];
        let stop = v.idx.len.min(end.max(start + RENDER_AT_LEAST as u64));
        let mut bytes = Vec::new();
        let mut first = None;
        let view = v.view;
        let scan = self.scan(pos.log, |r, _| {
            if pos.last_seq.is_some_and(|a| r.seq <= a) {
                return true;
            }
            if matches(view, &r) {
                first.get_or_insert(r.seq);
                bytes.extend_from_slice(&line(&r));
            }
            start + (bytes.len() as u64) < stop
        })?;
        // The part must start with the record that was there at open: retention may have
        // removed it (and everything before) since.
        if scan.restarted || first != first_seq || start + (bytes.len() as u64) < end {
            return Err(CtlError::new(
                libc::EIO,
                "the audit log was shortened (retention) while this view was open: open it again",
            ));
        }
        bytes.truncate((stop - start) as usize);
        v.cache = (start, bytes);
        Ok(())
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
        if let Some((len, _)) = self.tracked(view) {
            return len;
        }
        // The long scan without the lock that every audited operation takes after writing its
        // record (they would all wait for it)...
        if self.indexed(view).is_err() {
            return 0;
        }
        let mut g = self.views.lens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((len, _)) = g.get(&view) {
            return *len;
        }
        // ...and under it only the records appended since, so that none is missed or counted
        // twice.
        let Ok(idx) = self.indexed(view) else {
            return 0;
        };
        g.insert(view, (idx.len, idx.end.last_seq));
        idx.len
    }

    fn tracked(&self, view: View) -> Option<(u64, Option<u64>)> {
        let g = self.views.lens.lock().unwrap_or_else(|p| p.into_inner());
        g.get(&view).copied()
    }

    /// Retention removes (or removed) old segments: every view's length is taken afresh at its
    /// next use. The log tells the views with its `AuditRetention` record, once when it is
    /// written and once more after the files are gone (a length measured in between would
    /// stay too long).
    pub fn audit_shortened(&self) {
        self.views
            .lens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.forget_indexes();
    }

    /// Called by the audit log after each record is written.
    pub(super) fn record_appended(&self, r: &AuditRecord) {
        if r.event == "AuditRetention" {
            // Every view shrinks (a reader following the file reopens it, as after a log
            // rotation).
            self.audit_shortened();
            return;
        }
        let mut pushes = Vec::new();
        {
            let mut g = self.views.lens.lock().unwrap_or_else(|p| p.into_inner());
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
