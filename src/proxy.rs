//! HTTP proxies (`CONNECT`), sans-IO: which proxy to use (from `--proxy` or
//! the environment, read exactly as curl reads it), the request to send, and
//! the parse of the proxy's answer. The client's connect path sends
//! [`connect_request`], feeds what comes back to [`parse_connect_response`]
//! until it says complete, then starts TLS (wss) or the WebSocket upgrade
//! (ws) on the same stream.
//!
//! Credentials: taken from the URL's userinfo (percent-decoded, as curl
//! does), sent only as `Proxy-Authorization: Basic`, and never shown:
//! [`ProxyUrl`]'s `Display` and `Debug` print `user:***@host:port`.

use base64::Engine as _;
use std::fmt;
use std::net::IpAddr;

/// curl's default proxy port when the URL names none.
pub const DEFAULT_PROXY_PORT: u16 = 1080;
/// A proxy's answer to CONNECT larger than this is refused.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;
/// Header slots for httparse.
const MAX_RESPONSE_HEADERS: usize = 64;

/// Errors a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The proxy URL (from `--proxy` or the environment) is unusable.
    BadUrl(String),
    /// The proxy answered CONNECT with a non-2xx status.
    Refused { status: u16, reason: String },
    /// The proxy's answer is not HTTP, or too large.
    BadResponse(String),
}

impl ProxyError {
    /// Failures a retry cannot fix (bad URL, credentials refused, CONNECT
    /// forbidden). A proxy that is down or answers 5xx is retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            ProxyError::BadUrl(_) => true,
            ProxyError::Refused { status, .. } => (400..500).contains(status),
            ProxyError::BadResponse(_) => false,
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::BadUrl(m) => write!(f, "bad proxy URL: {m}"),
            ProxyError::Refused { status, reason } => {
                write!(f, "proxy refused CONNECT: {status} {reason}")
            }
            ProxyError::BadResponse(m) => write!(f, "bad answer from the proxy: {m}"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// `http://[USER[:PASS]@]HOST[:PORT]` (the scheme may be left out).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    user: Option<String>,
    pass: Option<String>,
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("http://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}:***@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxyUrl({self})")
    }
}

fn percent_decode(s: &str) -> Result<String, ProxyError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| ProxyError::BadUrl("bad %-escape in the user or password".into()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ProxyError::BadUrl("user or password is not UTF-8".into()))
}

impl ProxyUrl {
    pub fn parse(s: &str) -> Result<Self, ProxyError> {
        let s = s.trim();
        let rest = match s.split_once("://") {
            Some((scheme, rest)) => {
                if !scheme.eq_ignore_ascii_case("http") {
                    return Err(ProxyError::BadUrl(format!(
                        "scheme {scheme:?} is not supported (only http:// proxies)"
                    )));
                }
                rest
            }
            None => s,
        };
        // Anything after the authority (a path such as "/") is ignored, as curl does.
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, pass) = match userinfo {
            Some(u) => {
                let (user, pass) = match u.split_once(':') {
                    Some((a, b)) => (a, Some(b)),
                    None => (u, None),
                };
                (
                    Some(percent_decode(user)?),
                    pass.map(percent_decode).transpose()?,
                )
            }
            None => (None, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| ProxyError::BadUrl("unclosed [ in the host".into()))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(ProxyError::BadUrl(format!("junk after ]: {after:?}"))),
            };
            (h, port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(ProxyError::BadUrl("no host".into()));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| ProxyError::BadUrl(format!("bad port {p:?}")))?,
            None => DEFAULT_PROXY_PORT,
        };
        Ok(Self {
            host: host.to_string(),
            port,
            user,
            pass,
        })
    }

    /// True when the URL carries credentials.
    pub fn has_credentials(&self) -> bool {
        self.user.is_some()
    }

    fn basic_auth(&self) -> Option<String> {
        let user = self.user.as_deref()?;
        let pass = self.pass.as_deref().unwrap_or("");
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        Some(format!("Basic {token}"))
    }
}

fn authority(host: &str, port: u16) -> String {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The CONNECT request for `host:port` through `proxy`.
pub fn connect_request(proxy: &ProxyUrl, host: &str, port: u16) -> Vec<u8> {
    let target = authority(host, port);
    let mut req = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: sockrelay/{}\r\nProxy-Connection: Keep-Alive\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(auth) = proxy.basic_auth() {
        req.push_str("Proxy-Authorization: ");
        req.push_str(&auth);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Parses the proxy's answer to CONNECT. `Ok(None)`: incomplete, read more;
/// `Ok(Some(n))`: the tunnel is open and the first `n` bytes were the
/// answer (bytes after them already belong to the tunnel).
pub fn parse_connect_response(buf: &[u8]) -> Result<Option<usize>, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_RESPONSE_BYTES {
                Err(ProxyError::BadResponse(format!(
                    "no end of headers in {MAX_RESPONSE_BYTES} bytes"
                )))
            } else {
                Ok(None)
            }
        }
        Ok(httparse::Status::Complete(n)) if n > MAX_RESPONSE_BYTES => Err(
            ProxyError::BadResponse(format!("no end of headers in {MAX_RESPONSE_BYTES} bytes")),
        ),
        Ok(httparse::Status::Complete(n)) => {
            let status = resp.code.unwrap_or(0);
            if (200..300).contains(&status) {
                Ok(Some(n))
            } else {
                let reason = resp.reason.unwrap_or("").trim();
                let reason = if reason.is_empty() {
                    canonical_reason(status)
                } else {
                    reason
                };
                let reason: String = reason
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
                Err(ProxyError::Refused { status, reason })
            }
        }
        Err(e) => {
            let shown: String =
                String::from_utf8_lossy(buf.get(..buf.len().min(40)).unwrap_or(&[]))
                    .chars()
                    .map(|c| if c.is_control() { '.' } else { c })
                    .collect();
            Err(ProxyError::BadResponse(format!("{e} (starts {shown:?})")))
        }
    }
}

fn canonical_reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Where the proxy choice came from (for the log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySource {
    Option,
    Env(&'static str),
}

impl fmt::Display for ProxySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxySource::Option => f.write_str("--proxy"),
            ProxySource::Env(v) => f.write_str(v),
        }
    }
}

/// The proxy to use for a relay at `host` (`tls`: wss), as curl chooses:
/// `--proxy` first, else `https_proxy`/`HTTPS_PROXY` (wss) or `http_proxy`
/// (ws; curl ignores upper-case `HTTP_PROXY`, the "httpoxy" rule), else
/// `all_proxy`/`ALL_PROXY`; then `no_proxy`/`NO_PROXY` can exempt the host
/// from either. Empty variables count as unset. `env` reads a variable.
pub fn select(
    explicit: Option<&str>,
    host: &str,
    tls: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(ProxyUrl, ProxySource)>, ProxyError> {
    let get = |k: &'static str| env(k).filter(|v| !v.trim().is_empty()).map(|v| (v, k));
    let no_proxy = get("no_proxy").or_else(|| get("NO_PROXY"));
    if let Some((np, _)) = &no_proxy {
        if no_proxy_matches(np, host) {
            return Ok(None);
        }
    }
    if let Some(p) = explicit.filter(|p| !p.trim().is_empty()) {
        return Ok(Some((ProxyUrl::parse(p)?, ProxySource::Option)));
    }
    let chosen = if tls {
        get("https_proxy").or_else(|| get("HTTPS_PROXY"))
    } else {
        get("http_proxy")
    }
    .or_else(|| get("all_proxy"))
    .or_else(|| get("ALL_PROXY"));
    match chosen {
        Some((v, k)) => {
            let url = ProxyUrl::parse(&v).map_err(|e| match e {
                ProxyError::BadUrl(m) => ProxyError::BadUrl(format!("{k}: {m}")),
                other => other,
            })?;
            Ok(Some((url, ProxySource::Env(k))))
        }
        None => Ok(None),
    }
}

/// The process environment, for [`select`].
pub fn process_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn parse_cidr(entry: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = match entry.split_once('/') {
        Some((ip, bits)) => (ip, Some(bits)),
        None => (entry, None),
    };
    let ip: IpAddr = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max)?,
        None => max,
    };
    Some((ip, bits))
}

fn in_cidr(addr: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits as u32)
            };
            (u32::from(a) & mask) == (u32::from(n) & mask)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits as u32)
            };
            (u128::from(a) & mask) == (u128::from(n) & mask)
        }
        _ => false,
    }
}

/// curl's `no_proxy` rule: entries separated by commas (or spaces); `*`
/// alone exempts every host; a name matches itself and its subdomains
/// (a leading dot is ignored); an IP address or CIDR matches a host given
/// as an IP literal (names are not resolved for this).
pub fn no_proxy_matches(no_proxy: &str, host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let host_ip: Option<IpAddr> = host.parse().ok();
    for entry in no_proxy
        .split([',', ' ', '\t'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        if entry == "*" {
            return true;
        }
        if let Some(ip) = host_ip {
            if let Some((net, bits)) = parse_cidr(entry) {
                if in_cidr(ip, net, bits) {
                    return true;
                }
            }
            continue;
        }
        let e = entry.trim_start_matches('.');
        let e = e.strip_suffix('.').unwrap_or(e).to_ascii_lowercase();
        if e.is_empty() {
            continue;
        }
        if host == e
            || (host.len() > e.len()
                && host.ends_with(&e)
                && host.as_bytes()[host.len() - e.len() - 1] == b'.')
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn pick(explicit: Option<&str>, host: &str, tls: bool, env: &[(&str, &str)]) -> Option<String> {
        select(explicit, host, tls, &env_of(env))
            .unwrap()
            .map(|(u, s)| format!("{u} from {s}"))
    }

    #[test]
    fn parses_proxy_urls() {
        let u = ProxyUrl::parse("http://alice:s%40cret@proxy.corp:3128/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("proxy.corp", 3128));
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.pass.as_deref(), Some("s@cret"));
        let u = ProxyUrl::parse("proxy.corp").unwrap();
        assert_eq!(u.port, DEFAULT_PROXY_PORT);
        assert!(!u.has_credentials());
        let u = ProxyUrl::parse("HTTP://[::1]:8888").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8888));
        assert_eq!(u.to_string(), "http://[::1]:8888");
        assert!(ProxyUrl::parse("https://p:1")
            .unwrap_err()
            .to_string()
            .contains("only http://"));
        assert!(ProxyUrl::parse("socks5://p:1").is_err());
        assert!(ProxyUrl::parse("http://p:0").is_err());
        assert!(ProxyUrl::parse("http://p:99999").is_err());
        assert!(ProxyUrl::parse("http://:3128").is_err());
        assert!(ProxyUrl::parse("http://[::1").is_err());
        assert!(ProxyUrl::parse("http://a:%zz@p:1").is_err());
    }

    #[test]
    fn credentials_are_never_displayed() {
        let u = ProxyUrl::parse("http://alice:hunter2@proxy:3128").unwrap();
        assert_eq!(u.to_string(), "http://alice:***@proxy:3128");
        assert!(!format!("{u:?}").contains("hunter2"));
        let e = select(
            Some("http://alice:hunter2@proxy:99999"),
            "relay",
            true,
            &env_of(&[]),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn connect_request_carries_basic_auth() {
        let u = ProxyUrl::parse("http://alice:open%20sesame@proxy:3128").unwrap();
        let req = String::from_utf8(connect_request(&u, "relay.example", 443)).unwrap();
        assert!(
            req.starts_with("CONNECT relay.example:443 HTTP/1.1\r\nHost: relay.example:443\r\n"),
            "{req}"
        );
        // base64("alice:open sesame")
        assert!(
            req.contains("\r\nProxy-Authorization: Basic YWxpY2U6b3BlbiBzZXNhbWU=\r\n"),
            "{req}"
        );
        assert!(req.ends_with("\r\n\r\n"));
        let plain = ProxyUrl::parse("proxy:3128").unwrap();
        let req = String::from_utf8(connect_request(&plain, "::1", 8080)).unwrap();
        assert!(req.starts_with("CONNECT [::1]:8080 HTTP/1.1\r\n"), "{req}");
        assert!(!req.contains("Proxy-Authorization"));
    }

    #[test]
    fn parses_connect_responses() {
        assert_eq!(
            parse_connect_response(b"HTTP/1.1 200 Connection established\r\n"),
            Ok(None)
        );
        let ok = b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy\r\n\r\n\x16\x03";
        assert_eq!(parse_connect_response(ok), Ok(Some(ok.len() - 2)));
        let e = parse_connect_response(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "proxy refused CONNECT: 407 Proxy Authentication Required"
        );
        assert!(e.is_permanent());
        let e = parse_connect_response(b"HTTP/1.1 407 \r\nProxy-Authenticate: Basic\r\n\r\n")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "proxy refused CONNECT: 407 Proxy Authentication Required"
        );
        let e = parse_connect_response(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").unwrap_err();
        assert!(!e.is_permanent());
        let e = parse_connect_response(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap_err();
        assert!(matches!(e, ProxyError::BadResponse(_)), "{e:?}");
        let big = vec![b'a'; MAX_RESPONSE_BYTES];
        let mut resp = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        resp.extend_from_slice(&big);
        assert!(parse_connect_response(&resp).is_err());
    }

    #[test]
    fn selects_like_curl() {
        // wss: https_proxy before HTTPS_PROXY before all_proxy before ALL_PROXY.
        let all = [
            ("https_proxy", "a:1"),
            ("HTTPS_PROXY", "b:1"),
            ("all_proxy", "c:1"),
            ("ALL_PROXY", "d:1"),
        ];
        assert_eq!(
            pick(None, "r", true, &all).unwrap(),
            "http://a:1 from https_proxy"
        );
        assert_eq!(
            pick(None, "r", true, &all[1..]).unwrap(),
            "http://b:1 from HTTPS_PROXY"
        );
        assert_eq!(
            pick(None, "r", true, &all[2..]).unwrap(),
            "http://c:1 from all_proxy"
        );
        assert_eq!(
            pick(None, "r", true, &all[3..]).unwrap(),
            "http://d:1 from ALL_PROXY"
        );
        // ws: http_proxy only in lower case.
        assert_eq!(
            pick(None, "r", false, &[("http_proxy", "h:1")]).unwrap(),
            "http://h:1 from http_proxy"
        );
        assert_eq!(pick(None, "r", false, &[("HTTP_PROXY", "h:1")]), None);
        assert_eq!(
            pick(
                None,
                "r",
                false,
                &[("HTTP_PROXY", "h:1"), ("ALL_PROXY", "x:2")]
            )
            .unwrap(),
            "http://x:2 from ALL_PROXY"
        );
        // https_proxy is not for ws, http_proxy not for wss.
        assert_eq!(pick(None, "r", false, &[("https_proxy", "a:1")]), None);
        assert_eq!(pick(None, "r", true, &[("http_proxy", "a:1")]), None);
        // Empty is unset.
        assert_eq!(
            pick(
                None,
                "r",
                true,
                &[("https_proxy", ""), ("all_proxy", "c:1")]
            )
            .unwrap(),
            "http://c:1 from all_proxy"
        );
        // --proxy wins over the environment; no_proxy applies to both.
        assert_eq!(
            pick(Some("p:9"), "r", true, &all).unwrap(),
            "http://p:9 from --proxy"
        );
        assert_eq!(
            pick(Some("p:9"), "r.corp", true, &[("no_proxy", ".corp")]),
            None
        );
        assert_eq!(
            pick(
                None,
                "r.corp",
                true,
                &[("NO_PROXY", "corp"), ("https_proxy", "a:1")]
            ),
            None
        );
        assert_eq!(pick(None, "r", true, &[]), None);
        // A bad variable names itself.
        let e = select(None, "r", true, &env_of(&[("https_proxy", "socks5://x:1")])).unwrap_err();
        assert!(e.to_string().contains("https_proxy"), "{e}");
    }

    #[test]
    fn no_proxy_rules() {
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("example.com", "example.com"));
        assert!(no_proxy_matches("example.com", "relay.Example.COM"));
        assert!(no_proxy_matches(".example.com", "example.com"));
        assert!(no_proxy_matches(".example.com", "a.b.example.com."));
        assert!(!no_proxy_matches("example.com", "badexample.com"));
        assert!(!no_proxy_matches("example.com", "example.com.evil"));
        assert!(no_proxy_matches("foo, bar ,localhost", "localhost"));
        assert!(no_proxy_matches("foo bar localhost", "localhost"));
        assert!(!no_proxy_matches("*.example.com", "x.example.org"));
        // IPs and CIDRs match IP literals only.
        assert!(no_proxy_matches("127.0.0.1", "127.0.0.1"));
        assert!(no_proxy_matches("10.0.0.0/8", "10.1.2.3"));
        assert!(!no_proxy_matches("10.0.0.0/8", "11.1.2.3"));
        assert!(no_proxy_matches("0.0.0.0/0", "8.8.8.8"));
        assert!(no_proxy_matches("::1", "[::1]"));
        assert!(no_proxy_matches("fd00::/8", "fd12::1"));
        assert!(!no_proxy_matches("fd00::/8", "fe80::1"));
        assert!(!no_proxy_matches("127.0.0.1", "localhost"));
        assert!(!no_proxy_matches("10.0.0.0/33", "10.0.0.1"));
        assert!(!no_proxy_matches("", "x"));
    }
}
