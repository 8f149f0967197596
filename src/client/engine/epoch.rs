//! An epoch's end-to-end and mux glue: a pairing change starts or ends an
//! epoch; the peer's messages go through Noise (unless plaintext) into the
//! mux, whose events reach the channels; the mux's batches go sealed onto
//! the relay link.

use super::*;

impl Engine {
    pub(super) fn start_epoch(&mut self) {
        self.end_epoch("new peer");
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
        let ready = pairing.has_mux();
        self.epoch = Some(pairing);
        if ready {
            self.on_mux_ready();
        }
    }

    /// Drop every channel of the current epoch (their unix connections
    /// close) and the epoch itself.
    pub(super) fn end_epoch(&mut self, why: &str) {
        if self.epoch.take().is_some() && !self.conns.is_empty() {
            log::info!("closing {} channel(s): {why}", self.conns.len());
        }
        self.conns.clear();
        self.dirty.clear();
        self.again.clear();
        if let Some(g) = &mut self.agent {
            g.end_epoch();
        }
    }

    /// The mux exists: the dest opens channels for waiting connections.
    pub(super) fn on_mux_ready(&mut self) {
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
        let got = match epoch.receive(msg, &mut self.plain) {
            Ok(got) => got,
            Err(e) => {
                // Either side: close, so that both pair again from a clean
                // state. (Waiting for a fresh handshake would hang when
                // the relay, not the dest, got out of step: the dest then
                // believes it is established and never sends one.)
                if let PairingError::Mux(_) = e {
                    log::error!("peer broke the mux protocol: {e}");
                }
                self.abort_link(e.close_code(), e.to_string());
                return;
            }
        };
        if let (Some(reply), Some(link)) = (&got.reply, &mut self.link) {
            link.ws.send(OpCode::Binary, reply);
        }
        if got.mux_ready && !self.opts.plaintext {
            match self.opts.side {
                Side::Dest => log::info!("end-to-end encryption established"),
                Side::Origin => log::debug!(
                    "end-to-end handshake answered; waiting for the dest's first message"
                ),
            }
        }
        if got.confirmed && self.opts.side == Side::Origin {
            log::info!("end-to-end encryption established");
        }
        if got.mux_ready {
            self.on_mux_ready();
        }
        self.drain_mux_events();
    }

    pub(super) fn drain_mux_events(&mut self) {
        loop {
            let Some(ev) = self
                .epoch
                .as_mut()
                .and_then(Pairing::mux)
                .and_then(|m| m.poll_event())
            else {
                return;
            };
            match ev {
                mux::Event::Ready { window } => log::debug!("peer ready, window {window}"),
                mux::Event::Open(ch) => self.connect_channel(ch),
                mux::Event::OpenOk(ch) => log::debug!("channel {ch} open"),
                mux::Event::Closed(ch, reason) => {
                    log::debug!("channel {ch} closed by peer: {reason}");
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
    }

    /// Turn queued mux batches into WebSocket messages and write.
    pub(super) fn flush(&mut self) {
        // Pongs first: the relay forwards what the origin sends after the
        // pong that acknowledges a pairing change, and drops what comes
        // before it.
        self.queue_link_control();
        if let (Some(epoch), Some(link)) = (&mut self.epoch, &mut self.link) {
            if let (Some(m), mut sealer) = epoch.mux_and_e2e() {
                if link.ws.is_open() {
                    while let Some(batch) = m.pop_batch() {
                        match sealer.as_deref_mut() {
                            None => link.ws.send(OpCode::Binary, &batch),
                            Some(e2e) => {
                                // Sealed straight into the WebSocket output
                                // buffer, then masked there: no copy between.
                                let len = batch.len() + SEAL_OVERHEAD;
                                let mut err = None;
                                let ok = link.ws.send_with(OpCode::Binary, len, |out| {
                                    match e2e.seal(&batch, out) {
                                        Ok(()) => true,
                                        Err(e) => {
                                            err = Some(e);
                                            false
                                        }
                                    }
                                });
                                if !ok {
                                    self.stop = Some(Err(match err {
                                        Some(err) => Error::E2e { stage: "seal", err },
                                        None => Error::Local(
                                            "end-to-end seal: sealed length differs".into(),
                                        ),
                                    }));
                                    return;
                                }
                            }
                        }
                        m.recycle(batch);
                    }
                }
            }
        }
        self.flush_ws();
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
