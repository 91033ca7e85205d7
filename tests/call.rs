//! `nfs-csi call`: the real binary as a subprocess against the real driver
//! (`--mode all`) on a `mountedShare` export in a temporary directory; every
//! subcommand, its JSON output, its exit codes, and that secrets given to
//! it are printed and logged nowhere.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("SKIPPED: needs root (this test mounts; CI runs it as root)");
            return;
        }
    };
}

/// The driver under test and its `call` command line.
struct Env {
    t: tempfile::TempDir,
    share: PathBuf,
    driver: Driver,
}

impl Env {
    async fn start() -> Env {
        Env::start_with(&[]).await
    }

    async fn start_with(extra: &[&str]) -> Env {
        let t = tempfile::tempdir().unwrap();
        let share = t.path().join("share");
        std::fs::create_dir_all(&share).unwrap();
        let share_s = share.display().to_string();
        let mut args = vec!["--mode", "all", "--export", &share_s];
        args.extend_from_slice(extra);
        let driver = Driver::start(t.path(), &args).await;
        Env { t, share, driver }
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.driver.socket.display())
    }

    fn run(&self, args: &[&str]) -> Output {
        call_at(&self.endpoint(), args, &[])
    }

    /// Runs `call args`, asserts success and returns the parsed stdout.
    fn ok(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        parse_ok(args, &out)
    }

    /// Runs `call args`, asserts it fails; returns (exit code, stderr).
    fn fail(&self, args: &[&str]) -> (i32, String) {
        let out = self.run(args);
        failed(args, &out)
    }

    fn create(&self, name: &str) -> Value {
        let v = self.ok(&["create-volume", "--name", name, "--capacity-bytes", "1Mi"]);
        v["volume"].clone()
    }
}

/// `nfs-csi call --endpoint endpoint args` with extra environment.
fn call_at(endpoint: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nfs-csi"))
        .arg("call")
        .arg("--endpoint")
        .arg(endpoint)
        .args(args)
        .env_remove("CSI_ENDPOINT")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run nfs-csi call")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn parse_ok(args: &[&str], out: &Output) -> Value {
    assert!(
        out.status.success(),
        "call {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "call {args:?}: stdout is not JSON ({e}): {}",
            text(&out.stdout)
        )
    })
}

fn failed(args: &[&str], out: &Output) -> (i32, String) {
    assert!(
        !out.status.success(),
        "call {args:?} should fail; stdout: {}",
        text(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "a failed call prints nothing on stdout: {}",
        text(&out.stdout)
    );
    (out.status.code().expect("exit code"), text(&out.stderr))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// The `type`s of `capabilities[*].<kind>.type`.
fn cap_types(v: &Value, kind: &str) -> Vec<String> {
    v["capabilities"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(|c| c[kind]["type"].as_str().map(String::from))
        .collect()
}

fn ids(list: &Value, what: &str, field: &str) -> Vec<String> {
    list["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| s(&e[what][field]).to_string())
        .collect()
}

#[tokio::test]
async fn identity_info_capabilities_probe() {
    let e = Env::start().await;
    let info = e.ok(&["info"]);
    assert_eq!(info["name"], "nfs-csi.dev");
    assert_eq!(info["vendor_version"], env!("CARGO_PKG_VERSION"));
    assert!(info["manifest"].is_object(), "{info}");
    assert_eq!(e.ok(&["get-plugin-info"]), info, "alias");

    let caps = e.ok(&["plugin-capabilities"]);
    assert!(
        cap_types(&caps, "service").contains(&"CONTROLLER_SERVICE".into()),
        "{caps}"
    );
    assert_eq!(cap_types(&caps, "volume_expansion"), ["ONLINE"], "{caps}");

    assert_eq!(e.ok(&["probe"]), serde_json::json!({"ready": true}));
}

#[tokio::test]
async fn controller_volume_lifecycle() {
    let e = Env::start().await;
    let caps = cap_types(&e.ok(&["controller-get-capabilities"]), "rpc");
    for want in [
        "CREATE_DELETE_VOLUME",
        "LIST_VOLUMES",
        "GET_CAPACITY",
        "EXPAND_VOLUME",
        "GET_VOLUME",
        "CREATE_DELETE_SNAPSHOT",
        "LIST_SNAPSHOTS",
        "CLONE_VOLUME",
    ] {
        assert!(caps.contains(&want.to_string()), "{want} in {caps:?}");
    }

    let cap = e.ok(&["get-capacity"]);
    assert!(cap["available_capacity"].as_i64().unwrap() > 0, "{cap}");
    let share = e.share.display().to_string();
    let cap2 = e.ok(&[
        "get-capacity",
        "--parameter",
        &format!("mountedShare={share}"),
    ]);
    assert!(cap2["available_capacity"].as_i64().unwrap() > 0, "{cap2}");

    // create with parameters, a capacity range, mount flags and an access mode
    let created = e.ok(&[
        "create-volume",
        "--name",
        "pvc-life",
        "--capacity-bytes",
        "1Mi",
        "--limit-bytes",
        "2Mi",
        "--parameter",
        "onDelete=retain",
        "--parameter",
        "subDir=ns/pvc-life",
        "--access-mode",
        "single-node-multi-writer",
        "--mount-flag",
        "noatime",
    ]);
    let vol = &created["volume"];
    let id = s(&vol["volume_id"]).to_string();
    assert_eq!(vol["capacity_bytes"], 1 << 20, "{created}");
    assert_eq!(vol["volume_context"]["subDir"], "ns/pvc-life", "{created}");
    assert_eq!(vol["volume_context"]["mountedShare"], share.as_str());
    assert!(vol["content_source"].is_null(), "{created}");
    assert!(e.share.join("ns/pvc-life").is_dir());
    // idempotent: the same name answers the same volume
    let again = e.ok(&[
        "create-volume",
        "--name",
        "pvc-life",
        "--required-bytes",
        "1048576",
        "--parameter",
        "onDelete=retain",
        "--parameter",
        "subDir=ns/pvc-life",
    ]);
    assert_eq!(again["volume"]["volume_id"], id.as_str());

    let listed = e.ok(&["list-volumes"]);
    assert_eq!(
        ids(&listed, "volume", "volume_id"),
        vec![id.clone()],
        "{listed}"
    );
    assert_eq!(listed["next_token"], "");
    let entry = &listed["entries"][0];
    assert_eq!(
        entry["status"]["volume_condition"]["abnormal"], false,
        "{entry}"
    );

    for rpc in ["get-volume", "controller-get-volume"] {
        let got = e.ok(&[rpc, "--volume-id", &id]);
        assert_eq!(got["volume"]["volume_id"], id.as_str(), "{got}");
        assert_eq!(got["volume"]["capacity_bytes"], 1 << 20);
        assert_eq!(
            got["status"]["volume_condition"]["abnormal"], false,
            "{got}"
        );
        assert!(got["status"]["published_node_ids"].is_array(), "{got}");
    }

    let valid = e.ok(&[
        "validate-volume-capabilities",
        "--volume-id",
        &id,
        "--mount-flag",
        "noatime",
    ]);
    let confirmed = &valid["confirmed"]["volume_capabilities"][0];
    assert_eq!(
        confirmed["access_mode"]["mode"], "MULTI_NODE_MULTI_WRITER",
        "{valid}"
    );
    assert_eq!(
        confirmed["mount"]["mount_flags"],
        serde_json::json!(["noatime"])
    );

    let grown = e.ok(&[
        "expand-volume",
        "--volume-id",
        &id,
        "--required-bytes",
        "4Mi",
    ]);
    assert_eq!(grown["capacity_bytes"], 4 << 20, "{grown}");
    assert_eq!(grown["node_expansion_required"], false);
    let grown = e.ok(&[
        "controller-expand-volume",
        "--volume-id",
        &id,
        "--capacity-bytes",
        "8Mi",
    ]);
    assert_eq!(grown["capacity_bytes"], 8 << 20, "{grown}");
    assert_eq!(
        e.ok(&["get-volume", "--volume-id", &id])["volume"]["capacity_bytes"],
        8 << 20
    );

    assert_eq!(
        e.ok(&["delete-volume", "--volume-id", &id]),
        serde_json::json!({})
    );
    let (code, err) = e.fail(&["get-volume", "--volume-id", &id]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");
    // deleting again succeeds (CSI idempotency); onDelete=retain kept the data
    assert_eq!(
        e.ok(&["delete-volume", "--volume-id", &id]),
        serde_json::json!({})
    );
    assert!(e.share.join("ns/pvc-life").is_dir(), "retained");
    assert_eq!(e.ok(&["list-volumes"])["entries"], serde_json::json!([]));
}

#[tokio::test]
async fn list_volumes_in_pages() {
    let e = Env::start().await;
    let mut want: Vec<String> = ["pvc-a", "pvc-b", "pvc-c"]
        .iter()
        .map(|n| s(&e.create(n)["volume_id"]).to_string())
        .collect();
    want.sort();
    let first = e.ok(&["list-volumes", "--max-entries", "2"]);
    let mut got = ids(&first, "volume", "volume_id");
    assert_eq!(got.len(), 2, "{first}");
    let token = s(&first["next_token"]).to_string();
    assert!(!token.is_empty(), "{first}");
    let rest = e.ok(&[
        "list-volumes",
        "--max-entries",
        "2",
        "--starting-token",
        &token,
    ]);
    got.extend(ids(&rest, "volume", "volume_id"));
    assert_eq!(rest["next_token"], "", "{rest}");
    got.sort();
    assert_eq!(got, want);
    let (code, err) = e.fail(&["list-volumes", "--starting-token", "bogus"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: ABORTED: "), "{err}");
}

#[tokio::test]
async fn snapshots_restores_and_clones() {
    let e = Env::start().await;
    let vol = e.create("pvc-src");
    let src = s(&vol["volume_id"]).to_string();
    std::fs::write(e.share.join("pvc-src/data"), b"hello snapshot").unwrap();

    let snap = e.ok(&[
        "create-snapshot",
        "--name",
        "snap-1",
        "--source-volume-id",
        &src,
        "--parameter",
        "compressionLevel=9",
    ])["snapshot"]
        .clone();
    let snap_id = s(&snap["snapshot_id"]).to_string();
    assert_eq!(snap["source_volume_id"], src.as_str(), "{snap}");
    assert_eq!(snap["ready_to_use"], true, "{snap}");
    assert!(snap["size_bytes"].as_i64().unwrap() > 0, "{snap}");
    assert!(s(&snap["creation_time"]).ends_with('Z'), "RFC 3339: {snap}");
    let snap2 = e.ok(&[
        "create-snapshot",
        "--name",
        "snap-2",
        "--source-volume-id",
        &src,
    ])["snapshot"]["snapshot_id"]
        .clone();
    let snap2 = s(&snap2).to_string();

    let one = e.ok(&["list-snapshots", "--snapshot-id", &snap_id]);
    assert_eq!(
        ids(&one, "snapshot", "snapshot_id"),
        vec![snap_id.clone()],
        "{one}"
    );
    let mut of_src = ids(
        &e.ok(&["list-snapshots", "--source-volume-id", &src]),
        "snapshot",
        "snapshot_id",
    );
    of_src.sort();
    let mut both = vec![snap_id.clone(), snap2.clone()];
    both.sort();
    assert_eq!(of_src, both);
    let page = e.ok(&["list-snapshots", "--max-entries", "1"]);
    assert_eq!(ids(&page, "snapshot", "snapshot_id").len(), 1, "{page}");
    let token = s(&page["next_token"]).to_string();
    assert!(!token.is_empty(), "{page}");
    let page2 = e.ok(&[
        "list-snapshots",
        "--max-entries",
        "1",
        "--starting-token",
        &token,
    ]);
    assert_eq!(ids(&page2, "snapshot", "snapshot_id").len(), 1, "{page2}");
    assert_ne!(page["entries"][0], page2["entries"][0]);

    // restore the snapshot, clone the volume: content sources in the output
    let restored = e.ok(&[
        "create-volume",
        "--name",
        "pvc-restored",
        "--capacity-bytes",
        "1Mi",
        "--source-snapshot-id",
        &snap_id,
    ])["volume"]
        .clone();
    assert_eq!(
        restored["content_source"],
        serde_json::json!({"snapshot": {"snapshot_id": snap_id}}),
        "{restored}"
    );
    assert_eq!(
        std::fs::read(e.share.join("pvc-restored/data")).unwrap(),
        b"hello snapshot"
    );
    let clone = e.ok(&[
        "create-volume",
        "--name",
        "pvc-clone",
        "--capacity-bytes",
        "1Mi",
        "--source-volume-id",
        &src,
    ])["volume"]
        .clone();
    assert_eq!(
        clone["content_source"],
        serde_json::json!({"volume": {"volume_id": src}}),
        "{clone}"
    );
    assert_eq!(
        std::fs::read(e.share.join("pvc-clone/data")).unwrap(),
        b"hello snapshot"
    );

    for id in [&snap_id, &snap2] {
        assert_eq!(
            e.ok(&["delete-snapshot", "--snapshot-id", id]),
            serde_json::json!({})
        );
    }
    assert_eq!(
        e.ok(&["list-snapshots", "--snapshot-id", &snap_id])["entries"],
        serde_json::json!([])
    );
    // a snapshot that is gone cannot be restored
    let (code, err) = e.fail(&[
        "create-volume",
        "--name",
        "pvc-x",
        "--source-snapshot-id",
        &snap_id,
    ]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");
}

#[tokio::test]
async fn node_info_and_capabilities() {
    let e = Env::start().await;
    let info = e.ok(&["node-get-info"]);
    assert_eq!(info["node_id"], "node-1", "{info}");
    assert_eq!(info["max_volumes_per_node"], 0);
    assert!(info["accessible_topology"].is_null());
    let caps = cap_types(&e.ok(&["node-get-capabilities"]), "rpc");
    for want in [
        "STAGE_UNSTAGE_VOLUME",
        "GET_VOLUME_STATS",
        "VOLUME_CONDITION",
    ] {
        assert!(caps.contains(&want.to_string()), "{want} in {caps:?}");
    }
}

/// Kubelet's paths below a temporary root.
fn kubelet_paths(root: &Path, pv: &str) -> (PathBuf, PathBuf, PathBuf) {
    let staging = root
        .join("plugins/kubernetes.io/csi/nfs-csi.dev")
        .join(pv)
        .join("globalmount");
    let target = |pod: &str| {
        root.join("pods")
            .join(pod)
            .join("volumes/kubernetes.io~csi")
            .join(pv)
            .join("mount")
    };
    (staging, target("pod-a"), target("pod-b"))
}

#[tokio::test]
async fn node_stage_publish_stats_unpublish_unstage() {
    need_root!();
    let kubelet_dir = tempfile::tempdir().unwrap();
    let _guard = MountGuard(kubelet_dir.path().to_path_buf());
    let kdir = kubelet_dir.path().display().to_string();
    let e = Env::start_with(&["--kubelet-dir", &kdir]).await;
    let _guard2 = MountGuard(e.t.path().to_path_buf());
    let vol = e.create("pvc-node");
    let id = s(&vol["volume_id"]).to_string();
    let ctx: Vec<String> = vol["volume_context"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    let (staging, rw, ro) = kubelet_paths(kubelet_dir.path(), "pvc-node");
    let (staging_s, rw_s, ro_s) = (
        staging.display().to_string(),
        rw.display().to_string(),
        ro.display().to_string(),
    );

    let mut stage = vec![
        "stage",
        "--volume-id",
        &id,
        "--staging-target-path",
        &staging_s,
    ];
    for c in &ctx {
        stage.extend(["--volume-context", c]);
    }
    assert_eq!(e.ok(&stage), serde_json::json!({}));
    assert_eq!(mounts_under(&staging), vec![staging.clone()]);
    assert_eq!(e.ok(&stage), serde_json::json!({}), "repeated stage");

    let mut publish = vec![
        "publish",
        "--volume-id",
        &id,
        "--staging-target-path",
        &staging_s,
        "--target-path",
        &rw_s,
    ];
    for c in &ctx {
        publish.extend(["--volume-context", c]);
    }
    assert_eq!(e.ok(&publish), serde_json::json!({}));
    let mut publish_ro = publish.clone();
    publish_ro[6] = &ro_s;
    publish_ro.push("--readonly");
    assert_eq!(e.ok(&publish_ro), serde_json::json!({}));
    std::fs::write(rw.join("file"), b"written in pod a").unwrap();
    assert_eq!(std::fs::read(ro.join("file")).unwrap(), b"written in pod a");
    let err = std::fs::write(ro.join("nope"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
    assert_eq!(
        std::fs::read(e.share.join("pvc-node/file")).unwrap(),
        b"written in pod a"
    );
    // the same target read-only now: refused, not stacked
    let mut flipped = publish.clone();
    flipped.push("--readonly");
    let (code, err) = e.fail(&flipped);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: ALREADY_EXISTS: "), "{err}");

    for rpc in ["stats", "node-get-volume-stats"] {
        let st = e.ok(&[
            rpc,
            "--volume-id",
            &id,
            "--volume-path",
            &rw_s,
            "--staging-target-path",
            &staging_s,
        ]);
        let usage = st["usage"].as_array().expect("usage");
        let bytes = usage
            .iter()
            .find(|u| u["unit"] == "BYTES")
            .unwrap_or_else(|| panic!("no BYTES usage: {st}"));
        assert!(bytes["total"].as_i64().unwrap() > 0, "{st}");
        assert!(bytes["used"].as_i64().unwrap() >= 0, "{st}");
        assert_eq!(st["volume_condition"]["abnormal"], false, "{st}");
    }

    for target in [&rw_s, &ro_s] {
        assert_eq!(
            e.ok(&["unpublish", "--volume-id", &id, "--target-path", target]),
            serde_json::json!({})
        );
    }
    assert_eq!(
        e.ok(&["unpublish", "--volume-id", &id, "--target-path", &rw_s]),
        serde_json::json!({}),
        "repeated unpublish"
    );
    assert_eq!(
        e.ok(&[
            "unstage",
            "--volume-id",
            &id,
            "--staging-target-path",
            &staging_s
        ]),
        serde_json::json!({})
    );
    assert_eq!(mounts_under(kubelet_dir.path()), Vec::<PathBuf>::new());
    // the data stayed on the share
    assert_eq!(
        std::fs::read(e.share.join("pvc-node/file")).unwrap(),
        b"written in pod a"
    );
}

#[tokio::test]
async fn errors_exit_codes_and_messages() {
    let e = Env::start().await;
    // gRPC errors: exit 1, the code name on stderr
    let (code, err) = e.fail(&[
        "create-volume",
        "--name",
        "pvc-e",
        "--parameter",
        "colour=blue",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: INVALID_ARGUMENT: "), "{err}");
    assert!(err.contains("colour"), "{err}");
    let (code, err) = e.fail(&["delete-volume", "--volume-id", ""]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: INVALID_ARGUMENT: "), "{err}");
    let (code, err) = e.fail(&["create-volume", "--name", "pvc-b", "--block"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: INVALID_ARGUMENT: "), "{err}");
    // CSI: deleting a snapshot that does not exist succeeds
    assert_eq!(
        e.ok(&["delete-snapshot", "--snapshot-id", "bogus"]),
        serde_json::json!({})
    );

    // usage errors: exit 2, before anything is sent
    for args in [
        &["create-volume"][..],
        &["delete-volume"],
        &["create-volume", "--name", "x", "--parameter", "novalue"],
        &["create-volume", "--name", "x", "--capacity-bytes", "lots"],
        &[
            "create-volume",
            "--name",
            "x",
            "--source-snapshot-id",
            "a",
            "--source-volume-id",
            "b",
        ],
        &[
            "create-volume",
            "--name",
            "x",
            "--parameter",
            "a=1",
            "--parameter",
            "a=2",
        ],
        &[
            "publish",
            "--volume-id",
            "v",
            "--target-path",
            "/t",
            "--access-mode",
            "everyone",
        ],
        &["no-such-rpc"],
    ] {
        let (code, err) = e.fail(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("error:"), "{args:?}: {err}");
    }
    assert!(
        e.ok(&["list-volumes"])["entries"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // no endpoint at all
    let out = Command::new(env!("CARGO_BIN_EXE_nfs-csi"))
        .args(["call", "probe"])
        .env_remove("CSI_ENDPOINT")
        .output()
        .unwrap();
    let (code, err) = failed(&["probe"], &out);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--endpoint"), "{err}");
    // CSI_ENDPOINT stands in for --endpoint
    let out = Command::new(env!("CARGO_BIN_EXE_nfs-csi"))
        .args(["call", "probe"])
        .env("CSI_ENDPOINT", e.endpoint())
        .output()
        .unwrap();
    assert_eq!(parse_ok(&["probe"], &out)["ready"], true);

    // nothing listening: exit 3
    let gone = e.t.path().join("gone.sock");
    let out = call_at(&format!("unix://{}", gone.display()), &["probe"], &[]);
    let (code, err) = failed(&["probe"], &out);
    assert_eq!(code, 3, "{err}");
    assert!(err.starts_with("error: UNAVAILABLE: "), "{err}");
    assert!(err.contains("gone.sock"), "{err}");
}

#[tokio::test]
async fn timeout_when_the_driver_does_not_answer() {
    let t = tempfile::tempdir().unwrap();
    // a socket that accepts connections (the kernel's backlog) and never answers
    let sock = t.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let start = Instant::now();
    let out = call_at(
        &format!("unix://{}", sock.display()),
        &["--timeout", "1", "probe"],
        &[],
    );
    let (code, err) = failed(&["probe"], &out);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("error: DEADLINE_EXCEEDED: "), "{err}");
    // --timeout is validated
    let out = call_at(
        &format!("unix://{}", sock.display()),
        &["probe", "--timeout", "0"],
        &[],
    );
    assert_eq!(failed(&["probe"], &out).0, 2);
}

#[tokio::test]
async fn secrets_are_never_printed_nor_logged() {
    const SECRET: &str = "supersecret";
    let e = Env::start().await;
    let ep = e.endpoint();
    let debug = [("RUST_LOG", "debug")];
    let mut outputs = Vec::new();
    let mut run = |args: &[&str]| {
        let out = call_at(&ep, args, &debug);
        outputs.push((args.join(" "), out.clone()));
        out
    };

    let out = run(&[
        "create-volume",
        "--name",
        "pvc-secret",
        "--capacity-bytes",
        "1Mi",
        "--secret",
        &format!("password={SECRET}"),
        "--secret",
        &format!("{SECRET}-as-key=x"),
    ]);
    let vol = parse_ok(&["create-volume"], &out);
    let id = s(&vol["volume"]["volume_id"]).to_string();
    let sec = format!("token={SECRET}");
    let out = run(&[
        "create-snapshot",
        "--name",
        "snap-s",
        "--source-volume-id",
        &id,
        "--secret",
        &sec,
    ]);
    let snap = s(&parse_ok(&["create-snapshot"], &out)["snapshot"]["snapshot_id"]).to_string();
    let out = run(&[
        "list-snapshots",
        "--source-volume-id",
        &id,
        "--secret",
        &sec,
    ]);
    parse_ok(&["list-snapshots"], &out);
    let out = run(&[
        "validate-volume-capabilities",
        "--volume-id",
        &id,
        "--secret",
        &sec,
    ]);
    parse_ok(&["validate-volume-capabilities"], &out);
    let out = run(&[
        "expand-volume",
        "--volume-id",
        &id,
        "--capacity-bytes",
        "2Mi",
        "--secret",
        &sec,
    ]);
    parse_ok(&["expand-volume"], &out);
    // failing calls, in the driver and in the client's own parsing
    let out = run(&[
        "create-volume",
        "--name",
        "pvc-bad",
        "--parameter",
        "colour=blue",
        "--secret",
        &sec,
    ]);
    assert_eq!(failed(&["create-volume"], &out).0, 1);
    let out = run(&["create-volume", "--name", "pvc-bad", "--secret", SECRET]);
    let (code, err) = failed(&["create-volume"], &out);
    assert_eq!(code, 2);
    assert!(err.contains("--secret"), "{err}");
    let out = run(&[
        "create-volume",
        "--name",
        "pvc-bad",
        "--secret",
        &sec,
        "--secret",
        &sec,
    ]);
    assert_eq!(failed(&["create-volume"], &out).0, 2);
    let out = run(&["delete-snapshot", "--snapshot-id", &snap, "--secret", &sec]);
    parse_ok(&["delete-snapshot"], &out);
    let out = run(&["delete-volume", "--volume-id", &id, "--secret", &sec]);
    parse_ok(&["delete-volume"], &out);

    for (args, out) in &outputs {
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !text(bytes).contains(SECRET),
                "call {args}: the secret is in its {stream}:\n{}",
                text(bytes)
            );
        }
    }
    let log = e.driver.log_text();
    assert!(
        log.contains("pvc-secret"),
        "the driver logged the calls (debug): {log}"
    );
    assert!(
        !log.contains(SECRET),
        "the secret is in the driver log:\n{log}"
    );
    assert!(
        !log.contains("password"),
        "a secret's key is in the driver log:\n{log}"
    );
}

#[tokio::test]
async fn group_snapshots() {
    let e = Env::start().await;
    let caps = e.ok(&["plugin-capabilities"]);
    assert!(
        cap_types(&caps, "service").contains(&"GROUP_CONTROLLER_SERVICE".into()),
        "{caps}"
    );
    assert_eq!(
        cap_types(&e.ok(&["group-controller-get-capabilities"]), "rpc"),
        ["CREATE_DELETE_GET_VOLUME_GROUP_SNAPSHOT"]
    );
    let data = s(&e.create("pvc-data")["volume_id"]).to_string();
    let wal = s(&e.create("pvc-wal")["volume_id"]).to_string();
    std::fs::write(e.share.join("pvc-data/table"), b"rows").unwrap();
    std::fs::write(e.share.join("pvc-wal/log"), b"records").unwrap();
    let args = [
        "create-group-snapshot",
        "--name",
        "group-1",
        "--source-volume-id",
        &data,
        "--source-volume-id",
        &wal,
        "--parameter",
        "compressionLevel=3",
    ];
    // small volumes: ready at once (a big one answers ready_to_use false
    // and the caller calls again)
    let group = e.ok(&args)["group_snapshot"].clone();
    assert_eq!(group["ready_to_use"], true, "{group}");
    assert!(s(&group["creation_time"]).ends_with('Z'), "{group}");
    let gid = s(&group["group_snapshot_id"]).to_string();
    let members = group["snapshots"].as_array().expect("snapshots").clone();
    assert_eq!(members.len(), 2, "{group}");
    let mut sources: Vec<&str> = members.iter().map(|m| s(&m["source_volume_id"])).collect();
    sources.sort();
    let mut want = vec![data.as_str(), wal.as_str()];
    want.sort();
    assert_eq!(sources, want);
    for m in &members {
        assert_eq!(m["group_snapshot_id"], gid.as_str(), "{m}");
        assert_eq!(m["ready_to_use"], true, "{m}");
    }
    let member_ids: Vec<&str> = members.iter().map(|m| s(&m["snapshot_id"])).collect();
    // idempotent, under its alias too
    let mut again = args.to_vec();
    again[0] = "create-volume-group-snapshot";
    assert_eq!(e.ok(&again)["group_snapshot"], group);
    assert_eq!(
        e.ok(&["get-group-snapshot", "--group-snapshot-id", &gid])["group_snapshot"],
        group
    );
    // members are listed as the group's
    let listed = e.ok(&["list-snapshots"]);
    assert_eq!(ids(&listed, "snapshot", "snapshot_id").len(), 2, "{listed}");
    // a member goes only with its group
    let (code, err) = e.fail(&["delete-snapshot", "--snapshot-id", member_ids[0]]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: FAILED_PRECONDITION: "), "{err}");
    let (code, err) = e.fail(&[
        "delete-group-snapshot",
        "--group-snapshot-id",
        &gid,
        "--snapshot-id",
        member_ids[0],
    ]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: INVALID_ARGUMENT: "), "{err}");
    assert_eq!(
        e.ok(&[
            "delete-group-snapshot",
            "--group-snapshot-id",
            &gid,
            "--snapshot-id",
            member_ids[1],
            "--snapshot-id",
            member_ids[0],
        ]),
        serde_json::json!({})
    );
    assert_eq!(e.ok(&["list-snapshots"])["entries"], serde_json::json!([]));
    let (code, err) = e.fail(&["get-group-snapshot", "--group-snapshot-id", &gid]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");
    // deleting again, or an unknown id: success
    for id in [gid.as_str(), "bogus"] {
        assert_eq!(
            e.ok(&["delete-group-snapshot", "--group-snapshot-id", id]),
            serde_json::json!({})
        );
    }
    // no volume: a usage error, before connecting
    let (code, _) = e.fail(&["create-group-snapshot", "--name", "g"]);
    assert_eq!(code, 2);
}
