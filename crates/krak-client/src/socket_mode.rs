//! A TCP stream's blocking mode, switched only when it changes, and whole writes on a
//! stream that may have been left non-blocking by a spin. Shared by the client's `Inbox`
//! and the memory server's connections.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What mode the stream is in, so that a switch costs a system call only when it changes.
#[derive(Debug, Default)]
pub struct SocketMode {
    nonblocking: bool,
}

impl SocketMode {
    pub fn is_nonblocking(&self) -> bool {
        self.nonblocking
    }

    pub fn set_nonblocking(&mut self, stream: &TcpStream, on: bool) -> io::Result<()> {
        if self.nonblocking != on {
            stream.set_nonblocking(on)?;
            self.nonblocking = on;
        }
        Ok(())
    }

    /// One read of at least one byte into `buf`, as the client and the server wait for
    /// frames: non-blocking reads, yielding between them, until `spin_until` (`None`: not
    /// at all), then a blocking read bounded by the stream's read timeout (an elapsed
    /// timeout is `WouldBlock` or `TimedOut`). The peer's close is `UnexpectedEof`.
    pub fn read_spinning(
        &mut self,
        stream: &TcpStream,
        buf: &mut [u8],
        spin_until: Option<Instant>,
    ) -> io::Result<usize> {
        loop {
            let blocking = spin_until.is_none_or(|t| Instant::now() >= t);
            self.set_nonblocking(stream, !blocking)?;
            match (&mut &*stream).read(buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => return Ok(n),
                Err(e) if !blocking && e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Fills `buf` with [`SocketMode::read_spinning`], spinning up to `spin` in all.
    pub fn read_exact_spinning(&mut self, stream: &TcpStream, buf: &mut [u8], spin: Duration) -> io::Result<()> {
        let spin_until = (!spin.is_zero()).then(|| Instant::now() + spin);
        let mut done = 0;
        while done < buf.len() {
            done += self.read_spinning(stream, &mut buf[done..], spin_until)?;
        }
        Ok(())
    }

    /// Writes all of `bytes`; a stream left non-blocking is switched back to blocking (its
    /// write timeout then bounds the wait) only if the kernel's send buffer is full.
    pub fn write_all(&mut self, stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < bytes.len() {
            match (&mut &*stream).write(&bytes[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if self.nonblocking && e.kind() == io::ErrorKind::WouldBlock => {
                    self.set_nonblocking(stream, false)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
