//! The TLS record path in one process, reported (never asserted): a
//! rustls client and server [`TlsSession`] pair (TLS 1.3, AES-256-GCM, as
//! our clients and the relay negotiate on x86_64) after the handshake,
//! 64 KiB writes encrypted by one side and decrypted by the other, against
//! ring's AES-256-GCM sealing and opening the same bytes in 16 KiB records
//! directly (the floor: the cipher alone) measured in the same run. CPU
//! time of this thread; no sockets. Used to check that building rustls for
//! size (`opt-level = "s"`, Cargo.toml) costs the data path nothing.
//!
//! `cargo bench --bench tls_record` (`-- --mib N`, default 256;
//! `--rounds R`, default 5, alternating the two, medians reported).

#[cfg(feature = "tls")]
fn main() {
    imp::main()
}

#[cfg(not(feature = "tls"))]
fn main() {
    println!("tls_record: built without the tls feature, nothing to measure");
}

#[cfg(feature = "tls")]
mod imp {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    use sockrelay::tls::testcerts::{make_ca, make_leaf, KeyKind};
    use sockrelay::tls::{ClientTlsOptions, Read, ServerTls, ServerTlsFiles, TlsSession};
    use std::time::Duration;

    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime fully writes the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    fn shuttle(from: &mut TlsSession, to: &mut TlsSession, buf: &mut [u8]) -> usize {
        let mut got = 0;
        while from.wants_send() {
            let n = from.send_buf().len();
            to.recv(from.send_buf());
            from.send_consume(n);
            while let Read::Data(n) = to.read(buf).expect("decrypt") {
                got += n;
            }
        }
        got
    }

    fn pair(dir: &std::path::Path) -> (TlsSession, TlsSession) {
        let ca = make_ca(dir, "ca");
        let (cert, key) = make_leaf(
            dir,
            "ca",
            "relay",
            &["DNS:relay.test"],
            KeyKind::EcdsaP256,
            30,
        );
        let server = ServerTls::load(ServerTlsFiles {
            cert,
            key,
            client_ca: None,
        })
        .expect("server config")
        .config();
        let opts = ClientTlsOptions {
            ca_file: Some(ca),
            ..Default::default()
        };
        let name = opts.server_name_for("relay.test").expect("name");
        let mut c = TlsSession::client(opts.build().expect("client config"), name).expect("client");
        let mut s = TlsSession::server(server).expect("server");
        let mut buf = vec![0u8; 64 << 10];
        for _ in 0..100 {
            shuttle(&mut c, &mut s, &mut buf);
            shuttle(&mut s, &mut c, &mut buf);
            if !c.is_handshaking() && !s.is_handshaking() && !c.wants_send() && !s.wants_send() {
                break;
            }
        }
        assert!(!c.is_handshaking() && !s.is_handshaking(), "handshake");
        (c, s)
    }

    /// CPU per MiB through the TLS pair (encrypt + decrypt).
    fn tls_round(c: &mut TlsSession, s: &mut TlsSession, mib: usize) -> f64 {
        let data = vec![0x5au8; 64 << 10];
        let mut buf = vec![0u8; 64 << 10];
        let total = mib << 20;
        let t0 = thread_cpu();
        let (mut sent, mut got) = (0, 0);
        while sent < total {
            let mut off = 0;
            while off < data.len() {
                let n = c.write(&data[off..]).expect("encrypt");
                off += n;
                got += shuttle(c, s, &mut buf);
            }
            sent += data.len();
        }
        assert_eq!(got, total, "bytes through");
        (thread_cpu() - t0).as_secs_f64() * 1e6 / mib as f64
    }

    /// CPU per MiB for ring alone: seal then open 16 KiB records.
    fn ring_round(mib: usize) -> f64 {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("key"));
        let mut rec = vec![0x5au8; 16 << 10];
        let total = mib << 20;
        let t0 = thread_cpu();
        let mut done = 0;
        let mut seq = 0u64;
        while done < total {
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&seq.to_be_bytes());
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut rec,
                )
                .expect("seal");
            let mut both = std::mem::take(&mut rec);
            both.extend_from_slice(tag.as_ref());
            let n = key
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut both)
                .expect("open")
                .len();
            both.truncate(n);
            rec = both;
            done += rec.len();
            seq += 1;
        }
        (thread_cpu() - t0).as_secs_f64() * 1e6 / mib as f64
    }

    fn arg(args: &[String], name: &str, default: usize) -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    fn median(v: &mut [f64]) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().collect();
        let mib = arg(&args, "--mib", 256);
        let rounds = arg(&args, "--rounds", 5).max(1);
        let dir = std::env::temp_dir().join(format!("sockrelay-tlsrec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (mut c, mut s) = pair(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let (mut tls, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            floor.push(ring_round(mib));
            tls.push(tls_round(&mut c, &mut s, mib));
        }
        let (t, f) = (median(&mut tls), median(&mut floor));
        println!("\n## TLS record path, {mib} MiB x {rounds} rounds (CPU µs per MiB, medians)\n");
        println!("| path | CPU µs/MiB | MiB/s of one core | vs ring alone |");
        println!("|---|---|---|---|");
        println!(
            "| ring AES-256-GCM seal + open, 16 KiB records (floor) | {f:.0} | {:.0} | 1.00 |",
            1e6 / f
        );
        println!(
            "| TlsSession write + read (rustls + ring) | {t:.0} | {:.0} | {:.2} |",
            1e6 / t,
            t / f
        );
    }
}
