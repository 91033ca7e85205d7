//! `nfs-csi serve`: its flags (each with an environment variable) and the
//! runtime that serves the driver until a signal stops it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::config::{Config, Mode};
use crate::storage::export::ExportSpec;

/// `nfs-csi serve`: serve the CSI gRPC services on a Unix socket.
#[derive(Args)]
pub struct ServeArgs {
    /// CSI endpoint: unix:///path/to/csi.sock
    #[arg(long, env = "CSI_ENDPOINT")]
    endpoint: String,
    /// This node's id (the Kubernetes node name).
    #[arg(long, env = "NODE_ID")]
    node_id: String,
    /// Which services to serve.
    #[arg(long, env = "CSI_MODE", value_enum, default_value = "all")]
    mode: Mode,
    /// CSI driver name (DNS-style).
    #[arg(long, env = "DRIVER_NAME", default_value = "nfs-csi.dev")]
    driver_name: String,
    /// Controller state and export mount points.
    #[arg(long, env = "WORK_DIR", default_value = "/var/lib/nfs-csi")]
    work_dir: PathBuf,
    /// An export the controller knows: server:/share or /mounted/path.
    /// Repeatable; a single one is the default for StorageClasses naming none.
    #[arg(long = "export", env = "NFS_CSI_EXPORTS", value_delimiter = ',')]
    exports: Vec<String>,
    /// Seconds for one filesystem call on an export before giving up.
    #[arg(long, env = "FS_TIMEOUT", default_value_t = 30)]
    fs_timeout: u64,
    /// Seconds for one NFS mount before the mount process is killed.
    #[arg(long, env = "MOUNT_TIMEOUT", default_value_t = 60)]
    mount_timeout: u64,
    /// Seconds NodeGetVolumeStats waits for statvfs.
    #[arg(long, env = "STATS_TIMEOUT", default_value_t = 3)]
    stats_timeout: u64,
    /// Node target/staging paths must be below this directory.
    #[arg(long, env = "KUBELET_DIR")]
    kubelet_dir: Option<PathBuf>,
    /// Allow CSI ephemeral inline volumes (pod authors choose server/share).
    #[arg(long, env = "ALLOW_INLINE")]
    allow_inline: bool,
    /// NFS server an inline volume may use (repeatable).
    #[arg(long = "inline-server", env = "INLINE_SERVERS", value_delimiter = ',')]
    inline_servers: Vec<String>,
    /// Default NFS mount options for node mounts (comma-separated).
    #[arg(long, env = "NFS_MOUNT_OPTIONS", value_delimiter = ',')]
    nfs_mount_options: Vec<String>,
    /// Restore device nodes found in snapshots and clone sources.
    #[arg(long, env = "ALLOW_DEVICE_NODES")]
    allow_device_nodes: bool,
    /// Restore security.* and trusted.* xattrs (capabilities, SELinux
    /// labels...) found in snapshots and clone sources.
    #[arg(long, env = "RESTORE_SYSTEM_XATTRS")]
    restore_system_xattrs: bool,
    /// zstd level of snapshot archives (1-19; a VolumeSnapshotClass may set
    /// compressionLevel).
    #[arg(long, env = "SNAPSHOT_LEVEL", default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=19))]
    snapshot_level: i32,
    /// Threads per snapshot (zstd workers) and per clone (copy workers);
    /// default: the number of CPUs.
    #[arg(long, env = "SNAPSHOT_THREADS")]
    snapshot_threads: Option<u32>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (off by default).
    #[arg(long, env = "METRICS_ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
    /// A directory mountedShare roots must be in (repeatable; when none is
    /// given, any root outside the host's system directories).
    #[arg(
        long = "allowed-share-root",
        env = "NFS_CSI_ALLOWED_SHARE_ROOTS",
        value_delimiter = ','
    )]
    allowed_share_roots: Vec<String>,
}

/// Runs `nfs-csi serve` until SIGTERM or SIGINT.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let allowed_share_roots = args
        .allowed_share_roots
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| crate::storage::ids::absolute_path("--allowed-share-root", r))
        .collect::<Result<Vec<_>, _>>()
        .context("--allowed-share-root")?;
    // Before any export is parsed: the configured ones are checked too.
    crate::storage::export::set_allowed_roots(allowed_share_roots.clone());
    let exports = args
        .exports
        .iter()
        .filter(|e| !e.is_empty())
        .map(|e| ExportSpec::parse_flag(e))
        .collect::<Result<Vec<_>, _>>()
        .context("--export")?;
    let config = Config {
        driver_name: args.driver_name,
        node_id: args.node_id,
        mode: args.mode,
        work_dir: args.work_dir,
        exports,
        fs_timeout: Duration::from_secs(args.fs_timeout.max(1)),
        mount_timeout: Duration::from_secs(args.mount_timeout.max(1)),
        stats_timeout: Duration::from_secs(args.stats_timeout.max(1)),
        kubelet_dir: args.kubelet_dir,
        allow_inline: args.allow_inline,
        inline_servers: args.inline_servers,
        nfs_default_options: args.nfs_mount_options,
        allow_device_nodes: args.allow_device_nodes,
        restore_system_xattrs: args.restore_system_xattrs,
        snapshot_level: args.snapshot_level,
        snapshot_threads: args
            .snapshot_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32))
            .max(1),
        metrics_address: args.metrics_address,
        allowed_share_roots,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        crate::grpc::server::serve(&args.endpoint, config, shutdown_signal())
            .await
            .context("nfs-csi serve")
    });
    // A thread stuck on a dead NFS server cannot be joined: do not wait
    // for it (dropping the runtime would, forever).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Completes on SIGTERM (what Kubernetes sends) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot listen for SIGTERM: {e}");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}
