//! Placement decision latency and controller memory with 1,000 servers and 1,000,000 slabs
//! in the map (issue 3's goal: p99 < 1 ms, < 200 MiB).
//!
//! `cargo bench -p krak-controller --bench placement` (add `-- --quick` for a smaller run).
//! The rack is the real [`RackState`] (view, maps, records) over a store that drops every write,
//! so the memory measured is the controller's own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use krak_api::messages::{CommitChunk, CreateRegionRequest, RegisterRequest};
use krak_controller::{ControllerConfig, RackState, RegionId};
use krak_meta::{Condition, KeyValue, LeaseId, MetaError, MetaStore, Op};
use rand::Rng;

const SLAB: u64 = 64 << 20;

/// A store that keeps nothing (the bench measures the controller, not a store).
#[derive(Debug)]
struct NullStore;

impl MetaStore for NullStore {
    fn get(&self, _: &str) -> Result<Option<KeyValue>, MetaError> {
        Ok(None)
    }
    fn list(&self, _: &str) -> Result<Vec<KeyValue>, MetaError> {
        Ok(Vec::new())
    }
    fn put(&self, _: &str, _: &[u8]) -> Result<u64, MetaError> {
        Ok(1)
    }
    fn delete(&self, _: &str) -> Result<bool, MetaError> {
        Ok(false)
    }
    fn txn(&self, _: &[Condition], _: &[Op]) -> Result<bool, MetaError> {
        Ok(true)
    }
    fn grant_lease(&self, _: u64) -> Result<LeaseId, MetaError> {
        Ok(LeaseId(1))
    }
    fn keep_alive(&self, _: LeaseId) -> Result<(), MetaError> {
        Ok(())
    }
    fn revoke(&self, _: LeaseId) -> Result<(), MetaError> {
        Ok(())
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (servers, regions, chunks_per_region, decisions) =
        if quick { (100, 100, 1000, 10_000) } else { (1000, 1000, 1000, 100_000) };
    let domains = servers / 10;
    let rss_start = rss_kib();
    let t = Instant::now();
    let mut config = ControllerConfig::new("127.0.0.1:0".parse().unwrap());
    config.default_chunk_bytes = SLAB;
    let mut rack = RackState::load(Arc::new(NullStore), config).expect("empty rack");
    for i in 0..servers {
        let req = RegisterRequest {
            addr: format!("10.{}.{}.{}:7070", i / 65536, (i / 256) % 256, i % 256),
            capacity_bytes: 2048 * SLAB,
            slab_size_bytes: SLAB,
            domain: format!("rack{}", i % domains),
            headroom_bytes: 0,
        };
        rack.register(&req).expect("register");
    }
    for _ in 0..regions {
        let req = CreateRegionRequest {
            owner: "bench".into(),
            size_bytes: (chunks_per_region as u64 + 256) * SLAB,
            local_budget_bytes: 0,
            chunk_bytes: None,
            stripe_width: None,
            redundancy: None,
            slot_divisor: None,
        };
        let region = rack.create_region(&req).expect("region");
        let chunks: Vec<u64> = (0..chunks_per_region as u64).collect();
        let placed = rack.place(region.id, &chunks, &[]).expect("place");
        let commit: Vec<CommitChunk> =
            placed.iter().map(|p| CommitChunk { chunk: p.chunk, server: p.server, slab: p.chunk }).collect();
        rack.commit(region.id, &commit).expect("commit");
    }
    let slabs = rack.mapped_slabs();
    let rss_loaded = rss_kib();
    println!(
        "rack: {servers} servers in {domains} domains, {regions} regions, {slabs} slabs in the map; built in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    println!(
        "memory: VmRSS {:.1} MiB with the map loaded ({:.1} MiB at start); slab map vectors {:.1} MiB",
        rss_loaded as f64 / 1024.0,
        rss_start as f64 / 1024.0,
        rack.map_memory_bytes() as f64 / (1 << 20) as f64
    );

    let mut rng = rand::thread_rng();
    println!("\n| policy | decisions | p50 us | p99 us | max us | worst domain share of a new 256-chunk region |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for name in krak_placement::POLICY_NAMES {
        rack.set_policy(name).expect("policy");
        let mut ns = Vec::with_capacity(decisions);
        for _ in 0..decisions {
            let region = RegionId(rng.gen_range(1..=regions as u64));
            let chunk = rng.gen_range(chunks_per_region as u64..chunks_per_region as u64 + 256);
            let t = Instant::now();
            let placed = rack.place(region, &[chunk], &[]).expect("decision");
            ns.push(t.elapsed().as_nanos() as u64);
            std::hint::black_box(placed);
        }
        ns.sort_unstable();
        // failure-domain exposure: one decision placing a whole new region
        let fresh = rack
            .create_region(&CreateRegionRequest {
                owner: "probe".into(),
                size_bytes: 256 * SLAB,
                local_budget_bytes: 0,
                chunk_bytes: None,
                stripe_width: None,
                redundancy: None,
                slot_divisor: None,
            })
            .expect("probe region");
        let placed = rack.place(fresh.id, &(0..256).collect::<Vec<_>>(), &[]).expect("probe place");
        let mut per_domain: HashMap<u32, u32> = HashMap::new();
        for p in &placed {
            *per_domain.entry(rack.view().server(p.server).expect("server").domain).or_insert(0) += 1;
        }
        let worst = per_domain.values().max().copied().unwrap_or(0);
        rack.delete_region(fresh.id).expect("delete probe");
        println!(
            "| {name} | {decisions} | {:.1} | {:.1} | {:.1} | {worst}/256 ({:.1}%) |",
            percentile(&ns, 0.50),
            percentile(&ns, 0.99),
            *ns.last().unwrap_or(&0) as f64 / 1000.0,
            worst as f64 * 100.0 / 256.0
        );
    }
    println!("\nVmRSS after the runs: {:.1} MiB", rss_kib() as f64 / 1024.0);
}
