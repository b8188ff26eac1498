//! How `krak run` configures the preload library: environment variables, read once when
//! the library loads. Shared by the `krak` binary and `libkrak_preload.so`.

/// Memory servers, `HOST:PORT[,HOST:PORT...]`.
pub const SERVERS: &str = "KRAK_RUN_SERVERS";
/// Rack controller URLs, instead of `SERVERS`.
pub const CONTROLLER: &str = "KRAK_RUN_CONTROLLER";
/// Local budget of the arena, bytes.
pub const LOCAL_BYTES: &str = "KRAK_RUN_LOCAL_BYTES";
/// Size of the far-memory arena (address space and remote reservation), bytes.
pub const MAX_FAR_BYTES: &str = "KRAK_RUN_MAX_FAR_BYTES";
/// Allocations of at least this many bytes go to the arena.
pub const THRESHOLD_BYTES: &str = "KRAK_RUN_THRESHOLD_BYTES";
/// Where to write the pager's counters as JSON when the program exits (optional).
pub const STATS_FILE: &str = "KRAK_RUN_STATS_FILE";
/// Where the pager logs (optional; without it nothing is logged).
pub const LOG_FILE: &str = "KRAK_RUN_LOG_FILE";
/// The rack secret's file; required unless `INSECURE` is `1`.
pub const SECRET_FILE: &str = "KRAK_RUN_SECRET_FILE";
/// `1`: the rack runs without a secret (`krak run --insecure`).
pub const INSECURE: &str = "KRAK_RUN_INSECURE";
/// Redundancy of the arena (`none`, `replicate:N`, `ec:K+M`; default `none`).
pub const REDUNDANCY: &str = "KRAK_RUN_REDUNDANCY";
/// Whose allocator serves the malloc family: `auto` (default), `krak` or `program`
/// (`krak run --allocator`; see `forward.rs`).
pub const ALLOCATOR: &str = "KRAK_RUN_ALLOCATOR";

/// The pager process's Unix socket (`krak run --pager separate`); unset: the pager runs
/// inside the program.
pub const PAGER_SOCKET: &str = "KRAK_RUN_PAGER_SOCKET";

/// The default threshold: 1 MiB, at and above which allocations live in far memory.
pub const DEFAULT_THRESHOLD_BYTES: u64 = 1 << 20;
/// Exit status when the pager cannot start in the program (as `env(1)` uses for itself).
pub const EXIT_PAGER_FAILED: i32 = 125;
