//! Mounts: the kernel's mount table (`/proc/self/mountinfo`) and the calls
//! that change it, behind the [`Mounter`] trait (the real one, and a
//! recording fake for unit tests).
//!
//! Safety assumptions: whether something is mounted is always decided from
//! the mount table, never from memory and never by touching the path (a
//! `stat` on a dead NFS mount hangs). NFS mounts go through `mount -t nfs`
//! under a timeout; bind mounts and unmounts are syscalls. Unmount retries
//! EBUSY a few times, then detaches lazily so the call returns. Every
//! function here blocks; call them through `offload`.
//!
//! The node's mounts act on descriptors, never on path strings: a target is
//! a directory opened by `hostpath` (no symlink followed), a mount is made
//! as a detached tree (`open_tree`), made read-only while still detached
//! (`mount_setattr`), and attached onto the target's descriptor
//! (`move_mount`); an NFS mount is made by `mount -t nfs` in a private
//! scratch directory of the driver and moved the same way. An unmount names
//! the mount point through its parent's descriptor and never follows a
//! symlink in its last component.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::MntFlags;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use crate::sys::command;
use crate::sys::hostpath;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the mount table: {0}")]
    ReadTable(#[source] std::io::Error),
    #[error("mount table line {line} is malformed: {text:?}")]
    Parse { line: usize, text: String },
    #[error("mounting {source_path} on {target}: {cause}")]
    Syscall {
        source_path: String,
        target: PathBuf,
        #[source]
        cause: Errno,
    },
    #[error("unmounting {target}: {cause}")]
    Unmount {
        target: PathBuf,
        #[source]
        cause: Errno,
    },
    #[error(transparent)]
    Command(#[from] command::Error),
    #[error(
        "mount -t nfs {source_path} {target} answered success but no NFS mount is there (is the server answering?)"
    )]
    NothingMounted {
        source_path: String,
        target: PathBuf,
    },
}

/// A directory held open by descriptor, with the path it was reached by
/// (for messages, the mount table and the fake).
#[derive(Clone, Copy, Debug)]
pub struct At<'a> {
    pub fd: BorrowedFd<'a>,
    pub path: &'a Path,
}

impl<'a> From<&'a hostpath::HostDir> for At<'a> {
    fn from(d: &'a hostpath::HostDir) -> Self {
        At {
            fd: d.fd(),
            path: d.path(),
        }
    }
}

impl<'a> From<&'a crate::sys::safefs::DirFd> for At<'a> {
    fn from(d: &'a crate::sys::safefs::DirFd) -> Self {
        At {
            fd: d.fd(),
            path: d.path(),
        }
    }
}

type Result<T> = std::result::Result<T, Error>;

/// One line of `/proc/self/mountinfo`, unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    pub dev: String,
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub options: Vec<String>,
    pub fstype: String,
    pub source: String,
    pub super_options: Vec<String>,
}

impl MountEntry {
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }

    pub fn is_nfs(&self) -> bool {
        self.fstype == "nfs" || self.fstype == "nfs4"
    }
}

/// Parses mountinfo text (see proc(5)); octal escapes such as `\040` are
/// decoded.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || Error::Parse {
            line: i + 1,
            text: line.to_string(),
        };
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-").ok_or_else(bad)?;
        if sep < 6 || fields.len() < sep + 3 {
            return Err(bad());
        }
        out.push(MountEntry {
            mount_id: fields[0].parse().map_err(|_| bad())?,
            parent_id: fields[1].parse().map_err(|_| bad())?,
            dev: fields[2].to_string(),
            root: PathBuf::from(unescape(fields[3])),
            mount_point: PathBuf::from(unescape(fields[4])),
            options: fields[5].split(',').map(str::to_string).collect(),
            fstype: unescape(fields[sep + 1]),
            source: unescape(fields[sep + 2]),
            super_options: fields
                .get(sep + 3)
                .map(|s| s.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4]
                .iter()
                .all(|c| (b'0'..=b'3').contains(&b[i + 1]) && (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The topmost mount at `path`, if any.
pub fn find<'a>(table: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    table.iter().rev().find(|m| m.mount_point == path)
}

/// Mount operations, real or recorded.
pub trait Mounter: Send + Sync {
    /// `mount -t nfs -o OPTIONS SOURCE TARGET` on a path the driver owns
    /// (the controller's export mounts under its work dir).
    fn mount_nfs(&self, source: &str, target: &Path, options: &[String]) -> Result<()>;
    /// Mounts `source` (`server:/path`) with `options` onto the directory
    /// open at `target`.
    fn attach_nfs(&self, source: &str, options: &[String], target: At<'_>) -> Result<()>;
    /// Binds the directory open at `source` onto the directory open at
    /// `target`, read-only from the start when asked.
    fn attach_bind(&self, source: At<'_>, target: At<'_>, readonly: bool) -> Result<()>;
    /// Unmount a path the driver owns, retrying EBUSY, then detaching
    /// lazily. Not mounted is fine.
    fn unmount(&self, target: &Path) -> Result<()>;
    /// Lazy detach at once (for mounts whose server does not answer).
    fn detach(&self, target: &Path) -> Result<()>;
    /// Unmounts the topmost mount on `name` in the directory open at
    /// `parent`, never following a symlink there: at once and lazily when
    /// `lazy`, else retrying EBUSY, then detaching. Not mounted is fine.
    fn unmount_at(&self, parent: At<'_>, name: &OsStr, lazy: bool) -> Result<()>;
    /// The id of the mount the directory open at `dir` is on.
    fn mount_id(&self, dir: At<'_>) -> Result<u32>;
    /// The current mount table.
    fn mounts(&self) -> Result<Vec<MountEntry>>;
}

/// The real thing: syscalls and `mount(8)`.
pub struct SystemMounter {
    pub command_timeout: Duration,
    /// A directory of the driver's own where NFS mounts are made before
    /// they are moved onto their target.
    pub scratch_dir: PathBuf,
}

/// `struct mount_attr` of `mount_setattr(2)` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Makes the detached mount `tree` read-only (not covered by rustix).
fn set_read_only(tree: BorrowedFd<'_>) -> std::result::Result<(), Errno> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the arguments are a valid descriptor, a NUL-terminated empty
    // path, and a pointer to a live `mount_attr` with its size; the kernel
    // only reads them.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            nix::libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

fn rustix_errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

impl SystemMounter {
    /// Clones the mount at `source` as a detached tree, read-only if asked,
    /// and attaches it onto `target`.
    fn clone_onto(&self, source: At<'_>, target: At<'_>, readonly: bool) -> Result<()> {
        let err = |cause| Error::Syscall {
            source_path: source.path.display().to_string(),
            target: target.path.to_path_buf(),
            cause,
        };
        let tree = rustix::mount::open_tree(
            source.fd,
            "",
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| err(rustix_errno(e)))?;
        if readonly {
            set_read_only(tree.as_fd()).map_err(err)?;
        }
        rustix::mount::move_mount(
            tree.as_fd(),
            "",
            target.fd,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(|e| err(rustix_errno(e)))
    }
}

impl SystemMounter {
    /// Removes what a driver killed mid-attach left in the scratch
    /// directory: a scratch NFS mount lives only between `mount.nfs` and
    /// its move onto the target, but SIGKILL at that instant leaves it
    /// mounted (and a restarted driver in a container gets the same pid,
    /// hence the same scratch names). Call once at startup, before any
    /// attach. Entries are unmounted lazily without following symlinks
    /// (stacked mounts one by one), then removed if empty; the count of
    /// mounts removed is returned.
    pub fn sweep_scratch(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.scratch_dir) else {
            return 0;
        };
        let mut swept = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            // Our names only; a symlink is never a scratch directory.
            let ours = entry.file_name().to_string_lossy().starts_with("m-")
                && entry.file_type().is_ok_and(|t| t.is_dir());
            if !ours {
                continue;
            }
            for _ in 0..16 {
                match nix::mount::umount2(&path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                    Ok(()) => swept += 1,
                    Err(_) => break,
                }
            }
            let _ = std::fs::remove_dir(&path);
        }
        if swept > 0 {
            tracing::warn!(
                dir = %self.scratch_dir.display(),
                mounts = swept,
                "removed scratch NFS mounts left by a driver killed mid-attach"
            );
        }
        swept
    }
}

impl Mounter for SystemMounter {
    fn attach_nfs(&self, source: &str, options: &[String], target: At<'_>) -> Result<()> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let scratch = self.scratch_dir.join(format!(
            "m-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let err = |cause| Error::Syscall {
            source_path: source.to_string(),
            target: scratch.clone(),
            cause,
        };
        std::fs::create_dir_all(&scratch).map_err(|e| err(crate::sys::safefs::errno_of(&e)))?;
        let out = self.mount_nfs(source, &scratch, options).and_then(|()| {
            let dir = nix::fcntl::open(
                &scratch,
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_NOFOLLOW
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(err)?;
            let at = At {
                fd: dir.as_fd(),
                path: Path::new(source),
            };
            self.clone_onto(at, target, false)
        });
        // The mount lives on at the target; the scratch one goes at once.
        let _ = nix::mount::umount2(&scratch, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW);
        let _ = std::fs::remove_dir(&scratch);
        out
    }

    fn attach_bind(&self, source: At<'_>, target: At<'_>, readonly: bool) -> Result<()> {
        self.clone_onto(source, target, readonly)
    }

    fn unmount_at(&self, parent: At<'_>, name: &OsStr, lazy: bool) -> Result<()> {
        // The kernel resolves the descriptor link to the validated parent
        // itself; only `name` is looked up, and not followed.
        let path = PathBuf::from(format!("/proc/self/fd/{}", parent.fd.as_raw_fd())).join(name);
        let shown = parent.path.join(name);
        let fail = |cause| Error::Unmount {
            target: shown.clone(),
            cause,
        };
        if !lazy {
            for attempt in 0..5 {
                match nix::mount::umount2(&path, MntFlags::UMOUNT_NOFOLLOW) {
                    Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
                    Err(Errno::EBUSY) if attempt < 4 => {
                        std::thread::sleep(Duration::from_millis(100 << attempt));
                    }
                    Err(Errno::EBUSY) => break,
                    Err(e) => return Err(fail(e)),
                }
            }
        }
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
            Err(e) => Err(fail(e)),
        }
    }

    fn mount_id(&self, dir: At<'_>) -> Result<u32> {
        hostpath::mount_id(dir.fd).map_err(|cause| Error::Syscall {
            source_path: "mount id".into(),
            target: dir.path.to_path_buf(),
            cause,
        })
    }

    fn mount_nfs(&self, source: &str, target: &Path, options: &[String]) -> Result<()> {
        let mut args = vec!["-t".to_string(), "nfs".to_string()];
        if !options.is_empty() {
            args.push("-o".into());
            args.push(options.join(","));
        }
        args.push(source.to_string());
        args.push(target.to_string_lossy().into_owned());
        command::run("mount", &args, self.command_timeout)?;
        // mount(8) may answer success with nothing mounted (mount.nfs with
        // `bg` when the server does not answer): trust the table only.
        match find(&self.mounts()?, target) {
            Some(m) if m.is_nfs() => Ok(()),
            _ => Err(Error::NothingMounted {
                source_path: source.to_string(),
                target: target.to_path_buf(),
            }),
        }
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        for attempt in 0..5 {
            match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => return Ok(()),
                Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
                Err(Errno::EBUSY) if attempt < 4 => {
                    std::thread::sleep(Duration::from_millis(100 << attempt));
                }
                Err(Errno::EBUSY) => break,
                Err(e) => {
                    return Err(Error::Unmount {
                        target: target.to_path_buf(),
                        cause: e,
                    });
                }
            }
        }
        self.detach(target)
    }

    fn detach(&self, target: &Path) -> Result<()> {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::Unmount {
                target: target.to_path_buf(),
                cause: e,
            }),
        }
    }

    fn mounts(&self) -> Result<Vec<MountEntry>> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(Error::ReadTable)?;
        parse_mountinfo(&text)
    }
}

/// A fake for unit tests: records every call and keeps its own table.
#[derive(Default)]
pub struct FakeMounter {
    pub calls: Mutex<Vec<String>>,
    pub table: Mutex<Vec<MountEntry>>,
    /// When set, `mount_nfs` fails with this message.
    pub fail_nfs: Mutex<Option<String>>,
}

impl FakeMounter {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn record(&self, call: String, entry: Option<MountEntry>) {
        if let Ok(mut c) = self.calls.lock() {
            c.push(call);
        }
        if let (Some(e), Ok(mut t)) = (entry, self.table.lock()) {
            t.push(e);
        }
    }

    fn remove(&self, target: &Path) {
        if let Ok(mut t) = self.table.lock()
            && let Some(i) = t.iter().rposition(|m| m.mount_point == target)
        {
            t.remove(i);
        }
    }

    fn entry(source: &str, target: &Path, fstype: &str, ro: bool) -> MountEntry {
        static NEXT_ID: AtomicU32 = AtomicU32::new(1000);
        MountEntry {
            mount_id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            parent_id: 0,
            dev: "0:0".into(),
            root: PathBuf::from("/"),
            mount_point: target.to_path_buf(),
            options: vec![if ro { "ro" } else { "rw" }.to_string()],
            fstype: fstype.to_string(),
            source: source.to_string(),
            super_options: vec![],
        }
    }
}

impl Mounter for FakeMounter {
    fn mount_nfs(&self, source: &str, target: &Path, options: &[String]) -> Result<()> {
        if let Some(msg) = self.fail_nfs.lock().ok().and_then(|f| f.clone()) {
            self.record(
                format!("mount_nfs {source} {} FAILED", target.display()),
                None,
            );
            return Err(Error::Command(command::Error::Failed {
                program: "mount".into(),
                args: source.into(),
                status: "exit status: 32".into(),
                stderr: msg,
            }));
        }
        self.record(
            format!(
                "mount_nfs {source} {} {}",
                target.display(),
                options.join(",")
            ),
            Some(Self::entry(source, target, "nfs4", false)),
        );
        Ok(())
    }

    fn attach_nfs(&self, source: &str, options: &[String], target: At<'_>) -> Result<()> {
        self.mount_nfs(source, target.path, options)
    }

    fn attach_bind(&self, source: At<'_>, target: At<'_>, readonly: bool) -> Result<()> {
        let src = source.path.display().to_string();
        self.record(
            format!("bind {src} {} ro={readonly}", target.path.display()),
            Some(Self::entry(&src, target.path, "none", readonly)),
        );
        Ok(())
    }

    fn unmount_at(&self, parent: At<'_>, name: &OsStr, lazy: bool) -> Result<()> {
        let target = parent.path.join(name);
        if lazy {
            self.detach(&target)
        } else {
            self.unmount(&target)
        }
    }

    /// The id of the fake's topmost entry at the directory's path, else 0
    /// (what every unmounted directory is on).
    fn mount_id(&self, dir: At<'_>) -> Result<u32> {
        let table = self.mounts()?;
        Ok(find(&table, dir.path).map_or(0, |m| m.mount_id))
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        self.record(format!("unmount {}", target.display()), None);
        self.remove(target);
        Ok(())
    }

    fn detach(&self, target: &Path) -> Result<()> {
        self.record(format!("detach {}", target.display()), None);
        self.remove(target);
        Ok(())
    }

    fn mounts(&self) -> Result<Vec<MountEntry>> {
        Ok(self.table.lock().map(|t| t.clone()).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
100 22 0:50 /vol-1 /var/lib/kubelet/plugins/kubernetes.io/csi/nfs-csi.dev/ab12/globalmount rw,relatime shared:60 - nfs4 10.0.0.1:/exports/vol-1 rw,vers=4.1,rsize=1048576
101 22 0:50 /vol-1 /var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/pv\\040with\\040space/mount ro,relatime shared:60 - nfs4 10.0.0.1:/exports/vol-1 rw,vers=4.1
102 22 0:51 / /mnt/tab\\011and\\134slash rw master:3 propagate_from:2 unbindable - tmpfs tmpfs rw
";

    #[test]
    fn parses_mountinfo_with_escapes_and_optional_fields() {
        let t = parse_mountinfo(SAMPLE).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t[1].fstype, "nfs4");
        assert_eq!(t[1].source, "10.0.0.1:/exports/vol-1");
        assert_eq!(t[1].root, PathBuf::from("/vol-1"));
        assert!(t[1].is_nfs());
        assert!(!t[1].read_only());
        assert_eq!(
            t[2].mount_point,
            PathBuf::from(
                "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/pv with space/mount"
            )
        );
        assert!(t[2].read_only());
        assert_eq!(t[3].mount_point, PathBuf::from("/mnt/tab\tand\\slash"));
        assert_eq!(t[3].fstype, "tmpfs");
        assert_eq!(t[3].super_options, vec!["rw"]);
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse_mountinfo("22 1 8:1 / / rw shared:1 ext4 /dev/sda1 rw\n").is_err());
        assert!(parse_mountinfo("x 1 8:1 / / rw - ext4 /dev/sda1 rw\n").is_err());
    }

    #[test]
    fn find_returns_topmost() {
        let mut t = parse_mountinfo(SAMPLE).unwrap();
        let mut top = t[1].clone();
        top.mount_id = 200;
        t.push(top);
        let p = t[1].mount_point.clone();
        assert_eq!(find(&t, &p).unwrap().mount_id, 200);
        assert!(find(&t, Path::new("/nowhere")).is_none());
    }

    #[test]
    fn a_mount_that_answers_success_without_mounting_is_an_error() {
        // mount.nfs with `bg` exits 0 at once when the server does not
        // answer: a stand-in `mount` first on PATH does the same. nextest
        // runs each test in its own process, so PATH is this test's own.
        let t = tempfile::tempdir().unwrap();
        let fake = t.path().join("mount");
        std::fs::write(&fake, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = format!(
            "{}:{}",
            t.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // SAFETY: no other thread of this test process reads the environment.
        unsafe { std::env::set_var("PATH", path) };
        let target = t.path().join("mnt");
        std::fs::create_dir(&target).unwrap();
        let m = SystemMounter {
            command_timeout: Duration::from_secs(5),
            scratch_dir: t.path().join("scratch"),
        };
        let err = m.mount_nfs("nfs.example:/e", &target, &[]).unwrap_err();
        assert!(matches!(err, Error::NothingMounted { .. }), "{err}");
    }

    #[test]
    fn startup_sweep_removes_left_scratch_mounts_and_nothing_else() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "SKIPPED startup_sweep_removes_left_scratch_mounts_and_nothing_else: not root"
            );
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let scratch = t.path().join("node-mounts");
        let left = scratch.join("m-1-0");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&left).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let tmpfs = |at: &Path| {
            nix::mount::mount(
                Some("tmpfs"),
                at,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap()
        };
        // Whatever happens, nothing stays mounted after the test.
        struct Unmount(Vec<PathBuf>);
        impl Drop for Unmount {
            fn drop(&mut self) {
                for p in &self.0 {
                    while nix::mount::umount2(p, MntFlags::MNT_DETACH).is_ok() {}
                }
            }
        }
        let _guard = Unmount(vec![left.clone(), outside.clone()]);
        // Two stacked mounts on a scratch name, and one outside reached by a
        // symlink in the scratch directory: the sweep must not follow it.
        tmpfs(&left);
        tmpfs(&left);
        tmpfs(&outside);
        std::os::unix::fs::symlink(&outside, scratch.join("m-2-0")).unwrap();
        let m = SystemMounter {
            command_timeout: Duration::from_secs(1),
            scratch_dir: scratch.clone(),
        };
        let swept = m.sweep_scratch();
        let table = m.mounts().unwrap();
        let still_outside = find(&table, &outside).is_some();
        assert_eq!(swept, 2);
        assert!(find(&table, &left).is_none(), "scratch mount left");
        assert!(!left.exists(), "scratch directory left");
        assert!(
            still_outside,
            "a mount reached through a symlink was removed"
        );
        assert!(scratch.join("m-2-0").symlink_metadata().is_ok());
    }

    #[test]
    fn reads_this_process_mount_table() {
        let t = SystemMounter {
            command_timeout: Duration::from_secs(1),
            scratch_dir: PathBuf::from("/nonexistent"),
        }
        .mounts()
        .unwrap();
        assert!(find(&t, Path::new("/")).is_some());
    }
}
