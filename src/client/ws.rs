//! The client end of one WebSocket to the relay, over a non-blocking mio
//! `TcpStream`: TCP connect, HTTP upgrade, frame decoding into messages and
//! control frames, and an output buffer of masked frames.
//!
//! Like the sans-IO cores it reports what happened as [`WsEvent`]s and never
//! decides policy (reconnect, what a control message means): that is the
//! engine's job. What a WebSocket endpoint owes its peer (pongs, the close
//! echo) and how much it queues for a relay that does not read is
//! [`crate::ws::endpoint`]'s.

use std::fmt;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::link::{link_error, Link, LinkPlan};
use super::{Prng, MAX_WS_MESSAGE_BYTES};
use crate::control;
use crate::transport::outq::{OutQueue, MAX_IOV};
use crate::transport::{Received, Transport};
use crate::ws::endpoint::{Endpoint, Limits, Verdict};
use crate::ws::frame::{self, Decoder, Event as FrameEvent, FrameHeader, OpCode, Role};
use crate::ws::handshake::{self, ClientError, Response};
use crate::ws::mask::apply_mask;

/// Input buffer: one full batch-sized frame plus headers fits at once.
const IN_BUF_BYTES: usize = 96 * 1024;
/// A message buffer handed back with [`WsConn::recycle`] is kept for the
/// next message if it is no larger than this (a Noise message is < 64 KiB).
const KEEP_MSG_BYTES: usize = 128 * 1024;
/// How many such buffers are kept (a read of the 256 KiB budget yields up
/// to four 64 KiB messages before the engine hands the first one back).
const KEEP_MSG_BUFFERS: usize = 4;
/// The rest of a data frame's payload at least this long is read straight
/// into the message buffer instead of through `inbuf` (one copy less per
/// byte); shorter rests go through `inbuf` with whatever follows them.
const DIRECT_READ_MIN: u64 = 4096;
/// A read at a frame boundary with nothing buffered offers `inbuf` only
/// this much (after whatever is left of the current frame): enough for the
/// next header and a run of small messages, while a long frame's payload
/// comes by the direct path (no copy). The direct read itself brings the
/// next boundary's bytes along, into `inbuf` (one readv).
const BOUNDARY_READ_BYTES: usize = 4096;
/// How often, at most, flushing asks the kernel what the relay has
/// acknowledged (the "not reading" check; far below any --dead-after).
const ACK_CHECK_EVERY: Duration = Duration::from_millis(50);

/// The connect path in stages: the engine resolves the name (off the
/// loop, `transport::resolve`) and picks each address in turn; here TCP
/// connects, then the [`Link`] stages (proxy CONNECT, TLS handshake) run,
/// then the WebSocket upgrade. `Link` is the [`Transport`] over TCP (and
/// TLS) that every read and write goes through.
#[derive(Debug)]
enum State {
    /// TCP connect in progress; the upgrade request is queued in `out`.
    Connecting,
    /// Request sent; waiting for the 101.
    Upgrading {
        accept: String,
    },
    Open,
    /// We failed or closed; nothing more is decoded.
    Done,
}

/// What reading the connection produced.
#[derive(Debug)]
pub enum WsEvent {
    /// The relay answered 101.
    Upgraded(Response),
    /// The relay answered something else (status when it was HTTP).
    Refused(ClientError),
    /// A complete binary message.
    Binary(Vec<u8>),
    /// A relay control message (a ping payload that starts with
    /// [`control::PREFIX`]). The engine queues its pong
    /// ([`WsConn::queue_control`]) right after acting on it, before
    /// handling the next event. A run
    /// of control pings with no message between them arrives as the last
    /// one alone: only the latest pairing change matters.
    Control(Vec<u8>),
    /// The relay closed the WebSocket (code, reason); the echo is queued.
    Closed(Option<u16>, String),
    /// The TCP connection ended or failed.
    Lost(String),
    /// The proxy or TLS stage failed for good (a refused password, a
    /// certificate that does not verify): retrying cannot help.
    Fatal(String),
    /// The relay violated RFC 6455; we sent a close with the matching code.
    ProtocolError(String),
}

/// Why writing to the relay failed.
#[derive(Debug)]
pub enum FlushError {
    Io(io::Error),
    /// The relay does not read what we send ([`Verdict`]).
    NotReading(Verdict),
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushError::Io(e) => write!(f, "relay connection: {e}"),
            FlushError::NotReading(v) => write!(f, "relay is {v}; dropping the connection"),
        }
    }
}

impl From<io::Error> for FlushError {
    fn from(e: io::Error) -> FlushError {
        FlushError::Io(e)
    }
}

/// What [`WsConn::read`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The socket is drained (or the connection is over).
    Drained,
    /// The per-turn budget ran out with input perhaps still there: call
    /// again next turn (no new readiness edge will come for it).
    Budget,
}

pub struct WsConn {
    /// The TCP socket and the stages on it (proxy CONNECT, TLS).
    sock: Link,
    peer: SocketAddr,
    state: State,
    /// Sec-WebSocket-Accept to expect, until the request goes out.
    pending_accept: String,
    inbuf: Box<[u8]>,
    in_len: usize,
    dec: Decoder,
    /// The data message being reassembled (normally one frame): its first
    /// `msg_len` bytes. The rest of `msg`'s length is initialized slack
    /// (left by an earlier message in a recycled buffer) that reads may
    /// overwrite without zeroing it first.
    msg: Vec<u8>,
    msg_len: usize,
    msg_is_binary: bool,
    /// Drained message buffers to reuse (see [`WsConn::recycle`]).
    spare_msgs: Vec<Vec<u8>>,
    /// Masked frames waiting for the socket: small ones inline, a batch
    /// handed over by [`WsConn::send_owned`] as its own buffer.
    out: OutQueue,
    tcp_connected: bool,
    /// Last time a frame other than a ping arrived (a pong, data, a close,
    /// or the upgrade response): the liveness signal. Pings do not count:
    /// they prove that the relay writes, not that it reads, and a relay
    /// that only pings must still answer ours (issue 8, bug 1).
    last_rx: Instant,
    /// Last time a ping arrived (for the reason logged on a dead link).
    last_ping_rx: Option<Instant>,
    /// When the bytes being decoded were read.
    read_at: Instant,
    /// Pongs, the close echo, output caps, the read budget.
    endpoint: Endpoint,
    /// Masking keys (RFC 6455 §5.3), forked from the engine's generator.
    masks: Prng,
    /// A read event reported FIN or an error, and a budget cut the read
    /// short: the next read must go on until EOF or EAGAIN.
    hup_pending: bool,
    /// Bytes handed to the kernel so far, and how many of them the relay
    /// had acknowledged at the last flush (written minus SIOCOUTQ): the
    /// relay reads while this grows.
    written_total: u64,
    acked_total: u64,
    /// When to ask the kernel again how much the relay acknowledged.
    next_ack_check: Instant,
}

impl WsConn {
    /// Start a connection to `addr`; the upgrade request for `host` and
    /// `path_and_query` is sent once TCP connects.
    pub fn connect(
        addr: SocketAddr,
        host: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        rng: &mut Prng,
        stall_timeout: Duration,
        plan: LinkPlan,
    ) -> io::Result<WsConn> {
        let sock = Link::new(TcpStream::connect(addr)?, plan);
        let (req, accept) = handshake::client_request(host, path_and_query, headers, rng.key16());
        Ok(WsConn {
            sock,
            peer: addr,
            state: State::Connecting,
            pending_accept: accept,
            inbuf: vec![0u8; IN_BUF_BYTES].into_boxed_slice(),
            in_len: 0,
            dec: Decoder::new(Role::Client, MAX_WS_MESSAGE_BYTES),
            msg: Vec::new(),
            msg_len: 0,
            msg_is_binary: false,
            spare_msgs: Vec::new(),
            // The upgrade request waits here until the connect completes.
            out: OutQueue::with_inline(req),
            tcp_connected: false,
            last_rx: Instant::now(),
            last_ping_rx: None,
            read_at: Instant::now(),
            endpoint: Endpoint::new(Limits::client(stall_timeout)),
            masks: rng.fork(),
            hup_pending: false,
            written_total: 0,
            acked_total: 0,
            next_ack_check: Instant::now(),
        })
    }

    pub fn source(&mut self) -> &mut TcpStream {
        self.sock.tcp_mut()
    }

    /// Runs the link stages (proxy CONNECT, TLS handshake); a failure
    /// becomes the event that explains it. True once the upgrade can go.
    fn advance_link(&mut self, events: &mut Vec<WsEvent>, hup: bool) -> bool {
        match self.sock.advance(hup) {
            Ok(ready) => ready,
            Err(e) => {
                let ev = match link_error(&e) {
                    Some(f) if f.is_permanent() => WsEvent::Fatal(e.to_string()),
                    _ => WsEvent::Lost(format!("connect to relay via {}: {e}", self.peer)),
                };
                events.push(ev);
                self.state = State::Done;
                false
            }
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// When bytes last arrived from the relay.
    pub fn last_rx(&self) -> Instant {
        self.last_rx
    }

    /// When the relay last pinged us.
    pub fn last_ping_rx(&self) -> Option<Instant> {
        self.last_ping_rx
    }

    /// The TCP connect completed (the upgrade may still be under way).
    pub fn is_tcp_connected(&self) -> bool {
        self.tcp_connected
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// Bytes queued and not yet written to the socket.
    pub fn out_len(&self) -> usize {
        self.out.len()
    }

    /// Queue one unfragmented frame, masked (we are the client).
    pub fn send(&mut self, opcode: OpCode, payload: &[u8]) {
        if matches!(self.state, State::Done) || self.endpoint.is_closing() {
            return;
        }
        let key = self.masks.mask();
        self.out
            .append(|out| frame::encode_frame(out, true, opcode, Some(key), payload));
    }

    /// Queue one unfragmented frame whose payload is `payload` itself:
    /// masked where it lies and written from there (no copy). The buffer
    /// comes back through [`WsConn::take_sent_buffer`] once written.
    pub fn send_owned(&mut self, opcode: OpCode, mut payload: Vec<u8>) {
        if matches!(self.state, State::Done) || self.endpoint.is_closing() {
            return;
        }
        let key = self.masks.mask();
        let header = FrameHeader {
            fin: true,
            opcode,
            mask: Some(key),
            payload_len: payload.len() as u64,
        };
        self.out.append(|out| {
            let start = out.len();
            out.resize(start + header.encoded_len(), 0);
            header.encode(&mut out[start..]);
        });
        apply_mask(&mut payload, key, 0);
        self.out.push_payload(payload);
    }

    /// A buffer queued with [`WsConn::send_owned`] that is written (or
    /// dropped with the connection), emptied, for reuse.
    pub fn take_sent_buffer(&mut self) -> Option<Vec<u8>> {
        self.out.take_written()
    }

    /// Queue one unfragmented binary-or-other frame whose `len`-byte payload
    /// `fill` appends to the output buffer itself (for instance by sealing
    /// straight into it), then mask it in place: no intermediate copy.
    /// When `fill` fails or appends other than `len` bytes, the frame is
    /// withdrawn and `false` returned.
    pub fn send_with(
        &mut self,
        opcode: OpCode,
        len: usize,
        fill: impl FnOnce(&mut Vec<u8>) -> bool,
    ) -> bool {
        if matches!(self.state, State::Done) || self.endpoint.is_closing() {
            return true;
        }
        let key = self.masks.mask();
        let header = FrameHeader {
            fin: true,
            opcode,
            mask: Some(key),
            payload_len: len as u64,
        };
        self.out.append(|out| {
            let start = out.len();
            let header_len = header.encoded_len();
            out.reserve(header_len + len);
            out.resize(start + header_len, 0);
            header.encode(&mut out[start..]);
            let body = start + header_len;
            if !fill(out) || out.len() != body + len {
                out.truncate(start);
                return false;
            }
            apply_mask(&mut out[body..], key, 0);
            true
        })
    }

    /// Give back the buffer of a [`WsEvent::Binary`] once it is processed,
    /// so the next message reuses its allocation.
    /// Its contents stay as initialized slack (see `msg`).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if buf.capacity() > 0
            && buf.capacity() <= KEEP_MSG_BYTES
            && self.spare_msgs.len() < KEEP_MSG_BUFFERS
        {
            self.spare_msgs.push(buf);
        }
    }

    /// Append `data` to the message so far (`msg`, `msg_len`).
    fn append_to(msg: &mut Vec<u8>, msg_len: &mut usize, data: &[u8]) {
        let end = *msg_len + data.len();
        match msg.get_mut(*msg_len..end) {
            Some(slack) => slack.copy_from_slice(data),
            None => {
                msg.truncate(*msg_len);
                msg.extend_from_slice(data);
            }
        }
        *msg_len = end;
    }

    /// How much of the current frame's payload the next read may put
    /// straight into `msg`: nothing is buffered in `inbuf`, the decoder is
    /// inside a data frame and at least [`DIRECT_READ_MIN`] of it is left.
    fn direct_room(&self, budget: usize) -> Option<usize> {
        if self.in_len != 0 || !matches!(self.state, State::Open) {
            return None;
        }
        let rest = self.dec.frame_remaining();
        if rest < DIRECT_READ_MIN {
            return None;
        }
        Some(usize::try_from(rest).map_or(budget, |r| r.min(budget)))
    }

    /// `n` bytes were read into `msg` after the message so far: decode them
    /// there (unmasking, UTF-8 checks and message ends as for `inbuf`).
    fn take_direct(&mut self, n: usize, events: &mut Vec<WsEvent>) {
        let start = self.msg_len;
        let Some(piece) = self.msg.get_mut(start..start + n) else {
            return;
        };
        match self.dec.decode(piece) {
            Ok(Some((
                FrameEvent::Payload {
                    len, message_done, ..
                },
                _,
            ))) if len == n => {
                self.last_rx = self.read_at;
                self.msg_len += n;
                if message_done {
                    self.message_done(events);
                }
            }
            Ok(_) => {
                // Cannot happen: n is at most the frame's remaining payload.
                self.close(1011, "internal error");
                events.push(WsEvent::ProtocolError(
                    "frame decoder out of step with a direct read".into(),
                ));
            }
            Err(e) => {
                let text = format!("relay broke the WebSocket protocol: {e}");
                self.close(e.close_code(), "protocol error");
                events.push(WsEvent::ProtocolError(text));
            }
        }
    }

    /// Queue a close frame; nothing more will be decoded.
    pub fn close(&mut self, code: u16, reason: &str) {
        if matches!(self.state, State::Open) && !self.endpoint.is_closing() {
            let key = self.masks.mask();
            self.out
                .append(|out| frame::encode_close(out, Some(key), code, reason));
            self.endpoint.on_close_sent();
        }
        self.state = State::Done;
    }

    /// Queue what the endpoint owes the relay (the close echo, the latest
    /// pong). Returns whether a pong went out, after which the relay
    /// counts what we send as meant for the peer it announced.
    pub fn queue_control(&mut self) -> bool {
        let queued = self.out_len();
        let (masks, endpoint) = (&mut self.masks, &mut self.endpoint);
        self.out
            .append(|out| endpoint.encode_pending(out, queued, || Some(masks.mask())))
            .pong
    }

    /// Pings received and pongs queued on this connection.
    pub fn ping_counts(&self) -> (u64, u64) {
        self.endpoint.counts()
    }

    /// Write queued bytes until done or `WouldBlock`. While TCP is still
    /// connecting this first checks whether the connect finished.
    pub fn flush(&mut self, now: Instant) -> Result<(), FlushError> {
        if !self.tcp_connected {
            if let Some(e) = self.sock.tcp().take_error()? {
                return Err(e.into());
            }
            match self.sock.tcp().peer_addr() {
                Ok(_) => {
                    self.tcp_connected = true;
                    let _ = self.sock.tcp().set_nodelay(true);
                    if matches!(self.state, State::Connecting) {
                        let accept = std::mem::take(&mut self.pending_accept);
                        self.state = State::Upgrading { accept };
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        if !self.sock.is_ready() {
            // Proxy CONNECT / TLS handshake first; the upgrade waits.
            if !self.sock.advance(false)? {
                return Ok(());
            }
        }
        // Ciphertext the socket did not take last time goes first.
        if !self.sock.flush_pending()? {
            return Ok(());
        }
        let mut wrote = 0;
        while !self.out.is_empty() {
            // One writev for up to MAX_IOV segments (headers and the
            // batches they frame); a short write means the socket is full
            // (transport module).
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = self.out.io_slices(&mut iov);
            let w = self.sock.socket_write_vectored(&iov[..n])?;
            self.out.advance(w.n);
            wrote += w.n;
            if w.full {
                break;
            }
        }
        self.written_total += wrote as u64;
        // Our own queue over the cap: at once, no syscall needed.
        if self.out_len() > self.endpoint.limits().max_queued_bytes {
            return Err(FlushError::NotReading(self.endpoint.on_write(
                self.out_len(),
                0,
                0,
                now,
            )));
        }
        // What counts is what the relay took, not what the kernel took: a
        // relay that never reads lets the kernel's send queue fill first,
        // at a pong a turn that can take long. Asking the kernel
        // (SIOCOUTQ) costs a syscall, so at most every ACK_CHECK_EVERY and
        // only while something is pending.
        let pending = self.out_len() > 0 || self.acked_total < self.written_total;
        if !pending || now < self.next_ack_check {
            return Ok(());
        }
        self.next_ack_check = now + ACK_CHECK_EVERY;
        let unacked = self.sock.unacked_bytes();
        let acked = self.written_total.saturating_sub(unacked as u64);
        let progress = acked.saturating_sub(self.acked_total) as usize;
        self.acked_total = self.acked_total.max(acked);
        match self
            .endpoint
            .on_write(self.out_len(), unacked, progress, now)
        {
            Verdict::Fine => Ok(()),
            v => Err(FlushError::NotReading(v)),
        }
    }

    /// Read until the socket is drained, appending what it yields to
    /// `events`. Stops after a terminal event (`Refused`, `Closed`, `Lost`,
    /// `ProtocolError`).
    ///
    /// A read that returns less than the room offered means the socket is
    /// drained (epoll(7) on edge-triggered stream sockets), so the read that
    /// would return EAGAIN is skipped — one syscall less per message. Set
    /// `hup` when the readiness event reported the peer's FIN or an error:
    /// then reading goes on until EOF or EAGAIN, since no later edge would
    /// announce an EOF that is already there.
    ///
    /// At most the endpoint's read budget is read per call
    /// ([`ReadOutcome::Budget`]): a relay that sends without pause cannot
    /// keep the loop from its timers, signals and other sockets.
    pub fn read(&mut self, events: &mut Vec<WsEvent>, hup: bool) -> ReadOutcome {
        let hup = hup || std::mem::take(&mut self.hup_pending);
        if !self.tcp_connected {
            // A readable event can mean a failed connect.
            if let Err(e) = self.flush(Instant::now()) {
                events.push(WsEvent::Lost(format!("connect to {}: {e}", self.peer)));
                self.state = State::Done;
                return ReadOutcome::Drained;
            }
            if !self.tcp_connected {
                return ReadOutcome::Drained;
            }
        }
        if !self.sock.is_ready() {
            if !self.advance_link(events, hup) {
                return ReadOutcome::Drained;
            }
            // Ready: the upgrade request can go out now.
            if let Err(e) = self.flush(Instant::now()) {
                events.push(WsEvent::Lost(format!("write to relay: {e}")));
                self.state = State::Done;
                return ReadOutcome::Drained;
            }
        }
        let mut budget = self.endpoint.limits().read_budget_bytes;
        loop {
            if matches!(self.state, State::Done) {
                return ReadOutcome::Drained;
            }
            if budget == 0 {
                self.hup_pending = hup;
                return ReadOutcome::Budget;
            }
            // The rest of a long frame goes straight into the message, and
            // in the same readv the next frame's header (with up to
            // BOUNDARY_READ_BYTES after it) into `inbuf`: one read per
            // long message.
            let direct = self.direct_room(budget);
            let read = match direct {
                Some(room) => {
                    let tail = BOUNDARY_READ_BYTES.min(budget - room).min(self.inbuf.len());
                    // Into the spare capacity after the message so far.
                    self.msg.truncate(self.msg_len);
                    self.sock
                        .socket_read_append(&mut self.msg, room, &mut self.inbuf[..tail], hup)
                }
                None => {
                    let mut room = (self.inbuf.len() - self.in_len).min(budget);
                    if self.in_len == 0 {
                        // The (short) rest of this frame and the next
                        // header, not the next frame's payload: if that is
                        // long, the direct path reads it without a copy.
                        let rest =
                            usize::try_from(self.dec.frame_remaining()).unwrap_or(usize::MAX);
                        room = room.min(rest.saturating_add(BOUNDARY_READ_BYTES));
                    }
                    let end = self.in_len + room;
                    self.sock
                        .socket_read(&mut self.inbuf[self.in_len..end], hup)
                }
            };
            // A short read means drained, unless `hup` (transport module).
            let (n, eof, drained) = match read {
                Ok(Received::Eof) => (0, true, true),
                Ok(Received::Bytes { n, drained }) => (n, false, drained),
                Err(e) if link_error(&e).is_some_and(|f| f.is_permanent()) => {
                    events.push(WsEvent::Fatal(e.to_string()));
                    self.state = State::Done;
                    return ReadOutcome::Drained;
                }
                Err(e) => {
                    events.push(WsEvent::Lost(format!("read from relay: {e}")));
                    self.state = State::Done;
                    return ReadOutcome::Drained;
                }
            };
            if n > 0 {
                self.read_at = Instant::now();
            }
            budget -= n.min(budget);
            let was_full = if let Some(room) = direct {
                let into_msg = n.min(room);
                if into_msg > 0 {
                    self.take_direct(into_msg, events);
                }
                // What went on into `inbuf` (in_len was 0: direct_room).
                if n > room && !matches!(self.state, State::Done) {
                    self.in_len = n - room;
                    self.process(events);
                }
                false
            } else {
                self.in_len += n;
                let was_full = self.in_len == self.inbuf.len();
                if n > 0 || was_full {
                    self.process(events);
                }
                was_full
            };
            if matches!(self.state, State::Done) {
                return ReadOutcome::Drained;
            }
            if eof {
                let ev = match &self.state {
                    State::Upgrading { .. } => {
                        WsEvent::Refused(handshake::parse_response_eof(&self.inbuf[..self.in_len]))
                    }
                    _ => WsEvent::Lost("relay closed the connection".into()),
                };
                events.push(ev);
                self.state = State::Done;
                return ReadOutcome::Drained;
            }
            // A read that filled the budget's room is not short: the
            // loop goes on and stops at the budget check above.
            if drained && !was_full {
                return ReadOutcome::Drained;
            }
        }
    }

    /// Decode everything complete in `inbuf[..in_len]`, then shift the rest
    /// to the front.
    fn process(&mut self, events: &mut Vec<WsEvent>) {
        let mut pos = 0;
        if let State::Upgrading { accept } = &self.state {
            match handshake::parse_response(&self.inbuf[..self.in_len], accept) {
                Ok(None) => {
                    if self.in_len == self.inbuf.len() {
                        events.push(WsEvent::Refused(ClientError::TooLarge));
                        self.state = State::Done;
                    }
                    return;
                }
                Ok(Some((resp, consumed))) => {
                    pos = consumed;
                    self.last_rx = self.read_at;
                    self.state = State::Open;
                    events.push(WsEvent::Upgraded(resp));
                }
                Err(e) => {
                    events.push(WsEvent::Refused(e));
                    self.state = State::Done;
                    return;
                }
            }
        }
        while matches!(self.state, State::Open) && pos < self.in_len {
            let (ev, used) = match self.dec.decode(&mut self.inbuf[pos..self.in_len]) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    let text = format!("relay broke the WebSocket protocol: {e}");
                    self.close(e.close_code(), "protocol error");
                    events.push(WsEvent::ProtocolError(text));
                    return;
                }
            };
            // Any frame but a ping shows the relay alive; a payload piece
            // of a long frame counts too (a slow big message is no silence).
            match ev {
                FrameEvent::Control(h) if h.opcode == OpCode::Ping => {
                    self.last_ping_rx = Some(self.read_at)
                }
                _ => self.last_rx = self.read_at,
            }
            match ev {
                FrameEvent::DataHeader(h) => {
                    if h.opcode != OpCode::Continuation {
                        self.msg_len = 0;
                        if self.msg.capacity() == 0 {
                            self.msg = self.spare_msgs.pop().unwrap_or_default();
                        }
                        self.msg_is_binary = h.opcode == OpCode::Binary;
                    }
                    // One allocation per message instead of a doubling
                    // series (the decoder bounds payload_len by the limit).
                    let want = h.payload_len.min(MAX_WS_MESSAGE_BYTES) as usize;
                    if self.msg.capacity() < self.msg_len + want {
                        self.msg.truncate(self.msg_len);
                        self.msg.reserve(want);
                    }
                    if h.payload_len == 0 && h.fin {
                        self.message_done(events);
                    }
                }
                FrameEvent::Payload {
                    len, message_done, ..
                } => {
                    let piece = &self.inbuf[pos..pos + len];
                    Self::append_to(&mut self.msg, &mut self.msg_len, piece);
                    if message_done {
                        self.message_done(events);
                    }
                }
                FrameEvent::Control(h) => {
                    let end = pos + used;
                    let payload = &self.inbuf[end - h.payload_len as usize..end];
                    match h.opcode {
                        OpCode::Ping => {
                            self.endpoint.on_ping(payload);
                            if payload.starts_with(control::PREFIX.as_bytes()) {
                                // Coalesce a run of control pings: acting
                                // on each would cost a fresh end-to-end
                                // handshake per forged `peer-joined`.
                                match events.last_mut() {
                                    Some(WsEvent::Control(last)) => {
                                        last.clear();
                                        last.extend_from_slice(payload);
                                    }
                                    _ => events.push(WsEvent::Control(payload.to_vec())),
                                }
                            }
                        }
                        OpCode::Pong => {}
                        _ => {
                            let (code, reason) = match frame::parse_close(payload) {
                                Ok(Some((c, r))) => (Some(c), r.to_string()),
                                _ => (None, String::new()),
                            };
                            // The echo (RFC 6455 §5.5.1) goes out with the
                            // next queue_control; nothing more is decoded.
                            self.endpoint.on_close(code);
                            self.state = State::Done;
                            events.push(WsEvent::Closed(code, reason));
                        }
                    }
                }
            }
            pos += used;
        }
        self.inbuf.copy_within(pos..self.in_len, 0);
        self.in_len -= pos;
    }

    fn message_done(&mut self, events: &mut Vec<WsEvent>) {
        let mut msg = std::mem::take(&mut self.msg);
        msg.truncate(self.msg_len);
        self.msg_len = 0;
        // Text messages are not part of our protocol: ignore them.
        if self.msg_is_binary {
            events.push(WsEvent::Binary(msg));
        }
    }
}
