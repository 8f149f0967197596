//! The relay under test, alone: its stderr (`-v`) collected in memory,
//! its listen address read from the log, plain HTTP to its API. For
//! tests that talk to it as generic WebSocket clients (`super::ws`) or
//! put a proxy in front of it. (`super::clients::Relay` is the relay as a
//! background service for origin/dest chains.)

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::proc::{rss_of, RELAY};

/// A relay process on 127.0.0.1 with a free port; killed on drop.
pub struct Relay {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Relay {
    pub fn start(extra: &[&str]) -> Relay {
        Self::start_on(0, extra)
    }

    pub fn start_on(port: u16, extra: &[&str]) -> Relay {
        let port = port.to_string();
        let mut args = vec!["-p", &port, "-b", "127.0.0.1", "-v"];
        args.extend_from_slice(extra);
        Self::spawn(&args, |_| {})
    }

    /// Spawn with full control of the arguments; `setup` may adjust the
    /// command (e.g. resource limits). Waits for the first "listening on".
    pub fn spawn(args: &[&str], setup: impl FnOnce(&mut Command)) -> Relay {
        let mut cmd = Command::new(RELAY);
        cmd.args(args);
        setup(&mut cmd);
        Self::spawn_command(cmd, None)
    }

    /// Spawn `cmd` (the relay, or something that execs it) and collect its
    /// stderr. With `addr` None, wait for the first "listening on" and
    /// talk to that address; else talk to `addr` at once (a socket
    /// activator listens there before the relay runs).
    pub fn spawn_command(mut cmd: Command, addr: Option<SocketAddr>) -> Relay {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn relay");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("listening on ") {
                    let addr = line[i + 13..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = addr.unwrap_or_else(|| {
            rx.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("relay did not start: {}", log.lock().unwrap()))
                .parse()
                .expect("listen address")
        });
        Relay { child, addr, log }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Plain HTTP GET; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
    }

    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.child.id())
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet
        // reaped), and a valid signal number.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for exit; returns the exit status if it exits within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- relay log ---\n{}--- end of relay log ---", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}
