//! End to end on real kernel NFS: the real driver binary, driven through its
//! socket as Kubernetes would, against a real knfsd and the real kernel NFS
//! client, for NFSv3, NFSv4.1 and NFSv4.2 (every scenario runs once per version, the
//! version chosen by the volume capability's `nfsvers=` mount flag, as a
//! StorageClass's `mountOptions` would).
//!
//! These tests only do something inside the UML guest of `tests/e2e/run`
//! (see tests/e2e/README.md: root, a knfsd exporting `$NFS_EXPORT` on
//! `$NFS_SERVER`, `NFSVM=1`); elsewhere each one prints `SKIPPED` and
//! passes, so a plain `cargo test` on the host stays green.
//!
//! Layout of one test: a scratch directory under /tmp for the drivers
//! (socket, work dir, `driver.log` of each driver process), and a kubelet
//! root per simulated node under /var/lib/kubelet-e2e with kubelet's own
//! layout (`plugins/kubernetes.io/csi/<driver>/<sha256 of the volume
//! id>/globalmount`, `pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`).
//! The controller and each node are separate driver processes
//! (`--mode controller`, `--mode node --node-id ...`) on separate sockets;
//! they share the guest's kernel (real nodes would not), but each node makes
//! the mounts it would make on its own machine. The server's view of the
//! export is read and written directly (`$NFS_EXPORT`). The driver's
//! timeouts are shortened by flags (`--stats-timeout 2 --fs-timeout 5
//! --mount-timeout 15`) so the fault tests run in seconds.
//!
//! Scenarios (each `_v3`, `_v41` and `_v42`):
//! * `provision`: CreateVolume/DeleteVolume, subDir templates, onDelete,
//!   the controller's single kept mount of the export (also across a crash);
//! * `kubelet_two_nodes`: stage on two nodes, three pods (one read-only),
//!   RWX data flow, EROFS, stats, teardown, every call repeated;
//! * `server_stops`: nfsd stopped under staged/published volumes: bounded
//!   stats/unpublish/unstage/stage, other calls and volumes still served, a
//!   driver crash meanwhile; nfsd back: stage/publish work again;
//! * `driver_crashes`: SIGKILL + restart of every driver between every step;
//! * `export_outages`: the export withdrawn and back, the controller's mount
//!   removed behind its back, nfsd stopped and back: the controller copes.
//!
//! And `clones.rs`'s `clone_reflink_v42`, `clone_copy_v42`,
//! `clone_reflink_v41`: a clone's data stays on the server over NFSv4.2
//! (CLONE on the reflink export `$NFS_REFLINK_EXPORT`, COPY on the plain
//! one), counted in `/proc/self/mountstats`; over v4.1 it goes through
//! READ/WRITE.
//!
//! Every NFS mount here is a default (hard) mount: that is what production
//! uses, and what makes a stopped server hang every call that reaches it,
//! so the bounds asserted are the driver's own timeouts, not the client's
//! `soft` giving up. The test process itself never touches an NFS path
//! while the server is stopped (it reads only /proc/self/mountinfo then),
//! and every file operation it does on an NFS path runs on a helper thread
//! under a timeout, so a hang fails the test instead of stalling the run.
//!
//! Cleanup, pass or fail (`Rig`'s Drop): the NFS server is restarted and the
//! export re-exported if the test had stopped them, the driver processes
//! are killed, everything still mounted under the test's roots is detached
//! (`common::MountGuard`), and only then are the directories removed (never
//! recursing into a mount). Driver logs are copied to
//! `target/nfsvm/e2e-logs/<test>/` and their tails printed when a test fails.

#[path = "e2e_nfs/clones.rs"]
mod clones;
mod common;
#[path = "e2e_nfs/mountstats.rs"]
mod mountstats;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use csi::volume_capability::access_mode::Mode;
use nfs_csi::grpc::csi::v1 as csi;
use nfs_csi::storage::export::ExportSpec;
use nfs_csi::storage::ids::{RelPath, VolumeId};
use nfs_csi::storage::params::{PARAM_PV_NAME, PARAM_PVC_NAME, PARAM_PVC_NAMESPACE};
use nfs_csi::sys::mount::MountEntry;
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

const DRIVER_NAME: &str = "nfs-csi.dev";
/// Short driver timeouts, so the fault scenarios take seconds.
const TIMEOUT_FLAGS: [&str; 6] = [
    "--stats-timeout",
    "2",
    "--fs-timeout",
    "5",
    "--mount-timeout",
    "15",
];
/// Any call on a healthy server must answer within this.
const CALL: Duration = Duration::from_secs(60);
/// NodeGetVolumeStats on a dead server must answer within this (issue 4).
const STATS_BOUND: Duration = Duration::from_secs(5);
/// NodeUnpublish/NodeUnstage on a dead server must return within this.
const TEARDOWN_BOUND: Duration = Duration::from_secs(30);
/// Calls that touch no NFS server (Probe, NodeGetInfo, stats of a local
/// volume) while another call is stuck on a dead server.
const QUICK: Duration = Duration::from_secs(2);
/// CreateVolume on a dead server: the fs timeout (5 s) plus slack.
const CONTROLLER_BOUND: Duration = Duration::from_secs(15);
/// NodeStage on a dead server: mount timeout (15 s) + fs timeout (5 s) + slack.
const STAGE_BOUND: Duration = Duration::from_secs(30);
/// How long the server may take to serve again after `rpc.nfsd 8`.
const RECOVERY: Duration = Duration::from_secs(45);
/// Same options as tests/e2e/guest-init.sh.
const EXPORT_OPTIONS: &str = "rw,sync,no_subtree_check,no_root_squash,insecure,fsid=1";

// ---- the NFS versions ---------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nfs {
    V3,
    V41,
    V42,
}

impl Nfs {
    /// The mount flag of the volume capability (StorageClass mountOptions).
    fn flag(self) -> &'static str {
        match self {
            Nfs::V3 => "nfsvers=3",
            Nfs::V41 => "nfsvers=4.1",
            Nfs::V42 => "nfsvers=4.2",
        }
    }
    /// What /proc/self/mountinfo shows as the file system type.
    fn fstype(self) -> &'static str {
        match self {
            Nfs::V3 => "nfs",
            Nfs::V41 | Nfs::V42 => "nfs4",
        }
    }
    /// The super option the kernel shows for the version.
    fn vers_option(self) -> &'static str {
        match self {
            Nfs::V3 => "vers=3",
            Nfs::V41 => "vers=4.1",
            Nfs::V42 => "vers=4.2",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Nfs::V3 => "v3",
            Nfs::V41 => "v41",
            Nfs::V42 => "v42",
        }
    }
}

// ---- small helpers ---------------------------------------------------------------------

/// False (and a loud SKIPPED) outside the NFS guest.
fn in_guest(test: &str) -> bool {
    if std::env::var_os("NFSVM").is_none() {
        eprintln!(
            "SKIPPED: {test}: not inside the NFS guest (NFSVM is unset); \
             the end-to-end tests run with tests/e2e/run"
        );
        return false;
    }
    assert!(is_root(), "the NFS guest runs tests as root");
    true
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set in the NFS guest"))
}

fn mount_table() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    nfs_csi::sys::mount::parse_mountinfo(&text).expect("parse mountinfo")
}

/// Every mount at exactly `path` (stacked ones too), bottom first.
fn mounts_at(path: &Path) -> Vec<MountEntry> {
    mount_table()
        .into_iter()
        .filter(|m| m.mount_point == path)
        .collect()
}

fn entries_under(root: &Path) -> Vec<MountEntry> {
    mount_table()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(root))
        .collect()
}

fn describe(ms: &[MountEntry]) -> String {
    ms.iter()
        .map(|m| {
            format!(
                "\n  #{} {} {} {} ({})",
                m.mount_id,
                m.mount_point.display(),
                m.fstype,
                m.source,
                m.options.join(",")
            )
        })
        .collect()
}

fn assert_unmounted(path: &Path) {
    let left = mounts_at(path);
    assert!(
        left.is_empty(),
        "{} must not be mounted any more:{}",
        path.display(),
        describe(&left)
    );
}

/// Runs blocking `f` on its own thread, failing the test if it does not
/// finish within `limit` (a file operation on an NFS path that hangs).
fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => v,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer within {limit:?} (hung NFS?)")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    let (p, t) = (path.to_path_buf(), text.to_string());
    bounded(
        &format!("write {}", path.display()),
        Duration::from_secs(20),
        move || std::fs::write(p, t),
    )
}

fn read_file(path: &Path) -> String {
    let p = path.to_path_buf();
    bounded(
        &format!("read {}", path.display()),
        Duration::from_secs(20),
        move || std::fs::read_to_string(&p),
    )
    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn exists(path: &Path) -> bool {
    let p = path.to_path_buf();
    bounded(
        &format!("stat {}", path.display()),
        Duration::from_secs(20),
        move || std::fs::symlink_metadata(p).is_ok(),
    )
}

/// An admin command (rpc.nfsd, exportfs) by absolute path when it is in
/// /usr/sbin, which need not be in PATH.
fn sbin(program: &str) -> String {
    let p = Path::new("/usr/sbin").join(program);
    if p.exists() {
        p.display().to_string()
    } else {
        program.to_string()
    }
}

/// Runs a command (rpc.nfsd, exportfs...) to completion within 30 s.
fn run_cmd(program: &str, args: &[&str]) -> String {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            assert!(
                out.status.success(),
                "{program} {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Awaits a gRPC call, failing the test if it does not answer within
/// `limit`; returns the result and how long it took.
async fn timed<T>(
    what: &str,
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> (Result<T, Status>, Duration) {
    let start = Instant::now();
    match tokio::time::timeout(limit, call).await {
        Ok(r) => (r.map(tonic::Response::into_inner), start.elapsed()),
        Err(_) => panic!("{what}: no answer within {limit:?}"),
    }
}

fn ok<T>(what: &str, r: Result<T, Status>) -> T {
    r.unwrap_or_else(|s| panic!("{what} failed: {:?}: {}", s.code(), s.message()))
}

fn usage_of(
    r: &csi::NodeGetVolumeStatsResponse,
    unit: csi::volume_usage::Unit,
) -> csi::VolumeUsage {
    r.usage
        .iter()
        .find(|u| u.unit == unit as i32)
        .cloned()
        .unwrap_or_else(|| panic!("no {unit:?} usage in {r:?}"))
}

/// A healthy stats answer: bytes and inodes, plausible, condition normal.
fn assert_healthy_stats(what: &str, r: &csi::NodeGetVolumeStatsResponse) {
    let cond = r.volume_condition.as_ref().expect("volume condition");
    assert!(
        !cond.abnormal,
        "{what}: abnormal condition: {}",
        cond.message
    );
    for unit in [
        csi::volume_usage::Unit::Bytes,
        csi::volume_usage::Unit::Inodes,
    ] {
        let u = usage_of(r, unit);
        assert!(u.total > 0, "{what}: {unit:?} total is 0: {u:?}");
        assert!(
            u.used >= 0 && u.available >= 0 && u.available <= u.total && u.used <= u.total,
            "{what}: implausible {unit:?} usage {u:?}"
        );
    }
}

// ---- the rig: drivers, kubelet roots, server state, cleanup ------------------------------------

struct Rig {
    name: String,
    nfs: Nfs,
    server: String,
    /// The export as the server sees it (`/srv/export`).
    export: PathBuf,
    /// Drivers' directories (sockets, work dirs, logs).
    scratch: PathBuf,
    /// Kubelet roots of the simulated nodes, one directory per node.
    kubelet: PathBuf,
    drivers: Vec<(String, Driver)>,
    nfsd_stopped: bool,
    unexported: bool,
    /// Server-side paths (relative to the export) to remove at the end.
    server_junk: Vec<PathBuf>,
    start: Instant,
}

impl Rig {
    fn new(scenario: &str, nfs: Nfs) -> Rig {
        Rig::on_export(scenario, nfs, PathBuf::from(env("NFS_EXPORT")))
    }

    /// A rig whose volumes go on `export` (the server's path of an export).
    fn on_export(scenario: &str, nfs: Nfs, export: PathBuf) -> Rig {
        let name = format!("{scenario}_{}", nfs.tag());
        let mk = |base: &str| {
            std::fs::create_dir_all(base).expect("create base dir");
            tempfile::Builder::new()
                .prefix(&format!("{name}-"))
                .tempdir_in(base)
                .expect("temp dir")
                .keep()
        };
        let rig = Rig {
            nfs,
            server: env("NFS_SERVER"),
            export,
            scratch: mk("/tmp/e2e-nfs"),
            kubelet: mk("/var/lib/kubelet-e2e"),
            name,
            drivers: Vec::new(),
            nfsd_stopped: false,
            unexported: false,
            server_junk: Vec::new(),
            start: Instant::now(),
        };
        rig.say(format!(
            "start: NFS {} ({}), export {}:{}, scratch {}, kubelet roots {}",
            nfs.tag(),
            nfs.flag(),
            rig.server,
            rig.export.display(),
            rig.scratch.display(),
            rig.kubelet.display()
        ));
        rig
    }

    /// A path for progress lines: relative to the kubelet roots, with
    /// kubelet's 64-hex-digit volume hashes cut short.
    fn short(&self, p: &Path) -> String {
        let rel = p.strip_prefix(&self.kubelet).unwrap_or(p);
        rel.iter()
            .map(|c| {
                let c = c.to_string_lossy();
                if c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()) {
                    format!("{}..", &c[..8])
                } else {
                    c.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    fn say(&self, msg: impl std::fmt::Display) {
        eprintln!(
            "[{:>6.2}s {}] {msg}",
            self.start.elapsed().as_secs_f64(),
            self.name
        );
    }

    async fn add_controller(&mut self) {
        let dir = self.scratch.join("controller");
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec!["--mode", "controller"];
        args.extend(TIMEOUT_FLAGS);
        let d = Driver::start_node(&dir, "controller", &args).await;
        self.say(format!("controller driver up on {}", d.socket.display()));
        self.drivers.push(("controller".into(), d));
    }

    async fn add_node(&mut self, node: &str) {
        let dir = self.scratch.join(node);
        std::fs::create_dir_all(&dir).unwrap();
        let root = self.kubelet_root(node);
        std::fs::create_dir_all(&root).unwrap();
        let root_s = root.display().to_string();
        let mut args = vec!["--mode", "node", "--kubelet-dir", root_s.as_str()];
        args.extend(TIMEOUT_FLAGS);
        let d = Driver::start_node(&dir, node, &args).await;
        self.say(format!("node driver {node} up on {}", d.socket.display()));
        self.drivers.push((node.to_string(), d));
    }

    fn drv(&self, label: &str) -> &Driver {
        self.drivers
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("no driver {label}"))
    }

    fn ctrl(&self) -> &Driver {
        self.drv("controller")
    }

    /// SIGKILL one driver and start it again (same socket, work dir, flags).
    async fn crash(&mut self, label: &str) {
        let d = self
            .drivers
            .iter_mut()
            .find(|(l, _)| l == label)
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("no driver {label}"));
        d.restart().await;
    }

    /// SIGKILL and restart every driver; asserts the crash changed no mount.
    async fn crash_all(&mut self, after: &str) {
        let before = self.our_mounts();
        let labels: Vec<String> = self.drivers.iter().map(|(l, _)| l.clone()).collect();
        for l in &labels {
            self.crash(l).await;
        }
        let after_crash = self.our_mounts();
        assert_eq!(
            ids(&before),
            ids(&after_crash),
            "killing and restarting the drivers changed the mounts:\nbefore:{}\nafter:{}",
            describe(&before),
            describe(&after_crash)
        );
        self.say(format!(
            "  SIGKILL + restart of {} after {after}: {} mount(s) unchanged",
            labels.join(", "),
            before.len()
        ));
    }

    /// Mounts under this test's roots (kubelet roots and driver work dirs).
    fn our_mounts(&self) -> Vec<MountEntry> {
        let mut v = entries_under(&self.kubelet);
        v.extend(entries_under(&self.scratch));
        v
    }

    fn kubelet_root(&self, node: &str) -> PathBuf {
        self.kubelet.join(node)
    }

    /// kubelet's staging path for a volume on a node; kubelet creates it.
    fn staging(&self, node: &str, volume_id: &str) -> PathBuf {
        let hash = hex::encode(Sha256::digest(volume_id.as_bytes()));
        let p = self
            .kubelet_root(node)
            .join("plugins/kubernetes.io/csi")
            .join(DRIVER_NAME)
            .join(hash)
            .join("globalmount");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// kubelet's target path for a pod's volume; kubelet creates its parent.
    fn target(&self, node: &str, pod_uid: &str, pv: &str) -> PathBuf {
        let p = self
            .kubelet_root(node)
            .join("pods")
            .join(pod_uid)
            .join("volumes/kubernetes.io~csi")
            .join(pv)
            .join("mount");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    }

    /// The capability kubelet and the provisioner send: RWX with the
    /// version's mount flag.
    fn cap(&self) -> csi::VolumeCapability {
        mount_cap(Mode::MultiNodeMultiWriter, &[self.nfs.flag()])
    }

    /// `server:/export[/subdir]` as mount(8) gets it and mountinfo shows it.
    fn source(&self, subdir: Option<&str>) -> String {
        match subdir {
            None => format!("{}:{}", self.server, self.export.display()),
            Some(s) => format!("{}:{}/{s}", self.server, self.export.display()),
        }
    }

    fn server_path(&self, rel: &str) -> PathBuf {
        self.export.join(rel)
    }

    /// Remove `rel` on the server at the end of the test.
    fn junk(&mut self, rel: &str) {
        self.server_junk.push(PathBuf::from(rel));
    }

    fn create_request(&self, name: &str, extra: &[(&str, &str)]) -> csi::CreateVolumeRequest {
        let export = self.export.display().to_string();
        let mut p = params(&[("server", self.server.as_str()), ("share", export.as_str())]);
        p.extend(params(extra));
        csi::CreateVolumeRequest {
            name: name.to_string(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 1 << 30,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![self.cap()],
            parameters: p,
            ..Default::default()
        }
    }

    async fn try_create(
        &self,
        name: &str,
        extra: &[(&str, &str)],
        limit: Duration,
    ) -> (Result<csi::Volume, Status>, Duration) {
        let req = self.create_request(name, extra);
        let d = self.ctrl();
        let (r, t) = timed(&format!("CreateVolume {name}"), limit, async {
            d.controller().await.create_volume(req).await
        })
        .await;
        (
            r.map(|v| v.volume.expect("CreateVolume returned no volume")),
            t,
        )
    }

    async fn create(&self, name: &str, extra: &[(&str, &str)]) -> csi::Volume {
        let (r, t) = self.try_create(name, extra, CALL).await;
        let v = ok(&format!("CreateVolume {name}"), r);
        self.say(format!("CreateVolume {name} -> {} ({t:.2?})", v.volume_id));
        v
    }

    async fn try_delete(&self, id: &str, limit: Duration) -> (Result<(), Status>, Duration) {
        let d = self.ctrl();
        let req = csi::DeleteVolumeRequest {
            volume_id: id.to_string(),
            ..Default::default()
        };
        let (r, t) = timed(&format!("DeleteVolume {id}"), limit, async {
            d.controller().await.delete_volume(req).await
        })
        .await;
        (r.map(|_| ()), t)
    }

    async fn delete(&self, id: &str) {
        let (r, t) = self.try_delete(id, CALL).await;
        ok(&format!("DeleteVolume {id}"), r);
        self.say(format!("DeleteVolume {id} ({t:.2?})"));
    }

    async fn get_volume(&self, id: &str) -> Result<csi::ControllerGetVolumeResponse, Status> {
        let d = self.ctrl();
        let req = csi::ControllerGetVolumeRequest {
            volume_id: id.to_string(),
        };
        timed("ControllerGetVolume", CALL, async {
            d.controller().await.controller_get_volume(req).await
        })
        .await
        .0
    }

    async fn list_ids(&self) -> Vec<String> {
        let d = self.ctrl();
        let r = timed("ListVolumes", CALL, async {
            d.controller()
                .await
                .list_volumes(csi::ListVolumesRequest::default())
                .await
        })
        .await
        .0;
        ok("ListVolumes", r)
            .entries
            .into_iter()
            .filter_map(|e| e.volume.map(|v| v.volume_id))
            .collect()
    }

    async fn try_stage(
        &self,
        node: &str,
        vol: &csi::Volume,
        staging: &Path,
        limit: Duration,
    ) -> (Result<(), Status>, Duration) {
        let req = csi::NodeStageVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(self.cap()),
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        };
        let d = self.drv(node);
        let (r, t) = timed(&format!("NodeStageVolume on {node}"), limit, async {
            d.node().await.node_stage_volume(req).await
        })
        .await;
        (r.map(|_| ()), t)
    }

    async fn stage(&self, node: &str, vol: &csi::Volume, staging: &Path) {
        let (r, t) = self.try_stage(node, vol, staging, CALL).await;
        ok(&format!("NodeStageVolume on {node}"), r);
        self.say(format!(
            "NodeStageVolume on {node} at {} ({t:.2?})",
            self.short(staging)
        ));
    }

    async fn try_publish_within(
        &self,
        limit: Duration,
        node: &str,
        vol: &csi::Volume,
        staging: &Path,
        target: &Path,
        readonly: bool,
    ) -> Result<(), Status> {
        let req = csi::NodePublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(self.cap()),
            readonly,
            volume_context: vol.volume_context.clone(),
            ..Default::default()
        };
        let d = self.drv(node);
        let (r, t) = timed(&format!("NodePublishVolume on {node}"), limit, async {
            d.node().await.node_publish_volume(req).await
        })
        .await;
        if r.is_ok() {
            self.say(format!(
                "NodePublishVolume on {node} at {} readonly={readonly} ({t:.2?})",
                self.short(target)
            ));
        }
        r.map(|_| ())
    }

    async fn try_publish(
        &self,
        node: &str,
        vol: &csi::Volume,
        staging: &Path,
        target: &Path,
        readonly: bool,
    ) -> Result<(), Status> {
        self.try_publish_within(CALL, node, vol, staging, target, readonly)
            .await
    }

    async fn publish(
        &self,
        node: &str,
        vol: &csi::Volume,
        staging: &Path,
        target: &Path,
        ro: bool,
    ) {
        let r = self.try_publish(node, vol, staging, target, ro).await;
        ok(&format!("NodePublishVolume on {node}"), r);
    }

    async fn unpublish_within(
        &self,
        node: &str,
        id: &str,
        target: &Path,
        limit: Duration,
    ) -> Duration {
        let req = csi::NodeUnpublishVolumeRequest {
            volume_id: id.to_string(),
            target_path: target.display().to_string(),
        };
        let d = self.drv(node);
        let (r, t) = timed(&format!("NodeUnpublishVolume on {node}"), limit, async {
            d.node().await.node_unpublish_volume(req).await
        })
        .await;
        ok(
            &format!("NodeUnpublishVolume {} on {node}", target.display()),
            r,
        );
        self.say(format!(
            "NodeUnpublishVolume on {node} at {} ({t:.2?})",
            self.short(target)
        ));
        t
    }

    async fn unpublish(&self, node: &str, id: &str, target: &Path) {
        self.unpublish_within(node, id, target, CALL).await;
    }

    async fn unstage_within(
        &self,
        node: &str,
        id: &str,
        staging: &Path,
        limit: Duration,
    ) -> Duration {
        let req = csi::NodeUnstageVolumeRequest {
            volume_id: id.to_string(),
            staging_target_path: staging.display().to_string(),
        };
        let d = self.drv(node);
        let (r, t) = timed(&format!("NodeUnstageVolume on {node}"), limit, async {
            d.node().await.node_unstage_volume(req).await
        })
        .await;
        ok(
            &format!("NodeUnstageVolume {} on {node}", staging.display()),
            r,
        );
        self.say(format!(
            "NodeUnstageVolume on {node} at {} ({t:.2?})",
            self.short(staging)
        ));
        t
    }

    async fn unstage(&self, node: &str, id: &str, staging: &Path) {
        self.unstage_within(node, id, staging, CALL).await;
    }

    async fn stats(
        &self,
        node: &str,
        id: &str,
        path: &Path,
        staging: Option<&Path>,
        limit: Duration,
    ) -> (Result<csi::NodeGetVolumeStatsResponse, Status>, Duration) {
        let req = csi::NodeGetVolumeStatsRequest {
            volume_id: id.to_string(),
            volume_path: path.display().to_string(),
            staging_target_path: staging.map(|s| s.display().to_string()).unwrap_or_default(),
        };
        let d = self.drv(node);
        timed(&format!("NodeGetVolumeStats on {node}"), limit, async {
            d.node().await.node_get_volume_stats(req).await
        })
        .await
    }

    async fn healthy_stats(
        &self,
        node: &str,
        id: &str,
        path: &Path,
    ) -> csi::NodeGetVolumeStatsResponse {
        let (r, t) = self.stats(node, id, path, None, CALL).await;
        let r = ok("NodeGetVolumeStats", r);
        assert_healthy_stats(&format!("stats of {}", path.display()), &r);
        let b = usage_of(&r, csi::volume_usage::Unit::Bytes);
        let i = usage_of(&r, csi::volume_usage::Unit::Inodes);
        self.say(format!(
            "NodeGetVolumeStats on {node} at {}: bytes {}/{} used, inodes {}/{} used ({t:.2?})",
            self.short(path),
            b.used,
            b.total,
            i.used,
            i.total
        ));
        r
    }

    /// The one mount of the export under the controller's work dir.
    fn controller_export_mount(&self) -> MountEntry {
        let exports = self.ctrl().work_dir.join("exports");
        let ms = entries_under(&exports);
        assert_eq!(
            ms.len(),
            1,
            "the controller must keep exactly one mount of the export under {}:{}",
            exports.display(),
            describe(&ms)
        );
        let m = ms.into_iter().next().unwrap();
        assert_eq!(
            m.fstype,
            self.nfs.fstype(),
            "{}",
            describe(std::slice::from_ref(&m))
        );
        assert_eq!(
            m.source,
            self.source(None),
            "{}",
            describe(std::slice::from_ref(&m))
        );
        assert!(
            m.super_options.iter().any(|o| o == self.nfs.vers_option()),
            "the export must be mounted with {}: {:?}",
            self.nfs.vers_option(),
            m.super_options
        );
        m
    }

    /// The single NFS mount at `path`, of `subdir`, with this version.
    fn assert_nfs_mount(&self, path: &Path, subdir: &str) -> MountEntry {
        let ms = mounts_at(path);
        assert_eq!(
            ms.len(),
            1,
            "exactly one mount at {}:{}",
            path.display(),
            describe(&ms)
        );
        let m = ms.into_iter().next().unwrap();
        assert_eq!(
            m.fstype,
            self.nfs.fstype(),
            "{}",
            describe(std::slice::from_ref(&m))
        );
        assert_eq!(
            m.source,
            self.source(Some(subdir)),
            "{}",
            describe(std::slice::from_ref(&m))
        );
        assert!(
            m.super_options.iter().any(|o| o == self.nfs.vers_option()),
            "{} must be mounted with {}: {:?}",
            path.display(),
            self.nfs.vers_option(),
            m.super_options
        );
        m
    }

    /// How many times the controller's log says it mounted an export.
    fn export_mounts_logged(&self) -> usize {
        self.ctrl().log_text().matches("mounted export").count()
    }

    fn stop_nfsd(&mut self) {
        self.say("SERVER: rpc.nfsd 0 (nfsd stopped; hard mounts hang from now on)");
        self.nfsd_stopped = true;
        run_cmd(&sbin("rpc.nfsd"), &["0"]);
    }

    fn start_nfsd(&mut self) {
        run_cmd(&sbin("rpc.nfsd"), &["8"]);
        self.nfsd_stopped = false;
        self.say("SERVER: rpc.nfsd 8 (nfsd running again)");
    }

    fn unexport(&mut self) {
        let spec = format!("*:{}", self.export.display());
        self.say(format!("SERVER: exportfs -u {spec}"));
        self.unexported = true;
        run_cmd(&sbin("exportfs"), &["-u", &spec]);
    }

    fn reexport(&mut self) {
        let spec = format!("*:{}", self.export.display());
        run_cmd(&sbin("exportfs"), &["-o", EXPORT_OPTIONS, &spec]);
        self.unexported = false;
        self.say(format!("SERVER: exportfs -o {EXPORT_OPTIONS} {spec}"));
    }

    /// Stops every driver gracefully (SIGTERM) and unmounts the controller's
    /// kept export mounts (which the driver leaves in place on purpose, as
    /// a restart reuses them); then nothing of the test may stay mounted.
    fn finish(&mut self) {
        for (l, d) in &mut self.drivers {
            let st = d.terminate();
            assert!(st.success(), "driver {l} exited with {st} on SIGTERM");
        }
        let kept = entries_under(&self.scratch);
        for m in kept.iter().rev() {
            nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::empty())
                .unwrap_or_else(|e| panic!("umount {}: {e}", m.mount_point.display()));
        }
        let left = self.our_mounts();
        assert!(left.is_empty(), "mounts left behind:{}", describe(&left));
        self.say(format!(
            "done: drivers stopped, {} kept controller mount(s) unmounted, mount table clean",
            kept.len()
        ));
    }
}

/// The driver's own log lines (no h2/hyper/tower debug noise), without
/// terminal colours.
fn readable_log(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut plain = String::with_capacity(line.len());
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        if ["h2::", "hyper", "tower::", "tonic::transport"]
            .iter()
            .any(|noise| plain.contains(noise))
        {
            continue;
        }
        out.push(plain);
    }
    out
}

fn ids(ms: &[MountEntry]) -> Vec<(u32, PathBuf)> {
    let mut v: Vec<_> = ms
        .iter()
        .map(|m| (m.mount_id, m.mount_point.clone()))
        .collect();
    v.sort();
    v
}

impl Drop for Rig {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        // The server first: with it back, nothing below can hang.
        if self.unexported {
            let spec = format!("*:{}", self.export.display());
            let _ = std::process::Command::new(sbin("exportfs"))
                .args(["-o", EXPORT_OPTIONS, &spec])
                .status();
            eprintln!("[{}] cleanup: re-exported {spec}", self.name);
        }
        if self.nfsd_stopped {
            let _ = std::process::Command::new(sbin("rpc.nfsd"))
                .arg("8")
                .status();
            eprintln!("[{}] cleanup: restarted nfsd", self.name);
        }
        for (_, d) in &mut self.drivers {
            d.kill();
        }
        // Driver logs: kept with the run's output, and shown on failure.
        let logs = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/nfsvm/e2e-logs")
            .join(&self.name);
        let _ = std::fs::create_dir_all(&logs);
        for (l, d) in &self.drivers {
            let text = d.log_text();
            let _ = std::fs::write(
                logs.join(format!("{l}.log")),
                readable_log(&text).join("\n"),
            );
            if failed {
                let lines: Vec<String> = readable_log(&text);
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "---- {}: last lines of driver {l}'s log ({}) ----\n{}",
                    self.name,
                    self.scratch.join(l).join("driver.log").display(),
                    tail.join("\n")
                );
            }
        }
        // Unmount (lazily: never blocks) whatever is left, then remove the
        // directories, but never recurse into something still mounted.
        for root in [&self.kubelet, &self.scratch] {
            let left = entries_under(root);
            if !left.is_empty() {
                eprintln!("[{}] cleanup: detaching{}", self.name, describe(&left));
            }
            drop(MountGuard(root.clone()));
            if entries_under(root).is_empty() {
                let _ = std::fs::remove_dir_all(root);
            } else {
                eprintln!(
                    "[{}] cleanup: {} still has mounts; left in place",
                    self.name,
                    root.display()
                );
            }
        }
        for rel in &self.server_junk {
            let p = self.export.join(rel);
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        let _ = self.drivers.drain(..);
        if failed {
            eprintln!("[{}] FAILED; driver logs in {}", self.name, logs.display());
        }
    }
}

// ---- scenario 1: provisioning ------------------------------------------------------------

/// CreateVolume/DeleteVolume on `server`/`share` parameters: directories
/// appear on the server, subDir templates, onDelete delete/retain/archive,
/// and the controller's one kept mount of the export (also across a crash).
async fn provision(nfs: Nfs) {
    let mut rig = Rig::new("provision", nfs);
    rig.add_controller().await;
    let tag = nfs.tag();

    // A volume named after the PV: its directory appears on the server.
    let plain = format!("pvc-e2e-prov-{tag}-plain");
    rig.junk(&plain);
    let v = rig.create(&plain, &[]).await;
    let expected_id = format!(
        "v1#nfs#{}#{}#{}#{plain}",
        rig.server,
        rig.export.display(),
        nfs.flag()
    );
    assert_eq!(v.volume_id, expected_id);
    assert_eq!(v.capacity_bytes, 1 << 30);
    assert_eq!(v.volume_context.get("server"), Some(&rig.server));
    assert_eq!(
        v.volume_context.get("share").map(String::as_str),
        Some(rig.export.to_str().unwrap())
    );
    assert_eq!(v.volume_context.get("subDir"), Some(&plain));
    assert!(
        rig.server_path(&plain).is_dir(),
        "{plain} must exist on the server"
    );
    let mount = rig.controller_export_mount();
    rig.say(format!(
        "server has /{plain}; controller mounted the export once: #{} {}",
        mount.mount_id,
        mount.mount_point.display()
    ));

    // The same request again: the same volume, no second mount.
    let again = rig.create(&plain, &[]).await;
    assert_eq!(again.volume_id, v.volume_id);
    assert_eq!(again.capacity_bytes, v.capacity_bytes);

    // subDir template with the provisioner's --extra-create-metadata.
    let ns = format!("e2e-prov-{tag}-team");
    rig.junk(&ns);
    let pv = format!("pvc-e2e-prov-{tag}-tmpl");
    let tv = rig
        .create(
            &pv,
            &[
                (
                    "subDir",
                    "${pvc.metadata.namespace}/${pvc.metadata.name}-${pv.metadata.name}",
                ),
                (PARAM_PVC_NAMESPACE, &ns),
                (PARAM_PVC_NAME, "data"),
                (PARAM_PV_NAME, &pv),
            ],
        )
        .await;
    let sub = format!("{ns}/data-{pv}");
    assert!(
        rig.server_path(&sub).is_dir(),
        "{sub} must exist on the server"
    );
    assert_eq!(tv.volume_context.get("subDir"), Some(&sub));
    assert!(
        tv.volume_id.ends_with(&format!("#{sub}")),
        "{}",
        tv.volume_id
    );
    rig.say(format!("subDir template -> /{sub} on the server"));

    // onDelete: delete, retain, archive; each with data in it.
    let parent = format!("e2e-prov-{tag}-ondelete");
    rig.junk(&parent);
    let mut vols = Vec::new();
    for policy in ["delete", "retain", "archive"] {
        let name = format!("pvc-e2e-prov-{tag}-{policy}");
        let subdir = format!("{parent}/{policy}");
        let v = rig
            .create(&name, &[("subDir", &subdir), ("onDelete", policy)])
            .await;
        std::fs::write(rig.server_path(&subdir).join("data"), policy).unwrap();
        vols.push((policy, subdir, v));
    }
    // Still the one mount, never remounted.
    assert_eq!(rig.controller_export_mount().mount_id, mount.mount_id);
    assert_eq!(
        rig.export_mounts_logged(),
        1,
        "the controller logged more than one export mount"
    );
    rig.say(format!(
        "after {} CreateVolume calls: still one mount of the export (#{})",
        6, mount.mount_id
    ));
    for (policy, subdir, v) in &vols {
        rig.delete(&v.volume_id).await;
        let dir = rig.server_path(subdir);
        match *policy {
            "delete" => assert!(!dir.exists(), "{subdir} must be deleted"),
            "retain" => assert_eq!(std::fs::read_to_string(dir.join("data")).unwrap(), "retain"),
            _ => {
                assert!(!dir.exists(), "{subdir} must be archived away");
                let archived = rig.server_path(&format!("{parent}/archived-archive"));
                assert_eq!(
                    std::fs::read_to_string(archived.join("data")).unwrap(),
                    "archive",
                    "archived directory with the data"
                );
            }
        }
        // The record is gone: the volume no longer exists for the driver.
        let err = rig.get_volume(&v.volume_id).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{}", err.message());
        // Deleting again is fine and changes nothing.
        rig.delete(&v.volume_id).await;
        rig.say(format!(
            "onDelete={policy}: server side as expected, second delete a no-op"
        ));
    }
    assert!(
        rig.server_path(&parent).is_dir(),
        "the parent directory stays"
    );
    let mut left: Vec<String> = std::fs::read_dir(rig.server_path(&parent))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec!["archived-archive", "retain"]);

    // A crash of the controller: the kernel keeps the mount, the restarted
    // driver reuses it, and the volumes are still listed.
    rig.crash("controller").await;
    let m = rig.controller_export_mount();
    assert_eq!(
        m.mount_id, mount.mount_id,
        "the kept mount survives the driver"
    );
    let listed = rig.list_ids().await;
    for id in [&v.volume_id, &tv.volume_id] {
        assert!(
            listed.contains(id),
            "{id} missing from ListVolumes after a restart: {listed:?}"
        );
    }
    let after = rig.create(&format!("pvc-e2e-prov-{tag}-after"), &[]).await;
    rig.junk(&format!("pvc-e2e-prov-{tag}-after"));
    assert_eq!(rig.controller_export_mount().mount_id, mount.mount_id);
    assert_eq!(
        rig.export_mounts_logged(),
        1,
        "the restarted controller mounted the export again"
    );
    rig.say("controller SIGKILLed and restarted: same mount reused, volumes still listed");

    for id in [&v.volume_id, &tv.volume_id, &after.volume_id] {
        rig.delete(id).await;
    }
    assert!(!rig.server_path(&plain).exists());
    assert!(!rig.server_path(&sub).exists());
    assert!(rig.server_path(&ns).is_dir(), "the template's parent stays");
    rig.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_v3() {
    if in_guest("provision_v3") {
        provision(Nfs::V3).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_v41() {
    if in_guest("provision_v41") {
        provision(Nfs::V41).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_v42() {
    if in_guest("provision_v42") {
        provision(Nfs::V42).await;
    }
}

// ---- scenario 2: kubelet's sequence on two nodes ---------------------------------------------

/// Create, stage on two nodes, three pods (one read-only), RWX data flow,
/// stats, then unpublish, unstage, delete; every call repeated once to
/// check idempotency; the mount table clean at the end.
async fn kubelet_two_nodes(nfs: Nfs) {
    let mut rig = Rig::new("kubelet_two_nodes", nfs);
    rig.add_controller().await;
    rig.add_node("node-a").await;
    rig.add_node("node-b").await;
    let tag = nfs.tag();
    let pv = format!("pvc-e2e-kubelet-{tag}");
    rig.junk(&pv);

    for node in ["node-a", "node-b"] {
        let d = rig.drv(node);
        let info = timed("NodeGetInfo", CALL, async {
            d.node()
                .await
                .node_get_info(csi::NodeGetInfoRequest {})
                .await
        })
        .await
        .0;
        assert_eq!(ok("NodeGetInfo", info).node_id, node);
    }

    let vol = rig.create(&pv, &[]).await;
    let id = vol.volume_id.clone();
    let d = rig.ctrl();
    let req = csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.clone(),
        volume_capabilities: vec![rig.cap()],
        ..Default::default()
    };
    let v = timed("ValidateVolumeCapabilities", CALL, async {
        d.controller().await.validate_volume_capabilities(req).await
    })
    .await
    .0;
    assert!(ok("ValidateVolumeCapabilities", v).confirmed.is_some());

    // Stage on both nodes (and once more on each: idempotent).
    let sa = rig.staging("node-a", &id);
    let sb = rig.staging("node-b", &id);
    for (node, s) in [("node-a", &sa), ("node-b", &sb)] {
        rig.stage(node, &vol, s).await;
        let m = rig.assert_nfs_mount(s, &pv);
        rig.stage(node, &vol, s).await;
        assert_eq!(
            rig.assert_nfs_mount(s, &pv).mount_id,
            m.mount_id,
            "restage stacked a mount"
        );
    }

    // Three pods: writer on node-a, writer on node-b, reader (read-only) on node-a.
    let pods = [
        ("node-a", &sa, rig.target("node-a", "pod-1-uid", &pv), false),
        ("node-b", &sb, rig.target("node-b", "pod-2-uid", &pv), false),
        ("node-a", &sa, rig.target("node-a", "pod-3-uid", &pv), true),
    ];
    for (node, s, t, ro) in &pods {
        rig.publish(node, &vol, s, t, *ro).await;
        let m = rig.assert_nfs_mount(t, &pv);
        assert_eq!(
            m.read_only(),
            *ro,
            "{} options {:?}",
            t.display(),
            m.options
        );
        rig.publish(node, &vol, s, t, *ro).await;
        assert_eq!(
            rig.assert_nfs_mount(t, &pv).mount_id,
            m.mount_id,
            "republish stacked a mount"
        );
        // The other mode on the same target is a conflict, not a remount.
        let err = rig.try_publish(node, &vol, s, t, !*ro).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{}", err.message());
    }
    let (p1, p2, p3) = (&pods[0].2, &pods[1].2, &pods[2].2);

    // RWX: written on one node, read on the other and by the read-only pod.
    write_file(&p1.join("hello.txt"), "from pod-1 on node-a").unwrap();
    assert_eq!(read_file(&p2.join("hello.txt")), "from pod-1 on node-a");
    assert_eq!(read_file(&p3.join("hello.txt")), "from pod-1 on node-a");
    write_file(&p2.join("reply.txt"), "from pod-2 on node-b").unwrap();
    assert_eq!(read_file(&p1.join("reply.txt")), "from pod-2 on node-b");
    assert_eq!(read_file(&p3.join("reply.txt")), "from pod-2 on node-b");
    assert_eq!(
        std::fs::read_to_string(rig.server_path(&pv).join("hello.txt")).unwrap(),
        "from pod-1 on node-a",
        "the server has the data"
    );
    rig.say("RWX: pod-1 (node-a) and pod-2 (node-b) see each other's writes; pod-3 reads both");

    // The read-only pod cannot write.
    let err = write_file(&p3.join("nope.txt"), "x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(nix::errno::Errno::EROFS as i32),
        "{err}"
    );
    let p = p3.join("nope-dir");
    let err = bounded("mkdir", Duration::from_secs(20), move || {
        std::fs::create_dir(p)
    })
    .unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(nix::errno::Errno::EROFS as i32),
        "{err}"
    );
    assert!(!rig.server_path(&pv).join("nope.txt").exists());
    rig.say("read-only pod-3: write and mkdir fail with EROFS");

    // Usage and health, from each node: the figures are the export's
    // file system as the server sees it (not the node's local one).
    let server = nix::sys::statvfs::statvfs(&rig.export).unwrap();
    let server_bytes = server.blocks() as i64 * server.fragment_size() as i64;
    let server_inodes = server.files() as i64;
    for (node, _, t, _) in &pods {
        let r = rig.healthy_stats(node, &id, t).await;
        let b = usage_of(&r, csi::volume_usage::Unit::Bytes);
        let i = usage_of(&r, csi::volume_usage::Unit::Inodes);
        assert!(
            (b.total - server_bytes).abs() <= server_bytes / 100 + (1 << 20),
            "stats bytes total {} is not the export's {server_bytes}",
            b.total
        );
        assert!(
            (i.total - server_inodes).abs() <= server_inodes / 100 + 16,
            "stats inodes total {} is not the export's {server_inodes}",
            i.total
        );
    }

    // Tear down: unpublish (twice), unstage (twice), delete.
    for (node, _, t, _) in &pods {
        rig.unpublish(node, &id, t).await;
        assert_unmounted(t);
        assert!(!t.exists(), "{} must be removed", t.display());
        rig.unpublish(node, &id, t).await;
    }
    // Not on the staging mounts' neighbours: the other pods' data is intact.
    assert_eq!(
        std::fs::read_to_string(rig.server_path(&pv).join("reply.txt")).unwrap(),
        "from pod-2 on node-b"
    );
    for (node, s) in [("node-a", &sa), ("node-b", &sb)] {
        rig.unstage(node, &id, s).await;
        assert_unmounted(s);
        assert!(!s.exists(), "{} must be removed", s.display());
        rig.unstage(node, &id, s).await;
    }
    let left = entries_under(&rig.kubelet);
    assert!(
        left.is_empty(),
        "mounts left under the kubelet roots:{}",
        describe(&left)
    );
    rig.delete(&id).await;
    assert!(
        !rig.server_path(&pv).exists(),
        "the volume's directory is deleted on the server"
    );
    rig.delete(&id).await;
    rig.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_two_nodes_v3() {
    if in_guest("kubelet_two_nodes_v3") {
        kubelet_two_nodes(Nfs::V3).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_two_nodes_v41() {
    if in_guest("kubelet_two_nodes_v41") {
        kubelet_two_nodes(Nfs::V41).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_two_nodes_v42() {
    if in_guest("kubelet_two_nodes_v42") {
        kubelet_two_nodes(Nfs::V42).await;
    }
}

// ---- scenario 3: the NFS server stops while volumes are mounted ------------------------------------

/// With volumes staged and published, nfsd stops: stats answer within 5 s
/// with an abnormal condition, other calls and other volumes keep being
/// served, a stage fails within its bound, unpublish and unstage return and
/// leave no mount. nfsd restarts: stage and publish work again.
async fn server_stops(nfs: Nfs) {
    let mut rig = Rig::new("server_stops", nfs);
    rig.add_controller().await;
    rig.add_node("node-a").await;
    let tag = nfs.tag();
    let pv = format!("pvc-e2e-fault-{tag}");
    rig.junk(&pv);
    let vol = rig.create(&pv, &[]).await;
    let id = vol.volume_id.clone();
    let sa = rig.staging("node-a", &id);
    let p1 = rig.target("node-a", "pod-1-uid", &pv);
    let p2 = rig.target("node-a", "pod-2-uid", &pv);
    // pod-4's path is never probed before its unpublish: that one goes
    // through the driver's own statvfs timeout.
    let p4 = rig.target("node-a", "pod-4-uid", &pv);
    rig.stage("node-a", &vol, &sa).await;
    rig.publish("node-a", &vol, &sa, &p1, false).await;
    rig.publish("node-a", &vol, &sa, &p2, true).await;
    rig.publish("node-a", &vol, &sa, &p4, false).await;
    write_file(&p1.join("before.txt"), "written before the outage").unwrap();
    rig.healthy_stats("node-a", &id, &p1).await;

    // Another volume on the same node that does not depend on the NFS
    // server: a directory of a local shared filesystem (mountedShare).
    let share = rig.scratch.join("local-share");
    std::fs::create_dir_all(share.join("local-vol")).unwrap();
    let local = csi::Volume {
        volume_id: VolumeId {
            export: ExportSpec::mounted(share.to_str().unwrap()).unwrap(),
            subdir: RelPath::parse("local-vol").unwrap(),
        }
        .to_string(),
        ..Default::default()
    };
    let sl = rig.staging("node-a", &local.volume_id);
    let pl = rig.target("node-a", "pod-9-uid", "pv-local");
    rig.stage("node-a", &local, &sl).await;
    rig.publish("node-a", &local, &sl, &pl, false).await;

    rig.stop_nfsd();

    // Stats of the dead volume, and meanwhile Probe, NodeGetInfo and stats
    // of the local volume: all quick while the first call is stuck.
    let node = rig.drv("node-a");
    let t0 = Instant::now();
    let stuck = async {
        let r = rig.stats("node-a", &id, &p1, Some(&sa), STATS_BOUND).await;
        (r, t0.elapsed())
    };
    let others = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (probe, tp) = timed("Probe", QUICK, async {
            node.identity().await.probe(csi::ProbeRequest {}).await
        })
        .await;
        assert_eq!(ok("Probe", probe).ready, Some(true));
        let (info, ti) = timed("NodeGetInfo", QUICK, async {
            node.node()
                .await
                .node_get_info(csi::NodeGetInfoRequest {})
                .await
        })
        .await;
        assert_eq!(ok("NodeGetInfo", info).node_id, "node-a");
        let (ls, tl) = rig
            .stats("node-a", &local.volume_id, &pl, Some(&sl), QUICK)
            .await;
        assert_healthy_stats(
            "stats of the local volume",
            &ok("stats of the local volume", ls),
        );
        (tp, ti, tl, t0.elapsed())
    };
    let (((r, t_stats), _), (tp, ti, tl, t_others)) = tokio::join!(stuck, others);
    let r = ok("NodeGetVolumeStats on a dead server", r);
    let cond = r.volume_condition.clone().expect("a volume condition");
    rig.say(format!(
        "server down: NodeGetVolumeStats answered in {t_stats:.2?}: abnormal={} {:?}",
        cond.abnormal, cond.message
    ));
    rig.say(format!(
        "  meanwhile Probe {tp:.2?}, NodeGetInfo {ti:.2?}, stats of the local volume {tl:.2?} \
         (all done {t_others:.2?} after the stats call began)"
    ));
    assert!(
        cond.abnormal,
        "a dead server must be reported abnormal: {r:?}"
    );
    assert!(
        r.usage.is_empty(),
        "no usage figures from a dead server: {r:?}"
    );
    assert!(
        t_stats >= Duration::from_millis(1500),
        "statvfs on a hard mount of a stopped server should hang until the driver's 2 s \
         stats timeout, but the call answered in {t_stats:?}"
    );
    assert!(
        t_others < t_stats,
        "the other calls must have been answered while the stats call was stuck"
    );
    // Asked again (the first statvfs is still stuck): abnormal at once;
    // same for the staging path and the read-only pod's path.
    for (what, path) in [
        ("pod-1 again", &p1),
        ("staging", &sa),
        ("read-only pod-2", &p2),
    ] {
        let (r, t) = rig.stats("node-a", &id, path, Some(&sa), STATS_BOUND).await;
        let r = ok("NodeGetVolumeStats on a dead server", r);
        let c = r.volume_condition.expect("a volume condition");
        assert!(c.abnormal, "{what}: must be abnormal");
        rig.say(format!(
            "  stats of {what}: abnormal in {t:.2?}: {:?}",
            c.message
        ));
    }

    // A new stage against the dead server: fails within the mount timeout,
    // mounts nothing.
    let sx = rig.staging("node-a", &format!("{id}-other-node-path"));
    let (r, t) = rig.try_stage("node-a", &vol, &sx, STAGE_BOUND).await;
    let err = r.expect_err("a stage against a stopped server cannot succeed");
    rig.say(format!(
        "  NodeStageVolume on a dead server: {:?} in {t:.2?}: {}",
        err.code(),
        err.message()
    ));
    // v3: mount.nfs gives up at once (nfsd is no longer registered with
    // rpcbind): INTERNAL; v4.x: mount.nfs retries until the driver kills it
    // at --mount-timeout: UNAVAILABLE. Either way kubelet retries.
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Internal),
        "{:?}: {}",
        err.code(),
        err.message()
    );
    assert_unmounted(&sx);

    // The node driver crashes and restarts while the server is down: it
    // comes up and serves (its stuck threads die with it).
    let t = Instant::now();
    rig.crash("node-a").await;
    rig.say(format!(
        "  node driver SIGKILLed and restarted with the server down: {:.2?}",
        t.elapsed()
    ));

    // A new pod on the node while the server is down: NodePublish (a bind
    // of the hung staging mount) answers within its bound.
    let p5 = rig.target("node-a", "pod-5-uid", &pv);
    let t = Instant::now();
    let r = rig
        .try_publish_within(TEARDOWN_BOUND, "node-a", &vol, &sa, &p5, false)
        .await;
    rig.say(format!(
        "  NodePublishVolume of a new pod with the server down: {} in {:.2?}; mounts there:{}",
        match &r {
            Ok(()) => "OK".to_string(),
            Err(e) => format!("{:?}: {}", e.code(), e.message()),
        },
        t.elapsed(),
        describe(&mounts_at(&p5))
    ));
    if r.is_ok() {
        rig.assert_nfs_mount(&p5, &pv);
    }

    // Unpublish and unstage return and leave no mount.
    for (what, t) in [
        ("rw pod-1", &p1),
        ("ro pod-2", &p2),
        ("never-probed pod-4", &p4),
        ("new pod-5", &p5),
    ] {
        let took = rig.unpublish_within("node-a", &id, t, TEARDOWN_BOUND).await;
        assert_unmounted(t);
        rig.say(format!(
            "  unpublish of {what} with the server down: {took:.2?}, no mount left"
        ));
    }
    let took = rig.unstage_within("node-a", &id, &sa, TEARDOWN_BOUND).await;
    assert_unmounted(&sa);
    rig.say(format!(
        "  unstage with the server down: {took:.2?}, no mount left"
    ));
    rig.unstage_within("node-a", &id, &sx, TEARDOWN_BOUND).await;
    // The local volume is unaffected all along.
    rig.healthy_stats("node-a", &local.volume_id, &pl).await;
    rig.unpublish("node-a", &local.volume_id, &pl).await;
    rig.unstage("node-a", &local.volume_id, &sl).await;
    assert!(
        entries_under(&rig.kubelet).is_empty(),
        "{}",
        describe(&entries_under(&rig.kubelet))
    );

    rig.start_nfsd();
    // The killed mount attempt (and any call that timed out) left nothing
    // behind, not even once the stuck system calls could finish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for p in [&p1, &p2, &p4, &p5, &sa, &sx] {
        assert_unmounted(p);
    }
    for p in [&p1, &p2, &p4, &p5, &sa, &sx] {
        assert!(!exists(p), "{} must be removed", p.display());
    }

    // Kubelet retries: stage and publish work again once the server is back.
    let t0 = Instant::now();
    let sa = rig.staging("node-a", &id);
    loop {
        let (r, t) = rig.try_stage("node-a", &vol, &sa, STAGE_BOUND).await;
        match r {
            Ok(()) => {
                rig.say(format!(
                    "server back: NodeStageVolume OK ({t:.2?}; {:.2?} after restart)",
                    t0.elapsed()
                ));
                break;
            }
            Err(e) if t0.elapsed() < RECOVERY => {
                rig.say(format!("  stage not yet: {:?}: {}", e.code(), e.message()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!(
                "stage after the server restart: {:?}: {}",
                e.code(),
                e.message()
            ),
        }
    }
    rig.assert_nfs_mount(&sa, &pv);
    let p3 = rig.target("node-a", "pod-3-uid", &pv);
    rig.publish("node-a", &vol, &sa, &p3, false).await;
    assert_eq!(
        read_file(&p3.join("before.txt")),
        "written before the outage"
    );
    write_file(&p3.join("after.txt"), "written after the outage").unwrap();
    assert_eq!(
        std::fs::read_to_string(rig.server_path(&pv).join("after.txt")).unwrap(),
        "written after the outage"
    );
    let t0 = Instant::now();
    loop {
        let (r, _) = rig.stats("node-a", &id, &p3, Some(&sa), STATS_BOUND).await;
        let r = ok("NodeGetVolumeStats", r);
        if !r.volume_condition.as_ref().is_some_and(|c| c.abnormal) || t0.elapsed() > RECOVERY {
            assert_healthy_stats("stats after the server restart", &r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rig.say("server back: publish, read, write and stats work again");
    rig.unpublish("node-a", &id, &p3).await;
    rig.unstage("node-a", &id, &sa).await;
    rig.delete(&id).await;
    assert!(!rig.server_path(&pv).exists());
    rig.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stops_v3() {
    if in_guest("server_stops_v3") {
        server_stops(Nfs::V3).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stops_v41() {
    if in_guest("server_stops_v41") {
        server_stops(Nfs::V41).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stops_v42() {
    if in_guest("server_stops_v42") {
        server_stops(Nfs::V42).await;
    }
}

// ---- scenario 4: the driver crashes between every step ----------------------------------------------

/// kubelet's sequence with every driver SIGKILLed and restarted after every
/// step, and every step repeated after the restart: nothing is lost, no
/// mount is stacked or dropped, repeated calls succeed.
async fn driver_crashes(nfs: Nfs) {
    let mut rig = Rig::new("driver_crashes", nfs);
    rig.add_controller().await;
    rig.add_node("node-a").await;
    let tag = nfs.tag();
    let pv = format!("pvc-e2e-crash-{tag}");
    rig.junk(&pv);

    let vol = rig.create(&pv, &[]).await;
    let id = vol.volume_id.clone();
    let export_mount = rig.controller_export_mount();
    rig.crash_all("CreateVolume").await;
    let again = rig.create(&pv, &[]).await;
    assert_eq!(again.volume_id, id);
    assert!(
        rig.list_ids().await.contains(&id),
        "ListVolumes lost the volume"
    );
    let got = ok("ControllerGetVolume", rig.get_volume(&id).await);
    let cond = got
        .status
        .and_then(|s| s.volume_condition)
        .expect("condition");
    assert!(!cond.abnormal, "{}", cond.message);
    assert_eq!(
        rig.controller_export_mount().mount_id,
        export_mount.mount_id
    );

    let sa = rig.staging("node-a", &id);
    rig.stage("node-a", &vol, &sa).await;
    let stage_mount = rig.assert_nfs_mount(&sa, &pv);
    rig.crash_all("NodeStageVolume").await;
    rig.stage("node-a", &vol, &sa).await;
    assert_eq!(
        rig.assert_nfs_mount(&sa, &pv).mount_id,
        stage_mount.mount_id
    );

    let p1 = rig.target("node-a", "pod-1-uid", &pv);
    let p2 = rig.target("node-a", "pod-2-uid", &pv);
    rig.publish("node-a", &vol, &sa, &p1, false).await;
    rig.crash_all("NodePublishVolume (rw)").await;
    rig.publish("node-a", &vol, &sa, &p2, true).await;
    rig.crash_all("NodePublishVolume (ro)").await;
    let m1 = rig.assert_nfs_mount(&p1, &pv);
    let m2 = rig.assert_nfs_mount(&p2, &pv);
    rig.publish("node-a", &vol, &sa, &p1, false).await;
    rig.publish("node-a", &vol, &sa, &p2, true).await;
    assert_eq!(rig.assert_nfs_mount(&p1, &pv).mount_id, m1.mount_id);
    assert_eq!(rig.assert_nfs_mount(&p2, &pv).mount_id, m2.mount_id);
    assert!(rig.assert_nfs_mount(&p2, &pv).read_only());

    write_file(&p1.join("data.txt"), "survives crashes").unwrap();
    rig.crash_all("a write").await;
    assert_eq!(read_file(&p2.join("data.txt")), "survives crashes");
    assert_eq!(
        std::fs::read_to_string(rig.server_path(&pv).join("data.txt")).unwrap(),
        "survives crashes"
    );
    rig.healthy_stats("node-a", &id, &p1).await;
    rig.crash_all("NodeGetVolumeStats").await;
    rig.healthy_stats("node-a", &id, &p2).await;

    for (what, t) in [("rw", &p1), ("ro", &p2)] {
        rig.unpublish("node-a", &id, t).await;
        assert_unmounted(t);
        rig.crash_all(&format!("NodeUnpublishVolume ({what})"))
            .await;
        rig.unpublish("node-a", &id, t).await;
        assert!(!t.exists());
    }
    rig.unstage("node-a", &id, &sa).await;
    assert_unmounted(&sa);
    rig.crash_all("NodeUnstageVolume").await;
    rig.unstage("node-a", &id, &sa).await;
    assert!(!sa.exists());
    assert_eq!(
        std::fs::read_to_string(rig.server_path(&pv).join("data.txt")).unwrap(),
        "survives crashes",
        "the data outlives the node's mounts"
    );

    rig.delete(&id).await;
    rig.crash_all("DeleteVolume").await;
    rig.delete(&id).await;
    assert!(!rig.server_path(&pv).exists());
    assert!(!rig.list_ids().await.contains(&id));
    assert_eq!(
        rig.controller_export_mount().mount_id,
        export_mount.mount_id
    );
    assert_eq!(
        rig.export_mounts_logged(),
        1,
        "the export was mounted more than once"
    );
    rig.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_crashes_v3() {
    if in_guest("driver_crashes_v3") {
        driver_crashes(Nfs::V3).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_crashes_v41() {
    if in_guest("driver_crashes_v41") {
        driver_crashes(Nfs::V41).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_crashes_v42() {
    if in_guest("driver_crashes_v42") {
        driver_crashes(Nfs::V42).await;
    }
}

// ---- scenario 5: the controller and an export that goes away -----------------------------------------

/// The export is withdrawn (exportfs -u) and comes back; the controller's
/// mount is unmounted behind its back; nfsd stops and starts. Each time
/// CreateVolume fails in bounded time while the export is unusable and
/// works again afterwards, with exactly one mount of the export.
async fn export_outages(nfs: Nfs) {
    let mut rig = Rig::new("export_outages", nfs);
    rig.add_controller().await;
    rig.add_node("node-a").await;
    let tag = nfs.tag();
    let name = |n: &str| format!("pvc-e2e-export-{tag}-{n}");
    for n in ["1", "2", "3", "4"] {
        rig.junk(&name(n));
    }
    let v1 = rig.create(&name("1"), &[]).await;
    rig.controller_export_mount();
    assert_eq!(rig.export_mounts_logged(), 1);
    // A volume in use on a node through the outage.
    let sa = rig.staging("node-a", &v1.volume_id);
    let p1 = rig.target("node-a", "pod-1-uid", &name("1"));
    rig.stage("node-a", &v1, &sa).await;
    rig.publish("node-a", &v1, &sa, &p1, false).await;

    // 1. The export is withdrawn.
    rig.unexport();
    let (r, t) = rig.try_create(&name("2"), &[], CONTROLLER_BOUND).await;
    let err = r.expect_err("CreateVolume without the export cannot succeed");
    rig.say(format!(
        "export withdrawn: CreateVolume -> {:?} in {t:.2?}: {}",
        err.code(),
        err.message()
    ));
    let ms = entries_under(&rig.ctrl().work_dir);
    assert!(ms.len() <= 1, "no stacked export mounts:{}", describe(&ms));
    assert!(
        rig.ctrl()
            .log_text()
            .contains("export mount went stale; remounting"),
        "the controller must have noticed its export mount failing"
    );
    let (r, t) = rig
        .stats("node-a", &v1.volume_id, &p1, Some(&sa), STATS_BOUND)
        .await;
    let r = ok("NodeGetVolumeStats", r);
    let c = r.volume_condition.expect("a condition");
    rig.say(format!(
        "  node's stats meanwhile: abnormal={} in {t:.2?}: {:?}",
        c.abnormal, c.message
    ));
    assert!(
        c.abnormal,
        "a withdrawn export must make the volume abnormal"
    );

    rig.reexport();
    let v2 = create_when_back(&rig, &name("2")).await;
    let m = rig.controller_export_mount();
    assert_eq!(
        rig.export_mounts_logged(),
        2,
        "the controller must have mounted the export again"
    );
    let v3 = rig.create(&name("3"), &[]).await;
    assert_eq!(rig.controller_export_mount().mount_id, m.mount_id);
    assert_eq!(rig.export_mounts_logged(), 2);
    assert!(rig.server_path(&name("2")).is_dir());
    rig.say(format!(
        "export back: CreateVolume works, remounted once, one export mount (#{})",
        m.mount_id
    ));
    // The node's mount recovers by itself.
    rig.healthy_stats("node-a", &v1.volume_id, &p1).await;

    // 2. The controller's mount disappears behind its back.
    nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH).unwrap();
    rig.say(format!(
        "unmounted the controller's export mount {}",
        m.mount_point.display()
    ));
    let logged = rig.export_mounts_logged();
    let v4 = rig.create(&name("4"), &[]).await;
    let m2 = rig.controller_export_mount();
    assert_eq!(
        rig.export_mounts_logged(),
        logged + 1,
        "the controller must have mounted the export again"
    );
    assert!(rig.server_path(&name("4")).is_dir());

    // 3. nfsd stops: bounded UNAVAILABLE, no remount; back: the same mount works.
    rig.stop_nfsd();
    let (r, t) = rig.try_create(&name("5"), &[], CONTROLLER_BOUND).await;
    let err = r.expect_err("CreateVolume with nfsd stopped cannot succeed");
    rig.say(format!(
        "nfsd stopped: CreateVolume -> {:?} in {t:.2?}: {}",
        err.code(),
        err.message()
    ));
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    let d = rig.ctrl();
    let (probe, tp) = timed("Probe", QUICK, async {
        d.identity().await.probe(csi::ProbeRequest {}).await
    })
    .await;
    assert_eq!(
        ok("Probe", probe).ready,
        Some(true),
        "a dead server must not make the driver unready"
    );
    rig.say(format!("  Probe meanwhile: ready in {tp:.2?}"));
    // The volume's health, as external-health-monitor asks for it.
    let req = csi::ControllerGetVolumeRequest {
        volume_id: v4.volume_id.clone(),
    };
    let (r, t) = timed("ControllerGetVolume", CONTROLLER_BOUND, async {
        d.controller().await.controller_get_volume(req).await
    })
    .await;
    let cond = ok("ControllerGetVolume with nfsd stopped", r)
        .status
        .and_then(|s| s.volume_condition)
        .expect("a volume condition");
    rig.say(format!(
        "  ControllerGetVolume meanwhile: abnormal={} in {t:.2?}: {:?}",
        cond.abnormal, cond.message
    ));
    assert!(cond.abnormal, "a dead server must make the volume abnormal");
    let (r, t) = timed("ListVolumes", CONTROLLER_BOUND, async {
        d.controller()
            .await
            .list_volumes(csi::ListVolumesRequest::default())
            .await
    })
    .await;
    rig.say(format!(
        "  ListVolumes meanwhile: {} in {t:.2?}",
        match &r {
            Ok(l) => format!("OK, {} entries", l.entries.len()),
            Err(e) => format!("{:?}: {}", e.code(), e.message()),
        }
    ));
    // Not an empty success: that would look like every volume is gone.
    assert_eq!(
        r.as_ref().map(|l| l.entries.len()).map_err(|e| e.code()),
        Err(Code::Unavailable),
        "ListVolumes with the export's server stopped must say it cannot list"
    );
    // A delete cannot be done now; it must say so, in bounded time, and
    // lose nothing.
    let (r, t) = rig.try_delete(&v4.volume_id, CONTROLLER_BOUND).await;
    let err = r.expect_err("DeleteVolume with nfsd stopped cannot succeed");
    rig.say(format!(
        "  DeleteVolume meanwhile: {:?} in {t:.2?}: {}",
        err.code(),
        err.message()
    ));
    assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
    assert_eq!(
        rig.controller_export_mount().mount_id,
        m2.mount_id,
        "a hung mount is not replaced"
    );
    rig.start_nfsd();
    rig.junk(&name("5"));
    let v5 = create_when_back(&rig, &name("5")).await;
    assert_eq!(
        rig.controller_export_mount().mount_id,
        m2.mount_id,
        "the same mount serves again"
    );
    assert!(
        rig.server_path(&name("4")).is_dir(),
        "the failed delete lost nothing"
    );
    assert!(rig.list_ids().await.contains(&v4.volume_id));

    rig.unpublish("node-a", &v1.volume_id, &p1).await;
    rig.unstage("node-a", &v1.volume_id, &sa).await;
    for v in [&v1, &v2, &v3, &v4, &v5] {
        rig.delete(&v.volume_id).await;
    }
    for n in ["1", "2", "3", "4", "5"] {
        assert!(
            !rig.server_path(&name(n)).exists(),
            "{} must be deleted",
            name(n)
        );
    }
    rig.finish();
}

/// CreateVolume retried until the server serves again (bounded).
async fn create_when_back(rig: &Rig, name: &str) -> csi::Volume {
    let t0 = Instant::now();
    loop {
        let (r, t) = rig.try_create(name, &[], CONTROLLER_BOUND).await;
        match r {
            Ok(v) => {
                rig.say(format!(
                    "CreateVolume {name} OK ({t:.2?}; {:.2?} after the fix)",
                    t0.elapsed()
                ));
                return v;
            }
            Err(e) if t0.elapsed() < RECOVERY => {
                rig.say(format!(
                    "  CreateVolume not yet: {:?}: {}",
                    e.code(),
                    e.message()
                ));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!(
                "CreateVolume {name} after the server came back: {:?}: {}",
                e.code(),
                e.message()
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_outages_v3() {
    if in_guest("export_outages_v3") {
        export_outages(Nfs::V3).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_outages_v41() {
    if in_guest("export_outages_v41") {
        export_outages(Nfs::V41).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_outages_v42() {
    if in_guest("export_outages_v42") {
        export_outages(Nfs::V42).await;
    }
}
