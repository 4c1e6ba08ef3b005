//! Delta pulls (RFC 4533 against slapd's syncprov): a run after the first
//! reads only what changed, still sees deletes, leavers and moves out of
//! scope, and falls back to a full pull, visibly, when the cookie is lost,
//! the scope changed or the source cannot serve the delta.

use crate::common::check::*;
use crate::common::env::SyncEnv;

fn pull_line(r: &crate::common::env::Run) -> &str {
    summary_line(r, "pull: ")
}

/// (entryUUID, DN) of the active people of the covered organisations.
fn active_people(
    people: &crate::common::env::Objects,
    covered: &[String],
) -> Vec<(String, String)> {
    people
        .iter()
        .filter(|(_, a)| {
            covered.contains(&a["nhsodscode"][0]) && a["nhsentrystatus"][0] == "active"
        })
        .map(|(uuid, a)| (uuid.clone(), a["dn"][0].clone()))
        .collect()
}

fn journal_reasons(env: &SyncEnv, run_id: i64) -> Vec<(String, String, String)> {
    env.snapshot()
        .records(run_id)
        .unwrap()
        .into_iter()
        .filter(|r| r.outcome == "applied")
        .map(|r| (r.op, r.anchor.unwrap_or_default(), r.reason))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_reads_only_the_changes_and_still_sees_deletes_leavers_and_moves() {
    let env = SyncEnv::new("delta", 131, 200, 4, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    let covered = codes[..3].to_vec();
    env.write_agreements(&[("DSA-DELTA", &covered, ALL_ATTRS, &day(-1), &day(1))]);

    let first = env.sync_ok();
    assert!(
        pull_line(&first).contains("pull: full (no cookie from an earlier run)"),
        "{first:?}"
    );
    assert!(env.snapshot().source_cookie().unwrap().is_some());

    // Nothing changed: nothing read, nothing written.
    let idle = env.sync_ok();
    assert!(pull_line(&idle).contains("pull: delta, 0 gone"), "{idle:?}");
    assert!(
        summary_line(&idle, "pulled").contains("pulled 0,"),
        "{idle:?}"
    );
    assert!(idle.stderr.contains(NO_WRITES), "{idle:?}");

    // One of each change, in covered organisations.
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let mut active = active_people(&people, &covered).into_iter();
    let mut next = || active.next().unwrap();
    let (modified, modified_dn) = next();
    let (deleted, deleted_dn) = next();
    let (leaver, leaver_dn) = next();
    let (moved, moved_dn) = next();
    let (renamed, renamed_dn) = next();
    let new_uid = format!("delta{}", std::process::id());
    env.change_source(&format!(
        "dn: {modified_dn}\nchangetype: modify\nreplace: title\ntitle: Delta Lead\n-\n\n\
         dn: {deleted_dn}\nchangetype: delete\n\n\
         dn: {leaver_dn}\nchangetype: modify\nreplace: nhsEntryStatus\nnhsEntryStatus: leaver\n-\n\n\
         dn: {moved_dn}\nchangetype: modify\nreplace: nhsOdsCode\nnhsOdsCode: {}\n-\n\n\
         dn: {renamed_dn}\nchangetype: modify\nreplace: sn\nsn: Deltaworth\n-\n\n\
         dn: uid={new_uid},ou=People,{}\nchangetype: add\nobjectClass: inetOrgPerson\n\
         objectClass: nhsPerson\nuid: {new_uid}\ncn: Dee Delta\nsn: Delta\ngivenName: Dee\n\
         nhsOdsCode: {}\nnhsEntryStatus: active\n\n",
        codes[3], env.source_base, covered[0]
    ));

    // The dry run and the real run agree, and both read only the changes.
    let run = tokio::task::block_in_place(|| plan_then_sync(&env, &[]));
    assert!(pull_line(&run).contains("pull: delta, 3 gone"), "{run:?}");
    assert!(
        summary_line(&run, "pulled").contains("pulled 3,"),
        "{run:?}"
    );
    tokio::task::block_in_place(|| assert_ad_holds_expected(&env, &covered, "after the delta"));
    let run_id = env.snapshot().runs(1).unwrap()[0].id;
    let done = journal_reasons(&env, run_id);
    for (op, anchor, reason) in [
        ("modify", &modified, "attributes changed"),
        ("delete", &deleted, "deleted from source"),
        ("delete", &leaver, "leaver"),
        ("delete", &moved, "left scope"),
        ("rename", &renamed, "renamed in source"),
    ] {
        assert!(
            done.iter()
                .any(|(o, a, r)| o == op && a == anchor && r == reason),
            "{op} {anchor} ({reason}) in {done:#?}"
        );
    }
    assert_eq!(
        done.iter()
            .filter(|(o, _, r)| o == "add" && r == "new entry")
            .count(),
        1,
        "{done:#?}"
    );

    // A lost cookie: a full pull, which finds nothing to do.
    let db = rusqlite::Connection::open(env.state_dir().join("absync.db")).unwrap();
    db.execute("DELETE FROM source_cookie", []).unwrap();
    let lost = env.sync_ok();
    assert!(
        pull_line(&lost).contains("pull: full (no cookie from an earlier run)"),
        "{lost:?}"
    );
    assert!(lost.stderr.contains(NO_WRITES), "{lost:?}");

    // A changed scope: the cookie belongs to the old one.
    env.write_agreements(&[("DSA-DELTA", &codes[..2], ALL_ATTRS, &day(-1), &day(1))]);
    let narrowed = env.sync_ok();
    assert!(
        pull_line(&narrowed).contains("pull: full (the scope changed since the last run"),
        "{narrowed:?}"
    );
    tokio::task::block_in_place(|| {
        assert_ad_holds_expected(&env, &codes[..2], "after the agreement changed")
    });
    let again = env.sync_ok();
    assert!(pull_line(&again).contains("pull: delta"), "{again:?}");
    assert!(again.stderr.contains(NO_WRITES), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_changes_than_the_source_will_send_fall_back_to_a_full_pull_visibly() {
    // The sync account's unpaged searches stop at 1,000 entries, and an
    // RFC 4533 search cannot be paged: a delta of more changes fails.
    let env = SyncEnv::new("delta-big", 132, 1150, 2, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    env.write_agreements(&[("DSA-BIG", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let ldif: String = people
        .values()
        .filter(|a| a["nhsentrystatus"][0] == "active")
        .map(|a| {
            format!(
                "dn: {}\nchangetype: modify\nreplace: title\ntitle: Bulk Retitled\n-\n\n",
                a["dn"][0]
            )
        })
        .collect();
    assert!(ldif.matches("changetype").count() > 1000, "enough changes");
    env.change_source(&ldif);

    let run = env.sync_ok();
    let line = pull_line(&run);
    assert!(
        line.contains("pull: full (the delta could not be read") && line.contains("size limit"),
        "{run:?}"
    );
    let ad = tokio::task::block_in_place(|| assert_ad_holds_expected(&env, &codes, "fallback"));
    assert!(ad.values().all(|a| a["title"] == ["Bulk Retitled"]));
    let snap = env.snapshot();
    let run_id = snap.runs(1).unwrap()[0].id;
    let pulls = snap
        .stored_where("run_id = ?1 AND op = 'pull'", &[&run_id])
        .unwrap();
    assert_eq!(pulls.len(), 1, "the fallback is journaled: {pulls:#?}");
    assert!(pulls[0].record.reason.contains("size limit"), "{pulls:#?}");
    // Back to deltas afterwards.
    let next = env.sync_ok();
    assert!(pull_line(&next).contains("pull: delta"), "{next:?}");
    assert!(next.stderr.contains(NO_WRITES), "{next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_modify_timestamp_a_delta_reads_the_changes_and_the_full_pull_finds_deletes() {
    let env = SyncEnv::new("delta-ts", 133, 150, 3, "nhs-to-ad-contact.toml").await;
    let codes = env.org_codes();
    let covered = codes[..2].to_vec();
    env.write_agreements(&[("DSA-TS", &covered, ALL_ATTRS, &day(-1), &day(1))]);
    env.write_config("nhs-to-ad-contact.toml", "delta = \"timestamp\"\n");

    let first = env.sync_ok();
    assert!(
        pull_line(&first).contains("pull: full (no cookie from an earlier run)"),
        "{first:?}"
    );
    let stored = env.snapshot().source_cookie().unwrap().unwrap();
    assert_eq!(stored.kind, absync::state::CookieKind::Timestamp);
    // The source was loaded moments ago, inside the watermark's margin: move
    // the watermark past the second the load ended in (modifyTimestamp has
    // one-second resolution and the delta reads `>=`), and wait for that
    // second to begin, so the next delta sees only what changes next.
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap()
        + time::Duration::seconds(1);
    while time::OffsetDateTime::now_utc() < now {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stamp = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let db = rusqlite::Connection::open(env.state_dir().join("absync.db")).unwrap();
    db.execute("UPDATE source_cookie SET cookie = ?1", [stamp.as_bytes()])
        .unwrap();
    let idle = env.sync_ok();
    assert!(
        pull_line(&idle).contains("pull: delta (modifyTimestamp), 0 gone"),
        "{idle:?}"
    );
    assert!(idle.stderr.contains(NO_WRITES), "{idle:?}");

    let people = env.source_people("(objectClass=nhsPerson)").await;
    let mut active = active_people(&people, &covered).into_iter();
    let mut next = || active.next().unwrap();
    let (modified, modified_dn) = next();
    let (leaver, leaver_dn) = next();
    let (moved, moved_dn) = next();
    let (deleted, deleted_dn) = next();
    let new_uid = format!("ts{}", std::process::id());
    env.change_source(&format!(
        "dn: {modified_dn}\nchangetype: modify\nreplace: title\ntitle: Timestamp Lead\n-\n\n\
         dn: {leaver_dn}\nchangetype: modify\nreplace: nhsEntryStatus\nnhsEntryStatus: leaver\n-\n\n\
         dn: {moved_dn}\nchangetype: modify\nreplace: nhsOdsCode\nnhsOdsCode: {}\n-\n\n\
         dn: {deleted_dn}\nchangetype: delete\n\n\
         dn: uid={new_uid},ou=People,{}\nchangetype: add\nobjectClass: inetOrgPerson\n\
         objectClass: nhsPerson\nuid: {new_uid}\ncn: Tess Stamp\nsn: Stamp\ngivenName: Tess\n\
         nhsOdsCode: {}\nnhsEntryStatus: active\n\n",
        codes[2], env.source_base, covered[0]
    ));

    // Only the two changed entries in scope are read; the leaver and the
    // move are seen by their anchors; the delete is not seen yet.
    let run = env.sync_ok();
    assert!(
        pull_line(&run).contains("pull: delta (modifyTimestamp), 2 gone"),
        "{run:?}"
    );
    assert!(
        summary_line(&run, "pulled").contains("pulled 2,"),
        "{run:?}"
    );
    let run_id = env.snapshot().runs(1).unwrap()[0].id;
    let done = journal_reasons(&env, run_id);
    for (op, anchor, reason) in [
        ("modify", &modified, "attributes changed"),
        ("delete", &leaver, "leaver"),
        ("delete", &moved, "left scope"),
    ] {
        assert!(
            done.iter()
                .any(|(o, a, r)| o == op && a == anchor && r == reason),
            "{op} {anchor} ({reason}) in {done:#?}"
        );
    }
    assert!(done.iter().any(|(o, _, r)| o == "add" && r == "new entry"));
    let ad = by_anchor(&env.ad_objects().await);
    assert!(
        ad.contains_key(&deleted),
        "a delete waits for the full pull"
    );

    // The full pull finds the delete.
    let full = env.absync(&["sync", "--full"]);
    assert_eq!(full.code, 0, "{full:?}");
    let run_id = env.snapshot().runs(1).unwrap()[0].id;
    assert!(journal_reasons(&env, run_id)
        .iter()
        .any(|(o, a, r)| o == "delete" && a == &deleted && r == "deleted from source"));
    tokio::task::block_in_place(|| assert_ad_holds_expected(&env, &covered, "after the full pull"));
}
