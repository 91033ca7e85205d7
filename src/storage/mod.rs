//! The storage layer: what a volume or snapshot is on an export, without
//! CSI or gRPC.
//!
//! - `ids`: volume, snapshot and group snapshot ids, [`ids::RelPath`] (every directory below
//!   an export), checked absolute paths.
//! - `params`: StorageClass parameters, the `subDir` template, and the
//!   record kept for each volume.
//! - `export`: exports (NFS or a mounted share), the driver's kept mounts of
//!   them, and the allowed share roots.
//!
//! May depend on: `sys` and external crates. Never on `archive` (which
//! builds on it), `controller`, `node`, `grpc` or `cli`; their errors are
//! mapped to gRPC codes at the edge.

pub mod export;
pub mod ids;
pub mod params;

#[cfg(test)]
mod tests;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `id` is already quoted (see [`crate::sys::text::quote`]).
    #[error("volume id {id} is not an nfs-csi volume id: {reason}")]
    InvalidId { id: String, reason: String },
    /// `id` is already quoted (see [`crate::sys::text::quote`]).
    #[error("snapshot id {id} is not an nfs-csi snapshot id: {reason}")]
    InvalidSnapshotId { id: String, reason: String },
    /// `id` is already quoted (see [`crate::sys::text::quote`]).
    #[error("group snapshot id {id} is not an nfs-csi group snapshot id: {reason}")]
    InvalidGroupSnapshotId { id: String, reason: String },
    #[error("parameter {name:?}: {reason}")]
    InvalidParameter { name: String, reason: String },
    /// The name is already quoted (see [`crate::sys::text::quote`]).
    #[error(
        "unknown parameter {0}; known: server, share, mountedShare, subDir, mountPermissions, onDelete"
    )]
    UnknownParameter(String),
    /// The name is already quoted (see [`crate::sys::text::quote`]).
    #[error("parameter {0} cannot be changed; mutable parameters: onDelete, mountPermissions")]
    UnknownMutableParameter(String),
    /// `path` is already quoted (see [`crate::sys::text::quote`]).
    #[error("{what} {path} is not a safe path: {reason}")]
    UnsafePath {
        what: &'static str,
        path: String,
        reason: &'static str,
    },
    #[error("{0}")]
    NoExport(&'static str),
}
