//! Volume group snapshots (the GroupController service) through the real
//! binary's socket, on two `mountedShare` exports in temporary directories.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nfs_csi::grpc::csi::v1 as csi;
use tonic::Code;
use tonic::transport::Channel;

fn share(t: &Path, name: &str) -> PathBuf {
    let p = t.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn ms(root: &Path) -> HashMap<String, String> {
    params(&[("mountedShare", &root.display().to_string())])
}

async fn create(c: &mut ControllerClient<Channel>, name: &str, root: &Path) -> String {
    c.create_volume(create_req(name, 0, ms(root)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

fn group_req(name: &str, sources: &[&str]) -> csi::CreateVolumeGroupSnapshotRequest {
    csi::CreateVolumeGroupSnapshotRequest {
        name: name.into(),
        source_volume_ids: sources.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Calls CreateVolumeGroupSnapshot until the group is ready, checking that
/// every answer is the same group.
async fn until_ready(
    g: &mut GroupControllerClient<Channel>,
    req: &csi::CreateVolumeGroupSnapshotRequest,
    first: &csi::VolumeGroupSnapshot,
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
        assert_eq!(got.group_snapshot_id, first.group_snapshot_id);
        assert_eq!(
            got.creation_time, first.creation_time,
            "creation time is stable"
        );
        let ids = |g: &csi::VolumeGroupSnapshot| {
            g.snapshots
                .iter()
                .map(|s| s.snapshot_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&got), ids(first), "the same members");
        if got.ready_to_use {
            return got;
        }
        assert!(
            got.snapshots.iter().any(|s| !s.ready_to_use),
            "a group is not ready only while a member is not"
        );
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "group snapshot never finished"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn group_snapshots_of_volumes_on_two_exports() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (share(t.path(), "a"), share(t.path(), "b"));
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let mut g = d.group_controller().await;

    // The service is advertised and offers group snapshots.
    let caps = d
        .identity()
        .await
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    use csi::plugin_capability::{Service, Type, service};
    assert!(
        caps.iter().any(|c| c.r#type
            == Some(Type::Service(Service {
                r#type: service::Type::GroupControllerService as i32
            }))),
        "{caps:?}"
    );
    let gcaps = g
        .group_controller_get_capabilities(csi::GroupControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    use csi::group_controller_service_capability::{Rpc, Type as GType, rpc};
    assert_eq!(
        gcaps,
        vec![csi::GroupControllerServiceCapability {
            r#type: Some(GType::Rpc(Rpc {
                r#type: rpc::Type::CreateDeleteGetVolumeGroupSnapshot as i32
            }))
        }]
    );

    // data and wal on export a, a shard on export b
    let data = create(&mut c, "data", &a).await;
    let wal = create(&mut c, "wal", &a).await;
    let shard = create(&mut c, "shard", &b).await;
    std::fs::create_dir_all(a.join("data/db")).unwrap();
    std::fs::write(a.join("data/db/table"), "rows ".repeat(100_000)).unwrap();
    std::fs::write(a.join("wal/000001.log"), b"wal records").unwrap();
    std::fs::write(b.join("shard/part"), vec![7u8; 300_000]).unwrap();
    let want: HashMap<&str, (PathBuf, BTreeMap<String, String>)> = [
        (data.as_str(), a.join("data")),
        (wal.as_str(), a.join("wal")),
        (shard.as_str(), b.join("shard")),
    ]
    .into_iter()
    .map(|(id, dir)| (id, (dir.clone(), contents(&dir))))
    .collect();

    let req = group_req("grp-1", &[&shard, &data, &wal]);
    let first = g
        .create_volume_group_snapshot(req.clone())
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    let group = until_ready(&mut g, &req, &first).await;
    let gid = group.group_snapshot_id.clone();
    assert!(gid.starts_with("g1#mounted#"), "{gid}");
    assert_eq!(group.snapshots.len(), 3);
    let mut sources: Vec<String> = group
        .snapshots
        .iter()
        .map(|s| s.source_volume_id.clone())
        .collect();
    sources.sort();
    let mut expected = vec![data.clone(), wal.clone(), shard.clone()];
    expected.sort();
    assert_eq!(sources, expected);
    for s in &group.snapshots {
        assert!(s.ready_to_use && s.size_bytes > 0, "{s:?}");
        assert_eq!(s.group_snapshot_id, gid);
    }
    // The group's record is on the first volume's export (ids sorted: a's
    // come first), each member on its own volume's export.
    assert_eq!(
        std::fs::read_dir(a.join(".nfs-csi/groups"))
            .unwrap()
            .count(),
        1
    );
    assert!(!b.join(".nfs-csi/groups").exists());
    assert_eq!(
        std::fs::read_dir(a.join(".nfs-csi/snapshots"))
            .unwrap()
            .count(),
        2
    );
    assert_eq!(
        std::fs::read_dir(b.join(".nfs-csi/snapshots"))
            .unwrap()
            .count(),
        1
    );
    let log = d.log_text();
    assert_eq!(
        log.matches("group member walks released together").count(),
        1,
        "all three members started at one gate: {log}"
    );

    // Idempotent: the same name and volumes in another order.
    let again = g
        .create_volume_group_snapshot(group_req("grp-1", &[&wal, &data, &shard]))
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert_eq!(again, group);
    // The same name, another set: ALREADY_EXISTS.
    let err = g
        .create_volume_group_snapshot(group_req("grp-1", &[&data, &wal]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    // Requests that name no group: INVALID_ARGUMENT; an unknown volume: NOT_FOUND.
    for (req, code) in [
        (group_req("", &[&data]), Code::InvalidArgument),
        (group_req("x", &[]), Code::InvalidArgument),
        (group_req("x", &[&data, ""]), Code::InvalidArgument),
        (group_req("x", &[&data, &data]), Code::InvalidArgument),
        (group_req("x", &[&data, "nonsense"]), Code::NotFound),
        (
            group_req("x", &[&data, &data.replace("#data", "#absent")]),
            Code::NotFound,
        ),
    ] {
        let err = g
            .create_volume_group_snapshot(req.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {}", err.message());
    }
    let mut bad = group_req("x", &[&data]);
    bad.parameters = params(&[("colour", "red")]);
    let err = g.create_volume_group_snapshot(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // None of the refused calls left a group or a member behind.
    assert_eq!(
        std::fs::read_dir(a.join(".nfs-csi/groups"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(a.join(".nfs-csi/snapshots"))
            .unwrap()
            .count(),
        2
    );

    // Members are listed (and got) as ordinary snapshots of the group.
    let listed = c
        .list_snapshots(csi::ListSnapshotsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|e| e.snapshot.as_ref().unwrap().group_snapshot_id == gid)
    );
    let one = &group.snapshots[0];
    let got = c
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: one.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(&got, one);

    // GetVolumeGroupSnapshot: the group; a wrong member list or id is refused.
    let member_ids: Vec<String> = group
        .snapshots
        .iter()
        .map(|s| s.snapshot_id.clone())
        .collect();
    let get = |id: &str, ids: &[String]| csi::GetVolumeGroupSnapshotRequest {
        group_snapshot_id: id.into(),
        snapshot_ids: ids.to_vec(),
        ..Default::default()
    };
    let mut reversed = member_ids.clone();
    reversed.reverse();
    for ids in [vec![], reversed] {
        let got = g
            .get_volume_group_snapshot(get(&gid, &ids))
            .await
            .unwrap()
            .into_inner()
            .group_snapshot
            .unwrap();
        assert_eq!(got, group);
    }
    let err = g
        .get_volume_group_snapshot(get(&gid, &member_ids[..2]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    for id in ["", "nonsense", &gid.replace("grp-1", "grp-2")] {
        let err = g.get_volume_group_snapshot(get(id, &[])).await.unwrap_err();
        let want = if id.is_empty() {
            Code::InvalidArgument
        } else {
            Code::NotFound
        };
        assert_eq!(err.code(), want, "{id}: {}", err.message());
    }

    // Each member restores on its own into a new volume, with its content.
    for (i, s) in group.snapshots.iter().enumerate() {
        let (dir, content) = &want[s.source_volume_id.as_str()];
        let root = dir.parent().unwrap();
        let mut req = create_req(&format!("restored-{i}"), 0, ms(root));
        req.volume_content_source = Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Snapshot(
                csi::volume_content_source::SnapshotSource {
                    snapshot_id: s.snapshot_id.clone(),
                },
            )),
        });
        c.create_volume(req).await.unwrap();
        assert_eq!(&contents(&root.join(format!("restored-{i}"))), content);
    }

    // A member goes only with its group.
    let err = c
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: one.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("grp-1"), "{}", err.message());
    let del = |id: &str, ids: &[String]| csi::DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: id.into(),
        snapshot_ids: ids.to_vec(),
        ..Default::default()
    };
    let err = g
        .delete_volume_group_snapshot(del(&gid, &member_ids[1..]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert_eq!(
        c.list_snapshots(csi::ListSnapshotsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries
            .len(),
        3,
        "a refused delete removes nothing"
    );
    g.delete_volume_group_snapshot(del(&gid, &member_ids))
        .await
        .unwrap();
    assert!(
        c.list_snapshots(csi::ListSnapshotsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries
            .is_empty()
    );
    for s in &member_ids {
        let err = c
            .get_snapshot(csi::GetSnapshotRequest {
                snapshot_id: s.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    assert!(
        std::fs::read_dir(a.join(".nfs-csi/groups"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );
    let err = g
        .get_volume_group_snapshot(get(&gid, &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Deleting again, or an id that is not ours: success. No id: INVALID_ARGUMENT.
    for id in [gid.as_str(), "nonsense", &gid.replace("grp-1", "grp-9")] {
        g.delete_volume_group_snapshot(del(id, &[])).await.unwrap();
    }
    let err = g
        .delete_volume_group_snapshot(del("", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // The volumes themselves are untouched.
    for (dir, content) in want.values() {
        assert_eq!(&contents(dir), content);
    }
}

/// `n` MiB of incompressible data in `path`.
fn random_file(path: &Path, n: usize, seed: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..n {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
}

#[tokio::test]
async fn killed_mid_group_the_same_call_finishes_it() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (share(t.path(), "a"), share(t.path(), "b"));
    let mut d = Driver::start(
        t.path(),
        &["--mode", "controller", "--snapshot-threads", "1"],
    )
    .await;
    let mut c = d.controller().await;
    let one = create(&mut c, "one", &a).await;
    let two = create(&mut c, "two", &b).await;
    random_file(&a.join("one/random"), 8, 1);
    random_file(&b.join("two/random"), 8, 2);
    let want_one = contents(&a.join("one"));
    let mut req = group_req("slow", &[&one, &two]);
    req.parameters = params(&[("compressionLevel", "19")]);
    let mut g = d.group_controller().await;
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
    assert_eq!(first.snapshots.len(), 2);
    assert!(first.snapshots.iter().all(|s| !s.ready_to_use
        && s.group_snapshot_id == first.group_snapshot_id
        && s.creation_time == first.creation_time));
    // GetVolumeGroupSnapshot agrees while it is being written.
    let got = g
        .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: first.group_snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert!(!got.ready_to_use);
    assert_eq!(got.group_snapshot_id, first.group_snapshot_id);
    d.kill();
    // The record was written before the members; no member looks complete.
    let records: Vec<_> = [&a, &b]
        .iter()
        .filter_map(|r| std::fs::read_dir(r.join(".nfs-csi/groups")).ok())
        .flatten()
        .collect();
    assert_eq!(records.len(), 1);
    for root in [&a, &b] {
        for e in std::fs::read_dir(root.join(".nfs-csi/snapshots")).unwrap() {
            let dir = e.unwrap().path();
            assert!(dir.join("job.json").exists(), "{}", dir.display());
            assert!(!dir.join("manifest.json").exists(), "{}", dir.display());
        }
    }
    d.restart().await;
    let mut g = d.group_controller().await;
    let done = until_ready(&mut g, &req, &first).await;
    for s in &done.snapshots {
        assert_eq!(s.size_bytes, 8 << 20, "{s:?}");
        assert_eq!(s.group_snapshot_id, first.group_snapshot_id);
    }
    // A member of the finished group restores what the volume held.
    let mut c = d.controller().await;
    let member = done
        .snapshots
        .iter()
        .find(|s| s.source_volume_id == one)
        .unwrap();
    let mut r = create_req("back", 0, ms(&a));
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: member.snapshot_id.clone(),
            },
        )),
    });
    c.create_volume(r).await.unwrap();
    assert_eq!(contents(&a.join("back")), want_one);
    g.delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: done.group_snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    for root in [&a, &b] {
        assert_eq!(
            std::fs::read_dir(root.join(".nfs-csi/snapshots"))
                .unwrap()
                .count(),
            0
        );
    }
}

#[tokio::test]
async fn node_only_driver_has_no_group_controller() {
    let t = tempfile::tempdir().unwrap();
    let d = Driver::start(t.path(), &["--mode", "node"]).await;
    let err = d
        .group_controller()
        .await
        .group_controller_get_capabilities(csi::GroupControllerGetCapabilitiesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn a_failed_member_leaves_no_group_and_a_retry_starts_afresh() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "a");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let mut g = d.group_controller().await;
    let x = create(&mut c, "x", &root).await;
    let y = create(&mut c, "y", &root).await;
    std::fs::write(root.join("x/file"), b"x").unwrap();
    // y's directory vanishes behind the driver's back: its walk fails.
    std::fs::remove_dir(root.join("y")).unwrap();
    let req = group_req("broken", &[&x, &y]);
    let err = g
        .create_volume_group_snapshot(req.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert!(err.message().contains("broken"), "{}", err.message());
    // Nothing leaks: the CO never got a group id to delete.
    assert_eq!(
        std::fs::read_dir(root.join(".nfs-csi/groups"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(root.join(".nfs-csi/snapshots"))
            .unwrap()
            .count(),
        0
    );
    // Fixed, the same call makes the group.
    std::fs::create_dir(root.join("y")).unwrap();
    let group = g
        .create_volume_group_snapshot(req)
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert!(group.ready_to_use, "{group:?}");
    assert_eq!(group.snapshots.len(), 2);
}

#[tokio::test]
async fn a_delete_cut_short_is_finished_by_the_next_one() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "a");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let mut g = d.group_controller().await;
    let x = create(&mut c, "x", &root).await;
    let y = create(&mut c, "y", &root).await;
    let req = group_req("half", &[&x, &y]);
    let group = g
        .create_volume_group_snapshot(req.clone())
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert!(group.ready_to_use);
    // What a delete that died after its first member leaves: the record
    // marked, one member gone.
    let groups = root.join(".nfs-csi/groups");
    let dir = std::fs::read_dir(&groups)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("group.json")).unwrap()).unwrap();
    rec["deleting"] = serde_json::Value::Bool(true);
    std::fs::write(dir.join("group.json"), rec.to_string()).unwrap();
    c.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: group.snapshots[0].snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .expect("a marked group's members may go");
    // The group is going: Get says NOT_FOUND, Create FAILED_PRECONDITION.
    let err = g
        .get_volume_group_snapshot(csi::GetVolumeGroupSnapshotRequest {
            group_snapshot_id: group.group_snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = g
        .create_volume_group_snapshot(req.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    // The next delete finishes: the other member, then the record.
    g.delete_volume_group_snapshot(csi::DeleteVolumeGroupSnapshotRequest {
        group_snapshot_id: group.group_snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read_dir(&groups).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(root.join(".nfs-csi/snapshots"))
            .unwrap()
            .count(),
        0
    );
    // and the name is free again
    let again = g
        .create_volume_group_snapshot(req)
        .await
        .unwrap()
        .into_inner()
        .group_snapshot
        .unwrap();
    assert!(again.ready_to_use);
}
