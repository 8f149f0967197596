//! Origin and dest: one mio loop each, one WebSocket to the relay, and a
//! channel per unix connection multiplexed over it (see docs/CLIENTS.md).
//!
//! - [`ws`]: the client end of one WebSocket (connect, upgrade, frames).
//! - [`engine`]: the loop shared by both sides: relay control messages,
//!   the end-to-end layer, the [`crate::mux`] state machine, unix sockets.
//! - [`listen`]: the dest's private listening socket.

pub mod args;
pub mod engine;
pub mod listen;
pub mod ws;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

pub use crate::mux::Side;

/// Idle time after which we ping the relay.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// No data or pong from the relay for this long: the connection is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(40);
/// TCP connect + HTTP upgrade must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The Noise handshake (dest: after peer-joined) must finish within this.
pub const E2E_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect backoff: first delay, doubling up to the cap.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Dest: how long a unix connection accepted while the session is down may
/// wait for it to come back before it is closed.
pub const PENDING_CONN_TIMEOUT: Duration = Duration::from_secs(10);
/// Dest: most unix connections waiting for the session; more are closed.
pub const MAX_PENDING_CONNS: usize = 256;
/// Stop reading unix sockets while this much is queued toward the relay.
pub const HIGH_WATER_BYTES: usize = 512 * 1024;
/// Largest WebSocket message accepted from the relay (a Noise message is at
/// most 65535 bytes; a plaintext batch less).
pub const MAX_WS_MESSAGE_BYTES: u64 = 1 << 20;
/// Largest single read from a unix socket (one full batch).
pub const READ_CHUNK_BYTES: usize = crate::mux::MAX_BATCH_BYTES;

/// The relay's address as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddr {
    pub host: String,
    pub port: u16,
}

impl RelayAddr {
    /// `host:port` for the Host header (IPv6 literals bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Parse `ws://host[:port][/]`.
    pub fn from_url(url: &str) -> Result<RelayAddr, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url:?}: only ws:// URLs are supported"))?;
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') {
            return Err(format!(
                "{url:?}: give the relay as ws://HOST:PORT, no path"
            ));
        }
        let (host, port) = if let Some(h) = rest.strip_prefix('[') {
            let (h, after) = h
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed '['"))?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let port = match port {
            Some(p) => parse_port(p)?,
            None => 80,
        };
        Ok(RelayAddr { host, port })
    }
}

pub fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{p:?} is not a port number (1-65535)")),
    }
}

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl Token {
    pub fn new(bytes: Vec<u8>) -> Token {
        Token(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} bytes>)", self.0.len())
    }
}

/// Everything a run needs, from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub side: Side,
    pub relay: RelayAddr,
    pub token: Token,
    /// Origin: the id to propose (generated when None). Dest: required.
    pub session: Option<Uuid>,
    /// Origin: the socket to connect to. Dest: the socket to create.
    pub socket: PathBuf,
    /// No Noise: the mux batches travel in the clear through the relay.
    pub plaintext: bool,
    /// Fork once the session is ready; the parent prints and exits.
    pub background: bool,
    /// Dest: print `SSH_AUTH_SOCK=...` once ready.
    pub print_env: bool,
}

/// Why a run ended with a failure (the binaries exit 1 with this text).
#[derive(Debug)]
pub enum Error {
    /// The relay refused us for good (e.g. 403, 409 for an origin).
    Refused(String),
    /// Our own socket could not be set up (dest), or another local failure.
    Local(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(s) => write!(f, "relay refused: {s}"),
            Error::Local(s) => f.write_str(s),
        }
    }
}
impl std::error::Error for Error {}

/// Bounded exponential backoff.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The delay to wait now; the following one doubles (capped).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// xorshift64* PRNG for WebSocket mask keys and Sec-WebSocket-Key nonces.
///
/// RFC 6455 §10.3 wants unpredictable mask keys so that a *browser script*
/// cannot choose the bytes an intermediary sees on the wire (cache
/// poisoning). Our clients run no untrusted code choosing payloads, and with
/// e2e the payload is ciphertext anyway: masking here is protocol
/// compliance, not security, so a fast PRNG seeded from the OS suffices.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    pub fn from_os() -> Prng {
        let mut seed = [0u8; 8];
        let ok = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
            .is_ok();
        let mut s = u64::from_ne_bytes(seed);
        if !ok || s == 0 {
            // Still unique enough for masks: time and pid.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            s = t ^ ((std::process::id() as u64) << 32) | 1;
        }
        Prng(s)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }

    pub fn key16(&mut self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.next_u64().to_ne_bytes());
        k[8..].copy_from_slice(&self.next_u64().to_ne_bytes());
        k
    }
}

/// The admission value the relay compares: the HKDF-derived value when the
/// crate has the `e2e` feature (also in `--insecure-plaintext` mode, so a
/// relay never needs to learn the token), else the token itself.
pub fn admission(token: &Token, session: &Uuid) -> String {
    #[cfg(feature = "e2e")]
    {
        crate::secure::admission(token.expose(), session)
    }
    #[cfg(not(feature = "e2e"))]
    {
        let _ = session;
        String::from_utf8_lossy(token.expose()).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_urls() {
        let a = RelayAddr::from_url("ws://relay.example:8080/").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("relay.example", 8080));
        let a = RelayAddr::from_url("ws://[::1]:9").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 9));
        assert_eq!(a.authority(), "[::1]:9");
        assert_eq!(RelayAddr::from_url("ws://h").unwrap().port, 80);
        assert!(RelayAddr::from_url("wss://h:1").is_err());
        assert!(RelayAddr::from_url("ws://h:0").is_err());
        assert!(RelayAddr::from_url("ws://h:1/x").is_err());
        assert!(RelayAddr::from_url("ws://:1").is_err());
    }

    #[test]
    fn backoff_doubles_to_cap() {
        let mut b = Backoff::default();
        let v: Vec<_> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(
            v,
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token::new(b"supersecret".to_vec());
        assert!(!format!("{t:?}").contains("supersecret"));
    }

    #[test]
    fn prng_varies() {
        let mut p = Prng::from_os();
        let a = p.mask();
        let b = p.mask();
        assert_ne!(p.key16(), p.key16());
        let _ = (a, b);
    }
}
