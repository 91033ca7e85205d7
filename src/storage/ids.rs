//! Volume, snapshot and group snapshot ids, and the checked paths below an export.
//!
//! Safety assumptions: every string here arrives in a request and is hostile
//! until parsed. A [`RelPath`] is the only way to name a directory below an
//! export: relative, no `.`/`..`/empty components, no NUL or control
//! characters, never inside the driver's reserved directory. Ids are parsed
//! strictly and must be in canonical form, so one volume has one id.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use super::Error;
use super::export::ExportSpec;
pub use crate::sys::text::{QUOTE_CHARS, quote, short};

/// Directory at the top of every export that holds the driver's own data.
pub const RESERVED_DIR: &str = ".nfs-csi";

const MAX_PATH: usize = 4096;
const MAX_COMPONENT: usize = 255;

type Result<T> = std::result::Result<T, Error>;

/// A validated relative path below an export.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    pub fn parse(s: &str) -> Result<RelPath> {
        Self::parse_as("subDir", s)
    }

    pub(super) fn parse_as(what: &'static str, s: &str) -> Result<RelPath> {
        let bad = |reason| Error::UnsafePath {
            what,
            path: quote(s),
            reason,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > MAX_PATH {
            return Err(bad("it is longer than 4096 bytes"));
        }
        if s.starts_with('/') {
            return Err(bad("it is absolute"));
        }
        if s.chars().any(|c| c == '\0' || c.is_control()) {
            return Err(bad("it contains NUL or a control character"));
        }
        for (i, comp) in s.split('/').enumerate() {
            match comp {
                "" => return Err(bad("it has an empty component (// or a trailing /)")),
                "." | ".." => return Err(bad("it has a . or .. component")),
                c if c.len() > MAX_COMPONENT => {
                    return Err(bad("a component is longer than 255 bytes"));
                }
                RESERVED_DIR if i == 0 => {
                    return Err(bad("it is inside the driver's reserved .nfs-csi directory"));
                }
                _ => {}
            }
        }
        Ok(RelPath(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.0.split('/').map(OsStr::new)
    }

    /// The parent path (None at the top) and the last component.
    pub fn split_last(&self) -> (Option<RelPath>, &str) {
        match self.0.rsplit_once('/') {
            Some((parent, leaf)) => (Some(RelPath(parent.to_string())), leaf),
            None => (None, &self.0),
        }
    }

    /// Stable file name for per-directory records.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl crate::sys::safefs::CheckedRelPath for RelPath {
    fn checked_components(&self) -> impl Iterator<Item = &OsStr> {
        self.components()
    }
}

/// What DeleteVolume does with the directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    #[default]
    Delete,
    Retain,
    Archive,
}

/// A parsed volume id: which export, which directory below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeId {
    pub export: ExportSpec,
    pub subdir: RelPath,
}

const ID_VERSION: &str = "v1";

/// Formats `<tag>#nfs#<server>#<share>#<options>#<item>` or
/// `<tag>#mounted#<root>#<item>`, each field %-encoded.
pub(crate) fn format_id(tag: &str, export: &ExportSpec, item: &str) -> String {
    match export {
        ExportSpec::Nfs {
            server,
            share,
            options,
        } => format!(
            "{tag}#nfs#{}#{}#{}#{}",
            encode(server),
            encode(share),
            encode(&options.join(",")),
            encode(item)
        ),
        ExportSpec::Mounted { root } => format!(
            "{tag}#mounted#{}#{}",
            encode(&root.to_string_lossy()),
            encode(item)
        ),
    }
}

/// Parses what [`format_id`] makes, strictly (canonical form only).
pub(crate) fn parse_id(tag: &str, id: &str) -> std::result::Result<(ExportSpec, String), String> {
    if id.is_empty() {
        return Err("it is empty".into());
    }
    let fields: Vec<&str> = id.split('#').collect();
    let dec = |s: &str| decode(s).ok_or_else(|| "bad %-encoding or character".to_string());
    let (export, item) = match fields.as_slice() {
        [t, "nfs", server, share, options, item] if *t == tag => {
            let options = dec(options)?;
            let options: Vec<String> = if options.is_empty() {
                Vec::new()
            } else {
                options.split(',').map(str::to_string).collect()
            };
            let export = ExportSpec::nfs(&dec(server)?, &dec(share)?, &options)
                .map_err(|e| e.to_string())?;
            (export, dec(item)?)
        }
        [t, "mounted", root, item] if *t == tag => (
            ExportSpec::mounted(&dec(root)?).map_err(|e| e.to_string())?,
            dec(item)?,
        ),
        [t, ..] if *t != tag => return Err("unknown version or format".into()),
        _ => return Err("wrong number of fields".into()),
    };
    if format_id(tag, &export, &item) != id {
        return Err("not in canonical form".into());
    }
    Ok((export, item))
}

impl VolumeId {
    pub fn parse(id: &str) -> Result<VolumeId> {
        let bad = |reason: String| Error::InvalidId {
            id: quote(id),
            reason,
        };
        let (export, item) = parse_id(ID_VERSION, id).map_err(bad)?;
        let subdir = RelPath::parse(&item).map_err(|e| bad(e.to_string()))?;
        Ok(VolumeId { export, subdir })
    }
}

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_id(ID_VERSION, &self.export, self.subdir.as_str()))
    }
}

const SNAPSHOT_ID_VERSION: &str = "s1";

/// Where a snapshot lives: the export holding it and its directory name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotId {
    pub export: ExportSpec,
    pub key: String,
}

impl SnapshotId {
    pub fn new(export: ExportSpec, name: &str) -> SnapshotId {
        SnapshotId {
            export,
            key: safe_file_name(name),
        }
    }

    pub fn parse(id: &str) -> Result<SnapshotId> {
        let bad = |reason: String| Error::InvalidSnapshotId {
            id: quote(id),
            reason,
        };
        let (export, key) = parse_id(SNAPSHOT_ID_VERSION, id).map_err(bad)?;
        if !snapshot_key_ok(&key) {
            return Err(bad("bad snapshot directory name".into()));
        }
        Ok(SnapshotId { export, key })
    }
}

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_id(SNAPSHOT_ID_VERSION, &self.export, &self.key))
    }
}

/// A snapshot directory name as `SnapshotId::new` makes it (plain, or an
/// `x-`/`h-` encoding), never `.`-prefixed or nested.
fn snapshot_key_ok(key: &str) -> bool {
    let encoded = (key.starts_with("x-") || key.starts_with("h-"))
        && key.len() > 2
        && key[2..].bytes().all(|b| b.is_ascii_hexdigit());
    (safe_file_name(key) == key || encoded)
        && !key.is_empty()
        && !key.contains('/')
        && !key.starts_with('.')
}

const GROUP_ID_VERSION: &str = "g1";

/// Where a volume group snapshot's record lives: the export holding it and
/// its directory name (the same rules as a snapshot's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSnapshotId {
    pub export: ExportSpec,
    pub key: String,
}

impl GroupSnapshotId {
    pub fn new(export: ExportSpec, name: &str) -> GroupSnapshotId {
        GroupSnapshotId {
            export,
            key: safe_file_name(name),
        }
    }

    pub fn parse(id: &str) -> Result<GroupSnapshotId> {
        let bad = |reason: String| Error::InvalidGroupSnapshotId {
            id: quote(id),
            reason,
        };
        let (export, key) = parse_id(GROUP_ID_VERSION, id).map_err(bad)?;
        if !snapshot_key_ok(&key) {
            return Err(bad("bad group snapshot directory name".into()));
        }
        Ok(GroupSnapshotId { export, key })
    }
}

impl std::fmt::Display for GroupSnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_id(GROUP_ID_VERSION, &self.export, &self.key))
    }
}

/// A file name safe to use for an arbitrary CSI name, one name to one file
/// name: the name itself when plain, `x-` and its hex when not (or when it
/// starts with `x-` or `h-` itself), `h-` and its SHA-256 when too long.
pub fn safe_file_name(name: &str) -> String {
    let plain = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && !name.starts_with("x-")
        && !name.starts_with("h-")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain {
        name.to_string()
    } else if name.len() <= 100 {
        format!("x-{}", hex::encode(name.as_bytes()))
    } else {
        format!("h-{}", hex::encode(Sha256::digest(name.as_bytes())))
    }
}

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~/:=,+@[]".contains(&b)
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
            {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if plain(b[i]) {
            out.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Validates an absolute path from a request or flag: absolute, no `.`,
/// `..` or empty components, no NUL or control characters.
pub fn absolute_path(what: &'static str, s: &str) -> Result<PathBuf> {
    let bad = |reason| Error::UnsafePath {
        what,
        path: quote(s),
        reason,
    };
    let Some(rest) = s.strip_prefix('/') else {
        return Err(bad("it is not absolute"));
    };
    if s.len() > MAX_PATH {
        return Err(bad("it is longer than 4096 bytes"));
    }
    if s.chars().any(|c| c == '\0' || c.is_control()) {
        return Err(bad("it contains NUL or a control character"));
    }
    if !rest.is_empty() {
        if rest.ends_with('/') {
            return Err(bad("it has a trailing /"));
        }
        for comp in rest.split('/') {
            if comp.is_empty() || comp == "." || comp == ".." {
                return Err(bad("it has an empty, . or .. component"));
            }
        }
    }
    Ok(Path::new(s).to_path_buf())
}
