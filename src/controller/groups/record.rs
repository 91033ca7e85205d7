//! A volume group snapshot's record and how it reads: the record on its
//! export (`.nfs-csi/groups/<key>/group.json`), the members' names and
//! states, the CSI view of a group. Blocking helpers, used by `groups`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::{State, Store};
use crate::grpc::csi::v1::{self as csi};
use crate::storage::ids::{GroupSnapshotId, RESERVED_DIR, SnapshotId};
use crate::sys::safefs::DirFd;

use super::super::*;

pub(super) const GROUPS_DIR: &str = "groups";
const GROUP_FILE: &str = "group.json";
/// The most volumes one group snapshot may take (each is a job and a thread).
pub(super) const MAX_MEMBERS: usize = 64;
/// Parameter keys Kubernetes adds for itself (secrets' names): not the class's.
const K8S_PREFIX: &str = "csi.storage.k8s.io/";

/// `.nfs-csi/groups/<key>/group.json`: what fixes a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct GroupRecord {
    pub name: String,
    /// Sorted.
    pub source_volume_ids: Vec<String>,
    /// The member snapshots, in the order of `source_volume_ids`.
    pub snapshot_ids: Vec<String>,
    /// The VolumeGroupSnapshotClass parameters (without Kubernetes' own).
    pub parameters: BTreeMap<String, String>,
    pub level: i32,
    pub created_unix: i64,
    pub created_nanos: i32,
    /// Set by DeleteVolumeGroupSnapshot before it removes the members.
    #[serde(default)]
    pub deleting: bool,
}

/// The name of a group's member snapshot of `source`: the group's name and
/// a digest of the volume id (stored as an `x-`/`h-` encoded directory name,
/// which no plain CreateSnapshot name of the sidecar's form gives).
pub(super) fn member_name(group: &str, source: &str) -> String {
    let digest = hex::encode(Sha256::digest(source.as_bytes()));
    format!("{group}/{}", &digest[..16])
}

pub(super) fn class_params(params: &HashMap<String, String>) -> BTreeMap<String, String> {
    params
        .iter()
        .filter(|(k, _)| !k.starts_with(K8S_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub(super) fn now() -> (i64, i32) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_secs() as i64, now.subsec_nanos() as i32)
}

pub(super) fn groups_dir(root: &Path, create: bool) -> Result<Option<DirFd>> {
    let root = DirFd::open_root(root)?;
    let Some(meta) = root.subdir(RESERVED_DIR, create)? else {
        return Ok(None);
    };
    Ok(meta.subdir(GROUPS_DIR, create)?)
}

/// A group's record on its export. Blocking.
pub(super) fn read_group(root: &Path, key: &str) -> Result<Option<GroupRecord>> {
    let Some(groups) = groups_dir(root, false)? else {
        return Ok(None);
    };
    let Some(dir) = groups.subdir(key, false)? else {
        return Ok(None);
    };
    let Some(bytes) = dir.read_small(GROUP_FILE)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::CorruptRecord {
            path: dir.path().join(GROUP_FILE),
            source,
        })
}

/// Writes a group's record atomically (temporary file, fsync, rename). Blocking.
pub(super) fn write_group(root: &Path, key: &str, rec: &GroupRecord) -> Result<()> {
    let groups = groups_dir(root, true)?.ok_or(Error::Missing("groups directory"))?;
    let dir = groups
        .subdir(key, true)?
        .ok_or(Error::Missing("group directory"))?;
    let bytes = serde_json::to_vec_pretty(rec).map_err(|source| Error::CorruptRecord {
        path: dir.path().join(GROUP_FILE),
        source,
    })?;
    dir.write_atomic(GROUP_FILE, &bytes)?;
    Ok(())
}

/// A member's state: what its snapshot directory holds. Blocking.
pub(super) fn member_state(root: &Path, key: &str) -> Result<State> {
    Ok(match Store::open(root, key, false)? {
        None => State::Absent,
        Some(store) => store.state()?,
    })
}

/// The group the snapshot says it belongs to ("" for none). Blocking.
pub(super) fn group_of(state: &State) -> &str {
    match state {
        State::Ready(m) => &m.group_snapshot_id,
        State::Pending(j) => &j.group_snapshot_id,
        State::Absent => "",
    }
}

/// The CSI view of a group: its members in the record's order.
pub(super) fn group_view(
    gid: &GroupSnapshotId,
    rec: &GroupRecord,
    members: &[SnapshotId],
    states: &[State],
) -> csi::VolumeGroupSnapshot {
    let id = gid.to_string();
    let created = timestamp(rec.created_unix, rec.created_nanos);
    let snapshots: Vec<csi::Snapshot> = members
        .iter()
        .zip(states)
        .enumerate()
        .map(|(i, (sid, st))| {
            let mut s = match st {
                State::Ready(m) => snapshot_ready(sid, m),
                State::Pending(j) => snapshot_pending(sid, j),
                State::Absent => csi::Snapshot {
                    snapshot_id: sid.to_string(),
                    source_volume_id: rec.source_volume_ids.get(i).cloned().unwrap_or_default(),
                    creation_time: Some(created),
                    ..Default::default()
                },
            };
            s.group_snapshot_id = id.clone();
            s
        })
        .collect();
    let ready = !snapshots.is_empty() && snapshots.iter().all(|s| s.ready_to_use);
    csi::VolumeGroupSnapshot {
        group_snapshot_id: id,
        snapshots,
        creation_time: Some(created),
        ready_to_use: ready,
    }
}

/// Whether `given` names exactly the group's members (in any order).
pub(super) fn same_members(given: &[String], rec: &GroupRecord) -> bool {
    let mut a: Vec<&String> = given.iter().collect();
    let mut b: Vec<&String> = rec.snapshot_ids.iter().collect();
    a.sort();
    a.dedup();
    b.sort();
    a == b && given.len() == rec.snapshot_ids.len()
}

pub(super) fn parse_members(rec: &GroupRecord) -> Result<Vec<SnapshotId>> {
    Ok(rec
        .snapshot_ids
        .iter()
        .map(|s| SnapshotId::parse(s))
        .collect::<std::result::Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::export::ExportSpec;

    #[test]
    fn member_names_differ_by_volume_and_group_and_are_stable() {
        let a = member_name("g", "v1#mounted#/s#a");
        assert_eq!(a, member_name("g", "v1#mounted#/s#a"));
        assert_ne!(a, member_name("g", "v1#mounted#/s#b"));
        assert_ne!(a, member_name("h", "v1#mounted#/s#a"));
        // not a plain name: stored under an encoded directory name
        let sid = SnapshotId::new(ExportSpec::mounted("/s").unwrap(), &a);
        assert!(sid.key.starts_with("x-"), "{}", sid.key);
        assert_eq!(SnapshotId::parse(&sid.to_string()).unwrap(), sid);
    }

    #[test]
    fn snapshot_ids_must_name_the_members_exactly() {
        let rec = GroupRecord {
            name: "g".into(),
            source_volume_ids: vec!["a".into(), "b".into()],
            snapshot_ids: vec!["s1".into(), "s2".into()],
            parameters: BTreeMap::new(),
            level: 3,
            created_unix: 1,
            created_nanos: 2,
            deleting: false,
        };
        assert!(same_members(&["s2".into(), "s1".into()], &rec));
        assert!(!same_members(&["s1".into()], &rec));
        assert!(!same_members(&["s1".into(), "s1".into()], &rec));
        assert!(!same_members(
            &["s1".into(), "s2".into(), "s3".into()],
            &rec
        ));
        assert!(!same_members(&["s1".into(), "x".into()], &rec));
        // the record round-trips, and one without `deleting` reads as not deleting
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(serde_json::from_str::<GroupRecord>(&json).unwrap(), rec);
        let old = json.replace(",\"deleting\":false", "");
        assert!(!serde_json::from_str::<GroupRecord>(&old).unwrap().deleting);
    }
}
