//! A TLS connection as a sans-IO value over rustls's unbuffered API.
//!
//! The loop reads ciphertext from its socket into [`TlsSession::recv_buf`],
//! commits it, and asks for plaintext with [`TlsSession::read`]; it hands
//! plaintext to [`TlsSession::write`] and sends what [`TlsSession::send_buf`]
//! holds. Nothing here touches a socket or a clock.
//!
//! Memory: the ciphertext and plaintext buffers come from a per-thread pool
//! only while they hold bytes and go back as soon as they are empty, so an
//! idle connection keeps only rustls's own state (keys and the handshake
//! state, well under 4 KiB; `tests/tls_memory.rs` measures it).

use std::cell::RefCell;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

use super::TlsError;

/// Largest TLS record on the wire (16 KiB plaintext + TLS 1.2 overhead).
const MAX_RECORD_BYTES: usize = 16 * 1024 + 2048;
/// rustls limits a handshake message to 64 KiB; a flight may span records.
const MAX_HANDSHAKE_RX_BYTES: usize = 64 * 1024 + MAX_RECORD_BYTES;
/// Plaintext encrypted per record.
const MAX_PLAIN_PER_RECORD: usize = 16 * 1024;
/// `write` stops accepting plaintext once this much ciphertext is queued
/// (the socket is then the bottleneck; the caller waits for writable).
const MAX_QUEUED_TX_BYTES: usize = 64 * 1024;
/// Pool size per thread: buffers kept for reuse beyond this are freed.
const POOL_KEEP: usize = 64;
/// Size a pooled buffer is created with (one record plus headroom).
const POOL_BUF_BYTES: usize = MAX_RECORD_BYTES;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Bytes the calling thread's buffer pool holds for reuse (shared by every
/// connection of the thread, not owned by any).
pub fn pool_bytes() -> usize {
    POOL.with(|p| p.borrow().iter().map(|v| v.capacity()).sum())
}

fn pool_take() -> Vec<u8> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(POOL_BUF_BYTES))
}

fn pool_give(mut v: Vec<u8>) {
    if v.capacity() == 0 {
        return;
    }
    if v.capacity() > 2 * POOL_BUF_BYTES {
        return; // a handshake-sized buffer: let it go
    }
    v.clear();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_KEEP {
            p.push(v);
        }
    });
}

/// A byte queue whose storage is pooled: `data[start..]` is pending.
#[derive(Default)]
struct Buf {
    data: Vec<u8>,
    start: usize,
}

impl Buf {
    fn is_empty(&self) -> bool {
        self.start >= self.data.len()
    }
    fn len(&self) -> usize {
        self.data.len() - self.start
    }
    fn pending(&self) -> &[u8] {
        self.data.get(self.start..).unwrap_or(&[])
    }
    fn pending_mut(&mut self) -> &mut [u8] {
        let start = self.start;
        self.data.get_mut(start..).unwrap_or(&mut [])
    }
    fn ensure_storage(&mut self) {
        if self.data.capacity() == 0 {
            self.data = pool_take();
            self.start = 0;
        }
    }
    fn extend(&mut self, b: &[u8]) {
        self.ensure_storage();
        self.data.extend_from_slice(b);
    }
    /// Drops `n` bytes from the front; gives the storage back when empty.
    fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.data.len());
        if self.is_empty() {
            self.release();
        } else if self.start > self.data.len() / 2 {
            // Keep the pending bytes at the front so the buffer never creeps.
            self.data.drain(..self.start);
            self.start = 0;
        }
    }
    fn release(&mut self) {
        self.start = 0;
        pool_give(std::mem::take(&mut self.data));
    }
    /// Appends up to `room` zeroed bytes and returns them, for a producer
    /// that reports how many it filled (see `truncate_unfilled`).
    fn spare(&mut self, room: usize) -> &mut [u8] {
        self.ensure_storage();
        if self.start > 0 {
            self.data.drain(..self.start);
            self.start = 0;
        }
        let old = self.data.len();
        self.data.resize(old + room, 0);
        &mut self.data[old..]
    }
    fn truncate_unfilled(&mut self, room: usize, filled: usize) {
        let keep = self.data.len() - room + filled.min(room);
        self.data.truncate(keep);
        if self.is_empty() {
            self.release();
        }
    }
}

/// rustls's client or server connection behind one vtable. A binary that
/// never calls [`TlsSession::client`] (the relay) or
/// [`TlsSession::server`] (origin and dest) never builds the other side's
/// vtable, so the linker may drop what only that side reaches; an enum
/// with both variants kept both in every binary (7–12 KiB per binary,
/// README "Dependencies").
trait Side {
    /// One pass of rustls over `rx`: bytes to discard from `rx`, and where
    /// `handle` stopped.
    fn step(
        &mut self,
        rx: &mut [u8],
        f: &mut Fields<'_, '_, '_>,
    ) -> Result<(usize, Next), TlsError>;
    /// Encodes the alert rustls queued after a failure, if any.
    fn encode_alert(&mut self, rx: &mut [u8], tx: &mut Buf);
    fn alpn(&self) -> Option<&[u8]>;
}

/// The two rustls connection types share the unbuffered API but no trait
/// for it: one implementation, stamped out for each.
macro_rules! impl_side {
    ($($conn:ty),+) => {$(
        impl Side for $conn {
            fn step(
                &mut self,
                rx: &mut [u8],
                f: &mut Fields<'_, '_, '_>,
            ) -> Result<(usize, Next), TlsError> {
                let UnbufferedStatus { discard, state } = self.process_tls_records(rx);
                Ok((discard, handle(state.map_err(TlsError::from)?, f)?))
            }
            fn encode_alert(&mut self, rx: &mut [u8], tx: &mut Buf) {
                encode_alert(self.process_tls_records(rx).state, tx)
            }
            fn alpn(&self) -> Option<&[u8]> {
                self.alpn_protocol()
            }
        }
    )+};
}

impl_side!(UnbufferedClientConnection, UnbufferedServerConnection);

type Conn = Box<dyn Side>;

/// What `read` produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// This many plaintext bytes were written into the caller's buffer.
    Data(usize),
    /// Nothing decrypted yet: more ciphertext is needed (or the handshake
    /// is still running; send `send_buf` first).
    WouldBlock,
    /// The peer closed (close_notify, or the TCP stream ended).
    Eof,
}

/// One TLS connection, client or server side.
pub struct TlsSession {
    conn: Conn,
    /// Ciphertext received, not yet processed by rustls.
    rx: Buf,
    /// Ciphertext to send.
    tx: Buf,
    /// Decrypted bytes that did not fit the caller's buffer.
    plain: Buf,
    handshake_done: bool,
    peer_closed: bool,
    tcp_eof: bool,
    close_requested: bool,
    /// close_notify requested and not yet encoded.
    close_pending: bool,
    failed: Option<TlsError>,
    /// Bytes `recv_buf` appended to `rx` that `recv_commit` has not settled.
    rx_spare: usize,
}

/// Where a pass of the state machine stopped.
enum Stop {
    /// Needs more ciphertext (handshake) or nothing more to do now.
    Idle,
    /// The caller's plaintext buffer is full.
    OutFull,
}

impl TlsSession {
    pub fn client(
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Self, TlsError> {
        let c = UnbufferedClientConnection::new(config, name).map_err(TlsError::from)?;
        Ok(Self::new(Box::new(c)))
    }

    pub fn server(config: Arc<rustls::ServerConfig>) -> Result<Self, TlsError> {
        let c = UnbufferedServerConnection::new(config).map_err(TlsError::from)?;
        Ok(Self::new(Box::new(c)))
    }

    fn new(conn: Conn) -> Self {
        let mut s = Self {
            conn,
            rx: Buf::default(),
            tx: Buf::default(),
            plain: Buf::default(),
            handshake_done: false,
            peer_closed: false,
            tcp_eof: false,
            close_requested: false,
            close_pending: false,
            failed: None,
            rx_spare: 0,
        };
        // A client's ClientHello is ready at once.
        let _ = s.pump(&mut [], &mut 0, &[], &mut 0);
        s
    }

    pub fn is_handshaking(&self) -> bool {
        !self.handshake_done
    }

    /// The ALPN protocol agreed, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn()
    }

    /// Space to read ciphertext into; commit with `recv_commit`. Empty when
    /// enough ciphertext is already buffered (call `read` first).
    pub fn recv_buf(&mut self) -> &mut [u8] {
        self.settle_rx(0);
        let limit = if self.handshake_done {
            MAX_RECORD_BYTES
        } else {
            MAX_HANDSHAKE_RX_BYTES
        };
        let have = self.rx.len();
        if have >= limit {
            return &mut [];
        }
        let room = (limit - have).min(POOL_BUF_BYTES);
        self.rx_spare = room;
        self.rx.spare(room)
    }

    /// `n` bytes of the last `recv_buf` were filled.
    pub fn recv_commit(&mut self, n: usize) {
        self.settle_rx(n);
    }

    fn settle_rx(&mut self, filled: usize) {
        if self.rx_spare > 0 {
            self.rx.truncate_unfilled(self.rx_spare, filled);
            self.rx_spare = 0;
        }
    }

    /// Copies ciphertext in (for callers that already hold it in a buffer).
    pub fn recv(&mut self, ciphertext: &[u8]) {
        self.settle_rx(0);
        self.rx.extend(ciphertext);
    }

    /// The TCP stream ended: no more ciphertext will come.
    pub fn recv_eof(&mut self) {
        self.tcp_eof = true;
    }

    /// Ciphertext waiting to be sent.
    pub fn send_buf(&self) -> &[u8] {
        self.tx.pending()
    }

    pub fn wants_send(&self) -> bool {
        !self.tx.is_empty()
    }

    /// `n` bytes of `send_buf` were sent.
    pub fn send_consume(&mut self, n: usize) {
        self.tx.consume(n);
    }

    /// Bytes of ciphertext received and not yet processed (for tests and
    /// for the loop's "read more?" decision).
    pub fn rx_len(&self) -> usize {
        self.rx.len()
    }

    /// True when no buffer is held (the idle state).
    pub fn holds_no_buffers(&self) -> bool {
        self.rx.data.capacity() == 0
            && self.tx.data.capacity() == 0
            && self.plain.data.capacity() == 0
    }

    /// Decrypts into `out`. Runs the handshake as a side effect (check
    /// `send_buf` afterwards).
    pub fn read(&mut self, out: &mut [u8]) -> Result<Read, TlsError> {
        self.settle_rx(0);
        let mut n = 0;
        if !self.plain.is_empty() {
            let take = self.plain.len().min(out.len());
            out[..take].copy_from_slice(&self.plain.pending()[..take]);
            self.plain.consume(take);
            n = take;
        }
        if n < out.len() {
            self.pump(out, &mut n, &[], &mut 0)?;
        }
        if n > 0 {
            Ok(Read::Data(n))
        } else if self.peer_closed || (self.tcp_eof && self.rx.is_empty()) {
            Ok(Read::Eof)
        } else if self.tcp_eof && !self.handshake_done {
            Err(TlsError::Closed(
                "connection closed during the TLS handshake".into(),
            ))
        } else {
            Ok(Read::WouldBlock)
        }
    }

    /// Encrypts as much of `data` as fits the send queue; 0 while the
    /// handshake runs or the queue is full (send `send_buf`, then retry).
    pub fn write(&mut self, data: &[u8]) -> Result<usize, TlsError> {
        self.settle_rx(0);
        let mut written = 0;
        // Decrypted data met on the way is kept in `plain` for `read`.
        self.pump(&mut [], &mut 0, data, &mut written)?;
        Ok(written)
    }

    /// Drives the handshake without reading or writing application data.
    pub fn process(&mut self) -> Result<(), TlsError> {
        self.settle_rx(0);
        self.pump(&mut [], &mut 0, &[], &mut 0)
    }

    /// Queues a close_notify alert (once).
    pub fn close(&mut self) -> Result<(), TlsError> {
        self.settle_rx(0);
        if !self.close_requested {
            self.close_requested = true;
            self.close_pending = true;
            self.pump(&mut [], &mut 0, &[], &mut 0)?;
        }
        Ok(())
    }

    /// Runs rustls until it needs more ciphertext, the caller's buffer is
    /// full, or there is nothing more to write.
    fn pump(
        &mut self,
        out: &mut [u8],
        out_n: &mut usize,
        data: &[u8],
        written: &mut usize,
    ) -> Result<(), TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.pump_inner(out, out_n, data, written);
        if self.rx.is_empty() {
            self.rx.release();
        }
        match r {
            Ok(_) => Ok(()),
            Err(e) => {
                // rustls queues an alert for the peer; encode it so that the
                // caller can send it before closing. One call only: the alert
                // is popped before rustls looks at the input again, and a
                // second look would fail a second time.
                self.encode_pending_alert();
                // No call reaches rustls after a failure, so the input can go.
                self.rx.release();
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn pump_inner(
        &mut self,
        out: &mut [u8],
        out_n: &mut usize,
        data: &[u8],
        written: &mut usize,
    ) -> Result<Stop, TlsError> {
        // Each pass of rustls handles at most one record; bound the passes
        // so a bug can never spin (a 64 KiB receive is ~4 records, a write
        // of 64 KiB ~4 more, plus handshake flights).
        for _ in 0..4096 {
            let step = {
                let rx = self.rx.pending_mut();
                let mut fields = Fields {
                    tx: &mut self.tx,
                    plain: &mut self.plain,
                    out,
                    out_n,
                    data,
                    written,
                    handshake_done: &mut self.handshake_done,
                    peer_closed: &mut self.peer_closed,
                    close_pending: &mut self.close_pending,
                };
                // The two sides' states are different types; `handle` is
                // generic over them.
                self.conn.step(rx, &mut fields)?
            };
            let (discard, next) = step;
            if discard > 0 {
                let start = self.rx.start;
                let end = self.rx.data.len();
                let discard = discard.min(end - start);
                self.rx.data.copy_within(start + discard..end, start);
                self.rx.data.truncate(end - discard);
            }
            match next {
                Next::Again => continue,
                Next::Stop(s) => return Ok(s),
            }
        }
        Err(TlsError::Closed("TLS state machine did not settle".into()))
    }
}

impl TlsSession {
    fn encode_pending_alert(&mut self) {
        let rx = self.rx.pending_mut();
        self.conn.encode_alert(rx, &mut self.tx);
    }
}

fn encode_alert<D>(st: Result<ConnectionState<'_, '_, D>, rustls::Error>, tx: &mut Buf) {
    if let Ok(ConnectionState::EncodeTlsData(mut enc)) = st {
        let room = 1024;
        let buf = tx.spare(room);
        let n = enc.encode(buf).unwrap_or(0);
        tx.truncate_unfilled(room, n);
    }
}

impl Drop for TlsSession {
    fn drop(&mut self) {
        self.rx.release();
        self.tx.release();
        self.plain.release();
    }
}

enum Next {
    Again,
    Stop(Stop),
}

struct Fields<'a, 'o, 'd> {
    tx: &'a mut Buf,
    plain: &'a mut Buf,
    out: &'o mut [u8],
    out_n: &'a mut usize,
    data: &'d [u8],
    written: &'a mut usize,
    handshake_done: &'a mut bool,
    peer_closed: &'a mut bool,
    close_pending: &'a mut bool,
}

fn handle<D>(st: ConnectionState<'_, '_, D>, f: &mut Fields<'_, '_, '_>) -> Result<Next, TlsError> {
    match st {
        ConnectionState::ReadTraffic(mut rt) => {
            loop {
                // Stop decrypting once the caller's buffer is full and one
                // record is parked in `plain`: the rest stays ciphertext.
                // A write (no buffer given) parks every record received so
                // far (bounded by what `rx` holds) so that it reaches the
                // encryption state behind them.
                if !f.out.is_empty() && *f.out_n >= f.out.len() && !f.plain.is_empty() {
                    return Ok(Next::Stop(Stop::OutFull));
                }
                let Some(rec) = rt.next_record() else { break };
                let rec = rec.map_err(TlsError::from)?;
                let p = rec.payload;
                let room = f.out.len() - *f.out_n;
                let take = room.min(p.len());
                f.out[*f.out_n..*f.out_n + take].copy_from_slice(&p[..take]);
                *f.out_n += take;
                if take < p.len() {
                    f.plain.extend(&p[take..]);
                }
            }
            Ok(Next::Again)
        }
        ConnectionState::EncodeTlsData(mut enc) => {
            let mut room = 4096;
            loop {
                let buf = f.tx.spare(room);
                match enc.encode(buf) {
                    Ok(n) => {
                        f.tx.truncate_unfilled(room, n);
                        return Ok(Next::Again);
                    }
                    Err(EncodeError::InsufficientSize(e)) => {
                        f.tx.truncate_unfilled(room, 0);
                        if e.required_size <= room {
                            return Err(TlsError::Closed("rustls encode size".into()));
                        }
                        room = e.required_size;
                    }
                    Err(EncodeError::AlreadyEncoded) => {
                        f.tx.truncate_unfilled(room, 0);
                        return Ok(Next::Again);
                    }
                }
            }
        }
        ConnectionState::TransmitTlsData(t) => {
            // The bytes are queued in `tx` in order; the loop sends them.
            t.done();
            Ok(Next::Again)
        }
        ConnectionState::BlockedHandshake => Ok(Next::Stop(Stop::Idle)),
        ConnectionState::PeerClosed => {
            *f.peer_closed = true;
            Ok(Next::Again)
        }
        ConnectionState::Closed => {
            *f.peer_closed = true;
            Ok(Next::Stop(Stop::Idle))
        }
        ConnectionState::WriteTraffic(mut wt) => {
            *f.handshake_done = true;
            while *f.written < f.data.len() && f.tx.len() < MAX_QUEUED_TX_BYTES {
                let end = (*f.written + MAX_PLAIN_PER_RECORD).min(f.data.len());
                let chunk = &f.data[*f.written..end];
                let mut room = chunk.len() + 64;
                loop {
                    let buf = f.tx.spare(room);
                    match wt.encrypt(chunk, buf) {
                        Ok(n) => {
                            f.tx.truncate_unfilled(room, n);
                            break;
                        }
                        Err(EncryptError::InsufficientSize(e)) if e.required_size > room => {
                            f.tx.truncate_unfilled(room, 0);
                            room = e.required_size;
                        }
                        Err(e) => {
                            f.tx.truncate_unfilled(room, 0);
                            return Err(TlsError::Closed(format!("TLS encrypt: {e}")));
                        }
                    }
                }
                *f.written = end;
            }
            if *f.close_pending {
                *f.close_pending = false;
                let mut room = 64;
                loop {
                    let buf = f.tx.spare(room);
                    match wt.queue_close_notify(buf) {
                        Ok(n) => {
                            f.tx.truncate_unfilled(room, n);
                            break;
                        }
                        Err(EncryptError::InsufficientSize(e)) if e.required_size > room => {
                            f.tx.truncate_unfilled(room, 0);
                            room = e.required_size;
                        }
                        Err(_) => {
                            f.tx.truncate_unfilled(room, 0);
                            break;
                        }
                    }
                }
            }
            Ok(Next::Stop(Stop::Idle))
        }
        _ => Ok(Next::Stop(Stop::Idle)),
    }
}
