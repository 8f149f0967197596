#![no_main]
//! `parse_request` on arbitrary bytes and on every prefix of them: never
//! panics, never consumes more than it was given, and once a prefix is decided
//! (a request or a reject) every longer prefix gets the very same answer, so
//! the relay may parse again on each read without changing its mind.
use libfuzzer_sys::fuzz_target;
use sockrelay::ws::handshake::{
    error_response, parse_request, request_may_be_complete, response_101, MAX_HEADER_BYTES,
};

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    let mut lazy = Ok(None);
    for cut in 0..=data.len() {
        let got = parse_request(&data[..cut]);
        match &got {
            Ok(Some((_, consumed))) => {
                assert!(*consumed <= cut && *consumed <= MAX_HEADER_BYTES);
                assert!(*consumed > 0);
            }
            Ok(None) => assert!(cut < MAX_HEADER_BYTES, "partial past the cap"),
            Err(reject) => {
                assert!(matches!(reject.status, 400 | 405 | 426 | 431), "{reject:?}");
                assert!(!reject.reason.contains('\n'));
            }
        }
        // A loop that parses only when the cheap check says it may help.
        let lazy_may = cut > 0 && request_may_be_complete(&data[..cut], cut - 1);
        if lazy == Ok(None) && lazy_may {
            lazy = got.clone();
        }
        match &decided {
            Some(first) => assert_eq!(&got, first, "answer changed at cut {cut}"),
            None if got != Ok(None) => decided = Some(got),
            None => {}
        }
    }
    // The lazy loop reaches the same request, and the same reject unless the
    // input never ended a header (then the handshake deadline answers).
    let expected = decided.clone().unwrap_or(Ok(None));
    match &decided {
        Some(Err(_)) => assert!(lazy == Ok(None) || lazy == expected),
        _ => assert_eq!(lazy, expected),
    }
    match decided {
        Some(Ok(Some((req, _)))) => {
            if let Some(key) = &req.ws_key {
                let resp = response_101(key, &[("Sockrelay-Session", &req.path)]);
                assert!(resp.ends_with(b"\r\n\r\n"));
            }
        }
        Some(Err(reject)) => {
            let _ = error_response(reject.status, reject.reason);
        }
        _ => {}
    }
});
