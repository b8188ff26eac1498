//! `krak memserver`: lend this machine's spare RAM to pagers in the rack.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use krak_memserver::{MemServer, ServerConfig};
use krak_proto::units::ByteSize;

use crate::ctl::OptionalControllerArg;
use krak_memserver::membership::{self, Figures, Membership};

/// Serve slabs of this machine's memory to krak pagers over TCP.
///
/// Memory is lent in slabs of --slab-size; a slab costs RAM only once pages are written
/// to it. Slabs belong to the client that allocated them; when all of a client's
/// connections are gone for --grace-ms, its slabs are freed.
///
/// On start one line is printed to stdout:
/// `krak memserver listening on ADDR capacity SIZE slab SIZE`
/// (with the actual port when --listen asked for port 0). SIGINT/SIGTERM stop the server.
///
/// With --controller (or $KRAK_CONTROLLER) the server joins a rack: it registers with the
/// controller (its address, capacity, slab size, --domain, --headroom), then heartbeats at
/// the interval the controller asks with what it lends, its slabs and the host's available
/// memory. When the controller cannot be reached it logs once and keeps retrying (backoff
/// up to 1 s) while serving its clients as before; when the controller forgot it, it
/// registers again. State changes the controller reports (alive, suspect, dead, draining)
/// are logged on stderr.
/// Clients must prove they know the rack secret (--secret-file); see docs/threat-model.md.
/// Logs go to stderr: KRAK_LOG=info shows the slabs freed after a grace period,
/// KRAK_LOG=debug every allocation, free and connection.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  krak secret new /etc/krak/secret\n  \
                        krak memserver --listen 0.0.0.0:7070 --capacity 16GiB --secret-file /etc/krak/secret\n  \
                        krak memserver --listen 127.0.0.1:0 --capacity 1GiB --slab-size 16MiB --insecure\n  \
                        krak memserver --listen 0.0.0.0:7070 --capacity 16GiB --secret-file /etc/krak/secret \\\n      \
                        --controller http://10.0.0.1:7080 --domain rack1/host3 --headroom 2GiB")]
pub struct MemserverArgs {
    /// Address to listen on, e.g. 0.0.0.0:7070; port 0 picks a free port (printed on start).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Most memory lent at once over all clients, e.g. 16GiB or 512MiB.
    #[arg(long, value_name = "SIZE")]
    capacity: ByteSize,
    /// Size of each slab: a multiple of 4KiB, at most the capacity.
    #[arg(long, value_name = "SIZE", default_value_t = ByteSize(krak_memserver::DEFAULT_SLAB_SIZE_BYTES))]
    slab_size: ByteSize,
    /// Free a client's slabs this many milliseconds after its last connection closed.
    #[arg(long, value_name = "MS", default_value_t = krak_memserver::DEFAULT_GRACE_MS)]
    grace_ms: u64,
    /// Most connections served at once. When all are taken, a new connection takes the slot
    /// of the oldest one still in its handshake; with every slot authenticated it is refused
    /// with TooManyConnections.
    #[arg(long, value_name = "N", default_value_t = krak_memserver::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Give up on a peer that stalls this long in the middle of a frame.
    #[arg(long, value_name = "MS", default_value_t = krak_memserver::DEFAULT_IO_TIMEOUT_MS)]
    io_timeout_ms: u64,
    /// Close a connection that has not finished its handshake (hello and proof of the rack
    /// secret) this long after it was accepted, however slowly its bytes come.
    #[arg(long, value_name = "MS", default_value_t = krak_memserver::DEFAULT_HANDSHAKE_TIMEOUT_MS)]
    handshake_timeout_ms: u64,
    /// Busy-wait of each connection for the client's next request before sleeping, in
    /// microseconds (default 0: sleep at once, woken on the CPU the request arrives on).
    /// Spinning takes CPU from this host's tenants and bought no latency in our benchmarks.
    #[arg(long, value_name = "US", env = "KRAK_MEMSERVER_SPIN_US", default_value_t = krak_memserver::DEFAULT_SPIN_US)]
    spin_us: u64,
    /// Do not move each connection's thread to the CPU its requests arrive on before it
    /// sleeps (by default it does: a wake-up on another CPU costs an inter-processor
    /// interrupt, tens of microseconds of CPU on a virtual machine).
    #[arg(long, env = "KRAK_MEMSERVER_NO_FOLLOW_CPU")]
    no_follow_cpu: bool,
    /// Refuse to copy a client's slabs to other memory servers (PushPages), e.g. when this
    /// host cannot reach its peers: a pager moving a chunk off this server then relays the
    /// pages itself.
    #[arg(long)]
    no_push: bool,
    /// Lock slab memory into RAM (mlock) so it is never swapped out; failures only warn.
    #[arg(long)]
    mlock: bool,
    #[command(flatten)]
    controller: OptionalControllerArg,
    #[command(flatten)]
    secret: crate::secret_opts::SecretArgs,
    /// Most connections one client may hold at once.
    #[arg(long, value_name = "N", default_value_t = krak_memserver::DEFAULT_MAX_CONNECTIONS_PER_CLIENT)]
    max_client_connections: usize,
    /// Most memory lent to one client (default: the whole capacity).
    #[arg(long, value_name = "SIZE")]
    max_client_capacity: Option<ByteSize>,
    /// Failure domain told to the controller, e.g. rack1/host3: servers with the same string
    /// are expected to fail together (the domain-spread policy spreads over them).
    #[arg(long, value_name = "DOMAIN", default_value = "", requires = "controller")]
    domain: String,
    /// Free memory this host keeps for itself: when its available memory (MemAvailable)
    /// falls below this, the server asks the controller to move slabs away (0: never).
    #[arg(long, value_name = "SIZE", default_value_t = ByteSize(0), requires = "controller")]
    headroom: ByteSize,
    /// Address pagers use to reach this server, told to the controller. Default: --listen,
    /// or for a wildcard address (0.0.0.0) this host's address on the route to the controller.
    #[arg(long, value_name = "HOST:PORT", requires = "controller")]
    advertise: Option<String>,
}

pub fn run(args: MemserverArgs) -> anyhow::Result<()> {
    let config = ServerConfig {
        listen: args.listen,
        capacity_bytes: args.capacity.0,
        slab_size_bytes: args.slab_size.0,
        grace_ms: args.grace_ms,
        max_connections: args.max_connections,
        io_timeout_ms: args.io_timeout_ms,
        handshake_timeout_ms: args.handshake_timeout_ms,
        mlock: args.mlock,
        secret: args.secret.load()?,
        max_connections_per_client: args.max_client_connections,
        max_bytes_per_client: args.max_client_capacity.map(|b| b.0),
        spin_us: args.spin_us,
        follow_cpu: !args.no_follow_cpu,
        push: !args.no_push,
    };
    let secret = config.secret;
    let server = MemServer::bind(config).context("starting the memory server")?;
    let membership = args.controller.controller.as_deref().filter(|c| !c.trim().is_empty()).map(|controller| {
        let addr = args
            .advertise
            .clone()
            .unwrap_or_else(|| membership::advertised(server.local_addr(), controller).to_string());
        Membership {
            controller: controller.to_string(),
            addr,
            domain: args.domain.clone(),
            headroom_bytes: args.headroom.0,
            secret,
        }
    });
    let stopper = server.stopper();
    let (stop_agent, agent_stop) = std::sync::mpsc::channel::<()>();
    let signal_stopper = stopper.clone();
    if let Err(e) = ctrlc::set_handler(move || {
        let _ = stop_agent.send(());
        signal_stopper.stop();
    }) {
        tracing::warn!("cannot handle SIGINT/SIGTERM ({e}); stop the server with SIGKILL");
    }
    // Scripts and tests parse the address from this exact line.
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "krak memserver listening on {} capacity {} slab {}",
        server.local_addr(),
        args.capacity,
        args.slab_size
    )?;
    out.flush()?;
    drop(out);
    let Some(membership) = membership else {
        server.run().context("serving")?;
        return Ok(());
    };
    let handle = server.spawn().context("starting the memory server")?;
    // The heartbeat loop runs on this thread until SIGINT/SIGTERM; the server serves on its own.
    membership::run(&membership, &|| Figures::of_this_host(handle.stats()), &agent_stop);
    handle.shutdown().context("serving")?;
    Ok(())
}
