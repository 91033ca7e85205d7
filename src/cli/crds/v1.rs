//! The current version, `snapshot.storage.k8s.io/v1`: served and stored.

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
