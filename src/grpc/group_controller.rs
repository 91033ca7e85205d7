//! The tonic `GroupController` trait: one call per RPC into
//! `controller::groups`, each in a span naming its group snapshot, its
//! result turned into a reply or a status by `status::respond`.

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::csi::v1::{self as csi, group_controller_server::GroupController};
use super::status::respond;
use crate::controller::ControllerService;
use crate::sys::text::short;

#[tonic::async_trait]
impl GroupController for ControllerService {
    #[instrument(skip_all)]
    async fn group_controller_get_capabilities(
        &self,
        _request: Request<csi::GroupControllerGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<csi::GroupControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(ControllerService::group_capabilities()))
    }

    #[instrument(skip_all, fields(name = %short(&request.get_ref().name), volumes = request.get_ref().source_volume_ids.len()))]
    async fn create_volume_group_snapshot(
        &self,
        request: Request<csi::CreateVolumeGroupSnapshotRequest>,
    ) -> std::result::Result<Response<csi::CreateVolumeGroupSnapshotResponse>, Status> {
        respond(self.create_group(request.into_inner())).await
    }

    #[instrument(skip_all, fields(group_snapshot_id = %short(&request.get_ref().group_snapshot_id)))]
    async fn delete_volume_group_snapshot(
        &self,
        request: Request<csi::DeleteVolumeGroupSnapshotRequest>,
    ) -> std::result::Result<Response<csi::DeleteVolumeGroupSnapshotResponse>, Status> {
        respond(self.delete_group(request.into_inner())).await
    }

    #[instrument(skip_all, fields(group_snapshot_id = %short(&request.get_ref().group_snapshot_id)))]
    async fn get_volume_group_snapshot(
        &self,
        request: Request<csi::GetVolumeGroupSnapshotRequest>,
    ) -> std::result::Result<Response<csi::GetVolumeGroupSnapshotResponse>, Status> {
        respond(self.get_group(request.into_inner())).await
    }
}
