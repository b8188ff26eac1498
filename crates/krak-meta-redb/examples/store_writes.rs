//! The embedded stores side by side in one run: the latency of a durable write (put of a
//! 200-byte value, and a fenced-style transaction of 4 keys with a condition), reads, and
//! the time to open a store of many keys, for `krak-meta-redb` (the default) and
//! `krak-meta-file` (the older log).
//!
//! `cargo run --release -p krak-meta-redb --example store_writes [WRITES] [KEYS]`

use std::path::Path;
use std::time::{Duration, Instant};

use krak_meta::{Condition, MetaStore, Op};

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|st| st.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn run(name: &str, dir: &Path, writes: usize, keys: usize, open: &dyn Fn(&Path) -> Box<dyn MetaStore>) {
    let _ = std::fs::remove_dir_all(dir);
    let s = open(dir);
    let mut put = Vec::with_capacity(writes);
    for i in 0..writes {
        let t = Instant::now();
        s.put(&format!("/w/{i}"), &[i as u8; 200]).unwrap();
        put.push(t.elapsed());
    }
    let mut txn = Vec::with_capacity(writes);
    for i in 0..writes {
        let guard = s.get("/w/0").unwrap().unwrap().mod_revision;
        let cond = [Condition::ModRevision { key: "/w/0".into(), equals: guard }];
        let ops: Vec<Op> =
            (0..4).map(|k| Op::Put { key: format!("/t/{i}/{k}"), value: vec![k as u8; 200], lease: None }).collect();
        let t = Instant::now();
        assert!(s.txn(&cond, &ops).unwrap());
        txn.push(t.elapsed());
    }
    let mut get = Vec::with_capacity(writes);
    for i in 0..writes {
        let t = Instant::now();
        assert!(s.get(&format!("/w/{i}")).unwrap().is_some());
        get.push(t.elapsed());
    }
    // Fill to `keys` in transactions of 100 (as the controller writes its slab map).
    let mut i = 0;
    while i < keys {
        let ops: Vec<Op> = (i..(i + 100).min(keys))
            .map(|k| Op::Put { key: format!("/krak/slabs/{}/{k}", k / 1000), value: vec![7; 120], lease: None })
            .collect();
        s.txn(&[], &ops).unwrap();
        i += 100;
    }
    drop(s);
    let t = Instant::now();
    let s = open(dir);
    let opened = t.elapsed();
    // Before the list: what holding the open store costs the process.
    let rss_mib = rss_mib();
    let t = Instant::now();
    let n = s.list("/krak/slabs/").unwrap().len();
    let listed = t.elapsed();
    assert_eq!(n, keys);
    let bytes: u64 = std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    println!(
        "| {name} | {:.0} / {:.0} | {:.0} / {:.0} | {:.1} | {:.0} | {:.0} | {:.1} | {rss_mib:.0} |",
        pct(&mut put, 0.5).as_secs_f64() * 1e6,
        pct(&mut put, 0.99).as_secs_f64() * 1e6,
        pct(&mut txn, 0.5).as_secs_f64() * 1e6,
        pct(&mut txn, 0.99).as_secs_f64() * 1e6,
        pct(&mut get, 0.5).as_secs_f64() * 1e6,
        opened.as_secs_f64() * 1e3,
        listed.as_secs_f64() * 1e3,
        bytes as f64 / (1 << 20) as f64,
    );
    drop(s);
    let _ = std::fs::remove_dir_all(dir);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let writes: usize = args.next().map_or(500, |a| a.parse().expect("WRITES"));
    let keys: usize = args.next().map_or(100_000, |a| a.parse().expect("KEYS"));
    let base = std::env::temp_dir().join(format!("krak-store-writes-{}", std::process::id()));
    println!("{writes} puts, {writes} 4-key txns, {writes} gets; then {keys} keys in txns of 100, reopened and listed");
    println!(
        "| store | put p50 / p99 µs | txn p50 / p99 µs | get p50 µs | open ms | list ms | MiB on disk | VmRSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // One store per process would be cleaner; the file store (in memory) runs last, so
    // redb's figure is not inflated by it.
    {
        let round = 0;
        run("redb (default)", &base.join(format!("redb{round}")), writes, keys, &|d| {
            Box::new(krak_meta_redb::RedbStore::open(d).unwrap())
        });
        run("file log (older)", &base.join(format!("file{round}")), writes, keys, &|d| {
            Box::new(krak_meta_file::FileStore::open(d).unwrap())
        });
    }
    let _ = std::fs::remove_dir_all(&base);
}
