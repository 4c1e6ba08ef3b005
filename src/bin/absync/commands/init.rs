//! `absync init`, `completions` and `man`: what needs no configuration.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

use crate::cli::Cli;

const STARTER: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/absync.toml"));

/// `absync init`: a commented starter configuration.
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    if path == Path::new("-") {
        print!("{STARTER}");
    } else {
        if path.exists() {
            anyhow::bail!("{} exists; not overwritten", path.display());
        }
        std::fs::write(path, STARTER).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}; edit it, then run `absync check`", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "absync", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn man() -> anyhow::Result<ExitCode> {
    clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
    Ok(ExitCode::SUCCESS)
}
