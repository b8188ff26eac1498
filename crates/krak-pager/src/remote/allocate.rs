//! Slabs for a region given a list of servers: a stripe per chunk on distinct servers,
//! the first rotating with the chunk, new failure domains first.

use krak_client::{ClientError, Connection, ProtocolError};

use crate::error::PagerError;
use crate::remote::free_quietly;
use crate::remote::redundancy::Redundancy;
use crate::remote::stripe::{Frag, FragState, Stripe};

/// Allocates a stripe of `width` slabs on distinct servers for each chunk, rotating the
/// first server per chunk so fragments (parity included) spread over every server; frees
/// all of them on failure.
pub(crate) fn allocate(
    admin: &mut [Connection],
    domains: &[String],
    n_chunks: usize,
    chunk_pages: usize,
    scheme: Redundancy,
) -> Result<Vec<Stripe>, PagerError> {
    let (n, width, unit) = (admin.len(), scheme.width(), scheme.unit_bytes());
    if n < width {
        return Err(PagerError::Config(format!(
            "redundancy {scheme} stores each chunk on {width} distinct memory servers; {n} given"
        )));
    }
    let mut stripes: Vec<Stripe> = Vec::with_capacity(n_chunks);
    for c in 0..n_chunks {
        let mut stripe: Stripe = Vec::with_capacity(width);
        while stripe.len() < width {
            match allocate_fragment(admin, domains, &stripe, (c + stripe.len()) % n, unit as u32) {
                Ok(f) => stripe.push(f),
                Err(e) => {
                    stripes.push(stripe);
                    for f in stripes.iter().flatten() {
                        free_quietly(&mut admin[f.server], f.slab);
                    }
                    let per_chunk = (chunk_pages * unit * width) as u64;
                    return Err(if e.is_no_capacity() {
                        PagerError::RackFull {
                            needed_bytes: n_chunks as u64 * per_chunk,
                            got_bytes: c as u64 * per_chunk,
                            servers: n,
                        }
                    } else {
                        PagerError::Remote(e)
                    });
                }
            }
        }
        stripes.push(stripe);
    }
    Ok(stripes)
}

/// A slab for the next fragment of `stripe`: on `preferred`, else the next server with room
/// not already in the stripe; servers of a failure domain the stripe does not use yet first.
fn allocate_fragment(
    admin: &mut [Connection],
    domains: &[String],
    stripe: &Stripe,
    preferred: usize,
    unit_bytes: u32,
) -> Result<Frag, ClientError> {
    let n = admin.len();
    let mut last = None;
    for new_domain_only in [true, false] {
        for k in 0..n {
            let server = (preferred + k) % n;
            if stripe.iter().any(|f| f.uses(server))
                || (new_domain_only && shares_domain(domains, stripe, server, None))
            {
                continue;
            }
            match admin[server].alloc_slab_units(unit_bytes) {
                Ok(slab) => return Ok(Frag::new(server, slab, FragState::Live)),
                Err(e) if e.is_no_capacity() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
    }
    Err(last.unwrap_or_else(|| ClientError::Protocol {
        addr: admin[0].addr(),
        source: ProtocolError::Caller("no server left for a fragment"),
    }))
}

/// Whether `server`'s declared domain is that of a fragment of `stripe` (but `except`).
pub(crate) fn shares_domain(domains: &[String], stripe: &Stripe, server: usize, except: Option<usize>) -> bool {
    let Some(d) = domains.get(server).filter(|d| !d.is_empty()) else { return false };
    stripe.iter().enumerate().any(|(i, f)| Some(i) != except && domains.get(f.server) == Some(d))
}
