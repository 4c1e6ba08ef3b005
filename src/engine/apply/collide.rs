//! Address collisions across the domain: before an add, and before a modify
//! that gives an object an address it does not hold yet (`mail` or an
//! `smtp:` proxy address), the whole domain is searched for an object
//! absync does not own that already has that address. Exchange refuses or
//! misroutes mail to an address two objects share, so such a write is
//! withheld and journaled as a conflict naming the other object.
//!
//! With `[target] global_catalog`, the search goes to the global catalog
//! instead (the whole forest: every domain, and the configuration naming
//! context), on a connection made when the first search needs it and kept
//! for the run. The catalog holds a partial copy of each object, which may
//! lack the anchor attribute, so its hits are told apart by DN: outside the
//! managed and quarantine OUs, someone else's; inside them, read again on
//! the target, whose anchor says whose.
//!
//! The addresses of a whole add window go to the server in one search (an
//! OR filter of at most [`PER_SEARCH`] addresses), so the initial load pays
//! one indexed search per window, not one per object.
//!
//! **Invariant:** only reads the target (and the global catalog). An object
//! in the managed or quarantine OU carrying absync's anchor (the object
//! itself, or another source entry's contact) is never a collision here:
//! duplicates between source entries are left as they were. (The domain
//! search reads the anchor of every hit itself, so there an object
//! carrying it is not a collision anywhere in the domain.)

use std::collections::{BTreeMap, BTreeSet};

use ldap3::{Scope, SearchEntry};

use crate::ldap::{values_of, Conn, LdapError};
use crate::state::journal::Record;
use crate::state::{Attrs, ObjectRow};

use super::Applier;

/// How many addresses one search asks for (two filter terms each).
const PER_SEARCH: usize = 64;

/// The attribute that holds an object's primary address.
const MAIL: &str = "mail";
/// The attribute that holds all of an object's addresses (`SMTP:a`, `smtp:b`,
/// `X500:…`).
const PROXY: &str = "proxyAddresses";

/// The values of `name` in `attrs`, whatever the case of the name.
fn values<'a>(attrs: &'a Attrs, name: &'a str) -> impl Iterator<Item = &'a String> {
    attrs
        .iter()
        .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.iter())
}

/// The address of an `smtp:` proxy address (either case), if it is one.
fn smtp_address(proxy: &str) -> Option<&str> {
    let (kind, addr) = proxy.split_once(':')?;
    kind.eq_ignore_ascii_case("smtp").then_some(addr)
}

/// The mail addresses an object's attributes hold, lower case (mail is
/// matched without regard to case, by AD and by Exchange).
pub(super) fn addresses(attrs: &Attrs) -> BTreeSet<String> {
    let mails = values(attrs, MAIL).map(String::as_str);
    let proxies = values(attrs, PROXY).filter_map(|p| smtp_address(p));
    mails
        .chain(proxies)
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The addresses `after` holds that `before` does not: what a write would
/// give the object.
pub(super) fn new_addresses(before: &Attrs, after: &Attrs) -> BTreeSet<String> {
    let old = addresses(before);
    addresses(after)
        .into_iter()
        .filter(|a| !old.contains(a))
        .collect()
}

/// The search filter for `addrs`: `mail` or an `smtp:` proxy address equal
/// to any of them (both attributes match without regard to case in AD, so
/// `smtp:` also finds `SMTP:`). Values go through the filter escaper.
pub(super) fn filter_for<'a>(addrs: impl IntoIterator<Item = &'a String>) -> String {
    let terms: String = addrs
        .into_iter()
        .map(|a| {
            let v = ldap3::ldap_escape(a.as_str());
            format!("({MAIL}={v})({PROXY}=smtp:{v})")
        })
        .collect();
    format!("(|{terms})")
}

/// The domain naming context that holds `base_dn`: its trailing `DC=`
/// components (`OU=x,DC=sync,DC=test` → `DC=sync,DC=test`). `None` when it
/// has none.
pub(super) fn domain_of(base_dn: &str) -> Option<String> {
    let rdns = crate::dn::split_rdns(base_dn);
    let is_dc = |r: &&&str| {
        r.split_once('=')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("dc"))
    };
    let n = rdns.iter().rev().take_while(is_dc).count();
    (n > 0).then(|| rdns[rdns.len() - n..].join(","))
}

/// The first of `addrs` that another object holds, with that object's DN.
pub(super) fn first_collision(
    addrs: &BTreeSet<String>,
    holders: &BTreeMap<String, String>,
) -> Option<(String, String)> {
    addrs
        .iter()
        .find_map(|a| holders.get(a).map(|dn| (a.clone(), dn.clone())))
}

/// The addresses an entry holds, as attributes: its `mail` and
/// `proxyAddresses`.
fn held_by(e: &SearchEntry) -> Attrs {
    let mut held: Attrs = Attrs::new();
    held.insert(MAIL.into(), values_of(e, MAIL));
    held.insert(PROXY.into(), values_of(e, PROXY));
    held
}

/// Every entry a subtree search from `base` for `filter` returns on `conn`
/// (continuation references dropped: the search stays on that server).
async fn search_all(
    conn: &mut Conn,
    base: &str,
    filter: &str,
    names: &[String],
) -> Result<Vec<SearchEntry>, LdapError> {
    let mut found = Vec::new();
    let mut search = conn
        .paged_search(base, Scope::Subtree, filter, names.to_vec(), 200)
        .await?;
    while let Some(e) = search.next().await? {
        found.push(e);
    }
    search.finish().await?;
    Ok(found)
}

impl Applier<'_, '_> {
    /// Whether `e` is absync's: it carries the anchor prefix.
    fn owned(&self, e: &SearchEntry) -> bool {
        values_of(e, &self.target.anchor_attribute)
            .iter()
            .any(|v| v.starts_with(&self.target.anchor_prefix))
    }

    /// The attributes a collision search asks for.
    fn collision_attrs(&self) -> Vec<String> {
        vec![
            MAIL.to_string(),
            PROXY.to_string(),
            self.target.anchor_attribute.clone(),
        ]
    }

    /// The base of a domain-wide search: the domain naming context of the
    /// managed OU, or the server's default naming context when the OU's
    /// name has no `DC=` components.
    async fn domain_base(&mut self) -> Result<String, LdapError> {
        if let Some(nc) = &self.domain {
            return Ok(nc.clone());
        }
        let nc = match domain_of(&self.target.base_dn) {
            Some(nc) => nc,
            None => self
                .conn
                .read("", &["defaultNamingContext"])
                .await?
                .and_then(|e| values_of(&e, "defaultNamingContext").into_iter().next())
                .unwrap_or_default(),
        };
        self.domain = Some(nc.clone());
        Ok(nc)
    }

    /// The connection to the global catalog: made at the first collision
    /// search that needs it, then kept for the rest of the run. `None`
    /// when none is configured.
    async fn global_catalog(&mut self) -> Result<Option<&mut Conn>, LdapError> {
        let Some(ep) = &self.target.global_catalog else {
            return Ok(None);
        };
        let conn = match self.gc.take() {
            Some(conn) => conn,
            None => {
                let conn = Conn::connect(ep).await?;
                tracing::debug!(url = %conn.url(), "connected to the global catalog");
                conn
            }
        };
        Ok(Some(self.gc.insert(conn)))
    }

    /// The objects absync does not own that match `filter` in the domain
    /// (the target's connection): DN and addresses.
    async fn domain_hits(&mut self, filter: &str) -> Result<Vec<(String, Attrs)>, LdapError> {
        let base = self.domain_base().await?;
        let names = self.collision_attrs();
        let found = search_all(&mut self.conn, &base, filter, &names).await?;
        Ok(found
            .into_iter()
            .filter(|e| !self.owned(e))
            .map(|e| {
                let held = held_by(&e);
                (e.dn, held)
            })
            .collect())
    }

    /// The objects absync does not own that match `filter` anywhere in the
    /// forest, through the global catalog (base "", as AD's global catalog
    /// searches are). It holds a partial copy of each object, which may
    /// lack the anchor attribute: a hit outside the managed and quarantine
    /// OUs is someone else's; one inside them is read again on the target,
    /// where the anchor says whose it is (and gone since: no hit).
    async fn catalog_hits(
        &mut self,
        filter: &str,
    ) -> Result<Option<Vec<(String, Attrs)>>, LdapError> {
        let names = self.collision_attrs();
        let Some(gc) = self.global_catalog().await? else {
            return Ok(None);
        };
        let found = search_all(gc, "", filter, &names).await?;
        let containers = self.containers();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut hits = Vec::with_capacity(found.len());
        for e in found {
            if !containers.iter().any(|c| crate::dn::is_within(&e.dn, c)) {
                hits.push((e.dn.clone(), held_by(&e)));
                continue;
            }
            if let Some(live) = self.conn.read(&e.dn, &names).await? {
                if !self.owned(&live) {
                    hits.push((live.dn.clone(), held_by(&live)));
                }
            }
        }
        Ok(Some(hits))
    }

    /// Which of `addrs` an object absync does not own already holds,
    /// anywhere in the domain, or in the forest when a global catalog is
    /// configured: address → that object's DN (the first by name when
    /// several do). One search per [`PER_SEARCH`] addresses.
    pub(super) async fn holders(
        &mut self,
        addrs: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, String>, LdapError> {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        if addrs.is_empty() {
            return Ok(out);
        }
        let list: Vec<&String> = addrs.iter().collect();
        let started = std::time::Instant::now();
        for chunk in list.chunks(PER_SEARCH) {
            let filter = filter_for(chunk.iter().copied());
            let hits = match self.catalog_hits(&filter).await? {
                Some(hits) => hits,
                None => self.domain_hits(&filter).await?,
            };
            for (dn, held) in hits {
                for a in addresses(&held).intersection(addrs) {
                    let holder = out.entry(a.clone()).or_insert_with(|| dn.clone());
                    if dn < *holder {
                        *holder = dn.clone();
                    }
                }
            }
        }
        let (searched, server) = match &self.gc {
            Some(gc) => ("the global catalog", gc.url()),
            None => ("the domain", self.conn.url()),
        };
        tracing::debug!(
            addresses = addrs.len(),
            held = out.len(),
            server,
            ms = started.elapsed().as_millis() as u64,
            "searched {searched} for the addresses"
        );
        Ok(out)
    }

    /// Whether bringing an object's attributes from `before` (as the target
    /// holds them) to `after` gives it an address an object absync does not
    /// own already has: that address and the object's DN. No search when
    /// no address is new.
    pub(super) async fn collision(
        &mut self,
        before: &Attrs,
        after: &Attrs,
    ) -> Result<Option<(String, String)>, LdapError> {
        let new = new_addresses(before, after);
        if new.is_empty() {
            return Ok(None);
        }
        let holders = self.holders(&new).await?;
        Ok(first_collision(&new, &holders))
    }

    /// The journal record of a write withheld because `other` already has
    /// `addr`; counted, and read again by the next delta.
    pub(super) fn collision_record(
        &mut self,
        row: &ObjectRow,
        addr: &str,
        other: &str,
        counts: &mut crate::state::runs::Counts,
    ) -> Record {
        counts.conflicts += 1;
        self.retry.push((row.anchor.clone(), "conflict".into()));
        let mut r = self.record(&row.anchor, "conflict", "withheld", "conflict");
        r.dn = Some(row.dn.clone());
        r.old_dn = Some(other.to_string());
        r.agreements = row.agreements.clone();
        r.error = Some(collision_text(addr, other));
        r
    }
}

/// Why a write was withheld: the address and the object that holds it.
pub(super) fn collision_text(addr: &str, other: &str) -> String {
    format!("an object absync does not own already has the address {addr}: {other}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &[&str])]) -> Attrs {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn addresses_are_mail_and_smtp_proxies_lower_case() {
        let a = attrs(&[
            ("mail", &["Jo.Bloggs@NHS.net"]),
            (
                "proxyAddresses",
                &[
                    "SMTP:jo@nhs.net",
                    "smtp:J.B@nhs.net",
                    "X500:/o=x",
                    "sip:jo@nhs.net",
                ],
            ),
        ]);
        let want: BTreeSet<String> = ["jo.bloggs@nhs.net", "jo@nhs.net", "j.b@nhs.net"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(addresses(&a), want);
        // Attribute names in any case (the mapping may spell them so).
        let b = attrs(&[("MAIL", &["x@y"]), ("proxyaddresses", &["Smtp:z@y"])]);
        assert_eq!(addresses(&b).len(), 2);
    }

    #[test]
    fn only_addresses_the_object_does_not_hold_yet_are_new() {
        let before = attrs(&[("mail", &["old@nhs.net"])]);
        let after = attrs(&[
            ("mail", &["OLD@nhs.net"]),
            ("proxyAddresses", &["SMTP:new@nhs.net"]),
        ]);
        let new = new_addresses(&before, &after);
        assert_eq!(new.into_iter().collect::<Vec<_>>(), vec!["new@nhs.net"]);
        assert!(new_addresses(&after, &before).is_empty());
    }

    #[test]
    fn the_filter_escapes_every_value() {
        let addrs: BTreeSet<String> = ["a*)(objectClass=*)@x".to_string()].into();
        let f = filter_for(&addrs);
        assert_eq!(
            f,
            "(|(mail=a\\2a\\29\\28objectClass=\\2a\\29@x)\
             (proxyAddresses=smtp:a\\2a\\29\\28objectClass=\\2a\\29@x))"
        );
        assert!(!f.contains("*"));
    }

    #[test]
    fn the_domain_is_the_trailing_dc_components() {
        assert_eq!(
            domain_of("OU=NHS Directory,DC=sync,DC=test").as_deref(),
            Some("DC=sync,DC=test")
        );
        assert_eq!(
            domain_of("ou=a\\,DC=x,dc=Child, DC=sync,DC=test").as_deref(),
            Some("dc=Child,DC=sync,DC=test")
        );
        assert_eq!(domain_of("OU=x,O=example"), None);
    }

    #[test]
    fn the_first_held_address_names_its_holder() {
        let addrs: BTreeSet<String> = ["a@x".into(), "b@x".into()].into();
        let holders: BTreeMap<String, String> = [("b@x".into(), "CN=B,CN=Users".into())].into();
        assert_eq!(
            first_collision(&addrs, &holders),
            Some(("b@x".into(), "CN=B,CN=Users".into()))
        );
        assert_eq!(first_collision(&addrs, &BTreeMap::new()), None);
    }
}
