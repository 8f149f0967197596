//! What an idle TLS connection costs: heap bytes held per connection after
//! the handshake and some traffic, counted by a global allocator wrapper
//! over 500 client/server pairs (issue 9's target: at most 4 KiB per side).
#![cfg(feature = "tls")]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use sockrelay::tls::session::pool_bytes;
use sockrelay::tls::testcerts::{make_ca, make_leaf, KeyKind};
use sockrelay::tls::{ClientTlsOptions, Read, ServerTls, ServerTlsFiles, TlsSession};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call forwards to `System` with the caller's layout and
// pointer unchanged; the counter does not affect allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn one_way(x: &mut TlsSession, y: &mut TlsSession, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    let moved = x.wants_send();
    if moved {
        let v = x.send_buf().to_vec();
        x.send_consume(v.len());
        y.recv(&v);
    }
    while let Read::Data(n) = y.read(&mut buf).unwrap() {
        got.extend_from_slice(&buf[..n]);
    }
    moved
}

fn pump(a: &mut TlsSession, b: &mut TlsSession, got: &mut Vec<u8>) {
    for _ in 0..100 {
        let m1 = one_way(a, b, got);
        let m2 = one_way(b, a, got);
        if !m1 && !m2 {
            return;
        }
    }
}

#[test]
fn idle_tls_connection_holds_at_most_4_kib_per_side() {
    const PAIRS: usize = 500;
    let tmp = common::TempDir::new("tlsmem");
    let dir = tmp.0.clone();
    let ca = make_ca(&dir, "ca");
    let (cert, key) = make_leaf(
        &dir,
        "ca",
        "relay",
        &["DNS:relay.test"],
        KeyKind::EcdsaP256,
        30,
    );
    let server = ServerTls::load(ServerTlsFiles {
        cert,
        key,
        client_ca: None,
    })
    .unwrap()
    .config();
    let opts = ClientTlsOptions {
        ca_file: Some(ca),
        ..Default::default()
    };
    let client = opts.build().unwrap();
    let name = opts.server_name_for("relay.test").unwrap();

    let mut pairs = Vec::with_capacity(PAIRS);
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..PAIRS {
        let mut c = TlsSession::client(client.clone(), name.clone()).unwrap();
        let mut s = TlsSession::server(server.clone()).unwrap();
        let mut got = Vec::new();
        pump(&mut c, &mut s, &mut got);
        assert!(!c.is_handshaking());
        assert_eq!(c.write(&[7u8; 20_000]).unwrap(), 20_000);
        assert_eq!(s.write(b"pong").unwrap(), 4);
        pump(&mut c, &mut s, &mut got);
        assert_eq!(got.len(), 20_004);
        assert!(c.holds_no_buffers() && s.holds_no_buffers());
        pairs.push((c, s));
    }
    let after = LIVE.load(Ordering::Relaxed);
    // `pairs` was reserved before `before`, so only the sessions count.
    let per_side = (after - before) as f64 / (2 * PAIRS) as f64;
    // Buffers the pool keeps for reuse are shared, not per connection; at
    // most POOL_KEEP (64) of them, ~18 KiB each, count in the difference.
    let pool_share = pool_bytes() as f64 / (2 * PAIRS) as f64;
    println!(
        "idle TLS connection: {per_side:.0} heap bytes per side (client+server average), {:.0} without the shared pool",
        per_side - pool_share
    );
    assert!(
        per_side - pool_share <= 4096.0,
        "{per_side:.0} bytes per idle side"
    );
    // The relay's side alone: drop the clients, count what the servers hold.
    let servers: Vec<TlsSession> = pairs.into_iter().map(|(_, s)| s).collect();
    let server_only = LIVE.load(Ordering::Relaxed) - before;
    let per_server = (server_only as f64 - pool_bytes() as f64) / PAIRS as f64;
    println!("idle TLS server connection (the relay's side): {per_server:.0} heap bytes, without the shared pool");
    // The floor: rustls's connection value alone (boxed by `TlsSession`);
    // its key schedule, record-layer keys and handshake leftovers are
    // separate allocations (README "Architecture").
    println!(
        "of which rustls's UnbufferedServerConnection value: {} bytes",
        std::mem::size_of::<rustls::server::UnbufferedServerConnection>()
    );
    assert!(
        per_server <= 4096.0,
        "{per_server:.0} bytes per idle server side"
    );
    drop(servers);
}
