//! `demand`: budget goes where it saves the most faults.
//!
//! A region's fault rate is measured only at the budget it has, so the policy estimates
//! the rest of its miss curve as a line: the faults it takes now would fall to none if
//! all of its data were local. The saving per byte given is then its fault rate over the
//! bytes it lacks (its *value*); the loss per byte taken from another is that one's value.
//! Each round moves budget from the region of least value to the one of most, when the
//! receiver's value is more than `hysteresis` times the giver's, and only between regions
//! whose last report was measured under their current budget.
//!
//! A quiet region is worth nothing by that line, yet it may need all it has: so a region
//! is never cut below the budget at which it was lately seen faulting (plus an eighth),
//! and a region that gave and now faults takes back what it needs from the one that
//! received, which is itself protected by where it faulted. Faults with all of a region's
//! data local (first touches, a warm-up) are worth nothing. Near-equal regions are left
//! alone.

use crate::{pages, BudgetChange, BudgetPolicy, HostShare, RegionDemand, NOISE_FAULTS_PER_S};

/// The `demand` policy and its knobs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// How many times the giver's value the receiver's must exceed.
    pub hysteresis: f64,
    /// Moves smaller than this are not made (each costs a shrink's evictions).
    pub min_move_bytes: u64,
    /// A region is given at most its footprint plus this (it may be growing).
    pub growth_bytes: u64,
    /// Most of the host's total moved to one region in one round, as a fraction.
    pub max_move_fraction: f64,
}

impl Default for Demand {
    fn default() -> Demand {
        Demand { hysteresis: 2.0, min_move_bytes: 4 << 20, growth_bytes: 16 << 20, max_move_fraction: 0.75 }
    }
}

impl Demand {
    /// Faults saved per second per byte given to region `r` when it has `budget_bytes`.
    fn value(&self, r: &RegionDemand, budget_bytes: u64) -> f64 {
        // With all its data local, its faults are first touches or a warm-up: more budget
        // saves none of them.
        if r.faults_per_s.is_nan() || r.faults_per_s < NOISE_FAULTS_PER_S || r.footprint_bytes <= budget_bytes {
            return 0.0;
        }
        let lacking = (r.footprint_bytes - budget_bytes).max(self.min_move_bytes);
        r.faults_per_s / lacking as f64
    }

    /// The most region `r` is given.
    fn cap(&self, r: &RegionDemand, floor: u64) -> u64 {
        pages(r.footprint_bytes.saturating_add(self.growth_bytes)).max(floor)
    }

    /// The least region `r` keeps when it gives: its floor, or more if it faulted lately
    /// under a larger budget.
    fn keeps(&self, r: &RegionDemand, floor: u64) -> u64 {
        let faulted = r.faulted_at_bytes.map_or(0, |at| pages(at.saturating_add((at / 8).max(self.min_move_bytes))));
        floor.max(faulted)
    }
}

impl BudgetPolicy for Demand {
    fn name(&self) -> &'static str {
        "demand"
    }

    fn divide(&self, host: &HostShare, regions: &[RegionDemand]) -> Vec<BudgetChange> {
        if regions.is_empty() {
            return Vec::new();
        }
        let floor = host.floor_for(regions.len());
        let max_move = pages((host.total_bytes as f64 * self.max_move_fraction) as u64).max(self.min_move_bytes);
        let mut budgets: Vec<u64> = regions.iter().map(|r| r.budget_bytes).collect();
        let sum = |b: &[u64]| b.iter().fold(0u64, |a, &x| a.saturating_add(x));
        let by_value = |budgets: &[u64], a: usize, b: usize| {
            self.value(&regions[a], budgets[a]).total_cmp(&self.value(&regions[b], budgets[b]))
        };

        // Over the total (the total shrank, or a region joined): the least valuable give
        // first, settled or not, down to their floor.
        let mut excess = sum(&budgets).saturating_sub(host.total_bytes);
        while excess > 0 {
            let giver = (0..regions.len()).filter(|&i| budgets[i] > floor).min_by(|&a, &b| by_value(&budgets, a, b));
            let Some(g) = giver else { break };
            let take = excess.min(budgets[g] - floor);
            budgets[g] -= take;
            excess -= take;
        }

        // Free room goes to the settled regions that fault, the most valuable first.
        let mut room = host.total_bytes.saturating_sub(sum(&budgets));
        let mut order: Vec<usize> = (0..regions.len()).filter(|&i| regions[i].settled).collect();
        order.sort_by(|&a, &b| by_value(&budgets, b, a));
        let mut moved = vec![false; regions.len()];
        for &i in &order {
            if self.value(&regions[i], budgets[i]) == 0.0 {
                break;
            }
            let give = pages(room.min(self.cap(&regions[i], floor).saturating_sub(budgets[i])).min(max_move));
            if give >= self.min_move_bytes {
                budgets[i] += give;
                room -= give;
                moved[i] = true;
            }
        }

        // Then from the least valuable to the most, each region in one move a round.
        loop {
            let free = |i: usize| regions[i].settled && !moved[i];
            let receiver = (0..regions.len())
                .filter(|&i| free(i) && self.cap(&regions[i], floor).saturating_sub(budgets[i]) >= self.min_move_bytes)
                .max_by(|&a, &b| by_value(&budgets, a, b));
            let Some(r) = receiver else { break };
            let giver = (0..regions.len())
                .filter(|&i| {
                    free(i)
                        && i != r
                        && budgets[i].saturating_sub(self.keeps(&regions[i], floor)) >= self.min_move_bytes
                })
                .min_by(|&a, &b| by_value(&budgets, a, b));
            let Some(g) = giver else { break };
            let (receives, gives) = (self.value(&regions[r], budgets[r]), self.value(&regions[g], budgets[g]));
            if receives == 0.0 || receives <= self.hysteresis * gives {
                break;
            }
            let spare = budgets[g] - self.keeps(&regions[g], floor);
            let room = self.cap(&regions[r], floor) - budgets[r];
            let amount = pages(spare.min(room).min(max_move));
            if amount < self.min_move_bytes {
                break;
            }
            budgets[g] -= amount;
            budgets[r] += amount;
            moved[g] = true;
            moved[r] = true;
        }

        // Over the total only when every region is down to its floor (or was below it);
        // anything else is a bug here, and changing nothing is the safe answer.
        if sum(&budgets) > host.total_bytes && budgets.iter().any(|&b| b > floor) {
            debug_assert!(false, "demand overcommitted the host: {budgets:?} for {host:?}");
            return Vec::new();
        }
        regions
            .iter()
            .zip(budgets)
            .filter(|(r, b)| r.budget_bytes != *b)
            .map(|(r, budget_bytes)| BudgetChange { id: r.id, budget_bytes })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn region(id: u64, budget_mib: u64, footprint_mib: u64, faults_per_s: f64) -> RegionDemand {
        RegionDemand {
            id,
            budget_bytes: budget_mib * MIB,
            footprint_bytes: footprint_mib * MIB,
            faults_per_s,
            settled: true,
            faulted_at_bytes: None,
        }
    }

    fn apply(regions: &mut [RegionDemand], changes: &[BudgetChange]) {
        for c in changes {
            let r = regions.iter_mut().find(|r| r.id == c.id).unwrap();
            r.budget_bytes = c.budget_bytes;
        }
    }

    fn host(total_mib: u64, floor_mib: u64) -> HostShare {
        HostShare { total_bytes: total_mib * MIB, floor_bytes: floor_mib * MIB }
    }

    #[test]
    fn budget_moves_from_an_idle_region_to_a_faulting_one_within_floor_and_cap() {
        let mut regions = [region(1, 128, 200, 5_000.0), region(2, 128, 200, 0.0)];
        let changes = Demand::default().divide(&host(256, 32), &regions);
        apply(&mut regions, &changes);
        // Up to its footprint and room to grow (216 MiB), not to the giver's floor.
        assert_eq!(regions[0].budget_bytes, 216 * MIB);
        assert_eq!(regions[1].budget_bytes, 40 * MIB);
        // The receiver is never given more than its footprint and room to grow.
        let mut small = [region(1, 128, 140, 5_000.0), region(2, 128, 200, 0.0)];
        let changes = Demand::default().divide(&host(256, 32), &small);
        apply(&mut small, &changes);
        assert_eq!(small[0].budget_bytes, 156 * MIB);
        assert_eq!(small[1].budget_bytes, 100 * MIB);
    }

    #[test]
    fn near_equal_regions_and_quiet_ones_are_left_alone() {
        let d = Demand::default();
        let regions = [region(1, 128, 256, 3_000.0), region(2, 128, 256, 2_000.0)];
        assert!(d.divide(&host(256, 32), &regions).is_empty(), "within the hysteresis");
        let quiet = [region(1, 128, 256, 10.0), region(2, 128, 256, 0.0)];
        assert!(d.divide(&host(256, 32), &quiet).is_empty(), "noise is not demand");
    }

    #[test]
    fn regions_not_settled_neither_give_nor_receive() {
        let mut regions = [region(1, 128, 256, 5_000.0), region(2, 128, 256, 0.0)];
        regions[1].settled = false;
        assert!(Demand::default().divide(&host(256, 32), &regions).is_empty());
        regions[1].settled = true;
        regions[0].settled = false;
        assert!(Demand::default().divide(&host(256, 32), &regions).is_empty());
    }

    #[test]
    fn an_overcommitted_host_is_brought_back_to_its_total_least_valuable_first() {
        let mut regions = [region(1, 200, 256, 5_000.0), region(2, 200, 256, 100.0), region(3, 64, 64, 0.0)];
        regions[2].settled = false;
        let changes = Demand::default().divide(&host(300, 32), &regions);
        apply(&mut regions, &changes);
        let budgets: Vec<u64> = regions.iter().map(|r| r.budget_bytes / MIB).collect();
        assert_eq!(budgets.iter().sum::<u64>(), 300, "{budgets:?}");
        // The idle region gives down to its floor first, then the less valuable one; the
        // most valuable keeps all it had and takes what the other settled one can give.
        assert_eq!(budgets, [236, 32, 32]);
        // Floors larger than the total's share become an equal share.
        let tight = [region(1, 100, 256, 0.0), region(2, 100, 256, 0.0), region(3, 100, 256, 0.0)];
        let mut tight = tight;
        let changes = Demand::default().divide(&host(90, 64), &tight);
        apply(&mut tight, &changes);
        assert!(tight.iter().all(|r| r.budget_bytes == pages(90 * MIB / 3)), "{tight:?}");
    }

    #[test]
    fn free_room_goes_to_the_faulting_regions() {
        let mut regions = [region(1, 64, 512, 5_000.0), region(2, 64, 512, 0.0)];
        let changes = Demand::default().divide(&host(512, 32), &regions);
        apply(&mut regions, &changes);
        assert_eq!(regions[0].budget_bytes, 448 * MIB, "all the room (three quarters of the total at most)");
        assert_eq!(regions[1].budget_bytes, 64 * MIB, "nothing taken from the quiet one");
    }

    /// Two regions whose hot sets swap sizes; fault rates from a linear model of the hot
    /// set. The budgets follow within a few rounds and stay put between swaps.
    #[test]
    fn budgets_follow_hot_sets_that_swap_and_do_not_oscillate_between() {
        let d = Demand::default();
        let share = host(256, 16);
        let faults = |hot: u64, budget: u64| -> f64 {
            let missing = hot.saturating_sub(budget) as f64 / hot as f64;
            200_000.0 * missing
        };
        let mut regions = [region(1, 128, 192, 0.0), region(2, 128, 192, 0.0)];
        for phase in 0..4 {
            let hot = if phase % 2 == 0 { [176 * MIB, 24 * MIB] } else { [24 * MIB, 176 * MIB] };
            let mut changes_late = 0;
            for round in 0..10 {
                for (i, r) in regions.iter_mut().enumerate() {
                    r.faults_per_s = faults(hot[i], r.budget_bytes);
                }
                let changes = d.divide(&share, &regions);
                if round >= 3 {
                    changes_late += changes.len();
                }
                apply(&mut regions, &changes);
                assert!(regions.iter().map(|r| r.budget_bytes).sum::<u64>() <= share.total_bytes);
            }
            let hot_one = if phase % 2 == 0 { 0 } else { 1 };
            assert!(
                regions[hot_one].budget_bytes >= 176 * MIB,
                "phase {phase}: the hot region holds its hot set: {regions:?}"
            );
            assert!(
                regions[1 - hot_one].budget_bytes >= 24 * MIB,
                "phase {phase}: the other keeps its own: {regions:?}"
            );
            assert_eq!(changes_late, 0, "phase {phase}: settled after three rounds");
        }
    }

    /// Two regions that both fit, one quiet: the quiet one gives, starts faulting, and
    /// takes back only what it needs from the one that received, which keeps what it
    /// faulted under. The pair settles instead of swapping budgets for ever.
    #[test]
    fn a_quiet_giver_that_starts_faulting_settles_with_the_receiver() {
        let d = Demand::default();
        let share = host(256, 16);
        let hot = [150 * MIB, 100 * MIB];
        let faults = |hot: u64, budget: u64| 200_000.0 * hot.saturating_sub(budget) as f64 / hot as f64;
        let mut regions = [region(1, 128, 200, 0.0), region(2, 128, 200, 0.0)];
        // The controller's memory: the budget each was last seen faulting under, and when.
        let mut faulted: [Option<(u64, usize)>; 2] = [None, None];
        let mut history = Vec::new();
        for round in 0..40 {
            for (i, r) in regions.iter_mut().enumerate() {
                r.faults_per_s = faults(hot[i], r.budget_bytes);
                if r.faults_per_s >= NOISE_FAULTS_PER_S {
                    faulted[i] = Some((r.budget_bytes, round));
                }
                // Remembered for 8 rounds (the controller: 8 s).
                r.faulted_at_bytes = faulted[i].filter(|(_, at)| round - at <= 8).map(|(b, _)| b);
            }
            let changes = d.divide(&share, &regions);
            apply(&mut regions, &changes);
            history.push([regions[0].budget_bytes / MIB, regions[1].budget_bytes / MIB]);
        }
        let last = history[history.len() - 1];
        assert!(history[20..].iter().all(|b| *b == last), "settled by round 20: {history:?}");
        assert!(last[0] * MIB >= hot[0] && last[1] * MIB >= hot[1], "both hot sets fit: {history:?}");
    }
}
