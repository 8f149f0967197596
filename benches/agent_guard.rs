//! The ssh-agent guard's cost per sign request, in one run:
//!
//! - through the chain (dest socket → dest → relay → origin → a real
//!   `ssh-agent`), once with a plain origin and once with a guarded one
//!   (`--agent-key`, `--audit-log`), on one relay, measured in interleaved
//!   rounds so both see the same load; the agent directly as the floor;
//! - the sans-IO guard alone (parse, policy, audit record, answer), in
//!   process.
//!
//! `cargo bench --bench agent_guard [-- --requests N --rounds R]`
//!
//! Needs ssh-agent, ssh-add and ssh-keygen. Prints a markdown table; p50
//! and p99 per sign request in µs.

mod common;

use common::{sched, wait_for, Kill, DEST, ORIGIN, RELAY, TOKEN};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sockrelay::agent::msg::build_sign_request;
use sockrelay::agent::{Channel, Fingerprint, Guard, Policy};

fn spawn_logged(bin: &str, args: &[&str], log: &Path, stdout: Stdio) -> Child {
    Command::new(bin)
        .args(args)
        .env("SOCKRELAY_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"))
}

fn read_log(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// An origin on `agent` with `extra`, and a dest for it; the dest socket
/// and the origin's pid.
fn chain(
    dir: &Path,
    port: u16,
    agent: &Path,
    extra: &[&str],
    tag: &str,
    keep: &mut Vec<Kill>,
) -> (PathBuf, u32) {
    let p = port.to_string();
    let mut args: Vec<&str> = extra.to_vec();
    args.extend(["127.0.0.1", &p, agent.to_str().unwrap()]);
    let mut origin = spawn_logged(
        ORIGIN,
        &args,
        &dir.join(format!("origin-{tag}.log")),
        Stdio::piped(),
    );
    let mut line = String::new();
    BufReader::new(origin.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let origin_pid = origin.id();
    keep.push(Kill(origin));
    let session = line
        .strip_prefix("SOCKRELAY_SESSION=")
        .and_then(|r| r.split(';').next())
        .expect("session")
        .to_string();
    let sock = dir.join(format!("{tag}.sock"));
    let log = dir.join(format!("dest-{tag}.log"));
    let dest = spawn_logged(
        DEST,
        &["127.0.0.1", &p, &session, sock.to_str().unwrap()],
        &log,
        Stdio::null(),
    );
    keep.push(Kill(dest));
    assert!(
        wait_for(Duration::from_secs(15), || read_log(&log)
            .contains("end-to-end encryption established")),
        "dest {tag}: {}",
        read_log(&log)
    );
    (sock, origin_pid)
}

/// `n` sign requests on one connection; per-request round trips in µs.
fn signs(sock: &Path, req: &[u8], n: usize) -> Vec<f64> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::with_capacity(n);
    let mut len = [0u8; 4];
    let mut body = vec![0u8; 1024];
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(req).unwrap();
        s.read_exact(&mut len).unwrap();
        let l = u32::from_be_bytes(len) as usize;
        body.resize(l, 0);
        s.read_exact(&mut body).unwrap();
        out.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(body[0], 14, "not a signature");
    }
    out
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = arg(&args, "--requests", 500);
    let rounds = arg(&args, "--rounds", 6);
    let dir = std::env::temp_dir().join(format!("sr-bench-guard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut keep = Vec::new();

    // A real agent with one ed25519 key.
    let agent_sock = dir.join("agent.sock");
    keep.push(Kill(
        Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&agent_sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent"),
    ));
    assert!(wait_for(Duration::from_secs(5), || agent_sock.exists()));
    let key = dir.join("id_ed25519");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success()
        && Command::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &agent_sock)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
    assert!(ok, "ssh-keygen / ssh-add");
    let pubtext = std::fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
    let fp = Fingerprint::from_public_key_text(&pubtext)
        .unwrap()
        .to_string();
    let blob = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(pubtext.split_whitespace().nth(1).unwrap())
            .unwrap()
    };
    // A signature over an SSH userauth-shaped payload (what ssh sends).
    let req = build_sign_request(&blob, &[7u8; 150]);

    let relay_log = dir.join("relay.log");
    keep.push(Kill(spawn_logged(
        RELAY,
        &["-p", "0", "-b", "127.0.0.1"],
        &relay_log,
        Stdio::null(),
    )));
    let mut port = 0u16;
    assert!(wait_for(Duration::from_secs(10), || {
        let t = read_log(&relay_log);
        if let Some(i) = t.find("listening on 127.0.0.1:") {
            let d: String = t[i + 23..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            port = d.parse().unwrap_or(0);
        }
        port != 0
    }));
    let audit = dir.join("audit.jsonl");
    let (plain, plain_pid) = chain(&dir, port, &agent_sock, &[], "plain", &mut keep);
    let (guarded, guarded_pid) = chain(
        &dir,
        port,
        &agent_sock,
        &["--agent-key", &fp, "--audit-log", audit.to_str().unwrap()],
        "guarded",
        &mut keep,
    );

    // The guard without audit output: -q drops the info-level audit lines
    // (refusals still show), no --audit-log.
    let (quiet, quiet_pid) = chain(
        &dir,
        port,
        &agent_sock,
        &["--agent-key", &fp, "-q"],
        "quiet",
        &mut keep,
    );

    // Warm up, then interleaved rounds.
    let _ = signs(&plain, &req, 50);
    let _ = signs(&guarded, &req, 50);
    let _ = signs(&agent_sock, &req, 50);
    let _ = signs(&quiet, &req, 50);
    let (mut a, mut p, mut g) = (Vec::new(), Vec::new(), Vec::new());
    let (mut p_cpu, mut g_cpu, mut q_cpu) = (0u64, 0u64, 0u64);
    let mut q = Vec::new();
    for _ in 0..rounds {
        a.extend(signs(&agent_sock, &req, n / rounds.max(1)));
        let c0 = sched(plain_pid)[0];
        p.extend(signs(&plain, &req, n / rounds.max(1)));
        p_cpu += sched(plain_pid)[0] - c0;
        let c0 = sched(guarded_pid)[0];
        g.extend(signs(&guarded, &req, n / rounds.max(1)));
        g_cpu += sched(guarded_pid)[0] - c0;
        let c0 = sched(quiet_pid)[0];
        q.extend(signs(&quiet, &req, n / rounds.max(1)));
        q_cpu += sched(quiet_pid)[0] - c0;
    }
    let q_cpu_us = q_cpu as f64 / 1e3 / q.len() as f64;
    let p_cpu_us = p_cpu as f64 / 1e3 / p.len() as f64;
    let g_cpu_us = g_cpu as f64 / 1e3 / g.len() as f64;

    // The guard alone.
    let mut gu = Guard::new(Policy {
        keys: Some(vec![Fingerprint::parse(&fp).unwrap()]),
        ..Policy::default()
    });
    let answer = {
        let mut body = vec![14u8];
        body.extend_from_slice(&83u32.to_be_bytes());
        body.extend_from_slice(&[0u8; 83]);
        let mut m = (body.len() as u32).to_be_bytes().to_vec();
        m.extend(body);
        m
    };
    let mut c = Channel::new();
    let iters = 200_000;
    let t = Instant::now();
    for _ in 0..iters {
        let used = c.on_dest(&mut gu, &req).unwrap();
        assert_eq!(used, req.len());
        let k = c.to_agent().len();
        c.agent_written(k);
        c.on_agent(&gu, &answer).unwrap();
        let k = c.to_dest().len();
        c.dest_written(k);
        for r in c.drain_records() {
            std::hint::black_box(sockrelay::agent::audit::json(
                &r,
                &sockrelay::agent::audit::Context {
                    unix_ms: 0,
                    dest: "127.0.0.1:1",
                    channel: 1,
                },
            ));
        }
    }
    let core_us = t.elapsed().as_secs_f64() * 1e6 / iters as f64;

    let (a50, a99) = (pct(&mut a, 0.5), pct(&mut a, 0.99));
    let (p50, p99) = (pct(&mut p, 0.5), pct(&mut p, 0.99));
    let (g50, g99) = (pct(&mut g, 0.5), pct(&mut g, 0.99));
    let (q50, q99) = (pct(&mut q, 0.5), pct(&mut q, 0.99));
    println!(
        "\nsign requests: {} per path, {rounds} interleaved rounds",
        a.len()
    );
    println!("| path | p50 (µs) | p99 (µs) | origin CPU per request (µs) |");
    println!("|---|---:|---:|---:|");
    println!("| ssh-agent directly | {a50:.1} | {a99:.1} | |");
    println!("| chain, no guard | {p50:.1} | {p99:.1} | {p_cpu_us:.1} |");
    println!("| chain, guard (--agent-key, --audit-log) | {g50:.1} | {g99:.1} | {g_cpu_us:.1} |");
    println!("| chain, guard without audit output (-q) | {q50:.1} | {q99:.1} | {q_cpu_us:.1} |");
    println!(
        "| **guard added** | **{:.1}** | | **{:.1}** |",
        g50 - p50,
        g_cpu_us - p_cpu_us
    );
    println!(
        "| guard core alone (request + answer + JSON record, in process) | {core_us:.2} | | |"
    );
    drop(keep);
    let _ = std::fs::remove_dir_all(&dir);
}
