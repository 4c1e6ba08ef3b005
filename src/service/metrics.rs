//! An optional Prometheus endpoint (`[metrics] listen`): OpenMetrics text,
//! encoded by the `prometheus-client` crate from a registry built on each
//! scrape. Counters come from the totals the runs keep in the state
//! database (`state::totals`: they only grow, and survive retention);
//! gauges from the latest run, the latest journaled agreements, the
//! daemon's status file and `/proc/self`. A scrape reads a small table and
//! one run row: its cost does not grow with the journal. It only reads.
//!
//! Only `GET /metrics` (and `HEAD`) is served; other paths are 404, other
//! methods 405. The listener survives accept errors (EMFILE included),
//! serves at most [`MAX_CLIENTS`](crate::service::accept::MAX_CLIENTS) clients at once, and gives each
//! [`READ_TIMEOUT`] to send a request head of at most [`MAX_HEAD`] bytes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::service::accept::{serve_clients, READ_TIMEOUT};
use crate::service::protocol::DaemonError;
use crate::service::status::{DaemonStatus, Servers};
use crate::state::{ReadFrom, Snapshot};

/// The longest request head read.
pub const MAX_HEAD: usize = 8192;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// Serves the metrics; returns the task and the address it listens on
/// (port 0 in the configuration picks a free one).
pub async fn serve(
    addr: SocketAddr,
    state_dir: PathBuf,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), DaemonError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Metrics { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| DaemonError::Metrics { addr, source })?;
    tracing::info!(addr = %bound, "metrics listening");
    let task = tokio::spawn(accept_loop(listener, state_dir));
    Ok((task, bound))
}

async fn accept_loop(listener: TcpListener, state_dir: PathBuf) {
    serve_clients(listener, "metrics", move |stream| {
        answer(stream, state_dir.clone())
    })
    .await
}

async fn answer(mut stream: TcpStream, dir: PathBuf) {
    // Read the whole request head before answering: closing a socket with
    // unread bytes makes the kernel reset it, and the client then loses
    // the response (a broken pipe).
    let Ok(head) = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await else {
        return;
    };
    let text = |t: &str| (t.to_string(), t.len());
    let (status, (body, length)) = match route(&head) {
        Route::Metrics { with_body } => {
            let metrics = tokio::task::spawn_blocking(move || render_in_daemon(&dir))
                .await
                .unwrap_or_default();
            let length = metrics.len();
            // HEAD: the headers of the GET, no body.
            (
                "200 OK",
                (if with_body { metrics } else { String::new() }, length),
            )
        }
        Route::NotFound => (
            "404 Not Found",
            text("not found: the metrics are at /metrics\n"),
        ),
        Route::NotAllowed => ("405 Method Not Allowed", text("only GET and HEAD\n")),
        Route::Bad => ("400 Bad Request", text("bad request\n")),
    };
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n{allow}Connection: close\r\n\r\n"
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads until the blank line that ends an HTTP request head (or
/// [`MAX_HEAD`] bytes, or the end of the stream).
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while head.len() < MAX_HEAD {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    head
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (with a body) or `HEAD /metrics` (without).
    Metrics {
        with_body: bool,
    },
    NotFound,
    NotAllowed,
    Bad,
}

/// Routes a request by its first line: only `/metrics` (a query string is
/// ignored) with GET or HEAD is served.
pub fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_ascii_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Route::Bad;
    };
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { with_body: true },
        "HEAD" => Route::Metrics { with_body: false },
        _ => Route::NotAllowed,
    }
}

/// A label value as the text format needs it (the encoder writes label
/// values as given).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g: Gauge = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn gauge_f64(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn epoch(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// The metrics text (OpenMetrics 1.0, which Prometheus reads), as a
/// reader outside the daemon sees it: a run still marked running with no
/// process holding the state lock died.
pub fn render(state_dir: &Path) -> String {
    render_with(state_dir, None)
}

/// The metrics text as the daemon serves it. The daemon holds the state
/// lock for its whole life and closes dead runs at each run's start, so a
/// run marked running is its own; it does not ask `/proc/locks`, which the
/// unit's `ProcSubset=pid` hides (every scrape during a run would otherwise
/// show that run as died).
pub fn render_in_daemon(state_dir: &Path) -> String {
    render_with(state_dir, Some(true))
}

/// `lock_held`: whether a process holds the state lock, when the caller
/// knows; otherwise the kernel's lock table is asked.
fn render_with(state_dir: &Path, lock_held: Option<bool>) -> String {
    let mut registry = Registry::default();
    registry.register(
        "absync_build",
        "The absync version serving these metrics",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    process(&mut registry);
    // Read-only: a scrape never changes the state.
    match Snapshot::open_read_only(state_dir, ReadFrom::Live) {
        Ok(s) => {
            totals(&mut registry, &s);
            last_run(&mut registry, &s, state_dir, lock_held);
            managed(&mut registry, &s, state_dir);
            agreements(&mut registry, &s);
            compliance(&mut registry, &s);
            conflicts(&mut registry, &s);
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the state"),
    }
    daemon(&mut registry, state_dir);
    let mut out = String::new();
    if encode(&mut out, &registry).is_err() {
        return String::new();
    }
    out
}

/// The counters, from the totals the runs keep.
fn totals(registry: &mut Registry, s: &Snapshot) {
    let Ok(t) = s.totals() else {
        return;
    };
    let runs = Family::<Labels, Counter>::default();
    for (status, n) in &t.runs {
        runs.get_or_create(&vec![("status", label(status))])
            .inc_by(*n);
    }
    registry.register(
        "absync_runs",
        "Runs ended, by final status (the part before any colon)",
        runs,
    );
    let changes = Family::<Labels, Counter>::default();
    for ((op, outcome), n) in &t.changes {
        changes
            .get_or_create(&vec![("operation", label(op)), ("outcome", label(outcome))])
            .inc_by(*n);
    }
    registry.register(
        "absync_changes",
        "Objects by operation and outcome (applied, failed, withheld, conflict), over all runs",
        changes,
    );
    gauge(
        registry,
        "absync_last_success_timestamp_seconds",
        "End of the last run that ended ok (0: none yet)",
        t.last_success.unwrap_or(0),
    );
    gauge(
        registry,
        "absync_last_completed_timestamp_seconds",
        "End of the last run that went to its end, even with entry failures or held deletes (0: none yet)",
        t.last_completed.unwrap_or(0),
    );
}

/// Gauges of the latest run (one row read), as a reader sees it: still
/// marked running with no process holding the state lock, it died.
fn last_run(registry: &mut Registry, s: &Snapshot, state_dir: &Path, lock_held: Option<bool>) {
    let Some(last) = s.runs(1).ok().and_then(|r| r.into_iter().next()) else {
        return;
    };
    let held = lock_held.unwrap_or_else(|| crate::state::StateLock::holder(state_dir).is_some());
    let last = last.seen(held);
    gauge_f64(
        registry,
        "absync_last_run_duration_seconds",
        "Duration of the last run",
        last.seconds().unwrap_or(0.0),
    );
    let withheld = last.counts.as_ref().map_or(0, |c| c.withheld);
    gauge(
        registry,
        "absync_deletes_withheld",
        "Deletes and hides the last run held back for an admin",
        i64::try_from(withheld).unwrap_or(i64::MAX),
    );
    gauge(
        registry,
        "absync_safety_stop",
        "1 when the last run stopped on a safety rail (deletes wait for an admin)",
        i64::from(crate::engine::removals::holds_deletes(&last.status)),
    );
    gauge(
        registry,
        "absync_last_run_failed",
        "1 when the last run could not run, or died before its end",
        i64::from(!crate::state::totals::completed(&last.status)),
    );
}

fn managed(registry: &mut Registry, s: &Snapshot, state_dir: &Path) {
    let visible = s.count_visible().unwrap_or(0);
    let hidden = s.count().unwrap_or(0).saturating_sub(visible);
    let objects = Family::<Labels, Gauge>::default();
    for (h, n) in [("false", visible), ("true", hidden)] {
        objects
            .get_or_create(&vec![("hidden", h.to_string())])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    registry.register(
        "absync_managed_objects",
        "Objects absync manages in the target",
        objects,
    );
    gauge(
        registry,
        "absync_state_bytes",
        "Size of the state database (snapshot and journal) on disk",
        i64::try_from(crate::state::bytes_on_disk(state_dir)).unwrap_or(i64::MAX),
    );
}

/// When each agreement of the latest journaled terms ends: the midnight
/// (UTC) after its `valid_until` day, the last day it is in force.
fn agreements(registry: &mut Registry, s: &Snapshot) {
    let Ok(Some(terms)) = crate::state::audit::terms_at(s, None) else {
        return;
    };
    let detail = terms.record.detail.unwrap_or_default();
    let Some(list) = detail["agreements"].as_array() else {
        return;
    };
    let until = Family::<Labels, Gauge>::default();
    let format = time::macros::format_description!("[year]-[month]-[day]");
    for a in list {
        let (Some(id), Some(day)) = (a["id"].as_str(), a["valid_until"].as_str()) else {
            continue;
        };
        let Ok(day) = time::Date::parse(day, &format) else {
            continue;
        };
        let end = day.next_day().unwrap_or(day).midnight().assume_utc();
        until
            .get_or_create(&vec![("agreement", label(id))])
            .set(end.unix_timestamp());
    }
    registry.register(
        "absync_agreement_valid_until_timestamp_seconds",
        "When each agreement (of the latest journaled terms) ends: midnight UTC after its valid_until day",
        until,
    );
}

/// What the last full run's compliance check found: violations, objects
/// absync does not own, when, and whether it could read the target.
fn compliance(registry: &mut Registry, s: &Snapshot) {
    let Ok(Some(last)) = crate::engine::compliance::last_check(s) else {
        return;
    };
    gauge(
        registry,
        "absync_compliance_checked_timestamp_seconds",
        "When the last full run checked what the OUs hold against the agreements",
        epoch(&last.at).unwrap_or(0),
    );
    gauge(
        registry,
        "absync_compliance_check_failed",
        "1 when the last check could not read the target",
        i64::from(last.tally.is_none()),
    );
    if let Some(t) = &last.tally {
        gauge(
            registry,
            "absync_compliance_violations",
            "absync's objects the last check found not covered by an agreement in force or past their grace period",
            i64::try_from(t.violation_count()).unwrap_or(i64::MAX),
        );
        let unowned = Family::<Labels, Gauge>::default();
        for (nhs, n) in [
            ("true", t.not_owned_nhs),
            ("false", t.not_owned.saturating_sub(t.not_owned_nhs)),
        ] {
            unowned
                .get_or_create(&vec![("nhs", nhs.to_string())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        registry.register(
            "absync_compliance_unowned_objects",
            "Objects in the OUs absync does not own, at the last check; nhs=\"true\": those with NHS-looking values",
            unowned,
        );
    }
}

/// The open conflicts (people whose contact an object absync does not own
/// keeps out): how many, and how long the oldest has stood. No label per
/// conflict: `absync status` lists them.
fn conflicts(registry: &mut Registry, s: &Snapshot) {
    let Ok(open) = s.open_conflicts() else {
        return;
    };
    gauge(
        registry,
        "absync_open_conflicts",
        "People whose contact is withheld because an object absync does not own holds its name or address",
        i64::try_from(open.len()).unwrap_or(i64::MAX),
    );
    let now = time::OffsetDateTime::now_utc();
    gauge(
        registry,
        "absync_oldest_conflict_age_seconds",
        "How long the oldest open conflict has stood (0: none open)",
        open.first().map_or(0, |c| c.age_seconds(now)),
    );
}

/// What the daemon's status file says.
fn daemon(registry: &mut Registry, state_dir: &Path) {
    let Some(d) = DaemonStatus::read(state_dir) else {
        return;
    };
    gauge(
        registry,
        "absync_consecutive_failures",
        "Failed runs in a row",
        i64::from(d.consecutive_failures),
    );
    gauge(
        registry,
        "absync_running",
        "1 while a run is in flight",
        i64::from(d.state == "running"),
    );
    gauge(
        registry,
        "absync_config_error",
        "1 while a new configuration was refused",
        i64::from(d.config_error.is_some()),
    );
    servers(registry, &d.servers);
}

/// Each side's servers as the daemon last saw them. `absync_server_up` is
/// 1 or 0 for a server tried at least once; one not tried yet has no
/// sample (unknown is not down). `absync_server_in_use` is 1 for the
/// server the side's last connection went to, 0 for the others.
fn servers(registry: &mut Registry, servers: &Servers) {
    let up = Family::<Labels, Gauge>::default();
    let in_use = Family::<Labels, Gauge>::default();
    for (side, list) in servers.sides() {
        for s in list {
            let labels = vec![("side", side.to_string()), ("url", label(&s.url))];
            if let Some(u) = s.up {
                up.get_or_create(&labels).set(i64::from(u));
            }
            in_use.get_or_create(&labels).set(i64::from(s.in_use));
        }
    }
    registry.register(
        "absync_server_up",
        "1 when the server answered and bound at its last try, 0 when it failed (a server not tried yet has no sample)",
        up,
    );
    registry.register(
        "absync_server_in_use",
        "1 for the server the side's last connection went to",
        in_use,
    );
}

/// The process, from `/proc/self` (Linux): the standard `process_*`
/// metrics the Prometheus client libraries export.
fn process(registry: &mut Registry) {
    let Some(p) = ProcSelf::read() else {
        return;
    };
    let cpu: Counter<f64, std::sync::atomic::AtomicU64> = Counter::default();
    cpu.inc_by(p.cpu_seconds);
    registry.register(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds",
        cpu,
    );
    gauge(
        registry,
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        p.resident_bytes,
    );
    gauge(
        registry,
        "process_open_fds",
        "Number of open file descriptors",
        p.open_fds,
    );
    gauge_f64(
        registry,
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds",
        p.start_time,
    );
}

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcSelf {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub open_fds: i64,
    pub start_time: f64,
}

/// Clock ticks per second in `/proc` (USER_HZ: 100 on Linux).
const TICKS: f64 = 100.0;

impl ProcSelf {
    pub fn read() -> Option<ProcSelf> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        Self::parse(&stat, &status, &boot, open_fds)
    }

    /// From `/proc/self/stat` (utime, stime, starttime in ticks),
    /// `/proc/self/status` (VmRSS in kB) and `/proc/stat` (btime).
    pub fn parse(stat: &str, status: &str, boot: &str, open_fds: usize) -> Option<ProcSelf> {
        // The command name is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // Fields after the name start at field 3 (state).
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        let cpu_seconds = (field(14)? + field(15)?) / TICKS;
        let btime: f64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let rss_kb: i64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Some(ProcSelf {
            cpu_seconds,
            resident_bytes: rss_kb * 1024,
            open_fds: i64::try_from(open_fds).unwrap_or(i64::MAX),
            start_time: btime + field(22)? / TICKS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_of_metrics_are_served() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { with_body: true }
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { with_body: false }
        );
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            Route::Metrics { with_body: true }
        );
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("GET /metrics/x HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("HEAD /favicon.ico HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("POST /metrics HTTP/1.1\r\n\r\n"), Route::NotAllowed);
        assert_eq!(r("DELETE /metrics HTTP/1.1\r\n\r\n"), Route::NotAllowed);
        assert_eq!(r(""), Route::Bad);
        assert_eq!(r("GET\r\n\r\n"), Route::Bad);
    }

    #[test]
    fn each_server_tried_has_its_health_and_the_one_in_use_is_marked() {
        let health = crate::ldap::servers::Health::default();
        let urls: Vec<String> = ["ldaps://dc1:636", "ldaps://dc\"2\n:636", "ldaps://dc3:636"]
            .map(String::from)
            .to_vec();
        health.down(&urls[0], "connection refused");
        health.up(&urls[1], None);
        let servers = Servers {
            source: Vec::new(),
            target: health.states(&urls),
        };
        let mut registry = Registry::default();
        super::servers(&mut registry, &servers);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "absync_server_up{side=\"target\",url=\"ldaps://dc1:636\"} 0\n",
            // A hostile URL cannot end the label or the line.
            "absync_server_up{side=\"target\",url=\"ldaps://dc\\\"2\\n:636\"} 1\n",
            "absync_server_in_use{side=\"target\",url=\"ldaps://dc\\\"2\\n:636\"} 1\n",
            "absync_server_in_use{side=\"target\",url=\"ldaps://dc1:636\"} 0\n",
            "absync_server_in_use{side=\"target\",url=\"ldaps://dc3:636\"} 0\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
        // Not tried yet: no up sample (unknown is not down).
        assert!(
            !text.contains("absync_server_up{side=\"target\",url=\"ldaps://dc3:636\"}"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn proc_self_is_parsed() {
        let stat = "4242 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 1000 123 456";
        let status = "Name:\tabsync\nVmRSS:\t   2048 kB\n";
        let boot = "cpu 1 2 3\nbtime 1700000000\n";
        let p = ProcSelf::parse(stat, status, boot, 7).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.resident_bytes, 2048 * 1024);
        assert_eq!(p.open_fds, 7);
        assert_eq!(p.start_time, 1_700_000_010.0);
        assert!(ProcSelf::read().is_some(), "this process's own /proc/self");
    }

    #[test]
    fn a_run_in_progress_is_the_daemons_own_and_died_only_to_a_reader_without_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = crate::state::Snapshot::open(dir.path()).unwrap();
            let files = crate::state::runs::FileHashes::default();
            s.start_run("full", &files).unwrap();
        }
        // No process holds the lock: to a reader the run died.
        assert!(render(dir.path()).contains("\nabsync_last_run_failed 1\n"));
        // The daemon, which holds the lock, serves its own run as running
        // without asking /proc/locks (hidden by the unit's ProcSubset=pid).
        let served = render_in_daemon(dir.path());
        assert!(served.contains("\nabsync_last_run_failed 0\n"), "{served}");
    }

    #[test]
    fn the_metrics_text_carries_build_and_process_metrics_without_state() {
        let dir = tempfile::tempdir().unwrap();
        let text = render(dir.path());
        assert!(text.contains(&format!(
            "absync_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(
            text.contains("# TYPE process_cpu_seconds counter"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
