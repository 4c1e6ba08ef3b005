//! How a state directory is opened. The writers (`sync`, the daemon) are
//! guarded: no symlink in the directory is followed, and, before the first
//! write, the directory must belong to the user running absync (or to
//! root); before migrating an existing database they keep a copy of it.
//! The readers (`journal`, `status`, the metrics) open the database
//! read-only and change nothing: a directory given with `--state` (an
//! evidence copy, perhaps) is read as found, without a lock, a WAL switch,
//! a migration or a new file.

use std::fs::{File, Metadata, OpenOptions};
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
/// could send absync's writes (and chmods), or root's, anywhere. Each file
/// there belongs to the directory's owner, to root or to the user running
/// absync: none is used that another user put there. (A check before the
/// open, for a clear message; the opens themselves follow no link either:
/// [`open_file`], [`open_dir`], [`open_sqlite`].)
pub(crate) fn refuse_symlinks(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    let dir = plain(dir);
    let dir_owner = no_symlink(&dir)?.map(|m| m.uid());
    let me = crate::os::current_uid();
    for f in FILES {
        let path = dir.join(f);
        if let Some(meta) = no_symlink(&path)? {
            let owner = meta.uid();
            if owner != me && owner != 0 && Some(owner) != dir_owner {
                return Err(StateError::ForeignFile {
                    path,
                    owner: owner_name(owner),
                });
            }
        }
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

/// A file's owner as a name, for messages.
fn owner_name(uid: u32) -> String {
    crate::os::user_name(uid)
}

/// Opens a file of the state directory without following a symlink
/// (`O_NOFOLLOW`: a link planted between a check and this open is refused
/// by the kernel, not followed) and without waiting on a FIFO
/// (`O_NONBLOCK`), and checks that what was opened is a regular file.
pub(crate) fn open_file(path: &Path, opts: &mut OpenOptions) -> Result<File, StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = opts
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| open_error(path, e))?;
    let meta = file.metadata().map_err(|source| StateError::Dir {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(StateError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// A file of absync's own in the state directory, opened for reading and
/// writing and created mode 0600 when absent (never truncated, no link
/// followed): the database and the lock file.
pub(crate) fn open_private(path: &Path) -> Result<File, StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    open_file(
        path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600),
    )
}

/// The state directory itself, opened without following a symlink
/// (`O_DIRECTORY | O_NOFOLLOW`): what its mode is set on and its owner
/// read from, so both are the directory's and not a link's target.
pub(crate) fn open_dir(dir: &Path) -> Result<File, StateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = plain(dir);
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(&dir)
        .map_err(|e| match e.raw_os_error() {
            // A link under O_DIRECTORY | O_NOFOLLOW is "not a directory".
            Some(nix::libc::ENOTDIR)
                if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_symlink()) =>
            {
                StateError::Symlink { path: dir.clone() }
            }
            _ => open_error(&dir, e),
        })
}

/// What an open refused, said plainly: a symlink (`ELOOP` under
/// `O_NOFOLLOW`), a permission, or the error itself.
fn open_error(path: &Path, source: std::io::Error) -> StateError {
    match (source.raw_os_error(), source.kind()) {
        (Some(nix::libc::ELOOP), _) => StateError::Symlink {
            path: path.to_path_buf(),
        },
        (_, ErrorKind::PermissionDenied) => denied(path),
        _ => StateError::Dir {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Reads a small file of the state directory (`daemon.json`, the lock's
/// holder): no symlink followed, a regular file only, at most `max` bytes
/// (a larger one is cut there, and then does not parse).
pub fn read_small(path: &Path, max: u64) -> Result<String, StateError> {
    use std::io::Read;
    let file = open_file(path, OpenOptions::new().read(true))?;
    let mut text = String::new();
    file.take(max)
        .read_to_string(&mut text)
        .map_err(|source| StateError::Dir {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(text)
}

/// Replaces `dir/name` with `bytes` (mode 0600): written to `name.tmp`,
/// created anew (`O_EXCL`: never a file, or a link, found there), then
/// renamed over `name` (a rename replaces a link, never follows it).
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let io = |source| StateError::Dir {
        path: path.clone(),
        source,
    };
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let mut f = open_file(
        &tmp,
        OpenOptions::new().write(true).create_new(true).mode(0o600),
    )?;
    f.write_all(bytes).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io)
}

/// The path SQLite is given for a file in `dir`: `dir`'s parent resolved
/// (a symlink above the state directory, `/var/lib` → `/data/var/lib`, is
/// the admin's own and allowed), so that `SQLITE_OPEN_NOFOLLOW` refuses a
/// link only where one would be a trick: the directory or a file in it.
pub(crate) fn sqlite_path(dir: &Path, name: &str) -> PathBuf {
    let dir = plain(dir);
    let abs = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
    let resolved = match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(last)) => std::fs::canonicalize(parent)
            .map(|p| p.join(last))
            .unwrap_or(abs.clone()),
        _ => abs.clone(),
    };
    resolved.join(name)
}

/// Opens the database at `path` (shown in errors) through `sqlite` (see
/// [`sqlite_path`]) with `SQLITE_OPEN_NOFOLLOW` added: SQLite then refuses
/// a symlink at the database instead of resolving it (its `-wal` and
/// `-shm` files it always opens with `O_NOFOLLOW`).
pub(crate) fn open_sqlite(
    path: &Path,
    sqlite: impl AsRef<Path>,
    flags: OpenFlags,
) -> Result<Connection, StateError> {
    Connection::open_with_flags(sqlite, flags | OpenFlags::SQLITE_OPEN_NOFOLLOW).map_err(
        |e| match e.sqlite_error().map(|f| f.extended_code) {
            Some(rusqlite::ffi::SQLITE_CANTOPEN_SYMLINK) => StateError::Symlink {
                path: path.to_path_buf(),
            },
            _ => StateError::Db {
                path: path.to_path_buf(),
                source: e,
            },
        },
    )
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
    open_file(&path, OpenOptions::new().read(true))?;
    let db = |source| StateError::Db {
        path: path.clone(),
        source,
    };
    let wal = dir.join("absync.db-wal");
    let logged = std::fs::symlink_metadata(&wal).is_ok_and(|m| m.len() > 0);
    let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let real = sqlite_path(&dir, "absync.db");
    let (conn, scratch) = if from == ReadFrom::Live || writer_holds_lock(&dir) {
        (open_sqlite(&path, &real, ro)?, None)
    } else if !logged {
        let uri = immutable_uri(&real).map_err(|source| StateError::Dir {
            path: path.clone(),
            source,
        })?;
        let flags = ro | OpenFlags::SQLITE_OPEN_URI;
        (open_sqlite(&path, uri, flags)?, None)
    } else {
        let scratch = scratch_copy(&path, &wal)?;
        let copy = scratch.path().join("absync.db");
        (open_sqlite(&path, copy, ro)?, Some(scratch))
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
    for (from, name) in [(db, "absync.db"), (wal, "absync.db-wal")] {
        let mut src = open_file(from, OpenOptions::new().read(true))?;
        let mut copy = File::create_new(scratch.path().join(name)).map_err(io(from))?;
        std::io::copy(&mut src, &mut copy).map_err(io(from))?;
    }
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
/// (`absync.db.pre-vN-TIME.bak` next to it, mode 0600), by SQLite's online
/// backup, as `absync state backup` takes one (see `state::backup`).
pub(crate) fn backup(conn: &Connection, path: &Path) -> Result<PathBuf, StateError> {
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_default();
    let bak = path.with_file_name(format!("absync.db.pre-v{SCHEMA_VERSION}-{stamp}.bak"));
    crate::state::backup::copy(conn, path, &bak)?;
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
        // Version 6 as an older absync left it: without version 7's open
        // conflicts.
        let older = SCHEMA_VERSION - 1;
        let c = Connection::open(dir.join("absync.db")).unwrap();
        c.execute_batch("DROP TABLE conflicts").unwrap();
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
        let mut wal = baks[0].clone().into_os_string();
        wal.push("-wal");
        assert!(!Path::new(&wal).exists(), "the copy is one file");
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

    /// A file outside the state directory that a link points to: its mode
    /// and contents, to show they did not change.
    fn victim(root: &Path) -> (PathBuf, (u32, Vec<u8>)) {
        let v = root.join("victim");
        std::fs::write(&v, b"root's file").unwrap();
        chmod(&v, 0o644);
        let seen = (
            std::fs::metadata(&v).unwrap().permissions().mode(),
            b"root's file".to_vec(),
        );
        (v, seen)
    }

    fn seen(v: &Path) -> (u32, Vec<u8>) {
        (
            std::fs::metadata(v).unwrap().permissions().mode(),
            std::fs::read(v).unwrap(),
        )
    }

    #[test]
    fn the_opens_themselves_follow_no_symlink_planted_after_the_check() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        state(&dir);
        let (v, before) = victim(root.path());
        let link = |name: &str| {
            let p = dir.join(name);
            let _ = std::fs::remove_file(&p);
            std::os::unix::fs::symlink(&v, &p).unwrap();
            p
        };
        // The database: neither the open (create, chmod) nor SQLite follows.
        let db = link("absync.db");
        let rw = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .clone()
        };
        assert!(matches!(
            open_file(&db, &mut rw()),
            Err(StateError::Symlink { .. })
        ));
        let e = open_sqlite(&db, sqlite_path(&dir, "absync.db"), OpenFlags::default()).err();
        assert!(matches!(e, Some(StateError::Symlink { .. })), "{e:?}");
        // The lock (opened to be truncated) and the holder's read.
        let lock = link("absync.lock");
        let mut opts = rw();
        assert!(matches!(
            open_file(&lock, &mut opts),
            Err(StateError::Symlink { .. })
        ));
        assert!(matches!(
            read_small(&lock, 10),
            Err(StateError::Symlink { .. })
        ));
        // daemon.json.tmp: replaced, never written through.
        link("daemon.json.tmp");
        replace_file(&dir, "daemon.json", b"{}").unwrap();
        let written = std::fs::symlink_metadata(dir.join("daemon.json")).unwrap();
        assert!(written.is_file());
        assert_eq!(written.permissions().mode() & 0o777, 0o600);
        assert_eq!(seen(&v), before, "the link's target is untouched");
        // The directory itself.
        let moved = root.path().join("moved");
        std::fs::rename(&dir, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &dir).unwrap();
        assert!(matches!(open_dir(&dir), Err(StateError::Symlink { .. })));
    }

    #[test]
    fn a_fifo_or_a_foreign_file_in_the_state_directory_is_refused_not_waited_on() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("state");
        state(&dir);
        let fifo = dir.join("daemon.json");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let e = read_small(&fifo, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} is not a regular file: absync keeps only regular files in its state \
                 directory; remove it",
                fifo.display()
            )
        );
        std::fs::remove_file(&fifo).unwrap();
        if crate::os::current_uid() != 0 {
            return; // chown needs root
        }
        let lock = dir.join("absync.lock");
        std::fs::write(&lock, b"").unwrap();
        std::os::unix::fs::chown(&lock, Some(65534), None).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().uid(), 0);
        let e = StateLock::acquire(&dir).err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "{} belongs to {}, who neither owns the state directory nor runs absync: \
                 absync uses no file in its state directory that another user put there; \
                 remove it",
                lock.display(),
                crate::os::user_name(65534)
            )
        );
        assert!(Snapshot::open_read_only(&dir, ReadFrom::Live).is_err());
    }

    #[test]
    fn a_symlink_above_the_state_directory_is_the_admins_and_allowed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("real")).unwrap();
        let above = root.path().join("lib");
        std::os::unix::fs::symlink(root.path().join("real"), &above).unwrap();
        state(&above.join("state"));
        let s = Snapshot::open_read_only(&above.join("state"), ReadFrom::Live).unwrap();
        assert_eq!(records(&s), 3);
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
