//! Servers misbehaving: each ends in a clean failure with a clear message
//! and exit code, no damage, and recovery on the next run.

use std::time::{Duration, Instant};

use absync::ldap::Conn;

use crate::common::check::*;
use crate::common::env::SyncEnv;

async fn synced(name: &str) -> (SyncEnv, Vec<String>) {
    let env = SyncEnv::new(name, 81, 30, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-F", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();
    (env, codes)
}

fn replace_in_config(env: &SyncEnv, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(text.contains(from), "{from} not in the config");
    std::fs::write(env.config_path(), text.replacen(from, to, 1)).unwrap();
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_name_is_refused_by_name() {
    let (env, _) = synced("fault-name").await;
    let before = env.ad_objects().await;
    // The same slapd, reached at 127.0.0.2: its certificate names
    // 127.0.0.1 and localhost only.
    let url = env.tb.get("SOURCE_URL").to_string();
    let upstream = url.trim_start_matches("ldaps://").parse().unwrap();
    let port = crate::common::proxy::forward_on("127.0.0.2", upstream, usize::MAX).await;
    let text = replace_in_config(&env, &url, &format!("ldaps://127.0.0.2:{port}"));
    let env_ref = &env;
    let r = tokio::task::block_in_place(|| env_ref.absync(&["sync"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("TLS handshake failed")
            && r.stderr.contains("does not name the host in the URL"),
        "{r:?}"
    );
    assert_unchanged(&before, &env.ad_objects().await);
    std::fs::write(env.config_path(), text).unwrap();
    env.sync_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_server_hits_the_configured_timeout() {
    let (env, _) = synced("fault-stall").await;
    let before = env.ad_objects().await;
    let port = crate::common::proxy::stall().await;
    let url = env.tb.get("SOURCE_URL").to_string();
    let text = replace_in_config(&env, &url, &format!("ldaps://127.0.0.1:{port}"));
    env.set_config_line("page_size", "200\ntimeout_secs = 2");
    let env_ref = &env;
    let t = Instant::now();
    let r = tokio::task::block_in_place(|| env_ref.absync(&["sync"]));
    let took = t.elapsed();
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no answer within 2 s"), "{r:?}");
    assert!(
        took < Duration::from_secs(15),
        "the timeout fired: {took:?}"
    );
    assert_unchanged(&before, &env.ad_objects().await);
    std::fs::write(env.config_path(), text).unwrap();
    env.sync_ok();
}

#[tokio::test]
async fn a_disabled_service_account_is_a_clear_bind_error() {
    let (env, _) = synced("fault-locked").await;
    // A second account, created disabled (userAccountControl 514).
    let name = crate::common::unique("locked");
    let dn = format!("CN={name},CN=Users,{}", env.tb.get("TARGET_BASE_DN"));
    let pw = "Locked-Acc0unt-Pw!";
    let quoted: Vec<u8> = format!("\"{pw}\"")
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    admin
        .add_binary(
            &dn,
            vec![
                ("objectClass", vec![b"user".to_vec()]),
                (
                    "sAMAccountName",
                    vec![name.chars().take(20).collect::<String>().into_bytes()],
                ),
                ("userAccountControl", vec![b"514".to_vec()]),
                ("unicodePwd", vec![quoted]),
            ],
        )
        .await
        .unwrap();
    let pw_file = env.dir.join("locked.pw");
    std::fs::write(&pw_file, pw).unwrap();
    std::fs::set_permissions(
        &pw_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let text = replace_in_config(&env, env.tb.get("TARGET_SVC_DN"), &dn);
    std::fs::write(
        env.config_path(),
        std::fs::read_to_string(env.config_path())
            .unwrap()
            .replacen(
                env.tb.get("TARGET_SVC_PASSWORD_FILE"),
                pw_file.to_str().unwrap(),
                1,
            ),
    )
    .unwrap();
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("invalid credentials") && r.stderr.contains(&dn),
        "{r:?}"
    );
    // AD says why: data 533 is "account disabled".
    assert!(r.stderr.contains("data 533"), "{r:?}");
    assert!(!r.stderr.contains(pw));
    std::fs::write(env.config_path(), text).unwrap();
    env.sync_ok();
}

#[tokio::test]
async fn a_missing_target_ou_is_named_and_nothing_is_written() {
    let (env, _) = synced("fault-ou").await;
    let missing = format!("OU=gone-{},{}", std::process::id(), env.tb.get("TARGET_OU"));
    let text = replace_in_config(
        &env,
        &format!("base_dn = \"{}\"", env.target_ou),
        &format!("base_dn = \"{missing}\""),
    );
    let r = env.absync(&["sync"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("target OU {missing} does not exist")),
        "{r:?}"
    );
    let check = env.absync(&["check"]);
    assert_eq!(check.code, 2);
    assert!(check.stderr.contains("does not exist"), "{check:?}");
    std::fs::write(env.config_path(), text).unwrap();
    let again = env.sync_ok();
    assert!(
        summary_line(&again, "added").contains(NO_WRITES),
        "{again:?}"
    );
}

fn script(tb: &crate::common::testbed::Testbed, which: &str, dir: &str) {
    let out = std::process::Command::new(
        crate::common::testbed::repo_root().join(format!("tests/testbed/{which}.sh")),
    )
    .args(["restart", tb.dir.join(dir).to_str().unwrap()])
    .output()
    .unwrap();
    assert!(out.status.success(), "{which} restart: {out:?}");
}

fn kill9(pid_file: &std::path::Path, group: bool) {
    let pid = std::fs::read_to_string(pid_file).unwrap();
    let target = if group {
        format!("-{}", pid.trim())
    } else {
        pid.trim().to_string()
    };
    let ok = std::process::Command::new("kill")
        .args(["-KILL", "--", &target])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -9 {target}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_samba_or_slapd_mid_run_loses_nothing() {
    let tb = tokio::task::block_in_place(|| crate::common::testbed::Testbed::start_private("kill"));
    let env = SyncEnv::new_on(tb, "kill", 111, 700, 4, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-K", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let env = &env;
    tokio::task::block_in_place(|| {
        let spawn = || {
            std::process::Command::new(env!("CARGO_BIN_EXE_absync"))
                .args(["--config", env.config_path().to_str().unwrap(), "sync"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let converged = |phase: &str| assert_converged(env, &codes, phase);

        // Samba (the whole process group) killed in the middle of a load.
        let child = spawn();
        let deadline = Instant::now() + Duration::from_secs(60);
        while env.ad_count_blocking() < 100 {
            assert!(Instant::now() < deadline, "the load did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        kill9(&tb.dir.join("target/samba/run/samba.pid"), true);
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        script(tb, "target", "target");
        env.sync_ok();
        converged("after Samba was killed");

        // slapd killed while a change set (mostly adds) is pulled and applied.
        let gen = std::process::Command::new("python3")
            .arg(crate::common::testbed::repo_root().join("tests/testbed/nhsgen.py"))
            .args(["changes", "--base", &env.source_base, "--seed", "111"])
            .args(["--people", "700", "--orgs", "4", "--change-seed", "7"])
            .args(["--adds", "300", "--modifies", "30", "--deletes", "10"])
            .output()
            .unwrap();
        env.change_source(&String::from_utf8(gen.stdout).unwrap());
        let before = env.ad_count_blocking();
        let child = spawn();
        let deadline = Instant::now() + Duration::from_secs(60);
        while env.ad_count_blocking() < before + 20 {
            assert!(Instant::now() < deadline, "the change set did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        kill9(&tb.dir.join("source/slapd.pid"), false);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("no deletes were applied"), "{err}");
        let snap = env.snapshot();
        let last = snap.runs(1).unwrap()[0].clone();
        assert_eq!(
            last.counts.unwrap().deleted,
            0,
            "no delete on a partial read"
        );
        script(tb, "source", "source");
        // The restarted slapd lost its in-memory session log: the delta
        // names every unchanged entry (the present phase), so the deletes
        // made before the kill are still found.
        let after = env.sync_ok();
        assert!(
            after.stderr.contains("pull: delta (present phase"),
            "{after:?}"
        );
        converged("after slapd was killed");
    });
}

/// A CA and a server certificate that expired in 2020 (openssl ca can
/// back-date, which `openssl x509` cannot).
fn expired_certificate(dir: &std::path::Path) {
    std::fs::create_dir_all(dir.join("db")).unwrap();
    let script = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout ca.key -out ca.pem -subj "/CN=expired test CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj "/CN=localhost" 2>/dev/null
: > db/index; echo 01 > db/serial
cat > ca.cnf <<CNF
[ca]
default_ca = c
[c]
database = db/index
serial = db/serial
new_certs_dir = db
default_md = sha256
policy = p
[p]
commonName = supplied
[ext]
subjectAltName = DNS:localhost,IP:127.0.0.1
basicConstraints = CA:FALSE
extendedKeyUsage = serverAuth
CNF
openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in srv.csr -out srv.pem \
  -startdate 20200101000000Z -enddate 20200201000000Z -extensions ext 2>/dev/null
"#;
    let ok = std::process::Command::new("bash")
        .args(["-c", script])
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "making an expired certificate");
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused_as_expired() {
    let (env, _) = synced("fault-expired").await;
    let before = env.ad_objects().await;
    let dir = env.dir.join("expired");
    expired_certificate(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // An LDAPS impostor that presents the expired certificate.
    let mut server = std::process::Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["-cert", "srv.pem", "-key", "srv.key"])
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let url = env.tb.get("SOURCE_URL").to_string();
    let text = replace_in_config(&env, &url, &format!("ldaps://127.0.0.1:{port}"));
    std::fs::write(
        env.config_path(),
        std::fs::read_to_string(env.config_path())
            .unwrap()
            .replacen(
                env.tb.get("SOURCE_CA"),
                dir.join("ca.pem").to_str().unwrap(),
                1,
            ),
    )
    .unwrap();
    let r = env.absync(&["sync"]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("TLS handshake failed") && r.stderr.contains("has expired"),
        "{r:?}"
    );
    assert_unchanged(&before, &env.ad_objects().await);
    std::fs::write(env.config_path(), text).unwrap();
    env.sync_ok();
}

/// The change LDIF of `changes` over the `synced` environment's people.
fn source_changes(env: &SyncEnv, change_seed: u32, args: &[&str]) {
    let out = std::process::Command::new("python3")
        .arg(crate::common::testbed::repo_root().join("tests/testbed/nhsgen.py"))
        .args(["changes", "--base", &env.source_base, "--seed", "81"])
        .args(["--people", "30", "--orgs", "2"])
        .args(["--change-seed", &change_seed.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    env.change_source(&String::from_utf8(out.stdout).unwrap());
}

/// The journal records of the last run, but the run records.
fn last_run_records(env: &SyncEnv) -> Vec<absync::state::journal::Record> {
    let snap = env.snapshot();
    let id = snap.runs(1).unwrap()[0].id;
    snap.records(id).unwrap()
}

/// `samba-tool` or an ldb tool on the test bed's sam.ldb, as root.
fn sam_tool(
    tb: &crate::common::testbed::Testbed,
    tool: &str,
    args: &[&str],
    stdin: &str,
) -> String {
    use std::io::Write;
    let sam = tb.path("TARGET_SAM_LDB");
    let conf = sam.parent().unwrap().parent().unwrap().join("etc/smb.conf");
    let mut cmd = std::process::Command::new(tool);
    if tool == "samba-tool" {
        cmd.args(args).arg("-H").arg(&sam).arg("-s").arg(&conf);
    } else {
        cmd.arg("-H").arg(&sam).args(args);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{tool} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_write_rights_fails_the_entries_clearly_and_recovers() {
    let (env, codes) = synced("fault-rights").await;
    let tb = env.tb;
    let env = &env;
    tokio::task::block_in_place(|| {
        // An admin takes the service account's write rights away on the
        // OU (a deny ACE inherited by every object in it), between runs.
        let sid = sam_tool(
            tb,
            "ldbsearch",
            &["-b", tb.get("TARGET_SVC_DN"), "-s", "base", "objectSid"],
            "",
        )
        .lines()
        .find_map(|l| l.strip_prefix("objectSid: ").map(str::to_string))
        .unwrap();
        let saved = sam_tool(
            tb,
            "samba-tool",
            &["dsacl", "get", "--objectdn", &env.target_ou],
            "",
        )
        .lines()
        .find(|l| l.starts_with("O:"))
        .unwrap()
        .to_string();
        sam_tool(
            tb,
            "samba-tool",
            &[
                "dsacl",
                "set",
                "--objectdn",
                &env.target_ou,
                "--sddl",
                &format!("(D;CI;WPSD;;;{sid})"),
            ],
            "",
        );
        source_changes(env, 5, &["--modifies", "4"]);
        let before = env.ad_objects_blocking();
        let r = env.absync(&["sync"]);
        assert_eq!(r.code, 1, "{r:?}");
        assert!(summary_line(&r, "conflicts").contains("failed 4"), "{r:?}");
        let failed: Vec<_> = last_run_records(env)
            .into_iter()
            .filter(|r| r.op == "modify" && r.outcome == "failed")
            .collect();
        assert_eq!(failed.len(), 4, "{failed:?}");
        for f in &failed {
            let e = f.error.as_deref().unwrap_or_default();
            assert!(e.contains("insufficient access rights"), "{f:?}");
        }
        assert_unchanged(&before, &env.ad_objects_blocking());

        // The rights come back: the next run writes what failed.
        sam_tool(
            tb,
            "ldbmodify",
            &[],
            &format!(
                "dn: {}\nchangetype: modify\nreplace: nTSecurityDescriptor\nnTSecurityDescriptor: {saved}\n",
                env.target_ou
            ),
        );
        let again = env.sync_ok();
        assert!(
            summary_line(&again, "added").contains("modified 4"),
            "{again:?}"
        );
        assert_converged(env, &codes, "rights restored");
    });
}

/// The target behind a proxy that answers one request itself.
async fn target_refusing(env: &SyncEnv, refuse: crate::common::proxy::Refuse) -> String {
    let tb = env.tb;
    let url = tb.get("TARGET_URL").to_string();
    let upstream = url.trim_start_matches("ldaps://").parse().unwrap();
    let tls = tb.path("TARGET_CA");
    let dir = tls.parent().unwrap();
    let port = crate::common::proxy::answer_on(
        tb.get("TARGET_IP"),
        upstream,
        tb.get("TARGET_IP"),
        &tls,
        &dir.join("target.pem"),
        &dir.join("target.key"),
        refuse,
    )
    .await;
    format!("ldaps://{}:{port}", tb.get("TARGET_IP"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_or_unwilling_target_is_journaled_and_retried() {
    use crate::common::proxy::Refuse;
    let (env, codes) = synced("fault-busy").await;
    let url = env.tb.get("TARGET_URL").to_string();

    // Busy (51) on the second modify: the server is in trouble, so the run
    // stops there (exit 2, saying so); what the target took is kept: the
    // first modify, and the third, sent with it in one window.
    source_changes(&env, 6, &["--modifies", "3"]);
    let busy = target_refusing(
        &env,
        Refuse {
            op: 0x66,
            nth: 2,
            rc: 51,
            text: "server is busy",
        },
    )
    .await;
    let text = replace_in_config(&env, &url, &busy);
    let env_ref = &env;
    let r = tokio::task::block_in_place(|| env_ref.absync(&["sync"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("busy") && r.stderr.contains("server is busy"),
        "{r:?}"
    );
    let modified = last_run_records(&env)
        .into_iter()
        .filter(|r| r.op == "modify" && r.outcome == "applied")
        .count();
    assert_eq!(modified, 2, "the modifies the target took were journaled");

    // Unwilling to perform (53) on an add: that entry fails, is journaled
    // with the reason, and the others land (exit 1).
    std::fs::write(env.config_path(), &text).unwrap();
    source_changes(&env, 7, &["--adds", "3"]);
    let unwilling = target_refusing(
        &env,
        Refuse {
            op: 0x68,
            nth: 1,
            rc: 53,
            text: "will not do that now",
        },
    )
    .await;
    replace_in_config(&env, &url, &unwilling);
    let r = tokio::task::block_in_place(|| env_ref.absync(&["sync"]));
    assert_eq!(r.code, 1, "{r:?}");
    let records = last_run_records(&env);
    let failed: Vec<_> = records.iter().filter(|r| r.outcome == "failed").collect();
    assert_eq!(failed.len(), 1, "{records:?}");
    assert_eq!(failed[0].op, "add");
    let e = failed[0].error.as_deref().unwrap_or_default();
    assert!(
        e.contains("unwilling to perform") && e.contains("will not do that now"),
        "{e}"
    );
    // The modify the busy server refused landed now.
    assert_eq!(
        records
            .iter()
            .filter(|r| r.op == "modify" && r.outcome == "applied")
            .count(),
        1,
        "{records:?}"
    );

    // Straight to AD again: the refused add is retried and lands.
    std::fs::write(env.config_path(), &text).unwrap();
    let again = tokio::task::block_in_place(|| env_ref.sync_ok());
    assert!(
        summary_line(&again, "added").contains("added 1,"),
        "{again:?}"
    );
    tokio::task::block_in_place(|| assert_converged(env_ref, &codes, "after busy and unwilling"));
}

/// Sets `[target] timeout_secs`.
fn target_timeout(env: &SyncEnv, secs: u64) {
    replace_in_config(
        env,
        "anchor_attribute = \"adminDescription\"",
        &format!("anchor_attribute = \"adminDescription\"\ntimeout_secs = {secs}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_target_hits_the_configured_timeout() {
    use crate::common::proxy::Refuse;
    let (env, codes) = synced("fault-tstall").await;
    let url = env.tb.get("TARGET_URL").to_string();
    let good = std::fs::read_to_string(env.config_path()).unwrap();
    let env_ref = &env;

    // A target that accepts the connection and never answers.
    let port = crate::common::proxy::stall().await;
    replace_in_config(&env, &url, &format!("ldaps://127.0.0.1:{port}"));
    target_timeout(&env, 2);
    let t = Instant::now();
    let r = tokio::task::block_in_place(|| env_ref.absync(&["sync"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no answer within 2 s"), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());

    // A target that stops answering in the middle of a run, on a write.
    std::fs::write(env.config_path(), &good).unwrap();
    source_changes(&env, 8, &["--modifies", "3"]);
    let stalled = target_refusing(
        &env,
        Refuse {
            op: 0x66,
            nth: 2,
            rc: 0,
            text: "",
        },
    )
    .await;
    replace_in_config(&env, &url, &stalled);
    target_timeout(&env, 2);
    let t = Instant::now();
    let r = tokio::task::block_in_place(|| env_ref.absync(&["sync"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("no answer within 2 s") && r.stderr.contains(&stalled),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    // The modifies sent in the same window and answered were committed.
    let modified = last_run_records(&env)
        .into_iter()
        .filter(|r| r.op == "modify" && r.outcome == "applied")
        .count();
    assert_eq!(modified, 2, "the answered modifies were journaled");

    // AD answering again: the change in flight is settled and written.
    std::fs::write(env.config_path(), &good).unwrap();
    let again = tokio::task::block_in_place(|| env_ref.sync_ok());
    assert!(
        summary_line(&again, "added").contains("modified 1"),
        "{again:?}"
    );
    tokio::task::block_in_place(|| assert_converged(env_ref, &codes, "after the target stalled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_ou_deleted_after_a_sync_fails_cleanly_and_a_full_run_recreates() {
    let (env, codes) = synced("fault-ou-gone").await;
    let snap_before = {
        let mut rows = Vec::new();
        env.snapshot()
            .for_each(|r| {
                rows.push(r);
                Ok(())
            })
            .unwrap();
        rows
    };
    assert!(!snap_before.is_empty());
    // An admin deletes the OU, contacts and all.
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    for dn in env.ad_objects().await.keys() {
        admin.delete(dn).await.unwrap();
    }
    admin.delete(&env.target_ou).await.unwrap();

    let env_ref = &env;
    let r = tokio::task::block_in_place(|| env_ref.absync(&["sync"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("target OU {} does not exist", env.target_ou)),
        "{r:?}"
    );
    let mut snap_after = Vec::new();
    env.snapshot()
        .for_each(|r| {
            snap_after.push(r);
            Ok(())
        })
        .unwrap();
    assert_eq!(snap_before, snap_after, "the snapshot is unchanged");
    let records = last_run_records(&env);
    assert!(
        records.is_empty(),
        "nothing journaled but the run: {records:?}"
    );

    // The OU is recreated (empty): a full run puts every contact back.
    let ou_name = env.target_ou[3..env.target_ou.find(',').unwrap()].to_string();
    admin
        .add(
            &env.target_ou,
            vec![
                ("objectClass".into(), ["organizationalUnit".into()].into()),
                ("ou".into(), [ou_name].into()),
            ],
        )
        .await
        .unwrap();
    let r = tokio::task::block_in_place(|| env_ref.absync(&["sync", "--full"]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        summary_line(&r, "added").contains(&format!("added {},", snap_before.len())),
        "{r:?}"
    );
    tokio::task::block_in_place(|| assert_converged(env_ref, &codes, "OU recreated"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_out_service_account_is_named_as_locked_out() {
    let (env, codes) = synced("fault-lockout").await;
    let tb = env.tb;
    let env_ref = &env;
    tokio::task::block_in_place(|| {
        // An account of its own, locked out after two bad passwords by a
        // password settings object that applies to it alone.
        let name: String = crate::common::unique("lk")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(18)
            .collect();
        let pw = "Lock-Out-Acc0unt-Pw!";
        sam_tool(tb, "samba-tool", &["user", "create", &name, pw], "");
        sam_tool(
            tb,
            "samba-tool",
            &[
                "domain",
                "passwordsettings",
                "pso",
                "create",
                &name,
                "5",
                "--account-lockout-threshold=2",
                "--account-lockout-duration=1",
                "--reset-account-lockout-after=1",
            ],
            "",
        );
        sam_tool(
            tb,
            "samba-tool",
            &["domain", "passwordsettings", "pso", "apply", &name, &name],
            "",
        );
        // Rights on the OU as the service account has them.
        let sid = sam_tool(
            tb,
            "ldbsearch",
            &[
                "-b",
                &format!("CN={name},CN=Users,{}", tb.get("TARGET_BASE_DN")),
                "-s",
                "base",
                "objectSid",
            ],
            "",
        )
        .lines()
        .find_map(|l| l.strip_prefix("objectSid: ").map(str::to_string))
        .unwrap();
        let contact = "5cb41ed0-0e4c-11d0-a286-00aa003049e2";
        sam_tool(
            tb,
            "samba-tool",
            &[
                "dsacl",
                "set",
                "--objectdn",
                &env_ref.target_ou,
                "--sddl",
                &format!(
                    "(OA;CI;CCDC;{contact};;{sid})(A;;LCRP;;;{sid})(OA;CIIO;GA;;{contact};{sid})"
                ),
            ],
            "",
        );
        let dn = format!("CN={name},CN=Users,{}", tb.get("TARGET_BASE_DN"));
        let good = std::fs::read_to_string(env_ref.config_path()).unwrap();
        let pw_file = env_ref.dir.join("lockout.pw");
        let wrong_file = env_ref.dir.join("wrong.pw");
        for (f, v) in [(&pw_file, pw), (&wrong_file, "Not-The-Pw-1!")] {
            std::fs::write(f, v).unwrap();
            std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        let use_account = |file: &std::path::Path| {
            std::fs::write(
                env_ref.config_path(),
                good.replacen(tb.get("TARGET_SVC_DN"), &dn, 1).replacen(
                    tb.get("TARGET_SVC_PASSWORD_FILE"),
                    file.to_str().unwrap(),
                    1,
                ),
            )
            .unwrap();
        };
        // It works, then two bad passwords lock it out.
        use_account(&pw_file);
        source_changes(env_ref, 9, &["--modifies", "2"]);
        let before = env_ref.ad_objects_blocking();
        use_account(&wrong_file);
        for _ in 0..2 {
            let r = env_ref.absync(&["sync"]);
            assert_eq!(r.code, 2, "{r:?}");
            assert!(r.stderr.contains("(wrong password)"), "{r:?}");
        }
        use_account(&pw_file);
        let r = env_ref.absync(&["sync"]);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(
            r.stderr.contains("invalid credentials")
                && r.stderr.contains("data 775")
                && r.stderr.contains("(the account is locked out)")
                && r.stderr.contains(&dn),
            "{r:?}"
        );
        assert!(!r.stderr.contains(pw));
        assert_unchanged(&before, &env_ref.ad_objects_blocking());

        // Unlocked by an admin: the run goes through.
        sam_tool(tb, "samba-tool", &["user", "unlock", &name], "");
        let again = env_ref.sync_ok();
        assert!(
            summary_line(&again, "added").contains("modified 2"),
            "{again:?}"
        );
        assert_converged(env_ref, &codes, "after the lockout");
        std::fs::write(env_ref.config_path(), &good).unwrap();
        sam_tool(
            tb,
            "samba-tool",
            &["domain", "passwordsettings", "pso", "delete", &name],
            "",
        );
        sam_tool(tb, "samba-tool", &["user", "delete", &name], "");
    });
}

/// The source behind a proxy that can turn one of its answers into a
/// malformed message; the config points at it (and stays so: a change of
/// the config would make the next run a full one).
async fn source_mangling(env: &SyncEnv) -> (crate::common::proxy::Mangler, String) {
    let tb = env.tb;
    let url = tb.get("SOURCE_URL").to_string();
    let upstream: std::net::SocketAddr = url.trim_start_matches("ldaps://").parse().unwrap();
    let ca = tb.path("SOURCE_CA");
    let dir = ca.parent().unwrap();
    let ip = upstream.ip().to_string();
    let mangler = crate::common::proxy::mangle_on(
        &ip,
        upstream,
        &ip,
        (&ca, &dir.join("source.pem"), &dir.join("source.key")),
    )
    .await;
    let proxy = format!("ldaps://{ip}:{}", mangler.port);
    replace_in_config(env, &url, &proxy);
    (mangler, proxy)
}

/// ldap3's parsers panic on malformed server data. A source that sends a
/// malformed entry (in a delta, RFC 4533, and in a full read) or a
/// malformed search result ends the run with exit 2 and an error that
/// names the server, never a panic; nothing in AD changes; the next run
/// against a sound server converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_from_the_source_ends_the_run_cleanly_never_a_panic() {
    use crate::common::proxy::Mangle;
    let env = SyncEnv::new("fault-malformed", 81, 30, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-F", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let (proxy, url) = source_mangling(&env).await;
    let env_ref = &env;
    tokio::task::block_in_place(|| env_ref.sync_ok());
    // A change for a delta to carry: its one entry is mangled.
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let (_, person) = people
        .iter()
        .find(|(_, p)| p["nhsodscode"][0] == codes[0])
        .unwrap();
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: title\ntitle: Malformed Survivor\n-\n\n",
        person["dn"][0]
    ));
    let before = env.ad_objects().await;
    let delta = "content synchronisation under";
    let attrs = "the attribute list is not a SEQUENCE";
    proxy.set(Some(Mangle::Entry(1)));
    malformed_run(&env, &url, &["sync"], &[delta, attrs]);
    assert_unchanged(&before, &env.ad_objects().await);
    // A sound server again: the change arrives.
    proxy.set(None);
    let again = tokio::task::block_in_place(|| env_ref.sync_ok());
    assert!(
        summary_line(&again, "added").contains("modified 1"),
        "{again:?}"
    );
    let before = env.ad_objects().await;
    assert!(
        before
            .values()
            .any(|o| o.get("title").is_some_and(|t| t == &["Malformed Survivor"])),
        "the change arrived"
    );
    // A full read: an entry in the middle; then a search result that
    // ldap3's connection driver cannot parse.
    proxy.set(Some(Mangle::Entry(5)));
    malformed_run(&env, &url, &["sync", "--full"], &["search under", attrs]);
    proxy.set(Some(Mangle::Done(1)));
    let library = "the LDAP library could not parse it (result code)";
    malformed_run(&env, &url, &["sync", "--full"], &[library]);
    assert_unchanged(&before, &env.ad_objects().await);
    proxy.set(None);
    tokio::task::block_in_place(|| env_ref.sync_ok());
    assert_unchanged(&before, &env.ad_objects().await);
}

/// Runs `args` against a source that mangles an answer, and checks the
/// run's end: exit 2, the server's URL and `details` in the error, no
/// panic.
fn malformed_run(env: &SyncEnv, url: &str, args: &[&str], details: &[&str]) {
    let r = tokio::task::block_in_place(|| env.absync(args));
    assert_eq!(r.code, 2, "{r:?}");
    let error = r
        .stderr
        .lines()
        .find(|l| l.starts_with("absync: "))
        .unwrap_or_else(|| panic!("no error in {r:?}"));
    assert!(
        error.contains(&format!("{url}: "))
            && error.contains("malformed message from the server")
            && details.iter().all(|d| error.contains(d)),
        "{r:?}"
    );
    assert!(!r.stderr.contains("panicked"), "{r:?}");
    assert!(!r.stderr.contains("RUST_BACKTRACE"), "{r:?}");
    // The connection's end is put down to the message that ended it.
    assert!(!r.stderr.contains("premature end"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_server_down_writes_nothing_and_names_each_one_tried() {
    let (env, _) = synced("fault-all-down").await;
    let before = env.ad_objects().await;
    let runs_before = env.snapshot().runs(100).unwrap().len();
    // One refuses connections, one never answers.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("ldaps://{}", refused.local_addr().unwrap());
    drop(refused);
    let stalled = format!("ldaps://127.0.0.1:{}", crate::common::proxy::stall().await);
    let url = env.tb.get("TARGET_URL").to_string();
    replace_in_config(
        &env,
        &format!("url = \"{url}\""),
        &format!("urls = [\"{dead}\", \"{stalled}\"]\ntimeout = \"2s\""),
    );
    let env_ref = &env;
    let r = tokio::task::block_in_place(|| env_ref.absync(&["sync"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("no server answered (2 tried)"), "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("{dead}: cannot connect: connection refused")),
        "{r:?}"
    );
    assert!(
        r.stderr
            .contains(&format!("{stalled}: no answer within 2 s")),
        "{r:?}"
    );
    assert_unchanged(&before, &env.ad_objects().await);
    // The run is recorded as failed, naming both.
    let snap = env.snapshot();
    let runs = snap.runs(100).unwrap();
    assert_eq!(runs.len(), runs_before + 1);
    assert!(
        runs[0].status.contains("no server answered"),
        "{:?}",
        runs[0]
    );
    // A live server in the list: the next run goes through it.
    replace_in_config(&env, &format!("\"{stalled}\""), &format!("\"{url}\""));
    let next = tokio::task::block_in_place(|| env_ref.sync_ok());
    let line = summary_line(&next, "failed over");
    assert!(line.contains(&format!("target {dead}")), "{line}");
    assert!(line.contains(&format!("target {url}")), "{line}");
}
