//! The rack secret on the command line: `--secret-file` / `$KRAK_SECRET_FILE`, the explicit
//! `--insecure` opt-out, and `krak secret new`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use krak_proto::RackSecret;

/// Where the rack secret comes from, for every command that talks to a rack.
#[derive(Debug, Clone, clap::Args)]
pub struct SecretArgs {
    /// File holding the rack secret (64 hex digits, mode 0600; make one with
    /// `krak secret new PATH`). Every machine of the rack uses the same secret.
    #[arg(long, value_name = "PATH", env = "KRAK_SECRET_FILE", global = true)]
    pub secret_file: Option<PathBuf>,
    /// Run without a rack secret: anyone who can reach the rack may use it. Only for
    /// experiments on a machine of your own.
    #[arg(long, conflicts_with = "secret_file", global = true)]
    pub insecure: bool,
}

impl SecretArgs {
    /// The secret, or `None` with --insecure; an error when neither was given.
    pub fn load(&self) -> anyhow::Result<Option<RackSecret>> {
        match (&self.secret_file, self.insecure) {
            (Some(path), _) => Ok(Some(krak_auth::load_secret_file(path)?)),
            (None, true) => {
                tracing::warn!("--insecure: no rack secret, anyone who can reach this rack may use it");
                Ok(None)
            }
            (None, false) => bail!(
                "no rack secret: pass --secret-file PATH (or set $KRAK_SECRET_FILE; make one with \
                 `krak secret new PATH`), or --insecure to run without one"
            ),
        }
    }
}

/// Manage the rack secret.
#[derive(Debug, clap::Args)]
pub struct SecretCmd {
    #[command(subcommand)]
    action: SecretAction,
}

#[derive(Debug, clap::Subcommand)]
enum SecretAction {
    /// Write a fresh random rack secret to a new file (mode 0600; never overwrites).
    /// Copy it to every machine of the rack and pass it with --secret-file.
    New {
        /// The file to create.
        path: PathBuf,
    },
}

pub fn run(cmd: SecretCmd) -> anyhow::Result<()> {
    match cmd.action {
        SecretAction::New { path } => {
            krak_auth::write_new_secret_file(&path).context("writing the rack secret")?;
            println!("wrote a new rack secret to {}", path.display());
            Ok(())
        }
    }
}
