//! The API of a standby controller: 503 to everything, naming the leader, behind the same
//! bounded HTTP front end as the leader's. With a rack secret, only signed requests learn
//! who leads, and the answer is signed so clients can trust it and move on.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use krak_auth::RackSecret;

use crate::auth::{verify_request, ReplayGuard, Verdict};
use crate::config::ControllerConfig;
use crate::http::{HttpServer, Request, Response};

#[derive(Debug)]
pub(crate) struct Standby {
    pub(crate) addr: SocketAddr,
    leader: Arc<Mutex<String>>,
    server: Option<HttpServer>,
}

impl Standby {
    pub(crate) fn start(
        config: &ControllerConfig,
        listen: SocketAddr,
        leader: String,
        secret: Option<RackSecret>,
    ) -> std::io::Result<Standby> {
        let leader = Arc::new(Mutex::new(leader));
        let replays = ReplayGuard::default();
        let answer_leader = leader.clone();
        let handler = move |request: Request| -> Response {
            let leader = answer_leader.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let body = serde_json::json!({
                "error": format!("standby controller; the leader is {leader}"),
                "leader": leader,
            });
            let mut response = Response::json(503, &body);
            if let Some(secret) = &secret {
                let checked = verify_request(
                    secret,
                    &replays,
                    krak_api::signing::now_ms(),
                    None,
                    &request.method,
                    &request.url,
                    &request.body,
                    request.authorization.as_deref(),
                );
                match checked {
                    // It serves nothing, so takes a request made for any run (a client
                    // that knew the old leader is told who leads now).
                    Ok(Verdict::Serve(nonce) | Verdict::OtherBoot(nonce)) => {
                        response.auth =
                            Some(krak_api::signing::sign_response(secret, &nonce, response.status, &response.body));
                    }
                    Err(e) => response = Response::error(401, &e.to_string()),
                }
            }
            response
        };
        let server =
            HttpServer::start(listen, config.http_limits(), config.tls.clone(), Arc::default(), Arc::new(handler))?;
        Ok(Standby { addr: server.addr(), leader, server: Some(server) })
    }

    /// Names another leader in the answers from now on.
    pub(crate) fn set_leader(&self, leader: String) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}
