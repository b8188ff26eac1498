//! Placement over a list of servers. A region given servers rather than a controller decides
//! where each fragment goes with the policies the controller uses (`krak-placement`), on a
//! view it fills from the servers' own stats: a stripe per chunk when it is made, the
//! replacement of a lost fragment, and the new home of a drained one. The fragments of a
//! chunk go to distinct servers, and to new failure domains while there are any.

use std::sync::Arc;

use krak_api::{RegionId, ServerId, ServerState};
use krak_client::{ClientError, Connection};
use krak_placement::stripe::choose_fragment;
use krak_placement::{PlacementPolicy, PlacementView, SlotSize};
use krak_proto::{ServerStats, SlabId, PAGE_SIZE};

use crate::error::PagerError;
use crate::remote::redundancy::Redundancy;
use crate::remote::stripe::{Frag, FragState, Stripe};
use crate::remote::{admin_conn, free_quietly, RemoteLayout};

/// The policy a region given a list of servers places with unless told otherwise: it puts
/// each fragment where the region has the fewest (per failure domain, then per server, then
/// by free memory, then by position in the list), so a region spreads evenly over its list
/// in a fixed order, as it always has.
pub const DEFAULT_LIST_POLICY: &str = "domain-spread";

/// The policy called `name`, for a region given a list of servers.
pub(crate) fn policy_by_name(name: &str) -> Result<Arc<dyn PlacementPolicy>, PagerError> {
    krak_placement::by_name(name).map(Arc::from).ok_or_else(|| PagerError::UnknownPolicy { name: name.to_string() })
}

/// The one region a list's view holds.
const REGION: RegionId = RegionId(1);

/// Server `index` of the region's server table, as the view names it.
fn server_id(index: usize) -> ServerId {
    ServerId(index as u32 + 1)
}

fn index_of(id: ServerId) -> usize {
    id.0 as usize - 1
}

/// What one of the region's slabs is to a server: a slab of `chunk_pages` pages, costing
/// `chunk_pages` units of the scheme.
fn slot(chunk_pages: usize, scheme: Redundancy) -> SlotSize {
    SlotSize { slab_bytes: (chunk_pages * PAGE_SIZE) as u64, cost_bytes: (chunk_pages * scheme.unit_bytes()) as u64 }
}

/// A view of the servers `stats` describes (`None`: lost, or did not answer; never
/// chosen), with the region's slabs `held` on them (server indices, repeats allowed; their
/// bytes are already in the servers' lent bytes).
fn view(domains: &[String], stats: &[Option<ServerStats>], held: &[usize], slot: SlotSize) -> PlacementView {
    let mut v = PlacementView::default();
    v.add_region(REGION, slot);
    let mut mine = vec![0u64; stats.len()];
    for &s in held.iter().filter(|s| **s < stats.len()) {
        mine[s] += 1;
    }
    for (i, st) in stats.iter().enumerate() {
        let domain = domains.get(i).map_or("", String::as_str);
        let (state, capacity, free) = match st {
            Some(st) => {
                let free = st.capacity_bytes.saturating_sub(st.lent_bytes) + mine[i] * slot.cost_bytes;
                (ServerState::Alive, st.capacity_bytes, free.min(st.capacity_bytes))
            }
            None => (ServerState::Dead, 0, 0),
        };
        // Every server's slabs hold a chunk: the region's chunk is the smallest slab given.
        v.upsert_server(server_id(i), domain, state, capacity, free, slot.slab_bytes);
    }
    for &s in held.iter().filter(|s| **s < stats.len()) {
        v.add_slab(REGION, server_id(s));
    }
    v
}

/// The view of a region in use: every server of its table that is not lost and answers a
/// stats request, with the slabs its stripes hold (moves' targets too).
pub(crate) fn current_view(admin: &mut Vec<Option<Connection>>, layout: &RemoteLayout) -> PlacementView {
    let stats: Vec<Option<ServerStats>> = (0..layout.server_count())
        .map(|s| {
            if layout.stripes.is_lost(s) {
                return None;
            }
            let got = admin_conn(admin, layout, s).and_then(|c| c.stats());
            if got.is_err() {
                admin[s] = None;
            }
            got.ok()
        })
        .collect();
    let held: Vec<usize> = layout
        .stripes
        .all()
        .iter()
        .flatten()
        .flat_map(|f| std::iter::once(f.server).chain(f.moving_to.map(|(s, _)| s)))
        .collect();
    view(layout.stripes.domains(), &stats, &held, slot(layout.chunk_pages, layout.redundancy()))
}

/// Why no fragment was placed.
#[derive(Debug)]
pub(crate) enum NotPlaced {
    /// No server qualifies and has room (`refused`: the last server that said it was full,
    /// by its index, and its answer).
    NoRoom { refused: Option<(usize, ClientError)> },
    /// `server` failed otherwise when asked to lend the slab.
    Failed { server: usize, source: ClientError },
}

/// Chooses a server for one more fragment of a stripe whose others are on `taken`, never
/// one of `exclude`, and has it lend the slab (`lend`). A server that refuses for lack of
/// room is full from then on in `view`; each turn fills one, so this ends.
pub(crate) fn place_fragment(
    policy: &dyn PlacementPolicy,
    view: &mut PlacementView,
    mut lend: impl FnMut(usize) -> Result<SlabId, ClientError>,
    taken: &[usize],
    exclude: &[usize],
) -> Result<(usize, SlabId), NotPlaced> {
    let mut refused = None;
    loop {
        let Some(server) = choose_server(policy, view, taken, exclude) else {
            return Err(NotPlaced::NoRoom { refused });
        };
        match lend(server) {
            Ok(slab) => {
                view.add_slab(REGION, server_id(server));
                return Ok((server, slab));
            }
            Err(e) if e.is_no_capacity() => {
                view.set_free(server_id(server), 0);
                refused = Some((server, e));
            }
            Err(source) => return Err(NotPlaced::Failed { server, source }),
        }
    }
}

/// Moves one of the region's slabs from server `from` to server `to` in `view`.
pub(crate) fn moved(view: &mut PlacementView, from: usize, to: usize) {
    view.remove_slab(REGION, server_id(from));
    view.add_slab(REGION, server_id(to));
}

/// The server `policy` chooses in `view` for a fragment of a stripe whose others are on
/// `taken`, not one of `exclude`, without allocating (a move allocates on its own).
pub(crate) fn choose_server(
    policy: &dyn PlacementPolicy,
    view: &PlacementView,
    taken: &[usize],
    exclude: &[usize],
) -> Option<usize> {
    let taken: Vec<ServerId> = taken.iter().map(|s| server_id(*s)).collect();
    let exclude: Vec<ServerId> = exclude.iter().map(|s| server_id(*s)).collect();
    choose_fragment(policy, view, REGION, &taken, &exclude).ok().map(index_of)
}

/// Allocates a stripe of `width` slabs on distinct servers for each chunk, where `policy`
/// chooses; frees all of them on failure.
pub(crate) fn allocate(
    policy: &dyn PlacementPolicy,
    admin: &mut [Connection],
    domains: &[String],
    n_chunks: usize,
    chunk_pages: usize,
    scheme: Redundancy,
) -> Result<Vec<Stripe>, PagerError> {
    let (n, width, unit) = (admin.len(), scheme.width(), scheme.unit_bytes());
    if n < width {
        return Err(PagerError::TooFewServers { scheme, servers: n });
    }
    let mut stats = Vec::with_capacity(n);
    for conn in admin.iter_mut() {
        stats.push(Some(conn.stats()?));
    }
    let mut view = view(domains, &stats, &[], slot(chunk_pages, scheme));
    let mut stripes: Vec<Stripe> = Vec::with_capacity(n_chunks);
    for c in 0..n_chunks {
        // The fragment placed first rotates with the chunk, so that data and parity
        // fragments (and the first replicas, which reads prefer) spread over every server.
        let mut slots: Vec<Option<Frag>> = vec![None; width];
        for j in 0..width {
            let taken: Vec<usize> = slots.iter().flatten().map(|f| f.server).collect();
            let lend = |s: usize| admin[s].alloc_slab_units(unit as u32);
            match place_fragment(policy, &mut view, lend, &taken, &[]) {
                Ok((server, slab)) => slots[(c + j) % width] = Some(Frag::new(server, slab, FragState::Live)),
                Err(e) => {
                    stripes.push(slots.into_iter().flatten().collect());
                    for f in stripes.iter().flatten() {
                        free_quietly(&mut admin[f.server], f.slab);
                    }
                    let per_chunk = (chunk_pages * unit * width) as u64;
                    return Err(match e {
                        NotPlaced::NoRoom { .. } => PagerError::RackFull {
                            needed_bytes: n_chunks as u64 * per_chunk,
                            got_bytes: c as u64 * per_chunk,
                            servers: n,
                        },
                        NotPlaced::Failed { source, .. } => PagerError::Remote(source),
                    });
                }
            }
        }
        let stripe: Stripe = slots.into_iter().flatten().collect();
        stripes.push(stripe);
    }
    Ok(stripes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(capacity_chunks: u64, lent_chunks: u64) -> Option<ServerStats> {
        let chunk = (64 * PAGE_SIZE) as u64;
        Some(ServerStats {
            capacity_bytes: capacity_chunks * chunk,
            lent_bytes: lent_chunks * chunk,
            slab_size_bytes: chunk,
            ..ServerStats::default()
        })
    }

    /// Places `chunks` stripes on a view, lending from counters of free slabs per server.
    fn place(policy: &str, v: &mut PlacementView, free: &mut [u64], chunks: usize, width: usize) -> Vec<Vec<usize>> {
        let policy = policy_by_name(policy).unwrap();
        let mut out = Vec::new();
        for _ in 0..chunks {
            let mut stripe = Vec::new();
            while stripe.len() < width {
                let lend = |s: usize| {
                    if free[s] == 0 {
                        return Err(ClientError::Refused {
                            addr: "127.0.0.1:1".parse().unwrap(),
                            op: "alloc_slab",
                            code: krak_proto::ErrorCode::NoCapacity as u16,
                            message: "full".into(),
                        });
                    }
                    free[s] -= 1;
                    Ok(SlabId(s as u64, 0))
                };
                let (s, _) = place_fragment(&*policy, v, lend, &stripe, &[]).unwrap();
                stripe.push(s);
            }
            out.push(stripe);
        }
        out
    }

    #[test]
    fn the_default_policy_spreads_a_list_in_order() {
        let slot = slot(64, Redundancy::None);
        let mut v = view(&[], &[stats(10, 0), stats(10, 0), stats(10, 0)], &[], slot);
        let got = place(DEFAULT_LIST_POLICY, &mut v, &mut [10, 10, 10], 6, 1);
        assert_eq!(got, vec![vec![0], vec![1], vec![2], vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn stripes_take_distinct_servers_and_new_domains_first() {
        let domains: Vec<String> = ["a", "a", "b", "b"].iter().map(|s| s.to_string()).collect();
        let scheme = Redundancy::Replicate { n: 2 };
        let all = [stats(10, 0), stats(10, 0), stats(10, 0), stats(10, 0)];
        for policy in krak_placement::POLICY_NAMES {
            let mut v = view(&domains, &all, &[], slot(64, scheme));
            for stripe in place(policy, &mut v, &mut [10, 10, 10, 10], 8, 2) {
                assert_ne!(domains[stripe[0]], domains[stripe[1]], "{policy}: {stripe:?}");
            }
        }
    }

    #[test]
    fn stale_stats_and_lost_servers_are_worked_around() {
        // server 1 says it has room but lends nothing; server 2 is lost
        let slot = slot(64, Redundancy::None);
        let mut v = view(&[], &[stats(10, 0), stats(10, 0), None], &[], slot);
        let got = place(DEFAULT_LIST_POLICY, &mut v, &mut [3, 0, 10], 3, 1);
        assert_eq!(got, vec![vec![0], vec![0], vec![0]]);
        let policy = policy_by_name(DEFAULT_LIST_POLICY).unwrap();
        let r = place_fragment(&*policy, &mut v, |_| unreachable!("nothing has room"), &[], &[0]);
        assert!(matches!(r, Err(NotPlaced::NoRoom { .. })), "{r:?}");
    }

    #[test]
    fn held_slabs_count_for_their_servers_and_not_twice_against_free_memory() {
        // server 0 already holds 4 of the region's slabs, all of its lent memory
        let slot = slot(64, Redundancy::None);
        let v = view(&[], &[stats(10, 4), stats(10, 0)], &[0, 0, 0, 0], slot);
        assert_eq!(v.server(server_id(0)).unwrap().free_bytes, 6 * slot.cost_bytes);
        assert_eq!(v.region(REGION).unwrap().on_server(0), 4);
        let policy = policy_by_name(DEFAULT_LIST_POLICY).unwrap();
        assert_eq!(choose_server(&*policy, &v, &[], &[]), Some(1));
        assert!(matches!(policy_by_name("nope"), Err(PagerError::UnknownPolicy { .. })));
    }
}
