//! A blocking client of the controller's API on `ureq` (no runtime, no threads: it fits in
//! the programs krak is loaded into): one connection per request, every wait bounded,
//! answers bounded in size, `http://` or `https://` (rustls, [`crate::tls`]). For memory
//! servers, pagers and the CLI.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::tls::{RootCerts, TlsConfig};

/// Largest answer read (a full map of a large region fits).
pub const MAX_RESPONSE_BYTES: u64 = 256 << 20;

/// Why a call of the controller's API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("bad controller URL {0:?} (want http://HOST:PORT or https://HOST:PORT)")]
    Url(String),
    #[error(transparent)]
    Ca(#[from] crate::tls::CaError),
    /// The controller could not be reached: nothing was sent.
    #[error("controller {addr}: cannot connect: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("controller {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("controller {addr}: TLS: {source} (is {} / --tls-ca the CA that signed the controller's certificate, and the URL's host a name in it?)", crate::tls::CA_ENV)]
    Tls {
        addr: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("controller {addr} answered something that is not HTTP: {source}")]
    Protocol {
        addr: String,
        #[source]
        source: ureq::Error,
    },
    #[error("controller answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("{method} {path}: the request body does not encode as JSON: {source}")]
    Encode {
        method: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{method} {path}: controller answered JSON this client cannot read: {source}")]
    Json {
        method: String,
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("controller {addr}: its answer is not signed with our rack secret (wrong --secret-file, or not a krak controller)")]
    Auth { addr: String },
    /// An unsigned 503: the controller's front end turned the connection away unread.
    #[error("controller {addr} is too busy to read the request (503 from its front end: {message})")]
    Busy { addr: String, message: String },
}

impl ApiError {
    /// Whether another try (later, or at another URL) may succeed: the controller could not
    /// be reached, was too busy to read the request, or is not the leader (503).
    pub fn is_transient(&self) -> bool {
        self.was_not_served() || matches!(self, ApiError::Io { .. })
    }

    /// Whether the request surely was not acted on (never sent, turned away unread, or
    /// refused by a standby), so that sending it again cannot apply it twice.
    pub fn was_not_served(&self) -> bool {
        matches!(self, ApiError::Connect { .. } | ApiError::Busy { .. } | ApiError::Status { status: 503, .. })
    }
}

/// An unsigned refusal's body with any boot id it names taken out, so that no one without
/// the secret can make a client sign for a run of their choosing.
fn strip_boot(body: Vec<u8>) -> Vec<u8> {
    if crate::signing::boot_of_refusal(&body).is_none() {
        return body;
    }
    serde_json::to_vec(&serde_json::json!({ "error": error_message(&body) })).unwrap_or_default()
}

/// The text of an error answer: its JSON `error`, else the body as text.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<crate::messages::ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

/// A client of one controller.
#[derive(Debug, Clone)]
pub struct Client {
    /// `http://HOST:PORT` or `https://HOST:PORT`, without a trailing `/`.
    base: String,
    /// `HOST:PORT`, as errors name it.
    host: String,
    /// Connect, send and receive timeout; a long-poll adds its wait to the wait for the head
    /// of its answer.
    pub timeout: Duration,
    /// Signs every request and checks every answer with it (`None`: neither).
    pub secret: Option<krak_auth::RackSecret>,
    /// The boot id of the controller run last heard from at this URL (shared by clones):
    /// requests are signed for it (`signing`).
    boot: Arc<AtomicU64>,
    agent: ureq::Agent,
}

/// An agent that keeps no connection (the controller bounds connections per client, and a
/// pooled idle one would hold a slot), follows no redirect, uses no proxy from the
/// environment, and hands back every status.
fn agent(roots: RootCerts) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .user_agent(concat!("krak/", env!("CARGO_PKG_VERSION")))
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build()
        .into()
}

impl Client {
    /// `url` is `http://HOST:PORT`, `https://HOST:PORT` (a trailing `/` is fine) or
    /// `HOST:PORT`. An `https://` client trusts the CA named by `KRAK_TLS_CA`, else the
    /// public web roots ([`crate::tls`]).
    pub fn new(url: &str) -> Result<Client, ApiError> {
        let (tls, host) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(host), _) => (true, host),
            (None, Some(host)) => (false, host),
            (None, None) => (false, url),
        };
        let host = host.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || host.contains('@') || !host.contains(':') {
            return Err(ApiError::Url(url.to_string()));
        }
        let roots = if tls { crate::tls::roots_from_env()? } else { RootCerts::WebPki };
        let base = format!("{}://{host}", if tls { "https" } else { "http" });
        base.parse::<ureq::http::Uri>().map_err(|_| ApiError::Url(url.to_string()))?;
        Ok(Client {
            base,
            host: host.to_string(),
            timeout: Duration::from_secs(5),
            secret: None,
            boot: Arc::new(AtomicU64::new(crate::signing::UNKNOWN_BOOT)),
            agent: agent(roots),
        })
    }

    /// The same client, signing with `secret`.
    pub fn with_secret(mut self, secret: Option<krak_auth::RackSecret>) -> Client {
        self.secret = secret;
        self
    }

    /// The same client, trusting `roots` for `https://` (instead of `KRAK_TLS_CA`'s).
    pub fn with_roots(mut self, roots: RootCerts) -> Client {
        self.agent = agent(roots);
        self
    }

    /// Sends a request; returns the status and body whatever the status. A signed refusal
    /// that names another controller run than the one the request was signed for (a
    /// restarted controller, a new leader, or the first request) is asked again once, for
    /// that run: nothing was served.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        extra_wait: Duration,
    ) -> Result<(u16, Vec<u8>), ApiError> {
        let Some(secret) = &self.secret else { return self.send(method, path, body, extra_wait, None) };
        let boot = self.boot.load(Ordering::Relaxed);
        let answer = self.send(method, path, body, extra_wait, Some((secret, boot)))?;
        match answer {
            (401, ref refusal) => match crate::signing::boot_of_refusal(refusal) {
                Some(current) if current != boot => {
                    self.boot.store(current, Ordering::Relaxed);
                    self.send(method, path, body, extra_wait, Some((secret, current)))
                }
                _ => Ok(answer),
            },
            _ => Ok(answer),
        }
    }

    /// Sends one request, signed for controller run `boot` with `secret` when given.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        extra_wait: Duration,
        signing: Option<(&krak_auth::RackSecret, u64)>,
    ) -> Result<(u16, Vec<u8>), ApiError> {
        let body = body.unwrap_or_default();
        let signed = signing
            .map(|(s, boot)| crate::signing::sign_request(s, method, path, body, crate::signing::now_ms(), boot));
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .header("Connection", "close");
        if let Some((authorization, _)) = &signed {
            request = request.header("Authorization", authorization.as_str());
        }
        let request = request.body(body).map_err(|_| ApiError::Url(format!("{}{path} ({method})", self.base)))?;
        let request = self
            .agent
            .configure_request(request)
            .timeout_connect(Some(self.timeout))
            .timeout_send_request(Some(self.timeout))
            .timeout_send_body(Some(self.timeout))
            .timeout_recv_response(Some(self.timeout + extra_wait))
            .timeout_recv_body(Some(self.timeout))
            .build();
        let mut answer = self.agent.run(request).map_err(|e| self.failed(e))?;
        let status = answer.status().as_u16();
        let auth =
            answer.headers().get(crate::signing::RESPONSE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body =
            answer.body_mut().with_config().limit(MAX_RESPONSE_BYTES).read_to_vec().map_err(|e| self.failed(e))?;
        if let (Some((secret, _)), Some((_, nonce))) = (signing, &signed) {
            if !crate::signing::verify_response(secret, nonce, status, &body, auth.as_deref()) {
                return match status {
                    // A refusal of our signature cannot be signed for us: report it as it is
                    // (and it names no controller run: only a signed one is believed).
                    401 => Ok((status, strip_boot(body))),
                    // Nor can a front end that turns a connection away before reading its
                    // request (too many connections): busy, worth another try or URL. Anyone
                    // on the path could say so, but only to deny service, as they could anyway.
                    503 => Err(ApiError::Busy { addr: self.host.clone(), message: error_message(&body) }),
                    _ => Err(ApiError::Auth { addr: self.host.clone() }),
                };
            }
        }
        Ok((status, body))
    }

    /// What a failure of `ureq` means for the caller: nothing sent (connect), maybe sent
    /// (I/O, timeouts), a TLS refusal, or an answer that is not HTTP.
    fn failed(&self, e: ureq::Error) -> ApiError {
        use std::io::ErrorKind as K;
        use ureq::{Error as E, Timeout as T};
        let addr = self.host.clone();
        match e {
            // rustls's refusals come through the transport as I/O errors
            E::Io(source) if source.get_ref().is_some_and(|e| e.is::<rustls::Error>()) => {
                ApiError::Tls { addr, source: Box::new(source) }
            }
            E::Io(source)
                if matches!(
                    source.kind(),
                    K::ConnectionRefused | K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable
                ) =>
            {
                ApiError::Connect { addr, source }
            }
            E::HostNotFound | E::ConnectionFailed | E::Timeout(T::Resolve | T::Connect) => {
                ApiError::Connect { addr, source: std::io::Error::other(e) }
            }
            E::Io(source) => ApiError::Io { addr, source },
            E::Timeout(_) => ApiError::Io { addr, source: std::io::Error::new(K::TimedOut, e) },
            E::Tls(_) | E::Rustls(_) | E::Pem(_) | E::TlsRequired => ApiError::Tls { addr, source: Box::new(e) },
            source => ApiError::Protocol { addr, source },
        }
    }

    /// Sends `body` as JSON and decodes a 2xx answer.
    pub fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        self.call_waiting(method, path, body, Duration::ZERO)
    }

    /// Like [`Client::call`], for a request the server may hold for up to `wait`.
    pub fn call_waiting<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
        wait: Duration,
    ) -> Result<T, ApiError> {
        let encode = |source| ApiError::Encode { method: method.into(), path: path.into(), source };
        let body = body.map(serde_json::to_vec).transpose().map_err(encode)?;
        let (status, answer) = self.raw(method, path, body.as_deref(), wait)?;
        if !(200..300).contains(&status) {
            return Err(ApiError::Status { status, message: error_message(&answer) });
        }
        serde_json::from_slice(&answer).map_err(|source| ApiError::Json {
            method: method.into(),
            path: path.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(Client::new("http://127.0.0.1:80/").is_ok());
        assert!(Client::new("127.0.0.1:80").is_ok());
        assert!(Client::new("https://localhost:7443").is_ok());
        for bad in ["http://nohost", "http://a:1/x", "ftp://a:1", "http://u@a:1", "", "http://"] {
            assert!(matches!(Client::new(bad), Err(ApiError::Url(_))), "{bad}");
        }
    }
}
