//! Retention: the journal's records older than the retention period go,
//! and the chain stays verifiable. The one writer of the journal besides a
//! run; the auditor's queries ([`crate::state::audit`]) only read.

use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension};
use time::OffsetDateTime;

use crate::seal::Signer;
use crate::state::audit::latest_states;
use crate::state::journal::Record;
use crate::state::{Snapshot, StateError};

/// What a prune is told: where it cuts, for which run, what signs it, and
/// where the records go first.
pub struct Prune<'a> {
    /// Records from before this time go (see [`crate::period::Period::before`]).
    pub before: OffsetDateTime,
    /// The run that prunes: none of its records go.
    pub run_id: i64,
    pub signer: Option<&'a Signer>,
    /// When set, the records that go are first written there, one JSONL
    /// file per prune (`journal verify --file` checks it).
    pub archive_dir: Option<&'a Path>,
}

/// Deletes records older than the retention period, and the rows of the
/// runs they were all of. The chain stays verifiable: the last pruned
/// record's id and hash are kept, and the prune is itself a chained record
/// naming them. The pruning run's records never go, so the cut stops
/// before its first; the newest agreements' terms, if they go, are
/// recorded again first (the metrics' `valid_until` reads them). Returns
/// how many records went.
pub fn prune(s: &Snapshot, p: &Prune<'_>) -> Result<u64, StateError> {
    let run_id = p.run_id;
    let cutoff = crate::state::journal::time_text(p.before);
    let Some((last_id, last_hash)) = cut(s, &cutoff, run_id)? else {
        return Ok(0);
    };
    let db = |e| s.db_err(e);
    let archive = match p.archive_dir {
        Some(dir) => Some(archive(s, dir, last_id)?),
        None => None,
    };
    let tx = s.write_tx()?;
    let checkpoints = checkpoint(s, &tx, last_id, run_id)?;
    carry_terms(s, &tx, last_id, run_id)?;
    let n = tx
        .execute("DELETE FROM journal WHERE id <= ?1", [last_id])
        .map_err(db)? as u64;
    // The rows of runs none of whose run records are kept go too: nothing
    // could check them against the chain any more.
    let runs = tx
        .execute(
            "DELETE FROM runs WHERE id < ?1 AND NOT EXISTS (
                 SELECT 1 FROM journal WHERE journal.run_id = runs.id AND journal.op = 'run')",
            [run_id],
        )
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
    let mut detail = serde_json::json!({
        "records": n,
        "runs": runs,
        "checkpoints": checkpoints,
        "older_than": cutoff,
        "pruned_through_id": last_id,
        "pruned_last_hash": last_hash,
    });
    if let Some(file) = &archive {
        detail["archive"] = file.display().to_string().into();
    }
    if let Some(signer) = p.signer {
        let message = crate::seal::prune_message(run_id, last_id, &last_hash, &cutoff);
        detail["key"] = signer.id().into();
        detail["signature"] = signer.sign(&message).into();
    }
    r.detail = Some(detail);
    crate::state::journal::append(&tx, &r).map_err(db)?;
    tx.commit().map_err(db)?;
    tracing::info!(
        records = n,
        runs,
        checkpoints,
        older_than = %cutoff,
        archive = %archive.as_ref().map(|a| a.display().to_string()).unwrap_or_default(),
        "journal pruned"
    );
    Ok(n)
}

/// The last record to go, with its hash: the newest record from before
/// `cutoff`, but never one of run `run_id`'s or after its first.
fn cut(s: &Snapshot, cutoff: &str, run_id: i64) -> Result<Option<(i64, String)>, StateError> {
    s.conn
        .query_row(
            // Through the index on `at`: left to itself SQLite walks the
            // whole journal backwards by id on every run.
            "SELECT id, hash FROM journal WHERE id = min(
               (SELECT max(id) FROM journal INDEXED BY journal_at WHERE at < ?1),
               coalesce((SELECT min(id) FROM journal WHERE run_id = ?2), 1 << 62) - 1)",
            params![cutoff, run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| s.db_err(e))
}

/// Writes records up to `last` (those after the previous prune) to
/// `dir/absync-journal-FIRST-LAST.jsonl`, one `journal export --format
/// jsonl` line each (0600, synced, then renamed into place): the chain's
/// hashes included, so `journal verify --file` checks it on its own, and
/// its last hash is the prune record's `pruned_last_hash`.
fn archive(s: &Snapshot, dir: &Path, last: i64) -> Result<PathBuf, StateError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let first: i64 = s
        .conn
        .query_row("SELECT coalesce(min(id), 0) FROM journal", [], |r| r.get(0))
        .map_err(|e| s.db_err(e))?;
    let path = dir.join(format!("absync-journal-{first:012}-{last:012}.jsonl"));
    let part = dir.join(format!(".absync-journal-{first:012}-{last:012}.jsonl.part"));
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Archive { path, source }
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&part)
        .map_err(err(&part))?;
    let mut out = std::io::BufWriter::new(file);
    s.each_where("id <= ?1", &[&last], &mut |r| {
        let line = serde_json::to_string(&r)
            .map_err(|e| err(&part)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        writeln!(out, "{line}").map_err(err(&part))
    })?;
    let file = out.into_inner().map_err(|e| err(&part)(e.into_error()))?;
    file.sync_all().map_err(err(&part))?;
    // Never over an archive already there (the same ids after a restore
    // from a backup, or another instance's directory): it may be the only
    // copy of what it holds. A hard link fails when the name exists.
    std::fs::hard_link(&part, &path).map_err(err(&path))?;
    std::fs::remove_file(&part).map_err(err(&part))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir))?;
    Ok(path)
}

/// When the newest `agreements` record (the terms in force) is about to
/// go, records the same terms again, in run `run_id`, naming the record
/// it carries over: what the terms are stays in the journal, and a later
/// run does not take them for new.
fn carry_terms(
    s: &Snapshot,
    tx: &rusqlite::Transaction<'_>,
    last: i64,
    run_id: i64,
) -> Result<(), StateError> {
    let mut newest = None;
    s.each_where(
        "id = (SELECT max(id) FROM journal WHERE op = 'agreements') AND id <= ?1",
        &[&last],
        &mut |r| {
            newest = Some(r);
            Ok(())
        },
    )?;
    let Some(old) = newest else {
        return Ok(());
    };
    let mut r = Record::new(
        run_id,
        "agreements",
        "applied",
        "the agreements in the file, recorded again: older records removed after the \
         retention period",
    );
    let mut detail = old.record.detail.unwrap_or_default();
    detail["carried_from"] = serde_json::json!({ "record": old.id, "at": old.at });
    r.detail = Some(detail);
    crate::state::journal::append(tx, &r).map_err(|e| s.db_err(e))?;
    Ok(())
}

/// Before pruning through record `last`, appends what `held` needs to
/// still know what was held at the cut: for each object whose last state
/// record up to the cut is about to go, a `checkpoint` with the state that
/// record left (or, if it left the object gone while an older checkpoint
/// still says held, one saying it is not held). Returns how many.
fn checkpoint(
    s: &Snapshot,
    tx: &rusqlite::Transaction<'_>,
    last: i64,
    run_id: i64,
) -> Result<u64, StateError> {
    let mut live = std::collections::HashSet::new();
    let mut stmt = s
        .conn
        .prepare(
            "SELECT anchor FROM journal WHERE id IN (
                 SELECT max(id) FROM journal WHERE op = 'checkpoint' GROUP BY anchor)
             AND state IS NOT NULL",
        )
        .map_err(|e| s.db_err(e))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(|e| s.db_err(e))?;
    for a in rows {
        live.insert(a.map_err(|e| s.db_err(e))?);
    }
    let mut ids = Vec::new();
    latest_states(s, last, false, None, &mut |(id, _, anchor, _, state)| {
        if state.is_some() || live.contains(&anchor) {
            ids.push(id);
        }
        Ok(())
    })?;
    ids.sort_unstable();
    // One record at a time: the states of a whole directory need not be in
    // memory at once.
    for &id in &ids {
        for src in s.stored_where("id = ?1", &[&id])? {
            let held = src.record.state.is_some();
            let mut r = Record::new(
                run_id,
                "checkpoint",
                if held { "held" } else { "not held" },
                "older records removed after the retention period",
            );
            r.anchor = src.record.anchor;
            r.dn = src
                .record
                .state
                .as_ref()
                .map(|o| o.dn.clone())
                .or(src.record.dn);
            r.org = src.record.org;
            r.agreements = src.record.agreements;
            r.state = src.record.state;
            r.detail = Some(serde_json::json!({ "since": src.at, "record": src.id }));
            crate::state::journal::append(tx, &r).map_err(|e| s.db_err(e))?;
        }
    }
    Ok(ids.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::audit::held;
    use crate::state::journal::Stored;
    use crate::state::verify::{verify, Verdict};
    use crate::state::ObjectRow;
    use std::time::Duration;

    fn object(anchor: &str, title: &str) -> ObjectRow {
        let mut attrs = std::collections::BTreeMap::new();
        attrs.insert("title".to_string(), vec![title.to_string()]);
        ObjectRow {
            anchor: anchor.into(),
            dn: format!("cn={anchor},OU=T"),
            org: "RX1".into(),
            agreements: vec!["DSA-1".into()],
            attrs,
            hidden: None,
        }
    }

    fn record(run: i64, op: &str, anchor: &str, state: Option<ObjectRow>) -> Record {
        let mut r = Record::new(run, op, "applied", "test");
        r.anchor = Some(anchor.into());
        r.org = Some("RX1".into());
        r.dn = Some(format!("cn={anchor},OU=T"));
        r.state = state;
        r
    }

    /// Prunes what is older than `age`, as run `run`.
    fn prune_by(s: &Snapshot, age: Duration, run: i64) -> u64 {
        let p = Prune {
            before: OffsetDateTime::now_utc() - age,
            run_id: run,
            signer: None,
            archive_dir: None,
        };
        prune(s, &p).unwrap()
    }

    fn state(name: &str) -> (tempfile::TempDir, Snapshot) {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(&dir.path().join(name)).unwrap();
        (dir, s)
    }

    fn ops_of(s: &Snapshot) -> Vec<(i64, String)> {
        s.stored_where("1", &[])
            .unwrap()
            .into_iter()
            .map(|r| (r.record.run_id, r.record.op))
            .collect()
    }

    fn intact(s: &Snapshot) -> bool {
        matches!(
            verify(s, &Default::default()).unwrap(),
            Verdict::Intact { .. }
        )
    }

    #[test]
    fn a_prune_never_removes_the_records_of_the_run_that_prunes() {
        let (_dir, s) = state("own");
        let old = s.start_run("sync", &Default::default()).unwrap();
        s.journal(&[record(old, "add", "a", Some(object("a", "one")))])
            .unwrap();
        let run = s.start_run("sync", &Default::default()).unwrap();
        s.journal(&[record(run, "add", "b", Some(object("b", "one")))])
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // Everything is older than the cut; only the earlier run's go.
        let n = prune_by(&s, Duration::ZERO, run);
        assert_eq!(n, 2, "{:?}", ops_of(&s));
        assert!(
            ops_of(&s).iter().all(|(r, _)| *r == run),
            "{:?}",
            ops_of(&s)
        );
        assert_eq!(
            ops_of(&s)[..2],
            [(run, "run".to_string()), (run, "add".to_string())]
        );
        assert!(intact(&s));
        // Its own run alone: nothing goes, and no prune record is written.
        let (_dir, s) = state("alone");
        let run = s.start_run("sync", &Default::default()).unwrap();
        s.journal(&[record(run, "add", "a", Some(object("a", "one")))])
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(prune_by(&s, Duration::ZERO, run), 0);
        assert_eq!(ops_of(&s).len(), 2);
    }

    fn terms(run: i64, until: &str) -> Record {
        let mut r = Record::new(run, "agreements", "applied", "the agreements in the file");
        r.detail = Some(serde_json::json!({ "hash": "f".repeat(64), "agreements": [
            {"id": "DSA-1", "title": "t", "organisations": ["RX1"], "attributes": ["mail"],
             "valid_from": "2026-01-01", "valid_until": until}]}));
        r
    }

    #[test]
    fn the_newest_terms_are_recorded_again_before_they_go() {
        let (_dir, s) = state("terms");
        let first = s.start_run("sync", &Default::default()).unwrap();
        s.journal(&[terms(first, "2026-06-30"), terms(first, "2027-06-30")])
            .unwrap();
        let second = s.start_run("sync", &Default::default()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        prune_by(&s, Duration::ZERO, second);
        let now = crate::state::audit::terms_at(&s, None).unwrap().unwrap();
        assert_eq!(now.record.run_id, second);
        let detail = now.record.detail.unwrap();
        assert_eq!(detail["agreements"][0]["valid_until"], "2027-06-30");
        assert_eq!(detail["hash"], "f".repeat(64));
        assert_eq!(detail["carried_from"]["record"], 3, "{detail}");
        // One copy, of the newest only.
        let copies = s.stored_where("op = 'agreements'", &[]).unwrap();
        assert_eq!(copies.len(), 1);
        assert!(intact(&s));
        // A report of the period does not take the copy for a change.
        let data = crate::state::report::gather(
            &s,
            "2000-01-01T00:00:00.000000Z",
            "9999-01-01T00:00:00.000000Z",
            &Default::default(),
            "now",
        )
        .unwrap();
        assert!(data.terms.is_empty(), "{:?}", data.terms.items);
        // Carried again by the next prune, and still one.
        let third = s.start_run("sync", &Default::default()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        prune_by(&s, Duration::ZERO, third);
        let copies = s.stored_where("op = 'agreements'", &[]).unwrap();
        assert_eq!(copies.len(), 1);
        assert_eq!(copies[0].record.run_id, third);
        // Terms that are kept are not copied.
        let fourth = s.start_run("sync", &Default::default()).unwrap();
        prune_by(&s, Duration::from_secs(3600), fourth);
        assert_eq!(s.stored_where("op = 'agreements'", &[]).unwrap().len(), 1);
    }

    #[test]
    fn the_archive_holds_what_went_and_verifies_on_its_own() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, s) = state("archived");
        let archive = dir.path().join("archive");
        std::fs::create_dir(&archive).unwrap();
        let old = s.start_run("sync", &Default::default()).unwrap();
        s.journal(&[
            record(old, "add", "a", Some(object("a", "one"))),
            record(old, "add", "b", Some(object("b", "one"))),
        ])
        .unwrap();
        let run = s.start_run("sync", &Default::default()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let before = s.stored_where("run_id = ?1", &[&old]).unwrap();
        let p = Prune {
            before: OffsetDateTime::now_utc(),
            run_id: run,
            signer: None,
            archive_dir: Some(&archive),
        };
        assert_eq!(prune(&s, &p).unwrap(), 3);
        let name = "absync-journal-000000000001-000000000003.jsonl";
        let file = archive.join(name);
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<Stored> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, before, "the records as they were, hashes and all");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(&archive).unwrap().count(),
            1,
            "no .part left"
        );
        let verdict = crate::state::verify::verify_file(text.as_bytes(), &Default::default());
        assert!(matches!(verdict.unwrap(), Verdict::Intact { .. }), "{text}");
        // The prune record names the file and the archive's last hash.
        let pr = s.stored_where("op = 'prune'", &[]).unwrap().remove(0);
        let detail = pr.record.detail.unwrap();
        assert_eq!(detail["pruned_last_hash"], lines[2].hash);
        assert!(detail["archive"].as_str().unwrap().ends_with(name));
        assert!(intact(&s));
        // The next prune's archive starts where this one's ended.
        s.journal(&[record(run, "add", "c", Some(object("c", "one")))])
            .unwrap();
        let later = s.start_run("sync", &Default::default()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let p = Prune {
            run_id: later,
            before: OffsetDateTime::now_utc(),
            ..p
        };
        prune(&s, &p).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&archive)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        let second = std::fs::read_to_string(archive.join(&names[1])).unwrap();
        let first: Stored = serde_json::from_str(second.lines().next().unwrap()).unwrap();
        assert_eq!(first.prev_hash, lines[2].hash, "the archives chain on");
        let verdict = crate::state::verify::verify_file(second.as_bytes(), &Default::default());
        assert!(matches!(verdict.unwrap(), Verdict::Intact { .. }));
    }

    #[test]
    fn an_archive_already_there_is_never_replaced_and_nothing_is_pruned() {
        let (dir, s) = state("archive-kept");
        let archive = dir.path().join("archive");
        std::fs::create_dir(&archive).unwrap();
        // What a prune of the same ids wrote earlier (say, before the state
        // was restored from a backup): the only copy of those records.
        let name = "absync-journal-000000000001-000000000002.jsonl";
        std::fs::write(archive.join(name), "earlier evidence\n").unwrap();
        let old = s.start_run("sync", &Default::default()).unwrap();
        s.journal(&[record(old, "add", "a", Some(object("a", "one")))])
            .unwrap();
        let run = s.start_run("sync", &Default::default()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let p = Prune {
            before: OffsetDateTime::now_utc(),
            run_id: run,
            signer: None,
            archive_dir: Some(&archive),
        };
        let e = prune(&s, &p).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("nothing was pruned"), "{e}");
        assert_eq!(
            std::fs::read_to_string(archive.join(name)).unwrap(),
            "earlier evidence\n"
        );
        assert_eq!(ops_of(&s).len(), 3, "nothing pruned");
    }

    #[test]
    fn an_archive_that_cannot_be_written_prunes_nothing() {
        let (dir, s) = state("unwritable");
        let old = s.start_run("sync", &Default::default()).unwrap();
        s.journal(&[record(old, "add", "a", Some(object("a", "one")))])
            .unwrap();
        let run = s.start_run("sync", &Default::default()).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let missing = dir.path().join("no-such-dir");
        let p = Prune {
            before: OffsetDateTime::now_utc(),
            run_id: run,
            signer: None,
            archive_dir: Some(&missing),
        };
        let e = prune(&s, &p).unwrap_err().to_string();
        assert!(
            e.contains("journal archive") && e.contains("nothing was pruned"),
            "{e}"
        );
        assert_eq!(ops_of(&s).len(), 3);
    }

    #[test]
    fn held_survives_two_prunes_with_a_change_and_a_delete_between_them() {
        let dir = std::env::temp_dir().join(format!("absync-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Snapshot::open(&dir).unwrap();
        let run = s.start_run("sync", &Default::default()).unwrap();
        let gap = Duration::from_millis(1000);
        s.journal(&[
            record(run, "add", "a", Some(object("a", "one"))),
            record(run, "add", "b", Some(object("b", "one"))),
            record(run, "add", "c", Some(object("c", "one"))),
            record(run, "delete", "c", None),
        ])
        .unwrap();
        std::thread::sleep(gap);
        s.journal(&[
            record(run, "delete", "a", None),
            record(run, "modify", "b", Some(object("b", "two"))),
        ])
        .unwrap();
        std::thread::sleep(gap);
        let after_adds = |s: &Snapshot| {
            let mut out = Vec::new();
            held(s, &crate::state::journal::now(), None, &mut |h| {
                out.push((h.anchor, h.state.attrs["title"][0].clone()));
                Ok(())
            })
            .unwrap();
            out.sort();
            out
        };
        let now = vec![("b".to_string(), "two".to_string())];
        // (anchor, outcome) of each checkpoint record, oldest first.
        let checkpoints_of = |s: &Snapshot| {
            s.stored_where("op = 'checkpoint'", &[])
                .unwrap()
                .into_iter()
                .map(|r| (r.record.anchor.unwrap(), r.record.outcome))
                .collect::<Vec<_>>()
        };
        // A later run prunes (a run's own records never go).
        let pruner = s.start_run("sync", &Default::default()).unwrap();
        // The adds go: checkpoints say a and b were held (c was gone).
        prune_by(&s, gap * 3 / 2, pruner);
        let checkpoints = checkpoints_of(&s);
        assert_eq!(
            checkpoints,
            vec![
                ("a".to_string(), "held".to_string()),
                ("b".into(), "held".into())
            ]
        );
        assert_eq!(after_adds(&s), now, "the later records win");
        // The delete and the change go, the first checkpoints stay: a's
        // delete is carried by a checkpoint of its own.
        prune_by(&s, gap / 2, pruner);
        let checkpoints = checkpoints_of(&s);
        assert_eq!(checkpoints.len(), 4, "{checkpoints:?}");
        assert_eq!(after_adds(&s), now);
        assert!(matches!(
            verify(&s, &Default::default()).unwrap(),
            Verdict::Intact { .. }
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
