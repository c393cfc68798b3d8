//! RFC 6455, pure: byte slices in, byte slices and results out.
//!
//! Nothing in this room touches a socket or a clock, so every function here can be called
//! directly from a unit test, a property test or a fuzz target. Both roles live here: the
//! server role for the engine and the client role for the load generator.
//!
//! | RFC 6455 section                         | file            |
//! |------------------------------------------|-----------------|
//! | §4.1 client handshake, §4.2 server side  | `handshake.rs`  |
//! | §5.2 base framing, §5.3 masking          | `frame.rs`, `mask.rs` |
//! | §5.4 fragmentation, §5.5 control frames  | `decoder.rs`    |
//! | §5.6 data frames (UTF-8), §8.1           | `utf8.rs`       |
//! | §5.5.1 close, §7.4 status codes          | `close.rs`      |
//! | §10.4 size limits                        | `decoder.rs` (`max_message`) |

pub mod close;
pub mod decoder;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use close::CloseCode;
pub use decoder::{Decoder, Event, Flow};
pub use frame::{encode_frame, encode_header, FrameHeader};
pub use handshake::HandshakeError;

/// "All control frames MUST have a payload length of 125 bytes or less" (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest possible frame header: 2 bytes + 8 bytes extended length + 4 bytes mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// Which end of the connection we are. It decides which direction must be masked
/// (RFC 6455 §5.1: a client masks every frame it sends, a server never masks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We accepted the connection: incoming frames must be masked, outgoing frames are not.
    Server,
    /// We opened the connection: outgoing frames are masked, incoming frames must not be.
    Client,
}

/// Frame opcodes (RFC 6455 §5.2). Conversion from a wire nibble is fallible: an unknown value
/// is a protocol error, never a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpCode {
    /// %x0 continuation frame.
    Continuation = 0x0,
    /// %x1 text frame.
    Text = 0x1,
    /// %x2 binary frame.
    Binary = 0x2,
    /// %x8 connection close.
    Close = 0x8,
    /// %x9 ping.
    Ping = 0x9,
    /// %xA pong.
    Pong = 0xA,
}

impl OpCode {
    /// Decodes the low nibble of the first header byte. Reserved opcodes (%x3-7, %xB-F) are
    /// rejected: "If an unknown opcode is received, the receiving endpoint MUST _Fail the
    /// WebSocket Connection_" (§5.2).
    pub fn from_nibble(n: u8) -> Result<OpCode, ProtoError> {
        match n {
            0x0 => Ok(OpCode::Continuation),
            0x1 => Ok(OpCode::Text),
            0x2 => Ok(OpCode::Binary),
            0x8 => Ok(OpCode::Close),
            0x9 => Ok(OpCode::Ping),
            0xA => Ok(OpCode::Pong),
            _ => Err(ProtoError::ReservedOpcode),
        }
    }

    /// Control frames are those whose opcode has the high bit set (§5.5).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Everything that can be wrong with a stream of frames. Small and `Copy`: the connection code
/// has one path for all of them — send the close frame `close_code()` names, then close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// RSV1-3 set without a negotiated extension (§5.2).
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// Opcode %x3-7 or %xB-F (§5.2).
    #[error("reserved opcode")]
    ReservedOpcode,
    /// A client frame without a mask, or a server frame with one (§5.1).
    #[error("frame masking does not match the role")]
    BadMask,
    /// A control frame with a payload over 125 bytes (§5.5).
    #[error("control frame payload over 125 bytes")]
    ControlTooLong,
    /// A control frame with FIN clear (§5.5).
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A continuation frame with no message in progress (§5.4).
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new data frame while a fragmented message is still open (§5.4).
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// The 64-bit length with its most significant bit set (§5.2), or a length not in minimal
    /// form is accepted — the RFC only requires the MSB to be zero.
    #[error("payload length has its most significant bit set")]
    BadLength,
    /// A message (or a single frame) over the configured maximum size (§10.4).
    #[error("message over the maximum size")]
    MessageTooBig,
    /// Text payload that is not valid UTF-8 (§8.1), or a close reason that is not.
    #[error("invalid UTF-8 in a text message or close reason")]
    InvalidUtf8,
    /// A close payload of exactly one byte (§5.5.1).
    #[error("close payload of one byte")]
    BadClosePayload,
    /// A close code that must not appear on the wire (§7.4.1, §7.4.2).
    #[error("invalid close code")]
    BadCloseCode,
}

impl ProtoError {
    /// The status code of the close frame we must send before closing (RFC 6455 §7.4.1).
    pub fn close_code(self) -> CloseCode {
        match self {
            ProtoError::InvalidUtf8 => CloseCode::INVALID_PAYLOAD,
            ProtoError::MessageTooBig => CloseCode::TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}
