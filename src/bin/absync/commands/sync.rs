//! `absync sync` and `absync plan`: one run, applied, or only planned and
//! printed.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use absync::config::Config;
use absync::engine::render::Format;
use absync::engine::{self, Mode, Options, Outcome, Status, Watcher};

use crate::cli::SummaryFormat;
use crate::progress::ProgressLine;

/// Exit codes of `plan --detailed-exitcode`.
const PLAN_NOTHING_TO_DO: u8 = 0;
const PLAN_CHANGES: u8 = 2;
const PLAN_WOULD_STOP: u8 = 3;

/// One run that writes: a progress line on a terminal, its summary on
/// stderr (or as JSON on stdout), its outcome as exit code.
pub async fn apply(
    cfg: &Config,
    mut opts: Options,
    summary: Option<SummaryFormat>,
) -> anyhow::Result<ExitCode> {
    if std::io::stderr().is_terminal() {
        opts.watch = Some(Watcher(Arc::new(ProgressLine::new())));
    }
    let outcome = engine::run(cfg, Mode::Apply, opts, &mut std::io::sink()).await?;
    let code = outcome.exit_code();
    match summary {
        // The run is done and journaled: its exit code says how it went,
        // even when no one reads the summary any more.
        Some(SummaryFormat::Json) => match print_json(&summary_json("sync", &outcome, code)) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
            _ => {}
        },
        None => eprintln!("{}", outcome.summary("sync")),
    }
    Ok(ExitCode::from(code))
}

/// How `plan` (and `sync --dry-run`) reports.
#[derive(Clone, Copy, Default)]
pub struct PlanReport {
    /// The summary as JSON on stdout instead of the plan.
    pub summary: Option<SummaryFormat>,
    /// Exit 0 / 2 / 3: nothing to do / changes / a rail would stop the run.
    pub detailed_exitcode: bool,
}

/// The plan on stdout in `format`; with a table, the summary on stderr.
/// With a JSON summary, only the summary, on stdout.
pub async fn plan(
    cfg: &Config,
    format: Format,
    opts: Options,
    report: PlanReport,
) -> anyhow::Result<ExitCode> {
    let outcome = match report.summary {
        Some(_) => engine::run(cfg, Mode::Plan(format), opts, &mut std::io::sink()).await?,
        None => {
            let mut stdout = crate::out::stdout();
            let outcome = engine::run(cfg, Mode::Plan(format), opts, &mut stdout).await?;
            stdout.flush()?;
            outcome
        }
    };
    let code = if report.detailed_exitcode {
        plan_exit_code(&outcome)
    } else {
        0
    };
    match report.summary {
        Some(SummaryFormat::Json) => print_json(&summary_json("plan", &outcome, code))?,
        None if format == Format::Table => eprintln!("{}", outcome.summary("plan")),
        None => {}
    }
    Ok(ExitCode::from(code))
}

/// `plan --detailed-exitcode`: 3 when a real run would stop on a safety
/// rail, 2 when it would write something, 0 when there is nothing to do.
fn plan_exit_code(outcome: &Outcome) -> u8 {
    match outcome.status {
        Status::Withheld(_) => PLAN_WOULD_STOP,
        _ if outcome.counts.writes() > 0 => PLAN_CHANGES,
        _ => PLAN_NOTHING_TO_DO,
    }
}

/// The run's summary as one JSON object. `code`: what absync exits with.
fn summary_json(what: &str, outcome: &Outcome, code: u8) -> serde_json::Value {
    let status = match outcome.status {
        Status::Ok => "ok",
        Status::Failures => "failures",
        Status::Withheld(_) => "withheld",
    };
    let p = &outcome.pull;
    serde_json::json!({
        "command": what,
        "run_id": outcome.run_id,
        "status": status,
        "status_text": outcome.status.text(),
        "exit_code": code,
        "duration_seconds": outcome.duration.as_secs_f64(),
        "pull": {
            "mode": p.mode,
            "why": p.why,
            "gone": p.gone,
            "present": p.present,
            "by_timestamp": p.by_timestamp,
            "source_seconds": p.source_time.as_secs_f64(),
        },
        "counts": outcome.counts,
        "servers": outcome.servers,
    })
}

fn print_json(value: &serde_json::Value) -> std::io::Result<()> {
    let mut out = crate::out::stdout();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use absync::state::runs::Counts;

    fn outcome(status: Status, counts: Counts) -> Outcome {
        Outcome {
            run_id: None,
            counts,
            duration: std::time::Duration::from_millis(1500),
            status,
            pull: Default::default(),
            servers: Default::default(),
        }
    }

    #[test]
    fn detailed_exit_codes() {
        let none = outcome(Status::Ok, Counts::default());
        assert_eq!(plan_exit_code(&none), 0);
        let adds = Counts {
            added: 3,
            ..Default::default()
        };
        assert_eq!(plan_exit_code(&outcome(Status::Ok, adds.clone())), 2);
        let stop = outcome(Status::Withheld("stopped: deletion threshold".into()), adds);
        assert_eq!(plan_exit_code(&stop), 3);
    }

    #[test]
    fn the_json_summary_names_status_code_and_counts() {
        let o = outcome(
            Status::Withheld("stopped: deletion threshold".into()),
            Counts {
                withheld: 7,
                ..Default::default()
            },
        );
        let j = summary_json("plan", &o, 3);
        assert_eq!(j["status"], "withheld");
        assert_eq!(j["status_text"], "stopped: deletion threshold");
        assert_eq!(j["exit_code"], 3);
        assert_eq!(j["counts"]["withheld"], 7);
        assert_eq!(j["duration_seconds"], 1.5);
        assert!(j["run_id"].is_null());
    }
}
