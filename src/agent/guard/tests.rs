use super::*;
use crate::agent::msg::build::*;

fn key(n: u8) -> Vec<u8> {
    strings(&[b"ssh-ed25519", &[n; 32]])
}

fn fp(n: u8) -> Fingerprint {
    Fingerprint::of(&key(n))
}

fn guard(keys: Option<Vec<Fingerprint>>) -> Guard {
    Guard::new(Policy {
        keys,
        ..Policy::default()
    })
}

/// Feed `input` from the dest; returns (consumed, to_agent, to_dest) and
/// clears the outputs.
fn dest(c: &mut Channel, g: &mut Guard, input: &[u8]) -> (usize, Vec<u8>, Vec<u8>) {
    let n = c.on_dest(g, input).unwrap();
    let a = c.to_agent().to_vec();
    c.agent_written(a.len());
    let d = c.to_dest().to_vec();
    c.dest_written(d.len());
    (n, a, d)
}

fn agent(c: &mut Channel, g: &Guard, input: &[u8]) -> Vec<u8> {
    c.on_agent(g, input).unwrap();
    let d = c.to_dest().to_vec();
    c.dest_written(d.len());
    d
}

fn records(c: &mut Channel) -> Vec<Record> {
    c.drain_records().collect()
}

const OK: [u8; 5] = [0, 0, 0, 1, SSH_AGENT_SUCCESS];

#[test]
fn identities_answer_is_filtered() {
    let mut g = guard(Some(vec![fp(2)]));
    let mut c = Channel::new();
    let req = msg(SSH_AGENTC_REQUEST_IDENTITIES, &[]);
    let (n, a, d) = dest(&mut c, &mut g, &req);
    assert_eq!((n, a, d), (5, req.clone(), vec![]));
    assert!(c.is_busy());
    let (k1, k2, k3) = (key(1), key(2), key(3));
    let ans = identities(&[(&k1, b"one"), (&k2, b"two"), (&k3, b"three")]);
    let out = agent(&mut c, &g, &ans);
    assert_eq!(out, identities(&[(&k2, b"two")]));
    assert!(!c.is_busy());
    let r = records(&mut c);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].request, "list-keys");
    assert_eq!(r[0].keys_shown, Some((1, 3)));
    assert_eq!(r[0].answer, Some("identities"));
}

#[test]
fn identities_unfiltered_without_agent_key() {
    let mut g = guard(None);
    let mut c = Channel::new();
    dest(&mut c, &mut g, &msg(11, &[]));
    let (k1, k2) = (key(1), key(2));
    let ans = identities(&[(&k1, b"one"), (&k2, b"two")]);
    assert_eq!(agent(&mut c, &g, &ans), ans);
    assert_eq!(records(&mut c)[0].keys_shown, Some((2, 2)));
}

#[test]
fn sign_with_exposed_key_passes_hidden_key_fails() {
    let mut g = guard(Some(vec![fp(1)]));
    let mut c = Channel::new();
    let data = userauth(b"SID", b"alice", b"publickey", &key(1), None);
    let req = sign(&key(1), &data, 0);
    let (_, a, d) = dest(&mut c, &mut g, &req);
    assert_eq!(a, req);
    assert!(d.is_empty());
    let sig = msg(SSH_AGENT_SIGN_RESPONSE, &strings(&[b"SIG"]));
    assert_eq!(agent(&mut c, &g, &sig), sig);
    let r = records(&mut c);
    assert_eq!(r[0].key, Some(fp(1)));
    assert_eq!(r[0].key_type.as_deref(), Some("ssh-ed25519"));
    assert_eq!(r[0].decision, Decision::Allowed);
    let s = r[0].signed.as_ref().unwrap();
    assert_eq!((s.kind, s.user.as_deref()), ("ssh-userauth", Some("alice")));

    let req = sign(&key(2), &sshsig(b"git"), 0);
    let (n, a, d) = dest(&mut c, &mut g, &req);
    assert_eq!((n, a.len()), (req.len(), 0), "never reaches the agent");
    assert_eq!(d, FAILURE_MESSAGE);
    let r = records(&mut c);
    assert_eq!(r[0].decision, Decision::Refused);
    assert_eq!(
        r[0].signed.as_ref().unwrap().namespace.as_deref(),
        Some("git")
    );
    assert_eq!(g.signatures, 1);
}

#[test]
fn max_signatures_refuses_the_next() {
    let mut g = guard(None);
    g.policy.max_signatures = Some(3);
    let mut c = Channel::new();
    let sig = msg(SSH_AGENT_SIGN_RESPONSE, &strings(&[b"SIG"]));
    for i in 0..5 {
        let (_, a, d) = dest(&mut c, &mut g, &sign(&key(1), b"x", 0));
        if i < 3 {
            assert!(!a.is_empty() && d.is_empty(), "{i}");
            agent(&mut c, &g, &sig);
        } else {
            assert!(a.is_empty(), "{i}");
            assert_eq!(d, FAILURE_MESSAGE);
        }
    }
    let r = records(&mut c);
    assert_eq!(
        r[3].reason.as_deref(),
        Some("--agent-max-signatures 3 reached")
    );
}

#[test]
fn manage_requests_are_refused_unless_allowed() {
    let add = msg(17, &strings(&[b"ssh-ed25519", b"pub", b"priv", b"c"]));
    let add_c = {
        let mut b = strings(&[b"ssh-ed25519", b"pub", b"priv", b"c"]);
        b.push(1);
        msg(25, &b)
    };
    let remove = msg(18, &strings(&[&key(1)]));
    let remove_all = msg(19, &[]);
    let sc_add = msg(20, &strings(&[b"/p11.so", b"1234"]));
    let sc_add_c = {
        let mut b = strings(&[b"/p11.so", b"1234"]);
        b.push(2);
        msg(26, &b)
    };
    let sc_remove = msg(21, &strings(&[b"/p11.so", b""]));
    let lock = msg(22, &strings(&[b"pw"]));
    let unlock = msg(23, &strings(&[b"pw"]));
    let all = [
        add, add_c, remove, remove_all, sc_add, sc_add_c, sc_remove, lock, unlock,
    ];
    let mut g = guard(None);
    let mut c = Channel::new();
    for m in &all {
        let (n, a, d) = dest(&mut c, &mut g, m);
        assert_eq!(
            (n, a.len(), d.as_slice()),
            (m.len(), 0, &FAILURE_MESSAGE[..])
        );
    }
    let r = records(&mut c);
    assert_eq!(r.len(), all.len());
    assert!(r.iter().all(|r| r.decision == Decision::Refused));
    assert_eq!(r[2].key, Some(fp(1)));

    let mut g = guard(Some(vec![fp(1)]));
    g.policy.allow_manage = true;
    for m in &all {
        let (_, a, d) = dest(&mut c, &mut g, m);
        assert_eq!((&a, d.len()), (m, 0));
        assert_eq!(agent(&mut c, &g, &OK), OK);
    }
    // Even with management allowed, a hidden key cannot be removed.
    let (_, a, d) = dest(&mut c, &mut g, &msg(18, &strings(&[&key(9)])));
    assert_eq!((a.len(), d), (0, FAILURE_MESSAGE.to_vec()));
}

#[test]
fn session_bind_passes_and_names_the_host() {
    let mut g = guard(None);
    let mut c = Channel::new();
    let host = key(7);
    let req = session_bind(&host, b"SESSION");
    let (_, a, _) = dest(&mut c, &mut g, &req);
    assert_eq!(a, req);
    assert_eq!(agent(&mut c, &g, &OK), OK);
    let r = records(&mut c);
    assert_eq!(r[0].extension.as_deref(), Some(SESSION_BIND));
    assert_eq!(r[0].key, Some(fp(7)));
    assert_eq!(r[0].answer, Some("success"));
    let data = userauth(b"SESSION", b"bob", b"publickey", &key(1), None);
    dest(&mut c, &mut g, &sign(&key(1), &data, 0));
    agent(&mut c, &g, &msg(14, &strings(&[b"S"])));
    let s = records(&mut c)[0].signed.clone().unwrap();
    assert_eq!(s.user.as_deref(), Some("bob"));
    assert_eq!(s.host_key, Some(fp(7)));
    // Another session id: no host known.
    let data = userauth(b"OTHER", b"bob", b"publickey", &key(1), None);
    dest(&mut c, &mut g, &sign(&key(1), &data, 0));
    agent(&mut c, &g, &msg(14, &strings(&[b"S"])));
    assert_eq!(records(&mut c)[0].signed.clone().unwrap().host_key, None);
    // The host-bound method carries the host key itself.
    let data = userauth(
        b"X",
        b"carol",
        b"publickey-hostbound-v00@openssh.com",
        &key(1),
        Some(&key(8)),
    );
    dest(&mut c, &mut g, &sign(&key(1), &data, 0));
    agent(&mut c, &g, &msg(14, &strings(&[b"S"])));
    assert_eq!(
        records(&mut c)[0].signed.clone().unwrap().host_key,
        Some(fp(8))
    );
    // A bind the agent rejected is not remembered.
    let mut c = Channel::new();
    dest(&mut c, &mut g, &session_bind(&host, b"S2"));
    agent(&mut c, &g, &FAILURE_MESSAGE);
    let data = userauth(b"S2", b"bob", b"publickey", &key(1), None);
    dest(&mut c, &mut g, &sign(&key(1), &data, 0));
    agent(&mut c, &g, &msg(14, &strings(&[b"S"])));
    assert_eq!(records(&mut c)[1].signed.clone().unwrap().host_key, None);
}

#[test]
fn other_extensions_refused_unless_allowed() {
    let mut g = guard(None);
    let mut c = Channel::new();
    let q = msg(27, &strings(&[b"query"]));
    let (_, a, d) = dest(&mut c, &mut g, &q);
    assert_eq!((a.len(), d), (0, FAILURE_MESSAGE.to_vec()));
    g.policy.allow_extensions = vec!["query".into()];
    let (_, a, _) = dest(&mut c, &mut g, &q);
    assert_eq!(a, q);
    let resp = msg(29, &strings(&[b"query", b"x"]));
    assert_eq!(agent(&mut c, &g, &resp), resp);
    let r = records(&mut c);
    assert_eq!(r[0].extension.as_deref(), Some("query"));
    assert_eq!(
        (r[0].decision, r[1].decision),
        (Decision::Refused, Decision::Allowed)
    );
}

#[test]
fn ssh1_and_unknown_requests_are_refused() {
    let mut g = guard(None);
    let mut c = Channel::new();
    for k in [1u8, 3, 7, 8, 9, 24, 0, 99, 255] {
        let (_, a, d) = dest(&mut c, &mut g, &msg(k, b"whatever"));
        assert_eq!((a.len(), d), (0, FAILURE_MESSAGE.to_vec()), "{k}");
    }
}

#[test]
fn confirm_yes_no_unavailable_and_budget() {
    let mut g = guard(None);
    g.policy.confirm = true;
    g.policy.max_signatures = Some(1);
    let mut c = Channel::new();
    let req = sign(&key(1), &sshsig(b"file"), 0);
    // Two requests at once: the second waits behind the first.
    let two = [req.clone(), req.clone()].concat();
    let (n, a, d) = dest(&mut c, &mut g, &two);
    assert_eq!((n, a.len(), d.len()), (req.len(), 0, 0));
    assert_eq!(c.awaiting_confirm().unwrap().request, "sign");
    assert_eq!(c.on_dest(&mut g, &two[n..]).unwrap(), 0, "busy");
    c.confirm(&mut g, true);
    assert_eq!(c.to_agent(), &req[..]);
    c.agent_written(req.len());
    agent(&mut c, &g, &msg(14, &strings(&[b"S"])));
    // The second: over budget, refused without asking.
    let (n2, a, d) = dest(&mut c, &mut g, &two[n..]);
    assert_eq!((n2, a.len(), d), (req.len(), 0, FAILURE_MESSAGE.to_vec()));
    assert!(c.awaiting_confirm().is_none());
    // Two channels waiting at once: the budget is checked again at yes.
    g.policy.max_signatures = Some(2);
    let mut c2 = Channel::new();
    dest(&mut c, &mut g, &req);
    dest(&mut c2, &mut g, &req);
    c2.confirm(&mut g, true);
    c.confirm(&mut g, true);
    assert_eq!((c.to_agent().len(), c.to_dest()), (0, &FAILURE_MESSAGE[..]));
    assert_eq!(c2.to_agent(), &req[..]);
    c.dest_written(5);
    // No: refused.
    g.policy.max_signatures = None;
    dest(&mut c, &mut g, &req);
    c.confirm(&mut g, false);
    assert_eq!((c.to_agent().len(), c.to_dest()), (0, &FAILURE_MESSAGE[..]));
    c.dest_written(5);
    // No askpass: refused.
    dest(&mut c, &mut g, &req);
    c.confirm_unavailable("no SSH_ASKPASS".into());
    assert_eq!(c.to_dest(), &FAILURE_MESSAGE[..]);
    let r = records(&mut c);
    let reasons: Vec<_> = r
        .iter()
        .map(|r| r.reason.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        reasons,
        [
            "confirmed by the origin's user",
            "--agent-max-signatures 1 reached",
            "--agent-max-signatures 2 reached",
            "not confirmed by the origin's user",
            "no SSH_ASKPASS"
        ]
    );
    assert_eq!(g.signatures, 2);
}

#[test]
fn byte_by_byte_input_works() {
    let mut g = guard(Some(vec![fp(1)]));
    let mut c = Channel::new();
    let req = sign(&key(1), b"data", 0);
    for (i, b) in req.iter().enumerate() {
        let (n, a, _) = dest(&mut c, &mut g, std::slice::from_ref(b));
        assert_eq!(n, 1);
        assert_eq!(a.is_empty(), i + 1 < req.len());
    }
    let sig = msg(14, &strings(&[b"SIG"]));
    for b in &sig[..sig.len() - 1] {
        assert!(agent(&mut c, &g, std::slice::from_ref(b)).is_empty());
    }
    assert_eq!(agent(&mut c, &g, &sig[sig.len() - 1..]), sig);
}

#[test]
fn malformed_requests_close_and_are_never_forwarded() {
    let mut bad_sign = sign(&key(1), b"data", 0);
    // Inner key length runs past the message.
    bad_sign[8] = 0xff;
    let mut trailing = sign(&key(1), b"data", 0);
    trailing.push(0);
    trailing[3] += 1;
    let over = ((MAX_MESSAGE_BYTES + 1) as u32).to_be_bytes().to_vec();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![0, 0, 0, 0]),
        ("oversized", over),
        ("huge", vec![0xff, 0xff, 0xff, 0xff, 11]),
        ("truncated sign", bad_sign),
        ("trailing", trailing),
        ("list with body", msg(11, &[0])),
        (
            "bad session-bind",
            msg(27, &strings(&[SESSION_BIND.as_bytes(), b"x"])),
        ),
    ];
    for (name, input) in cases {
        let mut g = guard(None);
        let mut c = Channel::new();
        let v = c.on_dest(&mut g, &input).unwrap_err();
        assert_eq!(v.from, Peer::Dest, "{name}");
        assert!(c.to_agent().is_empty(), "{name}: forwarded");
        assert!(c.to_dest().is_empty(), "{name}");
        let r = records(&mut c);
        assert_eq!(r[0].decision, Decision::Closed, "{name}");
        assert!(v.to_string().starts_with("agent guard: dest sent "), "{v}");
    }
    // An oversized length is refused before its body arrives.
    let mut g = guard(None);
    let mut c = Channel::new();
    let over = ((MAX_MESSAGE_BYTES + 1) as u32).to_be_bytes();
    assert!(c.on_dest(&mut g, &over[..3]).is_ok());
    assert!(c.on_dest(&mut g, &over[3..]).is_err());
    // The maximum itself is buffered, not refused.
    let mut c = Channel::new();
    let cap = (MAX_MESSAGE_BYTES as u32).to_be_bytes();
    assert_eq!(c.on_dest(&mut g, &cap).unwrap(), 4);
    assert!(c.has_partial_request());
}

#[test]
fn agent_misbehaviour_is_a_violation() {
    let g = guard(None);
    let mut c = Channel::new();
    let v = c.on_agent(&g, &OK).unwrap_err();
    assert_eq!(v.from, Peer::Agent);
    let mut g = guard(None);
    dest(&mut c, &mut g, &msg(11, &[]));
    assert!(c.on_agent(&g, &[0, 0, 0, 5, 12, 0, 0, 0, 1]).is_err());
    let mut c = Channel::new();
    dest(&mut c, &mut g, &msg(11, &[]));
    // An answer and then bytes nobody asked for.
    let two = [identities(&[]), OK.to_vec()].concat();
    assert!(c.on_agent(&g, &two).is_err());
    let mut c = Channel::new();
    dest(&mut c, &mut g, &msg(11, &[]));
    assert!(c.on_agent(&g, &[0x7f, 0, 0, 0]).is_err());
}

#[test]
fn abandon_records_the_request_in_flight() {
    let mut g = guard(None);
    let mut c = Channel::new();
    dest(&mut c, &mut g, &msg(11, &[]));
    c.abandon();
    let r = records(&mut c);
    assert_eq!(r[0].answer, Some("none (channel closed)"));
    assert!(!c.is_busy());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut g = guard(Some(vec![fp(1)]));
    let mut c = Channel::new();
    // list, hidden sign (refused by the guard), list: the refusal must not
    // overtake the first answer.
    let input = [msg(11, &[]), sign(&key(2), b"d", 0), msg(11, &[])].concat();
    let (n, a, d) = dest(&mut c, &mut g, &input);
    assert_eq!((n, a.len(), d.len()), (5, 5, 0));
    let ids = identities(&[]);
    let out = agent(&mut c, &g, &ids);
    assert_eq!(out, ids);
    let (n2, a, d) = dest(&mut c, &mut g, &input[n..]);
    assert_eq!(n2, input.len() - n);
    assert_eq!((a.len(), d), (5, FAILURE_MESSAGE.to_vec()));
    assert!(c.is_busy());
}
