//! How a state directory is opened. The writers (`sync`, the daemon) are
//! guarded: no symlink in the directory is followed, and, before the first
//! write, the directory must belong to the user running absync (or to
//! root); before migrating an existing database they keep a copy of it.
//! The readers (`journal`, `status`, the metrics) open the database
//! read-only and change nothing: a directory given with `--state` (an
//! evidence copy, perhaps) is read as found, without a lock, a WAL switch,
//! a migration or a new file.

use std::fs::Metadata;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use crate::state::{StateError, SCHEMA_VERSION};

/// The files absync keeps in a state directory: none may be a symlink.
const FILES: &[&str] = &[
    "absync.db",
    "absync.db-wal",
    "absync.db-shm",
    "absync.lock",
    "daemon.json",
    "daemon.json.tmp",
];

/// How a reading command opens a state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The configuration's state directory, which the daemon or `sync` may
    /// be writing: read-only, through the write-ahead log as any reader.
    Live,
    /// A directory given with `--state`, an evidence copy perhaps: read as
    /// found (SQLite's `immutable`), taking no lock and creating no file,
    /// unless a daemon or `sync` holds its lock (then as [`ReadFrom::Live`]).
    Given,
}

/// A database opened for reading, and the private scratch directory it was
/// copied to, if it had to be (see [`open_read_only`]).
pub(crate) struct Opened {
    pub conn: Connection,
    pub path: PathBuf,
    pub scratch: Option<tempfile::TempDir>,
}

/// `dir` as given, without a trailing slash (with one, `lstat` follows a
/// symlink).
fn plain(dir: &Path) -> PathBuf {
    dir.components().collect()
}

/// What is at `path`, refusing a symlink; `None` when nothing is.
fn no_symlink(path: &Path) -> Result<Option<Metadata>, StateError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(StateError::Symlink {
            path: path.to_path_buf(),
        }),
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Err(denied(path)),
        Err(source) => Err(StateError::Dir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The directory and the files absync keeps in it are no symlinks: a link
/// could send absync's writes (and chmods), or root's, anywhere.
pub(crate) fn refuse_symlinks(dir: &Path) -> Result<(), StateError> {
    let dir = plain(dir);
    no_symlink(&dir)?;
    for f in FILES {
        no_symlink(&dir.join(f))?;
    }
    Ok(())
}

/// Before anything is written: the state directory belongs to the user
/// running absync, or to root. Files root writes into the absync user's
/// directory would lock that user out, and a directory someone else owns
/// is theirs to rearrange under absync.
pub(crate) fn refuse_foreign_owner(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    let dir = plain(dir);
    let me = crate::os::current_uid();
    let Some(meta) = no_symlink(&dir)? else {
        return Ok(());
    };
    match meta.uid() {
        owner if owner == me || owner == 0 => Ok(()),
        owner => Err(StateError::NotOwner {
            dir,
            owner: crate::os::user_name(owner),
            user: crate::os::user_name(me),
        }),
    }
}

/// A reader was refused: who can read it (the state directory's owner).
fn denied(path: &Path) -> StateError {
    use std::os::unix::fs::MetadataExt;
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| FILES.contains(&n));
    let dir = if file { path.parent() } else { Some(path) };
    let owner = dir
        .and_then(|d| {
            let uid = std::fs::metadata(d).ok()?.uid();
            let or_root = if uid == 0 { "" } else { " or root" };
            Some(format!(
                "{} (the owner of {}){or_root}",
                crate::os::user_name(uid),
                d.display()
            ))
        })
        .unwrap_or_else(|| "the absync user or root".into());
    StateError::PermissionDenied {
        path: path.to_path_buf(),
        who: owner,
    }
}

/// Opens the database in `dir` read-only. Nothing in `dir` changes: no
/// chmod, no journal mode, no migration (the caller checks the schema).
/// A [`ReadFrom::Given`] directory is opened `immutable` (no lock, no
/// `-wal` or `-shm` created); if its write-ahead log holds changes, which
/// `immutable` would not see, the database and its log are copied to a
/// private scratch directory and read there.
pub(crate) fn open_read_only(dir: &Path, from: ReadFrom) -> Result<Opened, StateError> {
    let dir = plain(dir);
    let path = dir.join("absync.db");
    let missing = || StateError::Missing { dir: dir.clone() };
    match no_symlink(&dir)? {
        Some(m) if m.is_dir() => {}
        _ => return Err(missing()),
    }
    refuse_symlinks(&dir)?;
    if no_symlink(&path)?.is_none() {
        return Err(missing());
    }
    // SQLite says only "unable to open database file": say why.
    if let Err(e) = std::fs::File::open(&path) {
        return Err(match e.kind() {
            ErrorKind::PermissionDenied => denied(&path),
            _ => StateError::Dir { path, source: e },
        });
    }
    let db = |source| StateError::Db {
        path: path.clone(),
        source,
    };
    let wal = dir.join("absync.db-wal");
    let logged = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let (conn, scratch) = if from == ReadFrom::Live || writer_holds_lock(&dir) {
        (Connection::open_with_flags(&path, ro).map_err(db)?, None)
    } else if !logged {
        let uri = immutable_uri(&path).map_err(|source| StateError::Dir {
            path: path.clone(),
            source,
        })?;
        let flags = ro | OpenFlags::SQLITE_OPEN_URI;
        (Connection::open_with_flags(uri, flags).map_err(db)?, None)
    } else {
        let scratch = scratch_copy(&path, &wal)?;
        let copy = scratch.path().join("absync.db");
        (
            Connection::open_with_flags(copy, ro).map_err(db)?,
            Some(scratch),
        )
    };
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(db)?;
    Ok(Opened {
        conn,
        path,
        scratch,
    })
}

/// `file:PATH?immutable=1`, the path absolute and percent-encoded.
fn immutable_uri(path: &Path) -> std::io::Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let abs = std::path::absolute(path)?;
    let mut uri = String::from("file:");
    for &b in abs.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    Ok(uri)
}

/// The database and its write-ahead log, copied (only read) into a private
/// directory (mode 0700, removed when dropped).
fn scratch_copy(db: &Path, wal: &Path) -> Result<tempfile::TempDir, StateError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Dir { path, source }
    };
    let scratch = tempfile::Builder::new()
        .prefix("absync-read-")
        .tempdir()
        .map_err(io(&std::env::temp_dir()))?;
    std::fs::copy(db, scratch.path().join("absync.db")).map_err(io(db))?;
    std::fs::copy(wal, scratch.path().join("absync.db-wal")).map_err(io(wal))?;
    Ok(scratch)
}

/// Whether a daemon or `sync` holds the lock of `dir` now, as the kernel's
/// table of locks (`/proc/locks`) shows: looked at, never taken.
pub(crate) fn writer_holds_lock(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(dir.join("absync.lock")) else {
        return false;
    };
    let dev = m.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let key = format!("{major:02x}:{minor:02x}:{}", m.ino());
    std::fs::read_to_string("/proc/locks")
        .is_ok_and(|t| t.lines().any(|l| l.split_whitespace().any(|f| f == key)))
}

/// The schema a reader can read: this absync's. Older or newer is said
/// plainly; an empty database is no journal.
pub(crate) fn check_schema(conn: &Connection, dir: &Path, path: &Path) -> Result<(), StateError> {
    let found = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(|source| StateError::Db {
            path: path.to_path_buf(),
            source,
        })?;
    match found {
        SCHEMA_VERSION => Ok(()),
        0 => Err(StateError::Missing { dir: plain(dir) }),
        found if found < SCHEMA_VERSION => Err(StateError::TooOld {
            path: path.to_path_buf(),
            found,
            known: SCHEMA_VERSION,
        }),
        found => Err(StateError::TooNew {
            path: path.to_path_buf(),
            found,
            known: SCHEMA_VERSION,
        }),
    }
}

/// Before a writer migrates an existing database: a copy of it as it is
/// (`absync.db.pre-vN-TIME.bak` next to it, mode 0600), by `VACUUM INTO`,
/// which writes a consistent copy while others may read.
pub(crate) fn backup(conn: &Connection, path: &Path) -> Result<PathBuf, StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let bak = path.with_file_name(format!("absync.db.pre-v{SCHEMA_VERSION}-{stamp}.bak"));
    let io = |source| StateError::Dir {
        path: bak.clone(),
        source,
    };
    // Created empty first, for its mode: VACUUM INTO fills an empty file.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&bak)
        .map_err(io)?;
    let target = bak.to_str().ok_or_else(|| {
        io(std::io::Error::new(
            ErrorKind::InvalidInput,
            "the path is not UTF-8",
        ))
    })?;
    if let Err(source) = conn.execute("VACUUM INTO ?1", [target]) {
        let _ = std::fs::remove_file(&bak);
        return Err(StateError::Db {
            path: path.to_path_buf(),
            source,
        });
    }
    Ok(bak)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::state::journal::Record;
    use crate::state::{Snapshot, StateLock};

    /// Every file in `dir`: name → (mode, contents).
    fn files(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode();
            let bytes = std::fs::read(e.path()).unwrap();
            out.insert(e.file_name().to_string_lossy().into_owned(), (mode, bytes));
        }
        out
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A state with one run of three records, closed (its log checkpointed).
    fn state(dir: &Path) {
        let s = Snapshot::open(dir).unwrap();
        let run = s.start_run("sync", &Default::default()).unwrap();
        s.journal(&[Record::new(run, "request", "applied", "test")])
            .unwrap();
        s.end_run(run, "ok", &Default::default(), None).unwrap();
    }

    fn records(s: &Snapshot) -> u64 {
        match crate::state::verify::verify(s, &Default::default()).unwrap() {
            crate::state::verify::Verdict::Intact { records, .. } => records,
            v => panic!("{v}"),
        }
    }

    #[test]
    fn a_read_only_copy_is_read_as_found_and_not_one_byte_or_mode_changes() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        state(&dir);
        for f in std::fs::read_dir(&dir).unwrap() {
            chmod(&f.unwrap().path(), 0o444);
        }
        chmod(&dir, 0o555);
        let before = files(&dir);
        let s = Snapshot::open_read_only(&dir, ReadFrom::Given).unwrap();
        assert_eq!(records(&s), 3);
        assert_eq!(s.runs(10).unwrap().len(), 1);
        drop(s);
        assert_eq!(files(&dir), before);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o555
        );
        chmod(&dir, 0o755);
    }

    #[test]
    fn a_copy_whose_write_ahead_log_holds_changes_is_read_with_them_and_left_as_it_was() {
        let root = tempfile::tempdir().unwrap();
        let (dir, copy) = (root.path().join("state"), root.path().join("copy"));
        state(&dir);
        // A second run, still in the log: the writer is open while copying.
        let s = Snapshot::open(&dir).unwrap();
        let run = s.start_run("sync", &Default::default()).unwrap();
        s.end_run(run, "ok", &Default::default(), None).unwrap();
        std::fs::create_dir(&copy).unwrap();
        for f in ["absync.db", "absync.db-wal"] {
            std::fs::copy(dir.join(f), copy.join(f)).unwrap();
            chmod(&copy.join(f), 0o444);
        }
        drop(s);
        assert!(std::fs::metadata(copy.join("absync.db-wal")).unwrap().len() > 0);
        chmod(&copy, 0o555);
        let before = files(&copy);
        let s = Snapshot::open_read_only(&copy, ReadFrom::Given).unwrap();
        assert_eq!(s.runs(10).unwrap().len(), 2, "the run in the log is read");
        assert_eq!(records(&s), 5);
        drop(s);
        assert_eq!(files(&copy), before);
        chmod(&copy, 0o755);
    }

    #[test]
    fn a_given_directory_a_writer_holds_is_read_live() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        state(&dir);
        assert!(!writer_holds_lock(&dir));
        let lock = StateLock::acquire(&dir).unwrap();
        assert!(writer_holds_lock(&dir));
        let s = Snapshot::open_read_only(&dir, ReadFrom::Given).unwrap();
        assert_eq!(records(&s), 3);
        drop(lock);
        assert!(!writer_holds_lock(&dir));
    }

    #[test]
    fn readers_refuse_other_schemas_and_writers_migrate_after_keeping_a_copy() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        state(&dir);
        // Version 5 as an older absync left it: without version 6's totals.
        let older = SCHEMA_VERSION - 1;
        let c = Connection::open(dir.join("absync.db")).unwrap();
        c.execute_batch("DROP TABLE metrics_totals; DROP INDEX journal_agreements")
            .unwrap();
        c.pragma_update(None, "user_version", older).unwrap();
        drop(c);
        let before = files(&dir);
        // Given first: it leaves no file behind; a live read may leave the
        // log and its index (SQLite's), never a change to the database.
        for from in [ReadFrom::Given, ReadFrom::Live] {
            match Snapshot::open_read_only(&dir, from) {
                Err(e @ StateError::TooOld { .. }) => {
                    assert!(e.to_string().contains("`absync sync`"), "{e}")
                }
                other => panic!("{:?}", other.err()),
            }
            if from == ReadFrom::Given {
                assert_eq!(files(&dir), before);
            }
        }
        assert_eq!(files(&dir)["absync.db"], before["absync.db"]);

        let s = Snapshot::open(&dir).unwrap();
        assert_eq!(records(&s), 3);
        let baks: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".bak"))
            .collect();
        assert_eq!(baks.len(), 1, "{baks:?}");
        let name = baks[0].file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("absync.db.pre-v{SCHEMA_VERSION}-")),
            "{name}"
        );
        let meta = std::fs::metadata(&baks[0]).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let kept = Connection::open(&baks[0]).unwrap();
        let v: i64 = kept
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, older, "the copy is the database before the migration");
        drop(s);
        Connection::open(dir.join("absync.db"))
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(
            Snapshot::open_read_only(&dir, ReadFrom::Given),
            Err(StateError::TooNew { .. })
        ));
    }

    #[test]
    fn no_symlink_in_the_state_directory_is_followed() {
        let root = tempfile::tempdir().unwrap();
        let (dir, elsewhere) = (root.path().join("state"), root.path().join("elsewhere"));
        state(&elsewhere);
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        for e in [
            Snapshot::open(&link).err(),
            Snapshot::open_read_only(&link, ReadFrom::Given).err(),
            StateLock::acquire(&link).err(),
            // A trailing slash makes lstat follow a link: not here.
            Snapshot::open(&root.path().join("link/")).err(),
        ] {
            assert!(matches!(e, Some(StateError::Symlink { .. })), "{e:?}");
        }
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("absync.db"), dir.join("absync.db")).unwrap();
        let e = Snapshot::open(&dir).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "{} is a symbolic link: absync follows none in its state directory (one could \
                 send its writes anywhere); put the real directory or file there",
                dir.join("absync.db").display()
            )
        );
        std::fs::remove_file(dir.join("absync.db")).unwrap();
        std::os::unix::fs::symlink("/nowhere", dir.join("absync.lock")).unwrap();
        assert!(matches!(
            StateLock::acquire(&dir),
            Err(StateError::Symlink { .. })
        ));
    }

    #[test]
    fn a_missing_or_empty_state_is_no_journal() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        for from in [ReadFrom::Live, ReadFrom::Given] {
            assert!(matches!(
                Snapshot::open_read_only(&dir, from),
                Err(StateError::Missing { .. })
            ));
        }
        std::fs::create_dir(&dir).unwrap();
        assert!(matches!(
            Snapshot::open_read_only(&dir, ReadFrom::Given),
            Err(StateError::Missing { .. })
        ));
        std::fs::write(dir.join("absync.db"), b"").unwrap();
        let e = Snapshot::open_read_only(&dir, ReadFrom::Given)
            .err()
            .unwrap();
        assert_eq!(e.to_string(), format!("no journal in {}", dir.display()));
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "nothing created"
        );
    }

    #[test]
    fn an_immutable_uri_escapes_what_sqlite_would_read_as_uri_syntax() {
        let uri = immutable_uri(Path::new("/a b/c?d#e%f/absync.db")).unwrap();
        assert_eq!(uri, "file:/a%20b/c%3Fd%23e%25f/absync.db?immutable=1");
    }
}
