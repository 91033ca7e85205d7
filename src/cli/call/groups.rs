//! `nfs-csi call` for the GroupController service: volume group snapshots.

use clap::Args;
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::flags::*;
use super::reply::*;
use super::{Failure, Pending, Reply};
use crate::grpc::csi::v1 as csi;
use csi::group_controller_client::GroupControllerClient;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct CreateGroupSnapshot {
    /// Group snapshot name (what external-snapshotter sends: groupsnapshot-<uid>).
    #[arg(long)]
    name: String,
    /// A volume to snapshot with the others (repeatable; at least one).
    #[arg(long = "source-volume-id", value_name = "VOLUME_ID", required = true)]
    source_volume_ids: Vec<String>,
    /// A VolumeGroupSnapshotClass parameter (repeatable), e.g. --parameter compressionLevel=9.
    #[arg(long = "parameter", value_name = "KEY=VALUE", value_parser = parse_kv)]
    parameters: Vec<(String, String)>,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(Args, Debug)]
pub struct GroupSnapshotId {
    /// The group snapshot's id, as CreateVolumeGroupSnapshot returned it.
    #[arg(long)]
    group_snapshot_id: String,
    /// A member snapshot's id (repeatable): checked against the group's members.
    #[arg(long = "snapshot-id", value_name = "SNAPSHOT_ID")]
    snapshot_ids: Vec<String>,
    #[command(flatten)]
    secrets: Secrets,
}

pub(super) fn group_snapshot(g: &csi::VolumeGroupSnapshot) -> Value {
    json!({
        "group_snapshot_id": g.group_snapshot_id,
        "snapshots": g.snapshots.iter().map(snapshot).collect::<Vec<_>>(),
        "creation_time": g.creation_time.as_ref().map(|t| t.to_string()),
        "ready_to_use": g.ready_to_use,
    })
}

pub(super) fn create_group_snapshot(a: CreateGroupSnapshot) -> Result<Pending, Failure> {
    Ok({
        let req = csi::CreateVolumeGroupSnapshotRequest {
            name: a.name,
            source_volume_ids: a.source_volume_ids,
            secrets: a.secrets.build()?,
            parameters: map("parameter", &a.parameters)?,
        };
        pending!(
            GroupControllerClient,
            create_volume_group_snapshot,
            req,
            |r: &csi::CreateVolumeGroupSnapshotResponse| {
                json!({ "group_snapshot": r.group_snapshot.as_ref().map(group_snapshot) })
            }
        )
    })
}

pub(super) fn delete_group_snapshot(a: GroupSnapshotId) -> Result<Pending, Failure> {
    Ok({
        let req = csi::DeleteVolumeGroupSnapshotRequest {
            group_snapshot_id: a.group_snapshot_id,
            snapshot_ids: a.snapshot_ids,
            secrets: a.secrets.build()?,
        };
        pending!(
            GroupControllerClient,
            delete_volume_group_snapshot,
            req,
            empty
        )
    })
}

pub(super) fn get_group_snapshot(a: GroupSnapshotId) -> Result<Pending, Failure> {
    Ok({
        let req = csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: a.group_snapshot_id,
            snapshot_ids: a.snapshot_ids,
            secrets: a.secrets.build()?,
        };
        pending!(
            GroupControllerClient,
            get_volume_group_snapshot,
            req,
            |r: &csi::GetVolumeGroupSnapshotResponse| {
                json!({ "group_snapshot": r.group_snapshot.as_ref().map(group_snapshot) })
            }
        )
    })
}

pub(super) fn group_controller_get_capabilities() -> Result<Pending, Failure> {
    Ok(pending!(
        GroupControllerClient,
        group_controller_get_capabilities,
        csi::GroupControllerGetCapabilitiesRequest {},
        |r: &csi::GroupControllerGetCapabilitiesResponse| {
            use csi::group_controller_service_capability::{Type, rpc};
            let caps: Vec<Value> = r
                .capabilities
                .iter()
                .map(|c| match &c.r#type {
                    Some(Type::Rpc(x)) => {
                        json!({ "rpc": { "type": enum_name(x.r#type, |t: rpc::Type| t.as_str_name()) } })
                    }
                    None => json!({}),
                })
                .collect();
            json!({ "capabilities": caps })
        }
    ))
}
