//! `nfs-csi call` for the Controller service's snapshot RPCs.

use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::flags::*;
use super::reply::*;
use super::{Failure, Pending, Reply};
use crate::grpc::csi::v1 as csi;
use csi::controller_client::ControllerClient;

#[derive(Args, Debug)]
pub struct CreateSnapshot {
    /// Snapshot name (what external-snapshotter sends: snapshot-<uid>).
    #[arg(long)]
    name: String,
    /// The volume to snapshot.
    #[arg(long)]
    source_volume_id: String,
    /// A VolumeSnapshotClass parameter (repeatable), e.g. --parameter compressionLevel=9.
    #[arg(long = "parameter", value_name = "KEY=VALUE", value_parser = parse_kv)]
    parameters: Vec<(String, String)>,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(Args, Debug)]
pub struct DeleteSnapshot {
    /// The snapshot's id, as CreateSnapshot returned it.
    #[arg(long)]
    snapshot_id: String,
    #[command(flatten)]
    secrets: Secrets,
}

#[derive(Args, Debug)]
pub struct ListSnapshots {
    /// Only this snapshot.
    #[arg(long, default_value = "", hide_default_value = true)]
    snapshot_id: String,
    /// Only snapshots of this volume.
    #[arg(long, default_value = "", hide_default_value = true)]
    source_volume_id: String,
    #[command(flatten)]
    page: Page,
    #[command(flatten)]
    secrets: Secrets,
}

pub(super) fn create_snapshot(a: CreateSnapshot) -> Result<Pending, Failure> {
    Ok({
        let req = csi::CreateSnapshotRequest {
            source_volume_id: a.source_volume_id,
            name: a.name,
            secrets: a.secrets.build()?,
            parameters: map("parameter", &a.parameters)?,
        };
        pending!(
            ControllerClient,
            create_snapshot,
            req,
            |r: &csi::CreateSnapshotResponse| {
                json!({ "snapshot": r.snapshot.as_ref().map(snapshot) })
            }
        )
    })
}

pub(super) fn delete_snapshot(a: DeleteSnapshot) -> Result<Pending, Failure> {
    Ok({
        let req = csi::DeleteSnapshotRequest {
            snapshot_id: a.snapshot_id,
            secrets: a.secrets.build()?,
        };
        pending!(ControllerClient, delete_snapshot, req, empty)
    })
}

pub(super) fn list_snapshots(a: ListSnapshots) -> Result<Pending, Failure> {
    Ok({
        let req = csi::ListSnapshotsRequest {
            max_entries: a.page.max_entries,
            starting_token: a.page.starting_token,
            source_volume_id: a.source_volume_id,
            snapshot_id: a.snapshot_id,
            secrets: a.secrets.build()?,
        };
        pending!(
            ControllerClient,
            list_snapshots,
            req,
            |r: &csi::ListSnapshotsResponse| {
                let entries: Vec<Value> = r
                    .entries
                    .iter()
                    .map(|e| json!({ "snapshot": e.snapshot.as_ref().map(snapshot) }))
                    .collect();
                json!({ "entries": entries, "next_token": r.next_token })
            }
        )
    })
}
