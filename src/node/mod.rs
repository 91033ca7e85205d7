//! The CSI Node service: stage a volume once per node (an NFS mount of its
//! directory, or a bind of it from a `mountedShare`), bind-mount it into
//! each pod, report usage and health, undo it all.
//!
//! Safety assumptions: what is mounted where is read from the kernel's mount
//! table on every call, so a restarted driver carries on where it stopped,
//! and a repeated call never stacks a second mount. Paths from requests are
//! checked (absolute, no `..`, strictly below the kubelet directory, `/`
//! without one) and opened one component at a time by descriptor with no
//! symlink followed (`sys::hostpath`); mounts are attached onto those
//! descriptors and unmounts name the exact validated directory, so a path
//! string is never resolved again. Mount options are checked by
//! `sys::mountopts`. A `mountedShare` directory is opened component by component
//! without following symlinks and bound through its descriptor, so a pod
//! that swaps a directory for a symlink cannot get a host path mounted.
//! Inline (ephemeral) volumes are off unless the admin enables them, may only
//! name allowed NFS servers, and can never use `mountedShare`. Anything that
//! may touch an NFS server runs on the blocking pool under a timeout; a
//! mount whose server does not answer is detached lazily.
//!
//! What lives here: this file holds the service and its errors (its own,
//! and the lower layers' it meets, passed through; `grpc::status` maps
//! them to codes); the tonic trait is `grpc::node`, one call per RPC into
//! the methods here. `paths` checks request paths,
//! `mounts` finds and tears down one volume's mounts, `stage`, `publish`,
//! `stats` and `inline` hold the RPCs' work.
//!
//! May depend on: `storage` (ids, exports), `sys` (hostpath, mount,
//! mountopts, offload, inflight, safefs), `config`, and the generated CSI
//! types (`grpc::csi`, the vocabulary of every RPC). Never on the rest of
//! `grpc` (only the unit tests ask `grpc::status` which code an error gets).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;

use crate::config::Config;
use crate::grpc::csi::v1::{self as csi, NodeServiceCapability, node_service_capability};
use crate::storage::ids::RelPath;
use crate::sys::inflight::InFlight;
use crate::sys::mount::Mounter;
use crate::sys::offload::Probes;
use crate::sys::safefs::{self};

mod inline;
mod mounts;
mod paths;
mod publish;
mod stage;
mod stats;

use mounts::*;
use paths::*;
use publish::*;

/// Volume context key kubelet sets on CSI ephemeral inline volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error(
        "block access is not supported: nfs-csi volumes are directories; use volumeMode: Filesystem"
    )]
    Block,
    #[error("volume is not staged: nothing is mounted at {staging}; call NodeStageVolume first")]
    NotStaged { staging: PathBuf },
    #[error(
        "{staging} holds the stage of another volume ({found}), not of this one; publish from this volume's own staging path"
    )]
    WrongStage { staging: PathBuf, found: String },
    #[error(
        "the volume is ReadWriteOncePod (SINGLE_NODE_SINGLE_WRITER) and already published at {other}; unpublish it there first"
    )]
    SingleWriter { other: PathBuf },
    #[error("no volume at {path}: the path does not exist")]
    NoVolumeAt { path: String },
    #[error("{path} already has another mount: {reason}")]
    Conflict { path: PathBuf, reason: String },
    #[error("nothing is mounted at {path}")]
    NotMounted { path: PathBuf },
    #[error("{path} is not a mount point and is not empty; left in place")]
    NotEmpty { path: PathBuf },
    #[error("{path} was bound read-only but the mount table shows it writable")]
    NotReadOnly { path: PathBuf },
    #[error(
        "inline (ephemeral) volumes are disabled on this node; the admin enables them with --allow-inline"
    )]
    InlineDisabled,
    #[error("inline volume names server {0:?}, which the admin has not allowed (--inline-server)")]
    InlineServer(String),
    #[error("inline volume attribute {key:?}: {reason}")]
    InlineParameter { key: String, reason: String },
    // The lower layers' errors met on the way, passed through unchanged.
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
    #[error(transparent)]
    Fs(#[from] crate::sys::safefs::Error),
    #[error(transparent)]
    Mount(#[from] crate::sys::mount::Error),
    #[error(transparent)]
    Export(#[from] crate::storage::export::Error),
    #[error(transparent)]
    Offload(#[from] crate::sys::offload::Error),
    #[error(transparent)]
    Busy(#[from] crate::sys::inflight::Busy),
    #[error(transparent)]
    HostPath(#[from] crate::sys::hostpath::Error),
    #[error(transparent)]
    MountOption(#[from] crate::sys::mountopts::Error),
}

type Result<T> = std::result::Result<T, Error>;

pub struct NodeService {
    config: Arc<Config>,
    mounter: Arc<dyn Mounter>,
    probes: Probes<std::result::Result<safefs::FsStats, Errno>>,
    inflight: InFlight,
}

/// What a stage mount should look like.
enum Source {
    /// `server:/share/subdir` with these options.
    Nfs {
        source: String,
        options: Vec<String>,
    },
    /// A directory of a mounted share, bound.
    Dir { root: PathBuf, subdir: RelPath },
}

impl NodeService {
    pub fn new(config: Arc<Config>, mounter: Arc<dyn Mounter>) -> Self {
        NodeService {
            config,
            mounter,
            probes: Probes::default(),
            inflight: InFlight::default(),
        }
    }

    fn op_timeout(&self) -> Duration {
        self.config.mount_timeout + self.config.fs_timeout
    }

    /// The directory every staging and target path must be strictly below.
    fn base(&self) -> PathBuf {
        self.config
            .kubelet_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/"))
    }
}

impl Outcome {
    /// Logs the outcome; a conflict becomes the error. True when a mount
    /// was made.
    fn finish(self, path: &Path, done: &'static str) -> Result<bool> {
        match self {
            Outcome::Done => {
                tracing::info!(path = %path.display(), "{done}");
                Ok(true)
            }
            Outcome::Already => {
                tracing::info!(path = %path.display(), "already {done}");
                Ok(false)
            }
            Outcome::Conflict(reason) => Err(Error::Conflict {
                path: path.to_path_buf(),
                reason,
            }),
        }
    }
}

impl NodeService {
    /// What NodeGetCapabilities answers.
    pub fn capabilities() -> csi::NodeGetCapabilitiesResponse {
        use node_service_capability::rpc::Type;
        let capabilities = [
            Type::StageUnstageVolume,
            Type::GetVolumeStats,
            Type::VolumeCondition,
            Type::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(node_capability)
        .collect();
        csi::NodeGetCapabilitiesResponse { capabilities }
    }

    /// What NodeGetInfo answers.
    pub fn info(&self) -> csi::NodeGetInfoResponse {
        csi::NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }
    }
}

fn node_capability(t: node_service_capability::rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(
            node_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::grpc::csi::v1::{VolumeCapability, volume_capability};
    use crate::grpc::status::to_status;
    use crate::sys::mount::FakeMounter;

    fn service(allow_inline: bool) -> (NodeService, Arc<FakeMounter>, tempfile::TempDir) {
        let t = tempfile::tempdir().unwrap();
        let mut c = crate::config::test_config(t.path().join("work"));
        c.allow_inline = allow_inline;
        c.inline_servers = vec!["nfs.allowed".into()];
        c.nfs_default_options = vec!["hard".into(), "nfsvers=4.1".into()];
        c.kubelet_dir = Some(t.path().to_path_buf());
        let fake = Arc::new(FakeMounter::default());
        (NodeService::new(Arc::new(c), fake.clone()), fake, t)
    }

    fn mount_cap(flags: &[&str]) -> Option<VolumeCapability> {
        Some(VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume {
                    mount_flags: flags.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
            )),
            access_mode: None,
        })
    }

    #[tokio::test]
    async fn nfs_stage_uses_options_in_order_and_is_idempotent() {
        let (svc, fake, t) = service(false);
        let id = "v1#nfs#10.0.0.1#/exports#nfsvers=3#pvc-1";
        let staging = t.path().join("plugins/x/globalmount");
        let req = csi::NodeStageVolumeRequest {
            volume_id: id.into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: mount_cap(&["nfsvers=4.2,noatime"]),
            ..Default::default()
        };
        svc.stage(req.clone()).await.unwrap();
        svc.stage(req.clone()).await.unwrap();
        let mounts: Vec<String> = fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("mount_nfs"))
            .collect();
        assert_eq!(
            mounts,
            vec![format!(
                "mount_nfs 10.0.0.1:/exports/pvc-1 {} nfsvers=4.2,noatime,hard",
                staging.display()
            )]
        );
        // another volume on the same staging path: conflict, no second mount
        let mut other = req.clone();
        other.volume_id = "v1#nfs#10.0.0.1#/exports##pvc-2".into();
        let err = to_status(svc.stage(other).await.unwrap_err());
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
        assert_eq!(fake.mounts().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn static_pv_uses_volume_attributes_and_their_mount_options() {
        let (svc, fake, t) = service(false);
        let staging = t.path().join("plugins/s/globalmount");
        let mut req = csi::NodeStageVolumeRequest {
            volume_id: "any-handle-the-admin-chose".into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: mount_cap(&[]),
            ..Default::default()
        };
        req.volume_context = [
            ("server".to_string(), "nfs.example".to_string()),
            ("share".to_string(), "/exports".to_string()),
            ("subDir".to_string(), "team/data".to_string()),
            ("mountOptions".to_string(), "nfsvers=3,nolock".to_string()),
        ]
        .into();
        svc.stage(req.clone()).await.unwrap();
        assert_eq!(
            fake.calls(),
            vec![format!(
                "mount_nfs nfs.example:/exports/team/data {} nfsvers=3,nolock,hard",
                staging.display()
            )]
        );
        req.volume_context
            .insert("subDir".into(), "../../etc".into());
        req.staging_target_path = t
            .path()
            .join("plugins/s2/globalmount")
            .display()
            .to_string();
        assert_eq!(
            to_status(svc.stage(req).await.unwrap_err()).code(),
            tonic::Code::InvalidArgument
        );
    }

    #[tokio::test]
    async fn options_that_change_what_is_mounted_are_refused_everywhere() {
        let (svc, fake, t) = service(true);
        let staging = t.path().join("plugins/o/globalmount");
        // from the capability (StorageClass or PV mountOptions), from the
        // id, from a static PV's attributes
        let cases: Vec<csi::NodeStageVolumeRequest> = vec![
            csi::NodeStageVolumeRequest {
                volume_id: "v1#nfs#10.0.0.1#/exports##pvc-1".into(),
                volume_capability: mount_cap(&["nfsvers=4.1,bind"]),
                ..Default::default()
            },
            csi::NodeStageVolumeRequest {
                volume_id: "v1#nfs#10.0.0.1#/exports#X-mount.mkdir#pvc-1".into(),
                volume_capability: mount_cap(&[]),
                ..Default::default()
            },
            csi::NodeStageVolumeRequest {
                volume_id: "static".into(),
                volume_capability: mount_cap(&[]),
                volume_context: [
                    ("server".to_string(), "nfs.example".to_string()),
                    ("share".to_string(), "/e".to_string()),
                    ("mountOptions".to_string(), "remount".to_string()),
                ]
                .into(),
                ..Default::default()
            },
        ];
        for mut req in cases {
            req.staging_target_path = staging.display().to_string();
            // an id carrying such an option is no id of this driver
            let want = if req.volume_id.contains("X-mount") {
                tonic::Code::NotFound
            } else {
                tonic::Code::InvalidArgument
            };
            let err = to_status(svc.stage(req).await.unwrap_err());
            assert_eq!(err.code(), want, "{}", err.message());
            assert!(
                err.message().contains("changes what is mounted"),
                "{}",
                err.message()
            );
        }
        // a pod's inline volume: only the NFS client allow-list
        for flags in [
            &["bind"][..],
            &["context=system_u:object_r:nfs_t:s0"],
            &["addr=10.9.9.9"],
        ] {
            let req = csi::NodePublishVolumeRequest {
                volume_id: "csi-abc".into(),
                target_path: t.path().join("pods/u/mount").display().to_string(),
                volume_capability: mount_cap(flags),
                volume_context: [
                    (EPHEMERAL_KEY.to_string(), "true".to_string()),
                    ("server".to_string(), "nfs.allowed".to_string()),
                    ("share".to_string(), "/e".to_string()),
                ]
                .into(),
                ..Default::default()
            };
            let err = to_status(svc.publish(req).await.unwrap_err());
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{flags:?}: {}",
                err.message()
            );
            assert!(err.message().contains(flags[0]), "{}", err.message());
        }
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        assert!(!staging.exists() && !t.path().join("pods").exists());
    }

    #[tokio::test]
    async fn bad_paths_touch_nothing() {
        let (svc, fake, t) = service(false);
        for path in ["relative/x", "/etc/passwd", "", "/a/../b"] {
            let req = csi::NodeStageVolumeRequest {
                volume_id: "v1#nfs#10.0.0.1#/exports##pvc-1".into(),
                staging_target_path: path.into(),
                volume_capability: mount_cap(&[]),
                ..Default::default()
            };
            let err = to_status(svc.stage(req).await.unwrap_err());
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{path}: {}",
                err.message()
            );
        }
        let req = csi::NodeStageVolumeRequest {
            volume_id: "bogus".into(),
            staging_target_path: t.path().join("s").display().to_string(),
            volume_capability: mount_cap(&[]),
            ..Default::default()
        };
        assert_eq!(
            to_status(svc.stage(req).await.unwrap_err()).code(),
            tonic::Code::NotFound
        );
        assert!(
            fake.calls().iter().all(|c| !c.starts_with("mount")),
            "{:?}",
            fake.calls()
        );
        assert!(!t.path().join("s").exists());
    }

    #[tokio::test]
    async fn inline_volumes_are_opt_in_and_restricted() {
        let ctx = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            let mut m: HashMap<String, String> = kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            m.insert(EPHEMERAL_KEY.into(), "true".into());
            m
        };
        let req = |t: &Path, c: HashMap<String, String>| csi::NodePublishVolumeRequest {
            volume_id: "csi-abc".into(),
            target_path: t
                .join("pods/u/volumes/kubernetes.io~csi/v/mount")
                .display()
                .to_string(),
            volume_capability: mount_cap(&[]),
            volume_context: c,
            ..Default::default()
        };
        let (off, fake_off, t_off) = service(false);
        let err = to_status(
            off.publish(req(
                t_off.path(),
                ctx(&[("server", "nfs.allowed"), ("share", "/e")]),
            ))
            .await
            .unwrap_err(),
        );
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(fake_off.calls().is_empty());

        let (on, fake, t) = service(true);
        let err = to_status(
            on.publish(req(
                t.path(),
                ctx(&[("server", "evil.example"), ("share", "/e")]),
            ))
            .await
            .unwrap_err(),
        );
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let err = to_status(
            on.publish(req(
                t.path(),
                ctx(&[("mountedShare", "/"), ("server", "nfs.allowed")]),
            ))
            .await
            .unwrap_err(),
        );
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("host path"), "{}", err.message());
        let err = to_status(
            on.publish(req(
                t.path(),
                ctx(&[
                    ("server", "nfs.allowed"),
                    ("share", "/e"),
                    ("subDir", "../.."),
                ]),
            ))
            .await
            .unwrap_err(),
        );
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        on.publish(req(
            t.path(),
            ctx(&[
                ("server", "nfs.allowed"),
                ("share", "/e"),
                ("subDir", "a/b"),
            ]),
        ))
        .await
        .unwrap();
        assert_eq!(fake.calls().len(), 1);
        assert!(
            fake.calls()[0].starts_with("mount_nfs nfs.allowed:/e/a/b "),
            "{:?}",
            fake.calls()
        );
        // a pod's NFS mount never carries setuid binaries or devices
        assert!(
            fake.calls()[0].ends_with(",nosuid,nodev"),
            "{:?}",
            fake.calls()
        );
    }
}
