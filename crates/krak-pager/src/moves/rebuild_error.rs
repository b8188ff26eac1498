//! Why a lost fragment was not rebuilt: either there is no server for its replacement yet
//! (asked again each round, without using up the fragment's attempts), or the attempt
//! failed (counted; the fragment stays degraded after a few).

use std::net::SocketAddr;

use krak_api::ApiError;
use krak_client::ClientError;

use crate::error::MoveFailure;
use crate::remote::redundancy::Redundancy;
use crate::PagerError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum Rebuild {
    #[error(transparent)]
    NoSpare(NoSpare),
    #[error(transparent)]
    Failed(RebuildFailure),
}

/// No server can take a replacement now.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NoSpare {
    #[error("the controller has no server for a replacement: {0}")]
    ControllerFull(#[source] ApiError),
    #[error("the controller cannot be asked for a replacement: {0}")]
    ControllerUnreachable(#[source] ApiError),
    #[error(
        "no surviving server outside a chunk's stripe has room for a replacement ({servers} servers given, {lost} \
         lost, {scheme} needs {} per chunk)",
        scheme.width()
    )]
    NoSurvivor { servers: usize, lost: usize, scheme: Redundancy },
}

/// One attempt at a rebuild failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RebuildFailure {
    #[error("asking the controller for a replacement: {0}")]
    AskController(#[source] ApiError),
    #[error("the controller placed no server for the replacement")]
    NonePlaced,
    #[error("the controller's answer: {0}")]
    Answer(#[source] Box<PagerError>),
    #[error("the controller chose {addr}, which is lost for the region or already holds a fragment of chunk {chunk}")]
    ChoseTaken { addr: SocketAddr, chunk: usize },
    #[error("{server} could not lend a slab: {source}")]
    Lend { server: SocketAddr, source: ClientError },
    #[error("filling the replacement: {0}")]
    Fill(#[source] MoveFailure),
}

impl From<NoSpare> for Rebuild {
    fn from(e: NoSpare) -> Rebuild {
        Rebuild::NoSpare(e)
    }
}

impl From<RebuildFailure> for Rebuild {
    fn from(e: RebuildFailure) -> Rebuild {
        Rebuild::Failed(e)
    }
}
