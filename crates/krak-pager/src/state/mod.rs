//! What a region's threads share: the core (page table, budget, policies, write-back and
//! move queues), the lock order, the region's memory and its counters.

pub(crate) mod core;
pub(crate) mod lock_order;
pub(crate) mod memory;
pub(crate) mod page_table;
pub(crate) mod stats;
