//! Policy and the per-connection state machine.
//!
//! One request at a time: a request from the dest is either answered by the
//! guard itself (`SSH_AGENT_FAILURE`), or waits for the origin user's
//! confirmation, or goes to the agent; the next request is not taken until
//! the agent's answer came back and went out. OpenSSH's clients never
//! pipeline, and this keeps answers in request order without a queue: while
//! busy, [`Channel::on_dest`] consumes nothing and the mux's credit holds the
//! dest back.
//!
//! ```text
//! Idle ──request──▶ refuse: FAILURE to dest ─────────────▶ Idle
//!   │                forward: bytes to agent ──▶ Agent ──answer──▶ Idle
//!   └──sign + confirm──▶ Confirm ──yes──▶ Agent / ──no──▶ Idle
//! malformed / truncated / oversized from either side: Violation (close)
//! ```

use std::fmt;

use super::msg::*;
use super::wire::*;
use super::{key_fingerprint, key_type, Fingerprint};

/// Session-binds remembered per connection (ssh sends one per hop).
const MAX_BINDS: usize = 16;
/// A reassembly buffer bigger than this is dropped once empty, so an idle
/// channel keeps no large allocation.
const KEEP_BUFFER_BYTES: usize = 4096;

/// What the origin allows (command-line options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keys exposed to the dest; None = every key (`--ssh-agent` alone).
    pub keys: Option<Vec<Fingerprint>>,
    /// Add, remove, lock, unlock, smartcard requests are passed on.
    pub allow_manage: bool,
    /// Extensions passed on besides `session-bind@openssh.com`.
    pub allow_extensions: Vec<String>,
    /// Signatures allowed over the whole run.
    pub max_signatures: Option<u64>,
    /// Each signature waits for the origin user's yes.
    pub confirm: bool,
}

impl Policy {
    pub fn exposes(&self, fp: &Fingerprint) -> bool {
        self.keys.as_ref().is_none_or(|k| k.contains(fp))
    }
}

/// The policy and what is counted across every channel of the run.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub policy: Policy,
    /// Signatures passed to the agent so far.
    pub signatures: u64,
}

impl Guard {
    pub fn new(policy: Policy) -> Guard {
        Guard {
            policy,
            signatures: 0,
        }
    }

    /// Why one more signature is not allowed; None = allowed.
    fn over_budget(&self) -> Option<String> {
        self.policy
            .max_signatures
            .filter(|&max| self.signatures >= max)
            .map(|max| format!("--agent-max-signatures {max} reached"))
    }
}

/// What the guard did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Passed to the agent.
    Allowed,
    /// Answered with `SSH_AGENT_FAILURE` by the guard.
    Refused,
    /// Malformed: the channel is closed.
    Closed,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Refused => "refused",
            Decision::Closed => "closed",
        }
    }
}

/// What a signature is for, as far as its data tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedInfo {
    /// `ssh-userauth`, `sshsig` or `other`.
    pub kind: &'static str,
    /// userauth: the user name on the server.
    pub user: Option<String>,
    /// userauth: the server's host key, from the host-bound method or the
    /// connection's `session-bind`.
    pub host_key: Option<Fingerprint>,
    /// sshsig: the namespace (`git`, `file`, …).
    pub namespace: Option<String>,
}

/// One audit record: what was asked, what the guard decided, and what the
/// agent answered. The loop adds time, dest address and channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub request: &'static str,
    /// Extension requests: the extension's name.
    pub extension: Option<String>,
    /// The key concerned (sign, remove-key; session-bind: the host key).
    pub key: Option<Fingerprint>,
    pub key_type: Option<String>,
    pub decision: Decision,
    pub reason: Option<String>,
    /// What the agent answered to an allowed request (`success`,
    /// `failure`, `signature`, …); None if refused or never answered.
    pub answer: Option<&'static str>,
    /// list-keys: (keys shown, keys the agent holds).
    pub keys_shown: Option<(usize, usize)>,
    pub signed: Option<SignedInfo>,
}

impl Record {
    fn new(request: &'static str) -> Record {
        Record {
            request,
            extension: None,
            key: None,
            key_type: None,
            decision: Decision::Allowed,
            reason: None,
            answer: None,
            keys_shown: None,
            signed: None,
        }
    }
}

/// Which side broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Dest,
    Agent,
}

/// A protocol violation: the channel must be closed with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub from: Peer,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from {
            Peer::Dest => write!(f, "agent guard: dest sent {}", self.what),
            Peer::Agent => write!(f, "agent guard: the agent sent {}", self.what),
        }
    }
}

impl std::error::Error for Violation {}

fn violation(from: Peer, e: WireError) -> Violation {
    let what = match e {
        WireError::Empty => "an empty message".to_string(),
        WireError::Oversized(n) => {
            format!("a message of {n} bytes (over the {MAX_MESSAGE_BYTES}-byte limit)")
        }
        WireError::Truncated(w) => format!("a truncated {w}"),
        WireError::Trailing(w) => format!("a {w} with trailing bytes"),
        WireError::Invalid(w) => format!("an invalid {w}"),
    };
    Violation { from, what }
}

/// What the request in flight expects back.
#[derive(Debug)]
enum Expect {
    Identities,
    SessionBind {
        session_id: Vec<u8>,
        host: Fingerprint,
    },
    Plain,
}

#[derive(Debug)]
struct Pending {
    record: Record,
    expect: Expect,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Idle,
    /// The request went to the agent; its answer is awaited.
    Agent(Pending),
    /// A signature waits for the user; the whole request frame is kept.
    Confirm(Pending, Vec<u8>),
}

/// One agent connection (one channel) through the guard.
#[derive(Debug, Default)]
pub struct Channel {
    /// A request from the dest being reassembled.
    from_dest: Vec<u8>,
    /// An answer from the agent being reassembled.
    from_agent: Vec<u8>,
    to_agent: Vec<u8>,
    to_dest: Vec<u8>,
    state: State,
    /// (session id, host key) of this connection's accepted session-binds.
    binds: Vec<(Vec<u8>, Fingerprint)>,
    records: Vec<Record>,
}

/// Where the next whole frame is: reassembled in `buf`, or whole in
/// `input` (no copy). Returns (bytes of `input` used, frame complete).
fn assemble(buf: &mut Vec<u8>, input: &[u8]) -> Result<(usize, bool), WireError> {
    if buf.is_empty() {
        if let Some(n) = frame_len(input)? {
            return Ok((n, true));
        }
    }
    let mut used = 0;
    loop {
        let want = if buf.len() < LEN_BYTES {
            LEN_BYTES - buf.len()
        } else {
            // frame_len validated the header when it became complete.
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            LEN_BYTES + len - buf.len()
        };
        let k = want.min(input.len() - used);
        buf.extend_from_slice(&input[used..used + k]);
        used += k;
        if frame_len(buf)?.is_some() {
            return Ok((used, true));
        }
        if used == input.len() || k == 0 {
            return Ok((used, false));
        }
    }
}

fn recycle(buf: &mut Vec<u8>) {
    buf.clear();
    if buf.capacity() > KEEP_BUFFER_BYTES {
        *buf = Vec::new();
    }
}

impl Channel {
    pub fn new() -> Channel {
        Channel::default()
    }

    /// Bytes from the dest. Returns how many were taken: all of them while
    /// idle, fewer (maybe 0) once a request is in flight; the rest stays
    /// with the caller until [`Channel::is_busy`] is false again.
    pub fn on_dest(&mut self, g: &mut Guard, input: &[u8]) -> Result<usize, Violation> {
        let mut used = 0;
        while matches!(self.state, State::Idle) && used < input.len() {
            let rest = &input[used..];
            let res = assemble(&mut self.from_dest, rest);
            let (n, complete) = match res {
                Ok(r) => r,
                Err(e) => return Err(self.dest_violation(e)),
            };
            let res = if !complete {
                Ok(())
            } else if self.from_dest.is_empty() {
                self.on_request(g, &rest[..n])
            } else {
                let frame = std::mem::take(&mut self.from_dest);
                let res = self.on_request(g, &frame);
                self.from_dest = frame;
                recycle(&mut self.from_dest);
                res
            };
            used += n;
            if let Err(e) = res {
                return Err(self.dest_violation(e));
            }
        }
        Ok(used)
    }

    fn dest_violation(&mut self, e: WireError) -> Violation {
        let v = violation(Peer::Dest, e);
        let mut r = Record::new("malformed");
        r.decision = Decision::Closed;
        r.reason = Some(v.what.clone());
        self.records.push(r);
        v
    }

    /// Bytes from the agent: the answer to the request in flight.
    pub fn on_agent(&mut self, g: &Guard, mut input: &[u8]) -> Result<(), Violation> {
        while !input.is_empty() {
            if !matches!(self.state, State::Agent(_)) {
                return Err(Violation {
                    from: Peer::Agent,
                    what: format!("{} bytes nobody asked for", input.len()),
                });
            }
            let (n, complete) =
                assemble(&mut self.from_agent, input).map_err(|e| violation(Peer::Agent, e))?;
            if complete {
                let res = if self.from_agent.is_empty() {
                    self.on_answer(g, &input[..n])
                } else {
                    let frame = std::mem::take(&mut self.from_agent);
                    let res = self.on_answer(g, &frame);
                    self.from_agent = frame;
                    recycle(&mut self.from_agent);
                    res
                };
                res.map_err(|e| violation(Peer::Agent, e))?;
            }
            input = &input[n..];
        }
        Ok(())
    }

    /// A request waits for the origin user's answer: the record says what
    /// it is (for the prompt).
    pub fn awaiting_confirm(&self) -> Option<&Record> {
        match &self.state {
            State::Confirm(p, _) => Some(&p.record),
            _ => None,
        }
    }

    /// The origin user's answer to [`Channel::awaiting_confirm`].
    pub fn confirm(&mut self, g: &mut Guard, yes: bool) {
        let State::Confirm(mut p, frame) = std::mem::take(&mut self.state) else {
            return;
        };
        if !yes {
            self.refuse(p.record, "not confirmed by the origin's user".into());
        } else if let Some(why) = g.over_budget() {
            self.refuse(p.record, why);
        } else {
            g.signatures += 1;
            p.record.reason = Some("confirmed by the origin's user".into());
            self.to_agent.extend_from_slice(&frame);
            self.state = State::Agent(p);
        }
    }

    /// No confirmation can be asked for (no askpass): refuse.
    pub fn confirm_unavailable(&mut self, why: String) {
        if let State::Confirm(p, _) = std::mem::take(&mut self.state) {
            self.refuse(p.record, why);
        }
    }

    /// The channel is going away: a request still in flight is recorded
    /// as never answered.
    pub fn abandon(&mut self) {
        match std::mem::take(&mut self.state) {
            State::Idle => {}
            State::Agent(mut p) | State::Confirm(mut p, _) => {
                p.record.answer = Some("none (channel closed)");
                self.records.push(p.record);
            }
        }
    }

    /// A request is being answered or confirmed.
    pub fn is_busy(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Nothing in flight and nothing half-received or unsent toward the
    /// agent: the dest's EOF may be passed on.
    pub fn is_idle(&self) -> bool {
        !self.is_busy() && self.from_dest.is_empty() && self.to_agent.is_empty()
    }

    /// A partial request from the dest is buffered (at EOF: truncated).
    pub fn has_partial_request(&self) -> bool {
        !self.from_dest.is_empty()
    }

    /// A partial answer from the agent is buffered.
    pub fn has_partial_answer(&self) -> bool {
        !self.from_agent.is_empty()
    }

    pub fn to_agent(&self) -> &[u8] {
        &self.to_agent
    }

    pub fn agent_written(&mut self, n: usize) {
        self.to_agent.drain(..n.min(self.to_agent.len()));
        if self.to_agent.is_empty() {
            recycle(&mut self.to_agent);
        }
    }

    pub fn to_dest(&self) -> &[u8] {
        &self.to_dest
    }

    pub fn dest_written(&mut self, n: usize) {
        self.to_dest.drain(..n.min(self.to_dest.len()));
        if self.to_dest.is_empty() {
            recycle(&mut self.to_dest);
        }
    }

    /// Audit records produced since the last call.
    pub fn drain_records(&mut self) -> std::vec::Drain<'_, Record> {
        self.records.drain(..)
    }

    fn refuse(&mut self, mut record: Record, why: String) {
        record.decision = Decision::Refused;
        record.reason = Some(why);
        self.to_dest.extend_from_slice(&FAILURE_MESSAGE);
        self.records.push(record);
    }

    fn forward(&mut self, frame: &[u8], record: Record, expect: Expect) {
        self.to_agent.extend_from_slice(frame);
        self.state = State::Agent(Pending { record, expect });
    }

    fn describe(&self, s: &Signed<'_>) -> SignedInfo {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match *s {
            Signed::UserAuth {
                session_id,
                user,
                host_key,
                ..
            } => SignedInfo {
                kind: s.kind(),
                user: Some(lossy(user)),
                host_key: host_key.map(key_fingerprint).or_else(|| {
                    self.binds
                        .iter()
                        .rev()
                        .find(|(sid, _)| sid == session_id)
                        .map(|(_, h)| *h)
                }),
                namespace: None,
            },
            Signed::SshSig { namespace } => SignedInfo {
                kind: s.kind(),
                user: None,
                host_key: None,
                namespace: Some(lossy(namespace)),
            },
            Signed::Other => SignedInfo {
                kind: s.kind(),
                user: None,
                host_key: None,
                namespace: None,
            },
        }
    }

    /// One whole request frame (length field included).
    fn on_request(&mut self, g: &mut Guard, frame: &[u8]) -> Result<(), WireError> {
        let req = parse_request(&frame[LEN_BYTES..])?;
        let mut rec = Record::new(req.name());
        match req {
            Request::Identities => self.forward(frame, rec, Expect::Identities),
            Request::Sign { key, data, .. } => {
                let fp = key_fingerprint(key);
                rec.key = Some(fp);
                rec.key_type = key_type(key).map(|t| String::from_utf8_lossy(t).into_owned());
                rec.signed = Some(self.describe(&classify_signed(data)));
                if !g.policy.exposes(&fp) {
                    self.refuse(rec, "key not exposed (--agent-key)".into());
                } else if let Some(why) = g.over_budget() {
                    self.refuse(rec, why);
                } else if g.policy.confirm {
                    let p = Pending {
                        record: rec,
                        expect: Expect::Plain,
                    };
                    self.state = State::Confirm(p, frame.to_vec());
                } else {
                    g.signatures += 1;
                    self.forward(frame, rec, Expect::Plain);
                }
            }
            ref r if r.is_manage() => {
                if let Request::RemoveIdentity { key } = r {
                    rec.key = Some(key_fingerprint(key));
                }
                if let Request::AddIdentity { key_type, .. } = r {
                    rec.key_type = Some(String::from_utf8_lossy(key_type).into_owned());
                }
                if !g.policy.allow_manage {
                    self.refuse(
                        rec,
                        "managing the agent is not allowed (--agent-allow-manage)".into(),
                    );
                } else if rec.key.is_some_and(|k| !g.policy.exposes(&k)) {
                    self.refuse(rec, "key not exposed (--agent-key)".into());
                } else {
                    self.forward(frame, rec, Expect::Plain);
                }
            }
            Request::Extension { name, contents } => {
                let name_s = String::from_utf8_lossy(name).into_owned();
                rec.extension = Some(name_s.clone());
                if name == SESSION_BIND.as_bytes() {
                    let b = parse_session_bind(contents)?;
                    let host = key_fingerprint(b.host_key);
                    rec.key = Some(host);
                    rec.key_type =
                        key_type(b.host_key).map(|t| String::from_utf8_lossy(t).into_owned());
                    let expect = Expect::SessionBind {
                        session_id: b.session_id.to_vec(),
                        host,
                    };
                    self.forward(frame, rec, expect);
                } else if g.policy.allow_extensions.contains(&name_s) {
                    self.forward(frame, rec, Expect::Plain);
                } else {
                    self.refuse(
                        rec,
                        "extension not allowed (--agent-allow-extension NAME)".into(),
                    );
                }
            }
            Request::Ssh1(k) | Request::Unknown(k) => {
                self.refuse(
                    rec,
                    format!("request type {k} is not supported by the guard"),
                );
            }
            // is_manage() covers the remaining variants.
            _ => self.refuse(rec, "not supported by the guard".into()),
        }
        Ok(())
    }

    /// One whole answer frame from the agent.
    fn on_answer(&mut self, g: &Guard, frame: &[u8]) -> Result<(), WireError> {
        let ans = parse_answer(&frame[LEN_BYTES..])?;
        let State::Agent(Pending { mut record, expect }) = std::mem::take(&mut self.state) else {
            return Ok(());
        };
        record.answer = Some(match ans {
            Answer::Failure => "failure",
            Answer::Success => "success",
            Answer::Identities(_) => "identities",
            Answer::Signature(_) => "signature",
            Answer::ExtensionFailure => "extension-failure",
            Answer::ExtensionResponse => "extension-response",
            Answer::Other(_) => "other",
        });
        match (expect, ans) {
            // Filtered whatever was asked: no path shows a hidden key.
            (_, Answer::Identities(keys)) => {
                let total = keys.len();
                if g.policy.keys.is_none() {
                    record.keys_shown = Some((total, total));
                    self.to_dest.extend_from_slice(frame);
                } else {
                    let shown: Vec<_> = keys
                        .into_iter()
                        .filter(|(k, _)| g.policy.exposes(&key_fingerprint(k)))
                        .collect();
                    record.keys_shown = Some((shown.len(), total));
                    encode_identities(&shown, &mut self.to_dest);
                }
            }
            (Expect::SessionBind { session_id, host }, Answer::Success) => {
                if self.binds.len() == MAX_BINDS {
                    self.binds.remove(0);
                }
                self.binds.push((session_id, host));
                self.to_dest.extend_from_slice(frame);
            }
            _ => self.to_dest.extend_from_slice(frame),
        }
        self.records.push(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
