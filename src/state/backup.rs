//! Copies of the state database (`absync state backup`, and the copy kept
//! before a migration), what a run does with a copy put back, and giving
//! back the space pruning freed (`absync state compact`).
//!
//! A copy is taken with SQLite's online backup API in one step: one read
//! transaction over the whole database, so the copy is the database as of
//! one commit while a daemon or `sync` goes on writing (in WAL mode a
//! reader neither waits for a writer nor holds one up). It takes no lock.
//! The copy is one file (a rollback journal, not WAL), created anew (never
//! replacing a file or following a link), mode 0600, and marked as a copy
//! (`journal_meta` key `backup`: when, the last run, the journal's head);
//! its journal records are the database's, unchanged. When it is put back
//! as the state, the first run that opens it journals the restore, is a
//! full run (re-adopting by anchor what later runs wrote), and removes the
//! mark in the same transaction.

use std::path::{Path, PathBuf};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::state::journal::Record;
use crate::state::verify::{verify, Evidence, Verdict};
use crate::state::{access, ReadFrom, Snapshot, StateError, StateLock};

/// The `journal_meta` key that marks a copy.
const MARK: &str = "backup";

/// What `absync state backup` wrote.
#[derive(Debug)]
pub struct Copied {
    pub path: PathBuf,
    pub bytes: u64,
    /// The copy's mark: when it was taken, its last run and head.
    pub mark: Option<serde_json::Value>,
    /// The copy's journal, verified (the chain and the runs rows).
    pub verdict: Verdict,
}

/// Writes a consistent copy of the state database in `dir` to `to` (see
/// the module's notes) and verifies the copy's journal. The database must
/// be of this absync's schema (an older one is copied by the run that
/// migrates it).
pub fn backup(dir: &Path, from: ReadFrom, to: &Path) -> Result<Copied, StateError> {
    let opened = access::open_read_only(dir, from)?;
    access::check_schema(&opened.conn, dir, &opened.path)?;
    copy(&opened.conn, &opened.path, to)?;
    drop(opened);
    let s = open_copy(to)?;
    let verdict = verify(&s, &Evidence::default())?;
    let mark = mark_of(&s.conn).map_err(|e| s.db_err(e))?;
    let bytes = std::fs::symlink_metadata(to).map(|m| m.len()).unwrap_or(0);
    Ok(Copied {
        path: to.to_path_buf(),
        bytes,
        mark,
        verdict,
    })
}

/// Copies the database `src` (at `src_path`, for messages) to `to`, a new
/// file (mode 0600); on failure nothing is left at `to`.
pub(crate) fn copy(src: &Connection, src_path: &Path, to: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(to)
        .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)));
    match created {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(StateError::Exists {
                path: to.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(StateError::Dir {
                path: to.to_path_buf(),
                source,
            })
        }
    }
    fill(src, to).map_err(|source| {
        let _ = std::fs::remove_file(to);
        StateError::Db {
            path: src_path.to_path_buf(),
            source,
        }
    })
}

/// The backup proper, into the empty file `to`: every page in one step,
/// then the copy made a single file and marked.
fn fill(src: &Connection, to: &Path) -> rusqlite::Result<()> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_NOFOLLOW;
    let mut dst = Connection::open_with_flags(to, flags)?;
    {
        let backup = Backup::new(src, &mut dst)?;
        let mut tries = 0;
        loop {
            match backup.step(-1)? {
                StepResult::Done => break,
                // Another connection holds a lock a moment (a checkpoint).
                _ if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                _ => {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some("the database stayed locked for 10 s".into()),
                    ))
                }
            }
        }
    }
    // The source's WAL flag came with its first page: one file instead.
    dst.pragma_update(None, "journal_mode", "DELETE")?;
    mark(&dst)
}

/// Marks a copy (when `journal_meta` exists: schema 3 on).
fn mark(dst: &Connection) -> rusqlite::Result<()> {
    let has_meta: i64 = dst.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'journal_meta'",
        [],
        |r| r.get(0),
    )?;
    if has_meta == 0 {
        return Ok(());
    }
    let last_run: Option<i64> = dst.query_row("SELECT max(id) FROM runs", [], |r| r.get(0))?;
    let head: Option<String> = dst
        .query_row(
            "SELECT hash FROM journal ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let value = serde_json::json!({
        "taken_at": crate::state::journal::now(),
        "last_run": last_run,
        "head": head,
    });
    dst.execute(
        "INSERT OR REPLACE INTO journal_meta (key, value) VALUES (?1, ?2)",
        rusqlite::params![MARK, value.to_string()],
    )?;
    Ok(())
}

/// A copy's mark, if it has one.
fn mark_of(conn: &Connection) -> rusqlite::Result<Option<serde_json::Value>> {
    let text: Option<String> = conn
        .query_row(
            "SELECT value FROM journal_meta WHERE key = ?1",
            [MARK],
            |r| r.get(0),
        )
        .optional()?;
    Ok(text.map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t))))
}

/// A copy, opened read-only as it is (a single file: nothing is created).
fn open_copy(path: &Path) -> Result<Snapshot, StateError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = access::open_sqlite(path, path, flags)?;
    Ok(Snapshot {
        conn,
        path: path.to_path_buf(),
        _scratch: None,
        accepted_by: Default::default(),
        writer: Default::default(),
    })
}

impl Snapshot {
    /// The mark of the copy this database was restored from, if no run has
    /// journaled the restore yet.
    pub fn restored_from(&self) -> Result<Option<serde_json::Value>, StateError> {
        mark_of(&self.conn).map_err(|e| self.db_err(e))
    }

    /// Journals the restore of a copy (its record among `records`) and
    /// removes the copy's mark, in one transaction.
    pub fn journal_restored(&self, records: &[Record]) -> Result<(), StateError> {
        let db = |e| self.db_err(e);
        let tx = self.write_tx()?;
        for r in records {
            crate::state::journal::append(&tx, r).map_err(db)?;
        }
        tx.execute("DELETE FROM journal_meta WHERE key = ?1", [MARK])
            .map_err(db)?;
        // The copy's cookie starts where the backup stopped: with it gone,
        // every run is full until one completes, even if this one fails
        // before it reads the source.
        tx.execute("DELETE FROM source_cookie", []).map_err(db)?;
        tx.commit().map_err(db)
    }
}

/// The record of a restore, for the run `run_id` that found `mark`.
pub fn restore_record(run_id: i64, mark: &serde_json::Value) -> Record {
    let mut r = Record::new(
        run_id,
        "state",
        "restored",
        &format!(
            "the state database was restored from a backup taken at {} (its last run {}): \
             the runs after it are not in this journal; this run is full and re-adopts by \
             anchor what they wrote",
            mark["taken_at"].as_str().unwrap_or("an unknown time"),
            mark["last_run"]
                .as_i64()
                .map_or("none".to_string(), |n| n.to_string()),
        ),
    );
    r.detail = Some(mark.clone());
    r
}

/// What `absync state compact` did: the database's size on disk (its
/// write-ahead log included) before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub before: u64,
    pub after: u64,
}

/// Rewrites the state database in `dir` without its free pages (SQLite's
/// `VACUUM`), then empties the write-ahead log into it. Takes the state
/// lock (refused while a daemon or `sync` holds it) and changes no row: no
/// record is added, moved or removed. Migrates nothing: another schema is
/// refused.
pub fn compact(dir: &Path) -> Result<Compacted, StateError> {
    let path = dir.join("absync.db");
    if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.len() > 0) {
        access::refuse_symlinks(dir)?;
        return Err(StateError::Missing {
            dir: dir.to_path_buf(),
        });
    }
    let _lock = StateLock::acquire(dir)?;
    access::open_file(&path, std::fs::OpenOptions::new().read(true).write(true))?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = access::open_sqlite(&path, access::sqlite_path(dir, "absync.db"), flags)?;
    let db = |source| StateError::Db {
        path: path.clone(),
        source,
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db)?;
    access::check_schema(&conn, dir, &path)?;
    let before = crate::state::bytes_on_disk(dir);
    conn.execute_batch("VACUUM").map_err(db)?;
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(db)?;
    drop(conn);
    Ok(Compacted {
        before,
        after: crate::state::bytes_on_disk(dir),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A state with `runs` closed runs of three records each.
    fn state(dir: &Path, runs: usize) -> Snapshot {
        let s = Snapshot::open(dir).unwrap();
        for _ in 0..runs {
            let run = s.start_run("sync", &Default::default()).unwrap();
            s.journal(&[Record::new(run, "request", "applied", "test")])
                .unwrap();
            s.end_run(run, "ok", &Default::default(), None).unwrap();
        }
        s
    }

    fn records(v: &Verdict) -> u64 {
        match v {
            Verdict::Intact { records, .. } => *records,
            v => panic!("{v}"),
        }
    }

    #[test]
    fn a_backup_is_one_new_file_for_the_owner_verified_and_never_replaces_a_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let s = state(&dir, 2);
        let to = root.path().join("absync-backup.db");
        // Taken while the writer has the database open (its WAL in use).
        let c = backup(&dir, ReadFrom::Live, &to).unwrap();
        drop(s);
        assert_eq!(records(&c.verdict), 6);
        let mark = c.mark.unwrap();
        assert_eq!(mark["last_run"], 2);
        assert!(
            mark["head"].as_str().is_some_and(|h| h.len() == 64),
            "{mark}"
        );
        let meta = std::fs::metadata(&to).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(c.bytes, meta.len());
        let names: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("absync-backup"))
            .collect();
        assert_eq!(names, ["absync-backup.db"], "one file, no -wal or -shm");

        let before = std::fs::read(&to).unwrap();
        let e = backup(&dir, ReadFrom::Live, &to).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} already exists: a backup never replaces a file; give a new name",
                to.display()
            )
        );
        assert_eq!(std::fs::read(&to).unwrap(), before);
        // Nor is a link followed (O_EXCL: a dangling one is "exists" too).
        let link = root.path().join("link.db");
        std::os::unix::fs::symlink(root.path().join("elsewhere.db"), &link).unwrap();
        assert!(matches!(
            backup(&dir, ReadFrom::Live, &link),
            Err(StateError::Exists { .. })
        ));
        assert!(!root.path().join("elsewhere.db").exists());
    }

    #[test]
    fn a_backup_while_a_run_writes_is_the_database_as_of_one_commit() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        drop(state(&dir, 1));
        // A run in flight: one transaction open, not committed.
        let open = state(&dir, 0);
        let run = open.start_run("sync", &Default::default()).unwrap();
        open.conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        crate::state::journal::append(&open.conn, &Record::new(run, "add", "applied", "x"))
            .unwrap();
        let c = backup(&dir, ReadFrom::Live, &root.path().join("mid.db")).unwrap();
        assert_eq!(
            records(&c.verdict),
            4,
            "the uncommitted record is not in it"
        );
        open.conn.execute_batch("ROLLBACK").unwrap();
        drop(open);

        // A writer committing all the time: every copy verifies.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let s = Snapshot::open(&dir).unwrap();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 20 {
                    let run = s.start_run("sync", &Default::default()).unwrap();
                    s.journal(&[Record::new(run, "request", "applied", "w")])
                        .unwrap();
                    s.end_run(run, "ok", &Default::default(), None).unwrap();
                    n += 1;
                }
                n
            })
        };
        let mut seen = 0;
        for i in 0..8 {
            let c = backup(&dir, ReadFrom::Live, &root.path().join(format!("{i}.db"))).unwrap();
            let n = records(&c.verdict);
            assert!(n >= seen, "{n} < {seen}");
            seen = n;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(writer.join().unwrap() >= 20);
    }

    #[test]
    fn a_copy_put_back_is_known_until_a_run_journals_its_restore() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        drop(state(&dir, 2));
        let to = root.path().join("copy.db");
        backup(&dir, ReadFrom::Live, &to).unwrap();
        let live = Snapshot::open(&dir).unwrap();
        assert_eq!(
            live.restored_from().unwrap(),
            None,
            "the source is unmarked"
        );
        drop(live);
        let back = root.path().join("restored");
        std::fs::create_dir(&back).unwrap();
        std::fs::copy(&to, back.join("absync.db")).unwrap();
        let s = Snapshot::open(&back).unwrap();
        let mark = s.restored_from().unwrap().unwrap();
        assert_eq!(mark["last_run"], 2);
        // The copy's cookie, from before the runs it lacks.
        let cookie = crate::state::SourceCookie {
            kind: crate::state::CookieKind::Timestamp,
            cookie: b"20260101000000Z".to_vec(),
            scope_key: "k".into(),
        };
        s.finish_pull(Some(&cookie), &[], 2).unwrap();
        let run = s.start_run("full", &Default::default()).unwrap();
        let r = restore_record(run, &mark);
        assert!(r.reason.contains("its last run 2"), "{}", r.reason);
        s.journal_restored(&[r]).unwrap();
        // Gone with the mark: a run that fails before its pull leaves the
        // next one full too.
        assert_eq!(s.source_cookie().unwrap(), None);
        s.end_run(run, "ok", &Default::default(), None).unwrap();
        assert_eq!(s.restored_from().unwrap(), None);
        assert_eq!(records(&verify(&s, &Evidence::default()).unwrap()), 9);
    }

    #[test]
    fn compact_gives_back_free_pages_changes_no_record_and_waits_for_no_writer() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        let s = state(&dir, 3);
        let blob = "x".repeat(4000);
        for i in 0..500 {
            s.conn
                .execute(
                    "INSERT INTO intents (anchor, payload) VALUES (?1, ?2)",
                    rusqlite::params![i.to_string(), blob],
                )
                .unwrap();
        }
        s.conn.execute("DELETE FROM intents", []).unwrap();
        drop(s);
        let lock = StateLock::acquire(&dir).unwrap();
        let e = compact(&dir).unwrap_err();
        assert!(matches!(e, StateError::Locked { .. }), "{e}");
        drop(lock);
        let done = compact(&dir).unwrap();
        assert!(
            done.after * 4 < done.before,
            "{} → {}",
            done.before,
            done.after
        );
        assert_eq!(done.after, crate::state::bytes_on_disk(&dir));
        let s = Snapshot::open_read_only(&dir, ReadFrom::Live).unwrap();
        assert_eq!(records(&verify(&s, &Evidence::default()).unwrap()), 9);
        drop(s);

        // Another schema is refused, not migrated; no state is no journal.
        Connection::open(dir.join("absync.db"))
            .unwrap()
            .pragma_update(None, "user_version", 5)
            .unwrap();
        assert!(matches!(compact(&dir), Err(StateError::TooOld { .. })));
        let none = root.path().join("none");
        assert!(matches!(compact(&none), Err(StateError::Missing { .. })));
        assert!(!none.exists(), "nothing created");
    }
}
