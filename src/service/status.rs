//! The daemon's status file (`STATE_DIR/daemon.json`): written by the
//! daemon, read by `absync status` and the metrics.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::ldap::servers::ServerState;

/// What `absync status` and the metrics show about a running daemon; kept
/// in `STATE_DIR/daemon.json` while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    /// "idle" or "running"
    pub state: String,
    pub since: String,
    /// Entries pulled so far in the run in flight.
    pub progress: u64,
    pub next_run: Option<String>,
    pub next_run_full: bool,
    pub last_run: Option<i64>,
    pub last_status: Option<String>,
    pub last_success: Option<String>,
    pub consecutive_failures: u32,
    /// Set while a new configuration was refused (the old one stays).
    pub config_error: Option<String>,
    pub config_file: String,
    /// Where the Prometheus metrics are served, if they are.
    pub metrics: Option<String>,
    /// Each side's servers as the daemon last saw them (absent in the
    /// file of an older daemon).
    #[serde(default)]
    pub servers: Servers,
}

/// Each side's servers, in the configured order: up, down (with why) or
/// not tried yet, the one the side's last connection went to, and the
/// name a server gave (`absync status`, `absync_server_up`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Servers {
    pub source: Vec<ServerState>,
    pub target: Vec<ServerState>,
}

impl Servers {
    /// What the configuration's endpoints remember (the daemon keeps them
    /// from run to run).
    pub fn of(cfg: &Config) -> Servers {
        Servers {
            source: cfg.source.endpoint.states(),
            target: cfg.target.endpoint.states(),
        }
    }

    /// Each side with its servers: `("source", ...)`, `("target", ...)`.
    pub fn sides(&self) -> [(&'static str, &[ServerState]); 2] {
        [("source", &self.source), ("target", &self.target)]
    }
}

impl DaemonStatus {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("daemon.json")
    }

    /// The status of a daemon that is running on `state_dir`, if any: its
    /// status file, when the daemon it names holds the state lock now (a
    /// pid alone could have been reused since the daemon died).
    pub fn read(state_dir: &Path) -> Option<DaemonStatus> {
        // No symlink followed, no FIFO waited on, at most 64 KiB (the file
        // is a few hundred bytes).
        let text = crate::state::read_small(&Self::path(state_dir), 64 * 1024).ok()?;
        let s: DaemonStatus = serde_json::from_str(&text).ok()?;
        let holder = crate::state::StateLock::holder(state_dir)?;
        holder.starts_with(&format!("pid {}:", s.pid)).then_some(s)
    }

    pub(crate) fn write(&self, state_dir: &Path) {
        let written = serde_json::to_vec_pretty(self)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                crate::state::replace_file(state_dir, "daemon.json", &b).map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            tracing::warn!("cannot write {}: {e}", Self::path(state_dir).display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_go_through_the_file_and_an_older_daemons_file_still_reads() {
        let health = crate::ldap::servers::Health::default();
        let urls = vec!["ldaps://dc1:636".to_string(), "ldaps://dc2:636".to_string()];
        health.down(&urls[0], "cannot connect");
        health.up(&urls[1], Some("CN=NTDS Settings,CN=DC2".into()));
        let status = DaemonStatus {
            pid: 7,
            servers: Servers {
                source: Vec::new(),
                target: health.states(&urls),
            },
            ..Default::default()
        };
        let text = serde_json::to_string(&status).unwrap();
        let back: DaemonStatus = serde_json::from_str(&text).unwrap();
        assert_eq!(back, status);
        assert_eq!(back.servers.target[0].up, Some(false));
        assert!(back.servers.target[1].in_use);
        // A status file written before the servers were kept.
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().remove("servers");
        let read: DaemonStatus = serde_json::from_value(old).unwrap();
        assert_eq!(read.servers, Servers::default());
    }
}
