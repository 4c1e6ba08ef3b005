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

use crate::engine::diff::{attr_changes, same_dn};
use crate::ldap::LdapError;
use crate::state::runs::Counts;
use crate::state::{Attrs, ObjectRow, Snapshot};

use super::{set, Applier, ApplyError, Refused};

/// Whether an update touches the target (a rename, a restore, or changed
/// attributes) rather than only the snapshot's bookkeeping.
pub(super) fn needs_write(before: &ObjectRow, after: &ObjectRow) -> bool {
    before.hidden.is_some()
        || !same_dn(&before.dn, &after.dn)
        || !attr_changes(&before.attrs, &after.attrs).is_empty()
}

impl Applier<'_, '_> {
    pub(super) async fn update(
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

    /// Renames or moves (new parent) an object.
    pub(super) async fn move_to(&mut self, from: &str, to: &str) -> Result<(), LdapError> {
        let new_rdn = crate::dn::first_rdn(to).to_string();
        let parent = crate::dn::parent(to);
        let new_parent = (crate::dn::normalize(&crate::dn::parent(from))
            != crate::dn::normalize(&parent))
        .then_some(parent);
        self.conn
            .rename(from, &new_rdn, new_parent.as_deref())
            .await
    }
}
