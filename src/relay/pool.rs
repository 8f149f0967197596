//! Forwarding buffers, borrowed while data is in flight and returned when
//! drained, so an idle connection holds none.

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

pub struct Pool {
    // Boxed so a connection's `Option<Box<Buf>>` costs one word when idle;
    // the pool hands out the same boxes again.
    #[allow(clippy::vec_box)]
    free: Vec<Box<Buf>>,
    buf_bytes: usize,
    max_free: usize,
    /// Buffers currently lent out (for metrics and tests).
    pub in_use: usize,
}

impl Pool {
    pub fn new(buf_bytes: usize, max_free: usize) -> Pool {
        Pool {
            free: Vec::new(),
            buf_bytes,
            max_free,
            in_use: 0,
        }
    }

    pub fn buf_bytes(&self) -> usize {
        self.buf_bytes
    }

    pub fn get(&mut self) -> Box<Buf> {
        self.in_use += 1;
        self.free.pop().unwrap_or_else(|| {
            Box::new(Buf {
                data: vec![0u8; self.buf_bytes].into_boxed_slice(),
                segs: Vec::with_capacity(MAX_SEGS),
            })
        })
    }

    pub fn put(&mut self, mut buf: Box<Buf>) {
        self.in_use = self.in_use.saturating_sub(1);
        if self.free.len() < self.max_free {
            buf.segs.clear();
            self.free.push(buf);
        }
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}
