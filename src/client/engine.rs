//! The client event loop shared by origin and dest (one `mio::Poll`).
//!
//! Layers, outermost first: the relay WebSocket ([`WsConn`]) and the relay's
//! control pings; the end-to-end layer (Noise, unless plaintext); the mux
//! ([`Mux`], sans-IO); the unix sockets, one per channel. An *epoch* is one
//! origin–dest pairing: it starts at `peer-joined` and ends when the peer
//! leaves or the WebSocket drops; each epoch has a fresh Noise state, a
//! fresh mux and fresh channel ids, and nothing crosses epochs.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use uuid::Uuid;

use super::agent_glue;
use super::listen::PrivateSocket;
use super::ws::{FlushError, ReadOutcome, WsConn, WsEvent};
use super::*;
use crate::control::{close, header, path, Control};
use crate::mux::{self, ChannelId, Mux};
use crate::sys::{self, Signal, Signals};
use crate::timer::Timers;
use crate::ws::frame::OpCode;

const SIGNALS: Token = Token(1);
const LISTENER: Token = Token(2);
/// WebSocket tokens: this bit plus the connection generation.
const WS_BIT: usize = 1 << 62;
/// Heartbeat check period (a quarter of the ping interval).
const TICKS_PER_INTERVAL: u32 = 4;
/// Hidden knob for tests: the ping interval in milliseconds (the dead-after
/// time stays twice that). Not in `--help`: nobody should need it.
const PING_ENV: &str = "SOCKRELAY_TEST_PING_MS";

/// Channel tokens: epoch generation in the high half, channel id in the
/// low 32 bits. Ids are never reused within an epoch and the generation
/// never repeats, so an event for a dead channel can never reach another.
fn channel_token(epoch: u32, ch: ChannelId) -> Token {
    Token(((epoch as usize) << 32) | ch as usize)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Reconnect(u64),
    ConnectDeadline(u64),
    Tick(u64),
    E2eDeadline(u32),
    PendingExpiry,
    /// Origin: `--lifetime` is over.
    Lifetime,
    /// The agent glue's wake-up (confirmation helpers, the dest's COMMAND).
    Agent,
}

/// End-to-end layer with one API whether or not the feature is built in.
mod e2e {
    use super::Side;
    use uuid::Uuid;

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
        pub fn new(side: Side, token: &[u8], session: &Uuid) -> Result<E2e, String> {
            let s = match side {
                Side::Origin => crate::secure::Side::Origin,
                Side::Dest => crate::secure::Side::Dest,
            };
            crate::secure::Noise::new(s, token, session)
                .map(E2e)
                .map_err(|e| e.to_string())
        }
        pub fn wants_to_send(&self) -> bool {
            self.0.wants_to_send()
        }
        pub fn handshake_out(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
            self.0.handshake_out(out).map_err(|e| e.to_string())
        }
        pub fn handshake_in(&mut self, msg: &[u8]) -> Result<(), String> {
            self.0.handshake_in(msg).map_err(|e| e.to_string())
        }
        pub fn is_established(&self) -> bool {
            self.0.is_established()
        }
        pub fn seal(&mut self, p: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
            self.0.seal(p, out).map_err(|e| e.to_string())
        }
        pub fn open(&mut self, c: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
            self.0.open(c, out).map_err(|e| e.to_string())
        }
    }

    #[cfg(not(feature = "e2e"))]
    impl E2e {
        pub fn new(_: Side, _: &[u8], _: &Uuid) -> Result<E2e, String> {
            Err("built without the e2e feature".into())
        }
        pub fn wants_to_send(&self) -> bool {
            match *self {}
        }
        pub fn handshake_out(&mut self, _: &mut Vec<u8>) -> Result<(), String> {
            match *self {}
        }
        pub fn handshake_in(&mut self, _: &[u8]) -> Result<(), String> {
            match *self {}
        }
        pub fn is_established(&self) -> bool {
            match *self {}
        }
        pub fn seal(&mut self, _: &[u8], _: &mut Vec<u8>) -> Result<(), String> {
            match *self {}
        }
        pub fn open(&mut self, _: &[u8], _: &mut Vec<u8>) -> Result<(), String> {
            match *self {}
        }
    }
}

use e2e::{E2e, SEAL_OVERHEAD};

struct Epoch {
    gen: u32,
    /// None in plaintext mode.
    e2e: Option<E2e>,
    /// Some once the end-to-end handshake is done (at once in plaintext).
    mux: Option<Mux>,
    /// A transport message from the peer authenticated. For the origin this
    /// is the proof that the dest is live: handshake message 1 alone could
    /// be a relay's replay of an earlier dest's (docs/SECURITY.md).
    confirmed: bool,
}

/// One unix connection carrying one channel. Readiness is remembered
/// because polling is edge-triggered and we stop reading for flow control.
pub(super) struct Conn {
    pub(super) sock: UnixStream,
    pub(super) readable: bool,
    pub(super) writable: bool,
    pub(super) read_eof: bool,
    /// The last event reported the peer's FIN or an error: read until EOF
    /// or EAGAIN instead of trusting a short read to mean "drained".
    pub(super) hup: bool,
}

impl Conn {
    /// A freshly connected or accepted unix socket: assume it is ready both
    /// ways until a read or write says otherwise (edge-triggered).
    fn new(sock: UnixStream) -> Conn {
        Conn {
            sock,
            readable: true,
            writable: true,
            read_eof: false,
            hup: false,
        }
    }
}

struct Link {
    ws: WsConn,
    gen: u64,
    last_ping: Instant,
}

/// What ends a run: `Ok` on a signal, `Err` on a fatal refusal.
type Stop = Result<(), Error>;

pub struct Engine {
    opts: Options,
    session: Uuid,
    admission: String,
    poll: Poll,
    timers: Timers<Timer>,
    rng: Prng,
    signals: Signals,
    listener: Option<(PrivateSocket, UnixListener)>,
    link: Option<Link>,
    link_gen: u64,
    backoff: Backoff,
    upgraded_once: bool,
    epoch: Option<Epoch>,
    epoch_gen: u32,
    conns: HashMap<ChannelId, Conn>,
    /// Dest: unix connections waiting for the session (accepted at).
    waiting: VecDeque<(UnixStream, Instant)>,
    /// Channels to service this iteration.
    dirty: Vec<ChannelId>,
    /// Channels that still had input when their read budget ran out.
    again: Vec<ChannelId>,
    /// Some channel stopped reading because of the high-water mark.
    hwm_hit: bool,
    scratch: Vec<u8>,
    plain: Vec<u8>,
    /// Events of one WebSocket read (kept to reuse the allocation).
    ws_events: Vec<WsEvent>,
    stop: Option<Stop>,
    ping_interval: Duration,
    /// The relay's socket may hold more input than one turn's read budget.
    link_read_again: bool,
    /// Origin: channels accepted so far in this run (`--max-channels`).
    channels_accepted: u64,
    /// Origin: a refusal for a dest not in `--allow-dest`, sent right after
    /// the pong that acknowledges its `peer-joined` (the relay forwards
    /// nothing of ours before that pong).
    refusal: Option<Vec<u8>>,
    /// Origin: the current dest was refused (`--allow-dest`); its messages
    /// are expected and dropped. Otherwise a message with no pairing means
    /// the relay is out of step with us (see `on_message`).
    dest_refused: bool,
    /// Origin: the ssh-agent guard (agent_glue), when an agent option is given.
    agent: Option<agent_glue::Glue>,
    /// Dest: `-- COMMAND`, run once the session is ready.
    command: Option<agent_glue::Command>,
}

/// Run origin or dest until a signal (Ok) or a fatal error.
pub fn run(opts: Options) -> Result<(), Error> {
    let mut engine = Engine::new(opts)?;
    engine.run()
}

impl Engine {
    fn new(opts: Options) -> Result<Engine, Error> {
        let local = |what: &str, e: io::Error| Error::Local(format!("{what}: {e}"));
        let session = match (opts.side, opts.session) {
            (_, Some(id)) => id,
            (Side::Origin, None) => Uuid::new_v4(),
            (Side::Dest, None) => return Err(Error::Local("dest needs a session id".into())),
        };
        let admission = admission(&opts.token, &session);
        let poll = Poll::new().map_err(|e| local("epoll", e))?;
        let mut signals = Signals::install().map_err(|e| local("signal handlers", e))?;
        poll.registry()
            .register(signals.source(), SIGNALS, Interest::READABLE)
            .map_err(|e| local("register signals", e))?;
        let listener = if opts.side == Side::Dest {
            let sock = super::listen::listen_with(
                &opts.socket,
                opts.agent.socket_mode,
                opts.agent.socket_group,
            )
            .map_err(|e| Error::Local(e.to_string()))?;
            let std_l = sock
                .listener
                .try_clone()
                .map_err(|e| local("listener", e))?;
            let mut l = UnixListener::from_std(std_l);
            poll.registry()
                .register(&mut l, LISTENER, Interest::READABLE)
                .map_err(|e| local("register listener", e))?;
            log::info!("listening on {}", opts.socket.display());
            Some((sock, l))
        } else {
            if !opts.socket.exists() {
                log::warn!(
                    "{}: does not exist (yet); channels will fail until it does",
                    opts.socket.display()
                );
            }
            None
        };
        let agent = agent_glue::Glue::new(&opts.agent).map_err(Error::Local)?;
        let command = agent_glue::Command::new(&opts.agent);
        Ok(Engine {
            opts,
            session,
            admission,
            poll,
            timers: Timers::new(),
            rng: Prng::from_os(),
            signals,
            listener,
            link: None,
            link_gen: 0,
            backoff: Backoff::default(),
            upgraded_once: false,
            epoch: None,
            epoch_gen: 0,
            conns: HashMap::new(),
            waiting: VecDeque::new(),
            dirty: Vec::new(),
            again: Vec::new(),
            hwm_hit: false,
            scratch: vec![0u8; mux::MAX_DATA_PER_BATCH],
            plain: Vec::new(),
            ws_events: Vec::new(),
            stop: None,
            ping_interval: std::env::var(PING_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .map_or(PING_INTERVAL, Duration::from_millis),
            link_read_again: false,
            channels_accepted: 0,
            refusal: None,
            dest_refused: false,
            agent,
            command,
        })
    }

    fn side(&self) -> Side {
        self.opts.side
    }

    /// No byte from the relay (or none of ours read by it) for this long:
    /// the link is dead.
    fn dead_after(&self) -> Duration {
        self.ping_interval * (DEAD_AFTER.as_millis() / PING_INTERVAL.as_millis()) as u32
    }

    fn run(&mut self) -> Result<(), Error> {
        let mut events = Events::with_capacity(256);
        if let Some(d) = self.opts.agent.lifetime {
            self.timers.schedule(Instant::now() + d, Timer::Lifetime);
        }
        self.connect();
        loop {
            if let Some(stop) = self.stop.take() {
                self.shutdown();
                return stop;
            }
            let now = Instant::now();
            let timeout = if self.again.is_empty() && !self.link_read_again {
                self.timers.timeout(now)
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Local(format!("poll: {e}")));
            }
            self.dirty.append(&mut self.again);
            if std::mem::take(&mut self.link_read_again) {
                self.read_ws(false);
            }
            for ev in events.iter() {
                let hup = ev.is_read_closed() || ev.is_error();
                self.on_event(
                    ev.token(),
                    ev.is_readable() || hup,
                    ev.is_writable() || ev.is_write_closed() || ev.is_error(),
                    hup,
                );
            }
            self.fire_timers();
            self.service_dirty();
            self.flush();
        }
    }

    /// Best-effort goodbye to the relay on a clean stop.
    fn shutdown(&mut self) {
        if let Some(link) = &mut self.link {
            let why = match self.opts.side {
                Side::Origin => "origin exiting",
                Side::Dest => "dest exiting",
            };
            link.ws.close(close::NORMAL, why);
            let _ = link.ws.flush(Instant::now());
        }
        self.end_epoch("exiting");
    }

    fn on_event(&mut self, token: Token, readable: bool, writable: bool, hup: bool) {
        match token {
            SIGNALS => match self.signals.drain() {
                Some(Signal::Terminate)
                    if self
                        .command
                        .as_mut()
                        .is_some_and(|c| c.signal(libc::SIGTERM)) =>
                {
                    log::info!("signal passed on to COMMAND");
                }
                Some(Signal::Reload)
                    if self
                        .command
                        .as_mut()
                        .is_some_and(|c| c.signal(libc::SIGHUP)) => {}
                Some(Signal::Terminate) => {
                    log::info!("terminating on signal");
                    self.stop = Some(Ok(()));
                }
                Some(Signal::Reload) => log::info!("SIGHUP ignored"),
                None => {}
            },
            LISTENER => self.accept(),
            Token(t) if t & WS_BIT != 0 => {
                let gen = (t & !WS_BIT) as u64;
                if self.link.as_ref().is_some_and(|l| l.gen == gen) {
                    if writable {
                        self.flush_ws();
                    }
                    if readable {
                        self.read_ws(hup);
                    }
                }
            }
            Token(t) if t & agent_glue::TOKEN_BIT != 0 => {
                if let Some(g) = &mut self.agent {
                    g.on_event(token, self.poll.registry());
                }
                self.agent_sync();
            }
            Token(t) => {
                let (gen, ch) = ((t >> 32) as u32, t as u32);
                if self.epoch.as_ref().is_some_and(|e| e.gen == gen) {
                    if let Some(c) = self.conns.get_mut(&ch) {
                        c.readable |= readable;
                        c.writable |= writable;
                        c.hup |= hup;
                        self.dirty.push(ch);
                    }
                }
            }
        }
    }

    // ---- relay link ---------------------------------------------------

    fn connect(&mut self) {
        self.link_gen += 1;
        let gen = self.link_gen;
        let addr: Option<SocketAddr> = (self.opts.relay.host.as_str(), self.opts.relay.port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next());
        let Some(addr) = addr else {
            self.link_failed(
                format!("cannot resolve relay host {:?}", self.opts.relay.host),
                None,
            );
            return;
        };
        let path = match self.side() {
            Side::Origin => format!("{}?id={}", path::ORIGIN, self.session),
            Side::Dest => format!("{}?id={}", path::DEST, self.session),
        };
        let headers = [(header::ADMISSION, self.admission.as_str())];
        let authority = self.opts.relay.authority();
        let stall = self.dead_after();
        let mut ws = match WsConn::connect(addr, &authority, &path, &headers, &mut self.rng, stall)
        {
            Ok(ws) => ws,
            Err(e) => {
                self.link_failed(format!("connect to relay {addr}: {e}"), None);
                return;
            }
        };
        if let Err(e) = self.poll.registry().register(
            ws.source(),
            Token(WS_BIT | gen as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.link_failed(format!("register relay socket: {e}"), None);
            return;
        }
        log::debug!("connecting to relay {addr}");
        let now = Instant::now();
        self.link = Some(Link {
            ws,
            gen,
            last_ping: now,
        });
        self.timers
            .schedule(now + CONNECT_TIMEOUT, Timer::ConnectDeadline(gen));
    }

    /// The link is gone or unusable: end the epoch and reconnect after
    /// `delay` (None: the next backoff step). An origin that never got a
    /// session stops instead: its user is waiting for the eval lines.
    fn link_failed(&mut self, why: String, delay: Option<Duration>) {
        if self.command.as_ref().is_some_and(|c| !c.started()) {
            let why = format!("cannot join the session ({why}); not running COMMAND");
            self.stop = Some(Err(Error::Local(why)));
            self.link = None;
            return;
        }
        if self.side() == Side::Origin && !self.upgraded_once {
            let relay = self.opts.relay.authority();
            self.stop = Some(Err(Error::Local(format!("relay {relay}: {why}"))));
            self.link = None;
            return;
        }
        self.drop_link();
        let delay = delay.unwrap_or_else(|| self.backoff.next_delay());
        log::warn!("{why}; reconnecting in {:.1} s", delay.as_secs_f64());
        self.timers
            .schedule(Instant::now() + delay, Timer::Reconnect(self.link_gen));
    }

    fn drop_link(&mut self) {
        if let Some(mut link) = self.link.take() {
            link.ws.queue_control();
            let _ = link.ws.flush(Instant::now());
            let _ = self.poll.registry().deregister(link.ws.source());
        }
        self.end_epoch("relay connection lost");
    }

    /// Close the WebSocket ourselves (protocol failure) and reconnect.
    fn abort_link(&mut self, code: u16, why: String) {
        if let Some(link) = &mut self.link {
            link.ws.close(code, &why);
        }
        self.link_failed(why, None);
    }

    /// Queue the pong (or close echo) the relay is owed; the origin's
    /// refusal of a dest follows the pong that acknowledges its pairing.
    fn queue_link_control(&mut self) {
        let Some(link) = &mut self.link else { return };
        if link.ws.queue_control() {
            if let Some(refusal) = self.refusal.take() {
                link.ws.send(OpCode::Binary, &refusal);
            }
        }
    }

    fn flush_ws(&mut self) {
        self.queue_link_control();
        let Some(link) = &mut self.link else { return };
        if let Err(e) = link.ws.flush(Instant::now()) {
            if let FlushError::NotReading(_) = e {
                let (pings, pongs) = link.ws.ping_counts();
                log::debug!("relay sent {pings} pings; we queued {pongs} pongs");
            }
            self.link_failed(e.to_string(), None);
        }
    }

    fn read_ws(&mut self, hup: bool) {
        let Some(link) = &mut self.link else { return };
        let mut events = std::mem::take(&mut self.ws_events);
        if link.ws.read(&mut events, hup) == ReadOutcome::Budget {
            self.link_read_again = true;
        }
        let gen = link.gen;
        for ev in events.drain(..) {
            // A handler may have replaced the link: stale events are moot.
            if self.link.as_ref().map(|l| l.gen) != Some(gen) || self.stop.is_some() {
                continue;
            }
            self.on_ws_event(ev);
        }
        // Keep the allocation for the next read.
        self.ws_events = events;
    }

    fn on_ws_event(&mut self, ev: WsEvent) {
        match ev {
            WsEvent::Upgraded(resp) => self.on_upgraded(resp),
            WsEvent::Refused(err) => self.on_refused(err),
            WsEvent::Binary(msg) => {
                self.on_message(&msg);
                if let Some(link) = &mut self.link {
                    link.ws.recycle(msg);
                }
            }
            // Its pong goes out with the next flush, after we acted on
            // it: the relay takes the echoed peer-joined/peer-left as
            // "anything after this is for the new peer".
            WsEvent::Control(payload) => self.on_control(&payload),
            WsEvent::Closed(code, reason) => self.on_closed(code, &reason),
            WsEvent::Lost(why) => self.link_failed(why, None),
            WsEvent::ProtocolError(why) => self.link_failed(why, None),
        }
    }

    fn on_upgraded(&mut self, resp: crate::ws::handshake::Response) {
        if let Some(id) = resp.header(&header::SESSION.to_ascii_lowercase()) {
            if id != self.session.to_string().as_bytes() {
                let why = format!(
                    "relay assigned session {} instead of {}",
                    String::from_utf8_lossy(id),
                    self.session
                );
                self.stop = Some(Err(Error::Refused(why)));
                return;
            }
        }
        log::info!(
            "{} session {} on relay {}",
            if self.upgraded_once {
                "resumed"
            } else {
                "joined"
            },
            self.session,
            self.opts.relay.authority()
        );
        self.backoff.reset();
        let first = !self.upgraded_once;
        self.upgraded_once = true;
        if let Some(link) = &self.link {
            let gen = link.gen;
            self.timers.schedule(
                Instant::now() + self.ping_interval / TICKS_PER_INTERVAL,
                Timer::Tick(gen),
            );
        }
        if first {
            self.announce();
        }
    }

    fn on_refused(&mut self, err: crate::ws::handshake::ClientError) {
        let status = err.status();
        let full = err.to_string();
        // "relay refused: 409 Conflict: ..." reads better than "relay refused: relay answered 409 ...".
        let text = full
            .strip_prefix("relay answered ")
            .unwrap_or(&full)
            .to_string();
        match (self.side(), status) {
            (Side::Dest, Some(403)) => {
                self.stop = Some(Err(Error::Refused(format!("wrong token ({text})"))));
            }
            (Side::Dest, Some(400 | 426)) => self.stop = Some(Err(Error::Refused(text))),
            (Side::Dest, Some(404)) => self.link_failed(
                format!(
                    "session {} not found on relay: origin gone? ({text})",
                    self.session
                ),
                None,
            ),
            (Side::Origin, Some(_)) if !self.upgraded_once => {
                self.stop = Some(Err(Error::Refused(text)));
            }
            (Side::Origin, Some(400 | 403 | 409 | 426)) => {
                self.stop = Some(Err(Error::Refused(text)));
            }
            _ => self.link_failed(text, None),
        }
    }

    fn on_closed(&mut self, code: Option<u16>, reason: &str) {
        let c = code.map_or("no code".to_string(), |c| c.to_string());
        match (self.side(), code) {
            (Side::Dest, Some(close::ORIGIN_RECONNECTED)) => {
                log::info!("origin reconnected; joining again");
                self.link_failed(format!("relay closed ({c} {reason})"), Some(Duration::ZERO));
            }
            (Side::Dest, Some(close::ORIGIN_GONE)) => {
                log::warn!("origin left ({reason})");
                self.link_failed(format!("relay closed ({c} {reason})"), None);
            }
            (Side::Origin, Some(close::REPLACED)) => {
                self.stop = Some(Err(Error::Refused(format!(
                    "another origin took over session {} ({reason})",
                    self.session
                ))));
            }
            _ => self.link_failed(format!("relay closed the connection ({c} {reason})"), None),
        }
    }

    /// Relay control pings (README "Relay control messages").
    fn on_control(&mut self, payload: &[u8]) {
        let msg = match Control::parse(payload) {
            Ok(Some(msg)) => msg,
            Ok(None) => return,
            Err(e) => {
                log::debug!("ignoring relay control message: {e}");
                return;
            }
        };
        match msg {
            Control::Session { id } => log::debug!("relay confirms session {id}"),
            Control::PeerJoined { addr, .. } => {
                match self.side() {
                    Side::Origin => log::info!("dest joined from {addr}"),
                    Side::Dest => log::info!("paired with origin at {addr}"),
                }
                if let Some(g) = &mut self.agent {
                    g.set_dest(addr);
                }
                if self.side() == Side::Origin {
                    if let Some(why) = self.opts.limits.refuse_dest(addr) {
                        // No epoch: no handshake, and whatever it sends is dropped.
                        log::warn!("refusing this dest: {why}");
                        self.end_epoch("dest refused");
                        self.refusal = Some([REFUSED_PREFIX, why.as_bytes()].concat());
                        self.dest_refused = true;
                        return;
                    }
                }
                self.dest_refused = false;
                self.start_epoch();
            }
            Control::PeerLeft { code, reason, .. } => {
                log::info!("dest left ({code} {reason})");
                self.dest_refused = false;
                self.end_epoch("dest left");
            }
        }
    }

    // ---- epochs -------------------------------------------------------

    fn start_epoch(&mut self) {
        self.end_epoch("new peer");
        self.epoch_gen += 1;
        let gen = self.epoch_gen;
        let mut epoch = Epoch {
            gen,
            e2e: None,
            mux: None,
            confirmed: false,
        };
        if self.opts.plaintext {
            epoch.mux = Some(Mux::new(self.side(), mux::Config::client()));
            self.epoch = Some(epoch);
            self.on_mux_ready();
            return;
        }
        let mut e2e = match E2e::new(self.side(), self.opts.token.expose(), &self.session) {
            Ok(n) => n,
            Err(e) => {
                self.stop = Some(Err(Error::Local(format!("end-to-end setup: {e}"))));
                return;
            }
        };
        if e2e.wants_to_send() {
            let mut msg = Vec::new();
            if let Err(e) = e2e.handshake_out(&mut msg) {
                self.stop = Some(Err(Error::Local(format!("end-to-end handshake: {e}"))));
                return;
            }
            if let Some(link) = &mut self.link {
                link.ws.send(OpCode::Binary, &msg);
            }
        }
        if self.side() == Side::Dest {
            self.timers
                .schedule(Instant::now() + E2E_TIMEOUT, Timer::E2eDeadline(gen));
        }
        epoch.e2e = Some(e2e);
        self.epoch = Some(epoch);
    }

    /// Drop every channel of the current epoch (their unix connections
    /// close) and the epoch itself.
    fn end_epoch(&mut self, why: &str) {
        if self.epoch.take().is_some() && !self.conns.is_empty() {
            log::info!("closing {} channel(s): {why}", self.conns.len());
        }
        self.conns.clear();
        self.dirty.clear();
        self.again.clear();
        if let Some(g) = &mut self.agent {
            g.end_epoch();
        }
    }

    /// The mux exists: the dest opens channels for waiting connections.
    fn on_mux_ready(&mut self) {
        while let Some((sock, _)) = self.waiting.pop_front() {
            self.open_channel(sock);
        }
        if let Some(c) = &mut self.command {
            if !c.started() {
                match c.start(&self.opts.socket) {
                    Ok(()) => self
                        .timers
                        .schedule(Instant::now() + agent_glue::CHILD_POLL, Timer::Agent),
                    Err(e) => self.stop = Some(Err(Error::Local(e))),
                }
            }
        }
    }

    fn on_message(&mut self, msg: &[u8]) {
        if self.side() == Side::Dest && msg.starts_with(REFUSED_PREFIX) {
            // Only before the session is end to end (in plaintext a batch
            // never starts so); like a relay close, it is a hint.
            let established = self.epoch.as_ref().is_some_and(|e| {
                e.mux.is_some() && e.e2e.as_ref().is_some_and(E2e::is_established)
            });
            if !established {
                let why = String::from_utf8_lossy(&msg[REFUSED_PREFIX.len()..]);
                let why = format!("origin refused this dest: {why}");
                self.stop = Some(Err(Error::Local(why)));
                return;
            }
        }
        let Some(epoch) = &mut self.epoch else {
            if self.dest_refused {
                log::debug!("dropping {} bytes from the refused dest", msg.len());
                return;
            }
            // The relay forwards nothing from a peer before it has told us
            // of the pairing (and nothing after `peer-left`), so this means
            // the relay and we disagree about the pairing (e.g. a forged
            // control ping). Waiting would hang the session; start over.
            self.abort_link(
                close::E2E_FAILED,
                "a message arrived while no peer is paired (relay out of step); re-pairing".into(),
            );
            return;
        };
        let plain: &[u8] = match &mut epoch.e2e {
            None => msg,
            Some(e2e) if !e2e.is_established() => {
                let res = e2e.handshake_in(msg).and_then(|()| {
                    let mut out = Vec::new();
                    if e2e.wants_to_send() {
                        e2e.handshake_out(&mut out)?;
                    }
                    Ok(out)
                });
                match res {
                    Ok(reply) => {
                        if !reply.is_empty() {
                            if let Some(link) = &mut self.link {
                                link.ws.send(OpCode::Binary, &reply);
                            }
                        }
                        if e2e.is_established() {
                            match self.opts.side {
                                Side::Dest => log::info!("end-to-end encryption established"),
                                Side::Origin => log::debug!(
                                    "end-to-end handshake answered; waiting for the dest's first message"
                                ),
                            }
                            epoch.mux = Some(Mux::new(self.opts.side, mux::Config::client()));
                            self.on_mux_ready();
                        }
                    }
                    // Either side: close, so that both pair again from a clean
                    // state. (Waiting for a fresh handshake would hang when
                    // the relay, not the dest, got out of step: the dest then
                    // believes it is established and never sends one.)
                    Err(e) => self.abort_link(close::E2E_FAILED, e),
                }
                return;
            }
            Some(e2e) => {
                self.plain.clear();
                if let Err(e) = e2e.open(msg, &mut self.plain) {
                    self.abort_link(close::E2E_FAILED, e);
                    return;
                }
                if !epoch.confirmed {
                    epoch.confirmed = true;
                    if self.opts.side == Side::Origin {
                        log::info!("end-to-end encryption established");
                    }
                }
                &self.plain
            }
        };
        let Some(m) = &mut epoch.mux else { return };
        if let Err(e) = m.recv_message(plain) {
            log::error!("peer broke the mux protocol: {e}");
            self.abort_link(e.close_code(), e.to_string());
            return;
        }
        self.drain_mux_events();
    }

    fn drain_mux_events(&mut self) {
        loop {
            let Some(ev) = self
                .epoch
                .as_mut()
                .and_then(|e| e.mux.as_mut())
                .and_then(|m| m.poll_event())
            else {
                return;
            };
            match ev {
                mux::Event::Ready { window } => log::debug!("peer ready, window {window}"),
                mux::Event::Open(ch) => self.connect_channel(ch),
                mux::Event::OpenOk(ch) => log::debug!("channel {ch} open"),
                mux::Event::Closed(ch, reason) => {
                    log::debug!("channel {ch} closed by peer: {reason}");
                    if let Some(g) = &mut self.agent {
                        g.closed(ch);
                    }
                    if self.conns.remove(&ch).is_some() && self.side() == Side::Dest {
                        log::warn!("connection closed: {reason}");
                    }
                }
                mux::Event::Service(ch) => self.dirty.push(ch),
            }
        }
    }

    // ---- channels -----------------------------------------------------

    /// Origin: connect the channel to the real socket.
    fn connect_channel(&mut self, ch: ChannelId) {
        let Some(epoch) = &mut self.epoch else { return };
        let Some(m) = &mut epoch.mux else { return };
        let limits = &self.opts.limits;
        if let Some(why) = limits.refuse_channel(self.channels_accepted, self.conns.len()) {
            log::warn!("channel {ch}: refused: {why}");
            m.reject_open(ch, &format!("origin refused channel: {why}"));
            return;
        }
        let path = &self.opts.socket;
        let res = UnixStream::connect(path).and_then(|mut s| {
            self.poll.registry().register(
                &mut s,
                channel_token(epoch.gen, ch),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        match res {
            Ok(sock) => {
                log::debug!("channel {ch}: connected to {}", path.display());
                self.channels_accepted += 1;
                m.accept_open(ch);
                if let Some(g) = &mut self.agent {
                    g.opened(epoch.gen, ch);
                }
                self.conns.insert(ch, Conn::new(sock));
                self.dirty.push(ch);
            }
            Err(e) => {
                let reason = format!("connect {}: {e}", path.display());
                log::warn!("channel {ch}: {reason}");
                m.reject_open(ch, &reason);
            }
        }
    }

    /// Dest: a new local connection.
    fn accept(&mut self) {
        loop {
            let Some((_, l)) = &mut self.listener else {
                return;
            };
            match l.accept() {
                Ok((sock, _)) => {
                    let ready = self.epoch.as_ref().is_some_and(|e| e.mux.is_some());
                    if ready {
                        self.open_channel(sock);
                    } else if self.waiting.len() < MAX_PENDING_CONNS {
                        log::debug!("connection waits for the session");
                        let now = Instant::now();
                        self.waiting.push_back((sock, now));
                        self.timers
                            .schedule(now + PENDING_CONN_TIMEOUT, Timer::PendingExpiry);
                    } else {
                        log::warn!("too many connections waiting for the session; closing one");
                    }
                }
                Err(e) if sys::is_transient(&e) && e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    fn open_channel(&mut self, mut sock: UnixStream) {
        let Some(epoch) = &mut self.epoch else { return };
        let Some(m) = &mut epoch.mux else { return };
        let ch = match m.open() {
            Ok(ch) => ch,
            Err(e) => {
                log::warn!("cannot open channel: {e}");
                return;
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            channel_token(epoch.gen, ch),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            m.close(ch, &format!("register: {e}"));
            return;
        }
        log::debug!("channel {ch}: opened");
        self.conns.insert(ch, Conn::new(sock));
        self.dirty.push(ch);
    }

    fn service_dirty(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &ch in &dirty {
            self.service(ch);
        }
        dirty.clear();
        // Keep the allocation.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Move bytes between one unix socket and the mux, as far as readiness,
    /// windows and the high-water mark allow.
    fn service(&mut self, ch: ChannelId) {
        let Some(epoch) = &mut self.epoch else { return };
        let Some(m) = &mut epoch.mux else { return };
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        if !m.contains(ch) {
            self.conns.remove(&ch);
            if let Some(g) = &mut self.agent {
                g.closed(ch);
            }
            return;
        }
        if let Some(g) = self.agent.as_mut().filter(|g| g.is_guarded(ch)) {
            g.service(ch, m, conn, &mut self.scratch);
            if !m.contains(ch) {
                log::debug!("channel {ch}: finished");
                self.conns.remove(&ch);
                g.closed(ch);
            }
            self.agent_sync();
            return;
        }
        // Peer → socket.
        while conn.writable {
            let p = m.pending(ch);
            if p.is_empty() {
                break;
            }
            let want = p.len();
            match conn.sock.write(p) {
                Ok(n) => {
                    m.consume(ch, n);
                    // Short write: the socket buffer is full (epoll(7));
                    // wait for the EPOLLOUT edge instead of an EAGAIN.
                    if n < want {
                        conn.writable = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.writable = false,
                Err(e) => {
                    log::debug!("channel {ch}: write: {e}");
                    m.close(ch, &format!("write: {e}"));
                    self.conns.remove(&ch);
                    return;
                }
            }
        }
        if m.wants_shutdown(ch) {
            let _ = conn.sock.shutdown(Shutdown::Write);
            m.eof_delivered(ch);
        }
        // Socket → peer, one batch worth per turn for fairness.
        let queued = self.link.as_ref().map_or(0, |l| l.ws.out_len()) + m.queued_bytes();
        if conn.readable && !conn.read_eof {
            if queued >= HIGH_WATER_BYTES {
                self.hwm_hit = true;
            } else {
                // One full batch per turn (not READ_CHUNK_BYTES, which
                // would spill a sliver into a second message).
                let mut budget = mux::MAX_DATA_PER_BATCH;
                loop {
                    let n = m.send_window(ch).min(budget);
                    if n == 0 {
                        break;
                    }
                    match conn.sock.read(&mut self.scratch[..n]) {
                        Ok(0) => {
                            conn.read_eof = true;
                            m.send_eof(ch);
                            break;
                        }
                        Ok(k) => {
                            m.send_data(ch, &self.scratch[..k]);
                            budget -= k;
                            // Short read: drained (epoll(7)), unless the
                            // event carried a FIN that a read must see.
                            if k < n && !conn.hup {
                                conn.readable = false;
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            conn.readable = false;
                            conn.hup = false;
                            break;
                        }
                        Err(e) => {
                            log::debug!("channel {ch}: read: {e}");
                            m.close(ch, &format!("read: {e}"));
                            self.conns.remove(&ch);
                            return;
                        }
                    }
                }
                if budget == 0 && conn.readable && !conn.read_eof {
                    self.again.push(ch);
                }
            }
        }
        if !m.contains(ch) {
            log::debug!("channel {ch}: finished");
            self.conns.remove(&ch);
        }
    }

    /// Turn queued mux batches into WebSocket messages and write.
    fn flush(&mut self) {
        // Pongs first: the relay forwards what the origin sends after the
        // pong that acknowledges a pairing change, and drops what comes
        // before it.
        self.queue_link_control();
        if let (Some(epoch), Some(link)) = (&mut self.epoch, &mut self.link) {
            if let Some(m) = &mut epoch.mux {
                if link.ws.is_open() {
                    while let Some(batch) = m.pop_batch() {
                        match &mut epoch.e2e {
                            None => link.ws.send(OpCode::Binary, &batch),
                            Some(e2e) => {
                                // Sealed straight into the WebSocket output
                                // buffer, then masked there: no copy between.
                                let len = batch.len() + SEAL_OVERHEAD;
                                let mut err = None;
                                let ok = link.ws.send_with(OpCode::Binary, len, |out| {
                                    match e2e.seal(&batch, out) {
                                        Ok(()) => true,
                                        Err(e) => {
                                            err = Some(e);
                                            false
                                        }
                                    }
                                });
                                if !ok {
                                    let e = err.unwrap_or_else(|| "sealed length".into());
                                    self.stop =
                                        Some(Err(Error::Local(format!("end-to-end seal: {e}"))));
                                    return;
                                }
                            }
                        }
                        m.recycle(batch);
                    }
                }
            }
        }
        self.flush_ws();
        // Below the low-water mark again: resume channels held back.
        if self.hwm_hit {
            let out = self.link.as_ref().map_or(0, |l| l.ws.out_len());
            if out < HIGH_WATER_BYTES / 2 {
                self.hwm_hit = false;
                for (&ch, c) in &self.conns {
                    if c.readable && !c.read_eof {
                        self.again.push(ch);
                    }
                }
            }
        }
    }

    // ---- timers -------------------------------------------------------

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(t) = self.timers.pop_due(now) {
            match t {
                Timer::Reconnect(gen) if gen == self.link_gen && self.link.is_none() => {
                    self.connect();
                }
                Timer::ConnectDeadline(gen) => {
                    if self
                        .link
                        .as_ref()
                        .is_some_and(|l| l.gen == gen && !l.ws.is_open())
                    {
                        self.link_failed(
                            format!(
                                "relay {} did not answer within {} s",
                                self.opts.relay.authority(),
                                CONNECT_TIMEOUT.as_secs()
                            ),
                            None,
                        );
                    }
                }
                Timer::Tick(gen) => self.tick(gen, now),
                Timer::E2eDeadline(gen) => {
                    let stuck = self
                        .epoch
                        .as_ref()
                        .is_some_and(|e| e.gen == gen && e.mux.is_none());
                    if stuck {
                        self.abort_link(
                            close::E2E_FAILED,
                            format!(
                                "end-to-end handshake did not complete within {} s",
                                E2E_TIMEOUT.as_secs()
                            ),
                        );
                    }
                }
                Timer::PendingExpiry => {
                    while let Some((_, at)) = self.waiting.front() {
                        if now.duration_since(*at) < PENDING_CONN_TIMEOUT {
                            break;
                        }
                        log::warn!(
                            "closing a connection that waited {} s for the session",
                            PENDING_CONN_TIMEOUT.as_secs()
                        );
                        self.waiting.pop_front();
                    }
                }
                Timer::Lifetime => self.lifetime_over(),
                Timer::Agent => {
                    if let Some(g) = &mut self.agent {
                        g.on_timer(now);
                    }
                    self.agent_sync();
                    if let Some(c) = &mut self.command {
                        match c.poll() {
                            Some(code) => {
                                log::info!(
                                    "COMMAND exited with status {code}; leaving the session"
                                );
                                self.stop = Some(Ok(()));
                            }
                            None if c.started() => self
                                .timers
                                .schedule(now + agent_glue::CHILD_POLL, Timer::Agent),
                            None => {}
                        }
                    }
                }
                Timer::Reconnect(_) => {}
            }
        }
    }

    /// After the glue ran: its wake-ups, channels to service, helpers to
    /// start.
    fn agent_sync(&mut self) {
        if let Some(g) = &mut self.agent {
            g.start_prompts(self.poll.registry());
            for at in g.take_wakeups() {
                self.timers.schedule(at, Timer::Agent);
            }
            self.dirty.extend(g.take_dirty());
        }
    }

    /// `--lifetime` is over: close every channel with the reason, then
    /// leave the session (the relay tells the dest the origin left).
    fn lifetime_over(&mut self) {
        let d = self.opts.agent.lifetime.unwrap_or_default();
        let why = format!("origin's --lifetime of {} s is over", d.as_secs_f64());
        log::warn!("{why}: ending the session");
        if let Some(m) = self.epoch.as_mut().and_then(|e| e.mux.as_mut()) {
            for ch in m.channel_ids() {
                m.close(ch, &why);
            }
        }
        self.flush();
        if let Some(link) = &mut self.link {
            link.ws.close(close::NORMAL, &why);
            let _ = link.ws.flush(Instant::now());
        }
        self.stop = Some(Ok(()));
    }

    /// Heartbeat: ping when idle, give up when silent too long.
    fn tick(&mut self, gen: u64, now: Instant) {
        let dead_after = self.dead_after();
        let Some(link) = &mut self.link else { return };
        if link.gen != gen {
            return;
        }
        let silent = now.duration_since(link.ws.last_rx());
        let interval = self.ping_interval;
        if silent >= dead_after {
            let pinged = link
                .ws
                .last_ping_rx()
                .is_some_and(|at| at > link.ws.last_rx());
            let why = if pinged {
                format!(
                    "relay is not reading: it sends pings but has answered nothing of ours for {} s",
                    silent.as_secs()
                )
            } else {
                format!("relay silent for {} s", silent.as_secs())
            };
            self.link_failed(why, None);
            return;
        }
        if silent >= interval && now.duration_since(link.last_ping) >= interval {
            link.ws.send(OpCode::Ping, b"");
            link.last_ping = now;
        }
        self.timers
            .schedule(now + interval / TICKS_PER_INTERVAL, Timer::Tick(gen));
    }

    // ---- announcing ---------------------------------------------------

    /// The session is ready: print the eval lines (and fork, if asked).
    fn announce(&mut self) {
        let mut lines = String::new();
        match self.side() {
            Side::Origin => {
                lines.push_str(&format!(
                    "SOCKRELAY_SESSION={}; export SOCKRELAY_SESSION;\n",
                    self.session
                ));
                if self.opts.token_generated {
                    let token = &self.opts.token;
                    let join = Join::format(&self.opts.relay, &self.session, token);
                    lines.push_str(&format!(
                        "SOCKRELAY_TOKEN={}; export SOCKRELAY_TOKEN;\nSOCKRELAY_JOIN={}; export SOCKRELAY_JOIN;\n",
                        shell_quote(&String::from_utf8_lossy(token.expose())),
                        shell_quote(&join)
                    ));
                }
            }
            Side::Dest => {
                if self.opts.print_env {
                    lines.push_str(&format!(
                        "SSH_AUTH_SOCK={}; export SSH_AUTH_SOCK;\n",
                        shell_quote(&self.opts.socket.to_string_lossy())
                    ));
                }
            }
        }
        let pid_var = match self.side() {
            Side::Origin => "SOCKRELAY_PID",
            Side::Dest => "SOCKRELAY_DEST_PID",
        };
        if self.opts.background {
            match daemonize() {
                Ok(Some(child)) => {
                    lines.push_str(&format!("{pid_var}={child}; export {pid_var};\n"));
                    let mut out = io::stdout().lock();
                    let _ = out.write_all(lines.as_bytes());
                    let _ = out.flush();
                    // SAFETY: _exit(2) ends the parent without running
                    // destructors, which would otherwise send a WebSocket
                    // close on the connection the child now owns.
                    unsafe { libc::_exit(0) };
                }
                Ok(None) => {}
                Err(e) => {
                    self.stop = Some(Err(Error::Local(format!("fork: {e}"))));
                }
            }
        } else {
            let mut out = io::stdout().lock();
            let _ = out.write_all(lines.as_bytes());
            let _ = out.flush();
        }
    }
}

/// Fork: `Ok(Some(pid))` in the parent, `Ok(None)` in the child, which
/// becomes a session leader with stdin and stdout on /dev/null (so that
/// `eval "$(sockrelay-origin ...)"` returns once the parent exits).
fn daemonize() -> io::Result<Option<i32>> {
    let _ = io::stdout().flush();
    // SAFETY: this process is single-threaded (one mio loop, no helper
    // threads), so the child's copy of the only thread holds no locks that
    // another thread could have taken. The child keeps every fd, and epoll
    // registrations belong to the shared open file descriptions, so its
    // loop continues unchanged; the parent only prints and calls _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(Some(pid));
    }
    // SAFETY: setsid, open, dup2 and close on fds we own, in the child.
    unsafe {
        libc::setsid();
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
    Ok(None)
}

/// Quote for POSIX sh when needed.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/tmp/a.sock"), "/tmp/a.sock");
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn channel_tokens_never_collide_with_fixed_ones() {
        let t = channel_token(1, 1);
        assert!(t.0 > LISTENER.0 && t.0 & WS_BIT == 0);
        assert_ne!(channel_token(1, 5), channel_token(2, 5));
    }
}
