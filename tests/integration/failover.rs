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
use std::process::{Command, Stdio};
use std::time::Instant;

use absync::ldap::syncrepl::SyncMessage;
use absync::ldap::{first_value, Conn};

use crate::common::check::*;
use crate::common::env::{Run, SyncEnv};
use crate::common::testbed::{Server, Testbed, REPLICATION_TIMEOUT};

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

// ---------------------------------------------------------------------
// absync across the DCs: the preferred DC down, a DC killed mid-run, an
// add waiting for the DC it went to, and settle_timeout's twin.
// ---------------------------------------------------------------------

const MAPPING: &str = "nhs-to-ad-contact.toml";

/// Points the environment's config at both servers of each side: the
/// source's in order, the target's as `target` says.
fn use_servers(env: &SyncEnv, target: [Server; 2]) {
    let tb = env.tb;
    let both = |a: &str, b: &str| format!("urls = [\"{}\", \"{}\"]", tb.get(a), tb.get(b));
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let mut out = Vec::new();
    let mut seen_target = false;
    for line in text.lines() {
        if line == "[target]" {
            seen_target = true;
        }
        if line.starts_with("url = ") || line.starts_with("urls = ") {
            out.push(if seen_target {
                both(target[0].url_key(), target[1].url_key())
            } else {
                both("SOURCE_URL", "SOURCE2_URL")
            });
        } else {
            out.push(line.to_string());
        }
    }
    std::fs::write(env.config_path(), out.join("\n") + "\n").unwrap();
}

/// Adds `line` to the config's [target] section.
fn target_line(env: &SyncEnv, line: &str) {
    let text = std::fs::read_to_string(env.config_path()).unwrap();
    let text = text.replacen("[target]\n", &format!("[target]\n{line}\n"), 1);
    std::fs::write(env.config_path(), text).unwrap();
}

/// Every object carrying absync's anchor below `ou` on one DC: (anchor,
/// DN), sorted.
async fn owned_on(tb: &Testbed, on: Server, ou: &str) -> Vec<(String, String)> {
    let mut conn = connect(tb, on, true).await;
    let mut search = conn
        .paged_search(
            ou,
            ldap3::Scope::Subtree,
            "(adminDescription=absync:*)",
            vec!["adminDescription".into()],
            500,
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(e) = search.next().await.unwrap() {
        let anchor = first_value(&e, "adminDescription").unwrap();
        out.push((anchor.trim_start_matches("absync:").to_string(), e.dn));
    }
    search.finish().await.unwrap();
    out.sort();
    out
}

/// After replication, both DCs hold the same objects: each anchor once,
/// none under a replication-conflict (`CNF:`) name. Returns the anchors.
async fn assert_one_each_on_both(tb: &Testbed, ou: &str) -> BTreeSet<String> {
    tokio::task::block_in_place(|| tb.replicate());
    let start = Instant::now();
    let (one, two) = loop {
        let one = owned_on(tb, Server::Dc1, ou).await;
        let two = owned_on(tb, Server::Dc2, ou).await;
        let lower = |v: &[(String, String)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, d)| (a.clone(), d.to_lowercase()))
                .collect()
        };
        if lower(&one) == lower(&two) || start.elapsed() > REPLICATION_TIMEOUT {
            break (one, two);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(one.len(), two.len(), "dc1 {one:?}\ndc2 {two:?}");
    let anchors: BTreeSet<String> = one.iter().map(|(a, _)| a.clone()).collect();
    assert_eq!(anchors.len(), one.len(), "an anchor twice: {one:?}");
    for (anchor, dn) in one.iter().chain(&two) {
        assert!(!dn.contains("CNF:"), "{anchor}: a conflict name: {dn}");
    }
    anchors
}

/// The anchors the agreements cover (everyone in `codes`, not leavers).
async fn expected(env: &SyncEnv, codes: &[String]) -> BTreeSet<String> {
    let source = env.source_people("(objectClass=nhsPerson)").await;
    expected_anchors(&source, codes)
}

/// An environment on the replicated bed using both servers of each side,
/// its OU already on dc2.
async fn replicated_env(tb: &'static Testbed, name: &str, people: u32) -> (SyncEnv, Vec<String>) {
    let env = SyncEnv::new_on(tb, name, 61, people, 2, MAPPING).await;
    let codes = env.org_codes();
    tb.wait_present(Server::Dc2, &env.target_ou).await;
    use_servers(&env, [Server::Dc1, Server::Dc2]);
    (env, codes)
}

/// Runs `absync sync`, paused at `point` until `during` has run.
fn sync_paused(env: &SyncEnv, point: &str, during: impl FnOnce()) -> (Run, std::time::Duration) {
    let pause = env.dir.join("paused");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["--config", env.config_path().to_str().unwrap(), "sync"])
        .env("ABSYNC_LOG", "warn")
        .env("ABSYNC_PAUSEPOINT", format!("{point}:{}", pause.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while !pause.exists() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "the run never reached {point}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    during();
    let resumed = Instant::now();
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (run, resumed.elapsed())
}

/// Each anchor's applied adds in the journal: every one exactly once.
fn assert_added_once(env: &SyncEnv, anchors: &BTreeSet<String>) {
    let snap = env.snapshot();
    let adds = snap
        .stored_where("op = 'add' AND outcome = 'applied'", &[])
        .unwrap();
    let mut per: std::collections::BTreeMap<String, usize> = Default::default();
    for a in adds {
        *per.entry(a.record.anchor.unwrap()).or_default() += 1;
    }
    assert_eq!(
        per.keys().cloned().collect::<BTreeSet<_>>(),
        *anchors,
        "journaled adds"
    );
    assert!(
        per.values().all(|n| *n == 1),
        "an add journaled twice: {per:?}"
    );
    assert_eq!(env.absync(&["journal", "verify"]).code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_dc1_down_at_the_start_the_run_uses_dc2_and_both_dcs_agree() {
    let tb = bed();
    let _bed = tb.ensure_all_up().await;
    let (env, codes) = replicated_env(tb, "fo-start", 60).await;
    env.write_agreements(&[("DSA-FO-1", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let want = expected(&env, &codes).await;
    tokio::task::block_in_place(|| tb.kill(Server::Dc1));
    let t = Instant::now();
    let r = tokio::task::block_in_place(|| env.absync(&["sync"]));
    let took = t.elapsed();
    assert_eq!(r.code, 0, "{r:?}");
    let line = summary_line(&r, "failed over");
    assert!(
        line.contains(&format!("target {}", tb.get("TARGET_URL"))),
        "{line}"
    );
    assert!(
        line.contains(&format!("target {}", tb.get("TARGET2_URL"))),
        "{line}"
    );
    eprintln!("failover: a run with dc1 down from the start took {took:?}");
    // Every object was written to dc2 and names it in the snapshot.
    tokio::task::block_in_place(|| tb.start(Server::Dc1));
    assert_eq!(assert_one_each_on_both(tb, &env.target_ou).await, want);
    assert_added_once(&env, &want);
    // dc1 back and preferred again: nothing to do.
    let again = tokio::task::block_in_place(|| env.sync_ok());
    assert!(
        summary_line(&again, "added").contains(NO_WRITES),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_dc1_killed_mid_adds_the_run_moves_to_dc2_and_nothing_is_duplicated() {
    let tb = bed();
    let _bed = tb.ensure_all_up().await;
    // Killed when dc1 had accepted the fourth window of adds (not yet
    // committed), and when the fourth window's intents were recorded (the
    // adds not yet sent: they wait for dc1).
    for (name, point) in [
        ("fo-mid-sent", "before-commit:4"),
        ("fo-mid-intent", "after-intent:4"),
    ] {
        let (env, codes) = replicated_env(tb, name, 300).await;
        env.write_agreements(&[("DSA-FO-2", &codes, ALL_ATTRS, &day(-1), &day(1))]);
        let want = expected(&env, &codes).await;
        let (r, after_resume) =
            tokio::task::block_in_place(|| sync_paused(&env, point, || tb.kill(Server::Dc1)));
        assert_eq!(r.code, 0, "{point}: {r:?}");
        assert!(r.stderr.contains("lost a server during the run"), "{r:?}");
        let line = summary_line(&r, "failed over");
        assert!(
            line.contains(&format!("target {}", tb.get("TARGET_URL"))),
            "{line}"
        );
        if point.starts_with("after-intent") {
            let waiting = summary_line(&r, "waiting for the DC");
            assert!(
                waiting.ends_with("waiting for the DC a change went to 16"),
                "{r:?}"
            );
        }
        eprintln!(
            "failover: dc1 killed at {point}: the run ended {after_resume:?} after resuming\n{}",
            r.stderr
        );
        // dc1 back: the next run settles whatever waited for it, then adds
        // what never landed.
        tokio::task::block_in_place(|| tb.start(Server::Dc1));
        let next = tokio::task::block_in_place(|| env.sync_ok());
        assert!(!next.stderr.contains("waiting for"), "{next:?}");
        assert_eq!(assert_one_each_on_both(tb, &env.target_ou).await, want);
        assert_added_once(&env, &want);
    }
    // Undisturbed, for comparison: the same number of people, all up.
    let (calm, calm_codes) = replicated_env(tb, "fo-mid-calm", 300).await;
    calm.write_agreements(&[("DSA-FO-2", &calm_codes, ALL_ATTRS, &day(-1), &day(1))]);
    let t = Instant::now();
    tokio::task::block_in_place(|| calm.sync_ok());
    eprintln!("failover: the same run undisturbed took {:?}", t.elapsed());
}

/// Syncs the first organisation, then, with the DCs partitioned, crashes a
/// run right after dc1 accepted the adds of the second (kill -9 before the
/// snapshot recorded them), and kills dc1. Returns the anchors of the
/// second organisation (on dc1 only) and of everyone.
async fn adds_stranded_on_dc1(
    tb: &'static Testbed,
    name: &str,
) -> (SyncEnv, BTreeSet<String>, BTreeSet<String>) {
    let (env, codes) = replicated_env(tb, name, 24).await;
    env.write_agreements(&[("DSA-FO-3", &codes[..1], ALL_ATTRS, &day(-1), &day(1))]);
    tokio::task::block_in_place(|| env.sync_ok());
    let first = expected(&env, &codes[..1]).await;
    let all = expected(&env, &codes).await;
    let stranded: BTreeSet<String> = all.difference(&first).cloned().collect();
    assert!(
        !stranded.is_empty() && stranded.len() <= 16,
        "one add window: {}",
        stranded.len()
    );
    assert_one_each_on_both(tb, &env.target_ou).await;
    tokio::task::block_in_place(|| tb.partition());
    env.write_agreements(&[("DSA-FO-3", &codes, ALL_ATTRS, &day(-1), &day(1))]);
    let crashed = Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["--config", env.config_path().to_str().unwrap(), "sync"])
        .env("ABSYNC_FAILPOINT", "before-commit:1")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&crashed.stderr).contains("failpoint before-commit:1 reached"),
        "{crashed:?}"
    );
    let on_dc1: BTreeSet<String> = owned_on(tb, Server::Dc1, &env.target_ou)
        .await
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert!(stranded.is_subset(&on_dc1), "dc1 accepted the adds");
    tokio::task::block_in_place(|| tb.kill(Server::Dc1));
    (env, stranded, all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_an_add_dc1_accepted_waits_for_dc1_and_is_settled_there_while_the_run_uses_dc2() {
    let tb = bed();
    let _bed = tb.ensure_all_up().await;
    let (env, stranded, all) = adds_stranded_on_dc1(tb, "fo-wait").await;
    // dc1 down, within settle_timeout: left alone, not sent again to dc2.
    let r = tokio::task::block_in_place(|| env.absync(&["sync"]));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("waiting for CN=NTDS Settings,CN=DC1"),
        "{r:?}"
    );
    let line = summary_line(&r, "waiting for the DC");
    assert!(line.ends_with(&stranded.len().to_string()), "{line}");
    let on_dc2 = owned_on(tb, Server::Dc2, &env.target_ou).await;
    assert!(
        on_dc2.iter().all(|(a, _)| !stranded.contains(a)),
        "nothing re-added on dc2"
    );
    let snap = env.snapshot();
    let waits = snap
        .stored_where("op = 'settle' AND outcome = 'waiting'", &[])
        .unwrap();
    let waited: BTreeSet<String> = waits
        .iter()
        .filter_map(|s| s.record.anchor.clone())
        .collect();
    assert_eq!(waited, stranded);
    drop(snap);
    // dc1 answers again (still partitioned): a run through dc2 settles
    // the adds on dc1, where they are, and sends nothing again.
    tokio::task::block_in_place(|| tb.start(Server::Dc1));
    use_servers(&env, [Server::Dc2, Server::Dc1]);
    let settled = tokio::task::block_in_place(|| env.sync_ok());
    assert!(
        summary_line(&settled, "recovered after an interrupted run").contains(&format!(
            "recovered after an interrupted run {}",
            stranded.len()
        )),
        "{settled:?}"
    );
    assert!(
        summary_line(&settled, "added").contains("added 0"),
        "{settled:?}"
    );
    tokio::task::block_in_place(|| tb.heal());
    assert_eq!(assert_one_each_on_both(tb, &env.target_ou).await, all);
    assert_added_once(&env, &all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_dc1_down_past_settle_timeout_the_add_is_made_on_dc2_and_the_twin_removed() {
    let tb = bed();
    let _bed = tb.ensure_all_up().await;
    let (env, stranded, all) = adds_stranded_on_dc1(tb, "fo-timeout").await;
    target_line(&env, "settle_timeout = \"1s\"");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = tokio::task::block_in_place(|| env.sync_ok());
    assert!(r.stderr.contains("settle_timeout has passed"), "{r:?}");
    assert!(
        summary_line(&r, "added").contains(&format!("added {}", stranded.len())),
        "{r:?}"
    );
    // dc1 returns holding its own copies: AD keeps both of each name.
    tokio::task::block_in_place(|| {
        tb.start(Server::Dc1);
        tb.heal();
    });
    let start = Instant::now();
    loop {
        let on_dc2 = owned_on(tb, Server::Dc2, &env.target_ou).await;
        let twins = on_dc2.iter().filter(|(_, dn)| dn.contains("CNF:")).count();
        if twins == stranded.len() {
            break;
        }
        assert!(
            start.elapsed() < REPLICATION_TIMEOUT,
            "{twins} CNF twins on dc2: {on_dc2:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // A full run keeps the object the snapshot knows and deletes the twin.
    let full = tokio::task::block_in_place(|| env.absync(&["sync", "--full"]));
    assert_eq!(full.code, 0, "{full:?}");
    let snap = env.snapshot();
    let run = snap.runs(1).unwrap()[0].id;
    let twins = snap.records(run).unwrap();
    let deleted = twins
        .iter()
        .filter(|r| r.op == "twin" && r.outcome == "deleted")
        .count();
    let kept = twins
        .iter()
        .filter(|r| r.op == "twin" && r.outcome == "kept")
        .count();
    assert_eq!(
        (deleted, kept),
        (stranded.len(), stranded.len()),
        "{twins:?}"
    );
    drop(snap);
    assert_eq!(assert_one_each_on_both(tb, &env.target_ou).await, all);
    assert_eq!(env.absync(&["journal", "verify"]).code, 0);
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
