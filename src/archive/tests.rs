//! Tests of the archive layer as a whole, with their shared fixtures (a
//! sample tree with every kind of entry, a field-by-field tree comparison):
//! archive round trips, restores of good, corrupt and hostile archives,
//! clones, and their property tests. Tests of one part alone sit beside it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};

use super::restore::{SLACK_BYTES, WINDOW_LOG_MAX};
use super::tree::{self, Dest};
use super::*;
use crate::sys::safefs::DirFd;

/// A tree with every kind of entry the archive must keep.
pub(crate) fn sample_tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/text"), "hello ".repeat(10000)).unwrap();
    std::fs::write(root.join("top"), b"top").unwrap();
    std::fs::set_permissions(root.join("top"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::hard_link(root.join("top"), root.join("a/hard")).unwrap();
    symlink("/etc/passwd", root.join("abs-link")).unwrap();
    symlink("../top", root.join("a/rel-link")).unwrap();
    let f = File::create(root.join("sparse")).unwrap();
    f.set_len(64 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"end", (64 << 20) - 3).unwrap();
    f.write_all_at(b"start", 0).unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    let long = "x".repeat(120);
    std::fs::create_dir_all(root.join(&long).join(&long)).unwrap();
    std::fs::write(root.join(&long).join(&long).join("deep"), b"long path").unwrap();
    let ts = TimeSpecPair::at(1_600_000_000);
    ts.apply(&root.join("a/b/text"));
    // a user xattr where the filesystem has them
    let _ = xattr_set(&root.join("top"), "user.nfs-csi-test", b"v1");
}

struct TimeSpecPair(nix::sys::time::TimeSpec);
impl TimeSpecPair {
    fn at(secs: i64) -> Self {
        TimeSpecPair(nix::sys::time::TimeSpec::new(secs, 0))
    }
    fn apply(&self, p: &Path) {
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            p,
            &self.0,
            &self.0,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }
}

fn xattr_set(p: &Path, name: &str, value: &[u8]) -> bool {
    let cp = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    unsafe {
        nix::libc::setxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        ) == 0
    }
}

fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
    let cp = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        nix::libc::getxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

/// Compares two trees field by field.
pub(crate) fn assert_same_tree(a: &Path, b: &Path) {
    let mut count = 0;
    for entry in walk_paths(a) {
        let rel = entry.strip_prefix(a).unwrap();
        let (ma, mb) = (
            std::fs::symlink_metadata(&entry).unwrap(),
            std::fs::symlink_metadata(b.join(rel))
                .unwrap_or_else(|e| panic!("{} missing: {e}", rel.display())),
        );
        let r = rel.display();
        assert_eq!(ma.file_type(), mb.file_type(), "{r}");
        assert_eq!(ma.mode(), mb.mode(), "{r} mode");
        assert_eq!(ma.uid(), mb.uid(), "{r} uid");
        assert_eq!(ma.gid(), mb.gid(), "{r} gid");
        if !ma.is_dir() {
            assert_eq!(ma.mtime(), mb.mtime(), "{r} mtime");
        }
        if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&entry).unwrap(),
                std::fs::read_link(b.join(rel)).unwrap()
            );
        } else if ma.is_file() {
            assert_eq!(ma.len(), mb.len(), "{r} size");
            assert_eq!(
                std::fs::read(&entry).unwrap(),
                std::fs::read(b.join(rel)).unwrap(),
                "{r}"
            );
            // holes kept: not much more allocated than the source
            assert!(
                mb.blocks() <= ma.blocks() + 64,
                "{r}: {} blocks vs {}",
                mb.blocks(),
                ma.blocks()
            );
        }
        count += 1;
    }
    assert!(count > 5);
    // hard link kept as a link
    let (h1, h2) = (
        std::fs::metadata(b.join("top")).unwrap(),
        std::fs::metadata(b.join("a/hard")).unwrap(),
    );
    assert_eq!(h1.ino(), h2.ino(), "hard link restored as a copy");
    if let Some(v) = xattr_get(&a.join("top"), "user.nfs-csi-test") {
        assert_eq!(xattr_get(&b.join("top"), "user.nfs-csi-test"), Some(v));
    }
}

fn walk_paths(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn archive_round_trip_keeps_every_kind_of_entry() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample_tree(&src);
    std::fs::create_dir_all(t.path().join("store")).unwrap();
    let store = Store {
        dir: DirFd::open_root(&t.path().join("store")).unwrap(),
    };
    let job = Job::new("snap-1", "vol-1", 3);
    let m = create_archive(
        &DirFd::open_root(&src).unwrap(),
        &store,
        &job,
        ArchiveOptions {
            level: 3,
            threads: 2,
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(
        m.archive_bytes < 2 << 20,
        "sparse data inflated: {}",
        m.archive_bytes
    );
    assert_eq!(m.size_bytes, 60000 + 3 + (64 << 20) + 9);
    assert!(store.manifest().unwrap().is_some());
    assert!(store.dir.read_small(JOB).unwrap().is_none());
    // restore
    let dst = t.path().join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    restore(
        &store,
        &m,
        DirFd::open_root(&dst).unwrap(),
        RestoreOptions::default(),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_same_tree(&src, &dst);
    // a standard archive: GNU tar lists it
    let out = std::process::Command::new("tar")
        .args(["--zstd", "-tvf"])
        .arg(t.path().join("store").join(ARCHIVE))
        .output();
    if let Ok(out) = out
        && out.status.success()
    {
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            s.contains("a/b/text") && s.contains("abs-link -> /etc/passwd"),
            "{s}"
        );
    }
}

#[test]
fn corrupt_archive_restores_nothing() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    std::fs::create_dir_all(t.path().join("store")).unwrap();
    let store = Store {
        dir: DirFd::open_root(&t.path().join("store")).unwrap(),
    };
    let mut m = create_archive(
        &DirFd::open_root(&src).unwrap(),
        &store,
        &Job::new("s", "v", 1),
        ArchiveOptions {
            level: 1,
            threads: 1,
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    m.sha256 = "00".repeat(32);
    let dst = t.path().join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    let err = restore(
        &store,
        &m,
        DirFd::open_root(&dst).unwrap(),
        RestoreOptions::default(),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Checksum { .. }), "{err}");
    assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);
}

#[test]
fn clone_keeps_every_kind_of_entry() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample_tree(&src);
    let dst = t.path().join("dst");
    std::fs::create_dir_all(&dst).unwrap();
    let (files, _) = clone_tree(
        &DirFd::open_root(&src).unwrap(),
        Dest::new(DirFd::open_root(&dst).unwrap(), tree::Policy::default()),
        4,
        &AtomicBool::new(false),
    )
    .unwrap();
    assert!(files >= 8, "{files}");
    assert_same_tree(&src, &dst);
}

/// A store holding the archive of `src`, in `t`.
fn archived(t: &Path, src: &Path) -> (Store, Manifest) {
    std::fs::create_dir_all(t.join("store")).unwrap();
    let store = Store {
        dir: DirFd::open_root(&t.join("store")).unwrap(),
    };
    let m = create_archive(
        &DirFd::open_root(src).unwrap(),
        &store,
        &Job::new("s", "v", 1),
        ArchiveOptions {
            level: 1,
            threads: 1,
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    (store, m)
}

fn fresh(t: &Path, name: &str) -> (std::path::PathBuf, DirFd) {
    let p = t.join(name);
    std::fs::create_dir_all(&p).unwrap();
    let d = DirFd::open_root(&p).unwrap();
    (p, d)
}

#[test]
fn restore_is_bounded_by_the_capacity_and_removes_what_it_wrote() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a"), vec![1u8; 4096]).unwrap();
    std::fs::write(src.join("b"), vec![2u8; 4096]).unwrap();
    let (store, m) = archived(t.path(), &src);
    let (dst, d) = fresh(t.path(), "dst");
    let opts = RestoreOptions {
        capacity: 6000,
        ..Default::default()
    };
    let err = restore(&store, &m, d, opts, &AtomicBool::new(false)).unwrap_err();
    assert!(
        matches!(err, Error::Tree(tree::Error::OverLimit { limit: 6000, .. })),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&dst).unwrap().count(),
        0,
        "first file kept"
    );
    // the capacity that holds it
    let (dst, d) = fresh(t.path(), "dst2");
    let opts = RestoreOptions {
        capacity: 8192,
        ..Default::default()
    };
    restore(&store, &m, d, opts, &AtomicBool::new(false)).unwrap();
    assert_eq!(std::fs::read(dst.join("b")).unwrap(), vec![2u8; 4096]);
    // a manifest that understates the data: bounded by it plus slack
    let mut small = m.clone();
    small.size_bytes = 10;
    small.file_count = 2;
    assert_eq!(restore_limits(&small, 0), (10 + SLACK_BYTES, 2 + 16));
    assert_eq!(restore_limits(&small, 5).0, 5);
}

/// A tar stream of one `size`-byte file of non-zero data.
fn one_big_file(size: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    b.append_data(&mut h, "big", std::io::repeat(7).take(size))
        .unwrap();
    b.into_inner().unwrap()
}

/// Reads `inner`, raising `cancel` once `after` bytes were read.
struct CancelAfter<'a> {
    inner: &'a [u8],
    read: u64,
    after: u64,
    cancel: &'a AtomicBool,
}

impl Read for CancelAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read >= self.after {
            self.cancel.store(true, Ordering::Relaxed);
        }
        Ok(n)
    }
}

#[test]
fn cancel_stops_a_restore_inside_a_large_entry() {
    let t = tempfile::tempdir().unwrap();
    let tar = one_big_file(64 << 20);
    let cancel = AtomicBool::new(false);
    let mut src = CancelAfter {
        inner: &tar,
        read: 0,
        after: 8 << 20,
        cancel: &cancel,
    };
    let (_, d) = fresh(t.path(), "dst");
    let err = extract(&mut src, Dest::new(d, tree::Policy::default()), &cancel).unwrap_err();
    assert!(matches!(err, Error::Tree(tree::Error::Cancelled)), "{err}");
    assert!(
        src.read < 16 << 20,
        "read {} MiB of 64 after the cancel at 8",
        src.read >> 20
    );
}

#[test]
fn directory_modes_and_times_survive_what_is_written_inside() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in ["a/b/c", "a/x", "z"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("a/b/c/f"), b"f").unwrap();
    std::fs::write(src.join("a/x/g"), b"g").unwrap();
    let dirs = ["a", "a/b", "a/b/c", "a/x", "z"];
    for (i, d) in dirs.iter().enumerate() {
        TimeSpecPair::at(1_500_000_000 + i as i64).apply(&src.join(d));
    }
    std::fs::set_permissions(src.join("a/b"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let (store, m) = archived(t.path(), &src);
    let (dst, d) = fresh(t.path(), "dst");
    restore(
        &store,
        &m,
        d,
        RestoreOptions::default(),
        &AtomicBool::new(false),
    )
    .unwrap();
    for d in dirs {
        let (a, b) = (
            std::fs::metadata(src.join(d)).unwrap(),
            std::fs::metadata(dst.join(d)).unwrap(),
        );
        assert_eq!(a.mtime(), b.mtime(), "{d} mtime");
        assert_eq!(a.mode(), b.mode(), "{d} mode");
    }
}

#[test]
fn system_xattrs_are_restored_and_cloned_only_when_allowed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED system_xattrs_are_restored_and_cloned_only_when_allowed: needs root");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    if !xattr_set(&src.join("f"), "trusted.nfs-csi-test", b"t") {
        eprintln!(
            "SKIPPED system_xattrs_are_restored_and_cloned_only_when_allowed: no trusted xattrs here"
        );
        return;
    }
    let user = xattr_set(&src.join("f"), "user.nfs-csi-test", b"u");
    let (store, m) = archived(t.path(), &src);
    for allowed in [false, true] {
        let policy = tree::Policy {
            allow_devices: false,
            system_xattrs: allowed,
        };
        let (r, d) = fresh(t.path(), &format!("restored-{allowed}"));
        let opts = RestoreOptions {
            policy,
            capacity: 0,
        };
        restore(&store, &m, d, opts, &AtomicBool::new(false)).unwrap();
        let (c, d) = fresh(t.path(), &format!("cloned-{allowed}"));
        clone_tree(
            &DirFd::open_root(&src).unwrap(),
            Dest::new(d, policy),
            2,
            &AtomicBool::new(false),
        )
        .unwrap();
        for out in [r, c] {
            let f = out.join("f");
            assert_eq!(
                xattr_get(&f, "trusted.nfs-csi-test").is_some(),
                allowed,
                "{}",
                f.display()
            );
            if user {
                assert_eq!(xattr_get(&f, "user.nfs-csi-test"), Some(b"u".to_vec()));
            }
        }
    }
}

/// A small archive (as a tar stream) with every kind of entry.
fn small_tar() -> &'static [u8] {
    static TAR: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    TAR.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/e/f"), b"some text").unwrap();
        std::fs::hard_link(root.join("d/e/f"), root.join("h")).unwrap();
        symlink("d/e/f", root.join("l")).unwrap();
        let long = "y".repeat(130);
        std::fs::write(root.join(&long), b"long name").unwrap();
        let f = File::create(root.join("sparse")).unwrap();
        f.set_len(1 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        for i in 0..6u64 {
            f.write_all_at(b"x", i * 150_000).unwrap();
        }
        let _ = xattr_set(&root.join("d/e/f"), "user.k", b"v\n=");
        let (_, _, tar) = write_tar(
            &DirFd::open_root(root).unwrap(),
            Vec::new(),
            &AtomicBool::new(false),
        )
        .unwrap();
        tar
    })
}

/// Extracts `data` into a fresh directory with small limits: it must
/// restore or fail, never panic or run away.
fn extract_any(data: &[u8]) -> Result<(u64, u64)> {
    let t = tempfile::tempdir().unwrap();
    let (_, d) = fresh(t.path(), "dst");
    let dest = Dest::new(d, tree::Policy::default()).limits(64 << 20, 1000);
    extract(&mut &data[..], dest, &AtomicBool::new(false))
}

#[test]
fn the_small_archive_restores_and_its_bounds_hold() {
    extract_any(small_tar()).unwrap();
    let mut pax = Vec::new();
    for (key, size) in [
        (tar::EntryType::XHeader, reader::MAX_PAX + 1),
        (tar::EntryType::GNULongName, 5000),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(key);
        h.set_size(size);
        h.set_cksum();
        pax.clear();
        pax.extend_from_slice(h.as_bytes());
        pax.resize(pax.len() + size as usize + 1024, b'a');
        let err = extract_any(&pax).unwrap_err();
        assert!(matches!(err, Error::Refused { .. }), "{err}");
    }
    // PAX headers piling up for one entry (their xattrs would be kept)
    let mut piled = Vec::new();
    for _ in 0..2 {
        let rec = b"12 uid=1000\n";
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(rec.len() as u64);
        h.set_cksum();
        piled.extend_from_slice(h.as_bytes());
        piled.extend_from_slice(rec);
        piled.resize(piled.len().div_ceil(512) * 512, 0);
    }
    piled.extend_from_slice(small_tar());
    let err = extract_any(&piled).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    // a bad header checksum, a truncated entry: corrupt
    let mut bad = small_tar().to_vec();
    bad[150] ^= 0x10;
    assert!(matches!(extract_any(&bad), Err(Error::Corrupt { .. })));
    let cut = &small_tar()[..2048];
    let err = extract_any(cut).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

#[test]
fn a_zstd_window_beyond_the_cap_is_refused() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("store")).unwrap();
    let store = Store {
        dir: DirFd::open_root(&t.path().join("store")).unwrap(),
    };
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(WINDOW_LOG_MAX + 2))
        .unwrap();
    enc.write_all(small_tar()).unwrap();
    let data = enc.finish().unwrap();
    std::fs::write(t.path().join("store").join(ARCHIVE), &data).unwrap();
    let m = Manifest {
        name: "s".into(),
        source_volume_id: "v".into(),
        created_unix: 0,
        created_nanos: 0,
        size_bytes: 1 << 20,
        file_count: 100,
        archive_bytes: data.len() as u64,
        sha256: hex::encode(Sha256::digest(&data)),
        compression: "zstd".into(),
        level: 1,
        group_snapshot_id: String::new(),
    };
    let (_, d) = fresh(t.path(), "dst");
    let err = restore(
        &store,
        &m,
        d,
        RestoreOptions::default(),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = extract_any(&data);
        }

        #[test]
        fn mutated_archives_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut data = small_tar().to_vec();
            for (i, b) in flips {
                let i = i.index(data.len());
                data[i] = b;
            }
            if truncate {
                data.truncate(cut.index(data.len()));
            }
            let _ = extract_any(&data);
        }

        #[test]
        fn arbitrary_archive_files_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let t = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(t.path().join("store")).unwrap();
            let store = Store { dir: DirFd::open_root(&t.path().join("store")).unwrap() };
            std::fs::write(t.path().join("store").join(ARCHIVE), &data).unwrap();
            let m = Manifest {
                name: "s".into(), source_volume_id: "v".into(), created_unix: 0,
                created_nanos: 0, size_bytes: 1 << 20, file_count: 100,
                archive_bytes: data.len() as u64,
                sha256: hex::encode(Sha256::digest(&data)),
                compression: "zstd".into(), level: 1, group_snapshot_id: String::new(),
            };
            let (dst, d) = fresh(t.path(), "dst");
            let res = restore(&store, &m, d, RestoreOptions::default(), &AtomicBool::new(false));
            if res.is_err() {
                prop_assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0);
            }
        }
    }
}
