//! Security behaviour of the real binaries (relay, origin, dest) on
//! loopback: generated tokens and the join string, short-token warning,
//! origin-controlled limits (`--max-channels`, `--max-concurrent`,
//! `--allow-dest`) with the dest-side messages, wrong tokens, and secrets
//! kept off `/proc/<pid>/cmdline`. Every wait is bounded.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::clients::{
    connect, echo_roundtrip, pattern, unique, wait_for, EchoServer, Proc, TempDir, DEST, ORIGIN,
    TOKEN,
};
use common::Relay;

const WAIT: Duration = Duration::from_secs(15);
const E2E_READY: &str = "end-to-end encryption established";

/// A client process with its stdout collected in the background.
struct Client {
    proc: Proc,
    stdout: Arc<Mutex<String>>,
}

impl Client {
    /// Spawn `bin` with `args`, no inherited token or join string, `env`
    /// added, and `stdin` (if any) written to its standard input.
    fn spawn(
        dir: &TempDir,
        bin: &str,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Client {
        let log = dir.path(&format!("client-{}.log", unique()));
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_remove("SOCKRELAY_TOKEN")
            .env_remove("SOCKRELAY_JOIN")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        if let Some(text) = stdin {
            let mut w = child.stdin.take().unwrap();
            w.write_all(text.as_bytes()).unwrap();
            // Dropped: EOF.
        }
        let out = child.stdout.take().unwrap();
        let stdout = Arc::new(Mutex::new(String::new()));
        let acc = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let mut s = acc.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Client {
            proc: Proc { child, log },
            stdout,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn log(&self) -> String {
        self.proc.log_text()
    }

    /// Wait for `needle` in the log; panic with the log otherwise.
    fn expect_log(&self, needle: &str) {
        assert!(
            self.proc.wait_log(needle, WAIT),
            "{needle:?} not logged:\n{}",
            self.log()
        );
    }

    /// Wait until stdout holds `needle`; returns all of stdout.
    fn expect_stdout(&self, needle: &str) -> String {
        assert!(
            wait_for(WAIT, || self.stdout().contains(needle)),
            "no {needle:?} on stdout; stdout: {:?}; log:\n{}",
            self.stdout(),
            self.log()
        );
        self.stdout()
    }

    fn cmdline(&self) -> String {
        let raw = fs::read(format!("/proc/{}/cmdline", self.proc.pid())).unwrap();
        String::from_utf8_lossy(&raw).replace('\0', " ")
    }
}

/// An origin on `socket` through the relay on `port`; waits for its
/// session line and returns it with the session id.
fn origin(
    dir: &TempDir,
    port: u16,
    socket: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> (Client, String) {
    let p = port.to_string();
    let mut args = extra.to_vec();
    args.extend(["127.0.0.1", &p, socket.to_str().unwrap()]);
    let c = Client::spawn(dir, ORIGIN, &args, env, stdin);
    let out = c.expect_stdout("; export SOCKRELAY_SESSION;\n");
    let session = out
        .lines()
        .find_map(|l| l.strip_prefix("SOCKRELAY_SESSION="))
        .and_then(|r| r.split(';').next())
        .unwrap()
        .to_string();
    (c, session)
}

/// A dest (classic form HOST PORT SESSION SOCKET, plus `extra` before).
fn dest(
    dir: &TempDir,
    port: u16,
    session: &str,
    socket: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> Client {
    let p = port.to_string();
    let mut args = extra.to_vec();
    args.extend(["127.0.0.1", &p, session, socket.to_str().unwrap()]);
    Client::spawn(dir, DEST, &args, env, stdin)
}

/// A dest given only extra arguments and SOCKET (join string forms).
fn dest_join(
    dir: &TempDir,
    socket: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> Client {
    let mut args = extra.to_vec();
    args.push(socket.to_str().unwrap());
    Client::spawn(dir, DEST, &args, env, stdin)
}

/// The eval lines as a POSIX shell sees them: `sh` evaluates them and
/// prints the variables (given on its stdin, not its command line).
fn eval_vars(lines: &str, vars: &[&str]) -> Vec<String> {
    let script = vars
        .iter()
        .map(|v| format!("printf '%s\\n' \"${v}\";"))
        .collect::<String>();
    let mut sh = Command::new("sh")
        .args(["-c", &format!("eval \"$(cat)\"; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sh.stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = sh.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// One echoed round trip of `n` bytes through the dest's socket.
fn echo_ok(socket: &Path, seed: u64, n: usize) {
    let data = pattern(seed, n);
    assert!(echo_roundtrip(socket, data.clone()) == data, "echo differs");
}

/// Connect to the dest's socket, send a byte, and read: a refused channel
/// is closed by the dest, so this sees EOF (or a reset) and no data.
fn refused_connection(socket: &Path) -> bool {
    let mut s = connect(socket);
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(b"x");
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    }
}

fn assert_secret_absent(what: &str, text: &str, secret: &str) {
    assert!(
        !text.contains(secret),
        "{what} contains the secret:\n{text}"
    );
}

#[test]
fn generated_token_and_join_string_via_env() {
    let dir = TempDir::new("gen");
    let relay = Relay::start(&[]);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let (o, session) = origin(&dir, relay.port(), &echo.path, &[], &[], None);
    let out = o.expect_stdout("; export SOCKRELAY_JOIN;\n");
    // Three eval lines, in this order, and nothing else.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines[0],
        format!("SOCKRELAY_SESSION={session}; export SOCKRELAY_SESSION;")
    );
    assert!(
        lines[1].starts_with("SOCKRELAY_TOKEN=") && lines[1].ends_with("; export SOCKRELAY_TOKEN;")
    );
    assert!(
        lines[2].starts_with("SOCKRELAY_JOIN=") && lines[2].ends_with("; export SOCKRELAY_JOIN;")
    );
    let vars = eval_vars(
        &out,
        &["SOCKRELAY_SESSION", "SOCKRELAY_TOKEN", "SOCKRELAY_JOIN"],
    );
    let (token, join) = (vars[1].clone(), vars[2].clone());
    assert_eq!(vars[0], session);
    // 256 bits, base64url without padding.
    assert_eq!(token.len(), 43, "{token}");
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(
        join,
        format!("sockrelay://127.0.0.1:{}/{session}#{token}", relay.port())
    );
    o.expect_log("generated");

    // The dest needs nothing but the join string (from the environment)
    // and its socket.
    let sock = dir.path("d.sock");
    let d = dest_join(&dir, &sock, &[], &[("SOCKRELAY_JOIN", &join)], None);
    d.expect_log(E2E_READY);
    echo_ok(&sock, 1, 100_000);
    echo_ok(&sock, 2, 1);

    for (what, text) in [
        ("origin cmdline", o.cmdline()),
        ("dest cmdline", d.cmdline()),
        ("origin log", o.log()),
        ("dest log", d.log()),
        ("relay log", relay.log()),
    ] {
        assert_secret_absent(what, &text, &token);
    }
    assert!(!d.cmdline().contains("sockrelay://"), "{}", d.cmdline());
    // A generated token is long: no short-token warning; nothing on argv.
    for c in [&o, &d] {
        assert!(!c.log().contains("short"), "{}", c.log());
        assert!(!c.log().contains("ps shows"), "{}", c.log());
    }
}

#[test]
fn join_string_from_file_stdin_and_argv() {
    let dir = TempDir::new("joinf");
    let relay = Relay::start(&[]);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let (o, _) = origin(&dir, relay.port(), &echo.path, &[], &[], None);
    let out = o.expect_stdout("SOCKRELAY_JOIN=");
    let vars = eval_vars(&out, &["SOCKRELAY_JOIN", "SOCKRELAY_TOKEN"]);
    let (join, token) = (vars[0].clone(), vars[1].clone());
    let sock = dir.path("d.sock");
    let file = dir.path("join.txt");
    fs::write(&file, format!("{join}\n")).unwrap();
    let file_arg = file.to_str().unwrap();
    let forms: [(&[&str], Option<&str>, bool); 3] = [
        (&["--join-file", file_arg], None, false),
        (&["--join-file", "-"], Some(&join), false),
        (&[&join], None, true),
    ];
    for (i, (extra, stdin, on_argv)) in forms.into_iter().enumerate() {
        // Only one dest at a time per session.
        let mut d = dest_join(
            &dir,
            &sock,
            extra,
            &[],
            stdin.map(|s| format!("{s}\n")).as_deref(),
        );
        d.expect_log(E2E_READY);
        echo_ok(&sock, 10 + i as u64, 5000);
        let warned = d.log().contains(
            "join string (it carries the token) is on the command line, where ps shows it",
        );
        assert_eq!(warned, on_argv, "{extra:?}: {}", d.log());
        assert_secret_absent("dest log", &d.log(), &token);
        if !on_argv {
            assert_secret_absent("dest cmdline", &d.cmdline(), &token);
        }
        d.proc.signal(libc::SIGTERM);
        assert_eq!(d.proc.wait_exit(WAIT), Some(0), "{}", d.log());
        // The origin has seen it go before the next one joins.
        assert!(
            wait_for(WAIT, || o.log().matches("dest left").count() > i),
            "{}",
            o.log()
        );
    }
}

#[test]
fn short_token_warns_on_both_sides() {
    let dir = TempDir::new("short");
    let relay = Relay::start(&[]);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let short = [("SOCKRELAY_TOKEN", "hunter2")];
    let (o, session) = origin(&dir, relay.port(), &echo.path, &[], &short, None);
    let sock = dir.path("d.sock");
    let d = dest(&dir, relay.port(), &session, &sock, &[], &short, None);
    for c in [&o, &d] {
        c.expect_log("the token is short (under 16 bytes): it can be guessed offline");
    }
    // A warning, not a refusal; a user token is never printed back.
    d.expect_log(E2E_READY);
    echo_ok(&sock, 3, 1000);
    assert!(!o.stdout().contains("SOCKRELAY_TOKEN"), "{}", o.stdout());
    assert!(!o.stdout().contains("hunter2"));
    assert_secret_absent("origin log", &o.log(), "hunter2");
    // A long token: no warning.
    let (o2, _) = origin(
        &dir,
        relay.port(),
        &echo.path,
        &[],
        &[("SOCKRELAY_TOKEN", TOKEN)],
        None,
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(!o2.log().contains("short"), "{}", o2.log());
}

#[test]
fn max_channels_is_per_origin_run() {
    let dir = TempDir::new("maxch");
    let relay = Relay::start(&[]);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let env = [("SOCKRELAY_TOKEN", TOKEN)];
    let (o, session) = origin(
        &dir,
        relay.port(),
        &echo.path,
        &["--max-channels", "2"],
        &env,
        None,
    );
    let sock = dir.path("d.sock");
    let mut d = dest(&dir, relay.port(), &session, &sock, &[], &env, None);
    d.expect_log(E2E_READY);
    echo_ok(&sock, 1, 1000);
    echo_ok(&sock, 2, 1000);
    assert!(refused_connection(&sock));
    d.expect_log("origin refused channel: max-channels 2 reached");
    o.expect_log("refused: max-channels 2 reached");
    // The count is per origin run: a new dest gets no fresh allowance.
    d.proc.signal(libc::SIGTERM);
    assert_eq!(d.proc.wait_exit(WAIT), Some(0));
    o.expect_log("dest left");
    let d2 = dest(&dir, relay.port(), &session, &sock, &[], &env, None);
    d2.expect_log(E2E_READY);
    assert!(refused_connection(&sock));
    d2.expect_log("origin refused channel: max-channels 2 reached");
}

#[test]
fn max_concurrent_refuses_only_while_full() {
    let dir = TempDir::new("maxcc");
    let relay = Relay::start(&[]);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let env = [("SOCKRELAY_TOKEN", TOKEN)];
    let (o, session) = origin(
        &dir,
        relay.port(),
        &echo.path,
        &["-v", "--max-concurrent", "2"],
        &env,
        None,
    );
    let sock = dir.path("d.sock");
    let d = dest(&dir, relay.port(), &session, &sock, &[], &env, None);
    d.expect_log(E2E_READY);
    // Two channels held open (one echoed byte each: open at the origin).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&sock);
        s.write_all(b"a").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"a");
        held.push(s);
    }
    assert!(refused_connection(&sock));
    d.expect_log("origin refused channel: max-concurrent 2 reached");
    o.expect_log("channel 3: refused: max-concurrent 2 reached");
    // The held ones still work.
    for s in &mut held {
        s.write_all(b"b").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"b");
    }
    // Close one (cleanly, both directions): there is room again.
    let mut first = held.remove(0);
    first.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).unwrap();
    drop(first);
    o.expect_log("channel 1: finished");
    echo_ok(&sock, 4, 10_000);
    drop(held);
}

#[test]
fn allow_dest_refuses_other_addresses_and_origin_stays() {
    let dir = TempDir::new("allow");
    let relay = Relay::start(&[]);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let env = [("SOCKRELAY_TOKEN", TOKEN)];
    // 10.0.0.0/8 and fd00::/8 are only compared with the address the relay
    // reports (127.0.0.1); nothing is sent anywhere but loopback.
    let (mut o, session) = origin(
        &dir,
        relay.port(),
        &echo.path,
        &["--allow-dest", "10.0.0.0/8", "--allow-dest", "fd00::/8"],
        &env,
        None,
    );
    let sock = dir.path("d.sock");
    let mut d = dest(&dir, relay.port(), &session, &sock, &[], &env, None);
    assert_eq!(d.proc.wait_exit(WAIT), Some(1), "{}", d.log());
    let why = "origin refused this dest: address 127.0.0.1 not in --allow-dest";
    assert!(d.log().contains(why), "{}", d.log());
    o.expect_log("refusing this dest: address 127.0.0.1 not in --allow-dest");
    assert!(!o.log().contains(E2E_READY), "{}", o.log());
    assert!(!d.log().contains(E2E_READY), "{}", d.log());
    // The origin keeps its session.
    o.expect_log("dest left");
    assert!(o.proc.is_running(), "{}", o.log());

    // An allow-list that covers loopback lets the dest in.
    let (o2, session2) = origin(
        &dir,
        relay.port(),
        &echo.path,
        &[
            "--allow-dest",
            "10.0.0.0/8,127.0.0.0/8",
            "--allow-dest",
            "::1/128",
        ],
        &env,
        None,
    );
    let sock2 = dir.path("d2.sock");
    let d2 = dest(&dir, relay.port(), &session2, &sock2, &[], &env, None);
    d2.expect_log(E2E_READY);
    echo_ok(&sock2, 5, 1000);
    drop(o2);
}

#[test]
fn wrong_token_is_refused_at_the_relay_origin_unaffected() {
    let dir = TempDir::new("wrong");
    let relay = Relay::start(&[]);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let env = [("SOCKRELAY_TOKEN", TOKEN)];
    let (mut o, session) = origin(&dir, relay.port(), &echo.path, &[], &env, None);
    let sock = dir.path("d.sock");
    let bad_token = "not-the-token-but-long-enough";
    let mut bad = dest(
        &dir,
        relay.port(),
        &session,
        &sock,
        &[],
        &[("SOCKRELAY_TOKEN", bad_token)],
        None,
    );
    assert_eq!(bad.proc.wait_exit(WAIT), Some(1), "{}", bad.log());
    assert!(bad.log().contains("wrong token"), "{}", bad.log());
    assert!(bad.log().contains("403"), "{}", bad.log());
    assert!(relay.wait_log("403", WAIT), "{}", relay.log());
    assert_secret_absent("dest log", &bad.log(), bad_token);
    assert_secret_absent("relay log", &relay.log(), bad_token);
    assert_secret_absent("relay log", &relay.log(), TOKEN);
    // The origin never saw it, and serves the right dest.
    assert!(o.proc.is_running());
    assert!(!o.log().contains("dest joined"), "{}", o.log());
    let good = dest(&dir, relay.port(), &session, &sock, &[], &env, None);
    good.expect_log(E2E_READY);
    echo_ok(&sock, 6, 50_000);
}

#[test]
fn secrets_stay_off_every_command_line() {
    let dir = TempDir::new("ps");
    let relay = Relay::start(&[]);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let port = relay.port();
    let mut tokens: Vec<String> = Vec::new();
    let mut clients: Vec<Client> = Vec::new();
    let tok = |i: usize| format!("ps-visibility-token-{i}-0123456789");
    let file = |name: &str, text: &str| {
        let p = dir.path(name);
        fs::write(&p, format!("{text}\n")).unwrap();
        p.to_str().unwrap().to_string()
    };

    // Origin token forms × dest token forms (classic arguments).
    let t = tok(0);
    let (o, s) = origin(
        &dir,
        port,
        &echo.path,
        &[],
        &[("SOCKRELAY_TOKEN", &t)],
        None,
    );
    let d = dest(
        &dir,
        port,
        &s,
        &dir.path("d0.sock"),
        &[],
        &[("SOCKRELAY_TOKEN", &t)],
        None,
    );
    tokens.push(t);
    clients.extend([o, d]);

    let t = tok(1);
    let f = file("t1", &t);
    let (o, s) = origin(&dir, port, &echo.path, &["--token-file", &f], &[], None);
    let d = dest(
        &dir,
        port,
        &s,
        &dir.path("d1.sock"),
        &["--token-file", &f],
        &[],
        None,
    );
    tokens.push(t);
    clients.extend([o, d]);

    let t = tok(2);
    let line = format!("{t}\n");
    let (o, s) = origin(
        &dir,
        port,
        &echo.path,
        &["--token-file", "-"],
        &[],
        Some(&line),
    );
    let d = dest(
        &dir,
        port,
        &s,
        &dir.path("d2.sock"),
        &["--token-file", "-"],
        &[],
        Some(&line),
    );
    tokens.push(t);
    clients.extend([o, d]);

    // Generated tokens, joined through the environment, a file and stdin.
    let mut joins = Vec::new();
    for (i, how) in ["env", "file", "stdin"].into_iter().enumerate() {
        let (o, _) = origin(&dir, port, &echo.path, &[], &[], None);
        let out = o.expect_stdout("SOCKRELAY_JOIN=");
        let vars = eval_vars(&out, &["SOCKRELAY_TOKEN", "SOCKRELAY_JOIN"]);
        let sock = dir.path(&format!("j{i}.sock"));
        let d = match how {
            "env" => dest_join(&dir, &sock, &[], &[("SOCKRELAY_JOIN", &vars[1])], None),
            "file" => {
                let f = file(&format!("j{i}"), &vars[1]);
                dest_join(&dir, &sock, &["--join-file", &f], &[], None)
            }
            _ => dest_join(
                &dir,
                &sock,
                &["--join-file", "-"],
                &[],
                Some(&format!("{}\n", vars[1])),
            ),
        };
        tokens.push(vars[0].clone());
        joins.push(vars[1].clone());
        clients.extend([o, d]);
    }

    // Every dest got in (so each form was really used), then nobody's
    // command line shows any token or join string.
    for (i, c) in clients.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        c.expect_log(E2E_READY);
        let sock = c.cmdline();
        let sock = sock.split_whitespace().last().unwrap();
        echo_ok(Path::new(sock), 20 + i as u64, 100);
    }
    let relay_cmdline = {
        let raw = fs::read(format!("/proc/{}/cmdline", relay.child.id())).unwrap();
        String::from_utf8_lossy(&raw).replace('\0', " ")
    };
    for c in &clients {
        let cl = c.cmdline();
        assert!(!cl.contains("sockrelay://"), "{cl}");
        for t in &tokens {
            assert_secret_absent("cmdline", &cl, t);
            assert_secret_absent("relay cmdline", &relay_cmdline, t);
            assert_secret_absent("log", &c.log(), t);
        }
        for j in &joins {
            assert_secret_absent("cmdline", &cl, j);
        }
    }
    for t in &tokens {
        assert_secret_absent("relay log", &relay.log(), t);
    }
}
