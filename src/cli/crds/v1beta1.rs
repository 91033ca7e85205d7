//! `snapshot.storage.k8s.io/v1beta1`: no longer served, kept in the CRDs so
//! that clusters whose objects were once stored as v1beta1 can still apply
//! them (Kubernetes refuses a CRD that drops a version listed in its
//! `status.storedVersions`).

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
