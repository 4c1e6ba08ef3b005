//! The local state: a SQLite database (WAL) in the state directory holding
//! the snapshot of what absync last wrote to the target, the write-ahead
//! intents of changes in flight, and (see [`crate::state::journal`]) the runs and
//! the journal.
//!
//! **Invariant:** an object's snapshot row changes only after the target
//! accepted the change, in the same transaction as its journal record. An
//! intent row is committed *before* each write, so after a crash (kill -9)
//! the next run can look at the target and record what really happened.

mod access;
pub mod audit;
pub mod backup;
pub mod conflicts;
pub mod journal;
pub mod object;
pub mod report;
pub mod retention;
pub mod runs;
pub mod totals;
pub mod verify;
mod writer;

pub use writer::Landed;

pub use access::{read_small, replace_file, ReadFrom};
pub use object::{Attrs, Hidden, Intent, ObjectRow, SentTo};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state database {path}: {source}")]
    Db {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state database {path} was written by a newer absync (schema {found}, this one knows {known})")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "state database {path} has schema {found}, older than this absync's {known}: reading \
         does not migrate it; `absync sync` (or the daemon) migrates it, keeping a copy of \
         the old one first, or read it with the absync that wrote it"
    )]
    TooOld {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "state database {path}: the commit thread stopped with {pending} groups of accepted \
         changes uncommitted; their intents remain, and the next run settles them"
    )]
    CommitThread { path: PathBuf, pending: usize },
    #[error("{path} already exists: a backup never replaces a file; give a new name")]
    Exists { path: PathBuf },
    #[error("no journal in {dir}")]
    Missing { dir: PathBuf },
    #[error("permission denied reading {path}: run as {who}, or give a copy with --state")]
    PermissionDenied { path: PathBuf, who: String },
    #[error(
        "{path} is a symbolic link: absync follows none in its state directory (one could send \
         its writes anywhere); put the real directory or file there"
    )]
    Symlink { path: PathBuf },
    #[error(
        "{path} belongs to {owner}, who neither owns the state directory nor runs absync: \
         absync uses no file in its state directory that another user put there; remove it"
    )]
    ForeignFile { path: PathBuf, owner: String },
    #[error(
        "{path} is not a regular file: absync keeps only regular files in its state \
         directory; remove it"
    )]
    NotAFile { path: PathBuf },
    #[error(
        "the state directory {dir} belongs to {owner}, not to {user}, who runs absync: run \
         absync as {owner}, or give it a state directory of its own"
    )]
    NotOwner {
        dir: PathBuf,
        owner: String,
        user: String,
    },
    #[error("writing the output: {0}")]
    Output(String),
    #[error("journal archive {path}: {source}; nothing was pruned")]
    Archive {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the state directory {dir} is in use by another absync ({holder}); a daemon takes \
         `absync resync`, or wait for the other run to end"
    )]
    Locked { dir: PathBuf, holder: String },
    #[error("state database: corrupt row for {anchor}: {detail}")]
    Corrupt { anchor: String, detail: String },
    #[error(
        "the journal's records from before {0} were removed after the retention period; \
         it can answer for {0} or later"
    )]
    Pruned(String),
}

/// The schema this absync writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 9;

/// Version 1; later versions are steps from it.
const SCHEMA: &str = "
CREATE TABLE objects (
    anchor     TEXT PRIMARY KEY,
    dn         TEXT NOT NULL,
    dn_norm    TEXT NOT NULL UNIQUE,
    org        TEXT NOT NULL,
    agreements TEXT NOT NULL,
    attrs      TEXT NOT NULL,
    run_id     INTEGER NOT NULL
);
CREATE INDEX objects_org ON objects(org);
CREATE TABLE intents (
    anchor  TEXT PRIMARY KEY,
    payload TEXT NOT NULL
);
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    mode        TEXT NOT NULL,
    status      TEXT NOT NULL,
    counts      TEXT,
    config_hash TEXT NOT NULL,
    unix_user   TEXT NOT NULL
);
CREATE TABLE journal (
    id         INTEGER PRIMARY KEY,
    run_id     INTEGER NOT NULL,
    at         TEXT NOT NULL,
    anchor     TEXT,
    dn         TEXT,
    old_dn     TEXT,
    op         TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    agreements TEXT NOT NULL,
    changes    TEXT NOT NULL,
    error      TEXT
);
CREATE INDEX journal_run ON journal(run_id);
CREATE INDEX journal_anchor ON journal(anchor);
";

/// Version 3: the hash chain, and what the auditor's queries need.
const SCHEMA_V3: &str = "
ALTER TABLE journal ADD COLUMN org TEXT;
ALTER TABLE journal ADD COLUMN state TEXT;
ALTER TABLE journal ADD COLUMN detail TEXT;
ALTER TABLE journal ADD COLUMN mail TEXT;
ALTER TABLE journal ADD COLUMN prev_hash TEXT;
ALTER TABLE journal ADD COLUMN hash TEXT;
ALTER TABLE runs ADD COLUMN mapping_hash TEXT;
ALTER TABLE runs ADD COLUMN agreements_hash TEXT;
ALTER TABLE runs ADD COLUMN head_hash TEXT;
CREATE TABLE journal_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE INDEX journal_at ON journal(at);
CREATE INDEX journal_dn ON journal(dn COLLATE NOCASE);
CREATE INDEX journal_old_dn ON journal(old_dn COLLATE NOCASE);
CREATE INDEX journal_mail ON journal(mail);
CREATE INDEX journal_anchor_id ON journal(anchor, id);
CREATE INDEX journal_held ON journal(anchor, id)
  WHERE op IN ('add','modify','rename','hide','restore','delete','drift')
    AND outcome IN ('applied','already absent','detected');
DROP INDEX journal_anchor;
";

/// Version 4: delta pulls. The source's RFC 4533 cookie with the scope it
/// was taken under, and the anchors to pull again on the next delta (their
/// change failed or was held, so the source will not send them again).
const SCHEMA_V4: &str = "
CREATE TABLE source_cookie (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    kind      TEXT NOT NULL,
    cookie    BLOB NOT NULL,
    scope_key TEXT NOT NULL,
    run_id    INTEGER NOT NULL
);
CREATE TABLE retry_anchors (
    anchor TEXT PRIMARY KEY,
    reason TEXT NOT NULL
);
CREATE INDEX objects_hidden ON objects(anchor) WHERE hidden IS NOT NULL;
";

/// Version 5: the checkpoints pruning leaves (what was held when older
/// records were removed), found per anchor.
const SCHEMA_V5: &str = "
CREATE INDEX journal_checkpoint ON journal(anchor, id) WHERE op = 'checkpoint';
";

/// Version 9: what `status`, its `--check` and the metrics look up, found
/// without a pass over the journal or the runs (their cost stays flat as
/// the journal grows): the latest `organisations` record, and the latest
/// runs of a mode (the last full runs' compliance checks). Idempotent.
pub(crate) const SCHEMA_V9: &str = "
CREATE INDEX IF NOT EXISTS journal_organisations ON journal(id) WHERE op = 'organisations';
CREATE INDEX IF NOT EXISTS runs_mode ON runs(mode, id);
";

/// A change the target accepted, to be recorded: the object's new row (or
/// `None`: it is gone) and the journal records.
#[derive(Debug, Clone, Copy)]
pub struct Accepted<'a> {
    pub anchor: &'a str,
    pub after: Option<&'a ObjectRow>,
    pub records: &'a [crate::state::journal::Record],
}

/// Where the next delta pull starts: the cookie, and the scope (filter,
/// attributes, files) it belongs to. A different scope needs a full pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceCookie {
    pub kind: CookieKind,
    /// The RFC 4533 cookie, or the newest `modifyTimestamp` seen.
    pub cookie: Vec<u8>,
    pub scope_key: String,
}

/// Which kind of delta a stored cookie starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieKind {
    /// An RFC 4533 content-synchronisation cookie.
    Rfc4533,
    /// A `modifyTimestamp` (generalized time) watermark.
    Timestamp,
}

impl CookieKind {
    fn as_str(self) -> &'static str {
        match self {
            CookieKind::Rfc4533 => "rfc4533",
            CookieKind::Timestamp => "timestamp",
        }
    }
}

enum Migrate {
    TooNew(i64),
    Db(rusqlite::Error),
}

impl From<rusqlite::Error> for Migrate {
    fn from(e: rusqlite::Error) -> Self {
        Migrate::Db(e)
    }
}

/// An exclusive lock on a state directory: one daemon or one `sync` at a
/// time. Released when dropped (or when the process dies).
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    pub fn acquire(dir: &Path) -> Result<StateLock, StateError> {
        use std::io::{Read, Seek, Write};
        access::refuse_symlinks(dir)?;
        std::fs::create_dir_all(dir).map_err(|source| StateError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
        access::refuse_foreign_owner(dir)?;
        let path = dir.join("absync.lock");
        let io = |source| StateError::Dir {
            path: path.clone(),
            source,
        };
        let mut file = access::open_private(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(StateError::Locked {
                    dir: dir.to_path_buf(),
                    holder: match holder.trim() {
                        "" => "unknown process".into(),
                        h => h.to_string(),
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        let what = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
        write!(file, "pid {}: absync {what}", std::process::id()).map_err(io)?;
        Ok(StateLock { _file: file })
    }

    /// The process holding the lock of `dir` now (a daemon or a `sync`),
    /// as its lock file names it ("pid N: absync ..."), when the kernel's
    /// table of locks shows it held: looked at, never taken. `None` when
    /// nothing holds it (or the directory cannot be read).
    pub fn holder(dir: &Path) -> Option<String> {
        if !access::writer_holds_lock(dir) {
            return None;
        }
        let text = access::read_small(&dir.join("absync.lock"), 4096).ok()?;
        Some(text.trim().to_string())
    }
}

type RawRow = (String, String, String, String, String, Option<String>);

/// What a commit writes for each change, its statements prepared once per
/// transaction.
struct CommitWrites<'c> {
    upsert: crate::state::journal::Prepared<'c>,
    forget: crate::state::journal::Prepared<'c>,
    clear_intent: crate::state::journal::Prepared<'c>,
    journal: crate::state::journal::Appender<'c>,
}

impl<'c> CommitWrites<'c> {
    fn new(conn: &'c Connection) -> CommitWrites<'c> {
        use crate::state::journal::Prepared;
        CommitWrites {
            upsert: Prepared::new(
                conn,
                "INSERT INTO objects (anchor, dn, dn_norm, org, agreements, attrs, run_id, hidden, dc)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT(anchor) DO UPDATE SET dn = ?2, dn_norm = ?3, org = ?4,
                   agreements = ?5, attrs = ?6, run_id = ?7, hidden = ?8, dc = ?9",
            ),
            forget: Prepared::new(conn, "DELETE FROM objects WHERE anchor = ?1"),
            clear_intent: Prepared::new(conn, "DELETE FROM intents WHERE anchor = ?1"),
            journal: crate::state::journal::Appender::new(conn),
        }
    }
}

/// The state database.
pub struct Snapshot {
    pub(crate) conn: Connection,
    pub path: PathBuf,
    /// Where a reader copied an evidence copy with a write-ahead log to
    /// (removed when dropped, after the connection).
    _scratch: Option<tempfile::TempDir>,
    /// The target server (an AD DC's name, else its URL) the changes
    /// committed now were accepted by: stored with each object.
    accepted_by: std::cell::RefCell<Option<String>>,
    /// The commit thread, once a group was handed to it (see
    /// [`Self::hand_over`]).
    writer: std::cell::RefCell<Option<writer::Writer>>,
}

impl Snapshot {
    /// Names the target server the changes committed from now on were
    /// accepted by; returns the one named before.
    pub fn accepted_by(&self, server: Option<String>) -> Option<String> {
        self.accepted_by.replace(server)
    }

    /// Opens (creating if needed) the state database in `dir`, to write:
    /// `sync`, the daemon (after taking the [`StateLock`]) and plans. An
    /// older schema is migrated, after a copy of the database is kept.
    pub fn open(dir: &Path) -> Result<Snapshot, StateError> {
        let derr = |source| StateError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        use std::os::unix::fs::PermissionsExt;
        access::refuse_symlinks(dir)?;
        std::fs::create_dir_all(dir).map_err(derr)?;
        access::refuse_foreign_owner(dir)?;
        // Personal data: readable by absync's user only. The modes are set
        // on what was opened (fchmod), never through a path a link could
        // redirect.
        access::open_dir(dir)?
            .set_permissions(std::fs::Permissions::from_mode(0o700))
            .map_err(derr)?;
        let path = dir.join("absync.db");
        let db = |source| StateError::Db {
            path: path.clone(),
            source,
        };
        // The database (and the WAL and index files SQLite creates with
        // the same mode) for absync's user only; an empty file is a new
        // database to SQLite.
        access::open_private(&path)?
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|source| StateError::Dir {
                path: path.clone(),
                source,
            })?;
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = access::open_sqlite(&path, access::sqlite_path(dir, "absync.db"), flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        // WAL + synchronous=NORMAL: a commit survives the process being
        // killed at any point (it is in the WAL before commit returns).
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        Self::bring_up_to_date(&conn, &path)?;
        Ok(Snapshot {
            conn,
            path,
            _scratch: None,
            accepted_by: Default::default(),
            writer: Default::default(),
        })
    }

    /// Opens the state database in `dir` to read it (`journal`, `status`,
    /// the metrics), changing nothing there: see [`ReadFrom`]. A database
    /// of another schema is refused, not migrated; a missing or empty one
    /// is [`StateError::Missing`].
    pub fn open_read_only(dir: &Path, from: ReadFrom) -> Result<Snapshot, StateError> {
        let opened = access::open_read_only(dir, from)?;
        access::check_schema(&opened.conn, dir, &opened.path)?;
        Ok(Snapshot {
            conn: opened.conn,
            path: opened.path,
            _scratch: opened.scratch,
            accepted_by: Default::default(),
            writer: Default::default(),
        })
    }

    /// Migrates an older schema, under a write lock so that two processes
    /// opening a new state directory at once cannot both try. An existing
    /// database is copied first (see `access::backup`).
    fn bring_up_to_date(conn: &Connection, path: &Path) -> Result<(), StateError> {
        let db = |source| StateError::Db {
            path: path.to_path_buf(),
            source,
        };
        let read_version =
            |c: &Connection| c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0));
        let version = read_version(conn).map_err(db)?;
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if (1..SCHEMA_VERSION).contains(&version) {
            let bak = access::backup(conn, path)?;
            tracing::info!(
                "state database {} has schema {version}: kept a copy at {} before migrating \
                 it to schema {SCHEMA_VERSION}",
                path.display(),
                bak.display()
            );
        }
        conn.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
        match Self::migrate(conn, read_version(conn).map_err(db)?) {
            Ok(()) => conn.execute_batch("COMMIT").map_err(db),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(match e {
                    Migrate::TooNew(found) => StateError::TooNew {
                        path: path.to_path_buf(),
                        found,
                        known: SCHEMA_VERSION,
                    },
                    Migrate::Db(source) => db(source),
                })
            }
        }
    }

    /// Takes the schema from `version` to the current one, step by step,
    /// inside the caller's transaction.
    fn migrate(conn: &Connection, version: i64) -> Result<(), Migrate> {
        if version > SCHEMA_VERSION {
            return Err(Migrate::TooNew(version));
        }
        if version == 0 {
            conn.execute_batch(SCHEMA)?;
        }
        if version <= 1 {
            conn.execute_batch("ALTER TABLE objects ADD COLUMN hidden TEXT;")?;
        }
        if version <= 2 {
            conn.execute_batch(SCHEMA_V3)?;
            // Records written before the chain existed join it, in order.
            crate::state::journal::rechain(conn)?;
        }
        if version <= 3 {
            conn.execute_batch(SCHEMA_V4)?;
        }
        if version <= 4 {
            conn.execute_batch(SCHEMA_V5)?;
        }
        if version <= 5 {
            // The metrics' totals, carried on from the runs kept so far.
            conn.execute_batch(totals::SCHEMA_V6)?;
            totals::seed(conn)?;
        }
        if version <= 6 {
            // The open conflicts, carried on from the journal.
            conn.execute_batch(conflicts::SCHEMA_V7)?;
            conflicts::seed(conn)?;
            // Names stored under the old, wrong normal form.
            let fixed = object::refresh_dn_norms(conn)?;
            if fixed > 0 {
                tracing::info!("state database: corrected the normal form of {fixed} stored names");
            }
        }
        if version <= 7 && !object::has_column(conn, "objects", "dc")? {
            // Which target server accepted each object's last change, and
            // the object's objectGUID (the same on every DC), once read.
            conn.execute_batch(
                "ALTER TABLE objects ADD COLUMN dc TEXT;
                 ALTER TABLE objects ADD COLUMN guid TEXT;",
            )?;
        }
        if version <= 8 {
            conn.execute_batch(SCHEMA_V9)?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(())
    }

    /// A read transaction (deferred: it takes no write lock and writes
    /// nothing): until the guard is dropped, every query on this handle
    /// sees the database as it was at the first read, so a run ending
    /// meanwhile is not half seen. Ended (rolled back) when dropped.
    pub(crate) fn consistent_read(&self) -> Result<rusqlite::Transaction<'_>, StateError> {
        self.conn
            .unchecked_transaction()
            .map_err(|e| self.db_err(e))
    }

    pub(crate) fn db_err(&self, source: rusqlite::Error) -> StateError {
        StateError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn row_to_object(r: RawRow) -> Result<ObjectRow, StateError> {
        let (anchor, dn, org, agreements, attrs, hidden) = r;
        let corrupt = |e: serde_json::Error| StateError::Corrupt {
            anchor: anchor.clone(),
            detail: e.to_string(),
        };
        Ok(ObjectRow {
            agreements: serde_json::from_str(&agreements).map_err(corrupt)?,
            attrs: serde_json::from_str(&attrs).map_err(corrupt)?,
            hidden: hidden
                .map(|h| serde_json::from_str(&h))
                .transpose()
                .map_err(corrupt)?,
            anchor,
            dn,
            org,
        })
    }

    fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    }

    /// The object held for an anchor.
    pub fn get(&self, anchor: &str) -> Result<Option<ObjectRow>, StateError> {
        let row = self
            .conn
            .prepare_cached(
                "SELECT anchor, dn, org, agreements, attrs, hidden FROM objects WHERE anchor = ?1",
            )
            .and_then(|mut s| s.query_row([anchor], Self::raw_row).optional())
            .map_err(|e| self.db_err(e))?;
        row.map(Self::row_to_object).transpose()
    }

    /// The objectGUIDs known, by anchor (read by full runs).
    pub fn guids(&self) -> Result<HashMap<String, String>, StateError> {
        self.conn
            .prepare("SELECT anchor, guid FROM objects WHERE guid IS NOT NULL")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(|e| self.db_err(e))
    }

    /// Records the objectGUIDs read from the target, in one transaction.
    pub fn set_guids(&self, guids: &[(String, String)]) -> Result<(), StateError> {
        let db = |e| self.db_err(e);
        let tx = self.write_tx()?;
        for (anchor, guid) in guids {
            tx.prepare_cached("UPDATE objects SET guid = ?2 WHERE anchor = ?1")
                .and_then(|mut s| s.execute([anchor, guid]))
                .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// The anchor of the managed object holding a DN, if any.
    pub fn holder_of(&self, dn: &str) -> Result<Option<String>, StateError> {
        self.conn
            .prepare_cached("SELECT anchor FROM objects WHERE dn_norm = ?1")
            .and_then(|mut s| {
                s.query_row([crate::dn::normalize(dn)], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| self.db_err(e))
    }

    pub fn count(&self) -> Result<u64, StateError> {
        self.count_where("1")
    }

    /// Managed objects that are not hidden.
    pub fn count_visible(&self) -> Result<u64, StateError> {
        // All rows (counted on the smallest index) less the hidden ones (a
        // partial index): no pass over the rows themselves.
        let hidden = self.count_where("hidden IS NOT NULL")?;
        Ok(self.count()?.saturating_sub(hidden))
    }

    fn count_where(&self, cond: &str) -> Result<u64, StateError> {
        self.conn
            .query_row(
                &format!("SELECT count(*) FROM objects WHERE {cond}"),
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.unsigned_abs())
            .map_err(|e| self.db_err(e))
    }

    /// Calls `f` for every managed object whose anchor `keep` accepts (in
    /// anchor order); the others are not even decoded.
    pub fn for_each_kept(
        &self,
        keep: impl Fn(&str) -> bool,
        f: impl FnMut(ObjectRow) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        self.each_row("", keep, f)
    }

    /// Calls `f` for every managed object (in anchor order).
    pub fn for_each(
        &self,
        f: impl FnMut(ObjectRow) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        self.each_row("", |_| true, f)
    }

    /// The rows `cond` (SQL after FROM objects) selects, in anchor order,
    /// decoded only when `keep` accepts the anchor.
    fn each_row(
        &self,
        cond: &str,
        keep: impl Fn(&str) -> bool,
        mut f: impl FnMut(ObjectRow) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let db = |e| self.db_err(e);
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT anchor, dn, org, agreements, attrs, hidden FROM objects {cond} \
                 ORDER BY anchor"
            ))
            .map_err(db)?;
        let mut rows = stmt.query([]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            let anchor = r
                .get_ref(0)
                .map_err(db)?
                .as_str()
                .map_err(|e| db(e.into()))?;
            if keep(anchor) {
                f(Self::row_to_object(Self::raw_row(r).map_err(db)?)?)?;
            }
        }
        Ok(())
    }

    /// Commits an intent before the write it describes is sent.
    pub fn record_intent(&self, intent: &Intent) -> Result<(), StateError> {
        self.record_intents(std::slice::from_ref(intent))
    }

    /// Commits the intents of a batch of writes, in one transaction, before
    /// any of them is sent.
    pub fn record_intents(&self, intents: &[Intent]) -> Result<(), StateError> {
        let db = |e| self.db_err(e);
        let tx = self.write_tx()?;
        self.intend_in(&tx, intents)?;
        tx.commit().map_err(db)?;
        crate::failpoint::hit("after-intent");
        Ok(())
    }

    fn intend_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        intents: &[Intent],
    ) -> Result<(), StateError> {
        for intent in intents {
            let payload = serde_json::to_string(intent).map_err(|e| StateError::Corrupt {
                anchor: intent.anchor.clone(),
                detail: e.to_string(),
            })?;
            tx.prepare_cached("INSERT OR REPLACE INTO intents (anchor, payload) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(params![intent.anchor, payload]))
                .map_err(|e| self.db_err(e))?;
        }
        Ok(())
    }

    /// Commits the intents of the next group of pipelined writes (see
    /// [`Self::record_intents`]), then hands what the target accepted of an
    /// earlier group to the commit thread ([`Self::hand_over`]).
    pub fn hand_over_and_intend(
        &self,
        landed: Vec<Landed>,
        run_id: i64,
        intents: &[Intent],
    ) -> Result<(), StateError> {
        if !intents.is_empty() {
            self.record_intents(intents)?;
        }
        self.hand_over(landed, run_id)
    }

    /// Hands what the target accepted of a group of writes to the commit
    /// thread (started on first use, with a connection of its own): it is
    /// committed in one transaction, after every group handed over before
    /// it, while the run goes on. Every other write first waits for it
    /// ([`Self::settle`]); so must a read that needs it.
    pub fn hand_over(&self, landed: Vec<Landed>, run_id: i64) -> Result<(), StateError> {
        if landed.is_empty() {
            return Ok(());
        }
        if self.writer.borrow().is_none() {
            let w = writer::Writer::start(self.second_connection()?)?;
            self.writer.replace(Some(w));
        }
        let by = self.accepted_by.borrow().clone();
        let refused = match self.writer.borrow().as_ref() {
            Some(w) => w.hand_over(landed, run_id, by),
            None => Err(landed),
        };
        // The thread is gone: settle says why; else commit here.
        if let Err(landed) = refused {
            self.settle()?;
            let rows: Vec<Accepted<'_>> = landed.iter().map(Landed::accepted).collect();
            self.commit_many(&rows, run_id)?;
        }
        Ok(())
    }

    /// Waits until every group handed to the commit thread is committed;
    /// the first failure to commit one, if any (then the thread ends).
    pub fn settle(&self) -> Result<(), StateError> {
        let settled = match self.writer.borrow().as_ref() {
            Some(w) => w.settle(&self.path),
            None => return Ok(()),
        };
        if settled.is_err() {
            drop(self.writer.take());
        }
        settled
    }

    /// Another connection to this database, for the commit thread.
    fn second_connection(&self) -> Result<Snapshot, StateError> {
        let db = |source| StateError::Db {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = access::open_sqlite(&self.path, access::sqlite_path(dir, "absync.db"), flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        Ok(Snapshot {
            conn,
            path: self.path.clone(),
            _scratch: None,
            accepted_by: Default::default(),
            writer: Default::default(),
        })
    }

    /// A write transaction on this connection, once every group handed to
    /// the commit thread is committed. Immediate: it takes the write lock
    /// at once, so the journal's head it reads is the head it writes on.
    pub(crate) fn write_tx(&self) -> Result<rusqlite::Transaction<'_>, StateError> {
        self.settle()?;
        rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.db_err(e))
    }

    pub fn clear_intent(&self, anchor: &str) -> Result<(), StateError> {
        self.settle()?;
        self.conn
            .prepare_cached("DELETE FROM intents WHERE anchor = ?1")
            .and_then(|mut s| s.execute([anchor]))
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Intents left by an interrupted run (once every group handed to the
    /// commit thread is committed, and its intents cleared).
    pub fn intents(&self) -> Result<Vec<Intent>, StateError> {
        self.settle()?;
        let mut stmt = self
            .conn
            .prepare("SELECT anchor, payload FROM intents ORDER BY anchor")
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (anchor, payload) = row.map_err(|e| self.db_err(e))?;
            out.push(
                serde_json::from_str(&payload).map_err(|e| StateError::Corrupt {
                    anchor,
                    detail: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }

    /// The cookie the next delta pull starts from, if any.
    pub fn source_cookie(&self) -> Result<Option<SourceCookie>, StateError> {
        self.conn
            .query_row(
                "SELECT cookie, scope_key, kind FROM source_cookie WHERE id = 1",
                [],
                |r| {
                    Ok(SourceCookie {
                        cookie: r.get(0)?,
                        scope_key: r.get(1)?,
                        kind: match r.get_ref(2)?.as_str()? {
                            "timestamp" => CookieKind::Timestamp,
                            _ => CookieKind::Rfc4533,
                        },
                    })
                },
            )
            .optional()
            .map_err(|e| self.db_err(e))
    }

    /// Ends a pull: the new cookie (or none: the next run pulls everything)
    /// and the anchors to pull again, in one transaction. Called only after
    /// every change of the run was committed, so the cookie never runs ahead
    /// of what the target accepted.
    pub fn finish_pull(
        &self,
        cookie: Option<&SourceCookie>,
        retry: &[(String, String)],
        run_id: i64,
    ) -> Result<(), StateError> {
        let db = |e| self.db_err(e);
        let tx = self.write_tx()?;
        tx.execute("DELETE FROM source_cookie", []).map_err(db)?;
        if let Some(c) = cookie {
            tx.execute(
                "INSERT INTO source_cookie (id, kind, cookie, scope_key, run_id)
                 VALUES (1, ?1, ?2, ?3, ?4)",
                params![c.kind.as_str(), c.cookie, c.scope_key, run_id],
            )
            .map_err(db)?;
        }
        tx.execute("DELETE FROM retry_anchors", []).map_err(db)?;
        for (anchor, reason) in retry {
            tx.execute(
                "INSERT OR REPLACE INTO retry_anchors (anchor, reason) VALUES (?1, ?2)",
                params![anchor, reason],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    /// Anchors a delta pull must read again (their last change did not land).
    pub fn retry_anchors(&self) -> Result<Vec<String>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT anchor FROM retry_anchors ORDER BY anchor")
            .map_err(|e| self.db_err(e))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| self.db_err(e))?;
        rows.collect::<Result<Vec<String>, _>>()
            .map_err(|e| self.db_err(e))
    }

    /// The organisation of a managed object, without reading its attributes.
    pub fn org_of(&self, anchor: &str) -> Result<Option<String>, StateError> {
        self.conn
            .prepare_cached("SELECT org FROM objects WHERE anchor = ?1")
            .and_then(|mut s| s.query_row([anchor], |r| r.get(0)).optional())
            .map_err(|e| self.db_err(e))
    }

    /// Visible (not hidden) managed objects of one organisation.
    pub fn visible_in_org(&self, org: &str) -> Result<u64, StateError> {
        self.conn
            .prepare_cached("SELECT count(*) FROM objects WHERE org = ?1 AND hidden IS NULL")
            .and_then(|mut s| s.query_row([org], |r| r.get::<_, i64>(0)))
            .map(i64::unsigned_abs)
            .map_err(|e| self.db_err(e))
    }

    /// Calls `f` for every hidden object (waiting out its grace period).
    pub fn for_each_hidden(
        &self,
        f: impl FnMut(ObjectRow) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        self.each_row(
            "INDEXED BY objects_hidden WHERE hidden IS NOT NULL",
            |_| true,
            f,
        )
    }

    /// Records, in one transaction, the target's acceptance of a change:
    /// the object's new row (or its removal), the journal records, and the
    /// end of its intent.
    pub fn commit(
        &self,
        anchor: &str,
        after: Option<&ObjectRow>,
        run_id: i64,
        records: &[crate::state::journal::Record],
    ) -> Result<(), StateError> {
        self.commit_many(
            &[Accepted {
                anchor,
                after,
                records,
            }],
            run_id,
        )
    }

    /// [`Self::commit`] for several changes in one transaction (a pipelined
    /// batch the target accepted).
    pub fn commit_many(&self, changes: &[Accepted<'_>], run_id: i64) -> Result<(), StateError> {
        let db = |e| self.db_err(e);
        // unchecked: callers never nest transactions on this connection.
        let tx = self.write_tx()?;
        {
            let mut writes = CommitWrites::new(&tx);
            for c in changes {
                self.commit_in(&mut writes, c, run_id)?;
            }
        }
        crate::failpoint::hit("before-commit");
        tx.commit().map_err(db)?;
        crate::failpoint::hit("after-commit");
        Ok(())
    }

    fn commit_in(
        &self,
        writes: &mut CommitWrites<'_>,
        change: &Accepted<'_>,
        run_id: i64,
    ) -> Result<(), StateError> {
        use crate::state::journal::{Entry, HeldJson, State};
        let Accepted {
            anchor,
            after,
            records,
        } = *change;
        let db = |e| self.db_err(e);
        // Records carry the organisation and the object as now held.
        let org = match after {
            Some(o) => Some(o.org.clone()),
            None => self.get(anchor)?.map(|o| o.org),
        }
        .filter(|o| !o.is_empty());
        // The object's JSON, written once for its row and its records.
        let held = after
            .map(HeldJson::new)
            .transpose()
            .map_err(|e| StateError::Corrupt {
                anchor: anchor.to_string(),
                detail: e.to_string(),
            })?;
        match &held {
            Some(h) => self.upsert(&mut writes.upsert, h, run_id).map_err(db)?,
            None => {
                writes
                    .forget
                    .get()
                    .map_err(db)?
                    .execute([anchor])
                    .map_err(db)?;
            }
        }
        for r in records {
            let entry = Entry {
                record: r,
                org: r.org.as_ref().or(org.as_ref()),
                state: held.as_ref().map(State::Json),
            };
            writes
                .journal
                .append(&entry, &crate::state::journal::now())
                .map_err(db)?;
        }
        writes
            .clear_intent
            .get()
            .map_err(db)?
            .execute([anchor])
            .map_err(db)?;
        Ok(())
    }

    /// Writes an object's snapshot row, new or replacing the one held.
    fn upsert(
        &self,
        upsert: &mut crate::state::journal::Prepared<'_>,
        h: &crate::state::journal::HeldJson<'_>,
        run_id: i64,
    ) -> rusqlite::Result<()> {
        let o = h.row;
        let dc = self.accepted_by.borrow();
        upsert.get()?.execute(params![
            o.anchor,
            o.dn,
            crate::dn::normalize(&o.dn),
            o.org,
            h.agreements,
            h.attrs,
            run_id,
            h.hidden,
            *dc
        ])?;
        Ok(())
    }
}

/// The size on disk of the state database (snapshot and journal), its
/// write-ahead log included.
pub fn bytes_on_disk(state_dir: &Path) -> u64 {
    ["absync.db", "absync.db-wal"]
        .iter()
        .filter_map(|f| std::fs::symlink_metadata(state_dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}
