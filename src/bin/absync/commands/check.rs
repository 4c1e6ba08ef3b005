//! `absync check`: every problem in one pass. The input files and how they
//! fit together ([`absync::engine::preflight`]); then, unless `--offline`,
//! every server of each side on its own (bind, the host name its
//! certificate was verified for, what its root DSE names it), and on the
//! first of a side that works: for the source the base and a sample of
//! entries, for the target the containers and the schema; each side
//! checked whatever the other found. Exit 2 when any finding is fatal,
//! else 0 (warnings printed): a side is fatal only when none of its
//! servers works (see [`server_failed`]).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use absync::config::Config;
use absync::engine::expiry;
use absync::engine::preflight::{self, Finding, Severity};
use absync::engine::{self, Inputs};
use absync::ldap::{Conn, Endpoint, LdapError, Transport};
use absync::state::{ReadFrom, Snapshot, StateError};
use absync::text::Shown;
use anyhow::Context;

use crate::cli::CheckFormat;
use crate::out::outln;

/// How many source entries the sample reads.
const SAMPLE: usize = 20;

/// Checks everything it can, prints the findings (a line each, fatal ones
/// on stderr; or one JSON object) and exits 2 when one is fatal.
pub async fn run(file: &Path, offline: bool, format: CheckFormat) -> anyhow::Result<ExitCode> {
    let findings = gather(file, offline).await;
    print(&findings, format)?;
    Ok(match preflight::worst(&findings) {
        Severity::Fatal => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}

async fn gather(file: &Path, offline: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let subject = file.display().to_string();
    let cfg = match Config::load_offline(file) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::fatal("config", &subject, e.to_string()));
            return out;
        }
    };
    let cfg_subject = cfg.file.display().to_string();
    out.push(Finding::ok("config", &cfg_subject, "ok"));
    for w in &cfg.warnings {
        out.push(Finding::warning("config", &cfg_subject, w.clone()));
    }
    if let Some(inputs) = inputs(&cfg, &mut out) {
        let mut endings = expiry::ending(&inputs.agreements, cfg.agreements_warn_days);
        count_contacts(&cfg, &mut endings, &mut out);
        let file = cfg.agreements_file.display().to_string();
        out.extend(preflight::inputs(&cfg.source, &inputs, &file, &endings));
        out.push(Finding::ok(
            "retention",
            "journal.retention",
            retention(&cfg),
        ));
        if !offline {
            servers(&cfg.file, &inputs, &mut out).await;
        }
    } else if !offline {
        out.push(Finding::warning(
            "servers",
            &cfg_subject,
            "not checked: the input files above must be put right first",
        ));
    }
    out
}

/// The mapping and the agreements, each checked on its own (both are
/// reported), then together with the configuration.
fn inputs(cfg: &Config, out: &mut Vec<Finding>) -> Option<Inputs> {
    let mapping_file = cfg.mapping_file.display().to_string();
    let agreements_file = cfg.agreements_file.display().to_string();
    let mapping = engine::map::Mapping::load_for(&cfg.mapping_file, &cfg.target.anchor_attribute);
    let agreements =
        absync::agreements::Agreements::load(&cfg.agreements_file, absync::agreements::today());
    match &mapping {
        Ok(m) => out.push(Finding::ok(
            "mapping",
            &mapping_file,
            format!("ok ({} attributes)", m.rules.len()),
        )),
        Err(e) => out.push(Finding::fatal("mapping", &mapping_file, e.to_string())),
    }
    if let Err(e) = &agreements {
        out.push(Finding::fatal(
            "agreements",
            &agreements_file,
            e.to_string(),
        ));
    }
    let (Ok(mapping), Ok(agreements)) = (mapping, agreements) else {
        return None;
    };
    let inputs = Inputs {
        mapping,
        agreements,
    };
    // The check a run makes across the files, on what was just loaded.
    if let Err(e) = engine::check_hide_method(cfg, &inputs) {
        out.push(Finding::fatal(
            "config",
            &cfg.file.display().to_string(),
            e.to_string(),
        ));
    }
    Some(inputs)
}

/// How many contacts each ending's end deletes, from the state (read
/// only) when there is one.
fn count_contacts(cfg: &Config, endings: &mut [expiry::Ending], out: &mut Vec<Finding>) {
    if endings.is_empty() {
        return;
    }
    let counted = Snapshot::open_read_only(&cfg.state_dir, ReadFrom::Live)
        .and_then(|s| expiry::count(endings, &s));
    match counted {
        Ok(()) | Err(StateError::Missing { .. }) => {}
        Err(e) => out.push(Finding::warning(
            "state",
            &cfg.state_dir.display().to_string(),
            format!("cannot count the contacts of ending agreements: {e}"),
        )),
    }
}

/// The servers, with the passwords read: the source, then the target; a
/// failure on one does not stop the other's checks.
async fn servers(file: &Path, inputs: &Inputs, out: &mut Vec<Finding>) {
    let cfg = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::fatal(
                "config",
                &file.display().to_string(),
                format!("{e} (servers not checked)"),
            ));
            return;
        }
    };
    source(&cfg, inputs, out).await;
    target(&cfg, inputs, out).await;
    if let Some(gc) = &cfg.target.global_catalog {
        match global_catalog(gc)
            .await
            .with_context(|| format!("global catalog {}", gc.url()))
        {
            Ok(detail) => out.push(Finding::ok("catalog", gc.url(), detail)),
            Err(e) => out.push(Finding::fatal("catalog", gc.url(), format!("{e:#}"))),
        }
    }
}

/// Every server of a side, all at once, each on its own
/// (`Conn::connect_to`, not a run's failover): a finding per server, in
/// the configured order ([`server_reached`], [`server_failed`]), and a connection to the first that
/// works, for the checks that need one.
async fn reach(side: &str, ep: &Endpoint, out: &mut Vec<Finding>) -> Option<Conn> {
    let tries = ep.urls.iter().map(|url| async move {
        let mut conn = Conn::connect_to(ep, url).await?;
        let name = server_name(&mut conn).await;
        Ok::<_, LdapError>((conn, name))
    });
    let results = futures_util::future::join_all(tries).await;
    let first = results.iter().position(Result::is_ok);
    let mut kept = None;
    for (i, (url, result)) in ep.urls.iter().zip(results).enumerate() {
        match result {
            Ok((conn, name)) => {
                out.push(server_reached(side, ep, url, name.as_deref()));
                match kept {
                    None => kept = Some(conn),
                    Some(_) => conn.unbind().await,
                }
            }
            Err(e) => out.push(server_failed(side, url, &e, i, first)),
        }
    }
    kept
}

/// What a server's root DSE says it is: an AD DC's host name and
/// `dsServiceName`, or a vendor's name and version (OpenLDAP gives none).
async fn server_name(conn: &mut Conn) -> Option<String> {
    let root = conn.read("", &ROOT_NAMES).await.ok()??;
    root_name(&root)
}

/// The root DSE attributes that name a server.
const ROOT_NAMES: [&str; 4] = [
    "dnsHostName",
    "dsServiceName",
    "vendorName",
    "vendorVersion",
];

fn root_name(root: &ldap3::SearchEntry) -> Option<String> {
    let get = |a: &str| absync::ldap::first_value(root, a).filter(|v| !v.trim().is_empty());
    match (get("dnsHostName"), get("dsServiceName")) {
        (Some(host), Some(service)) => return Some(format!("DC {host} ({service})")),
        (Some(host), None) => return Some(format!("server {host}")),
        (None, Some(service)) => return Some(format!("DC {service}")),
        (None, None) => {}
    }
    let vendor: Vec<String> = [get("vendorName"), get("vendorVersion")]
        .into_iter()
        .flatten()
        .collect();
    (!vendor.is_empty()).then(|| vendor.join(" "))
}

/// One server of a side that bound (`check` tries each one on its own):
/// as whom, over what (the host name its certificate was verified for),
/// and what the server calls itself (`name`: an AD DC's host name and
/// `dsServiceName`, when its root DSE gives them).
fn server_reached(side: &str, ep: &Endpoint, url: &str, name: Option<&str>) -> Finding {
    let host = absync::ldap::url_host(url);
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
fn server_failed(
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

/// The source: each server, then on the first that works the base and a
/// sample of entries.
async fn source(cfg: &Config, inputs: &Inputs, out: &mut Vec<Finding>) {
    let Some(mut conn) = reach("source", &cfg.source.endpoint, out).await else {
        return;
    };
    let base = &cfg.source.base_dn;
    match conn.read(base, &["objectClass"]).await {
        Ok(Some(_)) => {
            out.push(Finding::ok("source base", base, "exists"));
            if let Err(e) = sample(&mut conn, cfg, inputs, out).await {
                out.push(Finding::fatal("source", base, e.to_string()));
            }
        }
        Ok(None) => out.push(Finding::fatal(
            "source base",
            base,
            "[source] base_dn does not exist on the source: a run reads nothing",
        )),
        Err(e) => out.push(Finding::fatal("source base", base, e.to_string())),
    }
    if let Err(e) = organisations(cfg, inputs, &mut conn, out).await {
        out.push(Finding::fatal("orgs", base, format!("{e:#}")));
    }
    if let Some(domains) = &cfg.mail_domains {
        if let Err(e) = mail_domains(&mut conn, cfg, inputs, domains, out).await {
            out.push(Finding::warning("mail", base, format!("{e:#}")));
        }
    }
    conn.unbind().await;
}

/// With `[source.organisations]`: the status of the organisations the
/// agreements name; a warning for each agreement naming a closed one.
async fn organisations(
    cfg: &Config,
    inputs: &Inputs,
    source: &mut Conn,
    out: &mut Vec<Finding>,
) -> anyhow::Result<()> {
    let Some(orgs) = &cfg.source.organisations else {
        return Ok(());
    };
    let named = inputs.agreements.named();
    let statuses = engine::organisations::read(source, orgs, &named, cfg.source.page_size)
        .await
        .with_context(|| format!("reading the organisations under {}", orgs.base_dn))?;
    out.push(Finding::ok(
        "orgs",
        &orgs.base_dn,
        format!(
            "{} of the {} organisations the agreements name found; {} closed",
            statuses.read,
            named.len(),
            statuses.closed.len()
        ),
    ));
    for why in &statuses.skipped {
        out.push(Finding::warning("orgs", &orgs.base_dn, why.clone()));
    }
    let mut agreements = inputs.agreements.clone();
    agreements.closed = statuses.closed;
    for n in agreements.names_closed() {
        out.push(Finding::warning(
            "agreement",
            &cfg.agreements_file.display().to_string(),
            format!("{n}: its people are out of scope; the agreement may need amending"),
        ));
    }
    Ok(())
}

/// With `[mail_domains]`: how many source entries in scope have an
/// address outside the list (a floor: see the README).
async fn mail_domains(
    source: &mut Conn,
    cfg: &Config,
    inputs: &Inputs,
    domains: &absync::maildomains::MailDomains,
    out: &mut Vec<Finding>,
) -> anyhow::Result<()> {
    use absync::maildomains::Outside;
    let s = engine::pull::survey::mail_domains(source, cfg, inputs, domains)
        .await
        .context("counting the addresses outside [mail_domains]")?;
    let mut what = Vec::new();
    if s.dropped > 0 || domains.outside == Outside::Drop {
        what.push(format!("{} would be written without it", s.dropped));
    }
    if s.refused > 0 || domains.outside == Outside::Refuse {
        what.push(format!("{} would be refused", s.refused));
    }
    out.push(Finding::ok(
        "mail",
        &domains.allowed().join(", "),
        format!(
            "{} source entries in scope have an address outside these domains \
             (outside = \"{}\": {})",
            s.dropped + s.refused,
            domains.outside.as_str(),
            what.join(", ")
        ),
    ));
    Ok(())
}

/// A sample of the entries the source filter selects carries the anchor
/// and the organisation attribute; some entry of the organisations in
/// force is there.
async fn sample(
    conn: &mut Conn,
    cfg: &Config,
    inputs: &Inputs,
    out: &mut Vec<Finding>,
) -> Result<(), absync::ldap::LdapError> {
    let s = &cfg.source;
    let attrs = vec![s.anchor_attribute.clone(), s.org_attribute.clone()];
    let entries = first_entries(conn, &s.base_dn, &s.filter, attrs, SAMPLE).await?;
    let n = entries.len();
    if n == 0 {
        out.push(Finding::warning(
            "source",
            &s.base_dn,
            format!(
                "no entry matches [source] filter {}: a run copies nothing",
                s.filter
            ),
        ));
        return Ok(());
    }
    let mut fatal = false;
    for (key, attr) in [
        ("anchor_attribute", &s.anchor_attribute),
        ("org_attribute", &s.org_attribute),
    ] {
        let lacking = entries
            .iter()
            .filter(|e| absync::ldap::first_value(e, attr).is_none())
            .count();
        let what = format!("{attr} ([source] {key})");
        let finding = match lacking {
            0 => Finding::ok(
                "source",
                &s.base_dn,
                format!("{n} sampled entries carry {what}"),
            ),
            l if l == n => {
                fatal = true;
                Finding::fatal(
                    "source",
                    &s.base_dn,
                    format!("none of {n} sampled entries carries {what}: a run holds nobody"),
                )
            }
            l => Finding::warning(
                "source",
                &s.base_dn,
                format!("{l} of {n} sampled entries lack {what}: a run rejects them"),
            ),
        };
        out.push(finding);
    }
    if let (false, Some(filter)) = (fatal, engine::pull::query::filter(s, &inputs.agreements)) {
        let any = first_entries(
            conn,
            &s.base_dn,
            &filter,
            vec![s.anchor_attribute.clone()],
            1,
        )
        .await?;
        if any.is_empty() {
            out.push(Finding::warning(
                "source",
                &s.base_dn,
                "no entry of the organisations in force matches: a run copies nothing",
            ));
        }
    }
    Ok(())
}

/// At most `max` entries of a search (the rest is not read).
async fn first_entries(
    conn: &mut Conn,
    base: &str,
    filter: &str,
    attrs: Vec<String>,
    max: usize,
) -> Result<Vec<ldap3::SearchEntry>, absync::ldap::LdapError> {
    let page = u32::try_from(max).unwrap_or(u32::MAX);
    let mut search = conn
        .paged_search(base, ldap3::Scope::Subtree, filter, attrs, page)
        .await?;
    let mut out = Vec::new();
    while out.len() < max {
        match search.next().await? {
            Some(e) => out.push(e),
            None => break,
        }
    }
    Ok(out)
}

/// The target: each server, then on the first that works each container
/// and the schema.
async fn target(cfg: &Config, inputs: &Inputs, out: &mut Vec<Finding>) {
    let Some(mut conn) = reach("target", &cfg.target.endpoint, out).await else {
        return;
    };
    let class = inputs
        .mapping
        .object_class
        .last()
        .cloned()
        .unwrap_or_default();
    let mut containers = vec![("target OU", cfg.target.base_dn.clone())];
    containers.extend(cfg.safety.quarantine_ou.clone().map(|q| ("quarantine", q)));
    for (what, dn) in containers {
        out.push(match may_create(&mut conn, cfg, what, &dn, &class).await {
            Ok(()) => Finding::ok(what, &dn, format!("exists; {class} objects may be created")),
            Err(e) => Finding::fatal(what, &dn, format!("{e:#}")),
        });
    }
    out.push(match schema(&mut conn, cfg, inputs).await {
        Ok(f) => f,
        Err(e) => Finding::fatal("schema", conn.url(), format!("{e:#}")),
    });
    conn.unbind().await;
}

/// The target's schema (its subschema entry's attributeTypes) defines
/// every attribute the mapping writes, and the anchor attribute.
async fn schema(conn: &mut Conn, cfg: &Config, inputs: &Inputs) -> anyhow::Result<Finding> {
    let root = conn
        .read("", &["subschemaSubentry"])
        .await?
        .context("the root DSE cannot be read")?;
    let sub = absync::ldap::first_value(&root, "subschemaSubentry")
        .context("the root DSE names no subschemaSubentry")?;
    let entry = conn
        .read(&sub, &["attributeTypes"])
        .await?
        .with_context(|| format!("the subschema {sub} cannot be read"))?;
    let known = defined_names(&absync::ldap::values_of(&entry, "attributeTypes"));
    let m = &inputs.mapping;
    let mut written: Vec<String> = m.rules.iter().map(|r| r.target.clone()).collect();
    written.push(m.rdn_attribute.clone());
    written.extend(m.hide.iter().map(|(a, _)| a.clone()));
    written.push(cfg.target.anchor_attribute.clone());
    let missing: Vec<&str> = written
        .iter()
        .filter(|a| !known.contains(&a.to_lowercase()))
        .map(String::as_str)
        .collect();
    let url = conn.url();
    Ok(if missing.is_empty() {
        Finding::ok(
            "schema",
            url,
            format!(
                "defines the {} attributes the mapping writes",
                written.len()
            ),
        )
    } else {
        Finding::fatal(
            "schema",
            url,
            format!(
                "the target's schema ({sub}) does not define {}, which the mapping writes: \
                 every add would be refused",
                missing.join(", ")
            ),
        )
    })
}

/// The names (lower-case) in attribute type descriptions (RFC 4512):
/// `NAME 'cn'` or `NAME ( 'cn' 'commonName' )`.
fn defined_names(types: &[String]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for t in types {
        let Some((_, rest)) = t.split_once(" NAME ") else {
            continue;
        };
        let rest = rest.trim_start();
        let names = match rest.strip_prefix('(') {
            Some(list) => list.split(')').next().unwrap_or_default(),
            None => rest.split(' ').next().unwrap_or_default(),
        };
        out.extend(
            names
                .split('\'')
                .enumerate()
                .filter(|(i, n)| i % 2 == 1 && !n.is_empty())
                .map(|(_, n)| n.to_lowercase()),
        );
    }
    out
}

/// The global catalog accepts the target's account and answers a search of
/// the whole forest (base "", as the collision search asks; a domain
/// controller's ordinary port refuses that base).
async fn global_catalog(gc: &absync::ldap::Endpoint) -> anyhow::Result<String> {
    let mut conn = Conn::connect(gc).await?;
    let mut search = conn
        .paged_search(
            "",
            ldap3::Scope::Subtree,
            "(mail=absync-check.invalid)",
            vec!["mail".into()],
            1,
        )
        .await?;
    while search.next().await?.is_some() {}
    search.finish().await?;
    conn.unbind().await;
    Ok(format!(
        "bound as {}; answers searches of the whole forest",
        gc.bind_dn
    ))
}

/// The retention and the time before which a run now would prune records.
fn retention(cfg: &Config) -> String {
    let r = &cfg.journal_retention;
    let cut = r.before(time::OffsetDateTime::now_utc());
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    let mut line = format!(
        "{r}: a run now would prune the records from before {}",
        cut.format(&format).unwrap_or_default()
    );
    if let Some(dir) = &cfg.journal_archive_dir {
        line.push_str(&format!(", archived first in {}", dir.display()));
    }
    line
}

/// The container `dn` exists, and the bound account may create `class`
/// objects in it.
async fn may_create(
    target: &mut Conn,
    cfg: &Config,
    what: &str,
    dn: &str,
    class: &str,
) -> anyhow::Result<()> {
    // AD computes which classes the bound account may create under an
    // entry: no test write needed.
    let ou = target
        .read(dn, &["allowedChildClassesEffective"])
        .await?
        .with_context(|| format!("{what} {dn} does not exist"))?;
    let allowed = ou
        .attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("allowedChildClassesEffective"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    if !allowed.iter().any(|c| c.eq_ignore_ascii_case(class)) {
        anyhow::bail!(
            "{what} {dn}: {} may not create {class} objects there",
            cfg.target.endpoint.bind_dn
        );
    }
    Ok(())
}

/// Table: a line per finding on stdout (`WARNING:` before a warning), the
/// fatal ones on stderr, and a count at the end. JSON: one object, `ok`,
/// the counts, every finding with its severity, and `error` (the fatal
/// findings, joined; also on stderr).
fn print(findings: &[Finding], format: CheckFormat) -> anyhow::Result<()> {
    let fatal: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.severity == Severity::Fatal)
        .collect();
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    let line = |f: &Finding| {
        let tag = match f.severity {
            Severity::Ok => "",
            Severity::Warning => "WARNING: ",
            Severity::Fatal => "FATAL: ",
        };
        format!(
            "{:<11} {}: {tag}{}",
            f.check,
            Shown(&f.subject),
            Shown(&f.detail)
        )
    };
    match format {
        CheckFormat::Table => {
            for f in findings {
                match f.severity {
                    Severity::Fatal => eprintln!("{}", line(f)),
                    _ => outln!("{}", line(f))?,
                }
            }
            if !fatal.is_empty() || warnings > 0 {
                eprintln!(
                    "absync: check found {} fatal problem(s) and {warnings} warning(s)",
                    fatal.len()
                );
            }
        }
        CheckFormat::Json => {
            let error: Vec<String> = fatal.iter().map(|f| line(f)).collect();
            for e in &error {
                eprintln!("{e}");
            }
            let object = serde_json::json!({
                "ok": fatal.is_empty(),
                "fatal": fatal.len(),
                "warnings": warnings,
                "checks": findings,
                "error": (!error.is_empty()).then(|| error.join("; ")),
            });
            let mut out = crate::out::stdout();
            serde_json::to_writer_pretty(&mut out, &object)?;
            writeln!(out)?;
            out.flush()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_is_named_by_what_its_root_dse_says() {
        let entry = |attrs: &[(&str, &str)]| ldap3::SearchEntry {
            dn: String::new(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
            bin_attrs: Default::default(),
        };
        let dc = entry(&[
            ("dnsHostName", "dc1.sync.test"),
            ("dsServiceName", "CN=NTDS Settings,CN=DC1"),
        ]);
        assert_eq!(
            root_name(&dc).as_deref(),
            Some("DC dc1.sync.test (CN=NTDS Settings,CN=DC1)")
        );
        let vendor = entry(&[("vendorName", "Acme"), ("vendorVersion", "9.1")]);
        assert_eq!(root_name(&vendor).as_deref(), Some("Acme 9.1"));
        assert_eq!(root_name(&entry(&[("namingContexts", "o=nhs")])), None);
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
        let mut ep = Endpoint {
            urls: vec!["ldap://127.0.0.1".into()],
            bind_dn: "cn=x".into(),
            password: absync::secret::Secret::new(String::new()),
            ca_file: None,
            transport: Transport::Plain,
            timeout: std::time::Duration::from_secs(1),
            failback_after: absync::config::DEFAULT_FAILBACK,
            health: Default::default(),
        };
        let f = server_reached("source", &ep, "ldap://127.0.0.1", None);
        assert_eq!(f.severity, Severity::Ok);
        assert_eq!(f.detail, "bound as cn=x (plain text, allowed on loopback)");
        ep.transport = Transport::Ldaps;
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

    #[test]
    fn attribute_type_names_are_read_from_their_descriptions() {
        let types = [
            "( 2.5.4.3 NAME 'cn' SYNTAX '1.3.6.1.4.1.1466.115.121.1.15' SINGLE-VALUE )".to_string(),
            "( 2.5.4.4 NAME ( 'sn' 'surname' ) SUP name )".to_string(),
            "( 1.2.840.113556.1.2.13 NAME 'displayName' SYNTAX '1.3.6.1.4.1.1466.115.121.1.15' )"
                .to_string(),
        ];
        let names: Vec<String> = defined_names(&types).into_iter().collect();
        assert_eq!(names, ["cn", "displayname", "sn", "surname"]);
    }
}

/// `check --offline` on the files alone: no server, no password file.
#[cfg(test)]
mod offline {
    use super::*;
    use time::Duration;

    /// A configuration whose password files do not exist (offline reads
    /// none), the shipped mapping, and `agreements`.
    fn files(agreements: &str, extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let mapping = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/nhs-to-ad-contact.toml");
        std::fs::write(dir.path().join("agreements.toml"), agreements).unwrap();
        let config = dir.path().join("absync.toml");
        std::fs::write(
            &config,
            format!(
                "[source]\nurl = \"ldap://127.0.0.1:1\"\nallow_plaintext = true\n\
                 bind_dn = \"cn=r,o=nhs\"\npassword_file = \"no-such.pw\"\n\
                 base_dn = \"ou=People,o=nhs\"\n{extra}\n\
                 [target]\nurl = \"ldap://127.0.0.1:2\"\nallow_plaintext = true\n\
                 bind_dn = \"CN=svc,DC=x\"\npassword_file = \"no-such.pw\"\n\
                 base_dn = \"OU=NHS,DC=x\"\n\
                 [mapping]\nfile = \"{}\"\n[agreements]\nfile = \"agreements.toml\"\n\
                 [state]\ndir = \"state\"\n[safety]\ndelete_grace = \"0\"\n",
                mapping.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        (dir, config)
    }

    fn agreement(id: &str, orgs: &str, attrs: &str, until: i64) -> String {
        let today = absync::agreements::today();
        format!(
            "[[agreement]]\nid = \"{id}\"\ntitle = \"t\"\norganisations = [{orgs}]\n\
             attributes = [{attrs}]\nvalid_from = {}\nvalid_until = {}\n",
            today - Duration::days(400),
            today + Duration::days(until)
        )
    }

    const ATTRS: &str = "\"givenName\", \"sn\", \"cn\", \"displayName\", \"mail\", \"title\", \
        \"nhsWorkArea\", \"telephoneNumber\", \"mobile\", \"employeeNumber\", \"nhsJobRole\", \"uid\"";

    async fn check(agreements: &str, extra: &str) -> Vec<Finding> {
        let (_dir, config) = files(agreements, extra);
        gather(&config, true).await
    }

    fn has(f: &[Finding], severity: Severity, text: &str) -> bool {
        f.iter()
            .any(|f| f.severity == severity && f.detail.contains(text))
    }

    #[tokio::test]
    async fn a_good_configuration_passes_without_servers_or_passwords() {
        let f = check(&agreement("DSA-1", "\"RX1\"", ATTRS, 300), "").await;
        assert_eq!(preflight::worst(&f), Severity::Ok, "{f:#?}");
        assert!(has(&f, Severity::Ok, "1 in force today: DSA-1"), "{f:#?}");
    }

    #[tokio::test]
    async fn each_bad_configuration_of_the_issue_is_named() {
        let f = check(&agreement("DSA-OLD", "\"RX1\"", ATTRS, -1), "").await;
        assert!(
            has(&f, Severity::Fatal, "no agreement is in force today"),
            "{f:#?}"
        );
        assert!(
            has(&f, Severity::Warning, "agreement DSA-OLD ended"),
            "{f:#?}"
        );
        let f = check("", "").await;
        assert!(has(&f, Severity::Fatal, "holds no [[agreement]]"), "{f:#?}");
        let f = check(&agreement("DSA-NONE", "", ATTRS, 300), "").await;
        assert!(has(&f, Severity::Fatal, "names no organisations"), "{f:#?}");
        let typo = ATTRS.replace("\"mobile\"", "\"mobil\"");
        let f = check(&agreement("DSA-1", "\"RX1\"", &typo, 300), "").await;
        assert_eq!(preflight::worst(&f), Severity::Warning, "{f:#?}");
        assert!(
            has(
                &f,
                Severity::Warning,
                "allows mobil, which the mapping never reads (a typo for mobile?)"
            ),
            "{f:#?}"
        );
        assert!(
            has(
                &f,
                Severity::Warning,
                "reads mobile, which no agreement in force allows"
            ),
            "{f:#?}"
        );
        let twice = [
            agreement("DSA-1", "\"RX1\", \"RX2\"", ATTRS, 300),
            agreement("DSA-2", "\"RX2\"", ATTRS, 300),
        ]
        .concat();
        let f = check(&twice, "").await;
        assert!(
            has(
                &f,
                Severity::Warning,
                "RX2 is named by DSA-1 and DSA-2 at the same time"
            ),
            "{f:#?}"
        );
        let f = check(&agreement("DSA-1", "\"RX1\"", ATTRS, 30), "").await;
        assert!(has(&f, Severity::Warning, "agreement DSA-1 ends"), "{f:#?}");
        assert!(has(&f, Severity::Warning, "(in 30 days)"), "{f:#?}");
        let f = check(&agreement("DSA-1", "\"RX1\"", ATTRS, 31), "").await;
        assert_eq!(preflight::worst(&f), Severity::Ok, "{f:#?}");
        // The window is the configuration's.
        let (_dir, config) = files(&agreement("DSA-1", "\"RX1\"", ATTRS, 31), "");
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace(
            "file = \"agreements.toml\"",
            "file = \"agreements.toml\"\nwarn_days = 60",
        );
        std::fs::write(&config, text).unwrap();
        let f = gather(&config, true).await;
        assert!(has(&f, Severity::Warning, "(in 31 days)"), "{f:#?}");
    }

    #[tokio::test]
    async fn every_problem_is_reported_in_one_pass() {
        let all = [
            agreement("DSA-NONE", "", ATTRS, 300),
            agreement(
                "DSA-1",
                "\"RX1\"",
                &ATTRS.replace("\"mobile\"", "\"mobil\""),
                10,
            ),
            agreement("DSA-2", "\"RX1\"", ATTRS, 300),
        ]
        .concat();
        let f = check(&all, "").await;
        for (severity, text) in [
            (Severity::Fatal, "names no organisations"),
            (Severity::Warning, "allows mobil"),
            (Severity::Warning, "RX1 is named by DSA-1 and DSA-2"),
            (Severity::Warning, "agreement DSA-1 ends"),
        ] {
            assert!(has(&f, severity, text), "{text}: {f:#?}");
        }
        // A bad mapping and a bad agreements file are both named.
        let (dir, config) = files("[[agreement]]\nid = \"X\"\n", "");
        let text = std::fs::read_to_string(&config).unwrap();
        let bad = dir.path().join("bad-mapping.toml");
        std::fs::write(&bad, "object_class = [\"contact\"]\n").unwrap();
        let text = text.replace(
            &format!(
                "file = \"{}\"",
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("mappings/nhs-to-ad-contact.toml")
                    .display()
            ),
            "file = \"bad-mapping.toml\"",
        );
        std::fs::write(&config, text).unwrap();
        let f = gather(&config, true).await;
        let fatal: Vec<&str> = f
            .iter()
            .filter(|f| f.severity == Severity::Fatal)
            .map(|f| f.check.as_str())
            .collect();
        assert_eq!(fatal, ["mapping", "agreements"], "{f:#?}");
    }

    #[tokio::test]
    async fn a_missing_key_is_named_with_its_section() {
        let (_dir, config) = files(&agreement("DSA-1", "\"RX1\"", ATTRS, 300), "");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replace("base_dn = \"ou=People,o=nhs\"\n", "")).unwrap();
        let f = gather(&config, true).await;
        assert!(
            has(&f, Severity::Fatal, ":1: [source] base_dn is missing"),
            "{f:#?}"
        );
        let (_dir, config) = files(&agreement("DSA-1", "\"RX1\"", ATTRS, 300), "");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text.replace("[state]\ndir = \"state\"\n", "")).unwrap();
        let f = gather(&config, true).await;
        assert!(
            has(
                &f,
                Severity::Fatal,
                "state is missing: the file has no [state] section"
            ),
            "{f:#?}"
        );
    }
}
