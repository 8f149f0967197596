//! Parsed ssh-agent requests and answers (borrowing the message bytes), and
//! what a signature request's data says it is for.

use super::wire::*;

/// A request from the client (here: the dest), without its length field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// §5.4 `SSH_AGENTC_REQUEST_IDENTITIES`.
    Identities,
    /// §5.5 `SSH_AGENTC_SIGN_REQUEST`: key blob, data, flags.
    Sign {
        key: &'a [u8],
        data: &'a [u8],
        flags: u32,
    },
    /// §5.2 `ADD_IDENTITY` / `ADD_ID_CONSTRAINED`: the key type name (the
    /// private key itself is not parsed).
    AddIdentity {
        key_type: &'a [u8],
        constrained: bool,
    },
    /// §5.3 `REMOVE_IDENTITY`: a public key blob.
    RemoveIdentity { key: &'a [u8] },
    /// §5.3 `REMOVE_ALL_IDENTITIES`.
    RemoveAll,
    /// §5.2.6 `ADD_SMARTCARD_KEY` (`_CONSTRAINED`): reader id.
    AddSmartcard { id: &'a [u8], constrained: bool },
    /// §5.3 `REMOVE_SMARTCARD_KEY`: reader id.
    RemoveSmartcard { id: &'a [u8] },
    /// §5.6 `LOCK` (passphrase not kept).
    Lock,
    /// §5.6 `UNLOCK`.
    Unlock,
    /// §5.8 `SSH_AGENTC_EXTENSION`: name and its contents.
    Extension { name: &'a [u8], contents: &'a [u8] },
    /// A protocol-1 request (types 1, 3, 7, 8, 9, 24).
    Ssh1(u8),
    /// A type this guard does not know.
    Unknown(u8),
}

/// OpenSSH PROTOCOL.agent `session-bind@openssh.com` contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionBind<'a> {
    pub host_key: &'a [u8],
    pub session_id: &'a [u8],
    pub signature: &'a [u8],
    pub forwarding: bool,
}

/// An answer from the agent, without its length field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<'a> {
    Failure,
    Success,
    /// §5.4: (key blob, comment) pairs.
    Identities(Vec<(&'a [u8], &'a [u8])>),
    /// §5.5: the signature blob.
    Signature(&'a [u8]),
    ExtensionFailure,
    /// §5.8: an extension's own answer (contents opaque).
    ExtensionResponse,
    /// Any other type: passed on unchanged.
    Other(u8),
}

impl Request<'_> {
    /// The request's name for logs and audit records.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Identities => "list-keys",
            Request::Sign { .. } => "sign",
            Request::AddIdentity { .. } => "add-key",
            Request::RemoveIdentity { .. } => "remove-key",
            Request::RemoveAll => "remove-all-keys",
            Request::AddSmartcard { .. } => "add-smartcard-key",
            Request::RemoveSmartcard { .. } => "remove-smartcard-key",
            Request::Lock => "lock",
            Request::Unlock => "unlock",
            Request::Extension { .. } => "extension",
            Request::Ssh1(_) => "ssh1-request",
            Request::Unknown(_) => "unknown-request",
        }
    }

    /// Requests that change the agent's state: refused unless the origin
    /// allows management.
    pub fn is_manage(&self) -> bool {
        matches!(
            self,
            Request::AddIdentity { .. }
                | Request::RemoveIdentity { .. }
                | Request::RemoveAll
                | Request::AddSmartcard { .. }
                | Request::RemoveSmartcard { .. }
                | Request::Lock
                | Request::Unlock
        )
    }
}

/// Parse one request body (type byte first, no length field).
pub fn parse_request(body: &[u8]) -> Result<Request<'_>, WireError> {
    let (&kind, rest) = body.split_first().ok_or(WireError::Empty)?;
    match kind {
        SSH_AGENTC_REQUEST_IDENTITIES => {
            Reader::new(rest, "list-keys request").end()?;
            Ok(Request::Identities)
        }
        SSH_AGENTC_SIGN_REQUEST => {
            let mut r = Reader::new(rest, "sign request");
            let key = r.string()?;
            let data = r.string()?;
            let flags = r.u32()?;
            r.end()?;
            if key.is_empty() {
                return Err(WireError::Invalid("sign request: empty key"));
            }
            Ok(Request::Sign { key, data, flags })
        }
        SSH_AGENTC_ADD_IDENTITY | SSH_AGENTC_ADD_ID_CONSTRAINED => {
            let mut r = Reader::new(rest, "add-key request");
            let key_type = r.string()?;
            // The private key fields and constraints follow; their layout
            // depends on the key type and is the agent's to check.
            if r.is_empty() {
                return Err(WireError::Truncated("add-key request"));
            }
            Ok(Request::AddIdentity {
                key_type,
                constrained: kind == SSH_AGENTC_ADD_ID_CONSTRAINED,
            })
        }
        SSH_AGENTC_REMOVE_IDENTITY => {
            let mut r = Reader::new(rest, "remove-key request");
            let key = r.string()?;
            r.end()?;
            Ok(Request::RemoveIdentity { key })
        }
        SSH_AGENTC_REMOVE_ALL_IDENTITIES => {
            Reader::new(rest, "remove-all request").end()?;
            Ok(Request::RemoveAll)
        }
        SSH_AGENTC_ADD_SMARTCARD_KEY | SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED => {
            let mut r = Reader::new(rest, "add-smartcard request");
            let id = r.string()?;
            let _pin = r.string()?;
            let constrained = kind == SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED;
            if !constrained {
                r.end()?;
            }
            Ok(Request::AddSmartcard { id, constrained })
        }
        SSH_AGENTC_REMOVE_SMARTCARD_KEY => {
            let mut r = Reader::new(rest, "remove-smartcard request");
            let id = r.string()?;
            let _pin = r.string()?;
            r.end()?;
            Ok(Request::RemoveSmartcard { id })
        }
        SSH_AGENTC_LOCK | SSH_AGENTC_UNLOCK => {
            let mut r = Reader::new(rest, "lock request");
            let _passphrase = r.string()?;
            r.end()?;
            Ok(if kind == SSH_AGENTC_LOCK {
                Request::Lock
            } else {
                Request::Unlock
            })
        }
        SSH_AGENTC_EXTENSION => {
            let mut r = Reader::new(rest, "extension request");
            let name = r.string()?;
            if name.is_empty() {
                return Err(WireError::Invalid("extension request: empty name"));
            }
            Ok(Request::Extension {
                name,
                contents: r.rest(),
            })
        }
        k if SSH1_REQUESTS.contains(&k) => Ok(Request::Ssh1(k)),
        k => Ok(Request::Unknown(k)),
    }
}

/// Parse the contents of a `session-bind@openssh.com` extension request.
pub fn parse_session_bind(contents: &[u8]) -> Result<SessionBind<'_>, WireError> {
    let mut r = Reader::new(contents, "session-bind");
    let host_key = r.string()?;
    let session_id = r.string()?;
    let signature = r.string()?;
    let forwarding = r.bool()?;
    r.end()?;
    if host_key.is_empty() || session_id.is_empty() {
        return Err(WireError::Invalid(
            "session-bind: empty host key or session id",
        ));
    }
    Ok(SessionBind {
        host_key,
        session_id,
        signature,
        forwarding,
    })
}

/// Parse one answer body (type byte first).
pub fn parse_answer(body: &[u8]) -> Result<Answer<'_>, WireError> {
    let (&kind, rest) = body.split_first().ok_or(WireError::Empty)?;
    match kind {
        SSH_AGENT_FAILURE => Ok(Answer::Failure),
        SSH_AGENT_SUCCESS => Ok(Answer::Success),
        SSH_AGENT_IDENTITIES_ANSWER => {
            let mut r = Reader::new(rest, "identities answer");
            let n = r.u32()? as usize;
            // Each key takes at least 8 bytes: bound the allocation by what
            // is really there.
            let mut keys = Vec::with_capacity(n.min(rest.len() / 8));
            for _ in 0..n {
                let key = r.string()?;
                let comment = r.string()?;
                keys.push((key, comment));
            }
            r.end()?;
            Ok(Answer::Identities(keys))
        }
        SSH_AGENT_SIGN_RESPONSE => {
            let mut r = Reader::new(rest, "sign response");
            let sig = r.string()?;
            r.end()?;
            Ok(Answer::Signature(sig))
        }
        SSH_AGENT_EXTENSION_FAILURE => Ok(Answer::ExtensionFailure),
        SSH_AGENT_EXTENSION_RESPONSE => Ok(Answer::ExtensionResponse),
        k => Ok(Answer::Other(k)),
    }
}

/// Encode an identities answer.
pub fn encode_identities(keys: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(
        4 + keys
            .iter()
            .map(|(k, c)| 8 + k.len() + c.len())
            .sum::<usize>(),
    );
    body.extend_from_slice(&(keys.len() as u32).to_be_bytes());
    for (k, c) in keys {
        put_string(&mut body, k);
        put_string(&mut body, c);
    }
    put_message(out, SSH_AGENT_IDENTITIES_ANSWER, &body);
}

/// A whole sign request (length field included), flags 0: for benches
/// and tests.
pub fn build_sign_request(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + key.len() + data.len());
    put_string(&mut body, key);
    put_string(&mut body, data);
    body.extend_from_slice(&0u32.to_be_bytes());
    let mut out = Vec::with_capacity(5 + body.len());
    put_message(&mut out, SSH_AGENTC_SIGN_REQUEST, &body);
    out
}

/// What the data of a signature request is, as far as it can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed<'a> {
    /// RFC 4252 §7 (and OpenSSH's `publickey-hostbound-v00@openssh.com`,
    /// which adds the server's host key): SSH user authentication.
    UserAuth {
        session_id: &'a [u8],
        user: &'a [u8],
        service: &'a [u8],
        method: &'a [u8],
        /// Present with the host-bound method.
        host_key: Option<&'a [u8]>,
    },
    /// OpenSSH PROTOCOL.sshsig: `ssh-keygen -Y sign`, git signing.
    SshSig { namespace: &'a [u8] },
    /// Anything else (e.g. a server's host key proof, or arbitrary data).
    Other,
}

impl Signed<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Signed::UserAuth { .. } => "ssh-userauth",
            Signed::SshSig { .. } => "sshsig",
            Signed::Other => "other",
        }
    }
}

/// Classify signature data. Never fails: what cannot be parsed is `Other`.
pub fn classify_signed(data: &[u8]) -> Signed<'_> {
    if let Some(rest) = data.strip_prefix(SSHSIG_MAGIC) {
        let mut r = Reader::new(rest, "sshsig");
        let parsed = (|| {
            let namespace = r.string()?;
            let _reserved = r.string()?;
            let _hash = r.string()?;
            let _digest = r.string()?;
            r.end()?;
            Ok::<_, WireError>(namespace)
        })();
        return match parsed {
            Ok(namespace) => Signed::SshSig { namespace },
            Err(_) => Signed::Other,
        };
    }
    let mut r = Reader::new(data, "userauth");
    let parsed = (|| {
        let session_id = r.string()?;
        if r.u8()? != SSH_MSG_USERAUTH_REQUEST {
            return Err(WireError::Invalid("userauth"));
        }
        let user = r.string()?;
        let service = r.string()?;
        let method = r.string()?;
        if !r.bool()? {
            return Err(WireError::Invalid("userauth"));
        }
        let _alg = r.string()?;
        let _key = r.string()?;
        let host_key = if method == b"publickey-hostbound-v00@openssh.com" {
            Some(r.string()?)
        } else {
            None
        };
        r.end()?;
        Ok(Signed::UserAuth {
            session_id,
            user,
            service,
            method,
            host_key,
        })
    })();
    parsed.unwrap_or(Signed::Other)
}

#[cfg(test)]
pub mod build {
    //! Encoders for the tests.
    use super::*;

    pub fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_message(&mut out, kind, body);
        out
    }

    pub fn strings(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            put_string(&mut out, p);
        }
        out
    }

    pub fn sign(key: &[u8], data: &[u8], flags: u32) -> Vec<u8> {
        let mut b = strings(&[key, data]);
        b.extend_from_slice(&flags.to_be_bytes());
        msg(SSH_AGENTC_SIGN_REQUEST, &b)
    }

    pub fn userauth(
        session: &[u8],
        user: &[u8],
        method: &[u8],
        key: &[u8],
        host: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut d = strings(&[session]);
        d.push(SSH_MSG_USERAUTH_REQUEST);
        d.extend(strings(&[user, b"ssh-connection", method]));
        d.push(1);
        d.extend(strings(&[b"ssh-ed25519", key]));
        if let Some(h) = host {
            d.extend(strings(&[h]));
        }
        d
    }

    pub fn sshsig(namespace: &[u8]) -> Vec<u8> {
        let mut d = SSHSIG_MAGIC.to_vec();
        d.extend(strings(&[namespace, b"", b"sha512", &[7u8; 64]]));
        d
    }

    pub fn session_bind(host: &[u8], session: &[u8]) -> Vec<u8> {
        let mut b = strings(&[SESSION_BIND.as_bytes(), host, session, b"sig"]);
        b.push(0);
        msg(SSH_AGENTC_EXTENSION, &b)
    }

    pub fn identities(keys: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_identities(keys, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    fn body(m: &[u8]) -> &[u8] {
        &m[4..]
    }

    #[test]
    fn every_request_type_parses() {
        assert_eq!(parse_request(&[11]), Ok(Request::Identities));
        let m = sign(b"KEY", b"DATA", 2);
        assert_eq!(
            parse_request(body(&m)),
            Ok(Request::Sign {
                key: b"KEY",
                data: b"DATA",
                flags: 2
            })
        );
        let mut add = strings(&[b"ssh-ed25519", b"pub", b"priv", b"comment"]);
        assert_eq!(
            parse_request(body(&msg(17, &add))),
            Ok(Request::AddIdentity {
                key_type: b"ssh-ed25519",
                constrained: false
            })
        );
        add.extend_from_slice(&[1, 0, 0, 0, 60]);
        assert!(matches!(
            parse_request(body(&msg(25, &add))),
            Ok(Request::AddIdentity {
                constrained: true,
                ..
            })
        ));
        assert_eq!(
            parse_request(body(&msg(18, &strings(&[b"K"])))),
            Ok(Request::RemoveIdentity { key: b"K" })
        );
        assert_eq!(parse_request(&[19]), Ok(Request::RemoveAll));
        assert_eq!(
            parse_request(body(&msg(20, &strings(&[b"/lib/p11.so", b"1234"])))),
            Ok(Request::AddSmartcard {
                id: b"/lib/p11.so",
                constrained: false
            })
        );
        let mut c = strings(&[b"/lib/p11.so", b"1234"]);
        c.extend_from_slice(&[2]);
        assert!(matches!(
            parse_request(body(&msg(26, &c))),
            Ok(Request::AddSmartcard {
                constrained: true,
                ..
            })
        ));
        assert_eq!(
            parse_request(body(&msg(21, &strings(&[b"/lib/p11.so", b""])))),
            Ok(Request::RemoveSmartcard { id: b"/lib/p11.so" })
        );
        assert_eq!(
            parse_request(body(&msg(22, &strings(&[b"pw"])))),
            Ok(Request::Lock)
        );
        assert_eq!(
            parse_request(body(&msg(23, &strings(&[b"pw"])))),
            Ok(Request::Unlock)
        );
        let ext = session_bind(b"HOSTKEY", b"SESSION");
        let Ok(Request::Extension { name, contents }) = parse_request(body(&ext)) else {
            panic!()
        };
        assert_eq!(name, SESSION_BIND.as_bytes());
        let b = parse_session_bind(contents).unwrap();
        assert_eq!(
            (b.host_key, b.session_id, b.forwarding),
            (&b"HOSTKEY"[..], &b"SESSION"[..], false)
        );
        for k in SSH1_REQUESTS {
            assert_eq!(parse_request(&[k]), Ok(Request::Ssh1(k)));
        }
        assert_eq!(parse_request(&[200]), Ok(Request::Unknown(200)));
        assert!(Request::Lock.is_manage() && !Request::Identities.is_manage());
    }

    #[test]
    fn truncated_and_trailing_requests_are_errors() {
        assert_eq!(parse_request(&[]), Err(WireError::Empty));
        assert!(parse_request(&[11, 0]).is_err());
        let m = sign(b"KEY", b"DATA", 0);
        for cut in 1..body(&m).len() {
            assert!(parse_request(&body(&m)[..cut]).is_err(), "{cut}");
        }
        let mut long = body(&m).to_vec();
        long.push(0);
        assert!(parse_request(&long).is_err());
        assert!(parse_request(body(&sign(b"", b"D", 0))).is_err());
        assert!(parse_request(body(&msg(17, &strings(&[b"ssh-ed25519"])))).is_err());
        assert!(parse_request(body(&msg(18, &[0, 0, 0, 5, 1]))).is_err());
        assert!(parse_request(&[19, 1]).is_err());
        assert!(parse_request(body(&msg(20, &strings(&[b"id"])))).is_err());
        assert!(parse_request(body(&msg(21, &strings(&[b"id"])))).is_err());
        assert!(parse_request(&[22]).is_err());
        assert!(parse_request(body(&msg(23, &[0, 0, 0, 2, b'p', b'w', 9]))).is_err());
        assert!(parse_request(&[27]).is_err());
        assert!(parse_request(body(&msg(27, &strings(&[b""])))).is_err());
        let ext = session_bind(b"H", b"S");
        let Ok(Request::Extension { contents, .. }) = parse_request(body(&ext)) else {
            panic!()
        };
        for cut in 0..contents.len() {
            assert!(parse_session_bind(&contents[..cut]).is_err(), "{cut}");
        }
    }

    #[test]
    fn every_answer_type_parses() {
        assert_eq!(parse_answer(&[5]), Ok(Answer::Failure));
        assert_eq!(parse_answer(&[6]), Ok(Answer::Success));
        let ids = identities(&[(b"K1", b"c1"), (b"K2", b"")]);
        assert_eq!(
            parse_answer(body(&ids)),
            Ok(Answer::Identities(vec![
                (&b"K1"[..], &b"c1"[..]),
                (&b"K2"[..], &b""[..])
            ]))
        );
        for cut in 1..body(&ids).len() {
            assert!(parse_answer(&body(&ids)[..cut]).is_err(), "{cut}");
        }
        // A huge count with no keys behind it: an error, not an allocation.
        assert!(parse_answer(&[12, 0xff, 0xff, 0xff, 0xff]).is_err());
        let sig = msg(14, &strings(&[b"SIG"]));
        assert_eq!(parse_answer(body(&sig)), Ok(Answer::Signature(b"SIG")));
        assert!(parse_answer(&body(&sig)[..5]).is_err());
        assert_eq!(parse_answer(&[28]), Ok(Answer::ExtensionFailure));
        assert_eq!(parse_answer(&[29, 1, 2]), Ok(Answer::ExtensionResponse));
        assert_eq!(parse_answer(&[99]), Ok(Answer::Other(99)));
        assert_eq!(parse_answer(&[]), Err(WireError::Empty));
    }

    #[test]
    fn signed_data_is_classified() {
        let d = userauth(b"SID", b"alice", b"publickey", b"KEY", None);
        assert_eq!(
            classify_signed(&d),
            Signed::UserAuth {
                session_id: b"SID",
                user: b"alice",
                service: b"ssh-connection",
                method: b"publickey",
                host_key: None
            }
        );
        let d = userauth(
            b"SID",
            b"bob",
            b"publickey-hostbound-v00@openssh.com",
            b"KEY",
            Some(b"HK"),
        );
        assert!(matches!(
            classify_signed(&d),
            Signed::UserAuth {
                host_key: Some(b"HK"),
                ..
            }
        ));
        let d = sshsig(b"git");
        assert_eq!(classify_signed(&d), Signed::SshSig { namespace: b"git" });
        assert_eq!(classify_signed(b"SSHSIG\0\0"), Signed::Other);
        assert_eq!(classify_signed(b"random"), Signed::Other);
        assert_eq!(classify_signed(b""), Signed::Other);
        let d = userauth(b"SID", b"alice", b"publickey", b"KEY", None);
        for cut in 0..d.len() {
            assert_eq!(classify_signed(&d[..cut]), Signed::Other);
        }
    }
}
