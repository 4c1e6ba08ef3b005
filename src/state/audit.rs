//! The auditor's side of the journal: verify the hash chain, answer
//! questions (runs, one run, one person's history, what was held on a day,
//! everything under one agreement, when the configuration changed), export,
//! and prune past the retention period without breaking the chain.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::state::journal::{canonical, chain_hash, stored_from_row, Record, Stored, GENESIS};
use crate::state::runs::Run;
use crate::state::{ObjectRow, Snapshot, StateError};

const COLUMNS: &str = "id, at, run_id, anchor, dn, old_dn, op, outcome, reason, agreements,
                       changes, error, org, state, detail, prev_hash, hash";

/// Operations that change what is held in the target (and so the state a
/// record carries), as `held` replays them.
const STATE_OPS: &str = "op IN ('add','modify','rename','hide','restore','delete','drift') \
                         AND outcome IN ('applied','already absent','detected')";

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The chain holds, and every runs row agrees with its run's records.
    /// `unchecked_runs`: rows of runs older than every run record kept
    /// (from a journal upgraded from before the chain), which nothing can
    /// check.
    Intact {
        records: u64,
        unchecked_runs: u64,
    },
    Broken {
        record: i64,
        why: String,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Intact {
                records,
                unchecked_runs: 0,
            } => write!(f, "intact, {records} records"),
            Verdict::Intact {
                records,
                unchecked_runs,
            } => write!(
                f,
                "intact, {records} records ({unchecked_runs} runs older than the journal's \
                 first run record cannot be checked)"
            ),
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

/// Two times the same, or (rows written before a run's row and records
/// shared one time stamp) less than a second apart.
fn same_time(a: &str, b: &str) -> bool {
    let f = &time::format_description::well_known::Rfc3339;
    a == b
        || match (
            time::OffsetDateTime::parse(a, f),
            time::OffsetDateTime::parse(b, f),
        ) {
            (Ok(a), Ok(b)) => (a - b).abs() < time::Duration::SECOND,
            _ => false,
        }
}

/// The columns of a runs row that differ from its run's start record.
fn start_differs(run: &Run, at: &str, r: &Record) -> Vec<&'static str> {
    let d = r.detail.clone().unwrap_or_default();
    let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
    [
        ("started_at", !same_time(&run.started_at, at)),
        ("mode", run.mode != r.reason),
        ("config_hash", run.files.config != text("config_hash")),
        ("mapping_hash", run.files.mapping != text("mapping_hash")),
        (
            "agreements_hash",
            run.files.agreements != text("agreements_hash"),
        ),
        ("unix_user", run.unix_user != text("unix_user")),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(k, _)| k)
    .collect()
}

/// The columns of a runs row that differ from its run's end record.
fn end_differs(run: &Run, at: &str, hash: &str, r: &Record) -> Vec<&'static str> {
    let d = r.detail.clone().unwrap_or_default();
    let counts: Option<crate::state::runs::Counts> =
        serde_json::from_value(d["counts"].clone()).ok();
    [
        (
            "ended_at",
            !run.ended_at.as_deref().is_some_and(|e| same_time(e, at)),
        ),
        ("status", d["status"] != run.status.as_str()),
        ("counts", counts.is_none() || counts != run.counts),
        ("head_hash", run.head_hash.as_deref() != Some(hash)),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(k, _)| k)
    .collect()
}

/// Recomputes the chain from the first record kept and reports the first
/// record that does not fit: edited (content and hash disagree), deleted or
/// reordered (ids or links do not follow), a pruned start the chain's own
/// prune record does not vouch for, or a runs row that is missing, added or
/// differs from its run's start and end records.
pub fn verify(s: &Snapshot) -> Result<Verdict, StateError> {
    let (pruned_id, pruned_hash) = match pruned_start(s)? {
        Ok(start) => start,
        Err(broken) => return Ok(broken),
    };
    let runs: HashMap<i64, Run> = s.runs(u32::MAX)?.into_iter().map(|r| (r.id, r)).collect();
    let mut walk = Walk::new(pruned_id, pruned_hash, &runs);
    let mut stmt = s
        .conn
        .prepare(&format!("SELECT {COLUMNS} FROM journal ORDER BY id"))
        .map_err(|e| s.db_err(e))?;
    let rows = stmt
        .query_map([], stored_from_row)
        .map_err(|e| s.db_err(e))?;
    for row in rows {
        if let Some(broken) = walk.record(row.map_err(|e| s.db_err(e))?) {
            return Ok(broken);
        }
    }
    if let Some(broken) = walk.ends() {
        return Ok(broken);
    }
    Ok(walk.runs_rows())
}

/// Where the kept journal starts, per `journal_meta` (id and hash of the
/// last pruned record), or why that record is malformed.
type PrunedStart = (Option<i64>, Option<String>);

fn pruned_start(s: &Snapshot) -> Result<Result<PrunedStart, Verdict>, StateError> {
    let malformed = || {
        Err(Verdict::Broken {
            record: 1,
            why: "journal_meta's record of pruning is malformed (edited)".into(),
        })
    };
    let pruned_hash = meta(s, "pruned_hash")?;
    Ok(match (meta(s, "pruned_id")?, pruned_hash) {
        (None, None) => Ok((None, None)),
        (Some(id), Some(hash)) => match id.parse::<i64>() {
            Ok(id) => Ok((Some(id), Some(hash))),
            Err(_) => malformed(),
        },
        _ => malformed(),
    })
}

/// The walk along the chain, record by record.
struct Walk<'r> {
    pruned_id: Option<i64>,
    pruned_hash: Option<String>,
    runs: &'r HashMap<i64, Run>,
    expected_prev: String,
    expected_id: i64,
    /// A pruned start is only as good as the chained prune record that
    /// names it: anyone can write journal_meta.
    prune_vouched: bool,
    last_head: Option<String>,
    head_seen: bool,
    /// Per run: the ids of its start and end records, where kept.
    started: HashMap<i64, i64>,
    ended: HashMap<i64, i64>,
    records: u64,
}

impl<'r> Walk<'r> {
    fn new(
        pruned_id: Option<i64>,
        pruned_hash: Option<String>,
        runs: &'r HashMap<i64, Run>,
    ) -> Self {
        let last_head = runs
            .values()
            .max_by_key(|r| r.id)
            .and_then(|r| r.head_hash.clone());
        Walk {
            expected_prev: pruned_hash.clone().unwrap_or_else(|| GENESIS.to_string()),
            expected_id: pruned_id.unwrap_or(0) + 1,
            prune_vouched: pruned_id.is_none(),
            head_seen: last_head.is_none(),
            last_head,
            pruned_id,
            pruned_hash,
            runs,
            started: HashMap::new(),
            ended: HashMap::new(),
            records: 0,
        }
    }

    /// Checks one record: its place in the chain, its hash, and the runs
    /// row its start or end record vouches for.
    fn record(&mut self, row: Stored) -> Option<Verdict> {
        let broken = |why: String| {
            Some(Verdict::Broken {
                record: row.id,
                why,
            })
        };
        if row.id != self.expected_id {
            return Some(Verdict::Broken {
                record: self.expected_id,
                why: format!(
                    "record {} is missing; the next is {} (deleted or reordered)",
                    self.expected_id, row.id
                ),
            });
        }
        if row.prev_hash != self.expected_prev {
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
        if r.op == "prune" {
            if let (Some(d), Some(id), Some(hash)) = (&r.detail, self.pruned_id, &self.pruned_hash)
            {
                if d["pruned_through_id"] == id && d["pruned_last_hash"] == hash.as_str() {
                    self.prune_vouched = true;
                }
            }
        }
        if r.op == "run" && (r.outcome == "started" || r.outcome == "ended") {
            if let Some(why) = self.run_record(&row) {
                return broken(why);
            }
        }
        if Some(&row.hash) == self.last_head.as_ref() {
            self.head_seen = true;
        }
        self.expected_prev = row.hash;
        self.expected_id += 1;
        self.records += 1;
        None
    }

    /// A run's start or end record against its runs row.
    fn run_record(&mut self, row: &Stored) -> Option<String> {
        let r = &row.record;
        let Some(run) = self.runs.get(&r.run_id) else {
            return Some(format!(
                "run {} is journaled but has no row in the runs table (deleted)",
                r.run_id
            ));
        };
        let (which, differs) = if r.outcome == "started" {
            self.started.insert(r.run_id, row.id);
            ("start", start_differs(run, &row.at, r))
        } else {
            self.ended.insert(r.run_id, row.id);
            ("end", end_differs(run, &row.at, &row.hash, r))
        };
        (!differs.is_empty()).then(|| {
            format!(
                "run {} in the runs table differs from its journaled {which} ({} edited)",
                r.run_id,
                differs.join(", ")
            )
        })
    }

    /// After the last record: the pruned start vouched for, the last run's
    /// head reached.
    fn ends(&self) -> Option<Verdict> {
        if !self.prune_vouched {
            let pruned = self.pruned_id.unwrap_or(0);
            return Some(Verdict::Broken {
                record: self.expected_id.min(pruned + 1),
                why: format!(
                    "the journal starts after record {pruned}, but no prune record in the \
                     chain says so (older records deleted)"
                ),
            });
        }
        (!self.head_seen).then(|| Verdict::Broken {
            record: self.expected_id,
            why: "the last run's head hash is not in the journal (records at its end were \
                  deleted)"
                .into(),
        })
    }

    /// Every runs row needs its run's records; only rows older than the
    /// first run record kept (written before the chain existed) cannot have
    /// them.
    fn runs_rows(&self) -> Verdict {
        let first_journaled = self.started.keys().chain(self.ended.keys()).min().copied();
        let mut unchecked_runs = 0;
        let mut ids: Vec<&i64> = self.runs.keys().collect();
        ids.sort();
        for id in ids {
            let run = &self.runs[id];
            let (started, ended) = (self.started.get(id), self.ended.contains_key(id));
            if started.is_none() && !ended {
                if first_journaled.is_some_and(|first| *id > first) {
                    return Verdict::Broken {
                        record: self.expected_id,
                        why: format!(
                            "run {id} in the runs table has no journaled start (inserted)"
                        ),
                    };
                }
                unchecked_runs += 1;
            } else if !ended
                && (run.status != "running"
                    || run.ended_at.is_some()
                    || run.counts.is_some()
                    || run.head_hash.is_some())
            {
                return Verdict::Broken {
                    record: started.copied().unwrap_or(self.expected_id),
                    why: format!(
                        "run {id} in the runs table has an end its journal does not record \
                         (edited)"
                    ),
                };
            }
        }
        Verdict::Intact {
            records: self.records,
            unchecked_runs,
        }
    }
}

/// A day (`YYYY-MM-DD`, meaning its end for "at", its start for "since")
/// or an RFC 3339 time, as the RFC 3339 text the journal stores.
pub fn parse_when(text: &str, end_of_day: bool) -> Result<String, String> {
    let f = &time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, f) {
        return Ok(crate::state::journal::time_text(t));
    }
    let day = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|_| format!("\"{text}\" is not a date (YYYY-MM-DD) or an RFC 3339 time"))?;
    let t = if end_of_day {
        day.with_hms_micro(23, 59, 59, 999_999)
    } else {
        day.with_hms(0, 0, 0)
    }
    .map_err(|e| e.to_string())?
    .assume_utc();
    Ok(crate::state::journal::time_text(t))
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
    /// The record that left the object in this state (a `checkpoint`, when
    /// that record was pruned), and when the object came to be in it.
    pub record: i64,
    pub at: String,
    pub anchor: String,
    pub org: Option<String>,
    pub state: ObjectRow,
}

/// When the journal was last pruned, the time before which its records
/// were removed (the `older_than` of the newest prune record).
pub fn pruned_before(s: &Snapshot) -> Result<Option<String>, StateError> {
    if meta(s, "pruned_id")?.is_none() {
        return Ok(None);
    }
    let detail: Option<String> = s
        .conn
        .query_row(
            "SELECT detail FROM journal WHERE op = 'prune' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| s.db_err(e))?
        .flatten();
    Ok(detail
        .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
        .and_then(|d| d["older_than"].as_str().map(str::to_string)))
}

/// Per anchor, the last state-changing record up to record `last`
/// (checkpoints aside): its id, time, org and state (`None`: not held).
/// Optionally only those held, or one organisation's.
type Latest = (i64, String, String, Option<String>, Option<String>);

pub(crate) fn latest_states(
    s: &Snapshot,
    last: i64,
    held_only: bool,
    org: Option<&str>,
    f: &mut dyn FnMut(Latest) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let sql = format!(
        "SELECT id, at, anchor, org, state FROM journal WHERE id IN (
            SELECT max(id) FROM journal WHERE anchor IS NOT NULL AND {STATE_OPS} AND id <= ?1
            GROUP BY anchor)
         AND (?3 = 0 OR state IS NOT NULL) AND (?2 IS NULL OR org = ?2)"
    );
    let mut stmt = s.conn.prepare(&sql).map_err(|e| s.db_err(e))?;
    let rows = stmt
        .query_map(params![last, org, held_only], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(|e| s.db_err(e))?;
    for row in rows {
        f(row.map_err(|e| s.db_err(e))?)?;
    }
    Ok(())
}

fn held_from(
    record: i64,
    at: String,
    anchor: String,
    org: Option<String>,
    state: &str,
) -> Result<Held, StateError> {
    let state = serde_json::from_str(state).map_err(|e| StateError::Corrupt {
        anchor: anchor.clone(),
        detail: format!("journal record {record}: {e}"),
    })?;
    Ok(Held {
        record,
        at,
        anchor,
        org,
        state,
    })
}

/// The objects held in the target at `at`, as the journal records them:
/// per object, the last state-changing record up to then, if it left the
/// object in place. An object whose records up to then were all pruned is
/// as the newest `checkpoint` pruning left for it. Optionally one
/// organisation only. A time before the records kept is
/// [`StateError::Pruned`]: the journal no longer knows.
pub fn held(
    s: &Snapshot,
    at: &str,
    org: Option<&str>,
    f: Each<'_, Held>,
) -> Result<(), StateError> {
    let pruned = pruned_before(s)?;
    if let Some(before) = &pruned {
        if at < before.as_str() {
            return Err(StateError::Pruned(before.clone()));
        }
    }
    let last: Option<i64> = s
        .conn
        .query_row("SELECT max(id) FROM journal WHERE at <= ?1", [at], |r| {
            r.get(0)
        })
        .map_err(|e| s.db_err(e))?;
    if let Some(last) = last {
        latest_states(s, last, true, org, &mut |(
            record,
            at,
            anchor,
            org,
            state,
        )| {
            f(held_from(
                record,
                at,
                anchor,
                org,
                &state.unwrap_or_default(),
            )?)
        })?;
    }
    if pruned.is_none() {
        return Ok(());
    }
    // Objects none of whose records up to `at` are kept: as the newest
    // checkpoint left them (it holds their state at the cut, whenever it
    // was written).
    let sql = format!(
        "SELECT c.id, c.anchor, c.org, c.state, c.detail FROM journal c WHERE c.id IN (
            SELECT max(id) FROM journal WHERE op = 'checkpoint' GROUP BY anchor)
         AND c.state IS NOT NULL AND (?2 IS NULL OR c.org = ?2)
         AND NOT EXISTS (SELECT 1 FROM journal WHERE anchor = c.anchor AND {STATE_OPS}
                         AND id <= ?1)"
    );
    let mut stmt = s.conn.prepare(&sql).map_err(|e| s.db_err(e))?;
    let rows = stmt
        .query_map(params![last.unwrap_or(0), org], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .map_err(|e| s.db_err(e))?;
    for row in rows {
        let (record, anchor, org, state, detail) = row.map_err(|e| s.db_err(e))?;
        let since = detail
            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
            .and_then(|d| d["since"].as_str().map(str::to_string))
            .unwrap_or_default();
        f(held_from(record, since, anchor, org, &state)?)?;
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
    let mut prev: Option<crate::state::runs::FileHashes> = None;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_compare_as_text_in_time_order() {
        let start = parse_when("2026-03-01", false).unwrap();
        let end = parse_when("2026-03-01", true).unwrap();
        assert_eq!(start, "2026-03-01T00:00:00.000000Z");
        assert_eq!(end, "2026-03-01T23:59:59.999999Z");
        // Whole and fractional seconds, and another offset, in order.
        let times = [
            "2026-03-01T00:00:00Z",
            "2026-03-01T00:00:00.5Z",
            "2026-03-01T01:00:01+01:00",
            "2026-03-01T00:00:01.25Z",
            "2026-03-01T23:59:59.9999999Z",
        ];
        let text: Vec<String> = times
            .iter()
            .map(|t| parse_when(t, false).unwrap())
            .collect();
        let mut sorted = text.clone();
        sorted.sort();
        assert_eq!(text, sorted);
        assert!(text.iter().all(|t| t >= &start && t <= &end), "{text:?}");
        assert!(parse_when("yesterday", false).is_err());
    }
}
