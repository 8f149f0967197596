//! TLS and proxies around the relay (feature `tls`): a test PKI, HAProxy
//! and nginx terminating TLS in front of plain relays, tinyproxy, and
//! origin/dest processes given `wss://` URLs with no proxy or TLS
//! variables inherited.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::proc::TempDir;
use super::proc::{daemon, find_sbin, free_port, haproxy, unique, wait_for, Daemon, Proc};
use super::proc::{DEST, ORIGIN};
use sockrelay::tls::testcerts::{make_ca, make_leaf, KeyKind};

/// Proxy and TLS variables that must not leak in from the environment.
const NET_ENV: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "SOCKRELAY_TOKEN",
    "SOCKRELAY_JOIN",
];

/// A CA and a relay certificate for `localhost` and 127.0.0.1.
pub struct Pki {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// cert + key in one file, as HAProxy's `crt` and nginx want.
    pub combined: PathBuf,
    /// A second CA that signed nothing we use.
    pub other_ca: PathBuf,
}

pub fn pki(dir: &TempDir) -> Pki {
    let d = dir.0.as_path();
    let ca = make_ca(d, "ca");
    let other_ca = make_ca(d, "otherca");
    let (cert, key) = make_leaf(
        d,
        "ca",
        "relay",
        &["DNS:localhost", "IP:127.0.0.1"],
        KeyKind::EcdsaP256,
        30,
    );
    let combined = d.join("relay-combined.pem");
    let mut both = std::fs::read(&cert).unwrap();
    both.extend(std::fs::read(&key).unwrap());
    std::fs::write(&combined, both).unwrap();
    Pki {
        ca,
        cert,
        key,
        combined,
        other_ca,
    }
}

/// A client certificate (`client.test`) from `pki`'s CA, of key type
/// `kind`: (certificate, key).
pub fn client_cert(dir: &TempDir, kind: KeyKind) -> (PathBuf, PathBuf) {
    make_leaf(&dir.0, "ca", "client", &["DNS:client.test"], kind, 30)
}

/// HAProxy terminating TLS (`bind … ssl crt …`) in front of `backend`.
pub fn haproxy_tls(dir: &TempDir, pem: &Path, backend: u16) -> (Daemon, u16) {
    haproxy_tls_opts(dir, pem, backend, "")
}

/// Same, with more `bind` options (e.g. `ca-file … verify required`).
pub fn haproxy_tls_opts(dir: &TempDir, pem: &Path, backend: u16, bind_opts: &str) -> (Daemon, u16) {
    let port = free_port();
    let cfg = format!(
        "global\n    maxconn 200\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 30s\n    \
         timeout server 30s\n    timeout tunnel 1h\n\
         frontend tls\n    bind 127.0.0.1:{port} ssl crt {} alpn http/1.1 {bind_opts}\n    default_backend relay\n\
         backend relay\n    server relay0 127.0.0.1:{backend}\n",
        pem.display()
    );
    let path = dir.path(&format!("haproxy-{}.cfg", unique()));
    std::fs::write(&path, cfg).unwrap();
    (haproxy(&path, port), port)
}

/// tinyproxy's log file (it logs CONNECT requests at `LogLevel Connect`).
pub struct ProxyLog(PathBuf);

impl ProxyLog {
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }
}

impl Drop for ProxyLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A real tinyproxy on loopback, with Basic auth when `auth` is given.
pub fn tinyproxy(dir: &TempDir, auth: Option<(&str, &str)>) -> (Daemon, u16, ProxyLog) {
    use std::os::unix::fs::PermissionsExt;
    let port = free_port();
    // The log lives where tinyproxy, once it dropped root, can still write.
    let log_path = std::env::temp_dir().join(format!(
        "sockrelay-tinyproxy-{}-{}.log",
        std::process::id(),
        unique()
    ));
    std::fs::write(&log_path, b"").unwrap();
    std::fs::set_permissions(&log_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut cfg = format!(
        "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 50\nLogLevel Connect\nAllow 127.0.0.1\nLogFile \"{}\"\n",
        log_path.display()
    );
    // tinyproxy drops root privileges only when told to whom.
    if unsafe { libc::geteuid() } == 0 {
        cfg.push_str("User nobody\nGroup nogroup\n");
    }
    if let Some((u, p)) = auth {
        cfg.push_str(&format!("BasicAuth {u} {p}\n"));
    }
    let path = dir.path(&format!("tinyproxy-{}.conf", unique()));
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = Command::new(find_sbin("tinyproxy"));
    cmd.args(["-d", "-c"]).arg(&path);
    (daemon(cmd, "tinyproxy", port), port, ProxyLog(log_path))
}

/// Spawn a client with none of `NET_ENV` inherited.
fn spawn(bin: &str, args: &[&str], env: &[(&str, &str)], log: PathBuf, stdout: Stdio) -> Child {
    super::proc::spawn(bin, args, env, NET_ENV, log, stdout)
}

/// An origin given `args` (options, relay URL, socket) whose token is
/// generated, so that it prints the join string. Returns the process and
/// its eval lines (SOCKRELAY_SESSION, SOCKRELAY_TOKEN, SOCKRELAY_JOIN).
pub fn origin(
    dir: &TempDir,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<(Proc, Vec<(String, String)>), String> {
    let log = dir.path(&format!("origin-{}.log", unique()));
    let child = spawn(ORIGIN, args, env, log.clone(), Stdio::piped());
    let mut proc = Proc { child, log };
    let stdout = proc.child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut vars = Vec::new();
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                for stmt in line.split(';') {
                    if let Some((k, v)) = stmt.trim().split_once('=') {
                        let v = v.trim_matches('\'');
                        vars.push((k.to_string(), v.to_string()));
                    }
                }
                if vars.iter().any(|(k, _)| k == "SOCKRELAY_JOIN") {
                    return Ok((proc, vars));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !proc.is_running() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Err(proc.log_text())
}

pub fn var<'a>(vars: &'a [(String, String)], k: &str) -> &'a str {
    vars.iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

pub fn dest(dir: &TempDir, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let log = dir.path(&format!("dest-{}.log", unique()));
    let child = spawn(DEST, args, env, log.clone(), Stdio::null());
    Proc { child, log }
}

/// Runs a client that must fail: its exit code, its log, and how long it took.
pub fn must_fail(mut p: Proc, within: Duration) -> (Option<i32>, String, Duration) {
    let t0 = Instant::now();
    let code = p.wait_exit(within);
    (code, p.log_text(), t0.elapsed())
}

pub fn wait_log(p: &Proc, needle: &str, secs: u64) -> bool {
    wait_for(Duration::from_secs(secs), || p.log_text().contains(needle))
}

/// nginx terminating TLS and routing by session id (`hash $arg_id
/// consistent;`) to `relays`: the shape of docs/nginx-tls.conf.
pub fn nginx_tls(dir: &TempDir, cert: &Path, key: &Path, relays: &[u16]) -> (Daemon, u16) {
    let port = free_port();
    let prefix = dir.path(&format!("nginx-{}", unique()));
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let servers: String = relays
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p};\n"))
        .collect();
    let cfg = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {pfx}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n    access_log off;\n\
             client_body_temp_path {pfx}/body;\n    proxy_temp_path {pfx}/proxy;\n    fastcgi_temp_path {pfx}/fcgi;\n    \
             uwsgi_temp_path {pfx}/uwsgi;\n    scgi_temp_path {pfx}/scgi;\n\
             map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             upstream relays {{\n        hash $arg_id consistent;\n{servers}    }}\n\
             server {{\n        listen 127.0.0.1:{port} ssl;\n        ssl_certificate {cert};\n        ssl_certificate_key {key};\n\
                 location / {{\n            proxy_pass http://relays;\n            proxy_http_version 1.1;\n\
                     proxy_set_header Upgrade $http_upgrade;\n            proxy_set_header Connection $connection_upgrade;\n\
                     proxy_set_header Host $host;\n            proxy_read_timeout 1h;\n            proxy_send_timeout 1h;\n        }}\n    }}\n}}\n",
        pfx = prefix.display(),
        cert = cert.display(),
        key = key.display(),
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = Command::new(find_sbin("nginx"));
    cmd.arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .args(["-e", "stderr"]);
    (daemon(cmd, "nginx", port), port)
}

/// One Prometheus sample of a relay's /metrics (plain HTTP).
pub fn metric(port: u16, name: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
