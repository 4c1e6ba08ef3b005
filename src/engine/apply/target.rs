//! What the target holds: the objects absync owns (carrying its anchor),
//! the ones it does not own (whose names and mail addresses are off
//! limits), and where one owned object is now.
//!
//! **Invariant:** everything here only reads the target; an object is
//! absync's only if it carries absync's anchor, wherever it is found.

use std::collections::{BTreeMap, HashMap};

use ldap3::Scope;

use crate::engine::diff::Unowned;
use crate::ldap::{values_of, LdapError};
use crate::state::Attrs;

use super::Applier;

/// How many names one ownership search asks for (an OR of as many terms).
const LOCATE_PER_SEARCH: usize = 64;

/// Whether `e` carries exactly `want` in `attr`, byte for byte. AD compares
/// the anchor attribute (`adminDescription`: a Unicode string) without
/// regard to case, so a search by anchor also returns objects whose anchor
/// differs only by case: those are someone else's.
pub(crate) fn carries(e: &ldap3::SearchEntry, attr: &str, want: &str) -> bool {
    values_of(e, attr).iter().any(|v| v == want)
}

/// An object with absync's anchor as the target holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub dn: String,
    pub attrs: Attrs,
    /// Its objectGUID, the same on every DC.
    pub guid: Option<String>,
}

/// Every object carrying absync's anchor: one per anchor, and the anchors
/// more than one object carries (replication-conflict twins: AD leaves
/// both objects of a name created on two DCs, one renamed `CNF:`).
#[derive(Debug, Default)]
pub struct Owned {
    pub objects: BTreeMap<String, Live>,
    /// Every object of an anchor carried more than once.
    pub twins: BTreeMap<String, Vec<Live>>,
}

impl Owned {
    fn add(&mut self, anchor: &str, live: Live) {
        if let Some(twins) = self.twins.get_mut(anchor) {
            twins.push(live);
        } else if let Some(first) = self.objects.remove(anchor) {
            self.twins.insert(anchor.to_string(), vec![first, live]);
        } else {
            self.objects.insert(anchor.to_string(), live);
        }
    }
}

impl Applier<'_, '_> {
    /// Learns which DC this run writes through (its `dsServiceName`), so
    /// that every intent names it.
    pub async fn identify(&mut self) -> Result<&crate::state::SentTo, LdapError> {
        self.server.name = self.conn.server_name().await?;
        Ok(&self.server)
    }

    /// Whether the target holds an entry at `dn` (the containers absync
    /// writes in must exist before a run reads or plans anything).
    pub async fn exists(&mut self, dn: &str) -> Result<bool, LdapError> {
        Ok(self.conn.read(dn, &["1.1"]).await?.is_some())
    }

    /// Objects in the OU without absync's anchor: their names and mail
    /// addresses are off limits.
    pub async fn scan_unowned(&mut self) -> Result<Unowned, LdapError> {
        let filter = format!(
            "(!({}={}*))",
            self.target.anchor_attribute,
            ldap3::ldap_escape(self.target.anchor_prefix.as_str())
        );
        let mut search = self
            .conn
            .paged_search(
                &self.target.base_dn,
                Scope::OneLevel,
                &filter,
                vec!["mail".into(), "proxyAddresses".into()],
                500,
            )
            .await?;
        let mut out = Unowned::default();
        while let Some(e) = search.next().await? {
            for m in values_of(&e, "mail") {
                out.mails.insert(m.to_lowercase(), e.dn.clone());
            }
            for p in values_of(&e, "proxyAddresses") {
                if let Some((_, addr)) = p.split_once(':') {
                    out.mails.insert(addr.to_lowercase(), e.dn.clone());
                }
            }
            out.dns.insert(crate::dn::normalize(&e.dn), e.dn.clone());
        }
        search.finish().await?;
        Ok(out)
    }

    /// Finds the object carrying `anchor`: at `hint` if it is there, else
    /// anywhere in the OU (an admin may have renamed it). Returns its DN and
    /// the managed attributes as the target holds them.
    pub(super) async fn locate(
        &mut self,
        anchor: &str,
        hint: Option<&str>,
    ) -> Result<Option<(String, Attrs)>, LdapError> {
        let attrs = self.managed_names();
        let want = self.anchor_value(anchor);
        if let Some(dn) = hint {
            let names: Vec<&str> = attrs.iter().map(String::as_str).collect();
            if let Some(e) = self.conn.read(dn, &names).await? {
                if carries(&e, &self.target.anchor_attribute, &want) {
                    return Ok(Some((dn.to_string(), self.managed_attrs(&e))));
                }
            }
        }
        let filter = format!(
            "({}={})",
            self.target.anchor_attribute,
            ldap3::ldap_escape(want.as_str())
        );
        for base in self.containers() {
            let mut search = self
                .conn
                .paged_search(&base, Scope::OneLevel, &filter, attrs.clone(), 10)
                .await?;
            let mut found = None;
            while let Some(e) = search.next().await? {
                // AD matched without regard to case: only the exact value
                // is this anchor's object.
                if carries(&e, &self.target.anchor_attribute, &want) {
                    found.get_or_insert_with(|| (e.dn.clone(), self.managed_attrs(&e)));
                }
            }
            search.finish().await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// [`Self::locate`] for a window of objects, each with its snapshot DN
    /// (`hint`): the objects at their hints are read in one search per
    /// container (an OR of their `distinguishedName`s, which AD answers from
    /// its index of names, one level under the container), and each counts
    /// as found only when it carries its anchor byte for byte, as in
    /// `locate`. An object not found so (moved by an admin, gone, or its
    /// hint outside the containers) goes through `locate` itself: the read
    /// at its hint, then the search by anchor. So the answer for each
    /// anchor is the one `locate` would give, for one round trip per
    /// window instead of one per object.
    pub(super) async fn locate_many(
        &mut self,
        wanted: &[(String, String)],
    ) -> Result<HashMap<String, Option<(String, Attrs)>>, LdapError> {
        let mut out: HashMap<String, Option<(String, Attrs)>> = HashMap::new();
        let containers = self.containers();
        let attrs = self.managed_names();
        for base in &containers {
            let norm = crate::dn::normalize(base);
            let here: Vec<&(String, String)> = wanted
                .iter()
                .filter(|(_, hint)| crate::dn::normalize(&crate::dn::parent(hint)) == norm)
                .collect();
            for chunk in here.chunks(LOCATE_PER_SEARCH) {
                let filter: String = chunk
                    .iter()
                    .map(|(_, hint)| format!("(distinguishedName={})", ldap3::ldap_escape(hint)))
                    .collect();
                let mut search = self
                    .conn
                    .paged_search(
                        base,
                        Scope::OneLevel,
                        &format!("(|{filter})"),
                        attrs.clone(),
                        500,
                    )
                    .await?;
                // Each name in its normal form once, not once per pair.
                let mut by_dn: HashMap<String, Vec<&(String, String)>> = HashMap::new();
                for w in chunk {
                    by_dn
                        .entry(crate::dn::normalize(&w.1))
                        .or_default()
                        .push(*w);
                }
                while let Some(e) = search.next().await? {
                    let at = by_dn.get(&crate::dn::normalize(&e.dn));
                    for (anchor, hint) in at.into_iter().flatten() {
                        let want = self.anchor_value(anchor);
                        if carries(&e, &self.target.anchor_attribute, &want) {
                            out.insert(
                                anchor.clone(),
                                Some((hint.clone(), self.managed_attrs(&e))),
                            );
                        }
                    }
                }
                search.finish().await?;
            }
        }
        for (anchor, hint) in wanted {
            if !out.contains_key(anchor) {
                let found = self.locate(anchor, Some(hint)).await?;
                out.insert(anchor.clone(), found);
            }
        }
        Ok(out)
    }

    /// The containers absync's objects live in: the managed OU and, when
    /// configured, the quarantine OU.
    pub(super) fn containers(&self) -> Vec<String> {
        let mut c = vec![self.target.base_dn.clone()];
        c.extend(self.safety.quarantine_ou.clone());
        c
    }

    /// Every object carrying absync's anchor, as the target holds it, for a
    /// full reconcile: anchor → DN, managed attributes and objectGUID, and
    /// apart the anchors more than one object carries.
    pub async fn scan_owned(&mut self) -> Result<Owned, LdapError> {
        let filter = format!(
            "({}={}*)",
            self.target.anchor_attribute,
            ldap3::ldap_escape(self.target.anchor_prefix.as_str())
        );
        let mut attrs = self.managed_names();
        attrs.push("objectGUID".into());
        let mut out = Owned::default();
        for base in self.containers() {
            let mut search = self
                .conn
                .paged_search(&base, Scope::OneLevel, &filter, attrs.clone(), 500)
                .await?;
            while let Some(e) = search.next().await? {
                for v in values_of(&e, &self.target.anchor_attribute) {
                    if let Some(anchor) = v.strip_prefix(&self.target.anchor_prefix) {
                        let live = Live {
                            dn: e.dn.clone(),
                            attrs: self.managed_attrs(&e),
                            guid: crate::ldap::guid(&e),
                        };
                        out.add(anchor, live);
                    }
                }
            }
            search.finish().await?;
        }
        Ok(out)
    }

    /// The attributes to read of an owned object: the managed ones (the
    /// mapping's targets) and the anchor attribute.
    fn managed_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .mapping
            .rules
            .iter()
            .map(|r| r.target.clone())
            .collect();
        names.push(self.target.anchor_attribute.clone());
        names
    }

    /// The managed attributes of `e` that hold a value.
    fn managed_attrs(&self, e: &ldap3::SearchEntry) -> Attrs {
        self.mapping
            .rules
            .iter()
            .filter_map(|r| {
                let v = values_of(e, &r.target);
                (!v.is_empty()).then(|| (r.target.clone(), v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::carries;

    #[test]
    fn an_anchor_that_differs_only_by_case_is_not_carried() {
        let e = ldap3::SearchEntry {
            dn: "CN=Pat,OU=NHS,DC=x".into(),
            attrs: [(
                "adminDescription".to_string(),
                vec!["absync:EMP-7".to_string()],
            )]
            .into(),
            bin_attrs: Default::default(),
        };
        assert!(carries(&e, "admindescription", "absync:EMP-7"));
        assert!(!carries(&e, "adminDescription", "absync:emp-7"));
        assert!(!carries(&e, "adminDescription", "ABSYNC:EMP-7"));
        assert!(!carries(&e, "adminDescription", "absync:EMP-7 "));
    }
}
