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
