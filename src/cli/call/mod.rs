//! `nfs-csi call`: a CSI client for operators. Builds one request from
//! flags named after the CSI fields (kebab-case), sends it over the
//! driver's Unix socket and prints the response as JSON.
//!
//! Exit codes: 0 success, [`EXIT_RPC`] when the driver answers with a gRPC
//! error (or no answer comes within `--timeout`), [`EXIT_USAGE`] for bad
//! flags, [`EXIT_UNREACHABLE`] when the socket cannot be connected to.
//!
//! Requests are never printed or logged: they may carry secrets.

use std::future::Future;
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use clap::{Args, Subcommand};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use controller::{
    CreateVolume, DeleteVolume, ExpandVolume, GetCapacity, ValidateVolumeCapabilities, VolumeId,
};
use flags::Page;
use groups::{CreateGroupSnapshot, GroupSnapshotId};
use node::{Publish, Stage, Stats, Unpublish, Unstage};
use snapshots::{CreateSnapshot, DeleteSnapshot, ListSnapshots};

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
    /// GroupController CreateVolumeGroupSnapshot (call again until ready_to_use).
    #[command(visible_alias = "create-volume-group-snapshot")]
    CreateGroupSnapshot(CreateGroupSnapshot),
    /// GroupController DeleteVolumeGroupSnapshot (the group and every member).
    #[command(visible_alias = "delete-volume-group-snapshot")]
    DeleteGroupSnapshot(GroupSnapshotId),
    /// GroupController GetVolumeGroupSnapshot.
    #[command(visible_alias = "get-volume-group-snapshot")]
    GetGroupSnapshot(GroupSnapshotId),
    /// GroupController GroupControllerGetCapabilities.
    GroupControllerGetCapabilities,
    /// Identity Probe.
    Probe,
    /// Identity GetPluginInfo.
    #[command(visible_alias = "get-plugin-info")]
    Info,
    /// Identity GetPluginCapabilities.
    #[command(visible_alias = "get-plugin-capabilities")]
    PluginCapabilities,
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

mod controller;
mod flags;
mod groups;
mod identity;
mod node;
mod reply;
mod snapshots;

pub use flags::parse_bytes;

/// Builds the request of `rpc`: every usage error is found here, before
/// connecting.
fn prepare(rpc: Rpc) -> Result<Pending, Failure> {
    match rpc {
        Rpc::CreateVolume(a) => controller::create_volume(a),
        Rpc::DeleteVolume(a) => controller::delete_volume(a),
        Rpc::ValidateVolumeCapabilities(a) => controller::validate_volume_capabilities(a),
        Rpc::ListVolumes(a) => controller::list_volumes(a),
        Rpc::GetCapacity(a) => controller::get_capacity(a),
        Rpc::ControllerGetCapabilities => controller::controller_get_capabilities(),
        Rpc::ExpandVolume(a) => controller::expand_volume(a),
        Rpc::GetVolume(a) => controller::get_volume(a),
        Rpc::Stage(a) => node::stage(a),
        Rpc::Unstage(a) => node::unstage(a),
        Rpc::Publish(a) => node::publish(a),
        Rpc::Unpublish(a) => node::unpublish(a),
        Rpc::Stats(a) => node::stats(a),
        Rpc::NodeGetInfo => node::node_get_info(),
        Rpc::NodeGetCapabilities => node::node_get_capabilities(),
        Rpc::CreateSnapshot(a) => snapshots::create_snapshot(a),
        Rpc::DeleteSnapshot(a) => snapshots::delete_snapshot(a),
        Rpc::ListSnapshots(a) => snapshots::list_snapshots(a),
        Rpc::CreateGroupSnapshot(a) => groups::create_group_snapshot(a),
        Rpc::DeleteGroupSnapshot(a) => groups::delete_group_snapshot(a),
        Rpc::GetGroupSnapshot(a) => groups::get_group_snapshot(a),
        Rpc::GroupControllerGetCapabilities => groups::group_controller_get_capabilities(),
        Rpc::Probe => identity::probe(),
        Rpc::Info => identity::info(),
        Rpc::PluginCapabilities => identity::plugin_capabilities(),
    }
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::reply::*;
    use super::*;
    use crate::grpc::csi::v1 as csi;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        call: CallArgs,
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
            &[
                "create-group-snapshot",
                "--name",
                "g",
                "--source-volume-id",
                "v",
                "--source-volume-id",
                "w",
                "--parameter",
                "compressionLevel=3",
            ],
            &[
                "delete-group-snapshot",
                "--group-snapshot-id",
                "g",
                "--snapshot-id",
                "s",
            ],
            &["get-volume-group-snapshot", "--group-snapshot-id", "g"],
            &["group-controller-get-capabilities"],
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
        // a group snapshot needs a volume
        assert!(Cli::try_parse_from(["x", "create-group-snapshot", "--name", "g"]).is_err());
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
