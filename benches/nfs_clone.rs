//! Clones on real NFS: CreateVolume with a volume as its content source,
//! through the real driver, in the e2e guest (tests/e2e/README.md), over
//! NFSv4.1 and NFSv4.2, on the reflink export (XFS, `reflink=1`) and on the
//! plain one (tmpfs), for two data sets of BENCH_CLONE_MIB (default 256) MiB:
//! "mixed" (272 files) and "large files" (8 files). Per case: the clone's
//! time and what the controller's mount of the export sent
//! (`/proc/self/mountstats`: READ/WRITE bytes, COPY/CLONE operations; every
//! operation's count on stderr). Targets (issue 14): on the reflink export
//! over v4.2, a clone in under 10% of the v4.1 clone's time with ~0
//! READ/WRITE bytes (under 1% of the data); on the plain export over v4.2
//! (server-side COPY), ~0 READ/WRITE bytes (no time target: over the
//! guest's loopback, the server's copy and the client's READ/WRITE are both
//! memory copies on the same CPU).
//!
//!     cargo bench --bench nfs_clone --no-run     # prints the executable
//!     NFSVM_MEM=2G tests/e2e/nfsvm target/release/deps/nfs_clone-<hash>
//!
//! The tmpfs export holds a source and its clone (2x the data set), hence
//! NFSVM_MEM=2G for 256 MiB. BENCH_CLONE_THREADS (default 4) is the
//! controller's `--snapshot-threads`. Outside the guest (NFSVM unset) it
//! says SKIPPED and exits.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/e2e_nfs/mountstats.rs"]
#[allow(dead_code)]
mod mountstats;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use mountstats::OpStats;
use nfs_csi::grpc::csi::v1 as csi;

const MIB: u64 = 1 << 20;

/// A data set, written on the server's side (the client caches none of
/// it): `total_mib` MiB, mixed (half in 8 large files, half in 64 medium
/// ones, plus 200 files of 4 KiB: 272 files) or in 8 large files only.
/// Returns the bytes written.
fn fill(dir: &Path, total_mib: u64, mixed: bool) -> u64 {
    use std::io::Write;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut block = vec![0u8; MIB as usize];
    let mut write = |path: PathBuf, bytes: u64| {
        let mut f = std::fs::File::create(path).unwrap();
        let mut left = bytes;
        while left > 0 {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x as u8) | 1;
            }
            let n = left.min(MIB);
            f.write_all(&block[..n as usize]).unwrap();
            left -= n;
        }
        bytes
    };
    std::fs::create_dir_all(dir.join("small")).unwrap();
    let small = (total_mib * MIB / 128).max(4096);
    let large = (total_mib * MIB / if mixed { 16 } else { 8 }).max(4096);
    let mut sum = 0;
    for i in 0..8 {
        sum += write(dir.join(format!("large-{i}")), large);
    }
    if !mixed {
        return sum;
    }
    for i in 0..64 {
        sum += write(dir.join(format!("medium-{i}")), small);
    }
    for i in 0..200 {
        sum += write(dir.join(format!("small/{i}")), 4096);
    }
    sum
}

struct Case {
    name: &'static str,
    vers: &'static str,
    export: String,
}

struct Row {
    set: &'static str,
    data: u64,
    name: &'static str,
    vers: &'static str,
    export: String,
    time: Duration,
    used: OpStats,
}

/// The controller's mount of `server:export` with `vers=`: its mount point.
fn controller_mount(work: &Path, source: &str, vers: &str) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let all = nfs_csi::sys::mount::parse_mountinfo(&text).unwrap();
    all.into_iter()
        .find(|m| {
            m.mount_point.starts_with(work)
                && m.source == source
                && m.super_options.iter().any(|o| o == vers)
        })
        .map(|m| m.mount_point)
        .unwrap_or_else(|| panic!("no controller mount of {source} with {vers}"))
}

fn drop_caches() {
    nix::unistd::sync();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

async fn clone_case(
    d: &Driver,
    server: &str,
    case: &Case,
    (set, total_mib, mixed): (&'static str, u64, bool),
    n: usize,
) -> Row {
    let mut ctl = d.controller().await;
    let req = |name: &str| csi::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 4 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(
            csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter,
            &[&format!("nfsvers={}", case.vers)],
        )],
        parameters: params(&[("server", server), ("share", &case.export)]),
        ..Default::default()
    };
    let src_name = format!("bench-clone-{n}-src");
    let src = ctl
        .create_volume(req(&src_name))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let data = fill(&Path::new(&case.export).join(&src_name), total_mib, mixed);
    let mount = controller_mount(
        &d.work_dir,
        &format!("{server}:{}", case.export),
        &format!("vers={}", case.vers),
    );
    drop_caches();
    let before = OpStats::of_mount(&mount).expect("mountstats");
    let mut clone = req(&format!("bench-clone-{n}-dst"));
    clone.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: src.volume_id.clone(),
            },
        )),
    });
    let t = Instant::now();
    let dst = ctl
        .create_volume(clone)
        .await
        .unwrap_or_else(|s| panic!("clone ({}): {:?}: {}", case.name, s.code(), s.message()))
        .into_inner()
        .volume
        .unwrap();
    let time = t.elapsed();
    let used = OpStats::of_mount(&mount)
        .expect("mountstats")
        .since(&before);
    for id in [dst.volume_id, src.volume_id] {
        ctl.delete_volume(csi::DeleteVolumeRequest {
            volume_id: id,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    Row {
        set,
        data,
        name: case.name,
        vers: case.vers,
        export: case.export.clone(),
        time,
        used,
    }
}

#[tokio::main]
async fn main() {
    if std::env::var_os("NFSVM").is_none() {
        println!(
            "SKIPPED: nfs_clone runs in the NFS guest: NFSVM_MEM=2G tests/e2e/nfsvm <this executable>"
        );
        return;
    }
    let server = std::env::var("NFS_SERVER").expect("NFS_SERVER");
    let plain = std::env::var("NFS_EXPORT").expect("NFS_EXPORT");
    let reflink = std::env::var("NFS_REFLINK_EXPORT").expect("NFS_REFLINK_EXPORT");
    let total_mib: u64 = std::env::var("BENCH_CLONE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let top = PathBuf::from("/tmp/bench-nfs-clone");
    let _ = std::fs::remove_dir_all(&top);
    std::fs::create_dir_all(&top).unwrap();
    // SAFETY: single-threaded at this point; only this process reads it.
    unsafe { std::env::set_var("NFS_CSI_TEST_LOG", "info") };
    let threads = std::env::var("BENCH_CLONE_THREADS").unwrap_or_else(|_| "4".into());
    let mut d = Driver::start(
        &top,
        &["--mode", "controller", "--snapshot-threads", &threads],
    )
    .await;

    let cases = [
        Case {
            name: "reflink (XFS)",
            vers: "4.1",
            export: reflink.clone(),
        },
        Case {
            name: "reflink (XFS)",
            vers: "4.2",
            export: reflink.clone(),
        },
        Case {
            name: "plain (tmpfs)",
            vers: "4.1",
            export: plain.clone(),
        },
        Case {
            name: "plain (tmpfs)",
            vers: "4.2",
            export: plain.clone(),
        },
    ];
    let sets = [
        ("mixed", total_mib, true),
        ("large files", total_mib, false),
    ];
    let mut rows = Vec::new();
    for set in sets {
        for case in &cases {
            let row = clone_case(&d, &server, case, set, rows.len()).await;
            let mut ops: Vec<_> = row.used.0.iter().filter(|(_, o)| o.ops > 0).collect();
            ops.sort_by_key(|(_, o)| std::cmp::Reverse(o.ops));
            let ops: Vec<String> = ops.iter().map(|(n, o)| format!("{n} {}", o.ops)).collect();
            eprintln!(
                "nfs_clone: {}, {} v{}: {:.2?}, {}; operations: {}",
                row.set,
                row.name,
                row.vers,
                row.time,
                row.used.summary(),
                ops.join(", ")
            );
            rows.push(row);
        }
    }

    println!(
        "\nNFS clone (CreateVolume from a volume) in the UML guest (1 CPU, loopback), --snapshot-threads {threads}"
    );
    println!(
        "data sets: mixed = {:.1} MiB in 272 files (8 large, 64 medium, 200 of 4 KiB); large files = {:.1} MiB in 8 files",
        rows[0].data as f64 / MIB as f64,
        rows[rows.len() - 1].data as f64 / MIB as f64
    );
    println!(
        "targets: reflink export over v4.2: < 10% of the v4.1 clone's time and READ+WRITE < 1% of the data; plain export over v4.2 (server-side COPY): READ+WRITE < 1% of the data"
    );
    println!(
        "{:<12} {:<14} {:>4} {:>8} {:>11} {:>11} {:>5} {:>5} {:>8}  verdict",
        "data set", "export", "NFS", "time s", "READ B", "WRITE B", "COPY", "CLONE", "vs v4.1"
    );
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| b.set == r.set && b.export == r.export && b.vers == "4.1")
            .map(|b| b.time)
            .unwrap_or(r.time);
        let ratio = r.time.as_secs_f64() / base.as_secs_f64().max(1e-9);
        let moved = r.used.read_bytes() + r.used.write_bytes();
        let verdict = if r.vers == "4.1" {
            "(baseline)".to_string()
        } else {
            let mut miss = Vec::new();
            if r.export == reflink && ratio >= 0.10 {
                miss.push(format!("time {:.1}% of v4.1's", ratio * 100.0));
            }
            if moved * 100 >= r.data {
                miss.push(format!("{moved} bytes over READ/WRITE"));
            }
            if miss.is_empty() {
                "met".to_string()
            } else {
                format!("MISS: {}", miss.join(", "))
            }
        };
        println!(
            "{:<12} {:<14} {:>4} {:>8.3} {:>11} {:>11} {:>5} {:>5} {:>7.1}%  {verdict}",
            r.set,
            r.name,
            r.vers,
            r.time.as_secs_f64(),
            r.used.read_bytes(),
            r.used.write_bytes(),
            r.used.ok_ops("COPY"),
            r.used.ok_ops("CLONE"),
            ratio * 100.0
        );
    }
    let st = d.terminate();
    assert!(st.success(), "driver exited with {st}");
    // the controller's kept mounts, then the work dir
    let _guard = MountGuard(top.clone());
}
