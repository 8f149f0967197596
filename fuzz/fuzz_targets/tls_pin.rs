#![no_main]
//! The `--tls-pin` DER walk (`tls::pin::spki_of`) on arbitrary bytes: never
//! panics, and the SPKI it finds lies inside the input; the pin parser on
//! the same bytes as text never panics.
use libfuzzer_sys::fuzz_target;
use sockrelay::tls::pin::{parse_pins, pin_of, spki_of};

fuzz_target!(|data: &[u8]| {
    if let Some(spki) = spki_of(data) {
        let start = spki.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start + spki.len() <= data.len());
        assert_eq!(spki.first(), Some(&0x30));
        assert!(pin_of(data).is_some());
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_pins(s);
    }
});
