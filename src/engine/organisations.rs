//! Organisation status (`[source.organisations]`): which organisations the
//! agreements name are closed, and which organisation succeeded each.
//!
//! A run reads the entries of the organisations the agreements name (one
//! search under the configured base), before anything else is read; the
//! closed ones go into [`Agreements::closed`], so no grant covers them, the
//! filter leaves their people out, and the removals give those people the
//! reason `organisation closed`. Which agreements name a closed organisation
//! is journaled (op `organisations`) when it changes, for `status`; `check`
//! reads the same and warns.

use std::collections::{BTreeMap, BTreeSet};

use ldap3::{Scope, SearchEntry};

use crate::agreements::{is_ods_code, Agreements, NamesClosed};
use crate::config::{Config, OrganisationsConfig};
use crate::engine::outcome::RunError;
use crate::ldap::{values_of, Conn, LdapError};
use crate::state::journal::Record;
use crate::state::{Snapshot, StateError};

/// The journal operation of the record saying which agreements name a
/// closed organisation.
pub const OP: &str = "organisations";

/// What the organisation entries said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statuses {
    /// Organisation entries read.
    pub read: usize,
    /// Closed organisations: ODS code → the successor's ODS code.
    pub closed: BTreeMap<String, Option<String>>,
    /// Entries or values that could not be used, each saying why (never
    /// quoting the value).
    pub skipped: Vec<String>,
}

/// ODS codes per search: a filter of a few hundred terms is ordinary.
const CODES_PER_SEARCH: usize = 200;

/// Reads the entries of `codes` under `orgs.base_dn` and tells which are
/// closed, with their successors.
pub async fn read(
    conn: &mut Conn,
    orgs: &OrganisationsConfig,
    codes: &BTreeSet<String>,
    page_size: u32,
) -> Result<Statuses, LdapError> {
    let mut out = Statuses::default();
    let mut attrs = vec![orgs.code_attribute.clone(), orgs.status_attribute.clone()];
    attrs.extend(orgs.successor_attribute.clone());
    let codes: Vec<&String> = codes.iter().collect();
    for chunk in codes.chunks(CODES_PER_SEARCH) {
        let terms: String = chunk
            .iter()
            .map(|c| {
                format!(
                    "({}={})",
                    orgs.code_attribute,
                    ldap3::ldap_escape(c.as_str())
                )
            })
            .collect();
        let filter = format!("(&{}(|{terms}))", orgs.filter);
        let mut search = conn
            .paged_search(
                &orgs.base_dn,
                Scope::Subtree,
                &filter,
                attrs.clone(),
                page_size,
            )
            .await?;
        while let Some(e) = search.next().await? {
            out.read += 1;
            judge(orgs, &e, &mut out);
        }
        search.finish().await?;
    }
    Ok(out)
}

/// One organisation entry: closed or not, and its successor. An entry
/// without one ODS code is skipped; a successor that is not an ODS code
/// is not believed. Several status values: closed if any says so.
pub fn judge(orgs: &OrganisationsConfig, e: &SearchEntry, out: &mut Statuses) {
    let code = match values_of(e, &orgs.code_attribute).as_slice() {
        [c] if is_ods_code(c.trim()) => c.trim().to_uppercase(),
        _ => {
            out.skipped.push(format!(
                "organisation entry {} has no single ODS code in {}; skipped",
                crate::text::Shown(&e.dn),
                orgs.code_attribute
            ));
            return;
        }
    };
    let closed = values_of(e, &orgs.status_attribute)
        .iter()
        .any(|v| orgs.closed_values.contains(&v.trim().to_lowercase()));
    if !closed {
        return;
    }
    let successor =
        orgs.successor_attribute
            .as_ref()
            .and_then(|a| match values_of(e, a).as_slice() {
                [] => None,
                [s] if is_ods_code(s.trim()) => Some(s.trim().to_uppercase()),
                _ => {
                    out.skipped.push(format!(
                        "closed organisation {code}: {a} is not one ODS code; no successor taken"
                    ));
                    None
                }
            });
    let entry = out.closed.entry(code).or_insert(None);
    if entry.is_none() {
        *entry = successor;
    }
}

/// Reads the organisations' status when `[source.organisations]` is
/// configured (a connection of its own, before the run reads anything
/// else) and marks the closed ones in `agreements`. Logs each agreement
/// that names a closed organisation.
pub async fn settle(cfg: &Config, agreements: &mut Agreements) -> Result<(), RunError> {
    let Some(orgs) = &cfg.source.organisations else {
        return Ok(());
    };
    let mut conn = Conn::connect(&cfg.source.endpoint).await?;
    let statuses = read(&mut conn, orgs, &agreements.named(), cfg.source.page_size).await;
    conn.unbind().await;
    let statuses = statuses?;
    for why in &statuses.skipped {
        tracing::warn!("{why}");
    }
    agreements.closed = statuses.closed;
    for n in agreements.names_closed() {
        tracing::warn!(
            agreement = n.agreement,
            organisation = n.organisation,
            successor = n.successor.as_deref().unwrap_or("-"),
            "{n}: its people are out of scope; the agreement may need amending"
        );
    }
    Ok(())
}

/// Journals which agreements name a closed organisation, when that
/// differs from what the journal last said (nothing while none ever did).
pub(crate) fn journal(
    snapshot: &Snapshot,
    run_id: i64,
    agreements: &Agreements,
) -> Result<(), StateError> {
    let now = agreements.names_closed();
    let last = last(snapshot)?.map(|(_, l)| l).unwrap_or_default();
    if now == last {
        return Ok(());
    }
    let reason = if now.is_empty() {
        "no agreement names a closed organisation".to_string()
    } else {
        now.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut r = Record::new(run_id, OP, "detected", &reason);
    r.detail = Some(serde_json::json!({ "names_closed": now }));
    snapshot.journal(&[r])
}

/// What the journal last said of agreements naming closed organisations:
/// the record's time and the list (empty: none does any more). `None`
/// when it never said anything.
pub fn last(snapshot: &Snapshot) -> Result<Option<(String, Vec<NamesClosed>)>, StateError> {
    let mut found = None;
    // The newest, through the partial index on these records (schema 9;
    // the operation written out, so that the index applies).
    let cond = "id = (SELECT max(id) FROM journal INDEXED BY journal_organisations \
                WHERE op = 'organisations')";
    snapshot.each_where(cond, &[], &mut |s| {
        let list = s
            .record
            .detail
            .as_ref()
            .and_then(|d| serde_json::from_value(d["names_closed"].clone()).ok())
            .unwrap_or_default();
        found = Some((s.at, list));
        Ok(())
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orgs(successor: bool) -> OrganisationsConfig {
        OrganisationsConfig {
            base_dn: "ou=Organisations,o=nhs".into(),
            filter: "(objectClass=nhsOrganisation)".into(),
            code_attribute: "nhsOdsCode".into(),
            status_attribute: "nhsOrgStatus".into(),
            closed_values: vec!["closed".into(), "merged".into()],
            successor_attribute: successor.then(|| "nhsSuccessorOdsCode".into()),
        }
    }

    fn entry(pairs: &[(&str, &[&str])]) -> SearchEntry {
        SearchEntry {
            dn: "nhsOdsCode=X,ou=Organisations,o=nhs".into(),
            attrs: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            bin_attrs: Default::default(),
        }
    }

    #[test]
    fn closed_values_any_case_and_successors_as_ods_codes() {
        let mut out = Statuses::default();
        let o = orgs(true);
        judge(
            &o,
            &entry(&[
                ("nhsodscode", &["rxx"]),
                ("NHSORGSTATUS", &["Closed"]),
                ("nhsSuccessorOdsCode", &["rxy"]),
            ]),
            &mut out,
        );
        judge(
            &o,
            &entry(&[("nhsOdsCode", &["RA1"]), ("nhsOrgStatus", &["open"])]),
            &mut out,
        );
        judge(
            &o,
            &entry(&[
                ("nhsOdsCode", &["RA2"]),
                ("nhsOrgStatus", &["open", " MERGED "]),
            ]),
            &mut out,
        );
        judge(&o, &entry(&[("nhsOdsCode", &["RA3"])]), &mut out);
        assert_eq!(out.closed.get("RXX"), Some(&Some("RXY".to_string())));
        assert_eq!(out.closed.get("RA2"), Some(&None));
        assert!(!out.closed.contains_key("RA1") && !out.closed.contains_key("RA3"));
        assert!(out.skipped.is_empty());
    }

    #[test]
    fn hostile_entries_are_skipped_and_never_quoted() {
        let mut out = Statuses::default();
        let o = orgs(true);
        judge(
            &o,
            &entry(&[("nhsOdsCode", &["*)(x=1"]), ("nhsOrgStatus", &["closed"])]),
            &mut out,
        );
        judge(
            &o,
            &entry(&[
                ("nhsOdsCode", &["RA1", "RA2"]),
                ("nhsOrgStatus", &["closed"]),
            ]),
            &mut out,
        );
        judge(
            &o,
            &entry(&[
                ("nhsOdsCode", &["RB1"]),
                ("nhsOrgStatus", &["closed"]),
                ("nhsSuccessorOdsCode", &["\u{1b}[2Jevil"]),
            ]),
            &mut out,
        );
        assert_eq!(out.closed.len(), 1);
        assert_eq!(out.closed.get("RB1"), Some(&None));
        assert_eq!(out.skipped.len(), 3, "{:?}", out.skipped);
        assert!(out
            .skipped
            .iter()
            .all(|s| !s.contains("evil") && !s.contains("x=1")));
        // Without a successor attribute configured, none is taken.
        let mut out = Statuses::default();
        judge(
            &orgs(false),
            &entry(&[
                ("nhsOdsCode", &["RXX"]),
                ("nhsOrgStatus", &["closed"]),
                ("nhsSuccessorOdsCode", &["RXY"]),
            ]),
            &mut out,
        );
        assert_eq!(out.closed.get("RXX"), Some(&None));
    }

    #[test]
    fn the_last_organisations_record_is_found_through_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshot::open(dir.path()).unwrap();
        assert_eq!(last(&s).unwrap(), None);
        let record = |run, names: serde_json::Value| {
            let mut r = Record::new(run, OP, "detected", "closed");
            r.detail = Some(serde_json::json!({ "names_closed": names }));
            r
        };
        s.journal(&[
            record(
                1,
                serde_json::json!([{"agreement": "DSA-1", "organisation": "RX1"}]),
            ),
            Record::new(1, "modify", "applied", "x"),
            record(2, serde_json::json!([])),
            Record::new(2, "modify", "applied", "x"),
        ])
        .unwrap();
        let (_, list) = last(&s).unwrap().unwrap();
        assert!(list.is_empty(), "the newest record: none named any more");
        // The index is there after a migration from schema 8 too (step 9
        // runs again harmlessly on a database that has it).
        s.conn
            .execute_batch("DROP INDEX journal_organisations; PRAGMA user_version = 8;")
            .unwrap();
        drop(s);
        let s = Snapshot::open(dir.path()).unwrap();
        assert!(last(&s).unwrap().is_some());
        s.conn.execute_batch(crate::state::SCHEMA_V9).unwrap();
    }
}
