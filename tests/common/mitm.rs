//! A byte-level WebSocket man-in-the-middle that sits in front of the real
//! relay and plays the evil relay operator. See the module documentation
//! of `tests/evil_relay.rs` for why it is built this way.
//!
//! One thread accepts on 127.0.0.1:0. Each accepted connection gets a TCP
//! connection to the real relay and two pump threads:
//!
//! - the HTTP upgrade request is read whole, recorded, optionally rewritten
//!   (the dest's `Sockrelay-Admission` header), and passed on; the relay's
//!   answer head is passed back untouched; a non-101 answer is then copied
//!   raw to the end;
//! - after a 101, each direction is decoded with the crate's own codec
//!   (`ws::frame::Decoder`: `Role::Server` for client→relay frames, which
//!   are masked; `Role::Client` for relay→client frames, which are not).
//!   Each frame is collected whole, recorded (unmasked), handed to the
//!   attack, and re-encoded with `encode_frame` (masked again toward the
//!   relay, with a mask of our own choosing; unmasked toward the client).
//!
//! Every socket has a read timeout (`POLL`), every loop checks a stop flag
//! and a deadline (`LIFETIME`), so nothing outlives a test by long.
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sockrelay::ws::frame::{encode_frame, Decoder, Event, OpCode, Role as WsRole};

/// Read timeout of every socket: how often a blocked thread looks at the
/// stop flag.
const POLL: Duration = Duration::from_millis(50);
/// No thread of a proxy runs longer than this, whatever happens.
const LIFETIME: Duration = Duration::from_secs(120);
/// Largest HTTP head we wait for (the relay's own limit is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// Largest frame we are willing to collect whole.
const MAX_FRAME: u64 = 64 << 20;

/// Which client a proxied connection belongs to (from the request path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Origin,
    Dest,
    Other,
}

/// `Up`: client → relay (masked frames). `Down`: relay → client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    Up,
    Down,
}

/// One whole WebSocket frame, payload unmasked.
#[derive(Clone, Debug)]
pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn binary(payload: Vec<u8>) -> Frame {
        Frame {
            fin: true,
            opcode: OpCode::Binary,
            payload,
        }
    }
    pub fn ping(payload: &[u8]) -> Frame {
        Frame {
            fin: true,
            opcode: OpCode::Ping,
            payload: payload.to_vec(),
        }
    }
}

/// A frame as it passed the proxy (before any tampering).
#[derive(Clone, Debug)]
pub struct Captured {
    pub conn: usize,
    pub role: Role,
    /// 0 for the first connection of this role, 1 for the next, ...
    pub role_index: usize,
    pub dir: Dir,
    pub frame: Frame,
}

/// Where an attack strikes: the `nth` (from 0) binary frame of at least
/// `min_len` payload bytes that flows in `dir` on the first connection of
/// `role` (`link` 0), or on the first of its reconnects from the `link`-th
/// on that carries such a frame (a reconnect refused with 404 carries
/// none), e.g. the link a channel resumes on. The attack strikes once;
/// other connections pass untouched, so a test can also check that the
/// session recovers.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub role: Role,
    pub dir: Dir,
    pub nth: usize,
    pub min_len: usize,
    pub link: usize,
}

#[derive(Clone, Debug)]
pub enum Attack {
    /// Record only.
    None,
    /// XOR `mask` into payload byte `byte` (clamped to the payload).
    FlipBit { at: Target, byte: usize, mask: u8 },
    /// Send `forged` as a binary frame just before the target, same way.
    Inject { at: Target, forged: Vec<u8> },
    /// Forward the target, then the previous matching frame once more.
    Replay { at: Target },
    /// Hold the target back until the next matching frame; send that one
    /// first, then the target.
    Reorder { at: Target },
    /// Drop the last payload byte (well-formed frame, shorter message).
    Shorten { at: Target },
    /// Forward the target's header and half its payload, then close both
    /// TCP connections of this proxied connection.
    Cut { at: Target },
    /// Send the target back to whoever sent it instead of forwarding it.
    Reflect { at: Target },
    /// Swallow the target: it never arrives, the frames after it do.
    Drop { at: Target },
}

impl Attack {
    fn target(&self) -> Option<Target> {
        match self {
            Attack::None => None,
            Attack::FlipBit { at, .. }
            | Attack::Inject { at, .. }
            | Attack::Replay { at }
            | Attack::Reorder { at }
            | Attack::Shorten { at }
            | Attack::Cut { at }
            | Attack::Reflect { at }
            | Attack::Drop { at } => Some(*at),
        }
    }
}

struct ConnInfo {
    role: Role,
    role_index: usize,
    client: Arc<Mutex<TcpStream>>,
    relay: Arc<Mutex<TcpStream>>,
}

#[derive(Default)]
struct Log {
    frames: Vec<Captured>,
    /// Raw bytes as they crossed the proxy, per (connection, direction):
    /// HTTP heads and (masked, for Up) frames, before any tampering.
    wire: HashMap<(usize, Dir), Vec<u8>>,
    /// HTTP heads (request as the client sent it, response), per connection.
    heads: Vec<(usize, Role, Dir, Vec<u8>)>,
    fired: Vec<String>,
    /// The connection (role index) the attack struck on, once it has.
    struck_on: Option<usize>,
    origin_admission: Option<String>,
    conns: Vec<ConnInfo>,
    role_counts: HashMap<Role, usize>,
}

struct Shared {
    relay: SocketAddr,
    attack: Attack,
    rewrite_dest_admission: bool,
    stop: AtomicBool,
    deadline: Instant,
    log: Mutex<Log>,
}

impl Shared {
    fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
    fn fired(&self, what: String) {
        eprintln!("evil relay: {what}");
        self.log.lock().unwrap().fired.push(what);
    }
}

/// The proxy. Clients connect to `addr` instead of the relay.
pub struct Mitm {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Mitm {
    pub fn start(relay: SocketAddr, attack: Attack) -> Mitm {
        Self::start_with(relay, attack, false)
    }

    /// `rewrite_dest_admission`: put the admission value the first origin
    /// sent into every dest's upgrade request (what a relay that lets
    /// anyone in would do).
    pub fn start_with(relay: SocketAddr, attack: Attack, rewrite_dest_admission: bool) -> Mitm {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            relay,
            attack,
            rewrite_dest_admission,
            stop: AtomicBool::new(false),
            deadline: Instant::now() + LIFETIME,
            log: Mutex::new(Log::default()),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            let mut next_conn = 0usize;
            while !sh.done() {
                match listener.accept() {
                    Ok((s, _)) => {
                        let sh2 = sh.clone();
                        let id = next_conn;
                        next_conn += 1;
                        std::thread::spawn(move || handle(sh2, id, s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Mitm {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What the attack did (empty: it never struck).
    pub fn fired(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().fired.clone()
    }

    pub fn wait_fired(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if !self.fired().is_empty() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn frames(&self) -> Vec<Captured> {
        self.shared.log.lock().unwrap().frames.clone()
    }

    pub fn heads(&self) -> Vec<(usize, Role, Dir, Vec<u8>)> {
        self.shared.log.lock().unwrap().heads.clone()
    }

    /// Every recorded byte string: each raw wire stream, and each frame's
    /// unmasked payload (what the relay operator can read).
    pub fn recorded(&self) -> Vec<Vec<u8>> {
        let log = self.shared.log.lock().unwrap();
        let mut all: Vec<Vec<u8>> = log.wire.values().cloned().collect();
        all.extend(log.frames.iter().map(|c| c.frame.payload.clone()));
        all
    }

    /// Only the frames' unmasked payloads.
    pub fn frame_payloads(&self) -> Vec<Vec<u8>> {
        let log = self.shared.log.lock().unwrap();
        log.frames.iter().map(|c| c.frame.payload.clone()).collect()
    }

    pub fn origin_admission(&self) -> Option<String> {
        self.shared.log.lock().unwrap().origin_admission.clone()
    }

    /// Number of connections of `role` seen so far.
    pub fn connections(&self, role: Role) -> usize {
        let log = self.shared.log.lock().unwrap();
        log.role_counts.get(&role).copied().unwrap_or(0)
    }

    /// Send `frames` to the client of connection (`role`, `role_index`) as
    /// if they came from the relay. False if there is no such connection
    /// or the write failed.
    pub fn inject_to_client(&self, role: Role, role_index: usize, frames: &[Frame]) -> bool {
        let client = {
            let log = self.shared.log.lock().unwrap();
            match log
                .conns
                .iter()
                .find(|c| c.role == role && c.role_index == role_index)
            {
                Some(c) => c.client.clone(),
                None => return false,
            }
        };
        let mut bytes = Vec::new();
        for f in frames {
            encode_frame(&mut bytes, f.fin, f.opcode, None, &f.payload);
        }
        self.shared.fired(format!(
            "injected {} frame(s) into {role:?} connection {role_index}",
            frames.len()
        ));
        let mut c = client.lock().unwrap();
        c.write_all(&bytes).is_ok()
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        {
            let log = self.shared.log.lock().unwrap();
            for c in &log.conns {
                let _ = c.client.lock().unwrap().shutdown(Shutdown::Both);
                let _ = c.relay.lock().unwrap().shutdown(Shutdown::Both);
            }
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Read until the end of an HTTP head. Returns (head, bytes after it).
fn read_head(sh: &Shared, s: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !sh.done() && buf.len() <= MAX_HEAD {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Some((buf, rest));
        }
        match s.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    None
}

fn header_value(head: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    text.split("\r\n").find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn replace_header(head: &[u8], name: &str, value: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let lines: Vec<String> = text
        .split("\r\n")
        .map(|line| match line.split_once(':') {
            Some((k, _)) if k.trim().eq_ignore_ascii_case(name) => format!("{k}: {value}"),
            _ => line.to_string(),
        })
        .collect();
    lines.join("\r\n").into_bytes()
}

fn set_timeouts(s: &TcpStream) {
    let _ = s.set_read_timeout(Some(POLL));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_nodelay(true);
}

fn handle(sh: Arc<Shared>, id: usize, mut client: TcpStream) {
    let _ = client.set_nonblocking(false);
    set_timeouts(&client);
    let Ok(mut relay) = TcpStream::connect_timeout(&sh.relay, Duration::from_secs(5)) else {
        return;
    };
    set_timeouts(&relay);
    let Some((head, rest)) = read_head(&sh, &mut client) else {
        return;
    };
    let line = String::from_utf8_lossy(&head[..find(&head, b"\r\n").unwrap_or(0)]).to_string();
    let role = if line.starts_with("GET /origin") {
        Role::Origin
    } else if line.starts_with("GET /dest") {
        Role::Dest
    } else {
        Role::Other
    };
    let (Ok(c2), Ok(r2)) = (client.try_clone(), relay.try_clone()) else {
        return;
    };
    let client_w = Arc::new(Mutex::new(c2));
    let relay_w = Arc::new(Mutex::new(r2));
    let (role_index, head_out) = {
        let mut log = sh.log.lock().unwrap();
        let n = log.role_counts.entry(role).or_insert(0);
        let role_index = *n;
        *n += 1;
        log.conns.push(ConnInfo {
            role,
            role_index,
            client: client_w.clone(),
            relay: relay_w.clone(),
        });
        log.heads.push((id, role, Dir::Up, head.clone()));
        let w = log.wire.entry((id, Dir::Up)).or_default();
        w.extend_from_slice(&head);
        w.extend_from_slice(&rest);
        let adm = header_value(&head, "sockrelay-admission");
        if role == Role::Origin && log.origin_admission.is_none() {
            log.origin_admission = adm;
        }
        let head_out = match (&log.origin_admission, role) {
            (Some(a), Role::Dest) if sh.rewrite_dest_admission => {
                replace_header(&head, "sockrelay-admission", a)
            }
            _ => head.clone(),
        };
        (role_index, head_out)
    };
    if head_out != head {
        sh.fired(format!(
            "rewrote the admission header of dest connection {role_index}"
        ));
    }
    {
        let mut r = relay_w.lock().unwrap();
        if r.write_all(&head_out).is_err() {
            return;
        }
    }
    let ctx = Ctx {
        sh: sh.clone(),
        id,
        role,
        role_index,
        client: client_w,
        relay: relay_w,
    };
    // client → relay
    let up = {
        let ctx = ctx.clone();
        let Ok(reader) = client.try_clone() else {
            return;
        };
        std::thread::spawn(move || pump(ctx, Dir::Up, reader, rest))
    };
    // relay → client: the answer's head, then frames (or raw bytes).
    match read_head(&sh, &mut relay) {
        Some((resp, rest)) => {
            {
                let mut log = sh.log.lock().unwrap();
                log.heads.push((id, role, Dir::Down, resp.clone()));
                let w = log.wire.entry((id, Dir::Down)).or_default();
                w.extend_from_slice(&resp);
                w.extend_from_slice(&rest);
            }
            let ok = ctx.client.lock().unwrap().write_all(&resp).is_ok();
            let upgraded = resp.starts_with(b"HTTP/1.1 101");
            if ok && upgraded {
                pump(ctx.clone(), Dir::Down, relay, rest);
            } else if ok {
                let _ = ctx.client.lock().unwrap().write_all(&rest);
                raw_copy(&ctx, relay);
            }
        }
        None => ctx.kill(),
    }
    let _ = up.join();
}

#[derive(Clone)]
struct Ctx {
    sh: Arc<Shared>,
    id: usize,
    role: Role,
    role_index: usize,
    client: Arc<Mutex<TcpStream>>,
    relay: Arc<Mutex<TcpStream>>,
}

impl Ctx {
    /// The writer toward which `dir` flows.
    fn to(&self, dir: Dir) -> &Arc<Mutex<TcpStream>> {
        match dir {
            Dir::Up => &self.relay,
            Dir::Down => &self.client,
        }
    }
    fn from(&self, dir: Dir) -> &Arc<Mutex<TcpStream>> {
        match dir {
            Dir::Up => &self.client,
            Dir::Down => &self.relay,
        }
    }
    fn kill(&self) {
        let _ = self.client.lock().unwrap().shutdown(Shutdown::Both);
        let _ = self.relay.lock().unwrap().shutdown(Shutdown::Both);
    }
}

/// A non-101 answer: copy the rest of it to the client.
fn raw_copy(ctx: &Ctx, mut relay: TcpStream) {
    let mut chunk = [0u8; 4096];
    while !ctx.sh.done() {
        match relay.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                if ctx.client.lock().unwrap().write_all(&chunk[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    ctx.kill();
}

/// Per-pump attack state.
struct AttackState {
    /// Matching frames seen so far in this pump.
    seen: usize,
    prev: Option<Frame>,
    held: Option<Frame>,
    mask: u32,
}

impl AttackState {
    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32; never zero.
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        self.mask.to_le_bytes()
    }
}

/// Decode frames flowing in `dir`, record them, apply the attack, pass
/// them on. `buf` holds bytes that arrived with the HTTP head.
fn pump(ctx: Ctx, dir: Dir, mut reader: TcpStream, mut buf: Vec<u8>) {
    let role = match dir {
        Dir::Up => WsRole::Server,
        Dir::Down => WsRole::Client,
    };
    let mut dec = Decoder::new(role, MAX_FRAME);
    let mut cur: Option<Frame> = None;
    let mut st = AttackState {
        seen: 0,
        prev: None,
        held: None,
        mask: (0x9e37_79b9 ^ (ctx.id as u32).wrapping_mul(2_654_435_761)) | 1,
    };
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let mut pos = 0;
        loop {
            match dec.decode(&mut buf[pos..]) {
                Ok(None) => break,
                Ok(Some((ev, used))) => {
                    let done = match ev {
                        Event::DataHeader(h) => {
                            cur = Some(Frame {
                                fin: h.fin,
                                opcode: h.opcode,
                                payload: Vec::with_capacity(h.payload_len as usize),
                            });
                            h.payload_len == 0
                        }
                        Event::Payload {
                            len, frame_done, ..
                        } => {
                            if let Some(f) = &mut cur {
                                f.payload.extend_from_slice(&buf[pos..pos + len]);
                            }
                            frame_done
                        }
                        Event::Control(h) => {
                            let end = pos + used;
                            cur = Some(Frame {
                                fin: true,
                                opcode: h.opcode,
                                payload: buf[end - h.payload_len as usize..end].to_vec(),
                            });
                            true
                        }
                    };
                    pos += used;
                    if done {
                        let frame = cur.take().expect("a frame in progress");
                        if !on_frame(&ctx, dir, &mut st, frame) {
                            ctx.kill();
                            return;
                        }
                    }
                }
                Err(e) => {
                    eprintln!("evil relay: conn {} {dir:?}: bad frame: {e}", ctx.id);
                    ctx.kill();
                    return;
                }
            }
        }
        buf.drain(..pos);
        if ctx.sh.done() {
            ctx.kill();
            return;
        }
        match reader.read(&mut chunk) {
            Ok(0) => {
                // Pass the half-close on.
                let _ = ctx.to(dir).lock().unwrap().shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                let mut log = ctx.sh.log.lock().unwrap();
                log.wire
                    .entry((ctx.id, dir))
                    .or_default()
                    .extend_from_slice(&chunk[..n]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                ctx.kill();
                return;
            }
        }
    }
}

fn encode(st: &mut AttackState, toward_relay: bool, f: &Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.payload.len() + 14);
    let mask = toward_relay.then(|| st.next_mask());
    encode_frame(&mut out, f.fin, f.opcode, mask, &f.payload);
    out
}

/// Send `f` on in its own direction.
fn forward(ctx: &Ctx, dir: Dir, st: &mut AttackState, f: &Frame) -> bool {
    let bytes = encode(st, dir == Dir::Up, f);
    ctx.to(dir).lock().unwrap().write_all(&bytes).is_ok()
}

/// Send `f` back to whoever sent it.
fn back(ctx: &Ctx, dir: Dir, st: &mut AttackState, f: &Frame) -> bool {
    let bytes = encode(st, dir == Dir::Down, f);
    ctx.from(dir).lock().unwrap().write_all(&bytes).is_ok()
}

/// Record, attack, forward one frame. False: stop this connection.
fn on_frame(ctx: &Ctx, dir: Dir, st: &mut AttackState, frame: Frame) -> bool {
    ctx.sh.log.lock().unwrap().frames.push(Captured {
        conn: ctx.id,
        role: ctx.role,
        role_index: ctx.role_index,
        dir,
        frame: frame.clone(),
    });
    let attack = &ctx.sh.attack;
    let matches = attack.target().is_some_and(|t| {
        t.role == ctx.role
            && t.dir == dir
            && (if t.link == 0 {
                ctx.role_index == 0
            } else {
                let struck = ctx.sh.log.lock().unwrap().struck_on;
                ctx.role_index >= t.link && struck.is_none_or(|r| r == ctx.role_index)
            })
            && frame.opcode == OpCode::Binary
            && frame.payload.len() >= t.min_len
    });
    if !matches {
        return forward(ctx, dir, st, &frame);
    }
    let nth = st.seen;
    st.seen += 1;
    let t = attack.target().unwrap();
    let what = |verb: &str| {
        format!(
            "{verb} binary frame #{nth} ({} bytes) {dir:?} on {:?} connection {}",
            frame.payload.len(),
            ctx.role,
            ctx.role_index
        )
    };
    // A held frame goes out right after the next matching one.
    if let Some(held) = st.held.take() {
        ctx.sh.fired(what("reordered: sent before the held frame:"));
        st.prev = Some(frame.clone());
        return forward(ctx, dir, st, &frame) && forward(ctx, dir, st, &held);
    }
    if nth != t.nth {
        st.prev = Some(frame.clone());
        return forward(ctx, dir, st, &frame);
    }
    ctx.sh.log.lock().unwrap().struck_on = Some(ctx.role_index);
    match attack {
        Attack::None => forward(ctx, dir, st, &frame),
        Attack::FlipBit { byte, mask, .. } => {
            let mut f = frame.clone();
            if !f.payload.is_empty() {
                let i = (*byte).min(f.payload.len() - 1);
                f.payload[i] ^= mask;
            }
            ctx.sh
                .fired(what(&format!("flipped bits {mask:#04x} at {byte} of")));
            forward(ctx, dir, st, &f)
        }
        Attack::Inject { forged, .. } => {
            ctx.sh.fired(what(&format!(
                "injected a forged {}-byte binary frame before",
                forged.len()
            )));
            forward(ctx, dir, st, &Frame::binary(forged.clone())) && forward(ctx, dir, st, &frame)
        }
        Attack::Replay { .. } => {
            let Some(prev) = st.prev.clone() else {
                return forward(ctx, dir, st, &frame);
            };
            ctx.sh
                .fired(what("forwarded, then replayed the previous frame after"));
            st.prev = Some(frame.clone());
            forward(ctx, dir, st, &frame) && forward(ctx, dir, st, &prev)
        }
        Attack::Reorder { .. } => {
            ctx.sh.fired(what("holding back"));
            st.held = Some(frame);
            true
        }
        Attack::Shorten { .. } => {
            let mut f = frame.clone();
            f.payload.pop();
            ctx.sh.fired(what("dropped the last byte of"));
            forward(ctx, dir, st, &f)
        }
        Attack::Cut { .. } => {
            let bytes = encode(st, dir == Dir::Up, &frame);
            let keep = bytes.len() - frame.payload.len() / 2;
            ctx.sh.fired(what(&format!(
                "cut the connection after {keep} of {} bytes of",
                bytes.len()
            )));
            let _ = ctx.to(dir).lock().unwrap().write_all(&bytes[..keep]);
            false
        }
        Attack::Reflect { .. } => {
            ctx.sh.fired(what("reflected to its sender"));
            back(ctx, dir, st, &frame)
        }
        Attack::Drop { .. } => {
            ctx.sh.fired(what("dropped"));
            true
        }
    }
}

// ---- the evil relay terminating TLS ----------------------------------

/// The same man-in-the-middle, reached over TLS: a front listener
/// terminates TLS with the relay's (test CA) certificate and hands the
/// plaintext to the proxy above through a loopback connection, so the
/// attacks are byte for byte the same as on a plain relay. This is what a
/// relay operator who owns the TLS key sees and controls. Cuts and
/// half-closes pass through: when the proxy shuts a connection down, the
/// front sends close_notify and closes the TCP connection.
#[cfg(feature = "tls")]
pub mod tls {
    use super::{Attack, Mitm, LIFETIME, POLL};
    use std::io::{ErrorKind, Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::os::unix::io::AsRawFd;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use sockrelay::tls::{ServerTls, ServerTlsFiles};

    /// The TLS front and the proxy behind it. Clients connect to `addr`.
    pub struct TlsMitm {
        pub addr: SocketAddr,
        pub inner: Mitm,
        stop: Arc<AtomicBool>,
        accept: Option<JoinHandle<()>>,
    }

    impl std::ops::Deref for TlsMitm {
        type Target = Mitm;
        fn deref(&self) -> &Mitm {
            &self.inner
        }
    }

    impl TlsMitm {
        pub fn start(relay: SocketAddr, attack: Attack, cert: &Path, key: &Path) -> TlsMitm {
            Self::start_with(relay, attack, false, cert, key)
        }

        pub fn start_with(
            relay: SocketAddr,
            attack: Attack,
            rewrite_dest_admission: bool,
            cert: &Path,
            key: &Path,
        ) -> TlsMitm {
            let inner = Mitm::start_with(relay, attack, rewrite_dest_admission);
            let config = ServerTls::load(ServerTlsFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
                client_ca: None,
            })
            .expect("the test certificate loads")
            .config();
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind TLS front");
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let (stop2, behind) = (stop.clone(), inner.addr);
            let deadline = Instant::now() + LIFETIME;
            let accept = std::thread::spawn(move || {
                while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let (cfg, stop3) = (config.clone(), stop2.clone());
                            std::thread::spawn(move || bridge(cfg, s, behind, stop3, deadline));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
            TlsMitm {
                addr,
                inner,
                stop,
                accept: Some(accept),
            }
        }

        pub fn port(&self) -> u16 {
            self.addr.port()
        }
    }

    impl Drop for TlsMitm {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.accept.take() {
                let _ = t.join();
            }
        }
    }

    /// Readable (or hung up) within `POLL`: (outer, inner). A stream whose
    /// flag is false is not watched.
    fn poll2(a: &TcpStream, watch_a: bool, b: &TcpStream, watch_b: bool) -> (bool, bool) {
        let fd = |s: &TcpStream, watch: bool| if watch { s.as_raw_fd() } else { -1 };
        let mut fds = [
            libc::pollfd {
                fd: fd(a, watch_a),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fd(b, watch_b),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of
        // the call, and both descriptors are open (borrowed streams).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, POLL.as_millis() as i32) };
        if n <= 0 {
            return (false, false);
        }
        (fds[0].revents != 0, fds[1].revents != 0)
    }

    /// One client connection: TLS on `outer`, plaintext to the proxy.
    fn bridge(
        config: Arc<rustls::ServerConfig>,
        mut outer: TcpStream,
        behind: SocketAddr,
        stop: Arc<AtomicBool>,
        deadline: Instant,
    ) {
        let Ok(mut conn) = rustls::ServerConnection::new(config) else {
            return;
        };
        let Ok(mut inner) = TcpStream::connect_timeout(&behind, Duration::from_secs(5)) else {
            return;
        };
        let _ = outer.set_nonblocking(false);
        for s in [&outer, &inner] {
            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            let _ = s.set_nodelay(true);
        }
        let mut buf = vec![0u8; 64 * 1024];
        // Whether each direction has ended: outer→inner, inner→outer.
        let (mut up_done, mut down_done, mut shut) = (false, false, false);
        loop {
            let both_ended = up_done && down_done;
            if both_ended || stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                break;
            }
            let (outer_ready, inner_ready) = poll2(&outer, !up_done, &inner, !down_done);
            if outer_ready && !up_done {
                match conn.read_tls(&mut outer) {
                    Ok(0) => up_done = true,
                    Ok(_) => {
                        if let Err(e) = conn.process_new_packets() {
                            eprintln!("evil relay (TLS front): {e}");
                            let _ = conn.write_tls(&mut outer);
                            break;
                        }
                    }
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                    Err(_) => break,
                }
                loop {
                    match conn.reader().read(&mut buf) {
                        Ok(0) => {
                            up_done = true;
                            break;
                        }
                        Ok(n) => {
                            if inner.write_all(&buf[..n]).is_err() {
                                up_done = true;
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        // Unexpected EOF (no close_notify): the client is gone.
                        Err(_) => {
                            up_done = true;
                            break;
                        }
                    }
                }
                if up_done {
                    let _ = inner.shutdown(Shutdown::Write);
                }
            }
            if inner_ready && !down_done {
                match inner.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        down_done = true;
                        conn.send_close_notify();
                    }
                    Ok(n) => {
                        if conn.writer().write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            while conn.wants_write() {
                if conn.write_tls(&mut outer).is_err() {
                    down_done = true;
                    up_done = true;
                    break;
                }
            }
            if down_done && !conn.wants_write() && !shut {
                let _ = outer.shutdown(Shutdown::Write);
                shut = true;
            }
        }
        let _ = inner.shutdown(Shutdown::Both);
        let _ = outer.shutdown(Shutdown::Both);
    }
}
