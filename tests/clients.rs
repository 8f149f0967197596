//! Whole-binary tests of sockrelay-origin and sockrelay-dest through a real
//! sockrelay-relay on loopback.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::clients::*;

/// 64 parallel channels, each echoing a random-sized payload (at most
/// `max`; one is exactly `max`), byte-exact in both directions.
fn echo_64(extra: &[&str], max: usize) {
    let c = Chain::start("echo64", extra);
    let start = Instant::now();
    let threads: Vec<_> = (0..64u64)
        .map(|i| {
            let path = c.dest.socket.clone();
            std::thread::spawn(move || {
                // Log-uniform sizes: mostly small and medium, a few large.
                let r = pattern(i + 1, 8);
                let bits = r[0] as u32 % (max.trailing_zeros() + 1);
                let len = if i == 0 {
                    max
                } else {
                    (u32::from_le_bytes([r[1], r[2], r[3], r[4]]) as usize) & ((1usize << bits) - 1)
                };
                let data = pattern(i + 100, len);
                let got = echo_roundtrip(&path, data.clone());
                assert!(
                    got == data,
                    "channel {i}: {} bytes sent, {} back",
                    data.len(),
                    got.len()
                );
                data.len()
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!(
        "64 channels {extra:?}: {total} bytes each way in {:?}",
        start.elapsed()
    );
}

/// Sizes up to 4 MiB. Plaintext mode: the unoptimised (debug) build of the
/// Noise cipher moves only ~1 MB/s, which would make this test minutes
/// long; the mux, windows and batching under test are the same.
#[test]
fn echo_64_parallel_channels_random_sizes_up_to_4mib() {
    echo_64(&["--insecure-plaintext"], 4 << 20);
}

/// The same through Noise, with sizes up to 256 KiB.
#[test]
fn echo_64_parallel_channels_e2e() {
    echo_64(&[], 256 << 10);
}

/// `--channel-window` on one side only: each side advertises its own
/// window (origin 16 KiB, which cannot grow; dest the 256 KiB initial
/// window, which grows up to the 1 MiB default), each honours the other's,
/// and 16 parallel channels of up to 1 MiB echo byte-exact through the
/// tiny one (a CREDIT every 8 KiB) and the growing one.
#[test]
fn each_side_grants_its_own_channel_window() {
    let dir = TempDir::new("chanwin");
    let relay = Relay::start(&dir, 0);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let origin = Origin::start(
        &dir,
        relay.port,
        &echo.path,
        &["-v", "--channel-window", "16K"],
    );
    let dest = Dest::start(
        &dir,
        relay.port,
        &origin.session,
        &dir.path("dest.sock"),
        &["-v"],
    );
    // The advertised window carries the v2 mark in its low byte and the
    // window-growth mark in bit 8 (mux::GROW_MARK).
    let adv = |w: u32| format!("peer ready, window {}", (w & !0xff) | 0x52 | 0x100);
    assert!(
        dest.proc.wait_log(&adv(16 << 10), Duration::from_secs(10)),
        "dest did not see the origin's 16 KiB window:\n{}",
        dest.proc.log_text()
    );
    assert!(
        origin
            .proc
            .wait_log(&adv(256 << 10), Duration::from_secs(10)),
        "origin did not see the dest's 256 KiB initial window:\n{}",
        origin.proc.log_text()
    );
    let threads: Vec<_> = (0..16u64)
        .map(|i| {
            let path = dest.socket.clone();
            std::thread::spawn(move || {
                let data = pattern(i + 7, (1 << 20) >> (i % 5));
                let got = echo_roundtrip(&path, data.clone());
                assert!(
                    got == data,
                    "channel {i}: {} sent, {} back",
                    data.len(),
                    got.len()
                );
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn half_close_each_direction_is_independent() {
    let dir = TempDir::new("half");
    let relay = Relay::start(&dir, 0);
    // Origin-side server: sends a banner and half-closes at once, then
    // reads the client's data to EOF and answers with its length.
    let srv_path = dir.path("srv.sock");
    let l = std::os::unix::net::UnixListener::bind(&srv_path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"banner").unwrap();
        // No more from the server... except one count after reading.
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(format!(":{}", got.len()).as_bytes()).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        got
    });
    let origin = Origin::start(&dir, relay.port, &srv_path, &["-v"]);
    let dest = Dest::start(
        &dir,
        relay.port,
        &origin.session,
        &dir.path("d.sock"),
        &["-v"],
    );
    let mut c = connect(&dest.socket);
    let mut banner = [0u8; 6];
    c.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"banner");
    // Our direction is still open after reading: send, then half-close.
    c.write_all(&vec![7u8; 300_000]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b":300000");
    assert_eq!(server.join().unwrap().len(), 300_000);
    // Both directions done: both sides forget the channel.
    drop(c);
    for p in [&origin.proc, &dest.proc] {
        assert!(
            p.wait_log("channel 1: finished", Duration::from_secs(5)),
            "{}",
            p.log_text()
        );
    }
}

#[test]
fn stalled_channel_does_not_slow_another_and_memory_stays_bounded() {
    let c = Chain::start("stall", &[]);
    let rtt = |n: usize| {
        let mut s = connect(&c.dest.socket);
        let mut times = Vec::new();
        let mut buf = [0u8; 64];
        for i in 0..n {
            let msg = [i as u8; 64];
            let t = Instant::now();
            s.write_all(&msg).unwrap();
            s.read_exact(&mut buf).unwrap();
            times.push(t.elapsed());
            assert_eq!(buf, msg);
        }
        times.sort();
        times[n / 2]
    };
    let before = rtt(200);
    // A stalled channel: the server never reads it; the client pushes
    // 100 MiB in a thread (it blocks once the windows are full).
    let stalled = connect(&c.dest.socket);
    stalled.set_write_timeout(None).unwrap();
    let mut w = stalled.try_clone().unwrap();
    let pusher = std::thread::spawn(move || {
        let chunk = vec![b'S'; 1 << 20];
        let mut sent = 0usize;
        for _ in 0..100 {
            match w.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(500));
    let during = rtt(200);
    let (ro, rd) = (c.origin.proc.rss(), c.dest.proc.rss());
    eprintln!(
        "64-byte RTT p50: {before:?} before, {during:?} with a stalled channel; RSS origin {} KiB, dest {} KiB",
        ro >> 10,
        rd >> 10
    );
    assert!(
        during < before * 5 + Duration::from_millis(5),
        "stall slowed the other channel"
    );
    assert!(ro < 64 << 20 && rd < 64 << 20, "RSS not bounded");
    // Unblock the pusher: closing our end makes its write fail.
    stalled.shutdown(Shutdown::Both).unwrap();
    drop(stalled);
    let sent = pusher.join().unwrap();
    assert!(sent < 100 << 20, "the stalled channel took {sent} bytes");
}

#[test]
fn origin_socket_missing_closes_client_promptly() {
    let dir = TempDir::new("missing");
    let relay = Relay::start(&dir, 0);
    let origin = Origin::start(&dir, relay.port, &dir.path("nothing.sock"), &[]);
    let dest = Dest::start(&dir, relay.port, &origin.session, &dir.path("d.sock"), &[]);
    let mut c = connect(&dest.socket);
    let t = Instant::now();
    let _ = c.write_all(b"hello");
    let mut buf = Vec::new();
    let r = c.read_to_end(&mut buf);
    assert!(r.is_ok() || r.is_err());
    assert!(buf.is_empty());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    // And the session still works for the next one (nothing broke).
    let mut c2 = connect(&dest.socket);
    let mut b2 = Vec::new();
    let _ = c2.read_to_end(&mut b2);
    assert!(origin.proc.log_text().contains("nothing.sock"));
}

#[test]
fn relay_killed_mid_transfer_then_restarted_on_the_same_port() {
    // Without channel resume (tests/resume.rs has the resuming case).
    let mut c = Chain::start("restart", &["--resume-window", "0"]);
    let port = c.relay.port;
    // A long transfer in flight.
    let path = c.dest.socket.clone();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress2 = progress.clone();
    let inflight = std::thread::spawn(move || {
        let s = connect(&path);
        let mut w = s.try_clone().unwrap();
        let wt = std::thread::spawn(move || {
            let chunk = vec![1u8; 1 << 16];
            for _ in 0..100_000 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let mut r = s;
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0usize;
        while let Ok(k) = r.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
            progress2.store(n, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = r.shutdown(Shutdown::Both);
        let _ = wt.join();
        n
    });
    assert!(wait_for(Duration::from_secs(10), || progress
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0));
    c.relay.proc.signal(libc::SIGKILL);
    assert!(c.relay.proc.wait_exit(Duration::from_secs(5)).is_none());
    // The in-flight channel ends (no resume: it cannot survive the relay).
    let moved = inflight.join().unwrap();
    eprintln!("in-flight channel moved {moved} bytes before the relay died");
    std::thread::sleep(Duration::from_millis(300));
    c.relay = Relay::start(&c.dir, port);
    // New connections work again once origin and dest are back.
    let ok = wait_for(Duration::from_secs(30), || {
        std::os::unix::net::UnixStream::connect(&c.dest.socket).is_ok()
            && echo_roundtrip(&c.dest.socket, b"ping".to_vec()) == b"ping"
    });
    assert!(
        ok,
        "no recovery.\norigin: {}\ndest: {}",
        c.origin.proc.log_text(),
        c.dest.proc.log_text()
    );
}

#[test]
fn dest_socket_is_private_not_clobbered_and_removed_on_sigterm() {
    let c = Chain::start("sock", &[]);
    let mode = std::fs::metadata(&c.dest.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // A second dest on the same path refuses (exit 1) and leaves it alone.
    let mut second = Dest::spawn(
        &c.dir,
        c.relay.port,
        &c.origin.session,
        &c.dest.socket,
        &[],
        TOKEN,
    );
    assert_eq!(second.proc.wait_exit(Duration::from_secs(10)), Some(1));
    assert!(second.proc.log_text().contains("live socket"));
    assert_eq!(echo_roundtrip(&c.dest.socket, b"still".to_vec()), b"still");
    // A non-socket path is refused.
    let file = c.dir.path("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let mut third = Dest::spawn(&c.dir, c.relay.port, &c.origin.session, &file, &[], TOKEN);
    assert_eq!(third.proc.wait_exit(Duration::from_secs(10)), Some(1));
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    // SIGTERM removes the socket.
    let mut dest = c.dest;
    dest.proc.signal(libc::SIGTERM);
    assert_eq!(dest.proc.wait_exit(Duration::from_secs(5)), Some(0));
    assert!(!dest.socket.exists());
}

#[test]
fn stale_dest_socket_is_replaced() {
    let dir = TempDir::new("stale");
    let relay = Relay::start(&dir, 0);
    let echo = EchoServer::start(&dir.path("e.sock"));
    let origin = Origin::start(&dir, relay.port, &echo.path, &[]);
    let path = dir.path("d.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let dest = Dest::start(&dir, relay.port, &origin.session, &path, &[]);
    assert_eq!(echo_roundtrip(&dest.socket, b"x".to_vec()), b"x");
}

#[test]
fn plaintext_mode_works() {
    let c = Chain::start("plain", &["--insecure-plaintext"]);
    let data = pattern(9, 1 << 20);
    assert!(echo_roundtrip(&c.dest.socket, data.clone()) == data);
}

#[test]
fn dest_restart_rejoins_the_same_session() {
    let c = Chain::start("rejoin", &[]);
    assert_eq!(echo_roundtrip(&c.dest.socket, b"one".to_vec()), b"one");
    let Chain {
        dir,
        relay,
        echo,
        origin,
        dest,
    } = c;
    drop(dest);
    let dest = Dest::start(&dir, relay.port, &origin.session, &dir.path("d2.sock"), &[]);
    assert_eq!(echo_roundtrip(&dest.socket, b"two".to_vec()), b"two");
    drop(echo);
}

#[test]
fn refusals_exit_nonzero_with_the_reason() {
    let dir = TempDir::new("refuse");
    let relay = Relay::start(&dir, 0);
    let echo = EchoServer::start(&dir.path("e.sock"));
    let origin = Origin::start(&dir, relay.port, &echo.path, &[]);
    // Wrong token at the dest: 403 → exit 1 "wrong token".
    let mut d = Dest::spawn(
        &dir,
        relay.port,
        &origin.session,
        &dir.path("d.sock"),
        &[],
        "another-token-xxxxxxxx",
    );
    assert_eq!(d.proc.wait_exit(Duration::from_secs(10)), Some(1));
    assert!(
        d.proc.log_text().contains("wrong token"),
        "{}",
        d.proc.log_text()
    );
    assert!(!dir.path("d.sock").exists());
    // Same proposed id with another token: 409 for the second origin.
    let err = Origin::try_start(
        &dir,
        relay.port,
        &echo.path,
        &["--session", &origin.session],
        "different-token-xxxxxxxx",
    )
    .err()
    .expect("refused");
    assert_eq!(err.0, Some(1));
    assert!(
        err.1.contains("relay refused") && err.1.contains("409"),
        "{}",
        err.1
    );
    // Nothing listening: the origin exits 1 at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = Origin::try_start(&dir, port, &echo.path, &[], TOKEN)
        .err()
        .expect("fails");
    assert_eq!(err.0, Some(1));
    // Unknown session at the dest: keeps retrying, says why.
    let d = Dest::spawn(
        &dir,
        relay.port,
        "00000000-0000-4000-8000-000000000000",
        &dir.path("d4.sock"),
        &[],
        TOKEN,
    );
    assert!(d
        .proc
        .wait_log("not found on relay: origin gone?", Duration::from_secs(10)));
    // The token never shows up in any log.
    for entry in std::fs::read_dir(&dir.0).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") {
            let t = std::fs::read_to_string(&p).unwrap_or_default();
            assert!(
                !t.contains(TOKEN) && !t.contains("another-token"),
                "{}",
                p.display()
            );
        }
    }
}

#[test]
fn usage_help_and_version() {
    let uuid = "00000000-0000-4000-8000-000000000000";
    // Without a token the dest has a usage error; the origin generates one
    // (tests/security.rs).
    for (bin, tokenless) in [(ORIGIN, None), (DEST, Some(vec!["h", "1", uuid, "/tmp/x"]))] {
        let out = Command::new(bin).arg("--help").output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--token-file") && help.contains("default"));
        let out = Command::new(bin).arg("--version").output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let out = Command::new(bin)
            .arg("--nonsense")
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let Some(tokenless) = tokenless else { continue };
        let out = Command::new(bin)
            .env_remove("SOCKRELAY_TOKEN")
            .args(&tokenless)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
    }
}

#[test]
fn origin_background_eval_returns_and_keeps_serving() {
    let dir = TempDir::new("bg");
    let relay = Relay::start(&dir, 0);
    let echo = EchoServer::start(&dir.path("e.sock"));
    let script = format!(
        "eval \"$({ORIGIN} --background 127.0.0.1 {} {})\" && echo $SOCKRELAY_SESSION $SOCKRELAY_PID",
        relay.port,
        echo.path.display()
    );
    let t = Instant::now();
    let out = Command::new("sh")
        .args(["-c", &script])
        .env("SOCKRELAY_TOKEN", TOKEN)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut words = text.split_whitespace();
    let session = words.next().expect("session").to_string();
    let pid: i32 = words.next().expect("pid").parse().unwrap();
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the background origin we started.
            unsafe { libc::kill(self.0, libc::SIGTERM) };
        }
    }
    let _k = Kill(pid);
    let dest = Dest::start(&dir, relay.port, &session, &dir.path("d.sock"), &[]);
    assert_eq!(echo_roundtrip(&dest.socket, b"bg".to_vec()), b"bg");
}

#[test]
fn heartbeat_keeps_an_idle_link_and_detects_a_frozen_relay() {
    // Scaled-down intervals: ping after 200 ms idle, dead after 400 ms of
    // silence.
    let c = Chain::start("heartbeat", &["--keepalive", "0.2", "--dead-after", "0.4"]);
    // Idle for many intervals: pings are answered, nothing is dropped.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !c.origin.proc.log_text().contains("silent"),
        "{}",
        c.origin.proc.log_text()
    );
    assert!(
        !c.dest.proc.log_text().contains("silent"),
        "{}",
        c.dest.proc.log_text()
    );
    assert_eq!(echo_roundtrip(&c.dest.socket, b"idle".to_vec()), b"idle");
    // A frozen relay (SIGSTOP): both notice and start reconnecting.
    c.relay.proc.signal(libc::SIGSTOP);
    let noticed = c
        .origin
        .proc
        .wait_log("relay silent", Duration::from_secs(5))
        && c.dest.proc.wait_log("relay silent", Duration::from_secs(5));
    c.relay.proc.signal(libc::SIGCONT);
    assert!(
        noticed,
        "{}\n{}",
        c.origin.proc.log_text(),
        c.dest.proc.log_text()
    );
    // And they come back.
    assert!(wait_for(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&c.dest.socket).is_ok()
            && echo_roundtrip(&c.dest.socket, b"back".to_vec()) == b"back"
    }));
}

/// A name whose first address is `::1` and whose second is 127.0.0.1, as
/// this machine resolves it; None when there is none.
fn dual_stack_loopback_name() -> Option<String> {
    use std::net::ToSocketAddrs;
    ["localhost", "ip6-localhost", "localhost6", "ip6-loopback"]
        .iter()
        .find(|name| {
            let addrs: Vec<_> = match (**name, 1u16).to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(_) => return false,
            };
            addrs
                .first()
                .is_some_and(|a| a.ip().is_loopback() && a.is_ipv6())
                && addrs.iter().any(|a| a.is_ipv4() && a.ip().is_loopback())
        })
        .map(|s| s.to_string())
}

/// Whether `unshare -m` (a private mount namespace, gone with the
/// process) can bind a hosts file of ours over /etc/hosts here.
fn can_mount_private_hosts(hosts: &std::path::Path) -> bool {
    Command::new("unshare")
        .args(["-m", "sh", "-c", "mount --bind \"$0\" /etc/hosts"])
        .arg(hosts)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Bug 4 (issue 8): a relay name resolving to `::1` first and 127.0.0.1
/// second, with the relay on 127.0.0.1 only. The origin used to try the
/// first address alone and exit with "Connection refused"; it must try
/// each in turn and connect. Uses a name of this machine that resolves so,
/// else one defined in a private mount namespace (`unshare -m` and a bind
/// mount over /etc/hosts, for the origin's process only), else skips.
#[test]
fn origin_tries_every_resolved_address() {
    let dir = TempDir::new("dual");
    let relay = Relay::start(&dir, 0);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let hosts = dir.path("hosts");
    let (name, wrapper): (String, Vec<String>) = match dual_stack_loopback_name() {
        Some(name) => (name, vec![]),
        None => {
            std::fs::write(&hosts, "::1 sr-dual-stack\n127.0.0.1 sr-dual-stack\n").unwrap();
            if !can_mount_private_hosts(&hosts) {
                eprintln!(
                    "SKIPPED: no name here resolves to ::1 then 127.0.0.1, and unshare -m \
                     cannot bind a private /etc/hosts"
                );
                return;
            }
            let script = "mount --bind \"$0\" /etc/hosts && exec \"$@\"".to_string();
            let wrapper = vec![
                "-m".into(),
                "sh".into(),
                "-c".into(),
                script,
                hosts.to_string_lossy().into_owned(),
            ];
            ("sr-dual-stack".into(), wrapper)
        }
    };
    eprintln!(
        "relay host name {name:?} (private hosts file: {})",
        !wrapper.is_empty()
    );
    let log = dir.path("origin.log");
    let port = relay.port.to_string();
    let sock = echo.path.to_string_lossy().into_owned();
    let origin_args = ["-v", name.as_str(), port.as_str(), sock.as_str()];
    let mut cmd = if wrapper.is_empty() {
        Command::new(ORIGIN)
    } else {
        let mut c = Command::new("unshare");
        c.args(&wrapper).arg(ORIGIN);
        c
    };
    cmd.args(origin_args)
        .env("SOCKRELAY_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let child = cmd.spawn().unwrap();
    let mut proc = Proc { child, log };
    let mut stdout = proc.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = [0u8; 256];
        let n = stdout.read(&mut line).unwrap_or(0);
        let _ = tx.send(String::from_utf8_lossy(&line[..n]).into_owned());
    });
    let line = rx.recv_timeout(Duration::from_secs(15)).unwrap_or_default();
    let session = line
        .strip_prefix("SOCKRELAY_SESSION=")
        .and_then(|r| r.split(';').next())
        .map(str::to_string);
    let Some(session) = session else {
        let code = proc.wait_exit(Duration::from_secs(5));
        panic!("origin did not connect ({code:?}):\n{}", proc.log_text());
    };
    let text = proc.log_text();
    assert!(
        text.contains("[::1]"),
        "the origin did not try ::1 first:\n{text}"
    );
    let dest = Dest::start(&dir, relay.port, &session, &dir.path("d.sock"), &[]);
    assert_eq!(echo_roundtrip(&dest.socket, b"dual".to_vec()), b"dual");
}

/// Bug 4, second half (issue 8): the relay's name is looked up off the
/// loop. A resolver that never answers (a UDP socket of ours standing in
/// for the name server, through a private /etc/resolv.conf in an
/// `unshare -m` mount namespace) must not keep the origin from its
/// signals: SIGTERM during the lookup ends it at once. Before, the lookup
/// ran inside the loop and the origin sat in getaddrinfo for its whole
/// timeout. Skips where the namespace or the socket cannot be had.
#[test]
fn a_hung_resolver_does_not_block_signals() {
    let dir = TempDir::new("slowdns");
    // A name server that reads queries and never answers.
    let dns = match std::net::UdpSocket::bind("127.0.0.77:53") {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIPPED: cannot bind a fake name server on 127.0.0.77:53: {e}");
            return;
        }
    };
    let resolv = dir.path("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.77\noptions timeout:5 attempts:2\n",
    )
    .unwrap();
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount --bind \"$0\" /etc/resolv.conf"])
        .arg(&resolv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: unshare -m cannot bind a private /etc/resolv.conf here");
        return;
    }
    let log = dir.path("origin.log");
    let sock = dir.path("agent.sock");
    let child = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
        ])
        .arg(&resolv)
        .arg(ORIGIN)
        .args(["-v", "sr-hung-resolver.test", "8080"])
        .arg(&sock)
        .env("SOCKRELAY_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut proc = Proc { child, log };
    // Wait until the origin's query reaches our silent server.
    dns.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut q = [0u8; 512];
    assert!(
        dns.recv_from(&mut q).is_ok(),
        "no DNS query arrived\n{}",
        proc.log_text()
    );
    let asked = Instant::now();
    proc.signal(libc::SIGTERM);
    let code = proc.wait_exit(Duration::from_secs(3));
    eprintln!(
        "origin exited {code:?} {} ms after SIGTERM, during the lookup",
        asked.elapsed().as_millis()
    );
    assert!(
        code.is_some(),
        "the origin did not exit within 3 s of SIGTERM while its lookup hung\n{}",
        proc.log_text()
    );
    assert!(
        proc.log_text().contains("terminating on signal"),
        "{}",
        proc.log_text()
    );
}
