//! The socket side of a connection: one receive buffer that frames are read into whole,
//! and a socket kept non-blocking while answers come quickly.
//!
//! Waiting for an answer first busy-waits with non-blocking reads straight into the buffer,
//! then falls back to a blocking read bounded by the stream's timeout. An answer caught
//! while spinning costs one `recv` for its header, body and MAC together, with no mode
//! switch: on a virtual machine every system call on the fault path counts.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::SocketMode;

/// Bytes asked of the kernel per read at least, so that pipelined answers come in together.
const MIN_READ_BYTES: usize = 64 << 10;
/// A buffer that grew past this for a large answer is given back once it is consumed.
const KEEP_BYTES: usize = 2 << 20;

#[derive(Debug)]
pub(crate) struct Inbox {
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    mode: SocketMode,
}

impl Inbox {
    pub fn new() -> Inbox {
        Inbox { buf: vec![0; MIN_READ_BYTES], start: 0, end: 0, mode: SocketMode::default() }
    }

    /// Makes sure at least `n` unconsumed bytes are buffered: busy-waits (non-blocking reads,
    /// yielding between them) for up to `spin`, then blocks in reads bounded by the stream's
    /// read timeout (an elapsed timeout is `WouldBlock` or `TimedOut`).
    pub fn fill(&mut self, stream: &TcpStream, n: usize, spin: Duration) -> io::Result<()> {
        if self.end - self.start >= n {
            return Ok(());
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEEP_BYTES {
                self.buf.truncate(MIN_READ_BYTES);
                self.buf.shrink_to_fit();
            }
        }
        if self.start + n > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if n > self.buf.len() {
                self.buf.resize(n.max(MIN_READ_BYTES), 0);
            }
        }
        // Each read takes as much as fits past `n`, so that pipelined answers come together.
        let spin_until = (!spin.is_zero()).then(|| Instant::now() + spin);
        while self.end - self.start < n {
            self.end += self.mode.read_spinning(stream, &mut self.buf[self.end..], spin_until)?;
        }
        Ok(())
    }

    /// Consumes the next `n` buffered bytes and returns them.
    pub fn take(&mut self, n: usize) -> &[u8] {
        debug_assert!(self.end - self.start >= n, "take only what fill made sure of");
        let at = self.start;
        self.start += n;
        &self.buf[at..at + n]
    }

    /// Writes all of `bytes` (see [`SocketMode::write_all`]).
    pub fn write_all(&mut self, stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
        self.mode.write_all(stream, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (client, server)
    }

    #[test]
    fn frames_arriving_in_pieces_come_out_whole_and_in_order() {
        let (client, mut server) = pair();
        let writer = std::thread::spawn(move || {
            // A frame larger than the buffer, split over writes with pauses longer than the
            // spin, then two small ones in one write.
            let big: Vec<u8> = (0..(MIN_READ_BYTES * 3)).map(|i| (i % 251) as u8).collect();
            for piece in big.chunks(50_000) {
                server.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            server.write_all(&[1, 2, 3, 4, 5]).unwrap();
            big
        });
        let mut inbox = Inbox::new();
        let n = MIN_READ_BYTES * 3;
        inbox.fill(&client, n, Duration::from_micros(50)).unwrap();
        let got = inbox.take(n).to_vec();
        let want = writer.join().unwrap();
        assert_eq!(got, want);
        inbox.fill(&client, 2, Duration::ZERO).unwrap();
        assert_eq!(inbox.take(2), &[1, 2]);
        inbox.fill(&client, 3, Duration::from_micros(50)).unwrap();
        assert_eq!(inbox.take(3), &[3, 4, 5]);
    }

    #[test]
    fn a_silent_peer_times_out_and_a_closed_one_is_eof() {
        let (client, server) = pair();
        client.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut inbox = Inbox::new();
        let err = inbox.fill(&client, 1, Duration::from_micros(100)).unwrap_err();
        assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{err:?}");
        drop(server);
        let err = inbox.fill(&client, 1, Duration::from_micros(100)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn writes_go_out_whole_from_a_nonblocking_socket() {
        let (client, mut server) = pair();
        let mut inbox = Inbox::new();
        // Leave the socket non-blocking, as a spin that caught an answer does.
        inbox.mode.set_nonblocking(&client, true).unwrap();
        let bytes: Vec<u8> = (0..(8 << 20)).map(|i| (i % 253) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::thread::sleep(Duration::from_millis(20));
            (&mut server).take(8 << 20).read_to_end(&mut got).unwrap();
            got
        });
        inbox.write_all(&client, &bytes).unwrap();
        assert_eq!(reader.join().unwrap(), bytes);
    }
}
