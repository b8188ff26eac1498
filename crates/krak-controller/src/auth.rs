//! Authentication of the HTTP API with the rack secret (`docs/api.md`, "Authentication").
//!
//! A request carries `Authorization: Krak-HMAC ts=MS,nonce=HEX32,mac=HEX64`, where `mac` is
//! HMAC-SHA256 under the rack secret of the method, the URL (path and query, as sent), the
//! body, the timestamp (Unix ms) and the nonce. The controller refuses (401) a request
//! without it, with a wrong MAC, a timestamp more than [`WINDOW_MS`] away from its clock,
//! or a nonce it has already seen within the window (a replay). Its answer carries
//! `X-Krak-Auth: mac=HEX64` over the request's nonce, the status and the body, so the
//! client knows the answer came from a controller with the secret and for this request.
//! No I/O here; the replay cache is bounded.

use std::collections::{HashSet, VecDeque};

use krak_auth::{tags_equal, RackSecret, TAG_LEN};
use parking_lot::Mutex;

/// The scheme of the `Authorization` header.
pub const SCHEME: &str = "Krak-HMAC";
/// Name of the header that authenticates an answer.
pub const RESPONSE_HEADER: &str = "X-Krak-Auth";
/// How far a request's timestamp may be from the controller's clock, either way.
pub const WINDOW_MS: u64 = 30_000;
/// Most nonces remembered at once; past it a request is refused until old ones expire.
pub const MAX_NONCES: usize = 100_000;
/// Length of a request nonce.
pub const NONCE_LEN: usize = 16;

const REQUEST_LABEL: &str = "krak/2 http request";
const RESPONSE_LABEL: &str = "krak/2 http response";

/// Why a request was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header ({SCHEME}); pass the rack secret (--secret-file)")]
    Missing,
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    #[error("request timestamp is {skew_ms} ms away from the controller's clock (at most {WINDOW_MS})")]
    Stale { skew_ms: u64 },
    #[error("request replayed (its nonce was already used)")]
    Replayed,
    #[error("too many requests within the replay window; retry shortly")]
    Busy,
    #[error("request signature does not match this rack's secret")]
    BadMac,
}

/// The fields of a request's `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestAuth {
    pub ts_ms: u64,
    pub nonce: [u8; NONCE_LEN],
    pub mac: [u8; TAG_LEN],
}

pub fn request_mac(
    secret: &RackSecret,
    method: &str,
    url: &str,
    body: &[u8],
    ts_ms: u64,
    nonce: &[u8; NONCE_LEN],
) -> [u8; TAG_LEN] {
    secret.tag(REQUEST_LABEL, &[method.as_bytes(), url.as_bytes(), body, &ts_ms.to_le_bytes(), nonce])
}

pub fn response_mac(secret: &RackSecret, nonce: &[u8; NONCE_LEN], status: u16, body: &[u8]) -> [u8; TAG_LEN] {
    secret.tag(RESPONSE_LABEL, &[nonce, &status.to_le_bytes(), body])
}

/// The `Authorization` header value for a request, with a fresh nonce (returned too, to
/// check the answer with).
pub fn sign_request(
    secret: &RackSecret,
    method: &str,
    url: &str,
    body: &[u8],
    ts_ms: u64,
) -> (String, [u8; NONCE_LEN]) {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mac = request_mac(secret, method, url, body, ts_ms, &nonce);
    (format!("{SCHEME} ts={ts_ms},nonce={},mac={}", hex(&nonce), hex(&mac)), nonce)
}

/// Parses an `Authorization` header value; never panics.
pub fn parse_header(value: &str) -> Result<RequestAuth, AuthError> {
    let rest = value.trim().strip_prefix(SCHEME).ok_or(AuthError::Malformed("not the Krak-HMAC scheme"))?;
    let (mut ts, mut nonce, mut mac) = (None, None, None);
    for field in rest.trim().split(',') {
        let (k, v) = field.trim().split_once('=').ok_or(AuthError::Malformed("field without '='"))?;
        match k {
            "ts" => ts = Some(v.parse::<u64>().map_err(|_| AuthError::Malformed("ts is not a number"))?),
            "nonce" => nonce = Some(unhex::<NONCE_LEN>(v).ok_or(AuthError::Malformed("nonce is not 32 hex digits"))?),
            "mac" => mac = Some(unhex::<TAG_LEN>(v).ok_or(AuthError::Malformed("mac is not 64 hex digits"))?),
            _ => return Err(AuthError::Malformed("unknown field")),
        }
    }
    match (ts, nonce, mac) {
        (Some(ts_ms), Some(nonce), Some(mac)) => Ok(RequestAuth { ts_ms, nonce, mac }),
        _ => Err(AuthError::Malformed("ts, nonce and mac are all required")),
    }
}

/// Remembers the nonces of the last [`WINDOW_MS`], to refuse replays.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<Seen>,
}

/// Nonces seen, and when (oldest first) so they can be forgotten in order.
#[derive(Debug, Default)]
struct Seen {
    set: HashSet<[u8; NONCE_LEN]>,
    order: VecDeque<(u64, [u8; NONCE_LEN])>,
}

impl ReplayGuard {
    /// Records `nonce` (seen at `now_ms`); refuses one already recorded.
    fn admit(&self, now_ms: u64, nonce: [u8; NONCE_LEN]) -> Result<(), AuthError> {
        let mut guard = self.seen.lock();
        let Seen { set, order } = &mut *guard;
        // A nonce is kept at least twice the window: its request's timestamp may lie a
        // window ahead of the clock and stays acceptable a window after that.
        while let Some(&(at, old)) = order.front() {
            if now_ms.saturating_sub(at) <= 2 * WINDOW_MS {
                break;
            }
            order.pop_front();
            set.remove(&old);
        }
        if set.contains(&nonce) {
            return Err(AuthError::Replayed);
        }
        if set.len() >= MAX_NONCES {
            return Err(AuthError::Busy);
        }
        set.insert(nonce);
        order.push_back((now_ms, nonce));
        Ok(())
    }
}

/// Checks one request; returns its nonce (to sign the answer with).
pub fn verify_request(
    secret: &RackSecret,
    guard: &ReplayGuard,
    now_ms: u64,
    method: &str,
    url: &str,
    body: &[u8],
    header: Option<&str>,
) -> Result<[u8; NONCE_LEN], AuthError> {
    let auth = parse_header(header.ok_or(AuthError::Missing)?)?;
    let skew_ms = now_ms.abs_diff(auth.ts_ms);
    if skew_ms > WINDOW_MS {
        return Err(AuthError::Stale { skew_ms });
    }
    if !tags_equal(&request_mac(secret, method, url, body, auth.ts_ms, &auth.nonce), &auth.mac) {
        return Err(AuthError::BadMac);
    }
    // Only requests with a good MAC take room in the cache.
    guard.admit(now_ms, auth.nonce)?;
    Ok(auth.nonce)
}

/// The `X-Krak-Auth` value of an answer.
pub fn sign_response(secret: &RackSecret, nonce: &[u8; NONCE_LEN], status: u16, body: &[u8]) -> String {
    format!("mac={}", hex(&response_mac(secret, nonce, status, body)))
}

/// Checks an answer's `X-Krak-Auth` value.
pub fn verify_response(
    secret: &RackSecret,
    nonce: &[u8; NONCE_LEN],
    status: u16,
    body: &[u8],
    header: Option<&str>,
) -> bool {
    let Some(mac) = header.and_then(|h| h.trim().strip_prefix("mac=")).and_then(unhex::<TAG_LEN>) else {
        return false;
    };
    tags_equal(&response_mac(secret, nonce, status, body), &mac)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_verifies_once_and_only_as_sent() {
        let s = RackSecret::generate();
        let guard = ReplayGuard::default();
        let now = 1_000_000_000;
        let (h, nonce) = sign_request(&s, "POST", "/v1/policy", b"{\"policy\":\"pack\"}", now);
        let ok = verify_request(&s, &guard, now + 5, "POST", "/v1/policy", b"{\"policy\":\"pack\"}", Some(&h));
        assert_eq!(ok, Ok(nonce));
        let again = verify_request(&s, &guard, now + 6, "POST", "/v1/policy", b"{\"policy\":\"pack\"}", Some(&h));
        assert_eq!(again, Err(AuthError::Replayed));
        let (h, _) = sign_request(&s, "POST", "/v1/policy", b"{\"policy\":\"pack\"}", now);
        for (m, u, b) in [
            ("PUT", "/v1/policy", &b"{\"policy\":\"pack\"}"[..]),
            ("POST", "/v1/x", b"{}"),
            ("POST", "/v1/policy", b"{}"),
        ] {
            assert_eq!(verify_request(&s, &guard, now, m, u, b, Some(&h)), Err(AuthError::BadMac));
        }
        let other = RackSecret::generate();
        assert_eq!(
            verify_request(&other, &guard, now, "POST", "/v1/policy", b"{\"policy\":\"pack\"}", Some(&h)),
            Err(AuthError::BadMac)
        );
    }

    #[test]
    fn stale_missing_and_garbage_headers_are_refused() {
        let s = RackSecret::generate();
        let guard = ReplayGuard::default();
        let now = 10 * WINDOW_MS;
        let (h, _) = sign_request(&s, "GET", "/v1/status", b"", now - WINDOW_MS - 1);
        assert!(matches!(
            verify_request(&s, &guard, now, "GET", "/v1/status", b"", Some(&h)),
            Err(AuthError::Stale { .. })
        ));
        let (h, _) = sign_request(&s, "GET", "/v1/status", b"", now + WINDOW_MS + 1);
        assert!(matches!(
            verify_request(&s, &guard, now, "GET", "/v1/status", b"", Some(&h)),
            Err(AuthError::Stale { .. })
        ));
        assert_eq!(verify_request(&s, &guard, now, "GET", "/", b"", None), Err(AuthError::Missing));
        for bad in [
            "Basic abc",
            "Krak-HMAC",
            "Krak-HMAC ts=1",
            "Krak-HMAC ts=x,nonce=00,mac=00",
            "Krak-HMAC a=b",
            "Krak-HMAC ts=1,nonce=é",
        ] {
            assert!(matches!(parse_header(bad), Err(AuthError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn answers_are_bound_to_the_request() {
        let s = RackSecret::generate();
        let n1 = [1; NONCE_LEN];
        let h = sign_response(&s, &n1, 200, b"{}");
        assert!(verify_response(&s, &n1, 200, b"{}", Some(&h)));
        assert!(!verify_response(&s, &[2; NONCE_LEN], 200, b"{}", Some(&h)), "another request's answer");
        assert!(!verify_response(&s, &n1, 500, b"{}", Some(&h)));
        assert!(!verify_response(&s, &n1, 200, b"{ }", Some(&h)));
        assert!(!verify_response(&RackSecret::generate(), &n1, 200, b"{}", Some(&h)));
        assert!(!verify_response(&s, &n1, 200, b"{}", None));
    }

    #[test]
    fn the_replay_cache_forgets_after_the_window_and_is_bounded() {
        let g = ReplayGuard::default();
        g.admit(0, [1; NONCE_LEN]).unwrap();
        assert_eq!(g.admit(2 * WINDOW_MS, [1; NONCE_LEN]), Err(AuthError::Replayed));
        g.admit(2 * WINDOW_MS + 1, [1; NONCE_LEN]).unwrap();
        for i in 0..(MAX_NONCES - 1) as u64 {
            let mut n = [0u8; NONCE_LEN];
            n[..8].copy_from_slice(&(i + 10).to_le_bytes());
            g.admit(3 * WINDOW_MS, n).unwrap();
        }
        assert_eq!(g.admit(3 * WINDOW_MS, [9; NONCE_LEN]), Err(AuthError::Busy));
        g.admit(6 * WINDOW_MS, [9; NONCE_LEN]).unwrap();
    }
}

#[cfg(test)]
mod random_headers {
    use super::*;

    #[test]
    fn random_and_mutated_headers_never_panic_or_verify() {
        // A stable stand-in for the `controller_request` fuzz target.
        let s = RackSecret::generate();
        let guard = ReplayGuard::default();
        let (valid, _) = sign_request(&s, "POST", "/v1/servers", b"{}", 5_000_000);
        let alphabet = b"Krak-HMAC ts=nonce,mac=0123456789abcdefxyz\xc3\xa9";
        let mut x = 0x1234_5678_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let mut bytes = if i % 2 == 0 { valid.clone().into_bytes() } else { Vec::new() };
            for _ in 0..1 + next() % 6 {
                let at = if bytes.is_empty() { 0 } else { (next() as usize) % bytes.len() };
                let c = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 if !bytes.is_empty() => bytes[at] = c,
                    1 if !bytes.is_empty() => {
                        bytes.remove(at);
                    }
                    _ => bytes.insert(at, c),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            // A variant that parses to the same fields (e.g. spacing) is the same request.
            if parse_header(&text) != parse_header(&valid) {
                let got = verify_request(&s, &guard, 5_000_000, "POST", "/v1/servers", b"{}", Some(&text));
                assert!(got.is_err(), "{text}");
            }
        }
    }
}
