//! Compatibility with the original Node.js unix-relay clients, as a real,
//! independent peer.
//!
//! `tests/compat/original_clients.js` re-creates the wire behaviour of the
//! original `origin.js` / `dest.js` (ws@5, msgpack-lite, uuid@3): query API
//! `?mode=origin&token=T` / `?mode=dest&id=ID&token=T`, the relay's binary
//! msgpack `{type:"start", id}` to the origin, then the clients' own msgpack
//! channel messages (`open` / `data` / `close`) which the relay only forwards.
//!
//! The test runs the relay binary (`-p 0 -b 127.0.0.1`, reading
//! `listening on ADDR` from its output), an origin-side unix server that answers
//! every byte with `byte ^ 0xA5`, the node origin and the node dest, then checks:
//! the start message, the dest's token reaching the origin, byte-exact data both
//! ways for sizes up to several MiB (also on concurrent connections), and that a
//! dest with a wrong token (403), an unknown id (404) or a second dest (409) is
//! refused before the upgrade while the session keeps working.
//!
//! Needs `node` and `tests/compat/node_modules` (`bash .ci/setup` installs both).
//! `compat_harness_control_with_mock_relay` runs the same checks against
//! `tests/compat/mock_relay.js`, a stand-in for the README's compat mode: if
//! that passes and the real one fails, the relay is at fault, not the harness.
//! Env: `COMPAT_NODE` (node binary, default `node`).

mod common;

use common::{pattern, TempDir};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// One setup step (process start, handshake, refusal).
const STEP: Duration = Duration::from_secs(20);
/// One transfer, either direction.
const TRANSFER: Duration = Duration::from_secs(60);
/// Whole test: past this, kill every child and abort the test process.
const TEST_LIMIT: Duration = Duration::from_secs(300);

const XOR: u8 = 0xA5;
const TOKEN: &str = "compat-token-3f9a2c";
const WRONG_TOKEN: &str = "compat-token-3f9a2d";

// ---------------------------------------------------------------------------
// child processes with captured, echoed output

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stream {
    Out,
    Err,
}

#[derive(Default)]
struct Output {
    lines: Vec<(Stream, String)>,
    open_streams: usize,
}

struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<(Mutex<Output>, Condvar)>,
}

static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("COMPAT_EXIT_ON_STDIN_EOF", "1")
            .env("COMPAT_MAX_SECONDS", TEST_LIMIT.as_secs().to_string());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot spawn {cmd:?}: {e}"));
        lock(&PIDS).push(child.id());
        let out = Arc::new((
            Mutex::new(Output {
                lines: Vec::new(),
                open_streams: 2,
            }),
            Condvar::new(),
        ));
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for (stream, pipe) in [(Stream::Out, stdout), (Stream::Err, stderr)] {
            let out = Arc::clone(&out);
            let name = name.to_string();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    eprintln!(
                        "[{name} {}] {line}",
                        if stream == Stream::Out { "out" } else { "err" }
                    );
                    lock(&out.0).lines.push((stream, line));
                    out.1.notify_all();
                }
                lock(&out.0).open_streams -= 1;
                out.1.notify_all();
            });
        }
        Proc {
            name: name.to_string(),
            stdin: child.stdin.take(),
            child,
            out,
        }
    }

    /// Wait until some output line (from the start) satisfies `pred`.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(Stream, &str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.out;
        let mut g = lock(m);
        loop {
            if let Some((_, l)) = g.lines.iter().find(|(s, l)| pred(*s, l)) {
                return l.clone();
            }
            let now = Instant::now();
            if g.open_streams == 0 || now >= deadline {
                drop(g);
                let status = self.wait_exit(Duration::from_millis(500));
                if now >= deadline {
                    panic!(
                        "{}: timed out after {timeout:?} waiting for {what} (status {status:?})",
                        self.name
                    );
                }
                panic!(
                    "{}: exited ({status:?}) while waiting for {what}",
                    self.name
                );
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Wait for an event line `compat: event=NAME ...` matching `pred`.
    fn wait_event(
        &mut self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        let line = self.wait_for(&format!("event={name}"), timeout, |s, l| {
            s == Stream::Err && Event::parse(l).is_some_and(|e| e.name == name && pred(&e))
        });
        Event::parse(&line).unwrap()
    }

    fn events(&self, name: &str) -> Vec<Event> {
        lock(&self.out.0)
            .lines
            .iter()
            .filter(|(s, _)| *s == Stream::Err)
            .filter_map(|(_, l)| Event::parse(l))
            .filter(|e| e.name == name)
            .collect()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{} exited unexpectedly: {st}", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        lock(&PIDS).retain(|p| *p != self.child.id());
    }
}

/// Past TEST_LIMIT: kill every child we started, then abort (no hung CI).
fn start_watchdog() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        thread::spawn(|| {
            thread::sleep(TEST_LIMIT);
            eprintln!("compat_node: test time limit {TEST_LIMIT:?} exceeded; killing children and aborting");
            for pid in lock(&PIDS).iter() {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
            std::process::exit(101);
        });
    });
}

#[derive(Debug, Clone)]
struct Event {
    name: String,
    fields: Vec<(String, String)>,
}

impl Event {
    fn parse(line: &str) -> Option<Event> {
        let rest = line.strip_prefix("compat: event=")?;
        let mut parts = rest.split(' ');
        let name = parts.next()?.to_string();
        let fields = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Event { name, fields })
    }

    fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("event {} has no field {key}: {:?}", self.name, self.fields))
    }
}

// ---------------------------------------------------------------------------
// environment

fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat")
}

fn node() -> String {
    std::env::var("COMPAT_NODE").unwrap_or_else(|_| "node".to_string())
}

/// Node and the npm deps must be there: .ci/setup installs them, so a missing
/// one is a failure, not a skip.
fn require_node() {
    let nm = compat_dir().join("node_modules");
    for m in ["ws", "msgpack-lite", "uuid"] {
        assert!(
            nm.join(m).join("package.json").is_file(),
            "{} is missing: run `bash .ci/setup` (it runs `npm ci` in tests/compat)",
            nm.join(m).display()
        );
    }
    let out = Command::new(node())
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}` ({e}): run `bash .ci/setup`", node()));
    assert!(out.status.success(), "`{} --version` failed", node());
}

// ---------------------------------------------------------------------------
// the pieces

enum RelayKind {
    Real,
    Mock,
}

fn start_relay(kind: RelayKind) -> (Proc, SocketAddr) {
    let mut cmd = match kind {
        RelayKind::Real => Command::new(env!("CARGO_BIN_EXE_sockrelay-relay")),
        RelayKind::Mock => {
            let mut c = Command::new(node());
            c.arg(compat_dir().join("mock_relay.js"));
            c
        }
    };
    cmd.args(["-p", "0", "-b", "127.0.0.1"]);
    let mut relay = Proc::spawn("relay", cmd);
    let line = relay.wait_for("a `listening on ADDR` line", STEP, |_, l| {
        l.contains("listening on ")
    });
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|a| a.trim_end_matches(|c: char| !c.is_ascii_digit()))
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("cannot parse an address from relay line {line:?}"));
    assert!(
        addr.ip().is_loopback(),
        "relay must listen on loopback here, got {addr}"
    );
    assert_ne!(addr.port(), 0);
    (relay, addr)
}

fn node_client(name: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(node());
    cmd.arg(compat_dir().join("original_clients.js")).args(args);
    Proc::spawn(name, cmd)
}

/// The origin's unix socket: answers every byte with `byte ^ XOR`.
fn start_xor_server(path: &Path) -> Arc<AtomicUsize> {
    let listener = UnixListener::bind(path).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            count.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let _ = conn.set_write_timeout(Some(TRANSFER));
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf[..n].iter_mut().for_each(|b| *b ^= XOR);
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    accepted
}

/// Open a connection on the dest's unix socket, send `size` bytes, read back
/// `size` bytes and check them byte for byte (the origin side XORs them).
fn round_trip(dest_sock: &Path, size: usize, seed: u64) {
    let mut s = UnixStream::connect(dest_sock)
        .unwrap_or_else(|e| panic!("connect {}: {e}", dest_sock.display()));
    s.set_read_timeout(Some(TRANSFER)).unwrap();
    s.set_write_timeout(Some(TRANSFER)).unwrap();
    let data = pattern(seed, size);
    let mut w = s.try_clone().unwrap();
    let to_send = data.clone();
    let writer = thread::spawn(move || w.write_all(&to_send));

    let mut got = vec![0u8; size];
    let mut have = 0;
    let started = Instant::now();
    while have < size {
        match s.read(&mut got[have..]) {
            Ok(0) => panic!("size {size}: connection closed after {have} of {size} bytes"),
            Ok(n) => have += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "size {size}: read failed after {have} of {size} bytes in {:?}: {e}",
                started.elapsed()
            ),
        }
    }
    writer
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("size {size}: write failed: {e}"));
    if let Some(i) = (0..size).find(|&i| got[i] != data[i] ^ XOR) {
        panic!(
            "size {size}: byte {i} differs: got {:#04x}, want {:#04x} (bytes {}..{} got {:02x?})",
            got[i],
            data[i] ^ XOR,
            i,
            (i + 16).min(size),
            &got[i..(i + 16).min(size)]
        );
    }
    // Nothing more may arrive.
    s.set_read_timeout(Some(Duration::from_millis(150)))
        .unwrap();
    let mut extra = [0u8; 64];
    match s.read(&mut extra) {
        Ok(0) => panic!("size {size}: closed by the far side right after the data"),
        Ok(n) => panic!(
            "size {size}: {n} unexpected extra bytes: {:02x?}",
            &extra[..n]
        ),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Err(e) => panic!("size {size}: {e}"),
    }
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// A dest that must be refused before the upgrade with `status`.
fn expect_refused(port: &str, id: &str, token: &str, sock: &Path, status: u16, why: &str) {
    let mut d = node_client(
        &format!("dest-{status}"),
        &["dest", "127.0.0.1", port, id, token, sock.to_str().unwrap()],
    );
    let line = d.wait_for(&format!("a refusal ({why})"), STEP, |s, l| {
        s == Stream::Err
            && Event::parse(l).is_some_and(|e| matches!(e.name.as_str(), "refused" | "ws-open"))
    });
    let e = Event::parse(&line).unwrap();
    assert_eq!(
        e.name, "refused",
        "{why}: the relay upgraded the connection (101); it must answer {status} before the upgrade"
    );
    assert_eq!(
        e.get("status"),
        status.to_string(),
        "{why}: wrong HTTP status"
    );
    let st = d.wait_exit(STEP).expect("refused dest did not exit");
    assert_eq!(st.code(), Some(3), "refused dest exit status");
    assert!(
        !sock.exists(),
        "{why}: refused dest must not have created its socket"
    );
}

// ---------------------------------------------------------------------------
// the scenario

fn scenario(kind: RelayKind) {
    start_watchdog();
    require_node();
    let tmp = TempDir::new(match kind {
        RelayKind::Real => "r",
        RelayKind::Mock => "m",
    });
    let agent_path = tmp.path("agent.sock");
    let dest_path = tmp.path("dest.sock");
    let accepted = start_xor_server(&agent_path);

    let (mut relay, addr) = start_relay(kind);
    let port = addr.port().to_string();

    // Origin: the relay must send {type:"start", id} as a binary msgpack message.
    let mut origin = node_client(
        "origin",
        &[
            "origin",
            "127.0.0.1",
            &port,
            TOKEN,
            agent_path.to_str().unwrap(),
        ],
    );
    let start = origin.wait_event("start", STEP, |_| true);
    let id = start.get("id").to_string();
    assert_eq!(
        start.get("keys"),
        "id,type",
        "start message must be exactly {{type, id}}"
    );
    assert!(
        is_uuid_v4(&id),
        "session id {id:?} is not a lowercase v4 UUID"
    );
    origin.wait_for("the eval line on stdout", STEP, |s, l| {
        s == Stream::Out && l == format!("export SESSION_ID=\"{id}\"")
    });

    // Dest joins with that id and the right token.
    let mut dest = node_client(
        "dest",
        &[
            "dest",
            "127.0.0.1",
            &port,
            &id,
            TOKEN,
            dest_path.to_str().unwrap(),
        ],
    );
    dest.wait_event("listening", STEP, |_| true);

    // ws@5 offers permessage-deflate; the relay forwards frames unchanged, so it
    // must decline the extension (no Sec-WebSocket-Extensions in its 101).
    for p in [&mut origin, &mut dest] {
        let open = p.wait_event("ws-open", STEP, |_| true);
        assert_eq!(
            open.get("extensions"),
            "-",
            "{}: relay accepted a WebSocket extension",
            p.name
        );
    }

    // Byte-exact both ways, one connection at a time, frame-length edges included.
    let sizes = [
        1usize,
        125,
        126,
        65_535,
        65_536,
        65_537,
        1 << 20,
        (4 << 20) + 3,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        round_trip(&dest_path, size, i as u64 + 1);
    }
    // The dest's token reached the origin on every channel.
    let opened = origin.events("channel-open");
    assert_eq!(
        opened.len(),
        sizes.len(),
        "origin channel-open events: {opened:?}"
    );
    assert!(opened.iter().all(|e| e.get("token_ok") == "1"));
    assert!(
        origin.events("channel-refused").is_empty(),
        "origin refused a channel"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        sizes.len(),
        "connections on the origin's socket"
    );

    // Several channels at once, multiplexed on the one session.
    let concurrent: Vec<_> = [(3usize << 20) + 1, 100_000, 7, 1 << 20]
        .into_iter()
        .enumerate()
        .map(|(i, size)| {
            let p = dest_path.clone();
            thread::spawn(move || round_trip(&p, size, 100 + i as u64))
        })
        .collect();
    for t in concurrent {
        t.join().expect("concurrent round trip failed");
    }

    // Closing the unix connection on the dest closes the origin's end too.
    let closes = |p: &Proc| p.events("channel-close").len();
    let deadline = Instant::now() + STEP;
    while closes(&origin) < sizes.len() + 4 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        closes(&origin),
        sizes.len() + 4,
        "origin channel-close events"
    );

    // Refusals before the upgrade; the session is unaffected.
    let bad_sock = tmp.path("bad.sock");
    expect_refused(
        &port,
        &id,
        WRONG_TOKEN,
        &bad_sock,
        403,
        "dest with a wrong token",
    );
    expect_refused(
        &port,
        "00000000-0000-4000-8000-000000000000",
        TOKEN,
        &bad_sock,
        404,
        "dest with an unknown id",
    );
    expect_refused(
        &port,
        &id,
        TOKEN,
        &bad_sock,
        409,
        "second dest on a paired session",
    );

    origin.assert_alive();
    dest.assert_alive();
    relay.assert_alive();
    round_trip(&dest_path, 1 << 20, 999);
    round_trip(&dest_path, 3, 1000);

    // Neither client saw anything but well-formed binary msgpack messages.
    for p in [&origin, &dest] {
        let errs = p.events("protocol-error");
        assert!(errs.is_empty(), "{}: protocol errors: {errs:?}", p.name);
    }

    // The dest goes away: unlike the original server (which then closed the
    // origin too), the session waits, and a new dest can join with the same id.
    drop(dest);
    let dest2_path = tmp.path("dest2.sock");
    let mut dest2 = node_client(
        "dest2",
        &[
            "dest",
            "127.0.0.1",
            &port,
            &id,
            TOKEN,
            dest2_path.to_str().unwrap(),
        ],
    );
    let line = dest2.wait_for("the new dest to be paired", STEP, |s, l| {
        s == Stream::Err
            && Event::parse(l).is_some_and(|e| matches!(e.name.as_str(), "refused" | "listening"))
    });
    assert!(
        line.contains("event=listening"),
        "a new dest could not join after the first left: {line}"
    );
    origin.assert_alive();
    round_trip(&dest2_path, (1 << 20) + 17, 2000);
    assert!(dest2.events("protocol-error").is_empty());
    assert!(origin.events("protocol-error").is_empty());
    assert_eq!(origin.events("start").len(), 1);

    // The origin goes away: the dest is told with a close frame (4001).
    drop(origin);
    let closed = dest2.wait_event("ws-close", STEP, |_| true);
    assert_eq!(
        closed.get("code"),
        "4001",
        "close code to the dest when the origin is gone"
    );
    relay.assert_alive();
}

#[test]
fn original_node_clients_through_relay() {
    scenario(RelayKind::Real);
}

#[test]
fn compat_harness_control_with_mock_relay() {
    scenario(RelayKind::Mock);
}

#[test]
fn compat_scripts_parse() {
    require_node();
    for f in ["original_clients.js", "mock_relay.js"] {
        let st = Command::new(node())
            .arg("--check")
            .arg(compat_dir().join(f))
            .status()
            .unwrap();
        assert!(st.success(), "node --check {f}");
    }
}
