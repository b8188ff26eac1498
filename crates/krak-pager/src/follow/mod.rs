//! Regions placed by the rack controller, and following its map while the region lives.
//!
//! With a controller URL instead of a list of servers, the region is registered with the
//! controller, which chooses a server for each fragment of each chunk (its placement
//! policy; one fragment, the whole chunk, without redundancy); the pager allocates the
//! slabs itself (it holds their capabilities) and commits them to the map
//! (`follow/place.rs`). A follower thread then long-polls the region's map: it checks the
//! servers the map calls dead itself and loses those that no longer serve the region (for
//! re-protection to replace, where the scheme survives a loss), and moves fragments, one at a time, off servers that drain or whose host is short
//! of memory (`moves/fragment.rs`), each to a server the controller places that slot on,
//! while the region stays in use, and commits the new home. It also takes up the local
//! budget an operator sets; a reporter thread reports the region's figures every second
//! (`follow/live.rs`).

pub(crate) mod link;
pub(crate) mod live;
pub(crate) mod moves;
pub(crate) mod place;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use krak_api::messages::MapReply;
use krak_api::{Api, ServerId, ServerState};

use crate::follow::link::{ControllerLink, RETRY_PAUSE_MS};
use crate::follow::moves::{consolidate_fragments, move_fragments_off};
use crate::remote::health::{self, Health};
use crate::state::core::RegionShared;

/// How long one map long-poll may wait; also bounds how long dropping a region waits for
/// the follower.
const MAP_POLL_MS: u64 = 1_000;
/// Most consolidation moves carried out per map round.
const MAX_MOVES_PER_ROUND: usize = 8;

/// The follower thread: keeps the region off draining servers until the region is dropped.
pub(crate) fn follow(shared: Arc<RegionShared>, link: Arc<ControllerLink>, budget_bytes: u64) {
    let mut reported_dead = HashSet::new();
    // Servers the map calls dead that still served the region when last checked (said once).
    let mut doubted = HashSet::new();
    // Map epoch at which consolidation last moved nothing: not tried again until the map
    // changes.
    let mut stuck_at_epoch = None;
    // Its own client for the long-poll, so that re-protection's and moves' calls do not
    // wait behind it.
    let mut poller = link.client.lock().clone();
    let mut budget = live::Budget::new(budget_bytes);
    while !shared.stop.load(Ordering::Relaxed) {
        let since = link.epoch.load(Ordering::Relaxed);
        let map = match poller.map_since(link.region, since, Duration::from_millis(MAP_POLL_MS)) {
            Ok(map) => map,
            Err(krak_api::ApiError::Status { status: 404, message }) => {
                // Reclaimed (its lease ran out while the controller did not hear from this
                // pager) or deleted by someone: nothing left to follow. The region keeps
                // serving from the slabs it holds, which the servers keep while it is
                // connected; the rack no longer counts them, moves or drains them.
                tracing::error!(
                    "the rack controller no longer knows region {} ({message}): it keeps its pages on \
                     its servers, but the rack no longer manages it (no moves, drains or budget changes)",
                    link.region
                );
                return;
            }
            Err(e) => {
                tracing::warn!("controller unreachable ({e}); the region keeps its current placement");
                std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
                continue;
            }
        };
        let avoid: Vec<ServerId> = map.servers.iter().filter(|s| s.state != ServerState::Alive).map(|s| s.id).collect();
        budget.follow(&shared, map.region.local_budget_bytes);
        follow_servers(&shared, &link, &map, &avoid, &mut reported_dead, &mut doubted);
        consolidate(&shared, &link, &map, &mut stuck_at_epoch);
        link.epoch.fetch_max(map.epoch, Ordering::Relaxed);
    }
}

/// The consolidation moves (`pack`) a map asks of the region, a bounded number per round
/// (each commit brings a new epoch and the next round sees what is still asked); a round
/// that moved nothing is not tried again until the map changes (every fragment left may
/// share its chunk with every other server).
fn consolidate(shared: &RegionShared, link: &ControllerLink, map: &MapReply, stuck_at_epoch: &mut Option<u64>) {
    if map.moves.is_empty() || *stuck_at_epoch == Some(map.epoch) {
        return;
    }
    let mut moved = 0;
    for mv in map.moves.iter().take(MAX_MOVES_PER_ROUND) {
        let Some(from) = map.servers.iter().find(|s| s.id == mv.from) else { continue };
        match consolidate_fragments(shared, link, from, mv) {
            Ok(n) => moved += n,
            Err(e) => tracing::error!("consolidating fragments of {} into {}: {e}", from.addr, mv.to_addr),
        }
    }
    if moved == 0 {
        tracing::debug!("no fragment could be consolidated at map epoch {}", map.epoch);
        *stuck_at_epoch = Some(map.epoch);
    }
}

/// What a region takes from a map: a server the controller calls dead is asked by the
/// region itself, and if it no longer serves the region it is lost where the scheme
/// survives that (re-protection replaces its fragments), and said once otherwise; the fragments on a draining server move off it, and one fragment moves
/// off a server whose host is short of memory (its next heartbeat says whether it needs
/// more, and that new epoch wakes this loop again).
fn follow_servers(
    shared: &RegionShared,
    link: &ControllerLink,
    map: &MapReply,
    avoid: &[ServerId],
    reported_dead: &mut HashSet<ServerId>,
    doubted: &mut HashSet<ServerId>,
) {
    let layout = &shared.layout;
    for server in &map.servers {
        match server.state {
            ServerState::Dead => {
                let addr = server.addr.parse::<SocketAddr>().ok();
                let Some(index) = addr.and_then(|a| layout.find_server(a)).filter(|i| !layout.stripes.is_lost(*i))
                else {
                    continue;
                };
                // A verdict this region can check: a server that still serves it keeps its
                // fragments, whatever kept its heartbeats from the controller.
                let why = match health::check(shared, index) {
                    Health::Serving => {
                        if doubted.insert(server.id) {
                            tracing::warn!(
                                "the rack controller reports memory server {} dead, but it serves this region: \
                                 keeping its fragments",
                                server.addr
                            );
                        }
                        continue;
                    }
                    Health::Restarted => "the rack controller reports it dead, and it restarted".to_string(),
                    Health::Unreachable(e) | Health::NoAnswer(e) => {
                        format!("the rack controller reports it dead, and it does not answer: {e}")
                    }
                };
                doubted.remove(&server.id);
                let lost = crate::remote::stripe::lose(layout, index, &why);
                if !lost && reported_dead.insert(server.id) {
                    tracing::error!(
                        "memory server {} is dead; pages of this region that lived only there are lost",
                        server.addr
                    );
                }
            }
            ServerState::Draining => {
                if let Err(e) = move_fragments_off(shared, link, server, avoid, usize::MAX) {
                    tracing::error!("moving the region off {}: {e}", server.addr);
                }
            }
            ServerState::Alive if server.shed_bytes > 0 => {
                let mut avoid = avoid.to_vec();
                avoid.push(server.id);
                if let Err(e) = move_fragments_off(shared, link, server, &avoid, 1) {
                    tracing::error!("moving a fragment off {} (its host is short of memory): {e}", server.addr);
                }
            }
            _ => {}
        }
    }
}
