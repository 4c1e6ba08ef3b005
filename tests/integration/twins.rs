//! Replication-conflict twins: two objects carrying one anchor (what AD
//! leaves when the same contact was created on two DCs; one of them gets a
//! `CNF:` name). A full run keeps the one the snapshot knows by objectGUID,
//! deletes the other, puts the kept one's name right, and journals both.
//! Here the twin is made by hand on one DC; `failover::` makes a real one
//! across two replicating DCs.

use std::collections::HashSet;

use absync::ldap::Conn;

use crate::common::check::*;
use crate::common::env::SyncEnv;

#[tokio::test]
async fn a_full_run_keeps_the_twin_the_snapshot_knows_and_deletes_the_other() {
    let env = SyncEnv::new("twins", 41, 6, 1, "nhs-to-ad-contact.toml").await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-T-001", &orgs, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();
    // A full run learns every object's objectGUID.
    let full = env.absync(&["sync", "--full"]);
    assert_eq!(full.code, 0, "{full:?}");
    let before = env.ad_guids().await;
    let (anchor, (dn, guid)) = before.iter().next().unwrap();
    let rdn = dn.split_once(',').unwrap().0.to_string();

    // AD renamed ours as a replication conflict's loser, and the twin
    // holds the name, carrying the same anchor.
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    let mangled_rdn = format!("{rdn} CNF:0000");
    admin
        .rename(dn, &mangled_rdn, None)
        .await
        .unwrap_or_else(|e| panic!("renaming {dn}: {e}"));
    let twin_attrs = vec![
        (
            "objectClass".to_string(),
            HashSet::from(["contact".to_string()]),
        ),
        (
            "adminDescription".to_string(),
            HashSet::from([format!("absync:{anchor}")]),
        ),
        (
            "description".to_string(),
            HashSet::from(["the twin".to_string()]),
        ),
    ];
    admin.add(dn, twin_attrs).await.unwrap();

    let run = env.absync(&["sync", "--full"]);
    assert_eq!(run.code, 0, "{run:?}");
    // One object per anchor (ad_guids fails on a duplicate): ours, by its
    // objectGUID, back at its name.
    let after = env.ad_guids().await;
    assert_eq!(after.len(), before.len());
    let (now_dn, now_guid) = &after[anchor];
    assert_eq!(now_guid, guid, "the object the snapshot knows is kept");
    assert!(
        now_dn.eq_ignore_ascii_case(dn),
        "{now_dn}: its name is put right"
    );
    // Both journaled.
    let snap = env.snapshot();
    let run_id = snap.runs(1).unwrap()[0].id;
    let records = snap.records(run_id).unwrap();
    let twin: Vec<_> = records.iter().filter(|r| r.op == "twin").collect();
    assert_eq!(twin.len(), 2, "{twin:?}");
    let deleted = twin.iter().find(|r| r.outcome == "deleted").unwrap();
    assert!(deleted.dn.as_deref().unwrap().eq_ignore_ascii_case(dn));
    assert!(
        deleted.reason.contains("replication-conflict twin"),
        "{}",
        deleted.reason
    );
    let kept = twin.iter().find(|r| r.outcome == "kept").unwrap();
    assert!(kept.dn.as_deref().unwrap().contains(&mangled_rdn[3..]));
    assert_eq!(kept.anchor.as_deref(), Some(anchor.as_str()));
    // The held history stays the kept object's: no delete of the person.
    assert!(!records
        .iter()
        .any(|r| r.op == "delete" && r.anchor.as_deref() == Some(anchor.as_str())));
    assert_eq!(env.absync(&["journal", "verify"]).code, 0);
    // Converged: another full run finds nothing to do.
    let again = env.absync(&["sync", "--full"]);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(
        summary_line(&again, "drift").contains("drift 0"),
        "{again:?}"
    );
    assert!(
        summary_line(&again, "added").contains(NO_WRITES),
        "{again:?}"
    );
}
