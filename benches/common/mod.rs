//! The process harness the benchmarks share (`mod common;`): the built
//! binaries, processes killed on drop, a relay's listen address read from
//! its log, file-descriptor limits, /proc readings, and a raw WebSocket
//! client that upgrades and pairs sessions. Each bench file keeps only
//! what it measures. Loopback only; every wait is bounded.
#![allow(dead_code)]

use sockrelay::ws::frame::{encode_frame, OpCode};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RELAY: &str = env!("CARGO_BIN_EXE_sockrelay-relay");
pub const ORIGIN: &str = env!("CARGO_BIN_EXE_sockrelay-origin");
pub const DEST: &str = env!("CARGO_BIN_EXE_sockrelay-dest");
pub const TOKEN: &str = "bench-token-0123456789abcdef";

// ---- processes -------------------------------------------------------------

/// A child process killed on drop.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server process and the address it said it listens on; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawn `prog args…` with at most `fds` file descriptors, read "listening
/// on ADDR" from its stderr, then drain the rest.
pub fn spawn_server(prog: &str, args: &[&str], fds: u64) -> Server {
    let mut cmd = Command::new(prog);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: only async-signal-safe setrlimit between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: fds,
                rlim_max: fds,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn server");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("server exited").expect("server stderr");
        if let Some(i) = line.find("listening on ") {
            break line[i + 13..].trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Server {
        child,
        addr: addr.parse().expect("listen address"),
    }
}

/// Poll `f` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

// ---- limits and /proc --------------------------------------------------------

/// Set this process's file-descriptor limit (soft and hard) to `n`.
pub fn raise_fd_limit(n: u64) -> bool {
    // SAFETY: plain struct handed to setrlimit, which only reads it.
    unsafe {
        let lim = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
    }
}

pub fn hard_fd_limit() -> u64 {
    // SAFETY: getrlimit fully writes the struct it is given.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_max
    }
}

/// Raise the file-descriptor limit to `n`, or to the hard limit when that
/// is lower; the limit now in force.
pub fn set_fd_limit(n: u64) -> u64 {
    // SAFETY: plain structs handed to getrlimit (fully writes it) and
    // setrlimit (only reads it).
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let want = if lim.rlim_max < n { lim.rlim_max } else { n };
        let set = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &set) == 0 {
            return n;
        }
        lim.rlim_cur = want;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        want
    }
}

/// Resident set size of `pid`, KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
        .unwrap_or(0)
}

/// From /proc/PID/schedstat: nanoseconds on a CPU, nanoseconds waiting
/// for one (runnable but not running), and times scheduled in.
pub fn sched(pid: u32) -> [u64; 3] {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).unwrap_or_default();
    let mut f = s.split_whitespace().map(|x| x.parse().unwrap_or(0));
    [
        f.next().unwrap_or(0),
        f.next().unwrap_or(0),
        f.next().unwrap_or(0),
    ]
}

// ---- a raw WebSocket client ----------------------------------------------------

/// One masked client frame.
pub fn masked(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    encode_frame(&mut out, true, op, Some([0x11, 0x22, 0x33, 0x44]), payload);
    out
}

pub fn read_head<S: Read>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("read 101");
        head.push(b[0]);
        assert!(head.len() < 8192, "oversized response head");
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Read one small unmasked frame (the relay's pings): opcode and payload.
pub fn read_small_frame<S: Read>(s: &mut S) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("frame header");
    let mut p = vec![0u8; (h[1] & 0x7f) as usize];
    s.read_exact(&mut p).expect("frame payload");
    (h[0] & 0x0f, p)
}

/// Upgrade to `path`, read the 101 and the relay's first ping ("session"
/// or "peer-joined"); the stream and the session id.
pub fn upgrade(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).expect("connect relay");
    s.set_nodelay(true).expect("nodelay");
    let id = upgrade_on(&mut s, path);
    (s, id)
}

/// The upgrade of [`upgrade`] on a stream already open (e.g. TLS over
/// TCP): the session id.
pub fn upgrade_on<S: Read + Write>(s: &mut S, path: &str) -> String {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sockrelay-Admission: bench\r\n\r\n"
    )
    .expect("send upgrade");
    s.flush().expect("send upgrade");
    let head = read_head(s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("Sockrelay-Session: "))
        .unwrap_or("")
        .to_string();
    let _ = read_small_frame(s);
    id
}

/// One paired relay session whose origin has answered peer-joined:
/// (origin, dest).
pub fn pair_relay(addr: SocketAddr) -> (TcpStream, TcpStream) {
    pair_on(|| {
        let s = TcpStream::connect(addr).expect("connect relay");
        s.set_nodelay(true).expect("nodelay");
        s
    })
}

/// [`pair_relay`] over streams that `connect` opens (plain or TLS).
pub fn pair_on<S: Read + Write>(mut connect: impl FnMut() -> S) -> (S, S) {
    let mut origin = connect();
    let id = upgrade_on(&mut origin, "/origin");
    let mut dest = connect();
    upgrade_on(&mut dest, &format!("/dest?id={id}"));
    let (_, joined) = read_small_frame(&mut origin);
    origin
        .write_all(&masked(OpCode::Pong, &joined))
        .expect("pong");
    origin.flush().expect("pong");
    (origin, dest)
}
