//! sockrelay: carry a unix socket (an ssh-agent above all) across hosts
//! through a WebSocket relay that both hosts can reach.
//!
//! Layers (see README "Architecture"):
//! - sans-IO protocol cores: [`ws::handshake`], [`ws::frame`], [`mux`], [`secure`], [`control`],
//!   [`agent`] (the ssh-agent guard)
//! - event loops that own the sockets: [`relay`], [`client`]
//! - the byte stream under the WebSocket: [`transport`]
//! - support: [`sys`], [`timer`], [`cli`]

pub mod agent;
pub mod cli;
pub mod client;
pub mod control;
pub mod mux;
pub mod relay;
#[cfg(feature = "e2e")]
pub mod secure;
pub mod sys;
pub mod timer;
pub mod transport;
pub mod ws;
