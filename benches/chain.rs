//! Full chain (dest socket → dest → relay → origin → server socket) against
//! a direct unix-socket connection to the same server, in one run, reported
//! as ratios. std only; every phase is bounded in time.
//!
//! `cargo bench --bench chain` (add `-- --plaintext` for the chain without
//! Noise, `-- --quick` for shorter phases).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RELAY: &str = env!("CARGO_BIN_EXE_sockrelay-relay");
const ORIGIN: &str = env!("CARGO_BIN_EXE_sockrelay-origin");
const DEST: &str = env!("CARGO_BIN_EXE_sockrelay-dest");
const TOKEN: &str = "bench-token-0123456789abcdef";

/// The server behind both paths. First byte picks the mode:
/// 'E' echo, 'D' discard then reply with the count, 'G' + u64 LE: send that
/// many bytes then close.
fn server(l: UnixListener) {
    for s in l.incoming() {
        let Ok(mut s) = s else { return };
        std::thread::spawn(move || {
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
        });
    }
}

fn connect(p: &Path) -> UnixStream {
    let s = UnixStream::connect(p).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

/// Client → server bulk, MB/s.
fn bulk_up(p: &Path, bytes: u64) -> f64 {
    let mut s = connect(p);
    let chunk = vec![0x5au8; 256 * 1024];
    let t = Instant::now();
    s.write_all(b"D").unwrap();
    let mut left = bytes;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..k]).unwrap();
        left -= k as u64;
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut n = [0u8; 8];
    s.read_exact(&mut n).unwrap();
    assert_eq!(u64::from_le_bytes(n), bytes);
    mbps(bytes, t.elapsed())
}

/// Server → client bulk, MB/s.
fn bulk_down(p: &Path, bytes: u64) -> f64 {
    let mut s = connect(p);
    let t = Instant::now();
    s.write_all(b"G").unwrap();
    s.write_all(&bytes.to_le_bytes()).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < bytes {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "early EOF");
        got += n as u64;
    }
    mbps(bytes, t.elapsed())
}

/// 64-byte round trips: (p50, p99) in µs.
fn rtt(p: &Path, n: usize) -> (f64, f64) {
    let mut s = connect(p);
    s.write_all(b"E").unwrap();
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[n / 2], v[n * 99 / 100])
}

/// Connections per second, each doing one 1-byte echo.
fn conns_per_sec(p: &Path, dur: Duration) -> f64 {
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < dur {
        let mut s = connect(p);
        s.write_all(b"Ex").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        n += 1;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// 64 channels doing 64-byte round trips in parallel: total per second.
fn parallel_rtts(p: &Path, dur: Duration) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ths: Vec<_> = (0..64)
        .map(|_| {
            let (p, count, stop) = (p.to_path_buf(), count.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut s = connect(&p);
                s.write_all(b"E").unwrap();
                let msg = [1u8; 64];
                let mut back = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&msg).unwrap();
                    s.read_exact(&mut back).unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let t = Instant::now();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for th in ths {
        th.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
        .unwrap_or(0)
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let plaintext = args.iter().any(|a| a == "--plaintext");
    let quick = args.iter().any(|a| a == "--quick");
    let extra: &[&str] = if plaintext {
        &["--insecure-plaintext"]
    } else {
        &[]
    };
    let bulk: u64 = if quick { 32 << 20 } else { 256 << 20 };
    let phase = Duration::from_millis(if quick { 500 } else { 2000 });
    let rtts = if quick { 500 } else { 5000 };

    let dir: PathBuf = std::env::temp_dir().join(format!("sr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let srv = dir.join("srv.sock");
    let dsock = dir.join("dest.sock");
    let l = UnixListener::bind(&srv).unwrap();
    std::thread::spawn(move || server(l));

    let relay_log = dir.join("relay.log");
    let _relay = Kill(
        Command::new(RELAY)
            .args(["-p", "0", "-b", "127.0.0.1", "-q"])
            .stderr(std::fs::File::create(&relay_log).unwrap())
            .spawn()
            .unwrap(),
    );
    // -q hides "listening on": find the port by asking the kernel instead.
    let port = {
        let mut port = None;
        wait_for(Duration::from_secs(10), || {
            port = listening_port(_relay.0.id());
            port.is_some()
        });
        port.expect("relay port")
    };
    let p = port.to_string();
    let mut origin = Kill(
        Command::new(ORIGIN)
            .args(extra)
            .args(["-q", "127.0.0.1", &p, srv.to_str().unwrap()])
            .env("SOCKRELAY_TOKEN", TOKEN)
            .stdout(Stdio::piped())
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
        Command::new(DEST)
            .args(extra)
            .args(["-q", "127.0.0.1", &p, &session, dsock.to_str().unwrap()])
            .env("SOCKRELAY_TOKEN", TOKEN)
            .spawn()
            .unwrap(),
    );
    // Ready when a round trip works.
    assert!(wait_for(Duration::from_secs(15), || {
        UnixStream::connect(&dsock).is_ok_and(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut b = [0u8; 1];
            s.write_all(b"Ex").is_ok() && s.read_exact(&mut b).is_ok()
        })
    }));
    std::thread::sleep(Duration::from_millis(200));
    let idle = (rss_kib(origin.0.id()), rss_kib(dest.0.id()));

    println!(
        "sockrelay chain bench ({}; bulk {} MiB, phases {:?})",
        if plaintext { "plaintext" } else { "Noise e2e" },
        bulk >> 20,
        phase
    );
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "metric", "direct", "chain", "ratio"
    );
    let row = |name: &str, d: f64, c: f64, unit: &str| {
        println!(
            "{:<34} {:>12} {:>12} {:>8.3}",
            name,
            format!("{d:.1}{unit}"),
            format!("{c:.1}{unit}"),
            c / d
        );
    };
    row(
        "bulk client->server (MB/s)",
        bulk_up(&srv, bulk),
        bulk_up(&dsock, bulk),
        "",
    );
    row(
        "bulk server->client (MB/s)",
        bulk_down(&srv, bulk),
        bulk_down(&dsock, bulk),
        "",
    );
    let (d50, d99) = rtt(&srv, rtts);
    let (c50, c99) = rtt(&dsock, rtts);
    row("64-byte RTT p50 (us)", d50, c50, "");
    row("64-byte RTT p99 (us)", d99, c99, "");
    row(
        "connections/s (1-byte echo)",
        conns_per_sec(&srv, phase),
        conns_per_sec(&dsock, phase),
        "",
    );
    row(
        "64 channels, round trips/s",
        parallel_rtts(&srv, phase),
        parallel_rtts(&dsock, phase),
        "",
    );
    let after = (rss_kib(origin.0.id()), rss_kib(dest.0.id()));
    println!(
        "RSS origin: {} KiB idle, {} KiB after load; dest: {} KiB idle, {} KiB after load",
        idle.0, after.0, idle.1, after.1
    );
    drop(dest);
    drop(origin);
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
