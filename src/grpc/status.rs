//! The driver's error type and the one mapping from errors to gRPC status
//! codes (as the CSI spec prescribes them), which also logs each failure.

use nix::errno::Errno;
use tonic::{Code, Status};

use crate::archive::{self, tree};
use crate::storage::{self, export};
use crate::sys::{command, hostpath, inflight, jobs, mount, mountopts, offload, safefs};
use crate::{controller, node};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Volume(#[from] storage::Error),
    #[error(transparent)]
    Fs(#[from] safefs::Error),
    #[error(transparent)]
    Mount(#[from] mount::Error),
    #[error(transparent)]
    Export(#[from] export::Error),
    #[error(transparent)]
    Offload(#[from] offload::Error),
    #[error(transparent)]
    Busy(#[from] inflight::Busy),
    #[error(transparent)]
    Controller(#[from] controller::Error),
    #[error(transparent)]
    Node(#[from] node::Error),
    #[error(transparent)]
    Snapshot(#[from] archive::Error),
    #[error(transparent)]
    Tree(#[from] tree::Error),
    #[error(transparent)]
    HostPath(#[from] hostpath::Error),
    #[error(transparent)]
    MountOption(#[from] mountopts::Error),
}

fn tree_code(e: &tree::Error) -> Code {
    match e {
        tree::Error::Fs(e) => fs_code(e),
        tree::Error::Io { source, .. } => errno_code(*source),
        tree::Error::Stream { source, .. } => source
            .raw_os_error()
            .map(|n| errno_code(Errno::from_raw(n)))
            .unwrap_or(Code::Internal),
        tree::Error::UnsafePath { .. }
        | tree::Error::DeviceNode { .. }
        | tree::Error::Conflict { .. }
        | tree::Error::BadLink { .. } => Code::FailedPrecondition,
        tree::Error::Cancelled | tree::Error::Changed { .. } => Code::Aborted,
        tree::Error::OverLimit { .. } => Code::OutOfRange,
    }
}

fn errno_code(e: Errno) -> Code {
    match e {
        Errno::ENOSPC | Errno::EDQUOT => Code::ResourceExhausted,
        Errno::EROFS | Errno::ENOTDIR | Errno::ELOOP => Code::FailedPrecondition,
        Errno::ESTALE | Errno::ETIMEDOUT | Errno::EHOSTDOWN | Errno::EHOSTUNREACH => {
            Code::Unavailable
        }
        _ => Code::Internal,
    }
}

fn mount_code(e: &mount::Error) -> Code {
    match e {
        mount::Error::Command(command::Error::TimedOut { .. })
        | mount::Error::NothingMounted { .. } => Code::Unavailable,
        mount::Error::Syscall { cause, .. } | mount::Error::Unmount { cause, .. } => {
            errno_code(*cause)
        }
        _ => Code::Internal,
    }
}

fn fs_code(e: &safefs::Error) -> Code {
    match e {
        safefs::Error::NotADirectory { .. } | safefs::Error::CrossesMount { .. } => {
            Code::FailedPrecondition
        }
        safefs::Error::Io { source, .. } => errno_code(*source),
        safefs::Error::TooLarge { .. } => Code::Internal,
    }
}

fn storage_code(e: &storage::Error) -> Code {
    match e {
        storage::Error::InvalidId { .. }
        | storage::Error::InvalidSnapshotId { .. }
        | storage::Error::InvalidGroupSnapshotId { .. } => Code::NotFound,
        _ => Code::InvalidArgument,
    }
}

fn export_code(e: &export::Error) -> Code {
    match e {
        export::Error::NotResponding { .. } => Code::Unavailable,
        export::Error::Missing { .. } => Code::FailedPrecondition,
        export::Error::Mount { source, .. } => mount_code(source),
        export::Error::State { .. } => Code::Internal,
        export::Error::Overlap { .. } => Code::FailedPrecondition,
    }
}

fn offload_code(e: &offload::Error) -> Code {
    match e {
        offload::Error::Panicked { .. } => Code::Internal,
        _ => Code::Unavailable,
    }
}

fn archive_code(e: &archive::Error) -> Code {
    match e {
        archive::Error::Checksum { .. }
        | archive::Error::Length { .. }
        | archive::Error::Corrupt { .. } => Code::DataLoss,
        archive::Error::Refused { .. } => Code::FailedPrecondition,
        archive::Error::Tree(t) => tree_code(t),
        archive::Error::Fs(f) => fs_code(f),
        archive::Error::Io { .. } | archive::Error::BadJson(..) => Code::Internal,
    }
}

fn hostpath_code(e: &hostpath::Error) -> Code {
    match e {
        hostpath::Error::NotBelow { .. } | hostpath::Error::Symlink { .. } => Code::InvalidArgument,
        hostpath::Error::NotADirectory { .. } => Code::FailedPrecondition,
        hostpath::Error::Io { source, .. } => errno_code(*source),
    }
}

fn controller_code(e: &controller::Error) -> Code {
    use controller::Error as C;
    match e {
        C::Missing(_)
        | C::Block
        | C::NoAccessType
        | C::NoAccessMode
        | C::BadRange(_)
        | C::ContentSource
        | C::NegativeMaxEntries => Code::InvalidArgument,
        C::NotFound(_) | C::SnapshotNotFound(_) => Code::NotFound,
        C::SnapshotNotReady(_) | C::SourceNotReady(_) => Code::Unavailable,
        C::TooSmall { .. } | C::CannotShrink { .. } => Code::OutOfRange,
        C::SnapshotExists { .. } => Code::AlreadyExists,
        C::JobFailed(_) => Code::Internal,
        C::Populate { code, .. } => *code,
        C::DirInUse { .. } | C::DirMissing(_) => Code::FailedPrecondition,
        C::SnapshotParameter { .. } | C::GroupSources(_) | C::GroupMismatch(_) => {
            Code::InvalidArgument
        }
        C::GroupExists { .. } => Code::AlreadyExists,
        C::GroupNotFound(_) => Code::NotFound,
        C::GroupMember { .. } | C::GroupDeleting(_) => Code::FailedPrecondition,
        C::AlreadyExists { .. } => Code::AlreadyExists,
        C::BadToken(_) => Code::Aborted,
        C::CorruptRecord { .. } => Code::Internal,
        C::Storage(e) => storage_code(e),
        C::Fs(e) => fs_code(e),
        C::Mount(e) => mount_code(e),
        C::Export(e) => export_code(e),
        C::Offload(e) => offload_code(e),
        C::Busy(_) => Code::Aborted,
        C::Snapshot(e) => archive_code(e),
        C::Tree(e) => tree_code(e),
    }
}

fn node_code(e: &node::Error) -> Code {
    use node::Error as N;
    match e {
        N::Missing(_) | N::Block | N::InlineDisabled | N::InlineParameter { .. } => {
            Code::InvalidArgument
        }
        N::InlineServer(_) => Code::PermissionDenied,
        N::NotStaged { .. } | N::WrongStage { .. } | N::SingleWriter { .. } => {
            Code::FailedPrecondition
        }
        N::Conflict { .. } => Code::AlreadyExists,
        N::NotMounted { .. } | N::NoVolumeAt { .. } => Code::NotFound,
        N::NotEmpty { .. } | N::NotReadOnly { .. } => Code::Internal,
        N::Storage(e) => storage_code(e),
        N::Fs(e) => fs_code(e),
        N::Mount(e) => mount_code(e),
        N::Export(e) => export_code(e),
        N::Offload(e) => offload_code(e),
        N::Busy(_) => Code::Aborted,
        N::HostPath(e) => hostpath_code(e),
        N::MountOption(_) => Code::InvalidArgument,
    }
}

/// The gRPC code for an error.
pub fn code(err: &Error) -> Code {
    match err {
        Error::Volume(e) => storage_code(e),
        Error::Fs(e) => fs_code(e),
        Error::Mount(e) => mount_code(e),
        Error::Export(e) => export_code(e),
        Error::Offload(e) => offload_code(e),
        Error::Busy(_) => Code::Aborted,
        Error::Controller(e) => controller_code(e),
        Error::Node(e) => node_code(e),
        Error::Snapshot(e) => archive_code(e),
        Error::Tree(t) => tree_code(t),
        Error::HostPath(e) => hostpath_code(e),
        Error::MountOption(_) => Code::InvalidArgument,
    }
}

/// A job's failure keeps its error's gRPC code, so the RPC waiting for it
/// answers what the error would have (a restore's DATA_LOSS, OUT_OF_RANGE...).
impl From<controller::Error> for jobs::Failure {
    fn from(e: controller::Error) -> jobs::Failure {
        let message = chain(&e);
        jobs::Failure {
            code: code(&Error::Controller(e)),
            message,
        }
    }
}

/// Awaits an RPC's work and turns its result into the reply, logging one
/// line with the result code and the duration (inside the RPC's span, so
/// with its method and volume or snapshot id).
pub async fn respond<T, E: Into<Error>>(
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<tonic::Response<T>, Status> {
    let start = std::time::Instant::now();
    let out = work.await;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    match out {
        Ok(v) => {
            tracing::info!(code = "Ok", ms, "done");
            Ok(tonic::Response::new(v))
        }
        Err(e) => {
            let status = to_status(e);
            tracing::info!(code = ?status.code(), ms, "done");
            Err(status)
        }
    }
}

/// Longest status message (and error log line) sent: gRPC clients commonly
/// refuse response metadata over 8 KiB, and logs must stay bounded.
pub const MAX_MESSAGE: usize = 1024;

/// `message` cut to at most [`MAX_MESSAGE`] bytes (at a character
/// boundary), saying how long it was.
fn capped(mut message: String) -> String {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let total = message.len();
    let suffix = format!("…(message cut: {total} bytes)");
    let mut cut = MAX_MESSAGE - suffix.len();
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(&suffix);
    message
}

/// Turns an error into the Status the client sees, logging it once.
pub fn to_status(err: impl Into<Error>) -> Status {
    let err = err.into();
    let code = code(&err);
    crate::sys::metrics::error(kind(&err));
    let message = capped(chain(&err));
    match code {
        Code::Internal | Code::Unavailable => tracing::error!(code = ?code, "{message}"),
        _ => tracing::warn!(code = ?code, "{message}"),
    }
    Status::new(code, message)
}

/// The module an error comes from, for the errors metric: a lower
/// layer's error counts as that layer's, whichever service met it.
fn kind(err: &Error) -> &'static str {
    use controller::Error as C;
    use node::Error as N;
    match err {
        Error::Volume(_)
        | Error::MountOption(_)
        | Error::Controller(C::Storage(_))
        | Error::Node(N::Storage(_) | N::MountOption(_)) => "request",
        Error::HostPath(_) | Error::Node(N::HostPath(_)) => "path",
        Error::Fs(_)
        | Error::Tree(_)
        | Error::Controller(C::Fs(_) | C::Tree(_))
        | Error::Node(N::Fs(_)) => "filesystem",
        Error::Mount(_) | Error::Controller(C::Mount(_)) | Error::Node(N::Mount(_)) => "mount",
        Error::Export(_) | Error::Controller(C::Export(_)) | Error::Node(N::Export(_)) => "export",
        Error::Offload(_) | Error::Controller(C::Offload(_)) | Error::Node(N::Offload(_)) => {
            "timeout"
        }
        Error::Busy(_) | Error::Controller(C::Busy(_)) | Error::Node(N::Busy(_)) => "busy",
        Error::Snapshot(_) | Error::Controller(C::Snapshot(_)) => "snapshot",
        Error::Controller(_) => "controller",
        Error::Node(_) => "node",
    }
}

pub use crate::sys::text::chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        let bad_id = storage::ids::VolumeId::parse("nope").unwrap_err();
        assert_eq!(to_status(bad_id).code(), Code::NotFound);
        assert_eq!(
            to_status(controller::Error::BadToken("x".into())).code(),
            Code::Aborted
        );
        assert_eq!(
            to_status(inflight::Busy { key: "k".into() }).code(),
            Code::Aborted
        );
        let s = to_status(export::Error::NotResponding {
            export: "nfs://h/e".into(),
            source: offload::Error::TimedOut {
                what: "statvfs".into(),
                secs: 5,
            },
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert!(
            s.message().contains("nfs://h/e") && s.message().contains("5 s"),
            "{}",
            s.message()
        );
        let full = safefs::Error::Io {
            op: "mkdir",
            path: "/x".into(),
            source: Errno::ENOSPC,
        };
        assert_eq!(to_status(full).code(), Code::ResourceExhausted);
    }

    #[test]
    fn messages_are_capped() {
        for n in [0, 10, 1023, 1024, 1025, 3 << 20] {
            for unit in ["x", "é", "🦀"] {
                let long = unit.repeat(n);
                let s = to_status(controller::Error::JobFailed(long.clone()));
                assert!(s.message().len() <= MAX_MESSAGE, "{n} {unit}");
                if long.len() <= MAX_MESSAGE {
                    assert_eq!(s.message(), long);
                } else {
                    let total = long.len();
                    assert!(
                        s.message()
                            .ends_with(&format!("(message cut: {total} bytes)")),
                        "{}",
                        s.message()
                    );
                }
            }
        }
    }
}
