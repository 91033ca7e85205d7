//! The real binary in `--mode all`, driven through kubelet's sequence with
//! kubelet's directory layout under a temporary root, on a `mountedShare`
//! (bind mounts: needs root; NFS itself is in tests/e2e_nfs.rs).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use nfs_csi::grpc::csi::v1 as csi;
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
    let table = nfs_csi::sys::mount::parse_mountinfo(&text).unwrap();
    let m = nfs_csi::sys::mount::find(&table, &target).expect("target mounted");
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

/// A node driver with `--kubelet-dir <t>/kubelet`, a share with volumes
/// `a` and `b`, and a canary directory outside the kubelet directory.
struct Hostile {
    t: tempfile::TempDir,
    kubelet: PathBuf,
    canary: PathBuf,
    a: String,
    b: String,
    d: Driver,
}

impl Hostile {
    async fn start() -> Hostile {
        let t = tempfile::tempdir().unwrap();
        let share = t.path().join("share");
        for v in ["a", "b"] {
            std::fs::create_dir_all(share.join(v)).unwrap();
            std::fs::write(share.join(v).join("owner"), v).unwrap();
        }
        let kubelet = t.path().join("kubelet");
        let canary = t.path().join("canary");
        std::fs::create_dir_all(&kubelet).unwrap();
        std::fs::create_dir_all(&canary).unwrap();
        std::fs::write(canary.join("keep"), b"canary").unwrap();
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
        Hostile {
            a: format!("v1#mounted#{}#a", share.display()),
            b: format!("v1#mounted#{}#b", share.display()),
            kubelet,
            canary,
            t,
            d,
        }
    }

    /// Nothing is mounted on or below the canary, and it is unchanged.
    fn assert_canary_untouched(&self) {
        assert!(
            mounts_under(&self.canary).is_empty(),
            "{:?}",
            mounts_under(&self.canary)
        );
        assert_eq!(snapshot_tree(&self.canary), vec!["file keep".to_string()]);
    }
}

fn symlink(to: &Path, at: &Path) {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(to, at).unwrap();
}

#[tokio::test]
async fn symlinked_staging_and_target_paths_are_never_followed() {
    need_root!();
    let h = Hostile::start().await;
    let _guard = MountGuard(h.t.path().to_path_buf());
    let mut n = h.d.node().await;
    let staging = h.kubelet.join("plugins/x/globalmount");
    n.node_stage_volume(stage_req(&h.a, &staging))
        .await
        .unwrap();

    // the target itself a symlink to a host directory
    let t3 = h.kubelet.join("pods/p3/mount");
    symlink(&h.canary, &t3);
    let err = n
        .node_publish_volume(publish_req(&h.a, &staging, &t3, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("symlink"), "{}", err.message());
    h.assert_canary_untouched();
    let err = n
        .node_unpublish_volume(unpublish_req(&h.a, &t3))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(t3.symlink_metadata().unwrap().file_type().is_symlink());

    // the target's parent a symlink to a host directory
    symlink(&h.canary, &h.kubelet.join("pods/p4"));
    let t4 = h.kubelet.join("pods/p4/mount");
    let err = n
        .node_publish_volume(publish_req(&h.a, &staging, &t4, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    n.node_unpublish_volume(unpublish_req(&h.a, &t4))
        .await
        .unwrap_err();
    h.assert_canary_untouched();

    // the staging path, or its parent, a symlink to a host directory
    for s in [
        h.kubelet.join("plugins/y/globalmount"),
        h.kubelet.join("plugins/z/globalmount"),
    ] {
        let link = if s.starts_with(h.kubelet.join("plugins/y")) {
            s.clone()
        } else {
            s.parent().unwrap().to_path_buf()
        };
        symlink(&h.canary, &link);
        let err = n.node_stage_volume(stage_req(&h.a, &s)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        let err = n
            .node_unstage_volume(unstage_req(&h.a, &s))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        h.assert_canary_untouched();
    }

    // a symlink swapped in for the staging path after staging: publish
    // refuses it, and unstage leaves the stage mount and the link alone
    let s2 = h.kubelet.join("plugins/w/globalmount");
    symlink(&staging, &s2);
    let t5 = h.kubelet.join("pods/p5/mount");
    let err = n
        .node_publish_volume(publish_req(&h.a, &s2, &t5, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    n.node_unstage_volume(unstage_req(&h.a, &s2))
        .await
        .unwrap_err();
    assert_eq!(count_mounts(&staging), 1);

    // the kubelet directory itself, and paths beside it
    for bad in [
        h.kubelet.clone(),
        h.t.path().join("kubelet-other/x"),
        h.canary.join("x"),
    ] {
        let err = n
            .node_stage_volume(stage_req(&h.a, &bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        let err = n
            .node_unpublish_volume(unpublish_req(&h.a, &bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    }
    assert_eq!(mounts_under(&h.kubelet), vec![staging.clone()]);

    // a regular file where a target directory is expected stays
    let file = h.kubelet.join("pods/p6/mount");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"data").unwrap();
    let err = n
        .node_unpublish_volume(unpublish_req(&h.a, &file))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert_eq!(std::fs::read(&file).unwrap(), b"data");

    n.node_unstage_volume(unstage_req(&h.a, &staging))
        .await
        .unwrap();
    assert!(mounts_under(h.t.path()).is_empty());
    h.assert_canary_untouched();
}

#[tokio::test]
async fn publish_from_another_volumes_stage_is_refused() {
    need_root!();
    let h = Hostile::start().await;
    let _guard = MountGuard(h.t.path().to_path_buf());
    let mut n = h.d.node().await;
    let staging_a = h.kubelet.join("plugins/a/globalmount");
    n.node_stage_volume(stage_req(&h.a, &staging_a))
        .await
        .unwrap();
    let target = h.kubelet.join("pods/p/volumes/kubernetes.io~csi/b/mount");
    let err = n
        .node_publish_volume(publish_req(&h.b, &staging_a, &target, false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert_eq!(count_mounts(&target), 0);
    // a publish of a itself works, and shows a's files
    n.node_publish_volume(publish_req(&h.a, &staging_a, &target, false))
        .await
        .unwrap();
    assert_eq!(std::fs::read(target.join("owner")).unwrap(), b"a");
    n.node_unpublish_volume(unpublish_req(&h.a, &target))
        .await
        .unwrap();
    n.node_unstage_volume(unstage_req(&h.a, &staging_a))
        .await
        .unwrap();
    assert!(mounts_under(h.t.path()).is_empty());
}

#[tokio::test]
async fn read_write_once_pod_is_published_once_per_node() {
    need_root!();
    use csi::volume_capability::access_mode::Mode;
    let h = Hostile::start().await;
    let _guard = MountGuard(h.t.path().to_path_buf());
    let mut n = h.d.node().await;
    let staging = h.kubelet.join("plugins/a/globalmount");
    let t1 = h.kubelet.join("pods/p1/mount");
    let t2 = h.kubelet.join("pods/p2/mount");
    let rwop = |mut r: csi::NodePublishVolumeRequest| {
        r.volume_capability = Some(mount_cap(Mode::SingleNodeSingleWriter, &[]));
        r
    };
    let mut stage = stage_req(&h.a, &staging);
    stage.volume_capability = Some(mount_cap(Mode::SingleNodeSingleWriter, &[]));
    n.node_stage_volume(stage).await.unwrap();
    n.node_publish_volume(rwop(publish_req(&h.a, &staging, &t1, false)))
        .await
        .unwrap();
    // the same target again: idempotent
    n.node_publish_volume(rwop(publish_req(&h.a, &staging, &t1, false)))
        .await
        .unwrap();
    let err = n
        .node_publish_volume(rwop(publish_req(&h.a, &staging, &t2, false)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert_eq!(count_mounts(&t2), 0);
    assert!(!t2.exists(), "a refused publish leaves its target behind");
    assert_eq!(count_mounts(&t1), 1);
    // once unpublished at t1, t2 may have it
    n.node_unpublish_volume(unpublish_req(&h.a, &t1))
        .await
        .unwrap();
    n.node_publish_volume(rwop(publish_req(&h.a, &staging, &t2, false)))
        .await
        .unwrap();
    // single-node multi-writer still allows several targets
    let multi = |mut r: csi::NodePublishVolumeRequest| {
        r.volume_capability = Some(mount_cap(Mode::SingleNodeMultiWriter, &[]));
        r
    };
    n.node_publish_volume(multi(publish_req(&h.a, &staging, &t1, false)))
        .await
        .unwrap();
    assert_eq!(count_mounts(&t1), 1);
    for t in [&t1, &t2] {
        n.node_unpublish_volume(unpublish_req(&h.a, t))
            .await
            .unwrap();
    }
    n.node_unstage_volume(unstage_req(&h.a, &staging))
        .await
        .unwrap();
    assert!(mounts_under(h.t.path()).is_empty());
}

#[tokio::test]
async fn stats_on_a_missing_path_is_not_found() {
    need_root!();
    let h = Hostile::start().await;
    let _guard = MountGuard(h.t.path().to_path_buf());
    let mut n = h.d.node().await;
    let not_mounted = h.kubelet.join("pods/p/mount");
    std::fs::create_dir_all(&not_mounted).unwrap();
    for path in [
        "some/path".to_string(),
        h.kubelet.join("pods/none/mount").display().to_string(),
        not_mounted.display().to_string(),
    ] {
        let err = n
            .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
                volume_id: h.a.clone(),
                volume_path: path.clone(),
                staging_target_path: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{path}: {}", err.message());
    }
}
