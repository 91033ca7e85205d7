//! `groupsnapshot.storage.k8s.io/v1` (served), whose schema is also served
//! and stored as `v1beta2`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cli::crds::{DeletionPolicy, VolumeSnapshotError};

/// What the user asks for: which claims to snapshot together (or which
/// existing group to represent) and with which class.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "groupsnapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeGroupSnapshot",
    plural = "volumegroupsnapshots",
    singular = "volumegroupsnapshot",
    shortname = "vgs",
    namespaced,
    status = "VolumeGroupSnapshotStatus",
    derive = "PartialEq",
    annotation(
        "api-approved.kubernetes.io",
        "https://github.com/kubernetes-csi/external-snapshotter/pull/1368"
    ),
    doc = "A user's request for a snapshot of several claims taken together, or for binding to an existing group snapshot.",
    printcolumn(
        name = "ReadyToUse",
        type_ = "boolean",
        json_path = ".status.readyToUse",
        description = "Whether every snapshot of the group can be used to restore a volume."
    ),
    printcolumn(
        name = "VolumeGroupSnapshotClass",
        type_ = "string",
        json_path = ".spec.volumeGroupSnapshotClassName",
        description = "The VolumeGroupSnapshotClass asked for."
    ),
    printcolumn(
        name = "VolumeGroupSnapshotContent",
        type_ = "string",
        json_path = ".status.boundVolumeGroupSnapshotContentName",
        description = "The VolumeGroupSnapshotContent this group is bound to; the binding holds only when both objects name each other."
    ),
    printcolumn(
        name = "CreationTime",
        type_ = "date",
        json_path = ".status.creationTime",
        description = "When the storage system took the group snapshot."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotSpec {
    /// The claims to snapshot (by label), or an existing
    /// VolumeGroupSnapshotContent. Cannot be changed after creation.
    pub source: VolumeGroupSnapshotSource,
    /// The VolumeGroupSnapshotClass to use; when absent, the default class
    /// of the claims' driver. Must not be empty when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0").message("volumeGroupSnapshotClassName must not be the empty string when set"))]
    pub volume_group_snapshot_class_name: Option<String>,
}

/// Exactly one of the two fields; neither may change once set.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(oldSelf.selector) || has(self.selector)").message("selector is required once set"),
    validation = Rule::new("!has(oldSelf.volumeGroupSnapshotContentName) || has(self.volumeGroupSnapshotContentName)").message("volumeGroupSnapshotContentName is required once set"),
    validation = Rule::new("(has(self.selector) && !has(self.volumeGroupSnapshotContentName)) || (!has(self.selector) && has(self.volumeGroupSnapshotContentName))").message("exactly one of selector and volumeGroupSnapshotContentName must be set")
)]
pub struct VolumeGroupSnapshotSource {
    /// The claims, in the group's namespace, whose labels match: one
    /// snapshot each, taken together. Claims labelled later are not added
    /// to an existing group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        merge_strategy = MapMerge::Atomic,
        validation = Rule::new("self == oldSelf").message("selector is immutable")
    )]
    pub selector: Option<LabelSelector>,
    /// An existing VolumeGroupSnapshotContent to represent in this
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("volumeGroupSnapshotContentName is immutable"))]
    pub volume_group_snapshot_content_name: Option<String>,
}

/// What the snapshot controller observed; mirrors the bound
/// VolumeGroupSnapshotContent. Check that both objects name each other
/// before trusting it. The member snapshots are VolumeSnapshots of the
/// same namespace whose `status.volumeGroupSnapshotName` is this group.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotStatus {
    /// The VolumeGroupSnapshotContent this group is bound to; cannot
    /// change once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("boundVolumeGroupSnapshotContentName is immutable once set"))]
    pub bound_volume_group_snapshot_content_name: Option<String>,
    /// When the storage system took the group snapshot; absent when
    /// unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// Whether every member snapshot can be used to restore a volume now;
    /// absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The last error met while taking the group snapshot; cleared on
    /// success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
}

/// Which group snapshot this is, which VolumeGroupSnapshot it is bound to,
/// and what becomes of it when released.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "groupsnapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeGroupSnapshotContent",
    plural = "volumegroupsnapshotcontents",
    singular = "volumegroupsnapshotcontent",
    shortname = "vgsc",
    shortname = "vgscs",
    status = "VolumeGroupSnapshotContentStatus",
    derive = "PartialEq",
    annotation(
        "api-approved.kubernetes.io",
        "https://github.com/kubernetes-csi/external-snapshotter/pull/1368"
    ),
    doc = "A group snapshot on the storage system: taken for a VolumeGroupSnapshot, or pre-existing and imported.",
    printcolumn(
        name = "ReadyToUse",
        type_ = "boolean",
        json_path = ".status.readyToUse",
        description = "Whether every snapshot of the group can be used to restore a volume."
    ),
    printcolumn(
        name = "DeletionPolicy",
        type_ = "string",
        json_path = ".spec.deletionPolicy",
        description = "Whether the group snapshot on the storage is deleted or kept when its VolumeGroupSnapshot goes."
    ),
    printcolumn(
        name = "Driver",
        type_ = "string",
        json_path = ".spec.driver",
        description = "The CSI driver that took the group snapshot."
    ),
    printcolumn(
        name = "VolumeGroupSnapshotClass",
        type_ = "string",
        json_path = ".spec.volumeGroupSnapshotClassName",
        description = "The class the group snapshot was taken with."
    ),
    printcolumn(
        name = "VolumeGroupSnapshotNamespace",
        type_ = "string",
        json_path = ".spec.volumeGroupSnapshotRef.namespace",
        description = "Namespace of the bound VolumeGroupSnapshot."
    ),
    printcolumn(
        name = "VolumeGroupSnapshot",
        type_ = "string",
        json_path = ".spec.volumeGroupSnapshotRef.name",
        description = "Name of the bound VolumeGroupSnapshot."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotContentSpec {
    /// The VolumeGroupSnapshot this content is bound to: name and
    /// namespace are required and cannot change; its uid cannot change
    /// once set (the controller fills it in for an imported group).
    #[x_kube(
        merge_strategy = MapMerge::Atomic,
        validation = Rule::new("has(self.name) && has(self.__namespace__)").message("both volumeGroupSnapshotRef.name and volumeGroupSnapshotRef.namespace must be set"),
        validation = Rule::new("self.name == oldSelf.name && self.__namespace__ == oldSelf.__namespace__").message("volumeGroupSnapshotRef.name and volumeGroupSnapshotRef.namespace are immutable"),
        validation = Rule::new("!has(oldSelf.uid) || (has(self.uid) && self.uid == oldSelf.uid)").message("volumeGroupSnapshotRef.uid is immutable once set")
    )]
    pub volume_group_snapshot_ref: ObjectReference,
    /// `Delete` or `Retain`: what happens to the group snapshot on the
    /// storage when the bound VolumeGroupSnapshot is deleted. Copied from
    /// the class for dynamic groups; required for imported ones.
    pub deletion_policy: DeletionPolicy,
    /// The CSI driver (its GetPluginInfo name) that owns the group
    /// snapshot; cannot change.
    #[x_kube(validation = Rule::new("self == oldSelf").message("driver is immutable once set"))]
    pub driver: String,
    /// The class the group snapshot was taken with; cannot change once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("volumeGroupSnapshotClassName is immutable once set"))]
    pub volume_group_snapshot_class_name: Option<String>,
    /// The volumes to snapshot together, or an existing group snapshot to
    /// import. Cannot be changed after creation.
    pub source: VolumeGroupSnapshotContentSource,
}

/// Exactly one of the two fields; neither may change once set.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(oldSelf.volumeHandles) || has(self.volumeHandles)").message("volumeHandles is required once set"),
    validation = Rule::new("!has(oldSelf.groupSnapshotHandles) || has(self.groupSnapshotHandles)").message("groupSnapshotHandles is required once set"),
    validation = Rule::new("(has(self.volumeHandles) && !has(self.groupSnapshotHandles)) || (!has(self.volumeHandles) && has(self.groupSnapshotHandles))").message("exactly one of volumeHandles and groupSnapshotHandles must be set")
)]
pub struct VolumeGroupSnapshotContentSource {
    /// The CSI `volume_id`s to snapshot together (the
    /// CreateVolumeGroupSnapshot `source_volume_ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("volumeHandles is immutable"))]
    pub volume_handles: Option<Vec<String>>,
    /// An existing group snapshot and its member snapshots to import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("groupSnapshotHandles is immutable"))]
    pub group_snapshot_handles: Option<GroupSnapshotHandles>,
}

/// The CSI ids of an existing group snapshot and of its members.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupSnapshotHandles {
    /// The CSI `group_snapshot_id`.
    pub volume_group_snapshot_handle: String,
    /// The CSI `snapshot_id` of each member.
    pub volume_snapshot_handles: Vec<String>,
}

/// One member snapshot as csi-snapshotter recorded it from the driver's
/// answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotInfo {
    /// The CSI `volume_id` the member was taken of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_handle: Option<String>,
    /// The member's CSI `snapshot_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_handle: Option<String>,
    /// When the member was taken, in nanoseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<i64>,
    /// Whether a volume can be restored from the member now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// Size of the member in bytes: no restored volume may be smaller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<i64>,
}

/// What csi-snapshotter observed on the storage system.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotContentStatus {
    /// The CSI `group_snapshot_id`; cannot change once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("volumeGroupSnapshotHandle is immutable once set"))]
    pub volume_group_snapshot_handle: Option<String>,
    /// When the storage system took the group snapshot; absent when
    /// unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// Whether every member can be used to restore a volume now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The last error met while taking the group snapshot; cleared on
    /// success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    /// The members, one per source volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_info_list: Option<Vec<VolumeSnapshotInfo>>,
}

/// The fields of a VolumeGroupSnapshotClass, which sit at the top level of
/// the object (it has no `spec`); none may change once set.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "groupsnapshot.storage.k8s.io",
    version = "v1",
    kind = "VolumeGroupSnapshotClass",
    plural = "volumegroupsnapshotclasses",
    singular = "volumegroupsnapshotclass",
    shortname = "vgsclass",
    shortname = "vgsclasses",
    no_spec,
    derive = "PartialEq",
    annotation(
        "api-approved.kubernetes.io",
        "https://github.com/kubernetes-csi/external-snapshotter/pull/1368"
    ),
    doc = "Parameters and deletion policy for group snapshots taken by one CSI driver; a VolumeGroupSnapshot names its class.",
    printcolumn(name = "Driver", type_ = "string", json_path = ".driver"),
    printcolumn(
        name = "DeletionPolicy",
        type_ = "string",
        json_path = ".deletionPolicy",
        description = "Whether VolumeGroupSnapshotContents made through this class are deleted or kept with their VolumeGroupSnapshot."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotClassSpec {
    /// The CSI driver that takes group snapshots of this class.
    #[x_kube(validation = Rule::new("self == oldSelf").message("driver is immutable once set"))]
    pub driver: String,
    /// Driver-specific parameters for CreateVolumeGroupSnapshot, opaque to
    /// Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("parameters are immutable once set"))]
    pub parameters: Option<BTreeMap<String, String>>,
    /// `Delete` or `Retain`, copied into each VolumeGroupSnapshotContent
    /// made through this class.
    #[x_kube(validation = Rule::new("self == oldSelf").message("deletionPolicy is immutable once set"))]
    pub deletion_policy: DeletionPolicy,
}
