//! `nfs-csi call` for the Identity service.

use std::time::Duration;

use serde_json::json;
use tonic::transport::Channel;

use super::{Failure, Pending, Reply};
use crate::grpc::csi::v1 as csi;
use csi::identity_client::IdentityClient;

pub(super) fn probe() -> Result<Pending, Failure> {
    Ok(pending!(
        IdentityClient,
        probe,
        csi::ProbeRequest {},
        |r: &csi::ProbeResponse| { json!({ "ready": r.ready }) }
    ))
}

pub(super) fn info() -> Result<Pending, Failure> {
    Ok(pending!(
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
    ))
}

pub(super) fn plugin_capabilities() -> Result<Pending, Failure> {
    Ok(pending!(
        IdentityClient,
        get_plugin_capabilities,
        csi::GetPluginCapabilitiesRequest {},
        super::reply::plugin_capabilities
    ))
}
