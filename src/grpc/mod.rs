//! The edge: the gRPC server and everything that speaks gRPC.
//!
//! - `server`: the unix socket, the services, signals and shutdown.
//! - `controller`, `group_controller`, `node`: the tonic traits, thin: one
//!   call per RPC into `crate::controller` / `crate::node`, each in a span
//!   naming its volume, snapshot or group snapshot, its result turned into a
//!   reply or a status by `respond`.
//!   They live here, not beside the services, so that the services never
//!   name the status mapping (it names their errors).
//! - `status`: the one mapping from errors to gRPC codes (as the CSI spec
//!   prescribes them), matching on the services' errors and the lower
//!   errors they wrap, and the reply helper that logs each call's result.
//! - `metrics`: the tower layer that counts and times every call, and the
//!   `/metrics` endpoint (the registry itself is `sys::metrics`).
//! - `csi`: the CSI v1 types and services generated from `proto/csi.proto`.
//!
//! May depend on everything below it: `controller`, `node`, `identity`,
//! `storage`, `sys`, and `config`.
//!
//! The generated `csi` types are the vocabulary every RPC layer speaks, so
//! `controller`, `node`, `identity` and `cli` name them; nothing below
//! `grpc` names any other part of it.

pub mod controller;
pub mod csi;
pub mod group_controller;
pub mod metrics;
pub mod node;
pub mod server;
pub mod status;
