//! The one way to name a rack: `--controller URL[,URL...]`, defaulting to
//! `$KRAK_CONTROLLER`, and a client that fails over between the URLs it names.

use std::time::Duration;

use anyhow::bail;
use krak_controller::{Client, ClientError};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `--controller`, shared by every command that talks to a rack.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArg {
    /// The rack's controller: http://HOST:PORT, or several separated by commas (a leader and
    /// its standbys; the first that answers as leader is used). Defaults to $KRAK_CONTROLLER.
    #[arg(long, value_name = "URL", env = "KRAK_CONTROLLER", global = true)]
    pub controller: Option<String>,
}

impl ControllerArg {
    /// A client of the named rack; an error saying how to name one when none is.
    pub fn client(&self, timeout: Duration) -> anyhow::Result<RackClient> {
        match self.controller.as_deref().map(str::trim) {
            Some(urls) if !urls.is_empty() => RackClient::new(urls, timeout),
            _ => bail!("which rack? give --controller http://HOST:PORT or set $KRAK_CONTROLLER"),
        }
    }
}

/// `--controller` where naming a rack is optional (a memory server may serve on its own).
#[derive(Debug, Clone, clap::Args)]
pub struct OptionalControllerArg {
    /// Register with this rack controller (http://HOST:PORT, or several separated by commas)
    /// and heartbeat to it. Defaults to $KRAK_CONTROLLER; without either, the memory server
    /// serves on its own.
    #[arg(long, value_name = "URL", env = "KRAK_CONTROLLER")]
    pub controller: Option<String>,
}

/// A client of a rack whose controller may be any of several URLs: a call goes to the URL
/// that answered last, and moves on to the next one when a URL cannot be reached or answers
/// 503 (a standby, or a leader whose store failed).
#[derive(Debug, Clone)]
pub struct RackClient {
    clients: Vec<(String, Client)>,
    current: usize,
}

impl RackClient {
    pub fn new(urls: &str, timeout: Duration) -> anyhow::Result<RackClient> {
        let mut clients = Vec::new();
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let mut client = Client::new(url)?;
            client.timeout = timeout;
            clients.push((url.to_string(), client));
        }
        if clients.is_empty() {
            bail!("no controller URL given (--controller or $KRAK_CONTROLLER)");
        }
        Ok(RackClient { clients, current: 0 })
    }

    /// The URL that answered last (or will be tried first).
    pub fn url(&self) -> &str {
        &self.clients[self.current].0
    }

    /// Calls each URL in turn from the current one until one answers other than 503 or a
    /// connection failure; returns that answer, or the last failure.
    pub fn call<B: Serialize, T: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let n = self.clients.len();
        let mut last = None;
        for i in 0..n {
            let at = (self.current + i) % n;
            match self.clients[at].1.call(method, path, body) {
                Err(e @ (ClientError::Io { .. } | ClientError::Status { status: 503, .. })) => {
                    tracing::debug!("{}: {e}", self.clients[at].0);
                    last = Some(e);
                }
                answer => {
                    self.current = at;
                    return answer;
                }
            }
        }
        Err(last.expect("at least one URL"))
    }
}
