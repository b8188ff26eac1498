//! The bounded HTTP front end against a real controller on loopback: slow and silent clients
//! are cut off at the request timeout while others are served, the per-client bound refuses
//! at once with 503 and a full front end makes room by closing its longest idle connection
//! (so a flood of strangers keeps no heartbeat out), an oversize body gets 413 and a close, and a
//! long-poll still waits for the controller.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::memstore::MemStore;
use krak_api::messages::{CreateRegionRequest, MapReply, RegionReply, StatusReply};
use krak_api::Client;
use krak_controller::{Controller, ControllerConfig, ControllerHandle};
use krak_meta::MetaStore;

/// Far above any honest wait on a slow shared host.
const GENEROUS: Duration = Duration::from_secs(60);

fn start(tune: impl FnOnce(&mut ControllerConfig)) -> (ControllerHandle, Client) {
    let mut config = ControllerConfig::new("127.0.0.1:0".parse().unwrap());
    tune(&mut config);
    let handle = Controller::start(config, Arc::new(MemStore::default()) as Arc<dyn MetaStore>).unwrap();
    let mut client = Client::new(&handle.url()).unwrap();
    client.timeout = GENEROUS;
    (handle, client)
}

fn check_status(c: &Client) {
    check_status_with(c, 0);
}

fn check_status_with(c: &Client, regions: usize) {
    let s: StatusReply = c.call::<(), _>("GET", "/v1/status", None).unwrap();
    assert_eq!(s.policy, "spread");
    assert!(s.servers.is_empty());
    assert_eq!(s.regions.len(), regions);
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GENEROUS)).unwrap();
    s
}

/// Reads until the server closes: what it answered.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    // a reset after the answer is a close too
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn metric(c: &Client, line_start: &str) -> u64 {
    let (status, body) = c.raw("GET", "/metrics", None, Duration::ZERO).unwrap();
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let line = text.lines().find(|l| l.starts_with(line_start)).unwrap_or_else(|| panic!("no {line_start} in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A connection from `source` (another loopback address than 127.0.0.1) to `to`.
fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let SocketAddr::V4(to) = to else { panic!("IPv4 only") };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket creation; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a socket we just created and own exclusively.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (from, dest) = (sockaddr(source, 0), sockaddr(*to.ip(), to.port()));
    // SAFETY: `from` is a valid sockaddr_in of `len` bytes that outlives the call.
    let rc = unsafe { libc::bind(fd, std::ptr::from_ref(&from).cast(), len) };
    assert_eq!(rc, 0, "bind {source}: {}", std::io::Error::last_os_error());
    // SAFETY: as above for `dest`; the socket is blocking, so connect completes or fails.
    let rc = unsafe { libc::connect(fd, std::ptr::from_ref(&dest).cast(), len) };
    assert_eq!(rc, 0, "connect {to}: {}", std::io::Error::last_os_error());
    assert_eq!(stream.local_addr().unwrap().ip(), source);
    stream.set_read_timeout(Some(GENEROUS)).unwrap();
    stream
}

/// A status request by hand over `s`, checking the answer's contents.
fn status_over(s: &mut TcpStream) -> String {
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let answer = read_to_close(s);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let s: StatusReply = serde_json::from_str(body).unwrap();
    assert_eq!(s.policy, "spread");
    answer
}

#[test]
fn silent_and_slow_clients_are_cut_off_while_others_are_served() {
    let timeout = Duration::from_millis(4_000);
    let (ctl, c) = start(|c| {
        c.http_request_timeout_ms = timeout.as_millis() as u64;
        c.http_max_connections_per_client = 64;
    });
    // more of them than there are workers (8): each used to hold one for as long as it liked
    let opened = Instant::now();
    let silent: Vec<_> = (0..10).map(|_| connect(ctl.addr())).collect();
    let mut halves: Vec<_> = (0..10)
        .map(|_| {
            let mut s = connect(ctl.addr());
            s.write_all(b"POST /v1/servers HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"addr\":").unwrap();
            s
        })
        .collect();
    let mut head_only = connect(ctl.addr());
    head_only.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n").unwrap();
    for _ in 0..5 {
        check_status(&c);
    }
    if opened.elapsed() < timeout {
        // served while every slow client still held its connection
        assert_eq!(metric(&c, "krak_http_connections_timed_out_total{phase=\"request\"}"), 0);
        assert!(metric(&c, "krak_http_connections_open") >= 21);
    }
    for mut s in silent {
        assert_eq!(read_to_close(&mut s), "", "a silent client is closed without an answer");
    }
    for s in halves.iter_mut().chain([&mut head_only]) {
        let answer = read_to_close(s);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    }
    assert!(opened.elapsed() >= timeout, "cut off before the timeout");
    check_status(&c);
    assert!(metric(&c, "krak_http_connections_timed_out_total{phase=\"request\"}") >= 21);
    ctl.shutdown();
}

#[test]
fn a_trickling_client_is_cut_off_at_the_request_deadline() {
    // each byte comes well within the timeout: only a deadline for the whole request ends it
    let timeout = Duration::from_millis(1_000);
    let (ctl, c) = start(|c| c.http_request_timeout_ms = timeout.as_millis() as u64);
    let mut s = connect(ctl.addr());
    let mut writer = s.try_clone().unwrap();
    let opened = Instant::now();
    let trickle = std::thread::spawn(move || {
        let request = b"POST /v1/servers HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n";
        let mut sent = 0usize;
        for &b in request.iter().chain(std::iter::repeat(&b' ')) {
            if writer.write_all(&[b]).is_err() || sent > 10_000 {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        sent
    });
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(opened.elapsed() >= timeout);
    drop(s);
    let sent = trickle.join().unwrap();
    assert!(sent < 10_000, "the server kept reading a trickle");
    check_status(&c);
    ctl.shutdown();
}

#[test]
fn a_kept_alive_connection_is_served_then_closed_when_idle() {
    let (ctl, c) = start(|c| c.http_idle_timeout_ms = 500);
    let mut s = connect(ctl.addr());
    for _ in 0..3 {
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        // one answer: head, then Content-Length bytes
        let body = loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed before the answer");
            answer.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                assert!(head.starts_with("HTTP/1.1 200 OK") && head.contains("Connection: keep-alive"), "{head}");
                let len: usize =
                    head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).unwrap().parse().unwrap();
                if body.len() >= len {
                    break body.to_string();
                }
            }
        };
        let status: StatusReply = serde_json::from_str(&body).unwrap();
        assert_eq!(status.policy, "spread");
    }
    assert_eq!(read_to_close(&mut s), "", "an idle kept-alive connection is closed");
    assert!(metric(&c, "krak_http_connections_timed_out_total{phase=\"idle\"}") >= 1);
    ctl.shutdown();
}

#[test]
fn the_per_client_bound_refuses_one_client_and_serves_another() {
    let (ctl, c) = start(|c| {
        c.http_max_connections_per_client = 4;
        c.http_request_timeout_ms = 60_000;
    });
    let held: Vec<_> = (0..4).map(|_| connect(ctl.addr())).collect();
    let mut refused = connect(ctl.addr());
    let answer = read_to_close(&mut refused);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("per_client"), "{answer}");
    // another address is served meanwhile, and its answers are right
    for _ in 0..3 {
        status_over(&mut connect_from(Ipv4Addr::new(127, 0, 0, 2), ctl.addr()));
    }
    drop(held);
    // the places free up once the server sees the closes
    let deadline = Instant::now() + GENEROUS;
    loop {
        match c.call::<(), StatusReply>("GET", "/v1/status", None) {
            Ok(s) => break assert_eq!(s.policy, "spread"),
            Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(&c, "krak_http_connections_refused_total{reason=\"per_client\"}") >= 1);
    ctl.shutdown();
}

/// The whole answer to `GET /metrics` from a client at `source`.
fn metrics_from(source: Ipv4Addr, to: SocketAddr) -> String {
    let mut s = connect_from(source, to);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    read_to_close(&mut s)
}

/// `metric` from a client at `source`, past the per-client bound of the others.
fn metric_from(source: Ipv4Addr, to: SocketAddr, line_start: &str) -> u64 {
    let answer = metrics_from(source, to);
    let line =
        answer.lines().find(|l| l.starts_with(line_start)).unwrap_or_else(|| panic!("no {line_start} in {answer}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_newcomer_on_a_full_front_end_takes_the_place_of_the_longest_idle() {
    let (ctl, _) = start(|c| {
        c.http_max_connections = 6;
        c.http_max_connections_per_client = 4;
        c.http_request_timeout_ms = 60_000;
    });
    let mut held: Vec<_> = (0..4).map(|_| connect(ctl.addr())).collect();
    held.extend((0..2).map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 3), ctl.addr())));
    // Every place is taken by a connection that sent nothing: a fresh address is served,
    // and the one that waited longest is closed to make room.
    std::thread::sleep(Duration::from_millis(100));
    let answer = metrics_from(Ipv4Addr::new(127, 0, 0, 4), ctl.addr());
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("krak_http_connections_evicted_total 1"), "{answer}");
    assert_eq!(read_to_close(&mut held[0]), "", "the longest idle connection was closed without an answer");
    // Once it is gone, the bound holds as before: six open.
    let open = || metric_from(Ipv4Addr::new(127, 0, 0, 5), ctl.addr(), "krak_http_connections_open");
    let deadline = Instant::now() + GENEROUS;
    while open() > 6 {
        assert!(Instant::now() < deadline, "the closed connection never left");
        std::thread::sleep(Duration::from_millis(20));
    }
    ctl.shutdown();
}

/// Issue 15, finding 1: strangers without the secret hold every connection slot they can
/// get, from many addresses, for longer than a server's dead timeout, while a memory server
/// heartbeats: it is never declared dead, and a client is answered within a second.
#[test]
fn a_flood_of_idle_connections_keeps_no_heartbeat_out() {
    use krak_api::messages::{HeartbeatRequest, RegisterReply, RegisterRequest};
    let (ctl, c) = start(|c| {
        c.http_max_connections = 16;
        c.http_max_connections_per_client = 8;
        c.suspect_after_ms = 1_000;
        c.dead_after_ms = 2_000;
    });
    let url = ctl.url();
    // The clients memory servers, pagers and the CLI use: a busy front end is retried
    // (after 100 ms, then 400 ms) while nothing was served.
    let mut server = krak_api::ControllerClient::new(&url, Duration::from_secs(1)).unwrap();
    let mut cli = krak_api::ControllerClient::new(&url, Duration::from_secs(1)).unwrap();
    let register = RegisterRequest {
        addr: "127.0.0.1:7070".into(),
        capacity_bytes: 1 << 30,
        slab_size_bytes: 1 << 20,
        domain: "rack1/host1".into(),
        headroom_bytes: 0,
    };
    let id = server.call::<_, RegisterReply>("POST", "/v1/servers", Some(&register)).unwrap().id;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beats = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let path = format!("/v1/servers/{id}/heartbeat");
            let mut failed = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let beat = HeartbeatRequest { lent_bytes: 0, free_bytes: 1 << 30, slabs: 0, host_free_bytes: None };
                if server.call::<_, serde_json::Value>("POST", &path, Some(&beat)).is_err() {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            failed
        })
    };
    // The flood: 4 idle connections from each of 20 addresses, held (and reopened when the
    // controller closes them) for twice the dead timeout.
    let flood_until = Instant::now() + Duration::from_secs(4);
    let mut flood: Vec<TcpStream> = Vec::new();
    let mut worst = Duration::ZERO;
    while Instant::now() < flood_until {
        flood.retain(|s| {
            let mut b = [0u8; 1];
            s.set_nonblocking(true).unwrap();
            !matches!((&*s).read(&mut b), Ok(0))
        });
        for i in 0..80u32 {
            if flood.len() >= 80 {
                break;
            }
            flood.push(connect_from(Ipv4Addr::new(127, 0, 1, 10 + (i % 20) as u8), ctl.addr()));
        }
        let t0 = Instant::now();
        let st: StatusReply = cli.call::<(), _>("GET", "/v1/status", None).expect("a client is served under the flood");
        worst = worst.max(t0.elapsed());
        let state = &st.servers[0].record.state;
        assert_eq!(*state, krak_api::ServerState::Alive, "declared {state:?} under a flood of strangers");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(flood);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let failed = beats.join().unwrap();
    assert!(worst < Duration::from_secs(1), "a status call took {worst:?} under the flood");
    assert!(metric(&c, "krak_http_connections_evicted_total") > 16, "the flood churned itself");
    eprintln!("under the flood: slowest status {worst:?}, {failed} heartbeats failed");
    ctl.shutdown();
}

#[test]
fn an_oversize_body_gets_413_and_a_close() {
    let (ctl, c) = start(|c| c.max_body_bytes = 4096);
    let mut s = connect(ctl.addr());
    s.write_all(b"POST /v1/servers HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n").unwrap();
    s.write_all(&[b'x'; 8192]).unwrap();
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    let mut s = connect(ctl.addr());
    s.write_all(b"POST /v1/servers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    assert!(read_to_close(&mut s).starts_with("HTTP/1.1 501 "));
    check_status(&c);
    assert!(metric(&c, "krak_http_malformed_total") >= 2);
    ctl.shutdown();
}

#[test]
fn a_long_poll_waits_for_the_controller_and_answers() {
    // a request timeout far below the long-poll's wait: the wait is not the client's
    let (ctl, c) = start(|c| {
        c.http_request_timeout_ms = 1_000;
        c.long_poll_max_ms = 20_000;
    });
    let create = CreateRegionRequest {
        owner: "test/lp".into(),
        size_bytes: 4 << 20,
        local_budget_bytes: 0,
        chunk_bytes: Some(1 << 20),
        stripe_width: None,
        redundancy: None,
        slot_divisor: None,
    };
    let region: RegionReply = c.call("POST", "/v1/regions", Some(&create)).unwrap();
    let id = region.region.id;
    let first: MapReply = c.call::<(), _>("GET", &format!("/v1/regions/{id}/map"), None).unwrap();
    // two long-polls at once, each on its own connection, both outlasting the request timeout
    let url = format!("/v1/regions/{id}/map?since_epoch={}&wait_ms=3000", first.epoch);
    let started = Instant::now();
    let polls: Vec<_> = (0..2)
        .map(|_| {
            let (c, url) = (c.clone(), url.clone());
            std::thread::spawn(move || c.call_waiting::<(), MapReply>("GET", &url, None, GENEROUS).unwrap())
        })
        .collect();
    check_status_with(&c, 1);
    for p in polls {
        let waited = p.join().unwrap();
        assert_eq!((waited.epoch, waited.region.id), (first.epoch, id));
    }
    assert!(started.elapsed() >= Duration::from_millis(3_000), "answered before its wait ended");
    assert_eq!(metric(&c, "krak_http_connections_timed_out_total{phase=\"request\"}"), 0);
    ctl.shutdown();
}
