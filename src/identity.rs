//! The CSI Identity service: name, version, capabilities, readiness.
//!
//! Safety assumptions: Probe reports whether this process can do its job
//! (its work directory is usable, `mount` is present for NFS), not whether
//! any NFS server answers: a dead server must not make Kubernetes restart
//! the driver in a loop.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::config::Config;
use crate::grpc::csi::v1::{
    self as csi, PluginCapability, identity_server::Identity, plugin_capability,
};

pub struct IdentityService {
    config: Arc<Config>,
}

impl IdentityService {
    pub fn new(config: Arc<Config>) -> Self {
        IdentityService { config }
    }

    /// Why the driver cannot work now, if it cannot.
    fn not_ready(&self) -> Option<String> {
        let work = &self.config.work_dir;
        if self.config.mode.controller() {
            let probe = work.join(".probe");
            if let Err(e) = std::fs::write(&probe, b"ok") {
                return Some(format!("work dir {} is not writable: {e}", work.display()));
            }
            let _ = std::fs::remove_file(&probe);
        }
        if !find_in_path("mount") {
            return Some("the mount command is not installed (util-linux)".into());
        }
        if let Some(dir) = &self.config.kubelet_dir
            && self.config.mode.node()
            && !dir.is_dir()
        {
            return Some(format!(
                "kubelet directory {} does not exist",
                dir.display()
            ));
        }
        None
    }
}

fn find_in_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|d: PathBuf| d.join(program).is_file())
}

#[tonic::async_trait]
impl Identity for IdentityService {
    #[instrument(skip_all)]
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.config.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_string(),
            manifest: [(
                "mode".to_string(),
                format!("{:?}", self.config.mode).to_lowercase(),
            )]
            .into(),
        }))
    }

    #[instrument(skip_all)]
    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = Vec::new();
        if self.config.mode.controller() {
            capabilities.push(PluginCapability {
                r#type: Some(plugin_capability::Type::Service(
                    plugin_capability::Service {
                        r#type: plugin_capability::service::Type::ControllerService as i32,
                    },
                )),
            });
            capabilities.push(PluginCapability {
                r#type: Some(plugin_capability::Type::Service(
                    plugin_capability::Service {
                        r#type: plugin_capability::service::Type::GroupControllerService as i32,
                    },
                )),
            });
            capabilities.push(PluginCapability {
                r#type: Some(plugin_capability::Type::VolumeExpansion(
                    plugin_capability::VolumeExpansion {
                        r#type: plugin_capability::volume_expansion::Type::Online as i32,
                    },
                )),
            });
        }
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    #[instrument(skip_all)]
    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        let reason = self.not_ready();
        if let Some(r) = &reason {
            tracing::warn!("not ready: {r}");
        }
        Ok(Response::new(csi::ProbeResponse {
            ready: Some(reason.is_none()),
        }))
    }
}
