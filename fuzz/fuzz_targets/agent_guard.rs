//! Feeds arbitrary bytes to the ssh-agent guard as the dest's requests and
//! the agent's answers, split where the input says, under a policy the
//! input chooses. The guard must never panic, never forward a message it
//! did not parse whole, never answer more than once per request, and never
//! show or sign with a key outside the policy.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sockrelay::agent::msg::{parse_answer, parse_request, Answer, Request};
use sockrelay::agent::wire::frame_len;
use sockrelay::agent::{key_fingerprint, Channel, Fingerprint, Guard, Policy};

/// Every whole message in `bytes` must parse (the guard only forwards
/// what it parsed); returns them.
fn frames(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Ok(Some(n)) = frame_len(bytes) {
        out.push(&bytes[4..n]);
        bytes = &bytes[n..];
    }
    assert!(bytes.is_empty(), "partial message emitted");
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let allowed = Fingerprint([mode; 32]);
    let mut g = Guard::new(Policy {
        keys: (mode & 1 != 0).then(|| vec![allowed]),
        allow_manage: mode & 2 != 0,
        allow_extensions: if mode & 4 != 0 { vec!["query".into()] } else { vec![] },
        max_signatures: (mode & 8 != 0).then_some(u64::from(mode >> 4)),
        confirm: mode & 16 != 0,
    });
    let mut c = Channel::new();
    let mut dest_backlog: Vec<u8> = Vec::new();
    while let Some((&op, tail)) = rest.split_first() {
        let len = (tail.first().copied().unwrap_or(0) as usize).min(tail.len().saturating_sub(1));
        let chunk = &tail[1.min(tail.len())..1.min(tail.len()) + len];
        rest = &tail[(1 + len).min(tail.len())..];
        match op % 4 {
            0 | 1 => {
                dest_backlog.extend_from_slice(chunk);
                match c.on_dest(&mut g, &dest_backlog) {
                    Ok(n) => {
                        assert!(n <= dest_backlog.len());
                        dest_backlog.drain(..n);
                    }
                    Err(_) => return,
                }
            }
            2 => {
                if c.on_agent(&g, chunk).is_err() {
                    return;
                }
            }
            _ => c.confirm(&mut g, chunk.first().is_some_and(|b| b & 1 != 0)),
        }
        for body in frames(c.to_agent()) {
            let req = parse_request(body).expect("forwarded only parsed requests");
            if let Request::Sign { key, .. } = req {
                assert!(g.policy.exposes(&key_fingerprint(key)));
            }
            if req.is_manage() {
                assert!(g.policy.allow_manage);
            }
        }
        let n = c.to_agent().len();
        c.agent_written(n);
        for body in frames(c.to_dest()) {
            if let Ok(Answer::Identities(keys)) = parse_answer(body) {
                for (k, _) in keys {
                    assert!(g.policy.exposes(&key_fingerprint(k)));
                }
            }
        }
        let n = c.to_dest().len();
        c.dest_written(n);
        if let Some(max) = g.policy.max_signatures {
            assert!(g.signatures <= max);
        }
        c.drain_records().for_each(drop);
    }
});
