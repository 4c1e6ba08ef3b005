//! The runs table: one row per run, written in the same transaction as the
//! run's start and end records, and the journal's reads by run.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::os::Who;
use crate::seal::Signer;
use crate::state::journal::{
    append, append_at, append_seal, head, log_sealed, now, stored_from_row, Record, Stored,
};
use crate::state::{Snapshot, StateError};

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
    /// Forgets what a pull read (a delta abandoned for a full pull), keeping
    /// what was written.
    pub fn reset_pull(&mut self) {
        self.pulled = 0;
        self.in_scope = 0;
        self.out_of_scope = 0;
        self.leavers = 0;
        self.dropped_attributes = 0;
        self.rejected = 0;
    }

    /// What the run adds to the metrics' totals.
    pub fn tally(&self) -> crate::state::totals::Tally {
        crate::state::totals::Tally {
            applied: [
                self.added,
                self.modified,
                self.renamed,
                self.deleted,
                self.hidden,
                self.restored,
            ],
            failed: self.failed,
            withheld: self.withheld,
            conflicts: self.conflicts,
        }
    }

    pub fn writes(&self) -> u64 {
        self.added + self.modified + self.renamed + self.deleted + self.hidden + self.restored
    }
}

/// SHA-256 of the files in force for a run (never of a password file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileHashes {
    pub config: String,
    pub mapping: String,
    pub agreements: String,
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
    pub files: FileHashes,
    pub unix_user: String,
    pub head_hash: Option<String>,
}

impl Run {
    /// How long the run took; `None` while it runs (or if it was killed).
    pub fn seconds(&self) -> Option<f64> {
        let f = &time::format_description::well_known::Rfc3339;
        let start = time::OffsetDateTime::parse(&self.started_at, f).ok()?;
        let end = time::OffsetDateTime::parse(self.ended_at.as_deref()?, f).ok()?;
        Some((end - start).as_seconds_f64())
    }
}

impl Snapshot {
    /// Opens a run: its row in `runs` (status "running" until
    /// [`Self::end_run`], so a run killed midway shows as such) and its
    /// chained start record with the hashes of the files in force and who
    /// ran it (named, and as uid and login uid).
    pub fn start_run(&self, mode: &str, files: &FileHashes) -> Result<i64, StateError> {
        let who = Who::me();
        let db = |e| self.db_err(e);
        let tx = self.conn.unchecked_transaction().map_err(db)?;
        let at = now();
        tx.execute(
            "INSERT INTO runs (started_at, mode, status, config_hash, mapping_hash,
                               agreements_hash, unix_user)
             VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?6)",
            params![
                at,
                mode,
                files.config,
                files.mapping,
                files.agreements,
                who.text
            ],
        )
        .map_err(db)?;
        let id = tx.last_insert_rowid();
        let mut r = Record::new(id, "run", "started", mode);
        r.detail = Some(serde_json::json!({
            "config_hash": files.config,
            "mapping_hash": files.mapping,
            "agreements_hash": files.agreements,
            "unix_user": who.text,
            "uid": who.uid,
            "login_uid": who.login_uid,
        }));
        append_at(&tx, &r, &at).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(id)
    }

    /// Closes a run: its chained end record (status, counts), then its row,
    /// with the journal's head hash, which is also logged so an auditor can
    /// keep an independent copy.
    /// Ends a run: its end record and runs row in one transaction, and,
    /// with a signing key, the signed head after them.
    pub fn end_run(
        &self,
        run_id: i64,
        status: &str,
        counts: &Counts,
        signer: Option<&Signer>,
    ) -> Result<String, StateError> {
        let db = |e| self.db_err(e);
        let tx = self.conn.unchecked_transaction().map_err(db)?;
        let mut r = Record::new(run_id, "run", "ended", status);
        r.detail = Some(serde_json::json!({ "status": status, "counts": counts }));
        let at = now();
        append_at(&tx, &r, &at).map_err(db)?;
        let (head_id, head_hash) = head(&tx).map_err(db)?;
        tx.execute(
            "UPDATE runs SET ended_at = ?1, status = ?2, counts = ?3, head_hash = ?4 WHERE id = ?5",
            params![
                at,
                status,
                serde_json::to_string(counts).unwrap_or_default(),
                head_hash,
                run_id
            ],
        )
        .map_err(db)?;
        crate::state::totals::add_run(&tx, run_id, status, &counts.tally(), &at).map_err(db)?;
        let sealed = match signer {
            Some(signer) => Some(append_seal(&tx, signer, run_id, &at).map_err(db)?),
            None => None,
        };
        tx.commit().map_err(db)?;
        match &sealed {
            Some(s) => log_sealed(run_id, s),
            None => {
                tracing::info!(run_id, head_record = head_id, head_hash = %head_hash, "journal head")
            }
        }
        Ok(head_hash)
    }

    /// Signs the head of the journal now (after records written outside a
    /// run, such as a reload's).
    pub fn seal(&self, signer: &Signer, run_id: i64) -> Result<(), StateError> {
        let db = |e| self.db_err(e);
        let tx = self.conn.unchecked_transaction().map_err(db)?;
        let sealed = append_seal(&tx, signer, run_id, &now()).map_err(db)?;
        tx.commit().map_err(db)?;
        log_sealed(run_id, &sealed);
        Ok(())
    }

    /// Appends records outside an object change (conflicts, rejections).
    pub fn journal(&self, records: &[Record]) -> Result<(), StateError> {
        let db = |e| self.db_err(e);
        let tx = self.conn.unchecked_transaction().map_err(db)?;
        for r in records {
            append(&tx, r).map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// Stored records matching an SQL condition on `journal`, in order.
    pub fn stored_where(
        &self,
        cond: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Stored>, StateError> {
        let mut out = Vec::new();
        self.each_where(cond, args, &mut |s| {
            out.push(s);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` for each stored record matching an SQL condition, in order,
    /// without holding them all in memory.
    pub fn each_where(
        &self,
        cond: &str,
        args: &[&dyn rusqlite::ToSql],
        f: &mut dyn FnMut(Stored) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT id, at, run_id, anchor, dn, old_dn, op, outcome, reason, agreements,
                        changes, error, org, state, detail, prev_hash, hash
                 FROM journal WHERE {cond} ORDER BY id"
            ))
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map(args, stored_from_row)
            .map_err(|e| self.db_err(e))?;
        for row in rows {
            f(row.map_err(|e| self.db_err(e))?)?;
        }
        Ok(())
    }

    /// The object records of a run (not its start and end), in order.
    pub fn records(&self, run_id: i64) -> Result<Vec<Record>, StateError> {
        Ok(self
            .stored_where("run_id = ?1 AND op != 'run'", &[&run_id])?
            .into_iter()
            .map(|s| s.record)
            .collect())
    }

    /// When the latest full run that went to its end started. Entry
    /// failures and held deletes do not matter (the reconcile was done); a
    /// run that could not run or was interrupted (`failed: ...`) does not
    /// count.
    pub fn last_full_run(&self) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT started_at FROM runs
                 WHERE mode = 'full' AND ended_at IS NOT NULL AND status NOT LIKE 'failed%'
                 ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db_err(e))
    }

    /// The latest record of operation `op` written by one of the last
    /// `within` runs of mode `mode` (`full`), looked for run by run, newest
    /// first, through the index on the run.
    pub fn latest_in_runs(
        &self,
        mode: &str,
        op: &str,
        within: u32,
    ) -> Result<Option<Stored>, StateError> {
        let ids: Vec<i64> = self
            .conn
            .prepare_cached("SELECT id FROM runs WHERE mode = ?1 ORDER BY id DESC LIMIT ?2")
            .and_then(|mut s| {
                s.query_map(params![mode, within], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(|e| self.db_err(e))?;
        for id in ids {
            if let Some(s) = self
                .stored_where("run_id = ?1 AND op = ?2", &[&id, &op])?
                .pop()
            {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    /// The most recent runs, newest first.
    pub fn runs(&self, limit: u32) -> Result<Vec<Run>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, started_at, ended_at, mode, status, counts, config_hash,
                        mapping_hash, agreements_hash, unix_user, head_hash
                 FROM runs ORDER BY id DESC LIMIT ?1",
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
                    files: FileHashes {
                        config: r.get(6)?,
                        mapping: r.get::<_, Option<String>>(7)?.unwrap_or_default(),
                        agreements: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
                    },
                    unix_user: r.get(9)?,
                    head_hash: r.get(10)?,
                })
            })
            .map_err(|e| self.db_err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db_err(e))
    }
}
