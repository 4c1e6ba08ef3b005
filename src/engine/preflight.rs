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
use crate::ldap::{Endpoint, LdapError, Transport};

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

/// One server of a side that bound (`check` tries each one on its own):
/// as whom, over what (the host name its certificate was verified for),
/// and what the server calls itself (`name`: an AD DC's host name and
/// `dsServiceName`, when its root DSE gives them).
pub fn server_reached(side: &str, ep: &Endpoint, url: &str, name: Option<&str>) -> Finding {
    let host = crate::ldap::url_host(url);
    let over = match ep.transport {
        Transport::Ldaps => format!("LDAPS, certificate verified for {host}"),
        Transport::StartTls => format!("StartTLS, certificate verified for {host}"),
        Transport::Plain => "plain text, allowed on loopback".to_string(),
    };
    let mut detail = format!("bound as {} ({over})", ep.bind_dn);
    if let Some(name) = name {
        detail.push_str("; ");
        detail.push_str(name);
    }
    Finding::ok(side, url, detail)
}

/// One server of a side that failed, `index` in its list; `first_working`:
/// the first server of the side (in the configured order) that bound, if
/// any. A side is fatal only when no server works: a server that is down
/// while another answers is a warning (a patch night does not fail
/// `check`). A server whose certificate does not verify is skipped by a
/// run, so it is a warning naming the fix. A failure a run does not fail
/// over from (a refused password: the account is the same everywhere; a
/// malformed answer) ends every run that reaches the server before one
/// that works: fatal when it comes first, else a warning.
pub fn server_failed(
    side: &str,
    url: &str,
    err: &LdapError,
    index: usize,
    first_working: Option<usize>,
) -> Finding {
    let Some(working) = first_working else {
        return Finding::fatal(side, url, err.to_string());
    };
    if !err.fails_over() {
        let why = match err {
            LdapError::Bind { .. } => {
                " (the account is the same on every server: a refused password is not \
                 tried elsewhere)"
            }
            _ => "",
        };
        let stops = format!("a run that reaches this server stops there{why}");
        return if index < working {
            Finding::fatal(
                side,
                url,
                format!("{err}; {stops}, and it comes before the first server that works"),
            )
        } else {
            Finding::warning(side, url, format!("{err}; {stops}"))
        };
    }
    let detail = match err {
        LdapError::Tls { .. } => format!(
            "{err}; a run skips this server until its certificate verifies: name it in urls by \
             a host name its certificate carries, or fix the certificate or ca_file"
        ),
        LdapError::Connect { .. } | LdapError::Timeout { .. } => {
            format!("down: {err}; a run uses the other servers meanwhile")
        }
        _ => format!("{err}; a run uses the other servers meanwhile"),
    };
    Finding::warning(side, url, detail)
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

    fn down(url: &str) -> LdapError {
        LdapError::Connect {
            url: url.into(),
            detail: "connection refused (is the server running and the port right?)".into(),
        }
    }

    #[test]
    fn a_server_down_while_another_works_is_a_warning_and_fatal_only_when_none_works() {
        let e = down("ldaps://dc2:636");
        let f = server_failed("target", "ldaps://dc2:636", &e, 1, Some(0));
        assert_eq!(f.severity, Severity::Warning, "{f:?}");
        assert!(f
            .detail
            .starts_with("down: ldaps://dc2:636: cannot connect: connection refused"));
        assert!(
            f.detail.ends_with("a run uses the other servers meanwhile"),
            "{f:?}"
        );
        // Before the one that works: still only a warning (a run fails over).
        let f = server_failed("target", "ldaps://dc2:636", &e, 0, Some(1));
        assert_eq!(f.severity, Severity::Warning, "{f:?}");
        // None works: fatal, worded as a run's error.
        let f = server_failed("target", "ldaps://dc2:636", &e, 1, None);
        assert_eq!(f.severity, Severity::Fatal);
        assert_eq!(f.detail, e.to_string());
    }

    #[test]
    fn a_certificate_for_another_name_is_a_warning_naming_the_fix() {
        let e = LdapError::Tls {
            url: "ldaps://10.0.0.2:636".into(),
            detail: "invalid peer certificate: NotValidForName".into(),
            hint: " (the certificate does not name the host in the URL)".into(),
        };
        let f = server_failed("source", "ldaps://10.0.0.2:636", &e, 1, Some(0));
        assert_eq!(f.severity, Severity::Warning);
        assert!(
            f.detail.contains("does not name the host in the URL"),
            "{f:?}"
        );
        assert!(
            f.detail
                .contains("name it in urls by a host name its certificate carries"),
            "{f:?}"
        );
    }

    #[test]
    fn a_refused_password_before_the_first_working_server_is_fatal() {
        let e = LdapError::Bind {
            url: "ldaps://dc1:636".into(),
            dn: "CN=svc".into(),
            rc: 49,
            text: "invalid credentials".into(),
        };
        // A run tries dc1 first and stops there: every run fails.
        let f = server_failed("target", "ldaps://dc1:636", &e, 0, Some(1));
        assert_eq!(f.severity, Severity::Fatal, "{f:?}");
        assert!(
            f.detail
                .contains("a run that reaches this server stops there"),
            "{f:?}"
        );
        assert!(
            f.detail
                .contains("comes before the first server that works"),
            "{f:?}"
        );
        // After a working one: a run reaches it only when failing over.
        let f = server_failed("target", "ldaps://dc1:636", &e, 2, Some(1));
        assert_eq!(f.severity, Severity::Warning, "{f:?}");
        assert!(
            f.detail.contains("refused password is not tried elsewhere"),
            "{f:?}"
        );
    }

    #[test]
    fn a_server_reached_says_as_whom_over_what_and_which_server() {
        let mut ep = source().endpoint;
        let f = server_reached("source", &ep, "ldap://127.0.0.1", None);
        assert_eq!(f.severity, Severity::Ok);
        assert_eq!(f.detail, "bound as cn=x (plain text, allowed on loopback)");
        ep.transport = crate::ldap::Transport::Ldaps;
        let f = server_reached(
            "target",
            &ep,
            "ldaps://dc1.example.org:636",
            Some("DC dc1.example.org"),
        );
        assert_eq!(
            f.detail,
            "bound as cn=x (LDAPS, certificate verified for dc1.example.org); DC dc1.example.org"
        );
        assert_eq!(f.subject, "ldaps://dc1.example.org:636");
    }
}
