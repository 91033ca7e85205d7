//! `groupsnapshot.storage.k8s.io/v1beta1`: still served by upstream v8.6.0
//! but deprecated, and kept so that clusters that stored objects at v1beta1
//! can apply these CRDs. It lacks v1's immutability rules on the class and
//! the content's driver and status, and its content status lists
//! (volume, snapshot) handle pairs instead of v1's snapshot info.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cli::crds::{DeletionPolicy, VolumeSnapshotError};

/// What the user asks for: which claims to snapshot together, and with
/// which class.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "groupsnapshot.storage.k8s.io",
    version = "v1beta1",
    kind = "VolumeGroupSnapshot",
    plural = "volumegroupsnapshots",
    singular = "volumegroupsnapshot",
    shortname = "vgs",
    namespaced,
    status = "VolumeGroupSnapshotStatus",
    storage = false,
    deprecated = "groupsnapshot.storage.k8s.io/v1beta1 is deprecated; use groupsnapshot.storage.k8s.io/v1",
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
    /// The claims to snapshot, or an existing VolumeGroupSnapshotContent.
    pub source: VolumeGroupSnapshotSource,
    /// The VolumeGroupSnapshotClass to use. Must not be empty when set.
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
    /// The claims whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        merge_strategy = MapMerge::Atomic,
        validation = Rule::new("self == oldSelf").message("selector is immutable")
    )]
    pub selector: Option<LabelSelector>,
    /// An existing VolumeGroupSnapshotContent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("volumeGroupSnapshotContentName is immutable"))]
    pub volume_group_snapshot_content_name: Option<String>,
}

/// What the snapshot controller observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotStatus {
    /// The bound VolumeGroupSnapshotContent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_group_snapshot_content_name: Option<String>,
    /// When the storage system took the group snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// Whether every member can be used to restore a volume now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The last error met while taking the group snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
}

/// Which group snapshot this is and which VolumeGroupSnapshot it is bound
/// to.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "groupsnapshot.storage.k8s.io",
    version = "v1beta1",
    kind = "VolumeGroupSnapshotContent",
    plural = "volumegroupsnapshotcontents",
    singular = "volumegroupsnapshotcontent",
    shortname = "vgsc",
    shortname = "vgscs",
    status = "VolumeGroupSnapshotContentStatus",
    storage = false,
    deprecated = "groupsnapshot.storage.k8s.io/v1beta1 is deprecated; use groupsnapshot.storage.k8s.io/v1",
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
    /// The bound VolumeGroupSnapshot (name and namespace required).
    #[x_kube(
        merge_strategy = MapMerge::Atomic,
        validation = Rule::new("has(self.name) && has(self.__namespace__)").message("both volumeGroupSnapshotRef.name and volumeGroupSnapshotRef.namespace must be set")
    )]
    pub volume_group_snapshot_ref: ObjectReference,
    /// `Delete` or `Retain`.
    pub deletion_policy: DeletionPolicy,
    /// The CSI driver that owns the group snapshot.
    pub driver: String,
    /// The class the group snapshot was taken with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_class_name: Option<String>,
    /// The volumes to snapshot together, or an existing group to import.
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
    /// The CSI `volume_id`s to snapshot together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("volumeHandles is immutable"))]
    pub volume_handles: Option<Vec<String>>,
    /// An existing group snapshot and its members.
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

/// A member: the volume it was taken of and its snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotHandlePair {
    /// The CSI `volume_id`.
    pub volume_handle: String,
    /// The CSI `snapshot_id`.
    pub snapshot_handle: String,
}

/// What csi-snapshotter observed on the storage system.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeGroupSnapshotContentStatus {
    /// The CSI `group_snapshot_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_group_snapshot_handle: Option<String>,
    /// When the storage system took the group snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// Whether every member can be used to restore a volume now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The last error met while taking the group snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
    /// The members, one per source volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_handle_pair_list: Option<Vec<VolumeSnapshotHandlePair>>,
}

/// The fields of a VolumeGroupSnapshotClass (it has no `spec`).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "groupsnapshot.storage.k8s.io",
    version = "v1beta1",
    kind = "VolumeGroupSnapshotClass",
    plural = "volumegroupsnapshotclasses",
    singular = "volumegroupsnapshotclass",
    shortname = "vgsclass",
    shortname = "vgsclasses",
    no_spec,
    storage = false,
    deprecated = "groupsnapshot.storage.k8s.io/v1beta1 is deprecated; use groupsnapshot.storage.k8s.io/v1",
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
    pub driver: String,
    /// Driver-specific parameters for CreateVolumeGroupSnapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, String>>,
    /// `Delete` or `Retain`.
    pub deletion_policy: DeletionPolicy,
}
