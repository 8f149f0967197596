//! Accepting: limits checked at accept (a graceful 503 past them), EMFILE
//! backoff, and registering a new pending connection.

use super::*;

/// A TLS record, plaintext (no keys exist yet): alert, legacy version
/// TLS 1.2, length 2, fatal, internal_error. Valid before any handshake
/// message in TLS 1.2 and 1.3; a client reports "alert InternalError".
const REFUSE_TLS_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x50];

impl Server {
    pub(super) fn accept(&mut self, index: usize) {
        if self.accept_paused_until.is_some() || self.shutting_down.is_some() {
            return;
        }
        loop {
            let (mut sock, addr) = match self.listeners[index].sock.accept() {
                Ok(pair) => pair,
                Err(e) if sys::is_transient(&e) => {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: the pending connection stays in
                    // the backlog; retrying at once would spin. Pause.
                    self.metrics.accept_errors += 1;
                    let warn = self
                        .last_accept_warning
                        .is_none_or(|t| self.now.duration_since(t) >= Duration::from_secs(1));
                    if warn {
                        log::warn!("accept failed: {e}; pausing accepts for {ACCEPT_BACKOFF:?}");
                        self.last_accept_warning = Some(self.now);
                    }
                    self.accept_paused_until = Some(self.now + ACCEPT_BACKOFF);
                    return;
                }
            };
            self.metrics.accepted += 1;
            let over = if self.conns.len() >= self.cfg.max_connections {
                Some((Reject::ConnectionLimit, "connection limit reached"))
            } else if self.pending_count >= self.cfg.max_pending {
                Some((Reject::PendingLimit, "too many pending handshakes"))
            } else {
                None
            };
            if let Some((metric, reason)) = over {
                self.metrics.reject(metric);
                // Under TLS the 503 would need a full handshake first: a
                // key exchange and a signature per refused connection, CPU
                // that a flood at the limit would get for free. Instead a
                // TLS listener answers with a plaintext fatal alert
                // (internal_error), which clients report as a busy relay
                // and retry with backoff (README "Deploying").
                let tls = self.tls_enabled();
                let answer = if tls {
                    log::warn!("refusing {addr}: {reason} (TLS alert, no handshake)");
                    REFUSE_TLS_ALERT.to_vec()
                } else {
                    log::warn!("refusing {addr}: {reason}");
                    handshake::error_response(503, reason)
                };
                if self.refusing >= MAX_REFUSING {
                    // Best effort: a fresh socket's send buffer is empty.
                    let _ = sock.write(&answer);
                    continue;
                }
                // Closing over unread request bytes would send RST, which
                // may destroy the answer: shut down writing, drain, close.
                if let Some(key) = self.insert_conn_as(sock, addr, index, true) {
                    self.refusing += 1;
                    self.conns[key].refused = true;
                    self.close_with_bytes(key, &answer, REFUSE_LINGER);
                }
                continue;
            }
            let Some(key) = self.insert_conn(sock, addr, index) else {
                continue;
            };
            let deadline = self.conns[key].next_check;
            self.timers
                .schedule(deadline, (deadline, key, self.conns[key].generation));
            log::debug!("connection from {addr}");
        }
    }

    /// Whether accepted connections speak TLS (`--tls-cert`).
    fn tls_enabled(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Register an accepted socket as a pending connection.
    pub(super) fn insert_conn(
        &mut self,
        sock: TcpStream,
        addr: SocketAddr,
        index: usize,
    ) -> Option<usize> {
        self.insert_conn_as(sock, addr, index, false)
    }

    /// `insert_conn`; with `raw`, never wrapped in TLS (a refused
    /// connection that only gets a plaintext alert).
    fn insert_conn_as(
        &mut self,
        mut sock: TcpStream,
        addr: SocketAddr,
        index: usize,
        raw: bool,
    ) -> Option<usize> {
        let _ = sock.set_nodelay(true);
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let deadline = self.now + self.cfg.handshake_timeout;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let token = ConnToken { key, generation }.to_token();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("cannot register connection from {addr}: {e}");
            return None;
        }
        #[cfg(feature = "tls")]
        let sock = match self.tls.as_ref().filter(|_| !raw) {
            Some(tls) => match crate::tls::TlsSession::server(tls.config()) {
                Ok(session) => RelaySock::Tls(Box::new(crate::tls::TlsStream::new(sock, session))),
                Err(e) => {
                    log::warn!("TLS for {addr}: {e}");
                    let _ = self.poll.registry().deregister(&mut sock);
                    return None;
                }
            },
            None => RelaySock::Plain(sock),
        };
        #[cfg(not(feature = "tls"))]
        let sock = {
            let _ = raw;
            RelaySock::Plain(sock)
        };
        entry.insert(Conn {
            sock,
            generation,
            addr,
            listener_role: self.listeners[index].role,
            state: State::Pending { req: Vec::new() },
            readable: false,
            writable: false,
            peer_fin: false,
            live: Liveness::new(self.now),
            next_check: deadline,
            inb: None,
            ending: None,
            ctrl: Vec::new(),
            ctrl_pos: 0,
            policy: endpoint::Policy::default(),
            pong: None,
            fwd_mid_frame: false,
            refused: false,
        });
        self.pending_count += 1;
        Some(key)
    }
}
