//! `absync journal`: verify, query and export the audit journal, one
//! function per subcommand. Answers go out through `Printer`.

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use absync::state::journal::Stored;
use absync::state::{audit, Snapshot, StateError};

use crate::cli::{ExportFormat, JournalCommand, Output};
use crate::csv_out::Csv;
use crate::print::{self, Printer};

/// Runs one journal subcommand on the state in `state_dir`; `bom`: CSV
/// starts with a byte-order mark.
pub fn run(state_dir: &Path, command: JournalCommand, bom: bool) -> anyhow::Result<ExitCode> {
    if bom && !writes_csv(&command) {
        anyhow::bail!("--bom is for --format csv only");
    }
    let s = open_state(state_dir)?;
    match command {
        JournalCommand::Verify => verify(&s),
        JournalCommand::Runs { since, format } => runs(&s, since.as_deref(), (format, bom)),
        JournalCommand::Show { run, format } => show(&s, run, (format, bom)),
        JournalCommand::History { who, format } => history(&s, &who, (format, bom)),
        JournalCommand::Held { at, org, format } => held(&s, &at, org, (format, bom)),
        JournalCommand::Agreement { id, format } => agreement(&s, &id, (format, bom)),
        JournalCommand::ConfigChanges { format } => config_changes(&s, (format, bom)),
        JournalCommand::Export {
            since,
            format,
            redact,
        } => export(&s, &since, format, redact),
    }
}

/// A query's output format, and whether its CSV starts with a byte-order
/// mark.
type Form = (Output, bool);

fn writes_csv(command: &JournalCommand) -> bool {
    match command {
        JournalCommand::Verify => false,
        JournalCommand::Runs { format, .. }
        | JournalCommand::Show { format, .. }
        | JournalCommand::History { format, .. }
        | JournalCommand::Held { format, .. }
        | JournalCommand::Agreement { format, .. }
        | JournalCommand::ConfigChanges { format } => *format == Output::Csv,
        JournalCommand::Export { format, .. } => *format == ExportFormat::Csv,
    }
}

/// The hash chain: "intact" (exit 0) or the first broken record (exit 1).
fn verify(s: &Snapshot) -> anyhow::Result<ExitCode> {
    let verdict = audit::verify(s)?;
    println!("{verdict}");
    Ok(match verdict {
        audit::Verdict::Intact { .. } => ExitCode::SUCCESS,
        audit::Verdict::Broken { .. } => ExitCode::from(1),
    })
}

fn runs(s: &Snapshot, since: Option<&str>, (format, bom): Form) -> anyhow::Result<ExitCode> {
    let since = since.map(|d| when(d, false)).transpose()?;
    let runs = audit::runs(s, since.as_deref())?;
    let mut p = Printer::stdout(format, print::RUNS_CSV_HEADER, bom)?;
    for r in &runs {
        p.run(r)?;
    }
    p.finish()?;
    Ok(ExitCode::SUCCESS)
}

fn show(s: &Snapshot, run: i64, format: Form) -> anyhow::Result<ExitCode> {
    if print_each(format, |f| audit::show(s, run, f))? == 0 {
        anyhow::bail!("no run {run} in the journal");
    }
    Ok(ExitCode::SUCCESS)
}

fn history(s: &Snapshot, who: &str, format: Form) -> anyhow::Result<ExitCode> {
    let records = audit::history(s, who)?;
    if records.is_empty() {
        anyhow::bail!("no journal record mentions {who}");
    }
    print_each(format, |f| records.into_iter().try_for_each(f))?;
    Ok(ExitCode::SUCCESS)
}

/// What was held at a time. As CSV, with a column per attribute: a first
/// pass over the objects finds which attributes there are.
fn held(
    s: &Snapshot,
    at: &str,
    org: Option<String>,
    (format, bom): Form,
) -> anyhow::Result<ExitCode> {
    let at = when(at, true)?;
    let org = org.map(|o| o.to_uppercase());
    let mut names = BTreeSet::new();
    if format == Output::Csv {
        audit::held(s, &at, org.as_deref(), &mut |h| {
            names.extend(h.state.attrs.into_keys());
            Ok(())
        })?;
    }
    let names: Vec<String> = names.into_iter().collect();
    let mut p = Printer::stdout(format, print::held_csv_header(&names), bom)?;
    audit::held(s, &at, org.as_deref(), &mut |h| {
        p.held(&h, &names).map_err(output_error)
    })?;
    let n = p.finish()?;
    if format == Output::Table {
        let scope = org.map(|o| format!(" for {o}")).unwrap_or_default();
        println!("{n} objects held at {at}{scope}");
    }
    Ok(ExitCode::SUCCESS)
}

fn agreement(s: &Snapshot, id: &str, format: Form) -> anyhow::Result<ExitCode> {
    print_each(format, |f| audit::agreement(s, id, f))?;
    Ok(ExitCode::SUCCESS)
}

fn config_changes(s: &Snapshot, (format, bom): Form) -> anyhow::Result<ExitCode> {
    let changes = audit::config_changes(s)?;
    let mut p = Printer::stdout(format, print::CONFIG_CHANGES_CSV_HEADER, bom)?;
    for (run, changed) in &changes {
        p.config_change(run, changed)?;
    }
    p.finish()?;
    Ok(ExitCode::SUCCESS)
}

/// Every record since a time, one a line, for other tools: CSV (always
/// with a byte-order mark, so spreadsheets read it as UTF-8) or JSON Lines,
/// personal values hashed with `redact`.
fn export(
    s: &Snapshot,
    since: &str,
    format: ExportFormat,
    redact: bool,
) -> anyhow::Result<ExitCode> {
    let since = when(since, false)?;
    let out = BufWriter::new(std::io::stdout().lock());
    match format {
        ExportFormat::Csv => {
            let mut csv = Csv::new(out, true, print::RECORD_CSV_HEADER)?;
            export_each(s, &since, redact, |r| csv.row(print::record_cells(&r)))?;
            csv.flush()?;
        }
        ExportFormat::Jsonl => {
            let mut out = out;
            export_each(s, &since, redact, |r| {
                let line = serde_json::to_string(&r)?;
                writeln!(out, "{line}")
            })?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Hands `write` every record since `since`, redacted if asked.
fn export_each(
    s: &Snapshot,
    since: &str,
    redact: bool,
    mut write: impl FnMut(Stored) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let redactor = redact.then(audit::Redactor::new).transpose()?;
    audit::since(s, since, &mut |r| {
        let r = match &redactor {
            Some(x) => x.redact(r),
            None => r,
        };
        write(r).map_err(output_error)
    })?;
    Ok(())
}

fn open_state(dir: &Path) -> anyhow::Result<Snapshot> {
    if !dir.join("absync.db").exists() {
        anyhow::bail!("no journal in {}", dir.display());
    }
    Ok(Snapshot::open(dir)?)
}

/// A day or an RFC 3339 time, as the journal stores times.
fn when(text: &str, end_of_day: bool) -> anyhow::Result<String> {
    audit::parse_when(text, end_of_day).map_err(|e| anyhow::anyhow!(e))
}

/// Writing results failed (a closed pipe, a full disk): stops the query.
fn output_error(e: std::io::Error) -> StateError {
    StateError::Output(e.to_string())
}

/// Streams records through a printer; returns how many there were.
fn print_each(
    (format, bom): Form,
    query: impl FnOnce(audit::Each<'_, Stored>) -> Result<(), StateError>,
) -> anyhow::Result<u64> {
    let mut p = Printer::stdout(format, print::RECORD_CSV_HEADER, bom)?;
    query(&mut |s| p.record(&s).map_err(output_error))?;
    Ok(p.finish()?)
}
