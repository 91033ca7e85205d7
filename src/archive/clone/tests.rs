//! The clone's file copy on this host's filesystems: whichever way the
//! kernel copies, the content is equal and holes stay holes; fakes of the
//! kernel calls drive the fallbacks (copy_file_range refused mid-file, a
//! filesystem that reports no holes, an I/O error).

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::errno::Errno;

use super::*;
use crate::archive::tree::Policy;

const MIB: u64 = 1 << 20;
/// `dense`: data with no zero page in it.
const DENSE: u64 = 3 * MIB + 123;
/// `sparse`: 40 MiB with 1 MiB of data at 0 and at 16 MiB, 3 bytes at the end.
const SPARSE: u64 = 40 * MIB;
const SMALL: &[u8] = b"small";

/// A source tree: a dense file, a sparse one, an empty one, a small one.
fn source(root: &Path) {
    std::fs::create_dir_all(root.join("dir")).unwrap();
    let mut x: u32 = 12345;
    let dense: Vec<u8> = (0..DENSE)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8 | 1
        })
        .collect();
    std::fs::write(root.join("dense"), &dense).unwrap();
    let f = File::create(root.join("sparse")).unwrap();
    f.set_len(SPARSE).unwrap();
    f.write_all_at(&dense[..MIB as usize], 0).unwrap();
    f.write_all_at(&dense[MIB as usize..2 * MIB as usize], 16 * MIB)
        .unwrap();
    f.write_all_at(b"end", SPARSE - 3).unwrap();
    f.sync_all().unwrap();
    File::create(root.join("empty")).unwrap();
    std::fs::write(root.join("dir/small"), SMALL).unwrap();
}

/// Clones `src` into a new `dst` with `calls`: the outcome and the counts.
fn clone_into(src: &Path, dst: &Path, calls: &Calls<'_>) -> (Result<(u64, u64)>, Copied) {
    std::fs::create_dir_all(dst).unwrap();
    let how = Copied::default();
    let res = clone_with(
        &DirFd::open_root(src).unwrap(),
        Dest::new(DirFd::open_root(dst).unwrap(), Policy::default()),
        2,
        &AtomicBool::new(false),
        calls,
        &how,
    );
    (res, how)
}

/// Same content file by file, and the sparse file's holes kept.
fn assert_copied(src: &Path, dst: &Path) {
    for f in ["dense", "sparse", "empty", "dir/small"] {
        let (a, b) = (
            std::fs::read(src.join(f)).unwrap(),
            std::fs::read(dst.join(f)).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{f}: size");
        assert!(a == b, "{f}: content differs");
    }
    let used = std::fs::metadata(dst.join("sparse")).unwrap().blocks() * 512;
    assert!(
        used <= 4 * MIB,
        "the sparse file's holes were filled: {used} bytes allocated for 2 MiB of data"
    );
}

fn n(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn refuse_ficlone(_: &File, _: &File) -> nix::Result<()> {
    Err(Errno::EOPNOTSUPP)
}

#[test]
fn the_kernel_copies_without_reading_and_keeps_holes() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    source(&src);
    let (res, how) = clone_into(&src, &dst, &Calls::REAL);
    let (files, _) = res.unwrap();
    assert_eq!(files, 4);
    assert_copied(&src, &dst);
    // Within one filesystem nothing goes through read/write: the files are
    // reflinked (XFS, btrfs) or copied in the kernel (ext4, tmpfs).
    assert_eq!(n(&how.read_write), 0, "{how:?}");
    let data = DENSE + 2 * MIB + 3 + SMALL.len() as u64;
    assert!(
        (n(&how.reflinked) == 3 && n(&how.ranged) == 0)
            || (n(&how.reflinked) == 0 && n(&how.ranged) >= data && n(&how.ranged) < data + MIB),
        "{how:?}"
    );
}

#[test]
fn a_refused_copy_file_range_falls_back_to_read_write_where_it_stopped() {
    for errno in [
        Errno::EXDEV,
        Errno::EOPNOTSUPP,
        Errno::ENOSYS,
        Errno::EINVAL,
    ] {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("src"), t.path().join("dst"));
        source(&src);
        // copies the first MiB of each file, then refuses
        let range = move |s: &File, i: i64, d: &File, o: i64, len: usize| {
            if (i as u64) < MIB {
                copy_range(s, i, d, o, len.min((MIB - i as u64) as usize))
            } else {
                Err(errno)
            }
        };
        let calls = Calls {
            ficlone: &refuse_ficlone,
            copy_range: &range,
            extents: &extents,
            reports_holes: &reports_holes,
        };
        let (res, how) = clone_into(&src, &dst, &calls);
        res.unwrap();
        assert_copied(&src, &dst);
        assert_eq!(n(&how.reflinked), 0);
        assert_eq!(n(&how.ranged), 2 * MIB + SMALL.len() as u64, "{errno}");
        // the rest of `dense`, the second extent and the last page of `sparse`
        let rest = DENSE - MIB + MIB + 3;
        let rw = n(&how.read_write);
        assert!(rw >= rest && rw <= rest + 8192, "{errno}: {rw}");
    }
}

#[test]
fn a_sparse_file_whose_holes_are_not_reported_is_read_for_them() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    source(&src);
    // as on NFSv3 or v4.1 (no SEEK): one extent, the whole file
    let blind = |_: &File, size: i64| Ok(vec![(0, size)]);
    let no_holes = |_: &File, _: i64| false;
    let calls = Calls {
        ficlone: &refuse_ficlone,
        copy_range: &copy_range,
        extents: &blind,
        reports_holes: &no_holes,
    };
    let (res, how) = clone_into(&src, &dst, &calls);
    res.unwrap();
    assert_copied(&src, &dst);
    assert_eq!(n(&how.ranged), DENSE + SMALL.len() as u64, "{how:?}");
    assert_eq!(n(&how.read_write), SPARSE, "{how:?}");
}

#[test]
fn a_file_in_one_extent_smaller_than_its_size_where_holes_are_reported_is_ranged() {
    // as a compressed file (ZFS, btrfs) over NFSv4.2: one extent, fewer
    // blocks than its size, on a filesystem that reports holes: copy_file_range
    // (a server-side COPY), not read/write
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    source(&src);
    let one = |_: &File, size: i64| Ok(vec![(0, size)]);
    let calls = Calls {
        ficlone: &refuse_ficlone,
        copy_range: &copy_range,
        extents: &one,
        reports_holes: &reports_holes,
    };
    let (res, how) = clone_into(&src, &dst, &calls);
    res.unwrap();
    for f in ["dense", "sparse", "dir/small"] {
        assert!(std::fs::read(src.join(f)).unwrap() == std::fs::read(dst.join(f)).unwrap());
    }
    assert_eq!(n(&how.read_write), 0, "{how:?}");
    assert_eq!(
        n(&how.ranged),
        DENSE + SPARSE + SMALL.len() as u64,
        "{how:?}"
    );
}

#[test]
fn holes_are_reported_here_and_the_probe_leaves_the_size() {
    let t = tempfile::tempdir().unwrap();
    let f = File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(t.path().join("probe"))
        .unwrap();
    // ext4, tmpfs, XFS, btrfs all report holes
    assert!(reports_holes(&f, 8 * MIB as i64));
    assert_eq!(f.metadata().unwrap().len(), 8 * MIB);
}

#[test]
fn a_reflink_copies_the_whole_file_and_nothing_else_runs() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    source(&src);
    // a reflink that "works" by copying, to see that nothing follows it
    let reflink = |s: &File, d: &File| {
        let len = s.metadata().map_err(|_| Errno::EIO)?.len();
        let mut off = 0;
        while off < len {
            off += copy_range(s, off as i64, d, off as i64, (len - off) as usize)? as u64;
        }
        Ok(())
    };
    let refuse = |_: &File, _: i64, _: &File, _: i64, _: usize| Err(Errno::EIO);
    let calls = Calls {
        ficlone: &reflink,
        copy_range: &refuse,
        extents: &extents,
        reports_holes: &reports_holes,
    };
    let (res, how) = clone_into(&src, &dst, &calls);
    res.unwrap();
    for f in ["dense", "sparse", "dir/small"] {
        assert!(std::fs::read(src.join(f)).unwrap() == std::fs::read(dst.join(f)).unwrap());
    }
    assert_eq!(
        (n(&how.reflinked), n(&how.ranged), n(&how.read_write)),
        (3, 0, 0)
    );
}

#[test]
fn other_copy_errors_fail_the_clone_with_the_path() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    source(&src);
    let broken = |_: &File, _: i64, _: &File, _: i64, _: usize| Err(Errno::EIO);
    let calls = Calls {
        ficlone: &refuse_ficlone,
        copy_range: &broken,
        extents: &extents,
        reports_holes: &reports_holes,
    };
    let (res, _) = clone_into(&src, &dst, &calls);
    match res {
        Err(Error::Io { what, source }) => {
            assert!(what.starts_with("copy "), "{what}");
            assert_eq!(source.raw_os_error(), Some(Errno::EIO as i32));
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[test]
fn extents_follow_the_data() {
    let t = tempfile::tempdir().unwrap();
    source(t.path());
    let f = File::open(t.path().join("sparse")).unwrap();
    let e = extents(&f, SPARSE as i64).unwrap();
    let covered: i64 = e.iter().map(|(a, b)| b - a).sum();
    // ext4, tmpfs, XFS report each data extent; a filesystem that does not
    // gives the whole file
    assert!(
        covered == SPARSE as i64 || (e.len() == 3 && covered <= 2 * MIB as i64 + 65536),
        "{e:?}"
    );
    assert!(e.windows(2).all(|w| w[0].1 <= w[1].0), "{e:?}");
    let dense = File::open(t.path().join("dense")).unwrap();
    assert_eq!(
        extents(&dense, DENSE as i64).unwrap(),
        vec![(0, DENSE as i64)]
    );
}

/// On XFS with reflinks (a loop device, root and xfsprogs needed), every
/// file is a reflink: nothing else is called.
#[test]
fn on_xfs_with_reflinks_every_file_is_a_reflink() {
    let name = "on_xfs_with_reflinks_every_file_is_a_reflink";
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED {name}: needs root (mounts an XFS loop device)");
        return;
    }
    let Some(mkfs) = ["/usr/sbin/mkfs.xfs", "/sbin/mkfs.xfs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("SKIPPED {name}: no mkfs.xfs (xfsprogs; tests/e2e/nfsvm --install installs it)");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let (img, mnt) = (t.path().join("xfs.img"), t.path().join("mnt"));
    File::create(&img).unwrap().set_len(512 * MIB).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let run = |prog: &str, args: &[&std::ffi::OsStr]| {
        std::process::Command::new(prog)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !run(
        mkfs,
        &[
            "-q".as_ref(),
            "-m".as_ref(),
            "reflink=1".as_ref(),
            img.as_os_str(),
        ],
    ) {
        eprintln!("SKIPPED {name}: mkfs.xfs -m reflink=1 failed");
        return;
    }
    if !run(
        "mount",
        &[
            "-o".as_ref(),
            "loop".as_ref(),
            img.as_os_str(),
            mnt.as_os_str(),
        ],
    ) {
        eprintln!("SKIPPED {name}: cannot mount an XFS loop device here");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(&mnt);
    let (src, dst) = (mnt.join("src"), mnt.join("dst"));
    source(&src);
    let (res, how) = clone_into(&src, &dst, &Calls::REAL);
    res.unwrap();
    assert_copied(&src, &dst);
    assert_eq!(
        (n(&how.reflinked), n(&how.ranged), n(&how.read_write)),
        (3, 0, 0),
        "{how:?}"
    );
}
