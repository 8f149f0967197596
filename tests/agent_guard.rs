//! The ssh-agent guard (issue 11) with real OpenSSH tools through the real
//! binaries: a real `ssh-agent` holding two ed25519 keys and an RSA key
//! behind an origin that exposes one of them; `ssh-add`, `ssh-keygen -Y`
//! (and `ssh` against a real `sshd`) through the dest.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::clients::*;

/// The agent, its socket and three keys: [exposed ed25519, hidden ed25519,
/// hidden RSA] (private key paths; `.pub` beside them).
struct Keys {
    _agent: Proc,
    sock: PathBuf,
    keys: Vec<PathBuf>,
    fps: Vec<String>,
}

fn fingerprint(pubkey: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pubkey)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

fn agent_with_three_keys(dir: &TempDir) -> Keys {
    let (agent, sock, first) = agent_with_key(dir, "exposed-ed25519");
    let mut keys = vec![first];
    for (name, kind) in [("hidden_ed25519", "ed25519"), ("hidden_rsa", "rsa")] {
        let k = dir.path(name);
        let mut args = vec!["-q", "-t", kind, "-N", "", "-C", name];
        if kind == "rsa" {
            args.extend(["-b", "2048"]);
        }
        let out = Command::new("ssh-keygen")
            .args(&args)
            .arg("-f")
            .arg(&k)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let out = with_agent(&sock, &["ssh-add", k.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        keys.push(k);
    }
    let fps = keys.iter().map(|k| fingerprint(&pubkey(k))).collect();
    // Only the agent has the private keys: `ssh-keygen -Y sign -f K.pub`
    // falls back to the file K when the agent will not sign.
    for k in &keys {
        std::fs::rename(k, format!("{}.moved", k.display())).unwrap();
    }
    Keys {
        _agent: agent,
        sock,
        keys,
        fps,
    }
}

fn pubkey(k: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", k.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ssh-keygen -Y sign` with `key` through `sock`; then verify the
/// signature locally. Returns whether signing worked (and it verified).
fn sign_and_verify(dir: &TempDir, sock: &Path, key: &Path, n: usize) -> bool {
    let file = dir.path(&format!("msg-{n}.txt"));
    std::fs::write(&file, format!("message {n}\n")).unwrap();
    let out = ssh_sign(sock, &pubkey(key), &file);
    if !out.status.success() {
        return false;
    }
    let out = ssh_verify(&pubkey(key), &file);
    assert!(out.status.success(), "signature does not verify: {out:?}");
    true
}

/// The public key blob of key file `k` (from `k.pub`).
fn blob(k: &Path) -> Vec<u8> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(pubkey(k)).unwrap();
    let b64 = text.split_whitespace().nth(1).unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// Send one sign request for `key` by hand; the answer's type byte.
fn raw_sign(sock: &Path, key: &[u8]) -> u8 {
    let data = b"raw data";
    let mut body = vec![13u8];
    body.extend_from_slice(&(key.len() as u32).to_be_bytes());
    body.extend_from_slice(key);
    body.extend_from_slice(&(data.len() as u32).to_be_bytes());
    body.extend_from_slice(data);
    body.extend_from_slice(&0u32.to_be_bytes());
    let mut s = connect(sock);
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut answer).unwrap();
    answer[0]
}

struct Guarded {
    dir: TempDir,
    keys: Keys,
    _relay: Relay,
    origin: Origin,
    dest: Dest,
}

fn guarded(tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Guarded {
    let dir = TempDir::new(tag);
    let keys = agent_with_three_keys(&dir);
    let relay = Relay::start(&dir, 0);
    let mut args: Vec<&str> = vec!["--agent-key", &keys.fps[0]];
    args.extend_from_slice(extra);
    let origin = Origin::try_start_env(&dir, relay.port, &keys.sock, &args, TOKEN, env)
        .expect("origin printed its session");
    let dest = Dest::start(&dir, relay.port, &origin.session, &dir.path("d.sock"), &[]);
    Guarded {
        dir,
        keys,
        _relay: relay,
        origin,
        dest,
    }
}

#[test]
fn only_the_exposed_key_is_listed_and_signs() {
    let g0 = TempDir::new("audit");
    let audit = g0.path("audit.jsonl");
    let g = guarded("guard-keys", &["--audit-log", audit.to_str().unwrap()], &[]);
    let sock = &g.dest.socket;

    let out = with_agent(sock, &["ssh-add", "-l"]);
    let t = text(&out);
    assert!(out.status.success(), "{out:?}");
    assert!(t.contains(&g.keys.fps[0]), "{t}");
    assert!(
        !t.contains(&g.keys.fps[1]) && !t.contains(&g.keys.fps[2]),
        "{t}"
    );
    assert_eq!(t.lines().count(), 1, "{t}");
    let out = with_agent(sock, &["ssh-add", "-L"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    assert!(sign_and_verify(&g.dir, sock, &g.keys.keys[0], 0));
    // ssh-keygen does not even ask: the key is not listed.
    assert!(!sign_and_verify(&g.dir, sock, &g.keys.keys[1], 1));
    assert!(!sign_and_verify(&g.dir, sock, &g.keys.keys[2], 2));
    // A client that asks anyway gets SSH_AGENT_FAILURE.
    for k in &g.keys.keys[1..] {
        assert_eq!(raw_sign(sock, &blob(k)), 5);
    }
    assert_eq!(raw_sign(sock, &blob(&g.keys.keys[0])), 14);

    // The origin's agent itself still has all three.
    let out = with_agent(&g.keys.sock, &["ssh-add", "-l"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);

    // Audit: on stderr and as JSON lines.
    assert!(g
        .origin
        .proc
        .wait_log("agent audit:", Duration::from_secs(5)));
    let log = g.origin.proc.log_text();
    assert!(log.contains("list-keys"), "{log}");
    assert!(log.contains("1 of 3 keys shown"), "{log}");
    let lines = std::fs::read_to_string(&audit).unwrap();
    let sign_lines: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("\"request\":\"sign\""))
        .collect();
    assert_eq!(sign_lines.len(), 4, "{lines}");
    let ok = sign_lines[0];
    assert!(
        ok.contains(&format!("\"key\":\"{}\"", g.keys.fps[0])),
        "{ok}"
    );
    assert!(ok.contains("\"decision\":\"allowed\""), "{ok}");
    assert!(
        ok.contains("\"kind\":\"sshsig\",\"namespace\":\"file\""),
        "{ok}"
    );
    assert!(ok.contains("\"dest\":\"127.0.0.1:"), "{ok}");
    assert!(ok.contains("\"time\":\"20"), "{ok}");
    for refused in &sign_lines[1..3] {
        assert!(refused.contains("\"decision\":\"refused\""), "{refused}");
        assert!(refused.contains("key not exposed"), "{refused}");
    }
    assert!(sign_lines[3].contains("\"decision\":\"allowed\""));
    assert!(
        sign_lines[2].contains("\"key_type\":\"ssh-rsa\""),
        "{}",
        sign_lines[2]
    );
}

#[test]
fn management_requests_fail_and_the_agent_keeps_every_key() {
    let g = guarded("guard-manage", &[], &[]);
    let sock = &g.dest.socket;
    let out = with_agent(sock, &["ssh-add", "-D"]);
    assert!(!out.status.success(), "{out:?}");
    let out = with_agent(
        sock,
        &["ssh-add", "-d", pubkey(&g.keys.keys[0]).to_str().unwrap()],
    );
    assert!(!out.status.success(), "{out:?}");
    let extra = g.dir.path("extra_key");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&extra)
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = with_agent(sock, &["ssh-add", extra.to_str().unwrap()]);
    assert!(!out.status.success(), "{out:?}");
    let out = Command::new("timeout")
        .args(["20", "sh", "-c", "printf 'pw\\npw\\n' | ssh-add -x"])
        .env("SSH_AUTH_SOCK", sock)
        .env_remove("DISPLAY")
        .env_remove("SSH_ASKPASS")
        .output()
        .unwrap();
    assert!(!out.status.success(), "lock went through: {out:?}");

    // The real agent: every key, unlocked (listing and signing work).
    let out = with_agent(&g.keys.sock, &["ssh-add", "-l"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for fp in &g.keys.fps {
        assert!(t.contains(fp.as_str()), "{t}");
    }
    assert!(!t.contains("extra_key"), "{t}");
    assert!(sign_and_verify(&g.dir, &g.keys.sock, &g.keys.keys[1], 9));
    let log = g.origin.proc.log_text();
    for req in ["remove-all-keys", "remove-key", "add-key", "lock"] {
        assert!(log.contains(&format!(" {req}")), "{req}: {log}");
    }
    assert!(log.contains("--agent-allow-manage"), "{log}");
}

#[test]
fn confirm_asks_through_ssh_askpass_yes_then_no() {
    let tmp = TempDir::new("askpass");
    let script = tmp.path("askpass.sh");
    let count = tmp.path("count");
    let asked = tmp.path("asked");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$SSH_ASKPASS_PROMPT $1\" >> {asked}\nif [ -e {count} ]; then exit 1; fi\ntouch {count}\necho yes\n",
            asked = asked.display(),
            count = count.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let g = guarded(
        "guard-confirm",
        &["--agent-confirm"],
        &[("SSH_ASKPASS", script.to_str().unwrap())],
    );
    let sock = &g.dest.socket;
    // Listing needs no confirmation.
    assert!(with_agent(sock, &["ssh-add", "-l"]).status.success());
    assert!(
        sign_and_verify(&g.dir, sock, &g.keys.keys[0], 0),
        "{}",
        g.origin.proc.log_text()
    );
    assert!(!sign_and_verify(&g.dir, sock, &g.keys.keys[0], 1));
    let asked = std::fs::read_to_string(&asked).unwrap();
    assert_eq!(asked.lines().count(), 2, "{asked}");
    assert!(
        asked.starts_with("confirm sockrelay: allow the dest at 127.0.0.1:"),
        "{asked}"
    );
    assert!(
        asked.contains(&g.keys.fps[0]) && asked.contains("namespace=file"),
        "{asked}"
    );
    let log = g.origin.proc.log_text();
    assert!(log.contains("confirmed by the origin's user"), "{log}");
    assert!(log.contains("not confirmed by the origin's user"), "{log}");
}

#[test]
fn confirm_without_askpass_refuses() {
    let g = guarded("guard-noask", &["--agent-confirm"], &[]);
    assert!(!sign_and_verify(&g.dir, &g.dest.socket, &g.keys.keys[0], 0));
    assert!(g.origin.proc.log_text().contains("no SSH_ASKPASS"));
}

#[test]
fn max_signatures_refuses_the_fourth() {
    let g = guarded("guard-max", &["--agent-max-signatures", "3"], &[]);
    for i in 0..3 {
        assert!(
            sign_and_verify(&g.dir, &g.dest.socket, &g.keys.keys[0], i),
            "{i}"
        );
    }
    assert!(!sign_and_verify(&g.dir, &g.dest.socket, &g.keys.keys[0], 3));
    assert!(g
        .origin
        .proc
        .log_text()
        .contains("--agent-max-signatures 3 reached"));
    // Listing still works.
    assert!(with_agent(&g.dest.socket, &["ssh-add", "-l"])
        .status
        .success());
}

#[test]
fn lifetime_ends_the_session() {
    let dir = TempDir::new("guard-life");
    let keys = agent_with_three_keys(&dir);
    let relay = Relay::start(&dir, 0);
    let t0 = Instant::now();
    let mut origin = Origin::start(
        &dir,
        relay.port,
        &keys.sock,
        &["--ssh-agent", "--lifetime", "2s"],
    );
    let dest = Dest::spawn(
        &dir,
        relay.port,
        &origin.session,
        &dir.path("d.sock"),
        &[],
        TOKEN,
    );
    assert!(dest
        .proc
        .wait_log("end-to-end encryption established", Duration::from_secs(10)));
    // A connection held open through the dest is closed at the end.
    let mut held = connect(&dest.socket);
    held.write_all(&[0, 0, 0, 1, 11]).unwrap();
    let mut answer = [0u8; 4];
    held.read_exact(&mut answer).unwrap();
    let code = origin.proc.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", origin.proc.log_text());
    assert!(t0.elapsed() >= Duration::from_secs(2));
    let log = origin.proc.log_text();
    assert!(
        log.contains("--lifetime of 2 s is over: ending the session"),
        "{log}"
    );
    let mut rest = Vec::new();
    let _ = held.read_to_end(&mut rest);
    assert!(
        dest.proc.wait_log(
            "connection closed: origin's --lifetime of 2 s is over",
            Duration::from_secs(10)
        ),
        "{}",
        dest.proc.log_text()
    );
}

#[test]
fn malformed_input_closes_only_that_channel() {
    let g = guarded("guard-bad", &[], &[]);
    let sock = &g.dest.socket;
    let mut good = connect(sock);
    good.write_all(&[0, 0, 0, 1, 11]).unwrap();
    let mut len = [0u8; 4];
    good.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    good.read_exact(&mut body).unwrap();
    assert_eq!(body[0], 12);

    for bad in [
        vec![0xff, 0xff, 0xff, 0xff, 11],              // oversized
        vec![0, 0, 0, 0],                              // empty
        vec![0, 0, 0, 9, 13, 0, 0, 0, 99, 1, 2, 3, 4], // truncated sign request
    ] {
        let mut s = connect(sock);
        s.write_all(&bad).unwrap();
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        assert!(r.is_ok() && got.is_empty(), "{bad:?}: {r:?} {got:?}");
    }
    // The other channel is untouched.
    good.write_all(&[0, 0, 0, 1, 11]).unwrap();
    good.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    good.read_exact(&mut body).unwrap();
    assert_eq!(body[0], 12);
    let log = g.origin.proc.log_text();
    assert!(
        log.contains("closed: agent guard: dest sent a message of 4294967295 bytes"),
        "{log}"
    );
    assert!(log.contains("dest sent an empty message"), "{log}");
    assert!(log.contains("dest sent a truncated sign request"), "{log}");
    // The agent never saw them: it still answers and holds every key.
    let out = with_agent(&g.keys.sock, &["ssh-add", "-l"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

// ---- dest: -- COMMAND, socket mode and group -------------------------------

/// Run `sockrelay-dest ... SOCKET -- cmd…` to completion (bounded).
fn dest_command(
    dir: &TempDir,
    port: u16,
    session: &str,
    socket: &Path,
    extra: &[&str],
    cmd: &[&str],
) -> Output {
    let p = port.to_string();
    Command::new("timeout")
        .arg("30")
        .arg(DEST)
        .args(extra)
        .args(["127.0.0.1", &p, session, socket.to_str().unwrap(), "--"])
        .args(cmd)
        .env("SOCKRELAY_TOKEN", TOKEN)
        .env_remove("SSH_AUTH_SOCK")
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn dest_runs_a_command_and_exits_with_its_status() {
    let dir = TempDir::new("guard-cmd");
    let keys = agent_with_three_keys(&dir);
    let relay = Relay::start(&dir, 0);
    // The key given as a public key file this time.
    let pubfile = pubkey(&keys.keys[0]);
    let origin = Origin::start(
        &dir,
        relay.port,
        &keys.sock,
        &["--agent-key", pubfile.to_str().unwrap()],
    );
    let sock = dir.path("c.sock");
    let out = dest_command(
        &dir,
        relay.port,
        &origin.session,
        &sock,
        &[],
        &["ssh-add", "-l"],
    );
    let t = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(t.contains(&keys.fps[0]) && t.lines().count() == 1, "{t}");
    assert!(!sock.exists(), "socket left behind");

    let out = dest_command(
        &dir,
        relay.port,
        &origin.session,
        &sock,
        &[],
        &["sh", "-c", "exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(!sock.exists());

    // SSH_AUTH_SOCK is the dest's socket.
    let out = dest_command(
        &dir,
        relay.port,
        &origin.session,
        &sock,
        &[],
        &["sh", "-c", "echo \"$SSH_AUTH_SOCK\""],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        sock.to_str().unwrap()
    );

    // A session that cannot be joined: non-zero, COMMAND never runs.
    let marker = dir.path("ran");
    let out = dest_command(
        &dir,
        relay.port,
        "67e55044-10b1-426f-9247-bb680e5fe0c8",
        &sock,
        &[],
        &["touch", marker.to_str().unwrap()],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert_ne!(
        out.status.code(),
        Some(124),
        "timed out instead of failing: {}",
        text(&out)
    );
    assert!(!marker.exists(), "COMMAND ran");
    assert!(!sock.exists());
}

#[test]
fn dest_passes_signals_to_the_command() {
    let dir = TempDir::new("guard-sig");
    let keys = agent_with_three_keys(&dir);
    let relay = Relay::start(&dir, 0);
    let origin = Origin::start(&dir, relay.port, &keys.sock, &["--ssh-agent"]);
    let sock = dir.path("s.sock");
    let started = dir.path("started");
    let p = relay.port.to_string();
    let log = dir.path("dest-sig.log");
    let child = Command::new(DEST)
        .args([
            "127.0.0.1",
            &p,
            &origin.session,
            sock.to_str().unwrap(),
            "--",
            "sh",
            "-c",
        ])
        .arg(format!(
            "trap 'exit 5' TERM; touch {}; while :; do sleep 0.05; done",
            started.display()
        ))
        .env("SOCKRELAY_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut dest = Proc { child, log };
    assert!(
        wait_for(Duration::from_secs(15), || started.exists()),
        "{}",
        dest.log_text()
    );
    dest.signal(libc::SIGTERM);
    assert_eq!(
        dest.wait_exit(Duration::from_secs(10)),
        Some(5),
        "{}",
        dest.log_text()
    );
    assert!(!sock.exists());
}

#[test]
fn socket_mode_and_group() {
    let dir = TempDir::new("guard-mode");
    let keys = agent_with_three_keys(&dir);
    let relay = Relay::start(&dir, 0);
    let origin = Origin::start(&dir, relay.port, &keys.sock, &["--agent-key", &keys.fps[0]]);
    // Default 0600.
    let d = Dest::start(&dir, relay.port, &origin.session, &dir.path("p.sock"), &[]);
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    drop(d);
    let group = "4242";
    let d = Dest::start(
        &dir,
        relay.port,
        &origin.session,
        &dir.path("g.sock"),
        &["--socket-mode", "0660", "--socket-group", group],
    );
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 4242);
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: skipping the other-user connect checks");
        return;
    }
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_user = |uid: &str, groups: &[&str]| {
        let mut c = Command::new("timeout");
        c.args(["20", "setpriv", "--reuid", uid, "--regid", uid]);
        if groups.is_empty() {
            c.arg("--clear-groups");
        } else {
            c.args(["--groups", &groups.join(",")]);
        }
        c.args(["ssh-add", "-l"])
            .env("SSH_AUTH_SOCK", &d.socket)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let inside = as_user("12345", &[group]);
    assert!(inside.status.success(), "{}", text(&inside));
    assert!(String::from_utf8_lossy(&inside.stdout).contains(&keys.fps[0]));
    let outside = as_user("12346", &[]);
    assert!(!outside.status.success(), "{}", text(&outside));
    assert!(
        text(&outside).contains("ermission denied"),
        "{}",
        text(&outside)
    );
}

// ---- a real sshd -------------------------------------------------------

#[test]
fn ssh_logs_in_to_a_real_sshd_through_the_guard() {
    let sshd = Path::new("/usr/sbin/sshd");
    assert!(
        sshd.exists(),
        "/usr/sbin/sshd is missing: run `bash .ci/setup` (it installs openssh-server)"
    );
    let audit_dir = TempDir::new("sshd-audit");
    let audit = audit_dir.path("audit.jsonl");
    let g = guarded("guard-sshd", &["--audit-log", audit.to_str().unwrap()], &[]);
    let dir = &g.dir;
    // The server's own host key and config.
    let host_key = dir.path("host_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let host_fp = fingerprint(&pubkey(&host_key));
    let authorized = dir.path("authorized_keys");
    std::fs::copy(pubkey(&g.keys.keys[0]), &authorized).unwrap();
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // sshd's privilege separation directory (Debian creates it at boot).
        let _ = std::fs::create_dir_all("/run/sshd");
    }
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_string();
    let mut sshd_proc = None;
    let mut port = 0;
    for _ in 0..5 {
        port = free_port();
        let config = dir.path("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile none\nUsePAM no\nStrictModes no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                host_key.display(),
                authorized.display()
            ),
        )
        .unwrap();
        let log = dir.path(&format!("sshd-{port}.log"));
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut p = Proc { child, log };
        let up = wait_for(Duration::from_secs(10), || {
            p.log_text().contains("Server listening on 127.0.0.1") || !p.is_running()
        });
        if up && p.is_running() {
            sshd_proc = Some(p);
            break;
        }
        eprintln!("sshd did not start on {port}: {}", p.log_text());
    }
    let sshd_proc = sshd_proc.expect("sshd started");
    let known = dir.path("known_hosts");
    let host_pub = std::fs::read_to_string(pubkey(&host_key)).unwrap();
    std::fs::write(&known, format!("[127.0.0.1]:{port} {host_pub}")).unwrap();
    let ssh = |extra: &[&str]| {
        Command::new("timeout")
            .arg("30")
            .arg("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("IdentityAgent={}", g.dest.socket.display()))
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .args(["-o", "PasswordAuthentication=no"])
            .args(extra)
            .args(["-p", &port.to_string()])
            .arg(format!("{user}@127.0.0.1"))
            .arg("true")
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = ssh(&[]);
    assert!(
        out.status.success(),
        "ssh: {}\nsshd: {}\norigin: {}",
        text(&out),
        sshd_proc.log_text(),
        g.origin.proc.log_text()
    );
    let log = g.origin.proc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("agent audit:") && l.contains(" sign "))
        .unwrap_or_else(|| panic!("no sign audit line: {log}"));
    assert!(line.contains("for=ssh-userauth"), "{line}");
    assert!(line.contains(&format!("user={user}")), "{line}");
    assert!(line.contains(&format!("host={host_fp}")), "{line}");
    assert!(
        line.contains(&g.keys.fps[0]) && line.contains("allowed"),
        "{line}"
    );
    assert!(log.contains("extension session-bind@openssh.com"), "{log}");
    let json = std::fs::read_to_string(&audit).unwrap();
    assert!(
        json.contains(&format!(
            "\"signed\":{{\"kind\":\"ssh-userauth\",\"user\":\"{user}\",\"host_key\":\"{host_fp}\"}}"
        )),
        "{json}"
    );
    // The sshd saw the exposed key, and only it.
    let slog = sshd_proc.log_text();
    assert!(slog.contains(&g.keys.fps[0]), "{slog}");
    assert!(!slog.contains(&g.keys.fps[1]), "{slog}");
}

#[test]
fn a_certificate_is_exposed_with_its_key() {
    let dir = TempDir::new("guard-cert");
    let (_agent, agent_sock, key) = agent_with_key(&dir, "certified");
    let ca = dir.path("ca");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new("ssh-keygen")
        .arg("-s")
        .arg(&ca)
        .args(["-I", "test", "-n", "someone"])
        .arg(pubkey(&key))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // ssh-add KEY loads KEY-cert.pub beside it too.
    let out = with_agent(&agent_sock, &["ssh-add", key.to_str().unwrap()]);
    assert!(text(&out).contains("Certificate added"), "{}", text(&out));
    // A second key, not exposed.
    let other = dir.path("other");
    let o = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(
        with_agent(&agent_sock, &["ssh-add", other.to_str().unwrap()])
            .status
            .success()
    );
    let fp = fingerprint(&pubkey(&key));
    let relay = Relay::start(&dir, 0);
    let origin = Origin::start(&dir, relay.port, &agent_sock, &["--agent-key", &fp]);
    let dest = Dest::start(&dir, relay.port, &origin.session, &dir.path("d.sock"), &[]);
    let out = with_agent(&dest.socket, &["ssh-add", "-L"]);
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(t.lines().count(), 2, "{t}");
    assert!(t.contains("ssh-ed25519-cert-v01@openssh.com"), "{t}");
    let other_pub = std::fs::read_to_string(pubkey(&other)).unwrap();
    assert!(
        !t.contains(other_pub.split_whitespace().nth(1).unwrap()),
        "{t}"
    );
}

#[test]
fn a_pending_confirmation_blocks_no_other_channel() {
    let tmp = TempDir::new("askpass-slow");
    let script = tmp.path("askpass.sh");
    let go = tmp.path("go");
    let asked = tmp.path("asked");
    // Answers only once `go` exists (bounded: 20 s).
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntouch {asked}\ni=0\nwhile [ ! -e {go} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done\necho yes\n",
            asked = asked.display(),
            go = go.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let g = guarded(
        "guard-slowask",
        &["--agent-confirm"],
        &[("SSH_ASKPASS", script.to_str().unwrap())],
    );
    let sock = g.dest.socket.clone();
    let blob0 = blob(&g.keys.keys[0]);
    let signer = std::thread::spawn(move || raw_sign(&sock, &blob0));
    assert!(wait_for(Duration::from_secs(10), || asked.exists()));
    // While the question is open, other channels are served.
    for _ in 0..3 {
        let out = with_agent(&g.dest.socket, &["ssh-add", "-l"]);
        assert!(out.status.success(), "{out:?}");
    }
    assert!(!signer.is_finished(), "answered before the user did");
    std::fs::write(&go, b"").unwrap();
    assert_eq!(signer.join().unwrap(), 14);
}

/// Regression (issue 8, the endpoint's pong): an origin that read the
/// relay's `peer-joined` and the dest's first handshake message in one
/// turn used to queue its answer ahead of the pong acknowledging the
/// pairing, so the relay dropped the answer and the dest's handshake
/// failed (a dest with `-- COMMAND` then gives up: 8 to 18 of 20 runs
/// failed). Each run here pairs a fresh session as fast as it can.
#[test]
fn a_dest_joining_at_once_pairs_on_its_first_handshake() {
    let dir = TempDir::new("guard-first");
    let keys = agent_with_three_keys(&dir);
    let relay = Relay::start(&dir, 0);
    let sock = dir.path("f.sock");
    for run in 0..10 {
        let origin = Origin::start(&dir, relay.port, &keys.sock, &[]);
        let out = dest_command(&dir, relay.port, &origin.session, &sock, &[], &["true"]);
        assert_eq!(out.status.code(), Some(0), "run {run}: {}", text(&out));
        drop(origin);
    }
}
