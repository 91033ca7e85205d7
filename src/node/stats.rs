//! NodeGetVolumeStats: usage and health of a published volume; statvfs
//! runs on the blocking pool under `--stats-timeout`.

use nix::errno::Errno;

use crate::grpc::csi::v1::{self as csi, VolumeCondition};
use crate::storage::ids::absolute_path;
use crate::sys::hostpath::{self};
use crate::sys::safefs::{self};

use super::*;

pub(super) fn usage(
    unit: csi::volume_usage::Unit,
    total: u64,
    used: u64,
    available: u64,
) -> csi::VolumeUsage {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    csi::VolumeUsage {
        available: i(available),
        total: i(total),
        used: i(used),
        unit: unit as i32,
    }
}

impl NodeService {
    /// statvfs of a mount point, through its descriptor (the path is not
    /// resolved again), under the stats timeout, one at a time per path.
    pub(super) async fn statvfs(
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

    pub(crate) async fn stats(
        &self,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> Result<csi::NodeGetVolumeStatsResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id"));
        }
        if req.volume_path.is_empty() {
            return Err(Error::Missing("volume_path"));
        }
        // A path that is not a clean absolute one names nothing there is.
        let no_volume = || Error::NoVolumeAt {
            path: crate::sys::text::quote(&req.volume_path),
        };
        let path = absolute_path("volume_path", &req.volume_path).map_err(|_| no_volume())?;
        hostpath::check_below(&self.base(), &path)?;
        let dir = match self.find_mount(&path).await? {
            None => return Err(no_volume()),
            Some((_, None)) => return Err(Error::NotMounted { path }),
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
            Err(Error::Offload(_)) => (
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
