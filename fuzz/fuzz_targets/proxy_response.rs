#![no_main]
//! `proxy::parse_connect_response` on arbitrary bytes and every prefix: never
//! panics, a complete answer consumes no more than it was given, a decided
//! answer never changes with more bytes, errors print no control characters.
//! The first bytes also drive `ProxyUrl::parse` and `no_proxy_matches`.
use libfuzzer_sys::fuzz_target;
use sockrelay::proxy::{no_proxy_matches, parse_connect_response, ProxyError, ProxyUrl};

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for cut in 0..=data.len() {
        let got = parse_connect_response(&data[..cut]);
        match &got {
            Ok(Some(n)) => assert!(*n <= cut),
            Ok(None) => {}
            Err(e) => assert!(!e.to_string().chars().any(char::is_control), "{e}"),
        }
        match &decided {
            // More bytes never change a refusal or where the answer ended
            // (a garbage error may quote more of the input).
            Some(Err(ProxyError::BadResponse(_))) => {
                assert!(matches!(got, Err(ProxyError::BadResponse(_))), "cut {cut}: {got:?}")
            }
            Some(first) => assert_eq!(&got, first, "answer changed at cut {cut}"),
            None if got != Ok(None) => decided = Some(got),
            None => {}
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(u) = ProxyUrl::parse(s) {
            assert!(!u.host.is_empty() && u.port != 0);
        }
        let mid = s.char_indices().nth(s.chars().count() / 2).map_or(s.len(), |(i, _)| i);
        let (a, b) = s.split_at(mid);
        let _ = no_proxy_matches(a, b);
    }
});
