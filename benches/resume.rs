//! Channel resume (issue 10), measured with the real binaries on loopback:
//!
//! 1. **Restart to bytes**: one session whose channel does a request/answer
//!    every 5 ms; the relay is SIGKILLed (then, in another round,
//!    SIGTERMed) and a new one started on the same port at once. Reports
//!    the gap in answers, the relay's own start-up (spawn to "listening"),
//!    and the difference: what resuming costs on top of the restart.
//! 2. **Reconnect storm**: S sessions (origin and dest processes) on one
//!    relay, which is SIGKILLed and restarted; reports how long until every
//!    session is paired again (`sockrelay_sessions_paired` in /metrics)
//!    and how the re-pairings spread over time (the clients' full-jitter
//!    backoff).
//!
//! 3. **Retained memory under load**: 16 channels each write 2 MiB towards
//!    an origin-side server that never reads, so every window fills; the
//!    origin's and the dest's RSS growth per channel, for this build and,
//!    with `--base DIR`, for `DIR/sockrelay-origin` and `DIR/sockrelay-dest`
//!    (a build without retention) in the same run.
//!
//! `cargo bench --bench resume [-- --rounds N --sessions S --base DIR]`
//! (defaults 5 and 200). Loopback only; every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::{rss_kib, wait_for, Kill as Proc, DEST, ORIGIN, RELAY, TOKEN};

fn signal(p: &Proc, sig: i32) {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(p.0.id() as i32, sig);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Start a relay on `port`; returns it and the time from spawn to
/// "listening on".
fn start_relay(port: u16) -> (Proc, Duration) {
    let t = Instant::now();
    let mut child = Command::new(RELAY)
        .args([
            "-p",
            &port.to_string(),
            "-b",
            "127.0.0.1",
            "--max-connections",
            "4000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("listening on") {
                let _ = tx.send(());
                sent = true;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("relay listening");
    (Proc(child), t.elapsed())
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sr-bench-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Origin and dest for one session (`-q`: quiet); the dest's socket path.
fn start_pair(dir: &Path, port: u16, n: usize, server: &Path) -> (Proc, Proc, PathBuf) {
    start_pair_with((ORIGIN, DEST), dir, port, n, server)
}

fn start_pair_with(
    (origin_bin, dest_bin): (&str, &str),
    dir: &Path,
    port: u16,
    n: usize,
    server: &Path,
) -> (Proc, Proc, PathBuf) {
    let p = port.to_string();
    let mut origin = Command::new(origin_bin)
        .args(["-q", "127.0.0.1", &p])
        .arg(server)
        .env("SOCKRELAY_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn origin");
    let stdout = origin.stdout.take().expect("piped");
    let origin = Proc(origin);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("origin prints its session");
    let session = line
        .strip_prefix("SOCKRELAY_SESSION=")
        .and_then(|r| r.split(';').next())
        .expect("SOCKRELAY_SESSION=")
        .to_string();
    let sock = dir.join(format!("d{n}.sock"));
    let dest = Command::new(dest_bin)
        .args(["-q", "127.0.0.1", &p, &session])
        .arg(&sock)
        .env("SOCKRELAY_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dest");
    (origin, Proc(dest), sock)
}

/// An echo server on a unix socket (one thread per connection).
fn echo_server(path: &Path) {
    let l = UnixListener::bind(path).expect("bind echo");
    thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// `sockrelay_sessions_paired` from the relay's /metrics.
fn paired(port: u16) -> Option<u64> {
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("sockrelay_sessions_paired "))
        .and_then(|v| v.trim().parse().ok())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// 1. The gap in a 5 ms request/answer loop across a relay restart.
fn restart_to_bytes(rounds: usize) {
    let dir = temp_dir();
    let port = free_port();
    let (mut relay, _) = start_relay(port);
    let server = dir.join("echo.sock");
    echo_server(&server);
    let (_origin, _dest, sock) = start_pair(&dir, port, 0, &server);
    assert!(
        wait_for(Duration::from_secs(15), || UnixStream::connect(&sock)
            .is_ok()),
        "dest socket"
    );
    let mut conn = UnixStream::connect(&sock).expect("connect dest");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // The answers' arrival times, from a thread that keeps asking.
    let last = Arc::new(Mutex::new(Instant::now()));
    let gaps = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let asker = {
        let (last, gaps, stop, answered) =
            (last.clone(), gaps.clone(), stop.clone(), answered.clone());
        thread::spawn(move || {
            let mut b = [0u8; 8];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if conn.write_all(&n.to_be_bytes()).is_err() || conn.read_exact(&mut b).is_err() {
                    return Err(format!("request {n} failed"));
                }
                if u64::from_be_bytes(b) != n {
                    return Err(format!("request {n} got a wrong answer"));
                }
                let now = Instant::now();
                let mut l = last.lock().expect("lock");
                gaps.lock().expect("lock").push(now - *l);
                *l = now;
                answered.fetch_add(1, Ordering::Relaxed);
                drop(l);
                thread::sleep(Duration::from_millis(5));
            }
            Ok(n)
        })
    };
    println!("\n### Relay restart to bytes flowing on a resumed channel\n");
    println!("| signal | answer gap p50 | gap max | relay start-up p50 | resume cost (gap − kill→listening) p50 |");
    println!("|---|---|---|---|---|");
    for (name, sig) in [("SIGKILL", libc::SIGKILL), ("SIGTERM", libc::SIGTERM)] {
        let (mut gap_ms, mut startup_ms, mut cost_ms) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            thread::sleep(Duration::from_millis(300));
            gaps.lock().expect("lock").clear();
            let t0 = Instant::now();
            signal(&relay, sig);
            let _ = relay.0.wait();
            let down = t0.elapsed();
            let (r, startup) = start_relay(port);
            relay = r;
            let up_at = t0.elapsed();
            let before = answered.load(Ordering::Relaxed);
            if !wait_for(Duration::from_secs(30), || {
                answered.load(Ordering::Relaxed) > before + 5
            }) {
                println!("| {name} | no answers after the restart | | | |");
                break;
            }
            let gap = gaps
                .lock()
                .expect("lock")
                .iter()
                .copied()
                .max()
                .unwrap_or_default();
            gap_ms.push(gap.as_secs_f64() * 1e3);
            startup_ms.push(startup.as_secs_f64() * 1e3);
            cost_ms.push((gap.as_secs_f64() - up_at.as_secs_f64().max(down.as_secs_f64())) * 1e3);
        }
        if gap_ms.is_empty() {
            continue;
        }
        let max = gap_ms.iter().copied().fold(0.0, f64::max);
        println!(
            "| {name} | {:.0} ms | {:.0} ms | {:.1} ms | {:.0} ms |",
            median(&mut gap_ms),
            max,
            median(&mut startup_ms),
            median(&mut cost_ms)
        );
    }
    stop.store(true, Ordering::Relaxed);
    match asker.join() {
        Ok(Ok(n)) => println!(
            "\n{n} requests, every answer matched its request ({rounds} rounds per signal)."
        ),
        Ok(Err(e)) => println!("\nFAILED: {e}"),
        Err(_) => println!("\nFAILED: the asking thread panicked"),
    }
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
}

/// 2. S sessions, one relay SIGKILL: time until all are paired again.
fn reconnect_storm(sessions: usize) {
    let dir = temp_dir();
    let port = free_port();
    let (relay, _) = start_relay(port);
    let server = dir.join("echo.sock");
    echo_server(&server);
    let t = Instant::now();
    let mut pairs = Vec::new();
    for n in 0..sessions {
        pairs.push(start_pair(&dir, port, n, &server));
    }
    let all = |port| paired(port) == Some(sessions as u64);
    if !wait_for(Duration::from_secs(120), || all(port)) {
        println!(
            "\nstorm: only {:?} of {sessions} sessions paired at the start",
            paired(port)
        );
        return;
    }
    println!(
        "\n### Reconnect storm: {sessions} sessions, relay SIGKILLed and restarted\n\n\
         {sessions} sessions ({} processes) paired in {:.1} s.",
        sessions * 2,
        t.elapsed().as_secs_f64()
    );
    signal(&relay, libc::SIGKILL);
    drop(relay);
    let t0 = Instant::now();
    let (_relay, startup) = start_relay(port);
    let mut curve = Vec::new();
    let end = t0 + Duration::from_secs(120);
    let mut done = None;
    while Instant::now() < end {
        let n = paired(port).unwrap_or(0);
        curve.push((t0.elapsed(), n));
        if n == sessions as u64 {
            done = Some(t0.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    println!(
        "Relay start-up {:.1} ms; every session paired again after {}.\n",
        startup.as_secs_f64() * 1e3,
        done.map_or("(not within 120 s)".to_string(), |d| format!(
            "{:.2} s",
            d.as_secs_f64()
        ))
    );
    println!("| after the kill | sessions paired |");
    println!("|---|---|");
    let mut next = Duration::ZERO;
    for (at, n) in &curve {
        if *at >= next {
            println!("| {:.2} s | {n} |", at.as_secs_f64());
            next = *at + Duration::from_millis(250);
        }
    }
    if let Some((at, n)) = curve.last() {
        println!("| {:.2} s | {n} |", at.as_secs_f64());
    }
    drop(pairs);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A unix server that accepts and never reads (its connections are held
/// until the process ends).
fn stalled_server(path: &Path) {
    let l = UnixListener::bind(path).expect("bind stalled server");
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().map_while(Result::ok) {
            held.push(s);
        }
    });
}

/// 3. RSS growth per channel with every window full.
fn retained_memory(base: Option<&str>) {
    const CHANNELS: usize = 16;
    let dir = temp_dir();
    let port = free_port();
    let (_relay, _) = start_relay(port);
    let server = dir.join("stalled.sock");
    stalled_server(&server);
    let mut builds = vec![("this build", ORIGIN.to_string(), DEST.to_string())];
    if let Some(b) = base {
        builds.push((
            "base",
            format!("{b}/sockrelay-origin"),
            format!("{b}/sockrelay-dest"),
        ));
    }
    println!("\n### Retained memory: {CHANNELS} channels, every window full\n");
    println!("| build | origin RSS idle → loaded (KiB) | dest RSS idle → loaded (KiB) | per channel, origin + dest (KiB) |");
    println!("|---|---|---|---|");
    for (i, (name, o, d)) in builds.iter().enumerate() {
        let (origin, dest, sock) = start_pair_with((o, d), &dir, port, 1000 + i, &server);
        if !wait_for(Duration::from_secs(15), || {
            UnixStream::connect(&sock).is_ok()
        }) {
            println!("| {name} | dest socket never appeared | | |");
            continue;
        }
        thread::sleep(Duration::from_millis(300));
        let idle = (rss_kib(origin.0.id()), rss_kib(dest.0.id()));
        let writers: Vec<_> = (0..CHANNELS)
            .map(|_| {
                let sock = sock.clone();
                thread::spawn(move || {
                    let Ok(mut s) = UnixStream::connect(&sock) else {
                        return;
                    };
                    let _ = s.set_write_timeout(Some(Duration::from_secs(3)));
                    let chunk = vec![0x5au8; 64 * 1024];
                    for _ in 0..32 {
                        if s.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                    // Hold the connection until the measurement is done.
                    thread::sleep(Duration::from_secs(2));
                })
            })
            .collect();
        thread::sleep(Duration::from_secs(4));
        let loaded = (rss_kib(origin.0.id()), rss_kib(dest.0.id()));
        for w in writers {
            let _ = w.join();
        }
        let per = (loaded.0 + loaded.1).saturating_sub(idle.0 + idle.1) as f64 / CHANNELS as f64;
        println!(
            "| {name} | {} → {} | {} → {} | {per:.0} |",
            idle.0, loaded.0, idle.1, loaded.1
        );
        drop((origin, dest));
    }
    println!(
        "\nA channel's window starts at 256 KiB per direction and (this build) grows \
         up to 1 MiB while its reader keeps up: the origin buffers what its server \
         does not read, and the dest retains what the origin has not consumed."
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let rounds = value("--rounds").unwrap_or(5).clamp(1, 50);
    let sessions = value("--sessions").unwrap_or(200).clamp(1, 1000);
    let base = args
        .iter()
        .position(|a| a == "--base")
        .and_then(|i| args.get(i + 1))
        .cloned();
    restart_to_bytes(rounds);
    retained_memory(base.as_deref());
    reconnect_storm(sessions);
}
