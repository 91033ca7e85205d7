//! The `snapshot.storage.k8s.io` CustomResourceDefinitions (VolumeSnapshot,
//! VolumeSnapshotContent, VolumeSnapshotClass) as typed Rust, from which
//! `nfs-csi crds` generates the YAML committed in `snapshot-crds/`.
//!
//! These resources belong to Kubernetes, not to this driver: the upstream
//! snapshot-controller and the csi-snapshotter sidecar read and write them.
//! So the schema must be the one those programs expect: the same group,
//! kinds, names, short names, scope, versions (v1 served and stored, v1beta1
//! kept but no longer served, so clusters that once stored v1beta1 objects can
//! still apply these CRDs), fields, required fields, validation rules,
//! printer columns and status subresource as external-snapshotter v8.
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

/// The current version, `snapshot.storage.k8s.io/v1`: served and stored.
pub mod v1 {
    use kube::{CustomResource, KubeSchema};

    use super::*;

    /// What the user asks for: where the snapshot comes from and with which
    /// class.
    #[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[kube(
        group = "snapshot.storage.k8s.io",
        version = "v1",
        kind = "VolumeSnapshot",
        plural = "volumesnapshots",
        singular = "volumesnapshot",
        shortname = "vs",
        namespaced,
        status = "VolumeSnapshotStatus",
        derive = "PartialEq",
        annotation(
            "api-approved.kubernetes.io",
            "https://github.com/kubernetes-csi/external-snapshotter/pull/814"
        ),
        doc = "A user's request for a point-in-time snapshot of a PersistentVolumeClaim, or for binding to an existing snapshot.",
        printcolumn(
            name = "ReadyToUse",
            type_ = "boolean",
            json_path = ".status.readyToUse",
            description = "Whether the snapshot can be used to restore a volume."
        ),
        printcolumn(
            name = "SourcePVC",
            type_ = "string",
            json_path = ".spec.source.persistentVolumeClaimName",
            description = "The claim the snapshot is (or will be) taken of."
        ),
        printcolumn(
            name = "SourceSnapshotContent",
            type_ = "string",
            json_path = ".spec.source.volumeSnapshotContentName",
            description = "The pre-existing VolumeSnapshotContent this snapshot binds to."
        ),
        printcolumn(
            name = "RestoreSize",
            type_ = "string",
            json_path = ".status.restoreSize",
            description = "Smallest volume this snapshot can be restored into."
        ),
        printcolumn(
            name = "SnapshotClass",
            type_ = "string",
            json_path = ".spec.volumeSnapshotClassName",
            description = "The VolumeSnapshotClass asked for."
        ),
        printcolumn(
            name = "SnapshotContent",
            type_ = "string",
            json_path = ".status.boundVolumeSnapshotContentName",
            description = "The VolumeSnapshotContent this snapshot is bound to; the binding holds only when both objects name each other."
        ),
        printcolumn(
            name = "CreationTime",
            type_ = "date",
            json_path = ".status.creationTime",
            description = "When the storage system took the snapshot."
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )]
    #[serde(rename_all = "camelCase")]
    pub struct VolumeSnapshotSpec {
        /// Where the snapshot comes from: a claim to snapshot, or an existing
        /// VolumeSnapshotContent. Cannot be changed after creation.
        pub source: VolumeSnapshotSource,
        /// The VolumeSnapshotClass to use; when absent, the default class of
        /// the source volume's driver. Must not be empty when set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[x_kube(validation = Rule::new("size(self) > 0").message("volumeSnapshotClassName must not be the empty string when set"))]
        pub volume_snapshot_class_name: Option<String>,
    }

    /// Exactly one of the two fields; neither may change once set.
    #[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[x_kube(
        validation = Rule::new("!has(oldSelf.persistentVolumeClaimName) || has(self.persistentVolumeClaimName)").message("persistentVolumeClaimName is required once set"),
        validation = Rule::new("!has(oldSelf.volumeSnapshotContentName) || has(self.volumeSnapshotContentName)").message("volumeSnapshotContentName is required once set"),
        validation = Rule::new("(has(self.volumeSnapshotContentName) && !has(self.persistentVolumeClaimName)) || (!has(self.volumeSnapshotContentName) && has(self.persistentVolumeClaimName))").message("exactly one of volumeSnapshotContentName and persistentVolumeClaimName must be set")
    )]
    pub struct VolumeSnapshotSource {
        /// The claim, in the snapshot's namespace, to take a new snapshot of.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[x_kube(validation = Rule::new("self == oldSelf").message("persistentVolumeClaimName is immutable"))]
        pub persistent_volume_claim_name: Option<String>,
        /// An existing VolumeSnapshotContent to represent in this namespace.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[x_kube(validation = Rule::new("self == oldSelf").message("volumeSnapshotContentName is immutable"))]
        pub volume_snapshot_content_name: Option<String>,
    }

    /// What the snapshot controller observed; mirrors the bound
    /// VolumeSnapshotContent. Check that both objects name each other before
    /// trusting it.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct VolumeSnapshotStatus {
        /// The VolumeSnapshotContent this snapshot is bound to, once bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub bound_volume_snapshot_content_name: Option<String>,
        /// When the storage system took the snapshot (the CSI
        /// `creation_time`); absent when unknown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub creation_time: Option<Time>,
        /// Whether a volume can be restored from the snapshot now (the CSI
        /// `ready_to_use`); absent when unknown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ready_to_use: Option<bool>,
        /// The smallest volume the snapshot can be restored into (the CSI
        /// `size_bytes`); absent when unknown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(schema_with = "quantity_schema")]
        pub restore_size: Option<Quantity>,
        /// The last error met while taking the snapshot; cleared on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<VolumeSnapshotError>,
        /// The VolumeGroupSnapshot this snapshot belongs to, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub volume_group_snapshot_name: Option<String>,
    }

    /// Which snapshot this is, which VolumeSnapshot it is bound to, and what
    /// becomes of it when released.
    #[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[kube(
        group = "snapshot.storage.k8s.io",
        version = "v1",
        kind = "VolumeSnapshotContent",
        plural = "volumesnapshotcontents",
        singular = "volumesnapshotcontent",
        shortname = "vsc",
        shortname = "vscs",
        status = "VolumeSnapshotContentStatus",
        derive = "PartialEq",
        annotation(
            "api-approved.kubernetes.io",
            "https://github.com/kubernetes-csi/external-snapshotter/pull/955"
        ),
        doc = "A snapshot on the storage system: taken for a VolumeSnapshot, or pre-existing and imported.",
        printcolumn(
            name = "ReadyToUse",
            type_ = "boolean",
            json_path = ".status.readyToUse",
            description = "Whether the snapshot can be used to restore a volume."
        ),
        printcolumn(
            name = "RestoreSize",
            type_ = "integer",
            json_path = ".status.restoreSize",
            description = "Size of the snapshot in bytes."
        ),
        printcolumn(
            name = "DeletionPolicy",
            type_ = "string",
            json_path = ".spec.deletionPolicy",
            description = "Whether the snapshot on the storage is deleted or kept when its VolumeSnapshot goes."
        ),
        printcolumn(
            name = "Driver",
            type_ = "string",
            json_path = ".spec.driver",
            description = "The CSI driver that took the snapshot."
        ),
        printcolumn(
            name = "VolumeSnapshotClass",
            type_ = "string",
            json_path = ".spec.volumeSnapshotClassName",
            description = "The class the snapshot was taken with."
        ),
        printcolumn(
            name = "VolumeSnapshot",
            type_ = "string",
            json_path = ".spec.volumeSnapshotRef.name",
            description = "Name of the bound VolumeSnapshot."
        ),
        printcolumn(
            name = "VolumeSnapshotNamespace",
            type_ = "string",
            json_path = ".spec.volumeSnapshotRef.namespace",
            description = "Namespace of the bound VolumeSnapshot."
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )]
    #[serde(rename_all = "camelCase")]
    #[x_kube(validation = Rule::new("!has(oldSelf.sourceVolumeMode) || has(self.sourceVolumeMode)").message("sourceVolumeMode is required once set"))]
    pub struct VolumeSnapshotContentSpec {
        /// The VolumeSnapshot this content is bound to (name and namespace
        /// are required; its `source.volumeSnapshotContentName` must name
        /// this object back). Cannot be changed after creation.
        #[x_kube(
            merge_strategy = MapMerge::Atomic,
            validation = Rule::new("has(self.name) && has(self.__namespace__)").message("both spec.volumeSnapshotRef.name and spec.volumeSnapshotRef.namespace must be set")
        )]
        pub volume_snapshot_ref: ObjectReference,
        /// `Delete` or `Retain`: what happens to the snapshot on the storage
        /// when the bound VolumeSnapshot is deleted. Copied from the class
        /// for dynamic snapshots; required for imported ones.
        pub deletion_policy: DeletionPolicy,
        /// The CSI driver (its GetPluginInfo name) that owns the snapshot.
        pub driver: String,
        /// The class the snapshot was taken with; informational once the
        /// snapshot exists.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub volume_snapshot_class_name: Option<String>,
        /// A volume to snapshot, or an existing snapshot to import. Cannot be
        /// changed after creation.
        pub source: VolumeSnapshotContentSource,
        /// `Filesystem` or `Block`: the mode of the snapshotted volume;
        /// absent when unknown. Cannot be changed once set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[x_kube(validation = Rule::new("self == oldSelf").message("sourceVolumeMode is immutable"))]
        pub source_volume_mode: Option<String>,
    }

    /// Exactly one of the two fields; neither may change once set.
    #[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[x_kube(
        validation = Rule::new("!has(oldSelf.volumeHandle) || has(self.volumeHandle)").message("volumeHandle is required once set"),
        validation = Rule::new("!has(oldSelf.snapshotHandle) || has(self.snapshotHandle)").message("snapshotHandle is required once set"),
        validation = Rule::new("(has(self.volumeHandle) && !has(self.snapshotHandle)) || (!has(self.volumeHandle) && has(self.snapshotHandle))").message("exactly one of volumeHandle and snapshotHandle must be set")
    )]
    pub struct VolumeSnapshotContentSource {
        /// The CSI `volume_id` to take a new snapshot of.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[x_kube(validation = Rule::new("self == oldSelf").message("volumeHandle is immutable"))]
        pub volume_handle: Option<String>,
        /// The CSI `snapshot_id` of an existing snapshot to import.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[x_kube(validation = Rule::new("self == oldSelf").message("snapshotHandle is immutable"))]
        pub snapshot_handle: Option<String>,
    }

    /// What csi-snapshotter observed on the storage system.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct VolumeSnapshotContentStatus {
        /// The CSI `snapshot_id`; absent while the snapshot is being taken
        /// or after it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub snapshot_handle: Option<String>,
        /// When the storage system took the snapshot, in nanoseconds since
        /// the Unix epoch; absent when unknown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub creation_time: Option<i64>,
        /// Size of the snapshot in bytes: no restored volume may be smaller;
        /// absent when unknown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(range(min = 0))]
        pub restore_size: Option<i64>,
        /// Whether a volume can be restored from the snapshot now; absent
        /// when unknown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ready_to_use: Option<bool>,
        /// The last error met while taking the snapshot; cleared on success.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<VolumeSnapshotError>,
        /// The CSI `group_snapshot_id` when the snapshot was taken as part
        /// of a group.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub volume_group_snapshot_handle: Option<String>,
    }

    /// The fields of a VolumeSnapshotClass, which sit at the top level of
    /// the object (it has no `spec`).
    #[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "snapshot.storage.k8s.io",
        version = "v1",
        kind = "VolumeSnapshotClass",
        plural = "volumesnapshotclasses",
        singular = "volumesnapshotclass",
        shortname = "vsclass",
        shortname = "vsclasses",
        no_spec,
        derive = "PartialEq",
        annotation(
            "api-approved.kubernetes.io",
            "https://github.com/kubernetes-csi/external-snapshotter/pull/814"
        ),
        doc = "Parameters and deletion policy for snapshots taken by one CSI driver; a VolumeSnapshot names its class.",
        printcolumn(name = "Driver", type_ = "string", json_path = ".driver"),
        printcolumn(
            name = "DeletionPolicy",
            type_ = "string",
            json_path = ".deletionPolicy",
            description = "Whether VolumeSnapshotContents made through this class are deleted or kept with their VolumeSnapshot."
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )]
    #[serde(rename_all = "camelCase")]
    pub struct VolumeSnapshotClassSpec {
        /// The CSI driver that takes snapshots of this class.
        pub driver: String,
        /// Driver-specific parameters for CreateSnapshot, opaque to
        /// Kubernetes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub parameters: Option<BTreeMap<String, String>>,
        /// `Delete` or `Retain`, copied into each VolumeSnapshotContent made
        /// through this class.
        pub deletion_policy: DeletionPolicy,
    }
}

/// `snapshot.storage.k8s.io/v1beta1`: no longer served, kept in the CRDs so
/// that clusters whose objects were once stored as v1beta1 can still apply
/// them (Kubernetes refuses a CRD that drops a version listed in its
/// `status.storedVersions`).
pub mod v1beta1 {
    use kube::CustomResource;

    use super::*;

    /// What the user asks for: where the snapshot comes from and with which
    /// class.
    #[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "snapshot.storage.k8s.io",
        version = "v1beta1",
        kind = "VolumeSnapshot",
        plural = "volumesnapshots",
        singular = "volumesnapshot",
        shortname = "vs",
        namespaced,
        status = "VolumeSnapshotStatus",
        served = false,
        storage = false,
        deprecated = "snapshot.storage.k8s.io/v1beta1 is no longer served; use snapshot.storage.k8s.io/v1",
        doc = "A user's request for a point-in-time snapshot of a PersistentVolumeClaim, or for binding to an existing snapshot.",
        printcolumn(
            name = "ReadyToUse",
            type_ = "boolean",
            json_path = ".status.readyToUse",
            description = "Whether the snapshot can be used to restore a volume."
        ),
        printcolumn(
            name = "SourcePVC",
            type_ = "string",
            json_path = ".spec.source.persistentVolumeClaimName",
            description = "The claim the snapshot is (or will be) taken of."
        ),
        printcolumn(
            name = "SourceSnapshotContent",
            type_ = "string",
            json_path = ".spec.source.volumeSnapshotContentName",
            description = "The pre-existing VolumeSnapshotContent this snapshot binds to."
        ),
        printcolumn(
            name = "RestoreSize",
            type_ = "string",
            json_path = ".status.restoreSize",
            description = "Smallest volume this snapshot can be restored into."
        ),
        printcolumn(
            name = "SnapshotClass",
            type_ = "string",
            json_path = ".spec.volumeSnapshotClassName",
            description = "The VolumeSnapshotClass asked for."
        ),
        printcolumn(
            name = "SnapshotContent",
            type_ = "string",
            json_path = ".status.boundVolumeSnapshotContentName",
            description = "The VolumeSnapshotContent this snapshot is bound to; the binding holds only when both objects name each other."
        ),
        printcolumn(
            name = "CreationTime",
            type_ = "date",
            json_path = ".status.creationTime",
            description = "When the storage system took the snapshot."
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )]
    #[serde(rename_all = "camelCase")]
    pub struct VolumeSnapshotSpec {
        /// Where the snapshot comes from.
        pub source: VolumeSnapshotSource,
        /// The VolumeSnapshotClass to use.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub volume_snapshot_class_name: Option<String>,
    }

    /// A claim to snapshot, or an existing VolumeSnapshotContent.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct VolumeSnapshotSource {
        /// The claim to take a new snapshot of.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub persistent_volume_claim_name: Option<String>,
        /// An existing VolumeSnapshotContent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub volume_snapshot_content_name: Option<String>,
    }

    /// What the snapshot controller observed.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct VolumeSnapshotStatus {
        /// The bound VolumeSnapshotContent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub bound_volume_snapshot_content_name: Option<String>,
        /// When the storage system took the snapshot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub creation_time: Option<Time>,
        /// Whether a volume can be restored from the snapshot now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ready_to_use: Option<bool>,
        /// The smallest volume the snapshot can be restored into.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(schema_with = "quantity_schema")]
        pub restore_size: Option<Quantity>,
        /// The last error met while taking the snapshot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<VolumeSnapshotError>,
    }

    /// Which snapshot this is, which VolumeSnapshot it is bound to, and what
    /// becomes of it when released.
    #[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "snapshot.storage.k8s.io",
        version = "v1beta1",
        kind = "VolumeSnapshotContent",
        plural = "volumesnapshotcontents",
        singular = "volumesnapshotcontent",
        shortname = "vsc",
        shortname = "vscs",
        status = "VolumeSnapshotContentStatus",
        served = false,
        storage = false,
        deprecated = "snapshot.storage.k8s.io/v1beta1 is no longer served; use snapshot.storage.k8s.io/v1",
        doc = "A snapshot on the storage system: taken for a VolumeSnapshot, or pre-existing and imported.",
        printcolumn(
            name = "ReadyToUse",
            type_ = "boolean",
            json_path = ".status.readyToUse",
            description = "Whether the snapshot can be used to restore a volume."
        ),
        printcolumn(
            name = "RestoreSize",
            type_ = "integer",
            json_path = ".status.restoreSize",
            description = "Size of the snapshot in bytes."
        ),
        printcolumn(
            name = "DeletionPolicy",
            type_ = "string",
            json_path = ".spec.deletionPolicy",
            description = "Whether the snapshot on the storage is deleted or kept when its VolumeSnapshot goes."
        ),
        printcolumn(
            name = "Driver",
            type_ = "string",
            json_path = ".spec.driver",
            description = "The CSI driver that took the snapshot."
        ),
        printcolumn(
            name = "VolumeSnapshotClass",
            type_ = "string",
            json_path = ".spec.volumeSnapshotClassName",
            description = "The class the snapshot was taken with."
        ),
        printcolumn(
            name = "VolumeSnapshot",
            type_ = "string",
            json_path = ".spec.volumeSnapshotRef.name",
            description = "Name of the bound VolumeSnapshot."
        ),
        printcolumn(
            name = "VolumeSnapshotNamespace",
            type_ = "string",
            json_path = ".spec.volumeSnapshotRef.namespace",
            description = "Namespace of the bound VolumeSnapshot."
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )]
    #[serde(rename_all = "camelCase")]
    pub struct VolumeSnapshotContentSpec {
        /// The bound VolumeSnapshot.
        pub volume_snapshot_ref: ObjectReference,
        /// `Delete` or `Retain`.
        pub deletion_policy: DeletionPolicy,
        /// The CSI driver that owns the snapshot.
        pub driver: String,
        /// The class the snapshot was taken with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub volume_snapshot_class_name: Option<String>,
        /// A volume to snapshot, or an existing snapshot to import.
        pub source: VolumeSnapshotContentSource,
    }

    /// A volume to snapshot, or an existing snapshot to import.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct VolumeSnapshotContentSource {
        /// The CSI `volume_id` to snapshot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub volume_handle: Option<String>,
        /// The CSI `snapshot_id` to import.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub snapshot_handle: Option<String>,
    }

    /// What csi-snapshotter observed on the storage system.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct VolumeSnapshotContentStatus {
        /// The CSI `snapshot_id`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub snapshot_handle: Option<String>,
        /// When the storage system took the snapshot, in Unix nanoseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub creation_time: Option<i64>,
        /// Size of the snapshot in bytes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(range(min = 0))]
        pub restore_size: Option<i64>,
        /// Whether a volume can be restored from the snapshot now.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ready_to_use: Option<bool>,
        /// The last error met while taking the snapshot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<VolumeSnapshotError>,
    }

    /// The fields of a VolumeSnapshotClass (it has no `spec`).
    #[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
    #[kube(
        group = "snapshot.storage.k8s.io",
        version = "v1beta1",
        kind = "VolumeSnapshotClass",
        plural = "volumesnapshotclasses",
        singular = "volumesnapshotclass",
        shortname = "vsclass",
        shortname = "vsclasses",
        no_spec,
        served = false,
        storage = false,
        deprecated = "snapshot.storage.k8s.io/v1beta1 is no longer served; use snapshot.storage.k8s.io/v1",
        doc = "Parameters and deletion policy for snapshots taken by one CSI driver; a VolumeSnapshot names its class.",
        printcolumn(name = "Driver", type_ = "string", json_path = ".driver"),
        printcolumn(
            name = "DeletionPolicy",
            type_ = "string",
            json_path = ".deletionPolicy",
            description = "Whether VolumeSnapshotContents made through this class are deleted or kept with their VolumeSnapshot."
        ),
        printcolumn(
            name = "Age",
            type_ = "date",
            json_path = ".metadata.creationTimestamp"
        )
    )]
    #[serde(rename_all = "camelCase")]
    pub struct VolumeSnapshotClassSpec {
        /// The CSI driver that takes snapshots of this class.
        pub driver: String,
        /// Driver-specific parameters for CreateSnapshot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub parameters: Option<BTreeMap<String, String>>,
        /// `Delete` or `Retain`.
        pub deletion_policy: DeletionPolicy,
    }
}

/// The three CRDs, each with its v1 (served, stored) and v1beta1 (neither)
/// versions, in a fixed order: VolumeSnapshotClass, VolumeSnapshotContent,
/// VolumeSnapshot.
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
                string_prop(
                    "The versioned schema of this object, e.g. snapshot.storage.k8s.io/v1.",
                ),
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
pub const HEADER: &str = "# Generated by `nfs-csi crds` from src/crds.rs: do not edit.\n";

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
