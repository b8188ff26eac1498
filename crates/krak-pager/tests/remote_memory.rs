//! A region served over another process's memory (`FarMemory::serve_other_process`), as `krak run
//! --pager separate` serves a program's memfd arena: here the "program" is this process, so
//! the test touches the shared mapping directly while the pager works only through the
//! userfaultfd and the memfd (installs, `pread`, hole punches). Contents are checked against
//! a shadow copy; the file never holds a page the pager does not count.

mod common;

use std::sync::Arc;

use common::*;
use krak_pager::{FarMemory, FaultMode, PagerConfig, PAGE_SIZE};
use krak_uffd::{MemfdView, SharedMapping, Uffd};
use rand::{Rng, SeedableRng};

const REGION_BYTES: usize = 32 << 20;

/// The program's side (the mapping, kept alive) and the pager's region over it.
fn remote_region(servers: &[krak_memserver::ServerHandle], budget: u64) -> (SharedMapping, Arc<FarMemory>) {
    let shared = SharedMapping::new(REGION_BYTES).unwrap();
    let uffd = Uffd::open_for_shmem().expect("userfaultfd with shmem write-protect (Linux 6.0+)");
    uffd.register(shared.as_ptr() as usize, shared.len()).unwrap();
    let map =
        MemfdView::new(shared.memfd().try_clone_to_owned().unwrap(), shared.as_ptr() as usize, shared.len()).unwrap();
    let config = PagerConfig { local_budget_bytes: budget, servers: addrs(servers), ..Default::default() };
    // SAFETY: getpid takes nothing and cannot fail.
    let pid = unsafe { libc::getpid() };
    let region = FarMemory::serve_other_process(config, map, uffd, pid).expect("region over the memfd");
    (shared, Arc::new(region))
}

#[test]
fn random_reads_and_writes_through_a_remote_region_match_the_shadow() {
    let servers = servers(3, 64 << 20);
    let budget = (REGION_BYTES / 10) as u64;
    let (shared, region) = remote_region(&servers, budget);
    assert_eq!(region.as_ptr(), shared.as_ptr(), "the region is at the program's addresses");
    let sampler = ResidentSampler::start(region.clone());
    let words = REGION_BYTES / 8;
    let mut shadow = vec![0u64; words];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut mismatches = 0;
    for _ in 0..40_000 {
        let i = rng.gen_range(0..words);
        if rng.gen_bool(0.5) {
            let v = rng.gen();
            write_u64(&region, i * 8, v);
            shadow[i] = v;
        } else if read_u64(&region, i * 8) != shadow[i] {
            mismatches += 1;
        }
    }
    assert_eq!(mismatches, 0, "reads during the run differ from the shadow");
    assert_eq!(verify_all(&region, &shadow), 0, "pages differ from the shadow at the end");

    // A discard through the region: the pages read zeros next, in the program's mapping.
    region.discard(PAGE_SIZE, 64 * PAGE_SIZE).unwrap();
    shadow[PAGE_SIZE / 8..65 * PAGE_SIZE / 8].fill(0);
    assert_eq!(verify_all(&region, &shadow), 0, "discarded pages read zeros, the others their contents");
    assert!(region.discard(REGION_BYTES - PAGE_SIZE, 2 * PAGE_SIZE).is_err(), "a range past the end is refused");

    let (peak, over) = sampler.finish();
    let stats = region.stats();
    eprintln!("peak resident {peak} of budget {budget}; {stats:?}");
    assert_eq!(over, 0, "the memfd held more than the budget");
    assert!(stats.remote_reads > 0 && stats.remote_writes > 0, "pages went remote and came back");
    assert!(stats.evictions_dirty > 0 && stats.evictions_clean > 0, "{stats:?}");
    assert_eq!(stats.failed_faults, 0);
    assert!(region.exclude_from_fork().is_err(), "fork exclusion is the program's to do");
    let region = Arc::try_unwrap(region).expect("the sampler let go of the region");
    drop(region);
    for s in &servers {
        assert_eq!(s.stats().lent_bytes, 0, "dropping the region gives back every remote byte");
    }
    drop(shared);
}

#[test]
fn a_remote_region_is_served_by_handler_threads_only() {
    let servers = servers(1, 64 << 20);
    let shared = SharedMapping::new(1 << 20).unwrap();
    let uffd = Uffd::open_for_shmem().unwrap();
    let map =
        MemfdView::new(shared.memfd().try_clone_to_owned().unwrap(), shared.as_ptr() as usize, shared.len()).unwrap();
    let config = PagerConfig {
        local_budget_bytes: 1 << 20,
        servers: addrs(&servers),
        fault_mode: FaultMode::Sigbus,
        ..Default::default()
    };
    assert!(FarMemory::serve_other_process(config, map, uffd, 1).is_err());
}
