//! `PushPages`: copying units of a client's slab straight to another memory server, for a
//! chunk that moves (docs/protocol.md). The server connects to the target as the client
//! (the same client id, proving the same rack secret), and sends the units as `CopyPages`
//! with the checksums they were stored with, so the target checks them end to end.

use std::net::SocketAddr;

use krak_client::{ConnectOptions, Connection};
use krak_proto::{PageRef, PushEntries};

use crate::registry::RegistryError;
use crate::server::ServerShared;

/// Targets one connection keeps links to at once (a drain pushes to a few servers).
const MAX_TARGETS: usize = 4;
/// Bound on connecting to a target and on each of its answers.
const PUSH_TIMEOUT_MS: u64 = 5_000;
/// Nice value of a thread serving a connection that copies (pushes or `CopyPages`): a
/// chunk's move is background work, and must not take the CPU from the threads that serve
/// faults on the same host. It still gets every cycle they leave.
const COPY_NICE: i32 = 5;

/// The links of one client connection to the servers it pushes to, newest last.
#[derive(Debug, Default)]
pub(crate) struct Pushers {
    links: Vec<(SocketAddr, Connection)>,
    /// The units of one push, staged so that no slab stays locked across the network.
    stage: Vec<u8>,
    crcs: Vec<u32>,
    /// This connection's thread runs at `COPY_NICE`.
    niced: bool,
}

/// Copies the units `entries` names from this server to its target; returns how many the
/// target stored (units it already had a write for keep that write).
pub(crate) fn push(
    shared: &ServerShared,
    pushers: &mut Pushers,
    client_id: u64,
    entries: PushEntries<'_>,
) -> Result<u32, RegistryError> {
    let to = entries.to;
    if !shared.config.push {
        return Err(RegistryError::PushDisabled { to });
    }
    let unit = entries.unit_bytes() as usize;
    pushers.stage.clear();
    pushers.crcs.clear();
    let (stage, crcs) = (&mut pushers.stage, &mut pushers.crcs);
    let src = |page| PageRef { slab: entries.src, page };
    shared.registry.read_units(
        client_id,
        entries.unit_bytes(),
        || entries.iter().map(src),
        |crc, data| {
            crcs.push(crc);
            stage.extend_from_slice(data);
        },
    )?;
    let failed = |source| RegistryError::PushFailed { to, source };
    let i = pushers.link(shared, client_id, to).map_err(failed)?;
    let link = &mut pushers.links[i].1;
    let units = entries
        .iter()
        .zip(pushers.stage.chunks_exact(unit.max(1)))
        .zip(&pushers.crcs)
        .map(|((page, data), crc)| (PageRef { slab: entries.dst, page }, *crc, data));
    let sent = link.send_copy_units(entries.unit_bytes(), units).and_then(|id| link.recv_copied(id));
    match sent {
        Ok(stored) => Ok(stored),
        Err(e) => {
            // A broken link is not reused; a refusal (wrong slab, ...) leaves it usable.
            if !matches!(e, krak_client::ClientError::Refused { .. }) {
                pushers.links.retain(|(addr, _)| *addr != to);
            }
            Err(failed(e))
        }
    }
}

impl Pushers {
    /// Lowers the priority of the calling thread (the one serving this connection) once,
    /// on the connection's first copy: copies come on connections of their own.
    pub(crate) fn background(&mut self, peer: SocketAddr) {
        if self.niced {
            return;
        }
        self.niced = true;
        // SAFETY: setpriority takes plain integers and touches no memory of ours; with
        // PRIO_PROCESS and the thread id of the caller it changes only this thread's nice.
        let tid = unsafe { libc::gettid() };
        // SAFETY: as above.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, COPY_NICE) } != 0 {
            tracing::debug!("{peer}: cannot lower the copy thread's priority: {}", std::io::Error::last_os_error());
        }
    }

    /// The index of the link to `to`, connecting first if there is none.
    fn link(
        &mut self,
        shared: &ServerShared,
        client_id: u64,
        to: SocketAddr,
    ) -> Result<usize, krak_client::ClientError> {
        if let Some(i) = self.links.iter().position(|(addr, _)| *addr == to) {
            return Ok(i);
        }
        if self.links.len() >= MAX_TARGETS {
            self.links.remove(0);
        }
        let opts = ConnectOptions {
            client_id,
            timeout_ms: PUSH_TIMEOUT_MS.min(shared.config.io_timeout_ms.max(1)),
            spin_us: shared.config.spin_us,
            secret: shared.config.secret,
        };
        let conn = Connection::connect(to, opts)?;
        self.links.push((to, conn));
        Ok(self.links.len() - 1)
    }
}
