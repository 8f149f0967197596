//! The relay link: the connect stages (resolve off the loop, one TCP
//! connect per address, the WebSocket upgrade), the relay's answers and
//! close codes, its control messages, and reconnecting with backoff.

use super::*;

/// The longest reconnect spread a relay's `move` can ask for.
const MAX_MOVE_SPREAD_MS: u32 = 5_000;

impl Engine {
    /// Stage 1 of a connection: resolve the relay's name, off the loop.
    pub(super) fn connect(&mut self) {
        self.link_generation += 1;
        let generation = self.link_generation;
        // Through a proxy, the proxy's name is looked up here and the
        // relay's by the proxy (CONNECT host:port).
        let host = &self.route.connect_host;
        let what = self.route.what();
        match Lookup::start(host, self.route.connect_port, self.waker.clone()) {
            Ok(lookup) => self.lookup = Some((generation, lookup)),
            Err(e) => {
                self.link_failed(format!("cannot resolve {what} host {host:?}: {e}"), None);
                return;
            }
        }
        self.timers.schedule(
            Instant::now() + CONNECT_TIMEOUT,
            Timer::ConnectDeadline(generation),
        );
        // An address literal is answered at once.
        self.on_lookup_done();
    }

    pub(super) fn on_lookup_done(&mut self) {
        let Some((_, lookup)) = &mut self.lookup else {
            return;
        };
        let Some(answer) = lookup.poll() else { return };
        self.lookup = None;
        let host = &self.route.connect_host;
        let what = self.route.what();
        match answer {
            Ok(addrs) if !addrs.is_empty() => {
                log::debug!("{what} host {host:?} is {addrs:?}");
                self.addrs_left = addrs.into();
                self.connect_next();
            }
            Ok(_) => self.link_failed(format!("{what} host {host:?} has no address"), None),
            Err(e) => self.link_failed(format!("cannot resolve {what} host {host:?}: {e}"), None),
        }
    }

    /// Stage 2 and on: a TCP connect to the next address not tried yet,
    /// then the WebSocket upgrade (queued until TCP connects). Each try is
    /// its own link generation, so that events of an abandoned socket are
    /// ignored.
    pub(super) fn connect_next(&mut self) {
        let Some(addr) = self.addrs_left.pop_front() else {
            return;
        };
        self.link_generation += 1;
        let generation = self.link_generation;
        let path = match self.side() {
            Side::Origin => format!("{}?id={}", path::ORIGIN, self.session),
            Side::Dest => format!("{}?id={}", path::DEST, self.session),
        };
        let headers = [(header::ADMISSION, self.admission.as_str())];
        let authority = self.opts.relay.authority();
        let stall = self.dead_after();
        let what = self.route.what();
        let plan = match self.route.plan() {
            Ok(p) => p,
            Err(e) => {
                self.stop = Some(Err(Error::Local(e.to_string())));
                return;
            }
        };
        let mut ws = match WsConn::connect(
            addr,
            &authority,
            &path,
            &headers,
            &mut self.rng,
            stall,
            plan,
        ) {
            Ok(ws) => ws,
            Err(e) => {
                self.link_failed(format!("connect to {what} {addr}: {e}"), None);
                return;
            }
        };
        if let Err(e) = self.poll.registry().register(
            ws.source(),
            Token(WS_BIT | generation as usize),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.link_failed(format!("register relay socket: {e}"), None);
            return;
        }
        log::debug!("connecting to {what} {addr}");
        let now = Instant::now();
        self.link = Some(Link {
            ws,
            generation,
            last_ping: now,
        });
        self.timers
            .schedule(now + CONNECT_TIMEOUT, Timer::ConnectDeadline(generation));
    }

    /// A TCP connect failed or timed out and another address is left:
    /// try that one at once. Returns whether it did.
    pub(super) fn try_next_address(&mut self, why: &str) -> bool {
        let connecting = match &self.link {
            Some(link) => !link.ws.is_tcp_connected(),
            // A synchronous connect error leaves no link behind.
            None => self.lookup.is_none(),
        };
        if !connecting || self.addrs_left.is_empty() {
            return false;
        }
        if let Some(mut link) = self.link.take() {
            let _ = self.poll.registry().deregister(link.ws.source());
        }
        log::info!("{why}; trying the next address");
        self.connect_next();
        true
    }

    /// The link is gone or unusable: end the epoch and reconnect after
    /// `delay` (None: the next backoff step). An origin that never got a
    /// session stops instead: its user is waiting for the eval lines.
    pub(super) fn link_failed(&mut self, why: String, delay: Option<Duration>) {
        if self.try_next_address(&why) {
            return;
        }
        if self.command.as_ref().is_some_and(|c| !c.started()) {
            let why = format!("cannot join the session ({why}); not running COMMAND");
            self.stop = Some(Err(Error::Local(why)));
            self.link = None;
            return;
        }
        self.addrs_left.clear();
        self.lookup = None;
        // A relay that said `move` is stopping: come back at once (its
        // successor, or another relay behind the same address).
        let delay = delay.or_else(|| self.moving.take());
        if self.side() == Side::Origin && !self.upgraded_once {
            let relay = self.opts.relay.authority();
            self.stop = Some(Err(Error::Unreachable { relay, why }));
            self.link = None;
            return;
        }
        self.drop_link();
        let delay = delay.unwrap_or_else(|| self.backoff.next_delay());
        log::warn!("{why}; reconnecting in {:.1} s", delay.as_secs_f64());
        self.timers.schedule(
            Instant::now() + delay,
            Timer::Reconnect(self.link_generation),
        );
    }

    pub(super) fn drop_link(&mut self) {
        if let Some(mut link) = self.link.take() {
            link.ws.queue_control();
            let _ = link.ws.flush(Instant::now());
            let _ = self.poll.registry().deregister(link.ws.source());
        }
        self.end_epoch("relay connection lost", Keep::Resume);
    }

    /// Close the WebSocket ourselves (protocol failure) and reconnect.
    pub(super) fn abort_link(&mut self, code: u16, why: String) {
        if let Some(link) = &mut self.link {
            link.ws.close(code, &why);
        }
        self.link_failed(why, None);
    }

    /// Queue the pong (or close echo) the relay is owed; the origin's
    /// refusal of a dest follows the pong that acknowledges its pairing.
    pub(super) fn queue_link_control(&mut self) {
        let Some(link) = &mut self.link else { return };
        if link.ws.queue_control() {
            if let Some(refusal) = self.refusal.take() {
                link.ws.send(OpCode::Binary, &refusal);
            }
        }
    }

    pub(super) fn flush_ws(&mut self) {
        self.queue_link_control();
        let Some(link) = &mut self.link else { return };
        if let Err(e) = link.ws.flush(Instant::now()) {
            if let FlushError::Io(io) = &e {
                if super::super::link::link_error(io).is_some_and(|f| f.is_permanent()) {
                    // A wrong certificate or a refused proxy password will
                    // not fix itself: exit 1 instead of retrying.
                    let why = io.to_string();
                    self.on_ws_event(WsEvent::Fatal(why));
                    return;
                }
            }
            if let FlushError::NotReading(_) = e {
                let (pings, pongs) = link.ws.ping_counts();
                log::debug!("relay sent {pings} pings; we queued {pongs} pongs");
            }
            self.link_failed(e.to_string(), None);
        }
    }

    pub(super) fn read_ws(&mut self, hup: bool) {
        let Some(link) = &mut self.link else { return };
        let mut events = std::mem::take(&mut self.ws_events);
        if link.ws.read(&mut events, hup) == ReadOutcome::Budget {
            self.link_read_again = true;
        }
        let generation = link.generation;
        for ev in events.drain(..) {
            // A handler may have replaced the link: stale events are moot.
            if self.link.as_ref().map(|l| l.generation) != Some(generation) || self.stop.is_some() {
                continue;
            }
            self.on_ws_event(ev);
        }
        // Keep the allocation for the next read.
        self.ws_events = events;
    }

    pub(super) fn on_ws_event(&mut self, ev: WsEvent) {
        match ev {
            WsEvent::Upgraded(resp) => self.on_upgraded(resp),
            WsEvent::Refused(err) => self.on_refused(err),
            WsEvent::Binary(mut msg) => {
                self.on_message(&mut msg);
                if let Some(link) = &mut self.link {
                    link.ws.recycle(msg);
                }
            }
            // Its pong is queued as soon as we acted on it, before
            // anything later events make us send: the relay takes the
            // echoed peer-joined/peer-left as "anything after this is for
            // the new peer", and drops what came before it. (Queued at the
            // next flush instead, an origin that read peer-joined and the
            // dest's handshake message in one turn sent its answer ahead
            // of the pong, and the relay dropped the answer.)
            WsEvent::Control(payload) => {
                self.on_control(&payload);
                self.queue_link_control();
            }
            WsEvent::Closed(code, reason) => self.on_closed(code, &reason),
            WsEvent::Lost(why) => self.link_failed(why, None),
            WsEvent::Fatal(why) => {
                // A wrong certificate or a refused proxy password will not
                // fix itself: exit 1 instead of retrying.
                let relay = self.opts.relay.url();
                self.stop = Some(Err(Error::Local(format!("relay {relay}: {why}"))));
            }
            WsEvent::ProtocolError(why) => self.link_failed(why, None),
        }
    }

    pub(super) fn on_upgraded(&mut self, resp: crate::ws::handshake::Response) {
        if let Some(id) = resp.header(&header::SESSION.to_ascii_lowercase()) {
            if id != self.session.to_string().as_bytes() {
                let why = format!(
                    "relay assigned session {} instead of {}",
                    String::from_utf8_lossy(id),
                    self.session
                );
                self.stop = Some(Err(Error::Refused(why)));
                return;
            }
        }
        log::info!(
            "{} session {} on relay {}",
            if self.upgraded_once {
                "resumed"
            } else {
                "joined"
            },
            self.session,
            self.opts.relay.authority()
        );
        self.backoff.reset();
        self.moving = None;
        let first = !self.upgraded_once;
        self.upgraded_once = true;
        if let Some(link) = &self.link {
            let generation = link.generation;
            self.timers.schedule(
                Instant::now() + self.opts.liveness.keepalive / TICKS_PER_INTERVAL,
                Timer::Tick(generation),
            );
        }
        if first {
            self.announce();
        }
    }

    pub(super) fn on_refused(&mut self, err: crate::ws::handshake::ClientError) {
        let status = err.status();
        let full = err.to_string();
        // "relay refused: 409 Conflict: ..." reads better than "relay refused: relay answered 409 ...".
        let text = full
            .strip_prefix("relay answered ")
            .unwrap_or(&full)
            .to_string();
        match (self.side(), status) {
            (Side::Dest, Some(403)) => {
                self.stop = Some(Err(Error::Refused(format!("wrong token ({text})"))));
            }
            (Side::Dest, Some(400 | 426)) => self.stop = Some(Err(Error::Refused(text))),
            (Side::Dest, Some(404)) => self.link_failed(
                format!(
                    "session {} not found on relay: origin gone? ({text})",
                    self.session
                ),
                None,
            ),
            (Side::Origin, Some(_)) if !self.upgraded_once => {
                self.stop = Some(Err(Error::Refused(text)));
            }
            (Side::Origin, Some(400 | 403 | 409 | 426)) => {
                self.stop = Some(Err(Error::Refused(text)));
            }
            _ => self.link_failed(text, None),
        }
    }

    pub(super) fn on_closed(&mut self, code: Option<u16>, reason: &str) {
        let c = code.map_or("no code".to_string(), |c| c.to_string());
        match (self.side(), code) {
            (Side::Dest, Some(close::ORIGIN_RECONNECTED)) => {
                log::info!("origin reconnected; joining again");
                self.link_failed(format!("relay closed ({c} {reason})"), Some(Duration::ZERO));
            }
            (Side::Dest, Some(close::ORIGIN_GONE)) => {
                log::warn!("origin left ({reason})");
                self.link_failed(format!("relay closed ({c} {reason})"), None);
            }
            (Side::Origin, Some(close::REPLACED)) => {
                self.stop = Some(Err(Error::Refused(format!(
                    "another origin took over session {} ({reason})",
                    self.session
                ))));
            }
            _ => self.link_failed(format!("relay closed the connection ({c} {reason})"), None),
        }
    }

    /// Relay control pings (README "Relay control messages").
    pub(super) fn on_control(&mut self, payload: &[u8]) {
        let msg = match Control::parse(payload) {
            Ok(Some(msg)) => msg,
            Ok(None) => return,
            Err(e) => {
                log::debug!("ignoring relay control message: {e}");
                return;
            }
        };
        match msg {
            Control::Session { id } => log::debug!("relay confirms session {id}"),
            Control::Move { spread_ms, reason } => {
                // Jittered so that every client of a stopping relay does not
                // come back in the same millisecond; bounded, since the
                // relay is not trusted to pick our delays.
                let spread = u64::from(spread_ms.min(MAX_MOVE_SPREAD_MS));
                let delay = Duration::from_millis(self.rng.next_u64() % (spread + 1));
                log::info!(
                    "relay asks us to move ({reason}); reconnecting {} ms after the link closes",
                    delay.as_millis()
                );
                self.moving = Some(delay);
            }
            Control::PeerJoined { addr, .. } => {
                match self.side() {
                    Side::Origin => log::info!("dest joined from {addr}"),
                    Side::Dest => log::info!("paired with origin at {addr}"),
                }
                if let Some(g) = &mut self.agent {
                    g.set_dest(addr);
                }
                if self.side() == Side::Origin {
                    if let Some(why) = self.opts.limits.refuse_dest(addr) {
                        // No epoch: no handshake, and whatever it sends is dropped.
                        log::warn!("refusing this dest: {why}");
                        self.end_epoch("dest refused", Keep::Nothing);
                        self.refusal = Some([REFUSED_PREFIX, why.as_bytes()].concat());
                        self.dest_refused = true;
                        return;
                    }
                }
                self.dest_refused = false;
                self.start_epoch();
            }
            Control::PeerLeft { code, reason, .. } => {
                self.dest_refused = false;
                // A peer that exited (1000) has no channels to resume; any
                // other departure (a lost link; the relay keeps the session
                // of a vanished origin for `--origin-grace`) may come back.
                let keep = if code == close::NORMAL {
                    Keep::Nothing
                } else {
                    Keep::Resume
                };
                match self.side() {
                    Side::Origin => {
                        log::info!("dest left ({code} {reason})");
                        self.end_epoch("dest left", keep);
                    }
                    Side::Dest => {
                        log::info!("origin left ({code} {reason})");
                        self.end_epoch("origin left", keep);
                    }
                }
            }
        }
    }
}
