//! Mappings and allocations the arena does not serve: they get ordinary memory (or, for a
//! `MAP_FIXED` over far memory that the arena cannot take, the kernel's mapping in its
//! place), counted by reason for `--stats` and logged once per reason. Never a crash.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Clone, Copy)]
pub enum Reason {
    /// Large requests while the arena's address space (`--max-far`) is used up.
    ArenaFull,
    /// `MAP_SHARED` anonymous memory: shared with fork children, which no pager serves.
    Shared,
    /// `MAP_LOCKED`, `MAP_HUGETLB`, `MAP_GROWSDOWN` or `MAP_32BIT`: the kernel's to place and page.
    KernelPaged,
    /// A protection without `PROT_READ` with the pager in the program (it reads pages
    /// through the program's mapping to evict them).
    UnreadableInProcess,
    /// A file or shared mapping placed with `MAP_FIXED` over far memory: the kernel maps it
    /// there, and those pages are ordinary memory until it is unmapped.
    FixedOverFar,
    /// The kernel refused a protection on the arena's memfd (`PROT_EXEC` under
    /// `vm.memfd_noexec = 2`, or `vm.max_map_count` reached).
    ProtectionRefused,
    /// A file or shared `MAP_FIXED` mapping over an arena whose pager is in the program
    /// (which could not take the range back): refused with `ENOMEM`.
    FixedRefused,
}

const REASONS: [(Reason, &str, &str); 7] = [
    (Reason::ArenaFull, "arena_full", "the far-memory arena is full (raise --max-far)"),
    (Reason::Shared, "shared_anonymous", "MAP_SHARED anonymous memory is shared with fork children"),
    (
        Reason::KernelPaged,
        "kernel_paged",
        "MAP_LOCKED, MAP_HUGETLB, MAP_GROWSDOWN and MAP_32BIT mappings are the kernel's",
    ),
    (
        Reason::UnreadableInProcess,
        "unreadable_in_process",
        "memory without PROT_READ cannot be evicted by an in-process pager (use --pager separate)",
    ),
    (Reason::FixedOverFar, "fixed_over_far", "a file or shared MAP_FIXED mapping over far memory is the kernel's"),
    (
        Reason::ProtectionRefused,
        "protection_refused",
        "the kernel refused the protection on the arena (vm.memfd_noexec = 2, or vm.max_map_count reached)",
    ),
    (
        Reason::FixedRefused,
        "fixed_refused_in_process",
        "a file or shared MAP_FIXED mapping over an in-process arena is refused (use --pager separate)",
    ),
];

static COUNTS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];
static BYTES: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

/// Counts a request of `bytes` that got ordinary memory, and logs the first of each kind
/// (the log is the arena's, so nothing is written before it started).
pub fn fell_back(reason: Reason, bytes: usize) {
    let i = reason as usize;
    BYTES[i].fetch_add(bytes as u64, Relaxed);
    if COUNTS[i].fetch_add(1, Relaxed) == 0 {
        crate::far::guarded(|| {
            tracing::warn!("{bytes} bytes in ordinary memory, not far memory: {} (counted in --stats)", REASONS[i].2)
        });
    }
}

pub fn total() -> u64 {
    COUNTS.iter().map(|c| c.load(Relaxed)).sum()
}

/// `{reason: {count, bytes, why}}` for every reason seen, for `--stats`.
pub fn describe() -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (i, (_, name, why)) in REASONS.iter().enumerate() {
        let count = COUNTS[i].load(Relaxed);
        if count > 0 {
            out.insert(
                (*name).into(),
                serde_json::json!({ "count": count, "bytes": BYTES[i].load(Relaxed), "why": why }),
            );
        }
    }
    out.into()
}
