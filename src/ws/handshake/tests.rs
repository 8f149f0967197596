//! Unit tests of `ws::handshake`, kept apart so that `handshake.rs` reads as the codec alone.

use super::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A dest upgrade as our clients send it.
fn upgrade(extra: &str) -> String {
    format!(
        "GET /dest?id=0b1c HTTP/1.1\r\nHost: relay.example:8080\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
         {extra}\r\n"
    )
}

/// A request with the given request line and header lines.
fn req(line: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("{line}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

const WS_HEADERS: [&str; 5] = [
    "Host: h",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
];

/// WS_HEADERS with the header called `name` replaced (or dropped if None).
fn ws_with(name: &str, replacement: Option<&str>) -> Vec<u8> {
    let mut hs: Vec<&str> = Vec::new();
    for h in WS_HEADERS {
        if h.split(':').next() == Some(name) {
            hs.extend(replacement);
        } else {
            hs.push(h);
        }
    }
    req("GET / HTTP/1.1", &hs)
}

fn ok(buf: &[u8]) -> (Request, usize) {
    match parse_request(buf) {
        Ok(Some(r)) => r,
        other => panic!(
            "expected a request from {:?}, got {other:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

fn rejected(buf: &[u8]) -> Reject {
    match parse_request(buf) {
        Err(r) => r,
        other => panic!(
            "expected a reject for {:?}, got {other:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

#[test]
fn accept_key_rfc_example() {
    // RFC 6455 §1.3.
    assert_eq!(accept_key(KEY), ACCEPT);
}

#[test]
fn valid_upgrade_parses_fully() {
    let text = upgrade("Sockrelay-Admission: abc\r\nSec-WebSocket-Protocol: chat, v2\r\n");
    let (r, n) = ok(text.as_bytes());
    assert_eq!(n, text.len());
    assert_eq!(r.path, "/dest");
    assert_eq!(r.query, vec![("id".to_owned(), "0b1c".to_owned())]);
    assert_eq!(r.query_param("id"), Some("0b1c"));
    assert_eq!(r.query_param("token"), None);
    assert_eq!(r.ws_key.as_deref(), Some(KEY));
    assert!(r.is_upgrade());
    assert_eq!(r.protocols, vec!["chat", "v2"]);
    assert_eq!(r.header("sockrelay-admission"), Some(&b"abc"[..]));
    assert_eq!(r.header("host"), Some(&b"relay.example:8080"[..]));
    assert_eq!(r.header("nope"), None);
    assert!(r.headers.iter().all(|(n, _)| *n == n.to_ascii_lowercase()));
    assert_eq!(r.headers.len(), 7);
}

#[test]
fn every_split_point_is_partial_then_complete() {
    let text = upgrade("Sockrelay-Admission: abc\r\n");
    let bytes = text.as_bytes();
    for cut in 0..bytes.len() {
        assert_eq!(parse_request(&bytes[..cut]), Ok(None), "cut at {cut}");
    }
    let whole = ok(bytes);
    // Bytes after the header (the first frames) are not consumed.
    let mut more = bytes.to_vec();
    more.extend_from_slice(&[0x82, 0x85, 1, 2, 3, 4, 5]);
    assert_eq!(ok(&more), whole);
    assert_eq!(whole.1, bytes.len());
}

#[test]
fn plain_get_is_not_an_upgrade() {
    let (r, n) = ok(&req(
        "GET /healthz HTTP/1.1",
        &["Host: x", "Connection: keep-alive"],
    ));
    assert_eq!(r.path, "/healthz");
    assert_eq!(r.ws_key, None);
    assert!(!r.is_upgrade());
    assert!(n > 0);
    // An Upgrade naming another protocol is ignored (RFC 7230 §6.7).
    let (r, _) = ok(&req(
        "GET /metrics HTTP/1.1",
        &[
            "Host: x",
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
        ],
    ));
    assert_eq!(r.ws_key, None);
    // Connection: upgrade alone names no protocol.
    let (r, _) = ok(&req(
        "GET /healthz HTTP/1.1",
        &["Host: x", "Connection: upgrade"],
    ));
    assert_eq!(r.ws_key, None);
}

#[test]
fn http10_plain_ok_upgrade_not() {
    // Load balancer health checks are often HTTP/1.0 without Host.
    let (r, _) = ok(&req("GET /healthz HTTP/1.0", &[]));
    assert_eq!(r.ws_key, None);
    let mut hs = WS_HEADERS.to_vec();
    hs.remove(0);
    assert_eq!(rejected(&req("GET / HTTP/1.0", &hs)), R_HTTP10_UPGRADE);
    assert_eq!(rejected(&req("GET / HTTP/1.0", &WS_HEADERS)).status, 400);
    assert_eq!(rejected(b"GET / HTTP/2.0\r\n\r\n"), R_BAD_VERSION_HTTP);
}

#[test]
fn method_must_be_get() {
    for m in ["POST", "HEAD", "PUT", "OPTIONS", "get"] {
        let r = rejected(&req(&format!("{m} / HTTP/1.1"), &WS_HEADERS));
        assert_eq!(r, R_METHOD, "{m}");
        assert_eq!(r.status, 405);
    }
}

#[test]
fn target_must_be_a_path() {
    assert_eq!(rejected(&req("GET * HTTP/1.1", &WS_HEADERS)), R_TARGET);
    assert_eq!(
        rejected(&req("GET http://relay/dest HTTP/1.1", &WS_HEADERS)),
        R_TARGET
    );
}

#[test]
fn host_rules() {
    assert_eq!(rejected(&ws_with("Host", None)), R_NO_HOST);
    assert_eq!(rejected(&req("GET /healthz HTTP/1.1", &[])), R_NO_HOST);
    let mut hs = WS_HEADERS.to_vec();
    hs.push("host: other");
    assert_eq!(rejected(&req("GET / HTTP/1.1", &hs)), R_DUP_HOST);
}

#[test]
fn upgrade_token_rules() {
    // Upgrade missing while the Sec-WebSocket-* headers ask for it.
    assert_eq!(rejected(&ws_with("Upgrade", None)), R_NO_UPGRADE);
    assert_eq!(
        rejected(&ws_with("Upgrade", Some("Upgrade: h2c"))),
        R_NO_UPGRADE
    );
    assert_eq!(
        rejected(&ws_with("Upgrade", Some("Upgrade: websockets"))),
        R_NO_UPGRADE
    );
    for v in [
        "WebSocket",
        "WEBSOCKET",
        "h2c, websocket",
        " websocket ,foo",
        "\twebsocket",
    ] {
        let (r, _) = ok(&ws_with("Upgrade", Some(&format!("Upgrade: {v}"))));
        assert_eq!(r.ws_key.as_deref(), Some(KEY), "{v}");
    }
    let (r, _) = ok(&ws_with("Upgrade", Some("uPgRaDe: websocket")));
    assert!(r.is_upgrade());
}

#[test]
fn connection_token_rules() {
    assert_eq!(rejected(&ws_with("Connection", None)), R_NO_CONNECTION);
    assert_eq!(
        rejected(&ws_with("Connection", Some("Connection: keep-alive"))),
        R_NO_CONNECTION
    );
    assert_eq!(
        rejected(&ws_with("Connection", Some("Connection: upgrades"))),
        R_NO_CONNECTION
    );
    for v in [
        "upgrade",
        "keep-alive, Upgrade",
        "UPGRADE,keep-alive",
        "keep-alive ,  upgrade  ",
    ] {
        let (r, _) = ok(&ws_with("Connection", Some(&format!("Connection: {v}"))));
        assert!(r.is_upgrade(), "{v}");
    }
    // The list may be split over several header lines.
    let mut hs = WS_HEADERS.to_vec();
    hs[2] = "Connection: keep-alive";
    hs.push("connection: Upgrade");
    assert!(ok(&req("GET / HTTP/1.1", &hs)).0.is_upgrade());
}

#[test]
fn version_rules() {
    let r = rejected(&ws_with("Sec-WebSocket-Version", None));
    assert_eq!(r, R_NO_VERSION);
    assert_eq!(r.status, 426);
    for v in ["8", "12", "13, 8", "", "14"] {
        let line = format!("Sec-WebSocket-Version: {v}");
        let r = rejected(&ws_with("Sec-WebSocket-Version", Some(&line)));
        assert_eq!(r, R_BAD_VERSION, "{v}");
    }
    // A version header alone asks for a WebSocket: half an upgrade.
    assert_eq!(
        rejected(&req(
            "GET / HTTP/1.1",
            &["Host: h", "Sec-WebSocket-Version: 13"]
        )),
        R_NO_UPGRADE
    );
    // Version is checked before the key: other versions may key differently.
    let mut hs = WS_HEADERS.to_vec();
    hs[3] = "Sec-WebSocket-Key: whatever";
    hs[4] = "Sec-WebSocket-Version: 8";
    assert_eq!(rejected(&req("GET / HTTP/1.1", &hs)), R_BAD_VERSION);
}

#[test]
fn key_rules() {
    assert_eq!(rejected(&ws_with("Sec-WebSocket-Key", None)), R_NO_KEY);
    let bad = [
        "",
        "dGhlIHNhbXBsZSBub25jZQ",       // no padding
        "dGhlIHNhbXBsZSBub25jZQ=",      // short padding
        "dGhlIHNhbXBsZSBub25jZR==",     // non-zero trailing bits
        "dGhlIHNhbXBsZSBub25jZQ==dGhl", // 19 bytes
        "dGhlIHNhbXBsZSBub25j",         // 15 bytes
        "dGhlIHNhbXBsZSBub25jZSEh",     // 18 bytes
        "dGhlIHNhbXBsZSBub25jZ!==",     // not base64
        "dGhl IHNhbXBsZSBub25jZQ==",    // inner space
        "dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==",
    ];
    for k in bad {
        let line = format!("Sec-WebSocket-Key: {k}");
        assert_eq!(
            rejected(&ws_with("Sec-WebSocket-Key", Some(&line))),
            R_BAD_KEY,
            "{k:?}"
        );
    }
    let mut hs = WS_HEADERS.to_vec();
    hs.push("sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==");
    assert_eq!(rejected(&req("GET / HTTP/1.1", &hs)), R_DUP_KEY);
    // Case of the header name does not matter; surrounding blanks are trimmed.
    let (r, _) = ok(&ws_with(
        "Sec-WebSocket-Key",
        Some("SEC-WEBSOCKET-KEY:   AAAAAAAAAAAAAAAAAAAAAA==  "),
    ));
    assert_eq!(r.ws_key.as_deref(), Some("AAAAAAAAAAAAAAAAAAAAAA=="));
    // A key without Upgrade/Connection is half an upgrade.
    assert_eq!(
        rejected(&req(
            "GET / HTTP/1.1",
            &["Host: h", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="]
        )),
        R_NO_UPGRADE
    );
}

#[test]
fn upgrade_with_body_is_rejected() {
    let mut hs = WS_HEADERS.to_vec();
    hs.push("Content-Length: 5");
    assert_eq!(rejected(&req("GET / HTTP/1.1", &hs)), R_BODY);
    hs.pop();
    hs.push("Transfer-Encoding: chunked");
    assert_eq!(rejected(&req("GET / HTTP/1.1", &hs)), R_BODY);
    hs.pop();
    hs.push("Content-Length: 0");
    assert!(ok(&req("GET / HTTP/1.1", &hs)).0.is_upgrade());
}

#[test]
fn protocols_from_all_lines_in_order() {
    let mut hs = WS_HEADERS.to_vec();
    hs.push("Sec-WebSocket-Protocol: chat, , superchat");
    hs.push("sec-websocket-protocol: v2");
    assert_eq!(
        ok(&req("GET / HTTP/1.1", &hs)).0.protocols,
        vec!["chat", "superchat", "v2"]
    );
    assert!(ok(&req("GET / HTTP/1.1", &WS_HEADERS))
        .0
        .protocols
        .is_empty());
}

#[test]
fn percent_decoding() {
    let (r, _) = ok(&req(
        "GET /de%73t/%C3%A9%2f?id=a%20b&token=x%2By+z&flag&&empty=&%3D=%26&id=second HTTP/1.1",
        &WS_HEADERS,
    ));
    assert_eq!(r.path, "/dest/é/");
    let q: Vec<(&str, &str)> = r
        .query
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        q,
        vec![
            ("id", "a b"),
            ("token", "x+y+z"),
            ("flag", ""),
            ("empty", ""),
            ("=", "&"),
            ("id", "second"),
        ]
    );
    assert_eq!(r.query_param("id"), Some("a b"), "first one wins");
    assert_eq!(r.query_param("flag"), Some(""));
    // "?" alone and a value containing "=".
    let (r, _) = ok(&req("GET /origin? HTTP/1.1", &["Host: h"]));
    assert_eq!((r.path.as_str(), r.query.len()), ("/origin", 0));
    let (r, _) = ok(&req("GET /?a=b=c HTTP/1.1", &["Host: h"]));
    assert_eq!(r.query_param("a"), Some("b=c"));
}

#[test]
fn percent_decoding_errors() {
    for (target, want) in [
        ("/%", R_PATH_ESCAPE),
        ("/%4", R_PATH_ESCAPE),
        ("/%zz", R_PATH_ESCAPE),
        ("/%+1", R_PATH_ESCAPE),
        ("/%ff", R_PATH_UTF8),
        ("/%C3", R_PATH_UTF8),
        ("/%ED%A0%80", R_PATH_UTF8), // a surrogate
        ("/?a=%", R_QUERY_ESCAPE),
        ("/?a=%g0", R_QUERY_ESCAPE),
        ("/?%=1", R_QUERY_ESCAPE),
        ("/?a=%80", R_QUERY_UTF8),
        ("/?%fe=1", R_QUERY_UTF8),
    ] {
        let r = rejected(&req(&format!("GET {target} HTTP/1.1"), &WS_HEADERS));
        assert_eq!(r, want, "{target}");
        assert_eq!(r.status, 400);
    }
}

#[test]
fn percent_encode_round_trips() {
    let raw = "a b+c/d?e&f=g%h~é\u{1F511}";
    let enc = percent_encode(raw);
    assert!(enc
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
    let (r, _) = ok(&req(&format!("GET /x?t={enc} HTTP/1.1"), &["Host: h"]));
    assert_eq!(r.query_param("t"), Some(raw));
}

#[test]
fn oversized_header_is_431_as_soon_as_it_passes_the_cap() {
    let mut slow = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
    slow.resize(MAX_HEADER_BYTES - 1, b'a');
    assert_eq!(parse_request(&slow), Ok(None));
    slow.push(b'a');
    assert_eq!(parse_request(&slow), Err(R_TOO_LARGE));
    assert_eq!(R_TOO_LARGE.status, 431);
    slow.extend_from_slice(b"\r\n\r\n");
    assert_eq!(parse_request(&slow), Err(R_TOO_LARGE));
    // A giant request line alone, too.
    let mut line = b"GET /".to_vec();
    line.resize(MAX_HEADER_BYTES + 100, b'a');
    assert_eq!(parse_request(&line), Err(R_TOO_LARGE));
}

#[test]
fn header_of_exactly_the_cap_is_fine() {
    let mut text = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
    text.resize(MAX_HEADER_BYTES - 4, b'a');
    text.extend_from_slice(b"\r\n\r\n");
    assert_eq!(text.len(), MAX_HEADER_BYTES);
    assert_eq!(ok(&text).1, MAX_HEADER_BYTES);
    // Followed by lots of frame bytes: still fine, still exact.
    text.extend_from_slice(&[0u8; 3 * MAX_HEADER_BYTES]);
    assert_eq!(ok(&text).1, MAX_HEADER_BYTES);
}

#[test]
fn header_count_cap() {
    let fill = |n: usize| -> Vec<String> { (0..n).map(|i| format!("X-F{i}: v")).collect() };
    let mut hs: Vec<String> = WS_HEADERS.iter().map(|s| s.to_string()).collect();
    hs.extend(fill(MAX_HEADERS - WS_HEADERS.len()));
    let refs: Vec<&str> = hs.iter().map(String::as_str).collect();
    let (r, _) = ok(&req("GET / HTTP/1.1", &refs));
    assert_eq!(r.headers.len(), MAX_HEADERS);
    hs.push("X-One-Too-Many: v".into());
    let refs: Vec<&str> = hs.iter().map(String::as_str).collect();
    let r = rejected(&req("GET / HTTP/1.1", &refs));
    assert_eq!(r, R_TOO_MANY);
    assert_eq!(r.status, 431);
}

#[test]
fn garbage_is_400() {
    // A TLS ClientHello sent to the plain port.
    assert_eq!(rejected(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).status, 400);
    assert_eq!(rejected(b"GET  / HTTP/1.1\r\n\r\n"), R_BAD_LINE);
    assert_eq!(
        rejected(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"),
        R_BAD_HEADER
    );
    assert_eq!(
        rejected(b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n"),
        R_BAD_HEADER
    );
    assert_eq!(
        rejected(b"GET / HTTP/1.1\r\n folded: x\r\n\r\n").status,
        400
    );
    // Non-UTF-8 raw bytes in the target.
    assert_eq!(
        rejected(b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n").status,
        400
    );
    assert_eq!(parse_request(b""), Ok(None));
}

#[test]
fn may_be_complete_agrees_with_the_parser() {
    let text = upgrade("");
    let bytes = text.as_bytes();
    // Fed one byte at a time, the check says "maybe" exactly once: at the
    // last byte, where the parse completes.
    for len in 1..=bytes.len() {
        let maybe = request_may_be_complete(&bytes[..len], len - 1);
        assert_eq!(maybe, len == bytes.len(), "len {len}");
        assert_eq!(parse_request(&bytes[..len]).ok().flatten().is_some(), maybe);
    }
    // Big chunks, bare LF, a blank line split across reads.
    assert!(request_may_be_complete(bytes, 0));
    assert!(request_may_be_complete(b"GET / HTTP/1.0\n\n", 0));
    assert!(request_may_be_complete(b"GET / HTTP/1.0\r\n\r\n", 17));
    assert!(!request_may_be_complete(b"GET / HTTP/1.0\r\n\r\n", 18));
    assert!(!request_may_be_complete(
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        0
    ));
    let mut big = vec![b'a'; MAX_HEADER_BYTES];
    assert!(request_may_be_complete(&big, MAX_HEADER_BYTES - 1));
    big.truncate(MAX_HEADER_BYTES - 1);
    assert!(!request_may_be_complete(&big, 0));
    assert!(!request_may_be_complete(b"", 0));
}

/// Split a response into (status line, headers, body) using httparse.
fn parse_http(bytes: &[u8]) -> (u16, String, Vec<(String, String)>, Vec<u8>) {
    let mut slots = [httparse::EMPTY_HEADER; 16];
    let mut r = httparse::Response::new(&mut slots);
    let n = match r.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("not a complete response: {other:?}"),
    };
    let hs = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8(h.value.to_vec()).unwrap(),
            )
        })
        .collect();
    (
        r.code.unwrap(),
        r.reason.unwrap().to_owned(),
        hs,
        bytes[n..].to_vec(),
    )
}

fn hdr<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn error_responses() {
    for (status, phrase) in [
        (400, "Bad Request"),
        (403, "Forbidden"),
        (404, "Not Found"),
        (405, "Method Not Allowed"),
        (409, "Conflict"),
        (426, "Upgrade Required"),
        (431, "Request Header Fields Too Large"),
        (503, "Service Unavailable"),
    ] {
        let bytes = error_response(status, "some reason");
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} {phrase}\r\n")),
            "{text}"
        );
        let (code, reason, hs, body) = parse_http(&bytes);
        assert_eq!((code, reason.as_str()), (status, phrase));
        assert_eq!(body, b"some reason\n");
        assert_eq!(hdr(&hs, "Content-Type"), Some("text/plain"));
        assert_eq!(hdr(&hs, "Content-Length"), Some("12"));
        assert_eq!(hdr(&hs, "Connection"), Some("close"));
        assert_eq!(hdr(&hs, "Sec-WebSocket-Version").is_some(), status == 426);
        assert_eq!(hdr(&hs, "Allow"), (status == 405).then_some("GET"));
    }
    assert_eq!(
        error_response(426, R_BAD_VERSION.reason),
        R_BAD_VERSION.response()
    );
    assert_eq!(
        hdr(
            &parse_http(&error_response(426, "x")).2,
            "Sec-WebSocket-Version"
        ),
        Some("13")
    );
    assert_eq!(
        R_BAD_KEY.to_string(),
        "400 Bad Request: Sec-WebSocket-Key is not 16 bytes of base64"
    );
}

#[test]
fn builders_cannot_be_split() {
    let bytes = error_response(400, "a\r\nSet-Cookie: x\r\n\r\nb");
    let (_, _, hs, body) = parse_http(&bytes);
    assert_eq!(hdr(&hs, "Set-Cookie"), None);
    assert_eq!(body, b"aSet-Cookie: xb\n");
    let bytes = response_101(KEY, &[("Sockrelay-Session", "id\r\nEvil: 1")]);
    let (_, _, hs, body) = parse_http(&bytes);
    assert_eq!(hdr(&hs, "Evil"), None);
    assert_eq!(hdr(&hs, "Sockrelay-Session"), Some("idEvil: 1"));
    assert!(body.is_empty());
}

#[test]
fn response_101_format() {
    let bytes = response_101(KEY, &[("Sockrelay-Session", "0b1c")]);
    assert!(bytes.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(bytes.ends_with(b"\r\n\r\n"));
    let (code, _, hs, body) = parse_http(&bytes);
    assert_eq!(code, 101);
    assert!(body.is_empty());
    assert_eq!(hdr(&hs, "Upgrade"), Some("websocket"));
    assert_eq!(hdr(&hs, "Connection"), Some("Upgrade"));
    assert_eq!(hdr(&hs, "Sec-WebSocket-Accept"), Some(ACCEPT));
    assert_eq!(hdr(&hs, "Sockrelay-Session"), Some("0b1c"));
    let (resp, n) = parse_response(&bytes, ACCEPT).unwrap().unwrap();
    assert_eq!(n, bytes.len());
    assert_eq!(resp.status, 101);
    assert_eq!(resp.header("sockrelay-session"), Some(&b"0b1c"[..]));
}

#[test]
fn plain_response_format() {
    let bytes = plain_response(200, "text/plain; version=0.0.4", b"sessions 3\n");
    let (code, reason, hs, body) = parse_http(&bytes);
    assert_eq!((code, reason.as_str()), (200, "OK"));
    assert_eq!(hdr(&hs, "Content-Type"), Some("text/plain; version=0.0.4"));
    assert_eq!(hdr(&hs, "Content-Length"), Some("11"));
    assert_eq!(hdr(&hs, "Connection"), Some("close"));
    assert_eq!(body, b"sessions 3\n");
}

#[test]
fn client_request_round_trips_through_the_server_parser() {
    let key = *b"the sample nonce";
    let (bytes, accept) = client_request(
        "relay.example:8080",
        "/dest?id=0b1c&admission=a%2Bb",
        &[("Sockrelay-Admission", "abc")],
        key,
    );
    assert_eq!(accept, ACCEPT);
    let (r, n) = ok(&bytes);
    assert_eq!(n, bytes.len());
    assert_eq!(r.ws_key.as_deref(), Some(KEY));
    assert_eq!(r.path, "/dest");
    assert_eq!(r.query_param("admission"), Some("a+b"));
    assert_eq!(r.header("host"), Some(&b"relay.example:8080"[..]));
    assert_eq!(r.header("sockrelay-admission"), Some(&b"abc"[..]));
    assert_eq!(accept_key(r.ws_key.as_deref().unwrap()), accept);
    // A broken path cannot break the request line.
    let (bytes, _) = client_request("h", "/a b\r\nX: y", &[], key);
    let (r, _) = ok(&bytes);
    assert_eq!(r.path, "/abX:y");
    assert_eq!(r.header("x"), None);
}

// ---- client side: parse_response ----

fn resp(status_line: &str, headers: &[&str], body: &str) -> Vec<u8> {
    let mut v = req(status_line, headers);
    v.extend_from_slice(body.as_bytes());
    v
}

const OK_101: [&str; 3] = [
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
];

fn client_err(buf: &[u8]) -> ClientError {
    match parse_response(buf, ACCEPT) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn response_every_split_point_and_exact_consumed() {
    let head = resp("HTTP/1.1 101 Switching Protocols", &OK_101, "");
    for cut in 0..head.len() {
        assert_eq!(
            parse_response(&head[..cut], ACCEPT),
            Ok(None),
            "cut at {cut}"
        );
    }
    let mut with_frames = head.clone();
    with_frames.extend_from_slice(&[0x89, 0x00, 0x82, 0x01, 0xAA]);
    let (r, n) = parse_response(&with_frames, ACCEPT).unwrap().unwrap();
    assert_eq!(n, head.len());
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some(&b"websocket"[..]));
}

#[test]
fn response_tokens_case_insensitive_and_lists() {
    let bytes = resp(
        "HTTP/1.1 101 Whatever",
        &[
            "upgrade: WebSocket",
            "CONNECTION: keep-alive, UPGRADE",
            "sec-websocket-accept:   s3pPLMBiTxaQ9kYGzzhZRbK+xOo=  ",
        ],
        "",
    );
    assert!(parse_response(&bytes, ACCEPT).unwrap().is_some());
}

#[test]
fn response_101_validation() {
    let mut hs = OK_101.to_vec();
    hs[2] = "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let e = client_err(&resp("HTTP/1.1 101 Switching Protocols", &hs, ""));
    assert_eq!(
        e,
        ClientError::BadAccept {
            expected: ACCEPT.into(),
            got: "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()
        }
    );
    assert!(e.to_string().contains("wrong Sec-WebSocket-Accept"), "{e}");
    // Accept compares exactly (base64 is case-sensitive).
    hs[2] = "Sec-WebSocket-Accept: S3PPLMBITXAQ9KYGZZHZRBK+XOO=";
    assert!(matches!(
        client_err(&resp("HTTP/1.1 101 Switching Protocols", &hs, "")),
        ClientError::BadAccept { .. }
    ));
    let missing_accept = resp("HTTP/1.1 101 Switching Protocols", &OK_101[..2], "");
    assert!(matches!(
        client_err(&missing_accept),
        ClientError::BadAccept { .. }
    ));
    let no_upgrade = resp("HTTP/1.1 101 Switching Protocols", &OK_101[1..], "");
    assert_eq!(
        client_err(&no_upgrade),
        ClientError::BadUpgrade("Upgrade header must contain websocket")
    );
    let no_conn = resp(
        "HTTP/1.1 101 Switching Protocols",
        &[OK_101[0], "Connection: keep-alive", OK_101[2]],
        "",
    );
    assert_eq!(
        client_err(&no_conn),
        ClientError::BadUpgrade("Connection header must contain upgrade")
    );
    let mut ext = OK_101.to_vec();
    ext.push("Sec-WebSocket-Extensions: permessage-deflate");
    assert!(matches!(
        client_err(&resp("HTTP/1.1 101 Switching Protocols", &ext, "")),
        ClientError::BadUpgrade(_)
    ));
}

#[test]
fn error_status_waits_for_its_body() {
    let full = resp(
        "HTTP/1.1 403 Forbidden",
        &[
            "Content-Type: text/plain",
            "Content-Length: 24",
            "Connection: close",
        ],
        "wrong admission value\nx\n",
    );
    let head_len = full.len() - 24;
    for cut in 0..full.len() {
        assert_eq!(
            parse_response(&full[..cut], ACCEPT),
            Ok(None),
            "cut at {cut}"
        );
    }
    let e = client_err(&full);
    assert_eq!(
        e.to_string(),
        "relay answered 403 Forbidden: wrong admission value"
    );
    assert_eq!(e.status(), Some(403));
    // What our own relay sends reads the same way.
    let ours = error_response(404, "unknown session");
    assert_eq!(
        client_err(&ours).to_string(),
        "relay answered 404 Not Found: unknown session"
    );
    let e = client_err(&error_response(426, R_BAD_VERSION.reason));
    assert_eq!(
        e.to_string(),
        "relay answered 426 Upgrade Required: unsupported Sec-WebSocket-Version (need 13)"
    );
    // Closed early: what there is.
    let e = parse_response_eof(&full[..head_len + 5]);
    assert_eq!(e.to_string(), "relay answered 403 Forbidden: wrong");
}

#[test]
fn error_status_body_is_capped() {
    let long = "x".repeat(2000);
    let bytes = resp(
        "HTTP/1.1 503 Service Unavailable",
        &["Content-Length: 2000"],
        &long,
    );
    let head = bytes.len() - 2000;
    assert_eq!(
        parse_response(&bytes[..head + MAX_ERROR_BODY_BYTES - 1], ACCEPT),
        Ok(None)
    );
    let e = client_err(&bytes[..head + MAX_ERROR_BODY_BYTES]);
    assert_eq!(e, client_err(&bytes));
    match e {
        ClientError::Rejected {
            status: 503,
            message,
            ..
        } => {
            assert_eq!(message.len(), MAX_ERROR_BODY_BYTES)
        }
        other => panic!("{other:?}"),
    }
    // No Content-Length: up to the cap or the close.
    let bytes = resp("HTTP/1.1 503 Service Unavailable", &[], "full\n");
    assert_eq!(parse_response(&bytes, ACCEPT), Ok(None));
    assert_eq!(
        parse_response_eof(&bytes).to_string(),
        "relay answered 503 Service Unavailable: full"
    );
}

#[test]
fn error_status_other_shapes() {
    let e = client_err(&resp("HTTP/1.1 404 Not Found", &["Content-Length: 0"], ""));
    assert_eq!(e.to_string(), "relay answered 404 Not Found");
    let e = client_err(&resp(
        "HTTP/1.1 302 Found",
        &["Location: https://elsewhere/x", "Content-Length: 0"],
        "",
    ));
    assert_eq!(
        e.to_string(),
        "relay answered 302 Found (Location: https://elsewhere/x)"
    );
    let e = client_err(&resp(
        "HTTP/1.1 502 Bad Gateway",
        &["Content-Type: text/html", "Content-Length: 14"],
        "<html>x</html>",
    ));
    assert_eq!(e.to_string(), "relay answered 502 Bad Gateway");
    let chunked = resp(
        "HTTP/1.1 400 Bad Request",
        &["Transfer-Encoding: chunked"],
        "b\r\nbad request\r\n0\r\n\r\n",
    );
    assert_eq!(
        client_err(&chunked).to_string(),
        "relay answered 400 Bad Request: bad request"
    );
    assert_eq!(
        parse_response(&chunked[..chunked.len() - 15], ACCEPT),
        Ok(None)
    );
    // Hostile bytes do not reach the terminal.
    let e = client_err(&resp(
        "HTTP/1.1 400 Bad\tRequest",
        &["Content-Length: 6"],
        "a\x1b[2Jb",
    ));
    assert_eq!(e.to_string(), "relay answered 400 Bad?Request: a?[2Jb");
    // A 1xx/204/304 has no body: decided at once.
    let e = client_err(&resp("HTTP/1.1 204 No Content", &[], ""));
    assert_eq!(e.status(), Some(204));
    let e = client_err(&resp("HTTP/1.0 200 OK", &["Content-Length: 3"], "ok\n"));
    assert_eq!(e.to_string(), "relay answered 200 OK: ok");
}

#[test]
fn response_garbage_and_limits() {
    assert!(matches!(
        client_err(b"SSH-2.0-OpenSSH_9.6\r\n"),
        ClientError::Malformed(_)
    ));
    assert!(matches!(
        client_err(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]),
        ClientError::Malformed(_)
    ));
    let mut big = b"HTTP/1.1 101 Switching Protocols\r\nX: ".to_vec();
    big.resize(MAX_HEADER_BYTES - 1, b'a');
    assert_eq!(parse_response(&big, ACCEPT), Ok(None));
    big.push(b'a');
    assert_eq!(client_err(&big), ClientError::TooLarge);
    assert_eq!(parse_response_eof(&big), ClientError::TooLarge);
}

#[test]
fn response_eof() {
    assert_eq!(parse_response_eof(b""), ClientError::Closed { received: 0 });
    assert_eq!(
        parse_response_eof(b"").to_string(),
        "connection closed before the relay answered"
    );
    assert_eq!(
        parse_response_eof(b"HTTP/1.1 40"),
        ClientError::Closed { received: 11 }
    );
    assert!(matches!(
        parse_response_eof(b"hello\r\n\r\n"),
        ClientError::Malformed(_)
    ));
    let head = resp("HTTP/1.1 101 Switching Protocols", &OK_101, "");
    assert!(matches!(
        parse_response_eof(&head),
        ClientError::Closed { .. }
    ));
    let e = parse_response_eof(&resp(
        "HTTP/1.1 409 Conflict",
        &["Content-Length: 50"],
        "session has a dest\r\n",
    ));
    assert_eq!(
        e.to_string(),
        "relay answered 409 Conflict: session has a dest"
    );
}
