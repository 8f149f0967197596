//! End-to-end security between origin and dest. CONTRACT STUB — to be implemented.
//!
//! From the token (a secret only origin and dest know) and the session id,
//! derive (a) an admission value the relay compares to let a dest into the
//! session, and (b) a pre-shared key for a Noise NNpsk0 handshake, so origin
//! and dest authenticate each other and encrypt the mux stream end to end.
//! The relay sees only (a) and cannot turn it into (b) or the token.

use uuid::Uuid;

/// Largest plaintext one sealed message may carry (Noise limit 65535 minus
/// the 16-byte tag).
pub const MAX_PLAINTEXT: usize = 65535 - 16;
/// Tokens shorter than this get a warning (they can be guessed offline by
/// whoever sees an admission value or a handshake: README "Security").
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Todo,
}
impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for Error {}

/// A fresh high-entropy token (256 bits, base64url without padding).
pub fn generate_token() -> String {
    todo!()
}

/// The admission value for `session`: what origin and dest present to the
/// relay (base64url, no padding). One-way: it reveals neither the token nor
/// the end-to-end key.
pub fn admission(_token: &[u8], _session: &Uuid) -> String {
    todo!()
}

/// Which end of the Noise handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The dest initiates.
    Dest,
    /// The origin responds.
    Origin,
}

/// Noise_NNpsk0 state: handshake, then transport.
pub struct Noise {
    _todo: (),
}

impl Noise {
    pub fn new(_side: Side, _token: &[u8], _session: &Uuid) -> Result<Noise, Error> {
        todo!()
    }
    /// True when it is our turn to send a handshake message.
    pub fn wants_to_send(&self) -> bool {
        todo!()
    }
    /// Append our next handshake message to `out`.
    pub fn handshake_out(&mut self, _out: &mut Vec<u8>) -> Result<(), Error> {
        todo!()
    }
    /// Consume the peer's handshake message. Fails when the peer does not
    /// know the token (or the message was tampered with).
    pub fn handshake_in(&mut self, _msg: &[u8]) -> Result<(), Error> {
        todo!()
    }
    pub fn is_established(&self) -> bool {
        todo!()
    }
    /// Encrypt `plaintext` (at most MAX_PLAINTEXT bytes), appending to `out`.
    pub fn seal(&mut self, _plaintext: &[u8], _out: &mut Vec<u8>) -> Result<(), Error> {
        todo!()
    }
    /// Decrypt and authenticate one message, appending plaintext to `out`.
    /// Any bit flip, replay, reordering or reflection fails.
    pub fn open(&mut self, _ciphertext: &[u8], _out: &mut Vec<u8>) -> Result<(), Error> {
        todo!()
    }
}
