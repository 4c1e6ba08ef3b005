//! The compliance judgement of one object found in the managed or the
//! quarantine OU, as a pure function of what the target holds, the state's
//! row for it, the agreements in force, the mapping and the time.
//!
//! **Invariant:** no I/O and no clock: the time comes in [`Policy::now`].
//!
//! An object is absync's when it carries absync's anchor. Such an object
//! is covered when an agreement in force covers its organisation (the
//! state's row says which) and every attribute the mapping manages on it
//! can come from source attributes an agreement in force allows for that
//! organisation; hidden, when it waits out its grace period; a violation
//! when no agreement covers it, an attribute is not allowed, or its grace
//! period is over. Any other object is not absync's: listed with the
//! values that look like NHS data, never a violation of absync's.

use crate::period::Period;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::agreements::{is_ods_code, Agreements, OrgGrant};
use crate::engine::map::Mapping;
use crate::engine::removals::grace_over;
use crate::state::journal::time_text;
use crate::state::{Attrs, ObjectRow};

/// Attributes read of every object besides the mapping's own, to show the
/// ones that look like NHS data on objects absync does not own.
pub const PERSON_ATTRIBUTES: &[&str] = &[
    "cn",
    "displayName",
    "givenName",
    "sn",
    "mail",
    "proxyAddresses",
    "targetAddress",
    "company",
    "department",
    "title",
    "telephoneNumber",
    "otherTelephone",
    "mobile",
    "physicalDeliveryOfficeName",
    "employeeID",
    "description",
    "info",
];

/// How many violations a journal record lists (with their anchors); the
/// counts are always whole.
pub const MAX_LISTED: usize = 1000;

/// What an object is, for an auditor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// absync's, covered by an agreement in force, only allowed attributes.
    Covered,
    /// absync's, hidden and waiting out its grace period.
    Hidden,
    /// absync's, but no agreement in force covers its organisation, or an
    /// attribute on it: a violation.
    NotCovered,
    /// absync's, hidden past its grace period: a violation.
    PastGrace,
    /// Not absync's (no anchor of its own): made by hand or by another tool.
    NotOwned,
}

impl Class {
    pub fn is_violation(self) -> bool {
        matches!(self, Class::NotCovered | Class::PastGrace)
    }

    /// As tables show it.
    pub fn label(self) -> &'static str {
        match self {
            Class::Covered => "covered",
            Class::Hidden => "hidden",
            Class::NotCovered => "not covered",
            Class::PastGrace => "past grace",
            Class::NotOwned => "not owned",
        }
    }
}

/// One object as read from the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub dn: String,
    /// absync's anchor on it (without the prefix); `None`: not absync's.
    pub anchor: Option<String>,
    /// The attributes read, named as the target names them.
    pub attrs: Attrs,
}

/// The verdict on one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub class: Class,
    pub violation: bool,
    pub dn: String,
    pub anchor: Option<String>,
    /// The organisation: the state's, or for an object absync does not own
    /// the ODS code its `company` names (`NHS RZZ`).
    pub org: Option<String>,
    /// The agreements in force covering it.
    pub agreements: Vec<String>,
    pub reason: String,
    /// For an attribute not allowed, those attributes; for an object absync
    /// does not own, the ones that look like NHS data.
    pub attributes: Attrs,
}

/// What the objects are judged by.
pub struct Policy<'a> {
    agreements: &'a Agreements,
    grants: BTreeMap<String, OrgGrant>,
    /// What the agreements in force would grant the closed organisations
    /// they name, were they open: what their people's hidden contacts are
    /// judged by while they wait out the grace period.
    closed_grants: BTreeMap<String, OrgGrant>,
    /// Target attribute (lower-case) → where the mapping takes it from.
    sources: BTreeMap<String, Vec<Vec<String>>>,
    /// Source attributes scope keeps whatever the agreements say
    /// (lower-case): the organisation and the anchor.
    always: [String; 3],
    target_anchor: String,
    grace: Period,
    pub now: OffsetDateTime,
}

impl<'a> Policy<'a> {
    /// `org_attribute` and `source_anchor` are the source's; the target's
    /// anchor attribute marks absync's objects.
    pub fn new(
        agreements: &'a Agreements,
        mapping: &Mapping,
        org_attribute: &str,
        source_anchor: &str,
        target_anchor: &str,
        grace: Period,
        now: OffsetDateTime,
    ) -> Policy<'a> {
        let mut targets: Vec<&str> = mapping.rules.iter().map(|r| r.target.as_str()).collect();
        targets.push(&mapping.rdn_attribute);
        targets.extend(mapping.hide.as_ref().map(|(a, _)| a.as_str()));
        let sources = targets
            .into_iter()
            .filter_map(|t| Some((t.to_lowercase(), mapping.sources_of(t)?)))
            .collect();
        let mut open = agreements.clone();
        open.closed.clear();
        let closed_grants = open
            .grants()
            .into_iter()
            .filter(|(org, _)| agreements.closed.contains_key(org))
            .collect();
        Policy {
            agreements,
            grants: agreements.grants(),
            closed_grants,
            sources,
            always: [
                org_attribute.to_lowercase(),
                source_anchor.to_lowercase(),
                "anchor".into(),
            ],
            target_anchor: target_anchor.to_string(),
            grace,
            now,
        }
    }

    /// The verdict on `seen`, with the state's row for its anchor.
    pub fn judge(&self, seen: &Seen, row: Option<&ObjectRow>) -> Finding {
        let mut f = Finding {
            class: Class::Covered,
            violation: false,
            dn: seen.dn.clone(),
            anchor: seen.anchor.clone(),
            org: None,
            agreements: Vec::new(),
            reason: String::new(),
            attributes: Attrs::new(),
        };
        let (class, reason) = match (&seen.anchor, row) {
            (None, _) => self.not_owned(seen, &mut f),
            (Some(_), None) => (
                Class::NotCovered,
                "carries absync's anchor but the state holds no row for it, so no agreement \
                 can be shown to cover it (the next full run adopts or removes it)"
                    .to_string(),
            ),
            (Some(_), Some(row)) => self.owned(seen, row, &mut f),
        };
        f.class = class;
        f.violation = class.is_violation();
        f.reason = reason;
        f
    }

    fn owned(&self, seen: &Seen, row: &ObjectRow, f: &mut Finding) -> (Class, String) {
        let org = &row.org;
        f.org = Some(org.clone());
        // A closed organisation's people wait out the grace period hidden,
        // as a leaver does.
        let closed = || self.closed_grants.get(org).filter(|_| row.hidden.is_some());
        let Some(grant) = self.grants.get(org).or_else(closed) else {
            let why = self.agreements.why_out_of_scope(org, &row.agreements);
            return (
                Class::NotCovered,
                format!(
                    "{why}: no agreement in force covers {org} (held under {})",
                    row.agreements.join(", ")
                ),
            );
        };
        f.agreements = grant.agreements.iter().cloned().collect();
        if let Some(h) = row.hidden.as_ref() {
            if grace_over(h, self.grace, self.now) {
                return (
                    Class::PastGrace,
                    format!(
                        "hidden since {} ({}); its grace period is over and it should be deleted",
                        h.at, h.reason
                    ),
                );
            }
        }
        let allowed = |a: &String| grant.attributes.contains(a) || self.always.contains(a);
        for (name, values) in &seen.attrs {
            let Some(alternatives) = self.sources.get(&name.to_lowercase()) else {
                continue;
            };
            // A value can come from an alternative that is a constant, or
            // that reads an attribute the agreements allow.
            if !alternatives
                .iter()
                .any(|alt| alt.is_empty() || alt.iter().any(allowed))
            {
                f.attributes.insert(name.clone(), values.clone());
            }
        }
        if !f.attributes.is_empty() {
            let named: Vec<String> = f
                .attributes
                .keys()
                .map(|a| {
                    let from = self.sources[&a.to_lowercase()].concat().join(", ");
                    format!("{a} (from {from})")
                })
                .collect();
            return (
                Class::NotCovered,
                format!(
                    "no agreement in force allows these attributes for {org}: {}",
                    named.join("; ")
                ),
            );
        }
        match row.hidden.as_ref() {
            Some(h) => (Class::Hidden, self.hidden_reason(&h.at, &h.reason)),
            None => (
                Class::Covered,
                format!("covered by {}", f.agreements.join(", ")),
            ),
        }
    }

    fn hidden_reason(&self, at: &str, why: &str) -> String {
        let rfc3339 = &time::format_description::well_known::Rfc3339;
        let until = OffsetDateTime::parse(at, rfc3339)
            .ok()
            .map(|t| time_text(self.grace.after(t)))
            .unwrap_or_else(|| "-".into());
        format!("hidden since {at} ({why}); its grace period ends {until}")
    }

    fn not_owned(&self, seen: &Seen, f: &mut Finding) -> (Class, String) {
        for (name, values) in &seen.attrs {
            if name.eq_ignore_ascii_case(&self.target_anchor) {
                continue;
            }
            if values.iter().any(|v| looks_nhs(v)) {
                f.attributes.insert(name.clone(), values.clone());
            }
        }
        f.org = seen
            .attrs
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("company"))
            .flat_map(|(_, v)| v)
            .find_map(|v| ods_of_company(v));
        let mut reason = format!(
            "not absync's (no absync anchor in {}): made by hand or by another tool; \
             absync never touches it",
            self.target_anchor
        );
        if let Some(org) = &f.org {
            match self.grants.get(org) {
                Some(g) => {
                    f.agreements = g.agreements.iter().cloned().collect();
                    reason.push_str(&format!(
                        "; its company names {org}, which {} covers",
                        f.agreements.join(", ")
                    ));
                }
                None => reason.push_str(&format!(
                    "; its company names {org}, which no agreement in force covers"
                )),
            }
        } else if !f.attributes.is_empty() {
            reason.push_str("; it holds values that look like NHS data");
        }
        (Class::NotOwned, reason)
    }
}

/// A value that mentions the NHS as a word (`NHS RZZ`, `a.b@nhs.net`).
fn looks_nhs(v: &str) -> bool {
    v.split(|c: char| !c.is_alphanumeric())
        .any(|t| t.eq_ignore_ascii_case("nhs"))
}

/// The ODS code in a company of the form `NHS XXX`.
fn ods_of_company(v: &str) -> Option<String> {
    let v = v.trim();
    let head = v.get(..4)?;
    let code = v[4..].trim();
    (head.eq_ignore_ascii_case("nhs ") && is_ods_code(code)).then(|| code.to_uppercase())
}

/// What a check found, by class, and the violations (without DNs or
/// attribute values, so that a journal record of it holds no personal
/// values).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tally {
    pub covered: u64,
    pub hidden: u64,
    pub not_covered: u64,
    pub past_grace: u64,
    pub not_owned: u64,
    /// Of the objects absync does not own, those holding NHS-looking values.
    pub not_owned_nhs: u64,
    /// The ODS codes the `company` of objects absync does not own names.
    pub not_owned_orgs: BTreeMap<String, u64>,
    /// The first [`MAX_LISTED`] violations.
    pub violations: Vec<Listed>,
}

/// One violation, as a journal record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    pub class: Class,
    pub anchor: Option<String>,
    pub org: Option<String>,
    pub reason: String,
}

impl Tally {
    pub fn add(&mut self, f: &Finding) {
        let n = match f.class {
            Class::Covered => &mut self.covered,
            Class::Hidden => &mut self.hidden,
            Class::NotCovered => &mut self.not_covered,
            Class::PastGrace => &mut self.past_grace,
            Class::NotOwned => &mut self.not_owned,
        };
        *n += 1;
        if f.class == Class::NotOwned {
            self.not_owned_nhs += u64::from(!f.attributes.is_empty());
            if let Some(org) = &f.org {
                *self.not_owned_orgs.entry(org.clone()).or_default() += 1;
            }
        }
        if f.violation && self.violations.len() < MAX_LISTED {
            self.violations.push(Listed {
                class: f.class,
                anchor: f.anchor.clone(),
                org: f.org.clone(),
                reason: f.reason.clone(),
            });
        }
    }

    pub fn violation_count(&self) -> u64 {
        self.not_covered + self.past_grace
    }

    pub fn objects(&self) -> u64 {
        self.covered + self.hidden + self.not_covered + self.past_grace + self.not_owned
    }

    /// One line: the counts per class, and the verdict.
    pub fn text(&self) -> String {
        let verdict = match self.violation_count() {
            0 => "no violation".to_string(),
            1 => "1 VIOLATION".to_string(),
            n => format!("{n} VIOLATIONS"),
        };
        format!(
            "{} objects: {} covered, {} hidden in their grace period, {} not covered, {} past \
             their grace period, {} not owned by absync ({} with NHS-looking values): {verdict}",
            self.objects(),
            self.covered,
            self.hidden,
            self.not_covered,
            self.past_grace,
            self.not_owned,
            self.not_owned_nhs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreements::Agreement;
    use crate::state::Hidden;
    use time::macros::{date, datetime};

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    /// Loaded once: tests run in parallel, and each would write the file.
    fn mapping() -> Mapping {
        static MAPPING: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
        MAPPING.get_or_init(load_mapping).clone()
    }

    fn load_mapping() -> Mapping {
        let dir = std::env::temp_dir().join(format!("absync-compliance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.toml");
        std::fs::write(
            &p,
            r#"
object_class = ["contact"]
[rdn]
attribute = "cn"
first_of = ["{givenName} {sn}", "{uid}"]
tie_breakers = ["({nhsOdsCode})"]
[attributes.sn]
copy = "sn"
[attributes.mail]
copy = "mail"
[attributes.telephoneNumber]
copy = "telephoneNumber"
[attributes.displayName]
first_of = ["{displayName}", "{givenName} {sn}"]
[attributes.company]
first_of = ["NHS {nhsOdsCode}"]
[attributes.info]
value = "Copied by absync"
[hide]
attribute = "msExchHideFromAddressLists"
value = "TRUE"
"#,
        )
        .unwrap();
        Mapping::load(&p).unwrap()
    }

    fn agreements() -> Agreements {
        let a = |id: &str, orgs: &[&str], attrs: &[&str], until| Agreement {
            id: id.into(),
            title: id.into(),
            organisations: orgs.iter().map(|s| s.to_string()).collect(),
            attributes: attrs.iter().map(|s| s.to_lowercase()).collect(),
            valid_from: date!(2026 - 01 - 01),
            valid_until: until,
        };
        Agreements {
            all: vec![
                a(
                    "DSA-1",
                    &["RX1"],
                    &["givenName", "sn", "mail"],
                    date!(2026 - 12 - 31),
                ),
                a("DSA-2", &["RX2"], &["sn"], date!(2026 - 02 - 28)),
            ],
            day: date!(2026 - 03 - 01),
            closed: Default::default(),
        }
    }

    fn now() -> OffsetDateTime {
        datetime!(2026-03-01 12:00 UTC)
    }

    fn check(seen: &Seen, row: Option<&ObjectRow>) -> Finding {
        let (a, m) = (agreements(), mapping());
        let p = Policy::new(
            &a,
            &m,
            "nhsOdsCode",
            "entryUUID",
            "adminDescription",
            Period::exact(DAY * 30),
            now(),
        );
        p.judge(seen, row)
    }

    fn seen(anchor: Option<&str>, attrs: &[(&str, &str)]) -> Seen {
        Seen {
            dn: "CN=Ann Lee,OU=NHS,DC=t".into(),
            anchor: anchor.map(str::to_string),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
        }
    }

    fn row(org: &str, hidden_days_ago: Option<i64>) -> ObjectRow {
        ObjectRow {
            anchor: "a1".into(),
            dn: "CN=Ann Lee,OU=NHS,DC=t".into(),
            org: org.into(),
            agreements: vec![if org == "RX1" { "DSA-1" } else { "DSA-2" }.into()],
            attrs: Attrs::new(),
            hidden: hidden_days_ago.map(|d| Hidden {
                at: time_text(now() - time::Duration::days(d)),
                reason: "leaver".into(),
            }),
        }
    }

    const ALLOWED: &[(&str, &str)] = &[
        ("cn", "Ann Lee"),
        ("sn", "Lee"),
        ("mail", "ann.lee@nhs.net"),
        ("displayName", "Ann Lee"),
        ("company", "NHS RX1"),
        ("info", "Copied by absync"),
        ("adminDescription", "absync:a1"),
        ("description", "set by hand, not managed"),
    ];

    #[test]
    fn an_owned_object_with_only_allowed_attributes_is_covered() {
        let f = check(&seen(Some("a1"), ALLOWED), Some(&row("RX1", None)));
        assert_eq!(f.class, Class::Covered, "{f:?}");
        assert!(!f.violation);
        assert_eq!(f.agreements, vec!["DSA-1"]);
        assert_eq!(f.reason, "covered by DSA-1");
        assert!(f.attributes.is_empty());
    }

    #[test]
    fn an_attribute_from_a_source_attribute_no_agreement_allows_is_a_violation() {
        let mut attrs = ALLOWED.to_vec();
        attrs.push(("telephoneNumber", "+441632960123"));
        let f = check(&seen(Some("a1"), &attrs), Some(&row("RX1", None)));
        assert_eq!(f.class, Class::NotCovered, "{f:?}");
        assert!(f.violation);
        assert_eq!(
            f.attributes.keys().collect::<Vec<_>>(),
            vec!["telephoneNumber"]
        );
        assert!(
            f.reason
                .contains("RX1: telephoneNumber (from telephonenumber)"),
            "{}",
            f.reason
        );
    }

    #[test]
    fn a_template_is_allowed_when_any_placeholder_is_and_the_rdn_is_judged_too() {
        // RX2 may hold sn only: displayName and cn can still come from
        // "{givenName} {sn}"; mail cannot.
        let f = check(
            &seen(
                Some("a1"),
                &[("cn", "Lee"), ("displayName", "Lee"), ("sn", "Lee")],
            ),
            Some(&row("RX1", None)),
        );
        assert_eq!(f.class, Class::Covered, "{f:?}");
        let a = agreements();
        let mut a2 = a.clone();
        a2.all[1].valid_until = date!(2026 - 12 - 31);
        let m = mapping();
        let p = Policy::new(
            &a2,
            &m,
            "nhsOdsCode",
            "entryUUID",
            "adminDescription",
            Period::exact(DAY),
            now(),
        );
        let f = p.judge(
            &seen(
                Some("a1"),
                &[("cn", "Lee"), ("sn", "Lee"), ("mail", "x@nhs.net")],
            ),
            Some(&row("RX2", None)),
        );
        assert_eq!(
            f.attributes.keys().collect::<Vec<_>>(),
            vec!["mail"],
            "{f:?}"
        );
    }

    #[test]
    fn an_organisation_no_agreement_in_force_covers_is_a_violation() {
        // DSA-2 ended the day before.
        let f = check(&seen(Some("a1"), ALLOWED), Some(&row("RX2", None)));
        assert_eq!(f.class, Class::NotCovered, "{f:?}");
        assert!(f.violation);
        assert_eq!(f.org.as_deref(), Some("RX2"));
        assert_eq!(
            f.reason,
            "agreement DSA-2 ended 2026-02-28: no agreement in force covers RX2 (held under DSA-2)"
        );
        // Taken out of an agreement still in force.
        let mut r = row("RX3", None);
        r.agreements = vec!["DSA-1".into()];
        let f = check(&seen(Some("a1"), ALLOWED), Some(&r));
        assert!(f.reason.starts_with("organisation removed: "), "{f:?}");
    }

    #[test]
    fn a_hidden_object_is_fine_in_its_grace_period_and_a_violation_after() {
        let f = check(&seen(Some("a1"), ALLOWED), Some(&row("RX1", Some(10))));
        assert_eq!(f.class, Class::Hidden, "{f:?}");
        assert!(!f.violation);
        assert!(
            f.reason
                .ends_with("its grace period ends 2026-03-21T12:00:00.000000Z"),
            "{}",
            f.reason
        );
        let f = check(&seen(Some("a1"), ALLOWED), Some(&row("RX1", Some(31))));
        assert_eq!(f.class, Class::PastGrace, "{f:?}");
        assert!(f.violation);
        assert!(f.reason.contains("(leaver)"), "{}", f.reason);
    }

    #[test]
    fn a_closed_organisations_contact_is_a_violation_until_hidden_then_waits_its_grace() {
        let mut a = agreements();
        a.closed.insert("RX1".into(), Some("RX9".into()));
        let m = mapping();
        let p = Policy::new(
            &a,
            &m,
            "nhsOdsCode",
            "entryUUID",
            "adminDescription",
            crate::period::Period::exact(DAY * 30),
            now(),
        );
        let f = p.judge(&seen(Some("a1"), ALLOWED), Some(&row("RX1", None)));
        assert_eq!(f.class, Class::NotCovered, "{f:?}");
        assert!(
            f.reason
                .starts_with("organisation closed: no agreement in force covers RX1"),
            "{f:?}"
        );
        let f = p.judge(&seen(Some("a1"), ALLOWED), Some(&row("RX1", Some(10))));
        assert_eq!(f.class, Class::Hidden, "{f:?}");
        assert!(!f.violation);
        let f = p.judge(&seen(Some("a1"), ALLOWED), Some(&row("RX1", Some(31))));
        assert_eq!(f.class, Class::PastGrace, "{f:?}");
    }

    #[test]
    fn an_owned_object_the_state_does_not_know_is_a_violation() {
        let f = check(&seen(Some("a9"), ALLOWED), None);
        assert_eq!(f.class, Class::NotCovered);
        assert!(f.reason.contains("no row"), "{}", f.reason);
    }

    #[test]
    fn an_object_absync_does_not_own_is_listed_with_its_nhs_looking_values() {
        let f = check(
            &seen(
                None,
                &[
                    ("cn", "Hand Made"),
                    ("company", "NHS rzz"),
                    ("mail", "hand.made@nhs.net"),
                    ("title", "Nurse"),
                    ("adminDescription", "other-tool:nhs:1"),
                ],
            ),
            None,
        );
        assert_eq!(f.class, Class::NotOwned, "{f:?}");
        assert!(!f.violation);
        assert_eq!(f.org.as_deref(), Some("RZZ"));
        assert_eq!(
            f.attributes.keys().collect::<Vec<_>>(),
            vec!["company", "mail"]
        );
        assert!(
            f.reason
                .ends_with("its company names RZZ, which no agreement in force covers"),
            "{}",
            f.reason
        );
        let f = check(&seen(None, &[("company", "NHS RX1")]), None);
        assert!(f.reason.ends_with("which DSA-1 covers"), "{}", f.reason);
        assert_eq!(f.agreements, vec!["DSA-1"]);
        let f = check(&seen(None, &[("cn", "Meeting room 2")]), None);
        assert!(f.attributes.is_empty() && f.org.is_none(), "{f:?}");
        assert!(!looks_nhs("Chennhsu Ltd") && looks_nhs("x@mail.NHS.uk"));
        assert_eq!(ods_of_company("NHS England"), None);
    }

    #[test]
    fn the_tally_counts_each_class_and_lists_violations_without_dns_or_values() {
        let mut t = Tally::default();
        let mut attrs = ALLOWED.to_vec();
        attrs.push(("telephoneNumber", "+441632960123"));
        for f in [
            check(&seen(Some("a1"), ALLOWED), Some(&row("RX1", None))),
            check(&seen(Some("a1"), &attrs), Some(&row("RX1", None))),
            check(&seen(Some("a1"), ALLOWED), Some(&row("RX1", Some(40)))),
            check(&seen(None, &[("company", "NHS RZZ")]), None),
            check(&seen(None, &[("cn", "Room")]), None),
        ] {
            t.add(&f);
        }
        assert_eq!(
            (
                t.covered,
                t.not_covered,
                t.past_grace,
                t.not_owned,
                t.not_owned_nhs
            ),
            (1, 1, 1, 2, 1)
        );
        assert_eq!(t.violation_count(), 2);
        assert_eq!(t.not_owned_orgs["RZZ"], 1);
        let json = serde_json::to_string(&t).unwrap();
        assert!(
            !json.contains("Ann Lee") && !json.contains("+4416"),
            "{json}"
        );
        assert!(t.text().ends_with(": 2 VIOLATIONS"), "{}", t.text());
        let back: Tally = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t);
    }
}
