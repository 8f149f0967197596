//! Audit records as one log line (stderr) and as one JSON object per line
//! (`--audit-log FILE`). The loop supplies time, dest address and channel.

use std::fmt::Write as _;

use super::guard::Record;

/// Where and when a record happened.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The dest's address as the relay reported it ("" if unknown).
    pub dest: &'a str,
    pub channel: u32,
}

/// `key=value …` summary: what was asked and for what.
pub fn summary(r: &Record) -> String {
    let mut s = String::from(r.request);
    if let Some(e) = &r.extension {
        let _ = write!(s, " {}", printable(e));
    }
    if let Some(k) = &r.key {
        let _ = write!(s, " key={k}");
    }
    if let Some(t) = &r.key_type {
        let _ = write!(s, " ({})", printable(t));
    }
    if let Some(si) = &r.signed {
        let _ = write!(s, " for={}", si.kind);
        if let Some(u) = &si.user {
            let _ = write!(s, " user={}", printable(u));
        }
        if let Some(h) = &si.host_key {
            let _ = write!(s, " host={h}");
        }
        if let Some(n) = &si.namespace {
            let _ = write!(s, " namespace={}", printable(n));
        }
    }
    s
}

/// The stderr line.
pub fn text(r: &Record, cx: &Context<'_>) -> String {
    let mut s = format!(
        "agent audit: dest={} channel={} {}: {}",
        if cx.dest.is_empty() { "?" } else { cx.dest },
        cx.channel,
        summary(r),
        r.decision.as_str()
    );
    if let Some(why) = &r.reason {
        let _ = write!(s, " ({})", printable(why));
    }
    if let Some(a) = r.answer {
        let _ = write!(s, "; agent answered {a}");
    }
    if let Some((shown, total)) = r.keys_shown {
        let _ = write!(s, "; {shown} of {total} keys shown");
    }
    s
}

/// One JSON object (no trailing newline).
pub fn json(r: &Record, cx: &Context<'_>) -> String {
    let mut s = String::with_capacity(256);
    s.push('{');
    field(&mut s, "time", &rfc3339(cx.unix_ms));
    s.push(',');
    field(&mut s, "dest", cx.dest);
    let _ = write!(s, ",\"channel\":{}", cx.channel);
    s.push(',');
    field(&mut s, "request", r.request);
    if let Some(e) = &r.extension {
        s.push(',');
        field(&mut s, "extension", e);
    }
    if let Some(k) = &r.key {
        s.push(',');
        field(&mut s, "key", &k.to_string());
    }
    if let Some(t) = &r.key_type {
        s.push(',');
        field(&mut s, "key_type", t);
    }
    s.push(',');
    field(&mut s, "decision", r.decision.as_str());
    if let Some(why) = &r.reason {
        s.push(',');
        field(&mut s, "reason", why);
    }
    if let Some(a) = r.answer {
        s.push(',');
        field(&mut s, "agent_answer", a);
    }
    if let Some((shown, total)) = r.keys_shown {
        let _ = write!(s, ",\"keys_shown\":{shown},\"keys_total\":{total}");
    }
    if let Some(si) = &r.signed {
        s.push_str(",\"signed\":{");
        field(&mut s, "kind", si.kind);
        if let Some(u) = &si.user {
            s.push(',');
            field(&mut s, "user", u);
        }
        if let Some(h) = &si.host_key {
            s.push(',');
            field(&mut s, "host_key", &h.to_string());
        }
        if let Some(n) = &si.namespace {
            s.push(',');
            field(&mut s, "namespace", n);
        }
        s.push('}');
    }
    s.push('}');
    s
}

fn field(s: &mut String, name: &str, value: &str) {
    let _ = write!(s, "\"{name}\":");
    json_string(s, value);
}

/// RFC 8259 §7 string escaping.
pub fn json_string(s: &mut String, v: &str) {
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// Names from the dest (user names, namespaces) in a log line: control
/// characters escaped, so a dest cannot forge log lines.
fn printable(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        if c.is_control() || c == '\\' {
            s.extend(c.escape_default());
        } else {
            s.push(c);
        }
    }
    s
}

/// `2026-12-02T13:36:23.123Z` from milliseconds since the epoch.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, sod) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::guard::{Decision, SignedInfo};
    use crate::agent::Fingerprint;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_218_583_123), "2026-12-02T13:36:23.123Z");
    }

    #[test]
    fn json_and_text() {
        let r = Record {
            request: "sign",
            extension: None,
            key: Some(Fingerprint([0; 32])),
            key_type: Some("ssh-ed25519".into()),
            decision: Decision::Allowed,
            reason: None,
            answer: Some("signature"),
            keys_shown: None,
            signed: Some(SignedInfo {
                kind: "ssh-userauth",
                user: Some("al\"ice\n".into()),
                host_key: None,
                namespace: None,
            }),
        };
        let cx = Context {
            unix_ms: 0,
            dest: "127.0.0.1:5",
            channel: 3,
        };
        let j = json(&r, &cx);
        assert_eq!(
            j,
            "{\"time\":\"1970-01-01T00:00:00.000Z\",\"dest\":\"127.0.0.1:5\",\"channel\":3,\"request\":\"sign\",\"key\":\"SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\",\"key_type\":\"ssh-ed25519\",\"decision\":\"allowed\",\"agent_answer\":\"signature\",\"signed\":{\"kind\":\"ssh-userauth\",\"user\":\"al\\\"ice\\n\"}}"
        );
        let t = text(&r, &cx);
        assert!(t.contains("user=al\"ice\\n"), "{t}");
        assert!(!t.contains('\n'));
        assert!(t.ends_with("allowed; agent answered signature"), "{t}");
        let mut s = String::new();
        json_string(&mut s, "\u{1}\u{7f}");
        assert_eq!(s, "\"\\u0001\\u007f\"");
    }
}
