//! [`Dest`]: the one writer of a destination tree (restores and clones),
//! which takes every path as untrusted bytes (see the parent module).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, fstatat, futimens, mknodat, utimensat};
use nix::unistd::{
    Gid, Uid, UnlinkatFlags, fchown, fchownat, ftruncate, linkat, mkfifoat, symlinkat, unlinkat,
};

use super::*;

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

    /// Removes from the directory at `path` (already made by [`Dest::dir`])
    /// every entry `keep` refuses, given its name and whether it is a
    /// directory (an incremental restore's deletions). Nothing is followed:
    /// the directory is opened one component at a time, entries removed
    /// by descriptor.
    pub fn purge(&mut self, path: &[u8], keep: &dyn Fn(&[u8], bool) -> bool) -> Result<()> {
        let mut cur = self.root.try_clone().map_err(short_fs(path))?;
        for c in components(path)? {
            cur = match cur.child(OsStr::from_bytes(c)) {
                Ok(Some(d)) => d,
                Ok(None) => return Ok(()),
                Err(e) => return Err(short_fs(path)(e)),
            };
        }
        for name in cur.list().map_err(short_fs(path))? {
            let st = match fstatat(cur.fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(io("stat", path)(e)),
            };
            if !keep(name.as_bytes(), kind(&st) == Kind::Dir) {
                cur.remove_tree(&name).map_err(short_fs(path))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
