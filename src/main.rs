//! The `nfs-csi` command: parses flags and starts the driver.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use nfs_csi::config::{Config, Mode};
use nfs_csi::export::ExportSpec;

#[derive(Parser)]
#[command(
    name = "nfs-csi",
    version,
    about = "Kubernetes CSI driver for NFS: RWX volumes, snapshots, clones"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// Parsed once at startup: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the CSI gRPC services on a Unix socket.
    Serve(ServeArgs),
    /// Print the snapshot.storage.k8s.io CustomResourceDefinitions as YAML.
    Crds(CrdsArgs),
    /// Call one CSI RPC of a running driver and print the response as JSON.
    Call(nfs_csi::client::CallArgs),
}

#[derive(clap::Args)]
struct CrdsArgs {
    /// Write one file per CRD into this directory (e.g. snapshot-crds)
    /// instead of printing them.
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Crds(args) => crds(args),
        Command::Call(args) => std::process::exit(nfs_csi::client::run(args)),
    }
}

fn crds(args: CrdsArgs) -> anyhow::Result<()> {
    match args.output_dir {
        Some(dir) => nfs_csi::crds::write_dir(&dir).with_context(|| format!("{}", dir.display())),
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(nfs_csi::crds::all_yaml().as_bytes())
                .context("stdout")
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let allowed_share_roots = args
        .allowed_share_roots
        .iter()
        .filter(|r| !r.is_empty())
        .map(|r| nfs_csi::volume::absolute_path("--allowed-share-root", r))
        .collect::<Result<Vec<_>, _>>()
        .context("--allowed-share-root")?;
    // Before any export is parsed: the configured ones are checked too.
    nfs_csi::export::set_allowed_roots(allowed_share_roots.clone());
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
        nfs_csi::server::serve(&args.endpoint, config, shutdown_signal())
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
