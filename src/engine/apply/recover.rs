//! Crash recovery: the intents an interrupted run left are settled against
//! what the target really holds, before anything else is planned.
//!
//! **Invariant:** a kill -9 at any point converges on the next run: each
//! intent ends with the snapshot matching the target and the journal
//! holding the changes that landed, none lost and none twice.

use crate::engine::diff::{attr_changes, same_dn};
use crate::state::journal::Record;
use crate::state::runs::Counts;
use crate::state::{Attrs, Intent, ObjectRow, Snapshot};

use super::{Applier, ApplyError};

impl Applier<'_, '_> {
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
            let (row, records) = self.settle(&intent, found);
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

    /// What an intent comes to, given where the target holds its object
    /// (`found`: DN and managed attributes): the snapshot's row (`None`:
    /// forget it) and the journal records of what landed.
    fn settle(
        &self,
        intent: &Intent,
        found: Option<(String, Attrs)>,
    ) -> (Option<ObjectRow>, Vec<Record>) {
        match (found, intent.before.as_ref(), intent.after.as_ref()) {
            (Some((dn, attrs)), before, Some(after)) => {
                let (row, records) = self.settle_write(intent, &dn, &attrs, before, after);
                (Some(row), records)
            }
            // The delete did not happen: keep the object as it is.
            (Some((dn, attrs)), Some(before), None) => (
                Some(ObjectRow {
                    dn,
                    attrs,
                    ..before.clone()
                }),
                Vec::new(),
            ),
            (None, Some(before), None) => {
                let mut r = self.recovered(intent, "delete", &before.dn, before);
                r.changes = attr_changes(&before.attrs, &Attrs::new());
                (None, vec![r])
            }
            // The add never reached the target, or the object is gone:
            // the snapshot forgets it and the next diff re-creates it.
            (None, _, _) | (Some(_), None, None) => (None, Vec::new()),
        }
    }

    /// An interrupted add, update or hide whose object the target holds at
    /// `dn`: where the object is tells how far the change got.
    fn settle_write(
        &self,
        intent: &Intent,
        dn: &str,
        attrs: &Attrs,
        before: Option<&ObjectRow>,
        after: &ObjectRow,
    ) -> (ObjectRow, Vec<Record>) {
        let reached = same_dn(dn, &after.dn);
        let now = ObjectRow {
            dn: dn.to_string(),
            attrs: attrs.clone(),
            hidden: if reached {
                after.hidden.clone()
            } else {
                before.and_then(|b| b.hidden.clone())
            },
            ..after.clone()
        };
        let mut records = Vec::new();
        match before {
            None => {
                let mut r = self.recovered(intent, "add", dn, after);
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
                    let mut r = self.recovered(intent, op, dn, after);
                    r.old_dn = Some(b.dn.clone());
                    records.push(r);
                }
                let changes = attr_changes(&b.attrs, attrs);
                if !changes.is_empty() {
                    let mut r = self.recovered(intent, "modify", dn, after);
                    r.changes = changes;
                    records.push(r);
                }
            }
        }
        (now, records)
    }

    /// The journal record of a change confirmed after an interrupted run,
    /// in the run that made it.
    fn recovered(&self, intent: &Intent, op: &str, dn: &str, row: &ObjectRow) -> Record {
        let reason = format!("{} (confirmed after an interrupted run)", intent.reason);
        let mut r = self.record(&intent.anchor, op, "applied", &reason);
        r.run_id = intent.run_id;
        r.dn = Some(dn.to_string());
        r.agreements = row.agreements.clone();
        r
    }
}
