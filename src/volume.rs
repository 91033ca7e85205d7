//! Volumes: their ids, the StorageClass parameters that make them, the
//! `subDir` template, and the record kept for each one on its export.
//!
//! Safety assumptions: every string here arrives in a request and is hostile
//! until parsed. A [`RelPath`] is the only way to name a directory below an
//! export: relative, no `.`/`..`/empty components, no NUL or control
//! characters, never inside the driver's reserved directory. Ids are parsed
//! strictly and must be in canonical form, so one volume has one id.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::export::ExportSpec;

/// Directory at the top of every export that holds the driver's own data.
pub const RESERVED_DIR: &str = ".nfs-csi";

const MAX_PATH: usize = 4096;
const MAX_COMPONENT: usize = 255;

pub use crate::sys::text::{QUOTE_CHARS, quote, short};

/// Parameters that external-provisioner adds with `--extra-create-metadata`.
pub const PARAM_PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
pub const PARAM_PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
pub const PARAM_PV_NAME: &str = "csi.storage.k8s.io/pv/name";
const K8S_PREFIX: &str = "csi.storage.k8s.io/";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `id` is already quoted (see [`quote`]).
    #[error("volume id {id} is not an nfs-csi volume id: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("parameter {name:?}: {reason}")]
    InvalidParameter { name: String, reason: String },
    /// The name is already quoted (see [`quote`]).
    #[error(
        "unknown parameter {0}; known: server, share, mountedShare, subDir, mountPermissions, onDelete"
    )]
    UnknownParameter(String),
    /// `path` is already quoted (see [`quote`]).
    #[error("{what} {path} is not a safe path: {reason}")]
    UnsafePath {
        what: &'static str,
        path: String,
        reason: &'static str,
    },
    #[error("{0}")]
    NoExport(&'static str),
}

type Result<T> = std::result::Result<T, Error>;

/// A validated relative path below an export.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

impl RelPath {
    pub fn parse(s: &str) -> Result<RelPath> {
        Self::parse_as("subDir", s)
    }

    fn parse_as(what: &'static str, s: &str) -> Result<RelPath> {
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

/// Everything CreateVolume needs from the StorageClass parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateParams {
    pub export: ExportSpec,
    pub subdir: RelPath,
    pub mount_permissions: Option<u32>,
    pub on_delete: OnDelete,
}

/// Picks the export named by `server`+`share` or `mountedShare`, with
/// `mount_flags` (StorageClass mountOptions) for NFS; `default` when the
/// parameters name none.
pub fn export_from_params(
    params: &HashMap<String, String>,
    mount_flags: &[String],
    default: Option<&ExportSpec>,
) -> Result<ExportSpec> {
    let get = |k: &str| params.get(k).map(String::as_str);
    match (get("server"), get("share"), get("mountedShare")) {
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(Error::InvalidParameter {
            name: "mountedShare".into(),
            reason: "give either server+share or mountedShare, not both".into(),
        }),
        (Some(server), Some(share), None) => {
            let mut options = Vec::new();
            for flag in mount_flags {
                options.extend(
                    flag.split(',')
                        .map(str::trim)
                        .filter(|o| !o.is_empty())
                        .map(str::to_string),
                );
            }
            ExportSpec::nfs(server, share, &options)
        }
        (Some(_), None, None) => Err(Error::InvalidParameter {
            name: "share".into(),
            reason: "missing: server needs share (the exported path, e.g. /exports)".into(),
        }),
        (None, Some(_), None) => Err(Error::InvalidParameter {
            name: "server".into(),
            reason: "missing: share needs server (NFS server host name or IP)".into(),
        }),
        (None, None, Some(root)) => ExportSpec::mounted(root),
        (None, None, None) => default.cloned().ok_or(Error::NoExport(
            "no export: set server+share or mountedShare in the StorageClass parameters \
             (the driver has no single default export configured)",
        )),
    }
}

/// Refuses parameters the driver does not know (a typo in a StorageClass
/// must not be silently ignored). `csi.storage.k8s.io/` keys are Kubernetes'.
pub fn check_known(params: &HashMap<String, String>) -> Result<()> {
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for key in keys {
        let known = matches!(
            key.as_str(),
            "server" | "share" | "mountedShare" | "subDir" | "mountPermissions" | "onDelete"
        ) || key.starts_with(K8S_PREFIX);
        if !known {
            return Err(Error::UnknownParameter(quote(key)));
        }
    }
    Ok(())
}

/// Parses and checks CreateVolume's parameters.
pub fn create_params(
    name: &str,
    params: &HashMap<String, String>,
    mount_flags: &[String],
    default: Option<&ExportSpec>,
) -> Result<CreateParams> {
    check_known(params)?;
    let export = export_from_params(params, mount_flags, default)?;
    let subdir = match params.get("subDir") {
        Some(t) => RelPath::parse(&render_template(t, params)?)?,
        None => RelPath::parse_as("volume name", name)?,
    };
    let mount_permissions = match params.get("mountPermissions") {
        None => None,
        Some(s) => Some(parse_mode(s).ok_or_else(|| Error::InvalidParameter {
            name: "mountPermissions".into(),
            reason: format!(
                "{} is not an octal mode between 0 and 7777 (e.g. \"0777\")",
                quote(s)
            ),
        })?),
    };
    let on_delete = match params.get("onDelete").map(String::as_str) {
        None | Some("delete") => OnDelete::Delete,
        Some("retain") => OnDelete::Retain,
        Some("archive") => OnDelete::Archive,
        Some(other) => {
            return Err(Error::InvalidParameter {
                name: "onDelete".into(),
                reason: format!("{} is not one of delete, retain, archive", quote(other)),
            });
        }
    };
    Ok(CreateParams {
        export,
        subdir,
        mount_permissions,
        on_delete,
    })
}

fn parse_mode(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

/// Fills `${pvc.metadata.name}`, `${pvc.metadata.namespace}` and
/// `${pv.metadata.name}` in a `subDir` template.
pub fn render_template(template: &str, params: &HashMap<String, String>) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| Error::InvalidParameter {
            name: "subDir".into(),
            reason: format!("unclosed ${{ in {}", quote(template)),
        })?;
        let var = &after[..end];
        let key = match var {
            "pvc.metadata.name" => PARAM_PVC_NAME,
            "pvc.metadata.namespace" => PARAM_PVC_NAMESPACE,
            "pv.metadata.name" => PARAM_PV_NAME,
            other => {
                return Err(Error::InvalidParameter {
                    name: "subDir".into(),
                    reason: format!(
                        "unknown variable ${{{}}}; use ${{pvc.metadata.name}}, \
                         ${{pvc.metadata.namespace}} or ${{pv.metadata.name}}",
                        quote(other)
                    ),
                });
            }
        };
        let value = params.get(key).ok_or_else(|| Error::InvalidParameter {
            name: "subDir".into(),
            reason: format!(
                "${{{var}}} needs the {key} parameter; run external-provisioner with \
                 --extra-create-metadata"
            ),
        })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// What the driver keeps about a volume, in
/// `<export>/.nfs-csi/volumes/<digest of subdir>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub subdir: String,
    pub capacity_bytes: i64,
    pub on_delete: OnDelete,
    #[serde(default)]
    pub mount_permissions: Option<u32>,
    pub parameters: BTreeMap<String, String>,
    pub created_unix: u64,
    /// The snapshot or volume id this volume was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_source: Option<String>,
    /// False while the content is being restored or copied in.
    #[serde(default = "yes")]
    pub populated: bool,
    /// The directory existed before the volume: never deleted or emptied.
    #[serde(default)]
    pub adopted: bool,
    /// The id CreateVolume returned (ListVolumes returns the same one even
    /// when the export is known under other mount options too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
}

fn yes() -> bool {
    true
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn relpath_rejects_escapes() {
        for bad in [
            "",
            "/abs",
            "..",
            "a/../b",
            "a//b",
            "a/",
            "./a",
            "a\0b",
            "a\nb",
            ".nfs-csi",
            ".nfs-csi/x",
        ] {
            assert!(RelPath::parse(bad).is_err(), "{bad:?} must be rejected");
        }
        for good in ["a", "ns/pvc-1", "a.b/..c/d..", "x/.nfs-csi"] {
            assert!(RelPath::parse(good).is_ok(), "{good:?} must be accepted");
        }
    }

    #[test]
    fn template_fills_known_variables() {
        let p = params(&[
            (PARAM_PVC_NAME, "data"),
            (PARAM_PVC_NAMESPACE, "team-a"),
            (PARAM_PV_NAME, "pvc-123"),
        ]);
        let s = render_template(
            "${pvc.metadata.namespace}/${pvc.metadata.name}-${pv.metadata.name}",
            &p,
        )
        .unwrap();
        assert_eq!(s, "team-a/data-pvc-123");
        assert!(render_template("${pvc.metadata.labels}", &p).is_err());
        assert!(render_template("${pvc.metadata.name", &p).is_err());
        let err = render_template("${pv.metadata.name}", &HashMap::new()).unwrap_err();
        assert!(err.to_string().contains("--extra-create-metadata"), "{err}");
    }

    #[test]
    fn template_result_cannot_escape() {
        let p = params(&[
            ("mountedShare", "/srv"),
            ("subDir", "${pvc.metadata.namespace}/x"),
            (PARAM_PVC_NAMESPACE, ".."),
        ]);
        assert!(create_params("pvc-1", &p, &[], None).is_err());
    }

    #[test]
    fn params_are_checked() {
        let ok = create_params(
            "pvc-1",
            &params(&[
                ("mountedShare", "/srv/share"),
                ("mountPermissions", "0775"),
                ("onDelete", "archive"),
            ]),
            &[],
            None,
        )
        .unwrap();
        assert_eq!(ok.mount_permissions, Some(0o775));
        assert_eq!(ok.on_delete, OnDelete::Archive);
        assert_eq!(ok.subdir.as_str(), "pvc-1");
        let err = create_params(
            "v",
            &params(&[("mountedShare", "/s"), ("bogus", "1")]),
            &[],
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("\"bogus\""), "{err}");
        for bad in [
            &[("mountedShare", "/s"), ("mountPermissions", "999")][..],
            &[("mountedShare", "/s"), ("mountPermissions", "17777")],
            &[("mountedShare", "/s"), ("onDelete", "shred")],
            &[("mountedShare", "relative")],
            &[("server", "h"), ("share", "/e"), ("mountedShare", "/s")],
            &[("server", "h")],
            &[("share", "/e")],
        ] {
            assert!(
                create_params("v", &params(bad), &[], None).is_err(),
                "{bad:?}"
            );
        }
        assert!(create_params("v", &HashMap::new(), &[], None).is_err());
    }

    #[test]
    fn id_round_trips_and_is_strict() {
        let id = VolumeId {
            export: ExportSpec::nfs(
                "10.0.0.1",
                "/exports/a b",
                &["nfsvers=4.1".into(), "hard".into()],
            )
            .unwrap(),
            subdir: RelPath::parse("ns/pvc#1").unwrap(),
        };
        let s = id.to_string();
        assert_eq!(
            s,
            "v1#nfs#10.0.0.1#/exports/a%20b#nfsvers=4.1,hard#ns/pvc%231"
        );
        assert_eq!(VolumeId::parse(&s).unwrap(), id);
        let m = VolumeId {
            export: ExportSpec::mounted("/srv/share").unwrap(),
            subdir: RelPath::parse("pvc-1").unwrap(),
        };
        assert_eq!(VolumeId::parse(&m.to_string()).unwrap(), m);
        for bad in [
            "",
            "v2#mounted#/srv#x",
            "v1#mounted#/srv",
            "v1#mounted#/srv#..",
            "v1#mounted#/srv#a/../../etc",
            "v1#mounted#/srv#%2E%2E",
            "v1#mounted#relative#x",
            "v1#mounted#/srv/../etc#x",
            "v1#mounted#/srv#a%2f",
            "v1#mounted#/srv#x#extra",
            "v1#nfs#h#/e##.nfs-csi",
            "v1#mounted#/srv#%6x",
            "v1#mounted#/srv#%61",
            "v1#nfs#h;rm#/e##x",
        ] {
            assert!(VolumeId::parse(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn safe_file_names_do_not_collide() {
        let names = [
            "pvc-1",
            "a b",
            "x-612062",
            "h-00",
            &"n".repeat(300),
            "..",
            "",
        ];
        let files: Vec<String> = names.iter().map(|n| safe_file_name(n)).collect();
        let unique: std::collections::HashSet<&String> = files.iter().collect();
        assert_eq!(unique.len(), names.len(), "{files:?}");
        for f in &files {
            assert!(
                f.len() <= 255 && !f.starts_with('.') && !f.contains('/'),
                "{f}"
            );
        }
        assert_eq!(safe_file_name("pvc-1"), "pvc-1");
    }

    #[test]
    fn absolute_path_is_strict() {
        assert!(absolute_path("p", "/var/lib/kubelet").is_ok());
        assert!(absolute_path("p", "/").is_ok());
        for bad in [
            "", "rel", "/a/../b", "/a//b", "/a/", "/a/./b", "/a\0", "//", "///", "//a", "/a//",
        ] {
            assert!(absolute_path("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn double_slash_is_an_error_everywhere() {
        assert!(ExportSpec::mounted("//").is_err());
        assert!(ExportSpec::nfs("h", "//", &[]).is_err());
        assert!(ExportSpec::parse_flag("//").is_err());
        assert!(ExportSpec::parse_flag("h://").is_err());
        assert!(VolumeId::parse("v1#mounted#//#x").is_err());
        assert!(VolumeId::parse("v1#nfs#h#//##x").is_err());
        assert!(crate::snapshot::SnapshotId::parse("s1#mounted#//#x").is_err());
        let p = params(&[("mountedShare", "//")]);
        assert!(create_params("v", &p, &[], None).is_err());
    }

    #[test]
    fn quotes_are_short() {
        assert_eq!(quote("ab"), "\"ab\"");
        let long = "é".repeat(3 << 20);
        let q = quote(&long);
        assert!(q.len() < 600, "{}", q.len());
        assert!(q.ends_with(&format!("…({} bytes)", long.len())), "{q}");
        assert_eq!(short("ab"), "ab");
        assert!(short(&long).len() < 600);
        let err = RelPath::parse(&format!("/{}", "a".repeat(10_000))).unwrap_err();
        assert!(err.to_string().len() < 400, "{}", err.to_string().len());
    }

    mod props {
        use super::*;
        use crate::snapshot::SnapshotId;
        use proptest::prelude::*;

        /// Strings dense in the characters the parsers care about.
        fn edgy() -> impl Strategy<Value = String> {
            prop_oneof![
                "[/.a#%:,\\[\\]$\\{\\}x2F-]{0,16}",
                any::<String>(),
                "(/|//|\\.|\\.\\.|a|#|%2F|%)*",
            ]
        }

        fn export() -> impl Strategy<Value = Option<ExportSpec>> {
            prop_oneof![
                edgy().prop_map(|r| ExportSpec::mounted(&r).ok()),
                "/[a-z]{1,5}(/[a-z.]{1,5}){0,2}".prop_map(|r| ExportSpec::mounted(&r).ok()),
                (
                    edgy(),
                    edgy(),
                    proptest::collection::vec("[a-z=.0-9,]{0,6}", 0..3)
                )
                    .prop_map(|(h, s, o)| ExportSpec::nfs(&h, &s, &o).ok()),
                (
                    "[a-z0-9.:]{1,8}",
                    "/[a-z ]{0,5}(/[a-z#%]{1,5}){0,2}",
                    proptest::collection::vec("[a-z=.0-9]{1,6}", 0..3)
                )
                    .prop_map(|(h, s, o)| ExportSpec::nfs(&h, &s, &o).ok()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn volume_ids_parse_canonically_or_fail(s in edgy()) {
                if let Ok(id) = VolumeId::parse(&s) {
                    prop_assert_eq!(id.to_string(), s);
                }
            }

            #[test]
            fn volume_ids_round_trip(e in export(), sub in edgy()) {
                if let (Some(export), Ok(subdir)) = (e, RelPath::parse(&sub)) {
                    let id = VolumeId { export, subdir };
                    prop_assert_eq!(VolumeId::parse(&id.to_string()).unwrap(), id);
                }
            }

            #[test]
            fn snapshot_ids_parse_canonically_or_fail(s in edgy()) {
                let s = format!("s1#mounted#{s}");
                if let Ok(id) = SnapshotId::parse(&s) {
                    prop_assert_eq!(id.to_string(), s);
                }
            }

            #[test]
            fn snapshot_ids_round_trip(e in export(), name in edgy()) {
                // CreateSnapshot refuses an empty name before making an id.
                if let (Some(export), false) = (e, name.is_empty()) {
                    let id = SnapshotId::new(export, &name);
                    prop_assert_eq!(SnapshotId::parse(&id.to_string()).unwrap(), id);
                }
            }

            #[test]
            fn absolute_paths_are_kept_or_refused(s in edgy()) {
                if let Ok(p) = absolute_path("p", &s) {
                    prop_assert_eq!(p.to_str(), Some(s.as_str()));
                    prop_assert!(!s.contains("//") && !s.contains("/./") && !s.contains("/../"));
                }
            }

            #[test]
            fn relpaths_are_kept_or_refused(s in edgy()) {
                if let Ok(r) = RelPath::parse(&s) {
                    prop_assert_eq!(r.as_str(), s.as_str());
                    prop_assert_eq!(RelPath::parse(r.as_str()).unwrap(), r.clone());
                    prop_assert!(r.components().all(|c| c != ".." && c != "." && !c.is_empty()));
                }
            }

            #[test]
            fn export_flags_round_trip(s in edgy()) {
                if let Ok(spec) = ExportSpec::parse_flag(&s) {
                    let flag = match &spec {
                        ExportSpec::Mounted { root } => root.display().to_string(),
                        ExportSpec::Nfs { server, share, .. } if server.contains(':') => {
                            format!("[{server}]:{share}")
                        }
                        ExportSpec::Nfs { server, share, .. } => format!("{server}:{share}"),
                    };
                    prop_assert_eq!(ExportSpec::parse_flag(&flag).unwrap(), spec);
                }
            }

            #[test]
            fn templates_render_or_fail(t in edgy(), v in edgy()) {
                let p = params(&[(PARAM_PVC_NAME, &v), (PARAM_PVC_NAMESPACE, &v)]);
                match render_template(&t, &p) {
                    Ok(out) if !t.contains("${") => prop_assert_eq!(&out, &t),
                    Ok(_) => {}
                    Err(e) => prop_assert!(e.to_string().len() < 1000),
                }
                let filled = format!("{t}/${{pvc.metadata.name}}");
                if !t.contains("${") {
                    prop_assert_eq!(render_template(&filled, &p).unwrap(), format!("{t}/{v}"));
                }
                let _ = create_params("n", &params(&[("mountedShare", &t), ("subDir", &v)]), &[], None);
            }
        }
    }
}
