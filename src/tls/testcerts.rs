//! Test CAs and certificates made with the `openssl` CLI (installed by
//! `.ci/setup`). Used by unit tests, `tests/tls*.rs` and `tests/proxy.rs`;
//! not part of the tools.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Key algorithms the relay accepts.
#[derive(Clone, Copy, Debug)]
pub enum KeyKind {
    EcdsaP256,
    Ed25519,
    Rsa2048,
}

impl KeyKind {
    fn newkey_args(self) -> &'static [&'static str] {
        match self {
            KeyKind::EcdsaP256 => &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            KeyKind::Ed25519 => &["-newkey", "ed25519"],
            KeyKind::Rsa2048 => &["-newkey", "rsa:2048"],
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (install it: .ci/setup)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME.pem` / `NAME.key`) in `dir`.
pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    let subj = format!("/CN=sockrelay test CA {name}");
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(KeyKind::EcdsaP256.newkey_args());
    args.extend_from_slice(&[
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &pem,
        "-days",
        "30",
        "-subj",
        &subj,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args);
    dir.join(pem)
}

/// A leaf certificate `NAME.pem` / `NAME.key` signed by CA `ca`, valid for
/// the DNS names and IPs in `sans` (e.g. `["DNS:localhost", "IP:127.0.0.1"]`).
/// `days == 0` makes one that has expired a second later.
pub fn make_leaf(
    dir: &Path,
    ca: &str,
    name: &str,
    sans: &[&str],
    kind: KeyKind,
    days: u32,
) -> (PathBuf, PathBuf) {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let pem = format!("{name}.pem");
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        format!(
            "subjectAltName={}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
            sans.join(",")
        ),
    )
    .expect("write ext file");
    let subj = format!("/CN={name}");
    let mut args = vec!["req"];
    args.extend_from_slice(kind.newkey_args());
    args.extend_from_slice(&["-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &args);
    let ca_pem = format!("{ca}.pem");
    let ca_key = format!("{ca}.key");
    let days = days.to_string();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            &days,
            "-extfile",
            &ext,
        ],
    );
    (dir.join(pem), dir.join(key))
}

/// A self-signed certificate (for pinning), `NAME.pem` / `NAME.key`.
pub fn make_self_signed(dir: &Path, name: &str, san: &str) -> (PathBuf, PathBuf) {
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    let subj = format!("/CN={name}");
    let addext = format!("subjectAltName={san}");
    let mut args = vec!["req", "-x509"];
    args.extend_from_slice(KeyKind::EcdsaP256.newkey_args());
    args.extend_from_slice(&[
        "-nodes", "-keyout", &key, "-out", &pem, "-days", "30", "-subj", &subj, "-addext", &addext,
    ]);
    openssl(dir, &args);
    (dir.join(pem), dir.join(key))
}

/// `sha256/BASE64` of a certificate's SPKI, computed by openssl (an
/// independent check of `pin::pin_of`).
pub fn openssl_pin(cert: &Path) -> String {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | openssl base64 -A",
        cert.display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("sha256/{}", String::from_utf8_lossy(&out.stdout).trim())
}
