//! A run that loses a server moves to the next one.
//!
//! Connecting already tries a side's servers in order (`ldap::Conn::
//! connect`). This is the other half: when a server fails *during* a real
//! run (a DC rebooted mid-add, the source lost mid-page), the failed server
//! is marked down and the run's steps start again from the top on the
//! next one: the target is opened again (so the intents the failed attempt
//! left are settled against the DC they went to, see `apply::recover`),
//! and the source is read again in full or from the stored cookie, so no
//! delete is ever planned from a partial read. Everything the failed
//! attempt applied is committed and journaled already; the counts go on.
//!
//! A run reads and writes through one DC: it changes DC only here, when
//! that DC failed.

use serde::Serialize;

use crate::config::Config;
use crate::ldap::servers::ServerState;
use crate::ldap::{Endpoint, LdapError};

use super::RunError;

/// One move from a failed server to the next, for the summary and the
/// run's journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    pub side: &'static str,
    pub from: String,
    pub why: String,
}

/// The servers a run used, and each move it made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Servers {
    /// The source server the run read from last.
    pub source: Option<String>,
    /// The target server the run wrote through last.
    pub target: Option<String>,
    /// That DC's name (`dsServiceName`).
    pub target_dc: Option<String>,
    /// Servers found down when connecting (preferred ones passed over),
    /// and servers lost during the run.
    pub moves: Vec<Move>,
}

impl Servers {
    /// What the sides' health says the run used, with `lost`: the servers
    /// the run lost while using them.
    pub fn gather(cfg: &Config, lost: Vec<Move>) -> Servers {
        let source = cfg.source.endpoint.states();
        let target = cfg.target.endpoint.states();
        let in_use = |s: &[ServerState]| s.iter().find(|s| s.in_use).cloned();
        let mut moves = passed_over("source", &source);
        moves.extend(passed_over("target", &target));
        for m in lost {
            if !moves.iter().any(|x| x.side == m.side && x.from == m.from) {
                moves.push(m);
            }
        }
        let t = in_use(&target);
        Servers {
            source: in_use(&source).map(|s| s.url),
            target_dc: t.as_ref().and_then(|s| s.name.clone()),
            target: t.map(|s| s.url),
            moves,
        }
    }

    /// The summary's line about servers: only when the run failed over.
    pub fn text(&self) -> Option<String> {
        if self.moves.is_empty() {
            return None;
        }
        let moves: Vec<String> = self
            .moves
            .iter()
            .map(|m| format!("{} {} ({})", m.side, m.from, m.why))
            .collect();
        Some(format!(
            "failed over: {}; used source {}, target {}",
            moves.join("; "),
            self.source.as_deref().unwrap_or("-"),
            self.target.as_deref().unwrap_or("-"),
        ))
    }
}

/// The servers of a side listed before the one in use that are down: the
/// run passed over them.
fn passed_over(side: &'static str, states: &[ServerState]) -> Vec<Move> {
    states
        .iter()
        .take_while(|s| !s.in_use)
        .filter(|s| s.up == Some(false))
        .map(|s| Move {
            side,
            from: s.url.clone(),
            why: why(&s.url, s.error.as_deref().unwrap_or_default()),
        })
        .collect()
}

/// A server's error without the server's URL it starts with (a move names
/// the server already).
pub fn why(url: &str, error: &str) -> String {
    error
        .strip_prefix(url)
        .and_then(|e| e.strip_prefix(": "))
        .unwrap_or(error)
        .to_string()
}

/// The server a run error is about, when another server of its side may do
/// better: which side, its endpoint, the failed URL and the server's error
/// (not the run's: "no deletes were applied" would not be true of a run
/// that goes on elsewhere).
pub fn failed_server<'c>(
    cfg: &'c Config,
    err: &RunError,
) -> Option<(&'static str, &'c Endpoint, String, String)> {
    let e: &LdapError = match err {
        RunError::Ldap(e) => e,
        RunError::SourceIncomplete { cause, .. } => cause,
        _ => return None,
    };
    if !e.fails_over() {
        return None;
    }
    let url = e.url()?;
    [
        ("source", &cfg.source.endpoint),
        ("target", &cfg.target.endpoint),
    ]
    .into_iter()
    .find(|(_, ep)| ep.urls.len() > 1 && ep.urls.iter().any(|u| u == url))
    .map(|(side, ep)| (side, ep, url.to_string(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(url: &str, up: Option<bool>, in_use: bool) -> ServerState {
        ServerState {
            url: url.into(),
            up,
            name: None,
            error: up.filter(|u| !u).map(|_| "connection refused".into()),
            checked_at: None,
            in_use,
        }
    }

    #[test]
    fn the_servers_passed_over_are_the_failed_ones_before_the_one_in_use() {
        let states = [
            state("ldaps://dc1", Some(false), false),
            state("ldaps://dc2", Some(true), true),
            state("ldaps://dc3", Some(false), false),
        ];
        let moves = passed_over("target", &states);
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].from, "ldaps://dc1");
        assert_eq!(moves[0].why, "connection refused");
        assert!(passed_over("target", &states[1..]).is_empty());
        assert_eq!(
            why("ldaps://dc1", "ldaps://dc1: cannot connect: refused"),
            "cannot connect: refused"
        );
        assert_eq!(why("ldaps://dc1", "other text"), "other text");
    }

    #[test]
    fn a_run_that_did_not_fail_over_says_nothing_about_servers() {
        assert_eq!(Servers::default().text(), None);
        let s = Servers {
            source: Some("ldaps://s1".into()),
            target: Some("ldaps://dc2".into()),
            target_dc: None,
            moves: vec![Move {
                side: "target",
                from: "ldaps://dc1".into(),
                why: "connection reset".into(),
            }],
        };
        assert_eq!(
            s.text().unwrap(),
            "failed over: target ldaps://dc1 (connection reset); used source ldaps://s1, \
             target ldaps://dc2"
        );
    }
}
