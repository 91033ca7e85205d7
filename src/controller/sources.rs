//! A new volume's content source: a snapshot restored or a volume cloned
//! into it, as a background job (CreateVolume answers Unavailable until it
//! is done).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::archive::{self, State, Store, tree};
use crate::grpc::csi::v1::{self as csi};
use crate::storage::ids::{RelPath, SnapshotId, VolumeId};
use crate::sys::offload;
use crate::sys::safefs::DirFd;

use super::*;

/// Where a new volume's content comes from.
pub(super) enum ContentOrigin {
    Snapshot { store_root: PathBuf, key: String },
    Volume { root: PathBuf, subdir: RelPath },
}

pub(super) struct Populate {
    /// The snapshot or volume id, as requested.
    pub(super) id: String,
    pub(super) from: ContentOrigin,
    /// Its size: the snapshot's restore size or the volume's capacity.
    pub(super) bytes: i64,
}

/// Fills the (emptied) directory `subdir` of `root` from `from`, then marks
/// its record populated. Blocking.
pub(super) fn populate_blocking(
    root: &Path,
    subdir: &RelPath,
    from: &ContentOrigin,
    policy: tree::Policy,
    capacity: i64,
    threads: usize,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    let missing = || Error::NotFound(subdir.as_str().to_string());
    let dest = DirFd::open_root(root)?.walk(subdir)?.ok_or_else(missing)?;
    // A previous attempt may have been cut short: start from empty.
    archive::empty_dir(&dest)?;
    let (files, bytes) = match from {
        ContentOrigin::Snapshot { store_root, key } => {
            let store = Store::open(store_root, key, false)?
                .ok_or_else(|| Error::SnapshotNotFound(key.clone()))?;
            let manifest = store
                .manifest()?
                .ok_or_else(|| Error::SnapshotNotReady(key.clone()))?;
            let opts = archive::RestoreOptions {
                policy,
                capacity: capacity.max(0) as u64,
            };
            archive::restore(&store, &manifest, dest, opts, cancel)?
        }
        ContentOrigin::Volume {
            root: src_root,
            subdir: src,
        } => {
            let src_dir = DirFd::open_root(src_root)?
                .walk(src)?
                .ok_or_else(|| Error::NotFound(src.as_str().to_string()))?;
            archive::clone_tree(&src_dir, tree::Dest::new(dest, policy), threads, cancel)?
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
    /// Checks a CreateVolume content source: it exists, it is ready, and
    /// the requested capacity holds it.
    pub(super) async fn content_source(
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
                    Ok::<_, Error>(match Store::open(&root, &key, false)? {
                        None => (State::Absent, root),
                        Some(store) => (store.state()?, root),
                    })
                })
                .await??;
                match state {
                    (State::Ready(m), root) => (
                        s.snapshot_id.clone(),
                        ContentOrigin::Snapshot {
                            store_root: root,
                            key: sid.key,
                        },
                        i64::try_from(m.size_bytes).unwrap_or(i64::MAX),
                    ),
                    (State::Pending(_), _) => {
                        return Err(Error::SnapshotNotReady(s.snapshot_id.clone()));
                    }
                    (State::Absent, _) => {
                        return Err(Error::SnapshotNotFound(s.snapshot_id.clone()));
                    }
                }
            }
            Some(Type::Volume(v)) => {
                let (vid, rec, _) = self.existing(&v.volume_id).await?;
                if !rec.populated {
                    return Err(Error::SourceNotReady(v.volume_id.clone()));
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
                    )));
                }
                let (root, _) = self.exports.ready(&vid.export).await?;
                (
                    v.volume_id.clone(),
                    ContentOrigin::Volume {
                        root,
                        subdir: vid.subdir,
                    },
                    rec.capacity_bytes,
                )
            }
            None => return Err(Error::ContentSource),
        };
        if required > 0 && required < bytes {
            return Err(Error::TooSmall {
                required,
                source_bytes: bytes,
            });
        }
        Ok(Populate { id, from, bytes })
    }

    /// Restores or copies the source into the new volume, as a job that
    /// survives a cancelled RPC; a retried CreateVolume joins it.
    pub(super) async fn populate(
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
            let m = crate::sys::metrics::get();
            match source.from {
                ContentOrigin::Snapshot { .. } => crate::sys::metrics::outcome(&m.restores, &res),
                ContentOrigin::Volume { .. } => crate::sys::metrics::outcome(&m.clones, &res),
            }
            // The failure keeps the error's gRPC code (`jobs::Failure`
            // from a `controller::Error`: `grpc::status`, the one mapping).
            res
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
                if let Err(e) | Ok(Err(e)) = cleanup.map_err(Error::from) {
                    tracing::error!(volume_id = %id, error = %e, "cannot discard the failed volume");
                }
                Err(Error::Populate {
                    message: format!("populating volume {id}: {}", msg.message),
                    code: msg.code,
                })
            }
            None => Err(Error::JobFailed(format!(
                "populating volume {id} is still running"
            ))),
        }
    }
}
