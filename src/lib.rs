//! nfs-csi: a Kubernetes CSI driver that provisions ReadWriteMany volumes as
//! directories of an NFS export (or of a shared filesystem mounted on every
//! host). See docs/architecture.md for how a request flows through these
//! modules.

pub mod cli;
pub mod config;
pub mod controller;
pub mod grpc;
pub mod identity;
pub mod node;
pub mod snapshot;
pub mod storage;
pub mod sys;
pub mod tree;

// Phase 2 of the layout (issue 12) moves snapshot.rs and tree.rs into
// archive/; until then they keep naming these modules at the crate root.
use storage::ids as volume;
use sys::safefs;
