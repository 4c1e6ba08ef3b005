//! Data-sharing agreements: which organisations (ODS codes) may be copied,
//! which of their attributes, and between which dates.
//!
//! Only agreements in force on the day of the run count. An organisation
//! covered by several gets the union of their attributes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use time::Date;
use toml::Spanned;

use crate::config::{line_of, parse_toml_file, FileError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default, rename = "agreement")]
    agreements: Vec<Spanned<RawAgreement>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgreement {
    id: Spanned<String>,
    title: String,
    organisations: Vec<Spanned<String>>,
    attributes: Vec<Spanned<String>>,
    valid_from: Spanned<toml::value::Datetime>,
    valid_until: Spanned<toml::value::Datetime>,
}

/// One agreement, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    pub id: String,
    pub title: String,
    /// ODS codes, upper-cased.
    pub organisations: BTreeSet<String>,
    /// Source attribute names, lower-cased.
    pub attributes: BTreeSet<String>,
    pub valid_from: Date,
    pub valid_until: Date,
}

impl Agreement {
    /// In force on `day`: from `valid_from` to `valid_until`, both included.
    pub fn in_force(&self, day: Date) -> bool {
        self.valid_from <= day && day <= self.valid_until
    }
}

/// Every agreement in the file, and the scope in force on one day.
#[derive(Debug, Clone)]
pub struct Agreements {
    pub all: Vec<Agreement>,
    pub day: Date,
    /// The organisations the source says are closed (ODS code → the
    /// successor's, when recorded): out of scope whatever names them.
    /// Empty unless `[source.organisations]` is configured and was read.
    pub closed: BTreeMap<String, Option<String>>,
}

/// The reason journaled for the people of a closed organisation.
pub const ORGANISATION_CLOSED: &str = "organisation closed";

/// An agreement (in force or still to come) that names a closed
/// organisation: what `check`, `status` and the log warn of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamesClosed {
    pub agreement: String,
    /// The closed organisation's ODS code.
    pub organisation: String,
    /// Its successor's ODS code, when the source records one.
    pub successor: Option<String>,
    /// Whether an agreement in force covers the successor (its people
    /// stay in scope when they move there).
    #[serde(default)]
    pub successor_covered: bool,
}

impl std::fmt::Display for NamesClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "agreement {} names {}, which is closed",
            self.agreement, self.organisation
        )?;
        match &self.successor {
            Some(s) if self.successor_covered => write!(f, " (its successor is {s})"),
            Some(s) => write!(f, " (its successor is {s}, which no agreement covers)"),
            None => write!(f, " (no successor recorded)"),
        }
    }
}

/// What may be held about one organisation's staff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgGrant {
    /// Allowed source attributes (lower-case), the union over agreements.
    pub attributes: BTreeSet<String>,
    /// The agreements in force covering the organisation, by id.
    pub agreements: BTreeSet<String>,
}

fn to_date(
    v: &Spanned<toml::value::Datetime>,
    key: &str,
    file: &Path,
    text: &str,
) -> Result<Date, FileError> {
    let err = |m: String| FileError::new(file, Some(line_of(text, v.span().start)), Some(key), m);
    let d = v.get_ref();
    match (d.date, d.time) {
        (Some(date), None) => Date::from_calendar_date(
            i32::from(date.year),
            time::Month::try_from(date.month).map_err(|e| err(e.to_string()))?,
            date.day,
        )
        .map_err(|e| err(e.to_string())),
        _ => Err(err(format!(
            "{d} is not a plain date; write it as YYYY-MM-DD"
        ))),
    }
}

/// Whether `code` can be an ODS code: 3 to 5 letters and digits.
pub fn is_ods_code(code: &str) -> bool {
    (3..=5).contains(&code.len()) && code.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_attribute_name(a: &str) -> bool {
    a.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Agreements {
    /// The terms of every agreement in the file, as the journal keeps them:
    /// id, title, organisations, attributes, and the days from and until
    /// which it is in force.
    pub fn terms(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.all
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "id": a.id,
                        "title": a.title,
                        "organisations": a.organisations,
                        "attributes": a.attributes,
                        "valid_from": a.valid_from.to_string(),
                        "valid_until": a.valid_until.to_string(),
                    })
                })
                .collect(),
        )
    }

    /// Loads the agreements file and takes `day` as "today".
    pub fn load(path: &Path, day: Date) -> Result<Agreements, FileError> {
        let (raw, text): (RawFile, String) = parse_toml_file(path)?;
        let mut all = Vec::new();
        let mut ids = BTreeSet::new();
        for a in raw.agreements {
            let line = |span: std::ops::Range<usize>| Some(line_of(&text, span.start));
            let a_span = a.span();
            let a = a.into_inner();
            let id = a.id.get_ref().trim().to_string();
            if id.is_empty() || !ids.insert(id.clone()) {
                return Err(FileError::new(
                    path,
                    line(a.id.span()),
                    Some("agreement.id"),
                    format!("\"{id}\" is empty or used twice"),
                ));
            }
            let mut organisations = BTreeSet::new();
            for o in &a.organisations {
                let code = o.get_ref().trim().to_uppercase();
                // ODS codes are 3 to 5 letters and digits. Anything else is
                // a typo or an attempt to smuggle a filter in.
                if !is_ods_code(&code) {
                    return Err(FileError::new(
                        path,
                        line(o.span()),
                        Some(&format!("agreement {id}: organisations")),
                        format!(
                            "\"{}\" is not an ODS code (3 to 5 letters or digits)",
                            o.get_ref()
                        ),
                    ));
                }
                organisations.insert(code);
            }
            let mut attributes = BTreeSet::new();
            for at in &a.attributes {
                let name = at.get_ref().trim();
                if !is_attribute_name(name) {
                    return Err(FileError::new(
                        path,
                        line(at.span()),
                        Some(&format!("agreement {id}: attributes")),
                        format!("\"{name}\" is not an LDAP attribute name"),
                    ));
                }
                attributes.insert(name.to_lowercase());
            }
            let valid_from = to_date(&a.valid_from, "valid_from", path, &text)?;
            let valid_until = to_date(&a.valid_until, "valid_until", path, &text)?;
            if valid_until < valid_from {
                return Err(FileError::new(
                    path,
                    line(a_span),
                    Some(&format!("agreement {id}")),
                    format!("valid_until {valid_until} is before valid_from {valid_from}"),
                ));
            }
            all.push(Agreement {
                id,
                title: a.title,
                organisations,
                attributes,
                valid_from,
                valid_until,
            });
        }
        Ok(Agreements {
            all,
            day,
            closed: BTreeMap::new(),
        })
    }

    /// The agreements in force on the run's day.
    pub fn in_force(&self) -> impl Iterator<Item = &Agreement> {
        self.all.iter().filter(move |a| a.in_force(self.day))
    }

    /// Every organisation an agreement not yet ended names (in force or
    /// still to come): the ones whose status is worth reading.
    pub fn named(&self) -> BTreeSet<String> {
        self.all
            .iter()
            .filter(|a| a.valid_until >= self.day)
            .flat_map(|a| a.organisations.iter().cloned())
            .collect()
    }

    /// Each agreement not yet ended that names a closed organisation.
    pub fn names_closed(&self) -> Vec<NamesClosed> {
        let grants = self.grants();
        let mut out = Vec::new();
        for a in self.all.iter().filter(|a| a.valid_until >= self.day) {
            for org in &a.organisations {
                if let Some(successor) = self.closed.get(org) {
                    out.push(NamesClosed {
                        agreement: a.id.clone(),
                        organisation: org.clone(),
                        successor: successor.clone(),
                        successor_covered: successor
                            .as_ref()
                            .is_some_and(|s| grants.contains_key(s)),
                    });
                }
            }
        }
        out
    }

    /// Per organisation in scope today: allowed attributes and agreements.
    /// A closed organisation is in scope under no agreement.
    pub fn grants(&self) -> BTreeMap<String, OrgGrant> {
        let mut out: BTreeMap<String, OrgGrant> = BTreeMap::new();
        for a in self.in_force() {
            for org in a
                .organisations
                .iter()
                .filter(|o| !self.closed.contains_key(*o))
            {
                let g = out.entry(org.clone()).or_default();
                g.attributes.extend(a.attributes.iter().cloned());
                g.agreements.insert(a.id.clone());
            }
        }
        out
    }

    /// The LDAP filter selecting the organisations in scope today, with each
    /// ODS code escaped (RFC 4515). `None` when no agreement is in force.
    pub fn org_filter(&self, org_attribute: &str) -> Option<String> {
        let grants = self.grants();
        if grants.is_empty() {
            return None;
        }
        let parts: String = grants
            .keys()
            .map(|code| format!("({org_attribute}={})", ldap3::ldap_escape(code.as_str())))
            .collect();
        Some(if grants.len() == 1 {
            parts
        } else {
            format!("(|{parts})")
        })
    }

    /// Every source attribute any agreement in force allows (lower-case).
    pub fn allowed_attributes(&self) -> BTreeSet<String> {
        self.in_force()
            .flat_map(|a| a.attributes.iter().cloned())
            .collect()
    }

    /// Why an organisation that was in scope is not any more: its
    /// agreement ended (`agreement DSA-1 ended 2026-12-01`: each agreement
    /// it was held under, with the last day it was in force), or it was
    /// taken out of an agreement that is still in force, or it closed while
    /// an agreement in force still names it.
    pub fn why_out_of_scope(&self, org: &str, previous_agreements: &[String]) -> String {
        let org = org.to_uppercase();
        let still_in_force: Vec<&Agreement> = self
            .all
            .iter()
            .filter(|a| previous_agreements.contains(&a.id) && a.in_force(self.day))
            .collect();
        if still_in_force.is_empty() {
            self.ended(previous_agreements)
        } else if still_in_force
            .iter()
            .all(|a| !a.organisations.contains(&org))
        {
            "organisation removed".into()
        } else if self.closed.contains_key(&org) {
            ORGANISATION_CLOSED.into()
        } else {
            "left scope".into()
        }
    }

    /// `agreement DSA-1 ended 2026-12-01, DSA-2 ended 2026-11-30`: the
    /// agreements named, none of them in force. One no longer in the file
    /// is named as such; with none named, `agreement expired`.
    fn ended(&self, ids: &[String]) -> String {
        let parts: Vec<String> = ids
            .iter()
            .map(|id| match self.all.iter().find(|a| &a.id == id) {
                Some(a) if a.valid_until < self.day => format!("{id} ended {}", a.valid_until),
                Some(a) => format!("{id} in force from {}", a.valid_from),
                None => format!("{id} no longer in the agreements file"),
            })
            .collect();
        if parts.is_empty() {
            return AGREEMENT_EXPIRED.into();
        }
        format!("agreement {}", parts.join(", "))
    }

    /// The organisations `a` covers that no agreement covers on the day
    /// after `a` ends: their contacts are deleted when it ends.
    pub fn lost_at_end(&self, a: &Agreement) -> BTreeSet<String> {
        let Some(after) = a.valid_until.next_day() else {
            return BTreeSet::new();
        };
        a.organisations
            .iter()
            .filter(|org| {
                !self
                    .all
                    .iter()
                    .any(|b| b.in_force(after) && b.organisations.contains(*org))
            })
            .cloned()
            .collect()
    }

    /// The agreements as the journal keeps their terms ([`Agreements::terms`]),
    /// read back; an entry that does not parse is left out.
    pub fn from_terms(terms: &serde_json::Value, day: Date) -> Agreements {
        let fmt = time::macros::format_description!("[year]-[month]-[day]");
        let date = |v: &serde_json::Value| Date::parse(v.as_str().unwrap_or_default(), &fmt).ok();
        let set = |v: &serde_json::Value| -> BTreeSet<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        let all = terms
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some(Agreement {
                    id: a["id"].as_str()?.to_string(),
                    title: a["title"].as_str().unwrap_or_default().to_string(),
                    organisations: set(&a["organisations"]),
                    attributes: set(&a["attributes"]),
                    valid_from: date(&a["valid_from"])?,
                    valid_until: date(&a["valid_until"])?,
                })
            })
            .collect();
        Agreements {
            all,
            day,
            closed: Default::default(),
        }
    }
}

/// The reason of a removal whose agreement ended, when the agreements it
/// was held under are not known.
pub const AGREEMENT_EXPIRED: &str = "agreement expired";

/// Whether a removal's reason says no agreement in force covers the
/// object any more (its agreement ended, or its organisation was taken
/// out of it): it may not be held, hidden or not.
pub fn no_agreement_covers(reason: &str) -> bool {
    reason == AGREEMENT_EXPIRED
        || reason == "organisation removed"
        || (reason.starts_with("agreement ")
            && (reason.contains(" ended ")
                || reason.contains(" no longer in the agreements file")
                || reason.contains(" in force from ")))
}

/// Today's date (UTC).
pub fn today() -> Date {
    time::OffsetDateTime::now_utc().date()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    /// A file of its own for each call: tests run in parallel, and one
    /// must never read another's file half-written.
    fn write(name: &str, text: &str) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("absync-agr-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const TWO: &str = r#"
[[agreement]]
id = "DSA-2026-014"
title = "Northshire staff directory"
organisations = ["RX1", "rx2"]
attributes = ["givenName", "sn", "mail"]
valid_from = 2026-01-01
valid_until = 2026-12-31

[[agreement]]
id = "DSA-2026-015"
title = "Phones for RX2"
organisations = ["RX2"]
attributes = ["telephoneNumber"]
valid_from = 2026-01-01
valid_until = 2026-06-30
"#;

    #[test]
    fn union_of_attributes_for_orgs_under_several_agreements() {
        let a = Agreements::load(&write("two.toml", TWO), date!(2026 - 03 - 01)).unwrap();
        let g = a.grants();
        assert_eq!(g.len(), 2);
        assert!(g["RX2"].attributes.contains("telephonenumber"));
        assert!(!g["RX1"].attributes.contains("telephonenumber"));
        assert_eq!(g["RX2"].agreements.len(), 2);
        assert_eq!(
            a.org_filter("nhsOdsCode").unwrap(),
            "(|(nhsOdsCode=RX1)(nhsOdsCode=RX2))"
        );
    }

    #[test]
    fn only_agreements_in_force_count() {
        let a = Agreements::load(&write("two.toml", TWO), date!(2026 - 07 - 01)).unwrap();
        assert!(!a.grants()["RX2"].attributes.contains("telephonenumber"));
        let a = Agreements::load(&write("two.toml", TWO), date!(2027 - 01 - 01)).unwrap();
        assert!(a.grants().is_empty());
        assert_eq!(a.org_filter("nhsOdsCode"), None);
        assert_eq!(
            a.why_out_of_scope("RX1", &["DSA-2026-014".into()]),
            "agreement DSA-2026-014 ended 2026-12-31"
        );
        assert_eq!(
            a.why_out_of_scope("RX2", &["DSA-2026-014".into(), "DSA-GONE".into()]),
            "agreement DSA-2026-014 ended 2026-12-31, DSA-GONE no longer in the agreements file"
        );
        assert_eq!(a.why_out_of_scope("RX2", &[]), "agreement expired");
        for reason in [
            a.why_out_of_scope("RX1", &["DSA-2026-014".into()]),
            a.why_out_of_scope("RX1", &[]),
            "organisation removed".into(),
        ] {
            assert!(no_agreement_covers(&reason), "{reason}");
        }
        assert!(!no_agreement_covers("left scope"));
        assert!(!no_agreement_covers("leaver"));
    }

    #[test]
    fn an_agreements_end_loses_the_organisations_no_other_covers() {
        let a = Agreements::load(&write("two.toml", TWO), date!(2026 - 03 - 01)).unwrap();
        // DSA-015 ends first: RX2 stays covered by DSA-014.
        assert!(a.lost_at_end(&a.all[1]).is_empty());
        let lost: Vec<String> = a.lost_at_end(&a.all[0]).into_iter().collect();
        assert_eq!(lost, ["RX1", "RX2"]);
        // The journaled terms read back as they were.
        let back = Agreements::from_terms(&a.terms(), a.day);
        assert_eq!(back.all, a.all);
    }

    #[test]
    fn a_filter_injection_in_an_ods_code_is_rejected_with_its_line() {
        let p = write(
            "bad.toml",
            "[[agreement]]\nid = \"X\"\ntitle = \"t\"\norganisations = [\"RX1\",\n  \"*)(objectClass=*\"]\nattributes = [\"sn\"]\nvalid_from = 2026-01-01\nvalid_until = 2026-12-31\n",
        );
        let e = Agreements::load(&p, date!(2026 - 03 - 01)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("bad.toml:5"), "{msg}");
        assert!(msg.contains("not an ODS code"), "{msg}");
    }

    #[test]
    fn unknown_keys_and_bad_dates_are_errors_with_lines() {
        let p = write(
            "unknown.toml",
            "[[agreement]]\nid = \"X\"\ntitle = \"t\"\norganisations = [\"RX1\"]\nattributes = [\"sn\"]\nvalid_from = 2026-01-01\nvalid_until = 2026-12-31\nexpires = 1\n",
        );
        let msg = Agreements::load(&p, date!(2026 - 03 - 01))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("unknown.toml:8") && msg.contains("expires"),
            "{msg}"
        );
        let p = write(
            "dates.toml",
            "[[agreement]]\nid = \"X\"\ntitle = \"t\"\norganisations = [\"RX1\"]\nattributes = [\"sn\"]\nvalid_from = 2026-05-01\nvalid_until = 2026-01-31\n",
        );
        let msg = Agreements::load(&p, date!(2026 - 03 - 01))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("before valid_from"), "{msg}");
        // Wrong types, named with their line.
        let p = write(
            "types.toml",
            "[[agreement]]\nid = \"X\"\ntitle = \"t\"\norganisations = \"RX1\"\nattributes = [\"sn\"]\nvalid_from = 2026-01-01\nvalid_until = 2026-12-31\n",
        );
        let msg = Agreements::load(&p, date!(2026 - 03 - 01))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("types.toml:4") && msg.contains("organisations"),
            "{msg}"
        );
        let p = write(
            "types2.toml",
            "[[agreement]]\nid = \"X\"\ntitle = \"t\"\norganisations = [\"RX1\"]\nattributes = [\"sn\"]\nvalid_from = \"soon\"\nvalid_until = 2026-12-31\n",
        );
        let msg = Agreements::load(&p, date!(2026 - 03 - 01))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("types2.toml:6") && msg.contains("valid_from"),
            "{msg}"
        );
    }

    #[test]
    fn a_closed_organisation_is_granted_to_no_one_and_named_as_closed() {
        let mut a = Agreements::load(&write("closed.toml", TWO), date!(2026 - 03 - 01)).unwrap();
        a.closed.insert("RX2".into(), Some("RX9".into()));
        assert_eq!(a.grants().keys().collect::<Vec<_>>(), ["RX1"]);
        assert_eq!(a.org_filter("nhsOdsCode").unwrap(), "(nhsOdsCode=RX1)");
        assert_eq!(
            a.why_out_of_scope("RX2", &["DSA-2026-014".into()]),
            ORGANISATION_CLOSED
        );
        let named: Vec<String> = a.names_closed().iter().map(ToString::to_string).collect();
        assert_eq!(
            named,
            [
                "agreement DSA-2026-014 names RX2, which is closed (its successor is RX9, which \
                 no agreement covers)",
                "agreement DSA-2026-015 names RX2, which is closed (its successor is RX9, which \
                 no agreement covers)",
            ]
        );
        a.closed.insert("RX2".into(), Some("RX1".into()));
        assert_eq!(
            a.names_closed()[0].to_string(),
            "agreement DSA-2026-014 names RX2, which is closed (its successor is RX1)"
        );
        a.closed.insert("RX2".into(), None);
        assert!(a.names_closed()[0]
            .to_string()
            .ends_with("(no successor recorded)"));
        // An agreement that has ended names nothing any more.
        a.day = date!(2026 - 07 - 01);
        assert_eq!(a.names_closed().len(), 1);
        assert_eq!(a.named(), ["RX1".to_string(), "RX2".to_string()].into());
        // An expired agreement still says so, closed or not.
        a.day = date!(2027 - 01 - 01);
        assert_eq!(
            a.why_out_of_scope("RX2", &["DSA-2026-014".into()]),
            "agreement DSA-2026-014 ended 2026-12-31"
        );
    }

    #[test]
    fn organisation_removed_versus_agreement_expired() {
        let text = TWO.replace("[\"RX1\", \"rx2\"]", "[\"RX2\"]");
        let a = Agreements::load(&write("removed.toml", &text), date!(2026 - 03 - 01)).unwrap();
        assert_eq!(
            a.why_out_of_scope("RX1", &["DSA-2026-014".into()]),
            "organisation removed"
        );
    }
}
