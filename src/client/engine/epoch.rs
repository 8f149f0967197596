//! An epoch's end-to-end and mux glue: a pairing change starts or ends an
//! epoch; the peer's messages go through Noise (unless plaintext) into the
//! mux, whose events reach the channels; the mux's batches go sealed onto
//! the relay link.

use super::*;

impl Engine {
    pub(super) fn start_epoch(&mut self) {
        self.end_epoch("new peer");
        self.epoch_gen += 1;
        let gen = self.epoch_gen;
        let mut epoch = Epoch {
            gen,
            e2e: None,
            mux: None,
            confirmed: false,
        };
        if self.opts.plaintext {
            epoch.mux = Some(Mux::new(self.side(), mux::Config::client()));
            self.epoch = Some(epoch);
            self.on_mux_ready();
            return;
        }
        let mut e2e = match E2e::new(self.side(), self.opts.token.expose(), &self.session) {
            Ok(n) => n,
            Err(e) => {
                self.stop = Some(Err(Error::E2e {
                    stage: "setup",
                    err: e,
                }));
                return;
            }
        };
        if e2e.wants_to_send() {
            let mut msg = Vec::new();
            if let Err(e) = e2e.handshake_out(&mut msg) {
                self.stop = Some(Err(Error::E2e {
                    stage: "handshake",
                    err: e,
                }));
                return;
            }
            if let Some(link) = &mut self.link {
                link.ws.send(OpCode::Binary, &msg);
            }
        }
        if self.side() == Side::Dest {
            self.timers
                .schedule(Instant::now() + E2E_TIMEOUT, Timer::E2eDeadline(gen));
        }
        epoch.e2e = Some(e2e);
        self.epoch = Some(epoch);
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
    }

    /// The mux exists: the dest opens channels for waiting connections.
    pub(super) fn on_mux_ready(&mut self) {
        while let Some((sock, _)) = self.waiting.pop_front() {
            self.open_channel(sock);
        }
    }

    pub(super) fn on_message(&mut self, msg: &[u8]) {
        if self.side() == Side::Dest && msg.starts_with(REFUSED_PREFIX) {
            // Only before the session is end to end (in plaintext a batch
            // never starts so); like a relay close, it is a hint.
            let established = self.epoch.as_ref().is_some_and(|e| {
                e.mux.is_some() && e.e2e.as_ref().is_some_and(E2e::is_established)
            });
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
        let plain: &[u8] = match &mut epoch.e2e {
            None => msg,
            Some(e2e) if !e2e.is_established() => {
                let res = e2e.handshake_in(msg).and_then(|()| {
                    let mut out = Vec::new();
                    if e2e.wants_to_send() {
                        e2e.handshake_out(&mut out)?;
                    }
                    Ok(out)
                });
                match res {
                    Ok(reply) => {
                        if !reply.is_empty() {
                            if let Some(link) = &mut self.link {
                                link.ws.send(OpCode::Binary, &reply);
                            }
                        }
                        if e2e.is_established() {
                            match self.opts.side {
                                Side::Dest => log::info!("end-to-end encryption established"),
                                Side::Origin => log::debug!(
                                    "end-to-end handshake answered; waiting for the dest's first message"
                                ),
                            }
                            epoch.mux = Some(Mux::new(self.opts.side, mux::Config::client()));
                            self.on_mux_ready();
                        }
                    }
                    // Either side: close, so that both pair again from a clean
                    // state. (Waiting for a fresh handshake would hang when
                    // the relay, not the dest, got out of step: the dest then
                    // believes it is established and never sends one.)
                    Err(e) => self.abort_link(close::E2E_FAILED, e.to_string()),
                }
                return;
            }
            Some(e2e) => {
                self.plain.clear();
                if let Err(e) = e2e.open(msg, &mut self.plain) {
                    self.abort_link(close::E2E_FAILED, e.to_string());
                    return;
                }
                if !epoch.confirmed {
                    epoch.confirmed = true;
                    if self.opts.side == Side::Origin {
                        log::info!("end-to-end encryption established");
                    }
                }
                &self.plain
            }
        };
        let Some(m) = &mut epoch.mux else { return };
        if let Err(e) = m.recv_message(plain) {
            log::error!("peer broke the mux protocol: {e}");
            self.abort_link(e.close_code(), e.to_string());
            return;
        }
        self.drain_mux_events();
    }

    pub(super) fn drain_mux_events(&mut self) {
        loop {
            let Some(ev) = self
                .epoch
                .as_mut()
                .and_then(|e| e.mux.as_mut())
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
            if let Some(m) = &mut epoch.mux {
                if link.ws.is_open() {
                    while let Some(batch) = m.pop_batch() {
                        match &mut epoch.e2e {
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
