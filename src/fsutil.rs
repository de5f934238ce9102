//! Small file-system helpers shared by the layers that persist state.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `data` to `path` atomically: temp file in the same directory, fsync, rename, fsync of
/// the directory. If `backup` is given and `path` exists, the old file is renamed to `backup`
/// first, so at every instant either `path` or `backup` holds a complete, older-or-newer version.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32, backup: Option<&Path>) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    // A unique name opened with O_EXCL | O_NOFOLLOW: a planted file or symlink is never written
    // through.
    let rand: [u8; 8] = crate::crypto::random_array();
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        crate::crypto::hex::encode(&rand)
    ));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    if let Some(b) = backup {
        match fs::rename(path, b) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        }
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_keeps_backup() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let b = d.path().join("f.bak");
        atomic_write(&p, b"one", 0o600, Some(&b)).unwrap();
        assert!(!b.exists());
        atomic_write(&p, b"two", 0o600, Some(&b)).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read(&b).unwrap(), b"one");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
