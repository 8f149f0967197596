//! A real ssh-agent through relay + origin + dest: list, public keys,
//! signatures, and 50 concurrent clients. Skipped (with a message) when
//! OpenSSH's tools are not installed.

mod common;

use std::process::{Command, Stdio};

use common::clients::*;

#[test]
fn ssh_agent_through_the_relay() {
    let dir = TempDir::new("agent");
    let (agent, agent_sock, key) = agent_with_key(&dir, "sockrelay-test");
    let fingerprint = String::from_utf8(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&key)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();
    let pubkey_path = dir.path("id_ed25519.pub");
    let pubkey = std::fs::read_to_string(&pubkey_path).unwrap();

    let relay = Relay::start(&dir, 0);
    let origin = Origin::start(&dir, relay.port, &agent_sock, &[]);
    let dest = Dest::start(&dir, relay.port, &origin.session, &dir.path("d.sock"), &[]);
    let sock = &dest.socket;

    let out = with_agent(sock, &["ssh-add", "-l"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&fingerprint),
        "{out:?}"
    );

    let out = with_agent(sock, &["ssh-add", "-L"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let key_b64 = pubkey.split_whitespace().nth(1).unwrap();
    assert!(out.status.success() && text.contains(key_b64), "{out:?}");

    // Sign through the relayed agent, verify locally.
    let file = dir.path("message.txt");
    std::fs::write(&file, b"signed through sockrelay\n").unwrap();
    let out = ssh_sign(sock, &pubkey_path, &file);
    assert!(out.status.success(), "{out:?}");
    let out = ssh_verify(&pubkey_path, &file);
    assert!(out.status.success(), "{out:?}");

    // 50 concurrent clients.
    let children: Vec<_> = (0..50)
        .map(|_| {
            Command::new("timeout")
                .args(["20", "ssh-add", "-l"])
                .env("SSH_AUTH_SOCK", sock)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ok = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains(&fingerprint) {
            ok += 1;
        } else {
            eprintln!("failed: {out:?}");
        }
    }
    assert_eq!(ok, 50);
    drop(agent);
}
