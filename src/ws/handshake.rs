//! RFC 6455 §4 opening handshake, sans-IO, both roles. CONTRACT STUB — to be implemented.

/// Requests larger than this (or with more headers) get 431.
pub const MAX_HEADER_BYTES: usize = 8192;
pub const MAX_HEADERS: usize = 32;

/// A handshake failure on the server side: the HTTP status to answer with and
/// a one-line reason for the body and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: &'static str,
}

/// A parsed, validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Percent-decoded path, e.g. "/dest".
    pub path: String,
    /// Percent-decoded query parameters in order ("+" is not a space).
    pub query: Vec<(String, String)>,
    /// `Some(key)` for a valid WebSocket upgrade (the Sec-WebSocket-Key as
    /// sent), `None` for a plain GET without any upgrade headers.
    pub ws_key: Option<String>,
    /// Tokens of Sec-WebSocket-Protocol, in order.
    pub protocols: Vec<String>,
    /// All headers (lower-cased name, value) for whatever else the caller needs.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    pub fn query_param(&self, _name: &str) -> Option<&str> {
        todo!()
    }
    pub fn header(&self, _lowercase_name: &str) -> Option<&[u8]> {
        todo!()
    }
}

/// Parse a request from the front of `buf`. `Ok(None)`: incomplete (and still
/// under MAX_HEADER_BYTES). `Ok(Some((req, consumed)))`: complete and valid.
/// `Err(reject)`: answer with `error_response(reject.status, reject.reason)`.
pub fn parse_request(_buf: &[u8]) -> Result<Option<(Request, usize)>, Reject> {
    todo!()
}

/// Sec-WebSocket-Accept for a Sec-WebSocket-Key.
pub fn accept_key(_key: &str) -> String {
    todo!()
}

/// The 101 Switching Protocols response, with extra headers (name, value).
pub fn response_101(_key: &str, _extra_headers: &[(&str, &str)]) -> Vec<u8> {
    todo!()
}

/// A plain HTTP error response, body = reason + "\n", `Connection: close`;
/// 426 carries `Sec-WebSocket-Version: 13`.
pub fn error_response(_status: u16, _reason: &str) -> Vec<u8> {
    todo!()
}

/// A plain HTTP response with a body (for /healthz, /metrics).
pub fn plain_response(_status: u16, _content_type: &str, _body: &[u8]) -> Vec<u8> {
    todo!()
}

/// Client side: the upgrade request and the accept value to expect.
pub fn client_request(
    _host: &str,
    _path_and_query: &str,
    _extra_headers: &[(&str, &str)],
    _key: [u8; 16],
) -> (Vec<u8>, String) {
    todo!()
}

/// A server's answer to our upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Response {
    pub fn header(&self, _lowercase_name: &str) -> Option<&[u8]> {
        todo!()
    }
}

/// Why the server did not accept our upgrade. `Display` gives what a user can
/// act on, e.g. "relay answered 403 Forbidden: wrong token".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    Todo,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for ClientError {}

/// Parse the server's response from the front of `buf`. `Ok(None)`: need
/// more. `Ok(Some((resp, consumed)))`: a valid 101 with the right accept
/// value; bytes after `consumed` are already WebSocket frames. An error
/// response is only reported once its body (Content-Length, or up to 512
/// bytes / connection close via `parse_response_eof`) is in.
pub fn parse_response(
    _buf: &[u8],
    _expected_accept: &str,
) -> Result<Option<(Response, usize)>, ClientError> {
    todo!()
}

/// The connection closed with `buf` holding a partial response: the best
/// error that can be made of it.
pub fn parse_response_eof(_buf: &[u8]) -> ClientError {
    todo!()
}
