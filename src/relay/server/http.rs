//! A pending connection's HTTP request: read it, route it, refuse it or
//! upgrade it into a session member (the session core decides who pairs).

use super::*;

impl Server {
    pub(super) fn read_request(&mut self, key: usize) -> Step {
        let conn = &mut self.conns[key];
        let State::Pending { req, .. } = &mut conn.state else {
            return Ok(());
        };
        let mut chunk = [0u8; READ_CHUNK];
        let old_len = req.len();
        // FIN right behind a complete request is what health checkers do
        // (`printf 'GET /healthz …' | nc -N`): parse what came first.
        let mut eof = false;
        loop {
            // Read no further than one byte past the header cap: enough to
            // know a request is too large.
            let room = (handshake::MAX_HEADER_BYTES + 1).saturating_sub(req.len());
            if room == 0 {
                break;
            }
            let want = room.min(chunk.len());
            match conn.sock.read(&mut chunk[..want]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => req.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // Re-parse only when the new bytes may end the header: a client
        // trickling one byte per packet must not make parsing quadratic.
        if !handshake::request_may_be_complete(req, old_len) {
            if eof {
                self.drop_conn(key, "closed before completing its request");
            }
            return Ok(());
        }
        match handshake::parse_request(req) {
            Ok(None) => {
                if eof {
                    self.drop_conn(key, "closed before completing its request");
                }
                Ok(())
            }
            Err(reject) => {
                let metric = if reject.status == 431 {
                    Reject::HeadersTooLarge
                } else {
                    Reject::BadRequest
                };
                self.refuse(key, reject.status, reject.reason, metric);
                Ok(())
            }
            Ok(Some((request, consumed))) => {
                let rest = req[consumed..].to_vec();
                self.on_request(key, request, rest)
            }
        }
    }

    pub(super) fn refuse(&mut self, key: usize, status: u16, reason: &str, metric: Reject) {
        self.metrics.reject(metric);
        let conn = &self.conns[key];
        log::info!("refused {}: {status} {reason}", conn.addr);
        let bytes = handshake::error_response(status, reason);
        self.close_with_bytes(key, &bytes, CLOSE_LINGER);
    }

    pub(super) fn on_request(
        &mut self,
        key: usize,
        request: handshake::Request,
        rest: Vec<u8>,
    ) -> Step {
        let route = match api::route(&request) {
            Ok(r) => r,
            Err(refusal) => {
                self.refuse(key, refusal.status, refusal.reason, refusal.metric);
                return Ok(());
            }
        };
        let role = self.conns[key].listener_role;
        match route {
            Route::Health => {
                let body = handshake::plain_response(200, "text/plain; charset=utf-8", b"ok\n");
                self.close_with_bytes(key, &body, CLOSE_LINGER);
            }
            Route::Metrics => {
                let text = self.metrics.render(&self.gauges());
                let body =
                    handshake::plain_response(200, "text/plain; version=0.0.4", text.as_bytes());
                self.close_with_bytes(key, &body, CLOSE_LINGER);
            }
            Route::Origin { .. } if role == ListenRole::Dest => {
                self.refuse(
                    key,
                    404,
                    "this address serves dests only",
                    Reject::WrongListener,
                );
            }
            Route::Dest { .. } if role == ListenRole::Origin => {
                self.refuse(
                    key,
                    404,
                    "this address serves origins only",
                    Reject::WrongListener,
                );
            }
            Route::Origin {
                proposed,
                admission,
                compat,
                origin_key,
            } => self.open_origin(
                key, &request, proposed, &admission, compat, origin_key, rest,
            )?,
            Route::Dest { id, admission } => self.open_dest(key, &request, id, &admission, rest)?,
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_origin(
        &mut self,
        key: usize,
        request: &handshake::Request,
        proposed: Option<Uuid>,
        admission: &[u8],
        compat: bool,
        origin_key: Option<Vec<u8>>,
        rest: Vec<u8>,
    ) -> Step {
        if let Some(keys) = &self.origin_keys {
            if !origin_key.is_some_and(|k| keys.contains(&k)) {
                self.refuse(
                    key,
                    403,
                    "origin key not accepted by this relay",
                    Reject::OriginNotAllowed,
                );
                return Ok(());
            }
        }
        let digest = api::admission_digest(admission);
        let mut actions = Vec::new();
        let back = proposed.is_some_and(|id| self.sessions.awaits_origin(&id));
        let opened =
            self.sessions
                .open_origin(key, proposed, digest, self.cfg.max_sessions, &mut actions);
        let addr = self.conns[key].addr;
        let (session_key, id) = match opened {
            Ok(opened) => opened,
            Err(refusal) => {
                self.apply(actions);
                self.refuse(key, refusal.status, refusal.reason, refusal.metric);
                return Ok(());
            }
        };
        if back {
            // Its session waited for it (`--origin-grace`); a waiting
            // dest hears `peer-joined` once the origin is open.
            log::info!("session {id}: origin came back from {addr}");
            let out = upgrade_answer(request, &id, Control::Session { id });
            let opened = self.become_open(key, Member::Origin, session_key, &out, rest);
            if !actions.is_empty() {
                self.metrics.pairings += 1;
            }
            self.apply(actions);
            return opened;
        }
        if !actions.is_empty() {
            log::info!("session {id}: origin reconnected from {addr}");
            self.apply(actions);
        }
        self.metrics.sessions_created += 1;
        log::info!("session {id}: created by origin {addr}");
        let mut out = upgrade_answer(request, &id, Control::Session { id });
        if compat {
            frame::encode_frame(
                &mut out,
                true,
                OpCode::Binary,
                None,
                &api::compat_start_message(&id),
            );
        }
        self.become_open(key, Member::Origin, session_key, &out, rest)
    }

    pub(super) fn open_dest(
        &mut self,
        key: usize,
        request: &handshake::Request,
        id: Uuid,
        admission: &[u8],
        rest: Vec<u8>,
    ) -> Step {
        let digest = api::admission_digest(admission);
        let mut actions = Vec::new();
        let (session_key, origin, seq) =
            match self.sessions.join_dest(key, id, digest, &mut actions) {
                Ok(joined) => joined,
                Err(refusal) => {
                    if refusal.metric == Reject::WrongAdmission {
                        log::warn!(
                            "session {id}: dest {} presented a wrong admission value",
                            self.conns[key].addr
                        );
                    }
                    self.refuse(key, refusal.status, refusal.reason, refusal.metric);
                    return Ok(());
                }
            };
        let dest_addr = self.conns[key].addr;
        let Some(origin) = origin else {
            // Its origin vanished and may come back (`--origin-grace`):
            // the dest waits, told so, and hears `peer-joined` then.
            log::info!("session {id}: dest {dest_addr} joined; waiting for its origin");
            let away = Control::PeerLeft {
                seq: Some(seq),
                code: close::ORIGIN_GONE,
                reason: session::ORIGIN_AWAY,
            };
            let out = upgrade_answer(request, &id, away);
            return self.become_open(key, Member::Dest, session_key, &out, rest);
        };
        self.metrics.pairings += 1;
        let origin_addr = self.conns[origin].addr.to_string();
        log::info!("session {id}: dest {dest_addr} joined origin {origin_addr}");
        let out = upgrade_answer(
            request,
            &id,
            Control::PeerJoined {
                seq: Some(seq),
                addr: &origin_addr,
            },
        );
        // The origin hears of its dest (the loop writes to it at once).
        self.apply(actions);
        self.become_open(key, Member::Dest, session_key, &out, rest)
    }

    pub(super) fn become_open(
        &mut self,
        key: usize,
        member: Member,
        session: SessionKey,
        out: &[u8],
        rest: Vec<u8>,
    ) -> Step {
        self.pending_count -= 1;
        let max = self.cfg.max_message_bytes;
        let mut inb = Inbound {
            buf: None,
            filled: 0,
            parsed: 0,
            seg_off: 0,
            decoder: Decoder::new(Role::Server, max),
            fwd: Forwarding::default(),
            stash: None,
            sizer: Sizer::default(),
        };
        if !rest.is_empty() {
            // Frames the client sent right behind its request (at most
            // the header cap, copied once at the upgrade).
            let mut buf = self.pool.get(0);
            buf.data[..rest.len()].copy_from_slice(&rest);
            inb.filled = rest.len();
            inb.buf = Some(buf);
        }
        let now = self.now;
        let interval = self.cfg.ping_interval;
        let conn = &mut self.conns[key];
        conn.state = State::Open { member, session };
        conn.inb = Some(inb);
        conn.ctrl.extend_from_slice(out);
        conn.live = Liveness::new(now);
        conn.next_check = now + interval;
        let entry = (conn.next_check, key, conn.generation);
        self.timers.schedule(entry.0, entry);
        self.write_to(key)?;
        self.pump(key)
    }
}

/// The 101 (with the session id header) followed by the relay's first
/// control ping.
pub(super) fn upgrade_answer(
    request: &handshake::Request,
    id: &Uuid,
    ping: Control<'_>,
) -> Vec<u8> {
    let key = request.ws_key.as_deref().unwrap_or_default();
    let id_text = id.hyphenated().to_string();
    let mut out = handshake::response_101(key, &[(control::header::SESSION, &id_text)]);
    frame::encode_frame(&mut out, true, OpCode::Ping, None, &ping.to_vec());
    out
}
