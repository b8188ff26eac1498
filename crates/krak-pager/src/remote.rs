//! Where each page of a region lives remotely, and the connections that move it there.

use std::net::SocketAddr;
use std::time::Duration;

use parking_lot::RwLock;

use krak_client::{ClientError, ConnectOptions, Connection};
use krak_proto::{PageRef, SlabId, MAX_BATCH_PAGES, PAGE_SIZE};

use crate::PagerError;

/// Attempts per request before the pager gives up on a page (each with a fresh connection).
const MAX_ATTEMPTS: u32 = 3;
const RETRY_PAUSE_MS: u64 = 50;

/// Where a chunk's pages live: one slab on one server, and, while the chunk moves, the
/// slab on the server it moves to (which every write-back then also reaches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkHome {
    pub server: usize,
    pub slab: SlabId,
    pub moving_to: Option<(usize, SlabId)>,
}

/// The region is cut into chunks of one slab each; chunk `c` starts on server `c % n`, so
/// a region's pages are spread over every server it was given. Chunks can move to other
/// servers while the region is in use (see `migrate.rs`), so both tables are behind locks.
#[derive(Debug)]
pub(crate) struct RemoteLayout {
    pub connect: ConnectOptions,
    pub chunk_pages: usize,
    servers: RwLock<Vec<SocketAddr>>,
    chunks: RwLock<Vec<ChunkHome>>,
}

impl RemoteLayout {
    /// Allocates slabs for a whole region up front, so that a full rack is reported when the
    /// region is made, not when a page is evicted.
    pub fn allocate(
        servers: &[SocketAddr],
        region_pages: usize,
        connect: ConnectOptions,
    ) -> Result<(RemoteLayout, Vec<Connection>), PagerError> {
        let mut admin = Vec::with_capacity(servers.len());
        for addr in servers {
            admin.push(Connection::connect(*addr, connect).map_err(PagerError::Remote)?);
        }
        let chunk_pages = admin.iter().map(|c| c.slab_pages() as usize).min().ok_or(PagerError::NoServers)?;
        let n_chunks = region_pages.div_ceil(chunk_pages);
        let mut chunks = Vec::with_capacity(n_chunks);
        for c in 0..n_chunks {
            match allocate_chunk(&mut admin, c % servers.len()) {
                Ok((server, slab)) => chunks.push(ChunkHome { server, slab, moving_to: None }),
                Err(e) => {
                    for home in chunks {
                        free_quietly(&mut admin[home.server], home.slab);
                    }
                    return Err(match e {
                        e if e.is_no_capacity() => PagerError::RackFull {
                            needed_bytes: (n_chunks * chunk_pages * PAGE_SIZE) as u64,
                            got_bytes: (c * chunk_pages * PAGE_SIZE) as u64,
                            servers: servers.len(),
                        },
                        e => PagerError::Remote(e),
                    });
                }
            }
        }
        let layout =
            RemoteLayout { connect, chunk_pages, servers: RwLock::new(servers.to_vec()), chunks: RwLock::new(chunks) };
        Ok((layout, admin))
    }

    /// A layout whose chunks were placed elsewhere (by the controller).
    pub fn from_parts(
        connect: ConnectOptions,
        chunk_pages: usize,
        servers: Vec<SocketAddr>,
        chunks: Vec<ChunkHome>,
    ) -> RemoteLayout {
        RemoteLayout { connect, chunk_pages, servers: RwLock::new(servers), chunks: RwLock::new(chunks) }
    }

    /// Where to read `page` from.
    pub fn locate(&self, page: usize) -> (usize, PageRef) {
        let home = self.chunks.read()[page / self.chunk_pages];
        (home.server, PageRef { slab: home.slab, page: (page % self.chunk_pages) as u32 })
    }

    /// Where a write of `page` must go: its home, and the chunk's new home while it moves.
    pub fn write_targets(&self, page: usize) -> [Option<(usize, PageRef)>; 2] {
        let home = self.chunks.read()[page / self.chunk_pages];
        let at = (page % self.chunk_pages) as u32;
        [
            Some((home.server, PageRef { slab: home.slab, page: at })),
            home.moving_to.map(|(server, slab)| (server, PageRef { slab, page: at })),
        ]
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
        self.chunks.read().len()
    }

    pub fn chunk(&self, chunk: usize) -> ChunkHome {
        self.chunks.read()[chunk]
    }

    pub fn set_chunk(&self, chunk: usize, home: ChunkHome) {
        self.chunks.write()[chunk] = home;
    }

    /// Up to `limit` chunks whose home is the server at `addr`, in chunk order.
    pub fn chunks_on(&self, addr: SocketAddr, limit: usize) -> Vec<usize> {
        let server = self.server_index(addr);
        let chunks = self.chunks.read();
        (0..chunks.len()).filter(|c| chunks[*c].server == server).take(limit).collect()
    }

    pub fn chunks(&self) -> Vec<ChunkHome> {
        self.chunks.read().clone()
    }

    /// Bytes of slabs this region holds on each server.
    pub fn bytes_per_server(&self) -> Vec<(SocketAddr, u64)> {
        let mut out: Vec<(SocketAddr, u64)> = self.servers().into_iter().map(|a| (a, 0)).collect();
        for home in self.chunks.read().iter() {
            out[home.server].1 += (self.chunk_pages * PAGE_SIZE) as u64;
        }
        out
    }
}

/// Frees a slab, only logging a failure: the server frees it anyway when our grace period
/// runs out.
pub(crate) fn free_quietly(conn: &mut Connection, slab: SlabId) {
    if let Err(e) = conn.free_slab(slab) {
        tracing::warn!("freeing slab {:#x}: {e}", slab.0);
    }
}

fn allocate_chunk(admin: &mut [Connection], preferred: usize) -> Result<(usize, SlabId), ClientError> {
    let mut last = None;
    for k in 0..admin.len() {
        let server = (preferred + k) % admin.len();
        match admin[server].alloc_slab() {
            Ok(slab) => return Ok((server, slab)),
            Err(e) if e.is_no_capacity() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one server was asked"))
}

/// One thread's connections to every server, opened on first use and reopened on error.
#[derive(Debug)]
pub(crate) struct Links {
    conns: Vec<Option<Connection>>,
    refs: Vec<PageRef>,
    pub retries: u64,
}

impl Links {
    pub fn new(servers: usize) -> Links {
        Links { conns: (0..servers).map(|_| None).collect(), refs: Vec::new(), retries: 0 }
    }

    fn conn(&mut self, layout: &RemoteLayout, server: usize) -> Result<&mut Connection, ClientError> {
        if self.conns.len() <= server {
            self.conns.resize_with(server + 1, || None);
        }
        if self.conns[server].is_none() {
            self.conns[server] = Some(Connection::connect(layout.server_addr(server), layout.connect)?);
        }
        Ok(self.conns[server].as_mut().expect("just connected"))
    }

    /// Sends a read of `pages` (all on one server, at most a batch) without waiting; returns
    /// the request id for [`Links::finish_read`].
    pub fn start_read(&mut self, layout: &RemoteLayout, server: usize, pages: &[usize]) -> Result<u64, ClientError> {
        self.refs.clear();
        self.refs.extend(pages.iter().map(|p| layout.locate(*p).1));
        let refs = std::mem::take(&mut self.refs);
        let sent = self.conn(layout, server).and_then(|c| c.send_read_pages(&refs));
        self.refs = refs;
        if sent.is_err() {
            self.conns[server] = None;
        }
        sent
    }

    /// Receives a read started with [`Links::start_read`]; on error the read is retried
    /// synchronously on a fresh connection, a bounded number of times.
    pub fn finish_read(
        &mut self,
        layout: &RemoteLayout,
        server: usize,
        started: Result<u64, ClientError>,
        pages: &[usize],
        out: &mut [u8],
    ) -> Result<(), ClientError> {
        self.refs.clear();
        self.refs.extend(pages.iter().map(|p| layout.locate(*p).1));
        let refs = std::mem::take(&mut self.refs);
        let first = started.and_then(|id| self.conn(layout, server)?.recv_pages(id, &refs, out));
        let result = self.retry(layout, server, "read from", first, |c| c.read_pages(&refs, out));
        self.refs = refs;
        result
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

    /// Writes pages to every place they must go (see [`RemoteLayout::write_targets`]),
    /// pipelining one request per server and batch, retrying each failed batch a bounded
    /// number of times.
    pub fn write(&mut self, layout: &RemoteLayout, pages: &[(usize, &[u8])]) -> Result<(), ClientError> {
        let mut groups: Vec<Vec<(PageRef, &[u8])>> = vec![Vec::new(); layout.server_count()];
        for (p, data) in pages {
            for (server, at) in layout.write_targets(*p).into_iter().flatten() {
                groups[server].push((at, data));
            }
        }
        self.write_groups(layout, &groups)
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
        let mut sent: Vec<(usize, usize, Result<u64, ClientError>)> = Vec::new();
        for (server, group) in groups.iter().enumerate() {
            for (b, batch) in group.chunks(MAX_BATCH_PAGES).enumerate() {
                let r = self.conn(layout, server).and_then(|c| c.send_write_pages(batch));
                sent.push((server, b, r));
            }
        }
        let mut result = Ok(());
        for (server, b, started) in sent {
            let batch = &groups[server][b * MAX_BATCH_PAGES..((b + 1) * MAX_BATCH_PAGES).min(groups[server].len())];
            let first = started.and_then(|id| match self.conns[server].as_mut() {
                Some(c) => c.recv_written(id),
                None => {
                    Err(ClientError::Protocol { addr: layout.server_addr(server), detail: "connection lost".into() })
                }
            });
            if let Err(e) = self.retry(layout, server, "write to", first, |c| c.write_pages(batch)) {
                result = Err(e);
            }
        }
        result
    }
}
