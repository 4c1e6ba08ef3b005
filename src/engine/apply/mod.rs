//! Stage 5, apply: executes planned changes against the target over LDAPS as
//! the service account, and records each accepted change in the snapshot
//! and the journal (stage 6) in one transaction: pipelined groups on the
//! commit thread (`state::writer`), which every other write and the end of
//! the stage wait for.
//!
//! **Invariants:** absync writes only to objects inside its OU that carry
//! its anchor (checked on the target before every rename, modify and
//! delete); an intent is committed before each write, so a crash at any
//! point is repaired by [`Applier::recover`] on the next run; one entry's
//! failure is journaled and the run goes on.
//!
//! This file holds the [`Applier`] itself, the dispatch of one change to the
//! file that carries it out, and what every operation shares: the journal
//! record of a refusal, the intent and record builders. The operations:
//! - `target.rs`: what the target holds (reads only);
//! - `add.rs`: adds, pipelined [`ADD_WINDOW`] at a time;
//! - `collide.rs`: addresses another object in the domain already has;
//! - `queue.rs`: updates, hides and deletes, their objects found
//!   [`CHECK_WINDOW`] at a time;
//! - `update.rs`: renames, restores and modifies;
//! - `remove.rs`: hides and deletes;
//! - `recover.rs`: settling the intents a crash left (on the DC they went to);
//! - `twins.rs`: replication-conflict twins, one deleted;
//! - `dry.rs`: the dry run, which renders instead of writing.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::config::{SafetyConfig, TargetConfig};
use crate::engine::diff::{Change, Kind};
use crate::engine::map::Mapping;
use crate::engine::render::Format;
use crate::ldap::{Conn, LdapError};
use crate::state::journal::{AttrChange, Record};
use crate::state::runs::Counts;
use crate::state::{Intent, ObjectRow, SentTo, Snapshot, StateError};

mod add;
mod collide;
mod conflict;
mod dry;
mod guard;
mod queue;
mod recover;
mod remove;
mod target;
mod twins;
mod update;

pub use dry::count_planned;
pub use guard::{check_inside, OutsideOu, WriteError};
pub use target::{Live, Owned};
pub use twins::{is_conflict_name, keeper};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Ldap(#[from] LdapError),
    #[error(transparent)]
    State(#[from] StateError),
    /// A write refused before it was sent (always handled per entry).
    #[error(transparent)]
    Outside(#[from] OutsideOu),
}

/// A change the target refused, for the journal.
struct Refused<'r> {
    anchor: &'r str,
    op: &'r str,
    dn: &'r str,
    /// For a rename or move: the name it had (and keeps).
    old_dn: Option<&'r str>,
    reason: &'r str,
    agreements: &'r [String],
    /// What the refused write would have changed, old and new values.
    changes: BTreeMap<String, AttrChange>,
}

/// Where a plan goes instead of the target (`plan`, `sync --dry-run`).
pub struct PlanOut<'o> {
    pub format: Format,
    /// Only deletes, hides and withheld deletes (`plan --only deletes`).
    pub only_deletes: bool,
    pub out: &'o mut dyn std::io::Write,
}

pub struct Applier<'a, 'o> {
    conn: Conn,
    target: &'a TargetConfig,
    safety: &'a SafetyConfig,
    mapping: &'a Mapping,
    run_id: i64,
    /// Set for a dry run: every read happens as in a real run, every write
    /// is rendered here instead of sent.
    plan: Option<PlanOut<'o>>,
    /// Anchors whose change did not land this run (refused, conflict,
    /// rejected), with why: a delta pull reads them again next run.
    retry: Vec<(String, String)>,
    /// Adds planned but not yet sent: they go to the target together
    /// (pipelined on one connection) when [`ADD_WINDOW`] are waiting, when
    /// another kind of change comes, and at [`Applier::flush`].
    pending: Vec<(ObjectRow, String)>,
    /// Updates, hides and deletes planned but not yet written: the target
    /// is asked where their objects are in one search for the lot (see
    /// `queue.rs`), when [`CHECK_WINDOW`] are waiting, when another kind of
    /// change comes, and at [`Applier::flush`].
    queued: Vec<Change>,
    /// Adds sent whose answers are not yet read (see `add.rs`).
    in_flight: std::collections::VecDeque<Vec<add::Flight>>,
    /// Modifies and deletes sent whose answers are not yet read (see
    /// `queue.rs`).
    writes: std::collections::VecDeque<Vec<queue::Write>>,
    /// The domain naming context the address collision searches run in,
    /// once known.
    domain: Option<String>,
    /// The connection to the global catalog, once a collision search has
    /// needed it (at most one per run).
    gc: Option<Conn>,
    /// Anchors met in conflict this run (see `conflict.rs`).
    met: HashSet<String>,
    /// The target server this run reads and writes through.
    server: SentTo,
    /// Anchors whose earlier change waits for the server it was sent to
    /// (see `recover.rs`), with what they wait for: left alone this run.
    waiting: HashMap<String, String>,
    /// The add window and the check window (see [`windows`]).
    window: (usize, usize),
}

/// How many adds are sent to the target at once (two such groups are in
/// flight). Samba answers a pipelined add as fast as a lone one, so the
/// round trips and absync's own work overlap with the server's; each group
/// also costs one address search of the domain and one commit. Chosen by
/// measurement (BENCHMARKS.md, "Write window"): 64 against 16 loaded 2,910
/// contacts into Samba in 16.0 s against 21.4 s, and cut absync's own cost
/// per add by about a quarter against an endpoint that answers at once.
pub const ADD_WINDOW: usize = 64;

/// How many updates, hides and deletes share one ownership search (and
/// how many modifies and deletes are sent together).
pub const CHECK_WINDOW: usize = 32;

/// How many groups of pipelined writes (of adds, or of modifies and
/// deletes) are in flight at most: the server works on the newer while the
/// answers to the older are read and committed.
const IN_FLIGHT: usize = 2;

/// The oldest group in flight once [`IN_FLIGHT`] groups are, for its
/// answers to be read before the next group is sent; none before.
fn due<T>(in_flight: &mut std::collections::VecDeque<Vec<T>>) -> Vec<T> {
    if in_flight.len() >= IN_FLIGHT {
        in_flight.pop_front().unwrap_or_default()
    } else {
        Vec::new()
    }
}

/// The window sizes in use: [`ADD_WINDOW`] and [`CHECK_WINDOW`], unless a
/// benchmark's sweep sets `ABSYNC_WINDOW=ADDS,CHECKS` (not a setting: the
/// defaults are what the sweep chose).
fn windows() -> (usize, usize) {
    let chosen = std::env::var("ABSYNC_WINDOW").ok().and_then(|v| {
        let (adds, checks) = v.split_once(',')?;
        Some((adds.trim().parse().ok()?, checks.trim().parse().ok()?))
    });
    match chosen {
        Some((adds, checks)) if adds > 0 && checks > 0 => (adds, checks),
        _ => (ADD_WINDOW, CHECK_WINDOW),
    }
}

fn set(values: &[String]) -> HashSet<String> {
    values.iter().cloned().collect()
}

impl<'a, 'o> Applier<'a, 'o> {
    /// An applier writing to the target over `conn` for run `run_id`, or,
    /// with `plan`, rendering there what it would write.
    pub fn new(
        conn: Conn,
        target: &'a TargetConfig,
        safety: &'a SafetyConfig,
        mapping: &'a Mapping,
        run_id: i64,
        plan: Option<PlanOut<'o>>,
    ) -> Self {
        Applier {
            server: SentTo {
                url: conn.url().to_string(),
                name: None,
            },
            waiting: HashMap::new(),
            window: windows(),
            conn,
            target,
            safety,
            mapping,
            run_id,
            plan,
            retry: Vec::new(),
            pending: Vec::new(),
            queued: Vec::new(),
            in_flight: std::collections::VecDeque::new(),
            writes: std::collections::VecDeque::new(),
            domain: None,
            gc: None,
            met: HashSet::new(),
        }
    }
}

impl Applier<'_, '_> {
    /// The run the applier's records belong to.
    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Anchors whose change did not land this run, with why.
    pub fn retry(&self) -> &[(String, String)] {
        &self.retry
    }

    /// The connection to the target, for a read of its own (a full run's
    /// compliance check).
    pub(crate) fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// Ends the session with the target.
    pub async fn unbind(self) {
        if let Some(gc) = self.gc {
            gc.unbind().await;
        }
        self.conn.unbind().await;
    }

    fn anchor_value(&self, anchor: &str) -> String {
        format!("{}{anchor}", self.target.anchor_prefix)
    }

    /// A journal record of this run about `anchor` (none when empty).
    fn record(&self, anchor: &str, op: &str, outcome: &str, reason: &str) -> Record {
        let mut r = Record::new(self.run_id, op, outcome, reason);
        r.anchor = (!anchor.is_empty()).then(|| anchor.to_string());
        r
    }

    /// What is about to be written to `anchor`, committed before the write
    /// so that [`Self::recover`] can settle it after a crash.
    fn intent(
        &self,
        anchor: &str,
        op: &str,
        before: Option<&ObjectRow>,
        after: Option<&ObjectRow>,
        reason: &str,
    ) -> Intent {
        Intent {
            anchor: anchor.to_string(),
            run_id: self.run_id,
            op: op.into(),
            before: before.cloned(),
            after: after.cloned(),
            reason: reason.into(),
            server: Some(self.server.clone()),
            at: Some(crate::state::journal::now()),
        }
    }

    /// The target server this run writes through.
    pub fn server(&self) -> &SentTo {
        &self.server
    }

    /// Anchors left alone this run because their earlier change waits for
    /// the server it was sent to, with what they wait for.
    pub fn waiting(&self) -> &HashMap<String, String> {
        &self.waiting
    }

    /// Applies one change. Entry-level refusals are journaled and counted;
    /// only a failure of the connection or the state database is an error.
    /// In a dry run, the same reads happen and the write is rendered.
    pub async fn apply(
        &mut self,
        snapshot: &Snapshot,
        change: Change,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        if let Some(why) = self.waiting.get(&change.anchor) {
            // Its last change may sit unreplicated on the server it went
            // to: sending another now could make a twin (see recover.rs).
            tracing::info!(anchor = %change.anchor, "left alone: {why}");
            return Ok(());
        }
        if let Kind::Add { after } = change.kind {
            // An add and the queued changes overlap: the planner gives an
            // add only a name no managed object holds in the snapshot, and
            // a delete, hide or rename frees its old name there only once
            // the target answered it (its commit; see `Known::holder_of`),
            // so no add races a change in flight for a name.
            self.pending.push((after, change.reason));
            if self.pending.len() >= self.window.0 {
                if self.plan.is_some() {
                    self.send_adds(snapshot, counts).await?;
                } else {
                    self.advance_adds(snapshot, counts).await?;
                }
            }
            return Ok(());
        }
        let change = match self.enqueue(change) {
            Some(change) => change,
            None => {
                // The adds before it may stay in their window: an add takes
                // a name no object held when it was planned, which no later
                // change of this run names.
                if self.queued.len() >= self.window.1 {
                    self.advance_queued(snapshot, counts).await?;
                }
                return Ok(());
            }
        };
        // Changes keep their order: waiting writes go first.
        self.flush(snapshot, counts).await?;
        if self.plan.is_some() {
            return self.dry(change, counts).await;
        }
        let anchor = change.anchor.clone();
        match change.kind {
            Kind::Reject { source_dn, why } => {
                if !anchor.is_empty() {
                    self.retry.push((anchor.clone(), why.clone()));
                }
                let mut r = self.record(&anchor, "reject", "withheld", &change.reason);
                r.dn = Some(source_dn);
                r.error = Some(why);
                snapshot.journal(&[r])?;
            }
            Kind::Conflict {
                dn,
                with,
                what,
                agreements,
            } => {
                self.retry.push((anchor.clone(), what.clone()));
                // The planner's: its name (the other object's DN is the
                // contact's), or its mail, held in the OU.
                let kind = if crate::engine::diff::same_dn(&dn, &with) {
                    "name"
                } else {
                    "mail"
                };
                let mut r = self.record(&anchor, "conflict", "withheld", "conflict");
                r.dn = Some(dn);
                r.old_dn = Some(with);
                r.error = Some(what);
                r.agreements = agreements;
                self.conflict(snapshot, r, kind)?;
            }
            // Journaled once per run by the caller, not per object.
            Kind::Withheld { .. } => {}
            Kind::Add { after } => self.add(snapshot, after, &change.reason, counts).await?,
            Kind::Update { before, after } => {
                self.update(snapshot, before, after, &change.reason, counts)
                    .await?
            }
            Kind::Hide { before, after } => {
                self.hide(snapshot, before, after, &change.reason, counts)
                    .await?
            }
            Kind::Delete { before } => {
                self.delete(snapshot, before, &change.reason, counts)
                    .await?
            }
        }
        Ok(())
    }

    /// Journals a change the target refused; it is retried next run.
    fn failed(
        &mut self,
        snapshot: &Snapshot,
        what: Refused<'_>,
        err: &WriteError,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let Refused {
            anchor,
            op,
            dn,
            old_dn,
            reason,
            agreements,
            changes,
        } = what;
        counts.failed += 1;
        self.retry
            .push((anchor.to_string(), format!("{op} failed")));
        let mut r = self.record(anchor, op, "failed", reason);
        r.dn = Some(dn.to_string());
        r.old_dn = old_dn.map(str::to_string);
        r.agreements = agreements.to_vec();
        r.changes = changes;
        r.error = Some(err.to_string());
        snapshot.journal(&[r])?;
        snapshot.clear_intent(anchor)?;
        tracing::warn!(anchor, dn, op, error = %err, "change refused by the target");
        Ok(())
    }

    /// Sends what waits: the adds of the add window (`pending`) and the
    /// queued renames, modifies, hides and deletes, and waits until what
    /// the target accepted is committed; in a dry run, renders them.
    pub async fn flush(
        &mut self,
        snapshot: &Snapshot,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        self.send_adds(snapshot, counts).await?;
        self.run_queued(snapshot, counts).await?;
        // What follows reads the snapshot: every group handed over is in.
        Ok(snapshot.settle()?)
    }

    /// Sends the adds waiting for the add window (`pending`) and reads
    /// every answer; in a dry run, renders them.
    async fn send_adds(
        &mut self,
        snapshot: &Snapshot,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        if self.plan.is_none() {
            return self.settle_adds(snapshot, counts).await;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let adds = std::mem::take(&mut self.pending);
        self.dry_adds(adds, counts).await
    }
}
