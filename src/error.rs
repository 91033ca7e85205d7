//! The driver's error type and the one mapping from errors to gRPC status
//! codes (as the CSI spec prescribes them), which also logs each failure.

use nix::errno::Errno;
use tonic::{Code, Status};

use crate::{
    command, controller, export, hostpath, inflight, mount, mountopts, node, offload, safefs,
    snapshot, tree, volume,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Volume(#[from] volume::Error),
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
    Snapshot(#[from] snapshot::Error),
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

/// The gRPC code for an error.
pub fn code(err: &Error) -> Code {
    use controller::Error as C;
    use node::Error as N;
    match err {
        Error::Volume(volume::Error::InvalidId { .. }) => Code::NotFound,
        Error::Volume(_) => Code::InvalidArgument,
        Error::Fs(e) => fs_code(e),
        Error::Mount(e) => mount_code(e),
        Error::Export(export::Error::NotResponding { .. }) => Code::Unavailable,
        Error::Export(export::Error::Missing { .. }) => Code::FailedPrecondition,
        Error::Export(export::Error::Mount { source, .. }) => mount_code(source),
        Error::Export(export::Error::State { .. }) => Code::Internal,
        Error::Export(export::Error::Overlap { .. }) => Code::FailedPrecondition,
        Error::Offload(offload::Error::Panicked { .. }) => Code::Internal,
        Error::Offload(_) => Code::Unavailable,
        Error::Busy(_) => Code::Aborted,
        Error::Controller(e) => match e {
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
            C::DirInUse { .. } => Code::FailedPrecondition,
            C::SnapshotParameter { .. } => Code::InvalidArgument,
            C::AlreadyExists { .. } => Code::AlreadyExists,
            C::BadToken(_) => Code::Aborted,
            C::CorruptRecord { .. } => Code::Internal,
        },
        Error::Node(e) => match e {
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
        },
        Error::Snapshot(e) => match e {
            snapshot::Error::InvalidId { .. } => Code::NotFound,
            snapshot::Error::Checksum { .. }
            | snapshot::Error::Length { .. }
            | snapshot::Error::Corrupt { .. } => Code::DataLoss,
            snapshot::Error::Refused { .. } => Code::FailedPrecondition,
            snapshot::Error::Tree(t) => tree_code(t),
            snapshot::Error::Fs(f) => fs_code(f),
            snapshot::Error::Io { .. } | snapshot::Error::BadJson(..) => Code::Internal,
        },
        Error::Tree(t) => tree_code(t),
        Error::HostPath(e) => match e {
            hostpath::Error::NotBelow { .. } | hostpath::Error::Symlink { .. } => {
                Code::InvalidArgument
            }
            hostpath::Error::NotADirectory { .. } => Code::FailedPrecondition,
            hostpath::Error::Io { source, .. } => errno_code(*source),
        },
        Error::MountOption(_) => Code::InvalidArgument,
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
    crate::metrics::error(kind(&err));
    let message = capped(chain(&err));
    match code {
        Code::Internal | Code::Unavailable => tracing::error!(code = ?code, "{message}"),
        _ => tracing::warn!(code = ?code, "{message}"),
    }
    Status::new(code, message)
}

/// The module an error comes from, for the errors metric.
fn kind(err: &Error) -> &'static str {
    match err {
        Error::Volume(_) | Error::MountOption(_) => "request",
        Error::HostPath(_) => "path",
        Error::Fs(_) | Error::Tree(_) => "filesystem",
        Error::Mount(_) => "mount",
        Error::Export(_) => "export",
        Error::Offload(_) => "timeout",
        Error::Busy(_) => "busy",
        Error::Controller(_) => "controller",
        Error::Node(_) => "node",
        Error::Snapshot(_) => "snapshot",
    }
}

/// The error and its sources, joined.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let part = e.to_string();
        if !s.contains(&part) {
            s.push_str(": ");
            s.push_str(&part);
        }
        cur = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        let bad_id = volume::VolumeId::parse("nope").unwrap_err();
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
