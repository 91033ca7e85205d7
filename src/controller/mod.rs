//! The CSI Controller service: volumes as directories on exports.
//!
//! Safety assumptions: a volume exists for the driver only if its record
//! exists in the export's `.nfs-csi/volumes/`; DeleteVolume removes nothing
//! without one, so a forged or stale id can never delete a directory the
//! driver did not provision. All directory work goes through `safefs` (no
//! symlink followed, nothing outside the export) on the blocking pool under
//! a timeout; two calls on one volume at once get ABORTED.
//!
//! What lives here: this file holds the service and its errors (its own,
//! and the lower layers' it meets, passed through; `grpc::status` maps
//! them to codes); the tonic trait is `grpc::controller`, one call per RPC
//! into the methods here. `volumes` creates, deletes,
//! expands, gets and validates volumes; `sources` fills a new volume from a
//! snapshot or a volume; `modify` changes a volume's mutable parameters;
//! `snapshots` creates, deletes and gets snapshots; `groups` is the
//! GroupController (volume group snapshots: one snapshot per volume, their
//! walks started together, and the group's record);
//! `listing` pages ListVolumes and ListSnapshots; `records` keeps the
//! `.nfs-csi/` records on an export.
//!
//! May depend on: `storage`, `archive`, `sys`, `config`, and the generated
//! CSI types (`grpc::csi`, the vocabulary of every RPC). Never on the rest
//! of `grpc` (only the unit tests ask `grpc::status` which code an error
//! gets).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;
use crate::grpc::csi::v1::{
    self as csi, ControllerServiceCapability, controller_service_capability,
};
use crate::storage::export::{ExportSpec, Exports};
use crate::sys::inflight::InFlight;
use crate::sys::jobs::Jobs;
use crate::sys::text::quote;

mod groups;
mod listing;
mod modify;
mod records;
mod snapshots;
mod sources;
mod volumes;

use records::*;
use snapshots::*;
use volumes::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error(
        "block access is not supported: nfs-csi volumes are directories; use volumeMode: Filesystem"
    )]
    Block,
    #[error("a volume capability has no access type (mount or block)")]
    NoAccessType,
    #[error("a volume capability has no access mode")]
    NoAccessMode,
    #[error("capacity range is invalid: {0}")]
    BadRange(String),
    #[error("volume content source has no snapshot or volume")]
    ContentSource,
    #[error("snapshot {} does not exist", quote(.0))]
    SnapshotNotFound(String),
    #[error(
        "snapshot {} is not ready yet; retry when the VolumeSnapshot is readyToUse",
        quote(.0)
    )]
    SnapshotNotReady(String),
    #[error(
        "requested capacity {required} bytes is smaller than the source's {source_bytes} bytes"
    )]
    TooSmall { required: i64, source_bytes: i64 },
    #[error(
        "snapshot {} already exists with source volume {}",
        quote(name),
        quote(existing)
    )]
    SnapshotExists { name: String, existing: String },
    #[error("{0}")]
    JobFailed(String),
    /// A restore, clone or group member's archive failed; `code` is its
    /// error's (see `grpc::status::code`).
    #[error("{message}")]
    Populate { message: String, code: tonic::Code },
    #[error("limit_bytes {limit} is below the volume's capacity {current}; volumes do not shrink")]
    CannotShrink { limit: i64, current: i64 },
    #[error(
        "volume {} is still being filled from its own source; retry when it is ready",
        quote(.0)
    )]
    SourceNotReady(String),
    #[error("directory {} cannot be this volume's: {reason}", quote(subdir))]
    DirInUse { subdir: String, reason: String },
    #[error("volume {} does not exist", quote(.0))]
    NotFound(String),
    #[error("volume {}'s directory is missing on its export", quote(.0))]
    DirMissing(String),
    #[error("volume {} already exists and differs: {reason}", quote(name))]
    AlreadyExists { name: String, reason: String },
    #[error(
        "starting_token {} is not one this driver issued (or its export is gone); restart the listing",
        quote(.0)
    )]
    BadToken(String),
    #[error("max_entries must not be negative")]
    NegativeMaxEntries,
    #[error("parameter {name:?}: {reason}")]
    SnapshotParameter { name: String, reason: String },
    #[error("source_volume_ids: {0}")]
    GroupSources(String),
    #[error("group snapshot {} already exists and differs: {reason}", quote(name))]
    GroupExists { name: String, reason: String },
    #[error("group snapshot {} does not exist", quote(.0))]
    GroupNotFound(String),
    #[error("snapshot_ids do not match the members of group snapshot {}", quote(.0))]
    GroupMismatch(String),
    #[error(
        "snapshot {} is a member of group snapshot {}; delete the group snapshot instead",
        quote(snapshot),
        quote(group)
    )]
    GroupMember { snapshot: String, group: String },
    #[error(
        "group snapshot {} is being deleted; retry DeleteVolumeGroupSnapshot",
        quote(.0)
    )]
    GroupDeleting(String),
    #[error("record {path} is unreadable: {source}")]
    CorruptRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    // The lower layers' errors met on the way, passed through unchanged.
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
    #[error(transparent)]
    Fs(#[from] crate::sys::safefs::Error),
    #[error(transparent)]
    Mount(#[from] crate::sys::mount::Error),
    #[error(transparent)]
    Export(#[from] crate::storage::export::Error),
    #[error(transparent)]
    Offload(#[from] crate::sys::offload::Error),
    #[error(transparent)]
    Busy(#[from] crate::sys::inflight::Busy),
    #[error(transparent)]
    Snapshot(#[from] crate::archive::Error),
    #[error(transparent)]
    Tree(#[from] crate::archive::tree::Error),
}

pub struct ControllerService {
    exports: Arc<Exports>,
    inflight: InFlight,
    jobs: Jobs,
    config: Arc<Config>,
    /// One per export location: held while CreateVolume checks that the new
    /// directory neither contains nor lies inside another volume's and
    /// records it, so two overlapping creates cannot both pass the check.
    create_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ControllerService {
    pub fn new(exports: Arc<Exports>, config: Arc<Config>) -> Self {
        ControllerService {
            exports,
            inflight: InFlight::default(),
            jobs: Jobs::default(),
            config,
            create_locks: Default::default(),
        }
    }

    fn create_lock(&self, export: &ExportSpec) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.create_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(export.location()).or_default().clone()
    }
}

type Result<T> = std::result::Result<T, Error>;

impl ControllerService {}

impl ControllerService {
    /// What ControllerGetCapabilities answers.
    pub fn capabilities() -> csi::ControllerGetCapabilitiesResponse {
        use controller_service_capability::rpc::Type;
        let capabilities = [
            Type::CreateDeleteVolume,
            Type::ListVolumes,
            Type::GetCapacity,
            Type::ExpandVolume,
            Type::GetVolume,
            Type::VolumeCondition,
            Type::SingleNodeMultiWriter,
            Type::CreateDeleteSnapshot,
            Type::ListSnapshots,
            Type::CloneVolume,
            Type::GetSnapshot,
            Type::ModifyVolume,
        ]
        .into_iter()
        .map(capability)
        .collect();
        csi::ControllerGetCapabilitiesResponse { capabilities }
    }
}

fn capability(t: controller_service_capability::rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(controller_service_capability::Type::Rpc(
            controller_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}
