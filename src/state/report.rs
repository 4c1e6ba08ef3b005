//! What `journal report` shows, gathered from the journal in one pass over
//! the records of a time window plus a few indexed queries: counts per day,
//! the safety rails and overrides, configuration and agreement changes,
//! open conflicts, what is held per agreement at the window's end, the
//! latest compliance check and the verify verdict. Only reads; holds
//! aggregates and short lists, never the records. How it looks is
//! [`crate::report`]'s.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::state::audit::{self, Filter, STATE_OPS};
use crate::state::journal::{head, Stored};
use crate::state::runs::FileHashes;
use crate::state::verify::{self, Evidence, Verdict};
use crate::state::{Snapshot, StateError};

/// How many rows a list keeps (rails, overrides, changes, conflicts); the
/// rest are counted.
pub const LIST_LIMIT: usize = 200;

/// The series a record without an agreement is counted under.
pub const NO_AGREEMENT: &str = "(none)";

/// Per day (`YYYY-MM-DD`, UTC): per key, how many records.
pub type PerDay = BTreeMap<String, BTreeMap<String, u64>>;

/// The first [`LIST_LIMIT`] items, and how many more there were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capped<T> {
    pub items: Vec<T>,
    pub more: u64,
}

impl<T> Default for Capped<T> {
    fn default() -> Self {
        Capped {
            items: Vec::new(),
            more: 0,
        }
    }
}

impl<T> Capped<T> {
    /// How many there were, listed or not.
    pub fn len(&self) -> u64 {
        self.items.len() as u64 + self.more
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn push(&mut self, item: T) {
        if self.items.len() < LIST_LIMIT {
            self.items.push(item);
        } else {
            self.more += 1;
        }
    }
}

/// A safety rail that held deletes back (a `threshold` or `guard` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rail {
    pub record: i64,
    pub at: String,
    pub run: i64,
    /// `threshold` or `guard`.
    pub rail: String,
    /// The run's status, e.g. "stopped: deletion threshold".
    pub status: String,
    pub message: String,
}

/// An `--allow-deletes` override and who gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub record: i64,
    pub at: String,
    pub run: i64,
    /// "--allow-deletes N".
    pub allowed: String,
    /// The user as journaled ("root (login alice)").
    pub by: String,
    pub uid: Option<u64>,
    pub login_uid: Option<u64>,
    /// "N deletes released, M still held".
    pub result: String,
}

/// A run whose configuration, mapping or agreements file differed from
/// the run before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    pub run: i64,
    pub at: String,
    pub changed: Vec<&'static str>,
    pub files: FileHashes,
}

/// A recording of the agreements' terms (op `agreements`) and how they
/// differ from the terms recorded before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermsChange {
    pub record: i64,
    pub at: String,
    pub run: i64,
    pub file_hash: String,
    /// Per agreement: what changed, in words.
    pub changes: Vec<(String, String)>,
}

/// Another event worth listing: a daemon reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub record: i64,
    pub at: String,
    pub text: String,
}

/// A conflict still open at the window's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub record: i64,
    pub at: String,
    pub run: i64,
    pub anchor: String,
    pub org: Option<String>,
    /// The name absync wanted, and the object holding it (when known).
    pub dn: Option<String>,
    pub with: Option<String>,
    pub error: Option<String>,
}

/// What was held under one agreement at the window's end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holding {
    pub agreement: String,
    /// From the terms recorded at or before the window's end.
    pub title: Option<String>,
    pub valid_from: Option<String>,
    pub valid_until: Option<String>,
    pub objects: u64,
    pub hidden: u64,
    pub organisations: u64,
}

/// The newest signed head at or before the window's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    pub record: i64,
    pub run: i64,
    pub head_id: i64,
    pub head_hash: String,
    pub at: String,
    pub key: String,
}

/// The latest compliance check in the window: its outcome and every
/// number its detail holds (nested names joined with dots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compliance {
    pub record: i64,
    pub at: String,
    pub run: i64,
    pub outcome: String,
    pub reason: String,
    pub figures: Vec<(String, String)>,
}

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportData {
    /// The window, as journal times (inclusive).
    pub from: String,
    pub to: String,
    pub generated_at: String,
    /// Of the whole journal; `keys`: how many public keys it was checked with.
    pub verdict: Verdict,
    pub keys: usize,
    /// The journal's last record (id, hash).
    pub head: Option<(i64, String)>,
    /// When the journal was pruned: the time before which records are gone.
    pub pruned_before: Option<String>,
    pub signed: Option<SignedHead>,
    /// Records in the window.
    pub records: u64,
    /// Runs that ended in the window, by status.
    pub runs: BTreeMap<String, u64>,
    /// Object records per day, by operation (a refused change as `failed`).
    pub by_op: PerDay,
    /// Object records per day, by agreement (each agreement a record names).
    pub by_agreement: PerDay,
    /// Deletes (applied, or found already absent) by reason.
    pub deletes: BTreeMap<String, u64>,
    pub rails: Capped<Rail>,
    pub overrides: Capped<Override>,
    pub config: Capped<ConfigChange>,
    pub terms: Capped<TermsChange>,
    pub reloads: Capped<Note>,
    pub conflicts: Capped<Conflict>,
    /// Per agreement, or why the journal cannot tell (pruned).
    pub holdings: Result<Vec<Holding>, String>,
    /// Objects held at the window's end, whatever their agreements.
    pub held: u64,
    pub compliance: Option<Compliance>,
}

impl ReportData {
    /// A report with nothing gathered yet.
    pub(crate) fn new(from: &str, to: &str, generated_at: &str, verdict: Verdict) -> ReportData {
        ReportData {
            from: from.to_string(),
            to: to.to_string(),
            generated_at: generated_at.to_string(),
            verdict,
            keys: 0,
            head: None,
            pruned_before: None,
            signed: None,
            records: 0,
            runs: BTreeMap::new(),
            by_op: PerDay::new(),
            by_agreement: PerDay::new(),
            deletes: BTreeMap::new(),
            rails: Capped::default(),
            overrides: Capped::default(),
            config: Capped::default(),
            terms: Capped::default(),
            reloads: Capped::default(),
            conflicts: Capped::default(),
            holdings: Ok(Vec::new()),
            held: 0,
            compliance: None,
        }
    }
}

/// Gathers the report of the records from `from` to `to` (journal times,
/// inclusive), with the verdict of `verify` on the whole journal.
pub fn gather(
    s: &Snapshot,
    from: &str,
    to: &str,
    evidence: &Evidence,
    generated_at: &str,
) -> Result<ReportData, StateError> {
    let verdict = verify::verify(s, evidence)?;
    let mut data = ReportData::new(from, to, generated_at, verdict);
    let mut terms = terms_before(s, from)?;
    let filter = Filter {
        since: Some(from.to_string()),
        until: Some(to.to_string()),
        ..Default::default()
    };
    audit::filtered(s, &filter, &mut |r| {
        data.take(r, &mut terms);
        Ok(())
    })?;
    for (run, changed) in audit::config_changes(s)? {
        if (from..=to).contains(&run.started_at.as_str()) {
            data.config.push(ConfigChange {
                run: run.id,
                at: run.started_at,
                changed,
                files: run.files,
            });
        }
    }
    data.conflicts = open_conflicts(s, to)?;
    (data.holdings, data.held) = match holdings(s, to) {
        Ok((h, n)) => (Ok(h), n),
        Err(StateError::Pruned(before)) => (
            Err(format!(
                "the journal was pruned: it knows what was held from {before} on"
            )),
            0,
        ),
        Err(e) => return Err(e),
    };
    data.signed = signed_head(s, to)?;
    data.head = Some(head(&s.conn).map_err(|e| s.db_err(e))?).filter(|(id, _)| *id > 0);
    data.pruned_before = audit::pruned_before(s)?;
    data.keys = evidence.keys.len();
    Ok(data)
}

impl ReportData {
    /// Counts one record of the window.
    fn take(&mut self, r: Stored, terms: &mut BTreeMap<String, Value>) {
        self.records += 1;
        let rec = &r.record;
        match (rec.op.as_str(), rec.outcome.as_str()) {
            ("run", "ended") => *self.runs.entry(rec.reason.clone()).or_default() += 1,
            ("threshold" | "guard", _) => self.rails.push(Rail {
                record: r.id,
                at: r.at.clone(),
                run: rec.run_id,
                rail: rec.op.clone(),
                status: rec.reason.clone(),
                message: rec.error.clone().unwrap_or_default(),
            }),
            ("override", _) => self.overrides.push(override_of(&r)),
            // Recorded again before a prune: the terms did not change.
            ("agreements", _) if carried(&r) => *terms = terms_of(&r),
            ("agreements", _) => self.terms.push(terms_change(&r, terms)),
            ("reload", _) => self.reloads.push(Note {
                record: r.id,
                at: r.at.clone(),
                text: rec.reason.clone(),
            }),
            ("compliance", _) => self.compliance = Some(compliance_of(&r)),
            _ => {}
        }
        if rec.anchor.is_some() && rec.op != "checkpoint" {
            self.count_change(&r);
        }
    }

    /// An object record: per day by operation and by agreement, and a
    /// delete by its reason.
    fn count_change(&mut self, r: &Stored) {
        let rec = &r.record;
        let day = r.at.get(..10).unwrap_or(&r.at).to_string();
        let op = if rec.outcome == "failed" {
            "failed"
        } else {
            rec.op.as_str()
        };
        *self
            .by_op
            .entry(day.clone())
            .or_default()
            .entry(op.to_string())
            .or_default() += 1;
        let per = self.by_agreement.entry(day).or_default();
        if rec.agreements.is_empty() {
            *per.entry(NO_AGREEMENT.to_string()).or_default() += 1;
        }
        for a in &rec.agreements {
            *per.entry(a.clone()).or_default() += 1;
        }
        if rec.op == "delete" && matches!(rec.outcome.as_str(), "applied" | "already absent") {
            *self.deletes.entry(rec.reason.clone()).or_default() += 1;
        }
    }
}

fn override_of(r: &Stored) -> Override {
    let rec = &r.record;
    let (allowed, by) = match rec.reason.split_once(" by ") {
        Some((allowed, by)) => (allowed.to_string(), by.to_string()),
        None => (rec.reason.clone(), String::new()),
    };
    let detail = rec.detail.clone().unwrap_or_default();
    Override {
        record: r.id,
        at: r.at.clone(),
        run: rec.run_id,
        allowed,
        by,
        uid: detail["uid"].as_u64(),
        login_uid: detail["login_uid"].as_u64(),
        result: rec.error.clone().unwrap_or_default(),
    }
}

/// The terms recorded last before `from`, per agreement id.
fn terms_before(s: &Snapshot, from: &str) -> Result<BTreeMap<String, Value>, StateError> {
    let mut out = BTreeMap::new();
    let cond = "id = (SELECT max(id) FROM journal WHERE op = 'agreements' AND at < ?1)";
    s.each_where(cond, &[&from], &mut |r| {
        out = terms_of(&r);
        Ok(())
    })?;
    Ok(out)
}

/// An `agreements` record that a prune wrote again (it names the one it
/// carries over).
fn carried(r: &Stored) -> bool {
    r.record
        .detail
        .as_ref()
        .is_some_and(|d| d.get("carried_from").is_some())
}

fn terms_of(r: &Stored) -> BTreeMap<String, Value> {
    let detail = r.record.detail.clone().unwrap_or_default();
    detail["agreements"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["id"].as_str()?.to_string(), a.clone())))
        .collect()
}

/// A recording of the terms, compared with `prev` (which it replaces).
fn terms_change(r: &Stored, prev: &mut BTreeMap<String, Value>) -> TermsChange {
    let now = terms_of(r);
    let first = prev.is_empty();
    let mut changes = Vec::new();
    for id in prev.keys().chain(now.keys()).collect::<BTreeSet<_>>() {
        let what = match (prev.get(id), now.get(id)) {
            (None, Some(t)) if first => format!("recorded: {}", describe_terms(t)),
            (None, Some(t)) => format!("added: {}", describe_terms(t)),
            (Some(_), None) => "removed from the agreements file".to_string(),
            (Some(old), Some(new)) => match compare_terms(old, new) {
                Some(diff) => diff,
                None => continue,
            },
            (None, None) => continue,
        };
        changes.push((id.clone(), what));
    }
    if changes.is_empty() {
        changes.push((
            String::new(),
            "the file changed; no agreement's terms did".into(),
        ));
    }
    *prev = now;
    let detail = r.record.detail.clone().unwrap_or_default();
    TermsChange {
        record: r.id,
        at: r.at.clone(),
        run: r.record.run_id,
        file_hash: detail["hash"].as_str().unwrap_or_default().to_string(),
        changes,
    }
}

fn list(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
        .collect()
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn describe_terms(t: &Value) -> String {
    format!(
        "\"{}\", organisations {}, attributes {}, valid {} to {}",
        text(&t["title"]),
        list(&t["organisations"]).join(", "),
        list(&t["attributes"]).join(", "),
        text(&t["valid_from"]),
        text(&t["valid_until"])
    )
}

/// What differs between two recordings of one agreement's terms.
fn compare_terms(old: &Value, new: &Value) -> Option<String> {
    let mut parts = Vec::new();
    for key in ["title", "valid_from", "valid_until"] {
        if old[key] != new[key] {
            parts.push(format!("{key} {} → {}", text(&old[key]), text(&new[key])));
        }
    }
    for key in ["organisations", "attributes"] {
        let (a, b) = (list(&old[key]), list(&new[key]));
        let added: Vec<&String> = b.iter().filter(|x| !a.contains(x)).collect();
        let removed: Vec<&String> = a.iter().filter(|x| !b.contains(x)).collect();
        let mut words = Vec::new();
        if !added.is_empty() {
            words.push(format!("+{}", join(&added)));
        }
        if !removed.is_empty() {
            words.push(format!("−{}", join(&removed)));
        }
        if !words.is_empty() {
            parts.push(format!("{key} {}", words.join(" ")));
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

fn compliance_of(r: &Stored) -> Compliance {
    let mut figures = Vec::new();
    if let Some(detail) = &r.record.detail {
        numbers("", detail, &mut figures);
    }
    Compliance {
        record: r.id,
        at: r.at.clone(),
        run: r.record.run_id,
        outcome: r.record.outcome.clone(),
        reason: r.record.reason.clone(),
        figures,
    }
}

/// Every number in `v`, named by its path (`a.b`); lists are skipped.
fn numbers(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Number(n) => out.push((prefix.to_string(), n.to_string())),
        Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                numbers(&name, v, out);
            }
        }
        _ => {}
    }
}

/// The last record at or before `to` (0: none).
fn last_at(s: &Snapshot, to: &str) -> Result<i64, StateError> {
    s.conn
        .query_row(
            "SELECT coalesce(max(id), 0) FROM journal WHERE at <= ?1",
            [to],
            |r| r.get(0),
        )
        .map_err(|e| s.db_err(e))
}

/// Conflicts open at `to`: per person, the conflict that is their last
/// record up to then, counting only conflicts and changes AD accepted. A
/// conflict is journaled when it opens and when it changes; its resolution
/// (outcome `resolved`), or a later change that landed (journals from
/// before conflicts were resolved), closes it.
fn open_conflicts(s: &Snapshot, to: &str) -> Result<Capped<Conflict>, StateError> {
    let last = last_at(s, to)?;
    let cond = format!(
        "id IN (SELECT max(id) FROM journal WHERE anchor IS NOT NULL AND id <= ?1
                AND (op = 'conflict' OR ({STATE_OPS})) GROUP BY anchor)
         AND op = 'conflict' AND outcome != 'resolved'"
    );
    let mut out = Capped::default();
    s.each_where(&cond, &[&last], &mut |r| {
        out.push(Conflict {
            record: r.id,
            at: r.at,
            run: r.record.run_id,
            anchor: r.record.anchor.unwrap_or_default(),
            org: r.record.org,
            dn: r.record.dn,
            with: r.record.old_dn,
            error: r.record.error,
        });
        Ok(())
    })?;
    Ok(out)
}

/// What was held at `to`, per agreement (with the terms recorded then,
/// and those of them that hold nobody), and how many objects in all.
fn holdings(s: &Snapshot, to: &str) -> Result<(Vec<Holding>, u64), StateError> {
    let mut per: BTreeMap<String, (Holding, BTreeSet<String>)> = BTreeMap::new();
    let mut total = 0;
    audit::held(s, to, None, &mut |h| {
        total += 1;
        let mut ids = h.state.agreements.clone();
        if ids.is_empty() {
            ids.push(NO_AGREEMENT.to_string());
        }
        for id in ids {
            let (held, orgs) = per.entry(id.clone()).or_default();
            held.agreement = id;
            held.objects += 1;
            held.hidden += u64::from(h.state.hidden.is_some());
            orgs.insert(h.org.clone().unwrap_or_default());
        }
        Ok(())
    })?;
    let terms = audit::terms_at(s, Some(to))?
        .map(|r| terms_of(&r))
        .unwrap_or_default();
    // Agreements in the terms that hold nobody (one that ended, say).
    for id in terms.keys() {
        if !per.contains_key(id) {
            let held = Holding {
                agreement: id.clone(),
                ..Default::default()
            };
            per.insert(id.clone(), (held, BTreeSet::new()));
        }
    }
    let mut out = Vec::new();
    for (id, (mut held, orgs)) in per {
        held.organisations = orgs.len() as u64;
        if let Some(t) = terms.get(&id) {
            held.title = t["title"].as_str().map(str::to_string);
            held.valid_from = t["valid_from"].as_str().map(str::to_string);
            held.valid_until = t["valid_until"].as_str().map(str::to_string);
        }
        out.push(held);
    }
    Ok((out, total))
}

/// The newest `seal` record at or before `to`.
fn signed_head(s: &Snapshot, to: &str) -> Result<Option<SignedHead>, StateError> {
    let mut out = None;
    let cond = "id = (SELECT max(id) FROM journal WHERE op = 'seal' AND at <= ?1)";
    s.each_where(cond, &[&to], &mut |r| {
        let d = r.record.detail.unwrap_or_default();
        out = Some(SignedHead {
            record: r.id,
            run: r.record.run_id,
            head_id: d["head_id"].as_i64().unwrap_or_default(),
            head_hash: text(&d["head_hash"]),
            at: text(&d["at"]),
            key: text(&d["key"]),
        });
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::journal::{append_at, Record};
    use crate::state::runs::Counts;
    use crate::state::ObjectRow;

    const DAY1: &str = "2026-03-02T10:00:00.000000Z";
    const DAY2: &str = "2026-03-04T10:00:00.000000Z";

    fn object(anchor: &str, agreements: &[&str]) -> ObjectRow {
        ObjectRow {
            anchor: anchor.into(),
            dn: format!("cn={anchor},OU=T"),
            org: "RX1".into(),
            agreements: agreements.iter().map(|a| a.to_string()).collect(),
            attrs: Default::default(),
            hidden: None,
        }
    }

    fn change(op: &str, outcome: &str, anchor: &str, agreements: &[&str]) -> Record {
        let mut r = Record::new(1, op, outcome, "test");
        r.anchor = Some(anchor.into());
        r.org = Some("RX1".into());
        r.agreements = agreements.iter().map(|a| a.to_string()).collect();
        if op != "delete" && op != "conflict" && outcome == "applied" {
            r.state = Some(object(anchor, agreements));
        }
        r
    }

    fn terms(agreements: serde_json::Value) -> Record {
        let mut r = Record::new(1, "agreements", "applied", "the agreements in the file");
        r.detail = Some(serde_json::json!({ "hash": "f".repeat(64), "agreements": agreements }));
        r
    }

    fn dsa(id: &str, orgs: &[&str], until: &str) -> serde_json::Value {
        serde_json::json!({"id": id, "title": format!("title of {id}"), "organisations": orgs,
            "attributes": ["mail"], "valid_from": "2026-01-01", "valid_until": until})
    }

    /// A journal over five days: before, in and after the window.
    fn journal(s: &Snapshot) {
        let run = s.start_run("sync", &Default::default()).unwrap();
        assert_eq!(run, 1);
        let mut delete = change("delete", "applied", "c", &["DSA-2"]);
        delete.reason = "agreement expired".into();
        let mut rail = Record::new(1, "threshold", "withheld", "stopped: deletion threshold");
        rail.error = Some("30 deletes held back".into());
        let mut allow = Record::new(
            1,
            "override",
            "applied",
            "--allow-deletes 5 by root (login alice)",
        );
        allow.detail = Some(serde_json::json!({"uid": 0, "login_uid": 1000}));
        allow.error = Some("5 deletes released, 25 still held".into());
        let mut check = Record::new(1, "compliance", "ok", "every contact covered");
        check.detail = Some(serde_json::json!({"covered": 3, "violations": 0,
            "lists": {"unowned": ["x"]}, "by": {"x": 2}}));
        let at = [
            (
                "2026-02-01T10:00:00.000000Z",
                terms(serde_json::json!([dsa("DSA-1", &["RX1"], "2026-12-31")])),
            ),
            (DAY1, change("add", "applied", "a", &["DSA-1"])),
            (DAY1, change("add", "applied", "b", &["DSA-1", "DSA-2"])),
            (DAY1, change("add", "applied", "c", &["DSA-2"])),
            (DAY1, change("conflict", "withheld", "d", &["DSA-1"])),
            (
                DAY1,
                terms(serde_json::json!([
                    dsa("DSA-1", &["RX1"], "2026-12-31"),
                    dsa("DSA-2", &["RX1"], "2026-12-31")
                ])),
            ),
            (DAY2, change("modify", "failed", "a", &["DSA-1"])),
            (DAY2, delete),
            (DAY2, rail),
            (DAY2, allow),
            (
                DAY2,
                terms(serde_json::json!([
                    dsa("DSA-1", &["RX1", "RX2"], "2026-12-31"),
                    dsa("DSA-2", &["RX1"], "2026-03-03"),
                    dsa("DSA-3", &["RX3"], "2026-12-31")
                ])),
            ),
            (DAY2, change("conflict", "withheld", "e", &["DSA-1"])),
            (DAY2, change("add", "applied", "e", &["DSA-1"])),
            (DAY2, check),
            (
                "2026-03-06T10:00:00.000000Z",
                change("add", "applied", "d", &["DSA-1"]),
            ),
            (
                "2026-03-06T10:00:00.000000Z",
                change("add", "applied", "f", &["DSA-1"]),
            ),
        ];
        for (t, r) in &at {
            append_at(&s.conn, r, t).unwrap();
        }
        s.end_run(run, "ok", &Counts::default(), None).unwrap();
    }

    fn gathered() -> ReportData {
        let dir = tempfile::tempdir().unwrap();
        journal(&Snapshot::open(dir.path()).unwrap());
        let s = Snapshot::open_read_only(dir.path(), crate::state::ReadFrom::Given).unwrap();
        let (from, to) = ("2026-03-01T00:00:00.000000Z", "2026-03-05T23:59:59.999999Z");
        gather(
            &s,
            from,
            to,
            &Evidence::default(),
            "2026-11-30T00:00:00.000000Z",
        )
        .unwrap()
    }

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn a_window_is_counted_per_day_by_operation_and_by_agreement() {
        let d = gathered();
        assert!(
            matches!(d.verdict, Verdict::Intact { records: 18, .. }),
            "{:?}",
            d.verdict
        );
        assert_eq!(d.records, 13, "the records of the window only");
        let day1 = "2026-03-02".to_string();
        let day2 = "2026-03-04".to_string();
        assert_eq!(d.by_op.keys().collect::<Vec<_>>(), [&day1, &day2]);
        assert_eq!(d.by_op[&day1], counts(&[("add", 3), ("conflict", 1)]));
        assert_eq!(
            d.by_op[&day2],
            counts(&[("add", 1), ("conflict", 1), ("delete", 1), ("failed", 1)])
        );
        assert_eq!(d.by_agreement[&day1], counts(&[("DSA-1", 3), ("DSA-2", 2)]));
        assert_eq!(d.deletes, counts(&[("agreement expired", 1)]));
        assert!(d.runs.is_empty(), "the run ended after the window");
        assert_eq!(d.head.as_ref().unwrap().0, 18);
    }

    #[test]
    fn rails_overrides_and_terms_are_listed_with_who_and_what_changed() {
        let d = gathered();
        assert_eq!(d.rails.items.len(), 1);
        assert_eq!(d.rails.items[0].message, "30 deletes held back");
        let o = &d.overrides.items[0];
        assert_eq!(
            (o.allowed.as_str(), o.by.as_str(), o.uid, o.login_uid),
            (
                "--allow-deletes 5",
                "root (login alice)",
                Some(0),
                Some(1000)
            )
        );
        assert_eq!(d.terms.items.len(), 2);
        let first = &d.terms.items[0].changes;
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, "DSA-2");
        assert!(
            first[0].1.starts_with("added: \"title of DSA-2\""),
            "{first:?}"
        );
        let second = &d.terms.items[1].changes;
        assert_eq!(
            second,
            &[
                ("DSA-1".to_string(), "organisations +RX2".to_string()),
                ("DSA-2".into(), "valid_until 2026-12-31 → 2026-03-03".into()),
                (
                    "DSA-3".into(),
                    "added: \"title of DSA-3\", organisations RX3, attributes mail, valid \
                     2026-01-01 to 2026-12-31"
                        .into()
                )
            ]
        );
    }

    #[test]
    fn a_resolved_conflict_is_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(dir.path()).unwrap();
        for (t, r) in [
            (DAY1, change("conflict", "withheld", "a", &["DSA-1"])),
            (DAY1, change("conflict", "withheld", "b", &["DSA-1"])),
            (DAY2, change("conflict", "resolved", "a", &["DSA-1"])),
        ] {
            append_at(&s.conn, &r, t).unwrap();
        }
        let open = |to: &str| -> Vec<String> {
            let c = open_conflicts(&s, to).unwrap();
            c.items.into_iter().map(|c| c.anchor).collect()
        };
        assert_eq!(open("2026-03-03T00:00:00.000000Z"), ["a", "b"]);
        assert_eq!(open("2026-03-05T00:00:00.000000Z"), ["b"]);
    }

    #[test]
    fn open_conflicts_holdings_and_compliance_are_as_at_the_windows_end() {
        let d = gathered();
        let open: Vec<&str> = d
            .conflicts
            .items
            .iter()
            .map(|c| c.anchor.as_str())
            .collect();
        assert_eq!(
            open,
            ["d"],
            "e's conflict was closed by its add; d's only later"
        );
        let held = d.holdings.as_ref().unwrap();
        let per: Vec<(&str, u64)> = held
            .iter()
            .map(|h| (h.agreement.as_str(), h.objects))
            .collect();
        assert_eq!(
            per,
            [("DSA-1", 3), ("DSA-2", 1), ("DSA-3", 0)],
            "a, b, e; b (c deleted, f later); nobody"
        );
        assert_eq!(d.held, 3);
        assert_eq!(held[1].valid_until.as_deref(), Some("2026-03-03"));
        let c = d.compliance.as_ref().unwrap();
        assert_eq!(c.outcome, "ok");
        assert_eq!(
            c.figures,
            [
                ("by.x".to_string(), "2".to_string()),
                ("covered".into(), "3".into()),
                ("violations".into(), "0".into())
            ]
        );
    }

    #[test]
    fn lists_keep_their_first_rows_and_count_the_rest() {
        let mut c = Capped::default();
        for i in 0..LIST_LIMIT + 5 {
            c.push(i);
        }
        assert_eq!(
            (c.items.len(), c.more, c.len()),
            (LIST_LIMIT, 5, LIST_LIMIT as u64 + 5)
        );
    }
}
