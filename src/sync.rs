//! One run: pull → scope → map → diff → apply (or render, for a plan),
//! then the deletes for objects no longer in scope, then the summary.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::agreements::{today, Agreements};
use crate::apply::{Applier, ApplyError};
use crate::config::{Config, FileError};
use crate::diff::{Change, Kind, Planner};
use crate::journal::Counts;
use crate::ldap::{Conn, LdapError};
use crate::map::Mapping;
use crate::render::{render, Format};
use crate::scope::Scope;
use crate::snapshot::{Snapshot, StateError};

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
}

impl From<ApplyError> for RunError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Ldap(e) => RunError::Ldap(e),
            ApplyError::State(e) => RunError::State(e),
        }
    }
}

/// SHA-256 over the configuration, mapping and agreements files as they
/// are on disk (passwords live in other files and are never hashed).
pub fn config_hash(cfg: &Config) -> String {
    let mut h = Sha256::new();
    for (label, path) in [
        ("config", &cfg.file),
        ("mapping", &cfg.mapping_file),
        ("agreements", &cfg.agreements_file),
    ] {
        h.update(label.as_bytes());
        h.update(std::fs::read(path).unwrap_or_default());
    }
    format!("{:x}", h.finalize())
}

/// Everything a run needs from the input files, loaded and checked.
pub struct Inputs {
    pub mapping: Mapping,
    pub agreements: Agreements,
}

pub fn load_inputs(cfg: &Config) -> Result<Inputs, FileError> {
    Ok(Inputs {
        mapping: Mapping::load(&cfg.mapping_file)?,
        agreements: Agreements::load(&cfg.agreements_file, today())?,
    })
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

/// Runs once. In [`Mode::Apply`] the target, snapshot and journal change;
/// in [`Mode::Plan`] the same plan is computed and written to `out`.
pub async fn run(cfg: &Config, mode: Mode, out: &mut dyn Write) -> Result<Outcome, RunError> {
    let started = Instant::now();
    let inputs = load_inputs(cfg)?;
    let snapshot = Snapshot::open(&cfg.state_dir)?;
    let mut counts = Counts::default();
    let run_id = match mode {
        Mode::Apply => Some(snapshot.start_run("sync", &config_hash(cfg))?),
        Mode::Plan(_) => None,
    };
    let span = tracing::info_span!("run", run_id = run_id.unwrap_or(0));
    let result = run_inner(cfg, mode, out, &inputs, &snapshot, run_id, &mut counts)
        .instrument(span)
        .await;
    if let Some(id) = run_id {
        let status = match &result {
            Ok(()) if counts.failed == 0 => "ok".to_string(),
            Ok(()) => "done with failures".to_string(),
            Err(e) => format!("failed: {e}"),
        };
        snapshot.end_run(id, &status, &counts)?;
    }
    result?;
    Ok(Outcome {
        run_id,
        counts,
        duration: started.elapsed(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_inner(
    cfg: &Config,
    mode: Mode,
    out: &mut dyn Write,
    inputs: &Inputs,
    snapshot: &Snapshot,
    run_id: Option<i64>,
    counts: &mut Counts,
) -> Result<(), RunError> {
    let target_conn = Conn::connect(&cfg.target.endpoint).await?;
    let mut applier = Applier {
        conn: target_conn,
        target: &cfg.target,
        mapping: &inputs.mapping,
        run_id: run_id.unwrap_or(0),
    };
    if mode == Mode::Apply {
        applier.recover(snapshot, counts).await?;
    }
    let unowned = applier.scan_unowned().await?;
    let mut source = Conn::connect(&cfg.source.endpoint).await?;
    let scope = Scope {
        grants: inputs.agreements.grants(),
        org_attribute: cfg.source.org_attribute.clone(),
        anchor_attribute: cfg.source.anchor_attribute.clone(),
        status_attribute: cfg.source.status_attribute.clone(),
        leaver_values: cfg.source.leaver_values.clone(),
    };
    let mut progress = Progress {
        on: mode == Mode::Apply && std::io::stderr().is_terminal(),
        last: Instant::now(),
    };

    // Stages 1 to 5, entry by entry: each change is applied (or rendered)
    // as soon as it is planned, so memory holds no copy of the directory.
    let mut planner = Planner::new(snapshot, &inputs.mapping, &cfg.target.base_dn, unowned);
    let mut sink = Sink {
        mode,
        out,
        applier: &mut applier,
        snapshot,
        mapping: &inputs.mapping,
        target: &cfg.target,
    };
    if let Some(filter) = crate::pull::filter(&cfg.source, &inputs.agreements) {
        let attrs = crate::pull::attributes(&cfg.source, &inputs.agreements);
        tracing::info!(%filter, attributes = attrs.len(), "pulling");
        let mut search = crate::pull::start(&mut source, &cfg.source, &filter, attrs).await?;
        while let Some(raw) = search.next().await? {
            counts.pulled += 1;
            let verdict = scope.judge(raw);
            if let Some(change) = planner.plan(verdict, counts)? {
                sink.handle(change, counts).await?;
            }
            progress.tick(counts);
        }
        // A search that ended early is an error: nothing is deleted on the
        // strength of a partial read.
        search.finish().await?;
    } else {
        tracing::warn!("no data-sharing agreement is in force");
    }

    // Deletes: managed objects the pull did not return, with the reason.
    let unseen = planner.unseen(&inputs.agreements)?;
    let ask: Vec<String> = unseen
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(row, _)| row.anchor.clone())
        .collect();
    let found: std::collections::HashMap<String, (String, bool)> =
        crate::pull::lookup(&mut source, &cfg.source, &ask)
            .await?
            .into_iter()
            .map(|(a, org, leaver)| (a, (org, leaver)))
            .collect();
    for (row, reason) in unseen {
        let reason = reason.unwrap_or_else(|| match found.get(&row.anchor) {
            Some((_, true)) => "leaver".into(),
            Some((org, false)) if org != &row.org => "left scope".into(),
            Some(_) => "no longer matches the source filter".into(),
            None => "deleted from source".into(),
        });
        let change = Change {
            anchor: row.anchor.clone(),
            reason,
            kind: Kind::Delete { before: row },
        };
        sink.handle(change, counts).await?;
        progress.tick(counts);
    }
    progress.done();
    source.unbind().await;
    applier.conn.unbind().await;
    Ok(())
}

/// Where planned changes go: to the target, or to the plan's output.
struct Sink<'s, 'a> {
    mode: Mode,
    out: &'s mut dyn Write,
    applier: &'s mut Applier<'a>,
    snapshot: &'s Snapshot,
    mapping: &'s Mapping,
    target: &'s crate::config::TargetConfig,
}

impl Sink<'_, '_> {
    async fn handle(&mut self, change: Change, counts: &mut Counts) -> Result<(), RunError> {
        match self.mode {
            Mode::Plan(format) => {
                count_planned(&change, counts);
                let text = render(&change, format, self.mapping, self.target);
                self.out.write_all(text.as_bytes())?;
            }
            Mode::Apply => {
                let span = tracing::debug_span!("entry", anchor = %change.anchor);
                self.applier
                    .apply(self.snapshot, change, counts)
                    .instrument(span)
                    .await?;
            }
        }
        Ok(())
    }
}

/// In a plan, counts what would be written.
fn count_planned(c: &Change, counts: &mut Counts) {
    match &c.kind {
        Kind::Add { .. } => counts.added += 1,
        Kind::Delete { .. } => counts.deleted += 1,
        Kind::Update { .. } => {
            if c.is_rename() {
                counts.renamed += 1;
            }
            if c.is_modify() {
                counts.modified += 1;
            }
        }
        Kind::Conflict { .. } | Kind::Reject { .. } => {}
    }
}
