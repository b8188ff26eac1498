//! A program's far-memory arena as `krak run` sets it up.
//!
//! - [`contract`]: the `KRAK_RUN_*` variables by which `krak run` configures the library it
//!   preloads into the program and the pager process, read and written by one type.
//! - [`wire`]: the messages of the arena socket (`SOCK_SEQPACKET`, fds by `SCM_RIGHTS`).
//! - [`program`]: the program's end, which maps the arena over a memfd, registers it with a
//!   userfaultfd and hands both to the pager process.
//! - [`host`]: the pager process's end, which serves each program's arena as a `FarMemory`
//!   region until the program hangs up, and changes an arena's budget when asked.
//! - [`budget`]: `krak budget pid:N`'s end: the program's pager socket, found in its
//!   environment, asked to change the arena's local budget.
//!
//! The layout and the rules of the socket are in `docs/design.md` ("Unmodified programs")
//! and `docs/protocol.md` ("The arena socket").

pub mod budget;
pub mod contract;
pub mod host;
pub mod program;
pub mod wire;
