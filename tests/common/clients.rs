//! Origin/dest chains: a relay as a background service (its log in a
//! file), origins and dests of the real binaries, a unix echo server, and
//! a real `ssh-agent`. Everything has a timeout so that no test can hang.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub use super::data::*;
pub use super::proc::*;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// Spawn a client or relay binary; no token inherited from the
/// environment.
fn spawn(bin: &str, args: &[&str], envs: &[(&str, &str)], log: PathBuf, stdout: Stdio) -> Child {
    super::proc::spawn(bin, args, envs, &["SOCKRELAY_TOKEN"], log, stdout)
}

pub struct Relay {
    pub proc: Proc,
    pub port: u16,
}

impl Relay {
    /// Start a relay on a free loopback port (`-p 0`), or on `port`.
    pub fn start(dir: &TempDir, port: u16) -> Relay {
        let log = dir.path(&format!(
            "relay-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let p = port.to_string();
        let child = spawn(
            RELAY,
            &["-p", &p, "-b", "127.0.0.1"],
            &[],
            log.clone(),
            Stdio::null(),
        );
        let proc = Proc { child, log };
        let mut port = port;
        let ok = wait_for(Duration::from_secs(10), || {
            let t = proc.log_text();
            if let Some(i) = t.find("listening on 127.0.0.1:") {
                let rest = &t[i + "listening on 127.0.0.1:".len()..];
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if let Ok(n) = digits.parse() {
                    port = n;
                    return true;
                }
            }
            false
        });
        assert!(ok, "relay did not start: {}", proc.log_text());
        Relay { proc, port }
    }
}

pub struct Origin {
    pub proc: Proc,
    pub session: String,
}

impl Origin {
    pub fn start(dir: &TempDir, port: u16, socket: &Path, extra: &[&str]) -> Origin {
        Self::try_start(dir, port, socket, extra, TOKEN).expect("origin printed its session")
    }

    /// Start an origin; Err(log) if it exits before printing the session.
    pub fn try_start(
        dir: &TempDir,
        port: u16,
        socket: &Path,
        extra: &[&str],
        token: &str,
    ) -> Result<Origin, (Option<i32>, String)> {
        Self::try_start_env(dir, port, socket, extra, token, &[])
    }

    pub fn try_start_env(
        dir: &TempDir,
        port: u16,
        socket: &Path,
        extra: &[&str],
        token: &str,
        env: &[(&str, &str)],
    ) -> Result<Origin, (Option<i32>, String)> {
        let p = port.to_string();
        Self::try_start_at(dir, &["127.0.0.1", &p], socket, extra, token, env)
    }

    /// `relay`: how the relay is given on the command line (`HOST PORT`,
    /// or a `ws://` / `wss://` URL with its options before it).
    pub fn try_start_at(
        dir: &TempDir,
        relay: &[&str],
        socket: &Path,
        extra: &[&str],
        token: &str,
        env: &[(&str, &str)],
    ) -> Result<Origin, (Option<i32>, String)> {
        let log = dir.path(&format!("origin-{}.log", unique()));
        let mut args: Vec<&str> = extra.to_vec();
        args.extend_from_slice(relay);
        args.push(socket.to_str().unwrap());
        let mut envs = vec![("SOCKRELAY_TOKEN", token)];
        envs.extend_from_slice(env);
        let child = spawn(ORIGIN, &args, &envs, log.clone(), Stdio::piped());
        let mut proc = Proc { child, log };
        let stdout = proc.child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(15)).unwrap_or_default();
        let session = line
            .strip_prefix("SOCKRELAY_SESSION=")
            .and_then(|r| r.split(';').next())
            .map(str::to_string);
        match session {
            Some(session) => Ok(Origin { proc, session }),
            None => {
                let code = proc.wait_exit(Duration::from_secs(5));
                Err((code, proc.log_text()))
            }
        }
    }
}

pub struct Dest {
    pub proc: Proc,
    pub socket: PathBuf,
}

impl Dest {
    /// Start a dest and wait until its session is end-to-end ready.
    pub fn start(dir: &TempDir, port: u16, session: &str, socket: &Path, extra: &[&str]) -> Dest {
        Self::start_env(dir, port, session, socket, extra, &[])
    }

    pub fn start_env(
        dir: &TempDir,
        port: u16,
        session: &str,
        socket: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Dest {
        let d = Self::spawn_env(dir, port, session, socket, extra, TOKEN, env);
        let ready = if extra.contains(&"--insecure-plaintext") {
            "paired with origin"
        } else {
            "end-to-end encryption established"
        };
        assert!(
            d.proc.wait_log(ready, Duration::from_secs(15)),
            "dest not ready: {}",
            d.proc.log_text()
        );
        d
    }

    pub fn spawn(
        dir: &TempDir,
        port: u16,
        session: &str,
        socket: &Path,
        extra: &[&str],
        token: &str,
    ) -> Dest {
        Self::spawn_env(dir, port, session, socket, extra, token, &[])
    }

    pub fn spawn_env(
        dir: &TempDir,
        port: u16,
        session: &str,
        socket: &Path,
        extra: &[&str],
        token: &str,
        env: &[(&str, &str)],
    ) -> Dest {
        let p = port.to_string();
        Self::spawn_at(dir, &["127.0.0.1", &p], session, socket, extra, token, env)
    }

    /// `relay`: as for `Origin::try_start_at`.
    pub fn spawn_at(
        dir: &TempDir,
        relay: &[&str],
        session: &str,
        socket: &Path,
        extra: &[&str],
        token: &str,
        env: &[(&str, &str)],
    ) -> Dest {
        let log = dir.path(&format!("dest-{}.log", unique()));
        let mut args: Vec<&str> = extra.to_vec();
        args.extend_from_slice(relay);
        args.extend([session, socket.to_str().unwrap()]);
        let mut envs = vec![("SOCKRELAY_TOKEN", token)];
        envs.extend_from_slice(env);
        let child = spawn(DEST, &args, &envs, log.clone(), Stdio::null());
        Dest {
            proc: Proc { child, log },
            socket: socket.to_path_buf(),
        }
    }
}

/// Connect with a timeout-guarded socket.
pub fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// A unix echo server in a thread: each connection echoes until EOF, then
/// half-closes. Connections whose first byte is b'S' are never read
/// (a stalled reader) and kept open until the server is dropped.
pub struct EchoServer {
    pub path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl EchoServer {
    pub fn start(path: &Path) -> EchoServer {
        let l = std::os::unix::net::UnixListener::bind(path).unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let stop3 = stop2.clone();
                        std::thread::spawn(move || serve(s, stop3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        EchoServer {
            path: path.to_path_buf(),
            stop,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = fs::remove_file(&self.path);
    }
}

fn serve(mut s: UnixStream, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut first = [0u8; 1];
    match s.read(&mut first) {
        Ok(1) if first[0] == b'S' => {
            // A stalled reader: hold the connection, never read.
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        Ok(1) => {
            if s.write_all(&first).is_err() {
                return;
            }
        }
        Ok(_) => {
            let _ = s.shutdown(std::net::Shutdown::Write);
            return;
        }
        Err(_) => return,
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// Send `data` on a fresh connection and read the echo back (a writer
/// thread and this reader run concurrently); returns what came back.
pub fn echo_roundtrip(path: &Path, data: Vec<u8>) -> Vec<u8> {
    let s = connect(path);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    let mut r = s;
    r.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    got
}

/// Everything a test needs: relay, echo server as the origin's socket,
/// origin, dest.
pub struct Chain {
    pub dir: TempDir,
    pub relay: Relay,
    pub echo: Option<EchoServer>,
    pub origin: Origin,
    pub dest: Dest,
}

impl Chain {
    pub fn start(tag: &str, extra: &[&str]) -> Chain {
        Self::start_env(tag, extra, &[])
    }

    /// Like `start`, with extra environment for origin and dest.
    pub fn start_env(tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Chain {
        let dir = TempDir::new(tag);
        let relay = Relay::start(&dir, 0);
        let echo = EchoServer::start(&dir.path("echo.sock"));
        let origin = Origin::try_start_env(&dir, relay.port, &echo.path, extra, TOKEN, env)
            .expect("origin printed its session");
        let dest = Dest::start_env(
            &dir,
            relay.port,
            &origin.session,
            &dir.path("dest.sock"),
            extra,
            env,
        );
        Chain {
            dir,
            relay,
            echo: Some(echo),
            origin,
            dest,
        }
    }
}

/// The OpenSSH tools the agent tests drive. `.ci/setup` installs them, so
/// a missing one fails the test instead of skipping it.
pub fn require_ssh_tools() {
    for tool in ["ssh-agent", "ssh-add", "ssh-keygen", "timeout"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is missing: run `bash .ci/setup` (it installs openssh-client)"
        );
    }
}

/// Run `cmd` with SSH_AUTH_SOCK set, bounded by `timeout(1)`.
pub fn with_agent(sock: &Path, cmd: &[&str]) -> std::process::Output {
    Command::new("timeout")
        .arg("20")
        .args(cmd)
        .env("SSH_AUTH_SOCK", sock)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `ssh-keygen -Y sign` of `file` (namespace "file") with the key whose
/// public half is `pubkey`, through the agent at `sock`; the signature is
/// written beside it, `file.sig`.
pub fn ssh_sign(sock: &Path, pubkey: &Path, file: &Path) -> std::process::Output {
    with_agent(
        sock,
        &[
            "ssh-keygen",
            "-Y",
            "sign",
            "-f",
            pubkey.to_str().unwrap(),
            "-n",
            "file",
            file.to_str().unwrap(),
        ],
    )
}

/// Check `file.sig` (from `ssh_sign`) against `pubkey`, locally.
pub fn ssh_verify(pubkey: &Path, file: &Path) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ssh-keygen -Y check-novalidate -n file -f {} -s {}.sig < {}",
            pubkey.display(),
            file.display(),
            file.display()
        ))
        .output()
        .unwrap()
}

/// A real `ssh-agent -D` (our child: it dies with the test) holding a fresh
/// ed25519 key with `comment`. Returns the agent, its socket and the key
/// path (the public key is beside it, `.pub`).
pub fn agent_with_key(dir: &TempDir, comment: &str) -> (Proc, PathBuf, PathBuf) {
    require_ssh_tools();
    let agent_sock = dir.path("agent.sock");
    let agent = Proc {
        child: Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&agent_sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        log: dir.path("agent.log"),
    };
    assert!(wait_for(Duration::from_secs(5), || agent_sock.exists()));
    let key = dir.path("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = with_agent(&agent_sock, &["ssh-add", key.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    (agent, agent_sock, key)
}
