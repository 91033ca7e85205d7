//! The `groupsnapshot.storage.k8s.io` CustomResourceDefinitions
//! (VolumeGroupSnapshot, VolumeGroupSnapshotContent, VolumeGroupSnapshotClass)
//! as typed Rust, rendered by [`super::crds`] beside the snapshot ones.
//!
//! Like the snapshot kinds they belong to Kubernetes: the upstream
//! snapshot-controller and csi-snapshotter read and write them, so the
//! schema is the one of external-snapshotter v8.6.0, which made the API GA
//! (CHANGELOG-8.6.md, PR #1368). That release serves three versions and
//! stores one of them:
//!
//! - `v1`: served, not stored (the controllers of v8.6.0 use it);
//! - `v1beta2`: served and stored, while clusters migrate; its schema is
//!   `v1`'s field for field, so it is rendered from the same types
//!   ([`v1`]) under the other name;
//! - `v1beta1`: served but deprecated, kept so that clusters that stored
//!   objects at v1beta1 can apply these CRDs ([`v1beta1`]; its content
//!   status lists handle pairs, not the newer snapshot info).
//!
//! There is no conversion webhook: the versions convert by name only, as
//! upstream's published CRDs do.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::core::crd::merge_crds;

pub mod v1;

pub mod v1beta1;

/// The API group of the three resources (a `*.k8s.io` group: each v1 kind
/// carries the `api-approved.kubernetes.io` annotation, see [`super::GROUP`]).
pub const GROUP: &str = "groupsnapshot.storage.k8s.io";

/// The version objects are stored at, as upstream v8.6.0 sets it.
pub const STORED: &str = "v1beta2";

/// One kind's CRD: `v1` and its twin `v1beta2` from the v1 types, `v1beta1`
/// from its own, in name order.
fn merge(
    v1: CustomResourceDefinition,
    v1beta1: CustomResourceDefinition,
) -> CustomResourceDefinition {
    let mut twin = v1.clone();
    twin.spec.versions[0].name = STORED.into();
    let mut crd =
        merge_crds(vec![v1, v1beta1, twin], STORED).expect("the versions of one kind merge");
    crd.spec.versions.sort_by(|a, b| a.name.cmp(&b.name));
    crd
}

/// The three CRDs, in a fixed order: VolumeGroupSnapshotClass,
/// VolumeGroupSnapshotContent, VolumeGroupSnapshot. Not yet finished (see
/// [`super::crds`]).
pub(super) fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        merge(
            v1::VolumeGroupSnapshotClass::crd(),
            v1beta1::VolumeGroupSnapshotClass::crd(),
        ),
        merge(
            v1::VolumeGroupSnapshotContent::crd(),
            v1beta1::VolumeGroupSnapshotContent::crd(),
        ),
        merge(
            v1::VolumeGroupSnapshot::crd(),
            v1beta1::VolumeGroupSnapshot::crd(),
        ),
    ]
}
