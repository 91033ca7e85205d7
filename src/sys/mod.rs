//! The system layer: everything that touches the kernel or runs a process,
//! with no knowledge of CSI, volumes or exports.
//!
//! - `safefs`: descriptor-based directory walking (no symlink is followed).
//! - `hostpath`: kubelet paths opened by descriptor below the kubelet dir.
//! - `mount`: mount/unmount by descriptor and the mount table.
//! - `mountopts`: which NFS mount options may reach `mount -t nfs`; it sits
//!   here, beside `mount`, because it is the policy guarding that one call
//!   and needs nothing above it (the config flags, exports and the node all
//!   use it).
//! - `command`: child processes under a timeout.
//! - `offload`: blocking work on tokio's blocking pool under a timeout.
//! - `inflight`: one operation per key at a time.
//! - `jobs`: background jobs and their outcomes.
//! - `text`: how much of an untrusted input a message quotes; an error and
//!   its sources joined into one line.
//! - `metrics`: the Prometheus registry every layer counts in.
//!
//! May depend on: std and external crates, and other `sys` modules. Nothing
//! here imports from `storage`, `controller`, `node`, `grpc` or `cli`
//! (`safefs` walks any `CheckedRelPath`; `storage::ids::RelPath` is the one
//! the driver checks; only unit tests name it).

pub mod command;
pub mod hostpath;
pub mod inflight;
pub mod jobs;
pub mod metrics;
pub mod mount;
pub mod mountopts;
pub mod offload;
pub mod safefs;
pub mod text;
