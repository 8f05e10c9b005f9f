//! KV request counts by method and status code, and latency by method.

use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::Code;

/// The smallest latency bucket's upper bound, in seconds (100 µs).
const LATENCY_BUCKET_SECONDS_MIN: f64 = 0.000_1;
/// Latency buckets, each twice the one before: up to ~3.3 s.
const LATENCY_BUCKETS: u16 = 16;

/// `method` and `code` labels.
type RpcLabels = [(&'static str, &'static str); 2];
/// The `method` label.
type MethodLabels = [(&'static str, &'static str); 1];

/// The KV service's request metrics. Clones share the counters.
#[derive(Debug, Clone)]
pub(crate) struct RpcMetrics {
    requests: Family<RpcLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

impl RpcMetrics {
    /// Registers `kv_rpc_requests_total` and `kv_rpc_duration_seconds`.
    pub(crate) fn register(registry: &mut Registry) -> RpcMetrics {
        let requests = Family::<RpcLabels, Counter>::default();
        let latency: Family<MethodLabels, Histogram, fn() -> Histogram> = Family::new_with_constructor(|| {
            Histogram::new(exponential_buckets(LATENCY_BUCKET_SECONDS_MIN, 2.0, LATENCY_BUCKETS))
        });
        registry.register(
            "kv_rpc_requests",
            "KV requests answered, by method and gRPC status code",
            requests.clone(),
        );
        registry.register(
            "kv_rpc_duration_seconds",
            "Time from a KV request's arrival to its response, by method",
            latency.clone(),
        );
        RpcMetrics { requests, latency }
    }

    fn record(&self, method: &'static str, code: Code, started: Instant) {
        self.requests
            .get_or_create(&[("method", method), ("code", code_label(code))])
            .inc();
        self.latency
            .get_or_create(&[("method", method)])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A service (the KV server) with its requests counted and timed.
///
/// The status is the `grpc-status` of the response headers (tonic answers a
/// failed unary call with a trailers-only response), `OK` when there is
/// none; the time runs until the response headers are ready, which for a
/// unary call is when the handler has finished.
#[derive(Debug, Clone)]
pub(crate) struct Metered<S> {
    inner: S,
    metrics: Option<RpcMetrics>,
}

impl<S> Metered<S> {
    /// Wraps `inner`; without `metrics`, requests pass through uncounted.
    pub(crate) fn new(inner: S, metrics: Option<RpcMetrics>) -> Metered<S> {
        Metered { inner, metrics }
    }
}

impl<S: NamedService> NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Metered<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let Some(metrics) = self.metrics.clone() else {
            return Box::pin(self.inner.call(request));
        };
        let method = method_label(request.uri().path());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            if let Ok(response) = &response {
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from_i32);
                metrics.record(method, code, started);
            }
            response
        })
    }
}

/// The KV methods, as the `method` label names them.
const METHODS: [&str; 6] = ["Put", "Get", "Range", "BatchPut", "Delete", "OpenSession"];

/// The method of a gRPC path (`/kv.v1.Kv/Put` → `Put`), from a fixed set
/// so that a client cannot grow the label set: `other` for any other.
fn method_label(path: &str) -> &'static str {
    let name = path.rsplit('/').next().unwrap_or_default();
    METHODS
        .iter()
        .find(|method| **method == name)
        .copied()
        .unwrap_or("other")
}

/// The status code's name, as gRPC spells it.
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_come_from_a_fixed_set() {
        // A client picks the path; the label set must stay bounded anyway.
        assert_eq!(method_label("/kv.v1.Kv/Put"), "Put");
        assert_eq!(method_label("/kv.v1.Kv/BatchPut"), "BatchPut");
        assert_eq!(method_label("/kv.v1.Kv/Anything"), "other");
        assert_eq!(method_label(""), "other");
    }
}
