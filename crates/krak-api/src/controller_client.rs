//! A client of a rack whose controller may be any of several URLs: a leader and its standbys.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{ApiError, Client};

/// Rounds over the URLs a call makes while every URL turns it away unserved, and the pause
/// before each round after the first.
const ROUNDS: usize = 3;
const ROUND_PAUSE_MS: [u64; ROUNDS - 1] = [100, 400];

/// A client of a rack whose controller may be any of several URLs (a leader and its
/// standbys): a call goes to the URL that answered last, and moves on to the next one when a
/// URL cannot be reached or answers 503 (a standby, a leader whose store failed, or a front
/// end too busy to read it). When every URL turned it away unserved, it tries them all again
/// after a pause, a bounded number of times.
#[derive(Debug, Clone)]
pub struct ControllerClient {
    clients: Vec<(String, Client)>,
    current: usize,
}

impl ControllerClient {
    /// Every URL's client signs with `secret`.
    pub fn with_secret(mut self, secret: Option<krak_auth::RackSecret>) -> ControllerClient {
        for (_, c) in &mut self.clients {
            c.secret = secret;
        }
        self
    }

    /// Every URL's client trusts `roots` for `https://` (instead of `KRAK_TLS_CA`'s).
    pub fn with_roots(mut self, roots: ureq::tls::RootCerts) -> ControllerClient {
        for (_, c) in &mut self.clients {
            *c = c.clone().with_roots(roots.clone());
        }
        self
    }

    /// `urls` is one URL or several separated by commas.
    pub fn new(urls: &str, timeout: Duration) -> Result<ControllerClient, ApiError> {
        let mut clients = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let mut client = Client::new(url)?;
            client.timeout = timeout;
            clients.push((url.to_string(), client));
        }
        if clients.is_empty() {
            return Err(ApiError::Url(urls.to_string()));
        }
        Ok(ControllerClient { clients, current: 0 })
    }

    /// The URL that answered last (or will be tried first).
    pub fn url(&self) -> &str {
        &self.clients[self.current].0
    }

    pub fn call<B: Serialize, T: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ApiError> {
        self.call_waiting(method, path, body, Duration::ZERO)
    }

    /// Calls each URL in turn from the current one until one answers other than 503 or a
    /// connection failure; returns that answer, or the last failure. Rounds repeat (after
    /// 100 ms, then 400 ms) only while no URL may have acted on the request.
    pub fn call_waiting<B: Serialize, T: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&B>,
        wait: Duration,
    ) -> Result<T, ApiError> {
        let n = self.clients.len();
        let mut last = None;
        for round in 0..ROUNDS {
            if round > 0 {
                std::thread::sleep(Duration::from_millis(ROUND_PAUSE_MS[round - 1]));
            }
            let mut all_unserved = true;
            for i in 0..n {
                let at = (self.current + i) % n;
                match self.clients[at].1.call_waiting(method, path, body, wait) {
                    Err(e) if e.is_transient() => {
                        tracing::debug!("{}: {e}", self.clients[at].0);
                        all_unserved &= e.was_not_served();
                        last = Some(e);
                    }
                    answer => {
                        self.current = at;
                        return answer;
                    }
                }
            }
            if !all_unserved {
                break;
            }
        }
        Err(last.unwrap_or_else(|| ApiError::Url("no controller URL".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A front end answering every connection with `answer` (unsigned), as the controller's
    /// gate does when full; counts the connections. It reads what the request sent first,
    /// so that closing does not reset the answer away.
    fn front_end(answer: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let _ = s.read(&mut [0u8; 4096]);
                let _ = s.write_all(answer.as_bytes());
                let _ = s.shutdown(std::net::Shutdown::Write);
                let _ = s.read_to_end(&mut Vec::new());
            }
        });
        (url, seen)
    }

    const BUSY: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 26\r\n\r\n{\"error\":\"too many conns\"}";
    const UNSIGNED_OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";

    #[test]
    fn an_unsigned_503_is_busy_and_tried_again_and_elsewhere() {
        let secret = Some(krak_auth::RackSecret::generate());
        let (busy, busy_seen) = front_end(BUSY);
        let (dead, _) = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            (format!("http://{}", l.local_addr().unwrap()), ())
        }; // closed again: connecting is refused
        let mut c =
            ControllerClient::new(&format!("{busy},{dead}"), Duration::from_secs(2)).unwrap().with_secret(secret);
        let started = std::time::Instant::now();
        let err = c.call::<(), serde_json::Value>("GET", "/v1/status", None).unwrap_err();
        // every URL in every round, the pauses between them, and the failure says what happened
        assert_eq!(busy_seen.load(Ordering::SeqCst), ROUNDS, "{err}");
        assert!(started.elapsed() >= Duration::from_millis(ROUND_PAUSE_MS.iter().sum()), "{:?}", started.elapsed());
        assert!(err.was_not_served(), "{err}");
        let single = Client::new(&busy).unwrap().with_secret(secret);
        let err = single.call::<(), serde_json::Value>("GET", "/v1/status", None).unwrap_err();
        assert!(matches!(&err, ApiError::Busy { message, .. } if message == "too many conns"), "{err}");
        assert!(err.to_string().contains("too busy"), "{err}");
    }

    #[test]
    fn an_unsigned_answer_is_still_refused_and_not_tried_again() {
        let secret = Some(krak_auth::RackSecret::generate());
        let (url, seen) = front_end(UNSIGNED_OK);
        let mut c = ControllerClient::new(&url, Duration::from_secs(2)).unwrap().with_secret(secret);
        let err = c.call::<(), serde_json::Value>("GET", "/v1/status", None).unwrap_err();
        assert!(matches!(err, ApiError::Auth { .. }), "{err}");
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }
}
