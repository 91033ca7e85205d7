//! The `nfs-csi` command: parses flags and starts the driver.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

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
    Serve(nfs_csi::cli::serve::ServeArgs),
    /// Print the snapshot and group snapshot CustomResourceDefinitions as YAML.
    Crds(CrdsArgs),
    /// Call one CSI RPC of a running driver and print the response as JSON.
    Call(nfs_csi::cli::call::CallArgs),
}

#[derive(clap::Args)]
struct CrdsArgs {
    /// Write one file per CRD into this directory (e.g. snapshot-crds)
    /// instead of printing them.
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Serve(args) => nfs_csi::cli::serve::run(args),
        Command::Crds(args) => crds(args),
        Command::Call(args) => std::process::exit(nfs_csi::cli::call::run(args)),
    }
}

fn crds(args: CrdsArgs) -> anyhow::Result<()> {
    match args.output_dir {
        Some(dir) => {
            nfs_csi::cli::crds::write_dir(&dir).with_context(|| format!("{}", dir.display()))
        }
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(nfs_csi::cli::crds::all_yaml().as_bytes())
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
