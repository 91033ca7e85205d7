//! Prometheus metrics: calls per RPC and code, latency, calls in flight,
//! export mounts and their health, snapshot bytes and throughput, restores
//! and clones, errors by kind; served in the text format at `/metrics` when
//! `--metrics-address` is set.
//!
//! Safety assumptions: labels hold only method names, gRPC codes, export
//! keys (admin-chosen) and error kinds, never request data, so neither
//! secrets nor unbounded label values reach a scrape.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

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

/// Serves `/metrics` over HTTP/1.1 on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let (status, body) = if req.uri().path() == "/metrics" {
                            (200, get().encode())
                        } else {
                            (404, "not found: try /metrics\n".to_string())
                        };
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap_or_default(),
                        )
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok(local)
}

/// A tower layer that counts and times every gRPC call.
#[derive(Clone, Default)]
pub struct Layer;

impl<S> tower::Layer<S> for Layer {
    type Service = Service<S>;
    fn layer(&self, inner: S) -> Service<S> {
        Service { inner }
    }
}

#[derive(Clone)]
pub struct Service<S> {
    inner: S,
}

/// Counts one call in a gauge for as long as it lives.
struct InFlightGuard(Gauge);

impl InFlightGuard {
    fn new(gauge: Gauge) -> InFlightGuard {
        gauge.inc();
        InFlightGuard(gauge)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `/csi.v1.Controller/CreateVolume` -> `CreateVolume`.
fn method_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

fn code_name(code: &str) -> String {
    let n: i32 = code.parse().unwrap_or(2);
    format!("{:?}", tonic::Code::from(n))
}

impl<S, B, RB> tower::Service<http::Request<B>> for Service<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_of(req.uri().path());
        // Take the service that was polled ready; leave a clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let span = tracing::info_span!("rpc", method = %method);
        Box::pin(tracing::Instrument::instrument(
            async move {
                let m = get();
                let label = Method {
                    method: method.clone(),
                };
                // Decremented when this future ends, however it ends: done,
                // dropped by a cancelled call, or unwound by a panic.
                let in_flight = InFlightGuard::new(m.in_flight.get_or_create(&label).clone());
                let start = Instant::now();
                let res = inner.call(req).await;
                drop(in_flight);
                m.latency
                    .get_or_create(&label)
                    .observe(start.elapsed().as_secs_f64());
                // An error status comes in the headers (trailers-only response);
                // a success carries its status in trailers.
                let code = match &res {
                    Ok(r) => r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .map(code_name)
                        .unwrap_or_else(|| "Ok".into()),
                    Err(_) => "Unknown".into(),
                };
                m.calls.get_or_create(&Call { method, code }).inc();
                res
            },
            span,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(method_of("/csi.v1.Controller/CreateVolume"), "CreateVolume");
        assert_eq!(code_name("5"), "NotFound");
        assert_eq!(code_name("10"), "Aborted");
    }

    #[test]
    fn in_flight_guard_decrements_on_drop_and_unwind() {
        let g = Gauge::default();
        {
            let _a = InFlightGuard::new(g.clone());
            let _b = InFlightGuard::new(g.clone());
            assert_eq!(g.get(), 2);
        }
        assert_eq!(g.get(), 0);
        let g2 = g.clone();
        let r = std::panic::catch_unwind(move || {
            let _a = InFlightGuard::new(g2);
            panic!("handler panicked");
        });
        assert!(r.is_err());
        assert_eq!(g.get(), 0);
    }

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
