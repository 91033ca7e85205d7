//! Flag parsing shared by every RPC of `nfs-csi call`: capabilities,
//! secrets, paging, `KEY=VALUE` pairs and byte quantities.

use std::collections::HashMap;

use clap::{Args, ValueEnum};

use super::Failure;
use crate::grpc::csi::v1 as csi;

/// A volume capability (VolumeCapability): mount access type unless --block.
#[derive(Args, Debug)]
pub struct Capability {
    /// Access mode.
    #[arg(long, value_enum, default_value_t = AccessMode::MultiNodeMultiWriter)]
    access_mode: AccessMode,
    /// A mount flag (repeatable), e.g. --mount-flag nfsvers=4.1.
    #[arg(long = "mount-flag", value_name = "FLAG")]
    mount_flags: Vec<String>,
    /// Filesystem type of the mount capability.
    #[arg(long, default_value = "", hide_default_value = true)]
    fs_type: String,
    /// volume_mount_group of the mount capability.
    #[arg(long, default_value = "", hide_default_value = true)]
    volume_mount_group: String,
    /// Block access type instead of mount (this driver refuses it).
    #[arg(long, conflicts_with_all = ["mount_flags", "fs_type", "volume_mount_group"])]
    block: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum AccessMode {
    SingleNodeWriter,
    SingleNodeReaderOnly,
    MultiNodeReaderOnly,
    MultiNodeSingleWriter,
    MultiNodeMultiWriter,
    SingleNodeSingleWriter,
    SingleNodeMultiWriter,
}

impl Capability {
    pub(super) fn build(&self) -> csi::VolumeCapability {
        use csi::volume_capability::{AccessType, BlockVolume, MountVolume, access_mode::Mode};
        let mode = match self.access_mode {
            AccessMode::SingleNodeWriter => Mode::SingleNodeWriter,
            AccessMode::SingleNodeReaderOnly => Mode::SingleNodeReaderOnly,
            AccessMode::MultiNodeReaderOnly => Mode::MultiNodeReaderOnly,
            AccessMode::MultiNodeSingleWriter => Mode::MultiNodeSingleWriter,
            AccessMode::MultiNodeMultiWriter => Mode::MultiNodeMultiWriter,
            AccessMode::SingleNodeSingleWriter => Mode::SingleNodeSingleWriter,
            AccessMode::SingleNodeMultiWriter => Mode::SingleNodeMultiWriter,
        };
        let access_type = if self.block {
            AccessType::Block(BlockVolume {})
        } else {
            AccessType::Mount(MountVolume {
                fs_type: self.fs_type.clone(),
                mount_flags: self.mount_flags.clone(),
                volume_mount_group: self.volume_mount_group.clone(),
            })
        };
        csi::VolumeCapability {
            access_mode: Some(csi::volume_capability::AccessMode { mode: mode as i32 }),
            access_type: Some(access_type),
        }
    }
}

/// The `secrets` map: `--secret KEY=VALUE`, parsed after clap so that a
/// malformed one is never echoed in an error message.
#[derive(Args, Debug)]
pub struct Secrets {
    /// An entry of the secrets map (repeatable). Never printed; note that
    /// command lines are visible to other users of this host.
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    secret: Vec<String>,
}

impl Secrets {
    pub(super) fn build(&self) -> Result<HashMap<String, String>, Failure> {
        let mut map = HashMap::new();
        for (i, s) in self.secret.iter().enumerate() {
            let n = i + 1;
            let (k, v) = s.split_once('=').ok_or_else(|| {
                Failure::Usage(format!(
                    "--secret #{n} is not KEY=VALUE (its text is not shown)"
                ))
            })?;
            if k.is_empty() {
                return Err(Failure::Usage(format!("--secret #{n} has an empty key")));
            }
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(Failure::Usage(format!("--secret {k} given twice")));
            }
        }
        Ok(map)
    }
}

#[derive(Args, Debug)]
pub struct Page {
    /// Entries per page (0: the driver's default).
    #[arg(long, default_value_t = 0)]
    pub(super) max_entries: i32,
    /// next_token of the previous page.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub(super) starting_token: String,
}

/// `KEY=VALUE`, split at the first `=`; the key must not be empty.
pub(super) fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err("the key is empty".into()),
        None => Err("expected KEY=VALUE".into()),
    }
}

/// A byte count: an integer with an optional Kubernetes quantity suffix
/// (k, M, G, T, P: powers of 1000; Ki, Mi, Gi, Ti, Pi: powers of 1024).
pub fn parse_bytes(s: &str) -> Result<i64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() {
        return Err("expected a number of bytes such as 1073741824 or 1Gi".into());
    }
    let mult: i64 = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => {
            return Err(format!(
                "unknown suffix {suffix:?} (use k, M, G, T, P, Ki, Mi, Gi, Ti or Pi)"
            ));
        }
    };
    num.parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| "too large".to_string())
}

/// Repeated `--flag KEY=VALUE` as a map; a key given twice is an error.
pub(super) fn map(
    flag: &str,
    pairs: &[(String, String)],
) -> Result<HashMap<String, String>, Failure> {
    let mut m = HashMap::new();
    for (k, v) in pairs {
        if m.insert(k.clone(), v.clone()).is_some() {
            return Err(Failure::Usage(format!("--{flag} {k} given twice")));
        }
    }
    Ok(m)
}

pub(super) fn capacity(required: Option<i64>, limit: Option<i64>) -> Option<csi::CapacityRange> {
    (required.is_some() || limit.is_some()).then(|| csi::CapacityRange {
        required_bytes: required.unwrap_or(0),
        limit_bytes: limit.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_quantities() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("1Mi"), Ok(1 << 20));
        assert_eq!(parse_bytes("2Gi"), Ok(2 << 30));
        assert_eq!(parse_bytes("5G"), Ok(5_000_000_000));
        assert_eq!(parse_bytes("3k"), Ok(3000));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("1.5Gi").is_err());
        assert!(parse_bytes("1Xi").is_err());
        assert!(parse_bytes("9999999Pi").is_err());
    }

    #[test]
    fn key_values() {
        assert_eq!(parse_kv("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_kv("a="), Ok(("a".into(), String::new())));
        assert!(parse_kv("=b").is_err());
        assert!(parse_kv("ab").is_err());
        let twice = [("a".into(), "1".into()), ("a".into(), "2".into())];
        assert!(matches!(map("parameter", &twice), Err(Failure::Usage(_))));
    }

    #[test]
    fn malformed_secret_is_not_echoed() {
        let s = Secrets {
            secret: vec!["ok=1".into(), "hunter2".into()],
        };
        let err = s.build().unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("#2"), "{err}");
    }
}
