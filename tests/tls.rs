//! wss:// with real processes: a real ssh-agent forwarded through a plain
//! relay behind a real HAProxy terminating TLS (`bind … ssl crt …`), the
//! join string carrying "TLS" (`sockrelays://`), and verification failures
//! (wrong CA, name mismatch, pin mismatch) that end the client promptly
//! with a clear error and exit code 1, without retrying.
#![cfg(feature = "tls")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::clients::*;
use common::tls::*;

const SOME_SESSION: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

#[test]
fn ssh_agent_over_wss_through_haproxy_terminating_tls() {
    let dir = TempDir::new("tls-agent");
    let p = pki(&dir);
    let relay = Relay::start(&dir, 0);
    let (_haproxy, port) = haproxy_tls(&dir, &p.combined, relay.port);
    let (_agent, agent_sock, key) = agent_with_key(&dir, "sockrelay-over-tls");
    let url = format!("wss://localhost:{port}");
    let ca = p.ca.to_str().unwrap();
    let (_origin, vars) = origin(
        &dir,
        &["--ca-file", ca, &url, agent_sock.to_str().unwrap()],
        &[],
    )
    .unwrap_or_else(|log| panic!("origin failed: {log}"));
    let join = var(&vars, "SOCKRELAY_JOIN").to_string();
    assert!(
        join.starts_with(&format!("sockrelays://localhost:{port}/")),
        "{join}"
    );

    // The dest needs only the join string (and the CA) to use TLS.
    let dsock = dir.path("dest-agent.sock");
    let d = dest(
        &dir,
        &["--ca-file", ca, dsock.to_str().unwrap()],
        &[("SOCKRELAY_JOIN", &join)],
    );
    assert!(
        wait_log(&d, "end-to-end encryption established", 15),
        "dest not ready: {}",
        d.log_text()
    );
    let out = with_agent(&dsock, &["ssh-add", "-l"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("sockrelay-over-tls"),
        "{out:?}"
    );
    // A signature through the tunnel: ssh-keygen -Y sign with the agent's key.
    let msg = dir.path("msg.txt");
    std::fs::write(&msg, b"signed over wss").unwrap();
    let pubkey = format!("{}.pub", key.display());
    let out = with_agent(
        &dsock,
        &[
            "ssh-keygen",
            "-Y",
            "sign",
            "-n",
            "file",
            "-f",
            &pubkey,
            msg.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(dir.path("msg.txt.sig").exists());
}

#[test]
fn curl_reaches_healthz_through_the_tls_terminator() {
    let dir = TempDir::new("tls-curl");
    let p = pki(&dir);
    let relay = Relay::start(&dir, 0);
    let (_haproxy, port) = haproxy_tls(&dir, &p.combined, relay.port);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&p.ca)
        .arg(format!("https://localhost:{port}/healthz"))
        .output();
    let Ok(out) = out else {
        panic!("curl is missing");
    };
    assert!(out.status.success(), "{out:?}");
}

fn failing_dest(
    dir: &TempDir,
    port: u16,
    extra: &[&str],
    host: &str,
    env: &[(&str, &str)],
) -> (Option<i32>, String, Duration) {
    let url = format!("wss://{host}:{port}");
    let sock = dir.path(&format!("fail-{}.sock", unique()));
    let mut args: Vec<&str> = extra.to_vec();
    let s = sock.to_str().unwrap().to_string();
    args.extend([url.as_str(), SOME_SESSION, s.as_str()]);
    let mut envs = vec![("SOCKRELAY_TOKEN", TOKEN)];
    envs.extend_from_slice(env);
    let d = dest(dir, &args, &envs);
    must_fail(d, Duration::from_secs(15))
}

#[test]
fn wrong_ca_name_mismatch_and_pin_mismatch_fail_promptly_and_clearly() {
    let dir = TempDir::new("tls-fail");
    let p = pki(&dir);
    let relay = Relay::start(&dir, 0);
    let (_haproxy, port) = haproxy_tls(&dir, &p.combined, relay.port);

    let cases: [(Vec<&str>, &str, &str); 4] = [
        (
            vec!["--ca-file", p.other_ca.to_str().unwrap()],
            "localhost",
            "certificate verify failed: unknown issuer",
        ),
        (
            vec![
                "--ca-file",
                p.ca.to_str().unwrap(),
                "--tls-server-name",
                "relay.elsewhere.test",
            ],
            "127.0.0.1",
            "certificate verify failed: name mismatch",
        ),
        (
            vec![
                "--tls-pin",
                "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            ],
            "localhost",
            "certificate verify failed: pin mismatch",
        ),
        // No --ca-file: the "system" roots, here $SSL_CERT_FILE naming
        // another CA (so the test does not depend on the machine's bundle).
        (
            vec![],
            "localhost",
            "certificate verify failed: unknown issuer",
        ),
    ];
    for (extra, host, want) in cases {
        let env = [("SSL_CERT_FILE", p.other_ca.to_str().unwrap())];
        let (code, log, took) = failing_dest(&dir, port, &extra, host, &env);
        assert_eq!(code, Some(1), "{extra:?}: exit code; log:\n{log}");
        assert!(log.contains(want), "{extra:?}: want {want:?} in:\n{log}");
        assert!(
            !log.contains("reconnecting"),
            "{extra:?}: must not retry:\n{log}"
        );
        assert!(took < Duration::from_secs(10), "{extra:?}: took {took:?}");
    }
    // The right pin alone (no CA) is enough, and the name is not checked.
    let pin = sockrelay::tls::testcerts::openssl_pin(&p.cert);
    let url = format!("wss://127.0.0.1:{port}");
    let (origin_proc, vars) = origin(
        &dir,
        &[
            "--tls-pin",
            &pin,
            "--tls-server-name",
            "whatever.test",
            &url,
            "/nonexistent.sock",
        ],
        &[],
    )
    .unwrap_or_else(|log| panic!("pinned origin failed: {log}"));
    assert!(var(&vars, "SOCKRELAY_JOIN").starts_with("sockrelays://127.0.0.1:"));
    drop(origin_proc);
}

#[test]
fn nginx_terminates_tls_and_routes_by_session_id_to_two_relays() {
    let dir = TempDir::new("tls-nginx");
    let p = pki(&dir);
    let relays = [Relay::start(&dir, 0), Relay::start(&dir, 0)];
    let ports: Vec<u16> = relays.iter().map(|r| r.port).collect();
    let (_nginx, port) = nginx_tls(&dir, &p.cert, &p.key, &ports);
    let url = format!("wss://localhost:{port}");
    let ca = p.ca.to_str().unwrap();
    let echo = EchoServer::start(&dir.path("echo.sock"));
    // Twelve origins: with consistent hashing on random ids both relays
    // get some (all on one: probability 2 * 2^-12).
    let mut origins = Vec::new();
    for _ in 0..12 {
        let (o, vars) = origin(
            &dir,
            &["--ca-file", ca, &url, echo.path.to_str().unwrap()],
            &[],
        )
        .unwrap_or_else(|log| panic!("origin via nginx failed: {log}"));
        origins.push((o, var(&vars, "SOCKRELAY_JOIN").to_string()));
    }
    let (a, b) = (
        metric(ports[0], "sockrelay_sessions"),
        metric(ports[1], "sockrelay_sessions"),
    );
    assert_eq!(a + b, 12, "sessions per relay: {a} + {b}");
    assert!(a > 0 && b > 0, "nginx spread the sessions: {a} + {b}");
    // Dests joining through nginx meet their origins on the same relay.
    for (i, (_, join)) in origins.iter().take(3).enumerate() {
        let dsock = dir.path(&format!("nginx-dest-{i}.sock"));
        let d = dest(
            &dir,
            &["--ca-file", ca, dsock.to_str().unwrap()],
            &[("SOCKRELAY_JOIN", join)],
        );
        assert!(
            wait_log(&d, "end-to-end encryption established", 15),
            "{}",
            d.log_text()
        );
        let data = pattern(i as u64, 50_000);
        assert!(echo_roundtrip(&dsock, data.clone()) == data);
    }
}

#[test]
fn client_certificates_through_haproxy_requiring_them() {
    let dir = TempDir::new("tls-mtls");
    let p = pki(&dir);
    let (ccert, ckey) = client_cert(&dir, sockrelay::tls::testcerts::KeyKind::Ed25519);
    let relay = Relay::start(&dir, 0);
    let opts = format!("ca-file {} verify required", p.ca.display());
    let (_haproxy, port) = haproxy_tls_opts(&dir, &p.combined, relay.port, &opts);
    let url = format!("wss://localhost:{port}");
    let ca = p.ca.to_str().unwrap();
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let (_o, vars) = origin(
        &dir,
        &[
            "--ca-file",
            ca,
            "--tls-cert",
            ccert.to_str().unwrap(),
            "--tls-key",
            ckey.to_str().unwrap(),
            &url,
            echo.path.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap_or_else(|log| panic!("origin with a client certificate failed: {log}"));
    assert!(var(&vars, "SOCKRELAY_JOIN").starts_with("sockrelays://"));
    // Without a certificate the terminator refuses the handshake: a clear
    // error, exit 1, no retry.
    let (code, log, took) = failing_dest(&dir, port, &["--ca-file", ca], "localhost", &[]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("TLS handshake refused by the peer"), "{log}");
    assert!(!log.contains("reconnecting"), "{log}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
