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
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use nix::sys::time::TimeSpec;

use crate::sys::safefs::{self, DirFd};

mod dest;
pub use dest::{Dest, Policy};

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

/// An entry of a directory as listed (and stat'ed) by [`walk_listed`];
/// `store: false` leaves a non-directory out of the walk's visits.
pub struct Listed {
    pub name: OsString,
    pub stat: FileStat,
    pub kind: Kind,
    pub store: bool,
}

/// What [`walk_listed`] reports: a directory with its entries (before any
/// of them is visited; the callback may clear their `store`), or an entry
/// that is not a directory.
pub enum Event<'a, 'k> {
    Dir {
        path: &'a [u8],
        dir: &'a DirFd,
        stat: &'a FileStat,
        entries: &'k mut Vec<Listed>,
    },
    Entry(Visit<'a>),
}

/// Like [`walk`] (depth-first, name order, no symlink followed, other
/// filesystems and sockets skipped), but each directory is listed and its
/// entries stat'ed when it is reached, and reported whole before its
/// entries are visited (the root first, with an empty path). An entry is
/// visited with the stat taken when its directory was listed.
pub fn walk_listed<E: From<Error>>(
    root: &DirFd,
    cancel: &dyn Fn() -> bool,
    on: &mut dyn FnMut(Event<'_, '_>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let dev = root.stat().map_err(Error::from)?.st_dev;
    let list = |dir: &DirFd, prefix: &[u8]| -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        for name in dir.list()? {
            let st = match fstatat(dir.fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(io("stat", &join(prefix, name.as_bytes()))(e)),
            };
            let k = kind(&st);
            if k == Kind::Socket {
                continue;
            }
            if k == Kind::Dir && st.st_dev != dev {
                tracing::warn!(path = %show(&join(prefix, name.as_bytes())), "skipping another filesystem mounted inside the volume");
                continue;
            }
            out.push(Listed {
                name,
                stat: st,
                kind: k,
                store: true,
            });
        }
        Ok(out)
    };
    let root_stat = root.stat().map_err(Error::from)?;
    let mut entries = list(root, b"")?;
    on(Event::Dir {
        path: b"",
        dir: root,
        stat: &root_stat,
        entries: &mut entries,
    })?;
    let mut stack: Vec<(DirFd, Vec<u8>, std::vec::IntoIter<Listed>)> = vec![(
        root.try_clone().map_err(Error::from)?,
        Vec::new(),
        entries.into_iter(),
    )];
    while let Some((dir, prefix, entries)) = stack.last_mut() {
        let Some(e) = entries.next() else {
            stack.pop();
            continue;
        };
        if cancel() {
            return Err(Error::Cancelled.into());
        }
        let path = join(prefix, e.name.as_bytes());
        if e.kind == Kind::Dir {
            let child = match dir.child(&e.name) {
                Ok(Some(child)) => child,
                // gone or replaced since the listing: left out
                Ok(None) | Err(safefs::Error::NotADirectory { .. }) => continue,
                Err(err) => return Err(Error::from(err).into()),
            };
            let mut entries = list(&child, &path)?;
            on(Event::Dir {
                path: &path,
                dir: &child,
                stat: &e.stat,
                entries: &mut entries,
            })?;
            stack.push((child, path, entries.into_iter()));
            continue;
        }
        if !e.store {
            continue;
        }
        on(Event::Entry(Visit {
            path: &path,
            parent: dir,
            name: &e.name,
            stat: &e.stat,
            kind: e.kind,
        }))?;
    }
    Ok(())
}

fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = prefix.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
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
