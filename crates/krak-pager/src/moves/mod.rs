//! Live moves and re-protection: fragments (whole chunks without redundancy) move to other
//! servers while the region is in use, lost fragments are rebuilt, and every redundant
//! region scrubs itself.

pub(crate) mod copy;
pub(crate) mod fragment;
pub(crate) mod queue;
pub(crate) mod rebuild_error;
pub(crate) mod reprotect;
