//! Deterministic tests of the mux state machine: two `Mux` values talk
//! through `pump`, no sockets, no clock.

use super::record::{self, Kind};
use super::*;

fn cfg(window: u32, max_batch: usize) -> Config {
    Config {
        window,
        max_batch,
        ..Config::default()
    }
}

/// Move every queued batch from `from` into `to`; returns how many.
fn pump(from: &mut Mux, to: &mut Mux) -> usize {
    let mut n = 0;
    while let Some(b) = from.pop_batch() {
        assert!(b.len() <= from.cfg.max_batch, "batch over limit");
        to.recv_message(&b).expect("peer accepts our output");
        from.recycle(b);
        n += 1;
    }
    n
}

fn events(m: &mut Mux) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

/// An origin and a dest that exchanged HELLO; events drained.
fn pair_with(c: Config) -> (Mux, Mux) {
    let mut o = Mux::new(Side::Origin, c);
    let mut d = Mux::new(Side::Dest, c);
    assert_eq!(pump(&mut o, &mut d), 1);
    assert_eq!(pump(&mut d, &mut o), 1);
    let window = if c.grow {
        c.window | GROW_MARK
    } else {
        c.window
    };
    assert_eq!(events(&mut o), vec![Event::Ready { window }]);
    assert_eq!(events(&mut d), vec![Event::Ready { window }]);
    (o, d)
}

fn pair() -> (Mux, Mux) {
    pair_with(Config::default())
}

/// Open a channel from the dest and accept it at the origin.
fn open(o: &mut Mux, d: &mut Mux) -> ChannelId {
    let ch = d.open().unwrap();
    pump(d, o);
    assert_eq!(events(o), vec![Event::Open(ch)]);
    o.accept_open(ch);
    pump(o, d);
    assert_eq!(events(d), vec![Event::OpenOk(ch)]);
    ch
}

/// Deliver everything pending on `ch` (as if the socket took it all).
fn drain(m: &mut Mux, ch: ChannelId) -> Vec<u8> {
    let v = m.pending(ch).to_vec();
    m.consume(ch, v.len());
    v
}

fn rec(kind: Kind, ch: u32, p: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    record::encode(&mut v, kind, ch, p);
    v
}

fn hello(version: u16, window: u32) -> Vec<u8> {
    let mut p = version.to_be_bytes().to_vec();
    p.extend_from_slice(&window.to_be_bytes());
    rec(Kind::Hello, 0, &p)
}

#[test]
fn hello_first_and_once() {
    let mut o = Mux::new(Side::Origin, Config::default());
    assert!(!o.is_ready());
    let err = o.recv_message(&rec(Kind::Open, 1, b"")).unwrap_err();
    assert_eq!(err, Error::Hello("first record is not HELLO"));
    assert_eq!(o.error(), Some(&err));
    // Sticky: the HELLO we had queued is gone and nothing is accepted.
    assert!(o.pop_batch().is_none());
    assert!(o.recv_message(&hello(1, INITIAL_WINDOW)).is_err());

    let mut o = Mux::new(Side::Origin, Config::default());
    let mut two = hello(1, INITIAL_WINDOW);
    two.extend(hello(1, INITIAL_WINDOW));
    assert_eq!(o.recv_message(&two), Err(Error::Hello("second HELLO")));

    let mut o = Mux::new(Side::Origin, Config::default());
    assert_eq!(
        o.recv_message(&hello(2, INITIAL_WINDOW)),
        Err(Error::Version(2))
    );
    let mut o = Mux::new(Side::Origin, Config::default());
    assert_eq!(
        o.recv_message(&hello(1, 10)),
        Err(Error::WindowTooSmall(10))
    );
}

#[test]
fn hello_is_the_first_record_and_advertises_our_window() {
    let mut d = Mux::new(Side::Dest, cfg(5000, MAX_BATCH_BYTES));
    d.open().unwrap();
    let b = d.pop_batch().unwrap();
    assert_eq!(&b[..13], &hello(1, 5000)[..]);
    assert_eq!(&b[13..], &rec(Kind::Open, 1, b"")[..]);
}

#[test]
fn full_channel_lifecycle_both_directions() {
    let (mut o, mut d) = pair();
    let ch = open(&mut o, &mut d);
    assert_eq!(ch, 1);
    assert_eq!(d.send_data(ch, b"request"), 7);
    d.send_eof(ch);
    pump(&mut d, &mut o);
    assert_eq!(events(&mut o), vec![Event::Service(ch), Event::Service(ch)]);
    assert!(!o.wants_shutdown(ch), "data first");
    assert_eq!(drain(&mut o, ch), b"request");
    assert!(o.wants_shutdown(ch));
    o.eof_delivered(ch);
    assert!(!o.wants_shutdown(ch));
    // Half-closed: the origin still answers.
    assert_eq!(o.send_data(ch, b"response"), 8);
    o.send_eof(ch);
    assert!(!o.contains(ch), "origin: both directions done");
    pump(&mut o, &mut d);
    assert_eq!(drain(&mut d, ch), b"response");
    assert!(d.contains(ch));
    assert!(d.wants_shutdown(ch));
    d.eof_delivered(ch);
    assert!(!d.contains(ch), "dest: both directions done");
    assert_eq!(o.channel_count() + d.channel_count(), 0);
    // No CLOSE was needed: nothing left to send.
    assert!(d.pop_batch().is_none());
}

#[test]
fn open_fail_reaches_the_dest_and_late_records_are_ignored() {
    let (mut o, mut d) = pair();
    let ch = d.open().unwrap();
    // Optimistic data before OPEN_OK.
    assert_eq!(d.send_data(ch, b"early"), 5);
    pump(&mut d, &mut o);
    assert_eq!(events(&mut o), vec![Event::Open(ch), Event::Service(ch)]);
    o.reject_open(ch, "connect: No such file or directory (os error 2)");
    assert!(!o.contains(ch));
    pump(&mut o, &mut d);
    assert_eq!(
        events(&mut d),
        vec![Event::Closed(
            ch,
            "connect: No such file or directory (os error 2)".into()
        )]
    );
    assert!(!d.contains(ch));
    // Forgotten ids: late records are ignored on both sides, not errors.
    o.recv_message(&rec(Kind::Data, ch, b"late")).unwrap();
    o.recv_message(&rec(Kind::Eof, ch, b"")).unwrap();
    d.recv_message(&rec(Kind::Credit, ch, &5u32.to_be_bytes()))
        .unwrap();
    d.recv_message(&rec(Kind::Close, ch, b"x")).unwrap();
    assert!(events(&mut o).is_empty() && events(&mut d).is_empty());
}

#[test]
fn never_opened_ids_and_misdirected_records_fail_the_epoch() {
    let (mut o, _d) = pair();
    assert!(matches!(
        o.recv_message(&rec(Kind::Data, 5, b"x")),
        Err(Error::Unexpected { .. })
    ));
    let (_o, mut d) = pair();
    assert!(matches!(
        d.recv_message(&rec(Kind::Open, 1, b"")),
        Err(Error::Unexpected { .. })
    ));
    let (_o, mut d) = pair();
    assert!(matches!(
        d.recv_message(&rec(Kind::OpenOk, 1, b"")),
        Err(Error::Unexpected { .. })
    ));
    let (mut o, _d) = pair();
    assert!(matches!(
        o.recv_message(&rec(Kind::OpenOk, 1, b"")),
        Err(Error::Unexpected { .. })
    ));
    // Id reuse (even after the channel is gone) and ids going backwards.
    let (mut o, _d) = pair();
    o.recv_message(&rec(Kind::Open, 3, b"")).unwrap();
    o.reject_open(3, "no");
    assert!(matches!(
        o.recv_message(&rec(Kind::Open, 3, b"")),
        Err(Error::Unexpected { .. })
    ));
    let (mut o, _d) = pair();
    o.recv_message(&rec(Kind::Open, 3, b"")).unwrap();
    assert!(o.recv_message(&rec(Kind::Open, 2, b"")).is_err());
}

#[test]
fn state_violations_fail_the_epoch() {
    let (mut o, mut d) = pair();
    let ch = open(&mut o, &mut d);
    d.send_eof(ch);
    pump(&mut d, &mut o);
    assert!(matches!(
        o.recv_message(&rec(Kind::Data, ch, b"x")),
        Err(Error::Unexpected {
            why: "DATA after EOF",
            ..
        })
    ));

    let (mut o, mut d) = pair();
    let ch = open(&mut o, &mut d);
    d.send_eof(ch);
    pump(&mut d, &mut o);
    assert!(o.recv_message(&rec(Kind::Eof, ch, b"")).is_err());

    let (mut o, mut d) = pair();
    let ch = open(&mut o, &mut d);
    assert!(d.recv_message(&rec(Kind::OpenOk, ch, b"")).is_err());
    let _ = o;
}

#[test]
fn malformed_input_is_an_error_never_a_panic() {
    for bad in [
        vec![1u8],
        vec![200, 0, 0, 0, 0, 0, 0],
        rec(Kind::Data, 1, b"abc")[..8].to_vec(),
        rec(Kind::Credit, 1, b"ab"),
        rec(Kind::Close, 1, &[0xc3]),
    ] {
        let (mut o, mut d) = pair();
        let ch = open(&mut o, &mut d);
        let err = o.recv_message(&bad).unwrap_err();
        assert_eq!(err.close_code(), 4400);
        assert!(!err.to_string().is_empty());
        // After failure every operation is inert.
        assert_eq!(o.send_window(ch), 0);
        assert_eq!(o.send_data(ch, b"x"), 0);
        o.send_eof(ch);
        o.close(ch, "x");
        o.consume(ch, 1);
        assert!(o.pop_batch().is_none());
    }
    // A valid record followed by junk: the valid one took effect, then fail.
    let (mut o, mut d) = pair();
    let ch = open(&mut o, &mut d);
    let mut m = rec(Kind::Data, ch, b"ok");
    m.push(0xff);
    assert!(o.recv_message(&m).is_err());
    assert_eq!(o.pending(ch), b"ok");
}

#[test]
fn empty_message_is_fine() {
    let (mut o, _d) = pair();
    o.recv_message(&[]).unwrap();
}

#[test]
fn sender_never_exceeds_window_and_credit_reopens_it() {
    let w = 4096u32;
    let (mut o, mut d) = pair_with(cfg(w, MAX_BATCH_BYTES));
    let ch = open(&mut o, &mut d);
    let big = vec![7u8; 10_000];
    assert_eq!(d.send_window(ch), w as usize);
    assert_eq!(d.send_data(ch, &big), w as usize);
    assert_eq!(d.send_window(ch), 0);
    assert_eq!(d.send_data(ch, &big), 0);
    pump(&mut d, &mut o);
    events(&mut o);
    // Consuming less than half a window grants nothing yet.
    o.consume(ch, 1000);
    assert!(o.pop_batch().is_none());
    o.consume(ch, 1048); // 2048 = half: one CREDIT of 2048
    pump(&mut o, &mut d);
    assert_eq!(events(&mut d), vec![Event::Service(ch)]);
    assert_eq!(d.send_window(ch), 2048);
    // The receiver never buffers more than one window.
    assert_eq!(d.send_data(ch, &big), 2048);
    pump(&mut d, &mut o);
    assert_eq!(o.pending(ch).len(), w as usize);
}

#[test]
fn peer_overrunning_the_window_fails() {
    let w = 2048u32;
    let (mut o, mut d) = pair_with(cfg(w, MAX_BATCH_BYTES));
    let ch = open(&mut o, &mut d);
    o.recv_message(&rec(Kind::Data, ch, &vec![0; 2048]))
        .unwrap();
    assert_eq!(
        o.recv_message(&rec(Kind::Data, ch, b"x")),
        Err(Error::WindowExceeded { channel: ch })
    );
}

#[test]
fn credit_overflow_fails() {
    let (mut o, mut d) = pair();
    let ch = open(&mut o, &mut d);
    assert_eq!(
        d.recv_message(&rec(Kind::Credit, ch, &u32::MAX.to_be_bytes())),
        Err(Error::CreditOverflow { channel: ch })
    );
}

#[test]
fn stalled_channel_does_not_block_another() {
    let w = 8192u32;
    let (mut o, mut d) = pair_with(cfg(w, MAX_BATCH_BYTES));
    let stalled = open(&mut o, &mut d);
    let live = open(&mut o, &mut d);
    // The origin's socket for `stalled` never drains: the dest can only
    // push one window, then its reads for that channel stop.
    let chunk = vec![1u8; 1000];
    let mut sent = 0;
    loop {
        let n = d.send_data(stalled, &chunk);
        if n == 0 {
            break;
        }
        sent += n;
        pump(&mut d, &mut o);
    }
    assert_eq!(sent, w as usize);
    assert_eq!(o.pending(stalled).len(), w as usize);
    // Meanwhile `live` does 100 round trips unhindered.
    for i in 0..100u32 {
        let msg = i.to_be_bytes();
        assert_eq!(d.send_data(live, &msg), 4);
        pump(&mut d, &mut o);
        assert_eq!(drain(&mut o, live), msg);
        assert_eq!(o.send_data(live, &msg), 4);
        pump(&mut o, &mut d);
        assert_eq!(drain(&mut d, live), msg);
    }
    assert_eq!(o.pending(stalled).len(), w as usize);
}

#[test]
fn close_aborts_both_sides_at_once() {
    let (mut o, mut d) = pair();
    let ch = open(&mut o, &mut d);
    o.recv_message(&rec(Kind::Data, ch, b"unread")).unwrap();
    o.close(ch, "write: Broken pipe");
    assert!(!o.contains(ch));
    assert!(o.pending(ch).is_empty());
    pump(&mut o, &mut d);
    assert_eq!(
        events(&mut d),
        vec![Event::Closed(ch, "write: Broken pipe".into())]
    );
    assert!(!d.contains(ch));
    // Closing twice or closing unknown ids queues nothing.
    o.close(ch, "again");
    o.close(999, "never");
    assert!(o.pop_batch().is_none());
}

#[test]
fn dest_may_close_a_pending_open() {
    let (mut o, mut d) = pair();
    let ch = d.open().unwrap();
    d.close(ch, "client went away");
    pump(&mut d, &mut o);
    assert_eq!(
        events(&mut o),
        vec![
            Event::Open(ch),
            Event::Closed(ch, "client went away".into())
        ]
    );
    // The origin's connect finished later: accept is a no-op now.
    o.accept_open(ch);
    assert!(o.pop_batch().is_none());
    // Its OPEN_OK, had it raced, would be ignored by the dest.
    d.recv_message(&rec(Kind::OpenOk, ch, b"")).unwrap();
}

#[test]
fn no_data_before_peer_hello_then_window_arrives() {
    let mut o = Mux::new(Side::Origin, Config::default());
    let mut d = Mux::new(Side::Dest, Config::default());
    let ch = d.open().unwrap();
    assert_eq!(d.send_window(ch), 0);
    assert_eq!(d.send_data(ch, b"x"), 0);
    pump(&mut o, &mut d);
    assert_eq!(
        events(&mut d),
        vec![
            Event::Ready {
                window: INITIAL_WINDOW
            },
            Event::Service(ch)
        ]
    );
    assert_eq!(d.send_window(ch), INITIAL_WINDOW as usize);
}

#[test]
fn ids_count_up_from_one() {
    let (mut o, mut d) = pair();
    let ids: Vec<_> = (0..5).map(|_| d.open().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
    pump(&mut d, &mut o);
    let opens: Vec<_> = events(&mut o);
    assert_eq!(
        opens,
        ids.iter().map(|&i| Event::Open(i)).collect::<Vec<_>>()
    );
}

#[test]
fn small_records_share_one_batch() {
    let (mut o, mut d) = pair();
    for _ in 0..50 {
        let ch = d.open().unwrap();
        d.send_data(ch, b"0123456789");
        d.send_eof(ch);
    }
    assert_eq!(d.queued_bytes(), 50 * (7 + 17 + 7));
    assert_eq!(pump(&mut d, &mut o), 1, "one WebSocket message");
}

#[test]
fn batches_respect_the_limit_and_keep_order() {
    for max_batch in [64, 100, 1000, 4096, MAX_BATCH_BYTES] {
        let (mut o, mut d) = pair_with(cfg(1 << 20, max_batch));
        let a = open(&mut o, &mut d);
        let b = open(&mut o, &mut d);
        let mut want_a = Vec::new();
        let mut want_b = Vec::new();
        let mut seed = 12345u32;
        for i in 0..200 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let len = (seed >> 8) as usize % 3000 + 1;
            let data: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
            let (ch, want) = if i % 3 == 0 {
                (a, &mut want_a)
            } else {
                (b, &mut want_b)
            };
            assert_eq!(d.send_data(ch, &data), len);
            want.extend_from_slice(&data);
        }
        let queued = d.queued_bytes();
        let mut total = 0;
        while let Some(batch) = d.pop_batch() {
            assert!(batch.len() <= max_batch);
            assert!(!batch.is_empty());
            total += batch.len();
            o.recv_message(&batch).unwrap();
        }
        assert_eq!(total, queued);
        assert_eq!(d.queued_bytes(), 0);
        assert_eq!(drain(&mut o, a), want_a, "max_batch {max_batch}");
        assert_eq!(drain(&mut o, b), want_b, "max_batch {max_batch}");
    }
}

#[test]
fn max_batch_is_clamped_to_one_noise_message() {
    let (mut o, mut d) = pair_with(cfg(1 << 24, 1 << 20));
    let ch = open(&mut o, &mut d);
    d.send_data(ch, &vec![0; 300_000]);
    while let Some(b) = d.pop_batch() {
        assert!(b.len() <= MAX_BATCH_BYTES);
    }
}

#[test]
fn long_reasons_are_truncated() {
    let (mut o, mut d) = pair();
    let ch = d.open().unwrap();
    pump(&mut d, &mut o);
    o.reject_open(ch, &"é".repeat(1000));
    pump(&mut o, &mut d);
    let ev = events(&mut d);
    let Event::Closed(_, r) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert!(r.len() <= record::MAX_REASON_LEN && r.chars().all(|c| c == 'é'));
}

#[test]
fn credit_reaches_a_steady_state_over_a_long_transfer() {
    let (mut o, mut d) = pair();
    let ch = open(&mut o, &mut d);
    let chunk = vec![3u8; 70_000];
    let mut got = 0usize;
    for _ in 0..200 {
        let n = d.send_data(ch, &chunk);
        pump(&mut d, &mut o);
        // The origin's socket takes odd-sized pieces.
        while !o.pending(ch).is_empty() {
            let k = o.pending(ch).len().min(12_345);
            o.consume(ch, k);
            got += k;
        }
        pump(&mut o, &mut d);
        assert!(n > 0 || d.send_window(ch) > 0, "stalled");
    }
    assert!(got > 10_000_000, "moved {got}");
}

#[test]
fn idle_channel_releases_its_buffer() {
    let (mut o, mut d) = pair();
    let ch = open(&mut o, &mut d);
    d.send_data(ch, &vec![1; 100_000]);
    pump(&mut d, &mut o);
    drain(&mut o, ch);
    assert_eq!(o.channels[&ch].recv.capacity(), 0);
}

/// Lazy OPEN_OK (what the binaries use): no message of its own; it rides
/// in front of the origin's first record for the channel.
#[test]
fn lazy_open_ok_rides_with_the_first_record() {
    let (mut o, mut d) = pair_with(Config::client());
    let ch = d.open().unwrap();
    assert_eq!(d.send_data(ch, b"request"), 7);
    pump(&mut d, &mut o);
    assert_eq!(events(&mut o), vec![Event::Open(ch), Event::Service(ch)]);
    o.accept_open(ch);
    assert!(o.pop_batch().is_none(), "no lone OPEN_OK");
    assert_eq!(drain(&mut o, ch), b"request");
    assert_eq!(o.send_data(ch, b"reply"), 5);
    let b = o.pop_batch().unwrap();
    let (first, n) = record::decode(&b).unwrap();
    assert_eq!(first, record::Record::OpenOk { channel: ch });
    let (second, _) = record::decode(&b[n..]).unwrap();
    assert_eq!(
        second,
        record::Record::Data {
            channel: ch,
            data: b"reply"
        }
    );
    d.recv_message(&b).unwrap();
    assert_eq!(events(&mut d), vec![Event::OpenOk(ch), Event::Service(ch)]);
    assert_eq!(drain(&mut d, ch), b"reply");
    // Clean end in both directions: both sides forget the id.
    d.send_eof(ch);
    pump(&mut d, &mut o);
    assert!(o.wants_shutdown(ch));
    o.eof_delivered(ch);
    o.send_eof(ch);
    pump(&mut o, &mut d);
    d.eof_delivered(ch);
    assert!(!o.contains(ch) && !d.contains(ch));
}

/// Lazy OPEN_OK on a channel the origin only ends (EOF without data) or
/// only grants credit on: OPEN_OK still precedes it; an aborted channel
/// needs none.
#[test]
fn lazy_open_ok_before_eof_and_credit_not_before_close() {
    let c = Config {
        window: 2048,
        grow: false,
        ..Config::client()
    };
    let (mut o, mut d) = pair_with(c);
    // EOF only.
    let a = d.open().unwrap();
    pump(&mut d, &mut o);
    o.accept_open(a);
    o.send_eof(a);
    let b = o.pop_batch().unwrap();
    assert_eq!(
        record::decode(&b).unwrap().0,
        record::Record::OpenOk { channel: a }
    );
    d.recv_message(&b).unwrap();
    // Credit only: the dest fills the window, the origin consumes it.
    let k = d.open().unwrap();
    pump(&mut d, &mut o);
    o.accept_open(k);
    assert_eq!(d.send_data(k, &[1u8; 2048]), 2048);
    pump(&mut d, &mut o);
    assert_eq!(drain(&mut o, k).len(), 2048);
    let b = o.pop_batch().unwrap();
    assert_eq!(
        record::decode(&b).unwrap().0,
        record::Record::OpenOk { channel: k }
    );
    d.recv_message(&b).unwrap();
    let _ = events(&mut d);
    assert_eq!(d.send_window(k), 2048);
    // Abort: CLOSE alone.
    let x = d.open().unwrap();
    pump(&mut d, &mut o);
    o.accept_open(x);
    o.close(x, "gone");
    let b = o.pop_batch().unwrap();
    assert_eq!(
        record::decode(&b).unwrap().0,
        record::Record::Close {
            channel: x,
            reason: "gone"
        }
    );
    d.recv_message(&b).unwrap();
    assert!(!d.contains(x));
}

#[test]
fn send_data_with_queues_what_fill_appended_and_nothing_for_zero() {
    let w = 4096u32;
    let (mut o, mut d) = pair_with(cfg(w, MAX_BATCH_BYTES));
    let ch = open(&mut o, &mut d);
    // Nothing appended: nothing queued, the window unchanged.
    assert_eq!(d.send_data_with(ch, 100, |_, _| ()), Some((0, ())));
    assert!(d.pop_batch().is_none());
    assert_eq!(d.send_window(ch), w as usize);
    // Offered at most the window; appends less; the record says so.
    let r = d.send_data_with(ch, 10_000, |b, room| {
        assert_eq!(room, w as usize);
        b.extend_from_slice(&[5u8; 1000]);
        room
    });
    assert_eq!(r, Some((1000, w as usize)));
    assert_eq!(d.send_window(ch), w as usize - 1000);
    assert_eq!(d.send_data(ch, &[6u8; 10]), 10);
    pump(&mut d, &mut o);
    let mut want = vec![5u8; 1000];
    want.extend_from_slice(&[6u8; 10]);
    assert_eq!(o.pending(ch), &want[..]);
    // A closed window: fill is not called.
    assert_eq!(d.send_data_with(ch, 0, |_, _| unreachable!()), None);
}

#[test]
fn recv_message_with_delivers_directly_and_credits_exactly() {
    let w = 4096u32;
    let (mut o, mut d) = pair_with(cfg(w, MAX_BATCH_BYTES));
    let ch = open(&mut o, &mut d);
    let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    assert_eq!(d.send_data(ch, &data), 3000);
    let b = d.pop_batch().unwrap();
    // The socket takes 2500 of 3000: the rest is queued, credit for half a
    // window (2048) or more goes back.
    let mut got = Vec::new();
    o.recv_message_with(&b, &mut |c, bytes| {
        assert_eq!(c, ch);
        got.extend_from_slice(&bytes[..2500]);
        2500
    })
    .unwrap();
    assert_eq!(got, &data[..2500]);
    assert_eq!(o.pending(ch), &data[2500..]);
    assert_eq!(events(&mut o), vec![Event::Service(ch)]);
    pump(&mut o, &mut d);
    assert_eq!(d.send_window(ch), w as usize - 3000 + 2500);
    // With something queued, the next DATA is queued behind it.
    assert_eq!(d.send_data(ch, &[9u8; 10]), 10);
    let b = d.pop_batch().unwrap();
    o.recv_message_with(&b, &mut |_, _| panic!("queue not empty"))
        .unwrap();
    let mut want = data[2500..].to_vec();
    want.extend_from_slice(&[9u8; 10]);
    assert_eq!(drain(&mut o, ch), want);
}

/// Windows grow only where the reader keeps up and both sides speak
/// WINDOW: a channel whose bytes are consumed at once doubles its window
/// at each credit up to `max_window`; a stalled one keeps the initial
/// window; with a peer that does not speak WINDOW nothing grows, and a
/// WINDOW record sent to a mux that never offered it is a protocol error.
#[test]
fn windows_grow_for_readers_that_keep_up_and_only_with_the_mark() {
    let c = Config {
        window: 4096,
        max_batch: 1500,
        grow: true,
        max_window: 4096 * 8,
        ..Config::client()
    };
    let w0 = (4096 | GROW_MARK) as usize;
    let (mut o, mut d) = pair_with(c);
    let fast = d.open().unwrap();
    let slow = d.open().unwrap();
    pump(&mut d, &mut o);
    o.accept_open(fast);
    o.accept_open(slow);
    let mut windows = vec![d.send_window(fast)];
    for _ in 0..12 {
        // The fast channel's bytes reach its socket at once (all consumed);
        // the slow one's stay queued (never consumed).
        let n = d.send_data(fast, &vec![7u8; d.send_window(fast)]);
        let _ = d.send_data(slow, &vec![9u8; d.send_window(slow)]);
        assert!(n > 0);
        pump(&mut d, &mut o);
        assert_eq!(drain(&mut o, fast).len(), n);
        pump(&mut o, &mut d);
        windows.push(d.send_window(fast));
    }
    let _ = (events(&mut o), events(&mut d));
    assert_eq!(windows[0], w0);
    assert!(
        windows.windows(2).all(|p| p[1] >= p[0]),
        "the window never shrinks: {windows:?}"
    );
    assert_eq!(
        *windows.last().unwrap(),
        4096 * 8,
        "grew to the maximum: {windows:?}"
    );
    assert_eq!(
        d.send_window(slow),
        0,
        "the stalled channel's window is spent"
    );
    assert_eq!(o.channels[&slow].grant, w0 as u64, "and was never grown");

    // A peer without the mark (an earlier build): nothing grows.
    let old = Config { grow: false, ..c };
    let mut o = Mux::new(Side::Origin, c);
    let mut d = Mux::new(Side::Dest, old);
    pump(&mut o, &mut d);
    pump(&mut d, &mut o);
    let ch = d.open().unwrap();
    pump(&mut d, &mut o);
    o.accept_open(ch);
    for _ in 0..4 {
        let n = d.send_data(ch, &vec![1u8; d.send_window(ch)]);
        pump(&mut d, &mut o);
        assert_eq!(drain(&mut o, ch).len(), n);
        pump(&mut o, &mut d);
        assert_eq!(
            d.send_window(ch),
            w0,
            "no WINDOW to a peer without the mark"
        );
    }
    // And a WINDOW record to a mux that never offered it fails its epoch.
    let mut rogue = Vec::new();
    record::encode(&mut rogue, record::Kind::Window, ch, &4096u32.to_be_bytes());
    assert!(d.recv_message(&rogue).is_err());

    // A peer growing a window past 16 MiB (we would retain what it lets us
    // send) fails the epoch too.
    let (mut o, mut d) = pair_with(c);
    let ch = d.open().unwrap();
    pump(&mut d, &mut o);
    let mut grow = Vec::new();
    record::encode(
        &mut grow,
        record::Kind::Window,
        ch,
        &(8u32 << 20).to_be_bytes(),
    );
    d.recv_message(&grow)
        .expect("growing to about 8 MiB is fine");
    assert!(matches!(
        d.recv_message(&grow),
        Err(Error::CreditOverflow { .. })
    ));
}
