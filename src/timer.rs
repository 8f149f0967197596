//! Deadlines for one event loop: a binary heap with lazy cancellation.
//!
//! Entries name an owner (a slab key plus its generation) and a kind; an
//! owner that died or rescheduled simply finds a stale entry when it pops,
//! which the loop ignores after checking the owner's current state. That
//! keeps cancel O(1) (do nothing) and schedule O(log n).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry<K: Ord + Copy> {
    pub at: Instant,
    pub key: K,
}

#[derive(Debug)]
pub struct Timers<K: Ord + Copy> {
    heap: BinaryHeap<Reverse<Entry<K>>>,
}

impl<K: Ord + Copy> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Copy> Timers<K> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn schedule(&mut self, at: Instant, key: K) {
        self.heap.push(Reverse(Entry { at, key }));
    }

    /// Time until the nearest deadline (zero if already due), for `poll`.
    pub fn timeout(&self, now: Instant) -> Option<Duration> {
        self.heap
            .peek()
            .map(|Reverse(e)| e.at.saturating_duration_since(now))
    }

    /// Pop one entry that is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        match self.heap.peek() {
            Some(Reverse(e)) if e.at <= now => self.heap.pop().map(|Reverse(e)| e.key),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let mut t = Timers::new();
        let now = Instant::now();
        t.schedule(now + Duration::from_millis(30), 3u32);
        t.schedule(now + Duration::from_millis(10), 1u32);
        t.schedule(now + Duration::from_millis(20), 2u32);
        assert_eq!(t.timeout(now), Some(Duration::from_millis(10)));
        assert_eq!(t.pop_due(now), None);
        let later = now + Duration::from_millis(25);
        assert_eq!(t.pop_due(later), Some(1));
        assert_eq!(t.pop_due(later), Some(2));
        assert_eq!(t.pop_due(later), None);
        assert_eq!(t.timeout(later), Some(Duration::from_millis(5)));
    }
}
