//! Snapshots and clones through the real binary's socket, on `mountedShare`
//! exports in temporary directories.

mod common;

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nfs_csi::grpc::csi::v1 as csi;
use sha2::{Digest, Sha256};
use tonic::Code;

fn share(t: &Path) -> PathBuf {
    let p = t.join("share");
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn ms(root: &Path) -> std::collections::HashMap<String, String> {
    params(&[("mountedShare", &root.display().to_string())])
}

/// A tree with every kind of entry a snapshot must keep.
fn fill(root: &Path) -> u64 {
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    let text = "compressible text ".repeat(50_000);
    std::fs::write(root.join("dir/sub/text"), &text).unwrap();
    std::fs::write(root.join("small"), b"small").unwrap();
    std::fs::set_permissions(root.join("small"), std::fs::Permissions::from_mode(0o604)).unwrap();
    std::fs::hard_link(root.join("small"), root.join("dir/hard")).unwrap();
    symlink("/etc/passwd", root.join("abs-link")).unwrap();
    symlink("sub/text", root.join("dir/rel-link")).unwrap();
    let f = File::create(root.join("sparse")).unwrap();
    f.set_len(32 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"tail", (32 << 20) - 4).unwrap();
    if is_root() {
        nix::unistd::chown(&root.join("small"), Some(1234.into()), Some(4321.into())).unwrap();
    }
    text.len() as u64 + 5 + (32 << 20)
}

fn same_tree(a: &Path, b: &Path) {
    let mut n = 0;
    let mut stack = vec![a.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(a).unwrap();
            let q = b.join(rel);
            let (ma, mb) = (
                std::fs::symlink_metadata(&p).unwrap(),
                std::fs::symlink_metadata(&q).unwrap_or_else(|e| panic!("{}: {e}", rel.display())),
            );
            let r = rel.display();
            assert_eq!(ma.file_type(), mb.file_type(), "{r}");
            assert_eq!(ma.mode(), mb.mode(), "{r}");
            assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "{r}");
            if ma.is_dir() {
                stack.push(p.clone());
            } else {
                assert_eq!(ma.mtime(), mb.mtime(), "{r}");
            }
            if ma.is_file() {
                assert_eq!(
                    std::fs::read(&p).unwrap(),
                    std::fs::read(&q).unwrap(),
                    "{r}"
                );
                assert!(mb.blocks() <= ma.blocks() + 64, "{r}: holes filled");
            }
            if ma.file_type().is_symlink() {
                assert_eq!(
                    std::fs::read_link(&p).unwrap(),
                    std::fs::read_link(&q).unwrap()
                );
            }
            n += 1;
        }
    }
    assert!(n >= 8, "{n}");
    assert_eq!(
        std::fs::metadata(b.join("small")).unwrap().ino(),
        std::fs::metadata(b.join("dir/hard")).unwrap().ino(),
        "hard link kept"
    );
}

async fn create(
    c: &mut ControllerClient<tonic::transport::Channel>,
    name: &str,
    root: &Path,
    bytes: i64,
    source: Option<csi::volume_content_source::Type>,
) -> Result<csi::Volume, tonic::Status> {
    let mut req = create_req(name, bytes, ms(root));
    req.volume_content_source = source.map(|t| csi::VolumeContentSource { r#type: Some(t) });
    c.create_volume(req)
        .await
        .map(|r| r.into_inner().volume.unwrap())
}

fn snap_req(name: &str, source: &str) -> csi::CreateSnapshotRequest {
    csi::CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        ..Default::default()
    }
}

fn from_snapshot(id: &str) -> Option<csi::volume_content_source::Type> {
    Some(csi::volume_content_source::Type::Snapshot(
        csi::volume_content_source::SnapshotSource {
            snapshot_id: id.into(),
        },
    ))
}

#[tokio::test]
async fn snapshot_restore_round_trip_idempotency_and_listing() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path());
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let src = create(&mut c, "src", &root, 1 << 30, None).await.unwrap();
    let data = fill(&root.join("src"));
    let s1 = c
        .create_snapshot(snap_req("snap-1", &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(s1.ready_to_use, "a small snapshot is ready at once");
    assert_eq!(s1.size_bytes as u64, data, "size is the restore size");
    assert_eq!(s1.source_volume_id, src.volume_id);
    // same name and source: the same snapshot
    let again = c
        .create_snapshot(snap_req("snap-1", &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(again, s1);
    // same name, other source
    let other = create(&mut c, "other", &root, 1, None).await.unwrap();
    let err = c
        .create_snapshot(snap_req("snap-1", &other.volume_id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    // unknown source
    let err = c
        .create_snapshot(snap_req(
            "snap-x",
            &format!("v1#mounted#{}#nope", root.display()),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // the archive and manifest are on the share; the manifest's checksum is the archive's
    let dir = root.join(".nfs-csi/snapshots/snap-1");
    let archive = std::fs::read(dir.join("archive.tar.zst")).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["sha256"], hex::encode(Sha256::digest(&archive)));
    assert!(
        (archive.len() as u64) < data / 10,
        "sparse and text compress: {}",
        archive.len()
    );

    // restore: too small is OUT_OF_RANGE, then a faithful copy
    let err = create(
        &mut c,
        "restored",
        &root,
        1024,
        from_snapshot(&s1.snapshot_id),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    let restored = create(&mut c, "restored", &root, 0, from_snapshot(&s1.snapshot_id))
        .await
        .unwrap();
    assert_eq!(restored.capacity_bytes as u64, data);
    assert!(restored.content_source.is_some());
    same_tree(&root.join("src"), &root.join("restored"));
    // idempotent restore: no second extraction over the data
    std::fs::write(root.join("restored/new-file"), b"written after restore").unwrap();
    let again = create(&mut c, "restored", &root, 0, from_snapshot(&s1.snapshot_id))
        .await
        .unwrap();
    assert_eq!(again.volume_id, restored.volume_id);
    assert!(root.join("restored/new-file").exists());
    let err = create(
        &mut c,
        "nosnap",
        &root,
        0,
        from_snapshot("s1#mounted#/nowhere#x"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err.code(), Code::NotFound | Code::FailedPrecondition),
        "{err}"
    );

    // restoring onto a directory that already holds data is refused
    std::fs::create_dir_all(root.join("occupied")).unwrap();
    std::fs::write(root.join("occupied/keep"), b"mine").unwrap();
    let mut req = create_req("onto", 0, ms(&root));
    req.parameters.insert("subDir".into(), "occupied".into());
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: from_snapshot(&s1.snapshot_id),
    });
    let err = c.create_volume(req).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert_eq!(std::fs::read(root.join("occupied/keep")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(root.join("occupied")).unwrap().count(), 1);

    // GNU tar restores the archive by hand
    let by_hand = t.path().join("by-hand");
    std::fs::create_dir_all(&by_hand).unwrap();
    let st = std::process::Command::new("tar")
        .args(["--zstd", "-xpf"])
        .arg(dir.join("archive.tar.zst"))
        .arg("-C")
        .arg(&by_hand)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        std::fs::read(by_hand.join("dir/sub/text")).unwrap(),
        std::fs::read(root.join("src/dir/sub/text")).unwrap()
    );

    // listing: by id, by source, all with paging
    let mut later = Vec::new();
    for i in 2..=5 {
        let r = c
            .create_snapshot(snap_req(&format!("snap-{i}"), &src.volume_id))
            .await
            .unwrap();
        later.push(r.into_inner().snapshot.unwrap().snapshot_id);
    }
    c.create_snapshot(snap_req("snap-o", &other.volume_id))
        .await
        .unwrap();
    let by_id = c
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: s1.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.entries.len(), 1);
    assert_eq!(by_id.entries[0].snapshot.as_ref().unwrap(), &s1);
    let by_source = c
        .list_snapshots(csi::ListSnapshotsRequest {
            source_volume_id: other.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_source.entries.len(), 1);
    let mut seen = HashSet::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = c
            .list_snapshots(csi::ListSnapshotsRequest {
                max_entries: 2,
                starting_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.entries.len() <= 2);
        for e in r.entries {
            assert!(seen.insert(e.snapshot.unwrap().snapshot_id), "duplicate");
        }
        pages += 1;
        if r.next_token.is_empty() {
            break;
        }
        token = r.next_token;
    }
    assert_eq!(seen.len(), 6);
    assert_eq!(pages, 3);
    let err = c
        .list_snapshots(csi::ListSnapshotsRequest {
            starting_token: "bogus".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    // delete: idempotent; snap-1 is the parent of snap-2 (incremental),
    // so it is no longer found, but its archive stays until the later
    // snapshots of its chain are deleted too; then the directory goes
    for _ in 0..2 {
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: s1.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let err = c
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: s1.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(dir.join("deleted").exists() && dir.join("archive.tar.zst").exists());
    for id in later {
        c.delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: id,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    assert!(!dir.exists());
    c.delete_snapshot(csi::DeleteSnapshotRequest {
        snapshot_id: "garbage".into(),
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn clone_copies_the_volume_faithfully() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path());
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let src = create(&mut c, "src", &root, 1 << 30, None).await.unwrap();
    fill(&root.join("src"));
    let source = Some(csi::volume_content_source::Type::Volume(
        csi::volume_content_source::VolumeSource {
            volume_id: src.volume_id.clone(),
        },
    ));
    let err = create(&mut c, "clone", &root, 1 << 20, source.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    let clone = create(&mut c, "clone", &root, 0, source.clone())
        .await
        .unwrap();
    assert_eq!(clone.capacity_bytes, 1 << 30);
    same_tree(&root.join("src"), &root.join("clone"));
    // the clone is independent
    std::fs::write(root.join("clone/small"), b"changed").unwrap();
    assert_eq!(std::fs::read(root.join("src/small")).unwrap(), b"small");
    // ...while the clone's own hard link follows its twin
    assert_eq!(
        std::fs::read(root.join("clone/dir/hard")).unwrap(),
        b"changed"
    );
    // a clone inside its source is refused
    let mut req = create_req("nested", 0, ms(&root));
    req.parameters.insert("subDir".into(), "src/nested".into());
    req.volume_content_source = Some(csi::VolumeContentSource { r#type: source });
    let err = c.create_volume(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(!root.join("src/nested").exists());
}

#[tokio::test]
async fn killed_mid_snapshot_the_result_is_complete_or_absent() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path());
    let mut d = Driver::start(
        t.path(),
        &["--mode", "controller", "--snapshot-threads", "1"],
    )
    .await;
    let mut c = d.controller().await;
    let src = create(&mut c, "big", &root, 0, None).await.unwrap();
    // incompressible data at the slowest level: seconds of work
    let mut f = File::create(root.join("big/random")).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..24 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    drop(f);
    let mut req = snap_req("slow", &src.volume_id);
    req.parameters = params(&[("compressionLevel", "19")]);
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
    let listed = c
        .list_snapshots(csi::ListSnapshotsRequest {
            snapshot_id: first.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.entries.is_empty(),
        "a snapshot being written is not listed"
    );
    // GetSnapshot gives it, not ready, as CreateSnapshot did.
    let got = c
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: first.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(!got.ready_to_use);
    assert_eq!(got, first);
    d.kill();
    let dir = root.join(".nfs-csi/snapshots/slow");
    assert!(!dir.join("manifest.json").exists(), "not reported ready");
    assert!(
        !dir.join("archive.tar.zst").exists(),
        "no complete-looking archive"
    );
    d.restart().await;
    let mut c = d.controller().await;
    // the sidecar calls again until ready
    let start = Instant::now();
    let done = loop {
        let s = c
            .create_snapshot(req.clone())
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(s.snapshot_id, first.snapshot_id);
        assert_eq!(
            s.creation_time, first.creation_time,
            "creation time is stable"
        );
        if s.ready_to_use {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "snapshot never finished"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(done.size_bytes, 24 << 20);
    let got = c
        .get_snapshot(csi::GetSnapshotRequest {
            snapshot_id: done.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot;
    assert_eq!(got.as_ref(), Some(&done), "ready once complete");
    let restored = create(&mut c, "back", &root, 0, from_snapshot(&done.snapshot_id))
        .await
        .unwrap();
    let _ = restored;
    assert_eq!(
        std::fs::read(root.join("back/random")).unwrap(),
        std::fs::read(root.join("big/random")).unwrap()
    );
}

/// A tar stream built entry by entry with raw names (the tar crate's
/// builder refuses the hostile ones, which is the point of these tests).
struct RawTar(Vec<u8>);

impl RawTar {
    fn entry(&mut self, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        if matches!(kind, tar::EntryType::Char) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        std::mem::take(&mut self.0)
    }
}

/// Plants a snapshot made of `tar` (zstd-compressed, with a matching
/// manifest) on the share and returns its id.
fn plant(root: &Path, key: &str, tar: &[u8]) -> String {
    let dir = root.join(".nfs-csi/snapshots").join(key);
    std::fs::create_dir_all(&dir).unwrap();
    let z = zstd::encode_all(tar, 3).unwrap();
    std::fs::write(dir.join("archive.tar.zst"), &z).unwrap();
    let manifest = serde_json::json!({
        "name": key, "source_volume_id": "v1#mounted#/x#y", "created_unix": 1, "created_nanos": 0,
        "size_bytes": 100, "file_count": 2, "archive_bytes": z.len(),
        "sha256": hex::encode(Sha256::digest(&z)), "compression": "zstd", "level": 3,
    });
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    format!("s1#mounted#{}#{key}", root.display())
}

#[tokio::test]
async fn hostile_archives_restore_nothing_outside_the_volume() {
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path());
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"original").unwrap();
    let before = snapshot_tree(t.path());
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let out = outside.display().to_string();
    use tar::EntryType as E;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            RawTar(vec![])
                .entry(b"../outside/pwned", E::Regular, b"", b"x")
                .finish(),
        ),
        (
            "deep-dotdot",
            RawTar(vec![])
                .entry(b"a/../../../outside/pwned", E::Regular, b"", b"x")
                .finish(),
        ),
        (
            "absolute",
            RawTar(vec![])
                .entry(format!("{out}/pwned").as_bytes(), E::Regular, b"", b"x")
                .finish(),
        ),
        (
            "through-symlink",
            RawTar(vec![])
                .entry(b"link", E::Symlink, out.as_bytes(), b"")
                .entry(b"link/pwned", E::Regular, b"", b"x")
                .finish(),
        ),
        (
            "symlink-then-overwrite",
            RawTar(vec![])
                .entry(
                    b"victim",
                    E::Symlink,
                    format!("{out}/victim").as_bytes(),
                    b"",
                )
                .entry(b"sub/../victim", E::Regular, b"", b"overwritten")
                .finish(),
        ),
        (
            "hardlink-out",
            RawTar(vec![])
                .entry(b"h", E::Link, b"../outside/victim", b"")
                .finish(),
        ),
        (
            "hardlink-abs",
            RawTar(vec![])
                .entry(b"h", E::Link, format!("{out}/victim").as_bytes(), b"")
                .finish(),
        ),
        (
            "device",
            RawTar(vec![]).entry(b"null", E::Char, b"", b"").finish(),
        ),
    ];
    for (key, tar) in cases {
        let id = plant(&root, key, &tar);
        let err = create(&mut c, &format!("vol-{key}"), &root, 0, from_snapshot(&id))
            .await
            .unwrap_err();
        // the restore's own code, not a generic INTERNAL
        assert_eq!(err.code(), Code::FailedPrecondition, "{key}: {err}");
        assert!(!err.message().is_empty());
        // the half-made volume is gone, nothing outside changed
        assert!(
            !root.join(format!("vol-{key}")).exists(),
            "{key}: volume left behind"
        );
    }
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"original");
    let after: Vec<String> = snapshot_tree(t.path())
        .into_iter()
        .filter(|p| {
            !p.contains("share/.nfs-csi")
                && !p.contains("work")
                && !p.ends_with("driver.log")
                && !p.ends_with("csi.sock")
        })
        .collect();
    let before: Vec<String> = before
        .into_iter()
        .filter(|p| !p.contains("share/.nfs-csi"))
        .collect();
    let extra: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
    assert!(extra.is_empty(), "written outside: {extra:?}");
    // a tampered archive: checksum mismatch, DATA_LOSS, found before
    // anything is written (the device node, refused when extracted, would
    // answer first otherwise)
    let good = RawTar(vec![])
        .entry(b"f", E::Regular, b"", b"data")
        .finish();
    let id = plant(&root, "tampered", &good);
    let arch = root.join(".nfs-csi/snapshots/tampered/archive.tar.zst");
    let mut other = zstd::encode_all(
        &RawTar(vec![])
            .entry(b"null", E::Char, b"", b"")
            .entry(b"f", E::Regular, b"", b"evil")
            .finish()[..],
        3,
    )
    .unwrap();
    std::fs::write(&arch, &mut other).unwrap();
    let mpath = root.join(".nfs-csi/snapshots/tampered/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["archive_bytes"] = other.len().into();
    std::fs::write(&mpath, m.to_string()).unwrap();
    let err = create(&mut c, "vol-tampered", &root, 0, from_snapshot(&id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err}");
    assert!(err.message().contains("SHA-256"), "{}", err.message());
    assert!(!root.join("vol-tampered").exists());
    // one byte changed, one byte more than the manifest says: DATA_LOSS too
    let id = plant(&root, "flipped", &good);
    let arch = root.join(".nfs-csi/snapshots/flipped/archive.tar.zst");
    let mut bytes = std::fs::read(&arch).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&arch, &bytes).unwrap();
    let err = create(&mut c, "vol-flipped", &root, 0, from_snapshot(&id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err}");
    assert!(!root.join("vol-flipped").exists());
    let id = plant(&root, "longer", &good);
    let arch = root.join(".nfs-csi/snapshots/longer/archive.tar.zst");
    let mut bytes = std::fs::read(&arch).unwrap();
    bytes.push(0);
    std::fs::write(&arch, &bytes).unwrap();
    let err = create(&mut c, "vol-longer", &root, 0, from_snapshot(&id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err}");
    assert!(!root.join("vol-longer").exists());
}

/// A writer that hashes and counts what passes through.
struct HashW<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashW<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams a hand-made tar through zstd into a snapshot's archive on the
/// share (never holding it in memory), then writes a manifest that matches
/// it, as someone with write access to the export could.
struct Planter {
    root: PathBuf,
    key: String,
    enc: zstd::stream::write::Encoder<'static, HashW<File>>,
}

impl Planter {
    fn new(root: &Path, key: &str) -> Planter {
        let dir = root.join(".nfs-csi/snapshots").join(key);
        std::fs::create_dir_all(&dir).unwrap();
        let f = File::create(dir.join("archive.tar.zst")).unwrap();
        let hw = HashW {
            inner: f,
            hash: Sha256::new(),
            bytes: 0,
        };
        Planter {
            root: root.to_path_buf(),
            key: key.to_string(),
            enc: zstd::stream::write::Encoder::new(hw, 1).unwrap(),
        }
    }

    fn raw(&mut self, h: &mut tar::Header) -> &mut Self {
        h.set_cksum();
        self.enc.write_all(h.as_bytes()).unwrap();
        self
    }

    /// A header whose name fits in the header itself.
    fn header(&mut self, name: &[u8], kind: tar::EntryType, size: u64) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_mode(0o755);
        h.set_size(size);
        self.raw(&mut h)
    }

    /// `n` bytes of `byte`, then the padding to a whole block.
    fn fill(&mut self, byte: u8, n: u64) -> &mut Self {
        let chunk = vec![byte; 1 << 20];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            self.enc.write_all(&chunk[..k]).unwrap();
            left -= k as u64;
        }
        let pad = (512 - n % 512) % 512;
        self.enc.write_all(&vec![0u8; pad as usize]).unwrap();
        self
    }

    /// A GNU long name for the next entry.
    fn long_name(&mut self, name: &[u8]) -> &mut Self {
        self.header(
            b"././@LongLink",
            tar::EntryType::GNULongName,
            name.len() as u64 + 1,
        );
        let mut data = name.to_vec();
        data.push(0);
        data.resize(data.len().div_ceil(512) * 512, 0);
        self.enc.write_all(&data).unwrap();
        self
    }

    /// Ends the archive and writes its manifest; returns the snapshot id.
    fn finish(self, size_bytes: u64, file_count: u64) -> String {
        let mut enc = self.enc;
        enc.write_all(&[0u8; 1024]).unwrap();
        let hw = enc.finish().unwrap();
        let manifest = serde_json::json!({
            "name": self.key, "source_volume_id": "v1#mounted#/x#y", "created_unix": 1,
            "created_nanos": 0, "size_bytes": size_bytes, "file_count": file_count,
            "archive_bytes": hw.bytes, "sha256": hex::encode(hw.hash.finalize()),
            "compression": "zstd", "level": 1,
        });
        let dir = self.root.join(".nfs-csi/snapshots").join(&self.key);
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
        format!("s1#mounted#{}#{}", self.root.display(), self.key)
    }
}

/// The peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value");
    kb * 1024
}

#[tokio::test]
async fn hostile_headers_and_bookkeeping_keep_the_driver_small() {
    use tar::EntryType as E;
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path());
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    let big = 100u64 << 20;
    let mut cases = Vec::new();
    let start = Instant::now();
    // one 100 MiB PAX header (before: all of it in memory)
    let mut p = Planter::new(&root, "pax");
    p.header(b"PaxHeaders/f", E::XHeader, big).fill(b'a', big);
    p.header(b"f", E::Regular, 1).fill(b'x', 1);
    cases.push(("pax", p.finish(100, 2)));
    // a 100 MiB GNU long name
    let mut p = Planter::new(&root, "longname");
    p.header(b"././@LongLink", E::GNULongName, big)
        .fill(b'n', big);
    p.header(b"f", E::Regular, 1).fill(b'x', 1);
    cases.push(("longname", p.finish(100, 2)));
    // a 100 MiB GNU long link target
    let mut p = Planter::new(&root, "longlink");
    p.header(b"././@LongLink", E::GNULongLink, big)
        .fill(b'l', big);
    p.header(b"f", E::Symlink, 0);
    cases.push(("longlink", p.finish(100, 2)));
    // a path longer than PATH_MAX
    let mut p = Planter::new(&root, "longpath");
    p.long_name(&vec![b'p'; 5000]).header(b"f", E::Regular, 0);
    cases.push(("longpath", p.finish(100, 2)));
    // 20,000 directories with 3.8 KB paths (each remembered until the end,
    // before: 77 MB), then an entry that fails the restore
    let mut p = Planter::new(&root, "dirs");
    let base = vec!["d".repeat(255); 15].join("/");
    for i in 0..20_000 {
        p.long_name(format!("{base}/{i}").as_bytes())
            .header(b"x", E::Directory, 0);
    }
    p.header(b"../escape", E::Regular, 0);
    cases.push(("dirs", p.finish(0, 20_100)));
    eprintln!("archives written in {:?}", start.elapsed());
    for (key, id) in cases {
        let start = Instant::now();
        let vol = format!("vol-{key}");
        let err = create(&mut c, &vol, &root, 0, from_snapshot(&id))
            .await
            .unwrap_err();
        // The archive matches its manifest but holds what the driver will
        // not restore: the snapshot cannot be used as it is.
        assert_eq!(err.code(), Code::FailedPrecondition, "{key}: {err}");
        assert!(
            err.message().len() < 1024,
            "{key}: a {} byte message",
            err.message().len()
        );
        assert!(!root.join(&vol).exists(), "{key}: volume left behind");
        let rss = peak_rss(d.pid());
        eprintln!(
            "{key}: {} in {:?}; driver peak RSS {} KiB",
            err.message(),
            start.elapsed(),
            rss >> 10
        );
        assert!(rss < 64 << 20, "{key}: driver peak RSS {} MiB", rss >> 20);
    }
    let log = d.log_text();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 8192, "a {longest} byte log line");
}

#[tokio::test]
async fn restores_stop_out_of_range_past_the_manifest_or_the_capacity() {
    use tar::EntryType as E;
    let t = tempfile::tempdir().unwrap();
    let root = share(t.path());
    let d = Driver::start(t.path(), &["--mode", "controller"]).await;
    let mut c = d.controller().await;
    // a 4 GiB sparse file (one block of data) in a few KB of archive, the
    // manifest saying 10 bytes
    let mut p = Planter::new(&root, "holes");
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..3].copy_from_slice(b"big");
    h.set_entry_type(E::GNUSparse);
    h.set_mode(0o644);
    h.set_size(512);
    {
        let g = h.as_gnu_mut().unwrap();
        g.set_real_size(4 << 30);
        g.sparse[0].set_offset(0);
        g.sparse[0].set_length(512);
        g.sparse[1].set_offset(4 << 30);
        g.sparse[1].set_length(0);
    }
    p.raw(&mut h).fill(b'x', 512);
    let holes = p.finish(10, 1);
    // 64 MiB of zeros, the manifest saying 1 byte (so the volume's
    // capacity is 1 byte too)
    let mut p = Planter::new(&root, "zeros");
    p.header(b"zeros", E::Regular, 64 << 20).fill(0, 64 << 20);
    let zeros = p.finish(1, 1);
    // an honest manifest, a volume limited below it
    let mut p = Planter::new(&root, "honest");
    p.header(b"data", E::Regular, 4 << 20).fill(7, 4 << 20);
    let honest = p.finish(4 << 20, 1);
    for (key, id, limit) in [
        ("holes", &holes, 0),
        ("zeros", &zeros, 0),
        ("honest", &honest, 1 << 20),
    ] {
        let vol = format!("vol-{key}");
        let mut req = create_req(&vol, 0, ms(&root));
        req.capacity_range = Some(csi::CapacityRange {
            required_bytes: 0,
            limit_bytes: limit,
        });
        req.volume_content_source = Some(csi::VolumeContentSource {
            r#type: from_snapshot(id),
        });
        let err = c.create_volume(req).await.unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange, "{key}: {err}");
        assert!(!root.join(&vol).exists(), "{key}: volume left behind");
    }
    // within bounds, the honest one restores
    let v = create(&mut c, "vol-ok", &root, 0, from_snapshot(&honest))
        .await
        .unwrap();
    assert_eq!(v.capacity_bytes, 4 << 20);
    assert_eq!(
        std::fs::read(root.join("vol-ok/data")).unwrap(),
        vec![7u8; 4 << 20]
    );
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let cp = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer valid for its length.
    let n = unsafe {
        nix::libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

#[tokio::test]
async fn system_xattrs_are_restored_only_with_the_flag() {
    if !is_root() {
        eprintln!("SKIPPED system_xattrs_are_restored_only_with_the_flag: needs root");
        return;
    }
    let rec = |k: &str, v: &str| {
        let body = k.len() + v.len() + 3;
        let len = body + (body + 2).to_string().len();
        format!("{len} {k}={v}\n")
    };
    let records = rec("SCHILY.xattr.trusted.nfs-csi", "t") + &rec("SCHILY.xattr.user.nfs-csi", "u");
    let tar = RawTar(vec![])
        .entry(
            b"PaxHeaders/f",
            tar::EntryType::XHeader,
            b"",
            records.as_bytes(),
        )
        .entry(b"f", tar::EntryType::Regular, b"", b"data")
        .finish();
    for flag in [false, true] {
        let t = tempfile::tempdir().unwrap();
        let root = share(t.path());
        let probe = root.join("probe");
        std::fs::write(&probe, b"").unwrap();
        let cp = std::ffi::CString::new(probe.to_str().unwrap()).unwrap();
        // SAFETY: valid C strings and value.
        let ok = unsafe {
            nix::libc::setxattr(
                cp.as_ptr(),
                c"trusted.x".as_ptr(),
                c"1".as_ptr().cast(),
                1,
                0,
            )
        };
        if ok != 0 {
            eprintln!("SKIPPED system_xattrs_are_restored_only_with_the_flag: no trusted xattrs");
            return;
        }
        let mut args = vec!["--mode", "controller"];
        if flag {
            args.push("--restore-system-xattrs");
        }
        let d = Driver::start(t.path(), &args).await;
        let mut c = d.controller().await;
        let id = plant(&root, "x", &tar);
        create(&mut c, "v", &root, 0, from_snapshot(&id))
            .await
            .unwrap();
        let f = root.join("v/f");
        assert_eq!(std::fs::read(&f).unwrap(), b"data");
        assert_eq!(
            xattr(&f, "trusted.nfs-csi").is_some(),
            flag,
            "trusted xattr with the flag {flag}"
        );
        // user xattrs, where the filesystem has them, whatever the flag
        // SAFETY: valid C strings and value.
        let user = unsafe {
            nix::libc::setxattr(cp.as_ptr(), c"user.x".as_ptr(), c"1".as_ptr().cast(), 1, 0)
        } == 0;
        if user {
            assert_eq!(xattr(&f, "user.nfs-csi"), Some(b"u".to_vec()));
        }
    }
}
