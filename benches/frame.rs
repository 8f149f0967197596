//! Frame codec throughput: `cargo bench --bench frame`.
//!
//! Plain `fn main`, std::time only. Each row runs for about `ROW_TIME` after a
//! short warm-up, so the whole bench stays well under 20 s. GB = 10^9 bytes.
//! Prints a markdown table.

use std::hint::black_box;
use std::time::{Duration, Instant};

use sockrelay::ws::frame::{encode_frame, Decoder, Event, OpCode, Role};
use sockrelay::ws::mask::apply_mask;

const ROW_TIME: Duration = Duration::from_millis(900);
const WARMUP: Duration = Duration::from_millis(150);
const READ_LEN: usize = 64 * 1024;
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// Bytes of masked frames decoded per iteration of the decode rows.
const STREAM_BYTES: usize = 16 << 20;

/// Run `f` (which processes `bytes` bytes per call) repeatedly for ROW_TIME;
/// returns (calls per second, GB per second).
fn measure(bytes: usize, mut f: impl FnMut()) -> (f64, f64) {
    let warm = Instant::now();
    while warm.elapsed() < WARMUP {
        f();
    }
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < ROW_TIME {
        f();
        calls += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let per_sec = calls as f64 / secs;
    (per_sec, per_sec * bytes as f64 / 1e9)
}

/// A stream of masked frames of `payload_len` bytes, about STREAM_BYTES long.
fn masked_stream(opcode: OpCode, payload_len: usize, min_total: usize) -> (Vec<u8>, usize) {
    let payload: Vec<u8> = if opcode == OpCode::Text {
        "sockrelay ünïcödé text €😀 "
            .bytes()
            .cycle()
            .take(payload_len)
            .collect()
    } else {
        (0..payload_len).map(|i| (i * 131 + 7) as u8).collect()
    };
    // Text must end on a char boundary for the frame to be valid.
    let payload = match std::str::from_utf8(&payload) {
        Err(e) if opcode == OpCode::Text => payload[..e.valid_up_to()].to_vec(),
        _ => payload,
    };
    let mut stream = Vec::new();
    let mut frames = 0;
    while stream.len() < min_total {
        encode_frame(&mut stream, true, opcode, Some(KEY), &payload);
        frames += 1;
    }
    (stream, frames)
}

/// Decode `stream` (in place) as a relay would see it arriving in READ_LEN
/// reads: each decode call sees what has "arrived" and not been consumed.
/// Returns the payload bytes seen. Unmasking in place flips the payload
/// between masked and unmasked on every pass, which binary frames do not
/// care about; headers are never modified, so the stream stays decodable.
fn decode_in_place(stream: &mut [u8]) -> u64 {
    let mut dec = Decoder::new(Role::Server, u64::MAX);
    let (mut pos, mut arrived, mut payload) = (0, 0, 0u64);
    while arrived < stream.len() {
        arrived = (arrived + READ_LEN).min(stream.len());
        while let Some((ev, n)) = dec.decode(&mut stream[pos..arrived]).expect("valid stream") {
            if let Event::Payload { len, .. } = ev {
                payload += len as u64;
            }
            pos += n;
        }
    }
    payload
}

/// Same, through a fixed read buffer that keeps the unconsumed tail, the
/// way the event loop does (the memcpy stands in for `read`).
fn decode_via_read_buffer(stream: &[u8], buf: &mut [u8]) -> u64 {
    let mut dec = Decoder::new(Role::Server, u64::MAX);
    let (mut src, mut filled, mut payload) = (0, 0, 0u64);
    while src < stream.len() {
        let n = (buf.len() - filled).min(stream.len() - src);
        buf[filled..filled + n].copy_from_slice(&stream[src..src + n]);
        filled += n;
        src += n;
        let mut start = 0;
        while let Some((ev, n)) = dec.decode(&mut buf[start..filled]).expect("valid stream") {
            if let Event::Payload { len, .. } = ev {
                payload += len as u64;
            }
            start += n;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
    }
    payload
}

fn naive_mask(buf: &mut [u8], key: [u8; 4], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[((offset as usize) + i) % 4];
    }
}

fn main() {
    let started = Instant::now();
    let mut rows: Vec<(String, String)> = Vec::new();

    for (label, opcode, frame_len) in [
        ("64 KiB", OpCode::Binary, 64 << 10),
        ("1 MiB", OpCode::Binary, 1 << 20),
        ("1 MiB text (UTF-8 checked)", OpCode::Text, 1 << 20),
    ] {
        let (mut stream, _) = masked_stream(opcode, frame_len, STREAM_BYTES);
        let total = stream.len();
        if opcode == OpCode::Binary {
            let (_, gbps) = measure(total, || {
                black_box(decode_in_place(black_box(&mut stream)));
            });
            rows.push((
                format!("decode+unmask, masked {label} frames, 64 KiB reads, in place"),
                format!("{gbps:.2} GB/s"),
            ));
        }
        let mut buf = vec![0u8; READ_LEN];
        let (_, gbps) = measure(total, || {
            black_box(decode_via_read_buffer(black_box(&stream), &mut buf));
        });
        rows.push((
            format!("decode+unmask, masked {label} frames, 64 KiB read buffer (+memcpy)"),
            format!("{gbps:.2} GB/s"),
        ));
    }

    for len in [64 << 10, 1 << 20] {
        let mut buf: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut offset = 0u64;
        let (_, words) = measure(len, || {
            apply_mask(black_box(&mut buf), KEY, offset);
            offset += 1;
        });
        let (_, naive) = measure(len, || {
            naive_mask(black_box(&mut buf), KEY, offset);
            offset += 1;
        });
        let kib = len >> 10;
        rows.push((format!("apply_mask, {kib} KiB"), format!("{words:.2} GB/s")));
        rows.push((
            format!("naive byte-wise mask, {kib} KiB"),
            format!("{naive:.2} GB/s"),
        ));
        rows.push((
            format!("apply_mask / naive, {kib} KiB"),
            format!("{:.1}x", words / naive),
        ));
    }

    let (mut small, frames) = masked_stream(OpCode::Binary, 64, 4 << 20);
    let (calls, gbps) = measure(small.len(), || {
        black_box(decode_in_place(black_box(&mut small)));
    });
    rows.push((
        "decode, masked 64-byte binary frames, 64 KiB reads".to_string(),
        format!(
            "{:.1} M frames/s ({gbps:.2} GB/s)",
            calls * frames as f64 / 1e6
        ),
    ));

    println!("| frame codec | result |");
    println!("|---|---|");
    for (what, result) in rows {
        println!("| {what} | {result} |");
    }
    println!(
        "\n(total bench time {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
