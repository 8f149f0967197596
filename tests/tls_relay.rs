//! The relay speaking TLS itself (`--tls-cert/--tls-key`): origin and dest
//! over wss:// straight to it, curl to https://…/healthz, a plain-text
//! client closed with a log line while TLS sessions go on, client
//! certificates with --tls-client-ca, and SIGHUP certificate reload
//! (existing sessions keep working, new ones get the new certificate, a
//! broken file keeps the old one).
#![cfg(feature = "tls")]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::clients::*;
use common::tls::*;

fn tls_relay(dir: &TempDir, extra: &[&str]) -> (Proc, u16) {
    let log = dir.path(&format!("relay-{}.log", unique()));
    let child = Command::new(RELAY)
        .args(["-p", "0", "-b", "127.0.0.1"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let proc = Proc { child, log };
    let mut port = 0u16;
    let ok = wait_for(Duration::from_secs(10), || {
        let t = proc.log_text();
        if let Some(i) = t.find("listening on 127.0.0.1:") {
            let digits: String = t[i + 23..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if let Ok(n) = digits.parse() {
                port = n;
                return true;
            }
        }
        false
    });
    assert!(ok, "relay did not start: {}", proc.log_text());
    (proc, port)
}

fn chain(
    dir: &TempDir,
    port: u16,
    ca: &str,
    echo: &EchoServer,
    tag: &str,
    extra: &[&str],
) -> (Proc, Proc, std::path::PathBuf) {
    let url = format!("wss://localhost:{port}");
    let mut oargs: Vec<&str> = vec!["--ca-file", ca];
    oargs.extend_from_slice(extra);
    oargs.extend([url.as_str(), echo.path.to_str().unwrap()]);
    let (o, vars) = origin(dir, &oargs, &[]).unwrap_or_else(|log| panic!("origin failed: {log}"));
    let dsock = dir.path(&format!("dest-{tag}.sock"));
    let mut dargs: Vec<&str> = vec!["--ca-file", ca];
    dargs.extend_from_slice(extra);
    dargs.push(dsock.to_str().unwrap());
    let d = dest(
        dir,
        &dargs,
        &[("SOCKRELAY_JOIN", var(&vars, "SOCKRELAY_JOIN"))],
    );
    assert!(
        wait_log(&d, "end-to-end encryption established", 15),
        "{}",
        d.log_text()
    );
    (o, d, dsock)
}

#[test]
fn relay_speaks_tls_and_reloads_its_certificate_on_sighup() {
    let dir = TempDir::new("tls-relay");
    let p = pki(&dir);
    let (relay, port) = tls_relay(
        &dir,
        &[
            "--tls-cert",
            p.cert.to_str().unwrap(),
            "--tls-key",
            p.key.to_str().unwrap(),
        ],
    );
    let ca = p.ca.to_str().unwrap();
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let (_o1, _d1, dsock1) = chain(&dir, port, ca, &echo, "one", &[]);
    let data = pattern(1, 300_000);
    assert!(echo_roundtrip(&dsock1, data.clone()) == data);

    // curl, an independent TLS client, gets /healthz over https.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", ca])
        .arg(format!("https://localhost:{port}/healthz"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{out:?}");

    // Plain text on the TLS port: closed with a log line, others untouched.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    assert!(
        !String::from_utf8_lossy(&sink).contains("200"),
        "plain HTTP must not be served"
    );
    assert!(
        wait_log(&relay, "closed: TLS error: not TLS", 5),
        "{}",
        relay.log_text()
    );
    assert!(echo_roundtrip(&dsock1, data.clone()) == data);

    // A broken certificate file on SIGHUP keeps the old one.
    let good_cert = std::fs::read(&p.cert).unwrap();
    let good_key = std::fs::read(&p.key).unwrap();
    std::fs::write(&p.cert, b"garbage").unwrap();
    relay.signal(libc::SIGHUP);
    assert!(
        wait_log(&relay, "keeping the old TLS certificate", 5),
        "{}",
        relay.log_text()
    );
    let (_o2, _d2, dsock2) = chain(&dir, port, ca, &echo, "two", &[]);
    assert!(echo_roundtrip(&dsock2, pattern(2, 1000)) == pattern(2, 1000));

    // A certificate from another CA: new clients need that CA, the live
    // session keeps working.
    let other = sockrelay::tls::testcerts::make_leaf(
        &dir.0,
        "otherca",
        "relay-new",
        &["DNS:localhost", "IP:127.0.0.1"],
        sockrelay::tls::testcerts::KeyKind::Rsa2048,
        30,
    );
    std::fs::copy(&other.0, &p.cert).unwrap();
    std::fs::copy(&other.1, &p.key).unwrap();
    relay.signal(libc::SIGHUP);
    assert!(
        wait_log(&relay, "reloaded the TLS certificate", 5),
        "{}",
        relay.log_text()
    );
    assert!(
        echo_roundtrip(&dsock1, data.clone()) == data,
        "the live session survives the reload"
    );
    let sock = dir.path("old-ca.sock");
    let url = format!("wss://localhost:{port}");
    let d = dest(
        &dir,
        &[
            "--ca-file",
            ca,
            &url,
            "67e55044-10b1-426f-9247-bb680e5fe0c8",
            sock.to_str().unwrap(),
        ],
        &[("SOCKRELAY_TOKEN", TOKEN)],
    );
    let (code, log, _) = must_fail(d, Duration::from_secs(15));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("certificate verify failed: unknown issuer"),
        "{log}"
    );
    let other_ca = p.other_ca.to_str().unwrap();
    let (_o3, _d3, dsock3) = chain(&dir, port, other_ca, &echo, "three", &[]);
    assert!(echo_roundtrip(&dsock3, pattern(3, 5000)) == pattern(3, 5000));
    let _ = (good_cert, good_key);
}

#[test]
fn relay_requires_client_certificates_with_tls_client_ca() {
    let dir = TempDir::new("tls-relay-mtls");
    let p = pki(&dir);
    let (ccert, ckey) = client_cert(&dir, sockrelay::tls::testcerts::KeyKind::EcdsaP256);
    let ca = p.ca.to_str().unwrap();
    let (relay, port) = tls_relay(
        &dir,
        &[
            "--tls-cert",
            p.cert.to_str().unwrap(),
            "--tls-key",
            p.key.to_str().unwrap(),
            "--tls-client-ca",
            ca,
        ],
    );
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let (_o, _d, dsock) = chain(
        &dir,
        port,
        ca,
        &echo,
        "mtls",
        &[
            "--tls-cert",
            ccert.to_str().unwrap(),
            "--tls-key",
            ckey.to_str().unwrap(),
        ],
    );
    assert!(echo_roundtrip(&dsock, pattern(4, 20_000)) == pattern(4, 20_000));
    let sock = dir.path("nocert.sock");
    let url = format!("wss://localhost:{port}");
    let d = dest(
        &dir,
        &[
            "--ca-file",
            ca,
            &url,
            "67e55044-10b1-426f-9247-bb680e5fe0c8",
            sock.to_str().unwrap(),
        ],
        &[("SOCKRELAY_TOKEN", TOKEN)],
    );
    let (code, log, took) = must_fail(d, Duration::from_secs(15));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("a client certificate is required"), "{log}");
    assert!(took < Duration::from_secs(10));
    assert!(
        wait_log(&relay, "no certificate", 5),
        "the relay logs the reason: {}",
        relay.log_text()
    );
}

#[test]
fn a_stalled_tls_handshake_is_bounded_by_handshake_timeout() {
    let dir = TempDir::new("tls-relay-stall");
    let p = pki(&dir);
    let (relay, port) = tls_relay(
        &dir,
        &[
            "--tls-cert",
            p.cert.to_str().unwrap(),
            "--tls-key",
            p.key.to_str().unwrap(),
            "--handshake-timeout",
            "1",
        ],
    );
    // Half a ClientHello record header, then silence.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&[0x16, 0x03, 0x01]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = std::time::Instant::now();
    let mut b = [0u8; 64];
    let r = s.read(&mut b);
    assert!(matches!(r, Ok(0) | Err(_)), "closed, not answered: {r:?}");
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    // The relay still serves TLS clients.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            p.ca.to_str().unwrap(),
        ])
        .arg(format!("https://127.0.0.1:{port}/healthz"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{out:?}\n{}", relay.log_text());
}

#[test]
fn a_third_party_tls_websocket_client_node_ws_reaches_the_tls_relay() {
    let dir = TempDir::new("tls-relay-node");
    let p = pki(&dir);
    let (relay, port) = tls_relay(
        &dir,
        &[
            "--tls-cert",
            p.cert.to_str().unwrap(),
            "--tls-key",
            p.key.to_str().unwrap(),
        ],
    );
    let modules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/node_modules");
    assert!(
        modules.exists(),
        "run `bash .ci/setup` (npm ci in tests/compat)"
    );
    // Node's TLS is OpenSSL: an independent stack. The original clients'
    // API (?mode=origin) answers the upgrade with a binary start message.
    let script = format!(
        "const WebSocket = require('ws'); const fs = require('fs');\n\
         const ws = new WebSocket('wss://localhost:{port}/?mode=origin&token=node-tls', {{ ca: fs.readFileSync({ca:?}) }});\n\
         const t = setTimeout(() => {{ console.log('timeout'); process.exit(3); }}, 10000);\n\
         ws.on('message', (m) => {{ console.log('start ' + Buffer.from(m).length); clearTimeout(t); ws.close(); process.exit(0); }});\n\
         ws.on('error', (e) => {{ console.log('error ' + e.message); process.exit(2); }});\n",
        ca = p.ca.to_str().unwrap()
    );
    let out = Command::new(std::env::var("COMPAT_NODE").unwrap_or_else(|_| "node".into()))
        .arg("-e")
        .arg(&script)
        .env("NODE_PATH", &modules)
        .output()
        .expect("node (bash .ci/setup installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("start "),
        "{out:?}\n{}",
        relay.log_text()
    );
}

#[test]
fn bulk_data_through_the_tls_relay_both_ways() {
    let dir = TempDir::new("tls-relay-bulk");
    let p = pki(&dir);
    let (_relay, port) = tls_relay(
        &dir,
        &[
            "--tls-cert",
            p.cert.to_str().unwrap(),
            "--tls-key",
            p.key.to_str().unwrap(),
        ],
    );
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let (_o, _d, dsock) = chain(&dir, port, p.ca.to_str().unwrap(), &echo, "bulk", &[]);
    // 8 MiB out and back: the relay decrypts and re-encrypts every byte,
    // under backpressure from the echo's reads.
    let data = pattern(9, 8 << 20);
    let d2 = dsock.clone();
    let dc = data.clone();
    let h = std::thread::spawn(move || echo_roundtrip(&d2, dc));
    let back = match h.join() {
        Ok(b) => b,
        Err(_) => panic!(
            "roundtrip failed\nrelay:\n{}\norigin:\n{}\ndest:\n{}",
            _relay.log_text(),
            _o.log_text(),
            _d.log_text()
        ),
    };
    assert_eq!(back.len(), data.len());
    assert!(back == data);
}

/// At --max-pending the TLS relay answers a new connection with a plaintext
/// fatal alert instead of completing a handshake to send a 503 (README
/// "Deploying"): curl names the alert, the real dest reports a busy relay
/// and keeps retrying (no exit 1: the limit is not permanent), and the
/// relay logs the refusal.
#[test]
fn at_max_pending_a_tls_client_gets_an_alert_not_a_handshake() {
    let dir = TempDir::new("tls-relay-busy");
    let p = pki(&dir);
    let (relay, port) = tls_relay(
        &dir,
        &[
            "--tls-cert",
            p.cert.to_str().unwrap(),
            "--tls-key",
            p.key.to_str().unwrap(),
            "--max-pending",
            "1",
            "--handshake-timeout",
            "60",
        ],
    );
    // The one pending slot: a TCP connection that never says anything.
    let hold = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let curl = || {
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                p.ca.to_str().unwrap(),
            ])
            .arg(format!("https://127.0.0.1:{port}/healthz"))
            .output()
            .expect("curl")
    };
    let mut refused = None;
    assert!(
        wait_for(Duration::from_secs(10), || {
            let out = curl();
            let text = String::from_utf8_lossy(&out.stderr).to_lowercase();
            let hit = !out.status.success() && text.contains("alert internal error");
            if hit {
                refused = Some(text);
            }
            hit
        }),
        "curl was not refused with an alert\n{}",
        relay.log_text()
    );
    eprintln!("curl: {}", refused.unwrap_or_default().trim());
    assert!(
        wait_log(
            &relay,
            "too many pending handshakes (TLS alert, no handshake)",
            5
        ),
        "{}",
        relay.log_text()
    );
    // The real dest: a clear reason, and it retries.
    let dsock = dir.path("busy-dest.sock");
    let url = format!("wss://localhost:{port}");
    let mut d = dest(
        &dir,
        &[
            "--ca-file",
            p.ca.to_str().unwrap(),
            &url,
            "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "busy-relay-test-token-0123456789",
            dsock.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        wait_log(
            &d,
            "the relay refused the connection before the handshake",
            15
        ),
        "{}",
        d.log_text()
    );
    assert!(d.is_running(), "the dest gave up: {}", d.log_text());
    drop(hold);
}
