//! Incremental snapshots through the real binary's socket, on
//! `mountedShare` exports in temporary directories: chains restored
//! exactly (by the driver and by GNU tar), the VolumeSnapshotClass
//! parameters, deletions in any order, a crash mid-archive, hostile
//! directory listings.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nfs_csi::grpc::csi::v1 as csi;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

type Client = ControllerClient<Channel>;

fn share(t: &Path) -> PathBuf {
    let p = t.join("share");
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn ms(root: &Path) -> std::collections::HashMap<String, String> {
    params(&[("mountedShare", &root.display().to_string())])
}

async fn volume(
    c: &mut Client,
    name: &str,
    root: &Path,
    from: Option<&str>,
) -> Result<csi::Volume, tonic::Status> {
    let mut req = create_req(name, 0, ms(root));
    req.volume_content_source = from.map(|id| csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: id.into(),
            },
        )),
    });
    c.create_volume(req)
        .await
        .map(|r| r.into_inner().volume.unwrap())
}

/// Takes a snapshot and waits until it is ready.
async fn snap(c: &mut Client, name: &str, source: &str, p: &[(&str, &str)]) -> csi::Snapshot {
    let req = csi::CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        parameters: params(p),
        ..Default::default()
    };
    let start = Instant::now();
    loop {
        let s = c
            .create_snapshot(req.clone())
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        if s.ready_to_use {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "{name} never finished"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn delete(c: &mut Client, id: &str) {
    c.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: id.into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

fn manifest(root: &Path, name: &str) -> serde_json::Value {
    let p = root
        .join(".nfs-csi/snapshots")
        .join(name)
        .join("manifest.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// Every entry of a tree: kind, mode, owner, mtime (not for directories:
/// restoring inside moves it... but it is restored; kept for all but the
/// root), link count, and content (SHA-256) or link target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.is_file() {
                let data = std::fs::read(&p).unwrap();
                format!("file {} {}", m.nlink(), hex::encode(Sha256::digest(&data)))
            } else {
                "other".to_string()
            };
            let mtime = if m.is_dir() { 0 } else { m.mtime() };
            out.insert(
                rel,
                format!("{what} {:o} {}:{} {mtime}", m.mode(), m.uid(), m.gid()),
            );
        }
    }
    out
}

fn same(want: &Path, got: &Path, what: &str) {
    let (a, b) = (tree(want), tree(got));
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "{what}: {k}");
    }
    for k in b.keys() {
        assert!(a.contains_key(k), "{what}: {k} should not be there");
    }
}

fn copy(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Bytes that do not compress.
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for chunk in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = chunk.len();
        chunk.copy_from_slice(&x.to_le_bytes()[..n]);
    }
    out
}

/// A tree with every kind of entry, some data and many small files.
fn fill(src: &Path) {
    std::fs::create_dir_all(src.join("logs")).unwrap();
    std::fs::create_dir_all(src.join("small/deep/er")).unwrap();
    std::fs::create_dir_all(src.join("moved-dir/in")).unwrap();
    std::fs::create_dir_all(src.join("to-file/x")).unwrap();
    std::fs::write(src.join("data"), noise(4 << 20, 7)).unwrap();
    std::fs::write(src.join("logs/app.log"), "line\n".repeat(2000)).unwrap();
    for i in 0..40 {
        std::fs::write(
            src.join(format!("small/f{i}")),
            format!("small {i}\n").repeat(30),
        )
        .unwrap();
    }
    std::fs::write(src.join("small/deep/er/x"), b"deep").unwrap();
    std::fs::write(src.join("moved-dir/in/y"), b"y").unwrap();
    std::fs::write(src.join("to-dir"), b"a file, later a directory").unwrap();
    std::fs::write(src.join("linked"), b"linked").unwrap();
    std::fs::hard_link(src.join("linked"), src.join("small/twin")).unwrap();
    symlink("small/f1", src.join("rel-link")).unwrap();
    if is_root() {
        nix::unistd::chown(&src.join("small/f0"), Some(1234.into()), Some(4321.into())).unwrap();
    }
}

fn append(p: &Path, data: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .open(p)
        .unwrap()
        .write_all(data)
        .unwrap();
}

fn set_mtime(p: &Path, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// The changes between the snapshots of a chain (step 1, 2, 3, ...).
fn change(src: &Path, step: u32) {
    match step % 3 {
        1 => {
            append(&src.join("logs/app.log"), b"appended\n");
            std::fs::write(src.join("small/f1"), format!("rewritten {step}")).unwrap();
            std::fs::remove_file(src.join(format!("small/f{}", 10 + step))).unwrap();
            std::fs::rename(
                src.join(format!("small/f{}", 20 + step)),
                src.join(format!("small/renamed{step}")),
            )
            .unwrap();
            if src.join("moved-dir").exists() {
                std::fs::rename(src.join("moved-dir"), src.join("moved-dir-2")).unwrap();
            }
        }
        2 => {
            std::fs::set_permissions(src.join("small/f4"), std::fs::Permissions::from_mode(0o600))
                .unwrap();
            set_mtime(&src.join("small/f5"), 1_500_000_000 + step as i64);
            if src.join("to-dir").is_file() {
                std::fs::remove_file(src.join("to-dir")).unwrap();
                std::fs::create_dir_all(src.join("to-dir/now")).unwrap();
                std::fs::write(src.join("to-dir/now/z"), b"z").unwrap();
            }
            if src.join("to-file").is_dir() {
                std::fs::remove_dir_all(src.join("to-file")).unwrap();
                std::fs::write(src.join("to-file"), b"now a file").unwrap();
            }
        }
        _ => {
            append(
                &src.join("logs/app.log"),
                format!("step {step}\n").as_bytes(),
            );
            std::fs::write(src.join(format!("small/new{step}")), b"new").unwrap();
            let _ = std::fs::remove_file(src.join("small/f6"));
            std::fs::write(src.join("linked"), format!("relinked {step}")).unwrap();
        }
    }
}

#[tokio::test]
async fn a_chain_restores_each_snapshot_exactly_by_the_driver_and_by_gnu_tar() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path());
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let src = volume(&mut c, "src", &root, None).await.unwrap();
    fill(&root.join("src"));
    let mut snaps = Vec::new();
    for i in 0..4u32 {
        if i > 0 {
            change(&root.join("src"), i);
        }
        let s = snap(&mut c, &format!("s{i}"), &src.volume_id, &[]).await;
        copy(&root.join("src"), &t.path().join(format!("at{i}")));
        snaps.push(s);
    }
    let full = manifest(&root, "s0");
    assert!(full.get("parent").is_none());
    for i in 1..4 {
        let m = manifest(&root, &format!("s{i}"));
        assert_eq!(m["parent"], format!("s{}", i - 1), "{m}");
        assert_eq!(m["chain"], i);
        let (inc, all) = (
            m["archive_bytes"].as_u64().unwrap(),
            full["archive_bytes"].as_u64().unwrap(),
        );
        assert!(
            inc * 20 < all,
            "s{i}: incremental {inc} bytes vs full {all}"
        );
        assert!(m["added_bytes"].as_u64().unwrap() >= inc);
        // size_bytes stays the restore size
        assert_eq!(
            snaps[i as usize].size_bytes,
            m["size_bytes"].as_i64().unwrap()
        );
        assert!(snaps[i as usize].size_bytes > 4 << 20);
    }
    for (i, s) in snaps.iter().enumerate() {
        volume(&mut c, &format!("r{i}"), &root, Some(&s.snapshot_id))
            .await
            .unwrap();
        same(
            &t.path().join(format!("at{i}")),
            &root.join(format!("r{i}")),
            &format!("restore of s{i}"),
        );
    }
    // GNU tar, by hand, oldest first
    let zstd = std::process::Command::new("tar")
        .args(["--zstd", "--version"])
        .output();
    if !zstd.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "SKIPPED: GNU tar with zstd is not available; the by-hand restore is not checked"
        );
        return;
    }
    let by_hand = t.path().join("gnu");
    std::fs::create_dir_all(&by_hand).unwrap();
    for i in 0..4 {
        let out = std::process::Command::new("tar")
            .args([
                "--zstd",
                "--xattrs",
                "--listed-incremental=/dev/null",
                "-xpf",
            ])
            .arg(root.join(format!(".nfs-csi/snapshots/s{i}/archive.tar.zst")))
            .arg("-C")
            .arg(&by_hand)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        same(
            &t.path().join(format!("at{i}")),
            &by_hand,
            &format!("GNU tar up to s{i}"),
        );
    }
}

#[tokio::test]
async fn parameters_choose_incremental_or_full() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path());
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let src = volume(&mut c, "src", &root, None).await.unwrap();
    fill(&root.join("src"));
    for (k, v) in [
        ("incremental", "maybe"),
        ("fullEvery", "0"),
        ("fullEvery", "x"),
        ("fullEvery", "100000"),
    ] {
        let err = c
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: src.volume_id.clone(),
                name: "bad".into(),
                parameters: params(&[(k, v)]),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{k}={v}");
        assert!(err.message().contains(k), "{k}: {}", err.message());
    }
    snap(&mut c, "a", &src.volume_id, &[]).await;
    let b = snap(&mut c, "b", &src.volume_id, &[("incremental", "false")]).await;
    assert!(
        manifest(&root, "b").get("parent").is_none(),
        "incremental: false forces full"
    );
    snap(&mut c, "c", &src.volume_id, &[("fullEvery", "2")]).await;
    assert_eq!(manifest(&root, "c")["parent"], "b");
    snap(&mut c, "d", &src.volume_id, &[("fullEvery", "2")]).await;
    assert!(
        manifest(&root, "d").get("parent").is_none(),
        "fullEvery 2: full again"
    );
    snap(&mut c, "e", &src.volume_id, &[("incremental", "true")]).await;
    assert_eq!(manifest(&root, "e")["parent"], "d");
    // another volume's snapshots are never a parent
    let other = volume(&mut c, "other", &root, None).await.unwrap();
    std::fs::write(root.join("other/x"), b"x").unwrap();
    snap(&mut c, "o", &other.volume_id, &[]).await;
    assert!(manifest(&root, "o").get("parent").is_none());
    let _ = b;
}

/// A small deterministic generator for the deletion orders.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        v.swap(i, j);
    }
}

#[tokio::test]
async fn deletions_in_any_order_keep_every_survivor_restorable_and_free_everything() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path());
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let store = root.join(".nfs-csi/snapshots");
    for seed in [1u64, 2, 3, 42] {
        let vol = format!("v{seed}");
        let src = volume(&mut c, &vol, &root, None).await.unwrap();
        fill(&root.join(&vol));
        // two chains: fullEvery 3 makes s0 s1 s2 | s3 s4
        let mut snaps = Vec::new();
        for i in 0..5u32 {
            if i > 0 {
                change(&root.join(&vol), i);
            }
            let name = format!("{vol}-s{i}");
            let s = snap(&mut c, &name, &src.volume_id, &[("fullEvery", "3")]).await;
            copy(&root.join(&vol), &t.path().join(&name));
            snaps.push((name, s.snapshot_id));
        }
        assert_eq!(manifest(&root, &format!("{vol}-s2"))["chain"], 2);
        assert!(
            manifest(&root, &format!("{vol}-s3"))
                .get("parent")
                .is_none()
        );
        let mut order = snaps.clone();
        shuffle(&mut order, seed);
        let mut alive = snaps.clone();
        for (n, (name, id)) in order.iter().enumerate() {
            delete(&mut c, id).await;
            delete(&mut c, id).await; // idempotent
            alive.retain(|(k, _)| k != name);
            let err = c
                .get_snapshot(csi::GetSnapshotRequest {
                    snapshot_id: id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::NotFound);
            let listed = c
                .list_snapshots(csi::ListSnapshotsRequest {
                    source_volume_id: src.volume_id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut ids: Vec<String> = listed
                .entries
                .into_iter()
                .map(|e| e.snapshot.unwrap().snapshot_id)
                .collect();
            ids.sort();
            let mut want: Vec<String> = alive.iter().map(|(_, i)| i.clone()).collect();
            want.sort();
            assert_eq!(ids, want, "seed {seed}: listing after deleting {name}");
            for (k, sid) in &alive {
                let r = format!("r-{k}-{n}");
                let v = volume(&mut c, &r, &root, Some(sid))
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}: {k} after deleting {name}: {e}"));
                same(
                    &t.path().join(k),
                    &root.join(&r),
                    &format!("seed {seed}: {k} after deleting {name}"),
                );
                c.delete_volume(csi::DeleteVolumeRequest {
                    volume_id: v.volume_id,
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }
        // nothing left in the store of this volume's snapshots
        let left: Vec<String> = std::fs::read_dir(&store)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{vol}-")))
            .collect();
        assert!(left.is_empty(), "seed {seed}: left behind: {left:?}");
    }
}

#[tokio::test]
async fn killed_mid_incremental_and_its_parent_deleted_meanwhile_it_completes_right() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path());
    let mut d = Driver::start(
        t.path(),
        &["--mode", "controller", "--snapshot-threads", "1"],
    )
    .await;
    let mut c = d.controller().await;
    let src = volume(&mut c, "big", &root, None).await.unwrap();
    std::fs::write(root.join("big/keep"), b"unchanged").unwrap();
    std::fs::write(root.join("big/random"), noise(1 << 20, 3)).unwrap();
    let parent = snap(&mut c, "parent", &src.volume_id, &[]).await;
    // then 24 MiB of new incompressible data at the slowest level: seconds
    std::fs::write(root.join("big/random"), noise(24 << 20, 5)).unwrap();
    std::fs::remove_file(root.join("big/keep")).unwrap();
    std::fs::write(root.join("big/new"), b"new").unwrap();
    let req = csi::CreateSnapshotRequest {
        source_volume_id: src.volume_id.clone(),
        name: "child".into(),
        parameters: params(&[("compressionLevel", "19")]),
        ..Default::default()
    };
    let first = c
        .create_snapshot(req.clone())
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(
        !first.ready_to_use,
        "expected a long snapshot; make the data bigger"
    );
    d.kill();
    let dir = root.join(".nfs-csi/snapshots/child");
    assert!(!dir.join("manifest.json").exists());
    d.restart().await;
    let mut c = d.controller().await;
    // the sidecar calls again: the job resumes against the same parent
    let again = c
        .create_snapshot(req.clone())
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(
        !again.ready_to_use,
        "expected a long snapshot; make the data bigger"
    );
    // meanwhile the parent is deleted: gone for the RPCs, kept on disk
    delete(&mut c, &parent.snapshot_id).await;
    let err = c
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: parent.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let start = Instant::now();
    let done = loop {
        let s = c
            .create_snapshot(req.clone())
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(s.creation_time, first.creation_time, "the same snapshot");
        if s.ready_to_use {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(240), "never finished");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        manifest(&root, "child")["parent"],
        "parent",
        "still incremental"
    );
    volume(&mut c, "back", &root, Some(&done.snapshot_id))
        .await
        .unwrap();
    same(
        &root.join("big"),
        &root.join("back"),
        "restore of the child",
    );
    assert!(!root.join("back/keep").exists());
    // the last dependant goes: the parent's archive is freed too
    delete(&mut c, &done.snapshot_id).await;
    let left: Vec<_> = std::fs::read_dir(root.join(".nfs-csi/snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A tar stream of raw entries (the tar crate's builder refuses hostile
/// names).
fn raw(entries: &[(&[u8], u8, &[u8], u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, size) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(tar::EntryType::new(*kind));
        h.set_mode(0o755);
        h.set_size(*size);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

fn plant(root: &Path, key: &str, tar: &[u8], size: u64) -> String {
    let dir = root.join(".nfs-csi/snapshots").join(key);
    std::fs::create_dir_all(&dir).unwrap();
    let z = zstd::encode_all(tar, 3).unwrap();
    std::fs::write(dir.join("archive.tar.zst"), &z).unwrap();
    let manifest = serde_json::json!({
        "name": key, "source_volume_id": "v1#mounted#/x#y", "created_unix": 1, "created_nanos": 0,
        "size_bytes": size, "file_count": 2, "archive_bytes": z.len(),
        "sha256": hex::encode(Sha256::digest(&z)), "compression": "zstd", "level": 3,
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    format!("s1#mounted#{}#{key}", root.display())
}

#[tokio::test]
async fn hostile_directory_listings_are_refused_and_touch_nothing_outside() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path());
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"original").unwrap();
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let huge = 64u64 << 20;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("huge", raw(&[(b"./", b'D', b"", huge)])),
        ("slash", raw(&[(b"./", b'D', b"Ya/b\0\0", 6)])),
        ("dotdot", raw(&[(b"./", b'D', b"D..\0\0", 5)])),
        (
            "escape",
            raw(&[(b"./", b'D', b"Y../outside/victim\0\0", 20)]),
        ),
        ("unterminated", raw(&[(b"./", b'D', b"Yname", 5)])),
        ("rename", raw(&[(b"./", b'D', b"Rold\0Tnew\0\0", 11)])),
        ("outside-dir", raw(&[(b"../outside/", b'D', b"\0", 1)])),
    ];
    for (key, tar) in cases {
        // a manifest that allows plenty: the listing's own bounds must hold
        let id = plant(&root, key, &tar, 1 << 30);
        let err = volume(&mut c, &format!("vol-{key}"), &root, Some(&id))
            .await
            .unwrap_err();
        // refused (a bound, a bad name) or corrupt (malformed)
        assert!(
            matches!(err.code(), Code::FailedPrecondition | Code::DataLoss),
            "{key}: {err}"
        );
        assert!(err.message().len() < 600, "{key}: a short message");
        assert!(
            !root.join(format!("vol-{key}")).exists(),
            "{key}: volume left behind"
        );
        assert_eq!(
            std::fs::read(outside.join("victim")).unwrap(),
            b"original",
            "{key}"
        );
    }
    // a listing is a purge of the destination only: a good one that names
    // nothing empties the new volume's root, and nothing else
    let id = plant(
        &root,
        "empty",
        &raw(&[(b"./", b'D', b"\0", 1), (b"kept", b'0', b"k", 1)]),
        100,
    );
    volume(&mut c, "vol-empty", &root, Some(&id)).await.unwrap();
    assert_eq!(std::fs::read(root.join("vol-empty/kept")).unwrap(), b"k");
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"original");
    let _ = File::open(outside.join("victim")).unwrap();
}
