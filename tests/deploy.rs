//! What `kubectl apply -k deploy/` and `kubectl apply -k snapshot-crds/` would
//! install, checked without a cluster: the manifests are rendered with
//! `kubectl kustomize`, every object is parsed into its k8s-openapi type (a
//! field the type does not know, a typo, fails), and the wiring a cluster
//! would only reveal by not working is asserted: sockets, kubelet paths,
//! driver names, flags, RBAC, images. The snapshot and group snapshot CRDs
//! are compared with what `nfs-csi crds` generates and with the shape of the
//! upstream ones, and the examples are validated against their schemas, CEL
//! rules included (the group snapshot parts: `deploy/groups.rs`).
//!
//! Needs `kubectl` (v1.27+, for its built-in kustomize v5) on PATH, or its
//! path in `KUBECTL`; without it these tests fail, they do not skip.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    Container, Namespace, PersistentVolumeClaim, Pod, PodSpec, ResourceQuota, ServiceAccount,
    Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::api::storage::v1::{CSIDriver, StorageClass};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps,
    JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nfs_csi::cli::crds;
use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};
use serde_json::{Value, json};

#[path = "deploy/groups.rs"]
mod groups;

const DRIVER: &str = "nfs-csi.dev";
const NAMESPACE: &str = "nfs-csi";
const KUBELET_DIR: &str = "/var/lib/kubelet";

// ---------------------------------------------------------------- rendering

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// `kubectl kustomize <dir>`, as YAML documents.
fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{} kustomize` ({e}): tests/deploy.rs renders deploy/ with kubectl's \
                 built-in kustomize. Install kubectl (v1.27 or later) and put it on PATH, or set \
                 KUBECTL to its path.",
                kubectl()
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&String::from_utf8(out.stdout).expect("kustomize prints UTF-8"))
}

fn yaml_docs(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Parses `v` as a `T` and checks that nothing was lost on the way: a field
/// the type does not know (a misspelt `mountPropagation`, say) would be
/// silently ignored by the API server too.
fn typed<T: DeserializeOwned + Serialize>(v: &Value) -> T {
    let what = describe(v);
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    if let Some(path) = first_difference(v, &back, String::new()) {
        panic!("{what}: {path} does not survive parsing as a typed object: unknown field or typo?");
    }
    t
}

fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, format!("{path}.{k}")),
                _ => Some(format!("{path}.{k}")),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, format!("{path}[{i}]"))),
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(path),
    }
}

fn describe(v: &Value) -> String {
    format!(
        "{} {}",
        v["kind"].as_str().unwrap_or("?"),
        v["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// A rendered set of objects, each already checked to parse as its type.
struct Objects(Vec<Value>);

/// storage.k8s.io/v1 VolumeAttributesClass (GA in Kubernetes 1.34; the
/// k8s-openapi version the crate builds against has only v1beta1): every
/// field the API has, none other.
#[derive(serde::Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VolumeAttributesClass {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    driver_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parameters: Option<BTreeMap<String, String>>,
}

impl Objects {
    fn render(rel: &str) -> Objects {
        Objects::parse(kustomize(&root().join(rel)))
    }

    fn parse(docs: Vec<Value>) -> Objects {
        for v in &docs {
            match v["kind"].as_str().unwrap_or_default() {
                "Namespace" => drop(typed::<Namespace>(v)),
                "ResourceQuota" => drop(typed::<ResourceQuota>(v)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(v)),
                "ClusterRole" => drop(typed::<ClusterRole>(v)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(v)),
                "Role" => drop(typed::<Role>(v)),
                "RoleBinding" => drop(typed::<RoleBinding>(v)),
                "CSIDriver" => drop(typed::<CSIDriver>(v)),
                "Deployment" => drop(typed::<Deployment>(v)),
                "DaemonSet" => drop(typed::<DaemonSet>(v)),
                "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(v)),
                "StorageClass" => drop(typed::<StorageClass>(v)),
                "PersistentVolumeClaim" => drop(typed::<PersistentVolumeClaim>(v)),
                "Pod" => drop(typed::<Pod>(v)),
                "VolumeSnapshot" => drop(typed::<crds::v1::VolumeSnapshot>(v)),
                "VolumeSnapshotClass" => drop(typed::<crds::v1::VolumeSnapshotClass>(v)),
                "VolumeGroupSnapshot" => drop(typed::<crds::group::v1::VolumeGroupSnapshot>(v)),
                "VolumeGroupSnapshotClass" => {
                    drop(typed::<crds::group::v1::VolumeGroupSnapshotClass>(v))
                }
                "VolumeAttributesClass" => drop(typed::<VolumeAttributesClass>(v)),
                other => panic!("{}: unexpected kind {other:?}", describe(v)),
            }
        }
        Objects(docs)
    }

    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.0.iter().filter(move |v| v["kind"] == kind)
    }

    fn all<T: DeserializeOwned + Serialize>(&self, kind: &str) -> Vec<T> {
        self.of_kind(kind).map(typed).collect()
    }

    fn one<T: DeserializeOwned + Serialize>(&self, kind: &str) -> T {
        let all: Vec<&Value> = self.of_kind(kind).collect();
        assert_eq!(all.len(), 1, "expected exactly one {kind}");
        typed(all[0])
    }

    fn kinds(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for v in &self.0 {
            *m.entry(v["kind"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        m
    }
}

// ------------------------------------------------------------- pod helpers

fn pod_spec_of_deployment(d: &Deployment) -> PodSpec {
    d.spec.clone().unwrap().template.spec.unwrap()
}

fn pod_spec_of_daemonset(d: &DaemonSet) -> PodSpec {
    d.spec.clone().unwrap().template.spec.unwrap()
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn volume<'a>(pod: &'a PodSpec, name: &str) -> &'a Volume {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn args(c: &Container) -> &[String] {
    c.args.as_deref().unwrap_or_default()
}

/// The value of `--name` in a container's args (`--name=v` or `--name v`;
/// `--name` alone reads as "true"), or of its environment variable `env`.
fn flag(c: &Container, name: &str, env: Option<&str>) -> Option<String> {
    let a = args(c);
    for (i, arg) in a.iter().enumerate() {
        if let Some(v) = arg.strip_prefix(&format!("{name}=")) {
            return Some(v.to_string());
        }
        if arg == name {
            return Some(match a.get(i + 1) {
                Some(next) if !next.starts_with("--") => next.clone(),
                _ => "true".into(),
            });
        }
    }
    let env = env?;
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == env)
        .and_then(|e| e.value.clone())
}

fn required_flag(c: &Container, name: &str, env: Option<&str>) -> String {
    flag(c, name, env).unwrap_or_else(|| panic!("container {} has no {name}", c.name))
}

fn unix_path(address: &str) -> String {
    address
        .strip_prefix("unix://")
        .unwrap_or(address)
        .to_string()
}

/// Which volume holds `path` in container `c`, and where below the volume.
fn resolve(c: &Container, path: &str) -> (String, String) {
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| path == m.mount_path || path.starts_with(&format!("{}/", m.mount_path)))
        .max_by_key(|m| m.mount_path.len())
        .unwrap_or_else(|| panic!("container {}: {path} is on no volume", c.name));
    let rel = path[m.mount_path.len()..]
        .trim_start_matches('/')
        .to_string();
    let sub = m.sub_path.clone().unwrap_or_default();
    let rel = [sub, rel]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    (m.name.clone(), rel)
}

fn host_path(pod: &PodSpec, volume_name: &str) -> String {
    volume(pod, volume_name)
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("volume {volume_name} is not a hostPath"))
        .path
        .clone()
}

fn image_tag(image: &str) -> Option<&str> {
    let last = image.rsplit('/').next().unwrap();
    last.split_once(':').map(|(_, t)| t)
}

/// The plugin's socket as each container of the pod names it: all must be
/// the same file of the same volume.
fn check_sockets(pod: &PodSpec) -> (String, String) {
    let plugin = container(pod, "nfs-csi");
    let endpoint = required_flag(plugin, "--endpoint", Some("CSI_ENDPOINT"));
    assert!(endpoint.starts_with("unix:///"), "endpoint {endpoint}");
    let socket = resolve(plugin, &unix_path(&endpoint));
    for c in pod.containers.iter().filter(|c| c.name != "nfs-csi") {
        let address = required_flag(c, "--csi-address", None);
        assert_eq!(
            resolve(c, &unix_path(&address)),
            socket,
            "container {} looks for the socket at {address}, the plugin listens on {endpoint}",
            c.name
        );
    }
    socket
}

/// The livenessprobe sidecar serves /healthz where the plugin's probe looks.
fn check_liveness(pod: &PodSpec) {
    let plugin = container(pod, "nfs-csi");
    let probe = plugin
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("the plugin has an HTTP liveness probe");
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
    let port = match &probe.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => {
            plugin
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no port named {name}"))
                .container_port
        }
    };
    let endpoint = required_flag(container(pod, "liveness-probe"), "--http-endpoint", None);
    assert_eq!(
        endpoint,
        format!(":{port}"),
        "livenessprobe listens on {endpoint}, kubelet probes port {port}"
    );
}

/// The flags of `nfs-csi serve`, from its own help.
fn serve_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nfs-csi"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn help_has_flag(help: &str, name: &str) -> bool {
    help.match_indices(name).any(|(i, _)| {
        !help[i + name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// The plugin container runs `nfs-csi serve` with flags and environment
/// variables that exist.
fn check_plugin_flags(pod: &PodSpec, mode: &str) {
    let help = serve_help();
    let plugin = container(pod, "nfs-csi");
    assert!(
        plugin.command.is_none(),
        "the image's entrypoint is nfs-csi"
    );
    assert_eq!(args(plugin).first().map(String::as_str), Some("serve"));
    for arg in &args(plugin)[1..] {
        let name = arg.split('=').next().unwrap();
        assert!(
            name.starts_with("--") && help_has_flag(&help, name),
            "nfs-csi serve has no flag {name}"
        );
    }
    for e in plugin.env.iter().flatten() {
        assert!(
            help.contains(&format!("[env: {}=", e.name)),
            "nfs-csi serve reads no environment variable {}",
            e.name
        );
    }
    assert_eq!(required_flag(plugin, "--mode", Some("CSI_MODE")), mode);
    let node_id = plugin
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_ID")
        .expect("NODE_ID is set");
    assert_eq!(
        node_id
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("spec.nodeName"),
        "the node id is the node's name"
    );
    // Metrics are on, on a declared port of the container.
    let metrics = required_flag(plugin, "--metrics-address", Some("METRICS_ADDRESS"));
    let port: i32 = metrics
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("--metrics-address {metrics:?} has no port"));
    assert!(
        plugin
            .ports
            .iter()
            .flatten()
            .any(|p| p.container_port == port && p.name.as_deref() == Some("metrics")),
        "the {mode} plugin serves metrics on {port} but declares no port named metrics there"
    );
    let sc = plugin.security_context.as_ref().expect("securityContext");
    assert_eq!(sc.privileged, Some(true), "the {mode} plugin mounts");
    assert_eq!(
        sc.run_as_user,
        Some(0),
        "the image's default user is not root"
    );
}

/// Sidecars need no privilege.
fn check_sidecars_unprivileged(pod: &PodSpec) {
    for c in pod.containers.iter().filter(|c| c.name != "nfs-csi") {
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_ne!(sc.privileged, Some(true), "{}", c.name);
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
    }
}

/// The node plugin's view of the kubelet directory, and the registrar's.
fn check_node_kubelet_wiring(pod: &PodSpec, kubelet_dir: &str) {
    let plugin = container(pod, "nfs-csi");
    assert_eq!(
        required_flag(plugin, "--kubelet-dir", Some("KUBELET_DIR")),
        kubelet_dir
    );
    // kubelet passes host paths: the plugin must see them at the same path.
    let mount = plugin
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == kubelet_dir)
        .expect("the kubelet dir is mounted at its own path");
    assert_eq!(
        mount.mount_propagation.as_deref(),
        Some("Bidirectional"),
        "mounts made by the plugin must reach kubelet and the pods"
    );
    assert_eq!(host_path(pod, &mount.name), kubelet_dir);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));

    // The socket on the host, where kubelet will dial it.
    let (socket_volume, socket_rel) = check_sockets(pod);
    let socket_on_host = format!("{}/{socket_rel}", host_path(pod, &socket_volume));
    assert_eq!(
        socket_on_host,
        format!("{kubelet_dir}/plugins/{DRIVER}/csi.sock")
    );
    let registrar = container(pod, "node-driver-registrar");
    assert_eq!(
        required_flag(registrar, "--kubelet-registration-path", None),
        socket_on_host,
        "the registrar must give kubelet the plugin's socket as the host sees it"
    );
    let probe = registrar
        .liveness_probe
        .as_ref()
        .and_then(|p| p.exec.as_ref())
        .and_then(|e| e.command.clone())
        .expect("the registrar has an exec liveness probe");
    assert!(probe.contains(&"--mode=kubelet-registration-probe".to_string()));
    assert!(probe.contains(&format!("--kubelet-registration-path={socket_on_host}")));
    let (reg_volume, reg_rel) = resolve(registrar, "/registration");
    assert_eq!(reg_rel, "");
    assert_eq!(
        host_path(pod, &reg_volume),
        format!("{kubelet_dir}/plugins_registry")
    );
    // Nothing in the pod still points at another kubelet directory.
    for v in pod.volumes.iter().flatten() {
        if let Some(h) = &v.host_path
            && h.path.contains("kubelet")
        {
            assert!(
                h.path.starts_with(kubelet_dir),
                "volume {}: {}",
                v.name,
                h.path
            );
        }
    }
}

// -------------------------------------------------------------------- RBAC

/// An RBAC rule as upstream writes it: (API group, resource, verbs).
type Rule = (&'static str, &'static str, &'static [&'static str]);

/// The RBAC that the upstream repository of a sidecar ships for the release
/// pinned here, written down so that a sidecar bump cannot silently lose a
/// permission: the pinned tag must be `release` (see
/// `sidecar_images_are_the_releases_their_rbac_was_read_from`), so a bump
/// fails until this table is read again from the new release.
///
/// What a deployment grants is `cluster` and `namespaced` less `omitted`:
/// rules (or verbs of them) upstream grants only for features this driver
/// does not use, each with the reason; plus `added`: cluster-wide verbs the
/// program of that release uses but upstream's file does not grant, each
/// with the evidence. Nothing else may be granted.
struct Upstream {
    /// The container that runs the sidecar.
    container: &'static str,
    /// The image, under registry.k8s.io/sig-storage/.
    image: &'static str,
    /// The pinned release the rules below were read for.
    release: &'static str,
    /// Where they were read (the search tool's stored copies of the upstream
    /// repositories; none holds a copy at the tag itself, so the newest stored
    /// copy of the file plus the release notes that changed RBAC since).
    source: &'static str,
    /// The ClusterRole.
    cluster: &'static [Rule],
    /// The Role, in the sidecar's own namespace.
    namespaced: &'static [Rule],
    omitted: &'static [(Rule, &'static str)],
    added: &'static [(Rule, &'static str)],
}

const LEASES: Rule = (
    "coordination.k8s.io",
    "leases",
    &["get", "watch", "list", "delete", "update", "create"],
);
const EVENTS: Rule = (
    "",
    "events",
    &["list", "watch", "create", "update", "patch"],
);

const UPSTREAM: &[Upstream] = &[
    Upstream {
        container: "csi-provisioner",
        image: "csi-provisioner",
        release: "v6.3.0",
        source: "kubernetes-csi/external-provisioner deploy/kubernetes/rbac.yaml (stored \
                 copy 6986f2af) with the rules added since: persistentvolumes patch (PR #1155, \
                 the PV finalizer), volumeattributesclasses (v6.3.0 release notes: storage/v1 \
                 VolumeAttributesClass required), volumesnapshots watch+update (PR #1458: the \
                 volumesnapshot-as-source-protection finalizer; PR #1519 in CHANGELOG-6.3.md: \
                 the controller that sweeps orphaned ones)",
        cluster: &[
            (
                "",
                "persistentvolumes",
                &["get", "list", "watch", "create", "patch", "delete"],
            ),
            (
                "",
                "persistentvolumeclaims",
                &["get", "list", "watch", "update"],
            ),
            (
                "storage.k8s.io",
                "storageclasses",
                &["get", "list", "watch"],
            ),
            EVENTS,
            (
                "snapshot.storage.k8s.io",
                "volumesnapshots",
                &["get", "list", "watch", "update"],
            ),
            (
                "snapshot.storage.k8s.io",
                "volumesnapshotcontents",
                &["get", "list"],
            ),
            ("storage.k8s.io", "csinodes", &["get", "list", "watch"]),
            ("", "nodes", &["get", "list", "watch"]),
            (
                "storage.k8s.io",
                "volumeattachments",
                &["get", "list", "watch"],
            ),
            (
                "storage.k8s.io",
                "volumeattributesclasses",
                &["get", "list", "watch"],
            ),
        ],
        namespaced: &[
            LEASES,
            (
                "storage.k8s.io",
                "csistoragecapacities",
                &[
                    "get", "list", "watch", "create", "update", "patch", "delete",
                ],
            ),
            ("", "pods", &["get"]),
            ("apps", "replicasets", &["get"]),
        ],
        omitted: &[
            (
                ("storage.k8s.io", "csinodes", &["get", "list", "watch"]),
                "topology: the driver reports no VOLUME_ACCESSIBILITY_CONSTRAINTS, so the \
                 provisioner reads no CSINode",
            ),
            (
                ("", "nodes", &["get", "list", "watch"]),
                "topology: as for csinodes",
            ),
            (
                (
                    "storage.k8s.io",
                    "volumeattachments",
                    &["get", "list", "watch"],
                ),
                "only for drivers with PUBLISH_UNPUBLISH_VOLUME (attachRequired: false here)",
            ),
            (
                (
                    "storage.k8s.io",
                    "csistoragecapacities",
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                ),
                "only with --enable-capacity, which is not set",
            ),
            (
                ("", "pods", &["get"]),
                "only to find the owner of CSIStorageCapacity objects (--enable-capacity)",
            ),
            (
                ("apps", "replicasets", &["get"]),
                "only to find the owner of CSIStorageCapacity objects (--enable-capacity)",
            ),
        ],
        added: &[],
    },
    Upstream {
        container: "csi-resizer",
        image: "csi-resizer",
        release: "v2.2.1",
        source: "kubernetes-csi/external-resizer deploy/kubernetes/rbac.yaml (stored copy \
                 3e019e63) with volumeattributesclasses added since (PR #537)",
        cluster: &[
            ("", "persistentvolumes", &["get", "list", "watch", "patch"]),
            ("", "persistentvolumeclaims", &["get", "list", "watch"]),
            ("", "pods", &["get", "list", "watch"]),
            ("", "persistentvolumeclaims/status", &["patch"]),
            EVENTS,
            (
                "storage.k8s.io",
                "volumeattributesclasses",
                &["get", "list", "watch"],
            ),
        ],
        namespaced: &[LEASES],
        omitted: &[(
            ("", "pods", &["get", "list", "watch"]),
            "only to wait for pods to stop using a claim; --handle-volume-inuse-error=false \
             (expansion is online)",
        )],
        added: &[],
    },
    Upstream {
        container: "csi-snapshotter",
        image: "csi-snapshotter",
        release: "v8.6.0",
        source: "kubernetes-csi/external-snapshotter \
                 deploy/kubernetes/csi-snapshotter/rbac-csi-snapshotter.yaml (newest stored \
                 copy with the group snapshot rules, 02c0340f); the groupsnapshot.storage.k8s.io \
                 rules are what the sidecar of v8.6.0 needs with \
                 --feature-gates=CSIVolumeGroupSnapshot=true (the gate of CHANGELOG-8.2.md, PR \
                 #1194; the API it watches is v1 since CHANGELOG-8.6.md, PR #1368)",
        cluster: &[
            EVENTS,
            (
                "snapshot.storage.k8s.io",
                "volumesnapshotclasses",
                &["get", "list", "watch"],
            ),
            (
                "snapshot.storage.k8s.io",
                "volumesnapshotcontents",
                &["create", "get", "list", "watch", "update", "patch"],
            ),
            (
                "snapshot.storage.k8s.io",
                "volumesnapshotcontents/status",
                &["update", "patch"],
            ),
            (
                "groupsnapshot.storage.k8s.io",
                "volumegroupsnapshotclasses",
                &["get", "list", "watch"],
            ),
            (
                "groupsnapshot.storage.k8s.io",
                "volumegroupsnapshotcontents",
                &["get", "list", "watch", "update", "patch"],
            ),
            (
                "groupsnapshot.storage.k8s.io",
                "volumegroupsnapshotcontents/status",
                &["update", "patch"],
            ),
        ],
        namespaced: &[LEASES],
        omitted: &[],
        added: &[],
    },
    Upstream {
        container: "snapshot-controller",
        image: "snapshot-controller",
        release: "v8.6.0",
        source: "kubernetes-csi/external-snapshotter \
                 deploy/kubernetes/snapshot-controller/rbac-snapshot-controller.yaml (newest \
                 stored copy, d27ee265); the groupsnapshot.storage.k8s.io rules are what the \
                 controller of v8.6.0 needs with --feature-gates=CSIVolumeGroupSnapshot=true \
                 (CHANGELOG-8.2.md, PR #1194; it makes the members' VolumeSnapshots and \
                 VolumeSnapshotContents since PR #1171)",
        cluster: &[
            ("", "persistentvolumes", &["get", "list", "watch"]),
            (
                "",
                "persistentvolumeclaims",
                &["get", "list", "watch", "update"],
            ),
            EVENTS,
            (
                "snapshot.storage.k8s.io",
                "volumesnapshotclasses",
                &["get", "list", "watch"],
            ),
            (
                "snapshot.storage.k8s.io",
                "volumesnapshotcontents",
                &[
                    "create", "get", "list", "watch", "update", "delete", "patch",
                ],
            ),
            (
                "snapshot.storage.k8s.io",
                "volumesnapshotcontents/status",
                &["patch"],
            ),
            (
                "snapshot.storage.k8s.io",
                "volumesnapshots",
                &["get", "list", "watch", "update", "patch", "delete"],
            ),
            (
                "snapshot.storage.k8s.io",
                "volumesnapshots/status",
                &["update", "patch"],
            ),
            (
                "groupsnapshot.storage.k8s.io",
                "volumegroupsnapshotclasses",
                &["get", "list", "watch"],
            ),
            (
                "groupsnapshot.storage.k8s.io",
                "volumegroupsnapshotcontents",
                &[
                    "create", "get", "list", "watch", "update", "delete", "patch",
                ],
            ),
            (
                "groupsnapshot.storage.k8s.io",
                "volumegroupsnapshotcontents/status",
                &["patch"],
            ),
            (
                "groupsnapshot.storage.k8s.io",
                "volumegroupsnapshots",
                &["get", "list", "watch", "update", "patch"],
            ),
            (
                "groupsnapshot.storage.k8s.io",
                "volumegroupsnapshots/status",
                &["update", "patch"],
            ),
        ],
        namespaced: &[LEASES],
        omitted: &[],
        added: &[(
            ("snapshot.storage.k8s.io", "volumesnapshots", &["create"]),
            "group snapshots: the controller creates one VolumeSnapshot per member \
             (pkg/common-controller, createSnapshotsForGroupSnapshotContent, since PR #1171 in \
             CHANGELOG-8.2.md), which the stored upstream file does not grant",
        )],
    },
    Upstream {
        container: "node-driver-registrar",
        image: "csi-node-driver-registrar",
        release: "v2.18.0",
        source: "kubernetes-csi/node-driver-registrar ships no RBAC: it talks only to the \
                 plugin's socket and to kubelet",
        cluster: &[],
        namespaced: &[],
        omitted: &[],
        added: &[],
    },
    Upstream {
        container: "liveness-probe",
        image: "livenessprobe",
        release: "v2.20.0",
        source: "kubernetes-csi/livenessprobe ships no RBAC: it talks only to the plugin's \
                 socket",
        cluster: &[],
        namespaced: &[],
        omitted: &[],
        added: &[],
    },
];

fn upstream(container: &str) -> &'static Upstream {
    UPSTREAM
        .iter()
        .find(|u| u.container == container)
        .unwrap_or_else(|| panic!("unknown container {container}: write down its upstream RBAC"))
}

type Grant = (String, String, String); // group, resource, verb

fn expand(rules: &[Rule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (group, resource, verbs) in rules {
        for verb in *verbs {
            out.insert((group.to_string(), resource.to_string(), verb.to_string()));
        }
    }
    out
}

/// What a container's ServiceAccount must be granted: (cluster-wide, in its
/// own namespace). The driver itself needs no API access.
fn needs(container: &str) -> (BTreeSet<Grant>, BTreeSet<Grant>) {
    if container == "nfs-csi" {
        return Default::default();
    }
    let u = upstream(container);
    let omitted = expand(&u.omitted.iter().map(|(r, _)| *r).collect::<Vec<_>>());
    let added = expand(&u.added.iter().map(|(r, _)| *r).collect::<Vec<_>>());
    (
        &(&expand(u.cluster) - &omitted) | &added,
        &expand(u.namespaced) - &omitted,
    )
}

fn grants(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for r in rules {
        assert!(
            r.resource_names.is_none() && r.non_resource_urls.is_none(),
            "unexpected rule {r:?}"
        );
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    for s in [g, res, v] {
                        assert!(!s.contains('*'), "wildcard in rule {r:?}");
                    }
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

/// Everything the ServiceAccount `namespace/name` is granted: cluster-wide
/// and in its own namespace.
fn granted_to(
    objects: &Objects,
    namespace: &str,
    name: &str,
) -> (BTreeSet<Grant>, BTreeSet<Grant>) {
    let is_subject = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
        subjects.iter().flatten().any(|s| {
            s.kind == "ServiceAccount"
                && s.name == name
                && s.namespace.as_deref() == Some(namespace)
        })
    };
    let cluster_roles: Vec<ClusterRole> = objects.all("ClusterRole");
    let roles: Vec<Role> = objects.all("Role");
    let mut cluster = BTreeSet::new();
    for b in objects.all::<ClusterRoleBinding>("ClusterRoleBinding") {
        if is_subject(&b.subjects) {
            assert_eq!(b.role_ref.kind, "ClusterRole");
            let role = cluster_roles
                .iter()
                .find(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name))
                .unwrap_or_else(|| panic!("binding to missing ClusterRole {}", b.role_ref.name));
            cluster.extend(grants(role.rules.as_deref().unwrap_or_default()));
        }
    }
    let mut local = BTreeSet::new();
    for b in objects.all::<RoleBinding>("RoleBinding") {
        if is_subject(&b.subjects) {
            assert_eq!(b.metadata.namespace.as_deref(), Some(namespace));
            assert_eq!(
                b.role_ref.kind, "Role",
                "no ClusterRole bound per namespace"
            );
            let role = roles
                .iter()
                .find(|r| {
                    r.metadata.name.as_deref() == Some(&b.role_ref.name)
                        && r.metadata.namespace.as_deref() == Some(namespace)
                })
                .unwrap_or_else(|| panic!("binding to missing Role {}", b.role_ref.name));
            local.extend(grants(role.rules.as_deref().unwrap_or_default()));
        }
    }
    (cluster, local)
}

/// The pod's ServiceAccount is granted what the upstream RBAC of each of its
/// containers' pinned release grants, less the deliberate omissions, plus
/// the additions (`UPSTREAM`): cluster-wide what upstream puts in its ClusterRole, in the
/// pod's own namespace what it puts in its Role; and nothing else.
fn check_rbac(objects: &Objects, namespace: &str, pod: &PodSpec) {
    let sa = pod.service_account_name.clone().expect("a ServiceAccount");
    assert!(
        objects
            .all::<ServiceAccount>("ServiceAccount")
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some(&sa)
                && s.metadata.namespace.as_deref() == Some(namespace)),
        "ServiceAccount {sa} is not installed"
    );
    let (cluster, local) = granted_to(objects, namespace, &sa);
    let mut needed_cluster = BTreeSet::new();
    let mut needed_local = BTreeSet::new();
    for c in &pod.containers {
        let (c_cluster, c_local) = needs(&c.name);
        let release = || {
            let u = upstream(&c.name);
            format!("{} {}", u.image, u.release)
        };
        for g in &c_cluster {
            assert!(
                cluster.contains(g),
                "{} needs {g:?} cluster-wide: upstream RBAC of {} grants it",
                c.name,
                release()
            );
        }
        for g in &c_local {
            assert!(
                local.contains(g),
                "{} needs {g:?} in namespace {namespace}: upstream RBAC of {} grants it",
                c.name,
                release()
            );
        }
        needed_cluster.extend(c_cluster);
        needed_local.extend(c_local);
    }
    assert_eq!(
        cluster, needed_cluster,
        "cluster-wide grants beyond what is needed"
    );
    assert_eq!(
        local, needed_local,
        "namespaced grants beyond what is needed"
    );
    if needed_cluster.is_empty() && needed_local.is_empty() {
        assert_eq!(
            pod.automount_service_account_token,
            Some(false),
            "a pod that needs no API access gets no token"
        );
    }
}

// ------------------------------------------------------------ deploy tests

#[test]
fn deploy_renders_and_every_object_parses() {
    let objects = Objects::render("deploy");
    let kinds = objects.kinds();
    let expected: BTreeMap<String, usize> = [
        ("Namespace", 1),
        ("ResourceQuota", 1),
        ("ServiceAccount", 2),
        ("ClusterRole", 3),
        ("ClusterRoleBinding", 3),
        ("Role", 1),
        ("RoleBinding", 1),
        ("CSIDriver", 1),
        ("Deployment", 1),
        ("DaemonSet", 1),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    assert_eq!(kinds, expected);
    for v in &objects.0 {
        let cluster_scoped = matches!(
            v["kind"].as_str().unwrap(),
            "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CSIDriver"
        );
        let ns = v["metadata"]["namespace"].as_str();
        if cluster_scoped {
            assert_eq!(ns, None, "{}", describe(v));
        } else {
            assert_eq!(ns, Some(NAMESPACE), "{}", describe(v));
        }
    }
    let ns: Namespace = objects.one("Namespace");
    assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
    assert_eq!(
        ns.metadata
            .labels
            .unwrap_or_default()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("privileged"),
        "the node plugin is privileged: Pod Security admission must allow it"
    );

    // Pods of a system-*-critical class are admitted outside kube-system
    // where a quota covers the class.
    let quota: ResourceQuota = objects.one("ResourceQuota");
    let covered: Vec<String> = quota
        .spec
        .and_then(|s| s.scope_selector)
        .and_then(|s| s.match_expressions)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.scope_name == "PriorityClass" && e.operator == "In")
        .flat_map(|e| e.values.unwrap_or_default())
        .collect();
    let pods = [
        pod_spec_of_deployment(&objects.one("Deployment")),
        pod_spec_of_daemonset(&objects.one("DaemonSet")),
    ];
    for pod in pods {
        let class = pod.priority_class_name.expect("a priority class");
        assert!(
            covered.contains(&class),
            "{class} is not covered by the quota"
        );
    }
}

#[test]
fn csidriver_is_as_the_driver_needs() {
    let objects = Objects::render("deploy");
    let driver: CSIDriver = objects.one("CSIDriver");
    assert_eq!(driver.metadata.name.as_deref(), Some(DRIVER));
    let spec = driver.spec;
    assert_eq!(spec.attach_required, Some(false));
    assert_eq!(spec.pod_info_on_mount, Some(true));
    assert_eq!(spec.fs_group_policy.as_deref(), Some("File"));
    assert_eq!(
        spec.volume_lifecycle_modes,
        Some(vec!["Persistent".to_string(), "Ephemeral".to_string()])
    );
}

#[test]
fn controller_pod_wiring() {
    let objects = Objects::render("deploy");
    let d: Deployment = objects.one("Deployment");
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
    let pod = pod_spec_of_deployment(&d);
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "nfs-csi",
            "csi-provisioner",
            "csi-resizer",
            "csi-snapshotter",
            "liveness-probe"
        ]
    );
    check_plugin_flags(&pod, "controller");
    let (socket_volume, _) = check_sockets(&pod);
    assert!(volume(&pod, &socket_volume).empty_dir.is_some());
    check_liveness(&pod);
    check_sidecars_unprivileged(&pod);

    // The work dir: a volume of its own, an emptyDir (see controller.yaml).
    let plugin = container(&pod, "nfs-csi");
    let work = required_flag(plugin, "--work-dir", Some("WORK_DIR"));
    let (work_volume, rel) = resolve(plugin, &work);
    assert_eq!(rel, "");
    assert_ne!(work_volume, socket_volume);
    assert!(volume(&pod, &work_volume).empty_dir.is_some());
    assert!(pod.host_network != Some(true));

    // Sidecars: leader election (the Deployment may briefly run two pods),
    // and what the driver relies on.
    for name in ["csi-provisioner", "csi-resizer", "csi-snapshotter"] {
        assert_eq!(
            flag(container(&pod, name), "--leader-election", None).as_deref(),
            Some("true"),
            "{name}"
        );
    }
    assert_eq!(
        flag(
            container(&pod, "csi-provisioner"),
            "--extra-create-metadata",
            None
        )
        .as_deref(),
        Some("true"),
        "subDir templates need the PVC's name and namespace"
    );
    assert_eq!(
        flag(
            container(&pod, "csi-resizer"),
            "--handle-volume-inuse-error",
            None
        )
        .as_deref(),
        Some("false"),
        "expansion is online; the resizer has no RBAC to watch pods"
    );
    assert_eq!(
        flag(container(&pod, "csi-snapshotter"), "--feature-gates", None).as_deref(),
        Some("CSIVolumeGroupSnapshot=true"),
        "group snapshots are off by default in csi-snapshotter v8.6.0"
    );
    check_rbac(&objects, NAMESPACE, &pod);
}

#[test]
fn node_pod_wiring() {
    let objects = Objects::render("deploy");
    let ds: DaemonSet = objects.one("DaemonSet");
    let pod = pod_spec_of_daemonset(&ds);
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["nfs-csi", "node-driver-registrar", "liveness-probe"]
    );
    check_plugin_flags(&pod, "node");
    check_node_kubelet_wiring(&pod, KUBELET_DIR);
    check_liveness(&pod);
    check_sidecars_unprivileged(&pod);
    check_rbac(&objects, NAMESPACE, &pod);
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "the node plugin runs on every node, tainted or not"
    );
    // Inline volumes are opt-in.
    let plugin = container(&pod, "nfs-csi");
    assert_eq!(flag(plugin, "--allow-inline", Some("ALLOW_INLINE")), None);
}

#[test]
fn every_role_is_bound_and_every_binding_resolves() {
    let objects = Objects::render("deploy");
    let sas: Vec<ServiceAccount> = objects.all("ServiceAccount");
    for b in objects.all::<ClusterRoleBinding>("ClusterRoleBinding") {
        for s in b.subjects.iter().flatten() {
            assert!(
                sas.iter()
                    .any(|sa| sa.metadata.name.as_deref() == Some(&s.name)
                        && sa.metadata.namespace == s.namespace)
            );
        }
    }
    for r in objects.all::<ClusterRole>("ClusterRole") {
        let name = r.metadata.name.unwrap();
        assert!(
            objects
                .all::<ClusterRoleBinding>("ClusterRoleBinding")
                .iter()
                .any(|b| b.role_ref.name == name),
            "ClusterRole {name} is bound to nobody"
        );
        assert!(
            name.starts_with("nfs-csi-"),
            "{name}: cluster-wide names are prefixed"
        );
    }
    // Nothing may read secrets: the driver uses none.
    for r in objects.all::<ClusterRole>("ClusterRole") {
        for (_, res, _) in grants(r.rules.as_deref().unwrap_or_default()) {
            assert_ne!(res, "secrets");
        }
    }
}

#[test]
fn driver_name_is_the_same_everywhere() {
    let objects = Objects::render("deploy");
    let driver: CSIDriver = objects.one("CSIDriver");
    assert_eq!(driver.metadata.name.as_deref(), Some(DRIVER));
    let controller = pod_spec_of_deployment(&objects.one("Deployment"));
    let node = pod_spec_of_daemonset(&objects.one("DaemonSet"));
    for pod in [&controller, &node] {
        assert_eq!(
            required_flag(
                container(pod, "nfs-csi"),
                "--driver-name",
                Some("DRIVER_NAME")
            ),
            DRIVER
        );
    }
    assert!(
        required_flag(
            container(&node, "node-driver-registrar"),
            "--kubelet-registration-path",
            None
        )
        .contains(&format!("/plugins/{DRIVER}/"))
    );
    let examples = examples();
    let classes: Vec<StorageClass> = examples.all("StorageClass");
    assert_eq!(classes.len(), 2);
    for sc in classes {
        assert_eq!(sc.provisioner, DRIVER);
    }
    let vsc: crds::v1::VolumeSnapshotClass = examples.one("VolumeSnapshotClass");
    assert_eq!(vsc.spec.driver, DRIVER);
    let pod: Pod = examples.one("Pod");
    let inline = pod.spec.unwrap().volumes.unwrap()[0].csi.clone().unwrap();
    assert_eq!(inline.driver, DRIVER);
}

#[test]
fn images_are_pinned() {
    let sidecars: BTreeMap<&str, &str> = [
        ("csi-provisioner", "csi-provisioner"),
        ("csi-resizer", "csi-resizer"),
        ("csi-snapshotter", "csi-snapshotter"),
        ("liveness-probe", "livenessprobe"),
        ("node-driver-registrar", "csi-node-driver-registrar"),
        ("snapshot-controller", "snapshot-controller"),
    ]
    .into();
    let mut pods = Vec::new();
    for dir in ["deploy", "deploy/examples/overlay", "snapshot-crds"] {
        let objects = Objects::render(dir);
        pods.extend(
            objects
                .all::<Deployment>("Deployment")
                .iter()
                .map(pod_spec_of_deployment),
        );
        pods.extend(
            objects
                .all::<DaemonSet>("DaemonSet")
                .iter()
                .map(pod_spec_of_daemonset),
        );
    }
    let examples = examples();
    pods.extend(
        examples
            .all::<Deployment>("Deployment")
            .iter()
            .map(pod_spec_of_deployment),
    );
    pods.extend(
        examples
            .all::<Pod>("Pod")
            .into_iter()
            .map(|p| p.spec.unwrap()),
    );
    for pod in &pods {
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let image = c.image.as_deref().expect("an image");
            let tag = image_tag(image).unwrap_or_else(|| panic!("{image}: no tag"));
            assert!(!tag.is_empty() && tag != "latest", "{image}: pin a version");
            assert!(
                tag.chars().any(|ch| ch.is_ascii_digit()),
                "{image}: not a version"
            );
            if let Some(repo) = sidecars.get(c.name.as_str()) {
                assert_eq!(
                    image.rsplit_once(':').unwrap().0,
                    format!("registry.k8s.io/sig-storage/{repo}"),
                    "{}",
                    c.name
                );
                assert!(
                    tag.starts_with('v') && tag[1..].split('.').count() == 3,
                    "{image}"
                );
            }
            if c.name == "nfs-csi" {
                assert_eq!(
                    tag,
                    env!("CARGO_PKG_VERSION"),
                    "the driver's image is its version"
                );
            }
        }
    }
}

#[test]
fn overlay_with_every_option_keeps_the_wiring() {
    let objects = Objects::render("deploy/examples/overlay");
    let node = pod_spec_of_daemonset(&objects.one("DaemonSet"));
    check_node_kubelet_wiring(&node, "/var/lib/k0s/kubelet");
    check_plugin_flags(&node, "node");
    check_rbac(&objects, NAMESPACE, &node);
    let plugin = container(&node, "nfs-csi");
    assert_eq!(
        flag(plugin, "--allow-inline", Some("ALLOW_INLINE")).as_deref(),
        Some("true")
    );
    assert_eq!(
        flag(plugin, "--inline-server", Some("INLINE_SERVERS")).as_deref(),
        Some("nfs.example.com")
    );
    // The mountedShare of storageclass-mounted-share.yaml, at the same path
    // in the controller and on the nodes.
    let controller = pod_spec_of_deployment(&objects.one("Deployment"));
    check_plugin_flags(&controller, "controller");
    check_sockets(&controller);
    let share = examples()
        .all::<StorageClass>("StorageClass")
        .into_iter()
        .find_map(|sc| {
            sc.parameters
                .unwrap_or_default()
                .get("mountedShare")
                .cloned()
        })
        .expect("an example StorageClass with mountedShare");
    for pod in [&controller, &node] {
        let plugin = container(pod, "nfs-csi");
        let (v, rel) = resolve(plugin, &share);
        assert_eq!(rel, "");
        assert_eq!(host_path(pod, &v), share);
    }
}

// ----------------------------------------------------------------- examples

fn examples() -> Objects {
    let mut docs = Vec::new();
    let dir = root().join("deploy/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "examples: {files:?}");
    for f in files {
        docs.extend(yaml_docs(&std::fs::read_to_string(&f).unwrap()));
    }
    Objects::parse(docs)
}

#[test]
fn examples_are_valid_and_refer_to_each_other() {
    let examples = examples();
    // The StorageClasses' parameters are accepted by the driver, with the
    // metadata external-provisioner adds (--extra-create-metadata).
    for sc in examples.all::<StorageClass>("StorageClass") {
        let mut params: HashMap<String, String> = sc
            .parameters
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        params.insert("csi.storage.k8s.io/pvc/name".into(), "claim".into());
        params.insert("csi.storage.k8s.io/pvc/namespace".into(), "default".into());
        params.insert("csi.storage.k8s.io/pv/name".into(), "pvc-1234".into());
        let flags = sc.mount_options.clone().unwrap_or_default();
        nfs_csi::storage::params::create_params("pvc-1234", &params, &flags, None)
            .unwrap_or_else(|e| panic!("StorageClass {:?}: {e}", sc.metadata.name));
        assert_eq!(sc.allow_volume_expansion, Some(true));
    }
    let class_names: BTreeSet<String> = examples
        .all::<StorageClass>("StorageClass")
        .into_iter()
        .map(|sc| sc.metadata.name.unwrap())
        .collect();

    // The RWX claim, used by a Deployment of three.
    let claims: Vec<PersistentVolumeClaim> = examples.all("PersistentVolumeClaim");
    let claim_names: BTreeSet<String> = claims
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    for c in &claims {
        let spec = c.spec.as_ref().unwrap();
        assert!(class_names.contains(spec.storage_class_name.as_ref().unwrap()));
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteMany".to_string()]));
    }
    let d: Deployment = examples.one("Deployment");
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
    let pod = pod_spec_of_deployment(&d);
    let claim = pod.volumes.unwrap()[0]
        .persistent_volume_claim
        .clone()
        .unwrap()
        .claim_name;
    assert!(claim_names.contains(&claim));

    // The snapshot of that claim, and the claims made from it and from the
    // claim itself.
    let snapshot: crds::v1::VolumeSnapshot = examples.one("VolumeSnapshot");
    let source = snapshot
        .spec
        .source
        .persistent_volume_claim_name
        .clone()
        .unwrap();
    assert_eq!(source, claim);
    let vsc: crds::v1::VolumeSnapshotClass = examples.one("VolumeSnapshotClass");
    assert_eq!(snapshot.spec.volume_snapshot_class_name, vsc.metadata.name);
    let mut restored = false;
    let mut cloned = false;
    for c in &claims {
        let Some(ds) = c.spec.as_ref().unwrap().data_source.clone() else {
            continue;
        };
        match ds.kind.as_str() {
            // A member of the example group snapshot, whose VolumeSnapshot
            // the snapshot-controller names: see deploy/groups.rs.
            "VolumeSnapshot" if c.metadata.name.as_deref() == Some(groups::MEMBER_RESTORE) => {}
            "VolumeSnapshot" => {
                assert_eq!(ds.api_group.as_deref(), Some("snapshot.storage.k8s.io"));
                assert_eq!(Some(ds.name), snapshot.metadata.name);
                restored = true;
            }
            "PersistentVolumeClaim" => {
                assert_eq!(ds.api_group, None);
                assert_eq!(ds.name, claim);
                cloned = true;
            }
            other => panic!("dataSource kind {other}"),
        }
    }
    assert!(restored && cloned);

    // The VolumeAttributesClass: the v1 API, this driver, parameters the
    // driver takes as mutable ones (ControllerModifyVolume).
    let vac: VolumeAttributesClass = examples.one("VolumeAttributesClass");
    assert_eq!(vac.api_version, "storage.k8s.io/v1");
    assert_eq!(vac.driver_name, DRIVER);
    let mutable: HashMap<String, String> = vac.parameters.unwrap_or_default().into_iter().collect();
    let parsed = nfs_csi::storage::params::mutable_params(&mutable)
        .unwrap_or_else(|e| panic!("VolumeAttributesClass {:?}: {e}", vac.metadata.name));
    assert_eq!(
        parsed.on_delete,
        Some(nfs_csi::storage::ids::OnDelete::Retain)
    );

    // The inline volume names what the node plugin accepts.
    let pod: Pod = examples.one("Pod");
    let inline = pod.spec.unwrap().volumes.unwrap()[0].csi.clone().unwrap();
    let attrs: BTreeSet<String> = inline.volume_attributes.unwrap().into_keys().collect();
    assert_eq!(
        attrs,
        ["server", "share", "subDir"].map(String::from).into(),
        "inline volumes take server, share and subDir"
    );
}

// --------------------------------------------------------------------- CRDs

fn committed_crds() -> Vec<CustomResourceDefinition> {
    crds::crds()
        .iter()
        .map(|c| {
            let text = read(&format!("snapshot-crds/{}", crds::file_name(c)));
            let docs = yaml_docs(&text);
            assert_eq!(docs.len(), 1);
            typed(&docs[0])
        })
        .collect()
}

#[test]
fn committed_crds_are_what_nfs_csi_crds_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_nfs-csi"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let regenerate = "regenerate them: cargo run -- crds --output-dir snapshot-crds";
    let mut committed = String::new();
    for crd in crds::crds() {
        let name = crds::file_name(&crd);
        committed += &std::fs::read_to_string(root().join("snapshot-crds").join(&name))
            .unwrap_or_else(|e| panic!("snapshot-crds/{name}: {e}; {regenerate}"));
    }
    assert!(
        committed == printed,
        "snapshot-crds/ is stale; {regenerate}"
    );

    // --output-dir writes the same files, and snapshot-crds/ has no others.
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_nfs-csi"))
        .args(["crds", "--output-dir"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let written: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for name in &written {
        assert_eq!(
            std::fs::read(dir.path().join(name)).unwrap(),
            std::fs::read(root().join("snapshot-crds").join(name)).unwrap(),
            "{name}; {regenerate}"
        );
    }
    let in_repo: BTreeSet<String> = std::fs::read_dir(root().join("snapshot-crds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".storage.k8s.io.yaml"))
        .collect();
    assert_eq!(in_repo, written);
}

/// Flattens a schema into `path -> type` (with `[enum]`, `{format}`,
/// `!` for required; the fields of an array's items under `path[]`).
fn shape(s: &JSONSchemaProps, path: &str, out: &mut BTreeMap<String, String>) {
    let required: BTreeSet<&String> = s.required.iter().flatten().collect();
    for (name, p) in s.properties.iter().flatten() {
        let key = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        let mut t = if p.x_kubernetes_int_or_string == Some(true) {
            "int-or-string".to_string()
        } else {
            p.type_.clone().unwrap_or_default()
        };
        if let Some(f) = &p.format {
            t += &format!("{{{f}}}");
        }
        if let Some(e) = &p.enum_ {
            let values: Vec<String> = e
                .iter()
                .map(|v| v.0.as_str().unwrap().to_string())
                .collect();
            t += &format!("[{}]", values.join("|"));
        }
        if let Some(JSONSchemaPropsOrBool::Schema(a)) = &p.additional_properties {
            t += &format!("<{}>", a.type_.clone().unwrap_or_default());
        }
        if required.contains(name) {
            t += "!";
        }
        out.insert(key.clone(), t);
        shape(p, &key, out);
        if let Some(JSONSchemaPropsOrArray::Schema(item)) = &p.items {
            shape(item, &format!("{key}[]"), out);
        }
    }
}

fn version<'a>(
    crd: &'a CustomResourceDefinition,
    name: &str,
) -> &'a CustomResourceDefinitionVersion {
    crd.spec
        .versions
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no version {name}"))
}

fn schema<'a>(crd: &'a CustomResourceDefinition, name: &str) -> &'a JSONSchemaProps {
    version(crd, name)
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap()
}

/// The versions of the snapshot CRDs: v1 served and stored, v1beta1 kept
/// but neither.
const SNAPSHOT_VERSIONS: &[(&str, bool, bool)] = &[("v1", true, true), ("v1beta1", false, false)];

/// One upstream CRD, as facts: names, scope, versions (name, served,
/// stored) and which are deprecated, printer columns (the same in every
/// version), and the fields of v1 with their types (`shape`).
struct UpstreamCrd {
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    short: &'static [&'static str],
    scope: &'static str,
    versions: &'static [(&'static str, bool, bool)],
    deprecated: &'static [&'static str],
    status: bool,
    columns: &'static [(&'static str, &'static str, &'static str)],
    fields: &'static [(&'static str, &'static str)],
    /// The v1 field that is a core ObjectReference (its fields are added to
    /// `fields`).
    object_ref: Option<&'static str>,
}

const OBJECT_REF: [&str; 7] = [
    "apiVersion",
    "fieldPath",
    "kind",
    "name",
    "namespace",
    "resourceVersion",
    "uid",
];

/// `crd` is `up`: names, approval annotation, scope, versions, columns,
/// status subresource, the v1 fields, no nullable field.
fn check_upstream_shape(crd: &CustomResourceDefinition, up: &UpstreamCrd) {
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some(format!("{}.{}", up.plural, up.group).as_str())
    );
    let approval = crd
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("api-approved.kubernetes.io"))
        .expect("*.k8s.io CRDs are refused without api-approved.kubernetes.io");
    assert!(approval.starts_with("https://github.com/kubernetes-csi/external-snapshotter/pull/"));
    let spec = &crd.spec;
    assert_eq!(spec.group, up.group);
    assert_eq!(spec.names.kind, up.kind);
    assert_eq!(
        spec.names.list_kind.as_deref(),
        Some(format!("{}List", up.kind).as_str())
    );
    assert_eq!(spec.names.plural, up.plural);
    assert_eq!(
        spec.names.singular.as_deref(),
        Some(&up.kind.to_lowercase()[..])
    );
    let short: Vec<String> = up.short.iter().map(|s| s.to_string()).collect();
    assert_eq!(spec.names.short_names.as_ref(), Some(&short));
    assert_eq!(spec.scope, up.scope);
    assert_eq!(spec.conversion, None, "no conversion webhook");

    let versions: Vec<(&str, bool, bool)> = spec
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.served, v.storage))
        .collect();
    assert_eq!(versions, up.versions, "{} versions", up.kind);
    for v in &spec.versions {
        assert_eq!(
            v.deprecated.unwrap_or(false),
            up.deprecated.contains(&v.name.as_str()),
            "{} {} deprecated",
            up.kind,
            v.name
        );
        let columns: Vec<(&str, &str, &str)> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| (c.name.as_str(), c.type_.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(columns, up.columns, "{} {}", up.kind, v.name);
        let status = v.subresources.as_ref().and_then(|s| s.status.as_ref());
        assert_eq!(status.is_some(), up.status, "{} {} status", up.kind, v.name);
    }

    let mut fields = BTreeMap::new();
    let v1 = schema(crd, "v1");
    assert_eq!(v1.type_.as_deref(), Some("object"));
    shape(v1, "", &mut fields);
    let mut expected: BTreeMap<String, String> = up
        .fields
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some(path) = up.object_ref {
        for f in OBJECT_REF {
            expected.insert(format!("{path}.{f}"), "string".into());
        }
    }
    assert_eq!(fields, expected, "{} v1 fields", up.kind);
    for v in &spec.versions {
        no_nullable(schema(crd, &v.name));
    }
}

/// The upstream external-snapshotter v8 snapshot CRDs.
#[test]
fn crds_have_the_upstream_shape() {
    let upstream = [
        UpstreamCrd {
            group: "snapshot.storage.k8s.io",
            versions: SNAPSHOT_VERSIONS,
            deprecated: &["v1beta1"],
            object_ref: None,
            plural: "volumesnapshotclasses",
            kind: "VolumeSnapshotClass",
            short: &["vsclass", "vsclasses"],
            scope: "Cluster",
            status: false,
            columns: &[
                ("Driver", "string", ".driver"),
                ("DeletionPolicy", "string", ".deletionPolicy"),
                ("Age", "date", ".metadata.creationTimestamp"),
            ],
            fields: &[
                ("apiVersion", "string"),
                ("kind", "string"),
                ("metadata", "object"),
                ("driver", "string!"),
                ("deletionPolicy", "string[Delete|Retain]!"),
                ("parameters", "object<string>"),
            ],
        },
        UpstreamCrd {
            group: "snapshot.storage.k8s.io",
            versions: SNAPSHOT_VERSIONS,
            deprecated: &["v1beta1"],
            object_ref: Some("spec.volumeSnapshotRef"),
            plural: "volumesnapshotcontents",
            kind: "VolumeSnapshotContent",
            short: &["vsc", "vscs"],
            scope: "Cluster",
            status: true,
            columns: &[
                ("ReadyToUse", "boolean", ".status.readyToUse"),
                ("RestoreSize", "integer", ".status.restoreSize"),
                ("DeletionPolicy", "string", ".spec.deletionPolicy"),
                ("Driver", "string", ".spec.driver"),
                (
                    "VolumeSnapshotClass",
                    "string",
                    ".spec.volumeSnapshotClassName",
                ),
                ("VolumeSnapshot", "string", ".spec.volumeSnapshotRef.name"),
                (
                    "VolumeSnapshotNamespace",
                    "string",
                    ".spec.volumeSnapshotRef.namespace",
                ),
                ("Age", "date", ".metadata.creationTimestamp"),
            ],
            fields: &[
                ("apiVersion", "string"),
                ("kind", "string"),
                ("metadata", "object"),
                ("spec", "object!"),
                ("spec.deletionPolicy", "string[Delete|Retain]!"),
                ("spec.driver", "string!"),
                ("spec.source", "object!"),
                ("spec.source.snapshotHandle", "string"),
                ("spec.source.volumeHandle", "string"),
                ("spec.sourceVolumeMode", "string"),
                ("spec.volumeSnapshotClassName", "string"),
                ("spec.volumeSnapshotRef", "object!"),
                ("status", "object"),
                ("status.creationTime", "integer{int64}"),
                ("status.error", "object"),
                ("status.error.message", "string"),
                ("status.error.time", "string{date-time}"),
                ("status.readyToUse", "boolean"),
                ("status.restoreSize", "integer{int64}"),
                ("status.snapshotHandle", "string"),
                ("status.volumeGroupSnapshotHandle", "string"),
            ],
        },
        UpstreamCrd {
            group: "snapshot.storage.k8s.io",
            versions: SNAPSHOT_VERSIONS,
            deprecated: &["v1beta1"],
            object_ref: None,
            plural: "volumesnapshots",
            kind: "VolumeSnapshot",
            short: &["vs"],
            scope: "Namespaced",
            status: true,
            columns: &[
                ("ReadyToUse", "boolean", ".status.readyToUse"),
                (
                    "SourcePVC",
                    "string",
                    ".spec.source.persistentVolumeClaimName",
                ),
                (
                    "SourceSnapshotContent",
                    "string",
                    ".spec.source.volumeSnapshotContentName",
                ),
                ("RestoreSize", "string", ".status.restoreSize"),
                ("SnapshotClass", "string", ".spec.volumeSnapshotClassName"),
                (
                    "SnapshotContent",
                    "string",
                    ".status.boundVolumeSnapshotContentName",
                ),
                ("CreationTime", "date", ".status.creationTime"),
                ("Age", "date", ".metadata.creationTimestamp"),
            ],
            fields: &[
                ("apiVersion", "string"),
                ("kind", "string"),
                ("metadata", "object"),
                ("spec", "object!"),
                ("spec.source", "object!"),
                ("spec.source.persistentVolumeClaimName", "string"),
                ("spec.source.volumeSnapshotContentName", "string"),
                ("spec.volumeSnapshotClassName", "string"),
                ("status", "object"),
                ("status.boundVolumeSnapshotContentName", "string"),
                ("status.creationTime", "string{date-time}"),
                ("status.error", "object"),
                ("status.error.message", "string"),
                ("status.error.time", "string{date-time}"),
                ("status.readyToUse", "boolean"),
                ("status.restoreSize", "int-or-string"),
                ("status.volumeGroupSnapshotName", "string"),
            ],
        },
    ];
    let committed = committed_crds();
    assert_eq!(committed.len(), upstream.len() + groups::UPSTREAM.len());
    for (crd, up) in committed.iter().zip(&upstream) {
        check_upstream_shape(crd, up);
        if up.kind == "VolumeSnapshotContent" {
            let v1 = schema(crd, "v1");
            let r = &v1.properties.as_ref().unwrap()["spec"]
                .properties
                .as_ref()
                .unwrap()["volumeSnapshotRef"];
            assert_eq!(r.x_kubernetes_map_type.as_deref(), Some("atomic"));
            let size = &v1.properties.as_ref().unwrap()["status"]
                .properties
                .as_ref()
                .unwrap()["restoreSize"];
            assert_eq!(size.minimum, Some(0.0));
        }
    }
}

fn no_nullable(s: &JSONSchemaProps) {
    assert_eq!(s.nullable, None, "upstream accepts no nulls");
    for p in s.properties.iter().flat_map(|m| m.values()) {
        no_nullable(p);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(a)) = &s.additional_properties {
        no_nullable(a);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(i)) = &s.items {
        no_nullable(i);
    }
}

// --------------------------------------------------- schema validation

/// Checks `v` against a structural schema the way the API server does for
/// the parts these CRDs use: types, int-or-string, enums, required fields,
/// minimum, and unknown fields (which the API server would silently prune).
fn validate_schema(s: &JSONSchemaProps, v: &Value, path: &str, errors: &mut Vec<String>) {
    if s.x_kubernetes_int_or_string == Some(true) {
        if !(v.is_i64() || v.is_u64() || v.is_string()) {
            errors.push(format!("{path}: must be an integer or a string"));
        }
        return;
    }
    let ok = match s.type_.as_deref() {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        None => true,
        Some(other) => panic!("{path}: schema type {other} not handled"),
    };
    if !ok {
        errors.push(format!(
            "{path}: must be of type {}",
            s.type_.as_deref().unwrap()
        ));
        return;
    }
    if let Some(allowed) = &s.enum_
        && !allowed.iter().any(|a| &a.0 == v)
    {
        errors.push(format!("{path}: {v} is not one of the allowed values"));
    }
    if let (Some(min), Some(n)) = (s.minimum, v.as_f64())
        && n < min
    {
        errors.push(format!("{path}: {n} is below {min}"));
    }
    if s.format.as_deref() == Some("date-time")
        && let Some(t) = v.as_str()
        && t.parse::<k8s_openapi::jiff::Timestamp>().is_err()
    {
        errors.push(format!("{path}: {t} is not a date-time"));
    }
    if let Some(obj) = v.as_object() {
        for r in s.required.iter().flatten() {
            if !obj.contains_key(r) {
                errors.push(format!("{path}.{r}: required"));
            }
        }
        for (k, child) in obj {
            let p = format!("{path}.{k}");
            match (&s.properties, &s.additional_properties) {
                (Some(props), _) if props.contains_key(k) => {
                    validate_schema(&props[k], child, &p, errors)
                }
                (_, Some(JSONSchemaPropsOrBool::Schema(a))) => {
                    validate_schema(a, child, &p, errors)
                }
                (None, None) => {} // free-form, as metadata
                _ => errors.push(format!("{p}: unknown field")),
            }
        }
    }
    if let (Some(JSONSchemaPropsOrArray::Schema(item)), Some(items)) = (&s.items, v.as_array()) {
        for (i, x) in items.iter().enumerate() {
            validate_schema(item, x, &format!("{path}[{i}]"), errors);
        }
    }
}

/// Validates an object as the API server would on create (`old` = None)
/// or update: schema, then the CEL rules.
fn validate_object(v: &Value, old: Option<&Value>) -> Result<(), String> {
    let kind = v["kind"].as_str().unwrap();
    let crd = committed_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let (group, version_name) = v["apiVersion"].as_str().unwrap().split_once('/').unwrap();
    assert_eq!(group, crd.spec.group);
    let version = version(&crd, version_name);
    assert!(version.served, "{kind} {version_name} is not served");
    let s = schema(&crd, version_name);
    let mut errors = Vec::new();
    validate_schema(s, v, "", &mut errors);
    let validator = kube::core::cel::Validator::new();
    if let Err(e) = validator.validate(&serde_json::to_value(s).unwrap(), v, old) {
        errors.extend(e.into_vec().into_iter().map(|e| e.to_string()));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

#[test]
fn crd_cel_rules_compile() {
    for crd in committed_crds() {
        for v in &crd.spec.versions {
            let s = v
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap();
            let compiled = kube::core::cel::compile_schema(&serde_json::to_value(s).unwrap());
            let mut errors = Vec::new();
            collect_compile_errors(&compiled, &mut errors);
            assert!(
                errors.is_empty(),
                "{} {}: {errors:?}",
                crd.spec.names.kind,
                v.name
            );
        }
    }
}

fn collect_compile_errors(c: &kube::core::cel::CompiledSchema, out: &mut Vec<String>) {
    out.extend(c.compilation_errors().iter().map(|e| e.to_string()));
    for child in c.properties.values() {
        collect_compile_errors(child, out);
    }
    if let Some(i) = &c.items {
        collect_compile_errors(i, out);
    }
    if let Some(a) = &c.additional_properties {
        collect_compile_errors(a, out);
    }
}

#[test]
fn example_snapshot_objects_validate_against_the_crds() {
    let examples = examples();
    let mut seen = 0;
    for v in &examples.0 {
        if v["apiVersion"]
            .as_str()
            .is_some_and(|a| a.starts_with("snapshot.storage.k8s.io/"))
        {
            validate_object(v, None).unwrap_or_else(|e| panic!("{}: {e}", describe(v)));
            seen += 1;
        }
    }
    assert_eq!(seen, 2, "a VolumeSnapshot and a VolumeSnapshotClass");

    // What the snapshot controller and csi-snapshotter write validates too.
    let content = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": "snapcontent-1"},
        "spec": {
            "deletionPolicy": "Delete",
            "driver": DRIVER,
            "source": {"volumeHandle": "v1#nfs#server#/share##pvc-1"},
            "sourceVolumeMode": "Filesystem",
            "volumeSnapshotClassName": "nfs-csi",
            "volumeSnapshotRef": {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshot",
                "name": "shared-data-snap",
                "namespace": "default",
                "uid": "0b6a4a4e-6f0b-4f0e-9d7e-6f9c1c7d1a11"
            }
        },
        "status": {
            "creationTime": 1_764_000_000_000_000_000_i64,
            "readyToUse": true,
            "restoreSize": 1_048_576,
            "snapshotHandle": "snap-1"
        }
    });
    validate_object(&content, None).unwrap();
    typed::<crds::v1::VolumeSnapshotContent>(&content);
    let mut snapshot = examples.of_kind("VolumeSnapshot").next().unwrap().clone();
    snapshot["status"] = json!({
        "boundVolumeSnapshotContentName": "snapcontent-1",
        "creationTime": "2026-11-25T10:00:00Z",
        "readyToUse": true,
        "restoreSize": "1Mi",
        "error": {"message": "retrying", "time": "2026-11-25T09:59:00Z"}
    });
    validate_object(&snapshot, None).unwrap();
    typed::<crds::v1::VolumeSnapshot>(&snapshot);
}

#[test]
fn crds_reject_what_upstream_rejects() {
    let snapshot = |source: Value| {
        json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": "s", "namespace": "default"},
            "spec": {"source": source}
        })
    };
    let rejected = |v: &Value, old: Option<&Value>, why: &str| {
        let e = validate_object(v, old).expect_err(&format!("accepted: {v}"));
        assert!(e.contains(why), "{e}\ndoes not say {why:?}");
    };
    rejected(
        &snapshot(json!({"persistentVolumeClaimName": "a", "volumeSnapshotContentName": "b"})),
        None,
        "exactly one of volumeSnapshotContentName and persistentVolumeClaimName",
    );
    rejected(&snapshot(json!({})), None, "exactly one of");
    let mut empty_class = snapshot(json!({"persistentVolumeClaimName": "a"}));
    empty_class["spec"]["volumeSnapshotClassName"] = json!("");
    rejected(&empty_class, None, "must not be the empty string");
    rejected(
        &json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": "s"}}),
        None,
        ".spec: required",
    );
    rejected(
        &snapshot(json!({"persistentVolumeClaimName": "a", "pvcName": "b"})),
        None,
        "unknown field",
    );
    // Transition rules: the source is immutable.
    let old = snapshot(json!({"persistentVolumeClaimName": "a"}));
    validate_object(&old, Some(&old)).unwrap();
    rejected(
        &snapshot(json!({"persistentVolumeClaimName": "b"})),
        Some(&old),
        "persistentVolumeClaimName is immutable",
    );
    rejected(
        &snapshot(json!({"volumeSnapshotContentName": "c"})),
        Some(&old),
        "persistentVolumeClaimName is required once set",
    );

    let class = |policy: &str| {
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
               "metadata": {"name": "c"}, "driver": DRIVER, "deletionPolicy": policy})
    };
    validate_object(&class("Retain"), None).unwrap();
    rejected(&class("Keep"), None, "not one of the allowed values");
    let mut no_driver = class("Delete");
    no_driver.as_object_mut().unwrap().remove("driver");
    rejected(&no_driver, None, ".driver: required");

    let content = |source: Value, reference: Value| {
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
               "metadata": {"name": "c"},
               "spec": {"deletionPolicy": "Retain", "driver": DRIVER, "source": source,
                        "volumeSnapshotRef": reference}})
    };
    let reference = json!({"name": "s", "namespace": "default"});
    validate_object(
        &content(json!({"snapshotHandle": "h"}), reference.clone()),
        None,
    )
    .unwrap();
    rejected(
        &content(
            json!({"snapshotHandle": "h", "volumeHandle": "v"}),
            reference.clone(),
        ),
        None,
        "exactly one of volumeHandle and snapshotHandle",
    );
    rejected(
        &content(json!({"snapshotHandle": "h"}), json!({"name": "s"})),
        None,
        "spec.volumeSnapshotRef.namespace must be set",
    );
    let mut negative = content(json!({"snapshotHandle": "h"}), reference);
    negative["status"] = json!({"restoreSize": -1});
    rejected(&negative, None, "below");

    // v1beta1 is not served.
    let crd = committed_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == "VolumeSnapshot")
        .unwrap();
    assert!(!version(&crd, "v1beta1").served);
}

// -------------------------------------------------- snapshot-controller

#[test]
fn snapshot_crds_kustomization_installs_crds_and_controller() {
    let objects = Objects::render("snapshot-crds");
    // kustomize passes the CRDs through unchanged (in its own order).
    let by_name =
        |crds: Vec<CustomResourceDefinition>| -> BTreeMap<String, CustomResourceDefinition> {
            crds.into_iter()
                .map(|c| (c.metadata.name.clone().unwrap(), c))
                .collect()
        };
    let rendered = by_name(objects.all("CustomResourceDefinition"));
    let committed = by_name(committed_crds());
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        committed.keys().collect::<Vec<_>>(),
        "snapshot-crds/kustomization.yaml lists every generated CRD"
    );
    for (name, crd) in &committed {
        assert!(&rendered[name] == crd, "{name} changed by kustomize");
    }
    let d: Deployment = objects.one("Deployment");
    assert_eq!(d.metadata.namespace.as_deref(), Some("kube-system"));
    let pod = pod_spec_of_deployment(&d);
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(c.name, "snapshot-controller");
    assert_eq!(flag(c, "--leader-election", None).as_deref(), Some("true"));
    assert_eq!(
        flag(c, "--feature-gates", None).as_deref(),
        Some("CSIVolumeGroupSnapshot=true"),
        "group snapshots are off by default in snapshot-controller v8.6.0"
    );
    check_rbac(&objects, "kube-system", &pod);
    let sc = pod.security_context.as_ref().unwrap();
    assert_eq!(
        sc.run_as_non_root,
        Some(true),
        "it only talks to the API server"
    );
    // The sidecar and the controller come from the same release.
    let controller = pod_spec_of_deployment(&Objects::render("deploy").one("Deployment"));
    let sidecar = container(&controller, "csi-snapshotter")
        .image
        .clone()
        .unwrap();
    assert_eq!(image_tag(&sidecar), image_tag(c.image.as_deref().unwrap()));
}

// ---------------------------------------------------------------- image

#[test]
fn dockerfile_builds_the_driver_on_a_pinned_slim_base() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<String> = dockerfile
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let args: HashMap<&str, &str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("ARG "))
        .filter_map(|a| a.split_once('='))
        .collect();
    let expand = |s: &str| {
        let mut s = s.to_string();
        for (k, v) in &args {
            s = s.replace(&format!("${{{k}}}"), v);
        }
        s
    };
    let froms: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .map(|f| expand(f.split_whitespace().next().unwrap()))
        .collect();
    assert_eq!(
        froms.len(),
        2,
        "a build stage and a runtime stage: {froms:?}"
    );
    for image in &froms {
        let tag = image_tag(image).unwrap_or_else(|| panic!("{image}: no tag"));
        assert!(tag != "latest" && !tag.contains('$'), "{image}: pin it");
    }
    // The build stage's Rust is new enough for this crate (edition 2024).
    let rust = image_tag(&froms[0]).unwrap();
    let minor: u32 = rust.split(['.', '-']).nth(1).unwrap().parse().unwrap();
    assert!(froms[0].starts_with("rust:") && minor >= 85, "{}", froms[0]);
    let runtime = &froms[1];
    assert!(
        runtime.starts_with("debian:") && runtime.ends_with("-slim"),
        "{runtime}"
    );
    let install = lines
        .iter()
        .skip_while(|l| !l.starts_with(&format!("FROM {}", "debian")))
        .find(|l| l.contains("apt-get install"))
        .expect("the runtime stage installs packages");
    for pkg in ["nfs-common", "util-linux", "mount"] {
        assert!(
            install.split_whitespace().any(|w| w == pkg),
            "{pkg}: {install}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("--locked")),
        "build from Cargo.lock"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ENTRYPOINT") && l.contains("nfs-csi")),
        "deploy/ passes only arguments: the entrypoint is the driver"
    );

    // The build context, as .dockerignore leaves it, holds the crate:
    // cargo loads its manifest (every declared target present) and its
    // Cargo.lock is current (the build uses --locked).
    assert!(
        lines.iter().any(|l| l == "COPY . ."),
        "the build stage copies the context"
    );
    let context = tempfile::tempdir().unwrap();
    let kept = docker_context(&read(".dockerignore"));
    for needed in ["Cargo.toml", "Cargo.lock", "build.rs", "proto", "src"] {
        assert!(
            kept.iter().any(|k| k == needed),
            "{needed} is left out of the build context"
        );
    }
    for name in &kept {
        copy_tree(&root().join(name), &context.path().join(name));
    }
    let rustc = Command::new("rustc").arg("-vV").output().unwrap();
    let host = String::from_utf8(rustc.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    let out = Command::new(env!("CARGO"))
        .args(["fetch", "--locked", "--offline", "--target", &host])
        .current_dir(context.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo cannot use the Docker build context: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The top-level entries of the repository that a Docker build context
/// keeps, given a .dockerignore of top-level patterns (`name`, `name/`,
/// `*`, `*.ext`, `!name` to re-include).
fn docker_context(dockerignore: &str) -> Vec<String> {
    let patterns: Vec<(bool, String)> = dockerignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.strip_prefix('!') {
            Some(p) => (false, p.trim_end_matches('/').to_string()),
            None => (true, l.trim_end_matches('/').to_string()),
        })
        .collect();
    let matches = |pattern: &str, name: &str| match pattern.strip_prefix('*') {
        Some(suffix) => name.ends_with(suffix),
        None => pattern == name,
    };
    let mut kept: Vec<String> = std::fs::read_dir(root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| {
            let mut excluded = false;
            for (exclude, p) in &patterns {
                if matches(p, name) {
                    excluded = *exclude;
                }
            }
            !excluded
        })
        .collect();
    kept.sort();
    kept
}

fn copy_tree(from: &Path, to: &Path) {
    let meta = std::fs::symlink_metadata(from).unwrap();
    if meta.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &to.join(e.file_name()));
        }
    } else if meta.is_file() {
        std::fs::copy(from, to).unwrap();
    }
}

// ------------------------------------------------- upstream RBAC and pins

#[test]
fn upstream_rbac_omissions_and_additions_have_reasons() {
    for u in UPSTREAM {
        let all = &expand(u.cluster) | &expand(u.namespaced);
        for (rule, reason) in u.omitted {
            assert!(
                reason.len() > 10,
                "{}: say why {rule:?} is omitted",
                u.container
            );
            for g in expand(&[*rule]) {
                assert!(
                    all.contains(&g),
                    "{}: omitted {g:?} is not granted by upstream {}: stale omission",
                    u.container,
                    u.release
                );
            }
        }
        for (rule, reason) in u.added {
            assert!(
                reason.len() > 10,
                "{}: say why {rule:?} is added",
                u.container
            );
            for g in expand(&[*rule]) {
                assert!(
                    !all.contains(&g),
                    "{}: added {g:?} is granted by upstream {} already",
                    u.container,
                    u.release
                );
            }
        }
        // The default path is covered: leader election is on for every
        // controller sidecar, so its leases are never omitted.
        if !u.namespaced.is_empty() {
            assert!(
                needs(u.container).1.contains(&(
                    "coordination.k8s.io".to_string(),
                    "leases".to_string(),
                    "update".to_string()
                )),
                "{}",
                u.container
            );
        }
    }
}

/// The check that guards the RBAC fails on the RBAC this issue was found
/// with: csi-provisioner allowed only get and list on volumesnapshots.
#[test]
fn rbac_check_rejects_the_provisioner_role_without_watch_and_update() {
    let objects = Objects::render("deploy");
    let pod = pod_spec_of_deployment(&objects.one("Deployment"));
    check_rbac(&objects, NAMESPACE, &pod);

    let mut docs = objects.0.clone();
    let role = docs
        .iter_mut()
        .find(|v| v["kind"] == "ClusterRole" && v["metadata"]["name"] == "nfs-csi-provisioner")
        .expect("the provisioner's ClusterRole");
    let rule = role["rules"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["resources"] == json!(["volumesnapshots"]))
        .expect("a rule for volumesnapshots");
    rule["verbs"] = json!(["get", "list"]);
    let old = Objects::parse(docs);
    let err = std::panic::catch_unwind(|| check_rbac(&old, NAMESPACE, &pod))
        .expect_err("the old provisioner role must be rejected");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("csi-provisioner") && msg.contains("volumesnapshots"),
        "{msg}"
    );
}

/// Every sidecar runs the release whose RBAC `UPSTREAM` was read from, and
/// the manifest names the release notes of its pin beside it.
#[test]
fn sidecar_images_are_the_releases_their_rbac_was_read_from() {
    let mut seen = BTreeSet::new();
    for dir in ["deploy", "deploy/examples/overlay", "snapshot-crds"] {
        let objects = Objects::render(dir);
        let pods: Vec<PodSpec> = objects
            .all::<Deployment>("Deployment")
            .iter()
            .map(pod_spec_of_deployment)
            .chain(
                objects
                    .all::<DaemonSet>("DaemonSet")
                    .iter()
                    .map(pod_spec_of_daemonset),
            )
            .collect();
        for pod in &pods {
            for c in pod.containers.iter().filter(|c| c.name != "nfs-csi") {
                let u = upstream(&c.name);
                assert_eq!(
                    c.image.as_deref(),
                    Some(format!("registry.k8s.io/sig-storage/{}:{}", u.image, u.release).as_str()),
                    "{}: the pin and the upstream RBAC written down in tests/deploy.rs must be \
                     of the same release; read the new release's RBAC ({}) when bumping",
                    c.name,
                    u.source
                );
                seen.insert(u.container);
            }
        }
    }
    let all: BTreeSet<&str> = UPSTREAM.iter().map(|u| u.container).collect();
    assert_eq!(seen, all, "every sidecar written down is deployed");

    // The citation beside each pin: the comment block right above `image:`.
    for file in [
        "deploy/base/controller.yaml",
        "deploy/base/node.yaml",
        "snapshot-crds/snapshot-controller.yaml",
    ] {
        let text = read(file);
        let lines: Vec<&str> = text.lines().collect();
        let mut pins = 0;
        for (i, line) in lines.iter().enumerate() {
            let Some(image) = line
                .trim()
                .strip_prefix("image: registry.k8s.io/sig-storage/")
            else {
                continue;
            };
            pins += 1;
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
            let comment: String = lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with('#'))
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                comment.contains("CHANGELOG") && comment.contains(&format!("releases/tag/{tag}")),
                "{file}: {image}: name the release notes of the pin in a comment right above it"
            );
        }
        assert!(pins > 0, "{file} pins no sidecar");
    }
}

/// Go's time.Duration syntax as the sidecars' flags take it ("10s", "1m30s").
fn go_duration(s: &str) -> Option<std::time::Duration> {
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let (unit, len) = [("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]
            .into_iter()
            .find(|(u, _)| rest.starts_with(u))
            .map(|(u, f)| (f, u.len()))?;
        total += value * unit;
        rest = &rest[len..];
    }
    Some(std::time::Duration::from_secs_f64(total))
}

#[test]
fn go_duration_parses_the_forms_used() {
    assert_eq!(go_duration("10s"), Some(std::time::Duration::from_secs(10)));
    assert_eq!(
        go_duration("1m30s"),
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(
        go_duration("500ms"),
        Some(std::time::Duration::from_millis(500))
    );
    assert_eq!(go_duration("5m"), Some(std::time::Duration::from_secs(300)));
    assert_eq!(go_duration("10"), None);
    assert_eq!(go_duration(""), None);
    assert_eq!(go_duration("s"), None);
}

/// A snapshot that answers CreateSnapshot with ready_to_use=false is asked
/// again with the sidecar's exponential backoff, which grows to 5 minutes by
/// default: capped, a finished snapshot is marked ready within seconds.
#[test]
fn snapshotter_retries_a_pending_snapshot_within_seconds() {
    let objects = Objects::render("deploy");
    let pod = pod_spec_of_deployment(&objects.one("Deployment"));
    let snapshotter = container(&pod, "csi-snapshotter");
    let max = flag(snapshotter, "--retry-interval-max", None)
        .expect("csi-snapshotter has --retry-interval-max (its default is 5m)");
    let max = go_duration(&max).unwrap_or_else(|| panic!("--retry-interval-max={max}"));
    assert!(
        max >= std::time::Duration::from_secs(1) && max <= std::time::Duration::from_secs(30),
        "--retry-interval-max {max:?}: a ready snapshot waits up to this long to be seen"
    );
    if let Some(start) = flag(snapshotter, "--retry-interval-start", None) {
        assert!(go_duration(&start).expect("a duration") <= max);
    }
}

// ---------------------------------------------------- what apply compares

/// A quantity in the canonical form the apiserver stores it in, for the forms
/// written here: an unsigned decimal with an optional fraction and a decimal
/// (n u m k M G T P E) or binary (Ki Mi Gi Ti Pi Ei) suffix. The rules of
/// Kubernetes' resource.Quantity: the suffix family is kept; no precision is
/// lost and no fraction is written; the suffix is as large as possible; a
/// binary quantity under 1024 or with a fraction is written as a decimal one.
/// Exponents, signs and values finer than 1n are refused (not used here).
fn canonical_quantity(s: &str) -> Result<String, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int}{frac}");
    if digits.is_empty() || frac.contains('.') || digits.len() > 18 {
        return Err(format!("{s:?}: not a number of the forms used here"));
    }
    let mantissa: u128 = digits.parse().map_err(|_| format!("{s:?}: not a number"))?;
    let fraction_digits = frac.len() as u32;
    let binary = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
        .iter()
        .position(|b| *b == suffix);
    if let Some(p) = binary {
        // mantissa * 1024^(p+1) / 10^fraction_digits bytes.
        let numerator = mantissa << (10 * (p as u32 + 1));
        let denominator = 10u128.pow(fraction_digits);
        if !numerator.is_multiple_of(denominator) {
            return decimal_canonical(numerator, -(fraction_digits as i32), s);
        }
        let bytes = numerator / denominator;
        if bytes < 1024 {
            return decimal_canonical(bytes, 0, s);
        }
        let mut value = bytes;
        let mut power = 0;
        while power < 6 && value.is_multiple_of(1024) {
            value /= 1024;
            power += 1;
        }
        let unit = if power == 0 {
            ""
        } else {
            ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power - 1]
        };
        return Ok(format!("{value}{unit}"));
    }
    let exponent = match suffix {
        "n" => -9,
        "u" => -6,
        "m" => -3,
        "" => 0,
        "k" => 3,
        "M" => 6,
        "G" => 9,
        "T" => 12,
        "P" => 15,
        "E" => 18,
        _ => {
            return Err(format!(
                "{s:?}: suffix {suffix:?} is not one of the forms used here"
            ));
        }
    };
    decimal_canonical(mantissa, exponent - fraction_digits as i32, s)
}

/// mantissa * 10^scale with the largest decimal SI suffix that keeps it an
/// integer.
fn decimal_canonical(mut mantissa: u128, mut scale: i32, s: &str) -> Result<String, String> {
    if mantissa == 0 {
        return Ok("0".into());
    }
    while mantissa.is_multiple_of(10) {
        mantissa /= 10;
        scale += 1;
    }
    if scale < -9 {
        return Err(format!("{s:?}: finer than 1n, which the apiserver rounds"));
    }
    let exponent = (scale.div_euclid(3) * 3).min(18);
    let value = mantissa * 10u128.pow((scale - exponent) as u32);
    let suffix = match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        _ => "E",
    };
    Ok(format!("{value}{suffix}"))
}

#[test]
fn canonical_quantity_follows_the_apiserver() {
    for (written, stored) in [
        ("10000", "10k"),
        ("10k", "10k"),
        ("1100", "1100"),
        ("1000m", "1"),
        ("1.5", "1500m"),
        ("0.1", "100m"),
        ("10m", "10m"),
        ("100m", "100m"),
        ("0", "0"),
        ("0m", "0"),
        ("2000000", "2M"),
        ("1.5k", "1500"),
        ("32Mi", "32Mi"),
        ("1024Ki", "1Mi"),
        ("1.5Gi", "1536Mi"),
        ("2048Mi", "2Gi"),
        ("1025Ki", "1025Ki"),
        ("0.5Ki", "512"),
        ("1Ki", "1Ki"),
        ("1.5Ki", "1536"),
        ("0.1Ki", "102400m"),
        ("1000E", "1000E"),
        ("1500u", "1500u"),
    ] {
        assert_eq!(
            canonical_quantity(written).as_deref(),
            Ok(stored),
            "{written}"
        );
    }
    for bad in ["", "Mi", "1e3", "-1", "1..2", "1.2.3", "5X", "0.0000000001"] {
        assert!(canonical_quantity(bad).is_err(), "{bad:?}");
    }
}

/// Every rendered object of every directory a user applies.
fn everything_applied() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for dir in ["deploy", "deploy/examples/overlay", "snapshot-crds"] {
        for v in Objects::render(dir).0 {
            out.push((format!("{dir}: {}", describe(&v)), v));
        }
    }
    for v in examples().0 {
        out.push((format!("deploy/examples: {}", describe(&v)), v));
    }
    out
}

fn walk<'a>(v: &'a Value, path: &str, out: &mut Vec<(String, &'a str, &'a Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push((path.to_string(), k.as_str(), x));
                walk(x, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// What kubectl apply and server-side apply compare with what the apiserver
/// stored: a quantity not in canonical form ("10000" stored as "10k") reads
/// as changed on every apply and conflicts under server-side apply.
#[test]
fn every_quantity_is_written_as_the_apiserver_stores_it() {
    let mut checked = 0;
    for (what, v) in everything_applied() {
        // CRD schemas hold no quantities, and their property names would read
        // as ones.
        if v["kind"] == "CustomResourceDefinition" {
            continue;
        }
        let mut fields = Vec::new();
        walk(&v, "", &mut fields);
        for (path, key, value) in fields {
            let quantities: Vec<(String, &Value)> = match (key, value) {
                ("requests" | "limits" | "hard", Value::Object(m)) => m
                    .iter()
                    .map(|(k, q)| (format!("{path}.{key}.{k}"), q))
                    .collect(),
                ("sizeLimit", q) => vec![(format!("{path}.{key}"), q)],
                _ => continue,
            };
            for (at, q) in quantities {
                let text = q
                    .as_str()
                    .unwrap_or_else(|| panic!("{what}: {at}: write the quantity as a string"));
                let canonical =
                    canonical_quantity(text).unwrap_or_else(|e| panic!("{what}: {at}: {e}"));
                assert_eq!(
                    text, canonical,
                    "{what}: {at}: the apiserver stores {text:?} as {canonical:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 10, "only {checked} quantities found");
}

/// The apiserver defaults a fieldRef's apiVersion to v1; written without it,
/// server-side apply conflicts on it.
#[test]
fn every_field_ref_names_its_api_version() {
    let mut checked = 0;
    for (what, v) in everything_applied() {
        let mut fields = Vec::new();
        walk(&v, "", &mut fields);
        for (path, key, value) in fields {
            if key == "fieldRef" {
                assert_eq!(
                    value.get("apiVersion").and_then(Value::as_str),
                    Some("v1"),
                    "{what}: {path}.fieldRef: write apiVersion: v1 as the apiserver defaults it"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 2, "only {checked} fieldRefs found");
}
