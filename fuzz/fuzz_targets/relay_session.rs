//! Feeds random event sequences to the relay's session core
//! (`relay::session::Registry`) through a model of the loop's connections,
//! carrying out its actions as the loop does. Invariants: no panic; a data
//! frame never reaches a dest of another epoch (or anyone but the current
//! peer); every open connection's session exists and counts it as a member,
//! and every member is an open connection; the registry holds no more
//! sessions than there are open origins plus sessions waiting for their
//! vanished origin (`--origin-grace`, on simulated time), and a waiting
//! session ends once its grace has passed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sockrelay::control::Control;
use sockrelay::relay::session::{
    Action, ConnKey, Departure, Forwarding, Leaving, Member, Registry, SessionKey,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

const GRACE: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Conn {
    /// `Some` while open: its session and role.
    open: Option<(SessionKey, Member)>,
    fwd: Forwarding,
    /// For a dest: the session's epoch right after it joined.
    joined_epoch: u32,
    /// For an origin: the seq of the last pairing change it was told of.
    last_seq: u32,
}

struct Harness {
    reg: Registry,
    conns: HashMap<ConnKey, Conn>,
    ids: Vec<Uuid>,
    next_conn: ConnKey,
    now: Instant,
}

impl Harness {
    fn apply(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Close { conn, .. } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.open = None;
                    }
                }
                Action::PeerJoined { to, seq, peer } => {
                    assert!(self.conns.contains_key(&peer));
                    if let Some(c) = self.conns.get_mut(&to) {
                        match c.open {
                            Some((_, Member::Origin)) => c.last_seq = seq,
                            // Its vanished origin came back: a new epoch.
                            Some((session, Member::Dest)) => {
                                c.joined_epoch = self.reg.view(session).expect("session").epoch;
                            }
                            None => {}
                        }
                    }
                }
                Action::PeerLeft { to, seq, .. } => {
                    if let Some(c) = self.conns.get_mut(&to) {
                        // To a dest: its origin vanished and is awaited.
                        if matches!(c.open, Some((_, Member::Origin))) {
                            c.last_seq = seq;
                        }
                    }
                }
                Action::Discard { conn } => assert!(self.conns.contains_key(&conn)),
            }
        }
    }

    fn pick_open(&self, n: u8) -> Option<ConnKey> {
        let mut open: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.open.is_some())
            .map(|(k, _)| *k)
            .collect();
        open.sort_unstable();
        (!open.is_empty()).then(|| open[usize::from(n) % open.len()])
    }

    fn check(&self) {
        let mut origins = 0;
        let mut waiting = 0;
        for (&key, c) in &self.conns {
            let Some((session, member)) = c.open else { continue };
            assert!(self.reg.view(session).is_some(), "open conn without a session");
            assert!(self.reg.is_member(session, key, member), "open conn not a member");
            if member == Member::Origin {
                origins += 1;
            }
        }
        for session in self.reg.keys() {
            let v = self.reg.view(session).expect("listed session");
            if v.origin.is_none() {
                waiting += 1;
            }
            for (conn, member) in [(v.origin, Member::Origin), (v.dest, Member::Dest)] {
                let Some(conn) = conn else { continue };
                let c = self.conns.get(&conn).expect("member is a known conn");
                assert_eq!(c.open, Some((session, member)), "member not open");
            }
        }
        assert_eq!(self.reg.len(), origins + waiting);
        assert_eq!(self.reg.awaiting_origin(), waiting);
        if let Some(at) = self.reg.next_expiry() {
            assert!(at > self.now, "an expired session was kept");
        }
    }

    /// A forwarding decision returned `target` for `from`'s current frame.
    fn check_target(&self, from: ConnKey, target: Option<ConnKey>) {
        let Some(target) = target else { return };
        let c = &self.conns[&from];
        let (session, member) = c.open.expect("only open conns send");
        let v = self.reg.view(session).expect("session");
        assert_eq!(c.fwd.epoch, v.epoch, "frame of another epoch forwarded");
        match member {
            Member::Origin => {
                assert_eq!(v.dest, Some(target));
                assert_eq!(self.conns[&target].joined_epoch, v.epoch, "dest of another epoch");
            }
            Member::Dest => assert_eq!(Some(target), v.origin),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = Harness {
        reg: Registry::with_origin_grace(GRACE),
        conns: HashMap::new(),
        ids: Vec::new(),
        next_conn: 1,
        now: Instant::now(),
    };
    let admissions = [[1u8; 20], [2u8; 20]];
    for pair in data.chunks(2).take(4096) {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        let mut actions = Vec::new();
        match op % 8 {
            0 => {
                let conn = h.next_conn;
                h.next_conn += 1;
                let proposed = (arg & 1 == 1 && !h.ids.is_empty())
                    .then(|| h.ids[usize::from(arg >> 2) % h.ids.len()]);
                let adm = admissions[usize::from(arg >> 1) & 1];
                h.conns.insert(conn, Conn::default());
                let opened = h.reg.open_origin(conn, proposed, adm, 16, &mut actions);
                h.apply(actions);
                if let Ok((session, id)) = opened {
                    h.conns.get_mut(&conn).expect("inserted").open =
                        Some((session, Member::Origin));
                    if h.ids.len() < 64 {
                        h.ids.push(id);
                    }
                }
            }
            1 => {
                if h.ids.is_empty() {
                    continue;
                }
                let conn = h.next_conn;
                h.next_conn += 1;
                let id = if arg & 1 == 1 {
                    Uuid::nil()
                } else {
                    h.ids[usize::from(arg >> 2) % h.ids.len()]
                };
                let adm = admissions[usize::from(arg >> 1) & 1];
                h.conns.insert(conn, Conn::default());
                let joined = h.reg.join_dest(conn, id, adm, &mut actions);
                h.apply(actions);
                if let Ok((session, _, _)) = joined {
                    let epoch = h.reg.view(session).expect("joined").epoch;
                    let c = h.conns.get_mut(&conn).expect("inserted");
                    c.open = Some((session, Member::Dest));
                    c.joined_epoch = epoch;
                }
            }
            2 => {
                // A pong from an origin: the right ack, or a stale one.
                let Some(conn) = h.pick_open(arg) else { continue };
                let c = &h.conns[&conn];
                let Some((session, Member::Origin)) = c.open else { continue };
                let seq = c.last_seq.wrapping_sub(u32::from(arg & 1));
                let pong = Control::PeerJoined {
                    seq: Some(seq),
                    addr: "127.0.0.1:1",
                }
                .to_vec();
                h.reg.origin_pong(session, &pong);
            }
            3 | 4 => {
                let Some(conn) = h.pick_open(arg) else { continue };
                let c = h.conns.get_mut(&conn).expect("open");
                let (session, member) = c.open.expect("open");
                let target = if op % 8 == 3 {
                    h.reg.frame_begins(session, member, arg & 1 == 1, &mut c.fwd)
                } else {
                    h.reg.payload_continues(session, member, &mut c.fwd)
                };
                h.check_target(conn, target);
            }
            5 | 6 => {
                let Some(conn) = h.pick_open(arg) else { continue };
                let (session, member) = h.conns[&conn].open.expect("open");
                let how = match arg % 3 {
                    0 => Departure::Closed(1000 + u16::from(arg >> 4), "bye"),
                    1 => Departure::Failed(1002, "bad"),
                    _ => Departure::Vanished("gone"),
                };
                let leaving = Leaving {
                    how,
                    peer_mid_frame: arg & 0x40 != 0,
                    mid_message: arg & 0x80 != 0,
                };
                let left = h.reg.leave(session, conn, member, &leaving, h.now, &mut actions);
                assert!(left, "an open member must be able to leave");
                h.apply(actions);
                h.conns.get_mut(&conn).expect("open").open = None;
            }
            _ => {
                if arg == 0 {
                    h.reg.end_all(&mut actions);
                    h.apply(actions);
                    assert!(h.reg.is_empty());
                } else {
                    // Time passes (up to 127 s); waiting sessions expire.
                    h.now += Duration::from_secs(u64::from(arg >> 1));
                    h.reg.expire(h.now, &mut actions);
                    h.apply(actions);
                }
            }
        }
        h.check();
    }
});
