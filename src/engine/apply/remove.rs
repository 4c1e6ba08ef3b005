//! Removals: a hide (into quarantine and/or marked, for a grace period)
//! and a delete, and forgetting an object that is already gone.
//!
//! **Invariant:** an object is hidden or deleted only after
//! [`Applier::locate`] found it carrying absync's anchor, and only after
//! its intent is committed; one already gone is only forgotten by the
//! snapshot.

use ldap3::Mod;

use crate::engine::diff::{attr_changes, same_dn};
use crate::state::runs::Counts;
use crate::state::{Attrs, ObjectRow, Snapshot};

use super::{Applier, ApplyError, Refused};

impl Applier<'_, '_> {
    /// The object to hide or delete is already gone from the target: only
    /// the snapshot forgets it, and the journal says so.
    pub(super) fn forget_absent(
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
    pub(super) async fn hide(
        &mut self,
        snapshot: &Snapshot,
        before: ObjectRow,
        after: ObjectRow,
        reason: &str,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let found = self.locate(&before.anchor, Some(&before.dn)).await?;
        self.hide_located(snapshot, before, after, reason, counts, found)
            .await
    }

    /// [`Self::hide`] once the target was asked where the object is
    /// (`found`: carrying absync's anchor).
    pub(super) async fn hide_located(
        &mut self,
        snapshot: &Snapshot,
        before: ObjectRow,
        after: ObjectRow,
        reason: &str,
        counts: &mut Counts,
        found: Option<(String, Attrs)>,
    ) -> Result<(), ApplyError> {
        let anchor = before.anchor.clone();
        let Some((dn, attrs)) = found else {
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
            if let Err(e) = self.modify_at(&after.dn, mods).await {
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

    /// Deletes an object from the target.
    pub(super) async fn delete(
        &mut self,
        snapshot: &Snapshot,
        before: ObjectRow,
        reason: &str,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let found = self.locate(&before.anchor, Some(&before.dn)).await?;
        self.delete_located(snapshot, before, reason, counts, found)
            .await
    }

    /// [`Self::delete`] once the target was asked where the object is
    /// (`found`: carrying absync's anchor).
    pub(super) async fn delete_located(
        &mut self,
        snapshot: &Snapshot,
        before: ObjectRow,
        reason: &str,
        counts: &mut Counts,
        found: Option<(String, Attrs)>,
    ) -> Result<(), ApplyError> {
        let anchor = before.anchor.clone();
        let Some((dn, attrs)) = found else {
            return self.forget_absent(snapshot, &before, "delete", reason);
        };
        let current = ObjectRow {
            dn: dn.clone(),
            attrs: attrs.clone(),
            ..before.clone()
        };
        snapshot.record_intent(&self.intent(&anchor, "delete", Some(&current), None, reason))?;
        match self.delete_at(&dn).await {
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
}
