//! The HTTP/JSON API (documented in `docs/api.md`): routing, decoding, and each endpoint.
//! Nothing a client sends can panic it: bodies are bounded and parsed with serde, paths and
//! queries are parsed by hand with every failure answered as a 4xx JSON error.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::auth::Verdict;
use crate::controller::ControllerShared;
use crate::http::{Request, Response};
use crate::rack::RackError;
use krak_api::messages::{
    parse_region, parse_server, BudgetRequest, CommitReply, CommitRequest, CreateRegionRequest, HeartbeatRequest,
    MoveStartRequest, PlaceReply, PlaceRequest, PolicyBody, RegionLive, RegionReply, RegisterRequest, ReleaseRequest,
    ServersReply,
};
use krak_placement::{PlacementError, POLICY_NAMES};

/// Answers one request: checks its signature first when the controller has a secret
/// (all but `GET /metrics`, which stays open for scrapers), and signs the answer.
pub fn handle(shared: &ControllerShared, req: Request) -> Response {
    let started = Instant::now();
    let endpoint = crate::metrics::endpoint(&req.method, &req.path);
    let response = answer(shared, &req);
    shared.metrics.http_request(endpoint, response.status, started.elapsed());
    response
}

fn answer(shared: &ControllerShared, req: &Request) -> Response {
    let Some(secret) = shared.config.secret.as_ref() else {
        return route(shared, req).unwrap_or_else(|e| error_response(shared, &e));
    };
    if req.method == "GET" && req.path.trim_end_matches('/') == "/metrics" {
        return route(shared, req).unwrap_or_else(|e| error_response(shared, &e));
    }
    let now = krak_api::signing::now_ms();
    let checked = crate::auth::verify_request(
        secret,
        &shared.replays,
        now,
        Some(shared.boot),
        &req.method,
        &req.url,
        &req.body,
        req.authorization.as_deref(),
    );
    match checked {
        Ok(Verdict::Serve(nonce)) => {
            let mut r = route(shared, req).unwrap_or_else(|e| error_response(shared, &e));
            r.auth = Some(krak_api::signing::sign_response(secret, &nonce, r.status, &r.body));
            r
        }
        Ok(Verdict::OtherBoot(nonce)) => {
            // Normal once per client after a restart or a takeover; a replay from before
            // either looks the same, and is not served.
            tracing::debug!("{} {}: made for another run of the controller; told this one", req.method, req.path);
            let mut r = Response::json(401, &krak_api::signing::boot_refusal(shared.boot));
            r.auth = Some(krak_api::signing::sign_response(secret, &nonce, r.status, &r.body));
            r
        }
        Err(e) => {
            tracing::warn!("refused {} {}: {e}", req.method, req.path);
            let status = if e == krak_api::signing::AuthError::Busy { 503 } else { 401 };
            Response::error(status, &e.to_string())
        }
    }
}

fn error_response(shared: &ControllerShared, e: &RackError) -> Response {
    let status = match e {
        RackError::BadRequest(_) => 400,
        RackError::NotFound(_) => 404,
        RackError::Conflict(_) | RackError::StripeClash(_) => 409,
        RackError::Placement(PlacementError::UnknownRegion(_)) => 404,
        RackError::Placement(PlacementError::NoCapacity { .. }) => {
            shared.metrics.placement_failed();
            507
        }
        RackError::Store(_) => 503,
    };
    Response::error(status, &e.to_string())
}

fn route(shared: &ControllerShared, req: &Request) -> Result<Response, RackError> {
    let parts: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method.as_str();
    let bad_id = || RackError::BadRequest(format!("bad id in {}", req.path));
    match (method, parts.as_slice()) {
        ("GET", ["metrics"]) => {
            let mut scrape = crate::metrics::Scrape::default();
            shared.metrics.register(&mut scrape, &shared.rack.lock());
            shared.http_stats.register(&mut scrape);
            Ok(Response::metrics(scrape.encode()))
        }
        ("GET", ["v1", "status"]) => Ok(Response::json(200, &shared.rack.lock().status())),
        ("GET", ["v1", "servers"]) => {
            Ok(Response::json(200, &ServersReply { servers: shared.rack.lock().server_statuses() }))
        }
        ("POST", ["v1", "servers"]) => {
            let body: RegisterRequest = decode(&req.body)?;
            let reply = shared.rack.lock().register(&body)?;
            shared.changed.notify_all();
            Ok(Response::json(200, &reply))
        }
        ("POST", ["v1", "servers", id, "heartbeat"]) => {
            let id = parse_server(id).ok_or_else(bad_id)?;
            let body: HeartbeatRequest = decode(&req.body)?;
            let reply = shared.rack.lock().heartbeat(id, &body)?;
            shared.changed.notify_all();
            Ok(Response::json(200, &reply))
        }
        ("POST", ["v1", "servers", id, "drain"]) => {
            let id = parse_server(id).ok_or_else(bad_id)?;
            let record = shared.rack.lock().drain(id)?;
            shared.changed.notify_all();
            Ok(Response::json(200, &record))
        }
        ("POST", ["v1", "regions"]) => {
            let body: CreateRegionRequest = decode(&req.body)?;
            let region = shared.rack.lock().create_region(&body)?;
            Ok(Response::json(201, &RegionReply { region }))
        }
        ("DELETE", ["v1", "regions", id]) => {
            let id = parse_region(id).ok_or_else(bad_id)?;
            let region = shared.rack.lock().delete_region(id)?;
            shared.changed.notify_all();
            Ok(Response::json(200, &RegionReply { region }))
        }
        ("PUT", ["v1", "regions", id, "budget"]) => {
            let id = parse_region(id).ok_or_else(bad_id)?;
            let body: BudgetRequest = decode(&req.body)?;
            let region = shared.rack.lock().set_budget(id, body.local_budget_bytes)?;
            shared.changed.notify_all();
            Ok(Response::json(200, &RegionReply { region }))
        }
        ("PUT", ["v1", "regions", id, "live"]) => {
            let id = parse_region(id).ok_or_else(bad_id)?;
            renew(shared, id);
            let body: RegionLive = decode(&req.body)?;
            shared.rack.lock().report_live(id, body)?;
            Ok(Response::json(200, &serde_json::json!({})))
        }
        ("POST", ["v1", "regions", id, "place"]) => {
            let id = parse_region(id).ok_or_else(bad_id)?;
            renew(shared, id);
            let body: PlaceRequest = decode(&req.body)?;
            let rack = shared.rack.lock();
            let started = Instant::now();
            let placed = rack.place(id, &body.chunks, &body.exclude);
            shared.metrics.observe_decision(started.elapsed());
            Ok(Response::json(200, &PlaceReply { policy: rack.policy_name().to_string(), placements: placed? }))
        }
        ("POST", ["v1", "regions", id, "commit"]) => {
            let id = parse_region(id).ok_or_else(bad_id)?;
            renew(shared, id);
            let body: CommitRequest = decode(&req.body)?;
            let epoch = shared.rack.lock().commit(id, &body.chunks)?;
            shared.metrics.committed();
            shared.changed.notify_all();
            Ok(Response::json(200, &CommitReply { epoch }))
        }
        ("POST", ["v1", "regions", id, "release"]) => {
            let id = parse_region(id).ok_or_else(bad_id)?;
            renew(shared, id);
            let body: ReleaseRequest = decode(&req.body)?;
            let epoch = shared.rack.lock().release(id, &body.chunks)?;
            shared.changed.notify_all();
            Ok(Response::json(200, &CommitReply { epoch }))
        }
        ("POST", ["v1", "regions", id, "moves"]) => {
            let id = parse_region(id).ok_or_else(bad_id)?;
            renew(shared, id);
            let body: MoveStartRequest = decode(&req.body)?;
            shared.rack.lock().start_move(id, &body)?;
            Ok(Response::json(200, &serde_json::json!({})))
        }
        ("DELETE", ["v1", "regions", id, "moves", slot]) => {
            let id = parse_region(id).ok_or_else(bad_id)?;
            renew(shared, id);
            let slot: u64 = slot.parse().map_err(|_| RackError::BadRequest(format!("bad slot {slot:?}")))?;
            shared.rack.lock().abandon_move(id, slot)?;
            Ok(Response::json(200, &serde_json::json!({})))
        }
        ("GET", ["v1", "regions", id, "map"]) => {
            let id = parse_region(id).ok_or_else(bad_id)?;
            renew(shared, id);
            map(shared, id, &req.query)
        }
        ("GET", ["v1", "policy"]) => Ok(Response::json(200, &policy_body(shared.rack.lock().policy_name()))),
        ("PUT", ["v1", "policy"]) => {
            let body: PolicyBody = decode(&req.body)?;
            let mut rack = shared.rack.lock();
            rack.set_policy(&body.name)?;
            Ok(Response::json(200, &policy_body(rack.policy_name())))
        }
        ("GET", ["v1", "broker"]) => Ok(Response::json(200, &shared.rack.lock().broker_status())),
        ("PUT", ["v1", "broker"]) => {
            let body: krak_api::broker::BrokerConfig = decode(&req.body)?;
            let status = shared.rack.lock().set_broker(body)?;
            Ok(Response::json(200, &status))
        }
        (_, ["metrics"])
        | (_, ["v1", "status" | "servers" | "regions" | "policy" | "broker"])
        | (_, ["v1", "servers" | "regions", _, ..]) => {
            Ok(Response::error(405, &format!("{method} is not allowed on {}", req.path)))
        }
        _ => Err(RackError::NotFound(format!("no endpoint {}", req.path))),
    }
}

/// A request from region `id`'s pager: its lease runs on (`lease.rs`).
fn renew(shared: &ControllerShared, id: crate::model::RegionId) {
    shared.rack.lock().renew_lease(id, Instant::now());
}

fn policy_body(name: &str) -> PolicyBody {
    PolicyBody { name: name.to_string(), available: POLICY_NAMES.iter().map(|s| s.to_string()).collect() }
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, RackError> {
    serde_json::from_slice(body).map_err(|e| RackError::BadRequest(format!("malformed JSON body: {e}")))
}

/// `GET /v1/regions/{id}/map[?since_epoch=N][&wait_ms=M]`: with `since_epoch`, waits (up
/// to `wait_ms`, default and at most the configured long-poll bound) until the region's epoch
/// passes it, then answers the entries changed since.
fn map(shared: &ControllerShared, id: crate::model::RegionId, query: &str) -> Result<Response, RackError> {
    let mut since: Option<u64> = None;
    let mut wait_ms = shared.config.long_poll_max_ms;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: u64 = v.parse().map_err(|_| RackError::BadRequest(format!("bad query parameter {pair:?}")))?;
        match k {
            "since_epoch" => since = Some(n),
            "wait_ms" => wait_ms = n.min(shared.config.long_poll_max_ms),
            _ => return Err(RackError::BadRequest(format!("unknown query parameter {k:?}"))),
        }
    }
    let Some(since) = since else {
        return Ok(Response::json(200, &shared.rack.lock().map(id, 0)?));
    };
    let mut rack = shared.rack.lock();
    let waiting = shared.long_polls.fetch_add(1, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    // past the bound on waiting long-polls, answer at once so workers stay free
    if waiting < shared.config.max_long_polls {
        loop {
            let epoch = rack.region_epoch(id);
            if epoch.is_none_or_newer(since) || shared.stopping.load(Ordering::SeqCst) || Instant::now() >= deadline {
                break;
            }
            shared.changed.wait_until(&mut rack, deadline);
        }
    }
    shared.long_polls.fetch_sub(1, Ordering::SeqCst);
    Ok(Response::json(200, &rack.map(id, since)?))
}

trait EpochExt {
    fn is_none_or_newer(&self, since: u64) -> bool;
}

impl EpochExt for Option<u64> {
    /// True when the region is gone (answer 404 now) or has changed since `since`.
    fn is_none_or_newer(&self, since: u64) -> bool {
        self.is_none_or(|e| e > since)
    }
}
