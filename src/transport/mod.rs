//! The byte stream under the WebSocket (and under each unix channel):
//! [`Transport`], a small trait over a non-blocking stream socket —
//! read, vectored write, shutdown, and the hints a readiness loop needs —
//! implemented for TCP and unix sockets, and by `client::link::Link` (an HTTP
//! CONNECT hop and TLS over TCP), so the WebSocket code never names
//! `TcpStream` in its I/O (sozu's `SocketHandler`, `lib/src/socket.rs`,
//! is the model).
//!
//! The "drained" shortcut lives here once. With edge-triggered epoll a
//! stream socket that returned fewer bytes than asked (read) or took fewer
//! than offered (write) has nothing more (no more room) right now, and the
//! next readiness edge says when to go on (epoll(7)); so the call that
//! would only return EAGAIN is skipped. The exception: when the event
//! carried a FIN or an error (`hup`), reading must go on until EOF or
//! EAGAIN, since no later edge would announce an EOF that is already there.
//!
//! [`resolve`] is the stage before the stream: the name lookup, off the
//! loop.

pub mod outq;
pub mod resolve;

use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::os::unix::io::{AsRawFd, RawFd};

/// What one [`Transport::socket_read`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// `n` bytes (maybe 0); `drained`: nothing more until the next edge.
    Bytes { n: usize, drained: bool },
    /// The peer shut down its side (or the buffer offered was empty and
    /// the socket is at EOF; see [`Transport::socket_read`]).
    Eof,
}

/// What one [`Transport::socket_write_vectored`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wrote {
    pub n: usize,
    /// The socket took less than offered: its buffer is full until the
    /// next writable edge.
    pub full: bool,
}

/// A non-blocking byte stream driven by a readiness loop.
pub trait Transport {
    /// Read into `buf` (retrying EINTR). `hup`: the readiness event
    /// reported FIN or an error, so a short read does not mean drained.
    /// An empty `buf` reads nothing and reports `Bytes { n: 0, drained:
    /// false }`.
    fn socket_read(&mut self, buf: &mut [u8], hup: bool) -> io::Result<Received>;

    /// Read at most `max` bytes appended to `buf` and, in the same read
    /// where the transport can (readv into `buf`'s spare capacity, no
    /// zeroing), up to `tail.len()` bytes after them into `tail`. `n` in
    /// the result counts both; the first `min(n, max)` went to `buf`.
    /// "Drained" means fewer than `max + tail.len()` came. The default
    /// zero-fills `buf`'s new part and leaves `tail` alone, which is just
    /// as correct (a transport such as TLS reads from its own buffer).
    fn socket_read_append(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
        tail: &mut [u8],
        hup: bool,
    ) -> io::Result<Received> {
        let _ = tail;
        read_append_zeroed(self, buf, max, hup)
    }

    /// Write from `bufs` (retrying EINTR); a write of 0 bytes when some
    /// were offered is `WriteZero`.
    fn socket_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<Wrote>;

    fn socket_write(&mut self, buf: &[u8]) -> io::Result<Wrote> {
        self.socket_write_vectored(&[IoSlice::new(buf)])
    }

    /// Shut down our sending side (a FIN), keeping the reading side.
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Bytes written but not yet acknowledged by the peer, where the
    /// transport can tell (TCP: SIOCOUTQ); 0 otherwise. A peer that does
    /// not read keeps this from going down.
    fn unacked_bytes(&self) -> usize {
        0
    }
}

fn read_stream<S: io::Read>(s: &mut S, buf: &mut [u8], hup: bool) -> io::Result<Received> {
    if buf.is_empty() {
        return Ok(Received::Bytes {
            n: 0,
            drained: false,
        });
    }
    loop {
        return match s.read(buf) {
            Ok(0) => Ok(Received::Eof),
            Ok(n) => Ok(Received::Bytes {
                n,
                drained: n < buf.len() && !hup,
            }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Received::Bytes {
                n: 0,
                drained: true,
            }),
            Err(e) => Err(e),
        };
    }
}

/// [`Transport::socket_read_append`] without the readv: `buf` zero-filled
/// for the read, then cut to what came.
pub(crate) fn read_append_zeroed<T: Transport + ?Sized>(
    t: &mut T,
    buf: &mut Vec<u8>,
    max: usize,
    hup: bool,
) -> io::Result<Received> {
    let start = buf.len();
    buf.resize(start + max, 0);
    let r = t.socket_read(&mut buf[start..], hup);
    let got = match r {
        Ok(Received::Bytes { n, .. }) => n.min(max),
        _ => 0,
    };
    buf.truncate(start + got);
    r
}

/// Read at most `max` bytes from `s` and append them to `buf`, reading
/// straight into its spare capacity (no zeroing, no copy); otherwise as
/// [`Transport::socket_read`].
pub fn read_append(
    s: &mio::net::UnixStream,
    buf: &mut Vec<u8>,
    max: usize,
    hup: bool,
) -> io::Result<Received> {
    readv_append(s.as_raw_fd(), buf, max, &mut [], hup)
}

/// One readv(2) on `fd`: at most `max` bytes into `buf`'s spare capacity
/// (appended; no zeroing, no copy), then up to `tail.len()` into `tail`.
/// As [`Transport::socket_read_append`].
fn readv_append(
    fd: RawFd,
    buf: &mut Vec<u8>,
    max: usize,
    tail: &mut [u8],
    hup: bool,
) -> io::Result<Received> {
    let offered = max.saturating_add(tail.len());
    if offered == 0 {
        return Ok(Received::Bytes {
            n: 0,
            drained: false,
        });
    }
    buf.reserve(max);
    loop {
        let spare = buf.spare_capacity_mut();
        let iov = [
            libc::iovec {
                iov_base: spare.as_mut_ptr().cast(),
                iov_len: max,
            },
            libc::iovec {
                iov_base: tail.as_mut_ptr().cast(),
                iov_len: tail.len(),
            },
        ];
        // SAFETY: the first iovec is `max` bytes at the start of `buf`'s
        // spare capacity (at least `max` bytes: reserved above), the
        // second is all of `tail`; both are memory owned by buffers
        // borrowed mutably here, disjoint (one is `buf`'s heap block, the
        // other a separate `&mut` slice), and outlive the call. readv(2)
        // writes at most iov_len bytes to each, in order, and nothing
        // reads the spare bytes before the kernel has written them.
        let r = unsafe { libc::readv(fd, iov.as_ptr(), 2) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => Ok(Received::Bytes {
                    n: 0,
                    drained: true,
                }),
                _ => Err(e),
            };
        }
        let n = r as usize;
        if n == 0 {
            return Ok(Received::Eof);
        }
        // SAFETY: readv(2) returned n <= max + tail.len() and filled the
        // first iovec before the second, so the first min(n, max) bytes
        // of the spare capacity are initialized and within the capacity.
        unsafe { buf.set_len(buf.len() + n.min(max)) };
        return Ok(Received::Bytes {
            n,
            drained: n < offered && !hup,
        });
    }
}

fn write_stream<S: io::Write>(s: &mut S, bufs: &[IoSlice<'_>]) -> io::Result<Wrote> {
    let offered: usize = bufs.iter().map(|b| b.len()).sum();
    if offered == 0 {
        return Ok(Wrote { n: 0, full: false });
    }
    loop {
        return match s.write_vectored(bufs) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => Ok(Wrote {
                n,
                full: n < offered,
            }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Wrote { n: 0, full: true }),
            Err(e) => Err(e),
        };
    }
}

impl Transport for mio::net::TcpStream {
    fn socket_read(&mut self, buf: &mut [u8], hup: bool) -> io::Result<Received> {
        read_stream(self, buf, hup)
    }
    fn socket_read_append(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
        tail: &mut [u8],
        hup: bool,
    ) -> io::Result<Received> {
        readv_append(self.as_raw_fd(), buf, max, tail, hup)
    }
    fn socket_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<Wrote> {
        write_stream(self, bufs)
    }
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn unacked_bytes(&self) -> usize {
        crate::sys::tcp_unacked_bytes(self.as_raw_fd()).unwrap_or(0)
    }
}

impl Transport for mio::net::UnixStream {
    fn socket_read(&mut self, buf: &mut [u8], hup: bool) -> io::Result<Received> {
        read_stream(self, buf, hup)
    }
    fn socket_read_append(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
        tail: &mut [u8],
        hup: bool,
    ) -> io::Result<Received> {
        readv_append(self.as_raw_fd(), buf, max, tail, hup)
    }
    fn socket_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<Wrote> {
        write_stream(self, bufs)
    }
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::net::UnixStream;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[test]
    fn a_short_read_is_drained_unless_hup() {
        let (mut a, mut b) = pair();
        assert_eq!(
            a.socket_write(b"hello").unwrap(),
            Wrote { n: 5, full: false }
        );
        let mut buf = [0u8; 64];
        assert_eq!(
            b.socket_read(&mut buf, false).unwrap(),
            Received::Bytes {
                n: 5,
                drained: true
            }
        );
        a.socket_write(b"x").unwrap();
        assert_eq!(
            b.socket_read(&mut buf, true).unwrap(),
            Received::Bytes {
                n: 1,
                drained: false
            }
        );
        // Nothing there: EAGAIN is drained, not an error.
        assert_eq!(
            b.socket_read(&mut buf, true).unwrap(),
            Received::Bytes {
                n: 0,
                drained: true
            }
        );
        a.shutdown_write().unwrap();
        assert_eq!(b.socket_read(&mut buf, true).unwrap(), Received::Eof);
    }

    #[test]
    fn read_append_fills_the_buffer_then_the_tail_and_is_drained_only_short_of_both() {
        let (mut a, mut b) = pair();
        a.socket_write(b"0123456789").unwrap();
        let mut buf = b"ab".to_vec();
        let mut tail = [0u8; 4];
        // 8 of the 10 bytes: 4 appended to buf, 4 in the tail, not drained.
        let got = b.socket_read_append(&mut buf, 4, &mut tail, false).unwrap();
        assert_eq!(
            got,
            Received::Bytes {
                n: 8,
                drained: false
            }
        );
        assert_eq!((&buf[..], &tail), (&b"ab0123"[..], b"4567"));
        // The last 2: short of the 8 offered, drained; the tail untouched.
        let got = b.socket_read_append(&mut buf, 4, &mut tail, false).unwrap();
        assert_eq!(
            got,
            Received::Bytes {
                n: 2,
                drained: true
            }
        );
        assert_eq!((&buf[..], &tail), (&b"ab012389"[..], b"4567"));
        // Nothing there: drained, buf unchanged.
        let got = b.socket_read_append(&mut buf, 4, &mut tail, false).unwrap();
        assert_eq!(
            got,
            Received::Bytes {
                n: 0,
                drained: true
            }
        );
        assert_eq!(buf.len(), 8);
        // The default (no readv) fills buf alone.
        a.socket_write(b"abcdef").unwrap();
        let mut other = Vec::new();
        let got = Single(&mut b)
            .socket_read_append(&mut other, 4, &mut tail, false)
            .unwrap();
        assert_eq!(
            got,
            Received::Bytes {
                n: 4,
                drained: false
            }
        );
        assert_eq!((&other[..], &tail), (&b"abcd"[..], b"4567"));
        a.shutdown_write().unwrap();
        let got = Single(&mut b)
            .socket_read_append(&mut other, 4, &mut [], false)
            .unwrap();
        assert_eq!(
            got,
            Received::Bytes {
                n: 2,
                drained: true
            }
        );
        assert_eq!(&other[..], b"abcdef");
        assert_eq!(
            b.socket_read_append(&mut other, 4, &mut tail, false)
                .unwrap(),
            Received::Eof
        );
        assert_eq!(other.len(), 6);
    }

    /// A transport with only the required methods (no readv).
    struct Single<'a>(&'a mut UnixStream);
    impl Transport for Single<'_> {
        fn socket_read(&mut self, buf: &mut [u8], hup: bool) -> io::Result<Received> {
            read_stream(self.0, buf, hup)
        }
        fn socket_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<Wrote> {
            write_stream(self.0, bufs)
        }
        fn shutdown_write(&mut self) -> io::Result<()> {
            self.0.shutdown(Shutdown::Write)
        }
    }

    #[test]
    fn a_full_read_is_not_drained() {
        let (mut a, mut b) = pair();
        a.socket_write(&[7u8; 100]).unwrap();
        let mut buf = [0u8; 10];
        assert_eq!(
            b.socket_read(&mut buf, false).unwrap(),
            Received::Bytes {
                n: 10,
                drained: false
            }
        );
        assert_eq!(
            b.socket_read(&mut [], false).unwrap(),
            Received::Bytes {
                n: 0,
                drained: false
            }
        );
    }

    #[test]
    fn a_write_into_a_full_socket_reports_full() {
        let (mut a, _b) = pair();
        let chunk = vec![1u8; 64 * 1024];
        let mut total = 0;
        for _ in 0..10_000 {
            let w = a
                .socket_write_vectored(&[IoSlice::new(&chunk), IoSlice::new(&chunk)])
                .unwrap();
            total += w.n;
            if w.full {
                break;
            }
        }
        assert!(total > 0);
        assert_eq!(a.socket_write(&chunk).unwrap(), Wrote { n: 0, full: true });
        assert_eq!(a.socket_write(&[]).unwrap(), Wrote { n: 0, full: false });
    }

    #[test]
    fn tcp_reports_unacked_bytes_of_a_peer_that_does_not_read() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let s = std::net::TcpStream::connect(addr).unwrap();
        let (_peer, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        let mut s = mio::net::TcpStream::from_std(s);
        assert_eq!(s.unacked_bytes(), 0);
        let chunk = vec![0u8; 64 * 1024];
        for _ in 0..10_000 {
            if s.socket_write(&chunk).unwrap().full {
                break;
            }
        }
        // The peer's window closed: what we wrote sits in our queue.
        assert!(s.unacked_bytes() > 0);
    }
}
