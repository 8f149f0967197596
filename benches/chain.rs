//! Full chain (dest socket → dest → relay → origin → server socket) against
//! a direct unix-socket connection to the same server, in one run, reported
//! as ratios. The chain runs twice side by side on one relay: with Noise
//! end-to-end encryption (the default) and with `--insecure-plaintext`, so
//! the cost of encryption is measured under the same conditions. A direct
//! TCP loopback connection (TCP_NODELAY) to the same server is shown too:
//! the chain has four TCP hops, so it is the more honest floor.
//!
//! `cargo bench --bench chain [-- OPTIONS]`
//!
//! - `--quick`: shorter phases, 32 MiB bulk, one repeat;
//! - `--repeat N`: run every measurement N times (interleaved) and report
//!   medians (default 3, 1 with `--quick`);
//! - `--only a,b`: phases among `up,down,rtt,conns,par`;
//! - `--e2e`, `--plaintext`: measure only that chain;
//! - `--cipher LIST`: one encrypted chain per cipher in the comma-separated
//!   LIST of `aes`, `chacha`, `auto` (`SOCKRELAY_CIPHER` for origin and
//!   dest), e.g. `--cipher aes,chacha`; default one `auto` chain;
//! - `--base DIR`: also run both chains with `DIR/sockrelay-origin` and
//!   `DIR/sockrelay-dest` (an older build), interleaved: before and after
//!   under the same load; if `DIR/sockrelay-relay` exists, those chains go
//!   through a relay of that build too (a second relay process);
//! - `--floor`: also measure three naive forwarding hops (unix → TCP → TCP →
//!   unix, blocking threads, no WebSocket/mux/crypto): the floor for the
//!   chain's shape on this machine;
//! - `--cpu`: also print, per MB or per operation, the CPU time of relay,
//!   origin and dest, the time they waited for a CPU while runnable, and
//!   how often they were scheduled in (/proc/PID/schedstat).
//!
//! - `--seal`: also time seal + open of 64 KiB messages in this process for
//!   each transport cipher (the cipher's own cost, without the chain).
//!
//! std only; every phase is bounded in time. The end prints a markdown table.

mod common;

use common::{rss_kib, sched, wait_for, Kill, DEST, ORIGIN, RELAY, TOKEN};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A stream to the server: unix or TCP.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(b),
            Stream::Tcp(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(b),
            Stream::Tcp(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Stream {
    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
        };
    }
}

/// Where a measurement connects.
#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Target {
    fn connect(&self) -> Stream {
        let t = Some(Duration::from_secs(30));
        match self {
            Target::Unix(p) => {
                let s = UnixStream::connect(p).expect("connect");
                s.set_read_timeout(t).unwrap();
                s.set_write_timeout(t).unwrap();
                Stream::Unix(s)
            }
            Target::Tcp(a) => {
                let s = TcpStream::connect(a).expect("connect");
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(t).unwrap();
                s.set_write_timeout(t).unwrap();
                Stream::Tcp(s)
            }
        }
    }
}

/// The server behind every path. First byte picks the mode:
/// 'E' echo, 'D' discard then reply with the count, 'G' + u64 LE: send that
/// many bytes then close.
fn serve(mut s: Stream) {
    let mut mode = [0u8; 1];
    if s.read_exact(&mut mode).is_err() {
        return;
    }
    let mut buf = vec![0u8; 256 * 1024];
    match mode[0] {
        b'E' => loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        },
        b'D' => {
            let mut total = 0u64;
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            let _ = s.write_all(&total.to_le_bytes());
        }
        b'G' => {
            let mut n = [0u8; 8];
            if s.read_exact(&mut n).is_err() {
                return;
            }
            let mut left = u64::from_le_bytes(n);
            while left > 0 {
                let k = left.min(buf.len() as u64) as usize;
                if s.write_all(&buf[..k]).is_err() {
                    return;
                }
                left -= k as u64;
            }
        }
        _ => {}
    }
}

fn unix_server(l: UnixListener) {
    for s in l.incoming() {
        let Ok(s) = s else { return };
        std::thread::spawn(move || serve(Stream::Unix(s)));
    }
}

fn tcp_server(l: TcpListener) {
    for s in l.incoming() {
        let Ok(s) = s else { return };
        let _ = s.set_nodelay(true);
        std::thread::spawn(move || serve(Stream::Tcp(s)));
    }
}

/// Copy `from` to `to` until EOF, then pass the EOF on.
fn pump(mut from: Stream, mut to: Stream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    to.shutdown_write();
}

fn try_clone(s: &Stream) -> Stream {
    match s {
        Stream::Unix(s) => Stream::Unix(s.try_clone().unwrap()),
        Stream::Tcp(s) => Stream::Tcp(s.try_clone().unwrap()),
    }
}

/// One hop of the naive forwarder: every connection accepted on `from`
/// gets a connection to `to`, and a thread per direction copies bytes.
fn forward(from: Stream, to: &Target) {
    let up = to.connect();
    let (from2, up2) = (try_clone(&from), try_clone(&up));
    std::thread::spawn(move || pump(from2, up2));
    std::thread::spawn(move || pump(up, from));
}

/// The floor for the chain's shape: unix → fwd → TCP → fwd → TCP → fwd →
/// unix server, three naive forwarders (blocking threads, 64 KiB copies,
/// TCP_NODELAY) with the same hops and wakeups as dest → relay → origin,
/// but no WebSocket, mux or encryption. Returns its unix socket.
fn start_naive_chain(dir: &Path, srv: &Path) -> PathBuf {
    let third = TcpListener::bind("127.0.0.1:0").unwrap();
    let third_addr = third.local_addr().unwrap();
    let srv_t = Target::Unix(srv.to_path_buf());
    std::thread::spawn(move || {
        for s in third.incoming().flatten() {
            let _ = s.set_nodelay(true);
            forward(Stream::Tcp(s), &srv_t);
        }
    });
    let second = TcpListener::bind("127.0.0.1:0").unwrap();
    let second_addr = second.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in second.incoming().flatten() {
            let _ = s.set_nodelay(true);
            forward(Stream::Tcp(s), &Target::Tcp(third_addr));
        }
    });
    let path = dir.join("naive.sock");
    let first = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for s in first.incoming().flatten() {
            forward(Stream::Unix(s), &Target::Tcp(second_addr));
        }
    });
    path
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// Client → server bulk, MB/s.
fn bulk_up(t: &Target, bytes: u64) -> f64 {
    let mut s = t.connect();
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    s.write_all(b"D").unwrap();
    let mut left = bytes;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..k]).unwrap();
        left -= k as u64;
    }
    s.shutdown_write();
    let mut n = [0u8; 8];
    s.read_exact(&mut n).unwrap();
    assert_eq!(u64::from_le_bytes(n), bytes);
    mbps(bytes, start.elapsed())
}

/// Server → client bulk, MB/s.
fn bulk_down(t: &Target, bytes: u64) -> f64 {
    let mut s = t.connect();
    let start = Instant::now();
    s.write_all(b"G").unwrap();
    s.write_all(&bytes.to_le_bytes()).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < bytes {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "early EOF");
        got += n as u64;
    }
    mbps(bytes, start.elapsed())
}

/// 64-byte round trips: (p50, p99) in µs.
fn rtt(t: &Target, n: usize) -> (f64, f64) {
    let mut s = t.connect();
    s.write_all(b"E").unwrap();
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    // Warm up (first records, buffers, caches).
    for _ in 0..20 {
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
        v.push(start.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[n / 2], v[n * 99 / 100])
}

/// Connections per second, each doing one 1-byte echo.
fn conns_per_sec(t: &Target, dur: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        let mut s = t.connect();
        s.write_all(b"Ex").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// 64 channels doing 64-byte round trips in parallel: total per second.
fn parallel_rtts(t: &Target, dur: Duration) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(std::sync::Barrier::new(65));
    let ths: Vec<_> = (0..64)
        .map(|_| {
            let (t, count, stop, ready) = (t.clone(), count.clone(), stop.clone(), ready.clone());
            std::thread::spawn(move || {
                let mut s = t.connect();
                s.write_all(b"E").unwrap();
                let msg = [1u8; 64];
                let mut back = [0u8; 64];
                s.write_all(&msg).unwrap();
                s.read_exact(&mut back).unwrap();
                ready.wait();
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&msg).unwrap();
                    s.read_exact(&mut back).unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    ready.wait();
    let start = Instant::now();
    let c0 = count.load(Ordering::Relaxed);
    std::thread::sleep(dur);
    let c1 = count.load(Ordering::Relaxed);
    let el = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    for th in ths {
        th.join().unwrap();
    }
    (c1 - c0) as f64 / el.as_secs_f64()
}

/// One origin + dest pair on a relay.
struct Chain {
    origin: Kill,
    dest: Kill,
    sock: PathBuf,
    relay_pid: u32,
}

fn start_chain(
    dir: &Path,
    port: u16,
    srv: &Path,
    plaintext: bool,
    bins: (&str, &str),
    label: &str,
    env: &[(&str, &str)],
) -> Chain {
    let extra: &[&str] = if plaintext {
        &["--insecure-plaintext"]
    } else {
        &[]
    };
    let p = port.to_string();
    let sock = dir.join(format!("{label}.sock"));
    let mut origin = Kill(
        Command::new(bins.0)
            .args(extra)
            .args(["-q", "127.0.0.1", &p, srv.to_str().unwrap()])
            .env("SOCKRELAY_TOKEN", TOKEN)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(origin.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let session = line
        .strip_prefix("SOCKRELAY_SESSION=")
        .and_then(|r| r.split(';').next())
        .expect("session line")
        .to_string();
    let dest = Kill(
        Command::new(bins.1)
            .args(extra)
            .args(["-q", "127.0.0.1", &p, &session, sock.to_str().unwrap()])
            .env("SOCKRELAY_TOKEN", TOKEN)
            .envs(env.iter().copied())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Ready when a round trip works.
    assert!(wait_for(Duration::from_secs(15), || {
        UnixStream::connect(&sock).is_ok_and(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 1];
            s.write_all(b"Ex").is_ok() && s.read_exact(&mut b).is_ok()
        })
    }));
    Chain {
        origin,
        dest,
        sock,
        relay_pid: 0,
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Size of `path` once stripped (the release profile strips; benches keep
/// symbols), or its plain size when `strip` is missing.
fn stripped_size(path: &str, dir: &Path) -> (u64, bool) {
    let tmp = dir.join("stripped");
    let ok = Command::new("strip")
        .args(["-o", tmp.to_str().unwrap(), path])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let n = std::fs::metadata(&tmp).map_or(0, |m| m.len());
        let _ = std::fs::remove_file(&tmp);
        (n, true)
    } else {
        (std::fs::metadata(path).map_or(0, |m| m.len()), false)
    }
}

/// Seal + open of 64 KiB messages in one process for `pref`, for about
/// `dur`: (cipher name, CPU µs of this thread per MB for seal + open;
/// CPU time, not wall time, so that other jobs on the machine matter less).
#[cfg(feature = "e2e")]
fn seal_open(pref: sockrelay::secure::CipherPref, dur: Duration) -> (String, f64) {
    use sockrelay::secure::{Noise, Side, MAX_PLAINTEXT};
    let s = uuid::Uuid::from_bytes([9; 16]);
    let mut d = Noise::with_cipher(Side::Dest, TOKEN.as_bytes(), &s, pref).unwrap();
    let mut o = Noise::with_cipher(Side::Origin, TOKEN.as_bytes(), &s, pref).unwrap();
    let (mut m1, mut m2) = (Vec::new(), Vec::new());
    d.handshake_out(&mut m1).unwrap();
    o.handshake_in(&m1).unwrap();
    o.handshake_out(&mut m2).unwrap();
    d.handshake_in(&m2).unwrap();
    let name = d.cipher().map_or("?", |c| c.name()).to_string();
    let plain = vec![0x5au8; MAX_PLAINTEXT];
    let (mut c, mut p) = (Vec::with_capacity(1 << 17), Vec::with_capacity(1 << 17));
    let cpu_now = || {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    };
    let start = Instant::now();
    let cpu0 = cpu_now();
    let mut bytes = 0u64;
    while start.elapsed() < dur {
        for _ in 0..16 {
            c.clear();
            p.clear();
            d.seal(&plain, &mut c).unwrap();
            o.open(&c, &mut p).unwrap();
            bytes += plain.len() as u64;
        }
    }
    let secs = cpu_now() - cpu0;
    (name, secs * 1e6 / (bytes as f64 / 1e6))
}

const PHASES: [&str; 5] = ["up", "down", "rtt", "conns", "par"];

fn main() {
    // cargo passes `--bench`; it is not ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = has("--quick");
    let repeat: usize = value("--repeat")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 })
        .max(1);
    let only: Vec<String> = value("--only").map_or(PHASES.map(String::from).to_vec(), |v| {
        v.split(',').map(String::from).collect()
    });
    let want = |p: &str| only.iter().any(|o| o == p);
    let (want_e2e, want_plain) = match (has("--e2e"), has("--plaintext")) {
        (false, false) => (true, true),
        x => x,
    };
    let bulk: u64 = if quick { 32 << 20 } else { 256 << 20 };
    let phase = Duration::from_millis(if quick { 500 } else { 2000 });
    let rtts = if quick { 1000 } else { 5000 };

    #[cfg(feature = "e2e")]
    if has("--seal") {
        use sockrelay::secure::CipherPref;
        for pref in [CipherPref::Aes, CipherPref::ChaCha] {
            let mut us = Vec::new();
            let mut name = String::new();
            for _ in 0..repeat {
                let (n, v) = seal_open(pref, phase / 2);
                name = n;
                us.push(v);
            }
            let m = median(&mut us);
            println!(
                "seal + open, 64 KiB messages, {name}: {m:.0} CPU us per MB ({:.0} MB/s of CPU)",
                1e6 / m
            );
        }
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("sr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let srv = dir.join("srv.sock");
    let l = UnixListener::bind(&srv).unwrap();
    std::thread::spawn(move || unix_server(l));
    let tl = TcpListener::bind("127.0.0.1:0").unwrap();
    let taddr = tl.local_addr().unwrap();
    std::thread::spawn(move || tcp_server(tl));

    // Extra relay options for experiments, e.g.
    // SOCKRELAY_BENCH_RELAY_ARGS="--buffer 256K" (as in benches/relay.rs).
    let relay_extra = std::env::var("SOCKRELAY_BENCH_RELAY_ARGS").unwrap_or_default();
    let start_relay = |bin: &str| {
        let relay = Kill(
            Command::new(bin)
                .args(["-p", "0", "-b", "127.0.0.1", "-q"])
                .args(relay_extra.split_whitespace())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // -q hides "listening on": find the port by asking the kernel instead.
        let mut port = None;
        wait_for(Duration::from_secs(10), || {
            port = listening_port(relay.0.id());
            port.is_some()
        });
        (relay, port.expect("relay port"))
    };
    let (relay, port) = start_relay(RELAY);
    let ours = (ORIGIN, DEST);
    let mut chains: Vec<(String, Chain)> = Vec::new();
    let ciphers: Vec<String> =
        value("--cipher").map_or(Vec::new(), |v| v.split(',').map(String::from).collect());
    for c in &ciphers {
        assert!(
            ["aes", "chacha", "auto"].contains(&c.as_str()),
            "--cipher takes aes, chacha, auto"
        );
    }
    if want_plain {
        chains.push((
            "chain plain".into(),
            start_chain(&dir, port, &srv, true, ours, "plain", &[]),
        ));
    }
    if want_e2e && ciphers.is_empty() {
        chains.push((
            "chain e2e".into(),
            start_chain(&dir, port, &srv, false, ours, "e2e", &[]),
        ));
    }
    for c in ciphers.iter().filter(|_| want_e2e) {
        chains.push((
            format!("e2e {c}"),
            start_chain(
                &dir,
                port,
                &srv,
                false,
                ours,
                &format!("e2e-{c}"),
                &[("SOCKRELAY_CIPHER", c.as_str())],
            ),
        ));
    }
    // --base DIR: the same chains with origin and dest binaries from DIR (an
    // older build), measured interleaved with ours: before/after under the
    // same load.
    let base = value("--base");
    let mut base_relay = None;
    if let Some(b) = &base {
        let r = format!("{b}/sockrelay-relay");
        let port = if Path::new(&r).exists() {
            let (relay, port) = start_relay(&r);
            base_relay = Some(relay);
            port
        } else {
            port
        };
        let o = format!("{b}/sockrelay-origin");
        let d = format!("{b}/sockrelay-dest");
        let bins: (&str, &str) = (Box::leak(o.into_boxed_str()), Box::leak(d.into_boxed_str()));
        // 0: the shared relay (filled in below).
        let relay_pid = base_relay.as_ref().map_or(0, |r: &Kill| r.0.id());
        let with_pid = |mut c: Chain| {
            c.relay_pid = relay_pid;
            c
        };
        if want_e2e {
            chains.push((
                "base e2e".into(),
                with_pid(start_chain(&dir, port, &srv, false, bins, "be2e", &[])),
            ));
        }
        if want_plain {
            chains.push((
                "base plain".into(),
                with_pid(start_chain(&dir, port, &srv, true, bins, "bplain", &[])),
            ));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let idle: Vec<(u64, u64)> = chains
        .iter()
        .map(|(_, c)| (rss_kib(c.origin.0.id()), rss_kib(c.dest.0.id())))
        .collect();

    // name, target, pids of relay/origin/dest for chains
    let mut targets: Vec<(&str, Target, Option<[u32; 3]>)> = vec![
        ("direct unix", Target::Unix(srv.clone()), None),
        ("direct tcp", Target::Tcp(taddr), None),
    ];
    for (_, c) in chains.iter_mut() {
        if c.relay_pid == 0 {
            c.relay_pid = relay.0.id();
        }
    }
    for (name, c) in &chains {
        let pids = Some([c.relay_pid, c.origin.0.id(), c.dest.0.id()]);
        targets.push((name.as_str(), Target::Unix(c.sock.clone()), pids));
    }
    if has("--floor") {
        let naive = start_naive_chain(&dir, &srv);
        targets.push(("naive 3-hop", Target::Unix(naive), None));
    }
    let show_cpu = has("--cpu");
    // With --cpu: CPU time of relay/origin/dest and their context switches
    // during `f`, per `unit` (MB or operation).
    let cpu = |p: &Option<[u32; 3]>, what: &str, f: &mut dyn FnMut() -> (f64, f64)| -> f64 {
        let before = p.map(|p| p.map(sched));
        let (v, units) = f();
        if let (true, Some(p), Some(b)) = (show_cpu, p, before) {
            let mut parts = Vec::new();
            for (i, name) in ["relay", "origin", "dest"].iter().enumerate() {
                let a = sched(p[i]);
                parts.push(format!(
                    "{name} {:.1}/{:.1}us {:.2}x",
                    (a[0] - b[i][0]) as f64 / 1e3 / units,
                    (a[1] - b[i][1]) as f64 / 1e3 / units,
                    (a[2] - b[i][2]) as f64 / units
                ));
            }
            println!("    {what}: cpu/runqueue-wait, runs: {}", parts.join(", "));
        }
        v
    };
    // metric name, higher-is-better, values[target][repeat]
    type Metric = (&'static str, bool, Vec<Vec<f64>>);
    let mut metrics: Vec<Metric> = Vec::new();
    let mut add = |name: &'static str, hib: bool, ti: usize, v: f64| {
        let i = match metrics.iter().position(|m| m.0 == name) {
            Some(i) => i,
            None => {
                metrics.push((name, hib, vec![Vec::new(); 16]));
                metrics.len() - 1
            }
        };
        metrics[i].2[ti].push(v);
    };
    println!(
        "sockrelay chain bench: bulk {} MiB, phases {:?}, {} repeat(s)",
        bulk >> 20,
        phase,
        repeat
    );
    for r in 0..repeat {
        for (ti, (name, t, p)) in targets.iter().enumerate() {
            let mut line = format!("[{}/{}] {:<12}", r + 1, repeat, name);
            let mb = bulk as f64 / 1e6;
            // CPU µs per MB that origin + dest spent (chains only): what
            // encryption adds, less sensitive to a busy machine than MB/s.
            let before = || p.map(|p| p.map(sched));
            let clients_us = |b: Option<[[u64; 3]; 3]>| {
                p.zip(b).map(|(p, b)| {
                    (1..3)
                        .map(|i| (sched(p[i])[0] - b[i][0]) as f64 / 1e3)
                        .sum::<f64>()
                        / mb
                })
            };
            if want("up") {
                let b = before();
                let v = cpu(p, "up (per MB)", &mut || (bulk_up(t, bulk), mb));
                add("bulk client->server (MB/s)", true, ti, v);
                line += &format!(" up {v:.0}");
                if let Some(us) = clients_us(b) {
                    add("origin+dest CPU, up (us/MB)", false, ti, us);
                    line += &format!(" ({us:.0} us/MB)");
                }
            }
            if want("down") {
                let b = before();
                let v = cpu(p, "down (per MB)", &mut || (bulk_down(t, bulk), mb));
                add("bulk server->client (MB/s)", true, ti, v);
                line += &format!(" down {v:.0}");
                if let Some(us) = clients_us(b) {
                    add("origin+dest CPU, down (us/MB)", false, ti, us);
                    line += &format!(" ({us:.0} us/MB)");
                }
            }
            if want("rtt") {
                let mut p99 = 0.0;
                let p50 = cpu(p, "rtt (per round trip)", &mut || {
                    let (a, b) = rtt(t, rtts);
                    p99 = b;
                    (a, rtts as f64)
                });
                add("64-byte RTT p50 (us)", false, ti, p50);
                add("64-byte RTT p99 (us)", false, ti, p99);
                line += &format!(" rtt {p50:.1}/{p99:.1}us");
            }
            if want("conns") {
                let mut n = 0.0;
                let v = cpu(p, "conns (per connection)", &mut || {
                    let v = conns_per_sec(t, phase);
                    n = v * phase.as_secs_f64();
                    (v, n.max(1.0))
                });
                add("connections/s (1-byte echo)", true, ti, v);
                line += &format!(" conn/s {v:.0}");
            }
            if want("par") {
                let v = cpu(p, "par (per round trip)", &mut || {
                    let v = parallel_rtts(t, phase);
                    (v, (v * phase.as_secs_f64()).max(1.0))
                });
                add("64 channels, round trips/s", true, ti, v);
                line += &format!(" par {v:.0}");
            }
            println!("{line}");
        }
    }
    let after: Vec<(u64, u64)> = chains
        .iter()
        .map(|(_, c)| (rss_kib(c.origin.0.id()), rss_kib(c.dest.0.id())))
        .collect();

    // Medians, ratio = chain / direct unix.
    let med: Vec<(&str, Vec<f64>)> = metrics
        .iter_mut()
        .map(|(name, _, vals)| {
            (
                *name,
                vals.iter_mut()
                    .take(targets.len())
                    .map(|v| median(v))
                    .collect(),
            )
        })
        .collect();
    println!();
    print!("{:<30}", "median");
    for (name, _, _) in &targets {
        print!(" {name:>12}");
    }
    for (name, _, _) in targets.iter().skip(2) {
        print!(" {:>12}", format!("{name} ratio"));
    }
    println!();
    for (name, v) in &med {
        print!("{name:<30}");
        for x in v {
            print!(" {x:>12.1}");
        }
        for x in v.iter().skip(2) {
            print!(" {:>12.3}", x / v[0]);
        }
        println!();
    }

    let cmd = format!(
        "cargo bench --bench chain{}",
        if args.is_empty() {
            String::new()
        } else {
            format!(" -- {}", args.join(" "))
        }
    );
    println!();
    let env = if relay_extra.is_empty() {
        String::new()
    } else {
        format!("SOCKRELAY_BENCH_RELAY_ARGS=\"{relay_extra}\" ")
    };
    println!("Markdown (`{env}{cmd}`; medians of {repeat}; ratio = chain / direct unix socket):");
    println!();
    let cols: Vec<&str> = targets.iter().skip(2).map(|t| t.0).collect();
    print!("| metric | direct unix | direct TCP |");
    for c in &cols {
        print!(" {c} | ratio |");
    }
    println!();
    print!("|---|---|---|");
    for _ in &cols {
        print!("---|---|");
    }
    println!();
    for (name, v) in &med {
        let fmt = |x: f64| {
            if x.is_nan() {
                String::new()
            } else if x >= 100.0 {
                format!("{x:.0}")
            } else {
                format!("{x:.1}")
            }
        };
        print!("| {name} | {} | {} |", fmt(v[0]), fmt(v[1]));
        for x in v.iter().skip(2) {
            let ratio = x / v[0];
            if ratio.is_nan() {
                print!(" {} | |", fmt(*x));
            } else {
                print!(" {} | {:.2} |", fmt(*x), ratio);
            }
        }
        println!();
    }
    // Per chain column: RSS and binary sizes (empty under other columns).
    let size_kib = |p: &str| {
        let (sz, stripped) = stripped_size(p, &dir);
        format!("{}{}", sz / 1024, if stripped { "" } else { "?" })
    };
    let base_bins = base.as_ref().map(|b| {
        (
            size_kib(&format!("{b}/sockrelay-origin")),
            size_kib(&format!("{b}/sockrelay-dest")),
        )
    });
    let our_bins = (size_kib(ORIGIN), size_kib(DEST));
    let per_chain = |title: &str, cell: &dyn Fn(usize, &str) -> String| {
        print!("| {title} | | |");
        for c in &cols {
            match chains.iter().position(|(n, _)| n == c) {
                Some(i) => print!(" {} | |", cell(i, c)),
                None => print!(" | |"),
            }
        }
        println!();
    };
    per_chain("idle RSS origin / dest (KiB)", &|i, _| {
        format!("{} / {}", idle[i].0, idle[i].1)
    });
    per_chain("RSS after the load, origin / dest (KiB)", &|i, _| {
        format!("{} / {}", after[i].0, after[i].1)
    });
    per_chain("stripped binaries origin / dest (KiB)", &|_, c| {
        let (o, d) = match (&base_bins, c.starts_with("base")) {
            (Some(b), true) => b.clone(),
            _ => our_bins.clone(),
        };
        format!("{o} / {d}")
    });
    println!("| stripped relay binary (KiB) | {} | |", size_kib(RELAY));
    // Against the floor (naive 3-hop) and, for encrypted chains, what
    // encryption costs against the plaintext chain of the same run.
    let floor = targets.iter().position(|t| t.0 == "naive 3-hop");
    let plain = targets.iter().position(|t| t.0 == "chain plain");
    if let Some(f) = floor {
        println!();
        print!("| metric (ratio to naive 3-hop) |");
        for t in targets.iter().skip(2) {
            print!(" {} |", t.0);
        }
        if plain.is_some() {
            for t in targets
                .iter()
                .skip(2)
                .filter(|t| t.0.starts_with("e2e") || t.0 == "chain e2e")
            {
                print!(" {} vs plain |", t.0);
            }
        }
        println!();
        let n = targets.len() - 2
            + if plain.is_some() {
                targets
                    .iter()
                    .filter(|t| t.0.starts_with("e2e") || t.0 == "chain e2e")
                    .count()
            } else {
                0
            };
        println!("|---|{}", "---|".repeat(n));
        for (name, v) in &med {
            print!("| {name} |");
            for x in v.iter().skip(2) {
                let r = x / v[f];
                if r.is_nan() {
                    print!(" |");
                } else {
                    print!(" {r:.2} |");
                }
            }
            if let Some(pi) = plain {
                for (ti, _) in targets
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.0.starts_with("e2e") || t.0 == "chain e2e")
                {
                    print!(" {:.2} |", v[ti] / v[pi]);
                }
            }
            println!();
        }
    }
    drop(chains);
    drop(relay);
    drop(base_relay);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The TCP port process `pid` listens on, from /proc/net/tcp + its fds.
fn listening_port(pid: u32) -> Option<u16> {
    let mut inodes = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().to_string();
            if let Some(i) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.push(i.to_string());
            }
        }
    }
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    for line in tcp.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // state 0A = LISTEN
        if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
            let port = f[1].rsplit(':').next()?;
            return u16::from_str_radix(port, 16).ok();
        }
    }
    None
}
