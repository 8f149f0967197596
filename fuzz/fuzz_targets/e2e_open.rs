//! Feeds arbitrary and mutated messages to an established end-to-end
//! session (each negotiation mode) and arbitrary handshake messages to
//! fresh ones. Nothing may panic; a transport message opens only if it is
//! byte for byte the next one the peer sealed, and once anything failed,
//! everything fails. `open` and `open_in_place` alternate (op bit 6).
#![no_main]
use libfuzzer_sys::fuzz_target;
use sockrelay::secure::{CipherPref, Error, Noise, Side};
use uuid::Uuid;

const TOKEN: &[u8] = b"fuzz token fuzz token fuzz token";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let session = Uuid::from_bytes([mode; 16]);
    // Low bits: which negotiation. auto/auto is AES with hardware AES,
    // auto/chacha a negotiated ChaCha, chacha/x the v1 format.
    let (pd, po) = match mode % 4 {
        0 => (CipherPref::Aes, CipherPref::Aes),
        1 => (CipherPref::Auto, CipherPref::ChaCha),
        2 => (CipherPref::ChaCha, CipherPref::Auto),
        _ => (CipherPref::Auto, CipherPref::Auto),
    };
    let mut d = Noise::with_cipher(Side::Dest, TOKEN, &session, pd).unwrap();
    let mut o = Noise::with_cipher(Side::Origin, TOKEN, &session, po).unwrap();

    if mode & 0x80 != 0 {
        // Arbitrary handshake messages: origin gets message 1, a dest that
        // sent its own gets message 2.
        let _ = o.handshake_in(rest);
        let mut m1 = Vec::new();
        d.handshake_out(&mut m1).unwrap();
        let _ = d.handshake_in(rest);
        return;
    }
    let mut m1 = Vec::new();
    d.handshake_out(&mut m1).unwrap();
    o.handshake_in(&m1).unwrap();
    let mut m2 = Vec::new();
    o.handshake_out(&mut m2).unwrap();
    d.handshake_in(&m2).unwrap();

    // rest = records of [op, len, bytes...]. op even: the next genuine
    // message XORed with `bytes` (cycled), op odd: `bytes` as a message.
    let mut rest = rest;
    let mut n: u32 = 0;
    let mut failed = false;
    while let [op, len, tail @ ..] = rest {
        let take = (*len as usize).min(tail.len());
        let (bytes, next) = tail.split_at(take);
        rest = next;
        n += 1;
        let plain = n.to_be_bytes().repeat(1 + (*op as usize >> 1) % 64);
        let mut genuine = Vec::new();
        if d.seal(&plain, &mut genuine).is_err() {
            return;
        }
        let msg = if op & 1 == 0 {
            let mut m = genuine.clone();
            if !bytes.is_empty() {
                for (i, b) in m.iter_mut().enumerate() {
                    *b ^= bytes[i % bytes.len()];
                }
            }
            m
        } else {
            bytes.to_vec()
        };
        let res = if op & 0x40 == 0 {
            let mut out = b"pre".to_vec();
            let r = o.open(&msg, &mut out);
            if r.is_err() {
                assert_eq!(out, b"pre", "unauthenticated bytes left in out");
            }
            r.map(|()| out[3..].to_vec())
        } else {
            let mut m = msg.clone();
            let mut scratch = Vec::new();
            o.open_in_place(&mut m, &mut scratch).map(<[u8]>::to_vec)
        };
        match res {
            Ok(got) => {
                assert!(!failed, "opened after a failure");
                assert_eq!(msg, genuine, "opened a message the peer did not seal");
                assert_eq!(got, plain);
            }
            Err(e) => {
                if failed {
                    assert_eq!(e, Error::Failed);
                }
                failed = true;
            }
        }
    }
});
