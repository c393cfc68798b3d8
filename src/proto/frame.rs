//! STUB — being written.
/// Parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader;
/// Stub.
pub fn encode_header() {}
/// Stub.
pub fn encode_frame() {}
