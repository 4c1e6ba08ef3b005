//! One run: pull → scope → map → diff → apply (or render, for a plan),
//! then the deletes for objects no longer in scope, then the summary.

pub mod apply;
pub mod diff;
pub mod map;
pub mod pull;
pub mod render;
pub mod scope;

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::agreements::{today, Agreements};
use crate::config::{Config, FileError};
use crate::engine::apply::{Applier, ApplyError, PlanOut};
use crate::engine::diff::{Change, Kind, Planned, Planner};
use crate::engine::map::Mapping;
use crate::engine::pull::PullMode;
use crate::engine::render::Format;
use crate::engine::scope::Scope;
use crate::ldap::syncrepl::SyncMessage;
use crate::ldap::{first_value, Conn, LdapError};
use crate::state::journal::Record;
use crate::state::runs::{Counts, FileHashes};
use crate::state::{CookieKind, Hidden, ObjectRow, Snapshot, SourceCookie, StateError};

/// What a run does with its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Apply to the target, record in the snapshot and journal.
    Apply,
    /// Print the plan; write nothing anywhere.
    Plan(Format),
}

#[derive(Debug)]
pub struct Outcome {
    pub run_id: Option<i64>,
    pub counts: Counts,
    pub duration: Duration,
    pub status: Status,
    pub pull: PullReport,
}

/// How the source was read, for the summary and the log.
#[derive(Debug, Clone, Default)]
pub struct PullReport {
    /// `full` or `delta`.
    pub mode: &'static str,
    /// Why a full pull (no cookie, scope changed, cookie refused, ...).
    pub why: Option<String>,
    /// Entries the source reported gone since the cookie (delta).
    pub gone: u64,
    /// Entries named unchanged by a delta's present phase.
    pub present: u64,
    /// Time spent waiting for the source.
    pub source_time: Duration,
    /// The delta used `modifyTimestamp` rather than RFC 4533.
    pub by_timestamp: bool,
}

impl PullReport {
    fn text(&self) -> String {
        let secs = self.source_time.as_secs_f64();
        match (self.mode, &self.why) {
            ("delta", _) if self.present > 0 => format!(
                "pull: delta (present phase: {} unchanged), {} gone, source time {secs:.3} s",
                self.present, self.gone
            ),
            ("delta", _) if self.by_timestamp => format!(
                "pull: delta (modifyTimestamp), {} gone, source time {secs:.3} s",
                self.gone
            ),
            ("delta", _) => format!("pull: delta, {} gone, source time {secs:.3} s", self.gone),
            (_, Some(why)) => format!("pull: full ({why}), source time {secs:.3} s"),
            _ => format!("pull: {}, source time {secs:.3} s", self.mode),
        }
    }
}

/// Exit code of a run that could not run at all (a [`RunError`]).
pub const EXIT_COULD_NOT_RUN: u8 = 2;

impl Outcome {
    /// The exit code of a run that ran, for the CLI and a resync alike:
    /// 3 when a safety rail held deletes back, 1 when entries failed, 0
    /// otherwise. ([`EXIT_COULD_NOT_RUN`] is for runs that could not run.)
    pub fn exit_code(&self) -> u8 {
        match self.status {
            Status::Withheld(_) => 3,
            _ if self.counts.failed > 0 => 1,
            _ => 0,
        }
    }

    /// The summary people read after a run (`what`: sync or plan).
    pub fn summary(&self, what: &str) -> String {
        let c = &self.counts;
        let run = self
            .run_id
            .map(|id| format!(" run {id}"))
            .unwrap_or_default();
        let verb = if what == "plan" { "would be " } else { "" };
        let recovered = if c.recovered > 0 {
            format!("; recovered after an interrupted run {}", c.recovered)
        } else {
            String::new()
        };
        format!(
            "absync {what}{run}: {} in {:.1} s\n  {}\n  pulled {}, in scope {}, out of scope {}, leavers {}, rejected {}, attributes dropped {}\n  {verb}added {}, modified {}, renamed {}, deleted {}; hidden {}, restored {}, held back {}, drift {}; conflicts {}, failed {}{recovered}",
            self.status.text(),
            self.duration.as_secs_f64(),
            self.pull.text(),
            c.pulled,
            c.in_scope,
            c.out_of_scope,
            c.leavers,
            c.rejected,
            c.dropped_attributes,
            c.added,
            c.modified,
            c.renamed,
            c.deleted,
            c.hidden,
            c.restored,
            c.withheld,
            c.drift,
            c.conflicts,
            c.failed,
        )
    }
}

/// Why a run could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Ldap(#[from] LdapError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("writing the plan: {0}")]
    Output(#[from] std::io::Error),
    #[error(
        "the source read ended early after {pulled} entries ({cause}); source unhealthy: \
         no deletes were applied"
    )]
    SourceIncomplete { pulled: u64, cause: Box<LdapError> },
    /// A stop was asked for; the run ended between two entries, with
    /// everything applied before it committed and journaled.
    #[error("interrupted (shutdown) after {pulled} entries; {deletes}")]
    Interrupted { pulled: u64, deletes: &'static str },
    #[error("{what} {dn} does not exist on {url}; create it (and delegate it to the account) or fix the configuration")]
    MissingContainer {
        what: &'static str,
        dn: String,
        url: String,
    },
}

impl RunError {
    /// The source read ended early after `pulled` entries.
    fn incomplete(pulled: u64, cause: LdapError) -> RunError {
        RunError::SourceIncomplete {
            pulled,
            cause: Box::new(cause),
        }
    }
}

impl From<ApplyError> for RunError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Ldap(e) => RunError::Ldap(e),
            ApplyError::State(e) => RunError::State(e),
        }
    }
}

/// SHA-256 of the configuration, mapping and agreements files as they are
/// on disk (passwords live in other files and are never hashed).
pub fn file_hashes(cfg: &Config) -> FileHashes {
    let hash = |path: &std::path::Path| {
        format!(
            "{:x}",
            Sha256::digest(std::fs::read(path).unwrap_or_default())
        )
    };
    FileHashes {
        config: hash(&cfg.file),
        mapping: hash(&cfg.mapping_file),
        agreements: hash(&cfg.agreements_file),
    }
}

/// Everything a run needs from the input files, loaded and checked.
pub struct Inputs {
    pub mapping: Mapping,
    pub agreements: Agreements,
}

/// Reads and validates the mapping and agreements, and checks that the
/// config, mapping and safety settings fit together, so `check`, `plan`,
/// `sync` and a reload all refuse the same inputs.
pub fn load_inputs(cfg: &Config) -> Result<Inputs, FileError> {
    let inputs = Inputs {
        mapping: Mapping::load(&cfg.mapping_file)?,
        agreements: Agreements::load(&cfg.agreements_file, today())?,
    };
    check_hide_method(cfg, &inputs)?;
    Ok(inputs)
}

struct Progress {
    on: bool,
    last: Instant,
}

impl Progress {
    fn tick(&mut self, c: &Counts) {
        if self.on && self.last.elapsed() >= Duration::from_millis(500) {
            self.last = Instant::now();
            eprint!(
                "\rpulled {}  added {}  modified {}  renamed {}  failed {}   ",
                c.pulled, c.added, c.modified, c.renamed, c.failed
            );
        }
    }
    fn done(&self) {
        if self.on {
            eprintln!();
        }
    }
}

/// What a run was asked to do, beyond its mode.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Read the live target too and repair drift (`--full`).
    pub full: bool,
    /// Release at most this many held-back deletes (`--allow-deletes N`).
    pub allow_deletes: Option<u64>,
    /// Plans show only deletes, hides and held-back deletes.
    pub only_deletes: bool,
    /// Set from outside to stop the run after the entry in flight.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Entries pulled so far, for someone watching (the daemon's status).
    pub progress: Option<Arc<AtomicU64>>,
    /// The caller already holds the state directory's lock (the daemon).
    pub lock_held: bool,
    /// Who asked for this run, for the journal (a resync's Unix user).
    pub requested_by: Option<String>,
}

impl Options {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Between two entries: ends the run if a stop was asked for.
    /// `deletes` says how far the deletes got, for the run's status.
    fn stop_point(&self, counts: &Counts, deletes: &'static str) -> Result<(), RunError> {
        if self.cancelled() {
            return Err(RunError::Interrupted {
                pulled: counts.pulled,
                deletes,
            });
        }
        Ok(())
    }
}

/// How far the deletes got when a run was interrupted.
const NO_DELETES: &str = "no deletes were applied";
const SOME_DELETES: &str =
    "the deletes applied before the stop are journaled; the rest wait for the next run";

/// How a run ended, for the runs table, `absync status` and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Some entries were refused by the target (journaled, retried).
    Failures,
    /// A safety rail held deletes back; the text says which.
    Withheld(String),
}

impl Status {
    pub fn text(&self) -> String {
        match self {
            Status::Ok => "ok".into(),
            Status::Failures => "done with failures".into(),
            Status::Withheld(why) => why.clone(),
        }
    }
}

/// Runs once. In [`Mode::Apply`] the target, snapshot and journal change;
/// in [`Mode::Plan`] the same code runs up to each write, which is
/// rendered to `out` instead.
pub async fn run(
    cfg: &Config,
    mode: Mode,
    opts: Options,
    out: &mut dyn Write,
) -> Result<Outcome, RunError> {
    let started = Instant::now();
    let inputs = load_inputs(cfg)?;
    // One writer per state directory; plans only read.
    let _lock = match mode {
        Mode::Apply if !opts.lock_held => Some(crate::state::StateLock::acquire(&cfg.state_dir)?),
        _ => None,
    };
    let snapshot = Snapshot::open(&cfg.state_dir)?;
    // The files in force: recorded with the run, and the key a delta's
    // cookie belongs to.
    let files = file_hashes(cfg);
    let mut counts = Counts::default();
    let run_id = match mode {
        Mode::Apply => {
            let kind = if opts.full { "full" } else { "sync" };
            let id = snapshot.start_run(kind, &files)?;
            if let Some(who) = &opts.requested_by {
                let mut r = Record::new(
                    id,
                    "request",
                    "applied",
                    &format!("resync requested by {who}"),
                );
                r.detail = Some(serde_json::json!({ "full": opts.full, "unix_user": who }));
                snapshot.journal(&[r])?;
            }
            Some(id)
        }
        Mode::Plan(_) => None,
    };
    let span = tracing::info_span!("run", run_id = run_id.unwrap_or(0));
    let mut pull = PullReport::default();
    let result = run_inner(
        cfg,
        mode,
        &opts,
        out,
        &inputs,
        &snapshot,
        run_id,
        &mut counts,
        &mut pull,
        &files,
    )
    .instrument(span)
    .await;
    let status = match &result {
        Ok(Some(why)) => Status::Withheld(why.clone()),
        Ok(None) if counts.failed > 0 => Status::Failures,
        Ok(None) => Status::Ok,
        Err(_) => Status::Failures,
    };
    if let (Some(id), Ok(_)) = (run_id, &result) {
        crate::state::retention::prune(&snapshot, cfg.journal_retention, id)?;
    }
    if let Some(id) = run_id {
        let text = match &result {
            Err(e) => format!("failed: {e}"),
            Ok(_) => status.text(),
        };
        snapshot.end_run(id, &text, &counts)?;
    }
    result?;
    Ok(Outcome {
        run_id,
        counts,
        duration: started.elapsed(),
        status,
        pull,
    })
}

/// The reasons that leave no agreement in force for an object: it may not
/// be held, hidden or not.
fn no_longer_agreed(reason: &str) -> bool {
    reason == "agreement expired" || reason == "organisation removed"
}

/// A grace period needs somewhere to hide objects.
fn check_hide_method(cfg: &Config, inputs: &Inputs) -> Result<(), FileError> {
    if !cfg.safety.delete_grace.is_zero()
        && cfg.safety.quarantine_ou.is_none()
        && inputs.mapping.hide.is_none()
    {
        return Err(FileError::new(
            &cfg.file,
            None,
            Some("safety.delete_grace"),
            "a grace period needs a way to hide objects: set [safety] quarantine_ou, or a \
             [hide] section in the mapping, or delete_grace = \"0\" to delete at once"
                .into(),
        ));
    }
    Ok(())
}

/// The row of an object being hidden: in the quarantine OU (under a name
/// made unique with its anchor) or in place, marked with when and why.
fn hidden_row(cfg: &Config, mapping: &Mapping, row: &ObjectRow, reason: &str) -> ObjectRow {
    let dn = match &cfg.safety.quarantine_ou {
        Some(q) => {
            let value = crate::dn::rdn_value(&row.dn);
            let tag: String = row.anchor.chars().take(8).collect();
            let room = mapping
                .rdn_max_length
                .saturating_sub(tag.chars().count() + 3);
            let name = format!("{} [{tag}]", crate::engine::map::truncate(&value, room));
            format!(
                "{}={},{q}",
                mapping.rdn_attribute,
                crate::dn::escape_value(&name)
            )
        }
        None => row.dn.clone(),
    };
    ObjectRow {
        dn,
        hidden: Some(Hidden {
            at: crate::state::journal::now(),
            reason: reason.to_string(),
        }),
        ..row.clone()
    }
}

fn grace_over(hidden: &Hidden, grace: Duration) -> bool {
    let Ok(at) =
        time::OffsetDateTime::parse(&hidden.at, &time::format_description::well_known::Rfc3339)
    else {
        return true;
    };
    time::OffsetDateTime::now_utc() - at >= grace
}

/// Compares the snapshot with the live target (full runs) and lays the
/// differences over the planner, so the diff repairs them. In a real run
/// each difference is journaled as drift and the snapshot corrected.
async fn reconcile(
    applier: &mut Applier<'_, '_>,
    planner: &mut Planner<'_>,
    snapshot: &Snapshot,
    live_run: bool,
    counts: &mut Counts,
) -> Result<(), RunError> {
    let mut live = applier.scan_owned().await?;
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
                let changes = crate::engine::diff::attr_changes(&row.attrs, &l.attrs);
                if !changes.is_empty() || !crate::engine::diff::same_dn(&row.dn, &l.dn) {
                    let mut r = record(&row.anchor, "changed in target", &l.dn);
                    r.old_dn =
                        (!crate::engine::diff::same_dn(&row.dn, &l.dn)).then(|| row.dn.clone());
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
    Ok(())
}

/// The stages an entry goes through after the pull, with what they need.
struct Stages<'s, 'a, 'o> {
    scope: &'s Scope,
    planner: &'s mut Planner<'a>,
    applier: &'s mut Applier<'a, 'o>,
    snapshot: &'a Snapshot,
    counts: &'s mut Counts,
    opts: &'s Options,
    progress: &'s mut Progress,
    /// When set, the newest `modifyTimestamp` read so far (timestamp
    /// deltas); the attribute itself goes no further.
    watermark: Option<String>,
}

impl Stages<'_, '_, '_> {
    /// One source entry: scope, map, diff, apply.
    async fn take(&mut self, mut raw: ldap3::SearchEntry) -> Result<(), RunError> {
        if let Some(w) = self.watermark.as_mut() {
            let key = raw
                .attrs
                .keys()
                .find(|k| k.eq_ignore_ascii_case(crate::engine::pull::MODIFY_TIMESTAMP))
                .cloned();
            if let Some(stamp) = key
                .and_then(|k| raw.attrs.remove(&k))
                .and_then(|v| v.into_iter().next())
            {
                if crate::engine::pull::valid_timestamp(&stamp) && stamp > *w {
                    *w = stamp;
                }
            }
        }
        self.counts.pulled += 1;
        if let Some(p) = &self.opts.progress {
            p.store(self.counts.pulled, Ordering::Relaxed);
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
        self.progress.tick(self.counts);
        Ok(())
    }
}

/// A delta pull that could not be done: the server refused the cookie
/// (the run falls back to a full pull), or the run cannot go on.
enum DeltaError {
    Refused(LdapError),
    Run(RunError),
}

impl<E: Into<RunError>> From<E> for DeltaError {
    fn from(e: E) -> Self {
        DeltaError::Run(e.into())
    }
}

/// The full pull: a paged search of everything in scope.
async fn full_pull(
    st: &mut Stages<'_, '_, '_>,
    source: &mut Conn,
    cfg: &Config,
    filter: &str,
    attrs: Vec<String>,
    pull: &mut PullReport,
) -> Result<(), RunError> {
    let waited = Instant::now();
    let search = crate::engine::pull::start(source, &cfg.source, filter, attrs)
        .await
        .map_err(|e| RunError::incomplete(0, e))?;
    pull.source_time += waited.elapsed();
    take_all(st, search, pull).await
}

/// Every entry of a paged search through the stages, then the search's end:
/// one that ended early is an error, so nothing is deleted on the strength
/// of a partial read.
async fn take_all(
    st: &mut Stages<'_, '_, '_>,
    mut search: crate::ldap::PagedSearch,
    pull: &mut PullReport,
) -> Result<(), RunError> {
    loop {
        let waited = Instant::now();
        let next = search.next().await;
        pull.source_time += waited.elapsed();
        match next {
            Ok(Some(raw)) => st.take(raw).await?,
            Ok(None) => break,
            Err(e) => return Err(RunError::incomplete(st.counts.pulled, e)),
        }
    }
    search
        .finish()
        .await
        .map_err(|e| RunError::incomplete(st.counts.pulled, e))?;
    Ok(())
}

/// The delta pull: RFC 4533 from `cookie`, then the anchors whose change did
/// not land last run, read again. Returns how the server ended the refresh
/// and the anchors it reported gone.
async fn delta_pull(
    st: &mut Stages<'_, '_, '_>,
    source: &mut Conn,
    cfg: &Config,
    filter: &str,
    attrs: &[String],
    cookie: Vec<u8>,
    pull: &mut PullReport,
) -> Result<(crate::ldap::syncrepl::SyncDone, HashSet<String>), DeltaError> {
    // Refusals of the cookie or of the request itself: a full pull can
    // still be done. Anything else (connection, timeout) ends the run.
    let refused = |e: &LdapError| {
        matches!(
            e.result_code(),
            Some(crate::ldap::syncrepl::REFRESH_REQUIRED | 2 | 4 | 11 | 12 | 53)
        )
    };
    let incomplete = |pulled: u64, e: LdapError| {
        if refused(&e) {
            DeltaError::Refused(e)
        } else {
            DeltaError::Run(RunError::incomplete(pulled, e))
        }
    };
    let mut deleted = HashSet::new();
    let waited = Instant::now();
    let mut search = source
        .sync_search(&cfg.source.base_dn, filter, attrs.to_vec(), Some(cookie))
        .await
        .map_err(|e| incomplete(0, e))?;
    pull.source_time += waited.elapsed();
    loop {
        let waited = Instant::now();
        let next = search.next().await;
        pull.source_time += waited.elapsed();
        match next {
            Ok(Some(SyncMessage::Changed(raw))) => st.take(raw).await?,
            Ok(Some(SyncMessage::Present(uuid))) => st.planner.mark_present(uuid)?,
            Ok(Some(SyncMessage::Deleted(uuid))) => {
                deleted.insert(uuid);
            }
            Ok(Some(SyncMessage::IdSet { deletes, uuids })) => {
                for uuid in uuids {
                    if deletes {
                        deleted.insert(uuid);
                    } else {
                        st.planner.mark_present(uuid)?;
                    }
                }
            }
            Ok(Some(SyncMessage::Other)) => {}
            Ok(None) => break,
            Err(e) => return Err(incomplete(st.counts.pulled, e)),
        }
    }
    let waited = Instant::now();
    let done = search
        .finish()
        .await
        .map_err(|e| incomplete(st.counts.pulled, e))?;
    pull.source_time += waited.elapsed();
    reread_retry(st, source, cfg, filter, attrs, &mut deleted, pull)
        .await
        .map_err(DeltaError::Run)?;
    Ok((done, deleted))
}

/// Changes that did not land last run are not sent again by a delta: the
/// anchors are read again. Those no longer in scope join `gone` (a delete
/// that failed last time is planned again).
async fn reread_retry(
    st: &mut Stages<'_, '_, '_>,
    source: &mut Conn,
    cfg: &Config,
    filter: &str,
    attrs: &[String],
    gone: &mut HashSet<String>,
    pull: &mut PullReport,
) -> Result<(), RunError> {
    let retry: Vec<String> = st
        .snapshot
        .retry_anchors()?
        .into_iter()
        .filter(|a| !st.planner.has_seen(a) && !gone.contains(a))
        .collect();
    if retry.is_empty() {
        return Ok(());
    }
    let waited = Instant::now();
    let entries = crate::engine::pull::reread(source, &cfg.source, filter, attrs, &retry)
        .await
        .map_err(|e| RunError::incomplete(st.counts.pulled, e))?;
    pull.source_time += waited.elapsed();
    let mut found = HashSet::new();
    for raw in entries {
        if let Some(a) = first_value(&raw, &cfg.source.anchor_attribute) {
            if st.planner.has_seen(&a) {
                continue;
            }
            found.insert(a);
        }
        st.take(raw).await?;
    }
    gone.extend(retry.into_iter().filter(|a| !found.contains(a)));
    Ok(())
}

/// The delta for sources without RFC 4533: the entries in scope whose
/// `modifyTimestamp` is at or after `since`, then the anchors of entries
/// changed since then that no longer match the filter (moved out of scope,
/// leavers; only the anchor is read), then the anchors to read again.
/// Deleted entries leave no trace here: the periodic full pull finds them.
/// Returns the next watermark and the anchors gone.
async fn timestamp_pull(
    st: &mut Stages<'_, '_, '_>,
    source: &mut Conn,
    cfg: &Config,
    filter: &str,
    attrs: &[String],
    since: &str,
    pull: &mut PullReport,
) -> Result<(String, HashSet<String>), RunError> {
    let started = Instant::now();
    let stamp = crate::engine::pull::MODIFY_TIMESTAMP;
    st.watermark = Some(since.to_string());
    let mut with_stamp = attrs.to_vec();
    with_stamp.push(stamp.to_string());
    let changed = format!("(&{filter}({stamp}>={since}))");
    let waited = Instant::now();
    let search = source
        .paged_search(
            &cfg.source.base_dn,
            ldap3::Scope::Subtree,
            &changed,
            with_stamp,
            cfg.source.page_size,
        )
        .await
        .map_err(|e| RunError::incomplete(0, e))?;
    pull.source_time += waited.elapsed();
    take_all(st, search, pull).await?;
    let newest = st.watermark.take().unwrap_or_else(|| since.to_string());

    let left = format!("(&({stamp}>={since})(!{filter}))");
    let waited = Instant::now();
    let mut gone = HashSet::new();
    let mut search = source
        .paged_search(
            &cfg.source.base_dn,
            ldap3::Scope::Subtree,
            &left,
            vec![cfg.source.anchor_attribute.clone()],
            cfg.source.page_size,
        )
        .await
        .map_err(|e| RunError::incomplete(st.counts.pulled, e))?;
    while let Some(e) = search
        .next()
        .await
        .map_err(|e| RunError::incomplete(st.counts.pulled, e))?
    {
        gone.extend(first_value(&e, &cfg.source.anchor_attribute));
    }
    search
        .finish()
        .await
        .map_err(|e| RunError::incomplete(st.counts.pulled, e))?;
    pull.source_time += waited.elapsed();
    reread_retry(st, source, cfg, filter, attrs, &mut gone, pull).await?;
    let next = crate::engine::pull::rewind(
        &newest,
        crate::engine::pull::TIMESTAMP_MARGIN + started.elapsed(),
    )
    .unwrap_or_else(|| since.to_string());
    // Never move the watermark back past where this delta started.
    Ok((next.max(since.to_string()), gone))
}

#[allow(clippy::too_many_arguments)]
async fn run_inner(
    cfg: &Config,
    mode: Mode,
    opts: &Options,
    out: &mut dyn Write,
    inputs: &Inputs,
    snapshot: &Snapshot,
    run_id: Option<i64>,
    counts: &mut Counts,
    pull: &mut PullReport,
    files: &FileHashes,
) -> Result<Option<String>, RunError> {
    let target_conn = Conn::connect(&cfg.target.endpoint).await?;
    let mut applier = Applier::new(
        target_conn,
        &cfg.target,
        &cfg.safety,
        &inputs.mapping,
        run_id.unwrap_or(0),
        match mode {
            Mode::Plan(format) => Some(PlanOut {
                format,
                only_deletes: opts.only_deletes,
                out,
            }),
            Mode::Apply => None,
        },
    );
    // The containers absync writes in must exist before anything is read
    // or planned against them.
    let mut containers = vec![("target OU", cfg.target.base_dn.clone())];
    containers.extend(
        cfg.safety
            .quarantine_ou
            .clone()
            .map(|q| ("quarantine OU", q)),
    );
    for (what, dn) in containers {
        if !applier.exists(&dn).await? {
            return Err(RunError::MissingContainer {
                what,
                dn,
                url: cfg.target.endpoint.url.clone(),
            });
        }
    }
    let live_run = mode == Mode::Apply;
    if live_run {
        applier.recover(snapshot, counts).await?;
    }
    let managed_at_start = snapshot.count_visible()?;
    // The target's objects absync does not own are read when an add or a
    // new name first needs them: a run without either never reads them.
    let mut planner = Planner::new(snapshot, &inputs.mapping, &cfg.target.base_dn, None);
    if opts.full {
        reconcile(&mut applier, &mut planner, snapshot, live_run, counts).await?;
        opts.stop_point(counts, NO_DELETES)?;
    }
    let mut source = Conn::connect(&cfg.source.endpoint).await?;
    let scope = Scope::new(&cfg.source, &inputs.agreements);
    let mut progress = Progress {
        on: live_run && std::io::stderr().is_terminal(),
        last: Instant::now(),
    };
    let mut stages = Stages {
        scope: &scope,
        planner: &mut planner,
        applier: &mut applier,
        snapshot,
        counts,
        opts,
        progress: &mut progress,
        watermark: None,
    };

    // Stages 1 to 5, entry by entry: each change is applied (or rendered)
    // as soon as it is planned, so memory holds no copy of the directory.
    let filter = crate::engine::pull::filter(&cfg.source, &inputs.agreements);
    // Deltas: what the source said is gone, and the cookie for next time.
    let mut gone: Option<HashSet<String>> = None;
    let mut next_cookie: Option<SourceCookie> = None;
    if let Some(filter) = &filter {
        let attrs = crate::engine::pull::attributes(&cfg.source, &inputs.agreements);
        let key = crate::engine::pull::scope_key(filter, &attrs, &inputs.agreements, files);
        let stored = snapshot.source_cookie()?;
        let mut mode = crate::engine::pull::choose(&cfg.source, opts.full, stored.as_ref(), &key);
        if let PullMode::Delta { from } = &mode {
            if from.kind == CookieKind::Timestamp {
                let since = String::from_utf8_lossy(&from.cookie).into_owned();
                tracing::info!(%filter, since, "pulling the changes since the last run (modifyTimestamp)");
                let newest =
                    timestamp_pull(&mut stages, &mut source, cfg, filter, &attrs, &since, pull)
                        .await?;
                pull.mode = "delta";
                pull.by_timestamp = true;
                next_cookie = Some(SourceCookie {
                    kind: CookieKind::Timestamp,
                    cookie: newest.0.into_bytes(),
                    scope_key: key.clone(),
                });
                gone = Some(newest.1);
            } else {
                tracing::info!(%filter, attributes = attrs.len(), "pulling the changes since the last run");
                let cookie = from.cookie.clone();
                match delta_pull(
                    &mut stages,
                    &mut source,
                    cfg,
                    filter,
                    &attrs,
                    cookie.clone(),
                    pull,
                )
                .await
                {
                    Ok((done, deleted)) => {
                        pull.mode = "delta";
                        pull.gone = deleted.len() as u64;
                        pull.present = stages.planner.present_count();
                        next_cookie = Some(SourceCookie {
                            kind: CookieKind::Rfc4533,
                            cookie: done.cookie.unwrap_or(cookie),
                            scope_key: key.clone(),
                        });
                        // The present phase names every unchanged entry: what
                        // it does not name is gone, as after a full pull.
                        gone = done.refresh_deletes.then_some(deleted);
                    }
                    Err(DeltaError::Refused(e)) => {
                        let why = format!("the delta could not be read: {e}");
                        tracing::warn!("{why}; pulling everything instead");
                        if live_run {
                            let mut r = Record::new(stages.applier.run_id(), "pull", "full", &why);
                            r.detail = Some(serde_json::json!({ "fallback": "full pull" }));
                            snapshot.journal(&[r])?;
                        }
                        // What the delta applied is in the snapshot: a fresh
                        // planner sees it as done.
                        stages.applier.flush(snapshot, stages.counts).await?;
                        *stages.planner =
                            Planner::new(snapshot, &inputs.mapping, &cfg.target.base_dn, None);
                        stages.counts.reset_pull();
                        mode = PullMode::Full { why };
                    }
                    Err(DeltaError::Run(e)) => return Err(e),
                }
            }
        }
        if let PullMode::Full { why } = mode {
            tracing::info!(%filter, attributes = attrs.len(), why, "pulling everything in scope");
            pull.mode = "full";
            pull.why = Some(why);
            // The cookie is taken before the read, so changes made during it
            // come again in the next delta.
            let mut rfc4533 = false;
            if crate::engine::pull::rfc4533_possible(&cfg.source) {
                match source.current_cookie(&cfg.source.base_dn).await {
                    Ok(Some(cookie)) => {
                        rfc4533 = true;
                        next_cookie = Some(SourceCookie {
                            kind: CookieKind::Rfc4533,
                            cookie,
                            scope_key: key.clone(),
                        })
                    }
                    Ok(None) => tracing::info!(
                        "the source does not offer content synchronisation (RFC 4533)"
                    ),
                    Err(e) => tracing::warn!(error = %e, "no RFC 4533 cookie for a delta next run"),
                }
            }
            // Without a cookie, the newest modifyTimestamp read starts the
            // next delta.
            let mut attrs = attrs;
            if !rfc4533 && crate::engine::pull::timestamps_allowed(&cfg.source) {
                stages.watermark = Some(String::new());
                attrs.push(crate::engine::pull::MODIFY_TIMESTAMP.to_string());
            }
            let started = Instant::now();
            full_pull(&mut stages, &mut source, cfg, filter, attrs, pull).await?;
            let margin = crate::engine::pull::TIMESTAMP_MARGIN + started.elapsed();
            if let Some(w) = stages
                .watermark
                .take()
                .and_then(|w| crate::engine::pull::rewind(&w, margin))
            {
                next_cookie = Some(SourceCookie {
                    kind: CookieKind::Timestamp,
                    cookie: w.into_bytes(),
                    scope_key: key.clone(),
                });
            }
        }
    } else {
        tracing::warn!("no data-sharing agreement is in force");
    }
    // The last adds of the pull go now: what follows reads the snapshot.
    applier.flush(snapshot, counts).await?;
    let unseen = match &gone {
        Some(gone) => {
            let unseen = planner.unseen_listed(&inputs.agreements, gone)?;
            // A source may name entries absync never held (syncprov reports
            // what left any filter below the base): count the held ones.
            pull.gone = unseen
                .iter()
                .filter(|(row, _)| gone.contains(&row.anchor))
                .count() as u64;
            unseen
        }
        None => planner.unseen(&inputs.agreements)?,
    };
    // Source health is judged on reads that claim to be complete: a full
    // pull, or a delta's present phase. A delta that lists what is gone says
    // so explicitly; only the threshold applies to it.
    let judge_health = gone.is_none();
    let pulled_total = counts.pulled + planner.present_count();
    // A delta that would take every object of an organisation at once is
    // held like an organisation returning nothing.
    let emptied: HashSet<String> = if judge_health {
        HashSet::new()
    } else {
        let mut leaving: std::collections::HashMap<&str, u64> = Default::default();
        for (row, _) in unseen.iter().filter(|(r, _)| r.hidden.is_none()) {
            *leaving.entry(row.org.as_str()).or_default() += 1;
        }
        let mut emptied = HashSet::new();
        for (org, n) in leaving {
            if scope.grants.contains_key(org)
                && planner.pulled_per_org.get(org).copied().unwrap_or(0) == 0
                && snapshot.visible_in_org(org)? == n
            {
                emptied.insert(org.to_string());
            }
        }
        emptied
    };
    let ask: Vec<String> = unseen
        .iter()
        .filter(|(row, r)| r.is_none() && row.hidden.is_none())
        .map(|(row, _)| row.anchor.clone())
        .collect();
    let found: std::collections::HashMap<String, (String, bool)> =
        crate::engine::pull::lookup(&mut source, &cfg.source, &ask)
            .await
            // Without the reasons the read is incomplete: nothing is deleted.
            .map_err(|e| RunError::incomplete(counts.pulled, e))?
            .into_iter()
            .map(|(a, org, leaver)| (a, (org, leaver)))
            .collect();
    let grants = &scope.grants;
    let mut removals: Vec<Change> = Vec::new();
    let mut guarded: Vec<(Change, String)> = Vec::new();
    let mut guard_notes: std::collections::BTreeMap<String, u64> = Default::default();
    for (row, reason) in unseen {
        // A hidden object whose grace period is over is deleted; like any
        // other delete it passes the source-health guard and the threshold.
        // With no agreement left to hold it under, nothing waits out a grace
        // period: it is deleted (still through the guard and the threshold).
        let unlawful = reason.as_deref().is_some_and(no_longer_agreed);
        let change = if let Some(h) = &row.hidden {
            let reason = match reason {
                Some(r) if unlawful => r,
                _ if grace_over(h, cfg.safety.delete_grace) => {
                    format!("grace period over ({})", h.reason)
                }
                _ => continue,
            };
            Change {
                anchor: row.anchor.clone(),
                reason,
                kind: Kind::Delete {
                    before: row.clone(),
                },
            }
        } else {
            let reason = reason.unwrap_or_else(|| match found.get(&row.anchor) {
                Some((_, true)) => "leaver".into(),
                Some((org, false)) if org != &row.org => "left scope".into(),
                Some(_) => "no longer matches the source filter".into(),
                None => "deleted from source".into(),
            });
            let kind = if cfg.safety.delete_grace.is_zero() || unlawful {
                Kind::Delete {
                    before: row.clone(),
                }
            } else {
                Kind::Hide {
                    after: hidden_row(cfg, &inputs.mapping, &row, &reason),
                    before: row.clone(),
                }
            };
            Change {
                anchor: row.anchor.clone(),
                reason,
                kind,
            }
        };
        // Source health: nothing read at all, or an organisation in scope
        // that returned nothing although objects are held for it.
        let unhealthy = if !judge_health {
            emptied
                .contains(&row.org)
                .then(|| format!("organisation {} returned no entries", row.org))
        } else if filter.is_some() && pulled_total == 0 {
            Some("the source returned no entries".to_string())
        } else if grants.contains_key(&row.org)
            && planner.pulled_per_org.get(&row.org).copied().unwrap_or(0) == 0
        {
            Some(format!("organisation {} returned no entries", row.org))
        } else {
            None
        };
        match unhealthy {
            Some(why) => {
                *guard_notes.entry(why.clone()).or_default() += 1;
                guarded.push((change, why));
            }
            None => removals.push(change),
        }
    }

    // The deletion threshold.
    let n = removals.len() as u64;
    let percent = if managed_at_start == 0 {
        0.0
    } else {
        n as f64 * 100.0 / managed_at_start as f64
    };
    let exceeded = n > cfg.safety.max_deletes || percent > cfg.safety.max_delete_percent;
    let threshold_why = format!(
        "deletion threshold: {n} deletes planned ({percent:.1}% of {managed_at_start} managed \
         objects), limits {} and {}%",
        cfg.safety.max_deletes, cfg.safety.max_delete_percent
    );
    let mut candidates: Vec<(Change, Option<String>)> = removals
        .into_iter()
        .map(|c| (c, exceeded.then(|| threshold_why.clone())))
        .collect();
    candidates.extend(guarded.into_iter().map(|(c, why)| {
        let why = format!("source unhealthy: {why}");
        (c, Some(why))
    }));
    let mut released = 0u64;
    let mut held: Vec<(Change, String)> = Vec::new();
    for (change, why) in candidates {
        let go = match (opts.allow_deletes, &why) {
            (Some(limit), _) => released < limit,
            (None, None) => true,
            (None, Some(_)) => false,
        };
        if go {
            opts.stop_point(counts, SOME_DELETES)?;
            released += 1;
            applier.apply(snapshot, change, counts).await?;
        } else {
            let why = why.unwrap_or_else(|| "over the --allow-deletes limit".into());
            held.push((change, why));
        }
    }
    counts.withheld = held.len() as u64;
    let user = crate::os::unix_user();
    let mut notes = Vec::new();
    if let Some(limit) = opts.allow_deletes {
        let mut r = Record::new(
            applier.run_id(),
            "override",
            "applied",
            &format!("--allow-deletes {limit} by {user}"),
        );
        r.error = Some(format!(
            "{released} deletes released, {} still held",
            held.len()
        ));
        notes.push(r);
    }
    let mut stopped = None;
    if !held.is_empty() {
        let threshold_held = held.iter().filter(|(_, w)| w == &threshold_why).count();
        let status = if threshold_held > 0 {
            "stopped: deletion threshold"
        } else {
            "deletes held: source unhealthy"
        };
        let mut whys: Vec<String> = guard_notes
            .iter()
            .map(|(why, n)| format!("{why} ({n} objects held)"))
            .collect();
        if threshold_held > 0 {
            whys.insert(0, threshold_why.clone());
        }
        let message = format!(
            "{} deletes held back: {}. Review them with `absync plan --only deletes`; \
             release them with `absync sync --allow-deletes N`",
            held.len(),
            whys.join("; ")
        );
        tracing::error!("{message}");
        let op = if threshold_held > 0 {
            "threshold"
        } else {
            "guard"
        };
        let mut r = Record::new(applier.run_id(), op, "withheld", status);
        r.error = Some(message);
        notes.push(r);
        stopped = Some(status.to_string());
    }
    if live_run {
        snapshot.journal(&notes)?;
    }
    for (change, why) in held {
        // Plans show what is held back; a real run writes nothing for it.
        let withheld = Change {
            anchor: change.anchor.clone(),
            reason: change.reason.clone(),
            kind: Kind::Withheld {
                change: Box::new(change),
                why,
            },
        };
        applier.apply(snapshot, withheld, counts).await?;
    }
    progress.done();
    applier.flush(snapshot, counts).await?;
    if live_run {
        // The next delta starts here, unless deletes were held back: the
        // source reports a delete only once, so the next run must pull
        // everything to see them again.
        let cookie = match &stopped {
            None => next_cookie.as_ref(),
            Some(_) => None,
        };
        snapshot.finish_pull(cookie, applier.retry(), applier.run_id())?;
    }
    source.unbind().await;
    applier.unbind().await;
    Ok(stopped)
}
