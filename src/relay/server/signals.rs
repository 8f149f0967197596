//! Signals: SIGHUP reloads the TLS certificate and `--origin-keys`;
//! SIGTERM (or SIGINT) starts the drain: stop accepting, tell every client
//! to move, close each session with 1001 once what is queued toward its
//! members is out, and let the loop end (or `--drain-timeout` passes).

use super::*;

impl Server {
    pub(super) fn on_signal(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        match signals.drain() {
            Some(Signal::Terminate) => self.shutdown(),
            Some(Signal::Reload) => self.reload(),
            None => {}
        }
    }

    fn reload(&mut self) {
        #[cfg(feature = "tls")]
        if let Some(tls) = &mut self.tls {
            let f = tls.files().clone();
            match tls.reload() {
                Ok(()) => log::info!(
                    "SIGHUP: reloaded the TLS certificate from {} (new connections use it)",
                    f.cert.display()
                ),
                Err(e) => log::error!("SIGHUP: keeping the old TLS certificate: {e}"),
            }
        }
        let Some(path) = self.cfg.origin_keys.clone() else {
            log::info!("SIGHUP: no origin keys to reload");
            return;
        };
        match load_origin_keys(&path) {
            Ok(keys) => {
                log::info!(
                    "SIGHUP: reloaded {} origin keys from {}",
                    keys.len(),
                    path.display()
                );
                self.origin_keys = Some(keys);
            }
            Err(e) => log::error!("SIGHUP: keeping the old origin keys: {e}"),
        }
    }

    /// Stop accepting, tell every client to move (`sockrelay move`), stop
    /// reading from them, close each session with 1001 once what is queued
    /// toward its members is out (`drain`), and let `run` return once they
    /// are gone (or `--drain-timeout` passes).
    pub fn shutdown(&mut self) {
        if self.shutting_down.is_some() {
            return;
        }
        log::info!(
            "shutting down: telling {} clients to move, draining for at most {:.1} s",
            self.sessions_members(),
            self.cfg.drain_timeout.as_secs_f64()
        );
        self.shutting_down = Some((self.now, self.now + self.cfg.drain_timeout));
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l.sock);
        }
        let open: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Open { .. }))
            .map(|(k, _)| k)
            .collect();
        for key in open {
            let moving = Control::Move {
                spread_ms: control::MOVE_SPREAD_MS,
                reason: "relay shutting down",
            };
            self.send_control(key, moving);
            // Flush what it has decoded already; nothing more is read.
            if let Err(e) = self.pump(key) {
                self.drop_conn(key, &format!("i/o error: {e}"));
            }
        }
        self.reap();
        self.drain();
        let pending: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Pending { .. }))
            .map(|(k, _)| k)
            .collect();
        for key in pending {
            self.drop_conn(key, "relay shutting down");
        }
        self.reap();
    }

    /// While shutting down: end each session whose members have nothing
    /// left to forward to each other (no frame half way, its segments
    /// toward them out, or going nowhere) with 1001.
    pub(super) fn drain(&mut self) {
        let mut actions = Vec::new();
        for key in self.sessions.keys() {
            let Some(v) = self.sessions.view(key) else {
                continue;
            };
            let flushed = [v.origin, v.dest].into_iter().flatten().all(|c| {
                self.conns.get(c).is_none_or(|c| {
                    let queued = c
                        .inb
                        .as_ref()
                        .and_then(|i| i.buf.as_ref())
                        .is_some_and(|b| !b.segs.is_empty());
                    !queued && (c.ending.is_some() || !forward::forwarding_a_frame(c))
                })
            });
            if flushed {
                self.sessions.end_going_away(key, &mut actions);
            }
        }
        self.apply(actions);
    }
}

pub(super) fn load_origin_keys(path: &std::path::Path) -> io::Result<HashSet<Vec<u8>>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot read origin keys {}: {e}", path.display()),
        )
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.as_bytes().to_vec())
        .collect())
}
