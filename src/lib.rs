//! Starling: a sharded, per-core WebSocket connection engine on raw `mio`.
//! (Crate docs: architecture map — being written.)
#![deny(missing_docs)]

pub mod config;
pub mod metrics;
pub mod proto;
pub mod shard;
pub mod sys;
pub mod timer;
