//! The few operating-system services std does not offer: signal delivery
//! into a mio loop (self-pipe), the open-file limit, and I/O error helpers.

use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicI32, Ordering};

/// Write end of the self-pipe, read by the signal handler. -1 when unset.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// This thread's `errno` (errno(3): thread-local, an lvalue in C).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn errno_slot() -> *mut libc::c_int {
    // SAFETY: no preconditions; returns a pointer to the calling thread's
    // errno, valid for the thread's lifetime.
    unsafe { libc::__errno_location() }
}

#[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
fn errno_slot() -> *mut libc::c_int {
    // SAFETY: as above (the BSD spelling).
    unsafe { libc::__error() }
}

extern "C" fn on_signal(signo: libc::c_int) {
    // The handler runs between any two instructions of the interrupted
    // code, which may be about to read errno after a failed call: a
    // write(2) failing here (EAGAIN on a full pipe) must not change what it
    // reads. Save errno on entry and restore it on exit (signal-safety(7)).
    let errno = errno_slot();
    // SAFETY: `errno` points at this thread's errno, always valid.
    let saved = unsafe { *errno };
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signo as u8;
        // SAFETY: write(2) is async-signal-safe; `byte` lives on this stack
        // frame for the duration of the call and the length is 1. A full pipe
        // (EAGAIN) just drops the byte: one pending byte is enough to wake
        // the loop, and the loop drains all of them.
        unsafe {
            libc::write(fd, &byte as *const u8 as *const libc::c_void, 1);
        }
    }
    // SAFETY: as above.
    unsafe { *errno = saved };
}

/// Signals delivered as readable bytes on a socket that a mio loop can poll.
pub struct Signals {
    read: mio::net::UnixStream,
    _write: StdUnixStream,
}

/// What a drained signal asks the loop to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Reload,
}

impl Signals {
    /// Install handlers for SIGINT, SIGTERM and SIGHUP, and ignore SIGPIPE
    /// (a peer that vanishes must show up as EPIPE, not kill the process).
    /// Call once per process.
    pub fn install() -> io::Result<Signals> {
        let (read, write) = StdUnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        SIGNAL_PIPE.store(write.as_raw_fd(), Ordering::Relaxed);
        for signo in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: `action` is fully initialised (zeroed, then handler,
            // flags and mask set) before sigaction reads it. The handler only
            // calls write(2), which is async-signal-safe, on the fd stored in
            // SIGNAL_PIPE; `Drop` resets that to -1 before `_write` closes.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                if libc::sigaction(signo, &action, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        ignore_sigpipe();
        Ok(Signals {
            read: mio::net::UnixStream::from_std(read),
            _write: write,
        })
    }

    /// The socket to register with mio (readable interest).
    pub fn source(&mut self) -> &mut mio::net::UnixStream {
        &mut self.read
    }

    /// Drain pending signal bytes; the most urgent one wins.
    pub fn drain(&mut self) -> Option<Signal> {
        let mut buf = [0u8; 64];
        let mut got = None;
        loop {
            match self.read.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for &b in &buf[..n] {
                        let s = if b as libc::c_int == libc::SIGHUP {
                            Signal::Reload
                        } else {
                            Signal::Terminate
                        };
                        if got != Some(Signal::Terminate) {
                            got = Some(s);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        got
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        SIGNAL_PIPE.store(-1, Ordering::Relaxed);
    }
}

/// Ignore SIGPIPE so writes to a closed socket return EPIPE.
pub fn ignore_sigpipe() {
    // SAFETY: setting the disposition of SIGPIPE to SIG_IGN has no
    // memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Raise the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    // SAFETY: `lim` is a plain struct that getrlimit fully writes on success;
    // setrlimit only reads it.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(lim.rlim_cur as u64)
    }
}

/// Read until `WouldBlock`, EOF, or `buf` is full, retrying `Interrupted`.
/// Returns (bytes read, eof seen). Errors other than WouldBlock are returned
/// only if nothing was read; otherwise they surface on the next call.
pub fn read_some<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => return Ok((n, true)),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                if n > 0 {
                    break;
                }
                return Err(e);
            }
        }
    }
    Ok((n, false))
}

/// True for errors that mean "try again later", not failure.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Peak resident set size of this process in bytes (from /proc), for logs
/// and benches.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes written to a TCP socket that the peer has not acknowledged yet
/// (SIOCOUTQ, tcp(7)): what sits in the kernel's send queue. A peer that
/// stops reading closes its window, and this stops going down.
#[cfg(target_os = "linux")]
pub fn tcp_unacked_bytes(fd: std::os::unix::io::RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one c_int through the pointer,
    // which points at `n` on this stack frame; a bad fd is reported as an
    // error, never undefined behaviour.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// Elsewhere the kernel queue is not visible: report it as empty.
#[cfg(not(target_os = "linux"))]
pub fn tcp_unacked_bytes(_fd: std::os::unix::io::RawFd) -> io::Result<usize> {
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handler's write fails (a full pipe) yet errno is what it was.
    #[test]
    fn the_signal_handler_keeps_errno() {
        let (read, write) = StdUnixStream::pair().unwrap();
        write.set_nonblocking(true).unwrap();
        // Fill the socket so that the handler's write fails with EAGAIN.
        let chunk = [0u8; 4096];
        while io::Write::write(&mut &write, &chunk).is_ok() {}
        let before = SIGNAL_PIPE.swap(write.as_raw_fd(), Ordering::SeqCst);
        // SAFETY: writing this thread's errno.
        unsafe { *errno_slot() = libc::EINTR };
        on_signal(libc::SIGHUP);
        // SAFETY: reading this thread's errno.
        let after = unsafe { *errno_slot() };
        SIGNAL_PIPE.store(before, Ordering::SeqCst);
        drop(read);
        assert_eq!(after, libc::EINTR);
    }
}
