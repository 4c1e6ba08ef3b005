//! The ownership check of a window of writes: updates, hides and deletes
//! wait in `Applier::queued` (up to [`CHECK_WINDOW`]), the target is asked
//! where all their objects are in one search (`locate_many`), then each is
//! written in order, as if it had been located on its own.
//!
//! **Invariant:** as before each single write, nothing is written to an
//! object the target did not show carrying absync's anchor byte for byte,
//! inside the containers, in a read made after the previous run's writes
//! and before this write; each intent is still committed before its write.
//! One anchor is never twice in a window, so no write of the window moves
//! another's object between the search and its write. (AD offers no
//! assertion control to fold the check into the write: Samba 4.17 does not
//! list RFC 4528's 1.3.6.1.1.12 among its controls, answers a critical one
//! with unavailableCriticalExtension and ignores a non-critical one.)
//!
//! [`CHECK_WINDOW`]: super::CHECK_WINDOW

use crate::engine::diff::{Change, Kind};
use crate::state::runs::Counts;
use crate::state::Snapshot;

use super::update::needs_write;
use super::{Applier, ApplyError};

impl Applier<'_, '_> {
    /// Takes an update, hide or delete into the queue (a real run only);
    /// any other change, or one whose anchor is already queued, comes back.
    pub(super) fn enqueue(&mut self, change: Change) -> Option<Change> {
        let queues = matches!(
            change.kind,
            Kind::Update { .. } | Kind::Hide { .. } | Kind::Delete { .. }
        );
        if !queues || self.plan.is_some() || self.queued.iter().any(|c| c.anchor == change.anchor) {
            return Some(change);
        }
        self.queued.push(change);
        None
    }

    /// Finds the objects of the queued writes in one search, then writes
    /// each in order.
    pub(super) async fn run_queued(
        &mut self,
        snapshot: &Snapshot,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let queued = std::mem::take(&mut self.queued);
        let wanted: Vec<(String, String)> = queued
            .iter()
            .filter_map(|c| match &c.kind {
                Kind::Update { before, after } if !needs_write(before, after) => None,
                Kind::Update { before, .. }
                | Kind::Hide { before, .. }
                | Kind::Delete { before } => Some((c.anchor.clone(), before.dn.clone())),
                _ => None,
            })
            .collect();
        let mut found = self.locate_many(&wanted).await?;
        for change in queued {
            let at = found.remove(&change.anchor).flatten();
            let reason = change.reason;
            match change.kind {
                Kind::Update { before, after } if !needs_write(&before, &after) => {
                    self.update(snapshot, before, after, &reason, counts)
                        .await?
                }
                Kind::Update { before, after } => {
                    self.update_located(snapshot, before, after, &reason, counts, at)
                        .await?
                }
                Kind::Hide { before, after } => {
                    self.hide_located(snapshot, before, after, &reason, counts, at)
                        .await?
                }
                Kind::Delete { before } => {
                    self.delete_located(snapshot, before, &reason, counts, at)
                        .await?
                }
                // Only the kinds above are queued (`enqueue`).
                _ => {}
            }
        }
        Ok(())
    }
}
