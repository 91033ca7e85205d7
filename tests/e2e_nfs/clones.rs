//! Scenario `clone_*`: a clone (CreateVolume with a volume as its content
//! source) stays on the server where NFS lets it. The source volume is
//! filled on the server's side (so the client has none of it cached), then
//! cloned; the controller's mount of the export counts its operations in
//! `/proc/self/mountstats`, read before and after:
//! * `clone_reflink_v42`: the reflink export (XFS) over NFSv4.2: CLONE
//!   operations, no READ/WRITE bytes;
//! * `clone_copy_v42`: the tmpfs export over NFSv4.2: server-side COPY
//!   operations, no READ/WRITE bytes;
//! * `clone_reflink_v41`: the reflink export over NFSv4.1 (no COPY or CLONE
//!   in 4.1): the data goes through READ and WRITE, which proves the counters
//!   read above are the clone's.
//!
//! Every case checks that the clone equals its source and that the sparse
//! file's holes are still holes on the server.

use std::os::unix::fs::{FileExt, MetadataExt};

use super::mountstats::OpStats;
use super::*;

const MIB: u64 = 1 << 20;

/// The source volume's content, written on the server: a 24 MiB file, four
/// 2 MiB files in a directory, a 64 MiB sparse file with 2 MiB of data, a
/// small file and a symlink. Returns the bytes of data (holes aside).
fn fill(dir: &Path) -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = |len: u64| -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x as u8) | 1
            })
            .collect()
    };
    std::fs::create_dir_all(dir.join("parts")).unwrap();
    std::fs::write(dir.join("big"), data(24 * MIB)).unwrap();
    for i in 0..4 {
        std::fs::write(dir.join(format!("parts/part-{i}")), data(2 * MIB)).unwrap();
    }
    let f = std::fs::File::create(dir.join("sparse")).unwrap();
    f.set_len(64 * MIB).unwrap();
    f.write_all_at(&data(MIB), 0).unwrap();
    f.write_all_at(&data(MIB), 32 * MIB).unwrap();
    f.sync_all().unwrap();
    std::fs::write(dir.join("parts/small"), b"small file").unwrap();
    std::os::unix::fs::symlink("parts/small", dir.join("link")).unwrap();
    24 * MIB + 8 * MIB + 2 * MIB + 10
}

/// The clone equals its source, file by file; holes stayed holes.
fn assert_same(src: &Path, dst: &Path) {
    for f in [
        "big",
        "parts/part-0",
        "parts/part-3",
        "parts/small",
        "sparse",
    ] {
        let (a, b) = (
            std::fs::read(src.join(f)).unwrap(),
            std::fs::read(dst.join(f)).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{f}: size");
        assert!(a == b, "{f}: the clone's content differs");
    }
    assert_eq!(
        std::fs::read_link(dst.join("link")).unwrap(),
        Path::new("parts/small")
    );
    let used = std::fs::metadata(dst.join("sparse")).unwrap().blocks() * 512;
    assert!(
        used <= 4 * MIB,
        "the sparse file's holes were filled: {used} bytes allocated for 2 MiB of data"
    );
}

async fn clone_on_server(nfs: Nfs, reflink: bool) {
    let scenario = if reflink {
        "clone_reflink"
    } else {
        "clone_copy"
    };
    let export = env(if reflink {
        "NFS_REFLINK_EXPORT"
    } else {
        "NFS_EXPORT"
    });
    let mut rig = Rig::on_export(scenario, nfs, PathBuf::from(export));
    rig.add_controller().await;
    let tag = nfs.tag();
    let src_name = format!("pvc-e2e-{scenario}-{tag}-src");
    let dst_name = format!("pvc-e2e-{scenario}-{tag}-dst");
    rig.junk(&src_name);
    rig.junk(&dst_name);
    let src = rig.create(&src_name, &[]).await;
    let data = fill(&rig.server_path(&src_name));
    rig.say(format!(
        "source filled on the server: {data} bytes of data, 64 MiB sparse file"
    ));

    let mount = rig.controller_export_mount();
    let stats = || {
        OpStats::of_mount(&mount.mount_point).unwrap_or_else(|| {
            panic!(
                "no mountstats for the controller's mount {}",
                mount.mount_point.display()
            )
        })
    };
    let before = stats();
    let mut req = rig.create_request(&dst_name, &[]);
    req.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: src.volume_id.clone(),
            },
        )),
    });
    let d = rig.ctrl();
    let (r, took) = timed(&format!("CreateVolume {dst_name} (clone)"), CALL, async {
        d.controller().await.create_volume(req).await
    })
    .await;
    let dst = ok("CreateVolume (clone)", r)
        .volume
        .expect("CreateVolume returned no volume");
    let used = stats().since(&before);
    rig.say(format!(
        "clone of {data} bytes over {tag} in {took:.2?}: {}",
        used.summary()
    ));
    assert_same(&rig.server_path(&src_name), &rig.server_path(&dst_name));

    let (read, written) = (used.read_bytes(), used.write_bytes());
    match nfs {
        Nfs::V42 => {
            let (op, what) = if reflink {
                (
                    "CLONE",
                    "a reflink export over NFSv4.2 clones on the server",
                )
            } else {
                ("COPY", "a plain export over NFSv4.2 copies on the server")
            };
            assert!(
                used.ok_ops(op) > 0,
                "{what}: no {op} operation was sent: {}",
                used.summary()
            );
            assert!(
                read + written < data / 20,
                "{what}: {read} bytes read and {written} written over the network for {data} bytes of data: {}",
                used.summary()
            );
        }
        _ => {
            assert!(
                read >= data && written >= data,
                "without COPY/CLONE the data goes through READ and WRITE: {}",
                used.summary()
            );
            assert_eq!(used.op("COPY").ops + used.op("CLONE").ops, 0);
        }
    }
    rig.delete(&dst.volume_id).await;
    rig.delete(&src.volume_id).await;
    rig.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_reflink_v42() {
    if in_guest("clone_reflink_v42") {
        clone_on_server(Nfs::V42, true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_copy_v42() {
    if in_guest("clone_copy_v42") {
        clone_on_server(Nfs::V42, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_reflink_v41() {
    if in_guest("clone_reflink_v41") {
        clone_on_server(Nfs::V41, true).await;
    }
}
