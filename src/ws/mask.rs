//! RFC 6455 §5.3 masking. CONTRACT STUB — to be implemented on 8-byte words.

/// XOR `buf` with `key`, where `buf[0]` is the payload byte at position
/// `offset` of its frame (so pieces of one frame can be unmasked separately).
pub fn apply_mask(_buf: &mut [u8], _key: [u8; 4], _offset: u64) {
    todo!()
}
