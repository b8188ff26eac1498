//! Message kinds, error codes and the decoded (borrowing) forms of each message.

use crate::{MAX_UNIT_BYTES, MIN_UNIT_BYTES, NONCE_LEN, PROOF_LEN};

/// Set in the kind of every response: response kind = request kind | `RESPONSE_BIT`.
pub const RESPONSE_BIT: u16 = 0x8000;

/// Request kinds. Responses use the same value with [`RESPONSE_BIT`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Hello = 1,
    AllocSlab = 2,
    FreeSlab = 3,
    ReadPages = 4,
    WritePages = 5,
    Stats = 6,
    Auth = 7,
    CopyPages = 8,
    PushPages = 9,
    DiscardPages = 10,
}

impl Op {
    pub fn from_kind(kind: u16) -> Option<Op> {
        Some(match kind & !RESPONSE_BIT {
            1 => Op::Hello,
            2 => Op::AllocSlab,
            3 => Op::FreeSlab,
            4 => Op::ReadPages,
            5 => Op::WritePages,
            6 => Op::Stats,
            7 => Op::Auth,
            8 => Op::CopyPages,
            9 => Op::PushPages,
            10 => Op::DiscardPages,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::AllocSlab => "alloc_slab",
            Op::FreeSlab => "free_slab",
            Op::ReadPages => "read_pages",
            Op::WritePages => "write_pages",
            Op::Stats => "stats",
            Op::Auth => "auth",
            Op::CopyPages => "copy_pages",
            Op::PushPages => "push_pages",
            Op::DiscardPages => "discard_pages",
        }
    }
}

/// Error codes carried in the header `status` of an error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The body does not parse as the message its kind names.
    Malformed = 1,
    /// The hello named a protocol version this server does not speak.
    UnsupportedVersion = 2,
    /// The header declared a body longer than `MAX_BODY_BYTES`.
    FrameTooLarge = 3,
    /// The kind is not a known request.
    UnknownOp = 4,
    /// A request other than hello arrived before the hello.
    HelloRequired = 5,
    /// Lending another slab would exceed the server's capacity.
    NoCapacity = 6,
    /// The slab does not exist or belongs to another client.
    UnknownSlab = 7,
    /// The page index lies outside the slab.
    PageOutOfRange = 8,
    /// A written page does not match the CRC-32C sent with it.
    ChecksumMismatch = 9,
    /// The server already serves its maximum number of connections.
    TooManyConnections = 10,
    /// The server failed for a reason of its own.
    Internal = 11,
    /// A batch carried more than `MAX_BATCH_PAGES` pages.
    BatchTooLarge = 12,
    /// A handshake proof or a frame's MAC is wrong: wrong secret, forged, altered or
    /// replayed frame.
    AuthFailed = 13,
    /// A per-client limit (connections, bytes lent) would be exceeded.
    ClientLimit = 14,
    /// Too many requests on this connection named slabs it does not hold (guessing).
    TooManyBadSlabs = 15,
    /// A read or write named a unit size other than the slab's.
    WrongUnitSize = 16,
    /// A push could not copy to the server it named (unreachable, not of this rack, or it
    /// refused the copy); nothing is known about what it stored.
    PushFailed = 17,
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match code {
            1 => Malformed,
            2 => UnsupportedVersion,
            3 => FrameTooLarge,
            4 => UnknownOp,
            5 => HelloRequired,
            6 => NoCapacity,
            7 => UnknownSlab,
            8 => PageOutOfRange,
            9 => ChecksumMismatch,
            10 => TooManyConnections,
            11 => Internal,
            12 => BatchTooLarge,
            13 => AuthFailed,
            14 => ClientLimit,
            15 => TooManyBadSlabs,
            16 => WrongUnitSize,
            17 => PushFailed,
            _ => return None,
        })
    }
}

/// A slab handle (a capability) issued by the server: `.0` is the slab's random id, `.1`
/// a 64-bit tag the server computed over (client id, slab id) under a key only it knows.
/// Every use of the slab carries both; only the client the slab was lent to can present
/// a valid pair. Clients treat it as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlabId(pub u64, pub u64);

/// Bytes of a slab handle on the wire: id then tag.
pub const SLAB_HANDLE_LEN: usize = 16;

/// One unit (a page, or a page's fragment) of one slab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageRef {
    pub slab: SlabId,
    /// Unit index inside the slab.
    pub page: u32,
}

/// True for a unit size a slab may have: a power of two from [`MIN_UNIT_BYTES`] to
/// [`MAX_UNIT_BYTES`] (so it divides a page and is a multiple of 64 bytes).
pub fn valid_unit_bytes(unit_bytes: u32) -> bool {
    let u = unit_bytes as usize;
    u.is_power_of_two() && (MIN_UNIT_BYTES..=MAX_UNIT_BYTES).contains(&u)
}

/// Length of one entry of a read request: slab handle + unit index.
pub(crate) const READ_ENTRY_LEN: usize = SLAB_HANDLE_LEN + 4;
/// Fixed part of one entry of a write request: slab handle + unit index + crc (the unit
/// follows).
pub(crate) const WRITE_ENTRY_HEAD: usize = SLAB_HANDLE_LEN + 8;
/// Fixed part of one entry of a read response: crc (the unit follows).
pub(crate) const PAGE_ENTRY_HEAD: usize = 4;

/// What a server says about itself in answer to a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHello {
    pub version: u32,
    pub page_size: u32,
    pub slab_size_bytes: u64,
    pub capacity_bytes: u64,
    /// Random per server process: tells a restarted server from the one that lent the slabs.
    pub server_id: u64,
    /// Fresh per connection: makes the proof and the session key unique to it.
    pub nonce: [u8; NONCE_LEN],
    /// The server's proof that it knows the rack secret (see `Transcript::server_proof`).
    pub proof: [u8; PROOF_LEN],
}

/// Counters a server reports in answer to a stats request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerStats {
    pub capacity_bytes: u64,
    pub lent_bytes: u64,
    pub slab_size_bytes: u64,
    pub slabs: u64,
    pub clients: u64,
    pub connections: u64,
    pub pages_read: u64,
    pub pages_written: u64,
    pub errors: u64,
    /// Units discarded (`DiscardPages`) since the server started.
    pub units_discarded: u64,
}

impl ServerStats {
    pub(crate) const FIELDS: usize = 10;

    pub(crate) fn to_array(self) -> [u64; Self::FIELDS] {
        [
            self.capacity_bytes,
            self.lent_bytes,
            self.slab_size_bytes,
            self.slabs,
            self.clients,
            self.connections,
            self.pages_read,
            self.pages_written,
            self.errors,
            self.units_discarded,
        ]
    }

    pub(crate) fn from_array(a: [u64; Self::FIELDS]) -> ServerStats {
        ServerStats {
            capacity_bytes: a[0],
            lent_bytes: a[1],
            slab_size_bytes: a[2],
            slabs: a[3],
            clients: a[4],
            connections: a[5],
            pages_read: a[6],
            pages_written: a[7],
            errors: a[8],
            units_discarded: a[9],
        }
    }
}

/// A decoded request, borrowing page data from the frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Hello {
        version: u32,
        client_id: u64,
        nonce: [u8; NONCE_LEN],
    },
    Auth {
        proof: [u8; PROOF_LEN],
    },
    AllocSlab {
        unit_bytes: u32,
    },
    FreeSlab {
        slab: SlabId,
    },
    ReadPages(ReadEntries<'a>),
    WritePages(WriteEntries<'a>),
    /// Like `WritePages`, but each unit is stored only if no `WritePages` stored it since
    /// its slab was allocated: the copy of a moving chunk never overwrites a newer write.
    CopyPages(WriteEntries<'a>),
    /// Units of a slab of this server to copy (as `CopyPages`) into a slab of another one.
    PushPages(crate::push::PushEntries<'a>),
    /// Units whose contents the client no longer needs: each reads as zeros from now on,
    /// counts as written (no later copy stores into it), and its memory is given back to
    /// the server's host where the unit fills its own host pages.
    DiscardPages(ReadEntries<'a>),
    Stats,
}

/// A decoded response, borrowing page data from the frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response<'a> {
    Hello(ServerHello),
    Authenticated,
    SlabAllocated { slab: SlabId },
    SlabFreed,
    Pages(PageEntries<'a>),
    Written { count: u32 },
    Stats(ServerStats),
    Error { code: u16, message: &'a str },
}

pub(crate) fn read_u64(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn read_slab(b: &[u8], i: usize) -> SlabId {
    SlabId(read_u64(b, i), read_u64(b, i + 8))
}

pub(crate) fn read_array<const N: usize>(b: &[u8], i: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[i..i + N]);
    a
}

pub(crate) fn read_u32(b: &[u8], i: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[i..i + 4]);
    u32::from_le_bytes(a)
}

/// The entries of a read request; lengths were checked when decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadEntries<'a> {
    pub(crate) unit_bytes: u32,
    pub(crate) bytes: &'a [u8],
}

impl<'a> ReadEntries<'a> {
    /// Size of each unit asked for; every slab named must have it.
    pub fn unit_bytes(&self) -> u32 {
        self.unit_bytes
    }
    pub fn len(&self) -> usize {
        self.bytes.len() / READ_ENTRY_LEN
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = PageRef> + 'a {
        self.bytes
            .chunks_exact(READ_ENTRY_LEN)
            .map(|e| PageRef { slab: read_slab(e, 0), page: read_u32(e, SLAB_HANDLE_LEN) })
    }
}

/// One unit of a write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteEntry<'a> {
    pub at: PageRef,
    pub crc: u32,
    pub data: &'a [u8],
}

/// The entries of a write request; lengths were checked when decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteEntries<'a> {
    pub(crate) unit_bytes: u32,
    pub(crate) bytes: &'a [u8],
}

impl<'a> WriteEntries<'a> {
    /// Size of every unit in the batch; every slab named must have it.
    pub fn unit_bytes(&self) -> u32 {
        self.unit_bytes
    }
    fn entry_len(&self) -> usize {
        WRITE_ENTRY_HEAD + self.unit_bytes as usize
    }
    pub fn len(&self) -> usize {
        self.bytes.len() / self.entry_len()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = WriteEntry<'a>> + 'a {
        self.bytes.chunks_exact(self.entry_len()).map(|e| WriteEntry {
            at: PageRef { slab: read_slab(e, 0), page: read_u32(e, SLAB_HANDLE_LEN) },
            crc: read_u32(e, SLAB_HANDLE_LEN + 4),
            data: &e[WRITE_ENTRY_HEAD..],
        })
    }
}

/// One unit of a read response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageEntry<'a> {
    pub crc: u32,
    pub data: &'a [u8],
}

/// The units of a read response, in request order; lengths were checked when decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageEntries<'a> {
    pub(crate) unit_bytes: u32,
    pub(crate) bytes: &'a [u8],
}

impl<'a> PageEntries<'a> {
    /// Size of every unit in the answer.
    pub fn unit_bytes(&self) -> u32 {
        self.unit_bytes
    }
    fn entry_len(&self) -> usize {
        PAGE_ENTRY_HEAD + self.unit_bytes as usize
    }
    pub fn len(&self) -> usize {
        self.bytes.len() / self.entry_len()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = PageEntry<'a>> + 'a {
        self.bytes.chunks_exact(self.entry_len()).map(|e| PageEntry { crc: read_u32(e, 0), data: &e[4..] })
    }
}
