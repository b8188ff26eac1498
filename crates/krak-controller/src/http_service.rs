//! The request layer under hyper: from a framed request to the API's [`Request`] within the
//! bounds (no chunked bodies, a body limit checked before any of the body is read, the body
//! whole within the request timeout), then a worker: at most `workers` requests are answered
//! at once, each on tokio's blocking pool, since the API takes locks and writes the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use tokio::sync::{watch, Semaphore};

use crate::http::{Handler, HttpLimits, Request, Response};
use crate::http_conn::ConnState;
use crate::http_gate::HttpStats;

/// What every connection's service shares.
#[derive(Debug)]
pub struct Shared {
    pub limits: HttpLimits,
    pub handler: HandlerCell,
    pub stats: Arc<HttpStats>,
    pub workers: Arc<Semaphore>,
    /// Set when the server stops: answers close their connection.
    pub stopping: AtomicBool,
    pub stop: watch::Receiver<bool>,
}

impl Shared {
    pub fn new(limits: HttpLimits, handler: Handler, stats: Arc<HttpStats>, stop: watch::Receiver<bool>) -> Shared {
        Shared {
            workers: Arc::new(Semaphore::new(limits.workers.max(1))),
            limits,
            handler: HandlerCell(handler),
            stats,
            stopping: AtomicBool::new(false),
            stop,
        }
    }
}

/// The API's handler (a closure, so `Debug` by hand).
pub struct HandlerCell(pub Handler);

impl std::fmt::Debug for HandlerCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handler")
    }
}

/// Ends the connection without an answer (it was closed for room, or the server stops).
#[derive(Debug, thiserror::Error)]
#[error("connection cut: {0}")]
pub struct Cut(&'static str);

/// Answers one request of the connection whose phase is `conn`.
pub async fn serve(
    req: hyper::Request<Incoming>,
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
) -> Result<hyper::Response<Full<Bytes>>, Cut> {
    let Some(began) = conn.answering() else { return Err(Cut("closed for room")) };
    let answer = answer(req, &shared, &conn, began).await;
    conn.answered();
    answer
}

async fn answer(
    req: hyper::Request<Incoming>,
    shared: &Shared,
    conn: &ConnState,
    began: Instant,
) -> Result<hyper::Response<Full<Bytes>>, Cut> {
    let limits = &shared.limits;
    let refuse = |status: u16, message: &str| {
        shared.stats.malformed();
        conn.linger();
        Ok(encode(Response::error(status, message), false))
    };
    if req.headers().contains_key(TRANSFER_ENCODING) {
        return refuse(501, "Transfer-Encoding is not supported; send a Content-Length");
    }
    let declared = match req.headers().get(CONTENT_LENGTH).map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()))
    {
        None => 0,
        Some(Some(n)) => n,
        Some(None) => return refuse(400, "bad Content-Length"),
    };
    if declared > limits.max_body_bytes as u64 {
        return refuse(413, &format!("request body larger than {} bytes", limits.max_body_bytes));
    }
    // origin form only: what a request's signature covers is its path and query as sent
    let target = match req.uri().path_and_query() {
        Some(p) if req.uri().authority().is_none() && p.as_str().starts_with('/') => p.as_str().to_string(),
        _ => return refuse(400, "the request target must be a path (origin form), such as /v1/status"),
    };
    let keep_alive = wants_keep_alive(&req);
    let (head, body) = req.into_parts();
    let deadline = began + std::time::Duration::from_millis(limits.request_timeout_ms);
    let body = match tokio::time::timeout_at(deadline.into(), Limited::new(body, limits.max_body_bytes).collect()).await
    {
        Ok(Ok(collected)) => collected.to_bytes().to_vec(),
        Ok(Err(e)) => {
            tracing::debug!("http body: {e}");
            return Err(Cut("the request body could not be read"));
        }
        Err(_) => {
            shared.stats.request_timed_out();
            conn.linger();
            let message = "request not complete within the request timeout";
            return Ok(encode(Response::error(408, message), false));
        }
    };
    let request = Request::new(head.method.as_str(), &target, body, &head);
    let permit = {
        let mut stop = shared.stop.clone();
        tokio::select! {
            permit = shared.workers.clone().acquire_owned() => permit.map_err(|_| Cut("stopping"))?,
            () = stopped(&mut stop) => return Err(Cut("stopping")),
        }
    };
    let handler = shared.handler.0.clone();
    let response = tokio::task::spawn_blocking(move || {
        let response = handler(request);
        drop(permit);
        response
    })
    .await
    .unwrap_or_else(|e| Response::error(500, &format!("the request's handler failed: {e}")));
    let keep_alive = keep_alive && !shared.stopping.load(Ordering::SeqCst);
    Ok(encode(response, keep_alive))
}

/// Resolves once the server stops.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // an error means the server is gone: stopped too
    let _ = stop.wait_for(|s| *s).await;
}

/// HTTP/1.1 keeps a connection unless told to close; 1.0 only when asked to keep it.
fn wants_keep_alive(req: &hyper::Request<Incoming>) -> bool {
    let connection = req.headers().get(CONNECTION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let has = |token: &str| connection.split(',').any(|t| t.trim().eq_ignore_ascii_case(token));
    match req.version() {
        hyper::Version::HTTP_11 => !has("close"),
        _ => has("keep-alive"),
    }
}

fn encode(response: Response, keep_alive: bool) -> hyper::Response<Full<Bytes>> {
    let mut out = hyper::Response::new(Full::new(Bytes::from(response.body)));
    *out.status_mut() =
        hyper::StatusCode::from_u16(response.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = out.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(response.content_type));
    headers.insert(CONNECTION, HeaderValue::from_static(if keep_alive { "keep-alive" } else { "close" }));
    if let Some(auth) = response.auth.and_then(|a| HeaderValue::from_str(&a).ok()) {
        headers.insert(krak_api::signing::RESPONSE_HEADER, auth);
    }
    out
}
