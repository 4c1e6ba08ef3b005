//! Replication-conflict twins. AD is multi-master: when the same name is
//! created on two DCs before they replicate (an add re-sent to DC2 after
//! DC1, which held the first, stayed down past `settle_timeout`), AD keeps
//! **both** objects and silently renames one `CN=name\0ACNF:<objectGUID>`.
//! Both carry absync's anchor. A full run keeps the one the snapshot knows
//! (by objectGUID) and deletes the other, journaling both (op `twin`, so
//! that what an auditor reads as held stays the kept object's history).
//!
//! **Invariant:** only an object carrying absync's anchor, directly inside
//! its containers, whose anchor another such object also carries, is
//! deleted here; the kept one's name is put right by the same run's diff.

use crate::state::runs::Counts;
use crate::state::Snapshot;

use super::{Applier, ApplyError, Live};

/// Whether a name is one AD gave a replication conflict's loser.
pub fn is_conflict_name(dn: &str) -> bool {
    crate::dn::first_rdn(dn).contains("CNF:")
}

/// Which of the objects carrying one anchor is kept (pure): the one the
/// snapshot knows by objectGUID; else the one at the snapshot's name; else
/// one whose name is not a conflict's; else the first.
pub fn keeper(guid: Option<&str>, dn: Option<&str>, objects: &[Live]) -> usize {
    let by_guid = guid.and_then(|g| {
        objects
            .iter()
            .position(|o| o.guid.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(g)))
    });
    let by_name = || {
        dn.and_then(|d| {
            objects
                .iter()
                .position(|o| crate::engine::diff::same_dn(&o.dn, d))
        })
    };
    let plain = || objects.iter().position(|o| !is_conflict_name(&o.dn));
    by_guid.or_else(by_name).or_else(plain).unwrap_or(0)
}

impl Applier<'_, '_> {
    /// Deletes `twin`, which carries `anchor` as `kept` does, and journals
    /// both (in a dry run: only says so). A refusal is journaled and the
    /// run goes on; the next full run tries again.
    pub async fn remove_twin(
        &mut self,
        snapshot: &Snapshot,
        anchor: &str,
        twin: &Live,
        kept: &Live,
        counts: &mut Counts,
    ) -> Result<(), ApplyError> {
        let guid = |l: &Live| l.guid.clone().unwrap_or_else(|| "?".into());
        let reason = format!(
            "replication-conflict twin of {} (objectGUID {}): the same contact was created on \
             two domain controllers",
            kept.dn,
            guid(kept)
        );
        tracing::warn!(anchor, twin = twin.dn, kept = kept.dn, "{reason}");
        counts.drift += 1;
        if self.plan.is_some() {
            return Ok(());
        }
        let detail = serde_json::json!({
            "twin": { "dn": twin.dn, "guid": twin.guid },
            "kept": { "dn": kept.dn, "guid": kept.guid },
        });
        let mut gone = self.record(anchor, "twin", "deleted", &reason);
        gone.dn = Some(twin.dn.clone());
        gone.detail = Some(detail.clone());
        if let Err(e) = self.delete_at(&twin.dn).await {
            if !e.is_entry_level() {
                return Err(e.into());
            }
            counts.failed += 1;
            gone.outcome = "failed".into();
            gone.error = Some(e.to_string());
            snapshot.journal(&[gone])?;
            return Ok(());
        }
        let mut stays = self.record(anchor, "twin", "kept", "the object the snapshot knows");
        stays.dn = Some(kept.dn.clone());
        stays.detail = Some(detail);
        snapshot.journal(&[gone, stays])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(dn: &str, guid: &str) -> Live {
        Live {
            dn: dn.into(),
            attrs: Default::default(),
            guid: Some(guid.into()),
        }
    }

    #[test]
    fn the_twin_kept_is_the_one_the_snapshot_knows() {
        let ours = live("CN=Pat\\0ACNF:aaaa,OU=NHS,DC=x", "aaaa");
        let other = live("CN=Pat,OU=NHS,DC=x", "bbbb");
        let both = [other.clone(), ours.clone()];
        // By objectGUID, even when AD gave ours the conflict name.
        assert_eq!(keeper(Some("AAAA"), Some("CN=Pat,OU=NHS,DC=x"), &both), 1);
        // Without a GUID in the snapshot: the one at the snapshot's name.
        assert_eq!(keeper(None, Some("cn=pat,ou=nhs,dc=x"), &both), 0);
        // Knowing neither: the one without the conflict name.
        assert_eq!(keeper(None, None, &[ours.clone(), other.clone()]), 1);
        assert_eq!(keeper(Some("cccc"), None, &[ours, other]), 1);
    }

    #[test]
    fn conflict_names_are_told_apart() {
        assert!(is_conflict_name(
            "CN=Pat Jones\\0ACNF:6b29fc40-ca47-1067-b31d-00dd010662da,OU=NHS,DC=x"
        ));
        assert!(!is_conflict_name("CN=Pat Jones,OU=CNF:odd,DC=x"));
    }
}
