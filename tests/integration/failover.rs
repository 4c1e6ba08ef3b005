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
        // Windows of 16 adds, so that 300 people make many of them.
        .env("ABSYNC_WINDOW", "16,32")
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
    // Killed when dc1 had accepted a window of adds (not yet committed),
    // and when the fourth window's intents were recorded (with what dc1
    // accepted of the second): the third window, sent, and the fourth, not
    // yet sent, wait for dc1.
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
                waiting.ends_with("waiting for the DC a change went to 32"),
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

// ===========================================================================
// Source failover (issue 16): absync itself with both slapd providers as its
// source (`[source] urls = [source1, source2]`), against real servers killed
// with SIGKILL: lost mid-pull, lost between runs (the delta goes on from the
// stored cookie), both lost. Its tests and helpers live in the module below
// (tests `failover::source_failover::…`, selected by
// `-E 'test(/^failover::source/)'`), kept apart from the other tests here.
// ===========================================================================

mod source_failover {
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant, SystemTime};

    use absync::ldap::{Conn, LdapError};
    use ldap3::Scope;

    use crate::common::check::*;
    use crate::common::env::{Objects, Run, SyncEnv};
    use crate::common::testbed::{Server, Testbed, REPLICATION_TIMEOUT};

    /// A fresh environment on the replicated bed whose source is both
    /// providers, source1 first, with an agreement covering every generated
    /// organisation; returns once source2 holds the same people as source1.
    async fn source_env(tb: &'static Testbed, name: &str, people: u32) -> SyncEnv {
        let env = SyncEnv::new_on(tb, name, 16, people, 4, "nhs-to-ad-contact.toml").await;
        let codes = env.org_codes();
        env.write_agreements(&[("DSA-SRC-FO", &codes, ALL_ATTRS, &day(-1), &day(365))]);
        let (one, two) = source_urls(tb);
        let text = std::fs::read_to_string(env.config_path()).unwrap();
        let line = format!("url = \"{one}\"");
        assert!(text.contains(&line), "no {line} in the config");
        let text = text.replacen(&line, &format!("urls = [\"{one}\", \"{two}\"]"), 1);
        std::fs::write(env.config_path(), text).unwrap();
        source_wait_replicated(&env).await;
        env
    }

    /// The LDAPS URLs of source1 and source2.
    fn source_urls(tb: &Testbed) -> (String, String) {
        (
            tb.get(Server::Source1.url_key()).to_string(),
            tb.get(Server::Source2.url_key()).to_string(),
        )
    }

    /// The environment's people as `on` holds them, read as its rootDN:
    /// entryUUID → attributes (lower-case), the DN under "dn".
    async fn source_people_on(env: &SyncEnv, on: Server) -> Objects {
        source_people_read(env, on)
            .await
            .unwrap_or_else(|e| panic!("reading the people on {}: {e}", on.name()))
    }

    async fn source_people_read(env: &SyncEnv, on: Server) -> Result<Objects, LdapError> {
        let mut conn = Conn::connect(&env.tb.admin_on(on)).await?;
        let base = format!("ou=People,{}", env.source_base);
        let attrs = vec!["*".to_string(), "entryUUID".to_string()];
        let mut search = conn
            .paged_search(
                &base,
                Scope::OneLevel,
                "(objectClass=nhsPerson)",
                attrs,
                500,
            )
            .await?;
        let mut out = Objects::new();
        while let Some(e) = search.next().await? {
            let mut attrs: std::collections::BTreeMap<String, Vec<String>> = e
                .attrs
                .into_iter()
                .map(|(k, v)| (k.to_lowercase(), v))
                .collect();
            attrs.insert("dn".into(), vec![e.dn]);
            out.insert(attrs["entryuuid"][0].clone(), attrs);
        }
        search.finish().await?;
        conn.unbind().await;
        Ok(out)
    }

    /// Waits until source2 holds the environment's people exactly as source1
    /// does (attribute values included).
    async fn source_wait_replicated(env: &SyncEnv) -> Duration {
        let start = Instant::now();
        loop {
            let one = source_people_on(env, Server::Source1).await;
            // The subtree itself may not have reached source2 yet.
            let two = source_people_read(env, Server::Source2).await;
            if two.as_ref().is_ok_and(|two| *two == one) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < REPLICATION_TIMEOUT,
                "source2 still differs from source1 after {REPLICATION_TIMEOUT:?}: \
                 {} people on source1, on source2 {:?}",
                one.len(),
                two.map(|t| t.len())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An active person of the environment (the `n`th, in entryUUID order):
    /// (entryUUID, DN).
    fn source_active(people: &Objects, n: usize) -> (String, String) {
        people
            .iter()
            .filter(|(_, a)| a["nhsentrystatus"][0] == "active")
            .nth(n)
            .map(|(u, a)| (u.clone(), a["dn"][0].clone()))
            .expect("enough active people")
    }

    /// absync run as a child process that pauses at `point` (NAME:N, see
    /// `ABSYNC_PAUSEPOINT`) until `resume` is called.
    struct SourcePaused {
        child: Child,
        file: PathBuf,
        started: Instant,
        paused: Instant,
    }

    impl SourcePaused {
        /// Starts `absync ARGS` and returns once it is paused at `point`.
        fn start(env: &SyncEnv, args: &[&str], point: &str) -> SourcePaused {
            let file = env.dir.join("paused");
            let started = Instant::now();
            let mut child = Command::new(env!("CARGO_BIN_EXE_absync"))
                .arg("--config")
                .arg(env.config_path())
                .args(args)
                .env("ABSYNC_LOG", "warn")
                .env("ABSYNC_PAUSEPOINT", format!("{point}:{}", file.display()))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run absync");
            while !file.exists() {
                if child.try_wait().unwrap().is_some() {
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "absync ended before its pausepoint {point}: {}\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                assert!(
                    started.elapsed() < Duration::from_secs(300),
                    "absync did not reach its pausepoint {point}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            SourcePaused {
                child,
                file,
                started,
                paused: Instant::now(),
            }
        }

        /// Lets the run go on and waits for it to end: the run, the moment
        /// it was resumed and its wall time from start to end, the pause
        /// left out.
        fn resume(self) -> (Run, SystemTime, Duration) {
            let resumed = SystemTime::now();
            let pause = self.paused.elapsed();
            std::fs::remove_file(&self.file).unwrap();
            let out = self.child.wait_with_output().unwrap();
            let took = self.started.elapsed().saturating_sub(pause);
            let run = Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            (run, resumed, took)
        }
    }

    /// When the log line containing `text` was written (the log's RFC 3339
    /// time stamp at the start of the line).
    fn source_logged_at(r: &Run, text: &str) -> SystemTime {
        let line = summary_line(r, text);
        let stamp = line.split_whitespace().next().unwrap_or_default();
        let at = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("no time stamp on {line:?}: {e}"));
        SystemTime::from(at)
    }

    /// The journal's records for `anchor` with operation `op`, every run.
    fn source_journaled(env: &SyncEnv, anchor: &str, op: &str) -> Vec<i64> {
        env.snapshot()
            .stored_where("anchor = ?1 AND op = ?2", &[&anchor, &op])
            .unwrap()
            .into_iter()
            .map(|s| s.record.run_id)
            .collect()
    }

    fn source_sync_timed(env: &SyncEnv, args: &[&str]) -> (Run, Duration) {
        let t = Instant::now();
        let r = tokio::task::block_in_place(|| env.absync(args));
        (r, t.elapsed())
    }

    /// Source1 is killed while a full pull is paused after its third page
    /// of 50: the run starts again on source2, reads all of it there, and
    /// deletes the one person gone from the source, exactly once, after the
    /// whole read. (2,000 people: the pull reads at most 1,024 entries ahead
    /// of the stages, so most of them are still to be read from source1
    /// when it dies.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn source1_killed_mid_pull_the_run_reads_all_of_source2_and_deletes_once() {
        let tb = super::bed();
        let _bed = tb.ensure_all_up().await;
        let (one, two) = source_urls(tb);
        let env = source_env(tb, "src-fo-kill", 2000).await;
        env.set_config_line("page_size", "50");
        let (first, first_took) = source_sync_timed(&env, &["sync"]);
        assert_eq!(first.code, 0, "{first:?}");
        let people = source_people_on(&env, Server::Source1).await;

        // One person leaves the source, another changes title.
        let (gone, gone_dn) = source_active(&people, 7);
        let (changed, changed_dn) = source_active(&people, 1500);
        env.change_source(&format!(
            "dn: {gone_dn}\nchangetype: delete\n\n\
             dn: {changed_dn}\nchangetype: modify\nreplace: title\ntitle: Failover Lead\n-\n\n"
        ));
        source_wait_replicated(&env).await;

        let (r, killed, resumed, took) = tokio::task::block_in_place(|| {
            let paused = SourcePaused::start(&env, &["sync", "--full"], "page-end:3");
            tb.kill(Server::Source1);
            let killed = SystemTime::now();
            assert!(!tb.is_up(Server::Source1), "source1 answers after SIGKILL");
            let (r, resumed, took) = paused.resume();
            (r, killed, resumed, took)
        });
        assert_eq!(r.code, 0, "{r:?}");
        // Lost during the read, not at connecting: the run started again.
        assert!(r.stderr.contains("lost a server during the run"), "{r:?}");
        assert!(r.stderr.contains("the source read ended early"), "{r:?}");
        let line = summary_line(&r, "failed over");
        eprintln!("source failover: mid-pull: {line}");
        assert!(line.contains(&format!("source {one} (")), "{line}");
        assert!(line.contains(&format!("used source {two},")), "{line}");
        let counts = summary_line(&r, "added");
        assert!(
            counts.contains("added 0, modified 1, renamed 0, deleted 1;"),
            "{counts}"
        );

        // AD holds every person in scope on the source, the leaver gone.
        let source = source_people_on(&env, Server::Source2).await;
        let ad = by_anchor(&env.ad_objects().await);
        let held: std::collections::BTreeSet<String> = ad.keys().cloned().collect();
        assert_eq!(held, expected_anchors(&source, &env.org_codes()));
        assert!(!held.contains(&gone));
        assert_eq!(ad[&changed]["title"], ["Failover Lead"]);
        // Deleted once, by this run; no other delete in the journal at all.
        let (run, servers) = env.last_run_servers();
        assert_eq!(source_journaled(&env, &gone, "delete"), [run]);
        let deletes = env
            .snapshot()
            .stored_where("op = 'delete'", &[])
            .unwrap()
            .len();
        assert_eq!(deletes, 1, "only the leaver was ever deleted");
        // The run's end record names the servers and the move.
        assert_eq!(servers["source"], two.as_str(), "{servers}");
        assert_eq!(servers["moves"].as_array().unwrap().len(), 1, "{servers}");
        assert_eq!(servers["moves"][0]["side"], "source", "{servers}");
        assert_eq!(servers["moves"][0]["from"], one.as_str(), "{servers}");
        let verify = env.absync(&["journal", "verify"]);
        assert_eq!(verify.code, 0, "{verify:?}");

        // The same full run, undisturbed, with source1 back.
        tokio::task::block_in_place(|| tb.start(Server::Source1));
        source_wait_replicated(&env).await;
        let (calm, calm_took) = source_sync_timed(&env, &["sync", "--full"]);
        assert_eq!(calm.code, 0, "{calm:?}");
        assert!(summary_line(&calm, "added").contains(NO_WRITES), "{calm:?}");
        assert!(!calm.stderr.contains("failed over"), "{calm:?}");

        let noticed = source_logged_at(&r, "lost a server during the run");
        let after = |t: SystemTime| noticed.duration_since(t).unwrap_or_default();
        eprintln!(
            "source failover: {} in scope; first sync {first_took:?}; full run with source1 \
             killed after page 3: {took:?} without the pause (source1 killed {:?} before the \
             run was resumed; loss noticed {:?} after the kill, {:?} after the resume); the \
             same full run undisturbed: {calm_took:?}",
            held.len(),
            resumed.duration_since(killed).unwrap_or_default(),
            after(killed),
            after(resumed),
        );
    }
    /// A delta run after a source failover: the cookie of a run that read
    /// source1 is used on source2 once source1 is killed. On this bed
    /// source2 accepts it and sends exactly the changes since (a delta,
    /// with its delete phase), not everything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn source1_killed_between_runs_the_cookie_it_gave_serves_a_delta_on_source2() {
        let tb = super::bed();
        let _bed = tb.ensure_all_up().await;
        let (one, two) = source_urls(tb);
        let env = source_env(tb, "src-fo-delta", 60).await;
        let first = tokio::task::block_in_place(|| env.sync_ok());
        assert!(!first.stderr.contains("failed over"), "{first:?}");
        let (_, servers) = env.last_run_servers();
        assert_eq!(servers["source"], one.as_str(), "the cookie is source1's");
        let people = source_people_on(&env, Server::Source1).await;
        let (gone, gone_dn) = source_active(&people, 3);
        let (changed, changed_dn) = source_active(&people, 20);
        env.change_source(&format!(
            "dn: {changed_dn}\nchangetype: modify\nreplace: title\ntitle: Delta Lead\n-\n\n\
             dn: {gone_dn}\nchangetype: delete\n\n"
        ));
        let took = source_wait_replicated(&env).await;
        eprintln!("source failover: the changes reached source2 in {took:?}");

        tokio::task::block_in_place(|| tb.kill(Server::Source1));
        let r = tokio::task::block_in_place(|| env.absync(&["sync"]));
        assert_eq!(r.code, 0, "{r:?}");
        eprintln!("source failover: a delta run on source2:\n{}", r.stderr);
        // Source1 was down at connecting: passed over, not lost mid-run.
        assert!(!r.stderr.contains("lost a server during the run"), "{r:?}");
        let line = summary_line(&r, "failed over");
        assert!(line.contains(&format!("source {one} (")), "{line}");
        assert!(line.contains(&format!("used source {two},")), "{line}");
        let pull = summary_line(&r, "pull:");
        assert!(pull.contains("pull: delta, 1 gone"), "{pull}");
        let pulled = summary_line(&r, "pulled");
        assert!(pulled.contains("pulled 1, in scope 1,"), "{pulled}");
        let counts = summary_line(&r, "added");
        assert!(
            counts.contains("added 0, modified 1, renamed 0, deleted 1;"),
            "{counts}"
        );
        let ad = by_anchor(&env.ad_objects().await);
        assert_eq!(ad[&changed]["title"], ["Delta Lead"]);
        assert!(!ad.contains_key(&gone));
        let source = source_people_on(&env, Server::Source2).await;
        let held: std::collections::BTreeSet<String> = ad.keys().cloned().collect();
        assert_eq!(held, expected_anchors(&source, &env.org_codes()));
        let (run, servers) = env.last_run_servers();
        assert_eq!(source_journaled(&env, &gone, "delete"), [run]);
        assert_eq!(servers["source"], two.as_str(), "{servers}");
        assert_eq!(servers["moves"][0]["side"], "source", "{servers}");
        assert_eq!(servers["moves"][0]["from"], one.as_str(), "{servers}");
        let verify = env.absync(&["journal", "verify"]);
        assert_eq!(verify.code, 0, "{verify:?}");
    }

    /// Both source servers down: the run writes nothing, exits 2 and names
    /// both servers, for a delta run and a full run alike.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn source_both_killed_the_run_exits_2_naming_both_and_writes_nothing() {
        let tb = super::bed();
        let _bed = tb.ensure_all_up().await;
        let (one, two) = source_urls(tb);
        let env = source_env(tb, "src-fo-none", 40).await;
        tokio::task::block_in_place(|| env.sync_ok());
        // A change waiting on the source: no run may write anything either.
        let people = source_people_on(&env, Server::Source1).await;
        let (_, dn) = source_active(&people, 2);
        env.change_source(&format!(
            "dn: {dn}\nchangetype: modify\nreplace: title\ntitle: Nobody Reads This\n-\n\n"
        ));
        source_wait_replicated(&env).await;
        let before = env.ad_objects().await;
        let runs_before = env.snapshot().runs(100).unwrap().len();

        tokio::task::block_in_place(|| {
            tb.kill(Server::Source1);
            tb.kill(Server::Source2);
        });
        for args in [&["sync"][..], &["sync", "--full"]] {
            let r = tokio::task::block_in_place(|| env.absync(args));
            assert_eq!(r.code, 2, "{args:?}: {r:?}");
            let msg = summary_line(&r, "no server answered");
            assert!(msg.contains("no server answered (2 tried): "), "{msg}");
            assert!(msg.contains(&format!("{one}: ")), "{msg}");
            assert!(msg.contains(&format!("{two}: ")), "{msg}");
            eprintln!("source failover: both sources down, {args:?}: {msg}");
        }
        assert_unchanged(&before, &env.ad_objects().await);
        // Both runs are on record as failed, naming the servers, with no
        // object record; the journal holds.
        let snap = env.snapshot();
        let runs = snap.runs(100).unwrap();
        assert_eq!(runs.len(), runs_before + 2);
        for run in &runs[..2] {
            assert!(
                run.status
                    .starts_with("failed: no server answered (2 tried): "),
                "{}",
                run.status
            );
            let objects = snap
                .stored_where("run_id = ?1 AND anchor IS NOT NULL", &[&run.id])
                .unwrap();
            assert!(objects.is_empty(), "{objects:?}");
        }
        let verify = env.absync(&["journal", "verify"]);
        assert_eq!(verify.code, 0, "{verify:?}");
    }
}
