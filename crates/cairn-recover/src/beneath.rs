//! Working inside a live directory tree that others may change while we
//! work: a rollback in place runs as root on a tree the attacker may still
//! write to. Every directory is opened from the root one component at a
//! time without following links, and everything is then done relative to
//! that open directory (`*at` calls), so no rename of a folder and no
//! symlink planted after a check redirects a removal or a write.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// An open directory of the tree.
pub struct Dir(OwnedFd);

/// `name` as one path component, or an error for anything else.
fn component(name: &[u8]) -> io::Result<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} is not a file name", String::from_utf8_lossy(name)),
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;

impl Dir {
    /// The root of the tree (given by the operator: followed if a link).
    pub fn open(root: &Path) -> io::Result<Dir> {
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        let fd = check(unsafe { libc::open(c.as_ptr(), DIR_FLAGS) })?;
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The directory `name` in this one, never through a link; made (mode
    /// 0755) when missing and `create` is set.
    pub fn child(&self, name: &[u8], create: bool) -> io::Result<Dir> {
        let c = component(name)?;
        let open = || unsafe {
            libc::openat(self.0.as_raw_fd(), c.as_ptr(), DIR_FLAGS | libc::O_NOFOLLOW)
        };
        let fd = match check(open()) {
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                check(unsafe { libc::mkdirat(self.0.as_raw_fd(), c.as_ptr(), 0o755) })?;
                check(open())?
            }
            r => r?,
        };
        Ok(Dir(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The directory at `rel` (`/`-separated, empty for this one) below
    /// this one.
    pub fn beneath(&self, rel: &[u8], create: bool) -> io::Result<Dir> {
        let mut d = Dir(self.0.try_clone()?);
        for part in rel.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            d = d.child(part, create)?;
        }
        Ok(d)
    }

    /// What `name` is (not following a link), or None when nothing is.
    pub fn stat(&self, name: &[u8]) -> io::Result<Option<libc::stat>> {
        let c = component(name)?;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::fstatat(
                self.0.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        match check(r) {
            Ok(_) => Ok(Some(st)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the non-directory `name` (a link itself, never its target).
    pub fn unlink(&self, name: &[u8]) -> io::Result<()> {
        let c = component(name)?;
        check(unsafe { libc::unlinkat(self.0.as_raw_fd(), c.as_ptr(), 0) }).map(|_| ())
    }

    /// A new file `name` here (fails if anything is there), mode 0600.
    pub fn create_new(&self, name: &[u8]) -> io::Result<File> {
        let c = component(name)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let fd = check(unsafe { libc::openat(self.0.as_raw_fd(), c.as_ptr(), flags, 0o600) })?;
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Renames `from` to `to`, both in this directory.
    pub fn rename(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let (f, t) = (component(from)?, component(to)?);
        let fd = self.0.as_raw_fd();
        check(unsafe { libc::renameat(fd, f.as_ptr(), fd, t.as_ptr()) }).map(|_| ())
    }

    /// Renames `from` to `to`, both in this directory, failing with
    /// `AlreadyExists` where `to` is taken (nothing is replaced).
    pub fn rename_new(&self, from: &[u8], to: &[u8]) -> io::Result<()> {
        let (f, t) = (component(from)?, component(to)?);
        let fd = self.0.as_raw_fd();
        check(unsafe { libc::renameat2(fd, f.as_ptr(), fd, t.as_ptr(), libc::RENAME_NOREPLACE) })
            .map(|_| ())
    }

    /// Makes `to` (in this directory) another name of `from` in `dir`
    /// (a link there is linked itself, not followed).
    pub fn link_from(&self, dir: &Dir, from: &[u8], to: &[u8]) -> io::Result<()> {
        let (f, t) = (component(from)?, component(to)?);
        check(unsafe {
            libc::linkat(
                dir.0.as_raw_fd(),
                f.as_ptr(),
                self.0.as_raw_fd(),
                t.as_ptr(),
                0,
            )
        })
        .map(|_| ())
    }

    /// Makes the entries made here durable.
    pub fn sync(&self) -> io::Result<()> {
        check(unsafe { libc::fsync(self.0.as_raw_fd()) }).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder swapped for a link after it was opened changes nothing:
    /// work goes on in the folder that was opened.
    #[test]
    fn a_folder_replaced_by_a_link_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("tree");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("shadow"), b"host").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

        let r = Dir::open(&root).unwrap();
        assert!(
            r.beneath(b"link", false).is_err(),
            "a link is never a folder"
        );
        assert!(r.stat(b"link").unwrap().unwrap().st_mode & libc::S_IFMT == libc::S_IFLNK);
        let docs = r.beneath(b"docs", false).unwrap();
        std::fs::rename(root.join("docs"), root.join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("docs")).unwrap();
        std::fs::write(root.join("moved/shadow"), b"planted").unwrap();
        docs.unlink(b"shadow").unwrap();
        assert_eq!(std::fs::read(outside.join("shadow")).unwrap(), b"host");
        assert!(!root.join("moved/shadow").exists());
        for bad in [&b".."[..], b"a/b", b"", b"."] {
            assert!(docs.create_new(bad).is_err());
        }
        let made = r.beneath(b"new/deeper", true).unwrap();
        made.create_new(b"f").unwrap();
        assert!(root.join("new/deeper/f").is_file());
    }
}
