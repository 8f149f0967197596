//! Feeds arbitrary ping payloads to the control codec. Invariants: no
//! panic; a message that parses re-encodes within the control-frame limit
//! and, when encoding did not have to cut it, parses back to itself; a pong
//! acks a seq only if the payload parses as a pairing change with that seq.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sockrelay::control::{acked_seq, Control, MAX_PAYLOAD_BYTES};

fuzz_target!(|data: &[u8]| {
    let parsed = Control::parse(data);
    if let Some(seq) = acked_seq(data) {
        assert_eq!(parsed.ok().flatten().and_then(|c| c.seq()), Some(seq));
    }
    let Ok(Some(msg)) = parsed else { return };
    let mut out = Vec::new();
    msg.encode(&mut out);
    assert!(out.len() <= MAX_PAYLOAD_BYTES);
    let again = Control::parse(&out);
    assert!(matches!(again, Ok(Some(_))), "{msg:?} re-encoded does not parse: {again:?}");
    if data.len() <= MAX_PAYLOAD_BYTES && out.len() < MAX_PAYLOAD_BYTES {
        assert_eq!(again, Ok(Some(msg)), "round trip changed the message");
    }
});
