//! The API with a rack secret: unsigned, wrong-key, stale, replayed and altered requests are
//! refused with 401 and change nothing; signed ones work and their answers are signed; a
//! client with the secret refuses an answer from a controller without it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use common::memstore::MemStore;
use krak_api::messages::{PolicyBody, StatusReply};
use krak_api::signing::{boot_of_refusal, now_ms, sign_request, verify_response, UNKNOWN_BOOT, WINDOW_MS};
use krak_api::{ApiError, Client};
use krak_auth::RackSecret;
use krak_controller::{Controller, ControllerConfig, ControllerHandle};
use krak_meta::MetaStore;

fn start(secret: Option<RackSecret>) -> ControllerHandle {
    let mut config = ControllerConfig::new("127.0.0.1:0".parse().unwrap());
    config.secret = secret;
    Controller::start(config, Arc::new(MemStore::default()) as Arc<dyn MetaStore>).unwrap()
}

/// Sends one request by hand: (status, body, X-Krak-Auth).
fn send(
    url: &str,
    method: &str,
    path: &str,
    body: &[u8],
    authorization: Option<&str>,
) -> (u16, Vec<u8>, Option<String>) {
    let host = url.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(host).unwrap();
    let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    krak_controller::http::split_answer(&answer).expect("a whole answer")
}

/// The boot id of the controller run at `url`, as a client learns it: a request signed for
/// no run in particular is refused, signed, with the current run's id.
fn boot_of(url: &str, secret: &RackSecret) -> u64 {
    let (h, nonce) = sign_request(secret, "GET", "/v1/policy", b"", now_ms(), UNKNOWN_BOOT);
    let (status, body, auth) = send(url, "GET", "/v1/policy", b"", Some(&h));
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert!(verify_response(secret, &nonce, status, &body, auth.as_deref()), "the refusal is signed");
    boot_of_refusal(&body).expect("the refusal names the run")
}

fn policy(c: &Client) -> String {
    let p: PolicyBody = c.call::<(), _>("GET", "/v1/policy", None).unwrap();
    p.name
}

#[test]
fn only_signed_fresh_unreplayed_requests_are_served() {
    let secret = RackSecret::generate();
    let handle = start(Some(secret));
    let url = handle.url();
    let good = Client::new(&url).unwrap().with_secret(Some(secret));
    assert_eq!(policy(&good), "spread");
    let body = br#"{"name":"pack"}"#;
    let boot = boot_of(&url, &secret);

    // Unsigned, wrong key, stale (either way), altered body: 401, nothing changes.
    let (status, _, _) = send(&url, "PUT", "/v1/policy", body, None);
    assert_eq!(status, 401);
    let (h, _) = sign_request(&RackSecret::generate(), "PUT", "/v1/policy", body, now_ms(), boot);
    assert_eq!(send(&url, "PUT", "/v1/policy", body, Some(&h)).0, 401);
    for ts in [now_ms() - WINDOW_MS - 5_000, now_ms() + WINDOW_MS + 5_000] {
        let (h, _) = sign_request(&secret, "PUT", "/v1/policy", body, ts, boot);
        let (status, answer, _) = send(&url, "PUT", "/v1/policy", body, Some(&h));
        assert_eq!(status, 401);
        assert!(String::from_utf8_lossy(&answer).contains("clock"), "{}", String::from_utf8_lossy(&answer));
    }
    let (h, _) = sign_request(&secret, "PUT", "/v1/policy", body, now_ms(), boot);
    assert_eq!(send(&url, "PUT", "/v1/policy", br#"{"name":"domain-spread"}"#, Some(&h)).0, 401);
    assert_eq!(send(&url, "PUT", "/v1/policy", body, Some("Krak-HMAC garbage")).0, 401);
    let wrong = Client::new(&url).unwrap().with_secret(Some(RackSecret::generate()));
    assert!(matches!(
        wrong.call::<(), PolicyBody>("GET", "/v1/policy", None),
        Err(ApiError::Status { status: 401, .. })
    ));
    let open = Client::new(&url).unwrap();
    assert!(matches!(
        open.call::<(), StatusReply>("GET", "/v1/status", None),
        Err(ApiError::Status { status: 401, .. })
    ));
    assert_eq!(policy(&good), "spread", "no refused request changed anything");

    // Signed: served, and the answer is signed for this request. Replayed: refused.
    let (h, nonce) = sign_request(&secret, "PUT", "/v1/policy", body, now_ms(), boot);
    let (status, answer, auth) = send(&url, "PUT", "/v1/policy", body, Some(&h));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert!(verify_response(&secret, &nonce, status, &answer, auth.as_deref()), "the answer is signed");
    assert_eq!(policy(&good), "pack");
    good.call::<_, PolicyBody>("PUT", "/v1/policy", Some(&PolicyBody { name: "spread".into(), available: vec![] }))
        .unwrap();
    let (status, answer, _) = send(&url, "PUT", "/v1/policy", body, Some(&h));
    assert_eq!(status, 401);
    assert!(String::from_utf8_lossy(&answer).contains("replayed"));
    assert_eq!(policy(&good), "spread", "the replay changed nothing");

    // /metrics stays open for scrapers.
    let (status, answer, _) = send(&url, "GET", "/metrics", b"", None);
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&answer).contains("krak_"));
    handle.shutdown();
}

#[test]
fn a_client_with_the_secret_refuses_a_controller_without_it() {
    let handle = start(None);
    let client = Client::new(&handle.url()).unwrap().with_secret(Some(RackSecret::generate()));
    let err = client.call::<(), PolicyBody>("GET", "/v1/policy", None).unwrap_err();
    assert!(matches!(err, ApiError::Auth { .. }), "{err}");
    handle.shutdown();
}

#[test]
fn a_request_captured_before_a_restart_is_not_served_after_it() {
    let secret = RackSecret::generate();
    let store = Arc::new(MemStore::default());
    let start_on = |store: &Arc<MemStore>| {
        let mut config = ControllerConfig::new("127.0.0.1:0".parse().unwrap());
        config.secret = Some(secret);
        Controller::start(config, store.clone() as Arc<dyn MetaStore>).unwrap()
    };
    let first = start_on(&store);
    let url = first.url();
    let body = br#"{"name":"pack"}"#;
    // A request an observer captures: served once, then set back by its owner.
    let first_boot = boot_of(&url, &secret);
    let (captured, _) = sign_request(&secret, "PUT", "/v1/policy", body, now_ms(), first_boot);
    assert_eq!(send(&url, "PUT", "/v1/policy", body, Some(&captured)).0, 200);
    let owner = Client::new(&url).unwrap().with_secret(Some(secret));
    owner
        .call::<_, PolicyBody>("PUT", "/v1/policy", Some(&PolicyBody { name: "spread".into(), available: vec![] }))
        .unwrap();
    first.shutdown();

    // The controller restarts on the same store, its replay cache empty: the capture, well
    // within its timestamp's window, is refused unserved, naming the new run.
    let second = start_on(&store);
    let url = second.url();
    let (status, answer, _) = send(&url, "PUT", "/v1/policy", body, Some(&captured));
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&answer));
    let new_boot = boot_of_refusal(&answer).expect("names the new run");
    assert_ne!(new_boot, first_boot, "every run draws its own");
    // A client that knows no run (or an old one) learns the new one and is served.
    let owner = Client::new(&url).unwrap().with_secret(Some(secret));
    assert_eq!(policy(&owner), "spread", "the replay changed nothing");
    second.shutdown();
}
