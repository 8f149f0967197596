//! The relay's event loop: sockets, readiness, the timer heap and the
//! buffer pool. What a session is, who pairs with whom, which frames are
//! forwarded and who is closed with what is decided by the sans-IO core
//! (`relay::session`, `relay::liveness`); this loop feeds it events and
//! carries out its actions. Beside this file:
//!
//! - `accept.rs`: limits at accept (graceful 503), EMFILE backoff;
//! - `http.rs`: a pending connection's request, routes, upgrades;
//! - `forward.rs`: the zero-copy forwarding path (pooled buffer, in-place
//!   unmasking and header rewrite, `writev` of byte ranges);
//! - `closing.rs`: departures handed to the core, its actions, close
//!   frames, FIN and linger, removal;
//! - `signals.rs`: SIGHUP reloads, and the SIGTERM drain (`move`, 1001
//!   once each session's queued data is out, `--drain-timeout`).

use super::api::{self, Route};
use super::liveness::{Liveness, Policy, Verdict};
use super::metrics::{Gauges, Metrics, Reject};
use super::pool::{Buf, Classes, Pool, Seg, Sizer, MAX_SEGS};
use super::session::{self, Action, Departure, Forwarding, Leaving, Member, Registry, SessionKey};
use super::sock::RelaySock;
use super::{Config, ListenRole};
use crate::control::{self, close, Control};
use crate::sys::{self, Signal, Signals};
use crate::timer::Timers;
use crate::ws::endpoint::{self, Limits, PongSlot};
use crate::ws::frame::{self, Decoder, Event, FrameHeader, OpCode, Role};
use crate::ws::handshake;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::HashSet;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use uuid::Uuid;

mod accept;
mod closing;
mod forward;
mod http;
mod signals;

use signals::load_origin_keys;

const SIGNAL_TOKEN: Token = Token(usize::MAX);
/// Listener tokens count down from here.
const LISTENER_TOKEN_BASE: usize = usize::MAX - 1;
/// How long a closing connection may take to say goodbye.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long a connection refused at accept (503 at the connection or
/// pending limit) may take to read its answer while we drain its request.
const REFUSE_LINGER: Duration = Duration::from_millis(500);
/// Refused connections draining at once; past it a refusal is one
/// best-effort write and a close (an accept flood must not pin sockets).
const MAX_REFUSING: usize = 1024;
/// After accept() fails for lack of file descriptors, wait this long.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The caps of the shared WebSocket endpoint policy (`ws::endpoint`) on
/// relay-originated bytes queued toward one connection (pongs, control
/// pings): a pong waits while 8 KiB are queued, and past 16 KiB the
/// connection is considered abusive.
const CONTROL_LIMITS: Limits = Limits::relay();
/// On shutdown, once every connection has been closed (close frame and
/// FIN sent), how long after the signal the relay still waits for the
/// clients' FINs before it exits (it exits earlier once all are gone).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(900);
/// While shutting down, how often the loop looks at what has drained.
const DRAIN_TICK: Duration = Duration::from_millis(50);
const READ_CHUNK: usize = 4096;

/// A mio token that carries a slab key and the generation of the
/// connection that owns it, so an event for a dead connection is never
/// applied to a new one that reused its slab slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnToken {
    pub key: usize,
    pub generation: u32,
}

// A token packs the generation in the high 32 bits of a `usize`; on a
// 32-bit target the two would collide.
const _: () = assert!(usize::BITS == 64, "ConnToken packing needs a 64-bit usize");

impl ConnToken {
    pub fn to_token(self) -> Token {
        Token(((self.generation as usize) << 32) | (self.key & 0xffff_ffff))
    }
    pub fn from_token(t: Token) -> ConnToken {
        ConnToken {
            key: t.0 & 0xffff_ffff,
            generation: (t.0 >> 32) as u32,
        }
    }
}

struct Listener {
    sock: TcpListener,
    addr: SocketAddr,
    role: ListenRole,
}

enum State {
    /// Waiting for a complete HTTP request.
    Pending { req: Vec<u8> },
    /// Attached to a session.
    Open { member: Member, session: SessionKey },
    /// Saying goodbye: flush `ctrl`, send FIN, read until EOF or `until`.
    Closing { fin_sent: bool },
}

/// How an open connection is ending, recorded so its pending output is
/// flushed to the peer before the session learns of it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// A close frame with this code and reason.
    Closed(u16, String),
    /// It broke the protocol; close it with this code and reason.
    Failed(u16, String),
    /// EOF or a read error without a close frame.
    Vanished(String),
}

/// Inbound side of an open connection: buffer, decoder, forwarding state.
struct Inbound {
    buf: Option<Box<Buf>>,
    /// `buf.data[..filled]` holds bytes read from the socket.
    filled: usize,
    /// `buf.data[..parsed]` has been through the decoder.
    parsed: usize,
    /// Bytes of `buf.segs[0]` already written to the peer.
    seg_off: usize,
    decoder: Decoder,
    /// Whether the current message / frame is forwarded, and to which
    /// pairing epoch (decided by the session core).
    fwd: Forwarding,
    /// An incomplete header or control frame kept while the buffer is
    /// back in the pool (at most `MAX_CONTROL_FRAME_LEN` bytes).
    stash: Option<Box<[u8]>>,
    /// Which buffer size this direction borrows (kept while idle).
    sizer: Sizer,
}

struct Conn {
    sock: RelaySock,
    generation: u32,
    addr: SocketAddr,
    listener_role: ListenRole,
    state: State,
    readable: bool,
    writable: bool,
    /// The last readiness event said the peer has sent FIN.
    peer_fin: bool,
    /// Signs of life and the keepalive (see `liveness`).
    live: Liveness,
    /// The deadline of this connection's one live timer entry.
    next_check: Instant,
    inb: Option<Inbound>,
    ending: Option<Ending>,
    /// Relay-originated bytes toward this connection, written only at
    /// frame boundaries of the forwarded stream.
    ctrl: Vec<u8>,
    ctrl_pos: usize,
    /// Its close state (shared endpoint policy): no pong once a close was
    /// received or sent.
    policy: endpoint::Policy,
    /// The pong owed for its latest ping (RFC 6455 §5.5.3: one, however
    /// many pings came), boxed so that a connection owes nothing costs 8
    /// bytes; moved into `ctrl` when the stream toward it is between
    /// frames and `ctrl` has room.
    pong: Option<Box<PongSlot>>,
    /// The forwarded stream toward this connection stopped inside a frame.
    fwd_mid_frame: bool,
    /// Refused at accept (counted in `Server::refusing` until removed).
    refused: bool,
}

pub struct Server {
    cfg: Config,
    poll: Poll,
    listeners: Vec<Listener>,
    signals: Option<Signals>,
    conns: Slab<Conn>,
    sessions: Registry,
    timers: Timers<(Instant, usize, u32)>,
    pool: Pool,
    metrics: Metrics,
    next_generation: u32,
    now: Instant,
    accept_paused_until: Option<Instant>,
    last_accept_warning: Option<Instant>,
    pending_count: usize,
    /// Connections refused at accept, still draining.
    refusing: usize,
    origin_keys: Option<HashSet<Vec<u8>>>,
    /// `--tls-cert/--tls-key`: every connection speaks TLS (reloaded on
    /// SIGHUP; connections keep the configuration they started with).
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::ServerTls>,
    /// SIGTERM: when it came, and the `--drain-timeout` deadline.
    shutting_down: Option<(Instant, Instant)>,
    /// Connections whose removal is deferred to the end of the event batch.
    dead: Vec<usize>,
    /// Connections to pump once the current event is handled: their
    /// buffer was drained by someone else (e.g. their peer left), and with
    /// edge-triggered readiness no new event would wake them.
    wake: Vec<(usize, u32)>,
}

type Step = io::Result<()>;

impl Server {
    /// Bind every listening address. Port 0 picks a free port; see
    /// `local_addrs`.
    pub fn bind(cfg: Config) -> io::Result<Server> {
        Server::with_listeners(cfg, Vec::new())
    }

    /// As [`Server::bind`], but serve `inherited` listening sockets (systemd
    /// socket activation, see `activation`) instead of binding
    /// `cfg.listen`, when there are any. They must be non-blocking.
    pub fn with_listeners(
        cfg: Config,
        inherited: Vec<(std::net::TcpListener, ListenRole)>,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut socks = Vec::new();
        if inherited.is_empty() {
            for (addr, role) in &cfg.listen {
                let sock = TcpListener::bind(*addr).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?;
                socks.push((sock, *role));
            }
        } else {
            for (sock, role) in inherited {
                socks.push((TcpListener::from_std(sock), role));
            }
        }
        let mut listeners = Vec::new();
        for (i, (mut sock, role)) in socks.into_iter().enumerate() {
            poll.registry().register(
                &mut sock,
                Token(LISTENER_TOKEN_BASE - i),
                Interest::READABLE,
            )?;
            let addr = sock.local_addr()?;
            listeners.push(Listener { sock, addr, role });
        }
        let origin_keys = match &cfg.origin_keys {
            Some(path) => Some(load_origin_keys(path)?),
            None => None,
        };
        #[cfg(feature = "tls")]
        let tls = match &cfg.tls {
            Some(files) => Some(
                crate::tls::ServerTls::load(files.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
            ),
            None => None,
        };
        #[cfg(feature = "tls")]
        if let Some(f) = &cfg.tls {
            let mtls = match &f.client_ca {
                Some(ca) => format!(", client certificates required ({})", ca.display()),
                None => String::new(),
            };
            log::info!(
                "TLS on every listener: certificate {}{mtls}",
                f.cert.display()
            );
        }
        // Whatever a client sends right behind its request (up to the
        // header cap) must fit a buffer at the upgrade.
        let mut cfg = cfg;
        cfg.buffer_bytes = cfg.buffer_bytes.max(super::MIN_BUFFER_BYTES);
        let classes = Classes::new(super::MIN_BUFFER_BYTES, cfg.buffer_bytes);
        let pool = Pool::new(classes, cfg.buffer_memory_bytes, cfg.pool_keep_bytes);
        let grace = cfg.origin_grace;
        Ok(Server {
            cfg,
            poll,
            listeners,
            signals: None,
            conns: Slab::new(),
            sessions: Registry::with_origin_grace(grace),
            timers: Timers::new(),
            pool,
            metrics: Metrics::default(),
            next_generation: 1,
            now: Instant::now(),
            accept_paused_until: None,
            last_accept_warning: None,
            pending_count: 0,
            refusing: 0,
            origin_keys,
            #[cfg(feature = "tls")]
            tls,
            shutting_down: None,
            dead: Vec::new(),
            wake: Vec::new(),
        })
    }

    pub fn local_addrs(&self) -> Vec<(SocketAddr, ListenRole)> {
        self.listeners.iter().map(|l| (l.addr, l.role)).collect()
    }

    /// Deliver SIGINT/SIGTERM (shutdown) and SIGHUP (reload) to this loop.
    pub fn install_signals(&mut self) -> io::Result<()> {
        let mut signals = Signals::install()?;
        self.poll
            .registry()
            .register(signals.source(), SIGNAL_TOKEN, Interest::READABLE)?;
        self.signals = Some(signals);
        Ok(())
    }

    /// Run until a shutdown signal has been handled.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            self.now = Instant::now();
            let mut timeout = self.timers.timeout(self.now);
            if let Some(at) = self.accept_paused_until {
                let d = at.saturating_duration_since(self.now);
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            let drain = self
                .shutting_down
                .map(|(_, deadline)| deadline.min(self.now + DRAIN_TICK));
            for at in [drain, self.sessions.next_expiry()].into_iter().flatten() {
                let d = at.saturating_duration_since(self.now);
                timeout = Some(timeout.map_or(d, |t| t.min(d)));
            }
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.now = Instant::now();
            for event in events.iter() {
                let token = event.token();
                if token == SIGNAL_TOKEN {
                    self.on_signal();
                } else if token.0 > LISTENER_TOKEN_BASE - self.listeners.len()
                    && token.0 <= LISTENER_TOKEN_BASE
                {
                    self.accept(LISTENER_TOKEN_BASE - token.0);
                } else {
                    let t = ConnToken::from_token(token);
                    // A stale event for a connection that died (and maybe
                    // whose slot now holds another) is dropped here.
                    let live = self
                        .conns
                        .get(t.key)
                        .is_some_and(|c| c.generation == t.generation);
                    if !live {
                        continue;
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.conns[t.key].readable = true;
                    }
                    if event.is_read_closed() || event.is_error() {
                        self.conns[t.key].peer_fin = true;
                    }
                    if event.is_writable() || event.is_write_closed() || event.is_error() {
                        self.conns[t.key].writable = true;
                        // TLS: ciphertext the socket did not take before.
                        let _ = self.conns[t.key].sock.flush_pending();
                    }
                    self.service(t.key);
                }
                self.reap();
            }
            if let Some(at) = self.accept_paused_until {
                if self.now >= at {
                    self.accept_paused_until = None;
                    for i in 0..self.listeners.len() {
                        self.accept(i);
                    }
                }
            }
            self.run_timers();
            self.expire_sessions();
            self.reap();
            if let Some((started, deadline)) = self.shutting_down {
                self.drain();
                self.reap();
                // Everyone has been sent its close and FIN: a client that
                // does not close its end does not hold the relay beyond
                // the grace.
                let said_goodbye = self
                    .conns
                    .iter()
                    .all(|(_, c)| matches!(c.state, State::Closing { fin_sent: true }));
                let done = self.conns.is_empty()
                    || self.now >= deadline
                    || (said_goodbye && self.now >= started + SHUTDOWN_GRACE);
                if done {
                    log::info!(
                        "relay stopped after {:.1} s ({} connections dropped at exit)",
                        self.now.saturating_duration_since(started).as_secs_f64(),
                        self.conns.len()
                    );
                    return Ok(());
                }
            }
        }
    }

    // ----- per-connection work ----------------------------------------

    /// React to readiness of connection `key`.
    fn service(&mut self, key: usize) {
        let result = match self.conns[key].state {
            State::Pending { .. } => self.read_request(key),
            State::Open { .. } => self.pump(key),
            State::Closing { .. } => self.pump_closing(key),
        };
        if let Err(e) = result {
            #[cfg(feature = "tls")]
            if crate::tls::tls_error(&e).is_some() {
                // A TLS alert, garbage before the handshake, a client
                // certificate refused: say why, once per connection.
                log::info!("connection {} closed: {e}", self.conns[key].addr);
            }
            log::debug!("connection {} dropped: {e}", self.conns[key].addr);
            self.drop_conn(key, &format!("i/o error: {e}"));
            return;
        }
        // Writing to `key` may have drained its peer's buffer: the peer,
        // paused for backpressure, gets no new readiness edge, so pump it.
        if let Some(peer) = self.conns.get(key).and_then(|_| self.peer(key)) {
            if let Err(e) = self.pump(peer) {
                log::debug!("connection {} dropped: {e}", self.conns[peer].addr);
                self.drop_conn(peer, &format!("i/o error: {e}"));
            }
        }
    }

    /// Peer of an open connection, if paired.
    fn peer(&self, key: usize) -> Option<usize> {
        match self.conns.get(key)?.state {
            State::Open { member, session } => self.sessions.peer(session, member),
            _ => None,
        }
    }

    /// Deregister and free connections dropped during the last event, and
    /// pump the ones that were woken.
    fn reap(&mut self) {
        while let Some((key, generation)) = self.wake.pop() {
            let live = self
                .conns
                .get(key)
                .is_some_and(|c| c.generation == generation);
            if live && matches!(self.conns[key].state, State::Open { .. }) {
                if let Err(e) = self.pump(key) {
                    self.drop_conn(key, &format!("i/o error: {e}"));
                }
            }
        }
        while let Some(key) = self.dead.pop() {
            if let Some(mut conn) = self.conns.try_remove(key) {
                let _ = self.poll.registry().deregister(conn.sock.tcp_mut());
                if conn.refused {
                    self.refusing -= 1;
                }
                if let Some(mut inb) = conn.inb.take() {
                    if let Some(buf) = inb.buf.take() {
                        self.pool.put(buf);
                    }
                }
            }
        }
    }

    // ----- timers and signals -----------------------------------------

    fn run_timers(&mut self) {
        while let Some((at, key, generation)) = self.timers.pop_due(self.now) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.generation != generation || conn.next_check != at {
                continue; // stale entry
            }
            match conn.state {
                State::Pending { .. } => {
                    self.metrics.reject(Reject::HandshakeTimeout);
                    log::info!("{}: no complete request in time; closing", conn.addr);
                    let bytes = handshake::error_response(408, "request timeout");
                    self.close_with_bytes(key, &bytes, CLOSE_LINGER);
                }
                State::Closing { .. } => self.drop_conn(key, "close timed out"),
                State::Open { .. } => {
                    let unacked = unacked_bytes(conn.sock.tcp());
                    let backlogged = conn.readable && conn.ending.is_none();
                    let policy = Policy {
                        ping_interval: self.cfg.ping_interval,
                        pong_timeout: self.cfg.pong_timeout,
                    };
                    let next = match conn.live.check(self.now, policy, backlogged, unacked) {
                        Verdict::Dead(idle) => {
                            self.metrics.ping_timeouts += 1;
                            log::info!(
                                "{}: no answer for {idle:?} ({unacked} bytes unacknowledged); dropping",
                                conn.addr
                            );
                            self.drop_conn(key, "ping timeout");
                            continue;
                        }
                        Verdict::Wait(next) => next,
                        Verdict::Ping(next) => {
                            self.queue_ping(key, b"");
                            if let Err(e) = self.write_to(key) {
                                self.drop_conn(key, &format!("write error: {e}"));
                                continue;
                            }
                            next
                        }
                    };
                    let conn = &mut self.conns[key];
                    conn.next_check = next;
                    self.timers.schedule(next, (next, key, generation));
                }
            }
            self.reap();
        }
    }

    /// Sessions whose vanished origin did not come back in time end.
    fn expire_sessions(&mut self) {
        if self.sessions.next_expiry().is_none_or(|at| at > self.now) {
            return;
        }
        let mut actions = Vec::new();
        self.sessions.expire(self.now, &mut actions);
        for action in &actions {
            if let Action::Close { conn, .. } = action {
                if let Some(c) = self.conns.get(*conn) {
                    log::info!(
                        "dest {}: its origin did not come back within --origin-grace; closing",
                        c.addr
                    );
                }
            }
        }
        self.apply(actions);
    }

    fn sessions_members(&self) -> usize {
        self.conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Open { .. }))
            .count()
    }

    fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            sessions: self.sessions.len(),
            sessions_paired: self.sessions.paired(),
            sessions_awaiting_origin: self.sessions.awaiting_origin(),
            buffers_in_use: self.pool.in_use,
            buffers_free: self.pool.free_count(),
            buffer_bytes_in_use: self.pool.lent_bytes(),
            buffer_bytes_free: self.pool.free_bytes(),
            ..Gauges::default()
        };
        for (_, c) in self.conns.iter() {
            match c.state {
                State::Pending { .. } => g.conns_pending += 1,
                State::Open {
                    member: Member::Origin,
                    ..
                } => g.conns_origin += 1,
                State::Open {
                    member: Member::Dest,
                    ..
                } => g.conns_dest += 1,
                State::Closing { .. } => g.conns_closing += 1,
            }
        }
        g
    }
}

/// Bytes written to `sock` that its peer has not acknowledged yet
/// (SIOCOUTQ, tcp(7)); 0 if the kernel will not say.
fn unacked_bytes(sock: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) on a socket writes one `int` through the
    // pointer, which points at a live, writable `c_int`; the fd is owned by
    // `sock`, open for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    if rc == 0 {
        u32::try_from(queued).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_carries_key_and_generation() {
        let t = ConnToken {
            key: 7,
            generation: 3,
        };
        assert_eq!(ConnToken::from_token(t.to_token()), t);
        // A reused slot with a new generation yields a different token, so a
        // stale event (old generation) no longer matches the occupant.
        let reused = ConnToken {
            key: 7,
            generation: 4,
        };
        assert_ne!(t.to_token(), reused.to_token());
        assert!(t.to_token().0 < LISTENER_TOKEN_BASE - 64);
    }
}
