//! `absync sync` and `absync plan`: one run, applied, or only planned and
//! printed.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use absync::config::Config;
use absync::engine::render::Format;
use absync::engine::{self, Mode, Options, Watcher};

use crate::progress::ProgressLine;

/// One run that writes: a progress line on a terminal, its summary on
/// stderr, its outcome as exit code.
pub async fn apply(cfg: &Config, mut opts: Options) -> anyhow::Result<ExitCode> {
    if std::io::stderr().is_terminal() {
        opts.watch = Some(Watcher(Arc::new(ProgressLine::new())));
    }
    let outcome = engine::run(cfg, Mode::Apply, opts, &mut std::io::sink()).await?;
    eprintln!("{}", outcome.summary("sync"));
    Ok(ExitCode::from(outcome.exit_code()))
}

/// The plan on stdout in `format`; with a table, the summary on stderr.
pub async fn plan(cfg: &Config, format: Format, opts: Options) -> anyhow::Result<ExitCode> {
    let mut stdout = crate::out::stdout();
    let outcome = engine::run(cfg, Mode::Plan(format), opts, &mut stdout).await?;
    if format == Format::Table {
        eprintln!("{}", outcome.summary("plan"));
    }
    Ok(ExitCode::SUCCESS)
}
