//! Filesystem work beneath a root directory (an export), by file descriptor.
//!
//! Safety assumptions: everything below the root may be written by pods at
//! any moment, so no path below it is trusted. Each operation starts from a
//! descriptor of the root and walks one validated component at a time with
//! `O_NOFOLLOW | O_DIRECTORY`: a symlink or a file in the way is an error,
//! never followed. Removal never follows symlinks, unlinks them instead, and
//! refuses to cross into another filesystem mounted below the volume. Nothing
//! here can reach a path outside the root. Every function here blocks; call
//! them through `offload::run`.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, RenameFlags, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, fsync, unlinkat};

/// Largest metadata file read back (records are a few hundred bytes).
const MAX_SMALL_FILE: usize = 1 << 20;

/// A relative path already checked to be safe below a directory: not
/// absolute, no `.`, `..` or empty component, no NUL. `walk` and
/// `create_all` take one without knowing how it was checked; the driver's
/// one is `storage::ids::RelPath` (the only way a request names a directory
/// below an export), so this module needs nothing from the layers above.
pub trait CheckedRelPath {
    fn checked_components(&self) -> impl Iterator<Item = &OsStr>;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {op} failed: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("{path} is a symlink or not a directory; refusing to follow it")]
    NotADirectory { path: PathBuf },
    #[error("{path} is on another filesystem mounted inside the volume; refusing to cross it")]
    CrossesMount { path: PathBuf },
    #[error("{path} is larger than {MAX_SMALL_FILE} bytes")]
    TooLarge { path: PathBuf },
}

impl Error {
    /// The errno behind the error, if there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Io { source, .. } => Some(*source),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(Errno) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

/// An open directory with the path it was reached by (for messages only).
pub struct DirFd {
    fd: OwnedFd,
    path: PathBuf,
}

impl DirFd {
    /// Opens an admin-given directory (an export root, the work directory)
    /// one component at a time from `/` (or the current directory for a
    /// relative path) with `O_NOFOLLOW | O_DIRECTORY`: a symlink anywhere
    /// on the way, magic links such as `/proc/self/root` included, is
    /// refused rather than followed.
    pub fn open_root(path: &Path) -> Result<DirFd> {
        use std::path::Component;
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
        let refuse = |e: Errno| match e {
            Errno::ENOTDIR | Errno::ELOOP => Error::NotADirectory {
                path: path.to_path_buf(),
            },
            e => io("open", path)(e),
        };
        let start = if path.is_absolute() { "/" } else { "." };
        let mut fd = openat(AT_FDCWD, start, flags, Mode::empty()).map_err(refuse)?;
        for comp in path.components() {
            let name = match comp {
                Component::RootDir | Component::CurDir => continue,
                Component::ParentDir => OsStr::new(".."),
                Component::Normal(n) => n,
                Component::Prefix(_) => return Err(refuse(Errno::EINVAL)),
            };
            fd = openat(fd.as_fd(), name, flags | OFlag::O_NOFOLLOW, Mode::empty())
                .map_err(refuse)?;
        }
        Ok(DirFd {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A second descriptor of the same directory.
    pub fn try_clone(&self) -> Result<DirFd> {
        let fd = self
            .fd
            .try_clone()
            .map_err(|e| io("dup", self.path.clone())(errno_of(&e)))?;
        Ok(DirFd {
            fd,
            path: self.path.clone(),
        })
    }

    /// Opens the child directory `name`, never following a symlink.
    /// `Ok(None)` when it does not exist.
    pub fn child(&self, name: &OsStr) -> Result<Option<DirFd>> {
        let path = self.path.join(name);
        match openat(
            self.fd.as_fd(),
            name,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(Some(DirFd { fd, path })),
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => Err(Error::NotADirectory { path }),
            Err(e) => Err(io("open", path)(e)),
        }
    }

    /// Opens or creates the child directory `name` (created with `mode`,
    /// less the umask). Returns the directory and whether it was created.
    pub fn child_or_create(&self, name: &OsStr, mode: u32) -> Result<(DirFd, bool)> {
        if let Some(d) = self.child(name)? {
            return Ok((d, false));
        }
        let created = match mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(mode)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(io("mkdir", self.path.join(name))(e)),
        };
        let d = self.child(name)?.ok_or_else(|| Error::Io {
            op: "open",
            path: self.path.join(name),
            source: Errno::ENOENT,
        })?;
        Ok((d, created))
    }

    /// The child directory `name`, created (mode 0700) when `create`;
    /// `Ok(None)` when it is missing and not to be created.
    pub fn subdir(&self, name: &str, create: bool) -> Result<Option<DirFd>> {
        if create {
            Ok(Some(self.child_or_create(OsStr::new(name), 0o700)?.0))
        } else {
            self.child(OsStr::new(name))
        }
    }

    /// Walks `rel` from this directory; `Ok(None)` when a component is missing.
    pub fn walk(&self, rel: &impl CheckedRelPath) -> Result<Option<DirFd>> {
        let mut cur: Option<DirFd> = None;
        for comp in rel.checked_components() {
            let next = match &cur {
                None => self.child(comp)?,
                Some(d) => d.child(comp)?,
            };
            match next {
                Some(d) => cur = Some(d),
                None => return Ok(None),
            }
        }
        Ok(cur)
    }

    /// Walks `rel`, creating missing directories. Intermediate directories
    /// get mode 0755; the last one gets `leaf_mode` exactly (chmod, not
    /// umask) when given, else 0777 less the umask. Returns the leaf and
    /// whether it was created by this call.
    pub fn create_all(
        &self,
        rel: &impl CheckedRelPath,
        leaf_mode: Option<u32>,
    ) -> Result<(DirFd, bool)> {
        let comps: Vec<&OsStr> = rel.checked_components().collect();
        let mut cur: Option<DirFd> = None;
        let mut created = false;
        for (i, comp) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            let mode = if last { 0o777 } else { 0o755 };
            let parent = cur.as_ref().unwrap_or(self);
            let (d, c) = parent.child_or_create(comp, mode)?;
            created = c;
            cur = Some(d);
        }
        let leaf = cur.ok_or_else(|| Error::NotADirectory {
            path: self.path.clone(),
        })?;
        if let (true, Some(mode)) = (created, leaf_mode) {
            fchmod(leaf.fd.as_fd(), Mode::from_bits_truncate(mode))
                .map_err(io("chmod", leaf.path.clone()))?;
        }
        Ok((leaf, created))
    }

    /// Sets this directory's permission bits to `mode` exactly (no umask),
    /// through its descriptor.
    pub fn set_mode(&self, mode: u32) -> Result<()> {
        fchmod(self.fd.as_fd(), Mode::from_bits_truncate(mode))
            .map_err(io("chmod", self.path.clone()))
    }

    pub fn stat(&self) -> Result<FileStat> {
        fstat(self.fd.as_fd()).map_err(io("stat", self.path.clone()))
    }

    /// Reads a small regular file `name` in this directory (no symlinks).
    pub fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        let path = self.path.join(name);
        let fd = match openat(
            self.fd.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(io("open", path)(e)),
        };
        let mut file = std::fs::File::from(fd);
        let mut buf = Vec::new();
        (&mut file)
            .take(MAX_SMALL_FILE as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| io("read", path.clone())(errno_of(&e)))?;
        if buf.len() > MAX_SMALL_FILE {
            return Err(Error::TooLarge { path });
        }
        Ok(Some(buf))
    }

    /// Writes `name` atomically: a temporary file, fsync, rename, fsync of
    /// this directory.
    pub fn write_atomic(&self, name: &str, data: &[u8]) -> Result<()> {
        use std::io::Write;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let tmp = format!(
            ".{name}.tmp.{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tmp_path = self.path.join(&tmp);
        let fd = openat(
            self.fd.as_fd(),
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(io("create", tmp_path.clone()))?;
        let mut file = std::fs::File::from(fd);
        let written = file
            .write_all(data)
            .map_err(|e| errno_of(&e))
            .and_then(|()| fsync(file.as_fd()));
        if let Err(e) = written {
            let _ = unlinkat(self.fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(io("write", tmp_path)(e));
        }
        drop(file);
        if let Err(e) = renameat(self.fd.as_fd(), tmp.as_str(), self.fd.as_fd(), name) {
            let _ = unlinkat(self.fd.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(io("rename", self.path.join(name))(e));
        }
        // A directory fsync is advisory on some filesystems; NFS commits on close.
        let _ = fsync(self.fd.as_fd());
        Ok(())
    }

    /// Removes the file `name`; a missing file is fine.
    pub fn remove_file(&self, name: &str) -> Result<()> {
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io("unlink", self.path.join(name))(e)),
        }
    }

    /// Names of the entries in this directory, sorted, without `.` and `..`.
    pub fn list(&self) -> Result<Vec<OsString>> {
        let dup = openat(
            self.fd.as_fd(),
            ".",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io("open", self.path.clone()))?;
        let mut dir = Dir::from_fd(dup).map_err(io("opendir", self.path.clone()))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(io("readdir", self.path.clone()))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            names.push(OsStr::from_bytes(name).to_os_string());
        }
        names.sort();
        Ok(names)
    }

    /// Whether an entry `name` exists (not following a symlink).
    pub fn entry_exists(&self, name: &OsStr) -> Result<bool> {
        match fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(io("stat", self.path.join(name))(e)),
        }
    }

    /// Renames the child `from` to `to` in this directory, failing rather
    /// than replacing an existing non-empty directory or any file.
    pub fn rename_child(&self, from: &OsStr, to: &OsStr) -> Result<()> {
        match nix::fcntl::renameat2(
            self.fd.as_fd(),
            from,
            self.fd.as_fd(),
            to,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => Ok(()),
            // NFS and some others do not take flags: fall back to a plain
            // rename, which cannot replace a non-empty directory either.
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                if self.entry_exists(to)? {
                    return Err(io("rename", self.path.join(to))(Errno::EEXIST));
                }
                renameat(self.fd.as_fd(), from, self.fd.as_fd(), to)
                    .map_err(io("rename", self.path.join(to)))
            }
            Err(e) => Err(io("rename", self.path.join(to))(e)),
        }
    }

    /// Removes the child `name` and everything below it, never following a
    /// symlink and never crossing into another filesystem. A missing child
    /// is fine.
    pub fn remove_tree(&self, name: &OsStr) -> Result<()> {
        let dev = self.stat()?.st_dev;
        let st = match fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(io("stat", self.path.join(name))(e)),
        };
        if !is_dir(&st) {
            return unlink(self, name, false);
        }
        // Depth-first, iterative: a stack of open directories, each with the
        // name it has in its parent and the entries still to remove.
        type Frame = (DirFd, OsString, std::vec::IntoIter<OsString>, u32);
        let open = |parent: &DirFd, name: &OsStr, tries: u32| -> Result<Option<Frame>> {
            match parent.child(name) {
                Ok(Some(d)) => {
                    if d.stat()?.st_dev != dev {
                        return Err(Error::CrossesMount {
                            path: d.path.clone(),
                        });
                    }
                    let list = d.list()?.into_iter();
                    Ok(Some((d, name.to_os_string(), list, tries)))
                }
                Ok(None) => Ok(None),
                // Swapped for a symlink since the stat: unlink the link.
                Err(Error::NotADirectory { .. }) => unlink(parent, name, false).map(|()| None),
                Err(e) => Err(e),
            }
        };
        let mut stack: Vec<Frame> = Vec::new();
        match open(self, name, 0)? {
            Some(f) => stack.push(f),
            None => return Ok(()),
        }
        while let Some((top, _, entries, _)) = stack.last_mut() {
            if let Some(entry) = entries.next() {
                let st = match fstatat(
                    top.fd.as_fd(),
                    entry.as_os_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                ) {
                    Ok(st) => st,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(io("stat", top.path.join(&entry))(e)),
                };
                if is_dir(&st) {
                    if let Some(f) = open(top, &entry, 0)? {
                        stack.push(f);
                    }
                } else {
                    unlink(top, &entry, false)?;
                }
                continue;
            }
            let Some((_done, done_name, _, tries)) = stack.pop() else {
                break;
            };
            let parent = stack.last().map(|(d, ..)| d).unwrap_or(self);
            match unlinkat(
                parent.fd.as_fd(),
                done_name.as_os_str(),
                UnlinkatFlags::RemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                // Something was written into it meanwhile: list it again.
                Err(Errno::ENOTEMPTY | Errno::EEXIST) if tries < 3 => {
                    if let Some(f) = open(parent, &done_name, tries + 1)? {
                        stack.push(f);
                    }
                }
                Err(e) => return Err(io("remove", parent.path.join(&done_name))(e)),
            }
        }
        Ok(())
    }
}

impl AsRawFd for DirFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

fn unlink(dir: &DirFd, name: &OsStr, is_dir: bool) -> Result<()> {
    let flag = if is_dir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    match unlinkat(dir.fd.as_fd(), name, flag) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(io("remove", dir.path.join(name))(e)),
    }
}

pub(crate) fn errno_of(e: &std::io::Error) -> Errno {
    e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO)
}

/// Space and inode figures of a filesystem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsStats {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

/// statvfs of `path` (follows the path: only for trusted paths such as an
/// export root or a mount point the driver made).
pub fn fs_stats(path: &Path) -> std::result::Result<FsStats, Errno> {
    Ok(to_stats(&nix::sys::statvfs::statvfs(path)?))
}

/// statvfs of the filesystem an open descriptor (`O_PATH` too) is on.
pub fn fs_stats_fd(fd: std::os::fd::BorrowedFd<'_>) -> std::result::Result<FsStats, Errno> {
    Ok(to_stats(&nix::sys::statvfs::fstatvfs(fd)?))
}

fn to_stats(st: &nix::sys::statvfs::Statvfs) -> FsStats {
    let frsize = st.fragment_size();
    let total = st.blocks() * frsize;
    let free = st.blocks_free() * frsize;
    let avail = st.blocks_available() * frsize;
    let files = st.files();
    let ffree = st.files_free();
    FsStats {
        total_bytes: total,
        available_bytes: avail,
        used_bytes: total.saturating_sub(free),
        total_inodes: files,
        free_inodes: ffree,
        used_inodes: files.saturating_sub(ffree),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ids::RelPath;
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s).expect("valid relpath")
    }

    #[test]
    fn create_all_makes_nested_dirs_with_leaf_mode() {
        let t = tempfile::tempdir().unwrap();
        let root = DirFd::open_root(t.path()).unwrap();
        let (_, created) = root.create_all(&rel("ns/pvc"), Some(0o2770)).unwrap();
        assert!(created);
        let mode = fs::metadata(t.path().join("ns/pvc"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o2770);
        let (_, again) = root.create_all(&rel("ns/pvc"), Some(0o700)).unwrap();
        assert!(!again, "second call must find the existing directory");
        let mode = fs::metadata(t.path().join("ns/pvc"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o2770, "existing directory keeps its mode");
    }

    #[test]
    fn create_all_refuses_symlinked_component() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), t.path().join("ns")).unwrap();
        let root = DirFd::open_root(t.path()).unwrap();
        let err = root.create_all(&rel("ns/pvc"), None).err().unwrap();
        assert!(matches!(err, Error::NotADirectory { .. }), "{err}");
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    #[test]
    fn remove_tree_unlinks_symlinks_without_following() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("precious"), b"x").unwrap();
        let vol = t.path().join("vol");
        fs::create_dir_all(vol.join("a/b/c")).unwrap();
        fs::write(vol.join("a/b/c/f"), b"data").unwrap();
        symlink(outside.path(), vol.join("a/link-dir")).unwrap();
        symlink("/", vol.join("root-link")).unwrap();
        symlink(outside.path().join("precious"), vol.join("a/b/link-file")).unwrap();
        let root = DirFd::open_root(t.path()).unwrap();
        root.remove_tree(OsStr::new("vol")).unwrap();
        assert!(!vol.exists());
        assert_eq!(fs::read(outside.path().join("precious")).unwrap(), b"x");
        // idempotent
        root.remove_tree(OsStr::new("vol")).unwrap();
    }

    #[test]
    fn remove_tree_handles_deep_trees() {
        let t = tempfile::tempdir().unwrap();
        let mut p = t.path().join("vol");
        for _ in 0..300 {
            p = p.join("d");
        }
        fs::create_dir_all(&p).unwrap();
        fs::write(p.join("leaf"), b"1").unwrap();
        let root = DirFd::open_root(t.path()).unwrap();
        root.remove_tree(OsStr::new("vol")).unwrap();
        assert!(!t.path().join("vol").exists());
    }

    #[test]
    fn write_atomic_and_read_back() {
        let t = tempfile::tempdir().unwrap();
        let root = DirFd::open_root(t.path()).unwrap();
        root.write_atomic("rec.json", b"{\"a\":1}").unwrap();
        root.write_atomic("rec.json", b"{\"a\":2}").unwrap();
        assert_eq!(root.read_small("rec.json").unwrap().unwrap(), b"{\"a\":2}");
        assert!(root.read_small("missing").unwrap().is_none());
        let names = root.list().unwrap();
        assert_eq!(
            names,
            vec![OsString::from("rec.json")],
            "no temp files left"
        );
    }

    #[test]
    fn read_small_refuses_symlink() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("target"), b"secret").unwrap();
        symlink(t.path().join("target"), t.path().join("link")).unwrap();
        let root = DirFd::open_root(t.path()).unwrap();
        assert!(root.read_small("link").is_err());
    }

    #[test]
    fn open_root_refuses_symlinks_on_the_way() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("real/share")).unwrap();
        symlink(t.path().join("real"), t.path().join("link")).unwrap();
        assert!(DirFd::open_root(&t.path().join("real/share")).is_ok());
        for bad in [
            t.path().join("link/share"),
            t.path().join("link"),
            PathBuf::from("/proc/self/root"),
            PathBuf::from("/proc/self/root/tmp"),
        ] {
            let err = DirFd::open_root(&bad).err();
            assert!(
                matches!(err, Some(Error::NotADirectory { .. })),
                "{bad:?}: {err:?}"
            );
        }
        let missing = DirFd::open_root(&t.path().join("nope")).err().unwrap();
        assert_eq!(missing.errno(), Some(Errno::ENOENT));
    }

    #[test]
    fn rename_child_never_replaces() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("a")).unwrap();
        fs::create_dir_all(t.path().join("b")).unwrap();
        fs::write(t.path().join("b/keep"), b"1").unwrap();
        let root = DirFd::open_root(t.path()).unwrap();
        assert!(root.rename_child(OsStr::new("a"), OsStr::new("b")).is_err());
        assert!(t.path().join("b/keep").exists());
        root.rename_child(OsStr::new("a"), OsStr::new("c")).unwrap();
        assert!(t.path().join("c").is_dir());
    }
}
