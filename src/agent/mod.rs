//! The ssh-agent guard: a sans-IO filter between a channel from the dest and
//! the origin's real agent (issue 11, README "ssh-agent guard").
//!
//! - [`wire`]: framing (u32 length + type byte, 256 KiB cap) and fields.
//! - [`msg`]: requests, answers, and what signature data is for.
//! - [`guard`]: the policy ([`Policy`]) and one [`Channel`] state machine
//!   per agent connection: bytes from the dest in, bytes to the agent and
//!   answers to the dest out, one request at a time, audit [`Record`]s.
//! - [`audit`]: audit records as a log line and as JSON.
//!
//! Nothing here touches a socket or a clock: the origin's loop
//! (`client::agent_glue`) moves the bytes, runs the confirmation helper and
//! stamps records with the time.

pub mod audit;
pub mod guard;
pub mod msg;
pub mod wire;

pub use guard::{Channel, Decision, Guard, Policy, Record, SignedInfo, Violation};

use std::fmt;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// A key's SHA256 fingerprint, as `ssh-add -l` and `ssh-keygen -l` print it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a public key blob (the SSH wire encoding).
    pub fn of(blob: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(blob).into())
    }

    /// Parse `SHA256:<unpadded base64>`.
    pub fn parse(s: &str) -> Result<Fingerprint, String> {
        let b64 = s.trim().strip_prefix("SHA256:").ok_or_else(|| {
            format!("{s:?}: a fingerprint starts with SHA256: (as ssh-add -l prints it)")
        })?;
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| format!("{s:?}: not base64 after SHA256:"))?;
        let arr: [u8; 32] = raw
            .try_into()
            .map_err(|_| format!("{s:?}: a SHA256 fingerprint is 32 bytes"))?;
        Ok(Fingerprint(arr))
    }

    /// The fingerprint of the first key in an OpenSSH public key file
    /// (`ssh-ed25519 AAAA… comment`), also in `authorized_keys` form with
    /// options before the key type.
    pub fn from_public_key_text(text: &str) -> Result<Fingerprint, String> {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The key is the first field that decodes as a blob whose
            // leading string equals the field before it (the key type).
            let fields: Vec<&str> = line.split_whitespace().collect();
            for pair in fields.windows(2) {
                let (kind, b64) = (pair[0], pair[1]);
                let Ok(blob) = base64::engine::general_purpose::STANDARD.decode(b64) else {
                    continue;
                };
                if key_type(&blob) == Some(kind.as_bytes()) {
                    return Ok(Fingerprint::of(&blob));
                }
            }
            return Err("not an OpenSSH public key line (TYPE BASE64 [COMMENT])".into());
        }
        Err("no public key in the file".into())
    }
}

/// The key type name a public key blob starts with (`ssh-ed25519`, …).
pub fn key_type(blob: &[u8]) -> Option<&[u8]> {
    wire::Reader::new(blob, "key").string().ok()
}

/// The fingerprint `ssh-add -l` prints for a key blob: for a certificate,
/// that of the plain key inside it (OpenSSH fingerprints certificates by
/// their key, sshkey.c `sshkey_fingerprint_raw`), so `--agent-key` with
/// that fingerprint exposes the key and its certificate alike.
pub fn key_fingerprint(blob: &[u8]) -> Fingerprint {
    match plain_key(blob) {
        Some(plain) => Fingerprint::of(&plain),
        None => Fingerprint::of(blob),
    }
}

/// The plain public key blob inside an OpenSSH certificate blob
/// (PROTOCOL.certkeys: type, nonce, then the key's own fields).
fn plain_key(blob: &[u8]) -> Option<Vec<u8>> {
    let mut r = wire::Reader::new(blob, "certificate");
    let ty = r.string().ok()?;
    let base = ty.strip_suffix(b"-cert-v01@openssh.com")?;
    let fields = match base {
        b"ssh-ed25519" => 1,
        b"ssh-rsa" | b"sk-ssh-ed25519@openssh.com" => 2,
        b"sk-ecdsa-sha2-nistp256@openssh.com" => 3,
        b"ssh-dss" => 4,
        b if b.starts_with(b"ecdsa-sha2-") => 2,
        _ => return None,
    };
    let _nonce = r.string().ok()?;
    let mut out = Vec::new();
    wire::put_string(&mut out, base);
    for _ in 0..fields {
        wire::put_string(&mut out, r.string().ok()?);
    }
    Some(out)
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0)
        )
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real ed25519 public key and the fingerprint ssh-keygen -l printed
    // for it.
    const PUB: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICwok7Ht+ImTWfK9qTWpWZV4S8cjSrNwuwLmi3UldSkt test@example";
    const FP: &str = "SHA256:E2L72HOm4RKv6uIbXBhir6Mr59hUqj3dr+7nQToBWrE";

    #[test]
    fn fingerprints() {
        let fp = Fingerprint::from_public_key_text(PUB).unwrap();
        assert_eq!(Fingerprint::parse(FP).unwrap(), fp);
        assert_eq!(fp.to_string(), FP);
        let with_opts = format!("# comment\n\nfrom=\"10.0.0.1\" {PUB}\n");
        assert_eq!(Fingerprint::from_public_key_text(&with_opts).unwrap(), fp);
        assert!(Fingerprint::parse("MD5:aa:bb").is_err());
        assert!(Fingerprint::parse("SHA256:!!").is_err());
        assert!(Fingerprint::parse("SHA256:AAAA").is_err());
        assert!(Fingerprint::from_public_key_text("").is_err());
        assert!(Fingerprint::from_public_key_text(
            "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAICwok7Ht+ImTWfK9qTWpWZV4S8cjSrNwuwLmi3UldSkt"
        )
        .is_err());
        assert_eq!(
            key_type(b"\0\0\0\x0bssh-ed25519..."),
            Some(&b"ssh-ed25519"[..])
        );
        assert_eq!(key_type(b"\0\0"), None);
    }

    #[test]
    fn certificates_are_fingerprinted_by_their_key() {
        let mut plain = Vec::new();
        wire::put_string(&mut plain, b"ssh-ed25519");
        wire::put_string(&mut plain, &[9u8; 32]);
        let mut cert = Vec::new();
        wire::put_string(&mut cert, b"ssh-ed25519-cert-v01@openssh.com");
        wire::put_string(&mut cert, b"nonce");
        wire::put_string(&mut cert, &[9u8; 32]);
        cert.extend_from_slice(b"serial, principals, signature...");
        assert_eq!(key_fingerprint(&cert), Fingerprint::of(&plain));
        assert_eq!(key_fingerprint(&plain), Fingerprint::of(&plain));
        // A truncated certificate: fingerprinted as it is.
        assert_eq!(key_fingerprint(&cert[..40]), Fingerprint::of(&cert[..40]));
    }
}
