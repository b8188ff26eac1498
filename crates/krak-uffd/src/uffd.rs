//! A userfaultfd and its ioctls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::sys::*;

/// Why a userfaultfd operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    #[error("cannot open a userfaultfd (tried the syscall, user-mode-only and /dev/userfaultfd): {0}")]
    Open(#[source] io::Error),
    #[error(
        "the kernel lacks userfaultfd features {missing:#x} (needs write-protect on anonymous memory, Linux 5.7+)"
    )]
    MissingFeatures { missing: u64 },
    #[error("{op} on [{start:#x}, +{len:#x}): {source}")]
    Ioctl { op: &'static str, start: usize, len: usize, source: io::Error },
    #[error("reading a userfaultfd event: {0}")]
    Read(#[source] io::Error),
    #[error("the descriptor received is not a userfaultfd: {0}")]
    NotUserfaultfd(#[source] io::Error),
}

/// Why `UFFDIO_COPY` did not copy the whole range.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A page of the range is already mapped: nothing to install, but waiters need a wake.
    #[error("page already present")]
    Exists,
    /// The mapping changed under us (e.g. munmap/mremap in flight): retry after the event.
    #[error("mapping changed, retry ({copied} bytes copied)")]
    Again { copied: usize },
    /// The range is not inside one registered mapping (`ENOENT`): it runs past the end of
    /// one (`mprotect` splits mappings), or into memory that is not registered.
    #[error("[{start:#x}, +{len:#x}) is not inside one registered mapping")]
    OutsideMapping { start: usize, len: usize },
    #[error(transparent)]
    Other(UffdError),
}

/// How the userfaultfd came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// The `userfaultfd(2)` syscall, handling kernel and user faults (privileged).
    Syscall,
    /// The syscall with `UFFD_USER_MODE_ONLY`: unprivileged, user-mode faults only.
    UserModeOnly,
    /// `/dev/userfaultfd`, for systems that restrict the syscall.
    Device,
}

impl OpenMode {
    /// The mode as one byte, to send with a userfaultfd to another process.
    pub fn code(self) -> u8 {
        match self {
            OpenMode::Syscall => 0,
            OpenMode::UserModeOnly => 1,
            OpenMode::Device => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<OpenMode> {
        match code {
            0 => Some(OpenMode::Syscall),
            1 => Some(OpenMode::UserModeOnly),
            2 => Some(OpenMode::Device),
            _ => None,
        }
    }
}

/// One event read from a userfaultfd.
#[derive(Debug)]
pub enum Event {
    /// A thread touched a missing page, or wrote a write-protected one (`wp`).
    Pagefault { addr: usize, write: bool, wp: bool, thread_id: Option<u32> },
    /// The process forked; the child's mappings are served through `uffd`.
    Fork { uffd: OwnedFd },
    /// `mremap` moved `[from, from+len)` to `to`.
    Remap { from: usize, to: usize, len: usize },
    /// `madvise(MADV_DONTNEED/REMOVE)` dropped `[start, end)`.
    Remove { start: usize, end: usize },
    /// `munmap` removed `[start, end)`.
    Unmap { start: usize, end: usize },
}

/// An open userfaultfd with write-protect support negotiated.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    mode: OpenMode,
    features: u64,
}

impl Uffd {
    /// Opens a non-blocking userfaultfd with write-protect faults, trying in turn the
    /// syscall, the syscall in user-mode-only, and `/dev/userfaultfd`.
    pub fn open() -> Result<Uffd, UffdError> {
        Uffd::open_with(false)
    }

    /// Like [`Uffd::open`]; with `sigbus`, faults in registered ranges raise SIGBUS in the
    /// faulting thread instead of queueing an event (`UFFD_FEATURE_SIGBUS`), so that the
    /// thread can resolve its own fault without sleeping. Kernel accesses to such a range
    /// (a syscall reading or writing it) then fail with EFAULT instead of waiting.
    pub fn open_with(sigbus: bool) -> Result<Uffd, UffdError> {
        Uffd::open_features(if sigbus { UFFD_FEATURE_SIGBUS } else { 0 })
    }

    /// Like [`Uffd::open`], for a shared memfd mapping (`SharedMapping`): write-protect
    /// faults on shmem need their own feature (Linux 6.0+).
    pub fn open_for_shmem() -> Result<Uffd, UffdError> {
        Uffd::open_features(UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
    }

    /// A userfaultfd another process opened and sent us (`SCM_RIGHTS`), with the features
    /// and mode it negotiated. Refuses an fd that is not a userfaultfd.
    pub fn from_received(fd: OwnedFd, features: u64, mode: OpenMode) -> Result<Uffd, UffdError> {
        let link =
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(UffdError::NotUserfaultfd)?;
        if link.as_os_str() != "anon_inode:[userfaultfd]" {
            let what = format!("it is {}", link.display());
            return Err(UffdError::NotUserfaultfd(io::Error::new(io::ErrorKind::InvalidInput, what)));
        }
        let needed = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
        if features & needed != needed {
            return Err(UffdError::MissingFeatures { missing: needed & !features });
        }
        Ok(Uffd { fd, mode, features })
    }

    fn open_features(extra: u64) -> Result<Uffd, UffdError> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let (fd, mode) = match syscall_userfaultfd(flags) {
            Ok(fd) => (fd, OpenMode::Syscall),
            Err(first) => match syscall_userfaultfd(flags | UFFD_USER_MODE_ONLY) {
                Ok(fd) => (fd, OpenMode::UserModeOnly),
                Err(_) => (device_userfaultfd(flags).map_err(|_| UffdError::Open(first))?, OpenMode::Device),
            },
        };
        let wanted = UFFD_FEATURE_PAGEFAULT_FLAG_WP | extra;
        // The faulting thread's id lets the pager send it SIGBUS when a page cannot be had.
        let mut api = UffdioApi { api: UFFD_API, features: wanted | UFFD_FEATURE_THREAD_ID, ioctls: 0 };
        // SAFETY: fd is a fresh userfaultfd; `api` is a live, correctly laid out uffdio_api
        // that the kernel reads and writes for the duration of the call only.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut api as *mut UffdioApi) };
        if rc != 0 {
            return Err(UffdError::Ioctl { op: "UFFDIO_API", start: 0, len: 0, source: io::Error::last_os_error() });
        }
        if api.features & wanted != wanted {
            return Err(UffdError::MissingFeatures { missing: wanted & !api.features });
        }
        Ok(Uffd { fd, mode, features: api.features })
    }

    pub fn mode(&self) -> OpenMode {
        self.mode
    }

    pub fn features(&self) -> u64 {
        self.features
    }

    /// Registers `[start, start+len)` for missing-page and write-protect faults.
    pub fn register(&self, start: usize, len: usize) -> Result<(), UffdError> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start: start as u64, len: len as u64 },
            mode: UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: `reg` is a live uffdio_register; registering only changes how faults on the
        // range are delivered, it does not touch memory the caller holds references to.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER as _, &mut reg as *mut UffdioRegister) };
        self.check(rc, "UFFDIO_REGISTER", start, len)
    }

    pub fn unregister(&self, start: usize, len: usize) -> Result<(), UffdError> {
        let mut range = UffdioRange { start: start as u64, len: len as u64 };
        // SAFETY: `range` is a live uffdio_range; unregistering wakes any waiters on it.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER as _, &mut range as *mut UffdioRange) };
        self.check(rc, "UFFDIO_UNREGISTER", start, len)
    }

    /// Installs `src` at `dst` (page aligned, missing pages of a registered range) and wakes
    /// the threads waiting there unless `wake` is false. With `write_protect` the pages are
    /// installed read-only, so the first write raises a write-protect fault.
    ///
    /// EEXIST means a page is already there (wake and move on); EAGAIN means the mapping is
    /// changing (retry). Neither is ever answered by installing something else.
    pub fn copy(&self, dst: usize, src: &[u8], write_protect: bool, wake: bool) -> Result<usize, CopyError> {
        let mut mode = 0;
        if write_protect {
            mode |= UFFDIO_COPY_MODE_WP;
        }
        if !wake {
            mode |= UFFDIO_COPY_MODE_DONTWAKE;
        }
        let mut copy = UffdioCopy { dst: dst as u64, src: src.as_ptr() as u64, len: src.len() as u64, mode, copy: 0 };
        // SAFETY: `src` is a live slice of `len` bytes that the kernel only reads; `dst` is
        // validated by the kernel, which only fills pages that are not mapped yet in a range
        // registered with this userfaultfd, so no memory visible to Rust is overwritten.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY as _, &mut copy as *mut UffdioCopy) };
        if rc == 0 {
            return Ok(copy.copy as usize);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EEXIST) => Err(CopyError::Exists),
            Some(libc::EAGAIN) => Err(CopyError::Again { copied: copy.copy.max(0) as usize }),
            Some(libc::ENOENT) => Err(CopyError::OutsideMapping { start: dst, len: src.len() }),
            _ => Err(CopyError::Other(UffdError::Ioctl { op: "UFFDIO_COPY", start: dst, len: src.len(), source: err })),
        }
    }

    /// Sets (`protect`) or clears write protection on present pages of the range. Clearing
    /// wakes the threads blocked on a write-protect fault there unless `wake` is false;
    /// setting never wakes anyone.
    pub fn write_protect(&self, start: usize, len: usize, protect: bool, wake: bool) -> Result<(), UffdError> {
        let mut mode = 0;
        if protect {
            // The kernel refuses WP together with DONTWAKE: protecting never wakes anyone.
            mode |= UFFDIO_WRITEPROTECT_MODE_WP;
        } else if !wake {
            mode |= UFFDIO_WRITEPROTECT_MODE_DONTWAKE;
        }
        let mut wp = UffdioWriteprotect { range: UffdioRange { start: start as u64, len: len as u64 }, mode };
        // SAFETY: `wp` is a live uffdio_writeprotect; changing protection bits of the caller's
        // registered range cannot invalidate memory Rust references.
        let rc =
            unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WRITEPROTECT as _, &mut wp as *mut UffdioWriteprotect) };
        self.check(rc, "UFFDIO_WRITEPROTECT", start, len)
    }

    /// Wakes threads waiting on faults in the range without installing anything: they
    /// retry their access and fault again if the page is still missing.
    pub fn wake(&self, start: usize, len: usize) -> Result<(), UffdError> {
        let mut range = UffdioRange { start: start as u64, len: len as u64 };
        // SAFETY: `range` is a live uffdio_range; waking has no effect on memory contents.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE as _, &mut range as *mut UffdioRange) };
        self.check(rc, "UFFDIO_WAKE", start, len)
    }

    /// Reads one event; `Ok(None)` when none is pending (the fd is non-blocking).
    pub fn read_event(&self) -> Result<Option<Event>, UffdError> {
        let mut msg = std::mem::MaybeUninit::<UffdMsg>::uninit();
        let size = std::mem::size_of::<UffdMsg>();
        // SAFETY: `msg` has room for exactly one uffd_msg, the only unit the kernel reads out.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), msg.as_mut_ptr().cast(), size) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(UffdError::Read(err)),
            };
        }
        if n as usize != size {
            return Err(UffdError::Read(io::Error::new(io::ErrorKind::UnexpectedEof, "short uffd_msg")));
        }
        // SAFETY: the kernel filled all `size` bytes, and every bit pattern is a valid UffdMsg.
        let msg = unsafe { msg.assume_init() };
        let [a0, a1, a2] = msg.arg;
        Ok(Some(match msg.event {
            UFFD_EVENT_PAGEFAULT => Event::Pagefault {
                addr: a1 as usize,
                write: a0 & UFFD_PAGEFAULT_FLAG_WRITE != 0,
                wp: a0 & UFFD_PAGEFAULT_FLAG_WP != 0,
                thread_id: (self.features & UFFD_FEATURE_THREAD_ID != 0).then_some(a2 as u32),
            },
            UFFD_EVENT_FORK => {
                // SAFETY: for a fork event the kernel installed a new fd in our table and
                // hands its ownership to whoever reads the event, which is us.
                let uffd = unsafe { OwnedFd::from_raw_fd(a0 as u32 as RawFd) };
                Event::Fork { uffd }
            }
            UFFD_EVENT_REMAP => Event::Remap { from: a0 as usize, to: a1 as usize, len: a2 as usize },
            UFFD_EVENT_REMOVE => Event::Remove { start: a0 as usize, end: a1 as usize },
            UFFD_EVENT_UNMAP => Event::Unmap { start: a0 as usize, end: a1 as usize },
            other => {
                return Err(UffdError::Read(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown uffd event {other:#x}"),
                )))
            }
        }))
    }

    /// Waits up to `timeout_ms` for an event; true when one is ready to read.
    pub fn wait_readable(&self, timeout_ms: i32) -> Result<bool, UffdError> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd and a count of 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return if err.raw_os_error() == Some(libc::EINTR) { Ok(false) } else { Err(UffdError::Read(err)) };
        }
        Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
    }

    fn check(&self, rc: libc::c_int, op: &'static str, start: usize, len: usize) -> Result<(), UffdError> {
        if rc == 0 {
            Ok(())
        } else {
            Err(UffdError::Ioctl { op, start, len, source: io::Error::last_os_error() })
        }
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn syscall_userfaultfd(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: userfaultfd(2) takes only flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn device_userfaultfd(flags: libc::c_int) -> io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/userfaultfd")?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the new fd's flags by value and returns a new fd.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to one thread of this process: how a fault that cannot be served is
/// failed (SIGBUS) rather than answered with a wrong page.
pub fn signal_thread(thread_id: u32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: getpid takes nothing and cannot fail.
    signal_thread_of(unsafe { libc::getpid() }, thread_id, signal)
}

/// Sends `signal` to process `pid` (this one's own pid included).
pub fn signal_process(pid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers; it only delivers a signal.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to thread `thread_id` of process `pid` (a program whose arena a pager
/// process serves).
pub fn signal_thread_of(pid: i32, thread_id: u32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: tgkill takes plain integers; it fails unless `thread_id` belongs to `pid`.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, thread_id as libc::pid_t, signal) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
