//! Stripes: a region with redundancy keeps each chunk as `stripe_width` fragments (replicas,
//! or the data and parity fragments of an erasure code), each in its own slot of the slab
//! map (slot = chunk × width + fragment). Losing one server may cost a stripe at most one
//! fragment, so the fragments of a chunk go to distinct servers, and to distinct failure
//! domains while there are enough of them: `krak_placement::stripe` chooses each fragment,
//! one at a time, the policy choosing among the servers that qualify.

use std::collections::HashMap;

use crate::model::{ChunkMap, RegionRecord, ServerId};
use krak_api::messages::CommitChunk;
use krak_placement::stripe::choose_fragment;
use krak_placement::{PlacementError, PlacementPolicy, PlacementView};

/// Servers for `slots` of `region` (its map is `map`): each avoids `exclude`, the servers
/// holding the other fragments of its stripe (placed, or chosen earlier in this call) and,
/// if it can, their domains. All or nothing.
pub(crate) fn place_slots(
    policy: &dyn PlacementPolicy,
    view: &PlacementView,
    region: &RegionRecord,
    map: &ChunkMap,
    slots: &[u64],
    exclude: &[ServerId],
) -> Result<Vec<ServerId>, PlacementError> {
    if region.stripe_width <= 1 {
        return policy.choose(view, region.id, slots.len(), exclude);
    }
    let slot_bytes = region.slot_cost_bytes();
    let mut chosen: HashMap<u64, ServerId> = HashMap::new();
    let mut planned: HashMap<ServerId, u64> = HashMap::new();
    let mut out = Vec::with_capacity(slots.len());
    for (placed, &slot) in slots.iter().enumerate() {
        let taken: Vec<ServerId> = region
            .stripe_of(slot)
            .filter(|&s| s != slot)
            .filter_map(|s| chosen.get(&s).copied().or_else(|| map.get(s).map(|p| p.server)))
            .collect();
        // servers this call already filled up (a policy only plans within one call)
        let full = planned.iter().filter(|(id, n)| {
            view.server(**id).is_none_or(|s| s.free_bytes.saturating_sub(**n * slot_bytes) < slot_bytes)
        });
        let avoid: Vec<ServerId> = exclude.iter().chain(full.map(|(id, _)| id)).copied().collect();
        let server = match choose_fragment(policy, view, region.id, &taken, &avoid) {
            Ok(server) => server,
            Err(PlacementError::NoCapacity { .. }) => {
                return Err(PlacementError::NoCapacity { wanted: slots.len(), placed });
            }
            Err(e) => return Err(e),
        };
        chosen.insert(slot, server);
        *planned.entry(server).or_default() += 1;
        out.push(server);
    }
    Ok(out)
}

/// Two fragments of one stripe on one server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("slots {slot} and {other} are fragments of chunk {chunk} and cannot share server {server}")]
pub struct StripeClash {
    pub slot: u64,
    pub other: u64,
    pub chunk: u64,
    pub server: ServerId,
}

/// Checks that after `commits` every stripe they touch still has its fragments on distinct
/// servers; the first clash.
pub(crate) fn check_distinct(
    region: &RegionRecord,
    map: &ChunkMap,
    commits: &[CommitChunk],
) -> Result<(), StripeClash> {
    if region.stripe_width <= 1 {
        return Ok(());
    }
    let new: HashMap<u64, ServerId> = commits.iter().map(|c| (c.chunk, c.server)).collect();
    for c in commits {
        let stripe = region.stripe_of(c.chunk);
        let first = stripe.start;
        for other in stripe.filter(|&s| s != c.chunk) {
            let server = new.get(&other).copied().or_else(|| map.get(other).map(|p| p.server));
            if server == Some(c.server) {
                return Err(StripeClash {
                    slot: c.chunk,
                    other,
                    chunk: first / u64::from(region.stripe_width),
                    server: c.server,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Placement, RegionId, ServerState};
    use krak_placement::{by_name, POLICY_NAMES};

    const CHUNK: u64 = 1 << 20;

    /// `n` servers of 100 free chunks, server `i` (from 1) in domain `domains[i-1]`, and a
    /// region of `chunks` chunks `width` wide.
    fn setup(domains: &[&str], chunks: u64, width: u32) -> (PlacementView, RegionRecord) {
        let mut v = PlacementView::default();
        for (i, d) in domains.iter().enumerate() {
            v.upsert_server(ServerId(i as u32 + 1), d, ServerState::Alive, 100 * CHUNK, 100 * CHUNK, CHUNK);
        }
        v.add_region(RegionId(1), krak_placement::SlotSize::whole(CHUNK));
        let region = RegionRecord {
            id: RegionId(1),
            owner: String::new(),
            size_bytes: chunks * CHUNK,
            local_budget_bytes: 0,
            chunk_bytes: CHUNK,
            created_unix_ms: 0,
            stripe_width: width,
            redundancy: format!("test:{width}"),
            slot_bytes: 0,
        };
        (v, region)
    }

    fn domains_of(v: &PlacementView, servers: &[ServerId]) -> Vec<String> {
        servers.iter().map(|s| v.domains()[v.server(*s).unwrap().domain as usize].name.clone()).collect()
    }

    #[test]
    fn fragments_of_a_chunk_get_distinct_servers_and_domains() {
        let names: Vec<String> = (0..12).map(|i| format!("d{}", i % 6)).collect();
        let domains: Vec<&str> = names.iter().map(String::as_str).collect();
        for policy in POLICY_NAMES {
            let policy = by_name(policy).unwrap();
            let (v, region) = setup(&domains, 8, 6);
            let slots: Vec<u64> = (0..region.slots()).collect();
            let servers = place_slots(&*policy, &v, &region, &ChunkMap::default(), &slots, &[]).unwrap();
            for stripe in servers.chunks(6) {
                let mut s = stripe.to_vec();
                s.sort();
                s.dedup();
                assert_eq!(s.len(), 6, "{}: distinct servers {stripe:?}", policy.name());
                let mut d = domains_of(&v, stripe);
                d.sort();
                d.dedup();
                assert_eq!(d.len(), 6, "{}: distinct domains {stripe:?}", policy.name());
            }
        }
    }

    #[test]
    fn too_few_domains_still_gives_distinct_servers_and_too_few_servers_is_an_error() {
        let (v, region) = setup(&["a", "a", "b", "b", "", ""], 3, 6);
        let slots: Vec<u64> = (0..region.slots()).collect();
        let servers =
            place_slots(&*by_name("spread").unwrap(), &v, &region, &ChunkMap::default(), &slots, &[]).unwrap();
        for stripe in servers.chunks(6) {
            let mut s = stripe.to_vec();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), 6, "{stripe:?}");
        }
        let r = place_slots(&*by_name("spread").unwrap(), &v, &region, &ChunkMap::default(), &slots, &[ServerId(6)]);
        assert_eq!(r, Err(PlacementError::NoCapacity { wanted: 18, placed: 5 }));
    }

    #[test]
    fn a_lost_fragment_is_replaced_off_the_stripe() {
        let (mut v, region) = setup(&["a", "b", "c", "d", "e"], 1, 4);
        let mut map = ChunkMap::default();
        for f in 0..4u64 {
            map.set(f, Placement { server: ServerId(f as u32 + 1), slab: f, epoch: 1 });
            v.add_slab(RegionId(1), ServerId(f as u32 + 1));
        }
        // server 2 dies: its fragment (slot 1) must go to the one server the stripe lacks
        v.upsert_server(ServerId(2), "b", ServerState::Dead, 100 * CHUNK, 99 * CHUNK, CHUNK);
        for policy in POLICY_NAMES {
            let policy = by_name(policy).unwrap();
            let got = place_slots(&*policy, &v, &region, &map, &[1], &[ServerId(2)]).unwrap();
            assert_eq!(got, vec![ServerId(5)], "{}", policy.name());
        }
        let clash = [CommitChunk { chunk: 1, server: ServerId(3), slab: 9 }];
        assert!(matches!(check_distinct(&region, &map, &clash), Err(StripeClash { server: ServerId(3), .. })));
        let ok = [CommitChunk { chunk: 1, server: ServerId(5), slab: 9 }];
        assert_eq!(check_distinct(&region, &map, &ok), Ok(()));
        // two slots of one stripe committed together to one server clash too
        let both = [
            CommitChunk { chunk: 1, server: ServerId(5), slab: 9 },
            CommitChunk { chunk: 2, server: ServerId(5), slab: 10 },
        ];
        assert!(check_distinct(&region, &map, &both).is_err());
    }
}
