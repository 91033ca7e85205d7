//! The CSI v1 wire contract, generated at build time from `proto/csi.proto`.
//!
//! Messages that carry secrets (fields marked `csi_secret`) get a `Debug`
//! impl from build.rs that prints `<redacted>` in their place, so a request
//! logged with `{:?}` never shows a secret.

#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
    include!(concat!(env!("OUT_DIR"), "/csi_redacted_debug.rs"));
}

#[cfg(test)]
mod tests {
    use super::v1::*;

    #[test]
    fn debug_redacts_secrets() {
        let req = CreateVolumeRequest {
            name: "pvc-1".into(),
            secrets: [("password".to_string(), "hunter2".to_string())].into(),
            ..Default::default()
        };
        let s = format!("{req:?}");
        assert!(s.contains("pvc-1"), "{s}");
        assert!(s.contains("<redacted>"), "{s}");
        assert!(!s.contains("hunter2") && !s.contains("password"), "{s}");
        let stage = NodeStageVolumeRequest {
            volume_id: "v".into(),
            secrets: [("k".to_string(), "s3cr3t".to_string())].into(),
            ..Default::default()
        };
        assert!(!format!("{stage:?}").contains("s3cr3t"));
        let pubr = NodePublishVolumeRequest {
            secrets: [("k".to_string(), "s3cr3t".to_string())].into(),
            ..Default::default()
        };
        assert!(!format!("{pubr:#?}").contains("s3cr3t"));
    }
}
