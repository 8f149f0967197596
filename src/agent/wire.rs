//! ssh-agent wire format (draft-miller-ssh-agent §3): every message is a
//! `uint32` length, then that many bytes starting with a type byte. Fields
//! use the SSH encodings of RFC 4251 §5 (`byte`, `boolean`, `uint32`,
//! `string` = `uint32` length + bytes).

/// Largest message body (the length field's value) accepted, as OpenSSH's
/// `AGENT_MAX_LEN` (authfd.c, ssh-agent.c): 256 KiB.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The length prefix.
pub const LEN_BYTES: usize = 4;

// Requests (client → agent), draft-miller-ssh-agent §5.1 and §7.1.
pub const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
pub const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
pub const SSH_AGENTC_ADD_IDENTITY: u8 = 17;
pub const SSH_AGENTC_REMOVE_IDENTITY: u8 = 18;
pub const SSH_AGENTC_REMOVE_ALL_IDENTITIES: u8 = 19;
pub const SSH_AGENTC_ADD_SMARTCARD_KEY: u8 = 20;
pub const SSH_AGENTC_REMOVE_SMARTCARD_KEY: u8 = 21;
pub const SSH_AGENTC_LOCK: u8 = 22;
pub const SSH_AGENTC_UNLOCK: u8 = 23;
pub const SSH_AGENTC_ADD_ID_CONSTRAINED: u8 = 25;
pub const SSH_AGENTC_ADD_SMARTCARD_KEY_CONSTRAINED: u8 = 26;
pub const SSH_AGENTC_EXTENSION: u8 = 27;
/// Protocol-1 requests (reserved by the draft, §7.1; removed from OpenSSH).
pub const SSH1_REQUESTS: [u8; 6] = [1, 3, 7, 8, 9, 24];

// Answers (agent → client).
pub const SSH_AGENT_FAILURE: u8 = 5;
pub const SSH_AGENT_SUCCESS: u8 = 6;
pub const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;
pub const SSH_AGENT_SIGN_RESPONSE: u8 = 14;
pub const SSH_AGENT_EXTENSION_FAILURE: u8 = 28;
pub const SSH_AGENT_EXTENSION_RESPONSE: u8 = 29;

/// The extension `ssh` sends before user authentication (OpenSSH
/// PROTOCOL.agent §1): binds the agent connection to a server host key.
pub const SESSION_BIND: &str = "session-bind@openssh.com";
/// RFC 4252 §7: the message type inside a userauth signature's data.
pub const SSH_MSG_USERAUTH_REQUEST: u8 = 50;
/// OpenSSH PROTOCOL.sshsig: the magic preamble of signed data.
pub const SSHSIG_MAGIC: &[u8] = b"SSHSIG";

/// The encoded `SSH_AGENT_FAILURE` message, length included.
pub const FAILURE_MESSAGE: [u8; 5] = [0, 0, 0, 1, SSH_AGENT_FAILURE];

/// A framing or field error: the message cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The length field is 0 (no type byte).
    Empty,
    /// The length field exceeds [`MAX_MESSAGE_BYTES`].
    Oversized(usize),
    /// A field runs past the end of the message.
    Truncated(&'static str),
    /// Bytes left over after the last field.
    Trailing(&'static str),
    /// A field has a value the protocol does not allow.
    Invalid(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Empty => f.write_str("empty agent message (length 0)"),
            WireError::Oversized(n) => write!(
                f,
                "agent message of {n} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit"
            ),
            WireError::Truncated(what) => write!(f, "truncated {what}"),
            WireError::Trailing(what) => write!(f, "trailing bytes after {what}"),
            WireError::Invalid(what) => write!(f, "invalid {what}"),
        }
    }
}

/// Where the next message ends in `buf`: `Ok(None)` = need more bytes,
/// `Ok(Some(n))` = `buf[..n]` is one whole message (length field included).
/// An oversized or empty length is an error as soon as the 4 length bytes
/// are in, so nobody buffers toward it.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(hdr) = buf.get(..LEN_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > MAX_MESSAGE_BYTES {
        return Err(WireError::Oversized(len));
    }
    let total = LEN_BYTES + len;
    Ok((buf.len() >= total).then_some(total))
}

/// A cursor over one message's fields.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// `what` names the message in errors ("sign request").
    pub fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(self.what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub fn bool(&mut self) -> Result<bool, WireError> {
        Ok(self.u8()? != 0)
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn string(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Nothing may follow.
    pub fn end(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing(self.what))
        }
    }
}

/// Append an SSH `string`.
pub fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// Append a whole message: length, type, body.
pub fn put_message(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        assert_eq!(frame_len(&[]), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0]), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0, 1]), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0, 1, 11]), Ok(Some(5)));
        assert_eq!(frame_len(&[0, 0, 0, 1, 11, 99]), Ok(Some(5)));
        assert_eq!(frame_len(&[0, 0, 0, 0]), Err(WireError::Empty));
        let cap = (MAX_MESSAGE_BYTES as u32).to_be_bytes();
        assert_eq!(frame_len(&cap), Ok(None));
        let over = (MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes();
        assert_eq!(
            frame_len(&over),
            Err(WireError::Oversized(MAX_MESSAGE_BYTES + 1))
        );
        assert!(matches!(
            frame_len(&[0xff, 0xff, 0xff, 0xff]),
            Err(WireError::Oversized(_))
        ));
    }

    #[test]
    fn reader() {
        let mut m = Vec::new();
        put_string(&mut m, b"abc");
        m.push(1);
        m.extend_from_slice(&7u32.to_be_bytes());
        let mut r = Reader::new(&m, "test");
        assert_eq!(r.string().unwrap(), b"abc");
        assert!(r.bool().unwrap());
        assert_eq!(r.u32().unwrap(), 7);
        assert!(r.end().is_ok());
        assert_eq!(r.u8(), Err(WireError::Truncated("test")));
        // A string whose length runs past the end.
        let mut r = Reader::new(&[0, 0, 0, 9, 1, 2], "test");
        assert_eq!(r.string(), Err(WireError::Truncated("test")));
        let r = Reader::new(&[1], "x");
        assert_eq!(r.end(), Err(WireError::Trailing("x")));
    }

    #[test]
    fn message_encoding() {
        let mut out = Vec::new();
        put_message(&mut out, SSH_AGENT_FAILURE, &[]);
        assert_eq!(out, FAILURE_MESSAGE);
    }
}
