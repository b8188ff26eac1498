//! The HTTP server: `tiny_http` parses requests, a fixed pool of worker threads answers
//! them, and request bodies are read up to a limit (413 beyond, before any parsing).

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often an idle worker checks for shutdown.
const POLL: Duration = Duration::from_millis(100);

/// A request as the API sees it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// Path and query as sent: what a request signature covers.
    pub url: String,
    pub path: String,
    pub query: String,
    pub body: Vec<u8>,
    pub authorization: Option<String>,
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// The answer's signature (`X-Krak-Auth`), when the controller has a secret.
    pub auth: Option<String>,
}

impl Response {
    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response { status, content_type: "application/json", body, auth: None },
            Err(e) => Response::error(500, &format!("cannot encode the answer: {e}")),
        }
    }

    pub fn error(status: u16, message: &str) -> Response {
        let body = serde_json::to_vec(&crate::messages::ErrorBody { error: message.to_string() })
            .unwrap_or_else(|_| b"{\"error\":\"?\"}".to_vec());
        Response { status, content_type: "application/json", body, auth: None }
    }

    pub fn text(body: String) -> Response {
        Response { status: 200, content_type: "text/plain; version=0.0.4", body: body.into_bytes(), auth: None }
    }
}

/// Answers requests.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// A running server.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer").field("addr", &self.addr).field("workers", &self.workers.len()).finish()
    }
}

impl HttpServer {
    /// Listens on `listen` and answers with `handler` on `workers` threads.
    pub fn start(
        listen: SocketAddr,
        workers: usize,
        max_body_bytes: usize,
        handler: Handler,
    ) -> Result<HttpServer, std::io::Error> {
        let listener = std::net::TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let server = tiny_http::Server::from_listener(listener, None).map_err(std::io::Error::other)?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let (server, worker_stop, handler) = (server.clone(), stop.clone(), handler.clone());
            let spawned = thread::Builder::new()
                .name(format!("krak-ctl-http-{i}"))
                .spawn(move || worker(&server, &worker_stop, &*handler, max_body_bytes));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stop.store(true, Ordering::SeqCst);
                    for h in handles {
                        let _ = h.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(HttpServer { server, addr, stop, workers: handles })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the workers (after the requests they are answering) and closes the listener.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for _ in 0..self.workers.len() {
            self.server.unblock();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

fn worker(
    server: &tiny_http::Server,
    stop: &AtomicBool,
    handler: &(dyn Fn(Request) -> Response + Send + Sync),
    max_body: usize,
) {
    while !stop.load(Ordering::SeqCst) {
        let mut req = match server.recv_timeout(POLL) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::debug!("http receive: {e}");
                thread::sleep(POLL);
                continue;
            }
        };
        let response = match read_body(&mut req, max_body) {
            Ok(body) => {
                let (path, query) = match req.url().split_once('?') {
                    Some((p, q)) => (p.to_string(), q.to_string()),
                    None => (req.url().to_string(), String::new()),
                };
                let authorization =
                    req.headers().iter().find(|h| h.field.equiv("Authorization")).map(|h| h.value.as_str().to_string());
                let method = req.method().as_str().to_ascii_uppercase();
                handler(Request { method, url: req.url().to_string(), path, query, body, authorization })
            }
            Err(r) => r,
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], response.content_type.as_bytes());
        let mut out = tiny_http::Response::from_data(response.body.clone()).with_status_code(response.status);
        if let Ok(h) = header {
            out = out.with_header(h);
        }
        if let Some(auth) = &response.auth {
            if let Ok(h) = tiny_http::Header::from_bytes(crate::auth::RESPONSE_HEADER.as_bytes(), auth.as_bytes()) {
                out = out.with_header(h);
            }
        }
        if let Err(e) = req.respond(out) {
            tracing::debug!("http respond: {e}");
        }
    }
}

fn read_body(req: &mut tiny_http::Request, max: usize) -> Result<Vec<u8>, Response> {
    let too_large = || Response::error(413, &format!("request body larger than {max} bytes"));
    if req.body_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    req.as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| Response::error(400, &format!("cannot read the request body: {e}")))?;
    if body.len() > max {
        return Err(too_large());
    }
    Ok(body)
}
