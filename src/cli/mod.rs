//! The command line: the `serve` flags (how the driver runs), `call` (a
//! CSI client for operators, one file per RPC group over shared flag
//! parsing) and `crds` (the CustomResourceDefinitions the driver ships).
//!
//! May depend on: `grpc` (the generated CSI types, the socket path),
//! `config`, `storage` and `sys`. Nothing imports from `cli`, except
//! `main.rs`.

pub mod call;
pub mod crds;
pub mod serve;
