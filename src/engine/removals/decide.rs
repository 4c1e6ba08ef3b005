//! The delete decision, as a pure function of what the run found: which
//! unseen objects are hidden or deleted, and which a safety rail holds
//! back (the source-health guard, the deletion threshold), with
//! `--allow-deletes N` releasing the first N held.
//!
//! **Invariant:** [`decide`] does no I/O and reads no clock: the time comes
//! in [`Rules::now`], what the source and the state said comes in
//! [`Facts`] and the reasons.

use crate::period::Period;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use time::OffsetDateTime;

use crate::config::SafetyConfig;
use crate::engine::diff::{Change, Kind};
use crate::engine::map::{truncate, Mapping};
use crate::state::journal::time_text;
use crate::state::{Hidden, ObjectRow};

/// What the run found, gathered before deciding.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Source health is judged on reads that claim to be complete: a full
    /// pull, or a delta's present phase. A delta that lists what is gone
    /// says so explicitly; only the threshold applies to it.
    pub judge_health: bool,
    /// An agreement was in force, so the source was read at all.
    pub agreements_in_force: bool,
    /// Entries read, those a present phase named unchanged included.
    pub pulled_total: u64,
    /// Entries read per organisation.
    pub pulled_per_org: HashMap<String, u64>,
    /// The organisations an agreement in force covers.
    pub granted: BTreeSet<String>,
    /// Organisations a delta would take whole: held like an organisation
    /// returning nothing.
    pub emptied: HashSet<String>,
    /// Visible managed objects when the run started.
    pub managed_at_start: u64,
    /// Hidden managed objects when the run started (waiting out their grace
    /// period). Their deletes count against the threshold, so they count in
    /// its base too: the share is of every managed object.
    pub hidden_at_start: u64,
    /// Closed organisations (ODS code → the successor's, when recorded).
    pub closed: BTreeMap<String, Option<String>>,
}

/// The settings the decision follows, and the time it is made at.
pub struct Rules<'a> {
    pub safety: &'a SafetyConfig,
    pub mapping: &'a Mapping,
    /// `--allow-deletes N`.
    pub allow_deletes: Option<u64>,
    pub now: OffsetDateTime,
}

/// What the source said of an anchor the run did not see: its organisation,
/// and whether it is a leaver.
pub type Found = HashMap<String, (String, bool)>;

/// The decision.
#[derive(Debug, Default)]
pub struct Decided {
    /// Hides and deletes to carry out, in this order.
    pub release: Vec<Change>,
    /// Held back, each with why.
    pub held: Vec<(Change, String)>,
    /// Set when anything is held back: what the run reports and journals.
    pub stop: Option<Stop>,
    /// What an admin should hear of (the log): people who moved to the
    /// successor of a closed organisation that no agreement covers.
    pub warnings: Vec<String>,
}

/// The run status of a run that stopped at the deletion threshold.
pub const STOPPED_AT_THRESHOLD: &str = "stopped: deletion threshold";
/// The run status of a run whose source-health guard held deletes back.
pub const HELD_SOURCE_UNHEALTHY: &str = "deletes held: source unhealthy";

/// Whether a run's status (as the runs table stores it) says a safety rail
/// held deletes back, so they wait for an admin.
pub fn holds_deletes(status: &str) -> bool {
    status == STOPPED_AT_THRESHOLD || status == HELD_SOURCE_UNHEALTHY
}

/// Why a run held deletes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The run's status: `stopped: deletion threshold` or `deletes held:
    /// source unhealthy`.
    pub status: &'static str,
    /// The journal record's operation: `threshold` or `guard`.
    pub op: &'static str,
    /// What an admin reads: how many, why, how to review and release.
    pub message: String,
}

/// The reasons that leave no agreement in force for an object: it may not
/// be held, hidden or not.
fn no_longer_agreed(reason: &str) -> bool {
    crate::agreements::no_agreement_covers(reason)
}

/// Decides what becomes of each managed object the run did not see (with
/// the reason known so far; `None`: as `found` says).
pub fn decide(
    unseen: Vec<(ObjectRow, Option<String>)>,
    found: &Found,
    facts: &Facts,
    rules: &Rules<'_>,
) -> Decided {
    let mut removals: Vec<Change> = Vec::new();
    let mut guarded: Vec<(Change, String)> = Vec::new();
    let mut guard_notes: BTreeMap<String, u64> = BTreeMap::new();
    let mut warnings = Vec::new();
    for (row, reason) in unseen {
        let unhealthy = unhealthy(&row.org, facts);
        if let Some(why) = found_reason(&row, found, facts).filter(|_| reason.is_none()) {
            if why.starts_with(MOVED_TO) {
                warnings.push(format!(
                    "{} ({}): {why}",
                    crate::text::Shown(&row.dn),
                    row.anchor
                ));
            }
        }
        let Some(change) = removal(row, reason, found, facts, rules) else {
            continue;
        };
        match unhealthy {
            Some(why) => {
                *guard_notes.entry(why.clone()).or_default() += 1;
                guarded.push((change, why));
            }
            None => removals.push(change),
        }
    }
    let threshold = threshold(removals.len() as u64, facts, rules.safety);
    // (change, why it is held unless released, whether by the threshold)
    let mut candidates: Vec<(Change, Option<String>, bool)> = removals
        .into_iter()
        .map(|c| (c, threshold.clone(), threshold.is_some()))
        .collect();
    candidates.extend(
        guarded
            .into_iter()
            .map(|(c, why)| (c, Some(format!("source unhealthy: {why}")), false)),
    );
    let mut decided = Decided {
        warnings,
        ..Decided::default()
    };
    let mut by_threshold = 0;
    for (change, why, over) in candidates {
        let go = match (rules.allow_deletes, &why) {
            (Some(limit), _) => (decided.release.len() as u64) < limit,
            (None, None) => true,
            (None, Some(_)) => false,
        };
        if go {
            decided.release.push(change);
        } else {
            by_threshold += usize::from(over);
            let why = why.unwrap_or_else(|| "over the --allow-deletes limit".into());
            decided.held.push((change, why));
        }
    }
    if !decided.held.is_empty() {
        let threshold = threshold.filter(|_| by_threshold > 0);
        decided.stop = Some(stop(decided.held.len(), threshold, &guard_notes));
    }
    decided
}

/// The hide or delete for one unseen object, or `None` while a hidden one
/// waits out its grace period.
fn removal(
    row: ObjectRow,
    reason: Option<String>,
    found: &Found,
    facts: &Facts,
    rules: &Rules<'_>,
) -> Option<Change> {
    // With no agreement left to hold it under, nothing waits out a grace
    // period: it is deleted (still through the guard and the threshold).
    let unlawful = reason.as_deref().is_some_and(no_longer_agreed);
    if let Some(h) = &row.hidden {
        // A hidden object whose grace period is over is deleted; like any
        // other delete it passes the source-health guard and the threshold.
        let reason = match reason {
            Some(r) if unlawful => r,
            _ if grace_over(h, rules.safety.delete_grace, rules.now) => {
                format!("grace period over ({})", h.reason)
            }
            _ => return None,
        };
        return Some(Change {
            anchor: row.anchor.clone(),
            reason,
            kind: Kind::Delete { before: row },
        });
    }
    let reason = reason
        .or_else(|| found_reason(&row, found, facts))
        .unwrap_or_else(|| "deleted from source".into());
    let kind = if rules.safety.delete_grace.is_zero() || unlawful {
        Kind::Delete {
            before: row.clone(),
        }
    } else {
        Kind::Hide {
            after: hidden_row(rules, &row, &reason),
            before: row.clone(),
        }
    };
    Some(Change {
        anchor: row.anchor,
        reason,
        kind,
    })
}

/// How the reason of a person moved to a closed organisation's successor
/// that no agreement covers begins.
const MOVED_TO: &str = "moved to ";

/// Why a visible unseen object went, from what the source said of its
/// anchor; `None`: the source has no such entry.
fn found_reason(row: &ObjectRow, found: &Found, facts: &Facts) -> Option<String> {
    let closed = crate::agreements::ORGANISATION_CLOSED;
    Some(match found.get(&row.anchor)? {
        (_, true) => "leaver".into(),
        (org, false) if org != &row.org => match facts.closed.get(&row.org) {
            Some(Some(successor)) if successor == org && !facts.granted.contains(org) => format!(
                "{MOVED_TO}{org}, the successor of closed {}, which no agreement covers: \
                 the agreement may need amending",
                row.org
            ),
            _ if facts.closed.contains_key(org) => closed.into(),
            _ => "left scope".into(),
        },
        _ if facts.closed.contains_key(&row.org) => closed.into(),
        _ => "no longer matches the source filter".into(),
    })
}

/// Source health: nothing read at all, or an organisation in scope that
/// returned nothing although objects are held for it.
fn unhealthy(org: &str, facts: &Facts) -> Option<String> {
    let nothing_from = || format!("organisation {org} returned no entries");
    if !facts.judge_health {
        facts.emptied.contains(org).then(nothing_from)
    } else if facts.agreements_in_force && facts.pulled_total == 0 {
        Some("the source returned no entries".to_string())
    } else if facts.granted.contains(org)
        && facts.pulled_per_org.get(org).copied().unwrap_or(0) == 0
    {
        Some(nothing_from())
    } else {
        None
    }
}

/// The deletion threshold: why `n` deletes are too many, if they are. The
/// deletes (of visible objects, and of hidden ones whose grace period is
/// over) are a share of every managed object, hidden ones included: the
/// numerator and the denominator count the same population.
fn threshold(n: u64, facts: &Facts, safety: &SafetyConfig) -> Option<String> {
    let hidden = facts.hidden_at_start;
    let managed = facts.managed_at_start + hidden;
    let percent = if managed == 0 {
        0.0
    } else {
        n as f64 * 100.0 / managed as f64
    };
    let exceeded = n > safety.max_deletes || percent > safety.max_delete_percent;
    let of_them = match hidden {
        0 => String::new(),
        h => format!(", {h} of them hidden"),
    };
    exceeded.then(|| {
        format!(
            "deletion threshold: {n} deletes planned ({percent:.1}% of {managed} managed \
             objects{of_them}), limits {} and {}%",
            safety.max_deletes, safety.max_delete_percent
        )
    })
}

/// The status and message of a run that held `held` deletes back.
fn stop(held: usize, threshold: Option<String>, guard_notes: &BTreeMap<String, u64>) -> Stop {
    let mut whys: Vec<String> = guard_notes
        .iter()
        .map(|(why, n)| format!("{why} ({n} objects held)"))
        .collect();
    let by_threshold = threshold.is_some();
    whys.splice(0..0, threshold);
    let message = format!(
        "{held} deletes held back: {}. Review them with `absync plan --only deletes`; \
         release them with `absync resync --allow-deletes N` (`absync sync \
         --allow-deletes N` when no daemon runs)",
        whys.join("; ")
    );
    if by_threshold {
        Stop {
            status: STOPPED_AT_THRESHOLD,
            op: "threshold",
            message,
        }
    } else {
        Stop {
            status: HELD_SOURCE_UNHEALTHY,
            op: "guard",
            message,
        }
    }
}

/// The row of an object being hidden: in the quarantine OU (under a name
/// made unique with its anchor) or in place, marked with when and why.
fn hidden_row(rules: &Rules<'_>, row: &ObjectRow, reason: &str) -> ObjectRow {
    let mapping = rules.mapping;
    let dn = match &rules.safety.quarantine_ou {
        Some(q) => {
            let value = crate::dn::rdn_value(&row.dn);
            let tag: String = row.anchor.chars().take(8).collect();
            let room = mapping
                .rdn_max_length
                .saturating_sub(tag.chars().count() + 3);
            let name = format!("{} [{tag}]", truncate(&value, room));
            format!(
                "{}={},{q}",
                mapping.rdn_attribute,
                crate::dn::escape_value(&name)
            )
        }
        None => row.dn.clone(),
    };
    ObjectRow {
        dn,
        hidden: Some(Hidden {
            at: time_text(rules.now),
            reason: reason.to_string(),
        }),
        ..row.clone()
    }
}

/// Whether an object hidden at `hidden.at` has waited out `grace` by `now`
/// (an unreadable time counts as over; months count on the calendar).
pub(crate) fn grace_over(hidden: &Hidden, grace: Period, now: OffsetDateTime) -> bool {
    let Ok(at) = OffsetDateTime::parse(&hidden.at, &time::format_description::well_known::Rfc3339)
    else {
        return true;
    };
    now >= grace.after(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    fn mapping() -> &'static Mapping {
        static M: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
        M.get_or_init(|| {
            let file = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/mappings/nhs-to-ad-contact.toml"
            );
            Mapping::load(std::path::Path::new(file)).unwrap()
        })
    }

    fn safety(max_deletes: u64, max_delete_percent: f64, grace_days: u64) -> SafetyConfig {
        SafetyConfig {
            max_deletes,
            max_delete_percent,
            delete_grace: Period::exact(DAY * grace_days as u32),
            quarantine_ou: Some("OU=Quarantine,DC=example,DC=org".into()),
        }
    }

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-11-30 12:00 UTC)
    }

    fn rules(safety: &SafetyConfig, allow_deletes: Option<u64>) -> Rules<'_> {
        Rules {
            safety,
            mapping: mapping(),
            allow_deletes,
            now: now(),
        }
    }

    /// A full pull that read `pulled` entries of each organisation named,
    /// with `managed` objects held when the run started.
    fn full_pull(pulled: &[(&str, u64)], managed: u64) -> Facts {
        Facts {
            judge_health: true,
            agreements_in_force: true,
            pulled_total: pulled.iter().map(|(_, n)| n).sum(),
            pulled_per_org: pulled.iter().map(|(o, n)| (o.to_string(), *n)).collect(),
            granted: pulled.iter().map(|(o, _)| o.to_string()).collect(),
            emptied: HashSet::new(),
            managed_at_start: managed,
            hidden_at_start: 0,
            closed: Default::default(),
        }
    }

    fn row(anchor: &str, org: &str) -> ObjectRow {
        ObjectRow {
            anchor: anchor.into(),
            dn: format!("CN=Person {anchor},OU=NHS,DC=example,DC=org"),
            org: org.into(),
            agreements: vec!["DSA-1".into()],
            ..Default::default()
        }
    }

    fn hidden(anchor: &str, org: &str, days_ago: i64) -> ObjectRow {
        ObjectRow {
            hidden: Some(Hidden {
                at: time_text(now() - time::Duration::days(days_ago)),
                reason: "leaver".into(),
            }),
            ..row(anchor, org)
        }
    }

    /// `n` visible objects of `org` the pull did not see, reason unknown.
    fn gone(org: &str, n: usize) -> Vec<(ObjectRow, Option<String>)> {
        (0..n)
            .map(|i| (row(&format!("{org}-{i}"), org), None))
            .collect()
    }

    fn anchors(changes: &[Change]) -> Vec<&str> {
        changes.iter().map(|c| c.anchor.as_str()).collect()
    }

    fn held_anchors(held: &[(Change, String)]) -> Vec<&str> {
        held.iter().map(|(c, _)| c.anchor.as_str()).collect()
    }

    #[test]
    fn deletes_within_the_threshold_go_with_the_reason_the_source_gave() {
        let s = safety(10, 50.0, 0);
        let found: Found = [
            ("RX1-0".to_string(), ("RX1".to_string(), true)),
            ("RX1-1".to_string(), ("RX2".to_string(), false)),
            ("RX1-2".to_string(), ("RX1".to_string(), false)),
        ]
        .into();
        let d = decide(
            gone("RX1", 4),
            &found,
            &full_pull(&[("RX1", 100)], 100),
            &rules(&s, None),
        );
        let reasons: Vec<&str> = d.release.iter().map(|c| c.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "leaver",
                "left scope",
                "no longer matches the source filter",
                "deleted from source"
            ]
        );
        assert!(d
            .release
            .iter()
            .all(|c| matches!(c.kind, Kind::Delete { .. })));
        assert!(d.held.is_empty());
        assert_eq!(d.stop, None);
    }

    #[test]
    fn more_deletes_than_the_threshold_count_hold_back_every_one() {
        let s = safety(2, 100.0, 0);
        let d = decide(
            gone("RX1", 3),
            &Found::new(),
            &full_pull(&[("RX1", 50)], 53),
            &rules(&s, None),
        );
        assert!(d.release.is_empty());
        assert_eq!(held_anchors(&d.held), ["RX1-0", "RX1-1", "RX1-2"]);
        let stop = d.stop.unwrap();
        assert_eq!(
            (stop.status, stop.op),
            ("stopped: deletion threshold", "threshold")
        );
        assert!(holds_deletes(stop.status) && !holds_deletes("ok"));
        assert!(
            stop.message.starts_with(
                "3 deletes held back: deletion threshold: 3 deletes planned (5.7% of 53 managed \
                 objects), limits 2 and 100%."
            ),
            "{}",
            stop.message
        );
        assert!(d
            .held
            .iter()
            .all(|(_, why)| why.starts_with("deletion threshold: 3")));
    }

    #[test]
    fn more_deletes_than_the_threshold_percent_hold_back_every_one() {
        let s = safety(1000, 10.0, 0);
        // 2 of 20 is 10%: at the limit, not over it.
        let d = decide(
            gone("RX1", 2),
            &Found::new(),
            &full_pull(&[("RX1", 18)], 20),
            &rules(&s, None),
        );
        assert_eq!(anchors(&d.release), ["RX1-0", "RX1-1"]);
        // 3 of 20 is 15%.
        let d = decide(
            gone("RX1", 3),
            &Found::new(),
            &full_pull(&[("RX1", 17)], 20),
            &rules(&s, None),
        );
        assert!(d.release.is_empty());
        assert_eq!(d.held.len(), 3);
        assert_eq!(d.stop.unwrap().status, "stopped: deletion threshold");
    }

    #[test]
    fn an_empty_source_holds_back_every_delete() {
        let s = safety(1000, 100.0, 0);
        let facts = full_pull(&[("RX1", 0)], 3);
        let d = decide(gone("RX1", 3), &Found::new(), &facts, &rules(&s, None));
        assert!(d.release.is_empty());
        assert!(d
            .held
            .iter()
            .all(|(_, why)| why == "source unhealthy: the source returned no entries"));
        let stop = d.stop.unwrap();
        assert_eq!(
            (stop.status, stop.op),
            ("deletes held: source unhealthy", "guard")
        );
        assert!(stop
            .message
            .starts_with("3 deletes held back: the source returned no entries (3 objects held)."));
        // With no agreement in force nothing was read, and that is no
        // sign of an unhealthy source.
        let facts = Facts {
            agreements_in_force: false,
            granted: BTreeSet::new(),
            ..facts
        };
        let d = decide(gone("RX1", 3), &Found::new(), &facts, &rules(&s, None));
        assert_eq!(d.release.len(), 3);
    }

    #[test]
    fn an_organisation_returning_nothing_holds_only_its_own_deletes() {
        let s = safety(1000, 100.0, 0);
        let mut unseen = gone("RX1", 2);
        unseen.extend(gone("RX2", 2));
        let facts = full_pull(&[("RX1", 40), ("RX2", 0)], 44);
        let d = decide(unseen, &Found::new(), &facts, &rules(&s, None));
        assert_eq!(anchors(&d.release), ["RX1-0", "RX1-1"]);
        assert_eq!(held_anchors(&d.held), ["RX2-0", "RX2-1"]);
        assert_eq!(
            d.held[0].1,
            "source unhealthy: organisation RX2 returned no entries"
        );
        assert_eq!(d.stop.unwrap().op, "guard");
    }

    #[test]
    fn a_delta_that_would_empty_an_organisation_holds_its_deletes() {
        let s = safety(1000, 100.0, 0);
        let mut unseen = gone("RX1", 1);
        unseen.extend(gone("RX2", 2));
        let facts = Facts {
            judge_health: false,
            emptied: ["RX2".to_string()].into(),
            // A delta reads little: neither that nor RX1's 0 is a sign.
            ..full_pull(&[("RX1", 0), ("RX2", 0)], 30)
        };
        let d = decide(unseen, &Found::new(), &facts, &rules(&s, None));
        assert_eq!(anchors(&d.release), ["RX1-0"]);
        assert_eq!(held_anchors(&d.held), ["RX2-0", "RX2-1"]);
    }

    #[test]
    fn with_a_grace_period_a_removed_object_is_hidden_in_the_quarantine_ou() {
        let s = safety(1000, 100.0, 7);
        let d = decide(
            gone("RX1", 1),
            &Found::new(),
            &full_pull(&[("RX1", 9)], 10),
            &rules(&s, None),
        );
        let [c] = &d.release[..] else {
            panic!("{:?}", d.release)
        };
        let Kind::Hide { before, after } = &c.kind else {
            panic!("{c:?}")
        };
        assert_eq!(before, &row("RX1-0", "RX1"));
        assert_eq!(
            after.dn,
            "cn=Person RX1-0 [RX1-0],OU=Quarantine,DC=example,DC=org"
        );
        let h = after.hidden.as_ref().unwrap();
        assert_eq!(
            (h.at.as_str(), h.reason.as_str()),
            ("2026-11-30T12:00:00.000000Z", "deleted from source")
        );
    }

    /// RXC closed (its successor RXS, which no agreement covers): its
    /// people go through the grace period with the reason `organisation
    /// closed`; one who moved to RXS is named as such, and warned of.
    #[test]
    fn a_closed_organisations_people_are_hidden_with_their_reason() {
        let s = safety(1000, 100.0, 7);
        let facts = Facts {
            closed: [("RXC".to_string(), Some("RXS".to_string()))].into(),
            ..full_pull(&[("RX1", 9)], 14)
        };
        let found: Found = [
            ("RXC-0".to_string(), ("RXC".to_string(), false)),
            ("RXC-1".to_string(), ("RXS".to_string(), false)),
            ("RXC-2".to_string(), ("RX9".to_string(), false)),
            ("RXC-3".to_string(), ("RXC".to_string(), true)),
        ]
        .into();
        let d = decide(gone("RXC", 5), &found, &facts, &rules(&s, None));
        assert!(d.held.is_empty() && d.stop.is_none(), "{d:?}");
        let hidden: Vec<(&str, &str)> = d
            .release
            .iter()
            .map(|c| match &c.kind {
                Kind::Hide { after, .. } => (
                    c.anchor.as_str(),
                    after.hidden.as_ref().unwrap().reason.as_str(),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        let moved = "moved to RXS, the successor of closed RXC, which no agreement covers: \
                     the agreement may need amending";
        assert_eq!(
            hidden,
            [
                ("RXC-0", "organisation closed"),
                ("RXC-1", moved),
                ("RXC-2", "left scope"),
                ("RXC-3", "leaver"),
                ("RXC-4", "deleted from source"),
            ]
        );
        assert_eq!(
            d.warnings,
            [format!(
                "CN=Person RXC-1,OU=NHS,DC=example,DC=org (RXC-1): {moved}"
            )]
        );
        // Moved into a closed organisation: out of scope for the same reason.
        let found: Found = [("RX1-0".to_string(), ("RXC".to_string(), false))].into();
        let d = decide(gone("RX1", 1), &found, &facts, &rules(&s, None));
        assert_eq!(d.release[0].reason, "organisation closed");
        // Without a recorded successor, every one still there is closed.
        let facts = Facts {
            closed: [("RXC".to_string(), None)].into(),
            ..facts
        };
        let found: Found = [("RXC-0".to_string(), ("RXC".to_string(), false))].into();
        let d = decide(gone("RXC", 1), &found, &facts, &rules(&s, None));
        assert_eq!(d.release[0].reason, "organisation closed");
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn a_hidden_object_waits_out_its_grace_period_then_counts_against_the_threshold() {
        let s = safety(1, 100.0, 7);
        let unseen = vec![
            (hidden("early", "RX1", 6), None),
            (hidden("late", "RX1", 8), None),
        ];
        let facts = full_pull(&[("RX1", 9)], 10);
        let d = decide(unseen.clone(), &Found::new(), &facts, &rules(&s, None));
        assert_eq!(anchors(&d.release), ["late"]);
        assert_eq!(d.release[0].reason, "grace period over (leaver)");
        assert!(matches!(d.release[0].kind, Kind::Delete { .. }));
        // Two over their grace period against a threshold of one: both held.
        let unseen = vec![(hidden("a", "RX1", 8), None), (hidden("b", "RX1", 9), None)];
        let d = decide(unseen, &Found::new(), &facts, &rules(&s, None));
        assert!(d.release.is_empty());
        assert_eq!(held_anchors(&d.held), ["a", "b"]);
        assert_eq!(d.stop.unwrap().status, "stopped: deletion threshold");
    }

    #[test]
    fn an_expired_agreement_deletes_at_once_despite_a_grace_period() {
        let s = safety(1000, 100.0, 7);
        let unseen = vec![
            (
                row("visible", "RX9"),
                Some("agreement DSA-9 ended 2026-12-01".to_string()),
            ),
            (
                hidden("hidden", "RX9", 1),
                Some("organisation removed".to_string()),
            ),
            (row("leaver", "RX1"), Some("leaver".to_string())),
        ];
        let d = decide(
            unseen,
            &Found::new(),
            &full_pull(&[("RX1", 5)], 10),
            &rules(&s, None),
        );
        let kinds: Vec<(&str, &str, bool)> = d
            .release
            .iter()
            .map(|c| {
                (
                    c.anchor.as_str(),
                    c.reason.as_str(),
                    matches!(c.kind, Kind::Delete { .. }),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("visible", "agreement DSA-9 ended 2026-12-01", true),
                ("hidden", "organisation removed", true),
                ("leaver", "leaver", false)
            ]
        );
    }

    #[test]
    fn allow_deletes_releases_exactly_n_in_order() {
        let s = safety(2, 100.0, 0);
        let mut unseen = gone("RX1", 4);
        unseen.extend(gone("RX2", 1));
        let facts = full_pull(&[("RX1", 50), ("RX2", 0)], 60);
        let d = decide(unseen, &Found::new(), &facts, &rules(&s, Some(3)));
        // The threshold's deletes first, then the guard's, in pull order.
        assert_eq!(anchors(&d.release), ["RX1-0", "RX1-1", "RX1-2"]);
        assert_eq!(held_anchors(&d.held), ["RX1-3", "RX2-0"]);
        assert!(d.held[0]
            .1
            .starts_with("deletion threshold: 4 deletes planned"));
        assert_eq!(
            d.held[1].1,
            "source unhealthy: organisation RX2 returned no entries"
        );
        assert_eq!(d.stop.unwrap().status, "stopped: deletion threshold");
        // Enough to release them all: nothing held, no stop.
        let mut unseen = gone("RX1", 4);
        unseen.extend(gone("RX2", 1));
        let d = decide(unseen, &Found::new(), &facts, &rules(&s, Some(5)));
        assert_eq!(d.release.len(), 5);
        assert_eq!(d.stop, None);
    }

    /// The case the issue saw: "796 deletes planned (102.1% of 780 managed
    /// objects)". 780 visible objects and 20 hidden ones past their grace
    /// period all go: 796 deletes of the 800 managed objects, never more
    /// than all of them.
    #[test]
    fn the_threshold_share_counts_hidden_objects_on_both_sides() {
        let s = safety(10, 50.0, 7);
        let mut unseen = gone("RX1", 776);
        unseen.extend((0..20).map(|i| (hidden(&format!("h{i}"), "RX1", 30), None)));
        let facts = Facts {
            hidden_at_start: 20,
            ..full_pull(&[("RX1", 4)], 780)
        };
        let d = decide(unseen, &Found::new(), &facts, &rules(&s, None));
        assert_eq!((d.release.len(), d.held.len()), (0, 796));
        assert_eq!(
            d.held[0].1,
            "deletion threshold: 796 deletes planned (99.5% of 800 managed objects, \
             20 of them hidden), limits 10 and 50%"
        );
        // Without hidden objects the message is as it was.
        let d = decide(
            gone("RX1", 11),
            &Found::new(),
            &full_pull(&[("RX1", 89)], 100),
            &rules(&s, None),
        );
        assert_eq!(
            d.held[0].1,
            "deletion threshold: 11 deletes planned (11.0% of 100 managed objects), \
             limits 10 and 50%"
        );
    }
}
