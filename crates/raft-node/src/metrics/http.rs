//! The HTTP/1 server for `/metrics`.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::NodeMetrics;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// The content type of the OpenMetrics text exposition.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrape connections served at once, at most; more wait to be accepted.
const CONNECTIONS_MAX: usize = 64;

/// Serves `GET /metrics` on `listener` until the task is dropped or
/// aborted; the connections it serves end with it.
pub(crate) async fn serve(listener: TcpListener, metrics: NodeMetrics) {
    // Dropping the set (when this future is dropped) aborts every
    // connection, so none outlives the node that served it.
    let mut connections = JoinSet::new();
    loop {
        while connections.len() >= CONNECTIONS_MAX {
            let _ = connections.join_next().await;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics listener: accept failed");
                continue;
            }
        };
        let metrics = metrics.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&request, &metrics).await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "metrics connection ended");
            }
        });
    }
}

/// The reply to one request: the exposition for `GET /metrics`, 404 or
/// 405 otherwise.
async fn respond(request: &Request<Incoming>, metrics: &NodeMetrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
        }
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match metrics.scrape().await {
        Ok(body) => reply(StatusCode::OK, CONTENT_TYPE, body),
        Err(error) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding the metrics failed: {error}\n"),
        ),
    }
}
