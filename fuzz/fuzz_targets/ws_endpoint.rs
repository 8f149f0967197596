//! Drive the WebSocket endpoint policy (`ws::endpoint::Endpoint`) with a
//! random sequence of events and check it against a small model:
//! - a pong, when one goes out, carries the latest ping's payload (cut to
//!   125 bytes) — or the latest relay control ping's, which a plain ping
//!   does not displace — and at most one goes out per ping burst;
//! - the close echo goes out at most once, and nothing after any close;
//! - a pong goes out only while the queue is under the control room;
//! - every byte it queues decodes as masked control frames;
//! - verdicts: over the cap exactly when the queue is; "not reading" only
//!   with output pending and no progress for the stall timeout.
//!
//! Input: a sequence of ops, each an op byte and its arguments.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sockrelay::ws::endpoint::{Endpoint, Limits, Verdict, MAX_CONTROL_PAYLOAD_BYTES};
use sockrelay::ws::frame::{Decoder, Event, OpCode, Role};

const LIMITS: Limits = Limits {
    control_room_bytes: 300,
    max_queued_bytes: 5000,
    stall_timeout: Duration::from_millis(700),
    read_budget_bytes: 4096,
};

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let n = n.min(data.len());
    let (a, b) = data.split_at(n);
    *data = b;
    a
}

fn byte(data: &mut &[u8]) -> u8 {
    take(data, 1).first().copied().unwrap_or(0)
}

fn u16_of(data: &mut &[u8]) -> u16 {
    let b = take(data, 2);
    u16::from_le_bytes([
        b.first().copied().unwrap_or(0),
        b.get(1).copied().unwrap_or(0),
    ])
}

/// Decode everything `out` holds as a server would; all of it must be
/// whole masked control frames.
fn control_frames(out: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
    let mut buf = out.to_vec();
    let mut dec = Decoder::new(Role::Server, 1 << 20);
    let mut pos = 0;
    let mut got = Vec::new();
    while pos < buf.len() {
        let (ev, used) = dec
            .decode(&mut buf[pos..])
            .expect("endpoint output decodes")
            .expect("endpoint output is whole frames");
        let Event::Control(h) = ev else {
            panic!("endpoint queued a data frame");
        };
        let end = pos + used;
        got.push((h.opcode, buf[end - h.payload_len as usize..end].to_vec()));
        pos = end;
    }
    got
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let mut e = Endpoint::new(LIMITS);
    let t0 = Instant::now();
    let mut now = t0;
    // The model.
    let mut latest_ping: Option<Vec<u8>> = None;
    let mut close_received: Option<Option<u16>> = None;
    let mut close_out = false;
    let mut stalled_since: Option<Instant> = None;
    let mut ops = 0;
    while !data.is_empty() && ops < 10_000 {
        ops += 1;
        match byte(&mut data) % 6 {
            0 => {
                let n = byte(&mut data) as usize;
                let p = take(&mut data, n).to_vec();
                e.on_ping(&p);
                if close_received.is_none() && !close_out {
                    let cut = p.len().min(MAX_CONTROL_PAYLOAD_BYTES);
                    // A pending relay control ping is not displaced by a
                    // plain one (its echo acknowledges a pairing change).
                    let prefix = sockrelay::control::PREFIX.as_bytes();
                    let sticky = latest_ping.as_ref().is_some_and(|l| l.starts_with(prefix))
                        && !p.starts_with(prefix);
                    if !sticky {
                        latest_ping = Some(p[..cut].to_vec());
                    }
                }
            }
            1 => {
                let code = match byte(&mut data) {
                    0 => None,
                    _ => Some(u16_of(&mut data)),
                };
                e.on_close(code);
                if close_received.is_none() && !close_out {
                    close_received = Some(code);
                }
                latest_ping = None;
            }
            2 => {
                e.on_close_sent();
                close_out = true;
                close_received = None;
                latest_ping = None;
            }
            3 => {
                let queued = u16_of(&mut data) as usize % 600;
                let mut out = Vec::new();
                let q = e.encode_pending(&mut out, queued, || Some([9, 8, 7, 6]));
                let frames = control_frames(&out);
                assert!(frames.len() <= 1, "{frames:?}");
                if let Some(code) = close_received.take() {
                    assert!(q.close && !q.pong);
                    assert!(!close_out, "a second close went out");
                    let (op, payload) = &frames[0];
                    assert_eq!(*op, OpCode::Close);
                    let valid = code.filter(|&c| sockrelay::ws::frame::is_valid_close_code(c));
                    assert_eq!(payload[..2], valid.unwrap_or(1000).to_be_bytes());
                    close_out = true;
                    latest_ping = None;
                } else if close_out {
                    assert!(frames.is_empty(), "output after a close");
                } else if queued < LIMITS.control_room_bytes && latest_ping.is_some() {
                    assert!(q.pong);
                    let want = latest_ping.take().expect("a pending ping");
                    assert_eq!(frames, vec![(OpCode::Pong, want)]);
                } else {
                    assert!(frames.is_empty(), "{frames:?} queued={queued}");
                }
                assert_eq!(e.is_closing(), close_out || close_received.is_some());
            }
            4 => {
                let dt = u16_of(&mut data) as u64 % 1000;
                now += Duration::from_millis(dt);
            }
            _ => {
                let queued = u16_of(&mut data) as usize % 6000;
                let unacked = u16_of(&mut data) as usize % 3;
                let progress = byte(&mut data) as usize % 2;
                let v = e.on_write(queued, unacked, progress, now);
                if queued > LIMITS.max_queued_bytes {
                    assert!(matches!(v, Verdict::OverCap { .. }), "{v:?}");
                    continue;
                }
                let pending = queued + unacked;
                if pending == 0 || progress > 0 {
                    stalled_since = (pending > 0).then_some(now);
                    assert_eq!(v, Verdict::Fine);
                    continue;
                }
                let since = *stalled_since.get_or_insert(now);
                let stalled = now - since;
                if stalled >= LIMITS.stall_timeout {
                    assert_eq!(
                        v,
                        Verdict::NotReading {
                            queued: pending,
                            stalled
                        }
                    );
                } else {
                    assert_eq!(v, Verdict::Fine);
                }
            }
        }
    }
});
