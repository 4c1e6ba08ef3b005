//! Compliance: is anything in the managed or the quarantine OU that no
//! agreement in force allows? Every object directly in either OU is read
//! from the target (absync's or not) and judged by the pure
//! [`classify`]: covered, hidden in its grace period, not covered or past
//! its grace period (the violations), or not absync's at all.
//!
//! `absync audit` runs [`audit`]; every full run runs [`check_run`] after
//! its changes and journals what it found as one `compliance` record,
//! which [`last_check`] reads back for `status` and the metrics.
//!
//! **Invariant:** the check only reads the target and the state.

mod classify;

pub use classify::{Class, Finding, Listed, Policy, Seen, Tally, MAX_LISTED, PERSON_ATTRIBUTES};

use time::OffsetDateTime;

use crate::config::Config;
use crate::engine::cx::{load_inputs, Inputs, RunCx, CHANGES_DONE};
use crate::engine::outcome::RunError;
use crate::ldap::{values_of, Conn};
use crate::state::journal::Record;
use crate::state::runs::Counts;
use crate::state::{Attrs, ReadFrom, Snapshot, StateError};

/// The journal operation of a check's record.
pub const OP: &str = "compliance";

/// `absync audit`: connects to the target with the configured account,
/// checks that the containers exist, and judges every object in them by
/// the agreements in force today (closed organisations out, when their
/// status is configured), handing each finding to `on`. Writes
/// nothing, to the target or the state (opened read-only, as every reader
/// does; with no state yet, nothing in the OUs has a row).
pub async fn audit(
    cfg: &Config,
    on: &mut dyn FnMut(&Finding) -> Result<(), RunError>,
) -> Result<Tally, RunError> {
    let mut inputs = load_inputs(cfg)?;
    // A closed organisation is covered by no agreement, as in a run.
    crate::engine::organisations::settle(cfg, &mut inputs.agreements).await?;
    let snapshot = match Snapshot::open_read_only(&cfg.state_dir, ReadFrom::Live) {
        Err(StateError::Missing { .. }) => None,
        opened => Some(opened?),
    };
    let mut conn = Conn::connect(&cfg.target.endpoint).await?;
    for (what, dn) in cfg.containers() {
        if conn.read(dn, &["1.1"]).await?.is_none() {
            return Err(RunError::MissingContainer {
                what,
                dn: dn.to_string(),
                url: conn.url().to_string(),
            });
        }
    }
    let tally = check(
        &mut conn,
        cfg,
        &inputs,
        snapshot.as_ref(),
        OffsetDateTime::now_utc(),
        on,
    )
    .await;
    conn.unbind().await;
    tally
}

/// Reads every object directly in the managed OU and the quarantine OU,
/// judges each (with the state's row for absync's, if there is a state),
/// hands the finding to `on`, and returns the tally.
pub async fn check(
    conn: &mut Conn,
    cfg: &Config,
    inputs: &Inputs,
    snapshot: Option<&Snapshot>,
    now: OffsetDateTime,
    on: &mut dyn FnMut(&Finding) -> Result<(), RunError>,
) -> Result<Tally, RunError> {
    let target = &cfg.target;
    let policy = Policy::new(
        &inputs.agreements,
        &inputs.mapping,
        &cfg.source.org_attribute,
        &cfg.source.anchor_attribute,
        &target.anchor_attribute,
        cfg.safety.delete_grace,
        now,
    );
    let containers: Vec<&str> = cfg.containers().into_iter().map(|(_, dn)| dn).collect();
    let normal: Vec<String> = containers.iter().map(|c| crate::dn::normalize(c)).collect();
    let attrs = attributes_to_read(cfg, inputs);
    let mut tally = Tally::default();
    for base in containers {
        let mut search = conn
            .paged_search(
                base,
                ldap3::Scope::OneLevel,
                "(objectClass=*)",
                attrs.clone(),
                500,
            )
            .await?;
        while let Some(e) = search.next().await? {
            // The quarantine OU may sit in the managed OU: a container,
            // not an object.
            if normal.contains(&crate::dn::normalize(&e.dn)) {
                continue;
            }
            let anchor = values_of(&e, &target.anchor_attribute)
                .iter()
                .find_map(|v| v.strip_prefix(&target.anchor_prefix).map(str::to_string));
            let row = match (&anchor, snapshot) {
                (Some(a), Some(s)) => s.get(a)?,
                _ => None,
            };
            let seen = Seen {
                dn: e.dn,
                anchor,
                attrs: e.attrs.into_iter().collect::<Attrs>(),
            };
            let finding = policy.judge(&seen, row.as_ref());
            tally.add(&finding);
            on(&finding)?;
        }
        search.finish().await?;
    }
    Ok(tally)
}

/// The mapping's target attributes, the RDN and `[hide]` attributes, the
/// anchor attribute, and the attributes that hold person data on contacts.
fn attributes_to_read(cfg: &Config, inputs: &Inputs) -> Vec<String> {
    let m = &inputs.mapping;
    let mut names: Vec<String> = m.rules.iter().map(|r| r.target.clone()).collect();
    names.push(m.rdn_attribute.clone());
    names.extend(m.hide.as_ref().map(|(a, _)| a.clone()));
    names.push(cfg.target.anchor_attribute.clone());
    names.extend(PERSON_ATTRIBUTES.iter().map(|a| a.to_string()));
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.to_lowercase()));
    names
}

/// At the end of a full run, after its changes: the check, journaled as
/// one `compliance` record (outcome `ok` or `violation`, the counts per
/// class and the violations by anchor in its detail; `failed`, with the
/// error, when the target could not be read: the run itself is done). A
/// stop asked for during the check ends the run as interrupted.
pub(crate) async fn check_run(
    cx: &RunCx<'_>,
    conn: &mut Conn,
    counts: &Counts,
) -> Result<(), RunError> {
    let now = OffsetDateTime::now_utc();
    let mut stop = |_: &Finding| cx.opts.stop_point(counts, CHANGES_DONE);
    let record = match check(conn, cx.cfg, cx.inputs, Some(cx.snapshot), now, &mut stop).await {
        Ok(tally) => {
            let outcome = if tally.violation_count() > 0 {
                tracing::warn!("compliance: {}", tally.text());
                "violation"
            } else {
                tracing::info!("compliance: {}", tally.text());
                "ok"
            };
            let mut r = Record::new(cx.run_id, OP, outcome, &tally.text());
            let mut detail = serde_json::to_value(&tally).unwrap_or_default();
            detail["containers"] = serde_json::json!(cx
                .cfg
                .containers()
                .into_iter()
                .map(|(_, dn)| dn)
                .collect::<Vec<_>>());
            r.detail = Some(detail);
            r
        }
        Err(RunError::Ldap(e)) => {
            tracing::warn!("compliance: the check could not read the target: {e}");
            let mut r = Record::new(
                cx.run_id,
                OP,
                "failed",
                "the compliance check could not read the target",
            );
            r.error = Some(e.to_string());
            r
        }
        Err(e) => return Err(e),
    };
    cx.snapshot.journal(&[record])?;
    Ok(())
}

/// The latest check a full run journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCheck {
    pub run_id: i64,
    /// When it was journaled.
    pub at: String,
    /// `ok`, `violation` or `failed`.
    pub outcome: String,
    /// What it found (`None` when it could not read the target).
    pub tally: Option<Tally>,
    /// Why it could not read the target.
    pub error: Option<String>,
}

/// The latest check among the last 100 full runs, if any.
pub fn last_check(snapshot: &Snapshot) -> Result<Option<LastCheck>, StateError> {
    Ok(snapshot.latest_in_runs("full", OP, 100)?.map(|s| {
        let r = s.record;
        LastCheck {
            run_id: r.run_id,
            at: s.at,
            tally: (r.outcome != "failed")
                .then(|| r.detail.and_then(|d| serde_json::from_value(d).ok()))
                .flatten(),
            outcome: r.outcome,
            error: r.error,
        }
    }))
}
