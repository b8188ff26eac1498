//! Placement over a list of servers goes through the placement policies the controller
//! uses (`krak-placement`): `pack` fills one server first, `domain-spread` keeps a region
//! even and its stripes off shared failure domains, a server that is fuller than the
//! others gets less, the policy can be switched while the region runs (a drain then
//! follows the new one), and every page is read back against an oracle after each step.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use common::oracle::*;
use common::*;
use krak_pager::{FarMemory, PagerConfig, PagerError, Redundancy, PAGE_SIZE};

const REGION_BYTES: u64 = 12 << 20;
const BUDGET_BYTES: u64 = 2 << 20;

fn region_with(servers: &[SocketAddr], policy: &str, scheme: Redundancy) -> Result<FarMemory, PagerError> {
    FarMemory::new(PagerConfig {
        region_bytes: REGION_BYTES,
        local_budget_bytes: BUDGET_BYTES,
        servers: servers.to_vec(),
        placement_policy: policy.to_string(),
        redundancy: scheme,
        ..Default::default()
    })
}

/// Slabs of the region per server, from its layout.
fn slabs_per_server(region: &FarMemory) -> HashMap<SocketAddr, usize> {
    let mut out = HashMap::new();
    for s in region.fragment_servers().into_iter().flatten() {
        *out.entry(s).or_default() += 1;
    }
    out
}

/// Writes every page at `version`, then reads every page back (most of them from the
/// servers, the budget being a sixth of the region).
fn write_then_check(region: &FarMemory, version: u64) {
    let pages = region.len() / PAGE_SIZE;
    for p in 0..pages {
        fill_page(region, p, version);
    }
    let bad: Vec<usize> = (0..pages).filter(|p| !page_is(region, *p, version)).collect();
    assert!(bad.is_empty(), "{} pages read back wrong, first {:?}", bad.len(), bad.first());
    assert_eq!(region.stats().failed_faults, 0);
}

#[test]
fn pack_fills_one_server_and_a_switched_policy_drives_the_drain() {
    let servers = servers(3, 64 << 20);
    let region = region_with(&addrs(&servers), "pack", Redundancy::None).expect("region");
    assert_eq!(region.placement_policy(), "pack");
    let chunks = region.fragment_servers().len();
    let per = slabs_per_server(&region);
    assert_eq!(per.len(), 1, "pack puts a region that fits on one server: {per:?}");
    assert_eq!(*per.values().next().unwrap(), chunks);
    write_then_check(&region, 1);

    // Drain the packed server with the list's default policy: its chunks spread evenly.
    let full = *per.keys().next().unwrap();
    let others: Vec<SocketAddr> = addrs(&servers).into_iter().filter(|a| *a != full).collect();
    assert!(matches!(region.set_placement_policy("nope"), Err(PagerError::UnknownPolicy { .. })));
    region.set_placement_policy("domain-spread").expect("known policy");
    let report = region.drain_server(full, &others).expect("drain");
    assert_eq!(report.chunks_moved as usize, chunks);
    let per = slabs_per_server(&region);
    assert!(!per.contains_key(&full), "{per:?}");
    let counts: Vec<usize> = others.iter().map(|a| per.get(a).copied().unwrap_or(0)).collect();
    assert!(counts[0].abs_diff(counts[1]) <= 1, "an even drain: {counts:?}");
    // Nothing left on the drained server, and every page is still the last one written.
    let bad: Vec<usize> = (0..region.len() / PAGE_SIZE).filter(|p| !page_is(&region, *p, 1)).collect();
    assert!(bad.is_empty(), "{} pages wrong after the drain", bad.len());
    write_then_check(&region, 2);
    let drained = servers.iter().find(|s| s.addr() == full).unwrap();
    assert_eq!(drained.stats().lent_bytes, 0, "the drained server lends nothing");
}

#[test]
fn policies_see_what_servers_lend_and_stripes_keep_off_shared_domains() {
    // Server 2 already lends to another region: pack, which fills the fullest server
    // first, puts the whole region there (the servers' stats say which is fullest).
    let servers = servers(3, 32 << 20);
    let other = region_with(&addrs(&servers[2..]), "domain-spread", Redundancy::None).expect("filler");
    let region = region_with(&addrs(&servers), "pack", Redundancy::None).expect("region");
    let per = slabs_per_server(&region);
    assert_eq!(per.keys().collect::<Vec<_>>(), vec![&servers[2].addr()], "{per:?}");
    write_then_check(&region, 1);
    drop(region);
    drop(other);

    // replicate:2 over four servers in two domains: every chunk's copies in both domains.
    let servers = common::servers(4, 64 << 20);
    let domains: Vec<String> = ["a", "a", "b", "b"].iter().map(|d| d.to_string()).collect();
    let domain_of: HashMap<SocketAddr, String> = addrs(&servers).into_iter().zip(domains.clone()).collect();
    for policy in ["spread", "pack", "domain-spread"] {
        let region = FarMemory::new(PagerConfig {
            region_bytes: REGION_BYTES,
            local_budget_bytes: BUDGET_BYTES,
            servers: addrs(&servers),
            server_domains: domains.clone(),
            placement_policy: policy.to_string(),
            redundancy: "replicate:2".parse().unwrap(),
            ..Default::default()
        })
        .expect("region");
        for copies in region.fragment_servers() {
            assert_ne!(domain_of[&copies[0]], domain_of[&copies[1]], "{policy}: {copies:?}");
        }
        write_then_check(&region, 1);
    }
}

#[test]
fn an_unknown_policy_is_refused_with_the_known_ones() {
    let servers = servers(1, 64 << 20);
    let Err(err) = region_with(&addrs(&servers), "fastest", Redundancy::None) else {
        panic!("an unknown policy must be refused");
    };
    assert!(matches!(err, PagerError::UnknownPolicy { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("fastest") && text.contains("domain-spread"), "{text}");
}
