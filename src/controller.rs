//! The CSI Controller service: volumes as directories on exports.
//!
//! Safety assumptions: a volume exists for the driver only if its record
//! exists in the export's `.nfs-csi/volumes/`; DeleteVolume removes nothing
//! without one, so a forged or stale id can never delete a directory the
//! driver did not provision. All directory work goes through `safefs` (no
//! symlink followed, nothing outside the export) on the blocking pool under
//! a timeout; two calls on one volume at once get ABORTED.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::csi::v1::{
    self as csi, ControllerServiceCapability, VolumeCapability, VolumeCondition,
    controller_server::Controller, controller_service_capability, volume_capability,
};
use crate::error::to_status;
use crate::export::{ExportSpec, Exports};
use crate::inflight::InFlight;
use crate::offload;
use crate::safefs::{self, DirFd};
use crate::volume::{self, OnDelete, RESERVED_DIR, RelPath, VolumeId, VolumeRecord};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error(
        "block access is not supported: nfs-csi volumes are directories; use volumeMode: Filesystem"
    )]
    Block,
    #[error("a volume capability has no access type (mount or block)")]
    NoAccessType,
    #[error("a volume capability has no access mode")]
    NoAccessMode,
    #[error("capacity range is invalid: {0}")]
    BadRange(String),
    #[error("volume content source (snapshot or clone) is not supported by this driver version")]
    ContentSource,
    #[error("volume {0} does not exist")]
    NotFound(String),
    #[error("volume {name:?} already exists and differs: {reason}")]
    AlreadyExists { name: String, reason: String },
    #[error(
        "starting_token {0:?} is not one this driver issued (or its export is gone); restart the listing"
    )]
    BadToken(String),
    #[error("max_entries must not be negative")]
    NegativeMaxEntries,
    #[error("record {path} is unreadable: {source}")]
    CorruptRecord {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub struct ControllerService {
    exports: Arc<Exports>,
    inflight: InFlight,
}

impl ControllerService {
    pub fn new(exports: Arc<Exports>) -> Self {
        ControllerService {
            exports,
            inflight: InFlight::default(),
        }
    }
}

type Result<T> = std::result::Result<T, crate::error::Error>;

fn reply<T>(r: Result<T>) -> std::result::Result<Response<T>, Status> {
    r.map(Response::new).map_err(to_status)
}

/// Checks capabilities: all mount (no block), each with an access mode.
/// Returns the mount flags they carry.
fn check_caps(caps: &[VolumeCapability]) -> std::result::Result<Vec<String>, Error> {
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
fn range(r: Option<&csi::CapacityRange>) -> std::result::Result<(i64, i64), Error> {
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

fn fits(capacity: i64, (required, limit): (i64, i64)) -> bool {
    (required == 0 || capacity >= required) && (limit == 0 || capacity <= limit)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// File name for a volume name in `.nfs-csi/names/`.
fn name_file(name: &str) -> String {
    volume::safe_file_name(name)
}

fn record_file(subdir: &RelPath) -> String {
    format!("{}.json", subdir.digest())
}

fn volume_context(id: &VolumeId) -> HashMap<String, String> {
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

fn to_volume(id: &VolumeId, capacity: i64) -> csi::Volume {
    csi::Volume {
        capacity_bytes: capacity,
        volume_id: id.to_string(),
        volume_context: volume_context(id),
        ..Default::default()
    }
}

/// The driver's metadata directories on an export.
struct Meta {
    root: DirFd,
    volumes: DirFd,
    names: DirFd,
}

impl Meta {
    fn open(root: &Path, create: bool) -> Result<Option<Meta>> {
        let root = DirFd::open_root(root)?;
        let meta = if create {
            Some(root.child_or_create(OsStr::new(RESERVED_DIR), 0o700)?.0)
        } else {
            root.child(OsStr::new(RESERVED_DIR))?
        };
        let Some(meta) = meta else { return Ok(None) };
        let (volumes, names) = if create {
            (
                meta.child_or_create(OsStr::new("volumes"), 0o700)?.0,
                meta.child_or_create(OsStr::new("names"), 0o700)?.0,
            )
        } else {
            match (
                meta.child(OsStr::new("volumes"))?,
                meta.child(OsStr::new("names"))?,
            ) {
                (Some(v), Some(n)) => (v, n),
                _ => return Ok(None),
            }
        };
        Ok(Some(Meta {
            root,
            volumes,
            names,
        }))
    }

    fn record(&self, subdir: &RelPath) -> Result<Option<VolumeRecord>> {
        let file = record_file(subdir);
        match self.volumes.read_small(&file)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| {
                Error::CorruptRecord {
                    path: self.volumes.path().join(&file),
                    source,
                }
                .into()
            }),
        }
    }

    fn save(&self, rec: &VolumeRecord, subdir: &RelPath) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(rec).map_err(|source| Error::CorruptRecord {
            path: self.volumes.path().join(record_file(subdir)),
            source,
        })?;
        self.volumes.write_atomic(&record_file(subdir), &bytes)?;
        Ok(())
    }

    /// The directory's state, for a VolumeCondition.
    fn condition(&self, subdir: &RelPath) -> VolumeCondition {
        let (abnormal, message) = match self.root.walk(subdir) {
            Ok(Some(_)) => (false, "directory present".to_string()),
            Ok(None) => (true, format!("directory {} is missing", subdir.as_str())),
            Err(e) => (true, e.to_string()),
        };
        VolumeCondition { abnormal, message }
    }
}

/// CreateVolume's work on the export. Blocking.
fn create_on_export(
    root: &Path,
    want: VolumeRecord,
    subdir: &RelPath,
    capacity: (i64, i64),
) -> Result<VolumeRecord> {
    let meta = Meta::open(root, true)?.ok_or(Error::Missing("export metadata"))?;
    let name_file = name_file(&want.name);
    let conflict = |reason: String| Error::AlreadyExists {
        name: want.name.clone(),
        reason,
    };
    if let Some(bytes) = meta.names.read_small(&name_file)? {
        let existing = String::from_utf8_lossy(&bytes);
        if existing != subdir.as_str() {
            return Err(conflict(format!(
                "it was created with directory {existing:?}, this request gives {:?}",
                subdir.as_str()
            ))
            .into());
        }
    }
    if let Some(existing) = meta.record(subdir)? {
        if existing.name != want.name {
            return Err(conflict(format!(
                "directory {:?} already belongs to volume {:?}",
                subdir.as_str(),
                existing.name
            ))
            .into());
        }
        if existing.parameters != want.parameters {
            return Err(conflict("it was created with other parameters".into()).into());
        }
        if !fits(existing.capacity_bytes, capacity) {
            return Err(conflict(format!(
                "its capacity is {} bytes, outside the requested range",
                existing.capacity_bytes
            ))
            .into());
        }
        meta.root.create_all(subdir, existing.mount_permissions)?;
        meta.names
            .write_atomic(&name_file, subdir.as_str().as_bytes())?;
        return Ok(existing);
    }
    meta.root.create_all(subdir, want.mount_permissions)?;
    meta.save(&want, subdir)?;
    meta.names
        .write_atomic(&name_file, subdir.as_str().as_bytes())?;
    Ok(want)
}

/// DeleteVolume's work on the export. Blocking. Returns what was done.
fn delete_on_export(root: &Path, subdir: &RelPath) -> Result<&'static str> {
    let Some(meta) = Meta::open(root, false)? else {
        return Ok("unknown volume: nothing to do");
    };
    let Some(rec) = meta.record(subdir)? else {
        return Ok("unknown volume: nothing to do");
    };
    let (parent, leaf) = subdir.split_last();
    let parent_dir = match &parent {
        None => Some(DirFd::open_root(meta.root.path())?),
        Some(p) => meta.root.walk(p)?,
    };
    let done = match (rec.on_delete, parent_dir) {
        (_, None) => "directory already gone",
        (OnDelete::Retain, _) => "directory retained",
        (OnDelete::Delete, Some(dir)) => {
            dir.remove_tree(OsStr::new(leaf))?;
            "directory deleted"
        }
        (OnDelete::Archive, Some(dir)) => {
            if dir.entry_exists(OsStr::new(leaf))? {
                archive(&dir, leaf)?;
                "directory archived"
            } else {
                "directory already gone"
            }
        }
    };
    let name_file = name_file(&rec.name);
    if meta.names.read_small(&name_file)?.as_deref() == Some(subdir.as_str().as_bytes()) {
        meta.names.remove_file(&name_file)?;
    }
    meta.volumes.remove_file(&record_file(subdir))?;
    Ok(done)
}

/// Renames `leaf` to `archived-<leaf>` (or with a time and counter suffix
/// when taken); never replaces anything.
fn archive(dir: &DirFd, leaf: &str) -> Result<()> {
    let mut base: String = format!("archived-{leaf}");
    while base.len() > 220 {
        base.pop();
    }
    let stamp = now_unix();
    let mut last_err = None;
    for n in 0..100u32 {
        let candidate = match n {
            0 => base.clone(),
            1 => format!("{base}-{stamp}"),
            n => format!("{base}-{stamp}-{n}"),
        };
        if dir.entry_exists(OsStr::new(&candidate))? {
            continue;
        }
        match dir.rename_child(OsStr::new(leaf), OsStr::new(&candidate)) {
            Ok(()) => return Ok(()),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err
        .unwrap_or(safefs::Error::NotADirectory {
            path: dir.path().join(leaf),
        })
        .into())
}

impl ControllerService {
    async fn create(&self, req: csi::CreateVolumeRequest) -> Result<csi::CreateVolumeResponse> {
        if req.name.is_empty() {
            return Err(Error::Missing("name").into());
        }
        let flags = check_caps(&req.volume_capabilities)?;
        if req.volume_content_source.is_some() {
            return Err(Error::ContentSource.into());
        }
        let capacity = range(req.capacity_range.as_ref())?;
        let params = volume::create_params(
            &req.name,
            &req.parameters,
            &flags,
            self.exports.default_export(),
        )?;
        let id = VolumeId {
            export: params.export.clone(),
            subdir: params.subdir.clone(),
        };
        let _guard = self.inflight.acquire(&[
            format!("name:{}", req.name),
            format!("dir:{}/{}", id.export.key(), id.subdir.as_str()),
        ])?;
        let (root, _) = self.exports.ready(&id.export).await?;
        self.exports.remember(&id.export).await?;
        let want = VolumeRecord {
            name: req.name.clone(),
            subdir: id.subdir.as_str().to_string(),
            capacity_bytes: if capacity.0 > 0 {
                capacity.0
            } else {
                capacity.1
            },
            on_delete: params.on_delete,
            mount_permissions: params.mount_permissions,
            parameters: req.parameters.into_iter().collect::<BTreeMap<_, _>>(),
            created_unix: now_unix(),
        };
        let subdir = id.subdir.clone();
        let rec = offload::run(
            "create volume directory",
            self.exports.timeouts().fs,
            move || create_on_export(&root, want, &subdir, capacity),
        )
        .await??;
        tracing::info!(volume_id = %id, capacity = rec.capacity_bytes, "volume ready");
        Ok(csi::CreateVolumeResponse {
            volume: Some(to_volume(&id, rec.capacity_bytes)),
        })
    }

    async fn delete(&self, req: csi::DeleteVolumeRequest) -> Result<csi::DeleteVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        let id = match VolumeId::parse(&req.volume_id) {
            Ok(id) => id,
            Err(e) => {
                // Not an id this driver could have issued: nothing exists to delete.
                tracing::info!(error = %e, "delete of a foreign id: nothing to do");
                return Ok(csi::DeleteVolumeResponse {});
            }
        };
        let _guard =
            self.inflight
                .acquire(&[format!("dir:{}/{}", id.export.key(), id.subdir.as_str())])?;
        let (root, _) = self.exports.ready(&id.export).await?;
        let subdir = id.subdir.clone();
        let done = offload::run(
            "delete volume directory",
            self.exports.timeouts().fs,
            move || delete_on_export(&root, &subdir),
        )
        .await??;
        tracing::info!(volume_id = %id, "{done}");
        Ok(csi::DeleteVolumeResponse {})
    }

    /// The record of an existing volume, or NOT_FOUND.
    async fn existing(&self, volume_id: &str) -> Result<(VolumeId, VolumeRecord, VolumeCondition)> {
        if volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
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
                Ok::<_, crate::error::Error>(
                    meta.record(&subdir)?.map(|r| (r, meta.condition(&subdir))),
                )
            },
        )
        .await??;
        match found {
            Some((rec, cond)) => Ok((id, rec, cond)),
            None => Err(Error::NotFound(volume_id.to_string()).into()),
        }
    }

    async fn validate(
        &self,
        req: csi::ValidateVolumeCapabilitiesRequest,
    ) -> Result<csi::ValidateVolumeCapabilitiesResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        if req.volume_capabilities.is_empty() {
            return Err(Error::Missing("volume_capabilities").into());
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
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self, req: csi::ListVolumesRequest) -> Result<csi::ListVolumesResponse> {
        if req.max_entries < 0 {
            return Err(Error::NegativeMaxEntries.into());
        }
        let max = if req.max_entries == 0 {
            usize::MAX
        } else {
            req.max_entries as usize
        };
        let exports = self.exports.known();
        // Token: "<export digest>/<record file>" of the last entry returned.
        let (start_export, after) = if req.starting_token.is_empty() {
            (0, None)
        } else {
            let bad = || Error::BadToken(req.starting_token.clone());
            let (digest, file) = req.starting_token.split_once('/').ok_or_else(bad)?;
            let idx = exports
                .iter()
                .position(|e| token_digest(e) == digest)
                .ok_or_else(bad)?;
            if !file.ends_with(".json") || file.contains('/') {
                return Err(bad().into());
            }
            (idx, Some(file.to_string()))
        };
        let mut entries = Vec::new();
        let mut next_token = String::new();
        for (i, export) in exports.iter().enumerate().skip(start_export) {
            let after = if i == start_export {
                after.clone()
            } else {
                None
            };
            let root = match self.exports.ready(export).await {
                Ok((root, _)) => root,
                Err(e) => {
                    tracing::warn!(export = %export.key(), error = %e, "export skipped in ListVolumes");
                    continue;
                }
            };
            let want = max - entries.len();
            let spec = export.clone();
            let (page, more) =
                offload::run("list volumes", self.exports.timeouts().fs, move || {
                    list_export(&root, &spec, after.as_deref(), want)
                })
                .await??;
            entries.extend(page);
            if let Some(last) = more {
                next_token = format!("{}/{last}", token_digest(export));
                break;
            }
        }
        Ok(csi::ListVolumesResponse {
            entries,
            next_token,
        })
    }

    async fn capacity(&self, req: csi::GetCapacityRequest) -> Result<csi::GetCapacityResponse> {
        let mut flags = Vec::new();
        for cap in &req.volume_capabilities {
            match &cap.access_type {
                Some(volume_capability::AccessType::Block(_)) => {
                    return Ok(csi::GetCapacityResponse::default());
                }
                Some(volume_capability::AccessType::Mount(m)) => {
                    flags.extend(m.mount_flags.clone())
                }
                None => return Err(Error::NoAccessType.into()),
            }
        }
        volume::check_known(&req.parameters)?;
        let export =
            volume::export_from_params(&req.parameters, &flags, self.exports.default_export())?;
        let (_, stats) = self.exports.ready(&export).await?;
        Ok(csi::GetCapacityResponse {
            available_capacity: i64::try_from(stats.available_bytes).unwrap_or(i64::MAX),
            maximum_volume_size: None,
            minimum_volume_size: None,
        })
    }

    async fn expand(
        &self,
        req: csi::ControllerExpandVolumeRequest,
    ) -> Result<csi::ControllerExpandVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        if req.capacity_range.is_none() {
            return Err(Error::Missing("capacity_range").into());
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
            if want > rec.capacity_bytes {
                rec.capacity_bytes = want;
                meta.save(&rec, &subdir)?;
            }
            Ok::<_, crate::error::Error>(rec.capacity_bytes)
        })
        .await??;
        Ok(csi::ControllerExpandVolumeResponse {
            capacity_bytes: new,
            node_expansion_required: false,
        })
    }

    async fn get(
        &self,
        req: csi::ControllerGetVolumeRequest,
    ) -> Result<csi::ControllerGetVolumeResponse> {
        if req.volume_id.is_empty() {
            return Err(Error::Missing("volume_id").into());
        }
        let id = VolumeId::parse(&req.volume_id)?;
        let (volume, condition) = match self.existing(&req.volume_id).await {
            Ok((id, rec, cond)) => (to_volume(&id, rec.capacity_bytes), cond),
            Err(crate::error::Error::Export(e)) => (
                to_volume(&id, 0),
                VolumeCondition {
                    abnormal: true,
                    message: e.to_string(),
                },
            ),
            Err(crate::error::Error::Offload(e)) => (
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

fn token_digest(export: &ExportSpec) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(export.key().as_bytes())[..8])
}

/// One export's page of ListVolumes: entries after `after`, at most `max`;
/// the record file of the last entry when more remain. Blocking.
fn list_export(
    root: &Path,
    export: &ExportSpec,
    after: Option<&str>,
    max: usize,
) -> Result<(Vec<csi::list_volumes_response::Entry>, Option<String>)> {
    let Some(meta) = Meta::open(root, false)? else {
        return Ok((vec![], None));
    };
    let files: Vec<String> = meta
        .volumes
        .list()?
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
        .filter(|n| after.is_none_or(|a| n.as_str() > a))
        .collect();
    let mut entries = Vec::new();
    for (i, file) in files.iter().enumerate() {
        if entries.len() == max {
            return Ok((entries, files.get(i - 1).cloned()));
        }
        let Some(bytes) = meta.volumes.read_small(file)? else {
            continue;
        };
        let rec: VolumeRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(record = %file, error = %e, "unreadable volume record skipped");
                continue;
            }
        };
        let Ok(subdir) = RelPath::parse(&rec.subdir) else {
            continue;
        };
        let id = VolumeId {
            export: export.clone(),
            subdir,
        };
        let condition = meta.condition(&id.subdir);
        entries.push(csi::list_volumes_response::Entry {
            volume: Some(to_volume(&id, rec.capacity_bytes)),
            status: Some(csi::list_volumes_response::VolumeStatus {
                published_node_ids: vec![],
                volume_condition: Some(condition),
            }),
        });
    }
    Ok((entries, None))
}

fn capability(t: controller_service_capability::rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(controller_service_capability::Type::Rpc(
            controller_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    #[instrument(skip_all, fields(name = %request.get_ref().name))]
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> std::result::Result<Response<csi::CreateVolumeResponse>, Status> {
        reply(self.create(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> std::result::Result<Response<csi::DeleteVolumeResponse>, Status> {
        reply(self.delete(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> std::result::Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        reply(self.validate(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(token = %request.get_ref().starting_token))]
    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> std::result::Result<Response<csi::ListVolumesResponse>, Status> {
        reply(self.list(request.into_inner()).await)
    }

    #[instrument(skip_all)]
    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> std::result::Result<Response<csi::GetCapacityResponse>, Status> {
        reply(self.capacity(request.into_inner()).await)
    }

    #[instrument(skip_all)]
    async fn controller_get_capabilities(
        &self,
        _request: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use controller_service_capability::rpc::Type;
        let capabilities = [
            Type::CreateDeleteVolume,
            Type::ListVolumes,
            Type::GetCapacity,
            Type::ExpandVolume,
            Type::GetVolume,
            Type::VolumeCondition,
            Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(capability)
        .collect();
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    #[instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> std::result::Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        reply(self.expand(request.into_inner()).await)
    }

    #[instrument(skip_all, fields(volume_id = %request.get_ref().volume_id))]
    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> std::result::Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        reply(self.get(request.into_inner()).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, subdir: &str, on_delete: OnDelete) -> VolumeRecord {
        VolumeRecord {
            name: name.into(),
            subdir: subdir.into(),
            capacity_bytes: 1 << 20,
            on_delete,
            mount_permissions: None,
            parameters: BTreeMap::new(),
            created_unix: 1,
        }
    }

    #[test]
    fn create_is_idempotent_and_detects_conflicts() {
        let t = tempfile::tempdir().unwrap();
        let sub = RelPath::parse("ns/a").unwrap();
        let r = create_on_export(
            t.path(),
            rec("v1", "ns/a", OnDelete::Delete),
            &sub,
            (1 << 20, 0),
        )
        .unwrap();
        assert!(t.path().join("ns/a").is_dir());
        let again = create_on_export(
            t.path(),
            rec("v1", "ns/a", OnDelete::Delete),
            &sub,
            (1 << 20, 0),
        )
        .unwrap();
        assert_eq!(r, again);
        // bigger than the existing capacity: conflict
        let err = create_on_export(
            t.path(),
            rec("v1", "ns/a", OnDelete::Delete),
            &sub,
            (2 << 20, 0),
        )
        .unwrap_err();
        assert!(err.to_string().contains("capacity"), "{err}");
        // same directory, other name: conflict
        let err = create_on_export(t.path(), rec("v2", "ns/a", OnDelete::Delete), &sub, (0, 0))
            .unwrap_err();
        assert!(
            err.to_string().contains("belongs to volume \"v1\""),
            "{err}"
        );
        // same name, other directory: conflict
        let other = RelPath::parse("ns/b").unwrap();
        let err = create_on_export(
            t.path(),
            rec("v1", "ns/b", OnDelete::Delete),
            &other,
            (0, 0),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"ns/a\""), "{err}");
    }

    #[test]
    fn delete_keeps_parents_and_archive_never_overwrites() {
        let t = tempfile::tempdir().unwrap();
        let a = RelPath::parse("ns/a").unwrap();
        create_on_export(t.path(), rec("va", "ns/a", OnDelete::Archive), &a, (0, 0)).unwrap();
        std::fs::write(t.path().join("ns/a/data"), b"1").unwrap();
        std::fs::create_dir_all(t.path().join("ns/archived-a")).unwrap();
        std::fs::write(t.path().join("ns/archived-a/older"), b"0").unwrap();
        assert_eq!(
            delete_on_export(t.path(), &a).unwrap(),
            "directory archived"
        );
        assert!(t.path().join("ns/archived-a/older").exists());
        let archived: Vec<_> = std::fs::read_dir(t.path().join("ns"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("archived-a-"))
            .collect();
        assert_eq!(archived.len(), 1, "{archived:?}");
        assert!(t.path().join("ns").join(&archived[0]).join("data").exists());
        // record gone: a second delete does nothing
        assert_eq!(
            delete_on_export(t.path(), &a).unwrap(),
            "unknown volume: nothing to do"
        );
        let b = RelPath::parse("ns/b").unwrap();
        create_on_export(t.path(), rec("vb", "ns/b", OnDelete::Delete), &b, (0, 0)).unwrap();
        assert_eq!(delete_on_export(t.path(), &b).unwrap(), "directory deleted");
        assert!(!t.path().join("ns/b").exists());
        assert!(t.path().join("ns").is_dir(), "parent must stay");
    }

    #[test]
    fn name_files_are_safe() {
        assert_eq!(name_file("pvc-1"), "pvc-1");
        assert_eq!(name_file("../x"), format!("x-{}", hex::encode("../x")));
        assert_eq!(
            name_file(".hidden"),
            format!("x-{}", hex::encode(".hidden"))
        );
    }
}
