//! One fragment of a stripe at a time: the fragments of a chunk go to distinct servers, and
//! to distinct failure domains while there are enough of them, so that losing one server
//! (or one domain) costs a stripe at most one fragment. The policy still chooses among the
//! servers that qualify. The controller and a pager given a list of servers both place
//! fragments through [`choose_fragment`].

use krak_api::{RegionId, ServerId};

use crate::view::PlacementView;
use crate::{PlacementError, PlacementPolicy};

/// A server for one more fragment of a stripe of `region` whose other fragments are on
/// `taken`: never one of `exclude` or `taken`, and outside the failure domains of `taken`
/// if any server there fits.
pub fn choose_fragment(
    policy: &dyn PlacementPolicy,
    view: &PlacementView,
    region: RegionId,
    taken: &[ServerId],
    exclude: &[ServerId],
) -> Result<ServerId, PlacementError> {
    let mut avoid: Vec<ServerId> = exclude.iter().chain(taken).copied().collect();
    let servers_only = avoid.len();
    avoid.extend(same_domain(view, taken));
    let pick = match policy.choose(view, region, 1, &avoid) {
        // not enough domains: distinct servers still
        Err(PlacementError::NoCapacity { .. }) if avoid.len() > servers_only => {
            policy.choose(view, region, 1, &avoid[..servers_only])
        }
        other => other,
    }?;
    pick.first().copied().ok_or(PlacementError::NoCapacity { wanted: 1, placed: 0 })
}

/// Servers sharing a declared failure domain with one of `servers` (an empty domain name
/// declares none).
pub fn same_domain(view: &PlacementView, servers: &[ServerId]) -> Vec<ServerId> {
    let mut out = Vec::new();
    for &id in servers {
        let Some(stat) = view.server(id) else { continue };
        let domain = &view.domains()[stat.domain as usize];
        if domain.name.is_empty() {
            continue;
        }
        out.extend(domain.servers.iter().map(|&i| view.servers()[i as usize].id).filter(|s| *s != id));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::rack;
    use crate::{by_name, POLICY_NAMES};
    use krak_api::ServerState;

    #[test]
    fn a_fragment_avoids_the_stripe_and_its_domains_while_it_can() {
        for name in POLICY_NAMES {
            let p = by_name(name).unwrap();
            let v = rack(&[("a", 10, 10), ("a", 10, 10), ("b", 10, 10), ("", 10, 10)]);
            // taken on 1 (domain a): 2 shares it, so 3 or 4
            for _ in 0..50 {
                let s = choose_fragment(&*p, &v, RegionId(1), &[ServerId(1)], &[]).unwrap();
                assert!(s == ServerId(3) || s == ServerId(4), "{name}: {s:?}");
            }
            // every other domain excluded: a distinct server of the same domain still
            let s = choose_fragment(&*p, &v, RegionId(1), &[ServerId(1)], &[ServerId(3), ServerId(4)]).unwrap();
            assert_eq!(s, ServerId(2), "{name}");
            // nothing left
            let r = choose_fragment(&*p, &v, RegionId(1), &[ServerId(1), ServerId(2)], &[ServerId(3), ServerId(4)]);
            assert_eq!(r, Err(PlacementError::NoCapacity { wanted: 1, placed: 0 }), "{name}");
        }
    }

    #[test]
    fn dead_and_full_servers_are_never_chosen() {
        let mut v = rack(&[("", 10, 10), ("", 10, 0), ("", 10, 10)]);
        v.set_state(ServerId(3), ServerState::Dead);
        for name in POLICY_NAMES {
            let p = by_name(name).unwrap();
            assert_eq!(choose_fragment(&*p, &v, RegionId(1), &[], &[]), Ok(ServerId(1)), "{name}");
            assert!(choose_fragment(&*p, &v, RegionId(1), &[ServerId(1)], &[]).is_err(), "{name}");
        }
    }
}
