//! Per-connection incremental reader (RFC 6455 §5.4 fragmentation, §5.5 control frames).
//!
//! The shard owns ONE read buffer. It reads socket bytes into it and hands them to
//! [`Decoder::feed`], which parses frames in place, unmasks payload in place, and calls back
//! with [`Event`]s. An unfragmented message (or control frame) whose payload lies wholly in the
//! buffer is handed out as a slice of that buffer: zero copies, no allocation. Only a message
//! whose bytes span reads or fragments is gathered in the decoder's one heap `Vec`, and that
//! allocation is dropped when the message is delivered, so an idle connection holds no heap.
//!
//! Contract for callers:
//! - `feed` returns how many bytes it consumed: all of them, unless the callback returned
//!   [`Flow::Stop`], in which case it stopped just after the frame that produced that event and
//!   the rest of `buf` is untouched (still masked); feed it again later.
//! - After a Close event the decoder is closed: further bytes are consumed and ignored.
//! - After an error the decoder is poisoned: every later `feed` returns the same error. The
//!   error's `close_code()` is what to send before closing.
//! - Text is validated as it arrives, so invalid UTF-8 fails (1007) at the read that brings
//!   it, before the frame or message is complete. Size limits fail (1009) from the header,
//!   before a byte of the payload is buffered.
//! - `max_message` bounds data messages only; control payloads are bounded at 125 by §5.5.

use super::close::{parse_close_payload, CloseCode};
use super::frame::FrameHeader;
use super::mask::{apply_mask, rotate_key};
use super::utf8::{self, Utf8Stream};
use super::{OpCode, ProtoError, Role, MAX_HEADER_LEN};

/// One complete thing received. Slices borrow the read buffer or the decoder, for the duration
/// of the callback only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A whole text message, already validated as UTF-8.
    Text(&'a [u8]),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A ping and its application data (to be echoed in a pong).
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// A close frame: `None` when it carried no status code, else the code and the reason.
    Close(Option<(CloseCode, &'a str)>),
}

/// What the event callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep decoding the buffer.
    Continue,
    /// Stop after this frame; `feed` returns the index just after it.
    Stop,
}

/// The frame whose payload is being received across reads. 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Frame {
    /// Payload bytes still to come (8).
    remaining: u64,
    /// Masking key, rotated after each piece so that index 0 applies to the next payload
    /// byte; this replaces a separate mask-offset field (5).
    mask: Option<[u8; 4]>,
    /// What the payload belongs to: Text or Binary (a continuation takes its message's kind),
    /// Ping, Pong or Close (1).
    kind: OpCode,
    /// FIN of this frame: a data frame with FIN completes its message (1).
    fin: bool,
    /// Declared length of a control frame, to find its payload at the tail of `message` (1).
    control_len: u8,
}

/// Where the reader stands between two reads.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Expecting a header; `len` bytes of it arrived at the end of the previous read.
    /// A partial header is at most 13 bytes: with 14 any header is complete.
    Header {
        spill: [u8; MAX_HEADER_LEN - 1],
        len: u8,
    },
    /// Inside a frame's payload.
    Payload(Frame),
    /// A Close was received; later bytes are ignored.
    Closed,
    /// The stream was invalid; the error is returned forever.
    Failed(ProtoError),
}

const NO_SPILL: Stage = Stage::Header {
    spill: [0; MAX_HEADER_LEN - 1],
    len: 0,
};

/// Per-connection reader state. Byte budget (64-bit targets), 56 in all:
///
/// | field         | bytes | why                                                          |
/// |---------------|-------|--------------------------------------------------------------|
/// | `message`     | 24    | the one heap buffer; `Vec::new()` (no heap) when idle         |
/// | `stage`       | 16    | header spill (13 + 1) or current frame (16); the enum tag     |
/// |               |       | lives in a niche of `Frame`, so it costs nothing              |
/// | `max_message` | 8     | the configured limit, checked against each header            |
/// | `utf8`        | 4     | carry of up to 3 bytes of a code point cut between pieces    |
/// | `open`        | 1     | kind of the fragmented message in progress, if any           |
/// | `role`        | 1     | decides which masking incoming frames must have              |
/// | padding       | 2     |                                                              |
#[derive(Debug)]
pub struct Decoder {
    /// Payload of a message whose frames span reads or fragments; temporarily also a split
    /// control frame's payload, appended at the tail and truncated after its event.
    message: Vec<u8>,
    stage: Stage,
    max_message: usize,
    utf8: Utf8Stream,
    /// `Some(Text | Binary)` between the first fragment (FIN clear) and the final one.
    open: Option<OpCode>,
    role: Role,
}

impl Decoder {
    /// A decoder for our side `role`, accepting data messages up to `max_message` bytes.
    pub fn new(role: Role, max_message: usize) -> Decoder {
        Decoder {
            message: Vec::new(),
            stage: NO_SPILL,
            max_message,
            utf8: Utf8Stream::default(),
            open: None,
            role,
        }
    }

    /// Feeds freshly read bytes, which are unmasked in place, and calls `on_event` for each
    /// complete event in order. Returns the bytes consumed: `buf.len()`, unless `on_event`
    /// returned [`Flow::Stop`], then the index just after that event's frame.
    pub fn feed<F: FnMut(Event<'_>) -> Flow>(
        &mut self,
        buf: &mut [u8],
        mut on_event: F,
    ) -> Result<usize, ProtoError> {
        if let Stage::Failed(e) = self.stage {
            return Err(e);
        }
        self.run(buf, &mut on_event).inspect_err(|&e| {
            self.stage = Stage::Failed(e);
            self.release();
        })
    }

    /// No partial header, no frame in progress and no open message (also true once closed or
    /// failed: nothing is half-received then either).
    pub fn is_idle(&self) -> bool {
        match self.stage {
            Stage::Header { len, .. } => len == 0 && self.open.is_none(),
            Stage::Payload(_) => false,
            Stage::Closed | Stage::Failed(_) => true,
        }
    }

    /// Waiting for the first byte of a frame header, with no message open: the next bytes
    /// are read as a new frame, and a final data frame is a whole message by itself.
    pub fn awaits_frame(&self) -> bool {
        matches!(self.stage, Stage::Header { len: 0, .. }) && self.open.is_none()
    }

    /// Heap held by this connection's reader: the capacity of the message buffer.
    pub fn heap_bytes(&self) -> usize {
        self.message.capacity()
    }

    /// A Close frame was received (and delivered as an event).
    pub fn is_closed(&self) -> bool {
        matches!(self.stage, Stage::Closed)
    }

    fn run<F: FnMut(Event<'_>) -> Flow>(
        &mut self,
        buf: &mut [u8],
        on_event: &mut F,
    ) -> Result<usize, ProtoError> {
        let mut pos = 0;
        loop {
            if let Some((used, flow)) = self.small_frame(&mut buf[pos..], on_event)? {
                pos += used;
                if flow == Flow::Stop {
                    return Ok(pos);
                }
                continue;
            }
            match self.stage {
                Stage::Closed => return Ok(buf.len()),
                Stage::Failed(e) => return Err(e),
                Stage::Header { .. } if pos == buf.len() => return Ok(pos),
                Stage::Header { spill, len } => {
                    let Some((header, used)) = self.next_header(&buf[pos..], spill, len)? else {
                        return Ok(buf.len());
                    };
                    pos += used;
                    let frame = self.accept(header)?;
                    let avail = (buf.len() - pos) as u64;
                    if frame.remaining > avail {
                        self.stage = Stage::Payload(frame);
                        continue;
                    }
                    // The whole payload is in this read: hand it out from `buf`.
                    let end = pos + frame.remaining as usize;
                    let payload = &mut buf[pos..end];
                    if let Some(key) = frame.mask {
                        apply_mask(payload, key, 0);
                    }
                    pos = end;
                    if self.complete_in_place(frame, payload, on_event)? == Flow::Stop {
                        return Ok(pos);
                    }
                }
                Stage::Payload(_) if pos == buf.len() => return Ok(pos),
                Stage::Payload(mut frame) => {
                    let take = frame.remaining.min((buf.len() - pos) as u64) as usize;
                    let piece = &mut buf[pos..pos + take];
                    if let Some(key) = frame.mask.as_mut() {
                        apply_mask(piece, *key, 0);
                        *key = rotate_key(*key, take);
                    }
                    // Validate before buffering: a bad byte fails at the read that brings it.
                    if frame.kind == OpCode::Text {
                        self.utf8.feed(piece)?;
                    }
                    self.message.extend_from_slice(piece);
                    pos += take;
                    frame.remaining -= take as u64;
                    if frame.remaining > 0 {
                        self.stage = Stage::Payload(frame);
                        return Ok(pos);
                    }
                    self.stage = NO_SPILL;
                    if self.complete_buffered(frame, on_event)? == Flow::Stop {
                        return Ok(pos);
                    }
                }
            }
        }
    }

    /// The fast path for what most traffic is: a whole, final text or binary frame with a
    /// 7-bit length, masked as our role requires, starting at `input[0]` while no header is
    /// spilled and no message is open. It checks exactly what the general path would for such
    /// a frame (RSV bits clear, FIN set, opcode 1 or 2, the mask bit, the size limit, UTF-8
    /// for text) and delivers the payload (unmasked in place). `None`: not such a frame, or
    /// not all of it is here; the general path then decides, including every error.
    #[inline(always)]
    fn small_frame<F: FnMut(Event<'_>) -> Flow>(
        &mut self,
        input: &mut [u8],
        on_event: &mut F,
    ) -> Result<Option<(usize, Flow)>, ProtoError> {
        let (Some(&b0), Some(&b1)) = (input.first(), input.get(1)) else {
            return Ok(None);
        };
        // 0x81 / 0x82: FIN, no RSV bits, text / binary; then the mask bit our peer must set.
        let len = usize::from(b1 & 0x7F);
        let server = self.role == Role::Server;
        let head = if server { 6 } else { 2 };
        let simple = (b0 == 0x81 || b0 == 0x82) && (b1 & 0x80 != 0) == server && len < 126;
        if !simple
            || !matches!(self.stage, Stage::Header { len: 0, .. })
            || self.open.is_some()
            || len > self.max_message
            || input.len() < head + len
        {
            return Ok(None);
        }
        let (header, rest) = input.split_at_mut(head);
        let payload = &mut rest[..len];
        if server {
            apply_mask(payload, [header[2], header[3], header[4], header[5]], 0);
        }
        let is_text = b0 == 0x81;
        if is_text {
            utf8::validate(payload)?;
        }
        Ok(Some((head + len, on_event(data_event(is_text, payload)))))
    }

    /// Parses the next header from the spilled bytes plus `input`. Returns the header and how
    /// many bytes of `input` it used, or `None` after spilling all of `input`.
    fn next_header(
        &mut self,
        input: &[u8],
        spill: [u8; MAX_HEADER_LEN - 1],
        len: u8,
    ) -> Result<Option<(FrameHeader, usize)>, ProtoError> {
        let have = usize::from(len);
        if have == 0 {
            // Common case: the header starts in this read; parse it where it lies.
            if let Some(found) = FrameHeader::parse(input)? {
                return Ok(Some(found));
            }
            self.spill(input);
            return Ok(None);
        }
        let mut joined = [0u8; MAX_HEADER_LEN];
        joined[..have].copy_from_slice(&spill[..have]);
        let take = (MAX_HEADER_LEN - have).min(input.len());
        joined[have..have + take].copy_from_slice(&input[..take]);
        match FrameHeader::parse(&joined[..have + take])? {
            // The spilled bytes alone were not a header, so it ends inside `input`: n > have.
            Some((header, n)) => {
                self.stage = NO_SPILL;
                Ok(Some((header, n - have)))
            }
            None => {
                self.spill(&joined[..have + take]);
                Ok(None)
            }
        }
    }

    /// Keeps an incomplete header for the next read. `FrameHeader::parse` returned "need
    /// more", so `bytes` is shorter than the header it starts (at most 13 bytes).
    fn spill(&mut self, bytes: &[u8]) {
        let mut spill = [0u8; MAX_HEADER_LEN - 1];
        let n = bytes.len().min(spill.len());
        spill[..n].copy_from_slice(&bytes[..n]);
        self.stage = Stage::Header {
            spill,
            len: n as u8,
        };
    }

    /// The checks that depend on connection state, then the frame to receive.
    fn accept(&mut self, h: FrameHeader) -> Result<Frame, ProtoError> {
        // "The server MUST close the connection upon receiving a frame that is not masked ...
        // A client MUST close a connection if it detects a masked frame" (§5.1).
        let mask_ok = match self.role {
            Role::Server => h.mask.is_some(),
            Role::Client => h.mask.is_none(),
        };
        if !mask_ok {
            return Err(ProtoError::BadMask);
        }
        let kind = match h.opcode {
            // A continuation belongs to the open message; there must be one (§5.4).
            OpCode::Continuation => self.open.ok_or(ProtoError::UnexpectedContinuation)?,
            // "fragments of one message MUST NOT be interleaved between the fragments of
            // another message" (§5.4); control frames may be (handled below).
            OpCode::Text | OpCode::Binary if self.open.is_some() => {
                return Err(ProtoError::ExpectedContinuation)
            }
            op => op,
        };
        if !kind.is_control() {
            // Checked from the header, before buffering: the fragments so far plus this frame.
            let room = (self.max_message as u64).saturating_sub(self.message.len() as u64);
            if h.payload_len > room {
                return Err(ProtoError::MessageTooBig);
            }
            if !h.fin {
                self.open = Some(kind);
            }
        }
        Ok(Frame {
            remaining: h.payload_len,
            mask: h.mask,
            kind,
            fin: h.fin,
            // Control lengths were checked <= 125 by the parser.
            control_len: if kind.is_control() {
                h.payload_len as u8
            } else {
                0
            },
        })
    }

    /// A frame whose whole payload is in the read buffer.
    fn complete_in_place<F: FnMut(Event<'_>) -> Flow>(
        &mut self,
        frame: Frame,
        payload: &[u8],
        on_event: &mut F,
    ) -> Result<Flow, ProtoError> {
        let is_text = frame.kind == OpCode::Text;
        match frame.kind {
            OpCode::Ping => Ok(on_event(Event::Ping(payload))),
            OpCode::Pong => Ok(on_event(Event::Pong(payload))),
            OpCode::Close => self.close(payload, on_event),
            _ if frame.fin && self.message.is_empty() => {
                // The message is this payload alone (earlier fragments, if any, were empty, so
                // nothing is carried): zero copy, and text takes the whole-slice fast path.
                if is_text {
                    utf8::validate(payload)?;
                }
                self.open = None;
                Ok(on_event(data_event(is_text, payload)))
            }
            _ => {
                if is_text {
                    self.utf8.feed(payload)?;
                }
                self.message.extend_from_slice(payload);
                self.complete_buffered(frame, on_event)
            }
        }
    }

    /// A frame whose payload has been gathered in `message` (a control frame's at its tail).
    fn complete_buffered<F: FnMut(Event<'_>) -> Flow>(
        &mut self,
        frame: Frame,
        on_event: &mut F,
    ) -> Result<Flow, ProtoError> {
        let is_text = frame.kind == OpCode::Text;
        if frame.kind.is_control() {
            let start = self.message.len() - usize::from(frame.control_len);
            if frame.kind == OpCode::Close {
                let payload = std::mem::take(&mut self.message);
                return self.close(&payload[start..], on_event);
            }
            let payload = &self.message[start..];
            let flow = on_event(if frame.kind == OpCode::Ping {
                Event::Ping(payload)
            } else {
                Event::Pong(payload)
            });
            self.message.truncate(start);
            if self.message.is_empty() {
                self.message = Vec::new();
            }
            return Ok(flow);
        }
        if !frame.fin {
            return Ok(Flow::Continue);
        }
        if is_text {
            self.utf8.finish()?;
        }
        let flow = on_event(data_event(is_text, &self.message));
        // The message is delivered and nothing else is buffered: give the memory back.
        self.message = Vec::new();
        self.open = None;
        Ok(flow)
    }

    /// A Close frame: validate its payload (§5.5.1), deliver it, and stop reading.
    fn close<F: FnMut(Event<'_>) -> Flow>(
        &mut self,
        payload: &[u8],
        on_event: &mut F,
    ) -> Result<Flow, ProtoError> {
        let parsed = parse_close_payload(payload)?;
        self.stage = Stage::Closed;
        self.release();
        Ok(on_event(Event::Close(parsed)))
    }

    /// Drops everything a message in progress holds.
    fn release(&mut self) {
        self.message = Vec::new();
        self.open = None;
        self.utf8 = Utf8Stream::default();
    }
}

fn data_event(is_text: bool, payload: &[u8]) -> Event<'_> {
    if is_text {
        Event::Text(payload)
    } else {
        Event::Binary(payload)
    }
}

#[cfg(test)]
mod tests;
