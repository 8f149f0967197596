//! RFC 6455 §4 opening handshake, sans-IO, both roles.
//!
//! Server side: [`parse_request`] takes whatever bytes have arrived so far and
//! answers *need more* / *complete* / *reject*; the caller writes
//! [`response_101`], [`error_response`] or [`plain_response`]. Client side:
//! [`client_request`] builds the upgrade, [`parse_response`] checks the answer
//! and [`parse_response_eof`] explains a connection that closed early.
//!
//! Policy choices beyond the RFC text (see the unit tests for each):
//! - A request without any WebSocket intent (no `Upgrade: websocket`, no
//!   `Sec-WebSocket-Key`, no `Sec-WebSocket-Version`) is a *plain* request
//!   (`ws_key: None`). An `Upgrade` naming only other protocols (e.g. `h2c`
//!   from `curl --http2`) is ignored as RFC 7230 §6.7 allows, so such a probe
//!   of /healthz still gets its answer.
//! - Plain requests may be HTTP/1.0 (load balancer health checks often are)
//!   and then need no Host; upgrades need HTTP/1.1 and Host.
//! - An upgrade request with a body (`Content-Length` ≠ 0 or any
//!   `Transfer-Encoding`) is rejected: the bytes after the header are read as
//!   WebSocket frames, so a body would be smuggled into the frame stream.
//! - Header lines the builders write never contain CR or LF: such bytes in a
//!   caller's name, value or reason are dropped (no response splitting).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Requests larger than this (or with more headers) get 431.
pub const MAX_HEADER_BYTES: usize = 8192;
pub const MAX_HEADERS: usize = 32;
/// How much of a non-101 response body the client waits for and keeps, to
/// tell the user why the relay refused.
pub const MAX_ERROR_BODY_BYTES: usize = 512;

/// RFC 6455 §1.3: appended to the key before hashing.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A handshake failure on the server side: the HTTP status to answer with and
/// a one-line reason for the body and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: &'static str,
}

impl Reject {
    const fn new(status: u16, reason: &'static str) -> Self {
        Reject { status, reason }
    }

    /// The complete HTTP answer for this rejection.
    pub fn response(&self) -> Vec<u8> {
        error_response(self.status, self.reason)
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status,
            reason_phrase(self.status),
            self.reason
        )
    }
}
impl std::error::Error for Reject {}

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
    /// The first query parameter called `name` (an empty string for `?name`).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first header called `lowercase_name`, leading and trailing
    /// whitespace already removed.
    pub fn header(&self, lowercase_name: &str) -> Option<&[u8]> {
        find_header(&self.headers, lowercase_name)
    }

    /// True for a WebSocket upgrade, false for a plain GET.
    pub fn is_upgrade(&self) -> bool {
        self.ws_key.is_some()
    }
}

// Reasons are constants so that the relay can count rejects by reason in
// /metrics without allocating, and tests can name them.
const R_BAD_LINE: Reject = Reject::new(400, "malformed request line");
const R_BAD_VERSION_HTTP: Reject = Reject::new(400, "unsupported HTTP version");
const R_BAD_HEADER: Reject = Reject::new(400, "malformed header line");
const R_TOO_LARGE: Reject = Reject::new(431, "request header too large");
const R_TOO_MANY: Reject = Reject::new(431, "too many request headers");
const R_METHOD: Reject = Reject::new(405, "only GET is supported");
const R_TARGET: Reject = Reject::new(400, "request target must be a path");
const R_HTTP10_UPGRADE: Reject = Reject::new(400, "WebSocket upgrade requires HTTP/1.1");
const R_NO_HOST: Reject = Reject::new(400, "missing Host header");
const R_DUP_HOST: Reject = Reject::new(400, "duplicate Host header");
const R_NO_UPGRADE: Reject = Reject::new(400, "Upgrade header must contain websocket");
const R_NO_CONNECTION: Reject = Reject::new(400, "Connection header must contain upgrade");
const R_NO_VERSION: Reject = Reject::new(426, "missing Sec-WebSocket-Version (need 13)");
const R_BAD_VERSION: Reject = Reject::new(426, "unsupported Sec-WebSocket-Version (need 13)");
const R_NO_KEY: Reject = Reject::new(400, "missing Sec-WebSocket-Key");
const R_DUP_KEY: Reject = Reject::new(400, "duplicate Sec-WebSocket-Key");
const R_BAD_KEY: Reject = Reject::new(400, "Sec-WebSocket-Key is not 16 bytes of base64");
const R_BODY: Reject = Reject::new(400, "upgrade request must not have a body");
const R_BAD_PROTOCOL: Reject = Reject::new(400, "malformed Sec-WebSocket-Protocol");
const R_PATH_ESCAPE: Reject = Reject::new(400, "malformed percent-escape in path");
const R_PATH_UTF8: Reject = Reject::new(400, "path is not valid UTF-8");
const R_QUERY_ESCAPE: Reject = Reject::new(400, "malformed percent-escape in query");
const R_QUERY_UTF8: Reject = Reject::new(400, "query is not valid UTF-8");

/// Parse a request from the front of `buf`. `Ok(None)`: incomplete (and still
/// under MAX_HEADER_BYTES). `Ok(Some((req, consumed)))`: complete and valid.
/// `Err(reject)`: answer with `error_response(reject.status, reject.reason)`.
///
/// Deterministic in the bytes seen: once a prefix of a stream yields
/// `Some` or `Err`, every longer buffer starting with the same bytes yields
/// the same answer (the fuzz target checks this).
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, Reject> {
    // Only the first MAX_HEADER_BYTES can matter: a header that has not ended
    // by then is too large whatever follows, so a slow client sending a giant
    // header is refused as soon as the cap is reached, and no parse ever looks
    // at more than the cap.
    let window = &buf[..buf.len().min(MAX_HEADER_BYTES)];
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let consumed = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEADER_BYTES => return Err(R_TOO_LARGE),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(R_TOO_MANY),
        Err(httparse::Error::Version) => return Err(R_BAD_VERSION_HTTP),
        Err(httparse::Error::Token | httparse::Error::Status) => return Err(R_BAD_LINE),
        Err(_) => return Err(R_BAD_HEADER),
    };
    // All three are set once the parse is complete.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(R_BAD_LINE);
    };
    if method != "GET" {
        return Err(R_METHOD);
    }
    // Origin form only (RFC 7230 §5.3.1); "*" and absolute URIs are not for us.
    if !target.starts_with('/') {
        return Err(R_TARGET);
    }

    let hdrs = &*req.headers;
    let named = |name: &'static str| {
        hdrs.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| trim_ows(h.value))
    };

    // RFC 7230 §5.4: HTTP/1.1 needs exactly one Host.
    match named("host").count() {
        0 if version == 1 => return Err(R_NO_HOST),
        0 | 1 => {}
        _ => return Err(R_DUP_HOST),
    }

    let (raw_path, raw_query) = match target.find('?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, ""),
    };
    let path = decode_component(raw_path, R_PATH_ESCAPE, R_PATH_UTF8)?;
    let mut query = Vec::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        query.push((
            decode_component(name, R_QUERY_ESCAPE, R_QUERY_UTF8)?,
            decode_component(value, R_QUERY_ESCAPE, R_QUERY_UTF8)?,
        ));
    }

    let upgrade_ws = has_token(named("upgrade"), "websocket");
    let wants_ws = upgrade_ws
        || named("sec-websocket-key").next().is_some()
        || named("sec-websocket-version").next().is_some();

    let ws_key = if wants_ws {
        Some(validate_upgrade(hdrs, version, upgrade_ws)?)
    } else {
        None
    };

    let mut protocols = Vec::new();
    for value in named("sec-websocket-protocol") {
        let value = std::str::from_utf8(value).map_err(|_| R_BAD_PROTOCOL)?;
        protocols.extend(tokens(value).map(str::to_owned));
    }

    let headers = hdrs
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), trim_ows(h.value).to_vec()))
        .collect();

    Ok(Some((
        Request {
            path,
            query,
            ws_key,
            protocols,
            headers,
        },
        consumed,
    )))
}

/// Whether calling [`parse_request`] again can give a different answer now
/// that `buf` grew from `old_len` bytes: true once the new bytes end the
/// header (a blank line; httparse also accepts bare LF line ends) or reach
/// MAX_HEADER_BYTES.
///
/// `parse_request` re-reads the buffer from the start, so a loop that calls
/// it on every read lets a client that sends its header one byte per packet
/// buy up to MAX_HEADER_BYTES²/2 bytes of parsing; with this check first the
/// cost is linear. (Malformed input is then only rejected at the blank line,
/// the cap, or the handshake deadline.)
pub fn request_may_be_complete(buf: &[u8], old_len: usize) -> bool {
    if buf.len() >= MAX_HEADER_BYTES {
        return true;
    }
    // A blank line is "\n\n" or "\n\r\n"; it may straddle old and new bytes.
    let from = old_len.min(buf.len()).saturating_sub(2);
    buf[from..]
        .windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && buf.get(from + i + 2) == Some(&b'\n')))
}

/// RFC 6455 §4.2.1 for a request that asked for a WebSocket; returns the key.
fn validate_upgrade(
    hdrs: &[httparse::Header<'_>],
    version: u8,
    upgrade_ws: bool,
) -> Result<String, Reject> {
    let named = |name: &'static str| {
        hdrs.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| trim_ows(h.value))
    };
    if version != 1 {
        return Err(R_HTTP10_UPGRADE);
    }
    if !upgrade_ws {
        return Err(R_NO_UPGRADE);
    }
    if !has_token(named("connection"), "upgrade") {
        return Err(R_NO_CONNECTION);
    }
    // §4.4: a version mismatch is a 426 naming the version we speak, checked
    // before the key because other versions may use other key formats.
    let mut versions = named("sec-websocket-version").peekable();
    if versions.peek().is_none() {
        return Err(R_NO_VERSION);
    }
    if !versions.all(|v| v == b"13") {
        return Err(R_BAD_VERSION);
    }
    let mut keys = named("sec-websocket-key");
    let key = keys.next().ok_or(R_NO_KEY)?;
    if keys.next().is_some() {
        return Err(R_DUP_KEY);
    }
    // §4.1: the key is 16 random bytes in base64, so exactly 24 characters;
    // the STANDARD engine also rejects non-canonical padding and trailing bits.
    let decoded_len = BASE64.decode(key).map(|k| k.len());
    if key.len() != 24 || decoded_len != Ok(16) {
        return Err(R_BAD_KEY);
    }
    // The frames start right after the header: a body would be read as frames.
    let has_body =
        named("content-length").any(|v| v != b"0") || named("transfer-encoding").next().is_some();
    if has_body {
        return Err(R_BODY);
    }
    // Base64 is ASCII, so this cannot fail; no unwrap on client bytes anyway.
    String::from_utf8(key.to_vec()).map_err(|_| R_BAD_KEY)
}

/// Sec-WebSocket-Accept for a Sec-WebSocket-Key.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// The 101 Switching Protocols response, with extra headers (name, value).
pub fn response_101(key: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    push_header(&mut out, "Sec-WebSocket-Accept", &accept_key(key));
    for (name, value) in extra_headers {
        push_header(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A plain HTTP error response, body = reason + "\n", `Connection: close`;
/// 426 carries `Sec-WebSocket-Version: 13`, 405 carries `Allow: GET`.
pub fn error_response(status: u16, reason: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(reason.len() + 1);
    push_line_bytes(&mut body, reason);
    body.push(b'\n');
    let extra: &[(&str, &str)] = match status {
        426 => &[("Sec-WebSocket-Version", "13")],
        405 => &[("Allow", "GET")],
        _ => &[],
    };
    response_with_body(status, "text/plain", extra, &body)
}

/// A plain HTTP response with a body (for /healthz, /metrics), with
/// `Connection: close`: the relay serves one request per connection.
pub fn plain_response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    response_with_body(status, content_type, &[], body)
}

fn response_with_body(
    status: u16,
    content_type: &str,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    push_header(&mut out, "Content-Type", content_type);
    push_header(&mut out, "Content-Length", &body.len().to_string());
    out.extend_from_slice(b"Connection: close\r\n");
    for (name, value) in extra_headers {
        push_header(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The standard reason phrase for the statuses sockrelay uses.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Client side: the upgrade request and the accept value to expect.
///
/// `path_and_query` goes on the request line as given: encode query values
/// with [`percent_encode`]. CR, LF and spaces in it, and CR/LF in header
/// names and values, are dropped rather than allowed to break the request.
pub fn client_request(
    host: &str,
    path_and_query: &str,
    extra_headers: &[(&str, &str)],
    key: [u8; 16],
) -> (Vec<u8>, String) {
    let key = BASE64.encode(key);
    let mut out = Vec::with_capacity(200 + path_and_query.len());
    out.extend_from_slice(b"GET ");
    out.extend(
        path_and_query
            .bytes()
            .filter(|b| !matches!(b, b'\r' | b'\n' | b' ')),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(&mut out, "Host", host);
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
    push_header(&mut out, "Sec-WebSocket-Key", &key);
    out.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
    for (name, value) in extra_headers {
        push_header(&mut out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    let accept = accept_key(&key);
    (out, accept)
}

/// Percent-encode everything but RFC 3986 unreserved characters, for query
/// values (tokens, ids) that clients put into `path_and_query`.
pub fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

/// A server's answer to our upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Response {
    /// The first header called `lowercase_name`, whitespace trimmed.
    pub fn header(&self, lowercase_name: &str) -> Option<&[u8]> {
        find_header(&self.headers, lowercase_name)
    }
}

/// Why the server did not accept our upgrade. `Display` gives what a user can
/// act on, e.g. "relay answered 403 Forbidden: wrong token".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// A well-formed HTTP answer other than 101. `message` is the first line
    /// of the body (control characters replaced), `location` the redirect
    /// target of a 3xx.
    Rejected {
        status: u16,
        status_text: String,
        message: String,
        location: Option<String>,
    },
    /// A 101 that is not a valid WebSocket accept (RFC 6455 §4.1 client
    /// checks): the reason names the failed check.
    BadUpgrade(&'static str),
    /// A 101 whose Sec-WebSocket-Accept does not match our key: something in
    /// between (a proxy, a cache) answered for the relay, or it is not one.
    BadAccept { expected: String, got: String },
    /// Not parseable as an HTTP/1.x response (e.g. TLS on a plain port).
    Malformed(&'static str),
    /// The response header did not end within MAX_HEADER_BYTES.
    TooLarge,
    /// The connection closed before a complete response header arrived.
    Closed { received: usize },
}

impl ClientError {
    /// The HTTP status of a rejection (403, 404, 503, ...), for retry policy.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Rejected {
                status,
                status_text,
                message,
                location,
            } => {
                write!(f, "relay answered {status}")?;
                if !status_text.is_empty() {
                    write!(f, " {status_text}")?;
                }
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                if let Some(location) = location {
                    write!(f, " (Location: {location})")?;
                }
                Ok(())
            }
            ClientError::BadUpgrade(why) => write!(f, "relay sent an invalid upgrade: {why}"),
            ClientError::BadAccept { expected, got } => write!(
                f,
                "relay sent a wrong Sec-WebSocket-Accept (expected {expected}, got {got}): \
                 is something else answering on that address?"
            ),
            ClientError::Malformed(why) => {
                write!(
                    f,
                    "relay sent a malformed HTTP response ({why}): is it really an HTTP server?"
                )
            }
            ClientError::TooLarge => write!(
                f,
                "relay's response header exceeds {MAX_HEADER_BYTES} bytes"
            ),
            ClientError::Closed { received: 0 } => {
                write!(f, "connection closed before the relay answered")
            }
            ClientError::Closed { received } => write!(
                f,
                "connection closed in the middle of the relay's answer ({received} bytes received)"
            ),
        }
    }
}
impl std::error::Error for ClientError {}

/// Parse the server's response from the front of `buf`. `Ok(None)`: need
/// more. `Ok(Some((resp, consumed)))`: a valid 101 with the right accept
/// value; bytes after `consumed` are already WebSocket frames. An error
/// response is only reported once its body (Content-Length, or up to 512
/// bytes / connection close via `parse_response_eof`) is in.
pub fn parse_response(
    buf: &[u8],
    expected_accept: &str,
) -> Result<Option<(Response, usize)>, ClientError> {
    let window = &buf[..buf.len().min(MAX_HEADER_BYTES)];
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let consumed = match resp.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEADER_BYTES => {
            return Err(ClientError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(malformed(e)),
    };
    let status = resp.code.unwrap_or(0);
    let hdrs = &*resp.headers;
    if status != 101 {
        let reason = resp.reason.unwrap_or("");
        return match error_body(hdrs, status, &buf[consumed..], false) {
            Some(body) => Err(rejected(status, reason, hdrs, body)),
            None => Ok(None),
        };
    }
    let named = |name: &'static str| {
        hdrs.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| trim_ows(h.value))
    };
    // RFC 6455 §4.1, the client's checks of the server's handshake.
    if !has_token(named("upgrade"), "websocket") {
        return Err(ClientError::BadUpgrade(
            "Upgrade header must contain websocket",
        ));
    }
    if !has_token(named("connection"), "upgrade") {
        return Err(ClientError::BadUpgrade(
            "Connection header must contain upgrade",
        ));
    }
    let mut accepts = named("sec-websocket-accept");
    let got = accepts.next().unwrap_or(b"");
    if got != expected_accept.as_bytes() || accepts.next().is_some() {
        return Err(ClientError::BadAccept {
            expected: expected_accept.to_owned(),
            got: printable(got),
        });
    }
    // We never offer extensions, so the server must not pick one.
    if named("sec-websocket-extensions").any(|v| !v.is_empty()) {
        return Err(ClientError::BadUpgrade(
            "extension negotiated that we did not offer",
        ));
    }
    let headers = hdrs
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), trim_ows(h.value).to_vec()))
        .collect();
    Ok(Some((Response { status, headers }, consumed)))
}

/// The connection closed with `buf` holding a partial response: the best
/// error that can be made of it.
pub fn parse_response_eof(buf: &[u8]) -> ClientError {
    let window = &buf[..buf.len().min(MAX_HEADER_BYTES)];
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(window) {
        Ok(httparse::Status::Complete(n)) => {
            let status = resp.code.unwrap_or(0);
            if status == 101 {
                // A 101 is complete without a body; the caller should have
                // taken it from parse_response. Closed right after it.
                return ClientError::Closed {
                    received: buf.len(),
                };
            }
            let body = error_body(resp.headers, status, &buf[n..], true).unwrap_or(&[]);
            rejected(status, resp.reason.unwrap_or(""), resp.headers, body)
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEADER_BYTES => ClientError::TooLarge,
        Ok(httparse::Status::Partial) => ClientError::Closed {
            received: buf.len(),
        },
        Err(e) => malformed(e),
    }
}

fn malformed(e: httparse::Error) -> ClientError {
    ClientError::Malformed(match e {
        httparse::Error::Status | httparse::Error::Version => "invalid status line",
        httparse::Error::TooManyHeaders => "too many headers",
        _ => "invalid header",
    })
}

fn rejected(status: u16, reason: &str, hdrs: &[httparse::Header<'_>], body: &[u8]) -> ClientError {
    let value = |name: &str| {
        hdrs.iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| trim_ows(h.value))
    };
    // The first line of an HTML error page ("<html>") tells the user nothing.
    let html = value("content-type")
        .is_some_and(|ct| ct.windows(4).any(|w| w.eq_ignore_ascii_case(b"html")));
    let first_line = body
        .split(|&b| b == b'\n')
        .map(|line| trim_ows(line.strip_suffix(b"\r").unwrap_or(line)))
        .find(|line| !line.is_empty())
        .filter(|_| !html)
        .unwrap_or(&[]);
    let location = value("location")
        .map(printable)
        .filter(|_| (300..400).contains(&status));
    ClientError::Rejected {
        status,
        status_text: printable(reason.as_bytes()),
        message: printable(first_line),
        location,
    }
}

/// The part of a non-101 response's body worth showing, once it is complete
/// enough to decide: `None` means wait for more (unless `eof`). The answer
/// depends only on the first bytes, so it is the same for any longer buffer.
fn error_body<'a>(
    hdrs: &[httparse::Header<'_>],
    status: u16,
    after_header: &'a [u8],
    eof: bool,
) -> Option<&'a [u8]> {
    let cap = after_header.len().min(MAX_ERROR_BODY_BYTES);
    // RFC 7230 §3.3.3: these never have a body.
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Some(&[]);
    }
    let value = |name: &str| {
        hdrs.iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| trim_ows(h.value))
    };
    if value("transfer-encoding").is_some_and(|te| has_token(std::iter::once(te), "chunked")) {
        return chunked_first(after_header, eof);
    }
    let want = match value("content-length").and_then(parse_decimal) {
        Some(len) => len.min(MAX_ERROR_BODY_BYTES as u64) as usize,
        None => MAX_ERROR_BODY_BYTES, // read until close, but no further than this
    };
    if after_header.len() >= want {
        Some(&after_header[..want])
    } else if eof {
        Some(&after_header[..cap])
    } else {
        None
    }
}

/// Data of the first chunk of a chunked body (capped), or what there is at eof.
fn chunked_first(after_header: &[u8], eof: bool) -> Option<&[u8]> {
    // The size line is looked for in a fixed window so that the answer depends
    // on the same bytes whatever arrives later.
    const SIZE_LINE_MAX: usize = 34;
    let head = &after_header[..after_header.len().min(SIZE_LINE_MAX)];
    let Some(line_end) = head.windows(2).position(|w| w == b"\r\n") else {
        return (eof || head.len() >= SIZE_LINE_MAX).then_some(&[]);
    };
    let size_field = head[..line_end].split(|&b| b == b';').next().unwrap_or(&[]);
    let Some(size) = parse_hex(trim_ows(size_field)) else {
        return Some(&[]);
    };
    let data = &after_header[line_end + 2..];
    let want = size.min(MAX_ERROR_BODY_BYTES as u64) as usize;
    if data.len() >= want {
        Some(&data[..want])
    } else if eof {
        Some(data)
    } else {
        None
    }
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

fn parse_hex(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 15 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        let digit = char::from(d).to_digit(16)?;
        Some(n * 16 + u64::from(digit))
    })
}

/// Untrusted bytes for a message or a log line: lossy UTF-8, no control
/// characters (a hostile server must not drive the user's terminal).
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn find_header<'a>(headers: &'a [(String, Vec<u8>)], lowercase_name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == lowercase_name)
        .map(|(_, v)| v.as_slice())
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Comma-separated list elements (RFC 7230 §7), whitespace trimmed, empty
/// elements skipped.
fn tokens(list: &str) -> impl Iterator<Item = &str> {
    list.split(',')
        .map(|t| t.trim_matches([' ', '\t']))
        .filter(|t| !t.is_empty())
}

/// Whether any of the header values (each a comma list) holds `token`,
/// compared case-insensitively.
fn has_token<'a>(values: impl Iterator<Item = &'a [u8]>, token: &str) -> bool {
    values.into_iter().any(|v| {
        v.split(|&b| b == b',')
            .any(|t| trim_ows(t).eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Percent-decode one path or query component; `+` stays `+`.
fn decode_component(s: &str, bad_escape: Reject, bad_utf8: Reject) -> Result<String, Reject> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(bad_escape)?;
            let hi = char::from(hex[0]).to_digit(16).ok_or(bad_escape)?;
            let lo = char::from(hex[1]).to_digit(16).ok_or(bad_escape)?;
            // Two hex digits: at most 255.
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad_utf8)
}

/// Append `name: value\r\n`, dropping CR and LF so that no caller-supplied
/// string can end the header line (response splitting).
fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    push_line_bytes(out, name);
    out.extend_from_slice(b": ");
    push_line_bytes(out, value);
    out.extend_from_slice(b"\r\n");
}

fn push_line_bytes(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().filter(|b| !matches!(b, b'\r' | b'\n')));
}

#[cfg(test)]
mod tests;
