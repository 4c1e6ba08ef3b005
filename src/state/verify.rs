//! `journal verify`: walks the hash chain from the first record kept and
//! reports the first record that does not fit, with the runs table held to
//! its runs' records. Given public keys, it also checks every signed head
//! and prune: then no record, run or prune can have been changed, added,
//! removed or reordered by anyone without the private key, except records
//! after the last signed head (reported) and a cut of the journal's end
//! (caught with a head kept elsewhere: `expect_head`). Only reads.

use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;

use crate::seal::{self, PublicKey};
use crate::state::audit::{meta, COLUMNS};
use crate::state::journal::{canonical, chain_hash, mail_of, Record, Stored, GENESIS};
use crate::state::runs::Run;
use crate::state::{Snapshot, StateError};

/// What `verify` checks the journal against, besides itself.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Public keys that may have signed (old and new, across a rotation);
    /// none: the chain alone, which proves only that nothing was changed
    /// by accident or by someone who did not recompute the hashes.
    pub keys: Vec<PublicKey>,
    /// A head hash kept elsewhere (the system log, a ticket): it must be a
    /// record of this journal.
    pub expect_head: Option<String>,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The chain holds, and every runs row agrees with its run's records.
    /// `unchecked_runs`: rows of runs older than every run record kept
    /// (from a journal upgraded from before the chain), which nothing can
    /// check. `signed`: the signed heads found, when keys were given.
    Intact {
        records: u64,
        unchecked_runs: u64,
        signed: Option<Box<Signed>>,
    },
    Broken {
        record: i64,
        why: String,
    },
    /// The chain holds, but the keys given do not vouch for all of it.
    Unproven {
        why: String,
    },
}

/// The signed heads of a journal verified with keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The first record kept; if signing began later (`signed_from`: the
    /// first record of the first run whose head is signed), the records
    /// before it were written unsigned and are vouched for only since.
    pub first_record: i64,
    pub signed_from: i64,
    pub first_head: i64,
    pub first_at: String,
    pub last_head: i64,
    pub last_run: i64,
    pub last_at: String,
    pub keys: BTreeSet<String>,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Intact {
                records,
                unchecked_runs,
                signed,
            } => {
                write!(f, "intact, {records} records")?;
                if *unchecked_runs > 0 {
                    write!(
                        f,
                        " ({unchecked_runs} runs older than the journal's first run record \
                         cannot be checked)"
                    )?;
                }
                match signed {
                    Some(s) => write!(f, "; {s}"),
                    None => Ok(()),
                }
            }
            Verdict::Broken { record, why } => write!(f, "BROKEN at record {record}: {why}"),
            Verdict::Unproven { why } => write!(f, "NOT PROVEN: {why}"),
        }
    }
}

impl std::fmt::Display for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.keys.iter().map(String::as_str).collect();
        write!(
            f,
            "signed by key {}: every head from record {} ({}) to record {} (run {}, {})",
            keys.join(", "),
            self.first_head,
            self.first_at,
            self.last_head,
            self.last_run,
            self.last_at
        )?;
        if self.signed_from > self.first_record {
            write!(
                f,
                "; records {} to {} were written before signing began and are vouched for \
                 only from then on",
                self.first_record,
                self.signed_from - 1
            )?;
        }
        Ok(())
    }
}

/// Verifies the journal in the state database.
pub fn verify(s: &Snapshot, evidence: &Evidence) -> Result<Verdict, StateError> {
    let (pruned_id, pruned_hash) = match pruned_start(s)? {
        Ok(start) => start,
        Err(broken) => return Ok(broken),
    };
    let runs: HashMap<i64, Run> = s.runs(u32::MAX)?.into_iter().map(|r| (r.id, r)).collect();
    let mut walk = Walk::new(evidence, Some(&runs));
    walk.start_after(pruned_id, pruned_hash);
    Ok(match walk_from(s, &mut walk, 0)? {
        Some(broken) => broken,
        None => walk.finish(),
    })
}

/// How many of the newest records [`verify_tail`] walks: `status --check`
/// (every minute, say) stays within a few tens of milliseconds however long
/// the journal grows.
pub const CHECK_TAIL: i64 = 500;

/// `status --check`'s verify: the chain over the newest `tail` records
/// (link by link, each hash recomputed, the searched columns held to the
/// hashed record), the runs rows of the runs those records belong to held
/// to their start and end records, and the last run's head hash among
/// them. The first record of the window is taken as the chain has it: a
/// record changed before the window is found by [`verify`] (`journal
/// verify`), not here. When the window would reach the first record kept,
/// or the last run's head is not in it, this is [`verify`]. One read
/// transaction: a run ending meanwhile is not half seen.
pub fn verify_tail(s: &Snapshot, tail: i64) -> Result<Verdict, StateError> {
    let db = |e| s.db_err(e);
    let _read = s.consistent_read()?;
    // Two subqueries: `min(id), max(id)` in one would scan an index.
    let ends: Option<(i64, i64)> = s
        .conn
        .query_row(
            "SELECT (SELECT min(id) FROM journal), (SELECT max(id) FROM journal)",
            [],
            |r| Ok(r.get::<_, Option<i64>>(0)?.zip(r.get::<_, Option<i64>>(1)?)),
        )
        .map_err(db)?;
    let evidence = Evidence::default();
    let from = match ends {
        Some((first, last)) if last - tail.max(1) + 1 > first => last - tail.max(1) + 1,
        _ => return verify(s, &evidence),
    };
    let (prev, first_run): (String, i64) = s
        .conn
        .query_row(
            "SELECT (SELECT prev_hash FROM journal WHERE id = ?1),
                    (SELECT run_id FROM journal WHERE id = ?1)",
            [from],
            |r| {
                // A record missing there: the walk says so.
                Ok((
                    r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                    r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                ))
            },
        )
        .map_err(db)?;
    // The runs the window's records belong to (run ids only grow along
    // the chain; 0 is a reload's, outside any run: then every run), and
    // the newest run, whose head the window must hold.
    let newest = s.runs(1)?.into_iter().next().map_or(0, |r| r.id);
    let runs: HashMap<i64, Run> = s
        .runs(u32::try_from(newest - first_run.min(newest) + 1).unwrap_or(u32::MAX))?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut walk = Walk::new(&evidence, Some(&runs));
    walk.start_after(Some(from - 1), Some(prev));
    walk.prune_vouched = true;
    if let Some(broken) = walk_from(s, &mut walk, from)? {
        return Ok(broken);
    }
    if !walk.head_seen {
        // The last run's head is older than the window: the whole chain.
        return verify(s, &evidence);
    }
    Ok(walk.finish())
}

/// Walks the records from id `from` on through `walk`; the first that does
/// not fit, if any.
fn walk_from(s: &Snapshot, walk: &mut Walk<'_>, from: i64) -> Result<Option<Verdict>, StateError> {
    let db = |e| s.db_err(e);
    let mut stmt = s
        .conn
        .prepare(&format!(
            "SELECT {COLUMNS}, agreements, changes, mail FROM journal WHERE id >= ?1 ORDER BY id"
        ))
        .map_err(db)?;
    let mut rows = stmt.query([from]).map_err(db)?;
    while let Some(row) = rows.next().map_err(db)? {
        let stored = match crate::state::journal::stored_from_row(row) {
            Ok(stored) => stored,
            Err(e) => {
                let id: i64 = row.get(0).map_err(db)?;
                return Ok(Some(Verdict::Broken {
                    record: id,
                    why: format!("it cannot be read as a record (edited): {e}"),
                }));
            }
        };
        let raw = Raw {
            agreements: row.get(17).map_err(db)?,
            changes: row.get(18).map_err(db)?,
            mail: row.get(19).map_err(db)?,
        };
        if let Some(broken) = raw.check(&stored) {
            return Ok(Some(broken));
        }
        if let Some(broken) = walk.record(stored) {
            return Ok(Some(broken));
        }
    }
    Ok(None)
}

/// Verifies a JSONL export (`journal export --format jsonl`) on its own:
/// the chain from its first record, and, with keys, its signed heads. A
/// redacted export cannot verify: its values are not the ones hashed.
pub fn verify_file(lines: impl BufRead, evidence: &Evidence) -> Result<Verdict, std::io::Error> {
    let mut walk = Walk::new(evidence, None);
    for (n, line) in lines.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let stored: Stored = match serde_json::from_str(&line) {
            Ok(s) => s,
            Err(e) => {
                return Ok(Verdict::Broken {
                    record: walk.expected_id,
                    why: format!("line {} is not a journal record: {e}", n + 1),
                })
            }
        };
        if walk.records == 0 {
            walk.start_after(Some(stored.id - 1), Some(stored.prev_hash.clone()));
            walk.prune_vouched = true;
        }
        if let Some(broken) = walk.record(stored) {
            return Ok(broken);
        }
    }
    Ok(walk.finish())
}

/// The stored texts queries read directly (the mail lookup, the agreement
/// search): they must be exactly what the hashed record says.
struct Raw {
    agreements: String,
    changes: String,
    mail: Option<String>,
}

impl Raw {
    fn check(&self, s: &Stored) -> Option<Verdict> {
        let r = &s.record;
        let column = if serde_json::to_string(&r.agreements).ok()? != self.agreements {
            "agreements"
        } else if serde_json::to_string(&r.changes).ok()? != self.changes {
            "changes"
        } else if mail_of(r) != self.mail {
            "mail"
        } else {
            return None;
        };
        Some(Verdict::Broken {
            record: s.id,
            why: format!("its {column} column differs from the record that was hashed (edited)"),
        })
    }
}

/// Where the kept journal starts, per `journal_meta` (id and hash of the
/// last pruned record), or why that record is malformed.
type PrunedStart = (Option<i64>, Option<String>);

fn pruned_start(s: &Snapshot) -> Result<Result<PrunedStart, Verdict>, StateError> {
    let malformed = || {
        Err(Verdict::Broken {
            record: 1,
            why: "journal_meta's record of pruning is malformed (edited)".into(),
        })
    };
    let pruned_hash = meta(s, "pruned_hash")?;
    Ok(match (meta(s, "pruned_id")?, pruned_hash) {
        (None, None) => Ok((None, None)),
        (Some(id), Some(hash)) => match id.parse::<i64>() {
            Ok(id) => Ok((Some(id), Some(hash))),
            Err(_) => malformed(),
        },
        _ => malformed(),
    })
}

/// Two times the same, or (rows written before a run's row and records
/// shared one time stamp) less than a second apart.
fn same_time(a: &str, b: &str) -> bool {
    let f = &time::format_description::well_known::Rfc3339;
    a == b
        || match (
            time::OffsetDateTime::parse(a, f),
            time::OffsetDateTime::parse(b, f),
        ) {
            (Ok(a), Ok(b)) => (a - b).abs() < time::Duration::SECOND,
            _ => false,
        }
}

/// The columns of a runs row that differ from its run's start record.
fn start_differs(run: &Run, at: &str, r: &Record) -> Vec<&'static str> {
    let d = r.detail.clone().unwrap_or_default();
    let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
    [
        ("started_at", !same_time(&run.started_at, at)),
        ("mode", run.mode != r.reason),
        ("config_hash", run.files.config != text("config_hash")),
        ("mapping_hash", run.files.mapping != text("mapping_hash")),
        (
            "agreements_hash",
            run.files.agreements != text("agreements_hash"),
        ),
        ("unix_user", run.unix_user != text("unix_user")),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(k, _)| k)
    .collect()
}

/// The columns of a runs row that differ from its run's end record.
fn end_differs(run: &Run, at: &str, hash: &str, r: &Record) -> Vec<&'static str> {
    let d = r.detail.clone().unwrap_or_default();
    let counts: Option<crate::state::runs::Counts> =
        serde_json::from_value(d["counts"].clone()).ok();
    [
        (
            "ended_at",
            !run.ended_at.as_deref().is_some_and(|e| same_time(e, at)),
        ),
        ("status", d["status"] != run.status.as_str()),
        ("counts", counts.is_none() || counts != run.counts),
        ("head_hash", run.head_hash.as_deref() != Some(hash)),
    ]
    .into_iter()
    .filter(|(_, differs)| *differs)
    .map(|(k, _)| k)
    .collect()
}

/// A signed head met on the walk.
struct Head {
    id: i64,
    run: i64,
    at: String,
}

/// The walk along the chain, record by record.
struct Walk<'r> {
    evidence: &'r Evidence,
    /// The runs table, for a database (an export has none).
    runs: Option<&'r HashMap<i64, Run>>,
    pruned_id: Option<i64>,
    pruned_hash: Option<String>,
    expected_prev: String,
    expected_id: i64,
    /// A pruned start is only as good as the chained prune record that
    /// names it: anyone can write journal_meta.
    prune_vouched: bool,
    last_head: Option<String>,
    head_seen: bool,
    /// Per run: the ids of its start and end records, where kept.
    started: HashMap<i64, i64>,
    ended: HashMap<i64, i64>,
    records: u64,
    first_record: Option<i64>,
    /// The first and the last signed head, and the keys that signed.
    first_seal: Option<Head>,
    last_seal: Option<Head>,
    keys: BTreeSet<String>,
    /// A run's end record not yet followed by its signed head.
    unsealed_end: Option<(i64, i64)>,
    /// Per run: the id of its start record (for where signing began).
    run_starts: HashMap<i64, i64>,
    /// The first record of the first run whose head is signed.
    signed_from: Option<i64>,
    expect_seen: bool,
}

impl<'r> Walk<'r> {
    fn new(evidence: &'r Evidence, runs: Option<&'r HashMap<i64, Run>>) -> Self {
        let last_head = runs.and_then(|runs| {
            runs.values()
                .max_by_key(|r| r.id)
                .and_then(|r| r.head_hash.clone())
        });
        Walk {
            evidence,
            runs,
            pruned_id: None,
            pruned_hash: None,
            expected_prev: GENESIS.to_string(),
            expected_id: 1,
            prune_vouched: true,
            head_seen: last_head.is_none(),
            last_head,
            started: HashMap::new(),
            ended: HashMap::new(),
            records: 0,
            first_record: None,
            first_seal: None,
            last_seal: None,
            keys: BTreeSet::new(),
            unsealed_end: None,
            run_starts: HashMap::new(),
            signed_from: None,
            expect_seen: false,
        }
    }

    /// The chain starts after record `pruned_id`, whose hash was
    /// `pruned_hash` (nothing pruned: from the genesis).
    fn start_after(&mut self, pruned_id: Option<i64>, pruned_hash: Option<String>) {
        self.expected_prev = pruned_hash.clone().unwrap_or_else(|| GENESIS.to_string());
        self.expected_id = pruned_id.unwrap_or(0) + 1;
        self.prune_vouched = pruned_id.is_none();
        self.pruned_id = pruned_id;
        self.pruned_hash = pruned_hash;
    }

    fn signing_began(&self) -> bool {
        self.first_seal.is_some()
    }

    /// Checks one record: its place in the chain, its hash, the runs row
    /// its start or end record vouches for, and its signature.
    fn record(&mut self, row: Stored) -> Option<Verdict> {
        let broken = |why: String| {
            Some(Verdict::Broken {
                record: row.id,
                why,
            })
        };
        if row.id != self.expected_id {
            return Some(Verdict::Broken {
                record: self.expected_id,
                why: format!(
                    "record {} is missing; the next is {} (deleted or reordered)",
                    self.expected_id, row.id
                ),
            });
        }
        if row.prev_hash != self.expected_prev {
            return broken(
                "its link to the previous record does not match (a record before it was \
                 deleted, inserted or reordered)"
                    .into(),
            );
        }
        let recomputed = chain_hash(&row.prev_hash, &canonical(row.id, &row.at, &row.record));
        if recomputed != row.hash {
            return broken("its content does not match its hash (edited)".into());
        }
        if let Some(why) = self.signatures(&row) {
            return broken(why);
        }
        let r = &row.record;
        if r.op == "prune" {
            if let (Some(d), Some(id), Some(hash)) = (&r.detail, self.pruned_id, &self.pruned_hash)
            {
                if d["pruned_through_id"] == id && d["pruned_last_hash"] == hash.as_str() {
                    self.prune_vouched = true;
                }
            }
        }
        if r.op == "run" && r.outcome == "started" {
            self.run_starts.insert(r.run_id, row.id);
        }
        if r.op == "run" && (r.outcome == "started" || r.outcome == "ended") {
            if let Some(why) = self.run_record(&row) {
                return broken(why);
            }
        }
        if Some(&row.hash) == self.last_head.as_ref() {
            self.head_seen = true;
        }
        if Some(&row.hash) == self.evidence.expect_head.as_ref() {
            self.expect_seen = true;
        }
        self.first_record.get_or_insert(row.id);
        self.expected_prev = row.hash;
        self.expected_id += 1;
        self.records += 1;
        None
    }

    /// Signed heads and prunes: each seal names the record before it and,
    /// with keys, carries a valid signature; once signing began, every run
    /// end is followed by its seal and every prune is signed.
    fn signatures(&mut self, row: &Stored) -> Option<String> {
        let r = &row.record;
        if let Some((run, end)) = self.unsealed_end.take() {
            if r.op != "seal" && self.signing_began() {
                return Some(format!(
                    "run {run} ended at record {end} without a signed head (removed; or the \
                     signing key was taken out of the configuration, which leaves this part \
                     unproven)"
                ));
            }
        }
        match r.op.as_str() {
            "seal" => self.seal(row),
            "prune" => self.prune_signature(r),
            "run" if r.outcome == "ended" => {
                self.unsealed_end = Some((r.run_id, row.id));
                None
            }
            _ => None,
        }
    }

    fn seal(&mut self, row: &Stored) -> Option<String> {
        let r = &row.record;
        let d = r.detail.clone().unwrap_or_default();
        let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
        let head_id = d["head_id"].as_i64().unwrap_or(-1);
        let (head_hash, at, key, signature) = (
            text("head_hash"),
            text("at"),
            text("key"),
            text("signature"),
        );
        if head_id != row.id - 1 || head_hash != row.prev_hash {
            return Some(format!(
                "the signed head names record {head_id}, not the record before it (edited)"
            ));
        }
        if !self.evidence.keys.is_empty() {
            let message = seal::head_message(r.run_id, head_id, &head_hash, &at);
            if let Some(why) = self.check_signature(&key, &message, &signature) {
                return Some(format!("its signed head: {why}"));
            }
        }
        self.keys.insert(key);
        let head = Head {
            id: head_id,
            run: r.run_id,
            at,
        };
        if self.first_seal.is_none() {
            self.signed_from = Some(self.run_starts.get(&r.run_id).copied().unwrap_or(head_id));
            self.first_seal = Some(Head {
                id: head.id,
                run: head.run,
                at: head.at.clone(),
            });
        }
        self.last_seal = Some(head);
        None
    }

    fn prune_signature(&self, r: &Record) -> Option<String> {
        let d = r.detail.clone().unwrap_or_default();
        let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
        let signature = text("signature");
        if signature.is_empty() {
            return (self.signing_began() && !self.evidence.keys.is_empty()).then(|| {
                "a prune without a signature, after signing began (faked; or the signing \
                 key was taken out of the configuration)"
                    .to_string()
            });
        }
        if self.evidence.keys.is_empty() {
            return None;
        }
        let message = seal::prune_message(
            r.run_id,
            d["pruned_through_id"].as_i64().unwrap_or(-1),
            &text("pruned_last_hash"),
            &text("older_than"),
        );
        self.check_signature(&text("key"), &message, &signature)
            .map(|why| format!("its prune: {why}"))
    }

    fn check_signature(&self, key: &str, message: &str, signature: &str) -> Option<String> {
        let Some(public) = self.evidence.keys.iter().find(|k| k.id() == key) else {
            let given: Vec<&str> = self.evidence.keys.iter().map(|k| k.id()).collect();
            return Some(format!(
                "signed by key {key}, which is not among the public keys given ({})",
                given.join(", ")
            ));
        };
        (!public.verifies(message, signature)).then(|| {
            "the signature does not verify (the records it covers were changed, or the \
             signature was forged)"
                .to_string()
        })
    }

    /// A run's start or end record against its runs row.
    fn run_record(&mut self, row: &Stored) -> Option<String> {
        let runs = self.runs?;
        let r = &row.record;
        let Some(run) = runs.get(&r.run_id) else {
            return Some(format!(
                "run {} is journaled but has no row in the runs table (deleted)",
                r.run_id
            ));
        };
        let (which, differs) = if r.outcome == "started" {
            self.started.insert(r.run_id, row.id);
            ("start", start_differs(run, &row.at, r))
        } else {
            self.ended.insert(r.run_id, row.id);
            ("end", end_differs(run, &row.at, &row.hash, r))
        };
        (!differs.is_empty()).then(|| {
            format!(
                "run {} in the runs table differs from its journaled {which} ({} edited)",
                r.run_id,
                differs.join(", ")
            )
        })
    }

    /// After the last record: the ends of the chain, the runs rows, and
    /// what the signatures vouch for.
    fn finish(&self) -> Verdict {
        if let Some(broken) = self.ends() {
            return broken;
        }
        let verdict = self.runs_rows();
        let Verdict::Intact {
            records,
            unchecked_runs,
            ..
        } = verdict
        else {
            return verdict;
        };
        if self.evidence.keys.is_empty() {
            return Verdict::Intact {
                records,
                unchecked_runs,
                signed: None,
            };
        }
        match self.signed() {
            Ok(signed) => Verdict::Intact {
                records,
                unchecked_runs,
                signed: Some(Box::new(signed)),
            },
            Err(why) => Verdict::Unproven { why },
        }
    }

    /// What the signed heads vouch for: all of the journal, or why not.
    fn signed(&self) -> Result<Signed, String> {
        let (Some(first), Some(last)) = (&self.first_seal, &self.last_seal) else {
            return Err(format!(
                "no head in the journal is signed: it proves only its own chain, which \
                 whoever holds the state can recompute (is [journal] signing_key set?); {} \
                 records",
                self.records
            ));
        };
        let last_id = self.expected_id - 1;
        // The seal follows its head: its own record is the last one signed.
        if last_id > last.id + 1 {
            return Err(format!(
                "the chain is intact, but records {} to {last_id} come after the last signed \
                 head (record {}, run {}, {}): a run still in progress, a run killed before it \
                 ended, or records added since; verify again after the next run",
                last.id + 2,
                last.id,
                last.run,
                last.at
            ));
        }
        Ok(Signed {
            first_record: self.first_record.unwrap_or(1),
            signed_from: self.signed_from.unwrap_or(first.id),
            first_head: first.id,
            first_at: first.at.clone(),
            last_head: last.id,
            last_run: last.run,
            last_at: last.at.clone(),
            keys: self.keys.clone(),
        })
    }

    /// The pruned start vouched for, the last run's head reached, the head
    /// kept elsewhere found.
    fn ends(&self) -> Option<Verdict> {
        if !self.prune_vouched {
            let pruned = self.pruned_id.unwrap_or(0);
            return Some(Verdict::Broken {
                record: self.expected_id.min(pruned + 1),
                why: format!(
                    "the journal starts after record {pruned}, but no prune record in the \
                     chain says so (older records deleted)"
                ),
            });
        }
        if !self.head_seen {
            return Some(Verdict::Broken {
                record: self.expected_id,
                why: "the last run's head hash is not in the journal (records at its end were \
                      deleted)"
                    .into(),
            });
        }
        match &self.evidence.expect_head {
            Some(head) if !self.expect_seen => Some(Verdict::Broken {
                record: self.expected_id,
                why: format!(
                    "the head kept elsewhere ({head}) is not in the journal: records up to it \
                     were removed from the end or changed (or pruned, if it is that old)"
                ),
            }),
            _ => None,
        }
    }

    /// Every runs row needs its run's records; only rows older than the
    /// first run record kept (written before the chain existed) cannot have
    /// them.
    fn runs_rows(&self) -> Verdict {
        let intact = |unchecked_runs| Verdict::Intact {
            records: self.records,
            unchecked_runs,
            signed: None,
        };
        let Some(runs) = self.runs else {
            return intact(0);
        };
        let first_journaled = self.started.keys().chain(self.ended.keys()).min().copied();
        let mut unchecked_runs = 0;
        let mut ids: Vec<&i64> = runs.keys().collect();
        ids.sort();
        for id in ids {
            let run = &runs[id];
            let (started, ended) = (self.started.get(id), self.ended.contains_key(id));
            if started.is_none() && !ended {
                if first_journaled.is_some_and(|first| *id > first) {
                    return Verdict::Broken {
                        record: self.expected_id,
                        why: format!(
                            "run {id} in the runs table has no journaled start (inserted)"
                        ),
                    };
                }
                unchecked_runs += 1;
            } else if !ended
                && (run.status != "running"
                    || run.ended_at.is_some()
                    || run.counts.is_some()
                    || run.head_hash.is_some())
            {
                return Verdict::Broken {
                    record: started.copied().unwrap_or(self.expected_id),
                    why: format!(
                        "run {id} in the runs table has an end its journal does not record \
                         (edited)"
                    ),
                };
            }
        }
        intact(unchecked_runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::runs::Counts;

    /// `runs` runs of a modify and a failed add each, ended.
    fn journal(runs: usize) -> (tempfile::TempDir, Snapshot) {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(dir.path()).unwrap();
        for _ in 0..runs {
            let id = s.start_run("sync", &Default::default()).unwrap();
            s.journal(&[
                Record::new(id, "modify", "applied", "attributes changed"),
                Record::new(id, "add", "failed", "new entry"),
            ])
            .unwrap();
            s.end_run(id, "ok", &Counts::default(), None).unwrap();
        }
        (dir, s)
    }

    fn edit(s: &Snapshot, sql: &str) {
        s.conn.execute_batch(sql).unwrap();
    }

    #[test]
    fn the_tail_walks_only_the_newest_records_and_finds_an_edit_among_them() {
        let (_dir, s) = journal(40); // 160 records
        let tail = verify_tail(&s, 30).unwrap();
        assert!(
            matches!(tail, Verdict::Intact { records: 30, .. }),
            "{tail}"
        );
        // An edit in the window: broken there, as the whole chain says.
        edit(&s, "UPDATE journal SET reason = 'x' WHERE id = 150");
        let broken = Verdict::Broken {
            record: 150,
            why: "its content does not match its hash (edited)".into(),
        };
        assert_eq!(verify_tail(&s, 30).unwrap(), broken);
        assert_eq!(verify(&s, &Evidence::default()).unwrap(), broken);
    }

    #[test]
    fn an_edit_before_the_tail_is_left_to_the_whole_verify() {
        let (_dir, s) = journal(40);
        edit(&s, "UPDATE journal SET reason = 'x' WHERE id = 10");
        assert!(matches!(
            verify_tail(&s, 30).unwrap(),
            Verdict::Intact { .. }
        ));
        assert!(matches!(
            verify(&s, &Evidence::default()).unwrap(),
            Verdict::Broken { record: 10, .. }
        ));
    }

    #[test]
    fn the_tail_holds_the_runs_rows_of_its_runs_and_the_last_head() {
        let (_dir, s) = journal(40);
        edit(&s, "UPDATE runs SET status = 'ok, honest' WHERE id = 39");
        let v = verify_tail(&s, 30).unwrap();
        assert!(
            matches!(&v, Verdict::Broken { why, .. } if why.contains("run 39 in the runs table differs")),
            "{v}"
        );
        let (_dir, s) = journal(40);
        // The last run's end (and its head) removed from the journal.
        edit(
            &s,
            "DELETE FROM journal WHERE id = (SELECT max(id) FROM journal)",
        );
        let v = verify_tail(&s, 30).unwrap();
        assert!(
            matches!(&v, Verdict::Broken { why, .. } if why.contains("head hash is not in the journal")),
            "{v}"
        );
        // A run inserted into the runs table without its records.
        let (_dir, s) = journal(40);
        edit(
            &s,
            "INSERT INTO runs (id, started_at, mode, status, config_hash, unix_user)
             VALUES (41, '2026-01-01T00:00:00.000000Z', 'sync', 'running', '', 'x')",
        );
        let v = verify_tail(&s, 30).unwrap();
        assert!(
            matches!(&v, Verdict::Broken { why, .. } if why.contains("run 41 in the runs table has no journaled start")),
            "{v}"
        );
    }

    #[test]
    fn a_record_missing_where_the_tail_starts_is_broken() {
        let (_dir, s) = journal(40); // records 1 to 160
        edit(&s, "DELETE FROM journal WHERE id = 131");
        let v = verify_tail(&s, 30).unwrap();
        assert!(
            matches!(&v, Verdict::Broken { record: 131, why } if why.contains("missing")),
            "{v}"
        );
    }

    #[test]
    fn a_journal_within_the_tail_is_verified_whole() {
        let (_dir, s) = journal(5);
        assert_eq!(
            verify_tail(&s, 500).unwrap(),
            verify(&s, &Evidence::default()).unwrap()
        );
        edit(&s, "UPDATE journal SET reason = 'x' WHERE id = 1");
        assert!(matches!(
            verify_tail(&s, 500).unwrap(),
            Verdict::Broken { record: 1, .. }
        ));
    }
}
