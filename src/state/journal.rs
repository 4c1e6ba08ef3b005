//! Stage 6, journal: one record for every change applied to, refused by, or
//! withheld from the target, and one row per run. Appended only.
//!
//! Each record names the run, the time, the anchor, the target DN, the
//! organisation, the operation, the attributes with old and new values, the
//! object as held after the change, the agreements that authorised it and
//! the reason. Runs start and end with a record of their own (op `run`).
//!
//! **Tamper evidence:** every record stores `hash = SHA-256(prev_hash, its
//! canonical content)`, chained over the whole journal; [`crate::state::audit`]
//! verifies it. Passwords never reach it: nothing here takes a
//! [`crate::secret::Secret`].

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state::{ObjectRow, Snapshot, StateError};

/// The `prev_hash` of the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    /// The person's organisation (ODS code), when known.
    #[serde(default)]
    pub org: Option<String>,
    /// The object as held in the target after this change (none after a
    /// delete): what `journal held` reconstructs from.
    #[serde(default)]
    pub state: Option<ObjectRow>,
    /// Run records: hashes of the files in force, the user, status, counts.
    #[serde(default)]
    pub detail: Option<serde_json::Value>,
}

impl Record {
    pub fn new(run_id: i64, op: &str, outcome: &str, reason: &str) -> Record {
        Record {
            run_id,
            anchor: None,
            dn: None,
            old_dn: None,
            op: op.into(),
            outcome: outcome.into(),
            reason: reason.into(),
            agreements: Vec::new(),
            changes: BTreeMap::new(),
            error: None,
            org: None,
            state: None,
            detail: None,
        }
    }
}

/// A record as stored: its place in the chain, its time, its hashes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stored {
    pub id: i64,
    pub at: String,
    #[serde(flatten)]
    pub record: Record,
    pub prev_hash: String,
    pub hash: String,
}

/// The canonical content of a record, as hashed: a JSON array of every
/// field in a fixed order (maps are sorted).
pub fn canonical(id: i64, at: &str, r: &Record) -> String {
    serde_json::json!([
        id,
        r.run_id,
        at,
        r.anchor,
        r.dn,
        r.old_dn,
        r.op,
        r.outcome,
        r.reason,
        r.agreements,
        r.changes,
        r.error,
        r.org,
        r.state,
        r.detail,
    ])
    .to_string()
}

pub fn chain_hash(prev: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    format!("{:x}", h.finalize())
}

/// The real user id of this process (from /proc/self/status).
pub fn current_uid() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
}

/// The name /etc/passwd gives a user id, or `uid N`.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The Unix user running absync: the one who ran `sudo`, if any, else the
/// owner of this process as /etc/passwd names it.
pub fn unix_user() -> String {
    if let Ok(u) = std::env::var("SUDO_USER") {
        return u;
    }
    match current_uid() {
        Some(uid) => user_name(uid),
        None => std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
    }
}

pub fn now() -> String {
    time_text(time::OffsetDateTime::now_utc())
}

/// A time as the journal stores it: RFC 3339 in UTC with exactly six
/// fractional digits, so that stored times and query bounds compare
/// correctly as text (`…:05Z` would sort after `…:05.5Z`).
pub fn time_text(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .unwrap_or_default()
}

/// The last record's id and hash (the chain's head); after a prune that
/// left nothing, the pruned head recorded in `journal_meta`.
pub(crate) fn head(conn: &Connection) -> rusqlite::Result<(i64, String)> {
    if let Some(h) = conn
        .prepare_cached("SELECT id, hash FROM journal ORDER BY id DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
    {
        return Ok(h);
    }
    let meta = |k: &str| -> rusqlite::Result<Option<String>> {
        conn.query_row("SELECT value FROM journal_meta WHERE key = ?1", [k], |r| {
            r.get(0)
        })
        .optional()
    };
    Ok((
        meta("pruned_id")?.and_then(|v| v.parse().ok()).unwrap_or(0),
        meta("pruned_hash")?.unwrap_or_else(|| GENESIS.to_string()),
    ))
}

/// Recomputes the chain over every record in id order (used once, when a
/// journal from before the chain is upgraded).
pub(crate) fn rechain(conn: &Connection) -> rusqlite::Result<()> {
    let rows: Vec<Stored> = {
        let mut stmt = conn.prepare(
            "SELECT id, at, run_id, anchor, dn, old_dn, op, outcome, reason, agreements,
                    changes, error, org, state, detail, prev_hash, hash
             FROM journal ORDER BY id",
        )?;
        let rows = stmt.query_map([], stored_from_row)?;
        rows.collect::<Result<_, _>>()?
    };
    let mut prev = GENESIS.to_string();
    for s in rows {
        let hash = chain_hash(&prev, &canonical(s.id, &s.at, &s.record));
        conn.execute(
            "UPDATE journal SET prev_hash = ?1, hash = ?2, mail = ?3 WHERE id = ?4",
            params![prev, hash, mail_of(&s.record), s.id],
        )?;
        prev = hash;
    }
    Ok(())
}

/// The person's mail address a record mentions (lower-case), for lookups.
fn mail_of(r: &Record) -> Option<String> {
    r.state
        .as_ref()
        .and_then(|s| s.attrs.get("mail"))
        .and_then(|v| v.first())
        .or_else(|| {
            r.changes
                .get("mail")
                .and_then(|c| c.new.first().or(c.old.first()))
        })
        .map(|m| m.to_lowercase())
}

/// Appends a record at the head of the chain. Call inside the transaction
/// that makes the change it records.
pub(crate) fn append(conn: &Connection, r: &Record) -> rusqlite::Result<()> {
    append_at(conn, r, &now())
}

/// [`append`] with the record's time given: a run's start and end records
/// carry the same time as its row in `runs`.
fn append_at(conn: &Connection, r: &Record, at: &str) -> rusqlite::Result<()> {
    let (last_id, prev) = head(conn)?;
    let id = last_id + 1;
    let hash = chain_hash(&prev, &canonical(id, at, r));
    conn.prepare_cached(
        "INSERT INTO journal (id, run_id, at, anchor, dn, old_dn, op, outcome, reason, agreements,
                              changes, error, org, state, detail, prev_hash, hash, mail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?
    .execute(params![
        id,
        r.run_id,
        at,
        r.anchor,
        r.dn,
        r.old_dn,
        r.op,
        r.outcome,
        r.reason,
        serde_json::to_string(&r.agreements).unwrap_or_default(),
        serde_json::to_string(&r.changes).unwrap_or_default(),
        r.error,
        r.org,
        r.state.as_ref().and_then(|s| serde_json::to_string(s).ok()),
        r.detail.as_ref().map(|d| d.to_string()),
        prev,
        hash,
        mail_of(r),
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

/// Decodes a journal row selected with the columns `stored_where` names.
pub(crate) fn stored_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    let json = |i: usize| -> rusqlite::Result<Option<String>> { r.get(i) };
    Ok(Stored {
        id: r.get(0)?,
        at: r.get(1)?,
        record: Record {
            run_id: r.get(2)?,
            anchor: r.get(3)?,
            dn: r.get(4)?,
            old_dn: r.get(5)?,
            op: r.get(6)?,
            outcome: r.get(7)?,
            reason: r.get(8)?,
            agreements: json(9)?
                .and_then(|v| serde_json::from_str(&v).ok())
                .unwrap_or_default(),
            changes: json(10)?
                .and_then(|v| serde_json::from_str(&v).ok())
                .unwrap_or_default(),
            error: r.get(11)?,
            org: r.get(12)?,
            state: json(13)?.and_then(|v| serde_json::from_str(&v).ok()),
            detail: json(14)?.and_then(|v| serde_json::from_str(&v).ok()),
        },
        prev_hash: r.get::<_, Option<String>>(15)?.unwrap_or_default(),
        hash: r.get::<_, Option<String>>(16)?.unwrap_or_default(),
    })
}

impl Snapshot {
    /// Opens a run: its row in `runs` (status "running" until
    /// [`Self::end_run`], so a run killed midway shows as such) and its
    /// chained start record with the hashes of the files in force.
    pub fn start_run(&self, mode: &str, files: &FileHashes) -> Result<i64, StateError> {
        let user = unix_user();
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
                user
            ],
        )
        .map_err(db)?;
        let id = tx.last_insert_rowid();
        let mut r = Record::new(id, "run", "started", mode);
        r.detail = Some(serde_json::json!({
            "config_hash": files.config,
            "mapping_hash": files.mapping,
            "agreements_hash": files.agreements,
            "unix_user": user,
        }));
        append_at(&tx, &r, &at).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(id)
    }

    /// Closes a run: its chained end record (status, counts), then its row,
    /// with the journal's head hash, which is also logged so an auditor can
    /// keep an independent copy.
    pub fn end_run(
        &self,
        run_id: i64,
        status: &str,
        counts: &Counts,
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
        tx.commit().map_err(db)?;
        tracing::info!(run_id, head_record = head_id, head_hash = %head_hash, "journal head");
        Ok(head_hash)
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
