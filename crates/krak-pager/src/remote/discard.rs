//! Telling memory servers to forget discarded pages (`DiscardPages`), so that a program's
//! `free` or `munmap` gives back the servers' memory too, not only the local copy.
//!
//! Run by the write-back thread, before any batch taken after the discard, so that a page
//! rewritten after its discard is written after it. Best effort: the pager has forgotten
//! the remote copies already (the pages read as zeros locally), so a failure only leaves
//! memory held on the server until the region is dropped; it is logged, not retried.

use std::ops::Range;

use krak_client::ClientError;
use krak_proto::{PageRef, MAX_BATCH_PAGES};

use crate::remote::{Links, RemoteLayout};

impl Links {
    /// Discards every remote copy (each fragment, and the slab a moving fragment moves to)
    /// of the pages of `ranges`; returns the units the servers discarded.
    pub(crate) fn discard_remote(&mut self, layout: &RemoteLayout, ranges: Vec<Range<usize>>) -> u64 {
        let unit_bytes = layout.redundancy().unit_bytes() as u32;
        let mut groups: Vec<Vec<PageRef>> = vec![Vec::new(); layout.server_count()];
        let mut add = |server: usize, at: PageRef| {
            if server >= groups.len() {
                groups.resize_with(server + 1, Vec::new);
            }
            groups[server].push(at);
        };
        for page in ranges.into_iter().flatten() {
            let at = (page % layout.chunk_pages) as u32;
            layout.stripes.with(page / layout.chunk_pages, |stripe| {
                for f in stripe {
                    let home = f.is_written().then_some((f.server, f.slab));
                    for (server, slab) in home.into_iter().chain(f.moving_to) {
                        add(server, PageRef { slab, page: at });
                    }
                }
            });
        }
        let mut discarded = 0;
        for (server, refs) in groups.iter().enumerate() {
            for batch in refs.chunks(MAX_BATCH_PAGES) {
                match self.discard_batch(layout, server, unit_bytes, batch) {
                    Ok(n) => discarded += u64::from(n),
                    Err(e) => {
                        tracing::warn!(
                            "{} keeps {} discarded units until the region is dropped: {e}",
                            layout.server_addr(server),
                            batch.len()
                        );
                        if let Some(c) = self.conns.get_mut(server) {
                            *c = None;
                        }
                    }
                }
            }
        }
        discarded
    }

    fn discard_batch(
        &mut self,
        layout: &RemoteLayout,
        server: usize,
        unit_bytes: u32,
        batch: &[PageRef],
    ) -> Result<u32, ClientError> {
        self.conn(layout, server)?.discard_units(unit_bytes, batch)
    }
}
