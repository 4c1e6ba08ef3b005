//! The delete phase, after a complete pull: what the run did not see is
//! hidden (grace period) or deleted, through the source-health guard, the
//! deletion threshold and `--allow-deletes`.
//!
//! In three steps around the pure [`decide`]: gather the [`Facts`] (state
//! reads), ask the source why unseen objects are gone ([`ask_source`]),
//! then [`carry_out`] the decision (writes, journal).

mod decide;

pub(crate) use decide::grace_over;
pub use decide::{
    decide, holds_deletes, Decided, Facts, Found, Rules, Stop, HELD_SOURCE_UNHEALTHY,
    STOPPED_AT_THRESHOLD,
};

use std::collections::HashMap;

use crate::engine::apply::Applier;
use crate::engine::cx::{RunCx, SOME_DELETES};
use crate::engine::diff::{Change, Kind, Planner};
use crate::engine::outcome::RunError;
use crate::engine::pull::query;
use crate::engine::pull::SourceRead;
use crate::engine::scope::Scope;
use crate::ldap::Conn;
use crate::state::journal::Record;
use crate::state::runs::Counts;
use crate::state::{ObjectRow, StateError};

/// Managed objects the run did not see, with the reason known so far.
pub(crate) type Unseen = Vec<(ObjectRow, Option<String>)>;

impl Facts {
    /// What the pull and the state say, for [`decide`].
    pub(crate) fn gather(
        cx: &RunCx<'_>,
        planner: &Planner<'_>,
        scope: &Scope,
        read: &SourceRead,
        unseen: &Unseen,
        (managed_at_start, hidden_at_start): (u64, u64),
        pulled: u64,
    ) -> Result<Facts, StateError> {
        let judge_health = read.gone.is_none();
        let mut facts = Facts {
            judge_health,
            agreements_in_force: read.filter.is_some(),
            pulled_total: pulled + planner.present_count(),
            pulled_per_org: planner.pulled_per_org.clone(),
            granted: scope.grants.keys().cloned().collect(),
            emptied: Default::default(),
            managed_at_start,
            hidden_at_start,
            closed: cx.inputs.agreements.closed.clone(),
        };
        if judge_health {
            return Ok(facts);
        }
        // A delta that would take every object of an organisation at once
        // is held like an organisation returning nothing.
        let mut leaving: HashMap<&str, u64> = HashMap::new();
        for (row, _) in unseen.iter().filter(|(r, _)| r.hidden.is_none()) {
            *leaving.entry(row.org.as_str()).or_default() += 1;
        }
        for (org, n) in leaving {
            if facts.granted.contains(org)
                && facts.pulled_per_org.get(org).copied().unwrap_or(0) == 0
                && cx.snapshot.visible_in_org(org)? == n
            {
                facts.emptied.insert(org.to_string());
            }
        }
        Ok(facts)
    }
}

/// Asks the source about the visible objects whose reason is not known yet:
/// a leaver, moved to another organisation, or gone. Without the answers
/// the read is incomplete, and nothing is deleted.
pub(crate) async fn ask_source(
    cx: &RunCx<'_>,
    source: &mut Conn,
    unseen: &Unseen,
    pulled: u64,
) -> Result<Found, RunError> {
    let ask: Vec<String> = unseen
        .iter()
        .filter(|(row, r)| r.is_none() && row.hidden.is_none())
        .map(|(row, _)| row.anchor.clone())
        .collect();
    Ok(query::lookup(source, &cx.cfg.source, &ask)
        .await
        .map_err(|e| RunError::incomplete(pulled, e))?
        .into_iter()
        .map(|(a, org, leaver)| (a, (org, leaver)))
        .collect())
}

/// Applies the released hides and deletes (a stop point before each),
/// journals the override and the rail that held deletes back, and shows the
/// held ones in a plan. Returns the run's status when deletes were held.
pub(crate) async fn carry_out(
    cx: &RunCx<'_>,
    applier: &mut Applier<'_, '_>,
    decided: Decided,
    counts: &mut Counts,
) -> Result<Option<String>, RunError> {
    for w in &decided.warnings {
        tracing::warn!("{w}");
    }
    let released = decided.release.len();
    for change in decided.release {
        if cx.opts.cancelled() {
            // A stop comes after the writes in flight are committed.
            applier.quiesce(cx.snapshot, counts).await?;
        }
        cx.opts.stop_point(counts, SOME_DELETES)?;
        applier.apply(cx.snapshot, change, counts).await?;
    }
    // The hides and deletes still queued for their ownership search.
    applier.flush(cx.snapshot, counts).await?;
    counts.withheld = decided.held.len() as u64;
    let mut notes = Vec::new();
    if let Some(limit) = cx.opts.allow_deletes {
        // A resync's override is the requester's, not the daemon's user's.
        let who = cx
            .opts
            .requested_by
            .clone()
            .unwrap_or_else(crate::os::Who::me);
        let mut r = Record::new(
            cx.run_id,
            "override",
            "applied",
            &format!("--allow-deletes {limit} by {who}"),
        );
        r.detail = Some(who.detail());
        r.error = Some(format!(
            "{released} deletes released, {} still held",
            decided.held.len()
        ));
        notes.push(r);
    }
    if let Some(stop) = &decided.stop {
        tracing::error!("{}", stop.message);
        let mut r = Record::new(cx.run_id, stop.op, "withheld", stop.status);
        r.error = Some(stop.message.clone());
        notes.push(r);
    }
    if cx.live {
        cx.snapshot.journal(&notes)?;
    }
    for (change, why) in decided.held {
        // Plans show what is held back; a real run writes nothing for it.
        let withheld = Change {
            anchor: change.anchor.clone(),
            reason: change.reason.clone(),
            kind: Kind::Withheld {
                change: Box::new(change),
                why,
            },
        };
        applier.apply(cx.snapshot, withheld, counts).await?;
    }
    Ok(decided.stop.map(|s| s.status.to_string()))
}
