//! Relay benchmarks, reported (never asserted), each against a baseline
//! measured in the same run:
//! - throughput of one session with large messages vs a direct TCP
//!   connection and vs a naive read/write TCP forwarder (what socat does);
//! - RSS per idle paired session (10 000 sessions);
//! - instructions per forwarded byte under callgrind (deterministic).
//!
//! `cargo bench --bench relay` (add `-- --quick` for a shorter run; set
//! `SOCKRELAY_BENCH_RELAY=/path/to/old/sockrelay-relay` to measure another
//! build with the same harness; `-- --base DIR` measures `DIR/sockrelay-relay`
//! too, interleaved with this build, as "before"; `-- --repeat N` repeats the
//! throughput runs and reports medians and ranges, default 3, 1 with
//! `--quick`).
//! Loopback only; every loop is bounded.

mod common;

use common::{
    hard_fd_limit, pair_relay, raise_fd_limit, rss_kib, sched, spawn_server, Server, RELAY,
};
use sockrelay::ws::frame::{encode_frame, OpCode};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// The relay under test: this build's, or `SOCKRELAY_BENCH_RELAY` (e.g. a
/// copy of an older build, to compare before and after in one sitting).
fn relay_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| std::env::var("SOCKRELAY_BENCH_RELAY").unwrap_or_else(|_| RELAY.into()))
}

fn start_relay(wrapper: &[&str], fds: u64) -> Server {
    start_relay_bin(relay_bin(), wrapper, fds)
}

fn start_relay_bin(relay: &str, wrapper: &[&str], fds: u64) -> Server {
    let (prog, mut args): (&str, Vec<&str>) = match wrapper.split_first() {
        Some((p, rest)) => (p, rest.to_vec()),
        None => (relay, vec![]),
    };
    if !wrapper.is_empty() {
        args.push(relay);
    }
    args.extend(["-p", "0", "-b", "127.0.0.1", "--max-message", "1G"]);
    // Extra relay options for experiments, e.g. SOCKRELAY_BENCH_RELAY_ARGS="--buffer 256K".
    let extra = std::env::var("SOCKRELAY_BENCH_RELAY_ARGS").unwrap_or_default();
    let extra: Vec<String> = extra.split_whitespace().map(String::from).collect();
    let extra: &'static [String] = Box::leak(extra.into_boxed_slice());
    args.extend(extra.iter().map(String::as_str));
    spawn_server(prog, &args, fds)
}

/// Send `total` bytes from `tx` while `rx` drains `expect` bytes; MB/s.
fn pump(mut tx: TcpStream, mut rx: TcpStream, unit: &[u8], count: usize, expect: u64) -> f64 {
    let start = Instant::now();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < expect {
            let n = rx.read(&mut buf).expect("read");
            assert!(n > 0, "eof after {got} of {expect}");
            got += n as u64;
        }
    });
    for _ in 0..count {
        tx.write_all(unit).unwrap();
    }
    reader.join().unwrap();
    (count * unit.len()) as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn direct_tcp(unit: &[u8], count: usize) -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let tx = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (rx, _) = l.accept().unwrap();
    pump(tx, rx, unit, count, (unit.len() * count) as u64)
}

/// A naive user-space forwarder thread (read into a buffer, write it out).
fn forwarder_tcp(unit: &[u8], count: usize) -> f64 {
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let back = TcpListener::bind("127.0.0.1:0").unwrap();
    let tx = TcpStream::connect(front.local_addr().unwrap()).unwrap();
    let (mut mid_in, _) = front.accept().unwrap();
    let mut mid_out = TcpStream::connect(back.local_addr().unwrap()).unwrap();
    let (rx, _) = back.accept().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match mid_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if mid_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    pump(tx, rx, unit, count, (unit.len() * count) as u64)
}

fn masked_frame(payload_len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7) as u8).collect();
    let mut frame = Vec::with_capacity(payload_len + 14);
    encode_frame(
        &mut frame,
        true,
        OpCode::Binary,
        Some([0x12, 0x34, 0x56, 0x78]),
        &payload,
    );
    frame
}

/// CPU time process `pid` has run, in ns (/proc/PID/schedstat).
fn cpu_ns(pid: u32) -> u64 {
    sched(pid)[0]
}

/// MB/s of payload through `relay`, and the relay's CPU µs per MB.
fn through_relay(relay: &Server, payload_len: usize, count: usize) -> (f64, f64) {
    let (origin, dest) = pair_relay(relay.addr);
    let frame = masked_frame(payload_len);
    // The dest receives unmasked frames: 4 bytes shorter each.
    let expect = ((frame.len() - 4) * count) as u64;
    let cpu = cpu_ns(relay.child.id());
    let mbps = pump(origin, dest, &frame, count, expect);
    let cpu = cpu_ns(relay.child.id()) - cpu;
    let mb = (payload_len * count) as f64 / 1e6;
    (
        mbps * payload_len as f64 / frame.len() as f64,
        cpu as f64 / 1e3 / mb,
    )
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// "median (min–max)" of `v`, each divided by `per`.
fn spread(v: &[f64], per: &[f64]) -> String {
    let r: Vec<f64> = v.iter().zip(per).map(|(a, b)| a / b).collect();
    let (lo, hi) = r
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    format!("{:.2} ({lo:.2}–{hi:.2})", median(&r))
}

fn throughput(quick: bool, relays: &[(&str, &str)], repeat: usize) {
    let mib = if quick { 256 } else { 2048 };
    println!(
        "\n## Throughput, one session, {mib} MiB in 1 MiB messages (MB/s of payload; medians of {repeat}, ratios with min–max)\n"
    );
    let unit = vec![0x5au8; 1 << 20];
    let running: Vec<Server> = relays
        .iter()
        .map(|(_, bin)| start_relay_bin(bin, &[], 4096))
        .collect();
    let (mut direct, mut fwd) = (Vec::new(), Vec::new());
    let mut big = vec![Vec::new(); relays.len()];
    let mut small = vec![Vec::new(); relays.len()];
    let mut big_cpu = vec![Vec::new(); relays.len()];
    let mut small_cpu = vec![Vec::new(); relays.len()];
    for r in 0..repeat {
        direct.push(direct_tcp(&unit, mib));
        fwd.push(forwarder_tcp(&unit, mib));
        for (i, relay) in running.iter().enumerate() {
            let (v, c) = through_relay(relay, 1 << 20, mib);
            big[i].push(v);
            big_cpu[i].push(c);
            let (v, c) = through_relay(relay, 16 << 10, mib * 64);
            small[i].push(v);
            small_cpu[i].push(c);
        }
        eprintln!(
            "[{}/{repeat}] direct {:.0} naive {:.0} {}",
            r + 1,
            direct[r],
            fwd[r],
            relays
                .iter()
                .enumerate()
                .map(|(i, (n, _))| format!("{n} {:.0}/{:.0}", big[i][r], small[i][r]))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    println!(
        "| path | MB/s | ratio to direct TCP | ratio to the naive forwarder | relay CPU µs per MB |\n|---|---|---|---|---|"
    );
    println!(
        "| direct TCP (baseline) | {:.0} | 1.00 | | |",
        median(&direct)
    );
    println!(
        "| naive TCP forwarder (socat-like) | {:.0} | {} | 1.00 | |",
        median(&fwd),
        spread(&fwd, &direct)
    );
    for (i, (name, _)) in relays.iter().enumerate() {
        for (what, v, c) in [
            ("1 MiB frames", &big[i], &big_cpu[i]),
            ("16 KiB frames", &small[i], &small_cpu[i]),
        ] {
            println!(
                "| {name}, {what} | {:.0} | {} | {} | {:.0} |",
                median(v),
                spread(v, &direct),
                spread(v, &fwd),
                median(c)
            );
        }
    }
}

fn idle_memory(quick: bool, name: &str, bin: &str) {
    let mut sessions = if quick { 2000 } else { 10_000 };
    let mut want_fds = (sessions as u64) * 2 + 256;
    if !raise_fd_limit(want_fds) {
        // Without CAP_SYS_RESOURCE the hard limit caps both processes:
        // measure as many sessions as it allows.
        let hard = hard_fd_limit();
        sessions = sessions.min((hard.saturating_sub(256) / 2) as usize);
        want_fds = hard;
        raise_fd_limit(hard);
        eprintln!("fd hard limit {hard}: measuring {sessions} sessions");
    }
    let relay = start_relay_bin(bin, &[], want_fds);
    // Warm up: one session, so lazily initialised state is in the baseline.
    let warm = pair_relay(relay.addr);
    std::thread::sleep(Duration::from_millis(200));
    let base = rss_kib(relay.child.id()) * 1024;
    let start = Instant::now();
    let mut held = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        held.push(pair_relay(relay.addr));
    }
    let setup = start.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(relay.child.id()) * 1024;
    let per = (after.saturating_sub(base)) as f64 / sessions as f64;
    println!("\n## Memory per idle paired session: {name}\n");
    println!("| sessions | relay RSS before | after | bytes per session | set-up time |\n|---|---|---|---|---|");
    println!(
        "| {sessions} | {:.1} MiB | {:.1} MiB | {per:.0} | {:.2} s |",
        base as f64 / 1048576.0,
        after as f64 / 1048576.0,
        setup.as_secs_f64()
    );
    drop(held);
    drop(warm);
}

fn callgrind_total(out: &str) -> Option<u64> {
    let text = std::fs::read_to_string(out).ok()?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary: ")
                .or_else(|| l.strip_prefix("totals: "))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn instructions_per_byte() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("\n(valgrind not installed: instructions per byte not measured)");
        return;
    }
    let mut totals = Vec::new();
    let mib = 64usize;
    for bytes in [0usize, mib] {
        let out = std::env::temp_dir().join(format!(
            "sockrelay-callgrind-{}-{bytes}",
            std::process::id()
        ));
        let out_s = out.to_string_lossy().to_string();
        let arg = format!("--callgrind-out-file={out_s}");
        let mut relay = start_relay(&["valgrind", "--tool=callgrind", &arg], 4096);
        {
            let (mut origin, mut dest) = pair_relay(relay.addr);
            let frame = masked_frame(1 << 20);
            let expect = ((frame.len() - 4) * bytes) as u64;
            let reader = std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let mut got = 0u64;
                while got < expect {
                    got += dest.read(&mut buf).unwrap() as u64;
                }
                dest
            });
            for _ in 0..bytes {
                origin.write_all(&frame).unwrap();
            }
            let _dest = reader.join().unwrap();
        }
        // SIGTERM so callgrind writes its totals.
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(relay.child.id() as i32, libc::SIGTERM);
        }
        let _ = relay.child.wait();
        totals.push(callgrind_total(&out_s).unwrap_or(0));
        let _ = std::fs::remove_file(&out);
    }
    let per = (totals[1].saturating_sub(totals[0])) as f64 / (mib << 20) as f64;
    println!("\n## Instructions per forwarded byte (callgrind, user space)\n");
    println!("| run | instructions |\n|---|---|");
    println!(
        "| handshakes only | {} |\n| + {mib} MiB in 1 MiB frames | {} |",
        totals[0], totals[1]
    );
    println!("\n**{per:.3} instructions per forwarded byte**");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // The first word that is neither a flag nor a flag's value.
    let only = args
        .iter()
        .enumerate()
        .skip(1)
        .find(|(i, a)| {
            !a.starts_with('-') && !matches!(args[i - 1].as_str(), "--base" | "--repeat")
        })
        .map(|(_, a)| a.clone());
    let run = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let repeat: usize = value("--repeat")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 })
        .max(1);
    let mut relays: Vec<(&str, &str)> = vec![("sockrelay-relay", relay_bin())];
    let base = value("--base").map(|d| format!("{d}/sockrelay-relay"));
    if let Some(b) = &base {
        relays.push(("before (--base)", b.as_str()));
    }
    if run("throughput") {
        throughput(quick, &relays, repeat);
    }
    if run("memory") {
        for (name, bin) in &relays {
            idle_memory(quick, name, bin);
        }
    }
    if run("instructions") {
        instructions_per_byte();
    }
}
