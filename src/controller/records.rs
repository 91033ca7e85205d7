//! The driver's records on an export (`.nfs-csi/`): one record per volume,
//! the index of nested volumes, and the blocking work that creates, deletes
//! or archives a volume's directory with them.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::archive;
use crate::grpc::csi::v1::VolumeCondition;
use crate::storage::ids::{self, OnDelete, RESERVED_DIR, RelPath};
use crate::storage::params::{MutableParams, VolumeRecord};
use crate::sys::safefs::{self, DirFd};
use crate::sys::text::quote;

use super::*;

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// File name for a volume name in `.nfs-csi/names/`.
pub(super) fn name_file(name: &str) -> String {
    ids::safe_file_name(name)
}

pub(super) fn record_file(subdir: &RelPath) -> String {
    format!("{}.json", subdir.digest())
}

pub(super) fn is_record_file(name: &str) -> bool {
    name.ends_with(".json") && !name.starts_with('.')
}

/// Directory of `.nfs-csi/` indexing nested volumes:
/// `nested/<digest of a directory>/<record file of a volume below it>`.
pub(super) const NESTED_DIR: &str = "nested";

/// In `nested/`: the index covers every record (it was built from them once,
/// for records written before the index existed).
pub(super) const NESTED_COMPLETE: &str = ".complete-v1";

/// The driver's metadata directories on an export.
pub(super) struct Meta {
    pub(super) root: DirFd,
    pub(super) meta: DirFd,
    pub(super) volumes: DirFd,
    pub(super) names: DirFd,
}

impl Meta {
    pub(super) fn open(root: &Path, create: bool) -> Result<Option<Meta>> {
        let root = DirFd::open_root(root)?;
        let Some(meta) = root.subdir(RESERVED_DIR, create)? else {
            return Ok(None);
        };
        let (Some(volumes), Some(names)) = (
            meta.subdir("volumes", create)?,
            meta.subdir("names", create)?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Meta {
            root,
            meta,
            volumes,
            names,
        }))
    }

    /// The nested-volume index, created (from every record) on first use.
    pub(super) fn nested(&self) -> Result<DirFd> {
        let nested = self
            .meta
            .subdir(NESTED_DIR, true)?
            .ok_or(Error::Missing("nested volume index"))?;
        if !nested.entry_exists(OsStr::new(NESTED_COMPLETE))? {
            let files = self.volumes.list()?;
            tracing::info!(records = files.len(), "building the nested volume index");
            for file in files {
                let Some(file) = file.to_str().filter(|f| is_record_file(f)) else {
                    continue;
                };
                let rec = match self.read_record_file(file) {
                    Ok(Some(rec)) => rec,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(record = file, error = %e, "unreadable volume record skipped");
                        continue;
                    }
                };
                if let Ok(subdir) = RelPath::parse(&rec.subdir) {
                    self.add_nested(&nested, &subdir)?;
                }
            }
            nested.write_atomic(NESTED_COMPLETE, b"")?;
        }
        Ok(nested)
    }

    /// Notes `subdir` below each of its ancestors in the index.
    pub(super) fn add_nested(&self, nested: &DirFd, subdir: &RelPath) -> Result<()> {
        let mut ancestor = subdir.split_last().0;
        while let Some(a) = ancestor {
            let (dir, _) = nested.child_or_create(OsStr::new(&a.digest()), 0o700)?;
            dir.write_atomic(&record_file(subdir), subdir.as_str().as_bytes())?;
            ancestor = a.split_last().0;
        }
        Ok(())
    }

    /// Drops `subdir` from the index (when there is one).
    pub(super) fn remove_nested(&self, subdir: &RelPath) -> Result<()> {
        let Some(nested) = self.meta.subdir(NESTED_DIR, false)? else {
            return Ok(());
        };
        let mut ancestor = subdir.split_last().0;
        while let Some(a) = ancestor {
            if let Some(dir) = nested.child(OsStr::new(&a.digest()))? {
                dir.remove_file(&record_file(subdir))?;
            }
            ancestor = a.split_last().0;
        }
        Ok(())
    }

    /// A volume whose directory is strictly below `subdir`, if any (the
    /// index may hold stale entries: only a live record counts).
    pub(super) fn volume_below(
        &self,
        nested: &DirFd,
        subdir: &RelPath,
    ) -> Result<Option<VolumeRecord>> {
        let Some(dir) = nested.child(OsStr::new(&subdir.digest()))? else {
            return Ok(None);
        };
        let prefix = format!("{}/", subdir.as_str());
        for file in dir.list()? {
            let Some(file) = file.to_str().filter(|f| is_record_file(f)) else {
                continue;
            };
            if let Some(rec) = self.read_record_file(file)?
                && rec.subdir.starts_with(&prefix)
            {
                return Ok(Some(rec));
            }
        }
        Ok(None)
    }

    /// The volume whose directory contains `subdir`, if any.
    pub(super) fn volume_above(&self, subdir: &RelPath) -> Result<Option<VolumeRecord>> {
        let mut ancestor = subdir.split_last().0;
        while let Some(a) = ancestor {
            if let Some(outer) = self.record(&a)? {
                return Ok(Some(outer));
            }
            ancestor = a.split_last().0;
        }
        Ok(None)
    }

    pub(super) fn read_record_file(&self, file: &str) -> Result<Option<VolumeRecord>> {
        match self.volumes.read_small(file)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| Error::CorruptRecord {
                        path: self.volumes.path().join(file),
                        source,
                    })
            }
        }
    }

    pub(super) fn record(&self, subdir: &RelPath) -> Result<Option<VolumeRecord>> {
        self.read_record_file(&record_file(subdir))
    }

    pub(super) fn save(&self, rec: &VolumeRecord, subdir: &RelPath) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(rec).map_err(|source| Error::CorruptRecord {
            path: self.volumes.path().join(record_file(subdir)),
            source,
        })?;
        self.volumes.write_atomic(&record_file(subdir), &bytes)?;
        Ok(())
    }

    /// The directory holding `subdir` (None when it is gone) and its name
    /// there.
    pub(super) fn parent_of<'s>(&self, subdir: &'s RelPath) -> Result<(Option<DirFd>, &'s str)> {
        let (parent, leaf) = subdir.split_last();
        let dir = match &parent {
            None => Some(self.root.try_clone()?),
            Some(p) => self.root.walk(p)?,
        };
        Ok((dir, leaf))
    }

    /// Removes a volume's record and its name entry (if the name still
    /// points at it), record last so an interrupted removal is redone.
    pub(super) fn forget(&self, subdir: &RelPath, rec: Option<&VolumeRecord>) -> Result<()> {
        if let Some(rec) = rec {
            let name_file = name_file(&rec.name);
            if self.names.read_small(&name_file)?.as_deref() == Some(subdir.as_str().as_bytes()) {
                self.names.remove_file(&name_file)?;
            }
        }
        self.volumes.remove_file(&record_file(subdir))?;
        self.remove_nested(subdir)
    }

    /// The directory's state, for a VolumeCondition.
    pub(super) fn condition(&self, subdir: &RelPath) -> VolumeCondition {
        let (abnormal, message) = match self.root.walk(subdir) {
            Ok(Some(_)) => (false, "directory present".to_string()),
            Ok(None) => (true, format!("directory {} is missing", subdir.as_str())),
            Err(e) => (true, e.to_string()),
        };
        VolumeCondition { abnormal, message }
    }
}

/// CreateVolume's work on the export. Blocking.
pub(super) fn create_on_export(
    root: &Path,
    want: VolumeRecord,
    subdir: &RelPath,
    capacity: (i64, i64),
) -> Result<VolumeRecord> {
    let meta = Meta::open(root, true)?.ok_or(Error::Missing("export metadata"))?;
    let name_file = name_file(&want.name);
    let conflict = |reason: String| Error::AlreadyExists {
        name: want.name.clone(),
        reason,
    };
    if let Some(bytes) = meta.names.read_small(&name_file)? {
        let existing = String::from_utf8_lossy(&bytes);
        if existing != subdir.as_str() {
            return Err(conflict(format!(
                "it was created with directory {existing:?}, this request gives {:?}",
                subdir.as_str()
            )));
        }
    }
    if let Some(existing) = meta.record(subdir)? {
        if existing.name != want.name {
            return Err(conflict(format!(
                "directory {:?} already belongs to volume {:?}",
                subdir.as_str(),
                existing.name
            )));
        }
        if existing.content_source != want.content_source {
            return Err(conflict(format!(
                "it was created from {:?}, this request gives {:?}",
                existing.content_source, want.content_source
            )));
        }
        if existing.parameters != want.parameters {
            return Err(conflict("it was created with other parameters".into()));
        }
        if !fits(existing.capacity_bytes, capacity) {
            return Err(conflict(format!(
                "its capacity is {} bytes, outside the requested range",
                existing.capacity_bytes
            )));
        }
        meta.root.create_all(subdir, existing.mount_permissions)?;
        meta.names
            .write_atomic(&name_file, subdir.as_str().as_bytes())?;
        return Ok(existing);
    }
    // A directory inside another volume's would be deleted with it; one
    // containing another volume's would expose that volume's data (and take
    // it along when deleted or archived).
    if let Some(outer) = meta.volume_above(subdir)? {
        return Err(Error::DirInUse {
            subdir: subdir.as_str().to_string(),
            reason: format!(
                "it is inside volume {}'s directory {}",
                quote(&outer.name),
                quote(&outer.subdir)
            ),
        });
    }
    let nested = meta.nested()?;
    if let Some(inner) = meta.volume_below(&nested, subdir)? {
        return Err(Error::DirInUse {
            subdir: subdir.as_str().to_string(),
            reason: format!(
                "it contains volume {}'s directory {}",
                quote(&inner.name),
                quote(&inner.subdir)
            ),
        });
    }
    // Noted before the record, so a crash leaves a stale entry at worst.
    meta.add_nested(&nested, subdir)?;
    let mut want = want;
    let (dir, created) = meta.root.create_all(subdir, want.mount_permissions)?;
    // A directory that was already there (retained data, data put there by
    // hand) is adopted: it is never deleted or emptied by the driver.
    want.adopted = !created;
    if want.adopted && want.content_source.is_some() && !dir.list()?.is_empty() {
        return Err(Error::DirInUse {
            subdir: subdir.as_str().to_string(),
            reason: "it already holds data, and restoring or cloning into it would replace it; \
                     use another subDir"
                .into(),
        });
    }
    meta.save(&want, subdir)?;
    meta.names
        .write_atomic(&name_file, subdir.as_str().as_bytes())?;
    Ok(want)
}

/// ControllerModifyVolume's work on the export: the directory's mode set
/// through its descriptor (reached without following a symlink), then the
/// record rewritten atomically if it changes. Blocking. Returns the record.
pub(super) fn modify_on_export(
    root: &Path,
    subdir: &RelPath,
    change: &MutableParams,
    volume_id: &str,
) -> Result<VolumeRecord> {
    let not_found = || Error::NotFound(volume_id.to_string());
    let meta = Meta::open(root, false)?.ok_or_else(not_found)?;
    let mut rec = meta.record(subdir)?.ok_or_else(not_found)?;
    let mut want = rec.clone();
    if let Some(mode) = change.mount_permissions {
        let dir = meta
            .root
            .walk(subdir)?
            .ok_or_else(|| Error::DirMissing(volume_id.to_string()))?;
        dir.set_mode(mode)?;
        want.mount_permissions = Some(mode);
    }
    if let Some(on_delete) = change.on_delete {
        want.on_delete = on_delete;
    }
    if want != rec {
        meta.save(&want, subdir)?;
        rec = want;
    }
    Ok(rec)
}

/// DeleteVolume's work on the export. Blocking. Returns what was done.
pub(super) fn delete_on_export(root: &Path, subdir: &RelPath) -> Result<&'static str> {
    let Some(meta) = Meta::open(root, false)? else {
        return Ok("unknown volume: nothing to do");
    };
    let Some(rec) = meta.record(subdir)? else {
        return Ok("unknown volume: nothing to do");
    };
    let (parent_dir, leaf) = meta.parent_of(subdir)?;
    let inner = match (rec.on_delete, &parent_dir) {
        (OnDelete::Retain, _) | (_, None) => None,
        (OnDelete::Delete, _) if rec.adopted => None,
        _ => meta.volume_below(&meta.nested()?, subdir)?,
    };
    let done = match (rec.on_delete, parent_dir) {
        (_, None) => "directory already gone",
        (OnDelete::Retain, _) => "directory retained",
        (OnDelete::Delete, _) if rec.adopted => {
            "directory retained: it existed before the volume, so it is not the driver's to delete"
        }
        _ if inner.is_some() => {
            // Only records from before the overlap check can get here.
            let inner = inner.as_ref().map(|r| (quote(&r.name), quote(&r.subdir)));
            tracing::warn!(
                subdir = %quote(subdir.as_str()),
                inner = ?inner,
                "directory retained, not deleted or archived: it holds another volume's directory"
            );
            "directory retained: it contains another volume's directory"
        }
        (OnDelete::Delete, Some(dir)) => {
            dir.remove_tree(OsStr::new(leaf))?;
            "directory deleted"
        }
        (OnDelete::Archive, Some(dir)) => {
            if dir.entry_exists(OsStr::new(leaf))? {
                archive(&dir, leaf)?;
                "directory archived"
            } else {
                "directory already gone"
            }
        }
    };
    meta.forget(subdir, Some(&rec))?;
    Ok(done)
}

/// Removes a volume whatever its delete policy (one that never became
/// usable). Blocking.
pub(super) fn discard_on_export(root: &Path, subdir: &RelPath) -> Result<()> {
    let Some(meta) = Meta::open(root, false)? else {
        return Ok(());
    };
    let (parent_dir, leaf) = meta.parent_of(subdir)?;
    let rec = meta.record(subdir)?;
    let holds_other = match &parent_dir {
        Some(_) => meta.volume_below(&meta.nested()?, subdir)?.is_some(),
        None => false,
    };
    if let Some(dir) = parent_dir.filter(|_| !holds_other) {
        if rec.as_ref().is_some_and(|r| r.adopted) {
            // It existed (empty) before: take back only what was put in.
            if let Some(d) = dir.child(OsStr::new(leaf))? {
                archive::empty_dir(&d)?;
            }
        } else {
            dir.remove_tree(OsStr::new(leaf))?;
        }
    }
    meta.forget(subdir, rec.as_ref())
}

/// Renames `leaf` to `archived-<leaf>` (or with a time and counter suffix
/// when taken); never replaces anything.
pub(super) fn archive(dir: &DirFd, leaf: &str) -> Result<()> {
    let mut base: String = format!("archived-{leaf}");
    while base.len() > 220 {
        base.pop();
    }
    let stamp = now_unix();
    let mut last_err = None;
    for n in 0..100u32 {
        let candidate = match n {
            0 => base.clone(),
            1 => format!("{base}-{stamp}"),
            n => format!("{base}-{stamp}-{n}"),
        };
        if dir.entry_exists(OsStr::new(&candidate))? {
            continue;
        }
        match dir.rename_child(OsStr::new(leaf), OsStr::new(&candidate)) {
            Ok(()) => return Ok(()),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err
        .unwrap_or(safefs::Error::NotADirectory {
            path: dir.path().join(leaf),
        })
        .into())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn rec(name: &str, subdir: &str, on_delete: OnDelete) -> VolumeRecord {
        VolumeRecord {
            name: name.into(),
            subdir: subdir.into(),
            capacity_bytes: 1 << 20,
            on_delete,
            mount_permissions: None,
            parameters: BTreeMap::new(),
            created_unix: 1,
            content_source: None,
            populated: true,
            adopted: false,
            volume_id: None,
        }
    }

    #[test]
    fn create_is_idempotent_and_detects_conflicts() {
        let t = tempfile::tempdir().unwrap();
        let sub = RelPath::parse("ns/a").unwrap();
        let r = create_on_export(
            t.path(),
            rec("v1", "ns/a", OnDelete::Delete),
            &sub,
            (1 << 20, 0),
        )
        .unwrap();
        assert!(t.path().join("ns/a").is_dir());
        let again = create_on_export(
            t.path(),
            rec("v1", "ns/a", OnDelete::Delete),
            &sub,
            (1 << 20, 0),
        )
        .unwrap();
        assert_eq!(r, again);
        // bigger than the existing capacity: conflict
        let err = create_on_export(
            t.path(),
            rec("v1", "ns/a", OnDelete::Delete),
            &sub,
            (2 << 20, 0),
        )
        .unwrap_err();
        assert!(err.to_string().contains("capacity"), "{err}");
        // same directory, other name: conflict
        let err = create_on_export(t.path(), rec("v2", "ns/a", OnDelete::Delete), &sub, (0, 0))
            .unwrap_err();
        assert!(
            err.to_string().contains("belongs to volume \"v1\""),
            "{err}"
        );
        // same name, other directory: conflict
        let other = RelPath::parse("ns/b").unwrap();
        let err = create_on_export(
            t.path(),
            rec("v1", "ns/b", OnDelete::Delete),
            &other,
            (0, 0),
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"ns/a\""), "{err}");
    }

    #[test]
    fn delete_keeps_parents_and_archive_never_overwrites() {
        let t = tempfile::tempdir().unwrap();
        let a = RelPath::parse("ns/a").unwrap();
        create_on_export(t.path(), rec("va", "ns/a", OnDelete::Archive), &a, (0, 0)).unwrap();
        std::fs::write(t.path().join("ns/a/data"), b"1").unwrap();
        std::fs::create_dir_all(t.path().join("ns/archived-a")).unwrap();
        std::fs::write(t.path().join("ns/archived-a/older"), b"0").unwrap();
        assert_eq!(
            delete_on_export(t.path(), &a).unwrap(),
            "directory archived"
        );
        assert!(t.path().join("ns/archived-a/older").exists());
        let archived: Vec<_> = std::fs::read_dir(t.path().join("ns"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("archived-a-"))
            .collect();
        assert_eq!(archived.len(), 1, "{archived:?}");
        assert!(t.path().join("ns").join(&archived[0]).join("data").exists());
        // record gone: a second delete does nothing
        assert_eq!(
            delete_on_export(t.path(), &a).unwrap(),
            "unknown volume: nothing to do"
        );
        let b = RelPath::parse("ns/b").unwrap();
        create_on_export(t.path(), rec("vb", "ns/b", OnDelete::Delete), &b, (0, 0)).unwrap();
        assert_eq!(delete_on_export(t.path(), &b).unwrap(), "directory deleted");
        assert!(!t.path().join("ns/b").exists());
        assert!(t.path().join("ns").is_dir(), "parent must stay");
    }

    #[test]
    fn a_volume_never_contains_another() {
        let t = tempfile::tempdir().unwrap();
        let a = RelPath::parse("team/a").unwrap();
        let team = RelPath::parse("team").unwrap();
        create_on_export(t.path(), rec("a", "team/a", OnDelete::Delete), &a, (0, 0)).unwrap();
        std::fs::write(t.path().join("team/a/data"), b"a's").unwrap();
        let err = create_on_export(t.path(), rec("b", "team", OnDelete::Archive), &team, (0, 0))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"team\"") && msg.contains("\"a\"") && msg.contains("\"team/a\""),
            "{msg}"
        );
        assert_eq!(
            crate::grpc::status::code(&err.into()),
            tonic::Code::FailedPrecondition
        );
        // once a is gone, its directory's parent may become a volume
        delete_on_export(t.path(), &a).unwrap();
        create_on_export(t.path(), rec("b", "team", OnDelete::Delete), &team, (0, 0)).unwrap();
    }

    #[test]
    fn records_from_before_the_index_are_indexed_and_outer_volumes_retained() {
        for policy in [OnDelete::Delete, OnDelete::Archive] {
            let t = tempfile::tempdir().unwrap();
            let a = RelPath::parse("team/a").unwrap();
            let team = RelPath::parse("team").unwrap();
            create_on_export(t.path(), rec("a", "team/a", OnDelete::Delete), &a, (0, 0)).unwrap();
            std::fs::write(t.path().join("team/a/data"), b"a's").unwrap();
            // As an older version left it: an outer record, no index.
            let meta = Meta::open(t.path(), false).unwrap().unwrap();
            meta.save(&rec("b", "team", policy), &team).unwrap();
            std::fs::remove_dir_all(t.path().join(".nfs-csi/nested")).unwrap();
            assert_eq!(
                delete_on_export(t.path(), &team).unwrap(),
                "directory retained: it contains another volume's directory"
            );
            assert_eq!(std::fs::read(t.path().join("team/a/data")).unwrap(), b"a's");
            assert!(
                meta.record(&team).unwrap().is_none(),
                "outer record forgotten"
            );
            assert!(meta.record(&a).unwrap().is_some());
            // the rebuilt index still knows a is below team
            let err =
                create_on_export(t.path(), rec("c", "team", policy), &team, (0, 0)).unwrap_err();
            assert!(err.to_string().contains("contains volume"), "{err}");
            // and a discarded outer volume never empties it either
            meta.save(&rec("b", "team", policy), &team).unwrap();
            discard_on_export(t.path(), &team).unwrap();
            assert_eq!(std::fs::read(t.path().join("team/a/data")).unwrap(), b"a's");
        }
    }

    #[test]
    fn name_files_are_safe() {
        assert_eq!(name_file("pvc-1"), "pvc-1");
        assert_eq!(name_file("../x"), format!("x-{}", hex::encode("../x")));
        assert_eq!(
            name_file(".hidden"),
            format!("x-{}", hex::encode(".hidden"))
        );
    }
}
