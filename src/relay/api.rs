//! The relay's HTTP surface, sans-IO: what a parsed request asks for.
//! See README "Relay wire API".

use super::metrics::Reject;
use crate::control::{header, path};
use crate::ws::handshake::Request;
use uuid::Uuid;

/// Longest admission value accepted (a derived value is 43 bytes; the
/// original clients' tokens are user-chosen).
pub const MAX_ADMISSION_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Metrics,
    Origin {
        proposed: Option<Uuid>,
        admission: Vec<u8>,
        /// The original Node.js client API (`?mode=origin&token=`): the
        /// session id is also sent as a msgpack `{type:"start", id}` message.
        compat: bool,
        origin_key: Option<Vec<u8>>,
    },
    Dest {
        id: Uuid,
        admission: Vec<u8>,
    },
}

/// A refusal: HTTP status, one-line reason, metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    pub metric: Reject,
}

const fn refuse(status: u16, reason: &'static str, metric: Reject) -> Refusal {
    Refusal {
        status,
        reason,
        metric,
    }
}

fn admission(req: &Request, compat: bool) -> Result<Vec<u8>, Refusal> {
    let value: Option<&[u8]> = if compat {
        req.query_param("token").map(str::as_bytes)
    } else {
        header_value(req, header::ADMISSION)
            .or_else(|| req.query_param("admission").map(str::as_bytes))
    };
    match value {
        None => Err(refuse(
            400,
            if compat {
                "missing token"
            } else {
                "missing admission value (Sockrelay-Admission header)"
            },
            Reject::BadRequest,
        )),
        Some([]) => Err(refuse(400, "empty admission value", Reject::BadRequest)),
        Some(v) if v.len() > MAX_ADMISSION_BYTES => {
            Err(refuse(400, "admission value too long", Reject::BadRequest))
        }
        Some(v) => Ok(v.to_vec()),
    }
}

/// A header's value by its [`header`] name (the parser keeps names lower-cased).
fn header_value<'r>(req: &'r Request, name: &str) -> Option<&'r [u8]> {
    req.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

fn session_id(s: &str) -> Result<Uuid, Refusal> {
    Uuid::try_parse(s).map_err(|_| refuse(400, "session id is not a UUID", Reject::BadRequest))
}

/// Decide what a request asks for.
pub fn route(req: &Request) -> Result<Route, Refusal> {
    let upgrade = req.ws_key.is_some();
    // The original clients connect to any path with `?mode=`.
    if let Some(mode) = req.query_param("mode") {
        if !upgrade {
            return Err(refuse(
                426,
                "WebSocket upgrade required",
                Reject::BadRequest,
            ));
        }
        return match mode {
            "origin" => Ok(Route::Origin {
                proposed: None,
                admission: admission(req, true)?,
                compat: true,
                origin_key: None,
            }),
            "dest" => {
                let id = req.query_param("id").ok_or(refuse(
                    400,
                    "missing session id",
                    Reject::BadRequest,
                ))?;
                Ok(Route::Dest {
                    id: session_id(id)?,
                    admission: admission(req, true)?,
                })
            }
            _ => Err(refuse(
                400,
                "mode must be origin or dest",
                Reject::BadRequest,
            )),
        };
    }
    match (req.path.as_str(), upgrade) {
        (path::HEALTH, false) => Ok(Route::Health),
        (path::METRICS, false) => Ok(Route::Metrics),
        (path::ORIGIN, true) => Ok(Route::Origin {
            proposed: req.query_param("id").map(session_id).transpose()?,
            admission: admission(req, false)?,
            compat: false,
            origin_key: header_value(req, header::ORIGIN_KEY).map(<[u8]>::to_vec),
        }),
        (path::DEST, true) => {
            let id = req.query_param("id").ok_or(refuse(
                400,
                "missing session id (?id=)",
                Reject::BadRequest,
            ))?;
            Ok(Route::Dest {
                id: session_id(id)?,
                admission: admission(req, false)?,
            })
        }
        (path::ORIGIN | path::DEST, false) => Err(refuse(
            426,
            "WebSocket upgrade required",
            Reject::BadRequest,
        )),
        _ => Err(refuse(
            404,
            "no such endpoint (try /origin, /dest, /healthz, /metrics)",
            Reject::NotFound,
        )),
    }
}

/// The original server's start message: msgpack map {type: "start", id}.
pub fn compat_start_message(id: &Uuid) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(0x82); // fixmap, 2 entries
    out.push(0xa4); // fixstr(4)
    out.extend_from_slice(b"type");
    out.push(0xa5);
    out.extend_from_slice(b"start");
    out.push(0xa2);
    out.extend_from_slice(b"id");
    let mut text = [0u8; 36];
    let s = id.hyphenated().encode_lower(&mut text);
    out.push(0xd9); // str8: 36 bytes do not fit a fixstr (at most 31)
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
    out
}

/// Constant-time equality of two digests.
pub fn ct_eq(a: &[u8; 20], b: &[u8; 20]) -> bool {
    let mut diff = 0u8;
    for i in 0..20 {
        diff |= a[i] ^ b[i];
    }
    diff == 0
}

/// What the relay stores of an admission value: its SHA-1 digest, fixed size
/// (no allocation per session) and compared in constant time.
pub fn admission_digest(value: &[u8]) -> [u8; 20] {
    use sha1::{Digest, Sha1};
    Sha1::digest(value).into()
}
