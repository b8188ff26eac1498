//! `krak pager-host` (hidden): the pager process of `krak run --pager separate`. It listens
//! on a Unix socket in a directory only its user can enter and serves each program's arena
//! (`krak_arena::host`). It reads its configuration from the same `KRAK_RUN_*` variables as
//! the preload library (`krak_arena::contract`), prints `ready` once listening, and stops
//! when its stdin closes (`krak run` closes it when the program has exited).

use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use anyhow::{bail, Context};
use krak_arena::contract::RunConfig;
use krak_pager::FaultMode;
use krak_uffd::SeqPacketListener;

#[derive(Debug, clap::Args)]
pub struct PagerHostArgs {
    /// The Unix socket to listen on (its directory must exist, mode 0700).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
}

pub fn run(args: PagerHostArgs) -> anyhow::Result<()> {
    let run = RunConfig::from_env().context("the configuration krak run gave the pager")?;
    if let Some(path) = &run.log_file {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).context("opening the log")?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .try_init();
    }
    let config = Arc::new(run.pager_config(FaultMode::Threads)?);
    let listener =
        SeqPacketListener::bind(&args.socket, 16).with_context(|| format!("listening on {}", args.socket.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::Builder::new().name("krak-stdin".into()).spawn(move || {
        // krak run keeps our stdin open for as long as it wants us: EOF (or an error) is stop.
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        s.store(true, Relaxed);
    })?;
    println!("ready");
    std::io::stdout().flush()?;
    krak_arena::host::serve(&listener, config, &stop);
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

/// Starts `krak pager-host` for `krak run` and waits for it to listen.
pub fn spawn_host(mut cmd: std::process::Command, socket: &std::path::Path) -> anyhow::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    cmd.arg("pager-host")
        .arg("--socket")
        .arg(socket)
        .env_remove("LD_PRELOAD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().context("starting the pager process")?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    std::io::BufReader::new(stdout).read_line(&mut line).context("waiting for the pager process")?;
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        bail!("the pager process did not start (see its error above)");
    }
    Ok(child)
}
