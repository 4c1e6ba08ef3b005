//! How the world reaches a running daemon: the control socket that
//! `absync resync` talks to (file permissions are the access control; the
//! caller's Unix user, from the socket's peer credentials, is journaled;
//! at most 32 clients at once, each with 5 s to send a request line of at
//! most 4 KiB; accept errors are logged and accepting goes on),
//! and the watcher that reloads the configuration when a file changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::os::Who;
use crate::service::accept::{serve_clients, READ_TIMEOUT};
use crate::service::protocol::{DaemonError, Report, Trigger};

/// One request on the control socket (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub full: bool,
    pub wait: bool,
    /// Release at most this many deletes a safety rail holds back
    /// (`absync resync --allow-deletes N`); journaled with the requester.
    #[serde(default)]
    pub allow_deletes: Option<u64>,
}

/// The answer (one JSON line): queued, or the finished run's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    Queued,
    Done(Report),
    Refused(String),
}

/// Listens on the control socket. The socket is created mode 0660: its
/// owner (the service user) and group (the admins) may use it.
pub async fn listen(
    path: &Path,
    triggers: mpsc::Sender<Trigger>,
) -> Result<tokio::task::JoinHandle<()>, DaemonError> {
    let err = |source| DaemonError::Socket {
        path: path.to_path_buf(),
        source,
    };
    // A socket file left by a daemon that died; we hold the state lock, so
    // no other daemon is using it.
    if path.exists() {
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    chmod_socket(path, 0o660).map_err(err)?;
    Ok(tokio::spawn(accept_loop(listener, triggers)))
}

/// Sets the mode of the socket just bound without following a link: a
/// chmod by path would follow one put there after the bind. The path is
/// opened `O_PATH | O_NOFOLLOW` (the link itself, if it is one), checked to
/// be a socket, and changed through `/proc/self/fd`, which names exactly
/// what was opened.
fn chmod_socket(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_NOFOLLOW)
        .open(path)?;
    if !f.metadata()?.file_type().is_socket() {
        return Err(std::io::Error::other(
            "not the socket just bound (replaced, or a symbolic link)",
        ));
    }
    let fd = format!("/proc/self/fd/{}", f.as_raw_fd());
    std::fs::set_permissions(fd, std::fs::Permissions::from_mode(mode))
}

/// The longest request line (a request is a few dozen bytes).
pub const MAX_LINE: usize = 4096;

/// Accepts clients until the daemon stops (see [`serve_clients`]).
async fn accept_loop(listener: UnixListener, triggers: mpsc::Sender<Trigger>) {
    serve_clients(listener, "control socket", move |stream| {
        let triggers = triggers.clone();
        async move {
            if let Err(e) = handle(stream, triggers).await {
                tracing::warn!(error = %e, "control socket client");
            }
        }
    })
    .await
}

/// Reads the request line: at most [`MAX_LINE`] bytes, within
/// [`READ_TIMEOUT`]. `Err` is the refusal to answer.
/// The request on one connection; `None` for a connection that closes
/// without one (a look: is a daemon there?).
async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Result<Option<Request>, String> {
    let mut line = Vec::new();
    let mut limited = BufReader::new(read).take(MAX_LINE as u64 + 1);
    match tokio::time::timeout(READ_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
        Err(_) => return Err(format!("no request within {} s", READ_TIMEOUT.as_secs())),
        Ok(Err(e)) => return Err(format!("cannot read the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_LINE {
        return Err(format!("request longer than {MAX_LINE} bytes"));
    }
    if line.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice::<Request>(&line)
        .map(Some)
        .map_err(|e| format!("bad request: {e}"))
}

async fn handle(stream: UnixStream, triggers: mpsc::Sender<Trigger>) -> std::io::Result<()> {
    // The kernel's word for who connected, read before anything else: the
    // peer's pid names its process only while that process lives. A
    // requester the kernel cannot name is not served.
    let cred = stream.peer_cred()?;
    let by = Who::peer(cred.uid(), cred.pid());
    let (read, mut write) = stream.into_split();
    let answer = match read_request(read).await {
        // Only a look (`absync sync` asking whether a daemon runs).
        Ok(None) => return Ok(()),
        Err(why) => {
            tracing::warn!(by = %by, "control socket: {why}");
            Answer::Refused(why)
        }
        Ok(Some(req)) => {
            tracing::info!(by = %by, full = req.full, allow_deletes = ?req.allow_deletes, "resync requested");
            let (tx, rx) = oneshot::channel();
            let reply = req.wait.then_some(tx);
            let sent = triggers
                .send(Trigger::Resync {
                    full: req.full,
                    allow_deletes: req.allow_deletes,
                    by,
                    reply,
                })
                .await;
            match (sent, req.wait) {
                (Err(_), _) => Answer::Refused("the daemon is stopping".into()),
                (Ok(()), false) => Answer::Queued,
                (Ok(()), true) => match rx.await {
                    Ok(report) => Answer::Done(report),
                    Err(_) => Answer::Refused("the daemon stopped before the run ended".into()),
                },
            }
        }
    };
    let mut text = serde_json::to_string(&answer).unwrap_or_default();
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await
}

/// `absync resync`: asks the daemon behind `path` to run now.
pub async fn request(path: &Path, req: &Request) -> Result<Answer, String> {
    let mut stream = UnixStream::connect(path).await.map_err(|e| {
        format!(
            "no absync daemon is running (cannot reach {}: {e}); for a one-off run use `absync sync`",
            path.display()
        )
    })?;
    let mut text = serde_json::to_string(req).map_err(|e| e.to_string())?;
    text.push('\n');
    stream
        .write_all(text.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&line).map_err(|e| format!("unexpected answer from the daemon: {e}"))
}

/// The files whose change reloads the configuration.
pub fn watched_files(cfg: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = vec![
        cfg.file.clone(),
        cfg.mapping_file.clone(),
        cfg.agreements_file.clone(),
    ];
    files.extend(cfg.source.endpoint.ca_file.clone());
    files.extend(cfg.target.endpoint.ca_file.clone());
    files
}

/// Watches the configuration, mapping, agreements and CA files (their
/// directories, so editors that replace files are seen) and asks for a
/// reload, debounced, when one of them changes.
pub fn watch_files(
    cfg: &Config,
    triggers: mpsc::Sender<Trigger>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let files = watched_files(cfg);
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let watched = files.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            for p in ev.paths {
                if watched.iter().any(|w| w == &p) {
                    let _ = tx.send(p);
                }
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the configuration files"))
    .ok()?;
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        if let Err(e) = watcher.watch(d, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot watch");
        }
    }
    tracing::debug!(files = ?files, "watching the configuration files");
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // Debounce: an editor's save is several events.
            tokio::time::sleep(Duration::from_millis(500)).await;
            while rx.try_recv().is_ok() {}
            let why = format!("{} changed", first.display());
            if triggers.send(Trigger::Reload { why }).await.is_err() {
                break;
            }
        }
    });
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::chmod_socket;

    #[test]
    fn the_socket_mode_is_set_on_the_socket_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("absync.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        chmod_socket(&sock, 0o660).unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sock), 0o660);
        // A link put where the socket was, after the bind.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"x").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(&sock).unwrap();
        std::os::unix::fs::symlink(&victim, &sock).unwrap();
        assert!(chmod_socket(&sock, 0o660).is_err());
        assert_eq!(mode(&victim), 0o600, "the link's target keeps its mode");
    }
}
