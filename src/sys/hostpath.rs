//! Host paths from node requests (staging, target and volume paths),
//! resolved by descriptor beneath the kubelet directory.
//!
//! Safety assumptions: kubelet hands the driver paths below its own
//! directory, but the directories on the way may be written by others (a pod
//! with a hostPath volume, a careless admin), so no component is trusted.
//! The kubelet directory itself (the `--kubelet-dir` flag, else `/`) is the
//! admin's and is opened as given; below it, every component is opened with
//! `O_NOFOLLOW | O_DIRECTORY` from its parent's descriptor, so a symlink
//! anywhere is an error, never followed, and missing directories are created
//! through their parent's descriptor. Mounts and unmounts then act on the
//! descriptors (see `mount::Mounter`), never on the path string again. The
//! path strings kept here are for messages and for matching the mount table.
//! Every function here blocks; call them through `offload`.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Mode of directories the driver creates below the kubelet directory.
const DIR_MODE: u32 = 0o750;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is not strictly below the kubelet directory {base}")]
    NotBelow { path: PathBuf, base: PathBuf },
    #[error("{path} is a symlink; refusing to follow it")]
    Symlink { path: PathBuf },
    #[error("{path} is not a directory ({kind}); left in place")]
    NotADirectory { path: PathBuf, kind: &'static str },
    #[error("{path}: {op} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

type Result<T> = std::result::Result<T, Error>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A directory held open by an `O_PATH` descriptor, with the path it was
/// reached by.
#[derive(Debug)]
pub struct HostDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl HostDir {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What a name in a validated directory is.
#[derive(Debug)]
pub enum Leaf {
    Missing,
    Dir(HostDir),
    Symlink,
    Other(&'static str),
}

/// A path strictly below the base, resolved up to its parent directory.
#[derive(Debug)]
pub struct HostPath {
    parent: HostDir,
    name: OsString,
    path: PathBuf,
}

/// Checks that `path` (already absolute and free of `.`, `..` and empty
/// components) is strictly below `base`.
pub fn check_below(base: &Path, path: &Path) -> Result<()> {
    if path == base || !path.starts_with(base) {
        return Err(Error::NotBelow {
            path: path.to_path_buf(),
            base: base.to_path_buf(),
        });
    }
    Ok(())
}

fn open_dir_nofollow(parent: BorrowedFd<'_>, name: &OsStr, path: &Path) -> Result<Leaf> {
    match openat(
        parent,
        name,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Leaf::Dir(HostDir {
            fd,
            path: path.to_path_buf(),
        })),
        Err(Errno::ENOENT) => Ok(Leaf::Missing),
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => return Ok(Leaf::Missing),
                Err(e) => return Err(io("stat", path)(e)),
            };
            Ok(
                match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
                    SFlag::S_IFLNK => Leaf::Symlink,
                    SFlag::S_IFREG => Leaf::Other("a regular file"),
                    SFlag::S_IFDIR => Leaf::Other("a directory that cannot be opened"),
                    _ => Leaf::Other("a special file"),
                },
            )
        }
        Err(e) => Err(io("open", path)(e)),
    }
}

impl HostPath {
    /// Resolves `path` below `base` by descriptor, up to its parent; a
    /// missing parent gives `Ok(None)`. A symlink or a non-directory on the
    /// way is an error.
    pub fn open(base: &Path, path: &Path) -> Result<Option<HostPath>> {
        Self::walk(base, path, false)
    }

    /// Like [`HostPath::open`], making missing parent directories (mode
    /// 0750) through their parent's descriptor.
    pub fn create(base: &Path, path: &Path) -> Result<HostPath> {
        Self::walk(base, path, true)?.ok_or_else(|| Error::Io {
            op: "open",
            path: path.to_path_buf(),
            source: Errno::ENOENT,
        })
    }

    fn walk(base: &Path, path: &Path, create: bool) -> Result<Option<HostPath>> {
        check_below(base, path)?;
        let rel = path.strip_prefix(base).map_err(|_| Error::NotBelow {
            path: path.to_path_buf(),
            base: base.to_path_buf(),
        })?;
        let comps: Vec<&OsStr> = rel.iter().collect();
        let Some((name, dirs)) = comps.split_last() else {
            return Err(Error::NotBelow {
                path: path.to_path_buf(),
                base: base.to_path_buf(),
            });
        };
        let fd = openat(
            AT_FDCWD,
            base,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io("open", base))?;
        let mut cur = HostDir {
            fd,
            path: base.to_path_buf(),
        };
        for comp in dirs {
            let next = cur.path.join(comp);
            cur = match open_dir_nofollow(cur.fd(), comp, &next)? {
                Leaf::Dir(d) => d,
                Leaf::Missing if create => {
                    match mkdirat(cur.fd(), *comp, Mode::from_bits_truncate(DIR_MODE)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(io("mkdir", &next)(e)),
                    }
                    match open_dir_nofollow(cur.fd(), comp, &next)? {
                        Leaf::Dir(d) => d,
                        other => return Err(leaf_error(other, next)),
                    }
                }
                Leaf::Missing => return Ok(None),
                other => return Err(leaf_error(other, next)),
            };
        }
        Ok(Some(HostPath {
            parent: cur,
            name: name.to_os_string(),
            path: path.to_path_buf(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn parent(&self) -> &HostDir {
        &self.parent
    }

    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// What the last component is now.
    pub fn leaf(&self) -> Result<Leaf> {
        open_dir_nofollow(self.parent.fd(), &self.name, &self.path)
    }

    /// The last component as a directory, or an error naming what it is.
    pub fn dir(&self) -> Result<Option<HostDir>> {
        match self.leaf()? {
            Leaf::Dir(d) => Ok(Some(d)),
            Leaf::Missing => Ok(None),
            other => Err(leaf_error(other, self.path.clone())),
        }
    }

    /// The last component as a directory, created (mode 0750) if missing,
    /// and whether this call created it.
    pub fn dir_or_create(&self) -> Result<(HostDir, bool)> {
        if let Some(d) = self.dir()? {
            return Ok((d, false));
        }
        let created = match mkdirat(
            self.parent.fd(),
            self.name.as_os_str(),
            Mode::from_bits_truncate(DIR_MODE),
        ) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(io("mkdir", &self.path)(e)),
        };
        let dir = self.dir()?.ok_or_else(|| Error::Io {
            op: "open",
            path: self.path.clone(),
            source: Errno::ENOENT,
        })?;
        Ok((dir, created))
    }

    /// Removes the last component if it is an empty directory (through the
    /// parent's descriptor). Missing is fine; anything else is left in place
    /// and reported.
    pub fn remove_dir(&self) -> Result<()> {
        match self.leaf()? {
            Leaf::Missing => return Ok(()),
            Leaf::Dir(_) => {}
            other => return Err(leaf_error(other, self.path.clone())),
        }
        match unlinkat(
            self.parent.fd(),
            self.name.as_os_str(),
            UnlinkatFlags::RemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io("rmdir", &self.path)(e)),
        }
    }
}

fn leaf_error(leaf: Leaf, path: PathBuf) -> Error {
    match leaf {
        Leaf::Symlink => Error::Symlink { path },
        Leaf::Other(kind) => Error::NotADirectory { path, kind },
        Leaf::Missing | Leaf::Dir(_) => Error::Io {
            op: "open",
            path,
            source: Errno::ENOENT,
        },
    }
}

/// The id of the mount a descriptor is on (`mnt_id` in
/// `/proc/self/fdinfo`), as in the first field of `/proc/self/mountinfo`.
pub fn mount_id(fd: BorrowedFd<'_>) -> std::result::Result<u32, Errno> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))
        .map_err(|e| crate::sys::safefs::errno_of(&e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(Errno::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_creates_and_refuses_symlinks_anywhere() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("kubelet");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let p = base.join("pods/p1/volumes/mount");
        assert!(HostPath::open(&base, &p).unwrap().is_none());
        let hp = HostPath::create(&base, &p).unwrap();
        assert!(matches!(hp.leaf().unwrap(), Leaf::Missing));
        let (d, created) = hp.dir_or_create().unwrap();
        assert!(created);
        assert!(!hp.dir_or_create().unwrap().1);
        assert_eq!(d.path(), p);
        assert!(p.is_dir());
        // a symlinked parent
        std::os::unix::fs::symlink(&outside, base.join("pods/p2")).unwrap();
        let err = HostPath::create(&base, &base.join("pods/p2/mount")).unwrap_err();
        assert!(matches!(err, Error::Symlink { .. }), "{err}");
        assert!(!outside.join("mount").exists());
        // a symlinked leaf
        std::os::unix::fs::symlink(&outside, base.join("pods/p1/link")).unwrap();
        let hp = HostPath::create(&base, &base.join("pods/p1/link")).unwrap();
        assert!(matches!(hp.leaf().unwrap(), Leaf::Symlink));
        assert!(matches!(
            hp.dir_or_create().unwrap_err(),
            Error::Symlink { .. }
        ));
        assert!(matches!(
            hp.remove_dir().unwrap_err(),
            Error::Symlink { .. }
        ));
        assert!(base.join("pods/p1/link").symlink_metadata().is_ok());
        // a regular file stays
        std::fs::write(base.join("pods/p1/file"), b"x").unwrap();
        let hp = HostPath::open(&base, &base.join("pods/p1/file"))
            .unwrap()
            .unwrap();
        assert!(matches!(
            hp.remove_dir().unwrap_err(),
            Error::NotADirectory { .. }
        ));
        assert!(base.join("pods/p1/file").is_file());
        // the base itself and paths beside it
        for bad in [base.clone(), t.path().join("kubelet2/x"), outside.join("x")] {
            assert!(matches!(
                HostPath::create(&base, &bad).unwrap_err(),
                Error::NotBelow { .. }
            ));
        }
    }

    #[test]
    fn mount_id_matches_the_mount_table() {
        let f = std::fs::File::open("/").unwrap();
        let id = mount_id(f.as_fd()).unwrap();
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let table = crate::sys::mount::parse_mountinfo(&text).unwrap();
        let root = crate::sys::mount::find(&table, Path::new("/")).unwrap();
        assert_eq!(root.mount_id, id);
    }
}
