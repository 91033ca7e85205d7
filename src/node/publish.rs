//! NodePublishVolume and NodeUnpublishVolume: the bind mount of the staged
//! volume into a pod, read-only when asked, single-writer when the access
//! mode says so.

use std::path::Path;

use crate::grpc::csi::v1::{self as csi, VolumeCapability, volume_capability};
use crate::sys::hostpath::HostPath;
use crate::sys::mount::{self, MountEntry};
use crate::sys::offload::{self};

use super::*;

/// Whether a capability asks for ReadWriteOncePod.
pub(super) fn is_single_writer(cap: Option<&VolumeCapability>) -> bool {
    cap.and_then(|c| c.access_mode.as_ref()).is_some_and(|m| {
        m.mode == volume_capability::access_mode::Mode::SingleNodeSingleWriter as i32
    })
}

pub(super) fn rw(ro: bool) -> &'static str {
    if ro { "read-only" } else { "read-write" }
}

/// The mount flags of a capability; block or no capability is an error.
pub(super) fn mount_flags(cap: Option<&VolumeCapability>) -> Result<Vec<String>> {
    let cap = cap.ok_or(Error::Missing("volume_capability"))?;
    match &cap.access_type {
        Some(volume_capability::AccessType::Mount(m)) => Ok(m.mount_flags.clone()),
        Some(volume_capability::AccessType::Block(_)) => Err(Error::Block),
        None => Err(Error::Missing("volume_capability.access_type")),
    }
}

impl NodeService {
    pub(crate) async fn publish(
        &self,
        req: csi::NodePublishVolumeRequest,
    ) -> Result<csi::NodePublishVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id"));
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
                let shp = HostPath::open(&base, &stg)?.ok_or_else(not_staged)?;
                let sdir = shp.dir()?.ok_or_else(not_staged)?;
                let stage = mounted_at(m.as_ref(), &table, &shp, &sdir)?.ok_or_else(not_staged)?;
                if !same_source(&table, stage, &expected) {
                    return Err(Error::WrongStage {
                        staging: stg.clone(),
                        found: stage.source.clone(),
                    });
                }
                let thp = HostPath::create(&base, &tgt)?;
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
                        });
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
    pub(super) async fn check_read_only(&self, target: &Path, readonly: bool) -> Result<()> {
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
        })
    }

    pub(crate) async fn unpublish(
        &self,
        req: csi::NodeUnpublishVolumeRequest,
    ) -> Result<csi::NodeUnpublishVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id"));
        }
        let target = self.path("target_path", &req.target_path)?;
        let _guard = self
            .inflight
            .acquire(&[format!("path:{}", target.display())])?;
        self.teardown(&target).await?;
        tracing::info!(target = %target.display(), "unpublished");
        Ok(csi::NodeUnpublishVolumeResponse {})
    }
}
