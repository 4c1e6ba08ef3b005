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
/// field in a fixed order, objects with their keys sorted (as
/// `serde_json::Value`, without `preserve_order`, writes them).
///
/// Written directly, without building a `Value` tree first: the bytes are
/// those of [`canonical_via_value`], the definition, which a property test
/// holds it to (and which is used should writing fail, which it cannot).
pub fn canonical(id: i64, at: &str, r: &Record) -> String {
    canon::encode(id, at, &Entry::of(r)).unwrap_or_else(|_| canonical_via_value(id, at, r))
}

/// The canonical content as first defined: the fields in a
/// `serde_json::Value` array, printed. [`canonical`] writes the same bytes.
pub fn canonical_via_value(id: i64, at: &str, r: &Record) -> String {
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

/// The direct writer of [`canonical`]. Each struct is destructured whole,
/// so a field added to one of them fails to compile here until it is
/// written (in its sorted place).
mod canon {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::{AttrChange, Entry, Record, State};
    use crate::state::object::{Hidden, ObjectRow};

    type Out = Vec<u8>;
    type Res = serde_json::Result<()>;

    pub(super) fn encode(id: i64, at: &str, e: &Entry<'_>) -> serde_json::Result<String> {
        let Entry { record, org, state } = e;
        let Record {
            run_id,
            anchor,
            dn,
            old_dn,
            op,
            outcome,
            reason,
            agreements,
            changes,
            error,
            org: _,
            state: _,
            detail,
        } = record;
        let mut o = Vec::with_capacity(4096);
        o.push(b'[');
        leaf(&mut o, &id)?;
        sep(&mut o);
        leaf(&mut o, run_id)?;
        sep(&mut o);
        leaf(&mut o, at)?;
        for s in [anchor, dn, old_dn] {
            sep(&mut o);
            leaf(&mut o, s)?;
        }
        for s in [op, outcome, reason] {
            sep(&mut o);
            leaf(&mut o, s)?;
        }
        sep(&mut o);
        leaf(&mut o, agreements)?;
        sep(&mut o);
        self::changes(&mut o, changes)?;
        sep(&mut o);
        leaf(&mut o, error)?;
        sep(&mut o);
        leaf(&mut o, org)?;
        sep(&mut o);
        match state {
            Some(State::Row(row)) => object(&mut o, row)?,
            Some(State::Json(held)) => object_written(&mut o, held)?,
            None => o.extend_from_slice(b"null"),
        }
        sep(&mut o);
        // A Value is printed as it is: its maps are sorted already.
        leaf(&mut o, detail)?;
        o.push(b']');
        // serde_json writes UTF-8 only.
        String::from_utf8(o).map_err(serde::ser::Error::custom)
    }

    fn sep(o: &mut Out) {
        o.push(b',');
    }

    /// A string, number, list of strings or `Value`: as serde_json writes it.
    fn leaf<T: Serialize + ?Sized>(o: &mut Out, v: &T) -> Res {
        serde_json::to_writer(o, v)
    }

    fn key(o: &mut Out, first: bool, k: &str) -> Res {
        if !first {
            sep(o);
        }
        leaf(o, k)?;
        o.push(b':');
        Ok(())
    }

    fn changes(o: &mut Out, changes: &BTreeMap<String, AttrChange>) -> Res {
        o.push(b'{');
        for (i, (name, c)) in changes.iter().enumerate() {
            key(o, i == 0, name)?;
            let AttrChange { old, new } = c;
            o.push(b'{');
            key(o, true, "new")?;
            leaf(o, new)?;
            key(o, false, "old")?;
            leaf(o, old)?;
            o.push(b'}');
        }
        o.push(b'}');
        Ok(())
    }

    fn object(o: &mut Out, row: &ObjectRow) -> Res {
        let ObjectRow {
            anchor,
            dn,
            org,
            agreements,
            attrs,
            hidden,
        } = row;
        o.push(b'{');
        key(o, true, "agreements")?;
        leaf(o, agreements)?;
        key(o, false, "anchor")?;
        leaf(o, anchor)?;
        key(o, false, "attrs")?;
        leaf(o, attrs)?;
        key(o, false, "dn")?;
        leaf(o, dn)?;
        key(o, false, "hidden")?;
        match hidden {
            Some(Hidden { at, reason }) => {
                o.push(b'{');
                key(o, true, "at")?;
                leaf(o, at)?;
                key(o, false, "reason")?;
                leaf(o, reason)?;
                o.push(b'}');
            }
            None => o.extend_from_slice(b"null"),
        }
        key(o, false, "org")?;
        leaf(o, org)?;
        o.push(b'}');
        Ok(())
    }

    /// [`object`] from the JSON written for the snapshot row: the lists
    /// are the same bytes sorted or not (a list; a map sorted by its key;
    /// `Hidden`'s fields in sorted order already).
    fn object_written(o: &mut Out, held: &super::HeldJson<'_>) -> Res {
        let ObjectRow {
            anchor,
            dn,
            org,
            agreements: _,
            attrs: _,
            hidden: _,
        } = held.row;
        o.extend_from_slice(b"{\"agreements\":");
        o.extend_from_slice(held.agreements.as_bytes());
        key(o, false, "anchor")?;
        leaf(o, anchor)?;
        key(o, false, "attrs")?;
        o.extend_from_slice(held.attrs.as_bytes());
        key(o, false, "dn")?;
        leaf(o, dn)?;
        key(o, false, "hidden")?;
        o.extend_from_slice(held.hidden.as_deref().unwrap_or("null").as_bytes());
        key(o, false, "org")?;
        leaf(o, org)?;
        o.push(b'}');
        Ok(())
    }
}

pub fn chain_hash(prev: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    lower_hex(&h.finalize())
}

/// Bytes in lower-case hex, two digits each (as `{:x}` prints a digest).
fn lower_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
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
    Entry::of(r).mail()
}

/// Appends a record at the head of the chain. Call inside the transaction
/// that makes the change it records.
pub(crate) fn append(conn: &Connection, r: &Record) -> rusqlite::Result<()> {
    append_at(conn, r, &now())
}

/// [`append`] with the record's time given: a run's start and end records
/// carry the same time as its row in `runs`.
pub(crate) fn append_at(conn: &Connection, r: &Record, at: &str) -> rusqlite::Result<()> {
    Appender::new(conn).append(&Entry::of(r), at)
}

/// A statement taken from the connection's cache at its first use and
/// kept for the rest of a transaction: a batch runs it once per row
/// without looking it up (and handing it back) each time.
pub(crate) struct Prepared<'c> {
    conn: &'c Connection,
    sql: &'static str,
    stmt: Option<rusqlite::CachedStatement<'c>>,
}

impl<'c> Prepared<'c> {
    pub(crate) fn new(conn: &'c Connection, sql: &'static str) -> Prepared<'c> {
        Prepared {
            conn,
            sql,
            stmt: None,
        }
    }

    pub(crate) fn get(&mut self) -> rusqlite::Result<&mut rusqlite::CachedStatement<'c>> {
        let stmt = match self.stmt.take() {
            Some(s) => s,
            None => self.conn.prepare_cached(self.sql)?,
        };
        Ok(self.stmt.insert(stmt))
    }
}

/// An object's row with the JSON of its lists written once, for its
/// snapshot row and for the journal records of the change (the `state`
/// column and the canonical content hashed): each is what
/// `serde_json::to_string` writes for the field.
pub(crate) struct HeldJson<'a> {
    pub row: &'a ObjectRow,
    pub agreements: String,
    pub attrs: String,
    pub hidden: Option<String>,
}

impl<'a> HeldJson<'a> {
    pub fn new(row: &'a ObjectRow) -> serde_json::Result<HeldJson<'a>> {
        Ok(HeldJson {
            row,
            agreements: serde_json::to_string(&row.agreements)?,
            attrs: serde_json::to_string(&row.attrs)?,
            hidden: row.hidden.as_ref().map(serde_json::to_string).transpose()?,
        })
    }

    /// The row as the journal's `state` column holds it: what
    /// `serde_json::to_string(row)` writes (fields in declaration order).
    fn stored(&self) -> serde_json::Result<String> {
        let ObjectRow {
            anchor,
            dn,
            org,
            agreements: _,
            attrs: _,
            hidden: _,
        } = self.row;
        let mut o = Vec::with_capacity(self.attrs.len() + self.agreements.len() + 256);
        o.extend_from_slice(b"{\"anchor\":");
        serde_json::to_writer(&mut o, anchor)?;
        o.extend_from_slice(b",\"dn\":");
        serde_json::to_writer(&mut o, dn)?;
        o.extend_from_slice(b",\"org\":");
        serde_json::to_writer(&mut o, org)?;
        o.extend_from_slice(b",\"agreements\":");
        o.extend_from_slice(self.agreements.as_bytes());
        o.extend_from_slice(b",\"attrs\":");
        o.extend_from_slice(self.attrs.as_bytes());
        o.extend_from_slice(b",\"hidden\":");
        o.extend_from_slice(self.hidden.as_deref().unwrap_or("null").as_bytes());
        o.push(b'}');
        String::from_utf8(o).map_err(serde::ser::Error::custom)
    }
}

/// The object a record holds as now held: a row, or a row with its JSON
/// written already.
#[derive(Clone, Copy)]
pub(crate) enum State<'a> {
    Row(&'a ObjectRow),
    Json(&'a HeldJson<'a>),
}

impl<'a> State<'a> {
    fn row(self) -> &'a ObjectRow {
        match self {
            State::Row(r) => r,
            State::Json(h) => h.row,
        }
    }
}

/// A record as the journal will hold it: its organisation and the object
/// as held may be given apart from it (a commit adds them to each record
/// without copying it).
pub(crate) struct Entry<'a> {
    pub record: &'a Record,
    pub org: Option<&'a String>,
    pub state: Option<State<'a>>,
}

impl<'a> Entry<'a> {
    /// The record as it is.
    pub fn of(record: &'a Record) -> Entry<'a> {
        Entry {
            record,
            org: record.org.as_ref(),
            state: record.state.as_ref().map(State::Row),
        }
    }

    /// The person's mail address the record mentions (lower-case), for
    /// lookups: the object's, else the one the change wrote or removed.
    fn mail(&self) -> Option<String> {
        self.state
            .and_then(|s| s.row().attrs.get("mail"))
            .and_then(|v| v.first())
            .or_else(|| {
                self.record
                    .changes
                    .get("mail")
                    .and_then(|c| c.new.first().or(c.old.first()))
            })
            .map(|m| m.to_lowercase())
    }

    fn state_column(&self) -> Option<String> {
        match self.state? {
            State::Row(o) => serde_json::to_string(o).ok(),
            State::Json(h) => h.stored().ok(),
        }
    }
}

/// Appends records at the head of the chain, inside the caller's
/// transaction: the head is read once (at the first record, after the
/// caller's first write took the write lock) and carried on.
pub(crate) struct Appender<'c> {
    conn: &'c Connection,
    head: Option<(i64, String)>,
    insert: Prepared<'c>,
}

impl<'c> Appender<'c> {
    pub fn new(conn: &'c Connection) -> Appender<'c> {
        Appender {
            conn,
            head: None,
            insert: Prepared::new(
                conn,
                "INSERT INTO journal (id, run_id, at, anchor, dn, old_dn, op, outcome, reason,
                                      agreements, changes, error, org, state, detail, prev_hash,
                                      hash, mail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                         ?17, ?18)",
            ),
        }
    }

    pub fn append(&mut self, e: &Entry<'_>, at: &str) -> rusqlite::Result<()> {
        let (last_id, prev) = match self.head.take() {
            Some(h) => h,
            None => head(self.conn)?,
        };
        let id = last_id + 1;
        let hash = chain_hash(&prev, &canonical_entry(id, at, e));
        let r = e.record;
        self.insert.get()?.execute(params![
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
            e.org,
            e.state_column(),
            r.detail.as_ref().map(|d| d.to_string()),
            prev,
            hash,
            e.mail(),
        ])?;
        self.head = Some((id, hash));
        Ok(())
    }
}

/// [`canonical`] of an entry.
fn canonical_entry(id: i64, at: &str, e: &Entry<'_>) -> String {
    canon::encode(id, at, e).unwrap_or_else(|_| {
        let mut r = e.record.clone();
        r.org = e.org.cloned();
        r.state = e.state.map(|s| s.row().clone());
        canonical_via_value(id, at, &r)
    })
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::collection::{btree_map, vec};
    use proptest::option::of;
    use proptest::prelude::*;
    use serde_json::Value;

    use super::{
        canonical, canonical_entry, canonical_via_value, mail_of, AttrChange, Entry, HeldJson,
        Record, State,
    };
    use crate::state::object::{Hidden, ObjectRow};

    /// Text with what JSON must escape: quotes, backslashes, control
    /// characters, and characters outside ASCII.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 =,.@-]{0,12}",
            "[\"\\\\\u{0}-\u{1f}\u{7f}é€😀a]{0,8}",
            any::<String>(),
        ]
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            text().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(Value::from),
                btree_map(text(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object() -> impl Strategy<Value = ObjectRow> {
        (
            (text(), text(), text()),
            vec(text(), 0..3),
            btree_map(text(), vec(text(), 0..3), 0..4),
            of((text(), text())),
        )
            .prop_map(|((anchor, dn, org), agreements, attrs, hidden)| ObjectRow {
                anchor,
                dn,
                org,
                agreements,
                attrs,
                hidden: hidden.map(|(at, reason)| Hidden { at, reason }),
            })
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            (any::<i64>(), of(text()), of(text()), of(text())),
            (text(), text(), text(), vec(text(), 0..3)),
            btree_map(
                text(),
                (vec(text(), 0..3), vec(text(), 0..3))
                    .prop_map(|(old, new)| AttrChange { old, new }),
                0..4,
            ),
            (of(text()), of(text()), of(object()), of(json())),
        )
            .prop_map(
                |(
                    (run_id, anchor, dn, old_dn),
                    (op, outcome, reason, agreements),
                    changes,
                    (error, org, state, detail),
                )| Record {
                    run_id,
                    anchor,
                    dn,
                    old_dn,
                    op,
                    outcome,
                    reason,
                    agreements,
                    changes,
                    error,
                    org,
                    state,
                    detail,
                },
            )
    }

    proptest! {
        /// The direct writer hashes exactly the bytes the definition
        /// (a `Value` array, printed) gives: every journal written before
        /// verifies as it did, and every one written now the same way.
        #[test]
        fn the_direct_canonical_form_is_the_value_one_byte_for_byte(
            id in any::<i64>(),
            at in text(),
            r in record(),
        ) {
            prop_assert_eq!(canonical(id, &at, &r), canonical_via_value(id, &at, &r));
        }

        /// A commit writes the object's JSON once, for its snapshot row and
        /// its records: the `state` column holds what serde writes for the
        /// row, and the hashed content is the definition's, byte for byte.
        #[test]
        fn a_committed_objects_written_json_is_the_same_bytes(
            id in any::<i64>(),
            r in record(),
            row in object(),
        ) {
            let held = HeldJson::new(&row).unwrap();
            prop_assert_eq!(held.stored().unwrap(), serde_json::to_string(&row).unwrap());
            let entry = Entry { record: &r, org: r.org.as_ref(), state: Some(State::Json(&held)) };
            let mut whole = r.clone();
            whole.state = Some(row.clone());
            let at = "2026-11-30T12:00:00.000001Z";
            prop_assert_eq!(canonical_entry(id, at, &entry), canonical_via_value(id, at, &whole));
            prop_assert_eq!(entry.mail(), mail_of(&whole));
        }

        #[test]
        fn the_hash_is_printed_as_lower_hex(bytes in vec(any::<u8>(), 0..40)) {
            let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            prop_assert_eq!(super::lower_hex(&bytes), expected);
        }
    }

    #[test]
    fn a_typical_add_record_is_written_the_same_both_ways() {
        let mut r = Record::new(7, "add", "applied", "new entry");
        r.anchor = Some("0f1e-uuid".into());
        r.dn = Some("CN=Ann \"A\" Smith\\, Jr,OU=NHS Directory,DC=sync,DC=test".into());
        r.agreements = vec!["DSA-1".into()];
        r.changes = BTreeMap::from([(
            "mail".to_string(),
            AttrChange {
                old: vec![],
                new: vec!["ann@nhs.net".into()],
            },
        )]);
        r.org = Some("RJ1".into());
        r.state = Some(ObjectRow {
            anchor: "0f1e-uuid".into(),
            dn: "CN=Ann,OU=X".into(),
            org: "RJ1".into(),
            agreements: vec!["DSA-1".into()],
            attrs: BTreeMap::from([("mail".to_string(), vec!["ann@nhs.net".to_string()])]),
            hidden: Some(Hidden {
                at: "2026-01-01T00:00:00.000000Z".into(),
                reason: "left scope\n".into(),
            }),
        });
        r.detail =
            Some(serde_json::json!({"z": 1.5, "a": [null, true, "x"], "m": {"b": 2, "a": -3}}));
        let at = "2026-11-30T12:00:00.000001Z";
        assert_eq!(canonical(42, at, &r), canonical_via_value(42, at, &r));
        let empty = Record::new(1, "run", "started", "");
        assert_eq!(canonical(1, at, &empty), canonical_via_value(1, at, &empty));
    }
}
