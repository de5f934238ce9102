//! The audit log directory `.kmsfs/audit/` (FORMAT.md §9a): segment files of base64url frames,
//! one per line, the `head` checkpoint and the retention `base`. The frame parser
//! (`decode_line`/`decode_lines` in src/keymgr/audit/verify.rs) is private, so this target goes
//! through the public entry points that read a log: `audit::verify` (`kmsfs audit verify`),
//! `audit::read_all` (`kmsfs audit show/export`) and `AuditLog::open` / `expire` (every mount),
//! on a directory written from the input.
//!
//! Input (text), line by line:
//! - `#SEG <n>` starts segment file n (the input starts in segment 1);
//! - `#HEAD` starts the `head` file: the following lines up to the next `#…` marker (`=` alone:
//!   the JSON of the last `K` checkpoint, i.e. a correct head);
//! - `#BASE` likewise starts the retention `base` file; a `Base` JSON whose `signature` is `=` is
//!   signed by the target (and a `prev_chain` of `=` is the chain start the entries use);
//! - `!<k><json>` is an entry the target encodes properly (volume secret of the vectors, chain
//!   continued from the previous entry, sequence number = previous + 1, deterministic nonce),
//!   with kind `k`: `R` record, `C` checkpoint, `S` chain start, `K` a checkpoint whose `seq`,
//!   `chain`, `prev_signature` and `signature` the target fills in correctly from the JSON's
//!   `time`, `segment` and `reason`; any other character is used as the kind byte. `!@<n>;`
//!   before the kind sets the sequence number to n;
//! - any other line is written as it is (a raw frame, or garbage).
//!
//! Checks: nothing panics; `verify` and `read_all` succeed as I/O; a log that verifies clean
//! still verifies clean (given the anchor the session leaves) after a mount session:
//! `AuditLog::open`, one record, `expire` of every closed segment, `close`.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kmsfs::crypto::{Aead, Key256, SignKey, hex, hkdf_subkey, hmac_sha256};
use kmsfs::keymgr::audit::{
    AuditKeys, AuditLog, AuditRecord, BASE_FILE, Base, Checkpoint, Source, read_all, segment_name,
    verify,
};
use kmsfs_fuzz::{VOLUME_SECRET, fresh_dir, key, write};
use libfuzzer_sys::fuzz_target;

struct Keys {
    enc: Aead,
    chain: Key256,
    sign: SignKey,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let s = key(VOLUME_SECRET);
    Keys {
        enc: Aead::new(&hkdf_subkey(&s, b"", "kmsfs/v1/audit-encryption")),
        chain: hkdf_subkey(&s, b"", "kmsfs/v1/audit-chain"),
        sign: SignKey::from_seed(&hkdf_subkey(&s, b"", "kmsfs/v1/audit-checkpoint-signing")),
    }
});

/// Encodes a frame line as src/keymgr/audit/writer.rs does (FORMAT.md §9a).
fn frame(seq: u64, kind: u8, json: &[u8], prev: &[u8; 32]) -> (String, [u8; 32]) {
    let mut f = seq.to_be_bytes().to_vec();
    f.push(kind);
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&seq.to_be_bytes());
    let sealed = KEYS.enc.seal_with_nonce(&nonce, &f.clone(), json);
    f.extend_from_slice(&sealed);
    let chain = hmac_sha256(&KEYS.chain, &[prev, &f]);
    f.extend_from_slice(&chain);
    (B64.encode(&f), chain)
}

struct Builder {
    seq: u64,
    chain: [u8; 32],
    last_sig: String,
    last_checkpoint: Option<Vec<u8>>,
}

impl Builder {
    fn line(&mut self, segment: u64, l: &[u8]) -> Vec<u8> {
        let Some(mut rest) = l.strip_prefix(b"!") else {
            return l.to_vec();
        };
        if let Some(r) = rest.strip_prefix(b"@") {
            let end = r.iter().position(|c| *c == b';').unwrap_or(r.len());
            if let Some(n) = std::str::from_utf8(&r[..end])
                .ok()
                .and_then(|s| s.parse().ok())
            {
                self.seq = n;
            }
            rest = r.get(end + 1..).unwrap_or_default();
        }
        let Some((&k, json)) = rest.split_first() else {
            return l.to_vec();
        };
        let kind = match k {
            b'R' => 1,
            b'C' | b'K' => 2,
            b'S' => 3,
            other => other,
        };
        let mut json = json.to_vec();
        if k == b'K' {
            #[derive(serde::Deserialize)]
            struct Partial {
                time: String,
                segment: Option<u64>,
                reason: String,
            }
            if let Ok(p) = serde_json::from_slice::<Partial>(&json) {
                let seg = p.segment.unwrap_or(segment);
                let chain = hex::encode(&self.chain);
                let sig = hex::encode(&KEYS.sign.sign(&Checkpoint::signed_bytes(
                    self.seq,
                    seg,
                    &chain,
                    &self.last_sig,
                )));
                let c = Checkpoint {
                    seq: self.seq,
                    time: p.time,
                    segment: seg,
                    chain,
                    prev_signature: self.last_sig.clone(),
                    signature: sig.clone(),
                    reason: p.reason,
                    offset: None,
                };
                self.last_sig = sig;
                json = serde_json::to_vec(&c).unwrap();
                self.last_checkpoint = Some(json.clone());
            }
        }
        let (line, chain) = frame(self.seq, kind, &json, &self.chain);
        self.chain = chain;
        self.seq = self.seq.wrapping_add(1);
        line.into_bytes()
    }
}

/// Signs a `base` as src/keymgr/audit/retention.rs does.
fn sign_base(b: &mut Base) {
    let mut m = b"kmsfs audit base v1\n".to_vec();
    m.extend_from_slice(&b.segment.to_be_bytes());
    m.extend_from_slice(&b.seq.to_be_bytes());
    for s in [&b.prev_chain, &b.prev_signature, &b.time] {
        m.extend_from_slice(s.as_bytes());
        m.push(b'\n');
    }
    b.signature = hex::encode(&KEYS.sign.sign(&m));
}

enum Section {
    Segment(u64),
    Head,
    Base,
}

fn build(control: &Path, data: &[u8]) {
    let dir = control.join("audit");
    std::fs::create_dir_all(&dir).unwrap();
    let initial = hmac_sha256(&KEYS.chain, &[b"kmsfs audit chain start v1"]);
    let mut b = Builder {
        seq: 0,
        chain: initial,
        last_sig: String::new(),
        last_checkpoint: None,
    };
    let mut files: Vec<(u64, Vec<u8>)> = vec![(1, Vec::new())];
    let (mut head, mut base) = (None::<Vec<u8>>, None::<Vec<u8>>);
    let mut section = Section::Segment(1);
    for l in data.split_inclusive(|c| *c == b'\n') {
        let body = l.strip_suffix(b"\n").unwrap_or(l);
        if let Some(n) = body.strip_prefix(b"#SEG ") {
            if let Some(n) = std::str::from_utf8(n)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                files.push((n, Vec::new()));
                section = Section::Segment(n);
                continue;
            }
        }
        match body {
            b"#HEAD" => {
                section = Section::Head;
                head.get_or_insert_default();
                continue;
            }
            b"#BASE" => {
                section = Section::Base;
                base.get_or_insert_default();
                continue;
            }
            _ => {}
        }
        match section {
            Section::Segment(n) => {
                let out = b.line(n, body);
                let f = &mut files.last_mut().unwrap().1;
                f.extend_from_slice(&out);
                f.extend_from_slice(&l[body.len()..]);
            }
            Section::Head => head.as_mut().unwrap().extend_from_slice(l),
            Section::Base => base.as_mut().unwrap().extend_from_slice(l),
        }
    }
    let only_implicit = files.len() == 1;
    for (i, (n, bytes)) in files.into_iter().enumerate() {
        // The implicit first segment exists only if it has lines (or is the only one).
        if i == 0 && bytes.is_empty() && !only_implicit {
            continue;
        }
        // A later `#SEG` with the same number appends.
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(segment_name(n)))
            .unwrap()
            .write_all(&bytes)
            .unwrap();
    }
    if let Some(h) = head {
        match (h.trim_ascii(), &b.last_checkpoint) {
            (b"=", Some(c)) => write(&dir.join("head"), c),
            _ => write(&dir.join("head"), &h),
        }
    }
    if let Some(raw) = base {
        // A base whose signature is "=" is signed here; a prev_chain of "=" is the chain value
        // the first entry above was chained to.
        match serde_json::from_slice::<Base>(&raw) {
            Ok(mut bs) if bs.signature == "=" => {
                if bs.prev_chain == "=" {
                    bs.prev_chain = hex::encode(&initial);
                }
                sign_base(&mut bs);
                write(
                    &dir.join(BASE_FILE),
                    &serde_json::to_vec_pretty(&bs).unwrap(),
                );
            }
            _ => write(&dir.join(BASE_FILE), &raw),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let control = fresh_dir("control");
    build(&control, data);
    let keys = || AuditKeys::new(&key(VOLUME_SECRET));
    let report = verify(&control, &keys(), None).expect("verify (I/O)");
    let _ = read_all(&control, &keys()).expect("read_all (I/O)");
    if data.len() > 64 * 1024 {
        return;
    }
    // A mount session on this log, with retention removing every closed segment.
    let Ok(log) = AuditLog::open(&control, keys()) else {
        return;
    };
    let _ = log.append(AuditRecord::new("Open", Source::Fs));
    let cutoff = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1 << 33);
    let _ = log.expire(kmsfs::keymgr::audit::Expiry::by_age(cutoff, 1));
    let _ = log.close();
    let anchor = log.anchor();
    drop(log);
    let after = verify(&control, &keys(), anchor.as_ref()).expect("verify (I/O)");
    if report.ok() {
        assert!(
            after.ok(),
            "a clean log is no longer clean after a mount session: {:?}",
            after.findings
        );
    }
});
