//! The metrics endpoint: `GET /metrics` (Prometheus text format 0.0.4) and `GET /health`,
//! one short request per connection, with a bounded request size and a bounded number of
//! connections, on a thread of its own.

use super::Metrics;
use crate::error::NodeError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest HTTP request read; the server only needs its first line.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Scrapes answered at once; more wait for a slot.
const MAX_CONNECTIONS: usize = 16;
/// A client that sends nothing for this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `/metrics` and `/health` on `listener` until the process ends.
async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &metrics)).await;
            drop(permit);
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && !request.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        if request.len() > MAX_REQUEST_BYTES {
            return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", "request too large\n").await;
        }
    }
    let line = String::from_utf8_lossy(request.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => respond(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", &metrics.render()).await,
        ("GET", "/health") => match metrics.health() {
            Ok(body) => respond(&mut stream, "200 OK", "application/json", &body).await,
            Err(body) => respond(&mut stream, "503 Service Unavailable", "application/json", &body).await,
        },
        ("GET", _) => respond(&mut stream, "404 Not Found", "text/plain", "try /metrics or /health\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", "GET only\n").await,
    }
}

async fn respond(stream: &mut tokio::net::TcpStream, status: &str, content_type: &str, body: &str) -> std::io::Result<()> {
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

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
