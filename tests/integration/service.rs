//! The service: `absync run` as a subprocess (as systemd runs it, with a
//! NOTIFY_SOCKET the test reads) and in-process; resync, reload, status,
//! metrics (each server's health among them), lock, shutdown; and the
//! systemd unit checked offline.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::check::*;
use crate::common::env::{Run, SyncEnv};

/// A daemon started as systemd would, with a notify socket that is read
/// all the time (as systemd does: an unread socket would block the sender).
struct Daemon {
    child: Child,
    messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(env: &SyncEnv) -> Daemon {
        let sock = env.dir.join("notify.sock");
        let _ = std::fs::remove_file(&sock);
        let notify = UnixDatagram::bind(&sock).unwrap();
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                sink.lock().unwrap().push(msg);
            }
        });
        let log = env.dir.join("daemon.log");
        let child = Command::new(env!("CARGO_BIN_EXE_absync"))
            .args(["--config", env.config_path().to_str().unwrap(), "run"])
            .env("NOTIFY_SOCKET", &sock)
            .env("WATCHDOG_USEC", "2000000")
            .env("ABSYNC_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child,
            messages,
            log,
        }
    }

    /// Waits for a notify message containing `what`.
    fn expect(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(m) = self
                .messages
                .lock()
                .unwrap()
                .iter()
                .find(|m| m.contains(what))
            {
                return m.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no {what} from the daemon; log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop within {within:?}; log:\n{}",
                self.log()
            );
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

fn service_config(env: &SyncEnv, extra: &str) {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let socket = env.dir.join("absync.sock");
    std::fs::write(
        env.config_path(),
        format!(
            "{text}\n[schedule]\ninterval = \"1h\"\n\n[daemon]\nsocket = \"{}\"\n{extra}",
            socket.display()
        ),
    )
    .unwrap();
}

/// Runs the absync binary with another configuration file.
fn absync_with(config: &std::path::Path, args: &[&str]) -> crate::common::env::Run {
    let out = Command::new(env!("CARGO_BIN_EXE_absync"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("ABSYNC_LOG", "warn")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("RUNTIME_DIRECTORY")
        .output()
        .unwrap();
    crate::common::env::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(text.as_bytes()))
}

/// The reload records of the journal, oldest first.
fn reloads(env: &SyncEnv) -> Vec<absync::state::journal::Record> {
    env.snapshot()
        .stored_where("op = 'reload'", &[])
        .unwrap()
        .into_iter()
        .map(|s| s.record)
        .collect()
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

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_syncs_takes_resyncs_reloads_reports_and_stops_cleanly() {
    let env = SyncEnv::new("daemon", 61, 40, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-D", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    // One delete is allowed per run: more stop at the threshold.
    env.set_safety("[safety]\ndelete_grace = \"0\"\nmax_deletes = 1\nmax_delete_percent = 100\n");
    // Port 0: the daemon picks a free port and tells `absync status`.
    service_config(&env, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    // An admin's view of the same configuration: the password files are
    // not there for them (root's, or handed to the service by systemd).
    let admin = env.dir.join("admin.toml");
    let mut admin_text = std::fs::read_to_string(env.config_path()).unwrap();
    for key in ["SOURCE_SYNC_PASSWORD_FILE", "TARGET_SVC_PASSWORD_FILE"] {
        admin_text = admin_text.replace(env.tb.get(key), "/nonexistent/absync.pw");
    }
    std::fs::write(&admin, admin_text).unwrap();
    let env = &env;
    tokio::task::block_in_place(|| {
        let mut d = Daemon::start(env);
        d.expect("READY=1");
        d.expect("WATCHDOG=1");
        d.expect("STATUS=idle; next run");

        // The first run starts at once.
        let first = wait_for("the first run", || env.latest_ended_run());
        assert_eq!(first.status, "ok", "{}", d.log());
        assert_eq!(first.mode, "full", "a fresh state starts with a full run");
        assert!(!by_anchor(&env.ad_objects_blocking()).is_empty());

        // One daemon per state directory; a manual sync is refused too.
        let second = Command::new(env!("CARGO_BIN_EXE_absync"))
            .args(["--config", env.config_path().to_str().unwrap(), "run"])
            .output()
            .unwrap();
        assert_eq!(second.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&second.stderr).contains("is in use by another absync"));
        let manual = env.absync(&["sync"]);
        assert_eq!(manual.code, 2, "{manual:?}");
        assert!(
            manual.stderr.contains("the absync daemon is running")
                && manual.stderr.contains("`absync resync`"),
            "{manual:?}"
        );

        // status shows the daemon; metrics answer.
        let status = env.absync(&["status"]);
        assert!(status.stdout.contains("daemon     pid"), "{status:?}");
        assert!(status.stdout.contains("next run   20"), "{status:?}");
        let port = metrics_port(&status);
        let metrics = http_get(port, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
        assert!(
            metrics.contains("absync_runs_total{status=\"ok\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("absync_managed_objects{hidden=\"false\"}"),
            "{metrics}"
        );

        // A source change, then `absync resync`: it waits and prints the summary.
        let new_uid = format!("svc{}", std::process::id());
        env.change_source(&format!(
            "dn: uid={new_uid},ou=People,{}\nchangetype: add\nobjectClass: inetOrgPerson\nobjectClass: nhsPerson\nuid: {new_uid}\ncn: Nia Resync\nsn: Resync\ngivenName: Nia\nnhsOdsCode: {}\nnhsEntryStatus: active\n\n",
            env.source_base, codes[0]
        ));
        let resync = env.absync(&["resync", "--full"]);
        assert_eq!(resync.code, 0, "{resync:?}\n{}", d.log());
        assert!(resync.stderr.contains("added 1,"), "{resync:?}");
        let snap = env.snapshot();
        let run = snap.runs(1).unwrap()[0].clone();
        assert_eq!(run.mode, "full", "{run:?}");
        let request = snap
            .stored_where("run_id = ?1 AND op = 'request'", &[&run.id])
            .unwrap();
        assert_eq!(request.len(), 1);
        // The user the socket's peer credentials name: the one who ran
        // the command (this test's uid and login uid).
        let me = absync::os::Who::me();
        assert_eq!(
            request[0].record.reason,
            format!("resync requested by {me}"),
            "{request:?}"
        );
        let detail = request[0].record.detail.clone().unwrap();
        assert_eq!(detail["unix_user"], me.text.as_str(), "{detail}");
        assert_eq!(detail["uid"], me.uid, "{detail}");
        assert_eq!(detail["login_uid"], me.login_uid.unwrap(), "{detail}");
        assert_eq!(detail["full"], true, "{detail}");

        // An admin without the passwords: resync and status still work.
        let resync = absync_with(&admin, &["resync"]);
        assert_eq!(resync.code, 0, "{resync:?}\n{}", d.log());
        assert!(resync.stderr.contains("added 0,"), "{resync:?}");
        let status = absync_with(&admin, &["status"]);
        assert_eq!(status.code, 0, "{status:?}");
        assert!(status.stdout.contains("daemon     pid"), "{status:?}");
        let sync = absync_with(&admin, &["sync"]);
        assert_eq!(sync.code, 2, "the daemon does the runs: {sync:?}");
        assert!(sync.stderr.contains("`absync resync`"), "{sync:?}");
        // The socket is the access control: mode 0660, owned by the service
        // user; anyone else cannot even connect.
        let socket = env.dir.join("absync.sock");
        let meta = std::fs::metadata(&socket).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o660
        );
        let outsider = Command::new("runuser")
            .args(["-u", "nobody", "--", "python3", "-c"])
            .arg(format!(
                "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
                socket.to_str().unwrap()
            ))
            .output()
            .unwrap();
        assert!(!outsider.status.success());
        assert!(
            String::from_utf8_lossy(&outsider.stderr).contains("PermissionError"),
            "{outsider:?}"
        );
        let queued = env.absync(&["resync", "--no-wait"]);
        assert_eq!(queued.code, 0);
        assert!(queued.stdout.contains("resync requested"));

        // A broken configuration on SIGHUP: the old one stays; the error is
        // shown with its file and line, and journaled.
        let good = std::fs::read_to_string(env.config_path()).unwrap();
        std::fs::write(
            env.config_path(),
            good.replace("page_size = 200", "page_size = \"many\""),
        )
        .unwrap();
        let broken = std::fs::read_to_string(env.config_path()).unwrap();
        d.signal("HUP");
        d.expect("RELOADING=1");
        let state = env.state_dir();
        let state = state.to_str().unwrap();
        let status = wait_for("the refused reload", || {
            let s = env.absync(&["status", "--state", state]);
            s.stdout.contains("REFUSED").then_some(s)
        });
        assert!(
            status
                .stdout
                .contains(&format!("{}:", env.config_path().display())),
            "{status:?}"
        );
        assert!(status.stdout.contains("page_size"), "{status:?}");
        // Journaled with the hashes of the config in force and of the
        // refused candidate.
        let rejected = wait_for("the journaled refusal", || {
            reloads(env).into_iter().find(|r| r.outcome == "rejected")
        });
        let detail = rejected.detail.clone().unwrap();
        assert_eq!(detail["before"]["config"], sha256(&good), "{detail}");
        assert_eq!(detail["after"]["config"], sha256(&broken), "{detail}");
        assert_ne!(detail["before"]["config"], detail["after"]["config"]);
        // A password file given as the configuration (a mistake, or an
        // attack): refused naming the file and line, never quoting it,
        // in the status and in the journal.
        std::fs::write(env.config_path(), "hunter2-secret\n").unwrap();
        let secret = wait_for("the refused password file", || {
            reloads(env).into_iter().find(|r| {
                r.detail
                    .as_ref()
                    .is_some_and(|d| d["after"]["config"] == sha256("hunter2-secret\n"))
            })
        });
        let error = secret.error.clone().unwrap();
        assert!(
            error.starts_with(&format!(
                "{}:1: column 15: not TOML",
                env.config_path().display()
            )),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
        let s = env.absync(&["status", "--state", state]);
        assert!(
            s.stdout.contains("REFUSED") && !s.stdout.contains("hunter2"),
            "{s:?}"
        );
        // Still serving, with the old configuration.
        let resync = env.absync(&["resync"]);
        assert_eq!(
            resync.code, 2,
            "the CLI itself reads the broken config: {resync:?}"
        );
        std::fs::write(env.config_path(), &good).unwrap();
        // Fixed: the file watcher reloads it without a signal.
        wait_for("the reload of the fixed file", || {
            let s = env.absync(&["status", "--state", state]);
            (s.code == 0 && !s.stdout.contains("REFUSED")).then_some(())
        });
        let resync = env.absync(&["resync"]);
        assert_eq!(resync.code, 0, "{resync:?}");

        // The control socket is set up once: a new one is refused, with
        // the way out; the old one keeps serving.
        let other = env.dir.join("other.sock");
        let socket_line = format!("socket = \"{}\"", socket.display());
        std::fs::write(
            env.config_path(),
            good.replace(&socket_line, &format!("socket = \"{}\"", other.display())),
        )
        .unwrap();
        let status = wait_for("the refused socket change", || {
            let s = env.absync(&["status", "--state", state]);
            s.stdout.contains("REFUSED").then_some(s)
        });
        assert!(
            status.stdout.contains("daemon.socket") && status.stdout.contains("restart"),
            "{status:?}"
        );
        std::fs::write(env.config_path(), &good).unwrap();
        wait_for("the reload of the restored file", || {
            let s = env.absync(&["status", "--state", state]);
            (s.code == 0 && !s.stdout.contains("REFUSED")).then_some(())
        });
        assert!(!other.exists());

        // A threshold stop: an admin sees it in status and in the metrics.
        let kept = vec![codes[0].clone()];
        env.write_agreements(&[("DSA-D", &kept, ALL_ATTRS, &day(-1), &day(1))]);
        let stopped = absync_with(&admin, &["resync"]);
        assert_eq!(stopped.code, 3, "{stopped:?}\n{}", d.log());
        let status = absync_with(&admin, &["status"]);
        assert!(
            status.stdout.contains("attention  run")
                && status.stdout.contains("stopped: deletion threshold"),
            "{status:?}"
        );
        let metrics = http_get(port, "/metrics");
        assert!(metrics.contains("\nabsync_safety_stop 1\n"), "{metrics}");
        let bytes: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("absync_state_bytes "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no absync_state_bytes in {metrics}"));
        let on_disk = std::fs::metadata(env.state_dir().join("absync.db"))
            .unwrap()
            .len();
        assert!(bytes >= on_disk && on_disk > 0, "{bytes} < {on_disk}");
        // The agreements change was reloaded, its hashes journaled.
        let changed = wait_for("the reload of the agreements", || {
            reloads(env).into_iter().rev().find(|r| {
                r.outcome == "applied"
                    && r.detail
                        .as_ref()
                        .is_some_and(|d| d["before"]["agreements"] != d["after"]["agreements"])
            })
        });
        assert!(changed.reason.contains("agreements.toml"), "{changed:?}");

        // SIGTERM: a clean stop.
        d.signal("TERM");
        d.expect("STOPPING=1");
        let exit = d.wait_exit(Duration::from_secs(30));
        assert!(exit.success(), "{exit:?}\n{}", d.log());
        assert!(!env.dir.join("absync.sock").exists());
        let after = env.absync(&["status"]);
        assert!(after.stdout.contains("daemon     not running"), "{after:?}");
        let nobody = env.absync(&["resync"]);
        assert_eq!(nobody.code, 2);
        assert!(
            nobody.stderr.contains("no absync daemon is running")
                && nobody.stderr.contains("absync sync"),
            "{nobody:?}"
        );
        let verify = env.absync(&["journal", "verify"]);
        assert_eq!(verify.code, 0, "{verify:?}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_the_middle_of_a_run_stops_cleanly_and_loses_nothing() {
    let env = SyncEnv::new("daemon-term", 62, 900, 4, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-T", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    service_config(&env, "");
    let env = &env;
    tokio::task::block_in_place(|| {
        let mut d = Daemon::start(env);
        d.expect("READY=1");
        wait_for("a run in flight", || {
            (env.ad_count_blocking() >= 50).then_some(())
        });
        let t = Instant::now();
        d.signal("TERM");
        let exit = d.wait_exit(Duration::from_secs(60));
        assert!(exit.success(), "{exit:?}\n{}", d.log());
        let stopped_in = t.elapsed();
        let snap = env.snapshot();
        let run = snap.runs(1).unwrap()[0].clone();
        assert!(
            run.status.starts_with("failed: interrupted (shutdown)"),
            "{run:?} after {stopped_in:?}"
        );
        let landed = env.ad_count_blocking();
        assert_eq!(
            snap.count().unwrap() as usize,
            landed,
            "snapshot = AD after the stop"
        );
        assert!(snap.intents().unwrap().is_empty(), "nothing left in flight");
        // The next run converges.
        env.sync_ok();
        assert_ad_holds_expected(env, &codes, "after the stop");

        // A stop while deletes are being applied: the run ends between two
        // deletes, each applied delete committed and journaled.
        let kept = vec![codes[0].clone()];
        env.write_agreements(&[("DSA-T", &kept, ALL_ATTRS, &day(-1), &day(1))]);
        let before = env.ad_count_blocking();
        let mut d = Daemon::start(env);
        d.expect("READY=1");
        wait_for("deletes in flight", || {
            (env.ad_count_blocking() + 30 <= before).then_some(())
        });
        d.signal("TERM");
        let exit = d.wait_exit(Duration::from_secs(60));
        assert!(exit.success(), "{exit:?}\n{}", d.log());
        let snap = env.snapshot();
        let run = snap.runs(1).unwrap()[0].clone();
        assert!(
            run.status.starts_with("failed: interrupted (shutdown)")
                && run.status.contains("deletes applied before the stop"),
            "{run:?}"
        );
        let landed = env.ad_count_blocking();
        let expected = expected_anchors(&env.source_people_blocking(), &kept).len();
        assert!(
            landed > expected,
            "the run stopped before its last delete ({landed} left, {expected} when done)"
        );
        assert_eq!(snap.count().unwrap() as usize, landed, "snapshot = AD");
        assert!(snap.intents().unwrap().is_empty(), "nothing left in flight");
        let deleted = snap
            .stored_where(
                "run_id = ?1 AND op = 'delete' AND outcome = 'applied'",
                &[&run.id],
            )
            .unwrap();
        assert_eq!(deleted.len(), before - landed, "each delete journaled once");
        let verify = env.absync(&["journal", "verify"]);
        assert_eq!(verify.code, 0, "{verify:?}");
        env.sync_ok();
        assert_ad_holds_expected(env, &kept, "after the stop in the deletes");
    });
}

#[tokio::test]
async fn in_process_the_schedule_fires_and_a_trigger_runs_at_once() {
    let env = SyncEnv::new("daemon-inproc", 63, 10, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-I", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    service_config(&env, "");
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        text.replace("interval = \"1h\"", "interval = \"2s\""),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(absync::service::serve(
        env.config_path(),
        async move {
            let _ = stop_rx.await;
        },
        rx,
        tx.clone(),
        std::sync::Arc::new(absync::service::Silent),
    ));
    let runs = |env: &SyncEnv| env.snapshot().runs(100).unwrap_or_default().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs(&env) < 3 {
        assert!(Instant::now() < deadline, "the schedule did not fire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    tx.send(absync::service::Trigger::Resync {
        allow_deletes: None,
        full: true,
        by: absync::os::Who::me(),
        reply: Some(reply_tx),
    })
    .await
    .unwrap();
    let report = reply_rx.await.unwrap();
    assert_eq!(report.code, 0, "{report:?}");
    let snap = env.snapshot();
    let run = snap.runs(1).unwrap()[0].clone();
    assert_eq!(Some(run.id), report.run_id);
    assert_eq!(run.mode, "full");
    stop_tx.send(()).unwrap();
    daemon.await.unwrap().unwrap();
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let root = crate::common::testbed::repo_root();
    let unit = std::fs::read_to_string(root.join("systemd/absync.service")).unwrap();
    // No core dump holds the passwords.
    assert!(unit.lines().any(|l| l == "LimitCORE=0"), "{unit}");
    // A daemon that cannot start is not restarted every 30 s forever.
    assert!(
        unit.lines().any(|l| l == "RestartPreventExitStatus=2"),
        "{unit}"
    );
    // Checked as installed, with the binary where the package puts it.
    let dir = std::env::temp_dir().join(crate::common::unique("unit"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("absync.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/absync", env!("CARGO_BIN_EXE_absync")),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd)");
    let text = String::from_utf8_lossy(&verify.stderr).to_string()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && text.trim().is_empty(), "{text}");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&security.stdout);
    let score: f64 = out
        .lines()
        .find_map(|l| l.split("exposure level for absync.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{out}");
}

/// The unit's RestartPreventExitStatus=2 relies on this: `absync run` exits
/// 2 at once, naming the file and line, when its configuration is refused,
/// whereas a run that fails (see the backoff test below) never ends it.
#[test]
fn the_daemon_exits_2_at_once_on_a_broken_configuration() {
    let dir = std::env::temp_dir().join(crate::common::unique("broken"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("absync.toml");
    std::fs::write(
        &path,
        "[source]\nurl = \"ldaps://127.0.0.1:1\"\nbind_dn = 12\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["--config", path.to_str().unwrap(), "run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("absync.toml:3: bind_dn"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "not at once");
}

#[test]
fn init_writes_a_starter_config_that_only_lacks_real_servers() {
    let dir = std::env::temp_dir().join(crate::common::unique("init"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("absync.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["init", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let again = Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["init", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "never overwrites");
    // It parses: the first complaint is a file this machine lacks (the
    // source's CA), not the syntax.
    let check = Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["--config", path.to_str().unwrap(), "check"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(2));
    assert!(
        err.contains("source.ca_file") && err.contains("does not exist"),
        "{err}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let c = Command::new(env!("CARGO_BIN_EXE_absync"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(c.status.success() && String::from_utf8_lossy(&c.stdout).contains("resync"));
    }
    let man = Command::new(env!("CARGO_BIN_EXE_absync"))
        .arg("man")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH absync"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_is_retried_with_backoff_and_shows_in_status_and_metrics() {
    let env = SyncEnv::new("daemon-retry", 64, 10, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-F", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    service_config(&env, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    // The source is down: nothing listens on its port.
    let url = env.tb.get("SOURCE_URL").to_string();
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        text.replacen(&url, "ldaps://127.0.0.1:1", 1),
    )
    .unwrap();
    let env = &env;
    tokio::task::block_in_place(|| {
        let mut d = Daemon::start(env);
        d.expect("READY=1");
        let state = env.state_dir();
        let status = wait_for("a failed run", || {
            let s = env.absync(&["status", "--state", state.to_str().unwrap()]);
            s.stdout.contains("failures   1 runs in a row").then_some(s)
        });
        // Retried in 30 s, not in a busy loop and not only at the next hour.
        let next = status
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("next run   "))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string();
        let next =
            time::OffsetDateTime::parse(&next, &time::format_description::well_known::Rfc3339)
                .unwrap();
        let wait = next - time::OffsetDateTime::now_utc();
        assert!(
            wait > time::Duration::seconds(20) && wait <= time::Duration::seconds(31),
            "next run in {wait}: {status:?}"
        );
        assert_eq!(env.snapshot().runs(10).unwrap().len(), 1, "no busy loop");
        let metrics = absync::service::metrics::render(&state);
        assert!(metrics.contains("absync_last_run_failed 1"), "{metrics}");
        assert!(
            metrics.contains("absync_consecutive_failures 1"),
            "{metrics}"
        );
        assert!(d.log().contains("connection refused"), "{}", d.log());
        d.signal("TERM");
        assert!(d.wait_exit(Duration::from_secs(30)).success());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_shows_each_servers_health_in_status_and_metrics() {
    let env = SyncEnv::new("daemon-servers", 66, 10, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-H", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    service_config(&env, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    // The first source server is down (nothing listens on port 1); the
    // second is the real one.
    let dead = "ldaps://127.0.0.1:1";
    let source = env.tb.get("SOURCE_URL").to_string();
    let target = env.tb.get("TARGET_URL").to_string();
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        text.replacen(
            &format!("url = \"{source}\""),
            &format!("urls = [\"{dead}\", \"{source}\"]"),
            1,
        ),
    )
    .unwrap();
    let env = &env;
    tokio::task::block_in_place(|| {
        let mut d = Daemon::start(env);
        d.expect("READY=1");
        let first = wait_for("the first run", || env.latest_ended_run());
        assert_eq!(first.status, "ok", "failed over to the second: {}", d.log());
        let status = wait_for("the servers in status", || {
            let s = env.absync(&["status"]);
            s.stdout.contains("up, in use").then_some(s)
        });
        // A line per server under its side, the URLs in one column.
        let lines: Vec<&str> = status.stdout.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with(&format!("source     {dead} ")))
            .unwrap_or_else(|| panic!("no source servers: {status:?}"));
        let said = |i: usize, url: &str| {
            let rest = lines[at + i].get(11..).unwrap_or_default();
            let state = rest.strip_prefix(url).map(str::trim_start);
            state.unwrap_or_else(|| panic!("{url} not on line {i}: {status:?}"))
        };
        let down = said(0, dead);
        assert!(
            down.starts_with("DOWN: ")
                && down.contains("connection refused")
                && down.contains("; tried 20"),
            "{status:?}"
        );
        assert!(
            said(1, &source).starts_with("up, in use; checked 20"),
            "{status:?}"
        );
        assert!(lines[at + 2].starts_with("target     "), "{status:?}");
        assert!(said(2, &target).starts_with("up, in use"), "{status:?}");

        let port = metrics_port(&status);
        let metrics = http_get(port, "/metrics");
        for line in [
            format!("absync_server_up{{side=\"source\",url=\"{dead}\"}} 0\n"),
            format!("absync_server_up{{side=\"source\",url=\"{source}\"}} 1\n"),
            format!("absync_server_up{{side=\"target\",url=\"{target}\"}} 1\n"),
            format!("absync_server_in_use{{side=\"source\",url=\"{dead}\"}} 0\n"),
            format!("absync_server_in_use{{side=\"source\",url=\"{source}\"}} 1\n"),
            format!("absync_server_in_use{{side=\"target\",url=\"{target}\"}} 1\n"),
        ] {
            assert!(metrics.contains(&line), "{line}{metrics}");
        }

        let json = env.absync(&["status", "--format", "json"]);
        let j: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        let servers = &j["daemon"]["servers"];
        assert_eq!(servers["source"][0]["url"], dead, "{j}");
        assert_eq!(servers["source"][0]["up"], false, "{j}");
        assert!(
            servers["source"][0]["error"]
                .as_str()
                .is_some_and(|e| e.contains("connection refused")),
            "{j}"
        );
        assert_eq!(servers["source"][1]["in_use"], true, "{j}");
        assert_eq!(servers["target"][0]["up"], true, "{j}");
        d.signal("TERM");
        assert!(d.wait_exit(Duration::from_secs(30)).success());
    });
}

/// The metrics port `absync status` names (`metrics    http://127.0.0.1:PORT/metrics`).
fn metrics_port(status: &Run) -> u16 {
    status
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("metrics    http://127.0.0.1:"))
        .and_then(|l| l.strip_suffix("/metrics"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {status:?}"))
}
