//! The GroupController: volume group snapshots (CreateVolumeGroupSnapshot,
//! DeleteVolumeGroupSnapshot, GetVolumeGroupSnapshot).
//!
//! A group is one ordinary snapshot per source volume (an archive exactly
//! like CreateSnapshot's, restorable on its own, with `group_snapshot_id` in
//! its job and manifest; incremental against the newest ready snapshot of
//! its volume in its store, chosen by CreateSnapshot's own `start_snapshot`)
//! and a record on the export that holds the group:
//! `.nfs-csi/groups/<key>/group.json` (name, sorted sources, member ids,
//! parameters, creation time). The record is written, atomically, before
//! any member starts, so the same call after a crash finds the same member
//! ids and time and starts what is unfinished (a member started before the
//! crash keeps the parent its `job.json` names, which deletions keep as a
//! tombstone meanwhile). The members' jobs are
//! started together and held at one gate, opened once all are started: every
//! walk begins at the same moment. A member that fails takes the group with
//! it (every member and the record deleted, the error's code answered), so
//! nothing is left that the CO holds no id for; the next call starts afresh.
//!
//! Safety assumptions: a member is deleted only with its group (DeleteSnapshot
//! of a member is FAILED_PRECONDITION while the record exists); the group
//! record is removed last, so a crash mid-delete leaves a group that the next
//! DeleteVolumeGroupSnapshot finishes.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::archive::{self, State, Store};
use crate::grpc::csi::v1::{
    self as csi, GroupControllerServiceCapability, group_controller_service_capability,
};
use crate::storage::export::ExportSpec;
use crate::storage::ids::{GroupSnapshotId, RelPath, SnapshotId, VolumeId};
use crate::sys::offload;
use crate::sys::safefs::DirFd;
use crate::sys::text::short;

use super::*;

mod record;

use record::*;

/// Where the members' walks wait until all of them are started.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits until the gate opens (true) or the job is cancelled (false).
    fn wait(&self, cancel: &AtomicBool) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if *open {
                return true;
            }
            if cancel.load(Ordering::Relaxed) {
                return false;
            }
            open = self
                .cv
                .wait_timeout(open, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Opens the gate when dropped: however the RPC ends, no job waits forever.
struct Release(Arc<Gate>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// What a member's job needs: the source directory, the member's store,
/// its job record.
struct MemberWork {
    sid: SnapshotId,
    src_root: PathBuf,
    subdir: RelPath,
    store_root: PathBuf,
    job: archive::Job,
}

/// A member's archive job: opens its source and store, waits at the gate,
/// then walks. Blocking (runs on the job's thread).
fn run_member(w: MemberWork, threads: u32, gate: &Gate, cancel: &AtomicBool) -> Result<()> {
    let src_dir = DirFd::open_root(&w.src_root)?
        .walk(&w.subdir)?
        .ok_or_else(|| Error::NotFound(w.job.source_volume_id.clone()))?;
    let store = Store::open(&w.store_root, &w.sid.key, false)?
        .ok_or(Error::Missing("snapshot directory"))?;
    if !gate.wait(cancel) {
        return Err(archive::tree::Error::Cancelled.into());
    }
    let start = Instant::now();
    let m = archive::create_archive(
        &src_dir,
        &store,
        &w.job,
        archive::ArchiveOptions {
            level: w.job.level,
            threads,
        },
        cancel,
    )?;
    snapshot_done(&m, start.elapsed().as_secs_f64());
    Ok(())
}

impl ControllerService {
    /// What GroupControllerGetCapabilities answers.
    pub fn group_capabilities() -> csi::GroupControllerGetCapabilitiesResponse {
        use group_controller_service_capability::{Rpc, Type, rpc};
        csi::GroupControllerGetCapabilitiesResponse {
            capabilities: vec![GroupControllerServiceCapability {
                r#type: Some(Type::Rpc(Rpc {
                    r#type: rpc::Type::CreateDeleteGetVolumeGroupSnapshot as i32,
                })),
            }],
        }
    }

    /// The roots of `specs`' exports, by export key; `remember` notes them
    /// for the listings (exports that will hold records).
    async fn roots(
        &self,
        specs: &[&ExportSpec],
        remember: bool,
    ) -> Result<HashMap<String, PathBuf>> {
        let mut out = HashMap::new();
        for spec in specs {
            let key = spec.key();
            if out.contains_key(&key) {
                continue;
            }
            let (root, _) = self.exports.ready(spec).await?;
            if remember {
                self.exports.remember(spec).await?;
            }
            out.insert(key, root);
        }
        Ok(out)
    }

    /// Each member's state, in order.
    async fn member_states(&self, members: &[SnapshotId]) -> Result<Vec<State>> {
        let specs: Vec<&ExportSpec> = members.iter().map(|m| &m.export).collect();
        let roots = self.roots(&specs, false).await?;
        let work: Vec<(PathBuf, String)> = members
            .iter()
            .map(|m| (roots[&m.export.key()].clone(), m.key.clone()))
            .collect();
        offload::run(
            "read group members",
            self.exports.timeouts().fs,
            move || {
                work.iter()
                    .map(|(root, key)| member_state(root, key))
                    .collect::<Result<Vec<_>>>()
            },
        )
        .await?
    }

    /// The group's record and members; None when it does not exist.
    async fn load_group(
        &self,
        gid: &GroupSnapshotId,
    ) -> Result<Option<(GroupRecord, Vec<SnapshotId>)>> {
        let (root, _) = self.exports.ready(&gid.export).await?;
        let key = gid.key.clone();
        let rec = offload::run(
            "read group snapshot",
            self.exports.timeouts().fs,
            move || read_group(&root, &key),
        )
        .await??;
        match rec {
            None => Ok(None),
            Some(rec) => {
                let members = parse_members(&rec)?;
                Ok(Some((rec, members)))
            }
        }
    }

    pub(crate) async fn create_group(
        &self,
        req: csi::CreateVolumeGroupSnapshotRequest,
    ) -> Result<csi::CreateVolumeGroupSnapshotResponse> {
        if req.name.is_empty() {
            return Err(Error::Missing("name"));
        }
        if req.source_volume_ids.is_empty() {
            return Err(Error::Missing("source_volume_ids"));
        }
        if req.source_volume_ids.len() > MAX_MEMBERS {
            return Err(Error::GroupSources(format!(
                "{} volumes; a group takes at most {MAX_MEMBERS}",
                req.source_volume_ids.len()
            )));
        }
        if req.source_volume_ids.iter().any(String::is_empty) {
            return Err(Error::GroupSources("an id is empty".into()));
        }
        let (storage, level) = snapshot_params(&req.parameters, self.config.snapshot_level)?;
        let full_every = incremental_params(&req.parameters)?;
        let mut sources = req.source_volume_ids.clone();
        sources.sort();
        sources.dedup();
        if sources.len() != req.source_volume_ids.len() {
            return Err(Error::GroupSources("a volume is named twice".into()));
        }
        let vids = sources
            .iter()
            .map(|s| VolumeId::parse(s))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let on = |v: &VolumeId| storage.clone().unwrap_or_else(|| v.export.clone());
        // The record sits with the archives, or on the first volume's export.
        let gid = GroupSnapshotId::new(on(&vids[0]), &req.name);
        let key = gid.to_string();
        let fresh: Vec<SnapshotId> = vids
            .iter()
            .zip(&sources)
            .map(|(v, s)| SnapshotId::new(on(v), &member_name(&req.name, s)))
            .collect();
        let _guard = self.inflight.acquire(&[format!("group:{key}")])?;
        let mut specs: Vec<&ExportSpec> = vids.iter().map(|v| &v.export).collect();
        specs.push(&gid.export);
        let roots = self.roots(&specs, false).await?;
        self.exports.remember(&gid.export).await?;
        let fs = self.exports.timeouts().fs;
        let (created_unix, created_nanos) = now();
        let want = GroupRecord {
            name: req.name.clone(),
            source_volume_ids: sources.clone(),
            snapshot_ids: fresh.iter().map(ToString::to_string).collect(),
            parameters: class_params(&req.parameters),
            level,
            created_unix,
            created_nanos,
            deleting: false,
        };
        let groot = roots[&gid.export.key()].clone();
        let src: Vec<(PathBuf, RelPath, String)> = vids
            .iter()
            .zip(&sources)
            .map(|(v, s)| (roots[&v.export.key()].clone(), v.subdir.clone(), s.clone()))
            .collect();
        // A new group's members, to check that no name is held by a
        // deleted member whose archive later snapshots still need.
        let held: Vec<(PathBuf, String, String)> = fresh
            .iter()
            .zip(&sources)
            .map(|(m, s)| {
                let root = roots[&m.export.key()].clone();
                (root, m.key.clone(), member_name(&req.name, s))
            })
            .collect();
        let gkey = gid.key.clone();
        // The record first: it fixes the members and the time.
        let rec = offload::run("start group snapshot", fs, move || {
            let exists = |reason: &str| Error::GroupExists {
                name: want.name.clone(),
                reason: reason.into(),
            };
            if let Some(rec) = read_group(&groot, &gkey)? {
                if rec.deleting {
                    return Err(Error::GroupDeleting(rec.name));
                }
                if rec.name != want.name {
                    return Err(exists("its record belongs to another group"));
                }
                if rec.source_volume_ids != want.source_volume_ids {
                    return Err(exists("it was created from other volumes"));
                }
                if rec.parameters != want.parameters {
                    return Err(exists("it was created with other parameters"));
                }
                return Ok(rec);
            }
            for (root, subdir, id) in &src {
                let source = match Meta::open(root, false)? {
                    Some(m) => m.record(subdir)?,
                    None => None,
                };
                match source {
                    None => return Err(Error::NotFound(id.clone())),
                    Some(r) if !r.populated => return Err(Error::SourceNotReady(id.clone())),
                    Some(_) => {}
                }
            }
            for (root, key, name) in &held {
                if let Some(store) = Store::open(root, key, false)? {
                    refuse_tombstoned(&store, name)?;
                }
            }
            write_group(&groot, &gkey, &want)?;
            Ok(want)
        })
        .await??;
        let members = parse_members(&rec)?;
        let specs: Vec<&ExportSpec> = members.iter().map(|m| &m.export).collect();
        let member_roots = self.roots(&specs, true).await?;

        // Jobs of this process: running ones are joined; a member that
        // failed since the last call fails the group (`fail_group`).
        let mut running = HashMap::new();
        let mut failure = None;
        for m in &members {
            let k = m.to_string();
            if let Some(job) = self.jobs.get(&k) {
                match job.wait(Duration::ZERO).await {
                    None => {
                        running.insert(k, job);
                    }
                    Some(out) => {
                        self.jobs.remove(&k);
                        if let Err(f) = out {
                            failure.get_or_insert(f);
                        }
                    }
                }
            }
        }
        if let Some(f) = failure {
            return Err(self
                .fail_group(&gid, &rec, &members, running, f, &req.secrets)
                .await);
        }

        // The members to start: not complete, not running. A new member's
        // job record carries the group's id and time.
        let todo: Vec<(SnapshotId, PathBuf, String)> = members
            .iter()
            .zip(&rec.source_volume_ids)
            .filter(|(m, _)| !running.contains_key(&m.to_string()))
            .map(|(m, s)| (m.clone(), member_roots[&m.export.key()].clone(), s.clone()))
            .collect();
        let (r, k) = (rec.clone(), key.clone());
        let jobs = offload::run("start group members", fs, move || {
            let mut out = Vec::new();
            for (sid, root, source) in todo {
                // As CreateSnapshot: incremental against the newest ready
                // snapshot of the volume in this store, chosen and named in
                // job.json under the chain lock (a member started before a
                // crash keeps the parent its job names).
                let state = start_snapshot(
                    &root,
                    &sid.key,
                    &NewSnapshot {
                        name: &member_name(&r.name, &source),
                        source: &source,
                        level: r.level,
                        full_every,
                        group: Some((&k, r.created_unix, r.created_nanos)),
                    },
                )?;
                if group_of(&state) != k {
                    return Err(Error::GroupExists {
                        name: r.name.clone(),
                        reason: format!(
                            "its member {} belongs to another snapshot",
                            quote(&sid.to_string())
                        ),
                    });
                }
                match state {
                    State::Pending(job) => out.push((sid, root, job)),
                    State::Ready(_) | State::Absent => {}
                }
            }
            Ok::<_, Error>(out)
        })
        .await??;
        if !jobs.is_empty() {
            let gate = Arc::new(Gate::default());
            let release = Release(gate.clone());
            let threads = self.config.snapshot_threads;
            let n = jobs.len();
            for (sid, store_root, job) in jobs {
                let src = VolumeId::parse(&job.source_volume_id)?;
                let src_root = match roots.get(&src.export.key()) {
                    Some(r) => r.clone(),
                    None => self.exports.ready(&src.export).await?.0,
                };
                let k = sid.to_string();
                let work = MemberWork {
                    sid,
                    src_root,
                    subdir: src.subdir,
                    store_root,
                    job,
                };
                let g = gate.clone();
                // A failure keeps the error's gRPC code (`jobs::Failure` from
                // a `controller::Error`: `grpc::status`, the one mapping).
                let job = self
                    .jobs
                    .start(&k, move |cancel| run_member(work, threads, &g, cancel));
                running.insert(k, job);
            }
            // All started: every walk begins now.
            drop(release);
            tracing::info!(group = %key, members = n, "group member walks released together");
        }

        // Small volumes finish at once; larger ones report ready_to_use
        // false and the sidecar calls again.
        let deadline = Instant::now() + Duration::from_secs(2);
        for (k, job) in &running {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(out) = self.jobs.outcome(k, job, left).await
                && let Err(f) = out
            {
                failure.get_or_insert(f);
            }
        }
        if let Some(f) = failure {
            return Err(self
                .fail_group(&gid, &rec, &members, running, f, &req.secrets)
                .await);
        }
        let states = self.member_states(&members).await?;
        Ok(csi::CreateVolumeGroupSnapshotResponse {
            group_snapshot: Some(group_view(&gid, &rec, &members, &states)),
        })
    }

    pub(crate) async fn get_group(
        &self,
        req: csi::GetVolumeGroupSnapshotRequest,
    ) -> Result<csi::GetVolumeGroupSnapshotResponse> {
        if req.group_snapshot_id.is_empty() {
            return Err(Error::Missing("group_snapshot_id"));
        }
        // Not an id of ours: NOT_FOUND (storage::Error::InvalidGroupSnapshotId).
        let gid = GroupSnapshotId::parse(&req.group_snapshot_id)?;
        let Some((rec, members)) = self.load_group(&gid).await?.filter(|(r, _)| !r.deleting) else {
            return Err(Error::GroupNotFound(req.group_snapshot_id));
        };
        if !req.snapshot_ids.is_empty() && !same_members(&req.snapshot_ids, &rec) {
            return Err(Error::GroupMismatch(req.group_snapshot_id));
        }
        let states = self.member_states(&members).await?;
        Ok(csi::GetVolumeGroupSnapshotResponse {
            group_snapshot: Some(group_view(&gid, &rec, &members, &states)),
        })
    }

    pub(crate) async fn delete_group(
        &self,
        req: csi::DeleteVolumeGroupSnapshotRequest,
    ) -> Result<csi::DeleteVolumeGroupSnapshotResponse> {
        if req.group_snapshot_id.is_empty() {
            return Err(Error::Missing("group_snapshot_id"));
        }
        let Ok(gid) = GroupSnapshotId::parse(&req.group_snapshot_id) else {
            // Not an id this driver could have issued: nothing to delete.
            return Ok(csi::DeleteVolumeGroupSnapshotResponse {});
        };
        let key = gid.to_string();
        let _guard = self.inflight.acquire(&[format!("group:{key}")])?;
        let Some((mut rec, members)) = self.load_group(&gid).await? else {
            return Ok(csi::DeleteVolumeGroupSnapshotResponse {});
        };
        if !req.snapshot_ids.is_empty() && !same_members(&req.snapshot_ids, &rec) {
            return Err(Error::GroupMismatch(req.group_snapshot_id));
        }
        self.remove_group(&gid, &mut rec, &members, &req.secrets)
            .await?;
        tracing::info!(group_snapshot_id = %key, members = members.len(), "group snapshot deleted");
        Ok(csi::DeleteVolumeGroupSnapshotResponse {})
    }

    /// Removes a group: marks its record (from then on its members may go),
    /// deletes every member, then the record. The caller holds the group's
    /// in-flight key.
    async fn remove_group(
        &self,
        gid: &GroupSnapshotId,
        rec: &mut GroupRecord,
        members: &[SnapshotId],
        secrets: &HashMap<String, String>,
    ) -> Result<()> {
        let (root, _) = self.exports.ready(&gid.export).await?;
        let fs = self.exports.timeouts().fs;
        if !rec.deleting {
            rec.deleting = true;
            let (r, k, rc) = (root.clone(), gid.key.clone(), rec.clone());
            offload::run("mark group snapshot", fs, move || write_group(&r, &k, &rc)).await??;
        }
        for m in members {
            self.delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: m.to_string(),
                secrets: secrets.clone(),
            })
            .await?;
        }
        let k = gid.key.clone();
        offload::run("delete group snapshot", fs, move || {
            if let Some(groups) = groups_dir(&root, false)? {
                groups.remove_tree(OsStr::new(&k))?;
            }
            Ok::<_, Error>(())
        })
        .await?
    }

    /// A member failed: the group is removed (its other members' jobs
    /// cancelled, every member and the record deleted), so that nothing
    /// leaks if the CO never saw the group's id, and a retry starts every
    /// member again, together. Returns the member's failure, with its code.
    async fn fail_group(
        &self,
        gid: &GroupSnapshotId,
        rec: &GroupRecord,
        members: &[SnapshotId],
        running: HashMap<String, Arc<crate::sys::jobs::Job>>,
        failure: crate::sys::jobs::Failure,
        secrets: &HashMap<String, String>,
    ) -> Error {
        for job in running.values() {
            job.cancel();
        }
        let mut rec = rec.clone();
        if let Err(e) = self.remove_group(gid, &mut rec, members, secrets).await {
            tracing::error!(group_snapshot_id = %gid, error = %e, "cannot remove the failed group snapshot");
        }
        Error::Populate {
            message: format!("group snapshot {}: {}", short(&rec.name), failure.message),
            code: failure.code,
        }
    }

    /// DeleteSnapshot's early refusal: a member of a group whose record
    /// exists (and is not being deleted) goes only with its group.
    pub(super) async fn refuse_group_member(&self, sid: &SnapshotId) -> Result<()> {
        let (root, _) = self.exports.ready(&sid.export).await?;
        let fs = self.exports.timeouts().fs;
        let key = sid.key.clone();
        let group = offload::run("read snapshot", fs, move || {
            // An unreadable snapshot is no group's: it can still be deleted.
            Ok::<_, Error>(
                member_state(&root, &key)
                    .map(|s| group_of(&s).to_string())
                    .unwrap_or_default(),
            )
        })
        .await??;
        if group.is_empty() {
            return Ok(());
        }
        let Ok(gid) = GroupSnapshotId::parse(&group) else {
            return Ok(());
        };
        let id = sid.to_string();
        match self.load_group(&gid).await? {
            Some((rec, _)) if !rec.deleting && rec.snapshot_ids.contains(&id) => {
                Err(Error::GroupMember {
                    snapshot: id,
                    group,
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_holds_every_job_until_it_opens() {
        let gate = Arc::new(Gate::default());
        let passed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (g, p) = (gate.clone(), passed.clone());
                std::thread::spawn(move || {
                    assert!(g.wait(&AtomicBool::new(false)));
                    p.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(
            passed.load(Ordering::SeqCst),
            0,
            "nobody passes a closed gate"
        );
        drop(Release(gate.clone()));
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(passed.load(Ordering::SeqCst), 3);
        // a cancelled job leaves a closed gate without passing
        let closed = Gate::default();
        assert!(!closed.wait(&AtomicBool::new(true)));
    }

    #[test]
    fn capabilities_offer_group_snapshots() {
        let caps = ControllerService::group_capabilities().capabilities;
        assert_eq!(caps.len(), 1);
        assert!(matches!(
            caps[0].r#type,
            Some(group_controller_service_capability::Type::Rpc(r))
                if r.r#type == group_controller_service_capability::rpc::Type::CreateDeleteGetVolumeGroupSnapshot as i32
        ));
    }
}
