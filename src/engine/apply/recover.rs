//! Crash recovery: the intents an interrupted run left are settled against
//! what the target really holds, before anything else is planned.
//!
//! **Invariant:** a kill -9 at any point converges on the next run: each
//! intent ends with the snapshot matching the target and the journal
//! holding the changes that landed, none lost and none twice.

use crate::engine::diff::{attr_changes, same_dn};
use crate::state::runs::Counts;
use crate::state::{Attrs, ObjectRow, Snapshot};

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
