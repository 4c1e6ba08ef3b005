//! The window of updates, hides and deletes: they wait in
//! `Applier::queued` (up to [`CHECK_WINDOW`]), the target is asked where
//! all their objects are in one search (`locate_many`), and the modifies
//! in place, the renames (each with its modify) and the deletes among them
//! are then sent together, pipelined on the connection, while the server
//! still works on the window before (`advance_queued`, `send_window`).
//! Hides, restores, re-adds and a rename to a name a write of the window
//! holds until it is answered go one at a time, as if each had been
//! located on its own, after every write sent before them is answered.
//!
//! **Invariant:** as before each single write, nothing is written to an
//! object the target did not show carrying absync's anchor byte for byte,
//! inside the containers, in a read made after the previous run's writes
//! and before this write; the intents of a window's writes are committed
//! (one transaction) before any of them is sent, and what the target
//! accepted is handed to the commit thread after its answer (one
//! transaction for the lot), so a crash anywhere leaves intents
//! [`Applier::recover`] settles. One anchor is never twice in the windows
//! queued and in flight, so no write of a window moves another's object
//! between the search and its write. The pipelined writes never race each
//! other for a name: a modify keeps its name, a delete frees one, and a
//! rename takes a name no write in flight holds; a rename's modify is sent
//! only once the rename is accepted, so it never reaches an object that
//! holds the name a refused rename wanted. Two windows are in flight at
//! most: when a third is ready, the answers to the oldest are read, the new
//! window's intents committed, and what the target accepted of the oldest
//! handed over. (AD offers no assertion control to fold the check into the
//! write: Samba 4.17 does not list RFC 4528's 1.3.6.1.1.12 among its
//! controls, answers a critical one with unavailableCriticalExtension and
//! ignores a non-critical one.)
//!
//! [`CHECK_WINDOW`]: super::CHECK_WINDOW

use crate::engine::diff::{attr_changes, same_dn, Change, Kind};
use crate::ldap::{Sent, SentAfter};
use crate::state::journal::Record;
use crate::state::runs::Counts;
use crate::state::{Attrs, Intent, Landed, ObjectRow, Snapshot};

use super::update::needs_write;
use super::{Applier, ApplyError, Refused, WriteError};

/// A write of the window that can be pipelined: one request, on an object
/// found where it was expected.
pub(super) enum Ready {
    /// A modify in place: the object as found, and as it is to be.
    Modify { before: ObjectRow, after: ObjectRow },
    /// A delete of the object as found.
    Delete { before: ObjectRow },
    /// A rename (or move) of the object as found, not hidden, to
    /// `after.dn`, then the modify of its changed attributes there.
    Rename { before: ObjectRow, after: ObjectRow },
}

/// A write the target accepted: the anchor, its row (none once deleted)
/// and its journal records.
type Written = (String, Option<ObjectRow>, Vec<Record>);

/// A write the target refused (or absync refused unsent), and why.
type WriteRefused = (Ready, String, WriteError);

/// A [`Ready`] write whose intent is committed and whose request is sent
/// (or refused unsent), its answer not yet read.
pub(super) struct Write {
    ready: Ready,
    reason: String,
    sent: Result<Sent, WriteError>,
    /// A rename's modify, sent once the rename is accepted.
    then: Option<SentAfter>,
}

impl Ready {
    fn anchor(&self) -> &str {
        match self {
            Ready::Modify { after, .. } | Ready::Rename { after, .. } => &after.anchor,
            Ready::Delete { before } => &before.anchor,
        }
    }

    /// The name the object holds until this write is answered.
    fn holds(&self) -> &str {
        match self {
            Ready::Modify { before, .. }
            | Ready::Delete { before }
            | Ready::Rename { before, .. } => &before.dn,
        }
    }
}

impl Applier<'_, '_> {
    /// Takes an update, hide or delete into the queue (a real run only);
    /// any other change, or one whose anchor is already queued or in
    /// flight, comes back (and goes once everything before it landed).
    pub(super) fn enqueue(&mut self, change: Change) -> Option<Change> {
        let queues = matches!(
            change.kind,
            Kind::Update { .. } | Kind::Hide { .. } | Kind::Delete { .. }
        );
        let in_flight = self
            .writes
            .iter()
            .flatten()
            .any(|w| w.ready.anchor() == change.anchor);
        if !queues
            || self.plan.is_some()
            || in_flight
            || self.queued.iter().any(|c| c.anchor == change.anchor)
        {
            return Some(change);
        }
        self.queued.push(change);
        None
    }

    /// Ends the window: the queued writes are sent and every write in
    /// flight is answered and committed.
    pub(super) async fn run_queued(
        &mut self,
        snapshot: &Snapshot,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        self.advance_queued(snapshot, counts).await?;
        self.land_writes(snapshot, counts).await
    }

    /// One step of the window: the queued writes' objects are found in
    /// one search and the pipelined ones sent; only then are the answers
    /// to the writes sent before them read and committed.
    pub(super) async fn advance_queued(
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
        let mut ready = Vec::new();
        for change in queued {
            let at = found.remove(&change.anchor).flatten();
            if let Some(r) = self.ready(snapshot, change, at, &mut ready, counts).await? {
                ready.push(r);
            }
        }
        self.send_window(snapshot, ready, counts).await
    }

    /// Sends the writes of a window: once two windows are in flight (`due`),
    /// the answers to the oldest are read first; the new window's intents
    /// are committed before any of it is sent, and what the target
    /// accepted of the oldest is handed to the commit thread.
    async fn send_window(
        &mut self,
        snapshot: &Snapshot,
        ready: Vec<(Ready, String)>,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let oldest = super::due(&mut self.writes);
        let (accepted, refused) = self.write_answers(oldest, counts).await;
        if refused.iter().any(|(_, _, e)| !e.is_entry_level()) {
            // The connection failed: nothing more is sent.
            self.commit_written(snapshot, accepted, &[])?;
            return self.refused_writes(snapshot, refused, counts);
        }
        let intents = self.write_intents(&ready);
        self.commit_written(snapshot, accepted, &intents)?;
        let window = self.send_writes(ready);
        if !window.is_empty() {
            self.writes.push_back(window);
        }
        self.refused_writes(snapshot, refused, counts)
    }

    /// A queued change, its object found at `at`: a write that can go with
    /// the window's, or none once it was carried out here on its own
    /// (after `earlier`, and every write in flight, so order is kept).
    async fn ready(
        &mut self,
        snapshot: &Snapshot,
        change: Change,
        at: Option<(String, Attrs)>,
        earlier: &mut Vec<(Ready, String)>,
        counts: &mut Counts,
    ) -> Result<Option<(Ready, String)>, ApplyError> {
        let reason = change.reason;
        match (change.kind, at) {
            (Kind::Update { before, after }, _) if !needs_write(&before, &after) => {
                self.update(snapshot, before, after, &reason, counts)
                    .await?;
            }
            (Kind::Update { before, after }, Some((dn, attrs))) if same_dn(&dn, &after.dn) => {
                let before = ObjectRow {
                    dn,
                    attrs,
                    ..before
                };
                let modifies = !self.update_mods(&before, &after).is_empty();
                if modifies && !self.withheld(snapshot, &before, &after, counts).await? {
                    return Ok(Some((Ready::Modify { before, after }, reason)));
                }
                if !modifies {
                    self.drain(snapshot, earlier, counts).await?;
                    let at = Some((before.dn.clone(), before.attrs.clone()));
                    self.update_located(snapshot, before, after, &reason, counts, at)
                        .await?;
                }
            }
            (Kind::Delete { before }, Some((dn, attrs))) => {
                let before = ObjectRow {
                    dn,
                    attrs,
                    ..before
                };
                return Ok(Some((Ready::Delete { before }, reason)));
            }
            (Kind::Delete { before }, None) => {
                self.forget_absent(snapshot, &before, "delete", &reason)?;
            }
            (Kind::Update { before, after }, Some((dn, attrs)))
                if before.hidden.is_none() && !self.held_in_window(&after.dn, earlier) =>
            {
                let before = ObjectRow {
                    dn,
                    attrs,
                    ..before
                };
                if !self.withheld(snapshot, &before, &after, counts).await? {
                    return Ok(Some((Ready::Rename { before, after }, reason)));
                }
            }
            (Kind::Update { before, after }, at) => {
                self.drain(snapshot, earlier, counts).await?;
                self.update_located(snapshot, before, after, &reason, counts, at)
                    .await?;
            }
            (Kind::Hide { before, after }, at) => {
                self.drain(snapshot, earlier, counts).await?;
                self.hide_located(snapshot, before, after, &reason, counts, at)
                    .await?;
            }
            // Only the kinds above are queued (`enqueue`).
            _ => {}
        }
        Ok(None)
    }

    /// Whether a write gathered for the window (`earlier`) or in flight
    /// holds the name `dn` until it is answered: a rename to it waits for
    /// them (in a window, it could reach the server first and be refused).
    fn held_in_window(&self, dn: &str, earlier: &[(Ready, String)]) -> bool {
        let holds = |r: &Ready| same_dn(r.holds(), dn);
        earlier.iter().any(|(r, _)| holds(r))
            || self.writes.iter().flatten().any(|w| holds(&w.ready))
    }

    /// Sends the writes gathered so far and waits for every write in
    /// flight, before a write that must come after them.
    async fn drain(
        &mut self,
        snapshot: &Snapshot,
        earlier: &mut Vec<(Ready, String)>,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        self.send_window(snapshot, std::mem::take(earlier), counts)
            .await?;
        self.land_writes(snapshot, counts).await
    }

    /// What is committed before each write of `ready` is sent.
    fn write_intents(&self, ready: &[(Ready, String)]) -> Vec<Intent> {
        ready
            .iter()
            .map(|(r, reason)| match r {
                Ready::Modify { before, after } | Ready::Rename { before, after } => {
                    self.intent(&after.anchor, "update", Some(before), Some(after), reason)
                }
                Ready::Delete { before } => {
                    self.intent(&before.anchor, "delete", Some(before), None, reason)
                }
            })
            .collect()
    }

    /// Sends each write of `ready` (or refuses it unsent when its DN is
    /// outside the containers), its intent already committed.
    fn send_writes(&self, ready: Vec<(Ready, String)>) -> Vec<Write> {
        ready
            .into_iter()
            .map(|(ready, reason)| {
                let (sent, then) = match &ready {
                    Ready::Modify { before, after } => {
                        let mods = self.update_mods(before, after);
                        (self.modify_inside(before.dn.clone(), mods), None)
                    }
                    Ready::Delete { before } => (self.delete_inside(before.dn.clone()), None),
                    Ready::Rename { before, after } => {
                        let mods = self.update_mods(before, after);
                        match self.rename_inside(before.dn.clone(), after.dn.clone(), mods) {
                            Ok((sent, then)) => (Ok(sent), then),
                            Err(e) => (Err(e), None),
                        }
                    }
                };
                Write {
                    ready,
                    reason,
                    sent,
                    then,
                }
            })
            .collect()
    }

    /// Reads and commits the answers to every window in flight, oldest
    /// first.
    pub(super) async fn land_writes(
        &mut self,
        snapshot: &Snapshot,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        while let Some(window) = self.writes.pop_front() {
            let (accepted, refused) = self.write_answers(window, counts).await;
            self.commit_written(snapshot, accepted, &[])?;
            self.refused_writes(snapshot, refused, counts)?;
        }
        Ok(())
    }

    /// The answers to a window's writes, in order: what the snapshot and
    /// the journal record of each the target accepted, and the refusals.
    async fn write_answers(
        &mut self,
        writes: Vec<Write>,
        counts: &mut Counts,
    ) -> (Vec<Written>, Vec<WriteRefused>) {
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for Write {
            ready,
            reason,
            sent,
            then,
        } in writes
        {
            if let Err(e) = self.outcome(sent).await {
                refused.push((ready, reason, e));
                continue;
            }
            match (ready, then) {
                (Ready::Rename { before, after }, Some(modify)) => {
                    match self.outcome(Ok(modify.into_sent())).await {
                        Ok(()) => {
                            let ready = Ready::Rename { before, after };
                            accepted.push(self.accepted(ready, &reason, counts));
                        }
                        Err(e) => {
                            // The rename is kept; the modify is refused.
                            let (kept, moved) = self.renamed_only(before, &after, &reason, counts);
                            accepted.push(kept);
                            refused.push((
                                Ready::Modify {
                                    before: moved,
                                    after,
                                },
                                reason,
                                e,
                            ));
                        }
                    }
                }
                (ready, _) => accepted.push(self.accepted(ready, &reason, counts)),
            }
        }
        (accepted, refused)
    }

    /// A rename the target took whose modify it refused: what the snapshot
    /// and the journal record of the rename, and the object as it now is.
    fn renamed_only(
        &self,
        before: ObjectRow,
        after: &ObjectRow,
        reason: &str,
        counts: &mut Counts,
    ) -> (Written, ObjectRow) {
        let records = vec![self.renamed(&before, after, reason, counts)];
        let moved = ObjectRow {
            dn: after.dn.clone(),
            ..before
        };
        ((moved.anchor.clone(), Some(moved.clone()), records), moved)
    }

    /// Commits the intents of the next window, then hands the writes the
    /// target accepted to the commit thread.
    fn commit_written(
        &self,
        snapshot: &Snapshot,
        accepted: Vec<Written>,
        intents: &[Intent],
    ) -> Result<(), ApplyError> {
        let landed = accepted
            .into_iter()
            .map(|(anchor, after, records)| Landed {
                anchor,
                after,
                records,
            })
            .collect();
        snapshot.hand_over_and_intend(landed, self.run_id, intents)?;
        Ok(())
    }

    /// Handles each refused write in turn (see [`Self::write_refused`]).
    fn refused_writes(
        &mut self,
        snapshot: &Snapshot,
        refused: Vec<WriteRefused>,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        for (ready, reason, e) in refused {
            self.write_refused(snapshot, ready, &reason, e, counts)?;
        }
        Ok(())
    }

    /// What the snapshot and the journal record of a write the target
    /// took: the object's row (none once deleted) and the records.
    fn accepted(&self, ready: Ready, reason: &str, counts: &mut Counts) -> Written {
        let (before, after, renamed) = match ready {
            Ready::Modify { before, after } => (before, after, false),
            Ready::Rename { before, after } => (before, after, true),
            Ready::Delete { before } => {
                let mut r = self.record(&before.anchor, "delete", "applied", reason);
                r.dn = Some(before.dn.clone());
                r.agreements = before.agreements.clone();
                r.changes = attr_changes(&before.attrs, &Attrs::new());
                counts.deleted += 1;
                return (before.anchor, None, vec![r]);
            }
        };
        let mut records = Vec::new();
        if renamed {
            records.push(self.renamed(&before, &after, reason, counts));
        }
        let dn = if renamed { &after.dn } else { &before.dn }.clone();
        records.extend(self.modified(&before, &after, &dn, reason, counts));
        let now = ObjectRow {
            dn,
            attrs: after.attrs,
            org: after.org,
            agreements: after.agreements,
            hidden: None,
            ..before
        };
        (now.anchor.clone(), Some(now), records)
    }

    /// A write of the window the target refused: journaled and retried
    /// next run when the entry was refused; a failure of the connection
    /// ends the run.
    fn write_refused(
        &mut self,
        snapshot: &Snapshot,
        ready: Ready,
        reason: &str,
        e: WriteError,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        if !e.is_entry_level() {
            return Err(e.into());
        }
        let anchor = ready.anchor().to_string();
        match &ready {
            Ready::Modify { before, after } => {
                // The snapshot learns what the target holds, as for a
                // single modify refused.
                snapshot.commit(&anchor, Some(before), self.run_id, &[])?;
                let refused = Refused {
                    anchor: &anchor,
                    op: "modify",
                    dn: &before.dn,
                    old_dn: None,
                    reason,
                    agreements: &after.agreements,
                    changes: attr_changes(&before.attrs, &after.attrs),
                };
                self.failed(snapshot, refused, &e, counts)
            }
            Ready::Rename { before, after } => {
                let refused = Refused {
                    anchor: &anchor,
                    op: "rename",
                    dn: &after.dn,
                    old_dn: Some(&before.dn),
                    reason,
                    agreements: &after.agreements,
                    changes: Default::default(),
                };
                self.failed(snapshot, refused, &e, counts)
            }
            Ready::Delete { before } => {
                let refused = Refused {
                    anchor: &anchor,
                    op: "delete",
                    dn: &before.dn,
                    old_dn: None,
                    reason,
                    agreements: &before.agreements,
                    changes: attr_changes(&before.attrs, &Attrs::new()),
                };
                self.failed(snapshot, refused, &e, counts)
            }
        }
    }
}
