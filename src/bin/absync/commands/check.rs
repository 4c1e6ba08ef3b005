//! `absync check`: the input files parse, both servers accept the bind,
//! and the account may create objects in the target's containers.

use std::process::ExitCode;

use absync::config::Config;
use absync::engine::{self, Inputs};
use absync::ldap::Conn;
use anyhow::Context;

use crate::out::outln;

/// Checks the inputs, then each server, printing a line per check.
pub async fn run(cfg: &Config) -> anyhow::Result<ExitCode> {
    let inputs = engine::load_inputs(cfg)?;
    print_inputs(cfg, &inputs)?;
    let source = Conn::connect(&cfg.source.endpoint).await?;
    outln!(
        "source      {}: bound as {}",
        cfg.source.endpoint.url,
        cfg.source.endpoint.bind_dn
    )?;
    source.unbind().await;
    let mut target = Conn::connect(&cfg.target.endpoint).await?;
    outln!(
        "target      {}: bound as {}",
        cfg.target.endpoint.url,
        cfg.target.endpoint.bind_dn
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
        outln!("{what:<11} {dn}: exists; {class} objects may be created")?;
    }
    target.unbind().await;
    Ok(ExitCode::SUCCESS)
}

/// The three input files, and what they hold.
fn print_inputs(cfg: &Config, inputs: &Inputs) -> std::io::Result<()> {
    outln!("config      {}: ok", cfg.file.display())?;
    outln!(
        "mapping     {}: ok ({} attributes)",
        cfg.mapping_file.display(),
        inputs.mapping.rules.len()
    )?;
    let in_force: Vec<&str> = inputs
        .agreements
        .in_force()
        .map(|a| a.id.as_str())
        .collect();
    outln!(
        "agreements  {}: ok ({} in force today: {}; {} organisations)",
        cfg.agreements_file.display(),
        in_force.len(),
        in_force.join(", "),
        inputs.agreements.grants().len()
    )?;
    Ok(())
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
