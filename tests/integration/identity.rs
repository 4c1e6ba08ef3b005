//! Who the journal says did it: the kernel's real uid and login uid, named
//! through NSS, never an environment variable. `sync`, `sync
//! --allow-deletes` and a resync over the socket, run the way an admin
//! runs them (under another login uid, with `SUDO_USER` claiming someone
//! else, as another Unix user), and the names checked against `id`.

use std::process::Command;

use crate::common::check::*;
use crate::common::env::{Run, SyncEnv};

/// `id -nu UID`: the name the system gives a uid, or `uid N`.
fn name_of(uid: u32) -> String {
    let out = Command::new("id")
        .args(["-nu", &uid.to_string()])
        .output()
        .unwrap();
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        format!("uid {uid}")
    }
}

fn my_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// This test process's login uid (4294967295: none), which its children
/// inherit.
fn my_login_uid() -> u32 {
    std::fs::read_to_string("/proc/self/loginuid")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// What the journal must say for a uid and a login uid.
fn expected(uid: u32, login: u32) -> String {
    if login == u32::MAX || login == uid {
        name_of(uid)
    } else {
        format!("{} (login {})", name_of(uid), name_of(login))
    }
}

/// Whether this kernel lets the test set a child's login uid (as
/// pam_loginuid does at login: it needs CAP_AUDIT_CONTROL and audit
/// support).
fn can_set_login_uid() -> bool {
    let ok = Command::new("sh")
        .args(["-c", "echo 0 > /proc/self/loginuid"])
        .status()
        .unwrap()
        .success();
    if !ok {
        eprintln!("this kernel does not let the test set a login uid: those checks are skipped");
    }
    ok
}

/// `cmd…`, with the login uid set first when `login` is given, in an
/// environment that claims the caller is `dpo-auditor`.
fn claiming(login: Option<u32>, cmd: &[&str]) -> Run {
    let script = match login {
        Some(l) => format!("echo {l} > /proc/self/loginuid && exec \"$@\""),
        None => "exec \"$@\"".into(),
    };
    let out = Command::new("sh")
        .args(["-c", &script, "sh"])
        .args(cmd)
        .env("ABSYNC_LOG", "warn")
        .env("SUDO_USER", "dpo-auditor")
        .env("SUDO_UID", "4242")
        .env("USER", "dpo-auditor")
        .env("LOGNAME", "dpo-auditor")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn absync_claiming(env: &SyncEnv, login: Option<u32>, args: &[&str]) -> Run {
    let config = env.config_path();
    let mut cmd = vec![
        env!("CARGO_BIN_EXE_absync"),
        "--config",
        config.to_str().unwrap(),
    ];
    cmd.extend(args);
    claiming(login, &cmd)
}

/// The last run's row and its chained start record's detail.
fn last_run(env: &SyncEnv) -> (absync::state::runs::Run, serde_json::Value) {
    let snap = env.snapshot();
    let run = snap.runs(1).unwrap()[0].clone();
    let start = snap
        .stored_where(
            "run_id = ?1 AND op = 'run' AND outcome = 'started'",
            &[&run.id],
        )
        .unwrap();
    assert_eq!(start.len(), 1, "{start:?}");
    (run, start[0].record.detail.clone().unwrap())
}

/// The runs row, the start record and `journal runs` all name `who`, with
/// the numbers in the record.
fn assert_run_by(env: &SyncEnv, who: &str, uid: u32, login: u32) {
    let (run, detail) = last_run(env);
    assert_eq!(run.unix_user, who, "{run:?}");
    assert_eq!(detail["unix_user"], who, "{detail}");
    assert_eq!(detail["uid"], uid, "{detail}");
    assert_eq!(detail["login_uid"], login, "{detail}");
    let runs = env.absync(&["journal", "runs"]);
    let line = runs
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("run {} ", run.id)))
        .unwrap_or_else(|| panic!("run {} not listed: {runs:?}", run.id));
    assert!(line.ends_with(&format!(" by {who}")), "{line}");
}

#[tokio::test]
async fn sudo_user_is_not_believed_the_kernel_s_uid_and_login_are_journaled() {
    let env = SyncEnv::new("who-sync", 111, 40, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-W", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let (uid, login) = (my_uid(), my_login_uid());

    // SUDO_USER, USER and LOGNAME say dpo-auditor; the journal says who
    // the kernel says runs the process.
    let first = absync_claiming(&env, None, &["sync"]);
    assert_eq!(first.code, 0, "{first:?}");
    let me = expected(uid, login);
    assert!(!me.contains("dpo-auditor"));
    assert_run_by(&env, &me, uid, login);
    if login == u32::MAX {
        assert!(!me.contains("(login"), "no login uid, no login: {me}");
    }

    // As after `sudo` from a login of another user (here nobody's uid, or
    // a uid NSS does not know), the login is named too.
    let set = can_set_login_uid();
    let nobody = 65534;
    if set {
        let ok = absync_claiming(&env, Some(nobody), &["sync"]);
        assert_eq!(ok.code, 0, "{ok:?}");
        let who = format!("{} (login {})", name_of(uid), name_of(nobody));
        assert_eq!(who, expected(uid, nobody));
        assert_run_by(&env, &who, uid, nobody);

        let unnamed = 3_999_999;
        let ok = absync_claiming(&env, Some(unnamed), &["sync"]);
        assert_eq!(ok.code, 0, "{ok:?}");
        let who = format!("{} (login uid {unnamed})", name_of(uid));
        assert_run_by(&env, &who, uid, unnamed);
    }

    // An organisation leaves the agreement: its people are held back by
    // the threshold until an admin releases one with --allow-deletes.
    env.set_safety("[safety]\nmax_deletes = 1\nmax_delete_percent = 100\ndelete_grace = \"0\"\n");
    env.write_agreements(&[("DSA-W", &codes[..1], ALL_ATTRS, &day(-1), &day(1))]);
    let held = absync_claiming(&env, None, &["sync"]);
    assert_eq!(held.code, 3, "{held:?}");
    let login_now = if set { nobody } else { login };
    let released = absync_claiming(
        &env,
        set.then_some(nobody),
        &["sync", "--allow-deletes", "1"],
    );
    assert_eq!(released.code, 3, "the rest stay held: {released:?}");
    let who = expected(uid, login_now);
    assert_run_by(&env, &who, uid, login_now);
    let (run, _) = last_run(&env);
    let records = env.snapshot().records(run.id).unwrap();
    let ov = records
        .iter()
        .find(|r| r.op == "override")
        .unwrap_or_else(|| panic!("no override record: {records:?}"));
    assert_eq!(ov.reason, format!("--allow-deletes 1 by {who}"), "{ov:?}");
    assert_eq!(
        ov.detail,
        Some(serde_json::json!({ "uid": uid, "login_uid": login_now })),
        "{ov:?}"
    );
    assert_eq!(records.iter().filter(|r| r.op == "delete").count(), 1);

    let verify = env.absync(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

/// The daemon, in this process, on a socket in the test's directory.
fn daemon_config(env: &SyncEnv) -> std::path::PathBuf {
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
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_is_journaled_as_the_user_who_asked() {
    let env = SyncEnv::new("who-resync", 112, 10, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-R", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    daemon_config(&env);
    // Other users reach the socket (mode 0660, in the daemon's group) and
    // read the configuration; the daemon runs as this test's user.
    for path in [env.dir.clone(), env.config_path()] {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
    }
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
    let env = &env;
    let login = my_login_uid();
    let id = |flag: &str| {
        let out = Command::new("id").arg(flag).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (gid, group) = (id("-g"), id("-gn"));
    let config = env.config_path();
    let bin = env!("CARGO_BIN_EXE_absync");
    let resync_as = |user: &[&str], login: Option<u32>| -> (Run, absync::state::journal::Record) {
        let mut cmd: Vec<&str> = user.to_vec();
        cmd.extend([bin, "--config", config.to_str().unwrap(), "resync"]);
        let run = claiming(login, &cmd);
        assert_eq!(run.code, 0, "{run:?}");
        let snap = env.snapshot();
        // `resync` waits for its run: the last one.
        let last = snap.runs(1).unwrap()[0].clone();
        let mut request = snap
            .stored_where("run_id = ?1 AND op = 'request'", &[&last.id])
            .unwrap();
        assert_eq!(request.len(), 1, "{request:?}");
        (run, request.remove(0).record)
    };
    tokio::task::block_in_place(|| {
        // The socket is there once the daemon listens.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !env.dir.join("absync.sock").exists() {
            assert!(std::time::Instant::now() < deadline, "no socket");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }

        // nobody, in the socket's group, with SUDO_USER claiming someone else.
        let nobody = ["runuser", "-u", "nobody", "-g", &group, "--"];
        let (_, r) = resync_as(&nobody, None);
        let who = expected(65534, login);
        assert_eq!(r.reason, format!("resync requested by {who}"), "{r:?}");
        let d = r.detail.clone().unwrap();
        assert_eq!(d["unix_user"], who.as_str(), "{d}");
        assert_eq!(
            (d["uid"].clone(), d["login_uid"].clone()),
            (65534.into(), login.into())
        );
        if login == u32::MAX {
            assert_eq!(who, "nobody");
        }

        // The same after logging in as root: the daemon reads the login
        // uid of the requesting process.
        if can_set_login_uid() {
            let (_, r) = resync_as(&nobody, Some(0));
            assert_eq!(
                r.reason,
                format!("resync requested by {} (login root)", name_of(65534))
            );
            let d = r.detail.clone().unwrap();
            assert_eq!(
                (d["uid"].clone(), d["login_uid"].clone()),
                (65534.into(), 0.into())
            );
        }

        // A uid NSS cannot name is journaled as its number.
        let unnamed = [
            "setpriv",
            "--reuid",
            "3999998",
            "--regid",
            &gid,
            "--clear-groups",
            "--",
        ];
        let (_, r) = resync_as(&unnamed, None);
        let who = expected(3_999_998, login);
        assert!(who.starts_with("uid 3999998"), "{who}");
        assert_eq!(r.reason, format!("resync requested by {who}"), "{r:?}");
    });
    stop_tx.send(()).unwrap();
    daemon.await.unwrap().unwrap();
}
