//! Address collisions across the domain: a council user and a council
//! contact outside the managed OU hold addresses that source people then
//! claim. The adds and the modify that would duplicate them are withheld and
//! journaled as conflicts naming the council's objects, which stay
//! untouched; everyone else is synced. Checked with independent searches of
//! AD as the domain administrator, the journal and the summary.

use std::collections::{BTreeMap, BTreeSet};

use absync::ldap::Conn;

use crate::common::check::*;
use crate::common::env::SyncEnv;

const MAPPING: &str = "nhs-to-ad-mail-contact.toml";

/// An object outside the test's OU as the administrator reads it, every
/// attribute (whenChanged and uSNChanged included).
async fn read_all(env: &SyncEnv, dn: &str) -> BTreeMap<String, Vec<String>> {
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    let e = admin
        .read(dn, &["*", "uSNChanged", "whenChanged"])
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{dn} is gone"));
    admin.unbind().await;
    e.attrs
        .into_iter()
        .map(|(k, v)| (k.to_lowercase(), v))
        .collect()
}

/// The source LDIF that sets one person's mail.
fn set_mail(dn: &str, mail: &str) -> String {
    format!("dn: {dn}\nchangetype: modify\nreplace: mail\nmail: {mail}\n\n")
}

/// Conflict records of a run, by anchor (every one kept: none may repeat).
fn conflicts(
    records: &[absync::state::journal::Record],
) -> BTreeMap<String, Vec<&absync::state::journal::Record>> {
    let mut out: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.op == "conflict") {
        out.entry(r.anchor.clone().unwrap_or_default())
            .or_default()
            .push(r);
    }
    out
}

/// Asserts `r` is a withheld conflict naming `with` and the address.
fn names(r: &absync::state::journal::Record, with: &str, addr: &str) {
    assert_eq!(r.outcome, "withheld", "{r:?}");
    assert_eq!(
        r.old_dn.as_deref().map(str::to_lowercase),
        Some(with.to_lowercase()),
        "the conflict names the object holding the address: {r:?}"
    );
    let error = r.error.as_deref().unwrap_or_default().to_lowercase();
    assert!(
        error.contains(&addr.to_lowercase()) && error.contains(&with.to_lowercase()),
        "{r:?}"
    );
}

#[tokio::test]
async fn an_address_held_elsewhere_in_the_domain_withholds_the_add_and_the_modify() {
    let env = SyncEnv::new("collide", 41, 40, 2, MAPPING).await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-C-001", &orgs, ALL_ATTRS, &day(-1), &day(1))]);
    let source = env.source_people("(objectClass=nhsPerson)").await;
    let expected = expected_anchors(&source, &orgs);
    let mut with_mail = expected
        .iter()
        .filter(|u| source[*u].contains_key("mail"))
        .cloned();
    let (p1, p2, p3) = (
        with_mail.next().unwrap(),
        with_mail.next().unwrap(),
        with_mail.next().unwrap(),
    );

    // Addresses no other test uses: the council's, claimed by p1 and p2.
    let tag = crate::common::unique("c").replace('-', "");
    let x = format!("{tag}.x@council.example");
    let y = format!("{tag}.y@council.example");
    let ldif: String = [(&p1, &x), (&p2, &y)]
        .iter()
        .map(|(p, m)| set_mail(&source[*p]["dn"][0], m))
        .collect();
    env.change_source(&ldif);

    // Outside the managed OU: a council user whose mail is X (in capitals,
    // the same mailbox) and a council contact with smtp:Y among its proxy
    // addresses.
    let base = env.tb.get("TARGET_BASE_DN");
    let user_dn = format!("CN=Council {tag},CN=Users,{base}");
    let contact_dn = format!("CN=Council Contact {tag},CN=Users,{base}");
    let sam = format!("c{}", &tag[tag.len().saturating_sub(18)..]);
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    admin
        .add(
            &user_dn,
            vec![
                ("objectClass".into(), set(&["user"])),
                ("sAMAccountName".into(), set(&[&sam])),
                ("mail".into(), set(&[&x.to_uppercase()])),
            ],
        )
        .await
        .unwrap();
    admin
        .add(
            &contact_dn,
            vec![
                ("objectClass".into(), set(&["contact"])),
                (
                    "proxyAddresses".into(),
                    set(&[
                        &format!("SMTP:{tag}.main@council.example"),
                        &format!("smtp:{y}"),
                    ]),
                ),
            ],
        )
        .await
        .unwrap();
    admin.unbind().await;
    let council = [user_dn.clone(), contact_dn.clone()];
    let mut council_before = Vec::new();
    for dn in &council {
        council_before.push(read_all(&env, dn).await);
    }

    // Run 1: p1 and p2 are withheld, everyone else lands.
    let first = env.sync_ok();
    assert!(
        summary_line(&first, "conflicts").contains("conflicts 2, failed 0"),
        "{first:?}"
    );
    let ad = by_anchor(&env.ad_objects().await);
    let mut landed = expected.clone();
    landed.remove(&p1);
    landed.remove(&p2);
    assert_eq!(ad.keys().cloned().collect::<BTreeSet<_>>(), landed);
    let snap = env.snapshot();
    let runs = snap.runs(10).unwrap();
    let run1 = snap.records(runs[0].id).unwrap();
    let c1 = conflicts(&run1);
    assert_eq!(c1.len(), 2, "{c1:#?}");
    assert_eq!(c1[&p1].len(), 1, "journaled once: {c1:#?}");
    assert_eq!(c1[&p2].len(), 1, "journaled once: {c1:#?}");
    names(c1[&p1][0], &user_dn, &x);
    names(c1[&p2][0], &contact_dn, &y);
    assert!(
        !run1.iter().any(
            |r| [&p1, &p2].contains(&&r.anchor.clone().unwrap_or_default()) && r.op != "conflict"
        ),
        "nothing else happened to p1 and p2: {run1:#?}"
    );

    // Run 2: p3, synced, now has the council user's address (other case).
    // The plan shows the conflict; the run does not modify p3's contact.
    let ad_before = env.ad_objects().await;
    env.change_source(&set_mail(&source[&p3]["dn"][0], &x.to_uppercase()));
    let plan = env.absync(&["plan", "--format", "json"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let ops = plan_ops(&plan.stdout);
    assert!(!ops.contains(&(p3.clone(), "modify".into())), "{ops:?}");
    let second = env.sync_ok();
    assert!(
        summary_line(&second, "conflicts").contains("conflicts 3, failed 0")
            && summary_line(&second, "added").contains(NO_WRITES),
        "{second:?}"
    );
    assert_unchanged(&ad_before, &env.ad_objects().await);
    let runs = snap.runs(10).unwrap();
    let run2 = snap.records(runs[0].id).unwrap();
    let c2 = conflicts(&run2);
    // p1's and p2's conflicts stand (counted, not journaled again); p3's
    // is new.
    assert_eq!(
        c2.keys().cloned().collect::<BTreeSet<_>>(),
        [p3.clone()].into(),
        "{c2:#?}"
    );
    assert!(
        c2.values().all(|v| v.len() == 1),
        "one record each: {c2:#?}"
    );
    names(c2[&p3][0], &user_dn, &x);
    assert!(
        absync::engine::diff::same_dn(
            c2[&p3][0].dn.as_deref().unwrap_or_default(),
            &ad[&p3]["dn"][0]
        ),
        "the conflict is about p3's own contact"
    );

    // The council's objects were never written.
    for (dn, before) in council.iter().zip(&council_before) {
        assert_eq!(&read_all(&env, dn).await, before, "{dn} was touched");
    }

    // Once the council's objects are gone, the withheld writes land.
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    for dn in &council {
        admin.delete(dn).await.unwrap();
    }
    admin.unbind().await;
    let third = env.sync_ok();
    assert!(
        summary_line(&third, "conflicts").contains("conflicts 0, failed 0"),
        "{third:?}"
    );
    // Each conflict's end is journaled, naming the object it was with.
    let run3 = snap.records(snap.runs(1).unwrap()[0].id).unwrap();
    let c3 = conflicts(&run3);
    assert_eq!(c3.len(), 3, "{c3:#?}");
    for (p, with) in [(&p1, &user_dn), (&p2, &contact_dn), (&p3, &user_dn)] {
        let r = c3[p][0];
        assert_eq!(
            (r.outcome.as_str(), r.reason.as_str()),
            ("resolved", "conflict resolved")
        );
        assert_eq!(
            r.old_dn.as_deref().map(str::to_lowercase),
            Some(with.to_lowercase())
        );
    }
    let ad = by_anchor(&env.ad_objects().await);
    assert_eq!(ad.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(ad[&p1]["mail"], vec![x.clone()]);
    assert_eq!(ad[&p2]["proxyaddresses"], vec![format!("SMTP:{y}")]);
    assert_eq!(ad[&p3]["mail"], vec![x.clone()]);
}

/// Runs absync with the collision search's debug log on stderr.
fn absync_logged(env: &SyncEnv, args: &[&str]) -> crate::common::env::Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_absync"))
        .arg("--config")
        .arg(env.config_path())
        .args(args)
        .env("ABSYNC_LOG", "warn,absync::engine::apply::collide=debug")
        .output()
        .expect("run absync");
    crate::common::env::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Points the config's `[target]` at a global catalog (after its anchor
/// attribute, the last line of the section).
fn set_global_catalog(env: &SyncEnv, url: &str) {
    let path = env.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("global_catalog ="))
        .map(|l| match l {
            "anchor_attribute = \"adminDescription\"" => {
                format!("{l}\nglobal_catalog = \"{url}\"\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&path, text).unwrap();
}

/// With `[target] global_catalog`, the collision search asks the forest's
/// global catalog (Samba answers one on port 3269, TLS). The test bed has
/// one domain, so a council object in another domain cannot be made; a
/// contact in the configuration naming context stands in for it: the
/// catalog covers that context, a search of the domain does not (it gets a
/// continuation reference, which absync does not follow). The plan without
/// the catalog shows that add going ahead; with it, the add is withheld
/// naming that contact, which proves the catalog answered. Beside it: a
/// council user in CN=Users (what both find), a contact an admin made in
/// the managed OU without absync's marker (the catalog's hit is read again
/// on the target: not absync's, a collision), and absync's own contact
/// (read again: absync's, no collision).
#[tokio::test]
async fn the_global_catalog_finds_an_address_held_outside_the_domain() {
    let env = SyncEnv::new("collide-gc", 43, 36, 2, MAPPING).await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-C-002", &orgs, ALL_ATTRS, &day(-1), &day(1))]);
    // The catalog searches the whole forest, where the contacts of the
    // tests running beside this one may hold the same generated addresses
    // (outside this OU, they are collisions): this test's addresses are
    // its own.
    let tag = crate::common::unique("g").replace('-', "");
    let people = env.source_people("(objectClass=nhsPerson)").await;
    let own: String = people
        .values()
        .filter(|p| p.contains_key("mail"))
        .enumerate()
        .map(|(i, p)| set_mail(&p["dn"][0], &format!("{tag}.p{i}@nhs.net")))
        .collect();
    env.change_source(&own);
    let source = env.source_people("(objectClass=nhsPerson)").await;
    let expected = expected_anchors(&source, &orgs);
    let mut with_mail = expected
        .iter()
        .filter(|u| source[*u].contains_key("mail"))
        .cloned();
    let mut next = || with_mail.next().unwrap();
    let (p1, p2, p3, p4, p5) = (next(), next(), next(), next(), next());

    let x = format!("{tag}.x@council.example");
    let y = format!("{tag}.y@council.example");
    let z = format!("{tag}.z@council.example");
    let ldif: String = [(&p1, &x), (&p2, &y)]
        .iter()
        .map(|(p, m)| set_mail(&source[*p]["dn"][0], m))
        .collect();
    env.change_source(&ldif);

    let base = env.tb.get("TARGET_BASE_DN");
    let user_dn = format!("CN=Council {tag},CN=Users,{base}");
    let other_nc_dn = format!("CN=Council List {tag},CN=Services,CN=Configuration,{base}");
    let in_ou_dn = format!("CN=Admin Contact {tag},{}", env.target_ou);
    let sam = format!("g{}", &tag[tag.len().saturating_sub(18)..]);
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    let objects: [(&String, absync::ldap::AddAttrs); 3] = [
        (
            &user_dn,
            vec![
                ("objectClass".into(), set(&["user"])),
                ("sAMAccountName".into(), set(&[&sam])),
                ("mail".into(), set(&[&x])),
            ],
        ),
        (
            &other_nc_dn,
            vec![
                ("objectClass".into(), set(&["contact"])),
                ("proxyAddresses".into(), set(&[&format!("SMTP:{y}")])),
            ],
        ),
        (
            &in_ou_dn,
            vec![
                ("objectClass".into(), set(&["contact"])),
                ("proxyAddresses".into(), set(&[&format!("smtp:{z}")])),
            ],
        ),
    ];
    for (dn, attrs) in objects {
        admin.add(dn, attrs).await.unwrap();
    }
    admin.unbind().await;

    // Without a global catalog: the domain search finds the council user,
    // not the object in the other naming context.
    let plan = env.absync(&["plan", "--format", "json"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let ops = plan_ops(&plan.stdout);
    assert!(ops.contains(&(p1.clone(), "conflict".into())), "{ops:?}");
    assert!(ops.contains(&(p2.clone(), "add".into())), "{ops:?}");

    // check: a domain controller's ordinary port is not a global catalog.
    let ip = env.tb.get("TARGET_IP");
    let not_gc = format!("ldaps://{ip}:636");
    set_global_catalog(&env, &not_gc);
    let check = env.absync(&["check"]);
    assert_eq!(check.code, 2, "{check:?}");
    assert!(
        check.stderr.contains(&format!("global catalog {not_gc}")),
        "{check:?}"
    );
    // A sync then fails rather than write without the search.
    let failed = env.absync(&["sync"]);
    assert_eq!(failed.code, 2, "{failed:?}");
    assert!(failed.stderr.contains(&not_gc), "{failed:?}");
    assert_eq!(env.ad_objects().await.len(), 1, "only the admin's contact");
    let gc = format!("ldaps://{ip}:3269");
    set_global_catalog(&env, &gc);
    let check = env.absync(&["check"]);
    assert_eq!(check.code, 0, "{check:?}");
    let svc = env.tb.get("TARGET_SVC_DN");
    let line = format!("{gc}: bound as {svc}; answers searches of the whole forest");
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.starts_with("catalog") && l.ends_with(&line)),
        "{check:?}"
    );

    // Run 1 asks the catalog (one connection, a search per add window):
    // p1 and p2 are withheld naming the council's objects.
    let first = absync_logged(&env, &["sync"]);
    assert_eq!(first.code, 0, "{first:?}");
    let said = |r: &crate::common::env::Run, what: &str| {
        r.stderr
            .lines()
            .filter(|l| l.contains(what) && l.contains(&gc))
            .count()
    };
    assert_eq!(
        said(&first, "connected to the global catalog"),
        1,
        "{first:?}"
    );
    assert!(
        said(&first, "searched the global catalog for the addresses") >= 1,
        "{first:?}"
    );
    assert!(!first.stderr.contains("searched the domain"), "{first:?}");
    assert!(
        summary_line(&first, "conflicts").contains("conflicts 2, failed 0"),
        "{first:?}"
    );
    let snap = env.snapshot();
    let runs = snap.runs(10).unwrap();
    let run1 = snap.records(runs[0].id).unwrap();
    let c1 = conflicts(&run1);
    assert_eq!(
        c1.keys().cloned().collect::<BTreeSet<_>>(),
        [p1.clone(), p2.clone()].into(),
        "{c1:#?}"
    );
    names(c1[&p1][0], &user_dn, &x);
    names(c1[&p2][0], &other_nc_dn, &y);
    let ad = by_anchor(&env.ad_objects().await);
    let mut landed = expected.clone();
    for p in [&p1, &p2] {
        landed.remove(p);
    }
    assert_eq!(ad.keys().cloned().collect::<BTreeSet<_>>(), landed);

    // Run 2, two modifies whose new address the catalog finds in the OU,
    // each read again on the target: p3 takes Z, which the admin's contact
    // holds (no marker: withheld, naming it); p5 takes p4's address, which
    // only absync's own contact for p4 holds (absync's: modified). (Planning
    // already withholds an add whose address an object in the OU has,
    // before any collision search: in the OU, only a modify gets this far.)
    let w = ad[&p4]["mail"][0].clone();
    let ldif: String = [(&p3, &z), (&p5, &w)]
        .iter()
        .map(|(p, m)| set_mail(&source[*p]["dn"][0], m))
        .collect();
    env.change_source(&ldif);
    let second = absync_logged(&env, &["sync"]);
    assert_eq!(second.code, 0, "{second:?}");
    assert!(
        summary_line(&second, "conflicts").contains("conflicts 3, failed 0")
            && summary_line(&second, "modified").contains("modified 1,"),
        "{second:?}"
    );
    assert!(
        said(&second, "searched the global catalog for the addresses") >= 1,
        "{second:?}"
    );
    let runs = snap.runs(10).unwrap();
    let run2 = snap.records(runs[0].id).unwrap();
    let c2 = conflicts(&run2);
    names(c2[&p3][0], &in_ou_dn, &z);
    let ad = by_anchor(&env.ad_objects().await);
    assert_eq!(ad[&p5]["mail"], vec![w]);
    assert_ne!(ad[&p3]["mail"], vec![z.clone()]);

    // Once the three objects are gone, the withheld adds land; a run with
    // nothing to add connects to no catalog.
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    for dn in [&user_dn, &other_nc_dn, &in_ou_dn] {
        admin.delete(dn).await.unwrap();
    }
    admin.unbind().await;
    let third = env.sync_ok();
    assert!(
        summary_line(&third, "conflicts").contains("conflicts 0, failed 0"),
        "{third:?}"
    );
    let ad = by_anchor(&env.ad_objects().await);
    assert_eq!(ad.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(ad[&p2]["mail"], vec![y.clone()]);
    assert_eq!(ad[&p3]["mail"], vec![z.clone()]);
    let quiet = absync_logged(&env, &["sync"]);
    assert_eq!(quiet.code, 0, "{quiet:?}");
    assert!(!quiet.stderr.contains("global catalog"), "{quiet:?}");
}

/// A rename whose new name another object takes after the run planned it
/// (it pauses once the window's intents are committed, before anything is
/// sent): the rename, pipelined in the window, is refused and journaled,
/// and the modify that was to follow it never reaches the object that now
/// holds the name: it goes only after the rename is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_to_a_name_taken_meanwhile_is_refused_and_its_modify_never_reaches_the_holder() {
    use std::process::{Command, Stdio};
    let env = SyncEnv::new("rename-taken", 43, 30, 1, MAPPING).await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-R-001", &orgs, ALL_ATTRS, &day(-1), &day(1))]);
    env.sync_ok();
    let ad = by_anchor(&env.ad_objects().await);
    let source = env.source_people("(objectClass=nhsPerson)").await;
    let (anchor, held) = ad
        .iter()
        .find(|(a, o)| source.contains_key(*a) && o.contains_key("givenname"))
        .expect("a held person with a given name");
    let old_dn = held["dn"][0].clone();
    let tag: String = crate::common::unique("t")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let sn = format!("Taken{tag}");
    let new_dn = format!("CN={} {sn},{}", held["givenname"][0], env.target_ou);
    env.change_source(&format!(
        "dn: {}\nchangetype: modify\nreplace: sn\nsn: {sn}\n-\n\
         replace: title\ntitle: Should Not Land\n-\n\n",
        source[anchor]["dn"][0]
    ));

    let pause = env.dir.join("paused");
    let mut child = Command::new(env!("CARGO_BIN_EXE_absync"))
        .args(["--config", env.config_path().to_str().unwrap(), "sync"])
        .env("ABSYNC_LOG", "warn")
        .env(
            "ABSYNC_PAUSEPOINT",
            format!("after-intent:1:{}", pause.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !pause.exists() {
        assert!(child.try_wait().unwrap().is_none(), "absync ended unpaused");
        assert!(started.elapsed().as_secs() < 120, "never paused");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The council takes the name: a contact of its own, no anchor.
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    admin
        .add(
            &new_dn,
            vec![
                ("objectClass".into(), set(&["contact"])),
                ("description".into(), set(&["the council's own"])),
            ],
        )
        .await
        .unwrap();
    admin.unbind().await;
    let holder_before = read_all(&env, &new_dn).await;
    std::fs::remove_file(&pause).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "an entry failed: {stderr}");

    assert_eq!(
        read_all(&env, &new_dn).await,
        holder_before,
        "the object holding the name is untouched"
    );
    let after = by_anchor(&env.ad_objects().await);
    assert_eq!(after[anchor]["dn"][0], old_dn, "not renamed");
    assert_eq!(
        after[anchor].get("title"),
        held.get("title"),
        "not modified"
    );
    let snap = env.snapshot();
    let run_id = snap.runs(1).unwrap()[0].id;
    let mine: Vec<_> = snap
        .records(run_id)
        .unwrap()
        .into_iter()
        .filter(|r| r.anchor.as_deref() == Some(anchor.as_str()))
        .collect();
    assert_eq!(mine.len(), 1, "{mine:#?}");
    let r = &mine[0];
    assert_eq!(
        (r.op.as_str(), r.outcome.as_str()),
        ("rename", "failed"),
        "{r:?}"
    );
    assert!(
        r.dn.as_deref()
            .unwrap_or_default()
            .eq_ignore_ascii_case(&new_dn),
        "{r:?}"
    );
    assert!(
        r.error
            .as_deref()
            .unwrap_or_default()
            .to_lowercase()
            .contains("exists"),
        "{r:?}"
    );
    assert!(snap.intents().unwrap().is_empty(), "nothing left to settle");
}
