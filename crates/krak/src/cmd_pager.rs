//! `krak pager-host` (hidden): the pager process of `krak run --pager separate`. It listens
//! on a Unix socket in a directory only its user can enter; each program (the one `krak
//! run` started, and every program it execs) connects at its first large allocation and
//! hands over its arena's memfd and userfaultfd (`SCM_RIGHTS`), which this process serves
//! as a `FarMemory` region until the program hangs up (then the region is dropped and its
//! slabs given back). It reads its configuration from the same `KRAK_RUN_*` variables as
//! the preload library, prints `ready` once listening, and stops when its stdin closes
//! (`krak run` closes it when the program has exited).

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use anyhow::{bail, Context};
use krak_pager::arena_wire::{Answer, Request, MAX_MESSAGE_BYTES, VERSION};
use krak_pager::{FarMemory, FaultMode, PagerConfig, PAGE_SIZE};
use krak_uffd::{OpenMode, PeerCredentials, RemoteMapping, SeqPacket, SeqPacketListener, Uffd};

use crate::run_env as env;

/// Most arenas (programs) served at once; more are refused with the reason.
const MAX_ARENAS: usize = 64;
/// How often waiting loops look at the stop flag.
const POLL_MS: i32 = 100;

#[derive(Debug, clap::Args)]
pub struct PagerHostArgs {
    /// The Unix socket to listen on (its directory must exist, mode 0700).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
}

fn var(name: &str) -> anyhow::Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => bail!("${name}: {e}"),
    }
}

fn bytes_var(name: &str) -> anyhow::Result<u64> {
    let v = var(name)?.with_context(|| format!("${name} is not set"))?;
    v.parse().with_context(|| format!("${name} is not a number of bytes: {v:?}"))
}

/// The pager configuration `krak run` gave the program, read as the library reads it.
fn config_from_env() -> anyhow::Result<PagerConfig> {
    let servers: Vec<SocketAddr> = match var(env::SERVERS)? {
        Some(list) => list
            .split(',')
            .map(|a| a.trim().parse().with_context(|| format!("${}: bad address {a:?}", env::SERVERS)))
            .collect::<anyhow::Result<_>>()?,
        None => Vec::new(),
    };
    let controller = var(env::CONTROLLER)?.filter(|c| !c.is_empty());
    if servers.is_empty() && controller.is_none() {
        bail!("${} or ${} must be set", env::SERVERS, env::CONTROLLER);
    }
    let secret = match (var(env::SECRET_FILE)?, var(env::INSECURE)?.as_deref()) {
        (Some(path), _) => Some(krak_auth::load_secret_file(std::path::Path::new(&path))?),
        (None, Some("1")) => None,
        (None, _) => bail!("${} is not set (and ${} is not 1)", env::SECRET_FILE, env::INSECURE),
    };
    let redundancy = match var(env::REDUNDANCY)? {
        Some(s) => s.parse().map_err(|e| anyhow::anyhow!("${}: {e}", env::REDUNDANCY))?,
        None => krak_pager::Redundancy::None,
    };
    Ok(PagerConfig {
        region_bytes: bytes_var(env::MAX_FAR_BYTES)?,
        local_budget_bytes: bytes_var(env::LOCAL_BYTES)?,
        servers,
        controller,
        secret,
        redundancy,
        fault_mode: FaultMode::Threads,
        ..PagerConfig::default()
    })
}

pub fn run(args: PagerHostArgs) -> anyhow::Result<()> {
    if let Some(path) = var(env::LOG_FILE)? {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).context("opening the log")?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .try_init();
    }
    let config = Arc::new(config_from_env()?);
    let listener =
        SeqPacketListener::bind(&args.socket, 16).with_context(|| format!("listening on {}", args.socket.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::Builder::new().name("krak-stdin".into()).spawn(move || {
        // krak run keeps our stdin open for as long as it wants us: EOF (or an error) is stop.
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        s.store(true, Relaxed);
    })?;
    println!("ready");
    std::io::stdout().flush()?;
    // SAFETY: geteuid takes nothing and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let arenas = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    while !stop.load(Relaxed) {
        let conn = match listener.accept_timeout(POLL_MS) {
            Ok(Some(conn)) => conn,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!("accepting a program: {e}");
                std::thread::sleep(std::time::Duration::from_millis(POLL_MS as u64));
                continue;
            }
        };
        let peer = match conn.peer_credentials() {
            Ok(peer) if peer.uid == uid => peer,
            Ok(peer) => {
                tracing::warn!("refusing a connection from uid {} (pid {})", peer.uid, peer.pid);
                let _ = conn.send(&Answer::Failed("the pager serves its own user only".into()).encode(), &[]);
                continue;
            }
            Err(e) => {
                tracing::warn!("refusing a connection without credentials: {e}");
                continue;
            }
        };
        if arenas.fetch_add(1, Relaxed) >= MAX_ARENAS {
            arenas.fetch_sub(1, Relaxed);
            let why = format!("the pager already serves {MAX_ARENAS} programs");
            let _ = conn.send(&Answer::Failed(why).encode(), &[]);
            continue;
        }
        let (config, stop, arenas) = (config.clone(), stop.clone(), arenas.clone());
        let t = std::thread::Builder::new().name(format!("krak-arena-{}", peer.pid)).spawn(move || {
            serve(&conn, &config, &stop, peer);
            arenas.fetch_sub(1, Relaxed);
        });
        match t {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!("starting a thread for pid {}: {e}", peer.pid),
        }
        threads.retain(|t| !t.is_finished());
    }
    // Every arena is dropped (its slabs freed) before we exit; programs still running then
    // see the hang-up and stop.
    for t in threads {
        let _ = t.join();
    }
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

/// Serves one program's arena until it hangs up or we are told to stop.
fn serve(conn: &SeqPacket, config: &PagerConfig, stop: &AtomicBool, peer: PeerCredentials) {
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    let region = match accept_arena(conn, &mut buf, config, peer) {
        Ok(region) => region,
        Err(e) => {
            tracing::warn!("cannot serve the arena of pid {}: {e:#}", peer.pid);
            let _ = conn.send(&Answer::Failed(format!("{e:#}")).encode(), &[]);
            return;
        }
    };
    if let Err(e) = conn.send(&Answer::Ready.encode(), &[]) {
        tracing::warn!("pid {} left before its arena was ready: {e}", peer.pid);
        return;
    }
    tracing::info!("serving the arena of pid {}: {} bytes at {:#x}", peer.pid, region.len(), region.as_ptr() as usize);
    while !stop.load(Relaxed) {
        match conn.wait_readable(POLL_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!("pid {}: {e}", peer.pid);
                break;
            }
        }
        let n = match conn.recv(&mut buf) {
            Ok(Some((n, _unexpected_fds))) => n,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("pid {}: bad message: {e}", peer.pid);
                let _ = conn.send(&Answer::Failed(format!("bad message: {e}")).encode(), &[]);
                continue;
            }
        };
        let answer = match Request::decode(&buf[..n]) {
            Ok(Request::Discard { offset, len }) => discard(&region, offset, len),
            Ok(Request::Stats) => Answer::Stats(stats_json(&region).to_string()),
            Ok(Request::Hello { .. }) => Answer::Failed("this connection already serves an arena".into()),
            Err(e) => Answer::Failed(format!("bad request: {e}")),
        };
        if let Answer::Failed(why) = &answer {
            tracing::warn!("pid {}: {why}", peer.pid);
        }
        if conn.send(&answer.encode(), &[]).is_err() {
            break;
        }
    }
    drop(region);
    tracing::info!("pid {} hung up: its arena is released", peer.pid);
}

fn discard(region: &FarMemory, offset: u64, len: u64) -> Answer {
    let (Ok(offset), Ok(len)) = (usize::try_from(offset), usize::try_from(len)) else {
        return Answer::Failed("discard range out of bounds".into());
    };
    match region.discard(offset, len) {
        Ok(()) => Answer::Done,
        Err(e) => Answer::Failed(format!("discard of {len} bytes at {offset}: {e}")),
    }
}

fn stats_json(region: &FarMemory) -> serde_json::Value {
    serde_json::json!({
        "pager_pid": std::process::id(),
        "arena_bytes": region.len(),
        "local_budget_bytes": region.local_budget_bytes(),
        "peak_resident_bytes": region.peak_resident_bytes(),
        "pager": region.stats(),
    })
}

/// Reads the program's hello and starts serving its arena.
fn accept_arena(
    conn: &SeqPacket,
    buf: &mut [u8],
    config: &PagerConfig,
    peer: PeerCredentials,
) -> anyhow::Result<FarMemory> {
    conn.set_recv_timeout_ms(10_000)?;
    let (n, mut fds) = conn.recv(buf)?.context("the program hung up before its hello")?;
    conn.set_recv_timeout_ms(0)?;
    let Request::Hello { version, base, len, uffd_features, uffd_mode } = Request::decode(&buf[..n])? else {
        bail!("the first message must be a hello");
    };
    if version != VERSION {
        bail!("the program speaks version {version} of the arena protocol, this pager {VERSION}");
    }
    if fds.len() != 2 {
        bail!("a hello carries 2 descriptors (memfd, userfaultfd), got {}", fds.len());
    }
    let max_len = config.region_bytes.next_multiple_of(PAGE_SIZE as u64);
    if len > max_len {
        bail!("an arena of {len} bytes is larger than --max-far ({max_len})");
    }
    let mode = OpenMode::from_code(uffd_mode).context("unknown userfaultfd mode")?;
    if mode == OpenMode::UserModeOnly {
        bail!("the program's userfaultfd serves user-mode faults only");
    }
    let (uffd, memfd) = (fds.pop().expect("two fds"), fds.pop().expect("two fds"));
    let map = RemoteMapping::new(memfd, base as usize, len as usize).context("the arena's memfd")?;
    let uffd = Uffd::from_received(uffd, uffd_features, mode)?;
    Ok(FarMemory::serve_remote(config.clone(), map, uffd, peer.pid)?)
}

/// Starts `krak pager-host` for `krak run` and waits for it to listen.
pub fn spawn_host(mut cmd: std::process::Command, socket: &std::path::Path) -> anyhow::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    cmd.arg("pager-host")
        .arg("--socket")
        .arg(socket)
        .env_remove("LD_PRELOAD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().context("starting the pager process")?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    std::io::BufReader::new(stdout).read_line(&mut line).context("waiting for the pager process")?;
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the pager process did not start (see its error above)");
    }
    Ok(child)
}
