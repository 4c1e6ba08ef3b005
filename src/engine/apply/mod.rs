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

use crate::config::{SafetyConfig, TargetConfig};
use crate::engine::diff::{attr_changes, same_dn, Change, Kind, Unowned};
use crate::engine::map::Mapping;
use crate::engine::render::{render, Format};
use crate::ldap::{values_of, Conn, LdapError};
use crate::state::journal::{AttrChange, Record};
use crate::state::runs::Counts;
use crate::state::{Accepted, Attrs, Intent, ObjectRow, Snapshot, StateError};

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
    /// For a rename or move: the name it had (and keeps).
    old_dn: Option<&'r str>,
    reason: &'r str,
    agreements: &'r [String],
    /// What the refused write would have changed, old and new values.
    changes: BTreeMap<String, AttrChange>,
}

/// Where a plan goes instead of the target (`plan`, `sync --dry-run`).
pub struct PlanOut<'o> {
    pub format: Format,
    /// Only deletes, hides and withheld deletes (`plan --only deletes`).
    pub only_deletes: bool,
    pub out: &'o mut dyn std::io::Write,
}

pub struct Applier<'a, 'o> {
    conn: Conn,
    target: &'a TargetConfig,
    safety: &'a SafetyConfig,
    mapping: &'a Mapping,
    run_id: i64,
    /// Set for a dry run: every read happens as in a real run, every write
    /// is rendered here instead of sent.
    plan: Option<PlanOut<'o>>,
    /// Anchors whose change did not land this run (refused, conflict,
    /// rejected), with why: a delta pull reads them again next run.
    retry: Vec<(String, String)>,
    /// Adds planned but not yet sent: they go to the target together
    /// (pipelined on one connection) when [`ADD_WINDOW`] are waiting, when
    /// another kind of change comes, and at [`Applier::flush`].
    pending: Vec<(ObjectRow, String)>,
}

/// How many adds are sent to the target at once. Samba answers a pipelined
/// add as fast as a lone one, so the round trips and absync's own work
/// overlap with the server's.
pub const ADD_WINDOW: usize = 16;

/// An object with absync's anchor as the target holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub dn: String,
    pub attrs: Attrs,
}

fn set(values: &[String]) -> HashSet<String> {
    values.iter().cloned().collect()
}

impl<'a, 'o> Applier<'a, 'o> {
    /// An applier writing to the target over `conn` for run `run_id`, or,
    /// with `plan`, rendering there what it would write.
    pub fn new(
        conn: Conn,
        target: &'a TargetConfig,
        safety: &'a SafetyConfig,
        mapping: &'a Mapping,
        run_id: i64,
        plan: Option<PlanOut<'o>>,
    ) -> Self {
        Applier {
            conn,
            target,
            safety,
            mapping,
            run_id,
            plan,
            retry: Vec::new(),
            pending: Vec::new(),
        }
    }
}

impl Applier<'_, '_> {
    /// The run the applier's records belong to.
    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Anchors whose change did not land this run, with why.
    pub fn retry(&self) -> &[(String, String)] {
        &self.retry
    }

    /// Ends the session with the target.
    pub async fn unbind(self) {
        self.conn.unbind().await;
    }

    /// Whether the target holds an entry at `dn` (the containers absync
    /// writes in must exist before a run reads or plans anything).
    pub async fn exists(&mut self, dn: &str) -> Result<bool, LdapError> {
        Ok(self.conn.read(dn, &["1.1"]).await?.is_some())
    }

    fn anchor_value(&self, anchor: &str) -> String {
        format!("{}{anchor}", self.target.anchor_prefix)
    }

    fn record(&self, anchor: &str, op: &str, outcome: &str, reason: &str) -> Record {
        let mut r = Record::new(self.run_id, op, outcome, reason);
        r.anchor = (!anchor.is_empty()).then(|| anchor.to_string());
        r
    }

    /// What is about to be written to `anchor`, committed before the write
    /// so that [`Self::recover`] can settle it after a crash.
    fn intent(
        &self,
        anchor: &str,
        op: &str,
        before: Option<&ObjectRow>,
        after: Option<&ObjectRow>,
        reason: &str,
    ) -> Intent {
        Intent {
            anchor: anchor.to_string(),
            run_id: self.run_id,
            op: op.into(),
            before: before.cloned(),
            after: after.cloned(),
            reason: reason.into(),
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
        let attrs = self.managed_names();
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
        for base in self.containers() {
            let mut search = self
                .conn
                .paged_search(&base, Scope::OneLevel, &filter, attrs.clone(), 10)
                .await?;
            let mut found = None;
            while let Some(e) = search.next().await? {
                found.get_or_insert_with(|| (e.dn.clone(), self.managed_attrs(&e)));
            }
            search.finish().await?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// The containers absync's objects live in: the managed OU and, when
    /// configured, the quarantine OU.
    fn containers(&self) -> Vec<String> {
        let mut c = vec![self.target.base_dn.clone()];
        c.extend(self.safety.quarantine_ou.clone());
        c
    }

    /// Every object carrying absync's anchor, as the target holds it, for a
    /// full reconcile: anchor → DN and managed attributes.
    pub async fn scan_owned(&mut self) -> Result<BTreeMap<String, Live>, LdapError> {
        let filter = format!(
            "({}={}*)",
            self.target.anchor_attribute,
            ldap3::ldap_escape(self.target.anchor_prefix.as_str())
        );
        let attrs = self.managed_names();
        let mut out = BTreeMap::new();
        for base in self.containers() {
            let mut search = self
                .conn
                .paged_search(&base, Scope::OneLevel, &filter, attrs.clone(), 500)
                .await?;
            while let Some(e) = search.next().await? {
                for v in values_of(&e, &self.target.anchor_attribute) {
                    if let Some(anchor) = v.strip_prefix(&self.target.anchor_prefix) {
                        out.insert(
                            anchor.to_string(),
                            Live {
                                dn: e.dn.clone(),
                                attrs: self.managed_attrs(&e),
                            },
                        );
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

    fn add_attrs(&self, after: &ObjectRow) -> Vec<(String, HashSet<String>)> {
        crate::engine::diff::add_attributes(self.mapping, self.target, after)
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
    /// In a dry run, the same reads happen and the write is rendered.
    pub async fn apply(
        &mut self,
        snapshot: &Snapshot,
        change: Change,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        if self.plan.is_some() {
            return self.dry(change, counts).await;
        }
        if let Kind::Add { after } = change.kind {
            self.pending.push((after, change.reason));
            if self.pending.len() >= ADD_WINDOW {
                self.flush(snapshot, counts).await?;
            }
            return Ok(());
        }
        // Changes keep their order: waiting adds go first.
        self.flush(snapshot, counts).await?;
        let anchor = change.anchor.clone();
        match change.kind {
            Kind::Reject { source_dn, why } => {
                if !anchor.is_empty() {
                    self.retry.push((anchor.clone(), why.clone()));
                }
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
                self.retry.push((anchor.clone(), what.clone()));
                let mut r = self.record(&anchor, "conflict", "withheld", "conflict");
                r.dn = Some(dn);
                r.old_dn = Some(with);
                r.error = Some(what);
                r.agreements = agreements;
                snapshot.journal(&[r])?;
            }
            // Journaled once per run by the caller, not per object.
            Kind::Withheld { .. } => {}
            Kind::Add { after } => self.add(snapshot, after, &change.reason, counts).await?,
            Kind::Update { before, after } => {
                self.update(snapshot, before, after, &change.reason, counts)
                    .await?
            }
            Kind::Hide { before, after } => {
                self.hide(snapshot, before, after, &change.reason, counts)
                    .await?
            }
            Kind::Delete { before } => {
                self.delete(snapshot, before, &change.reason, counts)
                    .await?
            }
        }
        Ok(())
    }

    /// The dry-run twin of [`Self::apply`]: the reads a real run makes before
    /// writing (ownership, where the object is now, whether a name is taken),
    /// then the change as the real run would send it, rendered.
    async fn dry(&mut self, change: Change, counts: &mut Counts) -> Result<(), ApplyError> {
        let Change {
            anchor,
            reason,
            kind,
        } = change;
        let kind = match kind {
            Kind::Add { after } => {
                let names = [self.target.anchor_attribute.as_str()];
                match self.conn.read(&after.dn, &names).await? {
                    None => Kind::Add { after },
                    Some(e) => match self.locate(&anchor, Some(&e.dn)).await? {
                        Some((dn, attrs)) if same_dn(&dn, &after.dn) => Kind::Update {
                            before: ObjectRow {
                                dn,
                                attrs,
                                ..after.clone()
                            },
                            after,
                        },
                        _ => {
                            counts.conflicts += 1;
                            Kind::Conflict {
                                with: e.dn,
                                dn: after.dn,
                                what: "an object absync does not own already has this name".into(),
                                agreements: after.agreements,
                            }
                        }
                    },
                }
            }
            Kind::Update { before, after } => {
                if !needs_write(&before, &after) {
                    return Ok(());
                }
                match self.locate(&anchor, Some(&before.dn)).await? {
                    None => Kind::Add { after },
                    Some((dn, attrs)) => Kind::Update {
                        before: ObjectRow {
                            dn,
                            attrs,
                            ..before
                        },
                        after,
                    },
                }
            }
            Kind::Hide { before, after } => match self.locate(&anchor, Some(&before.dn)).await? {
                None => return Ok(()),
                Some((dn, attrs)) => Kind::Hide {
                    before: ObjectRow {
                        dn,
                        attrs,
                        ..before
                    },
                    after,
                },
            },
            Kind::Delete { before } => match self.locate(&anchor, Some(&before.dn)).await? {
                None => return Ok(()),
                Some((dn, attrs)) => Kind::Delete {
                    before: ObjectRow {
                        dn,
                        attrs,
                        ..before
                    },
                },
            },
            other => other,
        };
        let change = Change {
            anchor,
            reason,
            kind,
        };
        count_planned(&change, counts);
        if let Some(plan) = self.plan.as_mut() {
            if !plan.only_deletes || change.is_removal() {
                let text = render(&change, plan.format, self.mapping, self.target);
                plan.out
                    .write_all(text.as_bytes())
                    .map_err(|e| StateError::Output(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Journals a change the target refused; it is retried next run.
    fn failed(
        &mut self,
        snapshot: &Snapshot,
        what: Refused<'_>,
        err: &LdapError,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let Refused {
            anchor,
            op,
            dn,
            old_dn,
            reason,
            agreements,
            changes,
        } = what;
        counts.failed += 1;
        self.retry
            .push((anchor.to_string(), format!("{op} failed")));
        let mut r = self.record(anchor, op, "failed", reason);
        r.dn = Some(dn.to_string());
        r.old_dn = old_dn.map(str::to_string);
        r.agreements = agreements.to_vec();
        r.changes = changes;
        r.error = Some(err.to_string());
        snapshot.journal(&[r])?;
        snapshot.clear_intent(anchor)?;
        tracing::warn!(anchor, dn, op, error = %err, "change refused by the target");
        Ok(())
    }

    /// Sends the adds waiting for the add window (`pending`).
    pub async fn flush(
        &mut self,
        snapshot: &Snapshot,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let adds = std::mem::take(&mut self.pending);
        self.add_batch(snapshot, adds, counts).await
    }

    async fn add(
        &mut self,
        snapshot: &Snapshot,
        after: ObjectRow,
        reason: &str,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        self.add_batch(snapshot, vec![(after, reason.to_string())], counts)
            .await
    }

    /// Adds several objects: their intents in one transaction, the adds
    /// pipelined, then what the target accepted in one transaction. Each
    /// refusal is then handled on its own, as for a single add.
    async fn add_batch(
        &mut self,
        snapshot: &Snapshot,
        adds: Vec<(ObjectRow, String)>,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let intents: Vec<Intent> = adds
            .iter()
            .map(|(after, reason)| self.intent(&after.anchor, "add", None, Some(after), reason))
            .collect();
        snapshot.record_intents(&intents)?;
        let requests = adds
            .iter()
            .map(|(after, _)| (after.dn.clone(), self.add_attrs(after)))
            .collect();
        let results = self.conn.add_many(requests).await;
        let mut accepted: Vec<(ObjectRow, Vec<Record>)> = Vec::new();
        let mut refused = Vec::new();
        for ((after, reason), result) in adds.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    let mut r = self.record(&after.anchor, "add", "applied", &reason);
                    r.dn = Some(after.dn.clone());
                    r.agreements = after.agreements.clone();
                    r.changes = attr_changes(&Attrs::new(), &after.attrs);
                    tracing::debug!(anchor = %after.anchor, dn = %after.dn, "added");
                    accepted.push((after, vec![r]));
                }
                Err(e) => refused.push((after, reason, e)),
            }
        }
        let rows: Vec<Accepted<'_>> = accepted
            .iter()
            .map(|(after, records)| Accepted {
                anchor: &after.anchor,
                after: Some(after),
                records,
            })
            .collect();
        snapshot.commit_many(&rows, self.run_id)?;
        counts.added += accepted.len() as u64;
        for (after, reason, e) in refused {
            self.add_refused(snapshot, after, &reason, e, counts)
                .await?;
        }
        Ok(())
    }

    /// An add the target refused: a name already taken (ours, left by a
    /// crash: adopted; someone else's: a conflict), a refusal of this entry
    /// (journaled, retried), or a failure of the connection (ends the run).
    async fn add_refused(
        &mut self,
        snapshot: &Snapshot,
        after: ObjectRow,
        reason: &str,
        e: LdapError,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let anchor = after.anchor.clone();
        match e {
            e if e.result_code() == Some(68) => {
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
                        snapshot.clear_intent(&anchor)?;
                        Box::pin(self.update(snapshot, before, after, reason, counts)).await
                    }
                    None => {
                        counts.conflicts += 1;
                        self.retry.push((anchor.clone(), "conflict".into()));
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
            e if e.is_entry_level() => self.failed(
                snapshot,
                Refused {
                    anchor: &anchor,
                    op: "add",
                    dn: &after.dn,
                    old_dn: None,
                    reason,
                    agreements: &after.agreements,
                    changes: attr_changes(&Attrs::new(), &after.attrs),
                },
                &e,
                counts,
            ),
            e => Err(e.into()),
        }
    }

    /// Renames or moves (new parent) an object; `op` names it in the journal.
    async fn move_to(&mut self, from: &str, to: &str) -> Result<(), LdapError> {
        let new_rdn = crate::dn::first_rdn(to).to_string();
        let parent = crate::dn::parent(to);
        let new_parent = (crate::dn::normalize(&crate::dn::parent(from))
            != crate::dn::normalize(&parent))
        .then_some(parent);
        self.conn
            .rename(from, &new_rdn, new_parent.as_deref())
            .await
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
        let restore = before.hidden.is_some();
        if !needs_write(&before, &after) {
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
        let intent = self.intent(&anchor, "update", Some(&before), Some(&after), reason);
        snapshot.record_intent(&intent)?;
        let mut records = Vec::new();
        let mut now = before.clone();
        if !same_dn(&before.dn, &after.dn) {
            match self.move_to(&before.dn, &after.dn).await {
                Ok(()) => {
                    let op = if restore { "restore" } else { "rename" };
                    let mut r = self.record(&anchor, op, "applied", reason);
                    r.dn = Some(after.dn.clone());
                    r.old_dn = Some(before.dn.clone());
                    r.agreements = after.agreements.clone();
                    records.push(r);
                    now.dn = after.dn.clone();
                    if restore {
                        counts.restored += 1;
                    } else {
                        counts.renamed += 1;
                    }
                }
                Err(e) if e.is_entry_level() => {
                    return self.failed(
                        snapshot,
                        Refused {
                            anchor: &anchor,
                            op: "rename",
                            dn: &after.dn,
                            old_dn: Some(&before.dn),
                            reason,
                            agreements: &after.agreements,
                            changes: BTreeMap::new(),
                        },
                        &e,
                        counts,
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut mods = Self::mods(&before.attrs, &after.attrs);
        if restore {
            if let Some((attr, _)) = &self.mapping.hide {
                mods.push(Mod::Delete(attr.clone(), HashSet::new()));
            }
        }
        if !mods.is_empty() {
            match self.conn.modify(&now.dn, mods).await {
                Ok(()) => {
                    let changes = attr_changes(&before.attrs, &after.attrs);
                    if !changes.is_empty() {
                        // A rename's attribute changes are journaled as such.
                        let why = if reason == "renamed in source" {
                            "attributes changed"
                        } else {
                            reason
                        };
                        let mut r = self.record(&anchor, "modify", "applied", why);
                        r.dn = Some(now.dn.clone());
                        r.agreements = after.agreements.clone();
                        r.changes = changes;
                        records.push(r);
                        counts.modified += 1;
                    }
                    if restore && same_dn(&before.dn, &after.dn) {
                        let mut r = self.record(&anchor, "restore", "applied", reason);
                        r.dn = Some(now.dn.clone());
                        r.agreements = after.agreements.clone();
                        records.push(r);
                        counts.restored += 1;
                    }
                    now.attrs = after.attrs.clone();
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
                            old_dn: None,
                            reason,
                            agreements: &after.agreements,
                            changes: attr_changes(&before.attrs, &after.attrs),
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
        now.hidden = None;
        snapshot.commit(&anchor, Some(&now), self.run_id, &records)?;
        Ok(())
    }

    /// The object to hide or delete is already gone from the target: only
    /// the snapshot forgets it, and the journal says so.
    fn forget_absent(
        &self,
        snapshot: &Snapshot,
        before: &ObjectRow,
        op: &str,
        reason: &str,
    ) -> Result<(), ApplyError> {
        let mut r = self.record(&before.anchor, op, "already absent", reason);
        r.dn = Some(before.dn.clone());
        r.agreements = before.agreements.clone();
        snapshot.commit(&before.anchor, None, self.run_id, &[r])?;
        Ok(())
    }

    /// Hides an object for its grace period: into the quarantine OU and/or
    /// marked per the mapping's [hide]. It keeps its anchor.
    async fn hide(
        &mut self,
        snapshot: &Snapshot,
        before: ObjectRow,
        after: ObjectRow,
        reason: &str,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let anchor = before.anchor.clone();
        let Some((dn, attrs)) = self.locate(&anchor, Some(&before.dn)).await? else {
            return self.forget_absent(snapshot, &before, "hide", reason);
        };
        let before = ObjectRow {
            dn,
            attrs,
            ..before
        };
        snapshot.record_intent(&self.intent(
            &anchor,
            "hide",
            Some(&before),
            Some(&after),
            reason,
        ))?;
        let refused = |op| Refused {
            anchor: &anchor,
            op,
            dn: &after.dn,
            old_dn: Some(&before.dn),
            reason,
            agreements: &before.agreements,
            changes: attr_changes(&before.attrs, &after.attrs),
        };
        if !same_dn(&before.dn, &after.dn) {
            match self.move_to(&before.dn, &after.dn).await {
                Ok(()) => {}
                Err(e) if e.is_entry_level() => {
                    return self.failed(snapshot, refused("hide"), &e, counts)
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Some((attr, value)) = &self.mapping.hide {
            let mods = vec![Mod::Replace(attr.clone(), [value.clone()].into())];
            if let Err(e) = self.conn.modify(&after.dn, mods).await {
                // The move happened: record it, then report the refusal.
                let moved = ObjectRow {
                    dn: after.dn.clone(),
                    ..before.clone()
                };
                snapshot.commit(&anchor, Some(&moved), self.run_id, &[])?;
                if e.is_entry_level() {
                    return self.failed(snapshot, refused("hide"), &e, counts);
                }
                return Err(e.into());
            }
        }
        let mut r = self.record(&anchor, "hide", "applied", reason);
        r.dn = Some(after.dn.clone());
        r.old_dn = Some(before.dn.clone());
        r.agreements = before.agreements.clone();
        let hidden = ObjectRow {
            attrs: before.attrs.clone(),
            ..after
        };
        snapshot.commit(&anchor, Some(&hidden), self.run_id, &[r])?;
        counts.hidden += 1;
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
            return self.forget_absent(snapshot, &before, "delete", reason);
        };
        let current = ObjectRow {
            dn: dn.clone(),
            attrs: attrs.clone(),
            ..before.clone()
        };
        snapshot.record_intent(&self.intent(&anchor, "delete", Some(&current), None, reason))?;
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
                    old_dn: None,
                    reason,
                    agreements: &before.agreements,
                    changes: attr_changes(&attrs, &Attrs::new()),
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
            let record = |op: &str, dn: &str, row: &ObjectRow| {
                let mut r = self.record(&anchor, op, "applied", &reason);
                r.run_id = intent.run_id;
                r.dn = Some(dn.to_string());
                r.agreements = row.agreements.clone();
                r
            };
            let mut records = Vec::new();
            let row = match (&found, intent.before.as_ref(), intent.after.as_ref()) {
                (Some((dn, attrs)), before, Some(after)) => {
                    // Where the object is tells how far the change got.
                    let reached = same_dn(dn, &after.dn);
                    let now = ObjectRow {
                        dn: dn.clone(),
                        attrs: attrs.clone(),
                        hidden: if reached {
                            after.hidden.clone()
                        } else {
                            before.and_then(|b| b.hidden.clone())
                        },
                        ..after.clone()
                    };
                    match before {
                        None => {
                            let mut r = record("add", dn, after);
                            r.changes = attr_changes(&Attrs::new(), attrs);
                            records.push(r);
                        }
                        Some(b) => {
                            if !same_dn(&b.dn, dn) {
                                let op = match (b.hidden.is_some(), after.hidden.is_some()) {
                                    (false, true) => "hide",
                                    (true, false) => "restore",
                                    _ => "rename",
                                };
                                let mut r = record(op, dn, after);
                                r.old_dn = Some(b.dn.clone());
                                records.push(r);
                            }
                            let changes = attr_changes(&b.attrs, attrs);
                            if !changes.is_empty() {
                                let mut r = record("modify", dn, after);
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
                    let mut r = record("delete", &before.dn, before);
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

/// Whether an update touches the target (a rename, a restore, or changed
/// attributes) rather than only the snapshot's bookkeeping.
fn needs_write(before: &ObjectRow, after: &ObjectRow) -> bool {
    before.hidden.is_some()
        || !same_dn(&before.dn, &after.dn)
        || !attr_changes(&before.attrs, &after.attrs).is_empty()
}

/// In a plan, counts what would be written.
pub fn count_planned(c: &Change, counts: &mut Counts) {
    match &c.kind {
        Kind::Add { .. } => counts.added += 1,
        Kind::Delete { .. } => counts.deleted += 1,
        Kind::Hide { .. } => counts.hidden += 1,
        Kind::Update { .. } => {
            if c.is_restore() {
                counts.restored += 1;
            } else if c.is_rename() {
                counts.renamed += 1;
            }
            if c.is_modify() {
                counts.modified += 1;
            }
        }
        Kind::Withheld { .. } | Kind::Conflict { .. } | Kind::Reject { .. } => {}
    }
}
