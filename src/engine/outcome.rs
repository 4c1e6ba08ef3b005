//! How a run ended: its [`Outcome`] (counts, status, how the source was
//! read), the summary people read, the exit code, and why a run could not
//! run at all ([`RunError`]).

use std::time::Duration;

use crate::config::FileError;
use crate::engine::apply::ApplyError;
use crate::ldap::LdapError;
use crate::state::runs::Counts;
use crate::state::StateError;

#[derive(Debug)]
pub struct Outcome {
    pub run_id: Option<i64>,
    pub counts: Counts,
    pub duration: Duration,
    pub status: Status,
    pub pull: PullReport,
    /// The servers used, and any failover.
    pub servers: crate::engine::failover::Servers,
}

/// How the source was read, for the summary and the log.
#[derive(Debug, Clone, Default)]
pub struct PullReport {
    /// `full` or `delta`.
    pub mode: &'static str,
    /// Why a full pull (no cookie, scope changed, cookie refused, ...).
    pub why: Option<String>,
    /// Entries the source reported gone since the cookie (delta).
    pub gone: u64,
    /// Entries named unchanged by a delta's present phase.
    pub present: u64,
    /// Time spent waiting for the source.
    pub source_time: Duration,
    /// The delta used `modifyTimestamp` rather than RFC 4533.
    pub by_timestamp: bool,
}

impl PullReport {
    fn text(&self) -> String {
        let secs = self.source_time.as_secs_f64();
        match (self.mode, &self.why) {
            ("delta", _) if self.present > 0 => format!(
                "pull: delta (present phase: {} unchanged), {} gone, source time {secs:.3} s",
                self.present, self.gone
            ),
            ("delta", _) if self.by_timestamp => format!(
                "pull: delta (modifyTimestamp), {} gone, source time {secs:.3} s",
                self.gone
            ),
            ("delta", _) => format!("pull: delta, {} gone, source time {secs:.3} s", self.gone),
            (_, Some(why)) => format!("pull: full ({why}), source time {secs:.3} s"),
            _ => format!("pull: {}, source time {secs:.3} s", self.mode),
        }
    }
}

/// Exit code of a run that could not run at all (a [`RunError`]).
pub const EXIT_COULD_NOT_RUN: u8 = 2;

impl Outcome {
    /// The exit code of a run that ran, for the CLI and a resync alike:
    /// 3 when a safety rail held deletes back, 1 when entries failed, 0
    /// otherwise. ([`EXIT_COULD_NOT_RUN`] is for runs that could not run.)
    pub fn exit_code(&self) -> u8 {
        match self.status {
            Status::Withheld(_) => 3,
            _ if self.counts.failed > 0 => 1,
            _ => 0,
        }
    }

    /// The summary people read after a run (`what`: sync or plan).
    pub fn summary(&self, what: &str) -> String {
        let c = &self.counts;
        let run = self
            .run_id
            .map(|id| format!(" run {id}"))
            .unwrap_or_default();
        let verb = if what == "plan" { "would be " } else { "" };
        let mut recovered = if c.recovered > 0 {
            format!("; recovered after an interrupted run {}", c.recovered)
        } else {
            String::new()
        };
        if c.waiting > 0 {
            recovered.push_str(&format!(
                "; left alone, waiting for the DC a change went to {}",
                c.waiting
            ));
        }
        let servers = self
            .servers
            .text()
            .map(|t| format!("\n  {t}"))
            .unwrap_or_default();
        format!(
            "absync {what}{run}: {} in {:.1} s\n  {}{servers}\n  pulled {}, in scope {}, out of scope {}, leavers {}, rejected {}, attributes dropped {}\n  {verb}added {}, modified {}, renamed {}, deleted {}; hidden {}, restored {}, held back {}, drift {}; conflicts {}, failed {}{recovered}",
            self.status.text(),
            self.duration.as_secs_f64(),
            self.pull.text(),
            c.pulled,
            c.in_scope,
            c.out_of_scope,
            c.leavers,
            c.rejected,
            c.dropped_attributes,
            c.added,
            c.modified,
            c.renamed,
            c.deleted,
            c.hidden,
            c.restored,
            c.withheld,
            c.drift,
            c.conflicts,
            c.failed,
        )
    }
}

/// Why a run could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Ldap(#[from] LdapError),
    #[error(transparent)]
    State(#[from] StateError),
    /// A write outside the containers (handled per entry; never ends a run).
    #[error(transparent)]
    Outside(#[from] crate::engine::apply::OutsideOu),
    #[error("writing the plan: {0}")]
    Output(#[from] std::io::Error),
    #[error(
        "the source read ended early after {pulled} entries ({cause}); source unhealthy: \
         no deletes were applied"
    )]
    SourceIncomplete { pulled: u64, cause: Box<LdapError> },
    /// A stop was asked for; the run ended between two entries, with
    /// everything applied before it committed and journaled.
    #[error("interrupted (shutdown) after {pulled} entries; {deletes}")]
    Interrupted { pulled: u64, deletes: &'static str },
    #[error("{what} {dn} does not exist on {url}; create it (and delegate it to the account) or fix the configuration")]
    MissingContainer {
        what: &'static str,
        dn: String,
        url: String,
    },
}

impl RunError {
    /// The source read ended early after `pulled` entries.
    pub(crate) fn incomplete(pulled: u64, cause: LdapError) -> RunError {
        RunError::SourceIncomplete {
            pulled,
            cause: Box::new(cause),
        }
    }
}

impl From<ApplyError> for RunError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Ldap(e) => RunError::Ldap(e),
            ApplyError::State(e) => RunError::State(e),
            ApplyError::Outside(e) => RunError::Outside(e),
        }
    }
}

/// How a run ended, for the runs table, `absync status` and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Some entries were refused by the target (journaled, retried).
    Failures,
    /// A safety rail held deletes back; the text says which.
    Withheld(String),
}

impl Status {
    pub fn text(&self) -> String {
        match self {
            Status::Ok => "ok".into(),
            Status::Failures => "done with failures".into(),
            Status::Withheld(why) => why.clone(),
        }
    }
}
