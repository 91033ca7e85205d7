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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::config::Config;
use crate::csi::v1::{
    self as csi, ControllerServiceCapability, VolumeCapability, VolumeCondition,
    controller_server::Controller, controller_service_capability, volume_capability,
};
use crate::error::respond;
use crate::export::{ExportSpec, Exports};
use crate::inflight::InFlight;
use crate::jobs::Jobs;
use crate::offload;
use crate::safefs::{self, DirFd};
use crate::snapshot::{self, SnapshotId, State, Store};
use crate::tree;
use crate::volume::{self, OnDelete, RESERVED_DIR, RelPath, VolumeId, VolumeRecord, quote};

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
    #[error("volume content source has no snapshot or volume")]
    ContentSource,
    #[error("snapshot {} does not exist", quote(.0))]
    SnapshotNotFound(String),
    #[error(
        "snapshot {} is not ready yet; retry when the VolumeSnapshot is readyToUse",
        quote(.0)
    )]
    SnapshotNotReady(String),
    #[error(
        "requested capacity {required} bytes is smaller than the source's {source_bytes} bytes"
    )]
    TooSmall { required: i64, source_bytes: i64 },
    #[error(
        "snapshot {} already exists with source volume {}",
        quote(name),
        quote(existing)
    )]
    SnapshotExists { name: String, existing: String },
    #[error("{0}")]
    JobFailed(String),
    /// A restore or clone failed; `code` is its error's (see `error::code`).
    #[error("{message}")]
    Populate { message: String, code: tonic::Code },
    #[error("limit_bytes {limit} is below the volume's capacity {current}; volumes do not shrink")]
    CannotShrink { limit: i64, current: i64 },
    #[error(
        "volume {} is still being filled from its own source; retry when it is ready",
        quote(.0)
    )]
    SourceNotReady(String),
    #[error("directory {} cannot be this volume's: {reason}", quote(subdir))]
    DirInUse { subdir: String, reason: String },
    #[error("volume {} does not exist", quote(.0))]
    NotFound(String),
    #[error("volume {} already exists and differs: {reason}", quote(name))]
    AlreadyExists { name: String, reason: String },
    #[error(
        "starting_token {} is not one this driver issued (or its export is gone); restart the listing",
        quote(.0)
    )]
    BadToken(String),
    #[error("max_entries must not be negative")]
    NegativeMaxEntries,
    #[error("parameter {name:?}: {reason}")]
    SnapshotParameter { name: String, reason: String },
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
    jobs: Jobs,
    config: Arc<Config>,
    /// One per export location: held while CreateVolume checks that the new
    /// directory neither contains nor lies inside another volume's and
    /// records it, so two overlapping creates cannot both pass the check.
    create_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ControllerService {
    pub fn new(exports: Arc<Exports>, config: Arc<Config>) -> Self {
        ControllerService {
            exports,
            inflight: InFlight::default(),
            jobs: Jobs::default(),
            config,
            create_locks: Default::default(),
        }
    }

    fn create_lock(&self, export: &ExportSpec) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.create_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(export.location()).or_default().clone()
    }
}

type Result<T> = std::result::Result<T, crate::error::Error>;

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

fn is_record_file(name: &str) -> bool {
    name.ends_with(".json") && !name.starts_with('.')
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

/// Directory of `.nfs-csi/` indexing nested volumes:
/// `nested/<digest of a directory>/<record file of a volume below it>`.
const NESTED_DIR: &str = "nested";
/// In `nested/`: the index covers every record (it was built from them once,
/// for records written before the index existed).
const NESTED_COMPLETE: &str = ".complete-v1";

/// The driver's metadata directories on an export.
struct Meta {
    root: DirFd,
    meta: DirFd,
    volumes: DirFd,
    names: DirFd,
}

impl Meta {
    fn open(root: &Path, create: bool) -> Result<Option<Meta>> {
        let root = DirFd::open_root(root)?;
        let Some(meta) = root.subdir(RESERVED_DIR, create)? else {
            return Ok(None);
        };
        let (Some(volumes), Some(names)) = (
            meta.subdir("volumes", create)?,
            meta.subdir("names", create)?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Meta {
            root,
            meta,
            volumes,
            names,
        }))
    }

    /// The nested-volume index, created (from every record) on first use.
    fn nested(&self) -> Result<DirFd> {
        let nested = self
            .meta
            .subdir(NESTED_DIR, true)?
            .ok_or(Error::Missing("nested volume index"))?;
        if !nested.entry_exists(OsStr::new(NESTED_COMPLETE))? {
            let files = self.volumes.list()?;
            tracing::info!(records = files.len(), "building the nested volume index");
            for file in files {
                let Some(file) = file.to_str().filter(|f| is_record_file(f)) else {
                    continue;
                };
                let rec = match self.read_record_file(file) {
                    Ok(Some(rec)) => rec,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(record = file, error = %e, "unreadable volume record skipped");
                        continue;
                    }
                };
                if let Ok(subdir) = RelPath::parse(&rec.subdir) {
                    self.add_nested(&nested, &subdir)?;
                }
            }
            nested.write_atomic(NESTED_COMPLETE, b"")?;
        }
        Ok(nested)
    }

    /// Notes `subdir` below each of its ancestors in the index.
    fn add_nested(&self, nested: &DirFd, subdir: &RelPath) -> Result<()> {
        let mut ancestor = subdir.split_last().0;
        while let Some(a) = ancestor {
            let (dir, _) = nested.child_or_create(OsStr::new(&a.digest()), 0o700)?;
            dir.write_atomic(&record_file(subdir), subdir.as_str().as_bytes())?;
            ancestor = a.split_last().0;
        }
        Ok(())
    }

    /// Drops `subdir` from the index (when there is one).
    fn remove_nested(&self, subdir: &RelPath) -> Result<()> {
        let Some(nested) = self.meta.subdir(NESTED_DIR, false)? else {
            return Ok(());
        };
        let mut ancestor = subdir.split_last().0;
        while let Some(a) = ancestor {
            if let Some(dir) = nested.child(OsStr::new(&a.digest()))? {
                dir.remove_file(&record_file(subdir))?;
            }
            ancestor = a.split_last().0;
        }
        Ok(())
    }

    /// A volume whose directory is strictly below `subdir`, if any (the
    /// index may hold stale entries: only a live record counts).
    fn volume_below(&self, nested: &DirFd, subdir: &RelPath) -> Result<Option<VolumeRecord>> {
        let Some(dir) = nested.child(OsStr::new(&subdir.digest()))? else {
            return Ok(None);
        };
        let prefix = format!("{}/", subdir.as_str());
        for file in dir.list()? {
            let Some(file) = file.to_str().filter(|f| is_record_file(f)) else {
                continue;
            };
            if let Some(rec) = self.read_record_file(file)?
                && rec.subdir.starts_with(&prefix)
            {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }

    /// The volume whose directory contains `subdir`, if any.
    fn volume_above(&self, subdir: &RelPath) -> Result<Option<VolumeRecord>> {
        let mut ancestor = subdir.split_last().0;
        while let Some(a) = ancestor {
            if let Some(outer) = self.record(&a)? {
                return Ok(Some(outer));
            }
            ancestor = a.split_last().0;
        }
        Ok(None)
    }

    fn read_record_file(&self, file: &str) -> Result<Option<VolumeRecord>> {
        match self.volumes.read_small(file)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| {
                Error::CorruptRecord {
                    path: self.volumes.path().join(file),
                    source,
                }
                .into()
            }),
        }
    }

    fn record(&self, subdir: &RelPath) -> Result<Option<VolumeRecord>> {
        self.read_record_file(&record_file(subdir))
    }

    fn save(&self, rec: &VolumeRecord, subdir: &RelPath) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(rec).map_err(|source| Error::CorruptRecord {
            path: self.volumes.path().join(record_file(subdir)),
            source,
        })?;
        self.volumes.write_atomic(&record_file(subdir), &bytes)?;
        Ok(())
    }

    /// The directory holding `subdir` (None when it is gone) and its name
    /// there.
    fn parent_of<'s>(&self, subdir: &'s RelPath) -> Result<(Option<DirFd>, &'s str)> {
        let (parent, leaf) = subdir.split_last();
        let dir = match &parent {
            None => Some(self.root.try_clone()?),
            Some(p) => self.root.walk(p)?,
        };
        Ok((dir, leaf))
    }

    /// Removes a volume's record and its name entry (if the name still
    /// points at it), record last so an interrupted removal is redone.
    fn forget(&self, subdir: &RelPath, rec: Option<&VolumeRecord>) -> Result<()> {
        if let Some(rec) = rec {
            let name_file = name_file(&rec.name);
            if self.names.read_small(&name_file)?.as_deref() == Some(subdir.as_str().as_bytes()) {
                self.names.remove_file(&name_file)?;
            }
        }
        self.volumes.remove_file(&record_file(subdir))?;
        self.remove_nested(subdir)
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
        if existing.content_source != want.content_source {
            return Err(conflict(format!(
                "it was created from {:?}, this request gives {:?}",
                existing.content_source, want.content_source
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
    // A directory inside another volume's would be deleted with it; one
    // containing another volume's would expose that volume's data (and take
    // it along when deleted or archived).
    if let Some(outer) = meta.volume_above(subdir)? {
        return Err(Error::DirInUse {
            subdir: subdir.as_str().to_string(),
            reason: format!(
                "it is inside volume {}'s directory {}",
                quote(&outer.name),
                quote(&outer.subdir)
            ),
        }
        .into());
    }
    let nested = meta.nested()?;
    if let Some(inner) = meta.volume_below(&nested, subdir)? {
        return Err(Error::DirInUse {
            subdir: subdir.as_str().to_string(),
            reason: format!(
                "it contains volume {}'s directory {}",
                quote(&inner.name),
                quote(&inner.subdir)
            ),
        }
        .into());
    }
    // Noted before the record, so a crash leaves a stale entry at worst.
    meta.add_nested(&nested, subdir)?;
    let mut want = want;
    let (dir, created) = meta.root.create_all(subdir, want.mount_permissions)?;
    // A directory that was already there (retained data, data put there by
    // hand) is adopted: it is never deleted or emptied by the driver.
    want.adopted = !created;
    if want.adopted && want.content_source.is_some() && !dir.list()?.is_empty() {
        return Err(Error::DirInUse {
            subdir: subdir.as_str().to_string(),
            reason: "it already holds data, and restoring or cloning into it would replace it; \
                     use another subDir"
                .into(),
        }
        .into());
    }
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
    let (parent_dir, leaf) = meta.parent_of(subdir)?;
    let inner = match (rec.on_delete, &parent_dir) {
        (OnDelete::Retain, _) | (_, None) => None,
        (OnDelete::Delete, _) if rec.adopted => None,
        _ => meta.volume_below(&meta.nested()?, subdir)?,
    };
    let done = match (rec.on_delete, parent_dir) {
        (_, None) => "directory already gone",
        (OnDelete::Retain, _) => "directory retained",
        (OnDelete::Delete, _) if rec.adopted => {
            "directory retained: it existed before the volume, so it is not the driver's to delete"
        }
        _ if inner.is_some() => {
            // Only records from before the overlap check can get here.
            let inner = inner.as_ref().map(|r| (quote(&r.name), quote(&r.subdir)));
            tracing::warn!(
                subdir = %quote(subdir.as_str()),
                inner = ?inner,
                "directory retained, not deleted or archived: it holds another volume's directory"
            );
            "directory retained: it contains another volume's directory"
        }
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
    meta.forget(subdir, Some(&rec))?;
    Ok(done)
}

/// Removes a volume whatever its delete policy (one that never became
/// usable). Blocking.
fn discard_on_export(root: &Path, subdir: &RelPath) -> Result<()> {
    let Some(meta) = Meta::open(root, false)? else {
        return Ok(());
    };
    let (parent_dir, leaf) = meta.parent_of(subdir)?;
    let rec = meta.record(subdir)?;
    let holds_other = match &parent_dir {
        Some(_) => meta.volume_below(&meta.nested()?, subdir)?.is_some(),
        None => false,
    };
    if let Some(dir) = parent_dir.filter(|_| !holds_other) {
        if rec.as_ref().is_some_and(|r| r.adopted) {
            // It existed (empty) before: take back only what was put in.
            if let Some(d) = dir.child(OsStr::new(leaf))? {
                snapshot::empty_dir(&d)?;
            }
        } else {
            dir.remove_tree(OsStr::new(leaf))?;
        }
    }
    meta.forget(subdir, rec.as_ref())
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

/// Where a new volume's content comes from.
enum From {
    Snapshot { store_root: PathBuf, key: String },
    Volume { root: PathBuf, subdir: RelPath },
}

struct Populate {
    /// The snapshot or volume id, as requested.
    id: String,
    from: From,
    /// Its size: the snapshot's restore size or the volume's capacity.
    bytes: i64,
}

/// Fills the (emptied) directory `subdir` of `root` from `from`, then marks
/// its record populated. Blocking.
fn populate_blocking(
    root: &Path,
    subdir: &RelPath,
    from: &From,
    policy: tree::Policy,
    capacity: i64,
    threads: usize,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    let missing = || Error::NotFound(subdir.as_str().to_string());
    let dest = DirFd::open_root(root)?.walk(subdir)?.ok_or_else(missing)?;
    // A previous attempt may have been cut short: start from empty.
    snapshot::empty_dir(&dest)?;
    let (files, bytes) = match from {
        From::Snapshot { store_root, key } => {
            let store = Store::open(store_root, key, false)?
                .ok_or_else(|| Error::SnapshotNotFound(key.clone()))?;
            let manifest = store
                .manifest()?
                .ok_or_else(|| Error::SnapshotNotReady(key.clone()))?;
            let opts = snapshot::RestoreOptions {
                policy,
                capacity: capacity.max(0) as u64,
            };
            snapshot::restore(&store, &manifest, dest, opts, cancel)?
        }
        From::Volume {
            root: src_root,
            subdir: src,
        } => {
            let src_dir = DirFd::open_root(src_root)?
                .walk(src)?
                .ok_or_else(|| Error::NotFound(src.as_str().to_string()))?;
            snapshot::clone_tree(&src_dir, tree::Dest::new(dest, policy), threads, cancel)?
        }
    };
    let meta = Meta::open(root, false)?.ok_or_else(missing)?;
    let mut rec = meta.record(subdir)?.ok_or_else(missing)?;
    rec.populated = true;
    meta.save(&rec, subdir)?;
    tracing::info!(subdir = subdir.as_str(), files, bytes, "volume populated");
    Ok(())
}

impl ControllerService {
    async fn create(&self, req: csi::CreateVolumeRequest) -> Result<csi::CreateVolumeResponse> {
        if req.name.is_empty() {
            return Err(Error::Missing("name").into());
        }
        let flags = check_caps(&req.volume_capabilities)?;
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
        let creating = create_lock.lock().await;
        let rec = offload::run(
            "create volume directory",
            self.exports.timeouts().fs,
            move || create_on_export(&dest_root, want, &subdir, capacity),
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

    /// Checks a CreateVolume content source: it exists, it is ready, and
    /// the requested capacity holds it.
    async fn content_source(
        &self,
        src: &csi::VolumeContentSource,
        dest: &VolumeId,
        required: i64,
    ) -> Result<Populate> {
        use csi::volume_content_source::Type;
        let fs = self.exports.timeouts().fs;
        let (id, from, bytes) = match &src.r#type {
            Some(Type::Snapshot(s)) => {
                let sid = SnapshotId::parse(&s.snapshot_id)
                    .map_err(|_| Error::SnapshotNotFound(s.snapshot_id.clone()))?;
                let (root, _) = self.exports.ready(&sid.export).await?;
                let key = sid.key.clone();
                let state = offload::run("read snapshot", fs, move || {
                    Ok::<_, crate::error::Error>(match Store::open(&root, &key, false)? {
                        None => (State::Absent, root),
                        Some(store) => (store.state()?, root),
                    })
                })
                .await??;
                match state {
                    (State::Ready(m), root) => (
                        s.snapshot_id.clone(),
                        From::Snapshot {
                            store_root: root,
                            key: sid.key,
                        },
                        i64::try_from(m.size_bytes).unwrap_or(i64::MAX),
                    ),
                    (State::Pending(_), _) => {
                        return Err(Error::SnapshotNotReady(s.snapshot_id.clone()).into());
                    }
                    (State::Absent, _) => {
                        return Err(Error::SnapshotNotFound(s.snapshot_id.clone()).into());
                    }
                }
            }
            Some(Type::Volume(v)) => {
                let (vid, rec, _) = self.existing(&v.volume_id).await?;
                if !rec.populated {
                    return Err(Error::SourceNotReady(v.volume_id.clone()).into());
                }
                if vid.export == dest.export
                    && (vid.subdir.as_str() == dest.subdir.as_str()
                        || dest
                            .subdir
                            .as_str()
                            .starts_with(&format!("{}/", vid.subdir.as_str()))
                        || vid
                            .subdir
                            .as_str()
                            .starts_with(&format!("{}/", dest.subdir.as_str())))
                {
                    return Err(Error::BadRange(format!(
                        "a clone's directory {:?} cannot contain or be inside its source {:?}",
                        dest.subdir.as_str(),
                        vid.subdir.as_str()
                    ))
                    .into());
                }
                let (root, _) = self.exports.ready(&vid.export).await?;
                (
                    v.volume_id.clone(),
                    From::Volume {
                        root,
                        subdir: vid.subdir,
                    },
                    rec.capacity_bytes,
                )
            }
            None => return Err(Error::ContentSource.into()),
        };
        if required > 0 && required < bytes {
            return Err(Error::TooSmall {
                required,
                source_bytes: bytes,
            }
            .into());
        }
        Ok(Populate { id, from, bytes })
    }

    /// Restores or copies the source into the new volume, as a job that
    /// survives a cancelled RPC; a retried CreateVolume joins it.
    async fn populate(
        &self,
        id: &VolumeId,
        root: PathBuf,
        source: Populate,
        capacity: i64,
    ) -> Result<()> {
        let key = format!("populate:{id}");
        let root_of = root.clone();
        let subdir = id.subdir.clone();
        let policy = tree::Policy {
            allow_devices: self.config.allow_device_nodes,
            system_xattrs: self.config.restore_system_xattrs,
        };
        let threads = self.config.snapshot_threads as usize;
        let job = self.jobs.start(&key, move |cancel| {
            let res = populate_blocking(
                &root,
                &subdir,
                &source.from,
                policy,
                capacity,
                threads,
                cancel,
            );
            let m = crate::metrics::get();
            match source.from {
                From::Snapshot { .. } => crate::metrics::outcome(&m.restores, &res),
                From::Volume { .. } => crate::metrics::outcome(&m.clones, &res),
            }
            res.map_err(|e| crate::jobs::Failure {
                code: crate::error::code(&e),
                message: crate::error::chain(&e),
            })
        });
        // Wait as long as the caller does; the job goes on if it gives up.
        match self
            .jobs
            .outcome(&key, &job, Duration::from_secs(24 * 3600))
            .await
        {
            Some(Ok(())) => Ok(()),
            Some(Err(msg)) => {
                // Leave nothing half-made: the CO got no volume id, so it
                // could never delete this one.
                let (root, subdir) = (root_of.clone(), id.subdir.clone());
                let cleanup =
                    offload::run("discard volume", self.exports.timeouts().fs, move || {
                        discard_on_export(&root, &subdir)
                    })
                    .await;
                if let Err(e) | Ok(Err(e)) = cleanup.map_err(crate::error::Error::from) {
                    tracing::error!(volume_id = %id, error = %e, "cannot discard the failed volume");
                }
                Err(Error::Populate {
                    message: format!("populating volume {id}: {}", msg.message),
                    code: msg.code,
                }
                .into())
            }
            None => {
                Err(Error::JobFailed(format!("populating volume {id} is still running")).into())
            }
        }
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
                .map_err(|e| crate::error::chain(&e))
        });
        let fs = self.exports.timeouts().fs;
        match self.jobs.outcome(&key, &job, fs).await {
            Some(Ok(())) => Ok(csi::DeleteVolumeResponse {}),
            Some(Err(msg)) => Err(Error::JobFailed(format!("deleting volume {id}: {msg}")).into()),
            None => Err(offload::Error::TimedOut {
                what: format!("deleting volume {id} (still going on; retry)"),
                secs: fs.as_secs(),
            }
            .into()),
        }
    }

    async fn create_snapshot(
        &self,
        req: csi::CreateSnapshotRequest,
    ) -> Result<csi::CreateSnapshotResponse> {
        if req.name.is_empty() {
            return Err(Error::Missing("name").into());
        }
        if req.source_volume_id.is_empty() {
            return Err(Error::Missing("source_volume_id").into());
        }
        let (storage, level) = snapshot_params(&req.parameters, self.config.snapshot_level)?;
        let src = VolumeId::parse(&req.source_volume_id)?;
        let sid = SnapshotId::new(storage.unwrap_or_else(|| src.export.clone()), &req.name);
        let key = sid.to_string();
        let _guard = self.inflight.acquire(&[format!("snap:{key}")])?;
        let (src_root, _) = self.exports.ready(&src.export).await?;
        let (store_root, _) = self.exports.ready(&sid.export).await?;
        self.exports.remember(&sid.export).await?;
        let fs = self.exports.timeouts().fs;
        let (name, source_id, skey, subdir) = (
            req.name.clone(),
            req.source_volume_id.clone(),
            sid.key.clone(),
            src.subdir.clone(),
        );
        let (sr, st) = (src_root.clone(), store_root.clone());
        let state = offload::run("start snapshot", fs, move || {
            let meta = Meta::open(&sr, false)?;
            let source = match &meta {
                Some(m) => m.record(&subdir)?,
                None => None,
            };
            match source {
                None => return Err(Error::NotFound(source_id.clone()).into()),
                Some(r) if !r.populated => {
                    return Err(Error::SourceNotReady(source_id.clone()).into());
                }
                Some(_) => {}
            }
            let store =
                Store::open(&st, &skey, true)?.ok_or(Error::Missing("snapshot directory"))?;
            let state = store.state()?;
            let other = match &state {
                State::Ready(m) => Some(&m.source_volume_id),
                State::Pending(j) => Some(&j.source_volume_id),
                State::Absent => None,
            };
            if let Some(existing) = other
                && *existing != source_id
            {
                return Err(Error::SnapshotExists {
                    name,
                    existing: existing.clone(),
                }
                .into());
            }
            if let State::Absent = state {
                let job = snapshot::Job::new(&name, &source_id, level);
                store.start(&job)?;
                return Ok::<_, crate::error::Error>(State::Pending(job));
            }
            Ok(state)
        })
        .await??;
        let job_meta = match state {
            State::Ready(m) => {
                return Ok(csi::CreateSnapshotResponse {
                    snapshot: Some(snapshot_ready(&sid, &m)),
                });
            }
            State::Pending(j) => j,
            State::Absent => return Err(Error::Missing("snapshot job").into()),
        };
        let threads = self.config.snapshot_threads;
        let (sr, st, skey, subdir, jm) = (
            src_root,
            store_root.clone(),
            sid.key.clone(),
            src.subdir.clone(),
            job_meta.clone(),
        );
        let job = self.jobs.start(&key, move |cancel| {
            let run = || -> Result<snapshot::Manifest> {
                let src_dir = DirFd::open_root(&sr)?
                    .walk(&subdir)?
                    .ok_or_else(|| Error::NotFound(jm.source_volume_id.clone()))?;
                let store =
                    Store::open(&st, &skey, false)?.ok_or(Error::Missing("snapshot directory"))?;
                Ok(snapshot::create_archive(
                    &src_dir,
                    &store,
                    &jm,
                    snapshot::ArchiveOptions {
                        level: jm.level,
                        threads,
                    },
                    cancel,
                )?)
            };
            let start = std::time::Instant::now();
            match run() {
                Ok(m) => {
                    let secs = start.elapsed().as_secs_f64();
                    let metrics = crate::metrics::get();
                    metrics.snapshot_bytes.inc_by(m.size_bytes);
                    metrics.snapshot_archive_bytes.inc_by(m.archive_bytes);
                    metrics.snapshot_seconds.observe(secs);
                    metrics
                        .snapshot_throughput
                        .set(m.size_bytes as f64 / secs.max(1e-6));
                    tracing::info!(
                        snapshot = %m.name,
                        bytes = m.size_bytes,
                        archive_bytes = m.archive_bytes,
                        files = m.file_count,
                        seconds = secs,
                        "snapshot ready"
                    );
                    Ok(())
                }
                Err(e) => Err(crate::error::chain(&e)),
            }
        });
        // Small volumes finish at once; larger ones report ready_to_use
        // false and the sidecar calls again.
        match self.jobs.outcome(&key, &job, Duration::from_secs(2)).await {
            Some(Ok(())) => {
                let skey = sid.key.clone();
                let m = offload::run("read manifest", fs, move || {
                    Ok::<_, crate::error::Error>(
                        Store::open(&store_root, &skey, false)?
                            .and_then(|s| s.manifest().transpose()),
                    )
                })
                .await??
                .transpose()?
                .ok_or(Error::Missing("snapshot manifest"))?;
                Ok(csi::CreateSnapshotResponse {
                    snapshot: Some(snapshot_ready(&sid, &m)),
                })
            }
            Some(Err(msg)) => Err(Error::JobFailed(format!("snapshot {}: {msg}", req.name)).into()),
            None => Ok(csi::CreateSnapshotResponse {
                snapshot: Some(snapshot_pending(&sid, &job_meta)),
            }),
        }
    }

    async fn delete_snapshot(
        &self,
        req: csi::DeleteSnapshotRequest,
    ) -> Result<csi::DeleteSnapshotResponse> {
        if req.snapshot_id.is_empty() {
            return Err(Error::Missing("snapshot_id").into());
        }
        let Ok(sid) = SnapshotId::parse(&req.snapshot_id) else {
            return Ok(csi::DeleteSnapshotResponse {});
        };
        let key = sid.to_string();
        let _guard = self.inflight.acquire(&[format!("snap:{key}")])?;
        if let Some(job) = self.jobs.get(&key) {
            job.cancel();
            let _ = job.wait(Duration::from_secs(30)).await;
            self.jobs.remove(&key);
        }
        let (root, _) = self.exports.ready(&sid.export).await?;
        let skey = sid.key.clone();
        offload::run("delete snapshot", self.exports.timeouts().fs, move || {
            if let Some(dir) = Store::snapshots_dir(&root, false)? {
                dir.remove_tree(OsStr::new(&skey))?;
            }
            Ok::<_, crate::error::Error>(())
        })
        .await??;
        tracing::info!(snapshot_id = %key, "snapshot deleted");
        Ok(csi::DeleteSnapshotResponse {})
    }

    async fn list_snapshots(
        &self,
        req: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse> {
        if req.max_entries < 0 {
            return Err(Error::NegativeMaxEntries.into());
        }
        let max = if req.max_entries == 0 {
            usize::MAX
        } else {
            req.max_entries as usize
        };
        let fs = self.exports.timeouts().fs;
        if !req.snapshot_id.is_empty() {
            let Ok(sid) = SnapshotId::parse(&req.snapshot_id) else {
                return Ok(csi::ListSnapshotsResponse::default());
            };
            let (root, _) = self.exports.ready(&sid.export).await?;
            let s = sid.clone();
            let found = offload::run("read snapshot", fs, move || {
                Ok::<_, crate::error::Error>(match Store::open(&root, &s.key, false)? {
                    None => None,
                    Some(store) => match store.state()? {
                        State::Ready(m) => Some(snapshot_ready(&s, &m)),
                        State::Pending(_) | State::Absent => None,
                    },
                })
            })
            .await??;
            let entries = found
                .into_iter()
                .filter(|s| {
                    req.source_volume_id.is_empty() || s.source_volume_id == req.source_volume_id
                })
                .map(|s| csi::list_snapshots_response::Entry { snapshot: Some(s) })
                .collect();
            return Ok(csi::ListSnapshotsResponse {
                entries,
                next_token: String::new(),
            });
        }
        let exports = self.exports.known();
        let (start, after) = resume_point(&exports, &req.starting_token, |key| !key.is_empty())?;
        let mut entries = Vec::new();
        let mut next_token = String::new();
        for (i, export) in exports.iter().enumerate().skip(start) {
            let after = if i == start { after.clone() } else { None };
            let Some(root) = self.listable_root(export, "ListSnapshots").await? else {
                continue;
            };
            let (spec, source, want) = (
                export.clone(),
                req.source_volume_id.clone(),
                max - entries.len(),
            );
            let (page, more) = offload::run("list snapshots", fs, move || {
                list_snapshots_on(&root, &spec, &source, after.as_deref(), want)
            })
            .await??;
            entries.extend(
                page.into_iter()
                    .map(|s| csi::list_snapshots_response::Entry { snapshot: Some(s) }),
            );
            if let Some(last) = more {
                next_token = format!("{}/{last}", token_digest(export));
                break;
            }
            if entries.len() == max && i + 1 < exports.len() {
                // Full page at the end of this export: resume after its last entry.
                if let Some(id) = entries
                    .last()
                    .and_then(|e| e.snapshot.as_ref())
                    .and_then(|s| SnapshotId::parse(&s.snapshot_id).ok())
                {
                    next_token = format!("{}/{}", token_digest(export), id.key);
                }
                break;
            }
        }
        Ok(csi::ListSnapshotsResponse {
            entries,
            next_token,
        })
    }

    /// An export's root for a listing: an error for one that does not
    /// answer (it may come back, and the listing would silently miss its
    /// entries, so the caller retries); None, with a warning, for one that
    /// refuses or is gone (decommissioned), so it does not block the others.
    async fn listable_root(&self, export: &ExportSpec, rpc: &str) -> Result<Option<PathBuf>> {
        match self.exports.ready(export).await {
            Ok((root, _)) => Ok(Some(root)),
            Err(e @ crate::export::Error::NotResponding { .. }) => Err(e.into()),
            Err(e) => {
                tracing::warn!(export = %export.key(), error = %e, "export skipped in {rpc}");
                Ok(None)
            }
        }
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
        let (start_export, after) = resume_point(&exports, &req.starting_token, |file| {
            file.ends_with(".json")
        })?;
        let mut entries = Vec::new();
        let mut next_token = String::new();
        for (i, export) in exports.iter().enumerate().skip(start_export) {
            let after = if i == start_export {
                after.clone()
            } else {
                None
            };
            let Some(root) = self.listable_root(export, "ListVolumes").await? else {
                continue;
            };
            let want = max - entries.len();
            let spec = export.clone();
            let (page, more) =
                offload::run("list volumes", self.exports.timeouts().fs, move || {
                    list_export(&root, &spec, after.as_deref(), want)
                })
                .await??;
            let last_key = page.last().and_then(|e| e.volume.as_ref()).and_then(|v| {
                VolumeId::parse(&v.volume_id)
                    .ok()
                    .map(|id| record_file(&id.subdir))
            });
            entries.extend(page);
            if let Some(last) = more {
                next_token = format!("{}/{last}", token_digest(export));
                break;
            }
            if entries.len() == max && i + 1 < exports.len() {
                // Full page at the end of this export: resume after its last entry.
                if let Some(last) = last_key {
                    next_token = format!("{}/{last}", token_digest(export));
                }
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
        let names_export = ["server", "share", "mountedShare"]
            .iter()
            .any(|k| req.parameters.contains_key(*k));
        if !names_export && self.exports.default_export().is_none() {
            // Parameters are optional (CSI spec): with no export named and
            // none by default, there is no capacity to report.
            return Ok(csi::GetCapacityResponse::default());
        }
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
            if limit > 0 && rec.capacity_bytes > limit {
                return Err(Error::CannotShrink {
                    limit,
                    current: rec.capacity_bytes,
                }
                .into());
            }
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

/// The VolumeSnapshotClass parameters: where archives go (None: on the
/// source volume's export) and the zstd level.
fn snapshot_params(
    params: &HashMap<String, String>,
    default_level: i32,
) -> Result<(Option<ExportSpec>, i32)> {
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for key in keys {
        let known = matches!(
            key.as_str(),
            "server" | "share" | "mountedShare" | "compressionLevel"
        ) || key.starts_with("csi.storage.k8s.io/");
        if !known {
            return Err(Error::SnapshotParameter {
                name: key.clone(),
                reason: "unknown; known: server, share, mountedShare, compressionLevel".into(),
            }
            .into());
        }
    }
    let names_export = ["server", "share", "mountedShare"]
        .iter()
        .any(|k| params.contains_key(*k));
    let export = if names_export {
        Some(volume::export_from_params(params, &[], None)?)
    } else {
        None
    };
    let level = match params.get("compressionLevel") {
        None => default_level,
        Some(v) => v
            .parse::<i32>()
            .ok()
            .filter(|l| (1..=19).contains(l))
            .ok_or_else(|| Error::SnapshotParameter {
                name: "compressionLevel".into(),
                reason: format!("{v:?} is not a zstd level from 1 to 19"),
            })?,
    };
    Ok((export, level))
}

fn timestamp(secs: i64, nanos: i32) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos,
    }
}

fn snapshot_ready(id: &SnapshotId, m: &snapshot::Manifest) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: i64::try_from(m.size_bytes).unwrap_or(i64::MAX),
        snapshot_id: id.to_string(),
        source_volume_id: m.source_volume_id.clone(),
        creation_time: Some(timestamp(m.created_unix, m.created_nanos)),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

fn snapshot_pending(id: &SnapshotId, j: &snapshot::Job) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: 0,
        snapshot_id: id.to_string(),
        source_volume_id: j.source_volume_id.clone(),
        creation_time: Some(timestamp(j.created_unix, j.created_nanos)),
        ready_to_use: false,
        group_snapshot_id: String::new(),
    }
}

/// One export's snapshots after `after`, filtered by source, at most `max`;
/// the key of the last one returned when more remain. Blocking.
fn list_snapshots_on(
    root: &Path,
    export: &ExportSpec,
    source: &str,
    after: Option<&str>,
    max: usize,
) -> Result<(Vec<csi::Snapshot>, Option<String>)> {
    let Some(dir) = Store::snapshots_dir(root, false)? else {
        return Ok((vec![], None));
    };
    let mut out = Vec::new();
    let mut last = None;
    for name in dir.list()? {
        let Ok(key) = name.into_string() else {
            continue;
        };
        if key.starts_with('.') || after.is_some_and(|a| key.as_str() <= a) {
            continue;
        }
        let Some(store) = Store::open(root, &key, false)? else {
            continue;
        };
        let id = SnapshotId {
            export: export.clone(),
            key: key.clone(),
        };
        // A snapshot is listed once its archive is complete (cut), never
        // while it is being written (the CSI spec forbids listing those).
        let snap = match store.state() {
            Ok(State::Ready(m)) => snapshot_ready(&id, &m),
            Ok(State::Pending(_) | State::Absent) => continue,
            Err(e) => {
                tracing::warn!(snapshot = %key, error = %e, "unreadable snapshot skipped");
                continue;
            }
        };
        if !source.is_empty() && snap.source_volume_id != source {
            continue;
        }
        if out.len() == max {
            return Ok((out, last));
        }
        out.push(snap);
        last = Some(key);
    }
    Ok((out, None))
}

/// Where a paged listing resumes: the index of the export and the entry
/// after which to go on, from a token `<export digest>/<entry>` that this
/// driver issued (ABORTED otherwise).
fn resume_point(
    exports: &[ExportSpec],
    token: &str,
    entry_ok: impl Fn(&str) -> bool,
) -> Result<(usize, Option<String>)> {
    if token.is_empty() {
        return Ok((0, None));
    }
    let bad = || Error::BadToken(token.to_string());
    let (digest, entry) = token.split_once('/').ok_or_else(bad)?;
    let idx = exports
        .iter()
        .position(|e| token_digest(e) == digest)
        .ok_or_else(bad)?;
    if entry.contains('/') || !entry_ok(entry) {
        return Err(bad().into());
    }
    Ok((idx, Some(entry.to_string())))
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
        .filter(|n| is_record_file(n))
        .filter(|n| after.is_none_or(|a| n.as_str() > a))
        .collect();
    let mut entries = Vec::new();
    let mut last: Option<&String> = None;
    for file in &files {
        if entries.len() == max {
            return Ok((entries, last.cloned()));
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
        let mut volume = to_volume(&id, rec.capacity_bytes);
        if let Some(created) = rec.volume_id.filter(|v| VolumeId::parse(v).is_ok()) {
            volume.volume_id = created;
        }
        entries.push(csi::list_volumes_response::Entry {
            volume: Some(volume),
            status: Some(csi::list_volumes_response::VolumeStatus {
                published_node_ids: vec![],
                volume_condition: Some(condition),
            }),
        });
        last = Some(file);
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
    #[instrument(skip_all, fields(name = %volume::short(&request.get_ref().name)))]
    async fn create_volume(
        &self,
        request: Request<csi::CreateVolumeRequest>,
    ) -> std::result::Result<Response<csi::CreateVolumeResponse>, Status> {
        respond(self.create(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %volume::short(&request.get_ref().volume_id)))]
    async fn delete_volume(
        &self,
        request: Request<csi::DeleteVolumeRequest>,
    ) -> std::result::Result<Response<csi::DeleteVolumeResponse>, Status> {
        respond(self.delete(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %volume::short(&request.get_ref().volume_id)))]
    async fn validate_volume_capabilities(
        &self,
        request: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> std::result::Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        respond(self.validate(request.into_inner())).await
    }

    #[instrument(skip_all, fields(token = %volume::short(&request.get_ref().starting_token)))]
    async fn list_volumes(
        &self,
        request: Request<csi::ListVolumesRequest>,
    ) -> std::result::Result<Response<csi::ListVolumesResponse>, Status> {
        respond(self.list(request.into_inner())).await
    }

    #[instrument(skip_all)]
    async fn get_capacity(
        &self,
        request: Request<csi::GetCapacityRequest>,
    ) -> std::result::Result<Response<csi::GetCapacityResponse>, Status> {
        respond(self.capacity(request.into_inner())).await
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
            Type::CreateDeleteSnapshot,
            Type::ListSnapshots,
            Type::CloneVolume,
        ]
        .into_iter()
        .map(capability)
        .collect();
        Ok(Response::new(csi::ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    #[instrument(skip_all, fields(name = %volume::short(&request.get_ref().name), source = %volume::short(&request.get_ref().source_volume_id)))]
    async fn create_snapshot(
        &self,
        request: Request<csi::CreateSnapshotRequest>,
    ) -> std::result::Result<Response<csi::CreateSnapshotResponse>, Status> {
        respond(ControllerService::create_snapshot(
            self,
            request.into_inner(),
        ))
        .await
    }

    #[instrument(skip_all, fields(snapshot_id = %volume::short(&request.get_ref().snapshot_id)))]
    async fn delete_snapshot(
        &self,
        request: Request<csi::DeleteSnapshotRequest>,
    ) -> std::result::Result<Response<csi::DeleteSnapshotResponse>, Status> {
        respond(ControllerService::delete_snapshot(
            self,
            request.into_inner(),
        ))
        .await
    }

    #[instrument(skip_all, fields(snapshot_id = %volume::short(&request.get_ref().snapshot_id), source = %volume::short(&request.get_ref().source_volume_id)))]
    async fn list_snapshots(
        &self,
        request: Request<csi::ListSnapshotsRequest>,
    ) -> std::result::Result<Response<csi::ListSnapshotsResponse>, Status> {
        respond(ControllerService::list_snapshots(
            self,
            request.into_inner(),
        ))
        .await
    }

    #[instrument(skip_all, fields(volume_id = %volume::short(&request.get_ref().volume_id)))]
    async fn controller_expand_volume(
        &self,
        request: Request<csi::ControllerExpandVolumeRequest>,
    ) -> std::result::Result<Response<csi::ControllerExpandVolumeResponse>, Status> {
        respond(self.expand(request.into_inner())).await
    }

    #[instrument(skip_all, fields(volume_id = %volume::short(&request.get_ref().volume_id)))]
    async fn controller_get_volume(
        &self,
        request: Request<csi::ControllerGetVolumeRequest>,
    ) -> std::result::Result<Response<csi::ControllerGetVolumeResponse>, Status> {
        respond(self.get(request.into_inner())).await
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
            content_source: None,
            populated: true,
            adopted: false,
            volume_id: None,
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
    fn a_volume_never_contains_another() {
        let t = tempfile::tempdir().unwrap();
        let a = RelPath::parse("team/a").unwrap();
        let team = RelPath::parse("team").unwrap();
        create_on_export(t.path(), rec("a", "team/a", OnDelete::Delete), &a, (0, 0)).unwrap();
        std::fs::write(t.path().join("team/a/data"), b"a's").unwrap();
        let err = create_on_export(t.path(), rec("b", "team", OnDelete::Archive), &team, (0, 0))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"team\"") && msg.contains("\"a\"") && msg.contains("\"team/a\""),
            "{msg}"
        );
        assert_eq!(crate::error::code(&err), tonic::Code::FailedPrecondition);
        // once a is gone, its directory's parent may become a volume
        delete_on_export(t.path(), &a).unwrap();
        create_on_export(t.path(), rec("b", "team", OnDelete::Delete), &team, (0, 0)).unwrap();
    }

    #[test]
    fn records_from_before_the_index_are_indexed_and_outer_volumes_retained() {
        for policy in [OnDelete::Delete, OnDelete::Archive] {
            let t = tempfile::tempdir().unwrap();
            let a = RelPath::parse("team/a").unwrap();
            let team = RelPath::parse("team").unwrap();
            create_on_export(t.path(), rec("a", "team/a", OnDelete::Delete), &a, (0, 0)).unwrap();
            std::fs::write(t.path().join("team/a/data"), b"a's").unwrap();
            // As an older version left it: an outer record, no index.
            let meta = Meta::open(t.path(), false).unwrap().unwrap();
            meta.save(&rec("b", "team", policy), &team).unwrap();
            std::fs::remove_dir_all(t.path().join(".nfs-csi/nested")).unwrap();
            assert_eq!(
                delete_on_export(t.path(), &team).unwrap(),
                "directory retained: it contains another volume's directory"
            );
            assert_eq!(std::fs::read(t.path().join("team/a/data")).unwrap(), b"a's");
            assert!(
                meta.record(&team).unwrap().is_none(),
                "outer record forgotten"
            );
            assert!(meta.record(&a).unwrap().is_some());
            // the rebuilt index still knows a is below team
            let err =
                create_on_export(t.path(), rec("c", "team", policy), &team, (0, 0)).unwrap_err();
            assert!(err.to_string().contains("contains volume"), "{err}");
            // and a discarded outer volume never empties it either
            meta.save(&rec("b", "team", policy), &team).unwrap();
            discard_on_export(t.path(), &team).unwrap();
            assert_eq!(std::fs::read(t.path().join("team/a/data")).unwrap(), b"a's");
        }
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
