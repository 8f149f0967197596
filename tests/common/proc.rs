//! Processes, temporary directories and waiting: the primitives every
//! harness in `tests/common` builds on. Everything is bounded in time.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const RELAY: &str = env!("CARGO_BIN_EXE_sockrelay-relay");
pub const ORIGIN: &str = env!("CARGO_BIN_EXE_sockrelay-origin");
pub const DEST: &str = env!("CARGO_BIN_EXE_sockrelay-dest");

/// Poll `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A number unique within this test process.
pub fn unique() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A unique temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        // Short: unix socket paths are limited to 107 bytes.
        let p = std::env::temp_dir().join(format!("sr-{tag}-{}-{n}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop, its stderr in a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_for(timeout, || self.log_text().contains(needle))
    }
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }
    /// Wait for exit (bounded); the exit code, or None on timeout/signal.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    /// Resident set size from /proc, bytes.
    pub fn rss(&self) -> u64 {
        rss_of(self.child.id())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Resident set size of `pid` from /proc, bytes (0 once it is gone).
pub fn rss_of(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(0, |k| k * 1024)
}

/// Spawn `bin` with stdin closed and stderr into `log`; the variables in
/// `unset` are removed from the inherited environment before `envs` is
/// added.
pub fn spawn(
    bin: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    unset: &[&str],
    log: PathBuf,
    stdout: Stdio,
) -> Child {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(fs::File::create(&log).unwrap());
    for k in unset {
        cmd.env_remove(k);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"))
}

/// A free loopback TCP port (closed again; the caller's server binds it
/// next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A third-party server (HAProxy, nginx, tinyproxy) killed on drop.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a third-party server (`tag` names it: "haproxy", "nginx",
/// "tinyproxy") that listens on 127.0.0.1:`port`; its stderr echoed to
/// ours. Returns once it accepts connections.
pub fn daemon(mut cmd: Command, tag: &'static str, port: u16) -> Daemon {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{tag} is missing ({e}): run `bash .ci/setup` (it installs it)")
        });
    echo_stderr(&mut child, tag);
    wait_listening(port, tag);
    Daemon(child)
}

/// HAProxy in the foreground (`-db`) with the configuration file `cfg`,
/// once it listens on `port`.
pub fn haproxy(cfg: &Path, port: u16) -> Daemon {
    let mut cmd = Command::new("haproxy");
    cmd.args(["-db", "-f"]).arg(cfg);
    daemon(cmd, "haproxy", port)
}

/// Echo `child`'s stderr to ours with a `[tag]` prefix, and keep it.
pub fn echo_stderr(child: &mut Child, tag: &'static str) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    if let Some(stderr) = child.stderr.take() {
        let t = text.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{tag}] {line}");
                if let Ok(mut t) = t.lock() {
                    t.push_str(&line);
                    t.push('\n');
                }
            }
        });
    }
    text
}

/// Wait (at most 10 s) until something accepts on 127.0.0.1:`port`.
pub fn wait_listening(port: u16, what: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "{what} did not start on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `name` in an sbin or bin directory (Debian puts daemons in /usr/sbin,
/// which a non-root PATH may lack), else `name` for the PATH.
pub fn find_sbin(name: &str) -> String {
    for d in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = format!("{d}/{name}");
        if Path::new(&p).exists() {
            return p;
        }
    }
    name.to_string()
}
