//! The stages between a connected TCP socket and the WebSocket upgrade:
//! an HTTP proxy's `CONNECT` (when one is chosen, `crate::proxy`), then the
//! TLS handshake (for `wss://`, `crate::tls`). [`Link`] owns the socket and
//! runs them on readiness edges; once [`Link::is_ready`], reads and writes
//! go through it to the relay (through TLS when used).
//!
//! Errors carry their cause: [`link_error`] says whether a failure is a
//! refused proxy or a certificate, and [`LinkFailure::is_permanent`]
//! whether a retry could fix it (a wrong certificate or a refused password
//! will not fix itself; a proxy that dropped the connection may).

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use mio::net::TcpStream;

use crate::proxy::{self, ProxyError, ProxyUrl};
#[cfg(feature = "tls")]
use crate::tls::{Plain, TlsError, TlsSession, TlsStream};

/// What a read through the link produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// `n` bytes; `drained`: nothing more until the next readiness edge.
    Bytes {
        n: usize,
        drained: bool,
    },
    Eof,
}

/// Why the link failed, for the engine's retry decision and the message.
#[derive(Debug)]
pub enum LinkFailure<'a> {
    Proxy(&'a ProxyError),
    #[cfg(feature = "tls")]
    Tls(&'a TlsError),
}

impl LinkFailure<'_> {
    pub fn is_permanent(&self) -> bool {
        match self {
            LinkFailure::Proxy(e) => e.is_permanent(),
            #[cfg(feature = "tls")]
            LinkFailure::Tls(e) => e.is_permanent(),
        }
    }
}

/// The proxy or TLS failure inside an `io::Error` from a [`Link`], if any.
pub fn link_error(e: &io::Error) -> Option<LinkFailure<'_>> {
    let inner = e.get_ref()?;
    if let Some(p) = inner.downcast_ref::<ProxyError>() {
        return Some(LinkFailure::Proxy(p));
    }
    #[cfg(feature = "tls")]
    if let Some(t) = inner.downcast_ref::<TlsError>() {
        return Some(LinkFailure::Tls(t));
    }
    None
}

/// The plan for one connection attempt.
pub struct LinkPlan {
    /// CONNECT through this proxy to `target` first.
    pub proxy: Option<ProxyUrl>,
    pub target_host: String,
    pub target_port: u16,
    /// Start TLS (after the proxy, if any) with this session.
    #[cfg(feature = "tls")]
    pub tls: Option<TlsSession>,
}

enum Stream {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<TlsStream<TcpStream>>),
}

enum Stage {
    /// CONNECT sent from `req[sent..]`; the answer collects in `resp`.
    Proxy {
        req: Vec<u8>,
        sent: usize,
        resp: Vec<u8>,
    },
    #[cfg(feature = "tls")]
    Tls,
    Ready,
}

pub struct Link {
    stream: Stream,
    stage: Stage,
}

fn proxy_err(e: ProxyError) -> io::Error {
    io::Error::other(e)
}

impl Link {
    pub fn new(sock: TcpStream, plan: LinkPlan) -> Link {
        #[cfg(feature = "tls")]
        let (stream, tls_stage) = match plan.tls {
            Some(session) => (Stream::Tls(Box::new(TlsStream::new(sock, session))), true),
            None => (Stream::Tcp(sock), false),
        };
        #[cfg(not(feature = "tls"))]
        let (stream, tls_stage) = (Stream::Tcp(sock), false);
        let stage = match &plan.proxy {
            Some(p) => Stage::Proxy {
                req: proxy::connect_request(p, &plan.target_host, plan.target_port),
                sent: 0,
                resp: Vec::new(),
            },
            None => Self::after_proxy(tls_stage),
        };
        Link { stream, stage }
    }

    fn after_proxy(tls_stage: bool) -> Stage {
        #[cfg(feature = "tls")]
        if tls_stage {
            return Stage::Tls;
        }
        let _ = tls_stage;
        Stage::Ready
    }

    /// The socket, for registration with the poll.
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match &mut self.stream {
            Stream::Tcp(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.get_mut(),
        }
    }

    pub fn tcp(&self) -> &TcpStream {
        match &self.stream {
            Stream::Tcp(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.get_ref(),
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.stage, Stage::Ready)
    }

    pub fn uses_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        if matches!(self.stream, Stream::Tls(_)) {
            return true;
        }
        false
    }

    /// Runs the stages on a readiness edge (TCP must be connected).
    /// `Ok(true)` once the link is ready for the WebSocket upgrade.
    pub fn advance(&mut self, hup: bool) -> io::Result<bool> {
        // Each stage finishes or waits for the next edge; two passes cover
        // proxy → TLS on the same edge.
        for _ in 0..3 {
            match &mut self.stage {
                Stage::Ready => return Ok(true),
                Stage::Proxy { req, sent, resp } => {
                    // One arm without the `tls` feature: the match stays for both builds.
                    #[allow(clippy::infallible_destructuring_match)]
                    let sock = match &mut self.stream {
                        Stream::Tcp(s) => s,
                        #[cfg(feature = "tls")]
                        Stream::Tls(t) => t.get_mut(),
                    };
                    while *sent < req.len() {
                        match sock.write(&req[*sent..]) {
                            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                            Ok(n) => *sent += n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                            Err(e) => return Err(e),
                        }
                    }
                    // Read the answer a piece at a time; stop at its end so
                    // that nothing of the tunnel is taken here unseen.
                    let mut chunk = [0u8; 1024];
                    let done = loop {
                        if let Some(n) = proxy::parse_connect_response(resp).map_err(proxy_err)? {
                            break n;
                        }
                        match sock.read(&mut chunk) {
                            Ok(0) => {
                                return Err(io::Error::new(
                                    io::ErrorKind::ConnectionAborted,
                                    "the proxy closed the connection before answering CONNECT",
                                ))
                            }
                            Ok(n) => resp.extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                let _ = hup;
                                return Ok(false);
                            }
                            Err(e) => return Err(e),
                        }
                    };
                    let extra = resp.split_off(done);
                    let tls_stage = self.uses_tls();
                    match &mut self.stream {
                        Stream::Tcp(_) if !extra.is_empty() => {
                            return Err(proxy_err(ProxyError::BadResponse(
                                "data after the CONNECT answer, before we spoke".into(),
                            )))
                        }
                        #[cfg(feature = "tls")]
                        Stream::Tls(t) => t.push_received(&extra),
                        _ => {}
                    }
                    self.stage = Self::after_proxy(tls_stage);
                }
                #[cfg(feature = "tls")]
                Stage::Tls => {
                    let Stream::Tls(t) = &mut self.stream else {
                        return Err(io::Error::other("TLS stage without a TLS stream"));
                    };
                    if !t.handshake(hup)? {
                        return Ok(false);
                    }
                    self.stage = Stage::Ready;
                }
            }
        }
        Ok(self.is_ready())
    }

    /// Reads from the relay (plaintext under TLS).
    pub fn read(&mut self, buf: &mut [u8], hup: bool) -> io::Result<Got> {
        match &mut self.stream {
            Stream::Tcp(s) => {
                if buf.is_empty() {
                    return Ok(Got::Bytes {
                        n: 0,
                        drained: false,
                    });
                }
                loop {
                    return match s.read(buf) {
                        Ok(0) => Ok(Got::Eof),
                        Ok(n) => Ok(Got::Bytes {
                            n,
                            drained: n < buf.len() && !hup,
                        }),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Got::Bytes {
                            n: 0,
                            drained: true,
                        }),
                        Err(e) => Err(e),
                    };
                }
            }
            #[cfg(feature = "tls")]
            Stream::Tls(t) => Ok(match t.read_plain(buf, hup)? {
                Plain::Bytes { n, drained } => Got::Bytes { n, drained },
                Plain::Eof => Got::Eof,
            }),
        }
    }

    /// Writes to the relay; `(n, full)` as the transport seam's `Wrote`.
    pub fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<(usize, bool)> {
        match &mut self.stream {
            Stream::Tcp(s) => {
                let offered: usize = bufs.iter().map(|b| b.len()).sum();
                if offered == 0 {
                    return Ok((0, false));
                }
                loop {
                    return match s.write_vectored(bufs) {
                        Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => Ok((n, n < offered)),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((0, true)),
                        Err(e) => Err(e),
                    };
                }
            }
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.write_plain(bufs),
        }
    }

    /// Ciphertext is queued that the socket did not take yet.
    pub fn wants_flush(&self) -> bool {
        match &self.stream {
            Stream::Tcp(_) => false,
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.wants_flush(),
        }
    }

    /// Sends what is queued below the caller; `Ok(true)` when nothing is.
    pub fn flush_pending(&mut self) -> io::Result<bool> {
        match &mut self.stream {
            Stream::Tcp(_) => Ok(true),
            #[cfg(feature = "tls")]
            Stream::Tls(t) => t.flush_tls(),
        }
    }

    /// Shuts down our sending side (close_notify first under TLS).
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        #[cfg(feature = "tls")]
        if let Stream::Tls(t) = &mut self.stream {
            if self.stage == Stage::Ready {
                let _ = t.close_notify();
            }
        }
        self.tcp().shutdown(Shutdown::Write)
    }
}

impl PartialEq for Stage {
    fn eq(&self, other: &Stage) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// How to reach the relay, decided once per run from the options and the
/// environment: which address to connect to (the proxy's, when one is
/// used), and what each connection's [`LinkPlan`] is.
pub struct Route {
    /// Host and port to resolve and connect to.
    pub connect_host: String,
    pub connect_port: u16,
    relay_host: String,
    relay_port: u16,
    proxy: Option<ProxyUrl>,
    #[cfg(feature = "tls")]
    tls: Option<(
        std::sync::Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Route {
    /// `env` reads environment variables (`proxy::process_env` in the
    /// binaries). Errors are for the user (bad proxy URL, unreadable CA).
    pub fn new(
        relay: &super::RelayAddr,
        net: &super::NetOptions,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Route, String> {
        let chosen = proxy::select(net.proxy.as_deref(), &relay.host, relay.tls, env)
            .map_err(|e| e.to_string())?;
        let proxy = match chosen {
            Some((url, source)) => {
                // Display hides the password.
                log::info!(
                    "reaching {} through proxy {url} (from {source})",
                    relay.url()
                );
                Some(url)
            }
            None => None,
        };
        #[cfg(feature = "tls")]
        let tls = if relay.tls {
            let o = net.tls_options()?;
            let cfg = o.build().map_err(|e| e.to_string())?;
            let name = o.server_name_for(&relay.host).map_err(|e| e.to_string())?;
            Some((cfg, name))
        } else {
            if net.any_tls() {
                log::warn!("TLS options are ignored: the relay is ws://, not wss://");
            }
            None
        };
        #[cfg(not(feature = "tls"))]
        if relay.tls {
            return Err("this build has no TLS (feature tls): wss:// relays need it".into());
        }
        let (connect_host, connect_port) = match &proxy {
            Some(p) => (p.host.clone(), p.port),
            None => (relay.host.clone(), relay.port),
        };
        Ok(Route {
            connect_host,
            connect_port,
            relay_host: relay.host.clone(),
            relay_port: relay.port,
            proxy,
            #[cfg(feature = "tls")]
            tls,
        })
    }

    pub fn via_proxy(&self) -> bool {
        self.proxy.is_some()
    }

    /// What `connect_host` is, for messages.
    pub fn what(&self) -> &'static str {
        if self.via_proxy() {
            "proxy"
        } else {
            "relay"
        }
    }

    /// A fresh plan for one connection attempt.
    pub fn plan(&self) -> io::Result<LinkPlan> {
        Ok(LinkPlan {
            proxy: self.proxy.clone(),
            target_host: self.relay_host.clone(),
            target_port: self.relay_port,
            #[cfg(feature = "tls")]
            tls: match &self.tls {
                Some((cfg, name)) => {
                    Some(TlsSession::client(cfg.clone(), name.clone()).map_err(io::Error::other)?)
                }
                None => None,
            },
        })
    }
}

/// The transport seam (`crate::transport`): the WebSocket reads and writes
/// through the link as through a TCP socket.
impl crate::transport::Transport for Link {
    fn socket_read(&mut self, buf: &mut [u8], hup: bool) -> io::Result<crate::transport::Received> {
        Ok(match self.read(buf, hup)? {
            Got::Bytes { n, drained } => crate::transport::Received::Bytes { n, drained },
            Got::Eof => crate::transport::Received::Eof,
        })
    }

    fn socket_read_append(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
        tail: &mut [u8],
        hup: bool,
    ) -> io::Result<crate::transport::Received> {
        match &mut self.stream {
            Stream::Tcp(s) => s.socket_read_append(buf, max, tail, hup),
            // TLS: rustls hands out plaintext from its own buffer.
            #[cfg(feature = "tls")]
            Stream::Tls(_) => crate::transport::read_append_zeroed(self, buf, max, hup),
        }
    }

    fn socket_write_vectored(
        &mut self,
        bufs: &[IoSlice<'_>],
    ) -> io::Result<crate::transport::Wrote> {
        let (n, full) = self.write_vectored(bufs)?;
        Ok(crate::transport::Wrote { n, full })
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        Link::shutdown_write(self)
    }

    fn unacked_bytes(&self) -> usize {
        use std::os::unix::io::AsRawFd;
        crate::sys::tcp_unacked_bytes(self.tcp().as_raw_fd()).unwrap_or(0)
    }
}
