//! Serving a connection on the CPU its requests arrive on.
//!
//! A sleeping connection thread is woken by the kernel's receive path, which runs on the
//! CPU that processed the request's packets (the client's own CPU on loopback; the CPU of
//! the NIC queue's interrupt otherwise). Woken there, the thread runs at once; woken on
//! another CPU, it costs an inter-processor interrupt and, if that CPU was idle, its exit
//! from idle. On this project's 2-vCPU test machine a loopback 4 KiB round trip between
//! sleeping threads costs 50-55 us of CPU across CPUs and 15 us on one (BENCHMARKS.md,
//! "issue 13"), so a connection follows the CPU its packets come in on (`SO_INCOMING_CPU`)
//! before each sleep, as far as the CPUs the server was allowed at start permit.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// Pins the calling thread to the CPU a connection's packets arrive on, when that changes.
pub(crate) struct FollowCpu {
    /// The CPUs this thread may run on at start (its process's affinity, a cgroup's cpuset).
    allowed: libc::cpu_set_t,
    /// The CPU the thread is pinned to now, if any.
    pinned: Option<usize>,
}

impl FollowCpu {
    /// The calling thread's current affinity is the bound: a server run under `taskset`
    /// or a cpuset is never moved outside it.
    pub(crate) fn new() -> io::Result<FollowCpu> {
        let mut allowed = MaybeUninit::<libc::cpu_set_t>::zeroed();
        // SAFETY: `allowed` is a valid, writable cpu_set_t of the size passed; pid 0 is
        // the calling thread.
        let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), allowed.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: zeroed is a valid cpu_set_t, and sched_getaffinity filled it.
        Ok(FollowCpu { allowed: unsafe { allowed.assume_init() }, pinned: None })
    }

    /// Moves the thread to the CPU `stream`'s last packet was processed on, if it is
    /// allowed and not the one the thread is pinned to already. Returns whether it moved.
    pub(crate) fn follow(&mut self, stream: &TcpStream) -> io::Result<bool> {
        let Some(cpu) = incoming_cpu(stream)? else { return Ok(false) };
        if self.pinned == Some(cpu) || cpu >= libc::CPU_SETSIZE as usize {
            return Ok(false);
        }
        // SAFETY: `cpu` is below CPU_SETSIZE, the set's size, checked above.
        if !unsafe { libc::CPU_ISSET(cpu, &self.allowed) } {
            return Ok(false);
        }
        // SAFETY: an all-zero cpu_set_t is the empty set; `cpu` is below CPU_SETSIZE.
        let mut set: libc::cpu_set_t = unsafe { MaybeUninit::zeroed().assume_init() };
        // SAFETY: as above, `cpu` is within the set.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
        if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.pinned = Some(cpu);
        Ok(true)
    }
}

/// The CPU that processed the stream's last incoming packet; `None` before any.
fn incoming_cpu(stream: &TcpStream) -> io::Result<Option<usize>> {
    let mut cpu: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is open for the borrow of `stream`; `cpu` and `len` are valid for
    // writes and `len` holds the size of `cpu`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_INCOMING_CPU,
            (&mut cpu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(cpu).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn a_connection_thread_moves_to_the_cpu_its_peer_sends_from_and_stays_within_its_affinity() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut served, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        served.read_exact(&mut buf).unwrap();
        let cpu = incoming_cpu(&served).unwrap().expect("a packet came in");
        std::thread::spawn(move || {
            let mut follow = FollowCpu::new().unwrap();
            assert!(follow.follow(&served).unwrap(), "pinned to cpu {cpu}");
            // SAFETY: sched_getcpu has no preconditions.
            assert_eq!(unsafe { libc::sched_getcpu() }, cpu as i32, "now running there");
            assert!(!follow.follow(&served).unwrap(), "no second move to the same cpu");
            // A CPU outside the allowed set is never taken.
            follow.pinned = None;
            // SAFETY: clears a valid set in place.
            unsafe { libc::CPU_ZERO(&mut follow.allowed) };
            assert!(!follow.follow(&served).unwrap());
        })
        .join()
        .unwrap();
    }
}
