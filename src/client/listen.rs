//! The dest's listening unix socket: created private (0600) with no window
//! in which it is wider, never clobbering a live one, removed on exit only
//! if it is still ours.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A bound, listening socket file and the identity of the inode we made.
#[derive(Debug)]
pub struct PrivateSocket {
    pub listener: UnixListener,
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// Why the socket could not be created.
#[derive(Debug)]
pub enum ListenError {
    /// Something accepts connections on the path: another dest or agent.
    Live(PathBuf),
    /// The path exists and is not a socket.
    NotSocket(PathBuf),
    Io(PathBuf, &'static str, io::Error),
}

impl std::fmt::Display for ListenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenError::Live(p) => write!(
                f,
                "{}: a live socket is already listening there (another dest or agent?); not replacing it",
                p.display()
            ),
            ListenError::NotSocket(p) => {
                write!(f, "{}: exists and is not a socket; not replacing it", p.display())
            }
            ListenError::Io(p, what, e) => write!(f, "{}: {what}: {e}", p.display()),
        }
    }
}
impl std::error::Error for ListenError {}

/// Restores the previous umask on drop.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Umask {
        // SAFETY: umask(2) cannot fail and touches only the process mask.
        // The process is single-threaded here, so no other thread creates
        // files while the mask is narrowed.
        Umask(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as in `Umask::set`.
        unsafe {
            libc::umask(self.0);
        }
    }
}

/// Create a listening socket at `path` with mode 0600.
///
/// An existing socket file is probed with a connect: success means it is
/// live (refuse), "connection refused" means stale (remove and replace).
/// Anything that is not a socket is left alone (refuse).
pub fn listen_private(path: &Path) -> Result<PrivateSocket, ListenError> {
    listen_with(path, 0o600, None)
}

/// Like [`listen_private`], with mode `mode` and, if given, group `gid`.
/// The socket is bound at `mode & 0600`, then given its group, then its
/// mode: at no moment can anyone connect whom the final mode and group
/// would not let in.
pub fn listen_with(path: &Path, mode: u32, gid: Option<u32>) -> Result<PrivateSocket, ListenError> {
    let io_err = |what, e| ListenError::Io(path.to_path_buf(), what, e);
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(ListenError::NotSocket(path.to_path_buf()));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(ListenError::Live(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    log::info!("{}: removing stale socket", path.display());
                    fs::remove_file(path).map_err(|e| io_err("remove stale socket", e))?;
                }
                Err(e) => return Err(io_err("probe existing socket", e)),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", e)),
    }
    let listener = {
        // bind(2) creates the file with 0777 & ~umask: narrow the umask
        // first so the socket is never reachable by others, not even
        // between bind and a later chmod.
        let _mask = Umask::set(0o777 & !(mode & 0o600) as libc::mode_t);
        UnixListener::bind(path).map_err(|e| io_err("bind", e))?
    };
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| io_err("chgrp", e))?;
    }
    // Belt and braces (and documents intent): the explicit mode.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| io_err("chmod", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io_err("set non-blocking", e))?;
    let meta = fs::symlink_metadata(path).map_err(|e| io_err("stat", e))?;
    Ok(PrivateSocket {
        listener,
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

impl PrivateSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the socket file if it is still the one we created (someone
    /// may have replaced it meanwhile).
    pub fn remove(&self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                if let Err(e) = fs::remove_file(&self.path) {
                    log::warn!("{}: cannot remove socket: {e}", self.path.display());
                }
            }
        }
    }
}

impl Drop for PrivateSocket {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sockrelay-listen-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.join("s.sock")
    }

    #[test]
    fn private_live_stale_and_not_socket() {
        let p = tmp("a");
        let s = listen_private(&p).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Live: refused, and still there.
        assert!(matches!(listen_private(&p), Err(ListenError::Live(_))));
        assert!(p.exists());
        drop(s);
        assert!(!p.exists());
    }

    #[test]
    fn stale_socket_is_replaced_and_removed_on_drop() {
        let p = tmp("b");
        {
            let l = UnixListener::bind(&p).unwrap();
            drop(l); // file stays, nobody listens: stale
        }
        assert!(p.exists());
        let s = listen_private(&p).unwrap();
        drop(s);
        assert!(!p.exists());
    }

    #[test]
    fn not_a_socket_is_refused() {
        let p = tmp("c");
        fs::write(&p, b"precious").unwrap();
        assert!(matches!(listen_private(&p), Err(ListenError::NotSocket(_))));
        assert_eq!(fs::read(&p).unwrap(), b"precious");
    }

    #[test]
    fn removal_spares_a_replacement() {
        let p = tmp("d");
        let s = listen_private(&p).unwrap();
        fs::remove_file(&p).unwrap();
        fs::write(&p, b"someone else's").unwrap();
        drop(s);
        assert!(p.exists());
    }
}
