//! A snapshot's directory on its export: the job record written when the
//! archive is started and the manifest written once it is complete.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Error, JOB, MANIFEST, Result};
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
}

/// Written once the archive is complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
            group_snapshot_id: String::new(),
        }
    }
}

/// A snapshot's directory on its export.
pub struct Store {
    pub dir: DirFd,
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
        Ok(snaps.subdir(key, create)?.map(|dir| Store { dir }))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>> {
        match self.dir.read_small(name)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::BadJson(self.dir.path().join(name).display().to_string(), e)),
        }
    }

    pub fn state(&self) -> Result<State> {
        if let Some(m) = self.read_json::<Manifest>(MANIFEST)? {
            return Ok(State::Ready(m));
        }
        if let Some(j) = self.read_json::<Job>(JOB)? {
            return Ok(State::Pending(j));
        }
        Ok(State::Absent)
    }

    pub fn start(&self, job: &Job) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(job).map_err(|e| Error::BadJson(JOB.into(), e))?;
        self.dir.write_atomic(JOB, &bytes)?;
        Ok(())
    }

    pub fn manifest(&self) -> Result<Option<Manifest>> {
        self.read_json(MANIFEST)
    }
}
