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
    Leaver {
        anchor: String,
        dn: String,
        org: String,
    },
    /// The entry's organisation is not covered by an agreement in force.
    OutOfScope {
        anchor: String,
        dn: String,
        org: String,
    },
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

/// The longest anchor accepted, in bytes. Anchors are identifiers: an
/// entryUUID is 36 bytes, employee numbers and uids a few dozen. The anchor
/// is written to the target after absync's prefix (AD keeps at most 1,024
/// characters in `adminDescription`), into the journal and into search
/// filters; 256 bytes leaves every real identifier room and keeps a hostile
/// value from growing all of those.
pub const MAX_ANCHOR_BYTES: usize = 256;

/// Whether `value` can be an anchor read from `attribute`: an `entryUUID`
/// is a UUID (8-4-4-4-12 hex digits); any anchor is at most
/// [`MAX_ANCHOR_BYTES`] long and holds no control character. `Err` says
/// what is wrong, without quoting the value.
pub fn check_anchor(attribute: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_ANCHOR_BYTES {
        return Err(format!(
            "is {} bytes long (at most {MAX_ANCHOR_BYTES})",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err("holds a control character".into());
    }
    if attribute.eq_ignore_ascii_case("entryUUID") && !is_uuid(value) {
        return Err("is not a UUID".into());
    }
    Ok(())
}

/// 8-4-4-4-12 hexadecimal digits, as RFC 4530 writes an entryUUID.
fn is_uuid(v: &str) -> bool {
    v.len() == 36
        && v.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The anchor of an entry, as every stage reads it: the one value of
/// `attribute`, trimmed, that passes [`check_anchor`]. `Err` says why the
/// entry has none (the reason a rejection journals).
pub fn anchor_value(
    attribute: &str,
    attrs: &std::collections::HashMap<String, Vec<String>>,
) -> Result<String, String> {
    match get(attrs, attribute).map(Vec::as_slice) {
        Some([a]) if !a.trim().is_empty() => {
            let a = a.trim();
            check_anchor(attribute, a).map_err(|why| format!("{attribute} (the anchor) {why}"))?;
            Ok(a.to_string())
        }
        Some([]) | None => Err(format!("no {attribute} (the anchor)")),
        Some(_) => Err(format!("several values of {attribute} (the anchor)")),
    }
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
        let anchor = match anchor_value(&self.anchor_attribute, &raw.attrs) {
            Ok(a) => a,
            Err(reason) => return Verdict::Invalid { dn: raw.dn, reason },
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
            return Verdict::OutOfScope {
                anchor,
                dn: raw.dn,
                org,
            };
        };
        if let Some(status) = get(&raw.attrs, &self.status_attribute) {
            if status
                .iter()
                .any(|s| self.leaver_values.contains(&s.trim().to_lowercase()))
            {
                return Verdict::Leaver {
                    anchor,
                    dn: raw.dn,
                    org,
                };
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

    const U1: &str = "1b2c3d4e-0000-1111-2222-333344445555";

    #[test]
    fn anchors_are_checked_on_the_way_in() {
        let s = scope();
        let invalid = |anchor: &str| match s
            .judge(raw(&[("entryUUID", &[anchor]), ("nhsOdsCode", &["RX1"])]))
        {
            Verdict::Invalid { reason, .. } => reason,
            other => panic!("{anchor:?} was not refused: {other:?}"),
        };
        assert_eq!(invalid("u1"), "entryUUID (the anchor) is not a UUID");
        assert!(invalid("1B2C3D4E-0000-1111-2222-33334444555G").contains("not a UUID"));
        assert!(invalid("{1b2c3d4e-0000-1111-2222-333344445555}").contains("not a UUID"));
        // Never quoted: the reason is safe to print and to journal.
        let ctl = invalid("1b2c3d4e-0000-1111-2222-33334444\u{1b}[2J");
        assert_eq!(ctl, "entryUUID (the anchor) holds a control character");
        let long = invalid(&"a".repeat(MAX_ANCHOR_BYTES + 1));
        assert!(long.contains("257 bytes long (at most 256)"), "{long}");
        assert!(matches!(
            s.judge(raw(&[("entryUUID", &[U1]), ("nhsOdsCode", &["RX1"])])),
            Verdict::Hold { .. }
        ));
        // Another anchor attribute: any printable text up to the bound.
        assert_eq!(check_anchor("employeeNumber", "E-12 345/x"), Ok(()));
        assert_eq!(check_anchor("employeeNumber", &"é".repeat(128)), Ok(()));
        assert!(check_anchor("employeeNumber", &"é".repeat(129)).is_err());
        assert!(check_anchor("employeeNumber", "E1\nversion: 1").is_err());
        assert!(check_anchor("employeeNumber", "E1\u{85}").is_err());
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
            ("entryUUID", &[U1]),
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
            s.judge(raw(&[("entryUUID", &[U1]), ("nhsOdsCode", &["RZZ"])])),
            Verdict::OutOfScope { .. }
        ));
        assert!(matches!(
            s.judge(raw(&[
                ("entryUUID", &[U1]),
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
                ("entryUUID", &[U1, "7c9e6679-7425-40de-944b-e07fc1f90ae7"]),
                ("nhsOdsCode", &["RX1"])
            ])),
            Verdict::Invalid { .. }
        ));
    }
}
