//! Group commits off the critical path. What the target accepted of a
//! pipelined group of writes is handed to a thread of its own, which
//! commits it on a connection of its own, while the run goes on reading,
//! mapping and sending on the other core.
//!
//! **Invariant:** the groups are committed in the order handed over, each
//! in one transaction (the objects' rows, their journal records, their
//! intents cleared), and every other write of the process first waits
//! until all are committed ([`Snapshot::settle`]): the journal's order and
//! chain are as if each group had been committed where it was handed
//! over. An intent is still committed before its write is sent (on the
//! run's own connection, after a settle); only the commit of what was
//! accepted moves. A group that fails to commit stops the commits after
//! it (their intents remain for the next run to settle, as after a kill)
//! and the next settle returns the error.

use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};

use crate::state::journal::Record;
use crate::state::{Accepted, ObjectRow, Snapshot, StateError};

/// A write the target accepted, owned, for the commit thread: the anchor,
/// the object's row (none once deleted) and the journal records.
#[derive(Debug)]
pub struct Landed {
    pub anchor: String,
    pub after: Option<ObjectRow>,
    pub records: Vec<Record>,
}

impl Landed {
    /// As [`Snapshot::commit_many`] takes it.
    pub(crate) fn accepted(&self) -> Accepted<'_> {
        Accepted {
            anchor: &self.anchor,
            after: self.after.as_ref(),
            records: &self.records,
        }
    }
}

/// One group to commit, in one transaction.
struct Job {
    changes: Vec<Landed>,
    run_id: i64,
    /// The server that accepted the group (see [`Snapshot::accepted_by`]).
    accepted_by: Option<String>,
}

/// What the run waits on: groups handed over and not yet committed, and
/// the first failure.
#[derive(Default)]
struct Progress {
    pending: usize,
    failed: Option<StateError>,
}

type Shared = Arc<(Mutex<Progress>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, Progress> {
    // A panic on the other side leaves counts that are still whole.
    shared.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// The commit thread and the way to it.
pub(crate) struct Writer {
    jobs: Option<mpsc::Sender<Job>>,
    shared: Shared,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread, committing through `snapshot` (a connection of
    /// its own to the state database).
    pub(crate) fn start(snapshot: Snapshot) -> Result<Writer, StateError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let shared: Shared = Arc::default();
        let theirs = Arc::clone(&shared);
        let path = snapshot.path.clone();
        let thread = std::thread::Builder::new()
            .name("absync-commit".into())
            .spawn(move || commit_each(&snapshot, &rx, &theirs))
            .map_err(|source| StateError::Dir { path, source })?;
        Ok(Writer {
            jobs: Some(jobs),
            shared,
            thread: Some(thread),
        })
    }

    /// Hands a group over; it is committed after every group before it.
    /// `false` when the thread is gone (then the caller commits it).
    pub(crate) fn hand_over(
        &self,
        changes: Vec<Landed>,
        run_id: i64,
        accepted_by: Option<String>,
    ) -> Result<(), Vec<Landed>> {
        let Some(jobs) = &self.jobs else {
            return Err(changes);
        };
        lock(&self.shared).pending += 1;
        let job = Job {
            changes,
            run_id,
            accepted_by,
        };
        jobs.send(job).map_err(|mpsc::SendError(job)| {
            lock(&self.shared).pending -= 1;
            job.changes
        })
    }

    /// Waits until every group handed over is committed; the first
    /// failure since the last settle, if any.
    pub(crate) fn settle(&self, path: &std::path::Path) -> Result<(), StateError> {
        let mut progress = lock(&self.shared);
        while progress.pending > 0 {
            if !self.running() {
                return Err(StateError::CommitThread {
                    path: path.to_path_buf(),
                    pending: progress.pending,
                });
            }
            progress = self
                .shared
                .1
                .wait_timeout(progress, std::time::Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match progress.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Writer {
    /// Commits what was handed over, then ends the thread.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: each group in turn, until the run's side hangs up. After a
/// failure, the groups still waiting are not committed.
fn commit_each(snapshot: &Snapshot, jobs: &mpsc::Receiver<Job>, shared: &Shared) {
    for job in jobs {
        let skip = lock(shared).failed.is_some();
        let result = if skip { Ok(()) } else { commit(snapshot, job) };
        let mut progress = lock(shared);
        progress.pending = progress.pending.saturating_sub(1);
        if let Err(e) = result {
            progress.failed = Some(e);
        }
        shared.1.notify_all();
    }
}

fn commit(snapshot: &Snapshot, job: Job) -> Result<(), StateError> {
    snapshot.accepted_by(job.accepted_by);
    let rows: Vec<Accepted<'_>> = job.changes.iter().map(Landed::accepted).collect();
    snapshot.commit_many(&rows, job.run_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::runs::Counts;
    use crate::state::verify::{verify_tail, Verdict};

    fn landed(run_id: i64, n: usize) -> Landed {
        let anchor = format!("a{n}");
        let mut r = Record::new(run_id, "add", "applied", &format!("group item {n}"));
        r.dn = Some(format!("cn=P{n},ou=x"));
        Landed {
            after: Some(ObjectRow {
                anchor: anchor.clone(),
                dn: format!("cn=P{n},ou=x"),
                org: "RXA".into(),
                agreements: vec!["DSA-1".into()],
                attrs: [("cn".to_string(), vec![format!("P{n}")])].into(),
                hidden: None,
            }),
            anchor,
            records: vec![r],
        }
    }

    fn reasons(s: &Snapshot) -> Vec<String> {
        let mut stmt = s
            .conn
            .prepare("SELECT reason FROM journal WHERE op != 'run' ORDER BY id")
            .unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn groups_handed_over_land_in_order_between_the_runs_own_writes_and_the_chain_holds() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(dir.path()).unwrap();
        let run = s.start_run("sync", &Default::default()).unwrap();
        let mut expected = Vec::new();
        for g in 0..40 {
            let group: Vec<Landed> = (g * 3..g * 3 + 3).map(|n| landed(run, n)).collect();
            expected.extend(group.iter().map(|l| l.records[0].reason.clone()));
            s.hand_over(group, run).unwrap();
            // A write of the run's own waits for every group before it.
            let why = format!("conflict after group {g}");
            s.journal(&[Record::new(run, "add", "conflict", &why)])
                .unwrap();
            expected.push(why);
        }
        s.settle().unwrap();
        assert_eq!(s.count().unwrap(), 120);
        assert_eq!(reasons(&s), expected);
        s.end_run(run, "ok", &Counts::default(), None).unwrap();
        assert!(matches!(
            verify_tail(&s, 1000).unwrap(),
            Verdict::Intact { .. }
        ));
    }

    #[test]
    fn a_group_that_fails_to_commit_is_reported_at_the_next_settle_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(dir.path()).unwrap();
        let run = s.start_run("sync", &Default::default()).unwrap();
        s.hand_over(vec![landed(run, 1)], run).unwrap();
        s.settle().unwrap();
        let before = reasons(&s);
        // The objects table gone: the commit thread's next upsert fails.
        s.conn.execute_batch("DROP TABLE objects").unwrap();
        s.hand_over(vec![landed(run, 2), landed(run, 3)], run)
            .unwrap();
        let e = s.settle().unwrap_err();
        assert!(e.to_string().contains("no such table: objects"), "{e}");
        assert_eq!(reasons(&s), before, "the failed group wrote no record");
        // The thread was let go; the next settle has nothing to report.
        s.settle().unwrap();
    }

    #[test]
    fn dropping_the_snapshot_commits_what_was_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(dir.path()).unwrap();
        let run = s.start_run("sync", &Default::default()).unwrap();
        for g in 0..10 {
            s.hand_over((g * 5..g * 5 + 5).map(|n| landed(run, n)).collect(), run)
                .unwrap();
        }
        drop(s);
        let s = Snapshot::open(dir.path()).unwrap();
        assert_eq!(s.count().unwrap(), 50);
    }
}
