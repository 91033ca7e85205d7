//! Scale: controller and node latencies of the real driver (through its
//! socket) as volumes pile up, against a baseline measured in the same run
//! that does what the leading NFS driver does on every CreateVolume (mount
//! the export, mkdir, unmount; here a bind mount of the share, since this
//! host has no NFS client).
//!
//!     cargo bench --bench scale                 # 100 and 10,000 volumes
//!     BENCH_VOLUMES=2000 cargo bench --bench scale
//!
//! On real NFS, in the e2e guest (see README "Benchmarks"):
//!     BENCH_NFS_SERVER=127.0.0.1 BENCH_NFS_SHARE=/srv/export \
//!         tests/e2e/nfsvm target/release/deps/scale-<hash>
//!
//! Mount measurements need root; they are skipped (and said so) without it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nfs_csi::grpc::csi::v1 as csi;
use tonic::transport::Channel;

/// The StorageClass parameters: an NFS export when BENCH_NFS_SERVER and
/// BENCH_NFS_SHARE are set (in the e2e guest), else the local share.
fn export_params(share: &Path) -> std::collections::HashMap<String, String> {
    match nfs() {
        Some((server, export)) => params(&[("server", &server), ("share", &export)]),
        None => params(&[("mountedShare", &share.display().to_string())]),
    }
}

fn nfs() -> Option<(String, String)> {
    Some((
        std::env::var("BENCH_NFS_SERVER").ok()?,
        std::env::var("BENCH_NFS_SHARE").ok()?,
    ))
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

struct Stats {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

fn stats(mut lat: Vec<Duration>, wall: Duration) -> Stats {
    lat.sort();
    Stats {
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        per_sec: lat.len() as f64 / wall.as_secs_f64(),
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `n` creates (then deletes) spread over `callers` concurrent clients.
async fn create_delete(
    ch: &Channel,
    share: &Path,
    prefix: &str,
    n: usize,
    callers: usize,
) -> (Stats, Stats) {
    let p = export_params(share);
    let run = |delete: bool, ids: Vec<String>| {
        let ch = ch.clone();
        let p = p.clone();
        let prefix = prefix.to_string();
        async move {
            let start = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..callers {
                let mut c = ControllerClient::new(ch.clone());
                let p = p.clone();
                let prefix = prefix.clone();
                let ids = ids.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut made = Vec::new();
                    for i in (w..n).step_by(callers) {
                        let t = Instant::now();
                        if delete {
                            c.delete_volume(csi::DeleteVolumeRequest {
                                volume_id: ids[i].clone(),
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        } else {
                            let v = c
                                .create_volume(create_req(
                                    &format!("{prefix}-{i}"),
                                    1 << 30,
                                    p.clone(),
                                ))
                                .await
                                .unwrap();
                            made.push((i, v.into_inner().volume.unwrap().volume_id));
                        }
                        lat.push(t.elapsed());
                    }
                    (lat, made)
                }));
            }
            let mut lat = Vec::new();
            let mut made = vec![String::new(); n];
            for t in tasks {
                let (l, m) = t.await.unwrap();
                lat.extend(l);
                for (i, id) in m {
                    made[i] = id;
                }
            }
            (stats(lat, start.elapsed()), made)
        }
    };
    let (create, ids) = run(false, Vec::new()).await;
    let (delete, _) = run(true, ids).await;
    (create, delete)
}

/// The leading driver's per-call work on this host: mount, mkdir, unmount.
fn baseline(share: &Path, scratch: &Path, n: usize) -> Option<Stats> {
    if !is_root() {
        return None;
    }
    let start = Instant::now();
    let mut lat = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let mp = scratch.join(format!("m{i}"));
        std::fs::create_dir_all(&mp).unwrap();
        if let Some((server, export)) = nfs() {
            let st = std::process::Command::new("mount")
                .args(["-t", "nfs", &format!("{server}:{export}")])
                .arg(&mp)
                .status()
                .unwrap();
            assert!(st.success(), "mount -t nfs failed");
        } else {
            nix::mount::mount(
                Some(share),
                &mp,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap();
        }
        std::fs::create_dir(mp.join(format!("base-{i}"))).unwrap();
        nix::mount::umount2(&mp, nix::mount::MntFlags::empty()).unwrap();
        std::fs::remove_dir(&mp).unwrap();
        lat.push(t.elapsed());
    }
    Some(stats(lat, start.elapsed()))
}

/// Creates `n` volumes quickly (16 callers), returning their ids.
async fn fill(ch: &Channel, share: &Path, prefix: &str, n: usize) -> Vec<String> {
    let p = export_params(share);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut c = ControllerClient::new(ch.clone());
        let p = p.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (w..n).step_by(16) {
                let v = c
                    .create_volume(create_req(&format!("{prefix}-{i}"), 1, p.clone()))
                    .await
                    .unwrap();
                ids.push(v.into_inner().volume.unwrap().volume_id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    ids
}

#[tokio::main]
async fn main() {
    let big: usize = std::env::var("BENCH_VOLUMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let top = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-scale");
    let _ = std::fs::remove_dir_all(&top);
    let share = top.join("share");
    let kubelet = top.join("kubelet");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::create_dir_all(&kubelet).unwrap();
    let _guard = MountGuard(top.clone());
    // quiet logs: the benchmark measures the driver, not its logging
    // SAFETY: single-threaded at this point; only this process reads it.
    unsafe { std::env::set_var("NFS_CSI_TEST_LOG", "warn") };
    let mut d = Driver::start(&top, &["--mode", "all"]).await;
    let ch = d.channel().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss_kib(d.pid());

    println!(
        "{:<44} {:>9} {:>9} {:>10}",
        "operation", "p50 ms", "p99 ms", "ops/s"
    );
    let line = |what: &str, s: &Stats| {
        println!(
            "{what:<44} {:>9} {:>9} {:>10.0}",
            ms(s.p50),
            ms(s.p99),
            s.per_sec
        );
    };
    let n = 400;
    if let Some((server, export)) = nfs() {
        println!("export: NFS {server}:{export}");
    } else {
        println!("export: mountedShare {}", share.display());
    }
    let base = baseline(
        &share,
        &top.join("scratch"),
        if nfs().is_some() { 50 } else { n },
    );
    match &base {
        Some(b) => line("baseline: mount+mkdir+umount per create", b),
        None => println!("baseline: SKIPPED (needs root to mount)"),
    }
    // at 100 existing volumes
    fill(&ch, &share, "pre", 100).await;
    let mut p99_small = Duration::ZERO;
    for callers in [1, 16] {
        let (c, dl) = create_delete(&ch, &share, &format!("s{callers}"), n, callers).await;
        line(
            &format!("CreateVolume, 100 volumes, {callers} caller(s)"),
            &c,
        );
        line(
            &format!("DeleteVolume, 100 volumes, {callers} caller(s)"),
            &dl,
        );
        if callers == 1 {
            p99_small = c.p99;
        }
    }
    let p50_create = {
        let (c, _) = create_delete(&ch, &share, "p50", n, 1).await;
        c.p50
    };
    // at `big` existing volumes
    let t = Instant::now();
    fill(&ch, &share, "bulk", big - 100).await;
    println!(
        "(created {} more volumes in {:.1} s)",
        big - 100,
        t.elapsed().as_secs_f64()
    );
    let rss_big = rss_kib(d.pid());
    let mut p99_big = Duration::ZERO;
    for callers in [1, 16] {
        let (c, dl) = create_delete(&ch, &share, &format!("b{callers}"), n, callers).await;
        line(
            &format!("CreateVolume, {big} volumes, {callers} caller(s)"),
            &c,
        );
        line(
            &format!("DeleteVolume, {big} volumes, {callers} caller(s)"),
            &dl,
        );
        if callers == 1 {
            p99_big = c.p99;
        }
    }
    // ListVolumes, paged
    let mut c = ControllerClient::new(ch.clone());
    let mut pages = Vec::new();
    let mut token = String::new();
    let mut total = 0;
    let t = Instant::now();
    loop {
        let pt = Instant::now();
        let r = c
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 500,
                starting_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(pt.elapsed());
        total += r.entries.len();
        if r.next_token.is_empty() {
            break;
        }
        token = r.next_token;
    }
    let list_wall = t.elapsed();
    line(
        &format!("ListVolumes page of 500 ({total} volumes)"),
        &stats(pages, list_wall),
    );
    println!(
        "{:<44} {:>9.1} ms for all {total}",
        "ListVolumes, whole listing",
        list_wall.as_secs_f64() * 1000.0
    );

    // Node: publish/unpublish with 500 volumes staged and published
    if nfs().is_some() {
        println!(
            "NodePublish/NodeUnpublish: measured on the local share (run without BENCH_NFS_*)"
        );
    } else if is_root() {
        let ids = fill(&ch, &share, "node", 500).await;
        let mut n = d.node().await;
        for (i, id) in ids.iter().enumerate() {
            let staging = kubelet.join(format!("plugins/x/{i}/globalmount"));
            n.node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(rwx()),
                ..Default::default()
            })
            .await
            .unwrap();
            n.node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
                target_path: kubelet
                    .join(format!("pods/p{i}/mount"))
                    .display()
                    .to_string(),
                volume_capability: Some(rwx()),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let mut publish = Vec::new();
        let mut unpublish = Vec::new();
        let t = Instant::now();
        for (i, id) in ids.iter().enumerate().take(200) {
            let staging = kubelet.join(format!("plugins/x/{i}/globalmount"));
            let target = kubelet.join(format!("pods/extra{i}/mount"));
            let s = Instant::now();
            n.node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(rwx()),
                ..Default::default()
            })
            .await
            .unwrap();
            publish.push(s.elapsed());
            let s = Instant::now();
            n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: id.clone(),
                target_path: target.display().to_string(),
            })
            .await
            .unwrap();
            unpublish.push(s.elapsed());
        }
        let wall = t.elapsed();
        line(
            "NodePublishVolume, 1000 mounts on the node",
            &stats(publish, wall),
        );
        line(
            "NodeUnpublishVolume, 1000 mounts on the node",
            &stats(unpublish, wall),
        );
        // clean up the node's mounts through the driver
        for (i, id) in ids.iter().enumerate() {
            let staging = kubelet.join(format!("plugins/x/{i}/globalmount"));
            n.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: id.clone(),
                target_path: kubelet
                    .join(format!("pods/p{i}/mount"))
                    .display()
                    .to_string(),
            })
            .await
            .unwrap();
            n.node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging.display().to_string(),
            })
            .await
            .unwrap();
        }
    } else {
        println!("NodePublish/NodeUnpublish: SKIPPED (needs root to mount)");
    }
    println!();
    println!(
        "driver RSS: idle {:.1} MiB, at {big} volumes {:.1} MiB (target idle < 10 MiB)",
        rss_idle as f64 / 1024.0,
        rss_big as f64 / 1024.0
    );
    let ratio = p99_big.as_secs_f64() / p99_small.as_secs_f64().max(1e-9);
    println!(
        "CreateVolume p50 {} ms (target < 2 ms); p99 at {big} / p99 at 100 = {ratio:.2} (target <= 2)",
        ms(p50_create)
    );
    if let Some(b) = &base {
        println!(
            "CreateVolume p50 vs baseline p50: {:.1}x faster (target on NFS >= 10x)",
            b.p50.as_secs_f64() / p50_create.as_secs_f64()
        );
    }
    let ok = match (&base, nfs()) {
        (Some(b), Some(_)) => {
            b.p50.as_secs_f64() / p50_create.as_secs_f64() >= 10.0 && ratio <= 2.0
        }
        _ => p50_create < Duration::from_millis(2) && ratio <= 2.0 && rss_idle < 10 * 1024,
    };
    println!("targets: {}", if ok { "all met" } else { "NOT all met" });
    d.kill();
    drop(_guard);
    let _ = std::fs::remove_dir_all(&top);
}
