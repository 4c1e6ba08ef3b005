//! Agreements as evidence: the journal keeps the terms of every agreements
//! file a run used, so an auditor can ask what an agreement allowed at a
//! past time, what is held under it, and export by run, organisation,
//! agreement and time window; an unknown agreement or run is an error.

use crate::common::check::*;
use crate::common::env::{Run, SyncEnv};

fn journal(env: &SyncEnv, args: &[&str]) -> Run {
    let mut all = vec!["journal"];
    all.extend_from_slice(args);
    env.absync(&all)
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn json(run: &Run) -> serde_json::Value {
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

/// Records of a JSONL export.
fn jsonl(run: &Run) -> Vec<serde_json::Value> {
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn an_agreements_terms_at_a_past_time_what_is_held_under_it_and_filtered_exports() {
    let env = SyncEnv::new("terms", 55, 30, 3, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    let (x, y, z) = (codes[0].clone(), codes[1].clone(), codes[2].clone());
    let narrow = ["givenName", "sn", "mail"];
    env.write_agreements(&[
        (
            "DSA-T1",
            &[x.clone(), y.clone()],
            ALL_ATTRS,
            &day(-10),
            &day(10),
        ),
        (
            "DSA-T2",
            std::slice::from_ref(&z),
            &narrow,
            &day(-10),
            &day(10),
        ),
    ]);
    assert_eq!(env.absync(&["sync"]).code, 0);
    // A second run on the same file records no new terms.
    assert_eq!(env.absync(&["sync"]).code, 0);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = now();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // The agreement is renegotiated: Y leaves it, and it ends sooner.
    env.write_agreements(&[
        (
            "DSA-T1",
            std::slice::from_ref(&x),
            ALL_ATTRS,
            &day(-10),
            &day(5),
        ),
        (
            "DSA-T2",
            std::slice::from_ref(&z),
            &narrow,
            &day(-10),
            &day(10),
        ),
    ]);
    assert_eq!(env.absync(&["sync"]).code, 0);

    let snap = env.snapshot();
    let recorded = snap.stored_where("op = 'agreements'", &[]).unwrap();
    assert_eq!(
        recorded.len(),
        2,
        "terms recorded once per file: {recorded:?}"
    );

    let then = json(&journal(
        &env,
        &["agreement", "DSA-T1", "--at", &between, "--format", "json"],
    ));
    let t = &then[0];
    assert_eq!(t["in_force"], true, "{then}");
    assert_eq!(t["organisations"], serde_json::json!([x, y]), "{then}");
    assert_eq!(t["valid_until"], day(10), "{then}");
    assert_eq!(t["recorded_by_run"], 1, "{then}");
    let today = json(&journal(
        &env,
        &["agreement", "DSA-T1", "--at", &now(), "--format", "json"],
    ));
    assert_eq!(today[0]["organisations"], serde_json::json!([x]), "{today}");
    assert_eq!(today[0]["valid_until"], day(5), "{today}");
    assert_eq!(today[0]["recorded_by_run"], 3, "{today}");
    let table = journal(&env, &["agreement", "DSA-T2", "--at", &now()]);
    assert!(
        table.stdout.contains("in force") && table.stdout.contains("givenname, mail, sn"),
        "{table:?}"
    );
    // Before the first run, nothing was recorded.
    let before = journal(&env, &["agreement", "DSA-T1", "--at", "2001-01-01"]);
    assert_eq!(before.code, 2, "{before:?}");
    assert!(before.stderr.contains("no agreements file"), "{before:?}");

    // What is held under one agreement: Z's people only, under DSA-T2.
    let held = json(&journal(
        &env,
        &[
            "held",
            "--at",
            &now(),
            "--agreement",
            "DSA-T2",
            "--format",
            "json",
        ],
    ));
    let held = held.as_array().unwrap();
    assert!(!held.is_empty());
    assert!(
        held.iter()
            .all(|h| h["org"] == z.as_str()
                && h["state"]["agreements"] == serde_json::json!(["DSA-T2"])),
        "{held:?}"
    );

    // Exports by run, organisation, agreement and time.
    let run3 = jsonl(&journal(
        &env,
        &["export", "--run", "3", "--format", "jsonl"],
    ));
    assert!(!run3.is_empty() && run3.iter().all(|r| r["run_id"] == 3));
    let of_z = jsonl(&journal(
        &env,
        &["export", "--org", &z, "--format", "jsonl"],
    ));
    assert!(!of_z.is_empty() && of_z.iter().all(|r| r["org"] == z.as_str()));
    let of_t2 = jsonl(&journal(
        &env,
        &["export", "--agreement", "DSA-T2", "--format", "jsonl"],
    ));
    assert!(!of_t2.is_empty());
    assert!(of_t2.iter().all(|r| r["agreements"]
        .as_array()
        .unwrap()
        .contains(&"DSA-T2".into())));
    let early = jsonl(&journal(
        &env,
        &["export", "--until", &between, "--format", "jsonl"],
    ));
    assert!(!early.is_empty());
    assert!(early
        .iter()
        .all(|r| r["at"].as_str().unwrap() <= between.as_str()));
    assert!(early.iter().all(|r| r["run_id"] != 3), "run 3 came later");
    let all = jsonl(&journal(&env, &["export", "--format", "jsonl"]));
    assert!(all.len() > early.len() + run3.len() - 1);

    // Unknown ids and runs are errors, not empty answers.
    for args in [
        vec!["agreement", "NO-SUCH-ID"],
        vec!["agreement", "NO-SUCH-ID", "--at", "2030-01-01"],
        vec!["held", "--at", "2030-01-01", "--agreement", "NO-SUCH-ID"],
        vec!["export", "--agreement", "NO-SUCH-ID"],
        vec!["export", "--run", "999"],
        vec!["show", "999"],
    ] {
        let r = journal(&env, &args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("NO-SUCH-ID") || r.stderr.contains("999"),
            "{args:?}: {r:?}"
        );
    }
}
