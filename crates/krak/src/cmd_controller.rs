//! `krak controller`: the rack manager, with its state in the embedded file store or etcd,
//! and leader election so that of several controllers on one etcd only one serves.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use krak_api::Api;
use krak_api::Client;
use krak_controller::http::{HttpServer, Request, Response};
use krak_controller::{Controller, ControllerConfig, ControllerError, ControllerHandle};
use krak_meta::{FencedStore, Leadership, MetaStore};

/// Run the rack controller: membership and liveness of memory servers, slab placement, the
/// slab map, an HTTP/JSON API (docs/api.md) and Prometheus metrics at /metrics.
///
/// State lives in a metadata store, so a controller killed and restarted loses nothing:
/// by default the embedded file store in the directory --store (default
/// $XDG_STATE_HOME/krak/controller, i.e. ~/.local/state/krak/controller; ./krak-controller.db
/// when neither $XDG_STATE_HOME nor $HOME is set), or an etcd cluster with --etcd.
///
/// Several controllers may share one etcd: they elect a leader (a key on an etcd lease of
/// --lease-ms). Only the leader serves the API; a standby binds its --listen address too and
/// answers every request with 503 and `{"error": "standby controller; the leader is ID"}`,
/// while trying to become leader twice a second. When the leader dies its lease expires and a
/// standby takes over (within about --lease-ms plus etcd's expiry check); `krak` commands and
/// memory servers given every controller's URL (--controller URL1,URL2) follow on their own.
/// A leader that cannot renew its lease stops serving and becomes a standby.
///
/// On start one line is printed to stdout: `krak controller listening on http://ADDR` (with
/// the actual port when --listen asked for port 0). SIGINT/SIGTERM stop the controller (a
/// leader resigns, so a standby takes over at once). Logs go to stderr (KRAK_LOG=info shows
/// state changes of servers).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  krak controller --listen 0.0.0.0:7080\n  \
                        krak controller --listen 127.0.0.1:7080 --store /var/lib/krak/controller --dead-after-ms 5000\n  \
                        krak controller --listen 0.0.0.0:7080 --etcd http://10.0.0.1:2379,http://10.0.0.2:2379")]
pub struct ControllerArgs {
    /// Address of the HTTP API, e.g. 0.0.0.0:7080; port 0 picks a free port (printed on start).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Directory of the embedded file store (created if missing; one controller at a time).
    #[arg(long, value_name = "PATH", conflicts_with = "etcd")]
    store: Option<PathBuf>,
    /// Keep the state in etcd instead: its client URLs, comma-separated (http://HOST:PORT).
    #[arg(long, value_name = "URL[,URL...]")]
    etcd: Option<String>,
    /// Every request but GET /metrics must be signed with it, every answer is signed.
    #[command(flatten)]
    secret: crate::secret_opts::SecretArgs,
    /// A memory server silent this long is declared dead.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    dead_after_ms: u64,
    /// A memory server silent this long is suspect (placement avoids it). Default: 30% of
    /// --dead-after-ms.
    #[arg(long, value_name = "MS")]
    suspect_after_ms: Option<u64>,
    /// How often memory servers are asked to heartbeat. Default: a tenth of --dead-after-ms,
    /// at most 1000.
    #[arg(long, value_name = "MS")]
    heartbeat_ms: Option<u64>,
    /// Placement policy to switch to on start: spread, pack or domain-spread. Without it, the
    /// policy stored in the rack is kept (spread for a new rack).
    #[arg(long, value_name = "NAME")]
    policy: Option<String>,
    /// Leader lease (with --etcd): a dead leader is replaced after about this long. etcd
    /// counts whole seconds, at least its minimum TTL.
    #[arg(long, value_name = "MS", default_value_t = 3_000)]
    lease_ms: u64,
    /// This controller's name in the leader election; a standby reports the leader's.
    /// Default: http://HOST:PORT of the API.
    #[arg(long, value_name = "NAME")]
    id: Option<String>,
    /// A request (head and body) must arrive within this long and its answer be taken within
    /// this long; a slower connection is closed (a long-poll's wait is the controller's, not
    /// counted).
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    http_timeout_ms: u64,
    /// A kept-alive connection without a new request for this long is closed.
    #[arg(long, value_name = "MS", default_value_t = 15_000)]
    http_idle_timeout_ms: u64,
    /// Most HTTP connections open at once; more are refused at once with 503.
    #[arg(long, value_name = "N", default_value_t = 256)]
    http_max_connections: usize,
    /// Most HTTP connections open at once from one client address.
    #[arg(long, value_name = "N", default_value_t = 32)]
    http_max_connections_per_client: usize,
}

/// How long a standby waits between attempts to become leader.
const ACQUIRE_EVERY: Duration = Duration::from_millis(500);
/// How long starting the API may retry binding an address a standby just released.
const BIND_RETRY: Duration = Duration::from_secs(3);

/// The default directory of the file store.
pub fn default_store_path() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(state) = env("XDG_STATE_HOME") {
        state.join("krak/controller")
    } else if let Some(home) = env("HOME") {
        home.join(".local/state/krak/controller")
    } else {
        PathBuf::from("krak-controller.db")
    }
}

fn open_store(args: &ControllerArgs) -> anyhow::Result<(Arc<dyn MetaStore>, String)> {
    if let Some(urls) = &args.etcd {
        let store = krak_meta_etcd::EtcdStore::connect(urls).with_context(|| format!("connecting to etcd {urls}"))?;
        return Ok((Arc::new(store), format!("etcd {urls}")));
    }
    let path = args.store.clone().unwrap_or_else(default_store_path);
    let store = krak_meta_file::FileStore::open(&path)
        .with_context(|| format!("opening the controller's store {}", path.display()))?;
    let r = store.recovery();
    if r.torn_tail_bytes > 0 {
        tracing::warn!("store {}: cut {} bytes of a write torn by a crash", path.display(), r.torn_tail_bytes);
    }
    Ok((Arc::new(store), format!("file store {}", path.display())))
}

fn config(args: &ControllerArgs, listen: SocketAddr) -> anyhow::Result<ControllerConfig> {
    let mut c = ControllerConfig::new(listen);
    c.secret = args.secret.load()?;
    c.dead_after_ms = args.dead_after_ms;
    c.suspect_after_ms = args.suspect_after_ms.unwrap_or(args.dead_after_ms * 3 / 10).max(1);
    c.heartbeat_interval_ms = args.heartbeat_ms.unwrap_or((args.dead_after_ms / 10).clamp(10, 1000));
    c.tick_ms = c.tick_ms.min((c.suspect_after_ms / 4).max(10));
    c.http_request_timeout_ms = args.http_timeout_ms;
    c.http_idle_timeout_ms = args.http_idle_timeout_ms;
    c.http_max_connections = args.http_max_connections;
    c.http_max_connections_per_client = args.http_max_connections_per_client;
    if let Some(p) = &args.policy {
        if krak_controller::placement::by_name(p).is_none() {
            bail!("unknown placement policy {p:?} (spread, pack or domain-spread)");
        }
    }
    c.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    if c.heartbeat_interval_ms >= c.suspect_after_ms {
        bail!(
            "--heartbeat-ms {} must be shorter than the suspect timeout {} ms",
            c.heartbeat_interval_ms,
            c.suspect_after_ms
        );
    }
    Ok(c)
}

/// The concrete address: port 0 is resolved now, so that the leader's id and a standby's
/// API name the same port.
fn resolve_port(listen: SocketAddr) -> anyhow::Result<SocketAddr> {
    if listen.port() != 0 {
        return Ok(listen);
    }
    let l = TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    Ok(l.local_addr()?)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into a buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if rc == 0 && end > 0 {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".into()
    }
}

fn announce(printed: &mut bool, addr: SocketAddr) -> anyhow::Result<()> {
    if !*printed {
        // Scripts and tests parse the address from this exact line.
        let mut out = std::io::stdout().lock();
        writeln!(out, "krak controller listening on http://{addr}")?;
        out.flush()?;
        *printed = true;
    }
    Ok(())
}

pub fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let base = config(&args, args.listen)?;
    let (store, store_name) = open_store(&args)?;
    let listen = resolve_port(args.listen)?;
    let id = args.id.clone().unwrap_or_else(|| {
        let host = if listen.ip().is_unspecified() { hostname() } else { listen.ip().to_string() };
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host };
        format!("http://{host}:{}", listen.port())
    });
    let (stop_tx, stop) = std::sync::mpsc::channel::<()>();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    }) {
        tracing::warn!("cannot handle SIGINT/SIGTERM ({e}); stop the controller with SIGKILL");
    }
    let etcd = args.etcd.is_some();
    tracing::info!("controller {id}: state in the {store_name}");
    let mut printed = false;
    let mut policy_to_set = args.policy.clone();
    loop {
        // Standby until this controller leads.
        let Some(leadership) =
            acquire(&*store, &base, &id, args.lease_ms, listen, &stop, &mut printed, args.secret.load()?)?
        else {
            return Ok(());
        };
        if etcd {
            tracing::warn!("controller {id} is the leader");
        }
        // Every write of this term is fenced by the leader key: once another controller
        // leads, what this one still tries to write is refused by the store.
        let fenced: Arc<dyn MetaStore> = Arc::new(FencedStore::new(store.clone(), leadership.revision()));
        let handle = match start(base.clone(), listen, fenced) {
            Ok(h) => h,
            Err(ControllerError::Store(e)) => {
                tracing::warn!("cannot load the rack from the {store_name}: {e}; retrying");
                let _ = leadership.resign(&*store);
                if wait_or_stop(&stop, Duration::from_secs(1)) {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e).context("starting the controller"),
        };
        announce(&mut printed, handle.addr())?;
        if let Some(p) = policy_to_set.take() {
            let mut client = Client::new(&handle.url())?.with_secret(args.secret.load()?);
            client.timeout = Duration::from_secs(5);
            client.set_policy(&p).with_context(|| format!("setting the policy to {p}"))?;
        }
        // Lead until stopped or the lease is lost.
        let renew_every = Duration::from_millis((args.lease_ms / 3).max(50));
        loop {
            if wait_or_stop(&stop, renew_every) {
                handle.shutdown();
                let _ = leadership.resign(&*store);
                return Ok(());
            }
            if let Err(e) = leadership.renew(&*store) {
                tracing::warn!("controller {id} lost the leadership ({e}); stopping the API and standing by");
                handle.shutdown();
                break;
            }
        }
    }
}

/// Waits up to `d`; true when asked to stop.
fn wait_or_stop(stop: &Receiver<()>, d: Duration) -> bool {
    !matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Timeout))
}

/// Tries to become leader until it does (`Some`) or is asked to stop (`None`), serving 503
/// from a standby API meanwhile.
#[allow(clippy::too_many_arguments)]
fn acquire(
    store: &dyn MetaStore,
    config: &ControllerConfig,
    id: &str,
    lease_ms: u64,
    listen: SocketAddr,
    stop: &Receiver<()>,
    printed: &mut bool,
    secret: Option<krak_proto::RackSecret>,
) -> anyhow::Result<Option<Leadership>> {
    let mut standby: Option<Standby> = None;
    let mut last_error = None;
    loop {
        let leader = match Leadership::try_acquire(store, id, lease_ms) {
            Ok(Some(l)) => {
                drop(standby);
                return Ok(Some(l));
            }
            Ok(None) => {
                last_error = None;
                Leadership::current(store).ok().flatten().unwrap_or_else(|| "unknown".into())
            }
            Err(e) => {
                let message = e.to_string();
                if last_error.as_ref() != Some(&message) {
                    tracing::warn!("cannot reach the metadata store to elect a leader: {message}; retrying");
                    last_error = Some(message);
                }
                "unknown (the metadata store cannot be reached)".into()
            }
        };
        match &standby {
            Some(s) => *s.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader,
            None => {
                let s = Standby::start(config, listen, leader.clone(), secret)
                    .with_context(|| format!("cannot listen on {listen}"))?;
                tracing::warn!("controller {id} is a standby; the leader is {leader}");
                announce(printed, s.addr)?;
                standby = Some(s);
            }
        }
        if wait_or_stop(stop, ACQUIRE_EVERY) {
            return Ok(None);
        }
    }
}

/// Starts the API, retrying a bind that fails while a standby's listener is being closed.
fn start(
    mut config: ControllerConfig,
    listen: SocketAddr,
    store: Arc<dyn MetaStore>,
) -> Result<ControllerHandle, ControllerError> {
    config.listen = listen;
    let deadline = Instant::now() + BIND_RETRY;
    loop {
        match Controller::start(config.clone(), store.clone()) {
            Err(ControllerError::Bind { .. }) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            other => return other,
        }
    }
}

/// The API of a standby: 503 to everything, naming the leader, behind the same bounded HTTP
/// front end as the leader's.
#[derive(Debug)]
struct Standby {
    addr: SocketAddr,
    leader: Arc<Mutex<String>>,
    server: Option<HttpServer>,
}

impl Standby {
    fn start(
        config: &ControllerConfig,
        listen: SocketAddr,
        leader: String,
        secret: Option<krak_proto::RackSecret>,
    ) -> std::io::Result<Standby> {
        let leader = Arc::new(Mutex::new(leader));
        let replays = krak_controller::auth::ReplayGuard::default();
        let answer_leader = leader.clone();
        let handler = move |request: Request| -> Response {
            let leader = answer_leader.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let body = serde_json::json!({
                "error": format!("standby controller; the leader is {leader}"),
                "leader": leader,
            });
            let mut response = Response::json(503, &body);
            // With a secret, only signed requests learn who leads, and the answer is signed
            // so clients can trust it and move on.
            if let Some(secret) = &secret {
                let checked = krak_controller::auth::verify_request(
                    secret,
                    &replays,
                    krak_api::signing::now_ms(),
                    &request.method,
                    &request.url,
                    &request.body,
                    request.authorization.as_deref(),
                );
                match checked {
                    Ok(nonce) => {
                        response.auth =
                            Some(krak_api::signing::sign_response(secret, &nonce, response.status, &response.body));
                    }
                    Err(e) => response = Response::error(401, &e.to_string()),
                }
            }
            response
        };
        let server = HttpServer::start(listen, config.http_limits(), Arc::default(), Arc::new(handler))?;
        Ok(Standby { addr: server.addr(), leader, server: Some(server) })
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}
