//! Pub/sub state: what a channel is, who is in it, and what it said.

pub mod auth;
pub mod conflate;
pub mod history;
pub mod presence;
pub mod rate;
pub mod sse;
pub mod wire;
