//! `domain-spread`: spread each region over distinct failure domains first, then over
//! servers, then by free memory.
//!
//! For each chunk it takes the fitting server whose failure domain holds the fewest of this
//! region's chunks (ties: the domain with more free memory), then within it the server with
//! the fewest of this region's chunks, then the most free memory. So a region of `n` chunks
//! over `d` domains loses at most `ceil(n / d)` chunks when one domain fails (a rack's
//! power, a host with several memory servers), where `spread` leaves that to chance and
//! `pack` puts whole regions in one domain; and a second copy placed with the first copy's
//! domain excluded never shares its fate (issue 4). The numbers are in BENCHMARKS.md.

use std::cmp::Reverse;

use super::{PlacementError, PlacementPolicy, Planned};
use crate::view::PlacementView;
use krak_api::{RegionId, ServerId};

#[derive(Debug, Clone, Copy, Default)]
pub struct DomainSpread;

impl PlacementPolicy for DomainSpread {
    fn name(&self) -> &'static str {
        "domain-spread"
    }

    fn choose(
        &self,
        view: &PlacementView,
        region: RegionId,
        count: usize,
        exclude: &[ServerId],
    ) -> Result<Vec<ServerId>, PlacementError> {
        let stat = view.region(region).ok_or(PlacementError::UnknownRegion(region))?;
        let slot = stat.slot();
        let chunk = slot.cost_bytes;
        // this region's chunks per domain and per server, as dense arrays for this decision
        let mut in_domain = vec![0u32; view.domains().len()];
        for (&d, &n) in &stat.per_domain {
            if let Some(slot) = in_domain.get_mut(d as usize) {
                *slot = n;
            }
        }
        let mut on_server = vec![0u32; view.servers().len()];
        for (&i, &n) in &stat.per_server {
            if let Some(slot) = on_server.get_mut(i as usize) {
                *slot = n;
            }
        }
        let mut planned = Planned::default();
        let mut domain_planned = vec![0u64; view.domains().len()];
        let mut out = Vec::with_capacity(count);
        for placed in 0..count {
            let mut best = None;
            let mut best_key = None;
            for (i, s) in view.servers().iter().enumerate() {
                let i = i as u32;
                let extra = planned.bytes(i);
                if !view.fits(i, slot, extra, exclude) {
                    continue;
                }
                let d = s.domain as usize;
                let key = (
                    in_domain[d],
                    Reverse(view.domains()[d].free_bytes.saturating_sub(domain_planned[d])),
                    on_server[i as usize],
                    Reverse(s.free_bytes.saturating_sub(extra)),
                    i,
                );
                if best_key.as_ref().is_none_or(|b| key < *b) {
                    best_key = Some(key);
                    best = Some(i);
                }
            }
            let pick = best.ok_or(PlacementError::NoCapacity { wanted: count, placed })?;
            let s = &view.servers()[pick as usize];
            planned.add(pick, chunk);
            in_domain[s.domain as usize] += 1;
            domain_planned[s.domain as usize] += chunk;
            on_server[pick as usize] += 1;
            out.push(s.id);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{place_all, rack};
    use crate::{Pack, Spread};

    /// Most chunks of region 1 in any one domain.
    fn worst_domain(v: &PlacementView) -> u32 {
        v.region(RegionId(1)).unwrap().per_domain.values().copied().max().unwrap_or(0)
    }

    #[test]
    fn uses_every_domain_before_reusing_one() {
        // 4 domains of unequal size: 6 servers in r1, 1 in each of r2..r4
        let mut servers = vec![("r1", 100, 100); 6];
        servers.extend([("r2", 100, 100), ("r3", 100, 100), ("r4", 100, 100)]);
        let mut v = rack(&servers);
        let first = place_all(&mut v, &DomainSpread, 4);
        let mut domains: Vec<u32> = first.iter().map(|&s| v.server(s).unwrap().domain).collect();
        domains.sort();
        assert_eq!(domains, vec![0, 1, 2, 3]);
        place_all(&mut v, &DomainSpread, 36);
        // 40 chunks over 4 domains: exactly 10 each, though r1 has 6 servers
        assert_eq!(worst_domain(&v), 10);
        // and within r1, spread over its servers
        let r = v.region(RegionId(1)).unwrap();
        let r1: Vec<u32> = (0..6).map(|i| r.on_server(i)).collect();
        assert!(r1.iter().all(|&n| n == 1 || n == 2), "{r1:?}");
    }

    #[test]
    fn bounds_the_loss_of_one_domain_better_than_spread_and_pack() {
        // 10 domains of 5 servers; one region of 100 chunks
        let servers: Vec<(&str, u64, u64)> =
            ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"].iter().flat_map(|d| [(*d, 50, 50); 5]).collect();
        let mut ds = rack(&servers);
        place_all(&mut ds, &DomainSpread, 100);
        assert_eq!(worst_domain(&ds), 10);
        let mut pk = rack(&servers);
        place_all(&mut pk, &Pack::default(), 100);
        assert_eq!(worst_domain(&pk), 100);
        let mut sp = rack(&servers);
        place_all(&mut sp, &Spread, 100);
        assert!(worst_domain(&sp) >= 10);
    }

    #[test]
    fn excluding_a_domain_keeps_copies_apart() {
        let mut v = rack(&[("a", 10, 10), ("a", 10, 10), ("b", 10, 10)]);
        v.set_state(ServerId(3), krak_api::ServerState::Dead);
        assert_eq!(
            DomainSpread.choose(&v, RegionId(1), 1, &[ServerId(1), ServerId(2)]),
            Err(PlacementError::NoCapacity { wanted: 1, placed: 0 })
        );
        let got = DomainSpread.choose(&v, RegionId(1), 2, &[]).unwrap();
        assert_eq!(got, vec![ServerId(1), ServerId(2)]);
    }
}
