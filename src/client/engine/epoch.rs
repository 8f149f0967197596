//! An epoch's end-to-end and mux glue: a pairing change starts or ends an
//! epoch; the peer's messages go through Noise (unless plaintext) into the
//! mux, whose events reach the channels; the mux's batches go sealed onto
//! the relay link.

use super::*;

impl Engine {
    pub(super) fn start_epoch(&mut self) {
        self.end_epoch("new peer", Keep::Resume);
        self.epoch_generation += 1;
        let generation = self.epoch_generation;
        let now = Instant::now();
        let token = self.opts.token.expose();
        let started = Pairing::start(
            generation,
            self.side(),
            self.opts.plaintext,
            token,
            &self.session,
            now,
        );
        let (pairing, first) = match started {
            Ok(x) => x,
            Err(PairingError::Setup(err)) => {
                self.stop = Some(Err(Error::E2e {
                    stage: "setup",
                    err,
                }));
                return;
            }
            Err(PairingError::Handshake(err) | PairingError::Open(err)) => {
                self.stop = Some(Err(Error::E2e {
                    stage: "handshake",
                    err,
                }));
                return;
            }
            Err(PairingError::Mux(e)) => {
                self.stop = Some(Err(Error::Local(e.to_string())));
                return;
            }
        };
        if let (Some(msg), Some(link)) = (first, &mut self.link) {
            link.ws.send(OpCode::Binary, &msg);
        }
        if let Some(deadline) = pairing.handshake_deadline() {
            self.timers
                .schedule(deadline, Timer::E2eDeadline(generation));
        }
        let ready = pairing.is_established();
        self.epoch = Some(pairing);
        if ready {
            self.on_established();
        }
    }

    /// The pairing ends (peer left, link lost, new peer, exit). With
    /// [`Keep::Resume`] a mux that negotiated v2 is suspended: its channels
    /// and their unix connections stay for `--resume-window`. Otherwise
    /// (or when the mux cannot resume) every channel closes.
    pub(super) fn end_epoch(&mut self, why: &str, keep: Keep) {
        self.epoch = None;
        let Some(m) = &mut self.mux else { return };
        let was_suspended = m.is_suspended();
        if keep == Keep::Resume && m.suspend(Instant::now()) {
            // Its Closed events (channels over the resume limit) close
            // their connections.
            self.drain_mux_events();
            let Some(m) = &self.mux else { return };
            if !was_suspended {
                if !self.conns.is_empty() {
                    log::info!(
                        "{why}: holding {} channel(s) for up to {} s to resume them",
                        self.conns.len(),
                        self.opts.liveness.resume_window.as_secs_f64()
                    );
                }
                if let Some(at) = m.poll_timeout() {
                    self.timers
                        .schedule(at, Timer::ResumeDeadline(self.mux_generation));
                }
            }
            return;
        }
        self.drop_mux(why);
    }

    /// Forget the mux and close every channel's unix connection.
    pub(super) fn drop_mux(&mut self, why: &str) {
        if self.mux.take().is_some() && !self.conns.is_empty() {
            log::info!("closing {} channel(s): {why}", self.conns.len());
        }
        self.conns.clear();
        self.dirty.clear();
        self.again.clear();
        if let Some(g) = &mut self.agent {
            g.end_epoch();
        }
    }

    /// The end-to-end handshake is done (at once in plaintext): resume the
    /// mux that survived the last link, or make a new one.
    pub(super) fn on_established(&mut self) {
        let now = Instant::now();
        let hash = self.epoch.as_ref().and_then(Pairing::handshake_hash);
        match (&mut self.mux, hash) {
            (Some(m), Some(hash)) if m.is_suspended() => {
                log::debug!(
                    "resuming {} channel(s) over the new link",
                    m.channel_count()
                );
                m.resume(now, hash);
            }
            (_, hash) => {
                let end_to_end = hash.is_some();
                self.drop_mux("new session");
                self.mux_generation += 1;
                let cfg = mux::Config::client_with_window(self.opts.liveness.channel_window);
                let window = self.opts.liveness.resume_window;
                self.mux = Some(match self.resume_secret {
                    Some(secret) if end_to_end && !window.is_zero() => {
                        mux::Mux::with_resume(self.side(), cfg, secret, window)
                    }
                    _ => mux::Mux::new(self.side(), cfg),
                });
            }
        }
        self.on_mux_ready();
    }

    /// The mux is live (new, or resumed): the dest opens channels for the
    /// waiting connections, and starts `-- COMMAND` once.
    pub(super) fn on_mux_ready(&mut self) {
        if !self.mux.as_ref().is_some_and(mux::Mux::is_live) {
            return;
        }
        while let Some((sock, _)) = self.waiting.pop_front() {
            self.open_channel(sock);
        }
        if let Some(c) = &mut self.command {
            if !c.started() {
                match c.start(&self.opts.socket) {
                    Ok(()) => self
                        .timers
                        .schedule(Instant::now() + agent_glue::CHILD_POLL, Timer::Agent),
                    Err(e) => self.stop = Some(Err(Error::Local(e))),
                }
            }
        }
    }

    /// `--resume-window` passed while the link was down: the retained
    /// channels close; a resume exchange under way fails (re-pair fresh).
    pub(super) fn on_resume_deadline(&mut self, generation: u32, now: Instant) {
        if generation != self.mux_generation {
            return;
        }
        let Some(m) = &mut self.mux else { return };
        m.handle_timeout(now);
        let failed = m.error().map(|e| (e.close_code(), e.to_string()));
        let again = m.poll_timeout();
        self.drain_mux_events();
        if let Some((code, why)) = failed {
            self.drop_mux(&why);
            self.abort_link(code, format!("channel resume failed: {why}"));
        } else if let Some(at) = again {
            self.timers.schedule(at, Timer::ResumeDeadline(generation));
        }
    }

    pub(super) fn on_message(&mut self, msg: &mut [u8]) {
        if self.side() == Side::Dest && msg.starts_with(REFUSED_PREFIX) {
            // Only before the session is end to end (in plaintext a batch
            // never starts so); like a relay close, it is a hint.
            let established = self.epoch.as_ref().is_some_and(Pairing::is_end_to_end);
            if !established {
                let why = String::from_utf8_lossy(&msg[REFUSED_PREFIX.len()..]).into_owned();
                self.stop = Some(Err(Error::RefusedByOrigin(why)));
                return;
            }
        }
        let Some(epoch) = &mut self.epoch else {
            if self.dest_refused {
                log::debug!("dropping {} bytes from the refused dest", msg.len());
                return;
            }
            // The relay forwards nothing from a peer before it has told us
            // of the pairing (and nothing after `peer-left`), so this means
            // the relay and we disagree about the pairing (e.g. a forged
            // control ping). Waiting would hang the session; start over.
            self.abort_link(
                close::E2E_FAILED,
                "a message arrived while no peer is paired (relay out of step); re-pairing".into(),
            );
            return;
        };
        // Either side, on failure: close, so that both pair again from a
        // clean state. (Waiting for a fresh handshake would hang when the
        // relay, not the dest, got out of step: the dest then believes it
        // is established and never sends one.)
        let failed = match epoch.receive(msg, &mut self.plain) {
            Err(e) => Some((e.close_code(), e.to_string())),
            Ok(pairing::Received::Handshake { reply, established }) => {
                if let (Some(reply), Some(link)) = (&reply, &mut self.link) {
                    link.ws.send(OpCode::Binary, reply);
                }
                if established {
                    match self.opts.side {
                        Side::Dest => log::info!("end-to-end encryption established"),
                        Side::Origin => log::debug!(
                            "end-to-end handshake answered; waiting for the dest's first message"
                        ),
                    }
                    self.on_established();
                }
                None
            }
            Ok(pairing::Received::Payload { data, confirmed }) => {
                if confirmed && self.opts.side == Side::Origin {
                    log::info!("end-to-end encryption established");
                }
                // A channel's bytes go straight from the message to its
                // socket while nothing is queued for it and it takes them.
                let conns = &mut self.conns;
                let agent = &self.agent;
                let mut deliver = |ch: ChannelId, bytes: &[u8]| -> usize {
                    if agent.as_ref().is_some_and(|g| g.is_guarded(ch)) {
                        return 0;
                    }
                    match conns.get_mut(&ch) {
                        Some(conn) if conn.writable => match conn.sock.socket_write(bytes) {
                            Ok(w) => {
                                // Full: wait for the EPOLLOUT edge.
                                if w.full {
                                    conn.writable = false;
                                }
                                w.n
                            }
                            // The channel's service hits it again and closes.
                            Err(_) => 0,
                        },
                        _ => 0,
                    }
                };
                match self
                    .mux
                    .as_mut()
                    .map(|m| m.recv_message_with(data, &mut deliver))
                {
                    Some(Err(e)) => {
                        log::error!("peer broke the mux protocol: {e}");
                        Some((e.close_code(), e.to_string()))
                    }
                    _ => None,
                }
            }
        };
        if let Some((code, why)) = failed {
            self.abort_link(code, why);
            return;
        }
        self.drain_mux_events();
    }

    pub(super) fn drain_mux_events(&mut self) {
        while let Some(ev) = self.mux.as_mut().and_then(|m| m.poll_event()) {
            match ev {
                mux::Event::Ready { window } => log::debug!("peer ready, window {window}"),
                mux::Event::Open(ch) => self.connect_channel(ch),
                mux::Event::OpenOk(ch) => log::debug!("channel {ch} open"),
                mux::Event::Closed(ch, reason) => {
                    log::debug!("channel {ch} closed: {reason}");
                    if let Some(g) = &mut self.agent {
                        g.closed(ch);
                    }
                    if self.conns.remove(&ch).is_some() && self.side() == Side::Dest {
                        log::warn!("connection closed: {reason}");
                    }
                }
                mux::Event::Service(ch) => self.dirty.push(ch),
            }
        }
        // A resume exchange ended: the channels that carried over were
        // restarted by Service events; waiting connections may open now.
        if let Some(carried) = self.mux.as_mut().and_then(mux::Mux::take_session_outcome) {
            if carried {
                log::info!("resumed {} channel(s) on the new link", self.conns.len());
            }
            self.on_mux_ready();
        }
    }

    /// Turn queued mux batches into WebSocket messages and write.
    pub(super) fn flush(&mut self) {
        // Pongs first: the relay forwards what the origin sends after the
        // pong that acknowledges a pairing change, and drops what comes
        // before it.
        self.queue_link_control();
        if let (Some(epoch), Some(m), Some(link)) = (&mut self.epoch, &mut self.mux, &mut self.link)
        {
            if epoch.is_established() {
                let mut sealer = epoch.sealer();
                if link.ws.is_open() {
                    while let Some(mut batch) = m.pop_batch() {
                        // Masked (and sealed) where the batch lies, and
                        // written from there: no copy into the WebSocket
                        // output (transport::outq).
                        if let Some(e2e) = sealer.as_deref_mut() {
                            if let Err(err) = e2e.seal_in_place(&mut batch) {
                                self.stop = Some(Err(Error::E2e { stage: "seal", err }));
                                return;
                            }
                        }
                        link.ws.send_owned(OpCode::Binary, batch);
                    }
                }
            }
        }
        self.flush_ws();
        // Batches the socket has taken go back to the mux for reuse.
        if let (Some(m), Some(link)) = (&mut self.mux, &mut self.link) {
            while let Some(b) = link.ws.take_sent_buffer() {
                m.recycle(b);
            }
        }
        // Below the low-water mark again: resume channels held back.
        if self.hwm_hit {
            let out = self.link.as_ref().map_or(0, |l| l.ws.out_len());
            if out < HIGH_WATER_BYTES / 2 {
                self.hwm_hit = false;
                for (&ch, c) in &self.conns {
                    if c.readable && !c.read_eof {
                        self.again.push(ch);
                    }
                }
            }
        }
    }
}
