//! Where each page of a region lives remotely, and the connections that move it there.

pub(crate) mod discard;
pub(crate) mod health;
pub(crate) mod list_placement;
pub mod redundancy;
pub(crate) mod stripe;

use std::net::SocketAddr;
use std::time::Duration;

use crate::state::lock_order::{level, RwLock};

use krak_client::{ClientError, ConnectOptions, Connection, ProtocolError};
use krak_proto::{PageRef, SlabId, MAX_BATCH_PAGES};

use crate::remote::redundancy::{Coder, Redundancy};
use crate::remote::stripe::{Stripe, StripeRead, StripeTable};
use crate::PagerError;

/// Attempts per request before the pager gives up on a page (each with a fresh connection).
pub(crate) const MAX_ATTEMPTS: u32 = 3;
pub(crate) const RETRY_PAUSE_MS: u64 = 50;

/// The region is cut into chunks of one slab per fragment. Every chunk is a stripe
/// (`remote/stripe.rs`): `width` fragments on distinct servers, one for a region without
/// redundancy (its whole pages), so one model serves allocation, reads, writes, moves and
/// drains whatever the scheme. Its fragments go where a placement policy chooses
/// (`remote/list_placement.rs` over a list of servers, the controller otherwise), so a region's
/// pages spread over every server it was given. Fragments move to other servers while the
/// region is in use, so the tables are behind locks.
#[derive(Debug)]
pub(crate) struct RemoteLayout {
    pub connect: ConnectOptions,
    pub chunk_pages: usize,
    servers: RwLock<Vec<SocketAddr>, { level::SERVERS }>,
    /// The stripe of each chunk.
    pub stripes: StripeTable,
}

impl RemoteLayout {
    /// Allocates slabs for a whole region up front, so that a full rack is reported when the
    /// region is made, not when a page is evicted: a stripe of `width` slabs per chunk on
    /// distinct servers, where `policy` chooses. With `on_demand`, none yet: each chunk's
    /// stripe is allocated at its first write-back (`fault/reserve.rs`).
    pub fn allocate(
        policy: &dyn krak_placement::PlacementPolicy,
        servers: &[SocketAddr],
        domains: &[String],
        region_pages: usize,
        connect: ConnectOptions,
        redundancy: Redundancy,
        on_demand: bool,
    ) -> Result<(RemoteLayout, Vec<Connection>), PagerError> {
        let mut admin = Vec::with_capacity(servers.len());
        for addr in servers {
            admin.push(Connection::connect(*addr, connect).map_err(PagerError::Remote)?);
        }
        let chunk_pages = admin.iter().map(|c| c.slab_pages() as usize).min().ok_or(PagerError::NoServers)?;
        let n_chunks = region_pages.div_ceil(chunk_pages);
        let stripes = if on_demand {
            if servers.len() < redundancy.width() {
                return Err(PagerError::TooFewServers { scheme: redundancy, servers: servers.len() });
            }
            vec![Vec::new(); n_chunks]
        } else {
            crate::remote::list_placement::allocate(policy, &mut admin, domains, n_chunks, chunk_pages, redundancy)?
        };
        let layout = RemoteLayout::from_stripes(connect, chunk_pages, servers.to_vec(), domains, redundancy, stripes);
        Ok((layout, admin))
    }

    /// A region's layout: `stripes[c][i]` holds fragment `i` of chunk `c`, on an index of
    /// `servers` (the same layout whoever chose the servers).
    pub fn from_stripes(
        connect: ConnectOptions,
        chunk_pages: usize,
        servers: Vec<SocketAddr>,
        domains: &[String],
        scheme: Redundancy,
        stripes: Vec<Stripe>,
    ) -> RemoteLayout {
        assert!(
            stripes.iter().all(|s| s.len() == scheme.width() || s.is_empty()),
            "every stripe is {} wide, or unreserved",
            scheme.width()
        );
        RemoteLayout {
            connect,
            chunk_pages,
            stripes: StripeTable::new(scheme, stripes, servers.len()).with_domains(domains),
            servers: RwLock::new(servers),
        }
    }

    /// The index of `addr` in the server table, if the region ever used it.
    pub fn find_server(&self, addr: SocketAddr) -> Option<usize> {
        self.servers.read().iter().position(|a| *a == addr)
    }

    pub fn redundancy(&self) -> Redundancy {
        self.stripes.scheme
    }

    pub fn server_addr(&self, server: usize) -> SocketAddr {
        self.servers.read()[server]
    }

    pub fn servers(&self) -> Vec<SocketAddr> {
        self.servers.read().clone()
    }

    pub fn server_count(&self) -> usize {
        self.servers.read().len()
    }

    /// The index of `addr`, added to the table if new.
    pub fn server_index(&self, addr: SocketAddr) -> usize {
        let mut servers = self.servers.write();
        match servers.iter().position(|a| *a == addr) {
            Some(i) => i,
            None => {
                servers.push(addr);
                servers.len() - 1
            }
        }
    }

    pub fn chunk_count(&self) -> usize {
        self.stripes.len()
    }

    /// Bytes of slabs this region holds on each server (a lost server's too).
    pub fn bytes_per_server(&self) -> Vec<(SocketAddr, u64)> {
        // Stripes first: a server is in the table before any stripe names it.
        let stripes = self.stripes.all();
        let mut out: Vec<(SocketAddr, u64)> = self.servers().into_iter().map(|a| (a, 0)).collect();
        let slab_bytes = (self.chunk_pages * self.redundancy().unit_bytes()) as u64;
        for f in stripes.iter().flatten() {
            for server in std::iter::once(f.server).chain(f.moving_to.map(|(s, _)| s)) {
                out[server].1 += slab_bytes;
            }
        }
        out
    }

    /// The servers holding a live fragment (or copy) of `page`.
    pub fn page_servers(&self, page: usize, out: &mut Vec<usize>) {
        out.clear();
        self.stripes
            .with(page / self.chunk_pages, |s: &Stripe| out.extend(s.iter().filter(|f| f.is_live()).map(|f| f.server)));
    }
}

/// Frees a slab, only logging a failure: the server frees it anyway when our grace period
/// runs out.
pub(crate) fn free_quietly(conn: &mut Connection, slab: SlabId) {
    if let Err(e) = conn.free_slab(slab) {
        tracing::warn!("freeing slab {:#x}: {e}", slab.0);
    }
}

/// One thread's connections to every server, opened on first use and reopened on error.
#[derive(Debug)]
pub(crate) struct Links {
    pub(crate) conns: Vec<Option<Connection>>,
    /// Connections for a read's second rounds (other fragments, or the same ones asked
    /// again), never left with a request in flight.
    pub(crate) spare: Vec<Option<Connection>>,
    pub retries: u64,
    /// Encoder and decoder of a redundant region, made on first use.
    pub(crate) coder: Option<Coder>,
    /// What this thread's redundant reads found, for the caller to count and act on.
    pub(crate) found: crate::remote::stripe::Found,
}

impl Links {
    pub fn new(servers: usize) -> Links {
        Links {
            conns: (0..servers).map(|_| None).collect(),
            spare: Vec::new(),
            retries: 0,
            coder: None,
            found: Default::default(),
        }
    }

    pub(crate) fn conn(&mut self, layout: &RemoteLayout, server: usize) -> Result<&mut Connection, ClientError> {
        if self.conns.len() <= server {
            self.conns.resize_with(server + 1, || None);
        }
        if self.conns[server].is_none() {
            self.conns[server] = Some(Connection::connect(layout.server_addr(server), layout.connect)?);
        }
        Ok(self.conns[server].as_mut().expect("just connected"))
    }

    /// Sends a read of `pages` without waiting, to be received by [`Links::finish_read`]:
    /// the fragments of each page from the servers of its stripe, pipelined with the
    /// caller's other reads.
    pub fn start_read(&mut self, layout: &RemoteLayout, pages: &[usize]) -> StripeRead {
        crate::state::lock_order::assert_none_held_from(
            crate::state::lock_order::level::CORE,
            "a read from a memory server",
        );
        self.start_stripe_read(layout, pages)
    }

    /// Receives a read started with [`Links::start_read`] into `out` (whole pages): a failed
    /// or corrupt fragment is read from the stripe's other servers and the page rebuilt; with
    /// none left, it is read again on a fresh connection, a bounded number of times.
    pub fn finish_read(&mut self, layout: &RemoteLayout, read: StripeRead, out: &mut [u8]) -> Result<(), PagerError> {
        self.finish_stripe_read(layout, read, out)
    }

    /// Retries a failed request on a fresh connection, a bounded number of times; a refusal
    /// by the server is final. On final failure the connection is dropped.
    fn retry<T>(
        &mut self,
        layout: &RemoteLayout,
        server: usize,
        what: &str,
        first: Result<T, ClientError>,
        mut again: impl FnMut(&mut Connection) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut result = first;
        let mut attempt = 1;
        while let Err(e) = &result {
            if attempt >= MAX_ATTEMPTS || matches!(e, ClientError::Refused { .. }) {
                break;
            }
            tracing::warn!("{what} {} failed ({e}); retrying", layout.server_addr(server));
            // A fresh connection also drops any answers still owed on the old one.
            self.conns[server] = None;
            self.retries += 1;
            attempt += 1;
            std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
            result = self.conn(layout, server).and_then(&mut again);
        }
        if result.is_err() {
            self.conns[server] = None;
        }
        result
    }

    /// Writes every fragment not lost of each page (and the slab a moving fragment moves
    /// to), pipelining one request per server and batch, retrying each failed batch a
    /// bounded number of times.
    pub fn write(&mut self, layout: &RemoteLayout, pages: &[(usize, &[u8])]) -> Result<(), PagerError> {
        crate::state::lock_order::assert_none_held_from(
            crate::state::lock_order::level::CORE,
            "a write to a memory server",
        );
        self.write_stripes(layout, pages)
    }

    /// Writes pages to one server, at the given places.
    pub fn write_to(
        &mut self,
        layout: &RemoteLayout,
        server: usize,
        pages: &[(PageRef, &[u8])],
    ) -> Result<(), ClientError> {
        let mut groups: Vec<Vec<(PageRef, &[u8])>> = vec![Vec::new(); server + 1];
        groups[server].extend_from_slice(pages);
        self.write_groups(layout, &groups)
    }

    fn write_groups(&mut self, layout: &RemoteLayout, groups: &[Vec<(PageRef, &[u8])>]) -> Result<(), ClientError> {
        self.write_groups_each(layout, groups).into_iter().find_map(|(_, r)| r.err()).map_or(Ok(()), Err)
    }

    /// Writes each server's group; returns the outcome per server that had a group.
    pub(crate) fn write_groups_each(
        &mut self,
        layout: &RemoteLayout,
        groups: &[Vec<(PageRef, &[u8])>],
    ) -> Vec<(usize, Result<(), ClientError>)> {
        let mut outcome: Vec<(usize, Result<(), ClientError>)> = Vec::new();
        let mut sent: Vec<(usize, usize, Result<u64, ClientError>)> = Vec::new();
        for (server, group) in groups.iter().enumerate() {
            for (b, batch) in group.chunks(MAX_BATCH_PAGES).enumerate() {
                let r = self.conn(layout, server).and_then(|c| c.send_write_pages(batch));
                sent.push((server, b, r));
            }
        }
        for (server, b, started) in sent {
            let batch = &groups[server][b * MAX_BATCH_PAGES..((b + 1) * MAX_BATCH_PAGES).min(groups[server].len())];
            let first = started.and_then(|id| match self.conns[server].as_mut() {
                Some(c) => c.recv_written(id),
                None => Err(ClientError::Protocol {
                    addr: layout.server_addr(server),
                    source: ProtocolError::ConnectionLost,
                }),
            });
            let r = self.retry(layout, server, "write to", first, |c| c.write_pages(batch));
            match outcome.iter_mut().find(|(s, _)| *s == server) {
                Some((_, prev)) => {
                    if prev.is_ok() {
                        *prev = r;
                    }
                }
                None => outcome.push((server, r)),
            }
        }
        outcome
    }
}

/// The admin connection to `server`, opened on first use.
pub(crate) fn admin_conn<'a>(
    admin: &'a mut Vec<Option<Connection>>,
    layout: &RemoteLayout,
    server: usize,
) -> Result<&'a mut Connection, ClientError> {
    if admin.len() <= server {
        admin.resize_with(server + 1, || None);
    }
    if admin[server].is_none() {
        admin[server] = Some(Connection::connect(layout.server_addr(server), layout.connect)?);
    }
    Ok(admin[server].as_mut().expect("just connected"))
}
