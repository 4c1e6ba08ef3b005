//! Stages 2 to 5 for one source entry at a time: scope, map and diff, then
//! apply (or render, for a plan) at once, so memory holds no copy of the
//! directory.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::engine::apply::Applier;
use crate::engine::cx::{Options, NO_DELETES};
use crate::engine::diff::{Planned, Planner};
use crate::engine::outcome::{PullReport, RunError};
use crate::engine::pull::query::{valid_timestamp, MODIFY_TIMESTAMP};
use crate::engine::scope::Scope;
use crate::ldap::PagedSearch;
use crate::state::runs::Counts;
use crate::state::Snapshot;

/// The stages an entry goes through after the pull, with what they need.
pub(crate) struct Stages<'s, 'a, 'o> {
    pub scope: &'s Scope,
    pub planner: &'s mut Planner<'a>,
    pub applier: &'s mut Applier<'a, 'o>,
    pub snapshot: &'a Snapshot,
    pub counts: &'s mut Counts,
    pub opts: &'s Options,
    /// When set, the newest `modifyTimestamp` read so far (timestamp
    /// deltas); the attribute itself goes no further.
    pub watermark: Option<String>,
}

impl Stages<'_, '_, '_> {
    /// One source entry: scope, map, diff, apply.
    pub async fn take(&mut self, mut raw: ldap3::SearchEntry) -> Result<(), RunError> {
        if let Some(w) = self.watermark.as_mut() {
            let key = raw
                .attrs
                .keys()
                .find(|k| k.eq_ignore_ascii_case(MODIFY_TIMESTAMP))
                .cloned();
            if let Some(stamp) = key
                .and_then(|k| raw.attrs.remove(&k))
                .and_then(|v| v.into_iter().next())
            {
                if valid_timestamp(&stamp) && stamp > *w {
                    *w = stamp;
                }
            }
        }
        self.counts.pulled += 1;
        if let Some(p) = &self.opts.progress {
            p.store(self.counts.pulled, Ordering::Relaxed);
        }
        if self.opts.cancelled() {
            // A stop comes after the adds in flight are committed.
            self.applier.quiesce(self.snapshot, self.counts).await?;
        }
        self.opts.stop_point(self.counts, NO_DELETES)?;
        let verdict = self.scope.judge(raw);
        let change = match self.planner.plan_step(verdict, self.counts)? {
            Planned::Done(change) => change,
            Planned::NeedsTarget(draft) => {
                let unowned = self.applier.scan_unowned().await?;
                self.planner.set_unowned(unowned);
                self.planner.finish(draft, self.counts)
            }
        };
        if let Some(change) = change {
            self.applier
                .apply(self.snapshot, change, self.counts)
                .await?;
        }
        if let Some(w) = &self.opts.watch {
            w.0.entry(self.counts);
        }
        Ok(())
    }

    /// Every entry of a paged search through the stages, then the search's
    /// end: one that ended early is an error, so nothing is deleted on the
    /// strength of a partial read.
    pub async fn take_all(
        &mut self,
        mut search: PagedSearch,
        report: &mut PullReport,
    ) -> Result<(), RunError> {
        loop {
            let waited = Instant::now();
            let next = search.next().await;
            report.source_time += waited.elapsed();
            match next {
                Ok(Some(raw)) => self.take(raw).await?,
                Ok(None) => break,
                Err(e) => return Err(RunError::incomplete(self.counts.pulled, e)),
            }
        }
        search
            .finish()
            .await
            .map_err(|e| RunError::incomplete(self.counts.pulled, e))?;
        Ok(())
    }
}
