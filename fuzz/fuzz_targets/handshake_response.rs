#![no_main]
//! `parse_response` (client side) on arbitrary bytes and every prefix: never
//! panics, consumed within bounds, a decided answer never changes with more
//! bytes; `parse_response_eof` and every error's Display never panic and
//! print no control characters.
use libfuzzer_sys::fuzz_target;
use sockrelay::ws::handshake::{parse_response, parse_response_eof, MAX_HEADER_BYTES};

/// accept_key("dGhlIHNhbXBsZSBub25jZQ=="), RFC 6455 §1.3.
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for cut in 0..=data.len() {
        let got = parse_response(&data[..cut], ACCEPT);
        match &got {
            Ok(Some((resp, consumed))) => {
                assert!(*consumed <= cut && *consumed <= MAX_HEADER_BYTES);
                assert_eq!(resp.status, 101);
            }
            Ok(None) => {
                let eof = parse_response_eof(&data[..cut]);
                assert!(!eof.to_string().chars().any(char::is_control));
            }
            Err(e) => assert!(!e.to_string().chars().any(char::is_control), "{e}"),
        }
        match &decided {
            Some(first) => assert_eq!(&got, first, "answer changed at cut {cut}"),
            None if got != Ok(None) => decided = Some(got),
            None => {}
        }
    }
});
