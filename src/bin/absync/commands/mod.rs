//! The commands, one file each, and the one dispatch: each arm loads what
//! its command needs (the whole configuration, only the part the daemon's
//! clients may read, or nothing) and runs it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use absync::config::{Config, ServiceView};
use absync::engine::Options;
use absync::service::control::Request;
use absync::state::ReadFrom;

use crate::cli::{Cli, Command, JournalCommand, Only, StatusFormat};

mod audit;
mod check;
mod health;
mod init;
mod journal;
mod man;
mod service;
mod state;
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
        Command::Check { format, offline } => {
            check::run(&config_path(file)?, offline, format).await
        }
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
                if let Ok(v) = view() {
                    service::refuse_if_daemon(&v.service.socket, full, allow_deletes)?;
                }
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
            state,
            bom,
            command,
        } => journal_command(file, state, bom, command),
        Command::State { command } => state::run(&load_view(file)?.state_dir, command),
        Command::Run => {
            refuse_root()?;
            service::run(config_path(file)?).await
        }
        Command::Resync {
            full,
            no_wait,
            allow_deletes,
        } => {
            let req = Request {
                full,
                wait: !no_wait,
                allow_deletes,
            };
            service::resync(&view()?.service.socket, &req).await
        }
        Command::Status {
            runs,
            state,
            format,
            check,
            max_age,
        } => status(
            file,
            runs,
            state,
            format == StatusFormat::Json,
            check,
            max_age,
        ),
        Command::Audit {
            format,
            hide_covered,
            bom,
        } => audit::run(&config()?, format, hide_covered, bom).await,
        Command::Init { path } => init::run(&path),
        Command::Completions { shell } => init::completions(shell),
        Command::Man { dir } => man::run(dir.as_deref()),
    }
}

/// `absync status`: the table, the JSON object, or the monitoring check;
/// of `--state DIR`, or of the configuration's state directory.
fn status(
    file: Option<&Path>,
    runs: u32,
    state: Option<std::path::PathBuf>,
    json: bool,
    check: bool,
    max_age: Option<std::time::Duration>,
) -> anyhow::Result<ExitCode> {
    match (state, check) {
        (Some(dir), true) => Ok(health::check(
            &dir,
            ReadFrom::Given,
            max_age.unwrap_or(health::DEFAULT_MAX_AGE),
            absync::config::DEFAULT_WARN_DAYS,
        )),
        (None, true) => Ok(match load_view(file) {
            Ok(view) => health::check(
                &view.state_dir,
                ReadFrom::Live,
                max_age.unwrap_or_else(|| health::max_age(&view.service.schedule)),
                view.agreements_warn_days,
            ),
            Err(e) => health::unknown(&e),
        }),
        (Some(dir), false) => {
            let days = absync::config::DEFAULT_WARN_DAYS;
            status::run(&dir, ReadFrom::Given, None, runs, json, days)
        }
        (None, false) => {
            let view = load_view(file)?;
            let ou = Some(view.target_base_dn.as_str());
            let days = view.agreements_warn_days;
            status::run(&view.state_dir, ReadFrom::Live, ou, runs, json, days)
        }
    }
}

/// `absync journal …`: keygen and `verify --file` need no state; the rest
/// read `--state DIR`, or the configuration's state directory (whose public
/// key `verify` checks with when given none).
fn journal_command(
    file: Option<&Path>,
    state: Option<PathBuf>,
    bom: bool,
    command: JournalCommand,
) -> anyhow::Result<ExitCode> {
    match (state, command) {
        (_, JournalCommand::Keygen { private, public }) => journal::keygen(&private, &public),
        (
            _,
            JournalCommand::Verify {
                public_key,
                expect_head,
                file: Some(f),
            },
        ) => journal::verify_file(&f, &public_key, expect_head),
        (Some(dir), command) => journal::run(&dir, ReadFrom::Given, command, bom),
        (None, command) => {
            let cfg = load_config(file)?;
            let command = match command {
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
