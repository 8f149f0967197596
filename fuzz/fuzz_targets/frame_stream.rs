//! Feed an arbitrary byte stream to the frame decoder the way an event loop
//! does (a bounded read buffer holding the unconsumed tail, topped up by reads
//! of fuzzer-chosen sizes) and check the codec's invariants.
//!
//! Input: 6 config bytes, then the stream.
//! - byte 0: bit 0 role (0 server, 1 client); bits 1-2 max message size mode
//! - byte 1: max message size parameter
//! - byte 2: read buffer capacity = MAX_CONTROL_FRAME_LEN + 4 * byte
//! - byte 3: chunking mode (bits 6-7) and a small cycle length (bits 0-3)
//! - bytes 4-5: seed for the chunk sizes
#![no_main]
use libfuzzer_sys::fuzz_target;
use sockrelay::ws::frame::{
    encode_frame, Decoder, Error, Event, FrameHeader, OpCode, Role, MAX_CONTROL_FRAME_LEN,
};

const CONFIG_LEN: usize = 6;

/// What one decoding pass saw; two passes over the same stream with different
/// chunkings must see the same.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    /// Completed frames: header and unmasked payload.
    frames: Vec<(FrameHeader, Vec<u8>)>,
    /// Header of the frame whose payload was still arriving at the end.
    partial: Option<FrameHeader>,
    error: Option<Error>,
}

struct Chunker {
    mode: u8,
    cycle: u8,
    state: u64,
    i: usize,
}

impl Chunker {
    fn next(&mut self, cap: usize) -> usize {
        self.i += 1;
        match self.mode {
            0 => cap,
            1 => 1,
            2 => (self.state as usize >> (self.i % usize::from(self.cycle.max(1)) * 4)) % 16 + 1,
            _ => {
                // xorshift64: sizes spread over the whole buffer.
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                (self.state % cap as u64) as usize + 1
            }
        }
    }
}

/// Decode one frame's re-encoding with a copy of the decoder state from just
/// before the original header, and check it yields the same frame.
fn check_reencode(before: &Decoder, after: &Decoder, header: &FrameHeader, payload: &[u8]) {
    let mut wire = Vec::new();
    encode_frame(&mut wire, header.fin, header.opcode, header.mask, payload);
    let mut dec = before.clone();
    let mut got = Vec::new();
    let mut pos = 0;
    let mut got_header = None;
    while pos < wire.len() {
        let (ev, n) = match dec.decode(&mut wire[pos..]) {
            Ok(Some(x)) => x,
            other => panic!("re-encoded {header:?} failed: {other:?}"),
        };
        match ev {
            Event::DataHeader(h) | Event::Control(h) => {
                assert!(got_header.is_none());
                got_header = Some(h);
                if let Event::Control(_) = ev {
                    got.extend_from_slice(&wire[pos + n - h.payload_len as usize..pos + n]);
                }
            }
            Event::Payload { len, .. } => got.extend_from_slice(&wire[pos..pos + len]),
        }
        pos += n;
    }
    assert_eq!(got_header.as_ref(), Some(header));
    assert_eq!(got, payload);
    assert_eq!(dec.in_frame(), after.in_frame());
    assert_eq!(dec.in_message(), after.in_message());
}

/// One pass over `stream` through a read buffer of `cap` bytes.
fn run(role: Role, max: u64, stream: &[u8], cap: usize, chunker: &mut Chunker) -> Summary {
    let mut dec = Decoder::new(role, max);
    let mut buf = vec![0u8; cap];
    let (mut filled, mut pos) = (0usize, 0usize);
    let mut sum = Summary::default();
    // The frame in progress: state before its header, header, payload so far.
    let mut cur: Option<(Decoder, FrameHeader, Vec<u8>)> = None;
    loop {
        let mut start = 0;
        loop {
            let before = dec.clone();
            let avail = filled - start;
            let (ev, n) = match dec.decode(&mut buf[start..filled]) {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    // Sticky, and a code a close frame may carry.
                    assert_eq!(dec.decode(&mut buf[start..filled]), Err(e));
                    assert!(matches!(e.close_code(), 1002 | 1007 | 1009));
                    assert!(!e.to_string().is_empty());
                    sum.partial = cur.map(|(_, h, _)| h);
                    sum.error = Some(e);
                    return sum;
                }
            };
            assert!(n > 0 && n <= avail, "consumed {n} of {avail}");
            let region = &buf[start..start + n];
            match ev {
                Event::DataHeader(h) => {
                    assert!(cur.is_none() && !h.opcode.is_control());
                    assert!(h.payload_len <= max);
                    assert!(n >= h.encoded_len());
                    if h.payload_len == 0 {
                        assert!(!dec.in_frame());
                        check_reencode(&before, &dec, &h, &[]);
                        sum.frames.push((h, Vec::new()));
                    } else {
                        assert!(dec.in_frame());
                        cur = Some((before, h, Vec::new()));
                    }
                    // A fragmented message stays open until its final
                    // frame's payload has been yielded.
                    let open = !h.fin || (h.opcode == OpCode::Continuation && dec.in_frame());
                    assert_eq!(dec.in_message(), open);
                }
                Event::Payload {
                    len,
                    frame_done,
                    message_done,
                } => {
                    assert_eq!(len, n);
                    let (_, h, payload) = cur.as_mut().expect("payload outside a frame");
                    payload.extend_from_slice(region);
                    assert!(payload.len() as u64 <= h.payload_len);
                    assert_eq!(frame_done, payload.len() as u64 == h.payload_len);
                    assert_eq!(message_done, frame_done && h.fin);
                    assert_eq!(dec.in_frame(), !frame_done);
                    if frame_done {
                        let (snapshot, h, payload) = cur.take().expect("frame");
                        check_reencode(&snapshot, &dec, &h, &payload);
                        sum.frames.push((h, payload));
                    }
                }
                Event::Control(h) => {
                    assert!(cur.is_none() && h.opcode.is_control() && h.fin);
                    let plen = h.payload_len as usize;
                    assert!(plen <= 125 && n >= h.encoded_len() + plen);
                    let payload = region[n - plen..].to_vec();
                    check_reencode(&before, &dec, &h, &payload);
                    sum.frames.push((h, payload));
                }
            }
            start += n;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if pos == stream.len() {
            sum.partial = cur.map(|(_, h, _)| h);
            return sum;
        }
        // A buffer of MAX_CONTROL_FRAME_LEN always makes progress.
        assert!(filled < cap, "decoder stuck on a full buffer");
        let n = chunker
            .next(cap)
            .clamp(1, cap - filled)
            .min(stream.len() - pos);
        buf[filled..filled + n].copy_from_slice(&stream[pos..pos + n]);
        filled += n;
        pos += n;
    }
}

fuzz_target!(|data: &[u8]| {
    assert!(std::mem::size_of::<Decoder>() <= 64, "decoder state grew");
    if data.len() < CONFIG_LEN {
        return;
    }
    let (cfg, stream) = data.split_at(CONFIG_LEN);
    let role = if cfg[0] & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = match (cfg[0] >> 1) & 3 {
        0 => u64::from(cfg[1]),
        1 => u64::from(cfg[1]) << 8,
        2 => 1 << 20,
        _ => u64::MAX,
    };
    let cap = MAX_CONTROL_FRAME_LEN + 4 * usize::from(cfg[2]);
    let mut chunker = Chunker {
        mode: cfg[3] >> 6,
        cycle: cfg[3] & 0x0f,
        state: u64::from(u16::from_le_bytes([cfg[4], cfg[5]])) | 1 << 32,
        i: 0,
    };
    let chunked = run(role, max, stream, cap, &mut chunker);

    // The same stream in one buffer must decode to the same frames and error.
    let whole_cap = stream.len().max(MAX_CONTROL_FRAME_LEN);
    let mut all_at_once = Chunker {
        mode: 0,
        cycle: 0,
        state: 1,
        i: 0,
    };
    let whole = run(role, max, stream, whole_cap, &mut all_at_once);
    assert_eq!(chunked, whole);
});
