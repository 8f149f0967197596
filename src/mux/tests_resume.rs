//! Mux v2: retention and resume across simulated link losses. Two `Mux`
//! values talk through an in-memory link that can drop whatever is in
//! flight; time is simulated.

use super::*;

const W: Duration = Duration::from_secs(60);

fn t0() -> Instant {
    Instant::now()
}

fn small() -> Config {
    // Windows that grow (to 4 x 4096): resumes must hold with grown ones.
    Config {
        window: 4096,
        max_batch: 1500,
        lazy_open_ok: true,
        grow: true,
        max_window: 16384,
    }
}

fn v2(side: Side, secret: u8, cfg: Config) -> Mux {
    Mux::with_resume(side, cfg, [secret; 32], W)
}

/// Deliver every queued batch from `from` to `to`.
fn pump(from: &mut Mux, to: &mut Mux) -> Result<usize> {
    let mut n = 0;
    while let Some(b) = from.pop_batch() {
        to.recv_message(&b)?;
        n += 1;
    }
    Ok(n)
}

fn pump_all(o: &mut Mux, d: &mut Mux) {
    for _ in 0..8 {
        let a = pump(o, d).expect("dest accepts");
        let b = pump(d, o).expect("origin accepts");
        if a + b == 0 {
            return;
        }
    }
}

/// Lose the link: drop everything in flight, suspend both.
fn cut(o: &mut Mux, d: &mut Mux, now: Instant) {
    assert!(o.suspend(now));
    assert!(d.suspend(now));
    assert!(!o.is_live() && !d.is_live());
}

fn relink(o: &mut Mux, d: &mut Mux, now: Instant, hash: &[u8]) {
    o.resume(now, hash);
    d.resume(now, hash);
    pump_all(o, d);
}

fn events(m: &mut Mux) -> Vec<Event> {
    std::iter::from_fn(|| m.poll_event()).collect()
}

fn closed(m: &mut Mux) -> Vec<(ChannelId, String)> {
    events(m)
        .into_iter()
        .filter_map(|e| match e {
            Event::Closed(c, r) => Some((c, r)),
            _ => None,
        })
        .collect()
}

fn pair(cfg: Config) -> (Mux, Mux) {
    let mut o = v2(Side::Origin, 1, cfg);
    let mut d = v2(Side::Dest, 2, cfg);
    pump_all(&mut o, &mut d);
    assert!(o.resumable() && d.resumable());
    assert_eq!(o.take_session_outcome(), Some(false));
    assert_eq!(d.take_session_outcome(), Some(false));
    events(&mut o);
    events(&mut d);
    (o, d)
}

fn stream(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One end's application: a stream to send, what it received.
struct App {
    out: Vec<u8>,
    pos: usize,
    got: Vec<u8>,
    eof_done: bool,
    shut: bool,
}

impl App {
    fn new(out: Vec<u8>) -> App {
        App {
            out,
            pos: 0,
            got: Vec::new(),
            eof_done: false,
            shut: false,
        }
    }
    /// Write what the window allows, read at most `read` bytes.
    fn step(&mut self, m: &mut Mux, ch: ChannelId, read: usize) {
        if !m.contains(ch) || !m.is_live() {
            // Reads continue during an outage: the socket keeps draining
            // what had already arrived.
            if m.contains(ch) {
                self.read(m, ch, read);
            }
            return;
        }
        let n = m.send_data(
            ch,
            &self.out[self.pos..(self.pos + 3000).min(self.out.len())],
        );
        self.pos += n;
        if self.pos == self.out.len() && !self.eof_done {
            m.send_eof(ch);
            self.eof_done = true;
        }
        self.read(m, ch, read);
    }
    fn read(&mut self, m: &mut Mux, ch: ChannelId, read: usize) {
        let p = m.pending(ch);
        let k = p.len().min(read);
        self.got.extend_from_slice(&p[..k]);
        m.consume(ch, k);
        if m.wants_shutdown(ch) && !self.shut {
            self.shut = true;
            m.eof_delivered(ch);
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// A channel carrying `n_do` bytes dest→origin... no: origin→dest `n_od`
/// and dest→origin `n_do`, with the link cut every few steps and only a
/// random prefix of the in-flight batches delivered each time.
fn transfer_with_cuts(seed: u64, n_od: usize, n_do: usize, cuts: usize) {
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    assert_eq!(events(&mut o), vec![Event::Open(ch)]);
    o.accept_open(ch);
    let mut ao = App::new(stream(seed, n_od));
    let mut ad = App::new(stream(seed + 1, n_do));
    let mut rng = Rng(seed);
    let mut now = t0();
    let mut cuts_left = cuts;
    for step in 0..20_000u32 {
        ao.step(&mut o, ch, 1 + rng.next() as usize % 3000);
        ad.step(&mut d, ch, 1 + rng.next() as usize % 3000);
        let cut_now = cuts_left > 0 && rng.next() % 4 == 0;
        // Deliver a random prefix of each direction's batches.
        for dir in 0..2 {
            let (from, to) = if dir == 0 {
                (&mut o, &mut d)
            } else {
                (&mut d, &mut o)
            };
            let k = if cut_now {
                rng.next() as usize % 3
            } else {
                usize::MAX
            };
            let mut i = 0;
            while i < k {
                let Some(b) = from.pop_batch() else { break };
                to.recv_message(&b).expect("peer accepts");
                i += 1;
            }
        }
        if cut_now {
            cuts_left -= 1;
            now += Duration::from_millis(500);
            cut(&mut o, &mut d, now);
            // The apps keep reading what arrived before the cut.
            ao.step(&mut o, ch, 100);
            ad.step(&mut d, ch, 100);
            assert_eq!(o.send_window(ch), 0);
            assert!(o.pop_batch().is_none());
            now += Duration::from_secs(2);
            if rng.next() % 3 == 0 {
                // The new link dies during the resume exchange itself,
                // after a random part of it.
                let mut h = step.to_be_bytes().to_vec();
                h.push(1);
                o.resume(now, &h);
                d.resume(now, &h);
                for _ in 0..rng.next() % 4 {
                    let (from, to) = if rng.next() % 2 == 0 {
                        (&mut o, &mut d)
                    } else {
                        (&mut d, &mut o)
                    };
                    if let Some(b) = from.pop_batch() {
                        to.recv_message(&b).expect("peer accepts");
                    }
                }
                ao.step(&mut o, ch, 100);
                ad.step(&mut d, ch, 100);
                cut(&mut o, &mut d, now);
            }
            relink(&mut o, &mut d, now, &step.to_be_bytes());
            assert!(o.is_live() && d.is_live(), "resumed at step {step}");
            assert_eq!(o.take_session_outcome(), Some(true));
            assert_eq!(d.take_session_outcome(), Some(true));
        }
        // At most one window, grown ones included.
        let w = o.cfg.max_window as usize;
        assert!(o.retained_bytes(ch) <= w && d.retained_bytes(ch) <= w);
        for m in [&mut o, &mut d] {
            for e in events(m) {
                assert!(!matches!(e, Event::Closed(..)), "{e:?}");
            }
        }
        if !o.contains(ch) && !d.contains(ch) {
            break;
        }
    }
    if n_od + n_do > 10_000 {
        assert!(cuts_left + 2 <= cuts, "only {} cuts", cuts - cuts_left);
    }
    assert!(
        !o.contains(ch) && !d.contains(ch),
        "channel finished on both sides"
    );
    assert_eq!(ad.got.len(), n_od);
    assert!(ad.got == ao.out, "origin→dest bytes differ");
    assert_eq!(ao.got.len(), n_do);
    assert!(ao.got == ad.out, "dest→origin bytes differ");
    assert!(ao.shut && ad.shut);
}

#[test]
fn bulk_both_directions_survive_many_cuts_exactly() {
    for seed in 1..40 {
        transfer_with_cuts(seed, 200_000, 150_000, 12);
    }
}

#[test]
fn one_direction_only_and_tiny_streams() {
    for seed in 100..130 {
        transfer_with_cuts(seed, 0, 90_000, 5);
        transfer_with_cuts(seed, 90_000, 0, 5);
        transfer_with_cuts(seed, 3, 1, 3);
    }
}

#[test]
fn open_lost_in_the_outage_is_sent_again() {
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    assert_eq!(d.send_data(ch, b"hello"), 5);
    d.send_eof(ch);
    // Everything the dest sent is lost.
    let now = t0();
    cut(&mut o, &mut d, now);
    relink(&mut o, &mut d, now, b"h2");
    assert!(events(&mut o).contains(&Event::Open(ch)));
    o.accept_open(ch);
    pump_all(&mut o, &mut d);
    assert_eq!(o.pending(ch), b"hello");
    assert!(o.eof_received(ch));
}

#[test]
fn open_ok_lost_and_origin_pending_during_outage() {
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    assert_eq!(events(&mut o), vec![Event::Open(ch)]);
    let now = t0();
    cut(&mut o, &mut d, now);
    // The origin's connect completes during the outage.
    o.accept_open(ch);
    relink(&mut o, &mut d, now, b"h2");
    assert!(events(&mut d).contains(&Event::OpenOk(ch)));

    // A rejected open whose OPEN_FAIL is lost: the dest learns the reason.
    let ch2 = d.open().unwrap();
    pump_all(&mut o, &mut d);
    events(&mut o);
    cut(&mut o, &mut d, now);
    o.reject_open(ch2, "connection refused");
    relink(&mut o, &mut d, now, b"h3");
    assert_eq!(
        closed(&mut d),
        vec![(ch2, "connection refused".to_string())]
    );
    assert!(!d.contains(ch2));
}

#[test]
fn half_close_and_close_lost_in_the_outage() {
    let (mut o, mut d) = pair(small());
    let a = d.open().unwrap();
    let b = d.open().unwrap();
    pump_all(&mut o, &mut d);
    o.accept_open(a);
    o.accept_open(b);
    pump_all(&mut o, &mut d);
    events(&mut o);
    events(&mut d);
    // EOF on a and CLOSE on b are queued, then lost.
    o.send_data(a, b"tail");
    o.send_eof(a);
    o.close(b, "origin socket reset");
    let _lost = o.pop_batch();
    let now = t0();
    cut(&mut o, &mut d, now);
    relink(&mut o, &mut d, now, b"h2");
    assert_eq!(d.pending(a), b"tail");
    assert!(d.eof_received(a));
    assert_eq!(closed(&mut d), vec![(b, "origin socket reset".to_string())]);
    // Finish a: the dest closes its half, both forget it.
    d.consume(a, 4);
    d.eof_delivered(a);
    d.send_eof(a);
    pump_all(&mut o, &mut d);
    o.eof_delivered(a);
    pump_all(&mut o, &mut d);
    assert!(!o.contains(a) && !d.contains(a));
}

#[test]
fn final_eof_ack_lost_finishes_cleanly() {
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    o.accept_open(ch);
    d.send_eof(ch);
    o.send_eof(ch);
    pump_all(&mut o, &mut d);
    o.eof_delivered(ch);
    pump_all(&mut o, &mut d); // the origin's EOF_ACK reaches the dest
    d.eof_delivered(ch); // the dest forgets; its EOF_ACK is lost
    assert!(!d.contains(ch));
    assert!(o.contains(ch));
    let now = t0();
    cut(&mut o, &mut d, now);
    relink(&mut o, &mut d, now, b"h2");
    assert!(!o.contains(ch));
    assert!(closed(&mut o).is_empty());
}

#[test]
fn another_dest_instance_gets_fresh_channels_never_the_old_ones() {
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    o.accept_open(ch);
    o.send_data(ch, b"secret for the first dest");
    let now = t0();
    assert!(o.suspend(now));
    drop(d);
    // A second dest process knows the token but not the first one's secret.
    let mut d2 = v2(Side::Dest, 9, small());
    o.resume(now, b"h2");
    pump_all(&mut o, &mut d2);
    assert!(o.is_live() && d2.is_live());
    assert_eq!(o.take_session_outcome(), Some(false));
    let c = closed(&mut o);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].0, ch);
    // New channels work, starting from id 1 again, with no old bytes.
    let n = d2.open().unwrap();
    assert_eq!(n, 1);
    pump_all(&mut o, &mut d2);
    assert!(events(&mut o).contains(&Event::Open(n)));
    o.accept_open(n);
    o.send_data(n, b"new");
    pump_all(&mut o, &mut d2);
    assert_eq!(d2.pending(n), b"new");
}

#[test]
fn impostor_dest_with_a_forged_resume_fails_closed() {
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    let now = t0();
    cut(&mut o, &mut d, now);
    // A dest that kept the channel list but uses the wrong secret (as a
    // different process would): forge by building a mux with another secret
    // and the same state.
    let mut fake = v2(Side::Dest, 7, small());
    fake.id_mark = d.id_mark;
    fake.peer_window = d.peer_window;
    fake.peer_v2 = Some(true);
    fake.channels = std::mem::take(&mut d.channels);
    // It believes it knows a peer secret (any value but the origin's).
    if let Some(f) = fake.v2.as_mut() {
        f.peer_secret = Some([5; 32]);
    }
    fake.out.clear();
    fake.out_bytes = 0;
    assert!(fake.suspend(now));
    o.resume(now, b"h2");
    fake.resume(now, b"h2");
    pump_all(&mut o, &mut fake);
    assert_eq!(o.take_session_outcome(), Some(false));
    assert_eq!(closed(&mut o).len(), 1);
    assert_eq!(closed(&mut fake).len(), 1);
    assert!(!o.contains(ch) && !fake.contains(ch));
}

#[test]
fn replayed_or_altered_resume_fails_closed() {
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    o.accept_open(ch);
    pump_all(&mut o, &mut d);
    let now = t0();
    cut(&mut o, &mut d, now);
    d.resume(now, b"link-2");
    // Capture the dest's HELLO + SESSION of link 2 (its HELLO alone first:
    // the SESSION follows once the origin's HELLO is in).
    o.resume(now, b"link-2");
    let d_hello = d.pop_batch().unwrap();
    let o_hello = o.pop_batch().unwrap();
    d.recv_message(&o_hello).unwrap();
    let d_session = d.pop_batch().unwrap();
    // Replay on link 3 (another handshake hash): the proof fails.
    cut(&mut o, &mut d, now);
    o.resume(now, b"link-3");
    o.recv_message(&d_hello).unwrap();
    o.recv_message(&d_session).unwrap();
    assert_eq!(o.take_session_outcome(), None);
    assert_eq!(closed(&mut o).len(), 1, "old channel closed, never resumed");
    assert!(!o.contains(ch));

    // Altered: flip a byte of the channel list on the right link.
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    cut(&mut o, &mut d, now);
    o.resume(now, b"l2");
    d.resume(now, b"l2");
    let d_hello = d.pop_batch().unwrap();
    let o_hello = o.pop_batch().unwrap();
    d.recv_message(&o_hello).unwrap();
    let mut s = d.pop_batch().unwrap();
    let last = s.len() - 1;
    s[last] ^= 1;
    o.recv_message(&d_hello).unwrap();
    o.recv_message(&s).unwrap();
    assert_eq!(closed(&mut o).len(), 1);
    assert!(!o.contains(ch));
    // Malformed SESSION: a protocol error.
    let (mut o, _d) = pair(small());
    let mut bad = Vec::new();
    record::encode(&mut bad, Kind::Session, 0, &[1, 2, 3]);
    o.suspend(now);
    o.resume(now, b"x");
    let mut hello = Vec::new();
    let mut p = VERSION.to_be_bytes().to_vec();
    p.extend_from_slice(&((4096 & !0xff) | V2_WINDOW_MARK).to_be_bytes());
    record::encode(&mut hello, Kind::Hello, 0, &p);
    o.recv_message(&hello).unwrap();
    assert!(o.recv_message(&bad).is_err());
}

#[test]
fn window_expiry_closes_channels_then_new_ones_work() {
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    o.accept_open(ch);
    let now = t0();
    cut(&mut o, &mut d, now);
    assert_eq!(o.poll_timeout(), Some(now + W));
    o.handle_timeout(now + W - Duration::from_millis(1));
    assert!(o.contains(ch));
    o.handle_timeout(now + W);
    d.handle_timeout(now + W);
    let co = closed(&mut o);
    assert_eq!(co.len(), 1);
    assert!(co[0].1.contains("resume window"), "{}", co[0].1);
    assert_eq!(closed(&mut d).len(), 1);
    assert_eq!(o.poll_timeout(), None);
    relink(&mut o, &mut d, now + W, b"h2");
    assert!(o.is_live() && d.is_live());
    let n = d.open().unwrap();
    pump_all(&mut o, &mut d);
    assert!(events(&mut o).contains(&Event::Open(n)));
}

#[test]
fn v1_peer_gets_v1_behaviour() {
    let c = small();
    let mut o = v2(Side::Origin, 1, c);
    let mut d = Mux::new(Side::Dest, c);
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    assert!(!o.resumable());
    assert!(events(&mut o).contains(&Event::Open(ch)));
    o.accept_open(ch);
    o.send_data(ch, b"abc");
    assert_eq!(o.retained_bytes(ch), 0, "no retention with a v1 peer");
    pump_all(&mut o, &mut d);
    assert_eq!(d.pending(ch), b"abc");
    // Link loss: nothing to resume, the channel closes with a reason.
    assert!(!o.suspend(t0()));
    assert_eq!(closed(&mut o).len(), 1);

    // And a v1 origin with a v2 dest.
    let mut o = Mux::new(Side::Origin, c);
    let mut d = v2(Side::Dest, 2, c);
    let ch = d.open().unwrap();
    d.send_data(ch, b"early");
    pump_all(&mut o, &mut d);
    assert!(events(&mut o).contains(&Event::Open(ch)));
    o.accept_open(ch);
    pump_all(&mut o, &mut d);
    assert_eq!(d.send_data(ch, b"xyz"), 3);
    pump_all(&mut o, &mut d);
    assert_eq!(o.pending(ch), b"xyz");
}

#[test]
fn dest_output_waits_for_the_peer_hello() {
    let mut d = v2(Side::Dest, 2, small());
    d.open().unwrap();
    let first = d.pop_batch().unwrap();
    assert_eq!(first.len(), record::HEADER_LEN + record::HELLO_LEN);
    assert!(
        d.pop_batch().is_none(),
        "OPEN held until the peer's version is known"
    );
    assert!(Mux::with_resume(Side::Dest, small(), [0; 32], W).cfg.window & 0xff == V2_WINDOW_MARK);
}

#[test]
fn writes_during_the_outage_are_held_by_flow_control() {
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    o.accept_open(ch);
    cut(&mut o, &mut d, t0());
    assert_eq!(d.send_window(ch), 0);
    assert_eq!(d.send_data(ch, b"x"), 0);
    assert_eq!(d.open(), Err(Error::Suspended));
}

/// Not a test of speed (never asserted): prints the mux-level cost of
/// retention. `cargo test --release --lib retention_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn retention_cost() {
    fn run(v2mode: bool) -> f64 {
        let cfg = Config::client();
        let (mut o, mut d) = if v2mode {
            pair(cfg)
        } else {
            let mut o = Mux::new(Side::Origin, cfg);
            let mut d = Mux::new(Side::Dest, cfg);
            pump_all(&mut o, &mut d);
            (o, d)
        };
        let ch = d.open().unwrap();
        pump_all(&mut o, &mut d);
        o.accept_open(ch);
        let chunk = vec![7u8; MAX_DATA_PER_BATCH];
        let total: u64 = 2 << 30;
        let mut moved = 0u64;
        let t = Instant::now();
        while moved < total {
            while d.send_data(ch, &chunk) > 0 {}
            while let Some(b) = d.pop_batch() {
                o.recv_message(&b).unwrap();
                d.recycle(b);
            }
            let n = o.pending(ch).len();
            moved += n as u64;
            o.consume(ch, n);
            while let Some(b) = o.pop_batch() {
                d.recv_message(&b).unwrap();
            }
        }
        moved as f64 / t.elapsed().as_secs_f64() / 1e6
    }
    for _ in 0..3 {
        let a = run(false);
        let b = run(true);
        println!(
            "mux v1 {a:.0} MB/s, v2 (retaining) {b:.0} MB/s, ratio {:.3}",
            b / a
        );
    }
}

/// Many channels at once, opened, rejected, aborted and finished at random
/// moments, with random cuts (some in the middle of a resume exchange).
/// Every channel that is not aborted delivers both streams exactly and is
/// forgotten on both sides; an aborted one delivers a prefix of what was
/// sent and is gone on both sides; nothing ever fails.
#[test]
fn many_channels_random_lifecycles_and_cuts() {
    #[derive(Default)]
    struct Ch {
        o: Option<App>,
        d: Option<App>,
        aborted: bool,
    }
    for seed in 1..25u64 {
        let (mut o, mut d) = pair(small());
        let mut rng = Rng(seed * 7919);
        let mut chans: HashMap<ChannelId, Ch> = HashMap::new();
        let mut now = t0();
        let mut opened = 0;
        for step in 0..30_000u32 {
            if opened < 30 && d.is_live() && rng.next() % 20 == 0 {
                let ch = d.open().unwrap();
                opened += 1;
                let n_do = (rng.next() % 30_000) as usize;
                chans.insert(
                    ch,
                    Ch {
                        d: Some(App::new(stream(seed + ch as u64, n_do))),
                        ..Ch::default()
                    },
                );
            }
            for e in events(&mut o) {
                match e {
                    Event::Open(ch) => {
                        if rng.next() % 10 == 0 {
                            o.reject_open(ch, "refused");
                            if let Some(c) = chans.get_mut(&ch) {
                                c.aborted = true;
                            }
                        } else {
                            o.accept_open(ch);
                            let n_od = (rng.next() % 30_000) as usize;
                            if let Some(c) = chans.get_mut(&ch) {
                                c.o = Some(App::new(stream(seed * 3 + ch as u64, n_od)));
                            }
                        }
                    }
                    Event::Closed(ch, _) => {
                        assert!(chans.get(&ch).is_some_and(|c| c.aborted), "{ch} closed");
                    }
                    _ => {}
                }
            }
            for e in events(&mut d) {
                if let Event::Closed(ch, _) = e {
                    assert!(chans.get(&ch).is_some_and(|c| c.aborted), "{ch} closed");
                }
            }
            for (&ch, c) in chans.iter_mut() {
                let r = 1 + rng.next() as usize % 5000;
                if let Some(a) = c.o.as_mut() {
                    a.step(&mut o, ch, r);
                }
                if let Some(a) = c.d.as_mut() {
                    a.step(&mut d, ch, r);
                }
                if !c.aborted && rng.next() % 3000 == 0 && o.is_live() && d.is_live() {
                    c.aborted = true;
                    if rng.next() % 2 == 0 {
                        o.close(ch, "abort");
                    } else {
                        d.close(ch, "abort");
                    }
                }
            }
            let cut_now = rng.next() % 25 == 0;
            for dir in 0..2 {
                let (from, to) = if dir == 0 {
                    (&mut o, &mut d)
                } else {
                    (&mut d, &mut o)
                };
                let k = if cut_now { rng.next() % 3 } else { u64::MAX };
                let mut i = 0;
                while i < k {
                    let Some(b) = from.pop_batch() else { break };
                    to.recv_message(&b).expect("peer accepts");
                    i += 1;
                }
            }
            if cut_now {
                now += Duration::from_secs(1);
                cut(&mut o, &mut d, now);
                if rng.next() % 3 == 0 {
                    o.resume(now, &[step as u8, 1]);
                    d.resume(now, &[step as u8, 1]);
                    if let Some(b) = d.pop_batch() {
                        o.recv_message(&b).expect("origin accepts");
                    }
                    cut(&mut o, &mut d, now);
                }
                relink(&mut o, &mut d, now, &step.to_be_bytes());
                assert!(o.is_live() && d.is_live());
            }
            if opened == 30 && o.channel_count() == 0 && d.channel_count() == 0 {
                break;
            }
        }
        assert_eq!(opened, 30);
        assert_eq!(
            (o.channel_count(), d.channel_count()),
            (0, 0),
            "seed {seed}"
        );
        for (ch, c) in &chans {
            let (Some(a), Some(b)) = (&c.o, &c.d) else {
                assert!(c.aborted, "{ch} never opened at the origin");
                continue;
            };
            if c.aborted {
                assert!(a.out.starts_with(&b.got) && b.out.starts_with(&a.got));
            } else {
                assert!(b.got == a.out && a.got == b.out, "seed {seed} channel {ch}");
            }
        }
    }
}

#[test]
fn channel_does_not_finish_early_during_a_resume_exchange() {
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    o.accept_open(ch);
    d.send_eof(ch);
    pump_all(&mut o, &mut d);
    // The origin's last bytes and EOF are lost with the link.
    o.send_data(ch, b"last words");
    o.send_eof(ch);
    let now = t0();
    cut(&mut o, &mut d, now);
    o.resume(now, b"h2");
    d.resume(now, b"h2");
    // During the exchange the origin delivers the dest's EOF: its own data
    // is not acknowledged yet, so the channel must stay.
    assert!(o.wants_shutdown(ch));
    o.eof_delivered(ch);
    assert!(o.contains(ch));
    pump_all(&mut o, &mut d);
    assert_eq!(d.pending(ch), b"last words");
    d.consume(ch, 10);
    d.eof_delivered(ch);
    pump_all(&mut o, &mut d);
    assert!(!o.contains(ch) && !d.contains(ch));
    assert!(closed(&mut o).is_empty() && closed(&mut d).is_empty());
}

#[test]
fn restarted_origin_closes_the_dest_channels_and_ids_go_on() {
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    o.accept_open(ch);
    let now = t0();
    assert!(d.suspend(now));
    drop(o);
    let mut o2 = v2(Side::Origin, 3, small());
    d.resume(now, b"h2");
    pump_all(&mut o2, &mut d);
    assert!(o2.is_live() && d.is_live());
    assert_eq!(d.take_session_outcome(), Some(false));
    assert_eq!(closed(&mut d).len(), 1);
    let n = d.open().unwrap();
    assert!(n > ch);
    pump_all(&mut o2, &mut d);
    assert!(events(&mut o2).contains(&Event::Open(n)));
    // And the new pair resumes later: the dest sent its rotated secret.
    o2.accept_open(n);
    pump_all(&mut o2, &mut d);
    cut(&mut o2, &mut d, now);
    relink(&mut o2, &mut d, now, b"h3");
    assert_eq!(d.take_session_outcome(), Some(true));
    assert!(o2.contains(n) && d.contains(n));
}

#[test]
fn no_handshake_hash_no_resume() {
    let (mut o, mut d) = pair(small());
    let ch = d.open().unwrap();
    pump_all(&mut o, &mut d);
    let now = t0();
    cut(&mut o, &mut d, now);
    relink(&mut o, &mut d, now, b"");
    assert!(o.is_live() && d.is_live());
    assert_eq!(d.take_session_outcome(), Some(false));
    assert_eq!(closed(&mut o).len(), 1);
    assert_eq!(closed(&mut d).len(), 1);
    assert!(!o.contains(ch) && !d.contains(ch));
}
