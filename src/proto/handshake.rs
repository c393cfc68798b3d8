//! STUB — being written.
/// Stub.
#[derive(Debug)]
pub enum HandshakeError {}
