//! An output queue of byte segments, written with one `writev` per turn.
//!
//! Small frames (headers, control frames, sealed messages) are appended to
//! an *inline* segment, a growable buffer the queue owns. A large payload
//! that already lies in a buffer of its own (a mux batch, masked or sealed
//! where it lies) is queued as that buffer, not copied: it becomes a
//! *payload* segment, and once the socket has taken all of it the buffer
//! comes back through [`OutQueue::take_written`] for reuse. This is what
//! takes the last user-space copy off the sending client's path (README
//! "Benchmarks", full chain): the bytes go from the channel's socket into
//! the batch (one kernel copy), are masked in place, and go from the batch
//! to the relay's socket (one kernel copy).
//!
//! Pure data structure: no I/O. [`OutQueue::io_slices`] lends the unwritten
//! bytes in order, [`OutQueue::advance`] says how many the socket took.

use std::collections::VecDeque;
use std::io::IoSlice;

/// Most segments offered to one `writev`: a few frames with their headers.
pub const MAX_IOV: usize = 16;
/// A written inline buffer is kept for reuse if no larger than this.
const KEEP_INLINE_BYTES: usize = 256 * 1024;
/// Written payload buffers waiting for [`OutQueue::take_written`]; beyond
/// this they are freed (an owner that never takes them back loses nothing).
const KEEP_WRITTEN: usize = 8;

#[derive(Debug)]
struct Segment {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
    /// A buffer handed over by [`OutQueue::push_payload`] (given back once
    /// written) rather than one of the queue's inline buffers.
    payload: bool,
}

#[derive(Debug, Default)]
pub struct OutQueue {
    segs: VecDeque<Segment>,
    /// Unwritten bytes over all segments.
    len: usize,
    /// An emptied inline buffer, kept for the next inline segment.
    spare_inline: Option<Vec<u8>>,
    /// Payload buffers the socket has taken in full.
    written: Vec<Vec<u8>>,
}

impl OutQueue {
    /// A queue whose first bytes are `first` (e.g. an upgrade request).
    pub fn with_inline(first: Vec<u8>) -> OutQueue {
        let mut q = OutQueue::default();
        if !first.is_empty() {
            q.len = first.len();
            q.segs.push_back(Segment {
                buf: first,
                pos: 0,
                payload: false,
            });
        }
        q
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append to the queue through `f`, which gets the inline buffer at the
    /// queue's end and may only append to it (or truncate what it
    /// appended itself).
    pub fn append<R>(&mut self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let needs_new = self.segs.back().is_none_or(|s| s.payload);
        if needs_new {
            let buf = self.spare_inline.take().unwrap_or_default();
            self.segs.push_back(Segment {
                buf,
                pos: 0,
                payload: false,
            });
        }
        let seg = self
            .segs
            .back_mut()
            .expect("an inline segment was just ensured");
        let unwritten_before = seg.buf.len() - seg.pos;
        let r = f(&mut seg.buf);
        // `f` may not remove bytes already written; if it did (a bug),
        // what is left counts as written.
        debug_assert!(seg.buf.len() >= seg.pos);
        seg.pos = seg.pos.min(seg.buf.len());
        self.len = self.len - unwritten_before + (seg.buf.len() - seg.pos);
        if seg.buf.len() == seg.pos {
            // Nothing unwritten in it (f appended nothing): drop it again.
            let mut empty = self.segs.pop_back().map(|s| s.buf).unwrap_or_default();
            self.keep_inline(&mut empty);
        }
        r
    }

    /// Queue `buf` itself as the next bytes; it comes back through
    /// [`OutQueue::take_written`] once written.
    pub fn push_payload(&mut self, buf: Vec<u8>) {
        if buf.is_empty() {
            self.give_back(buf);
            return;
        }
        self.len += buf.len();
        self.segs.push_back(Segment {
            buf,
            pos: 0,
            payload: true,
        });
    }

    /// Fill `iov` with the unwritten bytes in order, as many segments as
    /// fit; returns how many slices were set.
    pub fn io_slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, seg) in iov.iter_mut().zip(&self.segs) {
            *slot = IoSlice::new(&seg.buf[seg.pos..]);
            n += 1;
        }
        n
    }

    /// The socket took the next `n` bytes.
    pub fn advance(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(seg) = self.segs.front_mut() else {
                break;
            };
            let left = seg.buf.len() - seg.pos;
            if n < left {
                seg.pos += n;
                return;
            }
            n -= left;
            if let Some(seg) = self.segs.pop_front() {
                self.retire(seg);
            }
        }
    }

    /// A payload buffer the socket has taken in full, for reuse.
    pub fn take_written(&mut self) -> Option<Vec<u8>> {
        self.written.pop()
    }

    /// Drop everything queued (the connection is gone); payload buffers
    /// still come back through [`OutQueue::take_written`].
    pub fn clear(&mut self) {
        while let Some(seg) = self.segs.pop_front() {
            self.retire(seg);
        }
        self.len = 0;
    }

    fn retire(&mut self, seg: Segment) {
        let mut buf = seg.buf;
        if seg.payload {
            self.give_back(buf);
        } else {
            self.keep_inline(&mut buf);
        }
    }

    fn give_back(&mut self, mut buf: Vec<u8>) {
        if self.written.len() < KEEP_WRITTEN {
            buf.clear();
            self.written.push(buf);
        }
    }

    fn keep_inline(&mut self, buf: &mut Vec<u8>) {
        if buf.capacity() <= KEEP_INLINE_BYTES && self.spare_inline.is_none() {
            buf.clear();
            self.spare_inline = Some(std::mem::take(buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Everything the queue would write, taking `chunk` bytes per write.
    fn drain(q: &mut OutQueue, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !q.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = q.io_slices(&mut iov);
            assert!(n > 0);
            let mut take = chunk;
            let mut took = 0;
            for s in &iov[..n] {
                let k = s.len().min(take);
                out.extend_from_slice(&s[..k]);
                take -= k;
                took += k;
                if take == 0 {
                    break;
                }
            }
            q.advance(took);
        }
        out
    }

    #[test]
    fn bytes_come_out_in_order_whatever_the_write_sizes() {
        for chunk in [1, 3, 7, 64, 1000, 1 << 20] {
            let mut q = OutQueue::with_inline(b"GET / HTTP/1.1\r\n\r\n".to_vec());
            let mut want = b"GET / HTTP/1.1\r\n\r\n".to_vec();
            for i in 0..20u8 {
                q.append(|v| v.extend_from_slice(&[i; 3]));
                want.extend_from_slice(&[i; 3]);
                if i % 3 == 0 {
                    let p = vec![i.wrapping_mul(7); 100 + i as usize];
                    want.extend_from_slice(&p);
                    q.push_payload(p);
                }
            }
            assert_eq!(q.len(), want.len());
            assert_eq!(drain(&mut q, chunk), want, "chunk {chunk}");
            assert_eq!(q.len(), 0);
        }
    }

    #[test]
    fn written_payloads_come_back_for_reuse() {
        let mut q = OutQueue::default();
        q.append(|v| v.extend_from_slice(b"hd"));
        q.push_payload(vec![1; 10]);
        q.append(|v| v.extend_from_slice(b"hd"));
        q.push_payload(vec![2; 10]);
        // Half of the first payload: nothing back yet.
        q.advance(7);
        assert!(q.take_written().is_none());
        q.advance(5 + 2 + 3);
        let back = q.take_written().expect("first payload written");
        assert!(back.is_empty() && back.capacity() >= 10);
        assert!(q.take_written().is_none());
        q.advance(7);
        assert!(q.take_written().is_some());
        assert!(q.is_empty());
    }

    #[test]
    fn an_append_that_adds_nothing_queues_nothing() {
        let mut q = OutQueue::default();
        q.append(|_| ());
        assert!(q.is_empty());
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        assert_eq!(q.io_slices(&mut iov), 0);
        // An append that truncates back what it added.
        q.append(|v| {
            v.extend_from_slice(b"abc");
            v.truncate(0);
        });
        assert!(q.is_empty());
        q.push_payload(Vec::new());
        assert!(q.is_empty());
    }

    #[test]
    fn appends_after_a_partial_write_go_after_the_unwritten_rest() {
        let mut q = OutQueue::default();
        q.append(|v| v.extend_from_slice(b"hello"));
        q.advance(2);
        // Appending after a partial write.
        q.append(|v| v.extend_from_slice(b"!"));
        assert_eq!(q.len(), 4);
        q.advance(4);
        q.append(|v| v.extend_from_slice(b" world"));
        assert_eq!(drain(&mut q, 4), b" world");
    }

    #[test]
    fn clear_gives_payloads_back_and_empties() {
        let mut q = OutQueue::default();
        q.push_payload(vec![9; 4]);
        q.append(|v| v.push(1));
        q.clear();
        assert!(q.is_empty());
        assert!(q.take_written().is_some());
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        assert_eq!(q.io_slices(&mut iov), 0);
    }

    #[test]
    fn more_segments_than_one_writev_takes() {
        let mut q = OutQueue::default();
        let mut want = Vec::new();
        for i in 0..(3 * MAX_IOV) {
            let p = vec![i as u8; 5];
            want.extend_from_slice(&p);
            q.push_payload(p);
        }
        assert_eq!(drain(&mut q, 1 << 20), want);
    }
}
