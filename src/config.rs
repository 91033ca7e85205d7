//! Driver configuration, built by `main` from flags and environment.
//!
//! Safety assumptions: everything here comes from the admin (flags of the
//! DaemonSet/Deployment), not from requests; it is still validated once at
//! start so a typo fails loudly instead of at the first RPC.

use std::path::PathBuf;
use std::time::Duration;

use crate::storage::export::ExportSpec;

/// Which CSI services this process serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Controller,
    Node,
    All,
}

impl Mode {
    pub fn controller(self) -> bool {
        matches!(self, Mode::Controller | Mode::All)
    }
    pub fn node(self) -> bool {
        matches!(self, Mode::Node | Mode::All)
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub driver_name: String,
    pub node_id: String,
    pub mode: Mode,
    /// Controller state and export mounts live here.
    pub work_dir: PathBuf,
    /// Exports configured by the admin (ListVolumes always covers them; the
    /// single one is the default for requests that name none).
    pub exports: Vec<ExportSpec>,
    /// One blocking filesystem call (mkdir, statvfs, delete of a tree...).
    pub fs_timeout: Duration,
    /// One `mount -t nfs`.
    pub mount_timeout: Duration,
    /// NodeGetVolumeStats' statvfs.
    pub stats_timeout: Duration,
    /// When set, node target and staging paths must be below it.
    pub kubelet_dir: Option<PathBuf>,
    /// CSI ephemeral inline volumes are refused unless enabled.
    pub allow_inline: bool,
    /// NFS servers an inline volume may name.
    pub inline_servers: Vec<String>,
    /// Mount options added to every NFS stage mount unless the volume sets them.
    pub nfs_default_options: Vec<String>,
    /// Restoring device nodes from snapshots and clones is refused unless set.
    pub allow_device_nodes: bool,
    /// `security.*` and `trusted.*` xattrs are skipped by restores and
    /// clones unless set.
    pub restore_system_xattrs: bool,
    /// zstd level for snapshots whose class does not set `compressionLevel`.
    pub snapshot_level: i32,
    /// zstd worker threads per snapshot (and copy threads per clone).
    pub snapshot_threads: u32,
    /// Where to serve Prometheus metrics; off when None.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// When not empty, a `mountedShare` root must be one of these or below
    /// one (enforced by `ExportSpec::mounted`, set up by `main`).
    pub allowed_share_roots: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "driver name {0:?} is invalid: use at most 63 lowercase letters, digits, '-' and '.', \
         starting and ending with a letter or digit (e.g. nfs-csi.dev)"
    )]
    DriverName(String),
    #[error("node id must not be empty (set --node-id or NODE_ID)")]
    NodeId,
    #[error(
        "--allow-inline needs at least one --inline-server: inline volumes may only reach servers the admin allows"
    )]
    InlineServers,
    #[error("--nfs-mount-options: {0}")]
    MountOption(#[from] crate::sys::mountopts::Error),
}

impl Config {
    pub fn validate(&self) -> Result<(), Error> {
        let n = &self.driver_name;
        let ok = !n.is_empty()
            && n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && n.as_bytes()[0].is_ascii_alphanumeric()
            && n.as_bytes()[n.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(Error::DriverName(n.clone()));
        }
        if self.node_id.trim().is_empty() {
            return Err(Error::NodeId);
        }
        if self.allow_inline && self.inline_servers.is_empty() {
            return Err(Error::InlineServers);
        }
        crate::sys::mountopts::check_all(&crate::sys::mountopts::split(&self.nfs_default_options))?;
        Ok(())
    }
}

#[cfg(test)]
pub fn test_config(work_dir: PathBuf) -> Config {
    Config {
        driver_name: "nfs-csi.dev".into(),
        node_id: "node-1".into(),
        mode: Mode::All,
        work_dir,
        exports: vec![],
        fs_timeout: Duration::from_secs(10),
        mount_timeout: Duration::from_secs(10),
        stats_timeout: Duration::from_secs(2),
        kubelet_dir: None,
        allow_inline: false,
        inline_servers: vec![],
        nfs_default_options: vec![],
        allow_device_nodes: false,
        restore_system_xattrs: false,
        snapshot_level: 6,
        snapshot_threads: 2,
        metrics_address: None,
        allowed_share_roots: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_name_rules() {
        let mut c = test_config("/tmp".into());
        for good in ["nfs-csi.dev", "a", "nfs.example.com"] {
            c.driver_name = good.into();
            assert!(c.validate().is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Nfs.dev", "a_b", &"x".repeat(64)] {
            c.driver_name = bad.into();
            assert!(c.validate().is_err(), "{bad}");
        }
    }
}
