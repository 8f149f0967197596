//! Feeds arbitrary bytes to the mux as peer messages, interleaved with local
//! channel operations chosen by the input. The mux must never panic, never
//! emit a batch over its limit, and never buffer more than one window per
//! channel, whatever the peer sends.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sockrelay::mux::{Config, Event, Mux, Side};

const WINDOW: u32 = 4096;
const MAX_BATCH: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let side = if mode & 1 == 0 {
        Side::Origin
    } else {
        Side::Dest
    };
    let mut mux = Mux::new(
        side,
        Config {
            window: WINDOW,
            max_batch: MAX_BATCH,
            // Both OPEN_OK modes (the binaries use the lazy one).
            lazy_open_ok: mode & 4 != 0,
            // With and without WINDOW records.
            grow: mode & 8 != 0,
            max_window: WINDOW * 4,
        },
    );
    // Let the well-formed path be reached often: start with a valid HELLO
    // unless the input asks not to.
    if mode & 2 == 0 {
        let _ = mux.recv_message(&[1, 0, 0, 0, 0, 0, 6, 0, 1, 0, 0, 0x10, 0]);
    }
    let mut payload = [0u8; 3000];
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let arg = rest.first().copied().unwrap_or(0);
        let ch = u32::from(arg % 8);
        match op % 10 {
            // A peer message: next byte is the length.
            0..=3 => {
                let len = (arg as usize).min(rest.len().saturating_sub(1));
                let msg = &rest[1.min(rest.len())..1.min(rest.len()) + len];
                let _ = mux.recv_message(msg);
                rest = &rest[(1 + len).min(rest.len())..];
                continue;
            }
            4 => {
                if side == Side::Dest {
                    let _ = mux.open();
                }
            }
            5 => {
                let n = mux.send_data(ch, &payload[..(arg as usize * 11).min(payload.len())]);
                assert!(n <= arg as usize * 11);
                payload[0] = payload[0].wrapping_add(1);
            }
            6 => {
                let n = mux.pending(ch).len();
                // One window at most, grown to WINDOW * 4 at most.
                assert!(n <= if mode & 8 != 0 { WINDOW * 4 } else { WINDOW } as usize);
                mux.consume(ch, n.min(arg as usize * 37));
                if mux.wants_shutdown(ch) {
                    mux.eof_delivered(ch);
                }
            }
            7 => mux.send_eof(ch),
            8 => match arg % 3 {
                0 => mux.accept_open(ch),
                1 => mux.reject_open(ch, "connect failed"),
                _ => mux.close(ch, "abort"),
            },
            _ => {
                while let Some(b) = mux.pop_batch() {
                    assert!(b.len() <= MAX_BATCH);
                    mux.recycle(b);
                }
            }
        }
        rest = &rest[1.min(rest.len())..];
        while let Some(ev) = mux.poll_event() {
            if let Event::Open(c) = ev {
                if c % 2 == 0 {
                    mux.accept_open(c);
                }
            }
        }
    }
    while let Some(b) = mux.pop_batch() {
        assert!(b.len() <= MAX_BATCH);
    }
});
