//! Snapshots: a volume's directory as a streaming tar + zstd archive on an
//! export, restored into a new volume; and clones, a volume's directory
//! copied into a new one.
//!
//! Layout on the export holding the archives:
//! `.nfs-csi/snapshots/<name>/{archive.tar.zst, manifest.json, job.json}`.
//! `job.json` exists while the archive is being written; `manifest.json`
//! (source, time, size, file count, SHA-256 of the archive) is written only
//! after the archive is complete, fsynced and renamed into place, so a
//! snapshot is ready exactly when its manifest exists. The archive is a
//! standard `.tar.zst` (`tar --zstd -xf` restores it by hand).
//!
//! Safety assumptions: memory stays flat (files stream through fixed
//! buffers; zstd's window is bounded by its level). Reading the source never
//! follows symlinks. Restoring treats the archive as hostile: it is opened
//! once, by descriptor, and its size and SHA-256 are checked against the
//! manifest before anything is written (then extracted from the same
//! descriptor); headers are read with fixed bounds (`reader`), the zstd
//! window is capped, the data written is bounded by the manifest's size and
//! the volume's capacity, paths are rebuilt by [`tree::Dest`], and whatever
//! was written is removed when the restore fails.
//!
//! - `manifest`: a snapshot's directory on its export ([`Store`]), its
//!   [`Job`] while the archive is written and its [`Manifest`] once done.
//! - `write`: the archive writer (tar + zstd, sparse files, xattrs).
//! - `restore`: checks an archive against its manifest and extracts it.
//! - `reader`: the bounded tar reader a restore reads through.
//! - `clone`: a volume's directory copied into a new one.
//! - `tree`: walking a source tree by descriptor, and `tree::Dest`, the
//!   one writer of a destination tree (restores and clones both use it).
//!
//! Snapshot ids (`SnapshotId`) live in `storage::ids`, beside volume ids:
//! both are the same `<tag>#<export>#<item>` format, parsed by the same code.
//!
//! May depend on: `storage` (exports, ids, the reserved directory), `sys`
//! and external crates. Never on `controller`, `node`, `grpc` or `cli`;
//! [`Error`] and [`tree::Error`] are mapped to gRPC codes at the edge
//! (`grpc::status`).

pub mod chain;
mod clone;
mod incremental;
mod index;
mod manifest;
mod reader;
mod restore;
pub mod tree;
mod write;

#[cfg(test)]
mod tests;

pub use clone::clone_tree;
pub use manifest::{IndexInfo, Job, Manifest, State, Store, Stored};
pub use restore::{RestoreOptions, empty_dir, extract, restore, restore_limits};
pub use write::{ArchiveOptions, create_archive, write_tar};

use crate::sys::safefs;

pub const ARCHIVE: &str = "archive.tar.zst";
pub const MANIFEST: &str = "manifest.json";
pub const JOB: &str = "job.json";
/// The tombstone of a deleted snapshot whose archive later ones need.
pub const DELETED: &str = "deleted";
/// Read size for file data (large reads: fewer syscalls, better readahead).
const READ_BUF: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tree(#[from] tree::Error),
    #[error(transparent)]
    Fs(#[from] safefs::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "archive {path} does not match its manifest (SHA-256 {got}, manifest says {want}); the snapshot is corrupt"
    )]
    Checksum {
        path: String,
        got: String,
        want: String,
    },
    #[error("archive {path} is {got} bytes, its manifest says {want}; the snapshot is corrupt")]
    Length { path: String, got: u64, want: u64 },
    #[error("the archive is corrupt: {reason}")]
    Corrupt { reason: String },
    #[error("the archive is refused: it holds {reason}")]
    Refused { reason: String },
    #[error("{0} is unreadable: {1}")]
    BadJson(String, serde_json::Error),
}

type Result<T> = std::result::Result<T, Error>;

fn ioe(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
