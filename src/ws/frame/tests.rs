//! Unit tests of `ws::frame`, kept apart so that `frame.rs` reads as the codec alone.

use super::*;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const BIG: u64 = 1 << 30;

/// A whole decoded frame: header and (unmasked) payload.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Data(FrameHeader, Vec<u8>),
    Control(FrameHeader, Vec<u8>),
}

/// Small deterministic PRNG (xorshift64*), so tests need no crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Feed `stream` to `dec` the way a real loop does: a read buffer of `cap`
/// bytes keeps the unconsumed tail, and each "read" appends the next
/// `chunk()` bytes. Checks the event invariants on the way.
fn run_loop(
    dec: &mut Decoder,
    stream: &[u8],
    cap: usize,
    mut chunk: impl FnMut() -> usize,
) -> (Vec<Item>, Result<()>) {
    assert!(cap >= MAX_CONTROL_FRAME_LEN);
    let mut buf = vec![0u8; cap];
    let (mut filled, mut pos) = (0, 0);
    let mut items = Vec::new();
    let mut cur: Option<(FrameHeader, Vec<u8>)> = None;
    loop {
        let mut start = 0;
        loop {
            let (ev, n) = match dec.decode(&mut buf[start..filled]) {
                Err(e) => return (items, Err(e)),
                Ok(None) => break,
                Ok(Some(x)) => x,
            };
            assert!(
                n > 0 && n <= filled - start,
                "consumed {n} of {}",
                filled - start
            );
            match ev {
                Event::DataHeader(h) => {
                    assert!(cur.is_none(), "header inside a frame");
                    assert!(!h.opcode.is_control());
                    if h.payload_len == 0 {
                        items.push(Item::Data(h, Vec::new()));
                    } else {
                        assert!(dec.in_frame());
                        cur = Some((h, Vec::new()));
                    }
                }
                Event::Payload {
                    len,
                    frame_done,
                    message_done,
                } => {
                    assert_eq!(len, n);
                    let (h, p) = cur.as_mut().expect("payload outside a frame");
                    p.extend_from_slice(&buf[start..start + n]);
                    assert!(p.len() as u64 <= h.payload_len);
                    assert_eq!(frame_done, p.len() as u64 == h.payload_len);
                    assert_eq!(message_done, frame_done && h.fin);
                    assert_eq!(dec.in_frame(), !frame_done);
                    if frame_done {
                        let (h, p) = cur.take().expect("frame");
                        items.push(Item::Data(h, p));
                    }
                }
                Event::Control(h) => {
                    assert!(cur.is_none() && h.opcode.is_control());
                    let p = &buf[start + n - h.payload_len as usize..start + n];
                    items.push(Item::Control(h, p.to_vec()));
                }
            }
            start += n;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if pos == stream.len() {
            return (items, Ok(()));
        }
        assert!(filled < cap, "decoder stuck on a full buffer");
        let n = chunk().clamp(1, cap - filled).min(stream.len() - pos);
        buf[filled..filled + n].copy_from_slice(&stream[pos..pos + n]);
        filled += n;
        pos += n;
    }
}

fn decode_all(role: Role, max: u64, stream: &[u8]) -> (Vec<Item>, Result<()>) {
    let cap = stream.len().max(MAX_CONTROL_FRAME_LEN);
    run_loop(&mut Decoder::new(role, max), stream, cap, || usize::MAX)
}

/// Decode whole, in one-byte reads, and split at every point; all must
/// agree. Returns the items and outcome.
fn decode_every_way(role: Role, max: u64, stream: &[u8]) -> (Vec<Item>, Result<()>) {
    let whole = decode_all(role, max, stream);
    let cap = stream.len().max(MAX_CONTROL_FRAME_LEN);
    let bytes = run_loop(&mut Decoder::new(role, max), stream, cap, || 1);
    assert_eq!(bytes, whole, "one-byte reads differ from whole");
    for split in 1..stream.len() {
        let mut first = true;
        let two = run_loop(&mut Decoder::new(role, max), stream, cap, || {
            if std::mem::replace(&mut first, false) {
                split
            } else {
                usize::MAX
            }
        });
        assert_eq!(two, whole, "split at {split} differs from whole");
    }
    whole
}

fn expect_err(role: Role, max: u64, stream: &[u8]) -> Error {
    match decode_every_way(role, max, stream) {
        (_, Err(e)) => e,
        (items, Ok(())) => panic!("accepted {stream:02x?}: {items:?}"),
    }
}

fn frame(fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, fin, opcode, mask, payload);
    out
}

fn data(fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) -> Item {
    let h = FrameHeader {
        fin,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    Item::Data(h, payload.to_vec())
}

fn control(opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) -> Item {
    let h = FrameHeader {
        fin: true,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    Item::Control(h, payload.to_vec())
}

fn key_for(role: Role) -> Option<[u8; 4]> {
    match role {
        Role::Server => Some(KEY),
        Role::Client => None,
    }
}

/// Valid UTF-8 of exactly `len` bytes with 1- to 4-byte characters.
fn text_payload(len: usize) -> Vec<u8> {
    let mut s = String::new();
    let chars = ['a', 'é', '€', '😀', 'z', 'ж'];
    let mut i = 0;
    while s.len() < len {
        let c = chars[i % chars.len()];
        if s.len() + c.len_utf8() <= len {
            s.push(c);
        } else {
            s.push('.');
        }
        i += 1;
    }
    s.into_bytes()
}

fn binary_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + (i >> 8)) as u8).collect()
}

// ---- RFC 6455 §5.7 examples, byte for byte ----

const HELLO: &[u8] = b"Hello";
const HELLO_UNMASKED: [u8; 7] = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
const HELLO_MASKED: [u8; 11] = [
    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
];

#[test]
fn rfc_single_frame_unmasked_text() {
    assert_eq!(frame(true, OpCode::Text, None, HELLO), HELLO_UNMASKED);
    let (items, r) = decode_every_way(Role::Client, BIG, &HELLO_UNMASKED);
    r.unwrap();
    assert_eq!(items, [data(true, OpCode::Text, None, HELLO)]);
}

#[test]
fn rfc_single_frame_masked_text() {
    assert_eq!(frame(true, OpCode::Text, Some(KEY), HELLO), HELLO_MASKED);
    let (items, r) = decode_every_way(Role::Server, BIG, &HELLO_MASKED);
    r.unwrap();
    assert_eq!(items, [data(true, OpCode::Text, Some(KEY), HELLO)]);
}

#[test]
fn rfc_fragmented_unmasked_text() {
    let wire = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    let mut enc = frame(false, OpCode::Text, None, b"Hel");
    enc.extend(frame(true, OpCode::Continuation, None, b"lo"));
    assert_eq!(enc, wire);
    let (items, r) = decode_every_way(Role::Client, BIG, &wire);
    r.unwrap();
    assert_eq!(
        items,
        [
            data(false, OpCode::Text, None, b"Hel"),
            data(true, OpCode::Continuation, None, b"lo")
        ]
    );
}

#[test]
fn rfc_unmasked_ping_and_masked_pong() {
    let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    assert_eq!(frame(true, OpCode::Ping, None, HELLO), ping);
    let (items, r) = decode_every_way(Role::Client, BIG, &ping);
    r.unwrap();
    assert_eq!(items, [control(OpCode::Ping, None, HELLO)]);

    let pong = [
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(frame(true, OpCode::Pong, Some(KEY), HELLO), pong);
    let (items, r) = decode_every_way(Role::Server, BIG, &pong);
    r.unwrap();
    assert_eq!(items, [control(OpCode::Pong, Some(KEY), HELLO)]);
}

#[test]
fn rfc_256_and_65536_byte_binary_headers() {
    for (len, head) in [
        (256usize, &[0x82u8, 0x7e, 0x01, 0x00][..]),
        (
            65536,
            &[0x82, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00][..],
        ),
    ] {
        let payload = binary_payload(len);
        let wire = frame(true, OpCode::Binary, None, &payload);
        assert_eq!(&wire[..head.len()], head);
        assert_eq!(&wire[head.len()..], &payload[..]);
        let h = FrameHeader {
            fin: true,
            opcode: OpCode::Binary,
            mask: None,
            payload_len: len as u64,
        };
        assert_eq!(h.encoded_len(), head.len());
        let mut out = [0u8; MAX_HEADER_LEN];
        assert_eq!(h.encode(&mut out), head.len());
        assert_eq!(&out[..head.len()], head);
        let mut dec = Decoder::new(Role::Client, BIG);
        let mut buf = wire.clone();
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some((Event::DataHeader(h), head.len()))
        );
        let (items, r) = decode_all(Role::Client, BIG, &wire);
        r.unwrap();
        assert_eq!(items, [data(true, OpCode::Binary, None, &payload)]);
    }
}

#[test]
fn header_encoding_lengths() {
    for (len, unmasked) in [
        (0, 2),
        (125, 2),
        (126, 4),
        (65535, 4),
        (65536, 10),
        (1 << 62, 10),
    ] {
        for mask in [None, Some(KEY)] {
            let h = FrameHeader {
                fin: false,
                opcode: OpCode::Binary,
                mask,
                payload_len: len,
            };
            let want = unmasked + if mask.is_some() { 4 } else { 0 };
            assert_eq!(h.encoded_len(), want, "len {len}");
            let mut out = [0xeeu8; MAX_HEADER_LEN + 1];
            assert_eq!(h.encode(&mut out), want);
            assert_eq!(out[want], 0xee, "wrote past the header");
            // The header alone decodes back to itself.
            let role = if mask.is_some() {
                Role::Server
            } else {
                Role::Client
            };
            let mut dec = Decoder::new(role, u64::MAX);
            let got = dec.decode(&mut out[..want]).unwrap();
            assert_eq!(got, Some((Event::DataHeader(h), want)));
        }
    }
}

// ---- round trips at length boundaries ----

const LENGTHS: [usize; 8] = [0, 1, 125, 126, 127, 65535, 65536, 1 << 20];

#[test]
fn round_trip_small_lengths_every_split() {
    for role in [Role::Server, Role::Client] {
        for &len in LENGTHS.iter().filter(|&&l| l <= 127) {
            for opcode in [OpCode::Text, OpCode::Binary] {
                let payload = if opcode == OpCode::Text {
                    text_payload(len)
                } else {
                    binary_payload(len)
                };
                let key = key_for(role);
                let wire = frame(true, opcode, key, &payload);
                let (items, r) = decode_every_way(role, BIG, &wire);
                r.unwrap();
                assert_eq!(items, [data(true, opcode, key, &payload)], "{role:?} {len}");

                // The same payload as a 3-fragment message with a ping in between.
                let (a, b) = payload.split_at(len / 3);
                let (b, c) = b.split_at(b.len() / 2);
                let mut wire = frame(false, opcode, key, a);
                wire.extend(frame(true, OpCode::Ping, key, b"p"));
                wire.extend(frame(false, OpCode::Continuation, key, b));
                wire.extend(frame(true, OpCode::Continuation, key, c));
                let (items, r) = decode_every_way(role, BIG, &wire);
                r.unwrap();
                assert_eq!(
                    items,
                    [
                        data(false, opcode, key, a),
                        control(OpCode::Ping, key, b"p"),
                        data(false, OpCode::Continuation, key, b),
                        data(true, OpCode::Continuation, key, c),
                    ]
                );
            }
        }
    }
}

#[test]
fn round_trip_big_lengths_random_and_byte_reads() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for role in [Role::Server, Role::Client] {
        for &len in LENGTHS.iter().filter(|&&l| l > 127) {
            for opcode in [OpCode::Text, OpCode::Binary] {
                let payload = if opcode == OpCode::Text {
                    text_payload(len)
                } else {
                    binary_payload(len)
                };
                let key = key_for(role);
                // Two frames back to back, so the second header is found
                // after a piece boundary too.
                let mut wire = frame(true, opcode, key, &payload);
                wire.extend(frame(true, OpCode::Binary, key, b"next"));
                let want = [
                    data(true, opcode, key, &payload),
                    data(true, OpCode::Binary, key, b"next"),
                ];
                for cap in [65536, MAX_CONTROL_FRAME_LEN, 4096 + 3] {
                    let mut dec = Decoder::new(role, BIG);
                    let r = run_loop(&mut dec, &wire, cap, || rng.below(9000) as usize + 1);
                    assert_eq!(r, (want.to_vec(), Ok(())), "{role:?} {len} cap {cap}");
                    let mut dec = Decoder::new(role, BIG);
                    let r = run_loop(&mut dec, &wire, cap, || rng.below(8) as usize + 1);
                    assert_eq!(r, (want.to_vec(), Ok(())), "{role:?} {len} cap {cap}");
                }
                let r = run_loop(&mut Decoder::new(role, BIG), &wire, 65536, || 1);
                assert_eq!(r, (want.to_vec(), Ok(())), "{role:?} {len} one-byte reads");
            }
        }
    }
}

#[test]
fn non_minimal_lengths_accepted() {
    // "Hello" with its length in 16 and in 64 bits, data and control.
    for opcode in [0x82u8, 0x89] {
        let mut w16 = vec![opcode, 0x80 | 126, 0, 5];
        let mut w64 = vec![opcode, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 5];
        for w in [&mut w16, &mut w64] {
            w.extend(KEY);
            w.extend(&HELLO_MASKED[6..]);
            let (items, r) = decode_every_way(Role::Server, BIG, w);
            r.unwrap();
            let op = OpCode::from_u8(opcode & 0xf).unwrap();
            let want = if op.is_control() {
                control(op, Some(KEY), HELLO)
            } else {
                data(true, op, Some(KEY), HELLO)
            };
            assert_eq!(items, [want]);
        }
    }
    // Longest legal control frame fits MAX_CONTROL_FRAME_LEN exactly.
    let mut w = vec![0x89, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 125];
    w.extend(KEY);
    w.extend([0u8; 125]);
    assert_eq!(w.len(), MAX_CONTROL_FRAME_LEN);
    let mut dec = Decoder::new(Role::Server, BIG);
    assert!(dec
        .decode(&mut w[..MAX_CONTROL_FRAME_LEN - 1])
        .unwrap()
        .is_none());
    let (ev, n) = dec.decode(&mut w).unwrap().unwrap();
    assert!(matches!(ev, Event::Control(_)));
    assert_eq!(n, MAX_CONTROL_FRAME_LEN);
}

#[test]
fn zero_length_frames_yield_no_payload_events() {
    let mut wire = frame(false, OpCode::Binary, None, b"");
    wire.extend(frame(false, OpCode::Continuation, None, b""));
    wire.extend(frame(true, OpCode::Continuation, None, b""));
    wire.extend(frame(true, OpCode::Text, None, b""));
    let mut dec = Decoder::new(Role::Client, BIG);
    let mut pos = 0;
    let mut events = Vec::new();
    while let Some((ev, n)) = dec.decode(&mut wire[pos..]).unwrap() {
        events.push((ev, dec.in_frame(), dec.in_message()));
        pos += n;
    }
    assert_eq!(pos, wire.len());
    let h = |fin, opcode| FrameHeader {
        fin,
        opcode,
        mask: None,
        payload_len: 0,
    };
    assert_eq!(
        events,
        [
            (Event::DataHeader(h(false, OpCode::Binary)), false, true),
            (
                Event::DataHeader(h(false, OpCode::Continuation)),
                false,
                true
            ),
            (
                Event::DataHeader(h(true, OpCode::Continuation)),
                false,
                false
            ),
            (Event::DataHeader(h(true, OpCode::Text)), false, false),
        ]
    );
}

#[test]
fn in_frame_and_in_message_track_state() {
    let mut wire = frame(false, OpCode::Text, None, b"ab");
    wire.extend(frame(true, OpCode::Continuation, None, b"cd"));
    let mut dec = Decoder::new(Role::Client, BIG);
    assert!(!dec.in_frame() && !dec.in_message());
    let (_, n) = dec.decode(&mut wire).unwrap().unwrap();
    assert!(dec.in_frame() && dec.in_message());
    let mut pos = n;
    let (ev, n) = dec.decode(&mut wire[pos..pos + 1]).unwrap().unwrap();
    assert_eq!(
        ev,
        Event::Payload {
            len: 1,
            frame_done: false,
            message_done: false
        }
    );
    pos += n;
    let (ev, n) = dec.decode(&mut wire[pos..]).unwrap().unwrap();
    assert_eq!(
        ev,
        Event::Payload {
            len: 1,
            frame_done: true,
            message_done: false
        }
    );
    assert!(!dec.in_frame() && dec.in_message());
    pos += n;
    let (_, n) = dec.decode(&mut wire[pos..]).unwrap().unwrap();
    assert!(dec.in_frame() && dec.in_message());
    pos += n;
    // An empty buffer inside a frame needs more bytes.
    assert_eq!(dec.decode(&mut []).unwrap(), None);
    let (ev, _) = dec.decode(&mut wire[pos..]).unwrap().unwrap();
    assert_eq!(
        ev,
        Event::Payload {
            len: 2,
            frame_done: true,
            message_done: true
        }
    );
    assert!(!dec.in_frame() && !dec.in_message());
}

// ---- rejections ----

/// A masked (server-role) frame from raw first bytes, length and payload.
fn raw(b0: u8, len7: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut w = vec![b0, 0x80 | len7];
    w.extend(ext);
    w.extend(KEY);
    let start = w.len();
    w.extend(payload);
    apply_mask(&mut w[start..], KEY, 0);
    w
}

#[test]
fn rejects_reserved_bits() {
    for rsv in [0x40, 0x20, 0x10, 0x70] {
        let e = expect_err(Role::Server, BIG, &raw(0x82 | rsv, 1, &[], b"x"));
        assert_eq!((e, e.close_code()), (Error::ReservedBits, 1002));
    }
}

#[test]
fn rejects_unknown_opcodes() {
    for op in (0x3..=0x7).chain(0xb..=0xf) {
        let e = expect_err(Role::Server, BIG, &raw(0x80 | op, 0, &[], b""));
        assert_eq!((e, e.close_code()), (Error::UnknownOpCode(op), 1002));
    }
}

#[test]
fn rejects_long_or_fragmented_control_frames() {
    for op in [0x8u8, 0x9, 0xa] {
        let e = expect_err(
            Role::Server,
            BIG,
            &raw(0x80 | op, 126, &[0, 126], &[0; 126]),
        );
        assert_eq!((e, e.close_code()), (Error::ControlTooLong(126), 1002));
        let e = expect_err(
            Role::Server,
            BIG,
            &raw(0x80 | op, 127, &[0, 0, 0, 1, 0, 0, 0, 0], &[]),
        );
        assert_eq!(e, Error::ControlTooLong(1 << 32));
        let e = expect_err(Role::Server, BIG, &raw(op, 0, &[], b""));
        assert_eq!((e, e.close_code()), (Error::FragmentedControl, 1002));
    }
    // 125 is fine.
    let (items, r) = decode_all(Role::Server, BIG, &raw(0x89, 125, &[], &[7; 125]));
    r.unwrap();
    assert_eq!(items, [control(OpCode::Ping, Some(KEY), &[7; 125])]);
}

#[test]
fn rejects_64_bit_length_with_top_bit() {
    let e = expect_err(
        Role::Server,
        u64::MAX,
        &raw(0x82, 127, &[0x80, 0, 0, 0, 0, 0, 0, 0], &[]),
    );
    assert_eq!((e, e.close_code()), (Error::LengthTopBit, 1002));
    let e = expect_err(
        Role::Client,
        u64::MAX,
        &[0x82, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    );
    assert_eq!(e, Error::LengthTopBit);
}

#[test]
fn rejects_wrong_masking_for_role() {
    let e = expect_err(Role::Server, BIG, &HELLO_UNMASKED);
    assert_eq!((e, e.close_code()), (Error::UnmaskedFrame, 1002));
    let e = expect_err(Role::Client, BIG, &HELLO_MASKED);
    assert_eq!((e, e.close_code()), (Error::MaskedFrame, 1002));
    // Control frames too.
    let e = expect_err(Role::Server, BIG, &frame(true, OpCode::Ping, None, b""));
    assert_eq!(e, Error::UnmaskedFrame);
}

#[test]
fn rejects_bad_continuation_sequencing() {
    let e = expect_err(
        Role::Client,
        BIG,
        &frame(true, OpCode::Continuation, None, b"x"),
    );
    assert_eq!((e, e.close_code()), (Error::UnexpectedContinuation, 1002));
    // After a finished message, a continuation is unexpected again.
    let mut w = frame(false, OpCode::Binary, None, b"a");
    w.extend(frame(true, OpCode::Continuation, None, b"b"));
    w.extend(frame(false, OpCode::Continuation, None, b"c"));
    assert_eq!(
        expect_err(Role::Client, BIG, &w),
        Error::UnexpectedContinuation
    );
    for (first, second) in [
        (OpCode::Text, OpCode::Text),
        (OpCode::Text, OpCode::Binary),
        (OpCode::Binary, OpCode::Text),
        (OpCode::Binary, OpCode::Binary),
    ] {
        let mut w = frame(false, first, Some(KEY), b"a");
        w.extend(frame(true, OpCode::Pong, Some(KEY), b""));
        w.extend(frame(true, second, Some(KEY), b"b"));
        let e = expect_err(Role::Server, BIG, &w);
        assert_eq!((e, e.close_code()), (Error::ExpectedContinuation, 1002));
    }
}

#[test]
fn max_message_size_per_frame_and_cumulative() {
    let max = 10;
    // Exactly max: fine, as one frame or as fragments.
    let (_, r) = decode_every_way(
        Role::Client,
        max,
        &frame(true, OpCode::Binary, None, &[1; 10]),
    );
    r.unwrap();
    let mut w = frame(false, OpCode::Text, None, b"12345");
    w.extend(frame(true, OpCode::Continuation, None, b"67890"));
    // The counter restarts with each message.
    w.extend(frame(true, OpCode::Binary, None, &[0; 10]));
    let (_, r) = decode_every_way(Role::Client, max, &w);
    r.unwrap();

    let e = expect_err(
        Role::Client,
        max,
        &frame(true, OpCode::Binary, None, &[1; 11]),
    );
    assert_eq!(
        (e, e.close_code()),
        (Error::FrameTooBig { len: 11, max }, 1009)
    );
    // Rejected from the header alone, before any payload arrives.
    let mut dec = Decoder::new(Role::Client, 1000);
    assert_eq!(
        dec.decode(&mut [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        Err(Error::FrameTooBig {
            len: 65536,
            max: 1000
        })
    );

    let mut w = frame(false, OpCode::Binary, None, b"123456");
    w.extend(frame(
        true,
        OpCode::Ping,
        None,
        b"ping payload is not counted",
    ));
    w.extend(frame(false, OpCode::Continuation, None, b"7890"));
    w.extend(frame(true, OpCode::Continuation, None, b"1"));
    let e = expect_err(Role::Client, max, &w);
    assert_eq!(
        (e, e.close_code()),
        (Error::MessageTooBig { len: 11, max }, 1009)
    );

    // Cumulative sums cannot overflow into acceptance.
    let mut dec = Decoder::new(Role::Client, u64::MAX);
    let big = (1u64 << 63) - 1;
    let mut w = vec![0x02, 127];
    w.extend(big.to_be_bytes());
    assert!(matches!(
        dec.decode(&mut w),
        Ok(Some((Event::DataHeader(_), 10)))
    ));
    let mut dec2 = dec.clone();
    // Pretend the payload went by: feed a continuation header directly.
    dec2.remaining = 0;
    let mut c = vec![0x80, 127];
    c.extend(big.to_be_bytes());
    assert_eq!(
        dec2.decode(&mut c),
        Ok(Some((
            Event::DataHeader(FrameHeader {
                fin: true,
                opcode: OpCode::Continuation,
                mask: None,
                payload_len: big
            }),
            10
        )))
    );
    let mut dec3 = Decoder::new(Role::Client, u64::MAX);
    dec3.in_message = true;
    dec3.message_len = u64::MAX - 1;
    let mut c = vec![0x80, 2, 0, 0];
    assert_eq!(
        dec3.decode(&mut c),
        Err(Error::MessageTooBig {
            len: u64::MAX,
            max: u64::MAX
        })
    );
}

#[test]
fn close_payload_rules() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999,
    ] {
        let mut w = Vec::new();
        encode_close(&mut w, Some(KEY), code, "bye");
        let (items, r) = decode_every_way(Role::Server, BIG, &w);
        r.unwrap();
        let mut p = code.to_be_bytes().to_vec();
        p.extend(b"bye");
        assert_eq!(items, [control(OpCode::Close, Some(KEY), &p)]);
        assert_eq!(parse_close(&p), Ok(Some((code, "bye"))));
    }
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
    ] {
        let mut w = Vec::new();
        encode_close(&mut w, None, code, "");
        let e = expect_err(Role::Client, BIG, &w);
        assert_eq!(
            (e, e.close_code()),
            (Error::InvalidCloseCode(code), 1002),
            "code {code}"
        );
    }
    // Empty payload: no code. One byte: invalid.
    let (items, r) = decode_every_way(Role::Client, BIG, &[0x88, 0x00]);
    r.unwrap();
    assert_eq!(items, [control(OpCode::Close, None, b"")]);
    assert_eq!(parse_close(b""), Ok(None));
    let e = expect_err(Role::Client, BIG, &[0x88, 0x01, 0x03]);
    assert_eq!((e, e.close_code()), (Error::CloseLenOne, 1002));
    // Code without reason.
    assert_eq!(parse_close(&[0x03, 0xe8]), Ok(Some((1000, ""))));
    // Reason not UTF-8.
    let e = expect_err(
        Role::Client,
        BIG,
        &frame(true, OpCode::Close, None, &[0x03, 0xe8, b'o', 0xff]),
    );
    assert_eq!((e, e.close_code()), (Error::InvalidCloseReason, 1007));
    let e = expect_err(
        Role::Client,
        BIG,
        &frame(true, OpCode::Close, None, &[0x03, 0xe8, 0xe2, 0x82]),
    );
    assert_eq!(e, Error::InvalidCloseReason);
}

#[test]
fn encode_close_truncates_on_char_boundary() {
    for reason in [
        "",
        "short",
        &"x".repeat(123),
        &"x".repeat(200),
        &"€".repeat(50),
        &format!("a{}", "😀".repeat(40)),
    ] {
        let mut w = Vec::new();
        encode_close(&mut w, None, 1001, reason);
        assert!(w.len() - 2 <= MAX_CONTROL_PAYLOAD);
        let (items, r) = decode_all(Role::Client, BIG, &w);
        r.unwrap();
        let [Item::Control(_, p)] = &items[..] else {
            panic!("{items:?}")
        };
        let (code, got) = parse_close(p).unwrap().unwrap();
        assert_eq!(code, 1001);
        assert!(reason.starts_with(got));
        // Truncated only as much as needed: the next char would not fit.
        let next = reason[got.len()..].chars().next();
        assert!(
            next.is_none_or(|c| got.len() + c.len_utf8() > 123),
            "{reason:?} -> {got:?}"
        );
    }
    // 41 '€' are 123 bytes: all fit. 42 are 126: cut to 41.
    let mut w = Vec::new();
    encode_close(&mut w, None, 1000, &"€".repeat(42));
    assert_eq!(w.len(), 2 + 2 + 123);
}

// ---- UTF-8 ----

/// Text message of `frags` fragments (split as given), unmasked.
fn text_message(payload: &[u8], splits: &[usize]) -> Vec<u8> {
    let mut w = Vec::new();
    let mut prev = 0;
    let mut opcode = OpCode::Text;
    for &s in splits.iter().chain([payload.len()].iter()) {
        let fin = s == payload.len();
        w.extend(frame(fin, opcode, None, &payload[prev..s]));
        if !fin {
            w.extend(frame(true, OpCode::Ping, None, b""));
        }
        opcode = OpCode::Continuation;
        prev = s;
    }
    w
}

#[test]
fn utf8_split_across_pieces_and_fragments() {
    let text = "aé€😀ж😀€é".as_bytes();
    for s1 in 0..=text.len() {
        for s2 in s1..=text.len() {
            let splits: Vec<usize> = [s1, s2].into_iter().filter(|&s| s < text.len()).collect();
            let w = text_message(text, &splits);
            let (items, r) = decode_all(Role::Client, BIG, &w);
            r.unwrap_or_else(|e| panic!("splits {s1},{s2}: {e}"));
            let got: Vec<u8> = items
                .iter()
                .filter_map(|i| match i {
                    Item::Data(_, p) => Some(p.clone()),
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(got, text);
            let r = run_loop(&mut Decoder::new(Role::Client, BIG), &w, 256, || 1);
            assert_eq!(r, (items, Ok(())));
        }
    }
}

#[test]
fn utf8_invalid_split_across_pieces_and_fragments() {
    // Each is invalid as a whole; every fragment split and every byte
    // chunking must find that, with 1007.
    let bad: [&[u8]; 9] = [
        b"ab\xffcd",
        b"\xe2\x82\x28",         // bad continuation
        b"\xed\xa0\x80",         // surrogate
        b"\xf4\x90\x80\x80",     // above U+10FFFF
        b"\xc0\xaf",             // overlong
        b"\xe0\x80\xaf",         // overlong
        b"\xf0\x9f\x98",         // incomplete at message end
        b"ok\xe2\x82",           // incomplete at message end
        b"\xf0\x9f\x98\x80\x80", // stray continuation byte
    ];
    for text in bad {
        assert!(std::str::from_utf8(text).is_err());
        for s in 0..text.len() {
            let splits = if s == 0 { vec![] } else { vec![s] };
            let e = expect_err(Role::Client, BIG, &text_message(text, &splits));
            assert_eq!(e.close_code(), 1007, "{text:02x?} split {s}");
            assert!(matches!(e, Error::InvalidUtf8 | Error::IncompleteUtf8));
        }
    }
    // Binary messages are not validated.
    let (_, r) = decode_every_way(
        Role::Client,
        BIG,
        &frame(true, OpCode::Binary, None, b"\xff\xe2"),
    );
    r.unwrap();
}

#[test]
fn utf8_incomplete_at_message_end_via_empty_final_fragment() {
    let mut w = frame(false, OpCode::Text, None, b"\xe2\x82");
    w.extend(frame(true, OpCode::Continuation, None, b""));
    let e = expect_err(Role::Client, BIG, &w);
    assert_eq!((e, e.close_code()), (Error::IncompleteUtf8, 1007));
    // Completed by the final empty-payload-free fragment: fine.
    let mut w = frame(false, OpCode::Text, None, b"\xe2\x82");
    w.extend(frame(false, OpCode::Continuation, None, b""));
    w.extend(frame(true, OpCode::Continuation, None, b"\xac"));
    let (_, r) = decode_every_way(Role::Client, BIG, &w);
    r.unwrap();
}

#[test]
fn utf8_tail_matches_std_on_random_splits() {
    // Bytes chosen to hit every UTF-8 boundary case.
    const ALPHABET: [u8; 16] = [
        b'a', 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc2, 0xdf, 0xe0, 0xed, 0xf0, 0xf4,
        0xf5,
    ];
    let mut rng = Rng(42);
    for _ in 0..20000 {
        let len = rng.below(12) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| ALPHABET[rng.below(16) as usize]).collect();
        let want = std::str::from_utf8(&bytes).is_ok();
        let mut t = Utf8Tail::default();
        let mut rest = &bytes[..];
        let mut ok = true;
        while !rest.is_empty() {
            let n = rng.below(rest.len() as u64) as usize + 1;
            if t.feed(&rest[..n]).is_err() {
                ok = false;
                break;
            }
            rest = &rest[n..];
        }
        assert_eq!(ok && t.is_empty(), want, "{bytes:02x?}");
    }
}

// ---- interoperability ----

#[test]
fn byte_identical_to_tungstenite() {
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode as T};
    use tungstenite::protocol::frame::Frame;
    let kinds = [
        (OpCode::Text, T::Data(Data::Text)),
        (OpCode::Binary, T::Data(Data::Binary)),
        (OpCode::Continuation, T::Data(Data::Continue)),
        (OpCode::Ping, T::Control(Control::Ping)),
        (OpCode::Pong, T::Control(Control::Pong)),
        (OpCode::Close, T::Control(Control::Close)),
    ];
    for (ours, theirs) in kinds {
        for len in LENGTHS {
            if ours.is_control() && len > MAX_CONTROL_PAYLOAD {
                continue;
            }
            for (role, mask) in [(Role::Server, Some(KEY)), (Role::Client, None)] {
                let payload = if ours == OpCode::Close {
                    let mut p = 1000u16.to_be_bytes().to_vec();
                    p.resize(len.max(2), b'r');
                    p
                } else {
                    text_payload(len)
                };
                let fin = ours.is_control() || len % 2 == 0;
                let mut frame_t = if ours.is_control() {
                    Frame::ping(payload.clone())
                } else {
                    Frame::message(payload.clone(), theirs, fin)
                };
                frame_t.header_mut().opcode = theirs;
                frame_t.header_mut().mask = mask;
                let mut wire_t = Vec::new();
                frame_t.format(&mut wire_t).unwrap();
                assert_eq!(frame(fin, ours, mask, &payload), wire_t, "{ours:?} {len}");

                let mut dec = Decoder::new(role, BIG);
                dec.in_message = ours == OpCode::Continuation;
                let (items, r) = run_loop(&mut dec, &wire_t, 70000, || 4093);
                r.unwrap();
                let want = if ours.is_control() {
                    control(ours, mask, &payload)
                } else {
                    data(fin, ours, mask, &payload)
                };
                assert_eq!(items, [want]);
            }
        }
    }
}

// ---- misc ----

#[test]
fn errors_are_sticky() {
    let mut dec = Decoder::new(Role::Client, BIG);
    let mut w = [0xc1u8, 0x00];
    assert_eq!(dec.decode(&mut w), Err(Error::ReservedBits));
    assert_eq!(dec.error(), Some(Error::ReservedBits));
    let mut ok = HELLO_UNMASKED;
    assert_eq!(dec.decode(&mut ok), Err(Error::ReservedBits));
}

#[test]
fn decoder_state_is_small() {
    assert!(
        std::mem::size_of::<Decoder>() <= 64,
        "{}",
        std::mem::size_of::<Decoder>()
    );
}

#[test]
fn needs_more_consumes_nothing_and_changes_nothing() {
    let mut w = frame(true, OpCode::Binary, Some(KEY), &[9; 300]);
    let mut dec = Decoder::new(Role::Server, BIG);
    for n in 0..8 {
        let before = w.clone();
        assert_eq!(dec.decode(&mut w[..n]), Ok(None));
        assert_eq!(w, before, "a partial header must not be touched");
    }
    assert!(!dec.in_frame());
}

#[test]
fn every_error_has_words_and_its_code() {
    let all = [
        (Error::ReservedBits, 1002),
        (Error::UnknownOpCode(3), 1002),
        (Error::FragmentedControl, 1002),
        (Error::ControlTooLong(200), 1002),
        (Error::LengthTopBit, 1002),
        (Error::UnmaskedFrame, 1002),
        (Error::MaskedFrame, 1002),
        (Error::UnexpectedContinuation, 1002),
        (Error::ExpectedContinuation, 1002),
        (Error::CloseLenOne, 1002),
        (Error::InvalidCloseCode(1005), 1002),
        (Error::InvalidCloseReason, 1007),
        (Error::InvalidUtf8, 1007),
        (Error::IncompleteUtf8, 1007),
        (Error::FrameTooBig { len: 11, max: 10 }, 1009),
        (Error::MessageTooBig { len: 11, max: 10 }, 1009),
    ];
    for (e, code) in all {
        assert_eq!(e.close_code(), code);
        let s = e.to_string();
        assert!(s.contains(' ') && !s.contains("Error"), "{s}");
        assert!(is_valid_close_code(e.close_code()));
    }
}

#[test]
fn opcode_wire_values_round_trip() {
    for v in 0..16u8 {
        if let Some(op) = OpCode::from_u8(v) {
            assert_eq!(op.as_u8(), v);
            assert_eq!(op.is_control(), v >= 8);
        }
    }
}
