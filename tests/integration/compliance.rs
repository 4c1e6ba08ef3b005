//! "Is anything in our OU that no agreement allows?" against the real
//! servers: `absync audit` lists a hand-made contact absync does not own
//! and the owned contacts no agreement in force covers any more, exits 1,
//! and writes nothing; every full run journals the same check before its
//! end, and `status` and the metrics show it.

use std::collections::{BTreeMap, BTreeSet};

use absync::ldap::Conn;
use serde_json::Value;

use crate::common::check::*;
use crate::common::env::{Run, SyncEnv};

fn safety(quarantine: &str, max_deletes: u64) -> String {
    format!(
        "[safety]\nmax_deletes = {max_deletes}\nmax_delete_percent = 100\n\
         delete_grace = \"7d\"\nquarantine_ou = \"{quarantine}\"\n"
    )
}

/// `absync audit --format json`: its findings, and the run.
fn audit_json(env: &SyncEnv) -> (Vec<Value>, Run) {
    let r = env.absync(&["audit", "--format", "json"]);
    let findings = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    (findings, r)
}

fn classes(findings: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for f in findings {
        *out.entry(f["class"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    out
}

/// The records of the last run, start and end included, as JSON.
fn last_run_records(env: &SyncEnv) -> Vec<Value> {
    let run = env.snapshot().runs(1).unwrap()[0].id;
    let show = env.absync(&["journal", "show", &run.to_string(), "--format", "json"]);
    serde_json::from_str(&show.stdout).unwrap()
}

/// The run's `compliance` record, checked to come before its end record.
fn compliance_record(env: &SyncEnv) -> Value {
    let records = last_run_records(env);
    let at = records
        .iter()
        .position(|r| r["op"] == "compliance")
        .unwrap_or_else(|| panic!("no compliance record in {records:#?}"));
    let end = records
        .iter()
        .position(|r| r["op"] == "run" && r["outcome"] == "ended")
        .unwrap();
    assert!(at < end, "the check is journaled before the run's end");
    records[at].clone()
}

/// The state directory's files (SQLite's shared-memory index aside, which
/// any reader touches): name → mode and SHA-256.
fn state_files(env: &SyncEnv) -> BTreeMap<String, (u32, String)> {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(env.state_dir()).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with("-shm") {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            let sha = format!("{:x}", sha2::Sha256::digest(std::fs::read(&path).unwrap()));
            out.insert(name, (mode, sha));
        }
    }
    out
}

fn metric(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .to_string()
}

#[tokio::test]
async fn audit_lists_a_hand_made_contact_and_contacts_whose_organisation_was_removed() {
    let env = SyncEnv::new("compliance", 71, 45, 3, "nhs-to-ad-contact.toml").await;
    let quarantine = env.new_quarantine().await;
    env.set_safety(&safety(&quarantine, 1_000_000));
    let codes = env.org_codes();
    let no_phones: Vec<&str> = ALL_ATTRS
        .iter()
        .copied()
        .filter(|a| *a != "telephoneNumber")
        .collect();
    let a = vec![codes[0].clone(), codes[1].clone()];
    let b = vec![codes[2].clone()];
    env.write_agreements(&[
        ("DSA-CMP-A", &a, &no_phones, &day(-30), &day(30)),
        ("DSA-CMP-B", &b, ALL_ATTRS, &day(-30), &day(30)),
    ]);
    env.sync_ok();
    // A leaver, hidden in the quarantine OU for the grace period.
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let owned = env.owned_objects().await;
    let of_org = |code: &str| -> Vec<String> {
        owned
            .iter()
            .filter(|(_, o)| o["company"][0] == format!("NHS {code}"))
            .map(|(a, _)| a.clone())
            .collect()
    };
    let (first, removed_org) = (of_org(&codes[0]), of_org(&codes[1]));
    assert!(first.len() > 2 && removed_org.len() > 1, "{owned:?}");
    let (leaver, edited) = (&first[0], &first[1]);
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: nhsEntryStatus\nnhsEntryStatus: leaver\n-\n\n",
        people[leaver]["dn"][0]
    ));
    env.sync_ok();

    // Everything covered: exit 0, nothing checked by a full run yet.
    let (findings, r) = audit_json(&env);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        classes(&findings),
        BTreeMap::from([("covered".into(), owned.len() - 1), ("hidden".into(), 1)]),
        "{r:?}"
    );
    let hidden = findings.iter().find(|f| f["class"] == "hidden").unwrap();
    assert_eq!(hidden["anchor"], leaver.as_str());
    assert!(hidden["dn"].as_str().unwrap().ends_with(&quarantine));
    assert!(
        r.stderr.contains(": no violation; checked target OU"),
        "{r:?}"
    );
    let status = env.absync(&["status"]);
    assert!(
        status.stdout.contains("compliance not checked yet"),
        "{status:?}"
    );

    // A contact made by hand in the managed OU, another object in the
    // quarantine OU, a telephone number no agreement allows added by hand
    // to an owned contact, and an organisation taken out of its agreement
    // (no sync since).
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    let hand_made = format!("CN=Hand Made,{}", env.target_ou);
    let attrs = |pairs: &[(&str, &str)]| -> Vec<(String, std::collections::HashSet<String>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), [v.to_string()].into()))
            .collect()
    };
    admin
        .add(
            &hand_made,
            attrs(&[
                ("objectClass", "contact"),
                ("sn", "Made"),
                ("company", "NHS RZZ"),
                ("mail", "hand.made@nhs.net"),
            ]),
        )
        .await
        .unwrap();
    let room = format!("CN=Meeting Room 2,{quarantine}");
    admin
        .add(
            &room,
            attrs(&[("objectClass", "contact"), ("description", "Room booking")]),
        )
        .await
        .unwrap();
    let edited_dn = owned[edited]["dn"][0].clone();
    admin
        .modify(
            &edited_dn,
            vec![ldap3::Mod::Add(
                "telephoneNumber".to_string(),
                ["+441632960999".to_string()].into(),
            )],
        )
        .await
        .unwrap();
    admin.unbind().await;
    env.write_agreements(&[
        (
            "DSA-CMP-A",
            &[codes[0].clone()],
            &no_phones,
            &day(-30),
            &day(30),
        ),
        ("DSA-CMP-B", &b, ALL_ATTRS, &day(-30), &day(30)),
    ]);

    let ad_before = env.ad_objects().await;
    let journal_before = env.absync(&["journal", "verify"]).stdout;
    let state_before = state_files(&env);
    let (findings, r) = audit_json(&env);
    assert_eq!(r.code, 1, "a violation: {r:?}");
    let by_dn: BTreeMap<&str, &Value> = findings
        .iter()
        .map(|f| (f["dn"].as_str().unwrap(), f))
        .collect();
    assert!(
        !by_dn.keys().any(|dn| dn.eq_ignore_ascii_case(&quarantine)),
        "the quarantine OU is a container, not an object: {findings:#?}"
    );
    // The hand-made contact: not owned, with its NHS-looking values.
    let f = by_dn[hand_made.as_str()];
    assert_eq!(f["class"], "not_owned", "{f:#}");
    assert_eq!(f["violation"], false);
    assert_eq!(f["org"], "RZZ");
    assert_eq!(f["attributes"]["company"][0], "NHS RZZ");
    assert_eq!(f["attributes"]["mail"][0], "hand.made@nhs.net");
    assert!(f["attributes"].get("sn").is_none(), "{f:#}");
    assert!(
        f["reason"]
            .as_str()
            .unwrap()
            .contains("RZZ, which no agreement in force covers"),
        "{f:#}"
    );
    let f = by_dn[room.as_str()];
    assert_eq!(f["class"], "not_owned", "{f:#}");
    assert_eq!(f["attributes"], serde_json::json!({}));
    // The removed organisation's contacts: not covered, a violation each.
    let not_covered: BTreeMap<String, &Value> = findings
        .iter()
        .filter(|f| f["class"] == "not_covered")
        .map(|f| (f["anchor"].as_str().unwrap().to_string(), f))
        .collect();
    let mut expected: BTreeSet<String> = removed_org.iter().cloned().collect();
    expected.insert(edited.clone());
    assert_eq!(
        not_covered.keys().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    for anchor in &removed_org {
        let f = not_covered[anchor];
        assert_eq!(f["violation"], true);
        assert_eq!(f["org"], codes[1].as_str());
        assert_eq!(
            f["reason"],
            format!(
                "organisation removed: no agreement in force covers {} (held under DSA-CMP-A)",
                codes[1]
            )
        );
    }
    // The telephone number added by hand: named with its value.
    let f = not_covered[edited];
    assert_eq!(
        f["attributes"]["telephoneNumber"][0], "+441632960999",
        "{f:#}"
    );
    assert!(
        f["reason"]
            .as_str()
            .unwrap()
            .contains("telephoneNumber (from telephonenumber)"),
        "{f:#}"
    );
    let covered = owned.len() - 1 - removed_org.len() - 1;
    assert_eq!(
        classes(&findings),
        BTreeMap::from([
            ("covered".into(), covered),
            ("hidden".into(), 1),
            ("not_covered".into(), removed_org.len() + 1),
            ("not_owned".into(), 2),
        ])
    );
    // Nothing was written: not to AD, not to the journal.
    assert_unchanged(&ad_before, &env.ad_objects().await);
    assert_eq!(env.absync(&["journal", "verify"]).stdout, journal_before);
    assert_eq!(state_files(&env), state_before, "the state is only read");

    // The table, for people: each object with its class, then the counts.
    let table = env.absync(&["audit"]);
    assert_eq!(table.code, 1, "{table:?}");
    let line = format!("not owned    RZZ    {hand_made}");
    assert!(table.stdout.contains(&line), "{table:?}");
    assert!(table.stdout.contains("company: NHS RZZ"), "{table:?}");
    let summary = table.stdout.lines().last().unwrap();
    assert!(
        summary.starts_with(&format!(
            "{} objects: {covered} covered, 1 hidden",
            owned.len() + 2
        )) && summary.contains(&format!(
            "{} not covered, 0 past their grace period, 2 not owned by absync (1 with \
                 NHS-looking values): {} VIOLATIONS",
            removed_org.len() + 1,
            removed_org.len() + 1
        )),
        "{summary}"
    );
    let short = env.absync(&["audit", "--hide-covered", "--format", "csv"]);
    assert_eq!(short.code, 1);
    let rows: Vec<&str> = short.stdout.lines().collect();
    assert_eq!(
        rows[0],
        "\"class\",\"violation\",\"org\",\"anchor\",\"dn\",\"agreements\",\"reason\",\"attributes\""
    );
    assert_eq!(rows.len(), 1 + removed_org.len() + 1 + 2, "{short:?}");

    // A full run whose deletes a rail holds back: the telephone number is
    // repaired, the removed organisation's contacts stay, and the check at
    // its end journals them as violations (by anchor, without DNs).
    env.set_safety(&safety(&quarantine, 1));
    let full = env.absync(&["sync", "--full"]);
    assert_eq!(full.code, 3, "{full:?}");
    let record = compliance_record(&env);
    assert_eq!(record["outcome"], "violation", "{record:#}");
    let d = &record["detail"];
    assert_eq!(d["not_covered"], removed_org.len());
    assert_eq!(
        (&d["hidden"], &d["not_owned"], &d["not_owned_nhs"]),
        (&Value::from(1), &Value::from(2), &Value::from(1))
    );
    assert_eq!(d["not_owned_orgs"], serde_json::json!({"RZZ": 1}));
    let listed: BTreeSet<String> = d["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["anchor"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, removed_org.iter().cloned().collect());
    assert!(!record.to_string().contains("Hand Made"), "{record:#}");
    let status = env.absync(&["status"]);
    let line = status
        .stdout
        .lines()
        .find(|l| l.starts_with("compliance checked "))
        .unwrap_or_else(|| panic!("{status:?}"));
    assert!(
        line.ends_with(&format!(
            "{} VIOLATIONS; absync audit lists them",
            removed_org.len()
        )),
        "{line}"
    );
    let metrics = absync::service::metrics::render(&env.state_dir());
    assert_eq!(
        metric(&metrics, "absync_compliance_violations"),
        removed_org.len().to_string()
    );
    assert_eq!(
        metric(&metrics, "absync_compliance_unowned_objects{nhs=\"true\"}"),
        "1"
    );
    assert_eq!(metric(&metrics, "absync_compliance_check_failed"), "0");

    // Released, the deletes go; the next check finds no violation.
    let full = env.absync(&["sync", "--full", "--allow-deletes", "100"]);
    assert_eq!(full.code, 0, "{full:?}");
    let record = compliance_record(&env);
    assert_eq!(record["outcome"], "ok", "{record:#}");
    assert_eq!(record["detail"]["violations"], serde_json::json!([]));
    let status = env.absync(&["status"]);
    assert!(status.stdout.contains(": no violation\n"), "{status:?}");
    let metrics = absync::service::metrics::render(&env.state_dir());
    assert_eq!(metric(&metrics, "absync_compliance_violations"), "0");
    let (_, r) = audit_json(&env);
    assert_eq!(r.code, 0, "{r:?}");
}
