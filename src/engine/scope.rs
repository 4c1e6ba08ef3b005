//! Stage 2, scope: the data-sharing agreements decide, per entry, whether it
//! may be held and which of its attributes. The server-side filter already
//! asked for exactly this; it is enforced again here, so whatever a server
//! returns outside the agreements is dropped and counted, never stored.

use std::collections::{BTreeMap, BTreeSet};

use crate::agreements::OrgGrant;

/// A source entry that may be held, with only its allowed attributes.
/// Attribute names are lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    pub anchor: String,
    pub dn: String,
    /// The organisation's ODS code, upper-case.
    pub org: String,
    pub attrs: BTreeMap<String, Vec<String>>,
}

impl SourceEntry {
    pub fn values(&self, attr: &str) -> &[String] {
        self.attrs.get(attr).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn first(&self, attr: &str) -> Option<&str> {
        self.values(attr).first().map(String::as_str)
    }
}

/// What scope decided about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// May be held. `agreements` authorise it; `dropped` counts attributes
    /// the server returned that no agreement allows.
    Hold {
        entry: SourceEntry,
        agreements: BTreeSet<String>,
        dropped: usize,
    },
    /// The person has left (entry status says so).
    Leaver { anchor: String, org: String },
    /// The entry's organisation is not covered by an agreement in force.
    OutOfScope { anchor: String, org: String },
    /// The entry cannot be handled at all; the reason says why.
    Invalid { dn: String, reason: String },
}

/// The rules in force for this run.
#[derive(Debug, Clone)]
pub struct Scope {
    pub grants: BTreeMap<String, OrgGrant>,
    pub org_attribute: String,
    pub anchor_attribute: String,
    pub status_attribute: String,
    pub leaver_values: Vec<String>,
}

/// Case-insensitive lookup in ldap3's attribute map (servers return names
/// in their own spelling: `entryUUID`, `entryuuid`).
fn get<'a>(
    attrs: &'a std::collections::HashMap<String, Vec<String>>,
    name: &str,
) -> Option<&'a Vec<String>> {
    attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

impl Scope {
    /// The rules of the agreements in force, for this source.
    pub fn new(
        source: &crate::config::SourceConfig,
        agreements: &crate::agreements::Agreements,
    ) -> Scope {
        Scope {
            grants: agreements.grants(),
            org_attribute: source.org_attribute.clone(),
            anchor_attribute: source.anchor_attribute.clone(),
            status_attribute: source.status_attribute.clone(),
            leaver_values: source.leaver_values.clone(),
        }
    }

    pub fn judge(&self, raw: ldap3::SearchEntry) -> Verdict {
        let anchor = match get(&raw.attrs, &self.anchor_attribute).map(Vec::as_slice) {
            Some([a]) if !a.trim().is_empty() => a.trim().to_string(),
            Some([]) | None => {
                return Verdict::Invalid {
                    dn: raw.dn,
                    reason: format!("no {} (the anchor)", self.anchor_attribute),
                }
            }
            Some(_) => {
                return Verdict::Invalid {
                    dn: raw.dn,
                    reason: format!("several values of {} (the anchor)", self.anchor_attribute),
                }
            }
        };
        let org = match get(&raw.attrs, &self.org_attribute).map(Vec::as_slice) {
            Some([o]) => o.trim().to_uppercase(),
            Some([]) | None => {
                return Verdict::Invalid {
                    dn: raw.dn,
                    reason: format!("no {} (the organisation)", self.org_attribute),
                }
            }
            Some(_) => {
                return Verdict::Invalid {
                    dn: raw.dn,
                    reason: format!("several values of {}", self.org_attribute),
                }
            }
        };
        let Some(grant) = self.grants.get(&org) else {
            return Verdict::OutOfScope { anchor, org };
        };
        if let Some(status) = get(&raw.attrs, &self.status_attribute) {
            if status
                .iter()
                .any(|s| self.leaver_values.contains(&s.trim().to_lowercase()))
            {
                return Verdict::Leaver { anchor, org };
            }
        }
        let org_attr = self.org_attribute.to_lowercase();
        let anchor_attr = self.anchor_attribute.to_lowercase();
        // Asked for to decide on leavers; kept only if an agreement allows it.
        let status_attr = self.status_attribute.to_lowercase();
        let mut attrs = BTreeMap::new();
        let mut dropped = raw.bin_attrs.len();
        for (name, values) in raw.attrs {
            let lname = name.to_lowercase();
            if lname == anchor_attr || lname == org_attr || grant.attributes.contains(&lname) {
                attrs.insert(lname, values);
            } else if lname != status_attr {
                dropped += 1;
            }
        }
        Verdict::Hold {
            entry: SourceEntry {
                anchor,
                dn: raw.dn,
                org,
                attrs,
            },
            agreements: grant.agreements.clone(),
            dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        let mut grants = BTreeMap::new();
        grants.insert(
            "RX1".to_string(),
            OrgGrant {
                attributes: ["sn", "mail"].iter().map(|s| s.to_string()).collect(),
                agreements: ["DSA-1".to_string()].into(),
            },
        );
        Scope {
            grants,
            org_attribute: "nhsOdsCode".into(),
            anchor_attribute: "entryUUID".into(),
            status_attribute: "nhsEntryStatus".into(),
            leaver_values: vec!["leaver".into()],
        }
    }

    fn raw(pairs: &[(&str, &[&str])]) -> ldap3::SearchEntry {
        ldap3::SearchEntry {
            dn: "uid=1,ou=People,o=nhs".into(),
            attrs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            bin_attrs: Default::default(),
        }
    }

    #[test]
    fn attributes_outside_the_agreement_are_dropped_and_counted() {
        let v = scope().judge(raw(&[
            ("entryUUID", &["u1"]),
            ("nhsOdsCode", &["rx1"]),
            ("sn", &["Smith"]),
            ("telephoneNumber", &["01632 960123"]),
        ]));
        match v {
            Verdict::Hold { entry, dropped, .. } => {
                assert_eq!(entry.org, "RX1");
                assert_eq!(entry.first("sn"), Some("Smith"));
                assert!(entry.values("telephonenumber").is_empty());
                assert_eq!(dropped, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn out_of_scope_leaver_and_invalid_entries() {
        let s = scope();
        assert!(matches!(
            s.judge(raw(&[("entryUUID", &["u1"]), ("nhsOdsCode", &["RZZ"])])),
            Verdict::OutOfScope { .. }
        ));
        assert!(matches!(
            s.judge(raw(&[
                ("entryUUID", &["u1"]),
                ("nhsOdsCode", &["RX1"]),
                ("nhsEntryStatus", &["Leaver"])
            ])),
            Verdict::Leaver { .. }
        ));
        assert!(matches!(
            s.judge(raw(&[("nhsOdsCode", &["RX1"])])),
            Verdict::Invalid { .. }
        ));
        assert!(matches!(
            s.judge(raw(&[
                ("entryUUID", &["u1", "u2"]),
                ("nhsOdsCode", &["RX1"])
            ])),
            Verdict::Invalid { .. }
        ));
    }
}
