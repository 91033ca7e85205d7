//! StorageClass parameters: which export a volume goes on, its `subDir`
//! template, and the record kept for each volume on its export.
//!
//! Safety assumptions: parameters come from StorageClasses (admins) and,
//! for the `csi.storage.k8s.io/` ones, from PVC names and namespaces (any
//! user); a rendered template is parsed as a [`RelPath`] like any request
//! path, so no value can escape the export.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

pub use super::Error;
use super::export::ExportSpec;
use super::ids::{OnDelete, RelPath};
use crate::sys::text::quote;

type Result<T> = std::result::Result<T, Error>;

/// Parameters that external-provisioner adds with `--extra-create-metadata`.
pub const PARAM_PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
pub const PARAM_PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
pub const PARAM_PV_NAME: &str = "csi.storage.k8s.io/pv/name";
const K8S_PREFIX: &str = "csi.storage.k8s.io/";

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
    let mount_permissions = params
        .get("mountPermissions")
        .map(String::as_str)
        .map(mount_permissions)
        .transpose()?;
    let on_delete = params
        .get("onDelete")
        .map(String::as_str)
        .map(on_delete)
        .transpose()?
        .unwrap_or(OnDelete::Delete);
    Ok(CreateParams {
        export,
        subdir,
        mount_permissions,
        on_delete,
    })
}

/// The `mountPermissions` value: an octal mode.
fn mount_permissions(s: &str) -> Result<u32> {
    parse_mode(s).ok_or_else(|| Error::InvalidParameter {
        name: "mountPermissions".into(),
        reason: format!(
            "{} is not an octal mode between 0 and 7777 (e.g. \"0777\")",
            quote(s)
        ),
    })
}

/// The `onDelete` value.
fn on_delete(s: &str) -> Result<OnDelete> {
    match s {
        "delete" => Ok(OnDelete::Delete),
        "retain" => Ok(OnDelete::Retain),
        "archive" => Ok(OnDelete::Archive),
        other => Err(Error::InvalidParameter {
            name: "onDelete".into(),
            reason: format!("{} is not one of delete, retain, archive", quote(other)),
        }),
    }
}

/// The mutable parameters (CreateVolume's `mutable_parameters`,
/// ControllerModifyVolume's, a VolumeAttributesClass's): what may change on
/// an existing volume. `None`: left as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MutableParams {
    pub on_delete: Option<OnDelete>,
    pub mount_permissions: Option<u32>,
}

/// Parses mutable parameters: `onDelete` and `mountPermissions`, with the
/// values CreateVolume's parameters take; any other key is refused (named in
/// the error), except Kubernetes' own `csi.storage.k8s.io/` ones.
pub fn mutable_params(params: &HashMap<String, String>) -> Result<MutableParams> {
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for key in keys {
        if !matches!(key.as_str(), "onDelete" | "mountPermissions") && !key.starts_with(K8S_PREFIX)
        {
            return Err(Error::UnknownMutableParameter(quote(key)));
        }
    }
    Ok(MutableParams {
        on_delete: params
            .get("onDelete")
            .map(String::as_str)
            .map(on_delete)
            .transpose()?,
        mount_permissions: params
            .get("mountPermissions")
            .map(String::as_str)
            .map(mount_permissions)
            .transpose()?,
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
