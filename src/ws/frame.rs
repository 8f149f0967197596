//! Streaming RFC 6455 frame codec (sans-IO). CONTRACT STUB — to be implemented.
//!
//! The decoder is fed any chunking of the byte stream and yields frame headers
//! and payload *pieces*, never needing a whole frame in memory. Payload is
//! unmasked in place in the caller's buffer, so the relay can forward it from
//! that same buffer.

/// Which end of the connection the codec's owner is. A `Server` decodes masked
/// frames (and rejects unmasked ones); a `Client` decodes unmasked frames (and
/// rejects masked ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Longest possible header: 2 + 8 (64-bit length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;
/// Control frames carry at most 125 payload bytes (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

impl FrameHeader {
    /// Bytes this header takes on the wire (minimal length encoding).
    pub fn encoded_len(&self) -> usize {
        todo!()
    }
    /// Write the header (minimal length encoding) to the front of `out`
    /// (`out.len() >= self.encoded_len()`); returns the bytes written.
    pub fn encode(&self, _out: &mut [u8]) -> usize {
        todo!()
    }
}

/// A protocol violation, each mapping to the close code RFC 6455 §7.4.1 names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    // variants are the implementer's choice
    Todo,
}

impl Error {
    /// 1002 protocol error, 1007 invalid payload data (UTF-8), 1009 too big.
    pub fn close_code(&self) -> u16 {
        todo!()
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for Error {}

/// One decoded item; see [`Decoder::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Header of a data frame (Text, Binary or Continuation). Its payload
    /// follows as `Payload` events; none follow when `payload_len == 0`.
    DataHeader(FrameHeader),
    /// The first `len` bytes of the buffer passed to `decode` are payload of
    /// the current data frame, now unmasked in place. `frame_done`: this
    /// piece ends the frame. `message_done`: it ends the message (fin frame).
    Payload { len: usize, frame_done: bool, message_done: bool },
    /// A complete control frame. Its unmasked payload is the last
    /// `header.payload_len` bytes of the consumed region.
    Control(FrameHeader),
}

/// Streaming decoder. Holds only a few dozen bytes of state.
#[derive(Debug, Clone)]
pub struct Decoder {
    _todo: (),
}

impl Decoder {
    /// `max_message_len`: a data frame or message whose (cumulative) length
    /// exceeds it is rejected with 1009.
    pub fn new(_role: Role, _max_message_len: u64) -> Self {
        todo!()
    }

    /// Decode the next item from the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed (nothing consumed). A header, or a
    /// whole control frame (at most 139 bytes), is only decoded once it is
    /// complete in `buf`. `Ok(Some((event, consumed)))`: the caller drops
    /// `consumed` bytes from the front and calls again. Payload is unmasked in
    /// place; text payload is UTF-8 validated incrementally across pieces and
    /// fragments; close payloads are validated (code and UTF-8 reason).
    pub fn decode(&mut self, _buf: &mut [u8]) -> Result<Option<(Event, usize)>, Error> {
        todo!()
    }

    /// True while the decoder is inside a data frame's payload.
    pub fn in_frame(&self) -> bool {
        todo!()
    }

    /// True while inside a fragmented message (a non-fin data frame was seen).
    pub fn in_message(&self) -> bool {
        todo!()
    }
}

/// Parse a close frame's (already unmasked) payload: `None` for an empty
/// payload, else the code and the reason. Errors on invalid codes / UTF-8.
pub fn parse_close(_payload: &[u8]) -> Result<Option<(u16, &str)>, Error> {
    todo!()
}

/// Append a whole frame (header + payload, masked when `mask` is Some) to `out`.
pub fn encode_frame(
    _out: &mut Vec<u8>,
    _fin: bool,
    _opcode: OpCode,
    _mask: Option<[u8; 4]>,
    _payload: &[u8],
) {
    todo!()
}

/// Append a close frame with `code` and `reason` (truncated on a char
/// boundary to fit 125 bytes).
pub fn encode_close(_out: &mut Vec<u8>, _mask: Option<[u8; 4]>, _code: u16, _reason: &str) {
    todo!()
}
