//! The `absync` command. Parses arguments, sets up logging, runs one
//! command, and maps its outcome to the documented exit codes:
//! 0 = done, no failed entries; 1 = done, some entries failed (journaled);
//! 2 = could not run (configuration, connection, TLS, bind, state);
//! 3 = stopped by a safety rail: deletes held back (threshold, unhealthy source).
//! A reader that closes the pipe early (`absync status | head -1`) ends the
//! command quietly with exit 0.

use std::process::ExitCode;

use absync::engine::EXIT_COULD_NOT_RUN;
use clap::Parser;

mod cli;
mod commands;
mod csv_out;
mod out;
mod print;
mod progress;

/// The log level `-q` / `-v` ask for; `ABSYNC_LOG`, when set, wins.
fn log_level(quiet: bool, verbose: bool) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "error",
        (_, true) => "debug",
        _ => "info",
    }
}

/// Colours only on a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string (no-color.org).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Logs go to journald, with structured fields (run id, anchor,
/// operation), when systemd connected stderr to the journal; otherwise to
/// stderr, for people.
fn init_logging(level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let wanted = std::env::var("ABSYNC_LOG").unwrap_or_else(|_| level.into());
    // The file watcher's own events stay quiet unless asked for by name: at
    // trace level it logs every event in the watched directories, and a log
    // written into one of them would feed itself. The LDAP library's own
    // warnings (answers arriving for a search absync stopped reading, a
    // send on a connection the server closed) are its driver's bookkeeping:
    // absync reports every failure that matters itself, so they are shown
    // only when asked for by name too.
    let mut directives = wanted.clone();
    for (name, level) in [("notify", "warn"), ("ldap3", "error")] {
        if !wanted.contains(name) {
            directives.push_str(&format!(",{name}={level}"));
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=warn,ldap3=error"));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(filter)
                .with(
                    journald
                        .with_syslog_identifier("absync".into())
                        // Field names as written: RUN_ID, ANCHOR, OP.
                        .with_field_prefix(None),
                )
                .init();
            return;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
        .init();
}

fn main() -> ExitCode {
    // Before anything holds a password: no core dump, no ptrace by others.
    if let Err(e) = absync::os::forbid_core_dumps() {
        eprintln!("absync: cannot disable core dumps (prctl PR_SET_DUMPABLE): {e}");
        return ExitCode::from(EXIT_COULD_NOT_RUN);
    }
    let cli = cli::Cli::parse();
    init_logging(log_level(cli.quiet, cli.verbose));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("absync: cannot start: {e}");
            return ExitCode::from(EXIT_COULD_NOT_RUN);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        // The reader had what it wanted (`| head -1`): a quiet success.
        Err(e) if out::pipe_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever a server or an entry put in the message.
            eprintln!("absync: {}", absync::text::Shown(&format!("{e:#}")));
            ExitCode::from(EXIT_COULD_NOT_RUN)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_and_verbose_set_the_log_level() {
        assert_eq!(log_level(false, false), "info");
        assert_eq!(log_level(true, false), "error");
        assert_eq!(log_level(false, true), "debug");
    }

    #[test]
    fn no_color_turns_colours_off_unless_empty() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
