//! Command lines of `sockrelay-origin` and `sockrelay-dest` (getopts).

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

use super::{
    is_join_string, Cidr, Join, Limits, Liveness, NetOptions, Options, RelayAddr, Side, Token,
    DEAD_AFTER, JOIN_SCHEME, KEEPALIVE,
};

/// Environment variable holding the token.
pub const TOKEN_ENV: &str = "SOCKRELAY_TOKEN";
/// Environment variable holding a dest's join string.
pub const JOIN_ENV: &str = "SOCKRELAY_JOIN";

/// The environment variables the command line may fall back on.
#[derive(Debug, Default, Clone)]
pub struct Env {
    /// `$SOCKRELAY_TOKEN`
    pub token: Option<String>,
    /// `$SOCKRELAY_JOIN` (dest only)
    pub join: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            token: std::env::var(TOKEN_ENV).ok(),
            join: std::env::var(JOIN_ENV).ok(),
        }
    }
}

/// A secret given on the command line, where `ps` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnArgv {
    Token,
    Join,
}

/// What the command line asks for.
#[derive(Debug)]
// Built once per run; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    Run {
        opts: Options,
        log_level: log::LevelFilter,
        /// A secret came as an argument (visible in `ps`): warn.
        secret_on_argv: Option<OnArgv>,
    },
    Help(String),
    Version,
}

fn getopts_for(side: Side) -> getopts::Options {
    let mut o = getopts::Options::new();
    let token_default = match side {
        Side::Origin => format!("${TOKEN_ENV}, else a generated one, printed"),
        Side::Dest => format!("the join string's, else ${TOKEN_ENV}"),
    };
    o.optopt(
        "",
        "token-file",
        &format!(
            "read the token from the first line of PATH ('-': stdin) (default: {token_default})"
        ),
        "PATH",
    );
    if side == Side::Origin {
        o.optopt(
            "",
            "session",
            "propose this session id (a UUID) instead of a random one",
            "ID",
        );
        o.optopt(
            "",
            "max-channels",
            "accept at most N channels in all over this run (every dest together), refuse the rest (default: no limit)",
            "N",
        );
        o.optopt(
            "",
            "max-concurrent",
            "accept at most N channels open at once, refuse more (default: no limit)",
            "N",
        );
        o.optmulti(
            "",
            "allow-dest",
            "accept only dests whose address, as the relay reports it, is in CIDR (IPv4 or IPv6; repeatable, or comma-separated) (default: any)",
            "CIDR",
        );
    } else {
        o.optopt(
            "",
            "join-file",
            &format!("read the join string ({JOIN_SCHEME}HOST:PORT/SESSION#TOKEN) from the first line of PATH ('-': stdin) (default: ${JOIN_ENV} when only SOCKET is given)"),
            "PATH",
        );
        o.optflag(
            "",
            "print-env",
            "print SSH_AUTH_SOCK=<socket>; export SSH_AUTH_SOCK; once joined (default: off)",
        );
    }
    o.optopt(
        "",
        "ca-file",
        "wss: trust the CA certificates in FILE (PEM) instead of the system's (default: the system's roots; $SSL_CERT_FILE / $SSL_CERT_DIR as OpenSSL reads them)",
        "FILE",
    );
    o.optopt(
        "",
        "tls-server-name",
        "wss: verify the relay's certificate for NAME (and send it as SNI) instead of the host in the URL",
        "NAME",
    );
    o.optopt(
        "",
        "tls-pin",
        "wss: accept the relay's certificate by its public key alone: sha256/BASE64 of its SPKI, as curl's --pinnedpubkey ('openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64'; several separated by ';'); chain and name are then not checked, a mismatch always fails",
        "PIN",
    );
    o.optopt(
        "",
        "tls-cert",
        "wss: client certificate chain (PEM), for relays that require one",
        "FILE",
    );
    o.optopt(
        "",
        "tls-key",
        "wss: the private key of --tls-cert (PEM)",
        "FILE",
    );
    o.optopt(
        "",
        "proxy",
        "reach the relay through this HTTP proxy (CONNECT), Basic auth from USER:PASS (default: $https_proxy/$HTTPS_PROXY for wss, $http_proxy for ws, else $all_proxy/$ALL_PROXY; $no_proxy/$NO_PROXY exempt hosts, as curl)",
        "http://[USER:PASS@]HOST:PORT",
    );
    o.optopt(
        "",
        "keepalive",
        &format!(
            "ping the relay after SECS of silence (default: {})",
            KEEPALIVE.as_secs()
        ),
        "SECS",
    );
    o.optopt(
        "",
        "dead-after",
        &format!(
            "drop the relay connection and reconnect after SECS without an answer, or with our output unread (default: {})",
            DEAD_AFTER.as_secs()
        ),
        "SECS",
    );
    o.optopt(
        "",
        "resume-window",
        &format!(
            "keep channels open for SECS while the relay link is down, and resume them (no byte lost) when it is back; 0: close them with the link (default: {})",
            crate::mux::DEFAULT_RESUME_WINDOW.as_secs()
        ),
        "SECS",
    );
    o.optopt(
        "",
        "channel-window",
        &format!(
            "largest flow-control window per channel and direction (a channel starts at {}K and grows while its reader keeps up): the most buffered for one channel; larger is faster across long round trips (16K to 16M; default: {}K)",
            crate::mux::INITIAL_WINDOW >> 10,
            crate::mux::DEFAULT_MAX_WINDOW >> 10
        ),
        "BYTES",
    );
    super::agent_glue::getopts(&mut o, side);
    o.optflag(
        "",
        "background",
        "fork once the session is ready: the parent prints the eval lines and exits 0 (default: foreground)",
    );
    o.optflag(
        "",
        "insecure-plaintext",
        "no end-to-end encryption, for trusted networks and benchmarks only: the relay can read and alter the traffic (default: Noise e2e)",
    );
    o.optflagmulti("v", "verbose", "more logging (repeatable)");
    o.optflagmulti("q", "quiet", "less logging (repeatable)");
    o.optopt(
        "",
        "log-level",
        "off, error, warn, info, debug, trace (default: info)",
        "LEVEL",
    );
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

pub fn usage(side: Side) -> String {
    let brief = match side {
        Side::Origin => "Usage: sockrelay-origin [options] HOST PORT [TOKEN] SOCKET\n       \
             sockrelay-origin [options] ws://HOST:PORT or wss://HOST[:PORT] [TOKEN] SOCKET\n\n\
             Offers the unix socket SOCKET (e.g. $SSH_AUTH_SOCK) through the relay.\n\
             Prints SOCKRELAY_SESSION=<id>; export SOCKRELAY_SESSION; on stdout.\n\
             Without a token it generates one and also prints SOCKRELAY_TOKEN and\n\
             SOCKRELAY_JOIN (sockrelay://HOST:PORT/SESSION#TOKEN, for the dest;\n\
             sockrelays:// when the relay is wss://).\n\
             A token should come from $SOCKRELAY_TOKEN or --token-file, not the\n\
             command line (where `ps` shows it).\n\
             For an ssh-agent, --ssh-agent and the --agent-* options make the origin\n\
             decide what the dest may ask of it (README \"ssh-agent guard\")."
            .to_string(),
        Side::Dest => {
            "Usage: sockrelay-dest [options] SOCKET                  (join string in $SOCKRELAY_JOIN)\n       \
             sockrelay-dest [options] --join-file PATH SOCKET\n       \
             sockrelay-dest [options] sockrelay[s]://HOST:PORT/SESSION_ID#TOKEN SOCKET\n       \
             sockrelay-dest [options] HOST PORT SESSION_ID [TOKEN] SOCKET\n       \
             sockrelay-dest [options] ws://HOST:PORT or wss://HOST[:PORT] SESSION_ID [TOKEN] SOCKET\n       \
             sockrelay-dest [options] ... SOCKET -- COMMAND [ARGS...]\n\n\
             Creates the unix socket SOCKET (mode 0600); each connection to it reaches\n\
             the origin's socket. Use it as SSH_AUTH_SOCK.\n\
             With -- COMMAND: runs COMMAND with SSH_AUTH_SOCK=SOCKET once the session is\n\
             ready, then leaves the session and exits with COMMAND's status.\n\
             The join string (which carries the token) and the token should come from\n\
             $SOCKRELAY_JOIN, $SOCKRELAY_TOKEN, --join-file or --token-file, not the\n\
             command line (where `ps` shows them)."
                .to_string()
        }
    };
    getopts_for(side).usage(&brief)
}

/// A positive count option.
fn count<T: std::str::FromStr + Default + PartialEq>(
    m: &getopts::Matches,
    name: &str,
) -> Result<Option<T>, String> {
    match m.opt_str(name) {
        None => Ok(None),
        Some(v) => match v.parse::<T>() {
            Ok(n) if n != T::default() => Ok(Some(n)),
            _ => Err(format!("--{name} {v:?}: give a whole number of at least 1")),
        },
    }
}

/// A duration in seconds (decimals allowed, e.g. 0.5), above 0 and at most
/// a day.
fn seconds(m: &getopts::Matches, name: &str) -> Result<Option<Duration>, String> {
    let Some(v) = m.opt_str(name) else {
        return Ok(None);
    };
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 86_400.0 && s.is_finite() => Ok(Some(Duration::from_secs_f64(s))),
        _ => Err(format!(
            "--{name} {v:?}: give a number of seconds above 0 (at most 86400)"
        )),
    }
}

fn liveness(m: &getopts::Matches) -> Result<Liveness, String> {
    let d = Liveness::default();
    let keepalive = seconds(m, "keepalive")?.unwrap_or(d.keepalive);
    let dead_after = seconds(m, "dead-after")?.unwrap_or(d.dead_after);
    if dead_after <= keepalive {
        return Err(format!(
            "--dead-after ({} s) must be longer than --keepalive ({} s)",
            dead_after.as_secs_f64(),
            keepalive.as_secs_f64()
        ));
    }
    let resume_window = match m.opt_str("resume-window") {
        None => d.resume_window,
        Some(v) => match v.parse::<f64>() {
            Ok(s) if (0.0..=86_400.0).contains(&s) => Duration::from_secs_f64(s),
            _ => {
                return Err(format!(
                    "--resume-window {v:?}: give a number of seconds from 0 (no resume) to 86400"
                ))
            }
        },
    };
    let channel_window = match m.opt_str("channel-window") {
        None => d.channel_window,
        Some(v) => match crate::cli::parse_size(&v) {
            Ok(n) if (MIN_CHANNEL_WINDOW..=MAX_CHANNEL_WINDOW).contains(&n) => n as u32,
            _ => {
                return Err(format!(
                    "--channel-window {v:?}: give a size from 16K to 16M (e.g. 1M)"
                ))
            }
        },
    };
    Ok(Liveness {
        keepalive,
        dead_after,
        resume_window,
        channel_window,
    })
}

/// `--channel-window` bounds. The protocol's floor is `mux::MIN_WINDOW`
/// (1 KiB); below 16 KiB a channel crawls. 16 MiB per channel and
/// direction is already far more than one channel needs on any link.
const MIN_CHANNEL_WINDOW: u64 = 16 << 10;
const MAX_CHANNEL_WINDOW: u64 = 16 << 20;

fn limits(m: &getopts::Matches) -> Result<Limits, String> {
    let mut allow_dest = Vec::new();
    for v in m.opt_strs("allow-dest") {
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            allow_dest.push(Cidr::parse(part).map_err(|e| format!("--allow-dest: {e}"))?);
        }
        if v.trim().is_empty() {
            return Err("--allow-dest: empty".into());
        }
    }
    Ok(Limits {
        max_channels: count(m, "max-channels")?,
        max_concurrent: count(m, "max-concurrent")?,
        allow_dest,
    })
}

/// Parse `args` (without the program name). `env` holds the environment
/// variables we fall back on; `stdin` is read for `--token-file -` or
/// `--join-file -`.
pub fn parse(
    side: Side,
    args: &[String],
    env: Env,
    stdin: &mut dyn Read,
) -> Result<Parsed, String> {
    let (args, command) = super::agent_glue::split_command(side, args);
    let m = getopts_for(side).parse(&args).map_err(|e| e.to_string())?;
    if m.opt_present("help") {
        return Ok(Parsed::Help(usage(side)));
    }
    if m.opt_present("version") {
        return Ok(Parsed::Version);
    }
    let log_level = crate::cli::level(
        m.opt_count("verbose"),
        m.opt_count("quiet"),
        m.opt_str("log-level").as_deref(),
    )?;
    let token_file = m.opt_str("token-file");
    let join_file = match side {
        Side::Dest => m.opt_str("join-file"),
        Side::Origin => None,
    };
    if token_file.as_deref() == Some("-") && join_file.as_deref() == Some("-") {
        return Err("--token-file - and --join-file - cannot both read stdin".into());
    }
    let mut pos: Vec<String> = m.free.clone();
    let mut secret_on_argv = None;
    // Dest: a join string (argument, --join-file, or $SOCKRELAY_JOIN when
    // only SOCKET is given) stands for HOST PORT SESSION_ID [TOKEN].
    let join = if side == Side::Dest {
        let join_on_argv = pos.first().is_some_and(|a| is_join_string(a));
        let text = match (join_on_argv, &join_file) {
            (true, Some(_)) => {
                return Err(
                    "the join string is given both as an argument and by --join-file".into(),
                )
            }
            (true, None) => Some(pos.remove(0)),
            (false, Some(path)) => Some(
                String::from_utf8(read_secret_line(path, "--join-file", stdin)?)
                    .map_err(|_| format!("--join-file {path}: not UTF-8"))?,
            ),
            (false, None) if pos.len() == 1 => match env.join.filter(|j| !j.trim().is_empty()) {
                Some(j) => Some(j),
                None => {
                    return Err(format!(
                        "missing HOST PORT SESSION_ID, or a join string (${JOIN_ENV}, --join-file)"
                    ))
                }
            },
            (false, None) => None,
        };
        match text {
            Some(text) => {
                let what = if join_on_argv {
                    "the join argument".to_string()
                } else if let Some(path) = &join_file {
                    format!("--join-file {path}")
                } else {
                    format!("${JOIN_ENV}")
                };
                let j = Join::parse(&text).map_err(|e| format!("{what}: {e}"))?;
                if join_on_argv && j.token.is_some() {
                    secret_on_argv = Some(OnArgv::Join);
                }
                Some(j)
            }
            None => None,
        }
    } else {
        None
    };
    let (relay, session) = match &join {
        Some(j) => (j.relay.clone(), Some(j.session)),
        None => {
            let relay = if pos.first().is_some_and(|a| a.contains("://")) {
                RelayAddr::from_url(&pos.remove(0))?
            } else {
                if pos.len() < 2 {
                    return Err("missing HOST and PORT".into());
                }
                let host = pos.remove(0);
                let port = super::parse_port(&pos.remove(0))?;
                RelayAddr {
                    host,
                    port,
                    tls: false,
                }
            };
            let session = match side {
                Side::Dest => {
                    if pos.is_empty() {
                        return Err("missing SESSION_ID".into());
                    }
                    let s = pos.remove(0);
                    Some(
                        Uuid::parse_str(&s)
                            .map_err(|_| format!("{s:?} is not a session id (UUID)"))?,
                    )
                }
                Side::Origin => match m.opt_str("session") {
                    Some(s) => Some(
                        Uuid::parse_str(&s)
                            .map_err(|_| format!("--session {s:?} is not a UUID"))?,
                    ),
                    None => None,
                },
            };
            (relay, session)
        }
    };
    // What is left: [TOKEN] SOCKET (only SOCKET after a join string).
    let (positional_token, socket) = match (pos.len(), &join) {
        (0, _) => return Err("missing SOCKET".into()),
        (1, _) => (None, pos.remove(0)),
        (2, None) => {
            let t = pos.remove(0);
            (Some(t), pos.remove(0))
        }
        // Never echo what may be a token.
        (_, Some(_)) => return Err("after a join string, give only SOCKET".into()),
        (_, None) => return Err(format!("unexpected argument {:?}", pos[2])),
    };
    let file_token = match &token_file {
        Some(path) => Some(read_secret_line(path, "--token-file", stdin)?),
        None => None,
    };
    if positional_token.is_some() {
        secret_on_argv = Some(OnArgv::Token);
    }
    let join_token = join.and_then(|j| j.token);
    let given = [
        positional_token.is_some(),
        file_token.is_some(),
        join_token.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() > 1 {
        return Err(
            "the token is given twice (choose one of: argument, --token-file, join string)".into(),
        );
    }
    let mut token_generated = false;
    let token: Vec<u8> = if let Some(t) = join_token {
        t.expose().to_vec()
    } else if let Some(t) = positional_token {
        t.into_bytes()
    } else if let Some(t) = file_token {
        t
    } else {
        match env.token {
            Some(t) if !t.is_empty() => t.into_bytes(),
            _ if side == Side::Origin && cfg!(feature = "e2e") => {
                token_generated = true;
                generate_token()?
            }
            _ if side == Side::Origin => {
                return Err(format!(
                    "no token: set ${TOKEN_ENV}, or use --token-file PATH (this build cannot generate one)"
                ))
            }
            _ => {
                return Err(format!(
                    "no token: use a join string with #TOKEN, set ${TOKEN_ENV}, or use --token-file PATH"
                ))
            }
        }
    };
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    let plaintext = m.opt_present("insecure-plaintext");
    if !plaintext && !cfg!(feature = "e2e") {
        return Err(
            "this build has no end-to-end encryption (feature e2e); pass --insecure-plaintext to run without it"
                .into(),
        );
    }
    let agent = super::agent_glue::parse(&m, side, command)?;
    if !agent.command.is_empty() && m.opt_present("background") {
        return Err("-- COMMAND and --background do not go together".into());
    }
    let limits = if side == Side::Origin {
        limits(&m)?
    } else {
        Limits::default()
    };
    let net = NetOptions {
        ca_file: m.opt_str("ca-file").map(PathBuf::from),
        tls_server_name: m.opt_str("tls-server-name"),
        tls_pin: m.opt_str("tls-pin"),
        tls_cert: m.opt_str("tls-cert").map(PathBuf::from),
        tls_key: m.opt_str("tls-key").map(PathBuf::from),
        proxy: m.opt_str("proxy"),
    };
    if net.tls_cert.is_some() != net.tls_key.is_some() {
        return Err("--tls-cert and --tls-key go together".into());
    }
    if relay.tls && !cfg!(feature = "tls") {
        return Err("this build has no TLS (feature tls): wss:// relays need it".into());
    }
    #[cfg(feature = "tls")]
    if relay.tls {
        net.tls_options()?;
    }
    if let Some(p) = &net.proxy {
        crate::proxy::ProxyUrl::parse(p).map_err(|e| format!("--proxy: {e}"))?;
    }
    Ok(Parsed::Run {
        opts: Options {
            side,
            relay,
            token: Token::new(token),
            session,
            socket: PathBuf::from(socket),
            plaintext,
            background: m.opt_present("background"),
            print_env: side == Side::Dest && m.opt_present("print-env"),
            token_generated,
            limits,
            liveness: liveness(&m)?,
            agent: Box::new(agent),
            net,
        },
        log_level,
        secret_on_argv,
    })
}

#[cfg(feature = "e2e")]
fn generate_token() -> Result<Vec<u8>, String> {
    crate::secure::try_generate_token()
        .map(String::into_bytes)
        .map_err(|e| format!("cannot generate a token: {e}"))
}

#[cfg(not(feature = "e2e"))]
fn generate_token() -> Result<Vec<u8>, String> {
    Err("this build cannot generate a token".into())
}

/// The first line of the file (or stdin), without its line ending.
/// Errors name the option and path, never the content.
fn read_secret_line(path: &str, opt: &str, stdin: &mut dyn Read) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    let res = if path == "-" {
        stdin.read_to_end(&mut data).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut data).map(|_| ()))
    };
    res.map_err(|e| format!("{opt} {path}: {e}"))?;
    let line = data.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!("{opt} {path}: nothing on its first line"));
    }
    Ok(line.to_vec())
}

/// The whole of `main` for both binaries; returns the exit code
/// (0 ok, 1 runtime failure, 2 usage error).
pub fn main(side: Side, name: &str) -> i32 {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match parse(side, &argv, Env::from_process(), &mut std::io::stdin()) {
        Err(e) => {
            eprintln!("{name}: {e}\nTry '{name} --help'.");
            2
        }
        Ok(Parsed::Help(h)) => {
            print!("{h}");
            0
        }
        Ok(Parsed::Version) => {
            println!("{name} {}", crate::cli::VERSION);
            0
        }
        Ok(Parsed::Run {
            opts,
            log_level,
            secret_on_argv,
        }) => {
            crate::cli::init_logging(log_level);
            match secret_on_argv {
                Some(OnArgv::Token) => log::warn!(
                    "the token is on the command line, where ps shows it; prefer ${TOKEN_ENV} or --token-file"
                ),
                Some(OnArgv::Join) => log::warn!(
                    "the join string (it carries the token) is on the command line, where ps shows it; prefer ${JOIN_ENV} or --join-file"
                ),
                None => {}
            }
            if opts.token_generated {
                log::info!(
                    "no token given: generated one; it is printed on stdout (SOCKRELAY_TOKEN, SOCKRELAY_JOIN), never logged"
                );
            } else {
                #[cfg(feature = "e2e")]
                if crate::secure::token_is_short(opts.token.expose()) {
                    log::warn!(
                        "the token is short (under {} bytes): it can be guessed offline; omit it on the origin to get a generated one",
                        crate::secure::MIN_TOKEN_LEN
                    );
                }
            }
            if opts.plaintext {
                log::warn!("--insecure-plaintext: the relay can read and alter all traffic");
            }
            match super::engine::run(opts) {
                Ok(()) => super::agent_glue::exit_status(),
                Err(e) => {
                    eprintln!("{name}: {e}");
                    1
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(side: Side, args: &[&str], env: Option<&str>, stdin: &str) -> Result<Parsed, String> {
        pj(side, args, env, None, stdin)
    }

    /// With `$SOCKRELAY_JOIN` too.
    fn pj(
        side: Side,
        args: &[&str],
        env: Option<&str>,
        join: Option<&str>,
        stdin: &str,
    ) -> Result<Parsed, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env = Env {
            token: env.map(String::from),
            join: join.map(String::from),
        };
        parse(side, &args, env, &mut stdin.as_bytes())
    }

    fn opts(r: Result<Parsed, String>) -> (Options, bool) {
        match r.unwrap() {
            Parsed::Run {
                opts,
                secret_on_argv,
                ..
            } => (opts, secret_on_argv.is_some()),
            other => panic!("{other:?}"),
        }
    }

    fn argv_secret(r: Result<Parsed, String>) -> Option<OnArgv> {
        match r.unwrap() {
            Parsed::Run { secret_on_argv, .. } => secret_on_argv,
            other => panic!("{other:?}"),
        }
    }

    const ID: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";

    #[test]
    fn origin_forms() {
        let (o, on_cl) = opts(p(Side::Origin, &["h", "80", "tok", "/s"], None, ""));
        assert_eq!((o.relay.host.as_str(), o.relay.port), ("h", 80));
        assert_eq!(o.token.expose(), b"tok");
        assert!(on_cl);
        assert!(o.session.is_none());
        let (o, on_cl) = opts(p(Side::Origin, &["h", "80", "/s"], Some("envtok"), ""));
        assert_eq!(o.token.expose(), b"envtok");
        assert!(!on_cl);
        let (o, _) = opts(p(Side::Origin, &["ws://h:81", "/s"], Some("e"), ""));
        assert_eq!(o.relay.port, 81);
        let (o, _) = opts(p(
            Side::Origin,
            &["--token-file", "-", "--session", ID, "ws://h:81", "/s"],
            Some("ignored"),
            "fromstdin\nrest",
        ));
        assert_eq!(o.token.expose(), b"fromstdin");
        assert_eq!(o.session.unwrap().to_string(), ID);
    }

    #[test]
    fn dest_forms() {
        let (o, _) = opts(p(
            Side::Dest,
            &["--print-env", "h", "80", ID, "tok", "/s"],
            None,
            "",
        ));
        assert!(o.print_env);
        assert_eq!(o.session.unwrap().to_string(), ID);
        let (o, _) = opts(p(Side::Dest, &["ws://h:1", ID, "/s"], Some("t"), ""));
        assert_eq!(o.socket, PathBuf::from("/s"));
    }

    #[test]
    fn usage_errors() {
        assert!(p(Side::Dest, &["h", "80", ID, "/s"], None, "")
            .unwrap_err()
            .contains("no token"));
        assert!(p(Side::Origin, &["h", "x", "t", "/s"], None, "").is_err());
        assert!(p(Side::Origin, &["h", "80", "t", "/s", "extra"], None, "").is_err());
        assert!(p(Side::Dest, &["h", "80", "not-a-uuid", "t", "/s"], None, "").is_err());
        assert!(p(Side::Origin, &["--bogus"], None, "").is_err());
        assert!(p(
            Side::Origin,
            &["--token-file", "-", "h", "1", "t", "/s"],
            None,
            "x"
        )
        .is_err());
        assert!(p(
            Side::Origin,
            &["--token-file", "-", "h", "1", "/s"],
            None,
            "\n"
        )
        .is_err());
        assert!(p(
            Side::Origin,
            &["--log-level", "loud", "h", "1", "t", "/s"],
            None,
            ""
        )
        .is_err());
    }

    #[cfg(feature = "e2e")]
    #[test]
    fn origin_without_token_generates_one() {
        let (o, on_cl) = opts(p(Side::Origin, &["h", "80", "/s"], None, ""));
        assert!(o.token_generated && !on_cl);
        assert_eq!(o.token.expose().len(), 43);
        let (o2, _) = opts(p(Side::Origin, &["h", "80", "/s"], Some(""), ""));
        assert!(o2.token_generated);
        assert_ne!(o.token.expose(), o2.token.expose());
        let (o, _) = opts(p(Side::Origin, &["h", "80", "/s"], Some("given"), ""));
        assert!(!o.token_generated);
    }

    #[test]
    fn origin_limits() {
        let (o, _) = opts(p(
            Side::Origin,
            &[
                "--max-channels",
                "5",
                "--max-concurrent",
                "2",
                "--allow-dest",
                "10.0.0.0/8",
                "--allow-dest",
                "fd00::/8, 127.0.0.1",
                "h",
                "80",
                "/s",
            ],
            Some("t"),
            "",
        ));
        assert_eq!(o.limits.max_channels, Some(5));
        assert_eq!(o.limits.max_concurrent, Some(2));
        let cidrs: Vec<String> = o.limits.allow_dest.iter().map(|c| c.to_string()).collect();
        assert_eq!(cidrs, ["10.0.0.0/8", "fd00::/8", "127.0.0.1/32"]);
        let (o, _) = opts(p(Side::Origin, &["h", "80", "/s"], Some("t"), ""));
        assert_eq!(o.limits, Limits::default());
        for bad in [
            &["--max-channels", "0"][..],
            &["--max-concurrent", "-1"],
            &["--max-concurrent", "x"],
            &["--allow-dest", "10.0.0.0/40"],
            &["--allow-dest", ""],
        ] {
            let mut args = bad.to_vec();
            args.extend(["h", "80", "/s"]);
            assert!(p(Side::Origin, &args, Some("t"), "").is_err(), "{bad:?}");
        }
        // Origin-only options.
        assert!(p(
            Side::Dest,
            &["--max-channels", "1", "h", "80", ID, "/s"],
            Some("t"),
            ""
        )
        .is_err());
    }

    #[test]
    fn dest_join_forms() {
        let join = format!("sockrelay://relay.example:8080/{ID}#joined-token");
        let check = |o: &Options| {
            assert_eq!(o.relay.host, "relay.example");
            assert_eq!(o.relay.port, 8080);
            assert_eq!(o.session.unwrap().to_string(), ID);
            assert_eq!(o.socket, PathBuf::from("/s"));
        };
        // $SOCKRELAY_JOIN with only SOCKET; its token beats $SOCKRELAY_TOKEN.
        let r = pj(Side::Dest, &["/s"], Some("envtok"), Some(&join), "");
        let (o, on_cl) = opts(r);
        check(&o);
        assert_eq!(o.token.expose(), b"joined-token");
        assert!(!on_cl);
        // --join-file (stdin), with a trailing newline.
        let r = pj(
            Side::Dest,
            &["--join-file", "-", "/s"],
            None,
            None,
            &format!("{join}\n"),
        );
        let (o, on_cl) = opts(r);
        check(&o);
        assert_eq!(o.token.expose(), b"joined-token");
        assert!(!on_cl);
        // On argv: works, flagged for the ps warning.
        let r = pj(Side::Dest, &[&join, "/s"], None, None, "");
        assert_eq!(argv_secret(r), Some(OnArgv::Join));
        // Without a fragment the token comes from the usual places, and
        // the join string on argv is then no secret.
        let bare = format!("sockrelay://relay.example:8080/{ID}");
        let r = pj(Side::Dest, &[&bare, "/s"], Some("envtok"), None, "");
        let (o, on_cl) = opts(r);
        assert_eq!(o.token.expose(), b"envtok");
        assert!(!on_cl);
        let r = pj(
            Side::Dest,
            &["--token-file", "-", &bare, "/s"],
            None,
            None,
            "filetok",
        );
        assert_eq!(opts(r).0.token.expose(), b"filetok");
        // The classic form ignores $SOCKRELAY_JOIN.
        let r = pj(
            Side::Dest,
            &["h", "1", ID, "/s"],
            Some("t"),
            Some(&join),
            "",
        );
        let (o, _) = opts(r);
        assert_eq!((o.relay.host.as_str(), o.token.expose()), ("h", &b"t"[..]));
    }

    #[test]
    fn dest_join_errors_never_show_the_token() {
        let join = format!("sockrelay://h:1/{ID}#s3cret-token");
        let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
            // token twice
            (vec!["--token-file", "-", &join, "/s"], None, "x"),
            // join twice
            (vec!["--join-file", "-", &join, "/s"], None, ""),
            // extra arguments after a join string
            (vec![&join, "s3cret-token", "/s"], None, ""),
            // broken join strings
            (vec!["sockrelay://h:1#s3cret-token", "/s"], None, ""),
            (vec!["/s"], Some("sockrelay://h:1/s3cret-token"), ""),
            (vec!["/s"], Some("s3cret-token"), ""),
            // nothing to join
            (vec!["/s"], None, ""),
            (vec!["--join-file", "-", "/s"], None, "\n"),
            (
                vec!["--join-file", "-", "--token-file", "-", "/s"],
                None,
                "",
            ),
        ];
        for (args, join_env, stdin) in cases {
            let e = pj(Side::Dest, &args, None, join_env, stdin).unwrap_err();
            assert!(!e.contains("s3cret"), "{args:?}: {e}");
        }
    }

    #[test]
    fn plaintext_help_says_trusted_networks_and_benchmarks_only() {
        for side in [Side::Origin, Side::Dest] {
            let u = usage(side).split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(
                u.contains("for trusted networks and benchmarks only"),
                "{u}"
            );
        }
    }

    #[test]
    fn keepalive_and_dead_after() {
        let run = |args: &[&str]| match p(Side::Origin, args, None, "") {
            Ok(Parsed::Run { opts, .. }) => Ok(opts.liveness),
            Ok(_) => panic!("not a run"),
            Err(e) => Err(e),
        };
        let base = ["h", "1", "tok-0123456789abcdef", "/s"];
        let with = |extra: &[&'static str]| {
            let mut v: Vec<&str> = extra.to_vec();
            v.extend(base);
            run(&v)
        };
        assert_eq!(with(&[]).unwrap(), Liveness::default());
        assert_eq!(
            with(&["--keepalive", "0.2", "--dead-after", "0.5"]).unwrap(),
            Liveness {
                keepalive: Duration::from_millis(200),
                dead_after: Duration::from_millis(500),
                resume_window: crate::mux::DEFAULT_RESUME_WINDOW,
                channel_window: crate::mux::DEFAULT_MAX_WINDOW,
            }
        );
        assert_eq!(
            with(&["--channel-window", "4M"]).unwrap().channel_window,
            4 << 20
        );
        assert_eq!(
            with(&["--channel-window", "16384"]).unwrap().channel_window,
            16384
        );
        for bad in ["16383", "17M", "x", "-1", "1G", ""] {
            let e = with(&["--channel-window", bad]).unwrap_err();
            assert!(e.contains("--channel-window"), "{e}");
        }
        assert_eq!(
            with(&["--resume-window", "2.5"]).unwrap().resume_window,
            Duration::from_millis(2500)
        );
        assert_eq!(
            with(&["--resume-window", "0"]).unwrap().resume_window,
            Duration::ZERO
        );
        for bad in ["-1", "x", "NaN", "90000"] {
            let e = with(&["--resume-window", bad]).unwrap_err();
            assert!(e.contains("--resume-window"), "{e}");
        }
        assert_eq!(with(&["--keepalive", "5"]).unwrap().dead_after, DEAD_AFTER);
        for bad in [
            &["--keepalive", "0"][..],
            &["--keepalive", "-1"],
            &["--keepalive", "x"],
            &["--dead-after", "inf"],
            &["--keepalive", "50"],
            &["--keepalive", "3", "--dead-after", "3"],
        ] {
            let e = with(bad).unwrap_err();
            assert!(
                e.contains("--keepalive") || e.contains("--dead-after"),
                "{e}"
            );
        }
    }

    #[test]
    fn help_lists_every_option_with_default() {
        for side in [Side::Origin, Side::Dest] {
            let Parsed::Help(h) = p(side, &["--help"], None, "").unwrap() else {
                panic!()
            };
            for opt in [
                "--token-file",
                "--keepalive",
                "--dead-after",
                "--background",
                "--insecure-plaintext",
                "--log-level",
            ] {
                assert!(h.contains(opt), "{opt}");
            }
            let side_opts: &[&str] = match side {
                Side::Origin => &["--max-channels", "--max-concurrent", "--allow-dest"],
                Side::Dest => &["--join-file", "SOCKRELAY_JOIN"],
            };
            for opt in side_opts {
                assert!(h.contains(opt), "{opt}");
            }
        }
    }
}
