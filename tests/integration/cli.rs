//! What an admin sees when something is wrong: exit code 2 and a message
//! naming the cause and where it is; nothing written anywhere.

use std::process::{Command, Stdio};

use crate::common::check::day;
use crate::common::env::{Run, SyncEnv};

async fn env(name: &str) -> SyncEnv {
    let env = SyncEnv::new(name, 31, 20, 2, "nhs-to-ad-contact.toml").await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-C", &orgs, &["sn", "cn"], &day(-1), &day(1))]);
    env
}

fn edit_config(env: &SyncEnv, from: &str, to: &str) {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(text.contains(from), "config has no {from:?}");
    std::fs::write(env.config_path(), text.replacen(from, to, 1)).unwrap();
}

#[tokio::test]
async fn config_errors_name_file_line_and_key_and_exit_2() {
    let env = env("cli-config").await;
    let cfg = env.config_path().display().to_string();

    edit_config(&env, "page_size = 200", "page_size = 200\npage_sise = 10");
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!("{cfg}:11")) && r.stderr.contains("page_sise"),
        "{r:?}"
    );

    edit_config(&env, "page_sise = 10", "");
    edit_config(&env, "filter = \"(&", "filter = \"((&");
    let r = env.absync(&["check"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("source.filter") && r.stderr.contains("not a valid LDAP filter"),
        "{r:?}"
    );
    edit_config(&env, "filter = \"((&", "filter = \"(&");

    let url = env.tb.get("SOURCE_URL").to_string();
    edit_config(&env, &url, &url.replace("ldaps://", "ldap://"));
    let r = env.absync(&["check"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("source.url") && r.stderr.contains("plain-text"),
        "{r:?}"
    );
    assert!(
        !env.state_dir().exists(),
        "nothing written on a config error"
    );
}

#[tokio::test]
async fn bad_agreements_and_mapping_files_are_reported_with_their_line() {
    let env = env("cli-files").await;
    let agreements = env.dir.join("agreements.toml");
    std::fs::write(
        &agreements,
        format!(
            "[[agreement]]\nid = \"X\"\ntitle = \"x\"\norganisations = [\"RX1)(uid=*\"]\nattributes = [\"sn\"]\nvalid_from = {}\nvalid_until = {}\n",
            day(-1),
            day(1)
        ),
    )
    .unwrap();
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!("{}:4", agreements.display()))
            && r.stderr.contains("not an ODS code"),
        "{r:?}"
    );
}

#[tokio::test]
async fn unreachable_server_wrong_password_and_wrong_ca_exit_2_with_clear_messages() {
    let env = env("cli-conn").await;
    let url = env.tb.get("TARGET_URL").to_string();
    edit_config(&env, &url, "ldaps://127.0.0.1:1");
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("ldaps://127.0.0.1:1") && r.stderr.contains("connection refused"),
        "{r:?}"
    );
    edit_config(&env, "ldaps://127.0.0.1:1", &url);

    let pw = env.dir.join("wrong.pw");
    std::fs::write(&pw, "Not-The-Password-42").unwrap();
    let real = env.tb.get("TARGET_SVC_PASSWORD_FILE").to_string();
    edit_config(&env, &real, &pw.display().to_string());
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("invalid credentials"), "{r:?}");
    assert!(!r.stderr.contains("Not-The-Password-42"));
    // The password file is readable by others: a warning, not an error.
    assert!(r.stderr.contains("expected 0600"), "{r:?}");
    edit_config(&env, &pw.display().to_string(), &real);

    let target_ca = env.tb.get("TARGET_CA").to_string();
    let good = std::fs::read_to_string(env.config_path()).unwrap();
    edit_config(
        &env,
        &format!("ca_file = \"{target_ca}\""),
        &format!("ca_file = \"{}\"", env.tb.get("SOURCE_CA")),
    );
    let r = env.absync(&["check"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("TLS handshake failed") && r.stderr.contains("not signed by a CA in"),
        "{r:?}"
    );
    assert!(env.ad_objects().await.is_empty(), "nothing reached AD");

    // The configuration put right: the next run syncs everyone.
    std::fs::write(env.config_path(), good).unwrap();
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    let expected = crate::common::check::expected_anchors(
        &env.source_people("(objectClass=nhsPerson)").await,
        &env.org_codes(),
    );
    let held = crate::common::check::by_anchor(&env.ad_objects().await);
    assert!(!expected.is_empty());
    assert_eq!(
        held.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        expected
    );
}

#[tokio::test]
async fn dry_run_and_plan_write_nothing_anywhere() {
    let env = env("cli-plan").await;
    for args in [&["plan"][..], &["sync", "--dry-run", "--format", "json"]] {
        let r = env.absync(args);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            r.stdout.contains("add") || r.stdout.contains("\"op\":\"add\""),
            "{r:?}"
        );
    }
    assert!(env.ad_objects().await.is_empty());
    let snap = env.snapshot();
    assert!(snap.runs(10).unwrap().is_empty(), "plan recorded a run");
    assert_eq!(snap.count().unwrap(), 0);
}

#[tokio::test]
async fn check_passes_on_the_test_bed_and_fails_where_the_account_may_not_write() {
    let env = env("cli-check").await;
    let ok = env.absync(&["check"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(
        ok.stdout.contains("exists; contact objects may be created"),
        "{ok:?}"
    );
    // The domain's Users container exists, but the service account may
    // create nothing there.
    let domain = &env.target_ou[env.target_ou.find("DC=").unwrap()..];
    let users = format!("CN=Users,{domain}");
    edit_config(&env, &env.target_ou, &users);
    let r = env.absync(&["check"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&users) && r.stderr.contains("may not create contact objects there"),
        "{r:?}"
    );
    assert!(env.ad_objects().await.is_empty(), "check wrote nothing");
    edit_config(&env, &users, &env.target_ou);

    // A grace period with no way to hide is refused by check, as by sync.
    env.set_safety("[safety]\ndelete_grace = \"7d\"\n");
    for cmd in ["check", "sync"] {
        let r = env.absync(&[cmd]);
        assert_eq!(r.code, 2, "{cmd}: {r:?}");
        assert!(
            r.stderr.contains("safety.delete_grace")
                && r.stderr
                    .contains("a grace period needs a way to hide objects"),
            "{cmd}: {r:?}"
        );
    }
}

/// Runs absync with this environment's config and `vars`, without the
/// tests' usual ABSYNC_LOG: the log level is the command line's.
fn absync_with_env(env: &SyncEnv, args: &[&str], vars: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_absync"))
        .arg("--config")
        .arg(env.config_path())
        .args(args)
        .env_remove("ABSYNC_LOG")
        .env_remove("NO_COLOR")
        .envs(vars.iter().copied())
        .output()
        .expect("run absync");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs absync with its standard output a pipe whose reader has already
/// gone: its first write fails with EPIPE. Returns the exit code and
/// stderr.
fn with_closed_stdout(env: &SyncEnv, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_absync"))
        .arg("--config")
        .arg(env.config_path())
        .args(args)
        .env("ABSYNC_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run absync");
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `absync ARGS | head -1` in a shell with pipefail: absync's own exit
/// code, the line head printed, and absync's stderr.
fn piped_to_head(env: &SyncEnv, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(r#"set -o pipefail; "$0" --config "$1" "${@:2}" | head -1"#)
        .arg(env!("CARGO_BIN_EXE_absync"))
        .arg(env.config_path())
        .args(args)
        .env("ABSYNC_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn every_command_that_prints_ends_quietly_when_its_reader_goes() {
    let env = env("cli-pipe").await;
    env.sync_ok();
    env.absync(&["sync", "--full"]);
    let snap = env.snapshot();
    let anchor = snap
        .records(1)
        .unwrap()
        .iter()
        .find_map(|r| r.anchor.clone())
        .expect("an object");
    let today = day(0);
    let commands: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["journal", "runs"],
        vec!["journal", "runs", "--format", "json"],
        vec!["journal", "show", "1"],
        vec!["journal", "show", "1", "--format", "csv"],
        vec!["journal", "history", &anchor],
        vec!["journal", "held", "--at", &today],
        vec!["journal", "agreement", "DSA-C"],
        vec!["journal", "agreement", "DSA-C", "--at", &today],
        vec!["journal", "config-changes"],
        vec!["journal", "export"],
        vec!["journal", "export", "--format", "jsonl"],
        vec!["journal", "verify"],
        vec!["plan"],
        vec!["plan", "--summary", "json"],
        vec!["sync", "--dry-run", "--format", "json"],
        vec!["sync", "--summary", "json"],
        vec!["check"],
        vec!["check", "--format", "json"],
        vec!["audit"],
        vec!["init"],
        vec!["completions", "bash"],
        vec!["man"],
        vec!["--help"],
    ];
    for args in &commands {
        let (code, stderr) = with_closed_stdout(&env, args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "{args:?}: {stderr}"
        );
    }
    // As a script writes it: head prints the first line, absync exits 0.
    for args in [
        &["status"][..],
        &["journal", "runs"],
        &["journal", "show", "1"],
    ] {
        let (code, first, stderr) = piped_to_head(&env, args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert_eq!(first.lines().count(), 1, "{args:?}: {first}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("absync: "),
            "{args:?}: {stderr}"
        );
    }
}

/// `2026-11-24T08:28:02Z`: a UTC time to the second, as tables print it.
fn is_table_time(word: &str) -> bool {
    word.len() == 20
        && word.ends_with('Z')
        && time::PrimitiveDateTime::parse(
            &word[..19],
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        )
        .is_ok()
}

#[tokio::test]
async fn table_times_say_they_are_utc() {
    let env = env("cli-utc").await;
    env.sync_ok();
    let runs = env.absync(&["journal", "runs"]);
    let line = runs
        .stdout
        .lines()
        .find(|l| l.starts_with("run 1 "))
        .unwrap();
    assert!(
        is_table_time(line.split_whitespace().nth(2).unwrap()),
        "{line}"
    );
    let status = env.absync(&["status"]);
    let row = status
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap_or_else(|| panic!("{status:?}"));
    assert!(
        is_table_time(row.split_whitespace().nth(1).unwrap()),
        "{row}"
    );
    let show = env.absync(&["journal", "show", "1"]);
    let first = show.stdout.lines().next().unwrap();
    assert!(
        is_table_time(first.split_whitespace().nth(1).unwrap()),
        "{first}"
    );
}

#[tokio::test]
async fn format_without_dry_run_is_a_usage_error_and_runs_nothing() {
    let env = env("cli-format").await;
    let r = env.absync(&["sync", "--format", "ldif"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--dry-run"), "{r:?}");
    assert!(env.ad_objects().await.is_empty(), "nothing written");
    assert!(!env.state_dir().exists(), "no run started");
}

/// The summary `--summary json` printed: one JSON object, alone on stdout.
fn summary(r: &Run) -> serde_json::Value {
    assert_eq!(r.stdout.lines().count(), 1, "{r:?}");
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

#[tokio::test]
async fn plan_detailed_exitcode_and_json_summaries_tell_scripts_what_a_run_does() {
    let env = env("cli-exitcode").await;
    let orgs = env.org_codes();

    // Changes to make: 2, and the plan's summary counts them.
    let plan = env.absync(&["plan", "--detailed-exitcode", "--summary", "json"]);
    assert_eq!(plan.code, 2, "{plan:?}");
    let s = summary(&plan);
    assert_eq!(s["command"], "plan");
    assert_eq!(s["status"], "ok");
    assert_eq!(s["exit_code"], 2);
    assert!(s["run_id"].is_null(), "{s}");
    let planned = s["counts"]["added"].as_u64().unwrap();
    assert!(planned > 0, "{s}");
    // Without the flag, plan exits 0 as it always has.
    assert_eq!(env.absync(&["plan"]).code, 0);

    // The run, summarised as JSON on stdout instead of text on stderr.
    let run = env.absync(&["sync", "--summary", "json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stderr.contains("absync sync run"), "{run:?}");
    let s = summary(&run);
    let last = env.snapshot().runs(1).unwrap()[0].clone();
    assert_eq!(s["command"], "sync");
    assert_eq!(s["run_id"], last.id);
    assert_eq!(s["status"], "ok");
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["pull"]["mode"], "full");
    assert_eq!(s["counts"]["added"], planned);
    assert_eq!(s["counts"]["added"], env.ad_objects().await.len() as u64);
    assert!(s["duration_seconds"].as_f64().unwrap() > 0.0, "{s}");

    // Nothing to do: 0.
    let plan = env.absync(&["plan", "--detailed-exitcode"]);
    assert_eq!(plan.code, 0, "{plan:?}");

    // One organisation leaves the agreement: more deletes than the
    // threshold allows. The plan says a real run would stop (3), and the
    // real run does.
    env.set_safety("[safety]\nmax_deletes = 1\nmax_delete_percent = 100\ndelete_grace = \"0\"\n");
    env.write_agreements(&[("DSA-C", &orgs[..1], &["sn", "cn"], &day(-1), &day(1))]);
    let plan = env.absync(&["plan", "--detailed-exitcode", "--summary", "json"]);
    assert_eq!(plan.code, 3, "{plan:?}");
    let s = summary(&plan);
    assert_eq!(s["status"], "withheld");
    assert_eq!(s["status_text"], "stopped: deletion threshold");
    assert!(s["counts"]["withheld"].as_u64().unwrap() > 1, "{s}");
    let run = env.absync(&["sync", "--summary", "json"]);
    assert_eq!(run.code, 3, "{run:?}");
    let s = summary(&run);
    assert_eq!(s["status"], "withheld");
    assert_eq!(s["exit_code"], 3);
}

#[tokio::test]
async fn check_as_json_lists_each_finding_and_goes_on_after_a_fatal_one() {
    let env = env("cli-check-json").await;
    let ok = env.absync(&["check", "--format", "json"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let j: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(j["ok"], true);
    assert_eq!(j["fatal"], 0);
    assert!(j["error"].is_null());
    let passed = |j: &serde_json::Value| -> Vec<String> {
        j["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["severity"] == "ok")
            .map(|c| c["check"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        passed(&j),
        [
            "config",
            "mapping",
            "agreements",
            "retention",
            "source",
            "source base",
            "source",
            "source",
            "target",
            "target OU",
            "schema"
        ]
    );
    // The agreement ends tomorrow: a warning, named.
    assert!(j["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["severity"] == "warning"
            && c["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("agreement DSA-C ends {}", day(1)))));

    let domain = &env.target_ou[env.target_ou.find("DC=").unwrap()..];
    let users = format!("CN=Users,{domain}");
    edit_config(&env, &env.target_ou, &users);
    let bad = env.absync(&["check", "--format", "json"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    let j: serde_json::Value = serde_json::from_str(&bad.stdout).unwrap();
    assert_eq!(j["ok"], false);
    assert_eq!(j["fatal"], 1, "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("may not create contact objects"),
        "{j}"
    );
    // The schema is still checked after the OU failed.
    assert_eq!(passed(&j).last().map(String::as_str), Some("schema"), "{j}");
    assert!(
        bad.stderr.contains("may not create contact objects"),
        "{bad:?}"
    );
}

#[tokio::test]
async fn quiet_and_verbose_set_the_log_level_unless_absync_log_does() {
    let env = env("cli-quiet").await;
    let normal = absync_with_env(&env, &["plan"], &[]);
    assert_eq!(normal.code, 0, "{normal:?}");
    assert!(normal.stderr.contains(" INFO "), "{normal:?}");
    let quiet = absync_with_env(&env, &["-q", "plan"], &[]);
    assert_eq!(quiet.code, 0, "{quiet:?}");
    assert!(!quiet.stderr.contains(" INFO "), "{quiet:?}");
    // The summary is the command's answer, not a log line: it stays.
    assert!(quiet.stderr.contains("absync plan: ok"), "{quiet:?}");
    // ABSYNC_LOG wins.
    let env_wins = absync_with_env(&env, &["plan", "--quiet"], &[("ABSYNC_LOG", "info")]);
    assert!(env_wins.stderr.contains(" INFO "), "{env_wins:?}");
    // -v: debug messages, e.g. each object added.
    let verbose = absync_with_env(&env, &["sync", "-v"], &[]);
    assert_eq!(verbose.code, 0, "{verbose:?}");
    assert!(
        verbose.stderr.contains("DEBUG") && verbose.stderr.contains("added"),
        "{verbose:?}"
    );
    let r = absync_with_env(&env, &["sync", "-q", "-v"], &[]);
    assert_eq!(r.code, 2, "-q and -v together are a usage error: {r:?}");
}

/// Runs absync on a pseudo-terminal (`script`), as an admin at a console
/// does: returns all it wrote there.
fn on_terminal(env: &SyncEnv, args: &str, no_color: Option<&str>) -> String {
    let line = format!(
        "{} --config {} {args}",
        env!("CARGO_BIN_EXE_absync"),
        env.config_path().display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_remove("ABSYNC_LOG")
        .env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().expect("script (util-linux)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn no_color_keeps_escape_codes_out_of_the_log_on_a_terminal() {
    let env = env("cli-colour").await;
    let coloured = on_terminal(&env, "plan", None);
    assert!(
        coloured.contains("INFO") && coloured.contains("\x1b["),
        "{coloured}"
    );
    let plain = on_terminal(&env, "plan", Some("1"));
    assert!(
        plain.contains("INFO") && !plain.contains("\x1b["),
        "{plain}"
    );
}
