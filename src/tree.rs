//! A volume's tree of files, read and rebuilt by file descriptor: the common
//! ground of snapshots (archive, restore) and clones.
//!
//! Safety assumptions: the source may be changed by pods while it is read
//! and the destination may come from a hostile archive. Reading walks by
//! descriptor, never follows a symlink and never crosses into another
//! filesystem. Writing ([`Dest`]) takes each path as untrusted bytes: it
//! must be relative with no `.`/`..`/empty components; parents are opened
//! one component at a time with `O_NOFOLLOW`, so a symlink (even one made
//! earlier by the same archive) is never written through; files are created
//! with `O_EXCL | O_NOFOLLOW`; device nodes are refused unless allowed.
//! Nothing can be created outside the destination directory.

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{
    FileStat, Mode, SFlag, UtimensatFlags, fstatat, futimens, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{
    Gid, Uid, UnlinkatFlags, fchown, fchownat, ftruncate, linkat, mkfifoat, symlinkat, unlinkat,
};

use crate::safefs::{self, DirFd};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Fs(#[from] safefs::Error),
    #[error("{path}: {op} failed: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: Errno,
    },
    #[error("unsafe path {path:?} in the source: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("{path:?}: device nodes are not restored (enable --allow-device-nodes to allow them)")]
    DeviceNode { path: String },
    #[error("{path:?}: a {existing} is already there")]
    Conflict {
        path: String,
        existing: &'static str,
    },
    #[error("hard link {path:?} points to {target:?}, which is not in the tree")]
    BadLink { path: String, target: String },
    #[error("{path}: {source}")]
    Stream {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path:?} was replaced while being read; retry")]
    Changed { path: String },
    #[error(
        "stopped: the source holds more {what} than {limit}, the bound set by the snapshot's manifest and the volume's capacity"
    )]
    OverLimit { what: &'static str, limit: u64 },
    #[error("cancelled")]
    Cancelled,
}

type Result<T> = std::result::Result<T, Error>;

/// Longest part of an untrusted path quoted in a message or a log line.
const SHOW_MAX: usize = 200;

/// An untrusted path for a message: lossy UTF-8, at most [`SHOW_MAX`] bytes
/// of it.
pub fn show(p: &[u8]) -> String {
    if p.len() <= SHOW_MAX {
        return String::from_utf8_lossy(p).into_owned();
    }
    let head = String::from_utf8_lossy(&p[..SHOW_MAX]);
    format!("{head}... ({} bytes)", p.len())
}

/// A filesystem error met while building `path`, with the untrusted path
/// quoted briefly (the directory chain a `DirFd` remembers may be long).
fn short_fs(path: &[u8]) -> impl FnOnce(safefs::Error) -> Error + '_ {
    move |e| match e {
        safefs::Error::NotADirectory { .. } => Error::UnsafePath {
            path: show(path),
            reason: "a parent is a symlink or not a directory",
        },
        safefs::Error::CrossesMount { .. } => Error::UnsafePath {
            path: show(path),
            reason: "a parent is another filesystem",
        },
        safefs::Error::Io { op, source, .. } => Error::Io {
            op,
            path: show(path),
            source,
        },
        e => Error::Fs(e),
    }
}

fn io<'p>(op: &'static str, path: &'p [u8]) -> impl FnOnce(Errno) -> Error + 'p {
    move |source| Error::Io {
        op,
        path: show(path),
        source,
    }
}

/// Ownership, permissions, times and extended attributes of an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    pub fn from_stat(st: &FileStat) -> Meta {
        Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec,
            xattrs: Vec::new(),
        }
    }
}

/// What kind of entry a stat describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

pub fn kind(st: &FileStat) -> Kind {
    let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if fmt == SFlag::S_IFDIR {
        Kind::Dir
    } else if fmt == SFlag::S_IFLNK {
        Kind::Symlink
    } else if fmt == SFlag::S_IFIFO {
        Kind::Fifo
    } else if fmt == SFlag::S_IFCHR {
        Kind::Char
    } else if fmt == SFlag::S_IFBLK {
        Kind::Block
    } else if fmt == SFlag::S_IFSOCK {
        Kind::Socket
    } else {
        Kind::File
    }
}

/// Extended attributes of an open file (empty where unsupported).
pub fn read_xattrs(fd: BorrowedFd<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let raw = fd.as_raw_fd();
    let mut names = vec![0u8; 4096];
    // SAFETY: the buffer is valid for its length; flistxattr writes at most that.
    let n = unsafe { nix::libc::flistxattr(raw, names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(cname) = CString::new(name) else {
            continue;
        };
        let mut value = vec![0u8; 65536];
        // SAFETY: as above, the buffer is valid for its length.
        let len = unsafe {
            nix::libc::fgetxattr(raw, cname.as_ptr(), value.as_mut_ptr().cast(), value.len())
        };
        if len >= 0 {
            value.truncate(len as usize);
            out.push((name.to_vec(), value));
        }
    }
    out
}

/// Whether an xattr name is in a namespace that grants privileges or
/// steers the kernel (`security.*`: capabilities, SELinux and IMA labels;
/// `trusted.*`: overlayfs and others), restored only when allowed.
pub fn is_system_xattr(name: &[u8]) -> bool {
    name.starts_with(b"security.") || name.starts_with(b"trusted.")
}

fn write_xattrs(
    fd: BorrowedFd<'_>,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    system: bool,
    path: &[u8],
) -> Result<()> {
    for (name, value) in xattrs {
        if !system && is_system_xattr(name) {
            tracing::debug!(path = %show(path), name = %show(name), "system xattr not restored (not allowed)");
            continue;
        }
        let Ok(cname) = CString::new(name.clone()) else {
            continue;
        };
        // SAFETY: name is NUL-terminated, value valid for its length.
        let r = unsafe {
            nix::libc::fsetxattr(
                fd.as_raw_fd(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r != 0 {
            let e = Errno::last();
            // A filesystem without xattrs (or a namespace we may not set,
            // or a name or value it refuses): the data matters more than
            // the attribute.
            if matches!(
                e,
                Errno::ENOTSUP | Errno::EPERM | Errno::EACCES | Errno::EINVAL | Errno::ERANGE
            ) {
                tracing::debug!(path = %show(path), "xattr not restored: {e}");
                continue;
            }
            return Err(io("setxattr", path)(e));
        }
    }
    Ok(())
}

/// An export with root_squash maps root to nobody, which may not give
/// files away: keep the data, warn that the owner could not be restored.
fn owner_denied(e: Errno, path: &[u8]) -> Result<()> {
    if matches!(e, Errno::EPERM | Errno::EACCES) {
        tracing::warn!(path = %show(path), "owner not restored ({e}); is the export root_squash?");
        return Ok(());
    }
    Err(io("chown", path)(e))
}

fn times(meta: &Meta) -> [TimeSpec; 2] {
    let t = TimeSpec::new(meta.mtime, meta.mtime_nsec);
    [t, t]
}

/// One entry met while walking a source tree.
pub struct Visit<'a> {
    /// Path relative to the walked root, `/`-separated.
    pub path: &'a [u8],
    pub parent: &'a DirFd,
    pub name: &'a OsStr,
    pub stat: &'a FileStat,
    pub kind: Kind,
}

/// Walks the tree below `root` depth-first, parents before children, in
/// name order, never following symlinks; subtrees on another filesystem
/// are skipped with a warning. `cancel` is checked between entries.
pub fn walk(
    root: &DirFd,
    cancel: &dyn Fn() -> bool,
    visit: &mut dyn FnMut(&Visit<'_>) -> Result<()>,
) -> Result<()> {
    let dev = root.stat()?.st_dev;
    // (directory, its path, its remaining entries)
    let mut stack: Vec<(DirFd, Vec<u8>, std::vec::IntoIter<OsString>)> =
        vec![(root.try_clone()?, Vec::new(), root.list()?.into_iter())];
    while let Some((dir, prefix, entries)) = stack.last_mut() {
        let Some(name) = entries.next() else {
            stack.pop();
            continue;
        };
        if cancel() {
            return Err(Error::Cancelled);
        }
        let mut path = prefix.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name.as_bytes());
        let st = match fstatat(dir.fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(io("stat", &path)(e)),
        };
        let k = kind(&st);
        if k == Kind::Dir && st.st_dev != dev {
            tracing::warn!(path = %show(&path), "skipping another filesystem mounted inside the volume");
            continue;
        }
        visit(&Visit {
            path: &path,
            parent: dir,
            name: &name,
            stat: &st,
            kind: k,
        })?;
        if k == Kind::Dir {
            match dir.child(&name) {
                Ok(Some(child)) => {
                    let list = child.list()?;
                    stack.push((child, path, list.into_iter()));
                }
                Ok(None) | Err(safefs::Error::NotADirectory { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Opens a regular file met in a walk, without following a symlink, and
/// checks it is still the file the walk saw (a pod may have swapped in a
/// device node or a FIFO since): same device and inode, still regular.
/// Returns it with its current stat.
pub fn open_file(
    parent: &DirFd,
    name: &OsStr,
    path: &[u8],
    seen: &FileStat,
) -> Result<(File, FileStat)> {
    let fd = openat(
        parent.fd(),
        name,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY
            | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(io("open", path))?;
    let st = nix::sys::stat::fstat(&fd).map_err(io("stat", path))?;
    if kind(&st) != Kind::File || st.st_dev != seen.st_dev || st.st_ino != seen.st_ino {
        return Err(Error::Changed { path: show(path) });
    }
    Ok((File::from(fd), st))
}

pub fn read_link(parent: &DirFd, name: &OsStr, path: &[u8]) -> Result<OsString> {
    readlinkat(parent.fd(), name).map_err(io("readlink", path))
}

/// Splits an untrusted relative path into its components; refuses absolute
/// paths, `..`, empty components and NUL. A leading `./` is dropped; `.`
/// alone is the root (no components).
pub fn components(path: &[u8]) -> Result<Vec<&[u8]>> {
    let bad = |reason| Error::UnsafePath {
        path: show(path),
        reason,
    };
    if path.first() == Some(&b'/') {
        return Err(bad("absolute"));
    }
    if path.contains(&0) {
        return Err(bad("contains NUL"));
    }
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    let mut out = Vec::new();
    for (i, c) in trimmed.split(|b| *b == b'/').enumerate() {
        match c {
            b"." if i == 0 => continue,
            b"" if trimmed.is_empty() => continue,
            b"" => return Err(bad("empty component")),
            b"." | b".." => return Err(bad("has a . or .. component")),
            c if c.len() > 255 => return Err(bad("component longer than 255 bytes")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// What a restore or a clone may recreate beyond plain files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Character and block device nodes (`--allow-device-nodes`).
    pub allow_devices: bool,
    /// `security.*` and `trusted.*` xattrs (`--restore-system-xattrs`).
    pub system_xattrs: bool,
}

/// Builds a tree below a destination directory from untrusted paths.
///
/// Memory stays bounded whatever the input: a directory's mode, owner and
/// times (which creating entries inside it would disturb) are applied when
/// the sequence of paths leaves it, so only the chain of directories
/// enclosing the current entry is remembered, not every directory seen.
pub struct Dest {
    root: DirFd,
    policy: Policy,
    chown: bool,
    /// The path of the innermost open directory (components joined by `/`).
    cur: Vec<u8>,
    /// Open directories, outermost first: the length of each one's path in
    /// `cur`, and the metadata to apply when leaving it.
    open: Vec<(usize, Meta)>,
    /// The root's own metadata, applied by [`Dest::finish`].
    root_meta: Option<Meta>,
    /// Bounds on the file data (apparent sizes) and on the entries made.
    max_bytes: u64,
    max_entries: u64,
    entries: u64,
    pub files: u64,
    pub bytes: u64,
}

impl Dest {
    pub fn new(root: DirFd, policy: Policy) -> Dest {
        Dest {
            root,
            policy,
            chown: nix::unistd::geteuid().is_root(),
            cur: Vec::new(),
            open: Vec::new(),
            root_meta: None,
            max_bytes: u64::MAX,
            max_entries: u64::MAX,
            entries: 0,
            files: 0,
            bytes: 0,
        }
    }

    /// Stops with [`Error::OverLimit`] before the file data (counted by
    /// apparent size, holes included) exceeds `bytes` or the entries made
    /// exceed `entries`.
    pub fn limits(mut self, bytes: u64, entries: u64) -> Dest {
        self.max_bytes = bytes;
        self.max_entries = entries;
        self
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn root(&self) -> &DirFd {
        &self.root
    }

    /// Counts one more entry, and `bytes` more file data.
    fn charge(&mut self, bytes: u64) -> Result<()> {
        if self.entries >= self.max_entries {
            return Err(Error::OverLimit {
                what: "entries",
                limit: self.max_entries,
            });
        }
        match self.bytes.checked_add(bytes) {
            Some(b) if b <= self.max_bytes => self.bytes = b,
            _ => {
                return Err(Error::OverLimit {
                    what: "bytes of file data",
                    limit: self.max_bytes,
                });
            }
        }
        self.entries += 1;
        Ok(())
    }

    /// Leaves (applying their metadata) the open directories that do not
    /// contain `norm`, a normalized path.
    fn settle(&mut self, norm: &[u8]) -> Result<()> {
        while let Some((len, _)) = self.open.last() {
            let dir = &self.cur[..*len];
            let inside = norm.len() > dir.len()
                && norm.starts_with(dir)
                && norm.get(dir.len()) == Some(&b'/');
            if inside || norm == dir {
                break;
            }
            let Some((len, meta)) = self.open.pop() else {
                break;
            };
            let path = self.cur[..len].to_vec();
            self.cur
                .truncate(self.open.last().map(|(l, _)| *l).unwrap_or(0));
            self.apply_dir(&path, &meta)?;
        }
        Ok(())
    }

    /// Opens the directory at a normalized path (if it is still one) and
    /// applies `meta` to it.
    fn apply_dir(&self, norm: &[u8], meta: &Meta) -> Result<()> {
        let mut cur = self.root.try_clone().map_err(short_fs(norm))?;
        for c in components(norm)? {
            match cur.child(OsStr::from_bytes(c)) {
                Ok(Some(d)) => cur = d,
                Ok(None) | Err(safefs::Error::NotADirectory { .. }) => return Ok(()),
                Err(e) => return Err(short_fs(norm)(e)),
            }
        }
        self.apply_fd(cur.fd(), meta, norm)
    }

    /// The parent directory of `path` (created, without following symlinks,
    /// where missing) and the last component. `None` for the root itself.
    /// Leaves the open directories that do not hold `path`.
    fn parent<'p>(&mut self, path: &'p [u8]) -> Result<Option<(DirFd, &'p [u8])>> {
        let comps = components(path)?;
        let norm = comps.join(&b'/');
        self.settle(&norm)?;
        let Some((last, dirs)) = comps.split_last() else {
            return Ok(None);
        };
        let mut cur = self.root.try_clone().map_err(short_fs(path))?;
        for c in dirs {
            cur = cur
                .child_or_create(OsStr::from_bytes(c), 0o755)
                .map_err(short_fs(path))?
                .0;
        }
        Ok(Some((cur, last)))
    }

    /// Removes a non-directory already at `name` (an archive may list an
    /// entry twice); a directory there is a conflict.
    fn clear(&self, dir: &DirFd, name: &[u8], path: &[u8], want_dir: bool) -> Result<bool> {
        match fstatat(
            dir.fd(),
            OsStr::from_bytes(name),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(io("stat", path)(e)),
            Ok(st) if kind(&st) == Kind::Dir => {
                if want_dir {
                    Ok(true)
                } else {
                    Err(Error::Conflict {
                        path: show(path),
                        existing: "directory",
                    })
                }
            }
            Ok(_) => {
                unlinkat(
                    dir.fd(),
                    OsStr::from_bytes(name),
                    UnlinkatFlags::NoRemoveDir,
                )
                .map_err(io("unlink", path))?;
                Ok(false)
            }
        }
    }

    /// A directory; its xattrs are set now, its mode, owner and times when
    /// the entries that follow leave it (or at [`Dest::finish`]).
    pub fn dir(&mut self, path: &[u8], mut meta: Meta) -> Result<()> {
        self.charge(0)?;
        let xattrs = std::mem::take(&mut meta.xattrs);
        match self.parent(path)? {
            Some((parent, name)) => {
                self.clear(&parent, name, path, true)?;
                let (dir, _) = parent
                    .child_or_create(OsStr::from_bytes(name), 0o700)
                    .map_err(short_fs(path))?;
                write_xattrs(dir.fd(), &xattrs, self.policy.system_xattrs, path)?;
                // `parent` left every directory not holding `path`: the top
                // of `open` (if any) is an ancestor of it.
                let norm = components(path)?.join(&b'/');
                if self.cur == norm && !self.open.is_empty() {
                    // listed again: the later metadata wins
                    if let Some(top) = self.open.last_mut() {
                        top.1 = meta;
                    }
                } else {
                    self.cur = norm;
                    self.open.push((self.cur.len(), meta));
                }
            }
            None => {
                write_xattrs(self.root.fd(), &xattrs, self.policy.system_xattrs, path)?;
                self.root_meta = Some(meta);
            }
        }
        Ok(())
    }

    /// Creates a regular file of `size` bytes (its apparent size, counted
    /// against the limits) and returns it open for writing; call
    /// [`Dest::finish_file`] after writing its data.
    pub fn file(&mut self, path: &[u8], size: u64) -> Result<File> {
        let Some((parent, name)) = self.parent(path)? else {
            return Err(Error::Conflict {
                path: show(path),
                existing: "root directory",
            });
        };
        self.charge(size)?;
        self.clear(&parent, name, path, false)?;
        let fd: OwnedFd = openat(
            parent.fd(),
            OsStr::from_bytes(name),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io("create", path))?;
        self.files += 1;
        Ok(File::from(fd))
    }

    /// Sets size (keeping trailing holes), owner, mode, xattrs and times.
    pub fn finish_file(&self, file: &File, size: u64, meta: &Meta, path: &[u8]) -> Result<()> {
        let len = i64::try_from(size).map_err(|_| io("truncate", path)(Errno::EFBIG))?;
        ftruncate(file.as_fd(), len).map_err(io("truncate", path))?;
        self.apply_fd(file.as_fd(), meta, path)
    }

    fn apply_fd(&self, fd: BorrowedFd<'_>, meta: &Meta, path: &[u8]) -> Result<()> {
        if self.chown {
            fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .or_else(|e| owner_denied(e, path))?;
        }
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(meta.mode & 0o7777))
            .map_err(io("chmod", path))?;
        write_xattrs(fd, &meta.xattrs, self.policy.system_xattrs, path)?;
        futimens(fd, &times(meta)[0], &times(meta)[1]).map_err(io("utimes", path))
    }

    pub fn symlink(&mut self, path: &[u8], target: &[u8], meta: &Meta) -> Result<()> {
        let Some((parent, name)) = self.parent(path)? else {
            return Err(Error::Conflict {
                path: show(path),
                existing: "root directory",
            });
        };
        self.charge(0)?;
        self.clear(&parent, name, path, false)?;
        let name = OsStr::from_bytes(name);
        symlinkat(OsStr::from_bytes(target), parent.fd(), name).map_err(io("symlink", path))?;
        if self.chown {
            fchownat(
                parent.fd(),
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .or_else(|e| owner_denied(e, path))?;
        }
        let t = times(meta);
        utimensat(
            parent.fd(),
            name,
            &t[0],
            &t[1],
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io("utimes", path))?;
        self.files += 1;
        Ok(())
    }

    /// A hard link at `path` to the entry at `target` (both in this tree).
    pub fn hardlink(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
        let bad = || Error::BadLink {
            path: show(path),
            target: show(target),
        };
        let tcomps = components(target)?;
        let (tlast, tdirs) = tcomps.split_last().ok_or_else(bad)?;
        let Some((parent, name)) = self.parent(path)? else {
            return Err(bad());
        };
        self.charge(0)?;
        let mut tdir = self.root.try_clone().map_err(short_fs(path))?;
        for c in tdirs {
            tdir = tdir
                .child(OsStr::from_bytes(c))
                .map_err(short_fs(target))?
                .ok_or_else(bad)?;
        }
        self.clear(&parent, name, path, false)?;
        // No AT_SYMLINK_FOLLOW: a symlink is linked as itself, never resolved.
        linkat(
            tdir.fd(),
            OsStr::from_bytes(tlast),
            parent.fd(),
            OsStr::from_bytes(name),
            AtFlags::empty(),
        )
        .map_err(|e| match e {
            Errno::ENOENT => bad(),
            e => io("link", path)(e),
        })?;
        self.files += 1;
        Ok(())
    }

    /// A FIFO or (when allowed) a device node.
    pub fn special(&mut self, path: &[u8], kind: Kind, rdev: u64, meta: &Meta) -> Result<()> {
        if matches!(kind, Kind::Char | Kind::Block) && !self.policy.allow_devices {
            return Err(Error::DeviceNode { path: show(path) });
        }
        let Some((parent, name)) = self.parent(path)? else {
            return Err(Error::Conflict {
                path: show(path),
                existing: "root directory",
            });
        };
        self.charge(0)?;
        self.clear(&parent, name, path, false)?;
        let name_os = OsStr::from_bytes(name);
        let perm = Mode::from_bits_truncate(0o600);
        match kind {
            Kind::Fifo => mkfifoat(parent.fd(), name_os, perm).map_err(io("mkfifo", path))?,
            Kind::Char => mknodat(parent.fd(), name_os, SFlag::S_IFCHR, perm, rdev)
                .map_err(io("mknod", path))?,
            Kind::Block => mknodat(parent.fd(), name_os, SFlag::S_IFBLK, perm, rdev)
                .map_err(io("mknod", path))?,
            _ => return Ok(()),
        }
        // Open without blocking (a FIFO) to set the metadata by descriptor.
        let fd = openat(
            parent.fd(),
            name_os,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io("open", path))?;
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        if self.chown {
            nix::unistd::chown(
                &proc_path,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .or_else(|e| owner_denied(e, path))?;
        }
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &proc_path,
            Mode::from_bits_truncate(meta.mode & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
        .map_err(io("chmod", path))?;
        let t = times(meta);
        utimensat(
            parent.fd(),
            name_os,
            &t[0],
            &t[1],
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io("utimes", path))?;
        self.files += 1;
        Ok(())
    }

    /// Applies the metadata of the directories still open (deepest first),
    /// then the root's. Returns (files, bytes).
    pub fn finish(mut self) -> Result<(u64, u64)> {
        self.settle(b"")?;
        while let Some((len, meta)) = self.open.pop() {
            let path = self.cur[..len].to_vec();
            self.cur
                .truncate(self.open.last().map(|(l, _)| *l).unwrap_or(0));
            self.apply_dir(&path, &meta)?;
        }
        if let Some(meta) = self.root_meta.take() {
            self.apply_fd(self.root.fd(), &meta, b".")?;
        }
        Ok((self.files, self.bytes))
    }
}

/// Copies `src` to `dst` from their current offsets, leaving holes where
/// the source reads as whole zero blocks. Returns the bytes read. `cancel`
/// is checked every [`CANCEL_EVERY`] bytes (see [`cancelled`]).
pub fn copy_sparse(
    src: &mut dyn Read,
    dst: &mut File,
    cancel: &dyn Fn() -> bool,
) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    const BLOCK: usize = 256 * 1024;
    const PAGE: usize = 4096;
    let mut buf = vec![0u8; BLOCK];
    let mut total = 0u64;
    let mut next_check = CANCEL_EVERY;
    loop {
        if total >= next_check {
            next_check = total + CANCEL_EVERY;
            if cancel() {
                return Err(cancelled());
            }
        }
        let mut filled = 0;
        while filled < BLOCK {
            let n = src.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(total);
        }
        // Page-sized zero runs become holes; the rest is written in runs.
        let mut run_start = 0;
        let mut pos = 0;
        while pos < filled {
            let end = (pos + PAGE).min(filled);
            if buf[pos..end].iter().all(|b| *b == 0) {
                if run_start < pos {
                    dst.write_all(&buf[run_start..pos])?;
                }
                dst.seek(SeekFrom::Current((end - pos) as i64))?;
                run_start = end;
            }
            pos = end;
        }
        if run_start < filled {
            dst.write_all(&buf[run_start..filled])?;
        }
        total += filled as u64;
        if filled < BLOCK {
            return Ok(total);
        }
    }
}

/// How often long copies check their cancel flag.
pub const CANCEL_EVERY: u64 = 4 << 20;
/// The error a cancelled copy stops with.
pub fn cancelled() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Interrupted, "cancelled")
}

/// Hard-link bookkeeping: the first path seen for each (device, inode).
#[derive(Default)]
pub struct Links(HashMap<(u64, u64), Vec<u8>>);

impl Links {
    /// For a file with more than one link: the earlier path, or records
    /// this one as the first.
    pub fn seen(&mut self, st: &FileStat, path: &[u8]) -> Option<Vec<u8>> {
        if st.st_nlink < 2 {
            return None;
        }
        let key = (st.st_dev, st.st_ino);
        if let Some(first) = self.0.get(&key) {
            return Some(first.clone());
        }
        self.0.insert(key, path.to_vec());
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_checked() {
        assert_eq!(components(b"a/b/c").unwrap(), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(components(b"./a/").unwrap(), vec![&b"a"[..]]);
        assert!(components(b".").unwrap().is_empty());
        assert!(components(b"./").unwrap().is_empty());
        for bad in [
            &b"/etc/passwd"[..],
            b"../x",
            b"a/../../x",
            b"a//b",
            b"a/./b",
            b"a\0b",
        ] {
            assert!(components(bad).is_err(), "{}", show(bad));
        }
    }

    #[test]
    fn dest_never_writes_through_a_symlink_it_made() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("dst")).unwrap();
        let root = DirFd::open_root(&t.path().join("dst")).unwrap();
        let mut d = Dest::new(root, Policy::default());
        let m = Meta {
            mode: 0o644,
            ..Default::default()
        };
        d.symlink(b"link", outside.path().as_os_str().as_bytes(), &m)
            .unwrap();
        let err = d.file(b"link/pwned", 0).unwrap_err();
        assert!(matches!(err, Error::UnsafePath { .. }), "{err}");
        // replacing the link by a file unlinks the link, never follows it
        let f = d.file(b"link", 0).unwrap();
        d.finish_file(&f, 0, &m, b"link").unwrap();
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        assert!(matches!(
            d.special(b"dev", Kind::Char, 0x0103, &m).unwrap_err(),
            Error::DeviceNode { .. }
        ));
        assert!(matches!(
            d.hardlink(b"h", b"../../etc/passwd").unwrap_err(),
            Error::UnsafePath { .. }
        ));
    }

    #[test]
    fn copy_sparse_keeps_holes() {
        let t = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 4 << 20];
        data[0] = 1;
        data[(4 << 20) - 1] = 2;
        let mut out = File::create(t.path().join("o")).unwrap();
        let n = copy_sparse(&mut &data[..], &mut out, &|| false).unwrap();
        out.set_len(n).unwrap();
        let meta = std::fs::metadata(t.path().join("o")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.len(), 4 << 20);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "holes were filled: {} blocks",
            meta.blocks()
        );
        assert_eq!(std::fs::read(t.path().join("o")).unwrap(), data);
    }
}
