//! `absync check` against the real servers: every problem in one pass,
//! the checks only the servers can answer, and an agreement's end
//! announced 30 days ahead in `check`, `status` and a run's log; with
//! several servers per side, a finding for each.

use crate::common::check::{day, expected_anchors, ALL_ATTRS};
use crate::common::env::SyncEnv;

fn edit_config(env: &SyncEnv, from: &str, to: &str) {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    assert!(text.contains(from), "config has no {from:?}");
    std::fs::write(env.config_path(), text.replacen(from, to, 1)).unwrap();
}

#[tokio::test]
async fn an_agreements_end_is_announced_30_days_ahead_with_the_contacts_it_deletes() {
    let env = SyncEnv::new("pre-expiry", 41, 30, 2, "nhs-to-ad-contact.toml").await;
    let orgs = env.org_codes();
    let (stay, end) = (&orgs[..1], &orgs[1..]);
    let agreements = |until: &str| {
        env.write_agreements(&[
            ("DSA-STAY", stay, ALL_ATTRS, &day(-10), &day(400)),
            ("DSA-END", end, ALL_ATTRS, &day(-10), until),
        ])
    };
    // 31 days ahead: not yet.
    agreements(&day(31));
    let first = env.sync_ok();
    assert!(!first.stderr.contains("DSA-END"), "{first:?}");
    let check = env.absync(&["check"]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(!check.stdout.contains("agreement DSA-END"), "{check:?}");
    let status = env.absync(&["status"]);
    assert!(!status.stdout.contains("agreement DSA-END"), "{status:?}");

    // 30 days ahead: check, the run's log and status say it, with the
    // contacts its end deletes (the people of the organisation only
    // DSA-END covers, as the source holds them).
    agreements(&day(30));
    let n = expected_anchors(&env.source_people("(objectClass=nhsPerson)").await, end).len();
    assert!(n > 0);
    let want = format!(
        "agreement DSA-END ends {} (in 30 days): the first run after it deletes {n} contacts ({})",
        day(30),
        end.join(", ")
    );
    let check = env.absync(&["check"]);
    assert_eq!(check.code, 0, "a warning is not fatal: {check:?}");
    assert!(check.stdout.contains(&want), "{want}\n{check:?}");
    let run = env.sync_ok();
    assert!(run.stderr.contains(&want), "the run's log: {run:?}");
    let status = env.absync(&["status"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(status.stdout.contains(&want), "{want}\n{status:?}");
    let json = env.absync(&["status", "--format", "json"]);
    let j: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let ending = &j["agreements_ending"][0];
    assert_eq!(ending["id"], "DSA-END", "{j}");
    assert_eq!(ending["until"], day(30).as_str());
    assert_eq!(ending["days_left"], 30);
    assert_eq!(ending["contacts"], n as u64);
}

#[tokio::test]
async fn check_reports_a_bad_source_password_and_a_missing_target_ou_in_one_pass() {
    let env = SyncEnv::new("pre-all", 43, 10, 1, "nhs-to-ad-contact.toml").await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-P", &orgs, ALL_ATTRS, &day(-1), &day(300))]);
    let wrong = env.dir.join("wrong.pw");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    edit_config(
        &env,
        env.tb.get("SOURCE_SYNC_PASSWORD_FILE"),
        wrong.to_str().unwrap(),
    );
    let domain = &env.target_ou[env.target_ou.find("DC=").unwrap()..];
    let missing = format!("OU=absync-nowhere,{domain}");
    edit_config(&env, &env.target_ou, &missing);

    let r = env.absync(&["check"]);
    assert_eq!(r.code, 2, "{r:?}");
    let source = env.tb.get("SOURCE_URL");
    assert!(
        r.stderr.contains(&format!("{source}: bind as")) && r.stderr.contains("refused"),
        "the source's bind: {r:?}"
    );
    assert!(
        r.stderr
            .contains(&format!("target OU {missing} does not exist")),
        "the target OU: {r:?}"
    );
    assert!(
        r.stdout
            .contains(&format!("{}: bound as", env.tb.get("TARGET_URL"))),
        "the target was checked: {r:?}"
    );
    assert!(r.stderr.contains("check found 2 fatal problem(s)"), "{r:?}");
    assert!(!r.stderr.contains("not-the-password"), "{r:?}");
    assert!(env.ad_objects().await.is_empty(), "check wrote nothing");
}

#[tokio::test]
async fn online_checks_name_an_organisation_attribute_typo_and_a_missing_base() {
    let env = SyncEnv::new("pre-online", 47, 10, 1, "nhs-to-ad-contact.toml").await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-O", &orgs, ALL_ATTRS, &day(-1), &day(300))]);
    let ok = env.absync(&["check"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    for line in [
        "sampled entries carry entryUUID ([source] anchor_attribute)",
        "sampled entries carry nhsOdsCode ([source] org_attribute)",
        "attributes the mapping writes",
    ] {
        assert!(ok.stdout.contains(line), "{line}: {ok:?}");
    }

    edit_config(
        &env,
        "org_attribute = \"nhsOdsCode\"",
        "org_attribute = \"nhsOdsCod\"",
    );
    let r = env.absync(&["check"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("carries nhsOdsCod ([source] org_attribute): a run holds nobody"),
        "{r:?}"
    );
    edit_config(
        &env,
        "org_attribute = \"nhsOdsCod\"",
        "org_attribute = \"nhsOdsCode\"",
    );

    let base = format!("ou=People,{}", env.source_base);
    let nowhere = format!("ou=Nobody,{}", env.source_base);
    edit_config(&env, &base, &nowhere);
    let r = env.absync(&["check"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "{nowhere}: FATAL: [source] base_dn does not exist on the source"
        )),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("exists; contact objects may be created"),
        "{r:?}"
    );
}

/// Each side's servers in the configuration, as `urls` instead of `url`.
fn set_urls(env: &SyncEnv, live: &str, urls: &[&str]) {
    let list: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    edit_config(
        env,
        &format!("url = \"{live}\""),
        &format!("urls = [{}]", list.join(", ")),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tries_every_server_of_each_side_and_fails_only_a_side_with_none_working() {
    let env = SyncEnv::new("pre-servers", 53, 10, 1, "nhs-to-ad-contact.toml").await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-S", &orgs, ALL_ATTRS, &day(-1), &day(300))]);
    let source = env.tb.get("SOURCE_URL").to_string();
    let target = env.tb.get("TARGET_URL").to_string();
    // Nothing listens on port 1: a source server that is down.
    let dead = "ldaps://127.0.0.1:1";
    // The real DC reached at 127.0.0.1: its certificate names its own
    // address, localhost and its host name, not 127.0.0.1.
    let upstream = target.trim_start_matches("ldaps://").parse().unwrap();
    let port = crate::common::proxy::forward_on("127.0.0.1", upstream, usize::MAX).await;
    let misnamed = format!("ldaps://127.0.0.1:{port}");
    set_urls(&env, &source, &[dead, &source]);
    set_urls(&env, &target, &[&target, &misnamed]);
    let env = &env;

    let r = tokio::task::block_in_place(|| env.absync(&["check"]));
    assert_eq!(r.code, 0, "one server of each side works: {r:?}");
    let line = |url: &str| {
        r.stdout
            .lines()
            .find(|l| l.contains(&format!(" {url}: ")))
            .unwrap_or_else(|| panic!("no line for {url}: {r:?}"))
            .to_string()
    };
    let down = line(dead);
    assert!(
        down.starts_with("source")
            && down.contains(": WARNING: down: ")
            && down.contains("connection refused")
            && down.ends_with("a run uses the other servers meanwhile"),
        "{down}"
    );
    let up = line(&source);
    let host = source
        .trim_start_matches("ldaps://")
        .split(':')
        .next()
        .unwrap();
    assert!(
        up.contains(&format!(
            "bound as {} (LDAPS, certificate verified for {host})",
            env.tb.get("SOURCE_SYNC_DN")
        )),
        "{up}"
    );
    let dc = line(&target);
    assert!(dc.starts_with("target") && !dc.contains("WARNING"), "{dc}");
    assert!(
        dc.to_lowercase().contains(&format!(
            "; dc {} (cn=ntds settings,cn=",
            env.tb.get("TARGET_HOST").to_lowercase()
        )),
        "the DC's name: {dc}"
    );
    let wrong = line(&misnamed);
    assert!(
        wrong.contains(": WARNING: ")
            && wrong.contains("does not name the host in the URL")
            && wrong.contains("name it in urls by a host name its certificate carries"),
        "{wrong}"
    );
    // The one-connection checks ran on the servers that work.
    assert!(
        r.stdout.contains("sampled entries carry entryUUID"),
        "{r:?}"
    );
    assert!(
        r.stdout.contains("exists; contact objects may be created"),
        "{r:?}"
    );

    // The same as JSON: a finding per server.
    let json = tokio::task::block_in_place(|| env.absync(&["check", "--format", "json"]));
    assert_eq!(json.code, 0, "{json:?}");
    let j: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let severity = |check: &str, url: &str| {
        j["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["check"] == check && f["subject"] == url)
            .map(|f| f["severity"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {check} finding for {url}: {j}"))
    };
    assert_eq!(severity("source", dead), "warning");
    assert_eq!(severity("source", &source), "ok");
    assert_eq!(severity("target", &target), "ok");
    assert_eq!(severity("target", &misnamed), "warning");
    assert_eq!(j["ok"], true);

    // No source server works: each is fatal, and the target is still checked.
    edit_config(
        env,
        &format!("urls = [\"{dead}\", \"{source}\"]"),
        &format!("urls = [\"{dead}\", \"ldaps://127.0.0.1:2\"]"),
    );
    let r = tokio::task::block_in_place(|| env.absync(&["check"]));
    assert_eq!(r.code, 2, "{r:?}");
    for url in [dead, "ldaps://127.0.0.1:2"] {
        assert!(
            r.stderr
                .contains(&format!("source      {url}: FATAL: {url}: cannot connect")),
            "{url}: {r:?}"
        );
    }
    assert!(
        r.stdout.contains("exists; contact objects may be created"),
        "{r:?}"
    );
    assert!(r.stderr.contains("check found 2 fatal problem(s)"), "{r:?}");
}
