//! One run, stage by stage: pull → scope → map → diff → apply (or render,
//! for a plan), then the removals for objects no longer in scope, then the
//! summary. [`run_inner`] is the table of contents; each step has a room:
//!
//! - [`cx`]: what a run is given (mode, options, input files, context).
//! - [`reconcile`]: a full run's comparison of the live target with the
//!   snapshot.
//! - [`pull`] (stage 1): the source read, full or delta.
//! - [`stages`]: one entry through [`scope`] (2), [`map`] (3) with the
//!   mail-domain [`screen`], [`diff`] (4) and [`apply`] (5).
//! - [`removals`]: what was not seen: hide or delete, through the rails.
//! - [`render`]: a plan as a table, LDIF or JSON.
//! - [`compliance`]: a full run's last step, and `absync audit`: is
//!   anything in the OUs that no agreement allows?
//! - [`outcome`]: how the run ended, its summary and exit code.

pub mod cx;
pub mod outcome;
mod reconcile;

pub mod pull;
mod stages;

pub mod scope;

pub mod map;
pub mod phone;
pub mod screen;

pub mod diff;
mod known;

pub mod organisations;
pub mod removals;

pub mod apply;
pub mod compliance;
pub mod expiry;
pub mod failover;
pub mod preflight;
pub mod render;

pub use cx::{check_hide_method, file_hashes, load_inputs, Inputs, Mode, Options, Watch, Watcher};
pub use outcome::{Outcome, PullReport, RunError, Status, EXIT_COULD_NOT_RUN};

use std::io::Write;
use std::time::Instant;

use tracing::Instrument;

use crate::config::Config;
use crate::engine::apply::{Applier, PlanOut};
use crate::engine::cx::{RunCx, NO_DELETES};
use crate::engine::diff::Planner;
use crate::engine::pull::SourceRead;
use crate::engine::removals::{Facts, Rules};
use crate::engine::scope::Scope;
use crate::engine::stages::Stages;
use crate::ldap::Conn;
use crate::state::journal::Record;
use crate::state::runs::{Counts, FileHashes};
use crate::state::{ReadFrom, Snapshot, StateLock};

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
    let mut inputs = load_inputs(cfg)?;
    // One writer per state directory; plans only read.
    let _lock = match mode {
        Mode::Apply if !opts.lock_held => Some(StateLock::acquire(&cfg.state_dir)?),
        _ => None,
    };
    let snapshot = open_state(cfg, mode)?;
    expiry::announce(&inputs.agreements, cfg.agreements_warn_days, &snapshot);
    // Holding the lock, no other process runs: a run still marked running
    // died with its process. Closed before this run starts.
    if mode == Mode::Apply {
        snapshot.close_dead_runs(cfg.journal_signer.as_ref())?;
    }
    // The files in force: recorded with the run, and the key a delta's
    // cookie belongs to.
    let files = file_hashes(cfg);
    // A backup put back as the state: this run is full, and journals it.
    let restored = match mode {
        Mode::Apply => snapshot.restored_from()?,
        Mode::Plan(_) => None,
    };
    let opts = Options {
        full: opts.full || restored.is_some(),
        ..opts
    };
    let run_id = match mode {
        Mode::Apply => Some(start_run(&snapshot, &opts, &files, &inputs, restored)?),
        Mode::Plan(_) => None,
    };
    // Closed organisations leave the scope before anything is read.
    let closures = organisations::settle(cfg, &mut inputs.agreements).await;
    if let (Ok(()), Some(id)) = (&closures, run_id) {
        organisations::journal(&snapshot, id, &inputs.agreements)?;
    }
    let cx = RunCx {
        cfg,
        inputs: &inputs,
        opts: &opts,
        snapshot: &snapshot,
        files: &files,
        run_id: run_id.unwrap_or(0),
        live: mode == Mode::Apply,
    };
    if let Mode::Plan(format) = mode {
        // LDIF's `version: 1`, once, before the first change.
        out.write_all(render::header(format).as_bytes())
            .map_err(|e| crate::state::StateError::Output(e.to_string()))?;
    }
    let plan = match mode {
        Mode::Plan(format) => Some(PlanOut {
            format,
            only_deletes: opts.only_deletes,
            out,
        }),
        Mode::Apply => None,
    };
    let span = tracing::info_span!("run", run_id = cx.run_id);
    let mut counts = Counts::default();
    let mut pull = PullReport::default();
    let mut lost = Vec::new();
    let result = match closures {
        Ok(()) => {
            run_moving_on(&cx, plan, &mut counts, &mut pull, &mut lost)
                .instrument(span)
                .await
        }
        Err(e) => Err(e),
    };
    // What the run handed to the commit thread lands before its end is
    // journaled. A run that failed keeps its own error; a commit that
    // failed as well is logged beside it.
    let result = match (result, snapshot.settle()) {
        (r, Ok(())) => r,
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(e), Err(c)) => {
            tracing::error!(error = %c, "what the target accepted could not all be committed");
            Err(e)
        }
    };
    let servers = failover::Servers::gather(cfg, lost);
    if let Some(text) = servers.text() {
        tracing::warn!("{text}");
    }
    let status = match &result {
        Ok(Some(why)) => Status::Withheld(why.clone()),
        Ok(None) if counts.failed > 0 => Status::Failures,
        Ok(None) => Status::Ok,
        Err(_) => Status::Failures,
    };
    if let Some(id) = run_id {
        let signer = cfg.journal_signer.as_ref();
        let pruned = match &result {
            Ok(_) => prune(cfg, &snapshot, id),
            Err(_) => Ok(()),
        };
        let text = match (&result, &pruned) {
            (Err(e), _) => format!("failed: {e}"),
            (Ok(_), Err(e)) => format!("failed: {e}"),
            (Ok(_), Ok(())) => status.text(),
        };
        let servers = serde_json::to_value(&servers).unwrap_or_default();
        snapshot.end_run_naming(id, &text, &counts, servers, signer)?;
        pruned?;
    }
    result?;
    Ok(Outcome {
        run_id,
        counts,
        duration: started.elapsed(),
        status,
        pull,
        servers,
    })
}

/// [`run_inner`], started again on the next server when a server of a
/// side with several fails during a real run (see [`failover`]); each lost
/// server is noted in `lost`. A plan is not started again (its output is
/// half written): connecting already moved past servers that were down.
async fn run_moving_on(
    cx: &RunCx<'_>,
    plan: Option<PlanOut<'_>>,
    counts: &mut Counts,
    report: &mut PullReport,
    lost: &mut Vec<failover::Move>,
) -> Result<Option<String>, RunError> {
    if plan.is_some() {
        return run_inner(cx, plan, counts, report).await;
    }
    let servers = cx.cfg.source.endpoint.urls.len() + cx.cfg.target.endpoint.urls.len();
    loop {
        let result = run_inner(cx, None, counts, report).await;
        let Err(e) = &result else { return result };
        // What the failed attempt handed to the commit thread lands
        // before anything is read again.
        cx.snapshot.settle()?;
        let Some((side, ep, url, error)) = failover::failed_server(cx.cfg, e) else {
            return result;
        };
        // Each server but the first of each side may take over once.
        if lost.len() + 2 >= servers {
            return result;
        }
        ep.health.down(&url, &error);
        tracing::warn!(side, server = %url, error = %e, "lost a server during the run; its steps start again on the next one");
        lost.push(failover::Move {
            side,
            why: failover::why(&url, &error),
            from: url,
        });
        counts.reset_pull();
        *report = PullReport::default();
        cx.snapshot.accepted_by(None);
    }
}

/// Retention, at the end of a run that went through: records older than
/// `[journal] retention` go (archived first when `archive_dir` is set),
/// never this run's own.
fn prune(cfg: &Config, snapshot: &Snapshot, run_id: i64) -> Result<(), RunError> {
    let p = crate::state::retention::Prune {
        before: cfg
            .journal_retention
            .before(time::OffsetDateTime::now_utc()),
        run_id,
        signer: cfg.journal_signer.as_ref(),
        archive_dir: cfg.journal_archive_dir.as_deref(),
    };
    crate::state::retention::prune(snapshot, &p)?;
    Ok(())
}

/// The state for a run: a real run opens it to write (migrating an older
/// schema, after a backup); a plan only reads an existing database, as
/// every reader does, and changes nothing in it.
fn open_state(cfg: &Config, mode: Mode) -> Result<Snapshot, RunError> {
    let exists = cfg.state_dir.join("absync.db").exists();
    Ok(match mode {
        Mode::Plan(_) if exists => Snapshot::open_read_only(&cfg.state_dir, ReadFrom::Live)?,
        _ => Snapshot::open(&cfg.state_dir)?,
    })
}

/// Starts a real run's row and record; a resync's requester is journaled,
/// and so are the agreements' terms when the file changed since they were
/// last journaled, and the restore of a backup (`restored`: its mark).
fn start_run(
    snapshot: &Snapshot,
    opts: &Options,
    files: &FileHashes,
    inputs: &Inputs,
    restored: Option<serde_json::Value>,
) -> Result<i64, RunError> {
    let kind = if opts.full { "full" } else { "sync" };
    let id = snapshot.start_run(kind, files)?;
    let mut records = Vec::new();
    if let Some(mark) = &restored {
        records.push(crate::state::backup::restore_record(id, mark));
    }
    if let Some(who) = &opts.requested_by {
        let mut r = Record::new(
            id,
            "request",
            "applied",
            &format!("resync requested by {who}"),
        );
        r.detail = Some(serde_json::json!({
            "full": opts.full,
            "unix_user": who.text,
            "uid": who.uid,
            "login_uid": who.login_uid,
        }));
        records.push(r);
    }
    let last = crate::state::audit::terms_at(snapshot, None)?;
    let recorded = last
        .and_then(|s| s.record.detail)
        .map(|d| d["hash"].clone());
    if recorded.as_ref().and_then(|h| h.as_str()) != Some(files.agreements.as_str()) {
        let mut r = Record::new(id, "agreements", "applied", "the agreements in the file");
        r.detail = Some(serde_json::json!({
            "hash": files.agreements,
            "agreements": inputs.agreements.terms(),
        }));
        records.push(r);
    }
    match restored {
        Some(_) => snapshot.journal_restored(&records)?,
        None => snapshot.journal(&records)?,
    }
    Ok(id)
}

/// The run, step by step. Returns the status when a safety rail held
/// deletes back.
async fn run_inner(
    cx: &RunCx<'_>,
    plan: Option<PlanOut<'_>>,
    counts: &mut Counts,
    report: &mut PullReport,
) -> Result<Option<String>, RunError> {
    let mut applier = open_target(cx, plan, counts).await?;
    // Visible and hidden objects: the deletion threshold's base.
    let visible = cx.snapshot.count_visible()?;
    let managed_at_start = (visible, cx.snapshot.count()?.saturating_sub(visible));
    // The target's objects absync does not own are read when an add or a
    // new name first needs them: a run without either never reads them.
    let mut planner = Planner::new(
        cx.snapshot,
        &cx.inputs.mapping,
        &cx.cfg.target.base_dn,
        None,
    )
    .with_mail_domains(cx.cfg.mail_domains.as_ref());
    if cx.opts.full {
        reconcile::run(&mut applier, &mut planner, cx.snapshot, cx.live, counts).await?;
        cx.opts.stop_point(counts, NO_DELETES)?;
    }
    let mut source = Conn::connect(&cx.cfg.source.endpoint).await?;
    let scope = Scope::new(&cx.cfg.source, &cx.inputs.agreements);
    // Stages 1 to 5, entry by entry.
    let read = {
        let mut stages = Stages {
            scope: &scope,
            planner: &mut planner,
            applier: &mut applier,
            snapshot: cx.snapshot,
            counts,
            opts: cx.opts,
            watermark: None,
        };
        pull::read(cx, &mut stages, &mut source, report).await?
    };
    // The last adds of the pull go now: what follows reads the snapshot.
    applier.flush(cx.snapshot, counts).await?;

    let unseen = read.unseen(cx, &planner, report)?;
    let facts = Facts::gather(
        cx,
        &planner,
        &scope,
        &read,
        &unseen,
        managed_at_start,
        counts.pulled,
    )?;
    let found = removals::ask_source(cx, &mut source, &unseen, counts.pulled).await?;
    let rules = Rules {
        safety: &cx.cfg.safety,
        mapping: &cx.inputs.mapping,
        allow_deletes: cx.opts.allow_deletes,
        now: time::OffsetDateTime::now_utc(),
    };
    let decided = removals::decide(unseen, &found, &facts, &rules);
    let stopped = removals::carry_out(cx, &mut applier, decided, counts).await?;
    if cx.live {
        // Conflicts of people read this run and not met again are over
        // (after a full pull, everyone in scope was read).
        let gone = read.gone.as_ref();
        applier.settle_conflicts(cx.snapshot, |a| {
            gone.is_none_or(|g| g.contains(a)) || planner.has_read(a)
        })?;
    }

    finish(cx, applier, source, read, stopped.is_some(), counts).await?;
    Ok(stopped)
}

/// Connects to the target, checks that the containers absync writes in
/// exist before anything is read or planned against them, and (in a real
/// run) settles the intents a crashed run left.
async fn open_target<'a, 'o>(
    cx: &RunCx<'a>,
    plan: Option<PlanOut<'o>>,
    counts: &mut Counts,
) -> Result<Applier<'a, 'o>, RunError> {
    let cfg = cx.cfg;
    let conn = Conn::connect(&cfg.target.endpoint).await?;
    let mut applier = Applier::new(
        conn,
        &cfg.target,
        &cfg.safety,
        &cx.inputs.mapping,
        cx.run_id,
        plan,
    );
    let server = applier.identify().await?;
    if let Some(name) = &server.name {
        cfg.target.endpoint.health.name(&server.url, name);
    }
    cx.snapshot.accepted_by(Some(server.label().to_string()));
    for (what, dn) in cfg.containers() {
        if !applier.exists(dn).await? {
            return Err(RunError::MissingContainer {
                what,
                dn: dn.to_string(),
                url: applier.conn().url().to_string(),
            });
        }
    }
    if cx.live {
        applier.recover(cx.snapshot, counts).await?;
    }
    Ok(applier)
}

/// Ends the run's writes: the last adds, then (in a real run) the source
/// cookie for the next delta and the anchors to read again, and (in a full
/// run) the compliance check, then both connections.
async fn finish(
    cx: &RunCx<'_>,
    mut applier: Applier<'_, '_>,
    source: Conn,
    read: SourceRead,
    held_deletes: bool,
    counts: &mut Counts,
) -> Result<(), RunError> {
    if let Some(w) = &cx.opts.watch {
        w.0.done();
    }
    applier.flush(cx.snapshot, counts).await?;
    if cx.live {
        // The next delta starts here, unless deletes were held back: the
        // source reports a delete only once, so the next run must pull
        // everything to see them again.
        let cookie = read.next_cookie.as_ref().filter(|_| !held_deletes);
        cx.snapshot
            .finish_pull(cookie, applier.retry(), applier.run_id())?;
        // What the OUs hold now, against the agreements in force.
        if cx.opts.full {
            compliance::check_run(cx, applier.conn(), counts).await?;
        }
    }
    source.unbind().await;
    applier.unbind().await;
    Ok(())
}
