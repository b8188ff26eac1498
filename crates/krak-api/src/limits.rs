//! What one request may ask of the controller: both ends know these bounds, so a client can
//! split its requests to fit and the controller refuses what exceeds them (400).

/// Most slots of one region's slab map (chunks times stripe width; a 64 TiB region at 64 MiB
/// per chunk without redundancy).
pub const MAX_CHUNKS_PER_REGION: u64 = 1 << 20;
/// Most chunks in one place or commit request.
pub const MAX_CHUNKS_PER_REQUEST: usize = 4096;
/// Most fragments one chunk may be kept as (replicas, or data plus parity fragments).
pub const MAX_STRIPE_WIDTH: u32 = 32;
/// Most servers in a place request's `exclude`.
pub const MAX_EXCLUDE: usize = 256;
/// Longest address, domain or owner string.
pub const MAX_NAME_BYTES: usize = 256;
