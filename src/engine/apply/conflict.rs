//! Conflicts as open items: a conflict is journaled when it opens, when
//! what it collides with changes, and when it resolves, never again while
//! it stands (the state's `conflicts` table remembers it). It is still
//! retried every run: its anchor is read again, and its write withheld
//! again, cheaply, until the conflict is gone.
//!
//! **Invariant:** a conflict is resolved only by a run that read its
//! person (every person in a full run; in a delta, those it read, and
//! those it found gone) and did not meet it again.

use std::collections::HashSet;

use crate::state::conflicts::{Collision, Met, Resolution};
use crate::state::journal::Record;
use crate::state::{Snapshot, StateError};

use super::Applier;

impl Applier<'_, '_> {
    /// A conflict met: `r` is its record (with the DN absync would write,
    /// the other object in `old_dn`, or none when it holds that name, and
    /// what collides in `error`). Journaled only when it opens or changes.
    pub(super) fn conflict(
        &mut self,
        snapshot: &Snapshot,
        r: Record,
        kind: &str,
    ) -> Result<(), StateError> {
        let anchor = r.anchor.clone().unwrap_or_default();
        let c = Collision {
            kind: kind.to_string(),
            with: r
                .old_dn
                .clone()
                .or_else(|| r.dn.clone())
                .unwrap_or_default(),
            what: r.error.clone().unwrap_or_default(),
        };
        let met = snapshot.meet_conflict(r, &c)?;
        if met == Met::Standing {
            tracing::debug!(anchor, with = %c.with, "conflict still stands");
        }
        self.met.insert(anchor);
        Ok(())
    }

    /// Resolves the open conflicts of people this run read (`read`) and
    /// did not meet in conflict again: journaled, and the row removed.
    /// Returns how many.
    pub fn settle_conflicts(
        &mut self,
        snapshot: &Snapshot,
        read: impl Fn(&str) -> bool,
    ) -> Result<u64, StateError> {
        let met: &HashSet<String> = &self.met;
        let mut n = 0;
        for open in snapshot.open_conflicts()? {
            if met.contains(&open.anchor) || !read(&open.anchor) {
                continue;
            }
            let written = snapshot.written_in(&open.anchor, self.run_id)?;
            let how = match written {
                Some(_) => Resolution::Written,
                None => Resolution::Cleared,
            };
            tracing::info!(anchor = %open.anchor, with = %open.collision.with,
                since = %open.opened_at, "conflict resolved");
            snapshot.resolve_conflict(&open, self.run_id, written.as_deref(), how)?;
            n += 1;
        }
        Ok(n)
    }
}
