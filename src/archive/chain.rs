//! Chains of archives in one store: choosing a new snapshot's parent, the
//! chain a restore applies, and deletions that keep what later snapshots
//! need.
//!
//! A snapshot deleted while another one names it as parent (in its
//! manifest, or in its `job.json` while it is written) is tombstoned: a
//! `deleted` file is written atomically into its directory, and from then
//! on every RPC sees it as absent, but its archive and index stay. Once no
//! snapshot names it, it is removed (manifest and job first, the tombstone
//! last), and so on up its chain. A crash at any point leaves either a
//! snapshot as it was, or one tombstoned, which the next deletion in the
//! store collects ([`collect`]).
//!
//! Choosing a parent and deleting run under one lock ([`lock`]), so a
//! parent cannot be removed between being chosen and being named in the
//! new snapshot's `job.json`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::sync::{Mutex, MutexGuard};

use super::{DELETED, Error, JOB, MANIFEST, Manifest, Result, Store};
use crate::sys::safefs::DirFd;

/// Most archives in one chain a restore follows.
pub const MAX_CHAIN: u32 = 1000;
/// Default `fullEvery`: a full archive, then up to 7 incremental ones.
pub const FULL_EVERY: u32 = 8;

static LOCK: Mutex<()> = Mutex::new(());

/// The lock under which parents are chosen and snapshots deleted.
pub fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `key` names a snapshot directory (one plain component).
fn plain(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 255
        && !key.starts_with('.')
        && !key.contains('/')
        && !key.contains('\0')
}

/// The directory of the snapshot `key` in `snaps`, if there.
pub fn open_snapshot(snaps: &DirFd, key: &str) -> Result<Option<DirFd>> {
    if !plain(key) {
        return Err(Error::Corrupt {
            reason: format!("a parent snapshot key {}", crate::sys::text::quote(key)),
        });
    }
    Ok(snaps.subdir(key, false)?)
}

/// The archives a restore of `manifest` applies, oldest (the full one)
/// first, each with its directory. Checks that each parent is there, of
/// the same volume, one step lower in the chain, down to a full archive.
pub fn resolve(store: &Store, manifest: &Manifest) -> Result<Vec<(DirFd, Manifest)>> {
    let mut out = vec![(store.dir.try_clone()?, manifest.clone())];
    let bad = |why: String| Error::Corrupt { reason: why };
    if manifest.chain > MAX_CHAIN {
        return Err(bad(format!("a chain of {} archives", manifest.chain)));
    }
    let mut cur = manifest.clone();
    while let Some(key) = cur.parent.clone() {
        let snaps = store
            .snaps
            .as_ref()
            .ok_or_else(|| bad("an incremental archive outside a store".into()))?;
        let dir = open_snapshot(snaps, &key)?
            .ok_or_else(|| bad(format!("parent snapshot {key} of {} is missing", cur.name)))?;
        let parent = Store { dir, snaps: None };
        let m = parent.manifest()?.ok_or_else(|| {
            bad(format!(
                "parent snapshot {key} of {} is not complete",
                cur.name
            ))
        })?;
        if m.chain.checked_add(1) != Some(cur.chain) || m.source_volume_id != cur.source_volume_id {
            return Err(bad(format!(
                "parent snapshot {key} does not belong to the chain of {}",
                cur.name
            )));
        }
        out.push((parent.dir, m.clone()));
        cur = m;
    }
    if cur.chain != 0 {
        return Err(bad(format!(
            "the chain of {} has no full archive",
            manifest.name
        )));
    }
    out.reverse();
    Ok(out)
}

/// What one snapshot directory holds, for the store-wide decisions.
struct Entry {
    key: String,
    deleted: bool,
    parent: Option<String>,
    manifest: Option<Manifest>,
}

fn entries(snaps: &DirFd) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for name in snaps.list()? {
        let Ok(key) = name.into_string() else {
            continue;
        };
        if !plain(&key) {
            continue;
        }
        let Some(dir) = snaps.subdir(&key, false)? else {
            continue;
        };
        let store = Store { dir, snaps: None };
        let deleted = store.deleted()?;
        // An unreadable record names no parent: the worst is an ancestor
        // freed early, never a snapshot kept forever.
        let manifest = store.manifest().unwrap_or_else(|e| {
            tracing::warn!(snapshot = %key, error = %e, "unreadable manifest");
            None
        });
        let parent = match &manifest {
            Some(m) => m.parent.clone(),
            None => store.job().ok().flatten().and_then(|j| j.parent),
        };
        out.push(Entry {
            key,
            deleted,
            parent,
            manifest,
        });
    }
    Ok(out)
}

/// The parent and chain position of a new snapshot of `source`: the newest
/// ready snapshot of the same volume in this store, unless the chain would
/// reach `full_every` archives or its incremental archives already outgrow
/// its full one. Call under [`lock`].
pub fn choose_parent(
    snaps: &DirFd,
    source: &str,
    full_every: u32,
) -> Result<Option<(String, u32)>> {
    let all = entries(snaps)?;
    let newest = all
        .iter()
        .filter(|e| !e.deleted)
        .filter_map(|e| e.manifest.as_ref().map(|m| (e, m)))
        .filter(|(_, m)| m.source_volume_id == source && m.index.is_some())
        .max_by_key(|(e, m)| (m.created_unix, m.created_nanos, e.key.clone()));
    let Some((entry, m)) = newest else {
        return Ok(None);
    };
    let chain = m.chain.saturating_add(1);
    if chain >= full_every.min(MAX_CHAIN) {
        return Ok(None);
    }
    // The bytes of the chain's incremental archives against its full one.
    let mut added = 0u64;
    let mut cur = m;
    let mut steps = 0;
    while let Some(p) = &cur.parent {
        added = added.saturating_add(cur.archive_bytes);
        let Some(pm) = all
            .iter()
            .find(|e| &e.key == p)
            .and_then(|e| e.manifest.as_ref())
        else {
            return Ok(None);
        };
        cur = pm;
        steps += 1;
        if steps > MAX_CHAIN {
            return Ok(None);
        }
    }
    if added > cur.archive_bytes {
        return Ok(None);
    }
    Ok(Some((entry.key.clone(), chain)))
}

/// Removes a snapshot's directory in an order that a crash cannot turn
/// into a listed, incomplete snapshot: tombstone, manifest and job, the
/// rest, the tombstone last.
fn remove(snaps: &DirFd, key: &str) -> Result<()> {
    let Some(dir) = snaps.subdir(key, false)? else {
        return Ok(());
    };
    dir.write_atomic(DELETED, b"")?;
    dir.remove_file(MANIFEST)?;
    dir.remove_file(JOB)?;
    for name in dir.list()? {
        if name != DELETED {
            dir.remove_tree(&name)?;
        }
    }
    snaps.remove_tree(OsStr::new(key))?;
    Ok(())
}

/// What a deletion did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    /// Removed (with the tombstoned ancestors it freed).
    Removed,
    /// Tombstoned: later snapshots still need its archive.
    Kept,
}

/// Deletes the snapshot `key` (absent: fine), keeping its archive while a
/// later snapshot names it, then frees what no snapshot needs any more.
/// Call under [`lock`]. Blocking.
pub fn delete(snaps: &DirFd, key: &str) -> Result<Deleted> {
    if !plain(key) {
        return Ok(Deleted::Removed);
    }
    let needed = entries(snaps)?
        .iter()
        .any(|e| e.key != key && e.parent.as_deref() == Some(key));
    let out = if needed {
        if let Some(dir) = snaps.subdir(key, false)? {
            dir.write_atomic(DELETED, b"")?;
        }
        Deleted::Kept
    } else {
        remove(snaps, key)?;
        Deleted::Removed
    };
    collect(snaps)?;
    Ok(out)
}

/// Removes every tombstoned snapshot no other snapshot names as parent,
/// until none is left. Call under [`lock`]. Blocking.
pub fn collect(snaps: &DirFd) -> Result<u32> {
    let mut freed = 0;
    loop {
        let all = entries(snaps)?;
        let needed: HashSet<&str> = all.iter().filter_map(|e| e.parent.as_deref()).collect();
        let free: Vec<&str> = all
            .iter()
            .filter(|e| e.deleted && !needed.contains(e.key.as_str()))
            .map(|e| e.key.as_str())
            .collect();
        if free.is_empty() {
            return Ok(freed);
        }
        for key in free {
            remove(snaps, key)?;
            tracing::info!(snapshot = %key, "deleted snapshot's archive freed (no later snapshot needs it)");
            freed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::archive::tests::{assert_same_tree, sample_tree};
    use crate::archive::{ArchiveOptions, Job, RestoreOptions, create_archive, restore};

    fn snap(snaps: &DirFd, src: &Path, name: &str, every: u32) -> Manifest {
        let mut job = Job::new(name, "vol", 1);
        if let Some((p, c)) = choose_parent(snaps, "vol", every).unwrap() {
            job.parent = Some(p);
            job.chain = c;
        }
        let store = Store {
            dir: snaps.subdir(name, true).unwrap().unwrap(),
            snaps: Some(snaps.try_clone().unwrap()),
        };
        store.start(&job).unwrap();
        let opts = ArchiveOptions {
            level: 1,
            threads: 1,
        };
        let src = DirFd::open_root(src).unwrap();
        create_archive(&src, &store, &job, opts, &AtomicBool::new(false)).unwrap()
    }

    fn restored(snaps: &DirFd, name: &str, to: &Path) -> (u64, u64) {
        std::fs::create_dir_all(to).unwrap();
        let store = Store {
            dir: snaps.subdir(name, false).unwrap().unwrap(),
            snaps: Some(snaps.try_clone().unwrap()),
        };
        let m = store.manifest().unwrap().unwrap();
        let opts = RestoreOptions::default();
        let dest = DirFd::open_root(to).unwrap();
        restore(&store, &m, dest, opts, &AtomicBool::new(false)).unwrap()
    }

    fn copy(from: &Path, to: &Path) {
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Both ways: the same entries, the same content and metadata.
    fn same(a: &Path, b: &Path) {
        assert_same_tree(a, b);
        assert_same_tree(b, a);
    }

    #[test]
    fn a_chain_restores_each_tree_exactly_and_stays_small() {
        let t = tempfile::tempdir().unwrap();
        let (src, snaps_path) = (t.path().join("src"), t.path().join("snaps"));
        sample_tree(&src);
        for i in 0..50 {
            std::fs::write(src.join(format!("a/f{i}")), format!("file {i}").repeat(100)).unwrap();
        }
        // 2 MiB that do not compress, unchanged from here on
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..2 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(src.join("noise"), &noise).unwrap();
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        std::fs::write(src.join("d/e/x"), b"x").unwrap();
        std::fs::write(src.join("becomes-dir"), b"file").unwrap();
        std::fs::create_dir_all(src.join("becomes-file/in")).unwrap();
        std::fs::create_dir_all(&snaps_path).unwrap();
        let snaps = DirFd::open_root(&snaps_path).unwrap();
        let m0 = snap(&snaps, &src, "s0", 8);
        assert_eq!((m0.parent.as_deref(), m0.chain), (None, 0));
        copy(&src, &t.path().join("at0"));
        // 1: append, rewrite, delete, rename a file and a directory
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(src.join("a/b/text"))
            .unwrap()
            .write_all(b"appended")
            .unwrap();
        std::fs::write(src.join("a/f1"), b"rewritten").unwrap();
        std::fs::remove_file(src.join("a/f2")).unwrap();
        std::fs::rename(src.join("a/f3"), src.join("a/f3-renamed")).unwrap();
        std::fs::rename(src.join("d"), src.join("d-renamed")).unwrap();
        let m1 = snap(&snaps, &src, "s1", 8);
        assert_eq!((m1.parent.as_deref(), m1.chain), (Some("s0"), 1));
        assert!(m1.stored.is_some_and(|s| s.bytes < 200_000), "{m1:?}");
        assert_eq!(m1.size_bytes, m0.size_bytes + 8 - 600 - 600 + 9);
        assert!(
            m1.archive_bytes * 20 < m0.archive_bytes,
            "incremental {} vs full {}",
            m1.archive_bytes,
            m0.archive_bytes
        );
        copy(&src, &t.path().join("at1"));
        // 2: mode and mtime only; a file becomes a directory and back
        std::fs::set_permissions(
            src.join("a/f4"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let ts = nix::sys::time::TimeSpec::new(1_500_000_000, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &src.join("a/f5"),
            &ts,
            &ts,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        std::fs::remove_file(src.join("becomes-dir")).unwrap();
        std::fs::create_dir_all(src.join("becomes-dir/inside")).unwrap();
        std::fs::remove_dir_all(src.join("becomes-file")).unwrap();
        std::fs::write(src.join("becomes-file"), b"now a file").unwrap();
        let m2 = snap(&snaps, &src, "s2", 8);
        assert_eq!((m2.parent.as_deref(), m2.chain), (Some("s1"), 2));
        copy(&src, &t.path().join("at2"));
        for (i, (name, m)) in [("s0", &m0), ("s1", &m1), ("s2", &m2)].iter().enumerate() {
            let to = t.path().join(format!("r{i}"));
            let (_, written) = restored(&snaps, name, &to);
            same(&t.path().join(format!("at{i}")), &to);
            // the earlier archives' superseded files are not written: each
            // file once (the hard-linked one, stored every time, aside)
            assert!(
                written <= m.size_bytes + 1024,
                "{name}: {written} bytes written for {}",
                m.size_bytes
            );
        }
        // fullEvery 3: the next one is full again
        let m3 = snap(&snaps, &src, "s3", 3);
        assert_eq!((m3.parent.as_deref(), m3.chain), (None, 0));
        // GNU tar restores the chain by hand, oldest first
        let by_hand = t.path().join("gnu");
        std::fs::create_dir_all(&by_hand).unwrap();
        let mut gnu = true;
        for name in ["s0", "s1", "s2"] {
            let out = std::process::Command::new("tar")
                .args([
                    "--zstd",
                    "--xattrs",
                    "--listed-incremental=/dev/null",
                    "-xpf",
                ])
                .arg(snaps_path.join(name).join(crate::archive::ARCHIVE))
                .arg("-C")
                .arg(&by_hand)
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => panic!("GNU tar: {}", String::from_utf8_lossy(&o.stderr)),
                Err(e) => {
                    eprintln!("SKIPPED: GNU tar with zstd is not available ({e})");
                    gnu = false;
                    break;
                }
            }
        }
        if gnu {
            same(&t.path().join("at2"), &by_hand);
        }
        // a tampered parent archive fails the restore before writing
        std::fs::OpenOptions::new()
            .append(true)
            .open(snaps_path.join("s0").join(crate::archive::ARCHIVE))
            .unwrap()
            .write_all(b"x")
            .unwrap();
        let to = t.path().join("bad");
        std::fs::create_dir_all(&to).unwrap();
        let store = Store {
            dir: snaps.subdir("s2", false).unwrap().unwrap(),
            snaps: Some(snaps.try_clone().unwrap()),
        };
        let dest = DirFd::open_root(&to).unwrap();
        let err = restore(
            &store,
            &m2,
            dest,
            RestoreOptions::default(),
            &AtomicBool::new(false),
        );
        assert!(matches!(err, Err(Error::Length { .. })), "{err:?}");
        assert_eq!(std::fs::read_dir(&to).unwrap().count(), 0);
    }

    #[test]
    fn a_deletion_cut_short_at_any_step_is_finished_by_the_next_one() {
        let t = tempfile::tempdir().unwrap();
        let (src, snaps_path) = (t.path().join("src"), t.path().join("snaps"));
        sample_tree(&src);
        std::fs::create_dir_all(&snaps_path).unwrap();
        let snaps = DirFd::open_root(&snaps_path).unwrap();
        for (i, name) in ["s0", "s1", "s2", "s3"].iter().enumerate() {
            std::fs::write(src.join(format!("n{i}")), b"n").unwrap();
            snap(&snaps, &src, name, 8);
        }
        let state = |name: &str| {
            Store {
                dir: snaps.subdir(name, false).unwrap().unwrap(),
                snaps: None,
            }
            .state()
            .unwrap()
        };
        // cut short after the tombstone of s1 (which s2 needs): s1 is
        // absent to every RPC, s3 restores
        snaps
            .subdir("s1", false)
            .unwrap()
            .unwrap()
            .write_atomic(DELETED, b"")
            .unwrap();
        assert!(matches!(state("s1"), crate::archive::State::Absent));
        // cut short in the middle of removing s3 (nothing needs it): its
        // manifest gone, its archive and index still there
        let s3 = snaps_path.join("s3");
        std::fs::write(s3.join(DELETED), b"").unwrap();
        std::fs::remove_file(s3.join(MANIFEST)).unwrap();
        assert!(matches!(state("s3"), crate::archive::State::Absent));
        // s2 still restores through the tombstoned s1
        let to = t.path().join("r2");
        let _ = restored(&snaps, "s2", &to);
        assert!(to.join("n2").exists() && !to.join("n3").exists());
        // the next deletion (of s0: s1 still names it) finishes s3, and
        // keeps the chain that s2 needs
        assert_eq!(delete(&snaps, "s0").unwrap(), Deleted::Kept);
        assert!(!s3.exists());
        assert!(snaps_path.join("s0").exists() && snaps_path.join("s1").exists());
        let to = t.path().join("r2b");
        let _ = restored(&snaps, "s2", &to);
        // the last dependant goes: everything is freed
        assert_eq!(delete(&snaps, "s2").unwrap(), Deleted::Removed);
        assert_eq!(std::fs::read_dir(&snaps_path).unwrap().count(), 0);
    }
}
