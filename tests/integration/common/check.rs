//! Checks and data shared by the integration tests.

use std::collections::{BTreeMap, BTreeSet};

use super::env::{anchor_of, Objects, Run};

/// Every attribute the generated people have that the mappings read.
pub const ALL_ATTRS: &[&str] = &[
    "givenName",
    "sn",
    "cn",
    "displayName",
    "mail",
    "title",
    "telephoneNumber",
    "mobile",
    "nhsWorkArea",
    "nhsJobRole",
    "employeeNumber",
];

/// The day `offset` days from today, as a TOML date.
pub fn day(offset: i64) -> String {
    (absync::agreements::today() + time::Duration::days(offset)).to_string()
}

/// AD objects owned by absync, by anchor. Fails on a duplicate anchor.
pub fn by_anchor(objects: &Objects) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    for (dn, attrs) in objects {
        if let Some(a) = anchor_of(attrs) {
            let mut attrs = attrs.clone();
            attrs.insert("dn".into(), vec![dn.clone()]);
            assert!(
                out.insert(a.clone(), attrs).is_none(),
                "duplicate anchor {a}"
            );
        }
    }
    out
}

pub fn summary_line<'a>(r: &'a Run, word: &str) -> &'a str {
    r.stderr
        .lines()
        .find(|l| l.contains(word))
        .unwrap_or_else(|| panic!("no summary line with {word:?} in {r:?}"))
}

pub const NO_WRITES: &str = "added 0, modified 0, renamed 0, deleted 0";

/// The OU holds the same objects with the same attributes, uSNChanged and
/// whenChanged included: nothing in it was written. (AD's
/// highestCommittedUSN is domain-wide, so tests running alongside move it.)
pub fn assert_unchanged(before: &Objects, after: &Objects) {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "objects came or went"
    );
    for (dn, attrs) in before {
        assert_eq!(Some(attrs), after.get(dn), "{dn} was written");
    }
}

/// Active people in the given organisations, as the source's rootDN sees
/// them: the set absync must hold.
pub fn expected_anchors(source: &Objects, covered: &[String]) -> BTreeSet<String> {
    source
        .iter()
        .filter(|(_, a)| covered.contains(&a["nhsodscode"][0]))
        .filter(|(_, a)| a["nhsentrystatus"][0] != "leaver")
        .map(|(u, _)| u.clone())
        .collect()
}

/// What a JSON plan says will be written: (anchor, operation) pairs named
/// as the journal names them.
pub fn plan_ops(json_lines: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for line in json_lines.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let anchor = v["anchor"].as_str().unwrap_or_default().to_string();
        let op = v["op"].as_str().unwrap_or_default();
        let mut push = |op: &str| {
            out.insert((anchor.clone(), op.to_string()));
        };
        match op {
            "update" | "restore" => {
                let moved = !absync::diff::same_dn(
                    v["old_dn"].as_str().unwrap_or_default(),
                    v["dn"].as_str().unwrap_or_default(),
                );
                if op == "restore" {
                    push("restore");
                } else if moved {
                    push("rename");
                }
                if v["changes"].as_object().is_some_and(|c| !c.is_empty()) {
                    push("modify");
                }
            }
            "withheld" => {}
            other => push(other),
        }
    }
    out
}

/// What a run journaled as written, refused or withheld per object.
pub fn journal_ops(records: &[absync::journal::Record]) -> BTreeSet<(String, String)> {
    records
        .iter()
        .filter(|r| {
            [
                "add", "rename", "modify", "delete", "hide", "restore", "conflict", "reject",
            ]
            .contains(&r.op.as_str())
                && r.outcome != "already absent"
        })
        .map(|r| (r.anchor.clone().unwrap_or_default(), r.op.clone()))
        .collect()
}

/// Runs `sync --dry-run --format json ARGS`, then `sync ARGS`, and checks
/// the plan announced exactly what the run then did. Returns the run.
pub fn plan_then_sync(env: &super::env::SyncEnv, args: &[&str]) -> Run {
    let mut dry = vec!["sync", "--dry-run", "--format", "json"];
    dry.extend_from_slice(args);
    let plan = env.absync(&dry);
    assert_eq!(plan.code, 0, "{plan:?}");
    let mut real = vec!["sync"];
    real.extend_from_slice(args);
    let run = env.absync(&real);
    let snap = env.snapshot();
    let run_id = snap.runs(1).unwrap()[0].id;
    assert_eq!(
        plan_ops(&plan.stdout),
        journal_ops(&snap.records(run_id).unwrap()),
        "the dry run and the real run differ; plan:\n{}\nrun: {run:?}",
        plan.stdout
    );
    let withheld = plan
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["op"] == "withheld")
        .count() as u64;
    let counts = snap.runs(1).unwrap()[0].counts.clone().unwrap_or_default();
    assert_eq!(
        withheld, counts.withheld,
        "the dry run and the real run hold back different deletes: {run:?}"
    );
    run
}

/// From a blocking section: AD holds exactly the active people of `codes`
/// (as the source's rootDN sees them), each once. Returns them by anchor.
pub fn assert_ad_holds_expected(
    env: &super::env::SyncEnv,
    codes: &[String],
    what: &str,
) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let expected = expected_anchors(&env.source_people_blocking(), codes);
    let ad = by_anchor(&env.ad_objects_blocking());
    assert_eq!(
        ad.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{what}: AD holds exactly the expected people"
    );
    ad
}
