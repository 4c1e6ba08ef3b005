//! What `absync check` finds, as a list of [`Finding`]s with a severity,
//! and the checks of the input files against each other (pure: config,
//! mapping and agreements as loaded, the day in the agreements). The
//! checks of the servers are the command's (`commands/check.rs`); they
//! add findings of the same kind. A new check is a function that pushes
//! findings.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::agreements::Agreement;
use crate::config::SourceConfig;
use crate::engine::expiry::Ending;
use crate::engine::Inputs;

/// How bad a finding is. `check` exits 2 when any is fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Checked and fine.
    Ok,
    /// Works, but probably not as meant, or it will bite soon.
    Warning,
    /// A run would fail, copy nothing, or delete what it should not.
    Fatal,
}

/// One thing `check` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// What was checked: `config`, `mapping`, `agreements`, `source`,
    /// `target`, ...
    pub check: String,
    /// What it was checked on: a file, a URL, a DN, an agreement.
    pub subject: String,
    pub detail: String,
}

impl Finding {
    pub fn new(severity: Severity, check: &str, subject: &str, detail: impl Into<String>) -> Self {
        Finding {
            severity,
            check: check.into(),
            subject: subject.into(),
            detail: detail.into(),
        }
    }
    pub fn ok(check: &str, subject: &str, detail: impl Into<String>) -> Self {
        Finding::new(Severity::Ok, check, subject, detail)
    }
    pub fn warning(check: &str, subject: &str, detail: impl Into<String>) -> Self {
        Finding::new(Severity::Warning, check, subject, detail)
    }
    pub fn fatal(check: &str, subject: &str, detail: impl Into<String>) -> Self {
        Finding::new(Severity::Fatal, check, subject, detail)
    }
}

/// The worst severity among `findings` (`Ok` when there are none).
pub fn worst(findings: &[Finding]) -> Severity {
    findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::Ok)
}

/// The input files checked against each other: the agreements (none in
/// force, no organisations, shared organisations, endings), and what the
/// agreements allow against what the mapping reads. `endings` are the
/// agreements ending soon or ended ([`crate::engine::expiry::ending`]).
pub fn inputs(
    source: &SourceConfig,
    inputs: &Inputs,
    file: &str,
    endings: &[Ending],
) -> Vec<Finding> {
    let mut out = Vec::new();
    agreements(inputs, file, &mut out);
    shared_organisations(&inputs.agreements.all, file, &mut out);
    for e in endings {
        out.push(Finding::warning("agreements", &e.id, e.text()));
    }
    allowed_but_unread(source, inputs, &mut out);
    read_but_not_allowed(source, inputs, &mut out);
    out
}

/// The agreements file holds agreements, each names organisations and
/// attributes, and one is in force today.
fn agreements(inputs: &Inputs, file: &str, out: &mut Vec<Finding>) {
    let a = &inputs.agreements;
    if a.all.is_empty() {
        out.push(Finding::fatal(
            "agreements",
            file,
            "the file holds no [[agreement]]: nothing may be copied, and a run deletes every \
             contact absync holds",
        ));
        return;
    }
    for ag in &a.all {
        if ag.organisations.is_empty() {
            out.push(Finding::fatal(
                "agreements",
                &ag.id,
                "names no organisations (organisations = []): it covers nobody",
            ));
        }
        if ag.attributes.is_empty() {
            out.push(Finding::warning(
                "agreements",
                &ag.id,
                "allows no attributes (attributes = []): its contacts get no values",
            ));
        }
    }
    let in_force: Vec<&str> = a.in_force().map(|g| g.id.as_str()).collect();
    if in_force.is_empty() {
        out.push(Finding::fatal(
            "agreements",
            file,
            format!(
                "no agreement is in force today ({}): a run copies nothing and deletes every \
                 contact absync holds",
                a.day
            ),
        ));
    } else {
        out.push(Finding::ok(
            "agreements",
            file,
            format!(
                "{} in force today: {}; {} organisations",
                in_force.len(),
                in_force.join(", "),
                a.grants().len()
            ),
        ));
    }
}

/// An organisation named by two agreements whose periods overlap: it gets
/// the union of their attributes and stays until the last one ends, which
/// may not be what either agreement says. (A renewal that starts when the
/// old one ends does not overlap.)
fn shared_organisations(all: &[Agreement], file: &str, out: &mut Vec<Finding>) {
    let mut by_org: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            if a.valid_from > b.valid_until || b.valid_from > a.valid_until {
                continue;
            }
            for org in a.organisations.intersection(&b.organisations) {
                let ids = by_org.entry(org).or_default();
                ids.insert(&a.id);
                ids.insert(&b.id);
            }
        }
    }
    for (org, ids) in by_org {
        let ids: Vec<&str> = ids.into_iter().collect();
        out.push(Finding::warning(
            "agreements",
            file,
            format!(
                "{org} is named by {} at the same time: it gets the union of their attributes \
                 and stays until the last of them ends",
                ids.join(" and ")
            ),
        ));
    }
}

/// The source attributes a run reads whatever the mapping says.
fn always_read(source: &SourceConfig) -> BTreeSet<String> {
    [
        &source.anchor_attribute,
        &source.org_attribute,
        &source.status_attribute,
    ]
    .into_iter()
    .map(|a| a.to_lowercase())
    .collect()
}

/// Attributes an agreement allows that the mapping never reads (a typo
/// such as `"mobil"` silently stops `mobile` from flowing).
fn allowed_but_unread(source: &SourceConfig, inputs: &Inputs, out: &mut Vec<Finding>) {
    let read: BTreeSet<String> = inputs
        .mapping
        .source_attributes()
        .into_iter()
        .map(|a| a.to_lowercase())
        .chain(always_read(source))
        .collect();
    for a in &inputs.agreements.all {
        for attr in a.attributes.difference(&read) {
            let guess = closest(attr, &read)
                .map(|g| format!(" (a typo for {g}?)"))
                .unwrap_or_default();
            out.push(Finding::warning(
                "agreements",
                &a.id,
                format!("allows {attr}, which the mapping never reads{guess}"),
            ));
        }
    }
}

/// Source attributes the mapping reads that no agreement in force allows:
/// the target attributes made from them never get a value.
fn read_but_not_allowed(source: &SourceConfig, inputs: &Inputs, out: &mut Vec<Finding>) {
    let allowed = inputs.agreements.allowed_attributes();
    if allowed.is_empty() {
        return; // no agreement in force: already fatal
    }
    let always = always_read(source);
    let missing: Vec<String> = inputs
        .mapping
        .source_attributes()
        .into_iter()
        .map(|a| a.to_lowercase())
        .filter(|a| a != "anchor" && !allowed.contains(a) && !always.contains(a))
        .collect();
    if !missing.is_empty() {
        out.push(Finding::warning(
            "mapping",
            "agreements in force",
            format!(
                "reads {}, which no agreement in force allows: what the mapping makes of \
                 them never gets a value",
                missing.join(", ")
            ),
        ));
    }
}

/// The name in `names` closest to `word` by at most two edits, if any.
fn closest<'a>(word: &str, names: &'a BTreeSet<String>) -> Option<&'a str> {
    names
        .iter()
        .map(|n| (strsim::levenshtein(word, n), n))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| n.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreements::Agreements;
    use crate::engine::map::Mapping;
    use time::macros::date;

    const MAPPING: &str = r#"
object_class = ["top", "person", "organizationalPerson", "contact"]
[rdn]
attribute = "cn"
first_of = ["{givenName} {sn}", "{cn}"]
[attributes.sn]
copy = "sn"
[attributes.mobile]
copy = "mobile"
"#;

    fn source() -> SourceConfig {
        SourceConfig {
            endpoint: crate::ldap::Endpoint {
                urls: vec!["ldap://127.0.0.1".into()],
                bind_dn: "cn=x".into(),
                password: crate::secret::Secret::new(String::new()),
                ca_file: None,
                transport: crate::ldap::Transport::Plain,
                timeout: std::time::Duration::from_secs(1),
                failback_after: crate::config::DEFAULT_FAILBACK,
                health: Default::default(),
            },
            base_dn: "o=nhs".into(),
            filter: "(objectClass=*)".into(),
            org_attribute: "nhsOdsCode".into(),
            anchor_attribute: "entryUUID".into(),
            page_size: 10,
            organisations: None,
            status_attribute: "nhsEntryStatus".into(),
            leaver_values: vec![],
            delta: crate::config::DeltaMode::Off,
        }
    }

    fn findings(agreements: &str) -> Vec<Finding> {
        let dir = tempfile::tempdir().unwrap();
        let (m, a) = (dir.path().join("m.toml"), dir.path().join("a.toml"));
        std::fs::write(&m, MAPPING).unwrap();
        std::fs::write(&a, agreements).unwrap();
        let inputs = Inputs {
            mapping: Mapping::load(&m).unwrap(),
            agreements: Agreements::load(&a, date!(2026 - 03 - 01)).unwrap(),
        };
        let endings = crate::engine::expiry::ending(&inputs.agreements, 30);
        inputs_findings(&inputs, &endings)
    }

    fn inputs_findings(i: &Inputs, endings: &[Ending]) -> Vec<Finding> {
        inputs(&source(), i, "a.toml", endings)
    }

    fn agreement(id: &str, orgs: &str, attrs: &str, until: &str) -> String {
        format!(
            "[[agreement]]\nid = \"{id}\"\ntitle = \"t\"\norganisations = [{orgs}]\n\
             attributes = [{attrs}]\nvalid_from = 2026-01-01\nvalid_until = {until}\n"
        )
    }

    fn says(f: &[Finding], severity: Severity, text: &str) -> bool {
        f.iter()
            .any(|f| f.severity == severity && f.detail.contains(text))
    }

    #[test]
    fn a_good_file_has_no_warning() {
        let f = findings(&agreement(
            "A",
            "\"RX1\"",
            "\"givenName\", \"sn\", \"cn\", \"mobile\"",
            "2026-12-31",
        ));
        assert_eq!(worst(&f), Severity::Ok, "{f:#?}");
    }

    #[test]
    fn each_bad_agreements_file_is_named_in_one_pass() {
        let f = findings("");
        assert!(
            says(&f, Severity::Fatal, "holds no [[agreement]]"),
            "{f:#?}"
        );
        let all = [
            agreement("EMPTY", "", "\"sn\"", "2026-12-31"),
            agreement("TYPO", "\"RX1\"", "\"sn\", \"mobil\"", "2026-12-31"),
            agreement("TWICE", "\"RX1\"", "\"givenName\", \"cn\"", "2026-12-31"),
            agreement("SOON", "\"RX2\"", "\"sn\"", "2026-03-20"),
            agreement("GONE", "\"RX3\"", "\"sn\"", "2026-02-28"),
        ]
        .concat();
        let f = findings(&all);
        assert_eq!(worst(&f), Severity::Fatal);
        assert!(
            says(&f, Severity::Fatal, "names no organisations"),
            "{f:#?}"
        );
        assert!(
            says(
                &f,
                Severity::Warning,
                "allows mobil, which the mapping never reads (a typo for mobile?)"
            ),
            "{f:#?}"
        );
        assert!(
            says(&f, Severity::Warning, "RX1 is named by TWICE and TYPO"),
            "{f:#?}"
        );
        assert!(
            says(
                &f,
                Severity::Warning,
                "agreement SOON ends 2026-03-20 (in 19 days)"
            ),
            "{f:#?}"
        );
        assert!(
            says(&f, Severity::Warning, "agreement GONE ended 2026-02-28"),
            "{f:#?}"
        );
    }

    #[test]
    fn no_agreement_in_force_is_fatal_and_unallowed_mapping_reads_warn() {
        let f = findings(&agreement("GONE", "\"RX1\"", "\"sn\"", "2026-02-28"));
        assert!(
            says(
                &f,
                Severity::Fatal,
                "no agreement is in force today (2026-03-01)"
            ),
            "{f:#?}"
        );
        let f = findings(&agreement("A", "\"RX1\"", "\"sn\"", "2026-12-31"));
        assert!(
            says(
                &f,
                Severity::Warning,
                "reads cn, givenname, mobile, which no agreement in force allows"
            ),
            "{f:#?}"
        );
    }
}
