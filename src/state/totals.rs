//! Running totals for the metrics, kept in `metrics_totals` and updated in
//! the same transaction as a run's end. They only ever grow: pruning the
//! journal (retention) removes runs rows, never these. A scrape reads this
//! small table and the latest run, so its cost does not grow with the
//! journal.
//!
//! Rows are `(metric, a, b, value)`:
//! - `runs`, status (before any `:`), "": runs ended with that status;
//! - `changes`, operation, outcome: objects by operation and outcome;
//! - `last_success`, "", "": end of the last `ok` run (Unix seconds);
//! - `last_completed`, "", "": end of the last run that went to its end
//!   (any status but `failed: ...` and `died`; entry failures and held
//!   deletes count).

use std::collections::BTreeMap;

use rusqlite::{params, Connection, Transaction};

use crate::state::{Snapshot, StateError};

/// Schema version 6: the table (seeded from the runs kept so far), and an
/// index that finds the latest `agreements` record without a scan.
pub(crate) const SCHEMA_V6: &str = "
CREATE TABLE metrics_totals (
    metric TEXT NOT NULL,
    a      TEXT NOT NULL DEFAULT '',
    b      TEXT NOT NULL DEFAULT '',
    value  INTEGER NOT NULL,
    PRIMARY KEY (metric, a, b)
) WITHOUT ROWID;
-- The latest agreements terms (the metrics' valid-until) without a scan.
CREATE INDEX journal_agreements ON journal(id) WHERE op = 'agreements';
";

/// The operations a run writes, as the journal names them.
const OPS: [&str; 6] = ["add", "modify", "rename", "delete", "hide", "restore"];

/// What a run adds to the totals: its counts, as `runs::Counts` has them
/// (`Counts::tally`; this file names no other).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Applied writes, in the order of the operations add, modify, rename,
    /// delete, hide, restore.
    pub applied: [u64; 6],
    pub failed: u64,
    pub withheld: u64,
    pub conflicts: u64,
}

impl Tally {
    /// From the counts as stored with a run (JSON; a missing field is 0).
    fn from_json(text: &str) -> Tally {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Tally {
            applied: [
                n("added"),
                n("modified"),
                n("renamed"),
                n("deleted"),
                n("hidden"),
                n("restored"),
            ],
            failed: n("failed"),
            withheld: n("withheld"),
            conflicts: n("conflicts"),
        }
    }
}

/// What the totals hold, as a scrape reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Runs by status (the part before any `:`).
    pub runs: BTreeMap<String, u64>,
    /// Objects by (operation, outcome).
    pub changes: BTreeMap<(String, String), u64>,
    /// End of the last `ok` run, Unix seconds.
    pub last_success: Option<i64>,
    /// End of the last run that went to its end, Unix seconds.
    pub last_completed: Option<i64>,
}

/// The status's key for `absync_runs_total{status}`.
pub fn status_key(status: &str) -> &str {
    status.split(':').next().unwrap_or("")
}

/// Whether a run with this status went to its end: not one that could
/// not run (`failed: ...`), nor one whose process died (`died`).
pub fn completed(status: &str) -> bool {
    // "died" is `runs::DIED` (named here without importing `runs`, which
    // imports this file).
    !status.starts_with("failed") && !status.starts_with("died")
}

/// The (operation, outcome, count) a run adds to `changes`: applied writes
/// from its counts; failures by operation from its journal records (any
/// the records do not name as `other`); deletes and hides a rail held back
/// as `delete`/`withheld`; entries whose name or mail another object holds
/// as `write`/`conflict`.
fn run_changes(
    conn: &Connection,
    run_id: i64,
    c: &Tally,
) -> rusqlite::Result<Vec<(String, &'static str, u64)>> {
    let mut out: Vec<(String, &'static str, u64)> = OPS
        .iter()
        .zip(c.applied)
        .map(|(op, n)| (op.to_string(), "applied", n))
        .collect();
    let mut stmt = conn.prepare_cached(
        "SELECT op, count(*) FROM journal WHERE run_id = ?1 AND outcome = 'failed'
           AND op IN ('add','modify','rename','delete','hide','restore') GROUP BY op",
    )?;
    let failed: Vec<(String, u64)> = stmt
        .query_map([run_id], |r| {
            Ok((r.get(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let named: u64 = failed.iter().map(|(_, n)| n).sum();
    out.extend(failed.into_iter().map(|(op, n)| (op, "failed", n)));
    out.push(("other".into(), "failed", c.failed.saturating_sub(named)));
    out.push(("delete".into(), "withheld", c.withheld));
    out.push(("write".into(), "conflict", c.conflicts));
    out.retain(|(_, _, n)| *n > 0);
    Ok(out)
}

fn add(conn: &Connection, metric: &str, a: &str, b: &str, n: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO metrics_totals (metric, a, b, value) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (metric, a, b) DO UPDATE SET value = value + excluded.value",
    )?
    .execute(params![metric, a, b, i64::try_from(n).unwrap_or(i64::MAX)])
    .map(|_| ())
}

fn set(conn: &Connection, metric: &str, value: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO metrics_totals (metric, a, b, value) VALUES (?1, '', '', ?2)
         ON CONFLICT (metric, a, b) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![metric, value])
    .map(|_| ())
}

fn epoch(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Adds an ended run to the totals, inside the transaction of its end.
pub(crate) fn add_run(
    tx: &Transaction<'_>,
    run_id: i64,
    status: &str,
    counts: &Tally,
    ended_at: &str,
) -> rusqlite::Result<()> {
    add(tx, "runs", status_key(status), "", 1)?;
    for (op, outcome, n) in run_changes(tx, run_id, counts)? {
        add(tx, "changes", &op, outcome, n)?;
    }
    let at = epoch(ended_at).unwrap_or(0);
    if status == "ok" {
        set(tx, "last_success", at)?;
    }
    if completed(status) {
        set(tx, "last_completed", at)?;
    }
    Ok(())
}

/// Seeds the totals from the runs kept so far (a database from before the
/// totals existed): the counters carry on from what the runs table held.
pub(crate) fn seed(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare(
        "SELECT id, status, counts, ended_at FROM runs WHERE ended_at IS NOT NULL ORDER BY id",
    )?;
    let rows: Vec<(i64, String, Option<String>, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, status, counts, ended_at) in rows {
        let counts = Tally::from_json(counts.as_deref().unwrap_or("{}"));
        add(conn, "runs", status_key(&status), "", 1)?;
        for (op, outcome, n) in run_changes(conn, id, &counts)? {
            add(conn, "changes", &op, outcome, n)?;
        }
        let at = epoch(&ended_at).unwrap_or(0);
        if status == "ok" {
            set(conn, "last_success", at)?;
        }
        if completed(&status) {
            set(conn, "last_completed", at)?;
        }
    }
    Ok(())
}

impl Snapshot {
    /// The totals (read-only; one small table).
    pub fn totals(&self) -> Result<Totals, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT metric, a, b, value FROM metrics_totals")
            .map_err(|e| self.db_err(e))?;
        let rows: Vec<(String, String, String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.db_err(e))?;
        let mut t = Totals::default();
        for (metric, a, b, value) in rows {
            let n = u64::try_from(value).unwrap_or(0);
            match metric.as_str() {
                "runs" => {
                    t.runs.insert(a, n);
                }
                "changes" => {
                    t.changes.insert((a, b), n);
                }
                "last_success" => t.last_success = Some(value),
                "last_completed" => t.last_completed = Some(value),
                _ => {}
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::journal::Record;
    use crate::state::runs::Counts;

    #[test]
    fn totals_grow_with_each_run_and_outlive_the_runs_rows() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(dir.path()).unwrap();
        assert_eq!(s.totals().unwrap(), Totals::default());
        let files = Default::default();
        let counts = Counts {
            added: 3,
            deleted: 1,
            failed: 2,
            withheld: 4,
            ..Default::default()
        };
        for _ in 0..2 {
            let id = s.start_run("sync", &files).unwrap();
            s.journal(&[Record::new(id, "modify", "failed", "x")])
                .unwrap();
            s.end_run(id, "done with failures", &counts, None).unwrap();
        }
        let id = s.start_run("sync", &files).unwrap();
        s.end_run(
            id,
            "failed: cannot reach the source",
            &Counts::default(),
            None,
        )
        .unwrap();
        s.conn.execute("DELETE FROM runs", []).unwrap();
        let t = s.totals().unwrap();
        assert_eq!(t.runs["done with failures"], 2);
        assert_eq!(t.runs["failed"], 1);
        let ch = |op: &str, outcome: &str| t.changes[&(op.to_string(), outcome.to_string())];
        assert_eq!(ch("add", "applied"), 6);
        assert_eq!(ch("delete", "applied"), 2);
        assert_eq!(ch("modify", "failed"), 2);
        assert_eq!(ch("other", "failed"), 2);
        assert_eq!(ch("delete", "withheld"), 8);
        assert!(!t.changes.contains_key(&("rename".into(), "applied".into())));
        assert_eq!(t.last_success, None, "no run was ok");
        assert!(t.last_completed.is_some_and(|at| at > 0));
    }

    #[test]
    fn an_older_database_is_seeded_from_its_runs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(dir.path()).unwrap();
        let id = s.start_run("sync", &Default::default()).unwrap();
        let counts = Counts {
            modified: 5,
            ..Default::default()
        };
        s.end_run(id, "ok", &counts, None).unwrap();
        s.conn
            .execute_batch("DROP TABLE metrics_totals; DROP INDEX journal_agreements;")
            .unwrap();
        s.conn.execute_batch(SCHEMA_V6).unwrap();
        seed(&s.conn).unwrap();
        let t = s.totals().unwrap();
        assert_eq!(t.runs["ok"], 1);
        assert_eq!(t.changes[&("modify".into(), "applied".into())], 5);
        assert_eq!(t.last_success, t.last_completed);
        assert!(t.last_success.is_some());
        let plan: String = s
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT max(id) FROM journal
                 WHERE op = 'agreements' AND at <= '9999'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("journal_agreements"), "{plan}");
    }
}
