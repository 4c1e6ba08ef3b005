//! `absync init` and `completions`: what needs no configuration.

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
        // Created anew (O_CREAT | O_EXCL) in one step: whatever is there,
        // a symbolic link included (even one pointing nowhere), is left
        // alone and never followed.
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink());
                let what = if link {
                    " (a symbolic link, not followed)"
                } else {
                    ""
                };
                anyhow::bail!("{} exists{what}; not overwritten", path.display());
            }
            other => other.with_context(|| format!("creating {}", path.display()))?,
        };
        file.write_all(STARTER.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn init_follows_no_symlink_and_overwrites_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A link pointing nowhere: followed, it would create its target.
        let target = dir.path().join("created-elsewhere");
        let link = dir.path().join("absync.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = super::run(&link).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{} exists (a symbolic link, not followed); not overwritten",
                link.display()
            )
        );
        assert!(!target.exists(), "nothing created at the link's target");
        // A link to a file, and a file: left as they are.
        std::fs::write(&target, "mine").unwrap();
        assert!(super::run(&link).is_err());
        std::fs::remove_file(&link).unwrap();
        std::fs::write(&link, "mine too").unwrap();
        let e = super::run(&link).unwrap_err().to_string();
        assert_eq!(e, format!("{} exists; not overwritten", link.display()));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "mine");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "mine too");
    }
}
