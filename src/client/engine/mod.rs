//! The client event loop shared by origin and dest (one `mio::Poll`).
//!
//! Layers, outermost first: the relay WebSocket ([`WsConn`]) and the relay's
//! control pings; the end-to-end layer (Noise, unless plaintext); the mux
//! ([`Mux`], sans-IO); the unix sockets, one per channel. An *epoch* is one
//! origin–dest pairing: it starts at `peer-joined` and ends when the peer
//! leaves or the WebSocket drops; each epoch has a fresh Noise state. The
//! mux and its channels belong to the engine: with channel resume (mux v2)
//! they are suspended when an epoch ends and resumed over the next one's
//! handshake; otherwise a new epoch gets a fresh mux and fresh channel ids.
//!
//! This file is the loop itself: the types, the poll loop, event dispatch
//! by token, and the timers. Each responsibility has its own file:
//! - [`link`]: the relay link (connect stages, answers, control, reconnect);
//! - [`epoch`]: an epoch's end-to-end and mux glue;
//! - [`channels`]: the unix sockets, one per channel;
//! - [`daemon`]: the eval lines and `--background`.
//!
//! States and transitions: `src/client/LIFECYCLE.md`.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use uuid::Uuid;

use super::agent_glue;
use super::listen::PrivateSocket;
use super::ws::{FlushError, ReadOutcome, WsConn, WsEvent};
use super::*;
use crate::control::{close, header, path, Control};
use crate::mux::{self, ChannelId};
use crate::sys::{self, Signal, Signals};
use crate::timer::Timers;
use crate::transport::resolve::{lookups_running, Lookup};
use crate::transport::{Received, Transport};
use crate::ws::frame::OpCode;

const SIGNALS: Token = Token(1);
const LISTENER: Token = Token(2);
/// A name lookup finished (the resolver thread's waker).
const RESOLVER: Token = Token(3);
/// WebSocket tokens: this bit plus the connection generation.
const WS_BIT: usize = 1 << 62;
/// Heartbeat check period (a quarter of the ping interval).
const TICKS_PER_INTERVAL: u32 = 4;

// Token packing (the WebSocket bit at 62, an epoch in bits 32..62) needs a
// 64-bit usize: refuse to build where it would silently collide.
const _: () = assert!(
    usize::BITS >= 64,
    "client token packing needs a 64-bit usize"
);

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
    /// `--resume-window` of the mux of this generation ends.
    ResumeDeadline(u32),
}

/// What ending an epoch does to the mux and its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keep {
    /// Suspend a mux that negotiated resume: channels wait for the next
    /// link (`--resume-window`).
    Resume,
    /// Close every channel (exiting, the peer left for good).
    Nothing,
}

mod channels;
mod daemon;

mod epoch;
mod link;

use super::pairing::{self, Pairing, PairingError};

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
    generation: u64,
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
    link_generation: u64,
    /// The relay said `move` (it is stopping): once the link closes,
    /// reconnect after this jittered delay instead of the backoff.
    moving: Option<Duration>,
    /// Where to connect (the proxy's address, when one is used) and the
    /// proxy/TLS stages of each connection.
    route: super::link::Route,
    /// Wakes the loop when a name lookup is answered.
    waker: Arc<Waker>,
    /// The relay's name being resolved, for the attempt `link_generation`.
    lookup: Option<(u64, Lookup)>,
    /// Resolved relay addresses not tried yet in this attempt.
    addrs_left: VecDeque<SocketAddr>,
    backoff: Backoff,
    upgraded_once: bool,
    /// The current pairing (its end-to-end state), if any.
    epoch: Option<Pairing>,
    epoch_generation: u32,
    /// The channels' mux. With resume (v2) it outlives pairings and links:
    /// suspended while the link is down, resumed on the next pairing.
    mux: Option<mux::Mux>,
    /// Bumped for each new mux: the high half of channel tokens, so an
    /// event for a channel of an older mux never reaches a newer one.
    mux_generation: u32,
    /// This process's secret for channel resume (None: no resume).
    resume_secret: Option<[u8; mux::resume::SECRET_LEN]>,
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
        let local = |what: &'static str, err: io::Error| Error::Os { what, err };
        let session = match (opts.side, opts.session) {
            (_, Some(id)) => id,
            (Side::Origin, None) => Uuid::new_v4(),
            (Side::Dest, None) => return Err(Error::Local("dest needs a session id".into())),
        };
        let admission = admission(&opts.token, &session);
        // Proxy choice and TLS files first: a bad CA file fails before the
        // dest creates its socket.
        let route = super::link::Route::new(&opts.relay, &opts.net, &crate::proxy::process_env)
            .map_err(Error::Local)?;
        let poll = Poll::new().map_err(|e| local("epoll", e))?;
        let mut signals = Signals::install().map_err(|e| local("signal handlers", e))?;
        poll.registry()
            .register(signals.source(), SIGNALS, Interest::READABLE)
            .map_err(|e| local("register signals", e))?;
        let waker = Waker::new(poll.registry(), RESOLVER).map_err(|e| local("waker", e))?;
        let listener = if opts.side == Side::Dest {
            let sock = super::listen::listen_with(
                &opts.socket,
                opts.agent.socket_mode,
                opts.agent.socket_group,
            )
            .map_err(Error::Socket)?;
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
        // Channel resume needs the Noise handshake hash: none in plaintext.
        let resume_secret = if opts.plaintext || opts.liveness.resume_window.is_zero() {
            None
        } else {
            let s = super::e2e::resume_secret();
            if s.is_none() {
                log::warn!(
                    "no OS randomness for the resume secret: channels will not survive a lost link"
                );
            }
            s
        };
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
            link_generation: 0,
            moving: None,
            route,
            waker: Arc::new(waker),
            lookup: None,
            addrs_left: VecDeque::new(),
            backoff: Backoff::default(),
            upgraded_once: false,
            epoch: None,
            epoch_generation: 0,
            mux: None,
            mux_generation: 0,
            resume_secret,
            conns: HashMap::new(),
            waiting: VecDeque::new(),
            dirty: Vec::new(),
            again: Vec::new(),
            hwm_hit: false,
            scratch: vec![0u8; mux::MAX_DATA_PER_BATCH],
            plain: Vec::new(),
            ws_events: Vec::new(),
            stop: None,
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
        self.opts.liveness.dead_after
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
                return Err(Error::Os {
                    what: "poll",
                    err: e,
                });
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
        let why = match self.opts.side {
            Side::Origin => "origin exiting",
            Side::Dest => "dest exiting",
        };
        // Close every channel in the mux too, so that the peer ends them
        // now instead of holding them for a resume that cannot come.
        if let Some(m) = self.mux.as_mut().filter(|m| m.is_live()) {
            for ch in m.channel_ids() {
                m.close(ch, why);
            }
            self.flush();
        }
        if let Some(link) = &mut self.link {
            link.ws.close(close::NORMAL, why);
            let _ = link.ws.flush(Instant::now());
        }
        self.end_epoch("exiting", Keep::Nothing);
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
            RESOLVER => self.on_lookup_done(),
            Token(t) if t & WS_BIT != 0 => {
                let generation = (t & !WS_BIT) as u64;
                if self
                    .link
                    .as_ref()
                    .is_some_and(|l| l.generation == generation)
                {
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
                let (generation, ch) = ((t >> 32) as u32, t as u32);
                if self.mux.is_some() && generation == self.mux_generation {
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

    // ---- timers -------------------------------------------------------

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(t) = self.timers.pop_due(now) {
            match t {
                Timer::Reconnect(generation)
                    if generation == self.link_generation && self.link.is_none() =>
                {
                    self.connect();
                }
                Timer::ConnectDeadline(generation)
                    if self.lookup.as_ref().is_some_and(|l| l.0 == generation) =>
                {
                    // The thread goes on until getaddrinfo returns; its
                    // answer is dropped.
                    self.link_failed(
                        format!(
                            "relay host {:?} did not resolve within {} s",
                            self.opts.relay.host,
                            CONNECT_TIMEOUT.as_secs()
                        ),
                        None,
                    );
                }
                Timer::ConnectDeadline(generation) => {
                    if self
                        .link
                        .as_ref()
                        .is_some_and(|l| l.generation == generation && !l.ws.is_open())
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
                Timer::Tick(generation) => self.tick(generation, now),
                Timer::E2eDeadline(generation) => {
                    let stuck = self
                        .epoch
                        .as_ref()
                        .is_some_and(|e| e.generation() == generation && e.handshake_overdue(now));
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
                Timer::ResumeDeadline(generation) => self.on_resume_deadline(generation, now),
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
        if let Some(m) = &mut self.mux {
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
    fn tick(&mut self, generation: u64, now: Instant) {
        let dead_after = self.dead_after();
        let Some(link) = &mut self.link else { return };
        if link.generation != generation {
            return;
        }
        let silent = now.duration_since(link.ws.last_rx());
        let interval = self.opts.liveness.keepalive;
        if silent >= dead_after {
            // Still pinging us now, yet answering nothing of ours.
            let pinged = link
                .ws
                .last_ping_rx()
                .is_some_and(|at| at > link.ws.last_rx() && now.duration_since(at) < interval);
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
            .schedule(now + interval / TICKS_PER_INTERVAL, Timer::Tick(generation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_tokens_never_collide_with_fixed_ones() {
        let t = channel_token(1, 1);
        assert!(t.0 > LISTENER.0 && t.0 & WS_BIT == 0);
        assert_ne!(channel_token(1, 5), channel_token(2, 5));
    }
}
