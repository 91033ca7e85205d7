//! CreateSnapshot, DeleteSnapshot and GetSnapshot: the VolumeSnapshotClass parameters,
//! the archive job, and the CSI view of a snapshot (the archive itself is
//! `crate::archive`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::archive::{self, State, Store};
use crate::grpc::csi::v1::{self as csi};
use crate::storage::export::ExportSpec;
use crate::storage::ids::{SnapshotId, VolumeId};
use crate::storage::params::{self};
use crate::sys::offload;
use crate::sys::safefs::DirFd;

use super::*;

/// The VolumeSnapshotClass parameters: where archives go (None: on the
/// source volume's export) and the zstd level.
pub(super) fn snapshot_params(
    params: &HashMap<String, String>,
    default_level: i32,
) -> Result<(Option<ExportSpec>, i32)> {
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for key in keys {
        let known = matches!(
            key.as_str(),
            "server" | "share" | "mountedShare" | "compressionLevel" | "incremental" | "fullEvery"
        ) || key.starts_with("csi.storage.k8s.io/");
        if !known {
            return Err(Error::SnapshotParameter {
                name: key.clone(),
                reason: "unknown; known: server, share, mountedShare, compressionLevel, incremental, fullEvery".into(),
            });
        }
    }
    let names_export = ["server", "share", "mountedShare"]
        .iter()
        .any(|k| params.contains_key(*k));
    let export = if names_export {
        Some(params::export_from_params(params, &[], None)?)
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

/// The VolumeSnapshotClass parameters of incremental archives: `None`
/// when `incremental: "false"`, else how many archives a chain may hold
/// (`fullEvery`, default 8; 1 makes every archive full).
pub(super) fn incremental_params(params: &HashMap<String, String>) -> Result<Option<u32>> {
    let on = match params.get("incremental").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => {
            return Err(Error::SnapshotParameter {
                name: "incremental".into(),
                reason: format!("{} is not \"true\" or \"false\"", quote(v)),
            });
        }
    };
    let every = match params.get("fullEvery") {
        None => archive::chain::FULL_EVERY,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=archive::chain::MAX_CHAIN).contains(n))
            .ok_or_else(|| Error::SnapshotParameter {
                name: "fullEvery".into(),
                reason: format!(
                    "{} is not a number of archives from 1 to {}",
                    quote(v),
                    archive::chain::MAX_CHAIN
                ),
            })?,
    };
    Ok(on.then_some(every))
}

pub(super) fn timestamp(secs: i64, nanos: i32) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos,
    }
}

pub(super) fn snapshot_ready(id: &SnapshotId, m: &archive::Manifest) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: i64::try_from(m.size_bytes).unwrap_or(i64::MAX),
        snapshot_id: id.to_string(),
        source_volume_id: m.source_volume_id.clone(),
        creation_time: Some(timestamp(m.created_unix, m.created_nanos)),
        ready_to_use: true,
        group_snapshot_id: m.group_snapshot_id.clone(),
    }
}

pub(super) fn snapshot_pending(id: &SnapshotId, j: &archive::Job) -> csi::Snapshot {
    csi::Snapshot {
        size_bytes: 0,
        snapshot_id: id.to_string(),
        source_volume_id: j.source_volume_id.clone(),
        creation_time: Some(timestamp(j.created_unix, j.created_nanos)),
        ready_to_use: false,
        group_snapshot_id: j.group_snapshot_id.clone(),
    }
}

/// A snapshot to start: what its job record says.
pub(super) struct NewSnapshot<'a> {
    pub name: &'a str,
    pub source: &'a str,
    pub level: i32,
    /// `incremental_params`: `Some(fullEvery)` when the archive may be
    /// incremental against the newest ready snapshot of its volume.
    pub full_every: Option<u32>,
    /// A group member: the group's id and creation time (`None`: now).
    pub group: Option<(&'a str, i64, i32)>,
}

/// ALREADY_EXISTS when `store` is tombstoned: deleted, but its archive is
/// still a later snapshot's parent, so the name stays taken until that
/// one goes. Blocking.
pub(super) fn refuse_tombstoned(store: &Store, name: &str) -> Result<()> {
    if !store.deleted()? {
        return Ok(());
    }
    let source = store.manifest()?.map(|m| m.source_volume_id);
    Err(Error::SnapshotExists {
        name: name.to_string(),
        existing: format!(
            "{} (deleted; kept while later snapshots need its archive)",
            source.as_deref().unwrap_or("?")
        ),
    })
}

/// The snapshot `key` in the store of `root`: its state, once started
/// when it was absent (its `job.json` written, naming the parent chosen
/// by `archive::chain::choose_parent`, both under the chain lock so the
/// parent cannot go in between). A tombstoned name is ALREADY_EXISTS. The
/// caller checks that a found snapshot is the one it asked for. Blocking.
pub(super) fn start_snapshot(root: &Path, key: &str, new: &NewSnapshot) -> Result<State> {
    let _chain = archive::chain::lock();
    let store = Store::open(root, key, true)?.ok_or(Error::Missing("snapshot directory"))?;
    refuse_tombstoned(&store, new.name)?;
    let state = store.state()?;
    if !matches!(state, State::Absent) {
        return Ok(state);
    }
    let mut job = archive::Job::new(new.name, new.source, new.level);
    if let Some((group, secs, nanos)) = new.group {
        job.group_snapshot_id = group.to_string();
        job.created_unix = secs;
        job.created_nanos = nanos;
    }
    if let (Some(every), Some(snaps)) = (new.full_every, &store.snaps)
        && let Some((parent, chain)) = archive::chain::choose_parent(snaps, new.source, every)?
    {
        job.parent = Some(parent);
        job.chain = chain;
    }
    store.start(&job)?;
    Ok(State::Pending(job))
}

/// A snapshot's archive is complete: its metrics and log line. What it
/// archived and added to the store (an incremental one: its changes only).
pub(super) fn snapshot_done(m: &archive::Manifest, secs: f64) {
    let metrics = crate::sys::metrics::get();
    let data = m.stored.map_or(m.size_bytes, |s| s.bytes);
    metrics.snapshot_bytes.inc_by(data);
    metrics.snapshot_archive_bytes.inc_by(m.added_bytes);
    metrics.snapshot_seconds.observe(secs);
    metrics
        .snapshot_throughput
        .set(m.size_bytes as f64 / secs.max(1e-6));
    tracing::info!(
        snapshot = %m.name,
        group = %m.group_snapshot_id,
        bytes = m.size_bytes,
        archive_bytes = m.archive_bytes,
        added_bytes = m.added_bytes,
        parent = m.parent.as_deref().unwrap_or(""),
        chain = m.chain,
        files = m.file_count,
        seconds = secs,
        "snapshot ready"
    );
}

impl ControllerService {
    /// GetSnapshot: the snapshot ListSnapshots gives for this id once its
    /// archive is complete; while it is being written, the same snapshot
    /// with `ready_to_use: false` (as CreateSnapshot answers then).
    pub(crate) async fn get_snapshot(
        &self,
        req: csi::GetSnapshotRequest,
    ) -> Result<csi::GetSnapshotResponse> {
        if req.snapshot_id.is_empty() {
            return Err(Error::Missing("snapshot_id"));
        }
        // Not an id of ours: NOT_FOUND (storage::Error::InvalidSnapshotId).
        let sid = SnapshotId::parse(&req.snapshot_id)?;
        let (root, _) = self.exports.ready(&sid.export).await?;
        let s = sid.clone();
        let found = offload::run("read snapshot", self.exports.timeouts().fs, move || {
            Ok::<_, Error>(match Store::open(&root, &s.key, false)? {
                None => None,
                Some(store) => match store.state()? {
                    State::Ready(m) => Some(snapshot_ready(&s, &m)),
                    State::Pending(j) => Some(snapshot_pending(&s, &j)),
                    State::Absent => None,
                },
            })
        })
        .await??;
        match found {
            Some(snapshot) => Ok(csi::GetSnapshotResponse {
                snapshot: Some(snapshot),
            }),
            None => Err(Error::SnapshotNotFound(req.snapshot_id)),
        }
    }

    pub(crate) async fn create_snapshot(
        &self,
        req: csi::CreateSnapshotRequest,
    ) -> Result<csi::CreateSnapshotResponse> {
        if req.name.is_empty() {
            return Err(Error::Missing("name"));
        }
        if req.source_volume_id.is_empty() {
            return Err(Error::Missing("source_volume_id"));
        }
        let (storage, level) = snapshot_params(&req.parameters, self.config.snapshot_level)?;
        let full_every = incremental_params(&req.parameters)?;
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
                None => return Err(Error::NotFound(source_id.clone())),
                Some(r) if !r.populated => {
                    return Err(Error::SourceNotReady(source_id.clone()));
                }
                Some(_) => {}
            }
            let state = start_snapshot(
                &st,
                &skey,
                &NewSnapshot {
                    name: &name,
                    source: &source_id,
                    level,
                    full_every,
                    group: None,
                },
            )?;
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
                });
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
            State::Absent => return Err(Error::Missing("snapshot job")),
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
            let run = || -> Result<archive::Manifest> {
                let src_dir = DirFd::open_root(&sr)?
                    .walk(&subdir)?
                    .ok_or_else(|| Error::NotFound(jm.source_volume_id.clone()))?;
                let store =
                    Store::open(&st, &skey, false)?.ok_or(Error::Missing("snapshot directory"))?;
                Ok(archive::create_archive(
                    &src_dir,
                    &store,
                    &jm,
                    archive::ArchiveOptions {
                        level: jm.level,
                        threads,
                    },
                    cancel,
                )?)
            };
            let start = std::time::Instant::now();
            match run() {
                Ok(m) => {
                    snapshot_done(&m, start.elapsed().as_secs_f64());
                    Ok(())
                }
                Err(e) => Err(crate::sys::text::chain(&e)),
            }
        });
        // Small volumes finish at once; larger ones report ready_to_use
        // false and the sidecar calls again.
        match self.jobs.outcome(&key, &job, Duration::from_secs(2)).await {
            Some(Ok(())) => {
                let skey = sid.key.clone();
                let m = offload::run("read manifest", fs, move || {
                    Ok::<_, Error>(
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
            Some(Err(msg)) => Err(Error::JobFailed(format!("snapshot {}: {msg}", req.name))),
            None => Ok(csi::CreateSnapshotResponse {
                snapshot: Some(snapshot_pending(&sid, &job_meta)),
            }),
        }
    }

    pub(crate) async fn delete_snapshot(
        &self,
        req: csi::DeleteSnapshotRequest,
    ) -> Result<csi::DeleteSnapshotResponse> {
        if req.snapshot_id.is_empty() {
            return Err(Error::Missing("snapshot_id"));
        }
        let Ok(sid) = SnapshotId::parse(&req.snapshot_id) else {
            return Ok(csi::DeleteSnapshotResponse {});
        };
        // A member of a volume group snapshot goes with its group.
        self.refuse_group_member(&sid).await?;
        let key = sid.to_string();
        let _guard = self.inflight.acquire(&[format!("snap:{key}")])?;
        if let Some(job) = self.jobs.get(&key) {
            job.cancel();
            let _ = job.wait(Duration::from_secs(30)).await;
            self.jobs.remove(&key);
        }
        let (root, _) = self.exports.ready(&sid.export).await?;
        let skey = sid.key.clone();
        let done = offload::run("delete snapshot", self.exports.timeouts().fs, move || {
            let Some(dir) = Store::snapshots_dir(&root, false)? else {
                return Ok(archive::chain::Deleted::Removed);
            };
            let _chain = archive::chain::lock();
            Ok::<_, Error>(archive::chain::delete(&dir, &skey)?)
        })
        .await??;
        match done {
            archive::chain::Deleted::Removed => {
                tracing::info!(snapshot_id = %key, "snapshot deleted")
            }
            archive::chain::Deleted::Kept => tracing::info!(
                snapshot_id = %key,
                "snapshot deleted; its archive is kept while later snapshots need it"
            ),
        }
        Ok(csi::DeleteSnapshotResponse {})
    }
}
