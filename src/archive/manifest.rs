//! A snapshot's directory on its export: the job record written when the
//! archive is started and the manifest written once it is complete.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{DELETED, Error, JOB, MANIFEST, Result};
use crate::storage::ids::RESERVED_DIR;
use crate::sys::safefs::DirFd;

/// Written when the snapshot is started; fixes its name, source and time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub name: String,
    pub source_volume_id: String,
    pub created_unix: i64,
    pub created_nanos: i32,
    pub level: i32,
    /// The volume group snapshot this snapshot is a member of (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group_snapshot_id: String,
    /// The snapshot this one is archived against (its key in the same
    /// store), chosen when the job starts; `None`: a full archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Position in the chain (0: full).
    #[serde(default)]
    pub chain: u32,
}

/// Written once the archive is complete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub source_volume_id: String,
    pub created_unix: i64,
    pub created_nanos: i32,
    /// Bytes of file data the archive restores (the restore size).
    pub size_bytes: u64,
    pub file_count: u64,
    pub archive_bytes: u64,
    pub sha256: String,
    pub compression: String,
    pub level: i32,
    /// The volume group snapshot this snapshot is a member of (empty: none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group_snapshot_id: String,
    /// The snapshot whose tree this archive changes (`None`: full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Position in the chain: 0 for a full archive, the parent's + 1.
    #[serde(default)]
    pub chain: u32,
    /// Bytes this snapshot added to the store (its archive and index).
    #[serde(default)]
    pub added_bytes: u64,
    /// For an incremental archive: what it stores itself (the bounds of
    /// its restore step); a full one stores the whole tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<Stored>,
    /// The per-file index the next snapshot compares with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexInfo>,
}

/// What an incremental archive stores: file data (apparent sizes) and
/// directory listings, in bytes, and entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub bytes: u64,
    pub entries: u64,
}

/// The index file's size and SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexInfo {
    pub bytes: u64,
    pub sha256: String,
}

impl Job {
    pub fn new(name: &str, source: &str, level: i32) -> Job {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Job {
            name: name.to_string(),
            source_volume_id: source.to_string(),
            created_unix: now.as_secs() as i64,
            created_nanos: now.subsec_nanos() as i32,
            level,
            parent: None,
            chain: 0,
            group_snapshot_id: String::new(),
        }
    }
}

/// A snapshot's directory on its export, and the snapshots directory
/// holding it (where its chain's parents are; `None` in unit tests of one
/// archive).
pub struct Store {
    pub dir: DirFd,
    pub snaps: Option<DirFd>,
}

/// What is found in a snapshot's directory.
pub enum State {
    Absent,
    Pending(Job),
    Ready(Manifest),
}

impl Store {
    /// The snapshots directory of an export root (created when `create`).
    pub fn snapshots_dir(root: &Path, create: bool) -> Result<Option<DirFd>> {
        let root = DirFd::open_root(root)?;
        let Some(meta) = root.subdir(RESERVED_DIR, create)? else {
            return Ok(None);
        };
        Ok(meta.subdir("snapshots", create)?)
    }

    pub fn open(root: &Path, key: &str, create: bool) -> Result<Option<Store>> {
        let Some(snaps) = Self::snapshots_dir(root, create)? else {
            return Ok(None);
        };
        let dir = snaps.subdir(key, create)?;
        Ok(dir.map(|dir| Store {
            dir,
            snaps: Some(snaps),
        }))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>> {
        match self.dir.read_small(name)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::BadJson(self.dir.path().join(name).display().to_string(), e)),
        }
    }

    /// A snapshot deleted while later ones still need its archive: kept,
    /// but absent to every RPC.
    pub fn deleted(&self) -> Result<bool> {
        Ok(self.dir.entry_exists(std::ffi::OsStr::new(DELETED))?)
    }

    /// Ready, pending or absent; a deleted (tombstoned) snapshot is absent.
    pub fn state(&self) -> Result<State> {
        if self.deleted()? {
            return Ok(State::Absent);
        }
        if let Some(m) = self.read_json::<Manifest>(MANIFEST)? {
            return Ok(State::Ready(m));
        }
        if let Some(j) = self.read_json::<Job>(JOB)? {
            return Ok(State::Pending(j));
        }
        Ok(State::Absent)
    }

    /// Writes the job record. Refused in a tombstoned directory: its
    /// archive is a later snapshot's parent and must not be replaced.
    pub fn start(&self, job: &Job) -> Result<()> {
        if self.deleted()? {
            return Err(Error::Io {
                what: format!(
                    "start snapshot {}: the name is held by a deleted snapshot whose archive later snapshots need",
                    crate::sys::text::quote(&job.name)
                ),
                source: std::io::ErrorKind::AlreadyExists.into(),
            });
        }
        let bytes = serde_json::to_vec_pretty(job).map_err(|e| Error::BadJson(JOB.into(), e))?;
        self.dir.write_atomic(JOB, &bytes)?;
        Ok(())
    }

    pub fn manifest(&self) -> Result<Option<Manifest>> {
        self.read_json(MANIFEST)
    }

    pub fn job(&self) -> Result<Option<Job>> {
        self.read_json(JOB)
    }
}
