//! Organisation status (`[source.organisations]`): a closed organisation's
//! people leave the target with the reason `organisation closed` even while
//! an agreement names it; `check` and `status` warn, naming the successor;
//! a person moved to a successor no agreement covers is reported as such.

use std::collections::BTreeSet;

use absync::state::{ReadFrom, Snapshot};

use crate::common::check::*;
use crate::common::env::{anchor_of, SyncEnv};

/// The generator closes every 7th organisation (index 6) and names the
/// one before it (index 5) its successor.
const CLOSED: usize = 6;
const SUCCESSOR: usize = 5;

fn organisations_section(env: &SyncEnv) -> String {
    format!(
        "\n[source.organisations]\nbase_dn = \"ou=Organisations,{}\"\n\
         filter = \"(objectClass=nhsOrganisation)\"\nstatus_attribute = \"nhsOrgStatus\"\n\
         closed_values = [\"closed\"]\nsuccessor_attribute = \"nhsSuccessorOdsCode\"\n",
        env.source_base
    )
}

/// Anchors of the AD objects absync owns.
async fn ad_anchors(env: &SyncEnv) -> BTreeSet<String> {
    env.ad_objects()
        .await
        .values()
        .filter_map(anchor_of)
        .collect()
}

#[tokio::test]
async fn a_closed_organisations_people_leave_with_their_reason_and_check_and_status_warn() {
    let env = SyncEnv::new("orgstatus", 1807, 160, 7, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    let (closed, successor) = (codes[CLOSED].clone(), codes[SUCCESSOR].clone());
    // The agreement names the closed organisation, not its successor.
    let named: Vec<String> = codes.iter().filter(|c| **c != successor).cloned().collect();
    env.write_agreements(&[("DSA-OS", &named, ALL_ATTRS, &day(-1), &day(60))]);

    // Without organisation status, absync copies whatever the source
    // holds under the closed organisation's code.
    env.sync_ok();
    let active = "(&(objectClass=nhsPerson)(!(nhsEntryStatus=leaver)))";
    let of_closed = env
        .source_people(&format!("(&{active}(nhsOdsCode={closed}))"))
        .await;
    assert!(of_closed.len() >= 3, "the seed gives the closed org people");
    let held = ad_anchors(&env).await;
    assert!(of_closed.keys().all(|a| held.contains(a)));

    // One of them moves to the successor, which no agreement covers; then
    // organisation status is switched on.
    let (mover, mover_attrs) = of_closed.iter().next().unwrap();
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: nhsOdsCode\nnhsOdsCode: {successor}\n-\n",
        mover_attrs["dn"][0]
    ));
    env.write_config("nhs-to-ad-contact.toml", &organisations_section(&env));
    let r = env.sync_ok();
    let mover_reason = format!(
        "moved to {successor}, the successor of closed {closed}, which no agreement covers: \
         the agreement may need amending"
    );
    assert!(r.stderr.contains(&mover_reason), "log warning: {r:?}");
    assert!(
        r.stderr
            .contains(&format!("agreement DSA-OS names {closed}, which is closed")),
        "{r:?}"
    );

    // In AD: none of the closed organisation's people, everyone else kept.
    let after = ad_anchors(&env).await;
    assert!(
        of_closed.keys().all(|a| !after.contains(a)),
        "closed org gone"
    );
    assert_eq!(after.len(), held.len() - of_closed.len());

    // The journal gives each its reason.
    let s = Snapshot::open_read_only(&env.state_dir(), ReadFrom::Live).unwrap();
    let deletes = s.stored_where("op = 'delete'", &[]).unwrap();
    for anchor in of_closed.keys() {
        let d = deletes
            .iter()
            .find(|d| d.record.anchor.as_deref() == Some(anchor.as_str()))
            .unwrap_or_else(|| panic!("no delete journaled for {anchor}"));
        let want = if anchor == mover {
            mover_reason.as_str()
        } else {
            "organisation closed"
        };
        assert_eq!(d.record.reason, want);
        assert_eq!(d.record.outcome, "applied");
        assert_eq!(d.record.org.as_deref(), Some(closed.as_str()));
    }
    assert_eq!(deletes.len(), of_closed.len(), "nobody else deleted");
    let noted = s.stored_where("op = 'organisations'", &[]).unwrap();
    assert_eq!(noted.len(), 1, "{noted:?}");
    assert!(noted[0]
        .record
        .reason
        .contains(&format!("its successor is {successor}")));

    // The next run changes nothing and journals the closure no more.
    env.sync_ok();
    let s = Snapshot::open_read_only(&env.state_dir(), ReadFrom::Live).unwrap();
    assert_eq!(
        s.stored_where("op = 'organisations'", &[]).unwrap().len(),
        1
    );
    assert_eq!(
        s.stored_where("op = 'delete'", &[]).unwrap().len(),
        deletes.len()
    );
    assert_eq!(ad_anchors(&env).await, after);

    // check and status warn, naming the successor.
    let warning = format!(
        "agreement DSA-OS names {closed}, which is closed (its successor is {successor}, which \
         no agreement covers): its people are out of scope; the agreement may need amending"
    );
    let check = env.absync(&["check"]);
    assert_eq!(
        check.code, 0,
        "a warning does not fail the check: {check:?}"
    );
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.starts_with("agreement") && l.contains(&format!("WARNING: {warning}"))),
        "{check:?}"
    );
    assert!(check.stdout.contains("1 closed"), "{check:?}");
    let status = env.absync(&["status"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("warning") && l.contains(&warning)),
        "{status:?}"
    );
    let json = env.absync(&["status", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(
        v["names_closed"],
        serde_json::json!([{
            "agreement": "DSA-OS", "organisation": closed, "successor": successor,
            "successor_covered": false
        }])
    );

    // The agreement amended (the closed code out): the warning clears, in
    // the journal and in status.
    let named: Vec<String> = codes
        .iter()
        .filter(|c| **c != successor && **c != closed)
        .cloned()
        .collect();
    env.write_agreements(&[("DSA-OS", &named, ALL_ATTRS, &day(-1), &day(60))]);
    env.sync_ok();
    let status = env.absync(&["status"]);
    assert!(!status.stdout.contains("which is closed"), "{status:?}");
    let s = Snapshot::open_read_only(&env.state_dir(), ReadFrom::Live).unwrap();
    let noted = s.stored_where("op = 'organisations'", &[]).unwrap();
    assert_eq!(noted.len(), 2);
    assert_eq!(
        noted[1].record.reason,
        "no agreement names a closed organisation"
    );
}

/// With a grace period: the closed organisation's people are hidden in the
/// quarantine OU with the reason `organisation closed` (not deleted), and
/// the compliance check is content with them there; one who moved to a
/// successor an agreement covers simply stays. `audit` flags the closed
/// organisation's contacts until the run has hidden them.
#[tokio::test]
async fn with_a_grace_period_a_closed_organisations_people_wait_in_quarantine() {
    let env = SyncEnv::new("orgstatus-grace", 1808, 140, 7, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    let (closed, successor) = (codes[CLOSED].clone(), codes[SUCCESSOR].clone());
    env.write_agreements(&[("DSA-OG", &codes, ALL_ATTRS, &day(-1), &day(60))]);
    env.sync_ok();
    let active = "(&(objectClass=nhsPerson)(!(nhsEntryStatus=leaver)))";
    let of_closed = env
        .source_people(&format!("(&{active}(nhsOdsCode={closed}))"))
        .await;
    assert!(of_closed.len() >= 3, "the seed gives the closed org people");
    let (mover, mover_attrs) = of_closed.iter().next().unwrap();
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: nhsOdsCode\nnhsOdsCode: {successor}\n-\n",
        mover_attrs["dn"][0]
    ));
    let quarantine = env.new_quarantine().await;
    *env.safety.lock().unwrap() = format!(
        "[safety]\nmax_deletes = 1000\nmax_delete_percent = 100\ndelete_grace = \"7d\"\n\
         quarantine_ou = \"{quarantine}\"\n"
    );
    env.write_config("nhs-to-ad-contact.toml", &organisations_section(&env));

    // Before the run: audit sees the closed organisation's contacts as not
    // covered (the mover's too: the state still files it under the closed
    // organisation).
    let audit = env.absync(&["audit", "--format", "json"]);
    assert_eq!(audit.code, 1, "{audit:?}");
    let findings: Vec<serde_json::Value> = serde_json::from_str(&audit.stdout).unwrap();
    let flagged: Vec<&serde_json::Value> =
        findings.iter().filter(|f| f["violation"] == true).collect();
    assert_eq!(flagged.len(), of_closed.len(), "{flagged:?}");
    assert!(flagged
        .iter()
        .all(|f| f["reason"].as_str().unwrap().starts_with(&format!(
            "organisation closed: no agreement in force covers {closed}"
        ))));

    let r = env.absync(&["sync", "--full"]);
    assert_eq!(r.code, 0, "{r:?}");
    let guids = env.ad_guids().await;
    let s = Snapshot::open_read_only(&env.state_dir(), ReadFrom::Live).unwrap();
    let hides = s.stored_where("op = 'hide'", &[]).unwrap();
    assert_eq!(hides.len(), of_closed.len() - 1, "{hides:?}");
    assert!(hides
        .iter()
        .all(|h| h.record.reason == "organisation closed"));
    assert!(s.stored_where("op = 'delete'", &[]).unwrap().is_empty());
    for anchor in of_closed.keys().filter(|a| *a != mover) {
        let (dn, _) = &guids[anchor];
        assert!(dn.ends_with(&quarantine), "{dn} is in quarantine");
    }
    // The mover stays, now under the successor.
    let (dn, _) = &guids[mover];
    assert!(!dn.ends_with(&quarantine), "{dn}");
    let moved = s
        .stored_where("op IN ('modify', 'rename') AND anchor = ?1", &[mover])
        .unwrap();
    assert_eq!(moved.last().unwrap().record.reason, "moved organisation");
    assert_eq!(
        moved.last().unwrap().record.org.as_deref(),
        Some(successor.as_str())
    );
    // The full run's compliance check and audit: nothing wrong.
    let audit = env.absync(&["audit"]);
    assert_eq!(audit.code, 0, "{audit:?}");
    // The successor is covered: status says so by naming it plainly.
    let status = env.absync(&["status"]);
    assert!(
        status.stdout.contains(&format!(
            "agreement DSA-OG names {closed}, which is closed (its successor is {successor}):"
        )),
        "{status:?}"
    );
}
