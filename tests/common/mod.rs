//! Test support: start the real `nfs-csi` binary on a temporary socket and
//! talk to it with the generated tonic clients.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use nfs_csi::grpc::csi::v1 as csi;
use tonic::transport::{Channel, Endpoint};

pub use csi::controller_client::ControllerClient;
pub use csi::group_controller_client::GroupControllerClient;
pub use csi::identity_client::IdentityClient;
pub use csi::node_client::NodeClient;

/// Path of the driver binary under test (`NFS_CSI_BIN` overrides, for the
/// e2e guest).
pub fn driver_bin() -> PathBuf {
    std::env::var_os("NFS_CSI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_nfs-csi")))
}

/// A running driver process.
pub struct Driver {
    pub socket: PathBuf,
    pub work_dir: PathBuf,
    args: Vec<String>,
    node_id: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Driver {
    /// Starts `nfs-csi serve` with a socket and work dir under `dir` and
    /// the extra `args`; waits until it answers.
    pub async fn start(dir: &Path, args: &[&str]) -> Driver {
        Driver::start_node(dir, "node-1", args).await
    }

    /// Like [`Driver::start`], with `--node-id node_id` (to simulate
    /// several nodes).
    pub async fn start_node(dir: &Path, node_id: &str, args: &[&str]) -> Driver {
        let mut d = Driver {
            socket: dir.join("csi.sock"),
            work_dir: dir.join("work"),
            args: args.iter().map(|s| s.to_string()).collect(),
            node_id: node_id.to_string(),
            child: None,
            log: dir.join("driver.log"),
        };
        d.spawn().await;
        d
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("driver log");
        let child = Command::new(driver_bin())
            .arg("serve")
            .arg("--endpoint")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--node-id")
            .arg(&self.node_id)
            .arg("--work-dir")
            .arg(&self.work_dir)
            .args(&self.args)
            // NFS_CSI_TEST_LOG lets a test (in its own process, as nextest
            // runs them) ask for more.
            .env(
                "RUST_LOG",
                std::env::var("NFS_CSI_TEST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nfs-csi");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(ch) = connect(&self.socket).await
                && IdentityClient::new(ch)
                    .probe(csi::ProbeRequest {})
                    .await
                    .is_ok()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("driver exited early ({status}); log:\n{}", self.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "driver did not answer within 20 s; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The driver's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as Kubernetes does; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("driver running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "driver did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill and start again with the same socket, work dir and flags.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub async fn channel(&self) -> Channel {
        connect(&self.socket).await.expect("connect to driver")
    }

    pub async fn identity(&self) -> IdentityClient<Channel> {
        IdentityClient::new(self.channel().await)
    }

    pub async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel().await)
    }

    pub async fn group_controller(&self) -> GroupControllerClient<Channel> {
        GroupControllerClient::new(self.channel().await)
    }

    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tonic channel over a Unix socket.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
}

/// A filesystem mount capability with `flags` and the given access mode.
pub fn mount_cap(
    mode: csi::volume_capability::access_mode::Mode,
    flags: &[&str],
) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_type: Some(csi::volume_capability::AccessType::Mount(
            csi::volume_capability::MountVolume {
                mount_flags: flags.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
        )),
        access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
    }
}

/// The RWX capability Kubernetes sends for ReadWriteMany.
pub fn rwx() -> csi::VolumeCapability {
    mount_cap(
        csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter,
        &[],
    )
}

pub fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A CreateVolume request as external-provisioner sends it.
pub fn create_req(
    name: &str,
    bytes: i64,
    parameters: HashMap<String, String>,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rwx()],
        parameters,
        ..Default::default()
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Every path in a tree, relative, with its kind: to assert nothing
/// outside an export changed.
pub fn snapshot_tree(root: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
            let ft = e.file_type().ok();
            let kind = match ft {
                Some(t) if t.is_symlink() => "link",
                Some(t) if t.is_dir() => "dir",
                _ => "file",
            };
            out.push(format!("{kind} {rel}"));
            if ft.is_some_and(|t| t.is_dir() && !t.is_symlink()) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Mount points at or below `root`, from /proc/self/mountinfo.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    nfs_csi::sys::mount::parse_mountinfo(&text)
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(root))
        .collect()
}

/// Unmounts (lazily) everything below `root` when dropped: tests that mount
/// clean up whether they pass or fail.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let mut left = mounts_under(&self.0);
        left.reverse();
        for m in left {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Every entry below `dir`: a directory, or a file's mode and content
/// digest (relative path -> "dir" or "<mode> <sha256>"), for comparing a
/// restored tree with its source.
pub fn contents(dir: &Path) -> std::collections::BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
                out.insert(rel, "dir".into());
            } else {
                let digest = hex::encode(Sha256::digest(std::fs::read(&p).unwrap()));
                let mode = m.permissions().mode();
                out.insert(rel, format!("{mode:o} {digest}"));
            }
        }
    }
    out
}
