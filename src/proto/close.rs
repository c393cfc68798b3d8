//! Close frames (RFC 6455 §5.5.1) and status codes (§7.4). STUB — being written.

/// A close status code (RFC 6455 §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000 normal closure.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001 going away (server shutting down, drain).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002 protocol error.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003 unsupported data.
    pub const UNSUPPORTED: CloseCode = CloseCode(1003);
    /// 1007 invalid frame payload data (e.g. bad UTF-8).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008 policy violation (slow consumer, rate limit).
    pub const POLICY: CloseCode = CloseCode(1008);
    /// 1009 message too big.
    pub const TOO_BIG: CloseCode = CloseCode(1009);
    /// 1011 internal error.
    pub const INTERNAL: CloseCode = CloseCode(1011);
    /// 1012 service restart.
    pub const RESTART: CloseCode = CloseCode(1012);
}
