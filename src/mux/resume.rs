//! Mux v2 SESSION record: who we are, and where each channel stands.
//!
//! ```text
//! FRESH : 0u8, secret[32]
//! RESUME: 1u8, proof[32], id_mark u32, count u32,
//!         count x (channel u32, flags u8, recv_total u64, consumed u64)
//! proof = HMAC-SHA256(key = sender's secret,
//!                     "sockrelay mux v2 resume" || sender side ('o'|'d')
//!                     || handshake hash of this link || payload[33..])
//! ```
//! The secret is random per process and sent once, in FRESH, inside the
//! end-to-end channel; RESUME proves knowledge of it bound to the new
//! link's Noise handshake hash, so a RESUME cannot be replayed on another
//! link, and a different instance (which never learnt the secret) cannot
//! produce one. The list is covered by the proof too.

use super::ChannelId;

pub const SECRET_LEN: usize = 32;
pub const PROOF_LEN: usize = 32;
const FRESH: u8 = 0;
const RESUME: u8 = 1;
const ENTRY_LEN: usize = 4 + 1 + 8 + 8;
const LIST_AT: usize = 1 + PROOF_LEN;
/// Most channels one RESUME can describe (one record payload); a mux
/// suspending with more closes the excess.
pub const MAX_RESUME_CHANNELS: usize = 3000;
const _: () =
    assert!(LIST_AT + 8 + MAX_RESUME_CHANNELS * ENTRY_LEN <= super::record::MAX_PAYLOAD_LEN);
/// Most channels a RESUME fits in one record of a `max_batch` batch.
pub fn max_channels(max_batch: usize) -> usize {
    let room = max_batch.saturating_sub(super::record::HEADER_LEN + LIST_AT + 8);
    (room / ENTRY_LEN).min(MAX_RESUME_CHANNELS)
}
const PROOF_LABEL: &[u8] = b"sockrelay mux v2 resume";
const ROTATE_LABEL: &[u8] = b"sockrelay mux v2 rotate";

/// Entry flags.
pub const F_OPEN: u8 = 1;
pub const F_EOF_RECV: u8 = 2;
pub const F_EOF_DELIVERED: u8 = 4;

/// One channel as its sender sees the receiving half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub channel: ChannelId,
    pub flags: u8,
    /// Bytes received on the channel so far (the peer resends from here).
    pub recv_total: u64,
    /// Bytes of those written to the local socket (the peer frees them).
    pub consumed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Session {
    Fresh {
        secret: [u8; SECRET_LEN],
    },
    Resume {
        proof: [u8; PROOF_LEN],
        id_mark: u32,
        entries: Vec<Entry>,
        /// The bytes the proof covers (after the proof).
        signed: Vec<u8>,
    },
}

pub fn encode_fresh(secret: &[u8; SECRET_LEN]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + SECRET_LEN);
    v.push(FRESH);
    v.extend_from_slice(secret);
    v
}

pub fn encode_resume(
    secret: &[u8; SECRET_LEN],
    side: u8,
    hash: &[u8],
    id_mark: u32,
    entries: &[Entry],
) -> Vec<u8> {
    let mut v = vec![0u8; LIST_AT];
    v[0] = RESUME;
    v.extend_from_slice(&id_mark.to_be_bytes());
    v.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for e in entries {
        v.extend_from_slice(&e.channel.to_be_bytes());
        v.push(e.flags);
        v.extend_from_slice(&e.recv_total.to_be_bytes());
        v.extend_from_slice(&e.consumed.to_be_bytes());
    }
    let proof = prove(secret, side, hash, &v[LIST_AT..]);
    v[1..LIST_AT].copy_from_slice(&proof);
    v
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}
fn be64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// Parse a SESSION payload; `None` when malformed.
pub fn decode(p: &[u8]) -> Option<Session> {
    match *p.first()? {
        FRESH => {
            let secret: [u8; SECRET_LEN] = p.get(1..)?.try_into().ok()?;
            Some(Session::Fresh { secret })
        }
        RESUME => {
            let proof: [u8; PROOF_LEN] = p.get(1..LIST_AT)?.try_into().ok()?;
            let signed = p.get(LIST_AT..)?;
            let id_mark = be32(signed)?;
            let count = be32(signed.get(4..)?)? as usize;
            let list = signed.get(8..)?;
            if count > MAX_RESUME_CHANNELS || list.len() != count * ENTRY_LEN {
                return None;
            }
            let entries = list
                .chunks_exact(ENTRY_LEN)
                .map(|e| {
                    Some(Entry {
                        channel: be32(e)?,
                        flags: *e.get(4)?,
                        recv_total: be64(e.get(5..)?)?,
                        consumed: be64(e.get(13..)?)?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some(Session::Resume {
                proof,
                id_mark,
                entries,
                signed: signed.to_vec(),
            })
        }
        _ => None,
    }
}

#[cfg(feature = "e2e")]
fn hmac(key: &[u8; SECRET_LEN], parts: &[&[u8]]) -> [u8; 32] {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Without the `e2e` feature there is no handshake hash and no resume:
/// [`super::Mux::with_resume`] is not available, so this is never called.
#[cfg(not(feature = "e2e"))]
fn hmac(_: &[u8; SECRET_LEN], _: &[&[u8]]) -> [u8; 32] {
    [0u8; 32]
}

pub fn prove(secret: &[u8; SECRET_LEN], side: u8, hash: &[u8], signed: &[u8]) -> [u8; PROOF_LEN] {
    hmac(secret, &[PROOF_LABEL, &[side], hash, signed])
}

/// Constant-time check of a RESUME proof made by `side` with `secret`.
#[cfg(feature = "e2e")]
pub fn verify(
    secret: &[u8; SECRET_LEN],
    side: u8,
    hash: &[u8],
    signed: &[u8],
    proof: &[u8],
) -> bool {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut msg = Vec::with_capacity(PROOF_LABEL.len() + 1 + hash.len() + signed.len());
    msg.extend_from_slice(PROOF_LABEL);
    msg.push(side);
    msg.extend_from_slice(hash);
    msg.extend_from_slice(signed);
    ring::hmac::verify(&k, &msg, proof).is_ok()
}

#[cfg(not(feature = "e2e"))]
pub fn verify(_: &[u8; SECRET_LEN], _: u8, _: &[u8], _: &[u8], _: &[u8]) -> bool {
    false
}

/// The secret that replaces ours after a failed resume: one-way from the
/// old one and bound to this link, so whoever learns it (the peer we now
/// send it to) learns nothing about the channels the old one protected.
pub fn rotate(secret: &[u8; SECRET_LEN], hash: &[u8]) -> [u8; SECRET_LEN] {
    hmac(secret, &[ROTATE_LABEL, hash])
}

#[cfg(all(test, feature = "e2e"))]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_proof() {
        let s = [7u8; 32];
        let entries = vec![Entry {
            channel: 3,
            flags: F_OPEN | F_EOF_RECV,
            recv_total: 1 << 40,
            consumed: 5,
        }];
        let p = encode_resume(&s, b'd', b"hash", 9, &entries);
        let Some(Session::Resume {
            proof,
            id_mark,
            entries: got,
            signed,
        }) = decode(&p)
        else {
            panic!("not a resume")
        };
        assert_eq!((id_mark, &got), (9, &entries));
        assert!(verify(&s, b'd', b"hash", &signed, &proof));
        assert!(!verify(&s, b'o', b"hash", &signed, &proof));
        assert!(!verify(&s, b'd', b"hasH", &signed, &proof));
        assert!(!verify(&[8u8; 32], b'd', b"hash", &signed, &proof));
        let mut alt = signed.clone();
        alt[10] ^= 1;
        assert!(!verify(&s, b'd', b"hash", &alt, &proof));
        assert_eq!(
            decode(&encode_fresh(&s)),
            Some(Session::Fresh { secret: s })
        );
        assert_eq!(decode(&p[..p.len() - 1]), None);
        assert_eq!(decode(&[2]), None);
        assert_eq!(decode(&[]), None);
        assert_ne!(rotate(&s, b"a"), rotate(&s, b"b"));
    }
}
