//! The relay binary against a third-party WebSocket implementation
//! (tungstenite) as origin and dest: pairing, byte-exact forwarding,
//! control frames, refusals, limits, liveness, shutdown.

mod common;

use common::clients;
use common::ws::{connect, next_msg, status_of, wait_ping, Ws};

use common::{pattern_at, Relay, Rng, TempDir};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Error as WsError, Message};

/// An origin and a dest paired on a fresh session; both have seen
/// peer-joined (and the origin has answered it).
fn pair(relay: &Relay) -> (Ws, Ws, String) {
    let (mut origin, id) = connect(relay.addr, "/origin", Some("secret-a")).expect("origin");
    let id = id.expect("session header");
    let text = wait_ping(&mut origin, "sockrelay session ");
    assert_eq!(text, format!("sockrelay session {id}"));
    let (mut dest, id2) =
        connect(relay.addr, &format!("/dest?id={id}"), Some("secret-a")).expect("dest");
    assert_eq!(id2.as_deref(), Some(id.as_str()));
    wait_ping(&mut dest, "sockrelay peer-joined ");
    wait_ping(&mut origin, "sockrelay peer-joined ");
    (origin, dest, id)
}

fn close_code(msg: Message) -> (u16, String) {
    match msg {
        Message::Close(Some(cf)) => (u16::from(cf.code), cf.reason.to_string()),
        other => panic!("expected close, got {other:?}"),
    }
}

#[test]
fn health_and_metrics() {
    let relay = Relay::start(&[]);
    assert_eq!(relay.get("/healthz"), (200, "ok\n".to_string()));
    let (status, body) = relay.get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "sockrelay_sessions 0",
        "sockrelay_connections{state=\"origin\"} 0",
        "sockrelay_bytes_forwarded_total{direction=\"origin_to_dest\"} 0",
        "sockrelay_rejects_total{reason=\"unknown_session\"} 0",
        "sockrelay_ping_timeouts_total 0",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    assert_eq!(relay.get("/nowhere").0, 404);
}

#[test]
fn forwards_messages_byte_exact_both_ways() {
    let relay = Relay::start(&[]);
    let (mut origin, mut dest, _) = pair(&relay);
    let sizes = [0usize, 1, 125, 126, 127, 65535, 65536, 1 << 20, 16 << 20];
    // One thread sends while this one reads: big messages do not fit in
    // socket buffers, and the relay does not buffer them either.
    let (tx, rx) = std::sync::mpsc::channel::<(Ws, Message)>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Ws>();
    let sender = std::thread::spawn(move || {
        for (mut ws, msg) in rx {
            ws.send(msg).unwrap();
            back_tx.send(ws).unwrap();
        }
    });
    for (i, &size) in sizes.iter().enumerate() {
        let data = pattern_at(i as u64, 0, size);
        let text: String = data.iter().map(|b| (b'a' + b % 26) as char).collect();
        tx.send((origin, Message::binary(data.clone()))).unwrap();
        assert_eq!(
            next_msg(&mut dest).into_data().as_ref(),
            &data[..],
            "binary {size} origin->dest"
        );
        origin = back_rx.recv().unwrap();
        tx.send((dest, Message::binary(data.clone()))).unwrap();
        assert_eq!(
            next_msg(&mut origin).into_data().as_ref(),
            &data[..],
            "binary {size} dest->origin"
        );
        dest = back_rx.recv().unwrap();
        tx.send((dest, Message::text(text.clone()))).unwrap();
        match next_msg(&mut origin) {
            Message::Text(t) => assert_eq!(t.as_str(), text, "text {size}"),
            other => panic!("expected text, got {other:?}"),
        }
        dest = back_rx.recv().unwrap();
    }
    drop(tx);
    sender.join().unwrap();
    // Metrics count what went through.
    let (_, body) = relay.get("/metrics");
    assert!(body.contains("sockrelay_sessions_paired 1"), "{body}");
    assert!(
        !body.contains("sockrelay_frames_forwarded_total 0\n"),
        "{body}"
    );
}

#[test]
fn forwards_fragmented_messages_and_answers_pings() {
    let relay = Relay::start(&[]);
    let (mut origin, mut dest, _) = pair(&relay);
    // A text message in three fragments, with a ping between fragments.
    let parts = ["héllo ", "fragmented ", "wörld"];
    origin
        .send(Message::Frame(Frame::message(
            parts[0].as_bytes().to_vec(),
            OpCode::Data(Data::Text),
            false,
        )))
        .unwrap();
    origin
        .send(Message::Ping(b"between".to_vec().into()))
        .unwrap();
    origin
        .send(Message::Frame(Frame::message(
            parts[1].as_bytes().to_vec(),
            OpCode::Data(Data::Continue),
            false,
        )))
        .unwrap();
    origin
        .send(Message::Frame(Frame::message(
            parts[2].as_bytes().to_vec(),
            OpCode::Data(Data::Continue),
            true,
        )))
        .unwrap();
    match next_msg(&mut dest) {
        Message::Text(t) => assert_eq!(t.as_str(), parts.concat()),
        other => panic!("expected text, got {other:?}"),
    }
    // The relay answered the origin's ping itself, with the same payload.
    loop {
        match origin.read().unwrap() {
            Message::Pong(p) => {
                assert_eq!(p.as_ref(), b"between");
                break;
            }
            Message::Ping(_) => continue,
            other => panic!("expected pong, got {other:?}"),
        }
    }
    // A large binary message in uneven fragments the other way.
    let data = pattern_at(7, 0, 300_000);
    let cuts = [0, 1, 70_000, 70_001, 250_000, 300_000];
    for w in cuts.windows(2) {
        let op = if w[0] == 0 {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        dest.send(Message::Frame(Frame::message(
            data[w[0]..w[1]].to_vec(),
            op,
            w[1] == data.len(),
        )))
        .unwrap();
    }
    assert_eq!(next_msg(&mut origin).into_data().as_ref(), &data[..]);
}

#[test]
fn origin_close_code_reaches_dest_and_ends_session() {
    let relay = Relay::start(&[]);
    let (mut origin, mut dest, id) = pair(&relay);
    origin
        .close(Some(CloseFrame {
            code: CloseCode::from(4321),
            reason: "done here".into(),
        }))
        .unwrap();
    assert_eq!(
        close_code(next_msg(&mut dest)),
        (4321, "done here".to_string())
    );
    // The relay echoed the origin's close.
    assert_eq!(close_code(next_msg(&mut origin)).0, 4321);
    assert!(relay.wait_log(&format!("session {id}: origin"), Duration::from_secs(5)));
    // The session is gone: a new dest gets 404.
    let err = connect(relay.addr, &format!("/dest?id={id}"), Some("secret-a")).unwrap_err();
    assert_eq!(status_of(err), 404);
}

#[test]
fn dest_leaves_origin_is_told_and_a_second_dest_joins() {
    let relay = Relay::start(&[]);
    let (mut origin, mut dest, id) = pair(&relay);
    dest.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    assert_eq!(close_code(next_msg(&mut dest)).0, 1000);
    let left = wait_ping(&mut origin, "sockrelay peer-left ");
    assert!(left.ends_with(" 1000 bye"), "{left}");
    // Frames the origin sends now go nowhere (no dest).
    origin.send(Message::binary(b"to nobody".to_vec())).unwrap();
    let (mut dest2, _) =
        connect(relay.addr, &format!("/dest?id={id}"), Some("secret-a")).expect("second dest");
    wait_ping(&mut dest2, "sockrelay peer-joined ");
    wait_ping(&mut origin, "sockrelay peer-joined ");
    origin.send(Message::binary(b"to dest 2".to_vec())).unwrap();
    assert_eq!(next_msg(&mut dest2).into_data().as_ref(), b"to dest 2");
    dest2
        .send(Message::binary(b"from dest 2".to_vec()))
        .unwrap();
    assert_eq!(next_msg(&mut origin).into_data().as_ref(), b"from dest 2");
}

#[test]
fn refusals_leave_the_origin_working() {
    let relay = Relay::start(&[]);
    let (mut origin, mut dest, id) = pair(&relay);
    let unknown = "6f1c1f9e-4b7a-4c1e-9a57-0d2a8c0b9b11";
    assert_eq!(
        status_of(
            connect(relay.addr, &format!("/dest?id={unknown}"), Some("secret-a")).unwrap_err()
        ),
        404
    );
    assert_eq!(
        status_of(connect(relay.addr, &format!("/dest?id={id}"), Some("wrong")).unwrap_err()),
        403
    );
    assert_eq!(
        status_of(connect(relay.addr, &format!("/dest?id={id}"), Some("secret-a")).unwrap_err()),
        409
    );
    assert_eq!(
        status_of(connect(relay.addr, "/dest?id=not-a-uuid", Some("secret-a")).unwrap_err()),
        400
    );
    assert_eq!(
        status_of(connect(relay.addr, &format!("/dest?id={id}"), None).unwrap_err()),
        400
    );
    // Someone else proposing the same id with another admission: 409.
    assert_eq!(
        status_of(connect(relay.addr, &format!("/origin?id={id}"), Some("other")).unwrap_err()),
        409
    );
    origin
        .send(Message::binary(b"still here".to_vec()))
        .unwrap();
    assert_eq!(next_msg(&mut dest).into_data().as_ref(), b"still here");
    let log = relay.log();
    assert!(log.contains("403 wrong admission value"), "{log}");
    let (_, body) = relay.get("/metrics");
    for r in [
        "unknown_session\"} 1",
        "wrong_admission\"} 1",
        "dest_taken\"} 1",
        "id_in_use\"} 1",
    ] {
        assert!(body.contains(r), "{r} in {body}");
    }
}

#[test]
fn proposed_id_is_used_and_same_admission_takes_over() {
    let relay = Relay::start(&[]);
    let id = "0b8a1e2c-4c53-4b1e-9f43-3c2b2f1e6a11";
    let (mut origin, got) = connect(relay.addr, &format!("/origin?id={id}"), Some("k")).unwrap();
    assert_eq!(got.as_deref(), Some(id));
    wait_ping(&mut origin, "sockrelay session ");
    let (mut dest, _) = connect(relay.addr, &format!("/dest?id={id}"), Some("k")).unwrap();
    wait_ping(&mut dest, "sockrelay peer-joined ");
    // The same origin reconnects (it knows the admission value).
    let (mut origin2, _) = connect(relay.addr, &format!("/origin?id={id}"), Some("k")).unwrap();
    assert_eq!(close_code(next_msg(&mut origin)).0, 4002);
    assert_eq!(close_code(next_msg(&mut dest)).0, 4003);
    let (mut dest2, _) = connect(relay.addr, &format!("/dest?id={id}"), Some("k")).unwrap();
    wait_ping(&mut dest2, "sockrelay peer-joined ");
    wait_ping(&mut origin2, "sockrelay peer-joined ");
    dest2.send(Message::binary(b"again".to_vec())).unwrap();
    assert_eq!(next_msg(&mut origin2).into_data().as_ref(), b"again");
}

#[test]
fn a_vanished_origin_is_awaited_and_takes_its_session_back() {
    let relay = Relay::start(&[]);
    let id = "3c9f2a10-7d4e-4b8a-9c1d-2e5f6a7b8c9d";
    let (mut origin, _) = connect(relay.addr, &format!("/origin?id={id}"), Some("k")).unwrap();
    wait_ping(&mut origin, "sockrelay session ");
    let (mut dest, _) = connect(relay.addr, &format!("/dest?id={id}"), Some("k")).unwrap();
    wait_ping(&mut dest, "sockrelay peer-joined ");
    wait_ping(&mut origin, "sockrelay peer-joined ");
    // The origin's TCP connection dies without a close frame.
    drop(origin);
    let away = wait_ping(&mut dest, "sockrelay peer-left ");
    assert!(away.contains(" 4001 origin away"), "{away}");
    let (_, body) = relay.get("/metrics");
    assert!(
        body.contains("sockrelay_sessions_awaiting_origin 1\n"),
        "{body}"
    );
    // The session is still there: a second dest is 409, not 404.
    assert_eq!(
        status_of(connect(relay.addr, &format!("/dest?id={id}"), Some("k")).unwrap_err()),
        409
    );
    // The origin is back and takes the session: both hear of the pairing.
    let (mut origin2, got) = connect(relay.addr, &format!("/origin?id={id}"), Some("k")).unwrap();
    assert_eq!(got.as_deref(), Some(id));
    wait_ping(&mut origin2, "sockrelay session ");
    let joined = wait_ping(&mut origin2, "sockrelay peer-joined ");
    let joined_dest = wait_ping(&mut dest, "sockrelay peer-joined ");
    // One pairing change, one seq on both sides.
    let seq = |t: &str| t.split(' ').nth(2).map(str::to_string);
    assert_eq!(seq(&joined), seq(&joined_dest), "{joined} / {joined_dest}");
    origin2.send(Message::binary(b"back".to_vec())).unwrap();
    assert_eq!(next_msg(&mut dest).into_data().as_ref(), b"back");
    dest.send(Message::binary(b"welcome".to_vec())).unwrap();
    assert_eq!(next_msg(&mut origin2).into_data().as_ref(), b"welcome");
    assert!(relay.wait_log(
        &format!("session {id}: origin came back"),
        Duration::from_secs(5)
    ));
}

#[test]
fn a_dest_waits_for_its_origin_until_the_grace_ends() {
    let relay = Relay::start(&["--origin-grace", "1"]);
    let id = "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    let (mut origin, _) = connect(relay.addr, &format!("/origin?id={id}"), Some("k")).unwrap();
    wait_ping(&mut origin, "sockrelay session ");
    drop(origin);
    assert!(wait_gone(&relay));
    // A dest joining meanwhile is not refused: it waits, and is told so.
    let (mut dest, _) = connect(relay.addr, &format!("/dest?id={id}"), Some("k")).unwrap();
    let away = wait_ping(&mut dest, "sockrelay peer-left ");
    assert!(away.contains(" 4001 origin away"), "{away}");
    // The origin does not come back: the dest is told it is gone.
    let start = Instant::now();
    let (code, reason) = close_code(next_msg(&mut dest));
    assert_eq!(code, 4001, "{reason}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        status_of(connect(relay.addr, &format!("/dest?id={id}"), Some("k")).unwrap_err()),
        404
    );
    // --origin-grace 0: a vanished origin ends its session at once.
    let relay = Relay::start(&["--origin-grace", "0"]);
    let (mut origin, _) = connect(relay.addr, &format!("/origin?id={id}"), Some("k")).unwrap();
    wait_ping(&mut origin, "sockrelay session ");
    let (mut dest, _) = connect(relay.addr, &format!("/dest?id={id}"), Some("k")).unwrap();
    wait_ping(&mut dest, "sockrelay peer-joined ");
    drop(origin);
    assert_eq!(close_code(next_msg(&mut dest)).0, 4001);
}

/// Until the relay's metrics show no origin connection.
fn wait_gone(relay: &Relay) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if relay
            .get("/metrics")
            .1
            .contains("sockrelay_connections{state=\"origin\"} 0")
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Real clients: the origin process is SIGKILLed; its dest stays
/// connected and waits; a new origin process with the same session id and
/// token takes the session back, and bytes flow through the same dest
/// socket.
#[test]
fn origin_killed_and_restarted_pairs_again_with_the_waiting_dest() {
    use clients::{echo_roundtrip, wait_for, Dest, EchoServer, Origin};
    let dir = clients::TempDir::new("origin-grace");
    let relay = clients::Relay::start(&dir, 0);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let session = "7e6d5c4b-3a29-4817-a6f5-e4d3c2b1a098";
    let args = ["--session", session];
    let mut origin = Origin::start(&dir, relay.port, &echo.path, &args);
    assert_eq!(origin.session, session);
    let dest = Dest::start(&dir, relay.port, session, &dir.path("dest.sock"), &[]);
    assert_eq!(echo_roundtrip(&dest.socket, b"first".to_vec()), b"first");
    origin.proc.signal(libc::SIGKILL);
    origin.proc.wait_exit(Duration::from_secs(5));
    assert!(dest.proc.wait_log("origin left", Duration::from_secs(10)));
    let origin2 = Origin::start(&dir, relay.port, &echo.path, &args);
    assert_eq!(origin2.session, session);
    let ready = "end-to-end encryption established";
    assert!(
        wait_for(Duration::from_secs(15), || dest
            .proc
            .log_text()
            .matches(ready)
            .count()
            >= 2),
        "dest did not pair again: {}",
        dest.proc.log_text()
    );
    let data = clients::pattern(7, 256 << 10);
    assert_eq!(echo_roundtrip(&dest.socket, data.clone()), data);
    // The dest never lost its relay connection: no 404, no reconnect.
    let log = dest.proc.log_text();
    assert!(!log.contains("not found on relay"), "{log}");
    assert!(!log.contains("reconnecting"), "{log}");
    let relay_log = relay.proc.log_text();
    assert!(relay_log.contains("origin came back"), "{relay_log}");
}

/// Complete a WebSocket handshake by hand, for tests that must send bytes
/// no conforming client would.
fn raw_upgrade(relay: &Relay, path: &str) -> TcpStream {
    raw_upgrade_head(relay, path).0
}

/// As `raw_upgrade`, also returning the response head.
fn raw_upgrade_head(relay: &Relay, path: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sockrelay-Admission: raw\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (s, head)
}

/// Read frames (unmasked, from the relay) until a close; return its code.
fn raw_read_close(s: &mut TcpStream) -> u16 {
    loop {
        let (op, payload) = raw_read_frame(s);
        if op == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[test]
fn unmasked_client_frame_is_closed_with_1002() {
    let relay = Relay::start(&[]);
    let (mut origin, mut dest, _) = pair(&relay);
    let mut bad = raw_upgrade(&relay, "/origin");
    bad.write_all(&[0x82, 0x03, b'a', b'b', b'c']).unwrap(); // binary, no mask
    assert_eq!(raw_read_close(&mut bad), 1002);
    // Reserved bits set, masked: also 1002.
    let mut bad2 = raw_upgrade(&relay, "/origin");
    bad2.write_all(&[0xc2, 0x80, 1, 2, 3, 4]).unwrap();
    assert_eq!(raw_read_close(&mut bad2), 1002);
    origin
        .send(Message::binary(b"unaffected".to_vec()))
        .unwrap();
    assert_eq!(next_msg(&mut dest).into_data().as_ref(), b"unaffected");
}

#[test]
fn slowloris_and_header_floods_cost_nothing_lasting() {
    let relay = Relay::start(&["--handshake-timeout", "1"]);
    let (mut origin, mut dest, _) = pair(&relay);
    // Oversized headers: 431 at once.
    let mut big = TcpStream::connect(relay.addr).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let filler = "x".repeat(20_000);
    let _ = write!(
        big,
        "GET /origin HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n"
    );
    let mut resp = String::new();
    let _ = big.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    // Slow clients: a trickle of header bytes, never finished.
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(relay.addr).unwrap();
            s.write_all(b"GET /origin HTTP/1.1\r\nHost: x\r\n").unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    for round in 0..5 {
        for s in slow.iter_mut() {
            let _ = s.write_all(b"X-Slow: 1\r\n");
        }
        let data = pattern_at(round, 0, 10_000);
        origin.send(Message::binary(data.clone())).unwrap();
        assert_eq!(next_msg(&mut dest).into_data().as_ref(), &data[..]);
        std::thread::sleep(Duration::from_millis(300));
    }
    // After the handshake timeout they are all gone.
    for s in slow.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(10));
    let (_, body) = relay.get("/metrics");
    assert!(body.contains("handshake_timeout\"} 20"), "{body}");
    assert!(body.contains("headers_too_large\"} 1"), "{body}");
    assert!(
        body.contains("sockrelay_connections{state=\"pending\"} 1\n"),
        "{body}"
    );
}

#[test]
fn silent_peers_are_dropped_by_ping_timeout() {
    let relay = Relay::start(&["--ping-interval", "300ms", "--pong-timeout", "300ms"]);
    let (mut origin, mut dest, _) = pair(&relay);
    // A raw client that never reads or answers anything.
    let _mute = raw_upgrade(&relay, "/origin");
    // Live tungstenite peers answer pings while reading; keep them busy.
    let end = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < end {
        origin.send(Message::binary(b"tick".to_vec())).unwrap();
        assert_eq!(next_msg(&mut dest).into_data().as_ref(), b"tick");
        dest.send(Message::binary(b"tock".to_vec())).unwrap();
        assert_eq!(next_msg(&mut origin).into_data().as_ref(), b"tock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, body) = relay.get("/metrics");
    assert!(body.contains("sockrelay_ping_timeouts_total 1\n"), "{body}");
    assert!(body.contains("sockrelay_sessions 1\n"), "{body}");
}

#[test]
fn stalled_dest_bounds_relay_memory_and_loses_nothing() {
    let relay = Relay::start(&[]);
    let (mut origin, mut dest, _) = pair(&relay);
    let rss_before = relay.rss_bytes();
    const CHUNK: usize = 1 << 20;
    let total: u64 = if cfg!(debug_assertions) {
        256 << 20
    } else {
        1 << 30
    };
    let writer = std::thread::spawn(move || {
        let mut sent = 0u64;
        while sent < total {
            origin
                .send(Message::binary(pattern_at(1, sent, CHUNK)))
                .unwrap();
            sent += CHUNK as u64;
        }
        origin
    });
    // The dest does not read for a while: everything piles up in kernel
    // buffers and the relay stops reading the origin.
    std::thread::sleep(Duration::from_secs(2));
    let rss_stalled = relay.rss_bytes();
    let mut got = 0u64;
    while got < total {
        let data = next_msg(&mut dest).into_data();
        assert_eq!(data.len(), CHUNK);
        assert!(
            data.as_ref() == &pattern_at(1, got, CHUNK)[..],
            "corrupt chunk at {got}"
        );
        got += CHUNK as u64;
    }
    let _origin = writer.join().unwrap();
    let rss_after = relay.rss_bytes();
    eprintln!("relay RSS: before {rss_before}, stalled {rss_stalled}, after {rss_after}");
    // Bound: the relay's own buffers (64 KiB per direction) plus allocator
    // slack; nothing proportional to the 1 GiB sent.
    let bound = 8 << 20;
    assert!(
        rss_stalled < rss_before + bound,
        "stalled RSS {rss_stalled} vs {rss_before}"
    );
    assert!(
        rss_after < rss_before + bound,
        "after RSS {rss_after} vs {rss_before}"
    );
}

#[test]
fn sigterm_closes_everyone_with_1001_and_exits() {
    let mut relay = Relay::start(&[]);
    let (mut origin, mut dest, _) = pair(&relay);
    relay.signal(libc::SIGTERM);
    let start = Instant::now();
    assert_eq!(close_code(next_msg(&mut origin)).0, 1001);
    assert_eq!(close_code(next_msg(&mut dest)).0, 1001);
    let status = relay
        .wait_exit(Duration::from_secs(2))
        .expect("relay exits");
    assert!(status.success(), "{status:?}");
    assert!(start.elapsed() < Duration::from_millis(1500));
    assert!(TcpStream::connect(relay.addr).is_err());
}

#[test]
fn sigterm_says_move_then_closes_once_the_queued_data_is_out() {
    let mut relay = Relay::start(&["--drain-timeout", "5"]);
    let (mut origin, mut dest, _) = pair(&relay);
    // A message in flight toward a dest that is not reading yet: part of
    // it is in the relay's buffer, part still in the origin's socket.
    let data = pattern_at(3, 0, 2 << 20);
    origin.send(Message::binary(data.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    relay.signal(libc::SIGTERM);
    let start = Instant::now();
    let (mut moved, mut got, mut code) = (None, None, None);
    while code.is_none() {
        match dest.read().expect("read") {
            Message::Ping(p) => {
                let text = String::from_utf8_lossy(&p).to_string();
                if text.starts_with("sockrelay move ") {
                    moved = Some(text);
                }
            }
            Message::Binary(b) => got = Some(b.to_vec()),
            Message::Close(Some(cf)) => code = Some(u16::from(cf.code)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        moved.as_deref(),
        Some("sockrelay move 250 relay shutting down")
    );
    // The whole message arrived before the close.
    assert!(got.as_deref() == Some(&data[..]), "message cut");
    assert_eq!(code, Some(1001));
    let status = relay
        .wait_exit(Duration::from_secs(5))
        .expect("relay exits");
    assert!(status.success(), "{status:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(TcpStream::connect(relay.addr).is_err());
    assert!(
        relay.log().contains("telling 2 clients to move"),
        "{}",
        relay.log()
    );
}

/// Real clients through a relay that gets SIGTERM: they are told to move,
/// the relay exits well within --drain-timeout, and once a new relay
/// listens on the same port the session pairs again and bytes flow.
#[test]
fn sigterm_moves_real_clients_to_the_next_relay_on_the_same_port() {
    use clients::{echo_roundtrip, wait_for, Dest, EchoServer, Origin};
    let dir = clients::TempDir::new("relay-move");
    let mut relay = clients::Relay::start(&dir, 0);
    let port = relay.port;
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let session = "2f4e6a8c-1b3d-4f5a-8e7c-9d0b1a2c3e4f";
    let origin = Origin::start(&dir, port, &echo.path, &["--session", session]);
    let dest = Dest::start(&dir, port, session, &dir.path("dest.sock"), &[]);
    assert_eq!(echo_roundtrip(&dest.socket, b"before".to_vec()), b"before");
    relay.proc.signal(libc::SIGTERM);
    let start = Instant::now();
    assert_eq!(relay.proc.wait_exit(Duration::from_secs(9)), Some(0));
    // Default --drain-timeout is 10 s; idle links drain at once.
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let relay_log = relay.proc.log_text();
    assert!(relay_log.contains("relay stopped"), "{relay_log}");
    for client in [&origin.proc, &dest.proc] {
        assert!(
            client.wait_log("relay asks us to move", Duration::from_secs(5)),
            "{}",
            client.log_text()
        );
    }
    let relay2 = clients::Relay::start(&dir, port);
    assert_eq!(relay2.port, port);
    let ready = "end-to-end encryption established";
    assert!(
        wait_for(Duration::from_secs(20), || dest
            .proc
            .log_text()
            .matches(ready)
            .count()
            >= 2),
        "dest did not pair again: {}",
        dest.proc.log_text()
    );
    let data = clients::pattern(9, 128 << 10);
    assert_eq!(echo_roundtrip(&dest.socket, data.clone()), data);
}

#[test]
fn session_limit_answers_503() {
    let relay = Relay::start(&["--max-sessions", "2"]);
    let (_o1, _) = connect(relay.addr, "/origin", Some("a")).unwrap();
    let (_o2, _) = connect(relay.addr, "/origin", Some("b")).unwrap();
    assert_eq!(
        status_of(connect(relay.addr, "/origin", Some("c")).unwrap_err()),
        503
    );
    let (_, body) = relay.get("/metrics");
    assert!(body.contains("session_limit\"} 1"), "{body}");
}

#[test]
fn oversized_message_is_closed_with_1009() {
    let relay = Relay::start(&["--max-message", "1M"]);
    let (mut origin, mut dest, _) = pair(&relay);
    origin
        .send(Message::binary(vec![0u8; (1 << 20) + 1]))
        .unwrap();
    assert_eq!(close_code(next_msg(&mut origin)).0, 1009);
    // The session ended with the origin: the dest is told.
    assert_eq!(close_code(next_msg(&mut dest)).0, 4001);
}

#[test]
fn compat_origin_gets_msgpack_start_message() {
    let relay = Relay::start(&[]);
    let (mut origin, _) = connect(relay.addr, "/?mode=origin&token=tok", None).unwrap();
    let start = next_msg(&mut origin).into_data();
    // {type: "start", id: <36-char uuid>} as a msgpack map.
    assert_eq!(start[0], 0x82);
    let text = String::from_utf8_lossy(&start);
    assert!(text.contains("type") && text.contains("start"), "{text}");
    let id = &text[text.len() - 36..];
    uuid::Uuid::parse_str(id).expect("uuid in start message");
    assert_eq!(
        status_of(
            connect(relay.addr, &format!("/?mode=dest&id={id}&token=nope"), None).unwrap_err()
        ),
        403
    );
    let (mut dest, _) =
        connect(relay.addr, &format!("/?mode=dest&id={id}&token=tok"), None).unwrap();
    wait_ping(&mut origin, "sockrelay peer-joined ");
    dest.send(Message::binary(b"compat".to_vec())).unwrap();
    assert_eq!(next_msg(&mut origin).into_data().as_ref(), b"compat");
}

#[test]
fn churn_does_not_disturb_a_long_lived_session() {
    let relay = Relay::start(&[]);
    let (mut origin, mut dest, _) = pair(&relay);
    let addr = relay.addr;
    let churn = std::thread::spawn(move || {
        let relay_addr = addr;
        let mut done = 0;
        let end = Instant::now() + Duration::from_secs(20);
        while done < 200 && Instant::now() < end {
            let (mut o, id) = connect(relay_addr, "/origin", Some("c")).unwrap();
            let id = id.unwrap();
            let (mut d, _) = connect(relay_addr, &format!("/dest?id={id}"), Some("c")).unwrap();
            wait_ping(&mut o, "sockrelay peer-joined");
            d.send(Message::binary(vec![done as u8; 100])).unwrap();
            assert_eq!(
                next_msg(&mut o).into_data().as_ref(),
                &vec![done as u8; 100][..]
            );
            // Half of them vanish without a close frame.
            if done % 2 == 0 {
                drop(d);
                drop(o);
            } else {
                let _ = o.close(None);
                let _ = o.flush();
            }
            done += 1;
        }
        done
    });
    let mut n = 0u64;
    while !churn.is_finished() {
        let data = pattern_at(n, 0, 4096);
        origin.send(Message::binary(data.clone())).unwrap();
        assert_eq!(next_msg(&mut dest).into_data().as_ref(), &data[..]);
        n += 1;
    }
    assert!(churn.join().unwrap() >= 100);
    assert!(n > 10);
    // Everything the churn created is gone again.
    std::thread::sleep(Duration::from_millis(500));
    let (_, body) = relay.get("/metrics");
    assert!(body.contains("sockrelay_sessions 1\n"), "{body}");
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(") ").unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap() // utime + stime
}

#[test]
fn running_out_of_file_descriptors_neither_spins_nor_crashes() {
    use std::os::unix::process::CommandExt;
    let relay = Relay::spawn(&["-p", "0", "-b", "127.0.0.1", "-v"], |cmd| {
        // SAFETY: only async-signal-safe setrlimit between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 40,
                    rlim_max: 40,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                Ok(())
            });
        }
    });
    let (mut origin, mut dest, _) = pair(&relay);
    // Far more connections than descriptors: the rest wait in the backlog.
    let flood: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(relay.addr).ok())
        .collect();
    assert!(
        relay.wait_log("accept failed", Duration::from_secs(5)),
        "{}",
        relay.log()
    );
    let pid = relay.child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    // Clock ticks are 10 ms: a spinning loop would burn ~100 per second.
    assert!(
        used < 30,
        "relay used {used} ticks in 1 s while out of descriptors"
    );
    // The paired session keeps working meanwhile.
    origin
        .send(Message::binary(b"still flowing".to_vec()))
        .unwrap();
    assert_eq!(next_msg(&mut dest).into_data().as_ref(), b"still flowing");
    drop(flood);
    // Once descriptors free up, the relay serves new requests again.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = relay.get("/metrics");
        if status == 200 {
            assert!(
                !body.contains("sockrelay_accept_errors_total 0\n"),
                "{body}"
            );
            break;
        }
        assert!(Instant::now() < end, "relay did not recover");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn listens_on_ipv6_with_the_seed_port_form() {
    // `sockrelay-relay PORT` (the seed's form) with an IPv6 bind address.
    let relay = Relay::spawn(&["0", "-b", "::1", "-v"], |_| {});
    assert!(relay.addr.is_ipv6(), "{}", relay.addr);
    let (mut origin, mut dest, _) = pair(&relay);
    origin.send(Message::binary(b"over ::1".to_vec())).unwrap();
    assert_eq!(next_msg(&mut dest).into_data().as_ref(), b"over ::1");
}

#[test]
fn separate_origin_and_dest_listeners() {
    let relay = Relay::spawn(
        &[
            "--origin-listen",
            "127.0.0.1:0",
            "--dest-listen",
            "127.0.0.1:0",
            "-v",
        ],
        |_| {},
    );
    // The first "listening on" line is the origin listener; find the other.
    assert!(relay.wait_log("(dests only)", Duration::from_secs(5)));
    let log = relay.log();
    let dest_addr: std::net::SocketAddr = log
        .lines()
        .find(|l| l.contains("(dests only)"))
        .and_then(|l| l.split("listening on ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let origin_addr = relay.addr;
    assert!(
        log.contains(&format!("listening on {origin_addr} (origins only)")),
        "{log}"
    );
    let (mut origin, id) = connect(origin_addr, "/origin", Some("s")).unwrap();
    let id = id.unwrap();
    // Dests are not served on the origin port, nor origins on the dest port.
    assert_eq!(
        status_of(connect(origin_addr, &format!("/dest?id={id}"), Some("s")).unwrap_err()),
        404
    );
    assert_eq!(
        status_of(connect(dest_addr, "/origin", Some("s")).unwrap_err()),
        404
    );
    let (mut dest, _) = connect(dest_addr, &format!("/dest?id={id}"), Some("s")).unwrap();
    wait_ping(&mut origin, "sockrelay peer-joined ");
    dest.send(Message::binary(b"split ports".to_vec())).unwrap();
    assert_eq!(next_msg(&mut origin).into_data().as_ref(), b"split ports");
}

#[test]
fn origin_keys_restrict_who_opens_sessions_and_reload_on_sighup() {
    let dir = TempDir::new("origin-keys");
    let keys = dir.path("keys");
    std::fs::write(&keys, "# accepted origins\nalpha-key\n").unwrap();
    let relay = Relay::start(&["--origin-keys", keys.to_str().unwrap()]);
    let open = |key: Option<&str>| {
        let url = format!("ws://{}/origin", relay.addr);
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("Sockrelay-Admission", "adm".parse().unwrap());
        if let Some(k) = key {
            req.headers_mut()
                .insert("Sockrelay-Origin-Key", k.parse().unwrap());
        }
        let stream = TcpStream::connect(relay.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        match tungstenite::client::client(req, stream) {
            Ok(_) => 101,
            Err(tungstenite::HandshakeError::Failure(WsError::Http(r))) => r.status().as_u16(),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(open(Some("alpha-key")), 101);
    assert_eq!(open(Some("beta-key")), 403);
    assert_eq!(open(None), 403);
    std::fs::write(&keys, "beta-key\n").unwrap();
    relay.signal(libc::SIGHUP);
    assert!(relay.wait_log("reloaded 1 origin keys", Duration::from_secs(5)));
    assert_eq!(open(Some("beta-key")), 101);
    assert_eq!(open(Some("alpha-key")), 403);
    let (_, body) = relay.get("/metrics");
    assert!(body.contains("origin_not_allowed\"} 3"), "{body}");
    // A broken reload keeps the old keys.
    std::fs::remove_file(&keys).unwrap();
    relay.signal(libc::SIGHUP);
    assert!(relay.wait_log("keeping the old origin keys", Duration::from_secs(5)));
    assert_eq!(open(Some("beta-key")), 101);
}

#[test]
fn pending_limit_answers_503_and_frees_up() {
    let relay = Relay::start(&["--max-pending", "3"]);
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(relay.addr).unwrap())
        .collect();
    let end = Instant::now() + Duration::from_secs(10);
    while relay.log().matches("connection from").count() < 3 {
        assert!(Instant::now() < end, "relay did not accept 3 connections");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _) = relay.get("/healthz");
    assert_eq!(status, 503);
    drop(idle);
    // Once the idle ones are gone, requests are served again.
    let end = Instant::now() + Duration::from_secs(10);
    while relay.get("/healthz").0 != 200 {
        assert!(Instant::now() < end, "pending slots were not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn usage_errors_are_clear() {
    for (args, needle) in [
        (vec!["-p", "notaport"], "is not a port number"),
        (vec!["--max-sessions", "0"], "is not a positive number"),
        (vec!["--ping-interval", "soon"], "is not a duration"),
        (vec!["--bogus"], "Unrecognized option"),
        (vec!["1", "2"], "unexpected arguments"),
    ] {
        let out = std::process::Command::new(common::RELAY)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let help = std::process::Command::new(common::RELAY)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for opt in [
        "--port",
        "--bind",
        "--max-sessions",
        "--ping-interval",
        "--origin-keys",
        "default 8080",
    ] {
        assert!(text.contains(opt), "{opt} missing from --help");
    }
    // A port in use is a clear runtime error (exit 1).
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let out = std::process::Command::new(common::RELAY)
        .args(["-p", &port, "-b", "127.0.0.1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on"));
}

#[test]
fn dest_vanishing_inside_a_large_message_does_not_wedge_the_origin() {
    let relay = Relay::start(&[]);
    let (origin, dest, id) = pair(&relay);
    let writer = std::thread::spawn(move || {
        let mut origin = origin;
        origin.send(Message::binary(vec![7u8; 32 << 20])).unwrap();
        origin
    });
    // Let part of the message through, then the dest vanishes (no close).
    std::thread::sleep(Duration::from_millis(100));
    drop(dest);
    let mut origin = writer.join().expect("origin's send completes");
    let left = wait_ping(&mut origin, "sockrelay peer-left ");
    assert!(left.contains(" 1006 "), "{left}");
    let (mut dest2, _) = connect(relay.addr, &format!("/dest?id={id}"), Some("secret-a")).unwrap();
    wait_ping(&mut dest2, "sockrelay peer-joined ");
    wait_ping(&mut origin, "sockrelay peer-joined ");
    origin
        .send(Message::binary(b"fresh start".to_vec()))
        .unwrap();
    assert_eq!(next_msg(&mut dest2).into_data().as_ref(), b"fresh start");
}

#[test]
fn random_frames_in_random_chunks_arrive_intact_through_a_small_buffer() {
    // The smallest forwarding buffer (16 KiB) against frames up to 100 KB
    // in chunks up to 5000 bytes: headers and control frames straddle
    // buffer ends, exercising compaction on every path.
    random_frames_arrive_intact(&["--buffer", "16K"], 5000);
}

#[test]
fn random_frames_in_random_chunks_arrive_intact_through_growing_buffers() {
    // Chunks up to 300 KB fill buffers, which then grow (16 KiB doubling
    // toward 1 MiB) until the 300 KiB budget cuts them, and shrink again
    // in the stretches of small chunks.
    random_frames_arrive_intact(&["--buffer", "1M", "--buffer-memory", "300K"], 300_000);
}

fn random_frames_arrive_intact(relay_args: &[&str], max_chunk: u64) {
    use sockrelay::ws::frame::{encode_frame, OpCode as Op};
    let relay = Relay::start(relay_args);
    for seed in 1..=3u64 {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
        let (mut origin, head) = raw_upgrade_head(&relay, "/origin");
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("Sockrelay-Session: "))
            .unwrap()
            .to_string();
        raw_read_frame(&mut origin); // session ping
        let (mut dest, _) = connect(relay.addr, &format!("/dest?id={id}"), Some("raw")).unwrap();
        wait_ping(&mut dest, "sockrelay peer-joined ");
        let (op, joined) = raw_read_frame(&mut origin);
        assert_eq!(op, 0x9);
        let mut pong = Vec::new();
        encode_frame(&mut pong, true, Op::Pong, Some([9, 8, 7, 6]), &joined);
        origin.write_all(&pong).unwrap();

        // Build the stream: messages in random fragments, pings between.
        let mut stream = Vec::new();
        let mut expected: Vec<(bool, Vec<u8>)> = Vec::new();
        let mut pings = 0;
        for _ in 0..120 {
            let text = rng.below(2) == 0;
            let big = rng.below(10) == 0;
            let len = if big {
                rng.below(100_000)
            } else {
                rng.below(3000)
            } as usize;
            let body: Vec<u8> = if text {
                // Two-byte characters so fragment cuts can split one.
                "añb€".repeat(len / 6 + 1).into_bytes()
            } else {
                (0..len).map(|_| rng.next() as u8).collect()
            };
            let frags = 1 + rng.below(4) as usize;
            let mut cuts: Vec<usize> = (0..frags - 1)
                .map(|_| rng.below(body.len() as u64 + 1) as usize)
                .collect();
            cuts.push(0);
            cuts.push(body.len());
            cuts.sort();
            for (i, w) in cuts.windows(2).enumerate() {
                let op = match (i, text) {
                    (0, true) => Op::Text,
                    (0, false) => Op::Binary,
                    _ => Op::Continuation,
                };
                let mask = (rng.next() as u32).to_be_bytes();
                encode_frame(
                    &mut stream,
                    i == frags - 1,
                    op,
                    Some(mask),
                    &body[w[0]..w[1]],
                );
                if pings < 40 && rng.below(4) == 0 {
                    let n = rng.below(126) as usize;
                    encode_frame(&mut stream, true, Op::Ping, Some(mask), &vec![b'p'; n]);
                    pings += 1;
                }
            }
            expected.push((text, body));
        }
        // Write it in random chunks while the dest reads.
        let writer = std::thread::spawn(move || {
            let mut at = 0;
            while at < stream.len() {
                let chunk = if rng.below(2) == 0 { max_chunk } else { 5000 };
                let n = (1 + rng.below(chunk) as usize).min(stream.len() - at);
                origin.write_all(&stream[at..at + n]).unwrap();
                at += n;
                if rng.below(50) == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            origin
        });
        for (i, (text, body)) in expected.iter().enumerate() {
            match next_msg(&mut dest) {
                Message::Text(t) if *text => {
                    assert_eq!(t.as_bytes(), &body[..], "seed {seed} message {i}")
                }
                Message::Binary(b) if !*text => {
                    assert_eq!(b.as_ref(), &body[..], "seed {seed} message {i}")
                }
                other => panic!("seed {seed} message {i}: unexpected {other:?}"),
            }
        }
        let _origin = writer.join().unwrap();
    }
}

/// Read one (unmasked) frame from the relay: (opcode, payload).
fn raw_read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    (h[0] & 0x0f, p)
}

/// The relay answers pings through the shared endpoint policy: one pong
/// for the latest ping of a burst (RFC 6455 §5.5.3), not one per ping.
#[test]
fn a_ping_flood_gets_the_latest_pong_only() {
    use sockrelay::ws::frame::{encode_frame, OpCode as Op};
    let relay = Relay::start(&[]);
    let mut s = raw_upgrade(&relay, "/origin");
    let (op, p) = raw_read_frame(&mut s);
    assert_eq!(op, 0x9);
    assert!(p.starts_with(b"sockrelay session "));
    let mut burst = Vec::new();
    for i in 0..5000u32 {
        let payload = format!("p{i}");
        encode_frame(
            &mut burst,
            true,
            Op::Ping,
            Some(i.to_be_bytes()),
            payload.as_bytes(),
        );
    }
    s.write_all(&burst).unwrap();
    let mut pongs = 0;
    loop {
        let (op, p) = raw_read_frame(&mut s);
        if op == 0xA {
            pongs += 1;
            if p == b"p4999" {
                break;
            }
        }
    }
    assert!(pongs < 500, "{pongs} pongs for 5000 pings");
    // Still open and answering.
    let mut one = Vec::new();
    encode_frame(&mut one, true, Op::Ping, Some([1, 2, 3, 4]), b"again");
    s.write_all(&one).unwrap();
    assert_eq!(raw_read_frame(&mut s), (0xA, b"again".to_vec()));
    assert!(!relay.log().contains("floods control frames"));
}

#[test]
fn many_small_frames_then_eof_all_arrive() {
    use sockrelay::ws::frame::{encode_frame, OpCode as Op};
    let relay = Relay::start(&[]);
    let (mut origin, id) = connect(relay.addr, "/origin", Some("raw")).unwrap();
    let id = id.unwrap();
    wait_ping(&mut origin, "sockrelay session ");
    let mut dest = raw_upgrade(&relay, &format!("/dest?id={id}"));
    wait_ping(&mut origin, "sockrelay peer-joined ");
    // 200 one-byte frames and a FIN, in one write: more frames than one
    // round of output segments holds, all read before the EOF is seen.
    let mut burst = Vec::new();
    for i in 0..200u32 {
        encode_frame(
            &mut burst,
            true,
            Op::Binary,
            Some(i.to_be_bytes()),
            &[i as u8],
        );
    }
    dest.write_all(&burst).unwrap();
    dest.shutdown(std::net::Shutdown::Write).unwrap();
    for i in 0..200u32 {
        assert_eq!(
            next_msg(&mut origin).into_data().as_ref(),
            &[i as u8],
            "frame {i}"
        );
    }
    // Then the origin hears that the dest left, and its session lives on.
    let left = wait_ping(&mut origin, "sockrelay peer-left ");
    assert!(left.contains(" 1006 "), "{left}");
    let (mut dest2, _) = connect(relay.addr, &format!("/dest?id={id}"), Some("raw")).unwrap();
    wait_ping(&mut dest2, "sockrelay peer-joined ");
    dest2.send(Message::binary(b"next".to_vec())).unwrap();
    assert_eq!(next_msg(&mut origin).into_data().as_ref(), b"next");
}

#[test]
fn dest_leaving_inside_a_fragmented_message_ends_the_session_cleanly() {
    let relay = Relay::start(&[]);
    let (mut origin, mut dest, id) = pair(&relay);
    dest.send(Message::Frame(Frame::message(
        b"first half".to_vec(),
        OpCode::Data(Data::Binary),
        false,
    )))
    .unwrap();
    dest.close(None).unwrap();
    let _ = dest.flush();
    // The origin's stream is inside a message that can never end: the
    // relay drops the origin rather than let the next dest's first frame
    // break RFC 6455 there. It never sees a malformed message.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match origin.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
            Ok(Message::Close(_)) => break,
            Ok(other) => panic!("origin got {other:?}"),
            Err(WsError::Protocol(p)) => {
                let text = format!("{p:?}");
                assert!(text.contains("ResetWithoutClosingHandshake"), "{text}");
                break;
            }
            Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) | Err(WsError::Io(_)) => {
                break
            }
            Err(e) => panic!("origin: {e:?}"),
        }
        assert!(Instant::now() < end, "origin was not closed");
    }
    assert_eq!(
        status_of(connect(relay.addr, &format!("/dest?id={id}"), Some("secret-a")).unwrap_err()),
        404
    );
}

#[test]
fn a_partial_frame_header_does_not_pin_a_buffer() {
    let relay = Relay::start(&[]);
    // 20 origins each send one byte of a frame header and go quiet.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = raw_upgrade(&relay, "/origin");
        s.write_all(&[0x82]).unwrap();
        held.push(s);
    }
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = relay.get("/metrics");
        if body.contains("sockrelay_sessions 20\n") {
            assert!(body.contains("sockrelay_buffers_in_use 0\n"), "{body}");
            break;
        }
        assert!(Instant::now() < end, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The stashed byte still counts: completing the frame works.
    let s = &mut held[0];
    s.write_all(&[0x80, 1, 2, 3, 4]).unwrap(); // empty masked binary frame
    s.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]).unwrap(); // close 1000
    assert_eq!(raw_read_close(s), 1000);
}

/// Issue 8, bug 3: what health checkers do (`printf 'GET /healthz …' | nc -N`):
/// the whole request, then FIN at once. The request must still be answered.
#[test]
fn complete_request_then_fin_is_answered() {
    let relay = Relay::start(&[]);
    for _ in 0..3 {
        let mut s = TcpStream::connect(relay.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
        assert!(resp.ends_with("ok\n"), "{resp:?}");
    }
    // An incomplete request then FIN is still just dropped.
    let mut s = TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.0\r\n").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert!(resp.is_empty(), "{:?}", String::from_utf8_lossy(&resp));
}

/// Issue 8, bug 5: a 503 at the pending limit is a graceful close (FIN,
/// the client's bytes drained), not a reset that may destroy the answer.
#[test]
fn refusal_at_the_pending_limit_is_a_clean_close_not_a_reset() {
    let relay = Relay::start(&["--max-pending", "1"]);
    let _idle = TcpStream::connect(relay.addr).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while !relay.log().contains("connection from") {
        assert!(
            Instant::now() < end,
            "relay did not accept the idle connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = TcpStream::connect(relay.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Request bytes the relay has not read when it answers: closing over
    // them at once would make the kernel send RST.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let second = s.write_all(format!("X-Pad: {}\r\n\r\n", "a".repeat(2000)).as_bytes());
    std::thread::sleep(Duration::from_millis(100));
    let mut resp = Vec::new();
    let read = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?} ({read:?})");
    assert!(
        second.is_ok(),
        "the rest of the request hit a reset: {second:?}"
    );
    assert!(read.is_ok(), "reset instead of a clean close: {read:?}");
}

/// Issue 8, bug 2: a receiver that keeps accepting the bytes of one long
/// frame is alive, though it sends nothing and the relay's ping to it
/// must wait for the frame's end.
#[test]
fn dest_reading_a_long_frame_slowly_is_not_dropped() {
    const LEN: usize = 8 << 20;
    // Made first: in a debug build under load this takes a while, and the
    // raw dest must not sit silent meanwhile.
    let message = pattern_at(5, 0, LEN);
    let expected = message.clone();
    let relay = Relay::start(&["--ping-interval", "300ms", "--pong-timeout", "300ms"]);
    let (mut origin, id) = connect(relay.addr, "/origin", Some("raw")).expect("origin");
    let id = id.expect("session header");
    wait_ping(&mut origin, "sockrelay session ");
    let mut dest = raw_upgrade(&relay, &format!("/dest?id={id}"));
    wait_ping(&mut origin, "sockrelay peer-joined ");
    let (op, _) = raw_read_frame(&mut dest);
    assert_eq!(op, 0x9, "peer-joined ping first");
    let writer = std::thread::spawn(move || {
        origin.send(Message::binary(message)).unwrap();
        origin
    });
    // Keepalive pings may come before the data frame: answer them (a
    // masked pong, mask key 0).
    let mut head = [0u8; 10];
    loop {
        dest.read_exact(&mut head[..2]).unwrap();
        if head[0] != 0x89 {
            break;
        }
        let mut ping = vec![0u8; usize::from(head[1] & 0x7f)];
        dest.read_exact(&mut ping).unwrap();
        let mut pong = vec![0x8a, 0x80 | ping.len() as u8, 0, 0, 0, 0];
        pong.extend_from_slice(&ping);
        dest.write_all(&pong).unwrap();
    }
    dest.read_exact(&mut head[2..]).unwrap();
    assert_eq!(head[0], 0x82, "one final binary frame");
    assert_eq!(head[1], 127);
    assert_eq!(
        u64::from_be_bytes(head[2..10].try_into().unwrap()),
        LEN as u64
    );
    // About 3 MB/s: the whole frame takes far longer than ping interval +
    // pong timeout, and the dest sends nothing meanwhile.
    let mut got = Vec::with_capacity(LEN);
    let mut chunk = vec![0u8; 32 << 10];
    let started = Instant::now();
    while got.len() < LEN {
        let want = chunk.len().min(LEN - got.len());
        match dest.read(&mut chunk[..want]) {
            Ok(0) => panic!("dropped after {} bytes, {:?}", got.len(), started.elapsed()),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("dropped after {} bytes: {e}", got.len()),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(got == expected, "message corrupted");
    let _origin = writer.join().unwrap();
    // (The origin, silent once its send is done, may time out by now.)
    let dest_addr = dest.local_addr().unwrap();
    let log = relay.log();
    assert!(
        !log.contains(&format!("{dest_addr}: no answer")),
        "dest was dropped:\n{log}"
    );
}

/// The relay command line run through `sh`, which sets LISTEN_PID to its
/// own pid (kept by `exec`) as a service manager would.
fn activated_relay(listeners: &[&std::net::TcpListener], names: &str, args: &[&str]) -> Relay {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fds: Vec<i32> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={names} exec \"$0\" \"$@\"",
            fds.len()
        ))
        .arg(common::RELAY)
        .args(args);
    assert!(fds.len() <= 8);
    // SAFETY: between fork and exec the closure makes only
    // async-signal-safe calls (fcntl, dup2, close) on fds of this process
    // and allocates nothing; every source is first copied above 100 so that
    // placing fd 3 + i never overwrites a source still to be moved.
    unsafe {
        cmd.pre_exec(move || {
            let mut moved = [0; 8];
            for (slot, &fd) in moved.iter_mut().zip(&fds) {
                *slot = libc::fcntl(fd, libc::F_DUPFD, 100);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &high) in moved[..fds.len()].iter().enumerate() {
                if libc::dup2(high, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(high);
            }
            Ok(())
        });
    }
    let addr = listeners[0].local_addr().unwrap();
    let relay = Relay::spawn_command(cmd, Some(addr));
    assert!(
        relay.wait_log("listening on", Duration::from_secs(10)),
        "relay did not start:\n{}",
        relay.log()
    );
    relay
}

/// Issue 8, socket activation: the relay serves the sockets it inherits
/// (LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES) instead of binding, and a
/// connection made before it started waits in the accept queue.
#[test]
fn socket_activation_serves_inherited_listeners() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // A port the relay could not bind (we hold it): proof it does not try.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    // A health check that arrives while "the relay restarts".
    let mut early = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    early
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    early
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let relay = activated_relay(
        &[&listener],
        "relay",
        &["-p", &busy_port, "-b", "127.0.0.1", "-v"],
    );
    drop(listener);
    let mut resp = String::new();
    let _ = early.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp:?}");
    assert!(
        relay.wait_log("socket activation", Duration::from_secs(10)),
        "{}",
        relay.log()
    );
    assert_eq!(relay.get("/healthz").0, 200);
    let (mut origin, mut dest, _) = pair(&relay);
    origin
        .send(Message::binary(b"via systemd".to_vec()))
        .unwrap();
    assert_eq!(next_msg(&mut dest).into_data().as_ref(), b"via systemd");
}

/// The names of inherited sockets give their roles, as the
/// FileDescriptorName= of docs/systemd/sockrelay-relay.socket does.
#[test]
fn socket_activation_names_give_roles() {
    let origins = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dests = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dest_addr = dests.local_addr().unwrap();
    let relay = activated_relay(&[&origins, &dests], "origin:dest", &["-v"]);
    assert!(
        relay.wait_log(
            &format!("listening on {dest_addr} (dests only)"),
            Duration::from_secs(10)
        ),
        "{}",
        relay.log()
    );
    let (mut origin, id) = connect(relay.addr, "/origin", Some("k")).expect("origin");
    let id = id.expect("session header");
    wait_ping(&mut origin, "sockrelay session ");
    let err = connect(dest_addr, "/origin", Some("k")).expect_err("origin on the dest port");
    assert_eq!(status_of(err), 404);
    let (mut dest, _) = connect(dest_addr, &format!("/dest?id={id}"), Some("k")).expect("dest");
    wait_ping(&mut dest, "sockrelay peer-joined ");
    wait_ping(&mut origin, "sockrelay peer-joined ");
    dest.send(Message::binary(b"up".to_vec())).unwrap();
    assert_eq!(next_msg(&mut origin).into_data().as_ref(), b"up");
}

/// The same through systemd's own activator (`systemd-socket-activate`,
/// Debian package systemd), which starts the relay on the first connection.
#[test]
fn systemd_socket_activate_starts_the_relay_on_first_connection() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut cmd = std::process::Command::new("systemd-socket-activate");
    cmd.args([
        "-l",
        &addr.to_string(),
        "--fdname=relay",
        common::RELAY,
        "-v",
    ]);
    let relay = Relay::spawn_command(cmd, Some(addr));
    let end = Instant::now() + Duration::from_secs(10);
    while !relay.log().contains("Listening on") {
        assert!(
            Instant::now() < end,
            "systemd-socket-activate did not start (is the systemd package installed?):\n{}",
            relay.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(relay.get("/healthz"), (200, "ok\n".to_string()));
    assert!(
        relay.wait_log("socket activation", Duration::from_secs(10)),
        "{}",
        relay.log()
    );
    let (mut origin, mut dest, _) = pair(&relay);
    dest.send(Message::binary(b"activated".to_vec())).unwrap();
    assert_eq!(next_msg(&mut origin).into_data().as_ref(), b"activated");
}
