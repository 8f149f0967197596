//! Opening handshake costs, std::time only (no criterion): parse a typical
//! dest upgrade request, build the 101, and the client's side of both.
//! Each case runs for a fixed time budget, so the whole bench stays well
//! under 10 s; prints a markdown table.
//!
//! `cargo bench --bench handshake`

use std::hint::black_box;
use std::time::{Duration, Instant};

use sockrelay::ws::handshake::{
    accept_key, client_request, error_response, parse_request, parse_response,
    request_may_be_complete, response_101, MAX_HEADER_BYTES,
};

/// Per case: a short warm-up, then as many timed batches as fit the budget.
const WARMUP: Duration = Duration::from_millis(100);
const BUDGET: Duration = Duration::from_millis(700);
const BATCH: u32 = 1000;

struct Row {
    name: &'static str,
    bytes: usize,
    ns_per_op: f64,
    best_ns_per_op: f64,
    ops: u64,
}

fn measure(name: &'static str, bytes: usize, mut op: impl FnMut()) -> Row {
    let start = Instant::now();
    while start.elapsed() < WARMUP {
        op();
    }
    let mut ops = 0u64;
    let mut best = f64::INFINITY;
    let start = Instant::now();
    while start.elapsed() < BUDGET {
        let t = Instant::now();
        for _ in 0..BATCH {
            op();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(BATCH));
        ops += u64::from(BATCH);
    }
    Row {
        name,
        bytes,
        ns_per_op: start.elapsed().as_nanos() as f64 / ops as f64,
        best_ns_per_op: best,
        ops,
    }
}

fn main() {
    let key = *b"sixteen byte key";
    let (dest_request, accept) = client_request(
        "relay.example.org:8080",
        "/dest?id=6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f",
        &[
            (
                "Sockrelay-Admission",
                "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0",
            ),
            ("User-Agent", "sockrelay-dest/0.1.0"),
        ],
        key,
    );
    let ws_key = match parse_request(&dest_request) {
        Ok(Some((req, _))) => req.ws_key.unwrap_or_default(),
        other => panic!("bench request does not parse: {other:?}"),
    };
    let session_hdr = [("Sockrelay-Session", "6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f")];
    let resp_101 = response_101(&ws_key, &session_hdr);
    // The same request arriving in two reads: the relay parses the first half
    // (partial, Ok(None)) and then the whole.
    let half = dest_request.len() / 2;
    // Worst case for a loop that re-parses on every read: a header one byte
    // short of the cap, never finished (what a slowloris client sends).
    let mut slow = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
    slow.resize(MAX_HEADER_BYTES - 1, b'a');

    let rows = [
        measure("parse_request: dest upgrade", dest_request.len(), || {
            let r = parse_request(black_box(&dest_request));
            assert!(matches!(r, Ok(Some(_))));
            black_box(r).ok();
        }),
        measure("parse_request: half of it (partial)", half, || {
            let r = parse_request(black_box(&dest_request[..half]));
            black_box(r).ok();
        }),
        measure("parse_request: 8 KiB partial header", slow.len(), || {
            let r = parse_request(black_box(&slow));
            assert!(matches!(r, Ok(None)));
            black_box(r).ok();
        }),
        measure("request_may_be_complete: 1 new byte", slow.len(), || {
            let len = slow.len();
            black_box(request_may_be_complete(black_box(&slow), len - 1));
        }),
        measure("accept_key (SHA-1 + base64)", ws_key.len(), || {
            black_box(accept_key(black_box(&ws_key)));
        }),
        measure("response_101 + session header", resp_101.len(), || {
            black_box(response_101(black_box(&ws_key), black_box(&session_hdr)));
        }),
        measure(
            "error_response 403",
            error_response(403, "wrong admission value").len(),
            || {
                black_box(error_response(
                    black_box(403),
                    black_box("wrong admission value"),
                ));
            },
        ),
        measure("client_request", dest_request.len(), || {
            black_box(client_request(
                black_box("relay.example.org:8080"),
                black_box("/dest?id=6f1d2c3e-8a4b-4c5d-9e6f-7a8b9c0d1e2f"),
                black_box(&[(
                    "Sockrelay-Admission",
                    "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0",
                )]),
                black_box(key),
            ));
        }),
        measure("parse_response: 101", resp_101.len(), || {
            let r = parse_response(black_box(&resp_101), black_box(&accept));
            assert!(matches!(r, Ok(Some(_))));
            black_box(r).ok();
        }),
    ];

    println!("| operation | bytes | mean ns/op | best batch ns/op | ops |");
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {} |",
            r.name, r.bytes, r.ns_per_op, r.best_ns_per_op, r.ops
        );
    }
}
