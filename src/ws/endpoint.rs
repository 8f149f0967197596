//! WebSocket endpoint policy, sans-IO: what one end of a WebSocket owes
//! the other for its control frames, and how much it will queue for a peer
//! that does not read. The frame codec ([`super::frame`]) says what is on
//! the wire; this says what to answer and when to give up.
//!
//! - **Pings** are answered with a pong carrying the same payload, but only
//!   the latest one is kept (RFC 6455 §5.5.3: "an endpoint MAY elect to
//!   send a Pong frame for only the most recently processed Ping frame";
//!   tungstenite keeps a single pending pong the same way). A peer that
//!   floods pings therefore costs one 125-byte slot, not a pong each.
//! - A pending pong is written only while the output queue is below
//!   [`Limits::control_room_bytes`]: a peer that does not read gets no more
//!   pongs queued behind the ones it has not read.
//! - **Close** is echoed once (§5.5.1), before any pending pong, and
//!   nothing follows a close.
//! - **A peer that does not read** is detected from the output side: bytes
//!   pending (in our queue or unacknowledged in the kernel's) and none
//!   taken by the peer for [`Limits::stall_timeout`], or more in our queue
//!   than [`Limits::max_queued_bytes`], is a [`Verdict`] to drop the link.
//! - **Per-turn budget**: a loop reads at most [`Limits::read_budget_bytes`]
//!   from this endpoint per turn, so a fast sender cannot starve timers,
//!   signals or other sockets.
//!
//! Time is passed in; nothing here reads a clock or a socket.
//!
//! The rules live in small parts that own no buffer, shared by both ends:
//! [`Policy`] (the close state: what may still go out), [`replaces_pong`]
//! and [`room_for_pong`] (which pong is owed, and when it may be queued),
//! [`echo_code`] and [`Stall`] (the not-reading clock). [`Endpoint`]
//! puts them together for the clients, with an inline pong slot; the
//! relay keeps its own buffers (zero-copy forwarding, a pong slot
//! allocated only while one is owed, its own liveness) and uses the parts
//! (`relay::server`, [`Limits::relay`]).

use std::fmt;
use std::time::{Duration, Instant};

use super::frame::{self, OpCode};

/// RFC 6455 §5.5: a control frame's payload is at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD_BYTES: usize = 125;

/// The caps of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A pending pong is queued only while less than this is queued.
    pub control_room_bytes: usize,
    /// More than this queued means the peer is not reading: drop.
    pub max_queued_bytes: usize,
    /// Output queued and not one byte of it written for this long: drop.
    pub stall_timeout: Duration,
    /// Most bytes to read from the socket in one loop turn.
    pub read_budget_bytes: usize,
}

impl Limits {
    /// The relay's caps on what it queues itself toward one connection
    /// (pongs, control pings, close frames; forwarded data is not queued,
    /// it waits in the sender's socket): its own control pings are a few
    /// hundred bytes, so 16 KiB is never reached by a client that reads.
    /// Not reading is judged by the relay's liveness (`relay::liveness`),
    /// and reads by its buffers, so the last two caps do not apply.
    pub const fn relay() -> Limits {
        Limits {
            control_room_bytes: 8 << 10,
            max_queued_bytes: 16 << 10,
            stall_timeout: Duration::MAX,
            read_budget_bytes: usize::MAX,
        }
    }

    /// The clients' caps: data output is held below the engine's
    /// high-water mark (512 KiB), so 1 MiB of room leaves pongs unaffected
    /// in normal use, and 4 MiB is never reached by a peer that reads.
    pub fn client(stall_timeout: Duration) -> Limits {
        Limits {
            control_room_bytes: 1 << 20,
            max_queued_bytes: 4 << 20,
            stall_timeout,
            read_budget_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum CloseState {
    #[default]
    Open,
    /// The peer's close arrived; our echo is to be queued.
    EchoPending { code: Option<u16> },
    /// We queued a close (ours or the echo); nothing more goes out.
    Sent,
}

/// What the output side says about the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Output has been queued with no byte written for `stalled`.
    NotReading {
        queued: usize,
        stalled: Duration,
    },
    /// More than the cap is queued.
    OverCap {
        queued: usize,
        cap: usize,
    },
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Fine => f.write_str("fine"),
            Verdict::NotReading { queued, stalled } => write!(
                f,
                "not reading: {queued} bytes queued and none written for {:.1} s",
                stalled.as_secs_f64()
            ),
            Verdict::OverCap { queued, cap } => write!(
                f,
                "not reading: {queued} bytes queued, over the cap of {cap}"
            ),
        }
    }
}

/// Which control frames [`Endpoint::encode_pending`] queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Queued {
    pub pong: bool,
    pub close: bool,
}

/// The close state of one WebSocket endpoint (either role), four bytes
/// and no buffer: whether pongs may still be owed, and whether a close
/// echo is (§5.5.1: a close is answered once, and nothing follows it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    close: CloseState,
}

impl Policy {
    /// Whether a ping arriving now is owed a pong (not once a close was
    /// received or sent).
    pub fn answers_pings(&self) -> bool {
        self.close == CloseState::Open
    }

    /// The peer's close arrived (code as parsed, if any): its echo is
    /// owed, unless we already sent a close. Any pending pong is void.
    pub fn on_close(&mut self, code: Option<u16>) {
        if self.close == CloseState::Open {
            self.close = CloseState::EchoPending { code };
        }
    }

    /// We queued a close of our own: nothing more goes out.
    pub fn on_close_sent(&mut self) {
        self.close = CloseState::Sent;
    }

    /// Whether a close went out or is owed: no data may follow.
    pub fn is_closing(&self) -> bool {
        self.close != CloseState::Open
    }

    /// If the close echo is owed, the code it carries ([`echo_code`]);
    /// it then counts as sent.
    pub fn take_echo(&mut self) -> Option<u16> {
        let CloseState::EchoPending { code } = self.close else {
            return None;
        };
        self.close = CloseState::Sent;
        Some(echo_code(code))
    }
}

/// The status code a close echo carries (§5.5.1: the one received), or
/// 1000 when none came or it may not be sent (1005, 1006 …: the decoder
/// rejects those first, but what goes out must be valid whoever calls).
pub fn echo_code(received: Option<u16>) -> u16 {
    received
        .filter(|&c| frame::is_valid_close_code(c))
        .unwrap_or(1000)
}

/// Whether a ping with payload `new` replaces the pending pong `pending`:
/// only the latest ping is answered (§5.5.3), except that a pending relay
/// control ping (payload starting with [`crate::control::PREFIX`]) is not
/// replaced by a plain one: its echo is what tells the relay we acted on a
/// pairing change, and it answers the plain ping as well (any pong proves
/// we are alive).
pub fn replaces_pong(pending: Option<&[u8]>, new: &[u8]) -> bool {
    let prefix = crate::control::PREFIX.as_bytes();
    !pending.is_some_and(|p| p.starts_with(prefix) && !new.starts_with(prefix))
}

/// Whether a pending pong may be queued behind `queued` bytes: a peer that
/// does not read gets no more pongs queued behind the ones it has not read.
pub fn room_for_pong(limits: &Limits, queued: usize) -> bool {
    queued < limits.control_room_bytes
}

/// A pong payload (at most 125 bytes) and its length.
pub type PongSlot = ([u8; MAX_CONTROL_PAYLOAD_BYTES], u8);

/// `payload` in a pong slot, cut to what a control frame may carry
/// (longer ones are rejected by the decoder first; never stored whole).
pub fn pong_slot(payload: &[u8]) -> PongSlot {
    let n = payload.len().min(MAX_CONTROL_PAYLOAD_BYTES);
    let mut slot = [0u8; MAX_CONTROL_PAYLOAD_BYTES];
    slot[..n].copy_from_slice(&payload[..n]);
    (slot, n as u8)
}

/// The payload stored in a pong slot.
pub fn slot_payload(slot: &PongSlot) -> &[u8] {
    slot.0.get(..slot.1 as usize).unwrap_or(&[])
}

/// The not-reading clock: output pending (ours or the kernel's) and none
/// taken by the peer for [`Limits::stall_timeout`], or our queue over
/// [`Limits::max_queued_bytes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stall {
    /// Since when output has been queued without a byte being written.
    since: Option<Instant>,
}

impl Stall {
    /// See [`Endpoint::on_write`].
    pub fn on_write(
        &mut self,
        limits: &Limits,
        queued: usize,
        unacked: usize,
        progress: usize,
        now: Instant,
    ) -> Verdict {
        if queued > limits.max_queued_bytes {
            return Verdict::OverCap {
                queued,
                cap: limits.max_queued_bytes,
            };
        }
        let pending = queued.saturating_add(unacked);
        if pending == 0 || progress > 0 {
            self.since = if pending == 0 { None } else { Some(now) };
            return Verdict::Fine;
        }
        let since = *self.since.get_or_insert(now);
        let stalled = now.saturating_duration_since(since);
        if stalled >= limits.stall_timeout {
            Verdict::NotReading {
                queued: pending,
                stalled,
            }
        } else {
            Verdict::Fine
        }
    }
}

/// The control-frame policy of one WebSocket endpoint (either role), with
/// its pong slot inline: the clients' (the relay composes the parts
/// itself).
#[derive(Debug, Clone)]
pub struct Endpoint {
    limits: Limits,
    /// Payload of the latest unanswered ping.
    pong: Option<PongSlot>,
    policy: Policy,
    stall: Stall,
    pings_received: u64,
    pongs_queued: u64,
}

impl Endpoint {
    pub fn new(limits: Limits) -> Endpoint {
        Endpoint {
            limits,
            pong: None,
            policy: Policy::default(),
            stall: Stall::default(),
            pings_received: 0,
            pongs_queued: 0,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A ping arrived: its pong replaces any pending one, except that a
    /// pending relay control ping (payload starting with
    /// [`crate::control::PREFIX`]) is not replaced by a plain one: its
    /// echo is what tells the relay we acted on a pairing change, and it
    /// answers the plain ping as well (any pong proves we are alive).
    /// Payloads longer than a control frame allows (the decoder rejects
    /// those first) are cut, never stored whole.
    pub fn on_ping(&mut self, payload: &[u8]) {
        self.pings_received += 1;
        if !self.policy.answers_pings() {
            return;
        }
        if replaces_pong(self.pong.as_ref().map(slot_payload), payload) {
            self.pong = Some(pong_slot(payload));
        }
    }

    /// The peer's close arrived (code as parsed, if any). Its echo is
    /// queued by the next [`Endpoint::encode_pending`], unless we already
    /// sent a close; the pending pong is dropped (nothing follows a close).
    pub fn on_close(&mut self, code: Option<u16>) {
        self.policy.on_close(code);
        self.pong = None;
    }

    /// We queued a close of our own: nothing more goes out.
    pub fn on_close_sent(&mut self) {
        self.policy.on_close_sent();
        self.pong = None;
    }

    /// Whether a close went out or is owed: no data may follow.
    pub fn is_closing(&self) -> bool {
        self.policy.is_closing()
    }

    pub fn has_pending_pong(&self) -> bool {
        self.pong.is_some()
    }

    /// Queue what is owed into `out`, `queued` bytes being already queued
    /// before it: the close echo always (it is the last frame), the
    /// pending pong only while there is control room. `mask` is the
    /// client's masking key (None for a server).
    pub fn encode_pending(
        &mut self,
        out: &mut Vec<u8>,
        queued: usize,
        mut mask: impl FnMut() -> Option<[u8; 4]>,
    ) -> Queued {
        let mut did = Queued::default();
        if let Some(code) = self.policy.take_echo() {
            frame::encode_close(out, mask(), code, "");
            did.close = true;
            return did;
        }
        if room_for_pong(&self.limits, queued) {
            if let Some(slot) = self.pong.take() {
                frame::encode_frame(out, true, OpCode::Pong, mask(), slot_payload(&slot));
                self.pongs_queued += 1;
                did.pong = true;
            }
        }
        did
    }

    /// After a write attempt: `queued` bytes wait in our queue,
    /// `unacked` more sit in the kernel not yet acknowledged by the peer
    /// (SIOCOUTQ; 0 where unknown), and `progress` bytes were taken by the
    /// peer since the last call. Says whether the peer is still reading.
    /// The cap applies to our queue alone (the kernel's is its own, and
    /// may legitimately hold megabytes on a fast link).
    pub fn on_write(
        &mut self,
        queued: usize,
        unacked: usize,
        progress: usize,
        now: Instant,
    ) -> Verdict {
        self.stall
            .on_write(&self.limits, queued, unacked, progress, now)
    }

    /// Pings received and pongs queued so far (for logs and tests).
    pub fn counts(&self) -> (u64, u64) {
        (self.pings_received, self.pongs_queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::{Decoder, Event, Role};

    fn limits() -> Limits {
        Limits {
            control_room_bytes: 100,
            max_queued_bytes: 1000,
            stall_timeout: Duration::from_secs(2),
            read_budget_bytes: 4096,
        }
    }

    /// Decode `out` as a server would (masked frames): each control frame's
    /// opcode and payload.
    fn frames(out: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut buf = out.to_vec();
        let mut dec = Decoder::new(Role::Server, 1 << 20);
        let mut pos = 0;
        let mut got = Vec::new();
        while pos < buf.len() {
            let (ev, used) = dec.decode(&mut buf[pos..]).unwrap().unwrap();
            if let Event::Control(h) = ev {
                let end = pos + used;
                let start = end - h.payload_len as usize;
                got.push((h.opcode, buf[start..end].to_vec()));
            }
            pos += used;
        }
        got
    }

    fn key() -> Option<[u8; 4]> {
        Some([1, 2, 3, 4])
    }

    #[test]
    fn a_flood_of_pings_leaves_one_pong_with_the_latest_payload() {
        let mut e = Endpoint::new(limits());
        for i in 0..10_000u32 {
            e.on_ping(format!("p{i}").as_bytes());
        }
        let mut out = Vec::new();
        assert!(e.encode_pending(&mut out, 0, key).pong);
        assert_eq!(frames(&out), vec![(OpCode::Pong, b"p9999".to_vec())]);
        // Nothing more is owed.
        assert_eq!(e.encode_pending(&mut out, 0, key), Queued::default());
        assert_eq!(e.counts(), (10_000, 1));
    }

    #[test]
    fn a_plain_ping_does_not_displace_a_pending_control_ping() {
        let mut e = Endpoint::new(limits());
        e.on_ping(b"sockrelay peer-joined 3 127.0.0.1:1");
        e.on_ping(b"");
        e.on_ping(b"keepalive");
        let mut out = Vec::new();
        assert!(e.encode_pending(&mut out, 0, key).pong);
        assert_eq!(
            frames(&out),
            vec![(
                OpCode::Pong,
                b"sockrelay peer-joined 3 127.0.0.1:1".to_vec()
            )]
        );
        // A later control ping does replace it: only the latest change counts.
        e.on_ping(b"sockrelay peer-joined 4 127.0.0.1:2");
        e.on_ping(b"sockrelay peer-left 5 1000 bye");
        e.on_ping(b"");
        out.clear();
        assert!(e.encode_pending(&mut out, 0, key).pong);
        assert_eq!(
            frames(&out),
            vec![(OpCode::Pong, b"sockrelay peer-left 5 1000 bye".to_vec())]
        );
    }

    #[test]
    fn no_pong_is_queued_without_control_room() {
        let mut e = Endpoint::new(limits());
        e.on_ping(b"a");
        let mut out = Vec::new();
        assert!(!e.encode_pending(&mut out, 100, key).pong);
        assert!(out.is_empty() && e.has_pending_pong());
        e.on_ping(b"b");
        assert!(e.encode_pending(&mut out, 99, key).pong);
        assert_eq!(frames(&out), vec![(OpCode::Pong, b"b".to_vec())]);
    }

    #[test]
    fn close_is_echoed_once_before_and_instead_of_a_pending_pong() {
        let mut e = Endpoint::new(limits());
        e.on_ping(b"x");
        e.on_close(Some(4001));
        e.on_ping(b"y");
        let mut out = Vec::new();
        let q = e.encode_pending(&mut out, 0, key);
        assert!(q.close && !q.pong);
        let got = frames(&out);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, OpCode::Close);
        assert_eq!(&got[0].1[..2], &4001u16.to_be_bytes());
        assert!(e.is_closing());
        assert_eq!(e.encode_pending(&mut out, 0, key), Queued::default());
    }

    #[test]
    fn a_close_without_code_is_answered_with_1000() {
        let mut e = Endpoint::new(limits());
        e.on_close(None);
        let mut out = Vec::new();
        e.encode_pending(&mut out, 500, || None);
        assert_eq!(out, [0x88, 2, 0x03, 0xe8]);
    }

    #[test]
    fn an_invalid_code_is_not_echoed() {
        let mut e = Endpoint::new(limits());
        e.on_close(Some(1005));
        let mut out = Vec::new();
        e.encode_pending(&mut out, 0, || None);
        assert_eq!(out, [0x88, 2, 0x03, 0xe8]);
    }

    #[test]
    fn after_our_close_nothing_is_answered() {
        let mut e = Endpoint::new(limits());
        e.on_close_sent();
        e.on_ping(b"late");
        e.on_close(Some(1000));
        let mut out = Vec::new();
        assert_eq!(e.encode_pending(&mut out, 0, key), Queued::default());
        assert!(out.is_empty());
    }

    #[test]
    fn oversized_ping_payload_is_cut_not_stored() {
        let mut e = Endpoint::new(limits());
        e.on_ping(&[7u8; 400]);
        let mut out = Vec::new();
        e.encode_pending(&mut out, 0, key);
        assert_eq!(frames(&out), vec![(OpCode::Pong, vec![7u8; 125])]);
    }

    #[test]
    fn a_peer_that_stops_reading_is_reported_after_the_stall_timeout() {
        let mut e = Endpoint::new(limits());
        let t0 = Instant::now();
        assert_eq!(e.on_write(50, 0, 10, t0), Verdict::Fine);
        assert_eq!(
            e.on_write(20, 30, 0, t0 + Duration::from_secs(1)),
            Verdict::Fine
        );
        // Progress resets the clock.
        assert_eq!(
            e.on_write(40, 0, 10, t0 + Duration::from_millis(1900)),
            Verdict::Fine
        );
        assert_eq!(
            e.on_write(0, 40, 0, t0 + Duration::from_secs(3)),
            Verdict::Fine
        );
        let v = e.on_write(10, 30, 0, t0 + Duration::from_millis(3900));
        assert_eq!(
            v,
            Verdict::NotReading {
                queued: 40,
                stalled: Duration::from_millis(2000)
            }
        );
        assert!(v.to_string().contains("40 bytes queued"));
    }

    #[test]
    fn an_empty_queue_is_never_a_stall() {
        let mut e = Endpoint::new(limits());
        let t0 = Instant::now();
        assert_eq!(e.on_write(0, 0, 0, t0), Verdict::Fine);
        assert_eq!(
            e.on_write(0, 0, 0, t0 + Duration::from_secs(60)),
            Verdict::Fine
        );
        // The stall clock starts when output first sits unwritten.
        assert_eq!(
            e.on_write(0, 5, 0, t0 + Duration::from_secs(61)),
            Verdict::Fine
        );
        assert!(matches!(
            e.on_write(0, 5, 0, t0 + Duration::from_secs(63)),
            Verdict::NotReading { .. }
        ));
        assert_eq!(
            e.on_write(0, 0, 5, t0 + Duration::from_secs(64)),
            Verdict::Fine
        );
        assert_eq!(
            e.on_write(5, 0, 0, t0 + Duration::from_secs(65)),
            Verdict::Fine
        );
    }

    #[test]
    fn a_full_kernel_queue_is_not_over_the_cap() {
        let mut e = Endpoint::new(limits());
        assert_eq!(e.on_write(10, 1 << 22, 1, Instant::now()), Verdict::Fine);
    }

    #[test]
    fn over_the_cap_is_reported_at_once() {
        let mut e = Endpoint::new(limits());
        assert_eq!(
            e.on_write(1001, 0, 500, Instant::now()),
            Verdict::OverCap {
                queued: 1001,
                cap: 1000
            }
        );
    }

    // ---- the parts the relay composes itself (relay::server) ----------

    #[test]
    fn the_policy_answers_pings_until_a_close_and_echoes_once() {
        let mut p = Policy::default();
        assert!(p.answers_pings() && !p.is_closing());
        assert_eq!(p.take_echo(), None);
        p.on_close(Some(4321));
        assert!(!p.answers_pings() && p.is_closing());
        assert_eq!(p.take_echo(), Some(4321));
        assert_eq!(p.take_echo(), None);
        // A close after ours is not echoed.
        let mut p = Policy::default();
        p.on_close_sent();
        p.on_close(Some(1000));
        assert_eq!(p.take_echo(), None);
        assert!(!p.answers_pings());
    }

    #[test]
    fn echo_codes_are_always_sendable() {
        assert_eq!(echo_code(None), 1000);
        assert_eq!(echo_code(Some(1005)), 1000);
        assert_eq!(echo_code(Some(1006)), 1000);
        assert_eq!(echo_code(Some(1015)), 1000);
        assert_eq!(echo_code(Some(4001)), 4001);
        assert_eq!(echo_code(Some(1001)), 1001);
    }

    #[test]
    fn the_latest_ping_wins_except_over_a_control_echo() {
        assert!(replaces_pong(None, b""));
        assert!(replaces_pong(Some(b"a"), b"b"));
        assert!(replaces_pong(Some(b"a"), b"sockrelay move 250 x"));
        assert!(!replaces_pong(Some(b"sockrelay peer-joined 1 x"), b""));
        assert!(replaces_pong(
            Some(b"sockrelay peer-joined 1 x"),
            b"sockrelay peer-left 2 1000 "
        ));
        // A slot holds at most a control frame's payload.
        let slot = pong_slot(&[1u8; 300]);
        assert_eq!(slot_payload(&slot), &[1u8; 125][..]);
        assert_eq!(slot_payload(&pong_slot(b"hi")), b"hi");
    }

    #[test]
    fn the_relay_limits_hold_pongs_behind_8k_and_cap_at_16k() {
        let relay = Limits::relay();
        assert!(room_for_pong(&relay, 0));
        assert!(room_for_pong(&relay, (8 << 10) - 1));
        assert!(!room_for_pong(&relay, 8 << 10));
        assert_eq!(relay.max_queued_bytes, 16 << 10);
        // The client's room is unchanged.
        assert!(room_for_pong(
            &Limits::client(Duration::from_secs(1)),
            512 << 10
        ));
    }

    #[test]
    fn the_stall_clock_alone_matches_the_endpoint() {
        let l = limits();
        let mut stall = Stall::default();
        let mut e = Endpoint::new(l);
        let t0 = Instant::now();
        for (i, (q, u, p)) in [(5, 0, 0), (5, 3, 0), (0, 8, 0), (0, 0, 4), (9, 0, 0)]
            .into_iter()
            .enumerate()
        {
            let now = t0 + Duration::from_millis(900 * i as u64);
            assert_eq!(stall.on_write(&l, q, u, p, now), e.on_write(q, u, p, now));
        }
    }
}
