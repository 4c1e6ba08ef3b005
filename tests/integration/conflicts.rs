//! Conflicts as open items: a conflict is journaled when it opens, when
//! what it collides with changes, and when it resolves, never again while
//! it stands; `status` and the metrics list it with its age. Checked with
//! the journal, `status` (table and JSON), the metrics text, the summary
//! and independent searches of AD as the administrator.

use std::collections::HashSet;

use absync::ldap::Conn;
use absync::state::journal::Record;

use crate::common::check::*;
use crate::common::env::SyncEnv;

/// Every record about `anchor` (all runs), in order.
fn about(env: &SyncEnv, anchor: &str) -> Vec<Record> {
    let snap = env.snapshot();
    snap.stored_where("anchor = ?1", &[&anchor])
        .unwrap()
        .into_iter()
        .map(|s| s.record)
        .collect()
}

fn conflict_records(env: &SyncEnv, anchor: &str) -> Vec<Record> {
    about(env, anchor)
        .into_iter()
        .filter(|r| r.op == "conflict")
        .collect()
}

/// The value of a metric without labels in the metrics text.
fn metric(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn status_json(env: &SyncEnv) -> serde_json::Value {
    let status = env.absync(&["status", "--format", "json"]);
    assert_eq!(status.code, 0, "{status:?}");
    serde_json::from_str(&status.stdout).unwrap()
}

async fn add_entry(env: &SyncEnv, dn: &str, attrs: &[(&str, &str)]) {
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    let attrs = attrs
        .iter()
        .map(|(k, v)| (k.to_string(), HashSet::from([v.to_string()])))
        .collect();
    admin
        .add(dn, attrs)
        .await
        .unwrap_or_else(|e| panic!("adding {dn}: {e}"));
    admin.unbind().await;
}

async fn remove_entry(env: &SyncEnv, dn: &str) {
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    admin.delete(dn).await.unwrap();
    admin.unbind().await;
}

#[tokio::test]
async fn a_standing_conflict_is_journaled_once_across_five_runs_then_resolved() {
    let env = SyncEnv::new("openconf", 91, 40, 2, "nhs-to-ad-contact.toml").await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-OC-001", &orgs, ALL_ATTRS, &day(-1), &day(1))]);
    let source = env.source_people("(objectClass=nhsPerson)").await;
    let expected = expected_anchors(&source, &orgs);
    // A person with a plain name no one else in scope has.
    let name = |u: &String| {
        let a = &source[u];
        format!("{} {}", a["givenname"][0].trim(), a["sn"][0].trim())
    };
    let names: Vec<String> = expected
        .iter()
        .filter(|u| source[*u].contains_key("givenname"))
        .map(name)
        .collect();
    let victim = expected
        .iter()
        .filter(|u| source[*u].contains_key("givenname"))
        .find(|u| {
            let n = name(u);
            n.chars().all(|c| c.is_ascii_alphabetic() || c == ' ')
                && names.iter().filter(|m| **m == n).count() == 1
        })
        .expect("a person with a plain, unique name")
        .clone();
    // An object absync does not own holds that name in the OU.
    let in_the_way = format!("CN={},{}", name(&victim), env.target_ou);
    add_entry(
        &env,
        &in_the_way,
        &[("objectClass", "contact"), ("description", "made by hand")],
    )
    .await;

    // Five runs, deltas and a full one among them: the conflict stands.
    for args in [
        &["sync"][..],
        &["sync"],
        &["sync", "--full"],
        &["sync"],
        &["sync"],
    ] {
        let run = env.absync(args);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(
            summary_line(&run, "conflicts").contains("conflicts 1, failed 0"),
            "the summary still shows the standing conflict: {run:?}"
        );
    }
    let records = conflict_records(&env, &victim);
    assert_eq!(records.len(), 1, "journaled once: {records:#?}");
    let opened = &records[0];
    assert_eq!(
        (opened.outcome.as_str(), opened.reason.as_str()),
        ("withheld", "conflict")
    );
    assert_eq!(opened.detail.as_ref().unwrap()["conflict"], "opened");
    assert_eq!(opened.detail.as_ref().unwrap()["kind"], "name");
    assert!(
        absync::engine::diff::same_dn(opened.old_dn.as_deref().unwrap(), &in_the_way),
        "{opened:?}"
    );
    let snap = env.snapshot();
    assert_eq!(snap.runs(10).unwrap().len(), 5);
    assert!(!by_anchor(&env.ad_objects().await).contains_key(&victim));

    // status and the metrics list it, with its age.
    let status = env.absync(&["status"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        status.stdout.contains("conflicts  1 open"),
        "{}",
        status.stdout
    );
    let line = status
        .stdout
        .lines()
        .find(|l| l.contains(&victim))
        .unwrap_or_else(|| panic!("{}", status.stdout));
    assert!(
        line.trim_start().starts_with("open ")
            && line.contains("(since ")
            && line.contains(", run 1)"),
        "{line}"
    );
    assert!(line.contains("name held by"), "{line}");
    let json = status_json(&env);
    let c = &json["conflicts"];
    assert_eq!(c["open"], 1, "{c}");
    assert_eq!(c["oldest"][0]["anchor"], victim.as_str());
    assert_eq!(c["oldest"][0]["opened_run"], 1);
    assert_eq!(c["oldest"][0]["last_run"], 5);
    assert_eq!(c["oldest"][0]["kind"], "name");
    let age = c["oldest_age_seconds"].as_i64().unwrap();
    assert!(age >= 1, "five runs took more than a second: {c}");
    let metrics = absync::service::metrics::render(&env.state_dir());
    assert_eq!(metric(&metrics, "absync_open_conflicts"), 1);
    assert!(metric(&metrics, "absync_oldest_conflict_age_seconds") >= age);

    // The other object goes: the resolution is journaled, the contact lands.
    remove_entry(&env, &in_the_way).await;
    let sixth = env.sync_ok();
    assert!(
        summary_line(&sixth, "conflicts").contains("conflicts 0, failed 0"),
        "{sixth:?}"
    );
    let ad = by_anchor(&env.ad_objects().await);
    assert!(
        absync::engine::diff::same_dn(&ad[&victim]["dn"][0], &in_the_way),
        "the contact has the name now: {:?}",
        ad[&victim]
    );
    let runs = snap.runs(1).unwrap();
    let run6: Vec<Record> = snap
        .records(runs[0].id)
        .unwrap()
        .into_iter()
        .filter(|r| r.anchor.as_deref() == Some(&victim))
        .collect();
    let ops: Vec<(&str, &str)> = run6
        .iter()
        .map(|r| (r.op.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        ops,
        [("add", "applied"), ("conflict", "resolved")],
        "{run6:#?}"
    );
    let resolved = &run6[1];
    assert_eq!(resolved.reason, "conflict resolved");
    let detail = resolved.detail.as_ref().unwrap();
    assert_eq!(detail["resolution"], "written");
    assert_eq!(detail["opened_run"], 1);
    assert!(absync::engine::diff::same_dn(
        resolved.old_dn.as_deref().unwrap(),
        &in_the_way
    ));
    assert!(status_json(&env)["conflicts"]["open"] == 0);
    let status = env.absync(&["status"]);
    assert!(status.stdout.contains("conflicts  none open"), "{status:?}");
    let metrics = absync::service::metrics::render(&env.state_dir());
    assert_eq!(metric(&metrics, "absync_open_conflicts"), 0);
    assert_eq!(metric(&metrics, "absync_oldest_conflict_age_seconds"), 0);

    // Nothing more about it afterwards; the journal still verifies.
    env.sync_ok();
    assert_eq!(conflict_records(&env, &victim).len(), 2);
    let verify = env.absync(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[tokio::test]
async fn a_conflict_whose_other_object_changes_is_journaled_again_once() {
    let env = SyncEnv::new("moveconf", 92, 30, 2, "nhs-to-ad-mail-contact.toml").await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-MC-001", &orgs, ALL_ATTRS, &day(-1), &day(1))]);
    let source = env.source_people("(objectClass=nhsPerson)").await;
    let expected = expected_anchors(&source, &orgs);
    let person = expected
        .iter()
        .find(|u| source[*u].contains_key("mail"))
        .unwrap()
        .clone();
    // The person's address, held by a council user elsewhere in the domain.
    let tag = crate::common::unique("m").replace('-', "");
    let addr = format!("{tag}@council.example");
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: mail\nmail: {addr}\n\n",
        source[&person]["dn"][0]
    ));
    let base = env.tb.get("TARGET_BASE_DN");
    let user = |n: u8| {
        let sam = format!("u{n}{}", &tag[tag.len().saturating_sub(17)..]);
        (format!("CN=Council {n} {tag},CN=Users,{base}"), sam)
    };
    let (first_dn, first_sam) = user(1);
    add_entry(
        &env,
        &first_dn,
        &[
            ("objectClass", "user"),
            ("sAMAccountName", &first_sam),
            ("mail", &addr),
        ],
    )
    .await;

    env.sync_ok();
    env.sync_ok();
    let records = conflict_records(&env, &person);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].detail.as_ref().unwrap()["kind"], "address");
    assert_eq!(
        records[0].old_dn.as_deref().map(str::to_lowercase),
        Some(first_dn.to_lowercase())
    );

    // Another object holds the address now: journaled again, once.
    remove_entry(&env, &first_dn).await;
    let (second_dn, second_sam) = user(2);
    add_entry(
        &env,
        &second_dn,
        &[
            ("objectClass", "user"),
            ("sAMAccountName", &second_sam),
            ("mail", &addr.to_uppercase()),
        ],
    )
    .await;
    for _ in 0..3 {
        let run = env.sync_ok();
        assert!(
            summary_line(&run, "conflicts").contains("conflicts 1, failed 0"),
            "{run:?}"
        );
    }
    let records = conflict_records(&env, &person);
    assert_eq!(records.len(), 2, "{records:#?}");
    let changed = &records[1];
    assert_eq!(
        (changed.outcome.as_str(), changed.reason.as_str()),
        ("withheld", "conflict changed")
    );
    assert_eq!(
        changed.old_dn.as_deref().map(str::to_lowercase),
        Some(second_dn.to_lowercase())
    );
    assert!(changed
        .error
        .as_deref()
        .is_some_and(|e| e.to_lowercase().contains(&addr.to_lowercase())));
    // The conflict's age carries on from when it opened.
    let c = &status_json(&env)["conflicts"];
    assert_eq!(c["open"], 1, "{c}");
    assert_eq!(c["oldest"][0]["opened_run"], 1, "{c}");
    assert_eq!(
        c["oldest"][0]["with"].as_str().map(str::to_lowercase),
        Some(second_dn.to_lowercase())
    );

    // The address is free: resolved, and the contact lands with it.
    remove_entry(&env, &second_dn).await;
    env.sync_ok();
    let ad = by_anchor(&env.ad_objects().await);
    assert_eq!(ad[&person]["mail"], vec![addr.clone()]);
    let records = conflict_records(&env, &person);
    assert_eq!(records.len(), 3, "{records:#?}");
    assert_eq!(records[2].outcome, "resolved");
    assert_eq!(records[2].detail.as_ref().unwrap()["resolution"], "written");
    assert_eq!(status_json(&env)["conflicts"]["open"], 0);
}
