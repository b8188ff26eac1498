//! Whether a memory server still serves this region, as the region itself sees it: it
//! answers a stats request on the admin connection, as the same server process that lent
//! the region's slabs (a restarted server lent them to no one). Re-protection's probe and
//! the follower's check of a controller's verdict both ask here.

use krak_client::ClientError;

use crate::remote::admin_conn;
use crate::state::core::RegionShared;

pub(crate) enum Health {
    Serving,
    /// Another process answers at the address: the slabs it lent are gone.
    Restarted,
    /// Nothing listens there.
    Unreachable(ClientError),
    /// It did not answer in time, or answered wrong.
    NoAnswer(ClientError),
}

/// Asks server `server` of the region's table, on its admin connection (reopened if need
/// be): one stats round trip, bounded by the I/O timeout.
pub(crate) fn check(shared: &RegionShared, server: usize) -> Health {
    let layout = &shared.layout;
    let mut admin = shared.admin.lock();
    let answer = admin_conn(&mut admin, layout, server).and_then(|c| {
        let id = c.hello().server_id;
        c.stats().map(|_| id)
    });
    match answer {
        Ok(id) => {
            let mut known = shared.server_ids.lock();
            match known.get(&server) {
                Some(k) if *k != id => Health::Restarted,
                Some(_) => Health::Serving,
                None => {
                    known.insert(server, id);
                    Health::Serving
                }
            }
        }
        Err(e) => {
            admin[server] = None;
            match e {
                ClientError::Connect { .. } => Health::Unreachable(e),
                e => Health::NoAnswer(e),
            }
        }
    }
}
