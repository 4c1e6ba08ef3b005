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

use crate::seal::{self, Signer};
use crate::state::object::ObjectRow;

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
pub(crate) fn mail_of(r: &Record) -> Option<String> {
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
pub(crate) fn append_at(conn: &Connection, r: &Record, at: &str) -> rusqlite::Result<()> {
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

/// A head signed by [`append_seal`].
#[derive(Debug, Clone)]
pub struct Sealed {
    pub head_id: i64,
    pub head_hash: String,
    pub key: String,
    pub signature: String,
}

/// Signs the head of the chain and appends the signature as a `seal`
/// record (op `seal`, outcome `signed`; detail: head_id, head_hash, at, key,
/// signature over [`seal::head_message`]). Call inside the transaction that
/// wrote the head.
pub(crate) fn append_seal(
    conn: &Connection,
    signer: &Signer,
    run_id: i64,
    at: &str,
) -> rusqlite::Result<Sealed> {
    let (head_id, head_hash) = head(conn)?;
    let signature = signer.sign(&seal::head_message(run_id, head_id, &head_hash, at));
    let mut r = Record::new(run_id, "seal", "signed", "journal head signed");
    r.detail = Some(serde_json::json!({
        "head_id": head_id,
        "head_hash": head_hash,
        "at": at,
        "key": signer.id(),
        "signature": signature,
    }));
    append_at(conn, &r, at)?;
    Ok(Sealed {
        head_id,
        head_hash,
        key: signer.id().to_string(),
        signature,
    })
}

/// Logs a signed head with a stable MESSAGE_ID, so it can be shipped off
/// the box and given back to `journal verify --expect-head`.
pub(crate) fn log_sealed(run_id: i64, s: &Sealed) {
    tracing::info!(
        message_id = seal::HEAD_MESSAGE_ID,
        run_id,
        head_record = s.head_id,
        head_hash = %s.head_hash,
        key = %s.key,
        signature = %s.signature,
        "journal head signed"
    );
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
