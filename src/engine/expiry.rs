//! Agreements ending: which, on which day, and how many contacts their end
//! deletes. `check`, `status` and every run's log announce an end from
//! `[agreements] warn_days` before it; on the day, the removals go through
//! the rails as any other, with the reason naming the agreement's end
//! ([`Agreements::why_out_of_scope`]).

use std::collections::BTreeSet;

use serde::Serialize;
use time::Date;

use crate::agreements::{Agreement, Agreements};
use crate::state::{Snapshot, StateError};

/// One agreement ending soon, or already ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ending {
    pub id: String,
    /// The last day it is in force.
    #[serde(serialize_with = "day")]
    pub until: Date,
    /// Days from today to `until`: 0 on its last day, negative once ended.
    pub days_left: i64,
    /// Its organisations that no other agreement covers after it: their
    /// contacts are deleted.
    pub organisations: BTreeSet<String>,
    /// How many contacts absync holds for them (visible ones); `None` when
    /// the state was not read.
    pub contacts: Option<u64>,
}

fn day<S: serde::Serializer>(d: &Date, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.to_string())
}

impl Ending {
    pub fn ended(&self) -> bool {
        self.days_left < 0
    }

    /// What it deletes, in words: `12 contacts (RX1, RX2)`.
    fn deletes(&self) -> String {
        let orgs: Vec<&str> = self.organisations.iter().map(String::as_str).collect();
        match self.contacts {
            Some(n) => format!("{n} contacts ({})", orgs.join(", ")),
            None => format!(
                "the contacts of {} (how many is unknown: the state was not read)",
                orgs.join(", ")
            ),
        }
    }

    /// The announcement: the agreement, the day, the contacts its end
    /// deletes.
    pub fn text(&self) -> String {
        let id = &self.id;
        let until = self.until;
        if self.organisations.is_empty() {
            let when = if self.ended() { "ended" } else { "ends" };
            return format!(
                "agreement {id} {when} {until} (its last day in force); other agreements \
                 cover all its organisations: no contact is deleted"
            );
        }
        if self.ended() {
            return format!(
                "agreement {id} ended {until}: the next run deletes {}, at once, through the \
                 deletion threshold",
                self.deletes()
            );
        }
        let left = match self.days_left {
            0 => "today is its last day in force".to_string(),
            1 => "in 1 day".to_string(),
            n => format!("in {n} days"),
        };
        format!(
            "agreement {id} ends {until} ({left}): the first run after it deletes {}, at \
             once (no grace period)",
            self.deletes()
        )
    }
}

/// The agreements in the file that end within `warn_days` days of the
/// file's day, or have ended; the count of contacts not filled in. Pure.
pub fn ending(agreements: &Agreements, warn_days: u32) -> Vec<Ending> {
    let today = agreements.day;
    agreements
        .all
        .iter()
        .filter(|a| a.valid_from <= today)
        .filter_map(|a| {
            let days_left = (a.valid_until - today).whole_days();
            (days_left <= i64::from(warn_days)).then(|| Ending {
                id: a.id.clone(),
                until: a.valid_until,
                days_left,
                organisations: lost(agreements, a, days_left < 0),
                contacts: None,
            })
        })
        .collect()
}

/// The organisations whose contacts go with `a`: for one that ended, those
/// no agreement in force covers today; else those no agreement covers the
/// day after it ends.
fn lost(agreements: &Agreements, a: &Agreement, ended: bool) -> BTreeSet<String> {
    if !ended {
        return agreements.lost_at_end(a);
    }
    let grants = agreements.grants();
    a.organisations
        .iter()
        .filter(|o| !grants.contains_key(*o))
        .cloned()
        .collect()
}

/// Fills in how many contacts absync holds for each ending's
/// organisations (read only).
pub fn count(endings: &mut [Ending], snapshot: &Snapshot) -> Result<(), StateError> {
    for e in endings.iter_mut() {
        let mut n = 0;
        for org in &e.organisations {
            n += snapshot.visible_in_org(org)?;
        }
        e.contacts = Some(n);
    }
    Ok(())
}

/// The endings a run announces in its log: those still ahead (an ended
/// agreement's removals are the run's own, journaled with their reason).
pub fn announce(agreements: &Agreements, warn_days: u32, snapshot: &Snapshot) {
    let mut ahead: Vec<Ending> = ending(agreements, warn_days)
        .into_iter()
        .filter(|e| !e.ended())
        .collect();
    if let Err(e) = count(&mut ahead, snapshot) {
        tracing::debug!("counting the contacts of ending agreements: {e}");
    }
    for e in ahead {
        tracing::warn!(agreement = %e.id, until = %e.until, "{}", e.text());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use time::macros::date;

    fn agreement(id: &str, orgs: &[&str], from: Date, until: Date) -> Agreement {
        Agreement {
            id: id.into(),
            title: "t".into(),
            organisations: orgs.iter().map(|o| o.to_string()).collect(),
            attributes: BTreeSet::from(["sn".to_string()]),
            valid_from: from,
            valid_until: until,
        }
    }

    #[test]
    fn an_end_is_announced_from_warn_days_before_it() {
        let from = date!(2026 - 01 - 01);
        let all = vec![
            agreement("SOON", &["RX1", "RX2"], from, date!(2026 - 12 - 31)),
            agreement("LATER", &["RX2"], from, date!(2027 - 06 - 30)),
            agreement("GONE", &["RX3"], from, date!(2026 - 11 - 30)),
        ];
        let on = |day| Agreements {
            all: all.clone(),
            day,
            closed: Default::default(),
        };
        // 31 days ahead: not yet (the ended one is always named).
        let e = ending(&on(date!(2026 - 11 - 30)), 30);
        assert_eq!(
            e.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["GONE"]
        );
        assert!(!e[0].ended());
        // 30 days ahead: announced, with what its end deletes (RX2 stays).
        let e = ending(&on(date!(2026 - 12 - 01)), 30);
        assert_eq!(e.len(), 2);
        let soon = &e[0];
        assert_eq!((soon.id.as_str(), soon.days_left), ("SOON", 30));
        assert_eq!(soon.organisations, BTreeSet::from(["RX1".to_string()]));
        let mut soon = soon.clone();
        soon.contacts = Some(12);
        assert_eq!(
            soon.text(),
            "agreement SOON ends 2026-12-31 (in 30 days): the first run after it deletes \
             12 contacts (RX1), at once (no grace period)"
        );
        let gone = &e[1];
        assert!(gone.ended());
        assert!(
            gone.text().starts_with(
                "agreement GONE ended 2026-11-30: the next run deletes the contacts of RX3"
            ),
            "{}",
            gone.text()
        );
        // A window of 0: only on the last day.
        assert!(ending(&on(date!(2026 - 12 - 30)), 0)
            .iter()
            .all(|e| e.id != "SOON"));
        let last = ending(&on(date!(2026 - 12 - 31)), 0);
        assert_eq!((last[0].id.as_str(), last[0].days_left), ("SOON", 0));
        assert!(last[0].text().contains("today is its last day in force"));
    }
}
