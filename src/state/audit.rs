//! The auditor's side of the journal: answer
//! questions (runs, one run, one person's history, what was held on a day,
//! everything under one agreement, when the configuration changed), export.
//! Only reads. Verifying the chain is [`crate::state::verify`]; pruning is
//! [`crate::state::retention`].

use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::state::journal::{Record, Stored};
use crate::state::runs::Run;
use crate::state::{ObjectRow, Snapshot, StateError};

pub(crate) const COLUMNS: &str =
    "id, at, run_id, anchor, dn, old_dn, op, outcome, reason, agreements,
                       changes, error, org, state, detail, prev_hash, hash";

/// Operations that change what is held in the target (and so the state a
/// record carries), as `held` replays them.
pub(crate) const STATE_OPS: &str =
    "op IN ('add','modify','rename','hide','restore','delete','drift') \
                         AND outcome IN ('applied','already absent','detected')";

/// A value `journal_meta` keeps (where pruning cut the journal).
pub(crate) fn meta(s: &Snapshot, key: &str) -> Result<Option<String>, StateError> {
    s.conn
        .query_row(
            "SELECT value FROM journal_meta WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| s.db_err(e))
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

/// Runs started at or after `since` (oldest first); with `last`, only the
/// newest `last` of them (read alone, however many runs there are), and
/// whether older ones were left out.
pub fn runs(
    s: &Snapshot,
    since: Option<&str>,
    last: Option<u32>,
) -> Result<(Vec<Run>, bool), StateError> {
    let limit = last.map_or(u32::MAX, |n| n.saturating_add(1));
    let mut runs = s.runs(limit)?;
    if let Some(since) = since {
        runs.retain(|r| r.started_at.as_str() >= since);
    }
    let more = last.is_some_and(|n| runs.len() > n as usize);
    runs.truncate(last.map_or(usize::MAX, |n| n as usize));
    runs.reverse();
    Ok((runs, more))
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
    // A DN as AD spells it finds the records absync wrote with its own
    // spelling of the same name, and the other way round.
    let asked = if who.contains('=') {
        crate::dn::spellings(who)
    } else {
        vec![who.to_string()]
    };
    let mut out: Vec<String> = Vec::new();
    for w in &asked {
        let rows = stmt
            .query_map([w], |r| r.get::<_, String>(0))
            .map_err(|e| s.db_err(e))?;
        for a in rows {
            let a = a.map_err(|e| s.db_err(e))?;
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    Ok(out)
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

/// The newest record of the agreements' terms (op `agreements`) written at
/// or before `at` (`None`: the newest of all).
pub fn terms_at(s: &Snapshot, at: Option<&str>) -> Result<Option<Stored>, StateError> {
    let mut found = None;
    let cond = "id = (SELECT max(id) FROM journal WHERE op = 'agreements' AND at <= ?1)";
    let at = at.unwrap_or("9999");
    s.each_where(cond, &[&at], &mut |r| {
        found = Some(r);
        Ok(())
    })?;
    Ok(found)
}

/// `id` as a JSON string, for a LIKE pattern (with `\` as the escape).
fn like_json(id: &str) -> String {
    let quoted = serde_json::to_string(id).unwrap_or_default();
    format!(
        "%{}%",
        quoted
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

/// Whether the journal knows agreement `id`: in recorded terms, or as the
/// agreement of a record.
pub fn agreement_known(s: &Snapshot, id: &str) -> Result<bool, StateError> {
    let found: Option<i64> = s
        .conn
        .query_row(
            "SELECT 1 FROM journal WHERE agreements LIKE ?1 ESCAPE '\\'
             UNION ALL
             SELECT 1 FROM journal WHERE op = 'agreements' AND detail LIKE ?1 ESCAPE '\\'
             LIMIT 1",
            [like_json(id)],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| s.db_err(e))?;
    Ok(found.is_some())
}

/// What the journal's export takes: records in a time window, of one run,
/// one organisation or one agreement.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<String>,
    pub until: Option<String>,
    pub run: Option<i64>,
    pub org: Option<String>,
    pub agreement: Option<String>,
}

/// The records `filter` takes, in order.
pub fn filtered(s: &Snapshot, filter: &Filter, f: Each<'_, Stored>) -> Result<(), StateError> {
    let mut cond = vec!["1 = 1".to_string()];
    let mut args: Vec<&dyn rusqlite::ToSql> = Vec::new();
    let conditions: [(&str, Option<&dyn rusqlite::ToSql>); 4] = [
        ("at >=", filter.since.as_ref().map(|v| v as _)),
        ("at <=", filter.until.as_ref().map(|v| v as _)),
        ("run_id =", filter.run.as_ref().map(|v| v as _)),
        ("org =", filter.org.as_ref().map(|v| v as _)),
    ];
    for (c, v) in conditions {
        if let Some(v) = v {
            args.push(v);
            cond.push(format!("{c} ?{}", args.len()));
        }
    }
    let agreement = filter.agreement.as_deref();
    if agreement.is_some() {
        cond.push("agreements LIKE ?".to_string() + &(args.len() + 1).to_string() + " ESCAPE '\\'");
    }
    let pattern = agreement.map(like_json);
    if let Some(p) = &pattern {
        args.push(p);
    }
    s.each_where(&cond.join(" AND "), &args, &mut |r| match agreement {
        // The pattern narrows; the parsed record decides.
        Some(a) if !r.record.agreements.iter().any(|x| x == a) => Ok(()),
        _ => f(r),
    })
}

/// Everything done under one agreement.
pub fn agreement(s: &Snapshot, id: &str, f: Each<'_, Stored>) -> Result<(), StateError> {
    filtered(
        s,
        &Filter {
            agreement: Some(id.to_string()),
            ..Default::default()
        },
        f,
    )
}

/// When the configuration, mapping or agreements file changed, by run.
pub fn config_changes(s: &Snapshot) -> Result<Vec<(Run, Vec<&'static str>)>, StateError> {
    let mut out = Vec::new();
    let mut prev: Option<crate::state::runs::FileHashes> = None;
    for run in runs(s, None, None)?.0 {
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
    fn a_dn_finds_its_records_however_it_is_spelled() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(dir.path()).unwrap();
        let mut r = crate::state::journal::Record::new(1, "add", "applied", "test");
        r.anchor = Some("a1".into());
        r.dn = Some("cn=Ann Mid\\2bdle\\3b,OU=X".into());
        s.journal(&[r]).unwrap();
        for asked in [
            "cn=Ann Mid\\2bdle\\3b,OU=X",
            "CN=Ann Mid\\+dle\\;,OU=X",
            "CN=ann mid\\+dle\\3B, ou=x",
        ] {
            assert_eq!(resolve(&s, asked).unwrap(), vec!["a1"], "{asked}");
        }
        assert!(resolve(&s, "CN=Ann Middle,OU=X").unwrap().is_empty());
    }

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
