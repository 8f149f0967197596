//! End-to-end mux protocol between origin and dest, sans-IO (quiche-style).
//!
//! A v1 [`Mux`] lives for one *epoch* of a session: from the moment origin
//! and dest can talk (after the Noise handshake, or at pairing in plaintext
//! mode) until the WebSocket drops or the peer changes; a v2 mux outlives
//! epochs (below). It never touches a socket:
//! - [`Mux::recv_message`] takes one WebSocket message (a batch of records);
//! - [`Mux::pop_batch`] yields the next outgoing message (≤ `max_batch` bytes);
//! - [`Mux::poll_event`] reports lifecycle changes and channels to service;
//! - the loop moves channel bytes with [`Mux::send_data`] / [`Mux::pending`] /
//!   [`Mux::consume`] and reports half-closes with [`Mux::send_eof`] /
//!   [`Mux::eof_delivered`].
//!
//! Channel lifecycle (see docs/CLIENTS.md "Channel lifecycle"):
//! ```text
//! dest: open() ──OPEN──▶ origin: Event::Open ─┬─ accept_open ──OPEN_OK──▶ dest
//!                                             └─ reject_open ──OPEN_FAIL─▶ dest (forgotten)
//! each direction: DATA* then EOF (half-close); CREDIT flows back
//! both EOFs exchanged + received data delivered + shutdown done → forgotten
//! CLOSE from either side at any time: abort both directions, forgotten at once
//! ```
//! Ids come from the dest's counter (1, 2, ...) and are never reused within
//! an epoch, so a record for a forgotten id is simply ignored, while a record
//! for an id that was never opened is a protocol error.
//!
//! # v2: a mux that outlives its link ([`Mux::with_resume`])
//!
//! A v2 mux keeps every byte it sent until the peer has consumed it
//! (CREDIT, EOF_ACK), so it can outlive a relay link: README "Reliability"
//! has the protocol, `resume.rs` the SESSION record. Wiring it into a loop:
//! - make it once per process run with a random secret
//!   (32 bytes from the OS) and `--resume-window`; only with end-to-end
//!   encryption (the proof needs the Noise handshake hash);
//! - link lost: [`Mux::suspend`]. `false`: nothing to resume (v1 peer, first
//!   SESSION not done, protocol error): the channels got
//!   [`Event::Closed`]; drop the mux and make a new one for the next link
//!   as today. `true`: keep the mux and the unix sockets. Stop reading
//!   them: [`Mux::send_window`] is 0. Keep writing what
//!   [`Mux::pending`] still holds. Do not accept new connections:
//!   [`Mux::open`] answers [`Error::Suspended`]. Arm a timer at
//!   [`Mux::poll_timeout`] and call [`Mux::handle_timeout`] from it;
//! - new link, Noise established: [`Mux::resume`] with
//!   `Noise::handshake_hash()`, then feed messages as usual.
//!   [`Mux::take_session_outcome`] says when the exchange is done (and
//!   whether the old channels carried over). [`Mux::is_live`] turns true,
//!   and the [`Event::Service`] events restart the channels;
//! - a peer that changed (another dest instance) is handled inside: its
//!   old channels get [`Event::Closed`] and the session goes on fresh.

pub mod record;
pub mod resume;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use record::{Kind, Record, HEADER_LEN, MAX_REASON_LEN};

/// Protocol version carried in HELLO. v2 (resumable channels) keeps it at
/// 1, because a v1 peer refuses any other value: a v2 mux says so in the
/// low byte of its advertised window instead ([`V2_WINDOW_MARK`]), which a
/// v1 peer reads as a window like any other.
pub const VERSION: u16 = 1;
/// Low byte of the window a v2 mux advertises. v1 binaries always
/// advertise [`INITIAL_WINDOW`] (low byte 0).
pub const V2_WINDOW_MARK: u32 = 0x52;
/// Default `--resume-window`.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(60);
/// Cleanly finished or closed channel ids remembered for a resume.
const MAX_TOMBSTONES: usize = 4096;
/// Per-channel, per-direction window we advertise in HELLO: what a channel
/// starts with, the most a peer may send on it before we grant credit,
/// hence the most we buffer for it (and, with resume, the most a peer
/// retains for it) unless the window grows ([`GROW_MARK`]).
pub const INITIAL_WINDOW: u32 = 256 * 1024;
/// How far a channel's window may grow ([`Config::max_window`], the
/// binaries' `--channel-window`). With 256 KiB a bulk channel spends its
/// window before the credit is back, so every 128 KiB cost the relay and
/// both clients a wake-up for a 17-byte CREDIT and the chain ran at 0.6 of
/// the naive 3-hop floor; with 1 MiB it runs at the floor (README
/// "Benchmarks", the channel window).
pub const DEFAULT_MAX_WINDOW: u32 = 1024 * 1024;
/// Bit 8 of the window a mux advertises in HELLO: it speaks WINDOW records
/// (a receiver raising one channel's window, [`Config::grow`]). A receiver
/// grows a channel's window only when the sender set it too, and only
/// while its own socket keeps up with the channel (nothing queued for it
/// when credit is due), so a stalled channel keeps the initial window and
/// a bulk one gets the window it needs. Earlier builds never set the bit
/// and read it as 256 bytes more window, which they may use: the window
/// we grant is the value we advertise, bit included.
pub const GROW_MARK: u32 = 0x100;
/// The most a peer may grow one channel's window to with WINDOW records
/// (`--channel-window` allows at most 16 MiB): beyond it the peer is
/// broken or hostile, and we would retain whatever it lets us send.
pub const MAX_GROWN_WINDOW: u64 = 16 << 20;
/// A peer advertising less than this would make the protocol crawl; treated
/// as a protocol error.
pub const MIN_WINDOW: u32 = 1024;
/// Largest batch (plaintext of one WebSocket message). Equal to
/// `secure::MAX_PLAINTEXT` so one batch fits one Noise transport message.
pub const MAX_BATCH_BYTES: usize = 65535 - 16;
/// Most DATA payload one batch can carry (one record filling it). Reading a
/// socket in chunks of this size makes each read exactly one full batch;
/// reading `MAX_BATCH_BYTES` would spill a 7-byte sliver into a second
/// batch, hence a second WebSocket message, every time.
pub const MAX_DATA_PER_BATCH: usize = MAX_BATCH_BYTES - record::HEADER_LEN;
/// A DATA record is not started in a batch with less room than this left;
/// a new batch is begun instead (avoids slivers of a few bytes).
const MIN_DATA_SPLIT: usize = 512;

/// Spare capacity every batch buffer gets beyond `max_batch`: room for the
/// tag when the batch is sealed where it lies (`secure::SEAL_OVERHEAD`),
/// so sealing never reallocates and moves it.
pub const BATCH_TAIL_ROOM: usize = 16;
#[cfg(feature = "e2e")]
const _: () = assert!(BATCH_TAIL_ROOM == crate::secure::SEAL_OVERHEAD);

#[cfg(feature = "e2e")]
const _: () = assert!(MAX_BATCH_BYTES == crate::secure::MAX_PLAINTEXT);

pub type ChannelId = u32;

/// Which end of the session this mux is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Owns the real socket; accepts OPEN.
    Origin,
    /// Owns the listening socket; sends OPEN, allocates ids.
    Dest,
}

/// A protocol violation by the peer. Any of them ends the epoch: the loop
/// closes the WebSocket with [`Error::close_code`] and reconnects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A record header or payload runs past the end of its message.
    Truncated,
    UnknownType(u8),
    BadLength {
        kind: Kind,
        len: usize,
    },
    BadChannel {
        kind: Kind,
        channel: u32,
    },
    BadUtf8 {
        kind: Kind,
    },
    /// The first record was not HELLO, or HELLO came twice.
    Hello(&'static str),
    Version(u16),
    WindowTooSmall(u32),
    /// A record that this side must never receive, or that contradicts the
    /// channel's state (OPEN at the origin, id reuse, DATA after EOF...).
    Unexpected {
        kind: Kind,
        channel: u32,
        why: &'static str,
    },
    /// The peer sent more DATA than the window we granted.
    WindowExceeded {
        channel: u32,
    },
    /// CREDIT pushed a window past 2^32 - 1.
    CreditOverflow {
        channel: u32,
    },
    /// Dest only: all 2^32 - 1 channel ids of this epoch are used.
    IdsExhausted,
    /// v2: a SESSION record or resume state that does not add up.
    Resume(&'static str),
    /// The link is down (suspended or resuming): no new channel now.
    Suspended,
}

impl Error {
    /// WebSocket close code for this failure (application range 4000-4999:
    /// the frames were fine, the mux content was not).
    pub fn close_code(&self) -> u16 {
        4400
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "mux record truncated"),
            Error::UnknownType(t) => write!(f, "unknown mux record type {t}"),
            Error::BadLength { kind, len } => {
                write!(f, "mux {kind:?} record with bad length {len}")
            }
            Error::BadChannel { kind, channel } => {
                write!(f, "mux {kind:?} record on bad channel {channel}")
            }
            Error::BadUtf8 { kind } => write!(f, "mux {kind:?} reason is not UTF-8"),
            Error::Hello(why) => write!(f, "mux hello: {why}"),
            Error::Version(v) => write!(f, "peer speaks mux version {v}, we speak {VERSION}"),
            Error::WindowTooSmall(w) => write!(f, "peer window {w} below minimum {MIN_WINDOW}"),
            Error::Unexpected { kind, channel, why } => {
                write!(f, "unexpected mux {kind:?} on channel {channel}: {why}")
            }
            Error::WindowExceeded { channel } => {
                write!(
                    f,
                    "peer overran the flow-control window on channel {channel}"
                )
            }
            Error::CreditOverflow { channel } => write!(f, "credit overflow on channel {channel}"),
            Error::IdsExhausted => write!(f, "channel ids exhausted"),
            Error::Resume(why) => write!(f, "mux resume: {why}"),
            Error::Suspended => write!(f, "mux link is down"),
        }
    }
}
impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// What the loop must react to. Channel-level byte movement is reported as
/// [`Event::Service`]: "look at this channel again" (new data, EOF, window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer's HELLO arrived; `window` is its per-channel window.
    Ready { window: u32 },
    /// Origin: the dest opened `ChannelId`; answer with accept/reject_open.
    Open(ChannelId),
    /// Dest: the origin connected the channel to its socket.
    OpenOk(ChannelId),
    /// The channel is gone: OPEN_FAIL (dest) or CLOSE from the peer. The
    /// loop drops the socket at once; buffered bytes are discarded.
    Closed(ChannelId, String),
    /// Something changed for the channel: received data or EOF to deliver,
    /// or send window reopened.
    Service(ChannelId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenState {
    /// Dest: OPEN sent, no answer yet. Origin: OPEN received, not answered.
    Pending,
    Open,
}

#[derive(Debug)]
struct Channel {
    open: OpenState,
    /// Bytes we may still send (peer's grant). u64 so credit can't overflow
    /// our arithmetic; the protocol limit is checked separately.
    send_window: u64,
    eof_sent: bool,
    /// Received bytes not yet written to the unix socket: `recv[recv_pos..]`.
    recv: Vec<u8>,
    recv_pos: usize,
    /// Bytes the peer may still send before exceeding our grant.
    recv_window: u64,
    /// Consumed bytes not yet granted back.
    unacked: u64,
    eof_recv: bool,
    eof_delivered: bool,
    /// Origin, lazy OPEN_OK: accepted, OPEN_OK not queued yet.
    ok_pending: bool,
    // ---- v2 retention (see resume.rs) ----
    /// Bytes taken by `send_data` so far.
    sent_total: u64,
    /// Bytes the peer consumed (sum of CREDIT, or a RESUME entry).
    acked: u64,
    /// Our receive window for this channel: the HELLO window plus the
    /// WINDOW increments we sent.
    grant: u64,
    /// The peer's window for it: its HELLO window plus the WINDOW
    /// increments we received (at most `grant` on the peer's side).
    peer_grant: u64,
    /// Sent bytes `[acked, sent_total)`. A ring, so freeing acknowledged
    /// bytes never moves the rest.
    retained: VecDeque<u8>,
    recv_total: u64,
    consumed_total: u64,
    /// The peer delivered our EOF (EOF_ACK or a RESUME entry).
    eof_acked: bool,
}

impl Channel {
    fn new(open: OpenState, send_window: u32, recv_window: u32) -> Channel {
        Channel {
            open,
            send_window: send_window as u64,
            eof_sent: false,
            recv: Vec::new(),
            recv_pos: 0,
            recv_window: recv_window as u64,
            unacked: 0,
            eof_recv: false,
            eof_delivered: false,
            ok_pending: false,
            sent_total: 0,
            acked: 0,
            grant: recv_window as u64,
            peer_grant: send_window as u64,
            retained: VecDeque::new(),
            recv_total: 0,
            consumed_total: 0,
            eof_acked: false,
        }
    }
    /// Retained bytes from `skip` on (absolute offset `acked + skip`).
    fn retained_from(&self, skip: usize) -> Vec<u8> {
        let skip = skip.min(self.retained.len());
        self.retained.range(skip..).copied().collect()
    }
    /// The peer consumed up to `to` (absolute): free what it covers.
    fn ack_to(&mut self, to: u64) {
        let n = to
            .saturating_sub(self.acked)
            .min(self.retained.len() as u64) as usize;
        self.acked = to;
        self.retained.drain(..n);
        if self.retained.is_empty() && self.retained.capacity() > 4096 {
            // An idle channel keeps no buffer.
            self.retained = VecDeque::new();
        }
    }
    fn pending(&self) -> &[u8] {
        &self.recv[self.recv_pos..]
    }
    fn finished(&self, v2: bool) -> bool {
        self.open == OpenState::Open
            && self.eof_sent
            && (!v2 || self.eof_acked)
            && self.eof_recv
            && self.eof_delivered
            && self.recv_pos == self.recv.len()
    }
}

/// Tunables; the binaries use [`Config::client`].
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Window we advertise per channel and direction.
    pub window: u32,
    /// Largest outgoing batch in bytes (at least 64).
    pub max_batch: usize,
    /// Origin: [`Mux::accept_open`] does not queue OPEN_OK by itself; it
    /// goes out right before the channel's first DATA, EOF or CREDIT, in
    /// the same batch. The dest never waits for OPEN_OK (it sends data
    /// optimistically), so a lone OPEN_OK message is pure overhead: an
    /// ssh-agent style connection takes one WebSocket message (and one
    /// wakeup of dest and relay) fewer. The wire format is unchanged and
    /// any dest accepts it: records for a pending channel are processed as
    /// for an open one, and the channel cannot finish before OPEN_OK
    /// (which precedes our EOF) has arrived.
    pub lazy_open_ok: bool,
    /// Speak WINDOW records ([`GROW_MARK`]): advertise the mark, accept
    /// WINDOW from a peer, and grow our channels' windows up to
    /// `max_window` when the peer set the mark too.
    pub grow: bool,
    /// The largest a channel's receive window may grow to (with `grow`).
    pub max_window: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: INITIAL_WINDOW,
            max_batch: MAX_BATCH_BYTES,
            lazy_open_ok: false,
            grow: false,
            max_window: INITIAL_WINDOW,
        }
    }
}

impl Config {
    /// What origin and dest use: the defaults plus `lazy_open_ok`, and
    /// windows that grow up to [`DEFAULT_MAX_WINDOW`].
    pub fn client() -> Config {
        Config {
            lazy_open_ok: true,
            grow: true,
            max_window: DEFAULT_MAX_WINDOW,
            ..Config::default()
        }
    }

    /// `client()` for a `--channel-window` of `max`: channels start at
    /// [`INITIAL_WINDOW`] (or `max`, if smaller) and grow up to `max`.
    pub fn client_with_window(max: u32) -> Config {
        let max = max.max(MIN_WINDOW);
        Config {
            window: INITIAL_WINDOW.min(max),
            max_window: max,
            ..Config::client()
        }
    }
}

/// The mux state machine for one epoch. See the module docs.
#[derive(Debug)]
pub struct Mux {
    side: Side,
    cfg: Config,
    /// Peer's per-channel window, once its HELLO arrived.
    peer_window: Option<u32>,
    channels: HashMap<ChannelId, Channel>,
    /// Dest: next id to allocate. Origin: highest id the dest opened so far.
    id_mark: u32,
    out: VecDeque<Vec<u8>>,
    out_bytes: usize,
    spare: Vec<Vec<u8>>,
    events: VecDeque<Event>,
    failed: Option<Error>,
    /// Resume support (None: a v1-only mux, [`Mux::new`]).
    v2: Option<Box<V2>>,
    /// From the peer's HELLO: whether it speaks v2 (None: not known yet).
    peer_v2: Option<bool>,
    /// Both we and the peer (its HELLO) speak WINDOW ([`GROW_MARK`]).
    peer_grows: bool,
    /// v2: output after HELLO is held until the peer's HELLO says which
    /// version to speak (a v1 peer must never see a v2 record).
    hold: bool,
    /// The HELLO batch is still at the front of `out`.
    hello_pending: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Live,
    /// Link lost; channels kept.
    Suspended,
    /// New link: HELLO/SESSION under way.
    Resuming,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Fresh,
    Resume,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerSession {
    /// Nothing yet on this link.
    None,
    /// A RESUME we could not use; its FRESH follows.
    AwaitFresh,
    Done,
}

/// v2 state that outlives links. Debug hides the secrets.
struct V2 {
    secret: [u8; resume::SECRET_LEN],
    peer_secret: Option<[u8; resume::SECRET_LEN]>,
    link: Link,
    deadline: Option<Instant>,
    window: Duration,
    hash: Vec<u8>,
    sent: Option<Sent>,
    peer: PeerSession,
    /// Recently forgotten ids: None finished cleanly, Some(reason) closed.
    tombstones: VecDeque<(ChannelId, Option<String>)>,
    /// Outcome of the last SESSION exchange, until taken.
    outcome: Option<bool>,
}

impl fmt::Debug for V2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V2")
            .field("link", &self.link)
            .field("deadline", &self.deadline)
            .field("sent", &self.sent)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Mux {
    /// A new epoch. HELLO is queued at once (both sides send it first).
    pub fn new(side: Side, cfg: Config) -> Mux {
        let mut window = cfg.window.max(MIN_WINDOW);
        if cfg.grow {
            window |= GROW_MARK;
        }
        let cfg = Config {
            window,
            max_batch: cfg.max_batch.clamp(64, MAX_BATCH_BYTES),
            lazy_open_ok: cfg.lazy_open_ok,
            grow: cfg.grow,
            max_window: cfg.max_window.max(window),
        };
        let mut mux = Mux {
            side,
            cfg,
            peer_window: None,
            channels: HashMap::new(),
            id_mark: if side == Side::Dest { 1 } else { 0 },
            out: VecDeque::new(),
            out_bytes: 0,
            spare: Vec::new(),
            events: VecDeque::new(),
            failed: None,
            v2: None,
            peer_v2: None,
            peer_grows: false,
            hold: false,
            hello_pending: false,
        };
        mux.push_hello();
        mux
    }

    /// A v2 mux: resumable channels when the peer speaks v2 too (else
    /// plain v1). `secret` must be random per process (32 bytes from the
    /// OS); `resume_window` bounds how long channels wait for a new link.
    pub fn with_resume(
        side: Side,
        cfg: Config,
        secret: [u8; resume::SECRET_LEN],
        resume_window: Duration,
    ) -> Mux {
        let window = (cfg.window.max(MIN_WINDOW) & !0xff) | V2_WINDOW_MARK;
        let mut mux = Mux::new(side, Config { window, ..cfg });
        mux.out.clear();
        mux.out_bytes = 0;
        mux.v2 = Some(Box::new(V2 {
            secret,
            peer_secret: None,
            link: Link::Live,
            deadline: None,
            window: resume_window,
            hash: Vec::new(),
            sent: None,
            peer: PeerSession::None,
            tombstones: VecDeque::new(),
            outcome: None,
        }));
        mux.push_hello();
        mux
    }

    fn push_hello(&mut self) {
        let mut hello = [0u8; record::HELLO_LEN];
        hello[..2].copy_from_slice(&VERSION.to_be_bytes());
        hello[2..].copy_from_slice(&self.cfg.window.to_be_bytes());
        self.push_record(Kind::Hello, 0, &hello);
        if self.v2.is_some() {
            self.hold = true;
            self.hello_pending = true;
        }
    }

    fn link(&self) -> Link {
        self.v2.as_ref().map_or(Link::Live, |v| v.link)
    }

    /// v2 negotiated with this peer.
    fn v2_active(&self) -> bool {
        self.v2.is_some() && self.peer_v2 == Some(true)
    }

    /// Keep sent bytes until acknowledged (v2 possible with this peer).
    fn retaining(&self) -> bool {
        self.v2.is_some() && self.peer_v2 != Some(false)
    }

    /// False while the link is down or a resume is under way: the loop
    /// opens no channel and moves no bytes to the mux then.
    pub fn is_live(&self) -> bool {
        self.link() == Link::Live && self.failed.is_none()
    }

    /// The link is down and the channels wait for [`Mux::resume`] (they
    /// stay until the resume window passes).
    pub fn is_suspended(&self) -> bool {
        self.link() == Link::Suspended && self.failed.is_none()
    }

    /// Whether v2 (resume) was negotiated with the current peer.
    pub fn resumable(&self) -> bool {
        self.v2_active()
    }

    /// Bytes held for retransmission on `ch` (at most one peer window).
    pub fn retained_bytes(&self, ch: ChannelId) -> usize {
        self.channels.get(&ch).map_or(0, |c| c.retained.len())
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// True once the peer's HELLO arrived (and nothing failed).
    pub fn is_ready(&self) -> bool {
        self.peer_window.is_some() && self.failed.is_none()
    }

    /// The error that ended this epoch, if any. Once set, the mux ignores
    /// all input and produces no more output.
    pub fn error(&self) -> Option<&Error> {
        self.failed.as_ref()
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    pub fn contains(&self, ch: ChannelId) -> bool {
        self.channels.contains_key(&ch)
    }

    /// Live channel ids (any order).
    pub fn channel_ids(&self) -> Vec<ChannelId> {
        self.channels.keys().copied().collect()
    }

    // ---- output -------------------------------------------------------

    /// Bytes queued in unsent batches.
    pub fn queued_bytes(&self) -> usize {
        self.out_bytes
    }

    /// The next outgoing batch (one WebSocket message), oldest first.
    pub fn pop_batch(&mut self) -> Option<Vec<u8>> {
        if self.hold {
            if !self.hello_pending {
                return None;
            }
            self.hello_pending = false;
        }
        let b = self.out.pop_front()?;
        self.out_bytes -= b.len();
        Some(b)
    }

    /// Give a drained batch buffer back for reuse (optional).
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < 4 && buf.capacity() <= self.cfg.max_batch + BATCH_TAIL_ROOM {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Room in the back batch; a new batch is started when `need` won't fit.
    fn batch_for(&mut self, need: usize) -> &mut Vec<u8> {
        let hello_alone = self.hold && self.hello_pending && self.out.len() == 1;
        let fits = !hello_alone
            && self
                .out
                .back()
                .is_some_and(|b| b.len() + need <= self.cfg.max_batch);
        if !fits {
            let b = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(self.cfg.max_batch + BATCH_TAIL_ROOM));
            self.out.push_back(b);
        }
        self.out.back_mut().expect("a batch was just ensured")
    }

    fn push_record(&mut self, kind: Kind, ch: ChannelId, payload: &[u8]) {
        // While the link is down nothing goes out: every record a channel
        // operation would queue is regenerated from channel state when
        // the resume exchange completes (see `reconcile`).
        if self.link() != Link::Live && !matches!(kind, Kind::Hello | Kind::Session) {
            return;
        }
        debug_assert!(HEADER_LEN + payload.len() <= self.cfg.max_batch);
        let b = self.batch_for(HEADER_LEN + payload.len());
        record::encode(b, kind, ch, payload);
        self.out_bytes += HEADER_LEN + payload.len();
    }

    fn push_reason(&mut self, kind: Kind, ch: ChannelId, reason: &str) {
        let max = MAX_REASON_LEN.min(self.cfg.max_batch - HEADER_LEN);
        let r = record::truncate_reason(reason, max);
        self.push_record(kind, ch, r.as_bytes());
    }

    // ---- events -------------------------------------------------------

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- input --------------------------------------------------------

    /// Feed one whole WebSocket message (a batch of records). On error the
    /// epoch is over: the error is also kept in [`Mux::error`].
    pub fn recv_message(&mut self, msg: &[u8]) -> Result<()> {
        self.recv_message_with(msg, &mut |_, _| 0)
    }

    /// [`Mux::recv_message`], offering each DATA payload for a channel
    /// with nothing queued to `deliver` first (for instance a write straight
    /// to the channel's socket): the `k` bytes it returns as taken count as
    /// delivered at once (as by [`Mux::consume`]: credit, v2 accounting);
    /// only the rest is queued for [`Mux::pending`]. One copy less per byte
    /// while the socket keeps up.
    pub fn recv_message_with(
        &mut self,
        mut msg: &[u8],
        deliver: &mut dyn FnMut(ChannelId, &[u8]) -> usize,
    ) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !msg.is_empty() {
            let res = record::decode(msg).and_then(|(rec, n)| {
                self.on_record(rec, deliver)?;
                Ok(n)
            });
            match res {
                Ok(n) => msg = &msg[n..],
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: Error) -> Error {
        self.failed = Some(e.clone());
        self.out.clear();
        self.out_bytes = 0;
        e
    }

    /// An id the peer refers to: known, forgotten (ignore), or never opened.
    fn lookup(&self, kind: Kind, ch: ChannelId) -> Result<bool> {
        if self.channels.contains_key(&ch) {
            return Ok(true);
        }
        let ever_opened = match self.side {
            Side::Dest => ch < self.id_mark,
            Side::Origin => ch <= self.id_mark,
        };
        if ever_opened {
            Ok(false)
        } else {
            Err(Error::Unexpected {
                kind,
                channel: ch,
                why: "channel was never opened",
            })
        }
    }

    fn on_record(
        &mut self,
        rec: Record<'_>,
        deliver: &mut dyn FnMut(ChannelId, &[u8]) -> usize,
    ) -> Result<()> {
        let kind = rec.kind();
        let Some(peer_window) = self.peer_window else {
            let Record::Hello { version, window } = rec else {
                return Err(Error::Hello("first record is not HELLO"));
            };
            if version != VERSION {
                return Err(Error::Version(version));
            }
            if window < MIN_WINDOW {
                return Err(Error::WindowTooSmall(window));
            }
            self.peer_window = Some(window);
            self.peer_grows = self.cfg.grow && window & GROW_MARK != 0;
            let peer_v2 = window & 0xff == V2_WINDOW_MARK;
            if self.v2.is_some() {
                return self.on_hello_v2(window, peer_v2);
            }
            self.peer_v2 = Some(false);
            self.hello_windows(window);
            self.events.push_front(Event::Ready { window });
            return Ok(());
        };
        if self.v2_active() {
            let peer = self.v2.as_ref().map_or(PeerSession::Done, |v| v.peer);
            match rec {
                Record::Session { payload } => return self.on_session(payload),
                _ if peer != PeerSession::Done => {
                    return Err(Error::Resume("first record after HELLO is not SESSION"))
                }
                _ => {}
            }
        }
        match rec {
            Record::Hello { .. } => return Err(Error::Hello("second HELLO")),
            Record::Session { .. } => {
                return Err(unexpected(Kind::Session, 0, "SESSION without v2"))
            }
            Record::EofAck { channel } => {
                if !self.v2_active() {
                    return Err(unexpected(kind, channel, "EOF_ACK without v2"));
                }
                if !self.lookup(kind, channel)? {
                    return Ok(());
                }
                let c = self.channels.get_mut(&channel).expect("looked up");
                if !c.eof_sent {
                    return Err(unexpected(kind, channel, "EOF_ACK before our EOF"));
                }
                c.eof_acked = true;
                let all = c.sent_total;
                c.ack_to(all);
                self.check_finished(channel);
            }
            Record::Open { channel } => {
                if self.side != Side::Origin {
                    return Err(unexpected(kind, channel, "OPEN sent to the dest"));
                }
                if channel <= self.id_mark {
                    return Err(unexpected(kind, channel, "channel id reused"));
                }
                self.id_mark = channel;
                let c = Channel::new(OpenState::Pending, peer_window, self.cfg.window);
                self.channels.insert(channel, c);
                self.events.push_back(Event::Open(channel));
            }
            Record::OpenOk { channel } | Record::OpenFail { channel, .. } => {
                if self.side != Side::Dest {
                    return Err(unexpected(kind, channel, "open answer sent to the origin"));
                }
                if !self.lookup(kind, channel)? {
                    return Ok(());
                }
                let c = self.channels.get_mut(&channel).expect("looked up");
                if c.open != OpenState::Pending {
                    return Err(unexpected(kind, channel, "channel already open"));
                }
                if let Record::OpenFail { reason, .. } = rec {
                    self.channels.remove(&channel);
                    self.events
                        .push_back(Event::Closed(channel, reason.to_string()));
                } else {
                    c.open = OpenState::Open;
                    self.events.push_back(Event::OpenOk(channel));
                    self.check_finished(channel);
                }
            }
            Record::Data { channel, data } => {
                if !self.lookup(kind, channel)? {
                    return Ok(());
                }
                let c = self.channels.get_mut(&channel).expect("looked up");
                if c.eof_recv {
                    return Err(unexpected(kind, channel, "DATA after EOF"));
                }
                if data.len() as u64 > c.recv_window {
                    return Err(Error::WindowExceeded { channel });
                }
                c.recv_window -= data.len() as u64;
                c.recv_total += data.len() as u64;
                if data.is_empty() {
                    return Ok(());
                }
                if c.recv_pos == c.recv.len() {
                    c.recv.clear();
                    c.recv_pos = 0;
                    // Nothing queued: the socket may take it at once.
                    let taken = deliver(channel, data).min(data.len());
                    if taken > 0 {
                        self.delivered(channel, taken);
                        let Some(c) = self.channels.get_mut(&channel) else {
                            return Ok(());
                        };
                        c.recv.extend_from_slice(&data[taken..]);
                        if taken < data.len() {
                            self.events.push_back(Event::Service(channel));
                        }
                        return Ok(());
                    }
                }
                c.recv.extend_from_slice(data);
                self.events.push_back(Event::Service(channel));
            }
            Record::Eof { channel } => {
                if !self.lookup(kind, channel)? {
                    return Ok(());
                }
                let c = self.channels.get_mut(&channel).expect("looked up");
                if c.eof_recv {
                    return Err(unexpected(kind, channel, "second EOF"));
                }
                c.eof_recv = true;
                self.events.push_back(Event::Service(channel));
            }
            Record::Close { channel, reason } => {
                if !self.lookup(kind, channel)? {
                    return Ok(());
                }
                self.channels.remove(&channel);
                self.events
                    .push_back(Event::Closed(channel, reason.to_string()));
            }
            Record::Credit { channel, increment } => {
                let v2 = self.v2_active();
                if !self.lookup(kind, channel)? {
                    return Ok(());
                }
                let c = self.channels.get_mut(&channel).expect("looked up");
                let was_closed = c.send_window == 0;
                c.send_window += increment as u64;
                if c.send_window > u32::MAX as u64 {
                    return Err(Error::CreditOverflow { channel });
                }
                if c.acked + increment as u64 > c.sent_total && v2 {
                    return Err(unexpected(kind, channel, "credit for bytes never sent"));
                }
                let to = c.acked + increment as u64;
                c.ack_to(to);
                if was_closed && increment > 0 && !c.eof_sent {
                    self.events.push_back(Event::Service(channel));
                }
            }
            Record::Window { channel, increment } => {
                if !self.cfg.grow {
                    return Err(unexpected(kind, channel, "WINDOW, which we never offered"));
                }
                if !self.lookup(kind, channel)? {
                    return Ok(());
                }
                let c = self.channels.get_mut(&channel).expect("looked up");
                let was_closed = c.send_window == 0;
                c.send_window += increment as u64;
                c.peer_grant += increment as u64;
                if c.send_window > u32::MAX as u64 || c.peer_grant > MAX_GROWN_WINDOW {
                    return Err(Error::CreditOverflow { channel });
                }
                if was_closed && increment > 0 && !c.eof_sent {
                    self.events.push_back(Event::Service(channel));
                }
            }
        }
        Ok(())
    }

    // ---- channel operations (the loop calls these) --------------------

    /// Dest: open a new channel; OPEN is queued. Data may be sent at once
    /// (within the peer's window, once known): the origin buffers it until
    /// its connect completes, which saves a round trip per connection.
    pub fn open(&mut self) -> Result<ChannelId> {
        assert_eq!(self.side, Side::Dest, "only the dest opens channels");
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.link() != Link::Live {
            return Err(Error::Suspended);
        }
        if self.id_mark == u32::MAX {
            return Err(Error::IdsExhausted);
        }
        let id = self.id_mark;
        self.id_mark += 1;
        let c = Channel::new(
            OpenState::Pending,
            self.peer_window.unwrap_or(0),
            self.cfg.window,
        );
        self.channels.insert(id, c);
        self.push_record(Kind::Open, id, &[]);
        Ok(id)
    }

    /// Origin: the socket connect succeeded; OPEN_OK is queued.
    pub fn accept_open(&mut self, ch: ChannelId) {
        if self.failed.is_some() {
            return;
        }
        if let Some(c) = self.channels.get_mut(&ch) {
            if self.side == Side::Origin && c.open == OpenState::Pending {
                c.open = OpenState::Open;
                if self.cfg.lazy_open_ok {
                    c.ok_pending = true;
                } else {
                    self.push_record(Kind::OpenOk, ch, &[]);
                }
                self.check_finished(ch);
            }
        }
    }

    /// Lazy OPEN_OK: queue it now, before the channel's next record.
    fn send_open_ok(&mut self, ch: ChannelId) {
        if let Some(c) = self.channels.get_mut(&ch) {
            if c.ok_pending {
                c.ok_pending = false;
                self.push_record(Kind::OpenOk, ch, &[]);
            }
        }
    }

    /// Origin: the connect failed; OPEN_FAIL is queued and the id forgotten.
    pub fn reject_open(&mut self, ch: ChannelId, reason: &str) {
        if self.failed.is_some() {
            return;
        }
        if self.side == Side::Origin
            && self
                .channels
                .get(&ch)
                .is_some_and(|c| c.open == OpenState::Pending)
        {
            self.channels.remove(&ch);
            self.tombstone(ch, Some(reason));
            self.push_reason(Kind::OpenFail, ch, reason);
        }
    }

    /// Bytes the loop may pass to [`Mux::send_data`] now (0 for unknown or
    /// half-closed channels, or while the peer's HELLO is outstanding).
    pub fn send_window(&self, ch: ChannelId) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        if self.link() != Link::Live {
            return 0;
        }
        match self.channels.get(&ch) {
            Some(c) if !c.eof_sent => c.send_window.min(usize::MAX as u64) as usize,
            _ => 0,
        }
    }

    /// Queue DATA for `ch`; returns how many bytes were taken (at most the
    /// send window). Split into records that fill batches; order within the
    /// channel is the order of calls.
    pub fn send_data(&mut self, ch: ChannelId, mut data: &[u8]) -> usize {
        let take = data.len().min(self.send_window(ch));
        if take == 0 {
            return 0;
        }
        data = &data[..take];
        self.send_open_ok(ch);
        let retain = self.retaining();
        // Retention never exceeds the peer's window (flow control): grow
        // the ring by doubling, but never past that, so that a full window
        // costs one window, not the next power of two above it.

        if let Some(c) = self.channels.get_mut(&ch) {
            c.send_window -= take as u64;
            c.sent_total += take as u64;
            if retain {
                let need = c.retained.len() + take;
                if need > c.retained.capacity() {
                    // The peer's window for this channel, grown ones included.
                    let cap_limit = usize::try_from(c.peer_grant).unwrap_or(usize::MAX);
                    let target = (c.retained.capacity() * 2).min(cap_limit).max(need);
                    c.retained.reserve_exact(target - c.retained.len());
                }
                c.retained.extend(data);
            }
        }
        self.push_data(ch, data);
        take
    }

    /// Like [`Mux::send_data`], but the bytes are not copied in: `fill`
    /// appends up to `n` bytes (its second argument) to the batch being
    /// built, for instance by reading a socket straight into it, and
    /// returns whatever it likes (`R`). The record is sized to what `fill`
    /// appended (nothing is queued when that is 0); only retention (mux
    /// v2) copies the bytes. `n` is at most `max`, the send window and one
    /// record, and may be less where the batch being built has room left.
    /// Returns how many bytes were taken and `fill`'s result; `None` (and
    /// `fill` is not called) when the window is closed or `max` is 0.
    pub fn send_data_with<R>(
        &mut self,
        ch: ChannelId,
        max: usize,
        fill: impl FnOnce(&mut Vec<u8>, usize) -> R,
    ) -> Option<(usize, R)> {
        let take = max.min(self.send_window(ch)).min(record::MAX_PAYLOAD_LEN);
        if take == 0 {
            return None;
        }
        self.send_open_ok(ch);
        let max_batch = self.cfg.max_batch;
        let room = self
            .out
            .back()
            .map_or(0, |b| max_batch.saturating_sub(b.len() + HEADER_LEN));
        // As in push_data: fill the back batch unless only a sliver fits.
        let chunk = if room >= take || room >= MIN_DATA_SPLIT {
            room.min(take)
        } else {
            (max_batch - HEADER_LEN).min(take)
        };
        let batches = self.out.len();
        let b = self.batch_for(HEADER_LEN + chunk);
        let start = b.len();
        record::encode_header(b, Kind::Data, ch, chunk);
        let body = b.len();
        let r = fill(b, chunk);
        // `fill` may only append, at most `chunk` bytes.
        debug_assert!(b.len() >= body && b.len() <= body + chunk);
        if b.len() > body + chunk {
            b.truncate(body + chunk);
        }
        let k = b.len().saturating_sub(body);
        if k == 0 {
            b.truncate(start);
            if self.out.len() > batches {
                if let Some(empty) = self.out.pop_back() {
                    self.recycle(empty);
                }
            }
            return Some((0, r));
        }
        record::set_payload_len(&mut b[start..body], k);
        self.out_bytes += HEADER_LEN + k;
        let retain = self.retaining();

        let data = self.out.back().map_or(&[][..], |b| &b[body..body + k]);
        if let Some(c) = self.channels.get_mut(&ch) {
            c.send_window -= k as u64;
            c.sent_total += k as u64;
            if retain {
                let need = c.retained.len() + k;
                if need > c.retained.capacity() {
                    // The peer's window for this channel, grown ones included.
                    let cap_limit = usize::try_from(c.peer_grant).unwrap_or(usize::MAX);
                    let target = (c.retained.capacity() * 2).min(cap_limit).max(need);
                    c.retained.reserve_exact(target - c.retained.len());
                }
                c.retained.extend(data);
            }
        }
        Some((k, r))
    }

    /// Queue DATA records for `data` (already accounted for).
    fn push_data(&mut self, ch: ChannelId, mut data: &[u8]) {
        let max_batch = self.cfg.max_batch;
        while !data.is_empty() {
            let room = self
                .out
                .back()
                .map_or(0, |b| max_batch.saturating_sub(b.len() + HEADER_LEN));
            let chunk = if room >= data.len() || room >= MIN_DATA_SPLIT {
                room.min(data.len())
            } else {
                (max_batch - HEADER_LEN).min(data.len())
            };
            let chunk = chunk.min(record::MAX_PAYLOAD_LEN);
            let b = self.batch_for(HEADER_LEN + chunk);
            record::encode(b, Kind::Data, ch, &data[..chunk]);
            self.out_bytes += HEADER_LEN + chunk;
            data = &data[chunk..];
        }
    }

    /// The local socket reached EOF: queue EOF (our direction is finished).
    pub fn send_eof(&mut self, ch: ChannelId) {
        if self.failed.is_some() {
            return;
        }
        if let Some(c) = self.channels.get_mut(&ch) {
            if !c.eof_sent {
                c.eof_sent = true;
                self.send_open_ok(ch);
                self.push_record(Kind::Eof, ch, &[]);
                self.check_finished(ch);
            }
        }
    }

    /// Abort the channel: CLOSE is queued and the id forgotten; anything
    /// the peer still sends for it is ignored.
    pub fn close(&mut self, ch: ChannelId, reason: &str) {
        if self.failed.is_some() {
            return;
        }
        if self.channels.remove(&ch).is_some() {
            self.tombstone(ch, Some(reason));
            self.push_reason(Kind::Close, ch, reason);
        }
    }

    /// Received bytes waiting to be written to the channel's socket.
    pub fn pending(&self, ch: ChannelId) -> &[u8] {
        self.channels.get(&ch).map_or(&[], |c| c.pending())
    }

    /// True when the peer's EOF has arrived and every byte before it has
    /// been consumed, and the loop has not yet reported `eof_delivered`:
    /// time for `shutdown(SHUT_WR)`.
    pub fn wants_shutdown(&self, ch: ChannelId) -> bool {
        self.channels
            .get(&ch)
            .is_some_and(|c| c.eof_recv && !c.eof_delivered && c.pending().is_empty())
    }

    /// `n` bytes of [`Mux::pending`] were written to the socket. Credit is
    /// granted back in batches of at least half a window.
    pub fn consume(&mut self, ch: ChannelId, n: usize) {
        if self.failed.is_some() {
            return;
        }
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        let n = n.min(c.pending().len());
        if n == 0 {
            return;
        }
        c.recv_pos += n;
        if c.recv_pos == c.recv.len() {
            c.recv_pos = 0;
            c.recv.clear();
            // An idle channel keeps no buffer.
            if c.recv.capacity() > 4096 {
                c.recv = Vec::new();
            }
        } else if c.recv_pos > c.recv.len() / 2 {
            c.recv.drain(..c.recv_pos);
            c.recv_pos = 0;
        }
        self.delivered(ch, n);
    }

    /// `n` received bytes reached the channel's socket (from the queue or
    /// straight from a message): credit them back, at least half a window
    /// at a time.
    fn delivered(&mut self, ch: ChannelId, n: usize) {
        let live = self.link() == Link::Live;
        let max = if self.peer_grows {
            self.cfg.max_window as u64
        } else {
            0
        };
        let Some(c) = self.channels.get_mut(&ch) else {
            return;
        };
        c.unacked += n as u64;
        c.consumed_total += n as u64;
        if live && c.unacked >= (c.grant / 2).max(1) && !c.eof_recv {
            // unacked <= window <= u32::MAX: it fits the record.
            let inc = c.unacked as u32;
            c.unacked = 0;
            c.recv_window += inc as u64;
            // Half the window consumed and nothing left queued for the
            // socket: the window, not our socket, limits this channel.
            // Double it (up to the maximum).
            let grow = if c.grant < max && c.pending().is_empty() {
                let extra = c.grant.min(max - c.grant) as u32;
                c.grant += extra as u64;
                c.recv_window += extra as u64;
                extra
            } else {
                0
            };
            self.send_open_ok(ch);
            self.push_record(Kind::Credit, ch, &inc.to_be_bytes());
            if grow > 0 {
                self.push_record(Kind::Window, ch, &grow.to_be_bytes());
            }
        }
        self.check_finished(ch);
    }

    /// The loop did `shutdown(SHUT_WR)` after the peer's EOF.
    pub fn eof_delivered(&mut self, ch: ChannelId) {
        let v2 = self.v2_active();
        let mut ack = false;
        if let Some(c) = self.channels.get_mut(&ch) {
            if c.eof_recv && !c.eof_delivered {
                c.eof_delivered = true;
                ack = v2;
            }
        }
        if ack {
            self.push_record(Kind::EofAck, ch, &[]);
        }
        self.check_finished(ch);
    }

    /// Whether the peer's EOF has been received on `ch`.
    pub fn eof_received(&self, ch: ChannelId) -> bool {
        self.channels.get(&ch).is_some_and(|c| c.eof_recv)
    }

    /// Whether we sent EOF on `ch`.
    pub fn eof_sent(&self, ch: ChannelId) -> bool {
        self.channels.get(&ch).is_some_and(|c| c.eof_sent)
    }

    /// Both directions done: the id is forgotten without a CLOSE (each side
    /// knows the other has nothing more to send). The loop notices with
    /// [`Mux::contains`] and drops the socket.
    fn check_finished(&mut self, ch: ChannelId) {
        let v2 = self.v2_active();
        if self.channels.get(&ch).is_some_and(|c| c.finished(v2)) {
            self.channels.remove(&ch);
            self.tombstone(ch, None);
            // The loop may still hold the channel's socket (v2: the last
            // EOF_ACK arrived after both directions were done there).
            self.events.push_back(Event::Service(ch));
        }
    }

    fn tombstone(&mut self, ch: ChannelId, reason: Option<&str>) {
        if !self.retaining() {
            return;
        }
        if let Some(v) = self.v2.as_mut() {
            if v.tombstones.len() >= MAX_TOMBSTONES {
                v.tombstones.pop_front();
            }
            v.tombstones.push_back((ch, reason.map(str::to_string)));
        }
    }
}

impl Mux {
    // ---- v2: suspend and resume --------------------------------------

    /// Channels opened before HELLO (dest) get their send window now.
    fn hello_windows(&mut self, window: u32) {
        let mut ids: Vec<_> = self.channels.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(c) = self.channels.get_mut(&id) {
                c.send_window = window as u64;
                c.peer_grant = window as u64;
            }
            self.events.push_back(Event::Service(id));
        }
    }

    fn side_byte(side: Side) -> u8 {
        match side {
            Side::Origin => b'o',
            Side::Dest => b'd',
        }
    }

    fn on_hello_v2(&mut self, window: u32, peer_v2: bool) -> Result<()> {
        self.peer_v2 = Some(peer_v2);
        let resuming = self.link() == Link::Resuming;
        // Release held output, SESSION first (right after HELLO).
        let mut rest = std::mem::take(&mut self.out);
        if self.hello_pending {
            if let Some(h) = rest.pop_front() {
                self.out.push_back(h);
            }
        }
        self.hold = false;
        if !peer_v2 {
            for c in self.channels.values_mut() {
                c.retained = VecDeque::new();
            }
            if let Some(v) = self.v2.as_mut() {
                v.tombstones.clear();
            }
            if resuming {
                self.close_all("the peer does not support resume (mux v1)");
                self.set_live();
            } else {
                self.hello_windows(window);
            }
            self.out.extend(rest);
            self.events.push_front(Event::Ready { window });
            return Ok(());
        }
        let Some(v) = self.v2.as_mut() else {
            return Ok(());
        };
        // No handshake hash (plaintext mode): a proof would be replayable
        // by the relay, so never resume.
        let payload = if resuming && v.peer_secret.is_some() && !v.hash.is_empty() {
            v.sent = Some(Sent::Resume);
            let entries = self.resume_entries();
            let v = self.v2.as_ref().expect("v2");
            resume::encode_resume(
                &v.secret,
                Mux::side_byte(self.side),
                &v.hash,
                self.id_mark,
                &entries,
            )
        } else {
            v.sent = Some(Sent::Fresh);
            if resuming {
                // Starting over on a link that cannot resume: what we held
                // is gone, and the secret we now send is a new one.
                v.secret = resume::rotate(&v.secret, &v.hash);
                v.peer_secret = None;
            }
            let p = resume::encode_fresh(&v.secret);
            if resuming {
                self.close_all("this link cannot resume channels (no end-to-end handshake)");
                if self.side == Side::Origin {
                    self.id_mark = 0;
                }
            }
            p
        };
        self.push_record(Kind::Session, 0, &payload);
        self.out.extend(rest);
        if !resuming {
            self.hello_windows(window);
        }
        self.events.push_front(Event::Ready { window });
        Ok(())
    }

    /// Our channels' receive state for RESUME; from here on our receive
    /// windows restart from what we report.
    fn resume_entries(&mut self) -> Vec<resume::Entry> {
        let mut ids: Vec<_> = self.channels.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| {
                let c = self.channels.get_mut(&id)?;
                c.unacked = 0;
                // Our grant, grown windows included: what the peer may have
                // sent and will send again covers at most that.
                c.recv_window = (c.consumed_total + c.grant).saturating_sub(c.recv_total);
                let mut flags = 0;
                if c.open == OpenState::Open {
                    flags |= resume::F_OPEN;
                }
                if c.eof_recv {
                    flags |= resume::F_EOF_RECV;
                }
                if c.eof_delivered {
                    flags |= resume::F_EOF_DELIVERED;
                }
                Some(resume::Entry {
                    channel: id,
                    flags,
                    recv_total: c.recv_total,
                    consumed: c.consumed_total,
                })
            })
            .collect()
    }

    fn set_live(&mut self) {
        if let Some(v) = self.v2.as_mut() {
            v.link = Link::Live;
            v.deadline = None;
        }
    }

    /// Close every channel locally (the peer does the same on its side, or
    /// already forgot them); each gets an [`Event::Closed`].
    fn close_all(&mut self, why: &str) {
        let mut ids: Vec<_> = self.channels.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.channels.remove(&id);
            self.events.push_back(Event::Closed(id, why.to_string()));
        }
        if let Some(v) = self.v2.as_mut() {
            v.tombstones.clear();
        }
    }

    /// Old channels cannot continue on this link: close them, start a fresh
    /// session with a rotated secret.
    fn start_over(&mut self, why: &str) {
        self.close_all(why);
        if self.side == Side::Origin {
            // A new dest instance counts its ids from 1 again.
            self.id_mark = 0;
        }
        let Some(v) = self.v2.as_mut() else {
            return;
        };
        v.secret = resume::rotate(&v.secret, &v.hash);
        v.peer_secret = None;
        v.sent = Some(Sent::Fresh);
        let p = resume::encode_fresh(&v.secret);
        self.push_record(Kind::Session, 0, &p);
    }

    fn on_session(&mut self, payload: &[u8]) -> Result<()> {
        let session = resume::decode(payload).ok_or(Error::Resume("malformed SESSION"))?;
        let Some(v) = self.v2.as_mut() else {
            return Err(Error::Resume("SESSION without v2"));
        };
        if v.peer == PeerSession::Done {
            return Err(Error::Resume("second SESSION"));
        }
        match session {
            resume::Session::Fresh { secret } => {
                let we_resumed = v.sent == Some(Sent::Resume);
                if we_resumed {
                    log::info!("mux: the peer is a new instance; its old channels are gone");
                    self.start_over("the peer restarted or is another instance: channel lost");
                }
                let v = self.v2.as_mut().expect("v2");
                v.peer_secret = Some(secret);
                v.peer = PeerSession::Done;
                v.outcome = Some(false);
                self.set_live();
            }
            resume::Session::Resume {
                proof,
                id_mark,
                entries,
                signed,
            } => {
                if v.peer == PeerSession::AwaitFresh {
                    return Err(Error::Resume("second RESUME"));
                }
                if v.sent != Some(Sent::Resume) {
                    // We are fresh: the peer learns it from our FRESH and
                    // answers with its own.
                    v.peer = PeerSession::AwaitFresh;
                    return Ok(());
                }
                let peer_side = match self.side {
                    Side::Origin => Side::Dest,
                    Side::Dest => Side::Origin,
                };
                let ok = !v.hash.is_empty()
                    && v.peer_secret.is_some_and(|ps| {
                        resume::verify(&ps, Mux::side_byte(peer_side), &v.hash, &signed, &proof)
                    });
                if !ok {
                    log::warn!("mux: resume proof failed; closing the old channels");
                    v.peer = PeerSession::AwaitFresh;
                    self.start_over("the peer could not prove it held this channel");
                    return Ok(());
                }
                v.peer = PeerSession::Done;
                self.reconcile(id_mark, &entries)?;
                self.set_live();
                if let Some(v) = self.v2.as_mut() {
                    v.outcome = Some(true);
                }
            }
        }
        Ok(())
    }

    /// Both sides proved themselves: continue every channel where the
    /// peer's entries say, regenerate what the outage swallowed.
    fn reconcile(&mut self, peer_mark: u32, entries: &[resume::Entry]) -> Result<()> {
        let peer_window = self.peer_window.unwrap_or(0) as u64;
        self.set_live();
        let mut listed = std::collections::HashSet::new();
        for e in entries {
            if !listed.insert(e.channel) {
                return Err(Error::Resume("channel listed twice"));
            }
            let ch = e.channel;
            let Some(c) = self.channels.get_mut(&ch) else {
                // We forgot it (or, origin, never saw its OPEN: the dest
                // sends that again itself).
                let known = match self.side {
                    Side::Dest => ch < self.id_mark,
                    Side::Origin => ch <= self.id_mark,
                };
                if !known {
                    if self.side == Side::Dest {
                        return Err(Error::Resume("peer lists a channel never opened"));
                    }
                    continue;
                }
                let stone = self
                    .v2
                    .as_ref()
                    .and_then(|v| v.tombstones.iter().find(|t| t.0 == ch).cloned());
                match stone {
                    Some((_, None)) if e.flags & resume::F_EOF_RECV != 0 => {
                        self.push_record(Kind::EofAck, ch, &[]);
                    }
                    Some((_, Some(r))) => self.push_reason(Kind::Close, ch, &r),
                    _ => self.push_reason(Kind::Close, ch, "channel closed during the outage"),
                }
                continue;
            };
            let eof_recv = e.flags & resume::F_EOF_RECV != 0;
            let delivered = e.flags & resume::F_EOF_DELIVERED != 0;
            if e.consumed > e.recv_total
                || e.recv_total > c.sent_total
                || e.consumed < c.acked
                || (eof_recv && !c.eof_sent)
                || (delivered && (!eof_recv || e.consumed != c.sent_total))
            {
                return Err(Error::Resume("peer's channel state contradicts ours"));
            }
            c.ack_to(e.consumed);
            if delivered {
                c.eof_acked = true;
            }
            // The peer's window as we know it (WINDOW records in flight
            // when the link broke are lost: at most the peer's own grant).
            c.send_window = (e.consumed + c.peer_grant).saturating_sub(c.sent_total);
            let skip = (e.recv_total - c.acked) as usize;
            let resend = c.retained_from(skip);
            let send_eof = c.eof_sent && !eof_recv;
            let send_ok = self.side == Side::Origin
                && c.open == OpenState::Open
                && e.flags & resume::F_OPEN == 0;
            c.ok_pending = false;
            let eof_ack = c.eof_delivered;
            let credit = if c.unacked >= (c.grant / 2).max(1) && !c.eof_recv {
                let inc = c.unacked as u32;
                c.unacked = 0;
                c.recv_window += inc as u64;
                Some(inc)
            } else {
                None
            };
            if send_ok {
                self.push_record(Kind::OpenOk, ch, &[]);
            }
            self.push_data(ch, &resend);
            if send_eof {
                self.push_record(Kind::Eof, ch, &[]);
            }
            if eof_ack {
                self.push_record(Kind::EofAck, ch, &[]);
            }
            if let Some(inc) = credit {
                self.push_record(Kind::Credit, ch, &inc.to_be_bytes());
            }
            self.events.push_back(Event::Service(ch));
        }
        // Dest: channels whose OPEN never reached the origin start over.
        if self.side == Side::Dest {
            let mut ids: Vec<_> = self
                .channels
                .keys()
                .copied()
                .filter(|id| *id > peer_mark && !listed.contains(id))
                .collect();
            ids.sort_unstable();
            for ch in ids {
                let Some(c) = self.channels.get_mut(&ch) else {
                    continue;
                };
                c.send_window = peer_window.saturating_sub(c.sent_total);
                c.peer_grant = peer_window;
                let resend = c.retained_from(0);
                let eof = c.eof_sent;
                self.push_record(Kind::Open, ch, &[]);
                self.push_data(ch, &resend);
                if eof {
                    self.push_record(Kind::Eof, ch, &[]);
                }
                self.events.push_back(Event::Service(ch));
            }
        }
        let ids: Vec<_> = self.channels.keys().copied().collect();
        for ch in ids {
            self.check_finished(ch);
        }
        Ok(())
    }

    /// The link is gone. A v2 mux keeps its channels (their sockets stay
    /// open, nothing more goes out) for the resume window and returns true;
    /// otherwise every channel is closed (events) and it returns false.
    pub fn suspend(&mut self, now: Instant) -> bool {
        self.out.clear();
        self.out_bytes = 0;
        self.hold = false;
        self.hello_pending = false;
        // peer_secret is only ever learnt from a v2 peer; during a resume
        // the new peer's version may not be known yet.
        let ok = self.failed.is_none()
            && self.peer_v2 != Some(false)
            && self.v2.as_ref().is_some_and(|v| v.peer_secret.is_some());
        if !ok {
            let why = match &self.failed {
                Some(e) => format!("relay link lost after a protocol error ({e})"),
                None => "relay link lost (channel resume not negotiated)".to_string(),
            };
            self.close_all(&why);
            // Spent: the loop makes a new Mux for the next link.
            self.failed
                .get_or_insert(Error::Resume("link lost without resume"));
            return false;
        }
        let mut ids: Vec<_> = self.channels.keys().copied().collect();
        let max = resume::max_channels(self.cfg.max_batch);
        if ids.len() > max {
            ids.sort_unstable();
            for id in ids.split_off(max) {
                self.channels.remove(&id);
                self.events
                    .push_back(Event::Closed(id, "too many channels to resume".into()));
            }
        }
        if let Some(v) = self.v2.as_mut() {
            if v.link == Link::Live {
                v.deadline = Some(now + v.window);
            }
            v.link = Link::Suspended;
        }
        true
    }

    /// A new link is up and its Noise handshake done (`handshake_hash`
    /// from it): HELLO is queued, then the SESSION exchange decides which
    /// channels continue. Without a prior [`Mux::suspend`] this does
    /// nothing.
    pub fn resume(&mut self, now: Instant, handshake_hash: &[u8]) {
        let _ = now;
        if self.v2.as_ref().is_none_or(|v| v.link != Link::Suspended) {
            return;
        }
        self.out.clear();
        self.out_bytes = 0;
        self.peer_window = None;
        // peer_v2 stays: until the new HELLO says otherwise, channels keep
        // v2 rules (a channel is not forgotten before its EOF is acked).
        if let Some(v) = self.v2.as_mut() {
            v.link = Link::Resuming;
            v.hash = handshake_hash.to_vec();
            v.sent = None;
            v.peer = PeerSession::None;
        }
        self.push_hello();
    }

    /// v2: once per SESSION exchange on a new link: `Some(true)` when the
    /// old channels carried over, `Some(false)` when they were closed (each
    /// with its own [`Event::Closed`]) or this is the first link.
    pub fn take_session_outcome(&mut self) -> Option<bool> {
        self.v2.as_mut().and_then(|v| v.outcome.take())
    }

    /// When [`Mux::handle_timeout`] wants to run (the resume window's end).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.v2.as_ref().and_then(|v| v.deadline)
    }

    /// The resume window passed without a resume: close every retained
    /// channel with a reason. A resume under way fails (the loop drops the
    /// link; the next one starts fresh).
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(v) = self.v2.as_mut() else {
            return;
        };
        if v.deadline.is_none_or(|d| now < d) {
            return;
        }
        let secs = v.window.as_secs_f64();
        v.deadline = None;
        v.peer_secret = None;
        let resuming = v.link == Link::Resuming;
        log::warn!("mux: resume window of {secs:.0} s expired; closing the channels");
        self.close_all(&format!(
            "relay link down longer than the resume window ({secs:.0} s)"
        ));
        if resuming {
            self.fail(Error::Resume("resume window expired"));
        }
    }
}

fn unexpected(kind: Kind, channel: u32, why: &'static str) -> Error {
    Error::Unexpected { kind, channel, why }
}

#[cfg(test)]
mod tests;

#[cfg(all(test, feature = "e2e"))]
mod tests_resume;
