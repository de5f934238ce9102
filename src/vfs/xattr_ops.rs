//! Extended attributes: only the `user.` namespace, names and values encrypted. Other namespaces
//! (security, trusted, system ACLs) are not supported: EOPNOTSUPP for reading, writing and
//! removing them, as a local file system without that namespace answers. `cp -a`, `rsync -AX`
//! and `tar --acls` take that as "no ACLs/labels here"; `ls -l` stops asking for SELinux labels
//! and ACLs on this file system after the first file (with ENODATA it asked two round trips per
//! file).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::XattrFlags;
use rustix::io::Errno;

use super::{Kind, Result, Vfs, VfsError};

const USER: &[u8] = b"user.";

/// Answer to getxattr/listxattr: the size asked for with size 0, or the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

fn reply(data: Vec<u8>, size: u32) -> Result<XattrReply> {
    if size == 0 {
        Ok(XattrReply::Size(data.len() as u32))
    } else if data.len() > size as usize {
        Err(Errno::RANGE.into())
    } else {
        Ok(XattrReply::Data(data))
    }
}

impl Vfs {
    fn xattr_target(&self, ino: u64) -> Result<(String, Kind)> {
        let n = self.node(ino)?;
        Ok((n.proc_path(), n.kind))
    }

    fn backing_xattr_name(&self, name: &OsStr) -> Result<String> {
        let suffix = name
            .as_bytes()
            .strip_prefix(USER)
            .ok_or(VfsError::NotSupported("only user.* extended attributes"))?;
        if suffix.is_empty() {
            return Err(VfsError::Invalid("empty xattr name"));
        }
        Ok(self.names.encrypt_xattr_name(suffix))
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        if super::is_control(ino) {
            return Err(VfsError::Control(
                libc::EPERM,
                "control files have no extended attributes".into(),
            ));
        }
        self.check_writable()?;
        let bname = self.backing_xattr_name(name)?;
        let (path, kind) = self.xattr_target(ino)?;
        if kind == Kind::Symlink {
            return Err(Errno::PERM.into());
        }
        let v = self.names.encrypt_xattr_value(&bname, value);
        crate::fault::check("setxattr")?;
        rustix::fs::setxattr(
            path.as_str(),
            bname.as_str(),
            &v,
            XattrFlags::from_bits_retain(flags as _),
        )?;
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> Result<XattrReply> {
        let bname = self.backing_xattr_name(name)?;
        if super::is_control(ino) {
            return Err(Errno::NODATA.into());
        }
        let (path, kind) = self.xattr_target(ino)?;
        if kind == Kind::Symlink {
            return Err(Errno::NODATA.into());
        }
        let mut buf = vec![0u8; 65536 + 64];
        let n = rustix::fs::getxattr(path.as_str(), bname.as_str(), &mut buf[..])?;
        buf.truncate(n);
        let v = self.names.decrypt_xattr_value(&bname, &buf).map_err(|_| {
            VfsError::Integrity(format!(
                "inode {ino}: extended attribute value failed authentication"
            ))
        })?;
        reply(v, size)
    }

    pub fn listxattr(&self, ino: u64, size: u32) -> Result<XattrReply> {
        if super::is_control(ino) {
            return Ok(if size == 0 {
                XattrReply::Size(0)
            } else {
                XattrReply::Data(Vec::new())
            });
        }
        let (path, kind) = self.xattr_target(ino)?;
        let mut out = Vec::new();
        if kind != Kind::Symlink {
            let mut buf = vec![0u8; 65536];
            let n = rustix::fs::listxattr(path.as_str(), &mut buf[..])?;
            for raw in buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
                let Ok(s) = std::str::from_utf8(raw) else {
                    continue;
                };
                if let Some(name) = self.names.decrypt_xattr_name(s) {
                    out.extend_from_slice(USER);
                    out.extend_from_slice(&name);
                    out.push(0);
                }
            }
        }
        reply(out, size)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        if super::is_control(ino) {
            return Err(VfsError::Control(
                libc::EPERM,
                "control files have no extended attributes".into(),
            ));
        }
        self.check_writable()?;
        let bname = self.backing_xattr_name(name)?;
        let (path, _) = self.xattr_target(ino)?;
        crate::fault::check("removexattr")?;
        rustix::fs::removexattr(path.as_str(), bname.as_str())?;
        Ok(())
    }
}
