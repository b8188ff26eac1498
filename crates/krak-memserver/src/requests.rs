//! Turning one decoded request into its answer. No I/O: the caller reads frames and
//! writes `out`, so every rule here is testable without sockets.

use std::net::SocketAddr;

use krak_proto::{
    begin_pages_response, decode_request, encode_authenticated, encode_error, encode_hello_ok, encode_slab_allocated,
    encode_slab_freed, encode_stats_response, encode_written, proof_matches, DecodeError, ErrorCode, FrameMac, Header,
    Op, Request, ServerHello, Side, Transcript, PAGE_SIZE, PROOF_LEN, PROTOCOL_VERSION,
};

use crate::registry::RegistryError;
use crate::server::ServerShared;

/// Whether a connection goes on after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Continue,
    /// The peer broke the protocol: the answer explains why, then the connection closes.
    Close,
}

/// Requests on one connection that may name slabs it does not hold before it is closed:
/// an honest pager names a missing slab only after a server restart or a free race.
pub(crate) const MAX_BAD_SLAB_REQUESTS: u32 = 16;

/// Protocol state of one connection.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) peer: SocketAddr,
    /// Set once the client proved it knows the secret; every later request acts on this
    /// client's slabs.
    pub(crate) client_id: Option<u64>,
    /// Between our hello and the client's proof: what both hellos said.
    pub(crate) handshake: Option<Transcript>,
    /// Set when our hello is sent: every later frame, both ways, carries a MAC.
    pub(crate) mac: Option<FrameMac>,
    /// Requests refused with `UnknownSlab` on this connection.
    pub(crate) bad_slab_requests: u32,
    /// Links to the servers this connection's client pushes units to.
    pub(crate) pushers: crate::push::Pushers,
}

impl Session {
    pub(crate) fn new(peer: SocketAddr) -> Session {
        Session { peer, client_id: None, handshake: None, mac: None, bad_slab_requests: 0, pushers: Default::default() }
    }
}

/// The error code that answers a frame that failed to decode.
pub(crate) fn decode_error_code(e: &DecodeError) -> ErrorCode {
    match e {
        DecodeError::FrameTooLarge(_) => ErrorCode::FrameTooLarge,
        DecodeError::UnknownKind(_) => ErrorCode::UnknownOp,
        DecodeError::BatchTooLarge(_) => ErrorCode::BatchTooLarge,
        DecodeError::BadMagic(_) | DecodeError::ReservedNotZero(_) | DecodeError::Malformed { .. } => {
            ErrorCode::Malformed
        }
    }
}

/// Appends the answer to one request (a frame whose header decoded) to `out`.
pub(crate) fn answer(
    shared: &ServerShared,
    session: &mut Session,
    header: &Header,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Next {
    let id = header.request_id;
    let kind = header.kind;
    let request = match decode_request(header, body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("{}: closing after an undecodable frame: {e}", session.peer);
            return refuse(shared, out, id, kind, decode_error_code(&e), &e.to_string(), Next::Close);
        }
    };
    let Some(client_id) = session.client_id else {
        return match session.handshake.take() {
            None => hello(shared, session, id, kind, request, out),
            Some(transcript) => authenticate(shared, session, transcript, id, kind, request, out),
        };
    };
    let registry = &shared.registry;
    let result = match request {
        Request::Hello { .. } | Request::Auth { .. } => {
            tracing::warn!("{}: second handshake on one connection", session.peer);
            let msg = "hello already done on this connection";
            return refuse(shared, out, id, kind, ErrorCode::Malformed, msg, Next::Close);
        }
        Request::AllocSlab { unit_bytes } => registry.alloc(client_id, unit_bytes).map(|slab| {
            tracing::debug!("client {client_id:#x} allocated slab {:#x} of {unit_bytes}-byte units", slab.0);
            encode_slab_allocated(out, id, slab);
        }),
        Request::FreeSlab { slab } => registry.free(client_id, slab).map(|()| {
            tracing::debug!("client {client_id:#x} freed slab {:#x}", slab.0);
            encode_slab_freed(out, id);
        }),
        Request::WritePages(entries) => registry.write_pages(client_id, entries).map(|()| {
            shared.counters.add_pages_written(entries.len());
            encode_written(out, Op::WritePages, id, entries.len() as u32);
        }),
        Request::CopyPages(entries) => registry.copy_pages(client_id, entries).map(|stored| {
            session.pushers.background(session.peer);
            shared.counters.add_pages_written(stored as usize);
            encode_written(out, Op::CopyPages, id, stored);
        }),
        Request::PushPages(entries) => {
            session.pushers.background(session.peer);
            crate::push::push(shared, &mut session.pushers, client_id, entries).map(|stored| {
                shared.counters.add_pages_read(entries.len());
                encode_written(out, Op::PushPages, id, stored);
            })
        }
        Request::DiscardPages(entries) => registry.discard_pages(client_id, entries).map(|discarded| {
            shared.counters.add_units_discarded(discarded as usize);
            encode_written(out, Op::DiscardPages, id, discarded);
        }),
        Request::ReadPages(entries) => {
            let start = out.len();
            out.reserve(entries.len() * (4 + entries.unit_bytes() as usize) + 64);
            let mut frame = begin_pages_response(out, id, entries.len() as u32, entries.unit_bytes());
            let read = registry.read_pages(client_id, entries, |crc, data| {
                frame.put_u32(crc).put_bytes(data);
            });
            match read {
                Ok(()) => {
                    frame.finish();
                    shared.counters.add_pages_read(entries.len());
                    Ok(())
                }
                Err(e) => {
                    // Nothing was emitted, but drop the frame header already started.
                    out.truncate(start);
                    Err(e)
                }
            }
        }
        Request::Stats => {
            encode_stats_response(out, id, &shared.stats());
            Ok(())
        }
    };
    match result {
        Ok(()) => Next::Continue,
        Err(e) => {
            if let RegistryError::Map(_) = e {
                tracing::error!("client {client_id:#x}: {e}");
            } else {
                tracing::debug!("client {client_id:#x} refused: {e}");
            }
            if let RegistryError::UnknownSlab(_) = e {
                session.bad_slab_requests += 1;
                if session.bad_slab_requests > MAX_BAD_SLAB_REQUESTS {
                    tracing::warn!("{}: client {client_id:#x} keeps naming slabs it does not hold", session.peer);
                    let msg =
                        format!("more than {MAX_BAD_SLAB_REQUESTS} requests named slabs this client does not hold");
                    return refuse(shared, out, id, kind, ErrorCode::TooManyBadSlabs, &msg, Next::Close);
                }
            }
            refuse(shared, out, id, kind, e.code(), &e.to_string(), Next::Continue)
        }
    }
}

/// The first request of a connection: it must be a hello in our version. The answer
/// proves we know the secret and starts the frame MACs.
fn hello(
    shared: &ServerShared,
    session: &mut Session,
    id: u64,
    kind: u16,
    request: Request<'_>,
    out: &mut Vec<u8>,
) -> Next {
    let Request::Hello { version, client_id, nonce: client_nonce } = request else {
        tracing::warn!("{}: request before hello", session.peer);
        return refuse(shared, out, id, kind, ErrorCode::HelloRequired, "the first request must be hello", Next::Close);
    };
    if version != PROTOCOL_VERSION {
        tracing::warn!("{}: hello with protocol version {version}", session.peer);
        let msg = format!("protocol version {version} not supported; this server speaks {PROTOCOL_VERSION}");
        return refuse(shared, out, id, kind, ErrorCode::UnsupportedVersion, &msg, Next::Close);
    }
    tracing::debug!("{}: hello from client {client_id:#x}", session.peer);
    let config = &shared.config;
    let mut hello = ServerHello {
        version: PROTOCOL_VERSION,
        page_size: PAGE_SIZE as u32,
        slab_size_bytes: config.slab_size_bytes,
        capacity_bytes: config.capacity_bytes,
        server_id: shared.server_id,
        nonce: rand::random(),
        proof: [0; PROOF_LEN],
    };
    let transcript = Transcript { version, client_id, client_nonce, server: hello };
    hello.proof = transcript.server_proof(&shared.secret);
    encode_hello_ok(out, id, &hello);
    session.mac = Some(FrameMac::new(&transcript.session_key(&shared.secret), Side::Server));
    session.handshake = Some(transcript);
    Next::Continue
}

/// The second request: the client's proof that it knows the secret. Only then is the
/// connection bound to its client id.
fn authenticate(
    shared: &ServerShared,
    session: &mut Session,
    transcript: Transcript,
    id: u64,
    kind: u16,
    request: Request<'_>,
    out: &mut Vec<u8>,
) -> Next {
    let Request::Auth { proof } = request else {
        tracing::warn!("{}: request before the handshake's proof", session.peer);
        let msg = "the second request must be auth";
        return refuse(shared, out, id, kind, ErrorCode::HelloRequired, msg, Next::Close);
    };
    if !proof_matches(&transcript.client_proof(&shared.secret), &proof) {
        tracing::warn!("{}: client {:#x} does not know the rack secret", session.peer, transcript.client_id);
        let msg = "authentication failed: the proof does not match this rack's secret";
        return refuse(shared, out, id, kind, ErrorCode::AuthFailed, msg, Next::Close);
    }
    let client_id = transcript.client_id;
    if let Err(e) = shared.registry.connect(client_id) {
        tracing::warn!("{}: client {client_id:#x} refused: {e}", session.peer);
        return refuse(shared, out, id, kind, e.code(), &e.to_string(), Next::Close);
    }
    session.client_id = Some(client_id);
    tracing::debug!("{}: client {client_id:#x} authenticated", session.peer);
    encode_authenticated(out, id);
    Next::Continue
}

fn refuse(
    shared: &ServerShared,
    out: &mut Vec<u8>,
    id: u64,
    kind: u16,
    code: ErrorCode,
    msg: &str,
    next: Next,
) -> Next {
    shared.counters.add_error();
    encode_error(out, id, kind, code, msg);
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServerConfig;
    use krak_proto::{
        decode_response, encode_alloc_slab, encode_auth, encode_hello, encode_read_pages, encode_stats, RackSecret,
        Response, HEADER_LEN, NONCE_LEN,
    };

    fn shared() -> ServerShared {
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), 1 << 20);
        config.slab_size_bytes = 1 << 19;
        ServerShared::new(config, "127.0.0.1:1".parse().unwrap())
    }

    /// Feeds one encoded request through `answer` and decodes what came out.
    fn ask(shared: &ServerShared, session: &mut Session, encode: impl FnOnce(&mut Vec<u8>)) -> (Next, u16, Vec<u8>) {
        let mut frame = Vec::new();
        encode(&mut frame);
        let h = Header::decode(frame[..HEADER_LEN].try_into().unwrap()).unwrap();
        let mut out = Vec::new();
        let next = answer(shared, session, &h, &frame[HEADER_LEN..], &mut out);
        let rh = Header::decode(out[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(rh.request_id, h.request_id, "answers carry the request id");
        assert_eq!(rh.body_len as usize, out.len() - HEADER_LEN, "exactly one frame");
        (next, rh.status, out)
    }

    fn session() -> Session {
        Session::new("127.0.0.1:2".parse().unwrap())
    }

    /// Hello and auth as `client_id` knowing `secret`; returns the auth answer's status.
    fn handshake(s: &ServerShared, sess: &mut Session, client_id: u64, secret: &RackSecret) -> (Next, u16) {
        let nonce = [9u8; NONCE_LEN];
        let (next, status, out) = ask(s, sess, |b| encode_hello(b, 1, PROTOCOL_VERSION, client_id, &nonce));
        assert_eq!((next, status), (Next::Continue, 0));
        let h = Header::decode(out[..HEADER_LEN].try_into().unwrap()).unwrap();
        let Ok(Response::Hello(hello)) = decode_response(&h, &out[HEADER_LEN..]) else { panic!("not a hello") };
        let t = Transcript { version: PROTOCOL_VERSION, client_id, client_nonce: nonce, server: hello };
        assert_eq!(hello.proof, t.server_proof(&s.secret), "the server proves it knows the secret");
        let proof = t.client_proof(secret);
        let (next, status, _) = ask(s, sess, |b| encode_auth(b, 2, &proof));
        (next, status)
    }

    #[test]
    fn the_first_request_must_be_a_hello_in_our_version() {
        let s = shared();
        let (next, status, _) = ask(&s, &mut session(), |b| encode_alloc_slab(b, 1, 4096));
        assert_eq!((next, status), (Next::Close, ErrorCode::HelloRequired as u16));
        let n = [0; NONCE_LEN];
        let (next, status, _) = ask(&s, &mut session(), |b| encode_hello(b, 1, 99, 5, &n));
        assert_eq!((next, status), (Next::Close, ErrorCode::UnsupportedVersion as u16));

        let mut sess = session();
        let (next, status, out) = ask(&s, &mut sess, |b| encode_hello(b, 3, PROTOCOL_VERSION, 5, &n));
        assert_eq!((next, status, sess.client_id), (Next::Continue, 0, None), "bound only after the proof");
        let h = Header::decode(out[..HEADER_LEN].try_into().unwrap()).unwrap();
        let Ok(Response::Hello(hello)) = decode_response(&h, &out[HEADER_LEN..]) else { panic!("not a hello") };
        assert_eq!((hello.page_size, hello.slab_size_bytes, hello.capacity_bytes), (4096, 1 << 19, 1 << 20));
        assert_eq!(hello.server_id, s.server_id);
        // Anything but the proof next is refused.
        let (next, status, _) = ask(&s, &mut sess, |b| encode_alloc_slab(b, 4, 4096));
        assert_eq!((next, status), (Next::Close, ErrorCode::HelloRequired as u16));

        let mut sess = session();
        assert_eq!(handshake(&s, &mut sess, 5, &s.secret.clone()), (Next::Continue, 0));
        assert_eq!(sess.client_id, Some(5));
        let (next, status, _) = ask(&s, &mut sess, |b| encode_hello(b, 4, PROTOCOL_VERSION, 5, &n));
        assert_eq!((next, status), (Next::Close, ErrorCode::Malformed as u16));
        assert_eq!(s.stats().errors, 4);
    }

    #[test]
    fn a_client_without_the_secret_is_refused() {
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), 1 << 20);
        config.slab_size_bytes = 1 << 19;
        config.secret = Some(RackSecret::generate());
        let s = ServerShared::new(config, "127.0.0.1:1".parse().unwrap());
        let mut sess = session();
        let got = handshake(&s, &mut sess, 5, &RackSecret::generate());
        assert_eq!(got, (Next::Close, ErrorCode::AuthFailed as u16));
        assert_eq!(sess.client_id, None);
        let got = handshake(&s, &mut session(), 5, &RackSecret::insecure());
        assert_eq!(got, (Next::Close, ErrorCode::AuthFailed as u16));
        assert_eq!(handshake(&s, &mut session(), 5, &s.secret.clone()), (Next::Continue, 0));
    }

    #[test]
    fn guessing_slabs_ends_the_connection() {
        let s = shared();
        let mut sess = session();
        handshake(&s, &mut sess, 5, &RackSecret::insecure());
        for i in 0..MAX_BAD_SLAB_REQUESTS {
            let at = krak_proto::PageRef { slab: krak_proto::SlabId(u64::from(i) + 1, 7), page: 0 };
            let (next, status, _) = ask(&s, &mut sess, |b| encode_read_pages(b, 10, 4096, &[at]));
            assert_eq!((next, status), (Next::Continue, ErrorCode::UnknownSlab as u16));
        }
        let at = krak_proto::PageRef { slab: krak_proto::SlabId(999, 7), page: 0 };
        let (next, status, _) = ask(&s, &mut sess, |b| encode_read_pages(b, 11, 4096, &[at]));
        assert_eq!((next, status), (Next::Close, ErrorCode::TooManyBadSlabs as u16));
    }

    #[test]
    fn refusals_keep_the_connection_and_count_as_errors() {
        let s = shared();
        let mut sess = session();
        handshake(&s, &mut sess, 5, &RackSecret::insecure());
        for id in 2..4 {
            assert_eq!(ask(&s, &mut sess, |b| encode_alloc_slab(b, id, 4096)).1, 0);
        }
        let (next, status, out) = ask(&s, &mut sess, |b| encode_alloc_slab(b, 4, 4096));
        assert_eq!((next, status), (Next::Continue, ErrorCode::NoCapacity as u16));
        let msg = std::str::from_utf8(&out[HEADER_LEN..]).unwrap();
        assert_eq!(msg, "capacity 1MiB exhausted: 1MiB lent in 2 slabs of 512KiB");
        let at = krak_proto::PageRef { slab: krak_proto::SlabId(1, 1), page: 0 };
        let (next, status, _) = ask(&s, &mut sess, |b| encode_read_pages(b, 5, 4096, &[at]));
        assert_eq!((next, status), (Next::Continue, ErrorCode::UnknownSlab as u16));
        let (_, _, out) = ask(&s, &mut sess, |b| encode_stats(b, 6));
        let h = Header::decode(out[..HEADER_LEN].try_into().unwrap()).unwrap();
        let Ok(Response::Stats(st)) = decode_response(&h, &out[HEADER_LEN..]) else { panic!("not stats") };
        assert_eq!((st.slabs, st.lent_bytes, st.clients, st.errors), (2, 1 << 20, 1, 2));
    }

    #[test]
    fn undecodable_bodies_close_the_connection() {
        let s = shared();
        let mut sess = session();
        handshake(&s, &mut sess, 5, &RackSecret::insecure());
        let (next, status, _) = ask(&s, &mut sess, |b| {
            encode_alloc_slab(b, 9, 4096);
            b.extend_from_slice(&[1, 2, 3]); // alloc carries a 4-byte body
            b[16] = 7;
        });
        assert_eq!((next, status), (Next::Close, ErrorCode::Malformed as u16));
        let (next, status, _) = ask(&s, &mut sess, |b| {
            encode_alloc_slab(b, 9, 4096);
            b[4] = 77; // unknown kind
        });
        assert_eq!((next, status), (Next::Close, ErrorCode::UnknownOp as u16));
    }
}
