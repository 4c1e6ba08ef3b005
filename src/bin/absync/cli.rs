//! The command line as clap reads it: commands, their flags and help
//! text. Nothing here runs anything.

use std::path::PathBuf;

use absync::engine::render::Format;
use clap::{Parser, Subcommand};

/// The exit codes, as `absync --help` ends.
const EXIT_CODES: &str = "\
Exit codes of sync, plan and resync:
  0  done, no entry failed
  1  done, some entries failed (journaled, retried by the next run)
  2  could not run: usage, configuration, connection, TLS, bind, state
  3  stopped by a safety rail: deletes held back for an admin
plan --detailed-exitcode: 0 nothing to do, 2 changes planned, 3 a real run
would stop on a safety rail (an error that stops the plan is 2 as well, with
a message on stderr).
status --check (a Nagios/Icinga plugin): 0 OK, 1 WARNING, 2 CRITICAL,
3 UNKNOWN.
check: 0 no fatal problem (warnings are printed), 2 a fatal problem.
Other commands: 0 done, 1 what they check failed (audit, journal verify),
2 could not run. A reader that closes the pipe early (| head -1) ends any
command quietly with exit 0 (sync: with its run's code).

Environment: ABSYNC_CONFIG (the configuration file; default
/etc/absync/absync.toml when it exists), ABSYNC_LOG (log filter; wins over
-q and -v), NO_COLOR (no colours in the log).";

/// absync: copies the NHS Directory entries that data-sharing agreements
/// allow into Active Directory, and journals every change.
#[derive(Parser)]
#[command(version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Configuration file [default: /etc/absync/absync.toml, when it
    /// exists].
    #[arg(long, short, env = "ABSYNC_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Log only errors (on stderr or to the journal).
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log debug messages too.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Check configuration, mapping and agreements against each other;
    /// then every server of both sides (bind, the host name its certificate
    /// was verified for, which server it is), and on the first of each side
    /// that works the source base and a sample of entries, the target OUs,
    /// rights and schema. Reports every problem in one pass: exit 2 when
    /// one is fatal (a side with no server working among them), 0
    /// otherwise (warnings printed: a server down while another works).
    Check {
        /// How to print the checks: a line each, or one JSON object.
        #[arg(long, value_enum, default_value = "table")]
        format: CheckFormat,
        /// Check only the files: no server contacted, no password read
        /// (for the admin's CI).
        #[arg(long)]
        offline: bool,
    },
    /// Run one synchronisation.
    Sync {
        /// Compute and print the plan, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format of the plan (with --dry-run only).
        #[arg(long, value_enum, default_value = "table", requires = "dry_run")]
        format: Format,
        /// Print the run's summary on stdout as one JSON object (run id,
        /// status, exit code, duration, pull, counts) instead of the
        /// summary on stderr; with --dry-run, instead of the plan.
        #[arg(long, value_enum, value_name = "FORMAT", conflicts_with = "format")]
        summary: Option<SummaryFormat>,
        /// Also read the live target OU and repair drift.
        #[arg(long)]
        full: bool,
        /// Apply at most N deletes that a safety rail held back (once; the
        /// override and the user are journaled).
        #[arg(long, value_name = "N")]
        allow_deletes: Option<u64>,
    },
    /// Print what a sync would do, without writing anything.
    Plan {
        /// Output format of the plan.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Print the plan's summary on stdout as one JSON object (status,
        /// exit code of a real run, duration, pull, counts) instead of the
        /// plan.
        #[arg(long, value_enum, value_name = "FORMAT", conflicts_with = "format")]
        summary: Option<SummaryFormat>,
        /// Exit 0 when there is nothing to do, 2 when changes are planned,
        /// 3 when a real run would stop on a safety rail.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Show what a full run (`sync --full`) would repair.
        #[arg(long)]
        full: bool,
        /// Show only deletes, hides and deletes held back.
        #[arg(long, value_enum)]
        only: Option<Only>,
    },
    /// The audit journal: verify, query, export.
    Journal {
        /// Read the journal in this state directory instead of the one the
        /// configuration names (no configuration or passwords needed).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// With --format csv: start with a UTF-8 byte-order mark, for
        /// spreadsheets (`export` always writes one).
        #[arg(long, global = true)]
        bom: bool,
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// The state database: a consistent backup (while absync runs),
    /// compaction.
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// Run as a service: sync on the schedule until stopped (SIGTERM);
    /// reload on SIGHUP or when a configuration file changes.
    Run,
    /// Ask the running daemon to sync now, and wait for its summary.
    Resync {
        /// A full reconcile (reads the live target too).
        #[arg(long)]
        full: bool,
        /// Return once the daemon has the request.
        #[arg(long)]
        no_wait: bool,
        /// Release at most N deletes a safety rail held back (once; the
        /// override and the requesting user are journaled).
        #[arg(long, value_name = "N")]
        allow_deletes: Option<u64>,
    },
    /// Write a commented starter configuration.
    Init {
        /// Where to write it ("-" for standard output).
        #[arg(default_value = "-")]
        path: PathBuf,
    },
    /// Print shell completions.
    Completions {
        /// The shell to print completions for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page absync(1) (roff).
    Man {
        /// Write every page into DIR instead: absync.1, one page per
        /// subcommand (absync-sync.1, ...) and absync.toml.5.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Is anything in the managed or quarantine OU that no agreement
    /// allows? Reads every object there and says, for each, whether it is
    /// covered, hidden, not covered or past its grace period (violations),
    /// or not absync's. Writes nothing. Exit 1 on a violation.
    Audit {
        /// Output format: a table for people, JSON or CSV for tools.
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
        /// Leave out covered objects and hidden ones in their grace period
        /// (the counts still include them).
        #[arg(long)]
        hide_covered: bool,
        /// With --format csv: start with a UTF-8 byte-order mark, for
        /// spreadsheets.
        #[arg(long)]
        bom: bool,
    },
    /// Show the last runs, their status, and what is managed.
    Status {
        /// How many runs to show.
        #[arg(long, default_value = "10")]
        runs: u32,
        /// Read this state directory instead of the configuration's (works
        /// while the configuration file is broken).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Output: a table for people, or one JSON object.
        #[arg(long, value_enum, default_value = "table")]
        format: StatusFormat,
        /// One line for a monitoring system (Nagios/Icinga plugin): exit 0
        /// OK, 1 WARNING (runs failing in a row, an agreement ending within
        /// 30 days), 2 CRITICAL (no run completed within --max-age, deletes
        /// held, configuration refused, the journal's newest 500 records fail
        /// verify (`journal verify` checks it all), an agreement
        /// expired), 3 UNKNOWN (the state cannot be read); with perfdata.
        #[arg(long, conflicts_with = "format")]
        check: bool,
        /// With --check: how old the last completed run may be (30m, 12h,
        /// 1d) [default: three times the schedule's interval; 1d with a
        /// cron schedule or --state].
        #[arg(long, value_name = "DURATION", requires = "check", value_parser = absync::config::parse_duration)]
        max_age: Option<std::time::Duration>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryFormat {
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    Deletes,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Subcommand)]
pub enum JournalCommand {
    /// Recompute the hash chain and report the first broken record, or
    /// "intact"; with --public-key, also check every signed head and prune.
    Verify {
        /// A public key (PEM) that may have signed the journal; give it
        /// again for each key used across a rotation.
        #[arg(long = "public-key", value_name = "FILE")]
        public_key: Vec<PathBuf>,
        /// A head hash kept elsewhere (the system log's "journal head
        /// signed"): it must be a record of the journal.
        #[arg(long, value_name = "HASH")]
        expect_head: Option<String>,
        /// Verify a JSONL export (journal export --format jsonl) instead of
        /// the state database.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Make the journal's signing key pair: the private key (for [journal]
    /// signing_key, kept outside the state directory) and the public key
    /// (for auditors).
    Keygen {
        /// Where to write the private key (mode 0600; never overwritten).
        #[arg(long, value_name = "FILE")]
        private: PathBuf,
        /// Where to write the public key (mode 0644; never overwritten).
        #[arg(long, value_name = "FILE")]
        public: PathBuf,
    },
    /// One line per run: status, counts, duration (the newest 50, unless
    /// --since, --last or --all say otherwise).
    Runs {
        /// Only runs started on or after this day (YYYY-MM-DD) or time
        /// (all of them, unless --last is given too).
        #[arg(long)]
        since: Option<String>,
        /// Only the newest N runs [default: 50 without --since].
        #[arg(long, value_name = "N", conflicts_with = "all")]
        last: Option<u32>,
        /// Every run the journal holds.
        #[arg(long)]
        all: bool,
        /// Output format: a table for people, JSON or CSV for tools.
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
    },
    /// Every record of one run.
    Show {
        /// The run's number (journal runs lists them).
        run: i64,
        /// Output format: a table for people, JSON or CSV for tools.
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
    },
    /// The whole life of one person's object, by anchor, mail or DN.
    History {
        /// The object's anchor (source entryUUID), a mail address, or a DN.
        who: String,
        /// Output format: a table for people, JSON or CSV for tools.
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
    },
    /// The objects and attributes held in the target on a day.
    Held {
        /// A day (YYYY-MM-DD: its end) or an RFC 3339 time.
        #[arg(long)]
        at: String,
        /// Only one organisation (ODS code).
        #[arg(long)]
        org: Option<String>,
        /// Only what was held under this agreement.
        #[arg(long)]
        agreement: Option<String>,
        /// Output format: a table for people, JSON or CSV for tools.
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
    },
    /// Everything done under one data-sharing agreement; with --at, its
    /// terms on that day.
    Agreement {
        /// The agreement's id, as the agreements file names it.
        id: String,
        /// A day (YYYY-MM-DD: its end) or an RFC 3339 time: show the
        /// agreement's terms as the agreements file gave them then.
        #[arg(long)]
        at: Option<String>,
        /// Output format: a table for people, JSON or CSV for tools.
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
    },
    /// When the config, mapping and agreements files changed.
    ConfigChanges {
        /// Output format: a table for people, JSON or CSV for tools.
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
    },
    /// The journal of a period as one HTML page to look at: the verdict,
    /// charts of the changes, deletes, rails and overrides, changes of the
    /// files and agreements, open conflicts, holdings, compliance. The page
    /// loads nothing and runs no script.
    Report {
        /// The first day (YYYY-MM-DD: its start) or an RFC 3339 time.
        #[arg(long)]
        from: String,
        /// The last day (its end) or time [default: now].
        #[arg(long)]
        to: Option<String>,
        /// The HTML file to write.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
        /// A public key (PEM) that may have signed the journal, as for
        /// `verify`: the verdict then includes the signatures.
        #[arg(long = "public-key", value_name = "FILE")]
        public_key: Vec<PathBuf>,
    },
    /// Every record (or those the options select), for other tools.
    Export {
        /// From this day (YYYY-MM-DD: its start) or RFC 3339 time on.
        #[arg(long)]
        since: Option<String>,
        /// Up to this day (its end) or time.
        #[arg(long)]
        until: Option<String>,
        /// Only the records of this run.
        #[arg(long)]
        run: Option<i64>,
        /// Only the records of this organisation (ODS code).
        #[arg(long)]
        org: Option<String>,
        /// Only the records made under this agreement.
        #[arg(long)]
        agreement: Option<String>,
        /// Output format: CSV, or JSON Lines (one record a line).
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
        /// Replace personal values (DNs, attribute values) with hashes.
        #[arg(long)]
        redact: bool,
    },
}

#[derive(Subcommand)]
pub enum StateCommand {
    /// Write a consistent copy of the state database (snapshot and journal)
    /// to FILE with SQLite's online backup, while the daemon runs or not;
    /// then verify the copy's journal. FILE is created (mode 0600), never
    /// replaced. Exit 1 if the copy's journal does not verify.
    Backup {
        /// The file to write (must not exist).
        file: PathBuf,
    },
    /// Give back the space pruning freed (SQLite's VACUUM). Needs the state
    /// to itself: refused while the daemon or a sync runs. Changes no
    /// record.
    Compact,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn missing_help(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if !matches!(id, "help" | "version") && arg.get_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{path} {}", sub.get_name()));
            }
            missing_help(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }

    #[test]
    fn every_command_and_argument_has_help() {
        Cli::command().debug_assert();
        let mut missing = Vec::new();
        missing_help(&Cli::command(), "absync", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    #[test]
    fn help_lists_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        for code in ["0  done", "1  done", "2  could not run", "3  stopped"] {
            assert!(help.contains(code), "{code}: {help}");
        }
    }

    #[test]
    fn format_without_dry_run_is_a_usage_error() {
        let e = Cli::try_parse_from(["absync", "sync", "--format", "ldif"])
            .err()
            .expect("refused");
        assert_eq!(e.exit_code(), 2);
        assert!(Cli::try_parse_from(["absync", "sync", "--dry-run", "--format", "ldif"]).is_ok());
        assert!(Cli::try_parse_from(["absync", "sync"]).is_ok());
    }
}
