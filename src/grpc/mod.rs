//! The edge: the gRPC server and everything that speaks gRPC.
//!
//! - `server`: the unix socket, the services, signals and shutdown.
//! - `status`: the one mapping from errors to gRPC codes (as the CSI spec
//!   prescribes them), and the reply helper that logs each call's result.
//! - `metrics`: the tower layer that counts and times every call, and the
//!   `/metrics` endpoint (the registry itself is `sys::metrics`).
//! - `csi`: the CSI v1 types and services generated from `proto/csi.proto`.
//!
//! May depend on everything below it: `controller`, `node`, `identity`,
//! `storage`, `sys`, and `config`.
//!
//! Still to do (issue 12): `controller` and `node` name `status` (its error
//! type and `respond`), an import that runs upward; the generated `csi`
//! types are the vocabulary every RPC layer speaks and are named from all
//! of them.

pub mod csi;
pub mod metrics;
pub mod server;
pub mod status;
