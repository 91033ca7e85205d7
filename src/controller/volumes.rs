//! CreateVolume, DeleteVolume, ControllerExpandVolume, ControllerGetVolume,
//! ValidateVolumeCapabilities and GetCapacity.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::grpc::csi::v1::{self as csi, VolumeCapability, VolumeCondition, volume_capability};
use crate::storage::export::ExportSpec;
use crate::storage::ids::VolumeId;
use crate::storage::params::{self, VolumeRecord};
use crate::sys::offload;

use super::*;

/// Checks capabilities: all mount (no block), each with an access mode.
/// Returns the mount flags they carry.
pub(super) fn check_caps(caps: &[VolumeCapability]) -> std::result::Result<Vec<String>, Error> {
    if caps.is_empty() {
        return Err(Error::Missing("volume_capabilities"));
    }
    let mut flags = Vec::new();
    for cap in caps {
        match &cap.access_type {
            Some(volume_capability::AccessType::Mount(m)) => {
                for f in &m.mount_flags {
                    if !flags.contains(f) {
                        flags.push(f.clone());
                    }
                }
            }
            Some(volume_capability::AccessType::Block(_)) => return Err(Error::Block),
            None => return Err(Error::NoAccessType),
        }
        if cap.access_mode.is_none() {
            return Err(Error::NoAccessMode);
        }
    }
    Ok(flags)
}

/// (required, limit) from a capacity range, checked.
pub(super) fn range(r: Option<&csi::CapacityRange>) -> std::result::Result<(i64, i64), Error> {
    let Some(r) = r else { return Ok((0, 0)) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Error::BadRange("bytes must not be negative".into()));
    }
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(Error::BadRange(format!(
            "required_bytes {} exceeds limit_bytes {}",
            r.required_bytes, r.limit_bytes
        )));
    }
    Ok((r.required_bytes, r.limit_bytes))
}

pub(super) fn fits(capacity: i64, (required, limit): (i64, i64)) -> bool {
    (required == 0 || capacity >= required) && (limit == 0 || capacity <= limit)
}

pub(super) fn volume_context(id: &VolumeId) -> HashMap<String, String> {
    let mut ctx = HashMap::new();
    match &id.export {
        ExportSpec::Nfs { server, share, .. } => {
            ctx.insert("server".into(), server.clone());
            ctx.insert("share".into(), share.clone());
        }
        ExportSpec::Mounted { root } => {
            ctx.insert("mountedShare".into(), root.display().to_string());
        }
    }
    ctx.insert("subDir".into(), id.subdir.as_str().to_string());
    ctx
}

pub(super) fn to_volume(id: &VolumeId, capacity: i64) -> csi::Volume {
    csi::Volume {
        capacity_bytes: capacity,
        volume_id: id.to_string(),
        volume_context: volume_context(id),
        ..Default::default()
    }
}

impl ControllerService {
    pub(crate) async fn create(
        &self,
        req: csi::CreateVolumeRequest,
    ) -> Result<csi::CreateVolumeResponse> {
        if req.name.is_empty() {
            return Err(Error::Missing("name"));
        }
        let flags = check_caps(&req.volume_capabilities)?;
        let capacity = range(req.capacity_range.as_ref())?;
        let mut params = params::create_params(
            &req.name,
            &req.parameters,
            &flags,
            self.exports.default_export(),
        )?;
        // The CSI spec: mutable parameters take precedence over `parameters`.
        let mutable = params::mutable_params(&req.mutable_parameters)?;
        if let Some(on_delete) = mutable.on_delete {
            params.on_delete = on_delete;
        }
        if mutable.mount_permissions.is_some() {
            params.mount_permissions = mutable.mount_permissions;
        }
        let id = VolumeId {
            export: params.export.clone(),
            subdir: params.subdir.clone(),
        };
        let source = match &req.volume_content_source {
            None => None,
            Some(src) => Some(self.content_source(src, &id, capacity.0).await?),
        };
        let _guard = self.inflight.acquire(&[
            format!("name:{}", req.name),
            format!("dir:{}/{}", id.export.key(), id.subdir.as_str()),
        ])?;
        let (root, _) = self.exports.ready(&id.export).await?;
        self.exports.remember(&id.export).await?;
        let create_lock = self.create_lock(&id.export);
        let requested = if capacity.0 > 0 {
            capacity.0
        } else {
            capacity.1
        };
        let want = VolumeRecord {
            name: req.name.clone(),
            subdir: id.subdir.as_str().to_string(),
            capacity_bytes: match &source {
                Some(s) if requested == 0 => s.bytes,
                _ => requested,
            },
            on_delete: params.on_delete,
            mount_permissions: params.mount_permissions,
            parameters: req.parameters.into_iter().collect::<BTreeMap<_, _>>(),
            created_unix: now_unix(),
            content_source: source.as_ref().map(|s| s.id.clone()),
            populated: source.is_none(),
            adopted: false,
            volume_id: Some(id.to_string()),
        };
        let subdir = id.subdir.clone();
        let dest_root = root.clone();
        let vid = id.to_string();
        let creating = create_lock.lock().await;
        let rec = offload::run(
            "create volume directory",
            self.exports.timeouts().fs,
            move || {
                let rec = create_on_export(&dest_root, want, &subdir, capacity)?;
                // A repeated CreateVolume applies its mutable parameters to
                // the existing volume, as ControllerModifyVolume does (a new
                // volume has them already: nothing changes).
                if mutable != params::MutableParams::default() {
                    return modify_on_export(&dest_root, &subdir, &mutable, &vid);
                }
                Ok(rec)
            },
        )
        .await??;
        drop(creating);
        if !rec.populated
            && let Some(source) = source
        {
            self.populate(&id, root, source, rec.capacity_bytes).await?;
        }
        tracing::info!(volume_id = %id, capacity = rec.capacity_bytes, "volume ready");
        Ok(csi::CreateVolumeResponse {
            volume: Some(csi::Volume {
                content_source: req.volume_content_source,
                ..to_volume(&id, rec.capacity_bytes)
            }),
        })
    }

    pub(crate) async fn delete(
        &self,
        req: csi::DeleteVolumeRequest,
    ) -> Result<csi::DeleteVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id"));
        }
        let id = match VolumeId::parse(&req.volume_id) {
            Ok(id) => id,
            Err(e) => {
                // Not an id this driver could have issued: nothing exists to delete.
                tracing::info!(error = %e, "delete of a foreign id: nothing to do");
                return Ok(csi::DeleteVolumeResponse {});
            }
        };
        let populate_key = format!("populate:{id}");
        if let Some(job) = self.jobs.get(&populate_key) {
            // Deleting a volume still being filled: stop the filling first,
            // and forget it (a new volume at this id starts its own).
            job.cancel();
            let _ = job.wait(Duration::from_secs(30)).await;
            self.jobs.remove(&populate_key);
        }
        let _guard =
            self.inflight
                .acquire(&[format!("dir:{}/{}", id.export.key(), id.subdir.as_str())])?;
        let (root, _) = self.exports.ready(&id.export).await?;
        let subdir = id.subdir.clone();
        // A big tree takes long to remove: the removal is a job that goes on
        // if this call gives up, and a retry joins it instead of starting a
        // second one on the same tree.
        let key = format!("delete:{id}");
        let vid = id.to_string();
        let job = self.jobs.start(&key, move |_| {
            delete_on_export(&root, &subdir)
                .map(|done| tracing::info!(volume_id = %vid, "{done}"))
                .map_err(|e| crate::sys::text::chain(&e))
        });
        let fs = self.exports.timeouts().fs;
        match self.jobs.outcome(&key, &job, fs).await {
            Some(Ok(())) => Ok(csi::DeleteVolumeResponse {}),
            Some(Err(msg)) => Err(Error::JobFailed(format!("deleting volume {id}: {msg}"))),
            None => Err(offload::Error::TimedOut {
                what: format!("deleting volume {id} (still going on; retry)"),
                secs: fs.as_secs(),
            }
            .into()),
        }
    }

    /// The record of an existing volume, or NOT_FOUND.
    pub(super) async fn existing(
        &self,
        volume_id: &str,
    ) -> Result<(VolumeId, VolumeRecord, VolumeCondition)> {
        if volume_id.is_empty() {
            return Err(Error::Missing("volume_id"));
        }
        let id = VolumeId::parse(volume_id)?;
        let (root, _) = self.exports.ready(&id.export).await?;
        let subdir = id.subdir.clone();
        let found = offload::run(
            "read volume record",
            self.exports.timeouts().fs,
            move || {
                let Some(meta) = Meta::open(&root, false)? else {
                    return Ok(None);
                };
                Ok::<_, Error>(meta.record(&subdir)?.map(|r| (r, meta.condition(&subdir))))
            },
        )
        .await??;
        match found {
            Some((rec, cond)) => Ok((id, rec, cond)),
            None => Err(Error::NotFound(volume_id.to_string())),
        }
    }

    pub(crate) async fn validate(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(Error::Missing("volume_capabilities"));
        }
        self.existing(&req.volume_id).await?;
        match check_caps(&req.volume_capabilities) {
            Ok(_) => Ok(csi::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(csi::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: req.mutable_parameters,
                }),
                message: String::new(),
            }),
            Err(e @ (Error::Block | Error::NoAccessType | Error::NoAccessMode)) => {
                Ok(csi::ValidateVolumeCapabilitiesResponse {
                    confirmed: None,
                    message: e.to_string(),
                })
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn capacity(
        &self,
        req: csi::GetCapacityRequest,
    ) -> Result<csi::GetCapacityResponse> {
        let mut flags = Vec::new();
        for cap in &req.volume_capabilities {
            match &cap.access_type {
                Some(volume_capability::AccessType::Block(_)) => {
                    return Ok(csi::GetCapacityResponse::default());
                }
                Some(volume_capability::AccessType::Mount(m)) => {
                    flags.extend(m.mount_flags.clone())
                }
                None => return Err(Error::NoAccessType),
            }
        }
        params::check_known(&req.parameters)?;
        let names_export = ["server", "share", "mountedShare"]
            .iter()
            .any(|k| req.parameters.contains_key(*k));
        if !names_export && self.exports.default_export().is_none() {
            // Parameters are optional (CSI spec): with no export named and
            // none by default, there is no capacity to report.
            return Ok(csi::GetCapacityResponse::default());
        }
        let export =
            params::export_from_params(&req.parameters, &flags, self.exports.default_export())?;
        let (_, stats) = self.exports.ready(&export).await?;
        Ok(csi::GetCapacityResponse {
            available_capacity: i64::try_from(stats.available_bytes).unwrap_or(i64::MAX),
            maximum_volume_size: None,
            minimum_volume_size: None,
        })
    }

    pub(crate) async fn expand(
        &self,
        req: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id"));
        }
        if req.capacity_range.is_none() {
            return Err(Error::Missing("capacity_range"));
        }
        if let Some(cap) = &req.volume_capability {
            check_caps(std::slice::from_ref(cap))?;
        }
        let (required, limit) = range(req.capacity_range.as_ref())?;
        let id = VolumeId::parse(&req.volume_id)?;
        let _guard =
            self.inflight
                .acquire(&[format!("dir:{}/{}", id.export.key(), id.subdir.as_str())])?;
        let (root, _) = self.exports.ready(&id.export).await?;
        let subdir = id.subdir.clone();
        let vid = req.volume_id.clone();
        let new = offload::run("expand volume", self.exports.timeouts().fs, move || {
            let meta = Meta::open(&root, false)?.ok_or(Error::NotFound(vid.clone()))?;
            let mut rec = meta.record(&subdir)?.ok_or(Error::NotFound(vid))?;
            let want = if required > 0 { required } else { limit };
            if limit > 0 && rec.capacity_bytes > limit {
                return Err(Error::CannotShrink {
                    limit,
                    current: rec.capacity_bytes,
                });
            }
            if want > rec.capacity_bytes {
                rec.capacity_bytes = want;
                meta.save(&rec, &subdir)?;
            }
            Ok::<_, Error>(rec.capacity_bytes)
        })
        .await??;
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: new,
            node_expansion_required: false,
        })
    }

    pub(crate) async fn get(
        &self,
        req: csi::ControllerGetVolumeRequest,
    ) -> Result<csi::ControllerGetVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id"));
        }
        let id = VolumeId::parse(&req.volume_id)?;
        let (volume, condition) = match self.existing(&req.volume_id).await {
            Ok((id, rec, cond)) => (to_volume(&id, rec.capacity_bytes), cond),
            Err(Error::Export(e)) => (
                to_volume(&id, 0),
                VolumeCondition {
                    abnormal: true,
                    message: e.to_string(),
                },
            ),
            Err(Error::Offload(e)) => (
                to_volume(&id, 0),
                VolumeCondition {
                    abnormal: true,
                    message: e.to_string(),
                },
            ),
            Err(e) => return Err(e),
        };
        Ok(csi::ControllerGetVolumeResponse {
            volume: Some(volume),
            status: Some(csi::controller_get_volume_response::VolumeStatus {
                published_node_ids: vec![],
                volume_condition: Some(condition),
            }),
        })
    }
}
