//! Two v2 muxes (origin, dest) driven by the input: channel operations,
//! partial delivery, link cuts and resumes on new handshake hashes, window
//! expiry, and (when asked) arbitrary bytes injected into either side.
//! Never a panic; retained data never exceeds one window; batches respect
//! the limit; and as long as nothing was injected, each side accepts
//! everything the other sends (resume never makes an honest pair fail).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sockrelay::mux::{Config, Event, Mux, Side};
use std::time::{Duration, Instant};

const MAX_BATCH: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let cfg = Config {
        window: 4096,
        max_batch: MAX_BATCH,
        lazy_open_ok: true,
        // Windows that grow (WINDOW records), up to 4 x the initial one.
        grow: true,
        max_window: 16384,
    };
    let win = Duration::from_secs(60);
    let mut m = [
        Mux::with_resume(Side::Origin, cfg, [1; 32], win),
        Mux::with_resume(Side::Dest, cfg, [2; 32], win),
    ];
    // One window at most: windows start at 4096 (plus the marks) and grow
    // to max_window.
    let window = 16384;
    let mut now = Instant::now();
    let mut injected = false;
    let mut link = 0u32;
    let payload = [0xa5u8; 3000];
    let mut it = data.iter().copied();
    while let Some(op) = it.next() {
        let arg = it.next().unwrap_or(0);
        let s = (op >> 7) as usize; // which side acts
        let ch = u32::from(arg % 6);
        match op % 12 {
            0 => {
                let _ = m[1].open();
            }
            1 => {
                m[s].send_data(ch, &payload[..(arg as usize * 11).min(payload.len())]);
            }
            2 => {
                let n = m[s].pending(ch).len().min(arg as usize * 37);
                m[s].consume(ch, n);
                if m[s].wants_shutdown(ch) {
                    m[s].eof_delivered(ch);
                }
            }
            3 => m[s].send_eof(ch),
            4 => match arg % 3 {
                0 => m[0].accept_open(ch),
                1 => m[0].reject_open(ch, "refused"),
                _ => m[s].close(ch, "abort"),
            },
            5..=7 => {
                // Deliver up to `arg % 4 + 1` batches from side s.
                for _ in 0..(arg % 4 + 1) {
                    let Some(b) = m[s].pop_batch() else { break };
                    assert!(b.len() <= MAX_BATCH);
                    let r = m[1 - s].recv_message(&b);
                    if !injected {
                        assert!(r.is_ok(), "{r:?}");
                    }
                }
            }
            8 => {
                // Link cut: in-flight batches are lost.
                now += Duration::from_millis(arg as u64 * 10);
                link += 1;
                let h = link.to_be_bytes();
                // A mux that cannot resume is replaced, as the loop does.
                if !m[0].suspend(now) {
                    m[0] = Mux::with_resume(Side::Origin, cfg, [link as u8; 32], win);
                }
                if !m[1].suspend(now) {
                    m[1] = Mux::with_resume(Side::Dest, cfg, [!(link as u8); 32], win);
                }
                m[0].resume(now, &h);
                m[1].resume(now, &h);
            }
            9 => {
                now += Duration::from_secs(arg as u64);
                m[0].handle_timeout(now);
                m[1].handle_timeout(now);
            }
            10 => {
                let len = (arg as usize) % 64;
                let bytes: Vec<u8> = it.by_ref().take(len).collect();
                injected = true;
                let _ = m[s].recv_message(&bytes);
            }
            _ => {}
        }
        for x in m.iter_mut() {
            while let Some(ev) = x.poll_event() {
                let _ = matches!(ev, Event::Closed(..));
            }
            for c in x.channel_ids() {
                assert!(x.retained_bytes(c) <= window);
                assert!(x.pending(c).len() <= window);
            }
            if x.error().is_some() {
                // The loop would drop the link; the state must still be sane.
                injected = true;
            }
        }
    }
});
