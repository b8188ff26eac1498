//! The client against fake servers: malformed answers, silence, failover. No etcd needed.

use super::*;
use std::io::{Read, Write};
use std::net::TcpListener;

/// A server on a free port answering every connection with `answer` (after reading the
/// request), or with silence when `answer` is `None`. Runs until the test process ends.
fn fake(answer: Option<Vec<u8>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 65536];
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = s.read(&mut buf);
            match answer {
                Some(ref a) => {
                    let _ = s.write_all(a);
                }
                None => held.push(s), // never answer, keep the connection open
            }
        }
    });
    url
}

/// A URL on which nothing listens.
fn refused() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

fn store(urls: &str) -> EtcdStore {
    EtcdStore::connect_with(
        urls,
        EtcdOptions { request_timeout: Duration::from_millis(700), connect_timeout: Duration::from_millis(200) },
    )
    .unwrap()
}

/// A response with a correct Content-Length.
fn resp(status: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// A chunked response (two chunks) with a trailer, as etcd's gateway sends for errors.
fn chunked(status: &str, body: &str) -> Vec<u8> {
    let (a, b) = body.split_at(body.len() / 2);
    format!(
        "HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\nTrailer: Grpc-Trailer-Content-Type\r\n\r\n\
         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nGrpc-Trailer-Content-Type: application/grpc\r\n\r\n",
        a.len(),
        b.len()
    )
    .into_bytes()
}

fn put_ok() -> Vec<u8> {
    resp("200 OK", r#"{"header":{"revision":"7"},"x":"y"}"#)
}

#[test]
fn answers_of_a_real_etcd_shape_are_understood() {
    let s = store(&fake(Some(put_ok())));
    assert_eq!(s.put("/k", b"v").unwrap(), 7);
    let s = store(&fake(Some(chunked(
        "200 OK",
        r#"{"result":{"header":{"revision":"3"},"ID":"12","TTL":"5"}}
"#,
    ))));
    s.keep_alive(LeaseId(12)).unwrap();
    let s = store(&fake(Some(chunked(
        "200 OK",
        r#"{"result":{"header":{"revision":"3"},"ID":"12"}}
"#,
    ))));
    assert!(matches!(s.keep_alive(LeaseId(12)), Err(MetaError::LeaseGone(12))));
    let lease_not_found = r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
    let s = store(&fake(Some(chunked("404 Not Found", lease_not_found))));
    assert!(matches!(s.revoke(LeaseId(9)), Err(MetaError::LeaseGone(9))));
    let too_large =
        r#"{"error":"etcdserver: request is too large","message":"etcdserver: request is too large","code":3}"#;
    let s = store(&fake(Some(resp("400 Bad Request", too_large))));
    assert!(matches!(s.put("/k", b"v"), Err(MetaError::Invalid { .. })));
    let s = store(&fake(Some(resp(
        "200 OK",
        r#"{"header":{"revision":"9"},"kvs":[{"key":"L2s=","create_revision":"2","mod_revision":"4","version":"1"}],"count":"1"}"#,
    ))));
    let kv = s.get("/k").unwrap().unwrap();
    assert_eq!((kv.key.as_str(), kv.value.len(), kv.mod_revision), ("/k", 0, 4), "an omitted value is empty");
    let s = store(&fake(Some(resp("200 OK", r#"{"header":{"revision":"9"}}"#))));
    assert!(!s.txn(&[], &[]).unwrap(), "an omitted succeeded is false");
    assert!(!s.delete("/k").unwrap(), "an omitted deleted is 0");
}

#[test]
fn malformed_answers_are_typed_errors() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"hello there\r\n\r\n".to_vec(), "corrupt"),
        (resp("200 OK", "nope!"), "corrupt"),
        (resp("200 OK", "{}"), "corrupt"),
        (resp("200 OK", "[]"), "corrupt"),
        (resp("200 OK", r#"{"header":{"revision":"abc"}}"#), "corrupt"),
        (resp("200 OK", r#"{"header":{"revision":"1"},"kvs":7}"#), "corrupt"),
        (resp("200 OK", r#"{"header":{"revision":"1"},"kvs":[{"key":"!!","mod_revision":"1"}]}"#), "corrupt"),
        (resp("200 OK", r#"{"header":{"revision":"1"},"kvs":[{"key":"/w==","mod_revision":"1"}]}"#), "corrupt"),
        (resp("200 OK", r#"{"header":{"revision":"1"},"kvs":[{"key":"L2s="}]}"#), "corrupt"),
        (resp("200 OK", r#"{"header":{"revision":"1"},"kvs":[{"key":"L2o=","mod_revision":"1"}]}"#), "corrupt"),
        (resp("418 I'm a teapot", "not json"), "corrupt"),
        (resp("503 Service Unavailable", "busy"), "unavailable"),
        (resp("500 Internal Server Error", r#"{"error":"etcdserver: no leader","code":14}"#), "unavailable"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"header\"".to_vec(), "unavailable"),
        (Vec::new(), "unavailable"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n".to_vec(), "invalid"),
    ];
    for (answer, want) in cases {
        let shown = String::from_utf8_lossy(&answer).into_owned();
        let s = store(&fake(Some(answer)));
        let r = s.get("/k");
        let got = match &r {
            Err(MetaError::Corrupt { .. }) => "corrupt",
            Err(MetaError::Unavailable { .. }) => "unavailable",
            Err(MetaError::Invalid { .. }) => "invalid",
            _ => "other",
        };
        assert_eq!(got, want, "answer {shown:?} gave {r:?}");
    }
}

#[test]
fn silence_ends_in_unavailable_within_the_timeout() {
    let s = store(&fake(None));
    for op in ["get", "put", "txn", "grant"] {
        let t = Instant::now();
        let r = match op {
            "get" => s.get("/k").map(|_| ()),
            "put" => s.put("/k", b"v").map(|_| ()),
            "txn" => s.txn(&[], &[Op::Delete { key: "/k".into() }]).map(|_| ()),
            _ => s.grant_lease(1000).map(|_| ()),
        };
        let took = t.elapsed();
        assert!(matches!(r, Err(MetaError::Unavailable { .. })), "{op}: {r:?}");
        assert!(took < Duration::from_millis(1200), "{op} took {took:?} with a 700 ms timeout");
        if op == "put" || op == "txn" {
            assert!(format!("{r:?}").contains("may or may not"), "{op}: a write's outcome is unknown: {r:?}");
        }
    }
}

#[test]
fn failover_to_the_next_endpoint() {
    // Nothing listens on the first: writes go on to the second.
    let s = store(&format!("{},{}", refused(), fake(Some(put_ok()))));
    assert_eq!(s.put("/k", b"v").unwrap(), 7);
    // A first endpoint that drops connections after reading the request: reads move on to
    // the second; writes do not (they may have been applied).
    let s = store(&format!("{},{}", fake(Some(Vec::new())), fake(Some(put_ok()))));
    match s.put("/k", b"v") {
        Err(MetaError::Unavailable { what: m, .. }) => assert!(m.contains("may or may not"), "{m}"),
        other => panic!("a write whose connection broke must be Unavailable, got {other:?}"),
    }
    assert_eq!(s.get("/k").unwrap(), None, "a read fails over to the second endpoint");
    assert_eq!(s.put("/k", b"v").unwrap(), 7, "then sticks to the endpoint that answered");
    let all_refused = store(&format!("{},{}", refused(), refused()));
    match all_refused.get("/k") {
        Err(e @ MetaError::Unavailable { .. }) => {
            let m = e.to_string(); // the failures of every endpoint, in the message
            assert_eq!(m.matches("connect").count(), 2, "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_endpoints_and_requests_are_refused_before_sending() {
    assert!(matches!(EtcdStore::connect(""), Err(MetaError::Invalid { .. })));
    assert!(matches!(EtcdStore::connect("https://127.0.0.1:2379"), Err(MetaError::Invalid { .. })));
    let s = EtcdStore::connect("http://127.0.0.1:1,127.0.0.1:2").unwrap();
    assert_eq!(s.endpoints().len(), 2);
    assert!(matches!(s.put("", b"v"), Err(MetaError::Invalid { .. })));
    assert!(matches!(s.put("/k", &vec![0; krak_meta::MAX_VALUE_BYTES + 1]), Err(MetaError::Invalid { .. })));
    assert!(matches!(s.grant_lease(0), Err(MetaError::Invalid { .. })));
}

#[test]
fn prefix_ends() {
    assert_eq!(prefix_end(b"/a/"), b"/a0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
}
