//! The control directory's tree: which names exist, their inode numbers and attributes.
//! Inode numbers are handed out on first sight and stay fixed for the life of the mount.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use super::{CONTROL_NAME, ControlDir, CtlError, CtlResult, INO_BIT};
use crate::format::KeyId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Top {
    Readme,
    Status,
    Metrics,
    Audit,
    Rules,
    LastError,
    Request,
    Alerts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFile {
    Metadata,
    Policy,
    Rotation,
    Rotate,
    State,
    Grants,
    Audit,
}

pub const TOP_FILES: &[(&str, Top)] = &[
    ("README", Top::Readme),
    ("status", Top::Status),
    ("metrics", Top::Metrics),
    ("audit", Top::Audit),
    ("rules", Top::Rules),
    ("last-error", Top::LastError),
    ("request", Top::Request),
    ("alerts", Top::Alerts),
];

pub const KEY_FILES: &[(&str, KeyFile)] = &[
    ("metadata", KeyFile::Metadata),
    ("policy", KeyFile::Policy),
    ("rotation", KeyFile::Rotation),
    ("rotate", KeyFile::Rotate),
    ("state", KeyFile::State),
    ("grants", KeyFile::Grants),
    ("audit", KeyFile::Audit),
];

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    Root,
    File(Top),
    KeysDir,
    KeyDir(KeyId),
    KeyFile(KeyId, KeyFile),
    AliasesDir,
    /// `alias/NAME` as the symlink `aliases/NAME`.
    Alias(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtlKind {
    Dir,
    File,
    Symlink,
}

/// Attributes of a control node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtlAttr {
    pub ino: u64,
    pub kind: CtlKind,
    pub size: u64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlEntry {
    pub ino: u64,
    pub kind: CtlKind,
    pub name: String,
}

/// Node → inode, inode → node, next number.
type Tables = (HashMap<Node, u64>, HashMap<u64, Node>, u64);

pub struct NodeTable {
    inner: Mutex<Tables>,
}

impl NodeTable {
    pub fn new() -> Self {
        let t = NodeTable {
            inner: Mutex::new((HashMap::new(), HashMap::new(), 1)),
        };
        t.ino(&Node::Root);
        t
    }

    pub fn ino(&self, n: &Node) -> u64 {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = g.0.get(n) {
            return *i;
        }
        let i = g.2 | INO_BIT;
        g.2 += 1;
        g.0.insert(n.clone(), i);
        g.1.insert(i, n.clone());
        i
    }

    pub fn node(&self, ino: u64) -> Option<Node> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.1.get(&ino).cloned()
    }
}

fn enoent(what: &str) -> CtlError {
    CtlError::new(libc::ENOENT, format!("no {what} in the control directory"))
}

impl Node {
    pub fn kind(&self) -> CtlKind {
        match self {
            Node::Root | Node::KeysDir | Node::KeyDir(_) | Node::AliasesDir => CtlKind::Dir,
            Node::Alias(_) => CtlKind::Symlink,
            _ => CtlKind::File,
        }
    }

    /// Permission bits: writable files are open to everyone, because key policies (not mode
    /// bits) decide who may change what. The listings of `keys/` and `aliases/` (every key id
    /// and alias name) cannot be decided per caller (the kernel keeps one cached listing of a
    /// directory for all users, see `fuse`), so only the mount's owner may list them; others
    /// reach a key or alias they know by name, and list keys with `ListKeys` (decided by the
    /// key policy).
    fn perm(&self) -> u16 {
        match self {
            Node::KeysDir | Node::AliasesDir => 0o711,
            Node::Root | Node::KeyDir(_) => 0o555,
            Node::Alias(_) => 0o777,
            Node::File(Top::Rules | Top::Request | Top::Alerts)
            | Node::KeyFile(_, KeyFile::Policy | KeyFile::Rotation | KeyFile::State)
            | Node::KeyFile(_, KeyFile::Grants) => 0o666,
            Node::KeyFile(_, KeyFile::Rotate) => 0o222,
            _ => 0o444,
        }
    }

    pub fn writable(&self) -> bool {
        self.perm() & 0o222 != 0 && self.kind() == CtlKind::File
    }

    /// The node's path from the mount's root (`.kmsfs/keys/<id>/policy`), for records.
    pub fn control_path(&self) -> String {
        let top = |t: &Top| {
            TOP_FILES
                .iter()
                .find(|(_, x)| x == t)
                .map_or("?", |(n, _)| n)
        };
        let key_file = |f: &KeyFile| {
            KEY_FILES
                .iter()
                .find(|(_, x)| x == f)
                .map_or("?", |(n, _)| n)
        };
        match self {
            Node::Root => CONTROL_NAME.to_string(),
            Node::File(t) => format!("{CONTROL_NAME}/{}", top(t)),
            Node::KeysDir => format!("{CONTROL_NAME}/keys"),
            Node::KeyDir(k) => format!("{CONTROL_NAME}/keys/{k}"),
            Node::KeyFile(k, f) => format!("{CONTROL_NAME}/keys/{k}/{}", key_file(f)),
            Node::AliasesDir => format!("{CONTROL_NAME}/aliases"),
            Node::Alias(a) => format!(
                "{CONTROL_NAME}/aliases/{}",
                a.strip_prefix("alias/").unwrap_or(a)
            ),
        }
    }
}

impl ControlDir {
    pub(super) fn node(&self, ino: u64) -> CtlResult<Node> {
        let n = self
            .nodes
            .node(ino)
            .ok_or_else(|| CtlError::new(libc::ESTALE, format!("stale control inode {ino}")))?;
        // A key that was removed from the store is gone from the tree.
        match &n {
            Node::KeyDir(k) | Node::KeyFile(k, _) if self.km.query(|s| s.key(k).is_none()) => {
                Err(enoent("such key"))
            }
            _ => Ok(n),
        }
    }

    pub fn root_ino(&self) -> u64 {
        self.nodes.ino(&Node::Root)
    }

    /// The directories whose listing follows the key store (`keys/`, `aliases/`).
    pub fn store_dirs(&self) -> [u64; 2] {
        [
            self.nodes.ino(&Node::KeysDir),
            self.nodes.ino(&Node::AliasesDir),
        ]
    }

    pub fn attr(&self, n: &Node) -> CtlAttr {
        let size = match n {
            Node::Alias(a) => self.alias_target(a).map_or(0, |t| t.len() as u64),
            Node::File(Top::Audit) => self.view_len(None),
            Node::KeyFile(k, KeyFile::Audit) => self.view_len(Some(*k)),
            Node::File(Top::Request | Top::LastError) | Node::KeyFile(_, KeyFile::Rotate) => 0,
            Node::File(_) | Node::KeyFile(..) => self.peek(n).map_or(0, |c| c.len() as u64),
            _ => 0,
        };
        CtlAttr {
            ino: self.nodes.ino(n),
            kind: n.kind(),
            size,
            perm: n.perm(),
            uid: self.uid,
            gid: self.gid,
            mtime: self.started_at,
        }
    }

    pub fn getattr(&self, ino: u64) -> CtlResult<CtlAttr> {
        Ok(self.attr(&self.node(ino)?))
    }

    /// The control directory itself, as seen from the mount root.
    pub fn root_attr(&self) -> CtlAttr {
        self.attr(&Node::Root)
    }

    fn alias_target(&self, name: &str) -> Option<String> {
        let full = format!("{}{name}", crate::keymgr::lifecycle::ALIAS_PREFIX);
        self.km
            .query(|s| s.aliases.get(&full).copied())
            .map(|k| format!("../keys/{k}"))
    }

    pub fn lookup(&self, parent: u64, name: &str) -> CtlResult<CtlAttr> {
        let p = self.node(parent)?;
        let child = match (&p, name) {
            (Node::Root, "keys") => Node::KeysDir,
            (Node::Root, "aliases") => Node::AliasesDir,
            (Node::Root, n) => TOP_FILES
                .iter()
                .find(|(f, _)| *f == n)
                .map(|(_, t)| Node::File(*t))
                .ok_or_else(|| enoent(n))?,
            (Node::KeysDir, n) => {
                let id: KeyId = n.parse().map_err(|_| enoent("such key"))?;
                if self.km.query(|s| s.key(&id).is_none()) {
                    return Err(enoent("such key"));
                }
                Node::KeyDir(id)
            }
            (Node::KeyDir(k), n) => KEY_FILES
                .iter()
                .find(|(f, _)| *f == n)
                .map(|(_, f)| Node::KeyFile(*k, *f))
                .ok_or_else(|| enoent(n))?,
            (Node::AliasesDir, n) => {
                self.alias_target(n).ok_or_else(|| enoent("such alias"))?;
                Node::Alias(n.to_string())
            }
            _ => return Err(CtlError::new(libc::ENOTDIR, "not a directory")),
        };
        if matches!(
            child,
            Node::File(Top::Audit) | Node::KeyFile(_, KeyFile::Audit)
        ) {
            self.init_view(&child);
        }
        Ok(self.attr(&child))
    }

    /// A directory's entries, `.` and `..` first. `parent_of_root` is the mount root's inode.
    pub fn list(&self, ino: u64, parent_of_root: u64) -> CtlResult<Vec<CtlEntry>> {
        let n = self.node(ino)?;
        let dir = |ino: u64, name: &str| CtlEntry {
            ino,
            kind: CtlKind::Dir,
            name: name.into(),
        };
        let entry = |n: Node, name: &str| CtlEntry {
            ino: self.nodes.ino(&n),
            kind: n.kind(),
            name: name.into(),
        };
        let root = self.root_ino();
        let mut out = vec![dir(ino, ".")];
        match &n {
            Node::Root => {
                out.push(dir(parent_of_root, ".."));
                for (name, t) in TOP_FILES {
                    out.push(entry(Node::File(*t), name));
                }
                out.push(entry(Node::KeysDir, "keys"));
                out.push(entry(Node::AliasesDir, "aliases"));
            }
            Node::KeysDir => {
                out.push(dir(root, ".."));
                for id in self
                    .km
                    .query(|s| s.keys.iter().map(|k| k.id).collect::<Vec<_>>())
                {
                    out.push(entry(Node::KeyDir(id), &id.to_string()));
                }
            }
            Node::KeyDir(k) => {
                out.push(dir(self.nodes.ino(&Node::KeysDir), ".."));
                for (name, f) in KEY_FILES {
                    out.push(entry(Node::KeyFile(*k, *f), name));
                }
            }
            Node::AliasesDir => {
                out.push(dir(root, ".."));
                let names: Vec<String> = self.km.query(|s| s.aliases.keys().cloned().collect());
                for a in names {
                    let short = a
                        .strip_prefix(crate::keymgr::lifecycle::ALIAS_PREFIX)
                        .unwrap_or(&a)
                        .to_string();
                    // Names with a slash cannot be one directory entry; they are still usable
                    // by key id and through `request`.
                    if !short.contains('/') {
                        out.push(entry(Node::Alias(short.clone()), &short));
                    }
                }
            }
            _ => return Err(CtlError::new(libc::ENOTDIR, "not a directory")),
        }
        Ok(out)
    }

    pub fn readlink(&self, ino: u64) -> CtlResult<Vec<u8>> {
        match self.node(ino)? {
            Node::Alias(a) => self
                .alias_target(&a)
                .map(String::into_bytes)
                .ok_or_else(|| enoent("such alias")),
            _ => Err(CtlError::new(libc::EINVAL, "not a symbolic link")),
        }
    }

    /// Whether `name` in the mount root is the control directory.
    pub fn is_root_name(name: &[u8]) -> bool {
        name == CONTROL_NAME.as_bytes()
    }
}
