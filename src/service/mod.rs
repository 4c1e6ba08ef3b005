//! `absync run`: the service. Syncs on a schedule, with a full reconcile
//! every so often; never overlaps runs (it holds the state directory's lock
//! for its lifetime); retries failed runs with backoff; reloads its
//! configuration on request (SIGHUP, a changed file) without interrupting a
//! run; runs now when asked (`absync resync`); stops cleanly.
//!
//! The core, [`serve`], is a function of (config file, shutdown signal,
//! trigger channel, notifier): systemd, signals, the control socket and
//! the file watcher are adapters around it, and tests drive it directly.

pub mod accept;
pub mod control;
pub mod metrics;
pub mod protocol;
pub mod status;

pub use protocol::{DaemonError, Notifier, Report, Silent, Systemd, Trigger};
pub use status::{DaemonStatus, Servers};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{Config, FileError};
use crate::engine::{self, file_hashes, Mode, Options, Outcome, RunError};
use crate::os::Who;
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

/// How often a run's server states are copied to `daemon.json` (only
/// when they changed).
const SERVERS_EVERY: Duration = Duration::from_secs(5);

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
    triggers: mpsc::Receiver<Trigger>,
    sender: mpsc::Sender<Trigger>,
    notifier: Arc<dyn Notifier>,
) -> Result<(), DaemonError> {
    let cfg = load(&config_file)?;
    let _lock = StateLock::acquire(&cfg.state_dir)?;
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let control = control::listen(&cfg.service.socket, sender.clone()).await?;
    let metrics = match cfg.service.metrics_listen {
        Some(addr) => Some(metrics::serve(addr, cfg.state_dir.clone()).await?),
        None => None,
    };
    let status = StatusFile::new(
        &cfg.state_dir,
        DaemonStatus {
            pid: std::process::id(),
            state: "idle".into(),
            since: now_text(),
            config_file: config_file.display().to_string(),
            metrics: metrics.as_ref().map(|(_, a)| a.to_string()),
            servers: Servers::of(&cfg),
            ..Default::default()
        },
    );
    let watchdog_every = sd_notify::watchdog_enabled()
        .map(|d| d / 2)
        .unwrap_or(Duration::from_secs(3600));
    let mut daemon = Daemon {
        watcher: control::watch_files(&cfg, sender.clone()),
        loaded: file_hashes(&cfg),
        config_file,
        cfg: Arc::new(cfg),
        status,
        notifier,
        sender,
        triggers,
        stop,
        watchdog: tokio::time::interval(watchdog_every),
        failures: 0,
        // The first run starts at once; the schedule counts from its end.
        next: Instant::now(),
        queued: Vec::new(),
        merged: Vec::new(),
    };
    daemon.notifier.ready();
    tracing::info!(config = %daemon.config_file.display(), "absync daemon ready");
    daemon.run_loop().await?;

    daemon.notifier.stopping();
    tracing::info!("absync daemon stopped");
    control.abort();
    if let Some((m, _)) = metrics {
        m.abort();
    }
    let _ = std::fs::remove_file(&daemon.cfg.service.socket);
    let _ = std::fs::remove_file(DaemonStatus::path(&daemon.cfg.state_dir));
    Ok(())
}

/// `daemon.json`, kept up to date as the daemon's state changes.
#[derive(Clone)]
struct StatusFile {
    status: Arc<Mutex<DaemonStatus>>,
    dir: PathBuf,
}

impl StatusFile {
    fn new(dir: &Path, status: DaemonStatus) -> StatusFile {
        StatusFile {
            status: Arc::new(Mutex::new(status)),
            dir: dir.to_path_buf(),
        }
    }

    /// Changes the status and writes it.
    fn update<T>(&self, f: impl FnOnce(&mut DaemonStatus) -> T) -> T {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut s);
        s.write(&self.dir);
        out
    }

    /// Sets the servers' states, writing the file only when they changed.
    fn set_servers(&self, servers: Servers) {
        let changed = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .servers
            != servers;
        if changed {
            self.update(|s| s.servers = servers);
        }
    }
}

/// What woke the idle daemon.
enum Wake {
    Stop,
    Watchdog,
    /// A trigger, or `None`: the schedule says run.
    Run(Option<Trigger>),
}

/// The daemon's loop and what it keeps between runs.
struct Daemon {
    config_file: PathBuf,
    /// Shared with the run in flight, never copied: it holds the passwords.
    cfg: Arc<Config>,
    /// The files as they were when the configuration in force was loaded:
    /// a reload journals them as "before".
    loaded: FileHashes,
    status: StatusFile,
    notifier: Arc<dyn Notifier>,
    sender: mpsc::Sender<Trigger>,
    triggers: mpsc::Receiver<Trigger>,
    stop: watch::Receiver<bool>,
    /// Dropped (and so stopped) when replaced.
    watcher: Option<notify::RecommendedWatcher>,
    watchdog: tokio::time::Interval,
    failures: u32,
    next: Instant,
    /// Triggers that arrived during a run, oldest last; at most one resync
    /// (see [`merge`]).
    queued: Vec<Trigger>,
    /// Who else waits for the queued resync's report (merged into it).
    merged: Vec<tokio::sync::oneshot::Sender<Report>>,
}

impl Daemon {
    async fn run_loop(&mut self) -> Result<(), DaemonError> {
        loop {
            let full_due = {
                let snapshot = Snapshot::open(&self.cfg.state_dir)?;
                full_due(
                    last_full(&snapshot),
                    time::OffsetDateTime::now_utc(),
                    self.cfg.service.full_every,
                )
            };
            self.show_idle(full_due);
            let (full, allow_deletes, by, reply) = match self.wait().await {
                Wake::Stop => break,
                Wake::Watchdog => continue,
                Wake::Run(Some(Trigger::Reload { why })) => {
                    self.reload(&why);
                    continue;
                }
                Wake::Run(Some(Trigger::Resync {
                    full,
                    allow_deletes,
                    by,
                    reply,
                })) => (full || full_due, allow_deletes, Some(by), reply),
                Wake::Run(None) => (full_due, None, None, None),
            };
            // The requesters merged into this resync (none for another run).
            let merged = std::mem::take(&mut self.merged);
            let (report, stopping) = self.run_once(full, allow_deletes, by).await;
            self.after(&report);
            for waiter in merged {
                let _ = waiter.send(report.clone());
            }
            if let Some(reply) = reply {
                let _ = reply.send(report);
            }
            if stopping {
                break;
            }
        }
        Ok(())
    }

    fn show_idle(&self, full_due: bool) {
        let next = in_text(self.next.saturating_duration_since(Instant::now()));
        let servers = Servers::of(&self.cfg);
        self.status.update(|s| {
            s.state = "idle".into();
            s.progress = 0;
            s.next_run = Some(next.clone());
            s.next_run_full = full_due;
            s.servers = servers;
        });
        self.notifier.status(&format!("idle; next run {next}"));
    }

    /// Waits for the schedule, a trigger, the watchdog or the stop.
    async fn wait(&mut self) -> Wake {
        if let Some(t) = self.queued.pop() {
            return Wake::Run(Some(t));
        }
        tokio::select! {
            _ = self.stop.changed() => Wake::Stop,
            _ = self.watchdog.tick() => {
                self.notifier.watchdog();
                Wake::Watchdog
            }
            _ = tokio::time::sleep_until(self.next) => Wake::Run(None),
            t = self.triggers.recv() => match t {
                Some(t) => Wake::Run(Some(t)),
                None => Wake::Stop,
            },
        }
    }

    /// Reloads the configuration; if the mapping, agreements or a CA file
    /// moved, watches the new paths (the old watcher stops when dropped).
    fn reload(&mut self, why: &str) {
        let watched = control::watched_files(&self.cfg);
        reload(
            &self.config_file,
            &mut self.cfg,
            &mut self.loaded,
            &self.status,
            self.notifier.as_ref(),
            why,
        );
        if control::watched_files(&self.cfg) != watched {
            self.watcher = control::watch_files(&self.cfg, self.sender.clone());
        }
    }

    /// One run, in its own task, so the loop keeps the watchdog fed, queues
    /// what arrives meanwhile, and can stop it on shutdown. Returns its
    /// report, and whether the daemon is stopping.
    async fn run_once(
        &mut self,
        full: bool,
        allow_deletes: Option<u64>,
        by: Option<Who>,
    ) -> (Report, bool) {
        let cancel = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let opts = Options {
            full,
            allow_deletes,
            cancel: Some(cancel.clone()),
            progress: Some(progress.clone()),
            lock_held: true,
            requested_by: by,
            ..Default::default()
        };
        self.status.update(|s| {
            s.state = "running".into();
            s.since = now_text();
        });
        self.notifier.status(if full {
            "running a full sync"
        } else {
            "running a sync"
        });
        let mut run = spawn_run(Arc::clone(&self.cfg), opts);
        let mut stopping = false;
        // The servers the run connects to (or fails over from) show in
        // status and the metrics within seconds, not only after the run.
        let mut servers = tokio::time::interval(SERVERS_EVERY);
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = servers.tick() => self.status.set_servers(Servers::of(&self.cfg)),
                _ = self.stop.changed(), if !stopping => {
                    // Finish the entry in flight, then stop: the run ends
                    // with everything it applied recorded.
                    tracing::info!("stopping: the run in flight ends after its current entry");
                    self.notifier.stopping();
                    cancel.store(true, Ordering::Relaxed);
                    stopping = true;
                }
                _ = self.watchdog.tick() => {
                    self.notifier.watchdog();
                    self.status.update(|s| s.progress = progress.load(Ordering::Relaxed));
                }
                t = self.triggers.recv() => if let Some(t) = t {
                    merge(&mut self.queued, &mut self.merged, t)
                },
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
        (report, stopping)
    }

    /// Records how the run went and schedules the next: on the schedule,
    /// or with backoff after runs that could not run.
    fn after(&mut self, report: &Report) {
        if report.code == engine::EXIT_COULD_NOT_RUN {
            self.failures += 1;
        } else {
            self.failures = 0;
        }
        let failures = self.failures;
        self.status.update(|s| {
            if failures == 0 {
                s.last_success = Some(now_text());
            }
            s.consecutive_failures = failures;
            s.last_run = report.run_id.or(s.last_run);
            s.last_status = Some(report.summary.lines().next().unwrap_or("").to_string());
        });
        let wait = if failures > 0 {
            let d = backoff(failures, self.cfg.service.schedule.next_after_now());
            tracing::warn!(
                failures,
                retry_in_secs = d.as_secs(),
                "retrying with backoff"
            );
            d
        } else {
            self.cfg.service.schedule.next_after_now()
        };
        self.next = Instant::now() + wait;
    }
}

/// Queues a trigger that arrived during a run. A resync merges into the
/// resync already queued, if any: full wins over plain, and its requester
/// waits for that run's report (in `merged`). Ten queued resyncs are one run.
fn merge(
    queued: &mut Vec<Trigger>,
    merged: &mut Vec<tokio::sync::oneshot::Sender<Report>>,
    t: Trigger,
) {
    // A resync that releases deletes is its own request, with its own
    // requester journaled: only plain resyncs merge.
    let pending = queued.iter_mut().find_map(|q| match q {
        Trigger::Resync {
            full,
            allow_deletes: None,
            ..
        } => Some(full),
        _ => None,
    });
    match (t, pending) {
        (
            Trigger::Resync {
                full,
                allow_deletes: None,
                by,
                reply,
            },
            Some(pending_full),
        ) => {
            *pending_full |= full;
            merged.extend(reply);
            tracing::info!(by = %by, full, "resync merged into the one already queued");
        }
        (t, _) => queued.insert(0, t),
    }
}

/// The run's state database connection stays on one thread: the run gets a
/// thread and a small runtime of its own.
fn spawn_run(
    cfg: Arc<Config>,
    opts: Options,
) -> tokio::task::JoinHandle<Result<Outcome, RunError>> {
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RunError::Output)?;
        rt.block_on(engine::run(&cfg, Mode::Apply, opts, &mut std::io::sink()))
    })
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
    cfg: &mut Arc<Config>,
    loaded: &mut FileHashes,
    status: &StatusFile,
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
                // What each server last did is kept for the servers the
                // new configuration still names.
                new.source
                    .endpoint
                    .health
                    .adopt(&cfg.source.endpoint.health);
                new.target
                    .endpoint
                    .health
                    .adopt(&cfg.target.endpoint.health);
                *cfg = Arc::new(new);
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
    status.update(|s| s.config_error = record.error.clone());
    match &record.error {
        Some(e) => tracing::error!("configuration not reloaded, keeping the old one: {e}"),
        None => tracing::info!(why, "configuration reloaded"),
    }
    if let Ok(s) = Snapshot::open(&cfg.state_dir) {
        let sealed = s
            .journal(&[record])
            .and_then(|()| match &cfg.journal_signer {
                Some(signer) => s.seal(signer, 0),
                None => Ok(()),
            });
        if let Err(e) = sealed {
            tracing::error!(error = %e, "cannot journal the reload");
        }
    }
    notifier.ready();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration (it holds the passwords) cannot be copied, so a
    /// run can only borrow the daemon's: this fails to compile if `Config`,
    /// `Endpoint` or `Secret` ever implements `Clone` (the "ambiguous
    /// impl" check of static_assertions' `assert_not_impl_any!`).
    #[test]
    fn the_config_and_its_passwords_are_not_clone() {
        trait AmbiguousIfClone<A> {
            fn check() {}
        }
        impl<T: ?Sized> AmbiguousIfClone<()> for T {}
        struct IsClone;
        impl<T: Clone> AmbiguousIfClone<IsClone> for T {}
        <Config as AmbiguousIfClone<_>>::check();
        <crate::ldap::Endpoint as AmbiguousIfClone<_>>::check();
        <crate::secret::Secret as AmbiguousIfClone<_>>::check();
    }

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
        s.end_run(full, "done with failures", &counts, None)
            .unwrap();
        let when = last_full(&s).expect("a full run with entry failures counts");
        // Later full runs that did not go to their end do not count.
        let failed = s.start_run("full", &files).unwrap();
        s.end_run(
            failed,
            "failed: interrupted (shutdown) after 3 entries; no deletes were applied",
            &counts,
            None,
        )
        .unwrap();
        s.start_run("full", &files).unwrap(); // still running
                                              // Many ordinary runs later, it is still found.
        for _ in 0..1500 {
            let id = s.start_run("sync", &files).unwrap();
            s.end_run(id, "ok", &counts, None).unwrap();
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
    fn queued_resyncs_merge_into_one_full_winning_and_every_requester_answered() {
        use tokio::sync::oneshot;
        let resync = |full: bool| {
            let (tx, rx) = oneshot::channel();
            let t = Trigger::Resync {
                full,
                allow_deletes: None,
                by: Who::me(),
                reply: Some(tx),
            };
            (t, rx)
        };
        let (mut queued, mut merged) = (Vec::new(), Vec::new());
        let (first, first_rx) = resync(false);
        merge(&mut queued, &mut merged, first);
        merge(
            &mut queued,
            &mut merged,
            Trigger::Reload { why: "x".into() },
        );
        let mut rxs = Vec::new();
        for i in 0..9 {
            let (t, rx) = resync(i == 4);
            merge(&mut queued, &mut merged, t);
            rxs.push(rx);
        }
        assert_eq!(queued.len(), 2, "one reload and one resync: {queued:?}");
        assert_eq!(merged.len(), 9);
        // Oldest last: the resync runs first, as a full run (one asked).
        let Some(Trigger::Resync { full, reply, .. }) = queued.pop() else {
            panic!("the resync comes first");
        };
        assert!(full, "full wins over plain");
        let report = Report {
            run_id: Some(7),
            code: 0,
            summary: "done".into(),
        };
        for w in merged.drain(..) {
            w.send(report.clone()).unwrap();
        }
        reply.unwrap().send(report.clone()).unwrap();
        assert_eq!(first_rx.blocking_recv().unwrap(), report);
        for rx in rxs {
            assert_eq!(rx.blocking_recv().unwrap(), report);
        }
        // A plain resync after it is queued on its own.
        let (t, _rx) = resync(false);
        merge(&mut queued, &mut merged, t);
        assert!(matches!(
            queued.as_slice(),
            [Trigger::Resync { full: false, .. }, Trigger::Reload { .. }]
        ));
        // One that releases deletes is never merged: its requester is
        // journaled with its own run.
        let (tx, _released) = oneshot::channel();
        let release = Trigger::Resync {
            full: false,
            allow_deletes: Some(5),
            by: Who::me(),
            reply: Some(tx),
        };
        merge(&mut queued, &mut merged, release);
        assert_eq!(queued.len(), 3, "{queued:?}");
        assert!(merged.is_empty());
        // Nor does a plain one merge into it.
        let (t, _rx) = resync(true);
        merge(&mut queued, &mut merged, t);
        assert_eq!(merged.len(), 1, "merged into the plain one: {queued:?}");
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
