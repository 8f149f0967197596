//! The one test-support module of the integration tests (`mod common;` in
//! each file under `tests/`). Every helper runs real processes on loopback
//! and unix sockets and has a timeout, so that no test can hang.
//!
//! - `proc`: the built binaries' paths, temporary directories, child
//!   processes with their logs, waiting, free ports, third-party daemons.
//! - `data`: deterministic test data.
//! - `relay`: the relay under test with its log in memory (`Relay`), for
//!   tests that talk to it as WebSocket clients (`ws`) or put a proxy or a
//!   load balancer in front of it.
//! - `clients`: origin/dest chains of the real binaries, a unix echo
//!   server, a real `ssh-agent`; re-exports `proc` and `data`, so that
//!   `use common::clients::*;` is all a client test needs.
//! - `mitm`: the evil relay, a byte-level WebSocket man in the middle in
//!   front of the real relay (`tests/evil_relay.rs`, `tests/cipher.rs`).
//! - `tls` (feature `tls`): a test PKI, HAProxy, nginx and tinyproxy, and
//!   clients given `wss://` URLs.
#![allow(dead_code, unused_imports)]

pub mod clients;
pub mod data;
pub mod mitm;
pub mod proc;
pub mod relay;
#[cfg(feature = "tls")]
pub mod tls;
pub mod ws;

pub use data::{pattern, pattern_at, Rng};
pub use proc::{free_port, rss_of, wait_for, Daemon, TempDir, DEST, ORIGIN, RELAY};
pub use relay::{http_get, Relay};
