//! `absync run`: the service. Syncs on a schedule, with a full reconcile
//! every so often; never overlaps runs (it holds the state directory's lock
//! for its lifetime); retries failed runs with backoff; reloads its
//! configuration on request (SIGHUP, a changed file) without interrupting a
//! run; runs now when asked (`absync resync`); stops cleanly.
//!
//! The core, [`serve`], is a function of (config file, shutdown signal,
//! trigger channel, notifier): systemd, signals, the control socket and
//! the file watcher are adapters around it, and tests drive it directly.

pub mod control;
pub mod metrics;
pub mod protocol;
pub mod status;

pub use protocol::{DaemonError, Notifier, Report, Silent, Systemd, Trigger};
pub use status::DaemonStatus;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{Config, FileError};
use crate::engine::{self, file_hashes, Mode, Options, Outcome, RunError};
use crate::state::journal::Record;
use crate::state::runs::FileHashes;
use crate::state::{Snapshot, StateLock};

fn now_text() -> String {
    crate::state::journal::now()
}

fn in_text(d: Duration) -> String {
    let t = time::OffsetDateTime::now_utc() + d;
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Loads and checks a configuration the way a run would.
fn load(path: &Path) -> Result<Config, FileError> {
    let cfg = Config::load(path)?;
    engine::load_inputs(&cfg)?;
    Ok(cfg)
}

/// When the latest full run that went to its end started.
fn last_full(snapshot: &Snapshot) -> Option<time::OffsetDateTime> {
    let started = snapshot.last_full_run().ok()??;
    time::OffsetDateTime::parse(&started, &time::format_description::well_known::Rfc3339).ok()
}

/// Whether the next run is a full one: when none has gone to its end yet,
/// or the last one started at least `full_every` before `now`.
fn full_due(
    last: Option<time::OffsetDateTime>,
    now: time::OffsetDateTime,
    full_every: Duration,
) -> bool {
    match last {
        None => true,
        Some(t) => now - t >= time::Duration::try_from(full_every).unwrap_or(time::Duration::WEEK),
    }
}

/// Backoff after `failures` failed runs in a row: 30 s, 1 min, 2 min, ...
/// never longer than the schedule's own interval (and at most an hour).
fn backoff(failures: u32, cap: Duration) -> Duration {
    let d = Duration::from_secs(30u64.saturating_mul(1 << failures.saturating_sub(1).min(10)));
    d.min(cap).min(Duration::from_secs(3600))
}

/// Runs the daemon until `shutdown` completes. Triggers arrive on
/// `triggers`; `sender` is handed to the control socket and the watcher.
pub async fn serve(
    config_file: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut triggers: mpsc::Receiver<Trigger>,
    sender: mpsc::Sender<Trigger>,
    notifier: Arc<dyn Notifier>,
) -> Result<(), DaemonError> {
    let mut cfg = load(&config_file)?;
    // The files as they were when the configuration in force was loaded:
    // a reload journals them as "before".
    let mut loaded = file_hashes(&cfg);
    let _lock = StateLock::acquire(&cfg.state_dir)?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let control = crate::service::control::listen(&cfg.service.socket, sender.clone()).await?;
    let metrics = match cfg.service.metrics_listen {
        Some(addr) => Some(crate::service::metrics::serve(addr, cfg.state_dir.clone()).await?),
        None => None,
    };
    let status = Arc::new(Mutex::new(DaemonStatus {
        pid: std::process::id(),
        state: "idle".into(),
        since: now_text(),
        config_file: config_file.display().to_string(),
        metrics: metrics.as_ref().map(|(_, a)| a.to_string()),
        ..Default::default()
    }));
    let mut _watcher = crate::service::control::watch_files(&cfg, sender.clone());
    notifier.ready();
    tracing::info!(config = %config_file.display(), "absync daemon ready");

    let watchdog_every = sd_notify::watchdog_enabled()
        .map(|d| d / 2)
        .unwrap_or(Duration::from_secs(3600));
    let mut watchdog = tokio::time::interval(watchdog_every);
    let mut failures = 0u32;
    // The first run starts at once; the schedule counts from its end.
    let mut next = Instant::now();
    let mut queued: Vec<Trigger> = Vec::new();

    loop {
        let full_due = {
            let snapshot = Snapshot::open(&cfg.state_dir)?;
            full_due(
                last_full(&snapshot),
                time::OffsetDateTime::now_utc(),
                cfg.service.full_every,
            )
        };
        {
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            s.state = "idle".into();
            s.progress = 0;
            s.next_run = Some(in_text(next.saturating_duration_since(Instant::now())));
            s.next_run_full = full_due;
            s.write(&cfg.state_dir);
            notifier.status(&format!(
                "idle; next run {}",
                s.next_run.clone().unwrap_or_default()
            ));
        }
        let trigger = if let Some(t) = queued.pop() {
            Some(t)
        } else {
            tokio::select! {
                _ = stop_rx.changed() => break,
                _ = watchdog.tick() => { notifier.watchdog(); continue; }
                _ = tokio::time::sleep_until(next) => None,
                t = triggers.recv() => match t {
                    Some(t) => Some(t),
                    None => break,
                },
            }
        };
        let (full, by, reply) = match trigger {
            Some(Trigger::Reload { why }) => {
                let watched = crate::service::control::watched_files(&cfg);
                reload(
                    &config_file,
                    &mut cfg,
                    &mut loaded,
                    &status,
                    notifier.as_ref(),
                    &why,
                );
                // The mapping, agreements or a CA file moved: watch the
                // new paths (the old watcher stops when dropped).
                if crate::service::control::watched_files(&cfg) != watched {
                    _watcher = crate::service::control::watch_files(&cfg, sender.clone());
                }
                continue;
            }
            Some(Trigger::Resync { full, by, reply }) => (full || full_due, Some(by), reply),
            None => (full_due, None, None),
        };

        // A run, in its own task, so the loop keeps the watchdog fed,
        // queues what arrives meanwhile, and can stop it on shutdown.
        let cancel = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let opts = Options {
            full,
            cancel: Some(cancel.clone()),
            progress: Some(progress.clone()),
            lock_held: true,
            requested_by: by,
            ..Default::default()
        };
        {
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            s.state = "running".into();
            s.since = now_text();
            s.write(&cfg.state_dir);
        }
        notifier.status(if full {
            "running a full sync"
        } else {
            "running a sync"
        });
        // The run's state database connection stays on one thread: the run
        // gets a thread and a small runtime of its own.
        let run_cfg = cfg.clone();
        let mut run = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(RunError::Output)?;
            rt.block_on(engine::run(
                &run_cfg,
                Mode::Apply,
                opts,
                &mut std::io::sink(),
            ))
        });
        let mut stopping = false;
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = stop_rx.changed(), if !stopping => {
                    // Finish the entry in flight, then stop: the run ends
                    // with everything it applied recorded.
                    tracing::info!("stopping: the run in flight ends after its current entry");
                    notifier.stopping();
                    cancel.store(true, Ordering::Relaxed);
                    stopping = true;
                }
                _ = watchdog.tick() => {
                    notifier.watchdog();
                    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
                    s.progress = progress.load(Ordering::Relaxed);
                    s.write(&cfg.state_dir);
                }
                t = triggers.recv() => if let Some(t) = t { queued.insert(0, t) },
            }
        };
        let report = match result {
            Ok(Ok(outcome)) => report(&outcome),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "run failed");
                Report::from(e)
            }
            Err(e) => Report {
                run_id: None,
                code: engine::EXIT_COULD_NOT_RUN,
                summary: format!("absync: the run stopped unexpectedly: {e}"),
            },
        };
        tracing::info!(code = report.code, "{}", report.summary);
        {
            let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
            if report.code == 2 {
                failures += 1;
            } else {
                failures = 0;
                s.last_success = Some(now_text());
            }
            s.consecutive_failures = failures;
            s.last_run = report.run_id.or(s.last_run);
            s.last_status = Some(report.summary.lines().next().unwrap_or("").to_string());
        }
        if let Some(reply) = reply {
            let _ = reply.send(report);
        }
        if stopping {
            break;
        }
        let wait = if failures > 0 {
            let d = backoff(failures, cfg.service.schedule.next_after_now());
            tracing::warn!(
                failures,
                retry_in_secs = d.as_secs(),
                "retrying with backoff"
            );
            d
        } else {
            cfg.service.schedule.next_after_now()
        };
        next = Instant::now() + wait;
    }

    notifier.stopping();
    tracing::info!("absync daemon stopped");
    control.abort();
    if let Some((m, _)) = metrics {
        m.abort();
    }
    let _ = std::fs::remove_file(&cfg.service.socket);
    let _ = std::fs::remove_file(DaemonStatus::path(&cfg.state_dir));
    Ok(())
}

/// The report of a finished run, worded as `absync sync` prints it.
pub fn report(o: &Outcome) -> Report {
    Report {
        run_id: o.run_id,
        code: o.exit_code(),
        summary: o.summary("sync"),
    }
}

/// What a running daemon sets up once, at start, and a reload therefore
/// cannot change: the state directory (and its lock), the control socket
/// and the metrics listener.
fn fixed_at_start(old: &Config, new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    if new.state_dir != old.state_dir {
        changed.push(format!(
            "state.dir ({} -> {})",
            old.state_dir.display(),
            new.state_dir.display()
        ));
    }
    if new.service.socket != old.service.socket {
        changed.push(format!(
            "daemon.socket ({} -> {})",
            old.service.socket.display(),
            new.service.socket.display()
        ));
    }
    if new.service.metrics_listen != old.service.metrics_listen {
        let show = |a: Option<std::net::SocketAddr>| {
            a.map(|a| a.to_string()).unwrap_or_else(|| "none".into())
        };
        changed.push(format!(
            "metrics.listen ({} -> {})",
            show(old.service.metrics_listen),
            show(new.service.metrics_listen)
        ));
    }
    changed
}

/// Reloads the configuration: checked first; if it is wrong, or changes
/// what only a restart can, the daemon keeps the old one and says exactly
/// why. Journaled either way, with the hashes of the files in force
/// (`before`, as they were when loaded) and of the candidate (`after`).
fn reload(
    path: &Path,
    cfg: &mut Config,
    loaded: &mut FileHashes,
    status: &Mutex<DaemonStatus>,
    notifier: &dyn Notifier,
    why: &str,
) {
    notifier.reloading();
    let mut record = Record::new(0, "reload", "applied", why);
    let after = match load(path) {
        Ok(new) => {
            let after = file_hashes(&new);
            let fixed = fixed_at_start(cfg, &new);
            if fixed.is_empty() {
                *cfg = new;
            } else {
                record.outcome = "rejected".into();
                record.error = Some(format!(
                    "{} cannot change while the daemon runs; restart it \
                     (systemctl restart absync) to use this configuration",
                    fixed.join(", ")
                ));
            }
            after
        }
        Err(e) => {
            record.outcome = "rejected".into();
            record.error = Some(e.to_string());
            // The candidate could not be read as a whole: its files are
            // hashed where the configuration in force finds them.
            file_hashes(cfg)
        }
    };
    record.detail = Some(serde_json::json!({ "before": &*loaded, "after": &after }));
    if record.error.is_none() {
        *loaded = after;
    }
    {
        let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
        s.config_error = record.error.clone();
        s.write(&cfg.state_dir);
    }
    match &record.error {
        Some(e) => tracing::error!("configuration not reloaded, keeping the old one: {e}"),
        None => tracing::info!(why, "configuration reloaded"),
    }
    if let Ok(s) = Snapshot::open(&cfg.state_dir) {
        if let Err(e) = s.journal(&[record]) {
            tracing::error!(error = %e, "cannot journal the reload");
        }
    }
    notifier.ready();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_run_is_due_when_none_went_to_its_end_or_the_last_is_old() {
        let now = time::OffsetDateTime::now_utc();
        let week = Duration::from_secs(7 * 86_400);
        assert!(full_due(None, now, week));
        assert!(!full_due(Some(now - time::Duration::hours(1)), now, week));
        assert!(!full_due(Some(now - time::Duration::days(6)), now, week));
        assert!(full_due(Some(now - time::Duration::days(7)), now, week));
        assert!(full_due(Some(now - time::Duration::days(30)), now, week));
        assert!(full_due(Some(now), now, Duration::ZERO));
    }

    #[test]
    fn the_last_full_run_counts_with_entry_failures_and_however_long_ago() {
        let dir = std::env::temp_dir().join(format!("absync-lastfull-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Snapshot::open(&dir).unwrap();
        assert_eq!(last_full(&s), None, "a fresh state has none");
        let files = FileHashes::default();
        let counts = crate::state::runs::Counts::default();
        let full = s.start_run("full", &files).unwrap();
        s.end_run(full, "done with failures", &counts).unwrap();
        let when = last_full(&s).expect("a full run with entry failures counts");
        // Later full runs that did not go to their end do not count.
        let failed = s.start_run("full", &files).unwrap();
        s.end_run(
            failed,
            "failed: interrupted (shutdown) after 3 entries; no deletes were applied",
            &counts,
        )
        .unwrap();
        s.start_run("full", &files).unwrap(); // still running
                                              // Many ordinary runs later, it is still found.
        for _ in 0..1500 {
            let id = s.start_run("sync", &files).unwrap();
            s.end_run(id, "ok", &counts).unwrap();
        }
        assert_eq!(last_full(&s), Some(when));
        assert!(!full_due(
            last_full(&s),
            time::OffsetDateTime::now_utc(),
            Duration::from_secs(3600)
        ));
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(1800);
        assert_eq!(backoff(1, cap), Duration::from_secs(30));
        assert_eq!(backoff(2, cap), Duration::from_secs(60));
        assert_eq!(backoff(3, cap), Duration::from_secs(120));
        assert_eq!(backoff(20, cap), cap);
        assert_eq!(
            backoff(20, Duration::from_secs(60)),
            Duration::from_secs(60)
        );
    }
}
