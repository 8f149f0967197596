//! Command lines of `sockrelay-origin` and `sockrelay-dest` (getopts).

use std::io::Read;
use std::path::PathBuf;

use uuid::Uuid;

use super::{Options, RelayAddr, Side, Token};

/// Environment variable holding the token.
pub const TOKEN_ENV: &str = "SOCKRELAY_TOKEN";

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    Run {
        opts: Options,
        log_level: log::LevelFilter,
        /// The token came as an argument (visible in `ps`): warn.
        token_on_command_line: bool,
    },
    Help(String),
    Version,
}

fn getopts_for(side: Side) -> getopts::Options {
    let mut o = getopts::Options::new();
    o.optopt(
        "",
        "token-file",
        &format!("read the token from PATH ('-': stdin) (default: ${TOKEN_ENV})"),
        "PATH",
    );
    if side == Side::Origin {
        o.optopt(
            "",
            "session",
            "propose this session id (a UUID) instead of a random one",
            "ID",
        );
    } else {
        o.optflag(
            "",
            "print-env",
            "print SSH_AUTH_SOCK=<socket>; export SSH_AUTH_SOCK; once joined (default: off)",
        );
    }
    o.optflag(
        "",
        "background",
        "fork once the session is ready: the parent prints the eval lines and exits 0 (default: foreground)",
    );
    o.optflag(
        "",
        "insecure-plaintext",
        "no end-to-end encryption: the relay can read and alter the traffic (default: Noise e2e)",
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
             sockrelay-origin [options] ws://HOST:PORT [TOKEN] SOCKET\n\n\
             Offers the unix socket SOCKET (e.g. $SSH_AUTH_SOCK) through the relay.\n\
             Prints SOCKRELAY_SESSION=<id>; export SOCKRELAY_SESSION; on stdout.\n\
             The token should come from $SOCKRELAY_TOKEN or --token-file, not the\n\
             command line (where `ps` shows it)."
            .to_string(),
        Side::Dest => {
            "Usage: sockrelay-dest [options] HOST PORT SESSION_ID [TOKEN] SOCKET\n       \
             sockrelay-dest [options] ws://HOST:PORT SESSION_ID [TOKEN] SOCKET\n\n\
             Creates the unix socket SOCKET (mode 0600); each connection to it reaches\n\
             the origin's socket. Use it as SSH_AUTH_SOCK.\n\
             The token should come from $SOCKRELAY_TOKEN or --token-file, not the\n\
             command line (where `ps` shows it)."
                .to_string()
        }
    };
    getopts_for(side).usage(&brief)
}

/// Parse `args` (without the program name). `env_token` is the value of
/// `$SOCKRELAY_TOKEN`; `stdin` is read for `--token-file -`.
pub fn parse(
    side: Side,
    args: &[String],
    env_token: Option<String>,
    stdin: &mut dyn Read,
) -> Result<Parsed, String> {
    let m = getopts_for(side).parse(args).map_err(|e| e.to_string())?;
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
    let mut pos: Vec<String> = m.free.clone();
    let relay = if pos.first().is_some_and(|a| a.contains("://")) {
        RelayAddr::from_url(&pos.remove(0))?
    } else {
        if pos.len() < 2 {
            return Err("missing HOST and PORT".into());
        }
        let host = pos.remove(0);
        let port = super::parse_port(&pos.remove(0))?;
        RelayAddr { host, port }
    };
    let session = match side {
        Side::Dest => {
            if pos.is_empty() {
                return Err("missing SESSION_ID".into());
            }
            let s = pos.remove(0);
            Some(Uuid::parse_str(&s).map_err(|_| format!("{s:?} is not a session id (UUID)"))?)
        }
        Side::Origin => match m.opt_str("session") {
            Some(s) => {
                Some(Uuid::parse_str(&s).map_err(|_| format!("--session {s:?} is not a UUID"))?)
            }
            None => None,
        },
    };
    let (positional_token, socket) = match pos.len() {
        0 => return Err("missing SOCKET".into()),
        1 => (None, pos.remove(0)),
        2 => {
            let t = pos.remove(0);
            (Some(t), pos.remove(0))
        }
        _ => return Err(format!("unexpected argument {:?}", pos[2])),
    };
    let file_token = match m.opt_str("token-file") {
        Some(path) => Some(read_token_file(&path, stdin)?),
        None => None,
    };
    let token_on_command_line = positional_token.is_some();
    let token = match (positional_token, file_token) {
        (Some(_), Some(_)) => {
            return Err("the token is given both as an argument and by --token-file".into())
        }
        (Some(t), None) => t.into_bytes(),
        (None, Some(t)) => t,
        (None, None) => match env_token {
            Some(t) if !t.is_empty() => t.into_bytes(),
            _ => {
                return Err(format!(
                    "no token: set ${TOKEN_ENV}, or use --token-file PATH"
                ))
            }
        },
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
        },
        log_level,
        token_on_command_line,
    })
}

/// The first line of the file (or stdin), without its line ending.
fn read_token_file(path: &str, stdin: &mut dyn Read) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    let res = if path == "-" {
        stdin.read_to_end(&mut data).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut data).map(|_| ()))
    };
    res.map_err(|e| format!("--token-file {path}: {e}"))?;
    let line = data.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(format!("--token-file {path}: no token in it"));
    }
    Ok(line.to_vec())
}

/// The whole of `main` for both binaries; returns the exit code
/// (0 ok, 1 runtime failure, 2 usage error).
pub fn main(side: Side, name: &str) -> i32 {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let env_token = std::env::var(TOKEN_ENV).ok();
    match parse(side, &argv, env_token, &mut std::io::stdin()) {
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
            token_on_command_line,
        }) => {
            crate::cli::init_logging(log_level);
            if token_on_command_line {
                log::warn!(
                    "the token is on the command line, where ps shows it; prefer ${} or --token-file",
                    TOKEN_ENV
                );
            }
            #[cfg(feature = "e2e")]
            if crate::secure::token_is_short(opts.token.expose()) {
                log::warn!(
                    "the token is short (under {} bytes): it can be guessed offline",
                    crate::secure::MIN_TOKEN_LEN
                );
            }
            if opts.plaintext {
                log::warn!("--insecure-plaintext: the relay can read and alter all traffic");
            }
            match super::engine::run(opts) {
                Ok(()) => 0,
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
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        parse(side, &args, env.map(String::from), &mut stdin.as_bytes())
    }

    fn opts(r: Result<Parsed, String>) -> (Options, bool) {
        match r.unwrap() {
            Parsed::Run {
                opts,
                token_on_command_line,
                ..
            } => (opts, token_on_command_line),
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
        assert!(p(Side::Origin, &["h", "80", "/s"], None, "")
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

    #[test]
    fn help_lists_every_option_with_default() {
        for side in [Side::Origin, Side::Dest] {
            let Parsed::Help(h) = p(side, &["--help"], None, "").unwrap() else {
                panic!()
            };
            for opt in [
                "--token-file",
                "--background",
                "--insecure-plaintext",
                "--log-level",
            ] {
                assert!(h.contains(opt), "{opt}");
            }
        }
    }
}
