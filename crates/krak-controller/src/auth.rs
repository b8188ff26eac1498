//! The controller's side of request authentication (the scheme: `krak_api::signing`): a
//! request is checked against the rack secret and its nonce against a bounded replay cache.

use std::collections::{HashSet, VecDeque};

use krak_api::signing::{parse_header, request_mac, AuthError, MAX_NONCES, NONCE_LEN, WINDOW_MS};
use krak_auth::{tags_equal, RackSecret};
use parking_lot::Mutex;

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

/// What a request that passed its checks gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it, and sign the answer with this nonce.
    Serve([u8; NONCE_LEN]),
    /// It was made for another run of the controller (a replay from before a restart or a
    /// failover, or a client that does not know this run yet): answer with a signed
    /// `boot_refusal` (with this nonce), never serve it.
    OtherBoot([u8; NONCE_LEN]),
}

/// Checks one request against the secret, the clock and the replay cache, and (with
/// `boot`) that it was made for this run of the controller.
#[allow(clippy::too_many_arguments)]
pub fn verify_request(
    secret: &RackSecret,
    guard: &ReplayGuard,
    now_ms: u64,
    boot: Option<u64>,
    method: &str,
    url: &str,
    body: &[u8],
    header: Option<&str>,
) -> Result<Verdict, AuthError> {
    let auth = parse_header(header.ok_or(AuthError::Missing)?)?;
    let skew_ms = now_ms.abs_diff(auth.ts_ms);
    if skew_ms > WINDOW_MS {
        return Err(AuthError::Stale { skew_ms });
    }
    if !tags_equal(&request_mac(secret, method, url, body, auth.ts_ms, auth.boot, &auth.nonce), &auth.mac) {
        return Err(AuthError::BadMac);
    }
    if boot.is_some_and(|b| b != auth.boot) {
        // Not served, so it need not take room in the cache: a replay gets the same answer.
        return Ok(Verdict::OtherBoot(auth.nonce));
    }
    // Only requests with a good MAC, for this run, take room in the cache.
    guard.admit(now_ms, auth.nonce)?;
    Ok(Verdict::Serve(auth.nonce))
}

/// The boot id of the controller run in the tests.
#[cfg(test)]
const BOOT: u64 = 0x5eed;

#[cfg(test)]
mod tests {
    use super::*;
    use krak_api::signing::sign_request;

    #[test]
    fn a_signed_request_verifies_once_and_only_as_sent() {
        let s = RackSecret::generate();
        let guard = ReplayGuard::default();
        let now = 1_000_000_000;
        let (h, nonce) = sign_request(&s, "POST", "/v1/policy", b"{\"policy\":\"pack\"}", now, BOOT);
        let ok =
            verify_request(&s, &guard, now + 5, Some(BOOT), "POST", "/v1/policy", b"{\"policy\":\"pack\"}", Some(&h));
        assert_eq!(ok, Ok(Verdict::Serve(nonce)));
        let again =
            verify_request(&s, &guard, now + 6, Some(BOOT), "POST", "/v1/policy", b"{\"policy\":\"pack\"}", Some(&h));
        assert_eq!(again, Err(AuthError::Replayed));
        let (h, _) = sign_request(&s, "POST", "/v1/policy", b"{\"policy\":\"pack\"}", now, BOOT);
        for (m, u, b) in [
            ("PUT", "/v1/policy", &b"{\"policy\":\"pack\"}"[..]),
            ("POST", "/v1/x", b"{}"),
            ("POST", "/v1/policy", b"{}"),
        ] {
            assert_eq!(verify_request(&s, &guard, now, Some(BOOT), m, u, b, Some(&h)), Err(AuthError::BadMac));
        }
        let other = RackSecret::generate();
        assert_eq!(
            verify_request(&other, &guard, now, Some(BOOT), "POST", "/v1/policy", b"{\"policy\":\"pack\"}", Some(&h)),
            Err(AuthError::BadMac)
        );
    }

    #[test]
    fn a_request_for_another_run_is_refused_unserved_and_takes_no_room() {
        let s = RackSecret::generate();
        let guard = ReplayGuard::default();
        let now = 1_000_000_000;
        for boot in [BOOT + 1, krak_api::signing::UNKNOWN_BOOT] {
            let (h, nonce) = sign_request(&s, "PUT", "/v1/policy", b"{}", now, boot);
            let got = verify_request(&s, &guard, now, Some(BOOT), "PUT", "/v1/policy", b"{}", Some(&h));
            assert_eq!(got, Ok(Verdict::OtherBoot(nonce)));
            // Asked again (a replay) it is refused the same way, never served.
            let got = verify_request(&s, &guard, now, Some(BOOT), "PUT", "/v1/policy", b"{}", Some(&h));
            assert_eq!(got, Ok(Verdict::OtherBoot(nonce)));
            // A standby (no run to check) takes it, once.
            let got = verify_request(&s, &guard, now, None, "PUT", "/v1/policy", b"{}", Some(&h));
            assert_eq!(got, Ok(Verdict::Serve(nonce)));
        }
    }

    #[test]
    fn stale_missing_and_garbage_headers_are_refused() {
        let s = RackSecret::generate();
        let guard = ReplayGuard::default();
        let now = 10 * WINDOW_MS;
        let (h, _) = sign_request(&s, "GET", "/v1/status", b"", now - WINDOW_MS - 1, BOOT);
        assert!(matches!(
            verify_request(&s, &guard, now, Some(BOOT), "GET", "/v1/status", b"", Some(&h)),
            Err(AuthError::Stale { .. })
        ));
        let (h, _) = sign_request(&s, "GET", "/v1/status", b"", now + WINDOW_MS + 1, BOOT);
        assert!(matches!(
            verify_request(&s, &guard, now, Some(BOOT), "GET", "/v1/status", b"", Some(&h)),
            Err(AuthError::Stale { .. })
        ));
        assert_eq!(verify_request(&s, &guard, now, Some(BOOT), "GET", "/", b"", None), Err(AuthError::Missing));
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
    use krak_api::signing::sign_request;

    #[test]
    fn random_and_mutated_headers_never_panic_or_verify() {
        // A stable stand-in for the `controller_request` fuzz target.
        let s = RackSecret::generate();
        let guard = ReplayGuard::default();
        let (valid, _) = sign_request(&s, "POST", "/v1/servers", b"{}", 5_000_000, BOOT);
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
                let got = verify_request(&s, &guard, 5_000_000, Some(BOOT), "POST", "/v1/servers", b"{}", Some(&text));
                assert!(got.is_err(), "{text}");
            }
        }
    }
}
