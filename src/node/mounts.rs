//! This volume's mounts in the kernel's mount table: finding them (one
//! volume's mounts are told apart by device, root and source) and tearing
//! them down. Shared by unstage, unpublish and stats.

use std::path::Path;

use nix::errno::Errno;

use crate::sys::hostpath::{self, HostPath};
use crate::sys::mount::{MountEntry, Mounter};
use crate::sys::offload::{self};

use super::*;

/// What a stage or publish found or did.
pub(super) enum Outcome {
    Done,
    Already,
    Conflict(String),
}

/// The mount exactly at the validated directory `dir` (the last component
/// of `hp`), if any: the mount its descriptor is on, when that differs from
/// its parent's, and only if the mount table shows it at this very path.
pub(super) fn mounted_at<'t>(
    m: &dyn Mounter,
    table: &'t [MountEntry],
    hp: &HostPath,
    dir: &hostpath::HostDir,
) -> Result<Option<&'t MountEntry>> {
    let id = m.mount_id(dir.into())?;
    if id == m.mount_id(hp.parent().into())? {
        return Ok(None);
    }
    match table.iter().find(|e| e.mount_id == id) {
        Some(e) if e.mount_point == hp.path() => Ok(Some(e)),
        Some(e) => Err(Error::Conflict {
            path: hp.path().to_path_buf(),
            reason: format!(
                "the mount there is shown at {} in the mount table; is --kubelet-dir a symlink?",
                e.mount_point.display()
            ),
        }),
        None => Err(Error::Conflict {
            path: hp.path().to_path_buf(),
            reason: "the mount there is not in the mount table".into(),
        }),
    }
}

/// Whether two mounts show the same directory: the same filesystem, root
/// and source (all mounts of one NFS export may share a device and a root
/// of `/`; their sources tell them apart).
pub(super) fn same_mount(a: &MountEntry, b: &MountEntry) -> bool {
    a.dev == b.dev && a.root == b.root && a.source == b.source
}

/// Whether the mount `entry` is the stage mount `source` asks for.
pub(super) fn same_source(table: &[MountEntry], entry: &MountEntry, source: &Source) -> bool {
    match source {
        Source::Nfs { source, .. } => entry.is_nfs() && entry.source == *source,
        Source::Dir { root, subdir } => {
            // The share's own mount: the longest mount point above the directory.
            let dir = root.join(subdir.as_str());
            let Some(share) = table
                .iter()
                .filter(|m| dir.starts_with(&m.mount_point))
                .max_by_key(|m| m.mount_point.as_os_str().len())
            else {
                return false;
            };
            let rel = dir.strip_prefix(&share.mount_point).unwrap_or(&dir);
            entry.dev == share.dev && entry.root == share.root.join(rel)
        }
    }
}

impl NodeService {
    /// Unmounts everything at `path` (stacked mounts too) and removes the
    /// directory. A mount whose NFS server does not answer is detached.
    /// Only a mount whose mount point is exactly the validated directory is
    /// unmounted; a symlink or a file there is an error and stays.
    pub(super) async fn teardown(&self, path: &Path) -> Result<()> {
        let base = self.base();
        for _ in 0..8 {
            let Some((dir, Some(entry))) = self.find_mount(path).await? else {
                break;
            };
            // The probe holds the descriptor; anything else lets it go
            // before the unmount, which it would otherwise keep busy.
            let alive = if entry.is_nfs() {
                self.statvfs(dir).await.is_ok()
            } else {
                drop(dir);
                true
            };
            if !alive {
                tracing::warn!(path = %path.display(), "server not responding: detaching lazily");
            }
            let (m, b, p) = (self.mounter.clone(), base.clone(), path.to_path_buf());
            offload::run("unmount", self.op_timeout(), move || -> Result<()> {
                if let Some(hp) = HostPath::open(&b, &p)? {
                    m.unmount_at(hp.parent().into(), hp.name(), !alive)?;
                }
                Ok(())
            })
            .await??;
        }
        let p = path.to_path_buf();
        offload::run("remove mount point", self.config.fs_timeout, move || {
            let Some(hp) = HostPath::open(&base, &p)? else {
                return Ok(());
            };
            match hp.remove_dir() {
                Err(hostpath::Error::Io {
                    source: Errno::ENOTEMPTY,
                    ..
                }) => Err(Error::NotEmpty { path: p }),
                other => Ok::<_, Error>(other?),
            }
        })
        .await?
    }

    /// What is at `path`: nothing (`None`), or the directory (held open)
    /// and the mount exactly on it, if any. A symlink or a file there is an
    /// error.
    pub(super) async fn find_mount(
        &self,
        path: &Path,
    ) -> Result<Option<(hostpath::HostDir, Option<MountEntry>)>> {
        let (m, base, p) = (self.mounter.clone(), self.base(), path.to_path_buf());
        offload::run("find mount", self.config.fs_timeout, move || {
            let Some(hp) = HostPath::open(&base, &p)? else {
                return Ok(None);
            };
            let Some(dir) = hp.dir()? else {
                return Ok(None);
            };
            let table = m.mounts()?;
            let entry = mounted_at(m.as_ref(), &table, &hp, &dir)?.cloned();
            Ok(Some((dir, entry)))
        })
        .await?
    }

    pub(super) async fn mounts(&self) -> Result<Vec<MountEntry>> {
        let m = self.mounter.clone();
        Ok(
            offload::run("read mount table", self.config.fs_timeout, move || {
                m.mounts()
            })
            .await??,
        )
    }
}
