//! The real binary's Identity and Controller services over its socket, on
//! `mountedShare` exports in temporary directories.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use common::*;
use nfs_csi::grpc::csi::v1 as csi;
use tonic::Code;

fn share(t: &Path, name: &str) -> String {
    let p = t.join(name);
    std::fs::create_dir_all(&p).unwrap();
    p.display().to_string()
}

fn ms(root: &str) -> Vec<(&'static str, String)> {
    vec![("mountedShare", root.to_string())]
}

fn p(kv: Vec<(&str, String)>) -> std::collections::HashMap<String, String> {
    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

#[tokio::test]
async fn identity_reports_name_version_capabilities_and_readiness() {
    let t = tempfile::tempdir().unwrap();
    let d = Driver::start(
        t.path(),
        &["--mode", "controller", "--driver-name", "nfs.example.org"],
    )
    .await;
    let mut id = d.identity().await;
    let info = id
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "nfs.example.org");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = id
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    use csi::plugin_capability::{Type, service, volume_expansion};
    let types: Vec<_> = caps.into_iter().filter_map(|c| c.r#type).collect();
    assert!(
        types.contains(&Type::Service(csi::plugin_capability::Service {
            r#type: service::Type::ControllerService as i32
        }))
    );
    assert!(types.contains(&Type::VolumeExpansion(
        csi::plugin_capability::VolumeExpansion {
            r#type: volume_expansion::Type::Online as i32
        }
    )));
    let ready = id.probe(csi::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(ready.ready, Some(true));
    // ControllerPublish is not offered.
    let err = d
        .controller()
        .await
        .controller_publish_volume(csi::ControllerPublishVolumeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn node_only_driver_has_no_controller() {
    let t = tempfile::tempdir().unwrap();
    let d = Driver::start(t.path(), &["--mode", "node"]).await;
    let caps = d
        .identity()
        .await
        .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    assert!(caps.is_empty(), "{caps:?}");
    let err = d
        .controller()
        .await
        .create_volume(create_req("v", 1, params(&[])))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn create_is_idempotent_and_delete_removes_only_the_volume() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let mut req = create_req("pvc-1", 1 << 30, p(ms(&root)));
    req.parameters
        .insert("mountPermissions".into(), "0775".into());
    let v1 = c
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v1.capacity_bytes, 1 << 30);
    let dir = Path::new(&root).join("pvc-1");
    assert!(dir.is_dir());
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777,
        0o775
    );
    std::fs::write(dir.join("data"), b"keep me").unwrap();
    // same request again: the same volume, data untouched
    let v2 = c
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v1, v2);
    assert_eq!(std::fs::read(dir.join("data")).unwrap(), b"keep me");
    // same name, incompatible capacity or parameters
    let mut bigger = req.clone();
    bigger.capacity_range = Some(csi::CapacityRange {
        required_bytes: 2 << 30,
        limit_bytes: 0,
    });
    assert_eq!(
        c.create_volume(bigger).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    let mut other = req.clone();
    other.parameters.insert("onDelete".into(), "retain".into());
    assert_eq!(
        c.create_volume(other).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    // a second volume beside it
    let v3 = c
        .create_volume(create_req("pvc-2", 1 << 20, p(ms(&root))))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v1.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!dir.exists());
    assert!(Path::new(&root).join("pvc-2").is_dir());
    // deleting again, or an id that is not ours, succeeds
    for id in [v1.volume_id.as_str(), "garbage", "v2#mounted#/x#y"] {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert_eq!(
        c.delete_volume(csi::DeleteVolumeRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    // an export that is not there: an error to retry, not a silent success
    // that would orphan the directory
    let err = c
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: "v1#mounted#/nowhere#x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("/nowhere"), "{}", err.message());
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v3.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_requests_get_invalid_argument_and_touch_nothing() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let outside = share(t.path(), "outside");
    std::fs::write(Path::new(&outside).join("f"), b"x").unwrap();
    let before = snapshot_tree(t.path().join("outside").as_path());
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let mut cases: Vec<(csi::CreateVolumeRequest, &str)> = Vec::new();
    let base = || create_req("pvc-x", 1, p(ms(&root)));
    let mut r = base();
    r.name.clear();
    cases.push((r, "name"));
    let mut r = base();
    r.volume_capabilities.clear();
    cases.push((r, "volume_capabilities"));
    let mut r = base();
    r.volume_capabilities = vec![csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Block(
            csi::volume_capability::BlockVolume {},
        )),
        access_mode: rwx().access_mode,
    }];
    cases.push((r, "block"));
    let mut r = base();
    r.parameters.insert("shrae".into(), "/typo".into());
    cases.push((r, "\"shrae\""));
    for tpl in [
        "../outside",
        "/abs",
        "a//b",
        "${pvc.metadata.namespace}/x",
        "x/..",
        "${pvc.metadata.name}",
    ] {
        let mut r = base();
        r.parameters.insert("subDir".into(), tpl.into());
        r.parameters
            .insert("csi.storage.k8s.io/pvc/namespace".into(), "..".into());
        r.parameters
            .insert("csi.storage.k8s.io/pvc/name".into(), "../../outside".into());
        cases.push((r, "subDir"));
    }
    let mut r = base();
    r.parameters.insert("onDelete".into(), "shred".into());
    cases.push((r, "onDelete"));
    let mut r = base();
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: 10,
        limit_bytes: 5,
    });
    cases.push((r, "limit_bytes"));
    let mut r = base();
    r.parameters = p(vec![("server", "nfs.example".into())]);
    cases.push((r, "share"));
    for (req, needle) in cases {
        let err = c.create_volume(req).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{needle}: {}",
            err.message()
        );
        assert!(
            err.message().contains(needle),
            "{needle}: {}",
            err.message()
        );
    }
    assert!(
        snapshot_tree(Path::new(&root)).is_empty(),
        "{:?}",
        snapshot_tree(Path::new(&root))
    );
    assert_eq!(snapshot_tree(Path::new(&outside)), before);
}

#[tokio::test]
async fn subdir_templates_and_nested_delete_keeps_parents() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let mut kv = ms(&root);
    kv.push((
        "subDir",
        "${pvc.metadata.namespace}/${pvc.metadata.name}-${pv.metadata.name}".into(),
    ));
    kv.push(("csi.storage.k8s.io/pvc/name", "data".into()));
    kv.push(("csi.storage.k8s.io/pvc/namespace", "team-a".into()));
    kv.push(("csi.storage.k8s.io/pv/name", "pvc-77".into()));
    let v = c
        .create_volume(create_req("pvc-77", 1, p(kv)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        v.volume_context.get("subDir").unwrap(),
        "team-a/data-pvc-77"
    );
    let dir = Path::new(&root).join("team-a/data-pvc-77");
    assert!(dir.is_dir());
    std::fs::write(Path::new(&root).join("team-a/other-file"), b"x").unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!dir.exists());
    assert!(Path::new(&root).join("team-a/other-file").exists());
}

#[tokio::test]
async fn delete_never_follows_symlinks_and_forged_ids_delete_nothing() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let victim = share(t.path(), "victim");
    std::fs::write(Path::new(&victim).join("precious"), b"1").unwrap();
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let a = c
        .create_volume(create_req("va", 1, p(ms(&root))))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let b = c
        .create_volume(create_req("vb", 1, p(ms(&root))))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let adir = Path::new(&root).join("va");
    std::fs::write(Path::new(&root).join("vb/data"), b"b's data").unwrap();
    symlink("/", adir.join("root")).unwrap();
    symlink(&victim, adir.join("victim")).unwrap();
    symlink(Path::new(&root).join("vb"), adir.join("sibling")).unwrap();
    std::fs::create_dir_all(adir.join("deep/er")).unwrap();
    symlink(
        Path::new(&victim).join("precious"),
        adir.join("deep/er/file-link"),
    )
    .unwrap();
    let before_victim = snapshot_tree(Path::new(&victim));
    // forged ids aimed at other places: success, nothing removed
    for forged in [
        format!("v1#mounted#{}#precious", victim),
        format!("v1#mounted#{}#va", t.path().display()),
        "v1#mounted#/#etc".to_string(),
        format!("v1#mounted#{root}#va/../../victim"),
        format!("v1#mounted#{root}#va%2F..%2F..%2Fvictim"),
    ] {
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: forged.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{forged}: {e}"));
    }
    assert!(adir.is_dir());
    assert!(Path::new("/etc/hostname").exists() || Path::new("/etc/passwd").exists());
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: a.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!adir.exists());
    assert_eq!(snapshot_tree(Path::new(&victim)), before_victim);
    assert_eq!(
        std::fs::read(Path::new(&root).join("vb/data")).unwrap(),
        b"b's data"
    );
    let _ = b;
}

#[tokio::test]
async fn retain_and_archive_keep_the_data() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    for (name, policy) in [
        ("keep", "retain"),
        ("arch", "archive"),
        ("arch2", "archive"),
    ] {
        let mut kv = ms(&root);
        kv.push(("onDelete", policy.into()));
        kv.push(("subDir", "same-for-archives".into()));
        if policy == "retain" {
            kv.pop();
        }
        let v = c
            .create_volume(create_req(name, 1, p(kv)))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let dir = Path::new(&root).join(v.volume_context.get("subDir").unwrap());
        std::fs::write(dir.join("data"), name.as_bytes()).unwrap();
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: v.volume_id,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert_eq!(
        std::fs::read(Path::new(&root).join("keep/data")).unwrap(),
        b"keep"
    );
    // two archives of the same directory: both kept, none overwritten
    let mut archived: Vec<Vec<u8>> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("archived-same-for-archives")
        })
        .map(|e| std::fs::read(e.path().join("data")).unwrap())
        .collect();
    archived.sort();
    assert_eq!(archived, vec![b"arch".to_vec(), b"arch2".to_vec()]);
    assert!(!Path::new(&root).join("same-for-archives").exists());
}

#[tokio::test]
async fn list_volumes_pages_across_exports_and_rejects_bad_tokens() {
    let t = tempfile::tempdir().unwrap();
    let a = share(t.path(), "a");
    let b = share(t.path(), "b");
    // a is configured; b becomes known when a volume is provisioned on it
    let d = Driver::start(t.path(), &["--mode", "controller", "--export", &a]).await;
    let mut c = d.controller().await;
    let mut want = HashSet::new();
    for i in 0..6 {
        // no export in the parameters: the single configured one
        let v = c
            .create_volume(create_req(&format!("a-{i}"), 1, params(&[])))
            .await
            .unwrap();
        want.insert(v.into_inner().volume.unwrap().volume_id);
    }
    for i in 0..3 {
        let v = c
            .create_volume(create_req(&format!("b-{i}"), 1, p(ms(&b))))
            .await
            .unwrap();
        want.insert(v.into_inner().volume.unwrap().volume_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 3,
                starting_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.entries.len() <= 3);
        pages += 1;
        for e in r.entries {
            let cond = e.status.unwrap().volume_condition.unwrap();
            assert!(!cond.abnormal, "{cond:?}");
            seen.push(e.volume.unwrap().volume_id);
        }
        if r.next_token.is_empty() {
            break;
        }
        token = r.next_token;
        assert!(pages < 10, "paging does not end");
    }
    // 6 on a (two full pages ending exactly at a's end), then 3 on b
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 9, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), want);
    // all at once
    let all = c
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), 9);
    assert!(all.next_token.is_empty());
    for bad in ["nonsense", "0000000000000000/x.json", "../x"] {
        let err = c
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 1,
                starting_token: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Aborted, "{bad}");
    }
    // knowledge of export b survives a restart
    let mut d = d;
    d.restart().await;
    let mut c = d.controller().await;
    let all = c
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entries.len(), 9);
}

#[tokio::test]
async fn capacity_expand_get_and_validate() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let cap = c
        .get_capacity(csi::GetCapacityRequest {
            parameters: p(ms(&root)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let st = nix::sys::statvfs::statvfs(Path::new(&root)).unwrap();
    let avail = st.blocks_available() as i64 * st.fragment_size() as i64;
    assert!(cap.available_capacity > 0);
    assert!(
        (cap.available_capacity - avail).abs() < 256 << 20,
        "{} vs {avail}",
        cap.available_capacity
    );
    assert_eq!(
        c.get_capacity(csi::GetCapacityRequest {
            parameters: p(vec![(
                "mountedShare",
                t.path().join("missing").display().to_string()
            )]),
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        Code::FailedPrecondition
    );
    let v = c
        .create_volume(create_req("pvc-e", 1 << 20, p(ms(&root))))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let r = c
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 5 << 20,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 5 << 20);
    assert!(!r.node_expansion_required);
    let got = c
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: v.volume_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes, 5 << 20);
    assert!(!got.status.unwrap().volume_condition.unwrap().abnormal);
    // validate: mount ok, block not confirmed, unknown volume NOT_FOUND
    let ok = c
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![rwx()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some());
    let block = c
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![csi::VolumeCapability {
                access_type: Some(csi::volume_capability::AccessType::Block(
                    csi::volume_capability::BlockVolume {},
                )),
                access_mode: rwx().access_mode,
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(block.confirmed.is_none() && block.message.contains("block"));
    for id in [format!("v1#mounted#{root}#nope"), "junk".to_string()] {
        let err = c
            .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: id,
                volume_capabilities: vec![rwx()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    // the directory vanishes: abnormal condition
    std::fs::remove_dir(Path::new(&root).join("pvc-e")).unwrap();
    let got = c
        .controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: v.volume_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let cond = got.status.unwrap().volume_condition.unwrap();
    assert!(
        cond.abnormal && cond.message.contains("missing"),
        "{cond:?}"
    );
    let err = c
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: format!("v1#mounted#{root}#nope"),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 1,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn restart_between_create_and_delete_with_no_local_state() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let mut d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let v = d
        .controller()
        .await
        .create_volume(create_req("pvc-r", 1, p(ms(&root))))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    d.kill();
    std::fs::remove_dir_all(&d.work_dir).unwrap();
    d.restart().await;
    let mut c = d.controller().await;
    // idempotent create after restart, then delete
    let again = c
        .create_volume(create_req("pvc-r", 1, p(ms(&root))))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.volume.unwrap().volume_id, v.volume_id);
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(!Path::new(&root).join("pvc-r").exists());
}

#[tokio::test]
async fn concurrent_creates_never_race() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut c = d.controller().await;
        let req = create_req("pvc-c", 1, p(ms(&root)));
        tasks.push(tokio::spawn(async move { c.create_volume(req).await }));
    }
    let mut ids = HashSet::new();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(r) => {
                ok += 1;
                ids.insert(r.into_inner().volume.unwrap().volume_id);
            }
            Err(e) => assert_eq!(e.code(), Code::Aborted, "{e}"),
        }
    }
    assert!(ok >= 1);
    assert_eq!(ids.len(), 1);
    let records = std::fs::read_dir(Path::new(&root).join(".nfs-csi/volumes"))
        .unwrap()
        .count();
    assert_eq!(records, 1);
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_stale_socket_is_replaced() {
    let t = tempfile::tempdir().unwrap();
    let mut d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let st = d.terminate();
    assert!(st.success(), "{st}");
    assert!(!d.socket.exists(), "socket removed on exit");
    // a stale socket file left by a crash is replaced
    let l = std::os::unix::net::UnixListener::bind(&d.socket).unwrap();
    drop(l);
    assert!(d.socket.exists());
    d.restart().await;
    // a second driver on the same live socket refuses to start
    let out = std::process::Command::new(driver_bin())
        .args(["serve", "--node-id", "n", "--endpoint"])
        .arg(format!("unix://{}", d.socket.display()))
        .arg("--work-dir")
        .arg(t.path().join("w2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another process is serving"));
    d.identity()
        .await
        .probe(csi::ProbeRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_creates_of_different_volumes_all_succeed() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut c = d.controller().await;
        let req = create_req(&format!("pvc-{i}"), 1, p(ms(&root)));
        tasks.push(tokio::spawn(async move { c.create_volume(req).await }));
    }
    for task in tasks {
        // Calls on the same export share its health probe; none is refused.
        task.await.unwrap().unwrap();
    }
    let records = std::fs::read_dir(Path::new(&root).join(".nfs-csi/volumes"))
        .unwrap()
        .count();
    assert_eq!(records, 32);
}

#[tokio::test]
async fn directories_the_driver_did_not_make_are_never_deleted_and_volumes_do_not_nest() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    std::fs::create_dir_all(Path::new(&root).join("legacy")).unwrap();
    std::fs::write(Path::new(&root).join("legacy/a.txt"), b"old data").unwrap();
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    // a PVC whose subDir lands on existing data adopts it...
    let mut kv = ms(&root);
    kv.push(("subDir", "legacy".into()));
    let v = c
        .create_volume(create_req("pvc-l", 1, p(kv)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    // ...and deleting it (onDelete defaults to delete) keeps the data
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(Path::new(&root).join("legacy/a.txt")).unwrap(),
        b"old data"
    );
    // a volume inside another volume's directory is refused
    c.create_volume(create_req("outer", 1, p(ms(&root))))
        .await
        .unwrap();
    let mut kv = ms(&root);
    kv.push(("subDir", "outer/inner".into()));
    let err = c
        .create_volume(create_req("inner", 1, p(kv)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("inside volume"), "{}", err.message());
    assert!(!Path::new(&root).join("outer/inner").exists());
}

fn code_of<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn a_volume_may_not_contain_another_volume() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let with_sub = |sub: &str, on_delete: &str| {
        let mut kv = ms(&root);
        kv.push(("subDir", sub.into()));
        kv.push(("onDelete", on_delete.into()));
        p(kv)
    };
    c.create_volume(create_req("a", 1, with_sub("team/a", "delete")))
        .await
        .unwrap();
    std::fs::write(Path::new(&root).join("team/a/secret"), b"a's data").unwrap();
    let before = snapshot_tree(Path::new(&root).join("team").as_path());
    let err = c
        .create_volume(create_req("b", 1, with_sub("team", "archive")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    for needle in ["\"team\"", "\"a\"", "\"team/a\"", "contains"] {
        assert!(err.message().contains(needle), "{}", err.message());
    }
    assert_eq!(
        snapshot_tree(Path::new(&root).join("team").as_path()),
        before
    );
    // nor may the export's top directory be named through a deeper volume
    let err = c
        .create_volume(create_req("a2", 1, with_sub("team/a/deeper", "delete")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    // concurrent overlapping creates: never both
    for round in 0..5 {
        let (outer, inner) = (format!("o{round}"), format!("o{round}/i"));
        let (mut c1, mut c2) = (d.controller().await, d.controller().await);
        let r1 = create_req(&format!("outer-{round}"), 1, with_sub(&outer, "delete"));
        let r2 = create_req(&format!("inner-{round}"), 1, with_sub(&inner, "delete"));
        let (a, b) = tokio::join!(c1.create_volume(r1), c2.create_volume(r2));
        assert!(
            !(a.is_ok() && b.is_ok()),
            "both {outer} and {inner} were created"
        );
    }
    assert_eq!(
        std::fs::read(Path::new(&root).join("team/a/secret")).unwrap(),
        b"a's data"
    );
}

#[tokio::test]
async fn concurrent_creates_on_new_roots_survive_a_restart() {
    let t = tempfile::tempdir().unwrap();
    let mut d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut tasks = Vec::new();
    let mut roots = Vec::new();
    for i in 0..40 {
        let root = share(t.path(), &format!("root-{i}"));
        roots.push(root.clone());
        let mut c = d.controller().await;
        let req = create_req(&format!("pvc-{i}"), 1, p(ms(&root)));
        tasks.push(tokio::spawn(async move { c.create_volume(req).await }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        ids.insert(
            task.await
                .unwrap()
                .unwrap()
                .into_inner()
                .volume
                .unwrap()
                .volume_id,
        );
    }
    d.restart().await;
    let listed: HashSet<String> = d
        .controller()
        .await
        .list_volumes(csi::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries
        .into_iter()
        .map(|e| e.volume.unwrap().volume_id)
        .collect();
    assert_eq!(listed.len(), 40, "{listed:?}");
    assert_eq!(listed, ids);
}

#[tokio::test]
async fn a_double_slash_anywhere_is_refused_without_panic() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "all"]).await;
    let mut c = d.controller().await;
    let mut n = d.node().await;
    let ok_or = |allowed: &[Code], got: Code, what: &str| {
        assert!(allowed.contains(&got), "{what}: {got:?}");
    };
    let bad_vol = "v1#mounted#//#x".to_string();
    let bad_snap = "s1#mounted#//#x".to_string();
    for (k, v) in [("mountedShare", "//"), ("share", "//")] {
        let mut kv = vec![(k, v.to_string())];
        if k == "share" {
            kv.push(("server", "nfs.example".into()));
        }
        let got = code_of(c.create_volume(create_req("v", 1, p(kv.clone()))).await);
        ok_or(&[Code::InvalidArgument], got, "CreateVolume");
        let got = code_of(
            c.get_capacity(csi::GetCapacityRequest {
                parameters: p(kv.clone()),
                ..Default::default()
            })
            .await,
        );
        ok_or(&[Code::InvalidArgument], got, "GetCapacity");
        let got = code_of(
            c.create_snapshot(csi::CreateSnapshotRequest {
                name: "s".into(),
                source_volume_id: format!("v1#mounted#{root}#x"),
                parameters: p(kv),
                ..Default::default()
            })
            .await,
        );
        ok_or(&[Code::InvalidArgument], got, "CreateSnapshot parameters");
    }
    let mut subdir = ms(&root);
    subdir.push(("subDir", "//".into()));
    let got = code_of(c.create_volume(create_req("v", 1, p(subdir))).await);
    ok_or(&[Code::InvalidArgument], got, "CreateVolume subDir");
    // DeleteVolume of an id the driver cannot have issued: nothing to delete.
    let got = code_of(
        c.delete_volume(csi::DeleteVolumeRequest {
            volume_id: bad_vol.clone(),
            ..Default::default()
        })
        .await,
    );
    ok_or(&[Code::Ok], got, "DeleteVolume");
    let got = code_of(
        c.controller_get_volume(csi::ControllerGetVolumeRequest {
            volume_id: bad_vol.clone(),
        })
        .await,
    );
    ok_or(&[Code::NotFound], got, "ControllerGetVolume");
    let got = code_of(
        c.validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: bad_vol.clone(),
            volume_capabilities: vec![rwx()],
            ..Default::default()
        })
        .await,
    );
    ok_or(&[Code::NotFound], got, "ValidateVolumeCapabilities");
    let got = code_of(
        c.controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: bad_vol.clone(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 1,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await,
    );
    ok_or(&[Code::NotFound], got, "ControllerExpandVolume");
    let got = code_of(
        c.create_snapshot(csi::CreateSnapshotRequest {
            name: "s".into(),
            source_volume_id: bad_vol.clone(),
            ..Default::default()
        })
        .await,
    );
    ok_or(&[Code::NotFound], got, "CreateSnapshot");
    let got = code_of(
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: bad_snap.clone(),
            ..Default::default()
        })
        .await,
    );
    ok_or(&[Code::Ok], got, "DeleteSnapshot");
    let got = code_of(
        c.list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: bad_snap.clone(),
            ..Default::default()
        })
        .await,
    );
    ok_or(&[Code::Ok], got, "ListSnapshots");
    let mut restore = create_req("r", 1, p(ms(&root)));
    restore.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: bad_snap.clone(),
            },
        )),
    });
    let got = code_of(c.create_volume(restore).await);
    ok_or(&[Code::NotFound], got, "CreateVolume from snapshot");
    let mut clone = create_req("r", 1, p(ms(&root)));
    clone.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: bad_vol.clone(),
            },
        )),
    });
    let got = code_of(c.create_volume(clone).await);
    ok_or(&[Code::NotFound], got, "CreateVolume from volume");
    let staging = t.path().join("staging").display().to_string();
    let target = t.path().join("target").display().to_string();
    for (vol, stage_path, target_path) in [
        (bad_vol.as_str(), staging.as_str(), target.as_str()),
        ("v1#mounted#/srv#x", "//", "//"),
    ] {
        let got = code_of(
            n.node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: stage_path.into(),
                volume_capability: Some(rwx()),
                ..Default::default()
            })
            .await,
        );
        ok_or(
            &[Code::InvalidArgument, Code::NotFound],
            got,
            "NodeStageVolume",
        );
        let got = code_of(
            n.node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: stage_path.into(),
                target_path: target_path.into(),
                volume_capability: Some(rwx()),
                ..Default::default()
            })
            .await,
        );
        ok_or(
            &[
                Code::InvalidArgument,
                Code::NotFound,
                Code::FailedPrecondition,
            ],
            got,
            "NodePublishVolume",
        );
        let got = code_of(
            n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: vol.into(),
                target_path: target_path.into(),
            })
            .await,
        );
        ok_or(
            &[Code::Ok, Code::InvalidArgument, Code::NotFound],
            got,
            "NodeUnpublishVolume",
        );
        let got = code_of(
            n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: stage_path.into(),
            })
            .await,
        );
        ok_or(
            &[Code::Ok, Code::InvalidArgument, Code::NotFound],
            got,
            "NodeUnstageVolume",
        );
        let got = code_of(
            n.node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: vol.into(),
                volume_path: target_path.into(),
                ..Default::default()
            })
            .await,
        );
        ok_or(
            &[Code::InvalidArgument, Code::NotFound],
            got,
            "NodeGetVolumeStats",
        );
    }
    d.identity()
        .await
        .probe(csi::ProbeRequest {})
        .await
        .unwrap();
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
    // a bad --export is a clean start-up error, not an abort
    for flag in ["//", "h://", "/proc/self/root", "/etc"] {
        let out = std::process::Command::new(driver_bin())
            .args(["serve", "--node-id", "n", "--endpoint"])
            .arg(format!("unix://{}", t.path().join("x.sock").display()))
            .arg("--work-dir")
            .arg(t.path().join("w2"))
            .args(["--export", flag])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{flag}: {stderr}");
        assert!(
            stderr.contains("--export") && !stderr.contains("panicked"),
            "{flag}: {stderr}"
        );
    }
}

#[tokio::test]
async fn huge_inputs_get_short_messages() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    for len in [10_000, 3 << 20] {
        let mut kv = ms(&root);
        kv.push(("subDir", "a".repeat(len)));
        let err = c
            .create_volume(create_req("big", 1, p(kv)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{len}");
        assert!(
            err.message().len() <= 1024 && err.message().contains(&format!("({len} bytes)")),
            "{len}: {} bytes: {}",
            err.message().len(),
            &err.message()[..err.message().len().min(300)]
        );
        let err = c
            .controller_get_volume(csi::ControllerGetVolumeRequest {
                volume_id: format!("v1#mounted#{root}#{}", "b".repeat(len)),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{len}");
        assert!(err.message().len() <= 1024, "{len}");
    }
    let log = std::fs::metadata(t.path().join("driver.log"))
        .unwrap()
        .len();
    assert!(log < 200_000, "log grew to {log} bytes");
}

#[tokio::test]
async fn get_capacity_without_parameters() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let none = d
        .controller()
        .await
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.available_capacity, 0);
    drop(d);
    let t2 = tempfile::tempdir().unwrap();
    let d = Driver::start(t2.path(), &["--mode", "controller", "--export", &root]).await;
    let dflt = d
        .controller()
        .await
        .get_capacity(csi::GetCapacityRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(dflt.available_capacity > 0, "{dflt:?}");
}

#[tokio::test]
async fn system_symlinked_and_unlisted_share_roots_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let allowed = share(t.path(), "allowed");
    let real = share(t.path(), "allowed/real");
    let other = share(t.path(), "other");
    symlink(&real, Path::new(&allowed).join("link")).unwrap();
    let d = Driver::start(
        t.path(),
        &["--mode", "all", "--allowed-share-root", &allowed],
    )
    .await;
    let mut c = d.controller().await;
    let host_meta_before = Path::new("/.nfs-csi").exists();
    let etc_before = snapshot_tree(Path::new("/etc/ssl"));
    for root in [
        "/proc/self/root",
        "/etc",
        "/",
        "/var/lib/kubelet",
        "/usr/share",
        &other,
    ] {
        let mut kv = ms(root);
        kv.push(("subDir", "ssl".into()));
        let err = c
            .create_volume(create_req("v", 1, p(kv)))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{root}: {}",
            err.message()
        );
        assert!(err.message().contains("mountedShare"), "{}", err.message());
    }
    assert_eq!(Path::new("/.nfs-csi").exists(), host_meta_before);
    assert_eq!(snapshot_tree(Path::new("/etc/ssl")), etc_before);
    // a root reached through a symlink is refused, and nothing is made
    let linked = format!("{allowed}/link");
    let err = c
        .create_volume(create_req("v", 1, p(ms(&linked))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(snapshot_tree(Path::new(&real)).is_empty());
    // the node refuses such a volume id too
    let staging = t.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    for id in [
        "v1#mounted#/proc/self/root#root".to_string(),
        format!("v1#mounted#{linked}#x"),
    ] {
        let got = code_of(
            d.node()
                .await
                .node_stage_volume(csi::NodeStageVolumeRequest {
                    volume_id: id.clone(),
                    staging_target_path: staging.display().to_string(),
                    volume_capability: Some(rwx()),
                    ..Default::default()
                })
                .await,
        );
        assert!(
            matches!(got, Code::NotFound | Code::FailedPrecondition),
            "{id}: {got:?}"
        );
        assert!(mounts_under(&staging).is_empty(), "{id}");
    }
    // below an allowed root: fine
    c.create_volume(create_req("v", 1, p(ms(&real))))
        .await
        .unwrap();
    assert!(Path::new(&real).join("v").is_dir());
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn modify_req(volume_id: &str, kv: &[(&str, &str)]) -> csi::ControllerModifyVolumeRequest {
    csi::ControllerModifyVolumeRequest {
        volume_id: volume_id.to_string(),
        mutable_parameters: params(kv),
        ..Default::default()
    }
}

#[tokio::test]
async fn get_and_modify_are_advertised() {
    let t = tempfile::tempdir().unwrap();
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let caps = d
        .controller()
        .await
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    use csi::controller_service_capability::{Type, rpc};
    let rpcs: HashSet<i32> = caps
        .into_iter()
        .filter_map(|c| match c.r#type {
            Some(Type::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    assert!(rpcs.contains(&(rpc::Type::GetSnapshot as i32)), "{rpcs:?}");
    assert!(rpcs.contains(&(rpc::Type::ModifyVolume as i32)), "{rpcs:?}");
}

#[tokio::test]
async fn get_snapshot_returns_what_list_snapshots_gives() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let v = c
        .create_volume(create_req("src", 1 << 20, p(ms(&root))))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    std::fs::write(Path::new(&root).join("src/data"), b"snapshot me").unwrap();
    let created = c
        .create_snapshot(csi::CreateSnapshotRequest {
            name: "snap-1".into(),
            source_volume_id: v.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(
        created.ready_to_use,
        "a tiny volume's archive is done at once"
    );
    let got = c
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: created.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let listed = c
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: created.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(listed.len(), 1);
    assert_eq!(Some(&got), listed[0].snapshot.as_ref());
    assert_eq!(got, created);
    assert_eq!(got.source_volume_id, v.volume_id);
    assert!(got.size_bytes >= 11, "{got:?}");
    // Deleted: absent.
    c.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: created.snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let get = |id: String| csi::GetSnapshotRequest {
        snapshot_id: id,
        ..Default::default()
    };
    let err = c.get_snapshot(get(created.snapshot_id.clone())).await;
    assert_eq!(code_of(err), Code::NotFound);
    // An id of ours on a known export, never created: NOT_FOUND too.
    let other = created.snapshot_id.replace("snap-1", "snap-never");
    assert_ne!(other, created.snapshot_id);
    assert_eq!(code_of(c.get_snapshot(get(other)).await), Code::NotFound);
    // Not an id of ours: NOT_FOUND; empty: INVALID_ARGUMENT.
    for bad in ["nonsense", "v1#mounted#/nowhere", &"x".repeat(100_000)] {
        let err = c.get_snapshot(get(bad.to_string())).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{bad:.40}: {err:?}");
        assert!(err.message().len() < 600, "{}", err.message().len());
    }
    let err = c.get_snapshot(get(String::new())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn modify_volume_changes_delete_policy_and_mode() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let mut kv = ms(&root);
    kv.push(("mountPermissions", "0700".into()));
    let v = c
        .create_volume(create_req("mod", 1 << 20, p(kv.clone())))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let dir = Path::new(&root).join("mod");
    assert_eq!(mode_of(&dir), 0o700);
    std::fs::write(dir.join("data"), b"keep me").unwrap();
    // onDelete retain and a new mode, twice: the same outcome.
    for _ in 0..2 {
        c.controller_modify_volume(modify_req(
            &v.volume_id,
            &[("onDelete", "retain"), ("mountPermissions", "2775")],
        ))
        .await
        .unwrap();
        assert_eq!(mode_of(&dir), 0o2775);
    }
    // Only one key: the other stays as it is.
    c.controller_modify_volume(modify_req(&v.volume_id, &[("mountPermissions", "0750")]))
        .await
        .unwrap();
    assert_eq!(mode_of(&dir), 0o750);
    // A repeated CreateVolume with the same parameters is still the same volume.
    let again = c
        .create_volume(create_req("mod", 1 << 20, p(kv)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, v.volume_id);
    // Refused: an unknown key (named), a bad value, no id, a foreign id,
    // an id of ours with no volume. Nothing changes.
    let err = c
        .controller_modify_volume(modify_req(
            &v.volume_id,
            &[("onDelete", "delete"), ("subDir", "elsewhere")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("subDir"), "{}", err.message());
    let err = c
        .controller_modify_volume(modify_req(&v.volume_id, &[("mountPermissions", "u+rwx")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("mountPermissions"),
        "{}",
        err.message()
    );
    let err = c
        .controller_modify_volume(modify_req("", &[("onDelete", "retain")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .controller_modify_volume(modify_req("nonsense", &[("onDelete", "retain")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let absent = v.volume_id.replace("#mod", "#never-made");
    assert_ne!(absent, v.volume_id);
    let err = c
        .controller_modify_volume(modify_req(&absent, &[("onDelete", "retain")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(!Path::new(&root).join("never-made").exists());
    assert_eq!(mode_of(&dir), 0o750);
    // The policy set by ModifyVolume is the one DeleteVolume applies.
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(dir.join("data")).unwrap(), b"keep me");
    let err = c
        .controller_modify_volume(modify_req(&v.volume_id, &[("onDelete", "retain")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "a deleted volume is gone");
}

#[tokio::test]
async fn modify_volume_never_follows_a_symlink() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let v = c
        .create_volume(create_req("sym", 1 << 20, p(ms(&root))))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let dir = Path::new(&root).join("sym");
    std::fs::remove_dir(&dir).unwrap();
    symlink(&outside, &dir).unwrap();
    let err = c
        .controller_modify_volume(modify_req(&v.volume_id, &[("mountPermissions", "0777")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(mode_of(&outside), 0o755);
    // Gone altogether: FAILED_PRECONDITION, nothing created.
    std::fs::remove_file(&dir).unwrap();
    let err = c
        .controller_modify_volume(modify_req(&v.volume_id, &[("mountPermissions", "0777")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(!dir.exists());
}

#[tokio::test]
async fn create_volume_takes_mutable_parameters() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    // Mutable parameters take precedence over `parameters` (CSI spec).
    let mut kv = ms(&root);
    kv.push(("onDelete", "delete".into()));
    kv.push(("mountPermissions", "0700".into()));
    let mut req = create_req("mut", 1 << 20, p(kv));
    req.mutable_parameters = params(&[("onDelete", "retain"), ("mountPermissions", "0751")]);
    let v = c
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let dir = Path::new(&root).join("mut");
    assert_eq!(mode_of(&dir), 0o751);
    std::fs::write(dir.join("data"), b"retained").unwrap();
    // Same request: the same volume.
    let again = c.create_volume(req.clone()).await.unwrap().into_inner();
    assert_eq!(again.volume.unwrap().volume_id, v.volume_id);
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(std::fs::read(dir.join("data")).unwrap(), b"retained");
    // Any other key: INVALID_ARGUMENT naming it, nothing created.
    let mut req = create_req("mut2", 1 << 20, p(ms(&root)));
    req.mutable_parameters = params(&[("compressionLevel", "3")]);
    let err = c.create_volume(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("compressionLevel"),
        "{}",
        err.message()
    );
    assert!(!Path::new(&root).join("mut2").exists());
}

#[tokio::test]
async fn repeated_create_volume_applies_new_mutable_parameters() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path(), "share");
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let mut req = create_req("remut", 1 << 20, p(ms(&root)));
    req.mutable_parameters = params(&[("mountPermissions", "0700")]);
    let v = c
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let dir = Path::new(&root).join("remut");
    assert_eq!(mode_of(&dir), 0o700);
    // The same volume asked for again with other mutable parameters (a
    // VolumeAttributesClass changed before the provisioner retried): the
    // same volume, with the new values applied.
    req.mutable_parameters = params(&[("onDelete", "retain"), ("mountPermissions", "0751")]);
    let again = c
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, v.volume_id);
    assert_eq!(mode_of(&dir), 0o751);
    // No mutable parameters: what was applied stays.
    req.mutable_parameters.clear();
    c.create_volume(req).await.unwrap();
    assert_eq!(mode_of(&dir), 0o751);
    std::fs::write(dir.join("data"), b"kept").unwrap();
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: v.volume_id,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(dir.join("data")).unwrap(),
        b"kept",
        "onDelete: retain applied by the repeated CreateVolume"
    );
}
