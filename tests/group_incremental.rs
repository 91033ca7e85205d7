//! Volume group snapshots whose members are incremental archives (as a
//! CreateSnapshot's are), through the real binary's socket: chains across
//! groups, deletion keeping what later groups need, a crash mid-group.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nfs_csi::grpc::csi::v1 as csi;
use tonic::Code;
use tonic::transport::Channel;

type Groups = GroupControllerClient<Channel>;
type Client = ControllerClient<Channel>;

fn share(t: &Path, name: &str) -> PathBuf {
    let p = t.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn ms(root: &Path) -> HashMap<String, String> {
    params(&[("mountedShare", &root.display().to_string())])
}

async fn create(c: &mut Client, name: &str, root: &Path) -> String {
    c.create_volume(create_req(name, 0, ms(root)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

fn group_req(
    name: &str,
    sources: &[&str],
    p: &[(&str, &str)],
) -> csi::CreateVolumeGroupSnapshotRequest {
    csi::CreateVolumeGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: sources.iter().map(|s| s.to_string()).collect(),
        parameters: params(p),
        ..Default::default()
    }
}

/// `n` KiB of incompressible data.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed;
    let mut out = Vec::with_capacity(n << 10);
    while out.len() < n << 10 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Calls CreateVolumeGroupSnapshot until the group is ready; every answer
/// is the same group (id, members, creation time).
async fn until_ready(
    g: &mut Groups,
    req: &csi::CreateVolumeGroupSnapshotRequest,
    first: Option<&csi::VolumeGroupSnapshot>,
) -> csi::VolumeGroupSnapshot {
    let start = Instant::now();
    loop {
        let got = g
            .create_volume_group_snapshot(req.clone())
            .await
            .unwrap()
            .into_inner()
            .group_snapshot
            .unwrap();
        if let Some(first) = first {
            assert_eq!(got.group_snapshot_id, first.group_snapshot_id);
            assert_eq!(got.creation_time, first.creation_time);
            let ids = |g: &csi::VolumeGroupSnapshot| {
                g.snapshots
                    .iter()
                    .map(|s| s.snapshot_id.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(ids(&got), ids(first));
        }
        if got.ready_to_use {
            return got;
        }
        assert!(start.elapsed() < Duration::from_secs(240), "never ready");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The snapshot directory (key) and its `manifest.json` or `job.json` of
/// the member of group `group` of volume `source`, under `root`.
fn member_file(root: &Path, group: &str, source: &str, file: &str) -> (String, serde_json::Value) {
    for e in std::fs::read_dir(root.join(".nfs-csi/snapshots")).unwrap() {
        let dir = e.unwrap().path();
        let Ok(bytes) = std::fs::read(dir.join(file)) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let name = v["name"].as_str().unwrap();
        if name.starts_with(&format!("{group}/")) && v["source_volume_id"] == source {
            let key = dir.file_name().unwrap().to_string_lossy().into_owned();
            return (key, v);
        }
    }
    panic!(
        "no {file} of {group}'s member of {source} under {}",
        root.display()
    );
}

/// Restores snapshot `id` into a new volume `name` on `root`; its contents.
async fn restore(c: &mut Client, root: &Path, name: &str, id: &str) -> BTreeMap<String, String> {
    let mut r = create_req(name, 0, ms(root));
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: id.into(),
            },
        )),
    });
    let v = c
        .create_volume(r)
        .await
        .unwrap_or_else(|e| panic!("restore {id}: {e}"))
        .into_inner()
        .volume
        .unwrap();
    let got = contents(&root.join(name));
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
    got
}

async fn delete_group(g: &mut Groups, id: &str) {
    g.delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

/// The bytes of the regular files below `dir`.
fn file_bytes(dir: &Path) -> i64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            total += file_bytes(&e.path());
        } else if m.is_file() {
            total += m.len() as i64;
        }
    }
    total
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_later_groups_members_are_incremental_and_outlive_the_first_group() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (share(t.path(), "a"), share(t.path(), "b"));
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let mut g = d.group_controller().await;
    // data on export a, wal on export b: each member on its own export
    let data = create(&mut c, "data", &a).await;
    let wal = create(&mut c, "wal", &b).await;
    std::fs::create_dir_all(a.join("data/db")).unwrap();
    for i in 0..8u64 {
        std::fs::write(a.join(format!("data/db/t{i}")), noise(256, i)).unwrap();
    }
    std::fs::write(a.join("data/gone"), b"deleted before the second group").unwrap();
    for i in 0..4u64 {
        std::fs::write(b.join(format!("wal/{i:06}.log")), noise(256, 100 + i)).unwrap();
    }
    let vols = [(&data, a.join("data")), (&wal, b.join("wal"))];
    let root_of = |id: &str| if id == data { a.clone() } else { b.clone() };

    let req1 = group_req("g1", &[&data, &wal], &[]);
    let g1 = until_ready(&mut g, &req1, None).await;
    let want1: HashMap<String, _> = vols
        .iter()
        .map(|(id, dir)| (id.to_string(), contents(dir)))
        .collect();

    // Changes: one table rewritten, one new, a file deleted, a file's mode, the wal appended.
    std::fs::write(a.join("data/db/t3"), noise(256, 33)).unwrap();
    std::fs::write(a.join("data/db/t9"), noise(16, 9)).unwrap();
    std::fs::remove_file(a.join("data/gone")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(a.join("data/db/t0"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(b.join("wal/000003.log"))
        .unwrap()
        .write_all(&noise(8, 7))
        .unwrap();
    std::fs::write(b.join("wal/000004.log"), noise(8, 104)).unwrap();
    let req2 = group_req("g2", &[&data, &wal], &[]);
    let g2 = until_ready(&mut g, &req2, None).await;
    let want2: HashMap<String, _> = vols
        .iter()
        .map(|(id, dir)| (id.to_string(), contents(dir)))
        .collect();
    assert_ne!(want1, want2);

    // Each second member is incremental against the first group's member
    // of its volume, and much smaller.
    for id in [&data, &wal] {
        let root = root_of(id);
        let (k1, m1) = member_file(&root, "g1", id, "manifest.json");
        let (_, m2) = member_file(&root, "g2", id, "manifest.json");
        assert!(m1.get("parent").is_none(), "{m1}");
        assert_eq!(m1["chain"], 0);
        assert_eq!(m2["parent"], k1.as_str(), "{m2}");
        assert_eq!(m2["chain"], 1);
        assert_eq!(m2["group_snapshot_id"], g2.group_snapshot_id.as_str());
        let (full, incr) = (
            m1["archive_bytes"].as_u64().unwrap(),
            m2["archive_bytes"].as_u64().unwrap(),
        );
        assert!(incr * 3 < full, "{id}: incremental {incr} vs full {full}");
        // the restore size is the whole tree's
        let s = g2
            .snapshots
            .iter()
            .find(|s| s.source_volume_id == *id)
            .unwrap();
        let dir = &vols.iter().find(|v| v.0 == id).unwrap().1;
        assert_eq!(s.size_bytes, file_bytes(dir), "{id}");
    }
    // Every member of both groups restores exactly.
    for (n, (grp, want)) in [(&g1, &want1), (&g2, &want2)].into_iter().enumerate() {
        for (i, s) in grp.snapshots.iter().enumerate() {
            let root = root_of(&s.source_volume_id);
            let got = restore(&mut c, &root, &format!("r{n}-{i}"), &s.snapshot_id).await;
            assert_eq!(got, want[&s.source_volume_id], "group {n} member {i}");
        }
    }

    // Deleting the first group: its members vanish, their archives stay
    // (tombstoned) for the second, which still restores exactly.
    delete_group(&mut g, &g1.group_snapshot_id).await;
    for s in &g1.snapshots {
        let err = c
            .get_snapshot(csi::GetSnapshotRequest {
                snapshot_id: s.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    for (root, id) in [(&a, &data), (&b, &wal)] {
        let snaps = entries(&root.join(".nfs-csi/snapshots"));
        assert_eq!(snaps.len(), 2, "{snaps:?}");
        let (k1, _) = member_file(root, "g1", id, "manifest.json");
        assert!(
            root.join(".nfs-csi/snapshots")
                .join(&k1)
                .join("deleted")
                .exists()
        );
    }
    let listed = c
        .list_snapshots(csi::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(listed.len(), 2, "only the second group's members");
    for (i, s) in g2.snapshots.iter().enumerate() {
        let root = root_of(&s.source_volume_id);
        let got = restore(&mut c, &root, &format!("after-{i}"), &s.snapshot_id).await;
        assert_eq!(
            got, want2[&s.source_volume_id],
            "member {i} after deleting g1"
        );
    }

    // The first group's name is held by its tombstoned members: the same
    // call is ALREADY_EXISTS naming them, as CreateSnapshot's would be, and
    // leaves no record behind.
    let err = g
        .create_volume_group_snapshot(req1.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    assert!(
        err.message().contains("g1/") && err.message().contains("deleted; kept"),
        "{}",
        err.message()
    );
    assert_eq!(
        entries(&a.join(".nfs-csi/groups")).len(),
        1,
        "g2's record only"
    );

    // Deleting the second group frees everything, and the first name.
    delete_group(&mut g, &g2.group_snapshot_id).await;
    for root in [&a, &b] {
        let left = entries(&root.join(".nfs-csi/snapshots"));
        assert!(left.is_empty(), "{}: {left:?}", root.display());
    }
    assert!(entries(&a.join(".nfs-csi/groups")).is_empty());
    let again = until_ready(&mut g, &req1, None).await;
    for id in [&data, &wal] {
        let (_, m) = member_file(&root_of(id), "g1", id, "manifest.json");
        assert!(m.get("parent").is_none(), "nothing to chain to: {m}");
    }

    // The class's incremental parameters: "false" writes full members;
    // fullEvery 1 too; a bad value is INVALID_ARGUMENT naming the key.
    for (name, p) in [("g3", ("incremental", "false")), ("g4", ("fullEvery", "1"))] {
        until_ready(&mut g, &group_req(name, &[&data, &wal], &[p]), None).await;
        for id in [&data, &wal] {
            let (_, m) = member_file(&root_of(id), name, id, "manifest.json");
            assert!(m.get("parent").is_none(), "{name}: {m}");
        }
    }
    let (_, m) = {
        until_ready(&mut g, &group_req("g5", &[&data, &wal], &[]), None).await;
        member_file(&a, "g5", &data, "manifest.json")
    };
    assert_eq!(m["chain"], 1, "the default chains again: {m}");
    // A plain snapshot chains to a member too; deleting that member's
    // group keeps it, and holds the group's name.
    let plain = c
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: data.clone(),
            name: "plain".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(plain.ready_to_use);
    let (k5, _) = member_file(&a, "g5", &data, "manifest.json");
    let pm: serde_json::Value = serde_json::from_slice(
        &std::fs::read(a.join(".nfs-csi/snapshots/plain/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(pm["parent"], k5.as_str(), "{pm}");
    let g5 = until_ready(&mut g, &group_req("g5", &[&data, &wal], &[]), None).await;
    delete_group(&mut g, &g5.group_snapshot_id).await;
    let err = g
        .create_volume_group_snapshot(group_req("g5", &[&data, &wal], &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    assert!(err.message().contains(&data), "{}", err.message());
    let restored = restore(&mut c, &a, "from-plain", &plain.snapshot_id).await;
    assert_eq!(restored, contents(&a.join("data")));
    for (k, v) in [("incremental", "maybe"), ("fullEvery", "0")] {
        let err = g
            .create_volume_group_snapshot(group_req("g6", &[&data, &wal], &[(k, v)]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(err.message().contains(k), "{}", err.message());
    }
    assert_eq!(again.snapshots.len(), 2);
}

#[tokio::test]
async fn killed_mid_group_with_its_parents_deleted_meanwhile_it_finishes_right() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (share(t.path(), "a"), share(t.path(), "b"));
    let mut d = Driver::start(
        t.path(),
        &["--mode", "controller", "--snapshot-threads", "1"],
    )
    .await;
    let mut c = d.controller().await;
    let mut g = d.group_controller().await;
    let one = create(&mut c, "one", &a).await;
    let two = create(&mut c, "two", &b).await;
    std::fs::write(a.join("one/small"), noise(64, 1)).unwrap();
    std::fs::write(b.join("two/small"), noise(64, 2)).unwrap();
    let g1 = until_ready(&mut g, &group_req("first", &[&one, &two], &[]), None).await;
    // Much new data, slowly compressed: the second group takes a while.
    std::fs::write(a.join("one/big"), noise(8 << 10, 3)).unwrap();
    std::fs::write(b.join("two/big"), noise(8 << 10, 4)).unwrap();
    std::fs::remove_file(a.join("one/small")).unwrap();
    let want: HashMap<&str, _> = [
        (one.as_str(), contents(&a.join("one"))),
        (two.as_str(), contents(&b.join("two"))),
    ]
    .into_iter()
    .collect();
    let req = group_req("second", &[&one, &two], &[("compressionLevel", "19")]);
    let first = g
        .create_volume_group_snapshot(req.clone())
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert!(
        !first.ready_to_use,
        "expected a long group snapshot; make the data bigger"
    );
    d.kill();
    // Each member's job names its parent (chosen before the crash).
    let mut parents = Vec::new();
    for (root, id) in [(&a, &one), (&b, &two)] {
        let (k1, _) = member_file(root, "first", id, "manifest.json");
        let (_, job) = member_file(root, "second", id, "job.json");
        assert_eq!(job["parent"], k1.as_str(), "{job}");
        assert_eq!(job["chain"], 1);
        parents.push((root.clone(), k1));
    }
    d.restart().await;
    let mut c = d.controller().await;
    let mut g = d.group_controller().await;
    // The parents' group goes meanwhile: they are tombstoned, not removed.
    delete_group(&mut g, &g1.group_snapshot_id).await;
    for (root, k1) in &parents {
        let dir = root.join(".nfs-csi/snapshots").join(k1);
        assert!(dir.join("deleted").exists(), "{}", dir.display());
        assert!(dir.join("archive.tar.zst").exists(), "{}", dir.display());
    }
    // The same call finishes the group: same ids and time, members
    // incremental against the parents their jobs named.
    let done = until_ready(&mut g, &req, Some(&first)).await;
    for (root, id) in [(&a, &one), (&b, &two)] {
        let (_, m) = member_file(root, "second", id, "manifest.json");
        let k1 = &parents.iter().find(|(r, _)| r == root).unwrap().1;
        assert_eq!(m["parent"], k1.as_str(), "{m}");
        assert_eq!(m["chain"], 1);
    }
    for (i, s) in done.snapshots.iter().enumerate() {
        let root = if s.source_volume_id == one { &a } else { &b };
        let got = restore(&mut c, root, &format!("back-{i}"), &s.snapshot_id).await;
        assert_eq!(got, want[s.source_volume_id.as_str()], "member {i}");
    }
    delete_group(&mut g, &done.group_snapshot_id).await;
    for root in [&a, &b] {
        let left = entries(&root.join(".nfs-csi/snapshots"));
        assert!(left.is_empty(), "{}: {left:?}", root.display());
    }
}
