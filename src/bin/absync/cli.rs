//! The command line as clap reads it: commands, their flags and help
//! text. Nothing here runs anything.

use std::path::PathBuf;

use absync::engine::render::Format;
use clap::{Parser, Subcommand};

/// absync: copies the NHS Directory entries that data-sharing agreements
/// allow into Active Directory, and journals every change.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, short, env = "ABSYNC_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Check configuration, mapping and agreements; bind to both servers;
    /// check the target OU exists and the account may create objects there.
    Check,
    /// Run one synchronisation.
    Sync {
        /// Compute and print the plan, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format of the plan with --dry-run.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
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
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
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
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff).
    Man,
    /// Is anything in the managed or quarantine OU that no agreement
    /// allows? Reads every object there and says, for each, whether it is
    /// covered, hidden, not covered or past its grace period (violations),
    /// or not absync's. Writes nothing. Exit 1 on a violation.
    Audit {
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
        /// held, configuration refused, journal fails verify, an agreement
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
    /// One line per run: status, counts, duration.
    Runs {
        /// Only runs started on or after this day (YYYY-MM-DD) or time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
    },
    /// Every record of one run.
    Show {
        run: i64,
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
    },
    /// The whole life of one person's object, by anchor, mail or DN.
    History {
        who: String,
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
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
    },
    /// Everything done under one data-sharing agreement; with --at, its
    /// terms on that day.
    Agreement {
        id: String,
        /// A day (YYYY-MM-DD: its end) or an RFC 3339 time: show the
        /// agreement's terms as the agreements file gave them then.
        #[arg(long)]
        at: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Output,
    },
    /// When the config, mapping and agreements files changed.
    ConfigChanges {
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
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
        /// Replace personal values (DNs, attribute values) with hashes.
        #[arg(long)]
        redact: bool,
    },
}
