//! NFS mount options: which ones may reach `mount -t nfs`.
//!
//! Safety assumptions: options arrive from StorageClasses and PVs (written by
//! admins), from the driver's flags, and, for inline volumes, from pod specs
//! (written by anyone allowed to create a pod). An option may change *how*
//! an NFS export is mounted, never *what* is mounted: options that turn the
//! call into a bind, a move, a remount or a loop device, or hand the mount to
//! another helper, are refused for every volume. Each option is checked on
//! its own, after splitting on `,`, with a strict character set, so no
//! option can smuggle in another one. Inline volumes go further: only the
//! NFS client options in [`INLINE_ALLOWED`] are accepted.

/// Longest option accepted (the longest real one is far shorter).
const MAX_OPTION: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mount option {0} is not a valid NFS mount option")]
    Malformed(String),
    #[error(
        "mount option {0:?} changes what is mounted, not how the NFS export is mounted; it is never allowed"
    )]
    Forbidden(String),
    #[error(
        "mount option {0:?} is not allowed on inline volumes; allowed: {allowed}",
        allowed = INLINE_ALLOWED.join(", ")
    )]
    NotAllowedInline(String),
    #[error("mount option {option:?}: {reason}")]
    BadValue {
        option: String,
        reason: &'static str,
    },
}

/// Options that change what is mounted (mount(8) and its helpers), or
/// whether anything is: refused everywhere. `bg` makes mount.nfs answer
/// success at once and keep trying in the background when the server does
/// not answer, so nothing would be mounted where the driver expects it.
/// Compared case-insensitively on the option's name.
const FORBIDDEN: &[&str] = &[
    "bg",
    "bind",
    "rbind",
    "move",
    "rmove",
    "remount",
    "loop",
    "offset",
    "sizelimit",
    "helper",
    "encryption",
    "fstype",
    "source",
    "target",
];

/// Name prefixes refused everywhere: util-linux's `X-mount.*` (mkdir,
/// subdir, idmap, owner...) and the userspace-only `x-*` options.
const FORBIDDEN_PREFIXES: &[&str] = &["x-mount.", "x-"];

/// NFS client options a pod may set on an inline volume.
pub const INLINE_ALLOWED: &[&str] = &[
    "nfsvers",
    "vers",
    "minorversion",
    "proto",
    "tcp",
    "udp",
    "port",
    "rsize",
    "wsize",
    "timeo",
    "retrans",
    "hard",
    "soft",
    "softerr",
    "intr",
    "nointr",
    "nolock",
    "lock",
    "local_lock",
    "noatime",
    "atime",
    "nodiratime",
    "diratime",
    "relatime",
    "norelatime",
    "strictatime",
    "ac",
    "noac",
    "actimeo",
    "acregmin",
    "acregmax",
    "acdirmin",
    "acdirmax",
    "cto",
    "nocto",
    "lookupcache",
    "rdirplus",
    "nordirplus",
    "nconnect",
    "sec",
    "ro",
    "rw",
    "nosuid",
    "nodev",
    "noexec",
    "sharecache",
    "nosharecache",
    "resvport",
    "noresvport",
];

/// Options whose value is a number.
const NUMERIC: &[&str] = &[
    "port",
    "rsize",
    "wsize",
    "timeo",
    "retrans",
    "actimeo",
    "acregmin",
    "acregmax",
    "acdirmin",
    "acdirmax",
    "nconnect",
    "minorversion",
];

fn name_of(option: &str) -> &str {
    option.split_once('=').map_or(option, |(n, _)| n)
}

/// Splits a list of option strings (each may hold several, comma-separated)
/// into single options, dropping empty ones.
pub fn split<S: AsRef<str>>(lists: &[S]) -> Vec<String> {
    lists
        .iter()
        .flat_map(|l| l.as_ref().split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_string)
        .collect()
}

/// Checks one option for any volume: well formed, and not one that changes
/// what is mounted.
pub fn check(option: &str) -> Result<(), Error> {
    let well_formed = !option.is_empty()
        && option.len() <= MAX_OPTION
        && !option.starts_with('-')
        && !option.starts_with('=')
        && option
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=._-:/+@".contains(&b));
    if !well_formed {
        return Err(Error::Malformed(crate::sys::text::quote(option)));
    }
    let name = name_of(option).to_ascii_lowercase();
    if FORBIDDEN.contains(&name.as_str()) || FORBIDDEN_PREFIXES.iter().any(|p| name.starts_with(p))
    {
        return Err(Error::Forbidden(option.to_string()));
    }
    Ok(())
}

/// Checks every option of a list for any volume.
pub fn check_all(options: &[String]) -> Result<(), Error> {
    options.iter().try_for_each(|o| check(o))
}

/// Checks one option of an inline volume: [`check`], then the allow-list
/// and the value's shape.
pub fn check_inline(option: &str) -> Result<(), Error> {
    check(option)?;
    let (name, value) = match option.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (option, None),
    };
    if !INLINE_ALLOWED.contains(&name) {
        return Err(Error::NotAllowedInline(option.to_string()));
    }
    let bad = |reason| Error::BadValue {
        option: option.to_string(),
        reason,
    };
    match (name, value) {
        (n, Some(v)) if NUMERIC.contains(&n) => {
            if v.is_empty() || v.len() > 10 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("the value must be a number"));
            }
        }
        (n, None) if NUMERIC.contains(&n) => return Err(bad("a value is required")),
        ("nfsvers" | "vers", Some(v)) => {
            if !["3", "4", "4.0", "4.1", "4.2"].contains(&v) {
                return Err(bad("the NFS version must be 3, 4, 4.0, 4.1 or 4.2"));
            }
        }
        ("proto", Some(v)) => {
            if !["tcp", "tcp6", "udp", "udp6", "rdma", "rdma6"].contains(&v) {
                return Err(bad(
                    "the protocol must be tcp, tcp6, udp, udp6, rdma or rdma6",
                ));
            }
        }
        ("sec", Some(v)) => {
            if !v
                .split(':')
                .all(|f| ["sys", "krb5", "krb5i", "krb5p"].contains(&f))
            {
                return Err(bad("the flavour must be sys, krb5, krb5i or krb5p"));
            }
        }
        ("lookupcache", Some(v)) => {
            if !["all", "none", "pos", "positive"].contains(&v) {
                return Err(bad("the value must be all, none or pos"));
            }
        }
        ("local_lock", Some(v)) => {
            if !["all", "flock", "posix", "none"].contains(&v) {
                return Err(bad("the value must be all, flock, posix or none"));
            }
        }
        ("nfsvers" | "vers" | "proto" | "sec" | "lookupcache" | "local_lock", None) => {
            return Err(bad("a value is required"));
        }
        (_, Some(_)) => return Err(bad("this option takes no value")),
        (_, None) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_that_change_what_is_mounted_are_refused() {
        for o in [
            "bind",
            "rbind",
            "BIND",
            "remount",
            "move",
            "loop",
            "loop=/dev/loop0",
            "X-mount.mkdir",
            "x-mount.subdir=etc",
            "X-mount.idmap=b:0:1000:1",
            "helper=foo",
            "offset=0",
            "bg",
        ] {
            assert!(
                matches!(check(o), Err(Error::Forbidden(_))),
                "{o}: {:?}",
                check(o)
            );
        }
    }

    #[test]
    fn malformed_options_are_refused() {
        let long = "a".repeat(300);
        for o in [
            "",
            "a,b",
            "nfsvers=4 ,hard",
            "a\0b",
            "-o",
            "=x",
            "context=\"x\"",
            "a b",
            long.as_str(),
        ] {
            assert!(
                matches!(check(o), Err(Error::Malformed(_))),
                "{o:?}: {:?}",
                check(o)
            );
        }
    }

    #[test]
    fn ordinary_admin_options_pass() {
        for o in [
            "nfsvers=4.1",
            "hard",
            "noresvport",
            "rsize=1048576",
            "sec=krb5p",
            "nolock",
            "context=system_u:object_r:nfs_t:s0",
            "clientaddr=10.0.0.1",
        ] {
            check(o).unwrap();
        }
    }

    #[test]
    fn inline_volumes_take_only_the_allow_list() {
        for o in [
            "nfsvers=4.2",
            "vers=3",
            "proto=tcp",
            "port=2049",
            "rsize=65536",
            "hard",
            "soft",
            "nolock",
            "noatime",
            "actimeo=30",
            "sec=krb5i",
            "ro",
            "nconnect=4",
            "lookupcache=none",
        ] {
            check_inline(o).unwrap();
        }
        for o in [
            "context=system_u:object_r:nfs_t:s0",
            "clientaddr=1.2.3.4",
            "addr=10.0.0.9",
            "mountport=1",
            "fsc",
            "suid",
        ] {
            assert!(
                matches!(check_inline(o), Err(Error::NotAllowedInline(_))),
                "{o}: {:?}",
                check_inline(o)
            );
        }
        for o in [
            "port=x",
            "port",
            "rsize=99999999999",
            "nfsvers=5",
            "sec=none",
            "proto=unix",
            "hard=1",
        ] {
            assert!(
                matches!(check_inline(o), Err(Error::BadValue { .. })),
                "{o}: {:?}",
                check_inline(o)
            );
        }
        assert!(matches!(check_inline("bind"), Err(Error::Forbidden(_))));
    }

    #[test]
    fn split_flattens_comma_lists() {
        assert_eq!(
            split(&["nfsvers=4.1,hard", "", " noatime "]),
            vec!["nfsvers=4.1", "hard", "noatime"]
        );
    }
}
