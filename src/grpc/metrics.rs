//! The gRPC side of the metrics: a tower layer that counts and times every
//! call, and the HTTP endpoint that serves the registry (`sys::metrics`) at
//! `/metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;

use crate::sys::metrics::{Call, Method, get};

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
}
