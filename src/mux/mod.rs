//! End-to-end mux protocol between origin and dest, sans-IO (quiche-style).
//!
//! One [`Mux`] lives for one *epoch* of a session: from the moment origin and
//! dest can talk (after the Noise handshake, or at pairing in plaintext mode)
//! until the WebSocket drops or the peer changes. It never touches a socket:
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

pub mod record;

use std::collections::{HashMap, VecDeque};
use std::fmt;

use record::{Kind, Record, HEADER_LEN, MAX_REASON_LEN};

/// Protocol version carried in HELLO.
pub const VERSION: u16 = 1;
/// Per-channel, per-direction window we advertise: the most a peer may send
/// on one channel before we grant credit, hence the most we buffer for it.
pub const INITIAL_WINDOW: u32 = 256 * 1024;
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
        }
    }
    fn pending(&self) -> &[u8] {
        &self.recv[self.recv_pos..]
    }
    fn finished(&self) -> bool {
        self.open == OpenState::Open
            && self.eof_sent
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: INITIAL_WINDOW,
            max_batch: MAX_BATCH_BYTES,
            lazy_open_ok: false,
        }
    }
}

impl Config {
    /// What origin and dest use: the defaults plus `lazy_open_ok`.
    pub fn client() -> Config {
        Config {
            lazy_open_ok: true,
            ..Config::default()
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
}

impl Mux {
    /// A new epoch. HELLO is queued at once (both sides send it first).
    pub fn new(side: Side, cfg: Config) -> Mux {
        let cfg = Config {
            window: cfg.window.max(MIN_WINDOW),
            max_batch: cfg.max_batch.clamp(64, MAX_BATCH_BYTES),
            lazy_open_ok: cfg.lazy_open_ok,
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
        };
        let mut hello = [0u8; record::HELLO_LEN];
        hello[..2].copy_from_slice(&VERSION.to_be_bytes());
        hello[2..].copy_from_slice(&cfg.window.to_be_bytes());
        mux.push_record(Kind::Hello, 0, &hello);
        mux
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
        let b = self.out.pop_front()?;
        self.out_bytes -= b.len();
        Some(b)
    }

    /// Give a drained batch buffer back for reuse (optional).
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < 4 && buf.capacity() <= self.cfg.max_batch {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// Room in the back batch; a new batch is started when `need` won't fit.
    fn batch_for(&mut self, need: usize) -> &mut Vec<u8> {
        let fits = self
            .out
            .back()
            .is_some_and(|b| b.len() + need <= self.cfg.max_batch);
        if !fits {
            let b = self.spare.pop().unwrap_or_default();
            self.out.push_back(b);
        }
        self.out.back_mut().expect("a batch was just ensured")
    }

    fn push_record(&mut self, kind: Kind, ch: ChannelId, payload: &[u8]) {
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
    pub fn recv_message(&mut self, mut msg: &[u8]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !msg.is_empty() {
            let res = record::decode(msg).and_then(|(rec, n)| {
                self.on_record(rec)?;
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

    fn on_record(&mut self, rec: Record<'_>) -> Result<()> {
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
            // Channels opened before HELLO (dest) get their send window now.
            let mut ids: Vec<_> = self.channels.keys().copied().collect();
            ids.sort_unstable();
            for id in ids {
                if let Some(c) = self.channels.get_mut(&id) {
                    c.send_window = window as u64;
                }
                self.events.push_back(Event::Service(id));
            }
            self.events.push_front(Event::Ready { window });
            return Ok(());
        };
        match rec {
            Record::Hello { .. } => return Err(Error::Hello("second HELLO")),
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
                if data.is_empty() {
                    return Ok(());
                }
                if c.recv_pos == c.recv.len() {
                    c.recv.clear();
                    c.recv_pos = 0;
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
                if !self.lookup(kind, channel)? {
                    return Ok(());
                }
                let c = self.channels.get_mut(&channel).expect("looked up");
                let was_closed = c.send_window == 0;
                c.send_window += increment as u64;
                if c.send_window > u32::MAX as u64 {
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
            self.push_reason(Kind::OpenFail, ch, reason);
        }
    }

    /// Bytes the loop may pass to [`Mux::send_data`] now (0 for unknown or
    /// half-closed channels, or while the peer's HELLO is outstanding).
    pub fn send_window(&self, ch: ChannelId) -> usize {
        if self.failed.is_some() {
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
        if let Some(c) = self.channels.get_mut(&ch) {
            c.send_window -= take as u64;
        }
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
        take
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
        let threshold = (self.cfg.window as u64 / 2).max(1);
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
        c.unacked += n as u64;
        if c.unacked >= threshold && !c.eof_recv {
            // unacked <= window <= u32::MAX: it fits the record.
            let inc = c.unacked as u32;
            c.unacked = 0;
            c.recv_window += inc as u64;
            self.send_open_ok(ch);
            self.push_record(Kind::Credit, ch, &inc.to_be_bytes());
        }
        self.check_finished(ch);
    }

    /// The loop did `shutdown(SHUT_WR)` after the peer's EOF.
    pub fn eof_delivered(&mut self, ch: ChannelId) {
        if let Some(c) = self.channels.get_mut(&ch) {
            if c.eof_recv {
                c.eof_delivered = true;
            }
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
        if self.channels.get(&ch).is_some_and(Channel::finished) {
            self.channels.remove(&ch);
        }
    }
}

fn unexpected(kind: Kind, channel: u32, why: &'static str) -> Error {
    Error::Unexpected { kind, channel, why }
}

#[cfg(test)]
mod tests;
