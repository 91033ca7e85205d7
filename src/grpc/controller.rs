//! The tonic `Controller` trait: one call per RPC, each in a span naming
//! its volume or snapshot, its result turned into a reply or a status by
//! `status::respond`.

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::csi::v1::{self as csi, controller_server::Controller};
use super::status::respond;
use crate::controller::ControllerService;
use crate::sys::text::short;

#[tonic::async_trait]
impl Controller for ControllerService {
    #[instrument(skip_all, fields(name = %short(&request.get_ref().name)))]
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> std::result::Result<Response<csi::CreateVolumeResponse>, Status> {
        respond(self.create(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %short(&request.get_ref().volume_id)))]
    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> std::result::Result<Response<csi::DeleteVolumeResponse>, Status> {
        respond(self.delete(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %short(&request.get_ref().volume_id)))]
    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> std::result::Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        respond(self.validate(request.into_inner())).await
    }

    #[instrument(skip_all, fields(token = %short(&request.get_ref().starting_token)))]
    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> std::result::Result<Response<csi::ListVolumesResponse>, Status> {
        respond(self.list(request.into_inner())).await
    }

    #[instrument(skip_all)]
    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> std::result::Result<Response<csi::GetCapacityResponse>, Status> {
        respond(self.capacity(request.into_inner())).await
    }

    #[instrument(skip_all)]
    async fn controller_get_capabilities(
        &self,
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(ControllerService::capabilities()))
    }

    #[instrument(skip_all, fields(name = %short(&request.get_ref().name), source = %short(&request.get_ref().source_volume_id)))]
    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> std::result::Result<Response<csi::CreateSnapshotResponse>, Status> {
        respond(ControllerService::create_snapshot(
            self,
            request.into_inner(),
        ))
        .await
    }

    #[instrument(skip_all, fields(snapshot_id = %short(&request.get_ref().snapshot_id)))]
    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> std::result::Result<Response<csi::DeleteSnapshotResponse>, Status> {
        respond(ControllerService::delete_snapshot(
            self,
            request.into_inner(),
        ))
        .await
    }

    #[instrument(skip_all, fields(snapshot_id = %short(&request.get_ref().snapshot_id), source = %short(&request.get_ref().source_volume_id)))]
    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> std::result::Result<Response<csi::ListSnapshotsResponse>, Status> {
        respond(ControllerService::list_snapshots(
            self,
            request.into_inner(),
        ))
        .await
    }

    #[instrument(skip_all, fields(snapshot_id = %short(&request.get_ref().snapshot_id)))]
    async fn get_snapshot(
        &self,
        request: Request<csi::GetSnapshotRequest>,
    ) -> std::result::Result<Response<csi::GetSnapshotResponse>, Status> {
        respond(ControllerService::get_snapshot(self, request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %short(&request.get_ref().volume_id)))]
    async fn controller_modify_volume(
        &self,
        request: Request<csi::ControllerModifyVolumeRequest>,
    ) -> std::result::Result<Response<csi::ControllerModifyVolumeResponse>, Status> {
        respond(self.modify(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %short(&request.get_ref().volume_id)))]
    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> std::result::Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        respond(self.expand(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %short(&request.get_ref().volume_id)))]
    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> std::result::Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        respond(self.get(request.into_inner())).await
    }
}
