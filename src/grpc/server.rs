//! The gRPC server: a Unix socket, the services the mode asks for, a clean
//! stop on SIGTERM/SIGINT.
//!
//! Safety assumptions: an existing socket file is replaced only when nothing
//! answers on it (a second driver on the same path is refused, not
//! hijacked), and only if it is a socket. The socket is removed on exit.

use std::future::Future;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;

use crate::config::Config;
use crate::controller::ControllerService;
use crate::grpc::csi::v1::{
    controller_server::ControllerServer, group_controller_server::GroupControllerServer,
    identity_server::IdentityServer, node_server::NodeServer,
};
use crate::identity::IdentityService;
use crate::node::NodeService;
use crate::storage::export::{self, Exports, Timeouts};
use crate::sys::mount::{Mounter, SystemMounter};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("endpoint {0:?} is not unix:///absolute/path")]
    Endpoint(String),
    #[error("another process is serving on {0}; refusing to replace its socket")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotSocket(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    #[error(transparent)]
    Export(#[from] export::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How long a stop waits for calls in progress.
const DRAIN: Duration = Duration::from_secs(5);

/// The socket path of a `unix://` endpoint (`unix:///p`, `unix:/p` or `/p`).
pub fn socket_path(endpoint: &str) -> Result<PathBuf, Error> {
    let p = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !p.starts_with('/') || p.len() < 2 {
        return Err(Error::Endpoint(endpoint.to_string()));
    }
    Ok(PathBuf::from(p))
}

/// Removes a stale socket file at `path`; refuses if something answers.
fn prepare_socket(path: &Path) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::InUse(path.to_path_buf()));
            }
            tracing::info!(socket = %path.display(), "replacing stale socket");
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => return Err(Error::NotSocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

/// Serves until `shutdown` completes.
pub async fn serve(
    endpoint: &str,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.validate()?;
    let config = Arc::new(config);
    let path = socket_path(endpoint)?;
    let system = SystemMounter {
        command_timeout: config.mount_timeout,
        scratch_dir: config.work_dir.join("node-mounts"),
    };
    if config.mode.node() {
        system.sweep_scratch();
    }
    let mounter: Arc<dyn Mounter> = Arc::new(system);

    if let Some(addr) = config.metrics_address {
        let local = crate::grpc::metrics::serve(addr)
            .await
            .map_err(|source| Error::Io {
                path: PathBuf::from(addr.to_string()),
                source,
            })?;
        tracing::info!(address = %local, "serving metrics at /metrics");
    }
    let mut router = Server::builder()
        .timeout(Duration::from_secs(600))
        .layer(crate::grpc::metrics::Layer)
        .add_service(IdentityServer::new(IdentityService::new(config.clone())));
    if config.mode.controller() {
        let exports = Exports::open(
            &config.work_dir,
            config.exports.clone(),
            mounter.clone(),
            Timeouts {
                fs: config.fs_timeout,
                mount: config.mount_timeout,
            },
        )?;
        // One service behind both: group snapshots share the controller's
        // jobs and in-flight keys.
        let controller = Arc::new(ControllerService::new(Arc::new(exports), config.clone()));
        router = router
            .add_service(ControllerServer::from_arc(controller.clone()))
            .add_service(GroupControllerServer::from_arc(controller));
    }
    if config.mode.node() {
        router = router.add_service(NodeServer::new(NodeService::new(
            config.clone(),
            mounter.clone(),
        )));
    }

    prepare_socket(&path)?;
    let listener = UnixListener::bind(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    tracing::info!(
        socket = %path.display(),
        driver = %config.driver_name,
        mode = ?config.mode,
        version = env!("CARGO_PKG_VERSION"),
        "serving"
    );
    // Graceful stop, bounded: kubelet and the sidecars keep connections
    // open, and a stop must not wait on them forever.
    let stop = Arc::new(tokio::sync::Notify::new());
    let serve = router.serve_with_incoming_shutdown(
        UnixListenerStream::new(listener),
        stop.clone().notified_owned(),
    );
    tokio::pin!(serve);
    let result = tokio::select! {
        r = &mut serve => r,
        () = shutdown => {
            stop.notify_one();
            match tokio::time::timeout(DRAIN, &mut serve).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("connections still open after {} s; stopping anyway", DRAIN.as_secs());
                    Ok(())
                }
            }
        }
    };
    let _ = std::fs::remove_file(&path);
    tracing::info!("stopped");
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        assert!(socket_path("unix://relative").is_err());
    }

    #[test]
    fn stale_socket_replaced_live_one_refused_file_kept() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("csi.sock");
        {
            let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
            assert!(matches!(prepare_socket(&p), Err(Error::InUse(_))));
        }
        // listener dropped: the file stays but nothing answers
        assert!(p.exists());
        prepare_socket(&p).unwrap();
        assert!(!p.exists());
        std::fs::write(&p, b"data").unwrap();
        assert!(matches!(prepare_socket(&p), Err(Error::NotSocket(_))));
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
    }
}
