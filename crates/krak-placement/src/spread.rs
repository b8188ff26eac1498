//! `spread`: power of two choices on free memory (as Infiniswap). For each chunk, two
//! placeable servers are drawn at random and the one with more free memory wins: load
//! spreads nearly as evenly as "most free" but without everyone piling on one server.

use rand::Rng;

use super::{PlacementError, PlacementPolicy, Planned};
use crate::view::{PlacementView, SlotSize};
use krak_api::{RegionId, ServerId};

/// Random draws before falling back to listing the placeable servers (a mostly full or
/// mostly dead rack).
const DRAWS: usize = 32;

#[derive(Debug, Clone, Copy, Default)]
pub struct Spread;

impl PlacementPolicy for Spread {
    fn name(&self) -> &'static str {
        "spread"
    }

    fn choose(
        &self,
        view: &PlacementView,
        region: RegionId,
        count: usize,
        exclude: &[ServerId],
    ) -> Result<Vec<ServerId>, PlacementError> {
        let slot = view.region(region).ok_or(PlacementError::UnknownRegion(region))?.slot();
        let mut rng = rand::thread_rng();
        let mut planned = Planned::default();
        let mut out = Vec::with_capacity(count);
        for placed in 0..count {
            let Some(a) = draw(view, slot, &planned, exclude, &mut rng) else {
                return Err(PlacementError::NoCapacity { wanted: count, placed });
            };
            let b = draw(view, slot, &planned, exclude, &mut rng).unwrap_or(a);
            let free = |i: u32| view.servers()[i as usize].free_bytes.saturating_sub(planned.bytes(i));
            let pick = if free(b) > free(a) { b } else { a };
            planned.add(pick, slot.cost_bytes);
            out.push(view.servers()[pick as usize].id);
        }
        Ok(out)
    }
}

/// A uniformly random server that fits, if any.
fn draw(
    view: &PlacementView,
    slot: SlotSize,
    planned: &Planned,
    exclude: &[ServerId],
    rng: &mut impl Rng,
) -> Option<u32> {
    let n = view.servers().len();
    if n == 0 {
        return None;
    }
    for _ in 0..DRAWS {
        let i = rng.gen_range(0..n) as u32;
        if view.fits(i, slot, planned.bytes(i), exclude) {
            return Some(i);
        }
    }
    let fitting: Vec<u32> = (0..n as u32).filter(|&i| view.fits(i, slot, planned.bytes(i), exclude)).collect();
    (!fitting.is_empty()).then(|| fitting[rng.gen_range(0..fitting.len())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{place_all, rack, CHUNK};
    use krak_api::ServerState;

    #[test]
    fn balances_by_free_memory() {
        // one server starts nearly full: it should get far fewer chunks than the others
        let mut v = rack(&[("a", 1000, 1000), ("b", 1000, 1000), ("c", 1000, 1000), ("d", 1000, 200)]);
        place_all(&mut v, &Spread, 1200);
        let free: Vec<u64> = v.servers().iter().map(|s| s.free_bytes / CHUNK).collect();
        let (min, max) = (*free[..3].iter().min().unwrap(), *free[..3].iter().max().unwrap());
        // power of two choices keeps the equal servers within a few chunks of each other
        assert!(max - min <= 30, "free chunks per server {free:?}");
        // the loaded one only wins when both draws land on it (1 in 16): ~75 of 1200
        assert!(free[3] >= 50, "the loaded server was overfilled: {free:?}");
    }

    #[test]
    fn respects_exclude_draining_and_dead() {
        let mut v = rack(&[("a", 100, 100), ("b", 100, 100), ("c", 100, 100), ("d", 100, 100)]);
        v.set_state(ServerId(2), ServerState::Draining);
        v.set_state(ServerId(3), ServerState::Dead);
        v.set_state(ServerId(4), ServerState::Suspect);
        for _ in 0..200 {
            assert_eq!(Spread.choose(&v, RegionId(1), 3, &[]).unwrap(), vec![ServerId(1); 3]);
        }
        assert_eq!(
            Spread.choose(&v, RegionId(1), 1, &[ServerId(1)]),
            Err(PlacementError::NoCapacity { wanted: 1, placed: 0 })
        );
        v.set_state(ServerId(2), ServerState::Alive);
        for _ in 0..200 {
            assert_eq!(Spread.choose(&v, RegionId(1), 1, &[ServerId(1)]).unwrap(), vec![ServerId(2)]);
        }
    }

    #[test]
    fn multi_chunk_decisions_do_not_overfill() {
        let v = rack(&[("a", 3, 3), ("b", 2, 2)]);
        let mut got = Spread.choose(&v, RegionId(1), 5, &[]).unwrap();
        got.sort();
        assert_eq!(got, vec![ServerId(1), ServerId(1), ServerId(1), ServerId(2), ServerId(2)]);
    }
}
