//! Mux record codec: `type u8, channel u32 BE, length u16 BE, payload`.
//!
//! Records travel whole inside one WebSocket message (a *batch*); a record
//! never straddles two messages, so the decoder works on a complete message
//! and a short tail is a protocol error, not "need more".

use super::Error;

/// Bytes before a record's payload.
pub const HEADER_LEN: usize = 7;
/// Largest payload the 16-bit length field can express.
pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize;
/// HELLO payload: version u16 + initial window u32.
pub const HELLO_LEN: usize = 6;
/// CREDIT payload: increment u32.
pub const CREDIT_LEN: usize = 4;
/// Reasons (OPEN_FAIL, CLOSE) we send are cut to this many bytes; a peer's
/// longer reason is accepted (it is bounded by the length field anyway).
pub const MAX_REASON_LEN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Open = 2,
    OpenOk = 3,
    OpenFail = 4,
    Data = 5,
    Eof = 6,
    Close = 7,
    Credit = 8,
    /// v2 only: the sender's session state, right after HELLO.
    Session = 9,
    /// v2 only: the sender delivered the peer's EOF and every byte before it.
    EofAck = 10,
    /// Only to a peer that advertised [`super::GROW_MARK`]: the sender
    /// raises this channel's receive window by the u32 increment (a grant,
    /// not an acknowledgement of consumed bytes as CREDIT is in v2).
    Window = 11,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Open,
            3 => Kind::OpenOk,
            4 => Kind::OpenFail,
            5 => Kind::Data,
            6 => Kind::Eof,
            7 => Kind::Close,
            8 => Kind::Credit,
            9 => Kind::Session,
            10 => Kind::EofAck,
            11 => Kind::Window,
            _ => return None,
        })
    }
}

/// One decoded record, borrowing its payload from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    Hello { version: u16, window: u32 },
    Open { channel: u32 },
    OpenOk { channel: u32 },
    OpenFail { channel: u32, reason: &'a str },
    Data { channel: u32, data: &'a [u8] },
    Eof { channel: u32 },
    Close { channel: u32, reason: &'a str },
    Credit { channel: u32, increment: u32 },
    Session { payload: &'a [u8] },
    EofAck { channel: u32 },
    Window { channel: u32, increment: u32 },
}

impl Record<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Record::Hello { .. } => Kind::Hello,
            Record::Open { .. } => Kind::Open,
            Record::OpenOk { .. } => Kind::OpenOk,
            Record::OpenFail { .. } => Kind::OpenFail,
            Record::Data { .. } => Kind::Data,
            Record::Eof { .. } => Kind::Eof,
            Record::Close { .. } => Kind::Close,
            Record::Credit { .. } => Kind::Credit,
            Record::Session { .. } => Kind::Session,
            Record::EofAck { .. } => Kind::EofAck,
            Record::Window { .. } => Kind::Window,
        }
    }
}

/// Decode the record at the front of `msg`; returns it and the bytes it took.
/// Every shape rule is checked here (lengths, channel 0 only for HELLO,
/// UTF-8 reasons), so the state machine only sees well-formed records.
pub fn decode(msg: &[u8]) -> Result<(Record<'_>, usize), Error> {
    if msg.len() < HEADER_LEN {
        return Err(Error::Truncated);
    }
    let kind = Kind::from_u8(msg[0]).ok_or(Error::UnknownType(msg[0]))?;
    let channel = u32::from_be_bytes([msg[1], msg[2], msg[3], msg[4]]);
    let len = u16::from_be_bytes([msg[5], msg[6]]) as usize;
    let end = HEADER_LEN + len;
    let payload = msg.get(HEADER_LEN..end).ok_or(Error::Truncated)?;
    let bad_len = || Error::BadLength { kind, len };
    if matches!(kind, Kind::Hello | Kind::Session) != (channel == 0) {
        return Err(Error::BadChannel { kind, channel });
    }
    let rec = match kind {
        Kind::Hello => {
            if len != HELLO_LEN {
                return Err(bad_len());
            }
            Record::Hello {
                version: u16::from_be_bytes([payload[0], payload[1]]),
                window: u32::from_be_bytes([payload[2], payload[3], payload[4], payload[5]]),
            }
        }
        Kind::Open | Kind::OpenOk | Kind::Eof | Kind::EofAck => {
            if len != 0 {
                return Err(bad_len());
            }
            match kind {
                Kind::Open => Record::Open { channel },
                Kind::OpenOk => Record::OpenOk { channel },
                Kind::EofAck => Record::EofAck { channel },
                _ => Record::Eof { channel },
            }
        }
        Kind::Session => Record::Session { payload },
        Kind::OpenFail | Kind::Close => {
            let reason = std::str::from_utf8(payload).map_err(|_| Error::BadUtf8 { kind })?;
            if kind == Kind::OpenFail {
                Record::OpenFail { channel, reason }
            } else {
                Record::Close { channel, reason }
            }
        }
        Kind::Data => Record::Data {
            channel,
            data: payload,
        },
        Kind::Credit | Kind::Window => {
            if len != CREDIT_LEN {
                return Err(bad_len());
            }
            let increment = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            if kind == Kind::Credit {
                Record::Credit { channel, increment }
            } else {
                Record::Window { channel, increment }
            }
        }
    };
    Ok((rec, end))
}

/// Append a record header for `len` payload bytes (`len <= MAX_PAYLOAD_LEN`).
pub fn encode_header(out: &mut Vec<u8>, kind: Kind, channel: u32, len: usize) {
    debug_assert!(len <= MAX_PAYLOAD_LEN);
    out.push(kind as u8);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
}

/// Rewrite the payload length of the record header at the front of `hdr`
/// (written by [`encode_header`]; `len <= MAX_PAYLOAD_LEN`).
pub fn set_payload_len(hdr: &mut [u8], len: usize) {
    debug_assert!(len <= MAX_PAYLOAD_LEN);
    if let Some(field) = hdr.get_mut(5..HEADER_LEN) {
        field.copy_from_slice(&(len as u16).to_be_bytes());
    }
}

/// Append a whole record. Callers keep `payload.len() <= MAX_PAYLOAD_LEN`.
pub fn encode(out: &mut Vec<u8>, kind: Kind, channel: u32, payload: &[u8]) {
    encode_header(out, kind, channel, payload.len());
    out.extend_from_slice(payload);
}

/// The longest prefix of `reason` that is at most `max` bytes and ends on a
/// char boundary.
pub fn truncate_reason(reason: &str, max: usize) -> &str {
    if reason.len() <= max {
        return reason;
    }
    let mut end = max;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Bytes a record with this payload takes on the wire.
pub fn wire_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(kind: Kind, ch: u32, p: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        encode(&mut v, kind, ch, p);
        v
    }

    #[test]
    fn round_trips_every_kind() {
        let mut hello = Vec::new();
        hello.extend_from_slice(&1u16.to_be_bytes());
        hello.extend_from_slice(&262144u32.to_be_bytes());
        let cases: Vec<(Vec<u8>, Record)> = vec![
            (
                enc(Kind::Hello, 0, &hello),
                Record::Hello {
                    version: 1,
                    window: 262144,
                },
            ),
            (enc(Kind::Open, 7, b""), Record::Open { channel: 7 }),
            (enc(Kind::OpenOk, 7, b""), Record::OpenOk { channel: 7 }),
            (
                enc(Kind::OpenFail, 7, "nö".as_bytes()),
                Record::OpenFail {
                    channel: 7,
                    reason: "nö",
                },
            ),
            (
                enc(Kind::Data, u32::MAX, b"abc"),
                Record::Data {
                    channel: u32::MAX,
                    data: b"abc",
                },
            ),
            (enc(Kind::Eof, 9, b""), Record::Eof { channel: 9 }),
            (
                enc(Kind::Close, 9, b""),
                Record::Close {
                    channel: 9,
                    reason: "",
                },
            ),
            (
                enc(Kind::Window, 9, &(1u32 << 20).to_be_bytes()),
                Record::Window {
                    channel: 9,
                    increment: 1 << 20,
                },
            ),
            (
                enc(Kind::Credit, 9, &77u32.to_be_bytes()),
                Record::Credit {
                    channel: 9,
                    increment: 77,
                },
            ),
        ];
        for (bytes, want) in cases {
            let (got, n) = decode(&bytes).unwrap();
            assert_eq!(got, want);
            assert_eq!(n, bytes.len());
            assert_eq!(got.kind() as u8, bytes[0]);
        }
    }

    #[test]
    fn exact_wire_layout() {
        assert_eq!(
            enc(Kind::Data, 0x01020304, b"xy"),
            [5, 1, 2, 3, 4, 0, 2, b'x', b'y']
        );
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(decode(&[5, 0, 0, 0]), Err(Error::Truncated));
        assert_eq!(decode(&[5, 0, 0, 0, 1, 0, 3, 1, 2]), Err(Error::Truncated));
        assert_eq!(decode(&[0, 0, 0, 0, 1, 0, 0]), Err(Error::UnknownType(0)));
        assert_eq!(decode(&[12, 0, 0, 0, 1, 0, 0]), Err(Error::UnknownType(12)));
        assert!(matches!(
            decode(&enc(Kind::Data, 0, b"x")),
            Err(Error::BadChannel { .. })
        ));
        assert!(matches!(
            decode(&enc(Kind::Hello, 1, &[0; 6])),
            Err(Error::BadChannel { .. })
        ));
        assert!(matches!(
            decode(&enc(Kind::Hello, 0, &[0; 5])),
            Err(Error::BadLength { .. })
        ));
        assert!(matches!(
            decode(&enc(Kind::Open, 1, b"x")),
            Err(Error::BadLength { .. })
        ));
        assert!(matches!(
            decode(&enc(Kind::Eof, 1, b"x")),
            Err(Error::BadLength { .. })
        ));
        assert!(matches!(
            decode(&enc(Kind::Credit, 1, &[0; 3])),
            Err(Error::BadLength { .. })
        ));
        assert!(matches!(
            decode(&enc(Kind::Close, 1, &[0xff, 0xfe])),
            Err(Error::BadUtf8 { .. })
        ));
    }

    #[test]
    fn truncates_reasons_on_char_boundaries() {
        assert_eq!(truncate_reason("héllo", 2), "h");
        assert_eq!(truncate_reason("héllo", 3), "hé");
        assert_eq!(truncate_reason("abc", 10), "abc");
    }
}
