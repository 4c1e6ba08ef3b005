//! Evidence an auditor can rely on: reading the journal never changes it.
//! Every `journal` subcommand and `status`, run as root on a read-only
//! copy of a state directory, leave the copy byte for byte and mode for
//! mode as it was; an older schema is migrated only by `sync`, which keeps
//! a copy first; no symlink in the state directory is followed, nor a
//! directory someone else owns written as root; a user who may not read
//! the state is told so.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::common::check::{day, ALL_ATTRS};
use crate::common::env::{Run, SyncEnv};

/// What an auditor would record of a directory: its mode, and each file's
/// name, mode and SHA-256.
fn fingerprint(dir: &Path) -> BTreeMap<String, (u32, String)> {
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode();
    let mut out = BTreeMap::from([(".".to_string(), (mode(dir), String::new()))]);
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let sha = format!("{:x}", Sha256::digest(std::fs::read(&path).unwrap()));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        out.insert(name, (mode(&path), sha));
    }
    out
}

/// Runs the absync binary with no configuration, as an auditor would.
fn absync(args: &[&str]) -> Run {
    run(Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(args)
        .env("ABSYNC_LOG", "warn"))
}

fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A copy of the state directory as an auditor would keep it: directory
/// 0555, files 0444.
fn evidence_copy(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let path = e.unwrap().path();
        let copy = to.join(path.file_name().unwrap());
        std::fs::copy(&path, &copy).unwrap();
        chmod(&copy, 0o444);
    }
    chmod(to, 0o555);
}

/// A few runs: a load, a change, an agreement ending (a purge).
async fn synced(name: &str) -> (SyncEnv, String) {
    let env = SyncEnv::new(name, 71, 30, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    let (a, b) = (vec![codes[0].clone()], vec![codes[1].clone()]);
    env.write_agreements(&[
        ("DSA-EV-A", &a, ALL_ATTRS, &day(-30), &day(30)),
        ("DSA-EV-B", &b, ALL_ATTRS, &day(-30), &day(30)),
    ]);
    env.sync_ok();
    let people = env.source_people("(nhsEntryStatus=active)").await;
    let (anchor, person) = people
        .iter()
        .find(|(_, p)| p["nhsodscode"][0] == codes[0])
        .unwrap();
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: title\ntitle: Evidence Officer\n-\n\n",
        person["dn"][0]
    ));
    env.sync_ok();
    env.write_agreements(&[
        ("DSA-EV-A", &a, ALL_ATTRS, &day(-30), &day(30)),
        ("DSA-EV-B", &b, ALL_ATTRS, &day(-30), &day(-1)),
    ]);
    env.sync_ok();
    (env, anchor.clone())
}

/// Every `journal` subcommand (as `absync journal --help` lists them, so
/// that a new one is not forgotten) with arguments that find something.
/// `report` writes its page to `report`, outside the copy.
fn every_journal_command(anchor: &str, report: &Path) -> Vec<Vec<String>> {
    let report = report.to_str().unwrap();
    let commands: Vec<Vec<&str>> = vec![
        vec![
            "report",
            "--from",
            "2000-01-01",
            "--to",
            "2999-01-01",
            "-o",
            report,
        ],
        vec!["verify"],
        vec!["runs"],
        vec!["runs", "--format", "json"],
        vec!["show", "2"],
        vec!["history", anchor],
        vec!["held", "--at", "2999-01-01"],
        vec!["held", "--at", "2999-01-01", "--format", "csv"],
        vec!["agreement", "DSA-EV-B"],
        vec!["agreement", "DSA-EV-B", "--at", "2999-01-01"],
        vec!["held", "--at", "2999-01-01", "--agreement", "DSA-EV-B"],
        vec!["config-changes"],
        vec!["export", "--run", "2", "--format", "jsonl"],
        vec!["export", "--since", "2000-01-01", "--format", "csv"],
        vec![
            "export",
            "--since",
            "2000-01-01",
            "--format",
            "jsonl",
            "--redact",
        ],
    ];
    let help = absync(&["journal", "--help"]).stdout;
    let listed: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        // keygen writes key files of its own and reads no state.
        .filter(|c| *c != "help" && *c != "keygen")
        .collect();
    assert!(listed.len() >= 8, "{help}");
    for c in &listed {
        assert!(
            commands.iter().any(|args| args[0] == *c),
            "journal {c} is not run on the evidence copy"
        );
    }
    commands
        .into_iter()
        .map(|c| c.into_iter().map(String::from).collect())
        .collect()
}

/// Runs every reading command on `copy` and checks after each that not a
/// byte, a mode or a file changed; returns what `runs` printed.
fn read_everything(copy: &Path, anchor: &str) -> String {
    let before = fingerprint(copy);
    let dir = copy.to_str().unwrap();
    let mut runs = String::new();
    let report = copy.with_extension("report.html");
    for args in every_journal_command(anchor, &report) {
        let mut all = vec!["journal", "--state", dir];
        all.extend(args.iter().map(String::as_str));
        let r = absync(&all);
        assert_eq!(r.code, 0, "journal {args:?}: {r:?}");
        assert!(!r.stdout.trim().is_empty(), "journal {args:?}: {r:?}");
        if args == ["runs"] {
            runs = r.stdout.clone();
        }
        assert_eq!(
            fingerprint(copy),
            before,
            "journal {args:?} changed the copy"
        );
    }
    let status = absync(&["status", "--state", dir]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(status.stdout.contains("managed "), "{status:?}");
    assert_eq!(fingerprint(copy), before, "status changed the copy");
    runs
}

#[tokio::test]
async fn every_journal_command_and_status_leave_a_read_only_copy_byte_for_byte_as_it_was() {
    let (env, anchor) = synced("evidence-copy").await;
    let copy = env.dir.join("copy");
    evidence_copy(&env.state_dir(), &copy);
    let runs = read_everything(&copy, &anchor);
    assert_eq!(runs.lines().count(), 3, "{runs}");
    let verify = absync(&["journal", "--state", copy.to_str().unwrap(), "verify"]);
    assert!(verify.stdout.starts_with("intact, "), "{verify:?}");
    chmod(&copy, 0o755);

    // A copy taken while absync had the database open: its write-ahead
    // log holds the last run. It is read, log and all, and left as it was.
    let live = env.state_dir().join("absync.db");
    let open = rusqlite::Connection::open(&live).unwrap();
    let n: i64 = open
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap();
    assert!(n > 0);
    env.sync_ok();
    let logged = env.dir.join("copy-with-log");
    evidence_copy(&env.state_dir(), &logged);
    drop(open);
    let wal = std::fs::metadata(logged.join("absync.db-wal")).unwrap();
    assert!(wal.len() > 0, "the copy has a write-ahead log");
    let runs = read_everything(&logged, &anchor);
    assert_eq!(
        runs.lines().count(),
        4,
        "the run in the log is read: {runs}"
    );
    let from_copy = absync(&["journal", "--state", logged.to_str().unwrap(), "verify"]);
    let from_live = env.absync(&["journal", "verify"]);
    assert_eq!(from_copy.stdout, from_live.stdout);
    assert!(from_copy.stdout.starts_with("intact, "), "{from_copy:?}");
    chmod(&logged, 0o755);
}

/// Sets the database back to schema 4, as an absync of that version left
/// it (without version 5's index, version 6's totals and version 7's open
/// conflicts).
fn make_schema_4(db: &Path) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(
        "DROP INDEX journal_checkpoint; DROP TABLE metrics_totals; DROP INDEX journal_agreements;
         DROP TABLE conflicts; PRAGMA user_version = 4;",
    )
    .unwrap();
}

fn schema(db: &Path) -> i64 {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    rusqlite::Connection::open_with_flags(db, flags)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode()
}

fn sha(path: &Path) -> String {
    format!("{:x}", Sha256::digest(std::fs::read(path).unwrap()))
}

#[tokio::test]
async fn an_older_schema_is_migrated_only_by_sync_which_keeps_a_copy_first() {
    let env = SyncEnv::new("evidence-schema", 72, 20, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-EV-S", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();
    let state = env.state_dir();
    let db = state.join("absync.db");
    make_schema_4(&db);
    let records: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap();
    let before = sha(&db);
    let dir = state.to_str().unwrap();
    let refused = [
        absync(&["journal", "--state", dir, "verify"]),
        absync(&["status", "--state", dir]),
        env.absync(&["journal", "runs"]),
        env.absync(&["status"]),
        // A plan reads the state as any reader does: it migrates nothing.
        env.absync(&["plan"]),
    ];
    for r in &refused {
        assert_eq!(r.code, 2, "{r:?}");
        assert!(
            r.stderr.contains(&format!(
                "state database {} has schema 4, older than this absync's {}: reading does not \
                 migrate it; `absync sync` (or the daemon) migrates it",
                db.display(),
                absync::state::SCHEMA_VERSION
            )),
            "{r:?}"
        );
    }
    assert_eq!(sha(&db), before, "reading changed the database");
    assert_eq!(schema(&db), 4);

    let sync = run(Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["--config", env.config_path().to_str().unwrap(), "sync"])
        .env("ABSYNC_LOG", "info"));
    assert_eq!(sync.code, 0, "{sync:?}");
    assert_eq!(schema(&db), absync::state::SCHEMA_VERSION);
    let new_version = absync::state::SCHEMA_VERSION;
    let baks: Vec<PathBuf> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&format!("absync.db.pre-v{new_version}-")) && name.ends_with(".bak")
        })
        .collect();
    assert_eq!(baks.len(), 1, "one copy kept: {baks:?}");
    let bak = &baks[0];
    assert!(
        sync.stderr.contains(&format!(
            "state database {} has schema 4: kept a copy at {} before migrating it to schema \
             {new_version}",
            db.display(),
            bak.display()
        )),
        "{sync:?}"
    );
    assert_eq!(mode(bak) & 0o777, 0o600);
    assert_eq!(schema(bak), 4, "the copy is the database as it was");
    let kept: i64 = rusqlite::Connection::open(bak)
        .unwrap()
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kept, records);
    let verify = env.absync(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[tokio::test]
async fn sync_follows_no_symlink_and_as_root_writes_no_directory_someone_else_owns() {
    let env = SyncEnv::new("evidence-links", 73, 20, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-EV-L", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();
    let state = env.state_dir();
    let db = state.join("absync.db");
    let elsewhere = env.dir.join("elsewhere.db");
    std::fs::rename(&db, &elsewhere).unwrap();
    chmod(&elsewhere, 0o644);
    std::os::unix::fs::symlink(&elsewhere, &db).unwrap();
    let target = (sha(&elsewhere), mode(&elsewhere));
    let msg = format!(
        "{} is a symbolic link: absync follows none in its state directory",
        db.display()
    );
    for r in [
        env.absync(&["sync"]),
        env.absync(&["plan"]),
        env.absync(&["journal", "verify"]),
        env.absync(&["journal", "runs"]),
        absync(&["status", "--state", state.to_str().unwrap()]),
    ] {
        assert_eq!(r.code, 2, "{r:?}");
        assert!(r.stderr.contains(&msg), "{r:?}");
    }
    assert_eq!(
        (sha(&elsewhere), mode(&elsewhere)),
        target,
        "the file the link points to is untouched (not even chmodded)"
    );
    std::fs::remove_file(&db).unwrap();
    std::fs::rename(&elsewhere, &db).unwrap();

    // The lock file (opened to be truncated) and the write-ahead log's
    // files, each a link to a file of root's.
    let victim = env.dir.join("victim");
    std::fs::write(&victim, "root's own file\n").unwrap();
    chmod(&victim, 0o644);
    let before = (sha(&victim), mode(&victim));
    for name in [
        "absync.lock",
        "absync.db-wal",
        "absync.db-shm",
        "daemon.json",
    ] {
        let link = state.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let msg = format!("{} is a symbolic link", link.display());
        for r in [
            env.absync(&["sync"]),
            env.absync(&["plan"]),
            env.absync(&["journal", "verify"]),
            absync(&["status", "--state", state.to_str().unwrap()]),
        ] {
            assert_eq!(r.code, 2, "{name}: {r:?}");
            assert!(r.stderr.contains(&msg), "{name}: {r:?}");
        }
        std::fs::remove_file(&link).unwrap();
        assert_eq!((sha(&victim), mode(&victim)), before, "{name}: untouched");
    }

    // The state directory itself a link.
    let moved = env.dir.join("state-real");
    std::fs::rename(&state, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &state).unwrap();
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("{} is a symbolic link", state.display())),
        "{r:?}"
    );
    std::fs::remove_file(&state).unwrap();
    std::fs::rename(&moved, &state).unwrap();

    // As root (ABSYNC_ALLOW_ROOT=1), a state directory nobody owns.
    assert_eq!(absync::os::current_uid(), 0, "the tests run as root");
    std::os::unix::fs::chown(&state, Some(65534), None).unwrap();
    let before = fingerprint(&state);
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "the state directory {} belongs to nobody, not to root, who runs absync",
            state.display()
        )),
        "{r:?}"
    );
    assert_eq!(fingerprint(&state), before, "nothing written");
    std::os::unix::fs::chown(&state, Some(0), None).unwrap();
    env.sync_ok();
}

#[tokio::test]
async fn a_user_who_may_not_read_the_state_is_told_so_not_that_there_are_no_runs() {
    let env = SyncEnv::new("evidence-denied", 74, 10, 1, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-EV-D", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();
    let state = env.state_dir();
    let dir = state.to_str().unwrap();
    let as_nobody = |args: &[&str]| {
        run(Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_absync"))
            .args(args)
            .env("ABSYNC_LOG", "warn"))
    };
    let msg = format!(
        "permission denied reading {}: run as root (the owner of {dir}), or give a copy with \
         --state",
        state.join("absync.db").display()
    );
    for args in [
        vec!["status", "--state", dir],
        vec!["journal", "--state", dir, "runs"],
        vec!["journal", "--state", dir, "verify"],
    ] {
        let r = as_nobody(&args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains(&msg), "{args:?}: {r:?}");
        assert!(!r.stdout.contains("no runs yet"), "{args:?}: {r:?}");
    }
    // Readable but not writable (a directory 0755, a database 0644):
    // read, and nothing created or changed.
    chmod(&state, 0o755);
    chmod(&state.join("absync.db"), 0o644);
    let before = fingerprint(&state);
    let r = as_nobody(&["journal", "--state", dir, "verify"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("intact, "), "{r:?}");
    assert_eq!(fingerprint(&state), before);
    chmod(&state, 0o700);

    // A state directory that is not there, or holds no database yet.
    let empty = env.dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    for dir in [env.dir.join("missing"), empty] {
        let d = dir.to_str().unwrap();
        let status = absync(&["status", "--state", d]);
        assert_eq!(status.code, 0, "{status:?}");
        assert_eq!(status.stdout, format!("state {d}: no runs yet\n"));
        let journal = absync(&["journal", "--state", d, "runs"]);
        assert_eq!(journal.code, 2, "{journal:?}");
        assert!(
            journal.stderr.contains(&format!("no journal in {d}")),
            "{journal:?}"
        );
        assert!(!dir.join("absync.db").exists(), "nothing created");
    }
}
