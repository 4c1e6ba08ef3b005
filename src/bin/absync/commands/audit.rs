//! `absync audit`: is anything in the managed or quarantine OU that no
//! agreement in force allows? Every object there, judged, then the counts.

use std::process::ExitCode;

use absync::config::Config;
use absync::engine::compliance::{self, Class};
use absync::engine::RunError;

use crate::cli::Output;
use crate::out::outln;
use crate::print::{self, Printer};

/// Exit code when the check found a violation.
const EXIT_VIOLATION: u8 = 1;

/// Prints each object with its class and why, then the counts (on stdout
/// under a table, on stderr under JSON or CSV). Exit 0 when nothing
/// violates the agreements, 1 when something does, 2 when the check could
/// not run.
pub async fn run(
    cfg: &Config,
    format: Output,
    hide_covered: bool,
    bom: bool,
) -> anyhow::Result<ExitCode> {
    let mut p = Printer::stdout(format, print::FINDINGS_CSV_HEADER, bom)?;
    let tally = compliance::audit(cfg, &mut |f| {
        if hide_covered && matches!(f.class, Class::Covered | Class::Hidden) {
            return Ok(());
        }
        p.finding(f).map_err(RunError::Output)
    })
    .await;
    // What was printed is complete up to an error: close it either way.
    p.finish()?;
    let tally = match tally {
        Err(RunError::Output(e)) => anyhow::bail!("writing the findings: {e}"),
        t => t?,
    };
    let line = format!("{}; checked {}", tally.text(), containers(cfg));
    if format == Output::Table {
        outln!("{line}")?;
    } else {
        eprintln!("{line}");
    }
    Ok(if tally.violation_count() > 0 {
        ExitCode::from(EXIT_VIOLATION)
    } else {
        ExitCode::SUCCESS
    })
}

fn containers(cfg: &Config) -> String {
    cfg.containers()
        .into_iter()
        .map(|(what, dn)| format!("{what} {dn}"))
        .collect::<Vec<_>>()
        .join(" and ")
}
