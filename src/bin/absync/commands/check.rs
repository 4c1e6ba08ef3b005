//! `absync check`: the input files parse, both servers accept the bind,
//! and the account may create objects in the target's containers.

use std::io::Write;
use std::process::ExitCode;

use absync::config::Config;
use absync::engine::{self, Inputs};
use absync::ldap::Conn;
use absync::text::Shown;
use anyhow::Context;

use crate::cli::CheckFormat;
use crate::out::outln;

/// The checks passed so far: printed as they pass (a line each), or kept
/// for one JSON object at the end.
struct Checks {
    format: CheckFormat,
    passed: Vec<serde_json::Value>,
}

impl Checks {
    /// `name` (config, source, target OU...) passed for `subject` (a file,
    /// a URL, a DN): `detail` says what was found.
    fn pass(&mut self, name: &str, subject: &str, detail: &str) -> std::io::Result<()> {
        match self.format {
            CheckFormat::Table => outln!("{name:<11} {}: {}", Shown(subject), Shown(detail)),
            CheckFormat::Json => {
                self.passed.push(serde_json::json!({
                    "check": name,
                    "subject": subject,
                    "detail": detail,
                }));
                Ok(())
            }
        }
    }
}

/// Checks the inputs, then each server, printing a line per check; as
/// JSON, one object: `ok`, the checks that passed, and the `error` that
/// stopped them (also on stderr, exit 2).
pub async fn run(cfg: &Config, format: CheckFormat) -> anyhow::Result<ExitCode> {
    let mut checks = Checks {
        format,
        passed: Vec::new(),
    };
    let result = check(cfg, &mut checks).await;
    if format == CheckFormat::Json {
        let object = serde_json::json!({
            "ok": result.is_ok(),
            "checks": checks.passed,
            "error": result.as_ref().err().map(|e| format!("{e:#}")),
        });
        let mut out = crate::out::stdout();
        serde_json::to_writer_pretty(&mut out, &object)?;
        writeln!(out)?;
        out.flush()?;
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

async fn check(cfg: &Config, checks: &mut Checks) -> anyhow::Result<()> {
    let inputs = engine::load_inputs(cfg)?;
    check_inputs(cfg, &inputs, checks)?;
    let mut source = Conn::connect(&cfg.source.endpoint).await?;
    let bound = |dn: &str| format!("bound as {dn}");
    checks.pass(
        "source",
        &cfg.source.endpoint.url,
        &bound(&cfg.source.endpoint.bind_dn),
    )?;
    if let Some(domains) = &cfg.mail_domains {
        mail_domains(&mut source, cfg, &inputs, domains, checks).await?;
    }
    source.unbind().await;
    let mut target = Conn::connect(&cfg.target.endpoint).await?;
    checks.pass(
        "target",
        &cfg.target.endpoint.url,
        &bound(&cfg.target.endpoint.bind_dn),
    )?;
    let class = inputs
        .mapping
        .object_class
        .last()
        .cloned()
        .unwrap_or_default();
    let mut containers = vec![("target OU", cfg.target.base_dn.clone())];
    containers.extend(cfg.safety.quarantine_ou.clone().map(|q| ("quarantine", q)));
    for (what, dn) in containers {
        may_create(&mut target, cfg, what, &dn, &class).await?;
        checks.pass(
            what,
            &dn,
            &format!("exists; {class} objects may be created"),
        )?;
    }
    target.unbind().await;
    if let Some(gc) = &cfg.target.global_catalog {
        let detail = global_catalog(gc)
            .await
            .with_context(|| format!("global catalog {}", gc.url))?;
        checks.pass("catalog", &gc.url, &detail)?;
    }
    Ok(())
}

/// How many source entries in scope the mail-domain list would change
/// (see `engine::pull::survey`).
async fn mail_domains(
    source: &mut Conn,
    cfg: &Config,
    inputs: &Inputs,
    domains: &absync::maildomains::MailDomains,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let s = engine::pull::survey::mail_domains(source, cfg, inputs, domains)
        .await
        .context("counting the addresses outside [mail_domains]")?;
    use absync::maildomains::Outside;
    let mut what = Vec::new();
    if s.dropped > 0 || domains.outside == Outside::Drop {
        what.push(format!("{} would be written without it", s.dropped));
    }
    if s.refused > 0 || domains.outside == Outside::Refuse {
        what.push(format!("{} would be refused", s.refused));
    }
    checks.pass(
        "mail",
        &domains.allowed().join(", "),
        &format!(
            "{} source entries in scope have an address outside these domains \
             (outside = \"{}\": {})",
            s.dropped + s.refused,
            domains.outside.as_str(),
            what.join(", ")
        ),
    )?;
    Ok(())
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

/// The three input files, and what they hold.
fn check_inputs(cfg: &Config, inputs: &Inputs, checks: &mut Checks) -> std::io::Result<()> {
    checks.pass("config", &cfg.file.display().to_string(), "ok")?;
    checks.pass(
        "mapping",
        &cfg.mapping_file.display().to_string(),
        &format!("ok ({} attributes)", inputs.mapping.rules.len()),
    )?;
    let in_force: Vec<&str> = inputs
        .agreements
        .in_force()
        .map(|a| a.id.as_str())
        .collect();
    checks.pass(
        "agreements",
        &cfg.agreements_file.display().to_string(),
        &format!(
            "ok ({} in force today: {}; {} organisations)",
            in_force.len(),
            in_force.join(", "),
            inputs.agreements.grants().len()
        ),
    )
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
