//! Authentication of the HTTP API with the rack secret (`docs/api.md`, "Authentication").
//!
//! A request carries `Authorization: Krak-HMAC ts=MS,nonce=HEX32,mac=HEX64`, where `mac` is
//! HMAC-SHA256 under the rack secret of the method, the URL (path and query, as sent), the
//! body, the timestamp (Unix ms) and the nonce. The controller refuses (401) a request
//! without it, with a wrong MAC, a timestamp more than [`WINDOW_MS`] away from its clock,
//! or a nonce it has already seen within the window (a replay). Its answer carries
//! `X-Krak-Auth: mac=HEX64` over the request's nonce, the status and the body, so the
//! client knows the answer came from a controller with the secret and for this request.
//! No I/O here. The controller keeps the replay cache and checks requests
//! (`krak-controller`'s `auth`); both ends sign and check MACs with what is here.

use krak_auth::{tags_equal, RackSecret, TAG_LEN};

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

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
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
}
