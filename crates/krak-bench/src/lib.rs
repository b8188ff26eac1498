//! Measurement machinery for `krak bench`.
//!
//! The same access patterns ([`workload`]) run over one region size on several backends:
//! plain RAM ([`local`]), kernel swap to a disk file or to zram under a memory-cgroup limit
//! ([`swap`]), and the krak pager (built by the `krak` binary through the hook in
//! [`worker::worker_main`]). Each run happens in a fresh child process ([`worker`]) so
//! kernel memory accounting starts clean. [`floors`] measures the physical floor (loopback
//! TCP round trip of a 4 KiB page), [`cpu`] what a timed phase cost in CPU and where, [`plan`] chooses sizes and drives a whole bench, and
//! [`report`] prints and serialises the results.

mod cgroup;
mod cleanup;
pub mod cpu;
pub mod floors;
pub mod local;
pub mod plan;
pub mod report;
pub mod swap;
mod sys;
pub mod worker;
pub mod workload;

pub use floors::Floors;
pub use local::LocalRegion;
pub use plan::{BenchPlan, KrakTarget};
pub use report::{BenchReport, ResultRow};
pub use worker::{spawn_worker, worker_main, Backend, BoxError, WorkerArgs, WorkerError};
pub use workload::{Region, RunResult, Workload, PAGE_SIZE_BYTES};

/// Errors of the bench machinery.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A file or system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An external command (`mkswap`, `swapon`, ...) could not be started.
    #[error("command `{command}` failed: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// An external command (`mkswap`, `swapon`, ...) failed.
    #[error("command `{command}` failed: {status}: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it wrote on stderr, trimmed.
        stderr: String,
    },
    /// An argument or configuration is not usable.
    #[error("{0}")]
    Invalid(String),
    /// The machine cannot run this backend (not root, no memory cgroup, no zram, ...).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io { what: what.into(), source }
    }
}
