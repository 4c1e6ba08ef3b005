//! The daemon's local interfaces under abuse and as monitoring reads them:
//! the control socket and the metrics port survive a flood of idle
//! connections (past the process's open-file limit), oversized requests,
//! and still serve; the metrics' counters keep rising across a prune; the
//! HTTP routing; queued resyncs merge into one run.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use absync::service::control::{request, Answer, Request};
use absync::service::DaemonStatus;

use crate::common::check::*;
use crate::common::env::SyncEnv;

/// Makes the test's configuration a service's: a schedule far away, a
/// control socket in the test's directory, metrics on a free port.
fn service_config(env: &SyncEnv) -> PathBuf {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let socket = env.dir.join("absync.sock");
    std::fs::write(
        env.config_path(),
        format!(
            "{text}\n[schedule]\ninterval = \"1h\"\n\n[daemon]\nsocket = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            socket.display()
        ),
    )
    .unwrap();
    socket
}

/// `absync run` as a child process, killed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(env: &SyncEnv) -> Daemon {
        let log = env.dir.join("daemon.log");
        let child = Command::new(env!("CARGO_BIN_EXE_absync"))
            .args(["--config", env.config_path().to_str().unwrap(), "run"])
            .env("ABSYNC_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The soft limit on open files, from `/proc/PID/limits`.
    fn soft_fd_limit(&self) -> usize {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.child.id())).unwrap();
        limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap()
    }

    /// Sets the soft limit on open files (util-linux `prlimit`).
    fn set_soft_fd_limit(&self, n: usize) {
        let set = Command::new("prlimit")
            .args([
                "--pid",
                &self.child.id().to_string(),
                &format!("--nofile={n}:"),
            ])
            .status()
            .unwrap();
        assert!(set.success());
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The metrics port of the daemon on `state`, once its first run ended.
fn ready(env: &SyncEnv) -> u16 {
    let state = env.state_dir();
    wait_for("the daemon's first run", Duration::from_secs(90), || {
        let s = DaemonStatus::read(&state)?;
        s.last_run?;
        s.metrics?.rsplit(':').next()?.parse().ok()
    })
}

/// One HTTP request; the whole answer (status line, headers, body).
fn http(port: u16, method: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn resync(socket: &Path, full: bool) -> Answer {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(request(
        socket,
        &Request {
            full,
            allow_deletes: None,
            wait: true,
        },
    ))
    .unwrap()
}

/// A counter's value in the metrics text.
fn value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .unwrap_or_else(|| panic!("no {series} in {metrics}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_leaves_both_sockets_serving() {
    let env = SyncEnv::new("iface-flood", 65, 10, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-FL", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let socket = service_config(&env);
    let env = &env;
    tokio::task::block_in_place(|| {
        let d = Daemon::start(env);
        let port = ready(env);

        // Routing: only /metrics, GET or HEAD.
        let get = http(port, "GET", "/metrics");
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
        assert!(get.contains("absync_runs_total{status=\"ok\"} 1"), "{get}");
        let head = http(port, "HEAD", "/metrics");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        assert!(head.contains("Content-Length: "), "{head}");
        assert!(http(port, "GET", "/").starts_with("HTTP/1.1 404 "));
        assert!(http(port, "GET", "/favicon.ico").starts_with("HTTP/1.1 404 "));
        let post = http(port, "POST", "/metrics");
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        assert!(post.contains("Allow: GET, HEAD"), "{post}");

        // An oversized request line is refused, with an answer.
        let mut big = UnixStream::connect(&socket).unwrap();
        big.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = big.write_all(&vec![b'x'; 64 * 1024]);
        let mut answer = String::new();
        let _ = big.read_to_string(&mut answer);
        assert!(
            answer.contains("request longer than 4096 bytes"),
            "{answer}"
        );
        // An oversized HTTP head is cut off; the port still serves.
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(&vec![b'x'; 64 * 1024]);
        }

        // The flood: idle connections to both, past the daemon's open-file
        // limit (set just above what it uses idle).
        let fds = d.open_fds();
        let limit = fds + 12;
        let soft = d.soft_fd_limit();
        d.set_soft_fd_limit(limit);
        let started = Instant::now();
        let mut idle_unix = Vec::new();
        let mut idle_tcp = Vec::new();
        for _ in 0..100 {
            idle_unix.push(UnixStream::connect(&socket).unwrap());
            idle_tcp.push(std::net::TcpStream::connect(("127.0.0.1", port)).unwrap());
        }
        wait_for(
            "the daemon to run out of file descriptors",
            Duration::from_secs(30),
            || d.log().contains("Too many open files").then_some(()),
        );
        // Held past the read timeout, so the daemon drops idle clients.
        std::thread::sleep(Duration::from_secs(6));
        drop(idle_unix);
        drop(idle_tcp);
        d.set_soft_fd_limit(soft);

        // Both still serve.
        match resync(&socket, false) {
            Answer::Done(report) => assert_eq!(report.code, 0, "{report:?}"),
            other => panic!("{other:?}; log:\n{}", d.log()),
        }
        let after = http(port, "GET", "/metrics");
        assert!(after.starts_with("HTTP/1.1 200 OK"), "{after}");
        assert!(
            after.contains("absync_runs_total{status=\"ok\"} 2"),
            "{after}"
        );
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(60),
            "served again after {took:?}"
        );
        println!("flood: daemon idle with {fds} fds, limit {limit}; served again after {took:?}");
        assert!(
            d.log().contains("cannot accept a connection; retrying"),
            "{}",
            d.log()
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_keep_rising_across_a_prune() {
    let env = SyncEnv::new("iface-prune", 66, 12, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-PR", &codes, ALL_ATTRS, &day(-1), &day(30))]);
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        format!("{text}\n[journal]\nretention = \"1s\"\nallow_short_retention = true\n"),
    )
    .unwrap();
    let state = env.state_dir();
    let add = "absync_changes_total{operation=\"add\",outcome=\"applied\"}";
    let ok = "absync_runs_total{status=\"ok\"}";
    env.sync_ok();
    let first = absync::service::metrics::render(&state);
    let added = value(&first, add);
    assert!(added > 0, "{first}");
    assert_eq!(value(&first, ok), 1);
    // When the agreement ends: the midnight after its last day.
    let until = value(
        &first,
        "absync_agreement_valid_until_timestamp_seconds{agreement=\"DSA-PR\"}",
    );
    let expected = (absync::agreements::today() + time::Duration::days(31))
        .midnight()
        .assume_utc()
        .unix_timestamp();
    assert_eq!(until, expected as u64, "{first}");
    let mut last = (added, 1);
    let gauge = "absync_agreement_valid_until_timestamp_seconds{agreement=\"DSA-PR\"}";
    for run in 2..=4 {
        std::thread::sleep(Duration::from_millis(1100));
        env.sync_ok();
        let m = absync::service::metrics::render(&state);
        let now = (value(&m, add), value(&m, ok));
        assert!(
            now.0 >= last.0 && now.1 > last.1,
            "{last:?} -> {now:?}:\n{m}"
        );
        assert_eq!(now, (added, run), "{m}");
        // The terms went with the records older than a second, and were
        // recorded again first: the gauge stays.
        assert_eq!(value(&m, gauge), until, "{m}");
        last = now;
    }
    // Each prune kept the run that pruned: the journal starts with the
    // last run's own start.
    let kept = env.snapshot().stored_where("1", &[]).unwrap();
    assert_eq!(
        (kept[0].record.run_id, kept[0].record.op.as_str()),
        (4, "run"),
        "{:?}",
        kept.iter()
            .map(|r| (r.id, r.record.run_id, &r.record.op))
            .collect::<Vec<_>>()
    );
    let kept = env.snapshot().runs(100).unwrap();
    assert!(kept.len() < 4, "the prune removed runs: {kept:?}");
    // The gauges beside them.
    let m = absync::service::metrics::render(&state);
    assert!(value(&m, "absync_last_completed_timestamp_seconds") > 0);
    assert_eq!(
        value(&m, "absync_last_completed_timestamp_seconds"),
        value(&m, "absync_last_success_timestamp_seconds")
    );
    assert_eq!(value(&m, "absync_safety_stop"), 0);
    assert_eq!(value(&m, "absync_deletes_withheld"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_queued_resyncs_run_as_one() {
    let env = SyncEnv::new("iface-merge", 67, 30, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-M", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let socket = service_config(&env);
    let env = &env;
    tokio::task::block_in_place(|| {
        let d = Daemon::start(env);
        ready(env);
        let before = env.snapshot().runs(100).unwrap().len();
        // Ten at once: the first to arrive starts a run; the others arrive
        // during it and merge into one queued run, full because one asked.
        let start = std::sync::Barrier::new(10);
        let reports: Vec<Answer> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..10)
                .map(|i| {
                    let (socket, start) = (socket.clone(), &start);
                    s.spawn(move || {
                        start.wait();
                        resync(&socket, i == 5)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut ids = std::collections::BTreeSet::new();
        for r in &reports {
            match r {
                Answer::Done(report) => {
                    assert_eq!(report.code, 0, "{report:?}");
                    ids.insert(report.run_id.unwrap());
                }
                other => panic!("{other:?}"),
            }
        }
        let runs = env.snapshot().runs(100).unwrap();
        assert!(ids.len() <= 2, "ten resyncs ran as {ids:?}");
        assert_eq!(runs.len() - before, ids.len(), "{runs:?}");
        assert!(
            runs[..ids.len()].iter().any(|r| r.mode == "full"),
            "the full request was served by a full run: {runs:?}"
        );
        assert!(
            d.log()
                .contains("resync merged into the one already queued"),
            "{}",
            d.log()
        );
    });
}
