//! `--tls-pin sha256/BASE64`: the SHA-256 of a certificate's
//! SubjectPublicKeyInfo, as curl's `--pinnedpubkey` (several pins separated
//! by `;`). The SPKI is found with a tiny DER walk over the certificate
//! (fuzzed by `fuzz_targets/tls_pin.rs`); nothing here trusts its input.

use base64::Engine as _;
use std::fmt;

/// One SPKI SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pin(pub [u8; 32]);

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sha256/{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Parses `sha256/BASE64[;sha256/BASE64…]`. Errors name what is wrong.
pub fn parse_pins(s: &str) -> Result<Vec<Pin>, String> {
    let mut pins = Vec::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        // `sha256/BASE64`, or curl's `sha256//BASE64`. A hash whose base64
        // starts with '/' makes the two look alike ("sha256//gRb…" is the
        // single-slash form of "/gRb…"), so take whichever reading decodes
        // to 32 bytes.
        let readings = [part.strip_prefix("sha256/"), part.strip_prefix("sha256//")];
        if readings.iter().all(Option::is_none) {
            return Err(format!(
                "bad pin {part:?}: expected sha256/BASE64 (the SPKI hash, as curl's --pinnedpubkey)"
            ));
        }
        let mut last_err = String::new();
        let mut digest = None;
        for b64 in readings.into_iter().flatten() {
            match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(raw) => match <[u8; 32]>::try_from(raw) {
                    Ok(d) => {
                        digest = Some(d);
                        break;
                    }
                    Err(r) => {
                        last_err = format!("{} bytes, a SHA-256 has 32", r.len());
                    }
                },
                Err(e) => last_err = e.to_string(),
            }
        }
        let Some(digest) = digest else {
            return Err(format!("bad pin {part:?}: {last_err}"));
        };
        pins.push(Pin(digest));
    }
    if pins.is_empty() {
        return Err("empty --tls-pin".into());
    }
    Ok(pins)
}

/// Reads one DER TLV at the front of `der`: (tag, header+content length,
/// content). Only definite lengths up to 4 length bytes.
fn tlv(der: &[u8]) -> Option<(u8, usize, &[u8])> {
    let tag = *der.first()?;
    let first = *der.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *der.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    let content = der.get(hdr..end)?;
    Some((tag, end, content))
}

/// The SubjectPublicKeyInfo TLV (header included) of an X.509 certificate.
pub fn spki_of(cert_der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    let (tag, _, cert) = tlv(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _, tbs) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    // [0] EXPLICIT version is optional.
    if rest.first() == Some(&0xa0) {
        let (_, n, _) = tlv(rest)?;
        rest = rest.get(n..)?;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        let (_, n, _) = tlv(rest)?;
        rest = rest.get(n..)?;
    }
    let (tag, n, _) = tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    rest.get(..n)
}

/// The pin of a certificate, or `None` when its DER cannot be walked.
pub fn pin_of(cert_der: &[u8]) -> Option<Pin> {
    let spki = spki_of(cert_der)?;
    let d = ring::digest::digest(&ring::digest::SHA256, spki);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Some(Pin(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_and_several_pins() {
        let one = parse_pins("sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        assert_eq!(one, vec![Pin([0; 32])]);
        let two = parse_pins(
            "sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; sha256/AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .unwrap();
        assert_eq!(two.len(), 2);
        // A hash whose base64 starts with '/': single-slash form.
        let slash = parse_pins("sha256//gRbgiIdkpFWpyVoGleRkH/YbdfQieWTu7RDNtldwpk=").unwrap();
        assert_eq!(slash.len(), 1);
        assert_eq!(slash[0].0[0], 0xfe);
        // …and curl's double-slash form of the same hash.
        let curl = parse_pins("sha256///gRbgiIdkpFWpyVoGleRkH/YbdfQieWTu7RDNtldwpk=").unwrap();
        assert_eq!(curl, slash);
        assert_eq!(two[1].0[0], 1);
        assert_eq!(
            format!("{}", two[1]),
            "sha256/AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
    }

    #[test]
    fn rejects_bad_pins() {
        assert!(parse_pins("").is_err());
        assert!(parse_pins("md5/AAAA")
            .unwrap_err()
            .contains("expected sha256/BASE64"));
        assert!(parse_pins("sha256/AAAA").unwrap_err().contains("3 bytes"));
        assert!(parse_pins("sha256/!!!").is_err());
    }

    #[test]
    fn der_walk_never_panics_on_garbage() {
        for len in 0..64 {
            let v: Vec<u8> = (0..len).map(|i| (i * 37 + 0x30) as u8).collect();
            let _ = pin_of(&v);
        }
        assert!(spki_of(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(spki_of(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
    }
}
