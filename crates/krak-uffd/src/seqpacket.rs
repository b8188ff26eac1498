//! Unix `SOCK_SEQPACKET` sockets that carry file descriptors (`SCM_RIGHTS`): how a program
//! hands its arena's memfd and userfaultfd to a pager process, and how the two talk after.
//! One message is one packet, so there is no framing to get wrong.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Most descriptors one message carries.
pub const MAX_FDS: usize = 4;

/// Who is at the other end of a connected Unix socket (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// A listening `SOCK_SEQPACKET` socket bound to a path.
#[derive(Debug)]
pub struct SeqPacketListener {
    fd: OwnedFd,
}

/// A connected `SOCK_SEQPACKET` socket.
#[derive(Debug)]
pub struct SeqPacket {
    fd: OwnedFd,
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all zeros is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path empty, too long or with a NUL"));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl SeqPacketListener {
    /// Binds and listens at `path` (which must not exist). Its mode is the umask's: put it
    /// in a directory only its owner can enter.
    pub fn bind(path: &Path, backlog: i32) -> io::Result<SeqPacketListener> {
        let fd = socket()?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; our own fd.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) })?;
        // SAFETY: listen on our own bound fd.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
        Ok(SeqPacketListener { fd })
    }

    /// Waits up to `timeout_ms` for a connection; `Ok(None)` when none came.
    pub fn accept_timeout(&self, timeout_ms: i32) -> io::Result<Option<SeqPacket>> {
        if !poll_one(self.fd.as_raw_fd(), libc::POLLIN, timeout_ms)? {
            return Ok(None);
        }
        // SAFETY: accept4 on our own listening fd, without asking for the peer's address.
        let fd = unsafe {
            libc::accept4(self.fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ECONNABORTED) => Ok(None),
                _ => Err(err),
            };
        }
        // SAFETY: a new fd that nothing else owns.
        Ok(Some(SeqPacket { fd: unsafe { OwnedFd::from_raw_fd(fd) } }))
    }
}

/// Polls one fd for `events`; true when any of them (or an error or hang-up) is ready.
fn poll_one(fd: RawFd, events: libc::c_short, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one live pollfd and a count of 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::EINTR) { Ok(false) } else { Err(err) };
    }
    Ok(rc > 0)
}

impl SeqPacket {
    pub fn connect(path: &Path) -> io::Result<SeqPacket> {
        let fd = socket()?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes; our own fd.
        cvt(unsafe { libc::connect(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) })?;
        Ok(SeqPacket { fd })
    }

    /// A connected pair, e.g. for tests.
    pub fn pair() -> io::Result<(SeqPacket, SeqPacket)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: socketpair fills the two-element array it is given.
        cvt(unsafe {
            libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
        })?;
        // SAFETY: two new fds that nothing else owns.
        Ok(unsafe { (SeqPacket { fd: OwnedFd::from_raw_fd(fds[0]) }, SeqPacket { fd: OwnedFd::from_raw_fd(fds[1]) }) })
    }

    /// Who connected (or whom we connected to), as the kernel recorded it.
    pub fn peer_credentials(&self) -> io::Result<PeerCredentials> {
        // SAFETY: ucred is plain data that getsockopt fills, `len` its size.
        let cred = unsafe {
            let mut cred: libc::ucred = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
            cvt(libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            ))?;
            cred
        };
        Ok(PeerCredentials { pid: cred.pid, uid: cred.uid, gid: cred.gid })
    }

    /// Bounds every later `recv` (0: wait forever).
    pub fn set_recv_timeout_ms(&self, timeout_ms: u64) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: (timeout_ms / 1000) as libc::time_t,
            tv_usec: ((timeout_ms % 1000) * 1000) as libc::suseconds_t,
        };
        // SAFETY: a live timeval of the size given; our own fd.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    /// Sends one message with `fds` (at most [`MAX_FDS`]) attached. Never raises SIGPIPE.
    pub fn send(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds for one message"));
        }
        let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
        // Room for a header and MAX_FDS descriptors, aligned.
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain data; zeroed is a valid empty message.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let fd_bytes = std::mem::size_of_val(fds) as u32;
            msg.msg_control = control.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a size.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
            // SAFETY: msg_control points at `control`, large enough for one header with
            // MAX_FDS descriptors (64 bytes against CMSG_SPACE(16) = 32); the header and its
            // data lie inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as usize;
                std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
            }
        }
        loop {
            // SAFETY: `msg` points at live buffers (iov over `bytes`, control) for the call.
            let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return if n as usize == bytes.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(io::ErrorKind::WriteZero, "short send of a packet"))
                };
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        }
    }

    /// Receives one message into `buf` and the descriptors attached to it. `Ok(None)` when
    /// the peer has closed the connection. A message longer than `buf`, or with more than
    /// [`MAX_FDS`] descriptors, is an error (the descriptors that came are closed).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain data; zeroed is a valid empty message.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let n = loop {
            // SAFETY: `msg` points at live buffers (iov over `buf`, control) for the call.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINTR) {
                return Err(err);
            }
        };
        let mut fds = Vec::new();
        // SAFETY: the kernel filled msg_control with msg_controllen bytes of well-formed
        // headers; CMSG_FIRSTHDR/NXTHDR stay inside it, and each SCM_RIGHTS header's data
        // holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors now installed in our table, which
        // we take ownership of.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 || fds.len() > MAX_FDS {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "message or its descriptors truncated"));
        }
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        Ok(Some((n, fds)))
    }

    /// Waits up to `timeout_ms` for a message (or the peer's hang-up); true when `recv`
    /// would not block.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        poll_one(self.fd.as_raw_fd(), libc::POLLIN, timeout_ms)
    }

    /// Closes this process's descriptor of the socket without dropping the value: for a
    /// `fork(2)` child, so that only the parent holds the connection. Async-signal-safe.
    ///
    /// # Safety
    /// The value must never be used nor dropped afterwards (its fd number may be reused).
    pub unsafe fn close_in_child(&self) {
        // SAFETY: the caller's contract: this fd is not used again through this value.
        unsafe { libc::close(self.fd.as_raw_fd()) };
    }

    /// Blocks until the peer closes its end (or the socket fails); never reads, so it can
    /// run beside threads that send and receive.
    pub fn wait_hangup(&self) {
        loop {
            match poll_one(self.fd.as_raw_fd(), libc::POLLRDHUP, -1) {
                Ok(true) | Err(_) => return,
                Ok(false) => {}
            }
        }
    }
}

impl AsRawFd for SeqPacket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_descriptors_and_credentials() {
        let (a, b) = SeqPacket::pair().unwrap();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        a.send(b"hello", &[file.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 64];
        let (n, fds) = b.recv(&mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fds[0].as_raw_fd())).unwrap();
        assert_eq!(link, std::path::Path::new("/proc").join(std::process::id().to_string()).join("stat"));
        assert_eq!(b.peer_credentials().unwrap().pid, std::process::id() as i32);
        a.send(&[0u8; 100], &[]).unwrap();
        assert!(b.recv(&mut buf).is_err(), "a message longer than the buffer is refused");
        drop(a);
        assert!(b.recv(&mut buf).unwrap().is_none(), "end of connection");
        b.wait_hangup();
    }
}
