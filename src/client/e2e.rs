//! End-to-end layer with one API whether or not the feature is built in.
use std::fmt;

use crate::mux::Side;
use uuid::Uuid;

/// Why the end-to-end layer failed.
#[derive(Debug)]
pub enum E2eError {
    /// Noise refused (secure::Error; its text says what to do).
    #[cfg(feature = "e2e")]
    Noise(crate::secure::Error),
    /// This build has no end-to-end layer.
    NotBuilt,
}

impl fmt::Display for E2eError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "e2e")]
            E2eError::Noise(e) => e.fmt(f),
            E2eError::NotBuilt => f.write_str("built without the e2e feature"),
        }
    }
}

impl std::error::Error for E2eError {}

/// Bytes sealing adds to a message.
#[cfg(feature = "e2e")]
pub const SEAL_OVERHEAD: usize = crate::secure::SEAL_OVERHEAD;
#[cfg(not(feature = "e2e"))]
pub const SEAL_OVERHEAD: usize = 0;

#[cfg(feature = "e2e")]
pub struct E2e(crate::secure::Noise);
#[cfg(not(feature = "e2e"))]
pub enum E2e {}

#[cfg(feature = "e2e")]
impl E2e {
    pub fn new(side: Side, token: &[u8], session: &Uuid) -> Result<E2e, E2eError> {
        let s = match side {
            Side::Origin => crate::secure::Side::Origin,
            Side::Dest => crate::secure::Side::Dest,
        };
        crate::secure::Noise::new(s, token, session)
            .map(E2e)
            .map_err(E2eError::Noise)
    }
    pub fn wants_to_send(&self) -> bool {
        self.0.wants_to_send()
    }
    pub fn handshake_out(&mut self, out: &mut Vec<u8>) -> Result<(), E2eError> {
        self.0.handshake_out(out).map_err(E2eError::Noise)
    }
    pub fn handshake_in(&mut self, msg: &[u8]) -> Result<(), E2eError> {
        self.0.handshake_in(msg).map_err(E2eError::Noise)
    }
    pub fn is_established(&self) -> bool {
        self.0.is_established()
    }
    /// The Noise handshake hash once established (the channel-resume
    /// proof is bound to it, so a proof never fits another link).
    pub fn handshake_hash(&self) -> &[u8] {
        self.0.handshake_hash()
    }
    pub fn seal(&mut self, p: &[u8], out: &mut Vec<u8>) -> Result<(), E2eError> {
        self.0.seal(p, out).map_err(E2eError::Noise)
    }
    /// Seal `buf` where it lies (v1 sessions: through a new buffer).
    pub fn seal_in_place(&mut self, buf: &mut Vec<u8>) -> Result<(), E2eError> {
        self.0.seal_in_place(buf).map_err(E2eError::Noise)
    }
    /// Decrypt `c` where it lies (v1 sessions: into `tmp`).
    pub fn open_in_place<'a>(
        &mut self,
        c: &'a mut [u8],
        tmp: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], E2eError> {
        self.0.open_in_place(c, tmp).map_err(E2eError::Noise)
    }
}

#[cfg(not(feature = "e2e"))]
impl E2e {
    pub fn new(_: Side, _: &[u8], _: &Uuid) -> Result<E2e, E2eError> {
        Err(E2eError::NotBuilt)
    }
    pub fn wants_to_send(&self) -> bool {
        match *self {}
    }
    pub fn handshake_out(&mut self, _: &mut Vec<u8>) -> Result<(), E2eError> {
        match *self {}
    }
    pub fn handshake_in(&mut self, _: &[u8]) -> Result<(), E2eError> {
        match *self {}
    }
    pub fn is_established(&self) -> bool {
        match *self {}
    }
    pub fn handshake_hash(&self) -> &[u8] {
        match *self {}
    }
    pub fn seal(&mut self, _: &[u8], _: &mut Vec<u8>) -> Result<(), E2eError> {
        match *self {}
    }
    pub fn seal_in_place(&mut self, _: &mut Vec<u8>) -> Result<(), E2eError> {
        match *self {}
    }
    pub fn open_in_place<'a>(
        &mut self,
        _: &'a mut [u8],
        _: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], E2eError> {
        match *self {}
    }
}

/// A fresh random secret naming this process's mux for channel resume
/// (mux v2): 32 bytes from the OS. None when the OS has no randomness to
/// give, or in a build without end-to-end encryption (resume needs it).
#[cfg(feature = "e2e")]
pub fn resume_secret() -> Option<[u8; crate::mux::resume::SECRET_LEN]> {
    use ring::rand::SecureRandom;
    let mut s = [0u8; crate::mux::resume::SECRET_LEN];
    ring::rand::SystemRandom::new().fill(&mut s).ok()?;
    Some(s)
}

#[cfg(not(feature = "e2e"))]
pub fn resume_secret() -> Option<[u8; crate::mux::resume::SECRET_LEN]> {
    None
}
