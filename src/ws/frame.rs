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
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const BIG: u64 = 1 << 30;

    /// A whole decoded frame: header and (unmasked) payload.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Item {
        Data(FrameHeader, Vec<u8>),
        Control(FrameHeader, Vec<u8>),
    }

    /// Small deterministic PRNG (xorshift64*), so tests need no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Feed `stream` to `dec` the way a real loop does: a read buffer of `cap`
    /// bytes keeps the unconsumed tail, and each "read" appends the next
    /// `chunk()` bytes. Checks the event invariants on the way.
    fn run_loop(
        dec: &mut Decoder,
        stream: &[u8],
        cap: usize,
        mut chunk: impl FnMut() -> usize,
    ) -> (Vec<Item>, Result<()>) {
        assert!(cap >= MAX_CONTROL_FRAME_LEN);
        let mut buf = vec![0u8; cap];
        let (mut filled, mut pos) = (0, 0);
        let mut items = Vec::new();
        let mut cur: Option<(FrameHeader, Vec<u8>)> = None;
        loop {
            let mut start = 0;
            loop {
                let (ev, n) = match dec.decode(&mut buf[start..filled]) {
                    Err(e) => return (items, Err(e)),
                    Ok(None) => break,
                    Ok(Some(x)) => x,
                };
                assert!(
                    n > 0 && n <= filled - start,
                    "consumed {n} of {}",
                    filled - start
                );
                match ev {
                    Event::DataHeader(h) => {
                        assert!(cur.is_none(), "header inside a frame");
                        assert!(!h.opcode.is_control());
                        if h.payload_len == 0 {
                            items.push(Item::Data(h, Vec::new()));
                        } else {
                            assert!(dec.in_frame());
                            cur = Some((h, Vec::new()));
                        }
                    }
                    Event::Payload {
                        len,
                        frame_done,
                        message_done,
                    } => {
                        assert_eq!(len, n);
                        let (h, p) = cur.as_mut().expect("payload outside a frame");
                        p.extend_from_slice(&buf[start..start + n]);
                        assert!(p.len() as u64 <= h.payload_len);
                        assert_eq!(frame_done, p.len() as u64 == h.payload_len);
                        assert_eq!(message_done, frame_done && h.fin);
                        assert_eq!(dec.in_frame(), !frame_done);
                        if frame_done {
                            let (h, p) = cur.take().expect("frame");
                            items.push(Item::Data(h, p));
                        }
                    }
                    Event::Control(h) => {
                        assert!(cur.is_none() && h.opcode.is_control());
                        let p = &buf[start + n - h.payload_len as usize..start + n];
                        items.push(Item::Control(h, p.to_vec()));
                    }
                }
                start += n;
            }
            buf.copy_within(start..filled, 0);
            filled -= start;
            if pos == stream.len() {
                return (items, Ok(()));
            }
            assert!(filled < cap, "decoder stuck on a full buffer");
            let n = chunk().clamp(1, cap - filled).min(stream.len() - pos);
            buf[filled..filled + n].copy_from_slice(&stream[pos..pos + n]);
            filled += n;
            pos += n;
        }
    }

    fn decode_all(role: Role, max: u64, stream: &[u8]) -> (Vec<Item>, Result<()>) {
        let cap = stream.len().max(MAX_CONTROL_FRAME_LEN);
        run_loop(&mut Decoder::new(role, max), stream, cap, || usize::MAX)
    }

    /// Decode whole, in one-byte reads, and split at every point; all must
    /// agree. Returns the items and outcome.
    fn decode_every_way(role: Role, max: u64, stream: &[u8]) -> (Vec<Item>, Result<()>) {
        let whole = decode_all(role, max, stream);
        let cap = stream.len().max(MAX_CONTROL_FRAME_LEN);
        let bytes = run_loop(&mut Decoder::new(role, max), stream, cap, || 1);
        assert_eq!(bytes, whole, "one-byte reads differ from whole");
        for split in 1..stream.len() {
            let mut first = true;
            let two = run_loop(&mut Decoder::new(role, max), stream, cap, || {
                if std::mem::replace(&mut first, false) {
                    split
                } else {
                    usize::MAX
                }
            });
            assert_eq!(two, whole, "split at {split} differs from whole");
        }
        whole
    }

    fn expect_err(role: Role, max: u64, stream: &[u8]) -> Error {
        match decode_every_way(role, max, stream) {
            (_, Err(e)) => e,
            (items, Ok(())) => panic!("accepted {stream:02x?}: {items:?}"),
        }
    }

    fn frame(fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, fin, opcode, mask, payload);
        out
    }

    fn data(fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) -> Item {
        let h = FrameHeader {
            fin,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        Item::Data(h, payload.to_vec())
    }

    fn control(opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) -> Item {
        let h = FrameHeader {
            fin: true,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        Item::Control(h, payload.to_vec())
    }

    fn key_for(role: Role) -> Option<[u8; 4]> {
        match role {
            Role::Server => Some(KEY),
            Role::Client => None,
        }
    }

    /// Valid UTF-8 of exactly `len` bytes with 1- to 4-byte characters.
    fn text_payload(len: usize) -> Vec<u8> {
        let mut s = String::new();
        let chars = ['a', 'é', '€', '😀', 'z', 'ж'];
        let mut i = 0;
        while s.len() < len {
            let c = chars[i % chars.len()];
            if s.len() + c.len_utf8() <= len {
                s.push(c);
            } else {
                s.push('.');
            }
            i += 1;
        }
        s.into_bytes()
    }

    fn binary_payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 + (i >> 8)) as u8).collect()
    }

    // ---- RFC 6455 §5.7 examples, byte for byte ----

    const HELLO: &[u8] = b"Hello";
    const HELLO_UNMASKED: [u8; 7] = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    const HELLO_MASKED: [u8; 11] = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];

    #[test]
    fn rfc_single_frame_unmasked_text() {
        assert_eq!(frame(true, OpCode::Text, None, HELLO), HELLO_UNMASKED);
        let (items, r) = decode_every_way(Role::Client, BIG, &HELLO_UNMASKED);
        r.unwrap();
        assert_eq!(items, [data(true, OpCode::Text, None, HELLO)]);
    }

    #[test]
    fn rfc_single_frame_masked_text() {
        assert_eq!(frame(true, OpCode::Text, Some(KEY), HELLO), HELLO_MASKED);
        let (items, r) = decode_every_way(Role::Server, BIG, &HELLO_MASKED);
        r.unwrap();
        assert_eq!(items, [data(true, OpCode::Text, Some(KEY), HELLO)]);
    }

    #[test]
    fn rfc_fragmented_unmasked_text() {
        let wire = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        let mut enc = frame(false, OpCode::Text, None, b"Hel");
        enc.extend(frame(true, OpCode::Continuation, None, b"lo"));
        assert_eq!(enc, wire);
        let (items, r) = decode_every_way(Role::Client, BIG, &wire);
        r.unwrap();
        assert_eq!(
            items,
            [
                data(false, OpCode::Text, None, b"Hel"),
                data(true, OpCode::Continuation, None, b"lo")
            ]
        );
    }

    #[test]
    fn rfc_unmasked_ping_and_masked_pong() {
        let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(frame(true, OpCode::Ping, None, HELLO), ping);
        let (items, r) = decode_every_way(Role::Client, BIG, &ping);
        r.unwrap();
        assert_eq!(items, [control(OpCode::Ping, None, HELLO)]);

        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(frame(true, OpCode::Pong, Some(KEY), HELLO), pong);
        let (items, r) = decode_every_way(Role::Server, BIG, &pong);
        r.unwrap();
        assert_eq!(items, [control(OpCode::Pong, Some(KEY), HELLO)]);
    }

    #[test]
    fn rfc_256_and_65536_byte_binary_headers() {
        for (len, head) in [
            (256usize, &[0x82u8, 0x7e, 0x01, 0x00][..]),
            (
                65536,
                &[0x82, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00][..],
            ),
        ] {
            let payload = binary_payload(len);
            let wire = frame(true, OpCode::Binary, None, &payload);
            assert_eq!(&wire[..head.len()], head);
            assert_eq!(&wire[head.len()..], &payload[..]);
            let h = FrameHeader {
                fin: true,
                opcode: OpCode::Binary,
                mask: None,
                payload_len: len as u64,
            };
            assert_eq!(h.encoded_len(), head.len());
            let mut out = [0u8; MAX_HEADER_LEN];
            assert_eq!(h.encode(&mut out), head.len());
            assert_eq!(&out[..head.len()], head);
            let mut dec = Decoder::new(Role::Client, BIG);
            let mut buf = wire.clone();
            assert_eq!(
                dec.decode(&mut buf).unwrap(),
                Some((Event::DataHeader(h), head.len()))
            );
            let (items, r) = decode_all(Role::Client, BIG, &wire);
            r.unwrap();
            assert_eq!(items, [data(true, OpCode::Binary, None, &payload)]);
        }
    }

    #[test]
    fn header_encoding_lengths() {
        for (len, unmasked) in [
            (0, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (1 << 62, 10),
        ] {
            for mask in [None, Some(KEY)] {
                let h = FrameHeader {
                    fin: false,
                    opcode: OpCode::Binary,
                    mask,
                    payload_len: len,
                };
                let want = unmasked + if mask.is_some() { 4 } else { 0 };
                assert_eq!(h.encoded_len(), want, "len {len}");
                let mut out = [0xeeu8; MAX_HEADER_LEN + 1];
                assert_eq!(h.encode(&mut out), want);
                assert_eq!(out[want], 0xee, "wrote past the header");
                // The header alone decodes back to itself.
                let role = if mask.is_some() {
                    Role::Server
                } else {
                    Role::Client
                };
                let mut dec = Decoder::new(role, u64::MAX);
                let got = dec.decode(&mut out[..want]).unwrap();
                assert_eq!(got, Some((Event::DataHeader(h), want)));
            }
        }
    }

    // ---- round trips at length boundaries ----

    const LENGTHS: [usize; 8] = [0, 1, 125, 126, 127, 65535, 65536, 1 << 20];

    #[test]
    fn round_trip_small_lengths_every_split() {
        for role in [Role::Server, Role::Client] {
            for &len in LENGTHS.iter().filter(|&&l| l <= 127) {
                for opcode in [OpCode::Text, OpCode::Binary] {
                    let payload = if opcode == OpCode::Text {
                        text_payload(len)
                    } else {
                        binary_payload(len)
                    };
                    let key = key_for(role);
                    let wire = frame(true, opcode, key, &payload);
                    let (items, r) = decode_every_way(role, BIG, &wire);
                    r.unwrap();
                    assert_eq!(items, [data(true, opcode, key, &payload)], "{role:?} {len}");

                    // The same payload as a 3-fragment message with a ping in between.
                    let (a, b) = payload.split_at(len / 3);
                    let (b, c) = b.split_at(b.len() / 2);
                    let mut wire = frame(false, opcode, key, a);
                    wire.extend(frame(true, OpCode::Ping, key, b"p"));
                    wire.extend(frame(false, OpCode::Continuation, key, b));
                    wire.extend(frame(true, OpCode::Continuation, key, c));
                    let (items, r) = decode_every_way(role, BIG, &wire);
                    r.unwrap();
                    assert_eq!(
                        items,
                        [
                            data(false, opcode, key, a),
                            control(OpCode::Ping, key, b"p"),
                            data(false, OpCode::Continuation, key, b),
                            data(true, OpCode::Continuation, key, c),
                        ]
                    );
                }
            }
        }
    }

    #[test]
    fn round_trip_big_lengths_random_and_byte_reads() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        for role in [Role::Server, Role::Client] {
            for &len in LENGTHS.iter().filter(|&&l| l > 127) {
                for opcode in [OpCode::Text, OpCode::Binary] {
                    let payload = if opcode == OpCode::Text {
                        text_payload(len)
                    } else {
                        binary_payload(len)
                    };
                    let key = key_for(role);
                    // Two frames back to back, so the second header is found
                    // after a piece boundary too.
                    let mut wire = frame(true, opcode, key, &payload);
                    wire.extend(frame(true, OpCode::Binary, key, b"next"));
                    let want = [
                        data(true, opcode, key, &payload),
                        data(true, OpCode::Binary, key, b"next"),
                    ];
                    for cap in [65536, MAX_CONTROL_FRAME_LEN, 4096 + 3] {
                        let mut dec = Decoder::new(role, BIG);
                        let r = run_loop(&mut dec, &wire, cap, || rng.below(9000) as usize + 1);
                        assert_eq!(r, (want.to_vec(), Ok(())), "{role:?} {len} cap {cap}");
                        let mut dec = Decoder::new(role, BIG);
                        let r = run_loop(&mut dec, &wire, cap, || rng.below(8) as usize + 1);
                        assert_eq!(r, (want.to_vec(), Ok(())), "{role:?} {len} cap {cap}");
                    }
                    let r = run_loop(&mut Decoder::new(role, BIG), &wire, 65536, || 1);
                    assert_eq!(r, (want.to_vec(), Ok(())), "{role:?} {len} one-byte reads");
                }
            }
        }
    }

    #[test]
    fn non_minimal_lengths_accepted() {
        // "Hello" with its length in 16 and in 64 bits, data and control.
        for opcode in [0x82u8, 0x89] {
            let mut w16 = vec![opcode, 0x80 | 126, 0, 5];
            let mut w64 = vec![opcode, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5];
            for w in [&mut w16, &mut w64] {
                w.extend(KEY);
                w.extend(&HELLO_MASKED[6..]);
                let (items, r) = decode_every_way(Role::Server, BIG, w);
                r.unwrap();
                let op = OpCode::from_u8(opcode & 0xf).unwrap();
                let want = if op.is_control() {
                    control(op, Some(KEY), HELLO)
                } else {
                    data(true, op, Some(KEY), HELLO)
                };
                assert_eq!(items, [want]);
            }
        }
        // Longest legal control frame fits MAX_CONTROL_FRAME_LEN exactly.
        let mut w = vec![0x89, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 125];
        w.extend(KEY);
        w.extend([0u8; 125]);
        assert_eq!(w.len(), MAX_CONTROL_FRAME_LEN);
        let mut dec = Decoder::new(Role::Server, BIG);
        assert!(dec
            .decode(&mut w[..MAX_CONTROL_FRAME_LEN - 1])
            .unwrap()
            .is_none());
        let (ev, n) = dec.decode(&mut w).unwrap().unwrap();
        assert!(matches!(ev, Event::Control(_)));
        assert_eq!(n, MAX_CONTROL_FRAME_LEN);
    }

    #[test]
    fn zero_length_frames_yield_no_payload_events() {
        let mut wire = frame(false, OpCode::Binary, None, b"");
        wire.extend(frame(false, OpCode::Continuation, None, b""));
        wire.extend(frame(true, OpCode::Continuation, None, b""));
        wire.extend(frame(true, OpCode::Text, None, b""));
        let mut dec = Decoder::new(Role::Client, BIG);
        let mut pos = 0;
        let mut events = Vec::new();
        while let Some((ev, n)) = dec.decode(&mut wire[pos..]).unwrap() {
            events.push((ev, dec.in_frame(), dec.in_message()));
            pos += n;
        }
        assert_eq!(pos, wire.len());
        let h = |fin, opcode| FrameHeader {
            fin,
            opcode,
            mask: None,
            payload_len: 0,
        };
        assert_eq!(
            events,
            [
                (Event::DataHeader(h(false, OpCode::Binary)), false, true),
                (
                    Event::DataHeader(h(false, OpCode::Continuation)),
                    false,
                    true
                ),
                (
                    Event::DataHeader(h(true, OpCode::Continuation)),
                    false,
                    false
                ),
                (Event::DataHeader(h(true, OpCode::Text)), false, false),
            ]
        );
    }

    #[test]
    fn in_frame_and_in_message_track_state() {
        let mut wire = frame(false, OpCode::Text, None, b"ab");
        wire.extend(frame(true, OpCode::Continuation, None, b"cd"));
        let mut dec = Decoder::new(Role::Client, BIG);
        assert!(!dec.in_frame() && !dec.in_message());
        let (_, n) = dec.decode(&mut wire).unwrap().unwrap();
        assert!(dec.in_frame() && dec.in_message());
        let mut pos = n;
        let (ev, n) = dec.decode(&mut wire[pos..pos + 1]).unwrap().unwrap();
        assert_eq!(
            ev,
            Event::Payload {
                len: 1,
                frame_done: false,
                message_done: false
            }
        );
        pos += n;
        let (ev, n) = dec.decode(&mut wire[pos..]).unwrap().unwrap();
        assert_eq!(
            ev,
            Event::Payload {
                len: 1,
                frame_done: true,
                message_done: false
            }
        );
        assert!(!dec.in_frame() && dec.in_message());
        pos += n;
        let (_, n) = dec.decode(&mut wire[pos..]).unwrap().unwrap();
        assert!(dec.in_frame() && dec.in_message());
        pos += n;
        // An empty buffer inside a frame needs more bytes.
        assert_eq!(dec.decode(&mut []).unwrap(), None);
        let (ev, _) = dec.decode(&mut wire[pos..]).unwrap().unwrap();
        assert_eq!(
            ev,
            Event::Payload {
                len: 2,
                frame_done: true,
                message_done: true
            }
        );
        assert!(!dec.in_frame() && !dec.in_message());
    }

    // ---- rejections ----

    /// A masked (server-role) frame from raw first bytes, length and payload.
    fn raw(b0: u8, len7: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut w = vec![b0, 0x80 | len7];
        w.extend(ext);
        w.extend(KEY);
        let start = w.len();
        w.extend(payload);
        apply_mask(&mut w[start..], KEY, 0);
        w
    }

    #[test]
    fn rejects_reserved_bits() {
        for rsv in [0x40, 0x20, 0x10, 0x70] {
            let e = expect_err(Role::Server, BIG, &raw(0x82 | rsv, 1, &[], b"x"));
            assert_eq!((e, e.close_code()), (Error::ReservedBits, 1002));
        }
    }

    #[test]
    fn rejects_unknown_opcodes() {
        for op in (0x3..=0x7).chain(0xb..=0xf) {
            let e = expect_err(Role::Server, BIG, &raw(0x80 | op, 0, &[], b""));
            assert_eq!((e, e.close_code()), (Error::UnknownOpCode(op), 1002));
        }
    }

    #[test]
    fn rejects_long_or_fragmented_control_frames() {
        for op in [0x8u8, 0x9, 0xa] {
            let e = expect_err(
                Role::Server,
                BIG,
                &raw(0x80 | op, 126, &[0, 126], &[0; 126]),
            );
            assert_eq!((e, e.close_code()), (Error::ControlTooLong(126), 1002));
            let e = expect_err(
                Role::Server,
                BIG,
                &raw(0x80 | op, 127, &[0, 0, 0, 1, 0, 0, 0, 0], &[]),
            );
            assert_eq!(e, Error::ControlTooLong(1 << 32));
            let e = expect_err(Role::Server, BIG, &raw(op, 0, &[], b""));
            assert_eq!((e, e.close_code()), (Error::FragmentedControl, 1002));
        }
        // 125 is fine.
        let (items, r) = decode_all(Role::Server, BIG, &raw(0x89, 125, &[], &[7; 125]));
        r.unwrap();
        assert_eq!(items, [control(OpCode::Ping, Some(KEY), &[7; 125])]);
    }

    #[test]
    fn rejects_64_bit_length_with_top_bit() {
        let e = expect_err(
            Role::Server,
            u64::MAX,
            &raw(0x82, 127, &[0x80, 0, 0, 0, 0, 0, 0, 0], &[]),
        );
        assert_eq!((e, e.close_code()), (Error::LengthTopBit, 1002));
        let e = expect_err(
            Role::Client,
            u64::MAX,
            &[0x82, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        );
        assert_eq!(e, Error::LengthTopBit);
    }

    #[test]
    fn rejects_wrong_masking_for_role() {
        let e = expect_err(Role::Server, BIG, &HELLO_UNMASKED);
        assert_eq!((e, e.close_code()), (Error::UnmaskedFrame, 1002));
        let e = expect_err(Role::Client, BIG, &HELLO_MASKED);
        assert_eq!((e, e.close_code()), (Error::MaskedFrame, 1002));
        // Control frames too.
        let e = expect_err(Role::Server, BIG, &frame(true, OpCode::Ping, None, b""));
        assert_eq!(e, Error::UnmaskedFrame);
    }

    #[test]
    fn rejects_bad_continuation_sequencing() {
        let e = expect_err(
            Role::Client,
            BIG,
            &frame(true, OpCode::Continuation, None, b"x"),
        );
        assert_eq!((e, e.close_code()), (Error::UnexpectedContinuation, 1002));
        // After a finished message, a continuation is unexpected again.
        let mut w = frame(false, OpCode::Binary, None, b"a");
        w.extend(frame(true, OpCode::Continuation, None, b"b"));
        w.extend(frame(false, OpCode::Continuation, None, b"c"));
        assert_eq!(
            expect_err(Role::Client, BIG, &w),
            Error::UnexpectedContinuation
        );
        for (first, second) in [
            (OpCode::Text, OpCode::Text),
            (OpCode::Text, OpCode::Binary),
            (OpCode::Binary, OpCode::Text),
            (OpCode::Binary, OpCode::Binary),
        ] {
            let mut w = frame(false, first, Some(KEY), b"a");
            w.extend(frame(true, OpCode::Pong, Some(KEY), b""));
            w.extend(frame(true, second, Some(KEY), b"b"));
            let e = expect_err(Role::Server, BIG, &w);
            assert_eq!((e, e.close_code()), (Error::ExpectedContinuation, 1002));
        }
    }

    #[test]
    fn max_message_size_per_frame_and_cumulative() {
        let max = 10;
        // Exactly max: fine, as one frame or as fragments.
        let (_, r) = decode_every_way(
            Role::Client,
            max,
            &frame(true, OpCode::Binary, None, &[1; 10]),
        );
        r.unwrap();
        let mut w = frame(false, OpCode::Text, None, b"12345");
        w.extend(frame(true, OpCode::Continuation, None, b"67890"));
        // The counter restarts with each message.
        w.extend(frame(true, OpCode::Binary, None, &[0; 10]));
        let (_, r) = decode_every_way(Role::Client, max, &w);
        r.unwrap();

        let e = expect_err(
            Role::Client,
            max,
            &frame(true, OpCode::Binary, None, &[1; 11]),
        );
        assert_eq!(
            (e, e.close_code()),
            (Error::FrameTooBig { len: 11, max }, 1009)
        );
        // Rejected from the header alone, before any payload arrives.
        let mut dec = Decoder::new(Role::Client, 1000);
        assert_eq!(
            dec.decode(&mut [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            Err(Error::FrameTooBig {
                len: 65536,
                max: 1000
            })
        );

        let mut w = frame(false, OpCode::Binary, None, b"123456");
        w.extend(frame(
            true,
            OpCode::Ping,
            None,
            b"ping payload is not counted",
        ));
        w.extend(frame(false, OpCode::Continuation, None, b"7890"));
        w.extend(frame(true, OpCode::Continuation, None, b"1"));
        let e = expect_err(Role::Client, max, &w);
        assert_eq!(
            (e, e.close_code()),
            (Error::MessageTooBig { len: 11, max }, 1009)
        );

        // Cumulative sums cannot overflow into acceptance.
        let mut dec = Decoder::new(Role::Client, u64::MAX);
        let big = (1u64 << 63) - 1;
        let mut w = vec![0x02, 127];
        w.extend(big.to_be_bytes());
        assert!(matches!(
            dec.decode(&mut w),
            Ok(Some((Event::DataHeader(_), 10)))
        ));
        let mut dec2 = dec.clone();
        // Pretend the payload went by: feed a continuation header directly.
        dec2.remaining = 0;
        let mut c = vec![0x80, 127];
        c.extend(big.to_be_bytes());
        assert_eq!(
            dec2.decode(&mut c),
            Ok(Some((
                Event::DataHeader(FrameHeader {
                    fin: true,
                    opcode: OpCode::Continuation,
                    mask: None,
                    payload_len: big
                }),
                10
            )))
        );
        let mut dec3 = Decoder::new(Role::Client, u64::MAX);
        dec3.in_message = true;
        dec3.message_len = u64::MAX - 1;
        let mut c = vec![0x80, 2, 0, 0];
        assert_eq!(
            dec3.decode(&mut c),
            Err(Error::MessageTooBig {
                len: u64::MAX,
                max: u64::MAX
            })
        );
    }

    #[test]
    fn close_payload_rules() {
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000,
            4999,
        ] {
            let mut w = Vec::new();
            encode_close(&mut w, Some(KEY), code, "bye");
            let (items, r) = decode_every_way(Role::Server, BIG, &w);
            r.unwrap();
            let mut p = code.to_be_bytes().to_vec();
            p.extend(b"bye");
            assert_eq!(items, [control(OpCode::Close, Some(KEY), &p)]);
            assert_eq!(parse_close(&p), Ok(Some((code, "bye"))));
        }
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            let mut w = Vec::new();
            encode_close(&mut w, None, code, "");
            let e = expect_err(Role::Client, BIG, &w);
            assert_eq!(
                (e, e.close_code()),
                (Error::InvalidCloseCode(code), 1002),
                "code {code}"
            );
        }
        // Empty payload: no code. One byte: invalid.
        let (items, r) = decode_every_way(Role::Client, BIG, &[0x88, 0x00]);
        r.unwrap();
        assert_eq!(items, [control(OpCode::Close, None, b"")]);
        assert_eq!(parse_close(b""), Ok(None));
        let e = expect_err(Role::Client, BIG, &[0x88, 0x01, 0x03]);
        assert_eq!((e, e.close_code()), (Error::CloseLenOne, 1002));
        // Code without reason.
        assert_eq!(parse_close(&[0x03, 0xe8]), Ok(Some((1000, ""))));
        // Reason not UTF-8.
        let e = expect_err(
            Role::Client,
            BIG,
            &frame(true, OpCode::Close, None, &[0x03, 0xe8, b'o', 0xff]),
        );
        assert_eq!((e, e.close_code()), (Error::InvalidCloseReason, 1007));
        let e = expect_err(
            Role::Client,
            BIG,
            &frame(true, OpCode::Close, None, &[0x03, 0xe8, 0xe2, 0x82]),
        );
        assert_eq!(e, Error::InvalidCloseReason);
    }

    #[test]
    fn encode_close_truncates_on_char_boundary() {
        for reason in [
            "",
            "short",
            &"x".repeat(123),
            &"x".repeat(200),
            &"€".repeat(50),
            &format!("a{}", "😀".repeat(40)),
        ] {
            let mut w = Vec::new();
            encode_close(&mut w, None, 1001, reason);
            assert!(w.len() - 2 <= MAX_CONTROL_PAYLOAD);
            let (items, r) = decode_all(Role::Client, BIG, &w);
            r.unwrap();
            let [Item::Control(_, p)] = &items[..] else {
                panic!("{items:?}")
            };
            let (code, got) = parse_close(p).unwrap().unwrap();
            assert_eq!(code, 1001);
            assert!(reason.starts_with(got));
            // Truncated only as much as needed: the next char would not fit.
            let next = reason[got.len()..].chars().next();
            assert!(
                next.is_none_or(|c| got.len() + c.len_utf8() > 123),
                "{reason:?} -> {got:?}"
            );
        }
        // 41 '€' are 123 bytes: all fit. 42 are 126: cut to 41.
        let mut w = Vec::new();
        encode_close(&mut w, None, 1000, &"€".repeat(42));
        assert_eq!(w.len(), 2 + 2 + 123);
    }

    // ---- UTF-8 ----

    /// Text message of `frags` fragments (split as given), unmasked.
    fn text_message(payload: &[u8], splits: &[usize]) -> Vec<u8> {
        let mut w = Vec::new();
        let mut prev = 0;
        let mut opcode = OpCode::Text;
        for &s in splits.iter().chain([payload.len()].iter()) {
            let fin = s == payload.len();
            w.extend(frame(fin, opcode, None, &payload[prev..s]));
            if !fin {
                w.extend(frame(true, OpCode::Ping, None, b""));
            }
            opcode = OpCode::Continuation;
            prev = s;
        }
        w
    }

    #[test]
    fn utf8_split_across_pieces_and_fragments() {
        let text = "aé€😀ж😀€é".as_bytes();
        for s1 in 0..=text.len() {
            for s2 in s1..=text.len() {
                let splits: Vec<usize> = [s1, s2].into_iter().filter(|&s| s < text.len()).collect();
                let w = text_message(text, &splits);
                let (items, r) = decode_all(Role::Client, BIG, &w);
                r.unwrap_or_else(|e| panic!("splits {s1},{s2}: {e}"));
                let got: Vec<u8> = items
                    .iter()
                    .filter_map(|i| match i {
                        Item::Data(_, p) => Some(p.clone()),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                assert_eq!(got, text);
                let r = run_loop(&mut Decoder::new(Role::Client, BIG), &w, 256, || 1);
                assert_eq!(r, (items, Ok(())));
            }
        }
    }

    #[test]
    fn utf8_invalid_split_across_pieces_and_fragments() {
        // Each is invalid as a whole; every fragment split and every byte
        // chunking must find that, with 1007.
        let bad: [&[u8]; 9] = [
            b"ab\xffcd",
            b"\xe2\x82\x28",         // bad continuation
            b"\xed\xa0\x80",         // surrogate
            b"\xf4\x90\x80\x80",     // above U+10FFFF
            b"\xc0\xaf",             // overlong
            b"\xe0\x80\xaf",         // overlong
            b"\xf0\x9f\x98",         // incomplete at message end
            b"ok\xe2\x82",           // incomplete at message end
            b"\xf0\x9f\x98\x80\x80", // stray continuation byte
        ];
        for text in bad {
            assert!(std::str::from_utf8(text).is_err());
            for s in 0..text.len() {
                let splits = if s == 0 { vec![] } else { vec![s] };
                let e = expect_err(Role::Client, BIG, &text_message(text, &splits));
                assert_eq!(e.close_code(), 1007, "{text:02x?} split {s}");
                assert!(matches!(e, Error::InvalidUtf8 | Error::IncompleteUtf8));
            }
        }
        // Binary messages are not validated.
        let (_, r) = decode_every_way(
            Role::Client,
            BIG,
            &frame(true, OpCode::Binary, None, b"\xff\xe2"),
        );
        r.unwrap();
    }

    #[test]
    fn utf8_incomplete_at_message_end_via_empty_final_fragment() {
        let mut w = frame(false, OpCode::Text, None, b"\xe2\x82");
        w.extend(frame(true, OpCode::Continuation, None, b""));
        let e = expect_err(Role::Client, BIG, &w);
        assert_eq!((e, e.close_code()), (Error::IncompleteUtf8, 1007));
        // Completed by the final empty-payload-free fragment: fine.
        let mut w = frame(false, OpCode::Text, None, b"\xe2\x82");
        w.extend(frame(false, OpCode::Continuation, None, b""));
        w.extend(frame(true, OpCode::Continuation, None, b"\xac"));
        let (_, r) = decode_every_way(Role::Client, BIG, &w);
        r.unwrap();
    }

    #[test]
    fn utf8_tail_matches_std_on_random_splits() {
        // Bytes chosen to hit every UTF-8 boundary case.
        const ALPHABET: [u8; 16] = [
            b'a', 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc2, 0xdf, 0xe0, 0xed, 0xf0,
            0xf4, 0xf5,
        ];
        let mut rng = Rng(42);
        for _ in 0..20000 {
            let len = rng.below(12) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| ALPHABET[rng.below(16) as usize]).collect();
            let want = std::str::from_utf8(&bytes).is_ok();
            let mut t = Utf8Tail::default();
            let mut rest = &bytes[..];
            let mut ok = true;
            while !rest.is_empty() {
                let n = rng.below(rest.len() as u64) as usize + 1;
                if t.feed(&rest[..n]).is_err() {
                    ok = false;
                    break;
                }
                rest = &rest[n..];
            }
            assert_eq!(ok && t.is_empty(), want, "{bytes:02x?}");
        }
    }

    // ---- interoperability ----

    #[test]
    fn byte_identical_to_tungstenite() {
        use tungstenite::protocol::frame::coding::{Control, Data, OpCode as T};
        use tungstenite::protocol::frame::Frame;
        let kinds = [
            (OpCode::Text, T::Data(Data::Text)),
            (OpCode::Binary, T::Data(Data::Binary)),
            (OpCode::Continuation, T::Data(Data::Continue)),
            (OpCode::Ping, T::Control(Control::Ping)),
            (OpCode::Pong, T::Control(Control::Pong)),
            (OpCode::Close, T::Control(Control::Close)),
        ];
        for (ours, theirs) in kinds {
            for len in LENGTHS {
                if ours.is_control() && len > MAX_CONTROL_PAYLOAD {
                    continue;
                }
                for (role, mask) in [(Role::Server, Some(KEY)), (Role::Client, None)] {
                    let payload = if ours == OpCode::Close {
                        let mut p = 1000u16.to_be_bytes().to_vec();
                        p.resize(len.max(2), b'r');
                        p
                    } else {
                        text_payload(len)
                    };
                    let fin = ours.is_control() || len % 2 == 0;
                    let mut frame_t = if ours.is_control() {
                        Frame::ping(payload.clone())
                    } else {
                        Frame::message(payload.clone(), theirs, fin)
                    };
                    frame_t.header_mut().opcode = theirs;
                    frame_t.header_mut().mask = mask;
                    let mut wire_t = Vec::new();
                    frame_t.format(&mut wire_t).unwrap();
                    assert_eq!(frame(fin, ours, mask, &payload), wire_t, "{ours:?} {len}");

                    let mut dec = Decoder::new(role, BIG);
                    dec.in_message = ours == OpCode::Continuation;
                    let (items, r) = run_loop(&mut dec, &wire_t, 70000, || 4093);
                    r.unwrap();
                    let want = if ours.is_control() {
                        control(ours, mask, &payload)
                    } else {
                        data(fin, ours, mask, &payload)
                    };
                    assert_eq!(items, [want]);
                }
            }
        }
    }

    // ---- misc ----

    #[test]
    fn errors_are_sticky() {
        let mut dec = Decoder::new(Role::Client, BIG);
        let mut w = [0xc1u8, 0x00];
        assert_eq!(dec.decode(&mut w), Err(Error::ReservedBits));
        assert_eq!(dec.error(), Some(Error::ReservedBits));
        let mut ok = HELLO_UNMASKED;
        assert_eq!(dec.decode(&mut ok), Err(Error::ReservedBits));
    }

    #[test]
    fn decoder_state_is_small() {
        assert!(
            std::mem::size_of::<Decoder>() <= 64,
            "{}",
            std::mem::size_of::<Decoder>()
        );
    }

    #[test]
    fn needs_more_consumes_nothing_and_changes_nothing() {
        let mut w = frame(true, OpCode::Binary, Some(KEY), &[9; 300]);
        let mut dec = Decoder::new(Role::Server, BIG);
        for n in 0..8 {
            let before = w.clone();
            assert_eq!(dec.decode(&mut w[..n]), Ok(None));
            assert_eq!(w, before, "a partial header must not be touched");
        }
        assert!(!dec.in_frame());
    }

    #[test]
    fn every_error_has_words_and_its_code() {
        let all = [
            (Error::ReservedBits, 1002),
            (Error::UnknownOpCode(3), 1002),
            (Error::FragmentedControl, 1002),
            (Error::ControlTooLong(200), 1002),
            (Error::LengthTopBit, 1002),
            (Error::UnmaskedFrame, 1002),
            (Error::MaskedFrame, 1002),
            (Error::UnexpectedContinuation, 1002),
            (Error::ExpectedContinuation, 1002),
            (Error::CloseLenOne, 1002),
            (Error::InvalidCloseCode(1005), 1002),
            (Error::InvalidCloseReason, 1007),
            (Error::InvalidUtf8, 1007),
            (Error::IncompleteUtf8, 1007),
            (Error::FrameTooBig { len: 11, max: 10 }, 1009),
            (Error::MessageTooBig { len: 11, max: 10 }, 1009),
        ];
        for (e, code) in all {
            assert_eq!(e.close_code(), code);
            let s = e.to_string();
            assert!(s.contains(' ') && !s.contains("Error"), "{s}");
            assert!(is_valid_close_code(e.close_code()));
        }
    }

    #[test]
    fn opcode_wire_values_round_trip() {
        for v in 0..16u8 {
            if let Some(op) = OpCode::from_u8(v) {
                assert_eq!(op.as_u8(), v);
                assert_eq!(op.is_control(), v >= 8);
            }
        }
    }
}
