//! HTTP proxies with real processes: a real tinyproxy on loopback, with and
//! without Basic auth. Clients reach the relay through it from the
//! environment (http_proxy for ws://, https_proxy for wss:// in front of
//! HAProxy terminating TLS), bypass it per no_proxy, report a wrong
//! password clearly (exit 1, no retry), and retry a proxy that is down.
// These tests drive the TLS stage; a build without the `tls` feature has none.
#![cfg(feature = "tls")]

mod common;

use std::time::Duration;

use common::clients::*;
use common::tls::*;

const SOME_SESSION: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

fn echo_through(dir: &TempDir, dsock: &std::path::Path) {
    let data = pattern(7, 100_000);
    let back = echo_roundtrip(dsock, data.clone());
    assert!(back == data, "echo through the chain");
    let _ = dir;
}

#[test]
fn ws_through_tinyproxy_with_basic_auth_from_http_proxy() {
    let dir = TempDir::new("proxy-ws");
    let relay = Relay::start(&dir, 0);
    let (_proxy, pport, plog) = tinyproxy(&dir, Some(("alice", "s3cret")));
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let proxy_env = format!("http://alice:s3cret@127.0.0.1:{pport}");
    let env = [("http_proxy", proxy_env.as_str())];
    let url = format!("ws://127.0.0.1:{}", relay.port);
    let (origin_p, vars) = origin(&dir, &[&url, echo.path.to_str().unwrap()], &env)
        .unwrap_or_else(|log| panic!("origin failed: {log}"));
    // The password never reaches the log; the proxy is named without it.
    let olog = origin_p.log_text();
    assert!(
        olog.contains(&format!(
            "through proxy http://alice:***@127.0.0.1:{pport} (from http_proxy)"
        )),
        "{olog}"
    );
    assert!(!olog.contains("s3cret"), "{olog}");
    let dsock = dir.path("dest.sock");
    let d = dest(
        &dir,
        &[dsock.to_str().unwrap()],
        &[("SOCKRELAY_JOIN", var(&vars, "SOCKRELAY_JOIN")), env[0]],
    );
    assert!(
        wait_log(&d, "end-to-end encryption established", 15),
        "{}",
        d.log_text()
    );
    echo_through(&dir, &dsock);
    // tinyproxy saw both CONNECTs to the relay.
    let want = format!("127.0.0.1:{}", relay.port);
    assert!(
        wait_for(Duration::from_secs(5), || plog
            .text()
            .matches("CONNECT")
            .count()
            >= 2),
        "tinyproxy log: {}",
        plog.text()
    );
    assert!(plog.text().contains(&want), "{}", plog.text());
    assert!(!d.log_text().contains("s3cret"));
}

#[test]
fn wss_through_tinyproxy_from_https_proxy_to_a_tls_terminator() {
    let dir = TempDir::new("proxy-wss");
    let p = pki(&dir);
    let relay = Relay::start(&dir, 0);
    let (_haproxy, hport) = haproxy_tls(&dir, &p.combined, relay.port);
    let (_proxy, pport, plog) = tinyproxy(&dir, None);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let proxy_env = format!("127.0.0.1:{pport}");
    // Upper-case HTTPS_PROXY counts for wss (only http_proxy must be lower case).
    let env = [("HTTPS_PROXY", proxy_env.as_str())];
    let url = format!("wss://localhost:{hport}");
    let ca = p.ca.to_str().unwrap();
    let (_o, vars) = origin(
        &dir,
        &["--ca-file", ca, &url, echo.path.to_str().unwrap()],
        &env,
    )
    .unwrap_or_else(|log| panic!("origin failed: {log}"));
    let dsock = dir.path("dest.sock");
    let d = dest(
        &dir,
        &["--ca-file", ca, dsock.to_str().unwrap()],
        &[("SOCKRELAY_JOIN", var(&vars, "SOCKRELAY_JOIN")), env[0]],
    );
    assert!(
        wait_log(&d, "end-to-end encryption established", 15),
        "{}",
        d.log_text()
    );
    echo_through(&dir, &dsock);
    assert!(
        wait_for(Duration::from_secs(5), || plog
            .text()
            .contains(&format!("localhost:{hport}"))),
        "tinyproxy did not see the CONNECT: {}",
        plog.text()
    );
}

#[test]
fn no_proxy_bypasses_a_dead_proxy() {
    let dir = TempDir::new("proxy-bypass");
    let relay = Relay::start(&dir, 0);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    // Nothing listens on the proxy port: only a bypass can work.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let env = [
        ("http_proxy", dead.as_str()),
        ("all_proxy", dead.as_str()),
        ("no_proxy", "example.org, 127.0.0.0/8"),
    ];
    let url = format!("ws://127.0.0.1:{}", relay.port);
    let (_o, vars) = origin(&dir, &[&url, echo.path.to_str().unwrap()], &env)
        .unwrap_or_else(|log| panic!("origin did not bypass the proxy: {log}"));
    let dsock = dir.path("dest.sock");
    let d = dest(
        &dir,
        &[dsock.to_str().unwrap()],
        &[
            ("SOCKRELAY_JOIN", var(&vars, "SOCKRELAY_JOIN")),
            env[0],
            env[2],
        ],
    );
    assert!(
        wait_log(&d, "end-to-end encryption established", 15),
        "{}",
        d.log_text()
    );
    echo_through(&dir, &dsock);
}

#[test]
fn wrong_proxy_password_is_reported_clearly_and_not_retried() {
    let dir = TempDir::new("proxy-407");
    let relay = Relay::start(&dir, 0);
    let (_proxy, pport, _plog) = tinyproxy(&dir, Some(("alice", "s3cret")));
    let sock = dir.path("d.sock");
    let url = format!("ws://127.0.0.1:{}", relay.port);
    for proxy in [
        format!("http://alice:wrong@127.0.0.1:{pport}"),
        format!("http://127.0.0.1:{pport}"),
    ] {
        let d = dest(
            &dir,
            &[
                "--proxy",
                &proxy,
                &url,
                SOME_SESSION,
                sock.to_str().unwrap(),
            ],
            &[("SOCKRELAY_TOKEN", TOKEN)],
        );
        let (code, log, took) = must_fail(d, Duration::from_secs(15));
        assert_eq!(code, Some(1), "{log}");
        // tinyproxy answers 401 where RFC 9110 says 407; either is named.
        assert!(
            log.contains("proxy refused CONNECT: 401 Unauthorized")
                || log.contains("proxy refused CONNECT: 407 Proxy Authentication Required"),
            "{log}"
        );
        assert!(
            !log.contains("wrong"),
            "the password is never logged: {log}"
        );
        assert!(!log.contains("reconnecting"), "{log}");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
}

#[test]
fn a_proxy_that_is_down_is_retried_with_backoff() {
    let dir = TempDir::new("proxy-down");
    let relay = Relay::start(&dir, 0);
    let sock = dir.path("d.sock");
    let pport = free_port();
    let url = format!("ws://127.0.0.1:{}", relay.port);
    let proxy = format!("http://127.0.0.1:{pport}");
    let mut d = dest(
        &dir,
        &[
            "--proxy",
            &proxy,
            &url,
            SOME_SESSION,
            sock.to_str().unwrap(),
        ],
        &[("SOCKRELAY_TOKEN", TOKEN)],
    );
    assert!(
        wait_for(Duration::from_secs(10), || d
            .log_text()
            .matches("reconnecting in")
            .count()
            >= 2),
        "{}",
        d.log_text()
    );
    assert!(
        d.is_running(),
        "a proxy that is down is not a reason to give up"
    );
    // A proxy that accepts and drops the connection is retried too.
    let l = std::net::TcpListener::bind(("127.0.0.1", pport)).unwrap();
    let before = d.log_text().matches("reconnecting in").count();
    let t = std::thread::spawn(move || {
        for _ in 0..2 {
            if let Ok((mut s, _)) = l.accept() {
                // Read the CONNECT request, then close without answering.
                use std::io::Read;
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut req = Vec::new();
                let mut b = [0u8; 512];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                assert!(
                    req.starts_with(b"CONNECT 127.0.0.1:"),
                    "{:?}",
                    String::from_utf8_lossy(&req)
                );
                drop(s);
            }
        }
    });
    assert!(
        wait_for(Duration::from_secs(20), || d
            .log_text()
            .matches("reconnecting in")
            .count()
            >= before + 2),
        "{}",
        d.log_text()
    );
    assert!(
        d.log_text().contains("proxy closed the connection"),
        "{}",
        d.log_text()
    );
    assert!(d.is_running());
    let _ = t.join();
}
