//! The relay under the ssh-agent pattern at scale, reported (never asserted),
//! each figure against a baseline measured in the same run:
//!
//! 1. **Many small messages**: S paired sessions held open at once, each
//!    keeping K requests of 64 bytes in flight (dest → origin), each answered
//!    by 64 bytes (origin → dest). Reports the relay's CPU time and its
//!    syscalls per forwarded message (`/proc/PID/stat`, and `perf stat`
//!    on the `raw_syscalls:sys_enter` tracepoint when perf is there), and the round trip p50/p99, for sockrelay-relay and for
//!    a naive forwarder (an epoll loop copying bytes between paired TCP
//!    connections, no framing, no control) under the same load.
//! 2. **New paired sessions per second**: origin upgrade, dest join, the
//!    origin's pairing pong, one message delivered, both closed; T client
//!    threads in parallel. Also the relay's CPU time per session. With the
//!    `tls` feature the same phase runs against a relay with `--tls-cert`
//!    (a test CA made at run time with the `openssl` CLI; the bench's
//!    client is rustls's blocking `StreamOwned`): full handshakes (client
//!    resumption off), then resumed ones (the relay's default stateful
//!    ticket cache, the clients sharing one config), each as a ratio of the
//!    plain rate measured in the same run.
//!
//! `cargo bench --bench relay_scale` (`-- --quick` for a shorter run;
//! `-- --sessions N --inflight K --seconds S` to change the load;
//! `-- --only-new-sessions` for phase 2 alone, `--no-tls` without its TLS
//! rows; set
//! `SOCKRELAY_BENCH_RELAY=/path/to/sockrelay-relay` to measure another build).
//! Loopback only; every loop is bounded in count and time.

mod common;

use common::{
    masked, pair_on, pair_relay, read_small_frame, set_fd_limit, spawn_server, Server, RELAY,
};
use mio::net::{TcpListener as MioListener, TcpStream as MioStream};
use mio::{Events, Interest, Poll, Token};
use sockrelay::ws::frame::OpCode;
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MSG: usize = 64;

fn start_relay(fds: u64) -> Server {
    start_relay_with(fds, &[])
}

fn start_relay_with(fds: u64, extra: &[&str]) -> Server {
    // SOCKRELAY_BENCH_RELAY: another build's relay, as in benches/relay.rs.
    let bin = std::env::var("SOCKRELAY_BENCH_RELAY").unwrap_or_else(|_| RELAY.into());
    let mut args = vec![
        "-p",
        "0",
        "-b",
        "127.0.0.1",
        "--max-pending",
        "65536",
        "--ping-interval",
        "600",
    ];
    args.extend_from_slice(extra);
    spawn_server(&bin, &args, fds)
}

fn start_naive(fds: u64) -> Server {
    let exe = std::env::current_exe().expect("current exe");
    let exe = exe.to_str().expect("utf-8 exe path").to_string();
    spawn_server(&exe, &["--naive-forwarder"], fds)
}

/// CPU time (user + system) of a process, from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Counts every syscall a process makes from now on (`perf stat` on the
/// `raw_syscalls:sys_enter` tracepoint: in-kernel counting, no per-call
/// stop as under strace). None without perf or tracepoint access.
struct SyscallCounter(Child);

impl SyscallCounter {
    fn attach(pid: u32) -> Option<SyscallCounter> {
        let child = Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p"])
            .arg(pid.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        std::thread::sleep(Duration::from_millis(300)); // let it attach
        Some(SyscallCounter(child))
    }

    fn finish(self) -> Option<u64> {
        // SAFETY: kill(2) on our own child's pid; no memory involved.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let out = self.0.wait_with_output().ok()?;
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .find(|l| l.contains("raw_syscalls:sys_enter"))
            .and_then(|l| l.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    }
}

// ---- raw WebSocket clients -------------------------------------------------

/// One "session" through the naive forwarder: it pairs connections in
/// accept order; a byte through proves the pairing.
fn pair_naive(addr: SocketAddr) -> (TcpStream, TcpStream) {
    let mut origin = TcpStream::connect(addr).expect("connect forwarder");
    let mut dest = TcpStream::connect(addr).expect("connect forwarder");
    origin.set_nodelay(true).expect("nodelay");
    dest.set_nodelay(true).expect("nodelay");
    dest.write_all(b"!").expect("probe");
    let mut b = [0u8; 1];
    origin.read_exact(&mut b).expect("probe through forwarder");
    (origin, dest)
}

// ---- phase 1: many sessions, small messages --------------------------------

#[derive(Default)]
struct Side {
    inbuf: Vec<u8>,
    out: Vec<u8>,
}

struct Session {
    origin: MioStream,
    dest: MioStream,
    o: Side,
    d: Side,
    inflight: VecDeque<Instant>,
}

/// Complete frames at the front of `buf`: (opcode, payload), any masking
/// undone. Consumed bytes are removed.
fn take_frames(buf: &mut Vec<u8>, mut each: impl FnMut(u8, &[u8])) {
    let mut at = 0;
    loop {
        let b = &buf[at..];
        if b.len() < 2 {
            break;
        }
        let masked = b[1] & 0x80 != 0;
        let (len, mut hdr) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            126 => break,
            127 => panic!("bench frames are small"),
            n => (n as usize, 2),
        };
        let key = if masked {
            if b.len() < hdr + 4 {
                break;
            }
            hdr += 4;
            Some([b[hdr - 4], b[hdr - 3], b[hdr - 2], b[hdr - 1]])
        } else {
            None
        };
        if b.len() < hdr + len {
            break;
        }
        let mut payload = b[hdr..hdr + len].to_vec();
        if let Some(k) = key {
            for (i, x) in payload.iter_mut().enumerate() {
                *x ^= k[i % 4];
            }
        }
        each(b[0] & 0x0f, &payload);
        at += hdr + len;
    }
    buf.drain(..at);
}

fn fill(s: &mut MioStream, side: &mut Side) -> bool {
    let mut chunk = [0u8; 16 << 10];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => side.inbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn flush(s: &mut MioStream, side: &mut Side) -> bool {
    while !side.out.is_empty() {
        match s.write(&side.out) {
            Ok(n) => {
                side.out.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

struct LoadResult {
    messages: u64,
    elapsed: Duration,
    cpu: Duration,
    syscalls: Option<u64>,
    p50: Duration,
    p99: Duration,
    broken: usize,
}

fn small_messages(
    server: &Server,
    pairs: Vec<(TcpStream, TcpStream)>,
    inflight: usize,
    limit: Duration,
    max_requests: u64,
) -> LoadResult {
    let mut poll = Poll::new().expect("poll");
    let mut sessions: Vec<Session> = Vec::with_capacity(pairs.len());
    for (i, (o, d)) in pairs.into_iter().enumerate() {
        o.set_nonblocking(true).expect("nonblocking");
        d.set_nonblocking(true).expect("nonblocking");
        let mut origin = MioStream::from_std(o);
        let mut dest = MioStream::from_std(d);
        let both = Interest::READABLE | Interest::WRITABLE;
        poll.registry()
            .register(&mut origin, Token(2 * i), both)
            .expect("register");
        poll.registry()
            .register(&mut dest, Token(2 * i + 1), both)
            .expect("register");
        sessions.push(Session {
            origin,
            dest,
            o: Side::default(),
            d: Side::default(),
            inflight: VecDeque::new(),
        });
    }
    let request = masked(OpCode::Binary, &[0x3f; MSG]);
    let answer = masked(OpCode::Binary, &[0x5c; MSG]);
    let pid = server.child.id();
    let counter = SyscallCounter::attach(pid);
    let cpu0 = cpu_time(pid);
    let start = Instant::now();
    let deadline = start + limit;
    let mut sent = 0u64;
    let mut rtts: Vec<Duration> = Vec::with_capacity(1 << 20);
    for s in sessions.iter_mut() {
        for _ in 0..inflight {
            s.d.out.extend_from_slice(&request);
            s.inflight.push_back(start);
            sent += 1;
        }
    }
    let mut broken = vec![false; sessions.len()];
    let mut events = Events::with_capacity(4096);
    let mut stopping = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            stopping = true;
        }
        if stopping && sessions.iter().all(|s| s.inflight.is_empty()) {
            break;
        }
        if now >= deadline + Duration::from_secs(5) {
            break; // answers lost: counted below as still in flight
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .expect("poll");
        for ev in events.iter() {
            let i = ev.token().0 / 2;
            if broken[i] {
                continue;
            }
            let s = &mut sessions[i];
            let ok = if ev.token().0 % 2 == 0 {
                // Origin: every request gets an answer; pings get pongs.
                let alive = fill(&mut s.origin, &mut s.o);
                let out = &mut s.o.out;
                take_frames(&mut s.o.inbuf, |op, p| match op {
                    0x2 => out.extend_from_slice(&answer),
                    0x9 => out.extend_from_slice(&masked(OpCode::Pong, p)),
                    _ => {}
                });
                alive && flush(&mut s.origin, &mut s.o)
            } else {
                let alive = fill(&mut s.dest, &mut s.d);
                let (out, q) = (&mut s.d.out, &mut s.inflight);
                take_frames(&mut s.d.inbuf, |op, p| match op {
                    0x2 => {
                        let t = Instant::now();
                        if let Some(t0) = q.pop_front() {
                            rtts.push(t - t0);
                        }
                        if !stopping && sent < max_requests {
                            out.extend_from_slice(&request);
                            q.push_back(t);
                            sent += 1;
                        }
                    }
                    0x9 => out.extend_from_slice(&masked(OpCode::Pong, p)),
                    _ => {}
                });
                alive && flush(&mut s.dest, &mut s.d)
            };
            if !ok {
                broken[i] = true;
                sessions[i].inflight.clear();
            }
            // Requests queued by the dest side wait for its next writable
            // event only if the write would block; try now.
            let s = &mut sessions[i];
            if !s.d.out.is_empty() && !flush(&mut s.dest, &mut s.d) {
                broken[i] = true;
                s.inflight.clear();
            }
        }
        if sent >= max_requests {
            stopping = true;
        }
    }
    let elapsed = start.elapsed();
    let cpu1 = cpu_time(pid);
    let syscalls = counter.and_then(SyscallCounter::finish);
    rtts.sort_unstable();
    let pct = |q: f64| {
        rtts.get(((rtts.len() as f64 * q) as usize).min(rtts.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    LoadResult {
        // Each round trip is two forwarded messages.
        messages: 2 * rtts.len() as u64,
        elapsed,
        cpu: cpu1.saturating_sub(cpu0),
        syscalls,
        p50: pct(0.50),
        p99: pct(0.99),
        broken: broken.iter().filter(|b| **b).count(),
    }
}

// ---- phase 2: new paired sessions per second -------------------------------

/// The bench's client side of a relay connection: plain TCP, or rustls's
/// blocking client over TCP.
enum Link {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Link {
    fn connect(addr: SocketAddr, tls: Option<&TlsClient>) -> Link {
        let s = TcpStream::connect(addr).expect("connect relay");
        s.set_nodelay(true).expect("nodelay");
        match tls {
            None => Link::Plain(s),
            #[cfg(feature = "tls")]
            Some(t) => {
                let c = rustls::ClientConnection::new(t.config.clone(), t.name.clone())
                    .expect("TLS client");
                Link::Tls(Box::new(rustls::StreamOwned::new(c, s)))
            }
            #[cfg(not(feature = "tls"))]
            Some(t) => match *t {},
        }
    }

    /// The TLS handshake was a resumption (false for plain TCP).
    fn resumed(&self) -> bool {
        match self {
            Link::Plain(_) => false,
            #[cfg(feature = "tls")]
            Link::Tls(t) => t.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        }
    }
}

impl Read for Link {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain(s) => s.read(b),
            #[cfg(feature = "tls")]
            Link::Tls(s) => s.read(b),
        }
    }
}

impl Write for Link {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain(s) => s.write(b),
            #[cfg(feature = "tls")]
            Link::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Link::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            Link::Tls(s) => s.flush(),
        }
    }
}

#[cfg(feature = "tls")]
#[derive(Clone)]
struct TlsClient {
    config: std::sync::Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
}

#[cfg(not(feature = "tls"))]
#[derive(Clone)]
enum TlsClient {}

struct Rate {
    per_second: f64,
    relay_cpu: Duration,
    /// Connections whose TLS handshake was a resumption (read by the TLS
    /// rows only).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    resumed: usize,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    connections: usize,
}

fn sessions_per_second(
    server: &Server,
    threads: usize,
    per_thread: usize,
    tls: Option<TlsClient>,
) -> Rate {
    let addr = server.addr;
    let pid = server.child.id();
    let cpu0 = cpu_time(pid);
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let tls = tls.clone();
            std::thread::spawn(move || {
                let msg = masked(OpCode::Binary, &[0x42; MSG]);
                let mut resumed = 0;
                for _ in 0..per_thread {
                    let (mut origin, mut dest) = pair_on(|| Link::connect(addr, tls.as_ref()));
                    origin.write_all(&msg).expect("first message");
                    origin.flush().expect("first message");
                    let (op, p) = read_small_frame(&mut dest);
                    assert!(op == 0x2 && p.len() == MSG, "first message lost");
                    resumed += origin.resumed() as usize + dest.resumed() as usize;
                }
                resumed
            })
        })
        .collect();
    let mut resumed = 0;
    for w in workers {
        resumed += w.join().expect("session worker");
    }
    let elapsed = start.elapsed();
    let n = threads * per_thread;
    Rate {
        per_second: n as f64 / elapsed.as_secs_f64(),
        relay_cpu: cpu_time(pid).saturating_sub(cpu0) / n as u32,
        resumed,
        connections: 2 * n,
    }
}

/// A TLS relay for the sessions phase: a test CA and an ECDSA P-256
/// certificate for 127.0.0.1 made now with `openssl` (as the tests do),
/// and two client configurations trusting that CA: resumption off (every
/// handshake full) and on (rustls's default in-memory ticket cache).
#[cfg(feature = "tls")]
struct TlsSetup {
    dir: std::path::PathBuf,
    cert: String,
    key: String,
    full: TlsClient,
    resuming: TlsClient,
}

#[cfg(feature = "tls")]
impl TlsSetup {
    fn new() -> TlsSetup {
        use sockrelay::tls::testcerts::{make_ca, make_leaf, KeyKind};
        let dir = std::env::temp_dir().join(format!("sockrelay-bench-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let ca = make_ca(&dir, "ca");
        let (cert, key) = make_leaf(
            &dir,
            "ca",
            "relay",
            &["IP:127.0.0.1"],
            KeyKind::EcdsaP256,
            30,
        );
        let mut roots = rustls::RootCertStore::empty();
        for c in sockrelay::tls::config::load_certs(&ca).expect("CA") {
            roots.add(c).expect("CA");
        }
        let roots = std::sync::Arc::new(roots);
        let client = |resumption: rustls::client::Resumption| {
            let mut cfg = rustls::ClientConfig::builder_with_provider(sockrelay::tls::provider())
                .with_protocol_versions(sockrelay::tls::VERSIONS)
                .expect("versions")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            cfg.alpn_protocols = vec![sockrelay::tls::ALPN_HTTP11.to_vec()];
            cfg.resumption = resumption;
            TlsClient {
                config: std::sync::Arc::new(cfg),
                name: rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name"),
            }
        };
        TlsSetup {
            cert: cert.to_str().expect("utf-8 path").into(),
            key: key.to_str().expect("utf-8 path").into(),
            full: client(rustls::client::Resumption::disabled()),
            resuming: client(rustls::client::Resumption::default()),
            dir,
        }
    }
}

#[cfg(feature = "tls")]
impl Drop for TlsSetup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---- the naive forwarder (a subprocess of this bench) ----------------------

fn naive_forwarder() {
    let mut poll = Poll::new().expect("poll");
    let mut listener =
        MioListener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind forwarder");
    eprintln!(
        "listening on {}",
        listener.local_addr().expect("local addr")
    );
    const LISTENER: Token = Token(usize::MAX);
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .expect("register");
    let mut conns: Conns = slab::Slab::new();
    let mut waiting: Option<usize> = None;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 16 << 10];
    loop {
        poll.poll(&mut events, None).expect("poll");
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut s, _)) = listener.accept() {
                    let _ = s.set_nodelay(true);
                    let entry = conns.vacant_entry();
                    let k = entry.key();
                    poll.registry()
                        .register(&mut s, Token(k), Interest::READABLE | Interest::WRITABLE)
                        .expect("register");
                    entry.insert((s, waiting, Vec::new()));
                    match waiting.take() {
                        Some(w) => conns[w].1 = Some(k),
                        None => waiting = Some(k),
                    }
                }
                continue;
            }
            let k = ev.token().0;
            let Some(peer) = conns.get(k).and_then(|c| c.1) else {
                continue;
            };
            // Either side's readiness may unblock either direction.
            for (from, to) in [(k, peer), (peer, k)] {
                if !copy(&mut conns, from, to, &mut buf) {
                    return; // the bench closes everything at the end
                }
            }
        }
    }
}

type Conns = slab::Slab<(MioStream, Option<usize>, Vec<u8>)>;

/// Flush `to`'s backlog, then copy `from` → `to` until `from` is drained or
/// `to` pushes back. False once a connection closed.
fn copy(conns: &mut Conns, from: usize, to: usize, buf: &mut [u8]) -> bool {
    {
        let (s, _, pending) = &mut conns[to];
        while !pending.is_empty() {
            match s.write(pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
    }
    loop {
        let n = match conns[from].0.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        let (s, _, pending) = &mut conns[to];
        let mut at = 0;
        while at < n {
            match s.write(&buf[at..n]) {
                Ok(w) => at += w,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        if at < n {
            pending.extend_from_slice(&buf[at..n]);
            return true;
        }
    }
}

// ---- main ------------------------------------------------------------------

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn report(name: &str, r: &LoadResult) -> f64 {
    let per_msg_us = r.cpu.as_secs_f64() * 1e6 / r.messages.max(1) as f64;
    println!(
        "| {name} | {} | {:.0} | {per_msg_us:.2} | {} | {:.0} | {:.0} | {} |",
        r.messages,
        r.messages as f64 / r.elapsed.as_secs_f64(),
        r.syscalls.map_or("n/a (no perf)".to_string(), |n| format!(
            "{:.2}",
            n as f64 / r.messages.max(1) as f64
        )),
        r.p50.as_secs_f64() * 1e6,
        r.p99.as_secs_f64() * 1e6,
        r.broken
    );
    per_msg_us
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--naive-forwarder") {
        naive_forwarder();
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let sessions: usize = arg(&args, "--sessions", if quick { 300 } else { 1000 });
    let inflight: usize = arg(&args, "--inflight", 2);
    let seconds: f64 = arg(&args, "--seconds", if quick { 3.0 } else { 10.0 });
    let max_requests: u64 = arg(&args, "--max-requests", 5_000_000);
    let fds = set_fd_limit(sessions as u64 * 4 + 1024);
    if !args.iter().any(|a| a == "--only-new-sessions") {
        many_sessions(sessions, inflight, seconds, max_requests, fds);
    }
    new_sessions(&args, quick, fds);
}

fn many_sessions(sessions: usize, inflight: usize, seconds: f64, max_requests: u64, fds: u64) {
    println!(
        "\n## {sessions} paired sessions, {inflight} requests of {MSG} B in flight each, \
         answered by {MSG} B, {seconds} s\n"
    );
    println!(
        "| server | messages forwarded | messages/s | server CPU µs/message | \
         syscalls/message | RTT p50 µs | RTT p99 µs | sessions broken |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let limit = Duration::from_secs_f64(seconds);
    let naive = start_naive(fds);
    let pairs: Vec<_> = (0..sessions).map(|_| pair_naive(naive.addr)).collect();
    let base = small_messages(&naive, pairs, inflight, limit, max_requests);
    let base_us = report("naive forwarder (baseline)", &base);
    drop(naive);
    let relay = start_relay(fds);
    let pairs: Vec<_> = (0..sessions).map(|_| pair_relay(relay.addr)).collect();
    let ours = small_messages(&relay, pairs, inflight, limit, max_requests);
    let ours_us = report("sockrelay-relay", &ours);
    println!(
        "\nrelay CPU per message vs naive forwarder: {:.2}x",
        ours_us / base_us.max(1e-9)
    );
    drop(relay);
}

fn new_sessions(args: &[String], quick: bool, fds: u64) {
    let threads: usize = arg(args, "--threads", 4);
    let per_thread: usize = arg(args, "--per-thread", if quick { 500 } else { 2500 });
    let relay = start_relay(fds);
    let plain = sessions_per_second(&relay, threads, per_thread, None);
    drop(relay);
    println!("\n## New paired sessions per second ({threads} client threads x {per_thread})\n");
    println!("| relay | sessions/s (upgrade + join + pong + first message) | relay CPU per session | vs plain: sessions/s | vs plain: relay CPU |");
    println!("|---|---|---|---|---|");
    let row = |name: &str, r: &Rate| {
        println!(
            "| {name} | {:.0} | {:.1} µs | {:.2} | {:.2} |",
            r.per_second,
            r.relay_cpu.as_secs_f64() * 1e6,
            r.per_second / plain.per_second.max(1e-9),
            r.relay_cpu.as_secs_f64() / plain.relay_cpu.as_secs_f64().max(1e-9),
        )
    };
    row("plain (baseline)", &plain);
    #[cfg(feature = "tls")]
    if !args.iter().any(|a| a == "--no-tls") {
        let setup = TlsSetup::new();
        let relay = start_relay_with(fds, &["--tls-cert", &setup.cert, "--tls-key", &setup.key]);
        let full = sessions_per_second(&relay, threads, per_thread, Some(setup.full.clone()));
        // One full handshake per thread fills the shared client cache; the
        // measured sessions then resume.
        let warm = sessions_per_second(&relay, threads, 1, Some(setup.resuming.clone()));
        let resumed =
            sessions_per_second(&relay, threads, per_thread, Some(setup.resuming.clone()));
        row("TLS 1.3, full handshakes (ECDSA P-256)", &full);
        row("TLS 1.3, resumed (session tickets)", &resumed);
        println!(
            "\nTLS connections resumed: {} of {} with resumption off, {} of {} with it on \
             (warm-up: {} of {})",
            full.resumed,
            full.connections,
            resumed.resumed,
            resumed.connections,
            warm.resumed,
            warm.connections
        );
    }
}
