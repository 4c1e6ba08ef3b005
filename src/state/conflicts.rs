//! Open conflicts: a person whose contact is withheld because an object
//! absync does not own holds its name or one of its addresses. A conflict
//! is journaled when it opens, when what it collides with changes, and
//! when it resolves; while it stands, a run only notes that it saw it
//! (`last_seen`), so the journal holds one record per event, not one per
//! run. `status` and the metrics read the table.
//!
//! Rows are `(anchor, kind, dn, with_dn, what, opened_at, opened_run,
//! last_seen, last_run)`: `kind` is `name` (an object holds the name),
//! `mail` (one in the managed OU holds the mail) or `address` (one anywhere
//! in the domain holds an address); `with_dn` is that object; `what` is the
//! journaled text naming the name or address.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::state::journal::{append_at, now, Record};
use crate::state::{Snapshot, StateError};

/// Schema version 7: the open conflicts.
pub(crate) const SCHEMA_V7: &str = "
CREATE TABLE conflicts (
    anchor     TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    dn         TEXT NOT NULL,
    with_dn    TEXT NOT NULL,
    what       TEXT NOT NULL,
    opened_at  TEXT NOT NULL,
    opened_run INTEGER NOT NULL,
    last_seen  TEXT NOT NULL,
    last_run   INTEGER NOT NULL
);
CREATE INDEX conflicts_opened ON conflicts(opened_at);
";

/// What a conflict is about, as compared from run to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Collision {
    /// `name`, `mail` or `address`.
    pub kind: String,
    /// The object absync does not own that holds it.
    pub with: String,
    /// The journaled text naming the name or the address.
    pub what: String,
}

impl Collision {
    /// Whether `other` is the same conflict: the same kind, the same other
    /// object (its DN however spelled) and, for an address or a mail, the
    /// same address (a name conflict's name is the other object's DN).
    pub fn same(&self, other: &Collision) -> bool {
        self.kind == other.kind
            && crate::dn::normalize(&self.with) == crate::dn::normalize(&other.with)
            && (self.kind == "name" || self.what.eq_ignore_ascii_case(&other.what))
    }
}

/// One open conflict, as `status` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenConflict {
    pub anchor: String,
    /// The name absync would give the contact.
    pub dn: String,
    #[serde(flatten)]
    pub collision: Collision,
    pub opened_at: String,
    pub opened_run: i64,
    pub last_seen: String,
    pub last_run: i64,
}

impl OpenConflict {
    /// How long it has been open at `now`, in seconds (0 if its time
    /// cannot be read).
    pub fn age_seconds(&self, now: time::OffsetDateTime) -> i64 {
        time::OffsetDateTime::parse(
            &self.opened_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| (now - t).whole_seconds().max(0))
        .unwrap_or(0)
    }
}

/// An age as people read it: `3d 4h`, `4h 12m`, `12m`, `45s`.
pub fn age_text(seconds: i64) -> String {
    let (d, h, m) = (
        seconds / 86_400,
        seconds % 86_400 / 3600,
        seconds % 3600 / 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// What meeting a conflict came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Met {
    /// New: journaled.
    Opened,
    /// What it collides with changed: journaled.
    Changed,
    /// The same as last time: only `last_seen` moved.
    Standing,
}

/// How a conflict ended, for its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The contact is in the target now.
    Written,
    /// The run read the person and met no conflict: the other object no
    /// longer holds the name or address, or the person no longer needs it
    /// (changed, out of scope, gone from the source). A write that
    /// followed has its own record.
    Cleared,
}

const COLS: &str = "anchor, kind, dn, with_dn, what, opened_at, opened_run, last_seen, last_run";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OpenConflict> {
    Ok(OpenConflict {
        anchor: r.get(0)?,
        collision: Collision {
            kind: r.get(1)?,
            with: r.get(3)?,
            what: r.get(4)?,
        },
        dn: r.get(2)?,
        opened_at: r.get(5)?,
        opened_run: r.get(6)?,
        last_seen: r.get(7)?,
        last_run: r.get(8)?,
    })
}

fn open_of(conn: &Connection, anchor: &str) -> rusqlite::Result<Option<OpenConflict>> {
    conn.prepare_cached(&format!("SELECT {COLS} FROM conflicts WHERE anchor = ?1"))?
        .query_row([anchor], from_row)
        .optional()
}

impl Snapshot {
    /// A run met a conflict: `r` is its record (op `conflict`, outcome
    /// `withheld`, with the anchor and the DN absync would write). Journaled
    /// when it is new or differs from the open one (then `detail` says
    /// `opened` or `changed`, the reason `conflict changed`); otherwise only
    /// the row's `last_seen` moves. One transaction.
    pub fn meet_conflict(&self, mut r: Record, c: &Collision) -> Result<Met, StateError> {
        let db = |e| self.db_err(e);
        let anchor = r.anchor.clone().unwrap_or_default();
        let dn = r.dn.clone().unwrap_or_default();
        let tx = self.write_tx()?;
        let at = now();
        let open = open_of(&tx, &anchor).map_err(db)?;
        let met = match &open {
            Some(o) if o.collision.same(c) => {
                tx.execute(
                    "UPDATE conflicts SET last_seen = ?2, last_run = ?3, dn = ?4 WHERE anchor = ?1",
                    params![anchor, at, r.run_id, dn],
                )
                .map_err(db)?;
                Met::Standing
            }
            Some(o) => {
                r.reason = "conflict changed".into();
                r.detail = Some(serde_json::json!({
                    "conflict": "changed", "kind": c.kind, "was": o.collision.kind,
                    "opened_at": o.opened_at, "opened_run": o.opened_run,
                }));
                append_at(&tx, &r, &at).map_err(db)?;
                tx.execute(
                    "UPDATE conflicts SET kind = ?2, dn = ?3, with_dn = ?4, what = ?5,
                        last_seen = ?6, last_run = ?7 WHERE anchor = ?1",
                    params![anchor, c.kind, dn, c.with, c.what, at, r.run_id],
                )
                .map_err(db)?;
                Met::Changed
            }
            None => {
                r.detail = Some(serde_json::json!({ "conflict": "opened", "kind": c.kind }));
                append_at(&tx, &r, &at).map_err(db)?;
                tx.execute(
                    &format!("INSERT INTO conflicts ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?6,?7)"),
                    params![anchor, c.kind, dn, c.with, c.what, at, r.run_id],
                )
                .map_err(db)?;
                Met::Opened
            }
        };
        tx.commit().map_err(db)?;
        Ok(met)
    }

    /// Journals the end of an open conflict (op `conflict`, outcome
    /// `resolved`, reason `conflict resolved`; `dn` the name the contact
    /// has now, or the one it would have had; `old_dn` the object it
    /// collided with) and removes its row, in one transaction.
    pub fn resolve_conflict(
        &self,
        open: &OpenConflict,
        run_id: i64,
        dn: Option<&str>,
        how: Resolution,
    ) -> Result<(), StateError> {
        let db = |e| self.db_err(e);
        let mut r = Record::new(run_id, "conflict", "resolved", "conflict resolved");
        r.anchor = Some(open.anchor.clone());
        r.dn = Some(dn.unwrap_or(&open.dn).to_string());
        r.old_dn = Some(open.collision.with.clone());
        let how = match how {
            Resolution::Written => "written",
            Resolution::Cleared => "cleared",
        };
        r.detail = Some(serde_json::json!({
            "conflict": "resolved", "kind": open.collision.kind, "resolution": how,
            "opened_at": open.opened_at, "opened_run": open.opened_run,
        }));
        let tx = self.write_tx()?;
        append_at(&tx, &r, &now()).map_err(db)?;
        tx.execute("DELETE FROM conflicts WHERE anchor = ?1", [&open.anchor])
            .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// The DN of `anchor`'s object when run `run_id` wrote it (its row's
    /// last change was that run's).
    pub fn written_in(&self, anchor: &str, run_id: i64) -> Result<Option<String>, StateError> {
        self.conn
            .prepare_cached("SELECT dn FROM objects WHERE anchor = ?1 AND run_id = ?2")
            .and_then(|mut s| {
                s.query_row(params![anchor, run_id], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| self.db_err(e))
    }

    /// Every open conflict, the oldest first.
    pub fn open_conflicts(&self) -> Result<Vec<OpenConflict>, StateError> {
        let db = |e| self.db_err(e);
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLS} FROM conflicts ORDER BY opened_at, anchor"
            ))
            .map_err(db)?;
        let rows = stmt.query_map([], from_row).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }
}

/// The kind of a conflict a record written before schema 7 describes, from
/// its error text (as absync wrote it then).
fn kind_of(error: &str) -> &'static str {
    if error.contains("already has the address") {
        "address"
    } else if error.contains("already has mail") {
        "mail"
    } else {
        "name"
    }
}

/// Fills the table from the journal when migrating to schema 7: a person
/// whose last record (of conflicts and changes the target took) is a
/// conflict has one open, since the first conflict after their last such
/// change. Their next run then journals nothing while it stands.
pub(crate) fn seed(conn: &Connection) -> rusqlite::Result<()> {
    let state_ops = crate::state::audit::STATE_OPS;
    let sql = format!(
        "SELECT j.anchor, j.dn, j.old_dn, j.error, j.at, j.run_id,
            (SELECT min(f.id) FROM journal f WHERE f.anchor = j.anchor AND f.op = 'conflict'
               AND f.id > coalesce((SELECT max(s.id) FROM journal s
                   WHERE s.anchor = j.anchor AND s.{state_ops}), 0))
         FROM journal j WHERE j.id IN (SELECT max(id) FROM journal WHERE anchor IS NOT NULL
               AND (op = 'conflict' OR ({state_ops})) GROUP BY anchor)
           AND j.op = 'conflict'"
    );
    type Row = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        i64,
        i64,
    );
    let rows: Vec<Row> = conn
        .prepare(&sql)?
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    for (anchor, dn, old_dn, error, at, run, first) in rows {
        let (opened_at, opened_run): (String, i64) = conn.query_row(
            "SELECT at, run_id FROM journal WHERE id = ?1",
            [first],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let dn = dn.unwrap_or_default();
        let error = error.unwrap_or_default();
        let with = old_dn.unwrap_or_else(|| dn.clone());
        conn.execute(
            &format!("INSERT INTO conflicts ({COLS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)"),
            params![
                anchor,
                kind_of(&error),
                dn,
                with,
                error,
                opened_at,
                opened_run,
                at,
                run
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(run: i64, anchor: &str, with: &str, what: &str) -> (Record, Collision) {
        let mut r = Record::new(run, "conflict", "withheld", "conflict");
        r.anchor = Some(anchor.into());
        r.dn = Some(format!("cn={anchor},OU=T"));
        r.old_dn = Some(with.into());
        r.error = Some(what.into());
        let c = Collision {
            kind: "address".into(),
            with: with.into(),
            what: what.into(),
        };
        (r, c)
    }

    fn records(s: &Snapshot, anchor: &str) -> Vec<Record> {
        s.stored_where("anchor = ?1", &[&anchor])
            .unwrap()
            .into_iter()
            .map(|s| s.record)
            .collect()
    }

    #[test]
    fn a_standing_conflict_is_journaled_once_then_on_change_and_resolution() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(dir.path()).unwrap();
        let (r, c) = conflict(1, "a", "CN=Council,CN=Users,DC=x", "has a@x: CN=Council");
        assert_eq!(s.meet_conflict(r, &c).unwrap(), Met::Opened);
        for run in 2..=5 {
            // The same conflict, its DN spelled another way by AD.
            let (r, c) = conflict(run, "a", "cn=council, cn=users,dc=X", "HAS A@X: CN=COUNCIL");
            assert_eq!(s.meet_conflict(r, &c).unwrap(), Met::Standing);
        }
        assert_eq!(records(&s, "a").len(), 1);
        let open = s.open_conflicts().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].opened_run, open[0].last_run), (1, 5));
        let (r, c) = conflict(6, "a", "CN=Other,CN=Users,DC=x", "has a@x: CN=Other");
        assert_eq!(s.meet_conflict(r, &c).unwrap(), Met::Changed);
        let open = s.open_conflicts().unwrap();
        assert_eq!(open[0].opened_run, 1, "the conflict's age carries on");
        s.resolve_conflict(&open[0], 7, Some("cn=a,OU=T"), Resolution::Written)
            .unwrap();
        assert!(s.open_conflicts().unwrap().is_empty());
        let rs = records(&s, "a");
        let said: Vec<_> = rs
            .iter()
            .map(|r| (r.outcome.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                ("withheld", "conflict"),
                ("withheld", "conflict changed"),
                ("resolved", "conflict resolved")
            ]
        );
        assert_eq!(rs[2].old_dn.as_deref(), Some("CN=Other,CN=Users,DC=x"));
        assert_eq!(rs[2].detail.as_ref().unwrap()["resolution"], "written");
        let verdict = crate::state::verify::verify(&s, &Default::default()).unwrap();
        assert!(
            matches!(verdict, crate::state::verify::Verdict::Intact { .. }),
            "{verdict:?}"
        );
    }

    #[test]
    fn ages_read_as_days_hours_minutes() {
        assert_eq!(age_text(45), "45s");
        assert_eq!(age_text(12 * 60 + 5), "12m");
        assert_eq!(age_text(4 * 3600 + 12 * 60), "4h 12m");
        assert_eq!(age_text(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
        let c = OpenConflict {
            anchor: "a".into(),
            dn: "cn=a".into(),
            collision: Collision {
                kind: "name".into(),
                with: "cn=a".into(),
                what: String::new(),
            },
            opened_at: "2026-03-01T10:00:00.000000Z".into(),
            opened_run: 1,
            last_seen: "2026-03-01T10:00:00.000000Z".into(),
            last_run: 1,
        };
        let now = time::macros::datetime!(2026-03-02 11:00 UTC);
        assert_eq!(c.age_seconds(now), 90_000);
    }

    #[test]
    fn migrating_seeds_the_conflicts_still_open_in_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(dir.path()).unwrap();
        // a: conflict in runs 1 and 2 (still open); b: conflict, then added.
        for run in 1..=2 {
            let (r, _) = conflict(run, "a", "CN=U,DC=x", "already has the address a@x: CN=U");
            s.journal(&[r]).unwrap();
        }
        let (r, _) = conflict(1, "b", "CN=V,DC=x", "already has mail b@x");
        s.journal(&[r]).unwrap();
        let mut add = Record::new(2, "add", "applied", "new entry");
        add.anchor = Some("b".into());
        s.journal(&[add]).unwrap();
        s.conn.execute_batch("DROP TABLE conflicts").unwrap();
        s.conn.execute_batch(SCHEMA_V7).unwrap();
        seed(&s.conn).unwrap();
        let open = s.open_conflicts().unwrap();
        assert_eq!(open.len(), 1, "{open:?}");
        assert_eq!(open[0].anchor, "a");
        assert_eq!(open[0].collision.kind, "address");
        assert_eq!((open[0].opened_run, open[0].last_run), (1, 2));
        // The next run meeting it journals nothing.
        let (r, c) = conflict(3, "a", "CN=U,DC=x", "already has the address a@x: CN=U");
        assert_eq!(s.meet_conflict(r, &c).unwrap(), Met::Standing);
    }
}
