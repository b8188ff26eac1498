//! Authentication of the HTTP API with the rack secret (`docs/api.md`, "Authentication").
//!
//! A request carries `Authorization: Krak-HMAC ts=MS,boot=HEX16,nonce=HEX32,mac=HEX64`, where
//! `mac` is HMAC-SHA256 under the rack secret of the method, the URL (path and query, as
//! sent), the body, the timestamp (Unix ms), the boot id and the nonce. The controller
//! refuses (401) a request without it, with a wrong MAC, a timestamp more than
//! [`WINDOW_MS`] away from its clock, or a nonce it has already seen within the window (a
//! replay). The boot id names one run of one controller (drawn at random when it starts
//! serving): a request made for another run (0 when the client knows none yet) is not
//! served but refused with a signed 401 that names the current one ([`boot_refusal`]), and
//! the client asks again with it. So a request captured before a restart or a failover,
//! whose nonce the new run never saw, is never served again. Its answer carries
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
/// The boot id a client sends before it knows the controller's (never a controller's).
pub const UNKNOWN_BOOT: u64 = 0;

const REQUEST_LABEL: &str = "krak/3 http request";
const RESPONSE_LABEL: &str = "krak/3 http response";

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
    /// The run of the controller the request was made for.
    pub boot: u64,
    pub nonce: [u8; NONCE_LEN],
    pub mac: [u8; TAG_LEN],
}

pub fn request_mac(
    secret: &RackSecret,
    method: &str,
    url: &str,
    body: &[u8],
    ts_ms: u64,
    boot: u64,
    nonce: &[u8; NONCE_LEN],
) -> [u8; TAG_LEN] {
    let fields: [&[u8]; 6] =
        [method.as_bytes(), url.as_bytes(), body, &ts_ms.to_le_bytes(), &boot.to_le_bytes(), nonce];
    secret.tag(REQUEST_LABEL, &fields)
}

pub fn response_mac(secret: &RackSecret, nonce: &[u8; NONCE_LEN], status: u16, body: &[u8]) -> [u8; TAG_LEN] {
    secret.tag(RESPONSE_LABEL, &[nonce, &status.to_le_bytes(), body])
}

/// The `Authorization` header value for a request made for controller run `boot`, with a
/// fresh nonce (returned too, to check the answer with).
pub fn sign_request(
    secret: &RackSecret,
    method: &str,
    url: &str,
    body: &[u8],
    ts_ms: u64,
    boot: u64,
) -> (String, [u8; NONCE_LEN]) {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let mac = request_mac(secret, method, url, body, ts_ms, boot, &nonce);
    (format!("{SCHEME} ts={ts_ms},boot={boot:016x},nonce={},mac={}", hex(&nonce), hex(&mac)), nonce)
}

/// Parses an `Authorization` header value; never panics.
pub fn parse_header(value: &str) -> Result<RequestAuth, AuthError> {
    let rest = value.trim().strip_prefix(SCHEME).ok_or(AuthError::Malformed("not the Krak-HMAC scheme"))?;
    let (mut ts, mut boot, mut nonce, mut mac) = (None, None, None, None);
    for field in rest.trim().split(',') {
        let (k, v) = field.trim().split_once('=').ok_or(AuthError::Malformed("field without '='"))?;
        match k {
            "ts" => ts = Some(v.parse::<u64>().map_err(|_| AuthError::Malformed("ts is not a number"))?),
            "boot" => {
                boot = Some(u64::from_be_bytes(unhex::<8>(v).ok_or(AuthError::Malformed("boot is not 16 hex digits"))?))
            }
            "nonce" => nonce = Some(unhex::<NONCE_LEN>(v).ok_or(AuthError::Malformed("nonce is not 32 hex digits"))?),
            "mac" => mac = Some(unhex::<TAG_LEN>(v).ok_or(AuthError::Malformed("mac is not 64 hex digits"))?),
            _ => return Err(AuthError::Malformed("unknown field")),
        }
    }
    match (ts, boot, nonce, mac) {
        (Some(ts_ms), Some(boot), Some(nonce), Some(mac)) => Ok(RequestAuth { ts_ms, boot, nonce, mac }),
        _ => Err(AuthError::Malformed("ts, boot, nonce and mac are all required")),
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

/// The body of the signed 401 that refuses a request made for another run of the controller
/// than `boot`, the current one: `{"error": ..., "boot": "HEX16"}`.
pub fn boot_refusal(boot: u64) -> serde_json::Value {
    serde_json::json!({
        "error": "request made for another run of the controller (it restarted, or another took over); \
                  ask again for this one",
        "boot": format!("{boot:016x}"),
    })
}

/// The boot id a [`boot_refusal`] body names (`None` for any other body).
pub fn boot_of_refusal(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Refusal {
        boot: String,
    }
    let refusal: Refusal = serde_json::from_slice(body).ok()?;
    let boot = u64::from_be_bytes(unhex::<8>(&refusal.boot)?);
    (boot != UNKNOWN_BOOT).then_some(boot)
}

/// A controller run's boot id: random, never [`UNKNOWN_BOOT`].
pub fn new_boot() -> u64 {
    loop {
        let boot: u64 = rand::random();
        if boot != UNKNOWN_BOOT {
            return boot;
        }
    }
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

    #[test]
    fn a_boot_refusal_names_the_boot_and_the_header_carries_it() {
        let boot = new_boot();
        let body = serde_json::to_vec(&boot_refusal(boot)).unwrap();
        assert_eq!(boot_of_refusal(&body), Some(boot));
        assert_eq!(boot_of_refusal(br#"{"error":"x"}"#), None);
        assert_eq!(boot_of_refusal(br#"{"boot":"0000000000000000"}"#), None, "never the unknown boot");
        let s = RackSecret::generate();
        let (h, nonce) = sign_request(&s, "GET", "/v1/status", b"", 7, boot);
        let auth = parse_header(&h).unwrap();
        assert_eq!((auth.ts_ms, auth.boot, auth.nonce), (7, boot, nonce));
        assert_eq!(auth.mac, request_mac(&s, "GET", "/v1/status", b"", 7, boot, &nonce));
        assert_ne!(auth.mac, request_mac(&s, "GET", "/v1/status", b"", 7, boot ^ 1, &nonce), "the boot is signed");
    }
}
