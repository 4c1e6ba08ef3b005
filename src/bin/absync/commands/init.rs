//! `absync init`, `completions` and `man`: what needs no configuration.

use std::path::Path;
use std::process::ExitCode;

use std::io::Write;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;
use crate::out::{self, outln};

const STARTER: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/absync.toml"));

/// `absync init`: a commented starter configuration.
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    if path == Path::new("-") {
        out::stdout().write_all(STARTER.as_bytes())?;
    } else {
        if path.exists() {
            anyhow::bail!("{} exists; not overwritten", path.display());
        }
        std::fs::write(path, STARTER).with_context(|| format!("writing {}", path.display()))?;
        outln!("wrote {}; edit it, then run `absync check`", path.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    // clap_complete panics on a failed write: write it whole, then once.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "absync", &mut script);
    out::stdout().write_all(&script)?;
    Ok(ExitCode::SUCCESS)
}

pub fn man() -> anyhow::Result<ExitCode> {
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page)?;
    out::stdout().write_all(&page)?;
    Ok(ExitCode::SUCCESS)
}
