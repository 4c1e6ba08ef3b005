//! What the daemon and its adapters (the control socket, the metrics
//! endpoint, the systemd notifier) share: the triggers that wake a run, the
//! report a run gives back, and their errors.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::FileError;
use crate::engine::RunError;
use crate::os::Who;
use crate::state::StateError;

/// What can wake the daemon besides its schedule.
#[derive(Debug)]
pub enum Trigger {
    /// Run now (`absync resync`); `reply` gets the run's report.
    Resync {
        full: bool,
        /// Release at most this many held-back deletes (journaled with
        /// the requester).
        allow_deletes: Option<u64>,
        /// The requester, from the socket's peer credentials.
        by: Who,
        reply: Option<oneshot::Sender<Report>>,
    },
    /// Reload the configuration (SIGHUP, or a watched file changed).
    Reload { why: String },
}

/// How a run went, as `absync resync` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub run_id: Option<i64>,
    /// 0 done, 1 entries failed, 2 could not run, 3 deletes held back.
    pub code: u8,
    pub summary: String,
}

/// Telling the service manager (systemd) what the daemon is doing.
pub trait Notifier: Send + Sync {
    fn ready(&self) {}
    fn reloading(&self) {}
    fn stopping(&self) {}
    fn status(&self, _text: &str) {}
    fn watchdog(&self) {}
}

/// For tests and for running outside systemd.
pub struct Silent;
impl Notifier for Silent {}

/// The sd_notify protocol, over `$NOTIFY_SOCKET` (a no-op without it).
pub struct Systemd;
impl Notifier for Systemd {
    fn ready(&self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
    fn reloading(&self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
    }
    fn stopping(&self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
    fn status(&self, text: &str) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(text)]);
    }
    fn watchdog(&self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metrics listener {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl From<RunError> for Report {
    fn from(e: RunError) -> Self {
        Report {
            run_id: None,
            code: crate::engine::EXIT_COULD_NOT_RUN,
            summary: format!("absync: {e}"),
        }
    }
}
