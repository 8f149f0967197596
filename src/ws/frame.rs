//! Streaming RFC 6455 frame codec (sans-IO).
//!
//! The decoder is fed any chunking of the byte stream and yields frame headers
//! and payload *pieces*, never needing a whole frame in memory. Payload is
//! unmasked in place in the caller's buffer, so the relay can forward it from
//! that same buffer.
//!
//! A caller's read buffer must hold at least [`MAX_CONTROL_FRAME_LEN`] bytes:
//! headers and control frames are only decoded once complete, payload of data
//! frames goes out in pieces of whatever is there.
//!
//! Errors are sticky: once `decode` has failed, it returns the same error on
//! every later call, so a loop cannot resynchronise on garbage by mistake. The
//! caller answers with a close frame carrying [`Error::close_code`].

use super::mask::apply_mask;

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

    /// The opcode from the low nibble of a frame's first byte; `None` for the
    /// reserved values (RFC 6455 §5.2: 0x3-0x7 and 0xB-0xF).
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// The opcode's wire value (low nibble of the first header byte).
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }
}

/// Longest possible header: 2 + 8 (64-bit length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;
/// Control frames carry at most 125 payload bytes (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Longest whole control frame (a non-minimal length encoding is legal, so a
/// header can take 14 bytes even here). A read buffer must be at least this
/// long or a control frame could never be decoded.
pub const MAX_CONTROL_FRAME_LEN: usize = MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD;

/// Close codes of RFC 6455 §7.4.1 that this codec produces or callers need.
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;

const FIN_BIT: u8 = 0x80;
const RSV_BITS: u8 = 0x70;
const OPCODE_BITS: u8 = 0x0f;
const MASK_BIT: u8 = 0x80;
const LEN7_BITS: u8 = 0x7f;
const LEN7_U16: u8 = 126;
const LEN7_U64: u8 = 127;

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
        let len_bytes = match self.payload_len {
            0..=125 => 0,
            126..=0xffff => 2,
            _ => 8,
        };
        let mask_bytes = if self.mask.is_some() { 4 } else { 0 };
        2 + len_bytes + mask_bytes
    }

    /// Write the header (minimal length encoding) to the front of `out`
    /// (`out.len() >= self.encoded_len()`); returns the bytes written.
    ///
    /// # Panics
    /// If `out` is shorter than `self.encoded_len()` (a caller bug).
    pub fn encode(&self, out: &mut [u8]) -> usize {
        debug_assert!(
            self.payload_len >> 63 == 0,
            "RFC 6455 §5.2: top bit of a 64-bit length is 0"
        );
        let n = self.encoded_len();
        let out = &mut out[..n];
        out[0] = if self.fin { FIN_BIT } else { 0 } | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { MASK_BIT } else { 0 };
        let key_at = match self.payload_len {
            len @ 0..=125 => {
                out[1] = mask_bit | len as u8;
                2
            }
            len @ 126..=0xffff => {
                out[1] = mask_bit | LEN7_U16;
                out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            len => {
                out[1] = mask_bit | LEN7_U64;
                out[2..10].copy_from_slice(&len.to_be_bytes());
                10
            }
        };
        if let Some(key) = self.mask {
            out[key_at..key_at + 4].copy_from_slice(&key);
        }
        n
    }
}

/// A protocol violation, each mapping to the close code RFC 6455 §7.4.1 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// RSV1-3 set without a negotiated extension (we negotiate none). 1002.
    ReservedBits,
    /// Opcode nibble not defined by RFC 6455. 1002.
    UnknownOpCode(u8),
    /// Control frame with fin = 0 (§5.5: control frames are not fragmented). 1002.
    FragmentedControl,
    /// Control frame with more than 125 payload bytes. 1002.
    ControlTooLong(u64),
    /// 64-bit payload length with its most significant bit set (§5.2). 1002.
    LengthTopBit,
    /// A server received an unmasked frame (§5.1). 1002.
    UnmaskedFrame,
    /// A client received a masked frame (§5.1). 1002.
    MaskedFrame,
    /// Continuation frame with no fragmented message open. 1002.
    UnexpectedContinuation,
    /// Text or Binary frame while a fragmented message is still open. 1002.
    ExpectedContinuation,
    /// Close payload of exactly one byte (§5.5.1: a code takes two). 1002.
    CloseLenOne,
    /// Close code that may not be sent on the wire (§7.4). 1002.
    InvalidCloseCode(u16),
    /// Close reason is not UTF-8. 1007.
    InvalidCloseReason,
    /// Text message payload is not UTF-8. 1007.
    InvalidUtf8,
    /// Text message ended in the middle of a UTF-8 sequence. 1007.
    IncompleteUtf8,
    /// One data frame declares more payload than the limit. 1009.
    FrameTooBig { len: u64, max: u64 },
    /// The fragments of one message add up to more than the limit. 1009.
    MessageTooBig { len: u64, max: u64 },
}

/// Result of this module's fallible functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// 1002 protocol error, 1007 invalid payload data (UTF-8), 1009 too big.
    pub fn close_code(&self) -> u16 {
        match self {
            Error::InvalidCloseReason | Error::InvalidUtf8 | Error::IncompleteUtf8 => {
                CLOSE_INVALID_PAYLOAD
            }
            Error::FrameTooBig { .. } | Error::MessageTooBig { .. } => CLOSE_TOO_BIG,
            Error::ReservedBits
            | Error::UnknownOpCode(_)
            | Error::FragmentedControl
            | Error::ControlTooLong(_)
            | Error::LengthTopBit
            | Error::UnmaskedFrame
            | Error::MaskedFrame
            | Error::UnexpectedContinuation
            | Error::ExpectedContinuation
            | Error::CloseLenOne
            | Error::InvalidCloseCode(_) => CLOSE_PROTOCOL_ERROR,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::ReservedBits => {
                f.write_str("reserved bits RSV1-3 set but no extension was negotiated")
            }
            Error::UnknownOpCode(op) => write!(f, "unknown opcode {op:#x}"),
            Error::FragmentedControl => f.write_str(
                "control frame without the fin bit (control frames cannot be fragmented)",
            ),
            Error::ControlTooLong(len) => write!(
                f,
                "control frame payload of {len} bytes (at most 125 allowed)"
            ),
            Error::LengthTopBit => {
                f.write_str("64-bit payload length with its most significant bit set")
            }
            Error::UnmaskedFrame => f.write_str("unmasked frame from a client (clients must mask)"),
            Error::MaskedFrame => f.write_str("masked frame from a server (servers must not mask)"),
            Error::UnexpectedContinuation => {
                f.write_str("continuation frame without a fragmented message to continue")
            }
            Error::ExpectedContinuation => {
                f.write_str("new text/binary frame while a fragmented message is unfinished")
            }
            Error::CloseLenOne => {
                f.write_str("close frame payload of 1 byte (a close code takes 2)")
            }
            Error::InvalidCloseCode(code) => {
                write!(f, "close code {code} is not allowed on the wire")
            }
            Error::InvalidCloseReason => f.write_str("close reason is not valid UTF-8"),
            Error::InvalidUtf8 => f.write_str("text message is not valid UTF-8"),
            Error::IncompleteUtf8 => f.write_str("text message ends inside a UTF-8 sequence"),
            Error::FrameTooBig { len, max } => write!(
                f,
                "frame payload of {len} bytes exceeds the limit of {max} bytes"
            ),
            Error::MessageTooBig { len, max } => write!(
                f,
                "message of at least {len} bytes exceeds the limit of {max} bytes"
            ),
        }
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
    Payload {
        len: usize,
        frame_done: bool,
        message_done: bool,
    },
    /// A complete control frame. Its unmasked payload is the last
    /// `header.payload_len` bytes of the consumed region.
    Control(FrameHeader),
}

/// Incremental UTF-8 validation: the stream so far is valid except for an
/// incomplete code point at its end, kept here (at most 3 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Utf8Tail {
    bytes: [u8; 3],
    len: u8,
}

impl Utf8Tail {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Validate `data` as the next bytes of the stream.
    fn feed(&mut self, data: &[u8]) -> Result<()> {
        let mut data = data;
        if self.len > 0 {
            // Finish the pending code point first: it needs at most 4 - len
            // more bytes, and a 4-byte window from its lead byte settles it.
            let have = usize::from(self.len);
            let take = (4 - have).min(data.len());
            let mut cp = [0u8; 4];
            cp[..have].copy_from_slice(&self.bytes[..have]);
            cp[have..have + take].copy_from_slice(&data[..take]);
            let done = match std::str::from_utf8(&cp[..have + take]) {
                Ok(_) => have + take,
                // The pending code point completed (maybe more after it).
                Err(e) if e.valid_up_to() > 0 => e.valid_up_to(),
                // Still a valid but incomplete prefix: all of `data` was taken.
                Err(e) if e.error_len().is_none() && have + take <= 3 => {
                    self.bytes[..have + take].copy_from_slice(&cp[..have + take]);
                    self.len = (have + take) as u8;
                    return Ok(());
                }
                Err(_) => return Err(Error::InvalidUtf8),
            };
            self.len = 0;
            data = &data[done - have..];
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            // error_len() == None: the input ends inside a code point that may
            // still be completed by the next piece (at most 3 bytes).
            Err(e) if e.error_len().is_none() => {
                let rest = &data[e.valid_up_to()..];
                if rest.len() > self.bytes.len() {
                    return Err(Error::InvalidUtf8);
                }
                self.bytes[..rest.len()].copy_from_slice(rest);
                self.len = rest.len() as u8;
                Ok(())
            }
            Err(_) => Err(Error::InvalidUtf8),
        }
    }
}

/// Streaming decoder. Holds only a few dozen bytes of state.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_message_len: u64,
    /// Payload bytes of the current data frame not yet yielded; 0 between frames.
    remaining: u64,
    /// Declared payload of the current message so far (all its frames).
    message_len: u64,
    /// Mask key of the current frame, rotated so that `key[0]` applies to the
    /// next payload byte (then every piece is unmasked from offset 0).
    key: Option<[u8; 4]>,
    utf8: Utf8Tail,
    role: Role,
    frame_fin: bool,
    /// A non-fin data frame was seen and the message has not ended yet.
    in_message: bool,
    /// The current message is Text (validated as UTF-8).
    text: bool,
    failed: Option<Error>,
}

impl Decoder {
    /// `max_message_len`: a data frame or message whose (cumulative) length
    /// exceeds it is rejected with 1009.
    pub fn new(role: Role, max_message_len: u64) -> Self {
        Decoder {
            max_message_len,
            remaining: 0,
            message_len: 0,
            key: None,
            utf8: Utf8Tail::default(),
            role,
            frame_fin: false,
            in_message: false,
            text: false,
            failed: None,
        }
    }

    /// Decode the next item from the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed (nothing consumed). A header, or a
    /// whole control frame (at most 139 bytes), is only decoded once it is
    /// complete in `buf`. `Ok(Some((event, consumed)))`: the caller drops
    /// `consumed` bytes from the front and calls again. Payload is unmasked in
    /// place; text payload is UTF-8 validated incrementally across pieces and
    /// fragments; close payloads are validated (code and UTF-8 reason).
    ///
    /// Header rules are checked as soon as the bytes they depend on are in
    /// `buf`, in wire order, so the error for a given stream does not depend
    /// on how it was chunked.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Option<(Event, usize)>> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let r = if self.remaining > 0 {
            self.decode_payload(buf)
        } else {
            self.decode_frame_start(buf)
        };
        if let Err(e) = r {
            self.failed = Some(e);
        }
        r
    }

    /// True while the decoder is inside a data frame's payload.
    pub fn in_frame(&self) -> bool {
        self.remaining > 0
    }

    /// Payload bytes of the current data frame not yet yielded (0 between
    /// frames): a caller may read that many straight into its message
    /// buffer and pass them to [`Decoder::decode`] there.
    pub fn frame_remaining(&self) -> u64 {
        self.remaining
    }

    /// True while inside a fragmented message (a non-fin data frame was seen).
    /// It stays true until the payload of the message's final frame has been
    /// yielded.
    pub fn in_message(&self) -> bool {
        self.in_message
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn max_message_len(&self) -> u64 {
        self.max_message_len
    }

    /// The error this decoder failed with, if it has.
    pub fn error(&self) -> Option<Error> {
        self.failed
    }

    fn decode_payload(&mut self, buf: &mut [u8]) -> Result<Option<(Event, usize)>> {
        if buf.is_empty() {
            return Ok(None);
        }
        let n = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let piece = &mut buf[..n];
        if let Some(key) = &mut self.key {
            apply_mask(piece, *key, 0);
            key.rotate_left(n % 4);
        }
        if self.text {
            self.utf8.feed(piece)?;
        }
        self.remaining -= n as u64;
        let frame_done = self.remaining == 0;
        let message_done = frame_done && self.frame_fin;
        if message_done {
            self.end_message()?;
        }
        Ok(Some((
            Event::Payload {
                len: n,
                frame_done,
                message_done,
            },
            n,
        )))
    }

    fn decode_frame_start(&mut self, buf: &mut [u8]) -> Result<Option<(Event, usize)>> {
        let Some((header, header_len)) = self.parse_header(buf)? else {
            return Ok(None);
        };
        if header.opcode.is_control() {
            // parse_header bounded payload_len by MAX_CONTROL_PAYLOAD.
            let total = header_len + header.payload_len as usize;
            let Some(frame) = buf.get_mut(..total) else {
                return Ok(None);
            };
            let payload = &mut frame[header_len..];
            if let Some(key) = header.mask {
                apply_mask(payload, key, 0);
            }
            if header.opcode == OpCode::Close {
                parse_close(payload)?;
            }
            return Ok(Some((Event::Control(header), total)));
        }

        if header.opcode == OpCode::Continuation {
            self.message_len += header.payload_len; // bounded in parse_header
        } else {
            self.message_len = header.payload_len;
            self.text = header.opcode == OpCode::Text;
            self.utf8 = Utf8Tail::default();
        }
        if !header.fin {
            self.in_message = true;
        }
        if header.payload_len > 0 {
            self.remaining = header.payload_len;
            self.key = header.mask;
            self.frame_fin = header.fin;
        } else if header.fin {
            self.end_message()?;
        }
        Ok(Some((Event::DataHeader(header), header_len)))
    }

    fn end_message(&mut self) -> Result<()> {
        let complete = self.utf8.is_empty();
        self.in_message = false;
        self.text = false;
        self.message_len = 0;
        self.utf8 = Utf8Tail::default();
        if complete {
            Ok(())
        } else {
            Err(Error::IncompleteUtf8)
        }
    }

    /// Parse and check a header at the front of `buf`, without changing state.
    fn parse_header(&self, buf: &[u8]) -> Result<Option<(FrameHeader, usize)>> {
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        if b0 & RSV_BITS != 0 {
            return Err(Error::ReservedBits);
        }
        let op = b0 & OPCODE_BITS;
        let opcode = OpCode::from_u8(op).ok_or(Error::UnknownOpCode(op))?;
        let fin = b0 & FIN_BIT != 0;
        match opcode {
            _ if opcode.is_control() => {
                if !fin {
                    return Err(Error::FragmentedControl);
                }
            }
            OpCode::Continuation => {
                if !self.in_message {
                    return Err(Error::UnexpectedContinuation);
                }
            }
            _ => {
                if self.in_message {
                    return Err(Error::ExpectedContinuation);
                }
            }
        }

        let Some(&b1) = buf.get(1) else {
            return Ok(None);
        };
        let masked = b1 & MASK_BIT != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(Error::UnmaskedFrame),
            (Role::Client, true) => return Err(Error::MaskedFrame),
            _ => {}
        }
        // Non-minimal length encodings are accepted: §5.2 says the minimal
        // number of bytes "MUST" be used by senders but names no failure for
        // receivers, and rejecting them buys nothing.
        let (payload_len, len_end) = match b1 & LEN7_BITS {
            LEN7_U16 => {
                let Some(&[a, b]) = buf.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([a, b])), 4)
            }
            LEN7_U64 => {
                let Some(bytes) = buf.get(2..10) else {
                    return Ok(None);
                };
                let mut be = [0u8; 8];
                be.copy_from_slice(bytes);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(Error::LengthTopBit);
                }
                (len, 10)
            }
            len => (u64::from(len), 2),
        };

        if opcode.is_control() {
            if payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(Error::ControlTooLong(payload_len));
            }
        } else {
            let max = self.max_message_len;
            if payload_len > max {
                return Err(Error::FrameTooBig {
                    len: payload_len,
                    max,
                });
            }
            if opcode == OpCode::Continuation {
                match self.message_len.checked_add(payload_len) {
                    Some(total) if total <= max => {}
                    total => {
                        let len = total.unwrap_or(u64::MAX);
                        return Err(Error::MessageTooBig { len, max });
                    }
                }
            }
        }

        let (mask, header_len) = if masked {
            let Some(&[a, b, c, d]) = buf.get(len_end..len_end + 4) else {
                return Ok(None);
            };
            (Some([a, b, c, d]), len_end + 4)
        } else {
            (None, len_end)
        };
        Ok(Some((
            FrameHeader {
                fin,
                opcode,
                mask,
                payload_len,
            },
            header_len,
        )))
    }
}

/// May `code` appear in a close frame on the wire (RFC 6455 §7.4.1, and the
/// IANA registry for 1012-1014)? 1004 is reserved, 1005/1006/1015 are for
/// local reporting only, 1016-2999 are unassigned, 3000-4999 are for
/// libraries and applications.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parse a close frame's (already unmasked) payload: `None` for an empty
/// payload, else the code and the reason. Errors on invalid codes / UTF-8.
pub fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>> {
    match payload {
        [] => Ok(None),
        [_] => Err(Error::CloseLenOne),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(Error::InvalidCloseCode(code));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Error::InvalidCloseReason)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Append a whole frame (header + payload, masked when `mask` is Some) to `out`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let header = FrameHeader {
        fin,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let start = out.len();
    let header_len = header.encoded_len();
    out.reserve(header_len + payload.len());
    out.resize(start + header_len, 0);
    header.encode(&mut out[start..]);
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start + header_len..], key, 0);
    }
}

/// Append a close frame with `code` and `reason` (truncated on a char
/// boundary to fit 125 bytes).
pub fn encode_close(out: &mut Vec<u8>, mask: Option<[u8; 4]>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode_frame(out, true, OpCode::Close, mask, &payload[..2 + end]);
}

#[cfg(test)]
mod tests;
