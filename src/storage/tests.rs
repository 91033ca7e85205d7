//! Tests of the storage layer as a whole: ids, paths, parameters and export
//! flags, and their property tests.

use std::collections::HashMap;

use super::export::ExportSpec;
use super::ids::*;
use super::params::*;

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
fn mutable_params_take_two_keys_and_refuse_others() {
    assert_eq!(
        mutable_params(&params(&[])).unwrap(),
        MutableParams::default()
    );
    let m = mutable_params(&params(&[
        ("onDelete", "retain"),
        ("mountPermissions", "0750"),
        ("csi.storage.k8s.io/pvc/name", "p"),
    ]))
    .unwrap();
    assert_eq!(m.on_delete, Some(OnDelete::Retain));
    assert_eq!(m.mount_permissions, Some(0o750));
    let e = mutable_params(&params(&[("onDelete", "retain"), ("subDir", "x")])).unwrap_err();
    assert!(matches!(e, Error::UnknownMutableParameter(_)), "{e}");
    assert!(e.to_string().contains("subDir"), "{e}");
    for bad in [("onDelete", "keep"), ("mountPermissions", "0999")] {
        let e = mutable_params(&params(&[bad])).unwrap_err();
        assert!(e.to_string().contains(bad.0), "{e}");
    }
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
    assert!(SnapshotId::parse("s1#mounted#//#x").is_err());
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

#[test]
fn ids_round_trip() {
    let id = SnapshotId::new(ExportSpec::mounted("/srv/snaps").unwrap(), "snapshot-1234");
    let s = id.to_string();
    assert_eq!(s, "s1#mounted#/srv/snaps#snapshot-1234");
    assert_eq!(SnapshotId::parse(&s).unwrap(), id);
    for bad in [
        "",
        "v1#mounted#/srv#x",
        "s1#mounted#/srv#..",
        "s1#mounted#/srv#a%2Fb",
        "s1#mounted#/srv#.hidden",
    ] {
        assert!(SnapshotId::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn group_ids_round_trip_and_are_not_snapshot_ids() {
    let export = ExportSpec::mounted("/srv/snaps").unwrap();
    let id = GroupSnapshotId::new(export.clone(), "groupsnapshot-1234");
    let s = id.to_string();
    assert_eq!(s, "g1#mounted#/srv/snaps#groupsnapshot-1234");
    assert_eq!(GroupSnapshotId::parse(&s).unwrap(), id);
    // a name that is not a plain file name is encoded, and parses back
    let odd = GroupSnapshotId::new(export.clone(), "a/b c");
    assert_eq!(GroupSnapshotId::parse(&odd.to_string()).unwrap(), odd);
    let snap = SnapshotId::new(export, "groupsnapshot-1234").to_string();
    assert!(GroupSnapshotId::parse(&snap).is_err());
    assert!(SnapshotId::parse(&s).is_err());
    for bad in [
        "",
        "g1#mounted#/srv#..",
        "g1#mounted#/srv#a%2Fb",
        "g1#mounted#/srv#.hidden",
        "g1#mounted#/srv#x-zz",
    ] {
        let err = GroupSnapshotId::parse(bad).unwrap_err();
        assert!(
            matches!(err, Error::InvalidGroupSnapshotId { .. }),
            "{bad}: {err}"
        );
    }
}

mod props {
    use super::*;
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
        fn group_ids_parse_canonically_or_fail(s in edgy(), nfs in any::<bool>()) {
            let s = if nfs { format!("g1#nfs#{s}") } else { format!("g1#mounted#{s}") };
            if let Ok(id) = GroupSnapshotId::parse(&s) {
                prop_assert_eq!(id.to_string(), s);
            }
        }

        #[test]
        fn group_ids_round_trip(e in export(), name in edgy()) {
            if let (Some(export), false) = (e, name.is_empty()) {
                let id = GroupSnapshotId::new(export, &name);
                prop_assert_eq!(GroupSnapshotId::parse(&id.to_string()).unwrap(), id);
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
