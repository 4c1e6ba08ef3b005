//! The commands, one file each, and the one dispatch: each arm loads what
//! its command needs (the whole configuration, only the part the daemon's
//! clients may read, or nothing) and runs it.

use std::path::Path;
use std::process::ExitCode;

use absync::config::{Config, ServiceView};
use absync::engine::Options;
use absync::service::control::Request;
use absync::state::ReadFrom;
use anyhow::Context;

use crate::cli::{Cli, Command, JournalCommand, Only, StatusFormat};

mod audit;
mod check;
mod health;
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
        Command::Check => check::run(&config()?).await,
        Command::Sync {
            dry_run,
            format,
            full,
            allow_deletes,
        } => {
            let opts = Options {
                full,
                allow_deletes,
                ..Default::default()
            };
            if dry_run {
                sync::plan(&config()?, format, opts).await
            } else {
                if let Ok(v) = view() {
                    service::refuse_if_daemon(&v.service.socket, full, allow_deletes)?;
                }
                refuse_root()?;
                sync::apply(&config()?, opts).await
            }
        }
        Command::Plan { format, full, only } => {
            let opts = Options {
                full,
                only_deletes: only == Some(Only::Deletes),
                ..Default::default()
            };
            sync::plan(&config()?, format, opts).await
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
            service::run(config_path(file)?.to_path_buf()).await
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
        Command::Man => init::man(),
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
        )),
        (None, true) => Ok(match load_view(file) {
            Ok(view) => health::check(
                &view.state_dir,
                ReadFrom::Live,
                max_age.unwrap_or_else(|| health::max_age(&view.service.schedule)),
            ),
            Err(e) => health::unknown(&e),
        }),
        (Some(dir), false) => status::run(&dir, ReadFrom::Given, None, runs, json),
        (None, false) => {
            let view = load_view(file)?;
            let ou = Some(view.target_base_dn.as_str());
            status::run(&view.state_dir, ReadFrom::Live, ou, runs, json)
        }
    }
}

/// The configuration file, from `--config` or `ABSYNC_CONFIG`.
fn config_path(file: Option<&Path>) -> anyhow::Result<&Path> {
    file.context("no configuration: give --config FILE or set ABSYNC_CONFIG")
}

fn load_config(file: Option<&Path>) -> anyhow::Result<Config> {
    let cfg = Config::load(config_path(file)?)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    Ok(cfg)
}

/// The part of the configuration the daemon's clients need (no passwords).
fn load_view(file: Option<&Path>) -> anyhow::Result<ServiceView> {
    Ok(ServiceView::load(config_path(file)?)?)
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
