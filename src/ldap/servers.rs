//! Several servers per side: the order they are tried in, and what each one
//! last did.
//!
//! A side (`[source] urls`, `[target] urls`) lists its servers in order of
//! preference. A server that failed is avoided for `failback_after`; after
//! that the preferred one is tried first again. When every server is in
//! its back-off, all are still tried (oldest failure first): a run never
//! gives up without asking each one.
//!
//! The memory lives in the side's [`super::Endpoint`], so the daemon keeps
//! it from run to run (and reports it: `status`, `absync_server_up`); a
//! one-shot command starts with none.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What one server last did, as `status` and the metrics show it (the
/// daemon keeps it in `daemon.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerState {
    pub url: String,
    /// `None` until the server was first tried.
    pub up: Option<bool>,
    /// The directory server's own name, when it gives one (an AD DC's
    /// `dsServiceName`).
    pub name: Option<String>,
    /// Why it failed last, while it is down.
    pub error: Option<String>,
    /// RFC 3339: when it was last tried.
    pub checked_at: Option<String>,
    /// The server the side's last connection went to.
    pub in_use: bool,
}

#[derive(Debug, Clone)]
struct Seen {
    up: bool,
    at: Instant,
    at_text: String,
    name: Option<String>,
    error: Option<String>,
}

/// The servers' health, shared by every connection to one side.
#[derive(Debug, Default)]
pub struct Health {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    seen: HashMap<String, Seen>,
    /// The server the last connection went to.
    current: Option<String>,
}

fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Health {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panic while holding the lock leaves plain data behind: use it.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut inner)
    }

    /// The server answered and bound.
    pub fn up(&self, url: &str, name: Option<String>) {
        self.with(|i| {
            let name = name.or_else(|| i.seen.get(url).and_then(|e| e.name.clone()));
            i.current = Some(url.to_string());
            i.seen.insert(
                url.to_string(),
                Seen {
                    up: true,
                    at: Instant::now(),
                    at_text: now_text(),
                    name,
                    error: None,
                },
            );
        });
    }

    /// Names the server (an AD DC's `dsServiceName`) once it is known.
    pub fn name(&self, url: &str, name: &str) {
        self.with(|i| {
            if let Some(e) = i.seen.get_mut(url) {
                e.name = Some(name.to_string());
            }
        });
    }

    /// The server failed (`why`, without any password).
    pub fn down(&self, url: &str, why: &str) {
        self.with(|i| {
            let name = i.seen.get(url).and_then(|e| e.name.clone());
            i.seen.insert(
                url.to_string(),
                Seen {
                    up: false,
                    at: Instant::now(),
                    at_text: now_text(),
                    name,
                    error: Some(why.to_string()),
                },
            );
        });
    }

    /// Takes over what `old` knows (a reloaded configuration keeps each
    /// server's back-off and the one in use).
    pub fn adopt(&self, old: &Health) {
        let (seen, current) = old.with(|i| (i.seen.clone(), i.current.clone()));
        self.with(|i| {
            i.seen = seen;
            i.current = current;
        });
    }

    /// The order to try `urls` in now.
    pub fn order(&self, urls: &[String], failback_after: Duration) -> Vec<String> {
        let now = Instant::now();
        self.with(|i| {
            let failed: Vec<Option<Instant>> = urls
                .iter()
                .map(|u| i.seen.get(u).filter(|e| !e.up).map(|e| e.at))
                .collect();
            order(urls, &failed, failback_after, now)
        })
    }

    /// Each configured server's state, in the configured order.
    pub fn states(&self, urls: &[String]) -> Vec<ServerState> {
        self.with(|i| {
            let current = i.current.as_deref();
            urls.iter()
                .map(|u| match i.seen.get(u) {
                    Some(e) => ServerState {
                        url: u.clone(),
                        up: Some(e.up),
                        name: e.name.clone(),
                        error: e.error.clone(),
                        checked_at: Some(e.at_text.clone()),
                        in_use: current == Some(u.as_str()),
                    },
                    None => ServerState {
                        url: u.clone(),
                        up: None,
                        name: None,
                        error: None,
                        checked_at: None,
                        in_use: false,
                    },
                })
                .collect()
        })
    }
}

/// The order to try servers in (pure): those not in their back-off in the
/// configured order, then those in it, the longest-failed first.
/// `failed[i]`: when `urls[i]` last failed, if its last try failed.
pub fn order(
    urls: &[String],
    failed: &[Option<Instant>],
    failback_after: Duration,
    now: Instant,
) -> Vec<String> {
    let resting = |i: usize| {
        failed
            .get(i)
            .copied()
            .flatten()
            .filter(|at| now.saturating_duration_since(*at) < failback_after)
    };
    let mut ready: Vec<String> = Vec::new();
    let mut waiting: Vec<(Instant, String)> = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        match resting(i) {
            Some(at) => waiting.push((at, u.clone())),
            None => ready.push(u.clone()),
        }
    }
    waiting.sort_by_key(|(at, _)| *at);
    ready.extend(waiting.into_iter().map(|(_, u)| u));
    ready
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls() -> Vec<String> {
        ["ldaps://dc1", "ldaps://dc2", "ldaps://dc3"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn servers_are_tried_in_the_configured_order_until_one_fails() {
        let now = Instant::now();
        assert_eq!(
            order(&urls(), &[None, None, None], Duration::from_secs(600), now),
            urls()
        );
    }

    #[test]
    fn a_failed_server_waits_out_its_back_off_then_is_preferred_again() {
        let t0 = Instant::now();
        let failed = [Some(t0), None, None];
        let back_off = Duration::from_secs(600);
        assert_eq!(
            order(&urls(), &failed, back_off, t0 + Duration::from_secs(60)),
            ["ldaps://dc2", "ldaps://dc3", "ldaps://dc1"]
        );
        assert_eq!(
            order(&urls(), &failed, back_off, t0 + Duration::from_secs(601)),
            urls()
        );
    }

    #[test]
    fn when_all_rest_all_are_still_tried_longest_failed_first() {
        let t0 = Instant::now();
        let failed = [
            Some(t0 + Duration::from_secs(5)),
            Some(t0),
            Some(t0 + Duration::from_secs(9)),
        ];
        assert_eq!(
            order(
                &urls(),
                &failed,
                Duration::from_secs(600),
                t0 + Duration::from_secs(10)
            ),
            ["ldaps://dc2", "ldaps://dc1", "ldaps://dc3"]
        );
    }

    #[test]
    fn health_remembers_each_server() {
        let h = Health::default();
        h.down("ldaps://dc1", "connection refused");
        h.up("ldaps://dc2", Some("CN=NTDS Settings,CN=DC2".into()));
        let s = h.states(&urls());
        assert_eq!(s[0].up, Some(false));
        assert_eq!(s[0].error.as_deref(), Some("connection refused"));
        assert_eq!(s[1].up, Some(true));
        assert_eq!(s[1].name.as_deref(), Some("CN=NTDS Settings,CN=DC2"));
        assert_eq!(s[2].up, None);
        assert!(s[1].in_use && !s[0].in_use && !s[2].in_use);
        assert_eq!(
            h.order(&urls(), Duration::from_secs(600)),
            ["ldaps://dc2", "ldaps://dc3", "ldaps://dc1"]
        );
        // A reloaded configuration keeps it.
        let reloaded = Health::default();
        reloaded.adopt(&h);
        assert_eq!(reloaded.states(&urls()), h.states(&urls()));
    }
}
