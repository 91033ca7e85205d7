//! `nfs-csi call` for the Node service.

use std::time::Duration;

use clap::Args;
use serde_json::json;
use tonic::transport::Channel;

use super::flags::*;
use super::reply::*;
use super::{Failure, Pending, Reply};
use crate::grpc::csi::v1 as csi;
use csi::node_client::NodeClient;

#[derive(Args, Debug)]
pub struct Stage {
    /// The volume's id, as CreateVolume returned it.
    #[arg(long)]
    volume_id: String,
    /// Where to mount the volume for this node (kubelet: .../globalmount).
    #[arg(long)]
    staging_target_path: String,
    /// An entry of volume_context (repeatable), as CreateVolume returned it.
    #[arg(long = "volume-context", value_name = "KEY=VALUE", value_parser = parse_kv)]
    volume_context: Vec<(String, String)>,
    /// An entry of publish_context (repeatable).
    #[arg(long = "publish-context", value_name = "KEY=VALUE", value_parser = parse_kv)]
    publish_context: Vec<(String, String)>,
    #[command(flatten)]
    capability: Capability,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(Args, Debug)]
pub struct Unstage {
    /// The volume's id, as CreateVolume returned it.
    #[arg(long)]
    volume_id: String,
    /// Where the volume is staged (kubelet: .../globalmount).
    #[arg(long)]
    staging_target_path: String,
}

#[derive(Args, Debug)]
pub struct Publish {
    /// The volume's id, as CreateVolume returned it.
    #[arg(long)]
    volume_id: String,
    /// The pod's mount point (kubelet: .../volumes/kubernetes.io~csi/<pv>/mount).
    #[arg(long)]
    target_path: String,
    /// Where the volume was staged.
    #[arg(long, default_value = "", hide_default_value = true)]
    staging_target_path: String,
    /// Publish read-only.
    #[arg(long)]
    readonly: bool,
    /// An entry of volume_context (repeatable).
    #[arg(long = "volume-context", value_name = "KEY=VALUE", value_parser = parse_kv)]
    volume_context: Vec<(String, String)>,
    /// An entry of publish_context (repeatable).
    #[arg(long = "publish-context", value_name = "KEY=VALUE", value_parser = parse_kv)]
    publish_context: Vec<(String, String)>,
    #[command(flatten)]
    capability: Capability,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(Args, Debug)]
pub struct Unpublish {
    /// The volume's id, as CreateVolume returned it.
    #[arg(long)]
    volume_id: String,
    /// The pod's mount point.
    #[arg(long)]
    target_path: String,
}

#[derive(Args, Debug)]
pub struct Stats {
    /// The volume's id, as CreateVolume returned it.
    #[arg(long)]
    volume_id: String,
    /// A path the volume is published at.
    #[arg(long)]
    volume_path: String,
    /// Where the volume is staged.
    #[arg(long, default_value = "", hide_default_value = true)]
    staging_target_path: String,
}

pub(super) fn stage(a: Stage) -> Result<Pending, Failure> {
    Ok({
        let req = csi::NodeStageVolumeRequest {
            volume_id: a.volume_id,
            publish_context: map("publish-context", &a.publish_context)?,
            staging_target_path: a.staging_target_path,
            volume_capability: Some(a.capability.build()),
            secrets: a.secrets.build()?,
            volume_context: map("volume-context", &a.volume_context)?,
        };
        pending!(NodeClient, node_stage_volume, req, empty)
    })
}

pub(super) fn unstage(a: Unstage) -> Result<Pending, Failure> {
    Ok({
        let req = csi::NodeUnstageVolumeRequest {
            volume_id: a.volume_id,
            staging_target_path: a.staging_target_path,
        };
        pending!(NodeClient, node_unstage_volume, req, empty)
    })
}

pub(super) fn publish(a: Publish) -> Result<Pending, Failure> {
    Ok({
        let req = csi::NodePublishVolumeRequest {
            volume_id: a.volume_id,
            publish_context: map("publish-context", &a.publish_context)?,
            staging_target_path: a.staging_target_path,
            target_path: a.target_path,
            volume_capability: Some(a.capability.build()),
            readonly: a.readonly,
            secrets: a.secrets.build()?,
            volume_context: map("volume-context", &a.volume_context)?,
        };
        pending!(NodeClient, node_publish_volume, req, empty)
    })
}

pub(super) fn unpublish(a: Unpublish) -> Result<Pending, Failure> {
    Ok({
        let req = csi::NodeUnpublishVolumeRequest {
            volume_id: a.volume_id,
            target_path: a.target_path,
        };
        pending!(NodeClient, node_unpublish_volume, req, empty)
    })
}

pub(super) fn stats(a: Stats) -> Result<Pending, Failure> {
    Ok({
        let req = csi::NodeGetVolumeStatsRequest {
            volume_id: a.volume_id,
            volume_path: a.volume_path,
            staging_target_path: a.staging_target_path,
        };
        pending!(NodeClient, node_get_volume_stats, req, stats_response)
    })
}

pub(super) fn node_get_info() -> Result<Pending, Failure> {
    Ok(pending!(
        NodeClient,
        node_get_info,
        csi::NodeGetInfoRequest {},
        |r: &csi::NodeGetInfoResponse| {
            json!({
                "node_id": r.node_id,
                "max_volumes_per_node": r.max_volumes_per_node,
                "accessible_topology": r.accessible_topology.as_ref().map(topology),
            })
        }
    ))
}

pub(super) fn node_get_capabilities() -> Result<Pending, Failure> {
    Ok(pending!(
        NodeClient,
        node_get_capabilities,
        csi::NodeGetCapabilitiesRequest {},
        node_capabilities
    ))
}
