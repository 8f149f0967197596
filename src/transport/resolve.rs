//! Name resolution off the event loop. getaddrinfo(3) blocks for as long
//! as the resolver takes (seconds, on a bad network); run in the loop it
//! would freeze signals, timers and the dest's accept. A [`Lookup`] runs it
//! on a short-lived thread that hands the addresses back through a channel
//! and wakes the loop with a [`mio::Waker`].
//!
//! The thread lives only for the lookup and is joined (pthread_join: then
//! it is wholly gone) when its answer is taken, or reaped later when the
//! loop gave up on it; so the process is single-threaded again whenever
//! [`lookups_running`] says 0. Daemonizing forks, and a fork is only sound
//! with no other thread that could hold a lock.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use mio::Waker;

/// Lookup threads owned by a [`Lookup`] and not joined yet.
static OWNED: AtomicUsize = AtomicUsize::new(0);
/// Threads of lookups dropped before their answer (a resolver that hung
/// past the connect deadline), joined once they finish.
static ABANDONED: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());

/// How many lookup threads may still be alive. Joins the abandoned ones
/// that have finished, so that 0 means no thread but the caller's.
pub fn lookups_running() -> usize {
    let mut abandoned = match ABANDONED.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut i = 0;
    while i < abandoned.len() {
        if abandoned[i].is_finished() {
            let _ = abandoned.swap_remove(i).join();
        } else {
            i += 1;
        }
    }
    OWNED.load(Ordering::SeqCst) + abandoned.len()
}

type Answer = io::Result<Vec<SocketAddr>>;

/// One name lookup in flight (or already answered, for an address literal).
pub struct Lookup {
    rx: Option<mpsc::Receiver<Answer>>,
    thread: Option<JoinHandle<()>>,
    ready: Option<Answer>,
}

impl Lookup {
    /// Resolve `host:port`. An IP literal is answered at once, without a
    /// thread; a name on a thread that calls `waker.wake()` when done.
    pub fn start(host: &str, port: u16, waker: Arc<Waker>) -> io::Result<Lookup> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(Lookup {
                rx: None,
                thread: None,
                ready: Some(Ok(vec![SocketAddr::new(ip, port)])),
            });
        }
        let (tx, rx) = mpsc::channel();
        let host = host.to_string();
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || {
                let answer = (host.as_str(), port)
                    .to_socket_addrs()
                    .map(|a| distinct(a.collect()));
                // The loop may have given up on us: then nobody listens.
                let _ = tx.send(answer);
                let _ = waker.wake();
            })?;
        OWNED.fetch_add(1, Ordering::SeqCst);
        Ok(Lookup {
            rx: Some(rx),
            thread: Some(spawned),
            ready: None,
        })
    }

    /// The answer, once there is one (then the thread is joined). The
    /// addresses keep the resolver's order (RFC 6724 preference), without
    /// duplicates.
    pub fn poll(&mut self) -> Option<Answer> {
        if let Some(a) = self.ready.take() {
            return Some(a);
        }
        let answer = match self.rx.as_ref()?.try_recv() {
            Ok(a) => a,
            Err(mpsc::TryRecvError::Empty) => return None,
            Err(mpsc::TryRecvError::Disconnected) => Err(io::Error::other(
                "the resolver thread ended without an answer",
            )),
        };
        self.rx = None;
        if let Some(t) = self.thread.take() {
            // It has sent, so it is about to return: a short wait.
            let _ = t.join();
            OWNED.fetch_sub(1, Ordering::SeqCst);
        }
        Some(answer)
    }
}

impl Drop for Lookup {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let mut abandoned = match ABANDONED.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            abandoned.push(t);
            OWNED.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Drop repeated addresses (getaddrinfo returns one per socket type unless
/// hinted), keeping the first of each.
fn distinct(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
    for a in addrs {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::time::Duration;

    #[test]
    fn literals_need_no_thread() {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let mut l = Lookup::start("::1", 80, waker.clone()).unwrap();
        assert_eq!(
            l.poll().unwrap().unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        let mut l = Lookup::start("[::1]", 81, waker.clone()).unwrap();
        assert_eq!(
            l.poll().unwrap().unwrap(),
            vec!["[::1]:81".parse().unwrap()]
        );
        let mut l = Lookup::start("127.0.0.1", 82, waker).unwrap();
        assert_eq!(
            l.poll().unwrap().unwrap(),
            vec!["127.0.0.1:82".parse().unwrap()]
        );
    }

    #[test]
    fn a_name_is_answered_through_the_waker() {
        let mut poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(7)).unwrap());
        let mut l = Lookup::start("localhost", 8080, waker).unwrap();
        let mut events = Events::with_capacity(4);
        let mut answer = None;
        for _ in 0..100 {
            if let Some(a) = l.poll() {
                answer = Some(a);
                break;
            }
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
        }
        let addrs = answer.expect("localhost resolved within 10 s").unwrap();
        drop(l);
        assert!(wait_until_no_lookups());
        assert!(!addrs.is_empty());
        assert!(addrs
            .iter()
            .all(|a| a.port() == 8080 && a.ip().is_loopback()));
        assert_eq!(addrs, distinct(addrs.clone()));
    }

    fn wait_until_no_lookups() -> bool {
        (0..200).any(|_| {
            // Other tests of this module may run lookups concurrently.
            let n = lookups_running();
            std::thread::sleep(Duration::from_millis(10));
            n == 0
        })
    }

    #[test]
    fn duplicates_are_dropped_in_order() {
        let a: SocketAddr = "[::1]:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(distinct(vec![a, a, b, a, b]), vec![a, b]);
    }
}
