//! `absync status`: the state's size, the daemon, and the last runs.

use std::path::Path;
use std::process::ExitCode;

use absync::agreements::Agreements;
use absync::engine::expiry;
use absync::ldap::servers::ServerState;
use absync::service::DaemonStatus;
use absync::state::conflicts::age_text;
use absync::state::runs::Run;
use absync::state::{ReadFrom, Snapshot, StateError, StateLock};
use absync::text::Shown;

use crate::out::outln;
use crate::print;

/// What is managed, what the daemon does, and the last `limit` runs.
/// `ou` is the target OU, when the configuration could be read. The state
/// is opened read-only: nothing in it changes.
pub fn run(
    state_dir: &Path,
    from: ReadFrom,
    ou: Option<&str>,
    limit: u32,
    json: bool,
    warn_days: u32,
) -> anyhow::Result<ExitCode> {
    let snapshot = match Snapshot::open_read_only(state_dir, from) {
        Err(StateError::Missing { .. }) if json => {
            outln!(
                "{}",
                serde_json::json!({ "state_dir": state_dir, "runs": [] })
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        Err(StateError::Missing { .. }) => {
            outln!("state {}: no runs yet", state_dir.display())?;
            return Ok(ExitCode::SUCCESS);
        }
        opened => opened?,
    };
    if json {
        return as_json(&snapshot, state_dir, ou, limit, warn_days);
    }
    let total = snapshot.count()?;
    let visible = snapshot.count_visible()?;
    let size = absync::state::bytes_on_disk(state_dir);
    outln!(
        "state      {} ({:.1} MB)\nmanaged    {visible} objects{}, {} hidden awaiting deletion",
        state_dir.display(),
        size as f64 / 1e6,
        ou.map(|o| format!(" in {o}")).unwrap_or_default(),
        total - visible
    )?;
    match DaemonStatus::read(state_dir) {
        Some(d) => daemon(&d)?,
        None => outln!("daemon     not running; next run not scheduled")?,
    }
    attention(&snapshot, state_dir)?;
    for e in endings(&snapshot, warn_days)? {
        outln!("agreement  {}", Shown(&e.text()))?;
    }
    closed_organisations(&snapshot)?;
    compliance(&snapshot)?;
    conflicts(&snapshot)?;
    runs(&snapshot, state_dir, limit)?;
    Ok(ExitCode::SUCCESS)
}

/// The same as one JSON object on stdout: `state_dir`, `ou`, `managed`,
/// `hidden`, `bytes`, `daemon` (its status file, `null` when none runs;
/// `daemon.servers`: each side's servers as it last saw them),
/// `deletes_held`, `agreements_ending` (id, until, days_left,
/// organisations, contacts) and `runs` (newest first).
fn as_json(
    snapshot: &Snapshot,
    state_dir: &Path,
    ou: Option<&str>,
    limit: u32,
    warn_days: u32,
) -> anyhow::Result<ExitCode> {
    let total = snapshot.count()?;
    let visible = snapshot.count_visible()?;
    let runs = seen_runs(snapshot, state_dir, limit)?;
    let held = runs
        .first()
        .is_some_and(|r| absync::engine::removals::holds_deletes(&r.status));
    let out = serde_json::json!({
        "state_dir": state_dir,
        "ou": ou,
        "managed": visible,
        "hidden": total - visible,
        "bytes": absync::state::bytes_on_disk(state_dir),
        "names_closed": absync::engine::organisations::last(snapshot)?
            .map(|(_, list)| list)
            .unwrap_or_default(),
        "daemon": DaemonStatus::read(state_dir),
        "deletes_held": held,
        "conflicts": conflicts_json(snapshot)?,
        "agreements_ending": endings(snapshot, warn_days)?,
        "runs": runs,
    });
    outln!("{out}")?;
    Ok(ExitCode::SUCCESS)
}

/// The running daemon, as its status file tells.
fn daemon(d: &DaemonStatus) -> std::io::Result<()> {
    let state = if d.state == "running" {
        format!(
            "running since {} ({} entries pulled so far)",
            Shown(&d.since),
            d.progress
        )
    } else {
        format!("idle since {}", Shown(&d.since))
    };
    outln!("daemon     pid {}, {state}", d.pid)?;
    outln!(
        "next run   {}{}",
        Shown(d.next_run.as_deref().unwrap_or("-")),
        if d.next_run_full { " (full)" } else { "" }
    )?;
    if d.consecutive_failures > 0 {
        outln!(
            "failures   {} runs in a row could not run",
            d.consecutive_failures
        )?;
    }
    if let Some(m) = &d.metrics {
        outln!("metrics    http://{}/metrics", Shown(m))?;
    }
    if let Some(e) = &d.config_error {
        outln!(
            "config     REFUSED, still running the previous one: {}",
            Shown(e)
        )?;
    }
    // A line per server, the URLs in one column.
    let url = |s: &ServerState| Shown(&s.url).to_string();
    let sides = d.servers.sides();
    let width = sides
        .iter()
        .flat_map(|(_, list)| list.iter())
        .map(|s| url(s).chars().count())
        .max()
        .unwrap_or(0);
    for (side, list) in sides {
        for (i, s) in list.iter().enumerate() {
            let head = if i == 0 { side } else { "" };
            outln!("{head:<10} {:<width$}  {}", url(s), server_state(s))?;
        }
    }
    Ok(())
}

/// One server as the daemon last saw it: up (in use, its name, when it
/// was checked), down (why, when it was tried), or not tried yet; every
/// value through [`Shown`].
fn server_state(s: &ServerState) -> String {
    let Some(up) = s.up else {
        return "not tried yet".to_string();
    };
    let mut parts = vec![match (up, s.in_use) {
        (true, true) => "up, in use".to_string(),
        (true, false) => "up".to_string(),
        (false, in_use) => format!(
            "DOWN{}: {}",
            if in_use {
                " (the last connection went to it)"
            } else {
                ""
            },
            Shown(s.error.as_deref().unwrap_or("-"))
        ),
    }];
    if let Some(name) = &s.name {
        parts.push(Shown(name).to_string());
    }
    if let Some(at) = &s.checked_at {
        let what = if up { "checked" } else { "tried" };
        parts.push(format!("{what} {}", Shown(&print::short_time(at))));
    }
    parts.join("; ")
}

/// The last `limit` runs, newest first, as a reader shows them: a run
/// still marked running while no process holds the state lock died (status
/// cannot write; the next run records it).
fn seen_runs(snapshot: &Snapshot, state_dir: &Path, limit: u32) -> anyhow::Result<Vec<Run>> {
    let alive = StateLock::holder(state_dir).is_some();
    Ok(snapshot
        .runs(limit)?
        .into_iter()
        .map(|r| r.seen(alive))
        .collect())
}

/// A line when the last run held deletes back for an admin.
fn attention(snapshot: &Snapshot, state_dir: &Path) -> anyhow::Result<()> {
    if let Some(last) = seen_runs(snapshot, state_dir, 1)?.first() {
        if absync::engine::removals::holds_deletes(&last.status) {
            outln!(
                "attention  run {} {}: deletes are waiting for an admin \
                 (absync plan --only deletes; absync resync --allow-deletes N, \
                 or absync sync --allow-deletes N when no daemon runs)",
                last.id,
                Shown(&last.status)
            )?;
        }
    }
    Ok(())
}

/// The agreements of the latest journaled terms (status reads no
/// agreements file) that end within `warn_days` days or have ended, with
/// the contacts absync holds that their end deletes.
fn endings(snapshot: &Snapshot, warn_days: u32) -> anyhow::Result<Vec<expiry::Ending>> {
    let Some(terms) = absync::state::audit::terms_at(snapshot, None)? else {
        return Ok(Vec::new());
    };
    let detail = terms.record.detail.unwrap_or_default();
    let agreements = Agreements::from_terms(&detail["agreements"], absync::agreements::today());
    let mut out = expiry::ending(&agreements, warn_days);
    expiry::count(&mut out, snapshot)?;
    Ok(out)
}

/// A line per agreement that names a closed organisation, as the last run
/// that read the organisations' status found.
fn closed_organisations(snapshot: &Snapshot) -> anyhow::Result<()> {
    let Some((at, list)) = absync::engine::organisations::last(snapshot)? else {
        return Ok(());
    };
    for n in list {
        outln!(
            "warning    {}: its people are out of scope; the agreement may need amending \
             (since {})",
            Shown(&n.to_string()),
            print::short_time(&at)
        )?;
    }
    Ok(())
}

/// What the last full run's compliance check found, and when.
fn compliance(snapshot: &Snapshot) -> anyhow::Result<()> {
    let Some(last) = absync::engine::compliance::last_check(snapshot)? else {
        outln!(
            "compliance not checked yet: every full run checks it (absync sync --full); \
             absync audit checks it now"
        )?;
        return Ok(());
    };
    let when = format!(
        "checked {} by full run {}",
        print::short_time(&last.at),
        last.run_id
    );
    match (&last.tally, &last.error) {
        (Some(t), _) if t.violation_count() > 0 => {
            outln!("compliance {when}: {}; absync audit lists them", t.text())?
        }
        (Some(t), _) => outln!("compliance {when}: {}", t.text())?,
        (None, e) => outln!(
            "compliance {when}: the check could not read the target: {}",
            Shown(e.as_deref().unwrap_or("-"))
        )?,
    }
    Ok(())
}

/// How many open conflicts `status` lists (the oldest).
const CONFLICTS_SHOWN: usize = 5;

/// The open conflicts: how many, and the oldest with their age.
fn conflicts(snapshot: &Snapshot) -> anyhow::Result<()> {
    let open = snapshot.open_conflicts()?;
    if open.is_empty() {
        return Ok(outln!("conflicts  none open")?);
    }
    let now = time::OffsetDateTime::now_utc();
    let more = if open.len() > CONFLICTS_SHOWN {
        format!("; the {CONFLICTS_SHOWN} oldest")
    } else {
        String::new()
    };
    outln!(
        "conflicts  {} open (retried every run; absync journal history ANCHOR tells each){more}:",
        open.len()
    )?;
    for c in open.iter().take(CONFLICTS_SHOWN) {
        outln!(
            "           open {} (since {}, run {})  {}  {}  {} held by {}",
            age_text(c.age_seconds(now)),
            print::short_time(&c.opened_at),
            c.opened_run,
            Shown(&c.anchor),
            Shown(&c.dn),
            Shown(&c.collision.kind),
            Shown(&c.collision.with)
        )?;
    }
    Ok(())
}

/// The open conflicts for `--format json`: `open` (how many),
/// `oldest_age_seconds`, and `oldest` (at most 20, the oldest first, each
/// with its `age_seconds`).
fn conflicts_json(snapshot: &Snapshot) -> anyhow::Result<serde_json::Value> {
    let open = snapshot.open_conflicts()?;
    let now = time::OffsetDateTime::now_utc();
    let oldest: Vec<serde_json::Value> = open
        .iter()
        .take(20)
        .map(|c| {
            let mut v = serde_json::to_value(c).unwrap_or_default();
            v["age_seconds"] = c.age_seconds(now).into();
            v
        })
        .collect();
    Ok(serde_json::json!({
        "open": open.len(),
        "oldest_age_seconds": open.first().map_or(0, |c| c.age_seconds(now)),
        "oldest": oldest,
    }))
}

/// The last `limit` runs, newest first.
fn runs(snapshot: &Snapshot, state_dir: &Path, limit: u32) -> anyhow::Result<()> {
    outln!()?;
    outln!(
        "{:>5}  {:<20}  {:>7}  {:<5}  {:<28}  counts",
        "run",
        "started",
        "secs",
        "mode",
        "status"
    )?;
    for r in seen_runs(snapshot, state_dir, limit)? {
        let secs = r
            .seconds()
            .map(|s| format!("{s:.1}"))
            .unwrap_or_else(|| "-".into());
        let c = r.counts.unwrap_or_default();
        outln!(
            "{:>5}  {:<20}  {:>7}  {:<5}  {:<28}  +{} ~{} >{} -{} hidden {} held {} failed {}",
            r.id,
            print::short_time(&r.started_at),
            secs,
            Shown(&r.mode),
            Shown(print::first_chars(&r.status, 60)),
            c.added,
            c.modified,
            c.renamed,
            c.deleted,
            c.hidden,
            c.withheld,
            c.failed
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(up: Option<bool>, in_use: bool, error: Option<&str>) -> ServerState {
        ServerState {
            url: "ldaps://dc1:636".into(),
            up,
            name: up.map(|_| "CN=NTDS Settings,CN=DC1".into()),
            error: error.map(String::from),
            checked_at: up.map(|_| "2026-11-30T09:00:00.5Z".into()),
            in_use,
        }
    }

    #[test]
    fn a_server_shows_up_down_or_not_tried_with_its_name_and_time() {
        assert_eq!(
            server_state(&state(Some(true), true, None)),
            "up, in use; CN=NTDS Settings,CN=DC1; checked 2026-11-30T09:00:00Z"
        );
        assert_eq!(
            server_state(&state(Some(false), false, Some("refused\u{1b}[2J"))),
            "DOWN: refused\\u{1b}[2J; CN=NTDS Settings,CN=DC1; tried 2026-11-30T09:00:00Z"
        );
        assert_eq!(server_state(&state(None, false, None)), "not tried yet");
    }
}
