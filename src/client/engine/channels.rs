//! The unix channels: the origin connects one per opened channel to the
//! real socket, the dest accepts them on its private socket; bytes move
//! between each socket and the mux as far as readiness, windows and the
//! high-water mark allow.

use super::*;

impl Engine {
    /// Origin: connect the channel to the real socket.
    pub(super) fn connect_channel(&mut self, ch: ChannelId) {
        let generation = self.mux_generation;
        let Some(m) = &mut self.mux else { return };
        let limits = &self.opts.limits;
        if let Some(why) = limits.refuse_channel(self.channels_accepted, self.conns.len()) {
            log::warn!("channel {ch}: refused: {why}");
            m.reject_open(ch, &format!("origin refused channel: {why}"));
            return;
        }
        let path = &self.opts.socket;
        let res = UnixStream::connect(path).and_then(|mut s| {
            self.poll.registry().register(
                &mut s,
                channel_token(generation, ch),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        match res {
            Ok(sock) => {
                log::debug!("channel {ch}: connected to {}", path.display());
                self.channels_accepted += 1;
                m.accept_open(ch);
                if let Some(g) = &mut self.agent {
                    g.opened(generation, ch);
                }
                self.conns.insert(ch, Conn::new(sock));
                self.dirty.push(ch);
            }
            Err(e) => {
                let reason = format!("connect {}: {e}", path.display());
                log::warn!("channel {ch}: {reason}");
                m.reject_open(ch, &reason);
            }
        }
    }

    /// Dest: a new local connection.
    pub(super) fn accept(&mut self) {
        loop {
            let Some((_, l)) = &mut self.listener else {
                return;
            };
            match l.accept() {
                Ok((sock, _)) => {
                    let ready = self.mux.as_ref().is_some_and(mux::Mux::is_live);
                    if ready {
                        self.open_channel(sock);
                    } else if self.waiting.len() < MAX_PENDING_CONNS {
                        log::debug!("connection waits for the session");
                        let now = Instant::now();
                        self.waiting.push_back((sock, now));
                        self.timers
                            .schedule(now + PENDING_CONN_TIMEOUT, Timer::PendingExpiry);
                    } else {
                        log::warn!("too many connections waiting for the session; closing one");
                    }
                }
                Err(e) if sys::is_transient(&e) && e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("accept: {e}");
                    return;
                }
            }
        }
    }

    pub(super) fn open_channel(&mut self, mut sock: UnixStream) {
        let generation = self.mux_generation;
        let Some(m) = &mut self.mux else { return };
        let ch = match m.open() {
            Ok(ch) => ch,
            Err(mux::Error::Suspended) => {
                // The link dropped again: wait for the session once more
                // (with the usual deadline).
                let now = Instant::now();
                self.waiting.push_back((sock, now));
                self.timers
                    .schedule(now + PENDING_CONN_TIMEOUT, Timer::PendingExpiry);
                return;
            }
            Err(e) => {
                log::warn!("cannot open channel: {e}");
                return;
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            channel_token(generation, ch),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            m.close(ch, &format!("register: {e}"));
            return;
        }
        log::debug!("channel {ch}: opened");
        self.conns.insert(ch, Conn::new(sock));
        self.dirty.push(ch);
    }

    pub(super) fn service_dirty(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &ch in &dirty {
            self.service(ch);
        }
        dirty.clear();
        // Keep the allocation.
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Move bytes between one unix socket and the mux, as far as readiness,
    /// windows and the high-water mark allow.
    pub(super) fn service(&mut self, ch: ChannelId) {
        let Some(m) = &mut self.mux else { return };
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        if !m.contains(ch) {
            // Finished or closed inside the mux (v2: the last EOF_ACK).
            log::debug!("channel {ch}: finished");
            self.conns.remove(&ch);
            if let Some(g) = &mut self.agent {
                g.closed(ch);
            }
            return;
        }
        if let Some(g) = self.agent.as_mut().filter(|g| g.is_guarded(ch)) {
            g.service(ch, m, conn, &mut self.scratch);
            if !m.contains(ch) {
                log::debug!("channel {ch}: finished");
                self.conns.remove(&ch);
                g.closed(ch);
            }
            self.agent_sync();
            return;
        }
        // Peer → socket.
        while conn.writable {
            let p = m.pending(ch);
            if p.is_empty() {
                break;
            }
            match conn.sock.socket_write(p) {
                Ok(w) => {
                    m.consume(ch, w.n);
                    // Full: wait for the EPOLLOUT edge (transport module).
                    if w.full {
                        conn.writable = false;
                    }
                }
                Err(e) => {
                    log::debug!("channel {ch}: write: {e}");
                    m.close(ch, &format!("write: {e}"));
                    self.conns.remove(&ch);
                    return;
                }
            }
        }
        if m.wants_shutdown(ch) {
            let _ = conn.sock.shutdown_write();
            m.eof_delivered(ch);
        }
        // Socket → peer, one batch worth per turn for fairness.
        let queued = self.link.as_ref().map_or(0, |l| l.ws.out_len()) + m.queued_bytes();
        if conn.readable && !conn.read_eof {
            if queued >= HIGH_WATER_BYTES {
                self.hwm_hit = true;
            } else {
                // One full batch per turn (not READ_CHUNK_BYTES, which
                // would spill a sliver into a second message).
                let mut budget = mux::MAX_DATA_PER_BATCH;
                loop {
                    let n = m.send_window(ch).min(budget);
                    if n == 0 {
                        break;
                    }
                    // Read straight into the batch being built: no copy.
                    let (hup, sock) = (conn.hup, &conn.sock);
                    let read = m.send_data_with(ch, n, |batch, room| {
                        crate::transport::read_append(sock, batch, room, hup)
                    });
                    let Some((k, read)) = read else { break };
                    match read {
                        Ok(Received::Eof) => {
                            conn.read_eof = true;
                            m.send_eof(ch);
                            break;
                        }
                        Ok(Received::Bytes { drained, .. }) => {
                            budget -= k.min(budget);
                            // Drained (transport module): wait for the
                            // next edge; EAGAIN also clears the FIN hint.
                            if drained {
                                conn.readable = false;
                                if k == 0 {
                                    conn.hup = false;
                                }
                                break;
                            }
                        }
                        Err(e) => {
                            log::debug!("channel {ch}: read: {e}");
                            m.close(ch, &format!("read: {e}"));
                            self.conns.remove(&ch);
                            return;
                        }
                    }
                }
                if budget == 0 && conn.readable && !conn.read_eof {
                    self.again.push(ch);
                }
            }
        }
        if !m.contains(ch) {
            log::debug!("channel {ch}: finished");
            self.conns.remove(&ch);
        }
    }
}
