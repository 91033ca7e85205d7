//! Prometheus metrics: calls per RPC and code, latency, calls in flight,
//! export mounts and their health, snapshot bytes and throughput, restores
//! and clones, errors by kind. This is the registry every layer counts in;
//! `grpc::metrics` serves it in the text format at `/metrics` when
//! `--metrics-address` is set, and counts each gRPC call.
//!
//! Safety assumptions: labels hold only method names, gRPC codes, export
//! keys (admin-chosen) and error kinds, never request data, so neither
//! secrets nor unbounded label values reach a scrape.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Call {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Export {
    pub export: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub calls: Family<Call, Counter>,
    pub latency: Family<Method, Histogram>,
    pub in_flight: Family<Method, Gauge>,
    pub export_mounted: Family<Export, Gauge>,
    pub export_healthy: Family<Export, Gauge>,
    pub snapshot_bytes: Counter,
    pub snapshot_archive_bytes: Counter,
    pub snapshot_seconds: Histogram,
    pub snapshot_throughput: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub restores: Family<Outcome, Counter>,
    pub clones: Family<Outcome, Counter>,
    pub errors: Family<Kind, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("nfs_csi");
        let calls = Family::<Call, Counter>::default();
        registry.register(
            "csi_calls",
            "CSI calls by method and gRPC code",
            calls.clone(),
        );
        let latency = Family::<Method, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 20))
        });
        registry.register_with_unit(
            "csi_call_duration",
            "CSI call latency by method",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        let in_flight = Family::<Method, Gauge>::default();
        registry.register(
            "csi_calls_in_flight",
            "CSI calls being served",
            in_flight.clone(),
        );
        let export_mounted = Family::<Export, Gauge>::default();
        registry.register(
            "export_mounted",
            "1 while the controller holds a mount of the export",
            export_mounted.clone(),
        );
        let export_healthy = Family::<Export, Gauge>::default();
        registry.register(
            "export_healthy",
            "1 when the export answered its last probe, 0 when it did not",
            export_healthy.clone(),
        );
        let snapshot_bytes = Counter::default();
        registry.register_with_unit(
            "snapshot_data",
            "File data archived into snapshots",
            prometheus_client::registry::Unit::Bytes,
            snapshot_bytes.clone(),
        );
        let snapshot_archive_bytes = Counter::default();
        registry.register_with_unit(
            "snapshot_archive",
            "Compressed archive bytes written",
            prometheus_client::registry::Unit::Bytes,
            snapshot_archive_bytes.clone(),
        );
        let snapshot_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 18));
        registry.register_with_unit(
            "snapshot_duration",
            "Time to write a snapshot archive",
            prometheus_client::registry::Unit::Seconds,
            snapshot_seconds.clone(),
        );
        let snapshot_throughput = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "snapshot_last_throughput_bytes_per_second",
            "Data bytes per second of the last snapshot",
            snapshot_throughput.clone(),
        );
        let restores = Family::<Outcome, Counter>::default();
        registry.register(
            "restores",
            "Volumes restored from snapshots",
            restores.clone(),
        );
        let clones = Family::<Outcome, Counter>::default();
        registry.register("clones", "Volumes cloned from volumes", clones.clone());
        let errors = Family::<Kind, Counter>::default();
        registry.register("errors", "Errors returned, by kind", errors.clone());
        Metrics {
            registry,
            calls,
            latency,
            in_flight,
            export_mounted,
            export_healthy,
            snapshot_bytes,
            snapshot_archive_bytes,
            snapshot_seconds,
            snapshot_throughput,
            restores,
            clones,
            errors,
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

pub fn export_state(export: &str, mounted: Option<bool>, healthy: bool) {
    let label = Export {
        export: export.to_string(),
    };
    if let Some(m) = mounted {
        get().export_mounted.get_or_create(&label).set(i64::from(m));
    }
    get()
        .export_healthy
        .get_or_create(&label)
        .set(i64::from(healthy));
}

pub fn error(kind: &str) {
    get()
        .errors
        .get_or_create(&Kind {
            kind: kind.to_string(),
        })
        .inc();
}

pub fn outcome<T, E>(family: &Family<Outcome, Counter>, r: &Result<T, E>) {
    let result = if r.is_ok() { "ok" } else { "error" };
    family
        .get_or_create(&Outcome {
            result: result.into(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_metrics() {
        export_state("mounted:/srv/x", Some(true), false);
        error("controller");
        let text = get().encode();
        assert!(
            text.contains("nfs_csi_export_healthy{export=\"mounted:/srv/x\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("nfs_csi_export_mounted{export=\"mounted:/srv/x\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("nfs_csi_errors_total{kind=\"controller\"}"),
            "{text}"
        );
    }
}
