//! The metrics endpoint on hyper: `GET /metrics` and `GET /health`, one short request per
//! connection, with a bounded request size, a bounded number of connections and a time
//! limit per connection, on a thread of its own.

use super::Metrics;
use crate::error::NodeError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Largest HTTP request head read (hyper's smallest buffer); the server only needs its
/// first line. A larger one is answered 431.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Scrapes answered at once; more wait for a slot.
const MAX_CONNECTIONS: usize = 16;
/// A connection is closed after this, answered or not.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// OpenMetrics text, as prometheus-client writes it.
const METRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the metrics listener now (so a taken port stops the node at start with the key
/// named) and serves it from a thread of its own.
pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<(), NodeError> {
    let listen = |e: std::io::Error| NodeError::Listen { key: "metrics.listen", addr, reason: e.to_string() };
    let std_listener = std::net::TcpListener::bind(addr).map_err(listen)?;
    std_listener.set_nonblocking(true).map_err(listen)?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("metrics runtime");
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(listener) => serve(listener, metrics).await,
                    Err(e) => tracing::error!("metrics listener: {e}"),
                }
            })
        })
        .map_err(|e| NodeError::Start(format!("metrics thread: {e}")))?;
    Ok(())
}

/// Serves `/metrics` and `/health` on `listener` until the process ends.
async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&request, &metrics)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_REQUEST_BYTES)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, connection).await;
            drop(permit);
        });
    }
}

fn answer(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".to_string());
    }
    match request.uri().path() {
        "/metrics" => respond(StatusCode::OK, METRICS_TYPE, metrics.render()),
        "/health" => match metrics.health() {
            Ok(body) => respond(StatusCode::OK, "application/json", body),
            Err(body) => respond(StatusCode::SERVICE_UNAVAILABLE, "application/json", body),
        },
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "try /metrics or /health\n".to_string()),
    }
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
