//! STUB — being written.
/// Stub.
pub struct Decoder;
/// Stub.
pub enum Event {}
/// Stub.
pub enum Flow {}
