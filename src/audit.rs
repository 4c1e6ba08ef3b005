//! The auditor's side of the journal: verify the hash chain, answer
//! questions (runs, one run, one person's history, what was held on a day,
//! everything under one agreement, when the configuration changed), export,
//! and prune past the retention period without breaking the chain.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::journal::{canonical, chain_hash, stored_from_row, Record, Run, Stored, GENESIS};
use crate::snapshot::{ObjectRow, Snapshot, StateError};

const COLUMNS: &str = "id, at, run_id, anchor, dn, old_dn, op, outcome, reason, agreements,
                       changes, error, org, state, detail, prev_hash, hash";

/// Operations that change what is held in the target (and so the state a
/// record carries), as `held` replays them.
const STATE_OPS: &str = "op IN ('add','modify','rename','hide','restore','delete','drift') \
                         AND outcome IN ('applied','already absent','detected')";

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Intact { records: u64 },
    Broken { record: i64, why: String },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Intact { records } => write!(f, "intact, {records} records"),
            Verdict::Broken { record, why } => write!(f, "BROKEN at record {record}: {why}"),
        }
    }
}

fn meta(s: &Snapshot, key: &str) -> Result<Option<String>, StateError> {
    s.conn
        .query_row(
            "SELECT value FROM journal_meta WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| s.db_err(e))
}

/// Recomputes the chain from the first record kept and reports the first
/// record that does not fit: edited (content and hash disagree), deleted or
/// reordered (ids or links do not follow), or a runs row that differs from
/// its journaled end record.
pub fn verify(s: &Snapshot) -> Result<Verdict, StateError> {
    let mut expected_prev = meta(s, "pruned_hash")?.unwrap_or_else(|| GENESIS.to_string());
    let mut expected_id: i64 = meta(s, "pruned_id")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        + 1;
    let runs: HashMap<i64, Run> = s.runs(u32::MAX)?.into_iter().map(|r| (r.id, r)).collect();
    let last_head = runs
        .values()
        .max_by_key(|r| r.id)
        .and_then(|r| r.head_hash.clone());
    let mut head_seen = last_head.is_none();
    let mut stmt = s
        .conn
        .prepare(&format!("SELECT {COLUMNS} FROM journal ORDER BY id"))
        .map_err(|e| s.db_err(e))?;
    let rows = stmt
        .query_map([], stored_from_row)
        .map_err(|e| s.db_err(e))?;
    let mut n = 0u64;
    for row in rows {
        let row = row.map_err(|e| s.db_err(e))?;
        let broken = |why: String| {
            Ok(Verdict::Broken {
                record: row.id,
                why,
            })
        };
        if row.id != expected_id {
            return Ok(Verdict::Broken {
                record: expected_id,
                why: format!(
                    "record {expected_id} is missing; the next is {} (deleted or reordered)",
                    row.id
                ),
            });
        }
        if row.prev_hash != expected_prev {
            return broken(
                "its link to the previous record does not match (a record before it was \
                 deleted, inserted or reordered)"
                    .into(),
            );
        }
        let recomputed = chain_hash(&row.prev_hash, &canonical(row.id, &row.at, &row.record));
        if recomputed != row.hash {
            return broken("its content does not match its hash (edited)".into());
        }
        let r = &row.record;
        if r.op == "run" && r.outcome == "ended" {
            if let (Some(run), Some(d)) = (runs.get(&r.run_id), &r.detail) {
                let counts = serde_json::to_value(&run.counts).unwrap_or_default();
                if d["status"] != run.status.as_str() || d["counts"] != counts {
                    return broken(format!(
                        "run {} in the runs table differs from its journaled end (status or \
                         counts edited)",
                        r.run_id
                    ));
                }
            }
        }
        if Some(&row.hash) == last_head.as_ref() {
            head_seen = true;
        }
        expected_prev = row.hash;
        expected_id += 1;
        n += 1;
    }
    if !head_seen {
        return Ok(Verdict::Broken {
            record: expected_id,
            why: "the last run's head hash is not in the journal (records at its end were \
                  deleted)"
                .into(),
        });
    }
    Ok(Verdict::Intact { records: n })
}

/// A day (`YYYY-MM-DD`, meaning its end for "at", its start for "since")
/// or an RFC 3339 time, as the RFC 3339 text the journal stores.
pub fn parse_when(text: &str, end_of_day: bool) -> Result<String, String> {
    let f = &time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, f) {
        return t.format(f).map_err(|e| e.to_string());
    }
    let day = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|_| format!("\"{text}\" is not a date (YYYY-MM-DD) or an RFC 3339 time"))?;
    let t = if end_of_day {
        day.with_hms(23, 59, 59)
    } else {
        day.with_hms(0, 0, 0)
    }
    .map_err(|e| e.to_string())?
    .assume_utc();
    t.format(f).map_err(|e| e.to_string())
}

/// Runs started at or after `since` (oldest first).
pub fn runs(s: &Snapshot, since: Option<&str>) -> Result<Vec<Run>, StateError> {
    let mut runs = s.runs(u32::MAX)?;
    runs.reverse();
    if let Some(since) = since {
        runs.retain(|r| r.started_at.as_str() >= since);
    }
    Ok(runs)
}

/// A callback receiving records one at a time.
pub type Each<'f, T> = &'f mut dyn FnMut(T) -> Result<(), StateError>;

/// Every record of one run, its start and end included.
pub fn show(s: &Snapshot, run_id: i64, f: Each<'_, Stored>) -> Result<(), StateError> {
    s.each_where("run_id = ?1", &[&run_id], f)
}

/// The anchors a person is known by: an anchor itself, a mail address, or
/// a DN the object had.
pub fn resolve(s: &Snapshot, who: &str) -> Result<Vec<String>, StateError> {
    let q = if who.contains('=') {
        // Two indexed lookups; an OR of the two would scan the journal.
        "SELECT anchor FROM journal WHERE dn = ?1 COLLATE NOCASE AND anchor IS NOT NULL
         UNION
         SELECT anchor FROM journal WHERE old_dn = ?1 COLLATE NOCASE AND anchor IS NOT NULL"
    } else if who.contains('@') {
        "SELECT DISTINCT anchor FROM journal WHERE mail = lower(?1) AND anchor IS NOT NULL"
    } else {
        "SELECT DISTINCT anchor FROM journal WHERE anchor = ?1"
    };
    let mut stmt = s.conn.prepare(q).map_err(|e| s.db_err(e))?;
    let rows = stmt
        .query_map([who], |r| r.get::<_, String>(0))
        .map_err(|e| s.db_err(e))?;
    rows.collect::<Result<_, _>>().map_err(|e| s.db_err(e))
}

/// The whole life of the objects for `who`, in order.
pub fn history(s: &Snapshot, who: &str) -> Result<Vec<Stored>, StateError> {
    let mut out = Vec::new();
    for anchor in resolve(s, who)? {
        out.extend(s.stored_where("anchor = ?1", &[&anchor])?);
    }
    out.sort_by_key(|r| r.id);
    Ok(out)
}

/// One object held in the target at a given time, per the journal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    /// The record that left the object in this state, and when.
    pub record: i64,
    pub at: String,
    pub anchor: String,
    pub org: Option<String>,
    pub state: ObjectRow,
}

/// The objects held in the target at `at`, as the journal records them:
/// per object, the last state-changing record up to then, if it left the
/// object in place. Optionally one organisation only.
pub fn held(
    s: &Snapshot,
    at: &str,
    org: Option<&str>,
    f: Each<'_, Held>,
) -> Result<(), StateError> {
    let last: Option<i64> = s
        .conn
        .query_row("SELECT max(id) FROM journal WHERE at <= ?1", [at], |r| {
            r.get(0)
        })
        .map_err(|e| s.db_err(e))?;
    let Some(last) = last else {
        return Ok(());
    };
    let sql = format!(
        "SELECT id, at, anchor, org, state FROM journal WHERE id IN (
            SELECT max(id) FROM journal WHERE anchor IS NOT NULL AND {STATE_OPS} AND id <= ?1
            GROUP BY anchor)
         AND state IS NOT NULL AND (?2 IS NULL OR org = ?2)"
    );
    let mut stmt = s.conn.prepare(&sql).map_err(|e| s.db_err(e))?;
    let rows = stmt
        .query_map(params![last, org], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .map_err(|e| s.db_err(e))?;
    for row in rows {
        let (record, at, anchor, org, state) = row.map_err(|e| s.db_err(e))?;
        let state = serde_json::from_str(&state).map_err(|e| StateError::Corrupt {
            anchor: anchor.clone(),
            detail: format!("journal record {record}: {e}"),
        })?;
        f(Held {
            record,
            at,
            anchor,
            org,
            state,
        })?;
    }
    Ok(())
}

/// Everything done under one agreement.
pub fn agreement(s: &Snapshot, id: &str, f: Each<'_, Stored>) -> Result<(), StateError> {
    let quoted = serde_json::to_string(id).unwrap_or_default();
    // The id is matched as a JSON string inside the agreements array.
    let pattern = format!(
        "%{}%",
        quoted
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    s.each_where("agreements LIKE ?1 ESCAPE '\\'", &[&pattern], f)
}

/// When the configuration, mapping or agreements file changed, by run.
pub fn config_changes(s: &Snapshot) -> Result<Vec<(Run, Vec<&'static str>)>, StateError> {
    let mut out = Vec::new();
    let mut prev: Option<crate::journal::FileHashes> = None;
    for run in runs(s, None)? {
        let changed: Vec<&'static str> = match &prev {
            None => vec!["config", "mapping", "agreements"],
            Some(p) => [
                ("config", p.config != run.files.config),
                ("mapping", p.mapping != run.files.mapping),
                ("agreements", p.agreements != run.files.agreements),
            ]
            .into_iter()
            .filter(|(_, c)| *c)
            .map(|(n, _)| n)
            .collect(),
        };
        prev = Some(run.files.clone());
        if !changed.is_empty() {
            out.push((run, changed));
        }
    }
    Ok(out)
}

/// Records at or after `since`, for export.
pub fn since(s: &Snapshot, since: &str, f: Each<'_, Stored>) -> Result<(), StateError> {
    s.each_where("at >= ?1", &[&since], f)
}

/// Replaces personal values with salted hashes. One salt per export:
/// equal values hash alike within it (a reviewer can still see that two
/// records name the same value), but no dictionary of names or addresses
/// can reverse them.
pub struct Redactor {
    salt: [u8; 16],
}

impl Redactor {
    /// A redactor with a fresh random salt, which is never written anywhere.
    pub fn new() -> std::io::Result<Redactor> {
        use std::io::Read;
        let mut salt = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
        Ok(Redactor { salt })
    }

    fn value(&self, v: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(v.as_bytes());
        format!("sha256:{:x}", h.finalize())[..23].to_string()
    }

    /// The record with every personal value hashed: DNs, attribute values,
    /// the object's state, error texts. The anchor, the operation, the
    /// reason, the agreements and the chain hashes stay.
    pub fn redact(&self, mut s: Stored) -> Stored {
        let r = &mut s.record;
        r.dn = r.dn.as_deref().map(|v| self.value(v));
        r.old_dn = r.old_dn.as_deref().map(|v| self.value(v));
        r.error = r.error.as_deref().map(|v| self.value(v));
        for c in r.changes.values_mut() {
            c.old = c.old.iter().map(|v| self.value(v)).collect();
            c.new = c.new.iter().map(|v| self.value(v)).collect();
        }
        if let Some(state) = r.state.as_mut() {
            state.dn = self.value(&state.dn);
            for vs in state.attrs.values_mut() {
                *vs = vs.iter().map(|v| self.value(v)).collect();
            }
        }
        s
    }
}

/// One CSV field, quoted (RFC 4180).
fn csv_field(v: &str) -> String {
    format!("\"{}\"", v.replace('"', "\"\""))
}

pub const CSV_HEADER: &str =
    "id,at,run,op,outcome,reason,anchor,org,dn,old_dn,agreements,changes,error,hash";

/// One record as a CSV line (the changes as JSON in one cell).
pub fn csv_line(s: &Stored) -> String {
    let r = &s.record;
    [
        s.id.to_string(),
        s.at.clone(),
        r.run_id.to_string(),
        r.op.clone(),
        r.outcome.clone(),
        r.reason.clone(),
        r.anchor.clone().unwrap_or_default(),
        r.org.clone().unwrap_or_default(),
        r.dn.clone().unwrap_or_default(),
        r.old_dn.clone().unwrap_or_default(),
        r.agreements.join(";"),
        if r.changes.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&r.changes).unwrap_or_default()
        },
        r.error.clone().unwrap_or_default(),
        s.hash.clone(),
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

/// Deletes records older than the retention period. The chain stays
/// verifiable: the last pruned record's id and hash are kept, and the prune
/// is itself a chained record. Returns how many records went.
pub fn prune(s: &Snapshot, retention: Duration, run_id: i64) -> Result<u64, StateError> {
    let cutoff = time::OffsetDateTime::now_utc() - retention;
    let cutoff = cutoff
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let db = |e| s.db_err(e);
    let last: Option<(i64, String)> = s
        .conn
        .query_row(
            // Through the index on `at`: left to itself SQLite walks the
            // whole journal backwards by id on every run.
            "SELECT id, hash FROM journal WHERE id =
               (SELECT max(id) FROM journal INDEXED BY journal_at WHERE at < ?1)",
            [&cutoff],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db)?;
    let Some((last_id, last_hash)) = last else {
        return Ok(0);
    };
    let tx = s.conn.unchecked_transaction().map_err(db)?;
    let n = tx
        .execute("DELETE FROM journal WHERE id <= ?1", [last_id])
        .map_err(db)? as u64;
    for (k, v) in [
        ("pruned_id", last_id.to_string()),
        ("pruned_hash", last_hash.clone()),
    ] {
        tx.execute(
            "INSERT INTO journal_meta (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![k, v],
        )
        .map_err(db)?;
    }
    let mut r = Record::new(run_id, "prune", "applied", "retention period over");
    r.detail = Some(serde_json::json!({
        "records": n,
        "older_than": cutoff,
        "pruned_through_id": last_id,
        "pruned_last_hash": last_hash,
    }));
    crate::journal::append(&tx, &r).map_err(db)?;
    tx.commit().map_err(db)?;
    tracing::info!(records = n, older_than = %cutoff, "journal pruned");
    Ok(n)
}

/// A short text of a record's changes: `title: "A" -> "B"`.
pub fn describe_changes(r: &Record) -> String {
    let mut parts: Vec<String> = r
        .changes
        .iter()
        .map(|(k, c)| {
            let show = |v: &[String]| match v.len() {
                0 => "-".to_string(),
                1 => format!("{:?}", v[0]),
                _ => format!("{v:?}"),
            };
            format!("{k}: {} -> {}", show(&c.old), show(&c.new))
        })
        .collect();
    if let Some(old) = &r.old_dn {
        parts.insert(0, format!("from {old}"));
    }
    parts.join("; ")
}
