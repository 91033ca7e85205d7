//! nfs-csi: a Kubernetes CSI driver that provisions ReadWriteMany volumes as
//! directories of an NFS export (or of a shared filesystem mounted on every
//! host). See docs/architecture.md for how a request flows through these
//! modules.

pub mod client;
pub mod command;
pub mod config;
pub mod controller;
pub mod crds;
pub mod csi;
pub mod error;
pub mod export;
pub mod hostpath;
pub mod identity;
pub mod inflight;
pub mod jobs;
pub mod metrics;
pub mod mount;
pub mod mountopts;
pub mod node;
pub mod offload;
pub mod safefs;
pub mod server;
pub mod snapshot;
pub mod tree;
pub mod volume;
