//! Retention: the journal's records older than the retention period go,
//! and the chain stays verifiable. The one writer of the journal besides a
//! run; the auditor's queries ([`crate::state::audit`]) only read.

use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use crate::seal::Signer;
use crate::state::audit::latest_states;
use crate::state::journal::Record;
use crate::state::{Snapshot, StateError};

/// Deletes records older than the retention period, and the rows of the
/// runs they were all of. The chain stays verifiable: the last pruned
/// record's id and hash are kept, and the prune is itself a chained record
/// naming them. Returns how many records went.
pub fn prune(
    s: &Snapshot,
    retention: Duration,
    run_id: i64,
    signer: Option<&Signer>,
) -> Result<u64, StateError> {
    let cutoff = crate::state::journal::time_text(time::OffsetDateTime::now_utc() - retention);
    let db = |e| s.db_err(e);
    let last: Option<(i64, String)> = s
        .conn
        .query_row(
            // Through the index on `at`: left to itself SQLite walks the
            // whole journal backwards by id on every run.
            "SELECT id, hash FROM journal WHERE id =
               (SELECT max(id) FROM journal INDEXED BY journal_at WHERE at < ?1)",
            [&cutoff],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db)?;
    let Some((last_id, last_hash)) = last else {
        return Ok(0);
    };
    let tx = s.conn.unchecked_transaction().map_err(db)?;
    let checkpoints = checkpoint(s, &tx, last_id, run_id)?;
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
    if let Some(signer) = signer {
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
        "journal pruned"
    );
    Ok(n)
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
    use crate::state::verify::{verify, Verdict};
    use crate::state::ObjectRow;

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
        // The adds go: checkpoints say a and b were held (c was gone).
        prune(&s, gap * 3 / 2, run, None).unwrap();
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
        prune(&s, gap / 2, run, None).unwrap();
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
