//! The tonic `Node` trait: one call per RPC, each in a span naming its
//! volume, its result turned into a reply or a status by `status::respond`.

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::csi::v1::{self as csi, node_server::Node};
use super::status::respond;
use crate::node::NodeService;

#[tonic::async_trait]
impl Node for NodeService {
    #[instrument(skip_all, fields(volume_id = %crate::sys::text::short(&request.get_ref().volume_id)))]
    async fn node_stage_volume(
        &self,
        request: Request<csi::NodeStageVolumeRequest>,
    ) -> std::result::Result<Response<csi::NodeStageVolumeResponse>, Status> {
        respond(self.stage(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %crate::sys::text::short(&request.get_ref().volume_id)))]
    async fn node_unstage_volume(
        &self,
        request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> std::result::Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        respond(self.unstage(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %crate::sys::text::short(&request.get_ref().volume_id)))]
    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> std::result::Result<Response<csi::NodePublishVolumeResponse>, Status> {
        respond(self.publish(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %crate::sys::text::short(&request.get_ref().volume_id)))]
    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> std::result::Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        respond(self.unpublish(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %crate::sys::text::short(&request.get_ref().volume_id)))]
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
        Ok(Response::new(NodeService::capabilities()))
    }

    #[instrument(skip_all)]
    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> std::result::Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(self.info()))
    }
}
