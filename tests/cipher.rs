//! The negotiated transport cipher with the real binaries: data integrity
//! over each cipher, the log line that says which one was chosen, a forced
//! choice the peer refuses, and (through the evil relay of
//! tests/common/mitm.rs) that altering the offer or the answer in flight
//! fails the handshake instead of downgrading it.
#![cfg(feature = "e2e")]

mod common;

use std::time::Duration;

use common::clients::*;
use common::mitm::{Attack, Dir, Mitm, Role, Target};
use sha2::{Digest, Sha256};

const AES: &str = "end-to-end cipher: AES-256-GCM (negotiated)";
const CHACHA_V1: &str = "end-to-end cipher: ChaCha20-Poly1305 (v1 handshake";
const CHACHA_V2: &str = "end-to-end cipher: ChaCha20-Poly1305 (negotiated)";
const READY: &str = "end-to-end encryption established";
const E2E_HANDSHAKE: &str = "end-to-end handshake failed";

/// 64 MiB of pattern through dest → origin's echo server → back, on two
/// channels at once with different seeds; each echo's digest must match.
fn integrity(chain: &Chain) {
    let len = 64 << 20;
    let threads: Vec<_> = [1u64, 2]
        .into_iter()
        .map(|seed| {
            let path = chain.dest.socket.clone();
            std::thread::spawn(move || {
                let data = pattern(seed, len);
                let want = Sha256::digest(&data);
                let got = echo_roundtrip(&path, data);
                assert_eq!(got.len(), len, "seed {seed}: length");
                assert_eq!(Sha256::digest(&got), want, "seed {seed}: digest");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

fn logs(chain: &Chain) -> String {
    format!(
        "--- origin ---\n{}--- dest ---\n{}",
        chain.origin.proc.log_text(),
        chain.dest.proc.log_text()
    )
}

fn assert_both_logged(chain: &Chain, needle: &str) {
    for (who, p) in [("origin", &chain.origin.proc), ("dest", &chain.dest.proc)] {
        assert!(
            p.wait_log(needle, Duration::from_secs(10)),
            "{who} did not log {needle:?}\n{}",
            logs(chain)
        );
    }
}

#[test]
fn aes_forced_64_mib_both_ways() {
    let chain = Chain::start_env("c-aes", &[], &[("SOCKRELAY_CIPHER", "aes")]);
    assert_both_logged(&chain, AES);
    integrity(&chain);
}

#[test]
fn chacha_forced_64_mib_both_ways() {
    let chain = Chain::start_env("c-cha", &[], &[("SOCKRELAY_CIPHER", "chacha")]);
    assert_both_logged(&chain, CHACHA_V1);
    integrity(&chain);
}

/// The dest offers AES, the origin declines it: a negotiated ChaCha
/// session (the v2 transport, not the v1 one).
#[test]
fn origin_declines_aes_negotiated_chacha_64_mib() {
    let dir = TempDir::new("c-dec");
    let relay = Relay::start(&dir, 0);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let origin = Origin::try_start_env(
        &dir,
        relay.port,
        &echo.path,
        &[],
        TOKEN,
        &[("SOCKRELAY_CIPHER", "chacha")],
    )
    .expect("origin started");
    let dest = Dest::start_env(
        &dir,
        relay.port,
        &origin.session,
        &dir.path("dest.sock"),
        &[],
        &[("SOCKRELAY_CIPHER", "auto")],
    );
    let offered = sockrelay::secure::hardware_aes();
    let chain = Chain {
        dir,
        relay,
        echo: Some(echo),
        origin,
        dest,
    };
    // Without hardware AES `auto` offers nothing: the v1 format.
    assert_both_logged(&chain, if offered { CHACHA_V2 } else { CHACHA_V1 });
    integrity(&chain);
}

/// Unforced: AES exactly when this machine has hardware AES (origin and
/// dest run on the same CPU here).
#[test]
fn auto_picks_aes_with_hardware_aes() {
    let chain = Chain::start_env("c-auto", &[], &[("SOCKRELAY_CIPHER", "auto")]);
    let want = if sockrelay::secure::hardware_aes() {
        AES
    } else {
        CHACHA_V1
    };
    assert_both_logged(&chain, want);
    let data = pattern(3, 1 << 20);
    assert!(echo_roundtrip(&chain.dest.socket, data.clone()) == data);
}

/// A dest forced to AES and an origin that will not do it: the dest
/// refuses the session and says why; nothing is ever established.
#[test]
fn forced_aes_against_an_origin_without_it_is_refused() {
    let dir = TempDir::new("c-ref");
    let relay = Relay::start(&dir, 0);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let origin = Origin::try_start_env(
        &dir,
        relay.port,
        &echo.path,
        &[],
        TOKEN,
        &[("SOCKRELAY_CIPHER", "chacha")],
    )
    .expect("origin started");
    let dest = Dest::spawn_env(
        &dir,
        relay.port,
        &origin.session,
        &dir.path("dest.sock"),
        &[],
        TOKEN,
        &[("SOCKRELAY_CIPHER", "aes")],
    );
    assert!(
        dest.proc
            .wait_log("did not agree on AES-256-GCM", Duration::from_secs(15)),
        "{}",
        dest.proc.log_text()
    );
    assert!(!dest.proc.log_text().contains(READY));
}

/// Through the evil relay: `attack` hits the first handshake, which must
/// fail at `victim` (no downgrade); the dest's next attempt, untouched,
/// negotiates AES and carries data.
fn tamper_with_the_negotiation(tag: &str, attack: Attack, victim: Role) {
    let dir = TempDir::new(tag);
    let relay = Relay::start(&dir, 0);
    let addr = format!("127.0.0.1:{}", relay.port).parse().unwrap();
    let mitm = Mitm::start(addr, attack);
    let echo = EchoServer::start(&dir.path("echo.sock"));
    let env = [("SOCKRELAY_CIPHER", "aes")];
    let origin = Origin::try_start_env(&dir, mitm.port(), &echo.path, &[], TOKEN, &env)
        .expect("origin started");
    let dest = Dest::start_env(
        &dir,
        mitm.port(),
        &origin.session,
        &dir.path("dest.sock"),
        &[],
        &env,
    );
    let chain = Chain {
        dir,
        relay,
        echo: Some(echo),
        origin,
        dest,
    };
    assert!(!mitm.fired().is_empty(), "the attack did not fire");
    let victim_log = match victim {
        Role::Origin => chain.origin.proc.log_text(),
        _ => chain.dest.proc.log_text(),
    };
    assert!(
        victim_log.contains(E2E_HANDSHAKE),
        "the tampered handshake did not fail at the {victim:?}\n{}",
        logs(&chain)
    );
    assert!(mitm.connections(Role::Dest) >= 2, "the dest did not retry");
    assert_both_logged(&chain, AES);
    for text in [chain.origin.proc.log_text(), chain.dest.proc.log_text()] {
        assert!(!text.contains("ChaCha20-Poly1305"), "downgraded\n{text}");
    }
    let data = pattern(4, 1 << 20);
    assert!(echo_roundtrip(&chain.dest.socket, data.clone()) == data);
}

/// Clear the offer bit (bit 255 of the dest's ephemeral key) in message 1.
#[test]
fn clearing_the_offer_in_flight_fails_the_handshake() {
    tamper_with_the_negotiation(
        "c-offer",
        Attack::FlipBit {
            at: Target {
                role: Role::Dest,
                dir: Dir::Up,
                nth: 0,
                min_len: 0,
                link: 0,
            },
            byte: 31,
            mask: 0x80,
        },
        Role::Origin,
    );
}

/// Change the origin's choice in message 2 (the byte of its answer
/// payload that names the cipher).
#[test]
fn altering_the_answer_in_flight_fails_the_handshake() {
    tamper_with_the_negotiation(
        "c-answer",
        Attack::FlipBit {
            at: Target {
                role: Role::Dest,
                dir: Dir::Down,
                nth: 0,
                min_len: 0,
                link: 0,
            },
            byte: 32 + 3,
            mask: 0x03,
        },
        Role::Dest,
    );
}
