//! Several relays behind a real HAProxy on loopback, routing by session id
//! (the `docs/haproxy.cfg` shape): origin and dest of each session meet on
//! the same relay, and the sessions spread over both relays.

mod common;

use common::ws::{connect, next_msg, wait_ping};
use common::{free_port, Daemon, Relay};
use std::net::SocketAddr;
use tungstenite::Message;

fn start_haproxy(dir: &std::path::Path, port: u16, relays: &[SocketAddr]) -> Daemon {
    let servers: String = relays
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server relay{i} {a} check inter 1s\n"))
        .collect();
    let cfg = format!(
        "global\n    maxconn 1000\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    \
         timeout server 30s\n    timeout tunnel 1h\n\
         frontend sockrelay\n    bind 127.0.0.1:{port}\n    default_backend relays\n\
         backend relays\n    balance url_param id\n    hash-type consistent\n    \
         option httpchk GET /healthz\n{servers}"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    common::proc::haproxy(&path, port)
}

fn paired_sessions(relay: &Relay) -> u64 {
    let (_, body) = relay.get("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("sockrelay_sessions_paired "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn haproxy_routes_origin_and_dest_of_a_session_to_the_same_relay() {
    let dir = common::TempDir::new("haproxy");
    let relays = [Relay::start(&[]), Relay::start(&[])];
    let port = free_port();
    let _lb = start_haproxy(&dir.0, port, &[relays[0].addr, relays[1].addr]);
    let lb: SocketAddr = ([127, 0, 0, 1], port).into();
    // Fixed ids: HAProxy's hash then spreads them the same way every run.
    let ids: Vec<String> = (1..=12u32)
        .map(|i| format!("{i:08x}-5eed-4000-8000-00000000{i:04x}"))
        .collect();
    let mut held = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (mut origin, got) =
            connect(lb, &format!("/origin?id={id}"), Some("lb-secret")).unwrap();
        assert_eq!(got.as_deref(), Some(id.as_str()));
        wait_ping(&mut origin, "sockrelay session ");
        // Through the balancer the dest finds the session: same relay.
        let (mut dest, _) = connect(lb, &format!("/dest?id={id}"), Some("lb-secret"))
            .unwrap_or_else(|e| panic!("session {i} not found through the balancer: {e}"));
        wait_ping(&mut dest, "sockrelay peer-joined ");
        wait_ping(&mut origin, "sockrelay peer-joined ");
        let data = common::pattern_at(i as u64, 0, 100_000);
        origin.send(Message::binary(data.clone())).unwrap();
        assert_eq!(next_msg(&mut dest).into_data().as_ref(), &data[..]);
        dest.send(Message::binary(data.clone())).unwrap();
        assert_eq!(next_msg(&mut origin).into_data().as_ref(), &data[..]);
        held.push((origin, dest));
    }
    let counts = [paired_sessions(&relays[0]), paired_sessions(&relays[1])];
    assert_eq!(counts[0] + counts[1], ids.len() as u64, "{counts:?}");
    assert!(
        counts[0] > 0 && counts[1] > 0,
        "all sessions on one relay: {counts:?}"
    );
    eprintln!("sessions per relay: {counts:?}");
}
