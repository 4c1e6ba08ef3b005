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
                let moved = !absync::engine::diff::same_dn(
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
pub fn journal_ops(records: &[absync::state::journal::Record]) -> BTreeSet<(String, String)> {
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

/// The attributes the config's mapping manages (lower-case).
fn managed_attributes(env: &super::env::SyncEnv) -> BTreeSet<String> {
    let config: toml::Value =
        toml::from_str(&std::fs::read_to_string(env.config_path()).unwrap()).unwrap();
    let file = config["mapping"]["file"].as_str().unwrap();
    let mapping: toml::Value = toml::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    mapping["attributes"]
        .as_table()
        .unwrap()
        .keys()
        .map(|k| k.to_lowercase())
        .collect()
}

/// Values compared as sets (AD does not keep the order of a multi-valued
/// attribute).
fn sorted(v: Option<&Vec<String>>) -> Vec<String> {
    let mut v = v.cloned().unwrap_or_default();
    v.sort();
    v
}

/// One attribute of an object, looked up case-insensitively.
fn values_of<'a>(attrs: &'a BTreeMap<String, Vec<String>>, name: &str) -> Option<&'a Vec<String>> {
    attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// From a blocking section, after the run that follows crashes or faults:
/// AD holds exactly the active people of `codes`, each once; the snapshot
/// holds exactly the objects in AD, at their DN, hidden exactly when in
/// quarantine, with the values AD holds for every managed attribute;
/// nothing is in flight; each object's last applied journal record says
/// what AD holds (a delete: that it is gone), and each object was journaled
/// as added, never twice without a delete or drift between; the values copied as they are (sn, title, displayName)
/// are the source's; a dry run of a full reconcile (source read in full,
/// live target read) finds nothing to write; the journal is intact. A lost
/// add, modify, rename, hide or delete fails one of these.
pub fn assert_converged(env: &super::env::SyncEnv, codes: &[String], phase: &str) {
    let visible = assert_ad_holds_expected(env, codes, phase);
    let owned = env.owned_objects_blocking();
    let snap = env.snapshot();
    assert!(
        snap.intents().unwrap().is_empty(),
        "{phase}: nothing in flight"
    );
    let mut rows: BTreeMap<String, absync::state::ObjectRow> = BTreeMap::new();
    snap.for_each(|r| {
        rows.insert(r.anchor.clone(), r);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        owned.keys().collect::<Vec<_>>(),
        "{phase}: snapshot rows = objects in AD (no orphans, no lost rows)"
    );
    let managed = managed_attributes(env);
    for (anchor, obj) in &owned {
        let dn = &obj["dn"][0];
        let row = &rows[anchor];
        assert!(
            absync::engine::diff::same_dn(dn, &row.dn),
            "{phase}: snapshot has {} for {dn}",
            row.dn
        );
        assert_eq!(
            row.hidden.is_some(),
            !visible.contains_key(anchor),
            "{phase}: hidden in the snapshot = in quarantine in AD ({dn})"
        );
        for name in &managed {
            assert_eq!(
                sorted(values_of(&row.attrs, name)),
                sorted(obj.get(name)),
                "{phase}: {name} of {dn}: snapshot vs AD"
            );
        }
    }

    // The journal: the last applied record of every object names what AD
    // holds now.
    // No object is added twice: an add follows only a delete, or a drift
    // record (an object deleted by hand, which a full run adds again).
    let mut last: BTreeMap<String, absync::state::journal::Record> = BTreeMap::new();
    let mut live: BTreeMap<String, bool> = BTreeMap::new();
    for s in snap
        .stored_where(
            "(outcome = 'applied' AND op IN ('add', 'modify', 'rename', 'hide', 'restore', 'delete')) OR op = 'drift'",
            &[],
        )
        .unwrap()
    {
        let anchor = s.record.anchor.clone().unwrap();
        match s.record.op.as_str() {
            "add" => assert!(
                !live.insert(anchor.clone(), true).unwrap_or(false),
                "{phase}: {anchor} journaled as added twice (record {})",
                s.id
            ),
            "delete" | "drift" => {
                live.insert(anchor.clone(), false);
            }
            _ => {}
        }
        if s.record.op != "drift" {
            last.insert(anchor, s.record);
        }
    }
    for (anchor, r) in &last {
        match (owned.get(anchor), &r.state) {
            (None, None) => assert_eq!(r.op, "delete", "{phase}: {anchor}"),
            (Some(obj), Some(state)) => {
                let dn = &obj["dn"][0];
                assert!(
                    absync::engine::diff::same_dn(dn, &state.dn),
                    "{phase}: last journal record ({}) of {anchor} has {}, AD {dn}",
                    r.op,
                    state.dn
                );
                for name in &managed {
                    assert_eq!(
                        sorted(values_of(&state.attrs, name)),
                        sorted(obj.get(name)),
                        "{phase}: {name} of {dn}: last journal record ({}) vs AD",
                        r.op
                    );
                }
            }
            (obj, _) => panic!(
                "{phase}: last journal record of {anchor} is a {} ({:?}) but AD has {obj:?}",
                r.op, r.state
            ),
        }
    }
    for anchor in owned.keys() {
        assert!(
            last.contains_key(anchor),
            "{phase}: {anchor} is in AD with no journal record"
        );
        assert_eq!(
            live.get(anchor),
            Some(&true),
            "{phase}: {anchor} journaled as added"
        );
    }

    // The source's values, read independently, for attributes the mapping
    // copies as they are.
    let source = env.source_people_blocking();
    for (anchor, obj) in &visible {
        for (name, max) in [("sn", 64), ("title", 128), ("displayname", 256)] {
            let Some(want) = source[anchor].get(name).and_then(|v| v.first()) else {
                continue;
            };
            if want.chars().count() <= max && !want.chars().any(char::is_control) {
                // Leading and trailing spaces do not survive (AD trims).
                assert_eq!(
                    obj.get(name).and_then(|v| v.first()).map(|v| v.as_str()),
                    Some(want.trim()),
                    "{phase}: {name} of {anchor} in AD vs the source"
                );
            }
        }
    }

    let plan = env.absync(&["sync", "--dry-run", "--full", "--format", "json"]);
    assert_eq!(plan.code, 0, "{phase}: {plan:?}");
    assert!(
        plan_ops(&plan.stdout).is_empty(),
        "{phase}: a full reconcile would still write:\n{}",
        plan.stdout
    );
    let verify = env.absync(&["journal", "verify"]);
    assert_eq!(verify.code, 0, "{phase}: {verify:?}");
}
