//! Accepting: limits checked at accept (a graceful 503 past them), EMFILE
//! backoff, and registering a new pending connection.

use super::*;

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
                log::warn!("refusing {addr}: {reason}");
                let answer = handshake::error_response(503, reason);
                if self.refusing >= MAX_REFUSING {
                    // Best effort: a fresh socket's send buffer is empty.
                    let _ = sock.write(&answer);
                    continue;
                }
                // Closing over unread request bytes would send RST, which
                // may destroy the answer: shut down writing, drain, close.
                if let Some(key) = self.insert_conn(sock, addr, index) {
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

    /// Register an accepted socket as a pending connection.
    pub(super) fn insert_conn(
        &mut self,
        mut sock: TcpStream,
        addr: SocketAddr,
        index: usize,
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
            fwd_mid_frame: false,
            refused: false,
        });
        self.pending_count += 1;
        Some(key)
    }
}
