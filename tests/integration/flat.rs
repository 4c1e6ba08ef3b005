//! Reads that stay flat in the journal's size (issue 19): `status`, its
//! `--check`, the metrics and `journal runs` on a state with a long
//! journal. The state is written through absync's own state API (the
//! chain, the runs rows and their signed heads, the totals, the open
//! conflicts, as runs write them), not through the target: no test bed is
//! needed.
//!
//! `generate_large_state` (ignored) writes such a state for `bench/flat`:
//!
//!   ABSYNC_FLAT_DIR=/tmp/flat ABSYNC_FLAT_RUNS=100000 ABSYNC_FLAT_RECORDS=1000000 \
//!   ABSYNC_FLAT_OBJECTS=50000 cargo test --release --test integration -- \
//!   --ignored --exact flat::generate_large_state

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use absync::seal::Signer;
use absync::state::conflicts::Collision;
use absync::state::journal::{AttrChange, Record};
use absync::state::runs::{Counts, FileHashes};
use absync::state::{Accepted, Hidden, ObjectRow, Snapshot};

/// What to write: runs, journal records (about), managed objects.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub runs: u64,
    pub records: u64,
    pub objects: u64,
}

/// A small deterministic generator (xorshift), so two states of one shape
/// are alike.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn anchor(p: u64) -> String {
    format!("{p:08x}-0000-1000-8000-00000000abcd")
}

fn person(p: u64, round: u64) -> ObjectRow {
    let mut attrs = BTreeMap::new();
    let mut one = |k: &str, v: String| {
        attrs.insert(k.to_string(), vec![v]);
    };
    one("cn", format!("Person {p}"));
    one("displayName", format!("Person {p} (R{:02})", p % 50));
    one("givenName", "Person".into());
    one("sn", format!("Surname{p}"));
    one("mail", format!("person.{p}@nhs.net"));
    one("title", format!("Title {round}"));
    one("telephoneNumber", format!("+4420790{:05}", p % 100_000));
    one("company", format!("R{:02}", p % 50));
    ObjectRow {
        anchor: anchor(p),
        dn: format!("CN=Person {p},OU=NHS Directory,DC=sync,DC=test"),
        org: format!("R{:02}", p % 50),
        agreements: vec![format!("DSA-{}", p % 5)],
        attrs,
        hidden: None,
    }
}

/// The agreements' terms as a run journals them (op `agreements`).
fn terms(run: i64, version: u64) -> Record {
    let list: Vec<serde_json::Value> = (0..5)
        .map(|i| {
            serde_json::json!({
                "id": format!("DSA-{i}"),
                "title": format!("Agreement {i}, version {version}"),
                "organisations": (0..10).map(|o| format!("R{:02}", i * 10 + o)).collect::<Vec<_>>(),
                "attributes": ["cn", "sn", "givenName", "mail", "title", "telephoneNumber"],
                "valid_from": "2020-01-01",
                "valid_until": "2099-12-31",
            })
        })
        .collect();
    let mut r = Record::new(run, "agreements", "applied", "the agreements in the file");
    r.detail = Some(serde_json::json!({ "hash": format!("terms-{version}"), "agreements": list }));
    r
}

fn files(version: u64) -> FileHashes {
    FileHashes {
        config: "c0nf".into(),
        mapping: "m4p".into(),
        agreements: format!("terms-{version}"),
    }
}

/// A change of one attribute the target accepted, as a run commits it.
fn modify(run: i64, before: &ObjectRow, after: &ObjectRow, reason: &str, op: &str) -> Record {
    let mut r = Record::new(run, op, "applied", reason);
    r.anchor = Some(after.anchor.clone());
    r.dn = Some(after.dn.clone());
    r.agreements = after.agreements.clone();
    for (k, v) in &after.attrs {
        if before.attrs.get(k) != Some(v) {
            let old = before.attrs.get(k).cloned().unwrap_or_default();
            r.changes.insert(
                k.clone(),
                AttrChange {
                    old,
                    new: v.clone(),
                },
            );
        }
    }
    r
}

/// Writes a state of `shape` into `dir`: a first full run adding the
/// objects, then runs (one in 24 full, with its compliance record) each
/// changing a few objects (modifies; one in 20 hidden, and restored when
/// next changed), every
/// run ended with a signed head; new terms every 5,000 runs; conflicts met
/// and resolved now and then.
pub fn generate(dir: &Path, shape: Shape) {
    let s = Snapshot::open(dir).unwrap();
    let signer = Signer::generate().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut rows: Vec<ObjectRow> = (0..shape.objects).map(|p| person(p, 0)).collect();
    let mut version = 1;
    // The initial load.
    let run = s.start_run("full", &files(version)).unwrap();
    s.journal(&[terms(run, version)]).unwrap();
    for chunk in rows.chunks(1000) {
        let recs: Vec<Vec<Record>> = chunk
            .iter()
            .map(|o| {
                let mut r = modify(run, &ObjectRow::default(), o, "new entry", "add");
                r.changes.clear();
                vec![r]
            })
            .collect();
        let accepted: Vec<Accepted<'_>> = chunk
            .iter()
            .zip(&recs)
            .map(|(o, r)| Accepted {
                anchor: &o.anchor,
                after: Some(o),
                records: r,
            })
            .collect();
        s.commit_many(&accepted, run).unwrap();
    }
    let added = Counts {
        added: shape.objects,
        ..Default::default()
    };
    s.end_run(run, "ok", &added, Some(&signer)).unwrap();
    // Each later run: start, end and seal, and its changes.
    let later = shape.runs.saturating_sub(1).max(1);
    let per_run = shape.records.saturating_sub(shape.objects + 5) as f64 / later as f64;
    let changes = (per_run - 3.0).max(0.0);
    let mut owed = 0.0;
    for n in 1..shape.runs {
        if n % 5000 == 0 {
            version += 1;
        }
        let full = n % 24 == 0;
        let run = s
            .start_run(if full { "full" } else { "sync" }, &files(version))
            .unwrap();
        if n % 5000 == 0 {
            s.journal(&[terms(run, version)]).unwrap();
        }
        owed += changes;
        let mut counts = Counts::default();
        let mut batch: Vec<(ObjectRow, Record)> = Vec::new();
        while owed >= 1.0 {
            owed -= 1.0;
            let p = rng.below(shape.objects) as usize;
            let before = rows[p].clone();
            let mut after = before.clone();
            let (reason, op) = if after.hidden.take().is_some() {
                counts.restored += 1;
                ("back in scope", "restore")
            } else if rng.below(20) == 0 {
                after.hidden = Some(Hidden {
                    at: absync::state::journal::now(),
                    reason: "left scope".into(),
                });
                counts.hidden += 1;
                ("left scope", "hide")
            } else {
                after
                    .attrs
                    .insert("title".into(), vec![format!("Title {n}")]);
                counts.modified += 1;
                ("attributes changed", "modify")
            };
            let r = modify(run, &before, &after, reason, op);
            rows[p] = after.clone();
            batch.push((after, r));
        }
        let recs: Vec<[Record; 1]> = batch.iter().map(|(_, r)| [r.clone()]).collect();
        let accepted: Vec<Accepted<'_>> = batch
            .iter()
            .zip(&recs)
            .map(|((o, _), r)| Accepted {
                anchor: &o.anchor,
                after: Some(o),
                records: r,
            })
            .collect();
        s.commit_many(&accepted, run).unwrap();
        if n % 97 == 0 {
            conflict(&s, run, &rows[rng.below(shape.objects) as usize]);
            counts.conflicts += 1;
        }
        if n % 131 == 0 {
            if let Some(c) = s.open_conflicts().unwrap().first() {
                s.resolve_conflict(c, run, None, absync::state::conflicts::Resolution::Cleared)
                    .unwrap();
            }
        }
        if full {
            let mut r = Record::new(run, "compliance", "ok", "every contact covered");
            r.detail = Some(serde_json::json!({
                "covered": shape.objects, "hidden": 0, "not_covered": 0, "past_grace": 0,
                "not_owned": 3, "not_owned_nhs": 0, "not_owned_orgs": {}, "violations": [],
            }));
            s.journal(&[r]).unwrap();
        }
        s.end_run(run, "ok", &counts, Some(&signer)).unwrap();
    }
}

fn conflict(s: &Snapshot, run: i64, o: &ObjectRow) {
    let mut r = Record::new(run, "conflict", "withheld", "conflict");
    r.anchor = Some(o.anchor.clone());
    r.dn = Some(o.dn.clone());
    r.error = Some("an object absync does not own already has the address".into());
    let with = format!("CN=Someone Else {},OU=Staff,DC=sync,DC=test", o.anchor);
    s.meet_conflict(
        r,
        &Collision {
            kind: "address".into(),
            with,
            what: o.attrs["mail"][0].clone(),
        },
    )
    .unwrap();
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "writes a large state for bench/flat: see the module's documentation"]
fn generate_large_state() {
    let dir = std::path::PathBuf::from(std::env::var("ABSYNC_FLAT_DIR").expect("ABSYNC_FLAT_DIR"));
    if dir.join("absync.db").exists() {
        // Kept from an earlier absync: brought to this one's schema (the
        // copy the migration keeps is not needed here).
        drop(Snapshot::open(&dir).unwrap());
        for f in std::fs::read_dir(&dir).unwrap() {
            let path = f.unwrap().path();
            if path.extension().is_some_and(|e| e == "bak") {
                std::fs::remove_file(path).unwrap();
            }
        }
        eprintln!(
            "{} holds a state: kept, at this absync's schema",
            dir.display()
        );
        return;
    }
    let shape = Shape {
        runs: env_u64("ABSYNC_FLAT_RUNS", 100_000),
        records: env_u64("ABSYNC_FLAT_RECORDS", 1_000_000),
        objects: env_u64("ABSYNC_FLAT_OBJECTS", 50_000),
    };
    let t = std::time::Instant::now();
    generate(&dir, shape);
    eprintln!("{shape:?} written in {:.1} s", t.elapsed().as_secs_f64());
}

/// Runs the absync binary on the state in `dir` (no configuration).
fn absync(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(args)
        .arg("--state")
        .arg(dir)
        .env("ABSYNC_LOG", "warn")
        .env("ABSYNC_ALLOW_ROOT", "1")
        .output()
        .expect("run absync");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Renders the metrics of the state in `ABSYNC_FLAT_DIR` as a scrape does
/// (`service::metrics::render`), `ABSYNC_FLAT_REPEAT` times (default 7),
/// and prints each time and the median, in milliseconds.
#[test]
#[ignore = "times a scrape of a large state for bench/flat"]
fn time_metrics_render() {
    let dir = std::path::PathBuf::from(std::env::var("ABSYNC_FLAT_DIR").expect("ABSYNC_FLAT_DIR"));
    let mut ms: Vec<f64> = (0..env_u64("ABSYNC_FLAT_REPEAT", 7))
        .map(|_| {
            let t = std::time::Instant::now();
            let text = absync::service::metrics::render(&dir);
            let took = t.elapsed().as_secs_f64() * 1000.0;
            assert!(text.contains("absync_runs_total"), "{text}");
            took
        })
        .collect();
    eprintln!("metrics render ms: {ms:?}");
    ms.sort_by(f64::total_cmp);
    println!("metrics_render_median_ms {:.1}", ms[ms.len() / 2]);
}

/// A state of 120 runs and about 1,500 records, written once per test.
fn small_state() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        Shape {
            runs: 120,
            records: 1500,
            objects: 100,
        },
    );
    dir
}

fn tamper(dir: &Path, id: i64) {
    rusqlite::Connection::open(dir.join("absync.db"))
        .unwrap()
        .execute(
            "UPDATE journal SET reason = 'nothing to see' WHERE id = ?1",
            [id],
        )
        .unwrap();
}

fn head(dir: &Path) -> i64 {
    rusqlite::Connection::open(dir.join("absync.db"))
        .unwrap()
        .query_row("SELECT max(id) FROM journal", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn status_check_verifies_the_newest_records_and_journal_verify_the_whole_chain() {
    let state = small_state();
    let dir = state.path().to_str().unwrap();
    let check = || absync(state.path(), &["status", "--check", "--max-age", "3650d"]);
    let (code, out, _) = check();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.starts_with("ABSYNC OK - last run 120 completed"),
        "{out}"
    );

    // An edit among the newest 500 records: CRITICAL, naming the record.
    let last = head(state.path());
    assert!(last > 1000, "{last}");
    tamper(state.path(), last - 5);
    let (code, out, _) = check();
    assert_eq!(code, 2, "{out}");
    let expected = format!(
        "ABSYNC CRITICAL - journal fails verify: record {}",
        last - 5
    );
    assert!(out.starts_with(&expected), "{out}");

    // An edit further back is left to `journal verify`, which walks it all.
    let state = small_state();
    tamper(state.path(), 10);
    let (code, out, _) = absync(state.path(), &["status", "--check", "--max-age", "3650d"]);
    assert_eq!(code, 0, "{out}");
    let out = Command::new(env!("CARGO_BIN_EXE_absync"))
        .args([
            "journal",
            "--state",
            state.path().to_str().unwrap(),
            "verify",
        ])
        .env("ABSYNC_ALLOW_ROOT", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("BROKEN at record 10"), "{text} {dir}");
}

/// `journal runs` for the state in `dir`, with more arguments: the run ids
/// its JSON lists, and its stderr.
fn runs_listed(dir: &Path, more: &[&str]) -> (Vec<i64>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_absync"))
        .args([
            "journal",
            "--state",
            dir.to_str().unwrap(),
            "runs",
            "--format",
            "json",
        ])
        .args(more)
        .env("ABSYNC_ALLOW_ROOT", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    (
        runs.iter().map(|r| r["id"].as_i64().unwrap()).collect(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn journal_runs_shows_the_newest_fifty_unless_asked_for_more() {
    let state = small_state();
    let (ids, note) = runs_listed(state.path(), &[]);
    assert_eq!(ids, (71..=120).collect::<Vec<_>>(), "oldest first");
    assert!(
        note.contains("the newest 50 runs shown; older ones: --last N, --since DAY or --all"),
        "{note}"
    );
    let (ids, note) = runs_listed(state.path(), &["--last", "3"]);
    assert_eq!(ids, [118, 119, 120]);
    assert!(note.contains("the newest 3 runs shown"), "{note}");
    let (ids, note) = runs_listed(state.path(), &["--all"]);
    assert_eq!(ids.len(), 120);
    assert!(note.is_empty(), "{note}");
    // --since alone: every run since then (here, all of them).
    let (ids, _) = runs_listed(state.path(), &["--since", "2000-01-01"]);
    assert_eq!(ids.len(), 120);
    let (ids, note) = runs_listed(state.path(), &["--since", "2000-01-01", "--last", "2"]);
    assert_eq!(ids, [119, 120]);
    assert!(note.contains("newest 2"), "{note}");
}
