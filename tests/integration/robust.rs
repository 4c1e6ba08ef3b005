//! Robustness end to end: hostile source values, objects absync does not
//! own, a sync killed with SIGKILL, and `plan --format ldif` applied by
//! hand. Checked with independent searches of AD, the journal, exit codes
//! and the summary absync prints.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use absync::ldap::Conn;

use crate::common::check::*;
use crate::common::env::{anchor_of, SyncEnv};

const MAPPING: &str = "nhs-to-ad-contact.toml";

/// One LDIF attribute line, base64 where the value needs it.
fn ldif_attr(attr: &str, value: &str) -> String {
    let mut s = String::new();
    absync::engine::render::ldif_line(&mut s, attr, value);
    s
}

/// A person added to the source by a test, and what AD should show.
struct Crafted {
    uid: String,
    given: Option<&'static str>,
    sn: &'static str,
    cn: String,
    title: Option<String>,
    /// The name before truncation: displayName, and cn if it fits.
    full_name: String,
}

impl Crafted {
    fn new(n: usize, given: Option<&'static str>, sn: &'static str) -> Crafted {
        let cn = match given {
            Some(g) => format!("{g} {sn}"),
            None => sn.to_string(),
        };
        let full_name = format!("{} {}", given.unwrap_or("").trim(), sn.trim())
            .trim()
            .to_string();
        Crafted {
            uid: format!("hostile{n:02}"),
            given,
            sn,
            cn,
            title: None,
            full_name,
        }
    }

    fn ldif(&self, base: &str, ods: &str) -> String {
        let mut s = format!(
            "dn: uid={},ou=People,{base}\nchangetype: add\nobjectClass: inetOrgPerson\nobjectClass: nhsPerson\nuid: {}\n",
            self.uid, self.uid
        );
        s.push_str(&ldif_attr("cn", &self.cn));
        s.push_str(&ldif_attr("sn", self.sn));
        if let Some(g) = self.given {
            s.push_str(&ldif_attr("givenName", g));
        }
        if let Some(t) = &self.title {
            s.push_str(&ldif_attr("title", t));
        }
        s.push_str(&format!(
            "mail: {}@nhs.net\nnhsOdsCode: {ods}\nnhsEntryStatus: active\n\n",
            self.uid
        ));
        s
    }
}

#[tokio::test]
async fn hostile_values_land_escaped_truncated_and_tie_broken() {
    let env = SyncEnv::new("hostile", 31, 5, 2, MAPPING).await;
    let orgs = env.org_codes();
    let ods = orgs[0].clone();
    env.write_agreements(&[("DSA-H-001", &orgs, ALL_ATTRS, &day(-1), &day(1))]);

    // Every DN-special character, alone and together; a leading '#';
    // leading and trailing spaces; Welsh and Irish letters; a name longer
    // than cn allows; no givenName; nothing usable but cn.
    let mut crafted: Vec<Crafted> = [
        (Some("Hostile"), "Comma, Jr."),
        (Some("Hostile"), "Plus+Sign"),
        (Some("Hostile"), "Quote\"d"),
        (Some("Hostile"), "Back\\Slash"),
        (Some("Hostile"), "<Angle>"),
        (Some("Hostile"), "Semi;Colon"),
        (Some("Hostile"), "Equal=Sign"),
        (Some("Hostile"), "Hash#Mid"),
        (Some("#Leading"), "Hash"),
        (Some("Every"), ",+\"\\<>;=#"),
        (Some("  Spaced"), "Trailing  "),
        (Some("Siân"), "Ó Súilleabháin"),
        (
            Some("Maximilian-Alexander"),
            "Featherstonehaugh-Cholmondeley-Marjoribanks-Wolstenholme",
        ),
        (None, "Mononym"),
        (None, " "),
    ]
    .into_iter()
    .enumerate()
    .map(|(n, (g, sn))| Crafted::new(n, g, sn))
    .collect();
    // Only cn is usable: givenName is absent and sn is a single space.
    let padded = crafted.last_mut().unwrap();
    padded.cn = " Padded Mononym ".into();
    padded.full_name = "Padded Mononym".into();
    let title: String = "Uwch Ymarferydd Nyrsio Clinigol a Phennaeth Gwasanaethau Â Gofal Brys, \
         Gofal Dwys, Meddygaeth Acíwt a Gwasanaethau Cymunedol Integredig (Dros Dro, ar \
         Secondiad o Fwrdd Iechyd Prifysgol Betsi Cadwaladr), Ysbyty Gwynedd"
        .chars()
        .take(200)
        .collect();
    assert_eq!(title.chars().count(), 200);
    let title_128: String = title.chars().take(128).collect();
    assert!(!title_128.ends_with(' '), "test data: no trim at the cut");
    crafted[11].title = Some(title.clone());
    // Three people with the same name in the same organisation.
    let trio_start = crafted.len();
    for n in 0..3 {
        crafted.push(Crafted::new(
            trio_start + n,
            Some("Gwenllïan"),
            "Mac Giolla Phádraig",
        ));
    }
    let ldif: String = crafted
        .iter()
        .map(|c| c.ldif(&env.source_base, &ods))
        .collect();
    env.change_source(&ldif);

    let run = env.sync_ok();
    assert!(summary_line(&run, "added").contains("failed 0"), "{run:?}");

    let source = env.source_people("(objectClass=nhsPerson)").await;
    let uuid_of = |uid: &str| -> String {
        source
            .iter()
            .find(|(_, a)| a["uid"] == vec![uid.to_string()])
            .map(|(u, _)| u.clone())
            .unwrap_or_else(|| panic!("{uid} not in the source"))
    };
    let objects = env.ad_objects().await;
    let ad = by_anchor(&objects);
    assert_eq!(
        ad.keys().cloned().collect::<BTreeSet<_>>(),
        expected_anchors(&source, &orgs),
        "exactly the active people, each once"
    );
    assert_eq!(objects.len(), ad.len(), "nothing but absync's objects");

    for (i, c) in crafted.iter().enumerate() {
        let anchor = uuid_of(&c.uid);
        let a = ad
            .get(&anchor)
            .unwrap_or_else(|| panic!("{} ({:?}) not in AD: {run:?}", c.uid, c.full_name));
        let cn = &a["cn"][0];
        assert_eq!(a["cn"].len(), 1, "{a:?}");
        // AD's name is the RDN value as AD parsed it from absync's DN.
        assert_eq!(&a["name"], &a["cn"], "RDN and cn agree: {a:?}");
        assert_eq!(
            a["displayname"],
            vec![c.full_name.clone()],
            "displayName of {}",
            c.uid
        );
        assert_eq!(a["company"], vec![format!("NHS {ods}")]);
        let sn = c.sn.trim();
        if sn.is_empty() {
            assert!(!a.contains_key("sn"), "no empty sn: {a:?}");
        } else {
            assert_eq!(a["sn"], vec![sn.to_string()], "sn of {}", c.uid);
        }
        match c.given.map(str::trim) {
            Some(g) => assert_eq!(a["givenname"], vec![g.to_string()]),
            None => assert!(!a.contains_key("givenname"), "{a:?}"),
        }
        if i >= trio_start {
            continue;
        }
        if c.full_name.chars().count() > 64 {
            assert_eq!(
                cn, "Maximilian-Alexander Featherstonehaugh-Cholmondeley-Marjoribanks",
                "cn truncated to 64 characters"
            );
        } else {
            assert_eq!(cn, &c.full_name, "cn of {}: {a:?}", c.uid);
        }
        if c.title.is_some() {
            assert_eq!(a["title"], vec![title_128.clone()], "title truncated");
            assert_eq!(a["title"][0].chars().count(), 128);
        }
    }

    // The trio: the plain name, then the ODS code, then a piece of the anchor.
    let plain = "Gwenllïan Mac Giolla Phádraig";
    let mut trio_cns = BTreeSet::new();
    for c in &crafted[trio_start..] {
        let anchor = uuid_of(&c.uid);
        let cn = ad[&anchor]["cn"][0].clone();
        let own: String = anchor.chars().take(8).collect();
        let allowed = [
            plain.to_string(),
            format!("{plain} ({ods})"),
            format!("{plain} ({ods} {own})"),
        ];
        assert!(allowed.contains(&cn), "{cn:?} is none of {allowed:?}");
        trio_cns.insert(cn);
    }
    assert_eq!(trio_cns.len(), 3, "three distinct names: {trio_cns:?}");
    assert!(
        trio_cns.contains(plain) && trio_cns.contains(&format!("{plain} ({ods})")),
        "{trio_cns:?}"
    );

    // The journal: every crafted person added, nothing refused or withheld.
    let snap = env.snapshot();
    let run_id = snap.runs(1).unwrap()[0].id;
    let records = snap.records(run_id).unwrap();
    assert!(
        records.iter().all(|r| r.outcome == "applied"),
        "{records:#?}"
    );
    for c in &crafted {
        let anchor = uuid_of(&c.uid);
        assert!(
            records
                .iter()
                .any(|r| r.anchor.as_ref() == Some(&anchor) && r.op == "add"),
            "no add for {} in {records:#?}",
            c.uid
        );
    }

    // AD spells values and DNs its own way; a rerun must still see no change.
    let again = env.sync_ok();
    assert!(
        summary_line(&again, "added").contains(NO_WRITES),
        "{again:?}"
    );
    assert_unchanged(&objects, &env.ad_objects().await);
}

/// A contact created by hand (as the domain administrator) in the OU.
async fn add_contact(admin: &mut Conn, dn: &str, attrs: &[(&str, &str)]) {
    let mut all: Vec<(String, HashSet<String>)> =
        vec![("objectClass".into(), HashSet::from(["contact".to_string()]))];
    all.extend(
        attrs
            .iter()
            .map(|(k, v)| (k.to_string(), HashSet::from([v.to_string()]))),
    );
    admin
        .add(dn, all)
        .await
        .unwrap_or_else(|e| panic!("adding {dn}: {e}"));
}

#[tokio::test]
async fn unowned_objects_are_never_touched_and_collisions_are_conflicts() {
    let env = SyncEnv::new("unowned", 32, 80, 3, MAPPING).await;
    let orgs = env.org_codes();
    let covered = orgs[..2].to_vec();
    env.write_agreements(&[("DSA-U-001", &covered, ALL_ATTRS, &day(-1), &day(1))]);

    let source = env.source_people("(objectClass=nhsPerson)").await;
    let expected = expected_anchors(&source, &covered);
    let name = |a: &BTreeMap<String, Vec<String>>| {
        format!("{} {}", a["givenname"][0].trim(), a["sn"][0].trim())
    };
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for u in &expected {
        *names.entry(name(&source[u])).or_default() += 1;
    }
    // Plain names, unique in scope, with a mail address.
    let mut picks = expected.iter().filter(|u| {
        let a = &source[*u];
        let n = name(a);
        names[&n] == 1
            && n.chars().all(|c| c.is_ascii_alphabetic() || c == ' ')
            && a.contains_key("mail")
    });
    let same_name = picks.next().expect("a person to collide by name").clone();
    let same_mail = picks.next().expect("a person to collide by mail").clone();
    let taken_name = name(&source[&same_name]);
    let taken_mail = source[&same_mail]["mail"][0].clone();

    let name_dn = format!("CN={taken_name},{}", env.target_ou);
    let mail_dn = format!("CN=Mail Twin Contact,{}", env.target_ou);
    let other_dn = format!("CN=Estates Helpdesk,{}", env.target_ou);
    let mut admin = Conn::connect(&env.tb.target_admin()).await.unwrap();
    add_contact(
        &mut admin,
        &name_dn,
        &[
            ("mail", "someone.else@example.org"),
            ("description", "made by hand: same name"),
        ],
    )
    .await;
    add_contact(
        &mut admin,
        &mail_dn,
        &[
            // Same address, other case: still the same mailbox.
            ("mail", &taken_mail.to_uppercase()),
            ("description", "made by hand: same mail"),
        ],
    )
    .await;
    add_contact(
        &mut admin,
        &other_dn,
        &[
            ("mail", "estates.helpdesk@example.org"),
            ("telephoneNumber", "+441632960000"),
            ("description", "made by hand: unrelated"),
        ],
    )
    .await;
    admin.unbind().await;
    let before = env.ad_objects().await;
    assert_eq!(before.len(), 3, "{before:#?}");
    assert!(before.values().all(|a| anchor_of(a).is_none()));
    for attrs in before.values() {
        assert!(attrs.contains_key("whenchanged") && attrs.contains_key("usnchanged"));
    }

    let first = env.sync_ok();
    let after_first = env.ad_objects().await;
    let second = env.sync_ok();
    assert!(
        summary_line(&first, "added").contains("conflicts 2, failed 0"),
        "{first:?}"
    );
    let line = summary_line(&second, "added");
    assert!(
        line.contains(NO_WRITES) && line.contains("conflicts 2, failed 0"),
        "{second:?}"
    );

    // The hand-made objects are exactly as they were, down to whenChanged
    // and uSNChanged.
    let after = env.ad_objects().await;
    for (dn, attrs) in &before {
        assert_eq!(after.get(dn), Some(attrs), "{dn} was touched");
    }
    assert_unchanged(&after_first, &after);
    let ad = by_anchor(&after);
    let mut landed_want = expected.clone();
    landed_want.remove(&same_name);
    landed_want.remove(&same_mail);
    assert_eq!(
        ad.keys().cloned().collect::<BTreeSet<_>>(),
        landed_want,
        "everyone else landed; the two colliding people did not"
    );
    assert_eq!(after.len(), ad.len() + 3);

    let snap = env.snapshot();
    let runs = snap.runs(10).unwrap();
    assert_eq!(runs.len(), 2);
    let run1 = snap.records(runs[1].id).unwrap();
    let conflicts: Vec<_> = run1.iter().filter(|r| r.op == "conflict").collect();
    assert_eq!(conflicts.len(), 2, "{conflicts:#?}");
    for (anchor, with) in [(&same_name, &name_dn), (&same_mail, &mail_dn)] {
        let r = conflicts
            .iter()
            .find(|r| r.anchor.as_ref() == Some(anchor))
            .unwrap_or_else(|| panic!("no conflict for {anchor}: {conflicts:#?}"));
        assert_eq!(r.outcome, "withheld");
        assert_eq!(
            r.old_dn.as_deref().map(str::to_lowercase),
            Some(with.to_lowercase()),
            "the conflict names the object in the way"
        );
        assert_eq!(r.agreements, vec!["DSA-U-001"]);
    }
    let mail_conflict = conflicts
        .iter()
        .find(|r| r.anchor.as_ref() == Some(&same_mail))
        .unwrap();
    assert!(
        mail_conflict
            .error
            .as_deref()
            .is_some_and(|e| e.to_lowercase().contains(&taken_mail)),
        "{mail_conflict:?}"
    );
    assert!(
        !run1
            .iter()
            .any(|r| r.anchor.as_ref() == Some(&same_name) && r.op != "conflict")
            && !run1
                .iter()
                .any(|r| r.anchor.as_ref() == Some(&same_mail) && r.op != "conflict"),
        "{run1:#?}"
    );
}

#[tokio::test]
async fn sigkill_mid_initial_sync_then_rerun_converges_without_duplicates() {
    let env = SyncEnv::new("sigkill", 33, 1200, 6, MAPPING).await;
    let orgs = env.org_codes();
    env.write_agreements(&[("DSA-K-001", &orgs, ALL_ATTRS, &day(-1), &day(1))]);
    let source = env.source_people("(objectClass=nhsPerson)").await;
    let expected = expected_anchors(&source, &orgs);
    assert!(expected.len() > 1000, "{}", expected.len());

    let log = std::fs::File::create(env.dir.join("killed-run.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_absync"))
        .arg("--config")
        .arg(env.config_path())
        .arg("sync")
        .env("ABSYNC_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn absync");
    let started = Instant::now();
    let landed = loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "absync finished ({status}) before it could be killed; {} objects",
                env.ad_count().await
            );
        }
        let n = env.ad_count().await;
        if n >= 100 {
            break n;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "only {n} objects after 3 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    }
    let mid = env.ad_count().await;
    assert!(
        mid >= landed && mid < expected.len(),
        "killed mid-run: {mid} of {} objects",
        expected.len()
    );
    {
        let snap = env.snapshot();
        let runs = snap.runs(10).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, "running", "a killed run shows as such");
    }

    let rerun = env.sync_ok();
    let objects = env.ad_objects().await;
    let ad = by_anchor(&objects);
    assert_eq!(
        ad.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "exactly the authorised people after the rerun ({mid} before it): {rerun:?}"
    );
    assert_eq!(objects.len(), ad.len(), "no object without an anchor");
    let snap = env.snapshot();
    assert_eq!(snap.count().unwrap() as usize, objects.len());

    let third = env.sync_ok();
    assert!(
        summary_line(&third, "added").contains(NO_WRITES),
        "{third:?}"
    );
    assert_unchanged(&objects, &env.ad_objects().await);

    // Every object in AD has its add in the journal, once: in the killed
    // run (applied, or confirmed by the recovery) or in the rerun.
    let runs = snap.runs(10).unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[1].status, "ok");
    let mut adds: BTreeMap<String, Vec<absync::state::journal::Record>> = BTreeMap::new();
    for run in &runs {
        for r in snap.records(run.id).unwrap() {
            assert_ne!(r.outcome, "failed", "{r:?}");
            if r.op == "add" && r.outcome == "applied" {
                adds.entry(r.anchor.clone().unwrap()).or_default().push(r);
            }
        }
    }
    let (killed, rerun_id) = (runs[2].id, runs[1].id);
    for anchor in ad.keys() {
        let recs = adds.get(anchor).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(recs.len(), 1, "adds journaled for {anchor}: {recs:#?}");
        let r = &recs[0];
        assert!(
            r.run_id == killed
                || r.run_id == rerun_id
                || r.reason.contains("confirmed after an interrupted run"),
            "{r:?}"
        );
    }
    assert_eq!(
        adds.len(),
        ad.len(),
        "no add journaled for a missing object"
    );
    assert!(
        adds.values().flatten().any(|r| r.run_id == killed)
            && adds.values().flatten().any(|r| r.run_id == rerun_id),
        "adds in both runs"
    );
}

/// The attributes the mail-contact mapping writes, plus those every add
/// sets (object classes, RDN, anchor).
const WRITTEN: &[&str] = &[
    "objectclass",
    "cn",
    "name",
    "admindescription",
    "displayname",
    "givenname",
    "sn",
    "mail",
    "title",
    "department",
    "company",
    "telephonenumber",
    "othertelephone",
    "mobile",
    "employeeid",
    "info",
    "targetaddress",
    "proxyaddresses",
    "mailnickname",
];

#[tokio::test]
async fn plan_ldif_applied_with_ldapmodify_matches_sync() {
    let mapping = "nhs-to-ad-mail-contact.toml";
    let env = SyncEnv::new("plan-ldif", 34, 200, 4, mapping).await;
    let orgs = env.org_codes();
    let covered = orgs[..3].to_vec();
    let (from, until) = (day(-1), day(1));
    let agreements = [("DSA-P-001", &covered[..], ALL_ATTRS, &*from, &*until)];
    env.write_agreements(&agreements);

    // The same source and agreements, another OU, an empty state directory.
    let planned = env.sibling("plan-ldif-2").await;
    planned.write_config(mapping, "");
    planned.write_agreements(&agreements);
    let plan = planned.absync(&["plan", "--format", "ldif"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(
        planned.ad_objects().await.is_empty(),
        "plan wrote to the target"
    );
    {
        let snap = planned.snapshot();
        assert!(snap.runs(10).unwrap().is_empty(), "plan recorded a run");
        assert_eq!(snap.count().unwrap(), 0, "plan recorded objects");
    }
    apply_ldif(&planned, &plan.stdout);

    let run = env.sync_ok();
    let source = env.source_people("(objectClass=nhsPerson)").await;
    let expected = expected_anchors(&source, &covered);
    assert!(
        summary_line(&run, "added").contains(&format!("added {}", expected.len())),
        "{run:?}"
    );
    assert_eq!(
        plan.stdout.matches("changetype: add").count(),
        expected.len(),
        "{}",
        plan.stdout
    );
    let compared = same_content(&env, &planned, &expected).await;
    // The data exercises (nearly) every mapped attribute.
    assert!(compared.len() >= WRITTEN.len() - 1, "{compared:?}");

    // Changes: the sibling adopts what the LDIF created (a full run), then
    // plans the changes as LDIF while the first environment syncs them.
    let adopt = planned.absync(&["sync", "--full"]);
    assert_eq!(adopt.code, 0, "{adopt:?}");
    assert!(
        summary_line(&adopt, "added").contains("added 0, modified 0, renamed 0, deleted 0"),
        "{adopt:?}"
    );
    let active: Vec<(&String, &String)> = source
        .iter()
        .filter(|(u, _)| expected.contains(*u))
        .map(|(u, a)| (u, &a["dn"][0]))
        .collect();
    let ldif = format!(
        "dn: {}\nchangetype: modify\nreplace: title\ntitle: Planned Change Lead\n-\n\n\
         dn: {}\nchangetype: modify\nreplace: sn\nsn: Renamed-Byplan\n-\n\n\
         dn: {}\nchangetype: delete\n\n\
         dn: {}\nchangetype: modify\nreplace: nhsEntryStatus\nnhsEntryStatus: leaver\n-\n\n",
        active[0].1, active[1].1, active[2].1, active[3].1
    );
    env.change_source(&ldif);
    let plan = planned.absync(&["plan", "--format", "ldif"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    for op in [
        "changetype: modify",
        "changetype: modrdn",
        "changetype: delete",
    ] {
        assert!(plan.stdout.contains(op), "{op} in\n{}", plan.stdout);
    }
    apply_ldif(&planned, &plan.stdout);
    let run = env.sync_ok();
    assert!(
        summary_line(&run, "added").contains("renamed 1, deleted 2"),
        "{run:?}"
    );
    let mut expected = expected;
    expected.remove(active[2].0);
    expected.remove(active[3].0);
    same_content(&env, &planned, &expected).await;
    let ad = by_anchor(&env.ad_objects().await);
    assert_eq!(ad[active[0].0]["title"], vec!["Planned Change Lead"]);
    assert_eq!(ad[active[1].0]["sn"], vec!["Renamed-Byplan"]);
}

/// Applies LDIF to `env`'s target as its service account, with ldapmodify.
fn apply_ldif(env: &SyncEnv, ldif: &str) {
    let ldif_file = env.dir.join("plan.ldif");
    std::fs::write(&ldif_file, ldif).unwrap();
    let tb = env.tb;
    let applied = std::process::Command::new("ldapmodify")
        .args(["-H", tb.get("TARGET_URL"), "-x"])
        .args(["-D", tb.get("TARGET_SVC_DN")])
        .args(["-y", tb.get("TARGET_SVC_PASSWORD_FILE")])
        .arg("-f")
        .arg(&ldif_file)
        .env("LDAPTLS_CACERT", tb.get("TARGET_CA"))
        .output()
        .expect("run ldapmodify");
    assert!(
        applied.status.success(),
        "ldapmodify {} failed: {}",
        ldif_file.display(),
        String::from_utf8_lossy(&applied.stderr)
    );
}

/// Both OUs hold exactly `expected`, with the same RDNs and written
/// attributes. Returns the attributes that were compared.
async fn same_content(
    synced: &SyncEnv,
    planned: &SyncEnv,
    expected: &BTreeSet<String>,
) -> BTreeSet<&'static str> {
    let synced = by_anchor(&synced.ad_objects().await);
    let by_hand = by_anchor(&planned.ad_objects().await);
    assert_eq!(
        synced.keys().cloned().collect::<BTreeSet<_>>(),
        *expected,
        "sync landed the authorised people"
    );
    assert_eq!(
        by_hand.keys().cloned().collect::<BTreeSet<_>>(),
        *expected,
        "the plan's LDIF landed the same people"
    );
    let sorted = |v: Option<&Vec<String>>| {
        let mut v = v.cloned().unwrap_or_default();
        v.sort();
        v
    };
    let rdn = |dn: &str| dn.split(",OU=").next().unwrap().to_lowercase();
    let mut compared = BTreeSet::new();
    for (anchor, s) in &synced {
        let h = &by_hand[anchor];
        assert_eq!(rdn(&s["dn"][0]), rdn(&h["dn"][0]), "RDN of {anchor}");
        for attr in WRITTEN {
            assert_eq!(
                sorted(s.get(*attr)),
                sorted(h.get(*attr)),
                "{attr} of {anchor}: sync {s:#?}\nplan {h:#?}"
            );
            if s.contains_key(*attr) {
                compared.insert(*attr);
            }
        }
    }
    compared
}
