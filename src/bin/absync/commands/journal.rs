//! `absync journal`: verify, query and export the audit journal, one
//! function per subcommand. Answers go out through `Printer`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use absync::state::journal::Stored;
use absync::state::{audit, ReadFrom, Snapshot, StateError};

use crate::cli::{ExportFormat, JournalCommand, Output};
use crate::print::{self, Printer};

/// Runs one journal subcommand on the state in `state_dir`, opened
/// read-only: reading the journal never changes it.
pub fn run(state_dir: &Path, from: ReadFrom, command: JournalCommand) -> anyhow::Result<ExitCode> {
    let s = Snapshot::open_read_only(state_dir, from)?;
    match command {
        JournalCommand::Verify => verify(&s),
        JournalCommand::Runs { since, format } => runs(&s, since.as_deref(), format),
        JournalCommand::Show { run, format } => show(&s, run, format),
        JournalCommand::History { who, format } => history(&s, &who, format),
        JournalCommand::Held { at, org, format } => held(&s, &at, org, format),
        JournalCommand::Agreement { id, format } => agreement(&s, &id, format),
        JournalCommand::ConfigChanges { format } => config_changes(&s, format),
        JournalCommand::Export {
            since,
            format,
            redact,
        } => export(&s, &since, format, redact),
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

fn runs(s: &Snapshot, since: Option<&str>, format: Output) -> anyhow::Result<ExitCode> {
    let since = since.map(|d| when(d, false)).transpose()?;
    let runs = audit::runs(s, since.as_deref())?;
    let mut p = Printer::stdout(format, print::RUNS_CSV_HEADER)?;
    for r in &runs {
        p.run(r)?;
    }
    p.finish()?;
    Ok(ExitCode::SUCCESS)
}

fn show(s: &Snapshot, run: i64, format: Output) -> anyhow::Result<ExitCode> {
    if print_each(format, |f| audit::show(s, run, f))? == 0 {
        anyhow::bail!("no run {run} in the journal");
    }
    Ok(ExitCode::SUCCESS)
}

fn history(s: &Snapshot, who: &str, format: Output) -> anyhow::Result<ExitCode> {
    let records = audit::history(s, who)?;
    if records.is_empty() {
        anyhow::bail!("no journal record mentions {who}");
    }
    print_each(format, |f| records.into_iter().try_for_each(f))?;
    Ok(ExitCode::SUCCESS)
}

fn held(s: &Snapshot, at: &str, org: Option<String>, format: Output) -> anyhow::Result<ExitCode> {
    let at = when(at, true)?;
    let org = org.map(|o| o.to_uppercase());
    let mut p = Printer::stdout(format, print::HELD_CSV_HEADER)?;
    audit::held(s, &at, org.as_deref(), &mut |h| {
        p.held(&h).map_err(output_error)
    })?;
    let n = p.finish()?;
    if format == Output::Table {
        let scope = org.map(|o| format!(" for {o}")).unwrap_or_default();
        println!("{n} objects held at {at}{scope}");
    }
    Ok(ExitCode::SUCCESS)
}

fn agreement(s: &Snapshot, id: &str, format: Output) -> anyhow::Result<ExitCode> {
    print_each(format, |f| audit::agreement(s, id, f))?;
    Ok(ExitCode::SUCCESS)
}

fn config_changes(s: &Snapshot, format: Output) -> anyhow::Result<ExitCode> {
    let changes = audit::config_changes(s)?;
    let mut p = Printer::stdout(format, print::CONFIG_CHANGES_CSV_HEADER)?;
    for (run, changed) in &changes {
        p.config_change(run, changed)?;
    }
    p.finish()?;
    Ok(ExitCode::SUCCESS)
}

/// Every record since a time, one a line, for other tools: CSV (RFC 4180
/// line ends) or JSON Lines, personal values hashed with `redact`.
fn export(
    s: &Snapshot,
    since: &str,
    format: ExportFormat,
    redact: bool,
) -> anyhow::Result<ExitCode> {
    let since = when(since, false)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if format == ExportFormat::Csv {
        // A byte-order mark, so spreadsheets read the file as UTF-8.
        write!(out, "\u{feff}{}\r\n", audit::CSV_HEADER)?;
    }
    let redactor = redact.then(audit::Redactor::new).transpose()?;
    audit::since(s, &since, &mut |r| {
        let r = match &redactor {
            Some(x) => x.redact(r),
            None => r,
        };
        match format {
            ExportFormat::Csv => write!(out, "{}\r\n", audit::csv_line(&r)),
            ExportFormat::Jsonl => serde_json::to_string(&r)
                .map_err(std::io::Error::from)
                .and_then(|line| writeln!(out, "{line}")),
        }
        .map_err(output_error)
    })?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
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
    format: Output,
    query: impl FnOnce(audit::Each<'_, Stored>) -> Result<(), StateError>,
) -> anyhow::Result<u64> {
    let mut p = Printer::stdout(format, audit::CSV_HEADER)?;
    query(&mut |s| p.record(&s).map_err(output_error))?;
    Ok(p.finish()?)
}
