//! nfs-csi: a Kubernetes CSI driver that provisions ReadWriteMany volumes as
//! directories of an NFS export (or of a shared filesystem mounted on every
//! host). See docs/architecture.md for how a request flows through these
//! modules.

pub mod archive;
pub mod cli;
pub mod config;
pub mod controller;
pub mod grpc;
pub mod identity;
pub mod node;
pub mod storage;
pub mod sys;
