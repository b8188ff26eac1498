//! The `KRAK_RUN_*` contract: how `krak run` configures the library it preloads into a
//! program and the pager process that serves the program's arena. One type, written by
//! `krak run` ([`RunConfig::to_vars`]) and read by both others ([`RunConfig::from_vars`]),
//! so the three can never check the variables differently.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use krak_auth::RackSecret;
use krak_pager::{FaultMode, PagerConfig, Redundancy, MIN_BUDGET_PAGES, PAGE_SIZE};

/// Memory servers, `HOST:PORT[,HOST:PORT...]`.
pub const SERVERS: &str = "KRAK_RUN_SERVERS";
/// Rack controller URLs, instead of `SERVERS`.
pub const CONTROLLER: &str = "KRAK_RUN_CONTROLLER";
/// Local budget of the arena, bytes.
pub const LOCAL_BYTES: &str = "KRAK_RUN_LOCAL_BYTES";
/// Size of the far-memory arena, bytes (address space; remote memory too under `up-front`).
pub const MAX_FAR_BYTES: &str = "KRAK_RUN_MAX_FAR_BYTES";
/// Allocations (the malloc family) of at least this many bytes go to the arena.
pub const THRESHOLD_BYTES: &str = "KRAK_RUN_THRESHOLD_BYTES";
/// Anonymous mappings (`mmap`) of at least this many bytes go to the arena.
pub const MAP_THRESHOLD_BYTES: &str = "KRAK_RUN_MAP_THRESHOLD_BYTES";
/// Where to write the pager's counters as JSON when the program exits (optional).
pub const STATS_FILE: &str = "KRAK_RUN_STATS_FILE";
/// Where the pager logs (optional; without it nothing is logged).
pub const LOG_FILE: &str = "KRAK_RUN_LOG_FILE";
/// The rack secret's file (an absolute path); required unless `INSECURE` is `1`.
pub const SECRET_FILE: &str = "KRAK_RUN_SECRET_FILE";
/// `1`: the rack runs without a secret (`krak run --insecure`).
pub const INSECURE: &str = "KRAK_RUN_INSECURE";
/// Redundancy of the arena (`none`, `replicate:N`, `ec:K+M`; default `none`).
pub const REDUNDANCY: &str = "KRAK_RUN_REDUNDANCY";
/// Whose allocator serves the malloc family: `auto` (default), `krak` or `program`.
pub const ALLOCATOR: &str = "KRAK_RUN_ALLOCATOR";
/// The pager process's Unix socket (`krak run --pager separate`); unset: the pager runs
/// inside the program.
pub const PAGER_SOCKET: &str = "KRAK_RUN_PAGER_SOCKET";
/// When the arena's rack memory is reserved: `on-demand` (default: a chunk when it first
/// holds data) or `up-front` (all of `MAX_FAR_BYTES` when the arena is made).
pub const RESERVE: &str = "KRAK_RUN_RESERVE";

/// Every variable of the contract.
pub const ALL: [&str; 14] = [
    SERVERS,
    CONTROLLER,
    LOCAL_BYTES,
    MAX_FAR_BYTES,
    THRESHOLD_BYTES,
    MAP_THRESHOLD_BYTES,
    STATS_FILE,
    LOG_FILE,
    SECRET_FILE,
    INSECURE,
    REDUNDANCY,
    ALLOCATOR,
    PAGER_SOCKET,
    RESERVE,
];

/// The default threshold: 1 MiB, at and above which allocations live in far memory.
pub const DEFAULT_THRESHOLD_BYTES: u64 = 1 << 20;
/// The default for mappings: 64 KiB. Mappings are whole pages (nothing is wasted rounding
/// them), and runtimes map their heaps in pieces well below 1 MiB (V8: 256 KiB pages).
pub const DEFAULT_MAP_THRESHOLD_BYTES: u64 = 64 << 10;
/// Exit status when the pager cannot start in the program (as `env(1)` uses for itself).
pub const EXIT_PAGER_FAILED: i32 = 125;

/// Where the arena's pages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A fixed list of memory servers.
    Servers(Vec<SocketAddr>),
    /// Servers the rack controller at these URLs places the arena on.
    Controller(String),
}

/// How the pager proves itself to the rack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The rack secret in this file (absolute, so a program that changes directory still
    /// finds it).
    File(PathBuf),
    /// The rack runs without a secret.
    Insecure,
}

/// Whose allocator serves the malloc family in the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorChoice {
    /// The program's allocator when `malloc` resolves to an object other than glibc, else krak's.
    Auto,
    /// The library serves the malloc family (large blocks in the arena, the rest from glibc).
    Krak,
    /// Forward to whatever `malloc` follows the library, glibc's included.
    Program,
    /// The library serves the malloc family, every block from the arena, small ones too.
    Far,
}

impl AllocatorChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            AllocatorChoice::Auto => "auto",
            AllocatorChoice::Krak => "krak",
            AllocatorChoice::Program => "program",
            AllocatorChoice::Far => "far",
        }
    }

    pub fn parse(s: &str) -> Option<AllocatorChoice> {
        [AllocatorChoice::Auto, AllocatorChoice::Krak, AllocatorChoice::Program, AllocatorChoice::Far]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// When an arena's rack memory is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// A chunk's slabs when its first page is written back (`PagerConfig::reserve_on_demand`).
    OnDemand,
    /// Every chunk's slabs when the arena is made.
    UpFront,
}

impl Reserve {
    pub fn as_str(self) -> &'static str {
        match self {
            Reserve::OnDemand => "on-demand",
            Reserve::UpFront => "up-front",
        }
    }

    pub fn parse(s: &str) -> Option<Reserve> {
        [Reserve::OnDemand, Reserve::UpFront].into_iter().find(|r| r.as_str() == s)
    }
}

/// What `krak run` asks of the arena of each program it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    pub backing: Backing,
    pub local_bytes: u64,
    pub max_far_bytes: u64,
    pub threshold_bytes: u64,
    pub map_threshold_bytes: u64,
    pub stats_file: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub secret: SecretSource,
    pub redundancy: Redundancy,
    pub allocator: AllocatorChoice,
    pub pager_socket: Option<PathBuf>,
    pub reserve: Reserve,
}

/// Why the contract's variables do not describe an arena.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("${0} is not set")]
    Missing(&'static str),
    #[error("${0} is not valid UTF-8")]
    NotUnicode(&'static str),
    #[error("${var} is not a number of bytes: {value:?}")]
    NotBytes { var: &'static str, value: String },
    #[error("${SERVERS}: bad address {0:?}")]
    BadAddress(String),
    #[error("${SERVERS} or ${CONTROLLER} must be set (run programs with `krak run`)")]
    NoBacking,
    #[error("${SECRET_FILE} is not set (and ${INSECURE} is not 1)")]
    NoSecret,
    #[error("${SECRET_FILE}: {0}")]
    Secret(#[source] krak_auth::SecretFileError),
    #[error("${REDUNDANCY}: {0}")]
    Redundancy(#[source] krak_pager::ParseRedundancyError),
    #[error("${ALLOCATOR}: {0:?} is not auto, krak or program")]
    Allocator(String),
    #[error("${RESERVE}: {0:?} is not on-demand or up-front")]
    Reserve(String),
    #[error("the local budget ({local_bytes} bytes) is below {min_bytes} bytes or the arena size is 0")]
    TooSmall { local_bytes: u64, min_bytes: u64 },
}

impl RunConfig {
    /// Reads this process's environment.
    pub fn from_env() -> Result<RunConfig, ContractError> {
        RunConfig::from_vars(&|name| std::env::var_os(name))
    }

    /// Reads the contract from `get` (a variable's value, or `None` when unset).
    pub fn from_vars(get: &dyn Fn(&str) -> Option<OsString>) -> Result<RunConfig, ContractError> {
        let text = |name: &'static str| -> Result<Option<String>, ContractError> {
            get(name).map(|v| v.into_string().map_err(|_| ContractError::NotUnicode(name))).transpose()
        };
        let bytes = |name: &'static str, default: Option<u64>| -> Result<u64, ContractError> {
            match text(name)? {
                Some(v) => v.trim().parse().map_err(|_| ContractError::NotBytes { var: name, value: v }),
                None => default.ok_or(ContractError::Missing(name)),
            }
        };
        let path = |name: &'static str| get(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let servers: Vec<SocketAddr> = match text(SERVERS)? {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| a.parse().map_err(|_| ContractError::BadAddress(a.to_string())))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let backing = match text(CONTROLLER)?.filter(|c| !c.trim().is_empty()) {
            Some(urls) => Backing::Controller(urls),
            None if !servers.is_empty() => Backing::Servers(servers),
            None => return Err(ContractError::NoBacking),
        };
        // The sizes before the secret: a mistyped size is named even where the secret is
        // missing too (the preload loaded by hand, as tests/run.rs does).
        let local_bytes = bytes(LOCAL_BYTES, None)?;
        let max_far_bytes = bytes(MAX_FAR_BYTES, None)?;
        let threshold_bytes = bytes(THRESHOLD_BYTES, Some(DEFAULT_THRESHOLD_BYTES))?.max(PAGE_SIZE as u64);
        let map_threshold_bytes = bytes(MAP_THRESHOLD_BYTES, Some(DEFAULT_MAP_THRESHOLD_BYTES))?.max(PAGE_SIZE as u64);
        let secret = match (path(SECRET_FILE), text(INSECURE)?.as_deref()) {
            (Some(file), _) => SecretSource::File(file),
            (None, Some("1")) => SecretSource::Insecure,
            (None, _) => return Err(ContractError::NoSecret),
        };
        let redundancy = match text(REDUNDANCY)? {
            Some(s) => s.parse().map_err(ContractError::Redundancy)?,
            None => Redundancy::None,
        };
        let allocator = match text(ALLOCATOR)? {
            Some(s) => AllocatorChoice::parse(&s).ok_or(ContractError::Allocator(s))?,
            None => AllocatorChoice::Auto,
        };
        let reserve = match text(RESERVE)? {
            Some(s) => Reserve::parse(&s).ok_or(ContractError::Reserve(s))?,
            None => Reserve::OnDemand,
        };
        let config = RunConfig {
            backing,
            local_bytes,
            max_far_bytes,
            threshold_bytes,
            map_threshold_bytes,
            stats_file: path(STATS_FILE),
            log_file: path(LOG_FILE),
            secret,
            redundancy,
            allocator,
            pager_socket: path(PAGER_SOCKET),
            reserve,
        };
        let min_bytes = (MIN_BUDGET_PAGES * PAGE_SIZE) as u64;
        if config.local_bytes < min_bytes || config.max_far_bytes == 0 {
            return Err(ContractError::TooSmall { local_bytes: config.local_bytes, min_bytes });
        }
        Ok(config)
    }

    /// The variables that say this configuration, for a child's environment. A relative
    /// secret file is made absolute here.
    pub fn to_vars(&self) -> Vec<(&'static str, OsString)> {
        let mut vars: Vec<(&'static str, OsString)> = vec![
            (LOCAL_BYTES, self.local_bytes.to_string().into()),
            (MAX_FAR_BYTES, self.max_far_bytes.to_string().into()),
            (THRESHOLD_BYTES, self.threshold_bytes.to_string().into()),
            (MAP_THRESHOLD_BYTES, self.map_threshold_bytes.to_string().into()),
            (REDUNDANCY, self.redundancy.to_string().into()),
            (ALLOCATOR, self.allocator.as_str().into()),
            (RESERVE, self.reserve.as_str().into()),
        ];
        match &self.backing {
            Backing::Servers(list) => {
                let list: Vec<String> = list.iter().map(SocketAddr::to_string).collect();
                vars.push((SERVERS, list.join(",").into()));
            }
            Backing::Controller(urls) => vars.push((CONTROLLER, urls.into())),
        }
        match &self.secret {
            SecretSource::File(file) => vars.push((SECRET_FILE, absolute(file).into_os_string())),
            SecretSource::Insecure => vars.push((INSECURE, "1".into())),
        }
        let paths = [(STATS_FILE, &self.stats_file), (LOG_FILE, &self.log_file), (PAGER_SOCKET, &self.pager_socket)];
        for (name, path) in paths {
            if let Some(p) = path {
                vars.push((name, p.clone().into_os_string()));
            }
        }
        vars
    }

    /// The rack secret, read from its file (`None` for an insecure rack).
    pub fn load_secret(&self) -> Result<Option<RackSecret>, ContractError> {
        match &self.secret {
            SecretSource::File(file) => krak_auth::load_secret_file(file).map(Some).map_err(ContractError::Secret),
            SecretSource::Insecure => Ok(None),
        }
    }

    /// The far-memory region that serves the arena, paged in `fault_mode`.
    pub fn pager_config(&self, fault_mode: FaultMode) -> Result<PagerConfig, ContractError> {
        let (servers, controller) = match &self.backing {
            Backing::Servers(list) => (list.clone(), None),
            Backing::Controller(urls) => (Vec::new(), Some(urls.clone())),
        };
        Ok(PagerConfig {
            region_bytes: self.max_far_bytes,
            local_budget_bytes: self.local_bytes,
            servers,
            controller,
            secret: self.load_secret()?,
            redundancy: self.redundancy,
            fault_mode,
            reserve_on_demand: self.reserve == Reserve::OnDemand,
            ..PagerConfig::default()
        })
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// True when `name` is a variable of the contract.
pub fn is_contract_var(name: &OsStr) -> bool {
    ALL.iter().any(|v| OsStr::new(v) == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<RunConfig, ContractError> {
        let map: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        RunConfig::from_vars(&|name| map.get(name).cloned())
    }

    const BASE: [(&str, &str); 3] = [(SERVERS, "127.0.0.1:1,127.0.0.1:2"), (LOCAL_BYTES, "67108864"), (INSECURE, "1")];

    #[test]
    fn what_krak_run_writes_reads_back_the_same() {
        let config = RunConfig {
            backing: Backing::Controller("http://127.0.0.1:7080".into()),
            local_bytes: 64 << 20,
            max_far_bytes: 1 << 30,
            threshold_bytes: 4096,
            map_threshold_bytes: 8192,
            stats_file: Some("/tmp/s".into()),
            log_file: None,
            secret: SecretSource::File("/etc/krak/secret".into()),
            redundancy: "ec:4+2".parse().unwrap(),
            allocator: AllocatorChoice::Program,
            pager_socket: Some("/run/krak/p.sock".into()),
            reserve: Reserve::UpFront,
        };
        let vars: HashMap<&str, OsString> = config.to_vars().into_iter().collect();
        assert!(vars.keys().all(|k| is_contract_var(OsStr::new(k))));
        let back = RunConfig::from_vars(&|name| vars.get(name).cloned()).unwrap();
        assert_eq!(back, config);
    }

    #[test]
    fn a_relative_secret_file_is_handed_on_absolute() {
        let mut vars: Vec<(&str, &str)> = BASE.to_vec();
        vars.retain(|(k, _)| *k != INSECURE);
        vars.extend([(MAX_FAR_BYTES, "1073741824"), (SECRET_FILE, "rack.secret")]);
        let config = read(&vars).unwrap();
        let written: HashMap<&str, OsString> = config.to_vars().into_iter().collect();
        let path = PathBuf::from(&written[SECRET_FILE]);
        assert!(path.is_absolute() && path.ends_with("rack.secret"), "{}", path.display());
    }

    #[test]
    fn bad_or_missing_variables_are_named() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = BASE.to_vec();
            v.push((MAX_FAR_BYTES, "1073741824"));
            v.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
            v.extend_from_slice(extra);
            read(&v)
        };
        assert!(with(&[]).is_ok());
        assert!(matches!(read(&BASE), Err(ContractError::Missing(MAX_FAR_BYTES))));
        assert!(matches!(with(&[(LOCAL_BYTES, "lots")]), Err(ContractError::NotBytes { var: LOCAL_BYTES, .. })));
        assert!(matches!(with(&[(LOCAL_BYTES, "4096")]), Err(ContractError::TooSmall { .. })));
        assert!(matches!(with(&[(SERVERS, "nowhere")]), Err(ContractError::BadAddress(_))));
        assert!(matches!(with(&[(SERVERS, "")]), Err(ContractError::NoBacking)));
        assert!(matches!(with(&[(INSECURE, "0")]), Err(ContractError::NoSecret)));
        // A mistyped size is named before a missing secret.
        let bad_size_no_secret = with(&[(INSECURE, "0"), (LOCAL_BYTES, "lots")]);
        assert!(matches!(bad_size_no_secret, Err(ContractError::NotBytes { var: LOCAL_BYTES, .. })));
        assert!(matches!(with(&[(REDUNDANCY, "raid5")]), Err(ContractError::Redundancy(_))));
        assert!(matches!(with(&[(ALLOCATOR, "tcmalloc")]), Err(ContractError::Allocator(_))));
        assert!(matches!(with(&[(RESERVE, "later")]), Err(ContractError::Reserve(_))));
        assert_eq!(with(&[]).unwrap().reserve, Reserve::OnDemand);
        let text = with(&[(ALLOCATOR, "tcmalloc")]).unwrap_err().to_string();
        assert!(text.contains(ALLOCATOR), "{text}");
        assert_eq!(with(&[(THRESHOLD_BYTES, "1")]).unwrap().threshold_bytes, PAGE_SIZE as u64);
    }
}
