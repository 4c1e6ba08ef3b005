//! `absync journal`: verify, query and export the audit journal, one
//! function per subcommand. Answers go out through `Printer`.

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use absync::seal::{PublicKey, Signer};
use absync::state::journal::Stored;
use absync::state::{audit, verify, ReadFrom, Snapshot, StateError};

use crate::cli::{ExportFormat, JournalCommand, Output};
use crate::csv_out::Csv;
use crate::out::{self, outln};
use crate::print::{self, Printer};

/// Runs one journal subcommand on the state in `state_dir`, opened
/// read-only: reading the journal never changes it. `bom`: CSV starts with
/// a byte-order mark.
pub fn run(
    state_dir: &Path,
    from: ReadFrom,
    command: JournalCommand,
    bom: bool,
) -> anyhow::Result<ExitCode> {
    if bom && !writes_csv(&command) {
        anyhow::bail!("--bom is for --format csv only");
    }
    let s = Snapshot::open_read_only(state_dir, from)?;
    match command {
        JournalCommand::Verify {
            public_key,
            expect_head,
            file: _,
        } => verify(&s, &public_key, expect_head),
        JournalCommand::Keygen { private, public } => keygen(&private, &public),
        JournalCommand::Runs {
            since,
            last,
            all,
            format,
        } => {
            let last = match (all, last, &since) {
                (true, _, _) | (false, None, Some(_)) => None,
                (false, Some(n), _) => Some(n),
                (false, None, None) => Some(RUNS_SHOWN),
            };
            runs(&s, state_dir, since.as_deref(), last, (format, bom))
        }
        JournalCommand::Show { run, format } => show(&s, run, (format, bom)),
        JournalCommand::History { who, format } => history(&s, &who, (format, bom)),
        JournalCommand::Held {
            at,
            org,
            agreement,
            format,
        } => held(&s, &at, org, agreement, (format, bom)),
        JournalCommand::Agreement {
            id,
            at: None,
            format,
        } => agreement(&s, &id, (format, bom)),
        JournalCommand::Agreement {
            id,
            at: Some(at),
            format,
        } => terms(&s, &id, &at, (format, bom)),
        JournalCommand::ConfigChanges { format } => config_changes(&s, (format, bom)),
        JournalCommand::Report {
            from,
            to,
            output,
            force,
            public_key,
        } => report(&s, (&from, to.as_deref()), &output, force, &public_key),
        JournalCommand::Export {
            since,
            until,
            run,
            org,
            agreement,
            format,
            redact,
        } => {
            let filter = audit::Filter {
                since: since.map(|d| when(&d, false)).transpose()?,
                until: until.map(|d| when(&d, true)).transpose()?,
                run: run.map(|r| known_run(&s, r)).transpose()?,
                org: org.map(|o| o.to_uppercase()),
                agreement: agreement.map(|a| known_agreement(&s, a)).transpose()?,
            };
            export(&s, &filter, format, redact)
        }
    }
}

/// A query's output format, and whether its CSV starts with a byte-order
/// mark.
type Form = (Output, bool);

fn writes_csv(command: &JournalCommand) -> bool {
    match command {
        JournalCommand::Verify { .. }
        | JournalCommand::Keygen { .. }
        | JournalCommand::Report { .. } => false,
        JournalCommand::Runs { format, .. }
        | JournalCommand::Show { format, .. }
        | JournalCommand::History { format, .. }
        | JournalCommand::Held { format, .. }
        | JournalCommand::Agreement { format, .. }
        | JournalCommand::ConfigChanges { format } => *format == Output::Csv,
        JournalCommand::Export { format, .. } => *format == ExportFormat::Csv,
    }
}

/// The hash chain, and with keys its signatures: "intact" (exit 0), or the
/// first broken record or what is not proven (exit 1).
fn verify(s: &Snapshot, keys: &[PathBuf], expect_head: Option<String>) -> anyhow::Result<ExitCode> {
    let evidence = evidence(keys, expect_head)?;
    verdict_of(verify::verify(s, &evidence)?)
}

/// `journal verify --file`: a JSONL export on its own.
pub fn verify_file(
    file: &Path,
    keys: &[PathBuf],
    expect_head: Option<String>,
) -> anyhow::Result<ExitCode> {
    let evidence = evidence(keys, expect_head)?;
    let f = std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?;
    let verdict = verify::verify_file(std::io::BufReader::new(f), &evidence)
        .with_context(|| format!("reading {}", file.display()))?;
    verdict_of(verdict)
}

fn evidence(keys: &[PathBuf], expect_head: Option<String>) -> anyhow::Result<verify::Evidence> {
    let keys = keys
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the public key {}", p.display()))?;
            PublicKey::from_pem(&text).with_context(|| p.display().to_string())
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(verify::Evidence { keys, expect_head })
}

fn verdict_of(verdict: verify::Verdict) -> anyhow::Result<ExitCode> {
    outln!("{verdict}")?;
    Ok(match verdict {
        verify::Verdict::Intact { .. } => ExitCode::SUCCESS,
        verify::Verdict::Broken { .. } | verify::Verdict::Unproven { .. } => ExitCode::from(1),
    })
}

/// `journal keygen`: a new signing key pair, neither file overwritten.
pub fn keygen(private: &Path, public: &Path) -> anyhow::Result<ExitCode> {
    let signer = Signer::generate()?;
    let public_pem = signer.public().to_pem()?;
    write_new(private, signer.to_pem()?.as_bytes(), 0o600)?;
    write_new(public, public_pem.as_bytes(), 0o644)?;
    outln!(
        "key {}: private key {} (set [journal] signing_key to it, or hand it over as a \
         systemd credential; keep it outside the state directory, readable by the absync \
         user only), public key {} (for auditors: journal verify --public-key)",
        signer.id(),
        private.display(),
        public.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (an existing key is never overwritten)",
                path.display()
            )
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// How many runs `journal runs` shows without --since, --last or --all:
/// its cost stays flat however many runs the journal holds.
const RUNS_SHOWN: u32 = 50;

/// The runs, oldest first (with `last`, the newest `last` of them; a line
/// on stderr says when older ones were left out). A run still marked
/// running while no process holds the state lock died: it shows as such
/// (reading never writes; the next run records it).
fn runs(
    s: &Snapshot,
    state_dir: &Path,
    since: Option<&str>,
    last: Option<u32>,
    (format, bom): Form,
) -> anyhow::Result<ExitCode> {
    let since = since.map(|d| when(d, false)).transpose()?;
    let (runs, more) = audit::runs(s, since.as_deref(), last)?;
    let alive = absync::state::StateLock::holder(state_dir).is_some();
    let mut p = Printer::stdout(format, print::RUNS_CSV_HEADER, bom)?;
    for r in runs {
        p.run(&r.seen(alive))?;
    }
    p.finish()?;
    if more {
        eprintln!(
            "absync: the newest {} runs shown; older ones: --last N, --since DAY or --all",
            last.unwrap_or_default()
        );
    }
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
    agreement: Option<String>,
    (format, bom): Form,
) -> anyhow::Result<ExitCode> {
    let at = when(at, true)?;
    let org = org.map(|o| o.to_uppercase());
    let agreement = agreement.map(|a| known_agreement(s, a)).transpose()?;
    let under = |h: &audit::Held| {
        agreement
            .as_ref()
            .is_none_or(|a| h.state.agreements.contains(a))
    };
    let mut names = BTreeSet::new();
    if format == Output::Csv {
        audit::held(s, &at, org.as_deref(), &mut |h| {
            if under(&h) {
                names.extend(h.state.attrs.into_keys());
            }
            Ok(())
        })?;
    }
    let names: Vec<String> = names.into_iter().collect();
    let mut p = Printer::stdout(format, print::held_csv_header(&names), bom)?;
    audit::held(s, &at, org.as_deref(), &mut |h| {
        if !under(&h) {
            return Ok(());
        }
        p.held(&h, &names).map_err(output_error)
    })?;
    let n = p.finish()?;
    if format == Output::Table {
        let mut scope = org.map(|o| format!(" for {o}")).unwrap_or_default();
        if let Some(a) = &agreement {
            scope.push_str(&format!(" under {a}"));
        }
        outln!("{n} objects held at {at}{scope}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn agreement(s: &Snapshot, id: &str, format: Form) -> anyhow::Result<ExitCode> {
    let id = known_agreement(s, id.to_string())?;
    print_each(format, |f| audit::agreement(s, &id, f))?;
    Ok(ExitCode::SUCCESS)
}

/// `journal agreement ID --at DAY`: the agreement's terms as the journal
/// recorded them from the agreements file in force then.
fn terms(s: &Snapshot, id: &str, at: &str, (format, bom): Form) -> anyhow::Result<ExitCode> {
    let at = when(at, true)?;
    let Some(recorded) = audit::terms_at(s, Some(&at))? else {
        anyhow::bail!("the journal records no agreements file on or before {at}");
    };
    let detail = recorded.record.detail.unwrap_or_default();
    let all = detail["agreements"].as_array().cloned().unwrap_or_default();
    let Some(terms) = all.iter().find(|a| a["id"] == id) else {
        let ids: Vec<&str> = all.iter().filter_map(|a| a["id"].as_str()).collect();
        anyhow::bail!(
            "agreement {id} was not in the agreements file on {at} (it held: {})",
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.join(", ")
            }
        );
    };
    let day = &at[..at.len().min(10)];
    let text = |k: &str| terms[k].as_str().unwrap_or_default().to_string();
    let list = |k: &str| -> Vec<String> {
        terms[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .map(String::from)
            .collect()
    };
    let in_force = text("valid_from").as_str() <= day && day <= text("valid_until").as_str();
    let mut p = Printer::stdout(format, print::TERMS_CSV_HEADER, bom)?;
    p.terms(&print::Terms {
        id: text("id"),
        title: text("title"),
        on: day.to_string(),
        in_force,
        valid_from: text("valid_from"),
        valid_until: text("valid_until"),
        organisations: list("organisations"),
        attributes: list("attributes"),
        recorded_at: recorded.at.clone(),
        recorded_by_run: recorded.record.run_id,
        file_hash: detail["hash"].as_str().unwrap_or_default().to_string(),
    })?;
    p.finish()?;
    Ok(ExitCode::SUCCESS)
}

/// `journal report`: the period's page, written to `output` (replaced only
/// with `force`). Exit 0 when the journal verifies, 1 when it does not
/// (the page is written either way, and says so).
fn report(
    s: &Snapshot,
    (from, to): (&str, Option<&str>),
    output: &Path,
    force: bool,
    keys: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let now = absync::state::journal::now();
    let from = when(from, false)?;
    // The journal knows nothing after now: a later end is now.
    let to = match to.map(|t| when(t, true)).transpose()? {
        Some(to) if to < now => to,
        _ => now.clone(),
    };
    if from > to {
        anyhow::bail!("--from {from} is after --to {to}");
    }
    if output.exists() && !force {
        anyhow::bail!(
            "{} exists: give --force to replace it, or another file",
            output.display()
        );
    }
    let evidence = evidence(keys, None)?;
    let data = absync::state::report::gather(s, &from, &to, &evidence, &now)?;
    let mut page = String::new();
    absync::report::render(&data, &mut page).context("rendering the report")?;
    write_report(output, page.as_bytes(), force)?;
    outln!(
        "wrote {}: {} records from {from} to {to}; journal {}",
        output.display(),
        data.records,
        data.verdict
    )?;
    Ok(match data.verdict {
        verify::Verdict::Intact { .. } => ExitCode::SUCCESS,
        verify::Verdict::Broken { .. } | verify::Verdict::Unproven { .. } => ExitCode::from(1),
    })
}

/// Writes the page next to `path` and renames it into place, so that a
/// reader never sees half a page; mode 0600 (it names people). An
/// existing file is replaced only with `force`.
fn write_report(path: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".absync-report-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let placed = if force {
        tmp.persist(path)
    } else {
        tmp.persist_noclobber(path)
    };
    placed.with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `id`, if the journal knows such an agreement; else an error (exit 2).
fn known_agreement(s: &Snapshot, id: String) -> anyhow::Result<String> {
    if !audit::agreement_known(s, &id)? {
        anyhow::bail!("no agreement {id} in the journal");
    }
    Ok(id)
}

/// `run`, if the journal has such a run; else an error (exit 2).
fn known_run(s: &Snapshot, run: i64) -> anyhow::Result<i64> {
    if s.records(run)?.is_empty() {
        anyhow::bail!("no run {run} in the journal");
    }
    Ok(run)
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

/// The records the filter takes, one a line, for other tools: CSV (always
/// with a byte-order mark, so spreadsheets read it as UTF-8) or JSON Lines,
/// personal values hashed with `redact`.
fn export(
    s: &Snapshot,
    filter: &audit::Filter,
    format: ExportFormat,
    redact: bool,
) -> anyhow::Result<ExitCode> {
    let out = BufWriter::new(out::stdout());
    match format {
        ExportFormat::Csv => {
            let mut csv = Csv::new(out, true, print::RECORD_CSV_HEADER)?;
            export_each(s, filter, redact, |r| csv.row(print::record_cells(&r)))?;
            csv.flush()?;
        }
        ExportFormat::Jsonl => {
            let mut out = out;
            export_each(s, filter, redact, |r| {
                let line = serde_json::to_string(&r)?;
                writeln!(out, "{line}")
            })?;
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Hands `write` every record `filter` takes, redacted if asked.
fn export_each(
    s: &Snapshot,
    filter: &audit::Filter,
    redact: bool,
    mut write: impl FnMut(Stored) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let redactor = redact.then(audit::Redactor::new).transpose()?;
    audit::filtered(s, filter, &mut |r| {
        let r = match &redactor {
            Some(x) => x.redact(r),
            None => r,
        };
        write(r).map_err(output_error)
    })?;
    Ok(())
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
