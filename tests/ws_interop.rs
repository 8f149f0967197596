//! Interop of our sans-IO WebSocket core (ws::handshake + ws::frame) with an
//! independent implementation, tungstenite, over real TCP on 127.0.0.1.
//!
//! (a) a small echo server on our handshake + codec (Role::Server), driven
//!     by a tungstenite client;
//! (b) our client side (client_request / parse_response, Decoder
//!     Role::Client, masked encode_frame) against a tungstenite server.
//!
//! Every socket has read/write timeouts, so nothing can hang: a stuck peer
//! turns into a failed read and a failed test within TIMEOUT.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use common::Rng;

use sockrelay::ws::frame::{encode_close, encode_frame, parse_close, Decoder, Event, OpCode, Role};
use sockrelay::ws::handshake::{
    client_request, error_response, parse_request, parse_response, parse_response_eof,
    response_101, ClientError, Request,
};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Small on purpose: big messages then arrive in many pieces, as in the relay.
const READ_BUF: usize = 4096;
const MAX_MESSAGE: u64 = 4 << 20;
const SIZES: [usize; 7] = [0, 1, 125, 126, 65535, 65536, 1 << 20];

fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().expect("local addr").port();
    (l, port)
}

fn with_timeouts(s: TcpStream) -> TcpStream {
    s.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
    s.set_write_timeout(Some(TIMEOUT)).expect("write timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

fn accept(l: &TcpListener) -> TcpStream {
    // accept() has no timeout of its own: poll a non-blocking listener.
    l.set_nonblocking(true).expect("nonblocking listener");
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking stream");
                return with_timeouts(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no connection within {TIMEOUT:?}"
                );
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn connect(port: u16) -> TcpStream {
    with_timeouts(TcpStream::connect(("127.0.0.1", port)).expect("connect"))
}

/// Exactly `len` bytes of UTF-8 with 1- to 4-byte characters, so that
/// fragment and read boundaries fall inside characters.
fn text_of(len: usize, seed: u64) -> String {
    let alphabet = ["a", "é", "€", "😀", "z", " "];
    let mut rng = Rng(seed | 1);
    let mut s = String::with_capacity(len);
    loop {
        let c = alphabet[rng.below(alphabet.len() as u64) as usize];
        if s.len() + c.len() > len {
            break;
        }
        s.push_str(c);
    }
    while s.len() < len {
        s.push('x');
    }
    s
}

fn binary_of(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// One WebSocket message or control frame as our side sees it.
#[derive(Debug, PartialEq, Eq)]
enum Msg {
    Data {
        opcode: OpCode,
        payload: Vec<u8>,
        frames: usize,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    Eof,
}

/// Our end of a connection after the handshake: a blocking stream, a fixed
/// read buffer, and the sans-IO decoder.
struct Peer {
    stream: TcpStream,
    role: Role,
    dec: Decoder,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Data message being reassembled: opcode, payload so far, frame count.
    partial: Option<(OpCode, Vec<u8>, usize)>,
    rng: Rng,
}

impl Peer {
    fn new(stream: TcpStream, role: Role, leftover: &[u8]) -> Peer {
        let mut buf = vec![0; READ_BUF.max(leftover.len())];
        buf[..leftover.len()].copy_from_slice(leftover);
        Peer {
            stream,
            role,
            dec: Decoder::new(role, MAX_MESSAGE),
            buf,
            start: 0,
            end: leftover.len(),
            partial: None,
            rng: Rng(0x5eed_1234_abcd),
        }
    }

    fn mask(&mut self) -> Option<[u8; 4]> {
        match self.role {
            // A client masks every frame (RFC 6455 §5.3), with a fresh key.
            Role::Client => Some((self.rng.next() as u32).to_ne_bytes()),
            Role::Server => None,
        }
    }

    fn send_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) {
        let mut out = Vec::with_capacity(payload.len() + 14);
        let mask = self.mask();
        encode_frame(&mut out, fin, opcode, mask, payload);
        self.stream.write_all(&out).expect("write frame");
    }

    /// Send a data message in `pieces` frames (split at random byte offsets,
    /// so text fragments end mid-character), with a ping after the first
    /// fragment when given one (control frames may sit between fragments).
    fn send_message(&mut self, opcode: OpCode, payload: &[u8], pieces: usize, ping: Option<&[u8]>) {
        let mut cuts: Vec<usize> = (1..pieces)
            .map(|_| self.rng.below(payload.len() as u64 + 1) as usize)
            .collect();
        cuts.push(0);
        cuts.push(payload.len());
        cuts.sort_unstable();
        for (i, w) in cuts.windows(2).enumerate() {
            let fin = i + 2 == cuts.len();
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            self.send_frame(fin, op, &payload[w[0]..w[1]]);
            if i == 0 {
                if let Some(p) = ping {
                    self.send_frame(true, OpCode::Ping, p);
                }
            }
        }
    }

    fn send_close(&mut self, code: u16, reason: &str) {
        let mut out = Vec::new();
        let mask = self.mask();
        encode_close(&mut out, mask, code, reason);
        self.stream.write_all(&out).expect("write close");
    }

    /// The next complete data message or control frame, or Eof.
    fn recv(&mut self) -> Msg {
        loop {
            let step = self
                .dec
                .decode(&mut self.buf[self.start..self.end])
                .unwrap_or_else(|e| panic!("{:?} decoder: {e}", self.role));
            let Some((event, n)) = step else {
                if self.fill() == 0 {
                    assert!(
                        self.start == self.end && self.partial.is_none(),
                        "EOF inside a frame or message"
                    );
                    return Msg::Eof;
                }
                continue;
            };
            let region = self.start..self.start + n;
            self.start += n;
            match event {
                Event::DataHeader(h) => {
                    if h.opcode == OpCode::Continuation {
                        let p = self
                            .partial
                            .as_mut()
                            .expect("continuation outside a message");
                        p.2 += 1;
                    } else {
                        assert!(self.partial.is_none(), "new message inside a message");
                        self.partial = Some((h.opcode, Vec::new(), 1));
                    }
                    if h.payload_len == 0 && h.fin {
                        return self.finish();
                    }
                }
                Event::Payload { message_done, .. } => {
                    let p = self.partial.as_mut().expect("payload outside a message");
                    p.1.extend_from_slice(&self.buf[region]);
                    if message_done {
                        return self.finish();
                    }
                }
                Event::Control(h) => {
                    let payload =
                        self.buf[region.end - h.payload_len as usize..region.end].to_vec();
                    return match h.opcode {
                        OpCode::Ping => Msg::Ping(payload),
                        OpCode::Pong => Msg::Pong(payload),
                        OpCode::Close => Msg::Close(
                            parse_close(&payload)
                                .expect("valid close payload")
                                .map(|(c, r)| (c, r.to_owned())),
                        ),
                        other => panic!("control event with {other:?}"),
                    };
                }
            }
        }
    }

    fn finish(&mut self) -> Msg {
        let (opcode, payload, frames) = self.partial.take().expect("message");
        Msg::Data {
            opcode,
            payload,
            frames,
        }
    }

    /// Compact the buffer and read once; returns the bytes read.
    fn fill(&mut self) -> usize {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        assert!(
            self.end < self.buf.len(),
            "decoder wants more than a full buffer"
        );
        let n = self.stream.read(&mut self.buf[self.end..]).expect("read");
        self.end += n;
        n
    }
}

// ---------------------------------------------------------------------------
// (a) our server, tungstenite client

#[derive(Debug, Default)]
struct ServerReport {
    request: Option<Request>,
    pings_sent: Vec<Vec<u8>>,
    pongs: Vec<Vec<u8>>,
    echoed: usize,
    close: Option<Option<(u16, String)>>,
}

/// Read a request with our parser; bytes after it are returned as leftover.
fn read_request(stream: &mut TcpStream) -> Result<(Request, Vec<u8>), Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match parse_request(&buf) {
            Ok(Some((req, n))) => return Ok((req, buf[n..].to_vec())),
            Ok(None) => {}
            Err(reject) => return Err(error_response(reject.status, reject.reason)),
        }
        let n = stream.read(&mut chunk).expect("read request");
        assert!(n > 0, "client closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Echo every data message back (every other one in three fragments with a
/// relay-style ping between them), answer pings, collect pongs, close on
/// request ("server-close") or answer the client's close.
fn our_echo_server(l: TcpListener) -> ServerReport {
    let mut stream = accept(&l);
    let mut report = ServerReport::default();
    let (req, leftover) = match read_request(&mut stream) {
        Ok(r) => r,
        Err(answer) => {
            stream.write_all(&answer).expect("write reject");
            return report;
        }
    };
    if req.path != "/dest" {
        stream
            .write_all(&error_response(404, "unknown session"))
            .expect("write 404");
        report.request = Some(req);
        return report;
    }
    let key = req.ws_key.clone().expect("an upgrade");
    report.request = Some(req);
    stream
        .write_all(&response_101(&key, &[("Sockrelay-Session", "s-1")]))
        .expect("write 101");
    let mut peer = Peer::new(stream, Role::Server, &leftover);
    loop {
        match peer.recv() {
            Msg::Data {
                opcode, payload, ..
            } => {
                if opcode == OpCode::Text && payload == b"server-close" {
                    peer.send_close(4002, "replaced by a new origin connection");
                    report.close = Some(match peer.recv() {
                        Msg::Close(c) => c,
                        other => panic!("expected the close reply, got {other:?}"),
                    });
                    break;
                }
                let fragmented = report.echoed % 2 == 1;
                if fragmented {
                    let ping = format!("sockrelay peer-joined 127.0.0.1:{}", report.echoed);
                    peer.send_message(opcode, &payload, 3, Some(ping.as_bytes()));
                    report.pings_sent.push(ping.into_bytes());
                } else {
                    peer.send_message(opcode, &payload, 1, None);
                }
                report.echoed += 1;
            }
            Msg::Ping(p) => peer.send_frame(true, OpCode::Pong, &p),
            Msg::Pong(p) => report.pongs.push(p),
            Msg::Close(c) => {
                match &c {
                    Some((code, reason)) => peer.send_close(*code, reason),
                    None => peer.send_frame(true, OpCode::Close, &[]),
                }
                report.close = Some(c);
                break;
            }
            Msg::Eof => panic!("EOF without a close"),
        }
    }
    // RFC 6455 §7.1.1: the server closes the TCP connection first.
    peer.stream.shutdown(Shutdown::Both).ok();
    report
}

type TClient = tungstenite::WebSocket<TcpStream>;

fn tungstenite_client(port: u16, path: &str) -> TClient {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, resp) =
        tungstenite::client(url.as_str(), connect(port)).expect("tungstenite handshake");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sockrelay-session"], "s-1");
    ws
}

/// Read until a data message; pings (answered by tungstenite itself) skipped.
fn tungstenite_read_data(ws: &mut TClient) -> Message {
    loop {
        match ws.read().expect("tungstenite read") {
            Message::Ping(_) => continue,
            m => return m,
        }
    }
}

#[test]
fn a_tungstenite_client_to_our_server_echo_sizes_ping_close() {
    let (l, port) = listener();
    let server = thread::spawn(move || our_echo_server(l));
    let mut ws = tungstenite_client(port, "/dest?id=abc%20x&admission=a%2Bb");

    let mut sent = 0;
    for (i, &size) in SIZES.iter().enumerate() {
        let text = text_of(size, i as u64 + 1);
        ws.send(Message::text(text.clone())).expect("send text");
        match tungstenite_read_data(&mut ws) {
            Message::Text(t) => assert!(t.as_str() == text, "text echo of {size} bytes differs"),
            other => panic!("expected text of {size} bytes, got {:?}", other.len()),
        }
        let bin = binary_of(size, i as u64 + 100);
        ws.send(Message::binary(bin.clone())).expect("send binary");
        match tungstenite_read_data(&mut ws) {
            Message::Binary(b) => assert!(b[..] == bin[..], "binary echo of {size} bytes differs"),
            other => panic!("expected binary of {size} bytes, got {:?}", other.len()),
        }
        sent += 2;
    }

    // tungstenite ping -> our pong, same payload.
    ws.send(Message::Ping(b"tungstenite ping".to_vec().into()))
        .expect("ping");
    match tungstenite_read_data(&mut ws) {
        Message::Pong(p) => assert_eq!(&p[..], b"tungstenite ping"),
        other => panic!("expected a pong, got {other:?}"),
    }

    // Close handshake started by the client; the code and reason come back.
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "origin gone".into(),
    }))
    .expect("close");
    let mut echoed_close = None;
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => echoed_close = f,
            Ok(Message::Ping(_)) => {}
            Ok(other) => panic!("unexpected after close: {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("tungstenite read after close: {e}"),
        }
    }
    let f = echoed_close.expect("our server echoed the close");
    assert_eq!(
        (u16::from(f.code), f.reason.as_str()),
        (4001, "origin gone")
    );

    let report = server.join().expect("server thread");
    let req = report.request.expect("request");
    assert_eq!(req.path, "/dest");
    assert_eq!(req.query_param("id"), Some("abc x"));
    assert_eq!(req.query_param("admission"), Some("a+b"));
    assert_eq!(report.echoed, sent);
    // tungstenite answered every ping we put between fragments.
    assert_eq!(report.pings_sent.len(), sent / 2);
    assert_eq!(report.pongs, report.pings_sent);
    assert_eq!(report.close, Some(Some((4001, "origin gone".to_owned()))));
}

#[test]
fn a_our_server_starts_the_close() {
    let (l, port) = listener();
    let server = thread::spawn(move || our_echo_server(l));
    let mut ws = tungstenite_client(port, "/dest");
    ws.send(Message::text("server-close")).expect("send");
    let mut got = None;
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => got = f,
            Ok(other) => panic!("unexpected: {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("tungstenite read: {e}"),
        }
    }
    let f = got.expect("a close frame");
    assert_eq!(
        (u16::from(f.code), f.reason.as_str()),
        (4002, "replaced by a new origin connection")
    );
    let report = server.join().expect("server thread");
    // tungstenite echoes the code (and no reason, which RFC 6455 allows).
    let (code, _) = report.close.flatten().expect("close reply with a code");
    assert_eq!(code, 4002);
}

#[test]
fn a_tungstenite_client_reads_our_error_response() {
    let (l, port) = listener();
    let server = thread::spawn(move || our_echo_server(l));
    let url = format!("ws://127.0.0.1:{port}/nowhere");
    match tungstenite::client(url.as_str(), connect(port)) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            assert_eq!(resp.status(), 404);
            assert_eq!(resp.body().as_deref(), Some(&b"unknown session\n"[..]));
        }
        Err(e) => panic!("expected an HTTP 404, got {e}"),
        Ok(_) => panic!("expected an HTTP 404, got an upgrade"),
    }
    assert_eq!(
        server.join().expect("server").request.expect("req").path,
        "/nowhere"
    );
}

// ---------------------------------------------------------------------------
// (b) our client, tungstenite server

#[derive(Debug, Default)]
struct TServerReport {
    /// (is_text, payload) of each data message received, in order.
    received: Vec<(bool, Vec<u8>)>,
    pings: Vec<Vec<u8>>,
    pongs: Vec<Vec<u8>>,
    close: Option<(u16, String)>,
}

/// tungstenite echo server. Commands in text messages: "send-ping" makes it
/// ping us (like the relay's control pings) and answer "got pong" once our
/// pong arrives; "close-me" makes it start the close handshake.
#[allow(clippy::result_large_err)] // ErrorResponse is tungstenite's type
fn tungstenite_echo_server(l: TcpListener, reject: bool) -> TServerReport {
    let stream = accept(&l);
    let callback = |req: &tungstenite::handshake::server::Request,
                    mut resp: tungstenite::handshake::server::Response| {
        assert_eq!(req.uri().path(), "/dest");
        assert_eq!(req.uri().query(), Some("id=s-2&admission=a%2Bb"));
        assert_eq!(req.headers()["sockrelay-admission"], "abc");
        if reject {
            let mut err = tungstenite::handshake::server::ErrorResponse::new(Some(
                "wrong admission value".to_owned(),
            ));
            *err.status_mut() = tungstenite::http::StatusCode::FORBIDDEN;
            return Err(err);
        }
        resp.headers_mut()
            .insert("sockrelay-session", "s-2".parse().expect("header value"));
        Ok(resp)
    };
    let mut report = TServerReport::default();
    let mut ws = match tungstenite::accept_hdr(stream, callback) {
        Ok(ws) => ws,
        Err(_) if reject => return report,
        Err(e) => panic!("tungstenite accept: {e}"),
    };
    loop {
        match ws.read() {
            Ok(Message::Text(t)) if t.as_str() == "send-ping" => {
                ws.send(Message::Ping(b"sockrelay session s-2".to_vec().into()))
                    .expect("ping");
                match ws.read().expect("read pong") {
                    Message::Pong(p) => report.pongs.push(p.to_vec()),
                    other => panic!("expected our pong, got {other:?}"),
                }
                ws.send(Message::text("got pong")).expect("send");
            }
            Ok(Message::Text(t)) if t.as_str() == "close-me" => {
                ws.close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "relay shutting down".into(),
                }))
                .expect("close");
            }
            Ok(Message::Text(t)) => {
                report.received.push((true, t.as_bytes().to_vec()));
                ws.send(Message::Text(t)).expect("echo text");
            }
            Ok(Message::Binary(b)) => {
                report.received.push((false, b.to_vec()));
                ws.send(Message::Binary(b)).expect("echo binary");
            }
            Ok(Message::Ping(p)) => report.pings.push(p.to_vec()),
            Ok(Message::Pong(p)) => report.pongs.push(p.to_vec()),
            Ok(Message::Close(f)) => {
                report.close = f.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
            }
            Ok(Message::Frame(_)) => unreachable!("never returned by read"),
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("tungstenite server: {e}"),
        }
    }
    report
}

/// Our client's opening handshake; returns the peer or the error.
fn our_client(port: u16) -> Result<Peer, ClientError> {
    let mut stream = connect(port);
    let (request, accept) = client_request(
        &format!("127.0.0.1:{port}"),
        "/dest?id=s-2&admission=a%2Bb",
        &[("Sockrelay-Admission", "abc")],
        *b"0123456789abcdef",
    );
    stream.write_all(&request).expect("write request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        if let Some((resp, n)) = parse_response(&buf, &accept)? {
            assert_eq!(resp.status, 101);
            assert_eq!(resp.header("sockrelay-session"), Some(&b"s-2"[..]));
            return Ok(Peer::new(stream, Role::Client, &buf[n..]));
        }
        let n = stream.read(&mut chunk).expect("read response");
        if n == 0 {
            return Err(parse_response_eof(&buf));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn b_our_client_to_tungstenite_server_echo_sizes_fragments_ping_close() {
    let (l, port) = listener();
    let server = thread::spawn(move || tungstenite_echo_server(l, false));
    let mut peer = our_client(port).expect("our client handshake");

    let mut sent: Vec<(bool, Vec<u8>)> = Vec::new();
    let mut pings_sent: Vec<Vec<u8>> = Vec::new();
    let mut pongs: Vec<Vec<u8>> = Vec::new();
    for (i, &size) in SIZES.iter().enumerate() {
        for is_text in [true, false] {
            let payload = if is_text {
                text_of(size, i as u64 + 7).into_bytes()
            } else {
                binary_of(size, i as u64 + 700)
            };
            let opcode = if is_text {
                OpCode::Text
            } else {
                OpCode::Binary
            };
            // Each message whole, then again in fragments with a ping inside.
            for pieces in [1, 2 + (i % 4)] {
                let ping = (pieces > 1).then(|| format!("ping {i} {is_text}").into_bytes());
                peer.send_message(opcode, &payload, pieces, ping.as_deref());
                pings_sent.extend(ping);
                sent.push((is_text, payload.clone()));
                loop {
                    match peer.recv() {
                        Msg::Pong(p) => pongs.push(p),
                        Msg::Data {
                            opcode: got,
                            payload: echo,
                            ..
                        } => {
                            assert_eq!(got, opcode, "{size} bytes, {pieces} pieces");
                            assert!(
                                echo == payload,
                                "echo of {size} bytes in {pieces} pieces differs"
                            );
                            break;
                        }
                        other => panic!("expected an echo, got {other:?}"),
                    }
                }
            }
        }
    }
    // Every ping we sent between fragments was answered, in order.
    assert_eq!(pongs, pings_sent);

    // Our ping -> tungstenite pong.
    peer.send_frame(true, OpCode::Ping, b"are you there");
    assert_eq!(peer.recv(), Msg::Pong(b"are you there".to_vec()));

    // A server ping (the relay's control channel) -> our pong.
    peer.send_message(OpCode::Text, b"send-ping", 1, None);
    let ping = match peer.recv() {
        Msg::Ping(p) => p,
        other => panic!("expected a ping, got {other:?}"),
    };
    assert_eq!(ping, b"sockrelay session s-2");
    peer.send_frame(true, OpCode::Pong, &ping);
    assert!(matches!(
        peer.recv(),
        Msg::Data { opcode: OpCode::Text, payload, frames: 1 } if payload == b"got pong"
    ));

    // Close handshake started by us: code and reason echoed, then TCP EOF.
    peer.send_close(4001, "origin gone");
    assert_eq!(
        peer.recv(),
        Msg::Close(Some((4001, "origin gone".to_owned())))
    );
    assert_eq!(peer.recv(), Msg::Eof);

    let report = server.join().expect("server thread");
    assert!(
        report.received == sent,
        "server received other messages than sent"
    );
    assert_eq!(report.pings.len(), pings_sent.len() + 1);
    assert_eq!(report.pongs, vec![b"sockrelay session s-2".to_vec()]);
    assert_eq!(report.close, Some((4001, "origin gone".to_owned())));
}

#[test]
fn b_tungstenite_server_starts_the_close() {
    let (l, port) = listener();
    let server = thread::spawn(move || tungstenite_echo_server(l, false));
    let mut peer = our_client(port).expect("our client handshake");
    peer.send_message(OpCode::Text, b"close-me", 1, None);
    assert_eq!(
        peer.recv(),
        Msg::Close(Some((1001, "relay shutting down".to_owned())))
    );
    peer.send_close(1001, "relay shutting down");
    assert_eq!(peer.recv(), Msg::Eof);
    let report = server.join().expect("server thread");
    assert_eq!(report.close, Some((1001, "relay shutting down".to_owned())));
}

#[test]
fn b_our_client_reports_a_tungstenite_rejection() {
    let (l, port) = listener();
    let server = thread::spawn(move || tungstenite_echo_server(l, true));
    let err = match our_client(port) {
        Err(e) => e,
        Ok(_) => panic!("expected a rejection"),
    };
    assert_eq!(err.status(), Some(403));
    assert_eq!(
        err.to_string(),
        "relay answered 403 Forbidden: wrong admission value"
    );
    server.join().expect("server thread");
}
