//! A redis-server on a loopback port with a deterministic data set, driven over RESP:
//! shared by `tests/run.rs` and `examples/run_bench.rs` (included with `#[path]`).

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const VALUE_BYTES: usize = 1000;

/// Key `i`'s value: 1000 printable bytes from a fixed seed.
pub fn value(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = vec![0u8; VALUE_BYTES];
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = b'a' + ((x >> (j * 8)) % 26) as u8;
        }
    }
    v
}

pub fn key(i: u64) -> String {
    format!("key:{i}")
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One RESP reply: a status or integer as text, a bulk string's bytes, None for nil.
fn reply(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).unwrap();
    assert!(line.ends_with(b"\r\n"), "redis closed the connection or sent {line:?}");
    let text = &line[1..line.len() - 2];
    match line[0] {
        b'+' | b':' => Some(text.to_vec()),
        b'$' => {
            let len: i64 = std::str::from_utf8(text).unwrap().parse().unwrap();
            if len < 0 {
                return None;
            }
            let mut body = vec![0u8; len as usize + 2];
            r.read_exact(&mut body).unwrap();
            body.truncate(len as usize);
            Some(body)
        }
        _ => panic!("redis error: {}", String::from_utf8_lossy(&line)),
    }
}

/// A port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// redis-server's arguments: loopback `port`, its files and log in `dir`, no persistence
/// (a background save is a fork, whose child cannot read far memory), DEBUG allowed.
pub fn server_args(port: u16, dir: &Path) -> Vec<String> {
    let mut args: Vec<String> =
        ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .map(String::from)
            .to_vec();
    args.extend(["--enable-debug-command", "yes", "--daemonize", "no"].map(String::from));
    args.extend(["--dir".into(), dir.display().to_string()]);
    args.extend(["--logfile".into(), dir.join("redis.log").display().to_string()]);
    args
}

pub struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts `cmd` (redis-server with `server_args(port, ..)`, perhaps under krak run) and
    /// waits until it listens.
    pub fn spawn(cmd: &mut Command, port: u16) -> Redis {
        let mut child = cmd.stdout(Stdio::null()).spawn().expect("start redis-server");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(child.try_wait().unwrap().is_none(), "redis-server exited (see its --logfile)");
            assert!(started.elapsed() < Duration::from_secs(60), "redis-server did not listen within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Redis { child, port }
    }

    fn connect(&self) -> (TcpStream, std::io::BufReader<TcpStream>) {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
        (stream.try_clone().unwrap(), std::io::BufReader::new(stream))
    }

    pub fn command(&self, args: &[&[u8]]) -> Option<Vec<u8>> {
        let (mut w, mut r) = self.connect();
        w.write_all(&command(args)).unwrap();
        reply(&mut r)
    }

    /// SETs keys `0..keys` with `redis-cli --pipe`, fed from a thread.
    pub fn load(&self, keys: u64) {
        let mut cli = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli");
        let mut stdin = std::io::BufWriter::new(cli.stdin.take().unwrap());
        let feeder = std::thread::spawn(move || {
            for i in 0..keys {
                stdin.write_all(&command(&[b"SET", key(i).as_bytes(), &value(i)])).unwrap();
            }
            stdin.flush().unwrap();
        });
        let out = cli.wait_with_output().unwrap();
        feeder.join().unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.contains(&format!("errors: 0, replies: {keys}")), "redis-cli --pipe: {out}");
    }

    /// DEBUG DIGEST of the whole data set, after checking it holds `keys` keys.
    pub fn digest(&self, keys: u64) -> Vec<u8> {
        assert_eq!(self.command(&[b"DBSIZE"]).unwrap(), keys.to_string().as_bytes());
        let digest = self.command(&[b"DEBUG", b"DIGEST"]).unwrap();
        assert_eq!(digest.len(), 40, "DEBUG DIGEST: {}", String::from_utf8_lossy(&digest));
        digest
    }

    /// GETs `keys` pipelined in batches and checks every value byte by byte.
    pub fn read_back(&self, keys: &[u64]) {
        let (mut w, mut r) = self.connect();
        for batch in keys.chunks(1000) {
            let mut out = Vec::new();
            for &i in batch {
                out.extend(command(&[b"GET", key(i).as_bytes()]));
            }
            w.write_all(&out).unwrap();
            for &i in batch {
                assert!(reply(&mut r).as_deref() == Some(&value(i)[..]), "key:{i} reads back wrong");
            }
        }
        assert_eq!(self.command(&[b"GET", b"key:never-set"]), None);
    }

    /// SHUTDOWN NOSAVE; returns the exiting process for the caller to reap.
    pub fn stop(self) -> Child {
        let (mut w, mut r) = self.connect();
        w.write_all(&command(&[b"SHUTDOWN", b"NOSAVE"])).unwrap();
        // The server closes the connection as it exits.
        let _ = r.read_to_end(&mut Vec::new());
        self.child
    }
}
