//! Channels that survive the relay (issue 10): real relay, origin and dest
//! processes; the relay is killed or stopped and restarted on the same
//! port while channels carry data, and every byte must arrive intact and in
//! order (checked against a deterministic stream at the far end).

// Channel resume binds its proof to the Noise handshake: e2e builds only.
#![cfg(feature = "e2e")]

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::clients::*;

/// A deterministic byte stream (xorshift), generated in pieces so that
/// 64 MiB can be checked without holding it.
struct Stream(u64);

impl Stream {
    fn new(seed: u64) -> Stream {
        Stream(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

const MIB: u64 = 1 << 20;

/// Keeps a transfer at or below `rate` bytes per second, so that it spans
/// the relay restarts of a test however fast the machine is.
struct Pacer {
    start: Instant,
    rate: u64,
}

impl Pacer {
    fn new(rate: u64) -> Pacer {
        Pacer {
            start: Instant::now(),
            rate,
        }
    }
    fn wait(&self, done: u64) {
        let due = Duration::from_secs_f64(done as f64 / self.rate as f64);
        if let Some(left) = due.checked_sub(self.start.elapsed()) {
            thread::sleep(left);
        }
    }
}

/// The origin's unix server. The first byte of a connection says what it
/// is:
/// - `U` + 8-byte length + 8-byte seed: an upload; the server checks every
///   byte against the stream and answers `ok <n>` or `bad at <offset>`;
/// - `D` + 8-byte length + 8-byte seed: a download of that stream;
/// - `R`: request/answer lines, `q <n>\n` answered by `a <n>\n`.
struct OriginServer {
    stop: Arc<AtomicBool>,
    path: PathBuf,
}

impl OriginServer {
    fn start(path: &Path) -> OriginServer {
        let l = UnixListener::bind(path).unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        thread::spawn(move || serve(s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        OriginServer {
            stop,
            path: path.to_path_buf(),
        }
    }
}

impl Drop for OriginServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_u64(s: &mut UnixStream) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn serve(mut s: UnixStream) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut kind = [0u8; 1];
    if s.read_exact(&mut kind).is_err() {
        return;
    }
    match kind[0] {
        b'U' => {
            let (Ok(len), Ok(seed)) = (read_u64(&mut s), read_u64(&mut s)) else {
                return;
            };
            let mut want = Stream::new(seed);
            let mut buf = vec![0u8; 64 * 1024];
            let mut exp = vec![0u8; 64 * 1024];
            let mut n = 0u64;
            let mut bad = None;
            loop {
                let k = match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => k,
                    Err(_) => return,
                };
                want.fill(&mut exp[..k]);
                if bad.is_none() {
                    if let Some(i) = (0..k).find(|&i| buf[i] != exp[i]) {
                        bad = Some(n + i as u64);
                    }
                }
                n += k as u64;
            }
            let answer = match bad {
                None if n == len => format!("ok {n}"),
                None => format!("short {n} of {len}"),
                Some(at) => format!("bad at {at}"),
            };
            let _ = s.write_all(answer.as_bytes());
            let _ = s.shutdown(Shutdown::Write);
        }
        b'D' => {
            let (Ok(len), Ok(seed)) = (read_u64(&mut s), read_u64(&mut s)) else {
                return;
            };
            let mut st = Stream::new(seed);
            let mut buf = vec![0u8; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let k = left.min(buf.len() as u64) as usize;
                st.fill(&mut buf[..k]);
                if s.write_all(&buf[..k]).is_err() {
                    return;
                }
                left -= k as u64;
            }
            let _ = s.shutdown(Shutdown::Write);
        }
        b'R' => {
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while let Ok(1) = s.read(&mut b) {
                if b[0] != b'\n' {
                    line.push(b[0]);
                    continue;
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                line.clear();
                let Some(n) = text.strip_prefix("q ") else {
                    return;
                };
                if s.write_all(format!("a {n}\n").as_bytes()).is_err() {
                    return;
                }
            }
        }
        _ => {}
    }
}

fn header(kind: u8, len: u64, seed: u64) -> Vec<u8> {
    let mut h = vec![kind];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&seed.to_be_bytes());
    h
}

/// Connect to the dest socket; generous timeouts (the relay is down for
/// a while in these tests, and flow control holds the writer meanwhile).
fn dial(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Upload `len` bytes of stream `seed` at most at `rate` bytes/s; returns
/// the server's verdict. `progress` counts bytes written.
fn upload(path: PathBuf, len: u64, seed: u64, rate: u64, progress: Arc<AtomicU64>) -> String {
    let pacer = Pacer::new(rate);
    let mut s = dial(&path);
    s.write_all(&header(b'U', len, seed)).unwrap();
    let mut st = Stream::new(seed);
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        st.fill(&mut buf[..k]);
        if let Err(e) = s.write_all(&buf[..k]) {
            return format!("upload write failed after {} bytes: {e}", len - left);
        }
        left -= k as u64;
        progress.fetch_add(k as u64, Ordering::Relaxed);
        pacer.wait(len - left);
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut verdict = String::new();
    match s.read_to_string(&mut verdict) {
        Ok(_) => verdict,
        Err(e) => format!("no verdict: {e}"),
    }
}

/// Download `len` bytes of stream `seed`, read at most at `rate` bytes/s;
/// returns "ok <n>" or where it went wrong.
fn download(path: PathBuf, len: u64, seed: u64, rate: u64, progress: Arc<AtomicU64>) -> String {
    let pacer = Pacer::new(rate);
    let mut s = dial(&path);
    s.write_all(&header(b'D', len, seed)).unwrap();
    let mut want = Stream::new(seed);
    let mut buf = vec![0u8; 256 * 1024];
    let mut exp = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) => return format!("download read failed after {n} bytes: {e}"),
        };
        want.fill(&mut exp[..k]);
        if let Some(i) = (0..k).find(|&i| buf[i] != exp[i]) {
            return format!("bad byte at {}", n + i as u64);
        }
        n += k as u64;
        progress.store(n, Ordering::Relaxed);
        pacer.wait(n);
    }
    if n == len {
        format!("ok {n}")
    } else {
        format!("short {n} of {len}")
    }
}

/// Requests on one kept-open connection every 100 ms until `stop`;
/// returns (answered, first mismatch or error).
fn chatter(path: PathBuf, stop: Arc<AtomicBool>) -> (u64, Option<String>) {
    let mut s = dial(&path);
    s.write_all(b"R").unwrap();
    let mut n = 0u64;
    let mut b = [0u8; 1];
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        if let Err(e) = s.write_all(format!("q {n}\n").as_bytes()) {
            return (n - 1, Some(format!("request {n}: write: {e}")));
        }
        let mut line = Vec::new();
        loop {
            match s.read(&mut b) {
                Ok(1) if b[0] == b'\n' => break,
                Ok(1) => line.push(b[0]),
                Ok(_) => return (n - 1, Some(format!("request {n}: connection closed"))),
                Err(e) => return (n - 1, Some(format!("request {n}: read: {e}"))),
            }
        }
        let got = String::from_utf8_lossy(&line).into_owned();
        if got != format!("a {n}") {
            return (n - 1, Some(format!("request {n} answered {got:?}")));
        }
        thread::sleep(Duration::from_millis(100));
    }
    (n, None)
}

fn wait_bytes(p: &AtomicU64, at_least: u64, timeout: Duration) -> bool {
    wait_for(timeout, || p.load(Ordering::Relaxed) >= at_least)
}

struct Session {
    dir: TempDir,
    relay: Relay,
    _server: OriginServer,
    origin: Origin,
    dest: Dest,
}

impl Session {
    fn start(tag: &str, extra: &[&str]) -> Session {
        let dir = TempDir::new(tag);
        let relay = Relay::start(&dir, 0);
        let server = OriginServer::start(&dir.path("origin.sock"));
        let origin = Origin::start(&dir, relay.port, &server.path, extra);
        let dest = Dest::start(
            &dir,
            relay.port,
            &origin.session,
            &dir.path("dest.sock"),
            extra,
        );
        Session {
            dir,
            relay,
            _server: server,
            origin,
            dest,
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- relay:\n{}\n--- origin:\n{}\n--- dest:\n{}",
            self.relay.proc.log_text(),
            self.origin.proc.log_text(),
            self.dest.proc.log_text()
        )
    }

    /// Stop the relay with `sig` and start a new one on the same port.
    fn restart_relay(&mut self, sig: i32) -> Duration {
        let port = self.relay.port;
        self.relay.proc.signal(sig);
        let code = self.relay.proc.wait_exit(Duration::from_secs(15));
        assert!(
            sig == libc::SIGKILL || code.is_some(),
            "relay did not exit on signal {sig}"
        );
        let t = Instant::now();
        self.relay = Relay::start(&self.dir, port);
        t.elapsed()
    }
}

#[test]
fn three_channels_survive_relay_kill_and_stop_with_every_byte_in_order() {
    let mut s = Session::start("resume3", &["-v"]);
    let path = s.dest.socket.clone();
    let (up_p, down_p) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let len = 64 * MIB;
    let up = {
        let (p, pr) = (path.clone(), up_p.clone());
        thread::spawn(move || upload(p, len, 11, 16 * MIB, pr))
    };
    let down = {
        let (p, pr) = (path.clone(), down_p.clone());
        thread::spawn(move || download(p, len, 22, 16 * MIB, pr))
    };
    let chat = {
        let (p, st) = (path.clone(), stop.clone());
        thread::spawn(move || chatter(p, st))
    };
    let within = Duration::from_secs(60);
    assert!(
        wait_bytes(&up_p, 4 * MIB, within) && wait_bytes(&down_p, 4 * MIB, within),
        "transfers did not start\n{}",
        s.logs()
    );
    // SIGKILL: the relay vanishes mid-transfer.
    let at = (up_p.load(Ordering::Relaxed), down_p.load(Ordering::Relaxed));
    s.restart_relay(libc::SIGKILL);
    assert!(
        wait_bytes(&up_p, at.0 + 8 * MIB, within) && wait_bytes(&down_p, at.1 + 8 * MIB, within),
        "no progress after the relay was killed and restarted\n{}",
        s.logs()
    );
    // SIGTERM: the relay shuts down in order.
    let at = (up_p.load(Ordering::Relaxed), down_p.load(Ordering::Relaxed));
    s.restart_relay(libc::SIGTERM);
    assert!(
        wait_bytes(&up_p, at.0 + 8 * MIB, within) && wait_bytes(&down_p, at.1 + 8 * MIB, within),
        "no progress after the relay was stopped and restarted\n{}",
        s.logs()
    );
    let up = up.join().unwrap();
    let down = down.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (answered, chat_err) = chat.join().unwrap();
    let logs = s.logs();
    assert_eq!(up, format!("ok {len}"), "upload (dest → origin)\n{logs}");
    assert_eq!(
        down,
        format!("ok {len}"),
        "download (origin → dest)\n{logs}"
    );
    assert!(chat_err.is_none(), "{chat_err:?}\n{logs}");
    assert!(answered > 5, "only {answered} answers");
    // Both sides said so.
    for (who, log) in [
        ("origin", s.origin.proc.log_text()),
        ("dest", s.dest.proc.log_text()),
    ] {
        assert!(
            log.matches("resumed 3 channel(s)").count() >= 2,
            "{who} did not resume twice:\n{logs}"
        );
    }
    eprintln!(
        "three channels: 2 × 64 MiB and {answered} request/answer pairs across two relay restarts"
    );
}

#[test]
fn after_the_resume_window_channels_close_with_the_reason_and_new_ones_work() {
    let mut s = Session::start("window", &["-v", "--resume-window", "1.5"]);
    let path = s.dest.socket.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let chat = {
        let (p, st) = (path.clone(), stop.clone());
        thread::spawn(move || chatter(p, st))
    };
    thread::sleep(Duration::from_millis(400));
    let port = s.relay.port;
    s.relay.proc.signal(libc::SIGKILL);
    s.relay.proc.wait_exit(Duration::from_secs(5));
    // Longer than the window: both sides close the channel, with the reason.
    for p in [&s.origin.proc, &s.dest.proc] {
        assert!(
            p.wait_log("resume window", Duration::from_secs(10)),
            "no resume-window close:\n{}",
            s.logs()
        );
    }
    let (answered, err) = chat.join().unwrap();
    assert!(answered >= 2, "the channel worked before: {answered}");
    let err = err.expect("the held channel closed");
    assert!(err.contains("closed") || err.contains("read"), "{err}");
    // The relay comes back: new connections work again.
    s.relay = Relay::start(&s.dir, port);
    let ok = wait_for(Duration::from_secs(30), || {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let p = path.clone();
        let t = thread::spawn(move || chatter(p, st));
        thread::sleep(Duration::from_millis(250));
        stop.store(true, Ordering::Relaxed);
        let (n, e) = t.join().unwrap();
        n >= 1 && e.is_none()
    });
    assert!(ok, "no new channel after the window\n{}", s.logs());
}

#[test]
fn another_dest_with_the_token_never_gets_the_old_channels() {
    let s = Session::start("otherdest", &["-v"]);
    let Session {
        dir,
        relay,
        _server,
        origin,
        mut dest,
    } = s;
    let stop = Arc::new(AtomicBool::new(false));
    let chat = {
        let (p, st) = (dest.socket.clone(), stop.clone());
        thread::spawn(move || chatter(p, st))
    };
    thread::sleep(Duration::from_millis(400));
    // The first dest vanishes without a word (its channels held at the
    // origin for a resume), then another dest process joins.
    dest.proc.signal(libc::SIGKILL);
    dest.proc.wait_exit(Duration::from_secs(5));
    let (answered, _) = chat.join().unwrap();
    assert!(answered >= 2);
    let dest2 = Dest::start(
        &dir,
        relay.port,
        &origin.session,
        &dir.path("d2.sock"),
        &["-v"],
    );
    // The origin closes the old channel (its peer is a new instance) ...
    assert!(
        origin
            .proc
            .wait_log("channel 1 closed: ", Duration::from_secs(10)),
        "origin kept the old channel:\n{}",
        origin.proc.log_text()
    );
    assert!(
        !origin.proc.log_text().contains("resumed 1 channel"),
        "{}",
        origin.proc.log_text()
    );
    assert!(!dest2.proc.log_text().contains("resumed"));
    // ... and the new dest works with fresh channels.
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let p = dest2.socket.clone();
    let t = thread::spawn(move || chatter(p, st));
    thread::sleep(Duration::from_millis(350));
    stop.store(true, Ordering::Relaxed);
    let (n, e) = t.join().unwrap();
    assert!(
        n >= 2 && e.is_none(),
        "{n} {e:?}\n{}",
        dest2.proc.log_text()
    );
}

// ---- a real ssh-agent across relay restarts --------------------------------

/// One agent message: 4-byte length, then the body.
fn agent_call(s: &mut UnixStream, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut msg = (body.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(body);
    s.write_all(&msg)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut answer)?;
    Ok(answer)
}

fn ssh_string(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

/// The first key blob of an IDENTITIES_ANSWER (type 12).
fn first_key_blob(answer: &[u8]) -> Option<Vec<u8>> {
    if answer.first() != Some(&12) || answer.len() < 9 {
        return None;
    }
    let n = u32::from_be_bytes(answer[1..5].try_into().ok()?);
    let len = u32::from_be_bytes(answer[5..9].try_into().ok()?) as usize;
    (n >= 1).then(|| answer.get(9..9 + len).map(<[u8]>::to_vec))?
}

#[test]
fn a_real_ssh_agent_connection_kept_open_gets_every_answer_across_two_relay_restarts() {
    agent_across_restarts(false);
}

/// The same with the origin's ssh-agent guard on (`--agent-key`): the
/// guard's per-channel state (a request half parsed, an answer awaited)
/// carries over the resume with the channel's bytes.
#[test]
fn the_agent_guard_keeps_working_on_a_channel_resumed_across_relay_restarts() {
    agent_across_restarts(true);
}

fn agent_across_restarts(guard: bool) {
    let dir = TempDir::new(if guard {
        "agentguardresume"
    } else {
        "agentresume"
    });
    let (_agent, agent_sock, key) = agent_with_key(&dir, "resume-test");
    let mut relay = Relay::start(&dir, 0);
    let port = relay.port;
    let pubkey_path = format!("{}.pub", key.display());
    let mut origin_args = vec!["-v"];
    if guard {
        origin_args.extend(["--agent-key", pubkey_path.as_str()]);
    }
    let origin = Origin::start(&dir, port, &agent_sock, &origin_args);
    let dest = Dest::start(&dir, port, &origin.session, &dir.path("d.sock"), &["-v"]);

    // One agent connection, kept open: sign requests every 50 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let signer = {
        let (path, stop) = (dest.socket.clone(), stop.clone());
        thread::spawn(move || -> Result<u64, String> {
            let mut s = dial(&path);
            let ids = agent_call(&mut s, &[11]).map_err(|e| format!("list: {e}"))?;
            let blob = first_key_blob(&ids).ok_or("no key listed")?;
            let mut signed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut req = vec![13];
                req.extend(ssh_string(&blob));
                req.extend(ssh_string(format!("request {signed}").as_bytes()));
                req.extend(0u32.to_be_bytes());
                let answer = agent_call(&mut s, &req).map_err(|e| format!("sign {signed}: {e}"))?;
                if answer.first() != Some(&14) {
                    return Err(format!("sign {signed}: answer type {:?}", answer.first()));
                }
                signed += 1;
                thread::sleep(Duration::from_millis(50));
            }
            Ok(signed)
        })
    };
    // And a loop of ssh-keygen -Y sign: a new connection each time.
    let keygen = {
        let (path, stop, dir_file) = (dest.socket.clone(), stop.clone(), dir.path("msg.txt"));
        let pubkey = format!("{}.pub", key.display());
        std::fs::write(&dir_file, b"signed across relay restarts\n").unwrap();
        thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_file(format!("{}.sig", dir_file.display()));
                let out = with_agent(
                    &path,
                    &[
                        "ssh-keygen",
                        "-Y",
                        "sign",
                        "-f",
                        &pubkey,
                        "-n",
                        "file",
                        dir_file.to_str().unwrap(),
                    ],
                );
                if out.status.success() {
                    ok += 1;
                } else {
                    failed.push(String::from_utf8_lossy(&out.stderr).into_owned());
                }
            }
            (ok, failed)
        })
    };
    thread::sleep(Duration::from_millis(500));
    for sig in [libc::SIGKILL, libc::SIGTERM] {
        relay.proc.signal(sig);
        relay.proc.wait_exit(Duration::from_secs(15));
        relay = Relay::start(&dir, port);
        assert!(
            wait_for(Duration::from_secs(20), || {
                dest.proc.log_text().matches("resumed").count()
                    >= if sig == libc::SIGKILL { 1 } else { 2 }
            }),
            "no resume after signal {sig}:\n{}\n{}",
            origin.proc.log_text(),
            dest.proc.log_text()
        );
        thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let signed = signer.join().unwrap();
    let (ok, failed) = keygen.join().unwrap();
    let logs = format!(
        "--- origin:\n{}\n--- dest:\n{}",
        origin.proc.log_text(),
        dest.proc.log_text()
    );
    let signed = signed.unwrap_or_else(|e| panic!("kept-open agent connection: {e}\n{logs}"));
    assert!(signed >= 10, "only {signed} signatures\n{logs}");
    assert!(
        failed.is_empty(),
        "{} ssh-keygen -Y sign failed: {failed:?}\n{logs}",
        failed.len()
    );
    assert!(ok >= 3, "only {ok} ssh-keygen signatures");
    if guard {
        // Every signature went through the guard, and it audited each.
        let audited = origin
            .proc
            .log_text()
            .lines()
            .filter(|l| l.contains("agent audit:") && l.contains("agent answered signature"))
            .count() as u64;
        assert!(
            audited >= signed + u64::from(ok),
            "{audited} audited signatures for {signed} + {ok}\n{logs}"
        );
    }
    eprintln!("agent across two restarts: {signed} signatures on one connection, {ok} ssh-keygen -Y sign runs, 0 failures");
}

// ---- a silent outage: no FIN, no RST ---------------------------------------

/// A network namespace made by this test, joined to ours by a veth pair:
/// the relay runs inside it at `relay_ip`, the clients reach it over the
/// veth. Removed on drop. Needs root (CI runs as root).
struct Netns {
    name: String,
    host_if: String,
    relay_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(find_sbin("ip"))
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e} (install iproute2: bash .ci/setup)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// `slot` tells apart the namespaces of tests running at once.
    fn create(slot: u32) -> Netns {
        let id = std::process::id();
        let net = id % 250;
        let n = Netns {
            name: format!("sr-r{slot}-{id}"),
            host_if: format!("srh{slot}{}", id % 100_000),
            relay_ip: format!("10.231.{net}.{}", slot * 4 + 2),
        };
        let peer_if = format!("srn{slot}{}", id % 100_000);
        let host_ip = format!("10.231.{net}.{}/30", slot * 4 + 1);
        let relay_cidr = format!("{}/30", n.relay_ip);
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", &n.name],
            vec![
                "link", "add", &n.host_if, "type", "veth", "peer", "name", &peer_if,
            ],
            vec!["link", "set", &peer_if, "netns", &n.name],
            vec!["addr", "add", &host_ip, "dev", &n.host_if],
            vec!["link", "set", &n.host_if, "up"],
            vec!["-n", &n.name, "addr", "add", &relay_cidr, "dev", &peer_if],
            vec!["-n", &n.name, "link", "set", &peer_if, "up"],
            vec!["-n", &n.name, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(e) = ip(&step) {
                panic!("setting up the test's network namespace (needs root, as CI runs): {e}");
            }
        }
        n
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// A relay inside a fresh namespace, and origin and dest (with `extra`)
/// reaching it over the veth pair; returns once the session is end to end.
struct NetnsSession {
    dest: Dest,
    origin: Origin,
    _server: OriginServer,
    relay: Proc,
    net: Netns,
    _dir: TempDir,
}

impl NetnsSession {
    fn start(slot: u32, extra: &[&str]) -> NetnsSession {
        let net = Netns::create(slot);
        let dir = TempDir::new(&format!("netns{slot}"));
        let relay_log = dir.path("relay.log");
        let port = 20_000 + (std::process::id() % 20_000) as u16;
        let p = port.to_string();
        let child = std::process::Command::new(find_sbin("ip"))
            .args([
                "netns",
                "exec",
                &net.name,
                RELAY,
                "-p",
                &p,
                "-b",
                &net.relay_ip,
            ])
            .args(["--ping-interval", "1", "--pong-timeout", "2"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&relay_log).unwrap())
            .spawn()
            .unwrap();
        let relay = Proc {
            child,
            log: relay_log,
        };
        assert!(
            relay.wait_log("listening on", Duration::from_secs(10)),
            "relay: {}",
            relay.log_text()
        );
        let server = OriginServer::start(&dir.path("origin.sock"));
        let mut opts = vec!["-v", "--keepalive", "1", "--dead-after", "3"];
        opts.extend_from_slice(extra);
        let at = [net.relay_ip.as_str(), p.as_str()];
        let origin = Origin::try_start_at(&dir, &at, &server.path, &opts, TOKEN, &[])
            .unwrap_or_else(|e| panic!("origin: {e:?}"));
        let dest = Dest::spawn_at(
            &dir,
            &at,
            &origin.session,
            &dir.path("d.sock"),
            &opts,
            TOKEN,
            &[],
        );
        assert!(
            dest.proc
                .wait_log("end-to-end encryption established", Duration::from_secs(15)),
            "{}",
            dest.proc.log_text()
        );
        NetnsSession {
            dest,
            origin,
            _server: server,
            relay,
            net,
            _dir: dir,
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- origin:\n{}\n--- dest:\n{}\n--- relay:\n{}",
            self.origin.proc.log_text(),
            self.dest.proc.log_text(),
            self.relay.log_text()
        )
    }
}

#[test]
fn a_silent_network_outage_is_detected_by_heartbeats_and_the_channels_resume() {
    let s = NetnsSession::start(0, &[]);
    let path = s.dest.socket.clone();
    let down_p = Arc::new(AtomicU64::new(0));
    let len = 16 * MIB;
    let down = {
        let (p, pr) = (path.clone(), down_p.clone());
        thread::spawn(move || download(p, len, 33, 2 * MIB, pr))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let chat = {
        let (p, st) = (path.clone(), stop.clone());
        thread::spawn(move || chatter(p, st))
    };
    assert!(wait_bytes(&down_p, MIB, Duration::from_secs(30)));
    // The link goes down without a word to anyone for 15 s.
    s.net.link(false);
    let before = down_p.load(Ordering::Relaxed);
    thread::sleep(Duration::from_secs(15));
    assert!(
        down_p.load(Ordering::Relaxed) < len,
        "the transfer ended during the outage"
    );
    s.net.link(true);
    assert!(
        wait_bytes(&down_p, len, Duration::from_secs(60)),
        "no resume after the outage ({} of {len}, {before} before it)\n{}",
        down_p.load(Ordering::Relaxed),
        s.logs()
    );
    let down = down.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (answered, err) = chat.join().unwrap();
    assert_eq!(down, format!("ok {len}"), "{}", s.logs());
    assert!(err.is_none(), "{err:?}\n{}", s.logs());
    assert!(answered >= 5, "{answered}");
    for log in [s.origin.proc.log_text(), s.dest.proc.log_text()] {
        assert!(
            log.contains("relay silent") || log.contains("not reading"),
            "{}",
            s.logs()
        );
        assert!(log.contains("resumed"), "{}", s.logs());
    }
}

#[test]
fn a_silent_outage_longer_than_the_resume_window_closes_the_channels_then_new_ones_work() {
    let s = NetnsSession::start(1, &["--resume-window", "4"]);
    let path = s.dest.socket.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let chat = {
        let (p, st) = (path.clone(), stop.clone());
        thread::spawn(move || chatter(p, st))
    };
    thread::sleep(Duration::from_millis(500));
    s.net.link(false);
    // Dead after 3 s, then 4 s of resume window: closed on both sides.
    for p in [&s.origin.proc, &s.dest.proc] {
        assert!(
            p.wait_log("longer than the resume window", Duration::from_secs(20)),
            "no resume-window close\n{}",
            s.logs()
        );
    }
    let (answered, err) = chat.join().unwrap();
    assert!(answered >= 2, "{answered}");
    assert!(err.is_some(), "the held channel was not closed");
    s.net.link(true);
    let ok = wait_for(Duration::from_secs(40), || {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let p = path.clone();
        let t = thread::spawn(move || chatter(p, st));
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let (n, e) = t.join().unwrap();
        n >= 1 && e.is_none()
    });
    assert!(ok, "no new channel after the outage\n{}", s.logs());
}

// ---- failover: two relays behind a real HAProxy ----------------------------

/// HAProxy in the `docs/haproxy.cfg` shape (hash on the session id), with
/// fast health checks so that a stopped relay is out within a second.
fn start_haproxy(dir: &TempDir, port: u16, relays: &[u16]) -> common::proc::Daemon {
    let servers: String = relays
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!("    server relay{i} 127.0.0.1:{p} check inter 300ms fall 1 rise 1\n")
        })
        .collect();
    let cfg = format!(
        "global\n    maxconn 1000\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    \
         timeout server 30s\n    timeout tunnel 1h\n    retries 3\n    option redispatch\n\
         frontend sockrelay\n    bind 127.0.0.1:{port}\n    default_backend relays\n\
         backend relays\n    balance url_param id\n    hash-type consistent\n    \
         option httpchk GET /healthz\n{servers}"
    );
    let path = dir.path("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    common::proc::haproxy(&path, port)
}

fn paired_on(port: u16) -> u64 {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix("sockrelay_sessions_paired "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn stopping_the_relay_that_holds_a_session_moves_its_channels_to_the_other_behind_haproxy() {
    let dir = TempDir::new("failover");
    let mut relays = vec![Relay::start(&dir, 0), Relay::start(&dir, 0)];
    let lb_port = free_port();
    let _lb = start_haproxy(&dir, lb_port, &[relays[0].port, relays[1].port]);
    let server = OriginServer::start(&dir.path("origin.sock"));
    let origin = Origin::start(&dir, lb_port, &server.path, &["-v"]);
    let dest = Dest::start(&dir, lb_port, &origin.session, &dir.path("d.sock"), &["-v"]);
    let holder = (0..2)
        .find(|&i| paired_on(relays[i].port) == 1)
        .expect("the session is paired on one relay");
    let other = 1 - holder;
    let path = dest.socket.clone();
    let down_p = Arc::new(AtomicU64::new(0));
    let len = 32 * MIB;
    let down = {
        let (p, pr) = (path.clone(), down_p.clone());
        thread::spawn(move || download(p, len, 44, 8 * MIB, pr))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let chat = {
        let (p, st) = (path.clone(), stop.clone());
        thread::spawn(move || chatter(p, st))
    };
    assert!(wait_bytes(&down_p, 2 * MIB, Duration::from_secs(30)));
    // The relay holding the session goes away (a deploy); the other one
    // takes the session, and the channels resume there.
    relays[holder].proc.signal(libc::SIGTERM);
    relays[holder].proc.wait_exit(Duration::from_secs(15));
    let logs = |relays: &[Relay]| {
        format!(
            "--- origin:\n{}\n--- dest:\n{}\n--- other relay:\n{}",
            origin.proc.log_text(),
            dest.proc.log_text(),
            relays[other].proc.log_text()
        )
    };
    assert!(
        wait_for(Duration::from_secs(30), || paired_on(relays[other].port)
            == 1),
        "the session did not move to the other relay\n{}",
        logs(&relays)
    );
    let got = down.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let (answered, err) = chat.join().unwrap();
    assert_eq!(got, format!("ok {len}"), "{}", logs(&relays));
    assert!(
        err.is_none() && answered >= 3,
        "{answered} {err:?}\n{}",
        logs(&relays)
    );
    for log in [origin.proc.log_text(), dest.proc.log_text()] {
        assert!(log.contains("resumed 2 channel(s)"), "{}", logs(&relays));
    }
}
