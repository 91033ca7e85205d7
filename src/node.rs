//! The CSI Node service: stage a volume once per node (an NFS mount of its
//! directory, or a bind of it from a `mountedShare`), bind-mount it into
//! each pod, report usage and health, undo it all.
//!
//! Safety assumptions: what is mounted where is read from the kernel's mount
//! table on every call, so a restarted driver carries on where it stopped,
//! and a repeated call never stacks a second mount. Paths from requests are
//! checked (absolute, no `..`, below the kubelet directory when one is
//! configured). A `mountedShare` directory is opened component by component
//! without following symlinks and bound through its descriptor, so a pod
//! that swaps a directory for a symlink cannot get a host path mounted.
//! Inline (ephemeral) volumes are off unless the admin enables them, may only
//! name allowed NFS servers, and can never use `mountedShare`. Anything that
//! may touch an NFS server runs on the blocking pool under a timeout; a
//! mount whose server does not answer is detached lazily.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::config::Config;
use crate::csi::v1::{
    self as csi, NodeServiceCapability, VolumeCapability, VolumeCondition, node_server::Node,
    node_service_capability, volume_capability,
};
use crate::error::{Error as DriverError, respond};
use crate::export::ExportSpec;
use crate::hostpath::{self, HostPath};
use crate::inflight::InFlight;
use crate::mount::{self, MountEntry, Mounter};
use crate::mountopts;
use crate::offload::{self, Probes};
use crate::safefs::{self, DirFd};
use crate::volume::{RelPath, VolumeId, absolute_path};

/// Volume context key kubelet sets on CSI ephemeral inline volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error(
        "block access is not supported: nfs-csi volumes are directories; use volumeMode: Filesystem"
    )]
    Block,
    #[error("volume is not staged: nothing is mounted at {staging}; call NodeStageVolume first")]
    NotStaged { staging: PathBuf },
    #[error(
        "{staging} holds the stage of another volume ({found}), not of this one; publish from this volume's own staging path"
    )]
    WrongStage { staging: PathBuf, found: String },
    #[error(
        "the volume is ReadWriteOncePod (SINGLE_NODE_SINGLE_WRITER) and already published at {other}; unpublish it there first"
    )]
    SingleWriter { other: PathBuf },
    #[error("no volume at {path}: the path does not exist")]
    NoVolumeAt { path: String },
    #[error("{path} already has another mount: {reason}")]
    Conflict { path: PathBuf, reason: String },
    #[error("nothing is mounted at {path}")]
    NotMounted { path: PathBuf },
    #[error("{path} is not a mount point and is not empty; left in place")]
    NotEmpty { path: PathBuf },
    #[error("{path} was bound read-only but the mount table shows it writable")]
    NotReadOnly { path: PathBuf },
    #[error(
        "inline (ephemeral) volumes are disabled on this node; the admin enables them with --allow-inline"
    )]
    InlineDisabled,
    #[error("inline volume names server {0:?}, which the admin has not allowed (--inline-server)")]
    InlineServer(String),
    #[error("inline volume attribute {key:?}: {reason}")]
    InlineParameter { key: String, reason: String },
}

type Result<T> = std::result::Result<T, DriverError>;

pub struct NodeService {
    config: Arc<Config>,
    mounter: Arc<dyn Mounter>,
    probes: Probes<std::result::Result<safefs::FsStats, Errno>>,
    inflight: InFlight,
}

/// What a stage mount should look like.
enum Source {
    /// `server:/share/subdir` with these options.
    Nfs {
        source: String,
        options: Vec<String>,
    },
    /// A directory of a mounted share, bound.
    Dir { root: PathBuf, subdir: RelPath },
}

impl NodeService {
    pub fn new(config: Arc<Config>, mounter: Arc<dyn Mounter>) -> Self {
        NodeService {
            config,
            mounter,
            probes: Probes::default(),
            inflight: InFlight::default(),
        }
    }

    fn op_timeout(&self) -> Duration {
        self.config.mount_timeout + self.config.fs_timeout
    }

    /// The directory every staging and target path must be strictly below.
    fn base(&self) -> PathBuf {
        self.config
            .kubelet_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/"))
    }

    /// Validates a path from a request: absolute, no `.`, `..` or empty
    /// components, strictly below the kubelet directory. Symlinks are
    /// checked when the path is opened (see `hostpath`).
    fn path(&self, what: &'static str, s: &str) -> Result<PathBuf> {
        if s.is_empty() {
            return Err(Error::Missing(what).into());
        }
        let p = absolute_path(what, s)?;
        hostpath::check_below(&self.base(), &p)?;
        Ok(p)
    }

    /// NFS options: the capability's flags first, then the given fallbacks,
    /// then the driver's defaults; an option named earlier wins. Every one
    /// is checked (nothing that changes what is mounted).
    fn nfs_options(&self, sources: &[&[String]]) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        let name = |o: &str| o.split('=').next().unwrap_or(o).to_string();
        let defaults = self.config.nfs_default_options.as_slice();
        for list in sources.iter().copied().chain(std::iter::once(defaults)) {
            for o in mountopts::split(list) {
                if out.iter().any(|x| name(x) == name(&o)) {
                    continue;
                }
                out.push(o);
            }
        }
        mountopts::check_all(&out)?;
        Ok(out)
    }

    /// What the stage mount of a volume is: from its id, or for a
    /// statically provisioned PV (written by the admin) from its
    /// volumeAttributes.
    fn stage_source(
        &self,
        volume_id: &str,
        ctx: &HashMap<String, String>,
        flags: &[String],
    ) -> Result<Source> {
        let ctx_options: Vec<String> = ctx
            .get("mountOptions")
            .map(|o| vec![o.clone()])
            .unwrap_or_default();
        Ok(match VolumeId::parse(volume_id) {
            Ok(id) => match &id.export {
                ExportSpec::Nfs { options, .. } => Source::Nfs {
                    source: id.export.nfs_source(Some(&id.subdir)).unwrap_or_default(),
                    options: self.nfs_options(&[flags, &ctx_options, options])?,
                },
                ExportSpec::Mounted { root } => Source::Dir {
                    root: root.clone(),
                    subdir: id.subdir.clone(),
                },
            },
            Err(e) => match (ctx.get("server"), ctx.get("share")) {
                (Some(server), Some(share)) => {
                    let options = self.nfs_options(&[flags, &ctx_options])?;
                    let export = ExportSpec::nfs(server, share, &options)?;
                    let subdir = ctx.get("subDir").map(|s| RelPath::parse(s)).transpose()?;
                    Source::Nfs {
                        source: export.nfs_source(subdir.as_ref()).unwrap_or_default(),
                        options,
                    }
                }
                _ => return Err(e.into()),
            },
        })
    }

    async fn stage(
        &self,
        req: csi::NodeStageVolumeRequest,
    ) -> Result<csi::NodeStageVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let flags = mount_flags(req.volume_capability.as_ref())?;
        let source = self.stage_source(&req.volume_id, &req.volume_context, &flags)?;
        let _guard = self
            .inflight
            .acquire(&[format!("path:{}", staging.display())])?;
        let (m, base, path) = (self.mounter.clone(), self.base(), staging.clone());
        let outcome = offload::run(
            "stage mount",
            self.op_timeout(),
            move || -> Result<Outcome> {
                let hp = resolve(&base, &path, true)?;
                with_dir(&hp, |dir| {
                    let table = m.mounts()?;
                    if let Some(existing) = mounted_at(m.as_ref(), &table, &hp, dir)? {
                        return Ok(if same_source(&table, existing, &source) {
                            Outcome::Already
                        } else {
                            Outcome::Conflict(format!(
                                "{} is mounted there, not this volume",
                                existing.source
                            ))
                        });
                    }
                    match &source {
                        Source::Nfs { source, options } => {
                            m.attach_nfs(source, options, dir.into())?
                        }
                        Source::Dir { root, subdir } => {
                            let share = DirFd::open_root(root)?.walk(subdir)?.ok_or_else(|| {
                                safefs::Error::Io {
                                    op: "open",
                                    path: root.join(subdir.as_str()),
                                    source: Errno::ENOENT,
                                }
                            })?;
                            m.attach_bind((&share).into(), dir.into(), false)?;
                        }
                    }
                    Ok(Outcome::Done)
                })
            },
        )
        .await??;
        outcome.finish(&staging, "staged")?;
        Ok(csi::NodeStageVolumeResponse {})
    }

    /// Unmounts everything at `path` (stacked mounts too) and removes the
    /// directory. A mount whose NFS server does not answer is detached.
    /// Only a mount whose mount point is exactly the validated directory is
    /// unmounted; a symlink or a file there is an error and stays.
    async fn teardown(&self, path: &Path) -> Result<()> {
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
                if let Some(hp) = HostPath::resolve(&b, &p, false)? {
                    m.unmount_at(hp.parent().into(), hp.name(), !alive)?;
                }
                Ok(())
            })
            .await??;
        }
        let p = path.to_path_buf();
        offload::run("remove mount point", self.config.fs_timeout, move || {
            let Some(hp) = HostPath::resolve(&base, &p, false)? else {
                return Ok(());
            };
            match hp.remove_dir() {
                Err(hostpath::Error::Io {
                    source: Errno::ENOTEMPTY,
                    ..
                }) => Err(Error::NotEmpty { path: p }.into()),
                other => Ok::<_, DriverError>(other?),
            }
        })
        .await?
    }

    /// What is at `path`: nothing (`None`), or the directory (held open)
    /// and the mount exactly on it, if any. A symlink or a file there is an
    /// error.
    async fn find_mount(
        &self,
        path: &Path,
    ) -> Result<Option<(hostpath::HostDir, Option<MountEntry>)>> {
        let (m, base, p) = (self.mounter.clone(), self.base(), path.to_path_buf());
        offload::run("find mount", self.config.fs_timeout, move || {
            let Some(hp) = HostPath::resolve(&base, &p, false)? else {
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

    /// statvfs of a mount point, through its descriptor (the path is not
    /// resolved again), under the stats timeout, one at a time per path.
    async fn statvfs(
        &self,
        dir: hostpath::HostDir,
    ) -> Result<std::result::Result<safefs::FsStats, Errno>> {
        let label = format!("statvfs {}", dir.path().display());
        Ok(self
            .probes
            .run(&label, self.config.stats_timeout, move || {
                safefs::fs_stats_fd(dir.fd())
            })
            .await?)
    }

    async fn unstage(
        &self,
        req: csi::NodeUnstageVolumeRequest,
    ) -> Result<csi::NodeUnstageVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let _guard = self
            .inflight
            .acquire(&[format!("path:{}", staging.display())])?;
        self.teardown(&staging).await?;
        tracing::info!(staging = %staging.display(), "unstaged");
        Ok(csi::NodeUnstageVolumeResponse {})
    }

    async fn publish(
        &self,
        req: csi::NodePublishVolumeRequest,
    ) -> Result<csi::NodePublishVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        let target = self.path("target_path", &req.target_path)?;
        let flags = mount_flags(req.volume_capability.as_ref())?;
        if req.volume_context.get(EPHEMERAL_KEY).map(String::as_str) == Some("true") {
            return self.publish_inline(&req, target, &flags).await;
        }
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let single_writer = is_single_writer(req.volume_capability.as_ref());
        let expected = self.stage_source(&req.volume_id, &req.volume_context, &flags)?;
        // A ReadWriteOncePod publish also holds its staging path, so two at
        // once for one volume cannot both pass the check below.
        let mut keys = vec![format!("path:{}", target.display())];
        if single_writer {
            keys.push(format!("single-writer:{}", staging.display()));
        }
        let _guard = self.inflight.acquire(&keys)?;
        let (m, base, ro) = (self.mounter.clone(), self.base(), req.readonly);
        let (stg, tgt) = (staging.clone(), target.clone());
        let outcome = offload::run(
            "publish bind mount",
            self.op_timeout(),
            move || -> Result<Outcome> {
                let table = m.mounts()?;
                let not_staged = || Error::NotStaged {
                    staging: stg.clone(),
                };
                let shp = HostPath::resolve(&base, &stg, false)?.ok_or_else(not_staged)?;
                let sdir = shp.dir()?.ok_or_else(not_staged)?;
                let stage = mounted_at(m.as_ref(), &table, &shp, &sdir)?.ok_or_else(not_staged)?;
                if !same_source(&table, stage, &expected) {
                    return Err(Error::WrongStage {
                        staging: stg.clone(),
                        found: stage.source.clone(),
                    }
                    .into());
                }
                let thp = resolve(&base, &tgt, true)?;
                with_dir(&thp, |tdir| {
                    if let Some(existing) = mounted_at(m.as_ref(), &table, &thp, tdir)? {
                        let same = same_mount(existing, stage);
                        if same && existing.read_only() == ro {
                            return Ok(Outcome::Already);
                        }
                        return Ok(Outcome::Conflict(if same {
                            format!(
                                "this volume is published there {}, the request asks {}",
                                rw(existing.read_only()),
                                rw(ro)
                            )
                        } else {
                            format!("{} is mounted there, not this volume", existing.source)
                        }));
                    }
                    if single_writer
                        && let Some(other) = table.iter().find(|e| {
                            same_mount(e, stage) && e.mount_point != stg && e.mount_point != tgt
                        })
                    {
                        return Err(Error::SingleWriter {
                            other: other.mount_point.clone(),
                        }
                        .into());
                    }
                    m.attach_bind((&sdir).into(), tdir.into(), ro)?;
                    Ok(Outcome::Done)
                })
            },
        )
        .await??;
        if outcome.finish(&target, "published")? {
            self.check_read_only(&target, req.readonly).await?;
        }
        Ok(csi::NodePublishVolumeResponse {})
    }

    /// Confirms from the mount table that a read-only request got a
    /// read-only mount; undoes the mount otherwise.
    async fn check_read_only(&self, target: &Path, readonly: bool) -> Result<()> {
        if !readonly {
            return Ok(());
        }
        let table = self.mounts().await?;
        if mount::find(&table, target).is_some_and(MountEntry::read_only) {
            return Ok(());
        }
        self.teardown(target).await?;
        Err(Error::NotReadOnly {
            path: target.to_path_buf(),
        }
        .into())
    }

    async fn mounts(&self) -> Result<Vec<MountEntry>> {
        let m = self.mounter.clone();
        Ok(
            offload::run("read mount table", self.config.fs_timeout, move || {
                m.mounts()
            })
            .await??,
        )
    }

    async fn publish_inline(
        &self,
        req: &csi::NodePublishVolumeRequest,
        target: PathBuf,
        flags: &[String],
    ) -> Result<csi::NodePublishVolumeResponse> {
        if !self.config.allow_inline {
            return Err(Error::InlineDisabled.into());
        }
        let (source, options) = self.inline_source(&req.volume_context, flags, req.readonly)?;
        let _guard = self
            .inflight
            .acquire(&[format!("path:{}", target.display())])?;
        let (m, base, ro, tgt) = (
            self.mounter.clone(),
            self.base(),
            req.readonly,
            target.clone(),
        );
        let outcome = offload::run(
            "inline mount",
            self.op_timeout(),
            move || -> Result<Outcome> {
                let hp = resolve(&base, &tgt, true)?;
                with_dir(&hp, |dir| {
                    let table = m.mounts()?;
                    if let Some(existing) = mounted_at(m.as_ref(), &table, &hp, dir)? {
                        return Ok(
                            if existing.is_nfs()
                                && existing.source == source
                                && existing.read_only() == ro
                            {
                                Outcome::Already
                            } else {
                                Outcome::Conflict(format!("{} is mounted there", existing.source))
                            },
                        );
                    }
                    m.attach_nfs(&source, &options, dir.into())?;
                    Ok(Outcome::Done)
                })
            },
        )
        .await??;
        if outcome.finish(&target, "inline volume published")? {
            self.check_read_only(&target, req.readonly).await?;
        }
        Ok(csi::NodePublishVolumeResponse {})
    }

    /// The NFS source and options of an inline volume, checked against
    /// what the admin allows: an allowed server, and only the NFS client
    /// options of the inline allow-list from the pod's mount flags.
    fn inline_source(
        &self,
        ctx: &HashMap<String, String>,
        flags: &[String],
        readonly: bool,
    ) -> Result<(String, Vec<String>)> {
        let mut keys: Vec<&String> = ctx.keys().collect();
        keys.sort();
        for key in keys {
            let ok = matches!(key.as_str(), "server" | "share" | "subDir")
                || key.starts_with("csi.storage.k8s.io/");
            if !ok {
                let reason = if key == "mountedShare" {
                    "inline volumes cannot use a host path; only server, share and subDir".into()
                } else {
                    "unknown; inline volumes take server, share and subDir".into()
                };
                return Err(Error::InlineParameter {
                    key: key.clone(),
                    reason,
                }
                .into());
            }
        }
        let get = |k: &'static str| {
            ctx.get(k).ok_or(Error::InlineParameter {
                key: k.into(),
                reason: "missing".into(),
            })
        };
        let server = get("server")?;
        if !self.config.inline_servers.iter().any(|s| s == server) {
            return Err(Error::InlineServer(server.clone()).into());
        }
        for o in mountopts::split(flags) {
            mountopts::check_inline(&o)?;
        }
        let export = ExportSpec::nfs(server, get("share")?, &[])?;
        let subdir = ctx.get("subDir").map(|s| RelPath::parse(s)).transpose()?;
        let source = export.nfs_source(subdir.as_ref()).unwrap_or_default();
        let mut options = self.nfs_options(&[flags])?;
        if readonly && !options.iter().any(|o| o == "ro") {
            options.retain(|o| o != "rw");
            options.push("ro".into());
        }
        // A pod's own NFS mount never carries setuid binaries or device
        // nodes onto the host's mount table.
        for o in ["nosuid", "nodev"] {
            if !options.iter().any(|x| x == o) {
                options.push(o.into());
            }
        }
        Ok((source, options))
    }

    async fn unpublish(
        &self,
        req: csi::NodeUnpublishVolumeRequest,
    ) -> Result<csi::NodeUnpublishVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        let target = self.path("target_path", &req.target_path)?;
        let _guard = self
            .inflight
            .acquire(&[format!("path:{}", target.display())])?;
        self.teardown(&target).await?;
        tracing::info!(target = %target.display(), "unpublished");
        Ok(csi::NodeUnpublishVolumeResponse {})
    }

    async fn stats(
        &self,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> Result<csi::NodeGetVolumeStatsResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        if req.volume_path.is_empty() {
            return Err(Error::Missing("volume_path").into());
        }
        // A path that is not a clean absolute one names nothing there is.
        let no_volume = || Error::NoVolumeAt {
            path: crate::volume::quote(&req.volume_path),
        };
        let path = absolute_path("volume_path", &req.volume_path).map_err(|_| no_volume())?;
        hostpath::check_below(&self.base(), &path)?;
        let dir = match self.find_mount(&path).await? {
            None => return Err(no_volume().into()),
            Some((_, None)) => return Err(Error::NotMounted { path }.into()),
            Some((dir, Some(_))) => dir,
        };
        let secs = self.config.stats_timeout.as_secs().max(1);
        let (usage, condition) = match self.statvfs(dir).await {
            Ok(Ok(s)) => (
                vec![
                    usage(
                        csi::volume_usage::Unit::Bytes,
                        s.total_bytes,
                        s.used_bytes,
                        s.available_bytes,
                    ),
                    usage(
                        csi::volume_usage::Unit::Inodes,
                        s.total_inodes,
                        s.used_inodes,
                        s.free_inodes,
                    ),
                ],
                VolumeCondition {
                    abnormal: false,
                    message: "volume is healthy".into(),
                },
            ),
            Ok(Err(Errno::ESTALE)) => (
                vec![],
                VolumeCondition {
                    abnormal: true,
                    message: "stale file handle: the volume's directory or export was removed or \
                              replaced on the NFS server"
                        .into(),
                },
            ),
            Ok(Err(e)) => (
                vec![],
                VolumeCondition {
                    abnormal: true,
                    message: format!("statvfs failed: {e}"),
                },
            ),
            Err(DriverError::Offload(_)) => (
                vec![],
                VolumeCondition {
                    abnormal: true,
                    message: format!(
                        "NFS server not responding: statvfs did not return within {secs} s"
                    ),
                },
            ),
            Err(e) => return Err(e),
        };
        Ok(csi::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(condition),
        })
    }
}

/// What a stage or publish found or did.
enum Outcome {
    Done,
    Already,
    Conflict(String),
}

impl Outcome {
    /// Logs the outcome; a conflict becomes the error. True when a mount
    /// was made.
    fn finish(self, path: &Path, done: &'static str) -> Result<bool> {
        match self {
            Outcome::Done => {
                tracing::info!(path = %path.display(), "{done}");
                Ok(true)
            }
            Outcome::Already => {
                tracing::info!(path = %path.display(), "already {done}");
                Ok(false)
            }
            Outcome::Conflict(reason) => Err(Error::Conflict {
                path: path.to_path_buf(),
                reason,
            }
            .into()),
        }
    }
}

/// Resolves a path that must be creatable (`HostPath::resolve` with
/// `create` never answers `None`).
fn resolve(base: &Path, path: &Path, create: bool) -> Result<HostPath> {
    Ok(
        HostPath::resolve(base, path, create)?.ok_or_else(|| hostpath::Error::Io {
            op: "open",
            path: path.to_path_buf(),
            source: Errno::ENOENT,
        })?,
    )
}

/// The mount exactly at the validated directory `dir` (the last component
/// of `hp`), if any: the mount its descriptor is on, when that differs from
/// its parent's, and only if the mount table shows it at this very path.
fn mounted_at<'t>(
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
        }
        .into()),
        None => Err(Error::Conflict {
            path: hp.path().to_path_buf(),
            reason: "the mount there is not in the mount table".into(),
        }
        .into()),
    }
}

/// Runs `work` on the directory at `hp`, created if missing; a directory
/// this call created is removed again when `work` fails, so a refused or
/// failed mount leaves nothing behind.
fn with_dir<T>(hp: &HostPath, work: impl FnOnce(&hostpath::HostDir) -> Result<T>) -> Result<T> {
    let (dir, created) = hp.dir_or_create()?;
    let out = work(&dir);
    drop(dir);
    if out.is_err() && created {
        let _ = hp.remove_dir();
    }
    out
}

/// Whether two mounts show the same directory: the same filesystem, root
/// and source (all mounts of one NFS export may share a device and a root
/// of `/`; their sources tell them apart).
fn same_mount(a: &MountEntry, b: &MountEntry) -> bool {
    a.dev == b.dev && a.root == b.root && a.source == b.source
}

/// Whether the mount `entry` is the stage mount `source` asks for.
fn same_source(table: &[MountEntry], entry: &MountEntry, source: &Source) -> bool {
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

/// Whether a capability asks for ReadWriteOncePod.
fn is_single_writer(cap: Option<&VolumeCapability>) -> bool {
    cap.and_then(|c| c.access_mode.as_ref()).is_some_and(|m| {
        m.mode == volume_capability::access_mode::Mode::SingleNodeSingleWriter as i32
    })
}

fn rw(ro: bool) -> &'static str {
    if ro { "read-only" } else { "read-write" }
}

fn usage(unit: csi::volume_usage::Unit, total: u64, used: u64, available: u64) -> csi::VolumeUsage {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    csi::VolumeUsage {
        available: i(available),
        total: i(total),
        used: i(used),
        unit: unit as i32,
    }
}

/// The mount flags of a capability; block or no capability is an error.
fn mount_flags(cap: Option<&VolumeCapability>) -> Result<Vec<String>> {
    let cap = cap.ok_or(Error::Missing("volume_capability"))?;
    match &cap.access_type {
        Some(volume_capability::AccessType::Mount(m)) => Ok(m.mount_flags.clone()),
        Some(volume_capability::AccessType::Block(_)) => Err(Error::Block.into()),
        None => Err(Error::Missing("volume_capability.access_type").into()),
    }
}

fn node_capability(t: node_service_capability::rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(
            node_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    #[instrument(skip_all, fields(volume_id = %crate::volume::short(&request.get_ref().volume_id)))]
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> std::result::Result<Response<csi::NodeStageVolumeResponse>, Status> {
        respond(self.stage(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %crate::volume::short(&request.get_ref().volume_id)))]
    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> std::result::Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        respond(self.unstage(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %crate::volume::short(&request.get_ref().volume_id)))]
    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> std::result::Result<Response<csi::NodePublishVolumeResponse>, Status> {
        respond(self.publish(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %crate::volume::short(&request.get_ref().volume_id)))]
    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> std::result::Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        respond(self.unpublish(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %crate::volume::short(&request.get_ref().volume_id)))]
    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> std::result::Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        respond(self.stats(request.into_inner())).await
    }

    #[instrument(skip_all)]
    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        let capabilities = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::VolumeCondition,
            Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(node_capability)
        .collect();
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities,
        }))
    }

    #[instrument(skip_all)]
    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> std::result::Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::to_status;
    use crate::mount::FakeMounter;

    fn service(allow_inline: bool) -> (NodeService, Arc<FakeMounter>, tempfile::TempDir) {
        let t = tempfile::tempdir().unwrap();
        let mut c = crate::config::test_config(t.path().join("work"));
        c.allow_inline = allow_inline;
        c.inline_servers = vec!["nfs.allowed".into()];
        c.nfs_default_options = vec!["hard".into(), "nfsvers=4.1".into()];
        c.kubelet_dir = Some(t.path().to_path_buf());
        let fake = Arc::new(FakeMounter::default());
        (NodeService::new(Arc::new(c), fake.clone()), fake, t)
    }

    fn mount_cap(flags: &[&str]) -> Option<VolumeCapability> {
        Some(VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume {
                    mount_flags: flags.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
            )),
            access_mode: None,
        })
    }

    #[tokio::test]
    async fn nfs_stage_uses_options_in_order_and_is_idempotent() {
        let (svc, fake, t) = service(false);
        let id = "v1#nfs#10.0.0.1#/exports#nfsvers=3#pvc-1";
        let staging = t.path().join("plugins/x/globalmount");
        let req = csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: mount_cap(&["nfsvers=4.2,noatime"]),
            ..Default::default()
        };
        svc.stage(req.clone()).await.unwrap();
        svc.stage(req.clone()).await.unwrap();
        let mounts: Vec<String> = fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("mount_nfs"))
            .collect();
        assert_eq!(
            mounts,
            vec![format!(
                "mount_nfs 10.0.0.1:/exports/pvc-1 {} nfsvers=4.2,noatime,hard",
                staging.display()
            )]
        );
        // another volume on the same staging path: conflict, no second mount
        let mut other = req.clone();
        other.volume_id = "v1#nfs#10.0.0.1#/exports##pvc-2".into();
        let err = to_status(svc.stage(other).await.unwrap_err());
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
        assert_eq!(fake.mounts().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn static_pv_uses_volume_attributes_and_their_mount_options() {
        let (svc, fake, t) = service(false);
        let staging = t.path().join("plugins/s/globalmount");
        let mut req = csi::NodeStageVolumeRequest {
            volume_id: "any-handle-the-admin-chose".into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: mount_cap(&[]),
            ..Default::default()
        };
        req.volume_context = [
            ("server".to_string(), "nfs.example".to_string()),
            ("share".to_string(), "/exports".to_string()),
            ("subDir".to_string(), "team/data".to_string()),
            ("mountOptions".to_string(), "nfsvers=3,nolock".to_string()),
        ]
        .into();
        svc.stage(req.clone()).await.unwrap();
        assert_eq!(
            fake.calls(),
            vec![format!(
                "mount_nfs nfs.example:/exports/team/data {} nfsvers=3,nolock,hard",
                staging.display()
            )]
        );
        req.volume_context
            .insert("subDir".into(), "../../etc".into());
        req.staging_target_path = t
            .path()
            .join("plugins/s2/globalmount")
            .display()
            .to_string();
        assert_eq!(
            to_status(svc.stage(req).await.unwrap_err()).code(),
            tonic::Code::InvalidArgument
        );
    }

    #[tokio::test]
    async fn options_that_change_what_is_mounted_are_refused_everywhere() {
        let (svc, fake, t) = service(true);
        let staging = t.path().join("plugins/o/globalmount");
        // from the capability (StorageClass or PV mountOptions), from the
        // id, from a static PV's attributes
        let cases: Vec<csi::NodeStageVolumeRequest> = vec![
            csi::NodeStageVolumeRequest {
                volume_id: "v1#nfs#10.0.0.1#/exports##pvc-1".into(),
                volume_capability: mount_cap(&["nfsvers=4.1,bind"]),
                ..Default::default()
            },
            csi::NodeStageVolumeRequest {
                volume_id: "v1#nfs#10.0.0.1#/exports#X-mount.mkdir#pvc-1".into(),
                volume_capability: mount_cap(&[]),
                ..Default::default()
            },
            csi::NodeStageVolumeRequest {
                volume_id: "static".into(),
                volume_capability: mount_cap(&[]),
                volume_context: [
                    ("server".to_string(), "nfs.example".to_string()),
                    ("share".to_string(), "/e".to_string()),
                    ("mountOptions".to_string(), "remount".to_string()),
                ]
                .into(),
                ..Default::default()
            },
        ];
        for mut req in cases {
            req.staging_target_path = staging.display().to_string();
            // an id carrying such an option is no id of this driver
            let want = if req.volume_id.contains("X-mount") {
                tonic::Code::NotFound
            } else {
                tonic::Code::InvalidArgument
            };
            let err = to_status(svc.stage(req).await.unwrap_err());
            assert_eq!(err.code(), want, "{}", err.message());
            assert!(
                err.message().contains("changes what is mounted"),
                "{}",
                err.message()
            );
        }
        // a pod's inline volume: only the NFS client allow-list
        for flags in [
            &["bind"][..],
            &["context=system_u:object_r:nfs_t:s0"],
            &["addr=10.9.9.9"],
        ] {
            let req = csi::NodePublishVolumeRequest {
                volume_id: "csi-abc".into(),
                target_path: t.path().join("pods/u/mount").display().to_string(),
                volume_capability: mount_cap(flags),
                volume_context: [
                    (EPHEMERAL_KEY.to_string(), "true".to_string()),
                    ("server".to_string(), "nfs.allowed".to_string()),
                    ("share".to_string(), "/e".to_string()),
                ]
                .into(),
                ..Default::default()
            };
            let err = to_status(svc.publish(req).await.unwrap_err());
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{flags:?}: {}",
                err.message()
            );
            assert!(err.message().contains(flags[0]), "{}", err.message());
        }
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        assert!(!staging.exists() && !t.path().join("pods").exists());
    }

    #[tokio::test]
    async fn bad_paths_touch_nothing() {
        let (svc, fake, t) = service(false);
        for path in ["relative/x", "/etc/passwd", "", "/a/../b"] {
            let req = csi::NodeStageVolumeRequest {
                volume_id: "v1#nfs#10.0.0.1#/exports##pvc-1".into(),
                staging_target_path: path.into(),
                volume_capability: mount_cap(&[]),
                ..Default::default()
            };
            let err = to_status(svc.stage(req).await.unwrap_err());
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{path}: {}",
                err.message()
            );
        }
        let req = csi::NodeStageVolumeRequest {
            volume_id: "bogus".into(),
            staging_target_path: t.path().join("s").display().to_string(),
            volume_capability: mount_cap(&[]),
            ..Default::default()
        };
        assert_eq!(
            to_status(svc.stage(req).await.unwrap_err()).code(),
            tonic::Code::NotFound
        );
        assert!(
            fake.calls().iter().all(|c| !c.starts_with("mount")),
            "{:?}",
            fake.calls()
        );
        assert!(!t.path().join("s").exists());
    }

    #[tokio::test]
    async fn inline_volumes_are_opt_in_and_restricted() {
        let ctx = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            let mut m: HashMap<String, String> = kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            m.insert(EPHEMERAL_KEY.into(), "true".into());
            m
        };
        let req = |t: &Path, c: HashMap<String, String>| csi::NodePublishVolumeRequest {
            volume_id: "csi-abc".into(),
            target_path: t
                .join("pods/u/volumes/kubernetes.io~csi/v/mount")
                .display()
                .to_string(),
            volume_capability: mount_cap(&[]),
            volume_context: c,
            ..Default::default()
        };
        let (off, fake_off, t_off) = service(false);
        let err = to_status(
            off.publish(req(
                t_off.path(),
                ctx(&[("server", "nfs.allowed"), ("share", "/e")]),
            ))
            .await
            .unwrap_err(),
        );
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(fake_off.calls().is_empty());

        let (on, fake, t) = service(true);
        let err = to_status(
            on.publish(req(
                t.path(),
                ctx(&[("server", "evil.example"), ("share", "/e")]),
            ))
            .await
            .unwrap_err(),
        );
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let err = to_status(
            on.publish(req(
                t.path(),
                ctx(&[("mountedShare", "/"), ("server", "nfs.allowed")]),
            ))
            .await
            .unwrap_err(),
        );
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("host path"), "{}", err.message());
        let err = to_status(
            on.publish(req(
                t.path(),
                ctx(&[
                    ("server", "nfs.allowed"),
                    ("share", "/e"),
                    ("subDir", "../.."),
                ]),
            ))
            .await
            .unwrap_err(),
        );
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        on.publish(req(
            t.path(),
            ctx(&[
                ("server", "nfs.allowed"),
                ("share", "/e"),
                ("subDir", "a/b"),
            ]),
        ))
        .await
        .unwrap();
        assert_eq!(fake.calls().len(), 1);
        assert!(
            fake.calls()[0].starts_with("mount_nfs nfs.allowed:/e/a/b "),
            "{:?}",
            fake.calls()
        );
        // a pod's NFS mount never carries setuid binaries or devices
        assert!(
            fake.calls()[0].ends_with(",nosuid,nodev"),
            "{:?}",
            fake.calls()
        );
    }
}
