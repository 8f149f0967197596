//! One epoch's end-to-end and mux state, sans-IO: what an origin–dest
//! pairing holds between `peer-joined` and its end. Messages from the peer
//! go in ([`Pairing::receive`]); handshake replies come out as bytes for
//! the caller to send; the mux it owns yields channel events and batches.
//! Time is passed in (the dest's handshake deadline); no socket here.
//!
//! States: *handshaking* (Noise under way; no mux) → *established* (the
//! mux exists) → *confirmed* (a transport message from the peer opened:
//! for the origin the proof that the dest is live, since handshake message
//! 1 alone could be a relay's replay, docs/SECURITY.md). In plaintext the
//! mux exists from the start.

use std::fmt;
use std::time::Instant;

use uuid::Uuid;

use super::e2e::{E2e, E2eError};
use super::E2E_TIMEOUT;
use crate::control::close;
use crate::mux::{self, Mux, Side};

/// Why a pairing failed.
#[derive(Debug)]
pub enum PairingError {
    /// Our own end-to-end state could not be made (a local failure).
    Setup(E2eError),
    /// The peer's handshake message was refused, or ours could not be made.
    Handshake(E2eError),
    /// A transport message from the peer did not open.
    Open(E2eError),
    /// The peer broke the mux protocol.
    Mux(mux::Error),
}

impl PairingError {
    /// The close code that tells the relay (and through it the peer) why.
    pub fn close_code(&self) -> u16 {
        match self {
            PairingError::Mux(e) => e.close_code(),
            _ => close::E2E_FAILED,
        }
    }
}

impl fmt::Display for PairingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairingError::Setup(e) => write!(f, "end-to-end setup: {e}"),
            PairingError::Handshake(e) | PairingError::Open(e) => e.fmt(f),
            PairingError::Mux(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for PairingError {}

/// What one message from the peer changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// A handshake message to send to the peer.
    pub reply: Option<Vec<u8>>,
    /// The handshake just completed: the mux exists now.
    pub mux_ready: bool,
    /// The first transport message from the peer just opened.
    pub confirmed: bool,
}

pub struct Pairing {
    generation: u32,
    side: Side,
    /// None in plaintext mode.
    e2e: Option<E2e>,
    /// Some once the end-to-end handshake is done (at once in plaintext).
    mux: Option<Mux>,
    confirmed: bool,
    /// The dest's handshake must be done by then.
    handshake_deadline: Option<Instant>,
}

impl Pairing {
    /// A new pairing, and the handshake message to send first, if this
    /// side starts (the dest does).
    pub fn start(
        generation: u32,
        side: Side,
        plaintext: bool,
        token: &[u8],
        session: &Uuid,
        now: Instant,
    ) -> Result<(Pairing, Option<Vec<u8>>), PairingError> {
        let mut p = Pairing {
            generation,
            side,
            e2e: None,
            mux: None,
            confirmed: false,
            handshake_deadline: None,
        };
        if plaintext {
            p.mux = Some(Mux::new(side, mux::Config::client()));
            return Ok((p, None));
        }
        let mut e2e = E2e::new(side, token, session).map_err(PairingError::Setup)?;
        let first = if e2e.wants_to_send() {
            let mut msg = Vec::new();
            e2e.handshake_out(&mut msg)
                .map_err(PairingError::Handshake)?;
            Some(msg)
        } else {
            None
        };
        if side == Side::Dest {
            p.handshake_deadline = Some(now + E2E_TIMEOUT);
        }
        p.e2e = Some(e2e);
        Ok((p, first))
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn mux(&mut self) -> Option<&mut Mux> {
        self.mux.as_mut()
    }

    pub fn has_mux(&self) -> bool {
        self.mux.is_some()
    }

    /// The mux and the sealer, to turn batches into messages (None in
    /// plaintext for the sealer).
    pub fn mux_and_e2e(&mut self) -> (Option<&mut Mux>, Option<&mut E2e>) {
        (self.mux.as_mut(), self.e2e.as_mut())
    }

    /// End to end and established (not plaintext).
    pub fn is_end_to_end(&self) -> bool {
        self.mux.is_some() && self.e2e.as_ref().is_some_and(E2e::is_established)
    }

    /// The handshake is not done and its deadline has passed.
    pub fn handshake_overdue(&self, now: Instant) -> bool {
        self.mux.is_none() && self.handshake_deadline.is_some_and(|d| now >= d)
    }

    pub fn handshake_deadline(&self) -> Option<Instant> {
        self.handshake_deadline
    }

    /// A message from the peer. `plain` is scratch space for the opened
    /// payload. After a successful call, the mux may have events to poll.
    /// A transport message is decrypted in place (v1 sessions: into `plain`).
    pub fn receive(
        &mut self,
        msg: &mut [u8],
        plain: &mut Vec<u8>,
    ) -> Result<Received, PairingError> {
        let mut got = Received::default();
        let payload: &[u8] = match &mut self.e2e {
            None => &*msg,
            Some(e2e) if !e2e.is_established() => {
                e2e.handshake_in(msg).map_err(PairingError::Handshake)?;
                if e2e.wants_to_send() {
                    let mut out = Vec::new();
                    e2e.handshake_out(&mut out)
                        .map_err(PairingError::Handshake)?;
                    got.reply = Some(out);
                }
                if e2e.is_established() {
                    self.mux = Some(Mux::new(self.side, mux::Config::client()));
                    got.mux_ready = true;
                }
                return Ok(got);
            }
            Some(e2e) => {
                let opened = e2e.open_in_place(msg, plain).map_err(PairingError::Open)?;
                if !self.confirmed {
                    self.confirmed = true;
                    got.confirmed = true;
                }
                opened
            }
        };
        if let Some(m) = &mut self.mux {
            m.recv_message(payload).map_err(PairingError::Mux)?;
        }
        Ok(got)
    }
}

#[cfg(all(test, feature = "e2e"))]
mod tests {
    use super::*;
    use std::time::Duration;

    const TOKEN: &[u8] = b"pairing-test-token-0123456789";

    /// The dest and the origin of one epoch, with messages moved between
    /// them by hand (the relay's part).
    fn pair(now: Instant) -> (Pairing, Pairing) {
        let id = Uuid::new_v4();
        let (mut dest, first) = Pairing::start(1, Side::Dest, false, TOKEN, &id, now).unwrap();
        let (mut origin, none) = Pairing::start(1, Side::Origin, false, TOKEN, &id, now).unwrap();
        assert!(none.is_none(), "the dest starts");
        let mut plain = Vec::new();
        let got = origin.receive(&mut first.unwrap(), &mut plain).unwrap();
        assert!(got.mux_ready, "origin established after message 1");
        let got2 = dest.receive(&mut got.reply.unwrap(), &mut plain).unwrap();
        assert!(got2.mux_ready && got2.reply.is_none());
        (dest, origin)
    }

    /// Seal every batch `from`'s mux has queued and deliver it to `to`.
    fn deliver(from: &mut Pairing, to: &mut Pairing) -> Vec<Received> {
        let mut msgs = Vec::new();
        if let (Some(m), Some(e2e)) = from.mux_and_e2e() {
            while let Some(b) = m.pop_batch() {
                let mut sealed = Vec::new();
                e2e.seal(&b, &mut sealed).unwrap();
                msgs.push(sealed);
            }
        }
        let mut plain = Vec::new();
        msgs.iter_mut()
            .map(|m| to.receive(m, &mut plain).unwrap())
            .collect()
    }

    #[test]
    fn the_handshake_then_the_first_message_confirms_the_dest() {
        let now = Instant::now();
        let (mut dest, mut origin) = pair(now);
        assert!(dest.is_end_to_end() && origin.is_end_to_end());
        // The dest's mux says hello; the origin is confirmed by it.
        let got = deliver(&mut dest, &mut origin);
        assert!(got.first().is_some_and(|r| r.confirmed), "{got:?}");
        let ch = dest.mux().unwrap().open().unwrap();
        deliver(&mut dest, &mut origin);
        let events: Vec<_> = std::iter::from_fn(|| origin.mux().unwrap().poll_event()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, mux::Event::Open(c) if *c == ch)),
            "{events:?}"
        );
    }

    #[test]
    fn an_altered_message_fails_with_close_4401() {
        let now = Instant::now();
        let (mut dest, mut origin) = pair(now);
        let (Some(m), Some(e2e)) = dest.mux_and_e2e() else {
            panic!()
        };
        let b = m.pop_batch().unwrap();
        let mut sealed = Vec::new();
        e2e.seal(&b, &mut sealed).unwrap();
        sealed[3] ^= 1;
        let err = origin.receive(&mut sealed, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, PairingError::Open(_)), "{err}");
        assert_eq!(err.close_code(), close::E2E_FAILED);
    }

    #[test]
    fn the_dests_handshake_has_a_deadline_in_simulated_time() {
        let t0 = Instant::now();
        let id = Uuid::new_v4();
        let (dest, _) = Pairing::start(3, Side::Dest, false, TOKEN, &id, t0).unwrap();
        assert_eq!(dest.generation(), 3);
        assert!(!dest.handshake_overdue(t0 + E2E_TIMEOUT - Duration::from_millis(1)));
        assert!(dest.handshake_overdue(t0 + E2E_TIMEOUT));
        let (dest, origin) = pair(t0);
        assert!(
            !dest.handshake_overdue(t0 + E2E_TIMEOUT * 2),
            "done: no deadline"
        );
        assert_eq!(origin.handshake_deadline(), None);
    }

    #[test]
    fn a_wrong_token_fails_the_handshake() {
        let now = Instant::now();
        let id = Uuid::new_v4();
        let (_, first) =
            Pairing::start(1, Side::Dest, false, b"another-token-entirely-xx", &id, now).unwrap();
        let (mut origin, _) = Pairing::start(1, Side::Origin, false, TOKEN, &id, now).unwrap();
        let err = origin
            .receive(&mut first.unwrap(), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(err, PairingError::Handshake(_)), "{err}");
        assert!(!origin.has_mux());
    }

    #[test]
    fn plaintext_has_a_mux_at_once_and_no_handshake() {
        let now = Instant::now();
        let id = Uuid::new_v4();
        let (mut p, first) = Pairing::start(1, Side::Origin, true, TOKEN, &id, now).unwrap();
        assert!(first.is_none() && p.has_mux() && !p.is_end_to_end());
        assert!(!p.handshake_overdue(now + E2E_TIMEOUT * 10));
        // A malformed batch is a mux error with the mux's close code.
        let err = p.receive(&mut [0xff; 3], &mut Vec::new()).unwrap_err();
        assert!(matches!(err, PairingError::Mux(_)));
        assert_ne!(err.close_code(), close::E2E_FAILED);
    }
}
