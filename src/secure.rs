//! End-to-end security between origin and dest.
//!
//! From the token (a secret only origin and dest know) and the session id,
//! derive (a) an admission value the relay compares to let a dest into the
//! session, and (b) a pre-shared key for a Noise NNpsk0 handshake, so origin
//! and dest authenticate each other and encrypt the mux stream end to end.
//! The relay sees only (a) and cannot turn it into (b) or the token.
//!
//! # Construction (docs/SECURITY.md has the full argument)
//!
//! ```text
//! prk        = HKDF-Extract(salt = session id (16 bytes), ikm = token bytes)
//! admission  = base64url(HKDF-Expand(prk, "sockrelay v1 admission", 32))
//! psk        =           HKDF-Expand(prk, "sockrelay v1 e2e psk",   32)
//! protocol   = Noise_NNpsk0_25519_ChaChaPoly_SHA256
//! prologue   = "sockrelay v1 noise" || session id (16 bytes)
//! dest   = initiator:  -> psk, e            (48 bytes: e + empty payload tag)
//! origin = responder:  <- e, ee             (48 bytes)
//! ```
//!
//! The token is used as the bytes it is given (typically the UTF-8 text of a
//! base64url string); it is never decoded.
//!
//! # Use
//!
//! One [`Noise`] per WebSocket connection between a dest and an origin: the
//! dest makes a new one each time it (re)joins, the origin a new one on each
//! `peer-joined`. Any error from [`Noise::handshake_in`] or [`Noise::open`]
//! is final: the state is poisoned and every later call fails with
//! [`Error::Failed`]. The caller drops the connection.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use sha2::Sha256;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::{HandshakeState, TransportState};
use uuid::Uuid;

/// Largest plaintext one sealed message may carry (Noise limit 65535 minus
/// the 16-byte tag).
pub const MAX_PLAINTEXT: usize = 65535 - 16;
/// Tokens shorter than this get a warning (they can be guessed offline by
/// whoever sees an admission value or a handshake: README "Security").
pub const MIN_TOKEN_LEN: usize = 16;

/// Bytes [`Noise::seal`] adds to a plaintext (the Poly1305 tag).
pub const SEAL_OVERHEAD: usize = 16;
/// Largest message [`Noise::open`] accepts (the Noise limit).
pub const MAX_MESSAGE: usize = 65535;
/// Length of each of the two handshake messages (an ephemeral public key and
/// the tag of an empty payload).
pub const HANDSHAKE_MSG_LEN: usize = 32 + 16;

/// The Noise protocol. SHA256 rather than BLAKE2s: `sha2` is linked anyway
/// (HKDF), so snow needs no second hash.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";

const PROLOGUE_PREFIX: &[u8] = b"sockrelay v1 noise";
const INFO_ADMISSION: &[u8] = b"sockrelay v1 admission";
const INFO_PSK: &[u8] = b"sockrelay v1 e2e psk";
const TOKEN_BYTES: usize = 32;

/// Errors. None carries key material, plaintext or peer bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The OS random source failed.
    Rng,
    /// An empty token was given.
    EmptyToken,
    /// `seal` got more than [`MAX_PLAINTEXT`] bytes, or `open` more than
    /// [`MAX_MESSAGE`]. Nothing was consumed; the state is unchanged.
    TooLarge,
    /// A call that does not fit the current phase (a handshake call after
    /// the handshake, `seal`/`open` before it, writing out of turn).
    WrongPhase,
    /// The peer's handshake message did not verify: the peer does not know
    /// the token, is in another session, or the message was altered.
    Handshake,
    /// A transport message did not verify: altered, truncated, replayed,
    /// reordered, reflected, or one was dropped before it.
    Decrypt,
    /// 2^64 - 1 messages in one direction: the connection must be replaced.
    NonceExhausted,
    /// An earlier error poisoned this state; make a new connection.
    Failed,
    /// snow refused something we did not expect it to (a bug here).
    Internal,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Error::Rng => "the OS random number generator failed",
            Error::EmptyToken => "the token is empty",
            Error::TooLarge => "message too large for one Noise message",
            Error::WrongPhase => "secure channel used out of order",
            Error::Handshake => {
                "end-to-end handshake failed: the peer does not know the token, \
                 is in another session, or the message was altered"
            }
            Error::Decrypt => {
                "end-to-end message failed authentication (altered, replayed, \
                 reordered, reflected or truncated)"
            }
            Error::NonceExhausted => "end-to-end nonce space exhausted",
            Error::Failed => "secure channel already failed",
            Error::Internal => "internal error in the Noise layer",
        })
    }
}
impl std::error::Error for Error {}

/// A fresh high-entropy token (256 bits, base64url without padding).
///
/// # Panics
///
/// When the OS random source fails (see [`try_generate_token`]): a weak
/// token must never be produced silently.
pub fn generate_token() -> String {
    try_generate_token().expect("no OS randomness: cannot generate a token")
}

/// [`generate_token`] that reports a failing random source instead of
/// panicking. Uses the OS CSPRNG (getrandom(2)) through snow's resolver.
pub fn try_generate_token() -> Result<String, Error> {
    let mut bytes = [0u8; TOKEN_BYTES];
    let mut rng = DefaultResolver.resolve_rng().ok_or(Error::Rng)?;
    rng.try_fill_bytes(&mut bytes).map_err(|_| Error::Rng)?;
    let token = URL_SAFE_NO_PAD.encode(bytes);
    wipe(&mut bytes);
    Ok(token)
}

/// True when `token` is shorter than [`MIN_TOKEN_LEN`] bytes; the caller
/// should warn that it can be brute-forced offline (docs/SECURITY.md).
/// Length is only a proxy: a long but guessable passphrase is weak too.
pub fn token_is_short(token: &[u8]) -> bool {
    token.len() < MIN_TOKEN_LEN
}

/// The admission value for `session`: what origin and dest present to the
/// relay (base64url, no padding). One-way: it reveals neither the token nor
/// the end-to-end key.
///
/// It does allow an offline guessing attack on a low-entropy token (one
/// HKDF evaluation per guess): see docs/SECURITY.md.
pub fn admission(token: &[u8], session: &Uuid) -> String {
    let mut okm = [0u8; 32];
    derive(token, session, INFO_ADMISSION, &mut okm);
    URL_SAFE_NO_PAD.encode(okm)
}

/// HKDF-SHA256(salt = session id, ikm = token) expanded with `info`.
///
/// The extracted PRK lives for the duration of this call inside the `Hkdf`
/// value (an HMAC state); `hkdf` 0.12 does not wipe it on drop.
fn derive(token: &[u8], session: &Uuid, info: &[u8], okm: &mut [u8; 32]) {
    let hk = Hkdf::<Sha256>::new(Some(session.as_bytes()), token);
    // 32 bytes is far below HKDF-SHA256's 255 * 32 limit: cannot fail.
    hk.expand(info, okm)
        .expect("HKDF-SHA256 expand of 32 bytes cannot fail");
}

/// Best-effort wipe of a secret we own (volatile writes the optimiser may
/// not drop). Copies held by snow and by HKDF's internal state are outside
/// our reach: see [`Noise::new`].
fn wipe(buf: &mut [u8]) {
    for b in buf.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to a u8.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Which end of the Noise handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The dest initiates.
    Dest,
    /// The origin responds.
    Origin,
}

enum State {
    Handshake(Box<HandshakeState>),
    Transport(Box<TransportState>),
    Failed,
}

/// Noise_NNpsk0 state: handshake, then transport.
///
/// Dest (initiator): `handshake_out` (message 1), `handshake_in`
/// (message 2) → established. Origin (responder): `handshake_in`
/// (message 1), `handshake_out` (message 2) → established.
///
/// `Debug` shows the side and phase, never keys.
pub struct Noise {
    side: Side,
    state: State,
    /// The peer has shown it knows the psk (so the token), see
    /// [`Noise::peer_proved_token`].
    peer_proved_token: bool,
    /// The peer has shown it is live in *this* handshake, see
    /// [`Noise::peer_confirmed`].
    peer_confirmed: bool,
    /// Noise handshake hash `h` once the handshake is done: unique to this
    /// handshake (both ephemeral keys and the psk are mixed in), the same
    /// on both sides. The mux v2 resume proof is bound to it.
    handshake_hash: Vec<u8>,
}

impl std::fmt::Debug for Noise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match &self.state {
            State::Handshake(_) => "handshake",
            State::Transport(_) => "transport",
            State::Failed => "failed",
        };
        f.debug_struct("Noise")
            .field("side", &self.side)
            .field("phase", &phase)
            .field("peer_proved_token", &self.peer_proved_token)
            .field("peer_confirmed", &self.peer_confirmed)
            .finish_non_exhaustive()
    }
}

fn map_snow(e: snow::Error) -> Error {
    match e {
        snow::Error::Decrypt => Error::Decrypt,
        snow::Error::Rng => Error::Rng,
        snow::Error::State(snow::error::StateProblem::Exhausted) => Error::NonceExhausted,
        snow::Error::State(_) => Error::WrongPhase,
        _ => Error::Internal,
    }
}

impl Noise {
    /// A fresh handshake for `side` in `session`, keyed by the psk derived
    /// from `token`.
    ///
    /// Our stack copy of the psk is wiped before returning. snow keeps its
    /// own copy inside the handshake state (and makes transient stack
    /// copies while building it); snow 0.10 does not zeroize those, nor
    /// the ephemeral private key or the transport keys. The handshake
    /// state, psk included, is dropped (not wiped) when the handshake ends.
    pub fn new(side: Side, token: &[u8], session: &Uuid) -> Result<Noise, Error> {
        if token.is_empty() {
            return Err(Error::EmptyToken);
        }
        let params = NOISE_PARAMS.parse().map_err(|_| Error::Internal)?;
        let mut prologue = [0u8; PROLOGUE_PREFIX.len() + 16];
        prologue[..PROLOGUE_PREFIX.len()].copy_from_slice(PROLOGUE_PREFIX);
        prologue[PROLOGUE_PREFIX.len()..].copy_from_slice(session.as_bytes());

        let mut psk = [0u8; 32];
        derive(token, session, INFO_PSK, &mut psk);
        let built = snow::Builder::new(params)
            .prologue(&prologue)
            .and_then(|b| b.psk(0, &psk))
            .and_then(|b| match side {
                Side::Dest => b.build_initiator(),
                Side::Origin => b.build_responder(),
            });
        wipe(&mut psk);
        let hs = built.map_err(map_snow)?;
        Ok(Noise {
            side,
            state: State::Handshake(Box::new(hs)),
            peer_proved_token: false,
            peer_confirmed: false,
            handshake_hash: Vec::new(),
        })
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// True when it is our turn to send a handshake message.
    pub fn wants_to_send(&self) -> bool {
        match &self.state {
            State::Handshake(hs) => hs.is_my_turn(),
            _ => false,
        }
    }

    /// Append our next handshake message to `out`.
    pub fn handshake_out(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let hs = match &mut self.state {
            State::Handshake(hs) if hs.is_my_turn() => hs,
            State::Failed => return Err(Error::Failed),
            _ => return Err(Error::WrongPhase),
        };
        let start = out.len();
        out.resize(start + HANDSHAKE_MSG_LEN, 0);
        match hs.write_message(&[], &mut out[start..]) {
            Ok(n) => out.truncate(start + n),
            Err(e) => {
                out.truncate(start);
                self.state = State::Failed;
                return Err(map_snow(e));
            }
        }
        self.finish_if_done()
    }

    /// Consume the peer's handshake message. Fails when the peer does not
    /// know the token (or the message was tampered with).
    ///
    /// Origin: success on message 1 means the dest knows the psk, see
    /// [`Noise::peer_proved_token`]. Dest: success on message 2 means the
    /// origin knows the psk *and* answered this very handshake.
    pub fn handshake_in(&mut self, msg: &[u8]) -> Result<(), Error> {
        let hs = match &mut self.state {
            State::Handshake(hs) if !hs.is_my_turn() => hs,
            State::Failed => return Err(Error::Failed),
            _ => return Err(Error::WrongPhase),
        };
        // Our handshake messages carry empty payloads; anything else is not
        // from a sockrelay v1 peer. The buffer only catches a payload so we
        // can reject it.
        let mut payload = [0u8; 64];
        let res = if msg.len() > HANDSHAKE_MSG_LEN + payload.len() {
            Err(Error::Handshake)
        } else {
            match hs.read_message(msg, &mut payload) {
                Ok(0) => Ok(()),
                Ok(_) => Err(Error::Handshake),
                Err(_) => Err(Error::Handshake),
            }
        };
        if let Err(e) = res {
            self.state = State::Failed;
            return Err(e);
        }
        // With NNpsk0 the psk is mixed into the chaining key before the
        // initiator's ephemeral key, so the empty payload of message 1 is
        // AEAD-encrypted under a key that depends on the psk, the prologue
        // (session id) and the initiator's ephemeral key. Its tag verifying
        // here proves the sender knows the psk, hence the token (HKDF is
        // one-way), for this session. It does NOT prove freshness: the
        // message could be a replay of an earlier dest's message 1 for the
        // same session. A replayer still cannot complete anything: it lacks
        // that ephemeral private key, so it can neither read what we send
        // nor produce a transport message we would open (`peer_confirmed`).
        //
        // For the dest, message 2 additionally mixes DH(e_dest, e_origin)
        // with our fresh ephemeral, so it is both authenticated and fresh.
        self.peer_proved_token = true;
        if self.side == Side::Dest {
            self.peer_confirmed = true;
        }
        self.finish_if_done()
    }

    fn finish_if_done(&mut self) -> Result<(), Error> {
        let done = matches!(&self.state, State::Handshake(hs) if hs.is_handshake_finished());
        if done {
            let State::Handshake(hs) = std::mem::replace(&mut self.state, State::Failed) else {
                unreachable!()
            };
            self.handshake_hash = hs.get_handshake_hash().to_vec();
            let ts = hs.into_transport_mode().map_err(map_snow)?;
            self.state = State::Transport(Box::new(ts));
        }
        Ok(())
    }

    /// The handshake hash (empty until established): a value both sides
    /// share and nobody else can choose, fresh for every handshake.
    pub fn handshake_hash(&self) -> &[u8] {
        &self.handshake_hash
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Transport(_))
    }

    /// True once the state is poisoned by an error; only dropping it helps.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// The peer has proved it knows the token (the psk derived from it) for
    /// this session.
    ///
    /// Origin: set by a successful [`Noise::handshake_in`] of message 1 —
    /// the responder's successful read of NNpsk0 message 1 proves the
    /// initiator knows the psk. That message may be a replay (see
    /// [`Noise::peer_confirmed`] for liveness). Dest: set by message 2.
    pub fn peer_proved_token(&self) -> bool {
        self.peer_proved_token && !self.is_failed()
    }

    /// The peer has proved knowledge of the token *in this handshake* (not a
    /// replay). Dest: after message 2. Origin: after the first successful
    /// [`Noise::open`] of a dest transport message, which only the holder of
    /// the ephemeral key of message 1 can produce. The origin should treat
    /// the dest as present only from then on.
    pub fn peer_confirmed(&self) -> bool {
        self.peer_confirmed && !self.is_failed()
    }

    /// Encrypt `plaintext` (at most MAX_PLAINTEXT bytes), appending to `out`.
    ///
    /// [`Error::TooLarge`] leaves the state unchanged (nothing was sent);
    /// nonce exhaustion poisons it.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let ts = match &mut self.state {
            State::Transport(ts) => ts,
            State::Failed => return Err(Error::Failed),
            State::Handshake(_) => return Err(Error::WrongPhase),
        };
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(Error::TooLarge);
        }
        let start = out.len();
        out.resize(start + plaintext.len() + SEAL_OVERHEAD, 0);
        match ts.write_message(plaintext, &mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                self.state = State::Failed;
                Err(map_snow(e))
            }
        }
    }

    /// Decrypt and authenticate one message, appending plaintext to `out`.
    /// Any bit flip, replay, reordering or reflection fails.
    ///
    /// Each direction has its own key and a receive counter that must match
    /// the sender's: a replayed, reordered or dropped-before message is
    /// opened with the wrong nonce, and a message reflected back to its
    /// sender with the wrong key, so its tag fails. On any failure `out` is
    /// left as it was and the state is poisoned.
    pub fn open(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        let ts = match &mut self.state {
            State::Transport(ts) => ts,
            State::Failed => return Err(Error::Failed),
            State::Handshake(_) => return Err(Error::WrongPhase),
        };
        let res = if ciphertext.len() > MAX_MESSAGE {
            Err(Error::TooLarge)
        } else if ciphertext.len() < SEAL_OVERHEAD {
            Err(Error::Decrypt)
        } else {
            let start = out.len();
            out.resize(start + ciphertext.len() - SEAL_OVERHEAD, 0);
            match ts.read_message(ciphertext, &mut out[start..]) {
                Ok(n) => {
                    out.truncate(start + n);
                    Ok(())
                }
                Err(e) => {
                    // snow decrypts in place: drop the unauthenticated bytes.
                    out.truncate(start);
                    Err(map_snow(e))
                }
            }
        };
        match res {
            Ok(()) => {
                self.peer_confirmed = true;
                Ok(())
            }
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &[u8] = b"correct horse battery staple 0123456789";

    fn sid(n: u8) -> Uuid {
        Uuid::from_bytes([n; 16])
    }

    /// Run the handshake; returns (dest, origin), both established.
    fn pair(token_d: &[u8], token_o: &[u8], s: &Uuid) -> (Noise, Noise) {
        let mut d = Noise::new(Side::Dest, token_d, s).unwrap();
        let mut o = Noise::new(Side::Origin, token_o, s).unwrap();
        assert!(d.wants_to_send());
        assert!(!o.wants_to_send());
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        assert_eq!(m1.len(), HANDSHAKE_MSG_LEN);
        assert!(!d.wants_to_send());
        o.handshake_in(&m1).unwrap();
        assert!(o.peer_proved_token());
        assert!(!o.peer_confirmed());
        assert!(o.wants_to_send());
        let mut m2 = Vec::new();
        o.handshake_out(&mut m2).unwrap();
        assert_eq!(m2.len(), HANDSHAKE_MSG_LEN);
        assert!(o.is_established());
        d.handshake_in(&m2).unwrap();
        assert!(d.is_established());
        assert!(d.peer_proved_token() && d.peer_confirmed());
        assert!(!d.wants_to_send() && !o.wants_to_send());
        (d, o)
    }

    fn seal(n: &mut Noise, p: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        n.seal(p, &mut v).unwrap();
        v
    }

    fn open(n: &mut Noise, c: &[u8]) -> Result<Vec<u8>, Error> {
        let mut v = Vec::new();
        n.open(c, &mut v).map(|()| v)
    }

    #[test]
    fn handshake_hash_shared_and_fresh() {
        let (d, o) = pair(TOKEN, TOKEN, &sid(1));
        assert_eq!(d.handshake_hash().len(), 32);
        assert_eq!(d.handshake_hash(), o.handshake_hash());
        let (d2, _) = pair(TOKEN, TOKEN, &sid(1));
        assert_ne!(d.handshake_hash(), d2.handshake_hash());
        assert!(Noise::new(Side::Dest, TOKEN, &sid(1))
            .unwrap()
            .handshake_hash()
            .is_empty());
    }

    #[test]
    fn token_generation() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43); // 32 bytes, base64url without padding
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert!(!token_is_short(a.as_bytes()));
        assert!(token_is_short(b"hunter2"));
    }

    #[test]
    fn derivation_deterministic_and_session_bound() {
        let a1 = admission(TOKEN, &sid(1));
        assert_eq!(a1, admission(TOKEN, &sid(1)));
        assert_eq!(a1.len(), 43);
        assert_ne!(a1, admission(TOKEN, &sid(2)));
        assert_ne!(a1, admission(b"another token entirely", &sid(1)));

        let mut p1 = [0u8; 32];
        let mut p1b = [0u8; 32];
        let mut p2 = [0u8; 32];
        derive(TOKEN, &sid(1), INFO_PSK, &mut p1);
        derive(TOKEN, &sid(1), INFO_PSK, &mut p1b);
        derive(TOKEN, &sid(2), INFO_PSK, &mut p2);
        assert_eq!(p1, p1b);
        assert_ne!(p1, p2);
        // admission != psk
        assert_ne!(URL_SAFE_NO_PAD.decode(&a1).unwrap(), p1.to_vec());
        // the token does not appear in the admission value
        let tok = std::str::from_utf8(TOKEN).unwrap();
        assert!(!a1.contains(tok));
        assert!(!a1.contains(&URL_SAFE_NO_PAD.encode(TOKEN)));
        let g = generate_token();
        assert!(!admission(g.as_bytes(), &sid(1)).contains(&g));
    }

    /// Pinned values, cross-checked against Python's hmac/hashlib HKDF, so
    /// another implementation can interoperate.
    #[test]
    fn derivation_known_answer() {
        let s = Uuid::parse_str("00112233-4455-6677-8899-aabbccddeeff").unwrap();
        assert_eq!(
            admission(b"sockrelay-test-token", &s),
            "E2Y_ZDcHLHDGdaKBGh-nrVL6Hm8EZ4PyphJbYq6B02g"
        );
        let mut psk = [0u8; 32];
        derive(b"sockrelay-test-token", &s, INFO_PSK, &mut psk);
        assert_eq!(
            URL_SAFE_NO_PAD.encode(psk),
            "jXqLOXeK_jKioQtPc0dGgydFCVjuOhRz5oYtFobcKgg"
        );
    }

    #[test]
    fn handshake_then_both_directions() {
        let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(7));
        for i in 0..5u8 {
            let c = seal(&mut d, &[i; 100]);
            assert_eq!(c.len(), 100 + SEAL_OVERHEAD);
            assert_eq!(open(&mut o, &c).unwrap(), vec![i; 100]);
            assert!(o.peer_confirmed());
            let c = seal(&mut o, &[i ^ 0xff; 3]);
            assert_eq!(open(&mut d, &c).unwrap(), vec![i ^ 0xff; 3]);
        }
        // empty and maximal plaintexts
        let c = seal(&mut d, &[]);
        assert_eq!(open(&mut o, &c).unwrap(), Vec::<u8>::new());
        let big = vec![0xa5u8; MAX_PLAINTEXT];
        let c = seal(&mut o, &big);
        assert_eq!(c.len(), MAX_MESSAGE);
        assert_eq!(open(&mut d, &c).unwrap(), big);
        // appends to what is already in `out`
        let c = seal(&mut d, b"xyz");
        let mut out = b"ab".to_vec();
        o.open(&c, &mut out).unwrap();
        assert_eq!(out, b"abxyz");
    }

    #[test]
    fn wrong_token_fails_at_origin() {
        let s = sid(3);
        let mut d = Noise::new(Side::Dest, b"the dest's token, which is wrong", &s).unwrap();
        let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        assert_eq!(o.handshake_in(&m1), Err(Error::Handshake));
        assert!(!o.peer_proved_token());
        assert!(o.is_failed() && !o.wants_to_send());
        // poisoned: even the right message now fails
        let mut good = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        let mut m1 = Vec::new();
        good.handshake_out(&mut m1).unwrap();
        assert_eq!(o.handshake_in(&m1), Err(Error::Failed));
        assert_eq!(o.handshake_out(&mut Vec::new()), Err(Error::Failed));
    }

    #[test]
    fn wrong_session_fails() {
        let mut d = Noise::new(Side::Dest, TOKEN, &sid(1)).unwrap();
        let mut o = Noise::new(Side::Origin, TOKEN, &sid(2)).unwrap();
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        assert_eq!(o.handshake_in(&m1), Err(Error::Handshake));
    }

    #[test]
    fn origin_response_with_wrong_token_fails_at_dest() {
        // A relay replaying a message 2 from another handshake, or an origin
        // without the token: the dest rejects it.
        let s = sid(4);
        let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        let mut other_d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        let mut other_o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
        let mut om1 = Vec::new();
        other_d.handshake_out(&mut om1).unwrap();
        other_o.handshake_in(&om1).unwrap();
        let mut om2 = Vec::new();
        other_o.handshake_out(&mut om2).unwrap();
        assert_eq!(d.handshake_in(&om2), Err(Error::Handshake));
    }

    #[test]
    fn handshake_tamper_and_reflection() {
        let s = sid(5);
        // bit flip in message 1 (in the ephemeral key, and in the tag)
        for pos in [0, 31, 32, HANDSHAKE_MSG_LEN - 1] {
            let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
            let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
            let mut m1 = Vec::new();
            d.handshake_out(&mut m1).unwrap();
            m1[pos] ^= 0x01;
            assert_eq!(o.handshake_in(&m1), Err(Error::Handshake), "pos {pos}");
        }
        // truncated / extended message 1
        for cut in [0, 1, 32, HANDSHAKE_MSG_LEN - 1] {
            let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
            let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
            let mut m1 = Vec::new();
            d.handshake_out(&mut m1).unwrap();
            assert_eq!(o.handshake_in(&m1[..cut]), Err(Error::Handshake));
        }
        {
            let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
            let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
            let mut m1 = Vec::new();
            d.handshake_out(&mut m1).unwrap();
            m1.push(0);
            assert_eq!(o.handshake_in(&m1), Err(Error::Handshake));
        }
        // the dest's message 1 reflected back to the dest as message 2
        let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        assert_eq!(d.handshake_in(&m1), Err(Error::Handshake));
        // bit flip in message 2
        let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        o.handshake_in(&m1).unwrap();
        let mut m2 = Vec::new();
        o.handshake_out(&mut m2).unwrap();
        m2[40] ^= 0x80;
        assert_eq!(d.handshake_in(&m2), Err(Error::Handshake));
        // the origin's message 2 reflected back to the origin
        m2[40] ^= 0x80;
        assert_eq!(o.handshake_in(&m2), Err(Error::WrongPhase));
    }

    #[test]
    fn replayed_message_1_cannot_be_confirmed() {
        // The relay replays a recorded message 1 to a new origin: the origin
        // sees the token proved but the replayer can produce nothing it opens.
        let s = sid(6);
        let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
        o.handshake_in(&m1).unwrap();
        o.handshake_out(&mut Vec::new()).unwrap();
        assert!(o.peer_proved_token() && !o.peer_confirmed());
        // The attacker's best try: a transport message from another, complete
        // handshake of the same session.
        let (mut d2, _o2) = pair(TOKEN, TOKEN, &s);
        let forged = seal(&mut d2, b"sign this");
        assert_eq!(open(&mut o, &forged), Err(Error::Decrypt));
        assert!(!o.peer_confirmed());
    }

    #[test]
    fn transport_bit_flips_fail() {
        let (mut d, _) = pair(TOKEN, TOKEN, &sid(8));
        let c = seal(&mut d, b"hello agent");
        for pos in 0..c.len() {
            for bit in [0x01u8, 0x80] {
                let (mut d2, mut o2) = pair(TOKEN, TOKEN, &sid(8));
                let mut c2 = seal(&mut d2, b"hello agent");
                c2[pos] ^= bit;
                let mut out = b"keep".to_vec();
                assert_eq!(o2.open(&c2, &mut out), Err(Error::Decrypt));
                assert_eq!(out, b"keep", "no unauthenticated bytes leak into out");
                assert!(o2.is_failed());
            }
        }
    }

    #[test]
    fn replay_fails() {
        let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(9));
        let c = seal(&mut d, b"one");
        open(&mut o, &c).unwrap();
        assert_eq!(open(&mut o, &c), Err(Error::Decrypt));
        // poisoned afterwards
        let c2 = seal(&mut d, b"two");
        assert_eq!(open(&mut o, &c2), Err(Error::Failed));
        assert_eq!(o.seal(b"x", &mut Vec::new()), Err(Error::Failed));
    }

    #[test]
    fn reorder_and_drop_fail() {
        let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(10));
        let c1 = seal(&mut d, b"first");
        let c2 = seal(&mut d, b"second");
        assert_eq!(open(&mut o, &c2), Err(Error::Decrypt));
        assert_eq!(open(&mut o, &c1), Err(Error::Failed));
        // dropping a message in the middle: the next one fails
        let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(10));
        let c1 = seal(&mut d, b"1");
        let _dropped = seal(&mut d, b"2");
        let c3 = seal(&mut d, b"3");
        open(&mut o, &c1).unwrap();
        assert_eq!(open(&mut o, &c3), Err(Error::Decrypt));
    }

    #[test]
    fn reflection_fails() {
        let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(11));
        // origin's message fed back to the origin (nonce 0 matches, key not)
        let c = seal(&mut o, b"agent reply");
        assert_eq!(open(&mut o, &c), Err(Error::Decrypt));
        // dest's message fed back to the dest
        let c = seal(&mut d, b"agent request");
        assert_eq!(open(&mut d, &c), Err(Error::Decrypt));
    }

    #[test]
    fn truncation_fails() {
        for cut in [0usize, 1, 15, 16, 17, 20] {
            let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(12));
            let c = seal(&mut d, b"a message of some length");
            assert!(cut < c.len());
            assert_eq!(open(&mut o, &c[..cut]), Err(Error::Decrypt), "cut {cut}");
        }
        // dropping the tail byte
        let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(12));
        let c = seal(&mut d, b"a message of some length");
        assert_eq!(open(&mut o, &c[..c.len() - 1]), Err(Error::Decrypt));
    }

    #[test]
    fn oversized_fails_cleanly() {
        let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(13));
        let mut out = b"x".to_vec();
        let big = vec![0u8; MAX_PLAINTEXT + 1];
        assert_eq!(d.seal(&big, &mut out), Err(Error::TooLarge));
        assert_eq!(out, b"x");
        // not poisoned, and no nonce was consumed
        let c = seal(&mut d, b"still fine");
        assert_eq!(open(&mut o, &c).unwrap(), b"still fine");
        let huge = vec![0u8; MAX_MESSAGE + 1];
        assert_eq!(o.open(&huge, &mut out), Err(Error::TooLarge));
        assert_eq!(out, b"x");
    }

    #[test]
    fn nonce_exhaustion_is_an_error() {
        let (mut d, mut o) = pair(TOKEN, TOKEN, &sid(16));
        let c = seal(&mut d, b"m");
        let State::Transport(ts) = &mut o.state else {
            unreachable!()
        };
        // 2^64 - 1 is reserved by Noise; snow refuses to use it.
        ts.set_receiving_nonce(u64::MAX);
        assert_eq!(open(&mut o, &c), Err(Error::NonceExhausted));
        assert!(o.is_failed());
    }

    #[test]
    fn phase_errors() {
        let s = sid(14);
        let mut d = Noise::new(Side::Dest, TOKEN, &s).unwrap();
        assert_eq!(d.seal(b"early", &mut Vec::new()), Err(Error::WrongPhase));
        assert_eq!(d.open(&[0u8; 32], &mut Vec::new()), Err(Error::WrongPhase));
        let mut o = Noise::new(Side::Origin, TOKEN, &s).unwrap();
        assert_eq!(o.handshake_out(&mut Vec::new()), Err(Error::WrongPhase));
        let (mut d, mut o) = pair(TOKEN, TOKEN, &s);
        assert_eq!(d.handshake_out(&mut Vec::new()), Err(Error::WrongPhase));
        assert_eq!(o.handshake_in(&[0u8; 48]), Err(Error::WrongPhase));
        assert!(Noise::new(Side::Dest, b"", &s).is_err());
    }

    #[test]
    fn debug_shows_no_secrets() {
        let token = generate_token();
        let s = sid(15);
        let (d, o) = pair(token.as_bytes(), token.as_bytes(), &s);
        let mut psk = [0u8; 32];
        derive(token.as_bytes(), &s, INFO_PSK, &mut psk);
        let secrets = [
            token.clone(),
            URL_SAFE_NO_PAD.encode(psk),
            format!("{psk:?}"),
            format!("{:02x?}", &psk[..4]),
        ];
        for shown in [format!("{d:?}"), format!("{o:#?}")] {
            assert!(shown.contains("Noise"));
            for sec in &secrets {
                assert!(!shown.contains(sec.as_str()), "{shown}");
            }
        }
        for e in [Error::Handshake, Error::Decrypt, Error::Failed] {
            assert!(!e.to_string().is_empty());
        }
    }
}
