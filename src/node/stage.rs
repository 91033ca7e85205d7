//! NodeStageVolume and NodeUnstageVolume: one mount per volume and node,
//! an NFS mount of its directory or a bind of a `mountedShare` directory.

use std::collections::HashMap;

use nix::errno::Errno;

use crate::grpc::csi::v1::{self as csi};
use crate::storage::export::ExportSpec;
use crate::storage::ids::{RelPath, VolumeId};
use crate::sys::hostpath::HostPath;
use crate::sys::mountopts;
use crate::sys::offload::{self};
use crate::sys::safefs::{self, DirFd};

use super::*;

impl NodeService {
    /// NFS options: the capability's flags first, then the given fallbacks,
    /// then the driver's defaults; an option named earlier wins. Every one
    /// is checked (nothing that changes what is mounted).
    pub(super) fn nfs_options(&self, sources: &[&[String]]) -> Result<Vec<String>> {
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
    pub(super) fn stage_source(
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

    pub(crate) async fn stage(
        &self,
        req: csi::NodeStageVolumeRequest,
    ) -> Result<csi::NodeStageVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id"));
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
                let hp = HostPath::create(&base, &path)?;
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

    pub(crate) async fn unstage(
        &self,
        req: csi::NodeUnstageVolumeRequest,
    ) -> Result<csi::NodeUnstageVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id"));
        }
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let _guard = self
            .inflight
            .acquire(&[format!("path:{}", staging.display())])?;
        self.teardown(&staging).await?;
        tracing::info!(staging = %staging.display(), "unstaged");
        Ok(csi::NodeUnstageVolumeResponse {})
    }
}
