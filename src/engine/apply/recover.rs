//! Crash recovery: the intents an interrupted run left are settled against
//! what the target really holds, before anything else is planned.
//!
//! **Invariant:** a kill -9 at any point converges on the next run: each
//! intent ends with the snapshot matching the target and the journal
//! holding the changes that landed, none lost and none twice.
//!
//! **Several DCs.** AD is multi-master: an add sent to DC1 just before it
//! died may exist only on DC1, and adding it again on DC2 would leave a
//! twin (a `CNF:` object) when DC1 comes back. So an intent is settled
//! against the DC it was sent to: when that is not the DC in use, it is
//! asked directly; when it cannot be reached, the object is left alone
//! (journaled as waiting) until it can, or until `[target]
//! settle_timeout` has passed since the intent, after which it is settled
//! on the DC in use (a twin that then appears is removed by a full run).

use std::collections::HashMap;
use std::time::Duration;

use crate::engine::diff::{attr_changes, same_dn};
use crate::ldap::Conn;
use crate::state::journal::Record;
use crate::state::runs::Counts;
use crate::state::{Attrs, Intent, ObjectRow, SentTo, Snapshot};

use super::{Applier, ApplyError};

/// Where an intent is settled (pure: [`place`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Place {
    /// On the server in use: it was sent there (or before servers were
    /// recorded).
    Here,
    /// On the server it was sent to; `expired`: its settle timeout has
    /// passed, so when that server cannot be reached it is settled here.
    There { sent: SentTo, expired: bool },
}

/// Where `intent` is settled, given the server in use and the time.
pub(super) fn place(
    intent: &Intent,
    here: &SentTo,
    now: time::OffsetDateTime,
    settle_timeout: Duration,
) -> Place {
    let Some(sent) = &intent.server else {
        return Place::Here;
    };
    let same = match (&sent.name, &here.name) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        _ => sent.url == here.url,
    };
    if same {
        return Place::Here;
    }
    let at = intent.at.as_deref().and_then(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    });
    let expired = at.is_none_or(|at| now - at >= settle_timeout);
    Place::There {
        sent: sent.clone(),
        expired,
    }
}

impl Applier<'_, '_> {
    /// Settles the intents an interrupted run left: looks at the target and
    /// records what it really accepted, so nothing is lost or duplicated.
    /// Each is settled on the server it was sent to (see the module).
    pub async fn recover(
        &mut self,
        snapshot: &Snapshot,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let mut others: HashMap<String, Option<Conn>> = HashMap::new();
        let now = time::OffsetDateTime::now_utc();
        // `intents` waits for the commit thread first: after a failover,
        // the groups the failed attempt handed over land, and their
        // intents are cleared, not settled twice.
        for intent in snapshot.intents()? {
            match place(&intent, &self.server, now, self.target.settle_timeout) {
                Place::Here => self.settle_on(snapshot, &intent, counts).await?,
                Place::There { sent, expired } => {
                    let conn = match others.get_mut(&sent.url) {
                        Some(c) => c.take(),
                        None => self.reach(&sent).await,
                    };
                    match conn {
                        Some(mut conn) => {
                            std::mem::swap(&mut self.conn, &mut conn);
                            let was = snapshot.accepted_by(Some(sent.label().to_string()));
                            let settled = self.settle_on(snapshot, &intent, counts).await;
                            snapshot.accepted_by(was);
                            std::mem::swap(&mut self.conn, &mut conn);
                            others.insert(sent.url.clone(), Some(conn));
                            settled?;
                        }
                        None if expired => {
                            others.insert(sent.url.clone(), None);
                            tracing::warn!(
                                anchor = intent.anchor,
                                "{} cannot be reached and settle_timeout has passed: \
                                 settling on {}",
                                sent.label(),
                                self.server.label()
                            );
                            self.settle_on(snapshot, &intent, counts).await?;
                        }
                        None => {
                            others.insert(sent.url.clone(), None);
                            self.wait(snapshot, &intent, &sent, counts)?;
                        }
                    }
                }
            }
        }
        for conn in others.into_values().flatten() {
            conn.unbind().await;
        }
        Ok(())
    }

    /// A connection to the server an intent was sent to, if it answers and
    /// is still that server (an address may now reach another DC).
    async fn reach(&self, sent: &SentTo) -> Option<Conn> {
        let ep = &self.target.endpoint;
        let mut conn = match Conn::connect_to(ep, &sent.url).await {
            Ok(c) => c,
            Err(e) => {
                ep.health.down(&sent.url, &e.to_string());
                tracing::warn!(server = sent.label(), error = %e, "cannot settle there");
                return None;
            }
        };
        let name = conn.server_name().await.ok().flatten();
        if sent.name.is_some() && name.as_deref() != sent.name.as_deref() {
            tracing::warn!(
                url = sent.url,
                now = name.as_deref().unwrap_or("-"),
                "{} now answers as another server",
                sent.label()
            );
            conn.unbind().await;
            return None;
        }
        Some(conn)
    }

    /// Leaves an intent for the server it was sent to: journaled, counted,
    /// and the object left alone this run (read again by the next delta).
    fn wait(
        &mut self,
        snapshot: &Snapshot,
        intent: &Intent,
        sent: &SentTo,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let why = format!(
            "waiting for {} to settle an {} sent at {} (settle_timeout {})",
            sent.label(),
            intent.op,
            intent.at.as_deref().unwrap_or("?"),
            crate::period::Period::exact(self.target.settle_timeout),
        );
        tracing::warn!(anchor = intent.anchor, "{why}");
        counts.waiting += 1;
        let mut r = self.record(&intent.anchor, "settle", "waiting", &why);
        r.dn = intent.dn().map(str::to_string);
        r.detail = Some(serde_json::json!({ "server": sent, "intent_run": intent.run_id }));
        snapshot.journal(&[r])?;
        self.retry.push((intent.anchor.clone(), why.clone()));
        self.waiting.insert(intent.anchor.clone(), why);
        Ok(())
    }

    /// Settles one intent against the server of `self.conn`.
    async fn settle_on(
        &mut self,
        snapshot: &Snapshot,
        intent: &Intent,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let anchor = intent.anchor.clone();
        let found = self.locate(&anchor, intent.dn()).await?;
        let (row, records) = self.settle(intent, found);
        if !records.is_empty() {
            counts.recovered += 1;
        }
        tracing::info!(
            anchor,
            server = self.conn.url(),
            records = records.len(),
            "settled an interrupted change"
        );
        snapshot.commit(&anchor, row.as_ref(), intent.run_id, &records)?;
        Ok(())
    }

    /// What an intent comes to, given where the target holds its object
    /// (`found`: DN and managed attributes): the snapshot's row (`None`:
    /// forget it) and the journal records of what landed.
    fn settle(
        &self,
        intent: &Intent,
        found: Option<(String, Attrs)>,
    ) -> (Option<ObjectRow>, Vec<Record>) {
        match (found, intent.before.as_ref(), intent.after.as_ref()) {
            (Some((dn, attrs)), before, Some(after)) => {
                let (row, records) = self.settle_write(intent, &dn, &attrs, before, after);
                (Some(row), records)
            }
            // The delete did not happen: keep the object as it is.
            (Some((dn, attrs)), Some(before), None) => (
                Some(ObjectRow {
                    dn,
                    attrs,
                    ..before.clone()
                }),
                Vec::new(),
            ),
            (None, Some(before), None) => {
                let mut r = self.recovered(intent, "delete", &before.dn, before);
                r.changes = attr_changes(&before.attrs, &Attrs::new());
                (None, vec![r])
            }
            // The add never reached the target, or the object is gone:
            // the snapshot forgets it and the next diff re-creates it.
            (None, _, _) | (Some(_), None, None) => (None, Vec::new()),
        }
    }

    /// An interrupted add, update or hide whose object the target holds at
    /// `dn`: where the object is tells how far the change got.
    fn settle_write(
        &self,
        intent: &Intent,
        dn: &str,
        attrs: &Attrs,
        before: Option<&ObjectRow>,
        after: &ObjectRow,
    ) -> (ObjectRow, Vec<Record>) {
        let reached = same_dn(dn, &after.dn);
        let now = ObjectRow {
            dn: dn.to_string(),
            attrs: attrs.clone(),
            hidden: if reached {
                after.hidden.clone()
            } else {
                before.and_then(|b| b.hidden.clone())
            },
            ..after.clone()
        };
        let mut records = Vec::new();
        match before {
            None => {
                let mut r = self.recovered(intent, "add", dn, after);
                r.changes = attr_changes(&Attrs::new(), attrs);
                records.push(r);
            }
            Some(b) => {
                if !same_dn(&b.dn, dn) {
                    let op = match (b.hidden.is_some(), after.hidden.is_some()) {
                        (false, true) => "hide",
                        (true, false) => "restore",
                        _ => "rename",
                    };
                    let mut r = self.recovered(intent, op, dn, after);
                    r.old_dn = Some(b.dn.clone());
                    records.push(r);
                }
                let changes = attr_changes(&b.attrs, attrs);
                if !changes.is_empty() {
                    let mut r = self.recovered(intent, "modify", dn, after);
                    r.changes = changes;
                    records.push(r);
                }
            }
        }
        (now, records)
    }

    /// The journal record of a change confirmed after an interrupted run,
    /// in the run that made it.
    fn recovered(&self, intent: &Intent, op: &str, dn: &str, row: &ObjectRow) -> Record {
        let reason = format!("{} (confirmed after an interrupted run)", intent.reason);
        let mut r = self.record(&intent.anchor, op, "applied", &reason);
        r.run_id = intent.run_id;
        r.dn = Some(dn.to_string());
        r.agreements = row.agreements.clone();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(server: Option<SentTo>, at: &str) -> Intent {
        Intent {
            anchor: "a".into(),
            run_id: 1,
            op: "add".into(),
            before: None,
            after: None,
            reason: "new".into(),
            server,
            at: Some(at.into()),
        }
    }

    fn dc(url: &str, name: Option<&str>) -> SentTo {
        SentTo {
            url: url.into(),
            name: name.map(String::from),
        }
    }

    fn at(t: &str) -> time::OffsetDateTime {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
    }

    #[test]
    fn an_intent_is_settled_on_the_dc_it_was_sent_to() {
        let hour = Duration::from_secs(3600);
        let now = at("2026-11-30T10:30:00Z");
        let dc1 = dc("ldaps://dc1", Some("CN=NTDS Settings,CN=DC1"));
        let dc2 = dc("ldaps://dc2", Some("CN=NTDS Settings,CN=DC2"));
        // Written before servers were recorded: here.
        let old = Intent {
            server: None,
            ..intent(None, "2026-11-30T10:00:00Z")
        };
        assert_eq!(place(&old, &dc2, now, hour), Place::Here);
        // Sent to the DC in use (the same DC at another address too).
        let mine = intent(Some(dc2.clone()), "2026-11-30T10:00:00Z");
        assert_eq!(place(&mine, &dc2, now, hour), Place::Here);
        let alias = dc("ldaps://127.0.0.9", Some("cn=ntds settings,cn=dc2"));
        assert_eq!(place(&mine, &alias, now, hour), Place::Here);
        // Sent to DC1: there, until settle_timeout has passed.
        let theirs = intent(Some(dc1.clone()), "2026-11-30T10:00:00Z");
        assert_eq!(
            place(&theirs, &dc2, now, hour),
            Place::There {
                sent: dc1.clone(),
                expired: false
            }
        );
        assert_eq!(
            place(&theirs, &dc2, at("2026-11-30T11:00:00Z"), hour),
            Place::There {
                sent: dc1,
                expired: true
            }
        );
        // Without names, the URL says which server.
        let plain = intent(Some(dc("ldaps://dc1", None)), "2026-11-30T10:00:00Z");
        assert_eq!(
            place(&plain, &dc("ldaps://dc1", None), now, hour),
            Place::Here
        );
    }
}
