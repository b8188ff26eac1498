//! `krak demo --controller URL` running in the background on a rack of namespace hosts,
//! with its output collected (the pipes are read on threads so it never blocks on them).

use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::controller_common::{read_all, secret_file, wait_for, Proc, KRAK};

/// A running `krak demo`; SIGKILLed and reaped if dropped before it ends.
pub struct Demo {
    proc: Proc,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl Demo {
    /// `krak demo --controller URL --no-baseline --json EXTRA...` with the test's secret.
    pub fn start(url: &str, extra: &[&str]) -> Demo {
        let mut child = Command::new(KRAK)
            .args(["demo", "--controller", url, "--no-baseline", "--json"])
            .args(extra)
            .args(["--secret-file", secret_file()])
            .env_remove("RUST_BACKTRACE")
            .env("KRAK_LOG", "info")
            .env_remove("KRAK_CONTROLLER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("demo starts (it ends by itself after --seconds)");
        let stdout = Some(read_all(child.stdout.take().unwrap()));
        let stderr = Some(read_all(child.stderr.take().unwrap()));
        Demo { proc: Proc(child), stdout, stderr }
    }

    /// Waits at most `bound` for the demo to end: its exit status, stdout and stderr.
    pub fn wait(mut self, bound: Duration) -> (ExitStatus, String, String) {
        let (status, took) = wait_for(bound, "the demo to end", || self.proc.0.try_wait().ok().flatten());
        eprintln!("demo ended after {took:?} more: {status}");
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status, stdout, stderr)
    }

    /// Kills the demo now (a test giving up on it); what it wrote to stderr.
    pub fn kill(mut self) -> String {
        self.proc.kill();
        self.stderr.take().unwrap().join().unwrap()
    }
}
