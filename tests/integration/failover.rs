//! Failover: several servers on each side (`up.sh --replicas`). These tests
//! prove the replicated test bed itself: both DCs and both slapd providers
//! replicate both ways, a cookie taken from one provider serves on the
//! other, and a killed server leaves its partner serving and catches up
//! when it comes back.
//!
//! They share one replicated test bed and kill its servers, so they run one
//! at a time (the nextest test group `replicas`), and each starts with
//! `ensure_all_up`.

use std::collections::BTreeSet;
use std::time::Instant;

use absync::ldap::syncrepl::SyncMessage;
use absync::ldap::{first_value, Conn};

use crate::common::testbed::{Server, Testbed};

fn bed() -> &'static Testbed {
    tokio::task::block_in_place(Testbed::replicated)
}

async fn connect(tb: &Testbed, server: Server, admin: bool) -> Conn {
    let ep = if admin {
        tb.admin_on(server)
    } else {
        tb.account_on(server)
    };
    Conn::connect(&ep).await.unwrap_or_else(|e| {
        panic!(
            "bind to {} ({}): {e}",
            server.name(),
            tb.get(server.url_key())
        )
    })
}

/// Adds a contact as the service account, as absync would.
async fn add_contact(tb: &Testbed, on: Server, dn: &str, cn: &str) {
    let mut svc = connect(tb, on, false).await;
    svc.add(
        dn,
        vec![
            ("objectClass".into(), ["contact".into()].into()),
            ("cn".into(), [cn.to_string()].into()),
            ("sn".into(), ["Failover".into()].into()),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("adding {dn} on {}: {e}", on.name()));
    svc.unbind().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_added_on_either_dc_reaches_the_other_and_so_does_its_delete() {
    let tb = bed();
    let _bed = tb.ensure_all_up().await;
    let ou = tb.new_target_ou("failover-dcs").await;
    tb.wait_present(Server::Dc2, &ou).await;

    for on in [Server::Dc1, Server::Dc2] {
        let dn = format!("CN=added on {},{ou}", on.name());
        add_contact(tb, on, &dn, &format!("added on {}", on.name())).await;
        let took = tb.wait_present(on.peer(), &dn).await;
        eprintln!(
            "failover: add on {} reached {} in {took:?}",
            on.name(),
            on.peer().name()
        );
    }
    // Each deletes what the other added.
    for on in [Server::Dc2, Server::Dc1] {
        let dn = format!("CN=added on {},{ou}", on.peer().name());
        let mut svc = connect(tb, on, false).await;
        svc.delete(&dn).await.unwrap();
        let took = tb.wait_absent(on.peer(), &dn).await;
        eprintln!(
            "failover: delete on {} reached {} in {took:?}",
            on.name(),
            on.peer().name()
        );
    }
}

/// LDIF for one person under `people` (an ou the test made).
fn person(people: &str, uid: &str, title: &str) -> String {
    format!(
        "dn: uid={uid},{people}\nobjectClass: inetOrgPerson\nobjectClass: nhsPerson\n\
         uid: {uid}\ncn: Failover {uid}\nsn: Failover\ntitle: {title}\nnhsOdsCode: FO1\n\
         nhsEntryStatus: active\nmail: failover.{uid}@nhs.net\n\n"
    )
}

/// A subtree of its own on `on`, with people `uids`; returns (base, people).
fn source_subtree(tb: &Testbed, on: Server, name: &str, uids: &[&str]) -> (String, String) {
    let base = format!(
        "ou={},{}",
        crate::common::unique(name),
        tb.get("SOURCE_BASE_DN")
    );
    let people = format!("ou=People,{base}");
    let mut ldif = format!(
        "dn: {base}\nobjectClass: organizationalUnit\nou: {}\n\n\
         dn: {people}\nobjectClass: organizationalUnit\nou: People\n\n",
        base[3..].split(',').next().unwrap()
    );
    for uid in uids {
        ldif.push_str(&person(&people, uid, "Clerk"));
    }
    tb.ldapmodify_on(on, ldif.as_bytes(), true);
    (base, people)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_added_on_either_slapd_reaches_the_other_and_so_does_its_delete() {
    let tb = bed();
    let _bed = tb.ensure_all_up().await;
    let (_, people) = source_subtree(tb, Server::Source1, "failover-src", &[]);
    tb.wait_present(Server::Source2, &people).await;

    for (on, uid) in [(Server::Source1, "1000001"), (Server::Source2, "1000002")] {
        tb.ldapmodify_on(on, person(&people, uid, "Clerk").as_bytes(), true);
        let dn = format!("uid={uid},{people}");
        let took = tb.wait_present(on.peer(), &dn).await;
        eprintln!(
            "failover: add on {} reached {} in {took:?}",
            on.name(),
            on.peer().name()
        );
    }
    for (on, uid) in [(Server::Source2, "1000001"), (Server::Source1, "1000002")] {
        let dn = format!("uid={uid},{people}");
        tb.ldapmodify_on(
            on,
            format!("dn: {dn}\nchangetype: delete\n").as_bytes(),
            false,
        );
        let took = tb.wait_absent(on.peer(), &dn).await;
        eprintln!(
            "failover: delete on {} reached {} in {took:?}",
            on.name(),
            on.peer().name()
        );
    }
}

/// What a sync search with `cookie` under `base` returns from `on`, as the
/// sync account: (DNs of changed entries, deleted UUIDs, present UUIDs,
/// refreshDeletes).
async fn changes_since(
    tb: &Testbed,
    on: Server,
    base: &str,
    cookie: &[u8],
) -> (BTreeSet<String>, BTreeSet<String>, usize, bool) {
    let mut conn = connect(tb, on, false).await;
    let mut search = conn
        .sync_search(
            base,
            "(objectClass=*)",
            vec!["uid".into(), "title".into()],
            Some(cookie.to_vec()),
        )
        .await
        .unwrap();
    let (mut changed, mut deleted, mut present) = (BTreeSet::new(), BTreeSet::new(), 0);
    while let Some(msg) = search.next().await.unwrap() {
        match msg {
            SyncMessage::Changed(e) => {
                changed.insert(e.dn);
            }
            SyncMessage::Deleted(uuid) => {
                deleted.insert(uuid);
            }
            SyncMessage::IdSet {
                deletes: true,
                uuids,
            } => deleted.extend(uuids),
            SyncMessage::Present(_) => present += 1,
            SyncMessage::IdSet { uuids, .. } => present += uuids.len(),
            SyncMessage::Other => {}
        }
    }
    let done = search.finish().await.unwrap();
    (changed, deleted, present, done.refresh_deletes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_from_one_slapd_gives_exactly_the_changes_since_on_the_other() {
    let tb = bed();
    let _bed = tb.ensure_all_up().await;
    let (base, people) = source_subtree(
        tb,
        Server::Source1,
        "failover-cookie",
        &["2000001", "2000002", "2000003"],
    );
    let dn = |uid: &str| format!("uid={uid},{people}");
    tb.wait_present(Server::Source2, &dn("2000003")).await;

    let mut reader = connect(tb, Server::Source1, false).await;
    let cookie = reader
        .current_cookie(&base)
        .await
        .unwrap()
        .expect("source1 gives a cookie");
    eprintln!(
        "failover: cookie from source1: {}",
        String::from_utf8_lossy(&cookie)
    );
    let mut admin = connect(tb, Server::Source1, true).await;
    let gone_uuid = admin
        .read(&dn("2000002"), &["entryUUID"])
        .await
        .unwrap()
        .and_then(|e| first_value(&e, "entryUUID"))
        .expect("entryUUID of the entry to delete");

    // On source1: a modify, a delete, an add (in this order; the add
    // arriving on source2 means the others have too); on source2 an add.
    tb.ldapmodify_on(
        Server::Source1,
        format!(
            "dn: {}\nchangetype: modify\nreplace: title\ntitle: Ward Manager\n\n\
             dn: {}\nchangetype: delete\n\n",
            dn("2000001"),
            dn("2000002")
        )
        .as_bytes(),
        false,
    );
    tb.ldapmodify_on(
        Server::Source1,
        person(&people, "2000004", "Clerk").as_bytes(),
        true,
    );
    tb.wait_present(Server::Source2, &dn("2000004")).await;
    tb.wait_absent(Server::Source2, &dn("2000002")).await;
    tb.ldapmodify_on(
        Server::Source2,
        person(&people, "2000005", "Clerk").as_bytes(),
        true,
    );
    tb.wait_present(Server::Source1, &dn("2000005")).await;

    let expected_changed: BTreeSet<String> = [dn("2000001"), dn("2000004"), dn("2000005")].into();
    let expected_deleted: BTreeSet<String> = [gone_uuid].into();
    for on in [Server::Source2, Server::Source1] {
        let (changed, deleted, present, refresh_deletes) =
            changes_since(tb, on, &base, &cookie).await;
        eprintln!(
            "failover: source1's cookie on {}: changed {changed:?}, deleted {deleted:?}, \
             present {present}, refreshDeletes {refresh_deletes}",
            on.name()
        );
        assert_eq!(
            changed,
            expected_changed,
            "changed entries on {}",
            on.name()
        );
        assert_eq!(deleted, expected_deleted, "deleted UUIDs on {}", on.name());
        assert_eq!(present, 0, "no present phase on {}", on.name());
        assert!(refresh_deletes, "delete phase on {}", on.name());
    }
    let title = connect(tb, Server::Source2, true)
        .await
        .read(&dn("2000001"), &["title"])
        .await
        .unwrap()
        .and_then(|e| first_value(&e, "title"));
    assert_eq!(title.as_deref(), Some("Ward Manager"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_dc1_killed_dc2_serves_and_dc1_catches_up_when_it_is_back() {
    let tb = bed();
    let _bed = tb.ensure_all_up().await;
    let ou = tb.new_target_ou("failover-kill").await;
    tb.wait_present(Server::Dc2, &ou).await;

    tokio::task::block_in_place(|| tb.kill(Server::Dc1));
    assert!(!tokio::task::block_in_place(|| tb.is_up(Server::Dc1)));
    assert!(
        Conn::connect(&tb.account_on(Server::Dc1)).await.is_err(),
        "dc1 still answers after SIGKILL"
    );

    // dc2 serves reads and writes as the service account at once.
    let t = Instant::now();
    let mut svc = connect(tb, Server::Dc2, false).await;
    assert!(svc.read(&ou, &["1.1"]).await.unwrap().is_some());
    let dn = format!("CN=added while dc1 was down,{ou}");
    add_contact(tb, Server::Dc2, &dn, "added while dc1 was down").await;
    eprintln!(
        "failover: dc2 read and wrote {:?} after dc1 was killed",
        t.elapsed()
    );

    let t = Instant::now();
    tokio::task::block_in_place(|| tb.start(Server::Dc1));
    let back = t.elapsed();
    let caught_up = tb.wait_present(Server::Dc1, &dn).await;
    eprintln!("failover: dc1 answered {back:?} after its start, caught up {caught_up:?} later");
    let mut svc1 = connect(tb, Server::Dc1, false).await;
    assert!(svc1.read(&dn, &["1.1"]).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_source1_killed_source2_serves_and_source1_catches_up_when_it_is_back() {
    let tb = bed();
    let _bed = tb.ensure_all_up().await;
    let (_, people) = source_subtree(tb, Server::Source1, "failover-srckill", &["3000001"]);
    let dn = |uid: &str| format!("uid={uid},{people}");
    tb.wait_present(Server::Source2, &dn("3000001")).await;

    tokio::task::block_in_place(|| tb.kill(Server::Source1));
    assert!(!tokio::task::block_in_place(|| tb.is_up(Server::Source1)));
    let mut reader = connect(tb, Server::Source2, false).await;
    assert!(reader
        .read(&dn("3000001"), &["1.1"])
        .await
        .unwrap()
        .is_some());
    tb.ldapmodify_on(
        Server::Source2,
        person(&people, "3000002", "Clerk").as_bytes(),
        true,
    );

    let t = Instant::now();
    tokio::task::block_in_place(|| tb.start(Server::Source1));
    let back = t.elapsed();
    let caught_up = tb.wait_present(Server::Source1, &dn("3000002")).await;
    eprintln!("failover: source1 answered {back:?} after its start, caught up {caught_up:?} later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_dcs_replicate_nothing_until_healed() {
    let tb = bed();
    let _bed = tb.ensure_all_up().await;
    let ou = tb.new_target_ou("failover-partition").await;
    tb.wait_present(Server::Dc2, &ou).await;

    tokio::task::block_in_place(|| tb.partition());
    let dn = format!("CN=added during the partition,{ou}");
    add_contact(tb, Server::Dc1, &dn, "added during the partition").await;
    // Unpartitioned, it arrives within a second (notify interval 1 s).
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut admin2 = connect(tb, Server::Dc2, true).await;
    assert!(
        admin2.read(&dn, &["1.1"]).await.unwrap().is_none(),
        "{dn} reached dc2 through the partition"
    );

    // heal replicates at once.
    tokio::task::block_in_place(|| tb.heal());
    assert!(
        admin2.read(&dn, &["1.1"]).await.unwrap().is_some(),
        "{dn} is not on dc2 after heal"
    );
}
