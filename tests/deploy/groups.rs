//! The group snapshot parts of `deploy.rs`: the `groupsnapshot.storage.k8s.io`
//! CRDs against the shape of external-snapshotter v8.6.0's, and the group
//! snapshot examples against those CRDs.

use super::*;

/// The claim of `deploy/examples/pvc-from-group-member.yaml`: a restore of
/// one member of the example group.
pub const MEMBER_RESTORE: &str = "orders-db-wal-restored";

/// The versions external-snapshotter v8.6.0 serves and stores
/// (CHANGELOG-8.6.md, PR #1368: v1 is GA, v1beta2 stays the stored version
/// during the migration; v1beta1, deprecated since v8.4.0, is still served).
const VERSIONS: &[(&str, bool, bool)] = &[
    ("v1", true, false),
    ("v1beta1", true, false),
    ("v1beta2", true, true),
];

const ERROR: [(&str, &str); 3] = [
    ("status.error", "object"),
    ("status.error.message", "string"),
    ("status.error.time", "string{date-time}"),
];

/// The three CRDs, in the order `nfs-csi crds` prints them (after the
/// snapshot ones). Fields, columns, short names and scope as in upstream's
/// `client/apis/volumegroupsnapshot/v1/types.go`.
pub const UPSTREAM: [UpstreamCrd; 3] = [
    UpstreamCrd {
        group: "groupsnapshot.storage.k8s.io",
        plural: "volumegroupsnapshotclasses",
        kind: "VolumeGroupSnapshotClass",
        short: &["vgsclass", "vgsclasses"],
        scope: "Cluster",
        versions: VERSIONS,
        deprecated: &["v1beta1"],
        status: false,
        columns: &[
            ("Driver", "string", ".driver"),
            ("DeletionPolicy", "string", ".deletionPolicy"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ],
        fields: &[
            ("apiVersion", "string"),
            ("kind", "string"),
            ("metadata", "object"),
            ("driver", "string!"),
            ("deletionPolicy", "string[Delete|Retain]!"),
            ("parameters", "object<string>"),
        ],
        object_ref: None,
    },
    UpstreamCrd {
        group: "groupsnapshot.storage.k8s.io",
        plural: "volumegroupsnapshotcontents",
        kind: "VolumeGroupSnapshotContent",
        short: &["vgsc", "vgscs"],
        scope: "Cluster",
        versions: VERSIONS,
        deprecated: &["v1beta1"],
        status: true,
        columns: &[
            ("ReadyToUse", "boolean", ".status.readyToUse"),
            ("DeletionPolicy", "string", ".spec.deletionPolicy"),
            ("Driver", "string", ".spec.driver"),
            (
                "VolumeGroupSnapshotClass",
                "string",
                ".spec.volumeGroupSnapshotClassName",
            ),
            (
                "VolumeGroupSnapshotNamespace",
                "string",
                ".spec.volumeGroupSnapshotRef.namespace",
            ),
            (
                "VolumeGroupSnapshot",
                "string",
                ".spec.volumeGroupSnapshotRef.name",
            ),
            ("Age", "date", ".metadata.creationTimestamp"),
        ],
        fields: &[
            ("apiVersion", "string"),
            ("kind", "string"),
            ("metadata", "object"),
            ("spec", "object!"),
            ("spec.deletionPolicy", "string[Delete|Retain]!"),
            ("spec.driver", "string!"),
            ("spec.source", "object!"),
            ("spec.source.groupSnapshotHandles", "object"),
            (
                "spec.source.groupSnapshotHandles.volumeGroupSnapshotHandle",
                "string!",
            ),
            (
                "spec.source.groupSnapshotHandles.volumeSnapshotHandles",
                "array!",
            ),
            ("spec.source.volumeHandles", "array"),
            ("spec.volumeGroupSnapshotClassName", "string"),
            ("spec.volumeGroupSnapshotRef", "object!"),
            ("status", "object"),
            ("status.creationTime", "string{date-time}"),
            ERROR[0],
            ERROR[1],
            ERROR[2],
            ("status.readyToUse", "boolean"),
            ("status.volumeGroupSnapshotHandle", "string"),
            ("status.volumeSnapshotInfoList", "array"),
            (
                "status.volumeSnapshotInfoList[].creationTime",
                "integer{int64}",
            ),
            ("status.volumeSnapshotInfoList[].readyToUse", "boolean"),
            (
                "status.volumeSnapshotInfoList[].restoreSize",
                "integer{int64}",
            ),
            ("status.volumeSnapshotInfoList[].snapshotHandle", "string"),
            ("status.volumeSnapshotInfoList[].volumeHandle", "string"),
        ],
        object_ref: Some("spec.volumeGroupSnapshotRef"),
    },
    UpstreamCrd {
        group: "groupsnapshot.storage.k8s.io",
        plural: "volumegroupsnapshots",
        kind: "VolumeGroupSnapshot",
        short: &["vgs"],
        scope: "Namespaced",
        versions: VERSIONS,
        deprecated: &["v1beta1"],
        status: true,
        columns: &[
            ("ReadyToUse", "boolean", ".status.readyToUse"),
            (
                "VolumeGroupSnapshotClass",
                "string",
                ".spec.volumeGroupSnapshotClassName",
            ),
            (
                "VolumeGroupSnapshotContent",
                "string",
                ".status.boundVolumeGroupSnapshotContentName",
            ),
            ("CreationTime", "date", ".status.creationTime"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ],
        fields: &[
            ("apiVersion", "string"),
            ("kind", "string"),
            ("metadata", "object"),
            ("spec", "object!"),
            ("spec.source", "object!"),
            ("spec.source.selector", "object"),
            ("spec.source.selector.matchExpressions", "array"),
            ("spec.source.selector.matchExpressions[].key", "string!"),
            (
                "spec.source.selector.matchExpressions[].operator",
                "string!",
            ),
            ("spec.source.selector.matchExpressions[].values", "array"),
            ("spec.source.selector.matchLabels", "object<string>"),
            ("spec.source.volumeGroupSnapshotContentName", "string"),
            ("spec.volumeGroupSnapshotClassName", "string"),
            ("status", "object"),
            ("status.boundVolumeGroupSnapshotContentName", "string"),
            ("status.creationTime", "string{date-time}"),
            ERROR[0],
            ERROR[1],
            ERROR[2],
            ("status.readyToUse", "boolean"),
        ],
        object_ref: None,
    },
];

fn group_crds() -> Vec<CustomResourceDefinition> {
    let committed = committed_crds();
    assert_eq!(committed.len(), 6, "three snapshot and three group CRDs");
    committed[3..].to_vec()
}

fn prop<'a>(s: &'a JSONSchemaProps, path: &str) -> &'a JSONSchemaProps {
    path.split('.').fold(s, |s, name| {
        s.properties
            .as_ref()
            .and_then(|p| p.get(name))
            .unwrap_or_else(|| panic!("no field {name} in {path}"))
    })
}

fn rules(s: &JSONSchemaProps) -> Vec<&str> {
    s.x_kubernetes_validations
        .iter()
        .flatten()
        .map(|r| r.rule.as_str())
        .collect()
}

#[test]
fn group_crds_have_the_upstream_shape() {
    let crds = group_crds();
    for (crd, up) in crds.iter().zip(&UPSTREAM) {
        check_upstream_shape(crd, up);
        // v1beta2 is v1 under another name, so objects stored at v1beta2
        // read back at v1 unchanged.
        assert_eq!(
            schema(crd, "v1beta2"),
            schema(crd, "v1"),
            "{} v1beta2",
            up.kind
        );
        assert_eq!(
            version(crd, "v1beta2").additional_printer_columns,
            version(crd, "v1").additional_printer_columns
        );
        let deprecation = version(crd, "v1beta1").deprecation_warning.as_deref();
        assert!(
            deprecation.is_some_and(|w| w.contains("groupsnapshot.storage.k8s.io/v1;")
                || w.ends_with("groupsnapshot.storage.k8s.io/v1")),
            "{}: {deprecation:?}",
            up.kind
        );
    }

    // The ObjectReference and the selector are atomic, as upstream's types
    // (and the apply of either replaces it whole).
    let content = schema(&crds[1], "v1");
    let reference = prop(content, "spec.volumeGroupSnapshotRef");
    assert_eq!(reference.x_kubernetes_map_type.as_deref(), Some("atomic"));
    assert_eq!(rules(reference).len(), 3, "set, immutable, uid once set");
    let group = schema(&crds[2], "v1");
    let selector = prop(group, "spec.source.selector");
    assert_eq!(selector.x_kubernetes_map_type.as_deref(), Some("atomic"));
    assert_eq!(rules(selector), ["self == oldSelf"]);

    // v1 made the class, the content's driver and class and the statuses'
    // handles immutable; v1beta1 did not.
    let class = &crds[0];
    for field in ["driver", "parameters", "deletionPolicy"] {
        assert_eq!(rules(prop(schema(class, "v1"), field)), ["self == oldSelf"]);
        assert!(rules(prop(schema(class, "v1beta1"), field)).is_empty());
    }
    for path in [
        "spec.driver",
        "spec.volumeGroupSnapshotClassName",
        "status.volumeGroupSnapshotHandle",
    ] {
        assert_eq!(rules(prop(content, path)), ["self == oldSelf"], "{path}");
    }

    // v1beta1 contents list (volume, snapshot) handle pairs instead.
    let mut old = BTreeMap::new();
    shape(
        prop(schema(&crds[1], "v1beta1"), "status"),
        "status",
        &mut old,
    );
    assert_eq!(
        old.get("status.volumeSnapshotHandlePairList[].snapshotHandle")
            .map(String::as_str),
        Some("string!")
    );
    assert_eq!(
        old.get("status.volumeSnapshotHandlePairList[].volumeHandle")
            .map(String::as_str),
        Some("string!")
    );
    assert!(!old.contains_key("status.volumeSnapshotInfoList"));
}

/// Whether `labels` match a selector's `matchLabels` (the examples use no
/// `matchExpressions`).
fn selects(selector: &Value, labels: &Value) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "the examples select by matchLabels"
    );
    let wanted = selector["matchLabels"].as_object().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| &labels[k] == v)
}

#[test]
fn group_snapshot_examples_are_valid_and_refer_to_each_other() {
    let examples = examples();
    let mut seen = 0;
    for v in &examples.0 {
        if v["apiVersion"]
            .as_str()
            .is_some_and(|a| a.starts_with("groupsnapshot.storage.k8s.io/"))
        {
            assert_eq!(
                v["apiVersion"],
                "groupsnapshot.storage.k8s.io/v1",
                "{}",
                describe(v)
            );
            validate_object(v, None).unwrap_or_else(|e| panic!("{}: {e}", describe(v)));
            seen += 1;
        }
    }
    assert_eq!(
        seen, 2,
        "a VolumeGroupSnapshotClass and a VolumeGroupSnapshot"
    );

    // The class: this driver, parameters a VolumeSnapshotClass takes
    // (README, "Snapshots and clones").
    let class: crds::group::v1::VolumeGroupSnapshotClass = examples.one("VolumeGroupSnapshotClass");
    assert_eq!(class.spec.driver, DRIVER);
    for (k, v) in class.spec.parameters.iter().flatten() {
        assert!(
            ["server", "share", "mountedShare", "compressionLevel"].contains(&k.as_str()),
            "{k}"
        );
        if k == "compressionLevel" {
            assert!(v.parse::<u8>().is_ok_and(|l| (1..=19).contains(&l)), "{v}");
        }
    }

    // The group: that class, and a selector that picks exactly the two
    // claims of the database, both of an nfs-csi StorageClass.
    let group: crds::group::v1::VolumeGroupSnapshot = examples.one("VolumeGroupSnapshot");
    assert_eq!(
        group.spec.volume_group_snapshot_class_name,
        class.metadata.name
    );
    let selector = serde_json::to_value(group.spec.source.selector.as_ref().unwrap()).unwrap();
    let members: Vec<&Value> = examples
        .of_kind("PersistentVolumeClaim")
        .filter(|c| selects(&selector, &c["metadata"]["labels"]))
        .collect();
    let names: BTreeSet<&str> = members
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders-db-data", "orders-db-wal"].into());
    let classes: BTreeMap<String, String> = examples
        .all::<StorageClass>("StorageClass")
        .into_iter()
        .map(|sc| (sc.metadata.name.unwrap(), sc.provisioner))
        .collect();
    for c in &members {
        let sc = c["spec"]["storageClassName"].as_str().unwrap();
        assert_eq!(classes.get(sc).map(String::as_str), Some(DRIVER), "{sc}");
    }

    // The restore of one member: a claim from a VolumeSnapshot, at least as
    // large as the member's source claim, whose file says how to find the
    // member's name from this group.
    let restore = examples
        .all::<PersistentVolumeClaim>("PersistentVolumeClaim")
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(MEMBER_RESTORE))
        .expect("the member restore claim");
    let spec = restore.spec.unwrap();
    let ds = spec.data_source.unwrap();
    assert_eq!(ds.api_group.as_deref(), Some("snapshot.storage.k8s.io"));
    assert_eq!(ds.kind, "VolumeSnapshot");
    assert!(
        ds.name.len() <= 253
            && ds
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "{}",
        ds.name
    );
    let wal = members
        .iter()
        .find(|c| c["metadata"]["name"] == "orders-db-wal")
        .unwrap();
    assert_eq!(
        spec.resources.unwrap().requests.unwrap()["storage"].0,
        wal["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .unwrap()
    );
    let text = read("deploy/examples/pvc-from-group-member.yaml");
    let group_name = group.metadata.name.unwrap();
    assert!(
        text.contains(&format!(
            "@.status.volumeGroupSnapshotName==\"{group_name}\""
        )) && text.contains(".spec.source.persistentVolumeClaimName"),
        "the comment shows how to list the members of {group_name}"
    );
}

/// What the snapshot-controller and csi-snapshotter write validates, at v1
/// and at the stored v1beta2; a v1beta1 content keeps its own status.
#[test]
fn group_objects_the_controllers_write_validate() {
    let content = |version: &str| {
        json!({
            "apiVersion": format!("groupsnapshot.storage.k8s.io/{version}"),
            "kind": "VolumeGroupSnapshotContent",
            "metadata": {"name": "groupsnapcontent-1"},
            "spec": {
                "deletionPolicy": "Delete",
                "driver": DRIVER,
                "source": {"volumeHandles": ["v1#nfs#a", "v1#nfs#b"]},
                "volumeGroupSnapshotClassName": "nfs-csi-group",
                "volumeGroupSnapshotRef": {
                    "apiVersion": "groupsnapshot.storage.k8s.io/v1",
                    "kind": "VolumeGroupSnapshot",
                    "name": "orders-db-snap",
                    "namespace": "default",
                    "uid": "6b1f4d8e-2a7c-4e0b-9d3f-1c5a7e9b2d40"
                }
            },
            "status": {
                "creationTime": "2026-11-30T10:00:00Z",
                "readyToUse": false,
                "volumeGroupSnapshotHandle": "group-1",
                "volumeSnapshotInfoList": [
                    {"volumeHandle": "v1#nfs#a", "snapshotHandle": "s-a",
                     "creationTime": 1_764_496_800_000_000_000_i64, "readyToUse": true,
                     "restoreSize": 1_048_576},
                    {"volumeHandle": "v1#nfs#b", "snapshotHandle": "s-b",
                     "readyToUse": false}
                ]
            }
        })
    };
    for version in ["v1", "v1beta2"] {
        validate_object(&content(version), None).unwrap_or_else(|e| panic!("{version}: {e}"));
    }
    typed::<crds::group::v1::VolumeGroupSnapshotContent>(&content("v1"));

    let mut old = content("v1beta1");
    old["status"]["volumeSnapshotHandlePairList"] =
        json!([{"volumeHandle": "v1#nfs#a", "snapshotHandle": "s-a"}]);
    let e = validate_object(&old, None).expect_err("v1beta1 has no volumeSnapshotInfoList");
    assert!(e.contains("volumeSnapshotInfoList: unknown field"), "{e}");
    old["status"]
        .as_object_mut()
        .unwrap()
        .remove("volumeSnapshotInfoList");
    validate_object(&old, None).unwrap();
    typed::<crds::group::v1beta1::VolumeGroupSnapshotContent>(&old);

    let mut group = json!({
        "apiVersion": "groupsnapshot.storage.k8s.io/v1",
        "kind": "VolumeGroupSnapshot",
        "metadata": {"name": "orders-db-snap", "namespace": "default"},
        "spec": {
            "volumeGroupSnapshotClassName": "nfs-csi-group",
            "source": {"selector": {"matchLabels": {"app.kubernetes.io/instance": "orders-db"}}}
        }
    });
    group["status"] = json!({
        "boundVolumeGroupSnapshotContentName": "groupsnapcontent-1",
        "creationTime": "2026-11-30T10:00:00Z",
        "readyToUse": true,
        "error": {"message": "retrying", "time": "2026-11-30T09:59:00Z"}
    });
    validate_object(&group, None).unwrap();
    typed::<crds::group::v1::VolumeGroupSnapshot>(&group);

    // A member snapshot names its group in its status.
    let member = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": "snapshot-1", "namespace": "default"},
        "spec": {"source": {"persistentVolumeClaimName": "orders-db-wal"}},
        "status": {"volumeGroupSnapshotName": "orders-db-snap", "readyToUse": true}
    });
    validate_object(&member, None).unwrap();
}

#[test]
fn group_crds_reject_what_upstream_rejects() {
    let rejected = |v: &Value, old: Option<&Value>, why: &str| {
        let e = validate_object(v, old).expect_err(&format!("accepted: {v}"));
        assert!(e.contains(why), "{e}\ndoes not say {why:?}");
    };
    let group = |source: Value| {
        json!({
            "apiVersion": "groupsnapshot.storage.k8s.io/v1",
            "kind": "VolumeGroupSnapshot",
            "metadata": {"name": "g", "namespace": "default"},
            "spec": {"source": source}
        })
    };
    let by_label = json!({"selector": {"matchLabels": {"app": "db"}}});
    validate_object(&group(by_label.clone()), None).unwrap();
    rejected(
        &group(json!({"selector": {"matchLabels": {"app": "db"}},
                      "volumeGroupSnapshotContentName": "c"})),
        None,
        "exactly one of selector and volumeGroupSnapshotContentName",
    );
    rejected(&group(json!({})), None, "exactly one of");
    let mut empty_class = group(by_label.clone());
    empty_class["spec"]["volumeGroupSnapshotClassName"] = json!("");
    rejected(&empty_class, None, "must not be the empty string");
    rejected(
        &group(json!({"selector": {"matchLabels": {"app": "db"}}, "pvcs": ["a"]})),
        None,
        "unknown field",
    );
    let old = group(by_label.clone());
    validate_object(&old, Some(&old)).unwrap();
    rejected(
        &group(json!({"selector": {"matchLabels": {"app": "web"}}})),
        Some(&old),
        "selector is immutable",
    );
    rejected(
        &group(json!({"volumeGroupSnapshotContentName": "c"})),
        Some(&old),
        "selector is required once set",
    );
    let mut bound = group(by_label);
    bound["status"] = json!({"boundVolumeGroupSnapshotContentName": "c1"});
    let mut rebound = bound.clone();
    rebound["status"]["boundVolumeGroupSnapshotContentName"] = json!("c2");
    rejected(
        &rebound,
        Some(&bound),
        "boundVolumeGroupSnapshotContentName is immutable once set",
    );

    let class = |driver: &str, policy: &str| {
        json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1",
               "kind": "VolumeGroupSnapshotClass", "metadata": {"name": "c"},
               "driver": driver, "deletionPolicy": policy})
    };
    validate_object(&class(DRIVER, "Retain"), None).unwrap();
    rejected(
        &class(DRIVER, "Keep"),
        None,
        "not one of the allowed values",
    );
    rejected(
        &class("other.dev", "Delete"),
        Some(&class(DRIVER, "Delete")),
        "driver is immutable once set",
    );
    rejected(
        &class(DRIVER, "Retain"),
        Some(&class(DRIVER, "Delete")),
        "deletionPolicy is immutable once set",
    );
    // v1beta1 lets them change, as upstream's v1beta1 does.
    let mut old_class = class(DRIVER, "Delete");
    old_class["apiVersion"] = json!("groupsnapshot.storage.k8s.io/v1beta1");
    let mut new_class = old_class.clone();
    new_class["deletionPolicy"] = json!("Retain");
    validate_object(&new_class, Some(&old_class)).unwrap();

    let content = |source: Value, reference: Value| {
        json!({"apiVersion": "groupsnapshot.storage.k8s.io/v1",
               "kind": "VolumeGroupSnapshotContent", "metadata": {"name": "c"},
               "spec": {"deletionPolicy": "Retain", "driver": DRIVER, "source": source,
                        "volumeGroupSnapshotRef": reference}})
    };
    let handles = json!({"groupSnapshotHandles": {"volumeGroupSnapshotHandle": "g",
                                                 "volumeSnapshotHandles": ["s1", "s2"]}});
    let reference = json!({"name": "g", "namespace": "default"});
    let imported = content(handles.clone(), reference.clone());
    validate_object(&imported, None).unwrap();
    rejected(
        &content(
            json!({"volumeHandles": ["v"], "groupSnapshotHandles":
                   {"volumeGroupSnapshotHandle": "g", "volumeSnapshotHandles": []}}),
            reference.clone(),
        ),
        None,
        "exactly one of volumeHandles and groupSnapshotHandles",
    );
    rejected(
        &content(
            json!({"groupSnapshotHandles": {"volumeGroupSnapshotHandle": "g"}}),
            reference.clone(),
        ),
        None,
        "volumeSnapshotHandles: required",
    );
    rejected(
        &content(handles.clone(), json!({"name": "g"})),
        None,
        "volumeGroupSnapshotRef.namespace must be set",
    );
    // The controller may fill in the uid of an imported group's reference,
    // but not change it, nor the name.
    let mut with_uid = imported.clone();
    with_uid["spec"]["volumeGroupSnapshotRef"]["uid"] = json!("u1");
    validate_object(&with_uid, Some(&imported)).unwrap();
    let mut other_uid = with_uid.clone();
    other_uid["spec"]["volumeGroupSnapshotRef"]["uid"] = json!("u2");
    rejected(
        &other_uid,
        Some(&with_uid),
        "volumeGroupSnapshotRef.uid is immutable once set",
    );
    rejected(
        &content(handles, json!({"name": "h", "namespace": "default"})),
        Some(&imported),
        "volumeGroupSnapshotRef.name and volumeGroupSnapshotRef.namespace are immutable",
    );
}
