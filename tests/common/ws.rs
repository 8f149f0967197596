//! WebSocket helpers over tungstenite (a third-party peer) for tests that
//! talk to the relay as generic clients.
#![allow(dead_code)]

use std::net::TcpStream;
use std::time::Duration;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Error as WsError, Message, WebSocket};

pub type Ws = WebSocket<TcpStream>;

pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

/// Upgrade to `path` with an admission header; the result keeps the HTTP
/// error response for refusals.
pub fn connect(
    addr: std::net::SocketAddr,
    path: &str,
    admission: Option<&str>,
) -> Result<(Ws, Option<String>), WsError> {
    let url = format!("ws://{addr}{path}");
    let mut req = url.into_client_request()?;
    if let Some(a) = admission {
        req.headers_mut()
            .insert("Sockrelay-Admission", a.parse().unwrap());
    }
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    match tungstenite::client::client_with_config(req, stream, Some(config())) {
        Ok((ws, resp)) => {
            let id = resp
                .headers()
                .get("sockrelay-session")
                .map(|v| v.to_str().unwrap().to_string());
            Ok((ws, id))
        }
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            panic!("blocking handshake interrupted")
        }
    }
}

pub fn status_of(err: WsError) -> u16 {
    match err {
        WsError::Http(resp) => resp.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

/// Read until a ping whose payload starts with `prefix`; data messages on
/// the way are returned as an error (the tests below never expect any).
pub fn wait_ping(ws: &mut Ws, prefix: &str) -> String {
    loop {
        match ws.read().expect("read") {
            Message::Ping(p) => {
                let text = String::from_utf8_lossy(&p).to_string();
                if text.starts_with(prefix) {
                    // Make sure the automatic pong goes out now.
                    ws.flush().expect("flush");
                    return text;
                }
            }
            Message::Pong(_) => {}
            other => panic!("expected ping {prefix:?}, got {other:?}"),
        }
    }
}

/// Next data or close message, skipping pings and pongs.
pub fn next_msg(ws: &mut Ws) -> Message {
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(m) => return m,
            Err(WsError::ConnectionClosed) => panic!("connection closed"),
            Err(e) => panic!("read: {e}"),
        }
    }
}
