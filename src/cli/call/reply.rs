//! Responses as JSON: field names as in the CSI proto, enums by name,
//! int64 as JSON numbers, absent messages as null.

use serde_json::{Map, Value, json};

use crate::grpc::csi::v1 as csi;

pub(super) fn empty<T>(_: &T) -> Value {
    Value::Object(Map::new())
}

/// An enum value by its proto name; an unknown one as its number.
pub(super) fn enum_name<E: TryFrom<i32>>(v: i32, name: impl Fn(E) -> &'static str) -> Value {
    E::try_from(v).map_or_else(|_| Value::from(v), |e| Value::from(name(e)))
}

pub(super) fn topology(t: &csi::Topology) -> Value {
    json!({ "segments": t.segments })
}

pub(super) fn content_source(s: &csi::VolumeContentSource) -> Value {
    use csi::volume_content_source::Type;
    match &s.r#type {
        Some(Type::Snapshot(s)) => json!({ "snapshot": { "snapshot_id": s.snapshot_id } }),
        Some(Type::Volume(v)) => json!({ "volume": { "volume_id": v.volume_id } }),
        None => json!({}),
    }
}

pub(super) fn volume(v: &csi::Volume) -> Value {
    json!({
        "volume_id": v.volume_id,
        "capacity_bytes": v.capacity_bytes,
        "volume_context": v.volume_context,
        "content_source": v.content_source.as_ref().map(content_source),
        "accessible_topology": v.accessible_topology.iter().map(topology).collect::<Vec<_>>(),
    })
}

pub(super) fn condition(c: &csi::VolumeCondition) -> Value {
    json!({ "abnormal": c.abnormal, "message": c.message })
}

pub(super) fn volume_status(nodes: &[String], cond: &Option<csi::VolumeCondition>) -> Value {
    json!({
        "published_node_ids": nodes,
        "volume_condition": cond.as_ref().map(condition),
    })
}

pub(super) fn capability(c: &csi::VolumeCapability) -> Value {
    use csi::volume_capability::{AccessType, access_mode::Mode};
    let mut m = Map::new();
    m.insert(
        "access_mode".into(),
        c.access_mode.as_ref().map_or(
            Value::Null,
            |a| json!({ "mode": enum_name(a.mode, |m: Mode| m.as_str_name()) }),
        ),
    );
    match &c.access_type {
        Some(AccessType::Block(_)) => {
            m.insert("block".into(), json!({}));
        }
        Some(AccessType::Mount(mv)) => {
            m.insert(
                "mount".into(),
                json!({
                    "fs_type": mv.fs_type,
                    "mount_flags": mv.mount_flags,
                    "volume_mount_group": mv.volume_mount_group,
                }),
            );
        }
        None => {}
    }
    Value::Object(m)
}

pub(super) fn snapshot(s: &csi::Snapshot) -> Value {
    json!({
        "snapshot_id": s.snapshot_id,
        "source_volume_id": s.source_volume_id,
        "size_bytes": s.size_bytes,
        "creation_time": s.creation_time.as_ref().map(|t| t.to_string()),
        "ready_to_use": s.ready_to_use,
        "group_snapshot_id": s.group_snapshot_id,
    })
}

pub(super) fn validate_response(r: &csi::ValidateVolumeCapabilitiesResponse) -> Value {
    json!({
        "confirmed": r.confirmed.as_ref().map(|c| json!({
            "volume_context": c.volume_context,
            "volume_capabilities": c.volume_capabilities.iter().map(capability).collect::<Vec<_>>(),
            "parameters": c.parameters,
            "mutable_parameters": c.mutable_parameters,
        })),
        "message": r.message,
    })
}

pub(super) fn list_volumes_response(r: &csi::ListVolumesResponse) -> Value {
    let entries: Vec<Value> = r
        .entries
        .iter()
        .map(|e| {
            json!({
                "volume": e.volume.as_ref().map(volume),
                "status": e.status.as_ref().map(|s| volume_status(&s.published_node_ids, &s.volume_condition)),
            })
        })
        .collect();
    json!({ "entries": entries, "next_token": r.next_token })
}

pub(super) fn stats_response(r: &csi::NodeGetVolumeStatsResponse) -> Value {
    use csi::volume_usage::Unit;
    let usage: Vec<Value> = r
        .usage
        .iter()
        .map(|u| {
            json!({
                "available": u.available,
                "total": u.total,
                "used": u.used,
                "unit": enum_name(u.unit, |x: Unit| x.as_str_name()),
            })
        })
        .collect();
    json!({
        "usage": usage,
        "volume_condition": r.volume_condition.as_ref().map(condition),
    })
}

pub(super) fn plugin_capabilities(r: &csi::GetPluginCapabilitiesResponse) -> Value {
    use csi::plugin_capability::{Type, service, volume_expansion};
    let caps: Vec<Value> = r
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(Type::Service(s)) => {
                json!({ "service": { "type": enum_name(s.r#type, |t: service::Type| t.as_str_name()) } })
            }
            Some(Type::VolumeExpansion(v)) => {
                json!({ "volume_expansion": { "type": enum_name(v.r#type, |t: volume_expansion::Type| t.as_str_name()) } })
            }
            None => json!({}),
        })
        .collect();
    json!({ "capabilities": caps })
}

pub(super) fn controller_capabilities(r: &csi::ControllerGetCapabilitiesResponse) -> Value {
    use csi::controller_service_capability::{Type, rpc};
    let caps: Vec<Value> = r
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(Type::Rpc(x)) => {
                json!({ "rpc": { "type": enum_name(x.r#type, |t: rpc::Type| t.as_str_name()) } })
            }
            None => json!({}),
        })
        .collect();
    json!({ "capabilities": caps })
}

pub(super) fn node_capabilities(r: &csi::NodeGetCapabilitiesResponse) -> Value {
    use csi::node_service_capability::{Type, rpc};
    let caps: Vec<Value> = r
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(Type::Rpc(x)) => {
                json!({ "rpc": { "type": enum_name(x.r#type, |t: rpc::Type| t.as_str_name()) } })
            }
            None => json!({}),
        })
        .collect();
    json!({ "capabilities": caps })
}
