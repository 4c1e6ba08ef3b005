//! Security review, each point checked: passwords never leak (logs at
//! trace level, output, errors, journal, status, Debug), state files are
//! private, loose permissions are warned about.

use std::os::unix::fs::PermissionsExt;

use crate::common::check::*;
use crate::common::env::SyncEnv;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn passwords_never_appear_in_logs_output_errors_journal_or_status() {
    let env = SyncEnv::new("sec-leak", 71, 20, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-L", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let mut passwords: Vec<Vec<u8>> = ["SOURCE_SYNC_PASSWORD_FILE", "TARGET_SVC_PASSWORD_FILE"]
        .iter()
        .map(|k| std::fs::read(env.tb.get(k)).unwrap())
        .collect();
    let wrong = env.dir.join("wrong.pw");
    std::fs::write(&wrong, "Wr0ng-But-Secret-Pw!").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    passwords.push(b"Wr0ng-But-Secret-Pw!".to_vec());
    let mut seen = Vec::new();
    let run = |seen: &mut Vec<u8>, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_absync"))
            .args(["--config", env.config_path().to_str().unwrap()])
            .args(args)
            .env("ABSYNC_LOG", "trace")
            .output()
            .unwrap();
        seen.extend(out.stdout);
        seen.extend(out.stderr);
    };
    run(&mut seen, &["check"]);
    run(&mut seen, &["sync"]);
    run(&mut seen, &["plan", "--format", "json"]);
    run(&mut seen, &["plan", "--format", "ldif"]);
    run(&mut seen, &["status"]);
    run(
        &mut seen,
        &[
            "journal",
            "export",
            "--since",
            "2000-01-01",
            "--format",
            "jsonl",
        ],
    );
    // An error path: a wrong CA (the password file is read, the bind fails).
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        text.replacen(env.tb.get("TARGET_CA"), env.tb.get("SOURCE_CA"), 1),
    )
    .unwrap();
    run(&mut seen, &["sync"]);
    // A wrong password: the bind is refused.
    std::fs::write(
        env.config_path(),
        text.replacen(
            env.tb.get("TARGET_SVC_PASSWORD_FILE"),
            wrong.to_str().unwrap(),
            1,
        ),
    )
    .unwrap();
    let before = seen.len();
    run(&mut seen, &["sync"]);
    assert!(
        String::from_utf8_lossy(&seen[before..]).contains("invalid credentials"),
        "the wrong password was refused"
    );
    // The service, for one run, then stopped.
    let socket = env.dir.join("absync.sock");
    std::fs::write(
        env.config_path(),
        format!(
            "{text}\n[schedule]\ninterval = \"1h\"\n\n[daemon]\nsocket = \"{}\"\n",
            socket.display()
        ),
    )
    .unwrap();
    // Outside the config's directory, which the service watches.
    let log = std::env::temp_dir().join(crate::common::unique("absync-sec-daemon.log"));
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["--config", env.config_path().to_str().unwrap(), "run"])
        .env("ABSYNC_LOG", "trace")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("journal head")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the service did not run"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert!(daemon.wait().unwrap().success());
    seen.extend(std::fs::read(&log).unwrap());
    std::fs::remove_file(&log).unwrap();
    std::fs::write(env.config_path(), &text).unwrap();
    assert!(seen.len() > 10_000, "trace output was produced");
    let db = std::fs::read(env.state_dir().join("absync.db")).unwrap();
    for pw in &passwords {
        assert!(
            !seen.windows(pw.len()).any(|w| w == pw.as_slice()),
            "a password was printed"
        );
        assert!(
            !db.windows(pw.len()).any(|w| w == pw.as_slice()),
            "a password is in the state"
        );
    }
    // Debug output of the whole configuration shows no password either.
    let cfg = absync::config::Config::load(&env.config_path()).unwrap();
    let debug = format!("{cfg:?}");
    for pw in &passwords {
        assert!(!debug.contains(std::str::from_utf8(pw).unwrap()));
    }
    assert!(debug.contains("Secret(***)"));
}

#[tokio::test]
async fn state_files_are_private_and_loose_permissions_are_warned_about() {
    let env = SyncEnv::new("sec-perms", 72, 10, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-P", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    std::fs::set_permissions(env.config_path(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let quiet = env.sync_ok();
    assert!(
        !quiet.stderr.contains("readable by every user"),
        "{quiet:?}"
    );
    let state = env.state_dir();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("absync.db")), 0o600);
    assert_eq!(mode(&state.join("absync.lock")), 0o600);

    // A configuration readable by everyone: warned about, not refused.
    std::fs::set_permissions(env.config_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let warned = env.sync_ok();
    assert!(
        warned.stderr.contains("readable by every user (mode 0644)"),
        "{warned:?}"
    );
    // A password file readable by others: warned about, naming it.
    let pw = env.dir.join("loose.pw");
    std::fs::copy(env.tb.get("TARGET_SVC_PASSWORD_FILE"), &pw).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    std::fs::write(
        env.config_path(),
        text.replacen(
            env.tb.get("TARGET_SVC_PASSWORD_FILE"),
            pw.to_str().unwrap(),
            1,
        ),
    )
    .unwrap();
    let loose = env.sync_ok();
    assert!(
        loose
            .stderr
            .contains(&format!("password file {} has mode 0644", pw.display())),
        "{loose:?}"
    );
}

#[tokio::test]
async fn absync_refuses_to_sync_as_root_unless_told() {
    let env = SyncEnv::new("sec-root", 73, 5, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-R", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    // A run, and the service.
    for cmd in ["sync", "run"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_absync"))
            .args(["--config", env.config_path().to_str().unwrap(), cmd])
            .env_remove("ABSYNC_ALLOW_ROOT")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("refusing to run as root") && err.contains("ABSYNC_ALLOW_ROOT=1"),
            "{cmd}: {err}"
        );
        assert!(!env.state_dir().exists(), "{cmd}: nothing was started");
    }
    // Read-only commands are fine as root.
    let plan = std::process::Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["--config", env.config_path().to_str().unwrap(), "plan"])
        .env_remove("ABSYNC_ALLOW_ROOT")
        .output()
        .unwrap();
    assert!(plan.status.success());
    env.sync_ok();
}

/// The owner of `/proc/PID/status` and the real uid it gives.
fn proc_owner_and_uid(pid: u32) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    (owner, uid)
}

/// `cmd…` as the user nobody (setpriv execs it: the child is the command).
fn as_nobody(cmd: &[&str]) -> std::process::Child {
    std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .args(cmd)
        .env("ABSYNC_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux)")
}

/// absync makes itself non-dumpable before anything else (no core dump
/// holds a password; nobody but root can ptrace it or read its memory).
/// The kernel shows it: a non-dumpable process's `/proc/PID` files belong
/// to root, whoever runs it. Here absync runs as nobody and waits on a
/// control socket that never answers; a plain `sleep` run the same way
/// is the control.
#[test]
fn absync_is_not_dumpable_and_its_proc_files_belong_to_root() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(crate::common::unique("dumpable"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = crate::common::testbed::repo_root();
    let socket = dir.join("absync.sock");
    let example = std::fs::read_to_string(root.join("examples/absync.toml")).unwrap();
    let config = dir.join("absync.toml");
    std::fs::write(
        &config,
        example
            .replace("/var/lib/absync", dir.join("state").to_str().unwrap())
            .replace("/run/absync/absync.sock", socket.to_str().unwrap()),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();

    let control = as_nobody(&["sleep", "60"]);
    let mut absync = as_nobody(&[
        env!("CARGO_BIN_EXE_absync"),
        "--config",
        config.to_str().unwrap(),
        "resync",
    ]);
    // absync is past its start once it connects; it then waits for the
    // answer.
    let (conn, _) = listener.accept().unwrap();
    let nobody = proc_owner_and_uid(control.id());
    let seen = proc_owner_and_uid(absync.id());
    let (mut control, _) = (control, conn);
    let _ = control.kill();
    let _ = absync.kill();
    let _ = (control.wait(), absync.wait());
    assert_ne!(nobody.1, 0, "the control runs as nobody: {nobody:?}");
    assert_eq!(
        nobody.0, nobody.1,
        "a dumpable process owns its /proc/PID files"
    );
    assert_eq!(seen.1, nobody.1, "absync runs as nobody: {seen:?}");
    assert_eq!(
        seen.0, 0,
        "absync's /proc/PID files belong to root: not dumpable"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
