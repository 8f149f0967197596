//! Forwarding buffers, borrowed while data is in flight and returned when
//! drained, so an idle connection holds none.
//!
//! Buffers come in size classes: the smallest (`MIN_BUFFER_BYTES`, class 0)
//! doubles up to the `--buffer` cap. Each connection's [`Sizer`] picks the
//! class it borrows from what its reads looked like: a sender that keeps
//! the buffer full gets a bigger one (fewer, larger `read`s and `writev`s),
//! a quiet one drifts back to the smallest. The [`Pool`] lends a bigger
//! class only while the bytes lent out stay within `--buffer-memory`; class
//! 0 is always lent, so memory is bounded by connections in flight times
//! the smallest class plus the budget, plus what the pool keeps free.

/// One connection's inbound buffer plus the list of byte ranges in it that
/// are ready to go out to the peer (see `pipe`).
pub struct Buf {
    pub data: Box<[u8]>,
    /// Output segments: (start, end, ends_frame) ranges of `data`, in order.
    pub segs: Vec<Seg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    pub start: u32,
    pub end: u32,
    /// Writing this segment completes a WebSocket frame toward the peer.
    pub ends_frame: bool,
}

/// Most output segments one buffer may hold before the loop stops decoding
/// and waits for the peer to drain them (each small frame needs one).
pub const MAX_SEGS: usize = 64;

/// Reads in a row that would have fitted a quarter of the buffer before
/// its connection's class shrinks.
pub const QUIET_READS: u8 = 4;

/// The buffer sizes: class `c` holds `min << c` bytes, the last class is
/// cut at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classes {
    min: usize,
    max: usize,
    top: u8,
}

impl Classes {
    /// Classes from `min` bytes doubling up to `max` (`max < min` means
    /// one class of `min` bytes).
    pub fn new(min: usize, max: usize) -> Classes {
        let min = min.max(1);
        let max = max.max(min);
        let mut top = 0u8;
        while min << top < max {
            top += 1;
        }
        Classes { min, max, top }
    }

    /// The largest class.
    pub fn top(&self) -> u8 {
        self.top
    }

    /// Bytes in a buffer of class `c` (classes past the top are the top).
    pub fn bytes(&self, c: u8) -> usize {
        (self.min << c.min(self.top)).min(self.max)
    }

    /// The smallest class that holds `n` bytes (the top if none does).
    pub fn fit(&self, n: usize) -> u8 {
        let mut c = 0;
        while c < self.top && self.bytes(c) < n {
            c += 1;
        }
        c
    }
}

/// Sans-IO sizing policy of one connection's inbound buffer, fed with what
/// each round of reads got. Three bytes, kept while the connection is idle
/// (the buffer itself is not).
///
/// - *Grow*: a round of reads filled more than half the buffer, all the
///   room it had: the socket held more than the buffer could take, so the
///   buffer size limited the syscalls. Want the next class, once the
///   buffer in hand is of the class wanted (a buffer cut down by the
///   memory budget does not ratchet the wish upward).
/// - *Shrink*: [`QUIET_READS`] rounds in a row that would each have fitted
///   a quarter of the buffer: want the smallest class that holds twice
///   the largest of them.
/// - Anything in between keeps the class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sizer {
    want: u8,
    quiet: u8,
    /// The class that holds twice the largest read of the quiet streak.
    quiet_fit: u8,
}

impl Sizer {
    /// The class this connection should borrow next.
    pub fn want(&self) -> u8 {
        self.want
    }

    /// A round of reads got `got` bytes (more than zero) into a buffer of
    /// `len` bytes that had `room` free bytes when it began.
    pub fn on_read(&mut self, classes: &Classes, got: usize, room: usize, len: usize) {
        if got == 0 {
            return;
        }
        if got >= room && room.saturating_mul(2) > len {
            self.quiet = 0;
            self.quiet_fit = 0;
            if len >= classes.bytes(self.want) {
                self.want = (self.want + 1).min(classes.top());
            }
            return;
        }
        if got.saturating_mul(4) <= len {
            self.quiet_fit = self.quiet_fit.max(classes.fit(got.saturating_mul(2)));
            self.quiet += 1;
            if self.quiet >= QUIET_READS {
                self.want = self.want.min(self.quiet_fit);
                self.quiet = 0;
                self.quiet_fit = 0;
            }
        } else {
            self.quiet = 0;
            self.quiet_fit = 0;
        }
    }
}

pub struct Pool {
    // Boxed so a connection's `Option<Box<Buf>>` costs one word when idle;
    // the pool hands out the same boxes again. One free list per class.
    #[allow(clippy::vec_box)]
    free: Vec<Vec<Box<Buf>>>,
    classes: Classes,
    /// Bytes lent out past which only class 0 is lent.
    budget_bytes: usize,
    /// Bytes of free buffers kept for reuse; more go back to the allocator.
    keep_bytes: usize,
    free_bytes: usize,
    lent_bytes: usize,
    /// Buffers currently lent out (for metrics and tests).
    pub in_use: usize,
}

impl Pool {
    /// A pool of buffers in `classes`, lending at most `budget_bytes` in
    /// total beyond class-0 buffers, keeping up to `keep_bytes` free.
    pub fn new(classes: Classes, budget_bytes: usize, keep_bytes: usize) -> Pool {
        Pool {
            free: (0..=classes.top()).map(|_| Vec::new()).collect(),
            classes,
            budget_bytes,
            keep_bytes,
            free_bytes: 0,
            lent_bytes: 0,
            in_use: 0,
        }
    }

    pub fn classes(&self) -> &Classes {
        &self.classes
    }

    /// Lend a buffer of class `want`, or of the largest smaller class the
    /// memory budget allows (class 0 always).
    pub fn get(&mut self, want: u8) -> Box<Buf> {
        let c = self.grant(want, self.lent_bytes);
        let bytes = self.classes.bytes(c);
        self.in_use += 1;
        self.lent_bytes += bytes;
        match self.free[c as usize].pop() {
            Some(buf) => {
                self.free_bytes -= bytes;
                buf
            }
            None => Box::new(Buf {
                data: vec![0u8; bytes].into_boxed_slice(),
                segs: Vec::with_capacity(MAX_SEGS),
            }),
        }
    }

    /// Exchange `buf` (empty, no segments) for one of class `want` if the
    /// pool would lend a different size than `buf`'s; else keep it.
    pub fn resize(&mut self, buf: Box<Buf>, want: u8) -> Box<Buf> {
        let len = buf.data.len();
        let lent_without = self.lent_bytes.saturating_sub(len);
        if self.classes.bytes(self.grant(want, lent_without)) == len {
            return buf;
        }
        self.put(buf);
        self.get(want)
    }

    /// The class lent for a wish of `want` with `lent` bytes lent out.
    fn grant(&self, want: u8, lent: usize) -> u8 {
        let mut c = want.min(self.classes.top());
        while c > 0 && lent.saturating_add(self.classes.bytes(c)) > self.budget_bytes {
            c -= 1;
        }
        c
    }

    pub fn put(&mut self, mut buf: Box<Buf>) {
        let bytes = buf.data.len();
        self.in_use = self.in_use.saturating_sub(1);
        self.lent_bytes = self.lent_bytes.saturating_sub(bytes);
        let c = self.classes.fit(bytes);
        if self.classes.bytes(c) == bytes && self.free_bytes + bytes <= self.keep_bytes {
            buf.segs.clear();
            self.free_bytes += bytes;
            self.free[c as usize].push(buf);
        }
    }

    pub fn free_count(&self) -> usize {
        self.free.iter().map(Vec::len).sum()
    }

    /// Bytes in buffers lent out.
    pub fn lent_bytes(&self) -> usize {
        self.lent_bytes
    }

    /// Bytes in free buffers kept for reuse.
    pub fn free_bytes(&self) -> usize {
        self.free_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: usize = 1024;

    fn classes() -> Classes {
        Classes::new(16 * K, 256 * K)
    }

    /// Feed `rounds` of (got, room) for a buffer of the class wanted
    /// (budget permitting: `cap_class`), returning the wished class after each.
    fn drive(s: &mut Sizer, c: &Classes, cap_class: u8, rounds: &[(usize, bool)]) -> Vec<u8> {
        rounds
            .iter()
            .map(|&(got, empty)| {
                let len = c.bytes(s.want().min(cap_class));
                // `empty`: the round began on an empty buffer; else half full.
                let room = if empty { len } else { len / 2 };
                s.on_read(c, got.min(room), room, len);
                s.want()
            })
            .collect()
    }

    #[test]
    fn classes_double_from_the_smallest_up_to_the_cap() {
        let c = classes();
        assert_eq!(c.top(), 4);
        let sizes: Vec<usize> = (0..=5).map(|i| c.bytes(i)).collect();
        assert_eq!(sizes, [16, 32, 64, 128, 256, 256].map(|k| k * K));
        assert_eq!(c.fit(1), 0);
        assert_eq!(c.fit(16 * K), 0);
        assert_eq!(c.fit(16 * K + 1), 1);
        assert_eq!(c.fit(10 << 20), 4);
        // A cap that is not a power-of-two multiple is the last class.
        let odd = Classes::new(16 * K, 100 * K);
        assert_eq!((odd.top(), odd.bytes(3)), (3, 100 * K));
        // `--buffer 16K`: one class, no growth.
        let one = Classes::new(16 * K, 16 * K);
        let mut s = Sizer::default();
        assert_eq!(drive(&mut s, &one, 9, &[(1 << 20, true); 5]), [0; 5]);
    }

    #[test]
    fn a_sender_that_keeps_the_buffer_full_grows_it_to_the_cap() {
        let c = classes();
        let mut s = Sizer::default();
        let wants = drive(&mut s, &c, 9, &[(usize::MAX, true); 6]);
        assert_eq!(wants, [1, 2, 3, 4, 4, 4]);
    }

    #[test]
    fn a_buffer_full_because_the_receiver_is_slow_does_not_grow() {
        // The round began with half the buffer still waiting for the peer
        // and filled only the other half: room, not the sender, limited it.
        let c = classes();
        let mut s = Sizer::default();
        let wants = drive(&mut s, &c, 9, &[(usize::MAX, false); 4]);
        assert_eq!(wants, [0; 4]);
    }

    #[test]
    fn small_messages_never_grow_the_buffer() {
        // The ssh-agent pattern: requests of 64 bytes to a few KiB.
        let c = classes();
        let mut s = Sizer::default();
        let rounds: Vec<(usize, bool)> = (0..1000).map(|i| (64 + (i * 37) % 4000, true)).collect();
        assert!(drive(&mut s, &c, 9, &rounds).iter().all(|&w| w == 0));
    }

    #[test]
    fn a_quiet_spell_shrinks_to_twice_the_largest_recent_read() {
        let c = classes();
        let mut s = Sizer::default();
        drive(&mut s, &c, 9, &[(usize::MAX, true); 4]);
        assert_eq!(s.want(), 4); // 256 KiB
                                 // Three quiet rounds keep the class; the fourth decides.
        let w = drive(&mut s, &c, 9, &[(100, true), (20 * K, true), (5, true)]);
        assert_eq!(w, [4, 4, 4]);
        // Largest was 20 KiB: twice that needs 64 KiB (class 2).
        assert_eq!(drive(&mut s, &c, 9, &[(1, true)]), [2]);
        // Quiet again: down to the smallest.
        assert_eq!(drive(&mut s, &c, 9, &[(64, true); 4]), [2, 2, 2, 0]);
    }

    #[test]
    fn a_medium_read_breaks_a_quiet_streak() {
        let c = classes();
        let mut s = Sizer::default();
        drive(&mut s, &c, 9, &[(usize::MAX, true); 4]);
        // 100 KiB of 256: neither full nor quiet.
        let w = drive(
            &mut s,
            &c,
            9,
            &[
                (64, true),
                (64, true),
                (64, true),
                (100 * K, true),
                (64, true),
            ],
        );
        assert_eq!(w, [4; 5]);
    }

    #[test]
    fn a_steady_sender_settles_where_its_reads_fit() {
        // A producer that delivers 40 KiB per round: grows while rounds
        // fill the buffer, then stays once they do not.
        let c = classes();
        let mut s = Sizer::default();
        let w = drive(&mut s, &c, 9, &[(40 * K, true); 8]);
        assert_eq!(w, [1, 2, 2, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn a_budget_cut_buffer_does_not_ratchet_the_wish() {
        let c = classes();
        let mut s = Sizer::default();
        // The pool can only lend class 1 (32 KiB).
        let w = drive(&mut s, &c, 1, &[(usize::MAX, true); 6]);
        assert_eq!(w, [1, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn pool_lends_big_buffers_only_within_its_budget() {
        let c = classes();
        let mut pool = Pool::new(c, 300 * K, 1 << 20);
        let a = pool.get(4);
        assert_eq!(a.data.len(), 256 * K);
        // 44 KiB of budget left: a 256 KiB wish gets 32 KiB.
        let b = pool.get(4);
        assert_eq!(b.data.len(), 32 * K);
        // Class 0 is always lent, budget or not.
        let z: Vec<_> = (0..4).map(|_| pool.get(4)).collect();
        assert!(z.iter().all(|b| b.data.len() == 16 * K));
        assert_eq!(pool.lent_bytes(), 256 * K + 32 * K + 4 * 16 * K);
        pool.put(a);
        // 96 KiB lent: 204 KiB left, so 128 KiB.
        let a = pool.get(4);
        assert_eq!(a.data.len(), 128 * K);
        for buf in z {
            pool.put(buf);
        }
        pool.put(b);
        assert_eq!(pool.in_use, 1);
        assert_eq!(pool.lent_bytes(), 128 * K);
        // An empty buffer is exchanged only if the pool would lend another size.
        let a = pool.resize(a, 3);
        assert_eq!((a.data.len(), pool.in_use), (128 * K, 1));
        let a = pool.resize(a, 4);
        assert_eq!(a.data.len(), 256 * K);
        let a = pool.resize(a, 0);
        assert_eq!((a.data.len(), pool.lent_bytes()), (16 * K, 16 * K));
    }

    #[test]
    fn pool_keeps_at_most_its_free_bytes() {
        let c = classes();
        let mut pool = Pool::new(c, usize::MAX, 300 * K);
        let big: Vec<_> = (0..2).map(|_| pool.get(4)).collect();
        let small = pool.get(0);
        for buf in big {
            pool.put(buf);
        }
        pool.put(small);
        // One 256 KiB and one 16 KiB fit 300 KiB; the second 256 KiB not.
        assert_eq!(pool.free_bytes(), 256 * K + 16 * K);
        assert_eq!(pool.free_count(), 2);
        assert_eq!((pool.in_use, pool.lent_bytes()), (0, 0));
        // The kept buffer is lent again.
        let again = pool.get(4);
        assert_eq!((again.data.len(), pool.free_bytes()), (256 * K, 16 * K));
    }
}
