//! One HTTP connection's transport layer, beneath hyper: what the connection is waiting for
//! and until when, the bound on writing an answer, and a lingering close.
//!
//! hyper frames requests; it has one timeout for a request head, started when it begins
//! reading one, so it cannot tell a silent newcomer (the request timeout), a kept-alive
//! connection between requests (the idle timeout) and a request that has begun to arrive
//! (the request timeout from its first byte) apart. [`Watched`] wraps the socket and keeps
//! each deadline from [`ConnState`]'s phase, which the service moves on as requests are
//! answered.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use crate::http_gate::{Admission, HttpStats};

/// What is read (and dropped) of a refused request after its answer, so that closing does
/// not reset the connection before the client reads the answer.
const LINGER_BYTES: u64 = 4 << 20;
const LINGER_TIME: Duration = Duration::from_secs(1);

/// The two timeouts of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// A request (head and body) must arrive within this long of its first byte (of the
    /// connection's opening, for its first request); also bounds each write of an answer.
    pub request: Duration,
    /// A kept-alive connection with no new request for this long is closed.
    pub idle: Duration,
}

/// What a connection is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// For a request to begin; `first` until the connection has been answered once.
    Waiting { since: Instant, first: bool },
    /// For the rest of a request whose first byte came at `since`.
    Receiving { since: Instant },
    /// For the API: no read deadline (a long-poll's wait is the controller's, not the client's).
    Answering,
}

/// Why a deadline ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// Nothing was sent within the request timeout of opening: closed without an answer.
    Silent,
    /// No new request within the idle timeout: closed without an answer.
    Idle,
    /// A request began but was not whole in time: answered 408.
    Partial,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// Close slowly: an error answer went out before all of its request was read.
    linger: bool,
}

/// The phase of one connection, shared by its socket wrapper and its service, and its place
/// in the connection gate (freed when the last of them lets go).
#[derive(Debug)]
pub struct ConnState {
    inner: Mutex<Inner>,
    admission: Option<Admission>,
}

impl ConnState {
    pub fn new(admission: Option<Admission>) -> Arc<ConnState> {
        let phase = Phase::Waiting { since: Instant::now(), first: true };
        Arc::new(ConnState { inner: Mutex::new(Inner { phase, linger: false }), admission })
    }

    /// A request head was read: it is being answered. Returns when its first byte came (the
    /// body must be whole by that plus the request timeout), or `None` if the gate closed the
    /// connection for room meanwhile (its request must not be served: the answer could not
    /// be sent, and the client takes it for not served).
    pub fn answering(&self) -> Option<Instant> {
        let mut inner = self.inner.lock();
        let began = match inner.phase {
            Phase::Receiving { since } => since,
            // the head was already buffered (pipelined): it began now
            Phase::Waiting { .. } | Phase::Answering => Instant::now(),
        };
        inner.phase = Phase::Answering;
        drop(inner);
        match &self.admission {
            Some(a) if !a.answering() => None,
            _ => Some(began),
        }
    }

    /// The answer is handed to hyper: the connection waits for its next request (and may
    /// be closed to admit a newcomer).
    pub fn answered(&self) {
        self.inner.lock().phase = Phase::Waiting { since: Instant::now(), first: false };
        if let Some(a) = &self.admission {
            a.waiting();
        }
    }

    /// The answer refuses a request not read to its end: close slowly.
    pub fn linger(&self) {
        self.inner.lock().linger = true;
    }

    fn saw_bytes(&self) {
        let mut inner = self.inner.lock();
        if let Phase::Waiting { .. } = inner.phase {
            inner.phase = Phase::Receiving { since: Instant::now() };
        }
    }

    fn read_deadline(&self, t: &Timeouts) -> Option<(Instant, Expired)> {
        match self.inner.lock().phase {
            Phase::Waiting { since, first: true } => Some((since + t.request, Expired::Silent)),
            Phase::Waiting { since, first: false } => Some((since + t.idle, Expired::Idle)),
            Phase::Receiving { since } => Some((since + t.request, Expired::Partial)),
            Phase::Answering => None,
        }
    }
}

/// A timer armed for one deadline at a time.
#[derive(Debug)]
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
}

impl Deadline {
    fn new() -> Deadline {
        Deadline { sleep: Box::pin(tokio::time::sleep(Duration::ZERO)), armed_for: None }
    }

    /// Whether `at` has passed; if not, the task is woken when it does.
    fn passed(&mut self, at: Instant, cx: &mut Context<'_>) -> bool {
        if self.armed_for != Some(at) {
            self.sleep.as_mut().reset(at.into());
            self.armed_for = Some(at);
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

/// The socket of an admitted connection, keeping its deadlines.
#[derive(Debug)]
pub struct Watched {
    stream: Option<TcpStream>,
    state: Arc<ConnState>,
    timeouts: Timeouts,
    stats: Arc<HttpStats>,
    read: Deadline,
    write: Deadline,
    /// When the write under way began to wait for the client.
    write_blocked_since: Option<Instant>,
    /// Whether this layer may write a 408 itself (not under TLS, whose records it cannot
    /// write).
    plain: bool,
    /// Bounds the connections lingering at once.
    lingerers: Arc<Semaphore>,
}

impl Watched {
    pub fn new(
        stream: TcpStream,
        state: Arc<ConnState>,
        timeouts: Timeouts,
        stats: Arc<HttpStats>,
        plain: bool,
        lingerers: Arc<Semaphore>,
    ) -> Watched {
        Watched {
            stream: Some(stream),
            state,
            timeouts,
            stats,
            read: Deadline::new(),
            write: Deadline::new(),
            write_blocked_since: None,
            plain,
            lingerers,
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream.as_mut().ok_or_else(|| io::ErrorKind::NotConnected.into())
    }

    fn expire(&mut self, why: Expired) -> io::Error {
        match why {
            Expired::Silent => self.stats.request_timed_out(),
            Expired::Idle => self.stats.idle_timed_out(),
            Expired::Partial => {
                self.stats.request_timed_out();
                if self.plain && self.write_blocked_since.is_none() {
                    let answer = raw_answer(408, "request not complete within the request timeout");
                    // best effort: a few hundred bytes into an idle socket's send buffer
                    if let Some(s) = &self.stream {
                        let _ = s.try_write(&answer);
                    }
                }
                self.state.linger();
            }
        }
        io::ErrorKind::TimedOut.into()
    }

    fn poll_write_bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let polled = match self.stream() {
            Ok(s) => op(Pin::new(s), cx),
            Err(e) => return Poll::Ready(Err(e)),
        };
        if polled.is_ready() {
            self.write_blocked_since = None;
            return polled;
        }
        let since = *self.write_blocked_since.get_or_insert_with(Instant::now);
        if self.write.passed(since + self.timeouts.request, cx) {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        Poll::Pending
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let stream = match this.stream() {
            Ok(s) => s,
            Err(e) => return Poll::Ready(Err(e)),
        };
        match Pin::new(stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.saw_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match this.state.read_deadline(&this.timeouts) {
                Some((at, why)) if this.read.passed(at, cx) => Poll::Ready(Err(this.expire(why))),
                _ => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_bounded(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_bounded(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_write_bounded(cx, |s, cx| s.poll_shutdown(cx))
    }
}

impl Drop for Watched {
    /// A refused request may still be arriving: closing over unread bytes resets the
    /// connection, which can destroy the answer before the client reads it. So such a close
    /// half-closes, then reads a bounded amount for a bounded time. The connection keeps its
    /// place in the gate meanwhile (through `state`), so the bounds on open sockets hold.
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else { return };
        let mut probe = [0u8; 1];
        let unread = matches!(stream.try_read(&mut probe), Ok(1..));
        if !(unread || self.state.inner.lock().linger) {
            return;
        }
        let Ok(permit) = self.lingerers.clone().try_acquire_owned() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let state = self.state.clone();
        runtime.spawn(async move {
            let mut stream = stream;
            let _ = stream.shutdown().await;
            let (mut unread, mut sink) = ((&mut stream).take(LINGER_BYTES), tokio::io::sink());
            let _ = tokio::time::timeout(LINGER_TIME, tokio::io::copy(&mut unread, &mut sink)).await;
            drop((stream, state, permit));
        });
    }
}

/// An answer written by the transport itself, outside hyper: a 503 to a connection the gate
/// refused, a 408 to a request head not whole in time. Both close the connection.
pub fn raw_answer(status: u16, message: &str) -> Vec<u8> {
    let reason = match status {
        408 => "Request Timeout",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let body = crate::http::Response::error(status, message).body;
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}
