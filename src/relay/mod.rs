//! The relay: one mio loop that brokers sessions between origins and dests
//! and, once a session is paired, forwards WebSocket frames between them
//! without copying payloads. See `LIFECYCLE.md` beside this file.

pub mod activation;
pub mod api;
pub mod liveness;
pub mod metrics;
pub mod pool;
mod server;
pub mod session;
mod sock;

pub use server::{ConnToken, Server};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which upgrades a listening address serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenRole {
    Any,
    Origin,
    Dest,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<(SocketAddr, ListenRole)>,
    pub max_sessions: usize,
    pub max_connections: usize,
    pub max_pending: usize,
    /// Largest data frame or message forwarded (1009 past it).
    pub max_message_bytes: u64,
    /// Largest forwarding buffer per direction (`--buffer`): buffers start
    /// at `MIN_BUFFER_BYTES` and double up to this for a connection that
    /// keeps them full (see `pool::Sizer`).
    pub buffer_bytes: usize,
    /// Bytes all lent buffers may hold together before buffers stop
    /// growing past `MIN_BUFFER_BYTES` (`--buffer-memory`).
    pub buffer_memory_bytes: usize,
    /// Bytes of free buffers kept for reuse; more go back to the allocator.
    pub pool_keep_bytes: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub handshake_timeout: Duration,
    /// How long a session whose origin vanished (no close frame) waits for
    /// it to come back; zero ends it at once.
    pub origin_grace: Duration,
    /// On SIGTERM, how long the relay waits for its connections to drain
    /// after telling the clients to move.
    pub drain_timeout: Duration,
    /// File of accepted origin keys, one per line; `None`: anyone may open sessions.
    pub origin_keys: Option<PathBuf>,
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca`: TLS on every listener.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::ServerTlsFiles>,
}

pub const DEFAULT_PORT: u16 = 8080;
/// Smallest forwarding buffer: it must hold the largest request head
/// (`MAX_HEADER_BYTES`) plus whatever frames a client sent behind it.
/// It is also where every connection's buffer starts (size class 0).
pub const MIN_BUFFER_BYTES: usize = 16 << 10;
/// Default `--buffer`: the largest a busy connection's buffer grows to.
pub const DEFAULT_BUFFER_BYTES: usize = 256 << 10;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![(
                SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
                ListenRole::Any,
            )],
            max_sessions: 100_000,
            max_connections: 250_000,
            max_pending: 4096,
            max_message_bytes: 64 << 20,
            buffer_bytes: DEFAULT_BUFFER_BYTES,
            buffer_memory_bytes: 64 << 20,
            pool_keep_bytes: 16 << 20,
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            origin_grace: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            origin_keys: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}
