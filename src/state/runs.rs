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
    /// Objects left alone because their earlier change waits for the DC it
    /// was sent to.
    pub waiting: u64,
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

/// The status of a run whose process ended before the run did (killed,
/// crashed, the machine stopped), as the next run records it.
pub const DIED: &str = "died";
/// The end record's reason for such a run.
const DIED_WHY: &str = "died: its process ended before the run did (killed, crashed or the \
                        machine stopped); closed by the next run";
/// How a reader shows a row still `running` that no process holds the
/// state lock for: the run died, and the next run will record it.
pub const DIED_UNRECORDED: &str = "died (not yet journaled)";

impl Run {
    /// The run as a reader shows it: a row still `running` while no process
    /// holds the state lock (`writer_alive` false) belongs to a process that
    /// is gone; it shows as [`DIED_UNRECORDED`] until the next run closes it.
    pub fn seen(mut self, writer_alive: bool) -> Run {
        if self.status == "running" && !writer_alive {
            self.status = DIED_UNRECORDED.to_string();
        }
        self
    }

    /// How long the run took; `None` while it runs, or when it died (its
    /// end is when the next run noticed, not when it stopped).
    pub fn seconds(&self) -> Option<f64> {
        if self.status.starts_with(DIED) {
            return None;
        }
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
        let tx = self.write_tx()?;
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

    /// Ends a run: its chained end record (status, counts) and its runs
    /// row, with the journal's head hash, in one transaction, and, with a
    /// signing key, the signed head after them. The head hash is also
    /// logged so an auditor can keep an independent copy.
    pub fn end_run(
        &self,
        run_id: i64,
        status: &str,
        counts: &Counts,
        signer: Option<&Signer>,
    ) -> Result<String, StateError> {
        self.end_run_naming(run_id, status, counts, serde_json::Value::Null, signer)
    }

    /// [`Self::end_run`], the record naming the servers the run used
    /// (`engine::failover::Servers`; null: not known).
    pub fn end_run_naming(
        &self,
        run_id: i64,
        status: &str,
        counts: &Counts,
        servers: serde_json::Value,
        signer: Option<&Signer>,
    ) -> Result<String, StateError> {
        let mut r = Record::new(run_id, "run", "ended", status);
        let mut detail = serde_json::json!({ "status": status, "counts": counts });
        if !servers.is_null() {
            detail["servers"] = servers;
        }
        r.detail = Some(detail);
        self.end_with(r, status, counts, signer)
    }

    /// Closes the runs whose process died: every row still `running`, with
    /// an end record of status [`DIED`], the counts its journal records
    /// show, and when its last record was written. Only a writer holding
    /// the state lock calls this, before it starts its own run: then no
    /// live process can be running any of them. Returns the runs closed.
    pub fn close_dead_runs(&self, signer: Option<&Signer>) -> Result<Vec<i64>, StateError> {
        let db = |e| self.db_err(e);
        let dead: Vec<i64> = self
            .conn
            .prepare("SELECT id FROM runs WHERE status = 'running' ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(db)?;
        let who = Who::me();
        for &id in &dead {
            let (counts, last) = self.counts_from_records(id)?;
            let mut r = Record::new(id, "run", "ended", DIED_WHY);
            r.detail = Some(serde_json::json!({
                "status": DIED,
                "counts": counts,
                "last_record_at": last,
                "closed_by": who.text,
                "closed_by_pid": std::process::id(),
            }));
            self.end_with(r, DIED, &counts, signer)?;
            tracing::warn!(
                run_id = id,
                last_record_at = last.as_deref().unwrap_or("-"),
                "run {id} died before its end (its process was killed or crashed); \
                 closed as {DIED}"
            );
        }
        Ok(dead)
    }

    /// What a run's journal records say it did (applied writes, failures,
    /// conflicts, drift), and the time of its last record.
    fn counts_from_records(&self, run_id: i64) -> Result<(Counts, Option<String>), StateError> {
        let mut c = Counts::default();
        let mut last = None;
        self.each_where("run_id = ?1 AND op != 'run'", &[&run_id], &mut |s| {
            let r = &s.record;
            let n = match (r.op.as_str(), r.outcome.as_str()) {
                ("add", "applied") => Some(&mut c.added),
                ("modify", "applied") => Some(&mut c.modified),
                ("rename", "applied") => Some(&mut c.renamed),
                ("delete", "applied") => Some(&mut c.deleted),
                ("hide", "applied") => Some(&mut c.hidden),
                ("restore", "applied") => Some(&mut c.restored),
                ("drift", _) => Some(&mut c.drift),
                ("conflict", "withheld") => Some(&mut c.conflicts),
                ("settle", "waiting") => Some(&mut c.waiting),
                (_, "failed") => Some(&mut c.failed),
                _ => None,
            };
            if let Some(n) = n {
                *n += 1;
            }
            last = Some(s.at);
            Ok(())
        })?;
        Ok((c, last))
    }

    /// Appends a run's end record `r` (status `status`) and updates its
    /// row and the metrics' totals in one transaction; signs the head.
    fn end_with(
        &self,
        r: Record,
        status: &str,
        counts: &Counts,
        signer: Option<&Signer>,
    ) -> Result<String, StateError> {
        let run_id = r.run_id;
        let db = |e| self.db_err(e);
        let tx = self.write_tx()?;
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
        let tx = self.write_tx()?;
        let sealed = append_seal(&tx, signer, run_id, &now()).map_err(db)?;
        tx.commit().map_err(db)?;
        log_sealed(run_id, &sealed);
        Ok(())
    }

    /// Appends records outside an object change (conflicts, rejections).
    pub fn journal(&self, records: &[Record]) -> Result<(), StateError> {
        let db = |e| self.db_err(e);
        let tx = self.write_tx()?;
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
    /// run that could not run or was interrupted (`failed: ...`), or whose
    /// process died, does not count.
    pub fn last_full_run(&self) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT started_at FROM runs
                 WHERE mode = 'full' AND ended_at IS NOT NULL AND status NOT LIKE 'failed%'
                   AND status NOT LIKE 'died%'
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::verify::{verify, Evidence, Verdict};

    #[test]
    fn a_run_left_running_is_closed_as_died_with_what_its_records_show() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(dir.path()).unwrap();
        let files = FileHashes::default();
        let ok = s.start_run("full", &files).unwrap();
        s.end_run(ok, "ok", &Counts::default(), None).unwrap();
        // A full run killed after an add and a failed modify.
        let dead = s.start_run("full", &files).unwrap();
        s.journal(&[
            Record::new(dead, "add", "applied", "new entry"),
            Record::new(dead, "modify", "failed", "attributes changed"),
        ])
        .unwrap();
        let row = |id: i64| {
            s.runs(10)
                .unwrap()
                .into_iter()
                .find(|r| r.id == id)
                .unwrap()
        };
        assert_eq!(row(dead).clone().seen(true).status, "running");
        assert_eq!(row(dead).seen(false).status, DIED_UNRECORDED);

        assert_eq!(s.close_dead_runs(None).unwrap(), [dead]);
        let r = row(dead);
        assert_eq!(r.status, DIED);
        assert!(r.ended_at.is_some() && r.seconds().is_none());
        let c = r.counts.unwrap();
        assert_eq!((c.added, c.failed, c.modified), (1, 1, 0));
        let end = s
            .stored_where("run_id = ?1 AND op = 'run' AND outcome = 'ended'", &[&dead])
            .unwrap();
        assert_eq!(end.len(), 1);
        assert!(end[0].record.reason.starts_with("died: "));
        assert!(end[0].record.detail.as_ref().unwrap()["last_record_at"].is_string());
        // The journal still verifies; nothing is left to close; a died run
        // counts in the totals as died, never as completed or as the last
        // full run.
        assert!(matches!(
            verify(&s, &Evidence::default()).unwrap(),
            Verdict::Intact { .. }
        ));
        assert!(s.close_dead_runs(None).unwrap().is_empty());
        let t = s.totals().unwrap();
        assert_eq!((t.runs["died"], t.runs["ok"]), (1, 1));
        assert_eq!(t.last_completed, t.last_success);
        let ok_started = row(ok).started_at;
        assert_eq!(s.last_full_run().unwrap(), Some(ok_started));
    }
}
