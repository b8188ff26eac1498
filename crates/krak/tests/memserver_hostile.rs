//! A real `krak memserver` process against strangers who do not know the rack secret
//! (issue 15, findings 4 and 5): a hello drip-fed a byte at a time is cut at the handshake
//! deadline, strangers holding every connection slot do not keep a client out, and frames
//! declared large before authentication cost the server almost no memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use krak_client::{ConnectOptions, Connection};
use krak_proto::{Header, Op, PageRef, HEADER_LEN, PAGE_SIZE};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn secret() -> &'static (String, krak_proto::RackSecret) {
    static FILE: std::sync::OnceLock<(String, krak_proto::RackSecret)> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("krak-test-hostile-{}-{:x}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("secret");
        let secret = krak_auth::write_new_secret_file(&path).unwrap();
        (path.to_string_lossy().into_owned(), secret)
    })
}

fn start(extra: &[&str]) -> (Server, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_krak"))
        .args(["memserver", "--listen", "127.0.0.1:0", "--capacity", "64MiB", "--slab-size", "1MiB"])
        .args(["--secret-file", &secret().0])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("krak runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr = line.split_whitespace().nth(4).expect("an address").parse().unwrap();
    (Server(child), addr)
}

fn options() -> ConnectOptions {
    ConnectOptions { client_id: rand::random(), timeout_ms: 5_000, spin_us: 0, secret: Some(secret().1) }
}

/// A legitimate client's whole round: hello and proof, a slab, a page written and read back.
fn serve_one_page(addr: SocketAddr) -> Result<(), krak_client::ClientError> {
    let mut c = Connection::connect(addr, options())?;
    let slab = c.alloc_slab()?;
    let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i * 7 + 3) as u8).collect();
    let at = PageRef { slab, page: 5 };
    c.write_pages(&[(at, &page)])?;
    let mut back = vec![0u8; PAGE_SIZE];
    c.read_pages(&[at], &mut back)?;
    assert_eq!(back, page, "the page read back is the page written");
    c.free_slab(slab)
}

/// A client hello frame, as a stranger would send it.
fn hello_frame() -> Vec<u8> {
    let mut out = Vec::new();
    krak_proto::encode_hello(&mut out, 1, krak_proto::PROTOCOL_VERSION, 7, &[3u8; krak_proto::NONCE_LEN]);
    out
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Reads until the server closes (or `limit` passes); what it sent.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

#[test]
fn a_drip_fed_hello_is_cut_at_the_handshake_deadline() {
    let (_server, addr) = start(&["--handshake-timeout-ms", "1000"]);
    let frame = hello_frame();
    let mut s = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    // One byte every 100 ms: every read arrives well within any per-read timeout, the
    // whole hello would take several seconds.
    let mut cut_after = None;
    for b in &frame {
        if s.write_all(&[*b]).is_err() {
            cut_after = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let (_, closed) = read_until_closed(&mut s, Duration::from_millis(1));
        if closed {
            cut_after = Some(started.elapsed());
            break;
        }
    }
    let cut_after = cut_after.expect("the server closed the drip-fed connection");
    assert!(cut_after < Duration::from_millis(2_500), "closed after {cut_after:?}, deadline 1 s");
    // and a client that keeps to the deadline is served
    serve_one_page(addr).expect("a client is served");
}

#[test]
fn strangers_holding_every_slot_do_not_keep_out_a_client() {
    let (_server, addr) = start(&["--max-connections", "16"]);
    // Strangers take every slot, and then some: idle, half a header, a whole hello unanswered.
    let mut strangers = Vec::new();
    for i in 0..24 {
        let mut s = TcpStream::connect(addr).unwrap();
        match i % 3 {
            0 => {}
            1 => s.write_all(&hello_frame()[..HEADER_LEN / 2]).unwrap(),
            _ => s.write_all(&hello_frame()).unwrap(),
        }
        strangers.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    for round in 0..5 {
        let started = Instant::now();
        serve_one_page(addr).unwrap_or_else(|e| panic!("round {round}: a client is kept out: {e}"));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "round {round}: served after {took:?}");
        // the strangers come back for the slots they lost
        for s in strangers.iter_mut().take(8) {
            *s = TcpStream::connect(addr).unwrap();
        }
    }
}

#[test]
fn frames_declared_large_before_authentication_cost_almost_no_memory() {
    let (server, addr) = start(&[]);
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib(server.0.id());
    // 200 strangers, each declaring a hello of 1 MiB and sending as much of it as the
    // socket takes, plus 50 holding a partial header: all at once, all held open.
    let mut held = Vec::new();
    let body = vec![0xa5u8; 1 << 20];
    for i in 0..250 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
        if i < 200 {
            let head = Header { kind: Op::Hello as u16, status: 0, request_id: 1, body_len: 1 << 20 }.encode();
            let _ = s.write_all(&head).and_then(|()| s.write_all(&body));
        } else {
            let _ = s.write_all(&hello_frame()[..HEADER_LEN - 3]);
        }
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    let loaded = rss_kib(server.0.id());
    let grew_kib = loaded.saturating_sub(idle);
    eprintln!("memory server RSS: idle {idle} KiB, under 250 strangers {loaded} KiB (+{grew_kib} KiB)");
    assert!(grew_kib < 8 << 10, "RSS grew by {grew_kib} KiB under unauthenticated load (idle {idle} KiB)");
    // The server still serves clients, and told the large hellos why it closed.
    serve_one_page(addr).expect("a client is served");
    let (answer, closed) = read_until_closed(&mut held[0], Duration::from_secs(2));
    assert!(closed, "a frame too large for the handshake closes the connection");
    if answer.len() >= HEADER_LEN {
        let h = Header::decode(answer[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(h.status, krak_proto::ErrorCode::FrameTooLarge as u16, "{h:?}");
    }
}
