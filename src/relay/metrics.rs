//! Counters for `/metrics` (Prometheus text exposition format 0.0.4).

use std::fmt::Write;

/// Why a connection or request was turned away; one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    BadRequest,
    WrongAdmission,
    UnknownSession,
    DestTaken,
    IdInUse,
    SessionLimit,
    ConnectionLimit,
    PendingLimit,
    HeadersTooLarge,
    HandshakeTimeout,
    NotFound,
    OriginNotAllowed,
    WrongListener,
}

impl Reject {
    pub const ALL: [Reject; 13] = [
        Reject::BadRequest,
        Reject::WrongAdmission,
        Reject::UnknownSession,
        Reject::DestTaken,
        Reject::IdInUse,
        Reject::SessionLimit,
        Reject::ConnectionLimit,
        Reject::PendingLimit,
        Reject::HeadersTooLarge,
        Reject::HandshakeTimeout,
        Reject::NotFound,
        Reject::OriginNotAllowed,
        Reject::WrongListener,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reject::BadRequest => "bad_request",
            Reject::WrongAdmission => "wrong_admission",
            Reject::UnknownSession => "unknown_session",
            Reject::DestTaken => "dest_taken",
            Reject::IdInUse => "id_in_use",
            Reject::SessionLimit => "session_limit",
            Reject::ConnectionLimit => "connection_limit",
            Reject::PendingLimit => "pending_limit",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::HandshakeTimeout => "handshake_timeout",
            Reject::NotFound => "not_found",
            Reject::OriginNotAllowed => "origin_not_allowed",
            Reject::WrongListener => "wrong_listener",
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub accepted: u64,
    pub sessions_created: u64,
    pub pairings: u64,
    pub bytes_origin_to_dest: u64,
    pub bytes_dest_to_origin: u64,
    pub frames_forwarded: u64,
    pub frames_dropped: u64,
    pub ping_timeouts: u64,
    pub protocol_errors: u64,
    pub accept_errors: u64,
    pub rejects: [u64; 13],
}

/// Gauges sampled at render time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub sessions: usize,
    pub sessions_paired: usize,
    /// Sessions whose origin vanished, waiting for it (`--origin-grace`).
    pub sessions_awaiting_origin: usize,
    pub conns_pending: usize,
    pub conns_origin: usize,
    pub conns_dest: usize,
    pub conns_closing: usize,
    pub buffers_in_use: usize,
    pub buffers_free: usize,
    pub buffer_bytes_in_use: usize,
    pub buffer_bytes_free: usize,
}

impl Metrics {
    pub fn reject(&mut self, r: Reject) {
        self.rejects[r as usize] += 1;
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut s = String::with_capacity(2048);
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge("sockrelay_sessions", "Live sessions.", g.sessions as u64);
        gauge(
            "sockrelay_sessions_paired",
            "Sessions with an origin and a dest.",
            g.sessions_paired as u64,
        );
        gauge(
            "sockrelay_sessions_awaiting_origin",
            "Sessions whose origin vanished, kept for it (--origin-grace).",
            g.sessions_awaiting_origin as u64,
        );
        gauge(
            "sockrelay_buffers_in_use",
            "Forwarding buffers lent out.",
            g.buffers_in_use as u64,
        );
        gauge(
            "sockrelay_buffers_free",
            "Forwarding buffers kept in the pool.",
            g.buffers_free as u64,
        );
        gauge(
            "sockrelay_buffer_bytes_in_use",
            "Bytes in forwarding buffers lent out.",
            g.buffer_bytes_in_use as u64,
        );
        gauge(
            "sockrelay_buffer_bytes_free",
            "Bytes in forwarding buffers kept in the pool.",
            g.buffer_bytes_free as u64,
        );
        let _ = writeln!(
            s,
            "# HELP sockrelay_connections Open connections by state.\n# TYPE sockrelay_connections gauge"
        );
        for (state, v) in [
            ("pending", g.conns_pending),
            ("origin", g.conns_origin),
            ("dest", g.conns_dest),
            ("closing", g.conns_closing),
        ] {
            let _ = writeln!(s, "sockrelay_connections{{state=\"{state}\"}} {v}");
        }
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "sockrelay_connections_accepted_total",
            "TCP connections accepted.",
            self.accepted,
        );
        counter(
            "sockrelay_sessions_created_total",
            "Sessions created.",
            self.sessions_created,
        );
        counter(
            "sockrelay_pairings_total",
            "Dests paired with an origin.",
            self.pairings,
        );
        counter(
            "sockrelay_frames_forwarded_total",
            "WebSocket data frames forwarded.",
            self.frames_forwarded,
        );
        counter(
            "sockrelay_frames_dropped_total",
            "Data frames dropped (no peer to receive them).",
            self.frames_dropped,
        );
        counter(
            "sockrelay_ping_timeouts_total",
            "Connections dropped for not answering pings.",
            self.ping_timeouts,
        );
        counter(
            "sockrelay_protocol_errors_total",
            "Connections closed for WebSocket protocol errors.",
            self.protocol_errors,
        );
        counter(
            "sockrelay_accept_errors_total",
            "accept() failures (e.g. out of file descriptors).",
            self.accept_errors,
        );
        let _ = writeln!(
            s,
            "# HELP sockrelay_bytes_forwarded_total Payload bytes forwarded.\n# TYPE sockrelay_bytes_forwarded_total counter"
        );
        let _ = writeln!(
            s,
            "sockrelay_bytes_forwarded_total{{direction=\"origin_to_dest\"}} {}",
            self.bytes_origin_to_dest
        );
        let _ = writeln!(
            s,
            "sockrelay_bytes_forwarded_total{{direction=\"dest_to_origin\"}} {}",
            self.bytes_dest_to_origin
        );
        let _ = writeln!(
            s,
            "# HELP sockrelay_rejects_total Requests or connections turned away, by reason.\n# TYPE sockrelay_rejects_total counter"
        );
        for r in Reject::ALL {
            let _ = writeln!(
                s,
                "sockrelay_rejects_total{{reason=\"{}\"}} {}",
                r.label(),
                self.rejects[r as usize]
            );
        }
        s
    }
}
