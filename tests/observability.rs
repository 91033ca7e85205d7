//! Metrics scraped from the real binary move as calls are made; no secret
//! ever reaches a log line, whatever the log level and format.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use common::*;
use nfs_csi::grpc::csi::v1 as csi;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the first sample line starting with `prefix`.
fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_as_calls_are_made() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = Driver::start(
        t.path(),
        &["--mode", "controller", "--metrics-address", &addr],
    )
    .await;
    let before = scrape(port);
    let ok = "nfs_csi_csi_calls_total{method=\"CreateVolume\",code=\"Ok\"}";
    let bad = "nfs_csi_csi_calls_total{method=\"CreateVolume\",code=\"InvalidArgument\"}";
    assert_eq!(value(&before, ok), 0.0);
    let mut c = d.controller().await;
    let p = params(&[("mountedShare", &share.display().to_string())]);
    let v = c
        .create_volume(create_req("m-1", 1, p.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    c.create_volume(create_req("m-2", 1, p.clone()))
        .await
        .unwrap();
    let mut wrong = create_req("m-3", 1, p.clone());
    wrong.parameters.insert("bogus".into(), "1".into());
    c.create_volume(wrong).await.unwrap_err();
    std::fs::write(share.join("m-1/data"), vec![7u8; 100_000]).unwrap();
    let snap = c
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: v.volume_id.clone(),
            name: "ms".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    let mut restore = create_req("m-r", 0, p.clone());
    restore.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id,
            },
        )),
    });
    c.create_volume(restore).await.unwrap();
    let after = scrape(port);
    assert_eq!(value(&after, ok), 3.0, "{after}");
    assert_eq!(value(&after, bad), 1.0, "{after}");
    assert_eq!(
        value(
            &after,
            "nfs_csi_csi_call_duration_seconds_count{method=\"CreateVolume\"}"
        ),
        4.0
    );
    assert_eq!(
        value(
            &after,
            "nfs_csi_csi_calls_in_flight{method=\"CreateVolume\"}"
        ),
        0.0
    );
    assert_eq!(value(&after, "nfs_csi_errors_total{kind=\"request\"}"), 1.0);
    let export = format!(
        "nfs_csi_export_healthy{{export=\"mounted:{}\"}}",
        share.display()
    );
    assert_eq!(value(&after, &export), 1.0, "{after}");
    assert_eq!(
        value(&after, "nfs_csi_snapshot_data_bytes_total"),
        100_000.0
    );
    assert!(value(&after, "nfs_csi_snapshot_archive_bytes_total") > 0.0);
    assert!(value(&after, "nfs_csi_snapshot_last_throughput_bytes_per_second") > 0.0);
    assert_eq!(value(&after, "nfs_csi_restores_total{result=\"ok\"}"), 1.0);
    // the share disappears: unhealthy on the next call
    std::fs::rename(&share, t.path().join("gone")).unwrap();
    c.create_volume(create_req("m-4", 1, p)).await.unwrap_err();
    assert_eq!(value(&scrape(port), &export), 0.0);
}

fn secret_requests(share: &Path, kubelet: &Path) -> (Vec<csi::CreateVolumeRequest>, String) {
    let mut v = create_req(
        "sec-1",
        1,
        params(&[("mountedShare", &share.display().to_string())]),
    );
    v.secrets = [("password".to_string(), "S3CRET-CREATE".to_string())].into();
    let mut bad = v.clone();
    bad.parameters.insert("oops".into(), "1".into());
    bad.secrets = [("token".to_string(), "S3CRET-BAD".to_string())].into();
    (vec![v, bad], kubelet.display().to_string())
}

async fn exercise(d: &Driver, share: &Path, kubelet: &Path) {
    let (creates, k) = secret_requests(share, kubelet);
    let mut c = d.controller().await;
    let mut id = String::new();
    for req in creates {
        if let Ok(r) = c.create_volume(req).await {
            id = r.into_inner().volume.unwrap().volume_id;
        }
    }
    let _ = c
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: id.clone(),
            name: "sec-snap".into(),
            secrets: [("k".to_string(), "S3CRET-SNAP".to_string())].into(),
            ..Default::default()
        })
        .await;
    let mut n = d.node().await;
    // These may fail (no root, no mount): the secrets must not show either way.
    let staging = format!("{k}/plugins/x/globalmount");
    let _ = n
        .node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.clone(),
            volume_capability: Some(rwx()),
            secrets: [("k".to_string(), "S3CRET-STAGE".to_string())].into(),
            ..Default::default()
        })
        .await;
    let _ = n
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.clone(),
            target_path: format!("{k}/pods/p/mount"),
            volume_capability: Some(rwx()),
            secrets: [("k".to_string(), "S3CRET-PUBLISH".to_string())].into(),
            ..Default::default()
        })
        .await;
    let _ = n
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: format!("{k}/pods/p/mount"),
        })
        .await;
    let _ = n
        .node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging,
        })
        .await;
    c.delete_volume(csi::DeleteVolumeRequest {
        volume_id: id,
        secrets: [("k".to_string(), "S3CRET-DELETE".to_string())].into(),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    // This test process only: the driver logs everything, at trace level.
    // SAFETY: nextest runs each test in its own process; nothing else reads
    // the environment concurrently here.
    unsafe { std::env::set_var("NFS_CSI_TEST_LOG", "trace") };
    for format in ["text", "json"] {
        let t = tempfile::tempdir().unwrap();
        let _guard = MountGuard(t.path().to_path_buf());
        let share = t.path().join("share");
        let kubelet = t.path().join("kubelet");
        std::fs::create_dir_all(&share).unwrap();
        std::fs::create_dir_all(&kubelet).unwrap();
        let mut d = Driver::start(t.path(), &["--mode", "all", "--log-format", format]).await;
        exercise(&d, &share, &kubelet).await;
        d.terminate();
        let log = d.log_text();
        assert!(
            log.len() > 1000,
            "the log is too short to prove anything:\n{log}"
        );
        assert!(
            log.contains("CreateVolume") || log.contains("create_volume"),
            "{log}"
        );
        for secret in ["S3CRET", "password"] {
            assert!(
                !log.contains(secret),
                "{format} log leaks {secret:?}:\n{log}"
            );
        }
        if format == "json" {
            for line in log.lines().filter(|l| !l.trim().is_empty()) {
                serde_json::from_str::<serde_json::Value>(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
        }
    }
}

#[tokio::test]
async fn in_flight_gauge_returns_to_zero_after_cancelled_calls() {
    let t = tempfile::tempdir().unwrap();
    let share = t.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = Driver::start(
        t.path(),
        &["--mode", "controller", "--metrics-address", &addr],
    )
    .await;
    let mut c = d.controller().await;
    let p = params(&[("mountedShare", &share.display().to_string())]);
    let src = c
        .create_volume(create_req("src", 1, p.clone()))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    // Enough files that cloning them takes far longer than the deadline.
    for i in 0..40 {
        let dir = share.join("src").join(format!("d{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        for j in 0..100 {
            std::fs::write(dir.join(format!("f{j}")), [i as u8; 64]).unwrap();
        }
    }
    let gauge = "nfs_csi_csi_calls_in_flight{method=\"CreateVolume\"}";
    for n in 0..3 {
        let mut clone = create_req(&format!("clone-{n}"), 0, p.clone());
        clone.volume_content_source = Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Volume(
                csi::volume_content_source::VolumeSource {
                    volume_id: src.volume_id.clone(),
                },
            )),
        });
        // The client gives up and drops the call (the server sees a reset
        // stream); once with a gRPC deadline as well.
        let mut req = tonic::Request::new(clone);
        if n == 0 {
            req.set_timeout(std::time::Duration::from_millis(5));
        }
        let mut c2 = d.controller().await;
        let res =
            tokio::time::timeout(std::time::Duration::from_millis(5), c2.create_volume(req)).await;
        assert!(
            res.is_err() || res.is_ok_and(|r| r.is_err()),
            "the clone was quick"
        );
    }
    // The clones go on as jobs; the calls are gone.
    let start = std::time::Instant::now();
    loop {
        let text = scrape(port);
        if value(&text, gauge) == 0.0 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "calls still counted in flight:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // and a call made now is counted, then not
    c.create_volume(create_req("after", 1, p)).await.unwrap();
    assert_eq!(value(&scrape(port), gauge), 0.0);
}
