//! The commands, one file each, and the one dispatch: each arm loads what
//! its command needs (the whole configuration, only the part the daemon's
//! clients may read, or nothing) and runs it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use absync::config::{Config, ServiceView};
use absync::engine::Options;
use absync::state::ReadFrom;

use crate::cli::{Cli, Command, JournalCommand, Only};

mod audit;
mod check;
mod init;
mod journal;
mod service;
mod status;
mod sync;

/// Runs the command `cli` names. An `Err` means it could not run (exit 2).
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let file = cli.config.as_deref();
    let config = || load_config(file);
    // The daemon's clients need neither the passwords nor the other input
    // files: an admin in the absync group can use them.
    let view = || load_view(file);
    match cli.command {
        Command::Check { format } => check::run(&config()?, format).await,
        Command::Sync {
            dry_run,
            format,
            summary,
            full,
            allow_deletes,
        } => {
            let opts = Options {
                full,
                allow_deletes,
                ..Default::default()
            };
            if dry_run {
                let report = sync::PlanReport {
                    summary,
                    ..Default::default()
                };
                sync::plan(&config()?, format, opts, report).await
            } else {
                refuse_root()?;
                sync::apply(&config()?, opts, summary).await
            }
        }
        Command::Plan {
            format,
            summary,
            detailed_exitcode,
            full,
            only,
        } => {
            let opts = Options {
                full,
                only_deletes: only == Some(Only::Deletes),
                ..Default::default()
            };
            let report = sync::PlanReport {
                summary,
                detailed_exitcode,
            };
            sync::plan(&config()?, format, opts, report).await
        }
        Command::Journal {
            command: JournalCommand::Keygen { private, public },
            ..
        } => journal::keygen(&private, &public),
        Command::Journal {
            command:
                JournalCommand::Verify {
                    public_key,
                    expect_head,
                    file: Some(file),
                },
            ..
        } => journal::verify_file(&file, &public_key, expect_head),
        Command::Journal {
            state,
            bom,
            command,
        } => match state {
            Some(dir) => journal::run(&dir, ReadFrom::Given, command, bom),
            None => {
                let cfg = config()?;
                let command = match command {
                    // The configured public key, when none is given.
                    JournalCommand::Verify {
                        public_key,
                        expect_head,
                        file,
                    } if public_key.is_empty() => JournalCommand::Verify {
                        public_key: cfg.journal_public_key.iter().cloned().collect(),
                        expect_head,
                        file,
                    },
                    other => other,
                };
                journal::run(&cfg.state_dir, ReadFrom::Live, command, bom)
            }
        },
        Command::Run => {
            refuse_root()?;
            service::run(config_path(file)?).await
        }
        Command::Resync { full, no_wait } => {
            service::resync(&view()?.service.socket, full, !no_wait).await
        }
        Command::Status {
            runs,
            state: Some(dir),
        } => status::run(&dir, ReadFrom::Given, None, runs),
        Command::Status { runs, state: None } => {
            let view = view()?;
            let ou = Some(view.target_base_dn.as_str());
            status::run(&view.state_dir, ReadFrom::Live, ou, runs)
        }
        Command::Audit {
            format,
            hide_covered,
            bom,
        } => audit::run(&config()?, format, hide_covered, bom).await,
        Command::Init { path } => init::run(&path),
        Command::Completions { shell } => init::completions(shell),
        Command::Man => init::man(),
    }
}

/// Where the package installs the configuration.
const DEFAULT_CONFIG: &str = "/etc/absync/absync.toml";

/// The configuration file: from `--config` or `ABSYNC_CONFIG`, else the
/// package's when it exists.
fn config_path(file: Option<&Path>) -> anyhow::Result<PathBuf> {
    resolve_config(file, Path::new(DEFAULT_CONFIG))
}

fn resolve_config(file: Option<&Path>, default: &Path) -> anyhow::Result<PathBuf> {
    match file {
        Some(f) => Ok(f.to_path_buf()),
        None if default.exists() => Ok(default.to_path_buf()),
        None => anyhow::bail!(
            "no configuration: give --config FILE, set ABSYNC_CONFIG, or install {}",
            default.display()
        ),
    }
}

fn load_config(file: Option<&Path>) -> anyhow::Result<Config> {
    let cfg = Config::load(&config_path(file)?)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    Ok(cfg)
}

/// The part of the configuration the daemon's clients need (no passwords).
fn load_view(file: Option<&Path>) -> anyhow::Result<ServiceView> {
    Ok(ServiceView::load(&config_path(file)?)?)
}

/// absync writes to Active Directory and keeps personal data: as root, a
/// mistake reaches everything. `sync` and `run` refuse root unless told
/// (`ABSYNC_ALLOW_ROOT=1`), as a test bed run by root has to.
fn refuse_root() -> anyhow::Result<()> {
    let root = absync::os::current_uid() == 0;
    if root && std::env::var("ABSYNC_ALLOW_ROOT").as_deref() != Ok("1") {
        anyhow::bail!(
            "refusing to run as root: run absync as its service user (the package's \
             absync.service does), or set ABSYNC_ALLOW_ROOT=1 to insist"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_configuration_is_used_when_present_and_none_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("absync.toml");
        let given = Path::new("/srv/other.toml");
        let none = resolve_config(None, &default).unwrap_err().to_string();
        assert!(none.contains("--config") && none.contains(&default.display().to_string()));
        std::fs::write(&default, "").unwrap();
        assert_eq!(resolve_config(None, &default).unwrap(), default);
        assert_eq!(resolve_config(Some(given), &default).unwrap(), given);
    }
}
