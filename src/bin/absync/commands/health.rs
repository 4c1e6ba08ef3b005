//! `absync status --check`: one line for a monitoring system (Nagios,
//! Icinga, Sensu, ...), with the plugin exit codes and perfdata. The facts
//! are read from the state (read-only) and the daemon's status file; the
//! verdict is a pure function of them ([`assess`]).

use crate::out::outln;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use absync::service::DaemonStatus;
use absync::state::verify::{self, Verdict};
use absync::state::{ReadFrom, Snapshot};

/// The plugin states, in the order of their exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl State {
    fn word(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }
}

/// --max-age without a schedule to go by (`--state`, a cron schedule).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(86_400);

/// --max-age by default: three times the schedule's interval (a run may
/// fail once or twice and retry), or a day with a cron schedule.
pub fn max_age(schedule: &absync::config::Schedule) -> Duration {
    match schedule {
        absync::config::Schedule::Interval(d) => *d * 3,
        _ => DEFAULT_MAX_AGE,
    }
}

/// UNKNOWN: the configuration could not be read.
pub fn unknown(e: &anyhow::Error) -> ExitCode {
    // A closed pipe costs the monitoring agent the text, not the state.
    let _ = outln!(
        "ABSYNC UNKNOWN - {}",
        absync::text::Shown(&format!("{e:#}"))
    );
    ExitCode::from(State::Unknown as u8)
}

/// What the check looks at.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Seconds since the last run that went to its end (not "failed" nor
    /// "died"), and
    /// its id; `None` when none has.
    pub last_completed: Option<(i64, u64)>,
    /// The status of the newest run, if any.
    pub last_status: Option<String>,
    /// How many of the newest runs failed in a row.
    pub failed_in_a_row: u32,
    /// Deletes the last run held back (its counts).
    pub withheld: u64,
    /// From the running daemon's status file.
    pub daemon_failures: u32,
    pub config_error: Option<String>,
    pub daemon_running: bool,
    /// Why the journal's newest records fail verify, if they do.
    pub broken: Option<String>,
    /// (agreement id, days until its valid_until; negative: past).
    pub agreements: Vec<(String, i64)>,
    /// An agreement ending within this many days is a warning
    /// (`[agreements] warn_days`).
    pub warn_days: i64,
    /// Agreements naming a closed organisation, as the last run that read
    /// the organisations' status found them.
    pub names_closed: Vec<String>,
    pub managed: u64,
}

/// The verdict: a state, the reasons (worst first) and the perfdata.
pub fn assess(f: &Facts, max_age: Duration) -> (State, Vec<String>) {
    let mut found: Vec<(State, String)> = Vec::new();
    let max = max_age.as_secs();
    match f.last_completed {
        None => found.push((State::Critical, "no run has completed yet".into())),
        Some((id, age)) if age > max => found.push((
            State::Critical,
            format!("the last completed run ({id}) ended {age}s ago, over --max-age {max}s"),
        )),
        Some(_) => {}
    }
    if let Some(s) = f.last_status.as_deref() {
        if absync::engine::removals::holds_deletes(s) {
            found.push((
                State::Critical,
                format!(
                    "{s}: {} deletes wait for an admin (absync resync --allow-deletes N)",
                    f.withheld
                ),
            ));
        }
    }
    if let Some(e) = &f.config_error {
        found.push((State::Critical, format!("configuration refused: {e}")));
    }
    if let Some(why) = &f.broken {
        found.push((State::Critical, format!("journal fails verify: {why}")));
    }
    for (id, days) in &f.agreements {
        if *days < 0 {
            found.push((State::Critical, format!("agreement {id} has expired")));
        } else if *days <= f.warn_days {
            found.push((
                State::Warning,
                format!("agreement {id} ends in {days} days"),
            ));
        }
    }
    for n in &f.names_closed {
        found.push((State::Warning, n.clone()));
    }
    let failures = f.daemon_failures.max(f.failed_in_a_row);
    if failures >= 2 {
        found.push((
            State::Warning,
            format!("{failures} runs in a row could not run"),
        ));
    }
    found.sort_by_key(|(s, _)| std::cmp::Reverse(*s));
    let state = found.first().map(|(s, _)| *s).unwrap_or(State::Ok);
    (state, found.into_iter().map(|(_, m)| m).collect())
}

/// `label=value;warn;crit` pairs for the perfdata.
fn perfdata(f: &Facts, max_age: Duration) -> String {
    let age = f
        .last_completed
        .map(|(_, a)| format!("{a}s"))
        .unwrap_or_else(|| "U".into());
    let ending = f.agreements.iter().map(|(_, d)| *d).min();
    format!(
        "last_completed_age={age};;{} failures={};2 withheld={};;1 managed={} \
         daemon_running={} agreement_days_left={};{};0",
        max_age.as_secs(),
        f.daemon_failures.max(f.failed_in_a_row),
        f.withheld,
        f.managed,
        u8::from(f.daemon_running),
        ending.map(|d| d.to_string()).unwrap_or_else(|| "U".into()),
        f.warn_days,
    )
}

/// Reads the facts; an error means the state could not be read (UNKNOWN).
fn gather(snapshot: &Snapshot, state_dir: &Path, warn_days: u32) -> anyhow::Result<Facts> {
    let runs = snapshot.runs(50)?;
    let now = time::OffsetDateTime::now_utc();
    let rfc = &time::format_description::well_known::Rfc3339;
    let mut f = Facts {
        last_completed: runs.iter().find_map(|r| {
            let ended = r.ended_at.as_deref()?;
            if !absync::state::totals::completed(&r.status) {
                return None;
            }
            let t = time::OffsetDateTime::parse(ended, rfc).ok()?;
            Some((r.id, (now - t).whole_seconds().max(0) as u64))
        }),
        last_status: runs.first().map(|r| r.status.clone()),
        failed_in_a_row: runs
            .iter()
            .filter(|r| r.ended_at.is_some())
            .take_while(|r| r.status.starts_with("failed"))
            .count() as u32,
        withheld: runs
            .first()
            .and_then(|r| r.counts.as_ref())
            .map_or(0, |c| c.withheld),
        managed: snapshot.count_visible()?,
        warn_days: i64::from(warn_days),
        names_closed: absync::engine::organisations::last(snapshot)?
            .map(|(_, list)| list.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default(),
        ..Default::default()
    };
    if let Some(d) = DaemonStatus::read(state_dir) {
        f.daemon_running = true;
        f.daemon_failures = d.consecutive_failures;
        f.config_error = d.config_error;
    }
    // The newest records only: `journal verify` walks the whole chain.
    if let Verdict::Broken { record, why } = verify::verify_tail(snapshot, verify::CHECK_TAIL)? {
        f.broken = Some(format!("record {record}: {why}"));
    }
    f.agreements = agreements(snapshot, now.date())?;
    Ok(f)
}

/// The agreements in the newest journaled terms, with the days left until
/// each one's `valid_until`.
fn agreements(snapshot: &Snapshot, today: time::Date) -> anyhow::Result<Vec<(String, i64)>> {
    let Some(terms) = absync::state::audit::terms_at(snapshot, None)? else {
        return Ok(Vec::new());
    };
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let mut out = Vec::new();
    let detail = terms.record.detail.unwrap_or_default();
    for a in detail["agreements"].as_array().into_iter().flatten() {
        let id = a["id"].as_str().unwrap_or("?").to_string();
        let until = a["valid_until"].as_str().unwrap_or_default();
        if let Ok(d) = time::Date::parse(until, &fmt) {
            out.push((id, (d - today).whole_days()));
        }
    }
    Ok(out)
}

/// Prints the plugin line (and one line per further reason) and returns
/// the plugin exit code.
pub fn check(state_dir: &Path, from: ReadFrom, max_age: Duration, warn_days: u32) -> ExitCode {
    let facts = Snapshot::open_read_only(state_dir, from)
        .map_err(anyhow::Error::from)
        .and_then(|s| gather(&s, state_dir, warn_days));
    let (state, reasons, perf) = match facts {
        Err(e) => (
            State::Unknown,
            vec![format!("cannot read the state: {e:#}")],
            String::new(),
        ),
        Ok(f) => {
            let (state, mut reasons) = assess(&f, max_age);
            if reasons.is_empty() {
                reasons.push(match f.last_completed {
                    Some((id, age)) => format!(
                        "last run {id} completed {age}s ago; {} objects managed",
                        f.managed
                    ),
                    None => "no run yet".into(),
                });
            }
            (state, reasons, perfdata(&f, max_age))
        }
    };
    let mut lines = reasons.into_iter();
    let first = lines.next().unwrap_or_default();
    let _ = if perf.is_empty() {
        outln!("ABSYNC {} - {}", state.word(), absync::text::Shown(&first))
    } else {
        outln!(
            "ABSYNC {} - {} | {perf}",
            state.word(),
            absync::text::Shown(&first)
        )
    };
    for l in lines {
        let _ = outln!("{}", absync::text::Shown(&l));
    }
    ExitCode::from(state as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Facts {
        Facts {
            last_completed: Some((7, 60)),
            last_status: Some("ok".into()),
            managed: 10,
            agreements: vec![("DSA-1".into(), 300)],
            warn_days: 30,
            ..Default::default()
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_recent_good_run_is_ok() {
        assert_eq!(assess(&good(), DAY), (State::Ok, vec![]));
    }

    #[test]
    fn the_warning_window_is_the_configured_one_and_a_closed_organisation_warns() {
        let ending = |warn_days| Facts {
            agreements: vec![("DSA-1".into(), 45)],
            warn_days,
            ..good()
        };
        assert_eq!(assess(&ending(30), DAY).0, State::Ok);
        assert_eq!(
            assess(&ending(60), DAY),
            (
                State::Warning,
                vec!["agreement DSA-1 ends in 45 days".into()]
            )
        );
        let closed = "agreement DSA-1 names RX1, which is closed (no successor recorded)";
        let f = Facts {
            names_closed: vec![closed.into()],
            ..good()
        };
        assert_eq!(assess(&f, DAY), (State::Warning, vec![closed.to_string()]));
    }

    #[test]
    fn each_situation_has_its_state() {
        let crit = |f: Facts| assert_eq!(assess(&f, DAY).0, State::Critical, "{f:?}");
        let warn = |f: Facts| assert_eq!(assess(&f, DAY).0, State::Warning, "{f:?}");
        crit(Facts {
            last_completed: Some((7, 90_000)),
            ..good()
        });
        crit(Facts {
            last_completed: None,
            ..good()
        });
        crit(Facts {
            last_status: Some("stopped: deletion threshold".into()),
            ..good()
        });
        crit(Facts {
            config_error: Some("bad".into()),
            ..good()
        });
        crit(Facts {
            broken: Some("record 3".into()),
            ..good()
        });
        crit(Facts {
            agreements: vec![("DSA-1".into(), -1)],
            ..good()
        });
        warn(Facts {
            agreements: vec![("DSA-1".into(), 30)],
            ..good()
        });
        warn(Facts {
            daemon_failures: 2,
            ..good()
        });
        warn(Facts {
            failed_in_a_row: 2,
            ..good()
        });
        assert_eq!(
            assess(
                &Facts {
                    failed_in_a_row: 1,
                    ..good()
                },
                DAY
            )
            .0,
            State::Ok
        );
    }

    #[test]
    fn the_worst_reason_comes_first() {
        let f = Facts {
            failed_in_a_row: 3,
            broken: Some("record 3: hash".into()),
            ..good()
        };
        let (state, reasons) = assess(&f, DAY);
        assert_eq!(state, State::Critical);
        assert!(
            reasons[0].starts_with("journal fails verify"),
            "{reasons:?}"
        );
        assert_eq!(reasons.len(), 2);
    }
}
