//! The signed journal against a forger who holds the state directory and
//! knows the chain's format, but not the private key: each forgery an
//! auditor must catch is made on a copy of a real journal (after syncs
//! against the test bed), the chain recomputed the way a forger would, and
//! `journal verify --public-key` run on it.

use std::path::{Path, PathBuf};

use absync::state::journal::{canonical, chain_hash, Record, Stored};

use crate::common::check::*;
use crate::common::env::{Run, SyncEnv, NO_RAILS};

/// A journal written by three signed runs (the last with a change), with
/// the key pair that signed it and the head each run logged.
struct Signed {
    env: SyncEnv,
    public: PathBuf,
    /// The heads the runs logged ("journal head signed … head_hash=H").
    logged_heads: Vec<String>,
}

fn journal(env: &SyncEnv, state: &Path, args: &[&str]) -> Run {
    let mut all = vec!["journal", "--state", state.to_str().unwrap()];
    all.extend_from_slice(args);
    env.absync(&all)
}

/// `absync sync` with its log at info level, as the service logs.
fn sync_logged(env: &SyncEnv) -> Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["--config", env.config_path().to_str().unwrap(), "sync"])
        .env("ABSYNC_LOG", "info")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The head hashes a run's log names.
fn heads_in(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("journal head signed"))
        .filter_map(|l| l.split("head_hash=").nth(1))
        .map(|h| h.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

async fn signed(name: &str) -> Signed {
    let env = SyncEnv::new(name, 53, 40, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-SIG", &codes, ALL_ATTRS, &day(-10), &day(10))]);
    let (private, public) = env.keygen();
    let keys = env.dir.join("keys");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key is its owner's only");
    // A key is never overwritten.
    let again = env.absync(&[
        "journal",
        "keygen",
        "--private",
        private.to_str().unwrap(),
        "--public",
        keys.join("other.pub").to_str().unwrap(),
    ]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.stderr.contains("never overwritten"), "{again:?}");

    env.set_safety(&format!(
        "{NO_RAILS}\n[journal]\nsigning_key = \"{}\"\n",
        private.display()
    ));
    let mut logged_heads = Vec::new();
    for _ in 0..2 {
        let run = sync_logged(&env);
        assert_eq!(run.code, 0, "{run:?}");
        logged_heads.extend(heads_in(&run.stderr));
    }
    let someone = env
        .source_people("(objectClass=nhsPerson)")
        .await
        .into_iter()
        .find(|(_, p)| p["nhsentrystatus"][0] == "active")
        .unwrap()
        .1;
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: title\ntitle: Signed Off\n-\n\n",
        someone["dn"][0]
    ));
    let run = sync_logged(&env);
    assert_eq!(run.code, 0, "{run:?}");
    logged_heads.extend(heads_in(&run.stderr));
    assert_eq!(
        logged_heads.len(),
        3,
        "one signed head per run: {logged_heads:?}"
    );
    Signed {
        env,
        public,
        logged_heads,
    }
}

/// A copy of the state, changed by `forge` on its database.
fn forged_copy(s: &Signed, name: &str, forge: impl FnOnce(&rusqlite::Connection)) -> PathBuf {
    let copy = s.env.dir.join(name);
    std::fs::create_dir_all(&copy).unwrap();
    // A consistent copy of the live database, WAL included.
    let src = rusqlite::Connection::open(s.env.state_dir().join("absync.db")).unwrap();
    src.execute("VACUUM INTO ?1", [copy.join("absync.db").to_str().unwrap()])
        .unwrap();
    let db = rusqlite::Connection::open(copy.join("absync.db")).unwrap();
    forge(&db);
    copy
}

/// Every record, in order, as stored.
fn records(db: &rusqlite::Connection) -> Vec<Stored> {
    let mut stmt = db
        .prepare(
            "SELECT id, at, run_id, anchor, dn, old_dn, op, outcome, reason, agreements, changes,
                    error, org, state, detail, prev_hash, hash FROM journal ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| {
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
                agreements: serde_json::from_str(&json(9)?.unwrap()).unwrap(),
                changes: serde_json::from_str(&json(10)?.unwrap()).unwrap(),
                error: r.get(11)?,
                org: r.get(12)?,
                state: json(13)?.map(|v| serde_json::from_str(&v).unwrap()),
                detail: json(14)?.map(|v| serde_json::from_str(&v).unwrap()),
            },
            prev_hash: r.get(15)?,
            hash: r.get(16)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// What a forger who knows the format does after changing records: every
/// record written again in order with fresh ids, links and hashes, and the
/// runs rows' head hashes made to match.
fn rechain(db: &rusqlite::Connection, keep: impl Fn(&Stored) -> bool) {
    let kept: Vec<Stored> = records(db).into_iter().filter(|s| keep(s)).collect();
    db.execute_batch("DELETE FROM journal").unwrap();
    let mut prev = absync::state::journal::GENESIS.to_string();
    for (i, mut s) in kept.into_iter().enumerate() {
        let id = i as i64 + 1;
        // A seal names the head it signs: the forger points it at the new
        // one (the signature cannot follow).
        if s.record.op == "seal" {
            let d = s.record.detail.as_mut().unwrap();
            d["head_id"] = (id - 1).into();
            d["head_hash"] = prev.clone().into();
        }
        let hash = chain_hash(&prev, &canonical(id, &s.at, &s.record));
        let r = &s.record;
        db.execute(
            "INSERT INTO journal (id, run_id, at, anchor, dn, old_dn, op, outcome, reason,
                 agreements, changes, error, org, state, detail, prev_hash, hash, mail)
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18)",
            rusqlite::params![
                id,
                r.run_id,
                s.at,
                r.anchor,
                r.dn,
                r.old_dn,
                r.op,
                r.outcome,
                r.reason,
                serde_json::to_string(&r.agreements).unwrap(),
                serde_json::to_string(&r.changes).unwrap(),
                r.error,
                r.org,
                r.state.as_ref().map(|v| serde_json::to_string(v).unwrap()),
                r.detail.as_ref().map(|v| v.to_string()),
                prev,
                hash,
                r.state
                    .as_ref()
                    .and_then(|s| s.attrs.get("mail"))
                    .and_then(|m| m.first())
                    .map(|m| m.to_lowercase()),
            ],
        )
        .unwrap();
        if r.op == "run" && r.outcome == "ended" {
            db.execute(
                "UPDATE runs SET head_hash = ?1 WHERE id = ?2",
                rusqlite::params![hash, r.run_id],
            )
            .unwrap();
        }
        prev = hash;
    }
}

fn verify_with_key(s: &Signed, state: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["verify", "--public-key", s.public.to_str().unwrap()];
    args.extend_from_slice(extra);
    journal(&s.env, state, &args)
}

/// With the public key the forgery is caught, with `why` in the answer.
fn caught(s: &Signed, state: &Path, why: &str) {
    let keyed = verify_with_key(s, state, &[]);
    assert_eq!(keyed.code, 1, "{keyed:?}");
    assert!(
        keyed.stdout.starts_with("BROKEN") && keyed.stdout.contains(why),
        "{keyed:?}"
    );
}

#[tokio::test]
async fn forgeries_of_a_signed_journal_are_caught_with_the_public_key() {
    let s = signed("sign-forge").await;
    let state = s.env.state_dir();
    let honest = verify_with_key(&s, &state, &[]);
    assert_eq!(honest.code, 0, "{honest:?}");
    assert!(
        honest.stdout.starts_with("intact, ") && honest.stdout.contains("signed by key"),
        "{honest:?}"
    );
    let last_head = s.logged_heads.last().unwrap();
    let expected = verify_with_key(&s, &state, &["--expect-head", last_head]);
    assert_eq!(expected.code, 0, "{expected:?}");

    // A record's agreement changed, the chain recomputed.
    let edited = forged_copy(&s, "edited", |db| {
        db.execute_batch(
            "UPDATE journal SET agreements = '[\"DSA-FORGED-999\"]'
             WHERE id = (SELECT min(id) FROM journal WHERE op = 'add')",
        )
        .unwrap();
        rechain(db, |_| true);
    });
    let plain = journal(&s.env, &edited, &["verify"]);
    assert_eq!(
        plain.code, 0,
        "without the key a recomputed chain passes: {plain:?}"
    );
    caught(&s, &edited, "signature does not verify");

    // A person erased: their records gone, ids renumbered, counts fixed.
    let erased = forged_copy(&s, "erased", |db| {
        let anchor: String = db
            .query_row(
                "SELECT anchor FROM journal WHERE op = 'add' ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        rechain(db, |r| r.record.anchor.as_deref() != Some(anchor.as_str()));
    });
    caught(&s, &erased, "signature does not verify");

    // The last run dropped whole: its records, its seal and its row. The
    // signed prefix is intact; the head the system log kept is not there.
    let dropped = forged_copy(&s, "dropped", |db| {
        db.execute_batch(
            "DELETE FROM journal WHERE run_id = (SELECT max(id) FROM runs);
             DELETE FROM runs WHERE id = (SELECT max(id) FROM runs);",
        )
        .unwrap();
    });
    let keyed = verify_with_key(&s, &dropped, &["--expect-head", last_head]);
    assert_eq!(keyed.code, 1, "{keyed:?}");
    assert!(
        keyed.stdout.contains("BROKEN") && keyed.stdout.contains("head kept elsewhere"),
        "{keyed:?}"
    );

    // A prune faked: the oldest records deleted, journal_meta written and
    // a prune record appended to vouch for it, with the right links.
    let pruned = forged_copy(&s, "pruned", |db| {
        let (cut, cut_hash): (i64, String) = db
            .query_row(
                "SELECT id, hash FROM journal WHERE id = (SELECT min(id) + 9 FROM journal)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        db.execute("DELETE FROM journal WHERE id <= ?1", [cut])
            .unwrap();
        db.execute_batch(&format!(
            "INSERT INTO journal_meta (key, value) VALUES ('pruned_id', '{cut}'), ('pruned_hash', '{cut_hash}')
             ON CONFLICT(key) DO UPDATE SET value = excluded.value;"
        ))
        .unwrap();
        let last = records(db).pop().unwrap();
        let mut r = Record::new(
            last.record.run_id,
            "prune",
            "applied",
            "retention period over",
        );
        r.detail = Some(serde_json::json!({
            "records": 10, "runs": 0, "checkpoints": 0, "older_than": "2026-01-01T00:00:00.000000Z",
            "pruned_through_id": cut, "pruned_last_hash": cut_hash,
        }));
        let id = last.id + 1;
        let at = last.at.clone();
        let hash = chain_hash(&last.hash, &canonical(id, &at, &r));
        db.execute(
            "INSERT INTO journal (id, run_id, at, op, outcome, reason, agreements, changes, detail, prev_hash, hash)
             VALUES (?1, ?2, ?3, 'prune', 'applied', 'retention period over', '[]', '{}', ?4, ?5, ?6)",
            rusqlite::params![id, r.run_id, at, r.detail.unwrap().to_string(), last.hash, hash],
        )
        .unwrap();
    });
    let plain = journal(&s.env, &pruned, &["verify"]);
    assert_eq!(
        plain.code, 0,
        "without the key the faked prune passes: {plain:?}"
    );
    caught(&s, &pruned, "a prune without a signature");

    // The mail lookup column pointed at someone else.
    let mail = forged_copy(&s, "mail", |db| {
        db.execute_batch(
            "UPDATE journal SET mail = 'someone.else@nhs.net'
             WHERE id = (SELECT min(id) FROM journal WHERE mail IS NOT NULL)",
        )
        .unwrap();
    });
    caught(&s, &mail, "its mail column differs");
}

#[tokio::test]
async fn an_export_verifies_on_its_own_and_an_unsigned_past_is_named() {
    let env = SyncEnv::new("sign-export", 54, 20, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-SIG", &codes, ALL_ATTRS, &day(-10), &day(10))]);
    // A run before any key: the past a signed journal starts from.
    assert_eq!(env.absync(&["sync"]).code, 0);
    let (private, public) = env.keygen();
    let state = env.state_dir();
    let unsigned = journal(
        &env,
        &state,
        &["verify", "--public-key", public.to_str().unwrap()],
    );
    assert_eq!(unsigned.code, 1, "nothing signed yet: {unsigned:?}");
    assert!(unsigned.stdout.contains("NOT PROVEN"), "{unsigned:?}");

    // The key inside the state directory is refused.
    let inside = state.join("journal.key");
    std::fs::copy(&private, &inside).unwrap();
    env.set_safety(&format!(
        "{NO_RAILS}\n[journal]\nsigning_key = \"{}\"\n",
        inside.display()
    ));
    let refused = env.absync(&["sync"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("journal.signing_key")
            && refused.stderr.contains("inside the state directory"),
        "{refused:?}"
    );
    std::fs::remove_file(&inside).unwrap();

    env.set_safety(&format!(
        "{NO_RAILS}\n[journal]\nsigning_key = \"{}\"\npublic_key = \"{}\"\n",
        private.display(),
        public.display()
    ));
    assert_eq!(env.absync(&["sync"]).code, 0);
    // The configured public key is what `journal verify` checks with.
    let configured = env.absync(&["journal", "verify"]);
    assert_eq!(configured.code, 0, "{configured:?}");
    assert!(
        configured.stdout.contains("signed by key"),
        "{configured:?}"
    );
    let keyed = journal(
        &env,
        &state,
        &["verify", "--public-key", public.to_str().unwrap()],
    );
    assert_eq!(keyed.code, 0, "{keyed:?}");
    assert!(
        keyed.stdout.contains("were written before signing began"),
        "the unsigned past is named: {keyed:?}"
    );

    // The export, verified with nothing but the file and the public key.
    let export = journal(
        &env,
        &state,
        &["export", "--since", "2000-01-01", "--format", "jsonl"],
    );
    assert_eq!(export.code, 0, "{export:?}");
    let file = env.dir.join("export.jsonl");
    std::fs::write(&file, &export.stdout).unwrap();
    let by_file = env.absync(&[
        "journal",
        "verify",
        "--file",
        file.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    assert_eq!(by_file.code, 0, "{by_file:?}");
    assert!(by_file.stdout.contains("signed by key"), "{by_file:?}");
    // One value changed in the file.
    let line = export
        .stdout
        .lines()
        .position(|l| l.contains("\"op\":\"add\""))
        .unwrap();
    let changed: Vec<String> = export
        .stdout
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == line {
                l.replacen("\"DSA-SIG\"", "\"DSA-OTHER\"", 1)
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&file, changed.join("\n")).unwrap();
    let tampered = env.absync(&["journal", "verify", "--file", file.to_str().unwrap()]);
    assert_eq!(tampered.code, 1, "{tampered:?}");
    assert!(tampered.stdout.contains("BROKEN"), "{tampered:?}");
}
