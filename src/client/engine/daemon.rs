//! Announcing a ready session: the eval lines on stdout, and with
//! `--background` the fork that leaves the child running.

use super::*;

impl Engine {
    /// The session is ready: print the eval lines (and fork, if asked).
    pub(super) fn announce(&mut self) {
        let mut lines = String::new();
        match self.side() {
            Side::Origin => {
                lines.push_str(&format!(
                    "SOCKRELAY_SESSION={}; export SOCKRELAY_SESSION;\n",
                    self.session
                ));
                if self.opts.token_generated {
                    let token = &self.opts.token;
                    let join = Join::format(&self.opts.relay, &self.session, token);
                    lines.push_str(&format!(
                        "SOCKRELAY_TOKEN={}; export SOCKRELAY_TOKEN;\nSOCKRELAY_JOIN={}; export SOCKRELAY_JOIN;\n",
                        shell_quote(&String::from_utf8_lossy(token.expose())),
                        shell_quote(&join)
                    ));
                }
            }
            Side::Dest => {
                if self.opts.print_env {
                    lines.push_str(&format!(
                        "SSH_AUTH_SOCK={}; export SSH_AUTH_SOCK;\n",
                        shell_quote(&self.opts.socket.to_string_lossy())
                    ));
                }
            }
        }
        let pid_var = match self.side() {
            Side::Origin => "SOCKRELAY_PID",
            Side::Dest => "SOCKRELAY_DEST_PID",
        };
        if self.opts.background {
            match daemonize() {
                Ok(Some(child)) => {
                    lines.push_str(&format!("{pid_var}={child}; export {pid_var};\n"));
                    let mut out = io::stdout().lock();
                    let _ = out.write_all(lines.as_bytes());
                    let _ = out.flush();
                    // SAFETY: _exit(2) ends the parent without running
                    // destructors, which would otherwise send a WebSocket
                    // close on the connection the child now owns.
                    unsafe { libc::_exit(0) };
                }
                Ok(None) => {}
                Err(e) => {
                    self.stop = Some(Err(Error::Os {
                        what: "fork",
                        err: e,
                    }));
                }
            }
        } else {
            let mut out = io::stdout().lock();
            let _ = out.write_all(lines.as_bytes());
            let _ = out.flush();
        }
    }
}

/// Fork: `Ok(Some(pid))` in the parent, `Ok(None)` in the child, which
/// becomes a session leader with stdin and stdout on /dev/null (so that
/// `eval "$(sockrelay-origin ...)"` returns once the parent exits).
pub(super) fn daemonize() -> io::Result<Option<i32>> {
    let _ = io::stdout().flush();
    if lookups_running() > 0 {
        return Err(io::Error::other(
            "a name lookup of the relay host is still running (a hung resolver); not forking",
        ));
    }
    // SAFETY: this process is single-threaded here (one mio loop; the only
    // helper threads, name lookups, were all joined: lookups_running() is
    // 0, and only this thread starts them), so the child's copy of the only thread holds no locks that
    // another thread could have taken. The child keeps every fd, and epoll
    // registrations belong to the shared open file descriptions, so its
    // loop continues unchanged; the parent only prints and calls _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid > 0 {
        return Ok(Some(pid));
    }
    // SAFETY: setsid, open, dup2 and close on fds we own, in the child.
    unsafe {
        libc::setsid();
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
    Ok(None)
}

/// Quote for POSIX sh when needed.
pub(super) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+,:@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/tmp/a.sock"), "/tmp/a.sock");
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
