//! The stripes of a region: which slab on which server holds each fragment (or
//! copy) of a chunk's pages, which servers the region has lost, and the fragment reads and
//! writes behind its faults and write-backs.
//!
//! A read asks, for each page, the first `needed` live fragments of its stripe (the data
//! fragments under `ec:K+M`, the first copy under `replicate:N`), pipelined on the thread's
//! connections. A fragment that fails (error, timeout, checksum) is replaced by the stripe's
//! next live one, read on spare connections so nothing in flight is disturbed, and the page
//! is rebuilt; with fewer than `needed` left the read fails and the fault gets SIGBUS.
//! A write reaches every fragment not lost. A server whose connection is refused, whose
//! slab is gone, or that fails `MAX_ATTEMPTS` requests in a row is lost for the region: its
//! fragments are never read or written again.
//!
//! A region without redundancy is the same model at width one: each chunk a stripe of one
//! whole-page fragment. A scheme that tolerates no loss never loses a server (there is no
//! other fragment to read instead, and a server that fails for a while comes back): a
//! fragment that fails, with no other left to ask, is asked again on a fresh connection, a
//! bounded number of times (a second round goes on the spare connections, reopened where
//! a request failed), as for every scheme's last fragment.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::state::lock_order::{level, Mutex, RwLock};
use krak_client::{ClientError, Connection, ProtocolError};
use krak_proto::{ErrorCode, PageRef, SlabId, MAX_BATCH_PAGES, PAGE_SIZE};

use crate::error::{CodingError, MoveRefused, PagerError};
use crate::remote::redundancy::{Coder, Redundancy};
use crate::remote::{Links, RemoteLayout, MAX_ATTEMPTS, RETRY_PAUSE_MS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FragState {
    /// Read and written.
    Live,
    /// On a server lost for the region: neither read nor written.
    Lost,
    /// A replacement being filled by re-protection: written, not yet read.
    Rebuilding,
}

/// One slab of a stripe: fragment `i` of every page of the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frag {
    pub server: usize,
    pub slab: SlabId,
    pub state: FragState,
    /// While the fragment moves (`moves/fragment.rs`): the server and slab it moves to, written
    /// with it and read only once the move switches over.
    pub moving_to: Option<(usize, SlabId)>,
}

impl Frag {
    pub fn new(server: usize, slab: SlabId, state: FragState) -> Frag {
        Frag { server, slab, state, moving_to: None }
    }

    /// Whether this fragment, or the slab it moves to, is on `server`.
    pub fn uses(&self, server: usize) -> bool {
        self.server == server || self.moving_to.is_some_and(|(s, _)| s == server)
    }

    pub fn is_live(&self) -> bool {
        self.state == FragState::Live
    }

    /// Write-backs reach live fragments and replacements being rebuilt.
    pub fn is_written(&self) -> bool {
        self.state != FragState::Lost
    }
}

/// Fragment `i` of a chunk's pages lives in `stripe[i]`. A chunk of a region that reserves
/// on demand has an empty stripe until its first write-back reserves it (`fault/reserve.rs`):
/// no fragment to read or write, so a write to it fails (is kept and tried again) and a read
/// of it fails, never a page served from nowhere.
pub(crate) type Stripe = Vec<Frag>;

/// Every chunk's stripe, and the servers lost so far.
#[derive(Debug)]
pub(crate) struct StripeTable {
    pub scheme: Redundancy,
    stripes: RwLock<Vec<Stripe>, { level::STRIPES }>,
    /// Failed requests in a row per server (index of the layout's server table); grows
    /// when a replacement lands on a server the region did not use yet.
    failures: RwLock<Vec<AtomicU32>, { level::FAILURES }>,
    /// Servers lost for this region and why, in the order they were lost.
    lost: Mutex<Vec<(usize, String)>, { level::LOST }>,
    /// When the region last went from full redundancy to less.
    pub degraded_since: Mutex<Option<std::time::Instant>, { level::DEGRADED_SINCE }>,
    /// Failure domain of each server, when declared (empty: none known).
    domains: Vec<String>,
}

impl StripeTable {
    pub fn new(scheme: Redundancy, stripes: Vec<Stripe>, servers: usize) -> StripeTable {
        StripeTable {
            scheme,
            stripes: RwLock::new(stripes),
            failures: RwLock::new((0..servers).map(|_| AtomicU32::new(0)).collect()),
            lost: Mutex::new(Vec::new()),
            degraded_since: Mutex::new(None),
            domains: Vec::new(),
        }
    }

    /// Chunks in the table.
    pub fn len(&self) -> usize {
        self.stripes.read().len()
    }

    /// Whether `chunk` has its slabs (every chunk of a region reserved up front).
    pub fn is_reserved(&self, chunk: usize) -> bool {
        !self.stripes.read()[chunk].is_empty()
    }

    /// Chunks that have their slabs.
    pub fn reserved_chunks(&self) -> usize {
        self.stripes.read().iter().filter(|s| !s.is_empty()).count()
    }

    /// Gives unreserved `chunk` its stripe; false (nothing changed) if it has one already.
    pub fn install(&self, chunk: usize, stripe: Stripe) -> bool {
        assert_eq!(stripe.len(), self.scheme.width(), "a reserved stripe is whole");
        let mut stripes = self.stripes.write();
        if !stripes[chunk].is_empty() {
            return false;
        }
        stripes[chunk] = stripe;
        true
    }

    /// Takes `chunk`'s stripe away (the chunk unreserved again), if every fragment is live
    /// and none moves: a move or a rebuild in progress keeps the chunk reserved.
    pub fn uninstall(&self, chunk: usize) -> Option<Stripe> {
        let mut stripes = self.stripes.write();
        let stripe = &mut stripes[chunk];
        if stripe.is_empty() || stripe.iter().any(|f| !f.is_live() || f.moving_to.is_some()) {
            return None;
        }
        Some(std::mem::take(stripe))
    }

    pub fn with_domains(mut self, domains: &[String]) -> StripeTable {
        self.domains = domains.to_vec();
        self
    }

    /// The declared failure domain of each server given (empty: none declared).
    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Fragments lost and not yet replaced: (chunk, fragment index). One lost while it
    /// moves is left to its move, which fills the new slab from the other fragments.
    pub fn lost_fragments(&self) -> Vec<(usize, usize)> {
        let stripes = self.stripes.read();
        let mut out = Vec::new();
        for (c, s) in stripes.iter().enumerate() {
            let lost = s.iter().enumerate().filter(|(_, f)| f.state == FragState::Lost && f.moving_to.is_none());
            out.extend(lost.map(|(i, _)| (c, i)));
        }
        out
    }

    /// Puts `replacement` in place of fragment `frag` of `chunk` if it is still lost and
    /// its server holds no other fragment of the chunk.
    pub fn replace_lost(&self, chunk: usize, frag: usize, replacement: Frag) -> bool {
        let mut stripes = self.stripes.write();
        let stripe = &mut stripes[chunk];
        if stripe[frag].state != FragState::Lost
            || stripe[frag].moving_to.is_some()
            || stripe.iter().any(|f| f.uses(replacement.server))
        {
            return false;
        }
        stripe[frag] = replacement;
        true
    }

    /// Starts moving live fragment `frag` of `chunk` to `to` (server, slab): from now on
    /// every write of the fragment reaches `to` too. Returns the fragment as it was.
    pub fn start_move(&self, chunk: usize, frag: usize, to: (usize, SlabId)) -> Result<Frag, MoveRefused> {
        // `lost` before `stripes`, as `mark_lost` takes them
        let lost = self.lost.lock();
        if lost.iter().any(|(s, _)| *s == to.0) {
            return Err(MoveRefused::TargetLost);
        }
        let mut stripes = self.stripes.write();
        let stripe = &mut stripes[chunk];
        let Some(&f) = stripe.get(frag) else { return Err(MoveRefused::Unreserved { chunk }) };
        if f.state != FragState::Live || f.moving_to.is_some() {
            return Err(MoveRefused::NotLive { chunk, frag });
        }
        if let Some(i) = stripe.iter().position(|g| g.uses(to.0)) {
            return Err(MoveRefused::TargetHolds { chunk, held: i });
        }
        stripe[frag].moving_to = Some(to);
        Ok(f)
    }

    /// Makes the slab fragment `frag` of `chunk` moves to its home, if it still moves
    /// there; returns the fragment as it was (its old slab is the caller's to free).
    pub fn finish_move(&self, chunk: usize, frag: usize, to: (usize, SlabId)) -> Option<Frag> {
        let mut stripes = self.stripes.write();
        // A chunk moving is never given back (`uninstall`), so its stripe is whole here.
        let f = &mut stripes[chunk][frag];
        if f.moving_to != Some(to) {
            return None;
        }
        let old = *f;
        *f = Frag::new(to.0, to.1, FragState::Live);
        Some(old)
    }

    /// Gives up moving fragment `frag` of `chunk` to `to`, if it still moves there.
    pub fn cancel_move(&self, chunk: usize, frag: usize, to: (usize, SlabId)) {
        let mut stripes = self.stripes.write();
        // Empty if the move switched and the chunk was given back since.
        if let Some(f) = stripes[chunk].get_mut(frag) {
            if f.moving_to == Some(to) {
                f.moving_to = None;
            }
        }
    }

    /// Up to `limit` live fragments on `server` that are not moving: (chunk, fragment).
    pub fn fragments_on(&self, server: usize, limit: usize) -> Vec<(usize, usize)> {
        let stripes = self.stripes.read();
        let on = stripes.iter().enumerate().flat_map(|(c, s)| {
            s.iter()
                .enumerate()
                .filter(|(_, f)| f.server == server && f.is_live() && f.moving_to.is_none())
                .map(move |(i, _)| (c, i))
        });
        on.take(limit).collect()
    }

    /// Sets the state of fragment `frag` of `chunk` if it is `from`.
    pub fn transition(&self, chunk: usize, frag: usize, from: FragState, to: FragState) -> bool {
        let mut stripes = self.stripes.write();
        let f = &mut stripes[chunk][frag];
        if f.state != from {
            return false;
        }
        f.state = to;
        true
    }

    pub fn is_lost(&self, server: usize) -> bool {
        self.lost.lock().iter().any(|(s, _)| *s == server)
    }

    /// The servers the fragments of `chunk` other than `frag` use (their homes, and where
    /// they move to): where one more fragment of the stripe may not go.
    pub fn servers_of_others(&self, chunk: usize, frag: usize) -> Vec<usize> {
        self.with(chunk, |s| {
            s.iter()
                .enumerate()
                .filter(|(i, _)| *i != frag)
                .flat_map(|(_, f)| std::iter::once(f.server).chain(f.moving_to.map(|(s, _)| s)))
                .collect()
        })
    }

    pub fn with<R>(&self, chunk: usize, f: impl FnOnce(&Stripe) -> R) -> R {
        f(&self.stripes.read()[chunk])
    }

    pub fn all(&self) -> Vec<Stripe> {
        self.stripes.read().clone()
    }

    /// Servers lost for this region, in the order they were lost.
    pub fn lost_servers(&self) -> Vec<usize> {
        self.lost.lock().iter().map(|(s, _)| *s).collect()
    }

    /// Fewest live fragments of any reserved stripe (the region's worst redundancy; its
    /// width when nothing is reserved).
    pub fn min_live(&self) -> usize {
        let stripes = self.stripes.read();
        let reserved = stripes.iter().filter(|s| !s.is_empty());
        reserved.map(|s| s.iter().filter(|f| f.is_live()).count()).min().unwrap_or(self.scheme.width())
    }

    /// Marks `server` lost; true the first time. Never under a scheme that tolerates no
    /// loss: its one fragment per chunk is all there is to read.
    pub(crate) fn mark_lost(&self, server: usize, why: &str) -> bool {
        if self.scheme.tolerated_losses() == 0 {
            return false;
        }
        let mut lost = self.lost.lock();
        if lost.iter().any(|(s, _)| *s == server) {
            return false;
        }
        lost.push((server, why.to_string()));
        self.degraded_since.lock().get_or_insert_with(std::time::Instant::now);
        for stripe in self.stripes.write().iter_mut() {
            for f in stripe.iter_mut() {
                if f.server == server {
                    f.state = FragState::Lost;
                }
                // a move there fails at its next step
                if f.moving_to.is_some_and(|(s, _)| s == server) {
                    f.moving_to = None;
                }
            }
        }
        true
    }

    fn failed(&self, server: usize) -> u32 {
        if let Some(f) = self.failures.read().get(server) {
            return f.fetch_add(1, Ordering::Relaxed) + 1;
        }
        let mut failures = self.failures.write();
        if failures.len() <= server {
            failures.resize_with(server + 1, || AtomicU32::new(0));
        }
        failures[server].fetch_add(1, Ordering::Relaxed) + 1
    }

    fn succeeded(&self, server: usize) {
        if let Some(f) = self.failures.read().get(server) {
            if f.load(Ordering::Relaxed) != 0 {
                f.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// What a thread's redundant reads found since the caller last looked.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Pages read without their first copy or without all their data fragments.
    pub degraded_pages: u64,
    /// Pages with a fragment that failed its checksum: to be rewritten.
    pub corrupt_pages: Vec<usize>,
    /// Fragments that failed their checksum.
    pub corrupt_fragments: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    No,
    Asked,
    Ok,
    Failed,
    Corrupt,
    /// The server refused the request: asking again changes nothing.
    Refused,
}

#[derive(Debug)]
struct FragRequest {
    server: usize,
    /// Sent on the spare connection (a degraded round).
    spare: bool,
    started: Result<u64, ClientError>,
    /// (position in the read's pages, fragment index) of each unit asked.
    want: Vec<(usize, usize)>,
    refs: Vec<PageRef>,
}

/// A read of whole pages, sent and not yet received. Fragment `i` of the page at position
/// `pos` lands at `(pos × width + i) × unit` of the read's buffer: the caller's own where
/// stripes are one wide (each fragment is its whole page, so nothing is copied), one made
/// for the read otherwise.
#[derive(Debug)]
pub(crate) struct StripeRead {
    pages: Vec<usize>,
    /// Ask every live fragment, not just as many as a read needs (to check them all).
    every_fragment: bool,
    got: Vec<Got>,
    requests: Vec<FragRequest>,
    /// Rounds that asked failed fragments again (at most `MAX_ATTEMPTS - 1`).
    reasked: u32,
    /// The last request that failed, for the error when a page cannot be read.
    last_error: Option<ClientError>,
}

impl Links {
    pub(crate) fn start_stripe_read(&mut self, layout: &RemoteLayout, pages: &[usize]) -> StripeRead {
        self.start_stripe_read_with(layout, pages, false)
    }

    /// A read of `pages` that asks every live fragment of each (a scrub): every fragment's
    /// CRC is checked, and corrupt ones are reported in `found` like any read's.
    pub(crate) fn start_stripe_read_with(
        &mut self,
        layout: &RemoteLayout,
        pages: &[usize],
        every_fragment: bool,
    ) -> StripeRead {
        let width = layout.redundancy().width();
        let mut read = StripeRead {
            every_fragment,
            pages: pages.to_vec(),
            got: vec![Got::No; pages.len() * width],
            requests: Vec::new(),
            reasked: 0,
            last_error: None,
        };
        let mut wants = Vec::new();
        for pos in 0..pages.len() {
            choose(layout, &mut read, pos, &mut wants);
        }
        self.send_wants(layout, &mut read, wants, false);
        read
    }

    /// Receives a read started with [`Links::start_stripe_read`], replacing what failed by
    /// the stripes' other fragments, and rebuilds each page into `out`.
    pub(crate) fn finish_stripe_read(
        &mut self,
        layout: &RemoteLayout,
        mut read: StripeRead,
        out: &mut [u8],
    ) -> Result<(), PagerError> {
        let scheme = layout.redundancy();
        let (width, unit, needed) = (scheme.width(), scheme.unit_bytes(), scheme.needed());
        assert_eq!(out.len(), read.pages.len() * PAGE_SIZE, "a whole page out per page read");
        let in_place = width == 1;
        let mut own = if in_place { Vec::new() } else { vec![0u8; read.pages.len() * width * unit] };
        let mut tmp = Vec::new();
        let mut corrupt = Vec::new();
        loop {
            for rq in std::mem::take(&mut read.requests) {
                let buf = if in_place { &mut *out } else { &mut own[..] };
                self.receive(layout, &mut read, rq, buf, &mut tmp, &mut corrupt);
            }
            let mut wants = Vec::new();
            for pos in 0..read.pages.len() {
                let ok = read.got[pos * width..(pos + 1) * width].iter().filter(|g| **g == Got::Ok).count();
                if ok < needed {
                    choose(layout, &mut read, pos, &mut wants);
                }
            }
            if wants.is_empty() && read.reasked + 1 < MAX_ATTEMPTS && reask_failed(layout, &mut read) {
                // No other fragment left to ask: the failed ones again, on fresh connections.
                read.reasked += 1;
                self.retries += 1;
                std::thread::sleep(std::time::Duration::from_millis(RETRY_PAUSE_MS));
                for pos in 0..read.pages.len() {
                    choose(layout, &mut read, pos, &mut wants);
                }
            }
            if wants.is_empty() {
                break;
            }
            self.send_wants(layout, &mut read, wants, true);
        }
        let coder = self.coder.get_or_insert_with(|| Coder::new(scheme));
        let mut failed = None;
        // Pages that need decoding, grouped by which fragments they have: one decode each.
        let mut batches: std::collections::HashMap<Vec<bool>, Vec<usize>> = Default::default();
        for (pos, &page) in read.pages.iter().enumerate() {
            let got = &read.got[pos * width..(pos + 1) * width];
            let ok = got.iter().filter(|g| **g == Got::Ok).count();
            if ok < needed {
                failed.get_or_insert((page, CodingError::TooFewFragments { have: ok, needed }));
                continue;
            }
            let dst = &mut out[pos * PAGE_SIZE..(pos + 1) * PAGE_SIZE];
            let frag = |i: usize| &own[(pos * width + i) * unit..][..unit];
            match scheme {
                // the page landed where it goes
                _ if in_place => {}
                Redundancy::Ec { k, .. } if got[..k].iter().all(|g| *g == Got::Ok) => {
                    for (i, d) in dst.chunks_exact_mut(unit).enumerate() {
                        d.copy_from_slice(frag(i));
                    }
                }
                Redundancy::Ec { .. } => {
                    batches.entry(got.iter().map(|g| *g == Got::Ok).collect()).or_default().push(pos);
                }
                _ => {
                    let i = (0..width).find(|i| got[*i] == Got::Ok).expect("ok >= needed >= 1");
                    dst.copy_from_slice(frag(i));
                }
            }
            if got[..needed].iter().any(|g| *g != Got::Ok) {
                self.found.degraded_pages += 1;
            }
            let bad = got.iter().filter(|g| **g == Got::Corrupt).count();
            if bad > 0 {
                self.found.corrupt_fragments += bad as u64;
                self.found.corrupt_pages.push(page);
            }
        }
        for (have, positions) in batches {
            let shards: Vec<Vec<u8>> = (0..width)
                .map(|i| match have[i] {
                    true => positions.iter().flat_map(|p| &own[(p * width + i) * unit..][..unit]).copied().collect(),
                    false => Vec::new(),
                })
                .collect();
            match coder.decode_batch(&shards, positions.len()) {
                Ok(data) => {
                    for (j, pos) in positions.iter().enumerate() {
                        for (i, d) in out[pos * PAGE_SIZE..(pos + 1) * PAGE_SIZE].chunks_exact_mut(unit).enumerate() {
                            d.copy_from_slice(&data[i][j * unit..(j + 1) * unit]);
                        }
                    }
                }
                Err(why) => {
                    failed.get_or_insert((read.pages[positions[0]], why));
                }
            }
        }
        match failed {
            None => Ok(()),
            // Every fragment is still live: they failed to answer, which is the error.
            Some((page, _)) if self.live_fragments(layout, page) >= needed && read.last_error.is_some() => {
                Err(PagerError::Remote(read.last_error.take().expect("checked")))
            }
            Some((page, why)) => {
                let lost: Vec<String> =
                    layout.stripes.lost_servers().iter().map(|s| layout.server_addr(*s).to_string()).collect();
                let lost = if lost.is_empty() { "none".to_string() } else { lost.join(", ") };
                Err(PagerError::Unrecoverable { page, scheme, lost, source: why })
            }
        }
    }

    /// Writes every fragment not lost of each page; a server that fails its writes is lost
    /// for the region. Fails when a page is left with fewer fragments than a read needs.
    pub(crate) fn write_stripes(&mut self, layout: &RemoteLayout, pages: &[(usize, &[u8])]) -> Result<(), PagerError> {
        let scheme = layout.redundancy();
        let (width, unit) = (scheme.width(), scheme.unit_bytes());
        let mut frags = vec![0u8; pages.len() * width * unit];
        let coder = self.coder.get_or_insert_with(|| Coder::new(scheme));
        for ((_, data), out) in pages.iter().zip(frags.chunks_exact_mut(width * unit)) {
            coder.encode(data, out).map_err(PagerError::Coding)?;
        }
        let mut groups: Vec<Vec<(PageRef, &[u8])>> = vec![Vec::new(); layout.server_count()];
        for (j, (p, _)) in pages.iter().enumerate() {
            let at = (p % layout.chunk_pages) as u32;
            layout.stripes.with(p / layout.chunk_pages, |stripe| {
                for (i, f) in stripe.iter().enumerate() {
                    let unit_bytes = &frags[(j * width + i) * unit..][..unit];
                    let home = f.is_written().then_some((f.server, f.slab));
                    for (server, slab) in home.into_iter().chain(f.moving_to) {
                        // a replacement may have just landed on a server new to the region
                        if server >= groups.len() {
                            groups.resize_with(server + 1, Vec::new);
                        }
                        groups[server].push((PageRef { slab, page: at }, unit_bytes));
                    }
                }
            });
        }
        // Servers whose writes failed: lost for the region where the scheme tolerates it,
        // kept (and their pages written again later) where it does not.
        let mut failed: Vec<usize> = Vec::new();
        let mut first_error = None;
        for (server, result) in self.write_groups_each(layout, &groups) {
            match result {
                Ok(()) => layout.stripes.succeeded(server),
                Err(e) => {
                    self.lose(layout, server, &format!("write-back failed: {e}"));
                    failed.push(server);
                    first_error.get_or_insert(Box::new(e));
                }
            }
        }
        let mut short = Vec::new();
        let mut fewest = usize::MAX;
        for (p, _) in pages {
            let (written, move_missed) = layout.stripes.with(p / layout.chunk_pages, |s| {
                let written = s.iter().filter(|f| f.is_live() && !failed.contains(&f.server)).count();
                // a move the write did not reach would switch to a stale slab
                let missed = s.iter().any(|f| f.moving_to.is_some_and(|(m, _)| failed.contains(&m)));
                (written, missed)
            });
            if written < scheme.needed() || move_missed {
                short.push(*p);
                fewest = fewest.min(written);
            }
        }
        if short.is_empty() {
            return Ok(());
        }
        Err(PagerError::Unwritable { pages: short, fewest_written: fewest, scheme, source: first_error })
    }

    /// Sends the units `wants` names, one request per server and batch, on the main
    /// connections (a first round, pipelined with the caller's other reads) or on the spare
    /// ones (a degraded round, received before anything else is sent on them).
    fn send_wants(&mut self, layout: &RemoteLayout, read: &mut StripeRead, mut wants: Vec<Want>, spare: bool) {
        let unit = layout.redundancy().unit_bytes() as u32;
        wants.sort_by_key(|w| w.server);
        for same in wants.chunk_by(|a, b| a.server == b.server) {
            for batch in same.chunks(MAX_BATCH_PAGES) {
                let server = batch[0].server;
                let refs: Vec<PageRef> = batch.iter().map(|w| w.at).collect();
                let conn = if spare { self.spare_conn(layout, server) } else { self.conn(layout, server) };
                let started = conn.and_then(|c| c.send_read_units(unit, &refs));
                if started.is_err() {
                    self.drop_conn(server, spare);
                }
                let want = batch.iter().map(|w| (w.pos, w.frag)).collect();
                read.requests.push(FragRequest { server, spare, started, want, refs });
            }
        }
    }

    fn receive(
        &mut self,
        layout: &RemoteLayout,
        read: &mut StripeRead,
        rq: FragRequest,
        buf: &mut [u8],
        tmp: &mut Vec<u8>,
        corrupt: &mut Vec<usize>,
    ) {
        let width = layout.redundancy().width();
        let unit = layout.redundancy().unit_bytes();
        let n = rq.want.len();
        // Units asked for consecutive places of the buffer land there directly (always so
        // for a run of pages one fragment wide); others through `tmp`.
        let first = rq.want.first().map_or(0, |&(pos, i)| pos * width + i);
        let in_place = rq.want.iter().enumerate().all(|(j, &(pos, i))| pos * width + i == first + j);
        if !in_place {
            tmp.resize(n * unit, 0);
        }
        corrupt.clear();
        let conns = if rq.spare { &mut self.spare } else { &mut self.conns };
        let into = if in_place { &mut buf[first * unit..(first + n) * unit] } else { &mut tmp[..n * unit] };
        let result = rq.started.and_then(|id| match conns.get_mut(rq.server).and_then(|c| c.as_mut()) {
            Some(c) => c.recv_units(id, &rq.refs, into, corrupt),
            None => Err(ClientError::Protocol {
                addr: layout.server_addr(rq.server),
                source: ProtocolError::ConnectionLost,
            }),
        });
        match result {
            Ok(()) => {
                layout.stripes.succeeded(rq.server);
                for (j, &(pos, i)) in rq.want.iter().enumerate() {
                    let at = pos * width + i;
                    if corrupt.contains(&j) {
                        read.got[at] = Got::Corrupt;
                        tracing::warn!(
                            "fragment {i} of page {} from {} failed its checksum; rebuilding the page from the others",
                            read.pages[pos],
                            layout.server_addr(rq.server)
                        );
                    } else {
                        read.got[at] = Got::Ok;
                        if !in_place {
                            buf[at * unit..(at + 1) * unit].copy_from_slice(&tmp[j * unit..(j + 1) * unit]);
                        }
                    }
                }
            }
            Err(e) => {
                let got = if matches!(e, ClientError::Refused { .. }) { Got::Refused } else { Got::Failed };
                for &(pos, i) in &rq.want {
                    read.got[pos * width + i] = got;
                }
                self.drop_conn(rq.server, rq.spare);
                tracing::warn!(
                    "reading fragments from {} failed ({e}); reading others or asking again",
                    layout.server_addr(rq.server)
                );
                self.note_failure(layout, rq.server, &e);
                read.last_error = Some(e);
            }
        }
    }

    fn spare_conn(&mut self, layout: &RemoteLayout, server: usize) -> Result<&mut Connection, ClientError> {
        if self.spare.len() <= server {
            self.spare.resize_with(server + 1, || None);
        }
        if self.spare[server].is_none() {
            self.spare[server] = Some(Connection::connect(layout.server_addr(server), layout.connect)?);
        }
        Ok(self.spare[server].as_mut().expect("just connected"))
    }

    fn drop_conn(&mut self, server: usize, spare: bool) {
        let conns = if spare { &mut self.spare } else { &mut self.conns };
        if let Some(c) = conns.get_mut(server) {
            *c = None;
        }
    }

    /// Counts a failed request; a refused connection, a vanished slab or `MAX_ATTEMPTS`
    /// failures in a row lose the server for the region.
    fn note_failure(&mut self, layout: &RemoteLayout, server: usize, e: &ClientError) {
        let fatal = matches!(e, ClientError::Connect { .. })
            || matches!(e.code(), Some(ErrorCode::UnknownSlab | ErrorCode::WrongUnitSize | ErrorCode::PageOutOfRange));
        // An answer out of order is this thread's doing (a request it gave up on), not the server's.
        let counts = !matches!(e, ClientError::Protocol { .. });
        if fatal || (counts && layout.stripes.failed(server) >= MAX_ATTEMPTS) {
            self.lose(layout, server, &e.to_string());
        }
    }

    fn lose(&mut self, layout: &RemoteLayout, server: usize, why: &str) {
        lose(layout, server, why);
        self.drop_conn(server, false);
        self.drop_conn(server, true);
    }

    fn live_fragments(&self, layout: &RemoteLayout, page: usize) -> usize {
        layout.stripes.with(page / layout.chunk_pages, |s| s.iter().filter(|f| f.is_live()).count())
    }
}

/// Makes the failed (not refused) live fragments of every page still short of what a read
/// needs askable again; true if there was one.
fn reask_failed(layout: &RemoteLayout, read: &mut StripeRead) -> bool {
    let (width, needed) = (layout.redundancy().width(), layout.redundancy().needed());
    let mut any = false;
    for pos in 0..read.pages.len() {
        let got = &mut read.got[pos * width..(pos + 1) * width];
        if got.iter().filter(|g| **g == Got::Ok).count() >= needed {
            continue;
        }
        layout.stripes.with(read.pages[pos] / layout.chunk_pages, |stripe| {
            for (i, f) in stripe.iter().enumerate() {
                if f.is_live() && matches!(got[i], Got::Failed | Got::Corrupt) {
                    got[i] = Got::No;
                    any = true;
                }
            }
        });
    }
    any
}

/// Loses `server` for the region (once), logging why; false if it was lost already or the
/// scheme keeps every server (see [`StripeTable::mark_lost`]).
pub(crate) fn lose(layout: &RemoteLayout, server: usize, why: &str) -> bool {
    if layout.stripes.mark_lost(server, why) {
        let scheme = layout.redundancy();
        let lost = layout.stripes.lost_servers().len();
        tracing::error!(
            "memory server {} is lost for this region ({why}): its fragments are no longer read or written; \
             {lost} server(s) lost, {scheme} tolerates {} at a time",
            layout.server_addr(server),
            scheme.tolerated_losses()
        );
        return true;
    }
    false
}

/// One unit to read: fragment `frag` of the page at `pos`, at `at` on `server`.
#[derive(Debug, Clone, Copy)]
struct Want {
    server: usize,
    pos: usize,
    frag: usize,
    at: PageRef,
}

/// Asks for as many more live fragments of the page at `pos` as a read still needs, in
/// stripe order (data fragments first); fewer when the stripe has no more.
fn choose(layout: &RemoteLayout, read: &mut StripeRead, pos: usize, wants: &mut Vec<Want>) {
    let scheme = layout.redundancy();
    let width = scheme.width();
    let page = read.pages[pos];
    let got = &mut read.got[pos * width..(pos + 1) * width];
    let wanted = if read.every_fragment { width } else { scheme.needed() };
    let mut missing = wanted.saturating_sub(got.iter().filter(|g| matches!(g, Got::Ok | Got::Asked)).count());
    let at = (page % layout.chunk_pages) as u32;
    layout.stripes.with(page / layout.chunk_pages, |stripe| {
        for (i, f) in stripe.iter().enumerate() {
            if missing == 0 {
                break;
            }
            if got[i] == Got::No && f.is_live() {
                got[i] = Got::Asked;
                wants.push(Want { server: f.server, pos, frag: i, at: PageRef { slab: f.slab, page: at } });
                missing -= 1;
            }
        }
    });
}
