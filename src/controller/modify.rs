//! ControllerModifyVolume: a volume's mutable parameters (`onDelete`,
//! `mountPermissions`, as a VolumeAttributesClass gives them) changed after
//! creation.

use crate::grpc::csi::v1::{self as csi};
use crate::storage::ids::VolumeId;
use crate::storage::params;
use crate::sys::offload;

use super::*;

impl ControllerService {
    pub(crate) async fn modify(
        &self,
        req: csi::ControllerModifyVolumeRequest,
    ) -> Result<csi::ControllerModifyVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id"));
        }
        let change = params::mutable_params(&req.mutable_parameters)?;
        let id = VolumeId::parse(&req.volume_id)?;
        // The same key as CreateVolume, DeleteVolume and expansion: the
        // record is never rewritten by two calls at once.
        let _guard =
            self.inflight
                .acquire(&[format!("dir:{}/{}", id.export.key(), id.subdir.as_str())])?;
        let (root, _) = self.exports.ready(&id.export).await?;
        let subdir = id.subdir.clone();
        let vid = req.volume_id.clone();
        let rec = offload::run("modify volume", self.exports.timeouts().fs, move || {
            modify_on_export(&root, &subdir, &change, &vid)
        })
        .await??;
        tracing::info!(
            volume_id = %id,
            on_delete = ?rec.on_delete,
            mount_permissions = ?rec.mount_permissions.map(|m| format!("{m:04o}")),
            "volume modified"
        );
        Ok(csi::ControllerModifyVolumeResponse {})
    }
}
