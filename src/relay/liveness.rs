//! Is a connection alive? Sans-IO, with time passed in: the loop reports
//! signs of life and asks at each timer what to do (wait, ping, drop).
//!
//! Signs of life: bytes read from it; bytes waiting that the relay chose
//! not to read (backpressure from its peer); forwarded bytes it accepted
//! (write progress), and its socket's send queue shrinking (`SIOCOUTQ`).
//! The last two matter for a receiver in the middle of one long frame: it
//! sends nothing, and the relay's ping to it must wait for the frame's end
//! (issue 8, bug 2). A receiver that stops reading stops accepting once its
//! window and the relay's send buffer are full, so it is still dropped in
//! bounded time. The relay's own pings do not count as accepted bytes: a
//! mute peer's kernel acknowledges them for ever.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Ping a connection without a sign of life for this long.
    pub ping_interval: Duration,
    /// Drop it when silent for `ping_interval` plus this.
    pub pong_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    alive_at: Instant,
    keepalive_sent: bool,
    /// Bytes in its socket's send queue at the last check.
    unacked_seen: u32,
}

/// What the timer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check again at this time.
    Wait(Instant),
    /// Send it a keepalive ping now, then check again at this time.
    Ping(Instant),
    /// Silent for this long: drop it.
    Dead(Duration),
}

impl Liveness {
    pub fn new(now: Instant) -> Liveness {
        Liveness {
            alive_at: now,
            keepalive_sent: false,
            unacked_seen: 0,
        }
    }

    /// Bytes were read from it (an answer to any ping we sent).
    pub fn heard(&mut self, now: Instant) {
        self.alive_at = now;
        self.keepalive_sent = false;
    }

    /// It accepted forwarded bytes (a write to it made progress).
    pub fn accepted(&mut self, now: Instant) {
        self.alive_at = now;
    }

    /// The timer fired. `backlogged`: bytes from it wait unread (we stopped
    /// reading it); `unacked`: its socket's send queue now.
    pub fn check(
        &mut self,
        now: Instant,
        policy: Policy,
        backlogged: bool,
        unacked: u32,
    ) -> Verdict {
        if unacked < self.unacked_seen {
            // The peer accepted bytes since the last check (its window opens
            // by less than it takes to raise a writable edge).
            self.alive_at = now;
        }
        self.unacked_seen = unacked;
        if backlogged {
            self.heard(now);
        }
        let idle = now.saturating_duration_since(self.alive_at);
        let limit = policy.ping_interval + policy.pong_timeout;
        if idle >= limit {
            return Verdict::Dead(idle);
        }
        if idle < policy.ping_interval {
            return Verdict::Wait(self.alive_at + policy.ping_interval);
        }
        let next = self.alive_at + limit;
        if self.keepalive_sent {
            // One keepalive at a time: it may still wait for a frame's end.
            Verdict::Wait(next)
        } else {
            self.keepalive_sent = true;
            Verdict::Ping(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const POLICY: Policy = Policy {
        ping_interval: Duration::from_millis(300),
        pong_timeout: Duration::from_millis(200),
    };

    #[test]
    fn silent_connection_is_pinged_once_then_dropped() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        assert_eq!(
            l.check(t0 + 100 * MS, POLICY, false, 0),
            Verdict::Wait(t0 + 300 * MS)
        );
        assert_eq!(
            l.check(t0 + 300 * MS, POLICY, false, 0),
            Verdict::Ping(t0 + 500 * MS)
        );
        // A spurious early timer does not ping again.
        assert_eq!(
            l.check(t0 + 400 * MS, POLICY, false, 0),
            Verdict::Wait(t0 + 500 * MS)
        );
        assert_eq!(
            l.check(t0 + 500 * MS, POLICY, false, 0),
            Verdict::Dead(500 * MS)
        );
    }

    #[test]
    fn an_answer_resets_the_clock_and_allows_the_next_ping() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        assert!(matches!(
            l.check(t0 + 300 * MS, POLICY, false, 0),
            Verdict::Ping(_)
        ));
        l.heard(t0 + 350 * MS);
        assert_eq!(
            l.check(t0 + 500 * MS, POLICY, false, 0),
            Verdict::Wait(t0 + 650 * MS)
        );
        assert_eq!(
            l.check(t0 + 650 * MS, POLICY, false, 0),
            Verdict::Ping(t0 + 850 * MS)
        );
    }

    #[test]
    fn a_receiver_accepting_one_long_frame_stays_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        // It never sends a byte, and its keepalive is stuck behind the frame;
        // writes to it progress, or its send queue shrinks, every 250 ms.
        let mut t = t0;
        let mut queue = 4_000_000u32;
        for i in 0..40 {
            t += 250 * MS;
            if i % 2 == 0 {
                l.accepted(t);
            } else {
                queue -= 65_000;
            }
            let v = l.check(t, POLICY, false, queue);
            assert!(!matches!(v, Verdict::Dead(_)), "dropped at step {i}: {v:?}");
        }
        // Once it stops accepting, it is dropped within the limit.
        let mut dead = None;
        for step in 1..=4 {
            if let Verdict::Dead(idle) = l.check(t + step * 250 * MS, POLICY, false, queue) {
                dead = Some(idle);
                break;
            }
        }
        assert!(dead.is_some_and(|idle| idle >= 500 * MS));
    }

    #[test]
    fn backpressure_counts_as_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0);
        for s in 1..10 {
            let v = l.check(t0 + s * 600 * MS, POLICY, true, 0);
            assert_eq!(v, Verdict::Wait(t0 + s * 600 * MS + 300 * MS));
        }
    }
}
