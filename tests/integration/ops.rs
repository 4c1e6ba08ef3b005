//! An admin's paths through the running service (release held deletes with
//! `resync --allow-deletes`, `sync` while the daemon runs) and the health
//! a monitoring system reads (`status --check`, `status --format json`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::check::*;
use crate::common::env::{Run, SyncEnv};

/// `absync run` as a subprocess, stopped (SIGTERM) when dropped.
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
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no stop; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The config as the service has it: an hourly schedule and a socket.
fn service_config(env: &SyncEnv) {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let socket = env.dir.join("absync.sock");
    std::fs::write(
        env.config_path(),
        format!(
            "{text}\n[schedule]\ninterval = \"1h\"\n\n[daemon]\nsocket = \"{}\"\n",
            socket.display()
        ),
    )
    .unwrap();
}

/// An admin's copy of the configuration, in a directory anyone may read,
/// without the password files (they are root's, or the service's).
fn admin_config(env: &SyncEnv) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = env.dir.join("admin");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut text = std::fs::read_to_string(env.config_path()).unwrap();
    for key in ["SOURCE_SYNC_PASSWORD_FILE", "TARGET_SVC_PASSWORD_FILE"] {
        text = text.replace(env.tb.get(key), "/nonexistent/absync.pw");
    }
    let file = dir.join("absync.toml");
    std::fs::write(&file, text).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    file
}

/// Runs absync as `nobody`, with `groups` as its supplementary groups
/// ("0": the group of the service's socket here, as the absync group is
/// on a packaged install).
fn absync_as_nobody(groups: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534"]);
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        cmd.arg(format!("--groups={groups}"));
    }
    let out = cmd
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_absync"))
        .args(args)
        .env("ABSYNC_LOG", "warn")
        .env_remove("ABSYNC_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .current_dir("/")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_allow_deletes_releases_a_threshold_stop_journaled_with_the_requester() {
    let env = SyncEnv::new("ops-release", 71, 30, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-O", &codes, ALL_ATTRS, &day(-1), &day(400))]);
    // One delete is allowed per run: more stop at the threshold.
    env.set_safety("[safety]\ndelete_grace = \"0\"\nmax_deletes = 1\nmax_delete_percent = 100\n");
    service_config(&env);
    let admin = admin_config(&env);
    let admin = admin.to_str().unwrap();
    let env = &env;
    tokio::task::block_in_place(|| {
        let mut d = Daemon::start(env);
        let first = wait_for("the first run", || env.latest_ended_run());
        assert_eq!(first.status, "ok", "{}", d.log());
        let before = env.ad_count_blocking();

        // `sync` while the daemon runs: refused, with the command that works.
        let sync = env.absync(&["sync", "--allow-deletes", "5"]);
        assert_eq!(sync.code, 2, "{sync:?}");
        assert!(
            sync.stderr
                .contains("ask it with `absync resync --allow-deletes 5`"),
            "{sync:?}"
        );
        let sync = absync_as_nobody("0", &["--config", admin, "sync", "--full"]);
        assert_eq!(sync.code, 2, "{sync:?}");
        assert!(sync.stderr.contains("`absync resync --full`"), "{sync:?}");

        // An organisation leaves the agreement: its deletes stop at the
        // threshold, and the monitoring check says so.
        env.write_agreements(&[("DSA-O", &codes[..1], ALL_ATTRS, &day(-1), &day(400))]);
        let stopped = env.absync(&["resync"]);
        assert_eq!(stopped.code, 3, "{stopped:?}\n{}", d.log());
        let held = env.snapshot().runs(1).unwrap()[0]
            .counts
            .clone()
            .unwrap()
            .withheld;
        assert!(held > 1, "{stopped:?}");
        let check = env.absync(&["status", "--check"]);
        assert_eq!(check.code, 2, "{check:?}");
        assert!(
            check
                .stdout
                .starts_with("ABSYNC CRITICAL - stopped: deletion threshold")
                && check.stdout.contains(&format!("withheld={held};;1")),
            "{check:?}"
        );

        // A non-root admin in the socket's group releases them through the
        // daemon; the override names the admin, not the service's user.
        let released = absync_as_nobody(
            "0",
            &["--config", admin, "resync", "--allow-deletes", "1000"],
        );
        assert_eq!(released.code, 0, "{released:?}\n{}", d.log());
        assert!(
            released.stderr.contains(&format!("deleted {held};")),
            "{released:?}"
        );
        assert_eq!(env.ad_count_blocking(), before - held as usize);
        let snap = env.snapshot();
        let run = snap.runs(1).unwrap()[0].clone();
        let of = |op: &str| {
            snap.stored_where("run_id = ?1 AND op = ?2", &[&run.id, &op])
                .unwrap()
        };
        let over = of("override");
        assert_eq!(over.len(), 1, "{over:?}");
        let record = &over[0].record;
        assert!(
            record.reason.starts_with("--allow-deletes 1000 by nobody"),
            "{record:?}"
        );
        assert_eq!(record.detail.as_ref().unwrap()["uid"], 65534, "{record:?}");
        assert_eq!(
            record.error.as_deref(),
            Some(format!("{held} deletes released, 0 still held").as_str())
        );
        let request = of("request");
        assert!(
            request[0]
                .record
                .reason
                .starts_with("resync requested by nobody"),
            "{request:?}"
        );

        // Healthy again; the JSON status names the daemon and the run.
        let check = env.absync(&["status", "--check"]);
        assert_eq!(check.code, 0, "{check:?}");
        assert!(
            check.stdout.starts_with("ABSYNC OK - last run"),
            "{check:?}"
        );
        assert!(check.stdout.contains("daemon_running=1"), "{check:?}");
        let json = env.absync(&["status", "--format", "json"]);
        assert_eq!(json.code, 0, "{json:?}");
        let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(v["daemon"]["pid"], d.child.id(), "{v}");
        assert_eq!(v["deletes_held"], false, "{v}");
        assert_eq!(v["runs"][0]["id"], run.id, "{v}");
        assert_eq!(v["runs"][0]["counts"]["deleted"], held, "{v}");
        assert_eq!(v["managed"], snap.count_visible().unwrap(), "{v}");

        d.stop();
        let json = env.absync(&["status", "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        assert!(v["daemon"].is_null(), "{v}");
        // With the daemon stopped, `sync` runs again.
        let sync = env.absync(&["sync"]);
        assert_eq!(sync.code, 0, "{sync:?}");
    });
}

/// `status --check` for `env`, with more arguments.
fn check(env: &SyncEnv, more: &[&str]) -> Run {
    let mut args = vec!["status", "--check"];
    args.extend_from_slice(more);
    env.absync(&args)
}

fn expect(run: &Run, code: i32, first: &str, text: &str) {
    assert_eq!(run.code, code, "{run:?}");
    assert!(run.stdout.starts_with(first), "{run:?}");
    assert!(run.stdout.contains(text), "{run:?}");
}

#[tokio::test]
async fn status_check_gives_each_plugin_state_in_its_situation() {
    let env = SyncEnv::new("ops-check", 72, 20, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    let all = |until: &str| {
        env.write_agreements(&[("DSA-C", &codes, ALL_ATTRS, &day(-1), until)]);
    };
    all(&day(400));
    service_config(&env);
    env.sync_ok();
    let ok = check(&env, &[]);
    expect(
        &ok,
        0,
        "ABSYNC OK - last run 1 completed",
        " | last_completed_age=",
    );
    assert!(
        ok.stdout.contains(";;10800 "),
        "--max-age is 3 x the 1h schedule: {ok:?}"
    );

    // Stale: nothing completed within --max-age.
    std::thread::sleep(Duration::from_secs(2));
    let stale = check(&env, &["--max-age", "1s"]);
    expect(
        &stale,
        2,
        "ABSYNC CRITICAL - the last completed run (1)",
        "over --max-age 1s",
    );

    // A copy whose journal was edited fails verify.
    let copy = env.dir.join("tampered");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(env.state_dir().join("absync.db"), copy.join("absync.db")).unwrap();
    rusqlite::Connection::open(copy.join("absync.db"))
        .unwrap()
        .execute_batch("UPDATE journal SET reason = 'nothing to see' WHERE id = 2;")
        .unwrap();
    let broken = check(&env, &["--state", copy.to_str().unwrap()]);
    expect(
        &broken,
        2,
        "ABSYNC CRITICAL - journal fails verify: record 2",
        "",
    );

    // Runs that fail in a row: a warning.
    let good = std::fs::read_to_string(env.config_path()).unwrap();
    let url = env.tb.get("SOURCE_URL").to_string();
    std::fs::write(
        env.config_path(),
        good.replacen(&url, "ldaps://127.0.0.1:1", 1),
    )
    .unwrap();
    for _ in 0..2 {
        assert_eq!(env.absync(&["sync"]).code, 2);
    }
    std::fs::write(env.config_path(), &good).unwrap();
    let failing = check(&env, &[]);
    expect(
        &failing,
        1,
        "ABSYNC WARNING - 2 runs in a row could not run",
        " failures=2;2 ",
    );
    env.sync_ok();
    expect(&check(&env, &[]), 0, "ABSYNC OK", "");

    // An agreement ending within 30 days: a warning; expired: critical.
    all(&day(10));
    env.sync_ok();
    expect(
        &check(&env, &[]),
        1,
        "ABSYNC WARNING - agreement DSA-C ends in 10 days",
        "agreement_days_left=10;30;0",
    );
    env.write_agreements(&[
        ("DSA-C", &codes, ALL_ATTRS, &day(-1), &day(400)),
        ("DSA-OLD", &codes[..1], ALL_ATTRS, &day(-30), &day(-1)),
    ]);
    env.sync_ok();
    expect(
        &check(&env, &[]),
        2,
        "ABSYNC CRITICAL - agreement DSA-OLD has expired",
        "",
    );

    // Deletes held at the threshold: critical.
    all(&day(400));
    env.sync_ok();
    env.set_safety("[safety]\ndelete_grace = \"0\"\nmax_deletes = 1\nmax_delete_percent = 100\n");
    env.write_agreements(&[("DSA-C", &codes[..1], ALL_ATTRS, &day(-1), &day(400))]);
    assert_eq!(env.absync(&["sync"]).code, 3);
    expect(
        &check(&env, &[]),
        2,
        "ABSYNC CRITICAL - stopped: deletion threshold",
        "resync --allow-deletes N",
    );

    // A user who may not read the state: unknown, said plainly.
    let state = env.state_dir();
    let state = state.to_str().unwrap();
    let unreadable = absync_as_nobody("", &["status", "--check", "--state", state]);
    expect(
        &unreadable,
        3,
        "ABSYNC UNKNOWN - cannot read the state: permission denied",
        "run as root",
    );
    let status = absync_as_nobody("", &["status", "--state", state]);
    assert_eq!(status.code, 2, "{status:?}");
    assert!(
        status.stderr.contains("permission denied reading")
            && status.stderr.contains("run as root"),
        "{status:?}"
    );
    assert!(Path::new(state).exists());
}
