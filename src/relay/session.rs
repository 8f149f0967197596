//! The relay's session core, sans-IO: which origin and dest form a session,
//! the pairing epochs, the origin's acknowledgement of pairing changes, the
//! forwarding decision for each frame, and who is closed with what when a
//! member leaves. No sockets, no clock, no buffers: the event loop
//! (`server`) feeds it events (an upgrade routed, a data frame begun, a
//! payload piece, a pong, a member gone) and carries out the [`Action`]s it
//! returns. See `LIFECYCLE.md` beside this file.
//!
//! Connections are named by the loop's slab keys ([`ConnKey`]); the core
//! never dereferences them, so a stale key can only yield a stale action,
//! which the loop ignores (it checks that the connection is still open and
//! still a member of that session).

use super::api::{self, Refusal};
use super::metrics::Reject;
use crate::control::close;
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A connection, as the event loop's slab key.
pub type ConnKey = usize;
/// A session, as this registry's slab key.
pub type SessionKey = usize;

/// Which member of a session a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    Origin,
    Dest,
}

impl Member {
    pub fn name(self) -> &'static str {
        match self {
            Member::Origin => "origin",
            Member::Dest => "dest",
        }
    }
}

struct Session {
    id: Uuid,
    /// `None` while the origin is away (it vanished; see `origin_grace`).
    origin: Option<ConnKey>,
    dest: Option<ConnKey>,
    admission: [u8; 20],
    /// Incremented at each pairing and unpairing.
    epoch: u32,
    /// Sequence number of the last pairing-change ping to the origin, and
    /// whether the origin answered it: its data is forwarded only after it
    /// has seen the current pairing.
    change_seq: u32,
    origin_acked: bool,
    /// The origin vanished: the session waits for it until then.
    origin_away_until: Option<Instant>,
    /// The origin named the session's id: it can come back with it, so
    /// the session is worth keeping for it when it vanishes. (An origin
    /// given a relay-chosen id, like the Node clients, never reclaims it.)
    awaitable: bool,
}

/// What the event loop must do for the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Tell `to` (an origin) that `peer` joined: a `peer-joined <seq>` ping
    /// carrying `peer`'s address.
    PeerJoined {
        to: ConnKey,
        seq: u32,
        peer: ConnKey,
    },
    /// Tell `to` (an origin) that its dest left with this code and reason.
    PeerLeft {
        to: ConnKey,
        seq: u32,
        code: u16,
        reason: String,
    },
    /// Frames `conn` had queued toward a departed peer go nowhere: forget
    /// them, and pump `conn` (it may have stopped reading for them).
    Discard { conn: ConnKey },
    /// `conn` is no longer a member: close it with this code and reason
    /// (or drop it, if it already vanished), forgetting what it had queued.
    Close {
        conn: ConnKey,
        code: u16,
        reason: String,
    },
}

/// Per-direction forwarding state, kept by the loop with each connection's
/// inbound stream and updated only by [`Registry::frame_begins`] and
/// [`Registry::payload_continues`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// The current message is forwarded (decided at its first frame).
    pub message: bool,
    /// The current frame is forwarded.
    pub frame: bool,
    /// The epoch the current message is bound to: a message started for
    /// one dest never reaches the next.
    pub epoch: u32,
}

/// How a member's departure ended, as far as the session is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure<'a> {
    /// It sent a close frame with this code (1005: none) and reason.
    Closed(u16, &'a str),
    /// It broke the protocol; the relay closes it with this code.
    Failed(u16, &'a str),
    /// EOF, an i/o error or a timeout, without a close frame.
    Vanished(&'a str),
}

/// A member's departure, with what the loop knows of its streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaving<'a> {
    pub how: Departure<'a>,
    /// The stream toward its peer stopped inside a frame (the peer can
    /// never see that frame's end).
    pub peer_mid_frame: bool,
    /// It had begun forwarding a fragmented message it never finished.
    pub mid_message: bool,
}

/// Every session of one relay.
#[derive(Default)]
pub struct Registry {
    sessions: Slab<Session>,
    by_id: HashMap<Uuid, SessionKey>,
    /// How long a session whose origin vanished waits for it (zero: it
    /// ends at once).
    origin_grace: Duration,
    /// When each waiting session gives up, in order (the grace is the
    /// same for all, so pushing at the back keeps it sorted). An entry is
    /// stale once its session has its origin back or is gone.
    expiries: VecDeque<(Instant, SessionKey, Uuid)>,
}

/// A session's id and its members, for logs and gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub id: Uuid,
    /// `None` while the session waits for its vanished origin.
    pub origin: Option<ConnKey>,
    pub dest: Option<ConnKey>,
    pub epoch: u32,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// A registry in which a session whose origin vanished (EOF, i/o
    /// error, ping timeout: not a close frame) waits `grace` for the
    /// origin to come back before its dest is told it is gone.
    pub fn with_origin_grace(grace: Duration) -> Registry {
        Registry {
            origin_grace: grace,
            ..Registry::default()
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn paired(&self) -> usize {
        self.sessions
            .iter()
            .filter(|(_, s)| s.dest.is_some() && s.origin.is_some())
            .count()
    }

    /// Sessions waiting for their vanished origin.
    pub fn awaiting_origin(&self) -> usize {
        // Sessions, not deadlines: a session that got its origin back and
        // lost it again in the same instant has two identical entries
        // (found by fuzz/relay_session).
        self.sessions
            .iter()
            .filter(|(_, s)| s.origin.is_none())
            .count()
    }

    /// Whether session `id` exists and waits for its vanished origin.
    pub fn awaits_origin(&self, id: &Uuid) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|&key| self.sessions[key].origin.is_none())
    }

    fn waits_until(&self, key: SessionKey, id: Uuid) -> Option<Instant> {
        self.sessions
            .get(key)
            .filter(|s| s.id == id)
            .and_then(|s| s.origin_away_until)
    }

    /// When [`Registry::expire`] has something to do.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.front().map(|&(at, _, _)| at)
    }

    /// End the sessions whose origin did not come back in time: their
    /// dests are closed 4001, as for an origin gone without a grace.
    pub fn expire(&mut self, now: Instant, actions: &mut Vec<Action>) {
        while let Some(&(at, key, id)) = self.expiries.front() {
            if at > now {
                break;
            }
            self.expiries.pop_front();
            if self.waits_until(key, id) == Some(at) {
                self.end(
                    key,
                    close::ORIGIN_GONE,
                    "",
                    close::ORIGIN_GONE,
                    "origin gone (did not come back in time)",
                    actions,
                );
            }
        }
    }

    pub fn view(&self, key: SessionKey) -> Option<View> {
        self.sessions.get(key).map(|s| View {
            id: s.id,
            origin: s.origin,
            dest: s.dest,
            epoch: s.epoch,
        })
    }

    pub fn keys(&self) -> Vec<SessionKey> {
        self.sessions.iter().map(|(k, _)| k).collect()
    }

    /// Whether `conn` is `member` of session `key`.
    pub fn is_member(&self, key: SessionKey, conn: ConnKey, member: Member) -> bool {
        self.sessions.get(key).is_some_and(|s| match member {
            Member::Origin => s.origin == Some(conn),
            Member::Dest => s.dest == Some(conn),
        })
    }

    /// The other member of `conn`'s session, if paired.
    pub fn peer(&self, key: SessionKey, member: Member) -> Option<ConnKey> {
        let s = self.sessions.get(key)?;
        match member {
            Member::Origin => s.dest,
            Member::Dest => s.origin,
        }
    }

    /// An origin's upgrade: a new session for `origin`, with the id it
    /// proposed or a fresh one. A proposal matching a session with the same
    /// admission digest takes that session back if it waits for its
    /// vanished origin (a waiting dest is paired with it at once), and
    /// otherwise replaces it (its members are closed, 4002/4003).
    /// `actions` receives what the takeover or replacement requires.
    pub fn open_origin(
        &mut self,
        origin: ConnKey,
        proposed: Option<Uuid>,
        admission: [u8; 20],
        max_sessions: usize,
        actions: &mut Vec<Action>,
    ) -> Result<(SessionKey, Uuid), Refusal> {
        let id = match proposed {
            Some(id) => {
                if let Some(&old) = self.by_id.get(&id) {
                    if !api::ct_eq(&self.sessions[old].admission, &admission) {
                        return Err(refusal(409, "session id in use", Reject::IdInUse));
                    }
                    if self.sessions[old].origin.is_none() {
                        self.reclaim(old, origin, actions);
                        return Ok((old, id));
                    }
                    // The same origin (it knows the admission value) is
                    // back, e.g. after a network drop: it replaces its old
                    // connection.
                    self.end(
                        old,
                        close::REPLACED,
                        "replaced by a new origin connection",
                        close::ORIGIN_RECONNECTED,
                        "origin reconnected; join again",
                        actions,
                    );
                }
                id
            }
            None => loop {
                let id = Uuid::new_v4();
                if !self.by_id.contains_key(&id) {
                    break id;
                }
            },
        };
        if self.sessions.len() >= max_sessions {
            return Err(refusal(503, "session limit reached", Reject::SessionLimit));
        }
        let key = self.sessions.insert(Session {
            id,
            origin: Some(origin),
            dest: None,
            admission,
            epoch: 0,
            change_seq: 0,
            origin_acked: true,
            origin_away_until: None,
            awaitable: proposed.is_some(),
        });
        self.by_id.insert(id, key);
        Ok((key, id))
    }

    /// The vanished origin of `key` is back as `origin`: a waiting dest
    /// and the origin are both told of the pairing (a new epoch; the
    /// origin's data waits for its ack, as at any pairing).
    fn reclaim(&mut self, key: SessionKey, origin: ConnKey, actions: &mut Vec<Action>) {
        let s = &mut self.sessions[key];
        s.origin = Some(origin);
        s.origin_away_until = None;
        s.origin_acked = true;
        if let Some(dest) = s.dest {
            let seq = s.change();
            actions.push(Action::PeerJoined {
                to: origin,
                seq,
                peer: dest,
            });
            actions.push(Action::PeerJoined {
                to: dest,
                seq,
                peer: origin,
            });
        }
    }

    /// A dest's upgrade for session `id`. On success the session is paired
    /// (a new epoch; the origin's data waits for its ack of `seq`) and
    /// `actions` tells the origin. Returns the session, its origin and the
    /// `seq` of the change (the dest's own `peer-joined` carries it too).
    /// If the origin is away (within its grace), the dest joins and waits:
    /// the origin is `None`, and both hear `peer-joined` once it is back.
    pub fn join_dest(
        &mut self,
        dest: ConnKey,
        id: Uuid,
        admission: [u8; 20],
        actions: &mut Vec<Action>,
    ) -> Result<(SessionKey, Option<ConnKey>, u32), Refusal> {
        let Some(&key) = self.by_id.get(&id) else {
            return Err(refusal(
                404,
                "no such session (is the origin connected?)",
                Reject::UnknownSession,
            ));
        };
        let s = &mut self.sessions[key];
        if !api::ct_eq(&s.admission, &admission) {
            return Err(refusal(
                403,
                "wrong admission value (token)",
                Reject::WrongAdmission,
            ));
        }
        if s.dest.is_some() {
            return Err(refusal(
                409,
                "session already has a dest",
                Reject::DestTaken,
            ));
        }
        s.dest = Some(dest);
        let Some(origin) = s.origin else {
            return Ok((key, None, s.change_seq));
        };
        let seq = s.change();
        actions.push(Action::PeerJoined {
            to: origin,
            seq,
            peer: dest,
        });
        Ok((key, Some(origin), seq))
    }

    /// A pong from the origin of `key`: an echo of the latest pairing
    /// change lets its data flow again.
    pub fn origin_pong(&mut self, key: SessionKey, payload: &[u8]) {
        if let Some(s) = self.sessions.get_mut(key) {
            if !s.origin_acked && crate::control::acked_seq(payload) == Some(s.change_seq) {
                s.origin_acked = true;
            }
        }
    }

    /// A data frame from `member` of `key` begins (`continuation`: it
    /// continues a fragmented message). Decides, in `fwd`, whether it is
    /// forwarded, and returns the target connection if so. A message is
    /// forwarded whole or not at all: the decision is taken at its first
    /// frame and bound to the epoch; an origin's data waits for its ack.
    pub fn frame_begins(
        &self,
        key: SessionKey,
        member: Member,
        continuation: bool,
        fwd: &mut Forwarding,
    ) -> Option<ConnKey> {
        let Some(s) = self.sessions.get(key) else {
            *fwd = Forwarding::default();
            return None;
        };
        let target = match member {
            Member::Origin => s.dest.filter(|_| s.origin_acked),
            Member::Dest => s.origin,
        };
        if !continuation {
            fwd.message = target.is_some();
            fwd.epoch = s.epoch;
        }
        fwd.frame = fwd.message && target.is_some() && fwd.epoch == s.epoch;
        target.filter(|_| fwd.frame)
    }

    /// A payload piece of the current frame from `member`: still forwarded
    /// only if its target is still there in the same epoch (the target
    /// may have left since the frame began: the rest then goes nowhere).
    pub fn payload_continues(
        &self,
        key: SessionKey,
        member: Member,
        fwd: &mut Forwarding,
    ) -> Option<ConnKey> {
        let Some(s) = self.sessions.get(key) else {
            fwd.frame = false;
            return None;
        };
        let target = match member {
            Member::Origin => s.dest,
            Member::Dest => s.origin,
        };
        fwd.frame &= target.is_some() && fwd.epoch == s.epoch;
        target.filter(|_| fwd.frame)
    }

    /// `conn`, `member` of `key`, has left (its output drained, see
    /// `LIFECYCLE.md`) at `now`. Returns `false` (and does nothing) if it
    /// was not a member. `actions` closes it (the code it sent is echoed)
    /// and does whatever its departure means for the others.
    pub fn leave(
        &mut self,
        key: SessionKey,
        conn: ConnKey,
        member: Member,
        leaving: &Leaving<'_>,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> bool {
        if !self.is_member(key, conn, member) {
            return false;
        }
        match member {
            Member::Origin
                if matches!(leaving.how, Departure::Vanished(_))
                    && !self.origin_grace.is_zero()
                    && self.sessions[key].awaitable
                    && !leaving.peer_mid_frame
                    && !leaving.mid_message =>
            {
                // An origin that closed (a close frame) is leaving; one
                // whose connection died or went silent may be on its way
                // back (network change, sleep, restart): keep the session
                // for it. Not if its dest is inside a frame or message from
                // it (RFC 6455 §5.4: that can never be completed).
                let why = match leaving.how {
                    Departure::Vanished(why) => why,
                    _ => "",
                };
                actions.push(Action::Close {
                    conn,
                    code: close::INTERNAL_ERROR,
                    reason: why.to_string(),
                });
                let until = now + self.origin_grace;
                let s = &mut self.sessions[key];
                s.origin = None;
                s.origin_away_until = Some(until);
                self.expiries.push_back((until, key, s.id));
                if let Some(dest) = s.dest {
                    let seq = s.change();
                    // Frames the dest had queued for the vanished origin.
                    actions.push(Action::Discard { conn: dest });
                    actions.push(Action::PeerLeft {
                        to: dest,
                        seq,
                        code: close::ORIGIN_GONE,
                        reason: ORIGIN_AWAY.to_string(),
                    });
                }
            }
            Member::Origin => {
                // The origin's close ends the session; the dest gets the
                // origin's code and reason (1005, "no code", becomes 1000).
                let (origin_code, origin_reason, dest_code, dest_reason) = match leaving.how {
                    Departure::Closed(code, reason) => {
                        let code = no_status_as_normal(code);
                        (code, reason, code, reason)
                    }
                    Departure::Failed(code, reason) => (
                        code,
                        reason,
                        close::ORIGIN_GONE,
                        "origin gone (protocol error)",
                    ),
                    Departure::Vanished(why) => (
                        close::INTERNAL_ERROR,
                        why,
                        close::ORIGIN_GONE,
                        "origin gone",
                    ),
                };
                self.end(
                    key,
                    origin_code,
                    origin_reason,
                    dest_code,
                    dest_reason,
                    actions,
                );
            }
            Member::Dest => {
                let (code, reason) = match leaving.how {
                    Departure::Closed(code, reason) | Departure::Failed(code, reason) => {
                        (no_status_as_normal(code), reason)
                    }
                    Departure::Vanished(why) => (close::ABNORMAL, why),
                };
                actions.push(Action::Close {
                    conn,
                    code,
                    reason: reason.to_string(),
                });
                let s = &mut self.sessions[key];
                s.dest = None;
                let Some(origin) = s.origin else {
                    // Its origin is away: nobody to tell.
                    return true;
                };
                let seq = s.change();
                // Frames the origin had queued for the departed dest.
                actions.push(Action::Discard { conn: origin });
                if leaving.peer_mid_frame || leaving.mid_message {
                    // The dest left inside a frame or message toward the
                    // origin: it can never be completed (RFC 6455 §5.4), so
                    // the origin's stream is unusable.
                    self.end(
                        key,
                        close::INTERNAL_ERROR,
                        "peer vanished inside a frame",
                        close::ORIGIN_GONE,
                        "origin gone",
                        actions,
                    );
                } else {
                    actions.push(Action::PeerLeft {
                        to: origin,
                        seq,
                        code,
                        reason: reason.to_string(),
                    });
                }
            }
        }
        true
    }

    /// The relay shuts down: every session ends with 1001.
    pub fn end_all(&mut self, actions: &mut Vec<Action>) {
        for key in self.keys() {
            self.end_going_away(key, actions);
        }
    }

    /// The relay shuts down and session `key` has drained: both members
    /// are closed with 1001.
    pub fn end_going_away(&mut self, key: SessionKey, actions: &mut Vec<Action>) {
        let why = "relay shutting down";
        self.end(key, close::GOING_AWAY, why, close::GOING_AWAY, why, actions);
    }

    /// End session `key`: close its origin and its dest (if any).
    fn end(
        &mut self,
        key: SessionKey,
        origin_code: u16,
        origin_reason: &str,
        dest_code: u16,
        dest_reason: &str,
        actions: &mut Vec<Action>,
    ) {
        let Some(s) = self.sessions.try_remove(key) else {
            return;
        };
        self.by_id.remove(&s.id);
        if let Some(origin) = s.origin {
            actions.push(Action::Close {
                conn: origin,
                code: origin_code,
                reason: origin_reason.to_string(),
            });
        }
        if let Some(dest) = s.dest {
            actions.push(Action::Close {
                conn: dest,
                code: dest_code,
                reason: dest_reason.to_string(),
            });
        }
    }
}

impl Session {
    /// A pairing change: a new epoch, and the origin must ack it.
    fn change(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        self.change_seq = self.change_seq.wrapping_add(1);
        self.origin_acked = false;
        self.change_seq
    }
}

/// What a dest hears (`peer-left 4001 …`) while its origin is away.
pub const ORIGIN_AWAY: &str = "origin away; waiting for it to come back";

/// A close frame without a code (1005, never on the wire) is passed on as
/// a normal close.
/// The shared endpoint rule (`ws::endpoint::echo_code`): a code that may
/// not be on the wire is echoed as 1000.
pub fn no_status_as_normal(code: u16) -> u16 {
    crate::ws::endpoint::echo_code(Some(code))
}

const fn refusal(status: u16, reason: &'static str, metric: Reject) -> Refusal {
    Refusal {
        status,
        reason,
        metric,
    }
}

#[cfg(test)]
mod tests;
