//! Stage 5, apply: executes planned changes against the target over LDAPS as
//! the service account, and records each accepted change in the snapshot
//! and the journal (stage 6) in one transaction.
//!
//! **Invariants:** absync writes only to objects inside its OU that carry
//! its anchor (checked on the target before every rename, modify and
//! delete); an intent is committed before each write, so a crash at any
//! point is repaired by [`Applier::recover`] on the next run; one entry's
//! failure is journaled and the run goes on.

use std::collections::{BTreeMap, HashSet};

use ldap3::{Mod, Scope};

use crate::config::TargetConfig;
use crate::diff::{attr_changes, same_dn, Change, Kind, Unowned};
use crate::journal::{Counts, Record};
use crate::ldap::{Conn, LdapError};
use crate::map::Mapping;
use crate::snapshot::{Attrs, Intent, ObjectRow, Snapshot, StateError};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Ldap(#[from] LdapError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// A change the target refused, for the journal.
struct Refused<'r> {
    anchor: &'r str,
    op: &'r str,
    dn: &'r str,
    reason: &'r str,
    agreements: &'r [String],
}

pub struct Applier<'a> {
    pub conn: Conn,
    pub target: &'a TargetConfig,
    pub mapping: &'a Mapping,
    pub run_id: i64,
}

fn set(values: &[String]) -> HashSet<String> {
    values.iter().cloned().collect()
}

/// Case-insensitive lookup in a search entry's attributes.
fn values_of(e: &ldap3::SearchEntry, name: &str) -> Vec<String> {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

/// Everything an add sends: object classes, the RDN attribute, the anchor,
/// then the mapped attributes.
pub fn add_attributes(
    mapping: &Mapping,
    target: &TargetConfig,
    after: &ObjectRow,
) -> Vec<(String, Vec<String>)> {
    let rdn_value = crate::dn::unescape_value(
        crate::dn::first_rdn(&after.dn)
            .split_once('=')
            .map(|(_, v)| v)
            .unwrap_or(""),
    );
    let mut attrs = vec![
        ("objectClass".to_string(), mapping.object_class.clone()),
        (mapping.rdn_attribute.clone(), vec![rdn_value]),
        (
            target.anchor_attribute.clone(),
            vec![format!("{}{}", target.anchor_prefix, after.anchor)],
        ),
    ];
    attrs.extend(after.attrs.iter().map(|(k, v)| (k.clone(), v.clone())));
    attrs
}

impl<'a> Applier<'a> {
    fn anchor_value(&self, anchor: &str) -> String {
        format!("{}{anchor}", self.target.anchor_prefix)
    }

    fn record(&self, anchor: &str, op: &str, outcome: &str, reason: &str) -> Record {
        Record {
            run_id: self.run_id,
            anchor: (!anchor.is_empty()).then(|| anchor.to_string()),
            dn: None,
            old_dn: None,
            op: op.into(),
            outcome: outcome.into(),
            reason: reason.into(),
            agreements: Vec::new(),
            changes: BTreeMap::new(),
            error: None,
        }
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
    async fn locate(
        &mut self,
        anchor: &str,
        hint: Option<&str>,
    ) -> Result<Option<(String, Attrs)>, LdapError> {
        let mut attrs: Vec<String> = self
            .mapping
            .rules
            .iter()
            .map(|r| r.target.clone())
            .collect();
        attrs.push(self.target.anchor_attribute.clone());
        let want = self.anchor_value(anchor);
        if let Some(dn) = hint {
            let names: Vec<&str> = attrs.iter().map(String::as_str).collect();
            if let Some(e) = self.conn.read(dn, &names).await? {
                if values_of(&e, &self.target.anchor_attribute).contains(&want) {
                    return Ok(Some((dn.to_string(), self.managed_attrs(&e))));
                }
            }
        }
        let filter = format!(
            "({}={})",
            self.target.anchor_attribute,
            ldap3::ldap_escape(want.as_str())
        );
        let mut search = self
            .conn
            .paged_search(&self.target.base_dn, Scope::OneLevel, &filter, attrs, 10)
            .await?;
        let mut found = None;
        while let Some(e) = search.next().await? {
            found.get_or_insert_with(|| (e.dn.clone(), self.managed_attrs(&e)));
        }
        search.finish().await?;
        Ok(found)
    }

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

    fn add_attrs(&self, after: &ObjectRow) -> Vec<(String, HashSet<String>)> {
        add_attributes(self.mapping, self.target, after)
            .into_iter()
            .map(|(k, v)| (k, set(&v)))
            .collect()
    }

    fn mods(before: &Attrs, after: &Attrs) -> Vec<Mod<String>> {
        attr_changes(before, after)
            .into_iter()
            .map(|(k, c)| {
                if c.new.is_empty() {
                    Mod::Delete(k, HashSet::new())
                } else {
                    Mod::Replace(k, set(&c.new))
                }
            })
            .collect()
    }

    /// Applies one change. Entry-level refusals are journaled and counted;
    /// only a failure of the connection or the state database is an error.
    pub async fn apply(
        &mut self,
        snapshot: &Snapshot,
        change: Change,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let anchor = change.anchor.clone();
        match change.kind {
            Kind::Reject { source_dn, why } => {
                let mut r = self.record(&anchor, "reject", "withheld", &change.reason);
                r.dn = Some(source_dn);
                r.error = Some(why);
                snapshot.journal(&[r])?;
            }
            Kind::Conflict {
                dn,
                with,
                what,
                agreements,
            } => {
                let mut r = self.record(&anchor, "conflict", "withheld", "conflict");
                r.dn = Some(dn);
                r.old_dn = Some(with);
                r.error = Some(what);
                r.agreements = agreements;
                snapshot.journal(&[r])?;
            }
            Kind::Add { after } => self.add(snapshot, after, &change.reason, counts).await?,
            Kind::Update { before, after } => {
                self.update(snapshot, before, after, &change.reason, counts)
                    .await?
            }
            Kind::Delete { before } => {
                self.delete(snapshot, before, &change.reason, counts)
                    .await?
            }
        }
        Ok(())
    }

    /// Journals a change the target refused; it is retried next run.
    fn failed(
        &self,
        snapshot: &Snapshot,
        what: Refused<'_>,
        err: &LdapError,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let Refused {
            anchor,
            op,
            dn,
            reason,
            agreements,
        } = what;
        counts.failed += 1;
        let mut r = self.record(anchor, op, "failed", reason);
        r.dn = Some(dn.to_string());
        r.agreements = agreements.to_vec();
        r.error = Some(err.to_string());
        snapshot.journal(&[r])?;
        snapshot.clear_intent(anchor)?;
        tracing::warn!(anchor, dn, op, error = %err, "change refused by the target");
        Ok(())
    }

    async fn add(
        &mut self,
        snapshot: &Snapshot,
        after: ObjectRow,
        reason: &str,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let anchor = after.anchor.clone();
        snapshot.record_intent(&Intent {
            anchor: anchor.clone(),
            run_id: self.run_id,
            op: "add".into(),
            before: None,
            after: Some(after.clone()),
            reason: reason.into(),
        })?;
        match self.conn.add(&after.dn, self.add_attrs(&after)).await {
            Ok(()) => {
                let mut r = self.record(&anchor, "add", "applied", reason);
                r.dn = Some(after.dn.clone());
                r.agreements = after.agreements.clone();
                r.changes = attr_changes(&Attrs::new(), &after.attrs);
                snapshot.commit(&anchor, Some(&after), self.run_id, &[r])?;
                counts.added += 1;
                tracing::debug!(anchor, dn = %after.dn, "added");
                Ok(())
            }
            Err(e) if e.result_code() == Some(68) => {
                // Something holds the name. Ours (left by a crash before the
                // snapshot recorded it)? Then adopt it; otherwise a conflict.
                match self.locate(&anchor, Some(&after.dn)).await? {
                    Some((dn, attrs)) => {
                        let before = ObjectRow {
                            dn,
                            attrs,
                            ..after.clone()
                        };
                        counts.recovered += 1;
                        self.update(snapshot, before, after, reason, counts).await
                    }
                    None => {
                        counts.conflicts += 1;
                        let mut r = self.record(&anchor, "conflict", "withheld", "conflict");
                        r.dn = Some(after.dn.clone());
                        r.agreements = after.agreements.clone();
                        r.error = Some(format!(
                            "an object absync does not own already has this name ({e})"
                        ));
                        snapshot.journal(&[r])?;
                        snapshot.clear_intent(&anchor)?;
                        Ok(())
                    }
                }
            }
            Err(e) if e.is_entry_level() => self.failed(
                snapshot,
                Refused {
                    anchor: &anchor,
                    op: "add",
                    dn: &after.dn,
                    reason,
                    agreements: &after.agreements,
                },
                &e,
                counts,
            ),
            Err(e) => Err(e.into()),
        }
    }

    async fn update(
        &mut self,
        snapshot: &Snapshot,
        before: ObjectRow,
        after: ObjectRow,
        reason: &str,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let anchor = after.anchor.clone();
        let needs_write = !same_dn(&before.dn, &after.dn)
            || !attr_changes(&before.attrs, &after.attrs).is_empty();
        if !needs_write {
            // Only the organisation or agreements changed: bookkeeping.
            snapshot.commit(&anchor, Some(&after), self.run_id, &[])?;
            return Ok(());
        }
        // Never write to an object that does not carry our anchor.
        let Some((current_dn, current_attrs)) = self.locate(&anchor, Some(&before.dn)).await?
        else {
            // Gone from the target (deleted by hand): create it again.
            snapshot.commit(&anchor, None, self.run_id, &[])?;
            return Box::pin(self.add(snapshot, after, "missing from target", counts)).await;
        };
        let before = ObjectRow {
            dn: current_dn,
            attrs: current_attrs,
            ..before
        };
        snapshot.record_intent(&Intent {
            anchor: anchor.clone(),
            run_id: self.run_id,
            op: "update".into(),
            before: Some(before.clone()),
            after: Some(after.clone()),
            reason: reason.into(),
        })?;
        let mut records = Vec::new();
        let mut now = before.clone();
        if !same_dn(&before.dn, &after.dn) {
            let new_rdn = crate::dn::first_rdn(&after.dn).to_string();
            match self.conn.rename(&before.dn, &new_rdn, None).await {
                Ok(()) => {
                    let mut r = self.record(&anchor, "rename", "applied", reason);
                    r.dn = Some(after.dn.clone());
                    r.old_dn = Some(before.dn.clone());
                    r.agreements = after.agreements.clone();
                    records.push(r);
                    now.dn = after.dn.clone();
                    counts.renamed += 1;
                }
                Err(e) if e.is_entry_level() => {
                    return self.failed(
                        snapshot,
                        Refused {
                            anchor: &anchor,
                            op: "rename",
                            dn: &before.dn,
                            reason,
                            agreements: &after.agreements,
                        },
                        &e,
                        counts,
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mods = Self::mods(&before.attrs, &after.attrs);
        if !mods.is_empty() {
            match self.conn.modify(&now.dn, mods).await {
                Ok(()) => {
                    let mut r = self.record(&anchor, "modify", "applied", "attributes changed");
                    r.dn = Some(now.dn.clone());
                    r.agreements = after.agreements.clone();
                    r.changes = attr_changes(&before.attrs, &after.attrs);
                    records.push(r);
                    now.attrs = after.attrs.clone();
                    counts.modified += 1;
                }
                Err(e) if e.is_entry_level() => {
                    // Keep what the target did accept (a rename).
                    snapshot.commit(&anchor, Some(&now), self.run_id, &records)?;
                    return self.failed(
                        snapshot,
                        Refused {
                            anchor: &anchor,
                            op: "modify",
                            dn: &now.dn,
                            reason,
                            agreements: &after.agreements,
                        },
                        &e,
                        counts,
                    );
                }
                Err(e) => {
                    snapshot.commit(&anchor, Some(&now), self.run_id, &records)?;
                    return Err(e.into());
                }
            }
        }
        now.org = after.org.clone();
        now.agreements = after.agreements.clone();
        snapshot.commit(&anchor, Some(&now), self.run_id, &records)?;
        Ok(())
    }

    async fn delete(
        &mut self,
        snapshot: &Snapshot,
        before: ObjectRow,
        reason: &str,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let anchor = before.anchor.clone();
        let Some((dn, attrs)) = self.locate(&anchor, Some(&before.dn)).await? else {
            // Already gone from the target: only the snapshot forgets it.
            let mut r = self.record(&anchor, "delete", "already absent", reason);
            r.dn = Some(before.dn.clone());
            r.agreements = before.agreements.clone();
            snapshot.commit(&anchor, None, self.run_id, &[r])?;
            return Ok(());
        };
        snapshot.record_intent(&Intent {
            anchor: anchor.clone(),
            run_id: self.run_id,
            op: "delete".into(),
            before: Some(ObjectRow {
                dn: dn.clone(),
                attrs: attrs.clone(),
                ..before.clone()
            }),
            after: None,
            reason: reason.into(),
        })?;
        match self.conn.delete(&dn).await {
            Ok(()) => {
                let mut r = self.record(&anchor, "delete", "applied", reason);
                r.dn = Some(dn);
                r.agreements = before.agreements.clone();
                r.changes = attr_changes(&attrs, &Attrs::new());
                snapshot.commit(&anchor, None, self.run_id, &[r])?;
                counts.deleted += 1;
                Ok(())
            }
            Err(e) if e.is_entry_level() => self.failed(
                snapshot,
                Refused {
                    anchor: &anchor,
                    op: "delete",
                    dn: &dn,
                    reason,
                    agreements: &before.agreements,
                },
                &e,
                counts,
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// Settles the intents an interrupted run left: looks at the target and
    /// records what it really accepted, so nothing is lost or duplicated.
    pub async fn recover(
        &mut self,
        snapshot: &Snapshot,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        for intent in snapshot.intents()? {
            let anchor = intent.anchor.clone();
            let hint = intent
                .after
                .as_ref()
                .or(intent.before.as_ref())
                .map(|o| o.dn.clone());
            let found = self.locate(&anchor, hint.as_deref()).await?;
            let reason = format!("{} (confirmed after an interrupted run)", intent.reason);
            let mut records = Vec::new();
            let row = match (&found, intent.before.as_ref(), intent.after.as_ref()) {
                (Some((dn, attrs)), before, Some(after)) => {
                    let now = ObjectRow {
                        dn: dn.clone(),
                        attrs: attrs.clone(),
                        ..after.clone()
                    };
                    match before {
                        None => {
                            let mut r = self.record(&anchor, "add", "applied", &reason);
                            r.run_id = intent.run_id;
                            r.dn = Some(dn.clone());
                            r.agreements = after.agreements.clone();
                            r.changes = attr_changes(&Attrs::new(), attrs);
                            records.push(r);
                        }
                        Some(b) => {
                            if !same_dn(&b.dn, dn) {
                                let mut r = self.record(&anchor, "rename", "applied", &reason);
                                r.run_id = intent.run_id;
                                r.dn = Some(dn.clone());
                                r.old_dn = Some(b.dn.clone());
                                r.agreements = after.agreements.clone();
                                records.push(r);
                            }
                            let changes = attr_changes(&b.attrs, attrs);
                            if !changes.is_empty() {
                                let mut r = self.record(&anchor, "modify", "applied", &reason);
                                r.run_id = intent.run_id;
                                r.dn = Some(dn.clone());
                                r.agreements = after.agreements.clone();
                                r.changes = changes;
                                records.push(r);
                            }
                        }
                    }
                    Some(now)
                }
                (Some((dn, attrs)), Some(before), None) => {
                    // The delete did not happen: keep the object as it is.
                    Some(ObjectRow {
                        dn: dn.clone(),
                        attrs: attrs.clone(),
                        ..before.clone()
                    })
                }
                (None, Some(before), None) => {
                    let mut r = self.record(&anchor, "delete", "applied", &reason);
                    r.run_id = intent.run_id;
                    r.dn = Some(before.dn.clone());
                    r.agreements = before.agreements.clone();
                    r.changes = attr_changes(&before.attrs, &Attrs::new());
                    records.push(r);
                    None
                }
                // The add never reached the target, or the object is gone:
                // the snapshot forgets it and the next diff re-creates it.
                (None, _, _) | (Some(_), None, None) => None,
            };
            if !records.is_empty() {
                counts.recovered += 1;
            }
            tracing::info!(
                anchor,
                records = records.len(),
                "settled an interrupted change"
            );
            snapshot.commit(&anchor, row.as_ref(), intent.run_id, &records)?;
        }
        Ok(())
    }
}
