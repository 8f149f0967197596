//! Origin and dest: one mio loop each, one WebSocket to the relay, and a
//! channel per unix connection multiplexed over it (see docs/CLIENTS.md).
//!
//! - [`ws`]: the client end of one WebSocket (connect, upgrade, frames).
//! - [`engine`]: the loop shared by both sides: the relay link, the
//!   end-to-end layer and [`crate::mux`] glue per epoch, the unix channels,
//!   daemonizing (one file each under `engine/`; see LIFECYCLE.md).
//! - [`listen`]: the dest's private listening socket.
//! - [`agent_glue`]: the origin's ssh-agent guard, `--lifetime`, and the
//!   dest's `-- COMMAND` and socket mode/group (issue 11).

pub mod agent_glue;
pub mod args;
pub mod e2e;
pub mod engine;
pub mod link;
pub mod listen;
pub mod pairing;
pub mod ws;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

pub use crate::mux::Side;

/// Default `--keepalive`: silence after which we ping the relay.
pub const KEEPALIVE: Duration = Duration::from_secs(20);
/// Default `--dead-after`: no data or pong from the relay (or none of our
/// output taken by it) for this long, and the connection is dead.
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
    /// `wss://` (or a `sockrelays://` join string): TLS to the relay.
    pub tls: bool,
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

    /// `ws://HOST:PORT` or `wss://HOST:PORT`, as a user would write it.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "wss" } else { "ws" },
            self.authority()
        )
    }

    /// Parse `ws://host[:port][/]` (default port 80) or `wss://…` (443).
    pub fn from_url(url: &str) -> Result<RelayAddr, String> {
        let (rest, tls) = if let Some(r) = url.strip_prefix("ws://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("wss://") {
            (r, true)
        } else {
            return Err(format!(
                "{url:?}: give the relay as ws://HOST:PORT or wss://HOST:PORT"
            ));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') {
            return Err(format!(
                "{url:?}: give the relay as ws://HOST:PORT or wss://HOST:PORT, no path"
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
            None if tls => 443,
            None => 80,
        };
        Ok(RelayAddr { host, port, tls })
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

/// An IPv4 or IPv6 network, `ADDR/BITS` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parse `10.0.0.0/8`, `fd00::/8`, `192.0.2.7` (= /32), `::1` (= /128).
    /// Host bits below the prefix are cleared (`10.1.2.3/8` = `10.0.0.0/8`).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an address or CIDR (e.g. 10.0.0.0/8, fd00::/8)");
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.parse::<u8>() {
                Ok(n) if n <= max && !b.starts_with('+') => n,
                _ => return Err(bad()),
            },
        };
        Ok(Cidr {
            net: mask(ip, bits),
            bits,
        })
    }

    /// Does `ip` lie in this network? An IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`, what a dual-stack relay reports for IPv4 peers)
    /// is compared as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.net.is_ipv4() && mask(ip, self.bits) == self.net
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

fn mask(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - bits as u32).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - bits as u32).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

/// What the origin lets dests do (docs/SECURITY.md "Origin limits").
/// Defaults: no limit, any address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Channels accepted over the whole run of the origin process (every
    /// dest and every reconnect counted together).
    pub max_channels: Option<u64>,
    /// Channels open at the same time.
    pub max_concurrent: Option<usize>,
    /// Dest addresses (as the relay reports them) allowed to pair; empty =
    /// any.
    pub allow_dest: Vec<Cidr>,
}

impl Limits {
    /// Why a new channel must be refused, given how many were accepted so
    /// far and how many are open now; None = accept.
    pub fn refuse_channel(&self, accepted: u64, open: usize) -> Option<String> {
        if let Some(n) = self.max_channels.filter(|&n| accepted >= n) {
            return Some(format!("max-channels {n} reached"));
        }
        if let Some(n) = self.max_concurrent.filter(|&n| open >= n) {
            return Some(format!("max-concurrent {n} reached"));
        }
        None
    }

    /// Why a dest must be refused, given the `addr` argument of the relay's
    /// `peer-joined` ping (`ip:port`, `[v6]:port`, or a bare address);
    /// None = accept.
    pub fn refuse_dest(&self, addr: &str) -> Option<String> {
        if self.allow_dest.is_empty() {
            return None;
        }
        let addr = addr.split_whitespace().next().unwrap_or("");
        let ip = addr
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| addr.trim_matches(['[', ']']).parse::<IpAddr>());
        match ip {
            Err(_) => Some(format!(
                "the relay did not report the dest's address ({addr:?}); --allow-dest needs it"
            )),
            Ok(ip) if self.allow_dest.iter().any(|c| c.contains(ip)) => None,
            Ok(ip) => {
                let ip = match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                    v4 => v4,
                };
                Some(format!("address {ip} not in --allow-dest"))
            }
        }
    }
}

/// What the origin sends instead of its Noise handshake message to a dest
/// it refuses (unauthenticated, like every relay-visible signal: a hint for
/// the dest's log). Plaintext mux batches never start with it (record types
/// are 1..=8), nor, but for a 2^-144 chance, a Noise message.
pub const REFUSED_PREFIX: &[u8] = b"sockrelay refused: ";

/// What a dest joins: relay, session and, usually, the token, from one
/// `sockrelay://HOST:PORT/SESSION#TOKEN` string (`sockrelays://` when the
/// relay is reached over TLS, as `wss://`).
#[derive(Debug, Clone)]
pub struct Join {
    pub relay: RelayAddr,
    pub session: Uuid,
    /// The fragment, verbatim (no percent-decoding); None without `#`.
    pub token: Option<Token>,
}

/// Scheme of the join string.
pub const JOIN_SCHEME: &str = "sockrelay://";
/// Scheme of the join string for a relay reached over TLS (`wss://`).
pub const JOIN_SCHEME_TLS: &str = "sockrelays://";

/// True when `s` looks like a join string (either scheme).
pub fn is_join_string(s: &str) -> bool {
    s.starts_with(JOIN_SCHEME) || s.starts_with(JOIN_SCHEME_TLS)
}

impl Join {
    /// Parse a join string. Errors never quote the token.
    pub fn parse(s: &str) -> Result<Join, String> {
        let s = s.trim();
        let (rest, tls) = if let Some(r) = s.strip_prefix(JOIN_SCHEME) {
            (r, false)
        } else if let Some(r) = s.strip_prefix(JOIN_SCHEME_TLS) {
            (r, true)
        } else {
            return Err(format!(
                "a join string starts with {JOIN_SCHEME} (or {JOIN_SCHEME_TLS} over TLS)"
            ));
        };
        let (rest, token) = match rest.split_once('#') {
            Some((r, "")) => (r, None),
            Some((r, t)) => (r, Some(Token::new(t.as_bytes().to_vec()))),
            None => (rest, None),
        };
        let (authority, session) = rest.split_once('/').ok_or_else(|| {
            format!("join string: no session id ({JOIN_SCHEME}HOST:PORT/SESSION#TOKEN)")
        })?;
        let scheme = if tls { "wss" } else { "ws" };
        let relay = RelayAddr::from_url(&format!("{scheme}://{authority}"))
            .map_err(|e| format!("join string: {e}"))?;
        // Not quoted: a token put in the path by mistake must not be echoed.
        let session = Uuid::parse_str(session.trim_end_matches('/'))
            .map_err(|_| "join string: the path is not a session id (UUID)".to_string())?;
        Ok(Join {
            relay,
            session,
            token,
        })
    }

    /// `sockrelay://HOST:PORT/SESSION#TOKEN` (the token as given), or
    /// `sockrelays://…` for a TLS relay.
    pub fn format(relay: &RelayAddr, session: &Uuid, token: &Token) -> String {
        let scheme = if relay.tls {
            JOIN_SCHEME_TLS
        } else {
            JOIN_SCHEME
        };
        format!(
            "{scheme}{}/{session}#{}",
            relay.authority(),
            String::from_utf8_lossy(token.expose())
        )
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
    /// Origin: the token was generated (no token given): print it, and
    /// the join string, with the session id.
    pub token_generated: bool,
    /// Origin: limits on dests and channels.
    pub limits: Limits,
    /// Keepalive and dead-link detection.
    pub liveness: Liveness,
    /// Issue 11: the agent guard, --lifetime, -- COMMAND, socket mode.
    pub agent: Box<agent_glue::AgentOptions>,
    /// How to reach the relay: TLS options and the HTTP proxy.
    pub net: NetOptions,
}

/// When to ping the relay and when to give the link up
/// (`--keepalive`, `--dead-after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Ping after this much silence from the relay.
    pub keepalive: Duration,
    /// Silent (or not reading) this long: dead. Longer than `keepalive`.
    pub dead_after: Duration,
    /// How long channels wait for a lost link to come back (mux v2
    /// resume); zero: no resume, channels close with the link.
    pub resume_window: Duration,
    /// `--channel-window`: the largest flow-control window we grant a
    /// channel per direction (a channel starts at `mux::INITIAL_WINDOW`
    /// and grows while its socket keeps up), hence the most we buffer for
    /// one channel, and the most the peer retains for it.
    pub channel_window: u32,
}

impl Default for Liveness {
    fn default() -> Liveness {
        Liveness {
            keepalive: KEEPALIVE,
            dead_after: DEAD_AFTER,
            resume_window: crate::mux::DEFAULT_RESUME_WINDOW,
            channel_window: crate::mux::DEFAULT_MAX_WINDOW,
        }
    }
}

/// `--ca-file`, `--tls-server-name`, `--tls-pin`, `--tls-cert/--tls-key`
/// and `--proxy`, as given (files are read when the client starts).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetOptions {
    pub ca_file: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub tls_pin: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// `--proxy http://[USER:PASS@]HOST:PORT` (else the environment).
    pub proxy: Option<String>,
}

impl NetOptions {
    pub fn any_tls(&self) -> bool {
        self.ca_file.is_some()
            || self.tls_server_name.is_some()
            || self.tls_pin.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
    }

    /// The TLS client options (pins parsed).
    #[cfg(feature = "tls")]
    pub fn tls_options(&self) -> Result<crate::tls::ClientTlsOptions, String> {
        let pins = match &self.tls_pin {
            Some(p) => crate::tls::pin::parse_pins(p).map_err(|e| format!("--tls-pin: {e}"))?,
            None => Vec::new(),
        };
        Ok(crate::tls::ClientTlsOptions {
            ca_file: self.ca_file.clone(),
            server_name: self.tls_server_name.clone(),
            pins,
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        })
    }
}

/// Why a run ended with a failure (the binaries exit 1 with this text).
#[derive(Debug)]
pub enum Error {
    /// The relay refused us for good (e.g. 403, 409 for an origin); the
    /// text is the relay's answer.
    Refused(String),
    /// An origin could not get its first session from the relay (the
    /// user is waiting for the eval lines, so it does not retry).
    Unreachable { relay: String, why: String },
    /// A system call failed: what we were doing, and the OS error.
    Os {
        what: &'static str,
        err: std::io::Error,
    },
    /// The dest's private socket could not be set up.
    Socket(listen::ListenError),
    /// The end-to-end layer failed locally (not a peer's bad message).
    E2e {
        stage: &'static str,
        err: e2e::E2eError,
    },
    /// The origin refused this dest (`--allow-dest`); its reason.
    RefusedByOrigin(String),
    /// Any other local failure, said in words.
    Local(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(s) => write!(f, "relay refused: {s}"),
            Error::Unreachable { relay, why } => write!(f, "relay {relay}: {why}"),
            Error::Os { what, err } => write!(f, "{what}: {err}"),
            Error::Socket(e) => e.fmt(f),
            Error::E2e { stage, err } => write!(f, "end-to-end {stage}: {err}"),
            Error::RefusedByOrigin(why) => write!(f, "origin refused this dest: {why}"),
            Error::Local(s) => f.write_str(s),
        }
    }
}
impl std::error::Error for Error {}

/// Bounded exponential backoff with full jitter: attempt `n` waits a
/// uniform random time in `[0, min(BACKOFF_MAX, BACKOFF_MIN * 2^n)]`, so
/// clients that lost the same relay at the same instant spread their
/// reconnects over the whole interval instead of arriving in lockstep
/// (AWS Architecture Blog, "Exponential Backoff And Jitter").
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Upper bound of the next delay.
    ceiling: Duration,
    rng: Prng,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::with_rng(Prng::from_os())
    }
}

impl Backoff {
    /// A backoff drawing its jitter from `rng` (tests pass a seeded one).
    pub fn with_rng(rng: Prng) -> Backoff {
        Backoff {
            ceiling: BACKOFF_MIN,
            rng,
        }
    }

    /// The upper bound of the delay [`Backoff::next_delay`] returns next.
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// The delay to wait now (uniform in `[0, ceiling]`); the ceiling of
    /// the following one doubles, capped at [`BACKOFF_MAX`].
    pub fn next_delay(&mut self) -> Duration {
        // ceiling <= 10 s: its nanoseconds fit a u64 with room for + 1.
        let span = self.ceiling.as_nanos() as u64 + 1;
        let d = Duration::from_nanos(self.rng.next_u64() % span);
        self.ceiling = (self.ceiling * 2).min(BACKOFF_MAX);
        d
    }

    pub fn reset(&mut self) {
        self.ceiling = BACKOFF_MIN;
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
    /// A deterministic generator (tests). A zero seed is replaced, since
    /// xorshift would stay at zero forever.
    pub fn from_seed(seed: u64) -> Prng {
        Prng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

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

    /// A second generator seeded from this one (for a connection's masks).
    pub fn fork(&mut self) -> Prng {
        Prng(self.next_u64() | 1)
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
        let a = RelayAddr::from_url("wss://relay.example").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.tls),
            ("relay.example", 443, true)
        );
        assert_eq!(a.url(), "wss://relay.example:443");
        assert!(!RelayAddr::from_url("ws://h:1").unwrap().tls);
        assert!(RelayAddr::from_url("http://h:1").is_err());
        assert!(RelayAddr::from_url("wss://h:1/x").is_err());
        assert!(RelayAddr::from_url("ws://h:0").is_err());
        assert!(RelayAddr::from_url("ws://h:1/x").is_err());
        assert!(RelayAddr::from_url("ws://:1").is_err());
    }

    #[test]
    fn backoff_doubles_to_cap() {
        let mut b = Backoff::with_rng(Prng::from_seed(7));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let c = b.ceiling();
            ceilings.push(c.as_millis());
            let d = b.next_delay();
            assert!(d <= c, "{d:?} above its ceiling {c:?}");
        }
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
        b.reset();
        assert_eq!(b.ceiling(), BACKOFF_MIN);
        assert!(b.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn backoff_jitter_is_full_and_seeded() {
        // Same seed, same delays: the jitter comes only from the rng.
        let run = |seed| {
            let mut b = Backoff::with_rng(Prng::from_seed(seed));
            (0..12).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        // At the cap, 2000 draws cover [0, 10 s] roughly uniformly: every
        // tenth of the interval is hit, and the mean is near 5 s.
        let mut b = Backoff::with_rng(Prng::from_seed(1));
        for _ in 0..8 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), BACKOFF_MAX);
        let mut buckets = [0u32; 10];
        let mut sum = 0.0;
        for _ in 0..2000 {
            let d = b.next_delay();
            assert!(d <= BACKOFF_MAX);
            let i = ((d.as_secs_f64() / BACKOFF_MAX.as_secs_f64()) * 10.0) as usize;
            buckets[i.min(9)] += 1;
            sum += d.as_secs_f64();
        }
        assert!(buckets.iter().all(|&n| n > 120), "{buckets:?}");
        let mean = sum / 2000.0;
        assert!((4.5..5.5).contains(&mean), "mean {mean}");
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token::new(b"supersecret".to_vec());
        assert!(!format!("{t:?}").contains("supersecret"));
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.255.0.1".parse().unwrap()));
        assert!(!c.contains("127.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        // Dual-stack relays report IPv4 peers as mapped IPv6 addresses.
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert_eq!(Cidr::parse("10.1.2.3/8").unwrap(), c);
        assert_eq!(c.to_string(), "10.0.0.0/8");
        let h = Cidr::parse("127.0.0.1").unwrap();
        assert!(h.contains("127.0.0.1".parse().unwrap()));
        assert!(!h.contains("127.0.0.2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Cidr::parse("::/0")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
        assert!(Cidr::parse("[::1]/128").is_ok());
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits() {
        let l = Limits::default();
        assert_eq!(l.refuse_channel(1 << 40, 1 << 20), None);
        assert_eq!(l.refuse_dest("garbage"), None);
        let l = Limits {
            max_channels: Some(3),
            max_concurrent: Some(2),
            allow_dest: vec![
                Cidr::parse("10.0.0.0/8").unwrap(),
                Cidr::parse("::1").unwrap(),
            ],
        };
        assert_eq!(l.refuse_channel(0, 1), None);
        assert_eq!(l.refuse_channel(1, 2).unwrap(), "max-concurrent 2 reached");
        assert_eq!(l.refuse_channel(3, 0).unwrap(), "max-channels 3 reached");
        assert_eq!(l.refuse_dest("10.9.8.7:5000"), None);
        assert_eq!(l.refuse_dest("[::1]:5000"), None);
        assert_eq!(l.refuse_dest("[::ffff:10.0.0.1]:5000"), None);
        assert_eq!(
            l.refuse_dest("127.0.0.1:5000").unwrap(),
            "address 127.0.0.1 not in --allow-dest"
        );
        assert_eq!(
            l.refuse_dest("[::ffff:127.0.0.1]:5000").unwrap(),
            "address 127.0.0.1 not in --allow-dest"
        );
        assert!(l.refuse_dest("").unwrap().contains("did not report"));
    }

    #[test]
    fn join_strings() {
        let id: Uuid = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
        let relay = RelayAddr {
            host: "::1".into(),
            port: 8080,
            tls: false,
        };
        let s = Join::format(&relay, &id, &Token::new(b"Tok-en_1".to_vec()));
        assert_eq!(
            s,
            "sockrelay://[::1]:8080/67e55044-10b1-426f-9247-bb680e5fe0c8#Tok-en_1"
        );
        let j = Join::parse(&format!("  {s}\n")).unwrap();
        assert_eq!(j.relay, relay);
        assert_eq!(j.session, id);
        assert_eq!(j.token.unwrap().expose(), b"Tok-en_1");
        let j = Join::parse(&format!("sockrelay://h:1/{id}")).unwrap();
        assert!(j.token.is_none());
        assert!(!j.relay.tls);
        assert_eq!(j.relay.host, "h");
        // Over TLS the scheme says so, and round-trips.
        let tls_relay = RelayAddr {
            host: "relay.example".into(),
            port: 443,
            tls: true,
        };
        let s = Join::format(&tls_relay, &id, &Token::new(b"t".to_vec()));
        assert_eq!(s, format!("sockrelays://relay.example:443/{id}#t"));
        let j = Join::parse(&s).unwrap();
        assert_eq!(j.relay, tls_relay);
        assert!(is_join_string(&s));
        assert!(Join::parse(&format!("sockrelay://h:1/{id}#"))
            .unwrap()
            .token
            .is_none());
        for bad in [
            "ws://h:1/x#secret",
            "sockrelay://h:1#secret",
            "sockrelay://h:0/67e55044-10b1-426f-9247-bb680e5fe0c8#secret",
            "sockrelay://h:1/nope#secret",
            "sockrelay:///67e55044-10b1-426f-9247-bb680e5fe0c8#secret",
        ] {
            let e = Join::parse(bad).unwrap_err();
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
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
