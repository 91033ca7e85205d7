//! Snapshot, restore and clone throughput of the real driver (through its
//! socket), side by side with what the leading NFS driver does (`tar -czf`,
//! `tar -xzf`), an uncompressed `tar -cf` and `cp -a`, on the same disk in
//! the same run.
//!
//!     cargo bench --bench snapshot            # ~1 GiB data set
//!     BENCH_SCALE=0.25 cargo bench --bench snapshot
//!     BENCH_ONLY=chain cargo bench --bench snapshot   # only the chain restore
//!     BENCH_STEPS=1 cargo bench --bench snapshot      # with the small chain's restore steps
//!
//! The data set lives under target/bench-snapshot and is removed at the end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nfs_csi::grpc::csi::v1 as csi;

const MIB: f64 = 1024.0 * 1024.0;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Compressible bytes shaped like what volumes hold: application log lines
/// (timestamps, levels, ids, key=value fields) and JSON records.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    const LEVELS: [&str; 4] = ["INFO", "DEBUG", "WARN", "ERROR"];
    const WHAT: [&str; 8] = [
        "request served",
        "cache miss",
        "connection opened",
        "retrying upstream call",
        "order created",
        "payment authorised",
        "session expired",
        "job finished",
    ];
    const SVC: [&str; 5] = ["api", "billing", "auth", "worker", "search"];
    let mut out = Vec::with_capacity(len + 256);
    let mut t: u64 = 1_764_000_000_000;
    while out.len() < len {
        let r = rng.next();
        t += r % 50;
        let line = if r.is_multiple_of(5) {
            format!(
                "{{\"ts\":{t},\"service\":\"{}\",\"user\":{},\"amount\":{}.{:02},\"items\":[{},{}],\"status\":\"{}\"}}\n",
                SVC[(r >> 8) as usize % 5],
                (r >> 16) % 100_000,
                (r >> 24) % 1000,
                (r >> 34) % 100,
                (r >> 40) % 5000,
                (r >> 48) % 5000,
                if r.is_multiple_of(7) { "failed" } else { "ok" }
            )
        } else {
            format!(
                "{}.{:03}Z {:<5} {}[{}]: {} request_id={:016x} latency_ms={} path=/v1/{}/{}\n",
                t / 1000,
                t % 1000,
                LEVELS[(r >> 8) as usize % 4],
                SVC[(r >> 12) as usize % 5],
                1000 + (r >> 20) % 64,
                WHAT[(r >> 28) as usize % 8],
                rng.next(),
                (r >> 32) % 900,
                SVC[(r >> 40) as usize % 5],
                (r >> 44) % 10_000
            )
        };
        out.extend_from_slice(line.as_bytes());
    }
    out.truncate(len);
    out
}

/// Real text files (the crates cargo downloaded): realistic compressible
/// content, the same for every run on a machine that built this project.
fn corpus() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut stack = vec![home.join("registry/src")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file()
                && matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("rs" | "md" | "toml" | "txt" | "json")
                )
                && e.metadata().map(|m| m.len() < 64 << 10).unwrap_or(false)
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `len` bytes of compressible content: real files when there are some,
/// else log lines.
fn compressible(rng: &mut Rng, corpus: &[PathBuf], next: &mut usize, len: usize) -> Vec<u8> {
    if corpus.is_empty() {
        return text(rng, len);
    }
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend(std::fs::read(&corpus[*next % corpus.len()]).unwrap_or_default());
        *next += 1;
    }
    out.truncate(len);
    out
}

/// Builds the mixed data set in `dir`; returns its data bytes.
fn build(dir: &Path, scale: f64) -> u64 {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let corpus = corpus();
    let mut next = 0usize;
    let mut total = 0u64;
    let n_small = (4000.0 * scale) as usize;
    for i in 0..n_small {
        let d = dir.join(format!("small/{:03}", i % 100));
        std::fs::create_dir_all(&d).unwrap();
        let data = if i % 4 == 0 {
            let len = 512 + (rng.next() % 16384) as usize;
            let mut b = vec![0u8; len];
            rng.fill(&mut b);
            b
        } else if corpus.is_empty() {
            let len = 512 + (rng.next() % 16384) as usize;
            text(&mut rng, len)
        } else {
            next += 1;
            std::fs::read(&corpus[next % corpus.len()]).unwrap_or_default()
        };
        std::fs::write(d.join(format!("f{i}.txt")), &data).unwrap();
        total += data.len() as u64;
        if i % 50 == 0 {
            symlink(format!("f{i}.txt"), d.join(format!("link{i}"))).unwrap();
            std::fs::hard_link(d.join(format!("f{i}.txt")), d.join(format!("hard{i}"))).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("medium")).unwrap();
    let n_medium = (40.0 * scale).max(2.0) as usize;
    for i in 0..n_medium {
        let len = 4 << 20;
        let data = if i % 2 == 0 {
            compressible(&mut rng, &corpus, &mut next, len)
        } else {
            let mut b = vec![0u8; len];
            rng.fill(&mut b);
            b
        };
        std::fs::write(dir.join(format!("medium/m{i}.bin")), &data).unwrap();
        total += len as u64;
    }
    // two large files: one compressible (logs), one random
    std::fs::create_dir_all(dir.join("large")).unwrap();
    let large = ((330.0 * scale) as usize).max(8) << 20;
    for (name, random) in [("logs.txt", false), ("blob.bin", true)] {
        let mut f = std::io::BufWriter::new(File::create(dir.join("large").join(name)).unwrap());
        let mut left = large;
        while left > 0 {
            let n = left.min(4 << 20);
            let chunk = if random {
                let mut b = vec![0u8; n];
                rng.fill(&mut b);
                b
            } else {
                text(&mut rng, n)
            };
            f.write_all(&chunk).unwrap();
            left -= n;
        }
        total += large as u64;
    }
    // a sparse file: 1 GiB apparent, a few MiB of data
    let f = File::create(dir.join("large/sparse.img")).unwrap();
    f.set_len(1 << 30).unwrap();
    for k in 0..8u64 {
        let mut b = vec![0u8; 256 << 10];
        rng.fill(&mut b);
        f.write_all_at(&b, k * (128 << 20)).unwrap();
    }
    total += 8 * (256 << 10);
    total
}

fn du(path: &Path) -> u64 {
    let out = Command::new("du").args(["-sb"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let st = cmd.status().expect("run baseline command");
    assert!(st.success(), "{cmd:?} failed");
    t.elapsed()
}

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn row(what: &str, ours: Duration, base: Duration, base_name: &str, bytes: u64, target: &str) {
    let mbs = |d: Duration| bytes as f64 / MIB / d.as_secs_f64();
    let ratio = base.as_secs_f64() / ours.as_secs_f64();
    println!(
        "{what:<10} ours {:>7.2} s {:>7.0} MB/s | {base_name:<10} {:>7.2} s {:>7.0} MB/s | speedup {ratio:>5.2}x  (target {target})",
        ours.as_secs_f64(),
        mbs(ours),
        base.as_secs_f64(),
        mbs(base),
    );
}

/// Changes about 1% of the data (`step` picks other files each time):
/// appends to the large log, rewrites small files, deletes 20 and renames
/// 10 files and one directory. Returns the bytes written.
fn change(vol: &Path, data: u64, step: u64, big_log: bool) -> u64 {
    let mut rng = Rng(0xC0FF_EE00 + step);
    let budget = data / 100;
    let mut written = 0;
    if big_log {
        let append = budget / 2;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(vol.join("large/logs.txt"))
            .unwrap();
        f.write_all(&text(&mut rng, append as usize)).unwrap();
        written = append;
    }
    let mut small: Vec<PathBuf> = Vec::new();
    for d in std::fs::read_dir(vol.join("small")).unwrap().flatten() {
        for e in std::fs::read_dir(d.path()).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('f') && e.file_type().is_ok_and(|t| t.is_file()) {
                small.push(e.path());
            }
        }
    }
    small.sort();
    let mut i = (step as usize * 7919) % small.len().max(1);
    while written < budget && !small.is_empty() {
        let p = &small[i % small.len()];
        let len = 512 + (rng.next() % 16384) as usize;
        std::fs::write(p, text(&mut rng, len)).unwrap();
        written += len as u64;
        i += 13;
    }
    for k in 0..30 {
        let p = &small[(i + 101 * k) % small.len()];
        if !p.exists() {
            continue;
        }
        if k < 20 {
            std::fs::remove_file(p).unwrap();
        } else {
            std::fs::rename(p, p.with_extension(format!("renamed{step}"))).unwrap();
        }
    }
    let dir = vol.join(format!("small/{:03}", 10 + step));
    if dir.exists() {
        std::fs::rename(&dir, vol.join(format!("small/moved{step}"))).unwrap();
    }
    written
}

async fn snapshot(
    c: &mut ControllerClient<tonic::transport::Channel>,
    source: &str,
    name: &str,
) -> (Duration, csi::Snapshot) {
    let t = Instant::now();
    loop {
        let s = c
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: source.into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        if s.ready_to_use {
            return (t.elapsed(), s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn restore(
    c: &mut ControllerClient<tonic::transport::Channel>,
    share: &Path,
    name: &str,
    snapshot_id: &str,
) -> Duration {
    let t = Instant::now();
    let mut r = create_req(
        name,
        0,
        params(&[("mountedShare", &share.display().to_string())]),
    );
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: snapshot_id.into(),
            },
        )),
    });
    c.create_volume(r).await.unwrap();
    let took = t.elapsed();
    let _ = std::fs::remove_dir_all(share.join(name));
    took
}

fn manifest(share: &Path, name: &str) -> serde_json::Value {
    let p = share
        .join(".nfs-csi/snapshots")
        .join(name)
        .join("manifest.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap_or_default()
}

/// `BENCH_ONLY=chain`: the full snapshot's chain grown by seven
/// incremental snapshots of small-file changes (as the "small only" row),
/// the newest restored against the full restore, and the driver's timings
/// of each restore step.
#[allow(clippy::too_many_arguments)]
async fn chain_only(
    c: &mut ControllerClient<tonic::transport::Channel>,
    share: &Path,
    vol: &Path,
    source: &str,
    data: u64,
    full: &csi::Snapshot,
    full_restore: Duration,
    log: &Path,
) {
    let mut newest = String::new();
    for k in 1..8 {
        change(vol, data, 100 + k, false);
        newest = snapshot(c, source, &format!("bench-inc-small{k}"))
            .await
            .1
            .snapshot_id;
    }
    let chain = manifest(share, "bench-inc-small7")["chain"]
        .as_u64()
        .unwrap_or(0);
    let steps = |from: usize| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.contains("restore step"))
            .map(String::from)
            .collect();
        (
            lines.len(),
            lines.into_iter().skip(from).collect::<Vec<_>>(),
        )
    };
    let (seen, _) = steps(0);
    drop_caches();
    let chain_restore = restore(c, share, "bench-restore-small7", &newest).await;
    let (seen2, lines) = steps(seen);
    for l in &lines {
        println!("  {l}");
    }
    drop_caches();
    let again = restore(c, share, "bench-restore-again", &full.snapshot_id).await;
    for l in steps(seen2).1 {
        println!("  {l}");
    }
    println!(
        "chain only: newest of a chain of {} archives {:.2} s = {:.2}x the full restore {:.2} s (again after the chain: {:.2} s)",
        chain + 1,
        chain_restore.as_secs_f64(),
        chain_restore.as_secs_f64() / full_restore.as_secs_f64(),
        full_restore.as_secs_f64(),
        again.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let top = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-snapshot");
    let _ = std::fs::remove_dir_all(&top);
    let share = top.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let mut d = Driver::start(&top, &["--mode", "controller", "--fs-timeout", "600"]).await;
    let mut c = d.controller().await;
    let src = c
        .create_volume(create_req(
            "bench-src",
            0,
            params(&[("mountedShare", &share.display().to_string())]),
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let vol = share.join("bench-src");
    eprintln!("building the data set (scale {scale})...");
    let data = build(&vol, scale);
    let apparent = du(&vol);
    println!(
        "data set: {:.0} MiB of data ({:.0} MiB apparent with the sparse file), {} CPUs",
        data as f64 / MIB,
        apparent as f64 / MIB,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let cold = drop_caches();
    println!(
        "page cache: {}",
        if cold {
            "dropped before each run"
        } else {
            "warm (cannot drop caches here)"
        }
    );
    if !cold {
        // warm everything equally
        timed(
            Command::new("tar")
                .arg("-cf")
                .arg("/dev/null")
                .arg("-C")
                .arg(&vol)
                .arg("."),
        );
    }
    let pid = d.pid();
    let rss_idle = peak_rss_kib(pid);

    // snapshot
    drop_caches();
    let t = Instant::now();
    let snap = loop {
        let s = c
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: src.volume_id.clone(),
                name: "bench-snap".into(),
                parameters: std::env::var("BENCH_LEVEL")
                    .map(|l| params(&[("compressionLevel", &l)]))
                    .unwrap_or_default(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        if s.ready_to_use {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ours_snap = t.elapsed();
    let rss_peak = peak_rss_kib(pid);
    let ours_size = std::fs::metadata(share.join(".nfs-csi/snapshots/bench-snap/archive.tar.zst"))
        .unwrap()
        .len();

    drop_caches();
    let tgz = top.join("baseline.tar.gz");
    let base_czf = timed(
        Command::new("tar")
            .arg("-czf")
            .arg(&tgz)
            .arg("-C")
            .arg(&vol)
            .arg("."),
    );
    let tgz_size = std::fs::metadata(&tgz).unwrap().len();
    drop_caches();
    let tar = top.join("baseline.tar");
    let base_cf = timed(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&vol)
            .arg("."),
    );
    let _ = std::fs::remove_file(&tar);

    // restore
    drop_caches();
    let t = Instant::now();
    c.create_volume({
        let mut r = create_req(
            "bench-restore",
            0,
            params(&[("mountedShare", &share.display().to_string())]),
        );
        r.volume_content_source = Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Snapshot(
                csi::volume_content_source::SnapshotSource {
                    snapshot_id: snap.snapshot_id.clone(),
                },
            )),
        });
        r
    })
    .await
    .unwrap();
    let ours_restore = t.elapsed();
    if std::env::var("BENCH_ONLY").as_deref() == Ok("chain") {
        let log = top.join("driver.log");
        chain_only(
            &mut c,
            &share,
            &vol,
            &src.volume_id,
            data,
            &snap,
            ours_restore,
            &log,
        )
        .await;
        d.kill();
        let _ = std::fs::remove_dir_all(&top);
        return;
    }
    drop_caches();
    let xzf_dir = top.join("baseline-xzf");
    std::fs::create_dir_all(&xzf_dir).unwrap();
    let base_xzf = timed(
        Command::new("tar")
            .arg("-xzf")
            .arg(&tgz)
            .arg("-C")
            .arg(&xzf_dir),
    );
    let _ = std::fs::remove_dir_all(&xzf_dir);
    let _ = std::fs::remove_file(&tgz);

    // clone
    drop_caches();
    let t = Instant::now();
    c.create_volume({
        let mut r = create_req(
            "bench-clone",
            0,
            params(&[("mountedShare", &share.display().to_string())]),
        );
        r.volume_content_source = Some(csi::VolumeContentSource {
            r#type: Some(csi::volume_content_source::Type::Volume(
                csi::volume_content_source::VolumeSource {
                    volume_id: src.volume_id.clone(),
                },
            )),
        });
        r
    })
    .await
    .unwrap();
    let ours_clone = t.elapsed();
    drop_caches();
    let cp_dir = top.join("baseline-cp");
    let base_cp = timed(Command::new("cp").arg("-a").arg(&vol).arg(&cp_dir));
    let rss_end = peak_rss_kib(pid);
    let _ = std::fs::remove_dir_all(&cp_dir);

    // incremental: GNU tar's level 0 state, then a 1% change
    let snar0 = top.join("level0.snar");
    timed(
        Command::new("tar")
            .arg(format!("--listed-incremental={}", snar0.display()))
            .arg("-cf")
            .arg("/dev/null")
            .arg("-C")
            .arg(&vol)
            .arg("."),
    );
    let changed = change(&vol, data, 0, true);
    drop_caches();
    let (ours_inc, inc) = snapshot(&mut c, &src.volume_id, "bench-inc1").await;
    let rss_inc1 = peak_rss_kib(pid);
    let inc_m = manifest(&share, "bench-inc1");
    let inc_size = inc_m["archive_bytes"].as_u64().unwrap_or(0);
    let inc_listing = inc_m["stored"]["bytes"].as_u64().unwrap_or(0);
    let snar1 = top.join("level1.snar");
    std::fs::copy(&snar0, &snar1).unwrap();
    drop_caches();
    let tgz1 = top.join("level1.tar.gz");
    let base_inc = timed(
        Command::new("tar")
            .arg(format!("--listed-incremental={}", snar1.display()))
            .arg("-czf")
            .arg(&tgz1)
            .arg("-C")
            .arg(&vol)
            .arg("."),
    );
    let tgz1_size = std::fs::metadata(&tgz1).unwrap().len();
    let _ = std::fs::remove_file(&tgz1);
    drop_caches();
    let ours_inc_restore = restore(&mut c, &share, "bench-restore-inc1", &inc.snapshot_id).await;
    // a chain of 8: six more changes and snapshots, then the newest restored
    let mut newest = inc;
    for k in 2..8 {
        change(&vol, data, k, true);
        newest = snapshot(&mut c, &src.volume_id, &format!("bench-inc{k}"))
            .await
            .1;
    }
    let chain = manifest(&share, "bench-inc7")["chain"]
        .as_u64()
        .unwrap_or(0);
    drop_caches();
    let ours_chain_restore =
        restore(&mut c, &share, "bench-restore-inc7", &newest.snapshot_id).await;
    let rss_inc = peak_rss_kib(pid);
    // the same kind of change in small files only (no large file touched):
    // a new chain (fullEvery 8 ends the first), full then incremental
    drop_caches();
    let (ours_full2, _) = snapshot(&mut c, &src.volume_id, "bench-full2").await;
    let full2_size = manifest(&share, "bench-full2")["archive_bytes"]
        .as_u64()
        .unwrap_or(0);
    let snar2 = top.join("level0b.snar");
    timed(
        Command::new("tar")
            .arg(format!("--listed-incremental={}", snar2.display()))
            .arg("-cf")
            .arg("/dev/null")
            .arg("-C")
            .arg(&vol)
            .arg("."),
    );
    let changed_small = change(&vol, data, 100, false);
    drop_caches();
    let (ours_small, _) = snapshot(&mut c, &src.volume_id, "bench-inc-small").await;
    let small_m = manifest(&share, "bench-inc-small");
    let small_size = small_m["archive_bytes"].as_u64().unwrap_or(0);
    let small_chain = small_m["chain"].as_u64().unwrap_or(0);
    drop_caches();
    let tgz2 = top.join("level1b.tar.gz");
    let base_small = timed(
        Command::new("tar")
            .arg(format!("--listed-incremental={}", snar2.display()))
            .arg("-czf")
            .arg(&tgz2)
            .arg("-C")
            .arg(&vol)
            .arg("."),
    );
    let tgz2_size = std::fs::metadata(&tgz2).unwrap().len();
    let _ = std::fs::remove_file(&tgz2);
    let mut newest_small = String::new();
    for k in 2..8 {
        change(&vol, data, 100 + k, false);
        newest_small = snapshot(&mut c, &src.volume_id, &format!("bench-inc-small{k}"))
            .await
            .1
            .snapshot_id;
    }
    let small_chain8 = manifest(&share, "bench-inc-small7")["chain"]
        .as_u64()
        .unwrap_or(0);
    drop_caches();
    let log = std::fs::read_to_string(top.join("driver.log")).unwrap_or_default();
    let seen = log.lines().filter(|l| l.contains("restore step")).count();
    let ours_small_restore = restore(&mut c, &share, "bench-restore-small7", &newest_small).await;
    if std::env::var_os("BENCH_STEPS").is_some() {
        let log = std::fs::read_to_string(top.join("driver.log")).unwrap_or_default();
        for l in log
            .lines()
            .filter(|l| l.contains("restore step"))
            .skip(seen)
        {
            println!("  {l}");
        }
    }

    println!();
    row("snapshot", ours_snap, base_czf, "tar -czf", data, ">= 5x");
    row("snapshot", ours_snap, base_cf, "tar -cf", data, ">= 0.6x");
    row("restore", ours_restore, base_xzf, "tar -xzf", data, ">= 3x");
    row("clone", ours_clone, base_cp, "cp -a", data, ">= 1x");
    println!(
        "archive    ours {:.1} MiB (zstd)   | tar -czf {:.1} MiB (gzip)   | size ratio {:.2} (target <= 1)",
        ours_size as f64 / MIB,
        tgz_size as f64 / MIB,
        ours_size as f64 / tgz_size as f64
    );
    println!(
        "driver RSS idle {:.1} MiB, peak during snapshot {:.1} MiB, peak overall {:.1} MiB (target < 64 MiB)",
        rss_idle as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    let ok = base_czf.as_secs_f64() / ours_snap.as_secs_f64() >= 5.0
        && ours_size <= tgz_size
        && base_cf.as_secs_f64() / ours_snap.as_secs_f64() >= 0.6
        && rss_end < 64 * 1024
        && base_xzf.as_secs_f64() / ours_restore.as_secs_f64() >= 3.0
        && ours_clone <= base_cp.mul_f64(1.0);
    println!(
        "change     {:.1} MiB rewritten or appended ({:.2}% of the data), 20 files deleted, 10 files and a directory renamed",
        changed as f64 / MIB,
        changed as f64 * 100.0 / data as f64
    );
    let inc_time = ours_inc.as_secs_f64() / ours_snap.as_secs_f64();
    let inc_ratio = inc_size as f64 / ours_size as f64;
    println!(
        "incr snap  ours {:>7.2} s = {:.1}% of the full snapshot (target <= 10%) | tar -g -czf level 1 {:>7.2} s",
        ours_inc.as_secs_f64(),
        inc_time * 100.0,
        base_inc.as_secs_f64()
    );
    println!(
        "incr size  ours {:.2} MiB = {:.2}% of the full archive (target <= 5%; uncompressed, it stores {:.2} MiB of file data and listings) | tar -g -czf level 1 {:.2} MiB",
        inc_size as f64 / MIB,
        inc_ratio * 100.0,
        inc_listing as f64 / MIB,
        tgz1_size as f64 / MIB
    );
    let chain_ratio = ours_chain_restore.as_secs_f64() / ours_restore.as_secs_f64();
    println!(
        "incr rest  chain of 2 {:>7.2} s | newest of a chain of {} archives {:>7.2} s = {:.2}x the full restore {:.2} s (target <= 1.3x)",
        ours_inc_restore.as_secs_f64(),
        chain + 1,
        ours_chain_restore.as_secs_f64(),
        chain_ratio,
        ours_restore.as_secs_f64()
    );
    println!(
        "small only {:.1} MiB rewritten in small files (no large file touched), same deletes and renames: incremental {:.2} s = {:.1}% of its full snapshot {:.2} s, {:.2} MiB = {:.2}% of its full archive (chain {}) | tar -g -czf level 1 {:.2} s, {:.2} MiB",
        changed_small as f64 / MIB,
        ours_small.as_secs_f64(),
        ours_small.as_secs_f64() * 100.0 / ours_full2.as_secs_f64(),
        ours_full2.as_secs_f64(),
        small_size as f64 / MIB,
        small_size as f64 * 100.0 / full2_size.max(1) as f64,
        small_chain,
        base_small.as_secs_f64(),
        tgz2_size as f64 / MIB
    );
    println!(
        "small only restore of the newest of a chain of {} archives {:.2} s = {:.2}x the full restore",
        small_chain8 + 1,
        ours_small_restore.as_secs_f64(),
        ours_small_restore.as_secs_f64() / ours_restore.as_secs_f64()
    );
    println!(
        "incr RSS   driver peak after the first incremental snapshot {:.1} MiB, after 8 snapshots and 2 restores of the chain {:.1} MiB (target < 64 MiB)",
        rss_inc1 as f64 / 1024.0,
        rss_inc as f64 / 1024.0
    );
    let inc_ok = rss_inc < 64 * 1024
        && inc_time <= 0.10
        && inc_ratio <= 0.05
        && chain_ratio <= 1.3
        && chain == 7;
    if !inc_ok {
        // The archives stay standard (GNU tar restores a chain by hand),
        // and tar has no entry for "the rest of a file": a file that
        // changed, an appended log included, is stored whole, as GNU tar's
        // own level 1 does (its size is printed beside ours).
        println!(
            "incremental targets missed: {}{}{}{}",
            if inc_time > 0.10 {
                "time: the appended log is archived whole again, and every file is stat'ed; "
            } else {
                ""
            },
            if inc_ratio > 0.05 {
                "size: a changed file is stored whole (the appended log here), as in tar -g's level 1; "
            } else {
                ""
            },
            if chain_ratio > 1.3 {
                "chain restore: each archive of the chain is verified and extracted in turn, and each holds the appended log whole; "
            } else {
                ""
            },
            if chain != 7 {
                "chain length: fullEvery or the bytes rule started a new full archive"
            } else {
                ""
            },
        );
    }
    let ok = ok && inc_ok;
    println!("targets: {}", if ok { "all met" } else { "NOT all met" });
    d.kill();
    let _ = std::fs::remove_dir_all(&top);
}
