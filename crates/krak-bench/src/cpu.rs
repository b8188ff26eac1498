//! CPU time spent over a timed phase, from `/proc`: by the workload's threads (everything
//! in this process but the pager's), by the pager's threads (named `krak-*`), and by the
//! memory server processes on this host. Kernel threads (kswapd, zram's compression) are nobody's: kernel swap's
//! figures count only what its faults cost the faulting thread.

use serde::{Deserialize, Serialize};

/// User and system CPU time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    pub user_ms: f64,
    pub system_ms: f64,
}

impl CpuUse {
    pub fn total_ms(&self) -> f64 {
        self.user_ms + self.system_ms
    }

    fn since(self, before: CpuUse) -> CpuUse {
        CpuUse {
            user_ms: (self.user_ms - before.user_ms).max(0.0),
            system_ms: (self.system_ms - before.system_ms).max(0.0),
        }
    }

    fn add(&mut self, other: CpuUse) {
        self.user_ms += other.user_ms;
        self.system_ms += other.system_ms;
    }
}

/// Where the CPU of a timed phase went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseCpu {
    /// The workload's threads (all of this process but the pager's threads): their own
    /// loop, and the faults they serve themselves (the pager's self-serving mode) or the
    /// kernel's swap-ins.
    pub app: CpuUse,
    /// The pager's fault handler threads in the worker (`krak-fault-*`; none when faults
    /// are served on the faulting thread).
    pub pager_faults: CpuUse,
    /// The pager's other threads: write-back, reclaim, re-protection, following the
    /// controller.
    pub pager_writeback: CpuUse,
    /// The memory servers, when they run on this host (`None`: not measured).
    pub servers: Option<CpuUse>,
}

impl PhaseCpu {
    /// All of it, in milliseconds.
    pub fn total_ms(&self) -> f64 {
        self.fault_path_ms() + self.pager_writeback.total_ms()
    }

    /// What serving faults cost: the workload's thread, the fault handlers and the memory
    /// servers (which serve write-backs too; they are counted here).
    pub fn fault_path_ms(&self) -> f64 {
        self.app.total_ms() + self.pager_faults.total_ms() + self.servers.map_or(0.0, |s| s.total_ms())
    }
}

/// A reading at the start of a phase; [`CpuProbe::finish`] gives what was spent since.
#[derive(Debug)]
pub struct CpuProbe {
    servers: Vec<u32>,
    before: PhaseCpu,
}

impl CpuProbe {
    /// Starts measuring this process (its `krak-*` threads apart) and the processes
    /// `servers`. The pager's threads must outlive the phase (an exited thread's time
    /// leaves its task file, and would count as the workload's); the workload's may end.
    pub fn start(servers: &[u32]) -> CpuProbe {
        let mut probe = CpuProbe { servers: servers.to_vec(), before: PhaseCpu::default() };
        probe.before = probe.read();
        probe
    }

    /// What was spent since [`CpuProbe::start`].
    pub fn finish(&self) -> PhaseCpu {
        let now = self.read();
        PhaseCpu {
            app: now.app.since(self.before.app),
            pager_faults: now.pager_faults.since(self.before.pager_faults),
            pager_writeback: now.pager_writeback.since(self.before.pager_writeback),
            servers: match (now.servers, self.before.servers) {
                (Some(n), Some(b)) => Some(n.since(b)),
                _ => None,
            },
        }
    }

    fn read(&self) -> PhaseCpu {
        let (mut pager_faults, mut pager_writeback) = (CpuUse::default(), CpuUse::default());
        // The whole process, exited threads included: what is not the pager's is the workload's.
        let all = stat("/proc/self/stat").map(|(_, used)| used).unwrap_or_default();
        if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
            for task in tasks.flatten() {
                let Some(tid) = task.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else { continue };
                let Some((comm, used)) = stat(&format!("/proc/self/task/{tid}/stat")) else { continue };
                if comm.starts_with("krak-fault") {
                    CpuUse::add(&mut pager_faults, used);
                } else if comm.starts_with("krak-") {
                    CpuUse::add(&mut pager_writeback, used);
                }
            }
        }
        let servers = (!self.servers.is_empty())
            .then(|| {
                let mut sum = CpuUse::default();
                for pid in &self.servers {
                    sum.add(stat(&format!("/proc/{pid}/stat"))?.1);
                }
                Some(sum)
            })
            .flatten();
        let mut pager = pager_faults;
        pager.add(pager_writeback);
        let app = all.since(pager);
        PhaseCpu { app, pager_faults, pager_writeback, servers }
    }
}

/// The command name and CPU use in a `/proc/.../stat` file (a process's, all its threads,
/// or one task's).
fn stat(path: &str) -> Option<(String, CpuUse)> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<(String, CpuUse)> {
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ')' ends it.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of proc(5): 11 and 12 after the state (3).
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime) = (ticks(11)?, ticks(12)?);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ms = |t: u64| t as f64 * 1000.0 / hz;
    Some((comm, CpuUse { user_ms: ms(utime), system_ms: ms(stime) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        let line = "4242 (krak-fault 0) S 1 2 3 4 5 6 7 8 9 10 250 120 0 0 20 0 3 0 100 0 0";
        let (comm, used) = parse_stat(line).unwrap();
        assert_eq!(comm, "krak-fault 0");
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert_eq!(used, CpuUse { user_ms: 250_000.0 / hz, system_ms: 120_000.0 / hz });
        assert!(parse_stat("4242 (odd) name) S 1").is_none(), "too short");
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn a_busy_thread_is_counted_where_it_belongs() {
        let probe = CpuProbe::start(&[std::process::id()]);
        let (spun, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let (spun_tx, spun_rx) = spun;
        let (release_tx, release_rx) = release;
        let spin = std::thread::Builder::new()
            .name("krak-test-spin".into())
            .spawn(move || {
                let t = std::time::Instant::now();
                let mut x = 0u64;
                while t.elapsed() < std::time::Duration::from_millis(300) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                spun_tx.send(()).unwrap();
                // Alive while measured: an exited thread's time leaves its task file.
                release_rx.recv().unwrap();
                x
            })
            .unwrap();
        spun_rx.recv().unwrap();
        let got = probe.finish();
        release_tx.send(()).unwrap();
        spin.join().unwrap();
        assert!(got.pager_writeback.total_ms() >= 200.0, "{got:?}");
        assert_eq!(got.pager_faults, CpuUse::default(), "{got:?}");
        assert!(got.app.total_ms() < 100.0, "the sleeping thread spent little: {got:?}");
        assert!(got.servers.unwrap().total_ms() >= got.pager_writeback.total_ms() - 20.0, "{got:?}");
    }
}
