//! Client and server `TlsSession`s driven against each other in memory,
//! with certificates made by the openssl CLI.

use super::testcerts::*;
use super::*;
use std::path::PathBuf;
use std::sync::Arc;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sockrelay-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Moves ciphertext both ways until neither side has anything to send;
/// returns the plaintext each side read.
fn drive(c: &mut TlsSession, s: &mut TlsSession) -> Result<(Vec<u8>, Vec<u8>), (TlsError, bool)> {
    let mut got_c = Vec::new();
    let mut got_s = Vec::new();
    let mut buf = [0u8; 1000];
    for _ in 0..10_000 {
        let mut moved = false;
        if c.wants_send() {
            let b = c.send_buf().to_vec();
            s.recv(&b);
            c.send_consume(b.len());
            moved = true;
        }
        while let Read::Data(n) = s.read(&mut buf).map_err(|e| (e, false))? {
            got_s.extend_from_slice(&buf[..n]);
        }
        if s.wants_send() {
            let b = s.send_buf().to_vec();
            c.recv(&b);
            s.send_consume(b.len());
            moved = true;
        }
        while let Read::Data(n) = c.read(&mut buf).map_err(|e| (e, true))? {
            got_c.extend_from_slice(&buf[..n]);
        }
        if !moved && !c.wants_send() && !s.wants_send() {
            return Ok((got_c, got_s));
        }
    }
    panic!("drive did not settle");
}

struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn pki(tag: &str, kind: KeyKind) -> Pki {
    let dir = tmpdir(tag);
    let ca = make_ca(&dir, "ca");
    let (cert, key) = make_leaf(
        &dir,
        "ca",
        "relay",
        &["DNS:relay.test", "IP:127.0.0.1"],
        kind,
        30,
    );
    Pki { dir, ca, cert, key }
}

fn server(p: &Pki, client_ca: Option<PathBuf>) -> TlsSession {
    let st = ServerTls::load(ServerTlsFiles {
        cert: p.cert.clone(),
        key: p.key.clone(),
        client_ca,
    })
    .unwrap();
    TlsSession::server(st.config()).unwrap()
}

fn client(opts: &ClientTlsOptions, host: &str) -> TlsSession {
    TlsSession::client(opts.build().unwrap(), opts.server_name_for(host).unwrap()).unwrap()
}

fn echo_roundtrip(c: &mut TlsSession, s: &mut TlsSession) {
    drive(c, s).unwrap();
    assert!(!c.is_handshaking());
    assert_eq!(c.alpn(), Some(ALPN_HTTP11));
    assert_eq!(c.write(b"GET / HTTP/1.1\r\n\r\n").unwrap(), 18);
    let (_, at_s) = drive(c, s).unwrap();
    assert_eq!(at_s, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(s.write(b"HTTP/1.1 101\r\n\r\n").unwrap(), 16);
    let (at_c, _) = drive(c, s).unwrap();
    assert_eq!(at_c, b"HTTP/1.1 101\r\n\r\n");
}

#[test]
fn handshake_and_data_with_each_key_kind() {
    for (i, kind) in [KeyKind::EcdsaP256, KeyKind::Ed25519, KeyKind::Rsa2048]
        .into_iter()
        .enumerate()
    {
        let p = pki(&format!("kinds{i}"), kind);
        let opts = ClientTlsOptions {
            ca_file: Some(p.ca.clone()),
            ..Default::default()
        };
        let mut c = client(&opts, "relay.test");
        let mut s = server(&p, None);
        echo_roundtrip(&mut c, &mut s);
        // By IP address too (the certificate names 127.0.0.1).
        let mut c = client(&opts, "127.0.0.1");
        let mut s = server(&p, None);
        echo_roundtrip(&mut c, &mut s);
        let _ = std::fs::remove_dir_all(&p.dir);
    }
}

#[test]
fn tls12_only_client_works() {
    let p = pki("tls12", KeyKind::EcdsaP256);
    let mut roots = rustls::RootCertStore::empty();
    for c in config::load_certs(&p.ca).unwrap() {
        roots.add(c).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("relay.test").unwrap();
    let mut c = TlsSession::client(Arc::new(cfg), name).unwrap();
    let mut s = server(&p, None);
    drive(&mut c, &mut s).unwrap();
    assert_eq!(c.write(b"hi").unwrap(), 2);
    assert_eq!(drive(&mut c, &mut s).unwrap().1, b"hi");
    let _ = std::fs::remove_dir_all(&p.dir);
}

fn client_error(opts: &ClientTlsOptions, host: &str, p: &Pki) -> String {
    let mut c = client(opts, host);
    let mut s = server(p, None);
    match drive(&mut c, &mut s) {
        Err((e, true)) => {
            assert!(e.is_permanent(), "{e:?}");
            e.to_string()
        }
        other => panic!("expected a client-side failure, got {other:?}"),
    }
}

#[test]
fn verification_failures_are_named() {
    let p = pki("verify", KeyKind::EcdsaP256);
    let other_ca = make_ca(&p.dir, "other");
    let wrong_ca = ClientTlsOptions {
        ca_file: Some(other_ca),
        ..Default::default()
    };
    assert_eq!(
        client_error(&wrong_ca, "relay.test", &p),
        "certificate verify failed: unknown issuer"
    );

    let right = ClientTlsOptions {
        ca_file: Some(p.ca.clone()),
        ..Default::default()
    };
    let e = client_error(&right, "elsewhere.test", &p);
    assert!(
        e.starts_with("certificate verify failed: name mismatch"),
        "{e}"
    );
    assert!(e.contains("elsewhere.test"), "{e}");

    // --tls-server-name fixes the name mismatch.
    let renamed = ClientTlsOptions {
        ca_file: Some(p.ca.clone()),
        server_name: Some("relay.test".into()),
        ..Default::default()
    };
    let mut c = client(&renamed, "elsewhere.test");
    let mut s = server(&p, None);
    echo_roundtrip(&mut c, &mut s);

    let (cert, key) = make_leaf(
        &p.dir,
        "ca",
        "old",
        &["DNS:relay.test"],
        KeyKind::EcdsaP256,
        0,
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let expired = Pki {
        dir: p.dir.clone(),
        ca: p.ca.clone(),
        cert,
        key,
    };
    let e = client_error(&right, "relay.test", &expired);
    assert!(e.starts_with("certificate verify failed: expired"), "{e}");
    let _ = std::fs::remove_dir_all(&p.dir);
}

#[test]
fn pins_accept_self_signed_and_reject_others() {
    let dir = tmpdir("pins");
    let (cert, key) = make_self_signed(&dir, "selfsigned", "DNS:relay.test");
    let p = Pki {
        dir: dir.clone(),
        ca: cert.clone(),
        cert: cert.clone(),
        key,
    };
    let want = openssl_pin(&cert);
    // Our DER walk agrees with openssl.
    let der = config::load_certs(&cert).unwrap().remove(0);
    assert_eq!(pin::pin_of(&der).unwrap().to_string(), want);

    let pinned = ClientTlsOptions {
        pins: pin::parse_pins(&want).unwrap(),
        ..Default::default()
    };
    // The pin replaces chain and name checks.
    let mut c = client(&pinned, "any-name.test");
    let mut s = server(&p, None);
    echo_roundtrip(&mut c, &mut s);

    let wrong = ClientTlsOptions {
        pins: pin::parse_pins("sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap(),
        ..Default::default()
    };
    let e = client_error(&wrong, "relay.test", &p);
    assert_eq!(
        e,
        format!("certificate verify failed: pin mismatch (the relay's key is {want})")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate() {
    let p = pki("mtls", KeyKind::EcdsaP256);
    let (ccert, ckey) = make_leaf(
        &p.dir,
        "ca",
        "client",
        &["DNS:client.test"],
        KeyKind::Ed25519,
        30,
    );
    let with = ClientTlsOptions {
        ca_file: Some(p.ca.clone()),
        cert: Some(ccert),
        key: Some(ckey),
        ..Default::default()
    };
    let mut c = client(&with, "relay.test");
    let mut s = server(&p, Some(p.ca.clone()));
    echo_roundtrip(&mut c, &mut s);

    let without = ClientTlsOptions {
        ca_file: Some(p.ca.clone()),
        ..Default::default()
    };
    let mut c = client(&without, "relay.test");
    let mut s = server(&p, Some(p.ca.clone()));
    // TLS 1.3: the client believes the handshake done before the server
    // has checked; the server's refusal arrives as an alert on its next read.
    let r = drive(&mut c, &mut s);
    let (e, at_client) = r.expect_err("server must refuse");
    assert!(!at_client, "server side fails first: {e}");
    assert!(e.to_string().contains("no certificate"), "{e}");
    let alert = s.send_buf().to_vec();
    assert!(!alert.is_empty(), "the server sends an alert");
    c.recv(&alert);
    let mut buf = [0u8; 64];
    let ce = c.read(&mut buf).expect_err("client sees the alert");
    assert!(
        ce.to_string().contains("client certificate is required"),
        "{ce}"
    );
    let _ = std::fs::remove_dir_all(&p.dir);
}

#[test]
fn bulk_data_in_small_reads_and_idle_holds_no_buffers() {
    let p = pki("bulk", KeyKind::EcdsaP256);
    let opts = ClientTlsOptions {
        ca_file: Some(p.ca.clone()),
        ..Default::default()
    };
    let mut c = client(&opts, "relay.test");
    let mut s = server(&p, None);
    drive(&mut c, &mut s).unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 777];
    for _ in 0..100_000 {
        if sent < data.len() {
            sent += c.write(&data[sent..]).unwrap();
        }
        // Ciphertext in odd-sized pieces through recv_buf/recv_commit.
        while c.wants_send() {
            let piece = c.send_buf().len().min(3000);
            let chunk = c.send_buf()[..piece].to_vec();
            let space = s.recv_buf();
            let n = space.len().min(chunk.len());
            if n == 0 {
                break;
            }
            space[..n].copy_from_slice(&chunk[..n]);
            s.recv_commit(n);
            c.send_consume(n);
            while let Read::Data(k) = s.read(&mut buf).unwrap() {
                got.extend_from_slice(&buf[..k]);
            }
        }
        if got.len() == data.len() {
            break;
        }
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    assert!(c.holds_no_buffers() && s.holds_no_buffers());

    // close_notify reaches the other side as EOF.
    c.close().unwrap();
    let b = c.send_buf().to_vec();
    c.send_consume(b.len());
    s.recv(&b);
    assert_eq!(s.read(&mut buf).unwrap(), Read::Eof);
    let _ = std::fs::remove_dir_all(&p.dir);
}

#[test]
fn garbage_is_a_protocol_error_not_a_panic() {
    let p = pki("garbage", KeyKind::EcdsaP256);
    let mut s = server(&p, None);
    s.recv(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = [0u8; 64];
    let e = s.read(&mut buf).unwrap_err();
    assert!(matches!(e, TlsError::Protocol(_)), "{e:?}");
    // An alert is queued for the peer, and the session stays failed.
    assert!(s.wants_send());
    assert!(s.read(&mut buf).is_err());
    let _ = std::fs::remove_dir_all(&p.dir);
}

#[test]
fn reload_keeps_the_old_config_when_files_are_broken() {
    let p = pki("reload", KeyKind::EcdsaP256);
    let mut st = ServerTls::load(ServerTlsFiles {
        cert: p.cert.clone(),
        key: p.key.clone(),
        client_ca: None,
    })
    .unwrap();
    let old = st.config();
    std::fs::write(&p.cert, b"not a certificate").unwrap();
    let e = st.reload().unwrap_err();
    assert!(e.to_string().contains("no PEM certificate"), "{e}");
    assert!(Arc::ptr_eq(&old, &st.config()));
    // A key that does not match the certificate is refused too.
    let (c2, _k2) = make_leaf(
        &p.dir,
        "ca",
        "relay2",
        &["DNS:relay.test"],
        KeyKind::EcdsaP256,
        30,
    );
    std::fs::copy(&c2, &p.cert).unwrap();
    assert!(st.reload().is_err());
    assert!(Arc::ptr_eq(&old, &st.config()));
    // Good files are taken.
    let (c3, k3) = make_leaf(
        &p.dir,
        "ca",
        "relay3",
        &["DNS:relay.test"],
        KeyKind::Ed25519,
        30,
    );
    std::fs::copy(&c3, &p.cert).unwrap();
    std::fs::copy(&k3, &p.key).unwrap();
    st.reload().unwrap();
    assert!(!Arc::ptr_eq(&old, &st.config()));
    let _ = std::fs::remove_dir_all(&p.dir);
}

#[test]
fn system_roots_honour_ssl_cert_file_and_dir() {
    // One test owns these variables (tests in this binary run in threads).
    let p = pki("sysroots", KeyKind::EcdsaP256);
    std::env::set_var("SSL_CERT_FILE", &p.ca);
    std::env::remove_var("SSL_CERT_DIR");
    assert_eq!(config::system_roots().unwrap().len(), 1);
    let opts = ClientTlsOptions::default();
    let mut c = client(&opts, "relay.test");
    let mut s = server(&p, None);
    echo_roundtrip(&mut c, &mut s);
    std::env::set_var("SSL_CERT_FILE", p.dir.join("missing.pem"));
    let e = config::system_roots().unwrap_err();
    assert!(e.to_string().contains("SSL_CERT_FILE"), "{e}");
    let cadir = p.dir.join("cadir");
    std::fs::create_dir_all(&cadir).unwrap();
    std::fs::copy(&p.ca, cadir.join("abcd1234.0")).unwrap();
    std::env::remove_var("SSL_CERT_FILE");
    std::env::set_var("SSL_CERT_DIR", &cadir);
    assert_eq!(config::system_roots().unwrap().len(), 1);
    std::env::remove_var("SSL_CERT_DIR");
    let _ = std::fs::remove_dir_all(&p.dir);
}

#[test]
fn write_goes_on_while_received_data_waits_unread() {
    // Regression: a write used to stop at the first undelivered record and
    // encrypt nothing, which the transport reported as "write zero".
    let p = pki("bidir", KeyKind::EcdsaP256);
    let opts = ClientTlsOptions {
        ca_file: Some(p.ca.clone()),
        ..Default::default()
    };
    let mut c = client(&opts, "relay.test");
    let mut s = server(&p, None);
    drive(&mut c, &mut s).unwrap();
    assert_eq!(c.write(&[1u8; 40_000]).unwrap(), 40_000);
    let b = c.send_buf().to_vec();
    c.send_consume(b.len());
    s.recv(&b);
    // The server has not read anything yet, and writes.
    assert_eq!(s.write(b"answer").unwrap(), 6);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Read::Data(n) = s.read(&mut buf).unwrap() {
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got.len(), 40_000);
    let _ = std::fs::remove_dir_all(&p.dir);
}
