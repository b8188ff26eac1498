//! Two `krak controller` processes on one real etcd: one leads, the other answers 503 naming
//! it; the leader SIGKILLed, the standby takes over within a few seconds, and a memory server
//! and `krak status` given both URLs follow. Needs etcd (Debian's `etcd-server`; `.ci/run`
//! installs it): without it the test fails saying so.

mod controller_common;

use std::time::{Duration, Instant};

use controller_common::*;
use krak_meta_etcd::testkit::EtcdCluster;

#[test]
fn two_controllers_on_etcd_one_leads_the_other_takes_over() {
    let etcd = EtcdCluster::start(1);
    let endpoints = etcd.endpoints();
    let common = ["--etcd", endpoints.as_str(), "--lease-ms", "1000", "--dead-after-ms", "3000"];
    let (mut leader, leader_url) = controller("127.0.0.1:0", &common);
    let (_standby, standby_url) = controller("127.0.0.1:0", &common);

    // the first leads, the second stands by and names the leader
    let st = status(&leader_url).expect("the leader serves");
    assert_eq!(st["servers"].as_array().unwrap().len(), 0);
    let err = status(&standby_url).expect_err("a standby does not serve");
    assert!(err.contains("503") && err.contains(&format!("the leader is {leader_url}")), "{err}");

    // a memory server and the CLI given both URLs find the leader
    let both = format!("{standby_url},{leader_url}");
    let (mut ms, addr) = memserver(&both, "rack1/host1", "16MiB");
    wait_for(Duration::from_secs(5), "the server registered through the leader", || {
        (server(&status(&both).ok()?, addr)?["state"] == "alive").then_some(())
    });
    assert_eq!(krak_ok(&["policy", "set", "domain-spread", "--controller", &both]).trim(), "domain-spread");
    // an observer captures a signed request the leader serves (then its owner undoes it)
    let secret = krak_auth::load_secret_file(std::path::Path::new(secret_file())).unwrap();
    let captured = signed_policy_request(&secret, &leader_url, "pack");
    assert_eq!(send_raw(&leader_url, &captured).0, 200);
    assert_eq!(krak_ok(&["policy", "set", "domain-spread", "--controller", &both]).trim(), "domain-spread");

    // the leader dies: the standby takes over with the rack as the leader left it
    leader.kill();
    let t0 = Instant::now();
    let (st, took) = wait_for(Duration::from_secs(8), "the standby to take over", || status(&standby_url).ok());
    eprintln!("standby serving {took:?} after the leader was killed");
    assert!(took < Duration::from_secs(5), "takeover took {took:?}");
    assert_eq!(st["policy"], "domain-spread", "{st:#}");
    assert!(server(&st, addr).is_some(), "the new leader knows the server: {st:#}");
    // the memory server heartbeats to the new leader
    wait_for(Duration::from_secs(5), "heartbeats to the new leader", || {
        let st = status(&standby_url).ok()?;
        let s = server(&st, addr)?;
        let fresh = s["last_heartbeat_unix_ms"].as_u64()? + 1000 > now_ms();
        (s["state"] == "alive" && fresh).then_some(())
    });
    assert!(ms.running());
    eprintln!("failover complete in {:?}", t0.elapsed());

    // the capture, replayed at the new leader (whose replay cache never saw it) well within
    // its timestamp's window, is refused unserved
    let (status, answer) = send_raw(&standby_url, &captured);
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("another run of the controller"), "{answer}");
    assert_eq!(status_policy(&standby_url), "domain-spread", "the replay changed nothing");
}

/// The rack's placement policy, as `krak status` shows it.
fn status_policy(url: &str) -> String {
    status(url).unwrap()["policy"].as_str().unwrap().to_string()
}

/// A signed `PUT /v1/policy` for the controller run at `url` (learnt as any client learns it),
/// as bytes on the wire.
fn signed_policy_request(secret: &krak_auth::RackSecret, url: &str, policy: &str) -> Vec<u8> {
    use krak_api::signing::{boot_of_refusal, now_ms, sign_request, UNKNOWN_BOOT};
    let host = url.trim_start_matches("http://");
    let request = |method: &str, path: &str, body: &str, boot: u64| {
        let (auth, _) = sign_request(secret, method, path, body.as_bytes(), now_ms(), boot);
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: {auth}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let (status, refusal) = send_raw(url, &request("GET", "/v1/policy", "", UNKNOWN_BOOT));
    assert_eq!(status, 401, "{refusal}");
    let boot = boot_of_refusal(refusal.as_bytes()).expect("the refusal names the run");
    request("PUT", "/v1/policy", &format!(r#"{{"name":"{policy}"}}"#), boot)
}

/// Sends `request` as it is: the status and the body of the answer.
fn send_raw(url: &str, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let (status, body, _) = krak_controller::http::split_answer(&answer).expect("a whole answer");
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A standby serves through the same bounded HTTP front end as a leader: a client over its
/// per-client bound is refused at once, silent connections are cut off at the request
/// timeout, and the standby then answers again.
#[test]
fn a_standby_bounds_its_connections_too() {
    use std::io::Read;
    let etcd = EtcdCluster::start(1);
    let endpoints = etcd.endpoints();
    let (_leader, leader_url) = controller("127.0.0.1:0", &["--etcd", endpoints.as_str(), "--lease-ms", "1000"]);
    let bounded = [
        "--etcd",
        endpoints.as_str(),
        "--lease-ms",
        "1000",
        "--http-max-connections-per-client",
        "2",
        "--http-timeout-ms",
        "1000",
    ];
    let (_standby, standby_url) = controller("127.0.0.1:0", &bounded);
    let err = status(&standby_url).expect_err("a standby does not serve");
    assert!(err.contains("503") && err.contains(&format!("the leader is {leader_url}")), "{err}");

    let addr = standby_url.strip_prefix("http://").unwrap();
    let read_all = |s: &mut std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let mut silent: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    let mut over = std::net::TcpStream::connect(addr).unwrap();
    let refused = read_all(&mut over);
    assert!(refused.starts_with("HTTP/1.1 503 ") && refused.contains("per_client"), "{refused}");
    for s in &mut silent {
        assert_eq!(read_all(s), "", "a silent connection is closed at the request timeout");
    }
    let err = status(&standby_url).expect_err("a standby does not serve");
    assert!(err.contains("503") && err.contains(&format!("the leader is {leader_url}")), "{err}");
}
