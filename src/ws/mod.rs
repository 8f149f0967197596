//! RFC 6455 WebSocket core, sans-IO: the opening handshake, the frame codec
//! and the endpoint policy (pongs, close echo, output caps).
//! Nothing here touches a socket; everything takes and returns byte slices.

pub mod endpoint;
pub mod frame;
pub mod handshake;
pub mod mask;
