//! Deterministic tests of the session core: a registry driven through
//! events with plain connection numbers, no sockets.

use super::*;

const ADM: [u8; 20] = [7; 20];
const OTHER: [u8; 20] = [8; 20];

/// The simulated clock's origin: every test's time is an offset from it.
fn t0() -> Instant {
    use std::sync::OnceLock;
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn ack(reg: &mut Registry, key: SessionKey, seq: u32) {
    let pong = crate::control::Control::PeerJoined {
        seq: Some(seq),
        addr: "127.0.0.1:1",
    }
    .to_vec();
    reg.origin_pong(key, &pong);
}

/// Session `key` with origin 1 and dest 2, the join acknowledged.
fn paired(reg: &mut Registry) -> (SessionKey, Uuid) {
    paired_as(reg, None)
}

/// As `paired`, the origin proposing `proposed`.
fn paired_as(reg: &mut Registry, proposed: Option<Uuid>) -> (SessionKey, Uuid) {
    let mut actions = Vec::new();
    let (key, id) = reg.open_origin(1, proposed, ADM, 10, &mut actions).unwrap();
    assert!(actions.is_empty());
    let (k2, origin, seq) = reg.join_dest(2, id, ADM, &mut actions).unwrap();
    assert_eq!((k2, origin), (key, Some(1)));
    assert_eq!(
        actions,
        vec![Action::PeerJoined {
            to: 1,
            seq,
            peer: 2
        }]
    );
    ack(reg, key, seq);
    (key, id)
}

fn clean(how: Departure<'_>) -> Leaving<'_> {
    Leaving {
        how,
        peer_mid_frame: false,
        mid_message: false,
    }
}

#[test]
fn origin_data_waits_for_the_ack_of_the_pairing() {
    let mut reg = Registry::new();
    let mut actions = Vec::new();
    let (key, id) = reg.open_origin(1, None, ADM, 10, &mut actions).unwrap();
    let mut fwd = Forwarding::default();
    // Unpaired: nothing to forward to; the dest's frames always go.
    assert_eq!(reg.frame_begins(key, Member::Origin, false, &mut fwd), None);
    let (_, _, seq) = reg.join_dest(2, id, ADM, &mut actions).unwrap();
    assert_eq!(reg.frame_begins(key, Member::Origin, false, &mut fwd), None);
    let mut back = Forwarding::default();
    assert_eq!(
        reg.frame_begins(key, Member::Dest, false, &mut back),
        Some(1)
    );
    // A pong for an older change, or a keepalive, is not the ack.
    ack(&mut reg, key, seq.wrapping_sub(1));
    reg.origin_pong(key, b"");
    assert_eq!(reg.frame_begins(key, Member::Origin, false, &mut fwd), None);
    ack(&mut reg, key, seq);
    assert_eq!(
        reg.frame_begins(key, Member::Origin, false, &mut fwd),
        Some(2)
    );
    assert_eq!(
        reg.payload_continues(key, Member::Origin, &mut fwd),
        Some(2)
    );
}

#[test]
fn a_message_never_reaches_the_dest_of_another_epoch() {
    let mut reg = Registry::new();
    let (key, id) = paired(&mut reg);
    let mut fwd = Forwarding::default();
    // The origin begins a fragmented message toward dest 2.
    assert_eq!(
        reg.frame_begins(key, Member::Origin, false, &mut fwd),
        Some(2)
    );
    let mut actions = Vec::new();
    assert!(reg.leave(
        key,
        2,
        Member::Dest,
        &clean(Departure::Closed(1000, "")),
        t0(),
        &mut actions
    ));
    // The rest of the frame and the message go nowhere...
    assert_eq!(reg.payload_continues(key, Member::Origin, &mut fwd), None);
    assert_eq!(reg.frame_begins(key, Member::Origin, true, &mut fwd), None);
    // ...even once dest 3 has joined and the origin acked it.
    actions.clear();
    let (_, _, seq) = reg.join_dest(3, id, ADM, &mut actions).unwrap();
    ack(&mut reg, key, seq);
    assert_eq!(reg.frame_begins(key, Member::Origin, true, &mut fwd), None);
    assert_eq!(reg.payload_continues(key, Member::Origin, &mut fwd), None);
    // A new message goes to dest 3.
    assert_eq!(
        reg.frame_begins(key, Member::Origin, false, &mut fwd),
        Some(3)
    );
    assert_eq!(
        reg.payload_continues(key, Member::Origin, &mut fwd),
        Some(3)
    );
}

#[test]
fn dest_leaving_tells_the_origin_and_the_session_waits() {
    let mut reg = Registry::new();
    let (key, id) = paired(&mut reg);
    let mut actions = Vec::new();
    let leaving = clean(Departure::Closed(close::NO_STATUS, ""));
    assert!(reg.leave(key, 2, Member::Dest, &leaving, t0(), &mut actions));
    assert_eq!(
        actions,
        vec![
            Action::Close {
                conn: 2,
                code: close::NORMAL,
                reason: String::new()
            },
            Action::Discard { conn: 1 },
            Action::PeerLeft {
                to: 1,
                seq: 2,
                code: close::NORMAL,
                reason: String::new()
            },
        ]
    );
    assert_eq!(reg.view(key).map(|v| v.dest), Some(None));
    // A second departure of the same dest is stale: nothing happens.
    actions.clear();
    assert!(!reg.leave(key, 2, Member::Dest, &leaving, t0(), &mut actions));
    assert!(actions.is_empty());
    assert!(reg.join_dest(3, id, ADM, &mut actions).is_ok());
}

#[test]
fn dest_leaving_inside_a_frame_toward_the_origin_ends_the_session() {
    for (peer_mid_frame, mid_message) in [(true, false), (false, true)] {
        let mut reg = Registry::new();
        let (key, id) = paired(&mut reg);
        let mut actions = Vec::new();
        let leaving = Leaving {
            how: Departure::Vanished("reset"),
            peer_mid_frame,
            mid_message,
        };
        assert!(reg.leave(key, 2, Member::Dest, &leaving, t0(), &mut actions));
        assert_eq!(
            actions,
            vec![
                Action::Close {
                    conn: 2,
                    code: close::ABNORMAL,
                    reason: "reset".into()
                },
                Action::Discard { conn: 1 },
                Action::Close {
                    conn: 1,
                    code: close::INTERNAL_ERROR,
                    reason: "peer vanished inside a frame".into()
                },
            ]
        );
        assert!(reg.is_empty());
        let err = reg.join_dest(3, id, ADM, &mut actions).unwrap_err();
        assert_eq!(err.status, 404);
    }
}

#[test]
fn origin_departures_end_the_session_with_the_right_codes() {
    let cases = [
        (
            Departure::Closed(4242, "done"),
            (4242, "done"),
            (4242, "done"),
        ),
        (
            Departure::Closed(close::NO_STATUS, ""),
            (close::NORMAL, ""),
            (close::NORMAL, ""),
        ),
        (
            Departure::Failed(close::PROTOCOL_ERROR, "unmasked"),
            (close::PROTOCOL_ERROR, "unmasked"),
            (close::ORIGIN_GONE, "origin gone (protocol error)"),
        ),
        (
            Departure::Vanished("eof"),
            (close::INTERNAL_ERROR, "eof"),
            (close::ORIGIN_GONE, "origin gone"),
        ),
    ];
    for (how, (oc, or), (dc, dr)) in cases {
        let mut reg = Registry::new();
        let (key, _) = paired(&mut reg);
        let mut actions = Vec::new();
        assert!(reg.leave(key, 1, Member::Origin, &clean(how), t0(), &mut actions));
        assert_eq!(
            actions,
            vec![
                Action::Close {
                    conn: 1,
                    code: oc,
                    reason: or.into()
                },
                Action::Close {
                    conn: 2,
                    code: dc,
                    reason: dr.into()
                },
            ]
        );
        assert!(reg.is_empty());
    }
}

#[test]
fn refusals() {
    let mut reg = Registry::new();
    let mut actions = Vec::new();
    let (_, id) = reg.open_origin(1, None, ADM, 1, &mut actions).unwrap();
    let status = |r: Result<(SessionKey, Uuid), Refusal>| r.map(|_| ()).unwrap_err().status;
    assert_eq!(status(reg.open_origin(5, None, ADM, 1, &mut actions)), 503);
    assert_eq!(
        status(reg.open_origin(5, Some(id), OTHER, 9, &mut actions)),
        409
    );
    let join = |reg: &mut Registry, id, adm, actions: &mut Vec<Action>| {
        reg.join_dest(6, id, adm, actions)
            .map(|_| ())
            .unwrap_err()
            .status
    };
    assert_eq!(join(&mut reg, Uuid::new_v4(), ADM, &mut actions), 404);
    assert_eq!(join(&mut reg, id, OTHER, &mut actions), 403);
    reg.join_dest(2, id, ADM, &mut actions).unwrap();
    assert_eq!(join(&mut reg, id, ADM, &mut actions), 409);
    assert_eq!(reg.paired(), 1);
}

#[test]
fn the_same_origin_replaces_its_session() {
    let mut reg = Registry::new();
    let (key, id) = paired(&mut reg);
    let mut actions = Vec::new();
    let (new_key, new_id) = reg.open_origin(9, Some(id), ADM, 10, &mut actions).unwrap();
    assert_eq!(new_id, id);
    assert_eq!(
        actions,
        vec![
            Action::Close {
                conn: 1,
                code: close::REPLACED,
                reason: "replaced by a new origin connection".into()
            },
            Action::Close {
                conn: 2,
                code: close::ORIGIN_RECONNECTED,
                reason: "origin reconnected; join again".into()
            },
        ]
    );
    assert!(reg.is_member(new_key, 9, Member::Origin));
    // The old members are stale now, even if the slot was reused.
    assert!(!reg.is_member(key, 1, Member::Origin));
    actions.clear();
    assert!(!reg.leave(
        key,
        2,
        Member::Dest,
        &clean(Departure::Vanished("x")),
        t0(),
        &mut actions
    ));
    assert!(actions.is_empty());
}

#[test]
fn shutdown_closes_everyone_with_1001() {
    let mut reg = Registry::new();
    paired(&mut reg);
    let mut actions = Vec::new();
    reg.open_origin(3, None, ADM, 10, &mut actions).unwrap();
    reg.end_all(&mut actions);
    assert!(reg.is_empty());
    let mut closed: Vec<(ConnKey, u16)> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Close { conn, code, .. } => Some((*conn, *code)),
            _ => None,
        })
        .collect();
    closed.sort();
    assert_eq!(
        closed,
        vec![
            (1, close::GOING_AWAY),
            (2, close::GOING_AWAY),
            (3, close::GOING_AWAY)
        ]
    );
}

const GRACE: Duration = Duration::from_secs(30);

fn vanished(why: &str) -> Leaving<'_> {
    clean(Departure::Vanished(why))
}

#[test]
fn a_vanished_origin_is_awaited_and_takes_its_session_back() {
    let mut reg = Registry::with_origin_grace(GRACE);
    let (key, id) = paired_as(&mut reg, Some(Uuid::new_v4()));
    let mut actions = Vec::new();
    assert!(reg.leave(key, 1, Member::Origin, &vanished("eof"), t0(), &mut actions));
    assert_eq!(
        actions,
        vec![
            Action::Close {
                conn: 1,
                code: close::INTERNAL_ERROR,
                reason: "eof".into()
            },
            Action::Discard { conn: 2 },
            Action::PeerLeft {
                to: 2,
                seq: 2,
                code: close::ORIGIN_GONE,
                reason: ORIGIN_AWAY.into()
            },
        ]
    );
    assert!(reg.awaits_origin(&id));
    assert_eq!((reg.len(), reg.paired(), reg.awaiting_origin()), (1, 0, 1));
    assert_eq!(
        reg.view(key).map(|v| (v.origin, v.dest)),
        Some((None, Some(2)))
    );
    assert_eq!(reg.next_expiry(), Some(t0() + GRACE));
    // The dest's frames go nowhere meanwhile.
    let mut back = Forwarding::default();
    assert_eq!(reg.frame_begins(key, Member::Dest, false, &mut back), None);
    // Not yet expired.
    actions.clear();
    reg.expire(t0() + GRACE - Duration::from_millis(1), &mut actions);
    assert!(actions.is_empty());
    // A stranger cannot take it (another admission value).
    let err = reg.open_origin(8, Some(id), OTHER, 10, &mut actions);
    assert_eq!(err.map(|_| ()).unwrap_err().status, 409);
    // The origin is back: both hear of the pairing, with one seq.
    assert_eq!(
        reg.open_origin(9, Some(id), ADM, 10, &mut actions),
        Ok((key, id))
    );
    assert_eq!(
        actions,
        vec![
            Action::PeerJoined {
                to: 9,
                seq: 3,
                peer: 2
            },
            Action::PeerJoined {
                to: 2,
                seq: 3,
                peer: 9
            },
        ]
    );
    assert!(!reg.awaits_origin(&id));
    assert_eq!((reg.paired(), reg.awaiting_origin()), (1, 0));
    // A message the dest began before is never completed to the new
    // origin; a new one is. The origin's data waits for its ack.
    assert_eq!(reg.frame_begins(key, Member::Dest, true, &mut back), None);
    assert_eq!(
        reg.frame_begins(key, Member::Dest, false, &mut back),
        Some(9)
    );
    let mut fwd = Forwarding::default();
    assert_eq!(reg.frame_begins(key, Member::Origin, false, &mut fwd), None);
    ack(&mut reg, key, 3);
    assert_eq!(
        reg.frame_begins(key, Member::Origin, false, &mut fwd),
        Some(2)
    );
    // The old deadline is stale now.
    actions.clear();
    reg.expire(t0() + GRACE * 2, &mut actions);
    assert!(actions.is_empty());
    assert_eq!(reg.next_expiry(), None);
    assert!(reg.is_member(key, 9, Member::Origin));
}

#[test]
fn a_dest_joining_while_the_origin_is_away_waits_for_it() {
    let mut reg = Registry::with_origin_grace(GRACE);
    let mut actions = Vec::new();
    let (key, id) = reg
        .open_origin(1, Some(Uuid::new_v4()), ADM, 10, &mut actions)
        .unwrap();
    assert!(reg.leave(
        key,
        1,
        Member::Origin,
        &vanished("ping timeout"),
        t0(),
        &mut actions
    ));
    actions.clear();
    // No 404: the dest joins, and nobody is told yet.
    let (k, origin, _) = reg.join_dest(3, id, ADM, &mut actions).unwrap();
    assert_eq!((k, origin), (key, None));
    assert!(actions.is_empty());
    // A second dest is still refused.
    let err = reg.join_dest(4, id, ADM, &mut actions).map(|_| ());
    assert_eq!(err.unwrap_err().status, 409);
    reg.open_origin(5, Some(id), ADM, 10, &mut actions).unwrap();
    let seq = match actions.first() {
        Some(Action::PeerJoined {
            to: 5,
            seq,
            peer: 3,
        }) => *seq,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        actions[1],
        Action::PeerJoined {
            to: 3,
            seq,
            peer: 5
        }
    );
    assert_eq!(reg.paired(), 1);
}

#[test]
fn the_grace_expires_and_the_dest_is_told_the_origin_is_gone() {
    let mut reg = Registry::with_origin_grace(GRACE);
    let (key, id) = paired_as(&mut reg, Some(Uuid::new_v4()));
    let mut actions = Vec::new();
    let later = t0() + Duration::from_secs(5);
    assert!(reg.leave(
        key,
        1,
        Member::Origin,
        &vanished("eof"),
        later,
        &mut actions
    ));
    actions.clear();
    reg.expire(later + GRACE, &mut actions);
    assert_eq!(
        actions,
        vec![Action::Close {
            conn: 2,
            code: close::ORIGIN_GONE,
            reason: "origin gone (did not come back in time)".into()
        }]
    );
    assert!(reg.is_empty());
    assert_eq!(reg.next_expiry(), None);
    let err = reg.join_dest(3, id, ADM, &mut actions).map(|_| ());
    assert_eq!(err.unwrap_err().status, 404);
}

#[test]
fn a_dest_leaving_while_the_origin_is_away_leaves_the_session_waiting() {
    let mut reg = Registry::with_origin_grace(GRACE);
    let (key, id) = paired_as(&mut reg, Some(Uuid::new_v4()));
    let mut actions = Vec::new();
    assert!(reg.leave(key, 1, Member::Origin, &vanished("eof"), t0(), &mut actions));
    actions.clear();
    let bye = clean(Departure::Closed(close::NORMAL, "bye"));
    assert!(reg.leave(key, 2, Member::Dest, &bye, t0(), &mut actions));
    assert_eq!(
        actions,
        vec![Action::Close {
            conn: 2,
            code: close::NORMAL,
            reason: "bye".into()
        }]
    );
    assert!(reg.awaits_origin(&id));
    actions.clear();
    reg.expire(t0() + GRACE, &mut actions);
    assert!(actions.is_empty());
    assert!(reg.is_empty());
}

#[test]
fn only_a_vanished_origin_between_frames_is_awaited() {
    let mid_frame = Leaving {
        how: Departure::Vanished("reset"),
        peer_mid_frame: true,
        mid_message: false,
    };
    let mid_message = Leaving {
        how: Departure::Vanished("reset"),
        peer_mid_frame: false,
        mid_message: true,
    };
    for leaving in [
        clean(Departure::Closed(close::NORMAL, "origin exiting")),
        clean(Departure::Closed(close::NO_STATUS, "")),
        clean(Departure::Failed(close::PROTOCOL_ERROR, "unmasked")),
        mid_frame,
        mid_message,
    ] {
        let mut reg = Registry::with_origin_grace(GRACE);
        let (key, _) = paired_as(&mut reg, Some(Uuid::new_v4()));
        let mut actions = Vec::new();
        assert!(reg.leave(key, 1, Member::Origin, &leaving, t0(), &mut actions));
        assert!(reg.is_empty(), "{leaving:?}");
        assert_eq!(reg.next_expiry(), None);
    }
    // A zero grace disables the wait.
    let mut reg = Registry::with_origin_grace(Duration::ZERO);
    let (key, _) = paired_as(&mut reg, Some(Uuid::new_v4()));
    let mut actions = Vec::new();
    assert!(reg.leave(key, 1, Member::Origin, &vanished("eof"), t0(), &mut actions));
    assert!(reg.is_empty());
    // An origin given a relay-chosen id (it never names it to come back,
    // like the Node clients) is not awaited either.
    let mut reg = Registry::with_origin_grace(GRACE);
    let (key, _) = paired(&mut reg);
    assert!(reg.leave(key, 1, Member::Origin, &vanished("eof"), t0(), &mut actions));
    assert!(reg.is_empty());
}

#[test]
fn sessions_awaiting_their_origin_count_against_the_limit() {
    let mut reg = Registry::with_origin_grace(GRACE);
    let mut actions = Vec::new();
    let (key, id) = reg
        .open_origin(1, Some(Uuid::new_v4()), ADM, 1, &mut actions)
        .unwrap();
    assert!(reg.leave(key, 1, Member::Origin, &vanished("eof"), t0(), &mut actions));
    let err = reg.open_origin(2, None, ADM, 1, &mut actions).map(|_| ());
    assert_eq!(err.unwrap_err().status, 503);
    // Its own origin still gets it back at the limit.
    assert_eq!(
        reg.open_origin(3, Some(id), ADM, 1, &mut actions),
        Ok((key, id))
    );
}

#[test]
fn an_origin_lost_twice_in_one_instant_counts_once() {
    // Found by fuzz/relay_session: two identical deadlines for one session.
    let mut reg = Registry::with_origin_grace(GRACE);
    let (key, id) = paired_as(&mut reg, Some(Uuid::new_v4()));
    let mut actions = Vec::new();
    assert!(reg.leave(key, 1, Member::Origin, &vanished("eof"), t0(), &mut actions));
    reg.open_origin(3, Some(id), ADM, 10, &mut actions).unwrap();
    assert!(reg.leave(key, 3, Member::Origin, &vanished("eof"), t0(), &mut actions));
    assert_eq!(reg.awaiting_origin(), 1);
    actions.clear();
    reg.expire(t0() + GRACE, &mut actions);
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(reg.is_empty());
    assert_eq!(reg.next_expiry(), None);
}
