//! A relay connection's byte stream: plain TCP, or TLS over it when the
//! relay runs with `--tls-cert/--tls-key` (`crate::tls::TlsStream`). The
//! loop reads and writes through `std::io::Read`/`Write` as before; under
//! TLS `WouldBlock` means "nothing decrypted / nothing accepted now", and a
//! short read does not mean the socket is drained ([`RelaySock::is_tls`]).

use std::io::{self, IoSlice, Read, Write};

use mio::net::TcpStream;

#[cfg(feature = "tls")]
use crate::tls::{Plain, TlsStream};

pub enum RelaySock {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream<TcpStream>>),
}

impl RelaySock {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            RelaySock::Plain(s) => s,
            #[cfg(feature = "tls")]
            RelaySock::Tls(t) => t.get_ref(),
        }
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            RelaySock::Plain(s) => s,
            #[cfg(feature = "tls")]
            RelaySock::Tls(t) => t.get_mut(),
        }
    }

    /// Under TLS a short read says nothing about the socket: the loop must
    /// read on until `WouldBlock`.
    pub fn is_tls(&self) -> bool {
        match self {
            RelaySock::Plain(_) => false,
            #[cfg(feature = "tls")]
            RelaySock::Tls(_) => true,
        }
    }

    /// Sends ciphertext queued below the loop (TLS); `Ok(true)` when none is.
    pub fn flush_pending(&mut self) -> io::Result<bool> {
        match self {
            RelaySock::Plain(_) => Ok(true),
            #[cfg(feature = "tls")]
            RelaySock::Tls(t) => t.flush_tls(),
        }
    }

    /// Shuts down writing (after a close_notify under TLS).
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        #[cfg(feature = "tls")]
        if let RelaySock::Tls(t) = self {
            if !t.session().is_handshaking() {
                let _ = t.close_notify();
            }
        }
        self.tcp().shutdown(std::net::Shutdown::Write)
    }
}

impl Read for RelaySock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            RelaySock::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            RelaySock::Tls(t) => match t.read_plain(buf, false)? {
                Plain::Bytes { n: 0, .. } if !buf.is_empty() => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                Plain::Bytes { n, .. } => Ok(n),
                Plain::Eof => Ok(0),
            },
        }
    }
}

impl Write for RelaySock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            RelaySock::Plain(s) => s.write_vectored(bufs),
            #[cfg(feature = "tls")]
            RelaySock::Tls(t) => {
                let offered: usize = bufs.iter().map(|b| b.len()).sum();
                match t.write_plain(bufs)? {
                    (0, _) if offered > 0 => Err(io::ErrorKind::WouldBlock.into()),
                    (n, _) => Ok(n),
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_pending().map(|_| ())
    }
}
