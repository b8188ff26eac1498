//! The one way to name a rack: `--controller URL[,URL...]`, defaulting to
//! `$KRAK_CONTROLLER`, and a client that fails over between the URLs it names.

use std::time::Duration;

use anyhow::bail;

/// `--controller`, shared by every command that talks to a rack.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArg {
    /// The rack's controller: http://HOST:PORT, or several separated by commas (a leader and
    /// its standbys; the first that answers as leader is used). Defaults to $KRAK_CONTROLLER.
    #[arg(long, value_name = "URL", env = "KRAK_CONTROLLER", global = true)]
    pub controller: Option<String>,
    #[command(flatten)]
    pub secret: crate::secret_opts::SecretArgs,
}

impl ControllerArg {
    /// A client of the named rack, signing with its secret; an error saying how to name
    /// one when none is.
    pub fn client(&self, timeout: Duration) -> anyhow::Result<ControllerClient> {
        match self.controller.as_deref().map(str::trim) {
            Some(urls) if !urls.is_empty() => {
                Ok(ControllerClient::new(urls, timeout)?.with_secret(self.secret.load()?))
            }
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

pub use krak_api::ControllerClient;
