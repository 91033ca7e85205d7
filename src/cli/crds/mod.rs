//! The `snapshot.storage.k8s.io` CustomResourceDefinitions (VolumeSnapshot,
//! VolumeSnapshotContent, VolumeSnapshotClass) as typed Rust, and in
//! [`group`] the `groupsnapshot.storage.k8s.io` ones (VolumeGroupSnapshot,
//! VolumeGroupSnapshotContent, VolumeGroupSnapshotClass), from which
//! `nfs-csi crds` generates the YAML committed in `snapshot-crds/`.
//!
//! These resources belong to Kubernetes, not to this driver: the upstream
//! snapshot-controller and the csi-snapshotter sidecar read and write them.
//! So the schema must be the one those programs expect: the same group,
//! kinds, names, short names, scope, versions (v1 served and stored, v1beta1
//! kept but no longer served, so clusters that once stored v1beta1 objects can
//! still apply these CRDs), fields, required fields, validation rules,
//! printer columns and status subresource as external-snapshotter v8 (the
//! group kinds: as v8.6.0, see [`group`]).
//! `tests/deploy.rs` checks the committed files against [`yaml`] and the
//! examples against the schemas.
//!
//! The types serve as documentation and as a typed view of the objects; the
//! driver itself never talks to the API server.

// Each `printcolumn(...)` of `#[kube]` repeats keys like `type_ = "string"`,
// which clippy takes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceSubresources, JSONSchemaProps, JSONSchemaPropsOrArray,
    JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResourceExt;
use kube::core::crd::merge_crds;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of all three resources. Kubernetes refuses a CRD in a
/// `*.k8s.io` group unless it carries an `api-approved.kubernetes.io`
/// annotation naming the review that approved the API, hence the
/// `annotation(...)` on each v1 kind (the merged CRD keeps v1's metadata).
pub const GROUP: &str = "snapshot.storage.k8s.io";

/// What happens to a snapshot on the storage when its VolumeSnapshotContent
/// is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// The snapshot on the storage is deleted with the content object.
    Delete,
    /// The snapshot on the storage and the content object are kept.
    Retain,
}

/// A failure the snapshot machinery reports while taking a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotError {
    /// Human-readable description of the failure; logged, so it must not
    /// contain secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the failure happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// Schema of a `resource.Quantity` as Kubernetes writes it in a CRD: an
/// integer or a string in quantity notation.
fn quantity_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
        "x-kubernetes-int-or-string": true,
    })
}

pub mod v1;

pub mod v1beta1;

pub mod group;

/// The six CRDs, in a fixed order: VolumeSnapshotClass,
/// VolumeSnapshotContent, VolumeSnapshot, each with its v1 (served, stored)
/// and v1beta1 (neither) versions; then VolumeGroupSnapshotClass,
/// VolumeGroupSnapshotContent, VolumeGroupSnapshot, each with the versions
/// of [`group`].
pub fn crds() -> Vec<CustomResourceDefinition> {
    let merge = |v1: CustomResourceDefinition, v1beta1: CustomResourceDefinition| {
        let mut crd = merge_crds(vec![v1, v1beta1], "v1").expect("the versions of one kind merge");
        finish(&mut crd);
        crd
    };
    vec![
        merge(
            v1::VolumeSnapshotClass::crd(),
            v1beta1::VolumeSnapshotClass::crd(),
        ),
        merge(
            v1::VolumeSnapshotContent::crd(),
            v1beta1::VolumeSnapshotContent::crd(),
        ),
        merge(v1::VolumeSnapshot::crd(), v1beta1::VolumeSnapshot::crd()),
    ]
    .into_iter()
    .chain(group::crds().into_iter().map(|mut crd| {
        finish(&mut crd);
        crd
    }))
    .collect()
}

/// Brings what the derive produces to the form of the upstream CRDs.
fn finish(crd: &mut CustomResourceDefinition) {
    // The API server would default it to the same; upstream spells it out.
    let list_kind = format!("{}List", crd.spec.names.kind);
    crd.spec.names.list_kind = Some(list_kind);
    for version in &mut crd.spec.versions {
        // A class has no status, but says so with an empty subresources
        // object, as upstream does.
        version
            .subresources
            .get_or_insert_with(CustomResourceSubresources::default);
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            // Go clients omit absent fields rather than send null, and the
            // upstream schemas do not accept null: drop schemars' `nullable`,
            // and its `title` (the Rust type's name).
            normalize(schema);
            schema.title = None;
            // The derive leaves out the fields every object has; upstream
            // lists them.
            let props = schema.properties.get_or_insert_with(BTreeMap::new);
            props.insert(
                "apiVersion".into(),
                string_prop(&format!(
                    "The versioned schema of this object, e.g. {}/v1.",
                    crd.spec.group
                )),
            );
            props.insert(
                "kind".into(),
                string_prop("The REST resource this object represents, in CamelCase."),
            );
            props.insert(
                "metadata".into(),
                JSONSchemaProps {
                    type_: Some("object".into()),
                    ..Default::default()
                },
            );
        }
    }
}

fn string_prop(description: &str) -> JSONSchemaProps {
    JSONSchemaProps {
        description: Some(description.into()),
        type_: Some("string".into()),
        ..Default::default()
    }
}

/// Drops `nullable` everywhere, and gives an int-or-string its two
/// alternatives back (the structural rewrite empties them).
fn normalize(s: &mut JSONSchemaProps) {
    s.nullable = None;
    if s.x_kubernetes_int_or_string == Some(true) {
        s.any_of = Some(
            ["integer", "string"]
                .map(|t| JSONSchemaProps {
                    type_: Some(t.into()),
                    ..Default::default()
                })
                .into(),
        );
    }
    for p in s.properties.iter_mut().flat_map(|m| m.values_mut()) {
        normalize(p);
    }
    for list in [&mut s.any_of, &mut s.one_of, &mut s.all_of] {
        for p in list.iter_mut().flatten() {
            normalize(p);
        }
    }
    match &mut s.items {
        Some(JSONSchemaPropsOrArray::Schema(p)) => normalize(p),
        Some(JSONSchemaPropsOrArray::Schemas(ps)) => ps.iter_mut().for_each(normalize),
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(p)) = &mut s.additional_properties {
        normalize(p);
    }
}

/// The line that heads every generated file.
pub const HEADER: &str = "# Generated by `nfs-csi crds` from src/cli/crds/: do not edit.\n";

/// One CRD as the YAML document committed in `snapshot-crds/`.
pub fn yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml_ng::to_string(crd).expect("a CRD serializes to YAML");
    format!("{HEADER}---\n{body}")
}

/// The file a CRD is committed as: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!(
        "{}.yaml",
        crd.metadata
            .name
            .as_deref()
            .expect("a derived CRD has a name")
    )
}

/// All CRDs as one YAML stream, what `nfs-csi crds` prints.
pub fn all_yaml() -> String {
    crds().iter().map(yaml).collect()
}

/// Writes each CRD to `<dir>/<file_name>`.
pub fn write_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for crd in crds() {
        std::fs::write(dir.join(file_name(&crd)), yaml(&crd))?;
    }
    Ok(())
}
