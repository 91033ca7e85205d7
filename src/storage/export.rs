//! Exports: the NFS shares (or admin-mounted shared directories) that
//! volumes are carved from, and the controller's long-lived mounts of them.
//!
//! Safety assumptions: an NFS export is mounted once, under the work
//! directory, and kept; each use checks it still answers (statvfs under a
//! timeout, one probe at a time per export) and remounts it when its handle
//! went stale. A server that does not answer makes calls on that export fail
//! with UNAVAILABLE; it never blocks calls on other exports. A `mountedShare`
//! root comes from the admin's StorageClass or flags, but mistakes happen: it
//! must be an existing directory reached without symlinks, outside the host's
//! system trees, and below an `--allowed-share-root` when those are set. The
//! list of exports ever used is persisted in the work directory (each write
//! under one lock, with every export known) so ListVolumes covers them after
//! a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ids::{RelPath, absolute_path};
use crate::sys::mount::{self, Mounter};
use crate::sys::offload::{self, Probes};
use crate::sys::safefs::{self, FsStats};
use crate::sys::text::quote;

/// Host directories that are never a `mountedShare` root, nor below one,
/// nor above one (a root above them would let a `subDir` adopt them): the
/// host's own system trees and the kubelet's and container runtimes' state.
/// A `lib*` top directory is refused too.
const SYSTEM_TREES: &[&str] = &[
    "/root",
    "/var/lib/containerd",
    "/var/lib/docker",
    "/var/lib/k0s",
    "/var/lib/rancher",
    "/var/lib/containers",
    "/var/lib/cni",
    "/var/lib/etcd",
    "/proc",
    "/sys",
    "/dev",
    "/etc",
    "/boot",
    "/usr",
    "/bin",
    "/sbin",
    "/run",
    "/var/run",
    "/var/lib/kubelet",
];

/// The admin's `--allowed-share-root`s, set once at start; unset or empty:
/// any root outside the system trees.
static ALLOWED_ROOTS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

/// Sets the directories a `mountedShare` root must be (or be below), for
/// the life of the process. Call before parsing any export; a second call
/// is ignored (returns false).
pub fn set_allowed_roots(roots: Vec<PathBuf>) -> bool {
    ALLOWED_ROOTS.set(roots).is_ok()
}

/// Why `root` (a validated absolute path) cannot be a `mountedShare` root
/// under `allowed` (empty: no allow-list), if it cannot.
fn refused_root(root: &Path, allowed: &[PathBuf]) -> Option<String> {
    if root == Path::new("/") {
        return Some("the host's / cannot be a share".into());
    }
    let first = root
        .components()
        .nth(1)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    if first.starts_with("lib")
        || SYSTEM_TREES
            .iter()
            .any(|t| root.starts_with(t) || Path::new(t).starts_with(root))
    {
        return Some(format!(
            "{} is, holds or is in a host system directory ({}, /lib*); use a directory made \
             for shared data",
            quote(&root.to_string_lossy()),
            SYSTEM_TREES.join(", ")
        ));
    }
    if !allowed.is_empty() && !allowed.iter().any(|a| root.starts_with(a)) {
        return Some(format!(
            "{} is not below an allowed share root (--allowed-share-root: {})",
            quote(&root.to_string_lossy()),
            allowed
                .iter()
                .map(|a| a.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    None
}

/// A host name (RFC 1123 labels, so an IPv4 address too) or an IPv6
/// address, bare or in brackets: never anything mount.nfs could read as a
/// local path or an option.
fn valid_server(server: &str) -> bool {
    if server.contains(':') {
        let bare = server
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(server);
        return bare.parse::<std::net::Ipv6Addr>().is_ok();
    }
    server.len() <= 253
        && server.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Where volumes are carved from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ExportSpec {
    /// `server:/share`, mounted with `options`.
    Nfs {
        server: String,
        share: String,
        options: Vec<String>,
    },
    /// A shared filesystem already mounted at `root` on every host.
    Mounted { root: PathBuf },
}

impl ExportSpec {
    pub fn nfs(server: &str, share: &str, options: &[String]) -> Result<Self, super::Error> {
        let bad = |name: &str, reason: String| super::Error::InvalidParameter {
            name: name.to_string(),
            reason,
        };
        if !valid_server(server) {
            return Err(bad(
                "server",
                format!(
                    "{} is not a host name, an IPv4 address or an IPv6 address",
                    quote(server)
                ),
            ));
        }
        let share = absolute_path("share", share)?;
        for o in options {
            crate::sys::mountopts::check(o).map_err(|e| bad("mountOptions", e.to_string()))?;
        }
        Ok(ExportSpec::Nfs {
            server: server.to_string(),
            share: share.to_string_lossy().into_owned(),
            options: options.to_vec(),
        })
    }

    /// A `mountedShare` root: an absolute path, not `/`, outside the
    /// host's system trees and, when the admin set `--allowed-share-root`,
    /// at or below one of those. (Symlinks on the way are refused when the
    /// root is opened: see `safefs::DirFd::open_root`.)
    pub fn mounted(root: &str) -> Result<Self, super::Error> {
        let root = absolute_path("mountedShare", root)?;
        let allowed = ALLOWED_ROOTS.get().map(Vec::as_slice).unwrap_or(&[]);
        if let Some(reason) = refused_root(&root, allowed) {
            return Err(super::Error::InvalidParameter {
                name: "mountedShare".into(),
                reason,
            });
        }
        Ok(ExportSpec::Mounted { root })
    }

    /// Parses a `--export` flag: `server:/share` or an absolute path.
    pub fn parse_flag(s: &str) -> Result<Self, super::Error> {
        if s.starts_with('/') {
            return Self::mounted(s);
        }
        match s.rsplit_once(":/") {
            Some((server, rest)) => {
                let server = server.trim_start_matches('[').trim_end_matches(']');
                Self::nfs(server, &format!("/{rest}"), &[])
            }
            None => Err(super::Error::InvalidParameter {
                name: "export".into(),
                reason: format!("{} is neither server:/share nor an absolute path", quote(s)),
            }),
        }
    }

    /// The same spec built again through the constructors' checks.
    fn revalidated(&self) -> Result<Self, super::Error> {
        match self {
            ExportSpec::Nfs {
                server,
                share,
                options,
            } => Self::nfs(server, share, options),
            ExportSpec::Mounted { root } => Self::mounted(&root.to_string_lossy()),
        }
    }

    /// A readable, unique name for messages, logs and paging tokens.
    pub fn key(&self) -> String {
        match self {
            ExportSpec::Nfs {
                server,
                share,
                options,
            } if options.is_empty() => format!("nfs://{server}{share}"),
            ExportSpec::Nfs {
                server,
                share,
                options,
            } => format!("nfs://{server}{share}?{}", options.join(",")),
            ExportSpec::Mounted { root } => format!("mounted:{}", root.display()),
        }
    }

    /// Where the data is, whatever the mount options: two specs with the
    /// same location hold the same volumes.
    pub fn location(&self) -> String {
        match self {
            ExportSpec::Nfs { server, share, .. } => format!("nfs://{server}{share}"),
            ExportSpec::Mounted { root } => format!("mounted:{}", root.display()),
        }
    }

    /// `server:/share[/subdir]` for mount.nfs (IPv6 addresses bracketed).
    pub fn nfs_source(&self, subdir: Option<&RelPath>) -> Option<String> {
        let ExportSpec::Nfs { server, share, .. } = self else {
            return None;
        };
        let host = if server.contains(':') && !server.starts_with('[') {
            format!("[{server}]")
        } else {
            server.clone()
        };
        let mut path = share.trim_end_matches('/').to_string();
        if let Some(sub) = subdir {
            path.push('/');
            path.push_str(sub.as_str());
        }
        if path.is_empty() {
            path.push('/');
        }
        Some(format!("{host}:{path}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("export {export} is not responding: {source}")]
    NotResponding {
        export: String,
        #[source]
        source: offload::Error,
    },
    #[error("export {export}: {path} is not an existing directory ({cause})")]
    Missing {
        export: String,
        path: PathBuf,
        cause: Errno,
    },
    #[error("cannot mount export {export}: {source}")]
    Mount {
        export: String,
        #[source]
        source: mount::Error,
    },
    #[error("state file {path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "export {export} overlaps the known export {known} (one holds the other's directory), so \
         one volume could hold another's; use one of them, or directories side by side"
    )]
    Overlap { export: String, known: String },
}

/// Whether two exports hold each other's data: one root inside the other's
/// (never the same one).
fn overlaps(a: &ExportSpec, b: &ExportSpec) -> bool {
    let nested = |x: &Path, y: &Path| x != y && (x.starts_with(y) || y.starts_with(x));
    match (a, b) {
        (ExportSpec::Mounted { root: x }, ExportSpec::Mounted { root: y }) => nested(x, y),
        (
            ExportSpec::Nfs {
                server: s1,
                share: x,
                ..
            },
            ExportSpec::Nfs {
                server: s2,
                share: y,
                ..
            },
        ) => s1.eq_ignore_ascii_case(s2) && nested(Path::new(x), Path::new(y)),
        _ => false,
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// One filesystem call (statvfs, mkdir...).
    pub fs: Duration,
    /// One `mount -t nfs`.
    pub mount: Duration,
}

/// The controller's exports: kept mounts and the list of known exports.
pub struct Exports {
    work_dir: PathBuf,
    mounter: Arc<dyn Mounter>,
    timeouts: Timeouts,
    probes: Probes<Result<FsStats, Errno>>,
    mount_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    configured: Vec<ExportSpec>,
    known: Arc<Mutex<BTreeMap<String, ExportSpec>>>,
    /// Held while the state file is written (by the blocking thread, so a
    /// write that outlives its timeout still cannot interleave with the
    /// next); each write takes the whole list as it is then.
    save_lock: Arc<Mutex<()>>,
    /// A save failed: the next `remember` writes again even if it adds
    /// nothing new.
    unsaved: Arc<std::sync::atomic::AtomicBool>,
}

const STATE_FILE: &str = "exports.json";

impl Exports {
    /// Loads the known exports from `work_dir` and adds the configured ones.
    pub fn open(
        work_dir: &Path,
        configured: Vec<ExportSpec>,
        mounter: Arc<dyn Mounter>,
        timeouts: Timeouts,
    ) -> Result<Exports, Error> {
        let path = work_dir.join(STATE_FILE);
        let state_err = |source| Error::State {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(work_dir).map_err(state_err)?;
        let mut known = BTreeMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let list: Vec<ExportSpec> = serde_json::from_slice(&bytes)
                    .map_err(|e| state_err(std::io::Error::other(e)))?;
                for spec in list {
                    // Checked again: an older version may have accepted a
                    // root that is refused now.
                    match spec.revalidated() {
                        Ok(spec) => {
                            known.insert(spec.key(), spec);
                        }
                        Err(e) => {
                            tracing::warn!(export = %spec.key(), error = %e, "known export dropped");
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(state_err(e)),
        }
        for spec in &configured {
            known.insert(spec.key(), spec.clone());
        }
        Ok(Exports {
            work_dir: work_dir.to_path_buf(),
            mounter,
            timeouts,
            probes: Probes::default(),
            mount_locks: Mutex::new(HashMap::new()),
            configured,
            known: Arc::new(Mutex::new(known)),
            save_lock: Arc::default(),
            unsaved: Arc::default(),
        })
    }

    /// The export used when a request names none: the only configured one.
    pub fn default_export(&self) -> Option<&ExportSpec> {
        match self.configured.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Every export known, sorted by key, one per location (the same share
    /// named with other mount options is the same data).
    pub fn known(&self) -> Vec<ExportSpec> {
        let all: Vec<ExportSpec> = self
            .known
            .lock()
            .map(|k| k.values().cloned().collect())
            .unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        all.into_iter()
            .filter(|e| seen.insert(e.location()))
            .collect()
    }

    /// Adds `spec` to the known exports, persisting the list. Concurrent
    /// calls never lose one another's export: the file is written under a
    /// lock with the list as it is at that moment, after the insert.
    pub async fn remember(&self, spec: &ExportSpec) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if known.contains_key(&spec.key()) && !self.unsaved.load(Ordering::SeqCst) {
                return Ok(());
            }
            if let Some(other) = known.values().find(|k| overlaps(k, spec)) {
                return Err(Error::Overlap {
                    export: spec.key(),
                    known: other.key(),
                });
            }
            known.insert(spec.key(), spec.clone());
        }
        let dir = self.work_dir.clone();
        let path = dir.join(STATE_FILE);
        let (known, save_lock, unsaved) = (
            self.known.clone(),
            self.save_lock.clone(),
            self.unsaved.clone(),
        );
        let res = offload::run("save exports", self.timeouts.fs, move || {
            let _saving = save_lock.lock().unwrap_or_else(|p| p.into_inner());
            let list: Vec<ExportSpec> = known
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            let res = serde_json::to_vec_pretty(&list)
                .map_err(std::io::Error::other)
                .and_then(|bytes| {
                    safefs::DirFd::open_root(&dir)
                        .and_then(|d| d.write_atomic(STATE_FILE, &bytes))
                        .map_err(|e| std::io::Error::other(e.to_string()))
                });
            unsaved.store(res.is_err(), Ordering::SeqCst);
            res
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(Error::State { path, source }),
            Err(e) => {
                self.unsaved.store(true, Ordering::SeqCst);
                Err(Error::State {
                    path,
                    source: std::io::Error::other(e.to_string()),
                })
            }
        }
    }

    /// Where the controller mounts an NFS export.
    pub fn mount_point(&self, spec: &ExportSpec) -> PathBuf {
        let digest = hex::encode(Sha256::digest(spec.key().as_bytes()));
        self.work_dir.join("exports").join(&digest[..16])
    }

    /// The export's root directory on this host, mounted and answering,
    /// with its space figures.
    pub async fn ready(&self, spec: &ExportSpec) -> Result<(PathBuf, FsStats), Error> {
        let res = self.ready_inner(spec).await;
        let mounted = matches!(spec, ExportSpec::Nfs { .. }).then_some(res.is_ok());
        crate::sys::metrics::export_state(&spec.key(), mounted, res.is_ok());
        res
    }

    async fn ready_inner(&self, spec: &ExportSpec) -> Result<(PathBuf, FsStats), Error> {
        match spec {
            ExportSpec::Mounted { root } => {
                let stats = self
                    .probe(spec, root)
                    .await?
                    .map_err(|cause| Error::Missing {
                        export: spec.key(),
                        path: root.clone(),
                        cause,
                    })?;
                Ok((root.clone(), stats))
            }
            ExportSpec::Nfs { .. } => self.ready_nfs(spec).await,
        }
    }

    async fn ready_nfs(&self, spec: &ExportSpec) -> Result<(PathBuf, FsStats), Error> {
        let key = spec.key();
        let lock = {
            let mut locks = self.mount_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let mp = self.mount_point(spec);
        let source = spec.nfs_source(None).unwrap_or_default();
        let table = self
            .blocking_mounter(&key, "read mount table", |m| m.mounts())
            .await?;
        if let Some(entry) = mount::find(&table, &mp) {
            if entry.is_nfs() && entry.source == source {
                // A hung server fails here (NotResponding); it is not remounted.
                match self.probe(spec, &mp).await? {
                    Ok(stats) => return Ok((mp, stats)),
                    Err(e) => {
                        tracing::warn!(export = %key, error = %e, "export mount went stale; remounting");
                    }
                }
            } else {
                tracing::warn!(export = %key, found = %entry.source, "foreign mount at the export's mount point; replacing");
            }
            let target = mp.clone();
            self.blocking_mounter(&key, "detach stale export", move |m| m.detach(&target))
                .await?;
        }
        let target = mp.clone();
        let options = match spec {
            ExportSpec::Nfs { options, .. } => options.clone(),
            ExportSpec::Mounted { .. } => Vec::new(),
        };
        let src = source.clone();
        self.blocking_mounter(&key, "mount export", move |m| {
            std::fs::create_dir_all(&target).map_err(|e| mount::Error::Syscall {
                source_path: src.clone(),
                target: target.clone(),
                cause: e.raw_os_error().map(Errno::from_raw).unwrap_or(Errno::EIO),
            })?;
            m.mount_nfs(&src, &target, &options)
        })
        .await?;
        tracing::info!(export = %key, mount_point = %mp.display(), "mounted export");
        let stats = self
            .probe(spec, &mp)
            .await?
            .map_err(|cause| Error::Missing {
                export: key.clone(),
                path: mp.clone(),
                cause,
            })?;
        Ok((mp, stats))
    }

    /// statvfs of `path` under the fs timeout, one at a time per export.
    async fn probe(&self, spec: &ExportSpec, path: &Path) -> Result<Result<FsStats, Errno>, Error> {
        let p = path.to_path_buf();
        self.probes
            .run(
                &format!("statvfs {}", path.display()),
                self.timeouts.fs,
                move || {
                    let stats = safefs::fs_stats(&p)?;
                    // statvfs of a removed mountedShare root may still succeed on
                    // the parent filesystem's dentry: check it is a directory.
                    if !std::fs::metadata(&p).map(|m| m.is_dir()).unwrap_or(false) {
                        return Err(Errno::ENOTDIR);
                    }
                    Ok(stats)
                },
            )
            .await
            .map_err(|source| Error::NotResponding {
                export: spec.key(),
                source,
            })
    }

    async fn blocking_mounter<T: Send + 'static>(
        &self,
        key: &str,
        what: &'static str,
        f: impl FnOnce(&dyn Mounter) -> Result<T, mount::Error> + Send + 'static,
    ) -> Result<T, Error> {
        let m = self.mounter.clone();
        let timeout = self.timeouts.mount + self.timeouts.fs;
        match offload::run(what, timeout, move || f(m.as_ref())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(Error::Mount {
                export: key.to_string(),
                source,
            }),
            Err(source) => Err(Error::NotResponding {
                export: key.to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mount::FakeMounter;

    fn timeouts() -> Timeouts {
        Timeouts {
            fs: Duration::from_secs(5),
            mount: Duration::from_secs(5),
        }
    }

    #[test]
    fn flags_and_keys() {
        let n = ExportSpec::parse_flag("nfs.example.com:/exports/k8s").unwrap();
        assert_eq!(n.key(), "nfs://nfs.example.com/exports/k8s");
        assert_eq!(
            n.nfs_source(Some(&RelPath::parse("a/b").unwrap())).unwrap(),
            "nfs.example.com:/exports/k8s/a/b"
        );
        let v6 = ExportSpec::parse_flag("[fd00::1]:/").unwrap();
        assert_eq!(v6.nfs_source(None).unwrap(), "[fd00::1]:/");
        let m = ExportSpec::parse_flag("/srv/share").unwrap();
        assert_eq!(m.key(), "mounted:/srv/share");
        for bad in ["relative", "-oexec:/x", "host:/a/../b", "/", "h:/x\n"] {
            assert!(ExportSpec::parse_flag(bad).is_err(), "{bad:?}");
        }
        assert!(ExportSpec::nfs("h", "/e", &["vers=4.1".into(), "-o".into()]).is_err());
    }

    #[test]
    fn servers_are_host_names_or_ip_addresses() {
        for good in [
            "nfs.example.com",
            "10.0.0.1",
            "fd00::1",
            "[fd00::1]",
            "a-b.c",
            "localhost",
        ] {
            ExportSpec::nfs(good, "/e", &[]).unwrap();
        }
        for bad in [
            "", ".", "a..b", "-h", "h-", "a:b", "[a]", "[fd00::1", "fd00::1]", "./x", "h/x", "h x",
            "h,o",
        ] {
            assert!(ExportSpec::nfs(bad, "/e", &[]).is_err(), "{bad:?}");
        }
        // options that change what is mounted are refused for exports too
        for o in ["bind", "remount", "X-mount.mkdir"] {
            let err = ExportSpec::nfs("h", "/e", &[o.to_string()]).unwrap_err();
            assert!(err.to_string().contains("changes what is mounted"), "{err}");
        }
    }

    #[tokio::test]
    async fn nfs_export_is_mounted_once_and_kept() {
        // The fake mounter does not really mount, so the mount point is a
        // plain directory: enough to check the driver mounts it only once.
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeMounter::default());
        let exports = Exports::open(work.path(), vec![], fake.clone(), timeouts()).unwrap();
        let spec = ExportSpec::nfs("10.0.0.9", "/exports", &["vers=4.1".into()]).unwrap();
        let (root1, _) = exports.ready(&spec).await.unwrap();
        let (root2, _) = exports.ready(&spec).await.unwrap();
        assert_eq!(root1, root2);
        assert!(root1.starts_with(work.path()));
        let mounts: Vec<_> = fake
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("mount_nfs"))
            .collect();
        assert_eq!(
            mounts,
            vec![format!(
                "mount_nfs 10.0.0.9:/exports {} vers=4.1",
                root1.display()
            )]
        );
    }

    #[tokio::test]
    async fn foreign_mount_at_mount_point_is_replaced() {
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeMounter::default());
        let exports = Exports::open(work.path(), vec![], fake.clone(), timeouts()).unwrap();
        let spec = ExportSpec::nfs("10.0.0.9", "/exports", &[]).unwrap();
        let mp = exports.mount_point(&spec);
        std::fs::create_dir_all(&mp).unwrap();
        fake.mount_nfs("10.0.0.8:/other", &mp, &[]).unwrap();
        exports.ready(&spec).await.unwrap();
        let calls = fake.calls();
        assert!(
            calls.contains(&format!("detach {}", mp.display())),
            "{calls:?}"
        );
        assert_eq!(fake.mounts().unwrap().len(), 1);
        assert_eq!(fake.mounts().unwrap()[0].source, "10.0.0.9:/exports");
    }

    #[tokio::test]
    async fn mount_failure_is_reported_with_stderr() {
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeMounter::default());
        *fake.fail_nfs.lock().unwrap() = Some("access denied by server".into());
        let exports = Exports::open(work.path(), vec![], fake.clone(), timeouts()).unwrap();
        let spec = ExportSpec::nfs("10.0.0.9", "/exports", &[]).unwrap();
        let err = exports.ready(&spec).await.unwrap_err();
        assert!(err.to_string().contains("access denied by server"), "{err}");
        assert!(err.to_string().contains("nfs://10.0.0.9/exports"), "{err}");
    }

    #[tokio::test]
    async fn known_exports_survive_reopen() {
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeMounter::default());
        let configured = ExportSpec::parse_flag("/srv/a").unwrap();
        let exports = Exports::open(
            work.path(),
            vec![configured.clone()],
            fake.clone(),
            timeouts(),
        )
        .unwrap();
        let used = ExportSpec::parse_flag("/srv/b").unwrap();
        exports.remember(&used).await.unwrap();
        drop(exports);
        let again = Exports::open(work.path(), vec![], fake, timeouts()).unwrap();
        assert_eq!(again.known(), vec![configured, used]);
        assert!(again.default_export().is_none());
    }

    #[test]
    fn system_roots_are_refused() {
        for bad in [
            "/",
            "/proc/self/root",
            "/proc",
            "/etc",
            "/etc/ssl",
            "/sys/fs",
            "/dev/shm",
            "/usr/local/share",
            "/lib",
            "/lib64/x",
            "/boot",
            "/bin",
            "/sbin",
            "/run/secrets",
            "/var/lib/kubelet",
            "/var/lib/kubelet/pods",
            // roots above a system tree: a subDir could adopt it
            "/var",
            "/var/lib",
            "/var/lib/k0s",
            "/var/lib/k0s/kubelet",
            "/var/lib/containerd",
            "/root",
        ] {
            assert!(ExportSpec::mounted(bad).is_err(), "{bad}");
            assert!(ExportSpec::parse_flag(bad).is_err(), "{bad}");
        }
        for good in [
            "/srv/shared",
            "/tmp/x",
            "/mnt/nfs",
            "/var/lib/data",
            "/etcd",
            "/library",
        ] {
            let first = good.split('/').nth(1).unwrap();
            if first.starts_with("lib") {
                assert!(ExportSpec::mounted(good).is_err(), "{good}");
            } else {
                assert!(ExportSpec::mounted(good).is_ok(), "{good}");
            }
        }
        let allowed = [PathBuf::from("/srv/shared"), PathBuf::from("/mnt/a")];
        assert!(refused_root(Path::new("/srv/shared"), &allowed).is_none());
        assert!(refused_root(Path::new("/srv/shared/x"), &allowed).is_none());
        assert!(refused_root(Path::new("/mnt/a/b"), &allowed).is_none());
        let why = refused_root(Path::new("/srv/sharedx"), &allowed).unwrap();
        assert!(why.contains("--allowed-share-root"), "{why}");
        assert!(refused_root(Path::new("/tmp/x"), &allowed).is_some());
        assert!(refused_root(Path::new("/tmp/x"), &[]).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_remembers_are_all_saved() {
        let work = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeMounter::default());
        let exports =
            Arc::new(Exports::open(work.path(), vec![], fake.clone(), timeouts()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..40 {
            let e = exports.clone();
            tasks.push(tokio::spawn(async move {
                let spec = ExportSpec::mounted(&format!("/srv/r{i}")).unwrap();
                e.remember(&spec).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let again = Exports::open(work.path(), vec![], fake, timeouts()).unwrap();
        assert_eq!(again.known().len(), 40);
    }

    #[tokio::test]
    async fn an_export_inside_or_around_a_known_one_is_refused() {
        let work = tempfile::tempdir().unwrap();
        let outer = work.path().join("shared");
        let inner = outer.join("team");
        std::fs::create_dir_all(&inner).unwrap();
        let fake = Arc::new(FakeMounter::default());
        let exports = Exports::open(work.path(), vec![], fake.clone(), timeouts()).unwrap();
        let m = |p: &Path| ExportSpec::mounted(&p.display().to_string()).unwrap();
        exports.remember(&m(&outer)).await.unwrap();
        exports.remember(&m(&outer)).await.unwrap();
        let err = exports.remember(&m(&inner)).await.unwrap_err();
        assert!(matches!(err, Error::Overlap { .. }), "{err}");
        let nfs = |share: &str| ExportSpec::nfs("nfs.example", share, &[]).unwrap();
        exports.remember(&nfs("/exports/team")).await.unwrap();
        // the same share with other options is the same data: fine
        exports
            .remember(&ExportSpec::nfs("nfs.example", "/exports/team", &["hard".into()]).unwrap())
            .await
            .unwrap();
        for share in ["/exports", "/exports/team/a"] {
            let err = exports.remember(&nfs(share)).await.unwrap_err();
            assert!(matches!(err, Error::Overlap { .. }), "{share}: {err}");
        }
        exports.remember(&nfs("/exports/other")).await.unwrap();
        let again = Exports::open(work.path(), vec![], fake, timeouts()).unwrap();
        assert_eq!(again.known().len(), 3);
    }

    #[test]
    fn refused_roots_in_the_state_file_are_dropped() {
        let work = tempfile::tempdir().unwrap();
        std::fs::write(
            work.path().join(STATE_FILE),
            r#"[{"kind":"mounted","root":"/etc"},{"kind":"mounted","root":"/srv/ok"},
               {"kind":"mounted","root":"//"},{"kind":"nfs","server":"h;x","share":"/e","options":[]}]"#,
        )
        .unwrap();
        let exports = Exports::open(
            work.path(),
            vec![],
            Arc::new(FakeMounter::default()),
            timeouts(),
        )
        .unwrap();
        assert_eq!(
            exports.known(),
            vec![ExportSpec::mounted("/srv/ok").unwrap()]
        );
    }

    #[tokio::test]
    async fn missing_mounted_share_is_an_error() {
        let work = tempfile::tempdir().unwrap();
        let exports = Exports::open(
            work.path(),
            vec![],
            Arc::new(FakeMounter::default()),
            timeouts(),
        )
        .unwrap();
        let spec = ExportSpec::mounted(&work.path().join("nope").to_string_lossy()).unwrap();
        let err = exports.ready(&spec).await.unwrap_err();
        assert!(matches!(err, Error::Missing { .. }), "{err}");
    }
}
