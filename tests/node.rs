//! The real binary in `--mode all`, driven through kubelet's sequence with
//! kubelet's directory layout under a temporary root, on a `mountedShare`
//! (bind mounts: needs root; NFS itself is in tests/e2e_nfs.rs).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use nfs_csi::csi::v1 as csi;
use tonic::Code;

const DRIVER: &str = "nfs-csi.dev";

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("SKIPPED: this test mounts and needs root (CI runs it as root)");
            return;
        }
    };
}

struct Kubelet {
    root: PathBuf,
}

impl Kubelet {
    fn staging(&self, pv: &str) -> PathBuf {
        // kubelet: plugins/kubernetes.io/csi/<driver>/<sha256 of volume handle>/globalmount
        self.root
            .join("plugins/kubernetes.io/csi")
            .join(DRIVER)
            .join(format!("{:x}", pv.len() * 7919))
            .join("globalmount")
    }

    fn target(&self, pod: &str, pv: &str) -> PathBuf {
        self.root
            .join("pods")
            .join(pod)
            .join("volumes/kubernetes.io~csi")
            .join(pv)
            .join("mount")
    }
}

fn stage_req(id: &str, staging: &Path) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwx()),
        ..Default::default()
    }
}

fn publish_req(id: &str, staging: &Path, target: &Path, ro: bool) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwx()),
        readonly: ro,
        ..Default::default()
    }
}

fn unpublish_req(id: &str, target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.display().to_string(),
    }
}

fn unstage_req(id: &str, staging: &Path) -> csi::NodeUnstageVolumeRequest {
    csi::NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
    }
}

fn count_mounts(p: &Path) -> usize {
    mounts_under(p).iter().filter(|m| m.as_path() == p).count()
}

#[tokio::test]
async fn kubelet_sequence_with_restarts_between_steps() {
    need_root!();
    let t = tempfile::tempdir().unwrap();
    let _guard = MountGuard(t.path().to_path_buf());
    let share = t.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let kubelet = Kubelet {
        root: t.path().join("kubelet"),
    };
    std::fs::create_dir_all(&kubelet.root).unwrap();
    let kdir = kubelet.root.display().to_string();
    let mut d = Driver::start(
        t.path(),
        &[
            "--mode",
            "all",
            "--kubelet-dir",
            &kdir,
            "--export",
            &share.display().to_string(),
        ],
    )
    .await;

    // 1. CreateVolume (the default export)
    let vol = d
        .controller()
        .await
        .create_volume(create_req("pvc-k", 1 << 20, params(&[])))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let id = vol.volume_id.clone();
    d.restart().await;

    // 2. NodeStage, twice (kubelet retries), with a restart in between
    let staging = kubelet.staging("pvc-k");
    d.node()
        .await
        .node_stage_volume(stage_req(&id, &staging))
        .await
        .unwrap();
    d.restart().await;
    d.node()
        .await
        .node_stage_volume(stage_req(&id, &staging))
        .await
        .unwrap();
    assert_eq!(
        count_mounts(&staging),
        1,
        "repeated stage must not stack mounts"
    );

    // 3. NodePublish into two pods and a read-only third
    let pods = [
        (kubelet.target("pod-a", "pvc-k"), false),
        (kubelet.target("pod-b", "pvc-k"), false),
        (kubelet.target("pod-c", "pvc-k"), true),
    ];
    for (target, ro) in &pods {
        d.node()
            .await
            .node_publish_volume(publish_req(&id, &staging, target, *ro))
            .await
            .unwrap();
        d.restart().await;
        d.node()
            .await
            .node_publish_volume(publish_req(&id, &staging, target, *ro))
            .await
            .unwrap();
        assert_eq!(count_mounts(target), 1, "{}", target.display());
    }
    // the same target, read-only flag flipped: an error, not a stacked mount
    let err = d
        .node()
        .await
        .node_publish_volume(publish_req(&id, &staging, &pods[0].0, true))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    assert_eq!(count_mounts(&pods[0].0), 1);

    // RWX: write in a, read in b and c; c cannot write
    std::fs::write(pods[0].0.join("hello"), b"from pod a").unwrap();
    assert_eq!(
        std::fs::read(pods[1].0.join("hello")).unwrap(),
        b"from pod a"
    );
    assert_eq!(
        std::fs::read(pods[2].0.join("hello")).unwrap(),
        b"from pod a"
    );
    let err = std::fs::write(pods[2].0.join("nope"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
    // the data is in the volume's directory on the share
    assert_eq!(
        std::fs::read(share.join("pvc-k/hello")).unwrap(),
        b"from pod a"
    );
    d.restart().await;

    // 4. stats
    let stats = d
        .node()
        .await
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: pods[0].0.display().to_string(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage.len(), 2);
    let bytes = &stats.usage[0];
    assert_eq!(bytes.unit, csi::volume_usage::Unit::Bytes as i32);
    assert!(bytes.total > 0 && bytes.available > 0 && bytes.used >= 0);
    assert!(bytes.used + bytes.available <= bytes.total);
    let inodes = &stats.usage[1];
    assert_eq!(inodes.unit, csi::volume_usage::Unit::Inodes as i32);
    assert!(inodes.used > 0, "{inodes:?}");
    assert!(!stats.volume_condition.unwrap().abnormal);
    // a path that is not mounted: NOT_FOUND
    let err = d
        .node()
        .await
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: id.clone(),
            volume_path: kubelet.root.join("pods/none").display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // 5. unpublish, twice each, with restarts
    for (target, _) in &pods {
        d.node()
            .await
            .node_unpublish_volume(unpublish_req(&id, target))
            .await
            .unwrap();
        d.restart().await;
        d.node()
            .await
            .node_unpublish_volume(unpublish_req(&id, target))
            .await
            .unwrap();
        assert!(!target.exists(), "target dir removed");
    }
    // 6. unstage, twice
    d.node()
        .await
        .node_unstage_volume(unstage_req(&id, &staging))
        .await
        .unwrap();
    d.restart().await;
    d.node()
        .await
        .node_unstage_volume(unstage_req(&id, &staging))
        .await
        .unwrap();
    assert!(!staging.exists());
    // the data survived all of it
    assert_eq!(
        std::fs::read(share.join("pvc-k/hello")).unwrap(),
        b"from pod a"
    );

    // 7. DeleteVolume
    d.controller()
        .await
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!share.join("pvc-k").exists());
    let left = mounts_under(t.path());
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}

#[tokio::test]
async fn node_rejects_bad_input_and_touches_nothing() {
    need_root!();
    let t = tempfile::tempdir().unwrap();
    let _guard = MountGuard(t.path().to_path_buf());
    let share = t.path().join("share");
    std::fs::create_dir_all(share.join("vol")).unwrap();
    let kubelet = t.path().join("kubelet");
    std::fs::create_dir_all(&kubelet).unwrap();
    let d = Driver::start(
        t.path(),
        &[
            "--mode",
            "node",
            "--kubelet-dir",
            &kubelet.display().to_string(),
        ],
    )
    .await;
    let mut n = d.node().await;
    let id = format!("v1#mounted#{}#vol", share.display());
    let good = kubelet.join("plugins/x/globalmount");
    let outside = t.path().join("elsewhere/globalmount");
    let cases: Vec<(csi::NodeStageVolumeRequest, Code)> = vec![
        (stage_req("", &good), Code::InvalidArgument),
        (
            stage_req(&id, Path::new("relative/path")),
            Code::InvalidArgument,
        ),
        (
            stage_req(&id, &kubelet.join("a/../b")),
            Code::InvalidArgument,
        ),
        (stage_req(&id, &outside), Code::InvalidArgument),
        (stage_req("not-a-volume-id", &good), Code::NotFound),
        (
            csi::NodeStageVolumeRequest {
                volume_capability: None,
                ..stage_req(&id, &good)
            },
            Code::InvalidArgument,
        ),
        (
            csi::NodeStageVolumeRequest {
                volume_capability: Some(csi::VolumeCapability {
                    access_type: Some(csi::volume_capability::AccessType::Block(
                        csi::volume_capability::BlockVolume {},
                    )),
                    access_mode: rwx().access_mode,
                }),
                ..stage_req(&id, &good)
            },
            Code::InvalidArgument,
        ),
    ];
    for (req, code) in cases {
        let path = req.staging_target_path.clone();
        let err = n.node_stage_volume(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{path}: {}", err.message());
        assert!(!err.message().is_empty());
    }
    assert!(!good.exists() && !outside.exists());
    assert!(mounts_under(t.path()).is_empty());
    // publish without a stage: FAILED_PRECONDITION, nothing created
    let target = kubelet.join("pods/p/volumes/kubernetes.io~csi/v/mount");
    let err = n
        .node_publish_volume(publish_req(&id, &good, &target, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(!target.exists());
    // unpublish/unstage of paths that are not mounted or do not exist: OK
    n.node_unpublish_volume(unpublish_req(&id, &target))
        .await
        .unwrap();
    n.node_unstage_volume(unstage_req(&id, &good))
        .await
        .unwrap();
    // inline volumes are off by default
    let mut inline = publish_req("csi-123", Path::new(""), &target, false);
    inline.volume_context = params(&[
        ("csi.storage.k8s.io/ephemeral", "true"),
        ("server", "10.0.0.1"),
        ("share", "/x"),
    ]);
    let err = n.node_publish_volume(inline).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("--allow-inline"),
        "{}",
        err.message()
    );
    // node info and capabilities
    let info = n
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "node-1");
    assert_eq!(info.max_volumes_per_node, 0);
    let caps = n
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    use csi::node_service_capability::{Type, rpc::Type as R};
    let got: Vec<i32> = caps
        .into_iter()
        .filter_map(|c| match c.r#type {
            Some(Type::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    for want in [
        R::StageUnstageVolume,
        R::GetVolumeStats,
        R::VolumeCondition,
        R::SingleNodeMultiWriter,
    ] {
        assert!(
            got.contains(&(want as i32)),
            "{want:?} missing from {got:?}"
        );
    }
}

#[tokio::test]
async fn stage_never_follows_a_symlink_swapped_into_the_share() {
    need_root!();
    let t = tempfile::tempdir().unwrap();
    let _guard = MountGuard(t.path().to_path_buf());
    let share = t.path().join("share");
    let secret = t.path().join("host-secret");
    std::fs::create_dir_all(share.join("ns")).unwrap();
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("key"), b"secret").unwrap();
    // a pod replaced the volume directory with a symlink to a host path
    std::os::unix::fs::symlink(&secret, share.join("ns/vol")).unwrap();
    let d = Driver::start(t.path(), &["--mode", "node"]).await;
    let staging = t.path().join("kubelet/g/globalmount");
    let err = d
        .node()
        .await
        .node_stage_volume(stage_req(
            &format!("v1#mounted#{}#ns/vol", share.display()),
            &staging,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(mounts_under(t.path()).is_empty());
}

#[tokio::test]
async fn another_volume_on_a_staged_path_is_refused() {
    need_root!();
    let t = tempfile::tempdir().unwrap();
    let _guard = MountGuard(t.path().to_path_buf());
    let share = t.path().join("share");
    std::fs::create_dir_all(share.join("a")).unwrap();
    std::fs::create_dir_all(share.join("b")).unwrap();
    let d = Driver::start(t.path(), &["--mode", "node"]).await;
    let mut n = d.node().await;
    let staging = t.path().join("kubelet/s/globalmount");
    let a = format!("v1#mounted#{}#a", share.display());
    let b = format!("v1#mounted#{}#b", share.display());
    n.node_stage_volume(stage_req(&a, &staging)).await.unwrap();
    let err = n
        .node_stage_volume(stage_req(&b, &staging))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    assert_eq!(count_mounts(&staging), 1);
    // a target holding volume a cannot be published again from b's staging
    let staging_b = t.path().join("kubelet/s2/globalmount");
    n.node_stage_volume(stage_req(&b, &staging_b))
        .await
        .unwrap();
    let target = t.path().join("kubelet/pods/p/mount");
    n.node_publish_volume(publish_req(&a, &staging, &target, false))
        .await
        .unwrap();
    let err = n
        .node_publish_volume(publish_req(&b, &staging_b, &target, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    assert_eq!(count_mounts(&target), 1);
    n.node_unpublish_volume(unpublish_req(&a, &target))
        .await
        .unwrap();
    n.node_unstage_volume(unstage_req(&a, &staging))
        .await
        .unwrap();
    n.node_unstage_volume(unstage_req(&b, &staging_b))
        .await
        .unwrap();
    assert!(mounts_under(t.path()).is_empty());
}

#[tokio::test]
async fn read_only_publish_keeps_nosuid_nodev_noexec() {
    need_root!();
    let t = tempfile::tempdir().unwrap();
    let _guard = MountGuard(t.path().to_path_buf());
    let share = t.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &share,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .unwrap();
    std::fs::create_dir_all(share.join("vol")).unwrap();
    let d = Driver::start(t.path(), &["--mode", "node"]).await;
    let mut n = d.node().await;
    let id = format!("v1#mounted#{}#vol", share.display());
    let staging = t.path().join("kubelet/s/globalmount");
    let target = t.path().join("kubelet/pods/p/mount");
    n.node_stage_volume(stage_req(&id, &staging)).await.unwrap();
    n.node_publish_volume(publish_req(&id, &staging, &target, true))
        .await
        .unwrap();
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let table = nfs_csi::mount::parse_mountinfo(&text).unwrap();
    let m = nfs_csi::mount::find(&table, &target).expect("target mounted");
    for flag in ["ro", "nosuid", "nodev", "noexec"] {
        assert!(
            m.options.iter().any(|o| o == flag),
            "{flag} missing: {:?}",
            m.options
        );
    }
    n.node_unpublish_volume(unpublish_req(&id, &target))
        .await
        .unwrap();
    n.node_unstage_volume(unstage_req(&id, &staging))
        .await
        .unwrap();
}
