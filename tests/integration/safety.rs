//! The safety rails against mass deletion, soft deletes with a grace
//! period, and the full reconcile that repairs drift; each checked with
//! independent searches of AD, the journal, `absync status` and exit codes,
//! and each real run preceded by a dry run that must announce exactly what
//! the run then does.

use std::collections::BTreeSet;

use absync::ldap::Conn;
use ldap3::Mod;

use crate::common::check::*;
use crate::common::env::SyncEnv;

fn rails(max_deletes: u64, percent: u32, grace: &str, quarantine: Option<&str>) -> String {
    let q = quarantine
        .map(|q| format!("quarantine_ou = \"{q}\"\n"))
        .unwrap_or_default();
    format!(
        "[safety]\nmax_deletes = {max_deletes}\nmax_delete_percent = {percent}\ndelete_grace = \"{grace}\"\n{q}"
    )
}

async fn synced(name: &str, people: u32, orgs: u32) -> (SyncEnv, Vec<String>) {
    let env = SyncEnv::new(name, 41, people, orgs, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-S", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();
    (env, codes)
}

#[tokio::test]
async fn a_filter_typo_stops_at_the_threshold_until_an_admin_allows_the_deletes() {
    let (env, _) = synced("threshold", 200, 4).await;
    // At most 4 deletes, or 10% of the managed objects.
    env.set_safety(&rails(4, 10, "0", None));

    // A person the typo keeps changes title: modifies still flow.
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let (kept, kept_dn) = people
        .iter()
        .find(|(_, a)| a["givenname"][0].starts_with('A') && a["nhsentrystatus"][0] == "active")
        .map(|(u, a)| (u.clone(), a["dn"][0].clone()))
        .unwrap();
    env.change_source(&format!(
        "dn: {kept_dn}\nchangetype: modify\nreplace: title\ntitle: Threshold Test Lead\n-\n\n"
    ));
    let before = by_anchor(&env.ad_objects().await);

    // The typo keeps only people whose given name starts with A, C or E.
    env.set_config_line(
        "filter",
        "\"(&(objectClass=nhsPerson)(!(nhsEntryStatus=leaver))(|(givenName=A*)(givenName=C*)(givenName=E*)))\"",
    );
    let stopped = plan_then_sync(&env, &[]);
    assert_eq!(stopped.code, 3, "{stopped:?}");
    assert!(
        stopped.stderr.contains("stopped: deletion threshold"),
        "{stopped:?}"
    );
    assert!(
        stopped.stderr.contains("ERROR"),
        "logged at error level: {stopped:?}"
    );
    assert!(stopped.stderr.contains("--allow-deletes"), "{stopped:?}");
    // Nothing was deleted; the one modify went through.
    let after = by_anchor(&env.ad_objects().await);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    assert_eq!(after[&kept]["title"], vec!["Threshold Test Lead"]);
    for (anchor, attrs) in &before {
        if anchor != &kept {
            assert_eq!(attrs["usnchanged"], after[anchor]["usnchanged"], "{anchor}");
        }
    }

    let status = env.absync(&["status"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        status.stdout.contains("stopped: deletion threshold"),
        "{status:?}"
    );

    let snap = env.snapshot();
    let run = snap.runs(1).unwrap()[0].clone();
    assert_eq!(run.status, "stopped: deletion threshold");
    let records = snap.records(run.id).unwrap();
    let note = records
        .iter()
        .find(|r| r.op == "threshold")
        .expect("journaled");
    assert_eq!(note.outcome, "withheld");
    let held = run.counts.unwrap().withheld;
    assert!(held > 20, "most people are held back: {held}");

    let pending = env.absync(&["plan", "--only", "deletes"]);
    assert_eq!(pending.code, 0);
    let lines = pending
        .stdout
        .lines()
        .filter(|l| l.starts_with("withheld"))
        .count();
    assert_eq!(lines as u64, held, "{}", pending.stdout);
    assert!(!pending
        .stdout
        .lines()
        .any(|l| l.starts_with("add") || l.starts_with("modify")));

    // The admin releases all but five, once; the override and the user are
    // journaled, and the rest stay held.
    let first = held - 5;
    let partial = plan_then_sync(&env, &["--allow-deletes", &first.to_string()]);
    assert_eq!(partial.code, 3, "five are still held: {partial:?}");
    let snap = env.snapshot();
    let run = snap.runs(1).unwrap()[0].clone();
    assert_eq!(run.counts.as_ref().unwrap().withheld, 5);
    let records = snap.records(run.id).unwrap();
    let ov = records
        .iter()
        .find(|r| r.op == "override")
        .expect("override journaled");
    // The user the kernel names (not $SUDO_USER).
    let user = absync::os::Who::me();
    assert!(
        ov.reason == format!("--allow-deletes {first} by {user}"),
        "{ov:?}"
    );
    assert_eq!(
        records.iter().filter(|r| r.op == "delete").count() as u64,
        first
    );

    // The override was for one run: the next plain run holds the five again
    // (5 > max_deletes 4).
    let again = env.absync(&["sync"]);
    assert_eq!(again.code, 3, "{again:?}");
    assert!(
        summary_line(&again, "added").contains(NO_WRITES),
        "{again:?}"
    );

    let rest = plan_then_sync(&env, &["--allow-deletes", "5"]);
    assert_eq!(rest.code, 0, "{rest:?}");
    let left = by_anchor(&env.ad_objects().await);
    assert!(left.values().all(|a| ["A", "C", "E"]
        .iter()
        .any(|p| a["givenname"][0].starts_with(p))));
    assert_eq!(left.len() as u64, before.len() as u64 - held);

    // Nothing left to delete: the next run writes nothing and ends well.
    let next = env.sync_ok();
    assert!(summary_line(&next, "added").contains(NO_WRITES), "{next:?}");
}

#[tokio::test]
async fn a_source_returning_nothing_deletes_nothing() {
    let (env, _) = synced("empty-source", 60, 2).await;
    // Even with the threshold out of the way, an empty read is unhealthy.
    let before = env.ad_objects().await;
    env.set_config_line(
        "filter",
        "\"(&(objectClass=nhsPerson)(uid=no-such-person))\"",
    );
    let r = plan_then_sync(&env, &[]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("source returned no entries"), "{r:?}");
    assert!(r.stderr.contains("deletes held: source unhealthy"), "{r:?}");
    assert_unchanged(&before, &env.ad_objects().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_dropping_the_connection_after_the_first_page_deletes_nothing() {
    let (env, _) = synced("dropped", 150, 2).await;
    let before = env.ad_objects().await;
    let url = env.tb.get("SOURCE_URL").to_string();
    let upstream: std::net::SocketAddr = url.trim_start_matches("ldaps://").parse().unwrap();
    // Enough for the TLS handshake, the bind and about one page of 50.
    let port = crate::common::proxy::cut_after(upstream, 30_000).await;
    env.set_config_line("url", &format!("\"ldaps://127.0.0.1:{port}\""));
    env.set_config_line("page_size", "50");
    let env_ref = &env;
    // The dry run meets the same cut and says the same.
    for args in [&["sync", "--dry-run"][..], &["sync"]] {
        let r = tokio::task::block_in_place(|| env_ref.absync(args));
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("the source read ended early after"),
            "{r:?}"
        );
        assert!(r.stderr.contains("no deletes were applied"), "{r:?}");
    }
    assert_unchanged(&before, &env.ad_objects().await);
    let snap = env.snapshot();
    assert!(snap.runs(1).unwrap()[0]
        .status
        .starts_with("failed: the source read ended early"));

    // With the source reachable again, the next run makes no writes.
    env.set_config_line("url", &format!("\"{url}\""));
    let next = tokio::task::block_in_place(|| env_ref.sync_ok());
    assert!(summary_line(&next, "added").contains(NO_WRITES), "{next:?}");
    assert_unchanged(&before, &env.ad_objects().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_lost_mid_pull_fails_over_to_the_next_server_and_deletes_after_a_whole_read() {
    let (env, _) = synced("src-failover", 150, 2).await;
    let before = env.ad_count().await;
    let url = env.tb.get("SOURCE_URL").to_string();
    let upstream: std::net::SocketAddr = url.trim_start_matches("ldaps://").parse().unwrap();
    // The preferred server drops every connection after about a page.
    let port = crate::common::proxy::cut_after(upstream, 30_000).await;
    let dropping = format!("ldaps://127.0.0.1:{port}");
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let text = text.replacen(
        &format!("url = \"{url}\""),
        &format!("urls = [\"{dropping}\", \"{url}\"]"),
        1,
    );
    std::fs::write(env.config_path(), text).unwrap();
    env.set_config_line("page_size", "50");
    // One person leaves the source: deleted only once a whole read saw it.
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let (gone, gone_dn) = people
        .iter()
        .find(|(_, a)| a["nhsentrystatus"][0] == "active")
        .map(|(u, a)| (u.clone(), a["dn"][0].clone()))
        .unwrap();
    env.change_source(&format!("dn: {gone_dn}\nchangetype: delete\n\n"));

    let env_ref = &env;
    let r = tokio::task::block_in_place(|| env_ref.absync(&["sync", "--full"]));
    assert_eq!(r.code, 0, "{r:?}");
    // Lost during the read (not at connecting): the run started again.
    assert!(r.stderr.contains("lost a server during the run"), "{r:?}");
    assert!(r.stderr.contains("the source read ended early"), "{r:?}");
    let line = summary_line(&r, "failed over");
    assert!(line.contains(&format!("source {dropping}")), "{line}");
    assert!(line.contains(&format!("used source {url}")), "{line}");
    assert!(summary_line(&r, "added").contains("deleted 1"), "{r:?}");
    let ad = by_anchor(&env.ad_objects().await);
    assert!(!ad.contains_key(&gone));
    assert_eq!(ad.len(), before - 1);
    // The run's end record names the servers and the move.
    let (_, servers) = env.last_run_servers();
    assert_eq!(servers["source"], url.as_str(), "{servers}");
    assert_eq!(servers["moves"][0]["side"], "source", "{servers}");
    assert_eq!(servers["moves"][0]["from"], dropping.as_str(), "{servers}");
    assert_eq!(env.absync(&["journal", "verify"]).code, 0);
}

#[tokio::test]
async fn an_organisation_returning_nothing_holds_its_deletes_while_others_flow() {
    let (env, codes) = synced("empty-org", 120, 3).await;
    env.set_safety(&rails(1000, 100, "0", None));
    let people = env.source_people("(objectClass=nhsPerson)").await;
    // Organisation 0 vanishes from the source (its people lose their code to
    // a typo'd one); organisation 1 loses one person legitimately.
    let mut ldif = String::new();
    for a in people.values().filter(|a| a["nhsodscode"][0] == codes[0]) {
        ldif += &format!(
            "dn: {}\nchangetype: modify\nreplace: nhsOdsCode\nnhsOdsCode: ZZZ99\n-\n\n",
            a["dn"][0]
        );
    }
    let gone = people
        .iter()
        .find(|(_, a)| a["nhsodscode"][0] == codes[1] && a["nhsentrystatus"][0] == "active")
        .map(|(u, a)| (u.clone(), a["dn"][0].clone()))
        .unwrap();
    ldif += &format!("dn: {}\nchangetype: delete\n\n", gone.1);
    env.change_source(&ldif);
    let r = plan_then_sync(&env, &[]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr
            .contains(&format!("organisation {} returned no entries", codes[0])),
        "{r:?}"
    );
    let ad = by_anchor(&env.ad_objects().await);
    assert!(
        !ad.contains_key(&gone.0),
        "the healthy organisation's delete flowed"
    );
    let org0 = ad
        .values()
        .filter(|a| a["company"][0] == format!("NHS {}", codes[0]))
        .count();
    assert!(
        org0 > 0,
        "the empty organisation's contacts are all still there"
    );
}

#[tokio::test]
async fn staff_moving_through_a_closed_organisation_are_hidden_then_restored_not_recreated() {
    let (env, codes) = synced("grace", 120, 3).await;
    let quarantine = env.new_quarantine().await;
    env.set_safety(&rails(1000, 100, "7d", Some(&quarantine)));
    let guids = env.ad_guids().await;
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let movers: Vec<(String, String)> = people
        .iter()
        .filter(|(u, a)| a["nhsodscode"][0] == codes[0] && guids.contains_key(*u))
        .map(|(u, a)| (u.clone(), a["dn"][0].clone()))
        .collect();
    assert!(movers.len() > 5);
    let move_to = |code: &str| -> String {
        movers
            .iter()
            .map(|(_, dn)| {
                format!(
                    "dn: {dn}\nchangetype: modify\nreplace: nhsOdsCode\nnhsOdsCode: {code}\n-\n\n"
                )
            })
            .collect()
    };

    // The organisation closes: its staff leave every agreement's scope. An
    // organisation that returns nothing is held back first; the admin, who
    // knows it closed, releases the (soft) deletes.
    env.change_source(&move_to("ZZZ99"));
    let held = plan_then_sync(&env, &[]);
    assert_eq!(held.code, 3, "{held:?}");
    assert!(held
        .stderr
        .contains(&format!("organisation {} returned no entries", codes[0])));
    let hid = plan_then_sync(&env, &["--allow-deletes", "1000"]);
    assert_eq!(hid.code, 0, "{hid:?}");
    let now = env.ad_guids().await;
    for (anchor, _) in &movers {
        let (dn, guid) = &now[anchor];
        assert!(dn.ends_with(&quarantine), "{dn} is in quarantine");
        assert_eq!(guid, &guids[anchor].1, "same object");
    }
    let ou_people = by_anchor(&env.ad_objects().await);
    assert!(
        movers.iter().all(|(a, _)| !ou_people.contains_key(a)),
        "hidden from the OU"
    );
    let status = env.absync(&["status"]);
    assert!(
        status
            .stdout
            .contains(&format!("{} hidden awaiting deletion", movers.len())),
        "{status:?}"
    );

    // Within the grace period they reappear under the successor.
    env.change_source(&move_to(&codes[1]));
    let back = plan_then_sync(&env, &[]);
    assert_eq!(back.code, 0, "{back:?}");
    let after = env.ad_guids().await;
    for (anchor, _) in &movers {
        let (dn, guid) = &after[anchor];
        assert!(!dn.contains("OU=quarantine"), "{dn} restored");
        assert_eq!(guid, &guids[anchor].1, "not deleted and recreated");
    }
    let ad = by_anchor(&env.ad_objects().await);
    for (anchor, _) in &movers {
        assert_eq!(ad[anchor]["company"], vec![format!("NHS {}", codes[1])]);
    }
    let snap = env.snapshot();
    let mut ops = BTreeSet::new();
    // The runs after the initial sync.
    for run in snap.runs(3).unwrap() {
        for r in snap.records(run.id).unwrap() {
            if movers.iter().any(|(a, _)| r.anchor.as_deref() == Some(a)) {
                ops.insert(r.op.clone());
            }
        }
    }
    assert!(ops.contains("hide") && ops.contains("restore"), "{ops:?}");
    assert!(!ops.contains("delete") && !ops.contains("add"), "{ops:?}");
}

#[tokio::test]
async fn hidden_objects_are_deleted_when_the_grace_period_is_over_within_the_threshold() {
    let (env, _) = synced("grace-over", 40, 2).await;
    let quarantine = env.new_quarantine().await;
    env.set_safety(&rails(1000, 100, "2s", Some(&quarantine)));
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let leavers: Vec<(String, String)> = people
        .iter()
        .filter(|(_, a)| a["nhsentrystatus"][0] == "active")
        .take(3)
        .map(|(u, a)| (u.clone(), a["dn"][0].clone()))
        .collect();
    let ldif: String = leavers
        .iter()
        .map(|(_, dn)| format!("dn: {dn}\nchangetype: delete\n\n"))
        .collect();
    env.change_source(&ldif);
    env.sync_ok();
    for (anchor, _) in &leavers {
        assert!(env.ad_guids().await[anchor].0.ends_with(&quarantine));
    }
    std::thread::sleep(std::time::Duration::from_secs(3));

    // The purge at the end of the grace period meets the threshold too.
    env.set_safety(&rails(2, 100, "2s", Some(&quarantine)));
    let held = plan_then_sync(&env, &[]);
    assert_eq!(held.code, 3, "{held:?}");
    assert!(
        held.stderr
            .contains("deletion threshold: 3 deletes planned"),
        "{held:?}"
    );
    let guids = env.ad_guids().await;
    assert!(
        leavers.iter().all(|(a, _)| guids.contains_key(a)),
        "nothing deleted"
    );

    let r = plan_then_sync(&env, &["--allow-deletes", "3"]);
    assert_eq!(r.code, 0, "{r:?}");
    let guids = env.ad_guids().await;
    assert!(leavers.iter().all(|(a, _)| !guids.contains_key(a)));
    let snap = env.snapshot();
    let records = snap.records(snap.runs(1).unwrap()[0].id).unwrap();
    let dels: Vec<_> = records.iter().filter(|r| r.op == "delete").collect();
    assert_eq!(dels.len(), 3, "{records:#?}");
    assert!(dels
        .iter()
        .all(|d| d.reason == "grace period over (deleted from source)"));
}

#[tokio::test]
async fn a_full_run_repairs_hand_edits_hand_deletes_and_lost_snapshot_rows() {
    let (env, _) = synced("drift", 40, 2).await;
    let ad = by_anchor(&env.ad_objects().await);
    let mut anchors = ad.keys();
    let (edited, deleted, lost, gone) = (
        anchors.next().unwrap().clone(),
        anchors.next().unwrap().clone(),
        anchors.next().unwrap().clone(),
        anchors.next().unwrap().clone(),
    );
    let guid_lost = env.ad_guids().await[&lost].1.clone();
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    let edited_dn = ad[&edited]["dn"][0].clone();
    admin
        .modify(
            &edited_dn,
            vec![
                Mod::Replace("title".into(), ["Edited By Hand".into()].into()),
                Mod::Replace("description".into(), ["not managed".into()].into()),
            ],
        )
        .await
        .unwrap();
    admin.delete(&ad[&deleted]["dn"][0]).await.unwrap();
    admin.delete(&ad[&gone]["dn"][0]).await.unwrap();

    // A normal run trusts the snapshot: the hand edit and delete stay.
    let normal = env.sync_ok();
    assert!(
        summary_line(&normal, "added").contains(NO_WRITES),
        "{normal:?}"
    );
    let now = by_anchor(&env.ad_objects().await);
    assert_eq!(now[&edited]["title"], vec!["Edited By Hand"]);
    assert!(!now.contains_key(&deleted));

    rusqlite::Connection::open(env.state_dir().join("absync.db"))
        .unwrap()
        .execute("DELETE FROM objects WHERE anchor = ?1", [&lost])
        .unwrap();
    // One object deleted by hand belongs to a person who has since left the
    // source too: its snapshot row goes, nothing is recreated.
    let gone_dn = env.source_people("(objectClass=nhsPerson)").await[&gone]["dn"][0].clone();
    env.change_source(&format!("dn: {gone_dn}\nchangetype: delete\n\n"));

    let plan = env.absync(&["plan", "--full"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(plan.stderr.contains("drift 4"), "{plan:?}");
    let full = plan_then_sync(&env, &["--full"]);
    assert_eq!(full.code, 0, "{full:?}");
    let after = by_anchor(&env.ad_objects().await);
    assert_eq!(
        after[&edited]["title"], ad[&edited]["title"],
        "managed attribute repaired"
    );
    assert_eq!(
        after[&edited]["description"],
        vec!["not managed"],
        "unmanaged left alone"
    );
    assert!(after.contains_key(&deleted), "recreated");
    assert_eq!(
        env.ad_guids().await[&lost].1,
        guid_lost,
        "re-adopted, not recreated"
    );
    let snap = env.snapshot();
    let records = snap.records(snap.runs(1).unwrap()[0].id).unwrap();
    let drift: BTreeSet<(String, String)> = records
        .iter()
        .filter(|r| r.op == "drift")
        .map(|r| (r.anchor.clone().unwrap(), r.reason.clone()))
        .collect();
    assert_eq!(
        drift,
        BTreeSet::from([
            (edited.clone(), "changed in target".to_string()),
            (deleted.clone(), "missing from target".to_string()),
            (lost.clone(), "not in the snapshot (re-adopted)".to_string()),
            (gone.clone(), "missing from target".to_string()),
        ])
    );
    assert!(!after.contains_key(&gone), "not recreated");
    // Its snapshot row went with the drift record: the snapshot holds
    // exactly what AD holds.
    assert_eq!(snap.count().unwrap() as usize, after.len());
    let again = env.absync(&["sync", "--full"]);
    assert_eq!(again.code, 0);
    assert!(again.stderr.contains("drift 0"), "{again:?}");
}

#[tokio::test]
async fn without_a_quarantine_ou_the_mapping_hides_in_place_and_unhides() {
    let env = SyncEnv::new("hide-in-place", 42, 40, 2, "nhs-to-ad-mail-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-H", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.set_safety(&rails(1000, 100, "7d", None));
    env.sync_ok();
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let (anchor, dn) = people
        .iter()
        .find(|(_, a)| a["nhsentrystatus"][0] == "active")
        .map(|(u, a)| (u.clone(), a["dn"][0].clone()))
        .unwrap();
    let before = env.ad_guids().await[&anchor].clone();
    let leave =
        "dn: DN\nchangetype: modify\nreplace: nhsEntryStatus\nnhsEntryStatus: leaver\n-\n\n";
    env.change_source(&leave.replace("DN", &dn));
    let hid = plan_then_sync(&env, &[]);
    assert_eq!(hid.code, 0, "{hid:?}");
    let ad = by_anchor(&env.ad_objects().await);
    assert_eq!(ad[&anchor]["msexchhidefromaddresslists"], vec!["TRUE"]);
    assert_eq!(
        env.ad_guids().await[&anchor],
        before,
        "same place, same object"
    );

    env.change_source(&leave.replace("DN", &dn).replace(": leaver", ": active"));
    let back = plan_then_sync(&env, &[]);
    assert_eq!(back.code, 0, "{back:?}");
    let ad = by_anchor(&env.ad_objects().await);
    assert!(
        !ad[&anchor].contains_key("msexchhidefromaddresslists"),
        "{:?}",
        ad[&anchor]
    );
    assert_eq!(env.ad_guids().await[&anchor], before);
}
