//! The relay's event loop. Sockets, readiness, timers; the protocol work is
//! in `ws::handshake`, `ws::frame` and `api`.
//!
//! Forwarding (the hot path): a connection's inbound bytes land in a pooled
//! buffer; the frame decoder unmasks payload in place; each data frame's
//! masked client header is overwritten, in place, by the shorter unmasked
//! server header ending right where the payload starts; the resulting byte
//! ranges ("segments") are written to the peer with one `writev`. Payload
//! bytes are never copied.

use super::api::{self, Route};
use super::metrics::{Gauges, Metrics, Reject};
use super::pool::{Buf, Pool, Seg, MAX_SEGS};
use super::{Config, ListenRole};
use crate::control::{self, close, Control};
use crate::sys::{self, Signal, Signals};
use crate::timer::Timers;
use crate::ws::frame::{self, Decoder, Event, FrameHeader, OpCode, Role};
use crate::ws::handshake;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::{HashMap, HashSet};
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};
use uuid::Uuid;

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
/// Relay-originated bytes queued toward one connection (pongs, control
/// pings, close frames, HTTP answers) past which it is considered abusive.
const MAX_CTRL_BYTES: usize = 16 << 10;
/// Time allowed to drain remaining connections on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(900);
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Origin,
    Dest,
}

enum State {
    /// Waiting for a complete HTTP request.
    Pending { req: Vec<u8> },
    /// Attached to a session.
    Open { side: Side, session: usize },
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
    /// pairing epoch (a message started for one dest never reaches the next).
    fwd_message: bool,
    fwd_frame: bool,
    fwd_epoch: u32,
    /// An incomplete header or control frame kept while the buffer is
    /// back in the pool (at most `MAX_CONTROL_FRAME_LEN` bytes).
    stash: Option<Box<[u8]>>,
}

struct Conn {
    sock: TcpStream,
    generation: u32,
    addr: SocketAddr,
    listener_role: ListenRole,
    state: State,
    readable: bool,
    writable: bool,
    /// The last readiness event said the peer has sent FIN.
    peer_fin: bool,
    /// The last sign of life: bytes read from it, or forwarded bytes it
    /// accepted (a receiver busy with one long frame sends nothing, and
    /// our ping to it waits for the frame's end). A peer that stops
    /// reading stops accepting once its receive window and our send buffer
    /// are full, so this cannot keep a dead peer alive for long.
    alive_at: Instant,
    keepalive_sent: bool,
    /// The deadline of this connection's one live timer entry.
    next_check: Instant,
    inb: Option<Inbound>,
    ending: Option<Ending>,
    /// Relay-originated bytes toward this connection, written only at
    /// frame boundaries of the forwarded stream.
    ctrl: Vec<u8>,
    ctrl_pos: usize,
    /// The forwarded stream toward this connection stopped inside a frame.
    fwd_mid_frame: bool,
    /// Refused at accept (counted in `Server::refusing` until removed).
    refused: bool,
    /// Bytes in its socket's send queue at the last liveness check: when
    /// it shrinks, the peer accepted bytes, so it is alive.
    unacked_seen: u32,
}

struct Session {
    id: Uuid,
    origin: usize,
    dest: Option<usize>,
    admission: [u8; 20],
    /// Incremented at each pairing and unpairing.
    epoch: u32,
    /// Sequence number of the last pairing-change ping to the origin, and
    /// whether the origin answered it: its data is forwarded only after it
    /// has seen the current pairing.
    change_seq: u32,
    origin_acked: bool,
}

pub struct Server {
    cfg: Config,
    poll: Poll,
    listeners: Vec<Listener>,
    signals: Option<Signals>,
    conns: Slab<Conn>,
    sessions: Slab<Session>,
    by_id: HashMap<Uuid, usize>,
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
    shutting_down: Option<Instant>,
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
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        for (i, (addr, role)) in cfg.listen.iter().enumerate() {
            let mut sock = TcpListener::bind(*addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            poll.registry().register(
                &mut sock,
                Token(LISTENER_TOKEN_BASE - i),
                Interest::READABLE,
            )?;
            let addr = sock.local_addr()?;
            listeners.push(Listener {
                sock,
                addr,
                role: *role,
            });
        }
        let origin_keys = match &cfg.origin_keys {
            Some(path) => Some(load_origin_keys(path)?),
            None => None,
        };
        // Whatever a client sends right behind its request (up to the
        // header cap) must fit a buffer at the upgrade.
        let mut cfg = cfg;
        cfg.buffer_bytes = cfg.buffer_bytes.max(super::MIN_BUFFER_BYTES);
        let pool = Pool::new(cfg.buffer_bytes, cfg.pool_keep);
        Ok(Server {
            cfg,
            poll,
            listeners,
            signals: None,
            conns: Slab::new(),
            sessions: Slab::new(),
            by_id: HashMap::new(),
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
            if let Some(at) = self.shutting_down {
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
            self.reap();
            if let Some(at) = self.shutting_down {
                if self.conns.is_empty() || self.now >= at {
                    log::info!(
                        "relay stopped ({} connections dropped at exit)",
                        self.conns.len()
                    );
                    return Ok(());
                }
            }
        }
    }

    // ----- accepting --------------------------------------------------

    fn accept(&mut self, index: usize) {
        if self.accept_paused_until.is_some() || self.shutting_down.is_some() {
            return;
        }
        loop {
            let (mut sock, addr) = match self.listeners[index].sock.accept() {
                Ok(pair) => pair,
                Err(e) if sys::is_transient(&e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: the pending connection stays in
                    // the backlog; retrying at once would spin. Pause.
                    self.metrics.accept_errors += 1;
                    let warn = self
                        .last_accept_warning
                        .is_none_or(|t| self.now.duration_since(t) >= Duration::from_secs(1));
                    if warn {
                        log::warn!("accept failed: {e}; pausing accepts for {ACCEPT_BACKOFF:?}");
                        self.last_accept_warning = Some(self.now);
                    }
                    self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
                    return;
                }
            };
            self.metrics.accepted += 1;
            let over = if self.conns.len() >= self.cfg.max_connections {
                Some((Reject::ConnectionLimit, "connection limit reached"))
            } else if self.pending_count >= self.cfg.max_pending {
                Some((Reject::PendingLimit, "too many pending handshakes"))
            } else {
                None
            };
            if let Some((metric, reason)) = over {
                self.metrics.reject(metric);
                log::warn!("refusing {addr}: {reason}");
                let answer = handshake::error_response(503, reason);
                if self.refusing >= MAX_REFUSING {
                    // Best effort: a fresh socket's send buffer is empty.
                    let _ = sock.write(&answer);
                    continue;
                }
                // Closing over unread request bytes would send RST, which
                // may destroy the answer: shut down writing, drain, close.
                if let Some(key) = self.insert_conn(sock, addr, index) {
                    self.refusing += 1;
                    self.conns[key].refused = true;
                    self.close_with_bytes(key, &answer, REFUSE_LINGER);
                }
                continue;
            }
            let Some(key) = self.insert_conn(sock, addr, index) else {
                continue;
            };
            let deadline = self.conns[key].next_check;
            self.timers
                .schedule(deadline, (deadline, key, self.conns[key].generation));
            log::debug!("connection from {addr}");
        }
    }

    /// Register an accepted socket as a pending connection.
    fn insert_conn(
        &mut self,
        mut sock: TcpStream,
        addr: SocketAddr,
        index: usize,
    ) -> Option<usize> {
        let _ = sock.set_nodelay(true);
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let deadline = self.now + self.cfg.handshake_timeout;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let token = ConnToken { key, generation }.to_token();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("cannot register connection from {addr}: {e}");
            return None;
        }
        entry.insert(Conn {
            sock,
            generation,
            addr,
            listener_role: self.listeners[index].role,
            state: State::Pending { req: Vec::new() },
            readable: false,
            writable: false,
            peer_fin: false,
            alive_at: self.now,
            keepalive_sent: false,
            next_check: deadline,
            inb: None,
            ending: None,
            ctrl: Vec::new(),
            ctrl_pos: 0,
            fwd_mid_frame: false,
            refused: false,
            unacked_seen: 0,
        });
        self.pending_count += 1;
        Some(key)
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

    fn read_request(&mut self, key: usize) -> Step {
        let conn = &mut self.conns[key];
        let State::Pending { req, .. } = &mut conn.state else {
            return Ok(());
        };
        let mut chunk = [0u8; READ_CHUNK];
        let old_len = req.len();
        // FIN right behind a complete request is what health checkers do
        // (`printf 'GET /healthz …' | nc -N`): parse what came first.
        let mut eof = false;
        loop {
            // Read no further than one byte past the header cap: enough to
            // know a request is too large.
            let room = (handshake::MAX_HEADER_BYTES + 1).saturating_sub(req.len());
            if room == 0 {
                break;
            }
            let want = room.min(chunk.len());
            match conn.sock.read(&mut chunk[..want]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => req.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // Re-parse only when the new bytes may end the header: a client
        // trickling one byte per packet must not make parsing quadratic.
        if !handshake::request_may_be_complete(req, old_len) {
            if eof {
                self.drop_conn(key, "closed before completing its request");
            }
            return Ok(());
        }
        match handshake::parse_request(req) {
            Ok(None) => {
                if eof {
                    self.drop_conn(key, "closed before completing its request");
                }
                Ok(())
            }
            Err(reject) => {
                let metric = if reject.status == 431 {
                    Reject::HeadersTooLarge
                } else {
                    Reject::BadRequest
                };
                self.refuse(key, reject.status, reject.reason, metric);
                Ok(())
            }
            Ok(Some((request, consumed))) => {
                let rest = req[consumed..].to_vec();
                self.on_request(key, request, rest)
            }
        }
    }

    fn refuse(&mut self, key: usize, status: u16, reason: &str, metric: Reject) {
        self.metrics.reject(metric);
        let conn = &self.conns[key];
        log::info!("refused {}: {status} {reason}", conn.addr);
        let bytes = handshake::error_response(status, reason);
        self.close_with_bytes(key, &bytes, CLOSE_LINGER);
    }

    fn on_request(&mut self, key: usize, request: handshake::Request, rest: Vec<u8>) -> Step {
        let route = match api::route(&request) {
            Ok(r) => r,
            Err(refusal) => {
                self.refuse(key, refusal.status, refusal.reason, refusal.metric);
                return Ok(());
            }
        };
        let role = self.conns[key].listener_role;
        match route {
            Route::Health => {
                let body = handshake::plain_response(200, "text/plain; charset=utf-8", b"ok\n");
                self.close_with_bytes(key, &body, CLOSE_LINGER);
            }
            Route::Metrics => {
                let text = self.metrics.render(&self.gauges());
                let body =
                    handshake::plain_response(200, "text/plain; version=0.0.4", text.as_bytes());
                self.close_with_bytes(key, &body, CLOSE_LINGER);
            }
            Route::Origin { .. } if role == ListenRole::Dest => {
                self.refuse(
                    key,
                    404,
                    "this address serves dests only",
                    Reject::WrongListener,
                );
            }
            Route::Dest { .. } if role == ListenRole::Origin => {
                self.refuse(
                    key,
                    404,
                    "this address serves origins only",
                    Reject::WrongListener,
                );
            }
            Route::Origin {
                proposed,
                admission,
                compat,
                origin_key,
            } => self.open_origin(
                key, &request, proposed, &admission, compat, origin_key, rest,
            )?,
            Route::Dest { id, admission } => self.open_dest(key, &request, id, &admission, rest)?,
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn open_origin(
        &mut self,
        key: usize,
        request: &handshake::Request,
        proposed: Option<Uuid>,
        admission: &[u8],
        compat: bool,
        origin_key: Option<Vec<u8>>,
        rest: Vec<u8>,
    ) -> Step {
        if let Some(keys) = &self.origin_keys {
            if !origin_key.is_some_and(|k| keys.contains(&k)) {
                self.refuse(
                    key,
                    403,
                    "origin key not accepted by this relay",
                    Reject::OriginNotAllowed,
                );
                return Ok(());
            }
        }
        let digest = api::admission_digest(admission);
        let id = match proposed {
            Some(id) => {
                if let Some(&session_key) = self.by_id.get(&id) {
                    if !api::ct_eq(&self.sessions[session_key].admission, &digest) {
                        self.refuse(key, 409, "session id in use", Reject::IdInUse);
                        return Ok(());
                    }
                    // The same origin (it knows the admission value) is back,
                    // e.g. after a network drop: it replaces its old connection.
                    log::info!(
                        "session {id}: origin reconnected from {}",
                        self.conns[key].addr
                    );
                    self.end_session(
                        session_key,
                        close::REPLACED,
                        "replaced by a new origin connection",
                        close::ORIGIN_RECONNECTED,
                        "origin reconnected; join again",
                    );
                }
                id
            }
            None => loop {
                let id = Uuid::new_v4();
                if !self.by_id.contains_key(&id) {
                    break id;
                }
            },
        };
        if self.sessions.len() >= self.cfg.max_sessions {
            self.refuse(key, 503, "session limit reached", Reject::SessionLimit);
            return Ok(());
        }
        let session_key = self.sessions.insert(Session {
            id,
            origin: key,
            dest: None,
            admission: digest,
            epoch: 0,
            change_seq: 0,
            origin_acked: true,
        });
        self.by_id.insert(id, session_key);
        self.metrics.sessions_created += 1;
        log::info!("session {id}: created by origin {}", self.conns[key].addr);
        let mut out = upgrade_answer(request, &id, Control::Session { id });
        if compat {
            frame::encode_frame(
                &mut out,
                true,
                OpCode::Binary,
                None,
                &api::compat_start_message(&id),
            );
        }
        self.become_open(key, Side::Origin, session_key, &out, rest)
    }

    fn open_dest(
        &mut self,
        key: usize,
        request: &handshake::Request,
        id: Uuid,
        admission: &[u8],
        rest: Vec<u8>,
    ) -> Step {
        let Some(&session_key) = self.by_id.get(&id) else {
            self.refuse(
                key,
                404,
                "no such session (is the origin connected?)",
                Reject::UnknownSession,
            );
            return Ok(());
        };
        let digest = api::admission_digest(admission);
        if !api::ct_eq(&self.sessions[session_key].admission, &digest) {
            log::warn!(
                "session {id}: dest {} presented a wrong admission value",
                self.conns[key].addr
            );
            self.refuse(
                key,
                403,
                "wrong admission value (token)",
                Reject::WrongAdmission,
            );
            return Ok(());
        }
        if self.sessions[session_key].dest.is_some() {
            self.refuse(key, 409, "session already has a dest", Reject::DestTaken);
            return Ok(());
        }
        let session = &mut self.sessions[session_key];
        session.dest = Some(key);
        session.epoch = session.epoch.wrapping_add(1);
        session.change_seq = session.change_seq.wrapping_add(1);
        session.origin_acked = false;
        let seq = session.change_seq;
        let origin = session.origin;
        self.metrics.pairings += 1;
        let dest_addr = self.conns[key].addr;
        let origin_addr = self.conns[origin].addr;
        log::info!("session {id}: dest {dest_addr} joined origin {origin_addr}");
        let origin_addr = origin_addr.to_string();
        let dest_addr = dest_addr.to_string();
        let out = upgrade_answer(
            request,
            &id,
            Control::PeerJoined {
                seq: Some(seq),
                addr: &origin_addr,
            },
        );
        self.queue_ping(
            origin,
            &Control::PeerJoined {
                seq: Some(seq),
                addr: &dest_addr,
            }
            .to_vec(),
        );
        self.become_open(key, Side::Dest, session_key, &out, rest)?;
        self.write_to(origin).map(|_| ())
    }

    fn become_open(
        &mut self,
        key: usize,
        side: Side,
        session: usize,
        out: &[u8],
        rest: Vec<u8>,
    ) -> Step {
        self.pending_count -= 1;
        let max = self.cfg.max_message_bytes;
        let mut inb = Inbound {
            buf: None,
            filled: 0,
            parsed: 0,
            seg_off: 0,
            decoder: Decoder::new(Role::Server, max),
            fwd_message: false,
            fwd_frame: false,
            fwd_epoch: 0,
            stash: None,
        };
        if !rest.is_empty() {
            // Frames the client sent right behind its request (at most
            // the header cap, copied once at the upgrade).
            let mut buf = self.pool.get();
            buf.data[..rest.len()].copy_from_slice(&rest);
            inb.filled = rest.len();
            inb.buf = Some(buf);
        }
        let now = self.now;
        let interval = self.cfg.ping_interval;
        let conn = &mut self.conns[key];
        conn.state = State::Open { side, session };
        conn.inb = Some(inb);
        conn.ctrl.extend_from_slice(out);
        conn.alive_at = now;
        conn.next_check = now + interval;
        let entry = (conn.next_check, key, conn.generation);
        self.timers.schedule(entry.0, entry);
        self.write_to(key)?;
        self.pump(key)
    }

    /// Peer of an open connection, if paired.
    fn peer(&self, key: usize) -> Option<usize> {
        match self.conns[key].state {
            State::Open {
                side: Side::Origin,
                session,
            } => self.sessions[session].dest,
            State::Open {
                side: Side::Dest,
                session,
            } => Some(self.sessions[session].origin),
            _ => None,
        }
    }

    /// Move bytes for connection `key` until nothing more can be done now:
    /// read, decode, forward to the peer, and flush our own frames to `key`.
    fn pump(&mut self, key: usize) -> Step {
        loop {
            if !matches!(self.conns[key].state, State::Open { .. }) {
                return Ok(());
            }
            self.compact(key);
            let mut progress = self.read_inbound(key)?;
            progress |= self.decode(key);
            if let Some(peer) = self.peer(key) {
                progress |= self.write_to(peer)?;
            }
            self.write_to(key)?;
            // Space freed by the peer's progress lets us read again.
            progress |= self.compact(key) && self.conns[key].readable;
            if !progress {
                // Only once nothing more can be decoded or written does an
                // ending connection leave: bytes it sent before its close
                // or EOF (beyond what one round of segments holds) still
                // reach the peer.
                if self.try_finish_ending(key) {
                    return Ok(());
                }
                break;
            }
        }
        self.release_idle_buffer(key);
        Ok(())
    }

    /// Read into `key`'s buffer while there is room. Returns whether bytes came.
    fn read_inbound(&mut self, key: usize) -> io::Result<bool> {
        let conn = &mut self.conns[key];
        if !conn.readable || conn.ending.is_some() {
            return Ok(false);
        }
        let inb = conn
            .inb
            .as_mut()
            .expect("open connection has inbound state");
        let buf = inb.buf.get_or_insert_with(|| self.pool.get());
        if let Some(stash) = inb.stash.take() {
            buf.data[..stash.len()].copy_from_slice(&stash);
            inb.filled = stash.len();
        }
        if inb.filled == buf.data.len() {
            return Ok(false);
        }
        loop {
            let room = buf.data.len() - inb.filled;
            match conn.sock.read(&mut buf.data[inb.filled..]) {
                Ok(0) => {
                    conn.ending = Some(Ending::Vanished("closed the connection".into()));
                    return Ok(true);
                }
                Ok(n) => {
                    inb.filled += n;
                    conn.alive_at = self.now;
                    conn.keepalive_sent = false;
                    // A short read drained the socket (epoll(7)): skip the
                    // read that would only say EAGAIN; the next arrival
                    // raises a new edge. Unless the peer's FIN is already
                    // in: no edge will follow it, so read on to EOF.
                    if n < room && !conn.peer_fin {
                        conn.readable = false;
                    }
                    if n < room && conn.peer_fin {
                        continue;
                    }
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    conn.ending = Some(Ending::Vanished(format!("read error: {e}")));
                    return Ok(true);
                }
            }
        }
    }

    /// Run the decoder over `key`'s unparsed bytes, turning data frames into
    /// output segments for the peer and handling control frames. Returns
    /// whether anything was consumed.
    fn decode(&mut self, key: usize) -> bool {
        let mut progress = false;
        loop {
            let State::Open { side, session } = self.conns[key].state else {
                return progress;
            };
            let conn = &mut self.conns[key];
            if matches!(conn.ending, Some(Ending::Closed(..) | Ending::Failed(..))) {
                return progress;
            }
            let Some(inb) = conn.inb.as_mut() else {
                return progress;
            };
            let Some(buf) = inb.buf.as_mut() else {
                return progress;
            };
            if inb.parsed == inb.filled || buf.segs.len() >= MAX_SEGS {
                return progress;
            }
            let at = inb.parsed;
            let (event, n) = match inb.decoder.decode(&mut buf.data[at..inb.filled]) {
                Ok(Some(item)) => item,
                Ok(None) => return progress,
                Err(e) => {
                    self.metrics.protocol_errors += 1;
                    let code = e.close_code();
                    let reason = e.to_string();
                    log::info!(
                        "{} broke the protocol: {reason} (closing with {code})",
                        conn.addr
                    );
                    self.fail(key, code, &reason);
                    return true;
                }
            };
            inb.parsed += n;
            progress = true;
            match event {
                Event::DataHeader(h) => {
                    let pairing = &self.sessions[session];
                    let target = match side {
                        Side::Origin => pairing.dest.filter(|_| pairing.origin_acked),
                        Side::Dest => Some(pairing.origin),
                    };
                    if h.opcode != OpCode::Continuation {
                        inb.fwd_message = target.is_some();
                        inb.fwd_epoch = pairing.epoch;
                    }
                    inb.fwd_frame =
                        inb.fwd_message && target.is_some() && inb.fwd_epoch == pairing.epoch;
                    if inb.fwd_frame {
                        let out = FrameHeader { mask: None, ..h };
                        let hl = out.encoded_len();
                        let end = at + n;
                        out.encode(&mut buf.data[end - hl..end]);
                        push_seg(&mut buf.segs, end - hl, end, h.payload_len == 0);
                        self.metrics.frames_forwarded += 1;
                    } else {
                        self.metrics.frames_dropped += 1;
                    }
                }
                Event::Payload {
                    len, frame_done, ..
                } => {
                    // The target may have left since the frame began: the
                    // rest of the frame then goes nowhere.
                    let pairing = &self.sessions[session];
                    let target_alive = side == Side::Dest || pairing.dest.is_some();
                    inb.fwd_frame &= target_alive && inb.fwd_epoch == pairing.epoch;
                    if inb.fwd_frame {
                        push_seg(&mut buf.segs, at, at + len, frame_done);
                        match side {
                            Side::Origin => self.metrics.bytes_origin_to_dest += len as u64,
                            Side::Dest => self.metrics.bytes_dest_to_origin += len as u64,
                        }
                    }
                }
                Event::Control(h) => {
                    let plen = h.payload_len as usize;
                    let payload_at = at + n - plen;
                    let mut payload = [0u8; frame::MAX_CONTROL_PAYLOAD];
                    payload[..plen].copy_from_slice(&buf.data[payload_at..at + n]);
                    let payload = &payload[..plen];
                    match h.opcode {
                        OpCode::Ping => {
                            let mut pong = Vec::with_capacity(2 + plen);
                            frame::encode_frame(&mut pong, true, OpCode::Pong, None, payload);
                            self.queue_ctrl(key, &pong);
                        }
                        OpCode::Pong if side == Side::Origin => {
                            self.on_origin_pong(session, payload);
                        }
                        OpCode::Close => {
                            // The decoder validated the payload (code and
                            // UTF-8, RFC 6455 §7.1.5) before handing it over.
                            let (code, reason) = match frame::parse_close(payload) {
                                Ok(Some((code, reason))) => (code, reason.to_string()),
                                _ => (close::NO_STATUS, String::new()),
                            };
                            self.conns[key].ending = Some(Ending::Closed(code, reason));
                            return true;
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn on_origin_pong(&mut self, session: usize, payload: &[u8]) {
        let pairing = &mut self.sessions[session];
        if pairing.origin_acked {
            return;
        }
        if control::acked_seq(payload) == Some(pairing.change_seq) {
            pairing.origin_acked = true;
        }
    }

    /// Write to connection `peer`: first any relay frames (at a frame
    /// boundary), then the peer's pending segments. Returns whether any
    /// bytes were written.
    fn write_to(&mut self, peer: usize) -> io::Result<bool> {
        let mut progress = false;
        loop {
            let conn = &mut self.conns[peer];
            if !conn.writable {
                return Ok(progress);
            }
            // Relay frames go out when the forwarded stream is between
            // frames, or when one of them is already half written.
            if conn.ctrl_pos < conn.ctrl.len() && (conn.ctrl_pos > 0 || !conn.fwd_mid_frame) {
                match conn.sock.write(&conn.ctrl[conn.ctrl_pos..]) {
                    Ok(n) => {
                        if n < conn.ctrl.len() - conn.ctrl_pos {
                            // A short write filled the socket (epoll(7)).
                            conn.writable = false;
                        }
                        conn.ctrl_pos += n;
                        progress |= n > 0;
                        if conn.ctrl_pos == conn.ctrl.len() {
                            conn.ctrl = Vec::new();
                            conn.ctrl_pos = 0;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        conn.writable = false;
                        return Ok(progress);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // `peer` failed, not whoever is writing to it: let `peer`'s
                        // own pump end it.
                        conn.writable = false;
                        conn.ending
                            .get_or_insert(Ending::Vanished(format!("write error: {e}")));
                        self.wake.push((peer, conn.generation));
                        return Ok(progress);
                    }
                }
            }
            let Some(key) = self.peer(peer) else {
                return Ok(progress);
            };
            let (sender, receiver) = match self.conns.get2_mut(key, peer) {
                Some(pair) => pair,
                None => return Ok(progress),
            };
            let Some(inb) = sender.inb.as_mut() else {
                return Ok(progress);
            };
            let Some(buf) = inb.buf.as_mut() else {
                return Ok(progress);
            };
            if buf.segs.is_empty() {
                return Ok(progress);
            }
            let mut slices = [IoSlice::new(&[]); MAX_SEGS];
            let count = buf.segs.len();
            for (i, seg) in buf.segs.iter().enumerate() {
                let start = seg.start as usize + if i == 0 { inb.seg_off } else { 0 };
                slices[i] = IoSlice::new(&buf.data[start..seg.end as usize]);
            }
            let wanted: usize = slices[..count].iter().map(|s| s.len()).sum();
            match receiver.sock.write_vectored(&slices[..count]) {
                Ok(mut n) => {
                    if n < wanted {
                        // A short write filled the socket (epoll(7)): the
                        // next write would only say EAGAIN.
                        receiver.writable = false;
                    }
                    if n > 0 {
                        progress = true;
                        receiver.alive_at = self.now;
                    }
                    let mut done = 0;
                    for seg in buf.segs.iter() {
                        let left = (seg.end - seg.start) as usize
                            - if done == 0 { inb.seg_off } else { 0 };
                        if n >= left {
                            n -= left;
                            done += 1;
                            inb.seg_off = 0;
                            receiver.fwd_mid_frame = !seg.ends_frame;
                        } else {
                            inb.seg_off += n;
                            if n > 0 {
                                receiver.fwd_mid_frame = true;
                            }
                            break;
                        }
                    }
                    buf.segs.drain(..done);
                    if n == 0 && done == 0 && count > 0 && inb.seg_off == 0 {
                        // Nothing written though the socket said writable.
                        return Ok(progress);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    receiver.writable = false;
                    return Ok(progress);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The receiver failed: let its own pump end it.
                    receiver.writable = false;
                    receiver
                        .ending
                        .get_or_insert(Ending::Vanished(format!("write error: {e}")));
                    self.wake.push((peer, receiver.generation));
                    return Ok(progress);
                }
            }
        }
    }

    /// Reclaim buffer space once the segments have gone out.
    /// Returns whether it made room in a buffer that was full.
    fn compact(&mut self, key: usize) -> bool {
        let Some(inb) = self.conns[key].inb.as_mut() else {
            return false;
        };
        let Some(buf) = inb.buf.as_mut() else {
            return false;
        };
        if !buf.segs.is_empty() || inb.parsed == 0 {
            return false;
        }
        let was_full = inb.filled == buf.data.len();
        if inb.parsed == inb.filled {
            inb.parsed = 0;
            inb.filled = 0;
        } else if was_full {
            // Only an incomplete header or control frame (at most 139
            // bytes) can be left unparsed here: payload is always consumed.
            buf.data.copy_within(inb.parsed..inb.filled, 0);
            inb.filled -= inb.parsed;
            inb.parsed = 0;
        }
        was_full
    }

    fn release_idle_buffer(&mut self, key: usize) {
        let Some(inb) = self.conns[key].inb.as_mut() else {
            return;
        };
        let Some(buf) = inb.buf.as_ref() else {
            return;
        };
        let unparsed = inb.filled - inb.parsed;
        if !buf.segs.is_empty() || unparsed > frame::MAX_CONTROL_FRAME_LEN {
            return;
        }
        // An idle connection keeps at most an incomplete header or control
        // frame, in a small allocation of its own, not a pooled buffer: a
        // client trickling one byte must not pin a whole buffer.
        if unparsed > 0 {
            inb.stash = Some(buf.data[inb.parsed..inb.filled].into());
        }
        inb.filled = 0;
        inb.parsed = 0;
        if let Some(buf) = inb.buf.take() {
            self.pool.put(buf);
        }
    }

    /// Once an ending connection's forwarded output has drained, detach it
    /// from its session and say goodbye. Returns true if it ended.
    fn try_finish_ending(&mut self, key: usize) -> bool {
        let conn = &self.conns[key];
        let Some(ending) = conn.ending.clone() else {
            return false;
        };
        let pending = conn
            .inb
            .as_ref()
            .and_then(|i| i.buf.as_ref())
            .is_some_and(|b| !b.segs.is_empty());
        let peer_alive = self
            .peer(key)
            .is_some_and(|peer| self.conns[peer].ending.is_none());
        if pending && peer_alive {
            return false;
        }
        let State::Open { side, session } = conn.state else {
            return false;
        };
        let addr = conn.addr;
        let id = self.sessions[session].id;
        let who = match side {
            Side::Origin => "origin",
            Side::Dest => "dest",
        };
        match &ending {
            Ending::Closed(code, reason) => {
                log::info!("session {id}: {who} {addr} closed ({code} {reason})")
            }
            Ending::Failed(code, reason) => {
                log::info!("session {id}: {who} {addr} closed by the relay ({code} {reason})")
            }
            Ending::Vanished(why) => log::info!("session {id}: {who} {addr} {why}"),
        }
        match (side, &ending) {
            // A close frame from the origin ends the session; the dest gets
            // the origin's code and reason (1005, "no code", becomes 1000).
            (Side::Origin, Ending::Closed(code, reason)) => {
                let code = no_status_as_normal(*code);
                self.end_session(session, code, reason, code, reason);
            }
            (Side::Origin, Ending::Failed(code, reason)) => {
                self.end_session(
                    session,
                    *code,
                    reason,
                    close::ORIGIN_GONE,
                    "origin gone (protocol error)",
                );
            }
            // `end_session` drops a vanished origin without a close frame.
            (Side::Origin, Ending::Vanished(_)) => {
                self.end_session(
                    session,
                    close::INTERNAL_ERROR,
                    "",
                    close::ORIGIN_GONE,
                    "origin gone",
                );
            }
            (Side::Dest, Ending::Closed(code, reason) | Ending::Failed(code, reason)) => {
                let code = no_status_as_normal(*code);
                self.detach_dest(session, key, code, reason);
                self.close_conn(key, code, reason);
            }
            (Side::Dest, Ending::Vanished(why)) => {
                self.detach_dest(session, key, close::ABNORMAL, why);
                self.drop_conn(key, "vanished");
            }
        }
        true
    }

    /// The dest `d` leaves session `s`; the origin is told and the session
    /// waits for a new dest.
    fn detach_dest(&mut self, session_key: usize, dest: usize, code: u16, reason: &str) {
        let session = &mut self.sessions[session_key];
        if session.dest != Some(dest) {
            return;
        }
        session.dest = None;
        session.epoch = session.epoch.wrapping_add(1);
        session.change_seq = session.change_seq.wrapping_add(1);
        session.origin_acked = false;
        let seq = session.change_seq;
        let origin = session.origin;
        if let Some(inb) = self.conns[origin].inb.as_mut() {
            // Frames the origin had queued for the departed dest. The origin
            // may have stopped reading for them: wake it.
            if let Some(buf) = inb.buf.as_mut() {
                buf.segs.clear();
                inb.seg_off = 0;
            }
        }
        self.wake.push((origin, self.conns[origin].generation));
        self.conns[dest].state = State::Closing { fin_sent: false };
        // A message the dest had begun forwarding (fragments sent, final
        // one never) leaves the origin inside a message: the next dest's
        // first frame would break RFC 6455 §5.4 there.
        let dest_mid_message = self.conns[dest]
            .inb
            .as_ref()
            .is_some_and(|i| i.fwd_message && i.decoder.in_message());
        if self.conns[origin].fwd_mid_frame || dest_mid_message {
            // The dest left inside a frame or message toward the origin: it
            // can never be completed, so the origin's stream is unusable.
            self.end_session(
                session_key,
                close::INTERNAL_ERROR,
                "peer vanished inside a frame",
                close::ORIGIN_GONE,
                "origin gone",
            );
            return;
        }
        let payload = Control::PeerLeft {
            seq: Some(seq),
            code,
            reason,
        }
        .to_vec();
        self.queue_ping(origin, &payload);
        let _ = self.write_to(origin);
    }

    /// End session `s`: close its origin with `origin_code` and its dest
    /// (if any) with `dest_code`.
    fn end_session(
        &mut self,
        session_key: usize,
        origin_code: u16,
        origin_reason: &str,
        dest_code: u16,
        dest_reason: &str,
    ) {
        let session = self.sessions.remove(session_key);
        self.by_id.remove(&session.id);
        for (member, code, reason) in [
            (Some(session.origin), origin_code, origin_reason),
            (session.dest, dest_code, dest_reason),
        ] {
            let Some(member) = member else { continue };
            if !matches!(self.conns[member].state, State::Open { .. }) {
                continue;
            }
            if let Some(inb) = self.conns[member].inb.as_mut() {
                if let Some(buf) = inb.buf.as_mut() {
                    buf.segs.clear();
                    inb.seg_off = 0;
                }
            }
            self.conns[member].state = State::Closing { fin_sent: false };
            match self.conns[member].ending {
                Some(Ending::Vanished(_)) => self.drop_conn(member, "vanished"),
                _ => self.close_conn(member, code, reason),
            }
        }
    }

    /// A protocol violation by `key`: close it with `code`, and let its
    /// session react as to any departure.
    fn fail(&mut self, key: usize, code: u16, reason: &str) {
        // Frames decoded before the violation still reach the peer; then
        // `try_finish_ending` closes it with `code`.
        let conn = &mut self.conns[key];
        conn.readable = false;
        conn.ending = Some(Ending::Failed(code, reason.to_string()));
    }

    /// Send a close frame (once the stream toward `key` is between frames),
    /// then FIN, then wait briefly for the peer's FIN.
    fn close_conn(&mut self, key: usize, code: u16, reason: &str) {
        let conn = &mut self.conns[key];
        if conn.fwd_mid_frame && conn.ctrl_pos == 0 {
            self.drop_conn(key, "closed inside a frame");
            return;
        }
        let mut out = Vec::with_capacity(4 + reason.len());
        frame::encode_close(&mut out, None, code, reason);
        self.close_with_bytes(key, &out, CLOSE_LINGER);
    }

    /// Queue `bytes` (a close frame or an HTTP answer), then close.
    fn close_with_bytes(&mut self, key: usize, bytes: &[u8], linger: Duration) {
        let conn = &mut self.conns[key];
        if matches!(conn.state, State::Pending { .. }) {
            self.pending_count -= 1;
        }
        let until = self.now + linger;
        conn.state = State::Closing { fin_sent: false };
        conn.ctrl.extend_from_slice(bytes);
        conn.next_check = until;
        self.timers.schedule(until, (until, key, conn.generation));
        if let Some(mut inb) = conn.inb.take() {
            if let Some(buf) = inb.buf.take() {
                self.pool.put(buf);
            }
        }
        if let Err(e) = self.pump_closing(key) {
            log::debug!("closing {}: {e}", self.conns[key].addr);
            self.drop_conn(key, "write error while closing");
        }
    }

    fn pump_closing(&mut self, key: usize) -> Step {
        self.write_to(key)?;
        let conn = &mut self.conns[key];
        let State::Closing { fin_sent, .. } = &mut conn.state else {
            return Ok(());
        };
        if conn.ctrl.is_empty() && !*fin_sent {
            *fin_sent = true;
            let _ = conn.sock.shutdown(Shutdown::Write);
        }
        if *fin_sent {
            // Discard whatever the client still sends until its FIN.
            let mut sink = [0u8; READ_CHUNK];
            loop {
                match conn.sock.read(&mut sink) {
                    Ok(0) => {
                        self.drop_conn(key, "closed");
                        return Ok(());
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(_) => {
                        self.drop_conn(key, "closed");
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    fn queue_ctrl(&mut self, key: usize, bytes: &[u8]) {
        let conn = &mut self.conns[key];
        if conn.ctrl.len() + bytes.len() > MAX_CTRL_BYTES {
            // It sends pings faster than it reads the pongs.
            log::info!("{} floods control frames; dropping it", conn.addr);
            conn.ending = Some(Ending::Vanished("flooded control frames".into()));
            return;
        }
        conn.ctrl.extend_from_slice(bytes);
    }

    fn queue_ping(&mut self, key: usize, payload: &[u8]) {
        let mut out = Vec::with_capacity(2 + payload.len());
        frame::encode_frame(&mut out, true, OpCode::Ping, None, payload);
        self.queue_ctrl(key, &out);
    }

    /// Remove a connection without ceremony (at the end of the batch).
    fn drop_conn(&mut self, key: usize, why: &str) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let State::Open { side, session } = conn.state {
            conn.ending = Some(Ending::Vanished(why.to_string()));
            // Let the session react; this re-enters with the state changed.
            conn.state = State::Closing { fin_sent: true };
            match side {
                Side::Origin => {
                    if self.sessions.contains(session) && self.sessions[session].origin == key {
                        self.end_session(
                            session,
                            close::INTERNAL_ERROR,
                            why,
                            close::ORIGIN_GONE,
                            "origin gone",
                        );
                    }
                }
                Side::Dest => {
                    if self.sessions.contains(session) {
                        self.detach_dest(session, key, close::ABNORMAL, why);
                    }
                }
            }
        }
        let conn = &mut self.conns[key];
        if matches!(conn.state, State::Pending { .. }) {
            self.pending_count -= 1;
        }
        conn.state = State::Closing { fin_sent: true };
        if !self.dead.contains(&key) {
            self.dead.push(key);
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
                let _ = self.poll.registry().deregister(&mut conn.sock);
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
                    let unacked = unacked_bytes(&conn.sock);
                    if unacked < conn.unacked_seen {
                        // The peer accepted bytes since the last check
                        // (a receiver in the middle of one long frame, whose
                        // window opens by less than it takes to raise a
                        // writable edge): it is alive.
                        conn.alive_at = self.now;
                    }
                    conn.unacked_seen = unacked;
                    if conn.readable && conn.ending.is_none() {
                        // Bytes are waiting that we chose not to read yet
                        // (backpressure from its peer): it is alive.
                        conn.alive_at = self.now;
                        conn.keepalive_sent = false;
                    }
                    let idle = self.now.saturating_duration_since(conn.alive_at);
                    let interval = self.cfg.ping_interval;
                    let limit = interval + self.cfg.pong_timeout;
                    if idle >= limit {
                        self.metrics.ping_timeouts += 1;
                        log::info!(
                            "{}: no answer for {idle:?} ({unacked} bytes unacknowledged); dropping",
                            conn.addr
                        );
                        self.drop_conn(key, "ping timeout");
                        continue;
                    }
                    let next = if idle >= interval {
                        if !conn.keepalive_sent {
                            conn.keepalive_sent = true;
                            self.queue_ping(key, b"");
                            if let Err(e) = self.write_to(key) {
                                self.drop_conn(key, &format!("write error: {e}"));
                                continue;
                            }
                        }
                        self.conns[key].alive_at + limit
                    } else {
                        self.conns[key].alive_at + interval
                    };
                    let conn = &mut self.conns[key];
                    conn.next_check = next;
                    self.timers.schedule(next, (next, key, generation));
                }
            }
            self.reap();
        }
    }

    fn on_signal(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        match signals.drain() {
            Some(Signal::Terminate) => self.shutdown(),
            Some(Signal::Reload) => self.reload(),
            None => {}
        }
    }

    fn reload(&mut self) {
        let Some(path) = self.cfg.origin_keys.clone() else {
            log::info!("SIGHUP: nothing to reload");
            return;
        };
        match load_origin_keys(&path) {
            Ok(keys) => {
                log::info!(
                    "SIGHUP: reloaded {} origin keys from {}",
                    keys.len(),
                    path.display()
                );
                self.origin_keys = Some(keys);
            }
            Err(e) => log::error!("SIGHUP: keeping the old origin keys: {e}"),
        }
    }

    /// Stop accepting, close every WebSocket with 1001, and let `run`
    /// return once they are gone (or the grace period ends).
    pub fn shutdown(&mut self) {
        if self.shutting_down.is_some() {
            return;
        }
        log::info!("shutting down: closing {} connections", self.conns.len());
        self.shutting_down = Some(self.now + SHUTDOWN_GRACE);
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l.sock);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if !self.conns.contains(key) {
                continue;
            }
            match self.conns[key].state {
                State::Open { .. } => {
                    if let State::Open { session, .. } = self.conns[key].state {
                        if self.sessions.contains(session) {
                            self.end_session(
                                session,
                                close::GOING_AWAY,
                                "relay shutting down",
                                close::GOING_AWAY,
                                "relay shutting down",
                            );
                        }
                    }
                }
                State::Pending { .. } => self.drop_conn(key, "relay shutting down"),
                State::Closing { .. } => {}
            }
        }
        self.reap();
    }

    fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            sessions: self.sessions.len(),
            sessions_paired: self
                .sessions
                .iter()
                .filter(|(_, s)| s.dest.is_some())
                .count(),
            buffers_in_use: self.pool.in_use,
            buffers_free: self.pool.free_count(),
            ..Gauges::default()
        };
        for (_, c) in self.conns.iter() {
            match c.state {
                State::Pending { .. } => g.conns_pending += 1,
                State::Open {
                    side: Side::Origin, ..
                } => g.conns_origin += 1,
                State::Open {
                    side: Side::Dest, ..
                } => g.conns_dest += 1,
                State::Closing { .. } => g.conns_closing += 1,
            }
        }
        g
    }
}

/// The 101 (with the session id header) followed by the relay's first
/// control ping.
fn upgrade_answer(request: &handshake::Request, id: &Uuid, ping: Control<'_>) -> Vec<u8> {
    let key = request.ws_key.as_deref().unwrap_or_default();
    let id_text = id.hyphenated().to_string();
    let mut out = handshake::response_101(key, &[(control::header::SESSION, &id_text)]);
    frame::encode_frame(&mut out, true, OpCode::Ping, None, &ping.to_vec());
    out
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

/// A close frame without a code (1005, never on the wire) is passed on as
/// a normal close.
fn no_status_as_normal(code: u16) -> u16 {
    if code == close::NO_STATUS {
        close::NORMAL
    } else {
        code
    }
}

/// Append a segment, merging it with the previous one when contiguous.
fn push_seg(segs: &mut Vec<Seg>, start: usize, end: usize, ends_frame: bool) {
    if let Some(last) = segs.last_mut() {
        if last.end as usize == start && !last.ends_frame {
            last.end = end as u32;
            last.ends_frame = ends_frame;
            return;
        }
    }
    segs.push(Seg {
        start: start as u32,
        end: end as u32,
        ends_frame,
    });
}

fn load_origin_keys(path: &std::path::Path) -> io::Result<HashSet<Vec<u8>>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot read origin keys {}: {e}", path.display()),
        )
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect())
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

    #[test]
    fn segments_merge_only_within_a_frame() {
        let mut segs = Vec::new();
        push_seg(&mut segs, 2, 4, false); // header
        push_seg(&mut segs, 4, 10, true); // payload ends the frame
        push_seg(&mut segs, 12, 14, false); // next header, after a 2-byte gap
        push_seg(&mut segs, 14, 20, false);
        assert_eq!(
            segs,
            vec![
                Seg {
                    start: 2,
                    end: 10,
                    ends_frame: true
                },
                Seg {
                    start: 12,
                    end: 20,
                    ends_frame: false
                },
            ]
        );
    }
}
