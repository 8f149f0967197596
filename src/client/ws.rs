//! The client end of one WebSocket to the relay, over a non-blocking mio
//! `TcpStream` and the [`Link`] stages on it (proxy CONNECT, TLS): TCP
//! connect, the stages, HTTP upgrade, frame decoding into messages and
//! control frames, and an output buffer of masked frames.
//!
//! Like the sans-IO cores it reports what happened as [`WsEvent`]s and never
//! decides policy (reconnect, what a ping means): that is the engine's job.

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use mio::net::TcpStream;

use super::link::{link_error, Got, Link, LinkPlan};
use super::{Prng, MAX_WS_MESSAGE_BYTES};
use crate::ws::frame::{self, Decoder, Event as FrameEvent, FrameHeader, OpCode, Role};
use crate::ws::handshake::{self, ClientError, Response};
use crate::ws::mask::apply_mask;

/// Input buffer: one full batch-sized frame plus headers fits at once.
const IN_BUF_BYTES: usize = 96 * 1024;
/// A message buffer handed back with [`WsConn::recycle`] is kept for the
/// next message if it is no larger than this (a Noise message is < 64 KiB).
const KEEP_MSG_BYTES: usize = 128 * 1024;

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
    /// A ping; the engine answers it (after acting on it).
    Ping(Vec<u8>),
    /// The relay closed the WebSocket (code, reason); we already answered.
    Closed(Option<u16>, String),
    /// The TCP connection ended or failed.
    Lost(String),
    /// The proxy or TLS stage failed for good (a refused password, a
    /// certificate that does not verify): retrying cannot help.
    Fatal(String),
    /// The relay violated RFC 6455; we sent a close with the matching code.
    ProtocolError(String),
}

pub struct WsConn {
    sock: Link,
    peer: SocketAddr,
    state: State,
    /// Sec-WebSocket-Accept to expect, until the request goes out.
    pending_accept: String,
    inbuf: Box<[u8]>,
    in_len: usize,
    dec: Decoder,
    /// The data message being reassembled (normally one frame).
    msg: Vec<u8>,
    msg_is_binary: bool,
    /// A drained message buffer to reuse (see [`WsConn::recycle`]).
    spare_msg: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    tcp_connected: bool,
    /// Last time any byte arrived (pongs included): the liveness signal.
    last_rx: std::time::Instant,
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
            msg_is_binary: false,
            spare_msg: Vec::new(),
            // The upgrade request waits here until the connect completes.
            out: req,
            out_pos: 0,
            tcp_connected: false,
            last_rx: std::time::Instant::now(),
        })
    }

    pub fn source(&mut self) -> &mut TcpStream {
        self.sock.tcp_mut()
    }

    /// The link stages (proxy, TLS) are done: the upgrade can go out.
    pub fn is_link_ready(&self) -> bool {
        self.tcp_connected && self.sock.is_ready()
    }

    /// Runs the link stages; a failure becomes the event that explains it.
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
    pub fn last_rx(&self) -> std::time::Instant {
        self.last_rx
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// Bytes queued and not yet written to the socket.
    pub fn out_len(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Queue one unfragmented frame, masked (we are the client).
    pub fn send(&mut self, opcode: OpCode, payload: &[u8], rng: &mut Prng) {
        if matches!(self.state, State::Done) {
            return;
        }
        self.compact_out();
        frame::encode_frame(&mut self.out, true, opcode, Some(rng.mask()), payload);
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
        rng: &mut Prng,
        fill: impl FnOnce(&mut Vec<u8>) -> bool,
    ) -> bool {
        if matches!(self.state, State::Done) {
            return true;
        }
        self.compact_out();
        let key = rng.mask();
        let header = FrameHeader {
            fin: true,
            opcode,
            mask: Some(key),
            payload_len: len as u64,
        };
        let start = self.out.len();
        let header_len = header.encoded_len();
        self.out.reserve(header_len + len);
        self.out.resize(start + header_len, 0);
        header.encode(&mut self.out[start..]);
        let body = start + header_len;
        if !fill(&mut self.out) || self.out.len() != body + len {
            self.out.truncate(start);
            return false;
        }
        apply_mask(&mut self.out[body..], key, 0);
        true
    }

    /// Give back the buffer of a [`WsEvent::Binary`] once it is processed,
    /// so the next message reuses its allocation.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= KEEP_MSG_BYTES && buf.capacity() > self.spare_msg.capacity() {
            buf.clear();
            self.spare_msg = buf;
        }
    }

    /// Queue a close frame; nothing more will be decoded.
    pub fn close(&mut self, code: u16, reason: &str, rng: &mut Prng) {
        if matches!(self.state, State::Open) {
            self.compact_out();
            frame::encode_close(&mut self.out, Some(rng.mask()), code, reason);
        }
        self.state = State::Done;
    }

    fn compact_out(&mut self) {
        if self.out_pos > 0 && self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > 64 * 1024 && self.out_pos * 2 > self.out.len() {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Write queued bytes until done or `WouldBlock`. While TCP is still
    /// connecting this first checks whether the connect finished.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.tcp_connected {
            if let Some(e) = self.sock.tcp().take_error()? {
                return Err(e);
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
                Err(e) => return Err(e),
            }
        }
        if !self.sock.is_ready() {
            // Proxy CONNECT / TLS handshake first; the upgrade waits.
            if !self.sock.advance(false)? {
                return Ok(());
            }
        }
        if !self.sock.flush_pending()? {
            return Ok(());
        }
        while self.out_pos < self.out.len() {
            // A short write on a stream socket means its buffer is full:
            // the next EPOLLOUT edge says when to go on, so skip the write
            // that would only return EAGAIN (epoll(7)). Under TLS what the
            // socket did not take stays queued in the link (flushed above
            // on the next edge).
            let (n, full) = self
                .sock
                .write_vectored(&[IoSlice::new(&self.out[self.out_pos..])])?;
            self.out_pos += n;
            if full {
                break;
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > 256 * 1024 {
                self.out = Vec::new();
            }
        }
        Ok(())
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
    pub fn read(&mut self, events: &mut Vec<WsEvent>, rng: &mut Prng, hup: bool) {
        if !self.tcp_connected {
            // A readable event can mean a failed connect.
            if let Err(e) = self.flush() {
                events.push(WsEvent::Lost(format!("connect to {}: {e}", self.peer)));
                self.state = State::Done;
                return;
            }
            if !self.tcp_connected {
                return;
            }
        }
        if !self.sock.is_ready() {
            if !self.advance_link(events, hup) {
                return;
            }
            // Ready: the upgrade request can go out now.
            if let Err(e) = self.flush() {
                events.push(WsEvent::Lost(format!("write to relay: {e}")));
                self.state = State::Done;
                return;
            }
        }
        loop {
            if matches!(self.state, State::Done) {
                return;
            }
            let (n, eof, drained) = match self.sock.read(&mut self.inbuf[self.in_len..], hup) {
                Ok(Got::Eof) => (0, true, true),
                Ok(Got::Bytes { n, drained }) => (n, false, drained),
                Err(e) if link_error(&e).is_some_and(|f| f.is_permanent()) => {
                    events.push(WsEvent::Fatal(e.to_string()));
                    self.state = State::Done;
                    return;
                }
                Err(e) => {
                    events.push(WsEvent::Lost(format!("read from relay: {e}")));
                    self.state = State::Done;
                    return;
                }
            };
            if n > 0 {
                self.last_rx = std::time::Instant::now();
            }
            self.in_len += n;
            let was_full = self.in_len == self.inbuf.len();
            if n > 0 || was_full {
                self.process(events, rng);
            }
            if matches!(self.state, State::Done) {
                return;
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
                return;
            }
            if drained && !was_full {
                return;
            }
        }
    }

    /// Decode everything complete in `inbuf[..in_len]`, then shift the rest
    /// to the front.
    fn process(&mut self, events: &mut Vec<WsEvent>, rng: &mut Prng) {
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
                    self.close(e.close_code(), "protocol error", rng);
                    events.push(WsEvent::ProtocolError(text));
                    return;
                }
            };
            match ev {
                FrameEvent::DataHeader(h) => {
                    if h.opcode != OpCode::Continuation {
                        self.msg.clear();
                        if self.msg.capacity() == 0 {
                            self.msg = std::mem::take(&mut self.spare_msg);
                        }
                        self.msg_is_binary = h.opcode == OpCode::Binary;
                    }
                    // One allocation per message instead of a doubling
                    // series (the decoder bounds payload_len by the limit).
                    let want = h.payload_len.min(MAX_WS_MESSAGE_BYTES) as usize;
                    self.msg.reserve(want);
                    if h.payload_len == 0 && h.fin {
                        self.message_done(events);
                    }
                }
                FrameEvent::Payload {
                    len, message_done, ..
                } => {
                    self.msg.extend_from_slice(&self.inbuf[pos..pos + len]);
                    if message_done {
                        self.message_done(events);
                    }
                }
                FrameEvent::Control(h) => {
                    let end = pos + used;
                    let payload = &self.inbuf[end - h.payload_len as usize..end];
                    match h.opcode {
                        OpCode::Ping => events.push(WsEvent::Ping(payload.to_vec())),
                        OpCode::Pong => {}
                        _ => {
                            let (code, reason) = match frame::parse_close(payload) {
                                Ok(Some((c, r))) => (Some(c), r.to_string()),
                                _ => (None, String::new()),
                            };
                            // Answer the close (RFC 6455 §5.5.1) and stop.
                            self.compact_out();
                            frame::encode_close(
                                &mut self.out,
                                Some(rng.mask()),
                                code.unwrap_or(1000),
                                "",
                            );
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
        let msg = std::mem::take(&mut self.msg);
        // Text messages are not part of our protocol: ignore them.
        if self.msg_is_binary {
            events.push(WsEvent::Binary(msg));
        }
    }
}
