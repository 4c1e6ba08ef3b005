//! Stage 6, journal: one record for every change applied to, refused by, or
//! withheld from the target, and one row per run. Appended only.
//!
//! Each record names the run, the time, the anchor, the target DN, the
//! operation, the attributes with old and new values, the agreements that
//! authorised it and the reason. Passwords never reach it: nothing here
//! takes a [`crate::secret::Secret`].

use std::collections::BTreeMap;

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::snapshot::{Snapshot, StateError};

/// Old and new values of one attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrChange {
    pub old: Vec<String>,
    pub new: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub run_id: i64,
    pub anchor: Option<String>,
    pub dn: Option<String>,
    pub old_dn: Option<String>,
    /// add, modify, rename, delete, conflict, reject
    pub op: String,
    /// applied, failed, withheld
    pub outcome: String,
    /// new entry, attributes changed, renamed, deleted from source, leaver,
    /// left scope, organisation removed, agreement expired, conflict, ...
    pub reason: String,
    pub agreements: Vec<String>,
    pub changes: BTreeMap<String, AttrChange>,
    pub error: Option<String>,
}

/// The Unix user running absync (the one who ran `sudo`, if any).
pub fn unix_user() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub(crate) fn append(conn: &Connection, r: &Record) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO journal (run_id, at, anchor, dn, old_dn, op, outcome, reason, agreements,
                              changes, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        r.run_id,
        now(),
        r.anchor,
        r.dn,
        r.old_dn,
        r.op,
        r.outcome,
        r.reason,
        serde_json::to_string(&r.agreements).unwrap_or_default(),
        serde_json::to_string(&r.changes).unwrap_or_default(),
        r.error,
    ])?;
    Ok(())
}

/// Counts shown in the summary and stored with the run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    pub pulled: u64,
    pub in_scope: u64,
    pub out_of_scope: u64,
    pub leavers: u64,
    pub dropped_attributes: u64,
    pub rejected: u64,
    pub added: u64,
    pub modified: u64,
    pub renamed: u64,
    pub deleted: u64,
    /// Hidden for their grace period (soft deletes).
    pub hidden: u64,
    /// Brought back from hiding.
    pub restored: u64,
    /// Deletes and hides held back by a safety rail.
    pub withheld: u64,
    /// Differences between the snapshot and the live target (full runs).
    pub drift: u64,
    pub conflicts: u64,
    pub failed: u64,
    pub recovered: u64,
}

impl Counts {
    pub fn writes(&self) -> u64 {
        self.added + self.modified + self.renamed + self.deleted + self.hidden + self.restored
    }
}

/// One row of the runs table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    pub id: i64,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub mode: String,
    pub status: String,
    pub counts: Option<Counts>,
}

impl Snapshot {
    /// Opens a run's row; its status stays "running" until [`Self::end_run`],
    /// so a run killed midway is visible as such.
    pub fn start_run(&self, mode: &str, config_hash: &str) -> Result<i64, StateError> {
        let user = unix_user();
        self.conn
            .execute(
                "INSERT INTO runs (started_at, mode, status, config_hash, unix_user)
                 VALUES (?1, ?2, 'running', ?3, ?4)",
                params![now(), mode, config_hash, user],
            )
            .map_err(|e| self.db_err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn end_run(&self, run_id: i64, status: &str, counts: &Counts) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE runs SET ended_at = ?1, status = ?2, counts = ?3 WHERE id = ?4",
                params![
                    now(),
                    status,
                    serde_json::to_string(counts).unwrap_or_default(),
                    run_id
                ],
            )
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Appends records outside an object change (conflicts, rejections).
    pub fn journal(&self, records: &[Record]) -> Result<(), StateError> {
        for r in records {
            append(&self.conn, r).map_err(|e| self.db_err(e))?;
        }
        Ok(())
    }

    /// Every record of a run, in order.
    pub fn records(&self, run_id: i64) -> Result<Vec<Record>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT run_id, anchor, dn, old_dn, op, outcome, reason, agreements, changes, error
                 FROM journal WHERE run_id = ?1 ORDER BY id",
            )
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([run_id], |r| {
                Ok(Record {
                    run_id: r.get(0)?,
                    anchor: r.get(1)?,
                    dn: r.get(2)?,
                    old_dn: r.get(3)?,
                    op: r.get(4)?,
                    outcome: r.get(5)?,
                    reason: r.get(6)?,
                    agreements: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or_default(),
                    changes: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
                    error: r.get(9)?,
                })
            })
            .map_err(|e| self.db_err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db_err(e))
    }

    /// The most recent runs, newest first.
    pub fn runs(&self, limit: u32) -> Result<Vec<Run>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, started_at, ended_at, mode, status, counts FROM runs
                 ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok(Run {
                    id: r.get(0)?,
                    started_at: r.get(1)?,
                    ended_at: r.get(2)?,
                    mode: r.get(3)?,
                    status: r.get(4)?,
                    counts: r
                        .get::<_, Option<String>>(5)?
                        .and_then(|c| serde_json::from_str(&c).ok()),
                })
            })
            .map_err(|e| self.db_err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db_err(e))
    }
}
