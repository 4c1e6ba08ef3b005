//! Stage 3b, screen: the mail-domain allow-list (`[mail_domains]`, see
//! [`crate::maildomains`]) applied to what the mapping made of an entry.
//! Every value of an address attribute (`mail`, `targetAddress`,
//! `proxyAddresses`) is checked, whatever rule made it. With
//! `outside = "drop"` the addresses outside the list are taken out and
//! the contact is written without them; with `"refuse"` the entry is
//! refused.
//!
//! Dropping takes the outside address out of the source attributes the
//! mapping makes addresses from, then maps again: everything made from it
//! goes with it (the shipped mail-contact mapping makes `targetAddress`,
//! `proxyAddresses` and `mailNickname` from `mail`), and a person's next
//! address, if the source holds one, takes its place. An outside value a
//! template made from something else is then taken out as it is.
//!
//! Pure: no I/O, no clock.

use std::collections::BTreeSet;

use crate::engine::map::{Mapped, Mapping};
use crate::engine::scope::SourceEntry;
use crate::maildomains::{bare_address, is_address_attribute, MailDomains, Outside, Refusal};

/// What the screen made of a mapped entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Screened {
    /// Every address is allowed: the object as mapped.
    Clean(Mapped),
    /// Addresses outside the list were taken out.
    Dropped(Mapped, Dropped),
    /// The entry is refused: why.
    Refused(String),
}

/// What dropping took out of an object, for its journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The target attributes that lost values (as the mapping names them).
    pub attributes: Vec<String>,
    /// Which attributes were dropped and why, e.g. `mail, proxyAddresses
    /// dropped (domain gmail.com is not an allowed mail domain)`.
    pub note: String,
}

/// The values of address attributes the list does not allow, each with
/// its attribute and why.
/// The source attributes the mapping makes address attributes (`mail`,
/// `targetAddress`, `proxyAddresses`) from.
pub fn address_sources(mapping: &Mapping) -> BTreeSet<String> {
    mapping
        .rules
        .iter()
        .filter(|r| is_address_attribute(&r.target))
        .filter_map(|r| mapping.sources_of(&r.target))
        .flatten()
        .flatten()
        .collect()
}

fn outside(domains: &MailDomains, mapped: &Mapped) -> Vec<(String, String, Refusal)> {
    let mut out = Vec::new();
    for (attr, values) in &mapped.attrs {
        if !is_address_attribute(attr) {
            continue;
        }
        for v in values {
            if let Err(why) = domains.check(attr, v) {
                out.push((attr.clone(), v.clone(), why));
            }
        }
    }
    out
}

/// Holds `mapped` (made from `entry`) to the list.
pub fn screen(
    mapping: &Mapping,
    domains: &MailDomains,
    entry: &SourceEntry,
    mapped: Mapped,
) -> Screened {
    let found = outside(domains, &mapped);
    if found.is_empty() {
        return Screened::Clean(mapped);
    }
    if domains.outside == Outside::Refuse {
        let list: Vec<String> = found
            .iter()
            .map(|(attr, _, why)| format!("{attr}: {why}"))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        return Screened::Refused(format!(
            "an address outside the allowed mail domains (mail_domains.outside = \"refuse\"): {}",
            list.join("; ")
        ));
    }
    // The outside addresses, as the source would hold them.
    let bare: BTreeSet<String> = found
        .iter()
        .map(|(_, v, _)| bare_address(v).unwrap_or(v).trim().to_lowercase())
        .collect();
    let sources = address_sources(mapping);
    let mut without = entry.clone();
    for (attr, values) in without.attrs.iter_mut() {
        if sources.contains(attr) {
            values.retain(|v| !bare.contains(&v.trim().to_lowercase()));
        }
    }
    let mut again = match mapping.map(&without) {
        Ok(m) => m,
        Err(why) => {
            return Screened::Refused(format!(
                "without its addresses outside the allowed mail domains: {why}"
            ))
        }
    };
    // What a template made outside the list from something else.
    let left: BTreeSet<(String, String)> = outside(domains, &again)
        .into_iter()
        .map(|(attr, v, _)| (attr, v))
        .collect();
    for (attr, values) in again.attrs.iter_mut() {
        values.retain(|v| !left.contains(&(attr.clone(), v.clone())));
    }
    again.attrs.retain(|_, values| !values.is_empty());
    let dropped = describe(&mapped, &again, &found);
    Screened::Dropped(again, dropped)
}

/// Which attributes of `before` lost or changed values in `after`, and
/// why: an address attribute for its address's refusal, any other for
/// being made from a dropped address.
fn describe(before: &Mapped, after: &Mapped, found: &[(String, String, Refusal)]) -> Dropped {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    let mut attributes = Vec::new();
    for (attr, values) in &before.attrs {
        if after.attrs.get(attr) == Some(values) {
            continue;
        }
        let why = match found.iter().find(|(a, _, _)| a == attr) {
            Some((_, _, refusal)) => refusal.to_string(),
            None => "made from a dropped address".to_string(),
        };
        attributes.push(attr.clone());
        match groups.iter_mut().find(|(w, _)| *w == why) {
            Some((_, attrs)) => attrs.push(attr.clone()),
            None => groups.push((why, vec![attr.clone()])),
        }
    }
    // Address attributes first: they say why.
    groups.sort_by_key(|(why, _)| why == "made from a dropped address");
    let note = groups
        .iter()
        .map(|(why, attrs)| format!("{} dropped ({why})", attrs.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    Dropped { attributes, note }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mail: &[&str]) -> SourceEntry {
        SourceEntry {
            anchor: "1b2c3d4e-0000-1111-2222-333344445555".into(),
            dn: "uid=1,ou=People,o=nhs".into(),
            org: "RX1".into(),
            attrs: [
                ("givenname".to_string(), vec!["Ann".to_string()]),
                ("sn".to_string(), vec!["Lee".to_string()]),
                ("uid".to_string(), vec!["alee".to_string()]),
                (
                    "mail".to_string(),
                    mail.iter().map(|s| s.to_string()).collect(),
                ),
            ]
            .into_iter()
            .collect(),
        }
    }

    /// The shipped mail-contact mapping.
    fn mail_mapping() -> Mapping {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("mappings")
            .join("nhs-to-ad-mail-contact.toml");
        Mapping::load(&file).unwrap()
    }

    fn domains(outside: Outside) -> MailDomains {
        MailDomains::new(&["nhs.net".into(), "nhs.uk".into()], outside).unwrap()
    }

    fn run(m: &Mapping, d: &MailDomains, e: &SourceEntry) -> Screened {
        screen(m, d, e, m.map(e).unwrap())
    }

    #[test]
    fn an_allowed_address_passes_as_mapped() {
        let m = mail_mapping();
        let e = entry(&["Ann.Lee@nhs.net"]);
        assert_eq!(
            run(&m, &domains(Outside::Drop), &e),
            Screened::Clean(m.map(&e).unwrap())
        );
    }

    #[test]
    fn dropping_takes_the_address_and_all_made_from_it() {
        let m = mail_mapping();
        let e = entry(&["ann.lee@gmail.com"]);
        let Screened::Dropped(o, d) = run(&m, &domains(Outside::Drop), &e) else {
            panic!("not dropped")
        };
        for gone in ["mail", "targetAddress", "proxyAddresses", "mailNickname"] {
            assert!(!o.attrs.contains_key(gone), "{gone}: {o:?}");
        }
        assert_eq!(o.rdn_value, "Ann Lee");
        assert_eq!(o.attrs["displayName"], vec!["Ann Lee"]);
        assert_eq!(
            d.note,
            "mail, proxyAddresses, targetAddress dropped (domain gmail.com is not an allowed \
             mail domain); mailNickname dropped (made from a dropped address)"
        );
        assert!(!d.note.contains("ann.lee"), "the local part stays out");
    }

    #[test]
    fn the_next_allowed_address_takes_the_place_of_a_dropped_one() {
        let m = mail_mapping();
        let e = entry(&["ann@evilnhs.uk", "ann.lee@x.nhs.uk"]);
        let Screened::Dropped(o, d) = run(&m, &domains(Outside::Drop), &e) else {
            panic!("not dropped")
        };
        assert_eq!(o.attrs["mail"], vec!["ann.lee@x.nhs.uk"]);
        assert_eq!(o.attrs["proxyAddresses"], vec!["SMTP:ann.lee@x.nhs.uk"]);
        assert!(d.note.contains("domain evilnhs.uk"), "{}", d.note);
    }

    #[test]
    fn refusing_names_each_attribute_and_why() {
        let m = mail_mapping();
        let e = entry(&["ann@nhs.uk.evil.com"]);
        let Screened::Refused(why) = run(&m, &domains(Outside::Refuse), &e) else {
            panic!("not refused")
        };
        assert!(why.contains("mail_domains.outside = \"refuse\""), "{why}");
        assert!(
            why.contains("proxyAddresses: domain nhs.uk.evil.com is not an allowed mail domain"),
            "{why}"
        );
        assert!(why.contains("mail: domain nhs.uk.evil.com"), "{why}");
    }

    #[test]
    fn a_template_made_outside_address_is_dropped_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(
            &p,
            "object_class = [\"contact\"]\n[rdn]\nattribute = \"cn\"\nfirst_of = [\"{sn}\"]\n\
             [attributes.mail]\ncopy = \"mail\"\n\
             [attributes.proxyAddresses]\nfirst_of = [\"smtp:{uid}@elsewhere.example\"]\n\
             [attributes.targetAddress]\nvalue = \"X500:/o=NHS/cn=x\"\n",
        )
        .unwrap();
        let m = Mapping::load(&p).unwrap();
        let e = entry(&["ann@nhs.net"]);
        let Screened::Dropped(o, d) = run(&m, &domains(Outside::Drop), &e) else {
            panic!("not dropped")
        };
        assert_eq!(o.attrs["mail"], vec!["ann@nhs.net"]);
        assert!(!o.attrs.contains_key("proxyAddresses"), "{o:?}");
        assert!(!o.attrs.contains_key("targetAddress"), "{o:?}");
        assert_eq!(d.attributes, vec!["proxyAddresses", "targetAddress"]);
        assert!(
            d.note.contains("an address of type X500, not SMTP"),
            "{}",
            d.note
        );
    }

    #[test]
    fn a_name_made_only_from_the_address_refuses_the_entry_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(
            &p,
            "object_class = [\"contact\"]\n[rdn]\nattribute = \"cn\"\nfirst_of = [\"{mail}\"]\n\
             [attributes.mail]\ncopy = \"mail\"\n",
        )
        .unwrap();
        let m = Mapping::load(&p).unwrap();
        let Screened::Refused(why) = run(&m, &domains(Outside::Drop), &entry(&["a@b.example"]))
        else {
            panic!("not refused")
        };
        assert!(why.contains("no value for the RDN"), "{why}");
    }
}
