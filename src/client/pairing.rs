//! One epoch's end-to-end state, sans-IO: what an origin–dest pairing
//! holds between `peer-joined` and its end. Messages from the peer go in
//! ([`Pairing::receive`]); handshake replies come out as bytes for the
//! caller to send, transport messages as the mux bytes they carry. Time is
//! passed in (the dest's handshake deadline); no socket here.
//!
//! States: *handshaking* (Noise under way) → *established* (the caller
//! makes a mux, or resumes the one that survived the last link, with the
//! [`Pairing::handshake_hash`]) → *confirmed* (a transport message from
//! the peer opened: for the origin the proof that the dest is live, since
//! handshake message 1 alone could be a relay's replay, docs/SECURITY.md).
//! In plaintext it is established from the start.

use std::fmt;
use std::time::Instant;

use uuid::Uuid;

use super::e2e::{E2e, E2eError};
use super::E2E_TIMEOUT;
use crate::control::close;
use crate::mux::{self, Side};

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

/// What one message from the peer was.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A handshake message: maybe a reply to send to the peer, and whether
    /// the handshake just completed (the caller makes or resumes its mux).
    Handshake {
        reply: Option<Vec<u8>>,
        established: bool,
    },
    /// Mux bytes (opened, unless plaintext). `confirmed`: the first
    /// transport message from this peer.
    Payload { data: &'a [u8], confirmed: bool },
}

/// One pairing's end-to-end state. The mux is not here: it belongs to the
/// engine, because with channel resume (mux v2) it outlives a pairing.
pub struct Pairing {
    generation: u32,
    /// None in plaintext mode.
    e2e: Option<E2e>,
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
            e2e: None,
            confirmed: false,
            handshake_deadline: None,
        };
        if plaintext {
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

    /// Mux bytes can flow: the handshake is done (at once in plaintext).
    pub fn is_established(&self) -> bool {
        self.e2e.as_ref().is_none_or(E2e::is_established)
    }

    /// The sealer for outgoing batches: None in plaintext or before the
    /// handshake is done.
    pub fn sealer(&mut self) -> Option<&mut E2e> {
        self.e2e.as_mut().filter(|e| e.is_established())
    }

    /// End to end and established (not plaintext).
    pub fn is_end_to_end(&self) -> bool {
        self.e2e.as_ref().is_some_and(E2e::is_established)
    }

    /// The Noise handshake hash, once end to end (the resume proof's
    /// binding to this link).
    pub fn handshake_hash(&self) -> Option<&[u8]> {
        self.e2e
            .as_ref()
            .filter(|e| e.is_established())
            .map(E2e::handshake_hash)
    }

    /// The handshake is not done and its deadline has passed.
    pub fn handshake_overdue(&self, now: Instant) -> bool {
        !self.is_established() && self.handshake_deadline.is_some_and(|d| now >= d)
    }

    pub fn handshake_deadline(&self) -> Option<Instant> {
        self.handshake_deadline
    }

    /// A message from the peer. `plain` is scratch space for the opened
    /// payload. A transport message is decrypted in place (v1 sessions:
    /// into `plain`).
    pub fn receive<'a>(
        &mut self,
        msg: &'a mut [u8],
        plain: &'a mut Vec<u8>,
    ) -> Result<Received<'a>, PairingError> {
        match &mut self.e2e {
            None => Ok(Received::Payload {
                data: &*msg,
                confirmed: false,
            }),
            Some(e2e) if !e2e.is_established() => {
                e2e.handshake_in(msg).map_err(PairingError::Handshake)?;
                let mut reply = None;
                if e2e.wants_to_send() {
                    let mut out = Vec::new();
                    e2e.handshake_out(&mut out)
                        .map_err(PairingError::Handshake)?;
                    reply = Some(out);
                }
                Ok(Received::Handshake {
                    reply,
                    established: e2e.is_established(),
                })
            }
            Some(e2e) => {
                let data = e2e.open_in_place(msg, plain).map_err(PairingError::Open)?;
                let confirmed = !self.confirmed;
                self.confirmed = true;
                Ok(Received::Payload { data, confirmed })
            }
        }
    }
}

#[cfg(all(test, feature = "e2e"))]
mod tests {
    use super::*;
    use crate::mux::Mux;
    use std::time::Duration;

    const TOKEN: &[u8] = b"pairing-test-token-0123456789";

    fn established(r: Received<'_>) -> (Option<Vec<u8>>, bool) {
        match r {
            Received::Handshake { reply, established } => (reply, established),
            other => panic!("expected a handshake message, got {other:?}"),
        }
    }

    /// The dest and the origin of one epoch, with messages moved between
    /// them by hand (the relay's part).
    fn pair(now: Instant) -> (Pairing, Pairing) {
        let id = Uuid::new_v4();
        let (mut dest, first) = Pairing::start(1, Side::Dest, false, TOKEN, &id, now).unwrap();
        let (mut origin, none) = Pairing::start(1, Side::Origin, false, TOKEN, &id, now).unwrap();
        assert!(none.is_none(), "the dest starts");
        assert!(!dest.is_established() && !origin.is_established());
        let mut plain = Vec::new();
        let (reply, done) = established(origin.receive(&mut first.unwrap(), &mut plain).unwrap());
        assert!(done, "origin established after message 1");
        let (none, done) = established(dest.receive(&mut reply.unwrap(), &mut plain).unwrap());
        assert!(done && none.is_none());
        (dest, origin)
    }

    /// Seal every batch of `from_mux` and open it at `to`; the mux bytes
    /// go into `to_mux`. Returns whether each message was the first one.
    fn deliver(
        from: &mut Pairing,
        from_mux: &mut Mux,
        to: &mut Pairing,
        to_mux: &mut Mux,
    ) -> Vec<bool> {
        let mut msgs = Vec::new();
        let e2e = from.sealer().unwrap();
        while let Some(b) = from_mux.pop_batch() {
            let mut sealed = Vec::new();
            e2e.seal(&b, &mut sealed).unwrap();
            msgs.push(sealed);
        }
        let mut plain = Vec::new();
        msgs.iter_mut()
            .map(|m| match to.receive(m, &mut plain).unwrap() {
                Received::Payload { data, confirmed } => {
                    to_mux.recv_message(data).unwrap();
                    confirmed
                }
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_handshake_then_the_first_message_confirms_the_dest() {
        let now = Instant::now();
        let (mut dest, mut origin) = pair(now);
        assert!(dest.is_end_to_end() && origin.is_end_to_end());
        assert_eq!(dest.handshake_hash(), origin.handshake_hash());
        assert_eq!(dest.handshake_hash().map(<[u8]>::len), Some(32));
        let mut dm = Mux::new(Side::Dest, mux::Config::client());
        let mut om = Mux::new(Side::Origin, mux::Config::client());
        // The dest's mux says hello; the origin is confirmed by it.
        let got = deliver(&mut dest, &mut dm, &mut origin, &mut om);
        assert_eq!(got.first(), Some(&true), "{got:?}");
        let ch = dm.open().unwrap();
        let got = deliver(&mut dest, &mut dm, &mut origin, &mut om);
        assert!(got.iter().all(|c| !c), "confirmed once only: {got:?}");
        let events: Vec<_> = std::iter::from_fn(|| om.poll_event()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, mux::Event::Open(c) if *c == ch)),
            "{events:?}"
        );
    }

    #[test]
    fn every_pairing_has_its_own_handshake_hash() {
        let now = Instant::now();
        let (d1, _) = pair(now);
        let (d2, _) = pair(now);
        assert_ne!(d1.handshake_hash(), d2.handshake_hash());
    }

    #[test]
    fn an_altered_message_fails_with_close_4401() {
        let now = Instant::now();
        let (mut dest, mut origin) = pair(now);
        let mut dm = Mux::new(Side::Dest, mux::Config::client());
        let b = dm.pop_batch().unwrap();
        let mut sealed = Vec::new();
        dest.sealer().unwrap().seal(&b, &mut sealed).unwrap();
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
        assert!(dest.handshake_hash().is_none(), "no hash before the end");
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
        assert!(!origin.is_established());
    }

    #[test]
    fn plaintext_is_established_at_once_with_no_handshake_and_no_hash() {
        let now = Instant::now();
        let id = Uuid::new_v4();
        let (mut p, first) = Pairing::start(1, Side::Origin, true, TOKEN, &id, now).unwrap();
        assert!(first.is_none() && p.is_established() && !p.is_end_to_end());
        assert!(p.handshake_hash().is_none() && p.sealer().is_none());
        assert!(!p.handshake_overdue(now + E2E_TIMEOUT * 10));
        let mut msg = *b"abc";
        match p.receive(&mut msg, &mut Vec::new()).unwrap() {
            Received::Payload { data, confirmed } => {
                assert_eq!(data, b"abc");
                assert!(!confirmed);
            }
            other => panic!("{other:?}"),
        }
    }
}
