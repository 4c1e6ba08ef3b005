//! A full run's first step: the live target compared with the snapshot.
//! Replication-conflict twins (two objects carrying one anchor) go first:
//! one is kept (see `apply::twins`). Each difference (missing, changed or
//! unknown to the snapshot) is laid over the planner so the diff repairs
//! it; a real run journals it as drift and corrects the snapshot first,
//! and records each object's objectGUID.

use crate::engine::apply::{keeper, Applier, Owned};
use crate::engine::diff::{attr_changes, same_dn, Planner};
use crate::engine::outcome::RunError;
use crate::state::journal::Record;
use crate::state::runs::Counts;
use crate::state::{ObjectRow, Snapshot};

/// Compares the snapshot with the live target (full runs) and lays the
/// differences over the planner, so the diff repairs them. In a real run
/// each difference is journaled as drift and the snapshot corrected.
pub(crate) async fn run(
    applier: &mut Applier<'_, '_>,
    planner: &mut Planner<'_>,
    snapshot: &Snapshot,
    live_run: bool,
    counts: &mut Counts,
) -> Result<(), RunError> {
    let Owned {
        objects: mut live,
        twins,
    } = applier.scan_owned().await?;
    let guids = snapshot.guids()?;
    for (anchor, mut objects) in twins {
        let row = snapshot.get(&anchor)?;
        let k = keeper(
            guids.get(&anchor).map(String::as_str),
            row.as_ref().map(|r| r.dn.as_str()),
            &objects,
        );
        let kept = objects.remove(k);
        for twin in &objects {
            applier
                .remove_twin(snapshot, &anchor, twin, &kept, counts)
                .await?;
        }
        live.insert(anchor, kept);
    }
    // The objectGUIDs read, for the next run's twins.
    let learnt: Vec<(String, String)> = live
        .iter()
        .filter_map(|(a, l)| {
            let g = l.guid.as_ref().filter(|g| guids.get(a) != Some(*g))?;
            Some((a.clone(), g.clone()))
        })
        .collect();
    let mut drift: Vec<(String, Option<ObjectRow>, Record)> = Vec::new();
    let record = |anchor: &str, reason: &str, dn: &str| {
        let mut r = Record::new(applier.run_id(), "drift", "detected", reason);
        r.anchor = Some(anchor.to_string());
        r.dn = Some(dn.to_string());
        r
    };
    snapshot.for_each(|row| {
        match live.remove(&row.anchor) {
            None => {
                let r = record(&row.anchor, "missing from target", &row.dn);
                drift.push((row.anchor.clone(), None, r));
            }
            Some(l) => {
                let changes = attr_changes(&row.attrs, &l.attrs);
                if !changes.is_empty() || !same_dn(&row.dn, &l.dn) {
                    let mut r = record(&row.anchor, "changed in target", &l.dn);
                    r.old_dn = (!same_dn(&row.dn, &l.dn)).then(|| row.dn.clone());
                    r.changes = changes;
                    r.agreements = row.agreements.clone();
                    let fixed = ObjectRow {
                        dn: l.dn,
                        attrs: l.attrs,
                        ..row
                    };
                    drift.push((fixed.anchor.clone(), Some(fixed), r));
                }
            }
        }
        Ok(())
    })?;
    for (anchor, l) in live {
        let r = record(&anchor, "not in the snapshot (re-adopted)", &l.dn);
        let row = ObjectRow {
            anchor: anchor.clone(),
            dn: l.dn,
            attrs: l.attrs,
            ..Default::default()
        };
        drift.push((anchor, Some(row), r));
    }
    for (anchor, row, r) in drift {
        counts.drift += 1;
        tracing::warn!(anchor, what = %r.reason, "drift between snapshot and target");
        if live_run {
            snapshot.commit(&anchor, row.as_ref(), applier.run_id(), &[r])?;
        }
        planner.overlay(&anchor, row);
    }
    if live_run {
        snapshot.set_guids(&learnt)?;
    }
    Ok(())
}
