//! sockrelay-relay: the session broker. See `--help` and the README.

use sockrelay::cli;
use sockrelay::relay::{activation, Config, ListenRole, Server, DEFAULT_PORT, MIN_BUFFER_BYTES};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::exit;

fn usage(opts: &getopts::Options) -> String {
    let brief = "Usage: sockrelay-relay [options] [PORT]\n\n\
         Pairs sockrelay origins and dests (and any RFC 6455 client pair) and\n\
         forwards WebSocket frames between them. Endpoints: /origin, /dest,\n\
         /healthz, /metrics, and the original clients' ?mode= API.\n\
         Logs go to stderr. SIGINT/SIGTERM: close all sessions (1001) and exit;\n\
         SIGHUP: re-read --origin-keys and the --tls-* files (broken files keep\n\
         the old ones, logged).\n\n\
         Under systemd socket activation (LISTEN_PID/LISTEN_FDS) the relay\n\
         serves the listening sockets it is handed instead of -p/-b/\n\
         --origin-listen/--dest-listen; a socket named origin or dest\n\
         (FileDescriptorName=) serves only that side.";
    opts.usage(brief)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let d = Config::default();
    let mut opts = getopts::Options::new();
    opts.optopt(
        "p",
        "port",
        &format!("port to listen on (default {DEFAULT_PORT}; 0 picks one)"),
        "PORT",
    );
    opts.optopt(
        "b",
        "bind",
        "address to listen on, IPv4 or IPv6 (default 0.0.0.0)",
        "ADDR",
    );
    opts.optmulti(
        "",
        "origin-listen",
        "serve only origins on ADDR:PORT (repeatable; replaces -p/-b for origins)",
        "ADDR:PORT",
    );
    opts.optmulti(
        "",
        "dest-listen",
        "serve only dests on ADDR:PORT (repeatable; replaces -p/-b for dests)",
        "ADDR:PORT",
    );
    opts.optopt("", "tls-cert", "speak TLS on every listener (wss://, https:// for /healthz and /metrics) with the certificate chain in FILE (PEM; ECDSA, Ed25519 or RSA key) (default: plain)", "FILE");
    opts.optopt("", "tls-key", "the private key of --tls-cert (PEM)", "FILE");
    opts.optopt("", "tls-client-ca", "with --tls-cert: require client certificates signed by a CA in FILE (PEM); connections without one are refused in the handshake (default: none asked)", "FILE");
    opts.optopt("", "origin-keys", "file of accepted origin keys, one per line; origins must send one in the Sockrelay-Origin-Key header (default: anyone may open sessions)", "FILE");
    opts.optopt(
        "",
        "max-sessions",
        &format!("most live sessions (default {})", d.max_sessions),
        "N",
    );
    opts.optopt(
        "",
        "max-connections",
        &format!("most open connections (default {})", d.max_connections),
        "N",
    );
    opts.optopt(
        "",
        "max-pending",
        &format!(
            "most connections still in their handshake (default {})",
            d.max_pending
        ),
        "N",
    );
    opts.optopt(
        "",
        "max-message",
        &format!(
            "largest frame/message forwarded, bytes, K/M/G suffixes (default {}M)",
            d.max_message_bytes >> 20
        ),
        "SIZE",
    );
    opts.optopt(
        "",
        "buffer",
        &format!(
            "largest forwarding buffer per direction in flight, 16K to 64M: \
             buffers start at 16K and double while a sender keeps them full \
             (default {}K)",
            d.buffer_bytes >> 10
        ),
        "SIZE",
    );
    opts.optopt(
        "",
        "buffer-memory",
        &format!(
            "bytes all forwarding buffers may hold before none grows past 16K \
             (default {}M)",
            d.buffer_memory_bytes >> 20
        ),
        "SIZE",
    );
    opts.optopt(
        "",
        "ping-interval",
        &format!(
            "ping connections idle this long (default {}s)",
            d.ping_interval.as_secs()
        ),
        "SECS",
    );
    opts.optopt(
        "",
        "pong-timeout",
        &format!(
            "drop connections silent for ping-interval plus this (default {}s)",
            d.pong_timeout.as_secs()
        ),
        "SECS",
    );
    opts.optopt(
        "",
        "handshake-timeout",
        &format!(
            "time allowed for a complete HTTP request (default {}s)",
            d.handshake_timeout.as_secs()
        ),
        "SECS",
    );
    opts.optopt(
        "",
        "origin-grace",
        &format!(
            "keep a session whose origin vanished (no close frame) this long for it to come back; its dest waits instead of being refused (0: off; default {}s)",
            d.origin_grace.as_secs()
        ),
        "SECS",
    );
    opts.optopt(
        "",
        "drain-timeout",
        &format!(
            "on SIGTERM, tell clients to move, then wait at most this long for connections to drain (default {}s)",
            d.drain_timeout.as_secs()
        ),
        "SECS",
    );
    opts.optflagmulti("v", "verbose", "more logging (repeatable)");
    opts.optflagmulti("q", "quiet", "less logging (repeatable)");
    opts.optopt(
        "",
        "log-level",
        "off, error, warn, info (default), debug, trace",
        "LEVEL",
    );
    opts.optflag("h", "help", "print this help");
    opts.optflag("V", "version", "print the version");
    let m = match opts.parse(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("sockrelay-relay: {e}\n\n{}", usage(&opts));
            exit(2);
        }
    };
    if m.opt_present("h") {
        print!("{}", usage(&opts));
        return;
    }
    if m.opt_present("V") {
        println!("sockrelay-relay {}", cli::VERSION);
        return;
    }
    let fail = |msg: String| -> ! {
        eprintln!("sockrelay-relay: {msg}\nTry 'sockrelay-relay --help'.");
        exit(2);
    };
    let level = cli::level(
        m.opt_count("v"),
        m.opt_count("q"),
        m.opt_str("log-level").as_deref(),
    )
    .unwrap_or_else(|e| fail(e));
    let mut cfg = Config::default();
    let port_arg = m.opt_str("p");
    let port = match (
        port_arg.as_deref(),
        m.free.first().map(String::as_str),
        m.free.len(),
    ) {
        (_, _, 2..) => fail(format!("unexpected arguments: {}", m.free[1..].join(" "))),
        (Some(_), Some(_), _) => {
            fail("give the port either as -p or as an argument, not both".into())
        }
        (Some(p), None, _) | (None, Some(p), _) => p
            .parse::<u16>()
            .unwrap_or_else(|_| fail(format!("{p:?} is not a port number"))),
        (None, None, _) => DEFAULT_PORT,
    };
    let bind: IpAddr = match m.opt_str("b") {
        Some(b) => b
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .unwrap_or_else(|_| fail(format!("{b:?} is not an IP address"))),
        None => IpAddr::from([0, 0, 0, 0]),
    };
    let resolve = |s: &str| -> SocketAddr {
        s.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| fail(format!("{s:?} is not ADDR:PORT")))
    };
    let origin_listen: Vec<SocketAddr> = m
        .opt_strs("origin-listen")
        .iter()
        .map(|s| resolve(s))
        .collect();
    let dest_listen: Vec<SocketAddr> = m
        .opt_strs("dest-listen")
        .iter()
        .map(|s| resolve(s))
        .collect();
    cfg.listen.clear();
    if origin_listen.is_empty() || dest_listen.is_empty() {
        let role = match (origin_listen.is_empty(), dest_listen.is_empty()) {
            (true, true) => ListenRole::Any,
            (true, false) => ListenRole::Origin,
            _ => ListenRole::Dest,
        };
        cfg.listen.push((SocketAddr::new(bind, port), role));
    }
    cfg.listen
        .extend(origin_listen.into_iter().map(|a| (a, ListenRole::Origin)));
    cfg.listen
        .extend(dest_listen.into_iter().map(|a| (a, ListenRole::Dest)));
    let count = |name: &str, v: &mut usize| {
        if let Some(s) = m.opt_str(name) {
            *v = s
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or_else(|| fail(format!("--{name}: {s:?} is not a positive number")));
        }
    };
    count("max-sessions", &mut cfg.max_sessions);
    count("max-connections", &mut cfg.max_connections);
    count("max-pending", &mut cfg.max_pending);
    if let Some(s) = m.opt_str("max-message") {
        cfg.max_message_bytes =
            cli::parse_size(&s).unwrap_or_else(|e| fail(format!("--max-message: {e}")));
    }
    if let Some(s) = m.opt_str("buffer") {
        let b = cli::parse_size(&s).unwrap_or_else(|e| fail(format!("--buffer: {e}")));
        if !((MIN_BUFFER_BYTES as u64)..=(64 << 20)).contains(&b) {
            fail("--buffer must be between 16K and 64M".into());
        }
        cfg.buffer_bytes = b as usize;
    }
    if let Some(s) = m.opt_str("buffer-memory") {
        let b = cli::parse_size(&s).unwrap_or_else(|e| fail(format!("--buffer-memory: {e}")));
        cfg.buffer_memory_bytes = usize::try_from(b).unwrap_or(usize::MAX);
    }
    for (name, v) in [
        ("ping-interval", &mut cfg.ping_interval),
        ("pong-timeout", &mut cfg.pong_timeout),
        ("handshake-timeout", &mut cfg.handshake_timeout),
    ] {
        if let Some(s) = m.opt_str(name) {
            *v = cli::parse_duration(&s).unwrap_or_else(|e| fail(format!("--{name}: {e}")));
            if v.is_zero() {
                fail(format!("--{name} must be more than zero"));
            }
        }
    }
    for (name, v) in [
        ("origin-grace", &mut cfg.origin_grace),
        ("drain-timeout", &mut cfg.drain_timeout),
    ] {
        if let Some(s) = m.opt_str(name) {
            *v = cli::parse_duration(&s).unwrap_or_else(|e| fail(format!("--{name}: {e}")));
        }
    }
    cfg.origin_keys = m.opt_str("origin-keys").map(Into::into);
    match (m.opt_str("tls-cert"), m.opt_str("tls-key")) {
        #[cfg(feature = "tls")]
        (Some(cert), Some(key)) => {
            cfg.tls = Some(sockrelay::tls::ServerTlsFiles {
                cert: cert.into(),
                key: key.into(),
                client_ca: m.opt_str("tls-client-ca").map(Into::into),
            })
        }
        #[cfg(not(feature = "tls"))]
        (Some(_), Some(_)) => fail("this build has no TLS (feature tls)".to_string()),
        (None, None) if m.opt_present("tls-client-ca") => {
            fail("--tls-client-ca needs --tls-cert and --tls-key".to_string())
        }
        (None, None) => {}
        _ => fail("--tls-cert and --tls-key go together".to_string()),
    }
    cli::init_logging(level);
    match sockrelay::sys::raise_nofile_limit() {
        Ok(n) => log::debug!("open-file limit {n}"),
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
    // systemd socket activation: serve the sockets we were handed, if any,
    // instead of binding (the listening options then do not apply).
    let inherited = activation::take().unwrap_or_else(|e| {
        log::error!("socket activation: {e}");
        eprintln!("sockrelay-relay: socket activation: {e}");
        exit(1);
    });
    if !inherited.is_empty() {
        log::info!(
            "socket activation: serving {} inherited listening sockets (not binding)",
            inherited.len()
        );
    }
    let mut server = match Server::with_listeners(cfg, inherited) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            eprintln!("sockrelay-relay: {e}");
            exit(1);
        }
    };
    if let Err(e) = server.install_signals() {
        eprintln!("sockrelay-relay: cannot install signal handlers: {e}");
        exit(1);
    }
    for (addr, role) in server.local_addrs() {
        let what = match role {
            ListenRole::Any => "",
            ListenRole::Origin => " (origins only)",
            ListenRole::Dest => " (dests only)",
        };
        log::info!("listening on {addr}{what}");
    }
    if let Err(e) = server.run() {
        log::error!("relay failed: {e}");
        exit(1);
    }
}
