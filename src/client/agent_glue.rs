//! Glue between the client loop and issue 11's features, kept apart from
//! the engine so that its hooks there stay few and small:
//!
//! - origin: the ssh-agent guard ([`crate::agent`]) on every channel
//!   ([`Glue`]), the confirmation helper (`SSH_ASKPASS`, a child process
//!   whose pipe the loop polls: a pending question never blocks other
//!   channels), audit lines, `--lifetime`;
//! - dest: `-- COMMAND` ([`Command`]) and `--socket-mode` / `--socket-group`.
//!
//! Options are parsed here too ([`getopts`], [`parse`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use mio::{Interest, Registry, Token};

use super::engine::Conn;
use super::Side;
use crate::agent::{audit, Channel, Fingerprint, Guard, Policy, Record};
use crate::mux::{ChannelId, Mux};

/// Tokens of confirmation helpers: this bit plus a prompt id.
pub const TOKEN_BIT: usize = 1 << 61;
/// A confirmation helper that has not answered after this long: no.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a helper that closed its output is checked for its exit, and
/// a dest's COMMAND for its exit.
pub const CHILD_POLL: Duration = Duration::from_millis(20);
/// Most output read from a confirmation helper.
const MAX_ASKPASS_OUTPUT: usize = 1024;
/// Rounds of one channel's service before yielding to the others.
const SERVICE_ROUNDS: usize = 16;

/// Exit status of the dest's COMMAND, for `main` (0 if none ran).
static EXIT_STATUS: AtomicI32 = AtomicI32::new(0);

pub fn exit_status() -> i32 {
    EXIT_STATUS.load(Ordering::Relaxed)
}

/// Issue 11's options (both sides; each uses its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentOptions {
    /// Origin: the guard's policy; None = faithful byte pipe.
    pub guard: Option<Policy>,
    /// Origin: append audit records as JSON lines here.
    pub audit_log: Option<PathBuf>,
    /// Origin: end the session after this long.
    pub lifetime: Option<Duration>,
    /// Dest: run this with `SSH_AUTH_SOCK` once the session is ready.
    pub command: Vec<OsString>,
    /// Dest: the socket's mode (default 0600).
    pub socket_mode: u32,
    /// Dest: the socket's group.
    pub socket_group: Option<u32>,
}

// ---- options ------------------------------------------------------------

/// Split `ARGS -- COMMAND…` (dest only; the first `--` that is not an
/// option's value).
pub fn split_command(side: Side, args: &[String]) -> (Vec<String>, Vec<OsString>) {
    if side == Side::Dest {
        if let Some(i) = args.iter().position(|a| a == "--") {
            let cmd = args[i + 1..].iter().map(OsString::from).collect();
            return (args[..i].to_vec(), cmd);
        }
    }
    (args.to_vec(), Vec::new())
}

pub fn getopts(o: &mut getopts::Options, side: Side) {
    if side == Side::Origin {
        o.optflag(
            "",
            "ssh-agent",
            "SOCKET is an ssh-agent: guard it (read-only, every key shown, audit lines); implied by the --agent-* options and --audit-log (default: a plain byte pipe)",
        );
        o.optmulti(
            "",
            "agent-key",
            "expose only this key: a fingerprint as ssh-add -l prints it (SHA256:...) or a public key file (repeatable) (default: every key)",
            "KEY",
        );
        o.optflag(
            "",
            "agent-allow-manage",
            "let the dest add, remove, lock and unlock keys (default: refused)",
        );
        o.optmulti(
            "",
            "agent-allow-extension",
            "pass this agent extension on (repeatable) (default: only session-bind@openssh.com)",
            "NAME",
        );
        o.optopt(
            "",
            "agent-max-signatures",
            "allow at most N signatures over this run, refuse the rest (default: no limit)",
            "N",
        );
        o.optflag(
            "",
            "agent-confirm",
            "ask before each signature through $SSH_ASKPASS, as ssh-add -c does; without SSH_ASKPASS every signature is refused (default: off)",
        );
        o.optopt(
            "",
            "audit-log",
            "append an audit record per agent request to FILE as JSON lines (they are on stderr too) (default: stderr only)",
            "FILE",
        );
        o.optopt(
            "",
            "lifetime",
            "end the session after DURATION (e.g. 90s, 30m, 8h) (default: no limit)",
            "DURATION",
        );
    } else {
        o.optopt(
            "",
            "socket-mode",
            "mode of SOCKET, octal (default: 0600)",
            "MODE",
        );
        o.optopt(
            "",
            "socket-group",
            "group of SOCKET, a name or number (with --socket-mode 0660: who may connect) (default: ours)",
            "GROUP",
        );
    }
}

/// Durations for `--lifetime`: seconds, or with ms, s, m, h.
pub fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let mult = match t.chars().last() {
        Some('m') if !t.ends_with("ms") => Some(60.0),
        Some('h') => Some(3600.0),
        _ => None,
    };
    let d = match mult {
        Some(m) => t[..t.len() - 1]
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0 && *v * m < 1e9)
            .map(|v| Duration::from_secs_f64(v * m))
            .ok_or_else(|| format!("{s:?} is not a duration (e.g. 90s, 30m, 8h)"))?,
        None => crate::cli::parse_duration(t)?,
    };
    if d.is_zero() {
        return Err(format!("--lifetime {s:?}: give a duration above zero"));
    }
    Ok(d)
}

fn parse_key(v: &str) -> Result<Fingerprint, String> {
    if v.starts_with("SHA256:") {
        return Fingerprint::parse(v).map_err(|e| format!("--agent-key {e}"));
    }
    let text = std::fs::read_to_string(v).map_err(|e| {
        format!(
            "--agent-key {v:?}: neither a SHA256: fingerprint nor a readable public key file ({e})"
        )
    })?;
    Fingerprint::from_public_key_text(&text).map_err(|e| format!("--agent-key {v}: {e}"))
}

fn parse_group(v: &str) -> Result<u32, String> {
    if let Ok(n) = v.parse::<u32>() {
        return Ok(n);
    }
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(name, _)| *name == v)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| format!("--socket-group {v:?}: no such group"))
}

pub fn parse(
    m: &getopts::Matches,
    side: Side,
    command: Vec<OsString>,
) -> Result<AgentOptions, String> {
    let mut o = AgentOptions {
        socket_mode: 0o600,
        command,
        ..AgentOptions::default()
    };
    if side == Side::Origin {
        let keys = m
            .opt_strs("agent-key")
            .iter()
            .map(|k| parse_key(k))
            .collect::<Result<Vec<_>, _>>()?;
        let max_signatures = match m.opt_str("agent-max-signatures") {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|_| format!("--agent-max-signatures {v:?}: give a whole number"))?,
            ),
        };
        let policy = Policy {
            keys: (!keys.is_empty()).then_some(keys),
            allow_manage: m.opt_present("agent-allow-manage"),
            allow_extensions: m.opt_strs("agent-allow-extension"),
            max_signatures,
            confirm: m.opt_present("agent-confirm"),
        };
        o.audit_log = m.opt_str("audit-log").map(PathBuf::from);
        let on = m.opt_present("ssh-agent") || policy != Policy::default() || o.audit_log.is_some();
        o.guard = on.then_some(policy);
        o.lifetime = m
            .opt_str("lifetime")
            .map(|v| parse_lifetime(&v))
            .transpose()?;
    } else {
        if let Some(v) = m.opt_str("socket-mode") {
            let mode = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                .ok()
                .filter(|&n| n <= 0o777)
                .ok_or_else(|| format!("--socket-mode {v:?}: give an octal mode such as 0660"))?;
            if mode & 0o200 == 0 {
                return Err(format!(
                    "--socket-mode {v}: the owner needs write permission (0600 or more)"
                ));
            }
            o.socket_mode = mode;
        }
        o.socket_group = m
            .opt_str("socket-group")
            .map(|v| parse_group(&v))
            .transpose()?;
        if o.command.first().is_some_and(|c| c.is_empty()) {
            return Err("-- needs a COMMAND after it".into());
        }
    }
    Ok(o)
}

// ---- origin: the guard ----------------------------------------------------

struct GuardedChannel {
    guard: Channel,
    /// The confirmation helper asked for this channel's request.
    prompt: Option<u64>,
}

struct Prompt {
    child: Child,
    out: mio::unix::pipe::Receiver,
    answer: Vec<u8>,
    eof: bool,
    epoch: u32,
    ch: ChannelId,
    deadline: Instant,
}

/// The origin's guard over every channel of the current epoch.
pub struct Glue {
    guard: Guard,
    chans: HashMap<ChannelId, GuardedChannel>,
    epoch: u32,
    dest: String,
    audit: Option<File>,
    askpass: Option<OsString>,
    prompts: HashMap<u64, Prompt>,
    next_prompt: u64,
    wakeups: Vec<Instant>,
    dirty: Vec<ChannelId>,
}

impl Glue {
    /// The guard, if the options ask for one.
    pub fn new(opts: &AgentOptions) -> Result<Option<Glue>, String> {
        let Some(policy) = opts.guard.clone() else {
            return Ok(None);
        };
        let audit = match &opts.audit_log {
            None => None,
            Some(p) => {
                use std::os::unix::fs::OpenOptionsExt;
                Some(
                    std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .mode(0o600)
                        .open(p)
                        .map_err(|e| format!("--audit-log {}: {e}", p.display()))?,
                )
            }
        };
        let askpass = std::env::var_os("SSH_ASKPASS").filter(|a| !a.is_empty());
        if policy.confirm && askpass.is_none() {
            log::warn!("--agent-confirm without SSH_ASKPASS: every signature will be refused");
        }
        let keys = match &policy.keys {
            None => "every key".to_string(),
            Some(k) => k
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        log::info!(
            "ssh-agent guard on: exposing {keys}; management {}",
            if policy.allow_manage {
                "allowed"
            } else {
                "refused"
            }
        );
        Ok(Some(Glue {
            guard: Guard::new(policy),
            chans: HashMap::new(),
            epoch: 0,
            dest: String::new(),
            audit,
            askpass,
            prompts: HashMap::new(),
            next_prompt: 1,
            wakeups: Vec::new(),
            dirty: Vec::new(),
        }))
    }

    /// The relay's `peer-joined` address of the dest.
    pub fn set_dest(&mut self, addr: &str) {
        self.dest = addr.split_whitespace().next().unwrap_or("").to_string();
    }

    pub fn opened(&mut self, epoch: u32, ch: ChannelId) {
        if epoch != self.epoch {
            self.end_epoch();
            self.epoch = epoch;
        }
        self.chans.insert(
            ch,
            GuardedChannel {
                guard: Channel::new(),
                prompt: None,
            },
        );
    }

    pub fn is_guarded(&self, ch: ChannelId) -> bool {
        self.chans.contains_key(&ch)
    }

    /// The channel is gone (closed by the peer, finished, or by us).
    pub fn closed(&mut self, ch: ChannelId) {
        if let Some(mut c) = self.chans.remove(&ch) {
            c.guard.abandon();
            self.audit_records(ch, &mut c.guard);
            if let Some(id) = c.prompt {
                self.kill_prompt(id);
            }
        }
    }

    pub fn end_epoch(&mut self) {
        let chans: Vec<_> = self.chans.keys().copied().collect();
        for ch in chans {
            self.closed(ch);
        }
    }

    /// Instants at which [`Glue::on_timer`] wants to run.
    pub fn take_wakeups(&mut self) -> Vec<Instant> {
        std::mem::take(&mut self.wakeups)
    }

    /// Channels to service again (a confirmation came in).
    pub fn take_dirty(&mut self) -> Vec<ChannelId> {
        std::mem::take(&mut self.dirty)
    }

    fn audit_records(&mut self, ch: ChannelId, g: &mut Channel) {
        let records: Vec<Record> = g.drain_records().collect();
        if records.is_empty() {
            return;
        }
        let unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let cx = audit::Context {
            unix_ms,
            dest: &self.dest,
            channel: ch,
        };
        for r in &records {
            let level = match r.decision {
                crate::agent::Decision::Allowed => log::Level::Info,
                _ => log::Level::Warn,
            };
            if log::log_enabled!(level) {
                log::log!(level, "{}", audit::text(r, &cx));
            }
            if let Some(f) = &mut self.audit {
                let mut j = audit::json(r, &cx);
                j.push('\n');
                if let Err(e) = f.write_all(j.as_bytes()) {
                    log::error!("--audit-log: {e}");
                }
            }
        }
    }

    /// Move one guarded channel's bytes: mux → guard → agent socket and
    /// back. Protocol violations close the channel (the mux forgets it;
    /// the caller drops the socket when `m.contains(ch)` turns false).
    pub(super) fn service(
        &mut self,
        ch: ChannelId,
        m: &mut Mux,
        conn: &mut Conn,
        scratch: &mut [u8],
    ) {
        let Some(mut gc) = self.chans.remove(&ch) else {
            return;
        };
        let res = self.service_rounds(ch, &mut gc, m, conn, scratch);
        self.audit_records(ch, &mut gc.guard);
        match res {
            Err(why) => {
                log::warn!("channel {ch}: closed: {why}");
                m.close(ch, &why);
                gc.guard.abandon();
                self.audit_records(ch, &mut gc.guard);
                if let Some(id) = gc.prompt {
                    self.kill_prompt(id);
                }
            }
            Ok(()) => {
                self.chans.insert(ch, gc);
            }
        }
    }

    fn service_rounds(
        &mut self,
        ch: ChannelId,
        gc: &mut GuardedChannel,
        m: &mut Mux,
        conn: &mut Conn,
        scratch: &mut [u8],
    ) -> Result<(), String> {
        let g = &mut gc.guard;
        for _ in 0..SERVICE_ROUNDS {
            let mut progress = false;
            // Answers toward the dest, as far as its window allows.
            if !g.to_dest().is_empty() {
                let n = m.send_data(ch, g.to_dest());
                g.dest_written(n);
                progress |= n > 0;
            }
            // Requests from the dest, one at a time.
            if g.to_dest().is_empty() {
                let p = m.pending(ch);
                if !p.is_empty() {
                    let n = g.on_dest(&mut self.guard, p).map_err(|v| v.to_string())?;
                    m.consume(ch, n);
                    progress |= n > 0;
                }
            }
            if m.wants_shutdown(ch) {
                if g.has_partial_request() {
                    return Err("agent guard: dest closed in the middle of a message".into());
                }
                if g.is_idle() {
                    let _ = conn.sock.shutdown(Shutdown::Write);
                    m.eof_delivered(ch);
                    progress = true;
                }
            }
            // Toward the agent.
            while conn.writable && !g.to_agent().is_empty() {
                match conn.sock.write(g.to_agent()) {
                    Ok(n) => {
                        g.agent_written(n);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.writable = false,
                    Err(e) => return Err(format!("write to agent: {e}")),
                }
            }
            // From the agent, once earlier answers are out.
            if conn.readable && !conn.read_eof && g.to_dest().is_empty() {
                match conn.sock.read(scratch) {
                    Ok(0) => {
                        conn.read_eof = true;
                        if g.is_busy() || g.has_partial_answer() {
                            return Err("the agent closed the connection before answering".into());
                        }
                        m.send_eof(ch);
                        progress = true;
                    }
                    Ok(k) => {
                        g.on_agent(&self.guard, &scratch[..k])
                            .map_err(|v| v.to_string())?;
                        if k < scratch.len() && !conn.hup {
                            conn.readable = false;
                        }
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        conn.readable = false;
                        conn.hup = false;
                    }
                    Err(e) => return Err(format!("read from agent: {e}")),
                }
            }
            if !progress {
                break;
            }
        }
        Ok(())
    }

    /// Start confirmation helpers for channels that wait for one.
    pub fn start_prompts(&mut self, registry: &Registry) {
        let waiting: Vec<ChannelId> = self
            .chans
            .iter()
            .filter(|(_, c)| c.prompt.is_none() && c.guard.awaiting_confirm().is_some())
            .map(|(&ch, _)| ch)
            .collect();
        for ch in waiting {
            let Some(mut gc) = self.chans.remove(&ch) else {
                continue;
            };
            let question = gc.guard.awaiting_confirm().map(|r| {
                format!(
                    "sockrelay: allow the dest at {} to use your agent: {}?",
                    if self.dest.is_empty() {
                        "?"
                    } else {
                        &self.dest
                    },
                    audit::summary(r)
                )
            });
            let res = match (&self.askpass, question) {
                (None, _) => Err("--agent-confirm: no SSH_ASKPASS to ask with".to_string()),
                (Some(a), Some(q)) => self.spawn_prompt(registry, a.clone(), &q, ch),
                (Some(_), None) => Err("nothing to confirm".into()),
            };
            match res {
                Ok(id) => gc.prompt = Some(id),
                Err(why) => {
                    gc.guard.confirm_unavailable(why);
                    self.dirty.push(ch);
                }
            }
            self.audit_records(ch, &mut gc.guard);
            self.chans.insert(ch, gc);
        }
    }

    fn spawn_prompt(
        &mut self,
        registry: &Registry,
        askpass: OsString,
        question: &str,
        ch: ChannelId,
    ) -> Result<u64, String> {
        let mut child = std::process::Command::new(&askpass)
            .arg(question)
            .env("SSH_ASKPASS_PROMPT", "confirm")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("--agent-confirm: cannot run SSH_ASKPASS {askpass:?}: {e}"))?;
        let out = child.stdout.take().map(mio::unix::pipe::Receiver::from);
        let Some(mut out) = out else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("--agent-confirm: no pipe to SSH_ASKPASS".into());
        };
        let id = self.next_prompt;
        self.next_prompt += 1;
        let reg = out.set_nonblocking(true).and_then(|()| {
            registry.register(&mut out, Token(TOKEN_BIT | id as usize), Interest::READABLE)
        });
        if let Err(e) = reg {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("--agent-confirm: {e}"));
        }
        let deadline = Instant::now() + CONFIRM_TIMEOUT;
        self.wakeups.push(deadline);
        log::info!("channel {ch}: asking the origin's user (SSH_ASKPASS)");
        self.prompts.insert(
            id,
            Prompt {
                child,
                out,
                answer: Vec::new(),
                eof: false,
                epoch: self.epoch,
                ch,
                deadline,
            },
        );
        Ok(id)
    }

    /// A confirmation helper's pipe is readable.
    pub fn on_event(&mut self, token: Token, registry: &Registry) {
        let id = (token.0 & !TOKEN_BIT) as u64;
        let Some(p) = self.prompts.get_mut(&id) else {
            return;
        };
        let mut buf = [0u8; 256];
        loop {
            match p.out.read(&mut buf) {
                Ok(0) => {
                    p.eof = true;
                    break;
                }
                Ok(n) => {
                    let room = MAX_ASKPASS_OUTPUT.saturating_sub(p.answer.len());
                    p.answer.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if p.eof {
            let _ = registry.deregister(&mut p.out);
            self.check_prompt(id, Instant::now());
        }
    }

    /// Timers: helpers that exited, or ran out of time.
    pub fn on_timer(&mut self, now: Instant) {
        let ids: Vec<u64> = self.prompts.keys().copied().collect();
        for id in ids {
            self.check_prompt(id, now);
        }
    }

    fn check_prompt(&mut self, id: u64, now: Instant) {
        let Some(p) = self.prompts.get_mut(&id) else {
            return;
        };
        let answer = match p.child.try_wait() {
            Ok(Some(status)) if p.eof || now >= p.deadline => {
                // OpenSSH's ask_permission(): yes = exit 0 and an empty
                // answer or "yes".
                let line = p.answer.split(|&b| b == b'\n' || b == b'\r').next();
                let line = line.unwrap_or(&[]);
                Some(status.success() && (line.is_empty() || line.eq_ignore_ascii_case(b"yes")))
            }
            Ok(Some(_)) => {
                // Exited; its output may still be in the pipe.
                self.wakeups.push(now + CHILD_POLL);
                None
            }
            Ok(None) if now >= p.deadline => {
                let _ = p.child.kill();
                let _ = p.child.wait();
                log::warn!(
                    "SSH_ASKPASS gave no answer within {} s: refusing",
                    CONFIRM_TIMEOUT.as_secs()
                );
                Some(false)
            }
            Ok(None) => {
                if p.eof {
                    self.wakeups.push(now + CHILD_POLL);
                }
                None
            }
            Err(_) => Some(false),
        };
        let Some(yes) = answer else { return };
        let Some(p) = self.prompts.remove(&id) else {
            return;
        };
        if p.epoch != self.epoch {
            return;
        }
        if let Some(mut gc) = self.chans.remove(&p.ch) {
            if gc.prompt == Some(id) {
                gc.prompt = None;
                gc.guard.confirm(&mut self.guard, yes);
                self.dirty.push(p.ch);
            }
            self.audit_records(p.ch, &mut gc.guard);
            self.chans.insert(p.ch, gc);
        }
    }

    fn kill_prompt(&mut self, id: u64) {
        if let Some(mut p) = self.prompts.remove(&id) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl Drop for Glue {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.prompts.keys().copied().collect();
        for id in ids {
            self.kill_prompt(id);
        }
    }
}

// ---- dest: -- COMMAND ------------------------------------------------------

/// The dest's COMMAND: started once the session is ready.
pub struct Command {
    argv: Vec<OsString>,
    child: Option<Child>,
    started: bool,
}

impl Command {
    pub fn new(opts: &AgentOptions) -> Option<Command> {
        (!opts.command.is_empty()).then(|| Command {
            argv: opts.command.clone(),
            child: None,
            started: false,
        })
    }

    pub fn started(&self) -> bool {
        self.started
    }

    /// Run it with `SSH_AUTH_SOCK`; Err = could not start (the dest exits
    /// non-zero).
    pub fn start(&mut self, socket: &std::path::Path) -> Result<(), String> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        let (prog, args) = self.argv.split_first().ok_or("no COMMAND")?;
        let child = std::process::Command::new(prog)
            .args(args)
            .env("SSH_AUTH_SOCK", socket)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", prog.to_string_lossy()))?;
        log::info!(
            "session ready: running {} (pid {})",
            prog.to_string_lossy(),
            child.id()
        );
        self.child = Some(child);
        Ok(())
    }

    /// Forward a signal; false when no COMMAND runs (the dest handles it).
    pub fn signal(&mut self, sig: libc::c_int) -> bool {
        match &self.child {
            Some(c) => {
                // SAFETY: kill(2) on our own child's pid, not yet reaped
                // (it is reaped only in `poll`, which drops `child`).
                unsafe {
                    libc::kill(c.id() as libc::pid_t, sig);
                }
                true
            }
            None => false,
        }
    }

    /// Has it exited? Records its status for `main` (128 + signal when
    /// killed, as shells report it).
    pub fn poll(&mut self) -> Option<i32> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => {
                use std::os::unix::process::ExitStatusExt;
                let code = st
                    .code()
                    .or_else(|| st.signal().map(|s| 128 + s))
                    .unwrap_or(1);
                EXIT_STATUS.store(code, Ordering::Relaxed);
                self.child = None;
                Some(code)
            }
            Ok(None) => None,
            Err(e) => {
                log::error!("waiting for COMMAND: {e}");
                EXIT_STATUS.store(1, Ordering::Relaxed);
                self.child = None;
                Some(1)
            }
        }
    }
}

impl Drop for Command {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_lifetime("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_lifetime("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_lifetime("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_lifetime("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_lifetime("0").is_err());
        assert!(parse_lifetime("soon").is_err());
        assert!(parse_lifetime("-1m").is_err());
    }

    fn opts(side: Side, args: &[&str]) -> Result<AgentOptions, String> {
        let mut o = getopts::Options::new();
        getopts(&mut o, side);
        let m = o.parse(args).map_err(|e| e.to_string())?;
        parse(&m, side, Vec::new())
    }

    #[test]
    fn options() {
        let o = opts(Side::Origin, &[]).unwrap();
        assert_eq!((o.guard, o.lifetime), (None, None));
        // --lifetime alone keeps the byte pipe.
        let o = opts(Side::Origin, &["--lifetime", "2s"]).unwrap();
        assert_eq!((o.guard, o.lifetime), (None, Some(Duration::from_secs(2))));
        assert_eq!(
            opts(Side::Origin, &["--ssh-agent"]).unwrap().guard,
            Some(Policy::default())
        );
        let o = opts(
            Side::Origin,
            &[
                "--agent-key",
                "SHA256:E2L72HOm4RKv6uIbXBhir6Mr59hUqj3dr+7nQToBWrE",
                "--agent-allow-manage",
                "--agent-allow-extension",
                "query",
                "--agent-max-signatures",
                "0",
                "--agent-confirm",
            ],
        )
        .unwrap();
        let p = o.guard.unwrap();
        assert_eq!(p.keys.map(|k| k.len()), Some(1));
        assert!(p.allow_manage && p.confirm);
        assert_eq!(
            (p.allow_extensions, p.max_signatures),
            (vec!["query".to_string()], Some(0))
        );
        let o = opts(Side::Origin, &["--audit-log", "/tmp/x"]).unwrap();
        assert!(o.guard.is_some(), "--audit-log turns the guard on");
        assert!(opts(Side::Origin, &["--agent-key", "MD5:aa"]).is_err());
        assert!(opts(Side::Origin, &["--agent-key", "/nonexistent.pub"]).is_err());
        assert!(opts(Side::Origin, &["--agent-max-signatures", "x"]).is_err());
        assert!(opts(Side::Origin, &["--lifetime", "0"]).is_err());
        let o = opts(Side::Dest, &[]).unwrap();
        assert_eq!((o.socket_mode, o.socket_group), (0o600, None));
        let o = opts(
            Side::Dest,
            &["--socket-mode", "0660", "--socket-group", "4242"],
        )
        .unwrap();
        assert_eq!((o.socket_mode, o.socket_group), (0o660, Some(4242)));
        assert_eq!(
            opts(Side::Dest, &["--socket-group", "root"])
                .unwrap()
                .socket_group,
            Some(0)
        );
        for bad in ["0999", "1777", "0400", "x"] {
            assert!(opts(Side::Dest, &["--socket-mode", bad]).is_err(), "{bad}");
        }
        assert!(opts(Side::Dest, &["--socket-group", "no-such-group-xyz"]).is_err());
        assert!(
            opts(Side::Dest, &["--ssh-agent"]).is_err(),
            "origin-only option"
        );
    }

    #[test]
    fn command_split() {
        let a: Vec<String> = ["x", "--", "ssh-add", "-l", "--"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (args, cmd) = split_command(Side::Dest, &a);
        assert_eq!(args, ["x"]);
        assert_eq!(cmd, ["ssh-add", "-l", "--"]);
        let (args, cmd) = split_command(Side::Origin, &a);
        assert_eq!((args.len(), cmd.len()), (5, 0));
    }
}
