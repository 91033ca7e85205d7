//! `nfs-csi call`: a CSI client for operators. Builds one request from
//! flags named after the CSI fields (kebab-case), sends it over the
//! driver's Unix socket and prints the response as JSON.
//!
//! Exit codes: 0 success, [`EXIT_RPC`] when the driver answers with a gRPC
//! error (or no answer comes within `--timeout`), [`EXIT_USAGE`] for bad
//! flags, [`EXIT_UNREACHABLE`] when the socket cannot be connected to.
//!
//! Requests are never printed or logged: they may carry secrets.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::grpc::csi::v1 as csi;
use csi::controller_client::ControllerClient;
use csi::identity_client::IdentityClient;
use csi::node_client::NodeClient;

/// The driver answered with a gRPC error, or not within `--timeout`.
pub const EXIT_RPC: i32 = 1;
/// Bad flags (also what clap uses for its own parse errors).
pub const EXIT_USAGE: i32 = 2;
/// The endpoint could not be connected to.
pub const EXIT_UNREACHABLE: i32 = 3;

/// `nfs-csi call`: send one CSI request to a driver and print the response.
#[derive(Args, Debug)]
pub struct CallArgs {
    /// CSI endpoint of the driver: unix:///path/to/csi.sock
    #[arg(long, env = "CSI_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// Seconds to wait for the answer (sent to the driver as the gRPC deadline).
    #[arg(long, default_value_t = 60, global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    #[command(subcommand)]
    pub rpc: Rpc,
}

/// The RPCs the driver serves.
#[derive(Subcommand, Debug)]
pub enum Rpc {
    /// Controller CreateVolume.
    CreateVolume(CreateVolume),
    /// Controller DeleteVolume.
    DeleteVolume(DeleteVolume),
    /// Controller ValidateVolumeCapabilities.
    ValidateVolumeCapabilities(ValidateVolumeCapabilities),
    /// Controller ListVolumes (one page; pass next_token back as --starting-token).
    ListVolumes(Page),
    /// Controller GetCapacity.
    GetCapacity(GetCapacity),
    /// Controller ControllerGetCapabilities.
    ControllerGetCapabilities,
    /// Controller ControllerExpandVolume.
    #[command(visible_alias = "controller-expand-volume")]
    ExpandVolume(ExpandVolume),
    /// Controller ControllerGetVolume.
    #[command(visible_alias = "controller-get-volume")]
    GetVolume(VolumeId),
    /// Node NodeStageVolume: mount the volume at --staging-target-path.
    #[command(visible_alias = "node-stage-volume")]
    Stage(Stage),
    /// Node NodeUnstageVolume.
    #[command(visible_alias = "node-unstage-volume")]
    Unstage(Unstage),
    /// Node NodePublishVolume: bind-mount the volume at --target-path.
    #[command(visible_alias = "node-publish-volume")]
    Publish(Publish),
    /// Node NodeUnpublishVolume.
    #[command(visible_alias = "node-unpublish-volume")]
    Unpublish(Unpublish),
    /// Node NodeGetVolumeStats.
    #[command(visible_alias = "node-get-volume-stats")]
    Stats(Stats),
    /// Node NodeGetInfo.
    NodeGetInfo,
    /// Node NodeGetCapabilities.
    NodeGetCapabilities,
    /// Controller CreateSnapshot.
    CreateSnapshot(CreateSnapshot),
    /// Controller DeleteSnapshot.
    DeleteSnapshot(DeleteSnapshot),
    /// Controller ListSnapshots (one page).
    ListSnapshots(ListSnapshots),
    /// Identity Probe.
    Probe,
    /// Identity GetPluginInfo.
    #[command(visible_alias = "get-plugin-info")]
    Info,
    /// Identity GetPluginCapabilities.
    #[command(visible_alias = "get-plugin-capabilities")]
    PluginCapabilities,
}

/// A volume capability (VolumeCapability): mount access type unless --block.
#[derive(Args, Debug)]
pub struct Capability {
    /// Access mode.
    #[arg(long, value_enum, default_value_t = AccessMode::MultiNodeMultiWriter)]
    access_mode: AccessMode,
    /// A mount flag (repeatable), e.g. --mount-flag nfsvers=4.1.
    #[arg(long = "mount-flag", value_name = "FLAG")]
    mount_flags: Vec<String>,
    /// Filesystem type of the mount capability.
    #[arg(long, default_value = "", hide_default_value = true)]
    fs_type: String,
    /// volume_mount_group of the mount capability.
    #[arg(long, default_value = "", hide_default_value = true)]
    volume_mount_group: String,
    /// Block access type instead of mount (this driver refuses it).
    #[arg(long, conflicts_with_all = ["mount_flags", "fs_type", "volume_mount_group"])]
    block: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AccessMode {
    SingleNodeWriter,
    SingleNodeReaderOnly,
    MultiNodeReaderOnly,
    MultiNodeSingleWriter,
    MultiNodeMultiWriter,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
}

impl Capability {
    fn build(&self) -> csi::VolumeCapability {
        use csi::volume_capability::{AccessType, BlockVolume, MountVolume, access_mode::Mode};
        let mode = match self.access_mode {
            AccessMode::SingleNodeWriter => Mode::SingleNodeWriter,
            AccessMode::SingleNodeReaderOnly => Mode::SingleNodeReaderOnly,
            AccessMode::MultiNodeReaderOnly => Mode::MultiNodeReaderOnly,
            AccessMode::MultiNodeSingleWriter => Mode::MultiNodeSingleWriter,
            AccessMode::MultiNodeMultiWriter => Mode::MultiNodeMultiWriter,
            AccessMode::SingleNodeSingleWriter => Mode::SingleNodeSingleWriter,
            AccessMode::SingleNodeMultiWriter => Mode::SingleNodeMultiWriter,
        };
        let access_type = if self.block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: self.fs_type.clone(),
                mount_flags: self.mount_flags.clone(),
                volume_mount_group: self.volume_mount_group.clone(),
            })
        };
        csi::VolumeCapability {
            access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
            access_type: Some(access_type),
        }
    }
}

/// The `secrets` map: `--secret KEY=VALUE`, parsed after clap so that a
/// malformed one is never echoed in an error message.
#[derive(Args, Debug)]
pub struct Secrets {
    /// An entry of the secrets map (repeatable). Never printed; note that
    /// command lines are visible to other users of this host.
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    secret: Vec<String>,
}

impl Secrets {
    fn build(&self) -> Result<HashMap<String, String>, Failure> {
        let mut map = HashMap::new();
        for (i, s) in self.secret.iter().enumerate() {
            let n = i + 1;
            let (k, v) = s.split_once('=').ok_or_else(|| {
                Failure::Usage(format!(
                    "--secret #{n} is not KEY=VALUE (its text is not shown)"
                ))
            })?;
            if k.is_empty() {
                return Err(Failure::Usage(format!("--secret #{n} has an empty key")));
            }
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(Failure::Usage(format!("--secret {k} given twice")));
            }
        }
        Ok(map)
    }
}

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
pub struct Page {
    /// Entries per page (0: the driver's default).
    #[arg(long, default_value_t = 0)]
    max_entries: i32,
    /// next_token of the previous page.
    #[arg(long, default_value = "", hide_default_value = true)]
    starting_token: String,
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

/// `KEY=VALUE`, split at the first `=`; the key must not be empty.
fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err("the key is empty".into()),
        None => Err("expected KEY=VALUE".into()),
    }
}

/// A byte count: an integer with an optional Kubernetes quantity suffix
/// (k, M, G, T, P: powers of 1000; Ki, Mi, Gi, Ti, Pi: powers of 1024).
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() {
        return Err("expected a number of bytes such as 1073741824 or 1Gi".into());
    }
    let mult: i64 = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => {
            return Err(format!(
                "unknown suffix {suffix:?} (use k, M, G, T, P, Ki, Mi, Gi, Ti or Pi)"
            ));
        }
    };
    num.parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| "too large".to_string())
}

/// Repeated `--flag KEY=VALUE` as a map; a key given twice is an error.
fn map(flag: &str, pairs: &[(String, String)]) -> Result<HashMap<String, String>, Failure> {
    let mut m = HashMap::new();
    for (k, v) in pairs {
        if m.insert(k.clone(), v.clone()).is_some() {
            return Err(Failure::Usage(format!("--{flag} {k} given twice")));
        }
    }
    Ok(m)
}

fn capacity(required: Option<i64>, limit: Option<i64>) -> Option<csi::CapacityRange> {
    (required.is_some() || limit.is_some()).then(|| csi::CapacityRange {
        required_bytes: required.unwrap_or(0),
        limit_bytes: limit.unwrap_or(0),
    })
}

/// Why a call failed; each kind has its exit code.
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Unreachable(String),
    Status(Status),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Unreachable(_) => EXIT_UNREACHABLE,
            Failure::Status(_) => EXIT_RPC,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) => f.write_str(m),
            Failure::Unreachable(m) => write!(f, "UNAVAILABLE: {m}"),
            Failure::Status(s) if s.message().is_empty() => f.write_str(code_name(s.code())),
            Failure::Status(s) => write!(f, "{}: {}", code_name(s.code()), s.message()),
        }
    }
}

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        Failure::Status(s)
    }
}

/// The canonical gRPC name of a code, as in the gRPC spec.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

type Reply = Pin<Box<dyn Future<Output = Result<Value, Status>> + Send>>;
/// A request ready to send: takes the channel and the deadline.
type Pending = Box<dyn FnOnce(Channel, Duration) -> Reply + Send>;

/// Wraps a built request into a [`Pending`] call of `$client::$method`
/// whose response `$json` converts.
macro_rules! pending {
    ($client:ident, $method:ident, $req:expr, $json:expr) => {{
        let req = $req;
        Box::new(move |ch: Channel, timeout: Duration| -> Reply {
            Box::pin(async move {
                let mut r = tonic::Request::new(req);
                r.set_timeout(timeout);
                let resp = $client::new(ch).$method(r).await?.into_inner();
                Ok($json(&resp))
            })
        }) as Pending
    }};
}

/// Builds the request of `rpc`: every usage error is found here, before
/// connecting.
fn prepare(rpc: Rpc) -> Result<Pending, Failure> {
    Ok(match rpc {
        Rpc::CreateVolume(a) => {
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
                |r: &csi::CreateVolumeResponse| {
                    json!({ "volume": r.volume.as_ref().map(volume) })
                }
            )
        }
        Rpc::DeleteVolume(a) => {
            let req = csi::DeleteVolumeRequest {
                volume_id: a.volume_id,
                secrets: a.secrets.build()?,
            };
            pending!(ControllerClient, delete_volume, req, empty)
        }
        Rpc::ValidateVolumeCapabilities(a) => {
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
        }
        Rpc::ListVolumes(p) => {
            let req = csi::ListVolumesRequest {
                max_entries: p.max_entries,
                starting_token: p.starting_token,
            };
            pending!(ControllerClient, list_volumes, req, list_volumes_response)
        }
        Rpc::GetCapacity(a) => {
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
        }
        Rpc::ControllerGetCapabilities => pending!(
            ControllerClient,
            controller_get_capabilities,
            csi::ControllerGetCapabilitiesRequest {},
            controller_capabilities
        ),
        Rpc::ExpandVolume(a) => {
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
        }
        Rpc::GetVolume(a) => {
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
        }
        Rpc::Stage(a) => {
            let req = csi::NodeStageVolumeRequest {
                volume_id: a.volume_id,
                publish_context: map("publish-context", &a.publish_context)?,
                staging_target_path: a.staging_target_path,
                volume_capability: Some(a.capability.build()),
                secrets: a.secrets.build()?,
                volume_context: map("volume-context", &a.volume_context)?,
            };
            pending!(NodeClient, node_stage_volume, req, empty)
        }
        Rpc::Unstage(a) => {
            let req = csi::NodeUnstageVolumeRequest {
                volume_id: a.volume_id,
                staging_target_path: a.staging_target_path,
            };
            pending!(NodeClient, node_unstage_volume, req, empty)
        }
        Rpc::Publish(a) => {
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
        }
        Rpc::Unpublish(a) => {
            let req = csi::NodeUnpublishVolumeRequest {
                volume_id: a.volume_id,
                target_path: a.target_path,
            };
            pending!(NodeClient, node_unpublish_volume, req, empty)
        }
        Rpc::Stats(a) => {
            let req = csi::NodeGetVolumeStatsRequest {
                volume_id: a.volume_id,
                volume_path: a.volume_path,
                staging_target_path: a.staging_target_path,
            };
            pending!(NodeClient, node_get_volume_stats, req, stats_response)
        }
        Rpc::NodeGetInfo => pending!(
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
        ),
        Rpc::NodeGetCapabilities => pending!(
            NodeClient,
            node_get_capabilities,
            csi::NodeGetCapabilitiesRequest {},
            node_capabilities
        ),
        Rpc::CreateSnapshot(a) => {
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
        }
        Rpc::DeleteSnapshot(a) => {
            let req = csi::DeleteSnapshotRequest {
                snapshot_id: a.snapshot_id,
                secrets: a.secrets.build()?,
            };
            pending!(ControllerClient, delete_snapshot, req, empty)
        }
        Rpc::ListSnapshots(a) => {
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
        }
        Rpc::Probe => pending!(
            IdentityClient,
            probe,
            csi::ProbeRequest {},
            |r: &csi::ProbeResponse| { json!({ "ready": r.ready }) }
        ),
        Rpc::Info => pending!(
            IdentityClient,
            get_plugin_info,
            csi::GetPluginInfoRequest {},
            |r: &csi::GetPluginInfoResponse| {
                json!({
                    "name": r.name,
                    "vendor_version": r.vendor_version,
                    "manifest": r.manifest,
                })
            }
        ),
        Rpc::PluginCapabilities => pending!(
            IdentityClient,
            get_plugin_capabilities,
            csi::GetPluginCapabilitiesRequest {},
            plugin_capabilities
        ),
    })
}

/// A tonic channel over the Unix socket of `endpoint`.
async fn connect(endpoint: &str) -> Result<Channel, Failure> {
    let path: PathBuf = crate::grpc::server::socket_path(endpoint).map_err(|_| {
        Failure::Usage(format!(
            "--endpoint {endpoint:?}: expected unix:///path/to/csi.sock"
        ))
    })?;
    let shown = path.display().to_string();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| Failure::Unreachable(format!("cannot connect to {shown}: {}", chain(&e))))
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Runs `nfs-csi call`: prints the response as JSON on stdout, or
/// `error: CODE: message` on stderr; returns the exit code.
pub fn run(args: CallArgs) -> i32 {
    match call(args) {
        Ok(v) => {
            let mut out = std::io::stdout().lock();
            let text = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "null".into());
            // A closed pipe (`| head`) is not an error of the call.
            let _ = writeln!(out, "{text}").and_then(|_| out.flush());
            0
        }
        Err(f) => {
            eprintln!("error: {f}");
            f.exit_code()
        }
    }
}

fn call(args: CallArgs) -> Result<Value, Failure> {
    let endpoint = args.endpoint.ok_or_else(|| {
        Failure::Usage("--endpoint unix:///path/to/csi.sock (or CSI_ENDPOINT) is required".into())
    })?;
    let pending = prepare(args.rpc)?;
    let timeout = Duration::from_secs(args.timeout);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Unreachable(format!("starting the async runtime: {e}")))?;
    let start = std::time::Instant::now();
    let expired = || {
        Failure::Status(Status::deadline_exceeded(format!(
            "no answer from {endpoint} within {} s (--timeout)",
            args.timeout
        )))
    };
    runtime.block_on(async {
        let work = async {
            let ch = connect(&endpoint).await?;
            pending(ch, timeout).await.map_err(Failure::from)
        };
        match tokio::time::timeout(timeout, work).await {
            // tonic reports the request's deadline (grpc-timeout), on either
            // side, as CANCELLED "Timeout expired".
            Ok(Err(Failure::Status(s)))
                if s.code() == Code::Cancelled && start.elapsed() >= timeout =>
            {
                Err(expired())
            }
            Ok(r) => r,
            Err(_) => Err(expired()),
        }
    })
}

// ---- responses as JSON: field names as in the CSI proto, enums by name,
// int64 as JSON numbers, absent messages as null.

fn empty<T>(_: &T) -> Value {
    Value::Object(Map::new())
}

/// An enum value by its proto name; an unknown one as its number.
fn enum_name<E: TryFrom<i32>>(v: i32, name: impl Fn(E) -> &'static str) -> Value {
    E::try_from(v).map_or_else(|_| Value::from(v), |e| Value::from(name(e)))
}

fn topology(t: &csi::Topology) -> Value {
    json!({ "segments": t.segments })
}

fn content_source(s: &csi::VolumeContentSource) -> Value {
    use csi::volume_content_source::Type;
    match &s.r#type {
        Some(Type::Snapshot(s)) => json!({ "snapshot": { "snapshot_id": s.snapshot_id } }),
        Some(Type::Volume(v)) => json!({ "volume": { "volume_id": v.volume_id } }),
        None => json!({}),
    }
}

fn volume(v: &csi::Volume) -> Value {
    json!({
        "volume_id": v.volume_id,
        "capacity_bytes": v.capacity_bytes,
        "volume_context": v.volume_context,
        "content_source": v.content_source.as_ref().map(content_source),
        "accessible_topology": v.accessible_topology.iter().map(topology).collect::<Vec<_>>(),
    })
}

fn condition(c: &csi::VolumeCondition) -> Value {
    json!({ "abnormal": c.abnormal, "message": c.message })
}

fn volume_status(nodes: &[String], cond: &Option<csi::VolumeCondition>) -> Value {
    json!({
        "published_node_ids": nodes,
        "volume_condition": cond.as_ref().map(condition),
    })
}

fn capability(c: &csi::VolumeCapability) -> Value {
    use csi::volume_capability::{AccessType, access_mode::Mode};
    let mut m = Map::new();
    m.insert(
        "access_mode".into(),
        c.access_mode.as_ref().map_or(
            Value::Null,
            |a| json!({ "mode": enum_name(a.mode, |m: Mode| m.as_str_name()) }),
        ),
    );
    match &c.access_type {
        Some(AccessType::Block(_)) => {
            m.insert("block".into(), json!({}));
        }
        Some(AccessType::Mount(mv)) => {
            m.insert(
                "mount".into(),
                json!({
                    "fs_type": mv.fs_type,
                    "mount_flags": mv.mount_flags,
                    "volume_mount_group": mv.volume_mount_group,
                }),
            );
        }
        None => {}
    }
    Value::Object(m)
}

fn snapshot(s: &csi::Snapshot) -> Value {
    json!({
        "snapshot_id": s.snapshot_id,
        "source_volume_id": s.source_volume_id,
        "size_bytes": s.size_bytes,
        "creation_time": s.creation_time.as_ref().map(|t| t.to_string()),
        "ready_to_use": s.ready_to_use,
        "group_snapshot_id": s.group_snapshot_id,
    })
}

fn validate_response(r: &csi::ValidateVolumeCapabilitiesResponse) -> Value {
    json!({
        "confirmed": r.confirmed.as_ref().map(|c| json!({
            "volume_context": c.volume_context,
            "volume_capabilities": c.volume_capabilities.iter().map(capability).collect::<Vec<_>>(),
            "parameters": c.parameters,
            "mutable_parameters": c.mutable_parameters,
        })),
        "message": r.message,
    })
}

fn list_volumes_response(r: &csi::ListVolumesResponse) -> Value {
    let entries: Vec<Value> = r
        .entries
        .iter()
        .map(|e| {
            json!({
                "volume": e.volume.as_ref().map(volume),
                "status": e.status.as_ref().map(|s| volume_status(&s.published_node_ids, &s.volume_condition)),
            })
        })
        .collect();
    json!({ "entries": entries, "next_token": r.next_token })
}

fn stats_response(r: &csi::NodeGetVolumeStatsResponse) -> Value {
    use csi::volume_usage::Unit;
    let usage: Vec<Value> = r
        .usage
        .iter()
        .map(|u| {
            json!({
                "available": u.available,
                "total": u.total,
                "used": u.used,
                "unit": enum_name(u.unit, |x: Unit| x.as_str_name()),
            })
        })
        .collect();
    json!({
        "usage": usage,
        "volume_condition": r.volume_condition.as_ref().map(condition),
    })
}

fn plugin_capabilities(r: &csi::GetPluginCapabilitiesResponse) -> Value {
    use csi::plugin_capability::{Type, service, volume_expansion};
    let caps: Vec<Value> = r
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(Type::Service(s)) => {
                json!({ "service": { "type": enum_name(s.r#type, |t: service::Type| t.as_str_name()) } })
            }
            Some(Type::VolumeExpansion(v)) => {
                json!({ "volume_expansion": { "type": enum_name(v.r#type, |t: volume_expansion::Type| t.as_str_name()) } })
            }
            None => json!({}),
        })
        .collect();
    json!({ "capabilities": caps })
}

fn controller_capabilities(r: &csi::ControllerGetCapabilitiesResponse) -> Value {
    use csi::controller_service_capability::{Type, rpc};
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

fn node_capabilities(r: &csi::NodeGetCapabilitiesResponse) -> Value {
    use csi::node_service_capability::{Type, rpc};
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        call: CallArgs,
    }

    #[test]
    fn byte_quantities() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("1Mi"), Ok(1 << 20));
        assert_eq!(parse_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(parse_bytes("5G"), Ok(5_000_000_000));
        assert_eq!(parse_bytes("3k"), Ok(3000));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("1.5Gi").is_err());
        assert!(parse_bytes("1Xi").is_err());
        assert!(parse_bytes("9999999Pi").is_err());
    }

    #[test]
    fn key_values() {
        assert_eq!(parse_kv("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_kv("a="), Ok(("a".into(), String::new())));
        assert!(parse_kv("=b").is_err());
        assert!(parse_kv("ab").is_err());
        let twice = [("a".into(), "1".into()), ("a".into(), "2".into())];
        assert!(matches!(map("parameter", &twice), Err(Failure::Usage(_))));
    }

    #[test]
    fn malformed_secret_is_not_echoed() {
        let s = Secrets {
            secret: vec!["ok=1".into(), "hunter2".into()],
        };
        let err = s.build().unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("#2"), "{err}");
    }

    #[test]
    fn every_rpc_parses_and_builds() {
        let calls: &[&[&str]] = &[
            &[
                "create-volume",
                "--name",
                "pvc-1",
                "--capacity-bytes",
                "1Gi",
                "--parameter",
                "onDelete=retain",
                "--source-volume-id",
                "v",
            ],
            &["delete-volume", "--volume-id", "v", "--secret", "k=v"],
            &[
                "validate-volume-capabilities",
                "--volume-id",
                "v",
                "--access-mode",
                "single-node-writer",
            ],
            &[
                "list-volumes",
                "--max-entries",
                "2",
                "--starting-token",
                "t",
            ],
            &["get-capacity", "--parameter", "mountedShare=/s"],
            &["controller-get-capabilities"],
            &[
                "controller-expand-volume",
                "--volume-id",
                "v",
                "--required-bytes",
                "2Gi",
            ],
            &["get-volume", "--volume-id", "v"],
            &[
                "stage",
                "--volume-id",
                "v",
                "--staging-target-path",
                "/s",
                "--mount-flag",
                "ro",
            ],
            &["unstage", "--volume-id", "v", "--staging-target-path", "/s"],
            &[
                "publish",
                "--volume-id",
                "v",
                "--target-path",
                "/t",
                "--readonly",
                "--volume-context",
                "a=b",
            ],
            &["unpublish", "--volume-id", "v", "--target-path", "/t"],
            &["stats", "--volume-id", "v", "--volume-path", "/t"],
            &["node-get-info"],
            &["node-get-capabilities"],
            &["create-snapshot", "--name", "s", "--source-volume-id", "v"],
            &["delete-snapshot", "--snapshot-id", "s"],
            &[
                "list-snapshots",
                "--source-volume-id",
                "v",
                "--max-entries",
                "1",
            ],
            &["probe"],
            &["info"],
            &["plugin-capabilities"],
        ];
        for args in calls {
            let cli = Cli::try_parse_from(
                ["x", "--endpoint", "unix:///tmp/x.sock"]
                    .iter()
                    .chain(args.iter()),
            )
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(prepare(cli.call.rpc).is_ok(), "{args:?}");
        }
        // one content source only
        assert!(
            Cli::try_parse_from([
                "x",
                "create-volume",
                "--name",
                "n",
                "--source-snapshot-id",
                "s",
                "--source-volume-id",
                "v"
            ])
            .is_err()
        );
    }

    #[test]
    fn json_of_responses() {
        let v = csi::Volume {
            volume_id: "v1#mounted#/s#a".into(),
            capacity_bytes: 5,
            volume_context: [("subDir".to_string(), "a".to_string())].into(),
            content_source: Some(csi::VolumeContentSource {
                r#type: Some(csi::volume_content_source::Type::Snapshot(
                    csi::volume_content_source::SnapshotSource {
                        snapshot_id: "snap".into(),
                    },
                )),
            }),
            accessible_topology: vec![],
        };
        assert_eq!(
            volume(&v),
            json!({
                "volume_id": "v1#mounted#/s#a",
                "capacity_bytes": 5,
                "volume_context": {"subDir": "a"},
                "content_source": {"snapshot": {"snapshot_id": "snap"}},
                "accessible_topology": [],
            })
        );
        let s = csi::Snapshot {
            snapshot_id: "s".into(),
            creation_time: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert_eq!(snapshot(&s)["creation_time"], json!("1970-01-01T00:00:00Z"));
        let stats = csi::NodeGetVolumeStatsResponse {
            usage: vec![csi::VolumeUsage {
                available: 1,
                total: 3,
                used: 2,
                unit: csi::volume_usage::Unit::Bytes as i32,
            }],
            volume_condition: None,
        };
        assert_eq!(
            stats_response(&stats),
            json!({"usage": [{"available": 1, "total": 3, "used": 2, "unit": "BYTES"}], "volume_condition": null})
        );
        let cap = csi::VolumeCapability {
            access_mode: Some(csi::volume_capability::AccessMode { mode: 99 }),
            access_type: None,
        };
        assert_eq!(capability(&cap), json!({"access_mode": {"mode": 99}}));
    }
}
