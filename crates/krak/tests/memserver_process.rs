//! The real `krak memserver` process: prints its address, serves pages, stops on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use krak_client::{ConnectOptions, Connection};
use krak_proto::{PageRef, PAGE_SIZE};
use rand::Rng;

/// Kills the server if a test fails before stopping it.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A rack secret file of this test process, and the secret in it.
fn secret_file() -> &'static (String, krak_proto::RackSecret) {
    static FILE: std::sync::OnceLock<(String, krak_proto::RackSecret)> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("krak-test-secret-{}-{:x}", std::process::id(), rand::random::<u64>()));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("secret");
        let secret = krak_auth::write_new_secret_file(&path).unwrap();
        (path.to_string_lossy().into_owned(), secret)
    })
}

/// Starts `krak memserver` on a free port; returns it and the address it printed.
fn start(extra: &[&str]) -> (Server, SocketAddr, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_krak"))
        .args(["memserver", "--listen", "127.0.0.1:0", "--capacity", "64MiB", "--slab-size", "1MiB"])
        .args(["--secret-file", &secret_file().0])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("krak runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let server = Server(child);
    // krak memserver listening on ADDR capacity SIZE slab SIZE
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[..4], ["krak", "memserver", "listening", "on"], "{line}");
    let addr: SocketAddr = words[4].parse().expect("an address");
    assert_ne!(addr.port(), 0, "the actual port is printed");
    (server, addr, line)
}

#[test]
fn the_process_serves_pages_and_stops_on_sigterm() {
    let (mut server, addr, line) = start(&["--grace-ms", "1000"]);
    assert_eq!(line, format!("krak memserver listening on {addr} capacity 64MiB slab 1MiB\n"));

    let secret = Some(secret_file().1);
    let mut c =
        Connection::connect(addr, ConnectOptions { client_id: 7, timeout_ms: 5_000, spin_us: 0, secret }).unwrap();
    assert_eq!((c.hello().slab_size_bytes, c.hello().capacity_bytes), (1 << 20, 64 << 20));
    let slab = c.alloc_slab().unwrap();
    let mut rng = rand::thread_rng();
    let pages: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            let mut p = vec![0u8; PAGE_SIZE];
            rng.fill(&mut p[..]);
            p
        })
        .collect();
    let at: Vec<PageRef> = (0..64).map(|i| PageRef { slab, page: i * 3 }).collect();
    let batch: Vec<(PageRef, &[u8])> = at.iter().copied().zip(pages.iter().map(|p| p.as_slice())).collect();
    c.write_pages(&batch).unwrap();
    let mut out = vec![0u8; 64 * PAGE_SIZE];
    c.read_pages(&at, &mut out).unwrap();
    assert!(out.chunks_exact(PAGE_SIZE).zip(&pages).all(|(a, b)| a == b.as_slice()), "pages read back");
    let stats = c.stats().unwrap();
    assert_eq!((stats.slabs, stats.pages_written, stats.pages_read), (1, 64, 64));

    // SIGTERM: the server stops promptly and exits successfully, even with a client connected.
    // SAFETY: plain kill(2) on the pid of a child we spawned and have not yet reaped.
    assert_eq!(unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_krak"))
        .args(["memserver", "--listen", "127.0.0.1:0", "--capacity", "1MiB", "--slab-size", "64MiB", "--insecure"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("capacity 1MiB is smaller than one slab of 64MiB"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_krak"))
        .args(["memserver", "--listen", "127.0.0.1:0", "--capacity", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size"));
}

#[test]
fn no_secret_an_open_secret_file_or_a_wrong_secret_is_refused() {
    let krak = env!("CARGO_BIN_EXE_krak");
    let out = Command::new(krak)
        .args(["memserver", "--listen", "127.0.0.1:0", "--capacity", "4MiB", "--slab-size", "1MiB"])
        .env_remove("KRAK_SECRET_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no rack secret: pass --secret-file PATH"), "{err}");

    // `krak secret new` writes a private file; a copy readable by others is refused.
    let dir = std::env::temp_dir().join(format!("krak-test-open-{}-{:x}", std::process::id(), rand::random::<u64>()));
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("secret");
    let out = Command::new(krak).args(["secret", "new"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = Command::new(krak)
        .args(["memserver", "--listen", "127.0.0.1:0", "--capacity", "4MiB", "--slab-size", "1MiB", "--secret-file"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable or writable by group or others") && err.contains("chmod 600"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();

    // A client with another secret, or none, is refused by a server with one.
    let (_server, addr, _) = start(&[]);
    for secret in [None, Some(krak_proto::RackSecret::generate())] {
        let err = Connection::connect(addr, ConnectOptions { client_id: 8, timeout_ms: 5_000, spin_us: 0, secret })
            .unwrap_err();
        assert!(err.to_string().contains("authentication failed"), "{err}");
    }
}
