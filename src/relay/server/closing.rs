//! Endings: a member's departure handed to the session core, the core's
//! actions carried out, close frames, FIN and linger, and removal.

use super::*;

impl Server {
    /// Once an ending connection's forwarded output has drained, detach it
    /// from its session and say goodbye. Returns true if it ended.
    pub(super) fn try_finish_ending(&mut self, key: usize) -> bool {
        let conn = &self.conns[key];
        let Some(ending) = conn.ending.clone() else {
            return false;
        };
        let pending = conn
            .inb
            .as_ref()
            .and_then(|i| i.buf.as_ref())
            .is_some_and(|b| !b.segs.is_empty());
        let peer_alive = self
            .peer(key)
            .and_then(|peer| self.conns.get(peer))
            .is_some_and(|peer| peer.ending.is_none());
        if pending && peer_alive {
            return false;
        }
        let State::Open { member, session } = conn.state else {
            return false;
        };
        let addr = conn.addr;
        let id = self
            .sessions
            .view(session)
            .map(|v| v.id)
            .unwrap_or_default();
        let who = member.name();
        let how = match &ending {
            Ending::Closed(code, reason) => {
                log::info!("session {id}: {who} {addr} closed ({code} {reason})");
                Departure::Closed(*code, reason)
            }
            Ending::Failed(code, reason) => {
                log::info!("session {id}: {who} {addr} closed by the relay ({code} {reason})");
                Departure::Failed(*code, reason)
            }
            Ending::Vanished(why) => {
                log::info!("session {id}: {who} {addr} {why}");
                Departure::Vanished(why)
            }
        };
        self.leave_session(key, member, session, how);
        true
    }

    /// Tell the session core that `key` left, and carry out what follows.
    /// The core's `Close` for `key` itself applies only while it is still
    /// open (not when it is being dropped).
    pub(super) fn leave_session(
        &mut self,
        key: usize,
        member: Member,
        session: SessionKey,
        how: Departure,
    ) {
        let peer_mid_frame = self
            .sessions
            .peer(session, member)
            .and_then(|peer| self.conns.get(peer))
            .is_some_and(|peer| peer.fwd_mid_frame);
        // A message it had begun forwarding (fragments sent, final one
        // never) leaves its peer inside a message: the next peer's first
        // frame would break RFC 6455 §5.4 there.
        let mid_message = self.conns[key]
            .inb
            .as_ref()
            .is_some_and(|i| i.fwd.message && i.decoder.in_message());
        let leaving = Leaving {
            how,
            peer_mid_frame,
            mid_message,
        };
        let mut actions = Vec::new();
        if self
            .sessions
            .leave(session, key, member, &leaving, self.now, &mut actions)
        {
            self.apply(actions);
        } else if matches!(self.conns[key].state, State::Open { .. }) {
            // Not a member (cannot happen while the loop keeps its states
            // in step with the core): just close it.
            self.conns[key].state = State::Closing { fin_sent: false };
            self.close_conn(key, close::INTERNAL_ERROR, "");
        }
    }

    /// Carry out the session core's actions. None of them calls back into
    /// the core: a connection it closes is first taken out of `Open`.
    pub(super) fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::PeerJoined { to, seq, peer } => {
                    let Some(addr) = self.conns.get(peer).map(|c| c.addr.to_string()) else {
                        continue;
                    };
                    let ping = Control::PeerJoined {
                        seq: Some(seq),
                        addr: &addr,
                    };
                    self.send_control(to, ping);
                }
                Action::PeerLeft {
                    to,
                    seq,
                    code,
                    reason,
                } => {
                    let ping = Control::PeerLeft {
                        seq: Some(seq),
                        code,
                        reason: &reason,
                    };
                    self.send_control(to, ping);
                }
                Action::Discard { conn } => {
                    let Some(c) = self.conns.get_mut(conn) else {
                        continue;
                    };
                    if let Some(inb) = c.inb.as_mut() {
                        if let Some(buf) = inb.buf.as_mut() {
                            buf.segs.clear();
                            inb.seg_off = 0;
                        }
                    }
                    // It may have stopped reading for them: wake it.
                    self.wake.push((conn, c.generation));
                }
                Action::Close { conn, code, reason } => {
                    let Some(c) = self.conns.get_mut(conn) else {
                        continue;
                    };
                    if !matches!(c.state, State::Open { .. }) {
                        continue;
                    }
                    if let Some(inb) = c.inb.as_mut() {
                        if let Some(buf) = inb.buf.as_mut() {
                            buf.segs.clear();
                            inb.seg_off = 0;
                        }
                    }
                    c.state = State::Closing { fin_sent: false };
                    match c.ending {
                        Some(Ending::Vanished(_)) => self.drop_conn(conn, "vanished"),
                        _ => self.close_conn(conn, code, &reason),
                    }
                }
            }
        }
    }

    /// Queue a control ping to an open connection and try to write it.
    pub(super) fn send_control(&mut self, to: usize, ping: Control<'_>) {
        if !self
            .conns
            .get(to)
            .is_some_and(|c| matches!(c.state, State::Open { .. }))
        {
            return;
        }
        self.queue_ping(to, &ping.to_vec());
        let _ = self.write_to(to);
    }

    /// A protocol violation by `key`: close it with `code`, and let its
    /// session react as to any departure.
    pub(super) fn fail(&mut self, key: usize, code: u16, reason: &str) {
        // Frames decoded before the violation still reach the peer; then
        // `try_finish_ending` closes it with `code`.
        let conn = &mut self.conns[key];
        conn.readable = false;
        conn.ending = Some(Ending::Failed(code, reason.to_string()));
    }

    /// Send a close frame (once the stream toward `key` is between frames),
    /// then FIN, then wait briefly for the peer's FIN.
    pub(super) fn close_conn(&mut self, key: usize, code: u16, reason: &str) {
        let conn = &mut self.conns[key];
        if conn.fwd_mid_frame && conn.ctrl_pos == 0 {
            self.drop_conn(key, "closed inside a frame");
            return;
        }
        let mut out = Vec::with_capacity(4 + reason.len());
        frame::encode_close(&mut out, None, code, reason);
        self.close_with_bytes(key, &out, CLOSE_LINGER);
    }

    /// Queue `bytes` (a close frame or an HTTP answer), then close.
    pub(super) fn close_with_bytes(&mut self, key: usize, bytes: &[u8], linger: Duration) {
        let conn = &mut self.conns[key];
        if matches!(conn.state, State::Pending { .. }) {
            self.pending_count -= 1;
        }
        let until = self.now + linger;
        conn.state = State::Closing { fin_sent: false };
        // Nothing follows a close frame (or an HTTP answer).
        conn.policy.on_close_sent();
        conn.pong = None;
        conn.ctrl.extend_from_slice(bytes);
        conn.next_check = until;
        self.timers.schedule(until, (until, key, conn.generation));
        if let Some(mut inb) = conn.inb.take() {
            if let Some(buf) = inb.buf.take() {
                self.pool.put(buf);
            }
        }
        if let Err(e) = self.pump_closing(key) {
            log::debug!("closing {}: {e}", self.conns[key].addr);
            self.drop_conn(key, "write error while closing");
        }
    }

    pub(super) fn pump_closing(&mut self, key: usize) -> Step {
        self.write_to(key)?;
        let conn = &mut self.conns[key];
        let State::Closing { fin_sent, .. } = &mut conn.state else {
            return Ok(());
        };
        if conn.ctrl.is_empty() && !*fin_sent {
            *fin_sent = true;
            let _ = conn.sock.shutdown_write();
        }
        if *fin_sent {
            // Discard whatever the client still sends until its FIN.
            let mut sink = [0u8; READ_CHUNK];
            loop {
                match conn.sock.read(&mut sink) {
                    Ok(0) => {
                        self.drop_conn(key, "closed");
                        return Ok(());
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(_) => {
                        self.drop_conn(key, "closed");
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn queue_ctrl(&mut self, key: usize, bytes: &[u8]) {
        let conn = &mut self.conns[key];
        if conn.ctrl.len() + bytes.len() > CONTROL_LIMITS.max_queued_bytes {
            // It sends pings faster than it reads the pongs.
            log::info!("{} floods control frames; dropping it", conn.addr);
            conn.ending = Some(Ending::Vanished("flooded control frames".into()));
            return;
        }
        conn.ctrl.extend_from_slice(bytes);
    }

    pub(super) fn queue_ping(&mut self, key: usize, payload: &[u8]) {
        let mut out = Vec::with_capacity(2 + payload.len());
        frame::encode_frame(&mut out, true, OpCode::Ping, None, payload);
        self.queue_ctrl(key, &out);
    }

    /// Remove a connection without ceremony (at the end of the batch).
    pub(super) fn drop_conn(&mut self, key: usize, why: &str) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if let State::Open { member, session } = conn.state {
            conn.ending = Some(Ending::Vanished(why.to_string()));
            // Out of `Open` first: the session's `Close` for it is moot.
            conn.state = State::Closing { fin_sent: true };
            self.leave_session(key, member, session, Departure::Vanished(why));
        }
        let conn = &mut self.conns[key];
        if matches!(conn.state, State::Pending { .. }) {
            self.pending_count -= 1;
        }
        conn.state = State::Closing { fin_sent: true };
        if !self.dead.contains(&key) {
            self.dead.push(key);
        }
    }
}
