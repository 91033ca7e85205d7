//! ListVolumes and ListSnapshots: walking every export in a stable order,
//! and the paging tokens (bound to the export they point into).

use std::path::{Path, PathBuf};

use crate::archive::{State, Store};
use crate::grpc::csi::v1::{self as csi};
use crate::storage::export::ExportSpec;
use crate::storage::ids::{RelPath, SnapshotId, VolumeId};
use crate::storage::params::VolumeRecord;
use crate::sys::offload;

use super::*;

/// One export's snapshots after `after`, filtered by source, at most `max`;
/// the key of the last one returned when more remain. Blocking.
pub(super) fn list_snapshots_on(
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
pub(super) fn resume_point(
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
        return Err(bad());
    }
    Ok((idx, Some(entry.to_string())))
}

pub(super) fn token_digest(export: &ExportSpec) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(export.key().as_bytes())[..8])
}

/// One export's page of ListVolumes: entries after `after`, at most `max`;
/// the record file of the last entry when more remain. Blocking.
pub(super) fn list_export(
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

impl ControllerService {
    pub(crate) async fn list_snapshots(
        &self,
        req: csi::ListSnapshotsRequest,
    ) -> Result<csi::ListSnapshotsResponse> {
        if req.max_entries < 0 {
            return Err(Error::NegativeMaxEntries);
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
                Ok::<_, Error>(match Store::open(&root, &s.key, false)? {
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
    pub(super) async fn listable_root(
        &self,
        export: &ExportSpec,
        rpc: &str,
    ) -> Result<Option<PathBuf>> {
        match self.exports.ready(export).await {
            Ok((root, _)) => Ok(Some(root)),
            Err(e @ crate::storage::export::Error::NotResponding { .. }) => Err(e.into()),
            Err(e) => {
                tracing::warn!(export = %export.key(), error = %e, "export skipped in {rpc}");
                Ok(None)
            }
        }
    }

    pub(crate) async fn list(
        &self,
        req: csi::ListVolumesRequest,
    ) -> Result<csi::ListVolumesResponse> {
        if req.max_entries < 0 {
            return Err(Error::NegativeMaxEntries);
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
}
