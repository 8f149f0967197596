//! What carries the WebSocket's bytes, under the WebSocket codec: name
//! resolution off the loop ([`resolve`]).

pub mod resolve;
