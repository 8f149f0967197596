//! RFC 6455 §5.3 masking, on 8-byte words.
//!
//! Masking is an XOR with a 4-byte key repeated from the first payload byte of
//! the frame. Because the key has period 4 and a word has 8 bytes, a word that
//! starts at any position `p` of the frame is XORed with the key rotated by
//! `p % 4` and written twice; the whole slice after that rotation is a plain
//! repetition with period 8. So we rotate once by `offset % 4`, then XOR
//! whole words and finish with a byte-wise tail, with no per-byte index
//! arithmetic. Unaligned loads and stores are handled by
//! `u64::from_ne_bytes` on `chunks_exact_mut`, which compiles to plain
//! (vectorised) unaligned moves on the targets we care about, without unsafe.

/// Bytes XORed per iteration of the main loop: four u64 lanes, which lets the
/// compiler keep two 128-bit (or one 256-bit) vector registers busy.
const BLOCK_BYTES: usize = 32;

/// XOR `buf` with `key`, where `buf[0]` is the payload byte at position
/// `offset` of its frame (so pieces of one frame can be unmasked separately).
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: u64) {
    // Only offset % 4 matters; the cast cannot truncate a value below 4.
    let mut k = key;
    k.rotate_left((offset % 4) as usize);
    let word = u64::from_ne_bytes([k[0], k[1], k[2], k[3], k[0], k[1], k[2], k[3]]);

    let mut blocks = buf.chunks_exact_mut(BLOCK_BYTES);
    for block in &mut blocks {
        for lane in block.chunks_exact_mut(8) {
            xor_word(lane, word);
        }
    }
    // Every block and word is a multiple of 4 bytes long, so the rotated key
    // lines up again at the start of each remainder.
    let mut words = blocks.into_remainder().chunks_exact_mut(8);
    for lane in &mut words {
        xor_word(lane, word);
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= k[i % 4];
    }
}

#[inline(always)]
fn xor_word(lane: &mut [u8], word: u64) {
    let mut w = [0u8; 8];
    w.copy_from_slice(lane);
    lane.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious byte-wise version: the reference the word version is tested against.
    fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: u64) {
        for (i, b) in buf.iter_mut().enumerate() {
            // (offset + i) % 4 without overflow for offsets near u64::MAX.
            let pos = ((offset % 4) as usize + i % 4) % 4;
            *b ^= key[pos];
        }
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn matches_bytewise_every_offset_and_length() {
        for len in 0..=64 {
            for offset in 0..=9u64 {
                let mut a = pattern(len);
                let mut b = a.clone();
                apply_mask(&mut a, KEY, offset);
                apply_mask_bytewise(&mut b, KEY, offset);
                assert_eq!(a, b, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn matches_bytewise_at_unaligned_slice_starts() {
        // The slice itself starts at every alignment inside a larger buffer.
        let base = pattern(200);
        for start in 0..16 {
            for len in [0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100] {
                let mut a = base.clone();
                let mut b = base.clone();
                apply_mask(&mut a[start..start + len], KEY, start as u64);
                apply_mask_bytewise(&mut b[start..start + len], KEY, start as u64);
                assert_eq!(a, b, "start {start} len {len}");
            }
        }
    }

    #[test]
    fn pieces_at_any_split_equal_whole() {
        for len in 0..=64usize {
            let orig = pattern(len);
            let mut whole = orig.clone();
            apply_mask_bytewise(&mut whole, KEY, 0);
            for split in 0..=len {
                for split2 in split..=len {
                    let mut p = orig.clone();
                    let (a, rest) = p.split_at_mut(split);
                    let (b, c) = rest.split_at_mut(split2 - split);
                    apply_mask(a, KEY, 0);
                    apply_mask(b, KEY, split as u64);
                    apply_mask(c, KEY, split2 as u64);
                    assert_eq!(p, whole, "len {len} splits {split},{split2}");
                }
            }
        }
    }

    #[test]
    fn huge_offsets_and_involution() {
        let orig = pattern(77);
        for offset in [u64::MAX, u64::MAX - 1, u64::MAX - 2, u64::MAX - 3, 1 << 40] {
            let mut a = orig.clone();
            let mut b = orig.clone();
            apply_mask(&mut a, KEY, offset);
            apply_mask_bytewise(&mut b, KEY, offset);
            assert_eq!(a, b);
            apply_mask(&mut a, KEY, offset);
            assert_eq!(a, orig, "masking twice restores the payload");
        }
    }

    #[test]
    fn rfc_6455_example_key() {
        // §5.7: "Hello" masked with 37 fa 21 3d.
        let mut hello = *b"Hello";
        apply_mask(&mut hello, KEY, 0);
        assert_eq!(hello, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }
}
