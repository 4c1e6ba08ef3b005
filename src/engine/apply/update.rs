//! Updates: a rename (or a restore out of quarantine) and a modify of the
//! managed attributes, in that order, and the LDAP rename that moves an
//! object (also used by a hide).
//!
//! **Invariant:** nothing is written to an object before [`Applier::locate`]
//! found it carrying absync's anchor, and the intent is committed before
//! the first write; when the modify is refused, the rename the target did
//! take is still committed.

use std::collections::{BTreeMap, HashSet};

use ldap3::Mod;

use crate::engine::diff::{attr_changes, same_dn, MOVED_ORGANISATION, RENAMED_IN_SOURCE};
use crate::ldap::{Sent, SentAfter};
use crate::state::journal::Record;
use crate::state::runs::Counts;
use crate::state::{Attrs, ObjectRow, Snapshot};

use super::{set, Applier, ApplyError, Refused, WriteError};

/// Whether an update touches the target (a rename, a restore, or changed
/// attributes) rather than only the snapshot's bookkeeping.
pub(super) fn needs_write(before: &ObjectRow, after: &ObjectRow) -> bool {
    before.hidden.is_some()
        || !same_dn(&before.dn, &after.dn)
        || !attr_changes(&before.attrs, &after.attrs).is_empty()
}

impl Applier<'_, '_> {
    /// Brings the object from `before` to `after`: renames or restores it,
    /// then modifies its attributes. An object gone from the target is
    /// added again.
    pub(super) async fn update(
        &mut self,
        snapshot: &Snapshot,
        before: ObjectRow,
        after: ObjectRow,
        reason: &str,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let anchor = after.anchor.clone();
        if !needs_write(&before, &after) {
            // Only the organisation or agreements changed: bookkeeping.
            snapshot.commit(&anchor, Some(&after), self.run_id, &[])?;
            return Ok(());
        }
        // Never write to an object that does not carry our anchor.
        let found = self.locate(&anchor, Some(&before.dn)).await?;
        self.update_located(snapshot, before, after, reason, counts, found)
            .await
    }

    /// [`Self::update`] of an object that needs a write, once the target
    /// was asked where it is: `found` is what [`Applier::locate`] (or
    /// `locate_many`) answered, the object carrying absync's anchor.
    pub(super) async fn update_located(
        &mut self,
        snapshot: &Snapshot,
        before: ObjectRow,
        after: ObjectRow,
        reason: &str,
        counts: &mut Counts,
        found: Option<(String, Attrs)>,
    ) -> Result<(), ApplyError> {
        let anchor = after.anchor.clone();
        let Some((current_dn, current_attrs)) = found else {
            // Gone from the target (deleted by hand): create it again.
            snapshot.commit(&anchor, None, self.run_id, &[])?;
            return Box::pin(self.add(snapshot, after, "missing from target", counts)).await;
        };
        let before = ObjectRow {
            dn: current_dn,
            attrs: current_attrs,
            ..before
        };
        if self.withheld(snapshot, &before, &after, counts).await? {
            return Ok(());
        }
        let intent = self.intent(&anchor, "update", Some(&before), Some(&after), reason);
        snapshot.record_intent(&intent)?;
        let mut records = Vec::new();
        let mut now = before.clone();
        if !same_dn(&before.dn, &after.dn) {
            let Some(r) = self
                .rename(snapshot, &before, &after, reason, counts)
                .await?
            else {
                // Refused, and journaled as such: nothing else is written.
                return Ok(());
            };
            records.push(r);
            now.dn = after.dn.clone();
        }
        let mods = self.update_mods(&before, &after);
        if !mods.is_empty() {
            match self.modify_at(&now.dn, mods).await {
                Ok(()) => {
                    records.extend(self.modified(&before, &after, &now.dn, reason, counts));
                    now.attrs = after.attrs.clone();
                }
                Err(e) => {
                    // Keep what the target did accept (a rename).
                    snapshot.commit(&anchor, Some(&now), self.run_id, &records)?;
                    if !e.is_entry_level() {
                        return Err(e.into());
                    }
                    let refused = Refused {
                        anchor: &anchor,
                        op: "modify",
                        dn: &now.dn,
                        old_dn: None,
                        reason,
                        agreements: &after.agreements,
                        changes: attr_changes(&before.attrs, &after.attrs),
                    };
                    return self.failed(snapshot, refused, &e, counts);
                }
            }
        }
        now.org = after.org.clone();
        now.agreements = after.agreements.clone();
        now.hidden = None;
        snapshot.commit(&anchor, Some(&now), self.run_id, &records)?;
        Ok(())
    }

    /// Whether an update of the object found as `before` is withheld
    /// because another object in the domain has an address it would gain
    /// (then journaled as a conflict; nothing is written, a rename
    /// included, and the next run tries again).
    pub(super) async fn withheld(
        &mut self,
        snapshot: &Snapshot,
        before: &ObjectRow,
        after: &ObjectRow,
        counts: &mut Counts,
    ) -> Result<bool, ApplyError> {
        let Some((addr, other)) = self.collision(&before.attrs, &after.attrs).await? else {
            return Ok(false);
        };
        tracing::warn!(anchor = %after.anchor, dn = %before.dn, with = %other,
            "update withheld: another object has the address");
        let row = ObjectRow {
            agreements: after.agreements.clone(),
            ..before.clone()
        };
        let r = self.collision_record(&row, &addr, &other, counts);
        self.conflict(snapshot, r, "address")?;
        Ok(true)
    }

    /// The rename half of an update (a restore when `before` is hidden).
    /// Returns its journal record when the target took it, or `None` when
    /// the target refused it (then the refusal is journaled here).
    async fn rename(
        &mut self,
        snapshot: &Snapshot,
        before: &ObjectRow,
        after: &ObjectRow,
        reason: &str,
        counts: &mut Counts,
    ) -> Result<Option<Record>, ApplyError> {
        match self.move_to(&before.dn, &after.dn).await {
            Ok(()) => Ok(Some(self.renamed(before, after, reason, counts))),
            Err(e) if e.is_entry_level() => {
                let refused = Refused {
                    anchor: &after.anchor,
                    op: "rename",
                    dn: &after.dn,
                    old_dn: Some(&before.dn),
                    reason,
                    agreements: &after.agreements,
                    changes: BTreeMap::new(),
                };
                self.failed(snapshot, refused, &e, counts)?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The modifications an update sends: the changed managed attributes
    /// and, for a restore, the removal of the hide mark.
    pub(super) fn update_mods(&self, before: &ObjectRow, after: &ObjectRow) -> Vec<Mod<String>> {
        let mut mods: Vec<Mod<String>> = attr_changes(&before.attrs, &after.attrs)
            .into_iter()
            .map(|(k, c)| {
                if c.new.is_empty() {
                    Mod::Delete(k, HashSet::new())
                } else {
                    Mod::Replace(k, set(&c.new))
                }
            })
            .collect();
        if before.hidden.is_some() {
            if let Some((attr, _)) = &self.mapping.hide {
                mods.push(Mod::Delete(attr.clone(), HashSet::new()));
            }
        }
        mods
    }

    /// The journal records of a modify the target took at `dn`: the changed
    /// attributes and, for a restore without a rename, the restore.
    pub(super) fn modified(
        &self,
        before: &ObjectRow,
        after: &ObjectRow,
        dn: &str,
        reason: &str,
        counts: &mut Counts,
    ) -> Vec<Record> {
        let mut records = Vec::new();
        let changes = attr_changes(&before.attrs, &after.attrs);
        if !changes.is_empty() {
            // A rename's attribute changes are journaled as such, or as
            // the move to another organisation when it came with one.
            let moved = !before.org.is_empty() && !before.org.eq_ignore_ascii_case(&after.org);
            // (What follows the reason, such as the addresses the mail
            // domains dropped, stays.)
            let why = match reason.strip_prefix(RENAMED_IN_SOURCE) {
                Some(rest) if moved => format!("{MOVED_ORGANISATION}{rest}"),
                Some(rest) => format!("attributes changed{rest}"),
                None => reason.to_string(),
            };
            let mut r = self.record(&after.anchor, "modify", "applied", &why);
            r.dn = Some(dn.to_string());
            r.agreements = after.agreements.clone();
            r.changes = changes;
            records.push(r);
            counts.modified += 1;
        }
        if before.hidden.is_some() && same_dn(&before.dn, &after.dn) {
            let mut r = self.record(&after.anchor, "restore", "applied", reason);
            r.dn = Some(dn.to_string());
            r.agreements = after.agreements.clone();
            records.push(r);
            counts.restored += 1;
        }
        records
    }

    /// Renames or moves (new parent) an object, when both names are
    /// inside the containers.
    pub(super) async fn move_to(&mut self, from: &str, to: &str) -> Result<(), WriteError> {
        let (new_rdn, new_parent) = self.rename_args(from, to)?;
        Ok(self
            .conn
            .rename(from, &new_rdn, new_parent.as_deref())
            .await?)
    }

    /// The new RDN and, for a move, the new parent of a rename from `from`
    /// to `to`, when both names are inside the containers.
    fn rename_args(&self, from: &str, to: &str) -> Result<(String, Option<String>), WriteError> {
        self.inside("rename", from)?;
        self.inside("rename", to)?;
        let new_rdn = crate::dn::first_rdn(to).to_string();
        let parent = crate::dn::parent(to);
        let new_parent = (crate::dn::normalize(&crate::dn::parent(from))
            != crate::dn::normalize(&parent))
        .then_some(parent);
        Ok((new_rdn, new_parent))
    }

    /// Sends a rename from `from` to `to` and then, once it is accepted, a
    /// modify of `mods` at `to`, without waiting for the answers (see
    /// `Conn::rename_then_modify_send`); both names inside the containers.
    pub(super) fn rename_inside(
        &self,
        from: String,
        to: String,
        mods: Vec<Mod<String>>,
    ) -> Result<(Sent, Option<SentAfter>), WriteError> {
        let (new_rdn, new_parent) = self.rename_args(&from, &to)?;
        Ok(self
            .conn
            .rename_then_modify_send(from, new_rdn, new_parent, to, mods))
    }

    /// The journal record of a rename (a restore, when `before` is hidden)
    /// the target took.
    pub(super) fn renamed(
        &self,
        before: &ObjectRow,
        after: &ObjectRow,
        reason: &str,
        counts: &mut Counts,
    ) -> Record {
        let restore = before.hidden.is_some();
        let op = if restore { "restore" } else { "rename" };
        let mut r = self.record(&after.anchor, op, "applied", reason);
        r.dn = Some(after.dn.clone());
        r.old_dn = Some(before.dn.clone());
        r.agreements = after.agreements.clone();
        if restore {
            counts.restored += 1;
        } else {
            counts.renamed += 1;
        }
        r
    }
}
