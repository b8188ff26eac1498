//! The policies the mechanism asks: which page to give up, which to fetch ahead.

pub mod eviction;
pub mod prefetch;
