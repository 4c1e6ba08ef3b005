//! `absync state`: a backup of the state database while absync runs, and
//! its compaction.

use std::path::Path;
use std::process::ExitCode;

use absync::state::backup::{self, Copied};
use absync::state::verify::Verdict;
use absync::state::{ReadFrom, StateError};

use crate::cli::StateCommand;
use crate::out::outln;

/// Runs one `state` subcommand on the state directory `dir`.
pub fn run(dir: &Path, command: StateCommand) -> anyhow::Result<ExitCode> {
    match command {
        StateCommand::Backup { file } => {
            // No lock: the online backup reads as any reader does, so a
            // running daemon goes on meanwhile.
            let copied = backup::backup(dir, ReadFrom::Live, &file)?;
            report_backup(&copied)
        }
        StateCommand::Compact => compact(dir),
    }
}

fn report_backup(c: &Copied) -> anyhow::Result<ExitCode> {
    let run = c
        .mark
        .as_ref()
        .and_then(|m| m["last_run"].as_i64())
        .map_or("before any run".to_string(), |n| format!("as of run {n}"));
    outln!(
        "wrote {} ({} bytes, mode 0600): the state {run}",
        c.path.display(),
        c.bytes
    )?;
    outln!("its journal: {}", c.verdict)?;
    Ok(match c.verdict {
        Verdict::Intact { .. } => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

fn compact(dir: &Path) -> anyhow::Result<ExitCode> {
    let done = match backup::compact(dir) {
        Err(StateError::Locked { dir, holder }) => anyhow::bail!(
            "the state directory {} is in use by another absync ({holder}): compacting needs \
             it to itself; stop the service (systemctl stop absync) or let the run end, then \
             compact",
            dir.display()
        ),
        other => other?,
    };
    outln!(
        "compacted {}: {} bytes before, {} after; no record changed",
        dir.join("absync.db").display(),
        done.before,
        done.after
    )?;
    Ok(ExitCode::SUCCESS)
}
