//! `pack`: fill the fewest servers (as Zombieland), so that the others hold nothing and could
//! sleep. Each chunk goes to the placeable server with the most bytes in use that still has
//! room (ties: the larger server, then the lower id), and consolidation proposes emptying
//! lightly used servers into the fuller ones.

use super::{Move, PlacementError, PlacementPolicy, Planned};
use crate::view::{PlacementView, SlotSize};
use krak_api::{RegionId, ServerId};

/// Most moves one consolidation pass proposes.
pub const MAX_CONSOLIDATION_MOVES: usize = 1024;

#[derive(Debug, Clone, Copy)]
pub struct Pack {
    /// A server whose slabs take less than this share of its capacity is a candidate to be
    /// emptied.
    pub consolidate_below_share: f64,
}

impl Default for Pack {
    fn default() -> Pack {
        Pack { consolidate_below_share: 0.25 }
    }
}

impl PlacementPolicy for Pack {
    fn name(&self) -> &'static str {
        "pack"
    }

    fn choose(
        &self,
        view: &PlacementView,
        region: RegionId,
        count: usize,
        exclude: &[ServerId],
    ) -> Result<Vec<ServerId>, PlacementError> {
        let slot = view.region(region).ok_or(PlacementError::UnknownRegion(region))?.slot();
        let mut planned = Planned::default();
        let mut out = Vec::with_capacity(count);
        for placed in 0..count {
            let best = fullest(view, slot, |i| planned.bytes(i), exclude, &[])
                .ok_or(PlacementError::NoCapacity { wanted: count, placed })?;
            planned.add(best, slot.cost_bytes);
            out.push(view.servers()[best as usize].id);
        }
        Ok(out)
    }

    fn consolidation_moves(&self, view: &PlacementView) -> Vec<Move> {
        // sources: placeable servers holding a little, lightest first
        let mut sources: Vec<u32> = (0..view.servers().len() as u32)
            .filter(|&i| {
                let s = &view.servers()[i as usize];
                s.placeable()
                    && s.slabs > 0
                    && (s.used_bytes() as f64) < self.consolidate_below_share * s.capacity_bytes as f64
            })
            .collect();
        sources.sort_by_key(|&i| (view.servers()[i as usize].slabs, i));
        let mut planned = Planned::default();
        let mut emptied: Vec<u32> = Vec::new();
        let mut moves = Vec::new();
        for &src in &sources {
            if planned.bytes(src) > 0 {
                continue; // it receives slabs of a lighter server: a target now
            }
            let src_id = view.servers()[src as usize].id;
            // this server's slabs per region (a pass over regions, not over the slab map)
            let mut held: Vec<(RegionId, SlotSize, u32)> = view
                .regions()
                .filter_map(|(id, r)| {
                    let n = r.on_server(src);
                    (n > 0).then_some((*id, r.slot(), n))
                })
                .collect();
            held.sort_by_key(|h| h.0);
            // plan every slab of this server or none of it
            let mut trial = Vec::new();
            let mut trial_planned: Vec<(u32, u64)> = Vec::new();
            let mut blocked = emptied.clone();
            blocked.push(src);
            let ok = 'plan: {
                for &(region, slot, n) in &held {
                    for _ in 0..n {
                        let extra = |i: u32| {
                            planned.bytes(i)
                                + trial_planned.iter().filter(|(j, _)| *j == i).map(|(_, b)| b).sum::<u64>()
                        };
                        let Some(to) = fullest(view, slot, extra, &[], &blocked) else { break 'plan false };
                        trial_planned.push((to, slot.cost_bytes));
                        trial.push((region, to));
                    }
                }
                true
            };
            if !ok || moves.len() + trial.len() > MAX_CONSOLIDATION_MOVES {
                continue;
            }
            for (to, bytes) in trial_planned {
                planned.add(to, bytes);
            }
            emptied.push(src);
            for (region, to) in trial {
                let to_id = view.servers()[to as usize].id;
                match moves.iter_mut().find(|m: &&mut Move| m.region == region && m.from == src_id && m.to == to_id) {
                    Some(m) => m.slabs += 1,
                    None => moves.push(Move { region, from: src_id, to: to_id, slabs: 1 }),
                }
            }
        }
        moves
    }
}

/// The placeable server, not excluded nor skipped, with the most bytes in use (counting
/// `extra` planned bytes) that fits one more chunk.
fn fullest(
    view: &PlacementView,
    slot: SlotSize,
    extra: impl Fn(u32) -> u64,
    exclude: &[ServerId],
    skip: &[u32],
) -> Option<u32> {
    let mut best: Option<(u64, u64, u32)> = None;
    for i in 0..view.servers().len() as u32 {
        let planned = extra(i);
        if !view.fits(i, slot, planned, exclude) || skip.contains(&i) {
            continue;
        }
        let s = &view.servers()[i as usize];
        let key = (s.used_bytes() + planned, s.capacity_bytes, i);
        if best.is_none_or(|b| (key.0, key.1) > (b.0, b.1)) {
            best = Some(key);
        }
    }
    best.map(|b| b.2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{place_all, rack};
    use krak_api::ServerState;

    #[test]
    fn fills_one_server_before_the_next() {
        let mut v = rack(&[("a", 10, 10), ("b", 10, 10), ("c", 10, 10)]);
        let got = place_all(&mut v, &Pack::default(), 15);
        assert_eq!(&got[..10], &[ServerId(1); 10]);
        assert_eq!(&got[10..], &[ServerId(2); 5]);
        assert_eq!(v.server(ServerId(3)).unwrap().slabs, 0);
    }

    #[test]
    fn prefers_the_fuller_server_and_skips_excluded_and_draining() {
        let mut v = rack(&[("a", 10, 10), ("b", 10, 4), ("c", 10, 8)]);
        assert_eq!(Pack::default().choose(&v, RegionId(1), 1, &[]).unwrap(), vec![ServerId(2)]);
        assert_eq!(Pack::default().choose(&v, RegionId(1), 1, &[ServerId(2)]).unwrap(), vec![ServerId(3)]);
        v.set_state(ServerId(2), ServerState::Draining);
        assert_eq!(Pack::default().choose(&v, RegionId(1), 5, &[]).unwrap(), vec![ServerId(3); 5]);
    }

    #[test]
    fn consolidation_empties_the_lightest_server() {
        let mut v = rack(&[("a", 10, 10), ("b", 10, 10), ("c", 10, 10)]);
        // a holds 6, b holds 1, c holds 2
        for (server, n) in [(1, 6), (2, 1), (3, 2)] {
            for _ in 0..n {
                v.add_slab(RegionId(1), ServerId(server));
            }
        }
        let moves = Pack::default().consolidation_moves(&v);
        // b (1 slab) and c (2 slabs) are under 25%; both fit into a
        assert_eq!(
            moves,
            vec![
                Move { region: RegionId(1), from: ServerId(2), to: ServerId(1), slabs: 1 },
                Move { region: RegionId(1), from: ServerId(3), to: ServerId(1), slabs: 2 },
            ]
        );
        // nothing moves when the light server cannot be emptied into the others
        let mut v = rack(&[("a", 10, 10), ("b", 10, 10)]);
        for (server, n) in [(1, 9), (2, 2)] {
            for _ in 0..n {
                v.add_slab(RegionId(1), ServerId(server));
            }
        }
        assert_eq!(Pack::default().consolidation_moves(&v), vec![]);
    }
}
