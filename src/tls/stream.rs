//! [`TlsStream`]: a [`TlsSession`] over a non-blocking socket, with the
//! readiness shortcuts of the transport seam (a short read means drained,
//! unless the event carried a FIN). The clients use it under the WebSocket
//! for `wss://`; the relay will use it for its TLS listeners.
//!
//! Write side: plaintext is accepted only while the ciphertext queue is
//! empty at the start of the call, so at most one call's worth (bounded by
//! the session's 64 KiB queue) waits in user space. Whatever could not be
//! sent at once stays queued: the loop keeps writable interest while
//! [`TlsStream::wants_flush`] and calls [`TlsStream::flush_tls`] on the edge.

use std::io::{self, IoSlice};

use super::{Read as TlsRead, TlsError, TlsSession};

/// Socket reads per call (each up to one record): bounds a call's work.
const MAX_READS_PER_CALL: usize = 64;

/// What one read produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plain {
    /// `n` plaintext bytes; `drained`: nothing more until the next edge.
    Bytes { n: usize, drained: bool },
    /// The peer closed (close_notify, or the TCP stream ended).
    Eof,
}

/// The TLS failure inside an `io::Error` made by this module, if any.
pub fn tls_error(e: &io::Error) -> Option<&TlsError> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
}

fn to_io(e: TlsError) -> io::Error {
    io::Error::other(e)
}

pub struct TlsStream<S> {
    io: S,
    tls: TlsSession,
    /// The last socket read was short (and no FIN was reported): the socket
    /// has nothing more until the next readable edge.
    sock_drained: bool,
    tcp_eof: bool,
}

impl<S: io::Read + io::Write> TlsStream<S> {
    pub fn new(io: S, tls: TlsSession) -> Self {
        Self {
            io,
            tls,
            sock_drained: false,
            tcp_eof: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    pub fn session(&self) -> &TlsSession {
        &self.tls
    }

    /// Bytes received before TLS started that belong to it (e.g. read
    /// together with a proxy's CONNECT answer).
    pub fn push_received(&mut self, ciphertext: &[u8]) {
        if !ciphertext.is_empty() {
            self.tls.recv(ciphertext);
        }
    }

    pub fn wants_flush(&self) -> bool {
        self.tls.wants_send()
    }

    /// Sends queued ciphertext; `Ok(true)` when none remains.
    pub fn flush_tls(&mut self) -> io::Result<bool> {
        while self.tls.wants_send() {
            match self.io.write(self.tls.send_buf()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.tls.send_consume(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads ciphertext from the socket once. `Ok(false)`: nothing (drained).
    fn fill(&mut self, hup: bool) -> io::Result<bool> {
        if self.tcp_eof || (self.sock_drained && !hup) {
            return Ok(false);
        }
        let space = self.tls.recv_buf();
        let want = space.len();
        if want == 0 {
            return Ok(false); // enough buffered; process it first
        }
        loop {
            match self.io.read(space) {
                Ok(0) => {
                    self.tls.recv_commit(0);
                    self.tcp_eof = true;
                    self.tls.recv_eof();
                    return Ok(true);
                }
                Ok(n) => {
                    self.tls.recv_commit(n);
                    self.sock_drained = n < want && !hup;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.tls.recv_commit(0);
                    self.sock_drained = true;
                    return Ok(false);
                }
                Err(e) => {
                    self.tls.recv_commit(0);
                    return Err(e);
                }
            }
        }
    }

    /// Drives the handshake on a readiness edge. `Ok(true)` once it is
    /// done (the WebSocket upgrade may then be written). Failures carry a
    /// [`TlsError`] (see [`tls_error`]).
    pub fn handshake(&mut self, hup: bool) -> io::Result<bool> {
        self.sock_drained = false;
        for _ in 0..MAX_READS_PER_CALL {
            self.flush_tls()?;
            if !self.tls.is_handshaking() {
                return Ok(true);
            }
            let got = self.fill(hup)?;
            let r = self.tls.process();
            // Send the alert that explains a failure before reporting it.
            let _ = self.flush_tls();
            r.map_err(to_io)?;
            if self.tcp_eof && self.tls.is_handshaking() {
                return Err(to_io(TlsError::Closed(
                    "the relay closed the connection during the TLS handshake".into(),
                )));
            }
            if !got {
                self.flush_tls()?;
                return Ok(!self.tls.is_handshaking());
            }
        }
        Ok(!self.tls.is_handshaking())
    }

    /// Reads plaintext into `buf`. `hup`: the event carried a FIN or an
    /// error, so a short read does not mean drained.
    pub fn read_plain(&mut self, buf: &mut [u8], hup: bool) -> io::Result<Plain> {
        if buf.is_empty() {
            return Ok(Plain::Bytes {
                n: 0,
                drained: false,
            });
        }
        self.sock_drained = false;
        for _ in 0..MAX_READS_PER_CALL {
            let r = self.tls.read(buf);
            let _ = self.flush_tls();
            match r.map_err(to_io)? {
                TlsRead::Data(n) => return Ok(Plain::Bytes { n, drained: false }),
                TlsRead::Eof => return Ok(Plain::Eof),
                TlsRead::WouldBlock => {
                    if !self.fill(hup)? {
                        return Ok(Plain::Bytes {
                            n: 0,
                            drained: true,
                        });
                    }
                }
            }
        }
        Ok(Plain::Bytes {
            n: 0,
            drained: false,
        })
    }

    /// Encrypts from `bufs` and sends. `full`: the socket did not take all
    /// the ciphertext (it stays queued; see the module notes), so the next
    /// writable edge says when to go on. Plaintext is encrypted a queue's
    /// worth at a time and sent before more is taken, so a short count
    /// means the socket is full, never that only the queue was.
    pub fn write_plain(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<(usize, bool)> {
        if !self.flush_tls()? {
            return Ok((0, true));
        }
        let offered: usize = bufs.iter().map(|b| b.len()).sum();
        let mut accepted = 0;
        let mut socket_full = false;
        'bufs: for b in bufs {
            let mut off = 0;
            while off < b.len() {
                let n = self.tls.write(&b[off..]).map_err(to_io)?;
                off += n;
                accepted += n;
                if !self.flush_tls()? {
                    socket_full = true;
                    break 'bufs;
                }
                if n == 0 {
                    break 'bufs; // handshaking or closed
                }
            }
        }
        if accepted == 0 && offered > 0 && !socket_full && !self.tls.is_handshaking() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        Ok((accepted, socket_full || accepted < offered))
    }

    /// Sends close_notify (best effort), then the caller shuts TCP down.
    pub fn close_notify(&mut self) -> io::Result<()> {
        self.tls.close().map_err(to_io)?;
        self.flush_tls().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testcerts::*;
    use super::super::{ClientTlsOptions, ServerTls, ServerTlsFiles};
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn over_loopback_tcp_with_nonblocking_sockets() {
        let dir = std::env::temp_dir().join(format!("sockrelay-tlsstream-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        make_ca(&dir, "ca");
        let (cert, key) = make_leaf(
            &dir,
            "ca",
            "relay",
            &["IP:127.0.0.1"],
            KeyKind::EcdsaP256,
            30,
        );
        let server_cfg = ServerTls::load(ServerTlsFiles {
            cert,
            key,
            client_ca: None,
        })
        .unwrap()
        .config();
        let opts = ClientTlsOptions {
            ca_file: Some(dir.join("ca.pem")),
            ..Default::default()
        };

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.set_nonblocking(true).unwrap();
        s.set_nonblocking(true).unwrap();
        let mut c = TlsStream::new(
            c,
            TlsSession::client(
                opts.build().unwrap(),
                opts.server_name_for("127.0.0.1").unwrap(),
            )
            .unwrap(),
        );
        let mut s = TlsStream::new(s, TlsSession::server(server_cfg).unwrap());
        let mut buf = vec![0u8; 4096];
        let mut done = false;
        for _ in 0..2000 {
            let cd = c.handshake(false).unwrap();
            let _ = s.read_plain(&mut buf, false).unwrap();
            if cd && !s.session().is_handshaking() {
                done = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(done, "handshake over loopback");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut sent = 0;
        let mut got = Vec::new();
        for _ in 0..20_000 {
            if sent < data.len() {
                sent += c.write_plain(&[IoSlice::new(&data[sent..])]).unwrap().0;
            } else {
                c.flush_tls().unwrap();
            }
            loop {
                match s.read_plain(&mut buf, false).unwrap() {
                    Plain::Bytes { n: 0, .. } => break,
                    Plain::Bytes { n, .. } => got.extend_from_slice(&buf[..n]),
                    Plain::Eof => panic!("early eof"),
                }
            }
            if got.len() == data.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        assert!(got == data, "{} of {} bytes", got.len(), data.len());
        c.close_notify().unwrap();
        let mut eof = false;
        for _ in 0..1000 {
            if s.read_plain(&mut buf, false).unwrap() == Plain::Eof {
                eof = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(eof);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
