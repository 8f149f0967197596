//! RFC 6455 WebSocket core, sans-IO: the opening handshake and the frame codec.
//! Nothing here touches a socket; everything takes and returns byte slices.

pub mod frame;
pub mod handshake;
pub mod mask;
