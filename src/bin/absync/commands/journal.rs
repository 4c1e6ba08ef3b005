//! `absync journal`: verify, query and export the audit journal.

use std::path::Path;
use std::process::ExitCode;

use absync::state::audit;
use absync::state::journal::Stored;

use crate::cli::{ExportFormat, JournalCommand, Output};
use crate::print::{self, Printer};

fn open_state(dir: &Path) -> anyhow::Result<absync::state::Snapshot> {
    if !dir.join("absync.db").exists() {
        anyhow::bail!("no journal in {}", dir.display());
    }
    Ok(absync::state::Snapshot::open(dir)?)
}

fn when(text: &str, end_of_day: bool) -> anyhow::Result<String> {
    audit::parse_when(text, end_of_day).map_err(|e| anyhow::anyhow!(e))
}

/// Writing results failed (a closed pipe, a full disk): stops the query.
fn output_error(e: std::io::Error) -> absync::state::StateError {
    absync::state::StateError::Output(e.to_string())
}

/// Streams records through a printer.
fn print_each(
    format: Output,
    query: impl FnOnce(audit::Each<'_, Stored>) -> Result<(), absync::state::StateError>,
) -> anyhow::Result<u64> {
    let mut p = Printer::stdout(format, audit::CSV_HEADER)?;
    query(&mut |s| p.record(&s).map_err(output_error))?;
    Ok(p.finish()?)
}

pub fn run(state_dir: &Path, command: JournalCommand) -> anyhow::Result<ExitCode> {
    let s = open_state(state_dir)?;
    match command {
        JournalCommand::Verify => {
            let verdict = audit::verify(&s)?;
            println!("{verdict}");
            return Ok(match verdict {
                audit::Verdict::Intact { .. } => ExitCode::SUCCESS,
                audit::Verdict::Broken { .. } => ExitCode::from(1),
            });
        }
        JournalCommand::Runs { since, format } => {
            let since = since.map(|d| when(&d, false)).transpose()?;
            let runs = audit::runs(&s, since.as_deref())?;
            match format {
                Output::Json => println!("{}", serde_json::to_string_pretty(&runs)?),
                Output::Csv => {
                    println!("run,started,ended,seconds,mode,status,added,modified,renamed,deleted,hidden,restored,withheld,conflicts,failed,user,config_hash,mapping_hash,agreements_hash");
                    for r in &runs {
                        let c = r.counts.clone().unwrap_or_default();
                        let secs = r.seconds().unwrap_or(0.0);
                        println!(
                            "{},{},{},{secs:.1},{},\"{}\",{},{},{},{},{},{},{},{},{},{},{},{},{}",
                            r.id,
                            r.started_at,
                            r.ended_at.clone().unwrap_or_default(),
                            r.mode,
                            r.status.replace('"', "\"\""),
                            c.added,
                            c.modified,
                            c.renamed,
                            c.deleted,
                            c.hidden,
                            c.restored,
                            c.withheld,
                            c.conflicts,
                            c.failed,
                            r.unix_user,
                            r.files.config,
                            r.files.mapping,
                            r.files.agreements
                        );
                    }
                }
                Output::Table => {
                    for r in &runs {
                        let c = r.counts.clone().unwrap_or_default();
                        let secs = r
                            .seconds()
                            .map(|v| format!("{v:.1}s"))
                            .unwrap_or_else(|| "-".into());
                        println!(
                            "run {:<5} {}  {:>7}  {:<5} {:<30} +{} ~{} >{} -{} hidden {} restored {} held {} conflicts {} failed {}  by {}",
                            r.id,
                            print::short_time(&r.started_at),
                            secs,
                            r.mode,
                            r.status,
                            c.added, c.modified, c.renamed, c.deleted, c.hidden, c.restored,
                            c.withheld, c.conflicts, c.failed, r.unix_user
                        );
                    }
                }
            }
        }
        JournalCommand::Show { run, format } => {
            if print_each(format, |f| audit::show(&s, run, f))? == 0 {
                anyhow::bail!("no run {run} in the journal");
            }
        }
        JournalCommand::History { who, format } => {
            let records = audit::history(&s, &who)?;
            if records.is_empty() {
                anyhow::bail!("no journal record mentions {who}");
            }
            print_each(format, |f| records.into_iter().try_for_each(f))?;
        }
        JournalCommand::Held { at, org, format } => {
            let at = when(&at, true)?;
            let org = org.map(|o| o.to_uppercase());
            let mut p = Printer::stdout(format, print::HELD_CSV_HEADER)?;
            audit::held(&s, &at, org.as_deref(), &mut |h| {
                p.held(&h).map_err(output_error)
            })?;
            let n = p.finish()?;
            if format == Output::Table {
                let scope = org.map(|o| format!(" for {o}")).unwrap_or_default();
                println!("{n} objects held at {at}{scope}");
            }
        }
        JournalCommand::Agreement { id, format } => {
            print_each(format, |f| audit::agreement(&s, &id, f))?;
        }
        JournalCommand::ConfigChanges { format } => {
            let changes = audit::config_changes(&s)?;
            match format {
                Output::Table => {
                    for (run, what) in &changes {
                        println!(
                            "{}  run {:<5} changed: {:<28} config {} mapping {} agreements {}",
                            print::short_time(&run.started_at),
                            run.id,
                            what.join(", "),
                            &run.files.config.chars().take(12).collect::<String>(),
                            &run.files.mapping.chars().take(12).collect::<String>(),
                            &run.files.agreements.chars().take(12).collect::<String>(),
                        );
                    }
                }
                Output::Json => {
                    let v: Vec<_> = changes
                        .iter()
                        .map(|(r, w)| serde_json::json!({"run": r.id, "at": r.started_at, "changed": w, "files": r.files}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
                Output::Csv => {
                    println!("run,at,changed,config_hash,mapping_hash,agreements_hash");
                    for (r, w) in &changes {
                        println!(
                            "{},{},\"{}\",{},{},{}",
                            r.id,
                            r.started_at,
                            w.join(" "),
                            r.files.config,
                            r.files.mapping,
                            r.files.agreements
                        );
                    }
                }
            }
        }
        JournalCommand::Export {
            since,
            format,
            redact,
        } => {
            let since = when(&since, false)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            use std::io::Write;
            if format == ExportFormat::Csv {
                // A byte-order mark, so spreadsheets read the file as UTF-8.
                write!(out, "\u{feff}{}\r\n", audit::CSV_HEADER)?;
            }
            let redactor = if redact {
                Some(audit::Redactor::new()?)
            } else {
                None
            };
            audit::since(&s, &since, &mut |r| {
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
        }
    }
    Ok(ExitCode::SUCCESS)
}
