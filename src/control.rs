//! Relay ↔ client control, named once for both ends: the control messages
//! the relay sends in pings, the WebSocket close codes each side uses, the
//! HTTP header names and the endpoint paths. Sans-IO: encode into a
//! caller's buffer, parse a borrowed payload, allocate nothing on parse.
//!
//! Why pings and not text frames: README "Control messages". A ping whose
//! payload starts with [`PREFIX`] is control; any other ping (an empty
//! keepalive, say) is not, and every data frame is peer data.

use std::fmt;
use uuid::Uuid;

/// What starts every control payload.
pub const PREFIX: &str = "sockrelay ";

/// RFC 6455 §5.5: a control frame's payload is at most 125 bytes, so an
/// encoded message is cut to this (on a UTF-8 boundary, inside the reason).
pub const MAX_PAYLOAD_BYTES: usize = 125;

/// HTTP header names (compared case-insensitively by the parser; written
/// in this case).
pub mod header {
    pub const ADMISSION: &str = "Sockrelay-Admission";
    pub const ORIGIN_KEY: &str = "Sockrelay-Origin-Key";
    pub const SESSION: &str = "Sockrelay-Session";
}

/// Endpoint paths of the relay's one port.
pub mod path {
    pub const ORIGIN: &str = "/origin";
    pub const DEST: &str = "/dest";
    pub const HEALTH: &str = "/healthz";
    pub const METRICS: &str = "/metrics";
}

/// WebSocket close codes (RFC 6455 §7.4.1, and ours in the 4000 range).
pub mod close {
    pub const NORMAL: u16 = 1000;
    /// The relay is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Never on the wire: "the close frame had no code" (§7.1.5).
    pub const NO_STATUS: u16 = 1005;
    /// Never on the wire: "the connection ended without a close frame".
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    /// To the dest: the origin is gone (vanished, or broke the protocol).
    pub const ORIGIN_GONE: u16 = 4001;
    /// To an origin: replaced by a new connection of the same origin.
    pub const REPLACED: u16 = 4002;
    /// To the dest: the origin reconnected; join again.
    pub const ORIGIN_RECONNECTED: u16 = 4003;
    /// Between origin and dest: the mux stream broke (bad record, window).
    pub const MUX_PROTOCOL: u16 = 4400;
    /// Between origin and dest: end-to-end failure (handshake, bad message).
    pub const E2E_FAILED: u16 = 4401;
}

/// A control message from the relay to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control<'a> {
    /// To an origin right after the 101: the session's id.
    Session { id: Uuid },
    /// To both at pairing: `addr` is the other side's address as the relay
    /// sees it. `seq` is absent from relays older than the pong ack.
    PeerJoined { seq: Option<u32>, addr: &'a str },
    /// To the origin: its dest left with this close code and reason. To a
    /// dest (4001): its origin vanished and the relay waits for it.
    PeerLeft {
        seq: Option<u32>,
        code: u16,
        reason: &'a str,
    },
    /// To everyone, before the relay stops (SIGTERM): the link is about to
    /// close (1001) once what is queued toward the client is out; reconnect
    /// as soon as it has, without backoff, after a random delay of at most
    /// `spread_ms` (so that thousands of clients do not come back at one
    /// instant).
    Move { spread_ms: u32, reason: &'a str },
}

/// The spread a relay asks for in `move` (README "Reliability").
pub const MOVE_SPREAD_MS: u32 = 250;

/// Why a `sockrelay ` payload did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    NotUtf8,
    UnknownKind,
    BadSessionId,
    BadCode,
    MissingField,
    BadDelay,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::NotUtf8 => "control message is not UTF-8",
            ParseError::UnknownKind => "unknown control message",
            ParseError::BadSessionId => "control message has a malformed session id",
            ParseError::BadCode => "control message has a malformed close code",
            ParseError::MissingField => "control message is missing a field",
            ParseError::BadDelay => "control message has a malformed delay",
        })
    }
}

impl std::error::Error for ParseError {}

impl<'a> Control<'a> {
    /// Parse a ping payload. `Ok(None)`: not a control message (no
    /// [`PREFIX`]), e.g. a keepalive; answer it and move on.
    pub fn parse(payload: &'a [u8]) -> Result<Option<Control<'a>>, ParseError> {
        if !payload.starts_with(PREFIX.as_bytes()) {
            return Ok(None);
        }
        let text = std::str::from_utf8(payload).map_err(|_| ParseError::NotUtf8)?;
        let rest = &text[PREFIX.len()..];
        let (kind, args) = rest.split_once(' ').unwrap_or((rest, ""));
        // A sequence number first where the relay sends one: the first
        // word when it is all digits (an address never is; peer-left's code
        // is, so there the seq is present only when two numbers lead).
        let (first, after) = args.split_once(' ').unwrap_or((args, ""));
        let msg = match kind {
            "session" => Control::Session {
                id: Uuid::try_parse(args).map_err(|_| ParseError::BadSessionId)?,
            },
            "peer-joined" if is_seq(first) && !after.is_empty() => Control::PeerJoined {
                seq: first.parse().ok(),
                addr: after,
            },
            "peer-joined" => Control::PeerJoined {
                seq: None,
                addr: args,
            },
            "peer-left" => {
                if first.is_empty() {
                    return Err(ParseError::MissingField);
                }
                let (second, tail) = after.split_once(' ').unwrap_or((after, ""));
                let (seq, code, reason) = if is_seq(first) && is_seq(second) {
                    (first.parse().ok(), second, tail)
                } else {
                    (None, first, after)
                };
                // Digits only: `u16::from_str` would also take "+4", which
                // re-encodes as something else (found by fuzz/control_message).
                if !(1..=5).contains(&code.len()) || !code.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParseError::BadCode);
                }
                Control::PeerLeft {
                    seq,
                    code: code.parse().map_err(|_| ParseError::BadCode)?,
                    reason,
                }
            }
            "move" => {
                if first.is_empty() {
                    return Err(ParseError::MissingField);
                }
                if !is_seq(first) {
                    return Err(ParseError::BadDelay);
                }
                Control::Move {
                    spread_ms: first.parse().map_err(|_| ParseError::BadDelay)?,
                    reason: after,
                }
            }
            _ => return Err(ParseError::UnknownKind),
        };
        Ok(Some(msg))
    }

    /// Append the ping payload to `out`, cut to [`MAX_PAYLOAD_BYTES`] on a
    /// UTF-8 boundary (only the free-text tail, an address or a reason, is
    /// ever long enough to be cut).
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let start = out.len();
        let _ = match self {
            Control::Session { id } => write!(out, "{PREFIX}session {id}"),
            Control::PeerJoined { seq, addr } => {
                write!(out, "{PREFIX}peer-joined ").and_then(|()| {
                    write_seq(out, *seq)?;
                    out.write_all(addr.as_bytes())
                })
            }
            Control::PeerLeft { seq, code, reason } => {
                write!(out, "{PREFIX}peer-left ").and_then(|()| {
                    write_seq(out, *seq)?;
                    write!(out, "{code} {reason}")
                })
            }
            Control::Move {
                spread_ms,
                reason: "",
            } => write!(out, "{PREFIX}move {spread_ms}"),
            Control::Move { spread_ms, reason } => {
                write!(out, "{PREFIX}move {spread_ms} {reason}")
            }
        };
        let mut end = (start + MAX_PAYLOAD_BYTES).min(out.len());
        // Cut on a char boundary: a UTF-8 continuation byte is 0b10xx_xxxx.
        while end > start && end < out.len() && (out[end] & 0xC0) == 0x80 {
            end -= 1;
        }
        out.truncate(end);
    }

    /// The payload as a new vector (for the relay's queued pings).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.encode(&mut v);
        v
    }

    /// The sequence number a pong echoing this message acknowledges.
    pub fn seq(&self) -> Option<u32> {
        match self {
            Control::Session { .. } | Control::Move { .. } => None,
            Control::PeerJoined { seq, .. } | Control::PeerLeft { seq, .. } => *seq,
        }
    }
}

/// The pairing change a pong acknowledges: a client answers each ping with
/// its payload (RFC 6455 §5.5.3), so an origin's pong that echoes
/// `peer-joined <seq>` or `peer-left <seq>` says it has seen that change.
pub fn acked_seq(pong: &[u8]) -> Option<u32> {
    match Control::parse(pong) {
        Ok(Some(c @ (Control::PeerJoined { .. } | Control::PeerLeft { .. }))) => c.seq(),
        _ => None,
    }
}

/// A word that is a sequence number: digits that fit a `u32` (a longer
/// run of digits is text, so that a parsed message re-encodes to itself).
fn is_seq(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 10
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u32>().is_ok()
}

fn write_seq(out: &mut Vec<u8>, seq: Option<u32>) -> std::io::Result<()> {
    use std::io::Write;
    match seq {
        Some(s) => write!(out, "{s} "),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(c: Control<'_>) {
        let bytes = c.to_vec();
        assert!(bytes.len() <= MAX_PAYLOAD_BYTES);
        assert_eq!(
            Control::parse(&bytes),
            Ok(Some(c)),
            "{:?}",
            String::from_utf8_lossy(&bytes)
        );
    }

    #[test]
    fn each_message_round_trips() {
        let id = Uuid::parse_str("0b1c7a52-3f0e-4d7e-9a4e-5f1a2b3c4d5e").unwrap();
        round_trip(Control::Session { id });
        round_trip(Control::PeerJoined {
            seq: Some(7),
            addr: "127.0.0.1:4242",
        });
        round_trip(Control::PeerJoined {
            seq: Some(u32::MAX),
            addr: "[::1]:1",
        });
        round_trip(Control::PeerJoined {
            seq: None,
            addr: "10.0.0.1:2",
        });
        round_trip(Control::PeerLeft {
            seq: Some(3),
            code: 1006,
            reason: "read error: reset",
        });
        round_trip(Control::PeerLeft {
            seq: Some(3),
            code: 1000,
            reason: "",
        });
        round_trip(Control::PeerLeft {
            seq: None,
            code: 4001,
            reason: "bye now",
        });
        round_trip(Control::Move {
            spread_ms: 250,
            reason: "relay shutting down",
        });
        round_trip(Control::Move {
            spread_ms: 0,
            reason: "",
        });
        round_trip(Control::Move {
            spread_ms: u32::MAX,
            reason: " two  spaces ",
        });
    }

    #[test]
    fn move_parses_and_refuses_what_it_should() {
        assert_eq!(
            Control::parse(b"sockrelay move 250"),
            Ok(Some(Control::Move {
                spread_ms: 250,
                reason: ""
            }))
        );
        assert_eq!(
            Control::parse(b"sockrelay move"),
            Err(ParseError::MissingField)
        );
        assert_eq!(
            Control::parse(b"sockrelay move +5 x"),
            Err(ParseError::BadDelay)
        );
        assert_eq!(
            Control::parse(b"sockrelay move 99999999999 x"),
            Err(ParseError::BadDelay)
        );
        assert_eq!(
            Control::parse(b"sockrelay move soon"),
            Err(ParseError::BadDelay)
        );
        // Not a pairing change: its pong acknowledges nothing.
        assert_eq!(acked_seq(b"sockrelay move 5 x"), None);
    }

    #[test]
    fn wire_text_is_what_the_readme_says() {
        let id = Uuid::parse_str("0b1c7a52-3f0e-4d7e-9a4e-5f1a2b3c4d5e").unwrap();
        assert_eq!(
            Control::Session { id }.to_vec(),
            b"sockrelay session 0b1c7a52-3f0e-4d7e-9a4e-5f1a2b3c4d5e"
        );
        assert_eq!(
            Control::PeerJoined {
                seq: Some(2),
                addr: "1.2.3.4:5"
            }
            .to_vec(),
            b"sockrelay peer-joined 2 1.2.3.4:5"
        );
        assert_eq!(
            Control::PeerLeft {
                seq: Some(9),
                code: 1006,
                reason: "gone"
            }
            .to_vec(),
            b"sockrelay peer-left 9 1006 gone"
        );
        assert_eq!(
            Control::Move {
                spread_ms: 250,
                reason: "relay shutting down"
            }
            .to_vec(),
            b"sockrelay move 250 relay shutting down"
        );
    }

    #[test]
    fn long_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let c = Control::PeerLeft {
            seq: Some(1),
            code: 1000,
            reason: &reason,
        };
        let bytes = c.to_vec();
        assert!(bytes.len() <= MAX_PAYLOAD_BYTES);
        let text = std::str::from_utf8(&bytes).expect("cut on a boundary");
        assert!(text.starts_with("sockrelay peer-left 1 1000 é"));
        assert!(matches!(
            Control::parse(&bytes),
            Ok(Some(Control::PeerLeft { code: 1000, .. }))
        ));
    }

    #[test]
    fn non_control_pings_are_not_errors() {
        assert_eq!(Control::parse(b""), Ok(None));
        assert_eq!(Control::parse(b"keepalive"), Ok(None));
        assert_eq!(Control::parse(b"sockrelay"), Ok(None));
    }

    #[test]
    fn malformed_control_is_an_error() {
        assert_eq!(Control::parse(b"sockrelay \xff"), Err(ParseError::NotUtf8));
        assert_eq!(
            Control::parse(b"sockrelay move-later"),
            Err(ParseError::UnknownKind)
        );
        assert_eq!(
            Control::parse(b"sockrelay session nope"),
            Err(ParseError::BadSessionId)
        );
        assert_eq!(
            Control::parse(b"sockrelay peer-left x y"),
            Err(ParseError::BadCode)
        );
        assert_eq!(
            Control::parse(b"sockrelay peer-left"),
            Err(ParseError::MissingField)
        );
        // Found by fuzz/control_message: "+4" is not a code.
        assert_eq!(
            Control::parse(b"sockrelay peer-left +4 600"),
            Err(ParseError::BadCode)
        );
    }

    #[test]
    fn an_overlong_seq_is_text_and_round_trips() {
        let msg = Control::parse(b"sockrelay peer-joined 9999999999 1 x")
            .unwrap()
            .unwrap();
        assert_eq!(
            msg,
            Control::PeerJoined {
                seq: None,
                addr: "9999999999 1 x"
            }
        );
        assert_eq!(Control::parse(&msg.to_vec()), Ok(Some(msg)));
    }

    #[test]
    fn pong_acks_only_pairing_changes() {
        assert_eq!(acked_seq(b"sockrelay peer-joined 5 1.2.3.4:5"), Some(5));
        assert_eq!(acked_seq(b"sockrelay peer-left 6 1000 bye"), Some(6));
        assert_eq!(acked_seq(b"sockrelay peer-left 6"), None);
        assert_eq!(acked_seq(b"sockrelay peer-joined 1.2.3.4:5"), None);
        assert_eq!(
            acked_seq(b"sockrelay session 0b1c7a52-3f0e-4d7e-9a4e-5f1a2b3c4d5e"),
            None
        );
        assert_eq!(acked_seq(b""), None);
        assert_eq!(acked_seq(b"sockrelay peer-joined 99999999999 x"), None);
    }
}
