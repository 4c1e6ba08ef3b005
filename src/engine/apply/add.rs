//! The add window: new objects go to the target [`ADD_WINDOW`] at a time,
//! pipelined on one connection, and a name already taken is either
//! adopted (ours, left by a crash) or journaled as a conflict. The window
//! does not drain between groups: two groups are in flight, and when the
//! next is planned the answers to the older are read, the next group's
//! intents committed, the next group sent, and what the target accepted of
//! the older handed to the commit thread (`advance_adds`): the server
//! always has adds to work on while absync reads and plans, and the
//! commits run on the other core.
//!
//! **Invariant:** the intents of a whole group are committed before any
//! of its adds is sent, and what the target accepted is committed together
//! (one transaction, on the commit thread) after its answers arrived; an
//! add refused for a name absync does not own never touches that object.
//! A search on the connection (the next group's address check) is answered
//! only after the adds before it, so it also marks when they are done.
//!
//! [`ADD_WINDOW`]: super::ADD_WINDOW

use std::collections::{BTreeSet, HashSet};

use crate::engine::diff::attr_changes;
use crate::state::journal::Record;
use crate::state::runs::Counts;
use crate::state::{Attrs, Intent, Landed, ObjectRow, Snapshot};

use super::collide::{addresses, first_collision};
use super::{set, Applier, ApplyError, Refused, WriteError};

/// An add the target accepted, with its journal record.
type Added = (ObjectRow, Vec<Record>);

/// An add the target refused (or absync refused unsent), and why.
type AddRefused = (ObjectRow, String, WriteError);

/// An add of the window: sent, its answer not yet read, or refused before
/// it was sent.
pub(super) struct Flight {
    after: ObjectRow,
    reason: String,
    sent: Result<crate::ldap::Sent, WriteError>,
}

impl Applier<'_, '_> {
    /// The attributes an add sends for `after`.
    fn add_attrs(&self, after: &ObjectRow) -> Vec<(String, HashSet<String>)> {
        crate::engine::diff::add_attributes(self.mapping, self.target, after)
            .into_iter()
            .map(|(k, v)| (k, set(&v)))
            .collect()
    }

    /// Adds one object, now (not through the window).
    pub(super) async fn add(
        &mut self,
        snapshot: &Snapshot,
        after: ObjectRow,
        reason: &str,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        self.add_batch(snapshot, vec![(after, reason.to_string())], counts)
            .await
    }

    /// Adds several objects now: [`Self::launch`], then [`Self::land`].
    pub(super) async fn add_batch(
        &mut self,
        snapshot: &Snapshot,
        adds: Vec<(ObjectRow, String)>,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let flights = self.launch(snapshot, adds, counts).await?;
        self.land(snapshot, flights, counts).await
    }

    /// One step of the continuous add window: the answers to the oldest
    /// group in flight (once two groups are, `due`) are read, what the
    /// target accepted of it handed to the commit thread, the intents of
    /// the adds waiting (`pending`) committed, and those adds sent. The
    /// server always has a group to work on while absync reads, commits
    /// and plans.
    pub(super) async fn advance_adds(
        &mut self,
        snapshot: &Snapshot,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let adds = std::mem::take(&mut self.pending);
        let adds = self.withhold_collisions(snapshot, adds, counts).await?;
        let oldest = super::due(&mut self.in_flight);
        let (accepted, refused) = self.answers(oldest).await;
        if refused.iter().any(|(_, _, e)| !e.is_entry_level()) {
            // The connection failed: nothing more is sent.
            self.commit_added(snapshot, accepted, &[], counts)?;
            return self.refused_adds(snapshot, refused, counts).await;
        }
        let intents = self.add_intents(&adds);
        self.commit_added(snapshot, accepted, &intents, counts)?;
        let group = self.send_group(adds);
        if !group.is_empty() {
            self.in_flight.push_back(group);
        }
        self.refused_adds(snapshot, refused, counts).await
    }

    /// Ends the add window: what waits is sent, and every answer read
    /// and committed.
    pub(super) async fn settle_adds(
        &mut self,
        snapshot: &Snapshot,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        if !self.pending.is_empty() {
            self.advance_adds(snapshot, counts).await?;
        }
        self.land_adds(snapshot, counts).await
    }

    /// Reads and commits the answers to every group of adds in flight,
    /// oldest first, sending no more.
    pub(super) async fn land_adds(
        &mut self,
        snapshot: &Snapshot,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        while let Some(group) = self.in_flight.pop_front() {
            self.land(snapshot, group, counts).await?;
        }
        Ok(())
    }

    /// Reads and commits the answers to the adds and the writes in
    /// flight, sending no more, and waits until they are committed
    /// (before a run stops).
    pub async fn quiesce(
        &mut self,
        snapshot: &Snapshot,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        self.land_adds(snapshot, counts).await?;
        self.land_writes(snapshot, counts).await?;
        Ok(snapshot.settle()?)
    }

    /// What is committed before each add of `adds` is sent.
    fn add_intents(&self, adds: &[(ObjectRow, String)]) -> Vec<Intent> {
        adds.iter()
            .map(|(after, reason)| self.intent(&after.anchor, "add", None, Some(after), reason))
            .collect()
    }

    /// Sends each add (or refuses it unsent when its DN is outside the
    /// containers), its intent already committed.
    fn send_group(&self, adds: Vec<(ObjectRow, String)>) -> Vec<Flight> {
        adds.into_iter()
            .map(|(after, reason)| {
                let sent = self.send_inside(after.dn.clone(), self.add_attrs(&after));
                Flight {
                    after,
                    reason,
                    sent,
                }
            })
            .collect()
    }

    /// Sends adds without waiting for their answers: those whose addresses
    /// collide are withheld (one search for all), the intents of the
    /// others committed in one transaction, then each sent.
    async fn launch(
        &mut self,
        snapshot: &Snapshot,
        adds: Vec<(ObjectRow, String)>,
        counts: &mut Counts,
    ) -> Result<Vec<Flight>, ApplyError> {
        let adds = self.withhold_collisions(snapshot, adds, counts).await?;
        if adds.is_empty() {
            return Ok(Vec::new());
        }
        snapshot.record_intents(&self.add_intents(&adds))?;
        Ok(self.send_group(adds))
    }

    /// Reads the answers to launched adds, in order, and commits what the
    /// target accepted (one transaction, on the commit thread). Each
    /// refusal is then handled on its own, as for a single add.
    async fn land(
        &mut self,
        snapshot: &Snapshot,
        flights: Vec<Flight>,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        if flights.is_empty() {
            return Ok(());
        }
        let (accepted, refused) = self.answers(flights).await;
        self.commit_added(snapshot, accepted, &[], counts)?;
        self.refused_adds(snapshot, refused, counts).await
    }

    /// The answers to a group of adds, in order: the objects the target
    /// accepted, with their journal records, and the refusals.
    async fn answers(&mut self, flights: Vec<Flight>) -> (Vec<Added>, Vec<AddRefused>) {
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for Flight {
            after,
            reason,
            sent,
        } in flights
        {
            match self.outcome(sent).await {
                Ok(()) => {
                    let mut r = self.record(&after.anchor, "add", "applied", &reason);
                    r.dn = Some(after.dn.clone());
                    r.agreements = after.agreements.clone();
                    r.changes = attr_changes(&Attrs::new(), &after.attrs);
                    tracing::debug!(anchor = %after.anchor, dn = %after.dn, "added");
                    accepted.push((after, vec![r]));
                }
                Err(e) => refused.push((after, reason, e)),
            }
        }
        (accepted, refused)
    }

    /// Commits the intents of the next group, when there is one, then
    /// hands the adds the target accepted to the commit thread.
    fn commit_added(
        &self,
        snapshot: &Snapshot,
        accepted: Vec<Added>,
        intents: &[Intent],
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        counts.added += accepted.len() as u64;
        let landed = accepted
            .into_iter()
            .map(|(after, records)| Landed {
                anchor: after.anchor.clone(),
                after: Some(after),
                records,
            })
            .collect();
        snapshot.hand_over_and_intend(landed, self.run_id, intents)?;
        Ok(())
    }

    /// Handles each refused add in turn (see [`Self::add_refused`]).
    async fn refused_adds(
        &mut self,
        snapshot: &Snapshot,
        refused: Vec<AddRefused>,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        for (after, reason, e) in refused {
            self.add_refused(snapshot, after, &reason, e, counts)
                .await?;
        }
        Ok(())
    }

    /// The adds whose addresses no object absync does not own holds,
    /// anywhere in the domain (one search for the whole window); the others
    /// are journaled as conflicts naming that object, and not sent.
    async fn withhold_collisions(
        &mut self,
        snapshot: &Snapshot,
        adds: Vec<(ObjectRow, String)>,
        counts: &mut Counts,
    ) -> Result<Vec<(ObjectRow, String)>, ApplyError> {
        let each: Vec<BTreeSet<String>> = adds.iter().map(|(a, _)| addresses(&a.attrs)).collect();
        let all: BTreeSet<String> = each.iter().flatten().cloned().collect();
        let holders = self.holders(&all).await?;
        if holders.is_empty() {
            return Ok(adds);
        }
        let mut free = Vec::with_capacity(adds.len());
        for ((after, reason), addrs) in adds.into_iter().zip(&each) {
            match first_collision(addrs, &holders) {
                Some((addr, other)) => {
                    tracing::warn!(anchor = %after.anchor, dn = %after.dn, with = %other,
                        "add withheld: another object has the address");
                    let r = self.collision_record(&after, &addr, &other, counts);
                    self.conflict(snapshot, r, "address")?;
                }
                None => free.push((after, reason)),
            }
        }
        Ok(free)
    }

    /// An add the target refused: a name already taken (ours, left by a
    /// crash: adopted; someone else's: a conflict), a refusal of this entry
    /// (journaled, retried), or a failure of the connection (ends the run).
    async fn add_refused(
        &mut self,
        snapshot: &Snapshot,
        after: ObjectRow,
        reason: &str,
        e: WriteError,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let anchor = after.anchor.clone();
        match e {
            e if e.result_code() == Some(68) => {
                // Something holds the name. Ours (left by a crash before the
                // snapshot recorded it)? Then adopt it; otherwise a conflict.
                match self.locate(&anchor, Some(&after.dn)).await? {
                    Some((dn, attrs)) => {
                        let before = ObjectRow {
                            dn,
                            attrs,
                            ..after.clone()
                        };
                        counts.recovered += 1;
                        snapshot.clear_intent(&anchor)?;
                        Box::pin(self.update(snapshot, before, after, reason, counts)).await
                    }
                    None => {
                        counts.conflicts += 1;
                        self.retry.push((anchor.clone(), "conflict".into()));
                        let mut r = self.record(&anchor, "conflict", "withheld", "conflict");
                        r.dn = Some(after.dn.clone());
                        r.agreements = after.agreements.clone();
                        r.error = Some(format!(
                            "an object absync does not own already has this name ({e})"
                        ));
                        self.conflict(snapshot, r, "name")?;
                        snapshot.clear_intent(&anchor)?;
                        Ok(())
                    }
                }
            }
            e if e.is_entry_level() => self.failed(
                snapshot,
                Refused {
                    anchor: &anchor,
                    op: "add",
                    dn: &after.dn,
                    old_dn: None,
                    reason,
                    agreements: &after.agreements,
                    changes: attr_changes(&Attrs::new(), &after.attrs),
                },
                &e,
                counts,
            ),
            e => Err(e.into()),
        }
    }
}
