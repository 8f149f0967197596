//! systemd socket activation (`sd_listen_fds(3)`): listening sockets handed
//! to the relay by its service manager, so that connections made while the
//! relay restarts wait in the kernel's accept queue instead of being
//! refused. The protocol is three environment variables:
//!
//! - `LISTEN_PID`: the pid the sockets are meant for (ours, or they are not);
//! - `LISTEN_FDS`: how many, starting at fd 3 (`SD_LISTEN_FDS_START`);
//! - `LISTEN_FDNAMES`: optional, colon-separated names (`FileDescriptorName=`
//!   in the `.socket` unit). We read `origin` and `dest` as roles, like
//!   `--origin-listen` / `--dest-listen`; any other name serves both.
//!
//! [`parse`] is the pure part (unit-tested); [`take`] reads the environment,
//! unsets it (children must not inherit it) and checks each fd.

use super::ListenRole;
use std::fmt;
use std::os::fd::{FromRawFd, RawFd};

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;
/// More than this many inherited sockets is a misconfiguration, not a setup.
pub const MAX_FDS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    BadCount(String),
    TooMany(usize),
    /// fd `n` is not a listening TCP socket.
    NotAListener(RawFd),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadCount(v) => write!(f, "LISTEN_FDS={v:?} is not a count"),
            Error::TooMany(n) => write!(f, "LISTEN_FDS={n}: more than {MAX_FDS} sockets"),
            Error::NotAListener(fd) => {
                write!(f, "inherited fd {fd} is not a listening TCP socket")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Which fds, with which roles, the variables hand to process `my_pid`.
/// `Ok(empty)` when there is no activation (no variables, or meant for
/// another process: a parent that forgot to unset them).
pub fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    my_pid: u32,
) -> Result<Vec<(RawFd, ListenRole)>, Error> {
    let (Some(pid), Some(count)) = (listen_pid, listen_fds) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(my_pid) {
        return Ok(Vec::new());
    }
    let n: usize = count
        .trim()
        .parse()
        .map_err(|_| Error::BadCount(count.to_string()))?;
    if n > MAX_FDS {
        return Err(Error::TooMany(n));
    }
    let mut names = listen_fdnames.unwrap_or("").split(':');
    Ok((0..n)
        .map(|i| {
            let role = match names.next() {
                Some("origin") => ListenRole::Origin,
                Some("dest") => ListenRole::Dest,
                _ => ListenRole::Any,
            };
            (FIRST_FD + i as RawFd, role)
        })
        .collect())
}

/// Take the listening sockets systemd handed us, if any: each is checked to
/// be a listening stream socket, made close-on-exec and non-blocking, and
/// the variables are removed from our environment.
pub fn take() -> Result<Vec<(std::net::TcpListener, ListenRole)>, Error> {
    let var = |k: &str| std::env::var(k).ok();
    let fds = parse(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )?;
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    let mut out = Vec::with_capacity(fds.len());
    for (fd, role) in fds {
        if !is_tcp_listener(fd) {
            return Err(Error::NotAListener(fd));
        }
        // SAFETY: fcntl on an fd number only reads/sets its flags; an fd
        // that is not open fails with EBADF, which is_tcp_listener ruled out.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        // SAFETY: the service manager passed this fd to us alone (LISTEN_PID
        // is our pid), it is an open listening socket (checked above), and
        // nothing else in this process owns it: parse() names each fd once.
        out.push((unsafe { std::net::TcpListener::from_raw_fd(fd) }, role));
    }
    Ok(out)
}

fn is_tcp_listener(fd: RawFd) -> bool {
    let get = |level, opt| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, a c_int
        // whose size `len` carries; a non-socket fd fails with ENOTSOCK.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                level,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    };
    let domain_ok = matches!(
        get(libc::SOL_SOCKET, libc::SO_DOMAIN),
        Some(libc::AF_INET | libc::AF_INET6)
    );
    domain_ok
        && get(libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && get(libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_activation_without_both_variables_or_for_another_pid() {
        assert_eq!(parse(None, None, None, 7), Ok(vec![]));
        assert_eq!(parse(Some("7"), None, None, 7), Ok(vec![]));
        assert_eq!(parse(None, Some("2"), None, 7), Ok(vec![]));
        assert_eq!(parse(Some("8"), Some("2"), None, 7), Ok(vec![]));
        assert_eq!(parse(Some("x"), Some("2"), None, 7), Ok(vec![]));
    }

    #[test]
    fn fds_start_at_three_with_roles_from_names() {
        assert_eq!(
            parse(Some("7"), Some("3"), Some("origin:dest:relay"), 7),
            Ok(vec![
                (3, ListenRole::Origin),
                (4, ListenRole::Dest),
                (5, ListenRole::Any)
            ])
        );
        assert_eq!(
            parse(Some("7"), Some("2"), None, 7),
            Ok(vec![(3, ListenRole::Any), (4, ListenRole::Any)])
        );
        assert_eq!(parse(Some("7"), Some("0"), None, 7), Ok(vec![]));
    }

    #[test]
    fn bad_counts_are_errors() {
        assert!(matches!(
            parse(Some("7"), Some("two"), None, 7),
            Err(Error::BadCount(_))
        ));
        assert_eq!(
            parse(Some("7"), Some("65"), None, 7),
            Err(Error::TooMany(65))
        );
    }

    #[test]
    fn only_listening_tcp_sockets_pass_the_check() {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert!(is_tcp_listener(l.as_raw_fd()));
        let c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        assert!(!is_tcp_listener(c.as_raw_fd()));
        let (u, _) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert!(!is_tcp_listener(u.as_raw_fd()));
        assert!(!is_tcp_listener(-1));
    }
}
