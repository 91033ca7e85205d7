//! `nfs-csi call` for the Controller service: volumes, capacity and
//! capabilities (snapshots are in `snapshots`).

use std::time::Duration;

use clap::Args;
use serde_json::json;
use tonic::transport::Channel;

use super::flags::*;
use super::reply::*;
use super::{Failure, Pending, Reply};
use crate::grpc::csi::v1 as csi;
use csi::controller_client::ControllerClient;

#[derive(Args, Debug)]
pub struct CreateVolume {
    /// Volume name (what external-provisioner sends: pvc-<uid>).
    #[arg(long)]
    name: String,
    /// capacity_range.required_bytes: bytes, or a quantity such as 1Gi or 500M.
    #[arg(long, visible_alias = "capacity-bytes", value_parser = parse_bytes)]
    required_bytes: Option<i64>,
    /// capacity_range.limit_bytes: bytes, or a quantity such as 2Gi.
    #[arg(long, value_parser = parse_bytes)]
    limit_bytes: Option<i64>,
    /// A StorageClass parameter (repeatable), e.g. --parameter onDelete=retain.
    #[arg(long = "parameter", value_name = "KEY=VALUE", value_parser = parse_kv)]
    parameters: Vec<(String, String)>,
    /// A mutable parameter (VolumeAttributesClass, repeatable).
    #[arg(long = "mutable-parameter", value_name = "KEY=VALUE", value_parser = parse_kv)]
    mutable_parameters: Vec<(String, String)>,
    /// Content source: restore this snapshot.
    #[arg(long, conflicts_with = "source_volume_id")]
    source_snapshot_id: Option<String>,
    /// Content source: clone this volume.
    #[arg(long)]
    source_volume_id: Option<String>,
    #[command(flatten)]
    capability: Capability,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(Args, Debug)]
pub struct DeleteVolume {
    /// The volume's id, as CreateVolume returned it.
    #[arg(long)]
    volume_id: String,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(Args, Debug)]
pub struct ValidateVolumeCapabilities {
    /// The volume's id, as CreateVolume returned it.
    #[arg(long)]
    volume_id: String,
    /// An entry of volume_context (repeatable), as CreateVolume returned it.
    #[arg(long = "volume-context", value_name = "KEY=VALUE", value_parser = parse_kv)]
    volume_context: Vec<(String, String)>,
    /// A StorageClass parameter (repeatable).
    #[arg(long = "parameter", value_name = "KEY=VALUE", value_parser = parse_kv)]
    parameters: Vec<(String, String)>,
    /// A mutable parameter (repeatable).
    #[arg(long = "mutable-parameter", value_name = "KEY=VALUE", value_parser = parse_kv)]
    mutable_parameters: Vec<(String, String)>,
    #[command(flatten)]
    capability: Capability,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(Args, Debug)]
pub struct GetCapacity {
    /// A StorageClass parameter (repeatable), e.g. --parameter mountedShare=/srv/share.
    #[arg(long = "parameter", value_name = "KEY=VALUE", value_parser = parse_kv)]
    parameters: Vec<(String, String)>,
    #[command(flatten)]
    capability: Capability,
}

#[derive(Args, Debug)]
pub struct ExpandVolume {
    /// The volume's id, as CreateVolume returned it.
    #[arg(long)]
    volume_id: String,
    /// capacity_range.required_bytes: bytes, or a quantity such as 2Gi.
    #[arg(long, visible_alias = "capacity-bytes", value_parser = parse_bytes)]
    required_bytes: Option<i64>,
    /// capacity_range.limit_bytes.
    #[arg(long, value_parser = parse_bytes)]
    limit_bytes: Option<i64>,
    #[command(flatten)]
    capability: Capability,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(Args, Debug)]
pub struct VolumeId {
    /// The volume's id, as CreateVolume returned it.
    #[arg(long)]
    volume_id: String,
}

pub(super) fn create_volume(a: CreateVolume) -> Result<Pending, Failure> {
    Ok({
        use csi::volume_content_source::{SnapshotSource, Type, VolumeSource};
        let source = match (a.source_snapshot_id, a.source_volume_id) {
            (Some(snapshot_id), _) => Some(Type::Snapshot(SnapshotSource { snapshot_id })),
            (None, Some(volume_id)) => Some(Type::Volume(VolumeSource { volume_id })),
            (None, None) => None,
        };
        let req = csi::CreateVolumeRequest {
            name: a.name,
            capacity_range: capacity(a.required_bytes, a.limit_bytes),
            volume_capabilities: vec![a.capability.build()],
            parameters: map("parameter", &a.parameters)?,
            secrets: a.secrets.build()?,
            volume_content_source: source.map(|t| csi::VolumeContentSource { r#type: Some(t) }),
            accessibility_requirements: None,
            mutable_parameters: map("mutable-parameter", &a.mutable_parameters)?,
        };
        pending!(
            ControllerClient,
            create_volume,
            req,
            |r: &csi::CreateVolumeResponse| { json!({ "volume": r.volume.as_ref().map(volume) }) }
        )
    })
}

pub(super) fn delete_volume(a: DeleteVolume) -> Result<Pending, Failure> {
    Ok({
        let req = csi::DeleteVolumeRequest {
            volume_id: a.volume_id,
            secrets: a.secrets.build()?,
        };
        pending!(ControllerClient, delete_volume, req, empty)
    })
}

pub(super) fn validate_volume_capabilities(
    a: ValidateVolumeCapabilities,
) -> Result<Pending, Failure> {
    Ok({
        let req = csi::ValidateVolumeCapabilitiesRequest {
            volume_id: a.volume_id,
            volume_context: map("volume-context", &a.volume_context)?,
            volume_capabilities: vec![a.capability.build()],
            parameters: map("parameter", &a.parameters)?,
            secrets: a.secrets.build()?,
            mutable_parameters: map("mutable-parameter", &a.mutable_parameters)?,
        };
        pending!(
            ControllerClient,
            validate_volume_capabilities,
            req,
            validate_response
        )
    })
}

pub(super) fn list_volumes(p: Page) -> Result<Pending, Failure> {
    Ok({
        let req = csi::ListVolumesRequest {
            max_entries: p.max_entries,
            starting_token: p.starting_token,
        };
        pending!(ControllerClient, list_volumes, req, list_volumes_response)
    })
}

pub(super) fn get_capacity(a: GetCapacity) -> Result<Pending, Failure> {
    Ok({
        let req = csi::GetCapacityRequest {
            volume_capabilities: vec![a.capability.build()],
            parameters: map("parameter", &a.parameters)?,
            accessible_topology: None,
        };
        pending!(
            ControllerClient,
            get_capacity,
            req,
            |r: &csi::GetCapacityResponse| {
                json!({
                    "available_capacity": r.available_capacity,
                    "maximum_volume_size": r.maximum_volume_size,
                    "minimum_volume_size": r.minimum_volume_size,
                })
            }
        )
    })
}

pub(super) fn controller_get_capabilities() -> Result<Pending, Failure> {
    Ok(pending!(
        ControllerClient,
        controller_get_capabilities,
        csi::ControllerGetCapabilitiesRequest {},
        controller_capabilities
    ))
}

pub(super) fn expand_volume(a: ExpandVolume) -> Result<Pending, Failure> {
    Ok({
        let req = csi::ControllerExpandVolumeRequest {
            volume_id: a.volume_id,
            capacity_range: capacity(a.required_bytes, a.limit_bytes),
            secrets: a.secrets.build()?,
            volume_capability: Some(a.capability.build()),
        };
        pending!(
            ControllerClient,
            controller_expand_volume,
            req,
            |r: &csi::ControllerExpandVolumeResponse| {
                json!({
                    "capacity_bytes": r.capacity_bytes,
                    "node_expansion_required": r.node_expansion_required,
                })
            }
        )
    })
}

pub(super) fn get_volume(a: VolumeId) -> Result<Pending, Failure> {
    Ok({
        let req = csi::ControllerGetVolumeRequest {
            volume_id: a.volume_id,
        };
        pending!(
            ControllerClient,
            controller_get_volume,
            req,
            |r: &csi::ControllerGetVolumeResponse| {
                json!({
                    "volume": r.volume.as_ref().map(volume),
                    "status": r.status.as_ref().map(|s| volume_status(&s.published_node_ids, &s.volume_condition)),
                })
            }
        )
    })
}
