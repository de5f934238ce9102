//! The plaintext of an xattr pack: the small `user.*` extended attributes of one file, kept
//! together in one backing xattr (encrypted by `names`; docs/FORMAT.md §7). One entry per
//! attribute, in the order they were first set:
//!
//! ```text
//! name length (u8, 1..=255) ‖ name (the part after "user.") ‖ value length (u32 BE) ‖ value
//! ```
//!
//! Names are unique; nothing follows the last entry.

use std::borrow::Cow;

use super::FormatError;

/// The full name of an attribute from the name it is stored under: for `user.` attributes the
/// part after `user.`, for the other namespaces a zero byte and the full name (no `user.` name
/// holds a zero byte). docs/FORMAT.md §7.
pub fn full_name(stored: &[u8]) -> Cow<'_, [u8]> {
    match stored.strip_prefix(&[0u8]) {
        Some(full) => Cow::Borrowed(full),
        None => Cow::Owned([&b"user."[..], stored].concat()),
    }
}

/// The backing namespace a node's kmsfs attributes are kept in (docs/FORMAT.md §7). Regular
/// files and directories use `user.`; symlinks and special files, which Linux gives no `user.`
/// attributes, use `trusted.` under the same names after the prefix (which needs root).
/// Encryption always sees a name's `user.` form (the value's associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingNamespace {
    User,
    Trusted,
}

impl BackingNamespace {
    /// The namespace of a node: `user.` for a regular file or directory, else `trusted.`.
    pub fn of(file_or_dir: bool) -> Self {
        if file_or_dir {
            BackingNamespace::User
        } else {
            BackingNamespace::Trusted
        }
    }

    pub fn prefix(self) -> &'static [u8] {
        match self {
            BackingNamespace::User => b"user.",
            BackingNamespace::Trusted => b"trusted.",
        }
    }

    /// The backing name of an attribute named `name` in its `user.` form.
    pub fn backing(self, name: &[u8]) -> Cow<'_, [u8]> {
        match name.strip_prefix(b"user.") {
            Some(rest) if self == BackingNamespace::Trusted => {
                Cow::Owned([self.prefix(), rest].concat())
            }
            _ => Cow::Borrowed(name),
        }
    }

    /// The `user.` form of a backing name listed on a node (`None`: not in this namespace).
    pub fn logical(self, raw: &[u8]) -> Option<Cow<'_, [u8]>> {
        let rest = raw.strip_prefix(self.prefix())?;
        Some(match self {
            BackingNamespace::User => Cow::Borrowed(raw),
            BackingNamespace::Trusted => Cow::Owned([&b"user."[..], rest].concat()),
        })
    }
}

const WHAT: &str = "xattr pack";

/// The attributes of one file's pack: (name after `user.`, value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XattrPack {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl XattrPack {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().map(|(n, _)| n.as_slice())
    }

    /// Sets `name` (kept in its place if present, added at the end if not). `name` must be
    /// 1..=255 bytes (the caller's check: a longer one cannot be encoded).
    pub fn set(&mut self, name: &[u8], value: &[u8]) {
        debug_assert!((1..=255).contains(&name.len()));
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_vec(),
            None => self.entries.push((name.to_vec(), value.to_vec())),
        }
    }

    /// Removes `name`; whether it was there.
    pub fn remove(&mut self, name: &[u8]) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(n, _)| n != name);
        self.entries.len() != before
    }

    pub fn encode(&self) -> Vec<u8> {
        let len = self
            .entries
            .iter()
            .map(|(n, v)| 5 + n.len() + v.len())
            .sum();
        let mut out = Vec::with_capacity(len);
        for (n, v) in &self.entries {
            out.push(n.len() as u8);
            out.extend_from_slice(n);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    pub fn decode(mut b: &[u8]) -> Result<XattrPack, FormatError> {
        let invalid = |detail: &str| FormatError::Invalid {
            what: WHAT,
            detail: detail.into(),
        };
        let mut p = XattrPack::default();
        while let Some((&nlen, rest)) = b.split_first() {
            let nlen = nlen as usize;
            if nlen == 0 {
                return Err(invalid("empty name"));
            }
            if rest.len() < nlen + 4 {
                return Err(invalid("entry cut short"));
            }
            let (name, rest) = rest.split_at(nlen);
            let (vlen, rest) = rest.split_at(4);
            let vlen = u32::from_be_bytes([vlen[0], vlen[1], vlen[2], vlen[3]]) as usize;
            if rest.len() < vlen {
                return Err(invalid("value cut short"));
            }
            let (value, rest) = rest.split_at(vlen);
            if p.get(name).is_some() {
                return Err(invalid("name repeated"));
            }
            p.entries.push((name.to_vec(), value.to_vec()));
            b = rest;
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_namespaces_map_names_both_ways() {
        use BackingNamespace::*;
        assert_eq!(BackingNamespace::of(true), User);
        assert_eq!(BackingNamespace::of(false), Trusted);
        let name = b"user.kmsfs.x.abc";
        assert_eq!(&*User.backing(name), name);
        assert_eq!(&*Trusted.backing(name), b"trusted.kmsfs.x.abc");
        for ns in [User, Trusted] {
            assert_eq!(ns.logical(&ns.backing(name)).as_deref(), Some(&name[..]));
        }
        // Names outside the node's namespace are not kmsfs's.
        assert_eq!(User.logical(b"trusted.kmsfs.x.abc"), None);
        assert_eq!(Trusted.logical(b"user.kmsfs.x.abc"), None);
        assert_eq!(Trusted.logical(b"security.capability"), None);
    }

    #[test]
    fn round_trip_keeps_order_and_replaces_in_place() {
        let mut p = XattrPack::default();
        assert!(p.is_empty() && p.encode().is_empty());
        p.set(b"b", b"2");
        p.set(b"a", b"");
        p.set(b"b", b"22");
        p.set(&[0xff; 255], &[7; 300]);
        let q = XattrPack::decode(&p.encode()).unwrap();
        assert_eq!(q, p);
        assert_eq!(
            q.names().collect::<Vec<_>>(),
            [&b"b"[..], b"a", &[0xff; 255][..]]
        );
        assert_eq!(q.get(b"b"), Some(&b"22"[..]));
        assert_eq!(q.get(b"a"), Some(&b""[..]));
        assert_eq!(q.get(b"c"), None);
        let mut r = q.clone();
        assert!(r.remove(b"b") && !r.remove(b"b"));
        assert_eq!(XattrPack::decode(&r.encode()).unwrap(), r);
        assert_eq!(p.encode()[..7], [1, b'b', 0, 0, 0, 2, b'2']);
    }

    #[test]
    fn malformed_packs_are_refused() {
        let mut p = XattrPack::default();
        p.set(b"name", b"value");
        let good = p.encode();
        for cut in 1..good.len() {
            assert!(XattrPack::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut twice = good.clone();
        twice.extend_from_slice(&good);
        assert!(XattrPack::decode(&twice).is_err());
        assert!(XattrPack::decode(&[0, 0, 0, 0, 0]).is_err());
    }
}
