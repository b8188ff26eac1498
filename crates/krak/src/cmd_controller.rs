//! `krak controller`: the rack manager, with its state in the embedded store (redb) or etcd,
//! and leader election (`krak_controller::election`) so that of several controllers on one
//! etcd only one serves. This module only turns flags into a configuration.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use krak_controller::election::{default_id, resolve_port};
use krak_controller::{serve_elected, Candidate, ControllerConfig};
use krak_meta::MetaStore;

/// Run the rack controller: membership and liveness of memory servers, slab placement, the
/// slab map, an HTTP/JSON API (docs/api.md) and Prometheus metrics at /metrics.
///
/// State lives in a metadata store, so a controller killed and restarted loses nothing:
/// by default the embedded store (redb) in the directory --store (default
/// $XDG_STATE_HOME/krak/controller, i.e. ~/.local/state/krak/controller; ./krak-controller.db
/// when neither $XDG_STATE_HOME nor $HOME is set), or an etcd cluster with --etcd. A
/// damaged store (flipped bytes, a truncated or deleted file) is a refusal to start naming
/// what is wrong. A directory written by an older krak (files `wal` and `snapshot`) is
/// converted once at start; the old files are kept in its subdirectory old-log-format/.
///
/// Several controllers may share one etcd: they elect a leader (a key on an etcd lease of
/// --lease-ms). Only the leader serves the API; a standby binds its --listen address too and
/// answers every request with 503 and `{"error": "standby controller; the leader is ID"}`,
/// while trying to become leader twice a second. When the leader dies its lease expires and a
/// standby takes over (within about --lease-ms plus etcd's expiry check); `krak` commands and
/// memory servers given every controller's URL (--controller URL1,URL2) follow on their own.
/// A leader that cannot renew its lease stops serving and becomes a standby.
///
/// With --tls-cert and --tls-key the API is served over TLS only (clients use https:// URLs
/// and trust the CA that signed the certificate: --tls-ca or $KRAK_TLS_CA); requests are
/// signed with the rack secret either way.
///
/// On start one line is printed to stdout: `krak controller listening on http://ADDR` (or
/// https://; with the actual port when --listen asked for port 0). SIGINT/SIGTERM stop the controller (a
/// leader resigns, so a standby takes over at once). Logs go to stderr (KRAK_LOG=info shows
/// state changes of servers).
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  krak controller --listen 0.0.0.0:7080\n  \
                        krak controller --listen 127.0.0.1:7080 --store /var/lib/krak/controller --dead-after-ms 5000\n  \
                        krak controller --listen 0.0.0.0:7080 --etcd http://10.0.0.1:2379,http://10.0.0.2:2379\n  \
                        krak controller --listen 0.0.0.0:7443 --tls-cert /etc/krak/ctl.pem --tls-key /etc/krak/ctl.key")]
pub struct ControllerArgs {
    /// Address of the HTTP API, e.g. 0.0.0.0:7080; port 0 picks a free port (printed on start).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Directory of the embedded store (created if missing; one controller at a time).
    #[arg(long, value_name = "PATH", conflicts_with = "etcd")]
    store: Option<PathBuf>,
    /// When converting a store of an older krak: cut off a damaged last log record instead
    /// of refusing to start. Only after a crash while writing (that write was never
    /// acknowledged): otherwise the record may be a committed change a disk damaged.
    #[arg(long, conflicts_with = "etcd")]
    store_cut_damaged_tail: bool,
    /// Keep the state in etcd instead: its client URLs, comma-separated (http://HOST:PORT).
    #[arg(long, value_name = "URL[,URL...]")]
    etcd: Option<String>,
    /// Serve the API over TLS with this certificate (PEM: the controller's certificate, then
    /// its chain); needs --tls-key.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
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
    /// A region whose pager has not been heard from for this long (it reports every second)
    /// is reclaimed: deleted with its map, its servers' capacity free again. A controller
    /// that starts or takes over gives every region a whole lease first.
    #[arg(long, value_name = "MS", default_value_t = krak_controller::config::DEFAULT_REGION_LEASE_MS)]
    region_lease_ms: u64,
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

/// The default directory of the embedded store.
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
        #[cfg(feature = "etcd")]
        {
            let store =
                krak_meta_etcd::EtcdStore::connect(urls).with_context(|| format!("connecting to etcd {urls}"))?;
            return Ok((Arc::new(store), format!("etcd {urls}")));
        }
        #[cfg(not(feature = "etcd"))]
        anyhow::bail!(
            "--etcd {urls}: this krak was built without etcd support; build it with \
             `cargo build --release -p krak --features etcd` (needs protoc: apt-get install protobuf-compiler)"
        );
    }
    let path = args.store.clone().unwrap_or_else(default_store_path);
    let opts = krak_meta_redb::RedbStoreOptions { cut_damaged_tail: args.store_cut_damaged_tail };
    let store = krak_meta_redb::RedbStore::open_with(&path, opts)
        .with_context(|| format!("opening the controller's store {}", path.display()))?;
    let r = store.recovery();
    if let Some(n) = r.conversion.converted_keys {
        tracing::warn!(
            "store {}: converted {n} keys from the older log format; the old files are in {}",
            path.display(),
            path.join(krak_meta_redb::OLD_FORMAT_DIR).display()
        );
    }
    if r.dropped_leased_keys > 0 {
        tracing::info!("store {}: dropped {} keys of leases of an earlier run", path.display(), r.dropped_leased_keys);
    }
    Ok((Arc::new(store), format!("store {}", path.display())))
}

fn config(args: &ControllerArgs, listen: SocketAddr) -> anyhow::Result<ControllerConfig> {
    let mut c = ControllerConfig::new(listen);
    c.secret = args.secret.load()?;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        c.tls = Some(krak_controller::tls::server_config(cert, key)?);
    }
    c.dead_after_ms = args.dead_after_ms;
    c.region_lease_ms = args.region_lease_ms;
    c.suspect_after_ms = args.suspect_after_ms.unwrap_or(args.dead_after_ms * 3 / 10).max(1);
    c.heartbeat_interval_ms = args.heartbeat_ms.unwrap_or((args.dead_after_ms / 10).clamp(10, 1000));
    c.tick_ms = c.tick_ms.min((c.suspect_after_ms / 4).max(10));
    c.http_request_timeout_ms = args.http_timeout_ms;
    c.http_idle_timeout_ms = args.http_idle_timeout_ms;
    c.http_max_connections = args.http_max_connections;
    c.http_max_connections_per_client = args.http_max_connections_per_client;
    if let Some(p) = &args.policy {
        if krak_placement::by_name(p).is_none() {
            bail!("unknown placement policy {p:?} (spread, pack or domain-spread)");
        }
    }
    c.validate()?;
    if c.heartbeat_interval_ms >= c.suspect_after_ms {
        bail!(
            "--heartbeat-ms {} must be shorter than the suspect timeout {} ms",
            c.heartbeat_interval_ms,
            c.suspect_after_ms
        );
    }
    Ok(c)
}

/// The line scripts and tests parse the API's address from (printed once).
fn announce(scheme: &str, addr: SocketAddr) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "krak controller listening on {scheme}://{addr}")?;
    out.flush()
}

pub fn run(args: ControllerArgs) -> anyhow::Result<()> {
    // flags are checked before the store is opened
    let mut config = config(&args, args.listen)?;
    let (store, store_name) = open_store(&args)?;
    let listen = resolve_port(args.listen)?;
    config.listen = listen;
    let candidate = Candidate {
        id: args.id.clone().unwrap_or_else(|| default_id(listen, config.tls.is_some())),
        lease_ms: args.lease_ms,
        policy: args.policy.clone(),
        announce_terms: args.etcd.is_some(),
    };
    let (stop_tx, stop) = std::sync::mpsc::channel::<()>();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    }) {
        tracing::warn!("cannot handle SIGINT/SIGTERM ({e}); stop the controller with SIGKILL");
    }
    tracing::info!("controller {}: state in the {store_name}", candidate.id);
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    serve_elected(&config, store, &candidate, &stop, &mut |addr| announce(scheme, addr))
        .context("running the controller")
}
